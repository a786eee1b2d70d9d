//! [`RetryError`]: the inner service's last error, with how many attempts were made and why retrying stopped.

use super::GaveUp;
use crate::error::BoxError;
use std::fmt;

/// The error of a [`Retry`](super::Retry) service: the inner service's error from the last attempt, with the
/// number of attempts made and, when the error was retryable, why no further attempt was made.
///
/// Every inner error is wrapped, so the attempt count is always there; the original is
/// [`source`](std::error::Error::source) (downcast it to the inner service's error type).
#[derive(Debug)]
pub struct RetryError {
    attempts: u32,
    gave_up: Option<GaveUp>,
    source: BoxError,
}

impl RetryError {
    pub(crate) fn new(attempts: u32, gave_up: Option<GaveUp>, source: BoxError) -> Self {
        RetryError {
            attempts,
            gave_up,
            source,
        }
    }

    /// How many attempts were made (at least 1).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why retrying stopped; `None` when the error was not retryable.
    pub fn gave_up(&self) -> Option<GaveUp> {
        self.gave_up
    }

    /// The inner service's error from the last attempt.
    pub fn inner(&self) -> &BoxError {
        &self.source
    }

    /// Unwraps the inner service's error.
    pub fn into_inner(self) -> BoxError {
        self.source
    }
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.attempts == 1 { "" } else { "s" };
        write!(f, "request failed after {} attempt{s}", self.attempts)?;
        if let Some(reason) = self.gave_up {
            write!(f, " ({reason})")?;
        }
        write!(f, ": {}", self.source)
    }
}

impl std::error::Error for RetryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
