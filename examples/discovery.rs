//! Service discovery end to end: three Calculator servers register in ZooKeeper, four threads
//! call the service through a client that follows the fleet, and meanwhile one server leaves
//! the fleet, stops, starts again and rejoins. Prints which server answered how often and
//! exits non-zero if any call failed.
//!
//! ```text
//! scripts/zookeeper.sh start            # a local ZooKeeper on 127.0.0.1:2181
//! cargo run --example discovery -- --zookeeper 127.0.0.1:2181
//! ```

#[path = "../idl/service.rs"]
mod service;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use blocking_thrift::discovery::{Announcement, InstanceCache, ZooKeeper, ZooKeeperConfig};
use blocking_thrift::{
    ClientConfig, InputProtocol, MultiThriftClient, OutputProtocol, ServerConfig, ThriftServer,
};
use service::calculator::{CalculatorSyncClient, CalculatorSyncProcessor, TCalculatorSyncClient};
use service::CalculatorService;

type Calc = CalculatorSyncClient<InputProtocol, OutputProtocol>;

const SERVICE: &str = "calculator-demo";

/// Starts a server named `name` on a free loopback port and registers it.
fn join(zk: &ZooKeeper, name: &str) -> Result<(ThriftServer, Announcement), String> {
    let processor = CalculatorSyncProcessor::new(CalculatorService::new(name));
    let config = ServerConfig::default().workers(4);
    let server = ThriftServer::bind("127.0.0.1:0", processor, config).map_err(|e| e.to_string())?;
    server.start().map_err(|e| e.to_string())?;
    let announcement =
        Announcement::register(zk, &server, SERVICE, None).map_err(|e| e.to_string())?;
    println!(
        "{name} serves on {} and registered {}",
        server.local_addr(),
        announcement.registration().path()
    );
    Ok((server, announcement))
}

fn run(hosts: &str) -> Result<u64, String> {
    let config = ZooKeeperConfig::default().session_timeout(Duration::from_secs(10));
    let zk = ZooKeeper::connect(hosts, config).map_err(|e| e.to_string())?;
    let mut fleet = BTreeMap::new();
    for name in ["a", "b", "c"] {
        fleet.insert(name, join(&zk, name)?);
    }
    let cache = InstanceCache::follow(&zk, SERVICE).map_err(|e| e.to_string())?;
    println!("{SERVICE}: {} instances", cache.instances().len());
    let client: MultiThriftClient<Calc> = MultiThriftClient::discovered(
        cache.clone(),
        CalculatorSyncClient::new,
        ClientConfig::default().retries(2),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            thread::spawn(move || {
                let mut answers: BTreeMap<String, u64> = BTreeMap::new();
                let mut failed = 0;
                while !stop.load(Ordering::Relaxed) {
                    match client.call(|c| c.whoami(false)) {
                        Ok(name) => *answers.entry(name).or_default() += 1,
                        Err(e) => {
                            println!("call failed: {e}");
                            failed += 1;
                        }
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                (answers, failed)
            })
        })
        .collect();

    thread::sleep(Duration::from_secs(1));
    let (server, announcement) = fleet.remove("b").expect("b is in the fleet");
    println!("b leaves the fleet, drains and stops");
    announcement.leave_and_stop(&server, Duration::from_millis(500));
    thread::sleep(Duration::from_secs(1));
    println!("{SERVICE}: {} instances", cache.instances().len());
    println!("b starts again and rejoins");
    fleet.insert("b", join(&zk, "b")?);
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);

    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0;
    for caller in callers {
        let (theirs, their_failures) = caller.join().map_err(|_| "a caller panicked")?;
        for (name, count) in theirs {
            *answers.entry(name).or_default() += count;
        }
        failed += their_failures;
    }
    for (name, count) in &answers {
        println!("  {name}: {count} answer(s)");
    }
    let total: u64 = answers.values().sum();
    println!("{total} call(s) answered, {failed} failed");
    client.close();
    for (_, (server, announcement)) in fleet {
        announcement.leave_and_stop(&server, Duration::ZERO);
    }
    zk.close();
    Ok(failed)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let mut args = std::env::args().skip(1);
    let hosts = match (args.next().as_deref(), args.next()) {
        (Some("--zookeeper"), Some(hosts)) => hosts,
        _ => {
            eprintln!("usage: discovery --zookeeper HOST:PORT[,HOST:PORT...]");
            return ExitCode::from(2);
        }
    };
    match run(&hosts) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
