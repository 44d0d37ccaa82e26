//! Client connections: connecting with a timeout, and the buffered, framed, deadline-bound
//! reader and writer that the protocols sit on.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::buffer::spare_capacity;
use rustix::net::RecvFlags;
use rustls::ClientConnection;
use socket2::{Domain, Socket, Type};

use crate::clock::{monotonic_nanos, nanos};
use crate::error::{Error, Timeout};
use crate::poll::{wait_ready, Interest};
use crate::tls::socket::{self, tls_error, HandshakeFailure, SockIo};
use crate::tls::{server_name_of, ClientTls};
use crate::wire::decode::{self, Source};
use crate::wire::Transport;

/// Size of the read buffer, which also decides the largest read that is copied.
const READ_BUFFER: usize = 16 * 1024;

/// What the first read of a response asks for when the response before it was larger than
/// [`READ_BUFFER`]: its headers and the start of its payload.
const SMALL_FIRST_READ: usize = 512;

/// A read buffer grown larger than this is given back once its message is read.
const KEEP_READ_BUFFER: usize = 64 * 1024;

/// The capacity a write buffer starts with: room for any ordinary request.
const WRITE_BUFFER: usize = 4 * 1024;

/// A write buffer larger than this is given back after its message is sent; one up to this
/// size is kept for the connection's next request, as the server keeps its buffers. Giving
/// back a 64 KiB buffer after every call made glibc's allocator trim its heap and fault the
/// pages in again on the next: 16 threads sending 64 KiB requests took several times the page
/// faults of ones whose buffers were kept.
const KEEP_WRITE_BUFFER: usize = 256 * 1024;

/// A socket timeout is only re-set when it overshoots the deadline by more than this many
/// nanoseconds (2 ms), which spares a system call on every read of an ordinary call.
const TIMEOUT_SLACK: u64 = 2_000_000;

/// What a blocking socket operation leaves, beyond a quarter of the time left, for `poll` to
/// wait out precisely.
///
/// A socket's own timeout runs on the kernel's timer wheel, which rounds a timeout up to its
/// level's granularity: up to an eighth of the timeout, plus a tick or two, late (a 250 ms
/// timeout fired up to 30 ms late on a kernel ticking at 250 Hz). `poll` sleeps on a
/// high-resolution timer instead. So a call waits on its socket's timeout while the deadline
/// is far, which costs nothing more than the read itself, and with `poll` for the last stretch,
/// which fires within a fraction of a millisecond of the deadline. Only calls that are still
/// waiting that late pay for the extra system call.
const PRECISE_TAIL: u64 = 20_000_000;

/// How many of the `left` nanoseconds a blocking socket operation may wait out on the
/// socket's own timeout, which may fire late by up to an eighth of itself plus a few ticks,
/// [`TIMEOUT_SLACK`] included: all of it still ends before `left` does.
fn coarse_part(left: u64) -> u64 {
    left.saturating_sub(left / 4 + PRECISE_TAIL)
}

/// Connects to the first of `addrs` that accepts by `deadline`, trying each in turn.
pub(crate) fn connect(
    endpoint: &Arc<str>,
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<TcpStream, Error> {
    let connect_error = |source| Error::Connect {
        endpoint: endpoint.clone(),
        source,
    };
    let mut last = None;
    for &addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match connect_one(addr, deadline) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if e.kind() != io::ErrorKind::TimedOut && e.kind() != io::ErrorKind::WouldBlock => {
            Err(connect_error(e))
        }
        _ => Err(Error::Timeout(Timeout::Connect)),
    }
}

/// Connects to `addr`, giving up once `deadline` has passed, not before: a deadline of the
/// whole call that cut the connect short must find itself passed.
fn connect_one(addr: SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {
            // `poll` waits to the nanosecond, and wakes no earlier than asked.
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                if wait_ready(&socket, Interest::Write, left)? {
                    break;
                }
            }
            if let Some(e) = socket.take_error()? {
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    socket.set_nonblocking(false)?;
    Ok(socket.into())
}

/// Makes a connected stream a TLS one: the handshake, within what is left of `deadline` (the
/// connect's).
pub(crate) fn secure(
    endpoint: &Arc<str>,
    stream: &TcpStream,
    tls: &ClientTls,
    deadline: Instant,
) -> Result<Secured, Error> {
    let failed = |source| Error::Handshake {
        endpoint: endpoint.clone(),
        source,
    };
    let name = server_name_of(tls, endpoint).map_err(failed)?;
    let mut session =
        ClientConnection::new(tls.get_config().clone(), name).map_err(|e| failed(tls_error(e)))?;
    match socket::handshake(stream, &mut session, deadline) {
        Ok(()) => Ok(Secured {
            session: Mutex::new(session),
            endpoint: endpoint.clone(),
            heard: AtomicBool::new(false),
            refusal: Mutex::new(None),
        }),
        Err(HandshakeFailure::Timeout) => Err(Error::Timeout(Timeout::Connect)),
        Err(HandshakeFailure::Failed(source)) => Err(failed(source)),
    }
}

/// A connection's TLS session, which its reader and writer share. The lock is never
/// contended: one call reads and writes on one thread.
#[derive(Debug)]
pub(crate) struct Secured {
    session: Mutex<ClientConnection>,
    endpoint: Arc<str>,
    /// Whether any response bytes have arrived on this connection.
    heard: AtomicBool,
    /// Why the server refused the handshake after all, as a TLS 1.3 server refusing the
    /// client's certificate says only once the client has sent its request.
    refusal: Mutex<Option<io::Error>>,
}

impl Secured {
    /// Reads what an idle connection received, without waiting: `true` if it was only
    /// records the session keeps to itself (tickets, key updates), no data and no close.
    #[cold]
    fn takes_in_idle_records(&self, stream: &TcpStream) -> bool {
        let mut session = self.session.lock();
        // A peer that keeps sending is not waited out.
        for _ in 0..IDLE_READS {
            match session.read_tls(&mut SockIo {
                stream,
                block: false,
            }) {
                Ok(0) => return false,
                Ok(_) => match session.process_new_packets() {
                    Ok(io) if io.plaintext_bytes_to_read() == 0 && !io.peer_has_closed() => {}
                    _ => return false,
                },
                Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
            }
        }
        false
    }
}

/// The most reads an idle TLS connection's check makes.
const IDLE_READS: usize = 8;

/// What a connection's reader, writer and owner share.
#[derive(Debug)]
pub(crate) struct ConnState {
    stream: TcpStream,
    /// The TLS session, if the connection speaks TLS.
    tls: Option<Secured>,
    /// The TLS session holds decrypted bytes that the reader has not taken yet.
    tls_held: AtomicBool,
    /// When the current call's time runs out, on [`monotonic_nanos`]'s clock.
    deadline: AtomicU64,
    timed_out: AtomicBool,
    broken: AtomicBool,
    /// The reader holds bytes, or owes bytes of a frame, that no call has asked for.
    leftover: AtomicBool,
    /// When a read last brought bytes, on [`monotonic_nanos`]'s clock.
    last_heard: AtomicU64,
    /// The size of a request refused for exceeding `max_message_size` (0: none); nothing of
    /// it was sent, so the connection stays usable.
    oversized: AtomicU64,
    max_message_size: usize,
}

impl ConnState {
    /// Starts the clock of a call: everything it sends and reads must be done within `budget`.
    pub(crate) fn arm(&self, budget: Duration) {
        self.deadline.store(
            monotonic_nanos().saturating_add(nanos(budget)),
            Ordering::Relaxed,
        );
        self.timed_out.store(false, Ordering::Relaxed);
        self.oversized.store(0, Ordering::Relaxed);
    }

    /// The request the writer refused for its size during this call, if any, and the limit.
    pub(crate) fn refused_request(&self) -> Option<(usize, usize)> {
        match self.oversized.load(Ordering::Relaxed) {
            0 => None,
            bytes => Some((bytes as usize, self.max_message_size)),
        }
    }

    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// The handshake error the server's first answer turned out to be, if it was one.
    pub(crate) fn handshake_refused(&self) -> Option<Error> {
        let tls = self.tls.as_ref()?;
        let source = tls.refusal.lock().take()?;
        Some(Error::Handshake {
            endpoint: tls.endpoint.clone(),
            source,
        })
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Whether the last call read its response to the end and nothing else.
    pub(crate) fn is_clean(&self) -> bool {
        !self.leftover.load(Ordering::Relaxed)
    }

    /// Fails a call whose response left bytes behind: the rest of its frame, or bytes the
    /// server sent unasked. Either way the response was not what it should have been.
    pub(crate) fn check_clean(&self) -> thrift::Result<()> {
        if self.is_clean() {
            return Ok(());
        }
        self.mark_broken();
        Err(thrift::Error::Protocol(thrift::ProtocolError::new(
            thrift::ProtocolErrorKind::InvalidData,
            "the response is followed by bytes that belong to no response",
        )))
    }

    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Whether an idle pooled connection can carry another call: the peer has not closed it
    /// and sent nothing unasked. Costs one non-blocking `recv`, unless the peer answered on
    /// this connection within the last `unchecked`: then it is taken to be there still, which
    /// spares back-to-back calls a system call each.
    pub(crate) fn is_reusable(&self, unchecked: Duration) -> bool {
        if self.is_broken() || self.leftover.load(Ordering::Relaxed) {
            return false;
        }
        let heard = self.last_heard.load(Ordering::Relaxed);
        if monotonic_nanos().saturating_sub(heard) < nanos(unchecked) {
            return true;
        }
        let mut byte = [0u8];
        let peek = RecvFlags::PEEK | RecvFlags::DONTWAIT;
        match rustix::net::recv(&self.stream, &mut byte[..], peek) {
            Err(e) => e == rustix::io::Errno::AGAIN,
            Ok((0, _)) => false,
            // Bytes nobody asked for, unless they are TLS records the session takes in
            // silently: a TLS 1.3 server's session tickets, which oneway calls never read.
            Ok(_) => self
                .tls
                .as_ref()
                .is_some_and(|tls| tls.takes_in_idle_records(&self.stream)),
        }
    }

    /// The connection's local port, which tells connections apart in tests.
    #[cfg(test)]
    pub(crate) fn local_port(&self) -> u16 {
        self.stream.local_addr().map_or(0, |addr| addr.port())
    }

    /// Closes both directions, so that a thread blocked on this connection wakes up.
    pub(crate) fn shutdown(&self) {
        self.mark_broken();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Wraps a connected stream for a client of the given transport.
pub(crate) fn split(
    stream: TcpStream,
    tls: Option<Secured>,
    transport: Transport,
    read_timeout: Duration,
    max_message_size: usize,
) -> io::Result<(Arc<ConnState>, Reader, Writer)> {
    let socket_timeout = coarse_part(nanos(read_timeout)).max(1_000);
    stream.set_read_timeout(Some(Duration::from_nanos(socket_timeout)))?;
    stream.set_write_timeout(Some(Duration::from_nanos(socket_timeout)))?;
    let state = Arc::new(ConnState {
        stream,
        tls,
        tls_held: AtomicBool::new(false),
        deadline: AtomicU64::new(u64::MAX),
        timed_out: AtomicBool::new(false),
        broken: AtomicBool::new(false),
        leftover: AtomicBool::new(false),
        oversized: AtomicU64::new(0),
        last_heard: AtomicU64::new(0),
        max_message_size,
    });
    let framed = transport == Transport::Framed;
    let reader = Reader {
        state: state.clone(),
        buf: vec![0; READ_BUFFER],
        pos: 0,
        end: 0,
        frame: framed.then_some(0),
        consumed: 0,
        max_message_size,
        socket_timeout,
        last_was_large: false,
        small_first_read: false,
    };
    let mut writer = Writer {
        state: state.clone(),
        buf: Vec::with_capacity(WRITE_BUFFER),
        framed,
        max_message_size,
        socket_timeout,
    };
    writer.reset();
    Ok((state, reader, writer))
}

/// Runs one socket operation so that it ends by the call's deadline.
///
/// `op` gets the stream and whether it may block: while the deadline is far, it blocks on the
/// socket's own timeout, which is kept short of the deadline (see [`coarse_part`]) and only
/// re-set when it is off by more than [`TIMEOUT_SLACK`], so an ordinary call costs no extra
/// system call. For the last stretch `poll` waits for the socket precisely, and `op` must
/// not block. A peer that trickles bytes cannot stretch the call either way.
fn bounded<T>(
    state: &ConnState,
    socket_timeout: &mut u64,
    interest: Interest,
    mut op: impl FnMut(&TcpStream, bool) -> io::Result<T>,
) -> io::Result<T> {
    let deadline = state.deadline.load(Ordering::Relaxed);
    let mut widen = false;
    loop {
        let now = monotonic_nanos();
        let left = deadline.saturating_sub(now);
        if left == 0 {
            return Err(timed_out(state));
        }
        let coarse = coarse_part(left);
        let done = if coarse == 0 {
            match wait_ready(&state.stream, interest, Duration::from_nanos(left)) {
                Ok(true) => op(&state.stream, false),
                Ok(false) => continue,
                Err(e) => Err(e),
            }
        } else {
            // Lowered when it would run past the deadline; widened again after it expired,
            // when an earlier call near its deadline had left it short.
            if *socket_timeout > coarse + TIMEOUT_SLACK || (widen && *socket_timeout < coarse) {
                set_timeout(&state.stream, interest, coarse)?;
                *socket_timeout = coarse;
            }
            op(&state.stream, true)
        };
        match done {
            Ok(v) => {
                if interest == Interest::Read {
                    // The peer was there at least as late as this: it answered.
                    state.last_heard.store(now, Ordering::Relaxed);
                }
                return Ok(v);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                widen = true;
            }
            Err(e) => {
                state.mark_broken();
                return Err(e);
            }
        }
    }
}

/// One read from the socket into `out`, bounded by the call's deadline; the peer closing the
/// connection is an error, since a response is expected.
fn receive(state: &ConnState, socket_timeout: &mut u64, out: &mut [u8]) -> io::Result<usize> {
    if let Some(tls) = &state.tls {
        return receive_tls(state, tls, socket_timeout, out);
    }
    receive_with(state, socket_timeout, |s, flags| {
        rustix::net::recv(s, &mut *out, flags).map(|(n, _)| n)
    })
}

/// One read from the socket by `recv` (given the flags to use), bounded by the call's deadline;
/// the peer closing the connection is an error, since a response is expected.
fn receive_with(
    state: &ConnState,
    socket_timeout: &mut u64,
    mut recv: impl FnMut(&TcpStream, RecvFlags) -> rustix::io::Result<usize>,
) -> io::Result<usize> {
    let n = bounded(state, socket_timeout, Interest::Read, |s, block| {
        // Blocking reads wait on the socket's own timeout, kept short of the deadline.
        let flags = if block {
            RecvFlags::empty()
        } else {
            RecvFlags::DONTWAIT
        };
        recv(s, flags).map_err(Into::into)
    })?;
    if n == 0 {
        return Err(closed(state));
    }
    Ok(n)
}

/// One read of decrypted bytes into `out`: those the session holds already, or else what one
/// read from the socket, bounded by the call's deadline, brings.
fn receive_tls(
    state: &ConnState,
    tls: &Secured,
    socket_timeout: &mut u64,
    out: &mut [u8],
) -> io::Result<usize> {
    let mut session = tls.session.lock();
    loop {
        // Bytes the session holds are read first: the socket may have nothing more to give.
        match session.reader().read(out) {
            Ok(0) => return Err(closed(state)),
            Ok(n) => {
                tls.heard.store(true, Ordering::Relaxed);
                // The bytes read are good whatever follows them: a later error, or a
                // close_notify that came with the response (which the socket will not show),
                // only ends the connection after this call.
                match session.process_new_packets() {
                    Ok(io) => {
                        let held = io.plaintext_bytes_to_read() > 0;
                        state.tls_held.store(held, Ordering::Relaxed);
                        if io.peer_has_closed() {
                            state.mark_broken();
                        }
                    }
                    Err(_) => state.mark_broken(),
                }
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(closed(state)),
            Err(e) => {
                state.mark_broken();
                return Err(e);
            }
        }
        let n = bounded(state, socket_timeout, Interest::Read, |stream, block| {
            session.read_tls(&mut SockIo { stream, block })
        })?;
        if n == 0 {
            return Err(closed(state));
        }
        if let Err(e) = session.process_new_packets() {
            return Err(refused(state, tls, &mut session, e));
        }
        // An answer the session owes (an alert refusing renegotiation, say), sent on a
        // timeout record of its own: `socket_timeout` is the socket's receive timeout.
        if session.wants_write() {
            let mut send_timeout = u64::MAX;
            send_tls(state, &mut session, &mut send_timeout)?;
        }
    }
}

/// Sends what the session has to send, bounded by the call's deadline.
fn send_tls(
    state: &ConnState,
    session: &mut ClientConnection,
    socket_timeout: &mut u64,
) -> io::Result<()> {
    while session.wants_write() {
        let n = bounded(state, socket_timeout, Interest::Write, |stream, block| {
            session.write_tls(&mut SockIo { stream, block })
        })?;
        if n == 0 {
            state.mark_broken();
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "connection closed while sending",
            ));
        }
    }
    Ok(())
}

/// A TLS error on reading: the connection is done. Before any response bytes, it is the
/// server refusing the handshake (TLS 1.3 tells a refused client certificate only then).
#[cold]
fn refused(
    state: &ConnState,
    tls: &Secured,
    session: &mut ClientConnection,
    e: rustls::Error,
) -> io::Error {
    state.mark_broken();
    // The alert that tells the server why.
    let _ = session.write_tls(&mut SockIo {
        stream: &state.stream,
        block: false,
    });
    if !tls.heard.load(Ordering::Relaxed) && refuses_the_client(&e) {
        *tls.refusal.lock() = Some(tls_error(e.clone()));
    }
    tls_error(e)
}

/// Whether `e` is a server refusing the client's certificate or the handshake, which a TLS 1.3
/// server tells only after the client's first request: that request never ran. Any other
/// error before the response may come after the request ran, so it stays a transport error.
fn refuses_the_client(e: &rustls::Error) -> bool {
    use rustls::AlertDescription as Alert;
    matches!(
        e,
        rustls::Error::AlertReceived(
            Alert::CertificateRequired
                | Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::AccessDenied
                | Alert::HandshakeFailure
        )
    )
}

/// The server closed the connection while a response was expected: the connection is done.
#[cold]
fn closed(state: &ConnState) -> io::Error {
    state.mark_broken();
    io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")
}

/// Sets the socket's timeout for `interest`: its read or its write timeout.
fn set_timeout(stream: &TcpStream, interest: Interest, nanos: u64) -> io::Result<()> {
    let timeout = Some(Duration::from_nanos(nanos.max(1_000)));
    match interest {
        Interest::Read => stream.set_read_timeout(timeout),
        Interest::Write => stream.set_write_timeout(timeout),
    }
}

fn timed_out(state: &ConnState) -> io::Error {
    state.timed_out.store(true, Ordering::Relaxed);
    state.mark_broken();
    io::Error::new(io::ErrorKind::TimedOut, "response timed out")
}

fn invalid(state: &ConnState, message: String) -> io::Error {
    state.mark_broken();
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The reading side of a client connection: buffered, and for the framed transport, aware of
/// frame boundaries without allocating for a frame before its bytes arrive.
///
/// The decoders read it as a [`Source`]: a response must fit in its frame, or without frames,
/// in the largest message size.
#[derive(Debug)]
pub(crate) struct Reader {
    state: Arc<ConnState>,
    /// Read-ahead; its length is what one read asks for. It grows past [`READ_BUFFER`] only
    /// while a container's elements must be held before they are decoded.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Bytes left in the current frame (framed transport only).
    frame: Option<usize>,
    /// Bytes of the current message read so far (buffered transport only).
    consumed: usize,
    max_message_size: usize,
    /// The socket's timeout in this direction, in nanoseconds.
    socket_timeout: u64,
    /// The latest response was larger than [`READ_BUFFER`].
    last_was_large: bool,
    /// The next read asks for [`SMALL_FIRST_READ`] bytes only.
    small_first_read: bool,
}

impl Reader {
    fn fill(&mut self) -> io::Result<usize> {
        let want = if std::mem::take(&mut self.small_first_read) {
            SMALL_FIRST_READ.min(self.buf.len())
        } else {
            self.buf.len()
        };
        let n = receive(&self.state, &mut self.socket_timeout, &mut self.buf[..want])?;
        self.pos = 0;
        self.end = n;
        Ok(n)
    }

    /// Reads from the buffer, refilling it (or reading straight into `out` when that is larger).
    fn read_buffered(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.end {
            if out.len() >= self.buf.len() {
                return receive(&self.state, &mut self.socket_timeout, out);
            }
            self.fill()?;
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    fn read_frame_header(&mut self) -> io::Result<usize> {
        let mut header = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            got += self.read_buffered(&mut header[got..])?;
        }
        let len = i32::from_be_bytes(header);
        if len < 0 {
            let hint = unframed_hint(header);
            return Err(invalid(
                &self.state,
                format!("negative frame length {len}{hint}"),
            ));
        }
        if len as usize > self.max_message_size {
            return Err(invalid(
                &self.state,
                format!(
                    "frame of {len} bytes exceeds the limit of {}{}",
                    self.max_message_size,
                    unframed_hint(header)
                ),
            ));
        }
        Ok(len as usize)
    }
}

/// What a frame header that cannot be one says about the peer, if anything: text (an HTTP
/// server's `HTTP/1.1 400`), or the start of a message sent without a frame.
fn unframed_hint(header: [u8; 4]) -> String {
    if header.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        let text = String::from_utf8_lossy(&header);
        format!(" (its size bytes read {text:?}: the peer is not speaking framed Thrift)")
    } else if header[..2] == [0x80, 0x01] || begins_compact_message(header) {
        " (its size bytes begin a Thrift message: the peer is speaking Thrift without frames, \
         the buffered transport)"
            .to_owned()
    } else {
        String::new()
    }
}

/// Whether `header` starts a compact protocol message: its id, then version 1 in the low
/// five bits under a message type, 1 to 4, in the top three. The id alone could be any
/// negative length.
fn begins_compact_message(header: [u8; 4]) -> bool {
    header[0] == 0x82 && matches!(header[1], 0x21 | 0x41 | 0x61 | 0x81)
}

impl Reader {
    /// Fills `out` from the buffer and then the socket.
    fn read_slow(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut got = 0;
        while got < out.len() {
            got += self.read_buffered(&mut out[got..])?;
        }
        Ok(())
    }

    /// Counts `n` bytes of the current message as read.
    #[inline]
    fn account(&mut self, n: usize) {
        match &mut self.frame {
            Some(left) => *left -= n,
            None => self.consumed += n,
        }
        self.note_leftover();
    }

    #[inline]
    fn note_leftover(&self) {
        let leftover = self.pos < self.end
            || self.frame.is_some_and(|left| left > 0)
            || self.state.tls_held.load(Ordering::Relaxed);
        self.state.leftover.store(leftover, Ordering::Relaxed);
    }

    fn overrun(&self, len: usize) -> io::Error {
        let message = match self.frame {
            Some(left) => {
                format!("response needs {len} more bytes than the {left} left in its frame")
            }
            None => format!(
                "response is longer than the limit of {} bytes",
                self.max_message_size
            ),
        };
        invalid(&self.state, message)
    }
}

impl Source for Reader {
    #[inline]
    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let len = out.len();
        if len > self.remaining() {
            return Err(self.overrun(len));
        }
        if self.end - self.pos >= len {
            out.copy_from_slice(&self.buf[self.pos..self.pos + len]);
            self.pos += len;
        } else {
            self.read_slow(out)?;
        }
        self.account(len);
        Ok(())
    }

    #[inline]
    fn remaining(&self) -> usize {
        match self.frame {
            Some(left) => left,
            None => self.max_message_size.saturating_sub(self.consumed),
        }
    }

    fn begin_message(&mut self) -> io::Result<()> {
        if self.frame.is_none() {
            self.last_was_large = self.consumed > READ_BUFFER;
        }
        // A response that follows a large one is likely large too: its first read takes only
        // its first bytes, so that a long string in it goes straight into its own vector
        // instead of filling the buffer to be copied out of it.
        self.small_first_read = self.last_was_large && self.pos == self.end;
        match self.frame {
            // Empty frames carry no message: skip them.
            Some(0) => loop {
                let len = self.read_frame_header()?;
                if len > 0 {
                    self.frame = Some(len);
                    self.last_was_large = len > READ_BUFFER;
                    break;
                }
            },
            // The rest of a frame a failed read left: the connection is discarded after this
            // call anyway, so carry on in it as a plain stream would.
            Some(_) => {}
            None => self.consumed = 0,
        }
        if self.buf.len() > KEEP_READ_BUFFER && self.pos == self.end {
            // A large container's elements are decoded: give the memory back.
            self.buf = vec![0; READ_BUFFER];
            self.pos = 0;
            self.end = 0;
        }
        self.note_leftover();
        Ok(())
    }

    fn demand(&mut self, bytes: usize) -> io::Result<()> {
        if self.end - self.pos >= bytes {
            return Ok(());
        }
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        while self.end < bytes {
            if self.end == self.buf.len() {
                // Grown only when full, so the buffer stays within twice the bytes received.
                let grown = bytes.min(self.buf.len().saturating_mul(2));
                self.buf.resize(grown, 0);
            }
            self.end += receive(
                &self.state,
                &mut self.socket_timeout,
                &mut self.buf[self.end..],
            )?;
        }
        Ok(())
    }

    fn read_vec(&mut self, len: usize) -> io::Result<Vec<u8>> {
        if len > self.remaining() {
            return Err(self.overrun(len));
        }
        if self.end - self.pos >= len {
            let out = self.buf[self.pos..self.pos + len].to_vec();
            self.pos += len;
            self.account(len);
            return Ok(out);
        }
        self.read_vec_direct(len)
    }
}

impl Reader {
    /// Reads a string or binary that has not all arrived yet straight into its vector, so its
    /// bytes are copied once, with no zero-filling first. The vector starts with room for what
    /// the socket holds already (and at most [`decode::READ_STEP`] more) and doubles only when
    /// full, so a declared length alone never allocates much. It has [`DIRECT_TAIL`] bytes of
    /// room past the string, so the read that ends it usually takes the end of the message too.
    fn read_vec_direct(&mut self, len: usize) -> io::Result<Vec<u8>> {
        if self.state.tls.is_some() {
            return self.read_vec_tls(len);
        }
        let buffered = self.end - self.pos;
        let arrived = rustix::io::ioctl_fionread(&self.state.stream).map_or(0, |n| n as usize);
        let room = len.saturating_add(DIRECT_TAIL);
        let mut out =
            Vec::with_capacity(room.min(buffered.saturating_add(arrived.max(decode::READ_STEP))));
        out.extend_from_slice(&self.buf[self.pos..self.end]);
        self.pos = self.end;
        while out.len() < len {
            if out.len() == out.capacity() {
                out.reserve_exact(decode::next_step(out.len(), room));
            }
            receive_with(&self.state, &mut self.socket_timeout, |s, flags| {
                rustix::net::recv(s, spare_capacity(&mut out), flags).map(|(got, _)| got)
            })?;
        }
        // The vector may have had room past the string: what was read there is the message's
        // next bytes, buffered for the reads that follow.
        if out.len() > len {
            let extra = out.len() - len;
            if self.buf.len() < extra {
                self.buf.resize(extra, 0);
            }
            self.buf[..extra].copy_from_slice(&out[len..]);
            self.pos = 0;
            self.end = extra;
            out.truncate(len);
        }
        self.account(len);
        Ok(out)
    }
}

impl Reader {
    /// [`read_vec_direct`](Self::read_vec_direct) over TLS: the session copies into memory
    /// that is already initialised, so the vector is zero-filled a step at a time first.
    #[cold]
    fn read_vec_tls(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len.min(decode::READ_STEP));
        out.extend_from_slice(&self.buf[self.pos..self.end]);
        self.pos = self.end;
        // Each step is zero-filled once: a read brings at most a record, far less than a step.
        let mut filled = out.len();
        while filled < len {
            if filled == out.len() {
                out.resize(filled + decode::next_step(filled, len), 0);
            }
            filled += receive(&self.state, &mut self.socket_timeout, &mut out[filled..])?;
        }
        self.account(len);
        Ok(out)
    }
}

/// Room a string read straight into its vector has past its end: what follows a large string
/// in a response is usually only the stops of the structs around it.
const DIRECT_TAIL: usize = 64;

/// Room a write that grows the request buffer leaves past itself, for the bytes that end the
/// message (the stops of the structs around a large string).
const WRITE_TAIL: usize = 64;

/// The writing side of a client connection: collects a message and sends it, frame header
/// included, with one `write`.
#[derive(Debug)]
pub(crate) struct Writer {
    state: Arc<ConnState>,
    buf: Vec<u8>,
    framed: bool,
    max_message_size: usize,
    /// The socket's timeout in this direction, in nanoseconds.
    socket_timeout: u64,
}

impl Writer {
    /// Drops a request over the size limit before any of it is sent.
    #[cold]
    fn refuse(&mut self, len: usize) -> io::Error {
        self.reset();
        self.state.oversized.store(len as u64, Ordering::Relaxed);
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "request of {len} bytes exceeds the limit of {}",
                self.max_message_size
            ),
        )
    }

    /// Makes room for `more` bytes, and [`WRITE_TAIL`] past them: a large string or binary is
    /// usually followed by a few bytes only, which should not double the buffer (and copy it).
    /// Growth stays amortized: `reserve` at least doubles the capacity.
    #[cold]
    fn grow(&mut self, more: usize) {
        self.buf.reserve(more.saturating_add(WRITE_TAIL));
    }

    fn reset(&mut self) {
        if self.buf.capacity() > KEEP_WRITE_BUFFER {
            self.buf = Vec::with_capacity(WRITE_BUFFER);
        }
        self.buf.clear();
        if self.framed {
            self.buf.extend_from_slice(&[0; 4]);
        }
    }
}

impl Write for Writer {
    #[inline]
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_all(data)?;
        Ok(data.len())
    }

    /// Takes all of `data` or none: the protocols write a message in many small pieces, so
    /// this is kept small enough to inline into them.
    #[inline]
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let header = if self.framed { 4 } else { 0 };
        let len = self.buf.len() - header + data.len();
        // Refused as soon as it is too large, so a huge request is never held in memory.
        if len > self.max_message_size {
            return Err(self.refuse(len));
        }
        if data.len() > self.buf.capacity() - self.buf.len() {
            self.grow(data.len());
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let header = if self.framed { 4 } else { 0 };
        let len = self.buf.len() - header;
        if len == 0 {
            return Ok(());
        }
        if len > self.max_message_size {
            return Err(self.refuse(len));
        }
        if self.framed {
            self.buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
        }
        if let Some(tls) = &self.state.tls {
            send_secured(&self.state, tls, &mut self.socket_timeout, &self.buf)?;
            self.reset();
            return Ok(());
        }
        let mut sent = 0;
        while sent < self.buf.len() {
            let rest = &self.buf[sent..];
            let n = bounded(
                &self.state,
                &mut self.socket_timeout,
                Interest::Write,
                |mut s, block| {
                    if block {
                        s.write(rest)
                    } else {
                        let flags =
                            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
                        rustix::net::send(s, rest, flags).map_err(io::Error::from)
                    }
                },
            )?;
            if n == 0 {
                self.state.mark_broken();
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "connection closed while sending",
                ));
            }
            sent += n;
        }
        self.reset();
        Ok(())
    }
}

/// Sends `message` through the TLS session: as much as the session takes at a time (it holds
/// at most 64 KiB), each piece sent before the next is taken.
fn send_secured(
    state: &ConnState,
    tls: &Secured,
    socket_timeout: &mut u64,
    mut message: &[u8],
) -> io::Result<()> {
    let mut session = tls.session.lock();
    while !message.is_empty() {
        let n = session.writer().write(message)?;
        message = &message[n..];
        send_tls(state, &mut session, socket_timeout)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use thrift::protocol::{TInputProtocol, TMessageType};

    use super::*;
    use crate::wire::{self, Limits, Protocol};

    /// A reader over a connection whose peer has sent `bytes` and closed its side.
    fn reader_of(transport: Transport, max: usize, bytes: &[u8]) -> (Arc<ConnState>, Reader) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(bytes).unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        let (state, reader, _writer) =
            split(client, None, transport, Duration::from_secs(5), max).unwrap();
        state.arm(Duration::from_secs(5));
        (state, reader)
    }

    fn input(reader: Reader) -> crate::InputProtocol {
        let limits = Limits {
            max_message_size: usize::MAX,
            max_depth: wire::DEFAULT_MAX_DEPTH,
            max_elements: usize::MAX,
        };
        wire::input(Protocol::Binary, reader, limits)
    }

    fn reply(name: &str, seq: i32) -> Vec<u8> {
        let mut bytes = vec![0x80, 0x01, 0x00, 0x02];
        bytes.extend((name.len() as i32).to_be_bytes());
        bytes.extend(name.as_bytes());
        bytes.extend(seq.to_be_bytes());
        bytes
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut bytes = (message.len() as u32).to_be_bytes().to_vec();
        bytes.extend(message);
        bytes
    }

    #[test]
    fn framed_messages_are_read_one_frame_each() {
        let mut bytes = framed(&reply("add", 1));
        bytes.extend([0, 0, 0, 0]); // an empty frame is skipped
        bytes.extend(framed(&reply("ping", 2)));
        let (state, reader) = reader_of(Transport::Framed, 1024, &bytes);
        let mut input = input(reader);
        let first = input.read_message_begin().unwrap();
        assert_eq!((first.name.as_str(), first.sequence_number), ("add", 1));
        assert!(!state.is_clean(), "the second frame is still buffered");
        let second = input.read_message_begin().unwrap();
        assert_eq!(second.name, "ping");
        assert_eq!(second.message_type, TMessageType::Reply);
        assert!(state.is_clean());
    }

    #[test]
    fn a_message_cannot_run_past_its_frame() {
        let message = reply("add", 1);
        let mut bytes = (message.len() as u32 - 2).to_be_bytes().to_vec();
        bytes.extend(&message);
        let (state, reader) = reader_of(Transport::Framed, 1024, &bytes);
        let err = input(reader).read_message_begin().unwrap_err();
        assert!(matches!(err, thrift::Error::Transport(_)), "{err:?}");
        assert!(state.is_broken());
    }

    fn frame_error(bytes: &[u8]) -> String {
        let (state, reader) = reader_of(Transport::Framed, 1024, bytes);
        let err = input(reader).read_message_begin().unwrap_err();
        assert!(state.is_broken());
        match err {
            thrift::Error::Transport(err) => err.message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_frame_size_that_reads_as_text_says_the_peer_is_not_framed() {
        let err = frame_error(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert!(err.contains("exceeds the limit of 1024"), "{err}");
        assert!(
            err.contains(r#"read "HTTP": the peer is not speaking framed Thrift"#),
            "{err}"
        );
    }

    #[test]
    fn a_frame_size_that_begins_a_message_says_the_peer_is_not_framed() {
        let err = frame_error(&reply("add", 1));
        assert!(err.contains("negative frame length"), "{err}");
        assert!(
            err.contains("without frames, the buffered transport"),
            "{err}"
        );
    }

    #[test]
    fn a_compact_message_is_told_by_its_version_and_type_too() {
        for type_and_version in [0x21, 0x41, 0x61, 0x81] {
            let header = [0x82, type_and_version, 0x01, 0x03];
            assert!(
                unframed_hint(header).contains("without frames"),
                "{header:x?}"
            );
        }
        // Type 0 or 5, version 0 or 2.
        for type_and_version in [0x01, 0xA1, 0x20, 0x22] {
            let header = [0x82, type_and_version, 0x01, 0x03];
            assert_eq!(unframed_hint(header), "", "{header:x?}");
        }
        let err = frame_error(&[0x82, 0x41, 0x01, 0x03, b'a', b'd', b'd']);
        assert!(err.contains("without frames"), "{err}");
    }

    #[test]
    fn a_frame_size_merely_too_large_has_no_hint() {
        let err = frame_error(&[0x00, 0x10, 0x00, 0x01]);
        assert!(err.ends_with("exceeds the limit of 1024"), "{err}");
    }

    #[test]
    fn a_declared_length_is_bounded_by_the_frame_not_by_the_limit() {
        // A frame of 20 bytes whose message name claims 1000.
        let mut message = vec![0x80, 0x01, 0x00, 0x02, 0x00, 0x00, 0x03, 0xE8];
        message.resize(20, b'x');
        let (_, reader) = reader_of(Transport::Framed, 1 << 20, &framed(&message));
        match input(reader).read_message_begin().unwrap_err() {
            thrift::Error::Protocol(e) => assert_eq!(e.kind, thrift::ProtocolErrorKind::SizeLimit),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unframed_message_is_bounded_by_the_limit() {
        let (_, reader) = reader_of(Transport::Buffered, 16, &reply("a_long_method_name", 1));
        match input(reader).read_message_begin().unwrap_err() {
            thrift::Error::Protocol(e) => assert_eq!(e.kind, thrift::ProtocolErrorKind::SizeLimit),
            other => panic!("{other:?}"),
        }
        // Each message gets the whole limit anew.
        let mut bytes = reply("add", 1);
        bytes.extend(reply("add", 2));
        let (state, reader) = reader_of(Transport::Buffered, 15, &bytes);
        let mut input = input(reader);
        assert_eq!(input.read_message_begin().unwrap().sequence_number, 1);
        assert_eq!(input.read_message_begin().unwrap().sequence_number, 2);
        assert!(state.is_clean());
    }

    #[test]
    fn a_long_string_trickling_in_is_read_whole_and_what_follows_it_too() {
        // The string is read straight into its vector as it arrives, in pieces smaller and
        // larger than a read step; the rest of its message and the next frame follow intact.
        let name = "x".repeat(100_000);
        let mut bytes = framed(&reply(&name, 7));
        bytes.extend(framed(&reply("add", 8)));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let (state, reader, _writer) = split(
            client,
            None,
            Transport::Framed,
            Duration::from_secs(30),
            1 << 20,
        )
        .unwrap();
        state.arm(Duration::from_secs(30));
        let sender = std::thread::spawn(move || {
            for piece in [
                &bytes[..20],
                &bytes[20..5_000],
                &bytes[5_000..60_000],
                &bytes[60_000..],
            ] {
                peer.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            peer
        });
        let mut input = input(reader);
        let first = input.read_message_begin().unwrap();
        assert_eq!(first.name, name);
        assert_eq!(first.sequence_number, 7);
        let second = input.read_message_begin().unwrap();
        assert_eq!((second.name.as_str(), second.sequence_number), ("add", 8));
        drop(sender.join().unwrap());
        assert!(state.is_clean());
    }

    #[test]
    fn a_long_string_arrives_whole_across_reads() {
        let name = "n".repeat(3 * READ_BUFFER + 5);
        let (_, reader) = reader_of(Transport::Framed, 1 << 20, &framed(&reply(&name, 9)));
        let message = input(reader).read_message_begin().unwrap();
        assert_eq!(message.name, name);
        assert_eq!(message.sequence_number, 9);
    }

    #[test]
    fn responses_of_every_size_after_large_ones_are_read_whole() {
        // A response after a large one is read first in a small piece: whatever its size, and
        // with or without frames, it must come out whole.
        let names: Vec<String> = [40_000, 1_000, 40_000, 3, 600, 20_000, 17_000, 1]
            .iter()
            .map(|&len| "n".repeat(len))
            .collect();
        for transport in [Transport::Framed, Transport::Buffered] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut peer, _) = listener.accept().unwrap();
            let (state, reader, _writer) =
                split(client, None, transport, Duration::from_secs(30), 1 << 20).unwrap();
            state.arm(Duration::from_secs(30));
            let (asked, asks) = std::sync::mpsc::channel::<()>();
            let sent = names.clone();
            let server = std::thread::spawn(move || {
                // As a server answers: each response once the one before it has been read.
                for (seq, name) in sent.iter().enumerate() {
                    asks.recv().unwrap();
                    let message = reply(name, seq as i32);
                    let bytes = match transport {
                        Transport::Framed => framed(&message),
                        Transport::Buffered => message,
                    };
                    peer.write_all(&bytes).unwrap();
                }
                peer
            });
            let mut input = input(reader);
            for (seq, name) in names.iter().enumerate() {
                asked.send(()).unwrap();
                let message = input.read_message_begin().unwrap();
                assert_eq!(
                    message.name.len(),
                    name.len(),
                    "{transport:?}, response {seq}"
                );
                assert_eq!(message.sequence_number, seq as i32);
                assert!(state.is_clean());
            }
            drop(server.join().unwrap());
        }
    }

    #[test]
    fn a_large_request_is_sent_whole_from_a_buffer_not_much_larger_than_itself() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let (state, _reader, mut writer) = split(
            client,
            None,
            Transport::Framed,
            Duration::from_secs(5),
            1 << 20,
        )
        .unwrap();
        state.arm(Duration::from_secs(5));
        let payload = vec![7u8; 64 * 1024];
        for round in 0..3u8 {
            // As a protocol writes a binary field: small pieces, the bytes, then the stops.
            writer.write_all(&[0x80, 0x01, 0x00, round]).unwrap();
            writer
                .write_all(&(payload.len() as u32).to_be_bytes())
                .unwrap();
            writer.write_all(&payload).unwrap();
            writer.write_all(&[0]).unwrap();
            writer.write_all(&[0]).unwrap();
            let held = writer.buf.capacity();
            assert!(held < payload.len() + 1024, "buffer of {held} bytes");
            writer.flush().unwrap();

            let mut frame = vec![0; 4 + 4 + 4 + payload.len() + 2];
            peer.read_exact(&mut frame).unwrap();
            assert_eq!(frame[..4], ((frame.len() - 4) as u32).to_be_bytes());
            assert_eq!(frame[4..8], [0x80, 0x01, 0x00, round]);
            assert!(frame[12..12 + payload.len()] == payload[..]);
            assert_eq!(frame[frame.len() - 2..], [0, 0]);
        }
    }
}
