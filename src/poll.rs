//! Readiness: what a socket is waited on for ([`Interest`], for the client's deadlines and the
//! server's ready sets alike), and waiting for it on a high-resolution timer: for the last
//! stretch before a deadline, where a socket's own coarse timeout would fire late.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// What a socket is waited on for: bytes to read, or room to write (as mio's `Interest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interest {
    Read,
    Write,
}

/// Waits up to `timeout` for `socket` to be ready; `false` if it was not (or a signal came).
/// An error or hang-up on the socket counts as ready, so that the operation that follows
/// reports it.
pub(crate) fn wait_ready(
    socket: impl AsFd,
    interest: Interest,
    timeout: Duration,
) -> io::Result<bool> {
    let flags = match interest {
        Interest::Read => PollFlags::IN,
        Interest::Write => PollFlags::OUT,
    };
    let mut fds = [PollFd::new(&socket, flags)];
    let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    });
    match poll(&mut fds, Some(&timeout)) {
        Ok(ready) => Ok(ready > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(err) => Err(err.into()),
    }
}
