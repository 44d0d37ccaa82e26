//! The decoders against the `thrift` crate's writers and readers, and against hostile bytes.

use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier,
    TMessageType, TOutputProtocol, TSetIdentifier, TStructIdentifier, TType,
};
use thrift::ProtocolErrorKind;

use super::*;
use crate::wire::DEFAULT_MAX_DEPTH;

#[derive(Clone, Copy, Debug)]
enum Wire {
    Binary,
    Compact,
}

const WIRES: [Wire; 2] = [Wire::Binary, Wire::Compact];

fn encode(
    wire: Wire,
    write: impl FnOnce(&mut dyn TOutputProtocol) -> thrift::Result<()>,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    match wire {
        Wire::Binary => write(&mut TBinaryOutputProtocol::new(&mut bytes, true)),
        Wire::Compact => write(&mut TCompactOutputProtocol::new(&mut bytes)),
    }
    .unwrap();
    bytes
}

fn ours(wire: Wire, bytes: &[u8], max_depth: usize) -> Box<dyn TInputProtocol + '_> {
    match wire {
        Wire::Binary => Box::new(BinaryIn::new(bytes, max_depth)),
        Wire::Compact => Box::new(CompactIn::new(bytes, max_depth)),
    }
}

fn theirs(wire: Wire, bytes: &[u8]) -> Box<dyn TInputProtocol + '_> {
    match wire {
        Wire::Binary => Box::new(TBinaryInputProtocol::new(bytes, true)),
        Wire::Compact => Box::new(TCompactInputProtocol::new(bytes)),
    }
}

fn field(o: &mut dyn TOutputProtocol, ttype: TType, id: i16) -> thrift::Result<()> {
    o.write_field_begin(&TFieldIdentifier::new("f", ttype, id))
}

fn small_struct(o: &mut dyn TOutputProtocol, n: i32, bools: &[bool]) -> thrift::Result<()> {
    o.write_struct_begin(&TStructIdentifier::new("Small"))?;
    field(o, TType::I32, 1)?;
    o.write_i32(n)?;
    o.write_field_end()?;
    field(o, TType::List, 2)?;
    o.write_list_begin(&TListIdentifier::new(TType::Bool, bools.len() as i32))?;
    for &b in bools {
        o.write_bool(b)?;
    }
    o.write_list_end()?;
    o.write_field_end()?;
    field(o, TType::Bool, 3)?;
    o.write_bool(n % 2 == 0)?;
    o.write_field_end()?;
    o.write_field_stop()?;
    o.write_struct_end()
}

/// A call whose arguments hold every type, nested containers of structs, field id jumps of
/// more than 15 and backwards, and the extreme values of each integer type.
fn everything(o: &mut dyn TOutputProtocol) -> thrift::Result<()> {
    o.write_message_begin(&TMessageIdentifier::new(
        "everything",
        TMessageType::Call,
        -7,
    ))?;
    o.write_struct_begin(&TStructIdentifier::new("args"))?;
    field(o, TType::Bool, 1)?;
    o.write_bool(true)?;
    field(o, TType::Bool, 2)?;
    o.write_bool(false)?;
    field(o, TType::I08, 3)?;
    o.write_i8(i8::MIN)?;
    field(o, TType::I16, 4)?;
    o.write_i16(i16::MIN)?;
    field(o, TType::I32, 5)?;
    o.write_i32(i32::MAX)?;
    field(o, TType::I64, 6)?;
    o.write_i64(i64::MIN)?;
    field(o, TType::I64, 7)?;
    o.write_i64(i64::MAX)?;
    field(o, TType::Double, 8)?;
    o.write_double(-1.5e300)?;
    field(o, TType::Double, 9)?;
    o.write_double(f64::NAN)?;
    field(o, TType::String, 10)?;
    o.write_string("")?;
    field(o, TType::String, 11)?;
    o.write_string("héllo, wörld")?;
    field(o, TType::String, 12)?;
    o.write_bytes(&[0, 0xFF, 0xC3, 0x28])?;
    field(o, TType::Uuid, 13)?;
    o.write_uuid(&uuid::Uuid::from_u128(
        0x0123_4567_89AB_CDEF_0011_2233_4455_6677,
    ))?;
    // A jump of more than 15, then backwards, then the extremes of the id itself.
    field(o, TType::I32, 40)?;
    o.write_i32(-1)?;
    field(o, TType::I32, 20)?;
    o.write_i32(0)?;
    // (The thrift crate's compact writer overflows on a delta past the range of i16.)
    field(o, TType::I16, -3)?;
    o.write_i16(-3)?;
    field(o, TType::I16, 100)?;
    o.write_i16(100)?;
    field(o, TType::I16, i16::MAX)?;
    o.write_i16(i16::MAX)?;
    // list<Small>, each holding a list<bool> and a bool field.
    field(o, TType::List, 30)?;
    o.write_list_begin(&TListIdentifier::new(TType::Struct, 3))?;
    small_struct(o, 1, &[true, false, true])?;
    small_struct(o, -2, &[])?;
    small_struct(o, i32::MIN, &[false; 20])?;
    o.write_list_end()?;
    field(o, TType::Set, 31)?;
    o.write_set_begin(&TSetIdentifier::new(TType::String, 2))?;
    o.write_string("a")?;
    o.write_string("bb")?;
    o.write_set_end()?;
    // map<i32, map<string, bool>>
    field(o, TType::Map, 32)?;
    o.write_map_begin(&TMapIdentifier::new(TType::I32, TType::Map, 2))?;
    for k in [1, -1] {
        o.write_i32(k)?;
        o.write_map_begin(&TMapIdentifier::new(TType::String, TType::Bool, 2))?;
        o.write_string("yes")?;
        o.write_bool(true)?;
        o.write_string("no")?;
        o.write_bool(false)?;
        o.write_map_end()?;
    }
    o.write_map_end()?;
    field(o, TType::Map, 33)?;
    o.write_map_begin(&TMapIdentifier::new(TType::I16, TType::Double, 0))?;
    o.write_map_end()?;
    field(o, TType::List, 34)?;
    o.write_list_begin(&TListIdentifier::new(TType::I64, 0))?;
    o.write_list_end()?;
    field(o, TType::Map, 35)?;
    o.write_map_begin(&TMapIdentifier::new(TType::Bool, TType::Uuid, 1))?;
    o.write_bool(true)?;
    o.write_uuid(&uuid::Uuid::nil())?;
    o.write_map_end()?;
    field(o, TType::List, 36)?;
    o.write_list_begin(&TListIdentifier::new(TType::List, 2))?;
    for n in [0, 16] {
        o.write_list_begin(&TListIdentifier::new(TType::Double, n))?;
        for i in 0..n {
            o.write_double(f64::from(i) / 3.0)?;
        }
        o.write_list_end()?;
    }
    o.write_list_end()?;
    field(o, TType::Struct, 37)?;
    small_struct(o, 5, &[true])?;
    o.write_field_stop()?;
    o.write_struct_end()?;
    o.write_message_end()?;
    o.flush()
}

/// Reads a whole message without knowing its schema, noting everything read.
fn dump(i: &mut dyn TInputProtocol) -> thrift::Result<Vec<String>> {
    let mut out = Vec::new();
    let message = i.read_message_begin()?;
    out.push(format!("{message:?}"));
    value(i, TType::Struct, &mut out)?;
    i.read_message_end()?;
    Ok(out)
}

fn value(i: &mut dyn TInputProtocol, ttype: TType, out: &mut Vec<String>) -> thrift::Result<()> {
    let noted = match ttype {
        TType::Bool => format!("{}", i.read_bool()?),
        TType::I08 => format!("{}", i.read_i8()?),
        TType::I16 => format!("{}", i.read_i16()?),
        TType::I32 => format!("{}", i.read_i32()?),
        TType::I64 => format!("{}", i.read_i64()?),
        TType::Double => format!("{:#x}", i.read_double()?.to_bits()),
        TType::String => format!("{:?}", i.read_bytes()?),
        TType::Uuid => format!("{}", i.read_uuid()?),
        TType::Struct => {
            i.read_struct_begin()?;
            loop {
                let field = i.read_field_begin()?;
                out.push(format!("{field:?}"));
                if field.field_type == TType::Stop {
                    break;
                }
                value(i, field.field_type, out)?;
                i.read_field_end()?;
            }
            i.read_struct_end()?;
            "end".into()
        }
        TType::List => {
            let list = i.read_list_begin()?;
            out.push(format!("{list:?}"));
            for _ in 0..list.size {
                value(i, list.element_type, out)?;
            }
            i.read_list_end()?;
            "end".into()
        }
        TType::Set => {
            let set = i.read_set_begin()?;
            out.push(format!("{set:?}"));
            for _ in 0..set.size {
                value(i, set.element_type, out)?;
            }
            i.read_set_end()?;
            "end".into()
        }
        TType::Map => {
            let map = i.read_map_begin()?;
            out.push(format!("{map:?}"));
            for _ in 0..map.size {
                value(i, map.key_type.unwrap(), out)?;
                value(i, map.value_type.unwrap(), out)?;
            }
            i.read_map_end()?;
            "end".into()
        }
        other => panic!("no values of type {other}"),
    };
    out.push(noted);
    Ok(())
}

fn kind(err: thrift::Error) -> ProtocolErrorKind {
    match err {
        thrift::Error::Protocol(e) => e.kind,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn every_type_reads_as_the_thrift_crate_reads_it() {
    for wire in WIRES {
        let bytes = encode(wire, everything);
        let expected = dump(&mut *theirs(wire, &bytes)).unwrap();
        let got = dump(&mut *ours(wire, &bytes, DEFAULT_MAX_DEPTH)).unwrap();
        assert_eq!(got, expected, "{wire:?}");
        assert!(got.contains(&"-9223372036854775808".to_string()));
        assert!(got.contains(&format!("{:?}", "héllo, wörld".as_bytes())));
    }
}

#[test]
fn skipping_reads_exactly_one_value() {
    for wire in WIRES {
        let mut bytes = encode(wire, everything);
        let rest = bytes.len();
        bytes.extend(encode(wire, |o| {
            o.write_message_begin(&TMessageIdentifier::new("next", TMessageType::Reply, 1))
        }));
        let mut input = ours(wire, &bytes, DEFAULT_MAX_DEPTH);
        input.read_message_begin().unwrap();
        input.skip(TType::Struct).unwrap();
        let next = input.read_message_begin().unwrap();
        assert_eq!(next.name, "next", "{wire:?} after {rest} bytes");
    }
}

#[test]
fn strings_and_bytes_are_checked() {
    for wire in WIRES {
        let bytes = encode(wire, |o| o.write_bytes(&[0xC3, 0x28]));
        let err = ours(wire, &bytes, 8).read_string().unwrap_err();
        assert_eq!(kind(err), ProtocolErrorKind::InvalidData, "{wire:?}");
        assert_eq!(ours(wire, &bytes, 8).read_bytes().unwrap(), [0xC3, 0x28]);
        // One byte short of what the length says.
        let cut = &bytes[..bytes.len() - 1];
        assert_eq!(
            kind(ours(wire, cut, 8).read_bytes().unwrap_err()),
            ProtocolErrorKind::SizeLimit
        );
    }
}

/// `(bytes, read, expected)`: hostile input for the binary reader.
#[test]
fn hostile_binary_input_is_refused() {
    type Read = fn(&mut dyn TInputProtocol) -> thrift::Result<()>;
    let message: Read = |i| i.read_message_begin().map(drop);
    let string: Read = |i| i.read_string().map(drop);
    let list: Read = |i| i.read_list_begin().map(drop);
    let set: Read = |i| i.read_set_begin().map(drop);
    let map: Read = |i| i.read_map_begin().map(drop);
    let fields: Read = |i| i.read_field_begin().map(drop);
    let skip_struct: Read = |i| i.skip(TType::Struct);
    let cases: &[(&[u8], Read, ProtocolErrorKind)] = &[
        // A message name claiming 2 GiB.
        (
            &[0x80, 0x01, 0x00, 0x01, 0x7F, 0xFF, 0xFF, 0xFF],
            message,
            ProtocolErrorKind::SizeLimit,
        ),
        (
            &[0x80, 0x01, 0x00, 0x01, 0xFF, 0xFF, 0xFF, 0xFF],
            message,
            ProtocolErrorKind::NegativeSize,
        ),
        // The old unversioned header: a name length first.
        (
            &[0x00, 0x00, 0x00, 0x01, b'x', 0x01, 0, 0, 0, 1],
            message,
            ProtocolErrorKind::BadVersion,
        ),
        (
            &[0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 1],
            message,
            ProtocolErrorKind::BadVersion,
        ),
        (
            &[0x80, 0x01, 0x00, 0x09, 0, 0, 0, 0, 0, 0, 0, 1],
            message,
            ProtocolErrorKind::InvalidData,
        ),
        (
            &[0x00, 0x00, 0x00, 0x05, b'a'],
            string,
            ProtocolErrorKind::SizeLimit,
        ),
        (
            &[0x80, 0x00, 0x00, 0x00],
            string,
            ProtocolErrorKind::NegativeSize,
        ),
        // 100,000,000 structs, and other counts no message of this size can hold.
        (
            &[0x0C, 0x05, 0xF5, 0xE1, 0x00],
            list,
            ProtocolErrorKind::SizeLimit,
        ),
        (
            &[0x08, 0x00, 0x00, 0x00, 0x02, 0, 0, 0, 0],
            list,
            ProtocolErrorKind::SizeLimit,
        ),
        (
            &[0x0C, 0xFF, 0xFF, 0xFF, 0xFF],
            list,
            ProtocolErrorKind::NegativeSize,
        ),
        (
            &[0x10, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0],
            set,
            ProtocolErrorKind::SizeLimit,
        ),
        (
            &[0x0A, 0x0B, 0x7F, 0xFF, 0xFF, 0xFF],
            map,
            ProtocolErrorKind::SizeLimit,
        ),
        (
            &[0x0A, 0x0B, 0x80, 0x00, 0x00, 0x00],
            map,
            ProtocolErrorKind::NegativeSize,
        ),
        // Element types that are not value types, or no types at all.
        (
            &[0x00, 0x00, 0x00, 0x00, 0x01, 0x00],
            list,
            ProtocolErrorKind::InvalidData,
        ),
        (
            &[0x01, 0x00, 0x00, 0x00, 0x00],
            set,
            ProtocolErrorKind::InvalidData,
        ),
        (
            &[0x11, 0x00, 0x00, 0x00, 0x00],
            list,
            ProtocolErrorKind::InvalidData,
        ),
        (
            &[0x08, 0x00, 0x00, 0x00, 0x00, 0x00],
            map,
            ProtocolErrorKind::InvalidData,
        ),
        (&[0x01, 0x00, 0x01], fields, ProtocolErrorKind::InvalidData),
        (&[0x07, 0x00, 0x01], fields, ProtocolErrorKind::InvalidData),
        (
            &[0x01, 0x00, 0x01, 0x00],
            skip_struct,
            ProtocolErrorKind::InvalidData,
        ),
    ];
    for (i, (bytes, read, expected)) in cases.iter().enumerate() {
        let err = read(&mut BinaryIn::new(*bytes, 8)).unwrap_err();
        assert_eq!(kind(err), *expected, "case {i}: {bytes:02x?}");
    }
}

#[test]
fn hostile_compact_input_is_refused() {
    type Read = fn(&mut dyn TInputProtocol) -> thrift::Result<()>;
    let message: Read = |i| i.read_message_begin().map(drop);
    let string: Read = |i| i.read_string().map(drop);
    let list: Read = |i| i.read_list_begin().map(drop);
    let map: Read = |i| i.read_map_begin().map(drop);
    let i32_: Read = |i| i.read_i32().map(drop);
    let i64_: Read = |i| i.read_i64().map(drop);
    let bool_: Read = |i| i.read_bool().map(drop);
    let fields: Read = |i| {
        i.read_struct_begin()?;
        loop {
            let field = i.read_field_begin()?;
            if field.field_type == TType::Stop {
                return Ok(());
            }
            i.skip(field.field_type)?;
        }
    };
    let cases: &[(&[u8], Read, ProtocolErrorKind)] = &[
        // A list header claiming 100,000,000 i64s.
        (
            &[0xF6, 0x80, 0xC2, 0xD7, 0x2F],
            list,
            ProtocolErrorKind::SizeLimit,
        ),
        (
            &[0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
            list,
            ProtocolErrorKind::NegativeSize,
        ),
        (&[0x2D, 0x00], list, ProtocolErrorKind::SizeLimit),
        (&[0x10], list, ProtocolErrorKind::InvalidData),
        (&[0x1E], list, ProtocolErrorKind::InvalidData),
        (
            &[0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
            map,
            ProtocolErrorKind::NegativeSize,
        ),
        (&[0x01, 0x05], map, ProtocolErrorKind::InvalidData),
        (
            &[0x80, 0x80, 0x80, 0x80, 0x04, 0x55],
            map,
            ProtocolErrorKind::SizeLimit,
        ),
        (
            &[0x80, 0x80, 0x80, 0x80, 0x04, b'a'],
            string,
            ProtocolErrorKind::SizeLimit,
        ),
        (
            &[0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
            string,
            ProtocolErrorKind::NegativeSize,
        ),
        // Over-long varints.
        (
            &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            i32_,
            ProtocolErrorKind::InvalidData,
        ),
        (
            &[
                0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
            ],
            i64_,
            ProtocolErrorKind::InvalidData,
        ),
        (&[0x03], bool_, ProtocolErrorKind::InvalidData),
        (&[0x81, 0x21], message, ProtocolErrorKind::BadVersion),
        (
            &[0x82, 0x22, 0x00, 0x00],
            message,
            ProtocolErrorKind::BadVersion,
        ),
        (
            &[0x82, 0xE1, 0x00, 0x00],
            message,
            ProtocolErrorKind::InvalidData,
        ),
        // Field 32767, then one more.
        (
            &[0x05, 0xFE, 0xFF, 0x03, 0x00, 0x15, 0x00, 0x00],
            fields,
            ProtocolErrorKind::InvalidData,
        ),
        (&[0x0E, 0x00], fields, ProtocolErrorKind::InvalidData),
    ];
    for (i, (bytes, read, expected)) in cases.iter().enumerate() {
        let err = read(&mut CompactIn::new(*bytes, 8)).unwrap_err();
        assert_eq!(kind(err), *expected, "case {i}: {bytes:02x?}");
    }
}

#[test]
fn nesting_deeper_than_the_limit_is_refused() {
    fn nested(o: &mut dyn TOutputProtocol, structs: usize) -> thrift::Result<()> {
        o.write_message_begin(&TMessageIdentifier::new("deep", TMessageType::Call, 1))?;
        for _ in 1..structs {
            o.write_struct_begin(&TStructIdentifier::new("S"))?;
            field(o, TType::List, 1)?;
            o.write_list_begin(&TListIdentifier::new(TType::Struct, 1))?;
        }
        o.write_struct_begin(&TStructIdentifier::new("S"))?;
        o.write_field_stop()?;
        o.write_struct_end()?;
        for _ in 1..structs {
            o.write_list_end()?;
            o.write_field_stop()?;
            o.write_struct_end()?;
        }
        o.write_message_end()
    }
    for wire in WIRES {
        // Ten structs in nine lists nest 19 deep.
        let bytes = encode(wire, |o| nested(o, 10));
        assert!(dump(&mut *ours(wire, &bytes, 19)).is_ok());
        let err = dump(&mut *ours(wire, &bytes, 18)).unwrap_err();
        assert_eq!(kind(err), ProtocolErrorKind::DepthLimit, "{wire:?}");
        let mut input = ours(wire, &bytes, 18);
        input.read_message_begin().unwrap();
        assert_eq!(
            kind(input.skip(TType::Struct).unwrap_err()),
            ProtocolErrorKind::DepthLimit
        );
        // A new message starts from the top again.
        let mut input = ours(wire, &bytes, 19);
        assert!(dump(&mut *input).is_ok());
    }
}

#[test]
fn a_reader_serves_one_message_after_another() {
    for wire in WIRES {
        let mut bytes = encode(wire, everything);
        bytes.extend(encode(wire, everything));
        let mut input = ours(wire, &bytes, DEFAULT_MAX_DEPTH);
        let first = dump(&mut *input).unwrap();
        assert_eq!(dump(&mut *input).unwrap(), first);
    }
}

#[test]
fn truncated_messages_fail_with_end_of_file() {
    for wire in WIRES {
        let bytes = encode(wire, everything);
        for len in 0..bytes.len() {
            match dump(&mut *ours(wire, &bytes[..len], DEFAULT_MAX_DEPTH)) {
                Ok(_) => panic!("{wire:?}: {len} bytes decoded"),
                Err(thrift::Error::Transport(e)) => {
                    assert_eq!(e.kind, thrift::TransportErrorKind::EndOfFile)
                }
                Err(thrift::Error::Protocol(e)) => {
                    assert_eq!(e.kind, ProtocolErrorKind::SizeLimit, "{wire:?} {len}: {e}")
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    }
}
