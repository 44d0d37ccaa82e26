//! The circuit breaker: a small state machine behind a mutex.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::client::config::ClientConfig;
use crate::clock::{Clock, Epoch, LONGEST};

/// Where a circuit breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; failures are being counted.
    Closed,
    /// Calls are rejected without touching the network until the reset timeout passes.
    Open,
    /// One probe call is under way or may start; everyone else is rejected.
    HalfOpen,
}

/// Permission to make one call, from [`Breaker::acquire`].
#[derive(Debug)]
#[must_use]
pub(crate) struct Permit {
    /// For a probe, its number: only the probe a half-open breaker waits for decides it, not
    /// one let through before the breaker was reset and opened again.
    probe: Option<u64>,
}

/// The breaker's state with what it keeps in it: the failures counted while closed, the end
/// of an open period, the probe under way while half open.
#[derive(Debug)]
enum Circuit {
    Closed {
        failures: VecDeque<Instant>,
    },
    Open {
        until: Instant,
        trips: u32,
    },
    /// `probe`: the number of the probe under way, if one is.
    HalfOpen {
        probe: Option<u64>,
        trips: u32,
    },
}

/// A state change worth logging, decided under the lock and logged after it.
enum Change {
    Opened(Duration),
    Probing,
    Reopened(Duration),
    Closed,
}

/// Settings copied out of the client configuration.
#[derive(Clone, Debug)]
struct Settings {
    maxfail: u32,
    time_unit: Duration,
    reset_timeout: Duration,
    backoff: Option<(f64, Duration)>,
    jitter: f64,
}

/// The failure timestamps of a closed breaker: room for the usual `maxfail` up front, but no
/// more than a little, so that a huge `maxfail` (to mean "never open") costs nothing until
/// failures really come.
fn window(maxfail: u32) -> VecDeque<Instant> {
    VecDeque::with_capacity((maxfail as usize).saturating_add(1).min(32))
}

/// The `gate` of a closed breaker: every call passes.
const GATE_OPEN: u64 = 0;

/// The `gate` while a probe is under way: every other call is rejected.
const GATE_SHUT: u64 = u64::MAX;

/// The `gate` of a half-open breaker whose probe gave up its turn: the next caller asks.
const GATE_ASK: u64 = 1;

/// Counts failures of one endpoint and opens when more than `maxfail` of them fall within
/// `time_unit`; after `reset_timeout` it lets exactly one probe through.
pub(crate) struct Breaker {
    endpoint: Arc<str>,
    settings: Settings,
    clock: Clock,
    /// The clock's time when the breaker was made; `gate` counts from it.
    epoch: Epoch,
    /// Mirrors `state` so that most calls need not take the lock: [`GATE_OPEN`] while closed
    /// (calls pass), else calls before this many nanoseconds after `epoch` are rejected, and
    /// later ones ask under the lock.
    gate: AtomicU64,
    state: Mutex<Circuit>,
    /// Probes let through so far, which numbers them.
    probes: AtomicU64,
    rng: Mutex<u64>,
}

impl Breaker {
    pub(crate) fn new(endpoint: Arc<str>, config: &ClientConfig) -> Breaker {
        let seed = config.get_clock().now().elapsed().as_nanos() as u64
            ^ endpoint.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        Breaker {
            endpoint,
            settings: Settings {
                maxfail: config.get_maxfail(),
                time_unit: config.get_time_unit(),
                reset_timeout: config.get_reset_timeout(),
                backoff: config.get_reset_backoff(),
                jitter: config.get_reset_jitter(),
            },
            clock: config.get_clock().clone(),
            epoch: Epoch::new(config.get_clock().now()),
            gate: AtomicU64::new(GATE_OPEN),
            state: Mutex::new(Circuit::Closed {
                failures: window(config.get_maxfail()),
            }),
            probes: AtomicU64::new(0),
            rng: Mutex::new(seed | 1),
        }
    }

    /// The current state.
    pub(crate) fn state(&self) -> BreakerState {
        match *self.state.lock() {
            Circuit::Closed { .. } => BreakerState::Closed,
            Circuit::Open { .. } => BreakerState::Open,
            Circuit::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Nanoseconds from `epoch` to `at`, plus one, so that no time reads as [`GATE_OPEN`].
    fn ticks(&self, at: Instant) -> u64 {
        self.epoch.nanos(at).saturating_add(1).min(GATE_SHUT - 1)
    }

    /// Asks to make a call; `None` means the breaker rejects it.
    pub(crate) fn acquire(&self) -> Option<Permit> {
        let gate = self.gate.load(Ordering::Acquire);
        if gate == GATE_OPEN {
            return Some(Permit { probe: None });
        }
        let now = self.clock.now();
        if self.ticks(now) < gate {
            return None;
        }
        let mut state = self.state.lock();
        let (permit, change) = match &mut *state {
            Circuit::Closed { .. } => (Some(Permit { probe: None }), None),
            Circuit::Open { until, trips } if now >= *until => {
                let probe = self.next_probe();
                *state = Circuit::HalfOpen {
                    probe: Some(probe),
                    trips: *trips,
                };
                self.gate.store(GATE_SHUT, Ordering::Release);
                (Some(Permit { probe: Some(probe) }), Some(Change::Probing))
            }
            Circuit::Open { .. } => (None, None),
            Circuit::HalfOpen { probe: waiting, .. } if waiting.is_none() => {
                let probe = self.next_probe();
                *waiting = Some(probe);
                self.gate.store(GATE_SHUT, Ordering::Release);
                (Some(Permit { probe: Some(probe) }), None)
            }
            Circuit::HalfOpen { .. } => (None, None),
        };
        drop(state);
        self.log(change);
        permit
    }

    fn next_probe(&self) -> u64 {
        self.probes.fetch_add(1, Ordering::Relaxed)
    }

    /// Reports how the permitted call went.
    pub(crate) fn record(&self, permit: Permit, failed: bool) {
        if permit.probe.is_none() && !failed {
            return;
        }
        if permit.probe.is_none() && self.gate.load(Ordering::Acquire) != GATE_OPEN {
            // An ordinary call finishing after the breaker opened changes nothing.
            return;
        }
        let now = self.clock.now();
        let mut state = self.state.lock();
        let change = match &mut *state {
            Circuit::HalfOpen { probe, trips }
                if permit.probe.is_some() && *probe == permit.probe =>
            {
                if failed {
                    let trips = trips.saturating_add(1);
                    let period = self.open_period(trips);
                    *state = Circuit::Open {
                        until: now + period,
                        trips,
                    };
                    self.gate.store(self.ticks(now + period), Ordering::Release);
                    Some(Change::Reopened(period))
                } else {
                    *state = Circuit::Closed {
                        failures: window(self.settings.maxfail),
                    };
                    self.gate.store(GATE_OPEN, Ordering::Release);
                    Some(Change::Closed)
                }
            }
            Circuit::Closed { failures } if failed => {
                while failures
                    .front()
                    .is_some_and(|&t| now.saturating_duration_since(t) >= self.settings.time_unit)
                {
                    failures.pop_front();
                }
                failures.push_back(now);
                if failures.len() > self.settings.maxfail as usize {
                    let period = self.open_period(0);
                    *state = Circuit::Open {
                        until: now + period,
                        trips: 0,
                    };
                    self.gate.store(self.ticks(now + period), Ordering::Release);
                    Some(Change::Opened(period))
                } else {
                    None
                }
            }
            // An ordinary call finishing after the breaker opened changes nothing.
            _ => None,
        };
        drop(state);
        self.log(change);
    }

    /// Gives back a permit whose call never reached an outcome (its caller panicked): a
    /// probe's turn passes to the next caller.
    pub(crate) fn release(&self, permit: Permit) {
        if permit.probe.is_none() {
            return;
        }
        if let Circuit::HalfOpen { probe, .. } = &mut *self.state.lock() {
            if *probe == permit.probe {
                *probe = None;
                self.gate.store(GATE_ASK, Ordering::Release);
            }
        }
    }

    /// Opens the breaker until [`reset`](Self::reset), whatever happens meanwhile (Hystrix's
    /// `forceOpen`): an operator taking the endpoint out of use.
    pub(crate) fn force_open(&self) {
        let mut state = self.state.lock();
        let trips = match &*state {
            Circuit::Open { trips, .. } | Circuit::HalfOpen { trips, .. } => *trips,
            Circuit::Closed { .. } => 0,
        };
        *state = Circuit::Open {
            // Never reached: only `reset` ends it.
            until: self.clock.now() + LONGEST,
            trips,
        };
        self.gate.store(GATE_SHUT, Ordering::Release);
        drop(state);
        log::warn!(target: "blocking_thrift::breaker", "{}: circuit forced open", self.endpoint);
    }

    /// Closes the breaker and forgets the failures counted so far.
    pub(crate) fn reset(&self) {
        // The gate under the lock, as every change of state sets it: stored after the lock
        // was let go, it could undo the gate of a change made meanwhile (forced or opened).
        let mut state = self.state.lock();
        *state = Circuit::Closed {
            failures: window(self.settings.maxfail),
        };
        self.gate.store(GATE_OPEN, Ordering::Release);
        drop(state);
        log::info!(target: "blocking_thrift::breaker", "{}: circuit reset to closed", self.endpoint);
    }

    fn open_period(&self, trips: u32) -> Duration {
        let base = self.settings.reset_timeout;
        let period = match self.settings.backoff {
            // Grown in floating point: a long outage's growth can pass what a `Duration` holds.
            Some((factor, cap)) => {
                Duration::try_from_secs_f64(base.as_secs_f64() * factor.powi(trips.min(64) as i32))
                    .unwrap_or(LONGEST)
                    .min(cap.max(base))
            }
            None => base,
        };
        if self.settings.jitter == 0.0 {
            return period;
        }
        let mut x = self.rng.lock();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let unit = (*x >> 11) as f64 / (1u64 << 53) as f64; // in [0, 1)
        period
            .mul_f64(1.0 + self.settings.jitter * (2.0 * unit - 1.0))
            .min(LONGEST)
    }

    fn log(&self, change: Option<Change>) {
        let endpoint = &self.endpoint;
        match change {
            None => {}
            Some(Change::Opened(period)) => log::warn!(
                target: "blocking_thrift::breaker",
                "{endpoint}: circuit opened after more than {} failures within {:?}; retrying in {period:?}",
                self.settings.maxfail,
                self.settings.time_unit
            ),
            Some(Change::Probing) => {
                log::info!(target: "blocking_thrift::breaker", "{endpoint}: circuit half-open, sending one probe")
            }
            Some(Change::Reopened(period)) => log::warn!(
                target: "blocking_thrift::breaker",
                "{endpoint}: probe failed, circuit re-opened for {period:?}"
            ),
            Some(Change::Closed) => {
                log::info!(target: "blocking_thrift::breaker", "{endpoint}: probe succeeded, circuit closed")
            }
        }
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("endpoint", &self.endpoint)
            .field("state", &self.state())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn breaker(config: ClientConfig) -> (Breaker, ManualClock) {
        let time = ManualClock::new();
        (
            Breaker::new("test:1".into(), &config.clock(time.clock())),
            time,
        )
    }

    fn fail(b: &Breaker) {
        let permit = b.acquire().expect("breaker should let the call through");
        b.record(permit, true);
    }

    #[test]
    fn forced_open_it_rejects_everything_until_reset() {
        let (b, clock) = breaker(ClientConfig::default());
        b.force_open();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire().is_none());
        // No probe, however long it stays open.
        clock.advance(Duration::from_secs(24 * 3600));
        assert!(b.acquire().is_none());
        b.reset();
        assert_eq!(b.state(), BreakerState::Closed);
        // The failures before it are forgotten: three more are tolerated.
        for _ in 0..3 {
            fail(&b);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        b.reset();
        assert!(b.acquire().is_some());
    }

    #[test]
    fn opens_on_more_than_maxfail_failures_within_the_window() {
        let (b, _clock) = breaker(ClientConfig::default());
        for _ in 0..3 {
            fail(&b);
            assert_eq!(b.state(), BreakerState::Closed);
        }
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire().is_none());
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let (b, clock) = breaker(ClientConfig::default());
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(60));
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_zero_time_unit_counts_each_failure_alone() {
        let (b, _clock) = breaker(ClientConfig::default().time_unit(Duration::ZERO));
        for _ in 0..10 {
            fail(&b);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let (b, _clock) = breaker(ClientConfig::default().time_unit(Duration::ZERO).maxfail(0));
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn a_zero_reset_timeout_probes_on_the_next_call() {
        let config = ClientConfig::default()
            .maxfail(0)
            .reset_timeout(Duration::ZERO)
            .reset_backoff(2.0, Duration::ZERO);
        let (b, _clock) = breaker(config);
        fail(&b);
        for _ in 0..3 {
            assert_eq!(b.state(), BreakerState::Open);
            let probe = b.acquire().expect("a probe at once");
            assert!(b.acquire().is_none(), "only one probe at a time");
            b.record(probe, true);
        }
    }

    #[test]
    fn one_probe_after_reset_timeout_then_closes_on_success() {
        let (b, clock) = breaker(ClientConfig::default().maxfail(0));
        fail(&b);
        clock.advance(Duration::from_millis(9_999));
        assert!(b.acquire().is_none());
        clock.advance(Duration::from_millis(1));
        let probe = b.acquire().expect("probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.acquire().is_none(), "only one probe at a time");
        b.record(probe, false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.acquire().is_some());
    }

    #[test]
    fn failed_probe_reopens_with_backoff_up_to_the_cap() {
        let config = ClientConfig::default()
            .maxfail(0)
            .reset_backoff(2.0, Duration::from_secs(30));
        let (b, clock) = breaker(config);
        fail(&b);
        let mut waits = Vec::new();
        for _ in 0..4 {
            let mut waited = Duration::ZERO;
            let probe = loop {
                if let Some(p) = b.acquire() {
                    break p;
                }
                clock.advance(Duration::from_secs(1));
                waited += Duration::from_secs(1);
            };
            waits.push(waited.as_secs());
            b.record(probe, true);
        }
        assert_eq!(waits, [10, 20, 30, 30]);
    }

    #[test]
    fn a_long_outage_keeps_the_open_period_at_the_cap() {
        let config = ClientConfig::default()
            .maxfail(0)
            .reset_backoff(10.0, Duration::from_secs(30))
            .reset_jitter(1.0);
        let (b, clock) = breaker(config);
        fail(&b);
        // Days of failed probes: the period grows past what a `Duration` holds, and stays
        // capped.
        for _ in 0..100 {
            clock.advance(Duration::from_secs(60));
            let probe = b.acquire().expect("a probe after the longest open period");
            b.record(probe, true);
            assert_eq!(b.state(), BreakerState::Open);
        }
        for trips in [64, 1000, u32::MAX] {
            assert!(b.open_period(trips) <= Duration::from_secs(60));
        }
    }

    #[test]
    fn an_endless_reset_timeout_keeps_the_breaker_open() {
        let config = ClientConfig::default()
            .maxfail(0)
            .reset_timeout(Duration::MAX)
            .reset_backoff(2.0, Duration::MAX)
            .reset_jitter(0.5);
        let (b, clock) = breaker(config);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(10 * 365 * 24 * 3600));
        assert!(b.acquire().is_none());
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let (b, _clock) = breaker(ClientConfig::default().reset_jitter(0.5));
        for _ in 0..100 {
            let p = b.open_period(0);
            assert!(
                p >= Duration::from_secs(5) && p <= Duration::from_secs(15),
                "{p:?}"
            );
        }
    }

    #[test]
    fn released_probe_lets_the_next_caller_probe() {
        let (b, clock) = breaker(ClientConfig::default().maxfail(0));
        fail(&b);
        clock.advance(Duration::from_secs(10));
        let probe = b.acquire().unwrap();
        b.release(probe);
        assert!(b.acquire().is_some());
    }

    #[test]
    fn a_probe_from_before_a_reset_decides_nothing() {
        let (b, clock) = breaker(ClientConfig::default().maxfail(0));
        fail(&b);
        clock.advance(Duration::from_secs(10));
        let stale = b.acquire().expect("probe");
        // An operator resets the breaker while that probe is under way; the endpoint fails
        // again, and the new half-open period sends a probe of its own.
        b.reset();
        fail(&b);
        clock.advance(Duration::from_secs(10));
        let probe = b.acquire().expect("probe of the new half-open period");
        b.record(stale, false);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.acquire().is_none(), "one probe at a time");
        b.record(probe, false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_stale_probe_giving_up_lets_no_second_probe_through() {
        let (b, clock) = breaker(ClientConfig::default().maxfail(0));
        fail(&b);
        clock.advance(Duration::from_secs(10));
        let stale = b.acquire().expect("probe");
        b.reset();
        fail(&b);
        clock.advance(Duration::from_secs(10));
        let probe = b.acquire().expect("probe of the new half-open period");
        b.release(stale);
        assert!(b.acquire().is_none(), "one probe at a time");
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Open);
    }
}
