//! An input protocol that remembers how far the processor read a request.

use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier,
    TSetIdentifier, TStructIdentifier, TType,
};

/// Wraps the input protocol handed to the processor and records what it did with the request.
///
/// A generated processor answers a call to an unknown method without reading its arguments, and
/// answers a request it failed to decode with an error reply. Neither shows in its return value,
/// yet on a buffered connection the server must know both: the unread arguments have to be
/// skipped before the next request, and after a decoding error the next request's start is lost.
pub(super) struct Tracked<P> {
    inner: P,
    began: bool,
    /// How many structs are open; the arguments are the outermost one.
    depth: usize,
    /// Whether the arguments struct was read to its end.
    arguments_read: bool,
    failed: bool,
}

impl<P: TInputProtocol> Tracked<P> {
    pub(super) fn new(inner: P) -> Self {
        Tracked {
            inner,
            began: false,
            depth: 0,
            arguments_read: false,
            failed: false,
        }
    }

    /// Whether some read failed, so the request was not decoded to its end.
    pub(super) fn failed(&self) -> bool {
        self.failed
    }

    /// Reads the arguments of a request whose header the processor read but whose arguments it
    /// left, so the next request starts where the protocol stands. Does nothing otherwise.
    ///
    /// Generated processors never call `read_message_end` (a no-op in the binary and compact
    /// protocols), so the end of the arguments struct is what marks a request as read.
    pub(super) fn skip_unread_arguments(&mut self) -> thrift::Result<()> {
        if self.began && !self.arguments_read && self.depth == 0 && !self.failed {
            self.skip(TType::Struct)?;
            self.read_message_end()?;
        }
        Ok(())
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
    fn read_message_begin(&mut self) -> thrift::Result<TMessageIdentifier> {
        self.began = true;
        let result = self.inner.read_message_begin();
        self.track(result)
    }

    fn read_struct_begin(&mut self) -> thrift::Result<Option<TStructIdentifier>> {
        self.depth += 1;
        let result = self.inner.read_struct_begin();
        self.track(result)
    }

    fn read_struct_end(&mut self) -> thrift::Result<()> {
        self.depth = self.depth.saturating_sub(1);
        self.arguments_read |= self.began && self.depth == 0;
        let result = self.inner.read_struct_end();
        self.track(result)
    }

    delegate! {
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

    fn min_serialized_size(&self, field_type: TType) -> usize {
        self.inner.min_serialized_size(field_type)
    }
}
