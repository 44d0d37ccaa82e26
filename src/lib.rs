//! Blocking Apache Thrift clients and servers for ordinary threaded Rust programs.
//!
//! Works with the code the stock Thrift compiler generates (`thrift --gen rs`), unmodified,
//! and speaks the framed (default) or buffered [`Transport`] with the binary (default) or
//! compact [`Protocol`], so any other Thrift peer can talk to it. A port of the Python package
//! gevent-thrift to OS threads, with its client settings and their defaults.
//!
//! - [`ThriftClient`]: one endpoint, with a connection pool, a timeout on every phase of a call
//!   (connect, pool wait, the whole response) and a circuit breaker. Call through a closure
//!   that gets the generated client, or call the generated methods directly on
//!   [`ThriftClient::direct`].
//! - [`MultiThriftClient`]: one logical client over several endpoints, each with its own pool
//!   and breaker; failed calls move on to the next endpoint, within a retry budget.
//! - [`ThriftServer`]: serves any generated processor on a fixed pool of worker threads; idle
//!   connections wait in a poller thread and hold no worker, and requests that waited too long
//!   for a worker are shed rather than run late.
//! - [`discovery`] (requires the `discovery` feature): servers register in ZooKeeper in Apache
//!   Curator's layout, and clients follow the live fleet.
//!
//! Both sides decode with bounds that no peer's declared sizes can get around.
//!
//! # Using it
//!
//! The crate builds on Linux (and Android) only: its server waits on `epoll`. It needs
//! Rust 1.95 or newer. Your crate depends on it and on the `thrift` crate, whose name the
//! generated code uses and whose version must be this crate's (so this crate does not
//! re-export it; see [your own service](guide::start#what-you-need)):
//!
//! ```toml
//! [dependencies]
//! blocking-thrift = "0.1"
//! thrift = "0.25"
//! ```
//!
//! ```no_run
//! # #[path = "../idl/gen/calculator.rs"]
//! #[allow(clippy::all, dead_code, missing_docs, unused_parens)]
//! mod calculator; // generated: `thrift --gen rs -out src calculator.thrift`
//!
//! use blocking_thrift::{ClientConfig, InputProtocol, OutputProtocol, ThriftClient};
//! use calculator::{CalculatorSyncClient, TCalculatorSyncClient};
//!
//! type Calculator = CalculatorSyncClient<InputProtocol, OutputProtocol>;
//!
//! fn main() -> Result<(), blocking_thrift::Error> {
//!     let client: ThriftClient<Calculator> =
//!         ThriftClient::new("localhost:9090", CalculatorSyncClient::new, ClientConfig::default());
//!     let sum = client.call(|c| c.add(1, 2))?;
//!     assert_eq!(sum, 3);
//!     client.close();
//!     Ok(())
//! }
//! ```
//!
//! # The guide
//!
//! [`guide`] has a page for each part:
//! [your own service](guide::start) (generating code, a first server and client),
//! [the client](guide::client), [many endpoints](guide::many_endpoints),
//! [the server](guide::server), [limits and hostile input](guide::limits),
//! [overload](guide::overload), and [service discovery][`discovery`].
//! Every setting, with its default, is on [`ClientConfig`] and [`ServerConfig`].
//!
//! `examples/calculator.rs` in the repository walks through the whole crate against a real
//! server: `cargo run --example calculator`.
//!
//! # Features
//!
//! - `discovery`: the [`discovery`] module and [`MultiThriftClient::discovered`]. Brings in
//!   `zookeeper-client` and a `tokio` runtime of its own, which the blocking API hides.
//! - `fuzzing`: entry points for the crate's own fuzz targets and property tests; not part of
//!   the API.
//!
//! # Not there yet
//!
//! TLS on the server (the client speaks it), the THeader transport, client-side multiplexing,
//! per-method metrics and load balancing are planned, not done.
#![cfg_attr(
    feature = "discovery",
    doc = "",
    doc = "[`discovery`]: crate::discovery",
    doc = "[`MultiThriftClient::discovered`]: crate::MultiThriftClient::discovered"
)]
#![cfg_attr(
    not(feature = "discovery"),
    doc = "",
    doc = "[`discovery`]: https://docs.rs/blocking-thrift/latest/blocking_thrift/discovery/",
    doc = "[`MultiThriftClient::discovered`]: \
           https://docs.rs/blocking-thrift/latest/blocking_thrift/struct.MultiThriftClient.html#method.discovered"
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

#[cfg(not(any(target_os = "linux", target_os = "android")))]
compile_error!("blocking-thrift needs Linux (or Android): its server waits on epoll");

mod client;
mod clock;
mod counter;
#[cfg(feature = "discovery")]
#[cfg_attr(docsrs, doc(cfg(feature = "discovery")))]
pub mod discovery;
mod error;
pub mod guide;
mod handle;
mod multi;
mod poll;
mod server;
mod tls;
mod wire;

/// Entry points for the fuzz targets and property tests, with the `fuzzing` feature only;
/// not part of the API, unstable.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

pub use crate::client::breaker::BreakerState;
pub use crate::client::call::ClientStats;
pub use crate::client::config::ClientConfig;
pub use crate::client::direct::Direct;
pub use crate::client::{IntoEndpoint, ThriftClient};
pub use crate::clock::{Clock, ManualClock};
pub use crate::error::{Error, Timeout, Unavailable};
pub use crate::multi::direct::MultiDirect;
pub use crate::multi::{MultiStats, MultiThriftClient};
pub use crate::server::{ServerConfig, ServerStats, ThriftServer};
pub use crate::tls::ClientTls;
pub use crate::wire::{InputProtocol, OutputProtocol, Protocol, Transport};
/// The rustls this crate speaks TLS with, for a [`ClientTls::from_config`] built by hand.
pub use rustls;
