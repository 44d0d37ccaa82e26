//! The connection pool: r2d2 manages slots, each of which may hold one open connection.
//!
//! r2d2 opens connections on its own helper threads and, when that fails, reports only a
//! timeout with the last error's text, and keeps retrying in the background. Here r2d2's
//! "connection" is an empty slot that costs nothing to make; the caller's own thread opens the
//! socket inside the slot when it checks the slot out. That keeps every phase's timeout and
//! error exact, and no socket is touched while nobody calls (an open breaker stays quiet).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ClientConfig;
use crate::error::{Error, Timeout};
use crate::protocol::{self, InputProtocol, OutputProtocol};
use crate::transport::{self, ConnState};

/// `timeout`, cut to what is left until `deadline`, if there is one.
pub(crate) fn within(timeout: Duration, deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(at) => timeout.min(at.saturating_duration_since(Instant::now())),
        None => timeout,
    }
}

/// Builds a generated client over a connection's protocols.
pub(crate) type MakeClient<C> = dyn Fn(InputProtocol, OutputProtocol) -> C + Send + Sync;

/// A pooled place for one connection.
pub(crate) struct Slot<C> {
    live: Option<Live<C>>,
    counts: Arc<Counts>,
}

/// An open connection and the generated client that talks over it.
pub(crate) struct Live<C> {
    pub(crate) client: C,
    pub(crate) state: Arc<ConnState>,
}

/// Connection counters the pool keeps for the client's stats.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) open: AtomicU64,
    pub(crate) in_use: AtomicU64,
}

impl<C> Slot<C> {
    /// Drops the connection, if any; the slot stays usable.
    pub(crate) fn discard(&mut self) {
        if let Some(live) = self.live.take() {
            live.state.shutdown();
            self.counts.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn live(&mut self) -> &mut Live<C> {
        self.live
            .as_mut()
            .expect("a checked-out slot holds a connection")
    }
}

impl<C> Drop for Slot<C> {
    fn drop(&mut self) {
        self.discard();
    }
}

/// The r2d2 manager of slots.
pub(crate) struct SlotManager<C> {
    counts: Arc<Counts>,
    closed: Arc<AtomicBool>,
    _client: std::marker::PhantomData<fn() -> C>,
}

impl<C: Send + 'static> r2d2::ManageConnection for SlotManager<C> {
    type Connection = Slot<C>;
    type Error = io::Error;

    fn connect(&self) -> io::Result<Slot<C>> {
        Ok(Slot {
            live: None,
            counts: self.counts.clone(),
        })
    }

    fn is_valid(&self, _slot: &mut Slot<C>) -> io::Result<()> {
        Ok(())
    }

    fn has_broken(&self, _slot: &mut Slot<C>) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// A checked-out slot with an open connection in it; back to the pool on drop.
pub(crate) type Checkout<C> = r2d2::PooledConnection<SlotManager<C>>;

/// The connections of one endpoint.
pub(crate) struct Pool<C: Send + 'static> {
    endpoint: Arc<str>,
    config: ClientConfig,
    make: Arc<MakeClient<C>>,
    pool: r2d2::Pool<SlotManager<C>>,
    counts: Arc<Counts>,
    closed: Arc<AtomicBool>,
}

impl<C: Send + 'static> Pool<C> {
    pub(crate) fn new(
        endpoint: Arc<str>,
        config: ClientConfig,
        make: Arc<MakeClient<C>>,
        helpers: Arc<scheduled_thread_pool::ScheduledThreadPool>,
    ) -> Pool<C> {
        let counts = Arc::new(Counts::default());
        let closed = Arc::new(AtomicBool::new(false));
        let manager = SlotManager {
            counts: counts.clone(),
            closed: closed.clone(),
            _client: std::marker::PhantomData,
        };
        let pool = r2d2::Pool::builder()
            .max_size(config.pool_size)
            // Open nothing ahead of use: building a client must not touch the network.
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(config.pool_timeout.max(Duration::from_millis(1)))
            .thread_pool(helpers)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        Pool {
            endpoint,
            config,
            make,
            pool,
            counts,
            closed,
        }
    }

    /// Takes a slot and makes sure it holds a working connection, opening one if needed.
    /// The pool wait and the connect are each cut to what is left until `deadline`, if any.
    pub(crate) fn checkout(&self, deadline: Option<Instant>) -> Result<Checkout<C>, Error> {
        let wait = within(self.config.pool_timeout, deadline);
        let mut slot = match self.pool.try_get() {
            Some(slot) => slot,
            None if wait.is_zero() => return Err(Error::Timeout(Timeout::PoolWait)),
            None => self
                .pool
                .get_timeout(wait)
                .map_err(|_| Error::Timeout(Timeout::PoolWait))?,
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(live) = &slot.live {
            if live.state.is_reusable(self.config.reuse_unchecked) {
                return Ok(slot);
            }
            log::debug!(target: "blocking_thrift::pool", "{}: pooled connection was closed by the server; reconnecting", self.endpoint);
            slot.discard();
        }
        slot.live = Some(self.open(within(self.config.connect_timeout, deadline))?);
        self.counts.open.fetch_add(1, Ordering::Relaxed);
        Ok(slot)
    }

    fn open(&self, connect_timeout: Duration) -> Result<Live<C>, Error> {
        let stream = transport::connect(&self.endpoint, connect_timeout)?;
        let (state, reader, writer) = transport::split(
            stream,
            self.config.transport,
            self.config.read_timeout,
            self.config.max_message_size,
        )
        .map_err(|source| Error::Connect {
            endpoint: self.endpoint.clone(),
            source,
        })?;
        log::debug!(target: "blocking_thrift::pool", "{}: connection opened", self.endpoint);
        let input = protocol::input(self.config.protocol, reader, self.config.limits());
        let output = protocol::output(self.config.protocol, writer);
        Ok(Live {
            client: (self.make)(input, output),
            state,
        })
    }

    pub(crate) fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Closes every idle connection now and every busy one when its call returns.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Slots taken here are dropped on return because `has_broken` now says so.
        while let Some(mut slot) = self.pool.try_get() {
            slot.discard();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl<C: Send + 'static> fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("endpoint", &self.endpoint)
            .field("open", &self.counts.open.load(Ordering::Relaxed))
            .finish()
    }
}
