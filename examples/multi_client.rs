//! Calls `whoami(false)` on a set of Calculator servers through a `MultiThriftClient` whose
//! endpoints function shuffles them, prints which server answered each call and a summary;
//! exits non-zero if any call failed.
//!
//! ```text
//! cargo run --example calculator_server -- --addr 127.0.0.1:9090 --name a &
//! cargo run --example calculator_server -- --addr 127.0.0.1:9091 --name b &
//! cargo run --example multi_client -- --endpoints 127.0.0.1:9090,127.0.0.1:9091 [--retries N] [--calls N]
//! ```
//!
//! Or through service discovery, with servers that registered in ZooKeeper:
//!
//! ```text
//! cargo run --example multi_client -- --zookeeper 127.0.0.1:2181 --service calc [--session-timeout SECS]
//! ```

#[path = "../idl/service.rs"]
mod service;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blocking_thrift::discovery::{InstanceCache, ZooKeeper, ZooKeeperConfig};
use blocking_thrift::{ClientConfig, InputProtocol, MultiThriftClient, OutputProtocol};
use service::calculator::{CalculatorSyncClient, TCalculatorSyncClient};

struct Args {
    endpoints: Vec<String>,
    zookeeper: Option<String>,
    service: Option<String>,
    session_timeout: Duration,
    retries: u32,
    calls: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        endpoints: Vec::new(),
        zookeeper: None,
        service: None,
        session_timeout: Duration::from_secs(10),
        retries: 1,
        calls: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoints" => {
                args.endpoints = value()?
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(String::from)
                    .collect()
            }
            "--retries" => {
                args.retries = value()?.parse().map_err(|e| format!("--retries: {e}"))?
            }
            "--calls" => args.calls = value()?.parse().map_err(|e| format!("--calls: {e}"))?,
            "--zookeeper" => args.zookeeper = Some(value()?),
            "--service" => args.service = Some(value()?),
            "--session-timeout" => {
                let secs: f64 = value()?
                    .parse()
                    .map_err(|e| format!("--session-timeout: {e}"))?;
                args.session_timeout = Duration::from_secs_f64(secs);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.zookeeper.is_some() != args.service.is_some() {
        return Err("--zookeeper and --service go together".into());
    }
    if args.endpoints.is_empty() == args.zookeeper.is_none() {
        return Err("either --endpoints HOST:PORT,... or --zookeeper HOSTS --service NAME".into());
    }
    Ok(args)
}

/// A small xorshift generator, enough to spread calls; shared by every call.
struct Shuffler(AtomicU64);

impl Shuffler {
    fn new() -> Shuffler {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Shuffler(AtomicU64::new(seed | 1))
    }

    fn next(&self) -> u64 {
        // Races between threads only make the sequence less predictable.
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        x
    }

    /// Fisher-Yates.
    fn shuffle<T>(&self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

type Calc = CalculatorSyncClient<InputProtocol, OutputProtocol>;

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut session = None;
    let client = match (&args.zookeeper, &args.service) {
        (Some(hosts), Some(service)) => {
            let zk_config = ZooKeeperConfig::default().session_timeout(args.session_timeout);
            let followed = ZooKeeper::connect(hosts, zk_config).and_then(|zk| {
                let cache = InstanceCache::follow(&zk, service)?;
                Ok((zk, cache))
            });
            match followed {
                Ok((zk, cache)) => {
                    println!("{service}: {} instance(s)", cache.instances().len());
                    session = Some(zk);
                    let config = ClientConfig::default().retries(args.retries);
                    MultiThriftClient::discovered(cache, CalculatorSyncClient::new, config)
                }
                Err(e) => {
                    eprintln!("error: cannot follow {service} on {hosts}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => listed(&args),
    };
    let failed = call_and_report(&client, args.calls);
    client.close();
    if let Some(zk) = session {
        zk.close();
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A client over the endpoints given, shuffled for every call.
fn listed(args: &Args) -> MultiThriftClient<Calc> {
    let endpoints = args.endpoints.clone();
    let shuffler = Shuffler::new();
    MultiThriftClient::new(
        move || {
            let mut order = endpoints.clone();
            shuffler.shuffle(&mut order);
            order
        },
        CalculatorSyncClient::new,
        ClientConfig::default().retries(args.retries),
    )
}

/// Makes `calls` calls, says which server answered each, and returns how many failed.
fn call_and_report(client: &MultiThriftClient<Calc>, calls: u32) -> u32 {
    let mut answers: BTreeMap<String, u32> = BTreeMap::new();
    let mut failed = 0;
    for call in 1..=calls {
        match client.call(|c| c.whoami(false)) {
            Ok(name) => {
                println!("call {call}: answered by {name}");
                *answers.entry(name).or_default() += 1;
            }
            Err(e) => {
                println!("call {call}: failed: {e}");
                failed += 1;
            }
        }
    }

    let stats = client.stats();
    println!(
        "\n{calls} call(s): {} answered, {failed} failed, {} retried attempt(s)",
        calls - failed,
        stats.retries
    );
    for (name, count) in &answers {
        println!("  {name}: {count} answer(s)");
    }
    for (endpoint, s) in &stats.endpoints {
        println!(
            "  {endpoint}: {} call(s), {} failure(s), breaker {:?}",
            s.calls, s.failures, s.breaker
        );
    }
    failed
}
