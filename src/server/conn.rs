//! One client connection: reading a request, running the processor on it, writing the response.
//!
//! A worker never blocks reading a request. It takes in what has arrived; when the request is
//! not all there, it waits at most [`LINGER`] for more (and only while no other connection
//! waits for a worker), then hands the connection back to the poller with the part received,
//! to be dispatched again when more arrives or closed at the request's deadline. So a client
//! that sends half a request and stalls holds no worker, and neither does an idle one.

use std::any::Any;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use log::{error, Level};
use rustix::net::{RecvFlags, SendFlags};
use thrift::protocol::{TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol};
use thrift::server::TProcessor;
use thrift::{ApplicationError, ApplicationErrorKind};

use super::config::ServerConfig;
use super::framing::{Input, Refused, Request, FRAME_HEADER};
use super::ready::{ReadySet, Token};
use super::stats::StatCounters;
use super::{ServerCore, TARGET};
use crate::clock::{monotonic_nanos, nanos};
use crate::poll::{wait_ready, Interest};
use crate::wire::decode::Source;
use crate::wire::tracked::Tracked;
use crate::wire::{with_reader, with_writer, SHED_PREFIX};
use crate::Transport;

/// Buffers larger than this are freed when their connection goes idle, so a client that once
/// sent or received a large message does not keep that much memory while it sits idle. Large
/// enough that the usual large message (64 KiB of payload and its framing) keeps its buffers,
/// which would otherwise be freed and zero-filled again on every such request.
const KEEP_BUFFER: usize = 256 * 1024;

/// How long a worker waits on its connection for more bytes before handing it back to the
/// poller: the client's next request after a response, or the rest of a request.
///
/// A client calling in a loop sends its next request within tens of microseconds of reading a
/// response, so this keeps a busy connection on its worker with no trip through the poller (an
/// epoll re-arm, a wake-up, a hand-off to another thread). The worker only waits while no other
/// connection is queued for a worker, and none had to wait for one lately: with more busy
/// connections than workers, a worker waiting on one slow client would keep the others queued.
///
/// It is the socket's read timeout, set once at accept, so the wait is the read itself with no
/// extra call; Linux rounds it up to whole timer ticks (1 to 4 ms, by the kernel's HZ).
const LINGER: Duration = Duration::from_millis(1);

/// The CPU the system took the socket's latest incoming bytes in on (`SO_INCOMING_CPU`), or
/// `otherwise` if it cannot tell. Over loopback that is the CPU the client sent them from; from
/// a network card, the CPU that handles its queue. Answering there wakes the client's thread,
/// or hands the answer to the network, without reaching across to another core.
fn arrived_on(socket: &TcpStream, otherwise: usize) -> usize {
    rustix::net::sockopt::socket_incoming_cpu(socket).map_or(otherwise, |cpu| cpu as usize)
}

/// A parked connection asks which CPU its bytes arrive on ([`arrived_on`], a system call) at
/// every this many parks, and stays in the set it is in between: a client's thread changes CPUs
/// far less often than it calls, and a connection in the other CPU's set is still served, only
/// from further away.
const LOCATE_EVERY: u8 = 4;

/// The most reads [`Conn::shed_unwanted`] makes to take in what a queued connection brought.
const MAX_SHED_READS: usize = 64;

/// A client connection, owned by one thread at a time: the poller while it waits for bytes, a
/// worker while it is served.
pub(super) struct Conn {
    key: Token,
    /// The ready set it is in (see [`arrived_on`]).
    set: usize,
    /// The ready set it goes in when parked next, and how many times it was parked (see
    /// [`LOCATE_EVERY`]).
    home: usize,
    parks: u8,
    peer: SocketAddr,
    socket: TcpStream,
    input: Input,
    /// When the first byte of the request being received arrived, while one is partly here.
    started: Option<Instant>,
    /// When the latest request began to arrive.
    last_request: Instant,
    /// When the connection was queued for a worker, on the monotonic clock in nanoseconds,
    /// while it is; 0 otherwise.
    queued_at: u64,
    /// Whether the part of the request received so far was acknowledged at once.
    acked: bool,
    /// The response being built; framed responses start with room for their length.
    output: Vec<u8>,
    /// How much of `output` the socket has taken; while less than all of it, the connection
    /// waits for the client to read (in the poller, not on a worker).
    sent: usize,
    /// When the client must have taken the whole response, on the monotonic clock in
    /// nanoseconds; 0 while nothing waits to be sent.
    send_by: u64,
    /// While the server stops: a response already waited for the client once, and was put
    /// behind the other connections.
    deferred: bool,
    /// Why the connection closes once the response waiting to be sent is taken (a buffered
    /// request that could not be decoded: where the next one starts is lost).
    closing: Option<Box<Closed>>,
}

/// What the worker does with a connection once it lets it go.
pub(super) enum Next {
    /// Hand it to the poller to wait for more bytes, until the instant given; then close it.
    Park(Instant),
    /// Bytes are waiting on it: queue it behind the other ready connections.
    Requeue,
    /// Close it.
    Close(Closed),
}

impl Conn {
    /// Sets up an accepted socket: blocking writes bounded by the request timeout, reads that
    /// wait at most [`LINGER`] (see [`Conn::receive`]).
    pub(super) fn configure(stream: &TcpStream, config: &ServerConfig) -> io::Result<()> {
        // Some systems hand out accepted sockets with the listener's non-blocking flag.
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(LINGER))?;
        stream.set_write_timeout(Some(config.get_request_timeout()))
    }

    /// Wraps an accepted socket, added to the server's ready set to report its first request.
    pub(super) fn new(
        key: Token,
        peer: SocketAddr,
        stream: TcpStream,
        sets: &[ReadySet],
    ) -> io::Result<Conn> {
        let set = arrived_on(&stream, 0) % sets.len();
        // Closing the socket takes it out of the set.
        sets[set].add(&stream, key, Interest::Read)?;
        Ok(Conn {
            key,
            set,
            home: set,
            parks: 0,
            peer,
            socket: stream,
            input: Input::default(),
            started: None,
            last_request: Instant::now(),
            acked: false,
            queued_at: 0,
            output: Vec::new(),
            sent: 0,
            send_by: 0,
            deferred: false,
            closing: None,
        })
    }

    /// Notes that the connection is queued for a worker now.
    pub(super) fn queued(&mut self) {
        self.queued_at = monotonic_nanos();
    }

    /// How long the connection waited in the queue, now that a worker has it.
    pub(super) fn take_queue_wait(&mut self) -> Duration {
        let queued_at = std::mem::take(&mut self.queued_at);
        if queued_at == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(monotonic_nanos().saturating_sub(queued_at))
    }

    pub(super) fn key(&self) -> Token {
        self.key
    }

    pub(super) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether part of a request has arrived and the rest has not.
    pub(super) fn mid_request(&self) -> bool {
        self.started.is_some()
    }

    /// Looks which ready set the connection should be parked in next, from time to time (see
    /// [`LOCATE_EVERY`]): the set of the CPU its latest bytes arrived on, out of `sets`.
    pub(super) fn locate(&mut self, sets: usize) {
        self.parks = self.parks.wrapping_add(1);
        if self.parks.is_multiple_of(LOCATE_EVERY) {
            self.home = arrived_on(&self.socket, self.home) % sets;
        }
    }

    /// Arms the connection in the server's ready sets to report its next bytes, or, while a
    /// response waits for the client to take it, room in the socket to send it: in the set
    /// [`locate`](Self::locate) chose, moving it there if it was in another.
    pub(super) fn arm(&mut self, sets: &[ReadySet]) -> io::Result<()> {
        let interest = if self.sending() {
            Interest::Write
        } else {
            Interest::Read
        };
        let set = self.home;
        if set == self.set {
            return sets[set].arm(&self.socket, self.key, interest);
        }
        sets[self.set].remove(&self.socket)?;
        self.set = set;
        sets[set].add(&self.socket, self.key, interest)
    }

    /// Serves the connection's requests for as long as it may keep its worker: while whole
    /// requests arrive, or the rest of one arrives within [`LINGER`], and no other connection
    /// waits for a worker.
    ///
    /// The connection was queued because bytes arrived on it, or were left buffered.
    pub(super) fn serve(&mut self, core: &ServerCore) -> Next {
        let config = &core.config;
        // The rest of a response the client was slow to take comes first.
        if self.sending() {
            match self.flush() {
                Err(closed) => return Next::Close(closed),
                Ok(false) => return Next::Park(self.send_deadline()),
                Ok(true) => {}
            }
        }
        if let Some(closed) = self.closing.take() {
            return Next::Close(*closed);
        }
        let mut readable = true;
        let mut served = false;
        loop {
            match self
                .input
                .next_request(config, readable)
                .map_err(Closed::Refused)
            {
                Err(closed) => return Next::Close(closed),
                Ok(Some(request)) => {
                    // Fairness: one request per turn while other connections wait for a worker.
                    if served && core.schedule.worker_wanted() {
                        return Next::Requeue;
                    }
                    match self.answer(core, &request) {
                        Err(closed) => return Next::Close(closed),
                        Ok(true) => {}
                        // A client reading as it should takes the rest within moments (a large
                        // response outgrows the socket's buffer); one that does not read waits
                        // in the poller for room to send it, holding no worker.
                        Ok(false) => match self.flush_lingering(core) {
                            Err(closed) => return Next::Close(closed),
                            Ok(true) => {}
                            Ok(false) => return Next::Park(self.send_deadline()),
                        },
                    }
                    if let Some(closed) = self.closing.take() {
                        return Next::Close(*closed);
                    }
                    served = true;
                    // The client has not seen the response yet; its next request, if it sent
                    // one already, is found by the wait below at no extra cost.
                    readable = false;
                    continue;
                }
                Ok(None) => {}
            }
            if readable {
                match self.receive(config, false) {
                    Err(closed) => return Next::Close(closed),
                    // A read that filled the room it had may have left more behind.
                    // Looked at again even when nothing came: a buffered request is not
                    // measured while more bytes may be coming.
                    Ok(Received { filled, .. }) => {
                        readable = filled;
                        continue;
                    }
                }
            }
            // Everything that arrived is taken in and no whole request is here.
            let timed_out = self
                .started
                .is_some_and(|started| started.elapsed() >= config.get_request_timeout());
            if timed_out {
                return Next::Close(Closed::Timeout(config.get_request_timeout()));
            }
            if !core.schedule.may_linger(self.last_request) {
                return Next::Park(self.park(config));
            }
            match self.receive(config, true) {
                Err(closed) => return Next::Close(closed),
                Ok(Received { got: 0, .. }) => return Next::Park(self.park(config)),
                // Bytes are here, but another connection was first.
                Ok(_) if core.schedule.worker_wanted() => return Next::Requeue,
                Ok(Received { filled, .. }) => readable = filled,
            }
        }
    }

    /// Answers the requests that have arrived whole, without waiting for more: for a server
    /// that is stopping, before it closes the connection. Returns `false` if a response waits
    /// for a client that is not reading: the connection goes back in the queue, behind the
    /// others, and is drained again.
    ///
    /// Reads at most what the socket held when it began (and what arrives with those reads),
    /// so a client that keeps sending cannot keep the worker.
    pub(super) fn drain(&mut self, core: &ServerCore) -> Result<bool, Closed> {
        let config = &core.config;
        if !self.flush_while_stopping(core)? {
            return Ok(false);
        }
        if let Some(closed) = self.closing.take() {
            return Err(*closed);
        }
        let mut unread = rustix::io::ioctl_fionread(&self.socket).map_or(0, |n| n as usize);
        loop {
            match self
                .input
                .next_request(config, false)
                .map_err(Closed::Refused)?
            {
                Some(request) => {
                    if !self.answer(core, &request)? && !self.flush_while_stopping(core)? {
                        return Ok(false);
                    }
                    if let Some(closed) = self.closing.take() {
                        return Err(*closed);
                    }
                }
                None if unread == 0 => return Ok(true),
                None => match self.receive(config, false)? {
                    Received { got: 0, .. } => return Ok(true),
                    Received { got, .. } => unread = unread.saturating_sub(got),
                },
            }
        }
    }

    /// Sends the response waiting to be sent while the server stops, with no poller left to
    /// wait for the client in. The first time the client does not take it at once, returns
    /// `false`, so that the connections queued meanwhile go first; after that, waits for the
    /// client within the request timeout and what is left of the drain timeout.
    fn flush_while_stopping(&mut self, core: &ServerCore) -> Result<bool, Closed> {
        if self.flush()? {
            return Ok(true);
        }
        if !self.deferred {
            self.deferred = true;
            return Ok(false);
        }
        let limit = core.config.get_request_timeout().min(core.drain_left());
        self.flush_within(limit).map(|()| true)
    }

    /// Sheds what this connection has brought if nobody can use its answers any more: its
    /// client closed the connection while the requests waited, or they waited `waited`, longer
    /// than [`ServerConfig::max_queue_wait`]. Returns what to do with the connection then, and
    /// how many requests were shed; `None` if the requests should run.
    ///
    /// Called only for a connection that waited in the queue, so that a server below capacity
    /// pays nothing for it.
    pub(super) fn shed_unwanted(
        &mut self,
        core: &ServerCore,
        waited: Duration,
    ) -> Option<(Next, u64)> {
        let config = &core.config;
        let gone = match self.take_in_all(config) {
            Ok(gone) => gone,
            Err(closed) => return Some((Next::Close(closed), 0)),
        };
        if !gone && !core.schedule.waited_too_long(waited) {
            return None;
        }
        let mut shed = 0;
        let reason = if gone {
            None
        } else {
            Some(ApplicationError::new(
                ApplicationErrorKind::Unknown,
                format!(
                    "{SHED_PREFIX}the request waited {waited:?} for a worker, more than the \
                     server's max_queue_wait of {:?}, and did not run",
                    config.get_max_queue_wait()
                ),
            ))
        };
        loop {
            let request = match self.input.next_request(config, false) {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(refused) => return Some((Next::Close(Closed::Refused(refused)), shed)),
            };
            // Counted before its reply goes out: a client holding the reply finds it counted.
            core.counters.count_shed();
            if let Some(reason) = &reason {
                self.output.clear();
                if config.get_transport() == Transport::Framed {
                    self.output.extend_from_slice(&[0; FRAME_HEADER]);
                }
                let message = &self.input.available()[request.skip..request.skip + request.len];
                let _ = error_reply(config, message, reason, &mut self.output);
                match self.send(config.get_transport(), config.get_request_timeout()) {
                    Err(closed) => return Some((Next::Close(closed), shed + 1)),
                    Ok(true) => {}
                    // The rest waits for the client to read; later requests wait behind it.
                    Ok(false) => {
                        self.input.consume(request.skip + request.len);
                        return Some((Next::Park(self.send_deadline()), shed + 1));
                    }
                }
            }
            self.input.consume(request.skip + request.len);
            shed += 1;
            if request.malformed {
                break;
            }
        }
        if shed > 0 {
            // What is left began to arrive after the requests shed: its clock starts now, as
            // after an answered request. Otherwise it is the request whose first byte started
            // the clock, which a client sending it a byte at a time must not restart.
            self.started = (!self.input.available().is_empty()).then(Instant::now);
        }
        let next = if gone && !self.input.available().is_empty() {
            // What is left is part of a request the client never finished: as any such close.
            Next::Close(Closed::MidRequest)
        } else if gone {
            Next::Close(Closed::GoneWhileQueued)
        } else {
            Next::Park(self.park(config))
        };
        Some((next, shed))
    }

    /// Takes in everything that has arrived; returns whether the client has closed its end
    /// after it. Bounded, so that a client that keeps sending cannot keep the worker reading.
    fn take_in_all(&mut self, config: &ServerConfig) -> Result<bool, Closed> {
        for _ in 0..MAX_SHED_READS {
            match self.receive(config, false) {
                Ok(Received { got: 0, .. }) => break,
                Ok(_) => {}
                Err(Closed::ByPeer | Closed::MidRequest) => return Ok(true),
                // How a client that closes with answers unread (or lingering 0) leaves.
                Err(Closed::Read(err)) if err.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(true)
                }
                Err(closed) => return Err(closed),
            }
        }
        Ok(false)
    }

    /// Whether bytes wait on the connection: received and not yet used, in the socket, or a
    /// response not yet taken by the client.
    pub(super) fn has_input(&self) -> bool {
        if !self.input.available().is_empty() || self.sending() {
            return true;
        }
        let mut byte = [0u8];
        let peek = RecvFlags::PEEK | RecvFlags::DONTWAIT;
        matches!(
            rustix::net::recv(&self.socket, &mut byte[..], peek),
            Ok((1, _))
        )
    }

    /// Runs the processor on a whole buffered request and sends its response.
    /// Returns whether the socket took the whole response; if not, the rest waits in `output`.
    fn answer(&mut self, core: &ServerCore, request: &Request) -> Result<bool, Closed> {
        let config = &core.config;
        let counters = &core.counters;
        counters.request_starts();
        let message = &self.input.available()[request.skip..request.skip + request.len];
        self.output.clear();
        let counted = core.handler_starts();
        // The response is sent before closing for what comes after.
        let answered: Result<Option<Closed>, Closed> = match config.get_transport() {
            Transport::Framed => {
                self.output.extend_from_slice(&[0; FRAME_HEADER]);
                // The whole frame is in memory, so every length in it is checked against bytes
                // that really arrived.
                let processed = process(&*core.processor, config, message, &mut self.output);
                count_undecodable(&processed, counters);
                answer_frame(processed, config, message, &mut self.output, |payload| {
                    log_panic(core, self.peer, payload)
                })
                .map(|()| None)
                .map_err(Closed::BadMessage)
            }
            Transport::Buffered => {
                let processed = process(&*core.processor, config, message, &mut self.output);
                count_undecodable(&processed, counters);
                match processed {
                    // Where the next request starts is lost with a request that could not be
                    // decoded; the client still gets the error reply the processor wrote.
                    Processed::Done {
                        result: Ok(()),
                        undecodable,
                    } => Ok((undecodable || request.malformed).then_some(Closed::Undecodable)),
                    Processed::Done {
                        result: Err(err), ..
                    } => Err(Closed::BadMessage(err)),
                    Processed::Panicked(payload) => {
                        log_panic(core, self.peer, payload.as_ref());
                        Err(Closed::Panicked)
                    }
                }
            }
        };
        core.handler_ends(counted);
        // Whatever the processor left unread of the message is skipped with it.
        self.input.consume(request.skip + request.len);
        self.started = (!self.input.available().is_empty()).then(Instant::now);
        self.acked = false;
        let sent = answered.and_then(|close_after| match close_after {
            None => self.send(config.get_transport(), config.get_request_timeout()),
            // Sent before the connection closes; what the socket does not take at once waits
            // for the client as any response does, holding no worker.
            Some(closed) => {
                if self.send(config.get_transport(), config.get_request_timeout())? {
                    return Err(closed);
                }
                self.closing = Some(Box::new(closed));
                Ok(false)
            }
        });
        counters.request_sent();
        sent
    }

    /// Reads what has arrived; when nothing has and `linger` is set, waits up to [`LINGER`].
    fn receive(&mut self, config: &ServerConfig, linger: bool) -> Result<Received, Closed> {
        let had = self.input.available().len();
        let wanted = self.input.wanted(config);
        let flags = if linger {
            if self.started.is_some() && !self.acked {
                acknowledge_now(&self.socket);
                self.acked = true;
            }
            // Blocks until the socket's read timeout, which is `LINGER`.
            RecvFlags::empty()
        } else {
            RecvFlags::DONTWAIT
        };
        let spare = self.input.spare(wanted);
        let room = spare.len();
        let got = loop {
            match rustix::net::recv(&self.socket, &mut *spare, flags) {
                Ok((got, _)) => break got,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    return Ok(Received {
                        got: 0,
                        filled: false,
                    })
                }
                Err(err) => return Err(Closed::Read(err.into())),
            }
        };
        match got {
            0 if had == 0 => Err(Closed::ByPeer),
            0 => Err(Closed::MidRequest),
            _ => {
                self.input.received(got);
                if had == 0 {
                    let now = Instant::now();
                    self.started = Some(now);
                    self.last_request = now;
                }
                Ok(Received {
                    got,
                    filled: got == room,
                })
            }
        }
    }

    /// Readies the connection to wait in the poller; returns when to close it if nothing more
    /// arrives: the request's deadline mid-request, else the end of the idle timeout.
    fn park(&mut self, config: &ServerConfig) -> Instant {
        match self.started {
            Some(started) => started + config.get_request_timeout(),
            None => {
                self.shrink();
                Instant::now() + config.get_idle_timeout()
            }
        }
    }

    /// Writes the response in one call, unless there is none (a oneway call).
    ///
    /// Returns whether the socket took all of it: what it does not take at once waits in
    /// `output` for [`flush`](Self::flush), at most `timeout`, and the worker moves on.
    fn send(&mut self, transport: Transport, timeout: Duration) -> Result<bool, Closed> {
        if transport == Transport::Framed {
            let payload = self.output.len() - FRAME_HEADER;
            if payload == 0 {
                self.output.clear();
                return Ok(true);
            }
            let len = i32::try_from(payload).map_err(|_| Closed::ResponseTooLarge(payload))?;
            self.output[..FRAME_HEADER].copy_from_slice(&len.to_be_bytes());
        }
        self.sent = 0;
        let all = self.flush()?;
        if !all {
            self.send_by = monotonic_nanos().saturating_add(nanos(timeout));
        }
        Ok(all)
    }

    /// Writes what the socket takes of the response now, without waiting; returns whether it
    /// took all of it.
    fn flush(&mut self) -> Result<bool, Closed> {
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        while self.sent < self.output.len() {
            match rustix::net::send(&self.socket, &self.output[self.sent..], flags) {
                Ok(n) => self.sent += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(false),
                Err(err) => return Err(Closed::Write(err.into())),
            }
        }
        self.output.clear();
        self.sent = 0;
        self.send_by = 0;
        Ok(true)
    }

    /// Writes the rest of the response, waiting up to [`LINGER`] for the client to take it
    /// while no other connection waits for a worker; returns whether it all went.
    fn flush_lingering(&mut self, core: &ServerCore) -> Result<bool, Closed> {
        let until = Instant::now() + LINGER;
        loop {
            if self.flush()? {
                return Ok(true);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || core.schedule.worker_wanted() {
                return Ok(false);
            }
            self.wait_writable(left)?;
        }
    }

    /// Waits up to `limit` for room in the socket.
    fn wait_writable(&self, limit: Duration) -> Result<(), Closed> {
        wait_ready(&self.socket, Interest::Write, limit)
            .map(drop)
            .map_err(Closed::Write)
    }

    /// Writes the rest of the response, waiting up to `limit` for the client to take it: for
    /// a connection that closes after it, or a server that is stopping.
    fn flush_within(&mut self, limit: Duration) -> Result<(), Closed> {
        let until = Instant::now() + limit;
        while !self.flush()? {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Closed::SendTimeout(limit));
            }
            self.wait_writable(left)?;
        }
        Ok(())
    }

    /// Whether part of a response waits for the client to take it.
    pub(super) fn sending(&self) -> bool {
        self.sent < self.output.len()
    }

    /// When a response waiting to be taken is given up on.
    fn send_deadline(&self) -> Instant {
        let left = self.send_by.saturating_sub(monotonic_nanos());
        Instant::now() + Duration::from_nanos(left)
    }

    /// The memory the connection's buffers hold while it waits in the poller.
    pub(super) fn held_bytes(&self) -> usize {
        self.input.held() + self.output.capacity()
    }

    /// Frees the buffers if no request has started in them and no response waits in them.
    pub(super) fn release_buffers(&mut self) {
        if self.input.available().is_empty() && !self.sending() {
            self.input = Input::default();
            self.output = Vec::new();
        }
    }

    fn shrink(&mut self) {
        if self.input.available().is_empty() && self.input.held() > KEEP_BUFFER {
            self.input = Input::default();
        }
        if self.output.capacity() > KEEP_BUFFER && !self.sending() {
            self.output = Vec::new();
        }
    }
}

/// What one read took in.
struct Received {
    got: usize,
    /// The read filled all the room it had, so more may be waiting.
    filled: bool,
}

/// Acknowledges the part of a request received so far at once, instead of after the delayed-ACK
/// timer (up to 40 ms on Linux).
///
/// A client that writes a request in two pieces with Nagle's algorithm on, as the thrift crate's
/// framed transport does (length, then payload), holds the second piece back until the first is
/// acknowledged; without this every such call would wait for the timer.
fn acknowledge_now(socket: &TcpStream) {
    // Only a latency hint: the request completes either way.
    let _ = socket2::SockRef::from(socket).set_tcp_quickack(true);
}

enum Processed {
    /// The processor returned. `undecodable` when some read of the request failed; the
    /// processor has then written an error reply.
    Done {
        result: thrift::Result<()>,
        undecodable: bool,
    },
    Panicked(Box<dyn Any + Send>),
}

/// Runs the processor on one request read from `source`, its response going to `out`.
fn process<S: Source>(
    processor: &(dyn TProcessor + Send + Sync),
    config: &ServerConfig,
    source: S,
    out: &mut Vec<u8>,
) -> Processed {
    let protocol = config.get_protocol();
    let limits = config.limits();
    // A panicking handler leaves nothing behind that this connection or the server reuses: the
    // protocols are dropped, the buffers are cleared before the next request.
    let run = AssertUnwindSafe(move || {
        with_reader!(protocol, source, limits, |input| {
            with_writer!(protocol, out, |output| finish(
                processor,
                Tracked::new(input),
                &mut output
            ))
        })
    });
    match panic::catch_unwind(run) {
        Ok((result, undecodable)) => Processed::Done {
            result,
            undecodable,
        },
        Err(payload) => Processed::Panicked(payload),
    }
}

/// Completes the response to a framed request: after a panic, `out` (past its frame header)
/// becomes an `InternalError` reply. A request that could not be read fails.
fn answer_frame(
    processed: Processed,
    config: &ServerConfig,
    frame: &[u8],
    out: &mut Vec<u8>,
    on_panic: impl FnOnce(&(dyn Any + Send)),
) -> thrift::Result<()> {
    match processed {
        Processed::Done { result, .. } => result,
        Processed::Panicked(payload) => {
            on_panic(payload.as_ref());
            // The frame's end is known, so the connection stays usable after the reply.
            out.truncate(FRAME_HEADER);
            if internal_error_reply(config, frame, out).is_err() {
                out.truncate(FRAME_HEADER);
            }
            Ok(())
        }
    }
}

fn finish<P: TInputProtocol>(
    processor: &(dyn TProcessor + Send + Sync),
    mut input: Tracked<P>,
    output: &mut dyn TOutputProtocol,
) -> (thrift::Result<()>, bool) {
    let result = processor.process(&mut input, output);
    (result, input.failed())
}

/// Counts a request whose arguments could not be decoded: the processor answered it with an
/// error reply. One whose message header could not be read is not one: the processor fails
/// it without a reply, and its connection is closed and counted as an error.
fn count_undecodable(processed: &Processed, counters: &StatCounters) {
    if let Processed::Done {
        result: Ok(()),
        undecodable: true,
    } = processed
    {
        counters.count_bad_request();
    }
}

fn log_panic(core: &ServerCore, peer: SocketAddr, payload: &(dyn Any + Send)) {
    core.counters.count_panic();
    let message = crate::error::panic_message(payload).unwrap_or("(no message)");
    error!(target: TARGET, "handler panicked serving {peer}: {message}");
}

/// Writes an `InternalError` reply to the call in `request`, if it expects a reply.
fn internal_error_reply(
    config: &ServerConfig,
    request: &[u8],
    out: &mut Vec<u8>,
) -> thrift::Result<()> {
    let error = ApplicationError::new(ApplicationErrorKind::InternalError, "the handler panicked");
    error_reply(config, request, &error, out)
}

/// Writes `error` as the reply to the call in `request`, if it expects a reply.
fn error_reply(
    config: &ServerConfig,
    request: &[u8],
    error: &ApplicationError,
    out: &mut Vec<u8>,
) -> thrift::Result<()> {
    let protocol = config.get_protocol();
    let call = with_reader!(protocol, request, config.limits(), |input| {
        input.read_message_begin()?
    });
    if call.message_type == TMessageType::OneWay {
        return Ok(());
    }
    // A multiplexed call is answered as the multiplexed processor would: by the method's own
    // name, without the service's (no method name of an IDL holds the separator).
    let method = call
        .name
        .split_once(':')
        .map_or(call.name.as_str(), |(_, method)| method);
    let reply = TMessageIdentifier::new(method, TMessageType::Exception, call.sequence_number);
    let write = |o: &mut dyn TOutputProtocol| {
        o.write_message_begin(&reply)?;
        thrift::Error::write_application_error_to_out_protocol(error, o)?;
        o.write_message_end()?;
        o.flush()
    };
    with_writer!(protocol, out, |output| write(&mut output))
}

/// Why a connection was closed.
#[derive(Debug)]
pub(super) enum Closed {
    /// The client closed it between requests.
    ByPeer,
    /// The client closed it while its requests waited for a worker; they were not run.
    GoneWhileQueued,
    MidRequest,
    Timeout(Duration),
    Refused(Refused),
    BadMessage(thrift::Error),
    Undecodable,
    Panicked,
    Read(io::Error),
    Write(io::Error),
    /// The client did not take its response within the request timeout.
    SendTimeout(Duration),
    ResponseTooLarge(usize),
}

impl Closed {
    /// Whether the close counts as an error in the server's statistics.
    pub(super) fn is_error(&self) -> bool {
        !matches!(self, Closed::ByPeer | Closed::GoneWhileQueued)
    }

    pub(super) fn level(&self) -> Level {
        match self {
            Closed::ByPeer | Closed::GoneWhileQueued => Level::Debug,
            // Already logged at error level with the panic message.
            Closed::Panicked => Level::Debug,
            _ => Level::Info,
        }
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::ByPeer => f.write_str("closed by the client"),
            Closed::GoneWhileQueued => {
                f.write_str("closed by the client while its requests waited for a worker")
            }
            Closed::MidRequest => f.write_str("the client closed it in the middle of a request"),
            Closed::Timeout(timeout) => write!(f, "request not received within {timeout:?}"),
            Closed::Refused(refused) => refused.fmt(f),
            Closed::BadMessage(err) => write!(f, "unreadable request: {err}"),
            Closed::Undecodable => f.write_str(
                "a buffered request could not be decoded, so the next one cannot be found",
            ),
            Closed::Panicked => f.write_str("the handler panicked on a buffered request"),
            Closed::Read(err) => write!(f, "reading failed: {err}"),
            Closed::Write(err) => write!(f, "sending the response failed: {err}"),
            Closed::SendTimeout(timeout) => {
                write!(f, "the client did not take its response within {timeout:?}")
            }
            Closed::ResponseTooLarge(len) => write!(f, "response of {len} bytes cannot be framed"),
        }
    }
}
