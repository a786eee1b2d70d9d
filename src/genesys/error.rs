//! [`GenesysError`]: what went wrong with a Genesys Cloud call, with the facts support will ask for.

use super::model::ErrorBody;
use crate::auth::error::TokenError;
use crate::error::BoxError;
use crate::retry::error::RetryError;
use http::StatusCode;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A failed Genesys Cloud call. Opaque, with predicates, as `reqwest::Error` is: ask what it is
/// ([`is_rate_limited`](Self::is_rate_limited), [`is_auth`](Self::is_auth), ...) and read the facts
/// ([`status`](Self::status), [`code`](Self::code), [`correlation_id`](Self::correlation_id),
/// [`attempts`](Self::attempts)). It never contains the client secret or a token.
pub struct GenesysError {
    kind: Kind,
    attempts: u32,
    correlation_id: Option<String>,
    retry_after: Option<Duration>,
}

enum Kind {
    /// The API answered with a non-2xx status.
    Status {
        status: StatusCode,
        code: Option<String>,
        message: Option<String>,
    },
    /// No token: the token endpoint failed.
    Token(BoxError, String),
    /// An attempt took longer than the per-attempt timeout.
    Timeout(BoxError, String),
    /// Connect, TLS, reset, or reading the body failed.
    Transport(BoxError, String),
    /// A 2xx body that is not the expected JSON.
    Decode(String),
    /// Pagination stopped: a repeated page or cursor, or too many pages.
    Pagination(String),
    /// The request could not be built: an invalid path, a body that would not serialise.
    Request(String),
}

impl GenesysError {
    pub(crate) fn from_status(
        status: StatusCode,
        body: &[u8],
        correlation_id: Option<String>,
        attempts: u32,
        retry_after: Option<Duration>,
    ) -> Self {
        let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
        let clip = |s: String| s.chars().take(300).collect::<String>();
        GenesysError {
            kind: Kind::Status {
                status,
                code: parsed.code.map(clip),
                message: parsed.message.map(clip),
            },
            attempts,
            correlation_id: correlation_id.or(parsed.context_id.map(clip)),
            retry_after,
        }
    }

    pub(crate) fn decode(reason: impl Into<String>, correlation_id: Option<String>) -> Self {
        GenesysError {
            kind: Kind::Decode(reason.into()),
            attempts: 1,
            correlation_id,
            retry_after: None,
        }
    }

    pub(crate) fn request(reason: impl Into<String>) -> Self {
        GenesysError {
            kind: Kind::Request(reason.into()),
            attempts: 0,
            correlation_id: None,
            retry_after: None,
        }
    }

    pub(crate) fn pagination(reason: impl Into<String>) -> Self {
        GenesysError {
            kind: Kind::Pagination(reason.into()),
            attempts: 1,
            correlation_id: None,
            retry_after: None,
        }
    }

    /// Classifies an error from the service stack by walking its source chain: a [`RetryError`] gives the
    /// attempt count, a [`TokenError`] makes it an auth failure, tower's `Elapsed` a timeout.
    pub(crate) fn from_stack(error: BoxError) -> Self {
        let mut attempts = 1;
        let mut token = false;
        let mut retry_after = None;
        let mut timeout = false;
        // The message starts below the stack's own wrappers (coalescing, retry), at the error that says what
        // happened, and goes down to the root cause.
        let mut meaningful: Option<&(dyn StdError + 'static)> = None;
        let mut current: Option<&(dyn StdError + 'static)> = Some(&*error);
        while let Some(e) = current {
            if let Some(retry) = e.downcast_ref::<RetryError>() {
                attempts = retry.attempts();
            } else if !e.is::<crate::error::SharedError>() && meaningful.is_none() {
                meaningful = Some(e);
            }
            if let Some(failure) = e.downcast_ref::<TokenError>() {
                token = true;
                retry_after = retry_after.or(failure.retry_after());
            }
            timeout |= e.is::<tower::timeout::error::Elapsed>();
            current = e.source();
        }
        let detail = describe(meaningful.unwrap_or(&*error));
        let kind = if token {
            Kind::Token(error, detail)
        } else if timeout {
            Kind::Timeout(error, detail)
        } else {
            Kind::Transport(error, detail)
        };
        GenesysError {
            kind,
            attempts,
            correlation_id: None,
            retry_after,
        }
    }

    /// The HTTP status, when the API answered.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.kind {
            Kind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The Genesys error `code` (`too.many.requests.retry.after`, `bad.credentials`, `not.found`, ...).
    pub fn code(&self) -> Option<&str> {
        match &self.kind {
            Kind::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The Genesys error `message`.
    pub fn message(&self) -> Option<&str> {
        match &self.kind {
            Kind::Status { message, .. } => message.as_deref(),
            _ => None,
        }
    }

    /// The `ININ-Correlation-Id` header (or the body's `contextId`): quote it to Genesys support.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// Attempts made by the retry layer (1 when there was no retry, 0 when the request was never sent).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long the API (or its token endpoint) asked to be left alone: the `Retry-After` of its last answer,
    /// as a `429` carries (or its millisecond and rate-limit-reset forms; see the
    /// [retry policy](crate::retry#policy)), when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the same call may succeed later, unchanged: the API answered a status of a failure that passes
    /// (`408`, `429`, `500`, `502`, `503`, `504`, or a gateway's in front of it: the statuses the
    /// [retry policy](crate::retry#policy) retries), an attempt timed out, the connection failed, or the token
    /// endpoint failed in a way that passes ([`TokenError::is_transient`]). For a job queue deciding between
    /// trying again (after [`retry_after`](Self::retry_after), when given) and giving up. `false` for what will
    /// not change by itself: a `400` (a Data Action's own error), `401`, `403`, `404`, `409`, a rejected client,
    /// an answer that did not parse, a request that could not be built.
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            Kind::Status { status, .. } => crate::retry::is_transient(*status),
            Kind::Timeout(..) | Kind::Transport(..) => true,
            Kind::Token(error, _) => {
                let mut current: Option<&(dyn StdError + 'static)> = Some(&**error);
                while let Some(e) = current {
                    if let Some(failure) = e.downcast_ref::<TokenError>() {
                        return failure.is_transient();
                    }
                    current = e.source();
                }
                false
            }
            Kind::Decode(_) | Kind::Pagination(_) | Kind::Request(_) => false,
        }
    }

    /// `429 Too Many Requests`, after the retries the policy allowed.
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(StatusCode::TOO_MANY_REQUESTS)
    }

    /// Authentication or authorisation: the token endpoint failed, or the API answered 401 or 403.
    pub fn is_auth(&self) -> bool {
        matches!(self.kind, Kind::Token(..))
            || matches!(
                self.status(),
                Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
            )
    }

    /// `404 Not Found`.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// `409 Conflict`: for [`update_action`](super::GenesysClient::update_action), the action changed since
    /// the version the update named; read it again and reapply.
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(StatusCode::CONFLICT)
    }

    /// A `5xx` from the API.
    pub fn is_server_error(&self) -> bool {
        self.status().is_some_and(|s| s.is_server_error())
    }

    /// An attempt exceeded the per-attempt timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout(..))
    }

    /// The connection failed (connect, TLS, reset, body).
    pub fn is_transport(&self) -> bool {
        matches!(self.kind, Kind::Transport(..))
    }

    /// A 2xx body that was not the expected JSON.
    pub fn is_decode(&self) -> bool {
        matches!(self.kind, Kind::Decode(_))
    }

    /// Pagination stopped on a repeated page or cursor, or past the page limit.
    pub fn is_pagination(&self) -> bool {
        matches!(self.kind, Kind::Pagination(_))
    }

    /// The request was not sent: its path was not a plain API path (it must start with `/` and hold no scheme,
    /// host, fragment or `..`), or its body would not serialise.
    pub fn is_request(&self) -> bool {
        matches!(self.kind, Kind::Request(_))
    }
}

impl fmt::Display for GenesysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Status {
                status,
                code,
                message,
            } => {
                write!(f, "genesys api answered {status}")?;
                if let Some(code) = code {
                    write!(f, " {code}")?;
                }
                if let Some(message) = message {
                    write!(f, ": {message}")?;
                }
            }
            Kind::Token(_, detail) => write!(f, "genesys authentication failed: {detail}")?,
            Kind::Timeout(_, detail) => write!(f, "genesys api timed out: {detail}")?,
            Kind::Transport(_, detail) => write!(f, "genesys api unreachable: {detail}")?,
            Kind::Decode(reason) => write!(f, "unexpected genesys api response: {reason}")?,
            Kind::Pagination(reason) => write!(f, "pagination stopped: {reason}")?,
            Kind::Request(reason) => write!(f, "invalid genesys request: {reason}")?,
        }
        if let Some(id) = &self.correlation_id {
            write!(f, " (correlation id {id})")?;
        }
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        Ok(())
    }
}

impl fmt::Debug for GenesysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("GenesysError");
        match &self.kind {
            Kind::Status {
                status,
                code,
                message,
            } => d
                .field("status", status)
                .field("code", code)
                .field("message", message),
            Kind::Token(e, _) => d.field("token", e),
            Kind::Timeout(e, _) => d.field("timeout", e),
            Kind::Transport(e, _) => d.field("transport", e),
            Kind::Decode(reason) => d.field("decode", reason),
            Kind::Pagination(reason) => d.field("pagination", reason),
            Kind::Request(reason) => d.field("request", reason),
        };
        d.field("correlation_id", &self.correlation_id)
            .field("attempts", &self.attempts)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl StdError for GenesysError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Kind::Token(e, _) | Kind::Timeout(e, _) | Kind::Transport(e, _) => Some(&**e),
            _ => None,
        }
    }
}

/// An error and its causes on one line, each cause added unless the text already says it.
fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let line = e.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_carry_code_message_and_correlation() {
        let body = br#"{"message":"Rate limit exceeded the maximum. Retry the request in [1] seconds","code":"too.many.requests.retry.after","status":429,"contextId":"ctx-1","details":[],"errors":[]}"#;
        let error = GenesysError::from_status(
            StatusCode::TOO_MANY_REQUESTS,
            body,
            Some("corr-9".into()),
            4,
            Some(Duration::from_secs(1)),
        );
        assert!(error.is_rate_limited() && !error.is_auth());
        assert_eq!(error.code(), Some("too.many.requests.retry.after"));
        assert_eq!(error.correlation_id(), Some("corr-9"));
        assert_eq!(error.attempts(), 4);
        assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
        let text = error.to_string();
        assert!(
            text.contains("429") && text.contains("corr-9") && text.contains("4 attempts"),
            "{text}"
        );
        // No header: the body's contextId; no JSON: just the status.
        let error = GenesysError::from_status(
            StatusCode::NOT_FOUND,
            br#"{"contextId":"ctx-2"}"#,
            None,
            1,
            None,
        );
        assert!(error.is_not_found());
        assert_eq!(error.correlation_id(), Some("ctx-2"));
        let error = GenesysError::from_status(StatusCode::BAD_GATEWAY, b"<html>", None, 1, None);
        assert!(error.is_server_error() && error.code().is_none());
    }

    #[test]
    fn stack_errors_are_classified_through_the_chain() {
        let token: BoxError = Box::new(TokenError::Malformed("missing access_token".into()));
        let wrapped: BoxError = Box::new(RetryError::new(1, None, token));
        let error = GenesysError::from_stack(wrapped);
        assert!(error.is_auth());
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        let wrapped: BoxError = Box::new(RetryError::new(3, None, elapsed));
        let error = GenesysError::from_stack(wrapped);
        assert!(error.is_timeout());
        assert_eq!(error.attempts(), 3);
    }

    #[test]
    fn transient_failures_are_told_from_lasting_ones() {
        let status = |code: u16| {
            let status = StatusCode::from_u16(code).unwrap();
            GenesysError::from_status(status, b"{}", None, 1, None).is_transient()
        };
        for code in [408, 429, 500, 502, 503, 504, 522, 524, 529] {
            assert!(status(code), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 413, 501] {
            assert!(!status(code), "{code}");
        }
        let stack = |error: BoxError| {
            GenesysError::from_stack(Box::new(RetryError::new(2, None, error))).is_transient()
        };
        assert!(stack(Box::new(tower::timeout::error::Elapsed::new())));
        assert!(stack("connection reset by peer".into()));
        assert!(stack(Box::new(TokenError::Unreachable("refused".into()))));
        let rejected = |code: u16| TokenError::Rejected {
            status: StatusCode::from_u16(code).unwrap(),
            error: Some("invalid_client".into()),
            description: None,
            retry_after: None,
        };
        assert!(!stack(Box::new(rejected(401))));
        assert!(stack(Box::new(rejected(503))));
        assert!(!GenesysError::request("no such path").is_transient());
    }
}
