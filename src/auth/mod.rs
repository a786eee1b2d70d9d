//! [`AuthLayer`]: OAuth2 bearer tokens for every request, one token shared by all callers, refreshed ahead of
//! expiry by one fetch, and a `401` answered by one refresh and one replay.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_redis_cache::RequestBody;
//! use tower_redis_cache::auth::{AuthLayer, Token, TokenFuture, TokenSource};
//!
//! // A token source; `ClientCredentials` is the OAuth2 one.
//! struct Fixed;
//! impl TokenSource for Fixed {
//!     fn fetch_token(&self) -> TokenFuture<'_> {
//!         Box::pin(async { Ok(Token::new("t0k3n", Some(Duration::from_secs(3600)))) })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_redis_cache::error::BoxError> {
//! let api = service_fn(|req: Request<RequestBody>| async move {
//!     let ok = req.headers().get("authorization").is_some_and(|v| v == "Bearer t0k3n");
//!     let mut response = Response::new(Full::<Bytes>::default());
//!     *response.status_mut() = if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
//!     Ok::<_, Infallible>(response)
//! });
//! let client = ServiceBuilder::new().layer(AuthLayer::new(Fixed)).service(api);
//! let response = client.oneshot(Request::get("https://api.example/").body(RequestBody::empty())?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # Ok(()) }
//! ```
//!
//! # Concurrent calls
//!
//! All services built by one layer (and their clones) share one token. No token is fetched until a request
//! needs one. One fetch at a time: while it runs, every caller that needs a token waits for it and gets its
//! token or its failure. In the `skew` window before expiry, the first caller starts a refresh in the
//! background and every caller keeps using the current token; if the refresh fails, the current token is
//! used until it expires. The fetch runs to its end even if the callers that waited for it give up.
//!
//! # Token failures
//!
//! A failed fetch is remembered: for [`failure_cooldown`](AuthLayerBuilder::failure_cooldown) (1 s) after a
//! transient failure (unreachable, timed out, `5xx`) and for
//! [`rejection_cooldown`](AuthLayerBuilder::rejection_cooldown) (30 s) after a rejection of the client
//! (`invalid_client`, `unauthorized_client`), a caller that needs a token gets that failure at once, so a
//! dead token endpoint costs each caller at most one fetch timeout and is asked at most once per cooldown.
//! An endpoint that answers with a `Retry-After` (a `429` from a rate limit, a `503`) is left alone that long,
//! up to [`retry_after_cap`](AuthLayerBuilder::retry_after_cap) (180 s), whatever the cooldowns.
//! The [`RetryLayer`](crate::RetryLayer) does not retry token failures.
//!
//! # 401 recovery
//!
//! A `401` from the inner service invalidates the token that request carried (not a newer one another
//! caller already fetched), gets a new token (one fetch, however many requests saw the `401`), and replays
//! the request once with its buffered body. A second `401` is returned to the caller. A request whose body is
//! over [`max_body_size`](AuthLayerBuilder::max_body_size), or past what the calls in flight may hold together
//! ([`max_in_flight_bytes`](AuthLayerBuilder::max_in_flight_bytes)), cannot be replayed: its `401` is returned
//! as is, and still invalidates the token, so the next request fetches a new one.
//!
//! # Errors
//!
//! A token that cannot be had fails the request with a [`TokenError`](error::TokenError) (boxed): endpoint
//! unreachable, a non-2xx answer with its OAuth `error`, or a malformed response. Errors, `Debug` output and
//! logs never contain the client secret or a token; the `Authorization` header is marked sensitive, and a
//! response header that echoes the token (some gateways reflect request headers) is dropped before the
//! response goes up the stack, so no cache above stores it.

mod client_credentials;
pub mod error;
pub mod future;
mod token;

pub use self::client_credentials::ClientCredentials;
pub use self::token::{Secret, Token, TokenFuture, TokenSource};

use self::future::ResponseFuture;
use self::token::{Timing, TokenCache};
use crate::body::RequestBody;
use crate::budget::ByteBudget;
use crate::buffer::{Buffered, buffer_request, call_ready};
use crate::error::BoxError;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body::Body;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_layer::Layer;
use tower_service::Service;

/// A Tower layer that authenticates requests with tokens from a [`TokenSource`]; see the
/// [module docs](self).
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Arc<TokenCache>,
    max_body: usize,
    bodies: Arc<ByteBudget>,
}

impl AuthLayer {
    /// A layer over `source` with every default (see [`AuthLayerBuilder`]).
    pub fn new(source: impl TokenSource) -> Self {
        AuthLayer::builder(source).build()
    }

    /// Starts a builder over `source` (a [`ClientCredentials`], or your own [`TokenSource`]).
    pub fn builder(source: impl TokenSource) -> AuthLayerBuilder {
        AuthLayerBuilder {
            source: Arc::new(source),
            timing: Timing {
                skew: Duration::from_secs(60),
                failure_cooldown: Duration::from_secs(1),
                rejection_cooldown: Duration::from_secs(30),
                retry_after_cap: Duration::from_secs(180),
            },
            max_body: 1024 * 1024,
            max_in_flight_bytes: 64 * 1024 * 1024,
        }
    }

    /// How many tokens this layer's services have fetched. For tests: not part of the stable API (the
    /// `metrics` feature exports `tower_redis_cache_token_fetches_total`).
    #[doc(hidden)]
    pub fn token_fetches(&self) -> u64 {
        self.tokens.fetches()
    }
}

/// Builds an [`AuthLayer`]; every setter states its default.
///
/// A clone shares the token source, not the tokens: each layer built keeps its own token.
#[derive(Clone)]
#[must_use]
pub struct AuthLayerBuilder {
    source: Arc<dyn TokenSource>,
    timing: Timing,
    max_body: usize,
    max_in_flight_bytes: usize,
}

impl fmt::Debug for AuthLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayerBuilder")
            .field("timing", &self.timing)
            .field("max_body", &self.max_body)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .finish_non_exhaustive()
    }
}

impl AuthLayerBuilder {
    /// How long before expiry the token is refreshed. Default: 60 s. For a token living less than twice
    /// this, half its lifetime is used instead.
    pub fn skew(mut self, skew: Duration) -> Self {
        self.timing.skew = skew;
        self
    }

    /// How long a transient token failure (endpoint unreachable or timing out, `408`, `429`, `5xx`, a malformed
    /// answer) is remembered: callers needing a token meanwhile get that failure at once instead of fetching
    /// again. Default: 1 s.
    pub fn failure_cooldown(mut self, cooldown: Duration) -> Self {
        self.timing.failure_cooldown = cooldown;
        self
    }

    /// How long a rejection of the client itself (`invalid_client`, `unauthorized_client`, any other `4xx`, a
    /// redirect) is remembered the same way. Default: 30 s.
    pub fn rejection_cooldown(mut self, cooldown: Duration) -> Self {
        self.timing.rejection_cooldown = cooldown;
        self
    }

    /// The longest a token endpoint's `Retry-After` (on a `429` or `503`, say) keeps its failure remembered:
    /// within it, callers get the failure at once and the endpoint is not asked again, however short the
    /// cooldowns above. Default: 180 s.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.timing.retry_after_cap = cap;
        self
    }

    /// The largest request body buffered so a request can be replayed after a `401`. A larger one is sent once,
    /// streamed on as it is read, never held whole. Default: 1 MiB.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The most request body bytes the calls in flight may hold for a replay together, across all services of the
    /// layer: each body the layer reads from a stream (a hyper server's upload, a chunked `POST`) is held until
    /// its call ends. A body read while the others already hold this much is sent once, as one over
    /// [`max_body_size`](Self::max_body_size) is: its `401` is returned as is. A body its caller made whole (a
    /// `Full`, a [`RequestBody`] of bytes), as a client's usually is, is not read by the layer and not counted: its
    /// caller holds it anyway. Below `max_body_size`, a body larger than this is never held. Default: 64 MiB.
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight_bytes = bytes;
        self
    }

    /// Builds the layer (nothing to validate).
    pub fn build(self) -> AuthLayer {
        AuthLayer {
            tokens: Arc::new(TokenCache::new(self.source, self.timing)),
            max_body: self.max_body,
            bodies: ByteBudget::new(self.max_in_flight_bytes, || {}),
        }
    }
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("token_fetches", &self.tokens.fetches())
            .field("max_body", &self.max_body)
            .field("bodies", &self.bodies)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.tokens.clone(),
            max_body: self.max_body,
            bodies: self.bodies.clone(),
        }
    }
}

/// A service that adds `Authorization: Bearer <token>` to each request; built by [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Arc<TokenCache>,
    max_body: usize,
    bodies: Arc<ByteBudget>,
}

impl<S> Auth<S> {
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

impl<S: fmt::Debug> fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, R> Service<Request<B>> for Auth<S>
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
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(Box::pin(run(
            inner,
            self.tokens.clone(),
            self.max_body,
            self.bodies.clone(),
            request,
        )))
    }
}

async fn run<S, B, R>(
    mut inner: S,
    tokens: Arc<TokenCache>,
    max_body: usize,
    bodies: Arc<ByteBudget>,
    request: Request<B>,
) -> Result<Response<R>, BoxError>
where
    S: Service<Request<RequestBody>, Response = Response<R>>,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let buffered = buffer_request(request, max_body, &bodies).await?;
    let token = tokens.get().await?;
    let (parts, body) = match buffered {
        Buffered::Once {
            mut request,
            over_budget,
        } => {
            request
                .headers_mut()
                .insert(AUTHORIZATION, token.header.clone());
            let mut response = inner.call(request).await.map_err(Into::into)?;
            drop_echoes(&mut response, &token.header);
            if response.status() == StatusCode::UNAUTHORIZED {
                // Not replayable, but the token is still bad: the next request gets a new one.
                tokens.invalidate(token.generation);
                tracing::debug!(
                    over_budget,
                    "401 from the API for a request whose body was not held: not replayed"
                );
            }
            return Ok(response);
        }
        Buffered::Replayable { parts, body } => (parts, body),
    };
    let mut request = Buffered::rebuild(&parts, &body);
    request
        .headers_mut()
        .insert(AUTHORIZATION, token.header.clone());
    let mut response = inner.call(request).await.map_err(Into::into)?;
    drop_echoes(&mut response, &token.header);
    if response.status() != StatusCode::UNAUTHORIZED {
        return Ok(response);
    }
    drop(response);
    tokens.invalidate(token.generation);
    let token = tokens.get().await?;
    tracing::debug!(
        generation = token.generation,
        "401 from the API: replaying once with a new token"
    );
    let mut request = Buffered::rebuild(&parts, &body);
    request
        .headers_mut()
        .insert(AUTHORIZATION, token.header.clone());
    let mut response = call_ready(&mut inner, request).await?;
    drop_echoes(&mut response, &token.header);
    Ok(response)
}

/// Removes every response header that holds the token `header` carried: some gateways reflect request headers
/// (for debugging), and the token must not travel further up, into a cache's stored entries or a log. A token
/// under 8 bytes (no real one is) is left alone: it could occur in unrelated values by chance.
fn drop_echoes<R>(response: &mut Response<R>, header: &http::HeaderValue) {
    let bytes = header.as_bytes();
    let token = bytes.strip_prefix(b"Bearer ").unwrap_or(bytes);
    if token.len() < 8 {
        return;
    }
    let echoes: Vec<http::HeaderName> = response
        .headers()
        .iter()
        .filter(|(_, value)| value.as_bytes().windows(token.len()).any(|w| w == token))
        .map(|(name, _)| name.clone())
        .collect();
    for name in echoes {
        tracing::warn!(header = %name, "dropped a response header that echoed the bearer token");
        response.headers_mut().remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn echoes_of_the_token_are_dropped_and_nothing_else() {
        let mut response = Response::new(());
        let headers = response.headers_mut();
        headers.insert(
            "x-echo-authorization",
            HeaderValue::from_static("Bearer tok-6f1b2c-secret"),
        );
        headers.insert(
            "x-debug",
            HeaderValue::from_static("saw tok-6f1b2c-secret here"),
        );
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        drop_echoes(
            &mut response,
            &HeaderValue::from_static("Bearer tok-6f1b2c-secret"),
        );
        let names: Vec<_> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type"]);

        // A token too short to tell from ordinary text ("text") leaves every header alone.
        drop_echoes(&mut response, &HeaderValue::from_static("Bearer text"));
        assert_eq!(response.headers()["content-type"], "text/plain");
    }
}
