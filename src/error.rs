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
//! use tower_redis_cache::error::{ConfigError, Setting};
//!
//! // A namespace may not contain the characters the key format reserves.
//! let err: ConfigError = RedisCacheLayer::builder(MemoryStore::new(1024))
//!     .namespace("bad{name}")
//!     .build()
//!     .unwrap_err();
//! assert_eq!(err.setting(), Setting::Namespace);
//! ```

use std::fmt;
use std::sync::Arc;

/// The boxed error type middleware in this crate returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A layer's configuration was rejected by `build()`.
///
/// [`setting`](Self::setting) says which setting, as a value to match on; `Display` adds why, in words.
///
/// ```
/// use tower_redis_cache::RetryLayer;
/// use tower_redis_cache::error::Setting;
///
/// let err = RetryLayer::builder().max_attempts(0).build().unwrap_err();
/// assert_eq!(err.setting(), Setting::MaxAttempts);
/// assert!(err.to_string().starts_with("invalid max_attempts: "));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: Setting,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(setting: Setting, message: impl Into<String>) -> Self {
        ConfigError {
            setting,
            message: message.into(),
        }
    }

    /// The setting that was refused.
    pub fn setting(&self) -> Setting {
        self.setting
    }
}

/// The settings a [`ConfigError`] can name, each after the builder method that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// `RedisCacheLayerBuilder::namespace` (or the Genesys client's).
    Namespace,
    /// `fresh_for`.
    FreshFor,
    /// `stale_for`.
    StaleFor,
    /// `stale_if_error_for`.
    StaleIfErrorFor,
    /// `fresh_for`, `stale_for` and `stale_if_error_for` together (all zero).
    Windows,
    /// `origin_freshness_cap`.
    OriginFreshnessCap,
    /// `windows_for_status`.
    WindowsForStatus,
    /// `refresh_lease_for`.
    RefreshLeaseFor,
    /// `refresh_ahead`.
    RefreshAhead,
    /// `store_timeout`.
    StoreTimeout,
    /// `refresh_timeout`.
    RefreshTimeout,
    /// `circuit_breaker`.
    CircuitBreaker,
    /// `max_body_size`.
    MaxBodySize,
    /// `max_background_refreshes`.
    MaxBackgroundRefreshes,
    /// `coalesced_wait`.
    CoalescedWait,
    /// `fleet_wait`.
    FleetWait,
    /// `uncacheable_for`.
    UncacheableFor,
    /// `keep_for`.
    KeepFor,
    /// `tag_sweep_every`.
    TagSweepEvery,
    /// `max_in_flight_bytes`.
    MaxInFlightBytes,
    /// `cacheable_statuses`.
    CacheableStatuses,
    /// `credentials`.
    Credentials,
    /// `respect_response_cache_control`.
    RespectResponseCacheControl,
    /// `targeted_cache_control`.
    TargetedCacheControl,
    /// `near_cache`.
    NearCache,
    /// `near_cache_max_ttl`.
    NearCacheMaxTtl,
    /// `ignore_query_params`.
    IgnoreQueryParams,
    /// `ignore_body_fields`.
    IgnoreBodyFields,
    /// `ignore_cookies`.
    IgnoreCookies,
    /// `echo_body_field`.
    EchoBodyField,
    /// `RetryLayerBuilder::max_attempts`.
    MaxAttempts,
    /// `RetryLayerBuilder::max_delay` (against `base_delay`).
    MaxDelay,
    /// `ClientCredentials`' token URL.
    TokenUrl,
    /// The OAuth client id and secret (`ClientCredentials`, or the Genesys client's `client_credentials`).
    ClientCredentials,
    /// The Genesys client's `api_base` (or `region`).
    ApiBase,
    /// The Genesys client's `login_base` (or `region`).
    LoginBase,
    /// The Genesys client's `redis_url`.
    RedisUrl,
    /// The Genesys client's `proxy`, or the environment's (`HTTPS_PROXY`, ...).
    Proxy,
    /// The Genesys client's `store` (none given, and no default store built in).
    Store,
    /// The Genesys client's TLS setup (its `add_root_certificates_pem`).
    Tls,
}

impl Setting {
    /// The setting's name, as its builder method spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Setting::Namespace => "namespace",
            Setting::FreshFor => "fresh_for",
            Setting::StaleFor => "stale_for",
            Setting::StaleIfErrorFor => "stale_if_error_for",
            Setting::Windows => "windows",
            Setting::OriginFreshnessCap => "origin_freshness_cap",
            Setting::WindowsForStatus => "windows_for_status",
            Setting::RefreshLeaseFor => "refresh_lease_for",
            Setting::RefreshAhead => "refresh_ahead",
            Setting::StoreTimeout => "store_timeout",
            Setting::RefreshTimeout => "refresh_timeout",
            Setting::CircuitBreaker => "circuit_breaker",
            Setting::MaxBodySize => "max_body_size",
            Setting::MaxBackgroundRefreshes => "max_background_refreshes",
            Setting::CoalescedWait => "coalesced_wait",
            Setting::FleetWait => "fleet_wait",
            Setting::UncacheableFor => "uncacheable_for",
            Setting::KeepFor => "keep_for",
            Setting::TagSweepEvery => "tag_sweep_every",
            Setting::MaxInFlightBytes => "max_in_flight_bytes",
            Setting::CacheableStatuses => "cacheable_statuses",
            Setting::Credentials => "credentials",
            Setting::RespectResponseCacheControl => "respect_response_cache_control",
            Setting::TargetedCacheControl => "targeted_cache_control",
            Setting::NearCache => "near_cache",
            Setting::NearCacheMaxTtl => "near_cache_max_ttl",
            Setting::IgnoreQueryParams => "ignore_query_params",
            Setting::IgnoreBodyFields => "ignore_body_fields",
            Setting::IgnoreCookies => "ignore_cookies",
            Setting::EchoBodyField => "echo_body_field",
            Setting::MaxAttempts => "max_attempts",
            Setting::MaxDelay => "max_delay",
            Setting::TokenUrl => "token_url",
            Setting::ClientCredentials => "client_credentials",
            Setting::ApiBase => "api_base",
            Setting::LoginBase => "login_base",
            Setting::RedisUrl => "redis_url",
            Setting::Store => "store",
            Setting::Tls => "tls",
            Setting::Proxy => "proxy",
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `url` as an absolute `http` or `https` URL for `setting`.
pub(crate) fn absolute_http_url(setting: Setting, url: &str) -> Result<http::Uri, ConfigError> {
    let rejected = || {
        // Not echoed when it may carry a password.
        let shown = if url.contains('@') {
            String::from("the URL")
        } else {
            format!("{:?}", url.chars().take(200).collect::<String>())
        };
        ConfigError::new(
            setting,
            format!("{shown} must be an absolute http or https URL"),
        )
    };
    let uri: http::Uri = url.parse().map_err(|_| rejected())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(rejected());
    }
    Ok(uri)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.message)
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
    /// The store answered, refusing the operation: Redis out of memory under `noeviction` (`OOM`), a read-only
    /// replica (`READONLY`), writes stopped by a failed save (`MISCONF`), a user without the command (`NOPERM`),
    /// a script error. The store is reachable and answers at once, so the circuit breaker does not count it: a
    /// Redis that refuses writes still answers the reads that are hits. A refusal that new connections avoid
    /// (`READONLY` from a demoted primary: [`Store::reconnect_cures`](crate::Store::reconnect_cures)) has the
    /// store connect again.
    Refused(BoxError),
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
            StoreError::Refused(e) => write!(f, "cache store refused the operation: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Backend(e) | StoreError::Refused(e) => Some(&**e),
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
