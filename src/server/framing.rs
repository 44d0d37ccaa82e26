//! Finding whole requests in the bytes a connection has received, without trusting a length
//! before it is checked or allocating for bytes that have not arrived.

use std::fmt;
use std::io;

use thrift::protocol::{TInputProtocol, TType};

use super::config::ServerConfig;
use crate::wire::decode::Source;
use crate::wire::with_reader;
use crate::Transport;

/// How much a read asks the socket for at least; one read typically takes in a whole request.
const READ_CHUNK: usize = 8 * 1024;

/// The length prefix of a framed message.
pub(super) const FRAME_HEADER: usize = 4;

/// Where a whole request lies in the connection's input.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Request {
    /// Bytes before the message: the frame header.
    pub(super) skip: usize,
    /// The message's length.
    pub(super) len: usize,
    /// A buffered message that could not be decoded: its end is unknown, so the bytes given
    /// to the processor are all that arrived, and the connection closes after the answer.
    pub(super) malformed: bool,
}

/// Why the bytes received cannot hold a request the server takes: the connection is closed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    NegativeFrame(i32),
    FrameTooLarge { len: usize, max: usize },
    MessageTooLarge(usize),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::NegativeFrame(len) => write!(f, "negative frame length {len}"),
            Refused::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes is over the limit of {max}")?;
                match http_header(*len) {
                    Some(header) => write!(
                        f,
                        "; the frame header {header:?} looks like HTTP: the client does not \
                         speak framed Thrift"
                    ),
                    None => Ok(()),
                }
            }
            Refused::MessageTooLarge(max) => write!(f, "request is over the limit of {max} bytes"),
        }
    }
}

/// What HTTP requests and responses start with; `"PRI "` opens the HTTP/2 preface.
const HTTP_STARTS: [&str; 11] = [
    "GET ", "POST", "PUT ", "HEAD", "DELE", "OPTI", "PATC", "CONN", "TRAC", "HTTP", "PRI ",
];

/// The frame header that declared `len`, if it is how HTTP starts.
fn http_header(len: usize) -> Option<&'static str> {
    let header = u32::try_from(len).ok()?.to_be_bytes();
    HTTP_STARTS
        .into_iter()
        .find(|start| start.as_bytes() == header)
}

/// Bytes received and not yet consumed: `buf[pos..end]`. `buf` beyond `end` is spare room,
/// already initialised, so reads need not zero it again.
#[derive(Default)]
pub(super) struct Input {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// For the buffered transport: how many bytes were buffered when the request was last
    /// found incomplete (see [`Input::next_request`]).
    short_at: usize,
}

impl Input {
    #[inline]
    pub(super) fn available(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// The memory the buffer holds.
    #[inline]
    pub(super) fn held(&self) -> usize {
        self.buf.len()
    }

    #[inline]
    pub(super) fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Counts `n` bytes read into the spare room as received.
    #[inline]
    pub(super) fn received(&mut self, n: usize) {
        self.end += n;
    }

    /// How many bytes should be available in all to hold the request being received: all of a
    /// frame whose header has arrived (and been checked by [`Input::next_request`]), else a
    /// frame header, or, unframed, up to one more than the largest message.
    #[inline]
    pub(super) fn wanted(&self, config: &ServerConfig) -> usize {
        match config.get_transport() {
            Transport::Framed => match frame_length(self.available()) {
                Some(Ok(len)) => FRAME_HEADER + len,
                _ => FRAME_HEADER,
            },
            Transport::Buffered => config.get_max_message_size().saturating_add(1),
        }
    }

    /// Spare room for the next read, when `wanted` bytes should be available in all.
    ///
    /// Grows the buffer to at most twice what has arrived and never past `wanted` (beyond one
    /// chunk), so a frame that only declares a large length cannot make the server allocate it.
    #[inline]
    pub(super) fn spare(&mut self, wanted: usize) -> &mut [u8] {
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

    /// The next request if it is all buffered, `None` if more has to arrive first.
    ///
    /// `more_coming` says the socket may hold more bytes right now; a buffered request is then
    /// only looked for when the buffer has doubled since it was last found incomplete, so a large
    /// request arriving in many reads is not decoded again after each one.
    #[inline]
    pub(super) fn next_request(
        &mut self,
        config: &ServerConfig,
        more_coming: bool,
    ) -> Result<Option<Request>, Refused> {
        let available = self.available();
        match config.get_transport() {
            Transport::Framed => {
                let Some(len) = frame_length(available) else {
                    return Ok(None);
                };
                let len = len.map_err(Refused::NegativeFrame)?;
                let max = config.get_max_message_size();
                if len > max {
                    return Err(Refused::FrameTooLarge { len, max });
                }
                Ok((available.len() >= FRAME_HEADER + len).then_some(Request {
                    skip: FRAME_HEADER,
                    len,
                    malformed: false,
                }))
            }
            Transport::Buffered => {
                if available.is_empty() || (more_coming && available.len() < 2 * self.short_at) {
                    return Ok(None);
                }
                let request = match measure(config, available) {
                    Measured::Whole(len) => Request {
                        skip: 0,
                        len,
                        malformed: false,
                    },
                    Measured::Short => {
                        self.short_at = available.len();
                        return Ok(None);
                    }
                    Measured::TooLarge => {
                        return Err(Refused::MessageTooLarge(config.get_max_message_size()))
                    }
                    // The processor reads the same bytes and answers as it does to any request
                    // it cannot decode.
                    Measured::Malformed => Request {
                        skip: 0,
                        len: available.len(),
                        malformed: true,
                    },
                };
                self.short_at = 0;
                Ok(Some(request))
            }
        }
    }
}

/// The length a frame header at the start of `bytes` declares, if it has arrived; the declared
/// value when it is negative.
#[inline]
fn frame_length(bytes: &[u8]) -> Option<Result<usize, i32>> {
    let header = bytes.get(..FRAME_HEADER)?;
    let declared = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    Some(usize::try_from(declared).map_err(|_| declared))
}

/// Where a buffered request ends, as far as the bytes received tell.
#[derive(Debug, PartialEq, Eq)]
enum Measured {
    /// The first `n` bytes hold a whole message.
    Whole(usize),
    /// The bytes end inside the message.
    Short,
    /// The message is longer than the largest message size.
    TooLarge,
    /// The bytes are not a message.
    Malformed,
}

/// Finds the end of the buffered (unframed) message at the start of `bytes` by reading through
/// it with the bounded decoder, so that the processor runs only on a request that is all here
/// and a worker never waits inside it for the rest.
fn measure(config: &ServerConfig, bytes: &[u8]) -> Measured {
    let mut scan = Scan {
        bytes,
        used: 0,
        max: config.get_max_message_size(),
        short: false,
        too_large: false,
    };
    fn walk<P: TInputProtocol>(mut input: P) -> thrift::Result<()> {
        input.read_message_begin()?;
        input.skip(TType::Struct)?;
        input.read_message_end()
    }
    let walked = with_reader!(config.get_protocol(), &mut scan, config.limits(), |input| {
        walk(input)
    });
    match walked {
        Ok(()) => Measured::Whole(scan.used),
        Err(_) if scan.too_large => Measured::TooLarge,
        Err(_) if scan.short => Measured::Short,
        Err(_) => Measured::Malformed,
    }
}

/// The received bytes of a buffered message, read through to find its end. It may hold up to
/// the largest message size, however much of it has arrived.
struct Scan<'a> {
    bytes: &'a [u8],
    used: usize,
    max: usize,
    /// The bytes ran out before the message did.
    short: bool,
    /// The message went past the largest message size.
    too_large: bool,
}

impl Scan<'_> {
    fn take(&mut self, len: usize) -> io::Result<&[u8]> {
        if len > self.remaining() {
            self.too_large = true;
            return Err(io::Error::other("the message is over the size limit"));
        }
        let Some(taken) = self.bytes.get(self.used..self.used + len) else {
            self.short = true;
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        self.used += len;
        Ok(taken)
    }
}

impl Source for Scan<'_> {
    #[inline]
    fn read_exact(&mut self, dst: &mut [u8]) -> io::Result<()> {
        dst.copy_from_slice(self.take(dst.len())?);
        Ok(())
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.max - self.used
    }

    fn discard(&mut self, len: usize) -> io::Result<()> {
        self.take(len).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary `add(1, 2)` call with sequence number `seq`, unframed.
    fn add_call(seq: i32) -> Vec<u8> {
        let mut bytes = vec![0x80, 0x01, 0x00, 0x01, 0, 0, 0, 3];
        bytes.extend(b"add");
        bytes.extend(seq.to_be_bytes());
        for (id, value) in [(1i16, 1i32), (2, 2)] {
            bytes.push(8); // i32
            bytes.extend(id.to_be_bytes());
            bytes.extend(value.to_be_bytes());
        }
        bytes.push(0); // stop
        bytes
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut bytes = (message.len() as i32).to_be_bytes().to_vec();
        bytes.extend(message);
        bytes
    }

    /// Input that has received `bytes`.
    fn received(config: &ServerConfig, bytes: &[u8]) -> Input {
        let mut input = Input::default();
        let mut at = 0;
        while at < bytes.len() {
            let spare = input.spare(input.wanted(config).max(bytes.len()));
            let n = spare.len().min(bytes.len() - at);
            spare[..n].copy_from_slice(&bytes[at..at + n]);
            input.received(n);
            at += n;
        }
        input
    }

    fn buffered() -> ServerConfig {
        ServerConfig::default().transport(Transport::Buffered)
    }

    #[test]
    fn a_frame_is_a_request_once_all_of_it_has_arrived() {
        let config = ServerConfig::default();
        let frame = framed(&add_call(1));
        for cut in 0..frame.len() {
            let mut input = received(&config, &frame[..cut]);
            assert_eq!(input.next_request(&config, false), Ok(None), "{cut} bytes");
        }
        let mut input = received(&config, &frame);
        let request = input.next_request(&config, false).unwrap().unwrap();
        assert_eq!((request.skip, request.len), (4, frame.len() - 4));
        input.consume(request.skip + request.len);
        assert!(input.available().is_empty());
    }

    #[test]
    fn a_frame_header_over_the_limit_or_negative_is_refused_before_its_body_arrives() {
        let config = ServerConfig::default().max_message_size(1000);
        let mut input = received(&config, &1001i32.to_be_bytes());
        assert_eq!(
            input.next_request(&config, false),
            Err(Refused::FrameTooLarge {
                len: 1001,
                max: 1000
            })
        );
        let mut input = received(&config, &(-5i32).to_be_bytes());
        assert_eq!(
            input.next_request(&config, false),
            Err(Refused::NegativeFrame(-5))
        );
    }

    #[test]
    fn a_frame_header_that_is_http_says_so() {
        let config = ServerConfig::default();
        let mut input = received(&config, b"GET / HTTP/1.1\r\n");
        let refused = input.next_request(&config, false).unwrap_err();
        let message = refused.to_string();
        assert!(message.contains("\"GET \" looks like HTTP"), "{message}");
        for request in [
            &b"TRACE / HTTP/1.1\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let mut input = received(&config, request);
            let refused = input.next_request(&config, false).unwrap_err();
            assert!(refused.to_string().contains("looks like HTTP"), "{refused}");
        }
        let mut input = received(&config, &0x7fff_0000i32.to_be_bytes());
        let refused = input.next_request(&config, false).unwrap_err();
        assert!(!refused.to_string().contains("HTTP"), "{refused}");
    }

    #[test]
    fn a_declared_length_grows_the_buffer_only_as_bytes_arrive() {
        let config = ServerConfig::default();
        // Declares 16 MiB and sends 4 bytes of it.
        let mut input = received(&config, &[0, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
        assert_eq!(input.next_request(&config, false), Ok(None));
        assert_eq!(input.wanted(&config), 4 + 0x00ff_ffff);
        let room = input.spare(input.wanted(&config)).len();
        assert!(input.held() <= 2 * READ_CHUNK, "{} held", input.held());
        assert!(room <= 2 * READ_CHUNK);
    }

    #[test]
    fn pipelined_frames_come_out_one_at_a_time_in_order() {
        let config = ServerConfig::default();
        let mut bytes = framed(&add_call(1));
        bytes.extend(framed(&add_call(2)));
        let mut input = received(&config, &bytes);
        let first = input.next_request(&config, false).unwrap().unwrap();
        let message = &input.available()[first.skip..first.skip + first.len];
        assert_eq!(message, add_call(1));
        input.consume(first.skip + first.len);
        let second = input.next_request(&config, false).unwrap().unwrap();
        let message = &input.available()[second.skip..second.skip + second.len];
        assert_eq!(message, add_call(2));
    }

    #[test]
    fn an_unframed_request_is_measured_by_decoding_it() {
        let config = buffered();
        let call = add_call(7);
        for cut in 1..call.len() {
            let mut input = received(&config, &call[..cut]);
            assert_eq!(input.next_request(&config, false), Ok(None), "{cut} bytes");
        }
        let mut bytes = call.clone();
        bytes.extend(add_call(8));
        let mut input = received(&config, &bytes);
        let request = input.next_request(&config, false).unwrap().unwrap();
        assert_eq!(
            request,
            Request {
                skip: 0,
                len: call.len(),
                malformed: false
            }
        );
    }

    #[test]
    fn a_partial_unframed_request_is_measured_again_only_when_it_has_doubled() {
        let config = buffered();
        let call = add_call(7);
        let mut input = received(&config, &call[..10]);
        assert_eq!(input.next_request(&config, true), Ok(None));
        assert_eq!(input.short_at, 10);
        // The rest arrives, but less than doubles what was there: while more may be coming, it
        // is not decoded again...
        let mut whole = received(&config, &call);
        whole.short_at = call.len().div_ceil(2) + 1;
        assert_eq!(whole.next_request(&config, true), Ok(None));
        // ...and once the socket is drained it is.
        assert!(whole.next_request(&config, false).unwrap().is_some());
        assert_eq!(whole.short_at, 0);
    }

    #[test]
    fn unframed_bytes_that_are_no_message_go_to_the_processor_marked_malformed() {
        let config = buffered();
        let mut input = received(&config, &[0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0]);
        let request = input.next_request(&config, false).unwrap().unwrap();
        assert!(request.malformed);
        assert_eq!(request.len, 8);
    }

    #[test]
    fn an_unframed_request_over_the_limit_is_refused() {
        let config = buffered().max_message_size(16);
        let mut input = received(&config, &add_call(1));
        assert_eq!(
            input.next_request(&config, false),
            Err(Refused::MessageTooLarge(16))
        );
    }
}
