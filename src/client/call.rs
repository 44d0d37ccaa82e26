//! One call's life on one endpoint, the same for every way of calling: the breaker's
//! permission, a pooled connection armed with the call's time, then the outcome told to the
//! pool, the breaker and the counters.
//!
//! [`ThriftClient`](super::ThriftClient) and [`Direct`](super::direct::Direct) call one
//! endpoint; [`MultiThriftClient`](crate::MultiThriftClient) and its direct handle call one
//! endpoint per attempt. All of them go through [`Endpoint::begin`] and one of its endings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use scheduled_thread_pool::ScheduledThreadPool;

use super::breaker::{Breaker, BreakerState, Permit};
use super::config::ClientConfig;
use super::connection::ConnState;
use super::deadline::{past_deadline, within};
use super::pool::{Checkout, MakeClient, Pool};
use crate::counter::Striped;
use crate::error::{Error, Timeout};

/// What every call to one endpoint shares: its pool, its breaker and its counters.
pub(crate) struct Endpoint<C> {
    name: Arc<str>,
    config: ClientConfig,
    pool: Pool<C>,
    breaker: Breaker,
    stats: OutcomeCounters,
}

/// A call under way on one endpoint: the breaker's permission and a pooled connection, armed
/// with the call's time. End it with one of [`Endpoint`]'s endings.
pub(crate) struct Call<C> {
    permit: Permit,
    slot: Checkout<C>,
    /// The connection is closed when the call ends, not pooled.
    cut_short: bool,
}

impl<C> Call<C> {
    /// The generated client on the call's connection.
    pub(crate) fn client(&mut self) -> &mut C {
        &mut self.slot.live().client
    }

    /// The state of the call's connection.
    pub(crate) fn connection(&mut self) -> &ConnState {
        &self.slot.live().state
    }

    /// Closes the connection when the call ends, instead of pooling it: the message on it was
    /// cut short.
    pub(crate) fn discard(&mut self) {
        self.cut_short = true;
    }

    /// The permit and the slot, whose connection is gone if the call was cut short.
    fn finish(self) -> (Permit, Checkout<C>) {
        let Call {
            permit,
            mut slot,
            cut_short,
        } = self;
        if cut_short {
            slot.discard();
        }
        (permit, slot)
    }
}

/// A breaker's permit, released if it is dropped while still held.
struct HeldPermit<'a> {
    breaker: &'a Breaker,
    permit: Option<Permit>,
}

impl Drop for HeldPermit<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.release(permit);
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
    /// Connections that could not be opened (refused, unreachable, a failed TLS handshake).
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
    /// Calls the server shed for overload, without running them ([`Error::Overloaded`]).
    pub overloaded: u64,
    /// Calls rejected at once by the open breaker.
    pub rejected: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Open connections not serving a call now.
    pub connections_idle: u64,
    /// The breaker's state now.
    pub breaker: BreakerState,
}

/// An endpoint's calls counted by outcome.
#[derive(Debug, Default)]
struct OutcomeCounters {
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
    overloaded: AtomicU64,
    /// Bumped by every thread a rejection turns away, so striped.
    rejected: Striped,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How a call whose response arrived ended, when it was not a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answered {
    /// A `TApplicationException`.
    ApplicationError,
    /// This crate's server shedding the request for overload.
    Overloaded,
    /// One of the service's exceptions; `declared_failure` when its type was declared with
    /// [`ClientConfig::failure_on`].
    Exception { declared_failure: bool },
}

impl<C> Endpoint<C> {
    pub(crate) fn new(
        name: Arc<str>,
        make: Arc<MakeClient<C>>,
        config: ClientConfig,
        helpers: Arc<ScheduledThreadPool>,
    ) -> Self {
        Endpoint {
            pool: Pool::new(name.clone(), config.clone(), make, helpers),
            breaker: Breaker::new(name.clone(), &config),
            name,
            config,
            stats: OutcomeCounters::default(),
        }
    }

    /// The endpoint, as the user gave it.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Starts a call: asks the breaker, takes a connection from the pool (or opens one) and
    /// arms it with `read_timeout`. The pool wait, the connect and the response each end by
    /// `deadline` too, if there is one.
    pub(crate) fn begin(&self, deadline: Option<Instant>) -> Result<Call<C>, Error> {
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
                endpoint: Arc::from(&*self.name),
            });
        };
        self.stats.calls.bump();
        // Given back should the checkout panic (in the user's `make`, say): a half-open
        // breaker's one probe would be lost with it.
        let mut held = HeldPermit {
            breaker: &self.breaker,
            permit: Some(permit),
        };
        let checkout = self.pool.checkout(deadline);
        let permit = held.permit.take().expect("taken only here");
        match checkout {
            Ok(mut slot) => {
                slot.live()
                    .state
                    .arm(within(self.config.get_read_timeout(), deadline));
                Ok(Call {
                    permit,
                    slot,
                    cut_short: false,
                })
            }
            Err(err) => Err(self.settle(permit, past_deadline(err, deadline))),
        }
    }

    /// Runs `f` as one whole call on the generated client.
    ///
    /// Should `f` panic, the connection is closed (its message may be cut short) and the
    /// breaker's permit given back, so that neither the pool's capacity nor a half-open
    /// breaker's one probe is lost with it.
    pub(crate) fn run<R>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&mut C) -> thrift::Result<R>,
    ) -> Result<R, Error> {
        let mut unfinished = Unfinished::new(self, self.begin(deadline)?);
        let result = f(unfinished.call().client());
        self.end(unfinished.finish(), result, deadline)
    }

    /// Ends a call with what the generated client returned. An error is told apart by the
    /// connection's state (a response timeout, a request refused for its size), and closes the
    /// connection when it may hold unread or unexpected bytes; a value needs the response read
    /// to its end and nothing after it.
    pub(crate) fn end<R>(
        &self,
        mut call: Call<C>,
        result: thrift::Result<R>,
        deadline: Option<Instant>,
    ) -> Result<R, Error> {
        let state = call.connection();
        let result = match result {
            Ok(value) => state.check_clean().map(|()| value),
            // A server's exception is a whole response too: nothing may follow it either.
            Err(err) if crate::error::is_answer(&err) => {
                Err(state.check_clean().err().unwrap_or(err))
            }
            Err(err) => Err(err),
        };
        let broken = state.is_broken();
        let result = result.map_err(|err| error_of(err, state));
        if broken || result.as_ref().is_err_and(Error::poisons_connection) {
            call.discard();
        }
        let (permit, slot) = call.finish();
        self.pool.checkin(slot);
        match result {
            Ok(value) => {
                self.stats.successes.bump();
                self.breaker.record(permit, false);
                Ok(value)
            }
            Err(err) => Err(self.settle(permit, past_deadline(err, deadline))),
        }
    }

    /// Ends a call whose response was a service exception or a `TApplicationException`: the
    /// connection is fine and the server healthy, unless the exception was declared a failure.
    pub(crate) fn end_answered(&self, call: Call<C>, answered: Answered) {
        let (permit, slot) = call.finish();
        self.pool.checkin(slot);
        let failed = match answered {
            Answered::ApplicationError => {
                bump(&self.stats.application_errors);
                false
            }
            Answered::Overloaded => {
                bump(&self.stats.overloaded);
                false
            }
            Answered::Exception { declared_failure } => {
                bump(&self.stats.user_exceptions);
                declared_failure
            }
        };
        if failed {
            bump(&self.stats.failures);
        }
        self.breaker.record(permit, failed);
    }

    /// Ends a call that never reached an outcome (its caller went away mid-call): the
    /// connection is closed and a probe's turn passes on.
    pub(crate) fn abandon(&self, mut call: Call<C>) {
        call.discard();
        let (permit, slot) = call.finish();
        self.pool.checkin(slot);
        self.breaker.release(permit);
    }

    /// Counts a failed call and tells the breaker whether it was the endpoint's fault.
    fn settle(&self, permit: Permit, err: Error) -> Error {
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
            Error::Connect { .. } | Error::Handshake { .. } => (&s.connect_errors, true),
            Error::Timeout(Timeout::Connect) => (&s.connect_timeouts, true),
            Error::Timeout(_) => (&s.response_timeouts, true),
            Error::Transport(_) => (&s.transport_errors, true),
            Error::Protocol(_) => (&s.protocol_errors, true),
            Error::Application(_) => (&s.application_errors, false),
            // The server answered at once, without running it: busy, not broken.
            Error::Overloaded(_) => (&s.overloaded, false),
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
            log::debug!(target: "blocking_thrift::client", "{}: call failed: {err}", self.name);
        }
        self.breaker.record(permit, failure);
        err
    }

    /// Closes every idle connection now, and each busy one as soon as its call returns.
    pub(crate) fn close(&self) {
        if !self.pool.is_closed() {
            log::info!(target: "blocking_thrift::client", "{}: client closed", self.name);
        }
        self.pool.close();
    }

    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> ClientStats {
        let s = &self.stats;
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
            overloaded: get(&s.overloaded),
            rejected: s.rejected.get(),
            connections_open: self.pool.open_connections(),
            connections_idle: self.pool.idle_connections(),
            breaker: self.breaker.state(),
        }
    }
}

impl<C> Drop for Endpoint<C> {
    fn drop(&mut self) {
        self.pool.close();
    }
}

/// Turns the error of a call made on a connection into the crate's, telling a response
/// timeout and a refused oversized request from other transport errors.
pub(crate) fn error_of(err: thrift::Error, state: &ConnState) -> Error {
    if let Some((bytes, limit)) = state.refused_request() {
        return Error::RequestTooLarge { bytes, limit };
    }
    if let Some(refused) = state.handshake_refused() {
        return refused;
    }
    Error::from_thrift(err, state.timed_out())
}

/// A call under way; abandoned if it is dropped unfinished (its caller panicked).
pub(crate) struct Unfinished<'a, C> {
    endpoint: &'a Endpoint<C>,
    call: Option<Call<C>>,
}

impl<'a, C> Unfinished<'a, C> {
    pub(crate) fn new(endpoint: &'a Endpoint<C>, call: Call<C>) -> Self {
        Unfinished {
            endpoint,
            call: Some(call),
        }
    }

    pub(crate) fn call(&mut self) -> &mut Call<C> {
        self.call.as_mut().expect("taken only by finish")
    }

    /// The call, to end it.
    pub(crate) fn finish(mut self) -> Call<C> {
        self.call.take().expect("taken only here")
    }
}

impl<C> Drop for Unfinished<'_, C> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            self.endpoint.abandon(call);
        }
    }
}
