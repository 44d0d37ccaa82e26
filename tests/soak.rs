//! Sixteen threads calling `echo` while the server is stopped and restarted on the same port
//! every second: no call ever gets another call's answer, every failure is a clear error, and
//! once it is over the process holds no more file descriptors or threads than before.
//!
//! Runs for 30 seconds; `BLOCKING_THRIFT_SOAK_SECS` changes that.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blocking_thrift::{ClientConfig, Error, ServerConfig, ThriftClient, ThriftServer};
use support::calculator::{CalculatorSyncClient, CalculatorSyncProcessor, TCalculatorSyncClient};
use support::{open_fds, thread_count, wait_until, Calc, CalculatorService};

blocking_thrift::impl_direct!(support::calculator::TCalculatorSyncClientMarker);

const THREADS: usize = 16;
const CLIENTS: usize = 4;

fn soak_duration() -> Duration {
    let secs = std::env::var("BLOCKING_THRIFT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// A listener on a port the system never hands out as a client's local port.
///
/// While the server is down, a client connecting to the port could otherwise be given that very
/// port as its own and connect to itself (TCP simultaneous open), read its own request back as
/// the answer, and hold the port so the server cannot bind it again.
fn listener_outside_ephemeral_ports() -> TcpListener {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let seed = std::process::id() as usize;
    let span = usize::from(low.saturating_sub(10_000)).max(1);
    for attempt in 0..1000 {
        let port = 10_000 + (seed.wrapping_mul(7919) + attempt * 104_729) % span;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener;
        }
    }
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1")
}

fn start(listener: TcpListener, service: &Arc<CalculatorService>) -> ThriftServer {
    let config = ServerConfig::default()
        .workers(4)
        .drain_timeout(Duration::from_secs(5));
    let server = ThriftServer::from_listener(
        listener,
        CalculatorSyncProcessor::new(service.clone()),
        config,
    )
    .expect("serve the listener");
    server.start().expect("start the server");
    server
}

/// Binds `addr` again, waiting for the port if the stopped server's socket still holds it.
fn rebind(addr: SocketAddr) -> TcpListener {
    let mut listener = None;
    let bound = wait_until(Duration::from_secs(30), || {
        listener = TcpListener::bind(addr).ok();
        listener.is_some()
    });
    assert!(bound, "could not bind {addr} again");
    listener.unwrap()
}

/// What a calling thread saw.
#[derive(Default)]
struct Tally {
    answered: u64,
    wrong: Vec<String>,
    errors: BTreeMap<String, u64>,
    unclear: Vec<String>,
}

/// Whether `err` says clearly what happened to a call whose server went away, or that its
/// server shed it, unrun, when a stall of the machine held it past `max_queue_wait` (seen with
/// CPU hogs beside the test).
fn is_clear(err: &Error) -> bool {
    matches!(
        err,
        Error::Connect { .. }
            | Error::Timeout(_)
            | Error::CircuitOpen { .. }
            | Error::Transport(_)
            | Error::Overloaded(_)
    )
}

fn kind(err: &Error) -> String {
    let debug = format!("{err:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn restarting_the_server_every_second_loses_no_answer_and_leaks_nothing() {
    let fds_before = open_fds();
    let threads_before = thread_count();
    let duration = soak_duration();
    let service = Arc::new(CalculatorService::new("soak"));
    let listener = listener_outside_ephemeral_ports();
    let addr = listener.local_addr().unwrap();
    let mut server = start(listener, &service);

    let config = ClientConfig::default()
        .connect_timeout(Duration::from_secs(2))
        .pool_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(5))
        .pool_size((THREADS / CLIENTS) as u32)
        .reset_timeout(Duration::from_millis(200));
    let clients: Vec<ThriftClient<Calc>> = (0..CLIENTS)
        .map(|_| ThriftClient::new(&addr.to_string(), CalculatorSyncClient::new, config.clone()))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let callers: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = clients[t % CLIENTS].clone();
            let (stop, tally) = (stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let mut mine = Tally::default();
                let mut direct = client.direct();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let mut payload = format!("thread {t} call {i}:").into_bytes();
                    payload.resize(payload.len() + (i as usize * 131) % 3000, b'0' + t as u8);
                    let result = if t % 2 == 0 {
                        client.call(|c| c.echo(payload.clone()))
                    } else {
                        direct.echo(payload.clone()).map_err(Error::from)
                    };
                    match result {
                        Ok(answer) if answer == payload => mine.answered += 1,
                        Ok(answer) => mine.wrong.push(format!(
                            "thread {t} call {i} got {:?}",
                            String::from_utf8_lossy(&answer[..answer.len().min(40)])
                        )),
                        Err(err) => {
                            *mine.errors.entry(kind(&err)).or_default() += 1;
                            if !is_clear(&err) || err.to_string().is_empty() {
                                mine.unclear.push(format!("thread {t} call {i}: {err:?}"));
                            }
                            // Failing calls are quick (refused, or rejected by the breaker):
                            // pace them instead of spinning.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                let mut tally = tally.lock().unwrap();
                tally.answered += mine.answered;
                tally.wrong.extend(mine.wrong);
                tally.unclear.extend(mine.unclear);
                for (kind, n) in mine.errors {
                    *tally.errors.entry(kind).or_default() += n;
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut restarts = 0;
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1).min(duration.saturating_sub(started.elapsed())));
        server.stop();
        drop(server);
        server = start(rebind(addr), &service);
        restarts += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.join().expect("a calling thread panicked");
    }
    for client in &clients {
        client.close();
    }
    drop(clients);
    server.stop();
    drop(server);

    let tally = tally.lock().unwrap();
    eprintln!(
        "soak: {restarts} restarts, {} answers, errors {:?}",
        tally.answered, tally.errors
    );
    assert!(tally.wrong.is_empty(), "wrong answers: {:?}", tally.wrong);
    assert!(
        tally.unclear.is_empty(),
        "unclear errors: {:?}",
        tally.unclear
    );
    assert!(tally.answered > 0, "no call was ever answered");
    assert!(restarts > 0 || duration < Duration::from_secs(1));

    let settling = Instant::now();
    let mut fds = open_fds();
    let fds_settled = wait_until(Duration::from_secs(10), || {
        fds = open_fds();
        fds <= fds_before + 2
    });
    assert!(
        fds_settled,
        "{fds} file descriptors open, {fds_before} before"
    );
    eprintln!(
        "soak: fds {fds_before} -> {fds} after {:?}",
        settling.elapsed()
    );
    // Well under r2d2's 30 s reaper period: a pool's helper thread that waited for its next
    // reaper run would not count as gone.
    let mut threads = thread_count();
    let threads_settled = wait_until(Duration::from_secs(10), || {
        threads = thread_count();
        threads <= threads_before + 1
    });
    assert!(
        threads_settled,
        "{threads} threads, {threads_before} before"
    );
    eprintln!(
        "soak: threads {threads_before} -> {threads} after {:?}",
        settling.elapsed()
    );
}
