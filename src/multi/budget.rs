//! The retry budget (Finagle's): over a sliding window, retries may be at most a share of the
//! calls made, plus a small floor per second, so that while an endpoint is down retries cannot
//! multiply the load on the others.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{Clock, Epoch};

/// Seconds of history the budget keeps.
const WINDOW_SECS: u64 = 10;

/// One second's calls and retries.
#[derive(Default)]
struct Bucket {
    /// Which second (since the epoch) the counts are of, plus one; 0: none yet.
    second: AtomicU64,
    calls: AtomicU64,
    retries: AtomicU64,
}

/// Counts calls and retries per second of the client's clock. Approximate under races
/// between threads (a second's counts may lose one or two), which a budget can afford.
pub(crate) struct RetryBudget {
    share: f64,
    floor: u64,
    clock: Clock,
    epoch: Epoch,
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl RetryBudget {
    /// Retries may be `share` of the calls plus `per_second` a second, over the last
    /// ten seconds of `clock`.
    pub(crate) fn new(share: f64, per_second: u32, clock: Clock) -> Self {
        RetryBudget {
            share,
            floor: u64::from(per_second) * WINDOW_SECS,
            epoch: Epoch::new(clock.now()),
            clock,
            buckets: Default::default(),
        }
    }

    fn second(&self) -> u64 {
        self.epoch.nanos(self.clock.now()) / 1_000_000_000 + 1
    }

    /// The bucket of `second`, emptied first if it holds an older second.
    fn bucket(&self, second: u64) -> &Bucket {
        let bucket = &self.buckets[(second % WINDOW_SECS) as usize];
        let held = bucket.second.load(Ordering::Relaxed);
        if held != second
            && bucket
                .second
                .compare_exchange(held, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            bucket.calls.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        bucket
    }

    /// Counts a call.
    pub(crate) fn deposit(&self) {
        let second = self.second();
        self.bucket(second).calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry out of the budget; `false` if it has none left.
    pub(crate) fn try_withdraw(&self) -> bool {
        let second = self.second();
        let (mut calls, mut retries) = (0u64, 0u64);
        for bucket in &self.buckets {
            let held = bucket.second.load(Ordering::Relaxed);
            if held != 0 && held + WINDOW_SECS > second {
                calls += bucket.calls.load(Ordering::Relaxed);
                retries += bucket.retries.load(Ordering::Relaxed);
            }
        }
        // An infinite share lifts the budget, also when no call is in the window to multiply
        // (the call retrying may have begun before it): infinity times zero is no number.
        let allowed = if self.share.is_infinite() {
            f64::INFINITY
        } else {
            self.share * calls as f64 + self.floor as f64
        };
        if (retries as f64) < allowed {
            self.bucket(second).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::time::Duration;

    #[test]
    fn retries_are_a_share_of_calls() {
        let time = ManualClock::new();
        let budget = RetryBudget::new(0.2, 0, time.clock());
        let mut retried = 0;
        for _ in 0..100 {
            budget.deposit();
            if budget.try_withdraw() {
                retried += 1;
            }
        }
        assert!((19..=21).contains(&retried), "{retried}");
    }

    #[test]
    fn a_floor_per_second_allows_retries_with_few_calls_and_the_window_slides() {
        let time = ManualClock::new();
        let budget = RetryBudget::new(0.0, 2, time.clock());
        let allowed = (0..50).filter(|_| budget.try_withdraw()).count();
        assert_eq!(allowed, 20, "2 a second over a 10 s window");
        time.advance(Duration::from_secs(5));
        assert!(!budget.try_withdraw(), "still within the window");
        time.advance(Duration::from_secs(5));
        assert_eq!((0..50).filter(|_| budget.try_withdraw()).count(), 20);
    }

    #[test]
    fn an_infinite_share_allows_every_retry() {
        let time = ManualClock::new();
        let budget = RetryBudget::new(f64::INFINITY, 0, time.clock());
        budget.deposit();
        assert!((0..1000).all(|_| budget.try_withdraw()));
        // Also for a call begun longer ago than the window: no call is left in it.
        time.advance(Duration::from_secs(11));
        assert!(budget.try_withdraw());
    }
}
