//! The clock that breakers and endpoint reaping read.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The longest duration a setting holds: a century, so that any instant computed from one is
/// still representable. Longer ones, `Duration::MAX` for "never" included, are taken as this.
pub(crate) const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The shortest timeout either side keeps: the server's timers' resolution.
pub(crate) const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// A timeout setting's value: refused if zero, else at least [`MIN_TIMEOUT`] and at most
/// [`LONGEST`].
pub(crate) fn valid_timeout(timeout: Duration, setting: &str) -> Duration {
    assert!(!timeout.is_zero(), "{setting} must be longer than zero");
    timeout.clamp(MIN_TIMEOUT, LONGEST)
}

/// Where breakers and idle-endpoint reaping get the time from.
///
/// Defaults to [`Instant::now`]. Tests hand in a clock they step by hand, a [`ManualClock`],
/// so that breaker windows and idle timeouts pass without sleeping. Socket timeouts always use
/// real time.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<dyn Fn() -> Instant + Send + Sync>>);

impl Clock {
    /// The system's monotonic clock.
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock that asks `now` for the time.
    pub fn from_fn(now: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        Clock(Some(Arc::new(now)))
    }

    /// The current time on this clock.
    pub fn now(&self) -> Instant {
        match &self.0 {
            None => Instant::now(),
            Some(now) => now(),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Clock(custom)"
        } else {
            "Clock(system)"
        })
    }
}

/// A clock that moves only when told to, for testing breaker settings and idle timeouts
/// without sleeping through them, as tokio's `time::pause` and `time::advance` do for its
/// timers.
///
/// ```
/// use std::time::Duration;
/// use blocking_thrift::{ClientConfig, ManualClock};
///
/// let time = ManualClock::new();
/// let config = ClientConfig::default().clock(time.clock());
/// // ... open the breaker ...
/// time.advance(Duration::from_secs(10)); // the reset timeout has passed
/// ```
///
/// Clones move together.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<Instant>>);

impl ManualClock {
    /// A clock standing at the real time now.
    pub fn new() -> Self {
        ManualClock(Arc::new(Mutex::new(Instant::now())))
    }

    /// The [`Clock`] to hand to a configuration; it reads this clock.
    pub fn clock(&self) -> Clock {
        let now = self.0.clone();
        Clock::from_fn(move || *now.lock())
    }

    /// Moves the clock forward by `by`, at most a century at a time, as the crate keeps
    /// every duration (`Duration::MAX` moves it a century).
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock();
        *now = now.checked_add(by.min(LONGEST)).unwrap_or(*now);
    }

    /// The time the clock stands at.
    pub fn now(&self) -> Instant {
        *self.0.lock()
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

/// The nanoseconds in `duration`, saturating at `u64::MAX` (over 580 years).
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A fixed instant that later times are counted from in nanoseconds, so that a time fits in
/// one atomic integer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epoch(Instant);

impl Epoch {
    pub(crate) fn new(at: Instant) -> Self {
        Epoch(at)
    }

    /// Nanoseconds from the epoch to `at`: 0 for a time before it.
    pub(crate) fn nanos(self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.0))
    }
}

/// The monotonic clock that [`Instant`] reads, in nanoseconds: a call's deadline, as one
/// integer, is cheap to store, compare and share between threads. Read directly, since
/// turning an `Instant` into nanoseconds costs several times the read itself.
pub(crate) fn monotonic_nanos() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_move_with_it() {
        let time = ManualClock::new();
        let clock = time.clock();
        let start = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(clock.now(), start);
        time.clone().advance(Duration::from_secs(60));
        assert_eq!(clock.now(), start + Duration::from_secs(60));
        assert_eq!(time.now(), clock.now());
        // Never past what the crate's arithmetic holds.
        time.advance(Duration::MAX);
        assert_eq!(clock.now(), start + Duration::from_secs(60) + LONGEST);
    }

    #[test]
    fn epochs_count_nanoseconds_and_never_go_negative() {
        let start = Instant::now();
        let epoch = Epoch::new(start);
        assert_eq!(epoch.nanos(start), 0);
        assert_eq!(epoch.nanos(start + Duration::from_millis(3)), 3_000_000);
        let later = Epoch::new(start + Duration::from_secs(1));
        assert_eq!(later.nanos(start), 0);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        let (a, b) = (monotonic_nanos(), monotonic_nanos());
        assert!(b >= a);
    }
}
