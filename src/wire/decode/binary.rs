//! Apache Thrift's strict binary protocol, read with every declared size checked.

use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier,
    TMessageType, TSetIdentifier, TStructIdentifier, TType,
};
use thrift::ProtocolErrorKind;

use super::{
    backed_count, check_length, error, skip_value, utf8, value_type, Depth, Source,
    DEFAULT_MAX_ELEMENTS,
};

/// Reads the strict binary protocol from a [`Source`].
#[derive(Debug)]
pub(crate) struct BinaryIn<S> {
    src: S,
    max_elements: usize,
    depth: Depth,
}

impl<S: Source> BinaryIn<S> {
    /// A reader of `src` that lets structs and containers nest `max_depth` deep.
    pub(crate) fn new(src: S, max_depth: usize) -> Self {
        BinaryIn {
            src,
            depth: Depth::new(max_depth),
            max_elements: DEFAULT_MAX_ELEMENTS,
        }
    }

    /// Refuses containers of more than `max` elements, whatever the message could hold.
    pub(crate) fn max_elements(mut self, max: usize) -> Self {
        self.max_elements = max;
        self
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> thrift::Result<[u8; N]> {
        self.src.read_array::<N>().map_err(thrift::Error::from)
    }

    fn read_len(&mut self) -> thrift::Result<usize> {
        let len = self.read_i32()?;
        check_length(len.into(), self.src.remaining())
    }

    fn read_type(&mut self) -> thrift::Result<TType> {
        let b = self.read_byte()?;
        ttype(b)
    }

    fn read_element_type(&mut self) -> thrift::Result<TType> {
        self.read_type().and_then(value_type)
    }

    /// The element type and count that start a list or a set, the count backed by the bytes
    /// left; enters one level of nesting.
    fn read_list_set_begin(&mut self) -> thrift::Result<(TType, i32)> {
        let element_type = self.read_element_type()?;
        let size = self.read_i32()?;
        let size = backed_count(
            &mut self.src,
            size.into(),
            min_size(element_type),
            self.max_elements,
        )?;
        self.depth.enter()?;
        Ok((element_type, size))
    }
}

/// The type with binary protocol code `b`.
fn ttype(b: u8) -> thrift::Result<TType> {
    Ok(match b {
        0x00 => TType::Stop,
        0x01 => TType::Void,
        0x02 => TType::Bool,
        0x03 => TType::I08,
        0x04 => TType::Double,
        0x06 => TType::I16,
        0x08 => TType::I32,
        0x0A => TType::I64,
        0x0B => TType::String,
        0x0C => TType::Struct,
        0x0D => TType::Map,
        0x0E => TType::Set,
        0x0F => TType::List,
        0x10 => TType::Uuid,
        other => {
            return Err(error(
                ProtocolErrorKind::InvalidData,
                format!("unknown binary protocol type {other:#04x}"),
            ))
        }
    })
}

/// The fewest bytes a value of `ttype` takes in the binary protocol.
fn min_size(ttype: TType) -> usize {
    match ttype {
        TType::I16 => 2,
        TType::I32 | TType::String | TType::Map | TType::Set | TType::List => 4,
        TType::I64 | TType::Double => 8,
        TType::Uuid => 16,
        TType::Stop | TType::Void | TType::Bool | TType::I08 | TType::Struct | TType::Utf7 => 1,
    }
}

impl<S: Source> TInputProtocol for BinaryIn<S> {
    fn read_message_begin(&mut self) -> thrift::Result<TMessageIdentifier> {
        self.depth = Depth::new(self.depth.max);
        self.src.begin_message()?;
        let head = self.array::<4>()?;
        if head[0] & 0x80 == 0 {
            return Err(error(
                ProtocolErrorKind::BadVersion,
                "message has no version header; only the strict binary protocol is accepted",
            ));
        }
        if head[..2] != [0x80, 0x01] {
            return Err(error(
                ProtocolErrorKind::BadVersion,
                format!(
                    "unsupported binary protocol version {:#06x}",
                    u16::from_be_bytes([head[0], head[1]])
                ),
            ));
        }
        let message_type = TMessageType::try_from(head[3])?;
        let name = self.read_string()?;
        let sequence_number = self.read_i32()?;
        Ok(TMessageIdentifier::new(name, message_type, sequence_number))
    }

    fn read_message_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_struct_begin(&mut self) -> thrift::Result<Option<TStructIdentifier>> {
        self.depth.enter()?;
        Ok(None)
    }

    fn read_struct_end(&mut self) -> thrift::Result<()> {
        self.depth.leave();
        Ok(())
    }

    fn read_field_begin(&mut self) -> thrift::Result<TFieldIdentifier> {
        let field_type = self.read_type()?;
        if field_type == TType::Stop {
            return Ok(TFieldIdentifier::new::<Option<String>, String, i16>(
                None,
                TType::Stop,
                0,
            ));
        }
        let field_type = value_type(field_type)?;
        let id = self.read_i16()?;
        Ok(TFieldIdentifier {
            name: None,
            field_type,
            id: Some(id),
        })
    }

    fn read_field_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_bool(&mut self) -> thrift::Result<bool> {
        // Any non-zero byte is true, as in Apache Thrift's Rust and C++ readers.
        Ok(self.read_byte()? != 0)
    }

    fn read_bytes(&mut self) -> thrift::Result<Vec<u8>> {
        let len = self.read_len()?;
        Ok(self.src.read_vec(len)?)
    }

    fn read_i8(&mut self) -> thrift::Result<i8> {
        Ok(self.read_byte()? as i8)
    }

    fn read_i16(&mut self) -> thrift::Result<i16> {
        self.array().map(i16::from_be_bytes)
    }

    fn read_i32(&mut self) -> thrift::Result<i32> {
        self.array().map(i32::from_be_bytes)
    }

    fn read_i64(&mut self) -> thrift::Result<i64> {
        self.array().map(i64::from_be_bytes)
    }

    fn read_double(&mut self) -> thrift::Result<f64> {
        self.array().map(f64::from_be_bytes)
    }

    fn read_uuid(&mut self) -> thrift::Result<uuid::Uuid> {
        self.array().map(uuid::Uuid::from_bytes)
    }

    fn read_string(&mut self) -> thrift::Result<String> {
        let bytes = self.read_bytes()?;
        utf8(bytes)
    }

    fn read_list_begin(&mut self) -> thrift::Result<TListIdentifier> {
        let (element_type, size) = self.read_list_set_begin()?;
        Ok(TListIdentifier::new(element_type, size))
    }

    fn read_list_end(&mut self) -> thrift::Result<()> {
        self.depth.leave();
        Ok(())
    }

    fn read_set_begin(&mut self) -> thrift::Result<TSetIdentifier> {
        let (element_type, size) = self.read_list_set_begin()?;
        Ok(TSetIdentifier::new(element_type, size))
    }

    fn read_set_end(&mut self) -> thrift::Result<()> {
        self.depth.leave();
        Ok(())
    }

    fn read_map_begin(&mut self) -> thrift::Result<TMapIdentifier> {
        let key_type = self.read_element_type()?;
        let value_type = self.read_element_type()?;
        let size = self.read_i32()?;
        let pair = min_size(key_type) + min_size(value_type);
        let size = backed_count(&mut self.src, size.into(), pair, self.max_elements)?;
        self.depth.enter()?;
        Ok(TMapIdentifier::new(key_type, value_type, size))
    }

    fn read_map_end(&mut self) -> thrift::Result<()> {
        self.depth.leave();
        Ok(())
    }

    fn skip_till_depth(&mut self, field_type: TType, _depth: i8) -> thrift::Result<()> {
        skip_value(self, field_type)
    }

    fn skip_binary(&mut self) -> thrift::Result<()> {
        let len = self.read_len()?;
        Ok(self.src.discard(len)?)
    }

    #[inline]
    fn read_byte(&mut self) -> thrift::Result<u8> {
        self.src.read_byte().map_err(thrift::Error::from)
    }

    fn min_serialized_size(&self, field_type: TType) -> usize {
        min_size(field_type)
    }
}
