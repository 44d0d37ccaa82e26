//! Blocking Apache Thrift clients and servers for ordinary threaded Rust programs.
#![deny(unsafe_code)] // One audited exception: registering sockets with `polling` (src/server/poller.rs).
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod breaker;
mod client;
mod clock;
mod config;
mod decode;
mod direct;
mod error;
mod mirror;
mod multi;
mod pool;
mod protocol;
mod server;
mod transport;

/// Entry points for the fuzz targets and property tests; not part of the API, unstable.
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

pub use crate::breaker::BreakerState;
pub use crate::client::{ClientStats, ThriftClient};
pub use crate::clock::Clock;
pub use crate::config::ClientConfig;
pub use crate::direct::Direct;
pub use crate::error::{Error, Timeout, Unavailable};
pub use crate::multi::{MultiDirect, MultiStats, MultiThriftClient};
pub use crate::protocol::{InputProtocol, OutputProtocol, Protocol, Transport};
pub use crate::server::{ServerConfig, ServerStats, ThriftServer};
