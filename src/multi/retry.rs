//! Which failed attempts of a multi-endpoint call move on to the next endpoint.

use std::fmt;

use crate::client::config::ClientConfig;
use crate::error::{Error, Timeout};

/// A retried service exception, as listed among a direct call's attempts.
#[derive(Debug)]
pub(crate) struct RetriedException(pub(crate) String);

impl fmt::Display for RetriedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RetriedException {}

/// What a failed attempt means for the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The endpoint failed; another may not. `unsent`: the request never left.
    EndpointFailed { unsent: bool },
    /// The service raised an exception declared retryable.
    DeclaredRetryable,
    /// The call's deadline has passed.
    Deadline,
    /// An answer (or a closed client): it goes back to the caller as it is.
    Final,
}

pub(crate) fn verdict(config: &ClientConfig, err: &Error) -> Verdict {
    match err {
        Error::Timeout(Timeout::Deadline) => Verdict::Deadline,
        Error::Connect { .. }
        | Error::Handshake { .. }
        | Error::CircuitOpen { .. }
        | Error::Timeout(_)
        | Error::Overloaded(_) => Verdict::EndpointFailed {
            unsent: err.is_unsent(),
        },
        // Including a response that did not match its request.
        Error::Transport(_) | Error::Protocol(_) => Verdict::EndpointFailed { unsent: false },
        Error::User(e) if e.is::<RetriedException>() || config.is_declared_retryable(&**e) => {
            Verdict::DeclaredRetryable
        }
        _ => Verdict::Final,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thrift::ApplicationErrorKind;

    #[derive(Debug)]
    struct Busy;

    impl fmt::Display for Busy {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("busy")
        }
    }

    impl std::error::Error for Busy {}

    impl thrift::protocol::TSerializable for Busy {
        fn read_from_in_protocol(
            _: &mut dyn thrift::protocol::TInputProtocol,
        ) -> thrift::Result<Self> {
            Ok(Busy)
        }

        fn write_to_out_protocol(
            &self,
            _: &mut dyn thrift::protocol::TOutputProtocol,
        ) -> thrift::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn verdicts() {
        let config = ClientConfig::default().retry_on::<Busy>();
        let v = |err: Error| verdict(&config, &err);
        assert_eq!(
            v(Error::CircuitOpen {
                endpoint: "a:1".into()
            }),
            Verdict::EndpointFailed { unsent: true }
        );
        assert_eq!(
            v(Error::Timeout(Timeout::PoolWait)),
            Verdict::EndpointFailed { unsent: true }
        );
        assert_eq!(
            v(Error::Timeout(Timeout::Response)),
            Verdict::EndpointFailed { unsent: false }
        );
        assert_eq!(v(Error::Timeout(Timeout::Deadline)), Verdict::Deadline);
        assert_eq!(v(Error::User(Box::new(Busy))), Verdict::DeclaredRetryable);
        assert_eq!(
            v(Error::User(Box::new(std::io::Error::other("x")))),
            Verdict::Final
        );
        let app = |kind| Error::Application(thrift::ApplicationError::new(kind, "x"));
        assert_eq!(v(app(ApplicationErrorKind::InternalError)), Verdict::Final);
        assert_eq!(v(app(ApplicationErrorKind::UnknownMethod)), Verdict::Final);
        assert_eq!(v(Error::Closed), Verdict::Final);
    }
}
