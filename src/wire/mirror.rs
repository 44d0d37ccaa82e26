//! Copies every value read from a protocol into another protocol, so that a message (or a
//! part of one) that generated code reads can also be kept as bytes in a known encoding.

use std::io;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier,
    TOutputProtocol, TSetIdentifier, TStructIdentifier, TType,
};

use super::Protocol;

/// A copy being made in a protocol, value by value, over as many reads as it takes, and its
/// bytes so far. In the wire's own protocol: the compact protocol leaves out what the binary
/// one needs (an empty map's types), so a copy in another protocol cannot always be made.
pub(crate) struct ProtocolCopy {
    bytes: SharedBytes,
    output: Box<dyn TOutputProtocol + Send>,
    /// A copy was started since the bytes were last cleared: until then they are empty, and
    /// clearing them costs no lock.
    started: bool,
}

/// The bytes of a [`ProtocolCopy`], which its protocol writes and its owner reads.
#[derive(Clone, Default)]
struct SharedBytes(Arc<Mutex<Vec<u8>>>);

impl io::Write for SharedBytes {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ProtocolCopy {
    pub(crate) fn new(protocol: Protocol) -> Self {
        let bytes = SharedBytes::default();
        ProtocolCopy {
            output: writer(protocol, bytes.clone()),
            bytes,
            started: false,
        }
    }

    /// Forgets the copy's bytes, keeping its protocol's state: for a copy that will not be
    /// used before the next [`restart`](Self::restart).
    pub(crate) fn clear(&mut self) {
        if std::mem::take(&mut self.started) {
            self.bytes.0.lock().clear();
        }
    }

    /// Starts a new copy, in `protocol`.
    pub(crate) fn restart(&mut self, protocol: Protocol) {
        self.bytes.0.lock().clear();
        self.output = writer(protocol, self.bytes.clone());
        self.started = true;
    }

    pub(crate) fn output(&mut self) -> &mut dyn TOutputProtocol {
        &mut *self.output
    }

    pub(crate) fn bytes(&self) -> MutexGuard<'_, Vec<u8>> {
        self.bytes.0.lock()
    }
}

/// Writes a copy into `bytes` in `protocol`.
pub(crate) fn copy_writer(
    protocol: Protocol,
    bytes: &mut Vec<u8>,
) -> Box<dyn TOutputProtocol + '_> {
    match protocol {
        Protocol::Binary => Box::new(TBinaryOutputProtocol::new(bytes, true)),
        Protocol::Compact => Box::new(TCompactOutputProtocol::new(bytes)),
    }
}

/// Reads a copy made in `protocol`.
pub(crate) fn copy_reader(protocol: Protocol, bytes: &[u8]) -> Box<dyn TInputProtocol + '_> {
    match protocol {
        Protocol::Binary => Box::new(TBinaryInputProtocol::new(bytes, true)),
        Protocol::Compact => Box::new(TCompactInputProtocol::new(bytes)),
    }
}

fn writer(protocol: Protocol, bytes: SharedBytes) -> Box<dyn TOutputProtocol + Send> {
    match protocol {
        Protocol::Binary => Box::new(TBinaryOutputProtocol::new(bytes, true)),
        Protocol::Compact => Box::new(TCompactOutputProtocol::new(bytes)),
    }
}

/// Reads from `input` and writes each value read to `copy`.
///
/// `TInputProtocol::skip` on a `Mirrored` reads a whole value through it, which copies the
/// value whatever its type.
pub(crate) struct Mirrored<'a> {
    pub(crate) input: &'a mut dyn TInputProtocol,
    pub(crate) copy: &'a mut dyn TOutputProtocol,
}

macro_rules! mirror_values {
    ($($read:ident -> $ty:ty => $write:ident;)*) => {
        $(fn $read(&mut self) -> thrift::Result<$ty> {
            let value = self.input.$read()?;
            self.copy.$write(value)?;
            Ok(value)
        })*
    };
}

macro_rules! mirror_ends {
    ($($read:ident => $write:ident;)*) => {
        $(fn $read(&mut self) -> thrift::Result<()> {
            self.input.$read()?;
            self.copy.$write()
        })*
    };
}

macro_rules! mirror_idents {
    ($($read:ident -> $ty:ty => $write:ident;)*) => {
        $(fn $read(&mut self) -> thrift::Result<$ty> {
            let ident = self.input.$read()?;
            self.copy.$write(&ident)?;
            Ok(ident)
        })*
    };
}

impl TInputProtocol for Mirrored<'_> {
    fn read_struct_begin(&mut self) -> thrift::Result<Option<TStructIdentifier>> {
        let ident = self.input.read_struct_begin()?;
        let named = ident.clone().unwrap_or_else(|| TStructIdentifier::new(""));
        self.copy.write_struct_begin(&named)?;
        Ok(ident)
    }

    fn read_field_begin(&mut self) -> thrift::Result<TFieldIdentifier> {
        let field = self.input.read_field_begin()?;
        if field.field_type == TType::Stop {
            self.copy.write_field_stop()?;
        } else {
            self.copy.write_field_begin(&field)?;
        }
        Ok(field)
    }

    fn read_bytes(&mut self) -> thrift::Result<Vec<u8>> {
        let value = self.input.read_bytes()?;
        self.copy.write_bytes(&value)?;
        Ok(value)
    }

    fn read_string(&mut self) -> thrift::Result<String> {
        let value = self.input.read_string()?;
        self.copy.write_string(&value)?;
        Ok(value)
    }

    fn read_uuid(&mut self) -> thrift::Result<uuid::Uuid> {
        let value = self.input.read_uuid()?;
        self.copy.write_uuid(&value)?;
        Ok(value)
    }

    mirror_values! {
        read_bool -> bool => write_bool;
        read_i8 -> i8 => write_i8;
        read_i16 -> i16 => write_i16;
        read_i32 -> i32 => write_i32;
        read_i64 -> i64 => write_i64;
        read_double -> f64 => write_double;
        read_byte -> u8 => write_byte;
    }

    mirror_idents! {
        read_message_begin -> TMessageIdentifier => write_message_begin;
        read_list_begin -> TListIdentifier => write_list_begin;
        read_set_begin -> TSetIdentifier => write_set_begin;
        read_map_begin -> TMapIdentifier => write_map_begin;
    }

    mirror_ends! {
        read_message_end => write_message_end;
        read_struct_end => write_struct_end;
        read_field_end => write_field_end;
        read_list_end => write_list_end;
        read_set_end => write_set_end;
        read_map_end => write_map_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thrift::protocol::{TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol};

    #[test]
    fn skipping_through_a_mirror_reencodes_the_value() {
        // struct { 1: i32 = 7, 2: list<string> = ["a", "bc"], 3: map<i8, bool> = {1: true} }
        let write = |o: &mut dyn TOutputProtocol| -> thrift::Result<()> {
            o.write_struct_begin(&TStructIdentifier::new("S"))?;
            o.write_field_begin(&TFieldIdentifier::new("a", TType::I32, 1))?;
            o.write_i32(7)?;
            o.write_field_end()?;
            o.write_field_begin(&TFieldIdentifier::new("b", TType::List, 2))?;
            o.write_list_begin(&TListIdentifier::new(TType::String, 2))?;
            o.write_string("a")?;
            o.write_string("bc")?;
            o.write_list_end()?;
            o.write_field_end()?;
            o.write_field_begin(&TFieldIdentifier::new("c", TType::Map, 3))?;
            o.write_map_begin(&TMapIdentifier::new(TType::I08, TType::Bool, 1))?;
            o.write_i8(1)?;
            o.write_bool(true)?;
            o.write_map_end()?;
            o.write_field_end()?;
            o.write_field_stop()?;
            o.write_struct_end()
        };
        let mut wire = Vec::new();
        write(&mut TCompactOutputProtocol::new(&mut wire)).unwrap();
        let mut binary = TBinaryOutputProtocol::new(Vec::new(), true);
        write(&mut binary).unwrap();

        let mut input = TCompactInputProtocol::new(&wire[..]);
        let mut copy = TBinaryOutputProtocol::new(Vec::new(), true);
        Mirrored {
            input: &mut input,
            copy: &mut copy,
        }
        .skip(TType::Struct)
        .unwrap();
        assert_eq!(copy.transport, binary.transport);
    }
}
