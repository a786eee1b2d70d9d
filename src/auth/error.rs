//! [`TokenError`]: why no access token could be had.

use crate::error::BoxError;
use http::StatusCode;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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
        /// How long the endpoint asked to be left alone (its `Retry-After`, as a `429` or `503` carries), if it
        /// said: the failure is remembered at least that long (up to
        /// [`retry_after_cap`](crate::auth::AuthLayerBuilder::retry_after_cap)).
        retry_after: Option<Duration>,
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

    /// Whether asking again later may succeed: the endpoint was unreachable, answered `408`, `429` or a `5xx`,
    /// or sent a malformed token. `false` when it rejected the client itself (`invalid_client`,
    /// `unauthorized_client`, any other `4xx`, a redirect): that needs a change of configuration, not a retry.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Unreachable(_) | TokenError::Malformed(_) => true,
            TokenError::Rejected { status, .. } => {
                status.is_server_error()
                    || matches!(
                        *status,
                        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
                    )
            }
        }
    }

    /// A copy of a fetch's failure for one of the callers that waited on it; an unreachable endpoint's cause
    /// stays reachable through [`source`](std::error::Error::source).
    pub(crate) fn shared(error: &Arc<TokenError>) -> TokenError {
        match &**error {
            TokenError::Unreachable(_) => TokenError::Unreachable(Box::new(Cause(error.clone()))),
            TokenError::Rejected {
                status,
                error,
                description,
                retry_after,
            } => TokenError::Rejected {
                status: *status,
                error: error.clone(),
                description: description.clone(),
                retry_after: *retry_after,
            },
            TokenError::Malformed(reason) => TokenError::Malformed(reason.clone()),
        }
    }

    /// How long the token endpoint asked to be left alone (`Retry-After`, or its millisecond and
    /// rate-limit-reset forms; see the [retry policy](crate::retry#policy)), for [`Rejected`](Self::Rejected).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TokenError::Rejected { retry_after, .. } => *retry_after,
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
                retry_after,
            } => {
                write!(f, "token endpoint answered {status}")?;
                if let Some(error) = error {
                    write!(f, ": {error}")?;
                }
                if let Some(description) = description {
                    write!(f, " ({description})")?;
                }
                if let Some(wait) = retry_after {
                    write!(f, "; retry after {} s", wait.as_secs_f64().ceil())?;
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

/// The cause of an unreachable endpoint, shared by every caller that waited on the failed fetch.
#[derive(Debug)]
struct Cause(Arc<TokenError>);

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            TokenError::Unreachable(cause) => cause.fmt(f),
            other => other.fmt(f),
        }
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.0 {
            TokenError::Unreachable(cause) => Some(&**cause),
            _ => None,
        }
    }
}
