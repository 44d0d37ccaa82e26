//! ThriftServer end to end, over real sockets on 127.0.0.1: the thrift crate's own generated
//! client for well-behaved calls, raw sockets for pipelining and hostile bytes.

mod support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use blocking_thrift::{Protocol, ServerConfig, ThriftServer, Transport};
use support::calculator::{
    CalculatorSyncClient, CalculatorSyncHandler, CalculatorSyncProcessor, TCalculatorSyncClient,
    TemporaryUnavailable, UserProfile,
};
use support::server::{
    exclusive_lock, raw, read_reply, shared_lock, wait_for_stats, wire, PATIENCE,
};
use support::{wait_until, CalculatorService, ALL_WIRE_FORMATS};
use thrift::protocol::TSerializable;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactOutputProtocol, TFieldIdentifier,
    TInputProtocol, TMessageIdentifier, TMessageType, TMultiplexedOutputProtocol, TOutputProtocol,
    TStructIdentifier, TType,
};
use thrift::server::TMultiplexedProcessor;
use thrift::transport::{TFramedReadTransport, TFramedWriteTransport, TIoChannel, TTcpChannel};
use thrift::ApplicationErrorKind;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A started server for `handler` on a free port of 127.0.0.1.
fn serve<H>(handler: H, config: ServerConfig) -> ThriftServer
where
    H: CalculatorSyncHandler + Send + Sync + 'static,
{
    let _ = env_logger::builder().is_test(true).try_init();
    let server = ThriftServer::bind("127.0.0.1:0", CalculatorSyncProcessor::new(handler), config)
        .expect("bind 127.0.0.1:0");
    server.start().expect("start the server");
    server
}

/// The default config, except that no request is shed for waiting: for tests whose every call
/// must run, even when the whole machine stalls past the default `max_queue_wait` (a loaded
/// machine does).
fn patient() -> ServerConfig {
    ServerConfig::default().max_queue_wait(Duration::MAX)
}

fn calculator(config: ServerConfig) -> (ThriftServer, Arc<CalculatorService>) {
    let service = Arc::new(CalculatorService::new("test-server"));
    (serve(Arc::clone(&service), config), service)
}

type Client = CalculatorSyncClient<Box<dyn TInputProtocol + Send>, Box<dyn TOutputProtocol + Send>>;

/// The thrift crate's plain client (TTcpChannel, its framed or buffered transports).
fn client(addr: SocketAddr, transport: Transport, protocol: Protocol) -> Client {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    let (reader, writer) = TTcpChannel::with_stream(stream).split().unwrap();
    let (input, output) = support::thrift_transports(transport, reader, writer);
    let (input, output) = support::thrift_protocols(protocol, input, output);
    CalculatorSyncClient::new(input, output)
}

fn framed_binary(addr: SocketAddr) -> Client {
    client(addr, Transport::Framed, Protocol::Binary)
}

/// Whether the server closes `stream` within `PATIENCE` (reading nothing more from it).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    closed_by_server_within(stream, PATIENCE)
}

/// How soon a connection the server refuses must be closed: well before the default
/// `request_timeout` (10 s), which would close it too, for another reason.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

/// Whether the server closes `stream` before `patience` runs out.
fn closed_by_server_within(stream: &mut TcpStream, patience: Duration) -> bool {
    stream.set_read_timeout(Some(patience)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() == io::ErrorKind::ConnectionReset,
    }
}

/// An argument of a hand-encoded call.
#[derive(Clone, Copy)]
enum Arg {
    I32(i16, i32),
}

/// Encodes a call without the transport's framing.
fn encode(protocol: Protocol, name: &str, kind: TMessageType, seq: i32, args: &[Arg]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut o: Box<dyn TOutputProtocol + '_> = match protocol {
        Protocol::Binary => Box::new(TBinaryOutputProtocol::new(&mut out, true)),
        Protocol::Compact => Box::new(TCompactOutputProtocol::new(&mut out)),
    };
    o.write_message_begin(&TMessageIdentifier::new(name, kind, seq))
        .unwrap();
    o.write_struct_begin(&TStructIdentifier::new("args"))
        .unwrap();
    for arg in args {
        match *arg {
            Arg::I32(id, value) => {
                o.write_field_begin(&TFieldIdentifier::new("arg", TType::I32, id))
                    .unwrap();
                o.write_i32(value).unwrap();
                o.write_field_end().unwrap();
            }
        }
    }
    o.write_field_stop().unwrap();
    o.write_struct_end().unwrap();
    o.write_message_end().unwrap();
    o.flush().unwrap();
    drop(o);
    out
}

fn call(transport: Transport, protocol: Protocol, name: &str, seq: i32, args: &[Arg]) -> Vec<u8> {
    wire(
        transport,
        &encode(protocol, name, TMessageType::Call, seq, args),
    )
}

fn add(seq: i32, a: i32, b: i32) -> Vec<u8> {
    call(
        Transport::Framed,
        Protocol::Binary,
        "add",
        seq,
        &[Arg::I32(1, a), Arg::I32(2, b)],
    )
}

/// Asserts the server (framed, binary) still answers a new client.
fn assert_serving(server: &ThriftServer) {
    assert_serving_over(server, Transport::Framed);
}

fn assert_serving_over(server: &ThriftServer, transport: Transport) {
    let mut fresh = client(server.local_addr(), transport, Protocol::Binary);
    assert_eq!(fresh.add(40, 2).expect("a fresh client's call"), 42);
}

/// How many threads of this process a server started (they are named `thrift-...`).
///
/// Counting all threads would also count the test harness's, which come and go as other
/// tests finish.
fn server_threads() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task lists threads");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("thrift-"))
        .count()
}

/// A Calculator whose `add(666, _)` panics and whose `slow` waits for the test to release it
/// (when given a gate); everything else as the reference service.
struct Special {
    inner: CalculatorService,
    gate: Option<crossbeam_channel::Receiver<()>>,
    /// What `ping` does besides answering.
    on_ping: Option<Box<dyn Fn() + Send + Sync>>,
}

/// What `add(666)` panics with.
const CURSED: &str = "add(666) is cursed";

/// Keeps the panics of `add(666)` quiet; every other panic goes to the hook there was. The
/// default hook would print each and, with `RUST_BACKTRACE` set, first resolve a backtrace,
/// which takes seconds in a debug build while the handler's client waits for its answer.
fn quiet_cursed_panics() {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&CURSED) {
                previous(info);
            }
        }));
    });
}

impl Special {
    fn new() -> Self {
        quiet_cursed_panics();
        Special {
            inner: CalculatorService::new("special"),
            gate: None,
            on_ping: None,
        }
    }

    /// A handler whose `ping` calls `on_ping` before it answers.
    fn pinging(on_ping: impl Fn() + Send + Sync + 'static) -> Self {
        Special {
            on_ping: Some(Box::new(on_ping)),
            ..Special::new()
        }
    }

    /// A handler whose `slow` calls each wait for one message on the returned sender.
    fn gated() -> (Self, crossbeam_channel::Sender<()>) {
        let (release, gate) = crossbeam_channel::unbounded();
        let handler = Special {
            gate: Some(gate),
            ..Special::new()
        };
        (handler, release)
    }
}

impl CalculatorSyncHandler for Special {
    fn handle_ping(&self) -> thrift::Result<()> {
        if let Some(on_ping) = &self.on_ping {
            on_ping();
        }
        self.inner.handle_ping()
    }
    fn handle_add(&self, num1: i32, num2: i32) -> thrift::Result<i32> {
        if num1 == 666 {
            panic::panic_any(CURSED);
        }
        self.inner.handle_add(num1, num2)
    }
    fn handle_echo(&self, data: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.inner.handle_echo(data)
    }
    fn handle_slow(&self, millis: i32) -> thrift::Result<i32> {
        if let Some(gate) = &self.gate {
            gate.recv_timeout(PATIENCE)
                .expect("the test releases every slow call");
        }
        self.inner.handle_slow(millis)
    }
    fn handle_retrieve(&self, uid: i32) -> thrift::Result<UserProfile> {
        self.inner.handle_retrieve(uid)
    }
    fn handle_store(&self, user: UserProfile) -> thrift::Result<()> {
        self.inner.handle_store(user)
    }
    fn handle_whoami(&self, fail: bool) -> thrift::Result<String> {
        self.inner.handle_whoami(fail)
    }
    fn handle_zip(&self) -> thrift::Result<()> {
        self.inner.handle_zip()
    }
    fn handle_profiles(&self, count: i32) -> thrift::Result<Vec<UserProfile>> {
        self.inner.handle_profiles(count)
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_wire_format_serves_every_method() {
    let _lock = shared_lock();
    for (transport, protocol) in ALL_WIRE_FORMATS {
        // Every call must run: none is shed for a stall of the machine.
        let config = patient().workers(2).transport(transport).protocol(protocol);
        let (server, service) = calculator(config);
        let mut c = client(server.local_addr(), transport, protocol);
        let format = format!("{transport:?}/{protocol:?}");

        c.ping().unwrap();
        assert_eq!(c.add(i32::MAX, 1).unwrap(), i32::MIN, "{format}");
        let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
        assert_eq!(c.echo(big.clone()).unwrap(), big, "{format}");
        assert_eq!(c.echo(Vec::new()).unwrap(), Vec::<u8>::new(), "{format}");
        assert_eq!(c.slow(1).unwrap(), 1, "{format}");
        let profile = UserProfile::new(7, "Seven".to_owned(), "stored".to_owned());
        c.store(profile.clone()).unwrap();
        assert_eq!(c.retrieve(7).unwrap(), profile, "{format}");
        match c.retrieve(-3) {
            Err(thrift::Error::User(err)) => {
                let err = err
                    .downcast_ref::<support::calculator::InvalidOperation>()
                    .unwrap();
                assert_eq!(err.what_op, Some(-3), "{format}");
            }
            other => panic!("{format}: retrieve(-3) gave {other:?}"),
        }
        assert_eq!(c.whoami(false).unwrap(), "test-server", "{format}");
        match c.whoami(true) {
            Err(thrift::Error::User(err)) => assert!(err.is::<TemporaryUnavailable>(), "{format}"),
            other => panic!("{format}: whoami(true) gave {other:?}"),
        }
        c.zip().unwrap();
        c.ping().unwrap();
        assert!(
            wait_until(PATIENCE, || service.zips() == 1),
            "{format}: zip never ran"
        );
        let stats = server.stats();
        assert_eq!(stats.errors, 0, "{format}: {stats:?}");
        assert_eq!(stats.requests, 12, "{format}: {stats:?}");
    }
}

#[test]
fn idle_connections_do_not_starve_a_new_client() {
    let _lock = shared_lock();
    let (server, _) = calculator(patient().workers(2));
    let addr = server.local_addr();
    let mut idle: Vec<Client> = (0..100).map(|_| framed_binary(addr)).collect();
    for (n, c) in idle.iter_mut().enumerate() {
        assert_eq!(c.add(n as i32, 1).unwrap(), n as i32 + 1);
    }
    wait_for_stats(&server, "100 idle connections", |s| {
        s.idle_connections == 100
    });

    let (answered_tx, answered) = crossbeam_channel::bounded(1);
    let newcomer = thread::spawn(move || {
        let mut fresh = framed_binary(addr);
        answered_tx
            .send(fresh.add(2, 3).map_err(|err| err.to_string()))
            .unwrap();
    });
    let answer = answered.recv_timeout(Duration::from_secs(5));
    assert_eq!(
        answer,
        Ok(Ok(5)),
        "a fresh client must be answered while 100 connections idle"
    );
    newcomer.join().unwrap();

    // The idle connections are still served too.
    for c in &mut idle {
        c.ping().unwrap();
    }
}

#[test]
fn many_concurrent_clients_get_their_own_answers() {
    let _lock = shared_lock();
    let (server, _) = calculator(patient().workers(4));
    let addr = server.local_addr();
    let start = Arc::new(Barrier::new(16));
    let clients: Vec<_> = (0..16)
        .map(|t| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let (transport, protocol) = (Transport::Framed, Protocol::Binary);
                let mut c = client(addr, transport, protocol);
                start.wait();
                for n in 0..200 {
                    assert_eq!(c.add(t * 1000, n).unwrap(), t * 1000 + n);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client thread failed");
    }
    let stats = server.stats();
    assert_eq!(stats.requests, 16 * 200, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
}

#[test]
fn handlers_that_block_occupy_every_worker_of_a_pool_larger_than_the_cpus() {
    let _lock = shared_lock();
    // Handlers that wait (on a database, another service) are why a pool has more workers
    // than the CPUs can run: every one of them takes a request, round after round.
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let workers = 2 * cpus + 6;
    let (handler, release) = Special::gated();
    let server = serve(handler, patient().workers(workers));
    let addr = server.local_addr();
    let (calls_tx, calls_rx) = crossbeam_channel::unbounded::<()>();
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let callers: Vec<_> = (0..workers)
        .map(|_| {
            let (calls_rx, done_tx) = (calls_rx.clone(), done_tx.clone());
            thread::spawn(move || {
                let mut c = framed_binary(addr);
                while calls_rx.recv().is_ok() {
                    done_tx.send(c.slow(7).map_err(|e| e.to_string())).unwrap();
                }
            })
        })
        .collect();
    // Rounds, so that every worker comes back from a request before all are needed again.
    for round in 0..3 {
        for _ in 0..workers {
            calls_tx.send(()).unwrap();
        }
        wait_for_stats(
            &server,
            &format!("round {round}: every worker in a handler"),
            |s| s.busy_workers == workers,
        );
        for _ in 0..workers {
            release.send(()).unwrap();
        }
        for _ in 0..workers {
            assert_eq!(done_rx.recv_timeout(PATIENCE).unwrap(), Ok(7));
        }
    }
    drop(calls_tx);
    for caller in callers {
        caller.join().unwrap();
    }
}

#[test]
fn stop_lets_running_requests_finish_and_deliver_their_responses() {
    let _lock = shared_lock();
    let (handler, release) = Special::gated();
    let server = Arc::new(serve(handler, ServerConfig::default().workers(4)));
    let addr = server.local_addr();
    let callers: Vec<_> = (0..3)
        .map(|_| thread::spawn(move || framed_binary(addr).slow(5).map_err(|e| e.to_string())))
        .collect();
    let mut idle = raw(addr);
    idle.write_all(&add(1, 1, 1)).unwrap();
    read_reply(&mut idle, Transport::Framed, Protocol::Binary);
    wait_for_stats(&server, "three slow calls running", |s| s.busy_workers == 3);

    let stopper = {
        let server = Arc::clone(&server);
        thread::spawn(move || server.stop())
    };
    // Stopping closes the listener and idle connections at once, not waiting for the calls...
    assert!(
        closed_by_server(&mut idle),
        "the idle connection stays open while stopping"
    );
    assert!(
        wait_until(PATIENCE, || TcpStream::connect(addr).is_err()),
        "still accepting while stopping"
    );
    assert!(
        !stopper.is_finished(),
        "stop returned before the running calls finished"
    );
    // ...which then finish and deliver their responses before stop returns.
    for _ in 0..3 {
        release.send(()).unwrap();
    }
    for caller in callers {
        assert_eq!(caller.join().unwrap(), Ok(5));
    }
    stopper.join().unwrap();
    assert_eq!(server.stats().open_connections, 0);
}

/// A server whose `ping` handler stops it (through `stop`, or by dropping its last handle),
/// with a drain timeout no test waits for.
fn stopped_by_its_handler(drop_it: bool) -> (Arc<Mutex<Option<Arc<ThriftServer>>>>, SocketAddr) {
    let slot: Arc<Mutex<Option<Arc<ThriftServer>>>> = Arc::default();
    let handler = Special::pinging({
        let slot = slot.clone();
        move || {
            let server = slot.lock().unwrap().take().expect("a server to stop");
            if !drop_it {
                server.stop();
            }
        }
    });
    let config = patient().workers(2).drain_timeout(Duration::from_secs(600));
    let server = Arc::new(serve(handler, config));
    let addr = server.local_addr();
    *slot.lock().unwrap() = Some(server);
    (slot, addr)
}

#[test]
fn a_handler_may_stop_its_own_server() {
    let _lock = shared_lock();
    for drop_it in [false, true] {
        let (slot, addr) = stopped_by_its_handler(drop_it);
        let mut client = framed_binary(addr);
        assert_eq!(client.add(1, 2).unwrap(), 3);
        // Answered, once the server has stopped without waiting for this call's worker.
        client.ping().unwrap();
        assert!(slot.lock().unwrap().is_none());
        assert!(
            TcpStream::connect(addr).is_err(),
            "drop {drop_it}: still accepting"
        );
    }
}

#[test]
fn a_handler_stopping_its_server_while_another_thread_does_holds_neither_up() {
    let _lock = shared_lock();
    let (release, gate) = crossbeam_channel::unbounded::<()>();
    let slot: Arc<Mutex<Option<Arc<ThriftServer>>>> = Arc::default();
    // `ping` waits for the test, then stops the server too.
    let handler = Special::pinging({
        let slot = slot.clone();
        move || {
            gate.recv_timeout(PATIENCE).expect("released");
            let server = slot.lock().unwrap().clone();
            server.expect("a server").stop();
        }
    });
    let config = patient().workers(2).drain_timeout(Duration::from_secs(600));
    let server = Arc::new(serve(handler, config));
    *slot.lock().unwrap() = Some(server.clone());
    let addr = server.local_addr();
    let caller = thread::spawn(move || framed_binary(addr).ping());
    wait_for_stats(&server, "the ping under way", |s| s.busy_workers == 1);
    let stopper = {
        let server = server.clone();
        thread::spawn(move || server.stop())
    };
    assert!(wait_until(PATIENCE, || TcpStream::connect(addr).is_err()));
    // Both stops return, and the ping is answered, without waiting for the drain timeout.
    release.send(()).unwrap();
    caller.join().unwrap().unwrap();
    stopper.join().unwrap();
    slot.lock().unwrap().take();
}

/// A connection whose client asked for a response of several megabytes and reads none of it
/// (its receive buffer kept small), which waits to be sent in the server's poller.
fn sluggard(server: &ThriftServer) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.local_addr().into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let profiles = call(
        Transport::Framed,
        Protocol::Binary,
        "profiles",
        1,
        &[Arg::I32(1, 200_000)],
    );
    stream.write_all(&profiles).unwrap();
    wait_for_stats(server, "the response waits for its client", |s| {
        s.busy_workers == 0 && s.waiting_bytes > 1 << 20
    });
    stream
}

#[test]
fn while_stopping_a_client_that_does_not_read_holds_no_worker_from_the_others() {
    let _lock = shared_lock();
    let (handler, release) = Special::gated();
    let config = patient()
        .workers(1)
        .request_timeout(Duration::from_secs(600))
        .drain_timeout(Duration::from_secs(600));
    let server = Arc::new(serve(handler, config));
    let addr = server.local_addr();
    let mut sluggard = sluggard(&server);
    let busy = thread::spawn(move || framed_binary(addr).slow(1).map_err(|e| e.to_string()));
    wait_for_stats(&server, "the slow call holds the only worker", |s| {
        s.busy_workers == 1
    });
    // The sluggard takes a little: its connection is queued for the worker, ahead of a call.
    let mut some = vec![0; 1 << 20];
    sluggard.read_exact(&mut some).unwrap();
    wait_for_stats(&server, "the sluggard queued", |s| {
        s.queued_connections == 1
    });
    let mut good = raw(addr);
    good.write_all(&add(2, 40, 2)).unwrap();
    wait_for_stats(&server, "the call queued", |s| s.queued_connections == 2);
    let stopper = {
        let server = server.clone();
        thread::spawn(move || server.stop())
    };
    assert!(wait_until(PATIENCE, || TcpStream::connect(addr).is_err()));
    release.send(()).unwrap();
    assert_eq!(busy.join().unwrap(), Ok(1));
    // Answered while the sluggard still holds its response up.
    let reply = read_reply(&mut good, Transport::Framed, Protocol::Binary);
    assert_eq!((reply.seq, reply.result), (2, Some(42)));
    assert!(!stopper.is_finished());
    // Once it reads, it gets the whole response, and the stop ends.
    let mut rest = Vec::new();
    sluggard.read_to_end(&mut rest).unwrap();
    assert!(rest.len() > 1 << 20);
    stopper.join().unwrap();
}

#[test]
fn while_stopping_a_client_that_does_not_read_is_given_up_on_when_the_drain_timeout_ends() {
    // Counts the server's threads: no other test runs a server meanwhile.
    let _lock = exclusive_lock();
    let config = patient()
        .workers(1)
        .request_timeout(Duration::from_secs(600))
        .drain_timeout(Duration::from_millis(500));
    let (server, _) = calculator(config);
    let _sluggard = sluggard(&server);
    server.stop();
    // Its worker let go when the drain timeout ended, not after the request timeout.
    assert!(
        wait_until(PATIENCE, || server_threads() == 0),
        "{} threads left after stop",
        server_threads()
    );
}

#[test]
fn a_handler_stopping_its_server_during_another_stop_keeps_to_the_drain_timeout() {
    let _lock = shared_lock();
    let (stopping_tx, stopping) = crossbeam_channel::bounded::<()>(1);
    let (release, gate) = crossbeam_channel::bounded::<()>(1);
    let slot: Arc<Mutex<Option<Arc<ThriftServer>>>> = Arc::default();
    // `ping` stops the server once another thread is stopping it, then goes on working.
    let handler = Special::pinging({
        let slot = slot.clone();
        move || {
            stopping
                .recv_timeout(PATIENCE)
                .expect("the test stops the server");
            let server = slot.lock().unwrap().clone();
            server.expect("a server").stop();
            let _ = gate.recv_timeout(PATIENCE);
        }
    });
    let config = patient()
        .workers(2)
        .drain_timeout(Duration::from_millis(500));
    let server = Arc::new(serve(handler, config));
    *slot.lock().unwrap() = Some(server.clone());
    let addr = server.local_addr();
    let caller = thread::spawn(move || framed_binary(addr).ping());
    wait_for_stats(&server, "the ping under way", |s| s.busy_workers == 1);
    let started = Instant::now();
    let stopper = {
        let server = server.clone();
        thread::spawn(move || server.stop())
    };
    assert!(wait_until(PATIENCE, || TcpStream::connect(addr).is_err()));
    stopping_tx.send(()).unwrap();
    // The stop returns once the drain timeout ends, leaving the busy handler to finish.
    stopper.join().unwrap();
    let took = started.elapsed();
    release.send(()).unwrap();
    let _ = caller.join();
    slot.lock().unwrap().take();
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
}

#[test]
fn while_stopping_no_connection_is_counted_queued_that_is_not() {
    let _lock = shared_lock();
    let (handler, release) = Special::gated();
    let server = Arc::new(serve(handler, patient().workers(1)));
    let addr = server.local_addr();
    let busy = thread::spawn(move || framed_binary(addr).slow(1).map_err(|e| e.to_string()));
    wait_for_stats(&server, "the slow call under way", |s| s.busy_workers == 1);
    let mut idle = raw(addr);
    let stopper = {
        let server = server.clone();
        thread::spawn(move || server.stop())
    };
    // Idle connections are closed first; the worker's stop message is queued moments later
    // and waits there for the slow call. It is no connection.
    assert!(closed_by_server(&mut idle));
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        let stats = server.stats();
        assert_eq!(stats.queued_connections, 0, "{stats:?}");
        thread::sleep(Duration::from_millis(5));
    }
    release.send(()).unwrap();
    assert_eq!(busy.join().unwrap(), Ok(1));
    stopper.join().unwrap();
}

#[test]
fn stop_answers_every_request_that_arrived_before_it() {
    let _lock = shared_lock();
    // Races between a request arriving and the server stopping: on a connection waiting in
    // the poller, on one whose worker may still be waiting for its next request, and on one
    // the server has not accepted yet.
    let mut unanswered = Vec::new();
    for trial in 0..240 {
        let server = serve(CalculatorService::new("stopping"), patient().workers(2));
        let addr = server.local_addr();
        let mut stream = raw(addr);
        match trial % 3 {
            0 => {
                stream.write_all(&add(1, 1, 1)).unwrap();
                read_reply(&mut stream, Transport::Framed, Protocol::Binary);
                wait_for_stats(&server, "the connection waits in the poller", |s| {
                    s.idle_connections == 1
                });
            }
            1 => {
                stream.write_all(&add(1, 1, 1)).unwrap();
                read_reply(&mut stream, Transport::Framed, Protocol::Binary);
            }
            _ => {}
        }
        stream.write_all(&add(2, 20, 22)).unwrap();
        server.stop();
        let mut header = [0u8; 4];
        match stream.read_exact(&mut header) {
            Ok(()) => {
                let mut frame = vec![0u8; i32::from_be_bytes(header) as usize];
                stream.read_exact(&mut frame).unwrap();
                let mut i = TBinaryInputProtocol::new(io::Cursor::new(frame), true);
                let ident = i.read_message_begin().unwrap();
                assert_eq!(
                    (ident.message_type, ident.sequence_number),
                    (TMessageType::Reply, 2)
                );
            }
            Err(err) => unanswered.push((trial, err.kind())),
        }
    }
    assert!(
        unanswered.is_empty(),
        "unanswered (trial, error): {unanswered:?}"
    );
}

#[test]
fn stop_answers_requests_on_every_connection_waiting_to_be_accepted() {
    let _lock = shared_lock();
    // More connections than the poller accepts in one go, each with a whole request, wait in
    // the listener's backlog (1024) when the server starts and is stopped at once.
    const WAITING: usize = 1000;
    let needed = 4 * WAITING as libc::rlim_t;
    if support::open_files_limits().0 < needed {
        support::set_open_files_limit(needed);
    }
    let server = ThriftServer::bind(
        "127.0.0.1:0",
        CalculatorSyncProcessor::new(CalculatorService::new("backlog")),
        ServerConfig::default().workers(2),
    )
    .unwrap();
    let addr = server.local_addr();
    let mut streams: Vec<TcpStream> = (0..WAITING)
        .map(|seq| {
            let mut stream = raw(addr);
            stream.write_all(&add(seq as i32, seq as i32, 1)).unwrap();
            stream
        })
        .collect();
    server.start().unwrap();
    server.stop();
    let unanswered: Vec<usize> = streams
        .iter_mut()
        .enumerate()
        .filter_map(|(seq, stream)| stream.read_exact(&mut [0u8; 4]).is_err().then_some(seq))
        .collect();
    assert!(
        unanswered.is_empty(),
        "{} of {WAITING} unanswered, from {:?}",
        unanswered.len(),
        unanswered.first()
    );
}

#[test]
fn durations_too_long_to_add_to_an_instant_mean_never() {
    let _lock = shared_lock();
    let config = ServerConfig::default()
        .workers(2)
        .idle_timeout(Duration::MAX)
        .request_timeout(Duration::MAX)
        .max_queue_wait(Duration::MAX)
        .drain_timeout(Duration::MAX);
    let server = serve(CalculatorService::new("endless"), config);
    let mut stream = raw(server.local_addr());
    stream.write_all(&add(1, 1, 2)).unwrap();
    let reply = read_reply(&mut stream, Transport::Framed, Protocol::Binary);
    assert_eq!(reply.result, Some(3));
    // Idle, then half a request waiting in the poller for the rest.
    wait_for_stats(&server, "the connection waits in the poller", |s| {
        s.idle_connections == 1
    });
    let request = add(2, 20, 22);
    stream.write_all(&request[..6]).unwrap();
    wait_for_stats(&server, "half a request waits in the poller", |s| {
        s.idle_connections == 1 && s.waiting_bytes > 0
    });
    stream.write_all(&request[6..]).unwrap();
    let reply = read_reply(&mut stream, Transport::Framed, Protocol::Binary);
    assert_eq!(reply.result, Some(42));
    server.stop();
    assert!(closed_by_server(&mut stream));
}

#[test]
fn stop_joins_every_thread_and_frees_the_port() {
    // No other test runs a server meanwhile.
    let _lock = exclusive_lock();
    assert_eq!(
        server_threads(),
        0,
        "a server of another test is still running"
    );
    let (server, _) = calculator(ServerConfig::default().workers(3));
    let addr = server.local_addr();
    // A thread names itself once it runs, so its name may show a moment after `start`.
    assert!(
        wait_until(PATIENCE, || server_threads() == 4),
        "expected a poller and three workers"
    );
    // An idle connection is still open when the server stops.
    let mut idle = raw(addr);
    idle.write_all(&add(1, 1, 1)).unwrap();
    assert_eq!(
        read_reply(&mut idle, Transport::Framed, Protocol::Binary).result,
        Some(2)
    );

    server.stop();
    assert!(
        closed_by_server(&mut idle),
        "the idle connection stays open"
    );
    assert!(
        wait_until(PATIENCE, || server_threads() == 0),
        "{} threads left after stop",
        server_threads()
    );

    let again = ThriftServer::bind(
        addr,
        CalculatorSyncProcessor::new(CalculatorService::new("again")),
        ServerConfig::default().workers(1),
    )
    .expect("the port is free after stop");
    again.start().unwrap();
    assert_eq!(framed_binary(addr).whoami(false).unwrap(), "again");
    drop(again);
    assert!(
        wait_until(PATIENCE, || server_threads() == 0),
        "dropping the server joins its threads"
    );
}

#[test]
fn serve_blocks_until_another_thread_stops_the_server() {
    let _lock = shared_lock();
    let server = Arc::new(
        ThriftServer::bind(
            "127.0.0.1:0",
            CalculatorSyncProcessor::new(CalculatorService::new("serve")),
            ServerConfig::default().workers(1),
        )
        .unwrap(),
    );
    let serving = {
        let server = Arc::clone(&server);
        thread::spawn(move || server.serve())
    };
    let addr = server.local_addr();
    assert!(wait_until(PATIENCE, || TcpStream::connect(addr).is_ok()));
    assert_eq!(framed_binary(addr).add(1, 1).unwrap(), 2);
    server.stop();
    serving
        .join()
        .unwrap()
        .expect("serve returns Ok after stop");
    assert!(
        server.start().is_err(),
        "a stopped server cannot start again"
    );
}

#[test]
fn from_listener_serves_on_the_given_socket() {
    let _lock = shared_lock();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ThriftServer::from_listener(
        listener,
        CalculatorSyncProcessor::new(CalculatorService::new("listener")),
        ServerConfig::default().workers(1),
    )
    .unwrap();
    assert_eq!(server.local_addr(), addr);
    server.start().unwrap();
    assert_eq!(framed_binary(addr).whoami(false).unwrap(), "listener");
}

/// The thrift crate's client of the service "Calculator" on a multiplexed server.
fn multiplexed_client(addr: SocketAddr) -> impl TCalculatorSyncClient {
    let (reader, writer) = TTcpChannel::with_stream(raw(addr)).split().unwrap();
    let input = TBinaryInputProtocol::new(TFramedReadTransport::new(reader), true);
    let output = TMultiplexedOutputProtocol::new(
        "Calculator",
        TBinaryOutputProtocol::new(TFramedWriteTransport::new(writer), true),
    );
    CalculatorSyncClient::new(input, output)
}

#[test]
fn a_multiplexed_processor_is_served() {
    let _lock = shared_lock();
    let mut processor = TMultiplexedProcessor::new();
    let calc = CalculatorSyncProcessor::new(CalculatorService::new("multiplexed"));
    processor
        .register("Calculator", Box::new(calc), false)
        .unwrap();
    let server =
        ThriftServer::bind("127.0.0.1:0", processor, ServerConfig::default().workers(1)).unwrap();
    server.start().unwrap();

    let mut c = multiplexed_client(server.local_addr());
    assert_eq!(c.whoami(false).unwrap(), "multiplexed");
    assert_eq!(c.add(2, 2).unwrap(), 4);
}

#[test]
fn a_multiplexed_client_reads_the_servers_own_error_replies() {
    let _lock = shared_lock();
    // The replies this server writes itself (a panicking handler's, a shed request's: the same
    // writer) name the method as the multiplexed processor's would: without the service's
    // prefix, which the generated client would refuse as the wrong method's.
    let mut processor = TMultiplexedProcessor::new();
    processor
        .register(
            "Calculator",
            Box::new(CalculatorSyncProcessor::new(Special::new())),
            false,
        )
        .unwrap();
    let server = ThriftServer::bind("127.0.0.1:0", processor, patient().workers(1)).unwrap();
    server.start().unwrap();
    let mut client = multiplexed_client(server.local_addr());
    match client.add(666, 0) {
        Err(thrift::Error::Application(err)) => {
            assert_eq!(err.kind, ApplicationErrorKind::InternalError, "{err:?}")
        }
        other => panic!("add(666) gave {other:?}"),
    }
    assert_eq!(client.add(1, 2).unwrap(), 3);
}

#[test]
fn a_panicking_handler_fails_only_its_own_call() {
    let _lock = shared_lock();
    for transport in [Transport::Framed, Transport::Buffered] {
        let handler = Special::new();
        let server = serve(handler, patient().workers(1).transport(transport));
        let addr = server.local_addr();
        let mut bystander = client(addr, transport, Protocol::Binary);
        bystander.ping().unwrap();

        let mut victim = client(addr, transport, Protocol::Binary);
        match victim.add(666, 0) {
            Err(thrift::Error::Application(err)) => {
                assert_eq!(transport, Transport::Framed);
                assert_eq!(err.kind, ApplicationErrorKind::InternalError);
                // The frame's end is known, so the connection carries on.
                assert_eq!(victim.add(1, 2).unwrap(), 3);
            }
            // A buffered connection is closed: where the next request starts is unknown.
            Err(thrift::Error::Transport(_)) => assert_eq!(transport, Transport::Buffered),
            other => panic!("{transport:?}: add(666) gave {other:?}"),
        }

        // The only worker survived: the bystander and a new client are served.
        assert_eq!(bystander.add(2, 2).unwrap(), 4);
        assert_eq!(
            client(addr, transport, Protocol::Binary).add(3, 3).unwrap(),
            6
        );
        let stats = server.stats();
        assert_eq!(stats.panics, 1, "{transport:?}: {stats:?}");
    }
}

#[test]
fn oneway_calls_run_and_answer_nothing() {
    let _lock = shared_lock();
    let (server, service) = calculator(ServerConfig::default().workers(1));
    let mut stream = raw(server.local_addr());
    let (transport, protocol) = (Transport::Framed, Protocol::Binary);
    let mut bytes = wire(
        transport,
        &encode(protocol, "zip", TMessageType::OneWay, 1, &[]),
    );
    bytes.extend(call(transport, protocol, "ping", 2, &[]));
    stream.write_all(&bytes).unwrap();
    // The first reply is ping's: zip wrote nothing.
    let reply = read_reply(&mut stream, transport, protocol);
    assert_eq!((reply.name.as_str(), reply.seq), ("ping", 2));
    assert!(wait_until(PATIENCE, || service.zips() == 1));

    let mut c = framed_binary(server.local_addr());
    for _ in 0..5 {
        c.zip().unwrap();
    }
    c.ping().unwrap();
    assert!(wait_until(PATIENCE, || service.zips() == 6));
}

#[test]
fn an_unknown_method_is_answered_and_the_connection_stays_usable() {
    let _lock = shared_lock();
    for (transport, protocol) in ALL_WIRE_FORMATS {
        let config = ServerConfig::default()
            .workers(1)
            .transport(transport)
            .protocol(protocol);
        let (server, _) = calculator(config);
        let mut stream = raw(server.local_addr());
        // Arguments the processor never reads must not be taken for the next request.
        let args = [Arg::I32(1, 5), Arg::I32(2, 6)];
        stream
            .write_all(&call(transport, protocol, "nosuch", 7, &args))
            .unwrap();
        let reply = read_reply(&mut stream, transport, protocol);
        assert_eq!(
            reply.kind,
            TMessageType::Exception,
            "{transport:?}/{protocol:?}"
        );
        assert_eq!(reply.error, Some(ApplicationErrorKind::UnknownMethod));
        assert_eq!((reply.name.as_str(), reply.seq), ("nosuch", 7));

        let args = [Arg::I32(1, 20), Arg::I32(2, 22)];
        stream
            .write_all(&call(transport, protocol, "add", 8, &args))
            .unwrap();
        let reply = read_reply(&mut stream, transport, protocol);
        assert_eq!(
            (reply.seq, reply.result),
            (8, Some(42)),
            "{transport:?}/{protocol:?}"
        );
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let _lock = shared_lock();
    for (transport, protocol) in ALL_WIRE_FORMATS {
        let config = ServerConfig::default()
            .workers(2)
            .transport(transport)
            .protocol(protocol);
        let (server, _) = calculator(config);
        let mut stream = raw(server.local_addr());
        let mut bytes = Vec::new();
        for seq in 1..=3 {
            bytes.extend(call(
                transport,
                protocol,
                "add",
                seq,
                &[Arg::I32(1, seq), Arg::I32(2, 100)],
            ));
        }
        stream.write_all(&bytes).unwrap();
        for seq in 1..=3 {
            let reply = read_reply(&mut stream, transport, protocol);
            assert_eq!(
                (reply.seq, reply.result),
                (seq, Some(seq + 100)),
                "{transport:?}/{protocol:?}"
            );
        }
    }
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let _lock = shared_lock();
    let config = ServerConfig::default()
        .workers(1)
        .idle_timeout(Duration::from_millis(200));
    let (server, _) = calculator(config);
    let mut stream = raw(server.local_addr());
    stream.write_all(&add(1, 1, 1)).unwrap();
    assert_eq!(
        read_reply(&mut stream, Transport::Framed, Protocol::Binary).result,
        Some(2)
    );
    assert!(
        closed_by_server(&mut stream),
        "the idle connection was not closed"
    );
    wait_for_stats(&server, "no connection open", |s| s.open_connections == 0);
    assert_eq!(server.stats().errors, 0);
}

#[test]
fn connections_over_the_limit_are_closed_at_once() {
    let _lock = shared_lock();
    let (server, _) = calculator(ServerConfig::default().workers(1).max_connections(2));
    let addr = server.local_addr();
    let mut held: Vec<Client> = (0..2).map(|_| framed_binary(addr)).collect();
    for c in &mut held {
        c.ping().unwrap();
    }
    let mut over = raw(addr);
    assert!(
        closed_by_server_within(&mut over, REFUSED_WITHIN),
        "the connection over the limit was left open"
    );
    assert_eq!(server.stats().rejected_connections, 1);

    drop(held.pop());
    wait_for_stats(&server, "a slot freed", |s| s.open_connections == 1);
    assert_serving(&server);
}

/// Sends `bytes` on a new connection and asserts the server closes it, and only it.
fn assert_rejected(server: &ThriftServer, bytes: &[u8]) {
    assert_rejected_over(server, Transport::Framed, bytes);
}

fn assert_rejected_over(server: &ThriftServer, transport: Transport, bytes: &[u8]) {
    let mut bystander = client(server.local_addr(), transport, Protocol::Binary);
    bystander.ping().unwrap();
    let errors = server.stats().errors;
    let mut hostile = raw(server.local_addr());
    hostile.write_all(bytes).unwrap();
    assert!(
        closed_by_server_within(&mut hostile, REFUSED_WITHIN),
        "the server kept the connection open"
    );
    wait_for_stats(server, "the bad input counted", |s| s.errors > errors);
    assert_eq!(
        bystander.add(1, 1).unwrap(),
        2,
        "a bystander's connection was affected"
    );
    assert_serving_over(server, transport);
}

#[test]
fn a_frame_over_the_size_limit_closes_its_connection() {
    let _lock = shared_lock();
    let (server, _) = calculator(ServerConfig::default().workers(1).max_message_size(1024));
    let mut bytes = 4096i32.to_be_bytes().to_vec();
    bytes.extend([0u8; 64]);
    assert_rejected(&server, &bytes);
    // A request at the limit is still fine.
    let mut c = framed_binary(server.local_addr());
    assert_eq!(c.echo(vec![7; 900]).unwrap(), vec![7; 900]);
}

#[test]
fn a_negative_frame_length_closes_its_connection() {
    let _lock = shared_lock();
    let (server, _) = calculator(ServerConfig::default().workers(1));
    assert_rejected(&server, &(-5i32).to_be_bytes());
}

#[test]
fn garbage_closes_its_connection() {
    let _lock = shared_lock();
    for transport in [Transport::Framed, Transport::Buffered] {
        let (server, _) = calculator(ServerConfig::default().workers(1).transport(transport));
        assert_rejected_over(
            &server,
            transport,
            b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
        );
        // A well-sized frame that holds no Thrift message.
        let mut bytes = 8i32.to_be_bytes().to_vec();
        bytes.extend([0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef]);
        assert_rejected_over(&server, transport, &bytes);
    }
}

#[test]
fn a_truncated_frame_closes_its_connection() {
    let _lock = shared_lock();
    let (server, _) = calculator(ServerConfig::default().workers(1));
    let mut bystander = framed_binary(server.local_addr());
    bystander.ping().unwrap();
    let errors = server.stats().errors;
    let request = add(1, 2, 3);
    let mut hostile = raw(server.local_addr());
    hostile.write_all(&request[..request.len() - 5]).unwrap();
    hostile.shutdown(Shutdown::Write).unwrap();
    assert!(closed_by_server(&mut hostile));
    wait_for_stats(&server, "the truncated frame counted", |s| {
        s.errors > errors
    });
    assert_eq!(bystander.add(1, 1).unwrap(), 2);
}

#[test]
fn a_client_leaving_mid_request_costs_only_its_connection() {
    let _lock = shared_lock();
    let (server, _) = calculator(ServerConfig::default().workers(1));
    let errors = server.stats().errors;
    let request = add(1, 2, 3);
    let mut hostile = raw(server.local_addr());
    hostile.write_all(&request[..request.len() / 2]).unwrap();
    drop(hostile);
    wait_for_stats(&server, "the broken request counted", |s| s.errors > errors);
    wait_for_stats(&server, "its connection closed", |s| {
        s.open_connections == 0
    });
    assert_serving(&server);
}

#[test]
fn a_client_leaving_before_its_response_costs_only_its_connection() {
    let _lock = shared_lock();
    let (server, _) = calculator(ServerConfig::default().workers(1));
    let mut hostile = raw(server.local_addr());
    let slow = call(
        Transport::Framed,
        Protocol::Binary,
        "slow",
        1,
        &[Arg::I32(1, 100)],
    );
    hostile.write_all(&slow).unwrap();
    wait_for_stats(&server, "the slow call started", |s| s.requests == 1);
    drop(hostile);
    wait_for_stats(&server, "its connection closed", |s| {
        s.busy_workers == 0 && s.open_connections == 0
    });
    assert_serving(&server);
}

#[test]
fn a_stalled_half_request_does_not_hold_the_only_worker() {
    let _lock = shared_lock();
    // Far longer than the test may take, so it is not the timeout that frees the worker.
    let request_timeout = Duration::from_secs(30);
    let config = patient().workers(1).request_timeout(request_timeout);
    let (server, _) = calculator(config);
    let request = add(1, 2, 3);
    let mut stalled = raw(server.local_addr());
    stalled.write_all(&request[..request.len() / 2]).unwrap();
    wait_for_stats(&server, "the half request waiting in the poller", |s| {
        s.idle_connections == 1 && s.busy_workers == 0
    });

    let started = Instant::now();
    let mut other = raw(server.local_addr());
    other.write_all(&add(2, 20, 22)).unwrap();
    let reply = read_reply(&mut other, Transport::Framed, Protocol::Binary);
    assert_eq!((reply.seq, reply.result), (2, Some(42)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the second client waited {:?} for the stalled one",
        started.elapsed()
    );

    // The stalled request completes where it left off.
    stalled.write_all(&request[request.len() / 2..]).unwrap();
    let reply = read_reply(&mut stalled, Transport::Framed, Protocol::Binary);
    assert_eq!((reply.seq, reply.result), (1, Some(5)));
    assert_eq!(server.stats().errors, 0);
}

#[test]
fn a_stalled_half_request_is_dropped_after_the_request_timeout() {
    let _lock = shared_lock();
    for transport in [Transport::Framed, Transport::Buffered] {
        let config = ServerConfig::default()
            .workers(1)
            .transport(transport)
            .request_timeout(Duration::from_millis(300));
        let (server, _) = calculator(config);
        let request = call(
            transport,
            Protocol::Binary,
            "add",
            1,
            &[Arg::I32(1, 2), Arg::I32(2, 3)],
        );
        let mut stalled = raw(server.local_addr());
        let started = Instant::now();
        stalled.write_all(&request[..request.len() / 2]).unwrap();
        assert!(
            closed_by_server(&mut stalled),
            "{transport:?}: the stalled connection was left open"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{transport:?}: closed after {:?}, before its request timeout",
            started.elapsed()
        );
        wait_for_stats(&server, "the timeout counted as an error", |s| {
            s.errors == 1 && s.open_connections == 0
        });
        assert_serving_over(&server, transport);
    }
}

#[test]
fn a_busy_connection_does_not_keep_its_worker_from_a_waiting_one() {
    let _lock = shared_lock();
    let (server, _) = calculator(ServerConfig::default().workers(1));
    let addr = server.local_addr();
    let (stop_tx, stop) = crossbeam_channel::bounded::<()>(1);
    // A client calling in a tight loop, whose connection could stay on the only worker.
    let busy = thread::spawn(move || {
        let mut c = framed_binary(addr);
        let mut calls = 0u64;
        while stop.try_recv().is_err() {
            assert_eq!(c.add(1, 1).unwrap(), 2);
            calls += 1;
        }
        calls
    });
    wait_for_stats(&server, "the busy client calling", |s| s.requests > 100);
    for n in 0..20 {
        let started = Instant::now();
        let mut c = framed_binary(addr);
        assert_eq!(c.add(n, 1).unwrap(), n + 1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a new client waited {:?} behind a busy one",
            started.elapsed()
        );
    }
    stop_tx.send(()).unwrap();
    assert!(busy.join().unwrap() > 100);
}

#[test]
fn stats_describe_the_server() {
    let _lock = shared_lock();
    let (server, _) = calculator(ServerConfig::default().workers(3));
    let stats = server.stats();
    assert_eq!(stats.workers, 3);
    assert_eq!((stats.open_connections, stats.requests), (0, 0));
    let mut c = framed_binary(server.local_addr());
    c.ping().unwrap();
    c.ping().unwrap();
    wait_for_stats(&server, "one idle connection", |s| s.idle_connections == 1);
    let stats = server.stats();
    assert_eq!(stats.accepted_connections, 1, "{stats:?}");
    assert_eq!(stats.open_connections, 1, "{stats:?}");
    assert_eq!(stats.requests, 2, "{stats:?}");
    assert_eq!(
        (stats.busy_workers, stats.queued_connections),
        (0, 0),
        "{stats:?}"
    );
}

#[test]
fn partial_requests_waiting_together_cannot_hold_more_than_max_waiting_bytes() {
    let _lock = shared_lock();
    let config = ServerConfig::default()
        .workers(1)
        .request_timeout(Duration::from_secs(30))
        .max_waiting_bytes(64 * 1024);
    let (server, _) = calculator(config);
    // Each client declares a 1 MiB frame, sends 100 KiB of it and stalls.
    let mut stalled: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = raw(server.local_addr());
            stream.write_all(&(1u32 << 20).to_be_bytes()).unwrap();
            stream.write_all(&vec![0u8; 100 * 1024]).unwrap();
            stream
        })
        .collect();
    for (n, stream) in stalled.iter_mut().enumerate() {
        assert!(closed_by_server(stream), "stalled client {n} still open");
    }
    let stats = server.stats();
    assert!(stats.waiting_bytes <= 64 * 1024, "{stats:?}");
    assert!(stats.errors >= 3, "{stats:?}");
    assert_serving(&server);
}

#[test]
fn buffers_idle_connections_keep_for_reuse_leave_room_for_partial_requests() {
    let _lock = shared_lock();
    let limit = 1024 * 1024;
    let config = patient()
        .workers(2)
        .request_timeout(Duration::from_secs(30))
        .max_waiting_bytes(limit);
    let (server, _) = calculator(config);
    let addr = server.local_addr();
    // Six connections that carried 200 KiB each way, idle now, keep buffers to reuse.
    let mut idle: Vec<Client> = (0..6).map(|_| framed_binary(addr)).collect();
    for client in &mut idle {
        assert_eq!(client.echo(vec![1; 200 * 1024]).unwrap().len(), 200 * 1024);
    }
    wait_for_stats(&server, "six idle connections", |s| s.idle_connections == 6);
    // A request far under the limit arrives in two parts, the first waiting in the poller.
    let mut message = encode(Protocol::Binary, "echo", TMessageType::Call, 9, &[]);
    message.pop();
    message.extend_from_slice(&[11, 0, 1]);
    message.extend_from_slice(&(200 * 1024i32).to_be_bytes());
    message.extend(vec![2u8; 200 * 1024]);
    message.push(0);
    let request = wire(Transport::Framed, &message);
    let mut slow = raw(addr);
    slow.write_all(&request[..100 * 1024]).unwrap();
    wait_for_stats(&server, "the partial request waits", |s| {
        s.idle_connections == 7 || s.errors > 0
    });
    slow.write_all(&request[100 * 1024..]).unwrap();
    let mut header = [0u8; 4];
    slow.read_exact(&mut header).unwrap();
    assert!(i32::from_be_bytes(header) > 200 * 1024);
    let stats = server.stats();
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert!(stats.waiting_bytes <= limit, "{stats:?}");
}

#[test]
fn undecodable_arguments_are_answered_and_counted_as_bad_requests() {
    let _lock = shared_lock();
    let (server, _) = calculator(ServerConfig::default());
    // echo(1: <binary of length -1>): the header decodes, the arguments do not.
    let mut message = encode(Protocol::Binary, "echo", TMessageType::Call, 7, &[]);
    let stop = message.len() - 1;
    message.truncate(stop);
    message.extend_from_slice(&[11, 0, 1, 0xff, 0xff, 0xff, 0xff, 0]);
    let mut stream = raw(server.local_addr());
    stream
        .write_all(&wire(Transport::Framed, &message))
        .unwrap();
    let reply = read_reply(&mut stream, Transport::Framed, Protocol::Binary);
    assert_eq!(
        (reply.kind, reply.seq),
        (TMessageType::Exception, 7),
        "{reply:?}"
    );
    // The framed connection stays usable.
    stream.write_all(&add(8, 2, 3)).unwrap();
    let reply = read_reply(&mut stream, Transport::Framed, Protocol::Binary);
    assert_eq!((reply.seq, reply.result), (8, Some(5)), "{reply:?}");
    let stats = server.stats();
    assert_eq!((stats.bad_requests, stats.requests), (1, 2), "{stats:?}");

    // A message whose header cannot be read gets no reply: its connection is closed, and
    // counted as an error, not as a bad request.
    let mut unversioned = raw(server.local_addr());
    let message = [
        0x12, 0x34, 0, 1, 0, 0, 0, 3, b'a', b'd', b'd', 0, 0, 0, 1, 0,
    ];
    unversioned
        .write_all(&wire(Transport::Framed, &message))
        .unwrap();
    assert!(closed_by_server(&mut unversioned));
    wait_for_stats(&server, "the connection is counted as an error", |s| {
        s.errors == 1
    });
    let stats = server.stats();
    assert_eq!((stats.bad_requests, stats.requests), (1, 3), "{stats:?}");
}

/// Binary `add(1, 2)` with an unknown argument 3: lists nested `depth` deep.
fn add_with_nested_lists(seq: i32, depth: usize) -> Vec<u8> {
    let mut message = encode(
        Protocol::Binary,
        "add",
        TMessageType::Call,
        seq,
        &[Arg::I32(1, 1), Arg::I32(2, 2)],
    );
    message.pop(); // The arguments' stop, put back after the unknown one.
    message.extend_from_slice(&[0x0F, 0, 3]);
    for _ in 1..depth {
        message.extend_from_slice(&[0x0F, 0, 0, 0, 1]);
    }
    message.extend_from_slice(&[0x08, 0, 0, 0, 0, 0]);
    message
}

#[test]
fn a_max_depth_above_64_lets_deeper_requests_through_on_both_transports() {
    let _lock = shared_lock();
    for transport in [Transport::Framed, Transport::Buffered] {
        let config = ServerConfig::default().max_depth(100).transport(transport);
        let (server, _) = calculator(config);
        let mut stream = raw(server.local_addr());
        // 81 levels with the arguments' struct: within the limit, twice on one connection.
        for seq in 1..=2 {
            stream
                .write_all(&wire(transport, &add_with_nested_lists(seq, 80)))
                .unwrap();
            let reply = read_reply(&mut stream, transport, Protocol::Binary);
            assert_eq!((reply.seq, reply.result), (seq, Some(3)), "{transport:?}");
        }
        // 121: over it.
        stream
            .write_all(&wire(transport, &add_with_nested_lists(3, 120)))
            .unwrap();
        let reply = read_reply(&mut stream, transport, Protocol::Binary);
        assert_eq!(
            (reply.kind, reply.seq),
            (TMessageType::Exception, 3),
            "{transport:?}"
        );
    }
}

/// Opens up to `count` connections to a server that is not accepting yet, each allowed
/// `timeout`; returns those that connected, stopping at the first that did not.
fn connect_burst(addr: SocketAddr, count: usize, timeout: Duration) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => streams.push(stream),
            Err(_) => break,
        }
    }
    streams
}

#[test]
fn a_burst_of_connections_waits_in_the_backlog_until_the_server_accepts() {
    let _lock = shared_lock();
    let service = Arc::new(CalculatorService::new("test-server"));
    let processor = CalculatorSyncProcessor::new(service);
    let server =
        ThriftServer::bind("127.0.0.1:0", processor, ServerConfig::default().workers(2)).unwrap();
    let addr = server.local_addr();
    // More than the 128 the standard library's listeners queue: none is refused or dropped
    // while nothing accepts them.
    let burst = connect_burst(addr, 300, Duration::from_secs(3));
    assert_eq!(burst.len(), 300, "only {} connections got in", burst.len());
    server.start().unwrap();
    let mut last = TcpStream::connect(addr).unwrap();
    drop(burst);
    last.write_all(&add(1, 2, 3)).unwrap();
    let reply = read_reply(&mut last, Transport::Framed, Protocol::Binary);
    assert_eq!((reply.seq, reply.result), (1, Some(5)));
}

#[cfg(target_os = "linux")]
#[test]
fn the_backlog_setting_bounds_the_queue_of_connections_not_yet_accepted() {
    let _lock = shared_lock();
    let service = Arc::new(CalculatorService::new("test-server"));
    let processor = CalculatorSyncProcessor::new(service);
    let config = ServerConfig::default().backlog(8);
    let server = ThriftServer::bind("127.0.0.1:0", processor, config).unwrap();
    // Linux queues a few more than asked; with the queue full, a new client's handshake is
    // dropped and tried again a second later, after this timeout.
    let burst = connect_burst(server.local_addr(), 64, Duration::from_millis(300));
    assert!(
        (8..64).contains(&burst.len()),
        "{} connections got into a backlog of 8",
        burst.len()
    );
}

/// A framed, binary `store(profile)` request.
fn store(seq: i32, uid: i32, name: &str) -> Vec<u8> {
    let mut o = TBinaryOutputProtocol::new(Vec::new(), true);
    o.write_message_begin(&TMessageIdentifier::new("store", TMessageType::Call, seq))
        .unwrap();
    o.write_struct_begin(&TStructIdentifier::new("store_args"))
        .unwrap();
    o.write_field_begin(&TFieldIdentifier::new("user", TType::Struct, 1))
        .unwrap();
    UserProfile::new(uid, name.to_owned(), String::new())
        .write_to_out_protocol(&mut o)
        .unwrap();
    o.write_field_end().unwrap();
    o.write_field_stop().unwrap();
    o.write_struct_end().unwrap();
    o.write_message_end().unwrap();
    wire(Transport::Framed, &o.transport)
}

#[test]
fn a_request_whose_client_reset_the_connection_while_it_waited_is_shed() {
    let _lock = shared_lock();
    let (handler, release) = Special::gated();
    let server = serve(handler, patient().workers(1));
    let addr = server.local_addr();
    let busy = thread::spawn(move || framed_binary(addr).slow(1).map_err(|e| e.to_string()));
    wait_for_stats(&server, "the slow call holds the only worker", |s| {
        s.busy_workers == 1
    });
    let leaving = raw(addr);
    (&leaving).write_all(&add(1, 2, 3)).unwrap();
    wait_for_stats(&server, "the add waits for the worker", |s| {
        s.queued_connections == 1
    });
    // Closed with a reset, as a client does that leaves answers unread.
    socket2::SockRef::from(&leaving)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(leaving);
    release.send(()).unwrap();
    assert_eq!(busy.join().unwrap(), Ok(1));
    wait_for_stats(&server, "every connection closed", |s| {
        s.open_connections == 0 && s.busy_workers == 0
    });
    let stats = server.stats();
    assert_eq!(stats.requests, 1, "only the slow call ran: {stats:?}");
    assert_eq!((stats.shed_requests, stats.errors), (1, 0), "{stats:?}");
}

#[test]
fn a_request_that_waited_too_long_for_a_worker_is_answered_at_once_without_running() {
    let _lock = shared_lock();
    let (handler, release) = Special::gated();
    let config = ServerConfig::default()
        .workers(1)
        .max_queue_wait(Duration::from_millis(50));
    let server = serve(handler, config);
    let addr = server.local_addr();
    let busy = thread::spawn(move || framed_binary(addr).slow(1).map_err(|e| e.to_string()));
    wait_for_stats(&server, "the slow call holds the only worker", |s| {
        s.busy_workers == 1
    });
    let mut waiting = raw(addr);
    waiting.write_all(&store(7, 5, "should not run")).unwrap();
    // Four times the bound, in the queue behind the slow call.
    thread::sleep(Duration::from_millis(200));
    release.send(()).unwrap();
    let reply = read_reply(&mut waiting, Transport::Framed, Protocol::Binary);
    assert_eq!(
        (reply.kind, reply.seq, reply.error),
        (
            TMessageType::Exception,
            7,
            Some(ApplicationErrorKind::Unknown)
        )
    );
    assert!(
        reply.message.starts_with("server overloaded: ") && reply.message.contains("did not run"),
        "{}",
        reply.message
    );
    assert_eq!(busy.join().unwrap(), Ok(1));
    assert_eq!(server.stats().shed_requests, 1);
    // The connection stays usable, and the shed request never ran.
    let mut client = framed_binary(addr);
    assert_eq!(
        client.retrieve(5).unwrap().name.as_deref(),
        Some("Test User")
    );
    waiting.write_all(&add(8, 2, 3)).unwrap();
    let reply = read_reply(&mut waiting, Transport::Framed, Protocol::Binary);
    assert_eq!((reply.seq, reply.result), (8, Some(5)));
}

#[test]
fn a_shed_request_is_counted_by_the_time_its_client_has_the_reply() {
    let _lock = shared_lock();
    // On one CPU with the server's threads (which inherit it), the reply's wake-up puts this
    // thread in place of the worker that sent it, and it reads the stats before the worker
    // has gone on: the race at its most likely.
    support::pin_to_cpu(support::current_cpu());
    let (handler, release) = Special::gated();
    let config = ServerConfig::default()
        .workers(1)
        .max_queue_wait(Duration::from_millis(5));
    let server = serve(handler, config);
    let addr = server.local_addr();
    let (go, went) = crossbeam_channel::unbounded::<()>();
    let busy = thread::spawn(move || {
        let mut client = framed_binary(addr);
        while went.recv().is_ok() {
            // On a loaded machine the slow call itself may wait too long and be shed: again.
            let mut answer = client.slow(1);
            while let Err(thrift::Error::Application(e)) = &answer {
                assert!(e.message.starts_with("server overloaded: "), "{e}");
                answer = client.slow(1);
            }
            assert_eq!(answer.unwrap(), 1);
        }
    });
    // A thread that keeps the CPU busy, as a loaded machine does: the worker then runs in
    // slices, and is often taken off the CPU as it sends.
    let spinning = Arc::new(AtomicBool::new(true));
    let spinner = thread::spawn({
        let spinning = spinning.clone();
        move || {
            while spinning.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        }
    });
    let mut waiting = raw(addr);
    // The window is the time between the reply leaving and the count: many tries to hit it.
    for trial in 1..=60 {
        go.send(()).unwrap();
        wait_for_stats(&server, "the slow call holds the only worker", |s| {
            s.busy_workers == 1
        });
        let shed_before = server.stats().shed_requests;
        waiting.write_all(&add(trial, 1, 2)).unwrap();
        wait_for_stats(&server, "the request is queued", |s| {
            s.queued_connections == 1
        });
        // Its wait in the queue, past `max_queue_wait`: the server's own clock, not injectable.
        thread::sleep(Duration::from_millis(20));
        release.send(()).unwrap();
        let reply = read_reply(&mut waiting, Transport::Framed, Protocol::Binary);
        assert_eq!((reply.kind, reply.seq), (TMessageType::Exception, trial));
        assert_eq!(
            server.stats().shed_requests,
            shed_before + 1,
            "trial {trial}"
        );
    }
    spinning.store(false, Ordering::Relaxed);
    spinner.join().unwrap();
    drop(go);
    busy.join().unwrap();
}

#[test]
fn a_request_trickling_in_while_the_workers_are_busy_still_has_its_request_timeout() {
    let _lock = shared_lock();
    let (handler, release) = Special::gated();
    let config = ServerConfig::default()
        .workers(1)
        .max_queue_wait(Duration::from_millis(5))
        .request_timeout(Duration::from_millis(200));
    let server = serve(handler, config);
    let addr = server.local_addr();
    let (go, went) = crossbeam_channel::unbounded::<()>();
    let busy = thread::spawn(move || {
        let mut client = framed_binary(addr);
        while went.recv().is_ok() {
            // On a loaded machine the slow call itself may wait too long and be shed: again.
            while let Err(thrift::Error::Application(_)) = client.slow(1) {}
        }
    });
    // Each byte of the request arrives while the only worker is busy, so the connection waits
    // in the queue past `max_queue_wait` and is looked at by the shedding path, which must
    // not restart the request's clock.
    let request = store(1, 6, &"x".repeat(500));
    let mut trickling = raw(addr);
    trickling.write_all(&request[..5]).unwrap();
    wait_for_stats(&server, "both connections wait in the poller", |s| {
        s.open_connections == 2 && s.idle_connections == 2
    });
    let began = Instant::now();
    for byte in &request[5..request.len() - 1] {
        if server.stats().open_connections < 2 || began.elapsed() > Duration::from_secs(2) {
            break;
        }
        go.send(()).unwrap();
        wait_for_stats(&server, "the slow call holds the only worker", |s| {
            s.busy_workers == 1
        });
        // Once closed, the connection takes no more bytes.
        let _ = trickling.write_all(std::slice::from_ref(byte));
        wait_for_stats(&server, "the connection is queued, or closed", |s| {
            s.queued_connections == 1 || s.open_connections < 2
        });
        // Its wait in the queue, past `max_queue_wait`: the server's own clock, not injectable.
        thread::sleep(Duration::from_millis(10));
        release.send(()).unwrap();
        wait_for_stats(&server, "every connection waits in the poller", |s| {
            s.busy_workers == 0 && s.idle_connections == s.open_connections
        });
    }
    assert!(
        server.stats().open_connections < 2,
        "a request that began {:?} ago is still open, with a request timeout of 200 ms",
        began.elapsed()
    );
    assert!(closed_by_server(&mut trickling));
    drop(go);
    busy.join().unwrap();
}

#[test]
fn a_request_whose_client_left_while_it_waited_is_not_run() {
    let _lock = shared_lock();
    let (handler, release) = Special::gated();
    let server = serve(handler, ServerConfig::default().workers(1));
    let addr = server.local_addr();
    let busy = thread::spawn(move || framed_binary(addr).slow(1).map_err(|e| e.to_string()));
    wait_for_stats(&server, "the slow call holds the only worker", |s| {
        s.busy_workers == 1
    });
    let mut leaving = raw(addr);
    leaving.write_all(&store(1, 6, "should not run")).unwrap();
    wait_for_stats(&server, "the request is queued", |s| {
        s.queued_connections == 1
    });
    // Gone before a worker is free, as a client that timed out is.
    drop(leaving);
    thread::sleep(Duration::from_millis(20));
    release.send(()).unwrap();
    assert_eq!(busy.join().unwrap(), Ok(1));
    wait_for_stats(&server, "the request is shed", |s| s.shed_requests == 1);
    let mut client = framed_binary(addr);
    assert_eq!(
        client.retrieve(6).unwrap().name.as_deref(),
        Some("Test User")
    );
}

#[test]
fn below_capacity_nothing_is_shed() {
    let _lock = shared_lock();
    // No more calls at once than workers, each of 500 on a connection that has long been open:
    // none waits for a worker, so none is shed. The one exception is a stall of the whole
    // machine past the default `max_queue_wait` (a loaded machine has them): a call shed then
    // waited that long, which its client saw.
    let max_queue_wait = Duration::from_millis(100);
    let (server, _) = calculator(ServerConfig::default().workers(4));
    let addr = server.local_addr();
    let clients: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                let mut client = framed_binary(addr);
                let mut shed = 0;
                for i in 0..500 {
                    let started = Instant::now();
                    match client.add(t, i) {
                        Ok(sum) => assert_eq!(sum, t + i),
                        Err(thrift::Error::Application(err))
                            if err.message.starts_with("server overloaded") =>
                        {
                            let took = started.elapsed();
                            assert!(took >= max_queue_wait, "shed after {took:?}: {err:?}");
                            shed += 1;
                        }
                        Err(err) => panic!("add({t}, {i}) failed: {err}"),
                    }
                }
                shed
            })
        })
        .collect();
    let shed: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let stats = server.stats();
    assert_eq!(stats.requests + shed, 2000, "{stats:?}");
    assert_eq!(stats.shed_requests, shed, "{stats:?}");
}
