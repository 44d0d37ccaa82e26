//! The poller thread: accepts connections and watches idle ones, handing each connection that
//! becomes readable to the workers (unless a worker free for more takes it from the ready set
//! first).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use super::conn::{Closed, Conn};
use super::ready::{ReadySet, Token};
use super::{ServerCore, TARGET};
use crate::poll::Interest;

/// How often the poller looks at the parked connections while it is not watching them (every
/// worker is busy): a connection that became ready meanwhile, and that no worker took from the
/// set, is queued after at most this long, which bounds how long a ready request goes unseen.
const LOOK_EVERY: Duration = Duration::from_millis(1);

/// How long accepting pauses after the system ran out of a resource (file descriptors, memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How many connections one readiness event of the listener may accept, so that a burst of new
/// clients cannot delay dispatching requests on the connections already open.
const ACCEPT_BATCH: usize = 256;

/// What an event in the poller's own set is about.
#[derive(Clone, Copy)]
enum Source {
    Listener,
    /// One of the ready sets of parked connections, by its index.
    Connections(usize),
}

impl Source {
    fn token(self) -> Token {
        match self {
            Source::Listener => Token(0),
            Source::Connections(set) => Token(set + 1),
        }
    }

    fn of(token: Token) -> Source {
        match token.0 {
            0 => Source::Listener,
            key => Source::Connections(key - 1),
        }
    }
}

/// Makes the poller's set `events` report the sets of parked connections.
pub(super) fn watch_sets(events: &ReadySet, sets: &[ReadySet]) -> io::Result<()> {
    for (i, set) in sets.iter().enumerate() {
        events.watch(set, Source::Connections(i).token())?;
    }
    Ok(())
}

/// Makes the poller's set `events` report the listener's next connection.
pub(super) fn watch_listener(events: &ReadySet, listener: &TcpListener) -> io::Result<()> {
    // Closing the listener takes it out of the set.
    events.add(listener, Source::Listener.token(), Interest::Read)
}

/// The poller thread's loop; returns once the server is stopping, after closing the listener and
/// every idle connection.
pub(super) fn run(core: Arc<ServerCore>, listener: TcpListener) {
    let mut poller = Poller::new(core, listener);
    while !poller.core.schedule.is_stopping() {
        poller.watch_as_wanted();
        if !poller.wait() {
            continue;
        }
        if poller.core.schedule.is_stopping() {
            break;
        }
        poller.dispatch_events();
        let now = Instant::now();
        poller.resume_accepting(now);
        poller.sweep(now);
    }
    poller.shut_down();
}

/// The poller thread's state between its phases.
struct Poller {
    core: Arc<ServerCore>,
    listener: TcpListener,
    /// Connections are closed at most this late after they expire.
    sweep_every: Duration,
    next_sweep: Instant,
    accept_paused_until: Option<Instant>,
    /// Whether the poller's set reports the sets of parked connections.
    watching: bool,
    events: Vec<Token>,
    ready: Vec<Token>,
}

impl Poller {
    fn new(core: Arc<ServerCore>, listener: TcpListener) -> Poller {
        let config = &core.config;
        // Connections are closed at most a quarter of their timeout late (and at most a second),
        // without a timer per connection.
        let sweep_every = (config.get_idle_timeout().min(config.get_request_timeout()) / 4)
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        Poller {
            core,
            listener,
            sweep_every,
            next_sweep: Instant::now() + sweep_every,
            accept_paused_until: None,
            watching: true,
            events: Vec::new(),
            ready: Vec::new(),
        }
    }

    /// Watches the parked connections only while a worker waits for work; a worker that
    /// starts to wait while they are not wakes this thread (see `Schedule::next_work`).
    fn watch_as_wanted(&mut self) {
        let schedule = &self.core.schedule;
        let wanted = schedule.decide_poller_watching();
        if wanted != self.watching {
            match self.rewatch(wanted) {
                Ok(()) => self.watching = wanted,
                Err(err) => error!(target: TARGET, "cannot watch the connections: {err}"),
            }
        }
        schedule.set_poller_watching(self.watching);
    }

    /// Starts or stops reporting every set of parked connections.
    fn rewatch(&self, on: bool) -> io::Result<()> {
        for (i, set) in self.core.connections.iter().enumerate() {
            let token = Source::Connections(i).token();
            self.core.events.rewatch(set, token, on)?;
        }
        Ok(())
    }

    /// Waits for events until the next thing to do; `false` if waiting failed.
    fn wait(&mut self) -> bool {
        let now = Instant::now();
        let mut wake_at = self
            .accept_paused_until
            .map_or(self.next_sweep, |until| until.min(self.next_sweep));
        if !self.watching {
            wake_at = wake_at.min(now + LOOK_EVERY);
        }
        self.events.clear();
        let timeout = Some(wake_at.saturating_duration_since(now));
        if let Err(err) = self.core.events.wait(timeout, &mut self.events) {
            error!(target: TARGET, "waiting for socket events failed: {err}");
            std::thread::sleep(ACCEPT_BACKOFF);
            return false;
        }
        true
    }

    /// Accepts new connections and queues the ready ones.
    fn dispatch_events(&mut self) {
        for &token in &self.events {
            match Source::of(token) {
                Source::Listener => {
                    self.accept_paused_until = accept(&self.core, &self.listener, ACCEPT_BATCH)
                }
                Source::Connections(set) => dispatch(&self.core, set, &mut self.ready),
            }
        }
        if !self.watching {
            // Queues what became ready while every worker was busy, so that it is counted,
            // its wait measured, and lingering workers let go of their connections for it.
            for set in 0..self.core.connections.len() {
                dispatch(&self.core, set, &mut self.ready);
            }
        }
    }

    /// Watches the listener again once a pause in accepting is over.
    fn resume_accepting(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| until <= now) {
            self.accept_paused_until = None;
            if let Err(err) = rearm(&self.core, &self.listener) {
                error!(target: TARGET, "cannot watch the listening socket: {err}");
            }
        }
    }

    /// Closes the parked connections that have expired, when it is time to look.
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep > now {
            return;
        }
        self.next_sweep = now + self.sweep_every;
        let config = &self.core.config;
        let expired = self.core.table.lock().take_expired(now);
        for conn in expired {
            let closed = if conn.sending() {
                Closed::SendTimeout(config.get_request_timeout())
            } else if conn.mid_request() {
                Closed::Timeout(config.get_request_timeout())
            } else {
                debug!(
                    target: TARGET,
                    "closing connection from {}: idle for {:?}",
                    conn.peer(),
                    config.get_idle_timeout()
                );
                continue;
            };
            self.core.counters.count_error();
            info!(target: TARGET, "closing connection from {}: {closed}", conn.peer());
        }
    }

    /// Closes the listener and the idle connections; queues those with a request waiting.
    fn shut_down(self) {
        let core = &self.core;
        // Requests that have arrived whole before the listener closes are answered: those on
        // connections the system has completed but the server not yet accepted too, all of
        // them, not a batch. Whatever arrives later finds the listener or its connection closed.
        let _ = accept(core, &self.listener, usize::MAX);
        let addr = self.listener.local_addr();
        drop(self.listener);
        // From here, a worker done with its connection cannot park it; it answers what has
        // arrived on it and closes it (see `ServerCore::park`).
        let parked = core.table.lock().close();
        let (mut idle, mut pending) = (0, 0);
        for conn in parked {
            if conn.has_input() {
                pending += 1;
                core.queue(conn);
            } else {
                idle += 1;
                core.discard(conn);
            }
        }
        if let Ok(addr) = addr {
            info!(
                target: TARGET,
                "stopped accepting on {addr}; closed {idle} idle connections, answering {pending} with requests waiting"
            );
        }
    }
}

/// Hands the connections that became ready to the workers, in the order they did.
fn dispatch(core: &ServerCore, set: usize, ready: &mut Vec<Token>) {
    ready.clear();
    let Some(set) = core.connections.get(set) else {
        return;
    };
    if let Err(err) = set.wait(Some(Duration::ZERO), ready) {
        error!(target: TARGET, "taking ready connections failed: {err}");
        return;
    }
    for &key in ready.iter() {
        let taken = core.table.lock().take_parked(key);
        if let Some(conn) = taken {
            core.queue(conn);
        }
    }
}

/// Asks for the listening socket's next waiting connection.
fn rearm(core: &ServerCore, listener: &TcpListener) -> io::Result<()> {
    core.events
        .arm(listener, Source::Listener.token(), Interest::Read)
}

/// Accepts waiting connections, at most `batch` of them; returns when to try again if
/// accepting had to pause.
fn accept(core: &ServerCore, listener: &TcpListener, batch: usize) -> Option<Instant> {
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
        core.counters.count_accepted();
        if let Err(err) = Conn::configure(&stream, &core.config) {
            debug!(target: TARGET, "dropping connection from {peer}: {err}");
            continue;
        }
        admit(core, stream, peer);
    }
    if let Err(err) = rearm(core, listener) {
        error!(target: TARGET, "cannot watch the listening socket, pausing: {err}");
        return Some(Instant::now() + ACCEPT_BACKOFF);
    }
    None
}

/// Parks an accepted connection to wait for its first request, or closes it when
/// `max_connections` are open already.
fn admit(core: &ServerCore, stream: TcpStream, peer: SocketAddr) {
    let config = &core.config;
    let rejected = {
        let mut table = core.table.lock();
        match table.reserve(config.get_max_connections()) {
            None => Some(stream),
            Some(key) => {
                match Conn::new(key, peer, stream, &core.connections) {
                    Ok(conn) => table.admit(conn, Instant::now() + config.get_idle_timeout()),
                    Err(err) => {
                        table.release(key);
                        error!(target: TARGET, "cannot watch connection from {peer}: {err}");
                    }
                }
                None
            }
        }
    };
    match rejected {
        Some(stream) => {
            core.counters.count_rejected();
            warn!(
                target: TARGET,
                "closing connection from {peer}: {} connections are already open",
                config.get_max_connections()
            );
            drop(stream);
        }
        None => debug!(target: TARGET, "accepted connection from {peer}"),
    }
}
