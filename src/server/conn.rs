//! One client connection: reading a request, running the processor on it, writing the response.

use std::any::Any;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, Level};
use polling::{Event, Poller};
use thrift::protocol::{
    TBinaryOutputProtocol, TCompactOutputProtocol, TInputProtocol, TMessageIdentifier,
    TMessageType, TOutputProtocol,
};
use thrift::server::TProcessor;
use thrift::{ApplicationError, ApplicationErrorKind};

use super::config::ServerConfig;
use super::poller::Registered;
use super::tracked::Tracked;
use super::{Shared, TARGET};
use crate::decode::{BinaryIn, CompactIn, Source};
use crate::{Protocol, Transport};

/// How much a read asks the socket for at least; one read typically takes in a whole request.
const READ_CHUNK: usize = 8 * 1024;

/// Buffers larger than this are freed when their connection goes idle, so a client that once
/// sent or received a large message does not keep that much memory while it sits idle.
const KEEP_BUFFER: usize = 64 * 1024;

/// The length prefix of a framed message.
const FRAME_HEADER: usize = 4;

/// A client connection, owned by one thread at a time: the poller while it is idle, a worker
/// while a request on it is read and answered.
pub(super) struct Conn {
    key: usize,
    peer: SocketAddr,
    socket: Registered<TcpStream>,
    input: Input,
    clock: Clock,
    /// The response being built; framed responses start with room for their length.
    output: Vec<u8>,
}

/// What the worker does with a connection after serving one request on it.
pub(super) enum Next {
    /// Nothing more is buffered: wait for the client's next request.
    Park,
    /// More bytes are buffered: queue it behind the other ready connections.
    Requeue,
    /// Close it.
    Close(Closed),
}

impl Conn {
    /// Sets up an accepted socket for blocking reads and writes bounded by the request timeout.
    pub(super) fn configure(stream: &TcpStream, config: &ServerConfig) -> io::Result<()> {
        // Some systems hand out accepted sockets with the listener's non-blocking flag.
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(config.request_timeout))?;
        stream.set_write_timeout(Some(config.request_timeout))
    }

    /// Wraps an accepted socket, registered with `poller` to report its first request.
    pub(super) fn new(
        key: usize,
        peer: SocketAddr,
        stream: TcpStream,
        poller: Arc<Poller>,
    ) -> io::Result<Conn> {
        Ok(Conn {
            key,
            peer,
            socket: Registered::new(poller, stream, Event::readable(key))?,
            input: Input::default(),
            clock: Clock::starting(Instant::now()),
            output: Vec::new(),
        })
    }

    pub(super) fn key(&self) -> usize {
        self.key
    }

    pub(super) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Asks the poller to report the connection's next request.
    pub(super) fn rearm(&self) -> io::Result<()> {
        self.socket.rearm(Event::readable(self.key))
    }

    /// Reads one request, runs the processor on it and sends the response.
    pub(super) fn serve_one(&mut self, shared: &Shared) -> Next {
        let config = &shared.config;
        self.clock = Clock::starting(Instant::now() + config.request_timeout);
        let next = match config.transport {
            Transport::Framed => self.serve_framed(shared),
            Transport::Buffered => self.serve_buffered(shared),
        };
        if self.clock.shortened {
            if let Err(err) = self
                .socket
                .get()
                .set_read_timeout(Some(config.request_timeout))
            {
                return Next::Close(Closed::Read(err));
            }
        }
        match next {
            Next::Requeue if !self.input.available().is_empty() => Next::Requeue,
            Next::Requeue | Next::Park => {
                self.shrink();
                Next::Park
            }
            closed => closed,
        }
    }

    fn serve_framed(&mut self, shared: &Shared) -> Next {
        let max = shared.config.max_message_size;
        if let Err(closed) = self.fill(FRAME_HEADER) {
            return Next::Close(closed);
        }
        let header = &self.input.available()[..FRAME_HEADER];
        let declared = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let Ok(len) = usize::try_from(declared) else {
            return Next::Close(Closed::NegativeFrame(declared));
        };
        if len > max {
            return Next::Close(Closed::FrameTooLarge { len, max });
        }
        if let Err(closed) = self.fill(FRAME_HEADER + len) {
            return Next::Close(closed);
        }

        // The whole frame is in memory, so every length in it is checked against bytes that
        // really arrived.
        let frame = &self.input.available()[FRAME_HEADER..FRAME_HEADER + len];
        self.output.clear();
        self.output.extend_from_slice(&[0; FRAME_HEADER]);
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let config = &shared.config;
        let processed = process(&*shared.processor, config, frame, &mut self.output, false);
        if let Err(err) = answer_frame(processed, config, frame, &mut self.output, |payload| {
            log_panic(shared, self.peer, payload)
        }) {
            return Next::Close(Closed::BadMessage(err));
        }
        // Whatever the processor left unread of the frame is skipped with it.
        self.input.consume(FRAME_HEADER + len);

        if let Err(closed) = self.send(Transport::Framed) {
            return Next::Close(closed);
        }
        Next::Requeue
    }

    fn serve_buffered(&mut self, shared: &Shared) -> Next {
        let max = shared.config.max_message_size;
        self.output.clear();
        let mut request = BufferedRequest {
            socket: self.socket.get(),
            input: &mut self.input,
            clock: &mut self.clock,
            consumed: 0,
            max,
            failure: None,
        };
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let processed = process(
            &*shared.processor,
            &shared.config,
            &mut request,
            &mut self.output,
            true,
        );
        if let Some(closed) = request.failure {
            return Next::Close(closed);
        }
        match processed {
            Processed::Done {
                result: Ok(()),
                undecodable,
            } => {
                if let Err(closed) = self.send(Transport::Buffered) {
                    return Next::Close(closed);
                }
                if undecodable {
                    // Where the next request starts is lost with the unread rest of this one.
                    return Next::Close(Closed::Undecodable);
                }
                Next::Requeue
            }
            Processed::Done {
                result: Err(err), ..
            } => Next::Close(Closed::BadMessage(err)),
            Processed::Panicked(payload) => {
                log_panic(shared, self.peer, payload.as_ref());
                Next::Close(Closed::Panicked)
            }
        }
    }

    /// Reads until at least `need` bytes are buffered.
    fn fill(&mut self, need: usize) -> Result<(), Closed> {
        loop {
            let had = self.input.available().len();
            if had >= need {
                return Ok(());
            }
            let spare = self.input.spare(need);
            match recv(self.socket.get(), &mut self.clock, spare) {
                Ok(0) if had == 0 => return Err(Closed::ByPeer),
                Ok(0) => return Err(Closed::MidRequest),
                Ok(n) => self.input.end += n,
                Err(err) => return Err(Closed::from_read_error(err, self.clock.timeout)),
            }
        }
    }

    /// Writes the response in one call, unless there is none (a oneway call).
    fn send(&mut self, transport: Transport) -> Result<(), Closed> {
        if transport == Transport::Framed {
            let payload = self.output.len() - FRAME_HEADER;
            if payload == 0 {
                return Ok(());
            }
            let len = i32::try_from(payload).map_err(|_| Closed::ResponseTooLarge(payload))?;
            self.output[..FRAME_HEADER].copy_from_slice(&len.to_be_bytes());
        } else if self.output.is_empty() {
            return Ok(());
        }
        let mut socket = self.socket.get();
        socket.write_all(&self.output).map_err(Closed::Write)
    }

    fn shrink(&mut self) {
        if self.input.available().is_empty() && self.input.buf.len() > KEEP_BUFFER {
            self.input = Input::default();
        }
        if self.output.capacity() > KEEP_BUFFER {
            self.output = Vec::new();
        }
    }
}

/// Bytes received and not yet consumed: `buf[pos..end]`. `buf` beyond `end` is spare room,
/// already initialised, so reads need not zero it again.
#[derive(Default)]
struct Input {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl Input {
    fn available(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Spare room for the next read, when `wanted` bytes should be available in all.
    ///
    /// Grows the buffer to at most twice what has arrived and never past `wanted` (beyond one
    /// chunk), so a frame that only declares a large length cannot make the server allocate it.
    fn spare(&mut self, wanted: usize) -> &mut [u8] {
        if self.end == self.buf.len() && self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            let len = self.buf.len();
            let target = (len * 2).min(wanted).max(len + READ_CHUNK);
            self.buf.reserve_exact(target - len);
            self.buf.resize(target, 0);
        }
        &mut self.buf[self.end..]
    }
}

/// The deadline of the request being read.
struct Clock {
    deadline: Instant,
    timeout: Duration,
    reads: u32,
    /// Whether the socket's read timeout was lowered to what is left until the deadline.
    shortened: bool,
}

impl Clock {
    fn starting(deadline: Instant) -> Clock {
        Clock {
            deadline,
            timeout: deadline.saturating_duration_since(Instant::now()),
            reads: 0,
            shortened: false,
        }
    }
}

/// Reads from the socket, giving up at the clock's deadline.
///
/// The socket's read timeout is the whole request timeout, which bounds the first read of a
/// request; later reads lower it to what is left, so a client trickling bytes cannot stretch
/// the request past its deadline. The common request, read in one call, costs no extra call.
fn recv(socket: &TcpStream, clock: &mut Clock, dst: &mut [u8]) -> io::Result<usize> {
    if clock.reads > 0 {
        let left = clock.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        socket.set_read_timeout(Some(left))?;
        clock.shortened = true;
        acknowledge_now(socket);
    }
    clock.reads += 1;
    let mut socket = socket;
    loop {
        match socket.read(dst) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// Acknowledges the part of a request received so far at once, instead of after the delayed-ACK
/// timer (up to 40 ms on Linux).
///
/// A client that writes a request in two pieces with Nagle's algorithm on, as the thrift crate's
/// framed transport does (length, then payload), holds the second piece back until the first is
/// acknowledged; without this every such call would wait for the timer.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn acknowledge_now(socket: &TcpStream) {
    // Only a latency hint: the request completes either way.
    let _ = socket2::SockRef::from(socket).set_tcp_quickack(true);
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn acknowledge_now(_socket: &TcpStream) {}

/// The bytes of one buffered request as the processor reads them, straight off the connection.
struct BufferedRequest<'a> {
    socket: &'a TcpStream,
    input: &'a mut Input,
    clock: &'a mut Clock,
    consumed: usize,
    max: usize,
    /// Why reading stopped, when the connection failed rather than the bytes.
    failure: Option<Closed>,
}

impl BufferedRequest<'_> {
    fn fail(&mut self, closed: Closed) -> io::Error {
        let err = io::Error::other(closed.to_string());
        self.failure = Some(closed);
        err
    }
}

impl Read for BufferedRequest<'_> {
    fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        if self.input.available().is_empty() {
            // Large reads go straight into the caller's buffer instead of through ours.
            let direct = dst.len() >= READ_CHUNK;
            let received = if direct {
                recv(self.socket, self.clock, dst)
            } else {
                recv(self.socket, self.clock, self.input.spare(READ_CHUNK))
            };
            match received {
                Ok(0) if self.consumed == 0 => return Err(self.fail(Closed::ByPeer)),
                Ok(0) => return Err(self.fail(Closed::MidRequest)),
                Ok(n) if direct => return self.count(n),
                Ok(n) => self.input.end += n,
                Err(err) => {
                    let closed = Closed::from_read_error(err, self.clock.timeout);
                    return Err(self.fail(closed));
                }
            }
        }
        let available = self.input.available();
        let n = available.len().min(dst.len());
        dst[..n].copy_from_slice(&available[..n]);
        self.input.consume(n);
        self.count(n)
    }
}

/// A buffered request may hold up to the largest message size, less what it already used.
impl Source for BufferedRequest<'_> {
    #[inline]
    fn read_exact(&mut self, dst: &mut [u8]) -> io::Result<()> {
        if dst.len() > self.remaining() {
            return Err(self.fail(Closed::MessageTooLarge(self.max)));
        }
        let available = self.input.available();
        if available.len() >= dst.len() {
            dst.copy_from_slice(&available[..dst.len()]);
            self.input.consume(dst.len());
            self.consumed += dst.len();
            return Ok(());
        }
        let mut got = 0;
        while got < dst.len() {
            got += self.read(&mut dst[got..])?;
        }
        Ok(())
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.max.saturating_sub(self.consumed)
    }
}

impl BufferedRequest<'_> {
    fn count(&mut self, n: usize) -> io::Result<usize> {
        self.consumed += n;
        if self.consumed > self.max {
            return Err(self.fail(Closed::MessageTooLarge(self.max)));
        }
        Ok(n)
    }
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
    skip_unread: bool,
) -> Processed {
    let max_depth = config.max_depth;
    // A panicking handler leaves nothing behind that this connection or the server reuses: the
    // protocols are dropped, the buffers are cleared before the next request.
    let run = AssertUnwindSafe(move || match config.protocol {
        Protocol::Binary => finish(
            processor,
            Tracked::new(BinaryIn::new(source, max_depth)),
            &mut TBinaryOutputProtocol::new(out, true),
            skip_unread,
        ),
        Protocol::Compact => finish(
            processor,
            Tracked::new(CompactIn::new(source, max_depth)),
            &mut TCompactOutputProtocol::new(out),
            skip_unread,
        ),
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
    skip_unread: bool,
) -> (thrift::Result<()>, bool) {
    let result = processor.process(&mut input, output);
    if result.is_ok() && skip_unread {
        // A failure here is recorded by the tracker and closes the connection.
        let _ = input.skip_unread_arguments();
    }
    (result, input.failed())
}

fn log_panic(shared: &Shared, peer: SocketAddr, payload: &(dyn Any + Send)) {
    shared.counters.panics.fetch_add(1, Ordering::Relaxed);
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    error!(target: TARGET, "handler panicked serving {peer}: {message}");
}

/// Writes an `InternalError` reply to the call in `request`, if it expects a reply.
fn internal_error_reply(
    config: &ServerConfig,
    request: &[u8],
    out: &mut Vec<u8>,
) -> thrift::Result<()> {
    let protocol = config.protocol;
    let call = match protocol {
        Protocol::Binary => BinaryIn::new(request, config.max_depth).read_message_begin()?,
        Protocol::Compact => CompactIn::new(request, config.max_depth).read_message_begin()?,
    };
    if call.message_type == TMessageType::OneWay {
        return Ok(());
    }
    let reply = TMessageIdentifier::new(call.name, TMessageType::Exception, call.sequence_number);
    let error = ApplicationError::new(ApplicationErrorKind::InternalError, "the handler panicked");
    let write = |o: &mut dyn TOutputProtocol| {
        o.write_message_begin(&reply)?;
        thrift::Error::write_application_error_to_out_protocol(&error, o)?;
        o.write_message_end()?;
        o.flush()
    };
    match protocol {
        Protocol::Binary => write(&mut TBinaryOutputProtocol::new(out, true)),
        Protocol::Compact => write(&mut TCompactOutputProtocol::new(out)),
    }
}

/// Why a connection was closed.
#[derive(Debug)]
pub(super) enum Closed {
    /// The client closed it between requests.
    ByPeer,
    MidRequest,
    Timeout(Duration),
    NegativeFrame(i32),
    FrameTooLarge {
        len: usize,
        max: usize,
    },
    MessageTooLarge(usize),
    BadMessage(thrift::Error),
    Undecodable,
    Panicked,
    Read(io::Error),
    Write(io::Error),
    ResponseTooLarge(usize),
}

impl Closed {
    fn from_read_error(err: io::Error, timeout: Duration) -> Closed {
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Closed::Timeout(timeout),
            _ => Closed::Read(err),
        }
    }

    /// Whether the close counts as an error in the server's statistics.
    pub(super) fn is_error(&self) -> bool {
        !matches!(self, Closed::ByPeer)
    }

    pub(super) fn level(&self) -> Level {
        match self {
            Closed::ByPeer => Level::Debug,
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
            Closed::MidRequest => f.write_str("the client closed it in the middle of a request"),
            Closed::Timeout(timeout) => write!(f, "request not received within {timeout:?}"),
            Closed::NegativeFrame(len) => write!(f, "negative frame length {len}"),
            Closed::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes is over the limit of {max}")
            }
            Closed::MessageTooLarge(max) => write!(f, "request is over the limit of {max} bytes"),
            Closed::BadMessage(err) => write!(f, "unreadable request: {err}"),
            Closed::Undecodable => f.write_str(
                "a buffered request could not be decoded, so the next one cannot be found",
            ),
            Closed::Panicked => f.write_str("the handler panicked on a buffered request"),
            Closed::Read(err) => write!(f, "reading failed: {err}"),
            Closed::Write(err) => write!(f, "sending the response failed: {err}"),
            Closed::ResponseTooLarge(len) => write!(f, "response of {len} bytes cannot be framed"),
        }
    }
}
