//! The single-endpoint client, and the parts every client is made of: its configuration,
//! connection pool, connections, circuit breaker, and direct-call handle.

pub(crate) mod breaker;
pub(crate) mod config;
pub(crate) mod connection;
pub(crate) mod direct;
pub(crate) mod pool;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use scheduled_thread_pool::{OnPoolDropBehavior, ScheduledThreadPool};

use self::breaker::{Breaker, BreakerState, Permit};
use self::config::ClientConfig;
use self::direct::Direct;
use self::pool::{within, Checkout, MakeClient, Pool};
use crate::counter::Striped;
use crate::error::{Error, Timeout};
use crate::wire::{InputProtocol, OutputProtocol};

/// A client for one Thrift endpoint, with a connection pool, a timeout on every phase of a
/// call and a circuit breaker.
///
/// `C` is the client type that `thrift --gen rs` generates, over this crate's protocols:
/// `CalculatorSyncClient<InputProtocol, OutputProtocol>`. Clones share the pool and breaker;
/// the client is `Send + Sync` and meant to be shared between threads.
///
/// Building a client opens no connection; they are opened on demand, up to `pool_size`, and
/// reused across calls and threads. Call [`close`](Self::close) when done.
pub struct ThriftClient<C: Send + 'static> {
    pub(crate) inner: Arc<Inner<C>>,
}

pub(crate) struct Inner<C: Send + 'static> {
    pub(crate) endpoint: Arc<str>,
    pub(crate) config: ClientConfig,
    pub(crate) pool: Pool<C>,
    pub(crate) breaker: Breaker,
    stats: Counters,
}

impl<C: Send + 'static> Clone for ThriftClient<C> {
    fn clone(&self) -> Self {
        ThriftClient {
            inner: self.inner.clone(),
        }
    }
}

/// A snapshot of a client's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Calls started, whatever became of them.
    pub calls: u64,
    /// Calls that returned a value.
    pub successes: u64,
    /// Calls answered with one of the service's own exceptions.
    pub user_exceptions: u64,
    /// Calls that failed in a way the breaker counts.
    pub failures: u64,
    /// Connections that could not be opened (refused, unreachable).
    pub connect_errors: u64,
    /// Connections that did not open within `connect_timeout`.
    pub connect_timeouts: u64,
    /// Calls that found no free connection within `pool_timeout`.
    pub pool_timeouts: u64,
    /// Calls whose response did not arrive within `read_timeout`.
    pub response_timeouts: u64,
    /// Calls whose connection failed under them.
    pub transport_errors: u64,
    /// Calls whose response did not decode.
    pub protocol_errors: u64,
    /// Calls the server answered with a `TApplicationException`.
    pub application_errors: u64,
    /// Calls rejected at once by the open breaker.
    pub rejected: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Open connections not serving a call now.
    pub connections_idle: u64,
    /// The breaker's state now.
    pub breaker: BreakerState,
}

#[derive(Debug, Default)]
struct Counters {
    /// Calls the breaker let through (or refused for a closed client); see `stats`.
    calls: Striped,
    successes: Striped,
    user_exceptions: AtomicU64,
    failures: AtomicU64,
    connect_errors: AtomicU64,
    connect_timeouts: AtomicU64,
    pool_timeouts: AtomicU64,
    response_timeouts: AtomicU64,
    transport_errors: AtomicU64,
    protocol_errors: AtomicU64,
    application_errors: AtomicU64,
    /// Bumped by every thread a rejection turns away, so striped.
    rejected: Striped,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A timeout that struck once `deadline` had passed is the deadline's doing.
pub(crate) fn past_deadline(err: Error, deadline: Option<Instant>) -> Error {
    match deadline {
        Some(at) if err.is_timeout() && Instant::now() >= at => Error::Timeout(Timeout::Deadline),
        _ => err,
    }
}

/// The one helper thread r2d2 needs per pool (or per set of pools) to make empty slots.
///
/// Once the last pool using it is dropped, the thread exits at once: the jobs still scheduled
/// then (r2d2's reaper, every 30 s) are for pools that no longer exist, and waiting for them
/// would keep the thread alive for up to 30 s after the client is gone.
pub(crate) fn pool_helpers() -> Arc<ScheduledThreadPool> {
    Arc::new(
        ScheduledThreadPool::builder()
            .num_threads(1)
            .thread_name_pattern("blocking-thrift-pool-{}")
            .on_drop_behavior(OnPoolDropBehavior::DiscardPendingScheduled)
            .build(),
    )
}

impl<C: Send + 'static> ThriftClient<C> {
    /// A client for `endpoint` (`host:port`; every address it resolves to is tried in turn)
    /// that builds its generated client with `make`, typically `CalculatorSyncClient::new`.
    ///
    /// Opens no connection.
    pub fn new<F>(endpoint: &str, make: F, config: ClientConfig) -> Self
    where
        F: Fn(InputProtocol, OutputProtocol) -> C + Send + Sync + 'static,
    {
        Self::with_parts(endpoint.into(), Arc::new(make), config, pool_helpers())
    }

    pub(crate) fn with_parts(
        endpoint: Arc<str>,
        make: Arc<MakeClient<C>>,
        config: ClientConfig,
        helpers: Arc<ScheduledThreadPool>,
    ) -> Self {
        let pool = Pool::new(endpoint.clone(), config.clone(), make, helpers);
        let breaker = Breaker::new(endpoint.clone(), &config);
        ThriftClient {
            inner: Arc::new(Inner {
                endpoint,
                config,
                pool,
                breaker,
                stats: Counters::default(),
            }),
        }
    }

    /// Runs one remote call on a pooled connection: `f` gets the generated client.
    ///
    /// ```no_run
    /// # fn demo<C: Send + 'static>(client: blocking_thrift::ThriftClient<C>) {}
    /// // let sum = client.call(|c| c.add(1, 2))?;
    /// ```
    ///
    /// The breaker is asked first; then a connection is taken from the pool (or opened); then
    /// `f` runs with `read_timeout` for everything it sends and receives. A connection that saw
    /// any transport or protocol error or a timeout is closed, never reused.
    pub fn call<R, F>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut C) -> thrift::Result<R>,
    {
        self.call_by(None, f)
    }

    /// [`call`](Self::call) that also ends by `deadline`, if there is one: the pool wait, the
    /// connect and the response are each cut to what is left of it, and a phase that ran out
    /// because of it fails with [`Timeout::Deadline`], which the breaker does not count.
    pub(crate) fn call_by<R, F>(&self, deadline: Option<Instant>, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut C) -> thrift::Result<R>,
    {
        let mut call = Unfinished {
            inner: &self.inner,
            parts: Some(self.inner.begin_by(deadline)?),
        };
        let (_, slot) = call.parts.as_mut().expect("parts taken only below");
        let live = slot.live();
        live.state
            .arm(within(self.inner.config.read_timeout, deadline));
        let result = f(&mut live.client).and_then(|value| {
            live.state.check_clean()?;
            Ok(value)
        });
        let broken = live.state.is_broken();
        let result = result.map_err(|e| Error::from_call(e, &live.state));
        let (permit, mut slot) = call.parts.take().expect("parts taken only here");
        if broken || result.as_ref().is_err_and(Error::poisons_connection) {
            slot.discard();
        }
        let result = result.map_err(|e| past_deadline(e, deadline));
        self.inner.end(permit, slot, result)
    }

    /// A handle on which the generated methods are called directly, the original's
    /// `wrap_client`: `client.direct().add(1, 2)`. Each call still goes through the pool,
    /// the timeouts and the breaker.
    ///
    /// The generated code implements the service trait for any type that implements
    /// `TThriftClient` and the service's marker trait; declare the marker once with
    /// [`impl_direct!`](crate::impl_direct). Errors raised by this crate come out of the
    /// generated methods as `thrift::Error::User`; [`Error::from`] turns them back.
    pub fn direct(&self) -> Direct<C> {
        Direct::new(self.clone())
    }

    /// Closes every idle connection now, and each busy one as soon as its call returns;
    /// later calls fail with [`Error::Closed`]. Closing twice is harmless.
    pub fn close(&self) {
        if !self.inner.pool.is_closed() {
            log::info!(target: "blocking_thrift::client", "{}: client closed", self.inner.endpoint);
        }
        self.inner.pool.close();
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ClientStats {
        let s = &self.inner.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            calls: s.calls.get() + s.rejected.get(),
            successes: s.successes.get(),
            user_exceptions: get(&s.user_exceptions),
            failures: get(&s.failures),
            connect_errors: get(&s.connect_errors),
            connect_timeouts: get(&s.connect_timeouts),
            pool_timeouts: get(&s.pool_timeouts),
            response_timeouts: get(&s.response_timeouts),
            transport_errors: get(&s.transport_errors),
            protocol_errors: get(&s.protocol_errors),
            application_errors: get(&s.application_errors),
            rejected: s.rejected.get(),
            connections_open: self.inner.pool.open_connections(),
            connections_idle: self.inner.pool.idle_connections(),
            breaker: self.inner.breaker.state(),
        }
    }
}

/// A call whose closure is running. Should the closure panic, this gives the connection (closed:
/// its message may be cut short) and the breaker's permit back, so that neither the pool's
/// capacity nor a half-open breaker's one probe is lost with it.
struct Unfinished<'a, C: Send + 'static> {
    inner: &'a Inner<C>,
    parts: Option<(Permit, Checkout<C>)>,
}

impl<C: Send + 'static> Drop for Unfinished<'_, C> {
    fn drop(&mut self) {
        if let Some((permit, mut slot)) = self.parts.take() {
            slot.discard();
            self.inner.abandon(permit, slot);
        }
    }
}

impl<C: Send + 'static> Inner<C> {
    /// The first half of every call: the breaker's permission and a connected slot.
    pub(crate) fn begin(&self) -> Result<(Permit, Checkout<C>), Error> {
        self.begin_by(None)
    }

    /// [`begin`](Self::begin) whose pool wait and connect also end by `deadline`.
    pub(crate) fn begin_by(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Permit, Checkout<C>), Error> {
        if self.pool.is_closed() {
            self.stats.calls.bump();
            return Err(Error::Closed);
        }
        let Some(permit) = self.breaker.acquire() else {
            // The one counter a rejection touches: `calls` adds rejections in the snapshot.
            self.stats.rejected.bump();
            // A copy of the name, not a clone of the shared `Arc`: every thread turned away
            // would bump and drop the one reference count, and that cache line, bounced between
            // CPUs, cost more than the allocation once two threads were rejected at once.
            return Err(Error::CircuitOpen {
                endpoint: Arc::from(&*self.endpoint),
            });
        };
        self.stats.calls.bump();
        match self.pool.checkout(deadline) {
            Ok(slot) => Ok((permit, slot)),
            Err(err) => Err(self.settle(permit, past_deadline(err, deadline))),
        }
    }

    /// The second half: gives the slot back, tells the breaker, counts.
    pub(crate) fn end<R>(
        &self,
        permit: Permit,
        slot: Checkout<C>,
        result: Result<R, Error>,
    ) -> Result<R, Error> {
        self.pool.checkin(slot);
        match result {
            Ok(value) => {
                self.stats.successes.bump();
                self.breaker.record(permit, false);
                Ok(value)
            }
            Err(err) => Err(self.settle(permit, err)),
        }
    }

    /// Ends a direct call whose response was a service exception or a
    /// `TApplicationException`: the connection is fine and the server healthy.
    pub(crate) fn end_answered_with_error(
        &self,
        permit: Permit,
        slot: Checkout<C>,
        application: bool,
        declared_failure: bool,
    ) {
        self.pool.checkin(slot);
        bump(if application {
            &self.stats.application_errors
        } else {
            &self.stats.user_exceptions
        });
        if declared_failure {
            bump(&self.stats.failures);
        }
        self.breaker.record(permit, declared_failure);
    }

    /// Ends a call that never reached an outcome.
    pub(crate) fn abandon(&self, permit: Permit, slot: Checkout<C>) {
        self.pool.checkin(slot);
        self.breaker.release(permit);
    }

    /// Counts a failed call and tells the breaker whether it was the endpoint's fault.
    pub(crate) fn settle(&self, permit: Permit, err: Error) -> Error {
        let s = &self.stats;
        let (counter, failure) = match &err {
            // Calls that never reached the endpoint prove nothing about it, either way: a
            // half-open breaker's probe gives its turn to the next caller. The caller's own
            // deadline cut it short; the request was refused for its size before anything was
            // sent; the client was closed under it; or every pooled connection stayed busy
            // with the client's own calls, which report for themselves how the endpoint does
            // (a saturated pool is the caller's load, and opening the breaker for it would
            // turn slow calls into failed ones for `reset_timeout`).
            Error::Timeout(Timeout::PoolWait) => {
                bump(&s.pool_timeouts);
                self.breaker.release(permit);
                return err;
            }
            Error::Timeout(Timeout::Deadline) | Error::RequestTooLarge { .. } | Error::Closed => {
                self.breaker.release(permit);
                return err;
            }
            Error::Connect { .. } => (&s.connect_errors, true),
            Error::Timeout(Timeout::Connect) => (&s.connect_timeouts, true),
            Error::Timeout(_) => (&s.response_timeouts, true),
            Error::Transport(_) => (&s.transport_errors, true),
            Error::Protocol(_) => (&s.protocol_errors, true),
            Error::Application(_) => (&s.application_errors, false),
            Error::User(e) => (&s.user_exceptions, self.config.is_declared_failure(&**e)),
            // Not outcomes of a call on this endpoint.
            Error::CircuitOpen { .. } | Error::Unavailable(_) => {
                self.breaker.release(permit);
                return err;
            }
        };
        bump(counter);
        if failure {
            bump(&s.failures);
            log::debug!(target: "blocking_thrift::client", "{}: call failed: {err}", self.endpoint);
        }
        self.breaker.record(permit, failure);
        err
    }
}

impl<C: Send + 'static> fmt::Debug for ThriftClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThriftClient")
            .field("endpoint", &self.inner.endpoint)
            .field("breaker", &self.inner.breaker.state())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl<C: Send + 'static> Drop for Inner<C> {
    fn drop(&mut self) {
        self.pool.close();
    }
}
