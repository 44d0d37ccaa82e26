//! Direct method calls on a multi-endpoint client: the request is recorded, the exchange
//! runs (and is retried) when the generated code flushes it, and the generated code then
//! reads the response from a buffered copy.

use std::fmt;
use std::io::Cursor;
use std::time::Instant;

use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TFieldIdentifier,
    TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier, TMessageType,
    TOutputProtocol, TSetIdentifier, TStructIdentifier, TType,
};
use thrift::{TConfiguration, TThriftClient};

use super::retry::RetriedException;
use super::MultiThriftClient;
use crate::client::call::{Answered, Unfinished};
use crate::client::config::ClientConfig;
use crate::client::ThriftClient;
use crate::error::Error;
use crate::handle::{
    check_answers, forward_reads, forward_writes, outside_call, thrift_client_on_protocols,
    Sequence,
};
use crate::wire::mirror::{copy_reader, copy_writer, Mirrored};
use crate::wire::{Protocol, DEFAULT_MAX_DEPTH};

/// A request buffer larger than this is given back after its call.
const KEEP_BUFFER: usize = 64 * 1024;

/// A client handle on which the generated methods are called directly, with the retries of
/// [`MultiThriftClient::call`], from [`MultiThriftClient::direct`].
///
/// Declare the service's marker trait once with [`impl_direct!`](crate::impl_direct), which
/// covers both [`Direct`](crate::Direct) and `MultiDirect`; then `multi.direct().add(1, 2)`.
/// Errors raised by this crate come out of the generated methods as `thrift::Error::User`;
/// [`Error::from`] turns them back.
///
/// The generated code's request is recorded when it is written; when the generated code
/// flushes it, the whole exchange runs on the first endpoint: the request is sent and the
/// whole response read and kept. Every failure that [`MultiThriftClient::call`] retries is
/// retried here too, on the next endpoint, with the same request: an open breaker, pool wait,
/// connect, sending, the response's timeout, transport and decoding errors, and service
/// exceptions declared with [`retry_on`](crate::ClientConfig::retry_on). The generated code
/// then reads the response from the kept copy, so a service exception that is not retried
/// reaches the caller typed, as the generated code returns it. A failed call's error is
/// returned from the request's flush, so the generated method returns it.
///
/// One difference from `call`: in the attempts listed by [`Error::Unavailable`], a service
/// exception that was retried is an [`Error::User`] holding the exception's `Debug` text, not
/// the exception itself.
///
/// The response is held in memory until the generated code has read it (it is bounded by
/// `max_message_size`). The handle is cheap: make one per thread, or clone it.
pub struct MultiDirect<C> {
    call: Protocols<C>,
}

impl<C: Send + 'static> MultiThriftClient<C> {
    /// A handle on which the generated methods are called directly, gevent-thrift's
    /// `wrap_client`: `client.direct().add(1, 2)`, with the same retries as
    /// [`call`](Self::call). See [`MultiDirect`].
    pub fn direct(&self) -> MultiDirect<C> {
        MultiDirect::new(self.clone())
    }
}

impl<C: Send + 'static> MultiDirect<C> {
    fn new(client: MultiThriftClient<C>) -> Self {
        let limits = limits(client.config());
        MultiDirect {
            call: Protocols {
                client,
                limits,
                sequence: Sequence::default(),
                method: String::new(),
                oneway: false,
                phase: Phase::Idle,
                request: TBinaryOutputProtocol::new(Vec::new(), true),
                spare: Vec::new(),
                response: Response::Binary(TBinaryInputProtocol::new(
                    Cursor::new(Vec::new()),
                    true,
                )),
            },
        }
    }
}

impl<C: Send + 'static> Clone for MultiDirect<C> {
    fn clone(&self) -> Self {
        MultiDirect::new(self.call.client.clone())
    }
}

impl<C> fmt::Debug for MultiDirect<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiDirect")
            .field("client", &self.call.client)
            .finish()
    }
}

thrift_client_on_protocols!(MultiDirect);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// The generated code is writing the request.
    Writing,
    /// The response is in `response`, for the generated code to read.
    Reading,
}

/// Both protocols of a [`MultiDirect`] handle.
struct Protocols<C> {
    client: MultiThriftClient<C>,
    limits: TConfiguration,
    sequence: Sequence,
    method: String,
    oneway: bool,
    phase: Phase,
    /// The request being written, in the strict binary protocol.
    request: TBinaryOutputProtocol<Vec<u8>>,
    /// The buffer the next response is copied into.
    spare: Vec<u8>,
    /// The last response, in the endpoints' protocol.
    response: Response,
}

/// A response's copy, encoded as it came (re-encoded in the protocol it came in, so about as
/// large as it was on the wire), for the generated code to read.
enum Response {
    Binary(TBinaryInputProtocol<Cursor<Vec<u8>>>),
    Compact(TCompactInputProtocol<Cursor<Vec<u8>>>),
}

impl Response {
    fn new(protocol: Protocol, bytes: Vec<u8>, limits: &TConfiguration) -> Response {
        let bytes = Cursor::new(bytes);
        match protocol {
            Protocol::Binary => Response::Binary(TBinaryInputProtocol::with_config(
                bytes,
                true,
                limits.clone(),
            )),
            Protocol::Compact => {
                Response::Compact(TCompactInputProtocol::with_config(bytes, limits.clone()))
            }
        }
    }

    fn input(&mut self) -> &mut dyn TInputProtocol {
        match self {
            Response::Binary(input) => input,
            Response::Compact(input) => input,
        }
    }

    /// The buffer, for the next copy (the compact reader does not give its back).
    fn into_buffer(self) -> Vec<u8> {
        match self {
            Response::Binary(input) => input.transport.into_inner(),
            Response::Compact(_) => Vec::new(),
        }
    }
}

/// The request as sent to every endpoint tried.
struct Request<'a> {
    bytes: &'a [u8],
    method: &'a str,
    sequence: i32,
    oneway: bool,
}

/// How an endpoint answered.
enum Reply {
    /// A oneway request went out.
    Sent,
    /// The response holds the return value.
    Value,
    /// The response is a `TApplicationException`.
    Application,
    /// The response holds a service exception; these are its bytes, in the response's
    /// protocol, as the declared exception types are told apart in.
    Exception(Vec<u8>),
}

/// The limits the generated code reads a response's copy with.
fn limits(config: &ClientConfig) -> TConfiguration {
    let max = Some(config.get_max_message_size());
    TConfiguration::builder()
        .max_message_size(max)
        .max_frame_size(max)
        .max_recursion_depth(Some(DEFAULT_MAX_DEPTH))
        .max_string_size(max)
        .max_container_size(max)
        .build()
        .expect("frame size equals message size, which the builder accepts")
}

impl<C: TThriftClient + Send + 'static> Protocols<C> {
    fn begin(&mut self, ident: &TMessageIdentifier) -> thrift::Result<()> {
        let mut buf = std::mem::take(&mut self.request.transport);
        if buf.capacity() > KEEP_BUFFER {
            buf = Vec::new();
        }
        buf.clear();
        self.request = TBinaryOutputProtocol::new(buf, true);
        self.method.clear();
        self.method.push_str(&ident.name);
        self.oneway = ident.message_type == TMessageType::OneWay;
        self.phase = Phase::Writing;
        self.request.write_message_begin(ident)
    }

    fn write<T>(
        &mut self,
        op: impl FnOnce(&mut dyn TOutputProtocol) -> thrift::Result<T>,
    ) -> thrift::Result<T> {
        if self.phase != Phase::Writing {
            return Err(outside_call());
        }
        op(&mut self.request)
    }

    fn read<T>(
        &mut self,
        op: impl FnOnce(&mut dyn TInputProtocol) -> thrift::Result<T>,
    ) -> thrift::Result<T> {
        if self.phase != Phase::Reading {
            return Err(outside_call());
        }
        op(self.response.input())
    }

    /// Runs the exchange, on as many endpoints as it takes; leaves the response ready to read.
    fn exchange(&mut self) -> thrift::Result<()> {
        self.phase = Phase::Idle;
        let request = Request {
            bytes: &self.request.transport,
            method: &self.method,
            sequence: self.sequence.0,
            oneway: self.oneway,
        };
        let mut copy = std::mem::take(&mut self.spare);
        let result = self
            .client
            .run(|client, deadline| attempt(client, deadline, &request, &mut copy));
        let result = match result {
            // A declared-retryable exception whose retry the retry budget refused: its response
            // is still in the copy, and reaches the caller typed, as through `call`.
            Err(Error::User(e)) if e.is::<RetriedException>() => Ok(Reply::Exception(Vec::new())),
            result => result,
        };
        match result {
            Ok(Reply::Sent) => {
                self.spare = copy;
                Ok(())
            }
            Ok(_) => {
                let protocol = self.client.config().get_protocol();
                let response = Response::new(protocol, copy, &self.limits);
                // The previous response's buffer takes the next one's copy.
                self.spare = std::mem::replace(&mut self.response, response).into_buffer();
                self.phase = Phase::Reading;
                Ok(())
            }
            Err(err) => {
                self.spare = copy;
                Err(err.into())
            }
        }
    }
}

/// One attempt on one endpoint: sends the request, reads the whole response into `copy` and
/// settles the attempt with the endpoint's breaker and counters.
fn attempt<C: TThriftClient>(
    client: &ThriftClient<C>,
    deadline: Option<Instant>,
    request: &Request<'_>,
    copy: &mut Vec<u8>,
) -> Result<Reply, Error> {
    let endpoint = client.shared_endpoint();
    let protocol = endpoint.config().get_protocol();
    // Abandoned, its probe's turn passed on, should anything below panic.
    let mut unfinished = Unfinished::new(endpoint, endpoint.begin(deadline)?);
    copy.clear();
    let call = unfinished.call();
    let answered = talk(call.client(), request, &mut *copy_writer(protocol, copy));
    let result = answered
        .and_then(|answered| match answered {
            Some(message_type) => classify(protocol, copy, message_type),
            None => Ok(Reply::Sent),
        })
        .and_then(|reply| {
            call.connection().check_clean()?;
            Ok(reply)
        });
    let mut call = unfinished.finish();
    match result {
        Ok(Reply::Exception(exception)) => {
            let config = endpoint.config();
            let declared_failure = config.encodes_declared_failure(&exception);
            let retried = config.describe_declared_retryable(&exception);
            endpoint.end_answered(call, Answered::Exception { declared_failure });
            match retried {
                Some(text) => Err(Error::User(Box::new(RetriedException(text)))),
                None => Ok(Reply::Exception(exception)),
            }
        }
        Ok(Reply::Application) => match shed_reply(protocol, copy) {
            // Retried like any failure where the request did not run.
            Some(shed) => {
                endpoint.end_answered(call, Answered::Overloaded);
                Err(Error::Overloaded(shed))
            }
            None => {
                endpoint.end_answered(call, Answered::ApplicationError);
                Ok(Reply::Application)
            }
        },
        result => {
            if result.is_err() {
                // The message on the connection is cut short: it cannot serve another call.
                call.discard();
            }
            endpoint.end(call, result, deadline)
        }
    }
}

/// Sends the request over `client`'s protocols and copies the response into `copy`; returns
/// the response's message type, or `None` for a oneway request (sent, and no response).
fn talk<C: TThriftClient>(
    client: &mut C,
    request: &Request<'_>,
    copy: &mut dyn TOutputProtocol,
) -> thrift::Result<Option<TMessageType>> {
    // The recorded request is this process's own encoding: replayed without limits, so that a
    // request over `max_message_size` reaches the connection's writer, which refuses it before
    // anything is sent (`Error::RequestTooLarge`, not the endpoint's failure).
    let mut recorded =
        TBinaryInputProtocol::with_config(request.bytes, true, TConfiguration::no_limits());
    let mut send = Mirrored {
        input: &mut recorded,
        copy: client.o_prot_mut(),
    };
    send.read_message_begin()?;
    send.skip(TType::Struct)?;
    send.read_message_end()?;
    client.o_prot_mut().flush()?;
    if request.oneway {
        return Ok(None);
    }
    let mut receive = Mirrored {
        input: client.i_prot_mut(),
        copy,
    };
    let ident = receive.read_message_begin()?;
    check_answers(&ident, request.method, request.sequence)?;
    receive.skip(TType::Struct)?;
    receive.read_message_end()?;
    Ok(Some(ident.message_type))
}

/// The `TApplicationException` of a response's copy, if it is a server shedding the request.
fn shed_reply(protocol: Protocol, response: &[u8]) -> Option<thrift::ApplicationError> {
    let mut input = copy_reader(protocol, response);
    input.read_message_begin().ok()?;
    crate::error::read_shed(&mut *input)
}

/// Tells a response's copy apart: in a result struct, field 0 is the return value and every
/// other field a service exception.
fn classify(
    protocol: Protocol,
    response: &[u8],
    message_type: TMessageType,
) -> thrift::Result<Reply> {
    if message_type == TMessageType::Exception {
        return Ok(Reply::Application);
    }
    let mut input = copy_reader(protocol, response);
    input.read_message_begin()?;
    input.read_struct_begin()?;
    let field = input.read_field_begin()?;
    if field.field_type == TType::Stop || field.id.is_none_or(|id| id <= 0) {
        return Ok(Reply::Value);
    }
    let mut exception = Vec::new();
    Mirrored {
        input: &mut *input,
        copy: &mut *copy_writer(protocol, &mut exception),
    }
    .skip(field.field_type)?;
    Ok(Reply::Exception(exception))
}

impl<C: TThriftClient + Send + 'static> TInputProtocol for Protocols<C> {
    fn read_message_end(&mut self) -> thrift::Result<()> {
        self.read(|p| p.read_message_end())?;
        self.phase = Phase::Idle;
        Ok(())
    }

    forward_reads! {
        read_message_begin -> TMessageIdentifier;
        read_struct_begin -> Option<TStructIdentifier>;
        read_struct_end -> ();
        read_field_begin -> TFieldIdentifier;
        read_field_end -> ();
        read_bool -> bool;
        read_bytes -> Vec<u8>;
        read_i8 -> i8;
        read_i16 -> i16;
        read_i32 -> i32;
        read_i64 -> i64;
        read_double -> f64;
        read_uuid -> uuid::Uuid;
        read_string -> String;
        read_list_begin -> TListIdentifier;
        read_list_end -> ();
        read_set_begin -> TSetIdentifier;
        read_set_end -> ();
        read_map_begin -> TMapIdentifier;
        read_map_end -> ();
        read_byte -> u8;
    }
}

impl<C: TThriftClient + Send + 'static> TOutputProtocol for Protocols<C> {
    fn write_message_begin(&mut self, ident: &TMessageIdentifier) -> thrift::Result<()> {
        self.begin(ident)
    }

    fn flush(&mut self) -> thrift::Result<()> {
        if self.phase != Phase::Writing {
            return Err(outside_call());
        }
        self.exchange()
    }

    forward_writes! {
        write_message_end();
        write_struct_begin(ident: &TStructIdentifier);
        write_struct_end();
        write_field_begin(ident: &TFieldIdentifier);
        write_field_end();
        write_field_stop();
        write_bool(b: bool);
        write_bytes(b: &[u8]);
        write_i8(i: i8);
        write_i16(i: i16);
        write_i32(i: i32);
        write_i64(i: i64);
        write_double(d: f64);
        write_uuid(uuid: &uuid::Uuid);
        write_string(s: &str);
        write_list_begin(ident: &TListIdentifier);
        write_list_end();
        write_set_begin(ident: &TSetIdentifier);
        write_set_end();
        write_map_begin(ident: &TMapIdentifier);
        write_map_end();
        write_byte(b: u8);
    }
}
