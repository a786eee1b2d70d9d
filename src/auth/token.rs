//! Tokens, secrets, the [`TokenSource`] trait, and the shared token cache behind every [`Auth`](super::Auth)
//! clone.

use super::error::TokenError;
use http::HeaderValue;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// A secret string (client secret, access token): `Debug` prints `"***"`, and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Secret(secret)
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Secret(secret.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// An access token and how long it lives, as a [`TokenSource`] returns it.
#[derive(Debug, Clone)]
pub struct Token {
    access_token: Secret,
    expires_in: Option<Duration>,
}

impl Token {
    /// A bearer token valid for `expires_in` from when it was requested (`None`: until the API rejects it).
    pub fn new(access_token: impl Into<Secret>, expires_in: Option<Duration>) -> Self {
        Token {
            access_token: access_token.into(),
            expires_in,
        }
    }

    /// The token.
    pub fn access_token(&self) -> &Secret {
        &self.access_token
    }

    /// Its lifetime, when the server said.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }
}

/// The future a [`TokenSource`] returns.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send + 'a>>;

/// Where access tokens come from. [`ClientCredentials`](super::ClientCredentials) is the OAuth2
/// client-credentials grant; implement this for other grants or a token broker.
///
/// The [`AuthLayer`](super::AuthLayer) calls it at most once at a time and caches the result, so an
/// implementation need not dedupe or cache.
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a new token.
    fn fetch_token(&self) -> TokenFuture<'_>;
}

/// The token in use: the ready-made header, its expiry, and a generation so a stale 401 cannot invalidate a
/// newer token.
pub(crate) struct Current {
    pub(crate) header: HeaderValue,
    pub(crate) refresh_at: Option<Instant>,
    pub(crate) expires_at: Option<Instant>,
    pub(crate) generation: u64,
}

/// The one token shared by every clone of an [`Auth`](super::Auth) service.
pub(crate) struct TokenCache {
    source: Box<dyn TokenSource>,
    skew: Duration,
    current: Mutex<Option<Arc<Current>>>,
    /// Held while fetching, so one fetch runs at a time and the others wait for it.
    fetching: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    fetches: AtomicU64,
}

impl TokenCache {
    pub(crate) fn new(source: Box<dyn TokenSource>, skew: Duration) -> Self {
        TokenCache {
            source,
            skew,
            current: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        }
    }

    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn load(&self) -> Option<Arc<Current>> {
        self.current.lock().map_or(None, |c| c.clone())
    }

    /// `true` while the token is outside its refresh window.
    fn fresh(token: &Current, now: Instant) -> bool {
        token.refresh_at.is_none_or(|at| now < at)
    }

    fn valid(token: &Current, now: Instant) -> bool {
        token.expires_at.is_none_or(|at| now < at)
    }

    /// The token to send now. Fresh: returned at once. In its refresh window: one caller refreshes it (and
    /// keeps using the old one if the refresh fails) while the others keep using it. Expired or absent: every
    /// caller waits for the one fetch.
    pub(crate) async fn get(&self) -> Result<Arc<Current>, TokenError> {
        let now = Instant::now();
        let current = self.load();
        if let Some(token) = &current {
            if Self::fresh(token, now) {
                return Ok(token.clone());
            }
            if Self::valid(token, now) {
                let Ok(guard) = self.fetching.try_lock() else {
                    return Ok(token.clone());
                };
                return match self.fetch_locked(guard).await {
                    Ok(new) => Ok(new),
                    Err(error) => {
                        tracing::warn!(%error, "token refresh failed; using the current token until it expires");
                        Ok(token.clone())
                    }
                };
            }
        }
        let guard = self.fetching.lock().await;
        if let Some(token) = self.load()
            && Self::valid(&token, Instant::now())
        {
            return Ok(token);
        }
        self.fetch_locked(guard).await
    }

    async fn fetch_locked(
        &self,
        _guard: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<Arc<Current>, TokenError> {
        // Re-check: a fetch that finished while this caller queued may have made it unnecessary.
        let requested = Instant::now();
        if let Some(token) = self.load()
            && Self::fresh(&token, requested)
        {
            return Ok(token);
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_redis_cache_token_fetches_total").increment(1);
        let span = tracing::debug_span!("token_refresh", generation = tracing::field::Empty);
        let token = match self.source.fetch_token().instrument(span.clone()).await {
            Ok(token) => token,
            Err(error) => {
                #[cfg(feature = "metrics")]
                metrics::counter!("tower_redis_cache_token_fetch_errors_total").increment(1);
                tracing::warn!(parent: &span, %error, "token fetch failed");
                return Err(error);
            }
        };
        let mut header = HeaderValue::try_from(format!("Bearer {}", token.access_token.expose()))
            .map_err(|_| {
            TokenError::Malformed("the access token is not a valid header value".into())
        })?;
        header.set_sensitive(true);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        span.record("generation", generation);
        // A token shorter-lived than twice the skew is refreshed at half its life, not on every request. A
        // lifetime past the clock's range means "no known expiry".
        let expires_at = token.expires_in.and_then(|d| requested.checked_add(d));
        let refresh_at = token
            .expires_in
            .and_then(|d| requested.checked_add(d.saturating_sub(self.skew.min(d / 2))));
        let current = Arc::new(Current {
            header,
            refresh_at,
            expires_at,
            generation,
        });
        tracing::debug!(
            parent: &span,
            generation,
            expires_in_s = token.expires_in.map(|d| d.as_secs()),
            "access token fetched"
        );
        if let Ok(mut slot) = self.current.lock() {
            *slot = Some(current.clone());
        }
        Ok(current)
    }

    /// Forgets the token of `generation` after the API rejected it; a newer token stays.
    pub(crate) fn invalidate(&self, generation: u64) {
        if let Ok(mut slot) = self.current.lock()
            && slot.as_ref().is_some_and(|c| c.generation == generation)
        {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting(AtomicU64);

    impl TokenSource for Counting {
        fn fetch_token(&self) -> TokenFuture<'_> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move { Ok(Token::new(format!("t{n}"), Some(Duration::from_secs(600)))) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_401_for_an_old_token_keeps_the_newer_one() {
        let cache = TokenCache::new(
            Box::new(Counting(AtomicU64::new(0))),
            Duration::from_secs(60),
        );
        let first = cache.get().await.unwrap();
        cache.invalidate(first.generation);
        let second = cache.get().await.unwrap();
        assert_eq!(second.header, "Bearer t2");
        // Another request that carried the first token reports its 401 only now.
        cache.invalidate(first.generation);
        let still = cache.get().await.unwrap();
        assert_eq!(still.header, "Bearer t2");
        assert_eq!(cache.fetches(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_lived_token_is_refreshed_at_half_life_not_every_call() {
        struct Short(AtomicU64);
        impl TokenSource for Short {
            fn fetch_token(&self) -> TokenFuture<'_> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Ok(Token::new("short", Some(Duration::from_secs(30)))) })
            }
        }
        let cache = TokenCache::new(Box::new(Short(AtomicU64::new(0))), Duration::from_secs(60));
        cache.get().await.unwrap();
        tokio::time::advance(Duration::from_secs(14)).await;
        cache.get().await.unwrap();
        assert_eq!(cache.fetches(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        cache.get().await.unwrap();
        assert_eq!(cache.fetches(), 2);
    }

    #[test]
    fn secrets_are_redacted() {
        let token = Token::new("eyJhbGciOi.secret-token", Some(Duration::from_secs(60)));
        let debug = format!("{token:?}");
        assert!(!debug.contains("secret-token"), "{debug}");
        assert!(debug.contains("***"));
        assert_eq!(token.access_token().expose(), "eyJhbGciOi.secret-token");
    }
}
