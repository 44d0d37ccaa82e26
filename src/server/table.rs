//! Where every open connection is: with a worker, queued, or parked in the poller's sets.

use std::io;
use std::time::Instant;

use super::conn::Conn;
use super::ready::{ReadySet, Token};

/// Where every open connection is, indexed by its key in the ready sets.
#[derive(Default)]
pub(super) struct Table {
    slots: Vec<Slot>,
    free: Vec<Token>,
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

    /// A free slot for a connection being accepted, marked busy; `None` when `max_open`
    /// connections are open already.
    pub(super) fn reserve(&mut self, max_open: usize) -> Option<Token> {
        if self.open() >= max_open {
            return None;
        }
        let key = match self.free.pop() {
            Some(key) => {
                self.slots[key.0] = Slot::Busy;
                key
            }
            None => {
                self.slots.push(Slot::Busy);
                Token(self.slots.len() - 1)
            }
        };
        Some(key)
    }

    /// Parks a new connection, in the slot [`reserve`](Self::reserve) gave it, until
    /// `expires`; its buffers are empty, so it holds nothing yet.
    pub(super) fn admit(&mut self, conn: Conn, expires: Instant) {
        let key = conn.key();
        self.slots[key.0] = Slot::Parked {
            conn,
            expires,
            held: 0,
        };
        self.idle += 1;
    }

    /// Frees the slot of a connection that is being closed.
    pub(super) fn release(&mut self, key: Token) {
        if let Some(slot) = self.slots.get_mut(key.0) {
            if let Slot::Parked { held, .. } = std::mem::replace(slot, Slot::Free) {
                self.idle -= 1;
                self.held -= held;
            }
            self.free.push(key);
        }
    }

    pub(super) fn take_parked(&mut self, key: Token) -> Option<Conn> {
        let slot = self.slots.get_mut(key.0)?;
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
        self.slots[key.0] = Slot::Parked {
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
    pub(super) fn take_expired(&mut self, now: Instant) -> Vec<Conn> {
        self.take_parked_where(|expires| expires <= now)
    }

    /// Takes out every parked connection, their slots kept, and refuses to park any more:
    /// the server is stopping.
    pub(super) fn close(&mut self) -> Vec<Conn> {
        self.closed = true;
        let parked: Vec<Token> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| matches!(slot, Slot::Parked { .. }))
            .map(|(key, _)| Token(key))
            .collect();
        parked
            .into_iter()
            .filter_map(|key| self.take_parked(key))
            .collect()
    }

    fn take_parked_where(&mut self, expired: impl Fn(Instant) -> bool) -> Vec<Conn> {
        let expired: Vec<Token> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| matches!(slot, Slot::Parked { expires, .. } if expired(*expires)))
            .map(|(key, _)| Token(key))
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
