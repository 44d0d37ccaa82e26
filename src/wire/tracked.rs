//! An input protocol that remembers whether the processor could decode a request.

use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier,
    TSetIdentifier, TStructIdentifier, TType,
};

/// Wraps the input protocol handed to the processor and records whether some read failed.
///
/// A generated processor answers a request it failed to decode with an error reply, which does
/// not show in its return value; on a buffered connection the server must know, because the next
/// request's start is lost with the unread rest of this one.
pub(crate) struct Tracked<P> {
    inner: P,
    failed: bool,
}

impl<P: TInputProtocol> Tracked<P> {
    pub(crate) fn new(inner: P) -> Self {
        Tracked {
            inner,
            failed: false,
        }
    }

    /// Whether some read failed, so the request was not decoded to its end.
    pub(crate) fn failed(&self) -> bool {
        self.failed
    }

    fn track<T>(&mut self, result: thrift::Result<T>) -> thrift::Result<T> {
        self.failed |= result.is_err();
        result
    }
}

macro_rules! delegate {
    ($($method:ident -> $ty:ty;)*) => {
        $(
            fn $method(&mut self) -> thrift::Result<$ty> {
                let result = self.inner.$method();
                self.track(result)
            }
        )*
    };
}

impl<P: TInputProtocol> TInputProtocol for Tracked<P> {
    delegate! {
        read_message_begin -> TMessageIdentifier;
        read_struct_begin -> Option<TStructIdentifier>;
        read_struct_end -> ();
        read_message_end -> ();
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
        skip_binary -> ();
        read_byte -> u8;
    }

    // The inner reader's own skip, with its nesting limit, not the trait's default.
    fn skip_till_depth(&mut self, field_type: TType, depth: i8) -> thrift::Result<()> {
        let result = self.inner.skip_till_depth(field_type, depth);
        self.track(result)
    }

    fn min_serialized_size(&self, field_type: TType) -> usize {
        self.inner.min_serialized_size(field_type)
    }
}
