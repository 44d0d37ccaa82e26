//! Sets of sockets to wait on (epoll), each socket reporting one event per arming.
//!
//! Each socket reports one event, then stays quiet until it is armed again (epoll's oneshot
//! mode): whoever took it owns it until it hands it back, so several threads can take from one
//! set. A set can also watch another set, and another thread can wake the waiter of a set made
//! to be woken.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags, Timespec};

use crate::poll::Interest;

/// The key a socket is reported by, chosen by whoever adds it (as mio's `Token`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Token(pub(super) usize);

/// The most sockets one wait takes.
const BATCH: usize = 64;

/// The key of the set's own wake-up counter.
const WAKE: Token = Token(usize::MAX);

pub(super) struct ReadySet {
    epoll: OwnedFd,
    /// In a set made by [`wakeable`](Self::wakeable): readable from a wake-up until the waiter
    /// takes it.
    wake: Option<OwnedFd>,
}

impl ReadySet {
    pub(super) fn new() -> io::Result<ReadySet> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        Ok(ReadySet { epoll, wake: None })
    }

    /// A set whose waiter another thread can [`wake`](Self::wake).
    pub(super) fn wakeable() -> io::Result<ReadySet> {
        let mut set = ReadySet::new()?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&set.epoll, &wake, data(WAKE), EventFlags::IN)?;
        set.wake = Some(wake);
        Ok(set)
    }

    /// Adds `socket` under `key`, waiting for `interest`.
    ///
    /// A socket leaves the set when it is closed (every descriptor of it): the server never
    /// duplicates one, so closing a connection is enough.
    pub(super) fn add(&self, socket: impl AsFd, key: Token, interest: Interest) -> io::Result<()> {
        epoll::add(&self.epoll, socket, data(key), flags(interest)).map_err(Into::into)
    }

    /// Watches `other`: this set reports `key` for as long as `other` has ready sockets
    /// nobody has taken.
    pub(super) fn watch(&self, other: &ReadySet, key: Token) -> io::Result<()> {
        epoll::add(&self.epoll, &other.epoll, data(key), EventFlags::IN).map_err(Into::into)
    }

    /// Starts or stops reporting `other` (added with [`watch`](Self::watch)).
    pub(super) fn rewatch(&self, other: &ReadySet, key: Token, on: bool) -> io::Result<()> {
        let flags = if on {
            EventFlags::IN
        } else {
            EventFlags::empty()
        };
        epoll::modify(&self.epoll, &other.epoll, data(key), flags).map_err(Into::into)
    }

    /// Takes `socket` out of the set.
    pub(super) fn remove(&self, socket: impl AsFd) -> io::Result<()> {
        epoll::delete(&self.epoll, socket).map_err(Into::into)
    }

    /// Takes one ready socket, if one is ready now, without waiting.
    pub(super) fn take_one(&self) -> io::Result<Option<Token>> {
        let mut events = [MaybeUninit::<Event>::uninit(); 1];
        let (ready, _) = match epoll::wait(&self.epoll, &mut events, Some(&Timespec::default())) {
            Ok(ready) => ready,
            Err(rustix::io::Errno::INTR) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        Ok(ready
            .first()
            .map(|event| token(event.data))
            .filter(|&key| key != WAKE))
    }

    /// Asks for the socket's next event `interest`; a socket reports one event per arming.
    pub(super) fn arm(&self, socket: impl AsFd, key: Token, interest: Interest) -> io::Result<()> {
        epoll::modify(&self.epoll, socket, data(key), flags(interest)).map_err(Into::into)
    }

    /// Waits up to `timeout` (`None`: for ever, zero: not at all) for ready sockets or a
    /// wake-up, and puts the keys of the ready ones, in the order they became ready, into `keys`
    /// (up to [`BATCH`] of them); returns whether it was woken. Returns with `keys` empty when
    /// woken, interrupted or out of time.
    pub(super) fn wait(
        &self,
        timeout: Option<Duration>,
        keys: &mut Vec<Token>,
    ) -> io::Result<bool> {
        let timeout = timeout.map(|timeout| {
            Timespec::try_from(timeout).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        let mut events = [MaybeUninit::<Event>::uninit(); BATCH];
        let (ready, _) = match epoll::wait(&self.epoll, &mut events, timeout.as_ref()) {
            Ok(ready) => ready,
            Err(rustix::io::Errno::INTR) => return Ok(false),
            Err(err) => return Err(err.into()),
        };
        let mut woken = false;
        for event in ready.iter() {
            match token(event.data) {
                WAKE => {
                    // Takes every wake-up so far (it is a counter); failing means there was none.
                    let mut count = [0u8; 8];
                    woken = self
                        .wake
                        .as_ref()
                        .is_some_and(|wake| rustix::io::read(wake, &mut count).is_ok());
                }
                key => keys.push(key),
            }
        }
        Ok(woken)
    }

    /// Wakes the waiter, now or, if none waits, the next to wait; only a
    /// [`wakeable`](Self::wakeable) set can be woken.
    pub(super) fn wake(&self) -> io::Result<()> {
        let Some(wake) = &self.wake else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this ready set cannot be woken",
            ));
        };
        match rustix::io::write(wake, &1u64.to_ne_bytes()) {
            // The counter is full: a wake-up is waiting already.
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

fn data(key: Token) -> EventData {
    EventData::new_u64(key.0 as u64)
}

fn token(data: EventData) -> Token {
    Token(data.u64() as usize)
}

fn flags(interest: Interest) -> EventFlags {
    let wanted = match interest {
        Interest::Read => EventFlags::IN | EventFlags::RDHUP,
        Interest::Write => EventFlags::OUT,
    };
    wanted | EventFlags::ONESHOT
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn ready_now(set: &ReadySet) -> Vec<Token> {
        let mut keys = Vec::new();
        set.wait(Some(Duration::ZERO), &mut keys).unwrap();
        keys
    }

    #[test]
    fn a_ready_socket_is_reported_once_per_arming() {
        let set = ReadySet::new().unwrap();
        let (mut client, server) = pair();
        set.add(&server, Token(7), Interest::Read).unwrap();
        assert_eq!(ready_now(&set), Vec::<Token>::new());
        client.write_all(b"x").unwrap();
        let mut keys = Vec::new();
        set.wait(None, &mut keys).unwrap();
        assert_eq!(keys, [Token(7)]);
        // Still readable, but not armed again.
        assert_eq!(ready_now(&set), Vec::<Token>::new());
        set.arm(&server, Token(7), Interest::Read).unwrap();
        assert_eq!(ready_now(&set), [Token(7)]);
        set.arm(&server, Token(7), Interest::Write).unwrap();
        assert_eq!(ready_now(&set), [Token(7)]);
        set.arm(&server, Token(7), Interest::Read).unwrap();
        drop(server);
        assert_eq!(ready_now(&set), Vec::<Token>::new(), "closed, so gone");
    }

    #[test]
    fn a_set_watching_another_reports_it_while_it_has_ready_sockets() {
        let (outer, inner) = (ReadySet::new().unwrap(), ReadySet::new().unwrap());
        outer.watch(&inner, Token(3)).unwrap();
        let (mut client, server) = pair();
        inner.add(&server, Token(7), Interest::Read).unwrap();
        assert_eq!(ready_now(&outer), Vec::<Token>::new());
        client.write_all(b"x").unwrap();
        assert_eq!(ready_now(&outer), [Token(3)]);
        assert_eq!(
            ready_now(&outer),
            [Token(3)],
            "until someone takes the socket"
        );
        assert_eq!(inner.take_one().unwrap(), Some(Token(7)));
        assert_eq!(ready_now(&outer), Vec::<Token>::new());
        outer.rewatch(&inner, Token(3), false).unwrap();
        inner.arm(&server, Token(7), Interest::Read).unwrap();
        assert_eq!(ready_now(&outer), Vec::<Token>::new(), "not watched");
        outer.rewatch(&inner, Token(3), true).unwrap();
        assert_eq!(ready_now(&outer), [Token(3)], "watched again");
        assert_eq!(inner.take_one().unwrap(), Some(Token(7)));
        assert_eq!(inner.take_one().unwrap(), None);
    }

    #[test]
    fn a_socket_moved_to_another_set_is_reported_there_only() {
        let (first, second) = (ReadySet::new().unwrap(), ReadySet::new().unwrap());
        let (mut client, server) = pair();
        first.add(&server, Token(7), Interest::Read).unwrap();
        first.remove(&server).unwrap();
        second.add(&server, Token(7), Interest::Read).unwrap();
        client.write_all(b"x").unwrap();
        assert_eq!(first.take_one().unwrap(), None);
        assert_eq!(second.take_one().unwrap(), Some(Token(7)));
    }

    #[test]
    fn sockets_are_reported_in_the_order_they_became_ready() {
        let set = ReadySet::new().unwrap();
        let pairs: Vec<_> = (0..10).map(|_| pair()).collect();
        for (key, (_, server)) in pairs.iter().enumerate() {
            set.add(server, Token(key), Interest::Read).unwrap();
        }
        let order = [3, 9, 0, 4, 1];
        for key in order {
            (&pairs[key].0).write_all(b"x").unwrap();
        }
        // Loopback delivers each write before it returns.
        assert_eq!(ready_now(&set), order.map(Token));
    }

    #[test]
    fn a_wake_up_ends_a_wait_and_is_taken_by_it() {
        let set = std::sync::Arc::new(ReadySet::wakeable().unwrap());
        set.wake().unwrap();
        set.wake().unwrap();
        let mut keys = Vec::new();
        assert!(set.wait(None, &mut keys).unwrap());
        assert!(keys.is_empty());
        assert!(
            !set.wait(Some(Duration::ZERO), &mut keys).unwrap(),
            "both wake-ups were taken together"
        );
        let waker = {
            let set = std::sync::Arc::clone(&set);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                set.wake().unwrap();
            })
        };
        assert!(set.wait(Some(Duration::from_secs(60)), &mut keys).unwrap());
        waker.join().unwrap();
        assert!(keys.is_empty());
    }
}
