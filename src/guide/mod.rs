//! The guide: how to use each part of the crate, one page each. Every setting's default and
//! what an invalid value does are written once, on its setter in [`ClientConfig`] and
//! [`ServerConfig`]; these pages say what the settings are for.
//!
//! - [Your own service](start): from a `.thrift` file to a server and a client of your own,
//!   what your `Cargo.toml` needs, which Thrift compiler to use, and service exceptions.
//! - [The client](client): calls, direct method calls, oneway methods, errors, timeouts, the
//!   circuit breaker, counters.
//! - [Many endpoints](many_endpoints): one client over several servers, retries and their
//!   budget.
#![cfg_attr(
    feature = "discovery",
    doc = "- [Service discovery](crate::discovery): servers register in ZooKeeper, clients \
           follow the live fleet (requires the `discovery` feature)."
)]
#![cfg_attr(
    not(feature = "discovery"),
    doc = "- Service discovery: the `discovery` module, which requires the `discovery` feature."
)]
//! - [The server](server): the worker pool, the poller, stopping, every server setting, a
//!   handler whose state the program shares.
//! - [Limits and hostile input](limits): what each side does with a peer that sends too
//!   much, too slowly, or garbage.
//! - [Overload](overload): how the server sheds requests it cannot serve in time.
//!
//! [`ClientConfig`]: crate::ClientConfig
//! [`ServerConfig`]: crate::ServerConfig

#[doc = include_str!("start.md")]
pub mod start {}

#[doc = include_str!("client.md")]
pub mod client {}

#[doc = include_str!("many_endpoints.md")]
pub mod many_endpoints {}

#[doc = include_str!("server.md")]
pub mod server {}

#[doc = include_str!("limits.md")]
pub mod limits {}

#[doc = include_str!("overload.md")]
pub mod overload {}
