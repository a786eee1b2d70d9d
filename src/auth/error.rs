//! [`TokenError`]: why no access token could be had.

use crate::error::BoxError;
use http::StatusCode;
use std::fmt;

/// A token could not be obtained. No variant ever holds the client secret or a token.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenError {
    /// The token endpoint could not be reached (connect, TLS, timeout, reading the body).
    Unreachable(BoxError),
    /// The token endpoint answered with a non-2xx status (redirects included: they are not followed).
    Rejected {
        /// The HTTP status.
        status: StatusCode,
        /// The OAuth `error` code (`invalid_client`, `invalid_grant`, ...), when the body had one.
        error: Option<String>,
        /// The OAuth `error_description`, when the body had one.
        description: Option<String>,
    },
    /// A 2xx answer that is not a usable token response.
    Malformed(String),
}

impl TokenError {
    /// The token endpoint's status, for [`Rejected`](Self::Rejected).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            TokenError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The OAuth `error` code, for [`Rejected`](Self::Rejected).
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            TokenError::Rejected { error, .. } => error.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Unreachable(e) => write!(f, "token endpoint unreachable: {e}"),
            TokenError::Rejected {
                status,
                error,
                description,
            } => {
                write!(f, "token endpoint answered {status}")?;
                if let Some(error) = error {
                    write!(f, ": {error}")?;
                }
                if let Some(description) = description {
                    write!(f, " ({description})")?;
                }
                Ok(())
            }
            TokenError::Malformed(reason) => write!(f, "malformed token response: {reason}"),
        }
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenError::Unreachable(e) => Some(&**e),
            _ => None,
        }
    }
}
