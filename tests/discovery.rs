//! Service discovery against a real ZooKeeper, with Apache Curator as the peer.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use blocking_thrift::discovery::{
    Announcement, DiscoveryError, InstanceCache, Registration, ServiceInstance, ZooKeeper,
    ZooKeeperConfig,
};
use blocking_thrift::{ClientConfig, MultiThriftClient, ServerConfig, ThriftServer};
use support::calculator::{
    CalculatorSyncClient, CalculatorSyncProcessor, TCalculatorSyncClient, TemporaryUnavailable,
};
use support::proxy::{Fault, FaultProxy};
use support::zookeeper::{
    curator_available, curator_query, zk_cli, zookeeper_available, CuratorRegistration, ZkServer,
};
use support::{wait_until, Calc, CalculatorService};

const SOON: Duration = Duration::from_secs(10);

fn quick() -> ZooKeeperConfig {
    ZooKeeperConfig::default()
        .session_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(10))
}

fn ids(cache: &InstanceCache) -> Vec<String> {
    cache.instances().iter().map(|i| i.id.clone()).collect()
}

fn calculator(name: &str) -> ThriftServer {
    calculator_with(name, ServerConfig::default().workers(4))
}

fn calculator_with(name: &str, config: ServerConfig) -> ThriftServer {
    let server = ThriftServer::bind(
        "127.0.0.1:0",
        CalculatorSyncProcessor::new(Arc::new(CalculatorService::new(name))),
        config,
    )
    .unwrap();
    server.start().unwrap();
    server
}

#[test]
fn no_zookeeper_is_a_clear_error_within_the_connect_timeout() {
    let hosts = support::refused_endpoint();
    let started = Instant::now();
    let config = ZooKeeperConfig::default().connect_timeout(Duration::from_millis(500));
    let err = ZooKeeper::connect(&hosts, config).unwrap_err();
    assert!(matches!(err, DiscoveryError::ZooKeeper(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_registration_appears_with_curators_json_and_goes_when_closed() {
    if !curator_available("a_registration_appears_with_curators_json_and_goes_when_closed") {
        return;
    }
    let server = ZkServer::start();
    let zk = ZooKeeper::connect(&server.hosts(), quick()).unwrap();
    let instance = ServiceInstance::new("calc", "10.0.0.5", 9090)
        .unwrap()
        .with_id("3f1c0d8e-6a0b-4c43-9d2e-1b5a7c0e9f11")
        .unwrap()
        .with_payload(serde_json::json!({"protocol": "binary", "weight": 3}));
    let expected = String::from_utf8(instance.to_json()).unwrap();
    let registration = Registration::register(&zk, instance.clone()).unwrap();
    assert_eq!(
        registration.path(),
        "/service/calc/3f1c0d8e-6a0b-4c43-9d2e-1b5a7c0e9f11"
    );
    // Curator reads it with every field; it writes the same JSON back.
    let seen = curator_query(&server.hosts(), "/service", "calc");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let mut read_back = ServiceInstance::from_json(seen[0].as_bytes()).unwrap();
    // Curator reads a map payload as a Java map, and names its class when it writes it.
    let payload = read_back.payload.as_mut().unwrap().as_object_mut().unwrap();
    assert_eq!(payload.remove("@class").unwrap(), "java.util.LinkedHashMap");
    assert_eq!(
        read_back, instance,
        "curator wrote {}, we wrote {expected}",
        seen[0]
    );
    let cache = InstanceCache::follow(&zk, "calc").unwrap();
    assert_eq!(*cache.instances(), vec![instance.clone()]);

    // Draining: disabled instances are left out of caches.
    let mut registration = registration;
    registration
        .update(instance.clone().with_enabled(false))
        .unwrap();
    assert!(wait_until(SOON, || cache.instances().is_empty()));
    registration.update(instance).unwrap();
    assert!(wait_until(SOON, || cache.instances().len() == 1));

    registration.close();
    assert!(wait_until(SOON, || cache.instances().is_empty()));
    assert!(curator_query(&server.hosts(), "/service", "calc").is_empty());
    zk.close();
}

#[test]
fn curators_instances_are_seen_by_the_cache_with_every_field() {
    if !curator_available("curators_instances_are_seen_by_the_cache_with_every_field") {
        return;
    }
    let server = ZkServer::start();
    let zk = ZooKeeper::connect(&server.hosts(), quick()).unwrap();
    let changes = Arc::new(AtomicUsize::new(0));
    let cache = {
        let changes = changes.clone();
        InstanceCache::follow_under(
            &zk,
            "/service",
            "calc",
            Some(Box::new(move |_| {
                changes.fetch_add(1, Ordering::SeqCst);
            })),
        )
        .unwrap()
    };
    assert!(cache.instances().is_empty());
    let java = CuratorRegistration::register(
        &server.hosts(),
        "/service",
        "calc",
        "java-1",
        "10.0.0.7",
        9091,
    );
    assert!(wait_until(SOON, || cache.instances().len() == 1));
    let instance = cache.instances()[0].clone();
    assert_eq!(
        (
            instance.name.as_str(),
            instance.id.as_str(),
            instance.address.as_str()
        ),
        ("calc", "java-1", "10.0.0.7")
    );
    assert_eq!(instance.port, Some(9091));
    assert!(instance.enabled);
    assert!(instance.registration_time_utc > 0);
    // Curator's own JSON of it is ours, byte for byte.
    let curators = curator_query(&server.hosts(), "/service", "calc");
    assert_eq!(
        curators,
        vec![String::from_utf8(instance.to_json()).unwrap()]
    );
    assert!(changes.load(Ordering::SeqCst) >= 1);
    java.close();
    assert!(wait_until(SOON, || cache.instances().is_empty()));
    zk.close();
}

#[test]
fn nodes_that_are_not_instances_are_skipped() {
    if !zookeeper_available("nodes_that_are_not_instances_are_skipped") {
        return;
    }
    let server = ZkServer::start();
    let zk = ZooKeeper::connect(&server.hosts(), quick()).unwrap();
    let good = Registration::register(&zk, ServiceInstance::new("calc", "h", 1).unwrap()).unwrap();
    // Written by ZooKeeper's own command-line client, as anything else might.
    zk_cli(
        &server.hosts(),
        &["create", "/service/calc/garbage", "not-an-instance"],
    );
    // And one this client may list but not read: only 10.9.9.9 may.
    zk_cli(
        &server.hosts(),
        &["create", "/service/calc/locked", "{}", "ip:10.9.9.9:cdrwa"],
    );
    let cache = InstanceCache::follow(&zk, "calc").unwrap();
    assert_eq!(ids(&cache), [good.instance().id.clone()]);
    let another =
        Registration::register(&zk, ServiceInstance::new("calc", "h", 2).unwrap()).unwrap();
    assert!(wait_until(SOON, || cache.instances().len() == 2));
    drop((good, another));
    assert!(wait_until(SOON, || cache.instances().is_empty()));
    zk.close();
}

#[test]
fn connecting_waits_its_connect_timeout_not_one_session_timeout() {
    if !zookeeper_available("connecting_waits_its_connect_timeout_not_one_session_timeout") {
        return;
    }
    let server = ZkServer::start();
    // ZooKeeper behind a proxy that holds back its answers until told.
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port).into());
    proxy.set(Fault::Stall);
    let config = ZooKeeperConfig::default()
        .session_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(60));
    let hosts = proxy.endpoint();
    let connecting = std::thread::spawn(move || ZooKeeper::connect(&hosts, config));
    // Three session timeouts pass without an answer (ZooKeeper's own clock, which cannot be
    // injected), and the connect goes on trying.
    wait_until(Duration::from_secs(3), || connecting.is_finished());
    assert!(proxy.connections() >= 2);
    proxy.set(Fault::Pass);
    let zk = connecting
        .join()
        .unwrap()
        .expect("a session once ZooKeeper answers, within the connect timeout");
    zk.close();
}

#[test]
fn a_callback_may_register_and_drop_registrations() {
    if !zookeeper_available("a_callback_may_register_and_drop_registrations") {
        return;
    }
    let server = ZkServer::start();
    let zk = ZooKeeper::connect(&server.hosts(), quick()).unwrap();
    // On the session's own thread, the callback keeps a "mirror" instance for each "calc" one,
    // registering new ones and dropping the others.
    let mirrors: Arc<parking_lot::Mutex<Vec<Registration>>> = Arc::default();
    let on_change = {
        let (zk, mirrors) = (zk.clone(), mirrors.clone());
        move |instances: &[ServiceInstance]| {
            let mut mirrors = mirrors.lock();
            mirrors.clear();
            for instance in instances {
                let port = instance.port.unwrap();
                let mirror = ServiceInstance::new("mirror", "h", port).unwrap();
                mirrors.push(Registration::register(&zk, mirror).unwrap());
            }
        }
    };
    let calc =
        InstanceCache::follow_under(&zk, "/service", "calc", Some(Box::new(on_change))).unwrap();
    let seen = InstanceCache::follow(&zk, "mirror").unwrap();
    let first = Registration::register(&zk, ServiceInstance::new("calc", "h", 1).unwrap()).unwrap();
    let second =
        Registration::register(&zk, ServiceInstance::new("calc", "h", 2).unwrap()).unwrap();
    let ports = |cache: &InstanceCache| {
        let mut ports: Vec<_> = cache.instances().iter().filter_map(|i| i.port).collect();
        ports.sort();
        ports
    };
    assert!(
        wait_until(SOON, || ports(&seen) == [1, 2]),
        "{:?}",
        ports(&seen)
    );
    drop(first);
    assert!(
        wait_until(SOON, || ports(&seen) == [2]),
        "{:?}",
        ports(&seen)
    );
    drop((second, calc));
    zk.close();
}

#[test]
fn a_callback_may_fail_to_connect_and_the_cache_goes_on() {
    if !zookeeper_available("a_callback_may_fail_to_connect_and_the_cache_goes_on") {
        return;
    }
    let server = ZkServer::start();
    let zk = ZooKeeper::connect(&server.hosts(), quick()).unwrap();
    let failed = Arc::new(AtomicUsize::new(0));
    let on_change = {
        let failed = failed.clone();
        move |_: &[ServiceInstance]| {
            let config = ZooKeeperConfig::default().connect_timeout(Duration::from_millis(300));
            let nobody = support::refused_endpoint();
            assert!(ZooKeeper::connect(&nobody, config).is_err());
            failed.fetch_add(1, Ordering::SeqCst);
        }
    };
    let cache =
        InstanceCache::follow_under(&zk, "/service", "calc", Some(Box::new(on_change))).unwrap();
    let first = Registration::register(&zk, ServiceInstance::new("calc", "h", 1).unwrap()).unwrap();
    assert!(wait_until(SOON, || failed.load(Ordering::SeqCst) >= 1));
    let second =
        Registration::register(&zk, ServiceInstance::new("calc", "h", 2).unwrap()).unwrap();
    assert!(wait_until(SOON, || cache.instances().len() == 2));
    drop((first, second, cache));
    zk.close();
}

#[test]
fn a_session_whose_last_handle_a_callback_held_closes() {
    if !zookeeper_available("a_session_whose_last_handle_a_callback_held_closes") {
        return;
    }
    let server = ZkServer::start();
    let watcher = ZooKeeper::connect(&server.hosts(), quick()).unwrap();
    let seen = InstanceCache::follow(&watcher, "held").unwrap();
    // A session that would outlive this test if it were left to expire.
    let config = ZooKeeperConfig::default().session_timeout(Duration::from_secs(20));
    let zk = ZooKeeper::connect(&server.hosts(), config).unwrap();
    let held = Registration::register(&zk, ServiceInstance::new("held", "h", 1).unwrap()).unwrap();
    let held = (zk.clone(), parking_lot::Mutex::new(held));
    let on_change = move |_: &[ServiceInstance]| {
        let _ = (held.0.session_id(), held.1.lock().instance().id.len());
    };
    let cache =
        InstanceCache::follow_under(&zk, "/service", "calc", Some(Box::new(on_change))).unwrap();
    assert!(wait_until(SOON, || seen.instances().len() == 1));
    // The cache's task drops the callback, with the registration and the last handle of its
    // session, on the session's own thread: the node goes at once, not when the session expires.
    drop(zk);
    drop(cache);
    assert!(wait_until(SOON, || seen.instances().is_empty()));
    watcher.close();
}

#[test]
fn a_registration_closed_while_the_connection_is_dead_leaves_once_it_is_back() {
    if !zookeeper_available(
        "a_registration_closed_while_the_connection_is_dead_leaves_once_it_is_back",
    ) {
        return;
    }
    let server = ZkServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port).into());
    // A session that outlives the test unless it is ended.
    let config = ZooKeeperConfig::default()
        .session_timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(3));
    let zk = ZooKeeper::connect(&proxy.endpoint(), config).unwrap();
    let registration =
        Registration::register(&zk, ServiceInstance::new("calc", "h", 1).unwrap()).unwrap();
    let watcher = ZooKeeper::connect(&server.hosts(), quick()).unwrap();
    let view = InstanceCache::follow(&watcher, "calc").unwrap();
    assert_eq!(view.instances().len(), 1);
    let session = zk.session_id();
    // The connection goes silent at its next answer (a ping's), and the registration is
    // closed meanwhile: its delete goes out on the dead connection.
    proxy.set(Fault::Stall);
    assert!(wait_until(SOON, || proxy.faulted_connections() >= 1));
    registration.close();
    proxy.set(Fault::Pass);
    // Once the session is back on a new connection, the node goes.
    assert!(
        wait_until(SOON, || view.instances().is_empty()),
        "{:?}",
        ids(&view)
    );
    assert_eq!(
        zk.session_id(),
        session,
        "the session lived through the blip"
    );
    zk.close();
    watcher.close();
}

#[test]
fn a_process_that_dies_leaves_the_fleet_within_its_session_timeout() {
    if !zookeeper_available("a_process_that_dies_leaves_the_fleet_within_its_session_timeout") {
        return;
    }
    let server = ZkServer::start();
    let zk = ZooKeeper::connect(&server.hosts(), quick()).unwrap();
    let cache = InstanceCache::follow(&zk, "calc").unwrap();
    let mut child = std::process::Command::new(support::example("calculator_server"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--name",
            "doomed",
            "--service",
            "calc",
        ])
        .args(["--zookeeper", &server.hosts(), "--session-timeout", "2"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || cache
        .instances()
        .len()
        == 1));
    child.kill().unwrap();
    child.wait().unwrap();
    let died = Instant::now();
    assert!(wait_until(SOON, || cache.instances().is_empty()));
    // The server's own session timeout (2 s), plus the time it takes to notice.
    assert!(
        died.elapsed() < Duration::from_secs(8),
        "{:?}",
        died.elapsed()
    );
    zk.close();
}

#[test]
fn an_outage_of_zookeeper_keeps_the_last_instances_and_calls_going() {
    if !zookeeper_available("an_outage_of_zookeeper_keeps_the_last_instances_and_calls_going") {
        return;
    }
    let mut zk_server = ZkServer::start();
    let config = ZooKeeperConfig::default()
        .session_timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(10));
    let zk = ZooKeeper::connect(&zk_server.hosts(), config).unwrap();
    let thrift = calculator("a");
    let announcement = Announcement::register(&zk, &thrift, "calc", None).unwrap();
    let cache = InstanceCache::follow(&zk, "calc").unwrap();
    assert_eq!(cache.instances().len(), 1);
    let client: MultiThriftClient<Calc> = MultiThriftClient::discovered(
        cache.clone(),
        CalculatorSyncClient::new,
        // Timeouts a loaded machine never trips: the calls' part here is only to go on.
        ClientConfig::default()
            .read_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5)),
    );
    assert_eq!(client.call(|c| c.add(1, 2)).unwrap(), 3);

    zk_server.stop();
    // ZooKeeper is gone: the cache keeps what it knew, and calls go on.
    for i in 0..20 {
        assert_eq!(client.call(|c| c.add(i, 1)).unwrap(), i + 1);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cache.instances().len(), 1);

    // Back within the session timeout: the session, its node and the watch are back.
    zk_server.restart();
    let second =
        Registration::register(&zk, ServiceInstance::new("calc", "10.9.9.9", 1).unwrap()).unwrap();
    assert!(
        wait_until(SOON, || cache.instances().len() == 2),
        "{:?}",
        ids(&cache)
    );
    assert!(cache
        .instances()
        .iter()
        .any(|i| i.id == announcement.registration().instance().id));
    drop(second);
    assert!(wait_until(SOON, || cache.instances().len() == 1));
    assert_eq!(client.call(|c| c.add(2, 2)).unwrap(), 4);
    client.close();
    drop(announcement);
    zk.close();
}

#[test]
fn after_the_session_expires_nodes_come_back_and_the_cache_follows() {
    if !zookeeper_available("after_the_session_expires_nodes_come_back_and_the_cache_follows") {
        return;
    }
    let zk_server = ZkServer::start();
    let zk = ZooKeeper::connect(&zk_server.hosts(), quick()).unwrap();
    let registration =
        Registration::register(&zk, ServiceInstance::new("calc", "10.0.0.1", 1).unwrap()).unwrap();
    let cache = InstanceCache::follow(&zk, "calc").unwrap();
    let watcher = ZooKeeper::connect(&zk_server.hosts(), quick()).unwrap();
    let other_view = InstanceCache::follow(&watcher, "calc").unwrap();
    assert_eq!(other_view.instances().len(), 1);

    // Frozen past the 2 s session timeout: every session expires when it thaws.
    let (session, other_session) = (zk.session_id(), watcher.session_id());
    zk_server.freeze(true);
    std::thread::sleep(Duration::from_secs(4));
    zk_server.freeze(false);

    // New sessions: the node is created again, and both caches synchronise.
    assert!(wait_until(Duration::from_secs(20), || {
        zk.session_id() != session && watcher.session_id() != other_session
    }));
    let id = registration.instance().id.clone();
    assert!(wait_until(Duration::from_secs(20), || ids(&other_view) == [id.clone()]));
    assert!(wait_until(Duration::from_secs(20), || ids(&cache) == [id.clone()]));
    let late =
        Registration::register(&zk, ServiceInstance::new("calc", "10.0.0.2", 2).unwrap()).unwrap();
    assert!(wait_until(SOON, || other_view.instances().len() == 2));
    drop(late);
    drop(registration);
    assert!(wait_until(SOON, || other_view.instances().is_empty()));
    watcher.close();
    zk.close();
}

#[test]
fn an_outage_past_the_session_timeout_leaves_no_empty_fleet_while_it_registers_again() {
    if !zookeeper_available(
        "an_outage_past_the_session_timeout_leaves_no_empty_fleet_while_it_registers_again",
    ) {
        return;
    }
    let zk_server = ZkServer::start();
    // The registering process reaches ZooKeeper through a proxy, which keeps it away a little
    // longer than the following one once ZooKeeper is back.
    let proxy = FaultProxy::start(([127, 0, 0, 1], zk_server.port).into());
    let registering = ZooKeeper::connect(&proxy.endpoint(), quick()).unwrap();
    let registration =
        Registration::register(&registering, ServiceInstance::new("calc", "h", 1).unwrap())
            .unwrap();
    let following = ZooKeeper::connect(&zk_server.hosts(), quick()).unwrap();
    let published: Arc<parking_lot::Mutex<Vec<usize>>> = Arc::default();
    let on_change = {
        let published = published.clone();
        move |instances: &[ServiceInstance]| published.lock().push(instances.len())
    };
    let cache =
        InstanceCache::follow_under(&following, "/service", "calc", Some(Box::new(on_change)))
            .unwrap();
    assert_eq!(cache.instances().len(), 1);
    let (registering_session, following_session) =
        (registering.session_id(), following.session_id());
    // Away past the 2 s session timeout (ZooKeeper's own clock): every session expires, and
    // the node goes with its own.
    zk_server.freeze(true);
    proxy.set(Fault::Stall);
    std::thread::sleep(Duration::from_secs(4));
    zk_server.freeze(false);
    assert!(wait_until(Duration::from_secs(30), || following
        .session_id()
        != following_session));
    std::thread::sleep(Duration::from_millis(1500));
    proxy.set(Fault::Pass);
    assert!(wait_until(Duration::from_secs(30), || {
        registering.session_id() != registering_session && ids(&cache).len() == 1
    }));
    assert_eq!(ids(&cache), [registration.instance().id.clone()]);
    assert!(!published.lock().contains(&0), "{:?}", published.lock());
    drop(registration);
    registering.close();
    following.close();
}

#[test]
fn after_a_mere_reconnect_a_service_that_emptied_shows_empty() {
    if !zookeeper_available("after_a_mere_reconnect_a_service_that_emptied_shows_empty") {
        return;
    }
    let zk_server = ZkServer::start();
    // Sessions that outlive the test: nothing expires here.
    let config = ZooKeeperConfig::default()
        .session_timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(10));
    let registering = ZooKeeper::connect(&zk_server.hosts(), config.clone()).unwrap();
    let registration =
        Registration::register(&registering, ServiceInstance::new("calc", "h", 1).unwrap())
            .unwrap();
    let proxy = FaultProxy::start(([127, 0, 0, 1], zk_server.port).into());
    let following = ZooKeeper::connect(&proxy.endpoint(), config).unwrap();
    let cache = InstanceCache::follow(&following, "calc").unwrap();
    assert_eq!(cache.instances().len(), 1);
    let session = following.session_id();
    // The follower's connection is reset at its next ping; the only instance leaves meanwhile.
    proxy.set(Fault::Reset);
    assert!(wait_until(SOON, || proxy.faulted_connections() > 0));
    drop(registration);
    registering.close();
    proxy.set(Fault::Pass);
    // Back on the same session, the cache says the service is empty.
    assert!(
        wait_until(SOON, || cache.instances().is_empty()),
        "{:?}",
        ids(&cache)
    );
    assert_eq!(following.session_id(), session, "the session lived on");
    following.close();
}

#[test]
fn a_retry_never_goes_to_an_instance_that_left_while_its_call_was_under_way() {
    if !zookeeper_available(
        "a_retry_never_goes_to_an_instance_that_left_while_its_call_was_under_way",
    ) {
        return;
    }
    let zk_server = ZkServer::start();
    let zk = ZooKeeper::connect(&zk_server.hosts(), quick()).unwrap();
    let mut fleet: Vec<(ThriftServer, Announcement)> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let server = calculator_with(name, ServerConfig::default().workers(16));
            let announcement = Announcement::register(&zk, &server, "calc", None).unwrap();
            (server, announcement)
        })
        .collect();
    let cache = InstanceCache::follow(&zk, "calc").unwrap();
    assert!(wait_until(SOON, || cache.instances().len() == 3));
    let client: MultiThriftClient<Calc> = MultiThriftClient::discovered(
        cache.clone(),
        CalculatorSyncClient::new,
        ClientConfig::default()
            .read_timeout(Duration::from_secs(5))
            .retries(1)
            .retry_on::<TemporaryUnavailable>(),
    );
    let (leaving, announcement) = fleet.remove(0);
    // Calls whose first attempt is slow, then says "busy" (retryable): each retries once,
    // after "a" has left and stopped. A third of them would pick it.
    let start = Arc::new(Barrier::new(13));
    let callers: Vec<_> = (0..12)
        .map(|_| {
            let (client, start) = (client.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut first = true;
                client.call(|c| {
                    if std::mem::take(&mut first) {
                        c.slow(1200)?;
                        c.whoami(true)
                    } else {
                        c.whoami(false)
                    }
                })
            })
        })
        .collect();
    start.wait();
    // Every call's first attempt under way.
    assert!(wait_until(SOON, || {
        let busy = |server: &ThriftServer| server.stats().busy_workers;
        busy(&leaving) + fleet.iter().map(|(s, _)| busy(s)).sum::<usize>() == 12
    }));
    announcement.leave_and_stop(&leaving, Duration::from_millis(300));
    let failed: Vec<String> = callers
        .into_iter()
        .filter_map(|caller| caller.join().unwrap().err().map(|e| e.to_string()))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    client.close();
    for (server, announcement) in fleet {
        announcement.leave_and_stop(&server, Duration::ZERO);
    }
    zk.close();
}

#[test]
fn a_cache_dropped_while_its_session_is_gone_lets_go_of_its_callback() {
    if !zookeeper_available("a_cache_dropped_while_its_session_is_gone_lets_go_of_its_callback") {
        return;
    }
    /// Tells when it is dropped.
    struct Held(Arc<AtomicBool>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let zk_server = ZkServer::start();
    let zk = ZooKeeper::connect(&zk_server.hosts(), quick()).unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let held = Held(dropped.clone());
    let on_change = move |_: &[ServiceInstance]| {
        let _ = &held;
    };
    let cache =
        InstanceCache::follow_under(&zk, "/service", "calc", Some(Box::new(on_change))).unwrap();
    // ZooKeeper away past the session's timeout (2 s; its client gives it up after 2.8 s):
    // no new session can begin meanwhile.
    zk_server.freeze(true);
    std::thread::sleep(Duration::from_secs(5));
    drop(cache);
    assert!(wait_until(SOON, || dropped.load(Ordering::SeqCst)));
    zk_server.freeze(false);
    zk.close();
}

fn payload(cache: &InstanceCache) -> Vec<Option<serde_json::Value>> {
    cache
        .instances()
        .iter()
        .map(|i| i.payload.clone())
        .collect()
}

#[test]
fn an_update_while_the_node_cannot_be_made_is_written_once_it_can() {
    if !zookeeper_available("an_update_while_the_node_cannot_be_made_is_written_once_it_can") {
        return;
    }
    let server = ZkServer::start();
    zk_cli(&server.hosts(), &["create", "/apps", ""]);
    let zk = ZooKeeper::connect(&format!("{}/apps", server.hosts()), quick()).unwrap();
    let instance = ServiceInstance::new("calc", "10.0.0.1", 1).unwrap();
    let mut registration = Registration::register(&zk, instance.clone()).unwrap();
    // The whole tree goes, chroot included: the node cannot be made again until it is back.
    zk_cli(&server.hosts(), &["deleteall", "/apps"]);
    let restore = {
        let hosts = server.hosts();
        std::thread::spawn(move || zk_cli(&hosts, &["create", "/apps", ""]))
    };
    let updated = instance.with_payload(serde_json::json!({"weight": 2}));
    // Answered once the node is made with it, which is within the update's 10 s unless the
    // tree takes longer to come back on a loaded machine; the node gets it either way.
    let _ = registration.update(updated.clone());
    restore.join().unwrap();
    let cache = InstanceCache::follow(&zk, "calc").unwrap();
    assert!(wait_until(SOON, || payload(&cache) == [updated.payload.clone()]));
    // And later updates are written as usual.
    let again = updated.with_payload(serde_json::json!({"weight": 3}));
    registration.update(again.clone()).unwrap();
    assert!(wait_until(SOON, || payload(&cache) == [again.payload.clone()]));
    drop(registration);
    zk.close();
}

#[test]
fn an_update_that_failed_for_want_of_zookeeper_is_written_when_it_is_back() {
    if !zookeeper_available(
        "an_update_that_failed_for_want_of_zookeeper_is_written_when_it_is_back",
    ) {
        return;
    }
    let zk_server = ZkServer::start();
    let zk = ZooKeeper::connect(&zk_server.hosts(), quick()).unwrap();
    let mut registration =
        Registration::register(&zk, ServiceInstance::new("calc", "10.0.0.1", 1).unwrap()).unwrap();
    let watcher = ZooKeeper::connect(&zk_server.hosts(), quick()).unwrap();
    let view = InstanceCache::follow(&watcher, "calc").unwrap();
    assert_eq!(payload(&view), [None]);

    // Frozen while the update waits its 10 s (the session's connect timeout) in vain, past the
    // 2 s session timeout.
    zk_server.freeze(true);
    let updated = registration
        .instance()
        .clone()
        .with_payload(serde_json::json!({"draining": true}));
    assert!(registration.update(updated.clone()).is_err());
    // What the registration says it keeps...
    assert_eq!(registration.instance(), &updated);
    zk_server.freeze(false);
    // ...is what the node holds once ZooKeeper is back.
    assert!(
        wait_until(Duration::from_secs(20), || payload(&view)
            == [updated.payload.clone()]),
        "{:?}",
        view.instances()
    );
    drop(registration);
    watcher.close();
    zk.close();
}

#[test]
fn fifty_instances_registering_and_leaving_at_once_end_in_the_right_set() {
    if !zookeeper_available("fifty_instances_registering_and_leaving_at_once_end_in_the_right_set")
    {
        return;
    }
    let zk_server = ZkServer::start();
    let sessions: Vec<ZooKeeper> = (0..5)
        .map(|_| ZooKeeper::connect(&zk_server.hosts(), quick()).unwrap())
        .collect();
    let cache = InstanceCache::follow(&sessions[0], "fleet").unwrap();
    let start = Arc::new(Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|n| {
            let (zk, start) = (sessions[n % 5].clone(), start.clone());
            std::thread::spawn(move || {
                let instance = ServiceInstance::new("fleet", "10.0.0.1", 1000 + n as u16)
                    .unwrap()
                    .with_id(&format!("node-{n:02}"))
                    .unwrap();
                start.wait();
                let registration = Registration::register(&zk, instance).unwrap();
                // Odd ones leave again at once; even ones stay.
                if n % 2 == 1 {
                    registration.close();
                    None
                } else {
                    Some(registration)
                }
            })
        })
        .collect();
    let kept: Vec<Registration> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    let expected: Vec<String> = (0..50).step_by(2).map(|n| format!("node-{n:02}")).collect();
    assert!(
        wait_until(SOON, || ids(&cache) == expected),
        "{:?}",
        ids(&cache)
    );
    drop(kept);
    assert!(wait_until(SOON, || cache.instances().is_empty()));
    for zk in sessions {
        zk.close();
    }
}

#[test]
fn a_rolling_restart_under_load_fails_no_call() {
    if !zookeeper_available("a_rolling_restart_under_load_fails_no_call") {
        return;
    }
    let zk_server = ZkServer::start();
    let zk = ZooKeeper::connect(&zk_server.hosts(), quick()).unwrap();
    // Only the restarts are under test: a server that sheds calls held past its queue wait by a
    // stall of the machine (seen with CPU hogs beside the test) answers overload, not a restart.
    let calculator = |name: &str| {
        calculator_with(
            name,
            ServerConfig::default()
                .workers(4)
                .max_queue_wait(Duration::MAX),
        )
    };
    let mut fleet: Vec<(ThriftServer, Announcement)> = (0..3)
        .map(|n| {
            let server = calculator(&format!("s{n}"));
            let announcement = Announcement::register(&zk, &server, "calc", None).unwrap();
            (server, announcement)
        })
        .collect();
    let cache = InstanceCache::follow(&zk, "calc").unwrap();
    assert_eq!(cache.instances().len(), 3);
    let config = ClientConfig::default()
        .read_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1))
        .pool_timeout(Duration::from_secs(5))
        .retries(2);
    let client: MultiThriftClient<Calc> =
        MultiThriftClient::discovered(cache.clone(), CalculatorSyncClient::new, config);
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|t| {
            let (client, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, Vec::new());
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    match client.call(|c| c.add(t, i)) {
                        Ok(sum) if sum == t + i => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                    i += 1;
                }
                (ok, failed)
            })
        })
        .collect();
    for n in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let (server, announcement) = fleet.remove(0);
        // Leave, give clients a moment to see it, drain and stop; then a new server joins.
        announcement.leave_and_stop(&server, Duration::from_millis(500));
        let server = calculator(&format!("s{n}-again"));
        let announcement = Announcement::register(&zk, &server, "calc", None).unwrap();
        fleet.push((server, announcement));
        assert!(wait_until(SOON, || cache.instances().len() == 3));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let mut calls = 0;
    for caller in callers {
        let (ok, failed) = caller.join().unwrap();
        assert!(failed.is_empty(), "failed calls: {failed:?}");
        calls += ok;
    }
    assert!(calls > 100, "only {calls} calls");
    client.close();
    for (server, announcement) in fleet {
        announcement.leave_and_stop(&server, Duration::ZERO);
    }
    zk.close();
}

#[test]
fn the_discovery_example_takes_a_server_out_and_back_with_no_failed_call() {
    if !zookeeper_available("the_discovery_example_takes_a_server_out_and_back_with_no_failed_call")
    {
        return;
    }
    let server = ZkServer::start();
    let output = std::process::Command::new(support::example("discovery"))
        .args(["--zookeeper", &server.hosts()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    for name in ["a", "b", "c"] {
        assert!(
            stdout.contains(&format!("  {name}: ")),
            "{name} never answered: {stdout}"
        );
    }
}

#[test]
fn a_chroot_in_the_connect_string_and_another_base_path_are_curators_too() {
    if !curator_available("a_chroot_in_the_connect_string_and_another_base_path_are_curators_too") {
        return;
    }
    let server = ZkServer::start();
    zk_cli(&server.hosts(), &["create", "/apps", ""]);
    let zk = ZooKeeper::connect(&format!("{}/apps", server.hosts()), quick()).unwrap();
    let instance = ServiceInstance::new("calc", "10.0.0.8", 7000)
        .unwrap()
        .with_id("rooted")
        .unwrap();
    let registration = Registration::register_under(&zk, "/registry", instance).unwrap();
    assert_eq!(registration.path(), "/registry/calc/rooted");
    // Curator, connected without the chroot, finds it at the full path.
    let seen = curator_query(&server.hosts(), "/apps/registry", "calc");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains(r#""id":"rooted""#), "{seen:?}");
    let cache = InstanceCache::follow_under(&zk, "/registry", "calc", None).unwrap();
    assert_eq!(ids(&cache), ["rooted"]);

    // A server bound to every interface must say which address to publish.
    let wildcard = ThriftServer::bind(
        "0.0.0.0:0",
        CalculatorSyncProcessor::new(Arc::new(CalculatorService::new("w"))),
        ServerConfig::default(),
    )
    .unwrap();
    let err = Announcement::register(&zk, &wildcard, "calc", None).unwrap_err();
    assert!(matches!(err, DiscoveryError::InvalidName(_)), "{err}");
    let advertised =
        Announcement::register(&zk, &wildcard, "calc", Some("calc-1.internal")).unwrap();
    assert_eq!(
        advertised.registration().instance().address,
        "calc-1.internal"
    );
    drop((advertised, registration));
    zk.close();
}
