//! Closing a ZooKeeper session joins every thread it started. Alone in its test binary, so
//! that no other test starts or stops threads meanwhile.
//!
//! The ZooKeeper client's sockets and timers run on the `async-io` crate's reactor, one thread
//! for the whole process, started on first use and never ended; it is not the session's, and
//! not counted here.

mod support;

use std::time::Duration;

use blocking_thrift::discovery::{
    InstanceCache, Registration, ServiceInstance, ZooKeeper, ZooKeeperConfig,
};
use support::zookeeper::{zookeeper_available, ZkServer};

#[test]
fn closing_a_session_joins_every_thread_it_started() {
    if !zookeeper_available("closing_a_session_joins_every_thread_it_started") {
        return;
    }
    let server = ZkServer::start();
    // Starts the process-wide reactor thread before counting.
    drop(ZooKeeper::connect(&server.hosts(), ZooKeeperConfig::default()).unwrap());
    let before = ours();
    for close in [true, false] {
        let zk = ZooKeeper::connect(&server.hosts(), ZooKeeperConfig::default()).unwrap();
        let registration =
            Registration::register(&zk, ServiceInstance::new("calc", "h", 1).unwrap()).unwrap();
        let cache = InstanceCache::follow(&zk, "calc").unwrap();
        assert_eq!(cache.instances().len(), 1);
        assert!(ours() > before);
        drop(registration);
        if close {
            zk.close();
            assert_eq!(ours(), before, "after close(): {:?}", names());
            drop(zk);
        } else {
            // Dropping the last handle closes the session too.
            drop(zk);
            assert_eq!(ours(), before, "after the last drop: {:?}", names());
        }
        drop(cache);
    }
    // A cache's callback holds the last handle, and lets go of it on the session's own thread
    // when the cache goes: the session closes all the same.
    {
        let zk = ZooKeeper::connect(&server.hosts(), ZooKeeperConfig::default()).unwrap();
        let held = zk.clone();
        let on_change = move |_: &[ServiceInstance]| {
            let _ = held.session_id();
        };
        let cache = InstanceCache::follow_under(&zk, "/service", "calc", Some(Box::new(on_change)))
            .unwrap();
        let registration =
            Registration::register(&zk, ServiceInstance::new("calc", "h", 2).unwrap()).unwrap();
        assert!(support::wait_until(Duration::from_secs(10), || cache
            .instances()
            .len()
            == 1));
        drop((registration, zk));
        assert!(ours() > before);
        drop(cache);
        assert!(
            support::wait_until(Duration::from_secs(10), || ours() == before),
            "after the callback's drop: {:?}",
            names()
        );
    }
    // Closed on a thread an async runtime lends for blocking work, where it can wait: the
    // session ends before `close` returns, as anywhere else.
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let hosts = server.hosts();
        let left = runtime.block_on(async move {
            tokio::task::spawn_blocking(move || {
                let zk = ZooKeeper::connect(&hosts, ZooKeeperConfig::default()).unwrap();
                let registration =
                    Registration::register(&zk, ServiceInstance::new("calc", "h", 3).unwrap())
                        .unwrap();
                assert!(ours() > before);
                zk.close();
                let left = names();
                drop(registration);
                left
            })
            .await
            .unwrap()
        });
        drop(runtime);
        let left: Vec<_> = left
            .into_iter()
            .filter(|name| name.starts_with("blocking-thrift"))
            .collect();
        assert!(
            left.is_empty(),
            "after close() on a blocking thread: {left:?}"
        );
    }
    // Dropped by an async task (application state holding the handle): no panic, and the
    // session ends before the drop returns.
    {
        let zk = ZooKeeper::connect(&server.hosts(), ZooKeeperConfig::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async move { drop(zk) });
        drop(runtime);
        assert_eq!(
            ours(),
            before,
            "after a drop in an async task: {:?}",
            names()
        );
    }
    // The nodes went with their sessions.
    let zk = ZooKeeper::connect(&server.hosts(), ZooKeeperConfig::default()).unwrap();
    let cache = InstanceCache::follow(&zk, "calc").unwrap();
    assert!(support::wait_until(Duration::from_secs(10), || cache
        .instances()
        .is_empty()));
    zk.close();
}

/// Threads of the process, but the process-wide reactor's.
fn ours() -> usize {
    names()
        .iter()
        .filter(|name| name.trim() != "async-io")
        .count()
}

fn names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap_or_default())
        .collect()
}
