//! ThriftServer against raw sockets writing exact hostile byte sequences: each costs only its
//! own connection (or gets an error reply), the server counts it, nothing panics or aborts, and
//! other clients, old and new, keep getting their own answers.
//!
//! tests/server.rs already covers a frame over the size limit, a negative frame length, plain
//! garbage, a truncated frame and clients leaving mid-request; these go further.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use blocking_thrift::{
    ClientConfig, Protocol, ServerConfig, ThriftClient, ThriftServer, Transport,
};
use support::calculator::{CalculatorSyncClient, TCalculatorSyncClient};
use support::server::{
    bin_add, bin_call, bin_field, bin_string, exclusive_lock, frame, raw, read_reply, shared_lock,
    try_read_reply, wait_for_stats, wire, PATIENCE,
};
use support::{closed_within, resident_bytes, start_server, wait_until, Calc};
use thrift::protocol::TMessageType;
use thrift::ApplicationErrorKind;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A started server with the wire format it speaks.
struct Served {
    server: ThriftServer,
    transport: Transport,
    protocol: Protocol,
}

fn serve(transport: Transport, protocol: Protocol) -> Served {
    let _ = env_logger::builder().is_test(true).try_init();
    let config = ServerConfig::default()
        .workers(2)
        .transport(transport)
        .protocol(protocol);
    Served {
        server: start_server(config).0,
        transport,
        protocol,
    }
}

/// A well-behaved client of this crate.
fn good_client(
    server: &ThriftServer,
    transport: Transport,
    protocol: Protocol,
) -> ThriftClient<Calc> {
    ThriftClient::new(
        &server.local_addr().to_string(),
        CalculatorSyncClient::new,
        ClientConfig::default()
            .transport(transport)
            .protocol(protocol)
            .pool_size(1)
            .connect_timeout(PATIENCE)
            .pool_timeout(PATIENCE)
            .read_timeout(PATIENCE),
    )
}

// Hand-made encodings, byte by byte, so that any of them can be made wrong; the binary
// protocol's basics are in support.

const BIN_STRING: u8 = 11;
const BIN_STRUCT: u8 = 12;
const BIN_LIST: u8 = 15;

/// Compact varint.
fn varint(mut n: u64) -> Vec<u8> {
    let mut b = Vec::new();
    loop {
        if n < 0x80 {
            b.push(n as u8);
            return b;
        }
        b.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
}

fn zigzag(n: i32) -> u64 {
    ((n << 1) ^ (n >> 31)) as u32 as u64
}

/// Compact: a call's message header.
fn compact_call(name: &str, seq: i32) -> Vec<u8> {
    let mut b = vec![0x82, 0x21];
    b.extend(varint(seq as u32 as u64));
    b.extend(varint(name.len() as u64));
    b.extend(name.as_bytes());
    b
}

/// Compact: `add(a, b)`, whole.
fn compact_add(seq: i32, a: i32, b: i32) -> Vec<u8> {
    let mut m = compact_call("add", seq);
    m.push(0x15);
    m.extend(varint(zigzag(a)));
    m.push(0x15);
    m.extend(varint(zigzag(b)));
    m.push(0);
    m
}

const COMPACT_BINARY: u8 = 8;
const COMPACT_LIST: u8 = 9;
const COMPACT_STRUCT: u8 = 12;

/// `add(a, b)` in the server's wire format.
fn add_request(transport: Transport, protocol: Protocol, seq: i32, a: i32, b: i32) -> Vec<u8> {
    let message = match protocol {
        Protocol::Binary => bin_add(seq, a, b),
        Protocol::Compact => compact_add(seq, a, b),
    };
    wire(transport, &message)
}

/// What the server must do with a hostile request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Close the connection (it counts as an error).
    Closed,
    /// Answer with a `TApplicationException` carrying the request's sequence id. On a framed
    /// connection the frame's end is known, so the connection stays usable and nothing counts
    /// as an error; on a buffered one the next request's start is lost, so it is then closed
    /// (and counts).
    ErrorReply,
}

/// Sends `bytes` (a request with sequence id 7, if it has one) on a new connection of
/// `server` and asserts `expect`; meanwhile a client connected before, and one connected
/// after, get their own answers.
fn assert_hostile(served: &Served, what: &str, bytes: &[u8], expect: Expect) {
    let Served {
        server,
        transport,
        protocol,
    } = served;
    let (transport, protocol) = (*transport, *protocol);
    let what = format!("{what} ({transport:?}/{protocol:?})");
    let bystander = good_client(server, transport, protocol);
    assert_eq!(bystander.call(|c| c.add(1, 1)).unwrap(), 2, "{what}");
    let before = server.stats();

    let mut hostile = raw(server.local_addr());
    // The server may close before it has read everything; that is fine.
    let _ = hostile.write_all(bytes);
    match expect {
        Expect::Closed => {
            assert!(
                closed_within(&mut hostile, PATIENCE),
                "{what}: the connection was left open"
            );
            wait_for_stats(server, &what, |s| s.errors > before.errors);
        }
        Expect::ErrorReply => {
            let reply = try_read_reply(&mut hostile, transport, protocol)
                .unwrap_or_else(|err| panic!("{what}: no error reply: {err}"));
            assert_eq!(reply.kind, TMessageType::Exception, "{what}: {reply:?}");
            assert_eq!(reply.seq, 7, "{what}: {reply:?}");
            // The generated processor answers a request it cannot decode with UNKNOWN and the
            // decoder's error in the message.
            let kind = reply.error.expect("an application error");
            assert_eq!(kind, ApplicationErrorKind::Unknown, "{what}: {reply:?}");
            assert!(!reply.message.is_empty(), "{what}: {reply:?}");
            match transport {
                Transport::Framed => {
                    let next = add_request(transport, protocol, 8, 20, 22);
                    hostile.write_all(&next).unwrap();
                    let reply = read_reply(&mut hostile, transport, protocol);
                    assert_eq!((reply.seq, reply.result), (8, Some(42)), "{what}");
                    assert_eq!(server.stats().errors, before.errors, "{what}");
                }
                Transport::Buffered => {
                    assert!(
                        closed_within(&mut hostile, PATIENCE),
                        "{what}: the connection was left open"
                    );
                    wait_for_stats(server, &what, |s| s.errors > before.errors);
                }
            }
        }
    }
    assert_eq!(server.stats().panics, 0, "{what}");
    assert_eq!(
        bystander.call(|c| c.add(2, 3)).unwrap(),
        5,
        "{what}: a bystander's call"
    );
    assert_eq!(
        bystander.stats().connections_open,
        1,
        "{what}: the bystander lost its connection"
    );
    let fresh = good_client(server, transport, protocol);
    assert_eq!(
        fresh.call(|c| c.add(40, 2)).unwrap(),
        42,
        "{what}: a new client's call"
    );
    bystander.close();
    fresh.close();
}

const TRANSPORTS: [Transport; 2] = [Transport::Framed, Transport::Buffered];

// ---------------------------------------------------------------------------------------------
// Sizes that claim more than the message holds
// ---------------------------------------------------------------------------------------------

/// A compact list header: `list<i64>` of 100,000,000 elements.
const HUNDRED_MILLION_I64S: [u8; 5] = [0xf6, 0x80, 0xc2, 0xd7, 0x2f];

#[test]
fn a_buffered_client_that_does_not_read_the_reply_before_its_close_holds_no_worker() {
    let _lock = shared_lock();
    // One worker, and a request timeout no test waits for.
    let config = ServerConfig::default()
        .workers(1)
        .transport(Transport::Buffered)
        .max_queue_wait(Duration::MAX)
        .request_timeout(Duration::from_secs(600));
    let (server, _) = start_server(config);
    let addr = server.local_addr();
    // An unknown method with a 12 MB name, whose reply repeats it, and arguments that cannot
    // be decoded: the reply is sent, then the connection closed, since where the next request
    // would start is lost. Its client reads none of it.
    let name = "x".repeat(12 << 20);
    let mut request = bin_call(&name, 1);
    request.extend([0x7f, 0, 1, 0, 0, 0, 0, 0]);
    let hostile = raw(addr);
    {
        let mut writer = hostile.try_clone().unwrap();
        thread::spawn(move || writer.write_all(&request))
            .join()
            .unwrap()
            .unwrap();
    }
    wait_for_stats(&server, "the reply waiting for its client", |s| {
        s.requests == 1 && s.busy_workers == 0 && s.waiting_bytes > 1 << 20
    });
    // Others are served meanwhile.
    let mut fresh = raw(addr);
    fresh.write_all(&bin_add(2, 40, 2)).unwrap();
    let reply = read_reply(&mut fresh, Transport::Buffered, Protocol::Binary);
    assert_eq!(reply.result, Some(42));
    // The hostile client, reading at last, gets its whole reply, then the close.
    let mut rest = Vec::new();
    let mut hostile = hostile;
    hostile.set_read_timeout(Some(PATIENCE)).unwrap();
    hostile.read_to_end(&mut rest).unwrap();
    assert!(rest.len() > 12 << 20, "{} bytes", rest.len());
}

#[test]
fn a_compact_list_header_claiming_100_million_elements_does_not_abort() {
    let _lock = shared_lock();
    assert_eq!(varint(100_000_000), HUNDRED_MILLION_I64S[1..]);
    let framed = serve(Transport::Framed, Protocol::Compact);
    // Alone in a frame, where a message should start.
    assert_hostile(
        &framed,
        "a list header as a message",
        &frame(&HUNDRED_MILLION_I64S),
        Expect::Closed,
    );
    for transport in TRANSPORTS {
        let server = serve(transport, Protocol::Compact);
        // As the value of an unknown argument, which the server has to skip.
        let mut m = compact_call("echo", 7);
        m.push(0x20 | COMPACT_LIST);
        m.extend(HUNDRED_MILLION_I64S);
        m.extend([0u8; 16]);
        assert_hostile(
            &server,
            "an unknown list argument of 100M elements",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
        // As a list of lists, inside a struct inside the arguments.
        let mut m = compact_call("store", 7);
        m.push(0x10 | COMPACT_STRUCT);
        m.push(0x40 | COMPACT_LIST);
        m.push(0xf9);
        m.extend(varint(100_000_000));
        m.extend(HUNDRED_MILLION_I64S);
        assert_hostile(
            &server,
            "a list of 100M lists in a struct",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
    }
}

#[test]
fn strings_and_binaries_claiming_more_than_the_request_holds_are_refused() {
    let _lock = shared_lock();
    for transport in TRANSPORTS {
        // Compact: echo's data claims 100 MB; store's name claims 2 GB - 1.
        let server = serve(transport, Protocol::Compact);
        let mut m = compact_call("echo", 7);
        m.push(0x10 | COMPACT_BINARY);
        m.extend(varint(100_000_000));
        m.extend(b"only this");
        assert_hostile(
            &server,
            "echo of 100 MB",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
        let mut m = compact_call("store", 7);
        m.push(0x10 | COMPACT_STRUCT);
        m.push(0x20 | COMPACT_BINARY);
        m.extend(varint(i32::MAX as u64));
        m.extend(b"ab");
        assert_hostile(
            &server,
            "a profile name of 2 GB",
            &wire(transport, &m),
            Expect::ErrorReply,
        );

        // Binary: the same, and a method name of 2 GB - 1.
        let server = serve(transport, Protocol::Binary);
        let mut m = bin_call("echo", 7);
        m.extend(bin_field(BIN_STRING, 1));
        m.extend(100_000_000i32.to_be_bytes());
        m.extend(b"only this");
        assert_hostile(
            &server,
            "echo of 100 MB",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
        let mut m = vec![0x80, 0x01, 0x00, 0x01];
        m.extend(i32::MAX.to_be_bytes());
        m.extend(b"add");
        assert_hostile(
            &server,
            "a method name of 2 GB",
            &wire(transport, &m),
            Expect::Closed,
        );
    }
}

#[test]
fn negative_lengths_are_refused() {
    let _lock = shared_lock();
    for transport in TRANSPORTS {
        let server = serve(transport, Protocol::Binary);
        // The method name's length.
        let mut m = vec![0x80, 0x01, 0x00, 0x01];
        m.extend((-1i32).to_be_bytes());
        m.extend(b"add");
        m.extend(7i32.to_be_bytes());
        assert_hostile(
            &server,
            "a method name of length -1",
            &wire(transport, &m),
            Expect::Closed,
        );
        // An argument's.
        let mut m = bin_call("echo", 7);
        m.extend(bin_field(BIN_STRING, 1));
        m.extend((-1i32).to_be_bytes());
        m.push(0);
        assert_hostile(
            &server,
            "echo's data of length -1",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
        // A list's element count, in an argument to be skipped.
        let mut m = bin_call("add", 7);
        m.extend(bin_field(BIN_LIST, 9));
        m.push(8);
        m.extend(i32::MIN.to_be_bytes());
        m.push(0);
        assert_hostile(
            &server,
            "a list of -2^31 elements",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed encodings
// ---------------------------------------------------------------------------------------------

#[test]
fn over_long_varints_are_refused() {
    let _lock = shared_lock();
    let eleven = [0xffu8; 11];
    for transport in TRANSPORTS {
        let server = serve(transport, Protocol::Compact);
        // In the header: the sequence id.
        let mut m = vec![0x82, 0x21];
        m.extend(eleven);
        m.push(0x01);
        m.extend(varint(3));
        m.extend(b"add");
        assert_hostile(
            &server,
            "a sequence id of 12 varint bytes",
            &wire(transport, &m),
            Expect::Closed,
        );
        // In an argument: add's first number.
        let mut m = compact_call("add", 7);
        m.push(0x15);
        m.extend(eleven);
        m.push(0x01);
        m.push(0);
        assert_hostile(
            &server,
            "an i32 of 12 varint bytes",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
    }
}

#[test]
fn unknown_and_stop_element_types_are_refused() {
    let _lock = shared_lock();
    for transport in TRANSPORTS {
        let server = serve(transport, Protocol::Binary);
        // A field of a type that does not exist.
        let mut m = bin_call("add", 7);
        m.extend(bin_field(0x11, 3));
        m.extend([0u8; 8]);
        assert_hostile(
            &server,
            "a field of type 0x11",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
        // A list whose elements are STOP, in an unknown field.
        let mut m = bin_call("add", 7);
        m.extend(bin_field(BIN_LIST, 3));
        m.push(0);
        m.extend(3i32.to_be_bytes());
        m.push(0);
        assert_hostile(
            &server,
            "a list of STOP elements",
            &wire(transport, &m),
            Expect::ErrorReply,
        );

        let server = serve(transport, Protocol::Compact);
        let mut m = compact_call("add", 7);
        m.push(0x3e);
        m.extend([0u8; 8]);
        assert_hostile(
            &server,
            "a field of type 0x0e",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
        let mut m = compact_call("add", 7);
        m.push(0x30 | COMPACT_LIST);
        m.push(0x30);
        m.push(0);
        assert_hostile(
            &server,
            "a list of STOP elements",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
    }
}

#[test]
fn a_bad_protocol_version_is_refused() {
    let _lock = shared_lock();
    for transport in TRANSPORTS {
        let server = serve(transport, Protocol::Binary);
        let mut m = bin_add(7, 1, 2);
        m[..4].copy_from_slice(&[0x80, 0x02, 0x00, 0x00]);
        assert_hostile(
            &server,
            "binary version 2",
            &wire(transport, &m),
            Expect::Closed,
        );
        // A compact request to a binary server.
        assert_hostile(
            &server,
            "a compact request",
            &wire(transport, &compact_add(7, 1, 2)),
            Expect::Closed,
        );

        let server = serve(transport, Protocol::Compact);
        let mut m = compact_add(7, 1, 2);
        m[0] = 0x83;
        assert_hostile(
            &server,
            "compact protocol id 0x83",
            &wire(transport, &m),
            Expect::Closed,
        );
        let mut m = compact_add(7, 1, 2);
        m[1] = 0x22;
        assert_hostile(
            &server,
            "compact version 2",
            &wire(transport, &m),
            Expect::Closed,
        );
        assert_hostile(
            &server,
            "a binary request",
            &wire(transport, &bin_add(7, 1, 2)),
            Expect::Closed,
        );
    }
}

#[test]
fn a_request_in_the_wrong_transport_is_refused() {
    let _lock = shared_lock();
    let framed = serve(Transport::Framed, Protocol::Binary);
    // An unframed binary call: "80 01 00 01" read as a length is negative.
    assert_hostile(
        &framed,
        "an unframed binary call",
        &bin_add(7, 1, 2),
        Expect::Closed,
    );
    // An old-style (non-strict) binary call starts with the name's length: a frame of 3
    // bytes holding "add", which is not a message.
    let mut m = bin_string(b"add");
    m.extend([1, 0, 0, 0, 7, 0]);
    assert_hostile(&framed, "a non-strict call", &m, Expect::Closed);
    // A length just under 2 GB.
    let mut m = i32::MAX.to_be_bytes().to_vec();
    m.extend(bin_add(7, 1, 2));
    assert_hostile(&framed, "a frame of 2 GB - 1", &m, Expect::Closed);
    // An unframed compact call to a framed compact server: 0x8221... is negative too.
    let framed_compact = serve(Transport::Framed, Protocol::Compact);
    assert_hostile(
        &framed_compact,
        "an unframed compact call",
        &compact_add(7, 1, 2),
        Expect::Closed,
    );

    // A framed call to a buffered server: the frame length reads as a non-strict message
    // header, which the strict server refuses.
    let buffered = serve(Transport::Buffered, Protocol::Binary);
    assert_hostile(
        &buffered,
        "a framed binary call",
        &frame(&bin_add(7, 1, 2)),
        Expect::Closed,
    );
}

#[test]
fn invalid_utf8_is_refused() {
    let _lock = shared_lock();
    for transport in TRANSPORTS {
        let server = serve(transport, Protocol::Binary);
        // store(UserProfile { uid: 1, name: ff fe })
        let mut m = bin_call("store", 7);
        m.extend(bin_field(BIN_STRUCT, 1));
        m.extend(bin_field(8, 1));
        m.extend(1i32.to_be_bytes());
        m.extend(bin_field(BIN_STRING, 2));
        m.extend(bin_string(&[0xff, 0xfe]));
        m.extend([0, 0]);
        assert_hostile(
            &server,
            "a profile name of ff fe",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
        // The method name itself.
        let mut m = vec![0x80, 0x01, 0x00, 0x01];
        m.extend(bin_string(&[0xff, 0xfe, 0x41]));
        m.extend(7i32.to_be_bytes());
        m.push(0);
        assert_hostile(
            &server,
            "a method name of ff fe 41",
            &wire(transport, &m),
            Expect::Closed,
        );

        let server = serve(transport, Protocol::Compact);
        let mut m = compact_call("store", 7);
        m.push(0x10 | COMPACT_STRUCT);
        m.push(0x20 | COMPACT_BINARY);
        m.extend(varint(2));
        m.extend([0xff, 0xfe]);
        m.extend([0, 0]);
        assert_hostile(
            &server,
            "a profile name of ff fe",
            &wire(transport, &m),
            Expect::ErrorReply,
        );
    }
}

/// Encodes a call with sequence id `seq` nesting values `depth` deep.
type Nested = fn(i32, usize) -> Vec<u8>;

/// Binary: `add(1, 2)` with an unknown argument holding structs nested `depth` deep.
fn bin_nested_structs(seq: i32, depth: usize) -> Vec<u8> {
    let mut m = bin_call("add", seq);
    for _ in 0..depth {
        m.extend(bin_field(BIN_STRUCT, 9));
    }
    m.extend(vec![0u8; depth]);
    bin_add_arguments(m)
}

/// Binary: `add(1, 2)` with an unknown argument holding lists of lists `depth` deep.
fn bin_nested_lists(seq: i32, depth: usize) -> Vec<u8> {
    let mut m = bin_call("add", seq);
    m.extend(bin_field(BIN_LIST, 9));
    for _ in 1..depth {
        m.push(BIN_LIST);
        m.extend(1i32.to_be_bytes());
    }
    m.push(8);
    m.extend(0i32.to_be_bytes());
    bin_add_arguments(m)
}

/// Ends the arguments of `add` begun in `m` with `num1 = 1, num2 = 2`.
fn bin_add_arguments(mut m: Vec<u8>) -> Vec<u8> {
    m.extend(bin_field(8, 1));
    m.extend(1i32.to_be_bytes());
    m.extend(bin_field(8, 2));
    m.extend(2i32.to_be_bytes());
    m.push(0);
    m
}

/// Compact: `add(1, 2)` and then an unknown argument (id 3) of structs nested `depth` deep.
fn compact_nested_structs(seq: i32, depth: usize) -> Vec<u8> {
    let mut m = compact_add(seq, 1, 2);
    m.pop();
    m.extend(vec![0x10 | COMPACT_STRUCT; depth]);
    m.extend(vec![0u8; depth + 1]);
    m
}

/// Compact: `add(1, 2)` and then an unknown argument (id 3) of lists of lists `depth` deep.
fn compact_nested_lists(seq: i32, depth: usize) -> Vec<u8> {
    let mut m = compact_add(seq, 1, 2);
    m.pop();
    m.push(0x10 | COMPACT_LIST);
    m.extend(vec![0x10 | COMPACT_LIST; depth - 1]);
    m.push(0x05);
    m.push(0);
    m
}

#[test]
fn nesting_over_the_limit_is_refused() {
    let _lock = shared_lock();
    for transport in TRANSPORTS {
        for protocol in [Protocol::Binary, Protocol::Compact] {
            let served = serve(transport, protocol);
            let (structs, lists): (Nested, Nested) = match protocol {
                Protocol::Binary => (bin_nested_structs, bin_nested_lists),
                Protocol::Compact => (compact_nested_structs, compact_nested_lists),
            };
            for depth in [100, 100_000] {
                let what = format!("structs {depth} deep");
                let bytes = wire(transport, &structs(7, depth));
                assert_hostile(&served, &what, &bytes, Expect::ErrorReply);
                let what = format!("lists {depth} deep");
                let bytes = wire(transport, &lists(7, depth));
                assert_hostile(&served, &what, &bytes, Expect::ErrorReply);
            }
            // Within the limit, the same shapes are skipped and the call is answered.
            let mut stream = raw(served.server.local_addr());
            for (seq, m) in [(1, structs(1, 20)), (2, lists(2, 20))] {
                stream.write_all(&wire(transport, &m)).unwrap();
                let reply = read_reply(&mut stream, transport, protocol);
                assert_eq!(
                    (reply.seq, reply.result),
                    (seq, Some(3)),
                    "{transport:?}/{protocol:?}: {reply:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Unknown methods
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unknown_method_with_nested_arguments_leaves_the_connection_usable() {
    // tests/server.rs calls an unknown method with two i32 arguments; here the arguments the
    // server has to skip are strings, lists of structs and maps, and the next call follows in
    // the same segment.
    let _lock = shared_lock();
    for transport in TRANSPORTS {
        let served = serve(transport, Protocol::Binary);
        let server = &served.server;
        let mut m = bin_call("nosuch", 7);
        m.extend(bin_field(BIN_STRING, 1));
        m.extend(bin_string(b"skip me"));
        m.extend(bin_field(BIN_LIST, 2));
        m.push(BIN_STRUCT);
        m.extend(2i32.to_be_bytes());
        for _ in 0..2 {
            m.extend(bin_field(BIN_STRING, 1));
            m.extend(bin_string(&[0xff; 3]));
            m.push(0);
        }
        m.extend(bin_field(13, 3));
        m.extend([8, BIN_STRING]);
        m.extend(1i32.to_be_bytes());
        m.extend(5i32.to_be_bytes());
        m.extend(bin_string(b"five"));
        m.push(0);
        let mut bytes = wire(transport, &m);
        bytes.extend(wire(transport, &bin_add(8, 20, 22)));

        let before = server.stats();
        let mut stream = raw(server.local_addr());
        stream.write_all(&bytes).unwrap();
        let reply = read_reply(&mut stream, transport, Protocol::Binary);
        assert_eq!(reply.kind, TMessageType::Exception, "{transport:?}");
        assert_eq!(reply.seq, 7);
        assert_eq!(reply.error, Some(ApplicationErrorKind::UnknownMethod));
        assert!(reply.message.contains("nosuch"), "{}", reply.message);
        let reply = read_reply(&mut stream, transport, Protocol::Binary);
        assert_eq!((reply.seq, reply.result), (8, Some(42)), "{transport:?}");
        // And again, on the same connection.
        stream
            .write_all(&add_request(transport, Protocol::Binary, 9, 1, 2))
            .unwrap();
        let reply = read_reply(&mut stream, transport, Protocol::Binary);
        assert_eq!((reply.seq, reply.result), (9, Some(3)), "{transport:?}");
        assert_eq!(server.stats().errors, before.errors, "{transport:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

#[test]
fn three_hundred_connections_declaring_16_mib_frames_cost_little_memory() {
    const CONNECTIONS: usize = 300;
    const DECLARED: i32 = 16 * 1024 * 1024;
    let _lock = exclusive_lock();
    let config = ServerConfig::default()
        .workers(32)
        .request_timeout(Duration::from_millis(300));
    let (server, _) = start_server(config);
    let before = resident_bytes();
    let mut peak = before;
    let mut streams: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| {
            let mut stream = raw(server.local_addr());
            stream.write_all(&DECLARED.to_be_bytes()).unwrap();
            stream
        })
        .collect();
    // Every connection is read from and then dropped at its request timeout, 32 at a time.
    let all_closed = wait_until(Duration::from_secs(120), || {
        peak = peak.max(resident_bytes());
        server.stats().errors >= CONNECTIONS as u64
    });
    peak = peak.max(resident_bytes());
    assert!(
        all_closed,
        "not every connection was dropped: {:?}",
        server.stats()
    );
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 64 * 1024 * 1024,
        "{CONNECTIONS} connections declaring {DECLARED} bytes each grew the process by {grew} bytes"
    );
    for (n, stream) in streams.iter_mut().enumerate() {
        assert!(
            closed_within(stream, PATIENCE),
            "connection {n} was left open"
        );
    }
    wait_for_stats(&server, "every connection closed", |s| {
        s.open_connections == 0
    });
    assert_eq!(server.stats().panics, 0);
    let fresh = good_client(&server, Transport::Framed, Protocol::Binary);
    assert_eq!(fresh.call(|c| c.add(40, 2)).unwrap(), 42);
}

// ---------------------------------------------------------------------------------------------
// Slow and idle peers
// ---------------------------------------------------------------------------------------------

#[test]
fn a_trickling_client_cannot_stretch_its_request_past_the_request_timeout() {
    let _lock = shared_lock();
    let config = ServerConfig::default()
        .workers(1)
        .request_timeout(Duration::from_millis(500));
    let (server, _) = start_server(config);
    let request = frame(&bin_add(1, 2, 3));
    let mut trickler = raw(server.local_addr());
    trickler.set_nodelay(true).unwrap();
    // One byte every 50 ms, each well within the timeout of a single read: were the timeout per
    // read, this would take 1.3 s and succeed; it must be cut at 500 ms from the first byte.
    // The request is made long enough (a list to skip) to last for minutes at this pace.
    let mut long = bin_call("add", 1);
    long.extend(bin_field(BIN_LIST, 9));
    long.push(3);
    long.extend(5000i32.to_be_bytes());
    long.extend(vec![0u8; 5000]);
    long.push(0);
    let long = frame(&long);
    let started = Instant::now();
    let mut cut_after = None;
    for (n, byte) in long.iter().enumerate() {
        if trickler.write_all(&[*byte]).is_err() {
            cut_after = Some(n);
            break;
        }
        thread::sleep(Duration::from_millis(50));
        if server.stats().errors > 0 {
            cut_after = Some(n);
            break;
        }
    }
    let cut_after = cut_after.expect("the trickled request was never cut off");
    assert!(closed_within(&mut trickler, PATIENCE));
    assert!(
        cut_after < long.len() / 2,
        "cut after {cut_after} bytes, {:?}",
        started.elapsed()
    );
    // The worker it held is free again.
    let mut c = raw(server.local_addr());
    c.write_all(&request).unwrap();
    let reply = read_reply(&mut c, Transport::Framed, Protocol::Binary);
    assert_eq!(reply.result, Some(5));
}

#[test]
fn a_half_sent_request_does_not_hold_the_only_worker() {
    let _lock = shared_lock();
    let request_timeout = Duration::from_secs(20);
    let config = ServerConfig::default()
        .workers(1)
        .request_timeout(request_timeout);
    let (server, _) = start_server(config);
    let request = frame(&bin_add(1, 2, 3));
    let mut stalled = raw(server.local_addr());
    stalled.write_all(&request[..request.len() / 2]).unwrap();
    // Whether or not the worker has read the half yet, it must not wait there for the rest.
    wait_for_stats(&server, "the stalled client accepted", |s| {
        s.accepted_connections == 1
    });
    let started = Instant::now();
    let mut other = raw(server.local_addr());
    other.set_read_timeout(Some(request_timeout)).unwrap();
    other.write_all(&request).unwrap();
    let reply = try_read_reply(&mut other, Transport::Framed, Protocol::Binary);
    assert!(
        reply.is_ok() && started.elapsed() < request_timeout / 2,
        "the second client waited {:?} for the stalled one: {reply:?}",
        started.elapsed()
    );
    // The stalled connection is still open: it was not its timeout that freed the worker.
    assert_eq!(server.stats().errors, 0);
}

#[test]
fn connections_that_never_send_a_byte_are_closed_after_the_idle_timeout() {
    let _lock = shared_lock();
    let config = ServerConfig::default()
        .workers(1)
        .idle_timeout(Duration::from_millis(300));
    let (server, _) = start_server(config);
    let mut silent: Vec<TcpStream> = (0..50).map(|_| raw(server.local_addr())).collect();
    for (n, stream) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(stream, PATIENCE),
            "silent connection {n} left open"
        );
    }
    wait_for_stats(&server, "none open", |s| s.open_connections == 0);
    let stats = server.stats();
    assert_eq!((stats.errors, stats.requests), (0, 0), "{stats:?}");
    let fresh = good_client(&server, Transport::Framed, Protocol::Binary);
    assert_eq!(fresh.call(|c| c.add(40, 2)).unwrap(), 42);
}

/// Binary: `echo(data)`, whole and framed.
fn bin_echo_framed(seq: i32, data: &[u8]) -> Vec<u8> {
    let mut m = bin_call("echo", seq);
    m.extend(bin_field(BIN_STRING, 1));
    m.extend(bin_string(data));
    m.push(0);
    frame(&m)
}

#[test]
fn clients_that_never_read_their_answers_hold_no_worker() {
    let _lock = shared_lock();
    let (server, _) = start_server(ServerConfig::default().workers(4));
    let addr = server.local_addr();
    // Sixteen clients each send eight 1 MiB echo calls and never read a byte of the answers:
    // far more than the sockets' buffers hold.
    let payload = vec![7u8; 1024 * 1024];
    let sockets: Vec<TcpStream> = (0..16).map(|_| raw(addr)).collect();
    let stubborn: Vec<_> = sockets
        .iter()
        .map(|socket| {
            let (mut stream, payload) = (socket.try_clone().unwrap(), payload.clone());
            thread::spawn(move || {
                for seq in 0..8 {
                    // Blocks once the server stops reading this connection; that is expected.
                    if stream.write_all(&bin_echo_framed(seq, &payload)).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    // Every connection has a response its client does not take, waiting in the poller: a
    // worker blocked sending one would hold its connection instead.
    wait_for_stats(
        &server,
        "every connection waits for its client to read",
        |s| s.idle_connections == 16 && s.waiting_bytes >= 16 * 1024 * 1024,
    );
    // A fresh client is answered at once all the same.
    let mut fresh = raw(addr);
    let started = Instant::now();
    fresh.write_all(&frame(&bin_add(1, 40, 2))).unwrap();
    let mut header = [0u8; 4];
    fresh.read_exact(&mut header).unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "a fresh call took {took:?}");
    let stats = server.stats();
    assert!(
        stats.waiting_bytes <= 256 * 1024 * 1024,
        "{} bytes wait",
        stats.waiting_bytes
    );
    // The stubborn clients' threads are stuck in writes the server no longer reads; shutting
    // their sockets down from here ends them.
    for socket in &sockets {
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
    for client in stubborn {
        client.join().unwrap();
    }
    // Closed with answers unread, the connections reset, and the server lets them go.
    drop(sockets);
    wait_for_stats(&server, "the stubborn connections are closed", |s| {
        s.open_connections == 1
    });
}
