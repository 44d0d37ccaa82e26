//! Entry points for the fuzz targets under `fuzz/` and for the property tests.
//!
//! Not part of the crate's API: hidden, unstable, and free to change or go in any release.

use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use thrift::protocol::{TInputProtocol, TType};

use crate::client::connection;
use crate::wire::{
    self, with_reader, InputProtocol, Limits, OutputProtocol, Protocol, Transport,
    DEFAULT_MAX_DEPTH,
};

/// The default depth and element limits, for messages whose size is already bounded.
const DEFAULT_LIMITS: Limits = Limits {
    max_message_size: usize::MAX,
    max_depth: DEFAULT_MAX_DEPTH,
    max_elements: crate::wire::decode::DEFAULT_MAX_ELEMENTS,
};

/// Runs `f` on a client's protocols over a real connection whose server has sent `response`
/// and closed its side, so every read after the response meets the end of the stream.
///
/// The protocols are those a pooled client gets, with the given largest message size and the
/// default depth limit. `response` should stay well under the socket's buffer (say 64 KiB),
/// since nothing reads the other end while it is written.
pub fn with_client<R>(
    transport: Transport,
    protocol: Protocol,
    max_message_size: usize,
    response: &[u8],
    f: impl FnOnce(InputProtocol, OutputProtocol) -> R,
) -> io::Result<R> {
    static LISTENER: OnceLock<TcpListener> = OnceLock::new();
    let listener = match LISTENER.get() {
        Some(listener) => listener,
        None => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            LISTENER.get_or_init(|| listener)
        }
    };
    let stream = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    server.write_all(response)?;
    server.shutdown(Shutdown::Write)?;
    let timeout = Duration::from_secs(10);
    let (state, reader, writer) =
        connection::split(stream, None, transport, timeout, max_message_size)?;
    state.arm(timeout);
    let limits = Limits {
        max_message_size,
        max_depth: DEFAULT_MAX_DEPTH,
        max_elements: crate::wire::decode::DEFAULT_MAX_ELEMENTS,
    };
    let input = wire::input(protocol, reader, limits);
    let output = wire::output(protocol, writer);
    let result = f(input, output);
    // Closed only now: closing it with the client's requests unread would reset the
    // connection, and a reset can discard response bytes not read yet.
    drop(server);
    Ok(result)
}

/// Reads one message from `bytes` with the decoder of `protocol`, every value of it read as
/// generated code would read it (strings and binaries allocated), and returns how many values
/// it held.
pub fn read_message(protocol: Protocol, bytes: &[u8]) -> thrift::Result<usize> {
    let mut values = 0;
    with_reader!(protocol, bytes, DEFAULT_LIMITS, |input| {
        walk_message(&mut input, &mut values)
    })?;
    Ok(values)
}

/// Skips one message in `bytes` with the decoder of `protocol`, as a processor skips what it
/// does not know.
pub fn skip_message(protocol: Protocol, bytes: &[u8]) -> thrift::Result<()> {
    with_reader!(protocol, bytes, DEFAULT_LIMITS, |input| {
        input.read_message_begin()?;
        input.skip(TType::Struct)?;
        input.read_message_end()
    })
}

fn walk_message(input: &mut dyn TInputProtocol, values: &mut usize) -> thrift::Result<()> {
    input.read_message_begin()?;
    walk(input, TType::Struct, values)?;
    input.read_message_end()
}

fn walk(input: &mut dyn TInputProtocol, ttype: TType, values: &mut usize) -> thrift::Result<()> {
    *values += 1;
    match ttype {
        TType::Bool => input.read_bool().map(drop),
        TType::I08 => input.read_i8().map(drop),
        TType::I16 => input.read_i16().map(drop),
        TType::I32 => input.read_i32().map(drop),
        TType::I64 => input.read_i64().map(drop),
        TType::Double => input.read_double().map(drop),
        TType::Uuid => input.read_uuid().map(drop),
        // Text and binary share a wire type; read as a string, invalid UTF-8 is an error.
        TType::String => input.read_string().map(drop),
        TType::Struct => {
            input.read_struct_begin()?;
            loop {
                let field = input.read_field_begin()?;
                if field.field_type == TType::Stop {
                    break;
                }
                walk(input, field.field_type, values)?;
                input.read_field_end()?;
            }
            input.read_struct_end()
        }
        TType::List => {
            let list = input.read_list_begin()?;
            // Reserving the count the decoder let through, as generated code does: here for
            // 8-byte elements, which the compact protocol can send in a byte each.
            let mut items = Vec::<u64>::with_capacity(list.size as usize);
            for _ in 0..list.size {
                walk(input, list.element_type, values)?;
                items.push(0);
            }
            input.read_list_end()
        }
        TType::Set => {
            let set = input.read_set_begin()?;
            for _ in 0..set.size {
                walk(input, set.element_type, values)?;
            }
            input.read_set_end()
        }
        TType::Map => {
            let map = input.read_map_begin()?;
            if let (Some(key), Some(value)) = (map.key_type, map.value_type) {
                for _ in 0..map.size {
                    walk(input, key, values)?;
                    walk(input, value, values)?;
                }
            }
            input.read_map_end()
        }
        other => Err(crate::wire::decode::error(
            thrift::ProtocolErrorKind::InvalidData,
            format!("no values of type {other}"),
        )),
    }
}
