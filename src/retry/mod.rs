//! [`RetryLayer`]: retries transient HTTP failures with exponential backoff and full jitter, honouring
//! `Retry-After` (and the other ways APIs ask for a wait), bounded by attempts, a deadline and a shared retry
//! budget.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_redis_cache::RequestBody;
//! use tower_redis_cache::retry::{RetryLayer, RetryOutcome};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_redis_cache::error::BoxError> {
//! // An API that is overloaded for its first two calls.
//! let calls = Arc::new(AtomicU32::new(0));
//! let api = service_fn({
//!     let calls = calls.clone();
//!     move |_req: Request<RequestBody>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let status = if n < 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!             let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
//!             *response.status_mut() = status;
//!             Ok::<_, Infallible>(response)
//!         }
//!     }
//! });
//! let retry = RetryLayer::builder()
//!     .max_attempts(5)
//!     .base_delay(Duration::from_millis(5))
//!     .build()?;
//! let client = ServiceBuilder::new().layer(retry).service(api);
//!
//! let response = client.oneshot(Request::get("https://api.example/").body(RequestBody::empty())?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.extensions().get::<RetryOutcome>().map(|o| o.attempts), Some(3));
//! # Ok(()) }
//! ```
//!
//! # Policy
//!
//! - **What is retried**: decided by a [`Classify`]; by default `408`, `429`, `500`, `502`, `503`, `504`,
//!   Cloudflare's `520`-`524` (its origin failed, refused, timed out or was unreachable), `529` (overloaded:
//!   Anthropic's API), a `403` that is a rate limit (`X-RateLimit-Remaining: 0`, or a `Retry-After`: GitHub's rate
//!   limits) and transport errors, never `501`. A token failure from an [`AuthLayer`](crate::AuthLayer) below is
//!   never retried: that layer shares and remembers it.
//! - **Methods**: non-idempotent requests (`POST`, `PATCH`) are retried only on a rate limit, on a connection that
//!   could not be made (refused, unreachable; with hyper-util or reqwest, any connect failure) and on an HTTP/2
//!   stream the server never processed (feature `genesys`: reset with `REFUSED_STREAM`, or above the last
//!   stream of its `GOAWAY`), unless they carry an `Idempotency-Key`
//!   ([`idempotency_key_headers`](RetryLayerBuilder::idempotency_key_headers)) or the [`Idempotent`]
//!   extension (which a [`RedisCache`](crate::cache::RedisCache) above puts on the `POST` queries it caches), or
//!   [`retry_non_idempotent`](RetryLayerBuilder::retry_non_idempotent) is on: a `503` or a reset connection
//!   may come after the server acted on the request, a refused connection or stream never does.
//! - **Delay**: full jitter, `random(0, min(max_delay, base_delay * 2^n))` before retry `n`; when the answer
//!   asks for a wait the delay is `max(backoff, wait)`. The wait is read from `retry-after-ms` or
//!   `x-ms-retry-after-ms` (milliseconds: OpenAI, Azure), else `Retry-After` (delay-seconds or HTTP-date), else,
//!   on a rate limit, the reset of the quota said to be spent: the `t` of a `RateLimit` policy with `r=0`
//!   (draft-ietf-httpapi-ratelimit-headers), `RateLimit-Reset` (its earlier drafts) or `X-RateLimit-Reset` (a
//!   unix time: GitHub and the APIs that copied it), each with its remaining count at `0`. A wait over
//!   [`retry_after_cap`](RetryLayerBuilder::retry_after_cap) ends retrying at once; a malformed one is ignored.
//! - **Bounds**: [`max_attempts`](RetryLayerBuilder::max_attempts), a total
//!   [`deadline`](RetryLayerBuilder::deadline) (no retry is scheduled past it) and a shared [`RetryBudget`].
//! - **Bodies**: the request body is buffered once, up to
//!   [`max_body_size`](RetryLayerBuilder::max_body_size), and replayed byte for byte, with the trailers that
//!   ended it; a larger body is sent once, not retried: what was read goes on chained with the rest of its
//!   stream, never held whole. The bodies held for replay together stay within
//!   [`max_in_flight_bytes`](RetryLayerBuilder::max_in_flight_bytes); one past it is sent once too. The
//!   wrapped service receives a [`RequestBody`] either way.
//! - **Ending**: never a loop. The last response is returned with a [`RetryOutcome`] extension (attempts, and
//!   why retrying stopped); an inner error comes back as a [`RetryError`] with the same
//!   facts. Each retry logs a `tracing` event (attempt, delay, reason).
//!
//! Delays use `tokio::time`, so tests can run with paused time. A retry does not poll the inner service for
//! readiness until its delay has passed.

mod backoff;
mod budget;
pub mod error;
pub mod future;
mod layer;
mod policy;
mod wait;

pub use self::budget::RetryBudget;
pub use self::layer::{RetryLayer, RetryLayerBuilder};
pub use self::policy::{Class, Classify, ClassifyFn, DefaultClassifier, classify_fn};
pub(crate) use self::policy::{is_idempotent, is_transient};
pub(crate) use self::wait::wait_of;

use self::error::RetryError;
use self::future::ResponseFuture;
use self::layer::Config;
use crate::body::RequestBody;
use crate::buffer::{Buffered, buffer_request, call_ready};
use crate::error::BoxError;
use http::{Request, Response, StatusCode};
use http_body::Body;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;
use tracing::Instrument;

/// A request extension saying the request may be sent again whatever its method: a `POST` that only reads (a
/// search, a GraphQL query, a lookup). [`Retry`] retries a request carrying it as it does a `GET`, on every
/// retryable answer, where a plain `POST` is retried only when the server cannot have acted on it (a rate
/// limit, a connection never made).
///
/// [`RedisCache`](crate::cache::RedisCache) puts it on what it sends for the queries it caches (a `POST` its
/// `methods`, `cache_post_when` and `query_when` admit): an answer the cache may hand to every caller of the
/// query is one the origin may be asked for twice. Put it on a request yourself to say the same.
///
/// ```
/// use http::Request;
/// use tower_redis_cache::RequestBody;
/// use tower_redis_cache::retry::Idempotent;
///
/// let mut search = Request::post("https://api.example/search").body(RequestBody::from("{\"q\":\"rust\"}"))?;
/// search.extensions_mut().insert(Idempotent);
/// # Ok::<(), http::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Idempotent;

/// How a call through [`Retry`] ended: a response extension, and the same facts on [`RetryError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryOutcome {
    /// Attempts made, the first included (at least 1).
    pub attempts: u32,
    /// Why no further attempt was made although the answer was retryable; `None` when the answer was final.
    pub gave_up: Option<GaveUp>,
}

/// Why a retryable answer was returned without another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GaveUp {
    /// `max_attempts` were made.
    MaxAttempts,
    /// The next attempt would have started after the deadline.
    Deadline,
    /// The retry budget is spent.
    Budget,
    /// The server asked for a wait longer than `retry_after_cap`.
    RetryAfterTooLong,
    /// A non-idempotent request, and the answer was not `429` or a connection that could not be made.
    NotIdempotent,
    /// The request body was over `max_body_size`, so it could not be replayed.
    BodyTooLarge,
    /// The request body could not be held for replay: the bodies of the calls in flight held
    /// `max_in_flight_bytes` already.
    OverMemoryBudget,
}

impl GaveUp {
    /// A short lower-case name, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            GaveUp::MaxAttempts => "max attempts reached",
            GaveUp::Deadline => "deadline reached",
            GaveUp::Budget => "retry budget spent",
            GaveUp::RetryAfterTooLong => "retry-after over the cap",
            GaveUp::NotIdempotent => "method not idempotent",
            GaveUp::BodyTooLarge => "body too large to replay",
            GaveUp::OverMemoryBudget => "no room to hold the body for replay",
        }
    }
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service that retries transient failures of `inner`; built by [`RetryLayer`].
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Retry<S> {
    pub(crate) fn from_parts(inner: S, config: Arc<Config>) -> Self {
        Retry { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.config)
            .finish()
    }
}

impl<S, B, R> Service<Request<B>> for Retry<S>
where
    S: Service<Request<RequestBody>, Response = Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = ResponseFuture<R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The first attempt uses the service this `poll_ready` readied; later ones drive it ready again.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let span = tracing::debug_span!("retry", attempts = tracing::field::Empty);
        ResponseFuture::new(Box::pin(
            run(inner, self.config.clone(), request).instrument(span),
        ))
    }
}

/// One call: buffer the body, then attempt until the answer is final or a bound is reached.
async fn run<S, B, R>(
    mut inner: S,
    config: Arc<Config>,
    request: Request<B>,
) -> Result<Response<R>, BoxError>
where
    S: Service<Request<RequestBody>, Response = Response<R>>,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    // An idempotency key makes a repeat safe: the server answers it with the first request's result.
    let replay_any = config.retry_non_idempotent
        || policy::is_idempotent(request.method())
        || request.extensions().get::<Idempotent>().is_some()
        || config
            .idempotency_keys
            .iter()
            .any(|name| request.headers().contains_key(name));
    let (parts, body) = match buffer_request(request, config.max_body, &config.bodies).await? {
        Buffered::Replayable { parts, body } => (parts, body),
        Buffered::Once {
            request,
            over_budget,
        } => {
            let result = inner.call(request).await.map_err(Into::into);
            let gave_up =
                (judge(&config, &result).class == Class::Retry).then_some(if over_budget {
                    GaveUp::OverMemoryBudget
                } else {
                    GaveUp::BodyTooLarge
                });
            return finish(&config, result, 1, gave_up);
        }
    };
    let mut rng: Option<SmallRng> = None;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = call_ready(&mut inner, Buffered::rebuild(&parts, &body))
            .instrument(tracing::debug_span!("attempt", attempt))
            .await;
        let Judged {
            class,
            status,
            wait: retry_after,
            rate_limited,
        } = judge(&config, &result);
        if class == Class::Done {
            return finish(&config, result, attempt, None);
        }
        // A rate limit, or a connection that could not be made, says the server did not act on the request.
        let unacted = rate_limited
            || result
                .as_ref()
                .is_err_and(|error| policy::never_sent(&**error));
        let gave_up = if !replay_any && !unacted {
            Some(GaveUp::NotIdempotent)
        } else if attempt >= config.max_attempts {
            Some(GaveUp::MaxAttempts)
        } else if retry_after.is_some_and(|wait| wait > config.retry_after_cap) {
            Some(GaveUp::RetryAfterTooLong)
        } else {
            None
        };
        if gave_up.is_some() {
            return finish(&config, result, attempt, gave_up);
        }
        let rng = rng.get_or_insert_with(|| match config.jitter_seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_rng(&mut rand::rng()),
        });
        let backoff = config.backoff.delay(attempt - 1, rng);
        let delay = backoff.max(retry_after.unwrap_or(Duration::ZERO));
        if Instant::now()
            .saturating_duration_since(start)
            .saturating_add(delay)
            > config.deadline
        {
            return finish(&config, result, attempt, Some(GaveUp::Deadline));
        }
        if config.budget.as_ref().is_some_and(|b| !b.try_withdraw()) {
            return finish(&config, result, attempt, Some(GaveUp::Budget));
        }
        let reason = match (&result, status) {
            (_, Some(status)) => status.as_str().to_owned(),
            (Err(error), None) => error.to_string(),
            (Ok(_), None) => String::new(),
        };
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_redis_cache_retries_total").increment(1);
        tracing::info!(
            attempt,
            delay_ms = delay.as_millis() as u64,
            retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
            reason = %reason,
            "retrying request"
        );
        // Drop the failed answer (and its connection) before sleeping.
        drop(result);
        tokio::time::sleep(delay).await;
    }
}

/// What one attempt came to, for the retry loop.
struct Judged {
    class: Class,
    /// The answer's status; `None` for an error.
    status: Option<StatusCode>,
    /// How long the answer asked the client to wait ([`wait::wait_of`]).
    wait: Option<Duration>,
    /// The answer is a rate limit ([`wait::is_rate_limit`]): the server did not act on the request.
    rate_limited: bool,
}

/// Classifies an attempt, with its status, the wait it asked for and whether it is a rate limit.
fn judge<R>(config: &Config, result: &Result<Response<R>, BoxError>) -> Judged {
    let judged = |class| Judged {
        class,
        status: None,
        wait: None,
        rate_limited: false,
    };
    match result {
        Ok(response) => {
            let (status, headers) = (response.status(), response.headers());
            Judged {
                class: config.classifier.classify_response(status, headers),
                status: Some(status),
                wait: wait::wait_of(status, headers),
                rate_limited: wait::is_rate_limit(status, headers),
            }
        }
        // A token failure is the auth layer's to handle: it shares one fetch's failure with every waiter and
        // remembers it, so asking again here would only repeat it.
        Err(error) if is_token_failure(&**error) => judged(Class::Done),
        Err(error) => judged(config.classifier.classify_error(&**error)),
    }
}

/// Whether an error (or one of its causes) is an auth layer's [`TokenError`](crate::auth::error::TokenError).
fn is_token_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<crate::auth::error::TokenError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Ends a call: the response with its [`RetryOutcome`], or the error wrapped in a [`RetryError`].
fn finish<R>(
    config: &Config,
    result: Result<Response<R>, BoxError>,
    attempts: u32,
    gave_up: Option<GaveUp>,
) -> Result<Response<R>, BoxError> {
    if gave_up.is_none() {
        if let Some(budget) = &config.budget {
            budget.deposit();
        }
    } else {
        let reason = gave_up.map_or("", GaveUp::as_str);
        #[cfg(feature = "metrics")]
        metrics::counter!("tower_redis_cache_retry_give_ups_total", "reason" => reason)
            .increment(1);
        tracing::warn!(attempts, reason, "giving up on retries");
    }
    tracing::Span::current().record("attempts", attempts);
    match result {
        Ok(mut response) => {
            response
                .extensions_mut()
                .insert(RetryOutcome { attempts, gave_up });
            Ok(response)
        }
        Err(error) => Err(Box::new(RetryError::new(attempts, gave_up, error))),
    }
}
