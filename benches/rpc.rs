//! Calls per second, latency and CPU per call of this crate's client and server, next to the
//! `thrift` crate's own `TServer` and plain client, and next to a floor that moves the same
//! bytes over plain sockets with no Thrift at all. Loopback only.
//!
//! ```sh
//! cargo bench --bench rpc              # full: 7 rounds of 0.5 s per cell, about 6 minutes
//! cargo bench --bench rpc -- --quick   # 3 rounds of 0.1 s per cell, well under a minute
//! cargo bench --bench rpc -- --filter ours/add/4 --rounds 1 --duration-ms 5000 --no-extras
//! cargo bench --bench rpc -- --servers [--quick] [--one-core]  # server-only, against Apache Thrift's C++ servers
//! cargo bench --bench rpc -- --overload [--quick]  # deadline-bound clients offered 0.5x to 10x capacity
//! ```
//!
//! Every cell (stack x payload x client threads) runs once per round, in a shuffled order
//! that keeps the stacks of one payload and client count together, so drift over the run
//! touches all cells alike and both sides of a ratio at nearly the same time; the report gives
//! the median and the range over rounds, and each ratio is the median of the same-round ratios.
//! Each cell runs in a process of its own (this binary again, with `--cell`), which starts the
//! servers the cell needs, so no cell inherits threads, connections or their placement on the
//! CPUs from the cells before it. Clients and servers share that process, so CPU per call is the
//! process's user plus system time (getrusage) over the measured window, divided by calls.

mod support;

#[path = "../idl/service.rs"]
mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blocking_thrift::{BreakerState, ClientConfig, Error, ThriftClient, ThriftServer};
use hdrhistogram::Histogram;

use service::calculator::CalculatorSyncClient;
use support::peers::{self, OurCalc, Payload, StockCalc, FRAME_BUFFER, SERVER_WORKERS};
use support::{median, sys};

const CLIENT_COUNTS: [usize; 4] = [1, 4, 16, 64];
const IDLE_CONNECTIONS: usize = 1_000;
const IDLE_CELL_CLIENTS: usize = 16;

/// Which client talks to which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Stack {
    Floor,
    Stock,
    Ours,
    OursToStock,
    StockToOurs,
    OursIdle,
    FloorCopies,
}

impl Stack {
    const SWEPT: [Stack; 5] = [
        Stack::Floor,
        Stack::Stock,
        Stack::Ours,
        Stack::OursToStock,
        Stack::StockToOurs,
    ];

    fn name(self) -> &'static str {
        match self {
            Stack::Floor => "floor",
            Stack::Stock => "stock",
            Stack::Ours => "ours",
            Stack::OursToStock => "ours-x-stock",
            Stack::StockToOurs => "stock-x-ours",
            Stack::OursIdle => "ours+1k-idle",
            Stack::FloorCopies => "floor+copies",
        }
    }

    fn legend(self) -> &'static str {
        match self {
            Stack::Floor => "the same framed bytes over plain TcpStreams (no-delay), a server thread per connection that reads a frame and writes the prepared response; no Thrift",
            Stack::Stock => "thrift::server::TServer (framed, binary) and the generated client over TTcpChannel + TFramed{Read,Write}Transport + TBinary protocols, one connection per client thread",
            Stack::Ours => "ThriftServer and ThriftClient (pool and breaker on, default settings but pool_size = client threads and 5 s timeouts)",
            Stack::OursToStock => "our ThriftClient against the stock TServer",
            Stack::StockToOurs => "the stock client against our ThriftServer",
            Stack::OursIdle => "ours, while 1,000 idle connections (raw sockets that send nothing) are held open to the server",
            Stack::FloorCopies => "the floor, plus the copies of the payload that any library serving generated code makes, as ours does: the caller's owned argument and its encoding into the request on the client, its decoding into a new vector and the response's encoding on the server (echo-64k only)",
        }
    }

    fn client(self) -> Side {
        match self {
            Stack::Floor | Stack::FloorCopies => Side::Raw,
            Stack::Stock | Stack::StockToOurs => Side::Stock,
            Stack::Ours | Stack::OursToStock | Stack::OursIdle => Side::Ours,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Raw,
    Stock,
    Ours,
}

/// One measured configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Cell {
    payload: Payload,
    clients: usize,
    stack: Stack,
}

impl Cell {
    fn label(&self) -> String {
        format!(
            "{}/{}/{}",
            self.stack.name(),
            self.payload.name(),
            self.clients
        )
    }
}

struct Options {
    quick: bool,
    rounds: usize,
    warmup: Duration,
    duration: Duration,
    /// A client that has finished no call this long after the cell started is starved.
    starve_after: Duration,
    rejections: u32,
    filter: Option<Vec<String>>,
    extras: bool,
    /// Run single-client cells with every thread on one CPU.
    pin_single: bool,
    /// Run only this cell, once, in this process, and print its outcome (see [`Outcome::line`]).
    cell: Option<String>,
    /// Worker threads of every server but the floor's.
    workers: usize,
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut o = if quick {
            Options {
                quick,
                rounds: 3,
                warmup: Duration::from_millis(30),
                duration: Duration::from_millis(100),
                starve_after: Duration::from_secs(1),
                rejections: 200_000,
                filter: None,
                extras: true,
                pin_single: true,
                cell: None,
                workers: SERVER_WORKERS,
            }
        } else {
            Options {
                quick,
                // This machine's spread between rounds is wide (the host is shared); seven
                // rounds give a steadier median, and a longer warm-up lets the scheduler settle
                // each client thread next to the server thread it talks to.
                rounds: 7,
                warmup: Duration::from_millis(300),
                duration: Duration::from_millis(500),
                starve_after: Duration::from_secs(2),
                rejections: 2_000_000,
                filter: None,
                extras: true,
                pin_single: true,
                cell: None,
                workers: SERVER_WORKERS,
            }
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .unwrap_or_else(|| usage(&format!("{name} needs a value")))
            };
            match arg.as_str() {
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" | "--quick" => {}
                "--rounds" => o.rounds = parse(&value("--rounds")),
                "--duration-ms" => {
                    o.duration = Duration::from_millis(parse(&value("--duration-ms")))
                }
                "--warmup-ms" => o.warmup = Duration::from_millis(parse(&value("--warmup-ms"))),
                "--filter" => {
                    o.filter = Some(value("--filter").split(',').map(str::to_owned).collect())
                }
                "--no-extras" => o.extras = false,
                "--no-pin" => o.pin_single = false,
                "--cell" => o.cell = Some(value("--cell")),
                "--workers" => o.workers = parse::<usize>(&value("--workers")).max(1),
                other => usage(&format!("unknown argument {other:?}")),
            }
        }
        o
    }

    fn selects(&self, cell: &Cell) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|labels| labels.contains(&cell.label()))
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> T {
    s.parse()
        .unwrap_or_else(|_| usage(&format!("not a number: {s:?}")))
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: cargo bench --bench rpc -- [--quick] [--rounds N] [--duration-ms N] \
         [--warmup-ms N] [--filter stack/payload/clients,...] [--no-extras] [--no-pin] [--workers N]\n\
         or, to run one cell once in this process and print its figures on one line:\n\
         cargo bench --bench rpc -- --cell stack/payload/clients [--duration-ms N] [--warmup-ms N] [--workers N]\n\
         stacks: floor stock ours ours-x-stock stock-x-ours ours+1k-idle floor+copies; payloads: add echo-1k echo-64k"
    );
    std::process::exit(2);
}

/// Everything a cell talks to, started in the cell's own process.
struct Servers {
    /// Floor servers by payload and whether they copy as a library would (`floor+copies`).
    floor: BTreeMap<(Payload, bool), Floor>,
    stock: Option<SocketAddr>,
    ours: Option<ThriftServer>,
    idle: Option<ThriftServer>,
    /// The idle connections held open to `idle`.
    held: Vec<TcpStream>,
}

impl Servers {
    /// The servers `cells` need, ours and the stock one with `workers` workers.
    fn start(cells: &[Cell], workers: usize) -> Servers {
        let needs = |f: &dyn Fn(&Cell) -> bool| cells.iter().any(f);
        let mut floor = BTreeMap::new();
        for payload in Payload::ALL {
            for (stack, copies) in [(Stack::Floor, false), (Stack::FloorCopies, true)] {
                if needs(&|c| c.stack == stack && c.payload == payload) {
                    let (request, response) = peers::wire_bytes(payload);
                    let addr = peers::start_floor(response.clone(), copies);
                    floor.insert((payload, copies), (addr, Arc::new(request), response.len()));
                }
            }
        }
        let stock = needs(&|c| matches!(c.stack, Stack::Stock | Stack::OursToStock))
            .then(|| peers::start_stock_with(workers));
        let ours = needs(&|c| matches!(c.stack, Stack::Ours | Stack::StockToOurs))
            .then(|| peers::start_ours_with("ours", workers));
        Servers {
            floor,
            stock,
            ours,
            idle: None,
            held: Vec::new(),
        }
    }

    fn server_addr(&self, cell: &Cell) -> SocketAddr {
        match cell.stack {
            Stack::Floor => self.floor[&(cell.payload, false)].0,
            Stack::FloorCopies => self.floor[&(cell.payload, true)].0,
            Stack::Stock | Stack::OursToStock => self.stock.unwrap(),
            Stack::Ours | Stack::StockToOurs => self.ours.as_ref().unwrap().local_addr(),
            Stack::OursIdle => self.idle.as_ref().unwrap().local_addr(),
        }
    }
}

/// Opens `n` connections that will never send anything.
fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(addr).expect("open an idle connection"))
        .collect()
}

/// Resident memory per idle connection, from VmRSS before and after opening them.
struct Memory {
    /// 1,000 raw client sockets to a plain listener that accepts and holds them: what the
    /// client side of the measurement itself costs this process.
    baseline: f64,
    /// The same against our server: server and client side together.
    gross: f64,
    accepted: usize,
}

/// Starts the server of the `ours+1k-idle` cell and opens its idle connections; returns once
/// the server has accepted them all (or 10 s have passed).
fn start_idle(servers: &mut Servers, workers: usize) {
    let server = peers::start_ours_with("idle", workers);
    servers.held = open_idle(server.local_addr(), IDLE_CONNECTIONS);
    await_open(&server, IDLE_CONNECTIONS);
    servers.idle = Some(server);
}

fn await_open(server: &ThriftServer, connections: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while server.stats().open_connections < connections && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The resident memory idle connections cost our server, measured in this process before any
/// cell runs, on `workers` workers.
fn idle_memory(workers: usize) -> Memory {
    let rss = || sys::rss_bytes().unwrap_or(0) as f64;
    let settle = || std::thread::sleep(Duration::from_millis(300));

    // Baseline: the client sockets alone, to a listener that only holds what it accepts.
    // Accepting on this thread, one by one, keeps a new thread's stack and allocator arena
    // out of the figure.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    settle();
    let before = rss();
    let mut clients = Vec::with_capacity(IDLE_CONNECTIONS);
    let mut accepted = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        clients.push(TcpStream::connect(addr).expect("open an idle connection"));
        accepted.push(listener.accept().expect("accept an idle connection").0);
    }
    settle();
    let baseline = (rss() - before) / IDLE_CONNECTIONS as f64;

    let server = peers::start_ours_with("idle", workers);
    settle();
    let before = rss();
    let held = open_idle(server.local_addr(), IDLE_CONNECTIONS);
    await_open(&server, IDLE_CONNECTIONS);
    settle();
    let gross = (rss() - before) / IDLE_CONNECTIONS as f64;
    let open = server.stats().open_connections;
    drop((held, server, clients, accepted));
    Memory {
        baseline,
        gross,
        accepted: open,
    }
}

/// A floor server's address, the request its clients send and the length of its response.
type Floor = (SocketAddr, Arc<Vec<u8>>, usize);

/// What a client thread calls through.
enum Caller {
    Raw {
        stream: TcpStream,
        request: Arc<Vec<u8>>,
        response_len: usize,
        buf: Vec<u8>,
        /// For `floor+copies`: where the request is encoded, after an owned copy is made.
        copies: Option<Vec<u8>>,
    },
    Stock(Box<StockCalc>),
    Ours(ThriftClient<OurCalc>),
}

impl Caller {
    fn call(&mut self, payload: Payload, data: &[u8]) -> Result<(), String> {
        match self {
            Caller::Raw {
                stream,
                request,
                response_len,
                buf,
                copies,
            } => {
                let sent = match copies {
                    // A generated client takes its argument by value, and encodes it.
                    Some(encoded) => {
                        let owned = std::hint::black_box(request.to_vec());
                        encoded.clear();
                        encoded.extend_from_slice(&owned);
                        stream.write_all(encoded)
                    }
                    None => stream.write_all(request),
                };
                sent.map_err(|e| e.to_string())?;
                let n = peers::read_frame(stream, buf).map_err(|e| e.to_string())?;
                if n == *response_len {
                    Ok(())
                } else {
                    Err(format!("response of {n} bytes, expected {response_len}"))
                }
            }
            Caller::Stock(client) => payload.call(&mut **client, data).map_err(|e| e.to_string()),
            Caller::Ours(client) => client
                .call(|c| payload.call(c, data))
                .map_err(|e| e.to_string()),
        }
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// What the controller and the client threads of one cell share.
struct Run {
    phase: AtomicU8,
    /// Calls finished by each thread, warm-up included.
    progress: Vec<AtomicU64>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Sockets of raw and stock clients by thread, to wake a thread stuck on a starved
    /// connection; a thread takes its own out as it ends, so that its connection closes.
    sockets: Mutex<Vec<Option<TcpStream>>>,
}

impl Run {
    fn error(&self, err: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(err);
    }
}

/// One round's measurement of one cell.
#[derive(Clone, Debug)]
struct Sample {
    /// The round it was measured in, which pairs it with the other stacks' samples of the
    /// same payload and client count.
    round: usize,
    calls_per_sec: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    /// Process CPU nanoseconds per call.
    cpu_per_call: f64,
    /// CPU nanoseconds per call of the client threads alone.
    client_cpu_per_call: f64,
}

enum Outcome {
    Measured(Sample),
    Starved,
    Failed(String),
}

impl Outcome {
    /// How a cell's process reports its outcome: one line on stdout, `measured` followed by
    /// calls/s, p50, p99 and p99.9 latency, CPU and client CPU per call (times in ns), or
    /// `starved`, or `failed` and why.
    fn line(&self) -> String {
        match self {
            Outcome::Measured(s) => format!(
                "measured {} {} {} {} {} {}",
                s.calls_per_sec, s.p50, s.p99, s.p999, s.cpu_per_call, s.client_cpu_per_call
            ),
            Outcome::Starved => "starved".into(),
            Outcome::Failed(why) => format!("failed {}", why.replace('\n', " ")),
        }
    }

    fn parse(line: &str) -> Outcome {
        let (kind, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match kind {
            "measured" => {
                let v: Vec<f64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
                match v[..] {
                    [calls_per_sec, p50, p99, p999, cpu_per_call, client_cpu_per_call] => {
                        Outcome::Measured(Sample {
                            round: 0,
                            calls_per_sec,
                            p50,
                            p99,
                            p999,
                            cpu_per_call,
                            client_cpu_per_call,
                        })
                    }
                    _ => Outcome::Failed(format!("unreadable report {line:?}")),
                }
            }
            "starved" => Outcome::Starved,
            "failed" => Outcome::Failed(rest.to_owned()),
            _ => Outcome::Failed(format!("unreadable report {line:?}")),
        }
    }
}

/// Runs `cell` in a new process of this binary and reads its outcome.
fn run_in_own_process(cell: Cell, options: &Options) -> Outcome {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Outcome::Failed(format!("cannot find this binary: {e}")),
    };
    let mut command = std::process::Command::new(exe);
    command
        .args(["--cell", &cell.label()])
        .args(["--warmup-ms", &options.warmup.as_millis().to_string()])
        .args(["--duration-ms", &options.duration.as_millis().to_string()])
        .args(["--workers", &options.workers.to_string()])
        .stderr(std::process::Stdio::inherit());
    if options.quick {
        command.arg("--quick");
    }
    if !options.pin_single {
        command.arg("--no-pin");
    }
    match command.output() {
        Ok(out) => match String::from_utf8_lossy(&out.stdout).lines().last() {
            Some(line) => Outcome::parse(line),
            None => Outcome::Failed(format!(
                "the cell's process reported nothing ({})",
                out.status
            )),
        },
        Err(e) => Outcome::Failed(format!("cannot start the cell's process: {e}")),
    }
}

/// The body of a cell's process: its servers, the cell once, the outcome on stdout.
fn run_alone(cell: Cell, options: &Options) -> ! {
    let mut servers = Servers::start(&[cell], options.workers);
    if cell.stack == Stack::OursIdle {
        start_idle(&mut servers, options.workers);
    }
    let outcome = run_cell(cell, &servers, options);
    println!("{}", outcome.line());
    let _ = io::stdout().flush();
    // Stuck client threads and the stock TServer's threads cannot be stopped; end regardless.
    std::process::exit(0);
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn client_thread(
    index: usize,
    run: &Run,
    connect: impl FnOnce() -> Result<Caller, String>,
    payload: Payload,
    data: &[u8],
) -> (Histogram<u64>, Duration) {
    let mut latencies = new_histogram();
    let mut caller = match connect() {
        Ok(caller) => caller,
        Err(err) => {
            run.error(err);
            return (latencies, Duration::ZERO);
        }
    };
    let mut cpu_from = None;
    let mut cpu = Duration::ZERO;
    loop {
        let phase = run.phase.load(Ordering::Acquire);
        if phase == MEASURE && cpu_from.is_none() {
            cpu_from = Some(sys::thread_cpu_time());
        }
        if phase == STOP {
            if let Some(from) = cpu_from {
                cpu = sys::thread_cpu_time() - from;
            }
            break;
        }
        let started = Instant::now();
        let result = caller.call(payload, data);
        let took = started.elapsed();
        if let Err(err) = result {
            run.error(err);
            if matches!(caller, Caller::Ours(_)) {
                // The pool replaces a broken connection; do not spin on a persistent failure.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            break;
        }
        run.progress[index].fetch_add(1, Ordering::Relaxed);
        if phase == MEASURE {
            latencies.saturating_record(took.as_nanos() as u64);
        }
    }
    run.sockets.lock().unwrap()[index] = None;
    (latencies, cpu)
}

fn wait_for<T>(handles: &[JoinHandle<T>], limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if handles.iter().all(JoinHandle::is_finished) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run_cell(cell: Cell, servers: &Servers, options: &Options) -> Outcome {
    let addr = servers.server_addr(&cell);
    let run = Arc::new(Run {
        phase: AtomicU8::new(WARMUP),
        progress: (0..cell.clients).map(|_| AtomicU64::new(0)).collect(),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        sockets: Mutex::new((0..cell.clients).map(|_| None).collect()),
    });
    let data = Arc::new(cell.payload.data());
    let pinned = (cell.clients == 1 && options.pin_single).then(|| {
        let all = sys::Affinity::current();
        all.first().apply_to_all_threads();
        all
    });
    let ours = (cell.stack.client() == Side::Ours).then(|| peers::our_client(addr, cell.clients));
    let handles: Vec<_> = (0..cell.clients)
        .map(|index| {
            let (run, data, ours) = (run.clone(), data.clone(), ours.clone());
            let copies = cell.stack == Stack::FloorCopies;
            let floor = servers.floor.get(&(cell.payload, copies)).cloned();
            let side = cell.stack.client();
            std::thread::Builder::new()
                .name(format!("rpc-client-{index}"))
                .spawn(move || {
                    let connect = || -> Result<Caller, String> {
                        let err = |e: io::Error| format!("connect {addr}: {e}");
                        match side {
                            Side::Raw => {
                                let (_, request, response_len) = floor.expect("a floor server");
                                let stream = TcpStream::connect(addr).map_err(err)?;
                                stream.set_nodelay(true).map_err(err)?;
                                run.sockets.lock().unwrap()[index] =
                                    Some(stream.try_clone().map_err(err)?);
                                Ok(Caller::Raw {
                                    stream,
                                    request,
                                    response_len,
                                    buf: vec![0; FRAME_BUFFER],
                                    copies: copies.then(Vec::new),
                                })
                            }
                            Side::Stock => {
                                let (client, socket) = peers::stock_client(addr).map_err(err)?;
                                run.sockets.lock().unwrap()[index] = Some(socket);
                                Ok(Caller::Stock(Box::new(client)))
                            }
                            Side::Ours => Ok(Caller::Ours(ours.expect("our client"))),
                        }
                    };
                    client_thread(index, &run, connect, cell.payload, &data)
                })
                .expect("spawn a client thread")
        })
        .collect();

    let started = Instant::now();
    std::thread::sleep(options.warmup);
    let all_going = || run.progress.iter().all(|p| p.load(Ordering::Relaxed) > 0);
    while !all_going()
        && started.elapsed() < options.starve_after
        && run.errors.load(Ordering::Relaxed) == 0
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let starved = !all_going();
    let mut window = None;
    if !starved {
        let cpu = sys::cpu_time();
        let at = Instant::now();
        run.phase.store(MEASURE, Ordering::Release);
        std::thread::sleep(options.duration);
        run.phase.store(STOP, Ordering::Release);
        window = Some((at.elapsed(), sys::cpu_time() - cpu));
    }
    run.phase.store(STOP, Ordering::Release);

    // Threads that are not stuck end at once. A thread stuck on a connection the stock server
    // has queued behind its busy workers gets its answer once the others hang up; idle pooled
    // connections would still hold those workers, so close them.
    let mut finished = wait_for(&handles, Duration::from_secs(1));
    if !finished {
        if let Some(ours) = &ours {
            ours.close();
        }
        finished = wait_for(&handles, Duration::from_secs(7));
    }
    if !finished {
        for socket in run.sockets.lock().unwrap().iter().flatten() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        finished = wait_for(&handles, Duration::from_secs(2));
    }
    if let Some(ours) = &ours {
        ours.close();
    }
    if let Some(all) = pinned {
        all.apply_to_all_threads();
    }
    let mut latencies = new_histogram();
    let mut client_cpu = Duration::ZERO;
    let mut stuck = 0;
    for handle in handles {
        if handle.is_finished() {
            let (thread_latencies, cpu) = handle.join().expect("client thread");
            latencies.add(thread_latencies).expect("same bounds");
            client_cpu += cpu;
        } else {
            // Left behind; the process exits at the end anyway.
            stuck += 1;
        }
    }
    if !finished {
        eprintln!("  {}: {stuck} client threads did not end", cell.label());
    }

    let errors = run.errors.load(Ordering::Relaxed);
    if errors > 0 {
        let first = run.first_error.lock().unwrap().clone().unwrap_or_default();
        return Outcome::Failed(format!("{errors} errors, first: {first}"));
    }
    let Some((elapsed, cpu)) = window else {
        return Outcome::Starved;
    };
    let calls = latencies.len();
    if calls == 0 {
        return Outcome::Failed("no calls in the measured window".into());
    }
    Outcome::Measured(Sample {
        round: 0,
        calls_per_sec: calls as f64 / elapsed.as_secs_f64(),
        p50: latencies.value_at_quantile(0.50) as f64,
        p99: latencies.value_at_quantile(0.99) as f64,
        p999: latencies.value_at_quantile(0.999) as f64,
        cpu_per_call: cpu.as_nanos() as f64 / calls as f64,
        client_cpu_per_call: client_cpu.as_nanos() as f64 / calls as f64,
    })
}

/// The cost of a call the open breaker turns away, in ns per call, with `threads` callers.
fn rejection_cost(calls: u32, threads: usize) -> f64 {
    let refused = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.local_addr().unwrap()
    };
    let config = ClientConfig::default()
        .maxfail(0)
        .reset_timeout(Duration::from_secs(3600));
    let client: ThriftClient<OurCalc> =
        ThriftClient::new(&refused.to_string(), CalculatorSyncClient::new, config);
    let first = client.call(|c| Payload::Add.call(c, &[]));
    assert!(
        matches!(first, Err(Error::Connect { .. })),
        "{first:?}: expected a refused connect"
    );
    assert_eq!(client.breaker_state(), BreakerState::Open);
    let reject = |n: u32| {
        for _ in 0..n {
            let r = client.call(|c| Payload::Add.call(c, &[]));
            debug_assert!(matches!(r, Err(Error::CircuitOpen { .. })));
            std::hint::black_box(r.is_err());
        }
    };
    reject(calls / 10);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| reject(calls));
        }
    });
    let elapsed = started.elapsed();
    let rejected = client.stats().rejected;
    assert_eq!(
        rejected,
        u64::from(calls / 10) + u64::from(calls) * threads as u64,
        "every call after the first was rejected"
    );
    elapsed.as_nanos() as f64 / f64::from(calls)
}

/// Median, min and max over rounds of one metric.
fn spread(samples: &[Sample], metric: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
    let mut values: Vec<f64> = samples.iter().map(metric).collect();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&mut values), min, max)
}

#[derive(Default)]
struct Results {
    samples: BTreeMap<Cell, Vec<Sample>>,
    starved: BTreeSet<Cell>,
    failed: BTreeMap<Cell, String>,
}

impl Results {
    fn calls_per_sec(&self, cell: &Cell) -> Option<f64> {
        self.samples
            .get(cell)
            .map(|s| spread(s, |s| s.calls_per_sec).0)
    }

    /// The median over rounds of `a`'s calls/s divided by `b`'s in the same round.
    fn paired_ratio(&self, a: &Cell, b: &Cell) -> Option<f64> {
        let (a, b) = (self.samples.get(a)?, self.samples.get(b)?);
        let mut ratios: Vec<f64> = a
            .iter()
            .filter_map(|x| {
                let y = b.iter().find(|y| y.round == x.round)?;
                (y.calls_per_sec > 0.0).then(|| x.calls_per_sec / y.calls_per_sec)
            })
            .collect();
        (!ratios.is_empty()).then(|| median(&mut ratios))
    }

    fn metric(&self, cell: &Cell, metric: impl Fn(&Sample) -> f64) -> Option<f64> {
        self.samples.get(cell).map(|s| spread(s, metric).0)
    }
}

fn us(ns: f64) -> String {
    if ns >= 100_000.0 {
        format!("{:.0}", ns / 1000.0)
    } else {
        format!("{:.1}", ns / 1000.0)
    }
}

fn show_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}"))
}

fn table(results: &Results, cells: &[Cell]) -> String {
    let mut out = String::new();
    out.push_str(
        "| payload | clients | stack | calls/s (median) | calls/s min–max | p50 µs | p99 µs | p99.9 µs | CPU µs/call | client CPU µs/call | ours/stock calls/s | ours/floor calls/s |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for cell in cells {
        let head = format!(
            "| {} | {} | {} |",
            cell.payload.name(),
            cell.clients,
            cell.stack.name()
        );
        if results.starved.contains(cell) {
            let _ = writeln!(out, "{head} starved | – | – | – | – | – | – | – | – |");
            continue;
        }
        if let Some(why) = results.failed.get(cell) {
            let _ = writeln!(
                out,
                "{head} failed: {why} | – | – | – | – | – | – | – | – |"
            );
            continue;
        }
        let Some(samples) = results.samples.get(cell) else {
            continue;
        };
        let (rate, min, max) = spread(samples, |s| s.calls_per_sec);
        let (p50, p99, p999, cpu, client_cpu) = (
            spread(samples, |s| s.p50).0,
            spread(samples, |s| s.p99).0,
            spread(samples, |s| s.p999).0,
            spread(samples, |s| s.cpu_per_call).0,
            spread(samples, |s| s.client_cpu_per_call).0,
        );
        let (vs_stock, vs_floor) = if cell.stack == Stack::Ours {
            let other = |stack| results.paired_ratio(cell, &Cell { stack, ..*cell });
            (
                show_ratio(other(Stack::Stock)),
                show_ratio(other(Stack::Floor)),
            )
        } else {
            ("".into(), "".into())
        };
        let _ = writeln!(
            out,
            "{head} {rate:.0} | {min:.0}–{max:.0} | {} | {} | {} | {} | {} | {vs_stock} | {vs_floor} |",
            us(p50),
            us(p99),
            us(p999),
            us(cpu),
            us(client_cpu)
        );
    }
    out
}

/// One round's order: the (payload, clients) groups shuffled, and the stacks shuffled within
/// each group. The stacks that a ratio compares then run within seconds of each other, so that
/// the host's slower and faster spells (they last seconds to minutes on a shared machine) touch
/// both sides of a ratio alike, while no stack always runs first or last.
fn round_order(cells: &[Cell], seed: u64) -> Vec<Cell> {
    let mut groups: Vec<(Payload, usize)> = cells.iter().map(|c| (c.payload, c.clients)).collect();
    groups.sort();
    groups.dedup();
    shuffle(&mut groups, seed);
    let mut order = Vec::with_capacity(cells.len());
    for (n, (payload, clients)) in groups.into_iter().enumerate() {
        let mut group: Vec<Cell> = cells
            .iter()
            .filter(|c| c.payload == payload && c.clients == clients)
            .copied()
            .collect();
        shuffle(&mut group, seed.wrapping_mul(1_000).wrapping_add(n as u64));
        order.extend(group);
    }
    order
}

fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--serve-ours") {
        let workers = args.get(at + 1).map_or(SERVER_WORKERS, |w| parse(w));
        support::servers::serve_ours(workers);
    }
    if let Some(at) = args.iter().position(|a| a == "--serve-stock") {
        let workers = args.get(at + 1).map_or(SERVER_WORKERS, |w| parse(w));
        support::overload::serve_stock(workers);
    }
    if args.iter().any(|a| a == "--overload") {
        support::overload::main(args.iter().any(|a| a == "--quick"));
        return;
    }
    if args.iter().any(|a| a == "--servers") {
        sys::raise_fd_limit();
        support::servers::main(
            args.iter().any(|a| a == "--quick"),
            args.iter().any(|a| a == "--one-core"),
        );
        return;
    }
    let options = Options::parse();
    let (fd_before, fd_now) = sys::raise_fd_limit();
    let begun = Instant::now();

    let mut cells: Vec<Cell> = Payload::ALL
        .into_iter()
        .flat_map(|payload| {
            CLIENT_COUNTS.into_iter().flat_map(move |clients| {
                Stack::SWEPT.into_iter().map(move |stack| Cell {
                    payload,
                    clients,
                    stack,
                })
            })
        })
        .collect();
    cells.push(Cell {
        payload: Payload::Add,
        clients: IDLE_CELL_CLIENTS,
        stack: Stack::OursIdle,
    });
    cells.extend(CLIENT_COUNTS.into_iter().map(|clients| Cell {
        payload: Payload::Echo64K,
        clients,
        stack: Stack::FloorCopies,
    }));
    cells.sort();
    if let Some(label) = &options.cell {
        match cells.iter().find(|c| c.label() == *label) {
            Some(&cell) => run_alone(cell, &options),
            None => usage(&format!("no cell {label:?}")),
        }
    }
    cells.retain(|c| options.selects(c));
    if cells.is_empty() {
        usage("--filter selects no cell");
    }

    let memory = options.extras.then(|| idle_memory(options.workers));

    let mut results = Results::default();
    for round in 0..options.rounds {
        let order = round_order(&cells, round as u64 + 1);
        let round_started = Instant::now();
        for cell in order {
            // Starvation comes from the worker count, not from chance: once seen, it stays.
            if results.starved.contains(&cell) || results.failed.contains_key(&cell) {
                continue;
            }
            match run_in_own_process(cell, &options) {
                Outcome::Measured(sample) => results
                    .samples
                    .entry(cell)
                    .or_default()
                    .push(Sample { round, ..sample }),
                Outcome::Starved => {
                    eprintln!("  {}: starved", cell.label());
                    results.starved.insert(cell);
                }
                Outcome::Failed(why) => {
                    eprintln!("  {}: failed: {why}", cell.label());
                    results.failed.insert(cell, why);
                }
            }
        }
        eprintln!(
            "round {}/{} done in {:.1} s",
            round + 1,
            options.rounds,
            round_started.elapsed().as_secs_f64()
        );
    }

    let rejections = options.extras.then(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        (
            rejection_cost(options.rejections, 1),
            threads,
            rejection_cost(options.rejections, threads),
        )
    });

    let mut report = String::new();
    let _ = writeln!(
        report,
        "\n## RPC benchmark ({} mode)\n",
        if options.quick { "quick" } else { "full" }
    );
    let _ = writeln!(report, "Machine: {}.", sys::machine());
    let _ = writeln!(
        report,
        "Loopback only. {} rounds; in each, the (payload, clients) groups run in a shuffled order, and \
         the stacks of a group back to back, also shuffled. Each cell runs in a process of its \
         own with fresh servers, so none inherits threads, connections or their placement on the \
         CPUs from the cells before it. Per cell {} ms warm-up, then {} ms measured. Figures are medians over rounds (calls/s also min–max); \
         a ratio is the median over rounds of the two cells' ratio in the same round. \
         Both servers run {} worker threads whatever the number of clients. A cell is \
         starved when some client finished no call within {} s. CPU per call is the whole process \
         (clients and servers share it): getrusage(RUSAGE_SELF) user+sys over the measured window \
         divided by calls; client CPU is the client threads' own CPU time (CLOCK_THREAD_CPUTIME_ID) \
         over the same window, so the rest is the server's (and the kernel's on its behalf). {} \
         Open-file limit raised from {fd_before} to {fd_now}.\n",
        options.rounds,
        options.warmup.as_millis(),
        options.duration.as_millis(),
        options.workers,
        options.starve_after.as_secs_f64(),
        if options.pin_single {
            "Single-client cells run with every thread of the process pinned to one CPU: \
             unpinned, a lone ping-pong on this machine flips between runs whose client and \
             server share a CPU and runs paying a cross-CPU wake-up per message, which swamps \
             the differences between stacks (`--no-pin` shows it)."
        } else {
            "Single-client cells are not pinned (`--no-pin`)."
        },
    );
    for stack in Stack::SWEPT
        .into_iter()
        .chain([Stack::OursIdle, Stack::FloorCopies])
    {
        let _ = writeln!(report, "- `{}`: {}", stack.name(), stack.legend());
    }
    report.push('\n');
    report.push_str(&table(&results, &cells));

    let _ = writeln!(report, "\n### Extras\n");
    let idle = Cell {
        payload: Payload::Add,
        clients: IDLE_CELL_CLIENTS,
        stack: Stack::OursIdle,
    };
    let busy = Cell {
        stack: Stack::Ours,
        ..idle
    };
    if results.samples.contains_key(&idle) && results.samples.contains_key(&busy) {
        let get = |c: &Cell, m: fn(&Sample) -> f64| results.metric(c, m).unwrap();
        let _ = writeln!(
            report,
            "- {IDLE_CELL_CLIENTS} busy clients (add) with {IDLE_CONNECTIONS} idle connections held \
             open vs none: {:.0} vs {:.0} calls/s (medians; the median of the same-round ratios \
             is {}); p50 {} vs {} µs, p99 {} vs {} µs, p99.9 {} vs {} µs.",
            get(&idle, |s| s.calls_per_sec),
            get(&busy, |s| s.calls_per_sec),
            show_ratio(results.paired_ratio(&idle, &busy)),
            us(get(&idle, |s| s.p50)),
            us(get(&busy, |s| s.p50)),
            us(get(&idle, |s| s.p99)),
            us(get(&busy, |s| s.p99)),
            us(get(&idle, |s| s.p999)),
            us(get(&busy, |s| s.p999)),
        );
    }
    if let Some(m) = &memory {
        let _ = writeln!(
            report,
            "- Resident memory per idle connection on our server: {:.0} B net ({:.0} B with the \
             client socket, minus a {:.0} B baseline of the same {IDLE_CONNECTIONS} raw client \
             sockets to a plain listener that accepts and holds them). VmRSS before and after \
             opening {IDLE_CONNECTIONS} raw TcpStreams that send nothing; the server counted {} \
             open. Kernel socket buffers are not in VmRSS.",
            m.gross - m.baseline,
            m.gross,
            m.baseline,
            m.accepted,
        );
    }
    if let Some((one, threads, many)) = rejections {
        let _ = writeln!(
            report,
            "- A call rejected by the open breaker (refused endpoint, maxfail 0, reset_timeout \
             1 h): {one:.0} ns per call on 1 thread; {many:.0} ns per call per thread with \
             {threads} threads calling at once ({} rejected calls per thread).",
            options.rejections
        );
    }
    let copies: Vec<String> = CLIENT_COUNTS
        .into_iter()
        .filter_map(|clients| {
            let cell = |stack| Cell {
                payload: Payload::Echo64K,
                clients,
                stack,
            };
            let copies = results.paired_ratio(&cell(Stack::FloorCopies), &cell(Stack::Floor))?;
            let ours = results.paired_ratio(&cell(Stack::Ours), &cell(Stack::FloorCopies));
            let plural = if clients == 1 { "" } else { "s" };
            Some(format!(
                "{clients} client{plural} {copies:.2} (ours {})",
                show_ratio(ours)
            ))
        })
        .collect();
    if !copies.is_empty() {
        let _ = writeln!(
            report,
            "- echo-64k, what the copies of the payload that generated code needs cost alone: \
             `floor+copies` calls/s over the floor's, and in brackets ours over `floor+copies`'s: \
             {}.",
            copies.join(", ")
        );
    }
    let mut overhead = String::new();
    for payload in Payload::ALL {
        let full = Cell {
            payload,
            clients: 1,
            stack: Stack::Ours,
        };
        let bare = Cell {
            stack: Stack::StockToOurs,
            ..full
        };
        if let (Some(f), Some(b)) = (results.calls_per_sec(&full), results.calls_per_sec(&bare)) {
            let p50 = |c: &Cell| results.metric(c, |s| s.p50).unwrap();
            let client_cpu = |c: &Cell| results.metric(c, |s| s.client_cpu_per_call).unwrap();
            let _ = write!(
                overhead,
                " {}: {f:.0} vs {b:.0} calls/s, {:+.1}% (p50 {} vs {} µs, client CPU {} vs {} µs/call);",
                payload.name(),
                (b - f) / b * 100.0,
                us(p50(&full)),
                us(p50(&bare)),
                us(client_cpu(&full)),
                us(client_cpu(&bare)),
            );
        }
    }
    if !overhead.is_empty() {
        let _ = writeln!(
            report,
            "- Full client (pool + breaker) vs a bare generated client on one raw connection, \
             both against our server, 1 client thread; bare = CalculatorSyncClient over the \
             thrift crate's TTcpChannel + framed transports + binary protocol (the \
             `stock-x-ours` cell), overhead = calls/s the full client loses (negative: it is faster):{}",
            overhead.trim_end_matches(';')
        );
    }
    let _ = writeln!(
        report,
        "\nTotal time {:.0} s.",
        begun.elapsed().as_secs_f64()
    );
    print!("{report}");
    let _ = io::stdout().flush();
    // The stock TServer's threads cannot be stopped; end the process regardless.
    std::process::exit(0);
}
