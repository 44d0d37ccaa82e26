//! Direct method calls: a handle that the generated service trait is implemented for.

use std::fmt;
use std::sync::Arc;

use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier,
    TMessageType, TOutputProtocol, TSetIdentifier, TStructIdentifier, TType,
};
use thrift::{ApplicationError, TThriftClient};

use super::call::{Answered, Call, Endpoint};
use super::ThriftClient;
use crate::error::Error;
use crate::handle::{
    check_answers, forward_reads, forward_writes, outside_call, thrift_client_on_protocols,
    Sequence,
};
use crate::wire::mirror::{copy_reader, Mirrored, ProtocolCopy};

/// Declares that [`Direct`] and [`MultiDirect`](crate::MultiDirect) handles speak a service,
/// so its generated methods can be called on them directly.
///
/// Pass the marker trait(s) that `thrift --gen rs` generated next to the service's client
/// trait (for a service `Calculator`, `TCalculatorSyncClientMarker`):
///
/// ```
/// # mod calculator { pub trait TCalculatorSyncClientMarker {} }
/// blocking_thrift::impl_direct!(calculator::TCalculatorSyncClientMarker);
/// // Now `client.direct().add(1, 2)` calls the generated `add` through the client.
/// ```
///
/// Without it, the compiler refuses `client.direct().add(1, 2)`: `Direct<...>` does not
/// satisfy `TCalculatorSyncClientMarker`.
///
/// Invoke it in the crate that holds the generated module. It implements the marker trait
/// for this crate's handle types, which the orphan rule allows only where the trait is
/// local: from another crate it fails with E0117. When the generated code is in an IDL crate
/// that a client and a server share, that crate invokes `impl_direct!` (and so depends on
/// this crate).
#[macro_export]
macro_rules! impl_direct {
    ($($marker:path),+ $(,)?) => {
        $(
            impl<C: ::std::marker::Send + 'static> $marker for $crate::Direct<C> {}
            impl<C: ::std::marker::Send + 'static> $marker for $crate::MultiDirect<C> {}
        )+
    };
}

/// A client handle on which the generated methods are called directly (gevent-thrift's
/// `wrap_client`), from [`ThriftClient::direct`].
///
/// Every call takes a pooled connection for its duration and goes through the breaker and the
/// timeouts, exactly as [`ThriftClient::call`] does. The handle is cheap: make one per thread,
/// or clone it.
///
/// A service exception comes back as the generated type inside `thrift::Error::User`, as the
/// generated code returns it; it counts as a breaker failure only when its type was declared
/// with [`ClientConfig::failure_on`](crate::ClientConfig::failure_on), as with
/// [`ThriftClient::call`].
pub struct Direct<C> {
    call: Protocols<C>,
}

impl<C> ThriftClient<C> {
    /// A handle on which the generated methods are called directly, gevent-thrift's
    /// `wrap_client`: `client.direct().add(1, 2)`. Each call still goes through the pool,
    /// the timeouts and the breaker.
    ///
    /// The generated code implements the service trait for any type that implements
    /// `TThriftClient` and the service's marker trait; declare the marker once with
    /// [`impl_direct!`](crate::impl_direct). Errors raised by this crate come out of the
    /// generated methods as `thrift::Error::User`; [`Error::from`](crate::Error::from) turns
    /// them back.
    pub fn direct(&self) -> Direct<C> {
        Direct::new(self.shared_endpoint().clone())
    }
}

impl<C> Direct<C> {
    fn new(endpoint: Arc<Endpoint<C>>) -> Self {
        let endpoint_protocol = endpoint.config().get_protocol();
        Direct {
            call: Protocols {
                endpoint,
                active: None,
                sequence: Sequence::default(),
                method: String::new(),
                oneway: false,
                exception: false,
                application_error: false,
                depth: 0,
                mirroring: false,
                mirror: ProtocolCopy::new(endpoint_protocol),
            },
        }
    }
}

impl<C> Clone for Direct<C> {
    fn clone(&self) -> Self {
        Direct::new(self.call.endpoint.clone())
    }
}

impl<C> fmt::Debug for Direct<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direct")
            .field("endpoint", self.call.endpoint.name())
            .finish()
    }
}

thrift_client_on_protocols!(Direct);

/// Both protocols of a [`Direct`] handle: they start a call when its request begins, pass
/// every operation to the pooled connection's generated client, and end the call when the
/// response has been read (or, for a oneway method, sent).
struct Protocols<C> {
    endpoint: Arc<Endpoint<C>>,
    active: Option<Call<C>>,
    sequence: Sequence,
    method: String,
    oneway: bool,
    /// The response carries a service exception.
    exception: bool,
    /// The response is a `TApplicationException`.
    application_error: bool,
    depth: u32,
    /// The service exception being read is copied into `mirror`, so that its type can be
    /// told against the types declared as failures; so is a `TApplicationException`, so that
    /// a server shedding the request can be told apart.
    mirroring: bool,
    mirror: ProtocolCopy,
}

impl<C: TThriftClient> Protocols<C> {
    fn begin(&mut self, ident: &TMessageIdentifier) -> thrift::Result<()> {
        self.abandon();
        // Nothing of the last call's response carries over (a oneway call reads none).
        self.exception = false;
        self.application_error = false;
        self.mirroring = false;
        self.depth = 0;
        self.mirror.clear();
        let call = self.endpoint.begin(None)?;
        self.method.clear();
        self.method.push_str(&ident.name);
        self.oneway = ident.message_type == TMessageType::OneWay;
        self.active = Some(call);
        Ok(())
    }

    fn write<T>(
        &mut self,
        op: impl FnOnce(&mut dyn TOutputProtocol) -> thrift::Result<T>,
    ) -> thrift::Result<T> {
        let Some(active) = &mut self.active else {
            return Err(outside_call());
        };
        op(active.client().o_prot_mut()).map_err(|e| self.fail(e))
    }

    fn read<T>(
        &mut self,
        op: impl FnOnce(&mut dyn TInputProtocol) -> thrift::Result<T>,
    ) -> thrift::Result<T> {
        let Some(active) = &mut self.active else {
            return Err(outside_call());
        };
        let input = active.client().i_prot_mut();
        let result = if self.mirroring {
            op(&mut Mirrored {
                input,
                copy: self.mirror.output(),
            })
        } else {
            op(input)
        };
        result.map_err(|e| self.fail(e))
    }

    /// Ends the call with an error; its connection is closed, since the message on it is cut
    /// short.
    fn fail(&mut self, err: thrift::Error) -> thrift::Error {
        let Some(mut call) = self.active.take() else {
            return err;
        };
        // The message on the connection is cut short.
        call.discard();
        match self.endpoint.end::<()>(call, Err(err), None) {
            Err(err) => err.into(),
            Ok(()) => unreachable!("an error stays an error"),
        }
    }

    /// Ends the call normally: the message is complete on the wire. Returns the server's
    /// reply if it shed the request.
    fn complete(&mut self) -> Option<ApplicationError> {
        let call = self.active.take()?;
        if self.application_error {
            let protocol = self.endpoint.config().get_protocol();
            let shed = crate::error::read_shed(&mut *copy_reader(protocol, &self.mirror.bytes()));
            let answered = if shed.is_some() {
                Answered::Overloaded
            } else {
                Answered::ApplicationError
            };
            self.endpoint.end_answered(call, answered);
            return shed;
        }
        if self.exception {
            let copy = self.mirror.bytes();
            let declared_failure =
                !copy.is_empty() && self.endpoint.config().encodes_declared_failure(&copy);
            drop(copy);
            self.endpoint
                .end_answered(call, Answered::Exception { declared_failure });
        } else {
            let _ = self.endpoint.end(call, Ok(()), None);
        }
        None
    }

    fn check_response(&mut self, ident: &TMessageIdentifier) -> thrift::Result<()> {
        if let Err(err) = check_answers(ident, &self.method, self.sequence.0) {
            return Err(self.fail(err));
        }
        self.exception = false;
        self.application_error = ident.message_type == TMessageType::Exception;
        self.depth = 0;
        self.mirroring = self.application_error;
        if self.mirroring {
            self.mirror.restart(self.endpoint.config().get_protocol());
        } else {
            // Made anew only when a copy starts: most responses need none.
            self.mirror.clear();
        }
        Ok(())
    }
}

impl<C> Protocols<C> {
    /// Drops a call that never finished (its caller went away mid-call): the connection
    /// is closed and a probe's turn passes on.
    fn abandon(&mut self) {
        if let Some(call) = self.active.take() {
            self.endpoint.abandon(call);
        }
    }
}

impl<C> Drop for Protocols<C> {
    fn drop(&mut self) {
        self.abandon();
    }
}

impl<C: TThriftClient> TInputProtocol for Protocols<C> {
    fn read_message_begin(&mut self) -> thrift::Result<TMessageIdentifier> {
        let ident = self.read(|p| p.read_message_begin())?;
        self.check_response(&ident)?;
        Ok(ident)
    }

    fn read_message_end(&mut self) -> thrift::Result<()> {
        self.read(|p| p.read_message_end())?;
        let clean = match &mut self.active {
            Some(call) => call.connection().check_clean(),
            None => Ok(()),
        };
        if let Err(err) = clean {
            return Err(self.fail(err));
        }
        match self.complete() {
            // Reported as through `call`: the generated code fails with it in place of the
            // `TApplicationException` it has read.
            Some(shed) => Err(Error::Overloaded(shed).into()),
            None => Ok(()),
        }
    }

    fn read_struct_begin(&mut self) -> thrift::Result<Option<TStructIdentifier>> {
        let ident = self.read(|p| p.read_struct_begin())?;
        self.depth += 1;
        Ok(ident)
    }

    fn read_struct_end(&mut self) -> thrift::Result<()> {
        self.read(|p| p.read_struct_end())?;
        self.depth = self.depth.saturating_sub(1);
        if self.depth == 1 {
            self.mirroring = false;
        }
        Ok(())
    }

    fn read_field_begin(&mut self) -> thrift::Result<TFieldIdentifier> {
        let field = self.read(|p| p.read_field_begin())?;
        // In a result struct, field 0 is the return value and every other one an exception.
        if !self.application_error
            && self.depth == 1
            && field.field_type != TType::Stop
            && field.id.is_some_and(|id| id > 0)
        {
            self.exception = true;
            self.mirroring = self.endpoint.config().declares_failures();
            if self.mirroring {
                self.mirror.restart(self.endpoint.config().get_protocol());
            }
        }
        Ok(field)
    }

    forward_reads! {
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

impl<C: TThriftClient> TOutputProtocol for Protocols<C> {
    fn write_message_begin(&mut self, ident: &TMessageIdentifier) -> thrift::Result<()> {
        self.begin(ident)?;
        self.write(|p| p.write_message_begin(ident))
    }

    fn flush(&mut self) -> thrift::Result<()> {
        self.write(|p| p.flush())?;
        if self.oneway {
            self.complete();
        }
        Ok(())
    }

    fn write_field_stop(&mut self) -> thrift::Result<()> {
        self.write(|p| p.write_field_stop())
    }

    fn write_message_end(&mut self) -> thrift::Result<()> {
        self.write(|p| p.write_message_end())
    }

    fn write_struct_end(&mut self) -> thrift::Result<()> {
        self.write(|p| p.write_struct_end())
    }

    fn write_field_end(&mut self) -> thrift::Result<()> {
        self.write(|p| p.write_field_end())
    }

    fn write_list_end(&mut self) -> thrift::Result<()> {
        self.write(|p| p.write_list_end())
    }

    fn write_set_end(&mut self) -> thrift::Result<()> {
        self.write(|p| p.write_set_end())
    }

    fn write_map_end(&mut self) -> thrift::Result<()> {
        self.write(|p| p.write_map_end())
    }

    forward_writes! {
        write_struct_begin(ident: &TStructIdentifier);
        write_field_begin(ident: &TFieldIdentifier);
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
        write_set_begin(ident: &TSetIdentifier);
        write_map_begin(ident: &TMapIdentifier);
        write_byte(b: u8);
    }
}
