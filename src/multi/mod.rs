//! The multi-endpoint client: one [`ThriftClient`] per endpoint, created on first use, and
//! calls that move on to the next endpoint when one fails.

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use scheduled_thread_pool::ScheduledThreadPool;

use crate::client::breaker::BreakerState;
use crate::client::call::ClientStats;
use crate::client::config::ClientConfig;
use crate::client::pool::{self, MakeClient};
use crate::client::ThriftClient;
use crate::clock::{nanos, Epoch};
use crate::error::{Error, Timeout, Unavailable};
use crate::wire::{InputProtocol, OutputProtocol};

mod budget;
pub(crate) mod direct;
mod reaper;
mod retry;

use self::budget::RetryBudget;
use self::reaper::{reap_every, Reaper};
use self::retry::{verdict, Verdict};

const TARGET: &str = "blocking_thrift::multi";

/// Walks the endpoints the user's function yields, in order, until the visitor breaks.
type EndpointsFn = dyn Fn(&mut dyn FnMut(&str) -> ControlFlow<()>) + Send + Sync;

/// A client for a service that several endpoints provide, gevent-thrift's
/// `MultiThriftClient`.
///
/// Instead of one `host:port` it takes a function that yields endpoints in the order they
/// should be tried; it is called for every call, and consumed only as far as the call needs,
/// so it may shuffle, filter or [`cycle`](Iterator::cycle) endlessly. To spread load, shuffle
/// in the function: endpoints are always tried in the order given.
///
/// ```no_run
/// use blocking_thrift::{ClientConfig, MultiThriftClient};
/// # mod calculator { pub struct CalculatorSyncClient<I, O>(I, O);
/// #   impl<I, O> CalculatorSyncClient<I, O> { pub fn new(i: I, o: O) -> Self { Self(i, o) } } }
/// use calculator::CalculatorSyncClient;
///
/// let service = MultiThriftClient::new(
///     || ["10.0.0.1:9090", "10.0.0.2:9090"],
///     CalculatorSyncClient::new,
///     ClientConfig::default().retries(1),
/// );
/// // let sum = service.call(|c| c.add(1, 2))?;
/// ```
///
/// Each endpoint gets its own [`ThriftClient`], with its own pool and circuit breaker,
/// created the first time the endpoint is tried and kept while it is used. All of them share
/// one pool helper thread, however many endpoints there are.
///
/// # Retries
///
/// A call goes to the first endpoint. When it fails there in a way another endpoint might not,
/// it goes to the *next* endpoint the function yielded, up to
/// [`retries`](ClientConfig::retries) times (default 1), and then fails with
/// [`Error::Unavailable`], which lists every attempt's endpoint and error. If the function
/// yields fewer endpoints than that, the call stops when they run out, also with
/// `Unavailable` (with no attempts at all if it yielded none).
///
/// These failures move on to the next endpoint:
/// - the endpoint's breaker is open ([`Error::CircuitOpen`]), the connection could not be made
///   ([`Error::Connect`], [`Timeout::Connect`]), its TLS handshake failed
///   ([`Error::Handshake`]) or no pooled connection came free
///   ([`Timeout::PoolWait`]): the request was never sent; or the server shed it for overload
///   ([`Error::Overloaded`]): it did not run;
/// - the response did not come within `read_timeout` ([`Timeout::Response`]), the connection
///   failed ([`Error::Transport`]) or the response did not decode or did not match the
///   request ([`Error::Protocol`]);
/// - the service raised an exception whose type was declared with
///   [`ClientConfig::retry_on`] (gevent-thrift's `handle_retryable_errors`).
///
/// Retries come out of a budget ([`ClientConfig::retry_budget`]: 20 % of the calls plus 10 a
/// second, by default); a call refused a retry fails with its last attempt's error.
///
/// Anything else comes back at once as itself, not wrapped in `Unavailable`: the service's
/// other exceptions ([`Error::User`]), other `TApplicationException`s
/// ([`Error::Application`]) and [`Error::Closed`]. To have a service exception also count as
/// a breaker failure on every endpoint, declare it with [`ClientConfig::failure_on`] (the
/// original's `handle_errors`).
///
/// **A retried call may have run on an earlier endpoint too.** When the failure came after
/// the request was written (a response timeout, a connection reset mid-call, a garbled
/// response), the first server may have done the work. For calls that must not run twice, set
/// [`retry_unsent_only(true)`](ClientConfig::retry_unsent_only): then only failures where the
/// request certainly did not run are retried ([`Error::is_unsent`]: open breaker, connect
/// failure, pool wait, a request the server shed), plus exceptions declared with `retry_on`,
/// since the service raising one says it did not do the work. Another failure then ends the
/// call with `Unavailable`.
///
/// # Deadline
///
/// [`ClientConfig::deadline`] bounds a whole call, every attempt together: each attempt's
/// pool wait, connect and response are cut to what is left of it. A call the deadline stops
/// fails with [`Error::Unavailable`] whose last attempt is [`Timeout::Deadline`]: either the
/// attempt the deadline cut short (its pool wait, connect or response timeout, which the
/// breaker does not count, since the endpoint is not to blame), or, if time ran out between
/// attempts, the endpoint that would have been tried next. The deadline runs on real time,
/// like the socket timeouts, not on [`ClientConfig::clock`].
///
/// # Idle endpoints
///
/// An endpoint no call has used for [`idle_timeout`](ClientConfig::idle_timeout) (default
/// 60 s, on [`ClientConfig::clock`]) is closed and forgotten, its pool and breaker with it;
/// that is how endpoints that vanished from the function go away. A reaper thread looks for
/// them every eighth of `idle_timeout` (at most every second, at least every millisecond),
/// whether calls are made or not, so an endpoint is reaped at most that much after its time;
/// [`reap_idle`](Self::reap_idle) does it on demand. An endpoint in use by a call is never
/// reaped.
///
/// # Threads
///
/// The client starts one thread of its own, the reaper, when its first endpoint is added;
/// [`close`](Self::close), or dropping the last clone of the client, stops and joins it. The
/// endpoints' pools share one r2d2 helper thread (which makes empty pool slots); `close`
/// drops the client's hold on it, and it exits once the last call still running returns. It
/// cannot be joined: the thread pool r2d2 uses offers no way to.
///
/// The client is `Send + Sync` and cheap to clone; clones share everything. No lock is held
/// while a call talks to an endpoint.
pub struct MultiThriftClient<C> {
    fleet: Arc<Fleet<C>>,
}

/// Everything the clones of a multi-endpoint client share: where its endpoints come from,
/// its settings, the endpoints known, the reaper, the retry budget and the counters.
struct Fleet<C> {
    endpoints: Box<EndpointsFn>,
    make: Arc<MakeClient<C>>,
    config: ClientConfig,
    /// Times on the config's clock are kept as nanoseconds since this instant.
    epoch: Epoch,
    known: RwLock<KnownEndpoints<C>>,
    /// The reaper thread, once an endpoint was added; `None` again once closed.
    reaper: Mutex<Option<Reaper>>,
    budget: RetryBudget,
    counters: RoutingCounters,
}

/// The endpoints known now, each with its client, and the helper thread their pools share.
struct KnownEndpoints<C> {
    clients: HashMap<Arc<str>, Arc<Known<C>>>,
    /// The helper thread all pools share; `None` once the client is closed.
    helpers: Option<Arc<ScheduledThreadPool>>,
}

/// One endpoint's client, and when it was last used.
struct Known<C> {
    client: ThriftClient<C>,
    /// When a call last finished with it, in nanoseconds since the epoch.
    last_used: AtomicU64,
    /// Calls using it now; it is not reaped while there are any.
    in_flight: AtomicUsize,
}

/// An endpoint taken for one attempt; marks it used when dropped.
struct Lease<'a, C> {
    fleet: &'a Fleet<C>,
    endpoint: Arc<Known<C>>,
}

impl<C> Drop for Lease<'_, C> {
    fn drop(&mut self) {
        // Stored before the count drops, so a reaper that sees no call also sees this time.
        self.endpoint
            .last_used
            .store(self.fleet.now(), Ordering::Release);
        self.endpoint.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// How calls fared across the endpoints: retries, refusals, failures, endpoints reaped.
#[derive(Debug, Default)]
struct RoutingCounters {
    calls: AtomicU64,
    retries: AtomicU64,
    retries_refused: AtomicU64,
    unavailable: AtomicU64,
    reaped: AtomicU64,
}

/// A snapshot of a multi-endpoint client's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MultiStats {
    /// Calls started, whatever became of them.
    pub calls: u64,
    /// Attempts made on a further endpoint after one failed.
    pub retries: u64,
    /// Retries the retry budget refused ([`ClientConfig::retry_budget`]); each such call
    /// failed with the error of its last attempt.
    pub retries_refused: u64,
    /// Calls that failed with [`Error::Unavailable`].
    pub unavailable: u64,
    /// Endpoints closed and forgotten because no call used them for `idle_timeout`.
    pub endpoints_reaped: u64,
    /// The counters of every endpoint known now, sorted by endpoint. A reaped endpoint's
    /// counters go with it.
    pub endpoints: Vec<(Arc<str>, ClientStats)>,
}

impl MultiStats {
    /// The counters of `endpoint`, if it is known now.
    pub fn endpoint(&self, endpoint: &str) -> Option<&ClientStats> {
        self.endpoints
            .iter()
            .find(|(name, _)| &**name == endpoint)
            .map(|(_, stats)| stats)
    }
}

impl<C: Send + 'static> MultiThriftClient<C> {
    /// A client for the endpoints `endpoints` yields (`host:port` each), that builds each
    /// endpoint's generated client with `make`, typically `CalculatorSyncClient::new`.
    ///
    /// `endpoints` is called once per call and may return anything iterable whose items are
    /// strings: `["a:1", "b:1"]`, a `Vec<String>`, an endless `cycle()`. Opens no connection.
    pub fn new<E, I, F>(endpoints: E, make: F, config: ClientConfig) -> Self
    where
        E: Fn() -> I + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: AsRef<str>,
        F: Fn(InputProtocol, OutputProtocol) -> C + Send + Sync + 'static,
    {
        let walk = move |visit: &mut dyn FnMut(&str) -> ControlFlow<()>| {
            for endpoint in endpoints() {
                if visit(endpoint.as_ref()).is_break() {
                    break;
                }
            }
        };
        let epoch = Epoch::new(config.get_clock().now());
        let (share, per_second) = config.get_retry_budget();
        let budget = RetryBudget::new(share, per_second, config.get_clock().clone());
        MultiThriftClient {
            fleet: Arc::new(Fleet {
                endpoints: Box::new(walk),
                make: Arc::new(make),
                config,
                epoch,
                known: RwLock::new(KnownEndpoints {
                    clients: HashMap::new(),
                    helpers: Some(pool::helpers()),
                }),
                reaper: Mutex::new(None),
                budget,
                counters: RoutingCounters::default(),
            }),
        }
    }

    /// Runs one remote call: `f` gets the generated client of an endpoint, and runs again
    /// with the next endpoint's if the attempt fails in a way that is retried (see the
    /// [type's docs](Self#retries)), so it may run more than once.
    ///
    /// ```no_run
    /// # fn demo<C: Send + 'static>(client: blocking_thrift::MultiThriftClient<C>) {}
    /// // let sum = client.call(|c| c.add(1, 2))?;
    /// ```
    ///
    /// Each attempt is exactly a [`ThriftClient::call`] on that endpoint: breaker, pool,
    /// timeouts, counters.
    pub fn call<R, F>(&self, mut f: F) -> Result<R, Error>
    where
        F: FnMut(&mut C) -> thrift::Result<R>,
    {
        self.fleet
            .run(|client, deadline| client.call_by(deadline, &mut f))
    }

    /// Closes and forgets every endpoint no call has used for `idle_timeout`, now; returns
    /// how many. The client's reaper thread does this by itself every eighth of
    /// `idle_timeout` (see [Idle endpoints](Self#idle-endpoints)).
    pub fn reap_idle(&self) -> usize {
        self.fleet.reap(self.fleet.now())
    }

    /// Closes every endpoint's connections (busy ones as their calls return) and forgets the
    /// endpoints; later calls fail with [`Error::Closed`]. Stops and joins the reaper thread.
    /// Closing twice is harmless.
    ///
    /// See [Threads](Self#threads) for the pools' shared helper thread.
    pub fn close(&self) {
        let (clients, helpers) = {
            let mut known = self.fleet.known.write();
            (std::mem::take(&mut known.clients), known.helpers.take())
        };
        // Taken after the endpoints: a call cannot start it again once `helpers` is gone.
        let reaper = self.fleet.reaper.lock().take();
        if let Some(reaper) = reaper {
            reaper.stop();
        }
        for endpoint in clients.values() {
            endpoint.client.close();
        }
        if helpers.is_some() {
            log::info!(target: TARGET, "multi-endpoint client closed ({} endpoint(s))", clients.len());
        }
    }

    /// The endpoint's client, if the endpoint is known now (used lately, not reaped).
    fn known(&self, endpoint: &str) -> Option<ThriftClient<C>> {
        let known = self.fleet.known.read();
        known
            .clients
            .get(endpoint)
            .map(|known| known.client.clone())
    }

    /// The breaker state of `endpoint`, if it is known now (used lately, not reaped).
    pub fn breaker_state(&self, endpoint: &str) -> Option<BreakerState> {
        self.known(endpoint).map(|client| client.breaker_state())
    }

    /// Every endpoint known now with its breaker's state, sorted by endpoint.
    pub fn endpoints(&self) -> Vec<(Arc<str>, BreakerState)> {
        self.known_sorted(ThriftClient::breaker_state)
    }

    /// What `of` says of each endpoint known now, sorted by endpoint; read with no lock held.
    fn known_sorted<T>(&self, of: impl Fn(&ThriftClient<C>) -> T) -> Vec<(Arc<str>, T)> {
        let clients: Vec<ThriftClient<C>> = {
            let known = self.fleet.known.read();
            known.clients.values().map(|e| e.client.clone()).collect()
        };
        let mut known: Vec<(Arc<str>, T)> = clients
            .iter()
            .map(|c| (c.shared_endpoint().name().clone(), of(c)))
            .collect();
        known.sort_by(|a, b| a.0.cmp(&b.0));
        known
    }

    /// Forces the breaker of `endpoint` open (see [`ThriftClient::force_open`]): calls skip it
    /// as they skip any open breaker. Returns `false`, doing nothing, if the endpoint is not
    /// known now. A forced endpoint that goes unused is reaped like any other.
    pub fn force_open(&self, endpoint: &str) -> bool {
        self.known(endpoint).map(|c| c.force_open()).is_some()
    }

    /// Closes the breaker of `endpoint`, forced open or not, forgetting its failures. Returns
    /// `false`, doing nothing, if the endpoint is not known now.
    pub fn reset_breaker(&self, endpoint: &str) -> bool {
        self.known(endpoint).map(|c| c.reset_breaker()).is_some()
    }

    /// A snapshot of the counters, with those of every endpoint known now.
    pub fn stats(&self) -> MultiStats {
        let endpoints = self.known_sorted(ThriftClient::stats);
        let c = &self.fleet.counters;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        MultiStats {
            calls: get(&c.calls),
            retries: get(&c.retries),
            retries_refused: get(&c.retries_refused),
            unavailable: get(&c.unavailable),
            endpoints_reaped: get(&c.reaped),
            endpoints,
        }
    }

    /// The configuration every endpoint's client uses.
    pub(crate) fn config(&self) -> &ClientConfig {
        &self.fleet.config
    }

    /// Runs `attempt` on the endpoints in turn, with the retries of [`call`](Self::call).
    pub(crate) fn run<T>(
        &self,
        attempt: impl FnMut(&ThriftClient<C>, Option<Instant>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.fleet.run(attempt)
    }
}

impl<C> Fleet<C> {
    /// The config's clock, in nanoseconds since the epoch.
    fn now(&self) -> u64 {
        self.epoch.nanos(self.config.get_clock().now())
    }
}

impl<C: Send + 'static> Fleet<C> {
    /// Runs `attempt` on endpoints in turn until one answers, a failure is not to be retried,
    /// or the retries, the endpoints or the deadline run out.
    fn run<T>(
        self: &Arc<Self>,
        mut attempt: impl FnMut(&ThriftClient<C>, Option<Instant>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        self.budget.deposit();
        // A deadline too far away to represent is no deadline.
        let deadline = self
            .config
            .get_deadline()
            .and_then(|d| Instant::now().checked_add(d));
        let allowed = (self.config.get_retries() as usize).saturating_add(1);
        let mut attempts: Vec<(Arc<str>, Error)> = Vec::new();
        let mut outcome = None;
        let mut last_untried = false;
        (self.endpoints)(&mut |name: &str| {
            if deadline.is_some_and(|at| Instant::now() >= at) {
                attempts.push((name.into(), Error::Timeout(Timeout::Deadline)));
                last_untried = true;
                return ControlFlow::Break(());
            }
            // Asked before the endpoint is leased (and perhaps created) for a retry.
            let retry = attempts.last();
            if let Some((previous, err)) = retry {
                if !self.budget.try_withdraw() {
                    self.counters
                        .retries_refused
                        .fetch_add(1, Ordering::Relaxed);
                    log::debug!(target: TARGET, "{name}: no retry after {previous} failed ({err}): the retry budget is spent");
                    let (_, err) = attempts.pop().expect("looked at above");
                    outcome = Some(Err(err));
                    return ControlFlow::Break(());
                }
            }
            let lease = match self.lease(name) {
                Ok(lease) => lease,
                Err(err) => {
                    outcome = Some(Err(err));
                    return ControlFlow::Break(());
                }
            };
            if let Some((previous, err)) = retry {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                log::debug!(target: TARGET, "{name}: retrying after {previous} failed: {err}");
            }
            let result = attempt(&lease.endpoint.client, deadline);
            let endpoint = lease.endpoint.client.shared_endpoint().name().clone();
            drop(lease);
            let err = match result {
                Ok(value) => {
                    outcome = Some(Ok(value));
                    return ControlFlow::Break(());
                }
                Err(err) => err,
            };
            let more = match verdict(&self.config, &err) {
                Verdict::Final => {
                    outcome = Some(Err(err));
                    return ControlFlow::Break(());
                }
                Verdict::Deadline => false,
                Verdict::EndpointFailed { unsent } => {
                    unsent || !self.config.get_retry_unsent_only()
                }
                Verdict::DeclaredRetryable => true,
            };
            attempts.push((endpoint, err));
            if more && attempts.len() < allowed {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        outcome.unwrap_or_else(|| {
            // A closed client found out only by leasing: with no endpoint leased (none yielded,
            // or the deadline passed first), closed is still what the call is.
            if self.known.read().helpers.is_none() {
                return Err(Error::Closed);
            }
            self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            let err = Error::Unavailable(Box::new(Unavailable {
                attempts,
                last_untried,
            }));
            log::debug!(target: TARGET, "call failed: {err}");
            Err(err)
        })
    }

    /// The client of `name`, created if it is new, marked in use.
    fn lease(self: &Arc<Self>, name: &str) -> Result<Lease<'_, C>, Error> {
        let helpers = {
            let known = self.known.read();
            if let Some(endpoint) = known.clients.get(name) {
                // Counted under the lock, so that a reaper (which holds it exclusively)
                // never takes an endpoint a call has just found.
                endpoint.in_flight.fetch_add(1, Ordering::Acquire);
                return Ok(Lease {
                    fleet: self,
                    endpoint: endpoint.clone(),
                });
            }
            known.helpers.clone().ok_or(Error::Closed)?
        };
        // Built outside the lock; cheap, as it opens nothing.
        let mut fresh = Some(ThriftClient::with_parts(
            name.into(),
            self.make.clone(),
            self.config.clone(),
            helpers,
        ));
        let endpoint = {
            let mut known = self.known.write();
            if known.helpers.is_none() {
                return Err(Error::Closed);
            }
            let endpoint = match known.clients.get(name) {
                Some(endpoint) => endpoint.clone(),
                None => {
                    let client = fresh.take().expect("not yet used");
                    let endpoint = Arc::new(Known {
                        last_used: AtomicU64::new(self.now()),
                        in_flight: AtomicUsize::new(0),
                        client,
                    });
                    known.clients.insert(
                        endpoint.client.shared_endpoint().name().clone(),
                        endpoint.clone(),
                    );
                    endpoint
                }
            };
            endpoint.in_flight.fetch_add(1, Ordering::Acquire);
            endpoint
        };
        if fresh.is_none() {
            log::info!(target: TARGET, "{name}: endpoint added");
            self.start_reaper();
        }
        // Otherwise another call added it first; ours is dropped, which closes its empty pool.
        Ok(Lease {
            fleet: self,
            endpoint,
        })
    }

    /// Starts the reaper thread, unless it runs or the client is closed.
    fn start_reaper(self: &Arc<Self>) {
        let mut reaper = self.reaper.lock();
        if reaper.is_some() || self.known.read().helpers.is_none() {
            return;
        }
        let client = Arc::downgrade(self);
        let reap = move || match client.upgrade() {
            Some(fleet) => {
                fleet.reap(fleet.now());
                true
            }
            None => false,
        };
        match Reaper::start(reap_every(self.config.get_idle_timeout()), reap) {
            Ok(started) => *reaper = Some(started),
            // Idle endpoints then wait for `reap_idle`, or the next endpoint added.
            Err(err) => log::error!(target: TARGET, "cannot start the reaper thread: {err}"),
        }
    }

    fn reap(&self, now: u64) -> usize {
        let idle = nanos(self.config.get_idle_timeout());
        let mut reaped = Vec::new();
        self.known.write().clients.retain(|_, endpoint| {
            let unused = endpoint.in_flight.load(Ordering::Acquire) == 0
                && now.saturating_sub(endpoint.last_used.load(Ordering::Acquire)) >= idle;
            if unused {
                reaped.push(endpoint.clone());
            }
            !unused
        });
        for endpoint in &reaped {
            log::info!(
                target: TARGET,
                "{}: endpoint unused for {:?}; closed and forgotten",
                endpoint.client.endpoint(),
                self.config.get_idle_timeout()
            );
            endpoint.client.close();
        }
        self.counters
            .reaped
            .fetch_add(reaped.len() as u64, Ordering::Relaxed);
        reaped.len()
    }
}

impl<C> Drop for Fleet<C> {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.get_mut().take() {
            reaper.stop();
        }
    }
}

impl<C> Clone for MultiThriftClient<C> {
    fn clone(&self) -> Self {
        MultiThriftClient {
            fleet: self.fleet.clone(),
        }
    }
}

impl<C> fmt::Debug for MultiThriftClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoints = self.fleet.known.read().clients.len();
        f.debug_struct("MultiThriftClient")
            .field("endpoints", &endpoints)
            .field("config", &self.fleet.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn endpoints_are_walked_lazily() {
        let client: MultiThriftClient<()> = MultiThriftClient::new(
            || (0..).map(|i| format!("127.0.0.1:{i}")),
            |_, _| (),
            ClientConfig::default(),
        );
        let mut seen = Vec::new();
        (client.fleet.endpoints)(&mut |e| {
            seen.push(e.to_owned());
            if seen.len() == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(seen, ["127.0.0.1:0", "127.0.0.1:1", "127.0.0.1:2"]);
    }

    #[test]
    fn endpoints_share_one_helper_thread() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let next = AtomicUsize::new(0);
        let client: MultiThriftClient<()> = MultiThriftClient::new(
            move || {
                [format!(
                    "127.0.0.{}:{port}",
                    1 + next.fetch_add(1, Ordering::Relaxed)
                )]
            },
            |_, _| (),
            ClientConfig::default(),
        );
        for _ in 0..20 {
            assert!(matches!(
                client.call(|_| Ok(())),
                Err(Error::Unavailable(_))
            ));
        }
        let known = client.fleet.known.read();
        assert_eq!(known.clients.len(), 20);
        let helpers = known.helpers.as_ref().unwrap();
        // Ours, and one per endpoint's pool: the same thread pool, not twenty.
        assert!(
            Arc::strong_count(helpers) > 20,
            "{}",
            Arc::strong_count(helpers)
        );
    }

    /// A client whose endpoint refuses connections, with its reaper started by one call, and
    /// what tells whether the reaper's thread still runs.
    fn with_reaper() -> (MultiThriftClient<()>, std::sync::Weak<()>) {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let endpoint = format!("127.0.0.1:{port}");
        let client: MultiThriftClient<()> = MultiThriftClient::new(
            move || [endpoint.clone()],
            |_, _| (),
            ClientConfig::default().idle_timeout(Duration::from_millis(80)),
        );
        assert!(client.fleet.reaper.lock().is_none(), "started before use");
        assert!(client.call(|_| Ok(())).is_err());
        let running = client.fleet.reaper.lock().as_ref().unwrap().running.clone();
        (client, running)
    }

    #[test]
    fn close_stops_and_joins_the_reaper() {
        let (client, running) = with_reaper();
        assert!(running.upgrade().is_some());
        client.close();
        assert!(
            running.upgrade().is_none(),
            "close returned before the reaper ended"
        );
        assert!(client.fleet.reaper.lock().is_none());
        // A closed client starts no reaper again.
        assert!(matches!(client.call(|_| Ok(())), Err(Error::Closed)));
        assert!(client.fleet.reaper.lock().is_none());
    }

    #[test]
    fn dropping_the_last_clone_joins_the_reaper() {
        let (client, running) = with_reaper();
        let clone = client.clone();
        drop(client);
        assert!(running.upgrade().is_some(), "a clone still uses it");
        drop(clone);
        assert!(
            running.upgrade().is_none(),
            "the drop returned before the reaper ended"
        );
    }

    #[test]
    fn the_reaper_looks_every_eighth_of_the_idle_timeout_within_bounds() {
        assert_eq!(reap_every(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(
            reap_every(Duration::from_millis(800)),
            Duration::from_millis(100)
        );
        assert_eq!(reap_every(Duration::ZERO), Duration::from_millis(1));
    }

    #[test]
    fn clients_are_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<MultiThriftClient<()>>();
    }
}
