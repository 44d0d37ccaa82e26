//! The client over TLS, against a rustls server on the thrift crate's transports.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blocking_thrift::rustls;
use blocking_thrift::{
    ClientConfig, ClientTls, Error, MultiThriftClient, Protocol, ThriftClient, Timeout, Transport,
};
use support::calculator::{CalculatorSyncClient, TCalculatorSyncClient};
use support::tls::{server_config, Ca, TlsServer};
use support::{Calc, ALL_WIRE_FORMATS};

blocking_thrift::impl_direct!(support::calculator::TCalculatorSyncClientMarker);

fn client(endpoint: &str, config: ClientConfig) -> ThriftClient<Calc> {
    ThriftClient::new(endpoint, CalculatorSyncClient::new, config)
}

fn trusting(ca: &Ca) -> ClientTls {
    ClientTls::ca_pem(ca.pem.as_bytes()).unwrap()
}

/// A server whose certificate names localhost and 127.0.0.1, and a client trusting its CA.
fn server(transport: Transport, protocol: Protocol) -> (TlsServer, ClientConfig) {
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let server = TlsServer::start(server_config(&leaf, None), transport, protocol);
    let config = ClientConfig::default()
        .transport(transport)
        .protocol(protocol)
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(5))
        .tls(trusting(&ca));
    (server, config)
}

#[test]
fn calls_go_over_tls_on_every_transport_and_protocol() {
    for (transport, protocol) in ALL_WIRE_FORMATS {
        let (server, config) = server(transport, protocol);
        let calc = client(&server.endpoint(), config);
        assert_eq!(
            calc.call(|c| c.add(2, 3)).unwrap(),
            5,
            "{transport:?} {protocol:?}"
        );
        // Larger than a read, a TLS record and the session's 64 KiB send buffer.
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        assert_eq!(calc.call(|c| c.echo(data.clone())).unwrap(), data);
        assert_eq!(calc.call(|c| c.add(1, 1)).unwrap(), 2);
        assert_eq!(
            server.full.load(Ordering::SeqCst),
            1,
            "{transport:?} {protocol:?}"
        );
    }
}

#[test]
fn direct_calls_go_over_tls_and_report_a_refused_handshake() {
    let (server, config) = server(Transport::Framed, Protocol::Compact);
    let calc = client(&server.endpoint(), config);
    let mut direct = calc.direct();
    assert_eq!(direct.add(40, 2).unwrap(), 42);
    assert_eq!(direct.echo(vec![1, 2, 3]).unwrap(), vec![1, 2, 3]);
    assert_eq!(server.full.load(Ordering::SeqCst), 1);

    let ca = Ca::new("server CA");
    let strict = TlsServer::start(
        server_config(&ca.leaf(&["127.0.0.1"]), Some(&Ca::new("client CA"))),
        Transport::Framed,
        Protocol::Binary,
    );
    let calc = client(
        &strict.endpoint(),
        ClientConfig::default().tls(trusting(&ca)),
    );
    let err = calc.direct().add(1, 2).unwrap_err();
    let ours = Error::in_direct(&err).expect("the crate's own error");
    assert!(ours.is_handshake(), "{ours}");
    assert_eq!(calc.stats().connect_errors, 1);
}

#[test]
fn pooled_calls_pay_no_second_handshake_and_a_new_connection_resumes() {
    let (server, config) = server(Transport::Framed, Protocol::Binary);
    let calc = client(&server.endpoint(), config.clone());
    for n in 0..20 {
        assert_eq!(calc.call(|c| c.add(n, 1)).unwrap(), n + 1);
    }
    assert_eq!(server.full.load(Ordering::SeqCst), 1);
    assert_eq!(calc.stats().connections_open, 1);
    // Another client from the same settings shares their session cache.
    let again = client(&server.endpoint(), config);
    assert_eq!(again.call(|c| c.add(1, 2)).unwrap(), 3);
    assert_eq!(server.full.load(Ordering::SeqCst), 1);
    assert_eq!(server.resumed.load(Ordering::SeqCst), 1);
}

#[test]
fn oneway_calls_keep_their_pooled_connection_though_they_never_read_its_session_tickets() {
    // A TLS 1.3 server sends its session tickets after the handshake; a oneway call reads
    // nothing, so they wait on the idle connection when the next call checks it.
    let (server, config) = server(Transport::Framed, Protocol::Binary);
    let config = config.pool_size(1).reuse_unchecked_within(Duration::ZERO);
    let calc = client(&server.endpoint(), config);
    for done in 1..=5 {
        calc.call(|c| c.zip()).unwrap();
        // Once the server has run it, the tickets it sent before reading it have arrived.
        assert!(support::wait_until(Duration::from_secs(10), || server
            .service
            .zips()
            == done));
    }
    assert_eq!(calc.call(|c| c.add(1, 2)).unwrap(), 3);
    let handshakes = server.full.load(Ordering::SeqCst) + server.resumed.load(Ordering::SeqCst);
    assert_eq!(handshakes, 1);
}

#[test]
fn a_pooled_connection_the_server_closed_with_close_notify_is_not_reused() {
    let ca = Ca::new("test CA");
    let server = TlsServer::start_closing_after(
        server_config(&ca.leaf(&["127.0.0.1"]), None),
        Transport::Framed,
        Protocol::Binary,
        1,
    );
    let config = ClientConfig::default()
        .reuse_unchecked_within(Duration::ZERO)
        .tls(trusting(&ca));
    let calc = client(&server.endpoint(), config);
    for n in 0..3 {
        assert_eq!(calc.call(|c| c.add(n, 1)).unwrap(), n + 1);
        // The close_notify comes with the response or just after it; either way it is seen
        // before the next call.
        std::thread::sleep(Duration::from_millis(50));
    }
    let handshakes = server.full.load(Ordering::SeqCst) + server.resumed.load(Ordering::SeqCst);
    assert_eq!(handshakes, 3);
    assert_eq!(calc.stats().failures, 0);
}

#[test]
fn an_ip_endpoint_is_checked_against_ip_names_and_a_name_can_be_set() {
    let ca = Ca::new("test CA");
    let by_ip = TlsServer::start(
        server_config(&ca.leaf(&["127.0.0.1"]), None),
        Transport::Framed,
        Protocol::Binary,
    );
    let config = ClientConfig::default().tls(trusting(&ca));
    assert_eq!(
        client(&by_ip.endpoint(), config)
            .call(|c| c.add(1, 2))
            .unwrap(),
        3
    );

    let by_name = TlsServer::start(
        server_config(&ca.leaf(&["calc.test"]), None),
        Transport::Framed,
        Protocol::Binary,
    );
    let config = ClientConfig::default().tls(trusting(&ca).server_name("calc.test"));
    assert_eq!(
        client(&by_name.endpoint(), config)
            .call(|c| c.add(1, 2))
            .unwrap(),
        3
    );
}

#[test]
fn mutual_tls_presents_the_clients_certificate() {
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let leaf = ca.leaf(&["127.0.0.1"]);
    let server = TlsServer::start(
        server_config(&leaf, Some(&clients)),
        Transport::Framed,
        Protocol::Binary,
    );
    let me = clients.leaf(&["client.test"]);
    let tls = trusting(&ca)
        .client_cert_pem(me.cert.as_bytes(), me.key.as_bytes())
        .unwrap();
    let calc = client(&server.endpoint(), ClientConfig::default().tls(tls));
    assert_eq!(calc.call(|c| c.add(1, 2)).unwrap(), 3);
}

/// Calls a client of `config` at `endpoint` once, expecting a handshake error; returns its text.
fn refused(endpoint: &str, config: ClientConfig) -> String {
    let calc = client(endpoint, config.maxfail(0));
    let err = calc.call(|c| c.add(1, 2)).unwrap_err();
    assert!(err.is_handshake(), "{err:?}");
    assert!(err.is_unsent(), "{err}");
    let stats = calc.stats();
    assert_eq!((stats.failures, stats.connect_errors), (1, 1), "{err}");
    assert!(
        matches!(calc.call(|c| c.add(1, 2)), Err(Error::CircuitOpen { .. })),
        "the breaker counts it"
    );
    err.to_string()
}

#[test]
fn a_certificate_that_does_not_verify_is_a_handshake_error() {
    let ca = Ca::new("test CA");
    let config = |tls| ClientConfig::default().tls(tls);

    let good = TlsServer::start(
        server_config(&ca.leaf(&["127.0.0.1"]), None),
        Transport::Framed,
        Protocol::Binary,
    );
    let other = Ca::new("another CA");
    let err = refused(&good.endpoint(), config(trusting(&other)));
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains(&good.endpoint()), "{err}");

    let misnamed = TlsServer::start(
        server_config(&ca.leaf(&["elsewhere.test"]), None),
        Transport::Framed,
        Protocol::Binary,
    );
    let err = refused(&misnamed.endpoint(), config(trusting(&ca)));
    assert!(err.contains("not valid for name"), "{err}");

    let expired = TlsServer::start(
        server_config(&ca.expired_leaf(&["127.0.0.1"]), None),
        Transport::Framed,
        Protocol::Binary,
    );
    let err = refused(&expired.endpoint(), config(trusting(&ca)));
    assert!(err.contains("certificate expired"), "{err}");
    // The server still serves clients that trust it.
    let calc = client(&good.endpoint(), config(trusting(&ca)));
    assert_eq!(calc.call(|c| c.add(1, 2)).unwrap(), 3);
}

#[test]
fn a_missing_client_certificate_is_a_handshake_error() {
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let server = TlsServer::start(
        server_config(&ca.leaf(&["127.0.0.1"]), Some(&clients)),
        Transport::Framed,
        Protocol::Binary,
    );
    let err = refused(
        &server.endpoint(),
        ClientConfig::default().tls(trusting(&ca)),
    );
    assert!(err.contains("CertificateRequired"), "{err}");
    // One from a CA the server does not trust.
    let stranger = Ca::new("stranger CA").leaf(&["client.test"]);
    let tls = trusting(&ca)
        .client_cert_pem(stranger.cert.as_bytes(), stranger.key.as_bytes())
        .unwrap();
    let err = refused(&server.endpoint(), ClientConfig::default().tls(tls));
    assert!(err.contains("UnknownCA"), "{err}");
}

/// A plaintext server: reads what arrives, then answers `answer` (if any) and closes.
fn plaintext_server(answer: Option<&'static [u8]>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut hello = [0; 512];
            let _ = stream.read(&mut hello);
            if let Some(answer) = answer {
                let _ = stream.write_all(answer);
            }
        }
    });
    endpoint
}

#[test]
fn a_plaintext_server_is_a_handshake_error() {
    let tls = trusting(&Ca::new("test CA"));
    let closing = plaintext_server(None);
    let err = refused(&closing, ClientConfig::default().tls(tls.clone()));
    assert!(err.contains("is it serving TLS"), "{err}");
    let answering = plaintext_server(Some(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
    let err = refused(&answering, ClientConfig::default().tls(tls));
    assert!(err.contains("answered without TLS"), "{err}");
}

#[test]
fn bytes_after_the_response_in_the_session_fail_the_call() {
    let ca = Ca::new("test CA");
    let endpoint = answering_one_request(&ca, |tls, request| {
        // Version, "add", the request's sequence number, field 0 (i32) = 3, stop.
        let mut reply = vec![0x80, 0x01, 0x00, 0x02, 0, 0, 0, 3];
        reply.extend(b"add");
        reply.extend(&request[11..15]);
        reply.extend([8, 0, 0, 0, 0, 0, 3, 0]);
        let mut frame = (reply.len() as u32).to_be_bytes().to_vec();
        frame.extend(reply);
        // Two records, sent together: the response, then bytes nobody asked for.
        tls.conn.writer().write_all(&frame).unwrap();
        tls.conn.writer().write_all(b"junk").unwrap();
        tls.flush().unwrap();
    });
    let calc = client(&endpoint, ClientConfig::default().tls(trusting(&ca)));
    let err = calc.call(|c| c.add(1, 2)).unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    assert!(err.to_string().contains("belong to no response"), "{err}");
}

#[test]
fn a_handshake_that_stalls_is_cut_at_the_connect_timeout() {
    // Accepts (the kernel does), never answers the client's hello.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let tls = trusting(&Ca::new("test CA"));
    let connect_timeout = Duration::from_millis(150);
    support::assert_on_time(connect_timeout, move || {
        let _listener = &listener;
        let config = ClientConfig::default()
            .connect_timeout(connect_timeout)
            .tls(tls.clone());
        let err = client(&endpoint, config).call(|c| c.add(1, 2)).unwrap_err();
        assert_eq!(err.timeout(), Some(Timeout::Connect), "{err}");
    });
}

#[test]
fn the_response_timeout_holds_over_tls() {
    let (server, config) = server(Transport::Framed, Protocol::Binary);
    let read_timeout = Duration::from_millis(200);
    let calc = Arc::new(client(
        &server.endpoint(),
        config.read_timeout(read_timeout).maxfail(1000),
    ));
    // Each call opens its connection (and pays its handshake) before its clock starts.
    support::assert_on_time(read_timeout, move || {
        let err = calc.call(|c| c.slow(2_000)).unwrap_err();
        assert_eq!(err.timeout(), Some(Timeout::Response), "{err}");
    });
}

#[test]
fn a_multi_client_moves_past_an_endpoint_whose_handshake_fails() {
    let ca = Ca::new("test CA");
    let stranger = Ca::new("another CA");
    let bad = TlsServer::start(
        server_config(&stranger.leaf(&["127.0.0.1"]), None),
        Transport::Framed,
        Protocol::Binary,
    );
    let good = TlsServer::start(
        server_config(&ca.leaf(&["127.0.0.1"]), None),
        Transport::Framed,
        Protocol::Binary,
    );
    let endpoints = [bad.endpoint(), good.endpoint()];
    let multi: MultiThriftClient<Calc> = MultiThriftClient::new(
        move || endpoints.clone(),
        CalculatorSyncClient::new,
        ClientConfig::default()
            .retry_unsent_only(true)
            .tls(trusting(&ca)),
    );
    assert_eq!(multi.call(|c| c.add(1, 2)).unwrap(), 3);
    // The server reads the client's alert after the call has moved on.
    let refused_once = || bad.failed.load(Ordering::SeqCst) == 1;
    assert!(support::wait_until(Duration::from_secs(5), refused_once));
}

#[test]
fn one_tls_setting_serves_every_endpoint_of_a_multi_client() {
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["127.0.0.1"]);
    let servers: Vec<TlsServer> = (0..2)
        .map(|_| {
            TlsServer::start(
                server_config(&leaf, None),
                Transport::Framed,
                Protocol::Binary,
            )
        })
        .collect();
    let endpoints: Vec<String> = servers.iter().map(TlsServer::endpoint).collect();
    // Each call starts at the other endpoint.
    let turn = AtomicUsize::new(0);
    let multi: MultiThriftClient<Calc> = MultiThriftClient::new(
        move || {
            let mut order = endpoints.clone();
            order.rotate_left(turn.fetch_add(1, Ordering::SeqCst) % 2);
            order
        },
        CalculatorSyncClient::new,
        ClientConfig::default().tls(trusting(&ca)),
    );
    for n in 0..20 {
        assert_eq!(multi.call(|c| c.add(n, 1)).unwrap(), n + 1);
    }
    for server in &servers {
        let handshakes = server.full.load(Ordering::SeqCst) + server.resumed.load(Ordering::SeqCst);
        assert_eq!(handshakes, 1, "one pooled connection each");
    }
}

#[test]
fn a_bad_record_after_the_request_may_have_run_the_call() {
    // The server reads the request (and may have run it), then sends a record that does not
    // decrypt: no refusal of the client, so the call is not taken for one never sent.
    let ca = Ca::new("test CA");
    let endpoint = answering_one_request(&ca, |tls, _| {
        // An application-data record of 32 bytes that no key made.
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend([0x5a; 32]);
        tls.sock.write_all(&record).unwrap();
    });
    let calc = client(&endpoint, ClientConfig::default().tls(trusting(&ca)));
    let err = calc.call(|c| c.add(1, 2)).unwrap_err();
    assert!(!err.is_handshake(), "{err:?}");
    assert!(err.may_have_run(), "{err:?}");
}

/// A TLS server for one framed request: `answer` gets the stream and the request's bytes; the
/// connection then stays open a while, so that only what `answer` sent decides the call.
fn answering_one_request(
    ca: &Ca,
    answer: impl FnOnce(&mut rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>, &[u8])
        + Send
        + 'static,
) -> String {
    let config = server_config(&ca.leaf(&["127.0.0.1"]), None);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let session = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(session, stream);
        let mut header = [0; 4];
        tls.read_exact(&mut header).unwrap();
        let mut request = vec![0; u32::from_be_bytes(header) as usize];
        tls.read_exact(&mut request).unwrap();
        answer(&mut tls, &request);
        std::thread::sleep(Duration::from_secs(5));
    });
    endpoint
}
