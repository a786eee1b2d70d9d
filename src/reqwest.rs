//! reqwest-middleware integration (feature `reqwest`; reqwest 0.13, reqwest-middleware 0.5), both ways:
//!
//! - [`ReqwestService`]: a Tower service over a [`ClientWithMiddleware`], so [`RedisCacheLayer`],
//!   [`RetryLayer`](crate::RetryLayer) and [`AuthLayer`](crate::AuthLayer) wrap a reqwest client;
//! - [`CacheMiddleware`]: the same cache engine as a [`reqwest_middleware::Middleware`]. Given the same store,
//!   namespace and partition it computes the same keys and reads and writes the same entries as the Tower
//!   layer. A miss goes down the rest of the middleware chain; a background refresh of a stale entry goes
//!   through the middleware's own client (the chain's `Next` cannot outlive the request).
//!
//! The middleware reads a request's body only when reqwest holds it as bytes: one sent as a stream
//! (`Body::wrap_stream`) goes on unread and uncached (`detail=request-too-large`), and under
//! [`query_when`](crate::cache::RedisCacheLayerBuilder::query_when), which cannot judge it, counts as a write.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_redis_cache::{MemoryStore, RedisCacheLayer};
//! use tower_redis_cache::reqwest::{CacheMiddleware, ReqwestService};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = RedisCacheLayer::builder(MemoryStore::new(64 << 20))
//!     .namespace("api")
//!     .fresh_for(Duration::from_secs(60))
//!     .build()?;
//! let plain = reqwest::Client::new();
//!
//! // reqwest users: the cache as a middleware.
//! let client = reqwest_middleware::ClientBuilder::new(plain.clone())
//!     .with(CacheMiddleware::new(&cache, plain.clone()))
//!     .build();
//!
//! // Tower users: the layers over a reqwest-middleware client.
//! let service = ServiceBuilder::new()
//!     .layer(cache)
//!     .service(ReqwestService::new(reqwest_middleware::ClientBuilder::new(plain).build()));
//! # let _ = (client, service); Ok(()) }
//! ```

use crate::body::RequestBody;
use crate::cache::RedisCacheLayer;
use crate::cache::ResponseBody;
use crate::cache::decision::Action;
use crate::cache::decode::Content;
use crate::cache::engine::{
    Engine, Fetch, FetchFuture, Finish, Holding, NearProbe, Origin, Steps, buffer_response,
    with_validators,
};
use crate::cache::stats::{OriginCall, OriginTimer};
use crate::error::BoxError;
use ::reqwest::{Body, Request, ResponseBuilderExt, Url};
use ::reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use bytes::Bytes;
use http::{Extensions, HeaderMap, request};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// A Tower service that sends `http::Request`s through a reqwest-middleware client and answers
/// `http::Response<reqwest::Body>`.
#[derive(Clone, Debug)]
pub struct ReqwestService {
    client: ClientWithMiddleware,
}

impl ReqwestService {
    /// Wraps a client (a plain `reqwest::Client` converts with `.into()`).
    pub fn new(client: impl Into<ClientWithMiddleware>) -> Self {
        ReqwestService {
            client: client.into(),
        }
    }

    /// The client.
    pub fn client(&self) -> &ClientWithMiddleware {
        &self.client
    }
}

/// The future of [`ReqwestService`].
pub struct ReqwestFuture {
    inner: Pin<
        Box<dyn Future<Output = Result<http::Response<Body>, reqwest_middleware::Error>> + Send>,
    >,
}

impl fmt::Debug for ReqwestFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestFuture").finish_non_exhaustive()
    }
}

impl Future for ReqwestFuture {
    type Output = Result<http::Response<Body>, reqwest_middleware::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B: Into<Body>> Service<http::Request<B>> for ReqwestService {
    type Response = http::Response<Body>;
    type Error = reqwest_middleware::Error;
    type Future = ReqwestFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> ReqwestFuture {
        let client = self.client.clone();
        let request = Request::try_from(request);
        ReqwestFuture {
            inner: Box::pin(async move {
                let response = client.execute(request?).await?;
                Ok(http::Response::from(response))
            }),
        }
    }
}

/// The cache as a reqwest-middleware [`Middleware`]; see the [module docs](self).
#[derive(Clone)]
pub struct CacheMiddleware {
    engine: Arc<Engine>,
    refresh_client: ClientWithMiddleware,
}

impl CacheMiddleware {
    /// The cache of `layer` (its store, namespace, partition, windows and counters), refreshing stale entries
    /// in the background through `refresh_client`.
    pub fn new(layer: &RedisCacheLayer, refresh_client: impl Into<ClientWithMiddleware>) -> Self {
        CacheMiddleware {
            engine: layer.engine(),
            refresh_client: refresh_client.into(),
        }
    }
}

impl fmt::Debug for CacheMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheMiddleware")
            .field("namespace", &self.engine.keys.namespace)
            .finish_non_exhaustive()
    }
}

/// An error of the cache middleware's origin call, or of the coalesced call it waited for.
#[derive(Debug)]
struct CacheError(BoxError);

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[async_trait::async_trait]
impl Middleware for CacheMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<::reqwest::Response> {
        let engine = &self.engine;
        let Some(mut parts) = head(&request) else {
            return next.run(request, extensions).await;
        };
        // What rides in the middleware chain's extensions (a per-call override, what names a partition) is the
        // request's, as the layer's hooks see it.
        parts.extensions = extensions.clone();
        let max = engine.policy.max_body;
        // `None`: a streaming body, which cannot be read without consuming it (and may be of any size).
        let bytes = match request.body() {
            None => Some(&[][..]),
            Some(body) => body.as_bytes(),
        };
        let (mut facts, head, partition) = engine.policy.read_head(&mut parts);
        facts.too_large |= bytes.is_none_or(|b| b.len() > max);
        let content = match bytes.filter(|_| !facts.too_large) {
            // A body in codings that do not undo asks what cannot be read: bypassed unread.
            Some(bytes) => engine.policy.read_body(&mut facts, &parts, bytes).0,
            None => Content::AsSent,
        };
        let action = engine.policy.screen(&facts);
        if let Action::Bypass(reason) = action {
            // A decoded body is read: it is not held while the request goes on.
            drop(content);
            // The request goes on untouched: a `HEAD` as a `HEAD`.
            if head {
                parts.method = http::Method::HEAD;
            }
            let status = engine.bypassed(reason);
            let stale = engine.stale_targets(&parts, &facts, partition);
            let timer = OriginTimer::start();
            let called = next.run(request, extensions).await;
            let answered = called.as_ref().ok().map(::reqwest::Response::status);
            timer.stop(&engine.counters, OriginCall::Bypass, answered);
            if let Some(stale) = stale {
                let answer = called
                    .as_ref()
                    .ok()
                    .map(|response| (response.status(), response.headers()));
                engine.invalidate(stale, answer).await;
            }
            let mut response = called?;
            crate::cache::engine::add_cache_status(response.headers_mut(), status.header_value());
            response.extensions_mut().insert(status.outcome);
            return Ok(response);
        }
        let body = bytes.map(Bytes::copy_from_slice).unwrap_or_default();
        let url = request.url().clone();
        // What the answer needs on its way back: the client's own `If-None-Match` / `If-Modified-Since` are
        // evaluated on it, not forwarded.
        let echoed = engine.policy.echoed(&mut facts, &content, &body);
        let finishing =
            Steps::of(&facts, head).map(|steps| Finish::new(steps, &parts.headers, echoed));
        if head {
            *request.method_mut() = http::Method::GET;
        }
        let keyed = content.keyed(&body);
        let key =
            engine
                .keys
                .key_of(engine.digest_of(&parts, &mut facts, partition.as_deref(), keyed));
        drop(content);
        let origin = ChainOrigin {
            next,
            extensions: extensions.clone(),
            request,
            refresh: RefreshFetch {
                client: self.refresh_client.clone(),
                parts,
                body,
            },
        };
        let response = engine
            .clone()
            .respond(key, facts, action, origin, NearProbe::Unasked)
            .await
            .map_err(|e| reqwest_middleware::Error::middleware(CacheError(e)))?;
        let response = match &finishing {
            Some(then) => engine.finish(then, response),
            None => response,
        };
        Ok(into_reqwest(response, url))
    }
}

/// The request's head as `http` parts, for the policy and the key; `None` for a URL `http` cannot hold.
fn head(request: &Request) -> Option<request::Parts> {
    let uri: http::Uri = request.url().as_str().parse().ok()?;
    let mut head = http::Request::new(());
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = uri;
    *head.version_mut() = request.version();
    *head.headers_mut() = request.headers().clone();
    Some(head.into_parts().0)
}

fn into_reqwest(response: http::Response<ResponseBody<Body>>, url: Url) -> ::reqwest::Response {
    let (mut parts, body) = response.into_parts();
    // Carry the request URL over, as reqwest's own responses do.
    if let Ok(marker) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(marker.into_parts().0.extensions);
    }
    ::reqwest::Response::from(http::Response::from_parts(parts, Body::wrap(body)))
}

/// A miss down the rest of the middleware chain, in the caller's own future.
struct ChainOrigin<'a> {
    next: Next<'a>,
    extensions: Extensions,
    request: Request,
    refresh: RefreshFetch,
}

impl Origin<Body> for ChainOrigin<'_> {
    type Refresh = RefreshFetch;

    fn parts(&self) -> &request::Parts {
        &self.refresh.parts
    }

    fn call(&mut self, extra: HeaderMap, holding: Holding) -> FetchFuture<'_, Body> {
        let request = self.request.try_clone().map(|mut request| {
            with_validators(request.headers_mut(), extra);
            request
        });
        let next = self.next.clone();
        let mut extensions = self.extensions.clone();
        Box::pin(async move {
            let request = request.ok_or("the request body cannot be cloned")?;
            let response = next.run(request, &mut extensions).await?;
            buffer_response(http::Response::from(response), holding).await
        })
    }

    fn into_refresh(self) -> RefreshFetch {
        self.refresh
    }

    fn refresh(&self) -> RefreshFetch {
        self.refresh.clone()
    }
}

/// A background refresh through the middleware's own client.
#[derive(Clone)]
struct RefreshFetch {
    client: ClientWithMiddleware,
    parts: request::Parts,
    body: Bytes,
}

impl Fetch<Body> for RefreshFetch {
    fn fetch(self, extra: HeaderMap, holding: Holding) -> FetchFuture<'static, Body> {
        Box::pin(async move {
            let url = Url::parse(&self.parts.uri.to_string())?;
            let mut request = Request::new(self.parts.method.clone(), url);
            *request.headers_mut() = self.parts.headers.clone();
            with_validators(request.headers_mut(), extra);
            *request.version_mut() = self.parts.version;
            *request.body_mut() = Some(Body::from(self.body));
            let response = self.client.execute(request).await?;
            buffer_response(http::Response::from(response), holding).await
        })
    }

    fn parts(&self) -> &request::Parts {
        &self.parts
    }

    fn parts_mut(&mut self) -> &mut request::Parts {
        &mut self.parts
    }
}

impl From<RequestBody> for Body {
    /// Bytes stay bytes (so reqwest can clone the request); a body streamed on is wrapped as it is.
    fn from(mut body: RequestBody) -> Self {
        match body.take_full() {
            Some(bytes) => Body::from(bytes),
            None => Body::wrap(SyncBody(std::sync::Mutex::new(body))),
        }
    }
}

/// A [`RequestBody`] that is `Sync`, as `reqwest::Body::wrap` asks: polling goes through `Mutex::get_mut`,
/// which takes no lock (only `&self` methods lock, and nothing calls them concurrently).
struct SyncBody(std::sync::Mutex<RequestBody>);

impl http_body::Body for SyncBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let body = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Pin::new(body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .size_hint()
    }
}
