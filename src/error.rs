//! The crate's error type.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;

use thrift::{
    ApplicationError, ApplicationErrorKind, ProtocolError, ProtocolErrorKind, TransportError,
};

/// The phase of a call whose time ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Timeout {
    /// The endpoint did not accept a connection, or with TLS finish its handshake, within
    /// `connect_timeout`.
    Connect,
    /// Every pooled connection stayed busy for `pool_timeout`.
    PoolWait,
    /// The response did not arrive completely within `read_timeout` of sending the request.
    Response,
    /// The call's total deadline passed (multi-endpoint clients).
    Deadline,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Timeout::Connect => "connect",
            Timeout::PoolWait => "pool wait",
            Timeout::Response => "response",
            Timeout::Deadline => "call deadline",
        })
    }
}

/// Everything a call can fail with.
///
/// The service's own IDL exceptions arrive as [`Error::User`], still typed: use
/// [`Error::user_exception`] to get them back.
///
/// Its `Display` text includes the cause (the operating system's error of a failed connect,
/// the text of a service exception), so `source()` returns nothing: a report that walks the
/// chain of causes, as `anyhow`'s does, prints each cause once.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Connecting to the endpoint failed (refused, unreachable, address did not resolve).
    Connect {
        /// The endpoint, as given to the client.
        endpoint: Arc<str>,
        /// What the operating system reported.
        source: io::Error,
    },
    /// The connection was made but its TLS handshake failed: the server's certificate did not
    /// verify (unknown CA, wrong name, expired), the server refused the client's certificate
    /// or asked for one it was not given, or the peer does not speak TLS. The request did not
    /// run (under TLS 1.3 a refused client certificate is told only once the request was
    /// written). Counted as a failed connect, for the breaker and in
    /// [`ClientStats::connect_errors`](crate::ClientStats::connect_errors).
    Handshake {
        /// The endpoint, as given to the client.
        endpoint: Arc<str>,
        /// Why: rustls' error (reach it with `source.get_ref()` and a downcast to
        /// `rustls::Error`), or what the operating system or the peer did.
        source: io::Error,
    },
    /// A phase of the call ran out of time.
    Timeout(Timeout),
    /// The endpoint's circuit breaker is open; no request was sent.
    CircuitOpen {
        /// The endpoint, as given to the client.
        endpoint: Arc<str>,
    },
    /// The connection failed while the call was under way (reset, closed, I/O error).
    Transport(TransportError),
    /// The bytes on the connection did not decode as the expected message.
    Protocol(ProtocolError),
    /// The server answered with a `TApplicationException` (unknown method, internal error ...).
    Application(ApplicationError),
    /// The server was overloaded and shed the request: it answered without running it,
    /// because the request waited longer for a worker than the server allows
    /// ([`ServerConfig::max_queue_wait`](crate::ServerConfig::max_queue_wait)). The request did
    /// not run, so it can be retried elsewhere even if it must not run twice; the breaker does
    /// not count it, since the server answered.
    Overloaded(ApplicationError),
    /// The service raised one of its IDL exceptions; it is the generated type, boxed.
    User(Box<dyn StdError + Send + Sync>),
    /// The request was larger than `max_message_size`; nothing was sent.
    RequestTooLarge {
        /// How large the request was when it was refused (at least this large).
        bytes: usize,
        /// The configured `max_message_size`.
        limit: usize,
    },
    /// The client was closed.
    Closed,
    /// A multi-endpoint call ran out of endpoints or retries; each attempt is listed.
    Unavailable(Box<Unavailable>),
}

/// The attempts of a multi-endpoint call that found no endpoint able to answer.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Unavailable {
    /// Every attempt in order: the endpoint and what went wrong there.
    pub attempts: Vec<(Arc<str>, Error)>,
    /// The last attempt is the endpoint the deadline kept from being tried at all.
    pub(crate) last_untried: bool,
}

impl Error {
    /// The service's IDL exception of type `T`, if that is what this error is.
    ///
    /// ```
    /// # use blocking_thrift::Error;
    /// # #[derive(Debug)] struct InvalidOperation;
    /// # impl std::fmt::Display for InvalidOperation {
    /// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("bad") }
    /// # }
    /// # impl std::error::Error for InvalidOperation {}
    /// let err = Error::User(Box::new(InvalidOperation));
    /// assert!(err.user_exception::<InvalidOperation>().is_some());
    /// ```
    pub fn user_exception<T: StdError + 'static>(&self) -> Option<&T> {
        match self {
            Error::User(e) => e.downcast_ref::<T>(),
            _ => None,
        }
    }

    /// Whether this is a timeout, of any phase; [`timeout`](Self::timeout) tells which.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// The phase whose time ran out, if this is a timeout.
    pub fn timeout(&self) -> Option<Timeout> {
        match self {
            Error::Timeout(phase) => Some(*phase),
            _ => None,
        }
    }

    /// Whether connecting failed: refused, unreachable, not resolved, or out of time
    /// ([`Timeout::Connect`]).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Timeout(Timeout::Connect)
        )
    }

    /// Whether the TLS handshake failed ([`Error::Handshake`]); one that ran out of time is
    /// [`Timeout::Connect`].
    pub fn is_handshake(&self) -> bool {
        matches!(self, Error::Handshake { .. })
    }

    /// Whether an open circuit breaker turned the call away without trying the endpoint.
    pub fn is_circuit_open(&self) -> bool {
        matches!(self, Error::CircuitOpen { .. })
    }

    /// Whether the service answered with one of its own IDL exceptions
    /// ([`user_exception`](Self::user_exception) gets it back typed).
    pub fn is_service_exception(&self) -> bool {
        matches!(self, Error::User(_))
    }

    /// Whether the request certainly did not run: it never reached the server (the connection
    /// could not be made or its TLS handshake failed, no pooled connection was free, the breaker rejected the call, the
    /// request was refused for its size, or the client was closed), or it was a request the
    /// server shed ([`Error::Overloaded`]); for [`Error::Unavailable`], that no attempt may
    /// have run. Such a call can be retried even if it must not run twice.
    /// Always the opposite of [`may_have_run`](Self::may_have_run).
    pub fn is_unsent(&self) -> bool {
        if let Error::Unavailable(_) = self {
            return !self.may_have_run();
        }
        matches!(
            self,
            Error::Connect { .. }
                | Error::Handshake { .. }
                | Error::Timeout(Timeout::Connect | Timeout::PoolWait)
                | Error::CircuitOpen { .. }
                | Error::RequestTooLarge { .. }
                | Error::Closed
                | Error::Overloaded(_)
        )
    }

    /// Whether the server shed the request for overload ([`Error::Overloaded`]).
    pub fn is_overloaded(&self) -> bool {
        matches!(self, Error::Overloaded(_))
    }

    /// Whether the call may have run on a server: anything but [`is_unsent`](Self::is_unsent),
    /// and for [`Error::Unavailable`], whether any attempt may have run. A response timeout,
    /// say, leaves it unknown whether the server did the work.
    pub fn may_have_run(&self) -> bool {
        match self {
            Error::Unavailable(u) => {
                let tried = u.attempts.len() - usize::from(u.last_untried);
                u.attempts[..tried]
                    .iter()
                    .any(|(_, err)| err.may_have_run())
            }
            // The deadline may have cut a response short: whether it ran is unknown.
            Error::Timeout(Timeout::Deadline) => true,
            err => !err.is_unsent(),
        }
    }

    /// The crate's error inside an error that a direct call's generated method returned, if
    /// that is what it carries (and not the service's own exception or the generated code's
    /// error), so that the predicates above apply without converting it.
    pub fn in_direct(err: &thrift::Error) -> Option<&Error> {
        match err {
            thrift::Error::User(e) => e.downcast_ref::<Error>(),
            _ => None,
        }
    }

    /// Turns an error coming out of a generated client back into this type.
    ///
    /// Errors raised by this crate inside a direct call travel through the generated code as
    /// `thrift::Error::User(Box<Error>)`; they are unwrapped. `timed_out` says whether the
    /// connection's response deadline expired, which decides how a transport error reads.
    pub(crate) fn from_thrift(err: thrift::Error, timed_out: bool) -> Error {
        match err {
            thrift::Error::Transport(_) if timed_out => Error::Timeout(Timeout::Response),
            thrift::Error::Transport(e) => Error::Transport(e),
            thrift::Error::Protocol(e) => Error::Protocol(e),
            // Raised by the generated code itself when the response is not the one it waits for.
            thrift::Error::Application(e) if raised_by_generated_code(&e) => {
                Error::Protocol(ProtocolError::new(
                    ProtocolErrorKind::InvalidData,
                    format!("response does not match the request: {}", e.message),
                ))
            }
            thrift::Error::Application(e) if is_shed(&e) => Error::Overloaded(e),
            thrift::Error::Application(e) => Error::Application(e),
            thrift::Error::User(e) => match e.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(theirs) => Error::User(theirs),
            },
        }
    }

    /// Whether the connection that produced this error may hold unread or unexpected bytes,
    /// so must not serve another call.
    pub(crate) fn poisons_connection(&self) -> bool {
        // A refused request left nothing on the wire, but the generated code stopped in the
        // middle of writing it, and a protocol's state (compact's field ids) may show it.
        matches!(
            self,
            Error::Transport(_)
                | Error::Protocol(_)
                | Error::Timeout(Timeout::Response)
                | Error::RequestTooLarge { .. }
        )
    }
}

/// Whether a `TApplicationException` is the generated client's own complaint that a response
/// is not the one it waits for (the `thrift` crate's `verify_expected_*` checks), rather than
/// one a server sent with the same kind.
fn raised_by_generated_code(e: &ApplicationError) -> bool {
    matches!(
        e.kind,
        ApplicationErrorKind::BadSequenceId
            | ApplicationErrorKind::WrongMethodName
            | ApplicationErrorKind::InvalidMessageType
    ) && e.message.starts_with("expected ")
        && e.message.contains(" got ")
}

/// Whether an error out of a generated client is a server's answer, a message read to its
/// end: a service exception, or a `TApplicationException` the server sent.
pub(crate) fn is_answer(err: &thrift::Error) -> bool {
    match err {
        thrift::Error::Application(e) => !raised_by_generated_code(e),
        thrift::Error::User(e) => !e.is::<Error>(),
        thrift::Error::Transport(_) | thrift::Error::Protocol(_) => false,
    }
}

/// Whether a `TApplicationException` is this crate's server shedding a request.
pub(crate) fn is_shed(e: &ApplicationError) -> bool {
    e.kind == ApplicationErrorKind::Unknown && e.message.starts_with(crate::wire::SHED_PREFIX)
}

/// The `TApplicationException` `input` holds next, if it is a server shedding the request.
pub(crate) fn read_shed(
    input: &mut dyn thrift::protocol::TInputProtocol,
) -> Option<ApplicationError> {
    let error = thrift::Error::read_application_error_from_in_protocol(input).ok()?;
    is_shed(&error).then_some(error)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { endpoint, source } => {
                write!(f, "connect to {endpoint} failed: {source}")
            }
            Error::Handshake { endpoint, source } => {
                write!(f, "TLS handshake with {endpoint} failed: {source}")?;
                if answered_without_tls(source) {
                    f.write_str(" (the server answered without TLS)")?;
                }
                Ok(())
            }
            Error::Timeout(phase) => write!(f, "{phase} timed out"),
            Error::CircuitOpen { endpoint } => write!(f, "circuit breaker for {endpoint} is open"),
            Error::Transport(e) => write!(f, "transport failed: {}", e.message),
            Error::Protocol(e) => write!(f, "protocol error: {}", e.message),
            Error::Application(e) => write!(f, "server raised {:?}: {}", e.kind, e.message),
            Error::Overloaded(e) => f.write_str(&e.message),
            Error::User(e) => write!(f, "service exception: {e}"),
            Error::RequestTooLarge { bytes, limit } => write!(
                f,
                "request of {bytes} bytes exceeds max_message_size ({limit} bytes); nothing was sent"
            ),
            Error::Closed => f.write_str("client is closed"),
            Error::Unavailable(u) => {
                write!(
                    f,
                    "service unavailable after {} attempt(s)",
                    u.attempts.len()
                )?;
                for (i, (endpoint, err)) in u.attempts.iter().enumerate() {
                    let sep = if i == 0 { ": " } else { "; " };
                    write!(f, "{sep}{endpoint}: {err}")?;
                }
                Ok(())
            }
        }
    }
}

/// Whether a handshake failed on an answer that is no TLS record at all.
fn answered_without_tls(source: &io::Error) -> bool {
    let tls = source
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    matches!(
        tls,
        Some(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
        ))
    )
}

/// Causes are part of the `Display` text, so no `source()`: see [`Error`].
impl StdError for Error {}

// Errors cross threads and go into `Box<dyn Error + Send + Sync>` and `anyhow::Error`.
const _: fn() = || {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Error>();
};

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                Error::Timeout(Timeout::Response)
            }
            _ => Error::from_thrift(err.into(), false),
        }
    }
}

impl From<thrift::Error> for Error {
    fn from(err: thrift::Error) -> Self {
        Error::from_thrift(err, false)
    }
}

impl From<Error> for thrift::Error {
    /// Carries the error through generated code unchanged; `Error::from` gets it back.
    fn from(err: Error) -> Self {
        match err {
            Error::User(e) => thrift::Error::User(e),
            ours => thrift::Error::User(Box::new(ours)),
        }
    }
}

/// The message a panic was raised with, if it was raised with one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_tell_the_kinds_apart() {
        let refused = || Error::Connect {
            endpoint: "a:1".into(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "refused"),
        };
        let open = || Error::CircuitOpen {
            endpoint: "a:1".into(),
        };
        let response = || Error::Timeout(Timeout::Response);
        assert!(refused().is_connect() && Error::Timeout(Timeout::Connect).is_connect());
        assert!(!response().is_connect() && !open().is_connect());
        assert_eq!(response().timeout(), Some(Timeout::Response));
        assert_eq!(refused().timeout(), None);
        assert!(open().is_circuit_open() && !refused().is_circuit_open());
        let handshake = || Error::Handshake {
            endpoint: "a:1".into(),
            source: io::Error::other("unknown CA"),
        };
        assert!(handshake().is_handshake() && !refused().is_handshake());
        assert!(!handshake().is_connect());
        assert!(Error::User(Box::new(io::Error::other("x"))).is_service_exception());
        assert!(!response().is_service_exception());
        for unsent in [
            refused(),
            handshake(),
            open(),
            Error::Timeout(Timeout::PoolWait),
            Error::Closed,
            Error::RequestTooLarge { bytes: 2, limit: 1 },
        ] {
            assert!(unsent.is_unsent() && !unsent.may_have_run(), "{unsent}");
        }
        assert!(response().may_have_run() && !response().is_unsent());
        let tried = |attempts| {
            Error::Unavailable(Box::new(Unavailable {
                attempts,
                last_untried: false,
            }))
        };
        let unsent = tried(vec![("a:1".into(), refused()), ("b:1".into(), open())]);
        assert!(unsent.is_unsent() && !unsent.may_have_run());
        let ran = tried(vec![("a:1".into(), refused()), ("b:1".into(), response())]);
        assert!(ran.may_have_run() && !ran.is_unsent());
        // Out of a direct call's generated method.
        let direct: thrift::Error = open().into();
        assert!(Error::in_direct(&direct).is_some_and(Error::is_circuit_open));
        let theirs = thrift::Error::User(Box::new(io::Error::other("service's own")));
        assert!(Error::in_direct(&theirs).is_none());
    }

    #[test]
    fn each_cause_is_printed_once() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused here");
        let err = Error::Connect {
            endpoint: "a:1".into(),
            source: refused,
        };
        assert_eq!(err.to_string(), "connect to a:1 failed: refused here");
        assert!(err.source().is_none());
        let err = Error::User(Box::new(io::Error::other("the service's own")));
        assert_eq!(err.to_string(), "service exception: the service's own");
        assert!(err.source().is_none());
    }

    #[test]
    fn error_stays_small() {
        assert!(
            std::mem::size_of::<Error>() <= 40,
            "{}",
            std::mem::size_of::<Error>()
        );
    }

    #[test]
    fn survives_a_trip_through_generated_code() {
        let err: thrift::Error = Error::Timeout(Timeout::PoolWait).into();
        assert!(matches!(
            Error::from(err),
            Error::Timeout(Timeout::PoolWait)
        ));
    }

    #[test]
    fn unavailable_lists_attempts() {
        let err = Error::Unavailable(Box::new(Unavailable {
            attempts: vec![
                ("a:1".into(), Error::Timeout(Timeout::Connect)),
                (
                    "b:2".into(),
                    Error::CircuitOpen {
                        endpoint: "b:2".into(),
                    },
                ),
            ],
            last_untried: false,
        }));
        assert_eq!(
            err.to_string(),
            "service unavailable after 2 attempt(s): a:1: connect timed out; b:2: circuit breaker for b:2 is open"
        );
    }
}
