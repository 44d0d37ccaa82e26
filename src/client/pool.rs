//! The connection pool: r2d2 hands out tokens, and a token's holder takes one of the pool's
//! cells, each of which may hold one open connection.
//!
//! r2d2 opens connections on its own helper threads and, when that fails, reports only a
//! timeout with the last error's text, and keeps retrying in the background. Here r2d2's
//! "connection" is a token that costs nothing to make; the caller's own thread opens the
//! socket when its cell has none. That keeps every phase's timeout and error exact, and no
//! socket is touched while nobody calls (an open breaker stays quiet). Keeping connections in
//! cells of our own, not inside r2d2's idle list, lets a thread take back its own connection.
//!
//! While no caller waits for r2d2, an idle connection keeps the token of the call that left
//! it, so a thread calling again takes its cell back without going through r2d2's one lock,
//! which every client thread would otherwise take twice a call. A caller that finds r2d2 out
//! of tokens takes an idle connection's kept token instead; one that has to wait makes every
//! call that ends give its token back to r2d2, which hands it on.

use std::fmt;
use std::io;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use scheduled_thread_pool::{OnPoolDropBehavior, ScheduledThreadPool};

use super::config::ClientConfig;
use super::connection::{self, ConnState};
use super::deadline::within;
use super::resolve::Lookups;
use crate::error::{Error, Timeout};
use crate::wire::{self, InputProtocol, OutputProtocol};

/// The one helper thread r2d2 needs per pool (or per set of pools) to make empty slots.
///
/// Once the last pool using it is dropped, the thread exits at once: the jobs still scheduled
/// then (r2d2's reaper, every 30 s) are for pools that no longer exist, and waiting for them
/// would keep the thread alive for up to 30 s after the client is gone.
pub(crate) fn helpers() -> Arc<ScheduledThreadPool> {
    Arc::new(
        ScheduledThreadPool::builder()
            .num_threads(1)
            .thread_name_pattern("blocking-thrift-pool-{}")
            .on_drop_behavior(OnPoolDropBehavior::DiscardPendingScheduled)
            .build(),
    )
}

/// Builds a generated client over a connection's protocols.
pub(crate) type MakeClient<C> = dyn Fn(InputProtocol, OutputProtocol) -> C + Send + Sync;

/// An open connection and the generated client that talks over it.
pub(crate) struct Live<C> {
    pub(crate) client: C,
    pub(crate) state: Arc<ConnState>,
    /// The pool's count of open connections, which this one leaves on drop.
    open: Arc<AtomicU64>,
}

impl<C> Drop for Live<C> {
    fn drop(&mut self) {
        self.state.shutdown();
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// r2d2's "connection": a permit to use one of the pool's cells. r2d2 bounds how many are
/// out and queues the callers that wait for one.
pub(crate) struct Token {
    /// The cell this token's last holder took and never gave back (its checkout was dropped
    /// without a check-in, for instance by a panic). The token's next holder frees it.
    claim: Option<usize>,
}

/// The r2d2 manager of tokens.
pub(crate) struct TokenManager {
    closed: Arc<AtomicBool>,
}

impl r2d2::ManageConnection for TokenManager {
    type Connection = Token;
    type Error = io::Error;

    fn connect(&self) -> io::Result<Token> {
        Ok(Token { claim: None })
    }

    fn is_valid(&self, _token: &mut Token) -> io::Result<()> {
        Ok(())
    }

    fn has_broken(&self, _token: &mut Token) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// One place for a connection. There are `pool_size` cells, as many as tokens, so a token's
/// holder always finds a cell that is idle or empty.
enum CellState<C> {
    Empty,
    /// An idle connection, with the token its last call kept if no caller was waiting then.
    Idle(Box<Live<C>>, Option<Lent>),
    /// Taken by a token's holder, with or without a connection.
    Busy,
}

/// A token as r2d2 lends it, boxed: a call moves its token and connection in and out of a cell,
/// and through the results on the way, so both are kept behind a pointer.
type Lent = Box<r2d2::PooledConnection<TokenManager>>;

/// Marks `token` as holding `cell`, so that the cell is freed should the checkout be dropped
/// without a check-in.
fn claiming(mut token: Lent, cell: usize) -> Lent {
    token.claim = Some(cell);
    token
}

impl<C> CellState<C> {
    /// Takes the connection of an idle cell, and the token it kept if any; the cell becomes
    /// busy. Leaves any other cell alone.
    fn take_idle(&mut self) -> Option<(Box<Live<C>>, Option<Lent>)> {
        match std::mem::replace(self, CellState::Busy) {
            CellState::Idle(live, kept) => Some((live, kept)),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Takes the connection and token of an idle cell that kept its token; the cell becomes
    /// busy. Leaves any other cell alone.
    fn take_kept(&mut self) -> Option<(Box<Live<C>>, Lent)> {
        match std::mem::replace(self, CellState::Busy) {
            CellState::Idle(live, Some(token)) => Some((live, token)),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// A cell on a cache line of its own: threads that keep to their own cells do not share one.
#[repr(align(128))]
struct Cell<C>(Mutex<CellState<C>>);

/// A token, the cell it took and the open connection in it. Give it back with
/// [`Pool::checkin`]; dropped instead, it closes its connection.
pub(crate) struct Checkout<C> {
    live: Option<Box<Live<C>>>,
    cell: usize,
    token: Lent,
}

impl<C> Checkout<C> {
    /// Closes the connection; the call gives back an empty cell.
    pub(crate) fn discard(&mut self) {
        self.live = None;
    }

    pub(crate) fn live(&mut self) -> &mut Live<C> {
        self.live
            .as_mut()
            .expect("a checkout holds a connection until it is discarded")
    }
}

/// The connections of one endpoint.
///
/// A thread takes back the connection it used last when that one is idle. A connection that
/// hops between client threads also moves between CPUs, and when the server shares the machine
/// (loopback, a sidecar) every call then wakes its server-side peer from another CPU; kept to
/// one thread, the two settle next to each other, and over loopback a call costs about a third
/// less CPU.
pub(crate) struct Pool<C> {
    id: u64,
    endpoint: Arc<str>,
    config: ClientConfig,
    make: Arc<MakeClient<C>>,
    lookups: Lookups,
    tokens: r2d2::Pool<TokenManager>,
    cells: Box<[Cell<C>]>,
    /// Connections open now, idle or busy.
    open: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    /// Callers about to wait, or waiting, for a token from r2d2: while there are any, calls
    /// that end give their tokens back to r2d2 instead of keeping them.
    waiting: AtomicUsize,
}

/// A caller counted in [`Pool::waiting`] for as long as this lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `Pool::checkin`: either that check-in sees this caller and
        // gives its token to r2d2, or this caller's next look at the cells sees it kept.
        fence(Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

thread_local! {
    /// The cells this thread gave back last, by pool id: where its next call looks first.
    static LAST_CELLS: std::cell::Cell<[(u64, usize); 4]> =
        const { std::cell::Cell::new([(0, 0); 4]) };
}

fn last_cell(pool: u64) -> Option<usize> {
    let last = LAST_CELLS.with(std::cell::Cell::get);
    last.iter()
        .find(|(id, _)| *id == pool)
        .map(|&(_, cell)| cell)
}

fn remember_cell(pool: u64, cell: usize) {
    LAST_CELLS.with(|last| {
        let mut entries = last.get();
        if entries[0] != (pool, cell) {
            // Most recent first; a pool already listed moves to the front.
            let at = entries.iter().position(|(id, _)| *id == pool).unwrap_or(3);
            entries.copy_within(0..at, 1);
            entries[0] = (pool, cell);
            last.set(entries);
        }
    });
}

impl<C> Pool<C> {
    pub(crate) fn new(
        endpoint: Arc<str>,
        config: ClientConfig,
        make: Arc<MakeClient<C>>,
        helpers: Arc<ScheduledThreadPool>,
    ) -> Pool<C> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let closed = Arc::new(AtomicBool::new(false));
        let manager = TokenManager {
            closed: closed.clone(),
        };
        let tokens = r2d2::Pool::builder()
            .max_size(config.get_pool_size())
            // Every token at once, on r2d2's helper thread: they cost nothing (connections are
            // opened on demand, by the callers), and a caller that finds none idle then knows
            // that every connection is busy.
            .min_idle(None)
            .test_on_check_out(false)
            // Tokens hold nothing worth reaping; a dropped token would strand its claim.
            .idle_timeout(None)
            .max_lifetime(None)
            .connection_timeout(config.get_pool_timeout().max(Duration::from_millis(1)))
            .thread_pool(helpers)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        let cells = (0..config.get_pool_size())
            .map(|_| Cell(Mutex::new(CellState::Empty)))
            .collect();
        Pool {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            lookups: Lookups::new(endpoint.clone(), config.resolver().clone()),
            endpoint,
            config,
            make,
            tokens,
            cells,
            open: Arc::new(AtomicU64::new(0)),
            closed,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Takes a token and a cell with a working connection in it, opening one if needed.
    /// The pool wait and the connect are each cut to what is left until `deadline`, if any.
    pub(crate) fn checkout(&self, deadline: Option<Instant>) -> Result<Checkout<C>, Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let (mut checkout, opening_since) = match self.take_own_kept() {
            Some(checkout) => (checkout, None),
            None => self.checkout_with_token(deadline)?,
        };
        if let Some(live) = &checkout.live {
            if live
                .state
                .is_reusable(self.config.get_reuse_unchecked_within())
            {
                return Ok(checkout);
            }
            log::debug!(target: "blocking_thrift::pool", "{}: pooled connection was closed by the server; reconnecting", self.endpoint);
            checkout.discard();
        }
        // A wait for the pool's first tokens was part of opening: the connect timeout bounds both.
        let connect_timeout = match opening_since {
            Some(since) => self
                .config
                .get_connect_timeout()
                .saturating_sub(since.elapsed()),
            None => self.config.get_connect_timeout(),
        };
        match self.open(within(connect_timeout, deadline)) {
            Ok(live) => {
                checkout.live = Some(Box::new(live));
                Ok(checkout)
            }
            Err(err) => {
                self.checkin(checkout);
                Err(err)
            }
        }
    }

    /// This thread's last cell, if it is idle and kept its token: a thread calling again, the
    /// common case, needs nothing from r2d2.
    fn take_own_kept(&self) -> Option<Checkout<C>> {
        self.take_kept_at(last_cell(self.id)?)
    }

    /// Any idle cell that kept its token: for a caller that finds r2d2 out of tokens.
    fn take_any_kept(&self) -> Option<Checkout<C>> {
        (0..self.cells.len()).find_map(|cell| self.take_kept_at(cell))
    }

    /// Cell `cell`'s connection and kept token, if it is idle and kept one.
    fn take_kept_at(&self, cell: usize) -> Option<Checkout<C>> {
        let (live, token) = self.cells.get(cell)?.0.lock().take_kept()?;
        Some(Checkout {
            live: Some(live),
            cell,
            token: claiming(token, cell),
        })
    }

    /// A token from r2d2, or a kept one, and a cell for it; and, if the pool's tokens were
    /// still being made, since when the caller waited for one (see `checkout`).
    fn checkout_with_token(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Checkout<C>, Option<Instant>), Error> {
        let mut opening_since = None;
        let mut token = match self.tokens.try_get() {
            Some(token) => Box::new(token),
            None => {
                if let Some(checkout) = self.take_any_kept() {
                    return Ok((checkout, None));
                }
                let wait = if self.tokens.state().connections < self.config.get_pool_size() {
                    // The tokens are still being made: no connection is busy, so this is no
                    // wait for one but part of opening one.
                    opening_since = Some(Instant::now());
                    within(self.config.get_connect_timeout(), deadline)
                } else {
                    within(self.config.get_pool_timeout(), deadline)
                };
                let _waiting = Waiting::new(&self.waiting);
                // A call may have ended and kept its token since the look above.
                if let Some(checkout) = self.take_any_kept() {
                    return Ok((checkout, None));
                }
                let token = if wait.is_zero() {
                    // The last tokens may have been made since the first look.
                    self.tokens.try_get()
                } else {
                    self.tokens.get_timeout(wait).ok()
                };
                token
                    .map(Box::new)
                    .ok_or(Error::Timeout(Timeout::PoolWait))?
            }
        };
        if let Some(stranded) = token.claim.take() {
            *self.cells[stranded].0.lock() = CellState::Empty;
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let (cell, live) = self.take_cell();
        let checkout = Checkout {
            live,
            cell,
            token: claiming(token, cell),
        };
        Ok((checkout, opening_since))
    }

    /// Marks a cell busy and takes its connection: this thread's last cell if it is idle, else
    /// the first idle one, else the first empty one. The caller holds a token, so one of them
    /// is idle or empty; a pass can still miss it while other threads move, hence the loop. A
    /// token the idle cell kept goes back to r2d2: the caller has one.
    fn take_cell(&self) -> (usize, Option<Box<Live<C>>>) {
        if let Some(index) = last_cell(self.id) {
            if let Some((live, kept)) = self.cells.get(index).and_then(|c| c.0.lock().take_idle()) {
                drop(kept);
                return (index, Some(live));
            }
        }
        loop {
            let mut empty = None;
            for (index, cell) in self.cells.iter().enumerate() {
                let mut state = cell.0.lock();
                if let Some((live, kept)) = state.take_idle() {
                    drop(state);
                    drop(kept);
                    return (index, Some(live));
                }
                if matches!(*state, CellState::Empty) {
                    empty.get_or_insert(index);
                }
            }
            if let Some(index) = empty {
                let mut state = self.cells[index].0.lock();
                if matches!(*state, CellState::Empty) {
                    *state = CellState::Busy;
                    return (index, None);
                }
            }
            std::thread::yield_now();
        }
    }

    /// Gives a checkout back: its connection, if it still has one, waits idle in its cell,
    /// keeping the token unless a caller waits for one.
    pub(crate) fn checkin(&self, checkout: Checkout<C>) {
        let Checkout {
            live,
            cell,
            mut token,
        } = checkout;
        token.claim = None;
        let mut token = Some(token);
        let closing = {
            let mut state = self.cells[cell].0.lock();
            // Read under the cell's lock: `close` sets the flag before it sweeps the cells.
            match live {
                Some(live) if !self.closed.load(Ordering::Acquire) => {
                    *state = CellState::Idle(live, token.take());
                    None
                }
                live => {
                    *state = CellState::Empty;
                    live
                }
            }
        };
        // Closed, or given back to r2d2, outside the lock.
        drop(closing);
        let kept = token.is_none();
        drop(token);
        // Pairs with the fence in `Waiting::new`.
        fence(Ordering::SeqCst);
        if kept && self.waiting.load(Ordering::SeqCst) > 0 {
            let given_back = match &mut *self.cells[cell].0.lock() {
                CellState::Idle(_, kept) => kept.take(),
                _ => None,
            };
            drop(given_back);
        }
        remember_cell(self.id, cell);
    }

    fn open(&self, connect_timeout: Duration) -> Result<Live<C>, Error> {
        let deadline = Instant::now() + connect_timeout;
        let addrs = self.lookups.resolve(deadline)?;
        let stream = connection::connect(&self.endpoint, &addrs, deadline)?;
        let tls = match self.config.get_tls() {
            Some(tls) => Some(connection::secure(&self.endpoint, &stream, tls, deadline)?),
            None => None,
        };
        let (state, reader, writer) = connection::split(
            stream,
            tls,
            self.config.get_transport(),
            self.config.get_read_timeout(),
            self.config.get_max_message_size(),
        )
        .map_err(|source| Error::Connect {
            endpoint: self.endpoint.clone(),
            source,
        })?;
        log::debug!(target: "blocking_thrift::pool", "{}: connection opened", self.endpoint);
        let input = wire::input(self.config.get_protocol(), reader, self.config.limits());
        let output = wire::output(self.config.get_protocol(), writer);
        // Made first: should the user's `make` panic, no connection is counted open.
        let client = (self.make)(input, output);
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Live {
            client,
            state,
            open: self.open.clone(),
        })
    }

    /// Open connections not serving a call now.
    pub(crate) fn idle_connections(&self) -> u64 {
        self.cells
            .iter()
            .filter(|cell| matches!(*cell.0.lock(), CellState::Idle(..)))
            .count() as u64
    }

    /// Connections open now, idle or busy.
    pub(crate) fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Closes every idle connection now and every busy one when its call returns.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for cell in self.cells.iter() {
            let idle = {
                let mut state = cell.0.lock();
                let idle = state.take_idle();
                if idle.is_some() {
                    *state = CellState::Empty;
                }
                idle
            };
            // Closed outside the lock.
            drop(idle);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl<C> fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("endpoint", &self.endpoint)
            .field("open", &self.open_connections())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener};
    use std::time::Duration;

    use super::*;

    /// A listener that holds each connection it accepts until the client closes it.
    fn listener() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = std::io::Read::read(&mut stream, &mut [0; 1]);
                });
            }
        });
        addr
    }

    fn pool(addr: SocketAddr, size: u32) -> Pool<()> {
        // Generous: under a burst of reconnects a loopback SYN is now and then dropped and
        // sent again a second later.
        let config = ClientConfig::default()
            .pool_size(size)
            .connect_timeout(Duration::from_secs(30))
            .pool_timeout(Duration::from_secs(30));
        Pool::new(
            addr.to_string().into(),
            config,
            Arc::new(|_, _| ()),
            helpers(),
        )
    }

    fn local_port(checkout: &mut Checkout<()>) -> u16 {
        checkout.live().state.local_port()
    }

    #[test]
    fn a_thread_takes_back_the_connection_it_used_last() {
        let pool = pool(listener(), 4);
        let (taken, other_took) = std::sync::mpsc::channel();
        let (give_back, other_may_give_back) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let pool = &pool;
            let other = s.spawn(move || {
                let mut theirs = pool.checkout(None).unwrap();
                taken.send(local_port(&mut theirs)).unwrap();
                other_may_give_back.recv().unwrap();
                pool.checkin(theirs);
            });
            // The other thread holds the first connection while this one opens a second.
            let other_port = other_took.recv().unwrap();
            let mut mine = pool.checkout(None).unwrap();
            let my_port = local_port(&mut mine);
            assert_ne!(my_port, other_port);
            give_back.send(()).unwrap();
            other.join().unwrap();
            pool.checkin(mine);
            for _ in 0..3 {
                let mut again = pool.checkout(None).unwrap();
                assert_eq!(local_port(&mut again), my_port);
                pool.checkin(again);
            }
        });
        assert_eq!(pool.open_connections(), 2);
    }

    #[test]
    fn a_thread_new_to_the_pool_takes_an_idle_connection_before_opening_one() {
        // With 4 places r2d2 has tokens to spare; with 1, the only token stays with the idle
        // connection (nobody was waiting) and the new thread takes it from there.
        for size in [4, 1] {
            let pool = pool(listener(), size);
            let mut first = pool.checkout(None).unwrap();
            let port = local_port(&mut first);
            pool.checkin(first);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut second = pool.checkout(None).unwrap();
                    assert_eq!(local_port(&mut second), port);
                    pool.checkin(second);
                });
            });
            assert_eq!(pool.open_connections(), 1);
        }
    }

    #[test]
    fn a_checkout_dropped_without_checkin_closes_its_connection_and_frees_its_cell() {
        let pool = pool(listener(), 1);
        drop(pool.checkout(None).unwrap());
        assert_eq!(pool.open_connections(), 0);
        // The only cell was left busy; the token's next holder frees it.
        let again = pool.checkout(None).unwrap();
        assert_eq!(pool.open_connections(), 1);
        pool.checkin(again);
    }

    #[test]
    fn threads_outnumbering_connections_never_open_more_than_pool_size() {
        let pool = pool(listener(), 3);
        std::thread::scope(|s| {
            for t in 0..8 {
                let pool = &pool;
                s.spawn(move || {
                    for i in 0..150 {
                        let mut checkout = pool.checkout(None).unwrap();
                        assert!(pool.open_connections() <= 3);
                        match (t + i) % 13 {
                            // A call whose connection broke.
                            0 => {
                                checkout.discard();
                                pool.checkin(checkout);
                            }
                            // A call that panicked: dropped without a check-in.
                            1 => drop(checkout),
                            _ => pool.checkin(checkout),
                        }
                    }
                });
            }
        });
        // The last calls may have broken every connection; whatever is open is idle now.
        let open = pool.open_connections();
        assert!(open <= 3, "{open} connections open");
        assert_eq!(pool.idle_connections(), open);
        // Every place is free again: as many checkouts as the pool holds succeed at once.
        let all: Vec<_> = (0..3).map(|_| pool.checkout(None).unwrap()).collect();
        assert_eq!(pool.open_connections(), 3);
        for checkout in all {
            pool.checkin(checkout);
        }
    }

    #[test]
    fn a_caller_waiting_for_the_only_connection_gets_it_when_the_call_ends() {
        let config = ClientConfig::default()
            .pool_size(1)
            .connect_timeout(Duration::from_secs(30))
            .pool_timeout(Duration::from_secs(20));
        let pool: Pool<()> = Pool::new(
            listener().to_string().into(),
            config,
            Arc::new(|_, _| ()),
            helpers(),
        );
        for _ in 0..20 {
            let busy = pool.checkout(None).unwrap();
            std::thread::scope(|s| {
                let waiter = s.spawn(|| {
                    let started = Instant::now();
                    let checkout = pool.checkout(None).unwrap();
                    pool.checkin(checkout);
                    started.elapsed()
                });
                // The only token is out, so the waiter has to wait: give it back once it does.
                while pool.waiting.load(Ordering::SeqCst) == 0 {
                    std::thread::yield_now();
                }
                pool.checkin(busy);
                let waited = waiter.join().unwrap();
                // Handed on at once; a token kept by the idle connection would leave the
                // waiter to the 20 s pool timeout.
                assert!(waited < Duration::from_secs(10), "waited {waited:?}");
            });
        }
        assert_eq!(pool.open_connections(), 1);
    }

    #[test]
    fn close_closes_idle_connections_and_those_checked_in_later() {
        let pool = pool(listener(), 2);
        let idle = pool.checkout(None).unwrap();
        let busy = pool.checkout(None).unwrap();
        pool.checkin(idle);
        assert_eq!(pool.open_connections(), 2);
        pool.close();
        assert_eq!(pool.open_connections(), 1);
        pool.checkin(busy);
        assert_eq!(pool.open_connections(), 0);
        assert!(matches!(pool.checkout(None), Err(Error::Closed)));
    }

    #[test]
    fn a_wait_for_the_first_tokens_counts_against_the_connect_timeout() {
        // An endpoint whose accept queue is full: a connect to it never completes.
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        listener.bind(&any.into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut held = Vec::new();
        loop {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            if s.connect_timeout(&addr.into(), Duration::from_millis(100))
                .is_err()
            {
                break;
            }
            held.push(s);
        }
        // r2d2's helper thread busy elsewhere: the pool's tokens wait to be made.
        let helpers = helpers();
        let (release, busy) = crossbeam_channel::bounded::<()>(0);
        helpers.execute(move || {
            let _ = busy.recv();
        });
        let connect_timeout = Duration::from_secs(2);
        let config = ClientConfig::default().connect_timeout(connect_timeout);
        let pool: Pool<()> = Pool::new(
            addr.to_string().into(),
            config,
            Arc::new(|_, _| ()),
            helpers,
        );
        let started = Instant::now();
        let caller = std::thread::spawn(move || pool.checkout(None).map(drop));
        std::thread::sleep(connect_timeout * 3 / 4);
        release.send(()).unwrap();
        let result = caller.join().unwrap();
        let took = started.elapsed();
        assert!(
            matches!(result, Err(Error::Timeout(Timeout::Connect))),
            "{result:?}"
        );
        // Not the connect timeout again on top of the wait for a token.
        assert!(took < connect_timeout * 3 / 2, "took {took:?}");
        drop(held);
    }
}
