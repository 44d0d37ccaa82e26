//! What both direct-call handles ([`Direct`](crate::Direct) and
//! [`MultiDirect`](crate::MultiDirect)) are made of: protocols that forward to the call's,
//! the sequence number, and the check that a response answers its request.

use thrift::protocol::{TMessageIdentifier, TMessageType};
use thrift::{ProtocolError, ProtocolErrorKind};

/// Implements `TThriftClient` for a direct handle whose `call` field holds both its protocols
/// and its `sequence` number: the generated methods then run on the handle.
macro_rules! thrift_client_on_protocols {
    ($handle:ident) => {
        impl<C: ::thrift::TThriftClient + Send + 'static> ::thrift::TThriftClient for $handle<C> {
            fn i_prot_mut(&mut self) -> &mut dyn ::thrift::protocol::TInputProtocol {
                &mut self.call
            }

            fn o_prot_mut(&mut self) -> &mut dyn ::thrift::protocol::TOutputProtocol {
                &mut self.call
            }

            fn sequence_number(&self) -> i32 {
                self.call.sequence.0
            }

            fn increment_sequence_number(&mut self) -> i32 {
                self.call.sequence.advance()
            }
        }
    };
}

pub(crate) use thrift_client_on_protocols;

/// The sequence number of a direct handle's latest call; it stays positive, as Thrift
/// sequence numbers should.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sequence(pub(crate) i32);

impl Sequence {
    pub(crate) fn advance(&mut self) -> i32 {
        self.0 = self.0.checked_add(1).unwrap_or(1);
        self.0
    }
}

/// What a direct handle's protocol answers to an operation made outside a call.
pub(crate) fn outside_call() -> thrift::Error {
    thrift::Error::Protocol(ProtocolError::new(
        ProtocolErrorKind::Unknown,
        "message operation outside a call",
    ))
}

/// Fails a response that does not answer the call to `method` numbered `sequence`: another
/// call's reply, or a message that is no reply.
pub(crate) fn check_answers(
    ident: &TMessageIdentifier,
    method: &str,
    sequence: i32,
) -> thrift::Result<()> {
    let problem = if ident.sequence_number != sequence {
        format!(
            "response sequence id {} does not match request {sequence}",
            ident.sequence_number
        )
    } else if ident.name != method {
        format!("response is for {:?}, not {method:?}", ident.name)
    } else if !matches!(
        ident.message_type,
        TMessageType::Reply | TMessageType::Exception
    ) {
        format!("response has message type {:?}", ident.message_type)
    } else {
        return Ok(());
    };
    Err(thrift::Error::Protocol(ProtocolError::new(
        ProtocolErrorKind::InvalidData,
        problem,
    )))
}

/// Implements protocol reads by passing each to `self.read`, for the call protocols of the
/// direct handles.
macro_rules! forward_reads {
    ($($name:ident -> $ty:ty;)*) => {
        $(fn $name(&mut self) -> thrift::Result<$ty> {
            self.read(|p| p.$name())
        })*
    };
}

/// Implements protocol writes, with at most one argument, by passing each to `self.write`.
macro_rules! forward_writes {
    ($($name:ident($($arg:ident: $ty:ty)?);)*) => {
        $(fn $name(&mut self $(, $arg: $ty)?) -> thrift::Result<()> {
            self.write(|p| p.$name($($arg)?))
        })*
    };
}

pub(crate) use {forward_reads, forward_writes};
