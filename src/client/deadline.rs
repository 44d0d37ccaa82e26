//! How a call's optional deadline cuts its phases short.

use std::time::{Duration, Instant};

use crate::error::{Error, Timeout};

/// `timeout`, cut to what is left until `deadline`, if there is one.
pub(crate) fn within(timeout: Duration, deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(at) => timeout.min(at.saturating_duration_since(Instant::now())),
        None => timeout,
    }
}

/// A timeout that struck once `deadline` had passed is the deadline's doing.
pub(crate) fn past_deadline(err: Error, deadline: Option<Instant>) -> Error {
    match deadline {
        Some(at) if err.is_timeout() && Instant::now() >= at => Error::Timeout(Timeout::Deadline),
        _ => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_cuts_a_timeout_and_takes_the_blame_once_passed() {
        let second = Duration::from_secs(1);
        assert_eq!(within(second, None), second);
        let far = Instant::now() + Duration::from_secs(3600);
        assert_eq!(within(second, Some(far)), second);
        let near = within(second, Some(Instant::now() + Duration::from_millis(10)));
        assert!(near <= Duration::from_millis(10), "{near:?}");
        let passed = Some(Instant::now());
        assert_eq!(within(second, passed), Duration::ZERO);

        let response = || Error::Timeout(Timeout::Response);
        assert!(matches!(
            past_deadline(response(), passed),
            Error::Timeout(Timeout::Deadline)
        ));
        assert!(matches!(
            past_deadline(response(), Some(far)),
            Error::Timeout(Timeout::Response)
        ));
        assert!(matches!(
            past_deadline(Error::Closed, passed),
            Error::Closed
        ));
    }
}
