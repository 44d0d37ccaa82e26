//! Helpers of the server tests: a lock for tests that must run alone, raw connections for
//! hand-made bytes, waits on the server's counters and a decoder of replies.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use blocking_thrift::{Protocol, ServerStats, ThriftServer, Transport};
use thrift::protocol::{
    TBinaryInputProtocol, TCompactInputProtocol, TInputProtocol, TMessageType, TType,
};
use thrift::{ApplicationErrorKind, TConfiguration};

/// Bound on anything a test waits for; far beyond what a loaded machine needs.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Every test of a binary shares this lock; one that counts the process's threads or
/// measures its memory takes it alone, so no other test disturbs the count.
static ALONE: RwLock<()> = RwLock::new(());

pub fn shared_lock() -> RwLockReadGuard<'static, ()> {
    ALONE
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn exclusive_lock() -> RwLockWriteGuard<'static, ()> {
    ALONE
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A raw connection for hand-made and hostile bytes.
pub fn raw(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Waits up to `PATIENCE` for the server's stats to satisfy `done`; fails the test otherwise.
pub fn wait_for_stats(server: &ThriftServer, what: &str, done: impl Fn(&ServerStats) -> bool) {
    let mut last = server.stats();
    let held = super::wait_until(PATIENCE, || {
        last = server.stats();
        done(&last)
    });
    assert!(held, "{what}: never held; last stats {last:?}");
}

/// `message` in a frame of the framed transport.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut bytes = (message.len() as i32).to_be_bytes().to_vec();
    bytes.extend_from_slice(message);
    bytes
}

/// Frames `message` for the framed transport, or leaves it as is for the buffered one.
pub fn wire(transport: Transport, message: &[u8]) -> Vec<u8> {
    match transport {
        Transport::Framed => frame(message),
        Transport::Buffered => message.to_vec(),
    }
}

// Hand-made encodings in the binary protocol, byte by byte, so that any of them can be
// made wrong.

/// Binary, strict: a call's message header.
pub fn bin_call(name: &str, seq: i32) -> Vec<u8> {
    let mut b = vec![0x80, 0x01, 0x00, 0x01];
    b.extend((name.len() as i32).to_be_bytes());
    b.extend(name.as_bytes());
    b.extend(seq.to_be_bytes());
    b
}

/// Binary: a field header.
pub fn bin_field(ty: u8, id: i16) -> Vec<u8> {
    let mut b = vec![ty];
    b.extend(id.to_be_bytes());
    b
}

/// Binary: a string or binary value.
pub fn bin_string(bytes: &[u8]) -> Vec<u8> {
    let mut b = (bytes.len() as i32).to_be_bytes().to_vec();
    b.extend(bytes);
    b
}

/// Binary: `add(a, b)`, whole.
pub fn bin_add(seq: i32, a: i32, b: i32) -> Vec<u8> {
    let mut m = bin_call("add", seq);
    m.extend(bin_field(8, 1));
    m.extend(a.to_be_bytes());
    m.extend(bin_field(8, 2));
    m.extend(b.to_be_bytes());
    m.push(0);
    m
}

/// A decoded reply: its header and either the i32 result (field 0) or the application error.
#[derive(Debug)]
pub struct Reply {
    pub name: String,
    pub kind: TMessageType,
    pub seq: i32,
    pub result: Option<i32>,
    pub error: Option<ApplicationErrorKind>,
    /// The application error's message; empty without one.
    pub message: String,
}

/// Reads one reply off `stream`; fails the test if there is none.
pub fn read_reply(stream: &mut TcpStream, transport: Transport, protocol: Protocol) -> Reply {
    try_read_reply(stream, transport, protocol).expect("read a reply")
}

/// Reads one reply off `stream`.
pub fn try_read_reply(
    stream: &mut TcpStream,
    transport: Transport,
    protocol: Protocol,
) -> io::Result<Reply> {
    let body: Box<dyn Read + '_> = match transport {
        Transport::Framed => {
            let mut header = [0u8; 4];
            stream.read_exact(&mut header)?;
            let mut frame = vec![0u8; i32::from_be_bytes(header).clamp(0, 1 << 20) as usize];
            stream.read_exact(&mut frame)?;
            Box::new(io::Cursor::new(frame))
        }
        // Byte by byte, so nothing past this reply is taken off the socket.
        Transport::Buffered => Box::new(ByteReader(stream)),
    };
    let config = TConfiguration::default();
    let mut i: Box<dyn TInputProtocol + '_> = match protocol {
        Protocol::Binary => Box::new(TBinaryInputProtocol::with_config(body, true, config)),
        Protocol::Compact => Box::new(TCompactInputProtocol::with_config(body, config)),
    };
    let bad = |e: thrift::Error| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let ident = i.read_message_begin().map_err(bad)?;
    let mut reply = Reply {
        name: ident.name,
        kind: ident.message_type,
        seq: ident.sequence_number,
        result: None,
        error: None,
        message: String::new(),
    };
    if reply.kind == TMessageType::Exception {
        let err = thrift::Error::read_application_error_from_in_protocol(&mut *i).map_err(bad)?;
        reply.error = Some(err.kind);
        reply.message = err.message;
    } else {
        i.read_struct_begin().map_err(bad)?;
        loop {
            let field = i.read_field_begin().map_err(bad)?;
            match (field.field_type, field.id) {
                (TType::Stop, _) => break,
                (TType::I32, Some(0)) => reply.result = Some(i.read_i32().map_err(bad)?),
                (other, _) => i.skip(other).map_err(bad)?,
            }
            i.read_field_end().map_err(bad)?;
        }
        i.read_struct_end().map_err(bad)?;
    }
    i.read_message_end().map_err(bad)?;
    Ok(reply)
}

struct ByteReader<'a>(&'a mut TcpStream);

impl Read for ByteReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len().min(1);
        self.0.read(&mut buf[..len])
    }
}
