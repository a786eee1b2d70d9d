//! What is worth retrying: the [`Classify`] trait, the default classifier, and the method rule.

use http::{HeaderMap, Method, StatusCode};
use std::error::Error;
use std::fmt;

/// A classifier's verdict on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A transient failure: try again if the policy allows.
    Retry,
    /// Final: hand this answer to the caller.
    Done,
}

/// Decides which answers are transient. The retry layer adds the rest of the policy (method rule, attempts,
/// deadline, budget, `Retry-After`).
pub trait Classify: Send + Sync + 'static {
    /// Classifies a response by its status and headers.
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Class;

    /// Classifies an error from the inner service. The default retries every error: for an HTTP client, errors
    /// are transport failures (connect refused, reset, per-attempt timeout).
    fn classify_error(&self, error: &(dyn Error + 'static)) -> Class {
        let _ = error;
        Class::Retry
    }
}

/// The default classifier: retries the statuses of a failure that may pass (`408`, `429`, `500`, `502`, `503`,
/// `504`, Cloudflare's `520`-`524`, `529`) and every transport error, and a `403` that is a rate limit: its
/// rate-limit fields say the quota is spent (`X-RateLimit-Remaining: 0`), or it asks for a wait (`Retry-After`), as
/// GitHub answers its rate limits. Never `501` (the server will not implement the method on a second try) and never
/// other statuses.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl Classify for DefaultClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Class {
        if is_transient(status)
            || (status == StatusCode::FORBIDDEN && super::wait::is_rate_limit(status, headers))
        {
            Class::Retry
        } else {
            Class::Done
        }
    }
}

/// Whether `status` says the server, or a gateway in front of it, failed for now and may answer on another try:
/// `408 Request Timeout`, `429`, `500`, `502`, `503`, `504`; Cloudflare's `520` to `524`, sent in front of an
/// origin that answered nothing it could read, refused the connection, did not complete it, could not be
/// reached or did not answer in time; and `529`, an overloaded API (Anthropic's `overloaded_error`).
///
/// None of them proves the request was not acted on (a `408` is also what a server's own handler timeout may
/// answer), so a non-idempotent request is not retried on them. A cache's stale-if-error answers them too.
pub(crate) fn is_transient(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        408 | 429 | 500 | 502 | 503 | 504 | 520..=524 | 529
    )
}

/// A classifier from a closure over a response's status and headers; errors are all retried. Built by
/// [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F> {
    f: F,
}

/// Adapts a closure into a [`Classify`].
///
/// ```
/// use http::StatusCode;
/// use tower_redis_cache::retry::{Class, RetryLayer, classify_fn};
///
/// // Also retry 409 Conflict, which this API uses for "try again".
/// let layer = RetryLayer::builder()
///     .classifier(classify_fn(|status, _headers| match status {
///         StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
///             Class::Retry
///         }
///         _ => Class::Done,
///     }))
///     .build()?;
/// # Ok::<(), tower_redis_cache::error::ConfigError>(())
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F>
where
    F: Fn(StatusCode, &HeaderMap) -> Class + Send + Sync + 'static,
{
    ClassifyFn { f }
}

impl<F> Classify for ClassifyFn<F>
where
    F: Fn(StatusCode, &HeaderMap) -> Class + Send + Sync + 'static,
{
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Class {
        (self.f)(status, headers)
    }
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

/// Whether a method is idempotent (RFC 9110 section 9.2.2, plus `QUERY`): sending it twice has the effect of
/// sending it once, so a failure after the request may have reached the server can be retried safely.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || method.as_str() == "QUERY"
}

/// Whether `error` (or one of its causes) says the request was never acted on: the connection it was to go on
/// could not be made (refused, host or network unreachable, no local address; with hyper-util or reqwest, any
/// failure while connecting: DNS, TLS handshake, connect timeout), or, with the `genesys` feature's HTTP/2, the
/// server reset its stream with `REFUSED_STREAM`, which it may send only before any processing (RFC 9113 §8.7),
/// or the stream ended with the server's `GOAWAY`: h2 gives a stream that error only when its id is above the
/// last one the `GOAWAY` says the server may have processed, or when it was to open after the `GOAWAY` came
/// (RFC 9113 §6.8; a stream the server may have processed ends otherwise, its connection closed under it). Any
/// request, idempotent or not, can then be sent again: the server cannot have acted on it.
pub(crate) fn never_sent(error: &(dyn Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        #[cfg(feature = "genesys")]
        if e.downcast_ref::<h2::Error>().is_some_and(|h2| {
            h2.is_remote()
                && (h2.is_go_away()
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
        }) {
            return true;
        }
        #[cfg(feature = "genesys")]
        if e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
        {
            return true;
        }
        #[cfg(feature = "reqwest")]
        if e.downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_connect)
            || matches!(
                e.downcast_ref::<reqwest_middleware::Error>(),
                Some(reqwest_middleware::Error::Reqwest(inner)) if inner.is_connect()
            )
        {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set() {
        let c = DefaultClassifier;
        let h = HeaderMap::new();
        for s in [408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529] {
            let status = StatusCode::from_u16(s).unwrap();
            assert_eq!(c.classify_response(status, &h), Class::Retry, "{s}");
        }
        for s in [
            200, 201, 301, 400, 401, 403, 404, 409, 501, 505, 511, 519, 525, 526, 530, 599,
        ] {
            let status = StatusCode::from_u16(s).unwrap();
            assert_eq!(c.classify_response(status, &h), Class::Done, "{s}");
        }
        let io = std::io::Error::other("reset");
        assert_eq!(c.classify_error(&io), Class::Retry);
    }

    #[test]
    fn a_classifier_closure_debugs_as_what_it_is() {
        let classify = classify_fn(|_, _| Class::Done);
        assert_eq!(format!("{classify:?}"), "ClassifyFn { .. }");
    }

    #[test]
    fn only_a_connection_never_made_is_never_sent() {
        use std::io::{Error as IoError, ErrorKind};
        /// A client's error around its cause, as hyper-util's and reqwest's are.
        #[derive(Debug)]
        struct Wrapped(IoError);
        impl fmt::Display for Wrapped {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl Error for Wrapped {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        for (kind, never) in [
            (ErrorKind::ConnectionRefused, true),
            (ErrorKind::HostUnreachable, true),
            (ErrorKind::NetworkUnreachable, true),
            (ErrorKind::AddrNotAvailable, true),
            (ErrorKind::ConnectionReset, false),
            (ErrorKind::ConnectionAborted, false),
            (ErrorKind::BrokenPipe, false),
            (ErrorKind::TimedOut, false),
            (ErrorKind::UnexpectedEof, false),
        ] {
            assert_eq!(never_sent(&IoError::from(kind)), never, "{kind:?}");
            assert_eq!(
                never_sent(&Wrapped(IoError::from(kind))),
                never,
                "{kind:?} as a cause"
            );
        }
        let other: Box<dyn Error + Send + Sync> =
            "connection closed before message completed".into();
        assert!(!never_sent(&*other));
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(is_idempotent(&Method::from_bytes(b"QUERY").unwrap()));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
