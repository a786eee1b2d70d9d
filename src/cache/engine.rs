//! The transport-agnostic cache engine: look up, decide fresh / stale / miss, coalesce, refresh, store.
//!
//! Adapters (the Tower layer today) turn a request into a [`CacheKey`] plus a [`Fetch`] (how to ask the origin)
//! and call [`Engine::respond`], the one function that holds the cache decision.

use super::body::ResponseBody;
use super::coalesce::{Coalescer, Role};
use super::entry::{Entry, Freshness, storable_headers};
use super::guard::GuardedStore;
use super::key::{CacheKey, KeyConfig};
use super::stats::{Counters, bump};
use super::status::{BypassReason, CacheOutcome, HeaderText, Status, StoreHealth};
use crate::buffer::{Collected, collect_capped, content_length};
use crate::error::{BoxError, SharedError, StoreError};
use bytes::Bytes;
use http::header::{AGE, CACHE_CONTROL};
use http::{HeaderMap, HeaderName, Method, Response, StatusCode, Version, request};
use http_body::Body;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `Cache-Status` header name (RFC 9211).
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A complete response from the origin, small enough to store and share.
#[derive(Debug)]
pub(crate) struct Buffered {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The inner response's extensions (a retry layer's attempt count, ...), handed on with a fresh answer;
    /// never stored.
    pub(crate) extensions: http::Extensions,
}

/// What one origin call produced.
pub(crate) enum Fetched<R> {
    /// The whole response, within the size cap.
    Buffered(Buffered),
    /// A response over the size cap, streamed through to this caller only.
    Streaming(Response<ResponseBody<R>>),
}

/// The future of one origin call; `'static` for background refreshes, borrowing for a caller's own call.
pub(crate) type FetchFuture<'a, R> =
    Pin<Box<dyn Future<Output = Result<Fetched<R>, BoxError>> + Send + 'a>>;

/// The engine's answer to one request, boxed (the miss path).
type AnswerFuture<'a, R> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<R>>, BoxError>> + Send + 'a>>;

/// How an adapter asks the origin for the response to one cached request, from a spawned background
/// refresh: owned, cloneable, `'static`.
pub(crate) trait Fetch<R>: Clone + Send + 'static {
    fn fetch(self) -> FetchFuture<'static, R>;
}

/// How the engine reaches the origin for one request: [`call`](Origin::call) in the caller's own future (it
/// may borrow, as a reqwest-middleware `Next` does), and [`into_refresh`](Origin::into_refresh) for the
/// background refresh of a stale entry. Every [`Fetch`] is an `Origin` that refreshes the same way.
pub(crate) trait Origin<R>: Send {
    type Refresh: Fetch<R>;
    fn call(&mut self) -> FetchFuture<'_, R>;
    fn into_refresh(self) -> Self::Refresh;
}

impl<R, T: Fetch<R>> Origin<R> for T {
    type Refresh = T;

    fn call(&mut self) -> FetchFuture<'_, R> {
        self.clone().fetch()
    }

    fn into_refresh(self) -> T {
        self
    }
}

/// Reads an origin response into a [`Fetched`], buffering at most `max` body bytes.
pub(crate) async fn buffer_response<R>(
    response: Response<R>,
    max: usize,
) -> Result<Fetched<R>, BoxError>
where
    R: Body,
    R::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    if content_length(&parts.headers).is_some_and(|n| n > max as u64) {
        let body = ResponseBody::streaming(None, Box::pin(body));
        return Ok(Fetched::Streaming(Response::from_parts(parts, body)));
    }
    match collect_capped(body, max).await? {
        Collected::Complete(body) => Ok(Fetched::Buffered(Buffered {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
            extensions: parts.extensions,
        })),
        Collected::TooLarge { prefix, rest } => {
            let body = ResponseBody::streaming(Some(prefix), rest);
            Ok(Fetched::Streaming(Response::from_parts(parts, body)))
        }
    }
}

/// Decides per request whether a `POST` is cached.
pub(crate) type PostPredicate = Arc<dyn Fn(&request::Parts) -> bool + Send + Sync>;

/// What the builder configured about what to cache and for how long.
pub(crate) struct Policy {
    pub(crate) fresh_for: Duration,
    pub(crate) stale_for: Duration,
    pub(crate) stale_if_error_for: Duration,
    pub(crate) methods: Vec<Method>,
    pub(crate) post_when: Option<PostPredicate>,
    pub(crate) statuses: Option<Vec<StatusCode>>,
    pub(crate) max_body: usize,
    pub(crate) respect_response_cache_control: bool,
    pub(crate) lease_for: Duration,
    pub(crate) refresh_timeout: Duration,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("fresh_for", &self.fresh_for)
            .field("stale_for", &self.stale_for)
            .field("stale_if_error_for", &self.stale_if_error_for)
            .field("methods", &self.methods)
            .field("post_when", &self.post_when.is_some())
            .field("statuses", &self.statuses)
            .field("max_body", &self.max_body)
            .field(
                "respect_response_cache_control",
                &self.respect_response_cache_control,
            )
            .field("lease_for", &self.lease_for)
            .field("refresh_timeout", &self.refresh_timeout)
            .finish()
    }
}

/// What a request's head alone decides, before its body is read.
pub(crate) struct Screen {
    /// Why the request goes straight to the origin, if it does.
    pub(crate) bypass: Option<BypassReason>,
    /// The request asked for revalidation (`Cache-Control: no-cache`).
    pub(crate) no_cache: bool,
}

impl Policy {
    /// Screens a request for every adapter alike: an uncached method, `no-store`, or a body of `len` bytes
    /// (when known) over the cap bypasses the cache.
    pub(crate) fn screen(&self, parts: &request::Parts, len: Option<u64>) -> Screen {
        let [no_store, no_cache] = request_directives(&parts.headers, &["no-store", "no-cache"]);
        let bypass = if !self.method_cacheable(parts) {
            Some(BypassReason::Method)
        } else if no_store {
            Some(BypassReason::NoStore)
        } else if len.is_some_and(|n| n > self.max_body as u64) {
            Some(BypassReason::RequestTooLarge)
        } else {
            None
        };
        Screen { bypass, no_cache }
    }

    /// Whether requests like this one may be answered from the cache.
    pub(crate) fn method_cacheable(&self, parts: &request::Parts) -> bool {
        if self.methods.contains(&parts.method) {
            return true;
        }
        parts.method == Method::POST && self.post_when.as_ref().is_some_and(|when| when(parts))
    }

    fn status_cacheable(&self, status: StatusCode) -> bool {
        match &self.statuses {
            Some(list) => list.contains(&status),
            None => status.is_success(),
        }
    }

    /// Whether an origin response may be stored.
    pub(super) fn storable(&self, response: &Buffered) -> bool {
        if !self.status_cacheable(response.status) || response.body.len() > self.max_body {
            return false;
        }
        !(self.respect_response_cache_control
            && has_directive(&response.headers, &["no-store", "private"]))
    }
}

/// Whether any `Cache-Control` value of `headers` carries one of `directives`.
pub(crate) fn has_directive<const N: usize>(headers: &HeaderMap, directives: &[&str; N]) -> bool {
    request_directives(headers, directives)
        .iter()
        .any(|&found| found)
}

/// For each of `directives`, whether a `Cache-Control` value of `headers` carries it; one pass over the header.
pub(crate) fn request_directives<const N: usize>(
    headers: &HeaderMap,
    directives: &[&str; N],
) -> [bool; N] {
    let mut found = [false; N];
    let tokens = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.split('=').next().unwrap_or("").trim());
    for token in tokens {
        for (want, hit) in directives.iter().zip(found.iter_mut()) {
            *hit |= token.eq_ignore_ascii_case(want);
        }
    }
    found
}

/// Statuses for which a stored entry inside its stale-if-error window answers instead.
fn is_origin_failure(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// What a coalesced inner call leaves for its waiters.
#[derive(Clone, Debug)]
pub(crate) enum Shared {
    Response(Arc<Buffered>),
    Error(Arc<BoxError>),
    /// The response was too large to share: each waiter calls the origin itself.
    PassThrough,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The state one layer shares with every service it builds.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) policy: Policy,
    pub(crate) keys: KeyConfig,
    pub(crate) store: GuardedStore,
    pub(crate) counters: Arc<Counters>,
    flights: Coalescer<Shared>,
    pub(super) refreshing: Mutex<HashSet<String>>,
}

impl Engine {
    pub(crate) fn new(policy: Policy, keys: KeyConfig, store: GuardedStore) -> Self {
        Engine {
            counters: store.counters.clone(),
            policy,
            keys,
            store,
            flights: Coalescer::default(),
            refreshing: Mutex::new(HashSet::new()),
        }
    }

    /// The cache decision for one request. `revalidate` (request `no-cache`) skips the read.
    ///
    /// The future of a hit is kept small, because its size is paid on every request (allocated, moved, and
    /// brought into cache on whichever core resumes it): this is an async block rather than an `async fn`
    /// (which would hold every argument twice), and the miss path is boxed apart, in [`Engine::miss`].
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future keeps a second copy of its arguments"
    )]
    pub(crate) fn respond<R, O>(
        self: Arc<Self>,
        key: CacheKey,
        revalidate: bool,
        origin: O,
    ) -> impl Future<Output = Result<Response<ResponseBody<R>>, BoxError>> + Send
    where
        R: Body + Send + 'static,
        O: Origin<R>,
    {
        async move {
            let mut health = StoreHealth::Ok;
            let mut fallback = None;
            if !revalidate {
                match self.read(&key).await {
                    Ok(Some(entry)) => {
                        let now = now_ms();
                        match entry.freshness(now) {
                            Freshness::Fresh => {
                                bump(&self.counters.hits);
                                tracing::debug!(
                                    key = key.short(),
                                    outcome = "hit",
                                    "cache decision"
                                );
                                return Ok(cached(entry, now, CacheOutcome::Hit, None));
                            }
                            Freshness::Stale => {
                                bump(&self.counters.stale_hits);
                                let refreshing = self.start_refresh(&key, origin.into_refresh());
                                tracing::debug!(
                                    key = key.short(),
                                    outcome = "stale",
                                    refreshing,
                                    "cache decision"
                                );
                                return Ok(cached(
                                    entry,
                                    now,
                                    CacheOutcome::Stale { refreshing },
                                    None,
                                ));
                            }
                            Freshness::ErrorOnly => fallback = Some(entry),
                            Freshness::Expired => {}
                        }
                    }
                    Ok(None) => {}
                    Err(store_health) => health = store_health,
                }
            }
            self.miss(key, revalidate, origin, fallback, health).await
        }
    }

    /// The miss path: coalesce, call the origin, store. Boxed on its own so that the future of a hit, the path
    /// that must stay cheap, carries none of this state (a smaller future is less to allocate and copy).
    fn miss<'o, R, O>(
        self: Arc<Self>,
        key: CacheKey,
        revalidate: bool,
        mut origin: O,
        fallback: Option<Entry>,
        health: StoreHealth,
    ) -> AnswerFuture<'o, R>
    where
        R: Body + Send + 'static,
        O: Origin<R> + 'o,
    {
        Box::pin(async move {
            let answer = |shared: Shared, collapsed: bool, stored: bool| {
                self.answer(
                    shared,
                    fallback.clone(),
                    collapsed,
                    stored,
                    revalidate,
                    health,
                )
            };
            loop {
                match self.flights.join(key.as_str()) {
                    Role::Leader(leader) => {
                        bump(&self.counters.misses);
                        tracing::debug!(key = key.short(), outcome = "miss", "cache decision");
                        match origin.call().await {
                            Ok(Fetched::Buffered(response)) => {
                                // A store that just failed this request's read is not asked to write: a
                                // request pays at most one store timeout.
                                let stored = health == StoreHealth::Ok
                                    && self.policy.storable(&response)
                                    && self.write(&key, &response).await;
                                let shared = Shared::Response(Arc::new(response));
                                leader.complete(shared.clone());
                                return answer(shared, false, stored);
                            }
                            Ok(Fetched::Streaming(response)) => {
                                leader.complete(Shared::PassThrough);
                                return Ok(self.pass_through(response, revalidate, health));
                            }
                            Err(error) => {
                                let shared = Shared::Error(Arc::new(error));
                                leader.complete(shared.clone());
                                return answer(shared, false, false);
                            }
                        }
                    }
                    Role::Waiter(waiter) => match waiter.wait().await {
                        Some(Shared::PassThrough) => {
                            // Too large to share: this caller asks the origin itself, uncoalesced.
                            bump(&self.counters.misses);
                            return match origin.call().await {
                                Ok(Fetched::Streaming(response)) => {
                                    Ok(self.pass_through(response, revalidate, health))
                                }
                                Ok(Fetched::Buffered(response)) => {
                                    answer(Shared::Response(Arc::new(response)), false, false)
                                }
                                Err(error) => answer(Shared::Error(Arc::new(error)), false, false),
                            };
                        }
                        Some(shared) => {
                            bump(&self.counters.coalesced);
                            return answer(shared, true, false);
                        }
                        // The leader was cancelled: join again (one of the waiters becomes the leader).
                        None => continue,
                    },
                }
            }
        })
    }

    /// Builds the answer to an origin result, falling back to a stale-if-error entry when the origin failed.
    fn answer<R>(
        &self,
        shared: Shared,
        fallback: Option<Entry>,
        collapsed: bool,
        stored: bool,
        revalidate: bool,
        health: StoreHealth,
    ) -> Result<Response<ResponseBody<R>>, BoxError> {
        let now = now_ms();
        // `Some(fwd_status)` when the origin failed: a transport error (no status) or a 500/502/503/504.
        let failure = match &shared {
            Shared::Response(response) if is_origin_failure(response.status) => {
                Some(Some(response.status.as_u16()))
            }
            Shared::Error(_) => Some(None),
            _ => None,
        };
        if let (Some(fwd_status), Some(entry)) =
            (failure, fallback.filter(|e| e.usable_on_error(now)))
        {
            bump(&self.counters.stale_if_error);
            tracing::debug!(outcome = "stale-if-error", "cache decision");
            return Ok(cached(entry, now, CacheOutcome::StaleIfError, fwd_status));
        }
        match shared {
            Shared::Response(response) => {
                let mut status = Status::new(CacheOutcome::Miss { collapsed, stored });
                status.fwd_status = Some(response.status.as_u16());
                status.revalidate = revalidate;
                status.store = health;
                let mut out = Response::new(ResponseBody::full(response.body.clone()));
                *out.status_mut() = response.status;
                *out.version_mut() = response.version;
                *out.headers_mut() = response.headers.clone();
                *out.extensions_mut() = response.extensions.clone();
                decorate(&mut out, &status);
                Ok(out)
            }
            Shared::Error(error) => Err(Box::new(SharedError::new(error))),
            Shared::PassThrough => Err("internal: pass-through result has no body to share".into()),
        }
    }

    fn pass_through<R>(
        &self,
        mut response: Response<ResponseBody<R>>,
        revalidate: bool,
        health: StoreHealth,
    ) -> Response<ResponseBody<R>> {
        let mut status = Status::new(CacheOutcome::Miss {
            collapsed: false,
            stored: false,
        });
        status.fwd_status = Some(response.status().as_u16());
        status.revalidate = revalidate;
        status.store = health;
        decorate(&mut response, &status);
        response
    }

    /// Reads and decodes the entry for `key`. Undecodable values are misses (the next store overwrites them).
    pub(super) async fn read(&self, key: &CacheKey) -> Result<Option<Entry>, StoreHealth> {
        match self.store.call("get", |s| s.get(key.as_str())).await {
            Ok(Some(bytes)) => match Entry::decode(&bytes, key.digest()) {
                Ok(entry) => Ok(Some(entry)),
                Err(error) => {
                    bump(&self.counters.decode_errors);
                    tracing::debug!(
                        key = key.short(),
                        ?error,
                        "undecodable cache entry treated as a miss"
                    );
                    Ok(None)
                }
            },
            Ok(None) => Ok(None),
            Err(StoreError::Unavailable) => Err(StoreHealth::Unavailable),
            Err(_) => Err(StoreHealth::Error),
        }
    }

    /// Stores an origin response under `key`; returns whether the store took it.
    pub(super) async fn write(&self, key: &CacheKey, response: &Buffered) -> bool {
        let Some(headers) = storable_headers(&response.headers) else {
            return false;
        };
        let now = now_ms();
        let fresh_until = now.saturating_add(millis(self.policy.fresh_for));
        let entry = Entry {
            stored_at: now,
            fresh_until,
            stale_until: fresh_until.saturating_add(millis(self.policy.stale_for)),
            stale_if_error_until: fresh_until
                .saturating_add(millis(self.policy.stale_if_error_for)),
            status: response.status,
            headers,
            body: response.body.clone(),
        };
        let ttl = Duration::from_millis(entry.store_ttl_ms(now));
        if ttl.is_zero() {
            return false;
        }
        let value = entry.encode(key.digest());
        let stored = self
            .store
            .call("set", |s| s.set(key.as_str(), value, ttl))
            .await
            .is_ok();
        if stored {
            bump(&self.counters.stores);
        }
        stored
    }
}

/// A response built from a stored entry.
fn cached<R>(
    entry: Entry,
    now: u64,
    outcome: CacheOutcome,
    fwd_status: Option<u16>,
) -> Response<ResponseBody<R>> {
    let mut status = Status::new(outcome);
    status.ttl = Some(entry.ttl_secs(now));
    status.fwd_status = fwd_status;
    let age = entry.age_secs(now);
    let mut response = Response::new(ResponseBody::full(entry.body));
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers;
    let mut text = HeaderText::default();
    let _ = write!(text, "{age}");
    if let Some(age) = text.value() {
        response.headers_mut().insert(AGE, age);
    }
    decorate(&mut response, &status);
    response
}

impl Engine {
    /// Counts and logs a request that bypasses the cache; returns the status its response carries.
    pub(crate) fn bypassed(&self, reason: BypassReason) -> Status {
        bump(&self.counters.bypasses);
        tracing::debug!(
            outcome = "bypass",
            reason = reason.as_str(),
            "cache decision"
        );
        Status::new(CacheOutcome::Bypass(reason))
    }
}

/// Adds `Cache-Status` and the [`CacheOutcome`] extension.
pub(crate) fn decorate<B>(response: &mut Response<B>, status: &Status) {
    response
        .headers_mut()
        .insert(CACHE_STATUS, status.header_value());
    response.extensions_mut().insert(status.outcome);
}
