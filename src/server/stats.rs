//! What the server counts, and the snapshot of it a user reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use log::warn;

use super::TARGET;
use crate::clock::{monotonic_nanos, nanos};
use crate::counter::Striped;

/// Counters of a [`ThriftServer`](super::ThriftServer), as returned by
/// [`ThriftServer::stats`](super::ThriftServer::stats).
///
/// Counts (`accepted_connections`, `requests`, ...) are totals since the server was created;
/// the others are the state at the moment of the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Worker threads the server runs.
    pub workers: usize,
    /// Workers handling a request right now: from the moment the request goes to the
    /// processor until the socket has taken its response, or what the socket did not take at
    /// once has been left to wait for the client in the poller. A worker waiting for a
    /// connection's next request does not count.
    pub busy_workers: usize,
    /// Client connections open, idle or not.
    pub open_connections: usize,
    /// Open connections waiting in the poller for their client's next request, for the rest
    /// of one, or for their client to take the rest of a response.
    pub idle_connections: usize,
    /// Bytes the buffers of those waiting connections hold, bounded by
    /// [`ServerConfig::max_waiting_bytes`](super::ServerConfig::max_waiting_bytes).
    pub waiting_bytes: usize,
    /// Connections with a request waiting for a free worker (one whose request arrives while
    /// every worker is busy is counted within a millisecond, unless a worker takes it first).
    pub queued_connections: usize,
    /// Connections accepted, including those closed at once for being over the limit.
    pub accepted_connections: u64,
    /// Connections closed at once because `max_connections` were already open.
    pub rejected_connections: u64,
    /// Requests handed to the processor.
    pub requests: u64,
    /// Requests whose arguments could not be decoded (bad sizes, types, nesting or UTF-8): each
    /// got an error reply, and on the buffered transport its connection was closed.
    pub bad_requests: u64,
    /// Connections closed because of bad input, a timeout, a failed read or write, or a
    /// panicking handler (but not idle or closed by their client).
    pub errors: u64,
    /// Requests whose handler panicked.
    pub panics: u64,
    /// Requests not run because nobody could use their answers any more: their client closed
    /// the connection while they waited for a worker, or they waited longer than
    /// [`ServerConfig::max_queue_wait`](super::ServerConfig::max_queue_wait) (those got a
    /// `TApplicationException` saying so).
    pub shed_requests: u64,
}

/// How often at most the server logs that it shed requests.
const SHED_LOG_EVERY: Duration = Duration::from_secs(1);

/// The counters behind [`ServerStats`], bumped by the poller and the workers.
#[derive(Default)]
pub(super) struct StatCounters {
    accepted: AtomicU64,
    /// Requests shed: not run, because their client had left or they waited too long.
    shed: AtomicU64,
    /// Shed requests not yet reported in the log, and when it last reported some.
    shed_unlogged: AtomicU64,
    shed_logged_at: AtomicU64,
    bad_requests: AtomicU64,
    rejected: AtomicU64,
    /// Bumped by every request: striped, so that workers on different CPUs do not pass one
    /// cache line back and forth.
    requests: Striped,
    errors: AtomicU64,
    panics: AtomicU64,
    /// Workers running the processor; striped as `requests` is.
    busy: Striped,
}

impl StatCounters {
    #[inline]
    pub(super) fn count_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(super) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed for an error.
    #[inline]
    pub(super) fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(super) fn count_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(super) fn count_bad_request(&self) {
        self.bad_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request handed to the processor, its worker busy until
    /// [`request_sent`](Self::request_sent).
    #[inline]
    pub(super) fn request_starts(&self) {
        self.busy.bump();
        self.requests.bump();
    }

    /// Notes that a worker is done with its request's response.
    #[inline]
    pub(super) fn request_sent(&self) {
        self.busy.unbump();
    }

    /// Counts a request shed.
    #[inline]
    pub(super) fn count_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        self.shed_unlogged.fetch_add(1, Ordering::Relaxed);
    }

    /// Says in the log that requests were shed (`shed` of them just now, already counted), at
    /// most once a second, however many.
    pub(super) fn log_shed(&self, shed: u64, waited: Duration, max_queue_wait: Duration) {
        if shed == 0 {
            return;
        }
        let now = monotonic_nanos();
        let last = self.shed_logged_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= nanos(SHED_LOG_EVERY)
            && self
                .shed_logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let count = self.shed_unlogged.swap(0, Ordering::Relaxed);
            warn!(
                target: TARGET,
                "overloaded: shed {count} request(s) since the last report, whose clients had left or which waited longer than {max_queue_wait:?} for a worker (the latest {waited:?})"
            );
        }
    }

    /// The counts of a [`ServerStats`]; the caller fills in the rest.
    pub(super) fn snapshot(&self) -> ServerStats {
        ServerStats {
            busy_workers: self.busy.get() as usize,
            accepted_connections: self.accepted.load(Ordering::Relaxed),
            rejected_connections: self.rejected.load(Ordering::Relaxed),
            requests: self.requests.get(),
            bad_requests: self.bad_requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            shed_requests: self.shed.load(Ordering::Relaxed),
            ..ServerStats::default()
        }
    }
}
