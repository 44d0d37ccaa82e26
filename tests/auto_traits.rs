//! What a user shares across threads is `Send + Sync`, and the handles meant to be cloned
//! into threads are `Clone`: checked as this file compiles, so losing one fails the build.

mod support;

use blocking_thrift::discovery::{
    Announcement, DiscoveryError, InstanceCache, Registration, ServiceInstance, ServiceType,
    ZooKeeper, ZooKeeperConfig,
};
use blocking_thrift::{
    BreakerState, ClientConfig, ClientStats, ClientTls, Clock, Direct, Error, ManualClock,
    MultiDirect, MultiStats, MultiThriftClient, Protocol, ServerConfig, ServerStats, ThriftClient,
    ThriftServer, Timeout, Transport, Unavailable,
};
use support::Calc;

const _: () = {
    const fn send<T: Send>() {}
    const fn send_clone<T: Send + Clone>() {}
    const fn send_sync<T: Send + Sync>() {}
    const fn send_sync_clone<T: Send + Sync + Clone>() {}

    // Clients and their handles.
    send_sync_clone::<ThriftClient<Calc>>();
    send_sync_clone::<MultiThriftClient<Calc>>();
    // A direct handle serves one thread at a time; the multi-endpoint one is cloned per thread.
    send::<Direct<Calc>>();
    send_clone::<MultiDirect<Calc>>();
    send_sync::<ThriftServer>();

    // Configuration, counters and errors.
    send_sync_clone::<ClientConfig>();
    send_sync_clone::<ClientTls>();
    send_sync_clone::<ServerConfig>();
    send_sync::<ClientStats>();
    send_sync::<MultiStats>();
    send_sync::<ServerStats>();
    send_sync::<BreakerState>();
    send_sync::<Error>();
    send_sync::<Timeout>();
    send_sync::<Unavailable>();
    send_sync::<Transport>();
    send_sync::<Protocol>();

    // Time.
    send_sync_clone::<Clock>();
    send_sync_clone::<ManualClock>();

    // Discovery.
    send_sync_clone::<ZooKeeper>();
    send_sync::<ZooKeeperConfig>();
    send_sync_clone::<InstanceCache>();
    send_sync::<Announcement>();
    send_sync::<Registration>();
    send_sync::<ServiceInstance>();
    send_sync::<ServiceType>();
    send_sync::<DiscoveryError>();
};
