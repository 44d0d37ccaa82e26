//! The poller thread: accepts connections and watches idle ones, handing each connection that
//! becomes readable to the workers (unless a worker free for more takes it from the ready set
//! first).

use std::io;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use super::conn::{Closed, Conn};
use super::ready::{Interest, ReadySet};
use super::{Shared, TARGET};

/// The poller's keys in [`Shared::events`]: the listening socket, and the sets of connections,
/// one key each from `CONNECTIONS` on.
pub(super) const LISTENER: usize = 0;
pub(super) const CONNECTIONS: usize = 1;

/// How often the poller looks at the parked connections while it is not watching them (every
/// worker is busy): a connection that became ready meanwhile, and that no worker took from the
/// set, is queued after at most this long, which bounds how long a ready request goes unseen.
const LOOK_EVERY: Duration = Duration::from_millis(1);

/// How long accepting pauses after the system ran out of a resource (file descriptors, memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How many connections one readiness event of the listener may accept, so that a burst of new
/// clients cannot delay dispatching requests on the connections already open.
const ACCEPT_BATCH: usize = 256;

/// Where every open connection is, indexed by its poller key.
#[derive(Default)]
pub(super) struct Table {
    slots: Vec<Slot>,
    free: Vec<usize>,
    idle: usize,
    /// What the buffers of parked connections hold, together.
    held: usize,
    closed: bool,
}

// Parked connections are kept in their slots, not boxed: parking one allocates nothing. A
// free slot costs the size of a connection, about as much as the kernel's own socket state.
#[allow(clippy::large_enum_variant)]
enum Slot {
    Free,
    /// With a worker or in the workers' queue.
    Busy,
    /// Waiting for bytes (or for room to send the rest of a response), watched by the poller;
    /// closed at `expires` if none come. `held` is what its buffers held when it was parked.
    Parked {
        conn: Conn,
        expires: Instant,
        held: usize,
    },
}

impl Table {
    pub(super) fn open(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub(super) fn idle(&self) -> usize {
        self.idle
    }

    pub(super) fn held(&self) -> usize {
        self.held
    }

    fn reserve(&mut self) -> usize {
        match self.free.pop() {
            Some(key) => {
                self.slots[key] = Slot::Busy;
                key
            }
            None => {
                self.slots.push(Slot::Busy);
                self.slots.len() - 1
            }
        }
    }

    /// Frees the slot of a connection that is being closed.
    pub(super) fn release(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key) {
            if let Slot::Parked { held, .. } = std::mem::replace(slot, Slot::Free) {
                self.idle -= 1;
                self.held -= held;
            }
            self.free.push(key);
        }
    }

    pub(super) fn take_parked(&mut self, key: usize) -> Option<Conn> {
        let slot = self.slots.get_mut(key)?;
        if !matches!(slot, Slot::Parked { .. }) {
            return None;
        }
        match std::mem::replace(slot, Slot::Busy) {
            Slot::Parked { conn, held, .. } => {
                self.idle -= 1;
                self.held -= held;
                Some(conn)
            }
            _ => unreachable!("checked above"),
        }
    }

    /// Parks `conn` until `expires` and arms it in one of the ready `sets`. Gives the connection
    /// back, to be closed, when the server is stopping or the set refused it (with the error).
    ///
    /// A connection whose buffers would take what parked connections hold past `max_held` is
    /// refused too, once the idle ones (itself included) have given their buffers back: those
    /// are kept only to be reused, and the limit is for partial requests and responses.
    pub(super) fn park(
        &mut self,
        mut conn: Conn,
        expires: Instant,
        max_held: usize,
        sets: &[ReadySet],
    ) -> Option<(Conn, Option<io::Error>)> {
        if self.closed {
            return Some((conn, None));
        }
        if self.held.saturating_add(conn.held_bytes()) > max_held {
            conn.release_buffers();
            if self.held.saturating_add(conn.held_bytes()) > max_held {
                self.release_idle_buffers();
            }
            if self.held.saturating_add(conn.held_bytes()) > max_held {
                let err = io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("waiting requests already hold {} bytes", self.held),
                );
                return Some((conn, Some(err)));
            }
        }
        let held = conn.held_bytes();
        // Armed under the table's lock (a quick, non-blocking epoll_ctl): a connection is taken
        // out of its slot only under this lock, so the event cannot be handled before the
        // connection is back in its slot.
        if let Err(err) = conn.arm(sets) {
            return Some((conn, Some(err)));
        }
        let key = conn.key();
        self.slots[key] = Slot::Parked {
            conn,
            expires,
            held,
        };
        self.idle += 1;
        self.held += held;
        None
    }

    /// Frees the buffers every parked connection keeps between requests.
    fn release_idle_buffers(&mut self) {
        for slot in &mut self.slots {
            if let Slot::Parked { conn, held, .. } = slot {
                conn.release_buffers();
                let now = conn.held_bytes();
                self.held -= *held - now;
                *held = now;
            }
        }
    }

    /// Takes out every parked connection that expires at `now` or earlier, freeing their slots.
    fn take_expired(&mut self, now: Instant) -> Vec<Conn> {
        self.take_parked_where(|expires| expires <= now)
    }

    /// Takes out every parked connection, their slots kept, and refuses to park any more:
    /// the server is stopping.
    fn close(&mut self) -> Vec<Conn> {
        self.closed = true;
        let parked: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| matches!(slot, Slot::Parked { .. }))
            .map(|(key, _)| key)
            .collect();
        parked
            .into_iter()
            .filter_map(|key| self.take_parked(key))
            .collect()
    }

    fn take_parked_where(&mut self, expired: impl Fn(Instant) -> bool) -> Vec<Conn> {
        let expired: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| matches!(slot, Slot::Parked { expires, .. } if expired(*expires)))
            .map(|(key, _)| key)
            .collect();
        let mut conns = Vec::with_capacity(expired.len());
        for key in expired {
            if let Some(conn) = self.take_parked(key) {
                self.release(key);
                conns.push(conn);
            }
        }
        conns
    }
}

/// The poller thread's loop; returns once the server is stopping, after closing the listener and
/// every idle connection.
pub(super) fn run(shared: Arc<Shared>, listener: TcpListener) {
    let config = &shared.config;
    // Connections are closed at most a quarter of their timeout late (and at most a second),
    // without a timer per connection.
    let sweep_every = (config.get_idle_timeout().min(config.get_request_timeout()) / 4)
        .clamp(Duration::from_millis(1), Duration::from_secs(1));
    let mut next_sweep = Instant::now() + sweep_every;
    let mut accept_paused_until: Option<Instant> = None;
    let (mut events, mut ready) = (Vec::new(), Vec::new());
    let mut watching = true;

    while !shared.stopping.load(Ordering::SeqCst) {
        // The parked connections are watched only while a worker waits for work; a worker that
        // starts to wait while they are not wakes this thread (see `Shared::next_work`).
        let mut wanted = shared.watch_wanted();
        if !wanted {
            shared.watching.store(false, Ordering::SeqCst);
            wanted = shared.watch_wanted();
        }
        if wanted != watching {
            match shared
                .events
                .rewatch_all(&shared.connections, CONNECTIONS, wanted)
            {
                Ok(()) => watching = wanted,
                Err(err) => error!(target: TARGET, "cannot watch the connections: {err}"),
            }
        }
        shared.watching.store(watching, Ordering::SeqCst);
        let now = Instant::now();
        let mut wake_at = accept_paused_until.map_or(next_sweep, |until| until.min(next_sweep));
        if !watching {
            wake_at = wake_at.min(now + LOOK_EVERY);
        }
        events.clear();
        if let Err(err) = shared
            .events
            .wait(Some(wake_at.saturating_duration_since(now)), &mut events)
        {
            error!(target: TARGET, "waiting for socket events failed: {err}");
            std::thread::sleep(ACCEPT_BACKOFF);
            continue;
        }
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        for &key in &events {
            match key {
                LISTENER => accept_paused_until = accept(&shared, &listener, ACCEPT_BATCH),
                key => dispatch(&shared, key - CONNECTIONS, &mut ready),
            }
        }
        if !watching {
            // Queues what became ready while every worker was busy, so that it is counted,
            // its wait measured, and lingering workers let go of their connections for it.
            for set in 0..shared.connections.len() {
                dispatch(&shared, set, &mut ready);
            }
        }

        let now = Instant::now();
        if accept_paused_until.is_some_and(|until| until <= now) {
            accept_paused_until = None;
            if let Err(err) = rearm(&shared, &listener) {
                error!(target: TARGET, "cannot watch the listening socket: {err}");
            }
        }
        if next_sweep <= now {
            next_sweep = now + sweep_every;
            let expired = shared.table.lock().take_expired(now);
            for conn in expired {
                if conn.sending() {
                    shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    info!(
                        target: TARGET,
                        "closing connection from {}: {}",
                        conn.peer(),
                        Closed::SendTimeout(config.get_request_timeout())
                    );
                } else if conn.mid_request() {
                    shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    info!(
                        target: TARGET,
                        "closing connection from {}: {}",
                        conn.peer(),
                        Closed::Timeout(config.get_request_timeout())
                    );
                } else {
                    debug!(
                        target: TARGET,
                        "closing connection from {}: idle for {:?}",
                        conn.peer(),
                        config.get_idle_timeout()
                    );
                }
            }
        }
    }

    // Requests that have arrived whole before the listener closes are answered: those on
    // connections the system has completed but the server not yet accepted too, all of them,
    // not a batch. Whatever arrives later finds the listener or its connection closed.
    let _ = accept(&shared, &listener, usize::MAX);
    let addr = listener.local_addr();
    drop(listener);
    // From here, a worker done with its connection cannot park it; it answers what has arrived
    // on it and closes it (see `Shared::park`).
    let parked = shared.table.lock().close();
    let (mut idle, mut pending) = (0, 0);
    for conn in parked {
        if conn.has_input() {
            pending += 1;
            shared.queue(conn);
        } else {
            idle += 1;
            shared.discard(conn);
        }
    }
    if let Ok(addr) = addr {
        info!(
            target: TARGET,
            "stopped accepting on {addr}; closed {idle} idle connections, answering {pending} with requests waiting"
        );
    }
}

/// Hands the connections that became ready to the workers, in the order they did.
fn dispatch(shared: &Shared, set: usize, ready: &mut Vec<usize>) {
    ready.clear();
    let Some(set) = shared.connections.get(set) else {
        return;
    };
    if let Err(err) = set.wait(Some(Duration::ZERO), ready) {
        error!(target: TARGET, "taking ready connections failed: {err}");
        return;
    }
    for &key in ready.iter() {
        let taken = shared.table.lock().take_parked(key);
        if let Some(conn) = taken {
            shared.queue(conn);
        }
    }
}

/// Asks for the listening socket's next waiting connection.
fn rearm(shared: &Shared, listener: &TcpListener) -> io::Result<()> {
    shared.events.arm(listener, LISTENER, Interest::Read)
}

/// Accepts waiting connections, at most `batch` of them; returns when to try again if
/// accepting had to pause.
fn accept(shared: &Shared, listener: &TcpListener, batch: usize) -> Option<Instant> {
    for _ in 0..batch {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                continue
            }
            Err(err) => {
                error!(target: TARGET, "accepting connections failed, pausing for {ACCEPT_BACKOFF:?}: {err}");
                return Some(Instant::now() + ACCEPT_BACKOFF);
            }
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = Conn::configure(&stream, &shared.config) {
            debug!(target: TARGET, "dropping connection from {peer}: {err}");
            continue;
        }
        let rejected = {
            let mut table = shared.table.lock();
            if table.open() >= shared.config.get_max_connections() {
                Some(stream)
            } else {
                let key = table.reserve();
                match Conn::new(key, peer, stream, &shared.connections) {
                    Ok(conn) => {
                        // A new connection's buffers are empty: it holds nothing yet.
                        table.slots[key] = Slot::Parked {
                            conn,
                            expires: Instant::now() + shared.config.get_idle_timeout(),
                            held: 0,
                        };
                        table.idle += 1;
                    }
                    Err(err) => {
                        table.release(key);
                        error!(target: TARGET, "cannot watch connection from {peer}: {err}");
                    }
                }
                None
            }
        };
        match rejected {
            Some(stream) => {
                shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                warn!(
                    target: TARGET,
                    "closing connection from {peer}: {} connections are already open",
                    shared.config.get_max_connections()
                );
                drop(stream);
            }
            None => debug!(target: TARGET, "accepted connection from {peer}"),
        }
    }
    if let Err(err) = rearm(shared, listener) {
        error!(target: TARGET, "cannot watch the listening socket, pausing: {err}");
        return Some(Instant::now() + ACCEPT_BACKOFF);
    }
    None
}
