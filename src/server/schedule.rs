//! Who serves a ready connection, and when a worker lets its connection go.
//!
//! Workers are takers or reserves. A free taker takes a queued connection, else a ready one
//! straight from the sets, else waits on the queue; a reserve only waits on the queue. The
//! poller watches the sets, queueing what becomes ready, only while a worker waits on the
//! queue: a taker, or a reserve while handlers hold too many takers
//! ([`Schedule::decide_poller_watching`]). A worker lingers on its own connection only while
//! no other connection wants a worker ([`Schedule::may_linger`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendError, Sender, TryRecvError};

use super::conn::Conn;
use super::ServerConfig;
use crate::clock::{nanos, Epoch};
use crate::counter::Striped;

/// What the workers take from their queue.
pub(super) enum Work {
    /// Serve this connection: bytes arrived on it, or are buffered.
    Serve(Conn),
    /// Exit; queued before it, the connections are served first.
    Stop,
}

/// What a worker does when it is free: see [`TAKERS_PER_CPU`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// Takes ready connections from the sets itself.
    Taker,
    /// Serves only what the poller queues.
    Reserve,
}

/// A taker yields its time slice before every this many looks at the sets: on busy cores it
/// would otherwise keep the clients it answered from running. Measured in `benches/README.md`.
const YIELD_EVERY: u32 = 4;

/// Workers per CPU that take ready connections from the sets themselves; the rest of a larger
/// pool are reserves, served by the poller: while the takers run, it hands them what waited a
/// millisecond, and while too few takers are left to run because their handlers are running
/// (and may block), it hands them every ready connection at once. More takers than the CPUs
/// can run only take turns, their clients waiting meanwhile. Measured in `benches/README.md`.
const TAKERS_PER_CPU: usize = 2;

/// How long after connections last had to wait for a busy worker workers stop lingering on
/// their own connections.
const SHORTAGE_MEMORY: Duration = Duration::from_millis(20);

/// A connection that waited in the queue longer than this is looked at before its requests
/// run: whether its client is still there, and whether they waited too long to be worth
/// running ([`Schedule::waited_too_long`]). Below capacity connections wait less, and pay
/// nothing for the look.
const SHED_CHECK_AFTER: Duration = Duration::from_millis(1);

thread_local! {
    /// Whether this worker thread counts its time in handlers (see
    /// [`Schedule::enlist_this_thread`]).
    static COUNTS_HANDLERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread counts its time in the processor: a taker in a pool with reserves.
#[inline]
pub(super) fn counts_handlers() -> bool {
    COUNTS_HANDLERS.with(|counts| counts.get())
}

/// The scheduling state the poller and the workers share.
pub(super) struct Schedule {
    /// The workers' queue, in arrival order.
    queue: Sender<Work>,
    workers: usize,
    /// How many workers are takers; the others are reserves.
    takers: usize,
    /// How many takers should be free of the processor, ready to run: one per CPU, at most
    /// all of them.
    free_takers_wanted: usize,
    /// Workers waiting for work, or about to: the queued connections they will take are not
    /// waiting for a busy worker to let go of its connection.
    free_workers: AtomicUsize,
    /// Takers waiting on the queue: with none, the poller sits out.
    idle_takers: AtomicUsize,
    /// Reserves waiting on the queue.
    idle_reserves: AtomicUsize,
    /// Takers running the processor, counted only while some workers are reserves: striped,
    /// so that workers on different CPUs do not pass one cache line back and forth.
    takers_in_handlers: Striped,
    /// When a connection was last queued with no free worker to take it.
    shortage: Shortage,
    /// Whether the poller watches the parked connections: while it does not, a worker going to
    /// wait for work wakes it to.
    watching: AtomicBool,
    stopping: AtomicBool,
    /// The workers' stop messages in the queue, which are no queued connections.
    stops_queued: AtomicUsize,
    /// See [`ServerConfig::max_queue_wait`].
    max_queue_wait: Duration,
}

impl Schedule {
    /// The schedule of the workers `config` asks for on `cpus` CPUs, feeding `queue`.
    pub(super) fn new(config: &ServerConfig, cpus: usize, queue: Sender<Work>) -> Schedule {
        let workers = config.get_workers();
        let takers = workers.min(cpus.saturating_mul(TAKERS_PER_CPU));
        Schedule {
            queue,
            workers,
            takers,
            free_takers_wanted: cpus.min(takers),
            free_workers: AtomicUsize::new(0),
            idle_takers: AtomicUsize::new(0),
            idle_reserves: AtomicUsize::new(0),
            takers_in_handlers: Striped::default(),
            shortage: Shortage::new(Instant::now()),
            watching: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            stops_queued: AtomicUsize::new(0),
            max_queue_wait: config.get_max_queue_wait(),
        }
    }

    /// Makes the calling thread worker `n` and returns its role. A taker in a pool with
    /// reserves marks its thread to count its time in handlers ([`counts_handlers`]), so that
    /// the reserves get work while handlers hold takers.
    pub(super) fn enlist_this_thread(&self, n: usize) -> Role {
        if n >= self.takers {
            return Role::Reserve;
        }
        if self.takers < self.workers {
            COUNTS_HANDLERS.with(|counts| counts.set(true));
        }
        Role::Taker
    }

    /// Queues a connection for the workers, behind the ones already waiting; gives it back
    /// if no worker is left to take it.
    #[must_use]
    pub(super) fn queue(&self, mut conn: Conn) -> Option<Conn> {
        conn.queued();
        match self.queue.send(Work::Serve(conn)) {
            Ok(()) => {}
            // Only when every worker is gone, which the server never lets happen while running.
            Err(SendError(Work::Serve(conn))) => return Some(conn),
            Err(SendError(Work::Stop)) => unreachable!("a connection was sent"),
        }
        if self.short_of_workers() {
            self.shortage.note(Instant::now());
        }
        None
    }

    /// Tells `workers` workers to exit once the connections queued so far are served.
    pub(super) fn queue_stops(&self, workers: usize) {
        for _ in 0..workers {
            self.stops_queued.fetch_add(1, Ordering::SeqCst);
            // Cannot fail while the server holds a receiver.
            let _ = self.queue.send(Work::Stop);
        }
    }

    /// Puts back a stop a worker took that was meant for another.
    pub(super) fn put_back_stop(&self) {
        // Cannot fail while the server holds a receiver.
        let _ = self.queue.send(Work::Stop);
    }

    /// Connections waiting in the queue for a free worker.
    pub(super) fn queued_connections(&self) -> usize {
        self.queue
            .len()
            .saturating_sub(self.stops_queued.load(Ordering::SeqCst))
    }

    /// A free worker's next piece of work; `None` once the queue is closed.
    ///
    /// A taker takes from the queue, else calls `take_ready` for a connection ready now, else
    /// waits on the queue, calling `wake_poller` if the poller is not watching. `taken` counts
    /// the taker's looks at the sets, for [`YIELD_EVERY`].
    pub(super) fn next_work(
        &self,
        role: Role,
        queue: &Receiver<Work>,
        taken: &mut u32,
        take_ready: impl FnOnce() -> Option<Conn>,
        wake_poller: impl FnOnce(),
    ) -> Option<Work> {
        self.free_workers.fetch_add(1, Ordering::Relaxed);
        let next = match role {
            Role::Taker => self.next_for_taker(queue, taken, take_ready, wake_poller),
            Role::Reserve => self.next_for_reserve(queue),
        };
        self.free_workers.fetch_sub(1, Ordering::Relaxed);
        if let Some(Work::Stop) = next {
            self.stops_queued.fetch_sub(1, Ordering::SeqCst);
        }
        next
    }

    fn next_for_taker(
        &self,
        queue: &Receiver<Work>,
        taken: &mut u32,
        take_ready: impl FnOnce() -> Option<Conn>,
        wake_poller: impl FnOnce(),
    ) -> Option<Work> {
        match queue.try_recv() {
            Ok(next) => return Some(next),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        *taken = taken.wrapping_add(1);
        if taken.is_multiple_of(YIELD_EVERY) {
            thread::yield_now();
        }
        if let Some(conn) = take_ready() {
            return Some(Work::Serve(conn));
        }
        self.idle_takers.fetch_add(1, Ordering::SeqCst);
        // Either the poller sees this worker waiting before it stops watching, or this sees it
        // stopped and wakes it (both sides are sequentially consistent).
        if !self.watching.load(Ordering::SeqCst) {
            wake_poller();
        }
        let next = queue.recv().ok();
        self.idle_takers.fetch_sub(1, Ordering::SeqCst);
        next
    }

    fn next_for_reserve(&self, queue: &Receiver<Work>) -> Option<Work> {
        self.idle_reserves.fetch_add(1, Ordering::SeqCst);
        let next = queue.recv().ok();
        self.idle_reserves.fetch_sub(1, Ordering::SeqCst);
        next
    }

    /// The order a taker looks at the `sets` ready sets in: its own CPU's first, as a
    /// connection answered from here has its client woken here.
    pub(super) fn ready_sets_in_turn(sets: usize) -> impl Iterator<Item = usize> {
        let own = rustix::thread::sched_getcpu();
        (0..sets).map(move |i| (own + i) % sets)
    }

    /// Notes that a taker took a ready connection from a set: it was ready with no worker
    /// free to take it, so workers stop lingering.
    pub(super) fn took_ready(&self) {
        self.shortage.note(Instant::now());
    }

    /// Decides whether the poller watches the parked connections, and returns it. Before
    /// deciding it does not, marks the poller as not watching, so that a worker starting to
    /// wait from then on wakes it; [`set_poller_watching`](Self::set_poller_watching) then
    /// records what the poller did.
    ///
    /// It watches only while a worker waits on the queue: a taker or, while too few takers
    /// can run, a reserve. Otherwise the first taker to be free takes the ready ones itself.
    pub(super) fn decide_poller_watching(&self) -> bool {
        let wanted = self.watch_wanted();
        if wanted {
            return true;
        }
        self.watching.store(false, Ordering::SeqCst);
        self.watch_wanted()
    }

    /// Records whether the poller watches the parked connections now.
    pub(super) fn set_poller_watching(&self, watching: bool) {
        self.watching.store(watching, Ordering::SeqCst);
    }

    fn watch_wanted(&self) -> bool {
        self.idle_takers.load(Ordering::SeqCst) > 0
            || self.stopping.load(Ordering::SeqCst)
            || (self.idle_reserves.load(Ordering::SeqCst) > 0 && self.takers_held())
    }

    /// Whether fewer takers than CPUs are free of the processor: the handlers of the others
    /// are running, and may be blocked.
    fn takers_held(&self) -> bool {
        let in_handlers = self.takers_in_handlers.get() as usize;
        self.takers.saturating_sub(in_handlers) < self.free_takers_wanted
    }

    /// Notes that a taker counting its handlers starts running the processor; returns whether
    /// the poller must be woken to hand ready connections to the reserves, too few takers
    /// being left free to run. (Should this race with the poller ceasing to watch, the
    /// reserves get them within its next look, a millisecond.)
    #[inline]
    pub(super) fn taker_enters_handler(&self) -> bool {
        self.takers_in_handlers.bump();
        self.idle_reserves.load(Ordering::SeqCst) > 0
            && !self.watching.load(Ordering::SeqCst)
            && self.takers_held()
    }

    #[inline]
    pub(super) fn taker_leaves_handler(&self) {
        self.takers_in_handlers.unbump();
    }

    /// Whether a worker should let its connection go: more connections are queued than free
    /// workers will take, or the server is stopping.
    ///
    /// Counting the free workers matters under load: a connection queued while a free worker
    /// is still waking up to take it would otherwise make every busy worker park its
    /// connection too, and those would come back through the poller, queued, making the next
    /// ones park.
    #[inline]
    pub(super) fn worker_wanted(&self) -> bool {
        self.short_of_workers() || self.stopping.load(Ordering::Relaxed)
    }

    /// Whether a worker may wait on its connection for a request begun at `last_request`:
    /// no other connection wants a worker, and none had to wait for one lately.
    #[inline]
    pub(super) fn may_linger(&self, last_request: Instant) -> bool {
        !(self.worker_wanted() || self.shortage.near(last_request))
    }

    /// Whether a connection that waited `waited` in the queue is looked at for requests to
    /// shed before they run. Not while it is `sending` a response: that goes out first.
    #[inline]
    pub(super) fn shed_check_due(waited: Duration, sending: bool) -> bool {
        waited > SHED_CHECK_AFTER && !sending
    }

    /// Whether requests that waited `waited` for a worker are shed rather than run: their
    /// clients have likely given up.
    pub(super) fn waited_too_long(&self, waited: Duration) -> bool {
        waited > self.max_queue_wait
    }

    /// Whether more connections are queued than free workers will take.
    #[inline]
    fn short_of_workers(&self) -> bool {
        self.queue.len() > self.free_workers.load(Ordering::Relaxed)
    }

    /// From now on, every worker lets its connection go and the poller watches to the end.
    pub(super) fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether a connection let go with requests left goes back in the queue. Not while the
    /// server is stopping: it is parked, and answered once the listener has closed.
    pub(super) fn may_requeue(&self) -> bool {
        !self.is_stopping()
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// When a connection was last queued with no free worker to take it: then more connections
/// want serving than there are workers, and a worker that waits on its own connection for the
/// next request keeps the others waiting (for as long as that client takes, which on a loaded
/// machine can be milliseconds). Workers stop lingering while this is recent.
struct Shortage {
    epoch: Epoch,
    /// Nanoseconds after `epoch`, plus one; 0: never.
    at: AtomicU64,
}

impl Shortage {
    fn new(epoch: Instant) -> Self {
        Shortage {
            epoch: Epoch::new(epoch),
            at: AtomicU64::new(0),
        }
    }

    fn note(&self, now: Instant) {
        self.at.store(self.ticks(now), Ordering::Relaxed);
    }

    /// Whether a shortage was noted within [`SHORTAGE_MEMORY`] before `at`, or after it.
    fn near(&self, at: Instant) -> bool {
        let noted = self.at.load(Ordering::Relaxed);
        noted != 0 && self.ticks(at) < noted.saturating_add(nanos(SHORTAGE_MEMORY))
    }

    fn ticks(&self, at: Instant) -> u64 {
        self.epoch.nanos(at).saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_stop_lingering_for_a_while_after_a_shortage() {
        let epoch = Instant::now();
        let at = |ms| epoch + Duration::from_millis(ms);
        let shortage = Shortage::new(epoch);
        assert!(!shortage.near(at(0)));
        assert!(!shortage.near(at(1_000)));
        shortage.note(at(100));
        assert!(shortage.near(at(50)), "a request begun before it");
        assert!(shortage.near(at(100)));
        assert!(shortage.near(at(119)));
        assert!(!shortage.near(at(120)));
        assert!(!shortage.near(at(5_000)));
        shortage.note(at(5_000));
        assert!(shortage.near(at(5_010)));
    }

    /// A schedule of `workers` on `cpus` CPUs, and its queue's receiving end.
    fn schedule_of(workers: usize, cpus: usize) -> (Schedule, Receiver<Work>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let config = ServerConfig::default().workers(workers);
        (Schedule::new(&config, cpus, tx), rx)
    }

    #[test]
    fn two_workers_per_cpu_take_and_the_rest_are_reserves() {
        let (schedule, _rx) = schedule_of(8, 2);
        let roles: Vec<Role> = (0..8).map(|n| schedule.enlist_this_thread(n)).collect();
        assert_eq!(roles[..4], [Role::Taker; 4]);
        assert_eq!(roles[4..], [Role::Reserve; 4]);
        let (small, _rx) = schedule_of(3, 2);
        assert!((0..3).all(|n| small.enlist_this_thread(n) == Role::Taker));
    }

    #[test]
    fn a_worker_is_wanted_while_more_is_queued_than_free_workers_take() {
        let (schedule, _rx) = schedule_of(2, 1);
        let now = Instant::now();
        assert!(!schedule.worker_wanted());
        assert!(schedule.may_linger(now));
        schedule.queue_stops(1);
        assert!(schedule.worker_wanted());
        assert!(!schedule.may_linger(now));
        assert_eq!(schedule.queued_connections(), 0, "a stop is no connection");
    }

    #[test]
    fn requests_that_waited_past_the_limit_are_shed() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let config = ServerConfig::default().max_queue_wait(Duration::from_millis(100));
        let schedule = Schedule::new(&config, 1, tx);
        assert!(!Schedule::shed_check_due(Duration::from_micros(500), false));
        assert!(Schedule::shed_check_due(Duration::from_millis(2), false));
        assert!(
            !Schedule::shed_check_due(Duration::from_millis(2), true),
            "sending first"
        );
        assert!(!schedule.waited_too_long(Duration::from_millis(100)));
        assert!(schedule.waited_too_long(Duration::from_millis(101)));
    }

    #[test]
    fn the_poller_watches_for_a_waiting_reserve_only_while_handlers_hold_the_takers() {
        // One CPU: two takers, two reserves; one taker should be free to run.
        let (schedule, rx) = schedule_of(4, 1);
        schedule.set_poller_watching(false);
        assert!(!schedule.decide_poller_watching(), "nobody waits");
        std::thread::scope(|scope| {
            let reserve =
                scope.spawn(|| schedule.next_work(Role::Reserve, &rx, &mut 0, || None, || ()));
            while schedule.idle_reserves.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            assert!(!schedule.decide_poller_watching(), "the takers can run");
            assert!(!schedule.taker_enters_handler());
            assert!(schedule.taker_enters_handler(), "both takers are held");
            assert!(schedule.decide_poller_watching());
            schedule.taker_leaves_handler();
            assert!(!schedule.decide_poller_watching());
            schedule.queue_stops(1);
            assert!(matches!(reserve.join().unwrap(), Some(Work::Stop)));
        });
    }

    #[test]
    fn the_schedule_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Schedule>();
    }
}
