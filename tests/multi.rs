//! The multi-endpoint client against reference servers on loopback.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blocking_thrift::{
    BreakerState, ClientConfig, Clock, Error, ManualClock, MultiThriftClient, Protocol, Timeout,
    Transport,
};
use support::calculator::{
    CalculatorSyncClient, InvalidOperation, TCalculatorSyncClient, TemporaryUnavailable,
};
use support::{Calc, CalculatorService, RefServer};
use thrift::protocol::TOutputProtocol;

blocking_thrift::impl_direct!(support::calculator::TCalculatorSyncClientMarker);

fn named(name: &str) -> RefServer {
    RefServer::start_on(
        "127.0.0.1:0",
        Transport::Framed,
        Protocol::Binary,
        Arc::new(CalculatorService::new(name)),
    )
}

/// Timeouts long enough that a loaded machine never trips them by accident.
fn patient() -> ClientConfig {
    ClientConfig::default()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(5))
        .pool_timeout(Duration::from_secs(5))
}

/// A client whose endpoints function always yields `endpoints`, in that order.
fn fixed(endpoints: &[String], config: ClientConfig) -> MultiThriftClient<Calc> {
    let endpoints = endpoints.to_vec();
    MultiThriftClient::new(move || endpoints.clone(), CalculatorSyncClient::new, config)
}

fn attempts(err: &Error) -> &[(Arc<str>, Error)] {
    match err {
        Error::Unavailable(u) => &u.attempts,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

fn attempt_endpoints(err: &Error) -> Vec<String> {
    attempts(err).iter().map(|(e, _)| e.to_string()).collect()
}

#[test]
fn calls_go_to_the_first_endpoint_yielded() {
    let servers = [named("a"), named("b"), named("c")];
    let list: Vec<String> = servers.iter().map(RefServer::endpoint).collect();
    let turn = Arc::new(AtomicUsize::new(0));
    let multi = {
        let (list, turn) = (list.clone(), turn.clone());
        MultiThriftClient::new(
            move || {
                let first = turn.load(Ordering::SeqCst);
                (0..list.len())
                    .map(|i| list[(first + i) % 3].clone())
                    .collect::<Vec<_>>()
            },
            CalculatorSyncClient::new,
            patient(),
        )
    };
    for i in 0..9 {
        turn.store(i % 3, Ordering::SeqCst);
        assert_eq!(
            multi.call(|c| c.whoami(false)).unwrap(),
            ["a", "b", "c"][i % 3]
        );
    }
    assert_eq!(multi.call(|c| c.add(2, 3)).unwrap(), 5);
    let stats = multi.stats();
    assert_eq!(stats.calls, 10);
    assert_eq!(stats.retries, 0);
    assert_eq!(stats.endpoints.len(), 3);
    for endpoint in &list {
        assert!(stats.endpoint(endpoint).unwrap().successes >= 3);
    }
}

#[test]
fn a_stopped_server_is_skipped_with_one_retry() {
    let mut a = named("a");
    let b = named("b");
    let multi = fixed(&[a.endpoint(), b.endpoint()], patient());
    assert_eq!(multi.call(|c| c.whoami(false)).unwrap(), "a");
    a.stop();
    for _ in 0..5 {
        assert_eq!(multi.call(|c| c.whoami(false)).unwrap(), "b");
    }
    let stats = multi.stats();
    assert_eq!(stats.retries, 5);
    assert_eq!(stats.unavailable, 0);
}

#[test]
fn when_every_endpoint_fails_each_attempt_is_listed() {
    let dead: Vec<String> = (0..3).map(|_| support::refused_endpoint()).collect();
    let multi = fixed(&dead, patient().retries(2));
    let err = multi.call(|c| c.ping()).unwrap_err();
    assert_eq!(attempt_endpoints(&err), dead);
    for (_, e) in attempts(&err) {
        assert!(matches!(e, Error::Connect { .. }), "{e}");
    }
    assert!(err.to_string().contains(&dead[2]), "{err}");

    // One retry: two attempts, whatever the list holds.
    let multi = fixed(&dead, patient());
    assert_eq!(
        attempt_endpoints(&multi.call(|c| c.ping()).unwrap_err()),
        dead[..2]
    );

    // More retries than endpoints: the call stops when they run out.
    let multi = fixed(&dead, patient().retries(10));
    assert_eq!(attempts(&multi.call(|c| c.ping()).unwrap_err()).len(), 3);
    let stats = multi.stats();
    assert_eq!((stats.retries, stats.unavailable), (2, 1));

    // No endpoints at all.
    let multi = fixed(&[], patient());
    assert!(attempts(&multi.call(|c| c.ping()).unwrap_err()).is_empty());
}

#[test]
fn declared_retryable_exceptions_move_on_to_the_next_endpoint() {
    let (a, b) = (named("a"), named("b"));
    let endpoints = [a.endpoint(), b.endpoint()];
    // The first attempt is told "busy", the next one is not.
    let busy_first = || {
        let mut tries = 0;
        move |c: &mut Calc| {
            tries += 1;
            c.whoami(tries == 1)
        }
    };

    let plain = fixed(&endpoints, patient());
    let err = plain.call(busy_first()).unwrap_err();
    let busy = err
        .user_exception::<TemporaryUnavailable>()
        .expect("TemporaryUnavailable");
    assert_eq!(busy.why.as_deref(), Some("a is busy"));
    assert_eq!(plain.stats().retries, 0);

    let config = patient().retry_on::<TemporaryUnavailable>();
    let retrying = fixed(&endpoints, config.clone());
    assert_eq!(retrying.call(busy_first()).unwrap(), "b");
    assert_eq!(retrying.stats().retries, 1);

    // Busy everywhere: unavailable, with each typed exception listed.
    let err = retrying.call(|c| c.whoami(true)).unwrap_err();
    let whys: Vec<_> = attempts(&err)
        .iter()
        .map(|(_, e)| {
            e.user_exception::<TemporaryUnavailable>()
                .unwrap()
                .why
                .clone()
                .unwrap()
        })
        .collect();
    assert_eq!(whys, ["a is busy", "b is busy"]);

    // Declared as a failure too, it opens the breakers.
    let clock = ManualClock::new();
    let config = config
        .failure_on::<TemporaryUnavailable>()
        .maxfail(0)
        .clock(clock.clock());
    let failing = fixed(&endpoints, config);
    failing.call(|c| c.whoami(true)).unwrap_err();
    let stats = failing.stats();
    assert!(stats
        .endpoints
        .iter()
        .all(|(_, s)| s.breaker == BreakerState::Open));
}

#[test]
fn other_service_exceptions_come_back_at_once() {
    let (a, b) = (named("a"), named("b"));
    let multi = fixed(
        &[a.endpoint(), b.endpoint()],
        patient().retry_on::<TemporaryUnavailable>(),
    );
    let err = multi.call(|c| c.retrieve(-1)).unwrap_err();
    assert_eq!(
        err.user_exception::<InvalidOperation>().unwrap().what_op,
        Some(-1)
    );
    let stats = multi.stats();
    assert_eq!(stats.retries, 0);
    assert!(stats.endpoint(&b.endpoint()).is_none(), "b was never tried");
    assert_eq!(stats.endpoint(&a.endpoint()).unwrap().user_exceptions, 1);
}

#[test]
fn an_open_breaker_is_skipped_without_connecting() {
    let dead = support::refused_endpoint();
    let b = named("b");
    let clock = ManualClock::new();
    let config = patient().maxfail(1).clock(clock.clock());
    let multi = fixed(&[dead.clone(), b.endpoint()], config.clone());
    for _ in 0..10 {
        assert_eq!(multi.call(|c| c.whoami(false)).unwrap(), "b");
    }
    let stats = multi.stats();
    let first = stats.endpoint(&dead).unwrap();
    assert_eq!(first.breaker, BreakerState::Open);
    assert_eq!(
        first.connect_errors, 2,
        "no connection tried once the breaker opened"
    );
    assert_eq!(first.rejected, 8);
    assert_eq!(stats.retries, 10);

    // On its own, the open endpoint's attempt says so.
    let alone = fixed(std::slice::from_ref(&dead), config.retries(0));
    alone.call(|c| c.ping()).unwrap_err();
    alone.call(|c| c.ping()).unwrap_err();
    let err = alone.call(|c| c.ping()).unwrap_err();
    assert!(
        matches!(attempts(&err), [(_, Error::CircuitOpen { .. })]),
        "{err}"
    );
}

#[test]
fn an_endless_cycle_of_endpoints_is_walked_only_as_far_as_needed() {
    let (d1, d2) = (support::refused_endpoint(), support::refused_endpoint());
    let b = named("b");
    let cycle = [d1.clone(), d2.clone()];
    let config = patient().retries(4);
    let multi = MultiThriftClient::new(
        move || cycle.clone().into_iter().cycle(),
        CalculatorSyncClient::new,
        config,
    );
    let err = multi.call(|c| c.ping()).unwrap_err();
    assert_eq!(
        attempt_endpoints(&err),
        [&d1, &d2, &d1, &d2, &d1].map(String::clone)
    );

    let cycle = [d1.clone(), b.endpoint()];
    let multi = MultiThriftClient::new(
        move || cycle.clone().into_iter().cycle(),
        CalculatorSyncClient::new,
        patient(),
    );
    assert_eq!(multi.call(|c| c.whoami(false)).unwrap(), "b");
}

#[test]
fn unsent_only_mode_does_not_retry_a_response_timeout() {
    let (a, b) = (named("a"), named("b"));
    let endpoints = [a.endpoint(), b.endpoint()];
    let slow_first = || {
        let mut tries = 0;
        move |c: &mut Calc| {
            tries += 1;
            if tries == 1 {
                c.slow(4000).map(|_| "slow".to_owned())
            } else {
                c.whoami(false)
            }
        }
    };
    let config = patient().read_timeout(Duration::from_millis(500));

    // By default a response timeout is retried: the request may have run on both.
    let multi = fixed(&endpoints, config.clone());
    assert_eq!(multi.call(slow_first()).unwrap(), "b");

    let multi = fixed(&endpoints, config.clone().retry_unsent_only(true));
    let err = multi.call(slow_first()).unwrap_err();
    assert!(
        matches!(attempts(&err), [(_, Error::Timeout(Timeout::Response))]),
        "{err}"
    );
    assert!(multi.stats().endpoint(&b.endpoint()).is_none());

    // A request that was never sent is still retried.
    let dead = support::refused_endpoint();
    let multi = fixed(&[dead, b.endpoint()], config.retry_unsent_only(true));
    assert_eq!(multi.call(|c| c.whoami(false)).unwrap(), "b");
}

#[test]
fn idle_endpoints_are_closed_and_forgotten_whether_or_not_calls_are_made() {
    let (a, b, c) = (named("a"), named("b"), named("c"));
    let clock = ManualClock::new();
    let list = Arc::new(Mutex::new(vec![a.endpoint()]));
    // The reaper looks every eighth of the idle timeout, on real time, and reads the time
    // from the clock stepped here, once a look: the reads, while no call runs, count its looks.
    let idle_timeout = Duration::from_millis(800);
    let reads = Arc::new(AtomicUsize::new(0));
    let counting = {
        let (clock, reads) = (clock.clone(), reads.clone());
        Clock::from_fn(move || {
            reads.fetch_add(1, Ordering::SeqCst);
            clock.now()
        })
    };
    let multi = {
        let list = list.clone();
        MultiThriftClient::new(
            move || list.lock().unwrap().clone(),
            CalculatorSyncClient::new,
            patient().idle_timeout(idle_timeout).clock(counting),
        )
    };
    let use_only = |endpoint: String| {
        *list.lock().unwrap() = vec![endpoint];
        multi.call(|c| c.whoami(false)).unwrap()
    };
    let reaped = |count: u64| {
        support::wait_until(Duration::from_secs(10), || {
            multi.stats().endpoints_reaped == count
        })
    };
    let endpoints = || {
        let stats = multi.stats();
        stats
            .endpoints
            .iter()
            .map(|(e, _)| e.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(use_only(a.endpoint()), "a");
    assert_eq!(use_only(b.endpoint()), "b");
    assert_eq!(endpoints().len(), 2);
    assert_eq!(a.open.load(Ordering::SeqCst), 1);

    clock.advance(Duration::from_millis(400));
    assert_eq!(use_only(b.endpoint()), "b");
    clock.advance(Duration::from_millis(399));
    // a is unused for 799 ms: three looks of the reaper leave it alone (the fourth one's
    // reading of the clock shows the third is done).
    let before = reads.load(Ordering::SeqCst);
    let looked = support::wait_until(Duration::from_secs(10), || {
        reads.load(Ordering::SeqCst) >= before + 4
    });
    assert!(looked, "the reaper never looked at the clock");
    assert_eq!(multi.stats().endpoints_reaped, 0);
    assert_eq!(endpoints().len(), 2);
    // Now for 800 ms, b for 400 ms: the reaper closes a, with no call made.
    clock.advance(Duration::from_millis(1));
    assert!(reaped(1), "{:?}", multi.stats());
    assert_eq!(endpoints(), [b.endpoint()]);
    assert!(support::wait_until(Duration::from_secs(10), || a
        .open
        .load(Ordering::SeqCst)
        == 0));
    assert_eq!(multi.reap_idle(), 0);

    // b vanished from the function and no call comes: it goes all the same.
    clock.advance(idle_timeout);
    assert!(reaped(2), "{:?}", multi.stats());
    assert!(endpoints().is_empty());
    assert!(support::wait_until(Duration::from_secs(10), || b
        .open
        .load(Ordering::SeqCst)
        == 0));

    // On demand too (unless the reaper was quicker).
    assert_eq!(use_only(c.endpoint()), "c");
    clock.advance(idle_timeout);
    assert!(multi.reap_idle() <= 1);
    assert!(reaped(3), "{:?}", multi.stats());
    assert!(endpoints().is_empty());

    // A reaped endpoint that comes back gets a fresh client.
    assert_eq!(use_only(a.endpoint()), "a");
    assert_eq!(multi.stats().endpoint(&a.endpoint()).unwrap().calls, 1);
}

#[test]
fn sixteen_threads_share_the_client() {
    let mut servers = [named("a"), named("b"), named("c")];
    servers[0].stop();
    let list: Vec<String> = servers.iter().map(RefServer::endpoint).collect();
    let turn = Arc::new(AtomicUsize::new(0));
    let multi = {
        let turn = turn.clone();
        MultiThriftClient::new(
            move || {
                let first = turn.fetch_add(1, Ordering::Relaxed);
                [list[first % 3].clone(), list[(first + 1) % 3].clone()]
            },
            CalculatorSyncClient::new,
            // A third of the calls meet the dead endpoint first: more retries than the
            // default budget allows, which is not what this test is about.
            patient().retry_budget(f64::INFINITY, 0),
        )
    };
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let multi = multi.clone();
            std::thread::spawn(move || {
                let mut direct = multi.direct();
                for i in 0..100 {
                    assert_eq!(multi.call(|c| c.add(t, i)).unwrap(), t + i);
                    assert_eq!(direct.add(i, t).unwrap(), t + i);
                    let name = multi.call(|c| c.whoami(false)).unwrap();
                    assert!(name == "b" || name == "c", "{name}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = multi.stats();
    assert_eq!(stats.calls, 16 * 300);
    assert_eq!(stats.unavailable, 0);
    let answered: u64 = stats.endpoints.iter().map(|(_, s)| s.successes).sum();
    assert_eq!(answered, 16 * 300);
}

#[test]
fn direct_calls_are_retried_too() {
    let dead = support::refused_endpoint();
    let (a, b) = (named("a"), named("b"));
    let config = patient()
        .read_timeout(Duration::from_millis(1000))
        .retry_on::<TemporaryUnavailable>();
    let multi = fixed(&[dead.clone(), a.endpoint()], config.clone());
    let mut direct = multi.direct();
    assert_eq!(direct.whoami(false).unwrap(), "a");
    assert_eq!(direct.add(40, 2).unwrap(), 42);
    assert_eq!(direct.echo(vec![1, 2, 3]).unwrap(), [1, 2, 3]);
    assert_eq!(
        direct.retrieve(9).unwrap().name.as_deref(),
        Some("Test User")
    );
    direct.zip().unwrap();
    assert!(support::wait_until(Duration::from_secs(5), || a
        .service
        .zips()
        == 1));
    // Not retryable: comes back typed, at once.
    let err = Error::from(direct.retrieve(-3).unwrap_err());
    assert_eq!(
        err.user_exception::<InvalidOperation>().unwrap().what_op,
        Some(-3)
    );
    let stats = multi.stats();
    assert_eq!(stats.retries, 6);
    assert_eq!(stats.endpoint(&a.endpoint()).unwrap().user_exceptions, 1);

    // A declared exception moves on; busy everywhere is unavailable.
    let multi = fixed(&[a.endpoint(), b.endpoint()], config.clone());
    let mut direct = multi.direct();
    let err = Error::from(direct.whoami(true).unwrap_err());
    let listed = attempts(&err);
    assert_eq!(listed.len(), 2);
    assert!(listed[1].1.to_string().contains("b is busy"), "{err}");

    // A response that does not come in time is retried on the next endpoint, and the late
    // answers are never read as answers to later calls.
    let err = Error::from(direct.slow(4000).unwrap_err());
    assert_eq!(attempt_endpoints(&err), [a.endpoint(), b.endpoint()]);
    assert!(attempts(&err)
        .iter()
        .all(|(_, e)| matches!(e, Error::Timeout(Timeout::Response))));
    assert_eq!(direct.add(5, 5).unwrap(), 10);
    assert_eq!(direct.whoami(false).unwrap(), "a");

    // Clones of the handle work on their own.
    let mut other = direct.clone();
    assert_eq!(other.add(1, 1).unwrap(), 2);
}

#[test]
fn an_oversized_request_is_refused_once_and_opens_no_breaker() {
    let (a, b) = (named("a"), named("b"));
    let config = patient().max_message_size(64 * 1024).maxfail(0);
    let multi = fixed(&[a.endpoint(), b.endpoint()], config);
    let err = multi.call(|c| c.echo(vec![7; 100 * 1024])).unwrap_err();
    assert!(matches!(err, Error::RequestTooLarge { .. }), "{err}");
    for _ in 0..3 {
        let err = Error::from(multi.direct().echo(vec![7; 100 * 1024]).unwrap_err());
        assert!(matches!(err, Error::RequestTooLarge { .. }), "{err}");
    }
    // Nothing was sent, retried or counted: with maxfail 0 one failure would open a breaker.
    let stats = multi.stats();
    assert_eq!(stats.retries, 0);
    assert!(
        stats.endpoints.iter().all(|(_, s)| s.failures == 0),
        "{stats:?}"
    );
    assert!(multi
        .endpoints()
        .iter()
        .all(|(_, state)| *state == BreakerState::Closed));
    assert_eq!(multi.direct().add(1, 2).unwrap(), 3);
}

/// A framed server in `protocol` whose every reply's result struct is written by `result`.
fn framed_server(
    protocol: Protocol,
    result: impl Fn(&mut dyn TOutputProtocol) -> thrift::Result<()> + Send + Sync + 'static,
) -> String {
    use std::io::{Read, Write};
    use thrift::protocol::{
        TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
        TInputProtocol, TMessageIdentifier, TMessageType,
    };
    let result = Arc::new(result);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let result = result.clone();
            std::thread::spawn(move || loop {
                let mut header = [0u8; 4];
                if stream.read_exact(&mut header).is_err() {
                    return;
                }
                let mut request = vec![0; i32::from_be_bytes(header) as usize];
                if stream.read_exact(&mut request).is_err() {
                    return;
                }
                let call = match protocol {
                    Protocol::Binary => TBinaryInputProtocol::new(&request[..], true)
                        .read_message_begin()
                        .unwrap(),
                    Protocol::Compact => TCompactInputProtocol::new(&request[..])
                        .read_message_begin()
                        .unwrap(),
                };
                let mut reply = Vec::new();
                let mut o: Box<dyn TOutputProtocol> = match protocol {
                    Protocol::Binary => Box::new(TBinaryOutputProtocol::new(&mut reply, true)),
                    Protocol::Compact => Box::new(TCompactOutputProtocol::new(&mut reply)),
                };
                let ident =
                    TMessageIdentifier::new(call.name, TMessageType::Reply, call.sequence_number);
                o.write_message_begin(&ident).unwrap();
                result(&mut *o).unwrap();
                o.write_message_end().unwrap();
                drop(o);
                let mut framed = (reply.len() as i32).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                if stream.write_all(&framed).is_err() {
                    return;
                }
            });
        }
    });
    endpoint
}

/// A framed, compact server whose every `retrieve` reply carries, besides the profile, a field
/// this client does not know: a list of `zeros` i64 zeros, one byte each in the compact
/// protocol and eight in the binary one (a newer server's, say).
fn compact_server_with_an_unknown_list(zeros: i32) -> String {
    use thrift::protocol::{TFieldIdentifier, TListIdentifier, TStructIdentifier, TType};
    framed_server(Protocol::Compact, move |o| {
        o.write_struct_begin(&TStructIdentifier::new("result"))?;
        o.write_field_begin(&TFieldIdentifier::new("success", TType::Struct, 0))?;
        o.write_struct_begin(&TStructIdentifier::new("UserProfile"))?;
        o.write_field_begin(&TFieldIdentifier::new("uid", TType::I32, 1))?;
        o.write_i32(5)?;
        o.write_field_end()?;
        o.write_field_begin(&TFieldIdentifier::new("history", TType::List, 9))?;
        o.write_list_begin(&TListIdentifier::new(TType::I64, zeros))?;
        for _ in 0..zeros {
            o.write_i64(0)?;
        }
        o.write_list_end()?;
        o.write_field_end()?;
        o.write_field_stop()?;
        o.write_struct_end()?;
        o.write_field_end()?;
        o.write_field_stop()?;
        o.write_struct_end()
    })
}

#[test]
fn direct_calls_in_the_compact_protocol_keep_their_responses_compact() {
    // About 200 KB on the wire, under the 1 MiB limit; 1.6 MB in the binary protocol.
    let endpoint = compact_server_with_an_unknown_list(200_000);
    let config = patient()
        .protocol(blocking_thrift::Protocol::Compact)
        .max_message_size(1 << 20);
    let multi = fixed(std::slice::from_ref(&endpoint), config);
    assert_eq!(multi.call(|c| c.retrieve(5)).unwrap().uid, Some(5));
    assert_eq!(multi.direct().retrieve(5).unwrap().uid, Some(5));
    let stats = multi.stats();
    assert_eq!(stats.endpoint(&endpoint).unwrap().successes, 2, "{stats:?}");

    // Service exceptions in the compact protocol are told apart as in the binary one.
    let compact = |name: &str| {
        RefServer::start_on(
            "127.0.0.1:0",
            Transport::Framed,
            blocking_thrift::Protocol::Compact,
            Arc::new(CalculatorService::new(name)),
        )
    };
    let (a, b) = (compact("a"), compact("b"));
    let config = patient()
        .protocol(blocking_thrift::Protocol::Compact)
        .retry_on::<TemporaryUnavailable>();
    let multi = fixed(&[a.endpoint(), b.endpoint()], config);
    let mut direct = multi.direct();
    let err = Error::from(direct.whoami(true).unwrap_err());
    assert_eq!(attempts(&err).len(), 2, "{err}");
    let err = Error::from(direct.retrieve(-3).unwrap_err());
    assert_eq!(
        err.user_exception::<InvalidOperation>().unwrap().what_op,
        Some(-3)
    );
    assert_eq!(direct.whoami(false).unwrap(), "a");
}

#[test]
fn the_deadline_fires_within_milliseconds_of_its_time() {
    let a = named("a");
    // Long enough that a socket's own timeout would fire up to a quarter of a second late on
    // a kernel ticking at 250 Hz, as its timer wheel rounds it up.
    let deadline = Duration::from_millis(2200);
    // Every call overruns, up to three tries of six: the breaker must not open.
    let config = patient()
        .read_timeout(Duration::from_secs(10))
        .deadline(Some(deadline))
        .maxfail(u32::MAX);
    let multi = fixed(&[a.endpoint()], config);
    support::assert_on_time(deadline, move || {
        let err = multi.call(|c| c.slow(3000)).unwrap_err();
        assert!(
            matches!(
                attempts(&err).last(),
                Some((_, Error::Timeout(Timeout::Deadline)))
            ),
            "{err}"
        );
    });
}

#[test]
fn a_connect_the_deadline_cuts_short_is_not_held_against_the_endpoint() {
    let (endpoint, _held) = support::never_accepting();
    // Deadlines that are no whole number of milliseconds, which the connect's wait must not
    // round down.
    for trial in 0..5 {
        let config = ClientConfig::default()
            .connect_timeout(Duration::from_secs(5))
            .deadline(Some(Duration::from_micros(60_950 + 100 * trial)))
            .retries(0)
            .maxfail(0);
        let multi = fixed(std::slice::from_ref(&endpoint), config);
        let err = multi.call(|c| c.ping()).unwrap_err();
        assert!(
            matches!(
                attempts(&err).last(),
                Some((_, Error::Timeout(Timeout::Deadline)))
            ),
            "trial {trial}: {err}"
        );
        let stats = multi.stats();
        let tried = stats.endpoint(&endpoint).unwrap();
        assert_eq!(tried.failures, 0, "trial {trial}: {tried:?}");
        assert_eq!(tried.breaker, BreakerState::Closed, "trial {trial}");
    }
}

#[test]
fn the_deadline_bounds_a_call_across_attempts() {
    let (a, b) = (named("a"), named("b"));
    // Each attempt times out after 400 ms; the deadline stops the call after two seconds,
    // long before the retries or the slow calls would.
    let config = patient()
        .read_timeout(Duration::from_millis(400))
        .retries(100)
        .maxfail(1000)
        .deadline(Some(Duration::from_secs(2)));
    let cycle = [a.endpoint(), b.endpoint()];
    let multi = MultiThriftClient::new(
        move || cycle.clone().into_iter().cycle(),
        CalculatorSyncClient::new,
        config,
    );
    let started = Instant::now();
    let err = multi.call(|c| c.slow(10_000)).unwrap_err();
    let took = started.elapsed();
    let listed = attempts(&err);
    assert!(listed.len() >= 2, "{err}");
    assert!(
        matches!(listed.last(), Some((_, Error::Timeout(Timeout::Deadline)))),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");

    // Direct calls obey it too.
    let started = Instant::now();
    let err = Error::from(multi.direct().slow(10_000).unwrap_err());
    assert!(
        matches!(
            attempts(&err).last(),
            Some((_, Error::Timeout(Timeout::Deadline)))
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    // The part cut short is not held against the endpoint.
    let stats = multi.stats();
    let failures: u64 = stats.endpoints.iter().map(|(_, s)| s.failures).sum();
    let timeouts: u64 = stats
        .endpoints
        .iter()
        .map(|(_, s)| s.response_timeouts)
        .sum();
    assert_eq!(failures, timeouts);
}

#[test]
fn close_ends_every_connection_and_later_calls_fail() {
    let (a, b) = (named("a"), named("b"));
    let turn = Arc::new(AtomicUsize::new(0));
    let multi = {
        let (list, turn) = ([a.endpoint(), b.endpoint()], turn.clone());
        MultiThriftClient::new(
            move || [list[turn.fetch_add(1, Ordering::SeqCst) % 2].clone()],
            CalculatorSyncClient::new,
            patient(),
        )
    };
    multi.call(|c| c.ping()).unwrap();
    multi.call(|c| c.ping()).unwrap();
    assert_eq!(
        (a.open.load(Ordering::SeqCst), b.open.load(Ordering::SeqCst)),
        (1, 1)
    );
    multi.close();
    multi.close();
    assert!(matches!(multi.call(|c| c.ping()), Err(Error::Closed)));
    assert!(matches!(
        Error::from(multi.direct().ping().unwrap_err()),
        Error::Closed
    ));
    assert!(support::wait_until(Duration::from_secs(10), || {
        a.open.load(Ordering::SeqCst) + b.open.load(Ordering::SeqCst) == 0
    }));
    assert!(multi.stats().endpoints.is_empty());
}

#[test]
fn an_operator_can_force_an_endpoint_open_and_reset_it() {
    let (a, b) = (named("a"), named("b"));
    let multi = fixed(&[a.endpoint(), b.endpoint()], patient());
    assert_eq!(multi.call(|c| c.whoami(false)).unwrap(), "a");
    assert_eq!(
        multi.breaker_state(&a.endpoint()),
        Some(BreakerState::Closed)
    );
    assert_eq!(multi.breaker_state(&b.endpoint()), None, "not used yet");
    assert!(
        !multi.force_open(&b.endpoint()),
        "unknown endpoints are left alone"
    );

    assert!(multi.force_open(&a.endpoint()));
    assert_eq!(multi.breaker_state(&a.endpoint()), Some(BreakerState::Open));
    for _ in 0..5 {
        assert_eq!(multi.call(|c| c.whoami(false)).unwrap(), "b");
    }
    let endpoints = multi.endpoints();
    assert_eq!(endpoints, {
        let mut expected = vec![
            (a.endpoint().into(), BreakerState::Open),
            (b.endpoint().into(), BreakerState::Closed),
        ];
        expected.sort_by(|x: &(std::sync::Arc<str>, _), y| x.0.cmp(&y.0));
        expected
    });
    assert!(multi.reset_breaker(&a.endpoint()));
    assert_eq!(multi.call(|c| c.whoami(false)).unwrap(), "a");
    assert_eq!(
        multi.breaker_state(&a.endpoint()),
        Some(BreakerState::Closed)
    );
}

#[test]
fn a_request_shed_for_overload_moves_on_even_when_only_unsent_ones_may() {
    // One worker, held by a slow call; a call queued behind it waits past the 50 ms bound.
    let (overloaded, _) = support::start_server(
        blocking_thrift::ServerConfig::default()
            .workers(1)
            .max_queue_wait(Duration::from_millis(50)),
    );
    let endpoint = overloaded.local_addr().to_string();
    let single: blocking_thrift::ThriftClient<Calc> =
        blocking_thrift::ThriftClient::new(&endpoint, CalculatorSyncClient::new, patient());
    let hold_the_worker = || {
        let single = single.clone();
        let holder = std::thread::spawn(move || single.call(|c| c.slow(400)));
        assert!(support::wait_until(Duration::from_secs(10), || {
            overloaded.stats().busy_workers == 1
        }));
        holder
    };
    let spare = named("spare");
    let config = patient().retry_unsent_only(true).maxfail(0);
    let multi = fixed(&[endpoint.clone(), spare.endpoint()], config);

    // Shed, not run, so retried on the spare endpoint.
    let holder = hold_the_worker();
    assert_eq!(multi.call(|c| c.whoami(false)).unwrap(), "spare");
    assert_eq!(holder.join().unwrap().unwrap(), 400);
    let stats = multi.stats();
    let first = stats.endpoint(&endpoint).unwrap();
    assert_eq!((first.overloaded, first.failures), (1, 0));
    assert_eq!(
        first.breaker,
        BreakerState::Closed,
        "a shed call is no failure"
    );
    assert_eq!(overloaded.stats().shed_requests, 1);

    // Alone, the endpoint's own client reports it as its own kind of error.
    let holder = hold_the_worker();
    let err = single.call(|c| c.add(1, 1)).unwrap_err();
    assert!(
        err.is_overloaded() && err.is_unsent() && !err.may_have_run(),
        "{err}"
    );
    assert!(err.to_string().contains("did not run"), "{err}");
    holder.join().unwrap().unwrap();
    let holder = hold_the_worker();
    let err = single.direct().add(1, 1).unwrap_err();
    let ours = Error::in_direct(&err);
    assert!(
        ours.is_some_and(|e| e.is_overloaded() && e.is_unsent()),
        "{err:?}"
    );
    holder.join().unwrap().unwrap();
    // Counted as what they were, through either way of calling.
    let stats = single.stats();
    assert_eq!((stats.overloaded, stats.application_errors), (2, 0));
}

#[test]
fn an_endpoint_the_deadline_kept_from_being_tried_leaves_the_call_unsent() {
    // The first endpoint refuses; time runs out before the second is tried.
    let (refused, untried) = (support::refused_endpoint(), support::refused_endpoint());
    let multi = MultiThriftClient::new(
        move || {
            let (refused, untried) = (refused.clone(), untried.clone());
            [refused, untried]
                .into_iter()
                .enumerate()
                .map(|(n, endpoint)| {
                    if n == 1 {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    endpoint
                })
        },
        CalculatorSyncClient::new,
        patient()
            .retries(1)
            .deadline(Some(Duration::from_millis(200))),
    );
    let err = multi.call(|c| c.ping()).unwrap_err();
    let tried = attempts(&err);
    assert!(tried.len() == 2 && tried[0].1.is_connect(), "{err}");
    assert!(
        matches!(tried[1].1, Error::Timeout(Timeout::Deadline)),
        "{err}"
    );
    assert!(err.is_unsent() && !err.may_have_run(), "{err}");
    // And a deadline past before the first endpoint: nothing tried, nothing made.
    let late = fixed(
        &[support::refused_endpoint()],
        patient().deadline(Some(Duration::ZERO)),
    );
    let err = late.call(|c| c.ping()).unwrap_err();
    assert!(err.is_unsent() && !err.may_have_run(), "{err}");
    assert!(late.stats().endpoints.is_empty());
}

#[test]
fn a_closed_client_fails_every_later_call_as_closed() {
    // With no endpoint to try, and with a deadline already passed: closed all the same.
    let empty = MultiThriftClient::new(Vec::<String>::new, CalculatorSyncClient::new, patient());
    let late = fixed(
        &[support::refused_endpoint()],
        patient().deadline(Some(Duration::ZERO)),
    );
    for multi in [empty, late] {
        multi.close();
        let err = multi.call(|c| c.ping()).unwrap_err();
        assert!(matches!(err, Error::Closed), "{err:?}");
    }
}

#[test]
fn an_endpoint_made_again_waits_for_the_lookup_its_predecessor_started() {
    // A resolver that hangs, for an endpoint reaped after every call and made again by the
    // next: one lookup at a time, not one more thread per making.
    let lookups = Arc::new(AtomicUsize::new(0));
    let (release, hang) = crossbeam_channel::unbounded::<()>();
    let config = ClientConfig::default()
        .connect_timeout(Duration::from_millis(5))
        .idle_timeout(Duration::ZERO)
        .resolve_with({
            let lookups = lookups.clone();
            move |_| {
                lookups.fetch_add(1, Ordering::SeqCst);
                let _ = hang.recv_timeout(Duration::from_secs(60));
                Ok(Vec::new())
            }
        });
    let multi = MultiThriftClient::new(|| ["hanging.invalid:1"], CalculatorSyncClient::new, config);
    for _ in 0..20 {
        let err = multi.call(|c| c.ping()).unwrap_err();
        assert!(
            matches!(
                attempts(&err).last(),
                Some((_, Error::Timeout(Timeout::Connect)))
            ),
            "{err}"
        );
        multi.reap_idle();
    }
    assert_eq!(lookups.load(Ordering::SeqCst), 1);
    drop(release);
}

#[test]
fn a_retryable_exception_whose_retry_is_refused_reaches_the_caller_typed() {
    let (a, b) = (named("a"), named("b"));
    let config = patient()
        .retry_on::<TemporaryUnavailable>()
        .retry_budget(0.0, 0);
    let multi = fixed(&[a.endpoint(), b.endpoint()], config);
    let err = multi.call(|c| c.whoami(true)).unwrap_err();
    assert!(
        err.user_exception::<TemporaryUnavailable>().is_some(),
        "{err:?}"
    );
    let err = multi.direct().whoami(true).unwrap_err();
    match &err {
        thrift::Error::User(e) => assert!(e.is::<TemporaryUnavailable>(), "{err:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(multi.stats().retries_refused, 2);
}

#[test]
fn a_retry_the_budget_refuses_leaves_the_next_endpoint_alone() {
    let b = named("b");
    let config = patient().retry_budget(0.0, 0);
    let refused = support::refused_endpoint();
    let multi = fixed(&[refused.clone(), b.endpoint()], config);
    let err = multi.call(|c| c.whoami(false)).unwrap_err();
    assert!(err.is_connect(), "{err}");
    let stats = multi.stats();
    assert_eq!((stats.retries, stats.retries_refused), (0, 1));
    // Only the endpoint the call was made on is known: the next was never taken up.
    let known: Vec<_> = stats
        .endpoints
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(known, [refused]);
}

#[test]
fn the_retry_budget_keeps_retries_to_a_share_of_calls() {
    let b = named("b");
    let time = ManualClock::new();
    let config = patient()
        .maxfail(u32::MAX - 1)
        .retry_budget(0.2, 0)
        .clock(time.clock());
    let multi = fixed(&[support::refused_endpoint(), b.endpoint()], config);
    let mut answered = 0;
    for _ in 0..100 {
        match multi.call(|c| c.whoami(false)) {
            Ok(name) => {
                assert_eq!(name, "b");
                answered += 1;
            }
            // Refused a retry: the call fails with its last attempt's error, as itself.
            Err(err) => assert!(err.is_connect(), "{err}"),
        }
    }
    assert!(
        (19..=21).contains(&answered),
        "{answered} calls were retried"
    );
    let stats = multi.stats();
    assert_eq!(stats.retries, answered);
    assert_eq!(stats.retries_refused, 100 - answered);
    // Ten seconds later the calls of the past no longer count either way.
    time.advance(Duration::from_secs(10));
    assert_eq!(multi.call(|c| c.whoami(false)).unwrap(), "b");
}

/// A framed server in `protocol` that answers every call with the service exception
/// `InvalidOperation(whatOp = -1, why = "no")`, carrying besides a field this client's IDL does
/// not have: `3: map<string, string>`, empty (a newer server's, say). The compact protocol
/// writes an empty map without its types.
fn server_raising_with_an_empty_map(protocol: Protocol) -> String {
    use thrift::protocol::{TFieldIdentifier, TMapIdentifier, TStructIdentifier, TType};
    framed_server(protocol, |o| {
        o.write_struct_begin(&TStructIdentifier::new("result"))?;
        o.write_field_begin(&TFieldIdentifier::new("err", TType::Struct, 1))?;
        o.write_struct_begin(&TStructIdentifier::new("InvalidOperation"))?;
        o.write_field_begin(&TFieldIdentifier::new("whatOp", TType::I32, 1))?;
        o.write_i32(-1)?;
        o.write_field_end()?;
        o.write_field_begin(&TFieldIdentifier::new("why", TType::String, 2))?;
        o.write_string("no")?;
        o.write_field_end()?;
        o.write_field_begin(&TFieldIdentifier::new("details", TType::Map, 3))?;
        o.write_map_begin(&TMapIdentifier::new(TType::String, TType::String, 0))?;
        o.write_map_end()?;
        o.write_field_end()?;
        o.write_field_stop()?;
        o.write_struct_end()?;
        o.write_field_end()?;
        o.write_field_stop()?;
        o.write_struct_end()
    })
}

#[test]
fn direct_handles_read_a_compact_exception_holding_an_empty_map() {
    let what_op = |err: thrift::Error| {
        Error::from(err)
            .user_exception::<InvalidOperation>()
            .and_then(|e| e.what_op)
    };
    for protocol in [Protocol::Binary, Protocol::Compact] {
        let endpoint = server_raising_with_an_empty_map(protocol);
        // Declared, so that direct calls look at the exception's encoding (which, with a field
        // the client does not know, is not the declared type's own).
        let config = patient()
            .protocol(protocol)
            .failure_on::<InvalidOperation>()
            .maxfail(u32::MAX);
        let multi = fixed(std::slice::from_ref(&endpoint), config.clone());
        let err = multi.call(|c| c.retrieve(-1)).unwrap_err();
        assert_eq!(
            err.user_exception::<InvalidOperation>()
                .and_then(|e| e.what_op),
            Some(-1),
            "{protocol:?}: {err}"
        );
        assert_eq!(
            multi.direct().retrieve(-1).map_err(what_op).unwrap_err(),
            Some(-1),
            "{protocol:?}"
        );
        let single: blocking_thrift::ThriftClient<Calc> =
            blocking_thrift::ThriftClient::new(&endpoint, CalculatorSyncClient::new, config);
        assert_eq!(
            single.direct().retrieve(-1).map_err(what_op).unwrap_err(),
            Some(-1),
            "{protocol:?}"
        );
    }
}
