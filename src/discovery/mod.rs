//! Service discovery on ZooKeeper, in Apache Curator's layout. Requires the `discovery`
//! feature.
#![doc = include_str!("../guide/discovery.md")]

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
