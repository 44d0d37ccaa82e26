//! Overload mode (`cargo bench --bench rpc -- --overload`): clients with a deadline offer a
//! server 0.5, 1, 3 and 10 times what its workers can serve, and the report says how much of
//! that capacity reached a client in time, how many of the clients got answers at all, and how
//! long the answered calls took; this crate's `ThriftServer` beside the `thrift` crate's
//! `TServer`, both with four workers, each in a process of its own started fresh per cell.
//!
//! Every call is `slow(20)`: a worker serves at most 50 a second, four workers 200. Each
//! client thread calls in a loop through its own `ThriftClient` (one connection, breaker off)
//! with gevent-thrift's 250 ms response timeout: a call that times out closes its connection, and
//! the next call opens a new one, as a client that gives up does; a call the server shed
//! (answered at once, not run) is followed by a pause as long as a call, as a caller backing
//! off would make. Offered load is the number of clients over the number of workers.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use blocking_thrift::{ClientConfig, ThriftClient};
use hdrhistogram::Histogram;

use super::child::Process;
use super::median;
use super::peers::{self, OurCalc};
use crate::service::calculator::{CalculatorSyncClient, TCalculatorSyncClient};

const WORKERS: usize = 4;
const CALL_MILLIS: i32 = 20;
const DEADLINE: Duration = Duration::from_millis(250);
/// Calls a second the workers can serve.
const CAPACITY: f64 = WORKERS as f64 * 1000.0 / CALL_MILLIS as f64;
/// Offered load, as a multiple of capacity.
const LOADS: [f64; 4] = [0.5, 1.0, 3.0, 10.0];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Server {
    Ours,
    Stock,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Ours => "ours",
            Server::Stock => "stock TServer",
        }
    }
}

/// Runs the overload comparison and prints its table.
pub(crate) fn main(quick: bool) {
    let (rounds, warmup, window) = if quick {
        (1, Duration::from_millis(500), Duration::from_secs(2))
    } else {
        (3, Duration::from_secs(1), Duration::from_secs(5))
    };
    let mut samples: BTreeMap<(u32, Server), Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        for load in LOADS {
            let mut servers = [Server::Ours, Server::Stock];
            if round % 2 == 1 {
                servers.reverse();
            }
            for server in servers {
                let sample = measure(server, load, warmup, window);
                samples
                    .entry(((load * 10.0) as u32, server))
                    .or_default()
                    .push(sample);
            }
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    print_table(&samples);
}

/// Child mode (`--serve-stock WORKERS`): the `thrift` crate's `TServer` with `WORKERS`
/// workers on a free loopback port; prints it and serves until killed.
pub(crate) fn serve_stock(workers: usize) -> ! {
    println!("listening on {}", peers::start_stock_with(workers));
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

/// Starts `server` in a process of its own.
fn start(server: Server) -> Process {
    let flag = match server {
        Server::Ours => "--serve-ours",
        Server::Stock => "--serve-stock",
    };
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args([flag, &WORKERS.to_string()]);
    Process::start(command)
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Calls answered in time a second, as a share of capacity.
    goodput: f64,
    /// Share of the clients that got at least one answer in the window.
    answered_clients: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Calls the server shed a second (answered at once, not run).
    shed_per_sec: f64,
}

/// What one client thread saw in the window.
struct Seen {
    answered: u64,
    shed: u64,
    latency: Histogram<u64>,
}

fn measure(server: Server, load: f64, warmup: Duration, window: Duration) -> Sample {
    let process = start(server);
    let clients = (load * WORKERS as f64).round() as usize;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (measuring, stop, ready) = (measuring.clone(), stop.clone(), ready.clone());
            let endpoint = process.addr.to_string();
            std::thread::spawn(move || {
                let config = ClientConfig::default()
                    .pool_size(1)
                    .read_timeout(DEADLINE)
                    .connect_timeout(DEADLINE)
                    .pool_timeout(DEADLINE)
                    .maxfail(u32::MAX - 1);
                let client: ThriftClient<OurCalc> =
                    ThriftClient::new(&endpoint, CalculatorSyncClient::new, config);
                let mut seen = Seen {
                    answered: 0,
                    shed: 0,
                    latency: Histogram::new(3).unwrap(),
                };
                ready.wait();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = client.call(|c| c.slow(CALL_MILLIS));
                    if !measuring.load(Ordering::Relaxed) {
                        continue;
                    }
                    match result {
                        Ok(_) => {
                            seen.answered += 1;
                            let _ = seen.latency.record(started.elapsed().as_micros() as u64);
                        }
                        Err(err) if err.is_overloaded() => {
                            seen.shed += 1;
                            // A shed call comes back at once: wait as a caller backing off would
                            // before trying again, rather than spin.
                            std::thread::sleep(Duration::from_millis(CALL_MILLIS as u64));
                        }
                        Err(_) => {}
                    }
                }
                client.close();
                seen
            })
        })
        .collect();
    ready.wait();
    std::thread::sleep(warmup);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(window);
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    // Clients stuck on a starved connection of the stock server wake at their timeout.
    let seen: Vec<Seen> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut latency = Histogram::<u64>::new(3).unwrap();
    for s in &seen {
        latency.add(&s.latency).unwrap();
    }
    let answered: u64 = seen.iter().map(|s| s.answered).sum();
    let shed: u64 = seen.iter().map(|s| s.shed).sum();
    Sample {
        goodput: answered as f64 / elapsed / CAPACITY,
        answered_clients: seen.iter().filter(|s| s.answered > 0).count() as f64 / clients as f64,
        p50_ms: latency.value_at_quantile(0.5) as f64 / 1e3,
        p99_ms: latency.value_at_quantile(0.99) as f64 / 1e3,
        shed_per_sec: shed as f64 / elapsed,
    }
}

fn print_table(samples: &BTreeMap<(u32, Server), Vec<Sample>>) {
    println!();
    println!(
        "Overload: {WORKERS} workers, every call slow({CALL_MILLIS}) (capacity {CAPACITY:.0} calls/s), \
         clients calling in a loop with a {} ms deadline; medians over rounds.",
        DEADLINE.as_millis()
    );
    println!();
    println!("| offered load | server | clients | goodput (share of capacity) | clients answered | p50 ms | p99 ms | shed calls/s |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for (&(load, server), mine) in samples {
        let med = |f: fn(&Sample) -> f64| median(&mut mine.iter().map(f).collect::<Vec<_>>());
        let load = f64::from(load) / 10.0;
        println!(
            "| {load}x | {} | {} | {:.2} | {:.0} % | {:.1} | {:.1} | {:.0} |",
            server.name(),
            (load * WORKERS as f64).round(),
            med(|s| s.goodput),
            med(|s| s.answered_clients) * 100.0,
            med(|s| s.p50_ms),
            med(|s| s.p99_ms),
            med(|s| s.shed_per_sec),
        );
    }
}
