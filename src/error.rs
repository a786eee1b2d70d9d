//! Error types shared by the crate's middleware.
//!
//! Middleware that adds failure modes returns [`BoxError`], as `tower` does; the leaf errors here are small
//! types with lower-case `Display` messages and a `source()` where there is one.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_redis_cache::{MemoryStore, RedisCacheLayer};
//! use tower_redis_cache::error::ConfigError;
//!
//! // A namespace may not contain the characters the key format reserves.
//! let err: ConfigError = RedisCacheLayer::builder(MemoryStore::new(1024))
//!     .namespace("bad{name}")
//!     .build()
//!     .unwrap_err();
//! assert!(err.to_string().contains("namespace"));
//! ```

use std::fmt;
use std::sync::Arc;

/// The boxed error type middleware in this crate returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A layer's configuration was rejected by `build()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }
}

/// Parses `url` as an absolute `http` or `https` URL; `what` names it in the error.
pub(crate) fn absolute_http_url(what: &str, url: &str) -> Result<http::Uri, ConfigError> {
    let rejected = || {
        ConfigError::new(format!(
            "{what} {url:?} must be an absolute http or https URL"
        ))
    };
    let uri: http::Uri = url.parse().map_err(|_| rejected())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(rejected());
    }
    Ok(uri)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A cache store operation failed. The cache never hands this to a caller as a request failure: it is counted,
/// logged, and the request falls back to the inner service.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The operation did not finish within the store timeout.
    Timeout,
    /// The circuit breaker is open after repeated failures; the store was not asked.
    Unavailable,
    /// The backend reported an error.
    Backend(BoxError),
}

impl StoreError {
    /// Wraps a backend error.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        StoreError::Backend(error.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Timeout => f.write_str("cache store operation timed out"),
            StoreError::Unavailable => f.write_str("cache store skipped: circuit breaker open"),
            StoreError::Backend(e) => write!(f, "cache store error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Backend(e) => Some(&**e),
            _ => None,
        }
    }
}

/// The error a coalesced waiter receives when the one inner call it waited on failed.
///
/// Every waiter gets a clone; the leader's error is kept behind an [`Arc`] and reachable through
/// [`source`](std::error::Error::source).
#[derive(Debug, Clone)]
pub struct SharedError {
    inner: Arc<BoxError>,
}

impl SharedError {
    pub(crate) fn new(inner: Arc<BoxError>) -> Self {
        SharedError { inner }
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "coalesced inner call failed: {}", self.inner)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.inner)
    }
}
