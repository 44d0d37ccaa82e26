//! Calls `whoami(false)` on a set of Calculator servers through a `MultiThriftClient` whose
//! endpoints function shuffles them, prints which server answered each call and a summary;
//! exits non-zero if any call failed.
//!
//! ```text
//! cargo run --example calculator_server -- --addr 127.0.0.1:9090 --name a &
//! cargo run --example calculator_server -- --addr 127.0.0.1:9091 --name b &
//! cargo run --example multi_client -- --endpoints 127.0.0.1:9090,127.0.0.1:9091 [--retries N] [--calls N]
//! ```

#[path = "../idl/service.rs"]
mod service;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use blocking_thrift::{ClientConfig, MultiThriftClient};
use service::calculator::{CalculatorSyncClient, TCalculatorSyncClient};

struct Args {
    endpoints: Vec<String>,
    retries: u32,
    calls: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        endpoints: Vec::new(),
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
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.endpoints.is_empty() {
        return Err("--endpoints HOST:PORT,HOST:PORT,... is required".into());
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

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let endpoints = args.endpoints;
    let shuffler = Shuffler::new();
    let client = MultiThriftClient::new(
        move || {
            let mut order = endpoints.clone();
            shuffler.shuffle(&mut order);
            order
        },
        CalculatorSyncClient::new,
        ClientConfig::default().retries(args.retries),
    );

    let mut answers: BTreeMap<String, u32> = BTreeMap::new();
    let mut failed = 0;
    for call in 1..=args.calls {
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
        "\n{} call(s): {} answered, {failed} failed, {} retried attempt(s)",
        args.calls,
        args.calls - failed,
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
    client.close();
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
