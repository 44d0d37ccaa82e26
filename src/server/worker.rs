//! A worker thread: takes work as the schedule says, serves each connection, and lets it go.

use std::cell::RefCell;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use log::log;

use super::conn::{Conn, Next};
use super::schedule::{Schedule, Work};
use super::{ServerCore, TARGET};

thread_local! {
    /// On a worker thread: the server it works for (its core's address), and the sender
    /// whose drop tells `stop()` the worker is done.
    static WORKER_OF: RefCell<Option<(usize, Sender<()>)>> = const { RefCell::new(None) };
}

/// Whether this thread is a worker of the server of `core`.
pub(super) fn is_worker_of(core: &ServerCore) -> bool {
    let id = core as *const ServerCore as usize;
    WORKER_OF.with(|worker| worker.borrow().as_ref().is_some_and(|(of, _)| *of == id))
}

/// Makes this worker one that `stop()` does not wait for: its handler is running the stop.
pub(super) fn leave_workers() {
    WORKER_OF.with(|worker| worker.borrow_mut().take());
}

/// A worker thread's loop. `done` is dropped when the worker exits, or when a handler on it
/// stops the server.
pub(super) fn run_worker(core: &ServerCore, work: &Receiver<Work>, done: Sender<()>, n: usize) {
    let id = core as *const ServerCore as usize;
    WORKER_OF.with(|worker| *worker.borrow_mut() = Some((id, done)));
    work_until_stopped(core, work, n);
    WORKER_OF.with(|worker| worker.borrow_mut().take());
}

fn work_until_stopped(core: &ServerCore, work: &Receiver<Work>, n: usize) {
    // One channel, so taking work is a single receive; requests that arrived before the poller
    // stopped are queued ahead of the stop and still answered.
    let role = core.schedule.enlist_this_thread(n);
    let mut taken = 0;
    loop {
        let next = core.schedule.next_work(
            role,
            work,
            &mut taken,
            || core.take_ready(),
            || core.wake_poller(),
        );
        let Some(Work::Serve(conn)) = next else {
            finish_queued(core, work);
            return;
        };
        serve(core, conn);
    }
}

/// Serves what a worker that had not yet seen the server stopping queued behind the stops,
/// up to the next stop, which is put back for the worker it is meant for.
fn finish_queued(core: &ServerCore, work: &Receiver<Work>) {
    while let Ok(next) = work.try_recv() {
        match next {
            Work::Serve(conn) => serve(core, conn),
            Work::Stop => {
                core.schedule.put_back_stop();
                return;
            }
        }
    }
}

fn serve(core: &ServerCore, mut conn: Conn) {
    let waited = conn.take_queue_wait();
    let shed = if Schedule::shed_check_due(waited, conn.sending()) {
        conn.shed_unwanted(core, waited)
    } else {
        None
    };
    let next = match shed {
        Some((next, shed)) => {
            core.note_shed(shed, waited);
            next
        }
        None => conn.serve(core),
    };
    match next {
        // While the server is stopping, a parked connection is answered and closed once the
        // listener has closed, by the poller or by `ServerCore::park`.
        Next::Park(expires) => core.park(conn, expires),
        Next::Requeue if core.schedule.may_requeue() => core.queue(conn),
        Next::Requeue => {
            let expires = Instant::now() + core.config.get_request_timeout();
            core.park(conn, expires)
        }
        Next::Close(closed) => {
            if closed.is_error() {
                core.counters.count_error();
            }
            log!(target: TARGET, closed.level(), "closing connection from {}: {closed}", conn.peer());
            core.discard(conn);
        }
    }
}
