//! Helpers shared by the integration tests: a simple thread-per-connection reference server
//! that counts what it sees, the Apache Thrift Python peers, and a clock stepped by hand.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blocking_thrift::{InputProtocol, OutputProtocol, Protocol, Transport};
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TInputProtocol, TOutputProtocol,
};
use thrift::server::TProcessor;
use thrift::transport::{
    TBufferedReadTransport, TBufferedWriteTransport, TFramedReadTransport, TFramedWriteTransport,
};

#[path = "../../idl/service.rs"]
pub mod service;

pub mod server;
pub mod tls;
pub mod zookeeper;

pub use service::calculator;
pub use service::CalculatorService;

/// The generated client over this crate's connections.
pub type Calc = calculator::CalculatorSyncClient<InputProtocol, OutputProtocol>;

pub const ALL_WIRE_FORMATS: [(Transport, Protocol); 4] = [
    (Transport::Framed, Protocol::Binary),
    (Transport::Framed, Protocol::Compact),
    (Transport::Buffered, Protocol::Binary),
    (Transport::Buffered, Protocol::Compact),
];

/// Polls `done` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// A reference Calculator server on its own threads, one per connection, built only from the
/// `thrift` crate, which counts the connections it accepts and holds.
pub struct RefServer {
    pub addr: SocketAddr,
    pub service: Arc<CalculatorService>,
    /// Connections accepted since start.
    pub accepted: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl RefServer {
    pub fn start(transport: Transport, protocol: Protocol) -> RefServer {
        Self::start_on(
            "127.0.0.1:0",
            transport,
            protocol,
            Arc::new(CalculatorService::new("ref")),
        )
    }

    /// Starts on `addr`; retries for a while if the port is still held by a server just stopped.
    pub fn start_on(
        addr: &str,
        transport: Transport,
        protocol: Protocol,
        service: Arc<CalculatorService>,
    ) -> RefServer {
        let mut listener = None;
        wait_until(Duration::from_secs(10), || {
            listener = TcpListener::bind(addr).ok();
            listener.is_some()
        });
        let listener = listener.unwrap_or_else(|| panic!("could not bind {addr}"));
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (accepted, open, stopping, streams, service) = (
                accepted.clone(),
                open.clone(),
                stopping.clone(),
                streams.clone(),
                service.clone(),
            );
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    // The thrift crate's framed writer sends header and payload separately.
                    stream.set_nodelay(true).unwrap();
                    accepted.fetch_add(1, Ordering::SeqCst);
                    open.fetch_add(1, Ordering::SeqCst);
                    streams.lock().unwrap().push(stream.try_clone().unwrap());
                    let (open, service) = (open.clone(), service.clone());
                    std::thread::spawn(move || {
                        serve_connection(stream, transport, protocol, service);
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        RefServer {
            addr,
            service,
            accepted,
            open,
            stopping,
            streams,
            acceptor: Some(acceptor),
        }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Stops accepting, closes every connection and frees the port.
    pub fn stop(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            self.stopping.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            acceptor.join().unwrap();
            for stream in self.streams.lock().unwrap().drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for RefServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_connection(
    stream: TcpStream,
    transport: Transport,
    protocol: Protocol,
    service: Arc<CalculatorService>,
) {
    let (input, output) = thrift_transports(transport, stream.try_clone().unwrap(), stream);
    let (mut i_prot, mut o_prot) = thrift_protocols(protocol, input, output);
    let processor = calculator::CalculatorSyncProcessor::new(service);
    while processor.process(&mut *i_prot, &mut *o_prot).is_ok() {}
}

/// The thrift crate's own transports for `transport` over a connection's two halves.
pub fn thrift_transports(
    transport: Transport,
    read: impl Read + Send + 'static,
    write: impl Write + Send + 'static,
) -> (Box<dyn Read + Send>, Box<dyn Write + Send>) {
    match transport {
        Transport::Framed => (
            Box::new(TFramedReadTransport::new(read)),
            Box::new(TFramedWriteTransport::new(write)),
        ),
        Transport::Buffered => (
            Box::new(TBufferedReadTransport::new(read)),
            Box::new(TBufferedWriteTransport::new(write)),
        ),
    }
}

/// The thrift crate's own protocols for `protocol` over those transports.
pub fn thrift_protocols(
    protocol: Protocol,
    input: Box<dyn Read + Send>,
    output: Box<dyn Write + Send>,
) -> (
    Box<dyn TInputProtocol + Send>,
    Box<dyn TOutputProtocol + Send>,
) {
    match protocol {
        Protocol::Binary => (
            Box::new(TBinaryInputProtocol::new(input, true)),
            Box::new(TBinaryOutputProtocol::new(output, true)),
        ),
        Protocol::Compact => (
            Box::new(TCompactInputProtocol::new(input)),
            Box::new(TCompactOutputProtocol::new(output)),
        ),
    }
}

/// An address on loopback where nothing listens.
pub fn refused_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

/// Whether Apache Thrift's Python library is importable. When it is not, the caller should
/// skip, loudly, unless `BLOCKING_THRIFT_REQUIRE_PYTHON=1` makes it mandatory.
pub fn python_peer_available(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import thrift"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("BLOCKING_THRIFT_REQUIRE_PYTHON").as_deref() == Ok("1") {
            panic!("{test}: Apache Thrift's Python library is required (pip install thrift)");
        }
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: {test}: Apache Thrift's Python library is not installed \
             (pip install thrift) ***\n"
        );
    }
    ok
}

/// The path of a Python peer under `tests/peers`.
pub fn peer_script(name: &str) -> String {
    format!("{}/tests/peers/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The path of an example binary, which `cargo test` builds next to the test binaries.
pub fn example(name: &str) -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} was not built (run through cargo test)",
        path.display()
    );
    path
}

pub fn wire_args(transport: Transport, protocol: Protocol) -> [&'static str; 4] {
    let t = match transport {
        Transport::Framed => "framed",
        Transport::Buffered => "buffered",
    };
    let p = match protocol {
        Protocol::Binary => "binary",
        Protocol::Compact => "compact",
    };
    ["--transport", t, "--protocol", p]
}

/// Apache Thrift's own Python server for the reference service, killed on drop.
pub struct PythonServer {
    pub child: Child,
    pub addr: String,
}

impl PythonServer {
    pub fn start(transport: Transport, protocol: Protocol, name: &str) -> PythonServer {
        let mut child = Command::new("python3")
            .arg(peer_script("calculator_server.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--name", name])
            .args(wire_args(transport, protocol))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("python server said {line:?}"))
            .trim();
        PythonServer {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the Python client against `addr`; returns its combined output on failure.
pub fn run_python_client(
    addr: &str,
    transport: Transport,
    protocol: Protocol,
    expect_name: &str,
) -> Result<(), String> {
    let out = Command::new("python3")
        .arg(peer_script("calculator_client.py"))
        .args(["--addr", addr, "--expect-name", expect_name])
        .args(wire_args(transport, protocol))
        .output()
        .expect("python3 starts");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A started `ThriftServer` serving the reference service on a free port of 127.0.0.1.
pub fn start_server(
    config: blocking_thrift::ServerConfig,
) -> (blocking_thrift::ThriftServer, Arc<CalculatorService>) {
    let service = Arc::new(CalculatorService::new("hostile"));
    let server = blocking_thrift::ThriftServer::bind(
        "127.0.0.1:0",
        calculator::CalculatorSyncProcessor::new(service.clone()),
        config,
    )
    .expect("bind 127.0.0.1:0");
    server.start().expect("start the server");
    (server, service)
}

/// Whether the peer closes `stream` within `limit`, reading and dropping whatever it still
/// sends first (an error reply, say). A reset counts as closed.
pub fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    let end = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) => {
                return matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                )
            }
        }
    }
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// This process's resident memory, in bytes (`VmRSS` of /proc/self/status).
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// This process's soft and hard limits on open file descriptors.
pub fn open_files_limits() -> (libc::rlim_t, libc::rlim_t) {
    let mut rlimit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the `rlimit` struct passed by pointer, which lives on this
    // stack frame for the whole call.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit), 0);
    }
    (rlimit.rlim_cur, rlimit.rlim_max)
}

/// Sets this process's soft limit on open file descriptors to `limit`, as far as the hard
/// limit allows.
pub fn set_open_files_limit(limit: libc::rlim_t) {
    let (_, hard) = open_files_limits();
    let rlimit = libc::rlimit {
        rlim_cur: limit.min(hard),
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the `rlimit` struct passed by pointer, which lives on this
    // stack frame for the whole call.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit), 0);
    }
}

/// This thread's id, as /proc/self/task names it.
pub fn thread_id() -> libc::pid_t {
    // SAFETY: gettid takes nothing and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::gettid()
    }
}

/// Whether thread `id` of this process is asleep, as /proc shows (waiting for a lock, say).
pub fn asleep(id: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{id}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(") ")?.1.starts_with('S')))
        .unwrap_or(false)
}

/// The CPU this thread is on now.
pub fn current_cpu() -> usize {
    // SAFETY: sched_getcpu takes nothing and only returns a number.
    #[allow(unsafe_code)]
    unsafe {
        libc::sched_getcpu().max(0) as usize
    }
}

/// Runs this thread, and the threads it starts from now on, on CPU `cpu` only.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: the set is initialized before use and only read by the call, for the size given.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub mod proxy;

/// An endpoint on 127.0.0.1 whose accept queue is full, so that a connect to it never
/// completes, and what keeps it so (to be held as long as it is needed).
pub fn never_accepting() -> (String, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&any.into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue until the kernel stops answering handshakes.
    let mut held = vec![listener];
    for _ in 0..64 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        match s.connect_timeout(&addr.into(), Duration::from_millis(100)) {
            Ok(()) => held.push(s),
            Err(_) => return (addr.to_string(), held),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

/// Asserts that `call` ends within milliseconds of `expected`, never before it.
///
/// Makes six calls at once, each started a little after the one before (so that they meet the
/// kernel's timers at different phases), each beside a thread that sleeps for `expected`: the
/// sleepers show how late a loaded machine wakes threads. The middle call may be late by the
/// middle sleeper's delay and 20 ms more, so that scheduling delays cannot fail the test and a
/// timer rounded up by the kernel (up to a quarter of a second) does. A machine whose load comes
/// and goes gets three tries.
pub fn assert_on_time(expected: Duration, call: impl Fn() + Send + Sync + 'static) {
    let call = Arc::new(call);
    let mut tries = Vec::new();
    for _ in 0..3 {
        let (calls, sleeps) = overruns(6, expected, &call);
        if calls[3] < sleeps[3] + Duration::from_millis(20) {
            return;
        }
        tries.push(format!("calls late by {calls:?}, sleepers by {sleeps:?}"));
    }
    panic!("late: {}", tries.join("; "));
}

/// How much later than `expected` each of `calls` calls of `call` made at once ended, and each
/// of as many threads sleeping beside them woke; both sorted.
fn overruns(
    calls: usize,
    expected: Duration,
    call: &Arc<impl Fn() + Send + Sync + 'static>,
) -> (Vec<Duration>, Vec<Duration>) {
    let late = move |started: Instant, name: &str| {
        let took = started.elapsed();
        assert!(
            took >= expected,
            "{name} ended after {took:?}, before {expected:?}"
        );
        took - expected
    };
    let threads: Vec<_> = (0..calls)
        .map(|n| {
            std::thread::sleep(Duration::from_millis(37));
            let call = call.clone();
            let started = Instant::now();
            let caller = std::thread::Builder::new()
                .name(format!("overrun-{n}"))
                .spawn(move || {
                    call();
                    late(started, "a call")
                })
                .unwrap();
            let sleeper = std::thread::Builder::new()
                .name(format!("sleeper-{n}"))
                .spawn(move || {
                    std::thread::sleep(expected);
                    late(started, "a sleep")
                })
                .unwrap();
            (caller, sleeper)
        })
        .collect();
    let (mut calls, mut sleeps): (Vec<_>, Vec<_>) = threads
        .into_iter()
        .map(|(caller, sleeper)| (caller.join().unwrap(), sleeper.join().unwrap()))
        .unzip();
    calls.sort();
    sleeps.sort();
    (calls, sleeps)
}
