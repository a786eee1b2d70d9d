//! [`RedisCache`]: the Tower adapter over the cache engine.

use super::body::ResponseBody;
use super::engine::{Engine, Fetch, FetchFuture, buffer_response, decorate};
use super::future::ResponseFuture;
use super::status::{BypassReason, CacheOutcome};
use crate::buffer::{Buffered, buffer_request, call_ready, content_length};
use crate::error::BoxError;
use bytes::Bytes;
use http::{Request, Response, request};
use http_body::Body;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;
use tracing::Instrument;

/// A service that answers from the cache when it can and calls `inner` when it must; built by
/// [`RedisCacheLayer`](super::RedisCacheLayer).
///
/// `poll_ready` is always ready: a hit never needs the inner service, so no inner capacity is reserved. A
/// miss drives a clone of `inner` to readiness and calls it once.
#[derive(Clone)]
pub struct RedisCache<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S> RedisCache<S> {
    pub(crate) fn from_parts(inner: S, engine: Arc<Engine>) -> Self {
        RedisCache { inner, engine }
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

    /// A handle for stats, invalidation and purging (shared with the layer that built this service).
    pub fn handle(&self) -> super::CacheHandle {
        super::CacheHandle {
            engine: self.engine.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RedisCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("inner", &self.inner)
            .field("namespace", &self.engine.keys.namespace)
            .finish_non_exhaustive()
    }
}

impl<S, B, R> Service<Request<B>> for RedisCache<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    R: Body + Send + 'static,
    R::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<R>>;
    type Error = BoxError;
    type Future = ResponseFuture<R>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let engine = self.engine.clone();
        // One span per request: a subscriber sees the key's digest prefix and what the cache did.
        let span = tracing::debug_span!(
            "cache",
            method = %request.method(),
            key = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        ResponseFuture::new(Box::pin(
            async move {
                let result = serve(inner, engine, request).await;
                if let Some(outcome) = result
                    .as_ref()
                    .ok()
                    .and_then(|r| r.extensions().get::<CacheOutcome>())
                {
                    tracing::Span::current().record("outcome", outcome.as_str());
                }
                result
            }
            .instrument(span),
        ))
    }
}

/// One request through the cache: bypass, or key, then the engine's decision.
async fn serve<S, B, R>(
    inner: S,
    engine: Arc<Engine>,
    request: Request<B>,
) -> Result<Response<ResponseBody<R>>, BoxError>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    R: Body + Send + 'static,
    R::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let max = engine.policy.max_body;
    let screen = engine.policy.screen(&parts, content_length(&parts.headers));
    if let Some(reason) = screen.bypass {
        return bypass(&engine, inner, Request::from_parts(parts, body), reason).await;
    }
    let (parts, bytes) = match buffer_request(Request::from_parts(parts, body), max).await? {
        Buffered::Replayable { parts, body } => (parts, body),
        // Length unknown up front: the request still reaches the origin whole.
        Buffered::Once(request) => {
            return bypass(&engine, inner, request, BypassReason::RequestTooLarge).await;
        }
    };
    let key = engine
        .keys
        .key(&parts.method, &parts.uri, &parts.headers, &bytes);
    tracing::Span::current().record("key", key.short());
    let fetch = TowerFetch {
        inner,
        parts,
        body: bytes,
        max_body: max,
        _body: PhantomData,
    };
    engine.respond(key, screen.no_cache, fetch).await
}

async fn bypass<S, B, R>(
    engine: &Engine,
    mut inner: S,
    request: Request<B>,
    reason: BypassReason,
) -> Result<Response<ResponseBody<R>>, BoxError>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Into<BoxError>,
{
    let status = engine.bypassed(reason);
    let response = call_ready(&mut inner, request).await?;
    let (parts, body) = response.into_parts();
    let mut response = Response::from_parts(parts, ResponseBody::streaming(None, Box::pin(body)));
    decorate(&mut response, &status);
    Ok(response)
}

/// One origin call for a cached request: the inner service, the request head, and its buffered body.
struct TowerFetch<S, B> {
    inner: S,
    parts: request::Parts,
    body: Bytes,
    max_body: usize,
    _body: PhantomData<fn() -> B>,
}

impl<S: Clone, B> Clone for TowerFetch<S, B> {
    fn clone(&self) -> Self {
        TowerFetch {
            inner: self.inner.clone(),
            parts: self.parts.clone(),
            body: self.body.clone(),
            max_body: self.max_body,
            _body: PhantomData,
        }
    }
}

impl<S, B, R> Fetch<R> for TowerFetch<S, B>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: From<Bytes> + Send + 'static,
    R: Body + Send + 'static,
    R::Error: Into<BoxError>,
{
    fn fetch(self) -> FetchFuture<'static, R> {
        Box::pin(async move {
            let request = Request::from_parts(self.parts, B::from(self.body));
            let mut inner = self.inner;
            let response = call_ready(&mut inner, request).await?;
            buffer_response(response, self.max_body).await
        })
    }
}
