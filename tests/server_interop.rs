//! ThriftServer against an independent peer: Apache Thrift's Python client
//! (tests/peers/calculator_client.py) calls every method in every transport and protocol.
//!
//! Needs `python3` with the `thrift` package. Without it the tests print `SKIPPED: ...` and pass,
//! unless `BLOCKING_THRIFT_REQUIRE_PYTHON=1` is set, which makes them fail instead.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blocking_thrift::{Protocol, ServerConfig, ThriftServer, Transport};
use support::calculator::{CalculatorSyncProcessor, TCalculatorSyncClient};
use support::{example, python_peer_available, wire_args, CalculatorService};

/// Bound on one run of the Python client; it normally takes well under a second.
const CLIENT_PATIENCE: Duration = Duration::from_secs(60);

/// Apache Thrift's Python client for the reference service.
fn peer_script() -> String {
    support::peer_script("calculator_client.py")
}

/// Serves the reference service in `transport`/`protocol` and has the Python client check
/// every method against it.
fn python_client_passes(test: &str, transport: Transport, protocol: Protocol) {
    if !python_peer_available(test) {
        return;
    }
    let _ = env_logger::builder().is_test(true).try_init();
    let wire = wire_args(transport, protocol);
    let label = format!("rust-{}-{}", wire[1], wire[3]);
    // No request is shed for waiting, even when the machine stalls.
    let config = ServerConfig::default()
        .max_queue_wait(Duration::MAX)
        .workers(2)
        .transport(transport)
        .protocol(protocol);
    let processor = CalculatorSyncProcessor::new(CalculatorService::new(label.clone()));
    let server = ThriftServer::bind("127.0.0.1:0", processor, config).expect("bind");
    server.start().expect("start");

    let mut client = Command::new("python3")
        .arg(peer_script())
        .args(["--addr", &server.local_addr().to_string()])
        .args(wire)
        .args(["--expect-name", &label])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let deadline = Instant::now() + CLIENT_PATIENCE;
    while client
        .try_wait()
        .expect("wait for the Python client")
        .is_none()
    {
        if Instant::now() > deadline {
            let _ = client.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = client
        .wait_with_output()
        .expect("collect the Python client's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.lines().any(|line| line == "ALL OK"),
        "{test}: the Python client failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n\
         --- server stats {:?}",
        output.status,
        server.stats()
    );
    assert_eq!(server.stats().panics, 0);
}

#[test]
fn python_client_framed_binary() {
    python_client_passes(
        "python_client_framed_binary",
        Transport::Framed,
        Protocol::Binary,
    );
}

#[test]
fn python_client_framed_compact() {
    python_client_passes(
        "python_client_framed_compact",
        Transport::Framed,
        Protocol::Compact,
    );
}

#[test]
fn python_client_buffered_binary() {
    python_client_passes(
        "python_client_buffered_binary",
        Transport::Buffered,
        Protocol::Binary,
    );
}

#[test]
fn python_client_buffered_compact() {
    python_client_passes(
        "python_client_buffered_compact",
        Transport::Buffered,
        Protocol::Compact,
    );
}

#[test]
fn the_example_server_serves_the_python_client_and_stops_on_sigterm() {
    if !python_peer_available("the_example_server_serves_the_python_client_and_stops_on_sigterm") {
        return;
    }
    use std::io::{BufRead, BufReader};
    let mut server = Command::new(example("calculator_server"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--name",
            "example",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the example said {line:?}"))
        .to_owned();
    let out = Command::new("python3")
        .arg(peer_script())
        .args(["--addr", &addr, "--expect-name", "example"])
        .output()
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < CLIENT_PATIENCE,
            "the example did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the example exited with {status}");
}

#[test]
fn a_shed_request_reaches_the_python_client_as_a_tapplicationexception() {
    if !support::python_peer_available(
        "a_shed_request_reaches_the_python_client_as_a_tapplicationexception",
    ) {
        return;
    }
    let (server, _) = support::start_server(
        ServerConfig::default()
            .workers(1)
            .max_queue_wait(Duration::from_millis(50)),
    );
    let addr = server.local_addr();
    // Python starts (which can take longer than the worker is held on a loaded machine) and
    // connects first, and calls only once told to.
    let script = format!(
        r#"
import sys
sys.path.insert(0, {gen:?})
from thrift.Thrift import TApplicationException
from thrift.transport import TSocket, TTransport
from thrift.protocol import TBinaryProtocol
from calculator import Calculator
transport = TTransport.TFramedTransport(TSocket.TSocket("127.0.0.1", {port}))
client = Calculator.Client(TBinaryProtocol.TBinaryProtocol(transport))
transport.open()
print("ready", flush=True)
sys.stdin.readline()
try:
    client.add(1, 2)
    print("answered")
except TApplicationException as e:
    print("TApplicationException", e.type, e.message)
"#,
        gen = format!("{}/tests/peers/gen-py", env!("CARGO_MANIFEST_DIR")),
        port = addr.port()
    );
    let mut python = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(python.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the Python client did not start");

    // The only worker is busy for 600 ms; the Python call waits behind it, past the bound.
    let holder = std::thread::spawn(move || {
        let client: blocking_thrift::ThriftClient<support::Calc> =
            blocking_thrift::ThriftClient::new(
                &addr.to_string(),
                support::calculator::CalculatorSyncClient::new,
                blocking_thrift::ClientConfig::default().read_timeout(Duration::from_secs(5)),
            );
        client.call(|c| c.slow(600))
    });
    assert!(support::wait_until(Duration::from_secs(10), || {
        server.stats().busy_workers == 1
    }));
    std::io::Write::write_all(python.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let out = python.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(
        rest.starts_with("TApplicationException 0 server overloaded:")
            && rest.contains("did not run"),
        "{rest}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    holder.join().unwrap().unwrap();
    assert_eq!(server.stats().shed_requests, 1);
}
