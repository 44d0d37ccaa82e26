//! Apache Thrift's compact protocol, read with every declared size checked.

use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier,
    TMessageType, TSetIdentifier, TStructIdentifier, TType,
};
use thrift::ProtocolErrorKind;

use super::{
    backed_count, check_length, error, skip_value, utf8, value_type, Depth, Source,
    DEFAULT_MAX_ELEMENTS,
};

const PROTOCOL_ID: u8 = 0x82;
const VERSION: u8 = 0x01;
const VERSION_MASK: u8 = 0x1F;

/// Reads the compact protocol from a [`Source`].
#[derive(Debug)]
pub(crate) struct CompactIn<S> {
    src: S,
    max_elements: usize,
    depth: Depth,
    /// Field ids are sent as deltas from the previous field of the same struct.
    last_field_id: i16,
    /// The last field id of each enclosing struct.
    outer_field_ids: Vec<i16>,
    /// A bool field carries its value in its header, read before `read_bool` asks for it.
    pending_bool: Option<bool>,
}

impl<S: Source> CompactIn<S> {
    /// A reader of `src` that lets structs and containers nest `max_depth` deep.
    pub(crate) fn new(src: S, max_depth: usize) -> Self {
        CompactIn {
            src,
            depth: Depth::new(max_depth),
            max_elements: DEFAULT_MAX_ELEMENTS,
            last_field_id: 0,
            outer_field_ids: Vec::new(),
            pending_bool: None,
        }
    }

    /// Refuses containers of more than `max` elements, whatever the message could hold.
    pub(crate) fn max_elements(mut self, max: usize) -> Self {
        self.max_elements = max;
        self
    }

    fn read_varint32(&mut self) -> thrift::Result<u32> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = self.read_byte()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(error(
            ProtocolErrorKind::InvalidData,
            "varint of a 32-bit value is longer than 5 bytes",
        ))
    }

    fn read_varint64(&mut self) -> thrift::Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.read_byte()?;
            value |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(error(
            ProtocolErrorKind::InvalidData,
            "varint of a 64-bit value is longer than 10 bytes",
        ))
    }

    fn read_len(&mut self) -> thrift::Result<usize> {
        // Lengths are written as an i32 cast to unsigned; above i32::MAX they were negative.
        let len = self.read_varint32()? as i32;
        check_length(len.into(), self.src.remaining())
    }

    fn read_list_set_begin(&mut self) -> thrift::Result<(TType, i32)> {
        let header = self.read_byte()?;
        let element_type = collection_type(header & 0x0F)?;
        let short_count = header >> 4;
        let count = if short_count == 15 {
            self.read_varint32()? as i32
        } else {
            i32::from(short_count)
        };
        let count = backed_count(
            &mut self.src,
            count.into(),
            min_size(element_type),
            self.max_elements,
        )?;
        self.depth.enter()?;
        Ok((element_type, count))
    }
}

fn zigzag32(n: u32) -> i32 {
    ((n >> 1) as i32) ^ (0i32.wrapping_sub((n & 1) as i32))
}

fn zigzag64(n: u64) -> i64 {
    ((n >> 1) as i64) ^ (0i64.wrapping_sub((n & 1) as i64))
}

/// The type with compact protocol code `b` in a field header.
fn ttype(b: u8) -> thrift::Result<TType> {
    Ok(match b {
        0x00 => TType::Stop,
        0x03 => TType::I08,
        0x04 => TType::I16,
        0x05 => TType::I32,
        0x06 => TType::I64,
        0x07 => TType::Double,
        0x08 => TType::String,
        0x09 => TType::List,
        0x0A => TType::Set,
        0x0B => TType::Map,
        0x0C => TType::Struct,
        0x0D => TType::Uuid,
        other => {
            return Err(error(
                ProtocolErrorKind::InvalidData,
                format!("unknown compact protocol type {other:#04x}"),
            ))
        }
    })
}

/// The element type with compact protocol code `b` in a container header.
fn collection_type(b: u8) -> thrift::Result<TType> {
    match b {
        // The specification said 2 and most libraries write 1; both are in use.
        0x01 | 0x02 => Ok(TType::Bool),
        other => ttype(other).and_then(value_type),
    }
}

/// The fewest bytes a value of `ttype` takes in the compact protocol.
fn min_size(ttype: TType) -> usize {
    match ttype {
        TType::Double => 8,
        TType::Uuid => 16,
        _ => 1,
    }
}

impl<S: Source> TInputProtocol for CompactIn<S> {
    fn read_message_begin(&mut self) -> thrift::Result<TMessageIdentifier> {
        self.depth = Depth::new(self.depth.max);
        self.last_field_id = 0;
        self.outer_field_ids.clear();
        self.pending_bool = None;
        self.src.begin_message()?;
        let id = self.read_byte()?;
        if id != PROTOCOL_ID {
            return Err(error(
                ProtocolErrorKind::BadVersion,
                format!("not a compact protocol message: first byte {id:#04x}"),
            ));
        }
        let type_and_version = self.read_byte()?;
        let version = type_and_version & VERSION_MASK;
        if version != VERSION {
            return Err(error(
                ProtocolErrorKind::BadVersion,
                format!("unsupported compact protocol version {version}"),
            ));
        }
        let message_type = TMessageType::try_from(type_and_version >> 5)?;
        // Written as an i32 cast to unsigned, without zigzag.
        let sequence_number = self.read_varint32()? as i32;
        let name = self.read_string()?;
        Ok(TMessageIdentifier::new(name, message_type, sequence_number))
    }

    fn read_message_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_struct_begin(&mut self) -> thrift::Result<Option<TStructIdentifier>> {
        self.depth.enter()?;
        self.outer_field_ids.push(self.last_field_id);
        self.last_field_id = 0;
        Ok(None)
    }

    fn read_struct_end(&mut self) -> thrift::Result<()> {
        self.depth.leave();
        self.last_field_id = self.outer_field_ids.pop().unwrap_or(0);
        Ok(())
    }

    fn read_field_begin(&mut self) -> thrift::Result<TFieldIdentifier> {
        let header = self.read_byte()?;
        let field_type = match header & 0x0F {
            0x01 => {
                self.pending_bool = Some(true);
                TType::Bool
            }
            0x02 => {
                self.pending_bool = Some(false);
                TType::Bool
            }
            code => ttype(code)?,
        };
        if field_type == TType::Stop {
            return Ok(
                TFieldIdentifier::new::<Option<String>, String, Option<i16>>(
                    None,
                    TType::Stop,
                    None,
                ),
            );
        }
        let delta = header >> 4;
        self.last_field_id = if delta == 0 {
            self.read_i16()?
        } else {
            self.last_field_id
                .checked_add(i16::from(delta))
                .ok_or_else(|| error(ProtocolErrorKind::InvalidData, "field id overflows i16"))?
        };
        Ok(TFieldIdentifier {
            name: None,
            field_type,
            id: Some(self.last_field_id),
        })
    }

    fn read_field_end(&mut self) -> thrift::Result<()> {
        Ok(())
    }

    fn read_bool(&mut self) -> thrift::Result<bool> {
        if let Some(b) = self.pending_bool.take() {
            return Ok(b);
        }
        // Inside containers: 1 is true, 2 (current) or 0 (older writers) false.
        match self.read_byte()? {
            0x01 => Ok(true),
            0x00 | 0x02 => Ok(false),
            other => Err(error(
                ProtocolErrorKind::InvalidData,
                format!("{other:#04x} is not a compact protocol bool"),
            )),
        }
    }

    fn read_bytes(&mut self) -> thrift::Result<Vec<u8>> {
        let len = self.read_len()?;
        Ok(self.src.read_vec(len)?)
    }

    fn read_i8(&mut self) -> thrift::Result<i8> {
        Ok(self.read_byte()? as i8)
    }

    fn read_i16(&mut self) -> thrift::Result<i16> {
        // Truncated like every Apache Thrift compact reader does.
        Ok(zigzag32(self.read_varint32()?) as i16)
    }

    fn read_i32(&mut self) -> thrift::Result<i32> {
        Ok(zigzag32(self.read_varint32()?))
    }

    fn read_i64(&mut self) -> thrift::Result<i64> {
        Ok(zigzag64(self.read_varint64()?))
    }

    fn read_double(&mut self) -> thrift::Result<f64> {
        let bytes = self.src.read_array::<8>()?;
        Ok(f64::from_le_bytes(bytes))
    }

    fn read_uuid(&mut self) -> thrift::Result<uuid::Uuid> {
        let bytes = self.src.read_array::<16>()?;
        Ok(uuid::Uuid::from_bytes(bytes))
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
        let size = self.read_varint32()? as i32;
        if size == 0 {
            // An empty map is one zero byte, without element types.
            self.depth.enter()?;
            return Ok(TMapIdentifier::new(None, None, 0));
        }
        if size < 0 {
            return Err(error(
                ProtocolErrorKind::NegativeSize,
                format!("negative container size {size}"),
            ));
        }
        let types = self.read_byte()?;
        let key_type = collection_type(types >> 4)?;
        let value_type = collection_type(types & 0x0F)?;
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
