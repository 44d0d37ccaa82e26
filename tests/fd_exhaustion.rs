//! The server when the process runs out of file descriptors while clients keep connecting: it
//! logs, pauses accepting instead of spinning, keeps its listener, and serves the waiting clients
//! and new ones once descriptors are free again.
//!
//! A test binary of its own: it lowers the process's RLIMIT_NOFILE and uses up every descriptor,
//! which no other test could run next to.

mod support;

use std::fs::File;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blocking_thrift::{ClientConfig, Protocol, ServerConfig, ThriftClient, Transport};
use log::{Level, Log, Metadata, Record};
use socket2::{Domain, Socket, Type};
use support::calculator::{CalculatorSyncClient, TCalculatorSyncClient};
use support::server::{bin_add, frame, try_read_reply};
use support::{open_fds, set_open_files_limit, start_server, wait_until, Calc};

const PATIENCE: Duration = Duration::from_secs(30);

/// Counts the server's reports of failed accepts; everything else it drops.
struct AcceptFailures(AtomicUsize);

impl Log for AcceptFailures {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("blocking_thrift") && metadata.level() <= Level::Error
    }

    fn log(&self, record: &Record<'_>) {
        // Formatting allocates memory, not descriptors, so it works while none are left.
        if self.enabled(record.metadata())
            && record
                .args()
                .to_string()
                .contains("accepting connections failed")
        {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn flush(&self) {}
}

static ACCEPT_FAILURES: AcceptFailures = AcceptFailures(AtomicUsize::new(0));

fn accept_failures() -> usize {
    ACCEPT_FAILURES.0.load(Ordering::SeqCst)
}

#[test]
fn running_out_of_file_descriptors_pauses_accepting_and_recovers() {
    log::set_logger(&ACCEPT_FAILURES).expect("install the logger");
    log::set_max_level(log::LevelFilter::Error);
    set_open_files_limit(open_fds() as libc::rlim_t + 64);

    let (server, _) = start_server(ServerConfig::default().workers(2));
    let addr = server.local_addr();
    let accepted_before = server.stats().accepted_connections;

    // Three client sockets, made while there are descriptors; then every descriptor is used
    // up, and they connect: the connections complete in the listener's backlog, but the server
    // has no descriptor left to accept them with.
    let sockets: Vec<Socket> = (0..3)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).expect("a client socket"))
        .collect();
    let mut hog = Vec::new();
    let exhausted = loop {
        match File::open("/dev/null") {
            Ok(file) => hog.push(file),
            Err(err) => break err,
        }
    };
    assert_eq!(exhausted.raw_os_error(), Some(libc::EMFILE), "{exhausted}");
    let mut waiting: Vec<TcpStream> = sockets
        .into_iter()
        .map(|socket| {
            socket
                .connect(&addr.into())
                .expect("connect while the server is out of descriptors");
            socket.into()
        })
        .collect();
    for (n, stream) in waiting.iter_mut().enumerate() {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
            .write_all(&frame(&bin_add(n as i32 + 1, n as i32, 100)))
            .unwrap();
    }

    // The server notices, says so, and tries again later, without spinning: it pauses between
    // attempts (100 ms), so a second holds a handful of attempts, not thousands.
    assert!(
        wait_until(PATIENCE, || accept_failures() >= 2),
        "the server never reported failing to accept ({} reports)",
        accept_failures()
    );
    let window = Duration::from_secs(1);
    let (start, started) = (accept_failures(), Instant::now());
    std::thread::sleep(window);
    let attempts = accept_failures() - start;
    let elapsed = started.elapsed();
    eprintln!("{attempts} failed accepts in {elapsed:?} while out of descriptors");
    assert!(
        attempts <= 100,
        "{attempts} failed accepts in {elapsed:?}: the poller is spinning on EMFILE"
    );
    assert_eq!(server.stats().accepted_connections, accepted_before);

    // With descriptors free again, the waiting clients are served and new ones too.
    drop(hog);
    for (n, stream) in waiting.iter_mut().enumerate() {
        let reply = try_read_reply(stream, Transport::Framed, Protocol::Binary)
            .unwrap_or_else(|err| panic!("waiting client {n}: {err}"));
        assert_eq!(reply.result, Some(n as i32 + 100), "{reply:?}");
    }
    let client: ThriftClient<Calc> = ThriftClient::new(
        &addr.to_string(),
        CalculatorSyncClient::new,
        ClientConfig::default()
            .connect_timeout(PATIENCE)
            .read_timeout(PATIENCE),
    );
    assert_eq!(client.call(|c| c.add(40, 2)).unwrap(), 42);
    let stats = server.stats();
    assert!(
        stats.accepted_connections >= accepted_before + 4,
        "{stats:?}"
    );
    assert_eq!(stats.panics, 0);
    client.close();
}
