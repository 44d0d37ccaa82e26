//! Properties of the request and response paths, on bounded time for CI: no input makes either
//! panic, what decoding allocates stays in proportion to the input, and valid messages come
//! through unchanged.
//!
//! The paths are driven as the fuzz targets under `fuzz/` drive them: a running server fed over
//! a socket, and the generated client reading from a socket whose peer sent the bytes.

#[path = "../idl/service.rs"]
mod service;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use blocking_thrift::{__fuzz, Protocol, ServerConfig, ThriftServer, Transport};
use proptest::prelude::*;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TInputProtocol, TOutputProtocol,
};
use thrift::server::TProcessor;

use service::calculator::{
    CalculatorSyncClient, CalculatorSyncProcessor, TCalculatorSyncClient, UserProfile,
};
use service::CalculatorService;

// ---- Counting what is allocated ----

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// Unsafe only to forward to the system allocator; the counts are plain atomics.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            // Both blocks can be live while the bytes are copied.
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The counts are process-wide, so the tests here take turns.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The most bytes `f` had allocated at once.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let result = f();
    (result, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// What decoding `input_len` bytes may allocate at most.
fn allowance(input_len: usize) -> usize {
    16 * input_len + 64 * 1024
}

// ---- The wire formats ----

const FORMATS: [(Transport, Protocol); 4] = [
    (Transport::Framed, Protocol::Binary),
    (Transport::Buffered, Protocol::Binary),
    (Transport::Framed, Protocol::Compact),
    (Transport::Buffered, Protocol::Compact),
];

const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Collects what is written to it, one message per flush.
#[derive(Clone, Default)]
struct Shared {
    pending: Rc<RefCell<Vec<u8>>>,
    flushed: Rc<RefCell<Vec<Vec<u8>>>>,
}

impl Shared {
    fn message(&self) -> Vec<u8> {
        self.flushed.borrow().concat()
    }
}

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.pending.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let message = std::mem::take(&mut *self.pending.borrow_mut());
        self.flushed.borrow_mut().push(message);
        Ok(())
    }
}

fn thrift_output(protocol: Protocol, to: Shared) -> Box<dyn TOutputProtocol> {
    match protocol {
        Protocol::Binary => Box::new(TBinaryOutputProtocol::new(to, true)),
        Protocol::Compact => Box::new(TCompactOutputProtocol::new(to)),
    }
}

fn thrift_input(protocol: Protocol, from: &[u8]) -> Box<dyn TInputProtocol + '_> {
    match protocol {
        Protocol::Binary => Box::new(TBinaryInputProtocol::new(from, true)),
        Protocol::Compact => Box::new(TCompactInputProtocol::new(from)),
    }
}

fn frame(transport: Transport, message: &[u8]) -> Vec<u8> {
    match transport {
        Transport::Framed if !message.is_empty() => {
            let mut framed = (message.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(message);
            framed
        }
        _ => message.to_vec(),
    }
}

/// Some arguments for every method.
#[derive(Clone, Debug)]
struct Calls {
    a: i32,
    b: i32,
    data: Vec<u8>,
    uid: i32,
    profile: (i32, String, String),
    fail: bool,
}

fn calls() -> impl Strategy<Value = Calls> {
    (
        any::<i32>(),
        any::<i32>(),
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<i32>(),
        (any::<i32>(), ".{0,20}", ".{0,40}"),
        any::<bool>(),
    )
        .prop_map(|(a, b, data, uid, profile, fail)| Calls {
            a,
            b,
            data,
            uid,
            profile,
            fail,
        })
}

/// Makes every call of `calls` on `client`, in the order the fuzz target uses.
fn call_all<C: TCalculatorSyncClient>(client: &mut C, calls: &Calls) -> Vec<String> {
    let (uid, name, blurb) = calls.profile.clone();
    vec![
        format!("{:?}", client.ping().map_err(|e| e.to_string())),
        format!(
            "{:?}",
            client.add(calls.a, calls.b).map_err(|e| e.to_string())
        ),
        format!(
            "{:?}",
            client.echo(calls.data.clone()).map_err(|e| e.to_string())
        ),
        format!("{:?}", client.slow(0).map_err(|e| e.to_string())),
        format!(
            "{:?}",
            client.retrieve(calls.uid).map_err(|e| e.to_string())
        ),
        format!(
            "{:?}",
            client
                .store(UserProfile::new(uid, name, blurb))
                .map_err(|e| e.to_string())
        ),
        format!("{:?}", client.whoami(calls.fail).map_err(|e| e.to_string())),
        format!("{:?}", client.zip().map_err(|e| e.to_string())),
    ]
}

/// The request each call writes and the response the reference service gives, encoded by the
/// `thrift` crate, one per call; zip's response is empty.
fn exchange(protocol: Protocol, calls: &Calls) -> Vec<(Vec<u8>, Vec<u8>)> {
    let sent = Shared::default();
    let mut client = CalculatorSyncClient::new(
        thrift_input(protocol, &[]),
        thrift_output(protocol, sent.clone()),
    );
    // Each call fails for want of a response, after its request is flushed.
    call_all(&mut client, calls);
    let requests = std::mem::take(&mut *sent.flushed.borrow_mut());
    let processor = CalculatorSyncProcessor::new(CalculatorService::new("reference"));
    requests
        .into_iter()
        .map(|request| {
            let answer = Shared::default();
            processor
                .process(
                    &mut *thrift_input(protocol, &request),
                    &mut *thrift_output(protocol, answer.clone()),
                )
                .unwrap();
            let response = answer.message();
            (request, response)
        })
        .collect()
}

// ---- The two paths ----

/// One server per wire format, with the default limits, in the order of [`FORMATS`].
fn servers() -> &'static [ThriftServer] {
    static SERVERS: OnceLock<Vec<ThriftServer>> = OnceLock::new();
    SERVERS.get_or_init(|| {
        FORMATS
            .iter()
            .map(|&(transport, protocol)| {
                // No request is shed for waiting, even when the machine stalls.
                let config = ServerConfig::default()
                    .max_queue_wait(Duration::MAX)
                    .workers(1)
                    .transport(transport)
                    .protocol(protocol);
                let processor = CalculatorSyncProcessor::new(
                    CalculatorService::new("reference").never_sleeping(),
                );
                let server = ThriftServer::bind("127.0.0.1:0", processor, config).unwrap();
                server.start().unwrap();
                server
            })
            .collect()
    })
}

/// Sends `bytes` to the server of format `format`, closes the sending side and returns all it
/// answered until it closed the connection.
fn to_server(format: usize, bytes: &[u8]) -> Vec<u8> {
    let server = &servers()[format];
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    if let Err(err) = stream.read_to_end(&mut answer) {
        assert!(
            !matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the server neither answered nor closed the connection"
        );
    }
    answer
}

/// Sends `bytes` to the server of format `format` and reads `expected` bytes of answers, or
/// what comes before the server closes the connection. Unlike [`to_server`] it keeps its side
/// open: the server does not run requests whose client closed the connection while they
/// waited for a worker, and a half-closed connection reads as closed.
fn answers_from_server(format: usize, bytes: &[u8], expected: usize) -> Vec<u8> {
    let server = &servers()[format];
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut answer = vec![0; expected];
    let mut got = 0;
    while got < expected {
        match stream.read(&mut answer[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) => panic!("the server neither answered nor closed the connection: {err}"),
        }
    }
    answer.truncate(got);
    answer
}

/// Feeds `bytes` to both paths in format `format`, checking that what each allocates stays
/// within the allowance.
fn both_paths(format: usize, bytes: &[u8]) -> Result<(), TestCaseError> {
    let (transport, protocol) = FORMATS[format];
    let ((), decoders) = peak_of(|| {
        let _ = __fuzz::read_message(protocol, bytes);
        let _ = __fuzz::skip_message(protocol, bytes);
    });
    prop_assert!(
        decoders <= allowance(bytes.len()),
        "the decoders allocated {decoders} bytes for {} bytes of input",
        bytes.len()
    );
    let client = __fuzz::with_client(transport, protocol, MAX_MESSAGE_SIZE, bytes, |i, o| {
        peak_of(|| call_all(&mut CalculatorSyncClient::new(i, o), &dummy_calls())).1
    })
    .unwrap();
    prop_assert!(
        client <= allowance(bytes.len()),
        "the client allocated {client} bytes for a {}-byte response",
        bytes.len()
    );
    servers();
    let (_, server) = peak_of(|| to_server(format, bytes));
    prop_assert!(
        server <= allowance(bytes.len()),
        "the server allocated {server} bytes for a {}-byte request",
        bytes.len()
    );
    Ok(())
}

fn dummy_calls() -> Calls {
    Calls {
        a: 1,
        b: 2,
        data: vec![1, 2, 3],
        uid: 7,
        profile: (1, "a".into(), "b".into()),
        fail: false,
    }
}

fn no_panics_so_far() {
    for server in servers() {
        assert_eq!(server.stats().panics, 0, "a request made the server panic");
    }
}

// ---- Mutations of valid messages ----

#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (
            at,
            prop_oneof![Just(0u8), Just(0x7F), Just(0x80), Just(0xFF), any::<u8>()]
        )
            .prop_map(|(i, b)| Mutation::Set(i, b)),
        (at, 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        (at, proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (at, 1usize..8).prop_map(|(i, n)| Mutation::Remove(i, n)),
        at.prop_map(Mutation::Truncate),
        (at, 1usize..16).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match mutation {
        Mutation::Set(i, b) => bytes[i % len] = *b,
        Mutation::Flip(i, bit) => bytes[i % len] ^= 1 << bit,
        Mutation::Insert(i, b) => {
            let at = i % (len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let at = i % len;
            bytes.drain(at..(at + n).min(len));
        }
        Mutation::Truncate(i) => bytes.truncate(i % len),
        Mutation::Duplicate(i, n) => {
            let at = i % len;
            let part = bytes[at..(at + n).min(len)].to_vec();
            bytes.splice(at..at, part);
        }
    }
}

// ---- The properties ----

// Each property runs all its cases in its turn, generating them included: allocations are
// counted process-wide, so a property generating its next case on another thread would be
// counted against the case being measured.

#[test]
fn arbitrary_bytes_never_panic_and_stay_within_the_allowance() {
    let _turn = one_at_a_time();
    check_arbitrary_bytes_never_panic_and_stay_within_the_allowance();
}

#[test]
fn mutated_messages_never_panic_and_stay_within_the_allowance() {
    let _turn = one_at_a_time();
    check_mutated_messages_never_panic_and_stay_within_the_allowance();
}

/// The server answers valid requests as the reference service does, byte for byte; the
/// client reads the reference service's responses as the thrift crate's own client does.
#[test]
fn valid_messages_come_through_unchanged() {
    let _turn = one_at_a_time();
    check_valid_messages_come_through_unchanged();
}

/// `cases` cases, a few seconds' work in all on CI; failures are printed, not saved to files.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The cases the decoders exist for: a few bytes that declare a huge length or count.
#[test]
fn short_hostile_messages_allocate_little() {
    let _turn = one_at_a_time();
    let mut hostile: Vec<(usize, Vec<u8>)> = Vec::new();
    // A 16 MiB frame whose reply names a method of 16 MiB less 16 bytes, then nothing.
    let framed = vec![
        0x00, 0xFF, 0xFF, 0xFF, 0x80, 0x01, 0x00, 0x02, 0x00, 0xFF, 0xFF, 0xEF,
    ];
    hostile.push((0, framed));
    // Unframed, a request whose method name claims nearly all of the limit.
    hostile.push((1, vec![0x80, 0x01, 0x00, 0x01, 0x00, 0xFF, 0xFF, 0xEF]));
    // A compact call whose argument is a list claiming 100,000,000 i64s.
    let list = vec![
        0x82, 0x21, 0x01, 0x03, b'a', b'd', b'd', 0x19, 0xF6, 0x80, 0xC2, 0xD7, 0x2F,
    ];
    hostile.push((2, [&[0, 0, 0, list.len() as u8][..], &list].concat()));
    hostile.push((3, list));
    for (format, bytes) in hostile {
        both_paths(format, &bytes).unwrap();
    }
    no_panics_so_far();
}

proptest! {
    #![proptest_config(config(1000))]

    fn check_arbitrary_bytes_never_panic_and_stay_within_the_allowance(
        format in 0..4usize,
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        both_paths(format, &bytes)?;
        no_panics_so_far();
    }

    fn check_mutated_messages_never_panic_and_stay_within_the_allowance(
        format in 0..4usize,
        calls in calls(),
        requests in any::<bool>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let (transport, protocol) = FORMATS[format];
        let mut bytes = Vec::new();
        for (request, response) in exchange(protocol, &calls) {
            bytes.extend(frame(transport, if requests { &request } else { &response }));
        }
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        both_paths(format, &bytes)?;
        no_panics_so_far();
    }
}

proptest! {
    #![proptest_config(config(200))]

    fn check_valid_messages_come_through_unchanged(format in 0..4usize, calls in calls()) {
        let (transport, protocol) = FORMATS[format];
        let exchange = exchange(protocol, &calls);

        // Server: every request at once, on one connection. retrieve is left out: its answer
        // depends on what earlier cases stored on the same server.
        let mut requests = Vec::new();
        let mut expected = Vec::new();
        for (i, (request, response)) in exchange.iter().enumerate() {
            if i != RETRIEVE {
                requests.extend(frame(transport, request));
                expected.extend(frame(transport, response));
            }
        }
        prop_assert_eq!(answers_from_server(format, &requests, expected.len()), expected);
        no_panics_so_far();

        // Client: the reference responses through the crate's reader and decoders, and through
        // the thrift crate's reader.
        let mut framed = Vec::new();
        let mut plain = Vec::new();
        for (_, response) in &exchange {
            framed.extend(frame(transport, response));
            plain.extend_from_slice(response);
        }
        let got = __fuzz::with_client(transport, protocol, MAX_MESSAGE_SIZE, &framed, |i, o| {
            call_all(&mut CalculatorSyncClient::new(i, o), &calls)
        })
        .unwrap();
        let mut reference = CalculatorSyncClient::new(
            thrift_input(protocol, &plain),
            thrift_output(protocol, Shared::default()),
        );
        prop_assert_eq!(&got, &call_all(&mut reference, &calls));
        prop_assert_eq!(
            &got[1],
            &format!("{:?}", Ok::<i32, String>(calls.a.wrapping_add(calls.b)))
        );
        prop_assert_eq!(&got[2], &format!("{:?}", Ok::<Vec<u8>, String>(calls.data.clone())));
    }
}

/// Where retrieve is among the calls.
const RETRIEVE: usize = 4;
