//! The single-endpoint client, and the parts every client is made of: its configuration,
//! connection pool, connections, circuit breaker, and direct-call handle.

mod address;
pub(crate) mod breaker;
pub(crate) mod call;
pub(crate) mod config;
pub(crate) mod connection;
mod deadline;
pub(crate) mod direct;
pub(crate) mod pool;
mod resolve;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

pub use self::address::IntoEndpoint;
use self::breaker::BreakerState;
use self::call::{ClientStats, Endpoint};
use self::config::ClientConfig;
use self::pool::MakeClient;
use crate::error::Error;
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
pub struct ThriftClient<C> {
    endpoint: Arc<Endpoint<C>>,
}

impl<C> Clone for ThriftClient<C> {
    fn clone(&self) -> Self {
        ThriftClient {
            endpoint: self.endpoint.clone(),
        }
    }
}

impl<C> ThriftClient<C> {
    /// A client for `endpoint` (`host:port`, every address it resolves to tried in turn; or a
    /// socket address) that builds its generated client with `make`, typically
    /// `CalculatorSyncClient::new`.
    ///
    /// Opens no connection.
    pub fn new<F>(endpoint: impl IntoEndpoint, make: F, config: ClientConfig) -> Self
    where
        F: Fn(InputProtocol, OutputProtocol) -> C + Send + Sync + 'static,
    {
        let endpoint = endpoint.into_endpoint();
        Self::with_parts(endpoint, Arc::new(make), config, pool::helpers())
    }

    pub(crate) fn with_parts(
        endpoint: Arc<str>,
        make: Arc<MakeClient<C>>,
        config: ClientConfig,
        helpers: Arc<scheduled_thread_pool::ScheduledThreadPool>,
    ) -> Self {
        ThriftClient {
            endpoint: Arc::new(Endpoint::new(endpoint, make, config, helpers)),
        }
    }

    /// The endpoint's pool, breaker and counters, which every clone and call goes through.
    pub(crate) fn shared_endpoint(&self) -> &Arc<Endpoint<C>> {
        &self.endpoint
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
    /// because of it fails with [`Timeout::Deadline`](crate::Timeout::Deadline), which the
    /// breaker does not count.
    pub(crate) fn call_by<R, F>(&self, deadline: Option<Instant>, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut C) -> thrift::Result<R>,
    {
        self.endpoint.run(deadline, f)
    }

    /// Closes every idle connection now, and each busy one as soon as its call returns;
    /// later calls fail with [`Error::Closed`]. Closing twice is harmless.
    pub fn close(&self) {
        self.endpoint.close();
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.name()
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.endpoint.breaker().state()
    }

    /// Opens the breaker until [`reset_breaker`](Self::reset_breaker), whatever the endpoint
    /// does meanwhile (Hystrix's `forceOpen`): calls fail at once with [`Error::CircuitOpen`]
    /// and no probe goes through. For an operator taking an endpoint out of use.
    pub fn force_open(&self) {
        self.endpoint.breaker().force_open();
    }

    /// Closes the breaker, forced open or not, and forgets the failures it counted.
    pub fn reset_breaker(&self) {
        self.endpoint.breaker().reset();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ClientStats {
        self.endpoint.stats()
    }
}

impl<C> fmt::Debug for ThriftClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThriftClient")
            .field("endpoint", self.endpoint.name())
            .field("breaker", &self.endpoint.breaker().state())
            .field("config", self.endpoint.config())
            .finish()
    }
}
