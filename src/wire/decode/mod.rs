//! Input protocols that never trust a length, a count or a nesting they have not checked.
//!
//! [`BinaryIn`] and [`CompactIn`] read exactly what Apache Thrift's strict binary protocol and
//! its compact protocol write, like the `thrift` crate's own readers, but every length and
//! element count a peer declares is checked against what is left of the message before anything
//! is allocated for it:
//!
//! * a string or binary of `n` bytes needs `n <= remaining()`;
//! * a list, set or map of `n` elements needs `n` times the smallest encoding of its element
//!   type(s) to fit in `remaining()`, so a count no message could back is refused at once;
//! * structs and containers together nest at most `max_depth` deep;
//! * negative lengths and counts, over-long compact varints, invalid UTF-8 in a string, a bad
//!   protocol version and element types that are not value types are errors.
//!
//! Every error is a [`thrift::Error::Protocol`] (kinds `NegativeSize`, `SizeLimit`,
//! `DepthLimit`, `InvalidData`, `BadVersion`) or, for I/O, a [`thrift::Error::Transport`].
//! No input makes them panic.
//!
//! The binary reader is strict: it requires the version header that every current Thrift
//! library writes, as `TBinaryInputProtocol` does when built with `strict = true`. A message in
//! the old unversioned form is refused with `BadVersion`.

use std::io;

use thrift::protocol::TType;
use thrift::{ProtocolError, ProtocolErrorKind};

mod binary;
mod compact;

pub(crate) use binary::BinaryIn;
pub(crate) use compact::CompactIn;

/// The most elements one container may declare when nothing else is configured: at one byte
/// an element, what a message of the default size limit can hold.
pub(crate) const DEFAULT_MAX_ELEMENTS: usize = super::DEFAULT_MAX_MESSAGE_SIZE;

/// Strings and binaries that may not be backed by bytes yet are read in steps of at most this
/// much more than what already arrived, so a declared length alone never allocates much.
pub(crate) const READ_STEP: usize = 16 * 1024;

/// The bytes a decoder reads one message from.
///
/// Implementations read from a buffer they own, and the decoders are generic over them, so a
/// byte read in the common case is a bounds check and a copy, with no call through a pointer.
pub(crate) trait Source {
    /// Fills `buf` completely, or fails (`UnexpectedEof` when the bytes end first).
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()>;

    /// How many more bytes the current message may hold: the bytes left in its frame, or for a
    /// stream without frames the largest message size less what this message already used.
    fn remaining(&self) -> usize;

    /// Marks the start of a message; a framed source reads the frame's header here.
    fn begin_message(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Makes sure the next `bytes` bytes of the message have arrived, before a container count
    /// that needs them is trusted: generated code reserves room for every element a count
    /// declares, so a count must be backed by bytes received, not merely by bytes a frame
    /// header promised. The caller has checked `bytes <= remaining()`. Sources that hold the
    /// whole message already have nothing to do.
    fn demand(&mut self, bytes: usize) -> io::Result<()> {
        let _ = bytes;
        Ok(())
    }

    /// Reads one byte.
    #[inline]
    fn read_byte(&mut self) -> io::Result<u8> {
        let [b] = self.read_array::<1>()?;
        Ok(b)
    }

    /// Reads `N` bytes.
    #[inline]
    fn read_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut buf = [0; N];
        self.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Reads `len` bytes into a new vector; the caller has checked `len <= remaining()`.
    ///
    /// Sources whose bytes may not have arrived yet grow the vector as bytes arrive, so a peer
    /// that declares a large length and stops cannot make the reader allocate that much.
    fn read_vec(&mut self, len: usize) -> io::Result<Vec<u8>> {
        read_vec_stepwise(self, len)
    }

    /// Reads and drops `len` bytes.
    fn discard(&mut self, mut len: usize) -> io::Result<()> {
        let mut scratch = [0u8; 256];
        while len > 0 {
            let n = len.min(scratch.len());
            self.read_exact(&mut scratch[..n])?;
            len -= n;
        }
        Ok(())
    }
}

impl<S: Source + ?Sized> Source for &mut S {
    #[inline]
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_exact(buf)
    }

    #[inline]
    fn remaining(&self) -> usize {
        (**self).remaining()
    }

    fn begin_message(&mut self) -> io::Result<()> {
        (**self).begin_message()
    }

    fn demand(&mut self, bytes: usize) -> io::Result<()> {
        (**self).demand(bytes)
    }

    #[inline]
    fn read_byte(&mut self) -> io::Result<u8> {
        (**self).read_byte()
    }

    #[inline]
    fn read_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        (**self).read_array()
    }

    fn read_vec(&mut self, len: usize) -> io::Result<Vec<u8>> {
        (**self).read_vec(len)
    }

    fn discard(&mut self, len: usize) -> io::Result<()> {
        (**self).discard(len)
    }
}

/// How much more room a vector holding `have` of `len` bytes gets next: at most [`READ_STEP`]
/// or the size already read, so the allocation stays within about twice the bytes received.
pub(crate) fn next_step(have: usize, len: usize) -> usize {
    (len - have).min(have.max(READ_STEP))
}

/// Reads `len` bytes into a vector that grows as they arrive: at most [`READ_STEP`] or the size
/// already read more at a time, so the allocation stays within about twice the bytes received.
pub(crate) fn read_vec_stepwise<S: Source + ?Sized>(
    src: &mut S,
    len: usize,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < len {
        let start = out.len();
        out.resize(start + next_step(start, len), 0);
        src.read_exact(&mut out[start..])?;
    }
    Ok(out)
}

/// A message held in memory whole: every declared length can be checked against bytes that are
/// really there.
impl Source for &[u8] {
    #[inline]
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() > self.len() {
            return Err(end_of_message());
        }
        let (head, rest) = self.split_at(buf.len());
        buf.copy_from_slice(head);
        *self = rest;
        Ok(())
    }

    #[inline]
    fn read_byte(&mut self) -> io::Result<u8> {
        match self.split_first() {
            Some((&b, rest)) => {
                *self = rest;
                Ok(b)
            }
            None => Err(end_of_message()),
        }
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.len()
    }

    fn read_vec(&mut self, len: usize) -> io::Result<Vec<u8>> {
        if len > self.len() {
            return Err(end_of_message());
        }
        let (head, rest) = self.split_at(len);
        *self = rest;
        Ok(head.to_vec())
    }

    fn discard(&mut self, len: usize) -> io::Result<()> {
        match self.get(len..) {
            Some(rest) => {
                *self = rest;
                Ok(())
            }
            None => Err(end_of_message()),
        }
    }
}

fn end_of_message() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "message ended early")
}

/// How deeply the structs and containers being read are nested.
#[derive(Debug)]
struct Depth {
    now: usize,
    max: usize,
}

impl Depth {
    fn new(max: usize) -> Depth {
        Depth { now: 0, max }
    }

    #[inline]
    fn enter(&mut self) -> thrift::Result<()> {
        if self.now >= self.max {
            return Err(error(
                ProtocolErrorKind::DepthLimit,
                format!(
                    "structs and containers nest deeper than the limit of {}",
                    self.max
                ),
            ));
        }
        self.now += 1;
        Ok(())
    }

    #[inline]
    fn leave(&mut self) {
        self.now = self.now.saturating_sub(1);
    }
}

pub(crate) fn error(kind: ProtocolErrorKind, message: impl Into<String>) -> thrift::Error {
    thrift::Error::Protocol(ProtocolError::new(kind, message))
}

/// Checks a declared string or binary length against what is left of the message.
#[inline]
fn check_length(len: i64, remaining: usize) -> thrift::Result<usize> {
    if len < 0 {
        return Err(error(
            ProtocolErrorKind::NegativeSize,
            format!("negative string or binary length {len}"),
        ));
    }
    match usize::try_from(len) {
        Ok(len) if len <= remaining => Ok(len),
        _ => Err(error(
            ProtocolErrorKind::SizeLimit,
            format!("string or binary of {len} bytes is longer than the {remaining} bytes left in the message"),
        )),
    }
}

/// Checks a declared element count against what is left of the message and waits until the
/// bytes its elements need at the least have arrived.
#[inline]
fn backed_count<S: Source + ?Sized>(
    src: &mut S,
    count: i64,
    element_bytes: usize,
    max_elements: usize,
) -> thrift::Result<i32> {
    if usize::try_from(count).is_ok_and(|n| n > max_elements) {
        return Err(error(
            ProtocolErrorKind::SizeLimit,
            format!("container of {count} elements exceeds the limit of {max_elements}"),
        ));
    }
    let count = check_count(count, element_bytes, src.remaining())?;
    // Cannot overflow: check_count has checked the product against `remaining()`.
    src.demand(count as usize * element_bytes)?;
    Ok(count)
}

/// Checks a declared element count against what is left of the message, given the fewest bytes
/// one element can take.
#[inline]
fn check_count(count: i64, element_bytes: usize, remaining: usize) -> thrift::Result<i32> {
    if count < 0 {
        return Err(error(
            ProtocolErrorKind::NegativeSize,
            format!("negative container size {count}"),
        ));
    }
    let fits = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(element_bytes))
        .is_some_and(|bytes| bytes <= remaining);
    match i32::try_from(count) {
        Ok(count) if fits => Ok(count),
        _ => Err(error(
            ProtocolErrorKind::SizeLimit,
            format!(
                "container of {count} elements of at least {element_bytes} bytes each cannot fit \
                 in the {remaining} bytes left in the message"
            ),
        )),
    }
}

/// Refuses types that cannot be the type of a value: `Stop`, `Void` and `Utf7`.
#[inline]
fn value_type(ttype: TType) -> thrift::Result<TType> {
    match ttype {
        TType::Stop | TType::Void | TType::Utf7 => Err(error(
            ProtocolErrorKind::InvalidData,
            format!("{ttype} is not the type of a value"),
        )),
        ttype => Ok(ttype),
    }
}

fn utf8(bytes: Vec<u8>) -> thrift::Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        error(
            ProtocolErrorKind::InvalidData,
            format!("string is not UTF-8: {e}"),
        )
    })
}

/// Skips one value of `ttype` through `input`'s own reads, so every length, count and nesting
/// check applies: the reader's nesting limit bounds the recursion, not the `thrift` crate's
/// fixed skip depth (64), which would refuse values a larger `max_depth` lets through.
fn skip_value<P: thrift::protocol::TInputProtocol + ?Sized>(
    input: &mut P,
    ttype: TType,
) -> thrift::Result<()> {
    match ttype {
        TType::Bool => input.read_bool().map(drop),
        TType::I08 => input.read_i8().map(drop),
        TType::I16 => input.read_i16().map(drop),
        TType::I32 => input.read_i32().map(drop),
        TType::I64 => input.read_i64().map(drop),
        TType::Double => input.read_double().map(drop),
        TType::String => input.skip_binary(),
        TType::Uuid => input.read_uuid().map(drop),
        TType::Struct => {
            input.read_struct_begin()?;
            loop {
                let field = input.read_field_begin()?;
                if field.field_type == TType::Stop {
                    break;
                }
                skip_value(input, field.field_type)?;
                input.read_field_end()?;
            }
            input.read_struct_end()
        }
        TType::List => {
            let list = input.read_list_begin()?;
            for _ in 0..list.size {
                skip_value(input, list.element_type)?;
            }
            input.read_list_end()
        }
        TType::Set => {
            let set = input.read_set_begin()?;
            for _ in 0..set.size {
                skip_value(input, set.element_type)?;
            }
            input.read_set_end()
        }
        TType::Map => {
            let map = input.read_map_begin()?;
            if map.size > 0 {
                let (Some(key), Some(value)) = (map.key_type, map.value_type) else {
                    return Err(error(
                        ProtocolErrorKind::InvalidData,
                        "map without element types",
                    ));
                };
                for _ in 0..map.size {
                    skip_value(input, key)?;
                    skip_value(input, value)?;
                }
            }
            input.read_map_end()
        }
        TType::Stop | TType::Void | TType::Utf7 => Err(error(
            ProtocolErrorKind::InvalidData,
            format!("cannot skip a value of type {ttype}"),
        )),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod source_tests {
    use super::*;

    #[test]
    fn slice_source_reads_and_reports_what_is_left() {
        let mut src: &[u8] = &[1, 2, 3, 4, 5];
        assert_eq!(src.remaining(), 5);
        assert_eq!(src.read_byte().unwrap(), 1);
        assert_eq!(src.read_array::<2>().unwrap(), [2, 3]);
        assert_eq!(src.remaining(), 2);
        assert_eq!(
            src.read_array::<3>().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(src.read_vec(2).unwrap(), vec![4, 5]);
        assert!(src.read_byte().is_err());
        assert!(src.discard(1).is_err());
    }

    /// A source whose bytes trickle in, to check that the default `read_vec` grows with them.
    struct Trickle {
        left: usize,
        largest_read: usize,
    }

    impl Source for Trickle {
        fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
            self.largest_read = self.largest_read.max(buf.len());
            if buf.len() > self.left {
                return Err(end_of_message());
            }
            self.left -= buf.len();
            buf.fill(7);
            Ok(())
        }

        fn remaining(&self) -> usize {
            usize::MAX
        }
    }

    #[test]
    fn a_declared_length_alone_allocates_one_step() {
        let mut src = Trickle {
            left: 10,
            largest_read: 0,
        };
        assert!(src.read_vec(1 << 30).is_err());
        assert_eq!(src.largest_read, READ_STEP);

        let mut src = Trickle {
            left: 300_000,
            largest_read: 0,
        };
        assert_eq!(src.read_vec(300_000).unwrap(), vec![7; 300_000]);
    }

    #[test]
    fn lengths_and_counts_are_checked_without_overflow() {
        assert!(check_length(-1, 10).is_err());
        assert_eq!(check_length(10, 10).unwrap(), 10);
        assert!(check_length(11, 10).is_err());
        assert_eq!(check_count(3, 4, 12).unwrap(), 3);
        assert!(check_count(4, 4, 12).is_err());
        assert!(check_count(-1, 1, 12).is_err());
        assert!(check_count(i32::MAX as i64, usize::MAX, usize::MAX).is_err());
        assert!(check_count(i32::MAX as i64 + 1, 1, usize::MAX).is_err());
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use thrift::protocol::TInputProtocol;

    #[test]
    fn a_container_over_the_element_limit_is_refused_even_when_the_bytes_are_there() {
        // list<i8> of 10 elements, all present: binary then compact.
        let mut binary = vec![3u8];
        binary.extend_from_slice(&10i32.to_be_bytes());
        binary.extend_from_slice(&[0; 10]);
        let compact = [[0xA3u8].as_slice(), &[0; 10]].concat();

        let mut fits = BinaryIn::new(&binary[..], 64).max_elements(10);
        assert_eq!(fits.read_list_begin().unwrap().size, 10);
        let err = BinaryIn::new(&binary[..], 64)
            .max_elements(9)
            .read_list_begin()
            .unwrap_err();
        assert!(
            matches!(&err, thrift::Error::Protocol(e) if e.message.contains("exceeds the limit of 9")),
            "{err:?}"
        );

        let mut fits = CompactIn::new(&compact[..], 64).max_elements(10);
        assert_eq!(fits.read_list_begin().unwrap().size, 10);
        let err = CompactIn::new(&compact[..], 64)
            .max_elements(9)
            .read_list_begin()
            .unwrap_err();
        assert!(
            matches!(&err, thrift::Error::Protocol(e) if e.message.contains("exceeds the limit of 9")),
            "{err:?}"
        );
    }
}
