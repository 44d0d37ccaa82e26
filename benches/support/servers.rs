//! Server-only mode (`cargo bench --bench rpc -- --servers`): one load for every server, the
//! `thrift` crate's plain generated client doing `add` over one framed connection per thread,
//! against this crate's `ThriftServer` and Apache Thrift's C++ servers, each server in a process
//! of its own and started fresh for every cell. Reports calls/s and latency, and CPU per call of
//! the server process (from its own CPU time in /proc) beside that of the load.
//!
//! With both sides on the same saturated cores, calls/s is two CPU-seconds over the server's plus
//! the load's CPU per call, so the CPU columns say where the time goes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::child::Process;
use super::peers::{self, Payload};
use super::{median, sys};

/// The servers compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Server {
    /// This crate's server with this many workers.
    Ours(usize),
    /// Apache Thrift's C++ `TThreadPoolServer`, with more workers than clients: a thread per
    /// connection.
    CppThreadPool,
    /// Apache Thrift's C++ `TNonblockingServer`: one I/O thread, four workers.
    CppNonblocking,
}

impl Server {
    fn name(self) -> String {
        match self {
            Server::Ours(workers) => format!("ours, {workers} workers"),
            Server::CppThreadPool => "C++ TThreadPoolServer".to_owned(),
            Server::CppNonblocking => "C++ TNonblockingServer".to_owned(),
        }
    }
}

const CLIENTS: [usize; 2] = [16, 64];

/// Runs the server-only comparison and prints its table; with `one_core`, the load and every
/// server run on the first CPU this process may use, so that no thread is ever woken on another.
pub(crate) fn main(quick: bool, one_core: bool) {
    let cpp = build_cpp();
    if one_core {
        // Inherited by the load's threads and by the server processes, all started later.
        sys::Affinity::current().first().apply_to_all_threads();
    }
    let mut servers = vec![Server::Ours(4), Server::Ours(16)];
    if cpp.is_some() {
        servers.extend([Server::CppThreadPool, Server::CppNonblocking]);
    }
    let (rounds, warmup, window) = if quick {
        (2, Duration::from_millis(200), Duration::from_millis(500))
    } else {
        (5, Duration::from_millis(500), Duration::from_secs(2))
    };
    let mut samples: BTreeMap<(usize, Server), Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        for clients in CLIENTS {
            // Interleaved: every server of a client count in each round, in a rotating order.
            let mut order = servers.clone();
            let turn = round % order.len();
            order.rotate_left(turn);
            for server in order {
                let sample = measure(server, clients, cpp.as_deref(), warmup, window);
                samples.entry((clients, server)).or_default().push(sample);
            }
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    print_table(&samples, &servers, one_core);
}

/// Child mode (`--serve-ours WORKERS`): serves the reference service with this crate's server
/// on a free loopback port, prints it, and serves until standard input closes.
pub(crate) fn serve_ours(workers: usize) -> ! {
    let server = peers::start_ours_with("server-only", workers);
    println!("listening on {}", server.local_addr());
    let _ = std::io::stdout().flush();
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    server.stop();
    std::process::exit(0);
}

/// Builds the C++ peers with `benches/cpp/build.sh`, or says why not.
fn build_cpp() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/cpp");
    let built = Command::new("bash")
        .arg(root.join("benches/cpp/build.sh"))
        .arg(&out)
        .output();
    match built {
        Ok(o) if o.status.success() => Some(out.join("calculator_server_cpp")),
        Ok(o) => {
            eprintln!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            eprintln!("SKIPPED: the C++ servers (see above); comparing our servers only");
            None
        }
        Err(err) => {
            eprintln!("SKIPPED: the C++ servers: cannot run benches/cpp/build.sh: {err}");
            None
        }
    }
}

/// Starts `server` in a process of its own.
fn start(server: Server, clients: usize, cpp: Option<&Path>) -> Process {
    let command = match server {
        Server::Ours(workers) => {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.args(["--serve-ours", &workers.to_string()]);
            c
        }
        Server::CppThreadPool => {
            let mut c = Command::new(cpp.unwrap());
            c.args(["threadpool", &(clients * 2).to_string()]);
            c
        }
        Server::CppNonblocking => {
            let mut c = Command::new(cpp.unwrap());
            c.args(["nonblocking", "4"]);
            c
        }
    };
    Process::start(command)
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    calls_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    server_cpu_us: f64,
    client_cpu_us: f64,
    /// The slowest client's share of the calls, times the number of clients: 1 is fair.
    slowest_share: f64,
}

fn measure(
    server: Server,
    clients: usize,
    cpp: Option<&Path>,
    warmup: Duration,
    window: Duration,
) -> Sample {
    let process = start(server, clients, cpp);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (measuring, stop, ready) = (measuring.clone(), stop.clone(), ready.clone());
            let addr = process.addr;
            std::thread::spawn(move || {
                let (mut client, _socket) = peers::stock_client(addr).expect("connect");
                let mut histogram = Histogram::<u64>::new(3).unwrap();
                let calls = AtomicU64::new(0);
                ready.wait();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    Payload::Add.call(&mut client, &[]).expect("a call failed");
                    if measuring.load(Ordering::Relaxed) {
                        let _ = histogram.record(started.elapsed().as_nanos() as u64);
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (histogram, calls.into_inner())
            })
        })
        .collect();
    ready.wait();
    std::thread::sleep(warmup);
    let (server_before, client_before) = (process.cpu_time(), sys::cpu_time());
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(window);
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let (server_after, client_after) = (process.cpu_time(), sys::cpu_time());
    stop.store(true, Ordering::Relaxed);
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let mut per_client = Vec::new();
    for thread in threads {
        let (theirs, calls) = thread.join().unwrap();
        histogram.add(theirs).unwrap();
        per_client.push(calls);
    }
    let calls: u64 = per_client.iter().sum();
    let per_call = |cpu: Duration| cpu.as_secs_f64() * 1e6 / calls.max(1) as f64;
    Sample {
        calls_per_sec: calls as f64 / elapsed.as_secs_f64(),
        p50_us: histogram.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: histogram.value_at_quantile(0.99) as f64 / 1e3,
        server_cpu_us: per_call(server_after - server_before),
        client_cpu_us: per_call(client_after - client_before),
        slowest_share: *per_client.iter().min().unwrap() as f64 * clients as f64
            / calls.max(1) as f64,
    }
}

fn print_table(
    samples: &BTreeMap<(usize, Server), Vec<Sample>>,
    servers: &[Server],
    one_core: bool,
) {
    println!();
    println!("Server-only: the thrift crate's plain client doing `add`, one framed connection per");
    println!(
        "client thread, against each server in a process of its own ({}).",
        sys::machine()
    );
    if one_core {
        println!("The load and every server ran on one CPU (`--one-core`).");
    }
    println!("Medians over rounds; ratios are the median of same-round ratios to the C++ TThreadPoolServer.");
    println!();
    println!("| clients | server | calls/s | p50 µs | p99 µs | server CPU µs/call | load CPU µs/call | slowest client's share | calls/s vs C++ pool | server CPU vs C++ pool | p99 vs C++ pool |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for clients in CLIENTS {
        let reference = samples.get(&(clients, Server::CppThreadPool));
        for &server in servers {
            let Some(mine) = samples.get(&(clients, server)) else {
                continue;
            };
            let med = |f: fn(&Sample) -> f64| median(&mut mine.iter().map(f).collect::<Vec<_>>());
            let ratio = |f: fn(&Sample) -> f64| match reference {
                Some(theirs) if server != Server::CppThreadPool => format!(
                    "{:.2}",
                    median(
                        &mut mine
                            .iter()
                            .zip(theirs)
                            .map(|(a, b)| f(a) / f(b))
                            .collect::<Vec<_>>()
                    )
                ),
                _ => String::new(),
            };
            println!(
                "| {clients} | {} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                server.name(),
                med(|s| s.calls_per_sec),
                med(|s| s.p50_us),
                med(|s| s.p99_us),
                med(|s| s.server_cpu_us),
                med(|s| s.client_cpu_us),
                med(|s| s.slowest_share),
                ratio(|s| s.calls_per_sec),
                ratio(|s| s.server_cpu_us),
                ratio(|s| s.p99_us),
            );
        }
    }
}
