//! Tokens, secrets, the [`TokenSource`] trait, and the shared token cache behind every [`Auth`](super::Auth)
//! clone.

use super::error::TokenError;
use crate::atomic::AtomicU64;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use http::HeaderValue;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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

/// The one fetch in flight, awaited by every caller that needs its result. The failure is behind an [`Arc`] so
/// each waiter gets the same one.
type Flight = Shared<BoxFuture<'static, Result<Arc<Current>, Arc<TokenError>>>>;

/// How long failures are remembered, and how early tokens are refreshed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) skew: Duration,
    /// A transient failure (unreachable, `5xx`, malformed) is answered without a new fetch for this long.
    pub(crate) failure_cooldown: Duration,
    /// A rejection of the client itself (`invalid_client`, any other `4xx`) is remembered this long.
    pub(crate) rejection_cooldown: Duration,
    /// The longest an endpoint's `Retry-After` keeps a failure remembered.
    pub(crate) retry_after_cap: Duration,
}

/// What a caller of [`TokenCache::get`] does.
enum Step {
    /// Send this token.
    Ready(Arc<Current>),
    /// Fail with the remembered failure.
    Failed(Arc<TokenError>),
    /// Await this refresh, falling back on this still valid token.
    Refresh(Arc<Current>, Flight),
    /// Await this fetch.
    Wait(Flight),
}

struct State {
    current: Option<Arc<Current>>,
    flight: Option<Flight>,
    /// The last fetch's failure, answered to callers who need a token until the instant given.
    failed: Option<(Arc<TokenError>, Instant)>,
}

/// The one token shared by every clone of an [`Auth`](super::Auth) service.
pub(crate) struct TokenCache {
    source: Arc<dyn TokenSource>,
    timing: Timing,
    state: Mutex<State>,
    generation: AtomicU64,
    fetches: AtomicU64,
}

impl TokenCache {
    pub(crate) fn new(source: Arc<dyn TokenSource>, timing: Timing) -> Self {
        TokenCache {
            source,
            timing,
            state: Mutex::new(State {
                current: None,
                flight: None,
                failed: None,
            }),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        }
    }

    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements, so a panic elsewhere leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `true` while the token is outside its refresh window.
    fn fresh(token: &Current, now: Instant) -> bool {
        token.refresh_at.is_none_or(|at| now < at)
    }

    fn valid(token: &Current, now: Instant) -> bool {
        token.expires_at.is_none_or(|at| now < at)
    }

    /// The token to send now.
    ///
    /// - Fresh: returned at once.
    /// - In its refresh window: returned at once, and one refresh starts in the background unless one runs or
    ///   the last one failed moments ago; if it fails, the token is used until it expires.
    /// - Expired or absent: every caller awaits the one fetch in flight (starting it if none runs) and gets
    ///   its token or its failure. A failure is remembered for a cooldown, during which callers get it at once
    ///   instead of fetching again, so a dead or rejecting token endpoint is not hammered.
    pub(crate) async fn get(self: &Arc<Self>) -> Result<Arc<Current>, TokenError> {
        match self.step(Instant::now()) {
            Step::Ready(token) => Ok(token),
            Step::Failed(error) => Err(TokenError::shared(&error)),
            // No runtime to refresh on in the background: this caller waits for the refresh.
            Step::Refresh(token, flight) => Ok(flight.await.unwrap_or(token)),
            Step::Wait(flight) => flight.await.map_err(|error| TokenError::shared(&error)),
        }
    }

    /// What [`get`](Self::get) does, decided under the state lock (never held across an await).
    fn step(self: &Arc<Self>, now: Instant) -> Step {
        let mut state = self.state();
        if let Some(token) = state.current.clone() {
            if Self::fresh(&token, now) {
                return Step::Ready(token);
            }
            if Self::valid(&token, now) {
                if state.flight.is_some() || Self::cooling(&state, now).is_some() {
                    return Step::Ready(token);
                }
                let flight = self.launch(&mut state);
                return if Self::drive(&flight) {
                    Step::Ready(token)
                } else {
                    Step::Refresh(token, flight)
                };
            }
        }
        if let Some(error) = Self::cooling(&state, now) {
            return Step::Failed(error.clone());
        }
        match &state.flight {
            Some(flight) => Step::Wait(flight.clone()),
            None => {
                let flight = self.launch(&mut state);
                Self::drive(&flight);
                Step::Wait(flight)
            }
        }
    }

    /// The remembered failure, while its cooldown lasts.
    fn cooling(state: &State, now: Instant) -> Option<&Arc<TokenError>> {
        state
            .failed
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(error, _)| error)
    }

    /// Starts the one fetch: it publishes its token (or remembers its failure) and clears itself when done.
    fn launch(self: &Arc<Self>, state: &mut State) -> Flight {
        let cache = Arc::downgrade(self);
        let flight = async move {
            let Some(cache) = cache.upgrade() else {
                return Err(Arc::new(TokenError::Malformed(
                    "the auth layer was dropped".into(),
                )));
            };
            let result = cache.fetch().await.map_err(Arc::new);
            let mut state = cache.state();
            state.flight = None;
            match &result {
                Ok(current) => {
                    state.current = Some(current.clone());
                    state.failed = None;
                }
                Err(error) => {
                    let timing = &cache.timing;
                    let cooldown = if error.is_transient() {
                        timing.failure_cooldown
                    } else {
                        timing.rejection_cooldown
                    };
                    // An endpoint that asked to be left alone longer is: asking sooner would only be refused
                    // again, by every process of the fleet.
                    let asked = error.retry_after().unwrap_or_default();
                    let cooldown = cooldown.max(asked.min(timing.retry_after_cap));
                    let now = Instant::now();
                    // A cooldown past the clock's range means "for good": a year stands in for it.
                    let until = now
                        .checked_add(cooldown)
                        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
                        .unwrap_or(now);
                    state.failed = Some((error.clone(), until));
                }
            }
            result
        }
        .boxed()
        .shared();
        state.flight = Some(flight.clone());
        flight
    }

    /// Runs the flight to its end on the Tokio runtime, whether or not its callers stay to see it. `false`
    /// without a runtime: the callers drive it.
    fn drive(flight: &Flight) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let flight = flight.clone();
        drop(runtime.spawn(async move {
            let _ = flight.await;
        }));
        true
    }

    async fn fetch(&self) -> Result<Arc<Current>, TokenError> {
        let requested = Instant::now();
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
        let skew = self.timing.skew;
        let expires_at = token.expires_in.and_then(|d| requested.checked_add(d));
        let refresh_at = token
            .expires_in
            .and_then(|d| requested.checked_add(d.saturating_sub(skew.min(d / 2))));
        tracing::debug!(
            parent: &span,
            generation,
            expires_in_s = token.expires_in.map(|d| d.as_secs()),
            "access token fetched"
        );
        Ok(Arc::new(Current {
            header,
            refresh_at,
            expires_at,
            generation,
        }))
    }

    /// Forgets the token of `generation` after the API rejected it; a newer token stays.
    pub(crate) fn invalidate(&self, generation: u64) {
        let mut state = self.state();
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.generation == generation)
        {
            state.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            skew: Duration::from_secs(60),
            failure_cooldown: Duration::from_secs(1),
            rejection_cooldown: Duration::from_secs(30),
            retry_after_cap: Duration::from_secs(180),
        }
    }

    struct Counting(AtomicU64);

    impl TokenSource for Counting {
        fn fetch_token(&self) -> TokenFuture<'_> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move { Ok(Token::new(format!("t{n}"), Some(Duration::from_secs(600)))) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_401_for_an_old_token_keeps_the_newer_one() {
        let cache = Arc::new(TokenCache::new(
            Arc::new(Counting(AtomicU64::new(0))),
            timing(),
        ));
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
        let cache = Arc::new(TokenCache::new(
            Arc::new(Short(AtomicU64::new(0))),
            timing(),
        ));
        cache.get().await.unwrap();
        tokio::time::advance(Duration::from_secs(14)).await;
        cache.get().await.unwrap();
        assert_eq!(cache.fetches(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        cache.get().await.unwrap();
        // The refresh runs in the background; let it.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(cache.fetches(), 2);
        cache.get().await.unwrap();
        assert_eq!(cache.fetches(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unbounded_cooldown_keeps_the_failure_rather_than_dropping_it() {
        struct Rejecting(AtomicU64);
        impl TokenSource for Rejecting {
            fn fetch_token(&self) -> TokenFuture<'_> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Box::pin(async {
                    Err(TokenError::Rejected {
                        status: http::StatusCode::UNAUTHORIZED,
                        error: Some("invalid_client".into()),
                        description: None,
                        retry_after: None,
                    })
                })
            }
        }
        let timing = Timing {
            rejection_cooldown: Duration::MAX,
            ..timing()
        };
        let cache = Arc::new(TokenCache::new(
            Arc::new(Rejecting(AtomicU64::new(0))),
            timing,
        ));
        assert!(cache.get().await.is_err());
        tokio::time::advance(Duration::from_secs(3600)).await;
        let Err(error) = cache.get().await else {
            panic!("a remembered rejection")
        };
        assert_eq!(error.oauth_error(), Some("invalid_client"));
        assert_eq!(cache.fetches(), 1, "remembered, not asked again");
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
