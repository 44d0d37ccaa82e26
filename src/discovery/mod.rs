//! Service discovery on ZooKeeper, in Apache Curator's layout: servers register instances of
//! a service, clients follow the live set. With the `discovery` feature.
//!
//! Every instance is an ephemeral node `<base>/<service name>/<instance id>` (base `/service`
//! by default) holding Curator's `ServiceInstance` JSON, so Rust and Java services register in
//! one fleet: Curator's `ServiceDiscovery` sees instances registered here, and an
//! [`InstanceCache`] sees those Curator registered.
//!
//! ```no_run
//! # mod calculator { pub struct CalculatorSyncClient<I, O>(I, O);
//! #   impl<I, O> CalculatorSyncClient<I, O> { pub fn new(i: I, o: O) -> Self { Self(i, o) } } }
//! use blocking_thrift::discovery::{InstanceCache, Registration, ServiceInstance, ZooKeeper, ZooKeeperConfig};
//! use blocking_thrift::{ClientConfig, MultiThriftClient};
//!
//! let zk = ZooKeeper::connect("127.0.0.1:2181", ZooKeeperConfig::default())?;
//! // A server's side: its instance stays registered while `registration` lives.
//! let registration = Registration::register(&zk, ServiceInstance::new("calc", "10.0.0.5", 9090)?)?;
//! // A client's side: calls go to the live instances, shuffled.
//! let cache = InstanceCache::follow(&zk, "calc")?;
//! let client = MultiThriftClient::discovered(cache, calculator::CalculatorSyncClient::new, ClientConfig::default());
//! # Ok::<(), blocking_thrift::discovery::DiscoveryError>(())
//! ```
//!
//! The API blocks, like the rest of the crate; a small async runtime of the session's own (one
//! thread) runs the ZooKeeper client behind it. Do not call it from inside an async runtime.

mod cache;
mod client;
mod follow;
mod instance;
mod registration;
mod session;

use std::fmt;

pub use self::cache::InstanceCache;
pub use self::client::Announcement;
pub use self::instance::{ServiceInstance, ServiceType};
pub use self::registration::{Registration, DEFAULT_BASE_PATH};
pub use self::session::{ZooKeeper, ZooKeeperConfig};

/// What service discovery can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A service name, instance id or base path that is not one node of the tree.
    InvalidName(String),
    /// Node data that is not an instance's JSON.
    BadInstance(String),
    /// ZooKeeper could not be reached, or refused the operation.
    ZooKeeper(String),
    /// The session was closed.
    Closed,
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryError::InvalidName(why) => write!(f, "invalid name: {why}"),
            DiscoveryError::BadInstance(why) => write!(f, "not a service instance: {why}"),
            DiscoveryError::ZooKeeper(why) => write!(f, "zookeeper: {why}"),
            DiscoveryError::Closed => f.write_str("the zookeeper session is closed"),
        }
    }
}

impl std::error::Error for DiscoveryError {}
