//! Wire formats: the transport (framing) and protocol (encoding) a peer speaks, and the
//! protocols both sides read and write messages with.

pub(crate) mod decode;
pub(crate) mod mirror;
pub(crate) mod tracked;

use std::io::Write;

use thrift::protocol::{TInputProtocol, TOutputProtocol};

use self::decode::Source;

/// How the message of a server's reply to a request it shed (did not run, because it waited
/// too long for a worker) begins; a `TApplicationException` of kind `Unknown`. Clients of this
/// crate recognise it.
pub(crate) const SHED_PREFIX: &str = "server overloaded: ";

/// The largest message, its frame included, when nothing else is configured: 16 MiB, Thrift's
/// `TConfiguration` default.
pub(crate) const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Nesting allowed when nothing else is configured; Apache Thrift's default.
pub(crate) const DEFAULT_MAX_DEPTH: usize = 64;

/// The input protocol handed to a generated client's constructor.
///
/// A generated client over this crate's connections has the type
/// `CalculatorSyncClient<InputProtocol, OutputProtocol>`.
pub type InputProtocol = Box<dyn TInputProtocol + Send>;

/// The output protocol handed to a generated client's constructor.
pub type OutputProtocol = Box<dyn TOutputProtocol + Send>;

/// How messages are delimited on the connection.
///
/// Both sides of a connection must agree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Each message is preceded by its length as a 4-byte big-endian integer
    /// (Thrift's `TFramedTransport`). The default.
    #[default]
    Framed,
    /// Messages follow each other with no delimiter (Thrift's `TBufferedTransport`).
    Buffered,
}

/// How values are encoded inside a message.
///
/// Both sides of a connection must agree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Thrift's strict binary protocol. The default.
    #[default]
    Binary,
    /// Thrift's compact protocol.
    Compact,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "framed" => Ok(Transport::Framed),
            "buffered" => Ok(Transport::Buffered),
            other => Err(format!(
                "unknown transport {other:?} (expected framed or buffered)"
            )),
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "binary" => Ok(Protocol::Binary),
            "compact" => Ok(Protocol::Compact),
            other => Err(format!(
                "unknown protocol {other:?} (expected binary or compact)"
            )),
        }
    }
}

/// Size and depth limits applied while decoding a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_message_size: usize,
    pub(crate) max_depth: usize,
    pub(crate) max_elements: usize,
}

/// Binds `$input` to the bounded reader of `$protocol` over `$source`, within the depth and
/// element limits of `$limits`, and evaluates `$body` with it: the one place where a protocol
/// names its reader's type, so that code generic over readers runs on the right one.
macro_rules! with_reader {
    ($protocol:expr, $source:expr, $limits:expr, |$input:ident| $body:expr) => {{
        let limits: $crate::wire::Limits = $limits;
        match $protocol {
            $crate::wire::Protocol::Binary => {
                #[allow(unused_mut)]
                let mut $input = $crate::wire::decode::BinaryIn::new($source, limits.max_depth)
                    .max_elements(limits.max_elements);
                $body
            }
            $crate::wire::Protocol::Compact => {
                #[allow(unused_mut)]
                let mut $input = $crate::wire::decode::CompactIn::new($source, limits.max_depth)
                    .max_elements(limits.max_elements);
                $body
            }
        }
    }};
}

/// Binds `$output` to the writer of `$protocol` over `$writer` and evaluates `$body` with it,
/// as [`with_reader!`] does for readers.
macro_rules! with_writer {
    ($protocol:expr, $writer:expr, |$output:ident| $body:expr) => {
        match $protocol {
            $crate::wire::Protocol::Binary => {
                #[allow(unused_mut)]
                let mut $output = ::thrift::protocol::TBinaryOutputProtocol::new($writer, true);
                $body
            }
            $crate::wire::Protocol::Compact => {
                #[allow(unused_mut)]
                let mut $output = ::thrift::protocol::TCompactOutputProtocol::new($writer);
                $body
            }
        }
    };
}

pub(crate) use {with_reader, with_writer};

/// Builds the input protocol of `protocol` over `source`.
///
/// The source bounds every length and count by what is left of its message; `limits` bounds
/// the nesting and the elements of a container.
pub(crate) fn input<S>(protocol: Protocol, source: S, limits: Limits) -> InputProtocol
where
    S: Source + Send + 'static,
{
    with_reader!(protocol, source, limits, |input| Box::new(input))
}

/// Builds the output protocol of `protocol` over `writer`.
pub(crate) fn output<W>(protocol: Protocol, writer: W) -> OutputProtocol
where
    W: Write + Send + 'static,
{
    with_writer!(protocol, writer, |output| Box::new(output))
}
