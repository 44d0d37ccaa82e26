//! The thread that closes a multi-endpoint client's idle endpoints.

#[cfg(test)]
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

const TARGET: &str = "blocking_thrift::multi";

/// The thread that closes idle endpoints, and what stops it.
pub(super) struct Reaper {
    /// Dropped to stop the thread.
    stop: Sender<()>,
    thread: JoinHandle<()>,
    /// Lets tests see the thread's end: it holds the only strong reference.
    #[cfg(test)]
    pub(super) running: Weak<()>,
}

impl Reaper {
    /// Starts a thread that calls `reap` every `every`, until the reaper is stopped or `reap`
    /// says the client is gone.
    pub(super) fn start(
        every: Duration,
        mut reap: impl FnMut() -> bool + Send + 'static,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        #[cfg(test)]
        let (running, alive) = {
            let alive = Arc::new(());
            (Arc::downgrade(&alive), alive)
        };
        let thread = thread::Builder::new()
            .name("blocking-thrift-reaper".to_owned())
            .spawn(move || {
                #[cfg(test)]
                let _alive = alive;
                loop {
                    match stopped.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    if !reap() {
                        return;
                    }
                }
            })?;
        Ok(Reaper {
            stop,
            thread,
            #[cfg(test)]
            running,
        })
    }

    /// Stops the thread and waits for it, unless this is that thread (it dropped the last
    /// clone of the client): then it exits by itself as this returns.
    pub(super) fn stop(self) {
        drop(self.stop);
        if self.thread.thread().id() != thread::current().id() && self.thread.join().is_err() {
            log::error!(target: TARGET, "the reaper thread panicked");
        }
    }
}

/// How often the reaper looks for idle endpoints: an eighth of `idle_timeout`, so an endpoint
/// is reaped at most that late, but no more often than every millisecond, and at least every
/// second.
pub(super) fn reap_every(idle_timeout: Duration) -> Duration {
    (idle_timeout / 8).clamp(Duration::from_millis(1), Duration::from_secs(1))
}
