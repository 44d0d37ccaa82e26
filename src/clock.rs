//! The clock that breakers and endpoint reaping read.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Where breakers and idle-endpoint reaping get the time from.
///
/// Defaults to [`Instant::now`]. Tests hand in a clock they step by hand, so that breaker
/// windows and idle timeouts pass without sleeping. Socket timeouts always use real time.
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
