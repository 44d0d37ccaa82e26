//! Calls through a fault-injecting proxy in front of a real ThriftServer: whatever the network
//! does to a response, each call returns its own answer or a clear error, a connection that saw
//! a fault never carries another call, and the breaker counts every failure it should.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blocking_thrift::{ClientConfig, Error, ServerConfig, ThriftClient, ThriftServer, Timeout};
use support::calculator::{CalculatorSyncClient, TCalculatorSyncClient};
use support::proxy::{Fault, FaultProxy};
use support::{start_server, Calc};

blocking_thrift::impl_direct!(support::calculator::TCalculatorSyncClientMarker);

const THREADS: usize = 4;
const CALLS_PER_THREAD: usize = 12;

/// Read timeout of a client that should not time out: far beyond any response here.
const GENEROUS: Duration = Duration::from_secs(10);

/// Read timeout of a client that has to give up on stalled and slow responses.
const SHORT: Duration = Duration::from_millis(250);

fn server() -> ThriftServer {
    let _ = env_logger::builder().is_test(true).try_init();
    start_server(ServerConfig::default().workers(4)).0
}

fn client(proxy: &FaultProxy, read_timeout: Duration) -> ThriftClient<Calc> {
    let config = ClientConfig::default()
        .read_timeout(read_timeout)
        .connect_timeout(GENEROUS)
        .pool_timeout(GENEROUS)
        .pool_size(THREADS as u32)
        // The breaker never opens here (far fewer failures than this happen within a minute),
        // so every call reaches the proxy and every failure shows in the counters.
        // (Not u32::MAX: see `a_breaker_that_never_opens_can_be_configured`.)
        .maxfail(10_000);
    ThriftClient::new(&proxy.endpoint(), CalculatorSyncClient::new, config)
}

/// What became of a batch of calls.
#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    /// Which calls succeeded, and how long each took.
    answered: Vec<(String, Duration)>,
    errors: Vec<String>,
}

/// A call's own correct answer, or an error that `allowed` accepts; anything else panics.
fn check<T: PartialEq + std::fmt::Debug>(
    what: &str,
    started: Instant,
    result: Result<T, Error>,
    expected: T,
    allowed: fn(&Error) -> bool,
    outcome: &mut Outcome,
) {
    match result {
        Ok(got) => {
            assert_eq!(got, expected, "{what}: a call got another call's answer");
            outcome.ok += 1;
            outcome.answered.push((what.to_owned(), started.elapsed()));
        }
        Err(err) => {
            assert!(allowed(&err), "{what}: unclear error {err:?}");
            assert!(!err.to_string().is_empty());
            outcome.errors.push(format!("{err:?}"));
        }
    }
}

/// `THREADS` threads each make `CALLS_PER_THREAD` calls, alternating `echo` and `add`, through
/// `call` and `direct()`, each with arguments no other call uses.
/// Echo payloads are up to `max_payload` bytes long.
fn calls(
    client: &ThriftClient<Calc>,
    tag: &str,
    max_payload: usize,
    allowed: fn(&Error) -> bool,
) -> Outcome {
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (client, tag) = (client.clone(), tag.to_owned());
            std::thread::spawn(move || {
                let mut outcome = Outcome::default();
                let mut direct = client.direct();
                for i in 0..CALLS_PER_THREAD {
                    let what = format!("{tag} thread {t} call {i}");
                    let n = (t * 1000 + i) as i32;
                    let mut payload = format!("{what}:").into_bytes();
                    payload.resize(
                        payload.len() + (i * 7919) % max_payload,
                        b'a' + (i % 26) as u8,
                    );
                    let started = Instant::now();
                    match i % 4 {
                        0 => {
                            let r = client.call(|c| c.echo(payload.clone()));
                            check(&what, started, r, payload, allowed, &mut outcome);
                        }
                        1 => {
                            let r = client.call(|c| c.add(n, 1_000_000));
                            check(&what, started, r, n + 1_000_000, allowed, &mut outcome);
                        }
                        2 => {
                            let r = direct.echo(payload.clone()).map_err(Error::from);
                            check(&what, started, r, payload, allowed, &mut outcome);
                        }
                        _ => {
                            let r = direct.add(n, 2_000_000).map_err(Error::from);
                            check(&what, started, r, n + 2_000_000, allowed, &mut outcome);
                        }
                    }
                }
                outcome
            })
        })
        .collect();
    let mut total = Outcome::default();
    for thread in threads {
        let outcome = thread.join().expect("a calling thread panicked");
        total.ok += outcome.ok;
        total.answered.extend(outcome.answered);
        total.errors.extend(outcome.errors);
    }
    total
}

fn is_transport_or_protocol(err: &Error) -> bool {
    matches!(err, Error::Transport(_) | Error::Protocol(_))
}

fn is_transport(err: &Error) -> bool {
    matches!(err, Error::Transport(_))
}

fn is_response_timeout(err: &Error) -> bool {
    matches!(err, Error::Timeout(Timeout::Response))
}

fn is_any_fault(err: &Error) -> bool {
    is_transport_or_protocol(err) || is_response_timeout(err)
}

fn nothing(_: &Error) -> bool {
    false
}

/// Runs a batch under `fault` and checks what every batch must hold; returns the outcome.
fn batch(
    proxy: &FaultProxy,
    client: &ThriftClient<Calc>,
    fault: Fault,
    allowed: fn(&Error) -> bool,
) -> Outcome {
    proxy.set(fault);
    let before = client.stats();
    let faulted_before = proxy.faulted_connections();
    // Sizes from a few bytes to several socket reads.
    let outcome = calls(client, &format!("{fault:?}"), 40_000, allowed);
    proxy.set(Fault::Pass);
    let after = client.stats();
    let errors = outcome.errors.len() as u64;
    assert_eq!(
        after.failures - before.failures,
        errors,
        "{fault:?}: the breaker counted otherwise than the errors seen: {after:?}, {outcome:?}"
    );
    assert_eq!(
        after.successes - before.successes,
        outcome.ok as u64,
        "{fault:?}: {after:?}"
    );
    assert_eq!(
        proxy.requests_after_fault(),
        0,
        "{fault:?}: a request went out on a connection that had seen a fault"
    );
    let faulted = proxy.faulted_connections() - faulted_before;
    assert_eq!(
        faulted as u64, errors,
        "{fault:?}: every faulted connection should fail exactly its one call: {outcome:?}"
    );
    // After the batch, a clean call works.
    assert_eq!(client.call(|c| c.add(20, 22)).unwrap(), 42, "{fault:?}");
    outcome
}

#[test]
fn passing_and_short_delays_lose_nothing() {
    let server = server();
    let proxy = FaultProxy::start(server.local_addr());
    let client = client(&proxy, GENEROUS);
    let total = THREADS * CALLS_PER_THREAD;
    let outcome = batch(&proxy, &client, Fault::Pass, nothing);
    assert_eq!(outcome.ok, total);
    let outcome = batch(
        &proxy,
        &client,
        Fault::Delay(Duration::from_millis(20)),
        nothing,
    );
    assert_eq!(outcome.ok, total);
    // Healthy connections are reused: no more than one per calling thread, plus the direct
    // handles' share of the same pool.
    assert!(
        proxy.connections() <= THREADS,
        "{} connections for {THREADS} threads",
        proxy.connections()
    );
    client.close();
}

#[test]
fn stalled_and_slow_responses_time_out_and_cost_their_connections() {
    let server = server();
    let proxy = FaultProxy::start(server.local_addr());
    let client = client(&proxy, SHORT);
    let total = THREADS * CALLS_PER_THREAD;
    let outcome = batch(&proxy, &client, Fault::Stall, is_response_timeout);
    assert_eq!(outcome.errors.len(), total, "{outcome:?}");
    // A whole second per response chunk is past every call's read timeout; such responses are
    // not faults the proxy counts, but each must cost its call and its connection. (Unless the
    // machine is so loaded that a calling thread is not scheduled until the late response is
    // there: the read then returns it. Such an answer is late, but still the call's own.)
    let delay = Duration::from_secs(1);
    proxy.set(Fault::Delay(delay));
    let connections = proxy.connections();
    let outcome = calls(&client, "slow", 40_000, is_response_timeout);
    proxy.set(Fault::Pass);
    for (what, took) in &outcome.answered {
        assert!(
            *took >= delay,
            "{what} was answered in {took:?}, before its response was sent"
        );
    }
    let errors = outcome.errors.len();
    assert!(errors > 0, "{outcome:?}");
    assert_eq!(client.stats().failures, (total + errors) as u64);
    client.call(|c| c.ping()).unwrap();
    assert!(
        proxy.connections() - connections >= errors,
        "timed-out connections were reused"
    );
    client.close();
}

#[test]
fn resets_mid_response_fail_their_calls() {
    let server = server();
    let proxy = FaultProxy::start(server.local_addr());
    let client = client(&proxy, GENEROUS);
    let outcome = batch(&proxy, &client, Fault::Reset, is_transport_or_protocol);
    assert_eq!(outcome.ok, 0, "{outcome:?}");
    client.close();
}

#[test]
fn connections_closed_mid_response_fail_their_calls() {
    let server = server();
    let proxy = FaultProxy::start(server.local_addr());
    let client = client(&proxy, GENEROUS);
    // Ten bytes: the frame header and a little of the message.
    let outcome = batch(
        &proxy,
        &client,
        Fault::CloseAfter(10),
        is_transport_or_protocol,
    );
    assert_eq!(outcome.ok, 0, "{outcome:?}");
    // Nothing cut: each response arrives whole and then its connection closes. The next call
    // notices at checkout and opens a new connection without failing, unless it checked the
    // connection out before the close arrived (the race every client of a server closing
    // connections has): then it fails with a transport error, which the breaker counts. Small
    // responses, so that each is a single read for the proxy, which closes after the first.
    proxy.set(Fault::CloseAfter(usize::MAX));
    let before = client.stats();
    let outcome = calls(&client, "close after the response", 1000, is_transport);
    proxy.set(Fault::Pass);
    assert!(outcome.ok > 0, "{outcome:?}");
    let after = client.stats();
    assert_eq!(
        after.failures - before.failures,
        outcome.errors.len() as u64,
        "{after:?}"
    );
    client.close();
}

#[test]
fn garbage_replies_fail_their_calls() {
    let server = server();
    let proxy = FaultProxy::start(server.local_addr());
    let client = client(&proxy, GENEROUS);
    let outcome = batch(&proxy, &client, Fault::Garbage, is_transport_or_protocol);
    assert_eq!(outcome.ok, 0, "{outcome:?}");
    client.close();
}

#[test]
fn faults_switched_while_calls_are_under_way_never_mix_up_answers() {
    let server = server();
    let proxy = Arc::new(FaultProxy::start(server.local_addr()));
    let client = client(&proxy, SHORT);
    let stop = Arc::new(AtomicBool::new(false));
    let switches = Arc::new(AtomicUsize::new(0));
    let switcher = {
        let (proxy, stop, switches) = (proxy.clone(), stop.clone(), switches.clone());
        std::thread::spawn(move || {
            let faults = [
                Fault::Pass,
                Fault::Delay(Duration::from_millis(5)),
                Fault::Reset,
                Fault::Pass,
                Fault::Stall,
                Fault::CloseAfter(10),
                Fault::Garbage,
                Fault::Delay(Duration::from_millis(400)),
            ];
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                proxy.set(faults[n % faults.len()]);
                n += 1;
                switches.store(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(15));
            }
            proxy.set(Fault::Pass);
        })
    };
    let mut outcome = Outcome::default();
    // At least three rounds, and as many as it takes for every fault to have come round twice
    // while calls were under way, however quickly the calls go (release builds).
    let mut round = 0;
    while round < 3 || switches.load(Ordering::SeqCst) <= 16 {
        assert!(round < 1_000, "the fault switcher is stuck");
        let more = calls(&client, &format!("round {round}"), 40_000, is_any_fault);
        outcome.ok += more.ok;
        outcome.answered.extend(more.answered);
        outcome.errors.extend(more.errors);
        round += 1;
    }
    stop.store(true, Ordering::SeqCst);
    switcher.join().unwrap();
    let stats = client.stats();
    assert_eq!(stats.failures, outcome.errors.len() as u64, "{stats:?}");
    assert_eq!(stats.successes, outcome.ok as u64, "{stats:?}");
    assert_eq!(proxy.requests_after_fault(), 0);
    assert_eq!(client.call(|c| c.add(20, 22)).unwrap(), 42);
    client.close();
}

#[test]
fn a_breaker_that_never_opens_can_be_configured() {
    let client: ThriftClient<Calc> = ThriftClient::new(
        &support::refused_endpoint(),
        CalculatorSyncClient::new,
        ClientConfig::default().maxfail(u32::MAX),
    );
    assert!(matches!(
        client.call(|c| c.ping()),
        Err(Error::Connect { .. })
    ));
    assert_eq!(client.stats().failures, 1);
}
