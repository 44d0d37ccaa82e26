//! A socket as rustls sees it, and the handshake driven to its end by a deadline.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use rustix::net::{RecvFlags, SendFlags};
use rustls::ClientConnection;

use crate::poll::{wait_ready, Interest};

/// The socket under a TLS session: one `recv`, or one vectored `sendmsg` per `write_tls`,
/// blocking or not. A vectored write sends a handshake flight's records in one segment,
/// where a write each could wait out Nagle and a delayed ACK (about 40 ms).
#[derive(Debug)]
pub(crate) struct SockIo<'a> {
    pub(crate) stream: &'a TcpStream,
    /// Whether the call may block (on the socket's own timeout).
    pub(crate) block: bool,
}

impl SockIo<'_> {
    fn send_flags(&self) -> SendFlags {
        if self.block {
            SendFlags::NOSIGNAL
        } else {
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT
        }
    }
}

impl Read for SockIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let flags = if self.block {
            RecvFlags::empty()
        } else {
            RecvFlags::DONTWAIT
        };
        let (n, _) = rustix::net::recv(self.stream, buf, flags)?;
        Ok(n)
    }
}

impl Write for SockIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::net::send(self.stream, buf, self.send_flags())?)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let flags = self.send_flags();
        Ok(rustix::net::sendmsg(
            self.stream,
            bufs,
            &mut Default::default(),
            flags,
        )?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a handshake did not finish.
#[derive(Debug)]
pub(crate) enum HandshakeFailure {
    /// The deadline passed first.
    Timeout,
    /// The peer refused, closed, or is no TLS server; rustls' reason inside.
    Failed(io::Error),
}

/// Drives `tls` to the end of its handshake on `stream`, never blocking in a socket call and
/// waiting with `poll` for what it wants, so the deadline holds to the millisecond.
pub(crate) fn handshake(
    stream: &TcpStream,
    tls: &mut ClientConnection,
    deadline: Instant,
) -> Result<(), HandshakeFailure> {
    let mut io = SockIo {
        stream,
        block: false,
    };
    loop {
        while tls.wants_write() {
            match tls.write_tls(&mut io) {
                Ok(_) => {}
                Err(e) if retry(&e) => wait(stream, Interest::Write, deadline)?,
                Err(e) => return Err(HandshakeFailure::Failed(e)),
            }
        }
        if !tls.is_handshaking() {
            return Ok(());
        }
        match tls.read_tls(&mut io) {
            Ok(0) => {
                return Err(HandshakeFailure::Failed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the TLS handshake \
                     (is it serving TLS?)",
                )))
            }
            Ok(_) => {
                if let Err(e) = tls.process_new_packets() {
                    // The alert that tells the server why.
                    let _ = tls.write_tls(&mut io);
                    return Err(HandshakeFailure::Failed(tls_error(e)));
                }
            }
            Err(e) if retry(&e) => wait(stream, Interest::Read, deadline)?,
            Err(e) => return Err(HandshakeFailure::Failed(e)),
        }
    }
}

/// rustls' error as an I/O error, still reachable by downcasting its inner error.
pub(crate) fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn wait(stream: &TcpStream, interest: Interest, deadline: Instant) -> Result<(), HandshakeFailure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HandshakeFailure::Timeout);
    }
    wait_ready(stream, interest, left).map_err(HandshakeFailure::Failed)?;
    Ok(())
}
