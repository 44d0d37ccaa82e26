//! A counter that many threads bump at once without sharing a cache line.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many stripes a [`Striped`] counter has: enough that the threads of a busy process
/// rarely share one.
const STRIPES: usize = 8;

/// A counter on one cache line, so that its neighbours do not slow it down.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// A counter split over several cache lines; each thread bumps its own stripe, and reading it
/// adds them up. For counters on paths that threads run at once and that must stay cheap, such
/// as calls turned away by an open breaker.
#[derive(Debug, Default)]
pub(crate) struct Striped([Stripe; STRIPES]);

impl Striped {
    pub(crate) fn bump(&self) {
        self.0[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one off, for a count that goes down as well as up (how many workers are busy). A
    /// stripe may wrap below zero when another thread added the one taken off; the sum is
    /// still right.
    pub(crate) fn unbump(&self) {
        self.0[stripe()].0.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0, |sum, s| sum.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

/// This thread's stripe: threads are numbered as they first ask, in turn.
fn stripe() -> usize {
    use std::cell::Cell;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static STRIPE: Cell<Option<usize>> = const { Cell::new(None) };
    }
    STRIPE.with(|s| match s.get() {
        Some(stripe) => stripe,
        None => {
            let stripe = (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % STRIPES;
            s.set(Some(stripe));
            stripe
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_bump_from_every_thread() {
        let counter = Striped::default();
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        counter.bump();
                    }
                });
            }
        });
        assert_eq!(counter.get(), 12_000);
    }

    #[test]
    fn a_count_taken_down_on_another_thread_still_adds_up() {
        let busy = Striped::default();
        busy.bump();
        busy.bump();
        std::thread::scope(|s| {
            s.spawn(|| busy.unbump());
        });
        assert_eq!(busy.get(), 1);
        busy.unbump();
        assert_eq!(busy.get(), 0);
    }
}
