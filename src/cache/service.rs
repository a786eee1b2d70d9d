//! [`RedisCache`]: the Tower adapter over the cache engine.

use super::body::ResponseBody;
use super::decision::{Action, RequestFacts};
use super::engine::{
    Engine, Fetch, FetchFuture, Finish, Holding, NearProbe, StaleTargets, Steps, buffer_response,
    decorate, with_validators,
};
use super::future::ResponseFuture;
use super::key::short_hex;
use super::stats::{OriginCall, OriginTimer};
use super::status::{BypassReason, CacheOutcome};
use crate::body::RequestBody;
use crate::buffer::{Capped, Ready, call_ready, finish, read_capped, take_ready};
use crate::error::BoxError;
use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, Method, Request, Response, request};
use http_body::Body;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;
use tracing::Instrument;

/// A service that answers from the cache when it can and calls `inner` when it must; built by
/// [`RedisCacheLayer`](super::RedisCacheLayer).
///
/// `poll_ready` is always ready: a hit never needs the inner service, so no inner capacity is reserved. A
/// miss drives a clone of `inner` to readiness and calls it once.
///
/// `call` does the synchronous part of the work itself: it screens the request and, when the body is already
/// whole (a `Full`, a buffered client body, a server body whose bytes have all arrived), takes it and computes
/// the key, so the returned future holds only the store look-up. A body still streaming is read by the future.
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
    S: Service<Request<RequestBody>, Response = Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Send + 'static,
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
        // One span per request: a subscriber sees the key's digest prefix and what the cache did. Made only when
        // some subscriber takes debug spans: a disabled span still costs its callsite checks, and with
        // `tracing`'s `log` feature on (any crate in the build may turn it on), a call to `log` at every step.
        let span = if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::debug_span!(
                "cache",
                method = %request.method(),
                key = tracing::field::Empty,
                outcome = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        // The engine and the inner service are cloned only for a future that needs them: a near hit, answered
        // here, takes no reference count that every core's hits would share.
        let engine = &self.engine;
        let (mut parts, body) = request.into_parts();
        let (mut facts, head, partition) = engine.policy.read_head(&mut parts);
        let action = engine.policy.screen(&facts);
        if let Action::Bypass(reason) = action {
            if head {
                parts.method = Method::HEAD;
            }
            if engine.policy.reads_bypassed_body(&facts, &parts.headers) {
                let (engine, inner) = (engine.clone(), self.inner.clone());
                let read = bypass_read(engine, inner, parts, body, facts, partition, reason);
                return respond_in(span, read);
            }
            let stale = engine.stale_targets(&parts, &facts, partition);
            let request = Request::from_parts(parts, RequestBody::new(body));
            let (engine, inner) = (engine.clone(), self.inner.clone());
            return respond_in(span, bypass(engine, inner, request, reason, stale));
        }
        if action == Action::OnlyIfCachedMiss {
            return ResponseFuture::ready(Ok(engine.only_if_cached_miss()));
        }
        let max = engine.policy.max_body;
        // The work before the store look-up is synchronous whenever the body is already whole (the common
        // case), so it runs here and the future holds only the look-up: less to allocate and carry per hit.
        // A body read from a stream, if at once, is held within the in-flight budget while its bytes live, as one
        // read in parts is; one the budget has no room for takes the way of those, with its claim refused.
        let mut ready = take_ready(body, max);
        let mut refused = None;
        if let Ok(Ready::Arrived(bytes)) = &mut ready {
            let bytes = std::mem::take(bytes);
            let mut claim = engine.budget.claim();
            ready = Ok(if claim.grow(bytes.len()) {
                Ready::Complete(claim.hold(bytes))
            } else {
                refused = Some(claim);
                Ready::Partial {
                    prefix: bytes,
                    rest: RequestBody::empty(),
                }
            });
        }
        match ready {
            // (`Arrived` was claimed above, and comes here as `Complete`.)
            Ok(Ready::Complete(bytes) | Ready::Arrived(bytes)) => {
                // A body in codings that do not undo asks what cannot be read; a form or JSON body may tunnel a
                // write through a `_method` parameter.
                let (content, unkeyed) = engine.policy.read_body(&mut facts, &parts, &bytes);
                if unkeyed {
                    let Some(reason) = engine
                        .policy
                        .bypass_after_body(&facts, BypassReason::Method)
                    else {
                        return ResponseFuture::ready(Ok(engine.only_if_cached_miss()));
                    };
                    if head {
                        parts.method = Method::HEAD;
                    }
                    let stale = engine.stale_targets(&parts, &facts, partition);
                    let request = Request::from_parts(parts, RequestBody::full(bytes));
                    let (engine, inner) = (engine.clone(), self.inner.clone());
                    return respond_in(span, bypass(engine, inner, request, reason, stale));
                }
                let body = content.keyed(&bytes);
                let digest = engine.digest_of(&parts, &mut facts, partition.as_deref(), body);
                let echoed = engine.policy.echoed(&mut facts, &content, &bytes);
                // A near-cache hit is answered here: its future holds the response, nothing to allocate.
                let near = {
                    let _in_span = span.enter();
                    engine.near_answer(&digest, &facts, action, &parts.headers)
                };
                let probe = match near {
                    Ok(response) => {
                        if !span.is_disabled() {
                            span.record("key", short_hex(&digest).as_str());
                            span.record("outcome", CacheOutcome::Hit.as_str());
                        }
                        // The request's own echoed member, a `HEAD`'s answer, the client's own validators and its
                        // `Range`.
                        let response = match Steps::of(&facts, head) {
                            Some(steps) => {
                                engine.finish_with(steps, &parts.headers, echoed.as_ref(), response)
                            }
                            None => response,
                        };
                        return ResponseFuture::ready(Ok(response));
                    }
                    Err(probe) => probe,
                };
                let (engine, inner) = (engine.clone(), self.inner.clone());
                // What the answer needs on its way back (the client's own validators are kept for it: the
                // origin never sees them).
                let finishing = Steps::of(&facts, head)
                    .map(|steps| (engine.clone(), Finish::new(steps, &parts.headers, echoed)));
                let lookup = keyed(
                    engine, inner, parts, bytes, digest, facts, action, probe, &span,
                );
                match finishing {
                    None => respond_in(span, lookup),
                    Some((engine, then)) => finish_in(span, engine, then, lookup),
                }
            }
            Ok(Ready::Partial { prefix, rest }) => {
                let (engine, inner) = (engine.clone(), self.inner.clone());
                let buffered = async move {
                    // What is read from the stream is held within the in-flight budget, for as long as the
                    // bytes live (the origin call, a refresh).
                    let mut claim = refused.unwrap_or_else(|| engine.budget.claim());
                    let capped =
                        finish(prefix, rest, max, |n| !claim.refused() && claim.grow(n)).await?;
                    let read = match capped {
                        Capped::Whole(bytes) => {
                            let bytes = claim.hold(bytes);
                            // As for a body read at once, above.
                            let (content, unkeyed) =
                                engine.policy.read_body(&mut facts, &parts, &bytes);
                            if unkeyed {
                                Err((RequestBody::full(bytes), BypassReason::Method))
                            } else {
                                Ok((bytes, content))
                            }
                        }
                        // Found to be larger while reading, or past the budget: the request goes on with what
                        // was read chained with the rest of its stream, never held whole.
                        Capped::TooLarge(body) if claim.refused() => {
                            facts.over_budget = true;
                            Err((body, BypassReason::RequestOverBudget))
                        }
                        Capped::TooLarge(body) => {
                            facts.too_large = true;
                            Err((body, BypassReason::RequestTooLarge))
                        }
                        // Found to end with trailers, which no key holds: it goes on whole, trailers and all,
                        // read first for a write it may show, as a bypassed query's body is.
                        Capped::Trailed { body, trailers } => {
                            let body = claim.hold(body);
                            facts.trailers = true;
                            engine.policy.read_body(&mut facts, &parts, &body);
                            let body = RequestBody::trailed(body, trailers);
                            Err((body, BypassReason::RequestTrailers))
                        }
                    };
                    let (bytes, content) = match read {
                        Ok(read) => read,
                        Err((body, fallback)) => {
                            let Some(reason) = engine.policy.bypass_after_body(&facts, fallback)
                            else {
                                return Ok(engine.only_if_cached_miss());
                            };
                            if head {
                                parts.method = Method::HEAD;
                            }
                            // Stale targets only for a write its body showed (a tunnelled method, a body
                            // `query_when` refused) or may hide from `query_when`, unread: any other request
                            // here has a method the layer caches, a query, which makes nothing stale.
                            let stale = engine.stale_targets(&parts, &facts, partition);
                            let request = Request::from_parts(parts, body);
                            return bypass(engine, inner, request, reason, stale).await;
                        }
                    };
                    let span = tracing::Span::current();
                    let body = content.keyed(&bytes);
                    let digest = engine.digest_of(&parts, &mut facts, partition.as_deref(), body);
                    let probe = NearProbe::Unasked;
                    let echoed = engine.policy.echoed(&mut facts, &content, &bytes);
                    drop(content);
                    let finishing = Steps::of(&facts, head)
                        .map(|steps| Finish::new(steps, &parts.headers, echoed));
                    let answer = keyed(
                        engine.clone(),
                        inner,
                        parts,
                        bytes,
                        digest,
                        facts,
                        action,
                        probe,
                        &span,
                    )
                    .await?;
                    Ok(match &finishing {
                        Some(then) => engine.finish(then, answer),
                        None => answer,
                    })
                };
                respond_in(span, buffered)
            }
            Err(error) => ResponseFuture::ready(Err(error)),
        }
    }
}

/// The response future: `future` inside the request's span, which records the outcome. Without a subscriber
/// for the span (the common case in production), just `future`: two wrappers fewer to move and poll per hit.
#[inline]
fn respond_in<R, F>(span: tracing::Span, future: F) -> ResponseFuture<R>
where
    F: Future<Output = Result<Response<ResponseBody<R>>, BoxError>> + Send + 'static,
{
    if span.is_disabled() {
        return ResponseFuture::new(Box::pin(future));
    }
    let recorded = future.inspect(|result| {
        if let Some(outcome) = result.as_ref().ok().and_then(CacheOutcome::of) {
            tracing::Span::current().record("outcome", outcome.as_str());
        }
    });
    ResponseFuture::new(Box::pin(recorded.instrument(span)))
}

/// [`respond_in`] for a request whose answer needs more on its way back ([`Finish`]: a `HEAD` answered as its
/// `GET`, the client's own validators, a `Range`). Apart, and never inlined, so that the call path of every other
/// request stays as small as it was.
#[inline(never)]
fn finish_in<R, F>(
    span: tracing::Span,
    engine: Arc<Engine>,
    then: Finish,
    answer: F,
) -> ResponseFuture<R>
where
    F: Future<Output = Result<Response<ResponseBody<R>>, BoxError>> + Send + 'static,
    R: Body + Send + 'static,
{
    respond_in(span, async move { Ok(engine.finish(&then, answer.await?)) })
}

/// Hands a request whose body is read and whose digest is `digest` to the engine (`action`: what screening
/// its `facts` said; `probe`: what the near cache said, if it was asked).
#[allow(
    clippy::too_many_arguments,
    reason = "the request's state, passed on once from `call`"
)]
fn keyed<S, R>(
    engine: Arc<Engine>,
    inner: S,
    parts: request::Parts,
    body: Bytes,
    digest: [u8; 32],
    facts: RequestFacts,
    action: Action,
    probe: NearProbe,
    span: &tracing::Span,
) -> impl Future<Output = Result<Response<ResponseBody<R>>, BoxError>> + Send + 'static
where
    S: Service<Request<RequestBody>, Response = Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    R: Body + Send + 'static,
    R::Error: Into<BoxError>,
{
    let key = engine.keys.key_of(digest);
    if !span.is_disabled() {
        span.record("key", key.short());
    }
    let fetch = TowerFetch { inner, parts, body };
    engine.respond(key, facts, action, fetch, probe)
}

/// Calls `inner` for a request the cache takes no part in; then removes the entries it made `stale`, if any.
async fn bypass<S, R>(
    engine: Arc<Engine>,
    mut inner: S,
    request: Request<RequestBody>,
    reason: BypassReason,
    stale: Option<StaleTargets>,
) -> Result<Response<ResponseBody<R>>, BoxError>
where
    S: Service<Request<RequestBody>, Response = Response<R>>,
    S::Error: Into<BoxError>,
{
    let status = engine.bypassed(reason);
    let timer = OriginTimer::start();
    let called = call_ready(&mut inner, request).await;
    let answered = called.as_ref().ok().map(Response::status);
    timer.stop(&engine.counters, OriginCall::Bypass, answered);
    if let Some(stale) = stale {
        let answer = called
            .as_ref()
            .ok()
            .map(|response| (response.status(), response.headers()));
        engine.invalidate(stale, answer).await;
    }
    let response = called?;
    let (parts, body) = response.into_parts();
    let mut response = Response::from_parts(parts, ResponseBody::streaming(body));
    decorate(&mut response, &status);
    Ok(response)
}

/// [`bypass`] for a query whose body may tunnel a write ([`Policy::reads_bypassed_body`]): the body is read
/// first, within the cap, and the request removes entries if it names one. A body over the cap goes on as the
/// part read chained with the rest, unread, and counts as a write if `query_when` would have judged it (see
/// [`unread_write`]).
///
/// [`Policy::reads_bypassed_body`]: super::engine::Policy::reads_bypassed_body
/// [`unread_write`]: super::decision::unread_write
async fn bypass_read<S, B, R>(
    engine: Arc<Engine>,
    inner: S,
    parts: request::Parts,
    body: B,
    mut facts: RequestFacts,
    partition: Option<Vec<u8>>,
    reason: BypassReason,
) -> Result<Response<ResponseBody<R>>, BoxError>
where
    S: Service<Request<RequestBody>, Response = Response<R>>,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // Held within the in-flight budget while its bytes live, as a keyed request's body is.
    let mut claim = engine.budget.claim();
    let capped = read_capped(body, engine.policy.max_body, |n| claim.grow(n)).await?;
    let body = match capped {
        Capped::Whole(bytes) => {
            let bytes = claim.hold(bytes);
            engine.policy.read_body(&mut facts, &parts, &bytes);
            RequestBody::full(bytes)
        }
        Capped::Trailed { body, trailers } => {
            let body = claim.hold(body);
            engine.policy.read_body(&mut facts, &parts, &body);
            RequestBody::trailed(body, trailers)
        }
        // Unread: counted as a write if `query_when` would have judged it (`unread_write`).
        Capped::TooLarge(body) => {
            facts.too_large = !claim.refused();
            facts.over_budget = claim.refused();
            body
        }
    };
    let stale = engine.stale_targets(&parts, &facts, partition);
    bypass(
        engine,
        inner,
        Request::from_parts(parts, body),
        reason,
        stale,
    )
    .await
}

/// One origin call for a cached request: the inner service, the request head, and its buffered body.
#[derive(Clone)]
struct TowerFetch<S> {
    inner: S,
    parts: request::Parts,
    body: Bytes,
}

impl<S, R> Fetch<R> for TowerFetch<S>
where
    S: Service<Request<RequestBody>, Response = Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    R: Body + Send + 'static,
    R::Error: Into<BoxError>,
{
    fn fetch(self, extra: HeaderMap, holding: Holding) -> FetchFuture<'static, R> {
        Box::pin(async move {
            let mut parts = self.parts;
            with_validators(&mut parts.headers, extra);
            // A query this layer caches (a `POST` it keys by its body) may be asked for again: a retry layer
            // below retries it as it does a `GET`.
            if !crate::retry::is_idempotent(&parts.method) {
                parts.extensions.insert(crate::retry::Idempotent);
            }
            let request = Request::from_parts(parts, RequestBody::from(self.body));
            let mut inner = self.inner;
            let response = call_ready(&mut inner, request).await?;
            buffer_response(response, holding).await
        })
    }

    fn parts(&self) -> &request::Parts {
        &self.parts
    }

    fn parts_mut(&mut self) -> &mut request::Parts {
        &mut self.parts
    }
}
