//! The client against a fake server that answers calls with crafted bytes: every bad reply
//! fails its own call with an error that says what happened, costs the connection it came on,
//! and counts as a breaker failure; the next call gets a new connection and its own answer.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blocking_thrift::{ClientConfig, Error, ThriftClient};
use support::calculator::{CalculatorSyncClient, TCalculatorSyncClient};
use support::Calc;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TFieldIdentifier, TInputProtocol,
    TMessageIdentifier, TMessageType, TOutputProtocol, TStructIdentifier, TType,
};

blocking_thrift::impl_direct!(support::calculator::TCalculatorSyncClientMarker);

/// The read timeout of every client here: far longer than any bad reply should take to fail a
/// call, so a call that instead waits it out shows as a timeout, not as a slow test.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The call every test makes: `add(1, 2)`, sequence id 1 on a new connection.
const FIRST: i32 = 1;

/// A request the fake server read: its method, sequence id and which connection it came on.
#[derive(Clone, Debug)]
struct Request {
    name: String,
    seq: i32,
    conn: usize,
}

/// What the fake server answers a request with.
enum Answer {
    /// These bytes; the connection stays open.
    Bytes(Vec<u8>),
    /// These bytes, then the connection is closed.
    BytesThenClose(Vec<u8>),
}

type Responder = dyn Fn(usize, &Request) -> Answer + Send + Sync;

/// A framed, binary "server" that answers the n-th request it reads (counting from 0, over
/// every connection) with whatever `respond` says.
struct FakeServer {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Request>>>,
    stopping: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    threads: Vec<JoinHandle<()>>,
}

impl FakeServer {
    fn start(respond: impl Fn(usize, &Request) -> Answer + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Responder> = Arc::new(respond);
        let acceptor = {
            let (accepts, requests, stopping, streams) = (
                accepts.clone(),
                requests.clone(),
                stopping.clone(),
                streams.clone(),
            );
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = accepts.fetch_add(1, Ordering::SeqCst);
                    streams.lock().unwrap().push(stream.try_clone().unwrap());
                    let (requests, respond) = (requests.clone(), respond.clone());
                    conns.push(std::thread::spawn(move || {
                        answer(stream, conn, &requests, &*respond)
                    }));
                }
                for conn in conns {
                    conn.join().unwrap();
                }
            })
        };
        FakeServer {
            addr,
            accepts,
            requests,
            stopping,
            streams,
            threads: vec![acceptor],
        }
    }

    fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

/// Reads framed requests off one connection and answers each.
fn answer(mut stream: TcpStream, conn: usize, requests: &Mutex<Vec<Request>>, respond: &Responder) {
    loop {
        let mut header = [0u8; 4];
        if stream.read_exact(&mut header).is_err() {
            return;
        }
        let mut frame = vec![0u8; i32::from_be_bytes(header).max(0) as usize];
        if stream.read_exact(&mut frame).is_err() {
            return;
        }
        let ident = TBinaryInputProtocol::new(&frame[..], true)
            .read_message_begin()
            .expect("the client sent a well-formed request");
        let request = Request {
            name: ident.name,
            seq: ident.sequence_number,
            conn,
        };
        let n = {
            let mut requests = requests.lock().unwrap();
            requests.push(request.clone());
            requests.len() - 1
        };
        match respond(n, &request) {
            Answer::Bytes(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            Answer::BytesThenClose(bytes) => {
                let _ = stream.write_all(&bytes);
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut bytes = (message.len() as i32).to_be_bytes().to_vec();
    bytes.extend_from_slice(message);
    bytes
}

/// A reply message (unframed): header, then a result struct whose field 0 `value` writes.
fn message(
    name: &str,
    kind: TMessageType,
    seq: i32,
    value: impl FnOnce(&mut dyn TOutputProtocol),
) -> Vec<u8> {
    let mut o = TBinaryOutputProtocol::new(Vec::new(), true);
    o.write_message_begin(&TMessageIdentifier::new(name, kind, seq))
        .unwrap();
    o.write_struct_begin(&TStructIdentifier::new("result"))
        .unwrap();
    value(&mut o);
    o.write_field_stop().unwrap();
    o.write_struct_end().unwrap();
    o.write_message_end().unwrap();
    o.transport
}

fn i32_result(value: i32) -> impl FnOnce(&mut dyn TOutputProtocol) {
    move |o| {
        o.write_field_begin(&TFieldIdentifier::new("success", TType::I32, 0))
            .unwrap();
        o.write_i32(value).unwrap();
        o.write_field_end().unwrap();
    }
}

/// The well-formed reply to `add`, with `sum` as its result.
fn add_reply(seq: i32, sum: i32) -> Vec<u8> {
    framed(&message("add", TMessageType::Reply, seq, i32_result(sum)))
}

/// Answers the first request with `bad`, and every later one correctly as `add(1, 2)`.
fn first_bad(bad: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> FakeServer {
    FakeServer::start(move |n, request| {
        if n == 0 {
            bad(request)
        } else {
            Answer::Bytes(add_reply(request.seq, 3))
        }
    })
}

fn client(server: &FakeServer, config: ClientConfig) -> ThriftClient<Calc> {
    ThriftClient::new(
        &server.endpoint(),
        CalculatorSyncClient::new,
        config.read_timeout(READ_TIMEOUT),
    )
}

/// Which way the calls are made.
#[derive(Clone, Copy, Debug)]
enum Via {
    Call,
    Direct,
}

fn add(client: &ThriftClient<Calc>, via: Via) -> Result<i32, Error> {
    match via {
        Via::Call => client.call(|c| c.add(1, 2)),
        Via::Direct => client.direct().add(1, 2).map_err(Error::from),
    }
}

/// What a bad reply must do: fail the call with an error `is_expected` accepts, whose text
/// contains `says`; count one breaker failure; leave the connection unused from then on; and
/// let the next call succeed on a new connection.
fn assert_bad_reply(
    via: Via,
    config: ClientConfig,
    bad: impl Fn(&Request) -> Answer + Send + Sync + 'static,
    is_expected: fn(&Error) -> bool,
    says: &str,
) {
    let server = first_bad(bad);
    let calc = client(&server, config);
    let started = Instant::now();
    let err = add(&calc, via).expect_err("a bad reply must fail its call");
    let took = started.elapsed();
    assert!(is_expected(&err), "{via:?}: unexpected error {err:?}");
    assert!(
        err.to_string().contains(says),
        "{via:?}: {err:?} does not say {says:?}"
    );
    assert!(
        took < READ_TIMEOUT,
        "{via:?}: the call waited out its read timeout ({took:?}) instead of failing on the bad reply"
    );
    let stats = calc.stats();
    assert_eq!(stats.failures, 1, "{via:?}: {stats:?}");
    assert_eq!(stats.successes, 0, "{via:?}: {stats:?}");
    assert_eq!(stats.connections_open, 0, "{via:?}: {stats:?}");

    assert_eq!(add(&calc, via).expect("the next call"), 3, "{via:?}");
    assert_eq!(
        server.accepts(),
        2,
        "{via:?}: the next call reused the connection"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{via:?}: {requests:?}");
    assert_eq!((requests[0].conn, requests[1].conn), (0, 1), "{via:?}");
    assert_eq!((requests[0].seq, requests[0].name.as_str()), (FIRST, "add"));
    let stats = calc.stats();
    assert_eq!(
        (stats.successes, stats.failures),
        (1, 1),
        "{via:?}: {stats:?}"
    );
    calc.close();
}

fn is_protocol(err: &Error) -> bool {
    matches!(err, Error::Protocol(_))
}

fn is_transport(err: &Error) -> bool {
    matches!(err, Error::Transport(_))
}

fn is_protocol_or_transport(err: &Error) -> bool {
    is_protocol(err) || is_transport(err)
}

const BOTH: [Via; 2] = [Via::Call, Via::Direct];

#[test]
fn a_reply_with_the_wrong_sequence_id_fails_the_call() {
    for via in BOTH {
        assert_bad_reply(
            via,
            ClientConfig::default(),
            |r| Answer::Bytes(add_reply(r.seq + 98, 3)),
            is_protocol,
            "99",
        );
    }
}

#[test]
fn a_reply_for_another_method_fails_the_call() {
    for via in BOTH {
        assert_bad_reply(
            via,
            ClientConfig::default(),
            |r| {
                let reply = message("nosuch", TMessageType::Reply, r.seq, i32_result(3));
                Answer::Bytes(framed(&reply))
            },
            is_protocol,
            "nosuch",
        );
    }
}

#[test]
fn a_call_instead_of_a_reply_fails_the_call() {
    for via in BOTH {
        assert_bad_reply(
            via,
            ClientConfig::default(),
            |r| {
                let reply = message("add", TMessageType::Call, r.seq, i32_result(3));
                Answer::Bytes(framed(&reply))
            },
            is_protocol,
            "Call",
        );
    }
}

#[test]
fn a_response_frame_over_max_message_size_fails_the_call() {
    for via in BOTH {
        assert_bad_reply(
            via,
            ClientConfig::default().max_message_size(4096),
            |_| {
                // Declares 4097 bytes; what follows is never read.
                let mut bytes = 4097i32.to_be_bytes().to_vec();
                bytes.extend([0u8; 64]);
                Answer::Bytes(bytes)
            },
            is_transport,
            "exceeds the limit of 4096",
        );
    }
}

#[test]
fn a_negative_response_frame_length_fails_the_call() {
    for via in BOTH {
        assert_bad_reply(
            via,
            ClientConfig::default(),
            |_| Answer::Bytes((-2i32).to_be_bytes().to_vec()),
            is_transport,
            "negative frame length -2",
        );
    }
}

#[test]
fn garbage_in_a_frame_fails_the_call() {
    for via in BOTH {
        assert_bad_reply(
            via,
            ClientConfig::default(),
            |_| Answer::Bytes(framed(&[0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef])),
            is_protocol,
            "version",
        );
    }
}

#[test]
fn a_non_thrift_answer_fails_the_call() {
    // An HTTP server on the wrong port: "HTTP" read as a frame length is about 1.2 GB.
    for via in BOTH {
        assert_bad_reply(
            via,
            ClientConfig::default(),
            |_| Answer::Bytes(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec()),
            is_transport,
            "exceeds the limit",
        );
    }
}

#[test]
fn a_non_thrift_answer_is_said_not_to_be_framed_thrift() {
    for via in BOTH {
        let http = b"HTTP/1.1 404 Not Found\r\n\r\n";
        let hint = r#"read "HTTP": the peer is not speaking framed Thrift"#;
        assert_bad_reply(
            via,
            ClientConfig::default(),
            |_| Answer::Bytes(http.to_vec()),
            is_transport,
            hint,
        );
    }
}

#[test]
fn a_truncated_frame_then_close_fails_the_call() {
    for via in BOTH {
        assert_bad_reply(
            via,
            ClientConfig::default(),
            |r| {
                let reply = add_reply(r.seq, 3);
                Answer::BytesThenClose(reply[..reply.len() - 6].to_vec())
            },
            is_transport,
            "closed",
        );
    }
}

#[test]
fn a_message_cut_short_inside_its_frame_fails_the_call() {
    // The frame is complete, its message is not: the reply stops in the middle of the result
    // struct. The server keeps the connection open, so only the frame's end tells the client
    // that nothing more of this message is coming.
    for via in BOTH {
        assert_bad_reply(
            via,
            ClientConfig::default(),
            |r| {
                let reply = message("add", TMessageType::Reply, r.seq, i32_result(3));
                Answer::Bytes(framed(&reply[..reply.len() - 3]))
            },
            is_protocol_or_transport,
            "",
        );
    }
}

#[test]
fn trailing_garbage_after_the_reply_in_its_frame_never_reaches_another_call() {
    for via in BOTH {
        let server = first_bad(|r| {
            let mut reply = message("add", TMessageType::Reply, r.seq, i32_result(3));
            reply.extend_from_slice(b"junk!");
            Answer::Bytes(framed(&reply))
        });
        let calc = client(&server, ClientConfig::default());
        let failures = match add(&calc, via) {
            Ok(sum) => {
                assert_eq!(sum, 3, "{via:?}");
                0
            }
            Err(err) => {
                assert!(is_protocol(&err), "{via:?}: {err:?}");
                1
            }
        };
        assert_eq!(calc.stats().failures, failures, "{via:?}");
        assert_eq!(add(&calc, via).unwrap(), 3, "{via:?}");
        assert_eq!(
            server.accepts(),
            2,
            "{via:?}: the connection with junk was reused"
        );
        calc.close();
    }
}

#[test]
fn trailing_garbage_after_the_reply_in_its_frame_fails_the_call() {
    for via in BOTH {
        assert_bad_reply(
            via,
            ClientConfig::default(),
            |r| {
                let mut reply = message("add", TMessageType::Reply, r.seq, i32_result(3));
                reply.extend_from_slice(b"junk!");
                Answer::Bytes(framed(&reply))
            },
            is_protocol,
            "",
        );
    }
}

#[test]
fn a_string_claiming_16_mib_in_a_24_byte_frame_fails_at_once() {
    // echo's result: field 0, binary, declared 16 MiB long, then one byte of it: the frame
    // holds 24 bytes in all. The server keeps the connection open.
    for via in BOTH {
        let server = FakeServer::start(|n, r| {
            if n > 0 {
                return Answer::Bytes(add_reply(r.seq, 3));
            }
            let mut reply = message("echo", TMessageType::Reply, r.seq, |o| {
                o.write_field_begin(&TFieldIdentifier::new("success", TType::String, 0))
                    .unwrap();
            });
            // Drop the stop byte written after the field header; put the length in its place.
            reply.pop();
            reply.extend((16 * 1024 * 1024i32).to_be_bytes());
            reply.push(b'x');
            assert_eq!(reply.len(), 24);
            Answer::Bytes(framed(&reply))
        });
        let calc = client(&server, ClientConfig::default());
        let started = Instant::now();
        let err = match via {
            Via::Call => calc.call(|c| c.echo(b"hi".to_vec())),
            Via::Direct => calc.direct().echo(b"hi".to_vec()).map_err(Error::from),
        }
        .expect_err("the reply cannot hold the string it declares");
        assert!(
            is_protocol_or_transport(&err),
            "{via:?}: unexpected error {err:?}"
        );
        assert!(started.elapsed() < READ_TIMEOUT, "{via:?}: {err:?}");
        assert_eq!(calc.stats().failures, 1, "{via:?}");
        assert_eq!(add(&calc, via).unwrap(), 3);
        assert_eq!(server.accepts(), 2, "{via:?}");
    }
}

/// A `TApplicationException` message of `kind`, as a server sends it for the call `seq`.
fn application_exception(seq: i32, kind: i32) -> Vec<u8> {
    message("add", TMessageType::Exception, seq, |o| {
        o.write_field_begin(&TFieldIdentifier::new("message", TType::String, 1))
            .unwrap();
        o.write_string("from the server").unwrap();
        o.write_field_end().unwrap();
        o.write_field_begin(&TFieldIdentifier::new("type", TType::I32, 2))
            .unwrap();
        o.write_i32(kind).unwrap();
        o.write_field_end().unwrap();
    })
}

#[test]
fn a_servers_application_exception_of_any_kind_is_its_answer() {
    // Among them the kinds the generated code raises itself for a reply that does not match:
    // invalid message type, wrong method name, bad sequence id.
    for kind in [2, 3, 4, 6] {
        for via in BOTH {
            let server =
                first_bad(move |r| Answer::Bytes(framed(&application_exception(r.seq, kind))));
            let calc = client(&server, ClientConfig::default());
            match add(&calc, via) {
                Err(Error::Application(e)) => {
                    assert_eq!(e.kind as i32, kind, "{via:?}: {e:?}");
                    assert_eq!(e.message, "from the server", "{via:?}");
                }
                other => panic!("kind {kind}, {via:?}: {other:?}"),
            }
            let stats = calc.stats();
            assert_eq!(
                (stats.application_errors, stats.failures),
                (1, 0),
                "kind {kind}, {via:?}: {stats:?}"
            );
            // A whole, well-formed answer: the connection carries the next call.
            assert_eq!(add(&calc, via).unwrap(), 3, "kind {kind}, {via:?}");
            assert_eq!(server.accepts(), 1, "kind {kind}, {via:?}");
            calc.close();
        }
    }
}

#[test]
fn trailing_garbage_after_an_exception_in_its_frame_fails_the_call() {
    for via in BOTH {
        assert_bad_reply(
            via,
            ClientConfig::default(),
            |r| {
                let mut reply = application_exception(r.seq, 6);
                reply.extend_from_slice(b"junk!");
                Answer::Bytes(framed(&reply))
            },
            is_protocol,
            "belong to no response",
        );
    }
    // A service exception too.
    let server = FakeServer::start(|_, r| {
        let mut reply = message("retrieve", TMessageType::Reply, r.seq, |o| {
            o.write_field_begin(&TFieldIdentifier::new("err", TType::Struct, 1))
                .unwrap();
            o.write_struct_begin(&TStructIdentifier::new("InvalidOperation"))
                .unwrap();
            o.write_field_begin(&TFieldIdentifier::new("whatOp", TType::I32, 1))
                .unwrap();
            o.write_i32(7).unwrap();
            o.write_field_end().unwrap();
            o.write_field_stop().unwrap();
            o.write_struct_end().unwrap();
            o.write_field_end().unwrap();
        });
        reply.extend_from_slice(b"junk!");
        Answer::Bytes(framed(&reply))
    });
    let calc = client(&server, ClientConfig::default());
    for via in BOTH {
        let err = match via {
            Via::Call => calc.call(|c| c.retrieve(1)).unwrap_err(),
            Via::Direct => Error::from(calc.direct().retrieve(1).unwrap_err()),
        };
        assert!(is_protocol(&err), "{via:?}: {err:?}");
    }
    let stats = calc.stats();
    assert_eq!((stats.failures, stats.user_exceptions), (2, 0), "{stats:?}");
    assert_eq!(stats.connections_open, 0, "{stats:?}");
}
