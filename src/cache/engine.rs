//! The transport-agnostic cache engine: it carries out what [`decide`] says (look up, serve, coalesce, refresh,
//! store); the decision itself lives in [`decision`](super::decision).
//!
//! Adapters (the Tower layer, the reqwest-middleware one) read a request's [`RequestFacts`], bypass what the
//! decision bypasses, and hand the rest to [`Engine::respond`] as a [`CacheKey`] plus an [`Origin`] (how to ask
//! the origin).

use super::background::Background;
use super::body::{ResponseBody, Streamed};
use super::clock::Clock;
use super::coalesce::{Coalescer, Role};
use super::decision::{
    Action, Forward, Fwd, HeaderKinds, Lookup, Part, RequestFacts, ResponseFacts, Rules, Verdict,
    also_stale, decide, invalidates, is_live_stream, is_origin_failure, is_safe, judge,
    may_invalidate, not_modified, only_ignored_cookies, part_of, serve_stale_on_error,
    sets_only_ignored_cookies, unread_write,
};
use super::decode::{self, Content, Readable};
use super::echo::{self, Echoed};
use super::entry::{Entry, Unstored, storable_headers};
use super::fleet::{Lease, LeaseGuard, Turn};
use super::freshness::{
    CacheOverride, OriginSays, Windows, WindowsFn, age_of, merge_headers, validators,
};
use super::guard::GuardedStore;
use super::heads::{self, Kept, Renders};
use super::key::{
    CacheKey, KeyConfig, KeyedBody, WEB_DEFAULT_PORTS, accepts_coding, content_encoded,
    default_ports, foreign_host, learnable, normal_authority, port_colon, short_hex, variant_key,
    vary_digest, vary_names,
};
use super::near::{Fill, FlushCause, Near, Tracking};
use super::refresh::Refreshes;
use super::stats::{Counters, OriginCall, OriginTimer, add, bump, bump_bypass, bump_not_stored};
use super::status::{BypassReason, CacheOutcome, HeaderText, NotStored, Status, StoreHealth};
use super::tags::{Purge, TagsFn};
use super::tunnel;
use super::variants::{Learned, Variants};
use crate::atomic::AtomicU64;
use crate::budget::{ByteBudget, Claim};
use crate::buffer::{Collected, collect_within, content_length};
use crate::error::{BoxError, SharedError, StoreError};
use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, AGE, CONTENT_ENCODING, CONTENT_LANGUAGE, CONTENT_LENGTH, CONTENT_LOCATION,
    CONTENT_RANGE, CONTENT_TYPE, ETAG, HOST, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LOCATION,
    RANGE, SET_COOKIE, TRANSFER_ENCODING, VARY,
};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, Version, request,
};
use http_body::Body;
use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `Cache-Status` header name (RFC 9211).
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A complete response from the origin, small enough to store and share.
#[derive(Debug, Clone)]
pub(crate) struct Buffered {
    pub(crate) status: StatusCode,
    /// The status the origin sent: `status`, or `304` when it confirmed a stored response that this is.
    pub(crate) origin_status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The inner response's extensions (a retry layer's attempt count, ...), handed on with a fresh answer;
    /// never stored.
    pub(crate) extensions: http::Extensions,
    /// The body's share of the in-flight byte budget, given back when the last holder is done with it.
    pub(crate) claim: Option<Arc<Claim>>,
}

impl Buffered {
    /// A stored entry as a response to share with coalesced callers.
    pub(crate) fn from_entry(entry: &Entry) -> Self {
        Buffered {
            status: entry.status,
            origin_status: entry.status,
            version: Version::HTTP_11,
            headers: entry.headers.clone(),
            body: entry.body.clone(),
            extensions: http::Extensions::new(),
            claim: None,
        }
    }
}

/// What became of an answer given to [`Engine::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    Stored,
    /// Not stored because the key's lease was gone: an invalidation or purge ran since the origin was asked (or
    /// the lease was lost). Counted in `stores_fenced`.
    Fenced,
    /// Not stored: no lease to store under, nothing storable, or the store failed.
    No,
    /// Not stored: the answer's windows end at once (`max-age=0, must-revalidate`), nothing to keep.
    Expired,
    /// Not stored: the answer's tag field names more tags than a fill records, or cannot be read.
    Tags,
}

impl Written {
    /// Why the answer was not stored, when the write itself tells (not when it failed, or was not tried).
    pub(super) fn not_stored(self) -> Option<NotStored> {
        match self {
            Written::Expired => Some(NotStored::Expired),
            Written::Fenced => Some(NotStored::Invalidated),
            Written::Tags => Some(NotStored::Tags),
            Written::Stored | Written::No => None,
        }
    }
}

/// What became of a miss's answer, as `Cache-Status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storing {
    /// Another caller's, shared.
    Collapsed,
    Stored,
    /// Not stored; why, when the answer itself was the reason.
    Not(Option<NotStored>),
}

/// The marker an answer not stored for `why` leaves in its entry's place: none after an origin failure (a
/// failing origin is still asked once at a time), an answer [`store_when`](super::RedisCacheLayerBuilder::store_when)
/// refused (an error in a `200`: the next answer may be storable) or an invalidation (a passing event, not the
/// answer's nature).
pub(super) fn marker_for(why: NotStored, status: StatusCode) -> Option<Unstored> {
    match why {
        NotStored::NoStore
        | NotStored::Private
        | NotStored::SetCookie
        | NotStored::VaryStar
        | NotStored::TooLarge
        | NotStored::Trailers
        | NotStored::Stream
        | NotStored::Encoded
        | NotStored::Unordered => Some(Unstored::Alone),
        NotStored::Status if is_origin_failure(status) => None,
        // Shared with coalesced callers, as the origin's answer, but not stored: one that does not decode is
        // likely to be followed by another.
        NotStored::Status | NotStored::Expired | NotStored::Tags | NotStored::Undecodable => {
            Some(Unstored::Shared)
        }
        NotStored::Invalidated | NotStored::Refused => None,
    }
}

/// Whether the store may take a miss's answer: it neither failed this request (its read or the key's lease)
/// nor was skipped. When it was not, the store's trouble is the reason the answer was not stored.
fn store_well(forward: Forward, health: StoreHealth) -> bool {
    forward.store && health == StoreHealth::Ok
}

/// What a request's store read found, for [`Engine::forward`].
struct Read {
    /// The entry, when one decoded.
    entry: Option<Entry>,
    health: StoreHealth,
    /// The in-flight map's count of finished calls when the entry was read (`None`: not read).
    epoch: Option<u64>,
    /// The marker found in the entry's place, if any.
    unstored: Option<Unstored>,
}

impl Read {
    /// Nothing read.
    const NONE: Read = Read {
        entry: None,
        health: StoreHealth::Ok,
        epoch: None,
        unstored: None,
    };
}

/// Where [`Engine::conclude`] leaves a request: answered, or forwarded by the future to await. That future is
/// made before it is awaited, so that the future of a hit keeps no room for anything else across that await.
enum Next<'o, R> {
    Answer(Response<ResponseBody<R>>),
    Forward(AnswerFuture<'o, R>),
}

/// What one origin call produced.
pub(crate) enum Fetched<R> {
    /// The whole response, within the size cap.
    Buffered(Buffered),
    /// A response passed on to this caller only, not stored: over the size cap or ended by trailers (the
    /// reason), or over what the memory budget had left (`None`).
    Streaming(Response<ResponseBody<R>>, Option<NotStored>),
}

/// The future of one origin call; `'static` for background refreshes, borrowing for a caller's own call.
pub(crate) type FetchFuture<'a, R> =
    Pin<Box<dyn Future<Output = Result<Fetched<R>, BoxError>> + Send + 'a>>;

/// The engine's answer to one request, boxed (the miss path).
type AnswerFuture<'a, R> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<R>>, BoxError>> + Send + 'a>>;

/// The status of an origin's answer; `None` when the call failed.
pub(crate) fn status_of<R>(called: &Result<Fetched<R>, BoxError>) -> Option<StatusCode> {
    match called {
        Ok(Fetched::Buffered(response)) => Some(response.status),
        Ok(Fetched::Streaming(response, _)) => Some(response.status()),
        Err(_) => None,
    }
}

/// How an adapter asks the origin for the response to one cached request, from a spawned background
/// refresh: owned, cloneable, `'static`.
pub(crate) trait Fetch<R>: Clone + Send + 'static {
    /// Asks the origin, with `extra` headers (validators of a stored response) in place of the client's own
    /// validators (see [`with_validators`]), and reads the response as `holding` allows.
    fn fetch(self, extra: HeaderMap, holding: Holding) -> FetchFuture<'static, R>;
    /// The request's head (its tags; its headers give the variant a response is stored under).
    fn parts(&self) -> &request::Parts;
    /// The request's head, to change before the fetch.
    fn parts_mut(&mut self) -> &mut request::Parts;

    /// This fetch asking for the whole answer: without the `Range` (and `If-Range`) its client sent. A refresh,
    /// or the fill a range starts, never asks for a part: the entry holds the whole answer, and the cache cuts
    /// the parts its callers ask for.
    fn whole(mut self) -> Self
    where
        Self: Sized,
    {
        let headers = &mut self.parts_mut().headers;
        headers.remove(RANGE);
        headers.remove(IF_RANGE);
        self
    }
}

/// How the engine reaches the origin for one request: [`call`](Origin::call) in the caller's own future (it
/// may borrow, as a reqwest-middleware `Next` does), and [`into_refresh`](Origin::into_refresh) for the
/// background refresh of a stale entry. Every [`Fetch`] is an `Origin` that refreshes the same way.
pub(crate) trait Origin<R>: Send {
    type Refresh: Fetch<R>;
    /// Asks the origin, with `extra` headers (validators of a stored response) in place of the client's own
    /// validators (see [`with_validators`]), and reads the response as `holding` allows.
    fn call(&mut self, extra: HeaderMap, holding: Holding) -> FetchFuture<'_, R>;
    /// The request's head: its tags, and its headers (the variant a response is stored under, and which stored
    /// variant answers).
    fn parts(&self) -> &request::Parts;
    fn into_refresh(self) -> Self::Refresh;
    /// [`into_refresh`](Origin::into_refresh), keeping this origin for the caller's own call: the fill a
    /// range starts beside passing the range on ([`Action::PassAndFill`]).
    fn refresh(&self) -> Self::Refresh;

    /// The request's headers.
    fn headers(&self) -> &HeaderMap {
        &self.parts().headers
    }
}

impl<R, T: Fetch<R>> Origin<R> for T {
    type Refresh = T;

    fn call(&mut self, extra: HeaderMap, holding: Holding) -> FetchFuture<'_, R> {
        self.clone().fetch(extra, holding)
    }

    fn parts(&self) -> &request::Parts {
        Fetch::parts(self)
    }

    fn into_refresh(self) -> T {
        self
    }

    fn refresh(&self) -> T {
        self.clone()
    }
}

/// What the engine may hold of an origin's answer to one request: its body, read whole within the layer's
/// cap and in-flight budget, unless the answer's head shows that holding it would serve nothing.
#[derive(Clone)]
pub(crate) struct Holding {
    engine: Arc<Engine>,
    facts: RequestFacts,
}

impl Holding {
    /// Why an answer with this head goes to its caller as it arrives, never held: too large to hold, a stream
    /// that may never end (held, its caller would wait for ever), or an answer that can be neither stored nor
    /// shared with coalesced callers (`Set-Cookie`, `no-store`, ...: held, it would only keep its caller
    /// waiting). `None`: read it whole, budget permitting.
    fn passed_on(&self, status: StatusCode, headers: &HeaderMap) -> Option<NotStored> {
        let policy = &self.engine.policy;
        if content_length(headers).is_some_and(|n| n > policy.max_body as u64) {
            return Some(NotStored::TooLarge);
        }
        if is_live_stream(headers) {
            return Some(NotStored::Stream);
        }
        // A failing origin's answer is read whole: a stored entry may answer in its place (stale-if-error). A
        // `304` completes the stored entry it confirms, whose head is the one that counts.
        if is_origin_failure(status) || status == StatusCode::NOT_MODIFIED {
            return None;
        }
        let verdict = judge(
            &policy.rules,
            &self.facts,
            &policy.response_facts(status, headers),
        );
        if verdict.share { None } else { verdict.why }
    }
}

/// Reads an origin response into a [`Fetched`]: whole, or passed on from its head as [`Holding`] says; one
/// that passes the cap or the in-flight budget while it is read is streamed through from there.
pub(crate) async fn buffer_response<R>(
    response: Response<R>,
    holding: Holding,
) -> Result<Fetched<R>, BoxError>
where
    R: Body,
    R::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let max = holding.engine.policy.max_body;
    let passed_on = holding.passed_on(parts.status, &parts.headers);
    if passed_on.is_some() {
        let body = ResponseBody::streaming(body);
        return Ok(Fetched::Streaming(
            Response::from_parts(parts, body),
            passed_on,
        ));
    }
    let mut claim = holding.engine.budget.claim();
    // Boxed where a body streamed through stays, so that one allocation serves either way.
    let mut streamed = Streamed::boxed(body);
    match collect_within(Bytes::new(), streamed.as_mut().inner(), max, |n| {
        claim.grow(n)
    })
    .await?
    {
        Collected::Complete(body) => Ok(Fetched::Buffered(Buffered {
            status: parts.status,
            origin_status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
            extensions: parts.extensions,
            claim: Some(Arc::new(claim)),
        })),
        // An entry holds no trailers (RFC 9111 §3.1 lets a cache drop them, but then its hits would differ from
        // this answer): the answer goes to this caller whole, trailers and all, and is not stored.
        Collected::Trailed { body, trailers } => Ok(Fetched::Streaming(
            Response::from_parts(parts, ResponseBody::trailed(body, trailers)),
            Some(NotStored::Trailers),
        )),
        Collected::TooLarge(prefix) => {
            // The caller reads it from here on: the budget holds no part of it. Reading stops past the cap, or
            // at the chunk the budget refused.
            drop(claim);
            let too_large = (prefix.len() > max).then_some(NotStored::TooLarge);
            let body = ResponseBody::streamed(streamed, prefix);
            Ok(Fetched::Streaming(
                Response::from_parts(parts, body),
                too_large,
            ))
        }
    }
}

/// What the builder configured about the near cache.
pub(crate) struct NearConfig {
    pub(crate) max_bytes: u64,
    pub(crate) max_ttl: Duration,
    pub(crate) tracking: Arc<dyn Tracking>,
}

/// What an adapter learned from the near cache before handing a request to [`Engine::respond`].
#[derive(Debug)]
pub(crate) enum NearProbe {
    /// Not asked: there is no near cache, the request is not one the cache reads for, or the adapter leaves
    /// asking to the engine.
    Unasked,
    /// Asked, and it had no fresh entry: the placeholder a read from the store may fill (`None` while the
    /// near cache may not answer).
    Missed(Option<Fill>),
}

/// Decides per request whether a `POST` is cached.
pub(crate) type PostPredicate = Arc<dyn Fn(&request::Parts) -> bool + Send + Sync>;

/// Tells, from its head and body, whether a request the layer would key by its body is a query (see
/// [`query_when`](super::RedisCacheLayerBuilder::query_when)).
pub(crate) type QueryPredicate = Arc<dyn Fn(&request::Parts, &[u8]) -> bool + Send + Sync>;

/// Tells, from its status, headers and body, whether an answer the rules would store is stored (see
/// [`store_when`](super::RedisCacheLayerBuilder::store_when)).
pub(crate) type StorePredicate = Arc<dyn Fn(StatusCode, &HeaderMap, &[u8]) -> bool + Send + Sync>;

/// Names the partition a request belongs to (see
/// [`partition_by`](super::RedisCacheLayerBuilder::partition_by)).
pub(crate) type PartitionFn = Arc<dyn Fn(&request::Parts) -> Option<Vec<u8>> + Send + Sync>;

/// What the builder configured about what to cache and for how long.
pub(crate) struct Policy {
    /// The layer's windows, for requests nothing else chose windows for.
    pub(crate) windows: Windows,
    /// Chooses windows per request.
    pub(crate) windows_for: Option<WindowsFn>,
    /// Names each request's own partition.
    pub(crate) partition_by: Option<PartitionFn>,
    /// Tags requests.
    pub(crate) tags: Option<TagsFn>,
    /// Which fills record their key under their URI's own tag, so that a write to the URI removes entries
    /// whose keys it cannot name.
    pub(crate) uri_tags: UriTags,
    /// The response field that tags answers.
    pub(crate) tags_header: Option<HeaderName>,
    /// Whether answers' `Cache-Groups` tag them, and `Cache-Group-Invalidation` removes groups (RFC 9875).
    pub(crate) cache_groups: bool,
    /// Whether the origin's freshness headers count: for `GET` and `HEAD`, and for other cached methods.
    pub(crate) origin_freshness: bool,
    pub(crate) origin_freshness_others: bool,
    /// The longest windows the origin may set.
    pub(crate) origin_cap: Windows,
    /// Windows for answers with these statuses, over the request's (unless its own extension chose them).
    pub(crate) status_windows: Vec<(StatusCode, Windows)>,
    pub(crate) methods: Vec<Method>,
    /// Whether a `HEAD` is answered as the `GET` of the same request (both methods cached, and not turned off).
    pub(crate) head_as_get: bool,
    /// Whether answers that vary on request headers are kept per variant (see [`variants`](super::variants)):
    /// the layer's [`keep_variants`](super::RedisCacheLayerBuilder::keep_variants), over a store that keeps
    /// tags.
    pub(crate) keep_variants: bool,
    pub(crate) post_when: Option<PostPredicate>,
    pub(crate) query_when: Option<QueryPredicate>,
    pub(crate) store_when: Option<StorePredicate>,
    /// The top-level member of JSON request bodies that answers repeat (see
    /// [`echo_body_field`](super::RedisCacheLayerBuilder::echo_body_field)).
    pub(crate) echo: Option<Box<str>>,
    pub(crate) max_body: usize,
    /// Whether a request's `Cache-Control` and `Pragma` count (see
    /// [`respect_request_cache_control`](super::RedisCacheLayerBuilder::respect_request_cache_control)).
    pub(crate) respect_request_cache_control: bool,
    /// Bodies longer than this are stored compressed (when that saves an eighth); `None`: never.
    pub(crate) compress_above: Option<usize>,
    /// Request headers that count as `Authorization`, those the key always holds, and method overrides.
    pub(crate) header_kinds: HeaderKinds,
    /// Cookies that do not count as credentials ([`ignore_cookies`](super::RedisCacheLayerBuilder::ignore_cookies)).
    pub(crate) ignored_cookies: Box<[String]>,
    pub(crate) rules: Rules,
    pub(crate) lease_for: Duration,
    pub(crate) refresh_timeout: Duration,
    /// How long a miss waits for another process's fill; zero: misses are not collapsed across processes.
    pub(crate) fleet_wait: Duration,
    /// How long a key whose answer was not stored keeps a marker saying so (see [`Unstored`]); zero: never.
    pub(crate) uncacheable_for: Duration,
    /// How long past its last window an entry with a validator is kept, for revalidation only.
    pub(crate) keep_for: Duration,
    /// How often one process of the fleet sweeps the namespace's tag sets; `None`: never on its own.
    pub(crate) tag_sweep_every: Option<Duration>,
    /// The most background refreshes running at once in this layer.
    pub(crate) max_refreshes: usize,
    /// How long a caller waits for another caller's inner call to the same key before making its own.
    pub(crate) coalesced_wait: Duration,
    /// The most body bytes the requests in flight may hold: the responses misses and refreshes read, and the
    /// request bodies read from a stream to key them.
    pub(crate) max_in_flight_bytes: usize,
    /// Whether `query_when`'s refusal of a body read still in its `Content-Encoding` was told.
    pub(crate) warned_encoded_query: AtomicBool,
    /// Whether a query counted as a write for its unread body ([`unread_write`]) was told.
    pub(crate) warned_unread_write: AtomicBool,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("windows", &self.windows)
            .field("windows_for", &self.windows_for.is_some())
            .field("partition_by", &self.partition_by.is_some())
            .field("tags", &self.tags.is_some())
            .field("uri_tags", &self.uri_tags)
            .field("tags_header", &self.tags_header)
            .field("cache_groups", &self.cache_groups)
            .field("origin_freshness", &self.origin_freshness)
            .field("origin_freshness_others", &self.origin_freshness_others)
            .field("origin_cap", &self.origin_cap)
            .field("status_windows", &self.status_windows)
            .field("methods", &self.methods)
            .field("head_as_get", &self.head_as_get)
            .field("keep_variants", &self.keep_variants)
            .field("post_when", &self.post_when.is_some())
            .field("query_when", &self.query_when.is_some())
            .field("store_when", &self.store_when.is_some())
            .field("echo", &self.echo)
            .field("max_body", &self.max_body)
            .field(
                "respect_request_cache_control",
                &self.respect_request_cache_control,
            )
            .field("compress_above", &self.compress_above)
            .field("rules", &self.rules)
            .field("lease_for", &self.lease_for)
            .field("refresh_timeout", &self.refresh_timeout)
            .field("fleet_wait", &self.fleet_wait)
            .field("uncacheable_for", &self.uncacheable_for)
            .field("keep_for", &self.keep_for)
            .field("tag_sweep_every", &self.tag_sweep_every)
            .field("max_refreshes", &self.max_refreshes)
            .field("coalesced_wait", &self.coalesced_wait)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .finish()
    }
}

/// Which fills record their key under their URI's own tag (see [`KeyConfig::uri_tag_key`]), so that a write to
/// the URI (RFC 9111 §4.4: every response stored for it) removes entries whose keys it cannot name. Only where
/// the store keeps tags.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UriTags {
    /// `GET` and `HEAD` fills: where keys hold request headers (`vary_headers`, credentials in the key), a URI
    /// has an entry per variant, and a write names only its own.
    pub(crate) reads: bool,
    /// Fills keyed by their body (`QUERY`, `POST`): a write names none of them. Where the layer caches such a
    /// method.
    pub(crate) queries: bool,
    /// `GET` and `HEAD` fills whose keys hold fields of [`IMPLIED_VARY`](super::key::IMPLIED_VARY)
    /// ([`RequestFacts::implied_vary`]), or their variant's values ([`RequestFacts::variant`]): a write that sends
    /// other values, or none, names other keys. Wherever the store keeps tags.
    pub(crate) implied: bool,
}

impl UriTags {
    /// Whether a fill with `facts` records its key under its URI's tag.
    pub(crate) fn record(self, facts: &RequestFacts) -> bool {
        if facts.get_or_head {
            self.reads || (self.implied && (facts.implied_vary || facts.variant))
        } else {
            self.queries
        }
    }

    /// Whether a write walks its URI's tag.
    pub(crate) fn any(self) -> bool {
        self.reads || self.queries || self.implied
    }
}

impl Policy {
    /// Whether answers may name tags of their own (a tags field, or `Cache-Groups`): fills then read the tag
    /// clock before they ask the origin, and a tag's removal detaches calls in flight.
    pub(crate) fn answer_tags(&self) -> bool {
        self.tags_header.is_some() || self.cache_groups
    }

    /// The facts of a request head, for [`decide`], whether it is a `HEAD` answered as its `GET`, and its own
    /// partition (`None` without [`partition_by`](super::RedisCacheLayerBuilder::partition_by), or when it
    /// named none: then the facts say so). Such a head is turned into that `GET` here, to be keyed, asked of
    /// the origin and stored as one, and its `Range` is ignored (a `HEAD` has no range semantics, RFC 9110
    /// §14.2). A bypass turns it back into a `HEAD`.
    #[inline]
    pub(crate) fn read_head(
        &self,
        parts: &mut request::Parts,
    ) -> (RequestFacts, bool, Option<Vec<u8>>) {
        let head = self.head_as_get(&parts.method);
        if head {
            parts.method = Method::GET;
        }
        let mut facts = self.facts(parts);
        facts.range &= !head;
        let partition = self.partition_of(parts);
        facts.unpartitioned = self.partition_by.is_some() && partition.is_none();
        (facts, head, partition)
    }

    /// The windows an answer (`status`, `headers`) to a request with `facts` is stored for at `now`: the
    /// request's own extension's, else the layer's for that status ([`windows_for_status`]), else the
    /// request's (its route's, or the layer's); none over [`MAX_WINDOW`](super::freshness::MAX_WINDOW), which a
    /// hook or an extension may ask for. Then the origin's headers, where they count: the durations they name
    /// (capped) replace those, unless the request's own extension chose them, and what they forbid
    /// (`no-cache`, `must-revalidate`) holds always.
    ///
    /// [`windows_for_status`]: super::RedisCacheLayerBuilder::windows_for_status
    pub(crate) fn answer_windows(
        &self,
        facts: &RequestFacts,
        status: StatusCode,
        headers: &HeaderMap,
        now: u64,
    ) -> Windows {
        let listed = self
            .status_windows
            .iter()
            .find(|(listed, _)| *listed == status);
        let chosen = match listed {
            Some((_, windows)) if !facts.windows_by_call => *windows,
            _ => facts.windows,
        }
        .bounded();
        if !facts.origin_freshness {
            return chosen;
        }
        let says = OriginSays::read(headers, &self.rules.targeted, now);
        let says = if facts.windows_by_call {
            says.directives_only()
        } else {
            says
        };
        says.windows(chosen, self.origin_cap)
    }

    /// The longest windows an answer to a request with `facts` may be stored for, before the origin's say.
    pub(crate) fn longest_windows(&self, facts: &RequestFacts) -> Windows {
        let statuses = self
            .status_windows
            .iter()
            .filter(|_| !facts.windows_by_call);
        statuses
            .fold(facts.windows, |longest, (_, windows)| {
                longest.longest(*windows)
            })
            .bounded()
    }

    /// The values, as written, of the member of a request body that answers echo, when the layer echoes one
    /// and the body is a JSON object holding it, or a batch some of whose calls do; noted in the request's
    /// `facts` (`echoes`, `echo_order`). Read in its `content` ([`Policy::content`]), given `sent`, the body as
    /// it came.
    #[inline]
    pub(crate) fn echoed(
        &self,
        facts: &mut RequestFacts,
        content: &Content,
        sent: &Bytes,
    ) -> Option<Echoed> {
        let name = self.echo.as_deref()?;
        let echoed = match content {
            Content::Decoded(decoded) => Echoed::copied(decoded, name),
            Content::AsSent | Content::Undecodable => Echoed::of(sent, name),
        }?;
        facts.echoes = true;
        facts.echo_order = echoed.order();
        Some(echoed)
    }

    /// What the layer reads of a request's whole `body` (see [`Content`]): with feature `decompress`, its
    /// `Content-Encoding` undone within the cap. One that does not undo so is noted in `facts`
    /// (`undecodable`): the request is then no query the layer can read, and goes to the origin as it came.
    #[inline]
    pub(crate) fn content(
        &self,
        facts: &mut RequestFacts,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Content {
        let content = Content::of(headers, body, self.max_body);
        facts.undecodable = content == Content::Undecodable;
        content
    }

    /// A request's own partition: `None` without [`partition_by`](super::RedisCacheLayerBuilder::partition_by),
    /// or when it names none.
    #[inline]
    pub(crate) fn partition_of(&self, parts: &request::Parts) -> Option<Vec<u8>> {
        self.partition_by.as_ref().and_then(|name| name(parts))
    }

    /// The facts of a request head, for [`decide`].
    fn facts(&self, parts: &request::Parts) -> RequestFacts {
        let cacheable = self.method_cacheable(parts);
        let mut facts =
            RequestFacts::read(&parts.headers, cacheable, self.max_body, &self.header_kinds);
        if !self.respect_request_cache_control {
            facts.ignore_directives();
        }
        // Cookies the origin never reads (analytics) make no credential.
        if facts.cookie
            && !self.ignored_cookies.is_empty()
            && only_ignored_cookies(&parts.headers, &self.ignored_cookies)
        {
            facts.cookie = false;
        }
        facts.windows = match parts.extensions.get::<CacheOverride>() {
            Some(CacheOverride::Windows(windows)) => {
                facts.windows_by_call = true;
                *windows
            }
            Some(CacheOverride::Skip) => {
                facts.skip = true;
                self.windows
            }
            None => self
                .windows_for
                .as_ref()
                .and_then(|choose| choose(parts))
                .unwrap_or(self.windows),
        };
        // A `Host` that names another authority than the URI's is what the origin may answer by (a client
        // reaching virtual hosts through one address; a server's framework reading `Host` for its links): the
        // key holds it. Looked up only when the request has both.
        facts.implied_vary |= facts.host && foreign_host(&parts.uri, &parts.headers);
        facts.origin_freshness = self.origin_freshness
            && (parts.method == Method::GET
                || parts.method == Method::HEAD
                || self.origin_freshness_others);
        // A method tunnelled through another (a header naming it) is what an origin that honours the header
        // acts on: `read` judged it. One that does not acts on the request's own method, which is a write unless
        // this layer caches it as a query (RFC 9111 §4.4 goes by that method): either is counted.
        let own_unsafe = !is_safe(&parts.method);
        facts.unsafe_method = if facts.method_overridden {
            facts.unsafe_method || (own_unsafe && !cacheable)
        } else {
            own_unsafe
        };
        facts.get_or_head = parts.method == Method::GET || parts.method == Method::HEAD;
        facts.get = parts.method == Method::GET;
        facts.query_method = cacheable && !facts.get_or_head;
        // Frameworks differ in which they read first, the header or the parameter: whichever names a write
        // makes the request one.
        if facts.query_method
            && let Some(names_unsafe) = tunnel::in_query(parts.uri.query())
        {
            facts.tunnel(names_unsafe);
        }
        facts
    }

    /// Whether the `body` of a request with `headers` and `facts` that this layer would key by its body tunnels a
    /// method through a parameter (see [`tunnel`]): then its facts say so, and it is screened again. Not read when
    /// a header or the query already tunnels a write through it.
    #[inline]
    fn tunnels(&self, facts: &mut RequestFacts, headers: &HeaderMap, body: &[u8]) -> bool {
        if !facts.query_method || facts.tunnels_a_write() {
            return false;
        }
        match tunnel::in_body(headers, body) {
            Some(names_unsafe) => {
                facts.tunnel(names_unsafe);
                true
            }
            None => false,
        }
    }

    /// Whether the body of a request with `facts` that this layer would key by its body shows it is no query
    /// after all: it tunnels a method through a `_method` parameter ([`tunnels`](Self::tunnels)), or the
    /// layer's [`query_when`](super::RedisCacheLayerBuilder::query_when) refuses it. Then its facts say so (a
    /// refused `POST` is a write), and it is screened again. Read in its `content` ([`Policy::content`]), given
    /// `sent`, the body as it came.
    #[inline]
    pub(crate) fn screens_body(
        &self,
        facts: &mut RequestFacts,
        parts: &request::Parts,
        content: &Content,
        sent: &[u8],
    ) -> bool {
        let body = content.read(sent);
        if self.tunnels(facts, &parts.headers, body) {
            return true;
        }
        match &self.query_when {
            Some(is_query)
                if facts.query_method && facts.method_cacheable && !is_query(parts, body) =>
            {
                facts.method_cacheable = false;
                facts.not_a_query = true;
                if *content == Content::AsSent && content_encoded(&parts.headers) {
                    warn_encoded_refusal(
                        &self.warned_encoded_query,
                        "`query_when` refused a request body",
                        &parts.headers,
                    );
                }
                true
            }
            _ => false,
        }
    }

    /// Reads a request's whole `body`, as every path that has one does (keyed or not, through the service or the
    /// middleware): its [`content`](Self::content), and in it a write it may show
    /// ([`screens_body`](Self::screens_body)), unless its codings do not undo within the cap (noted in `facts`),
    /// when it is not read, as a body over the cap is not. Returns the content, and whether the body showed that
    /// the request is no query this layer keys: undecodable, or screened out.
    #[inline]
    pub(crate) fn read_body(
        &self,
        facts: &mut RequestFacts,
        parts: &request::Parts,
        body: &[u8],
    ) -> (Content, bool) {
        let content = self.content(facts, &parts.headers, body);
        let unkeyed = facts.undecodable || self.screens_body(facts, parts, &content, body);
        (content, unkeyed)
    }

    /// Whether a request with `facts` and `headers` that goes to the origin unkeyed (bypassed: for its
    /// credentials, say) has its body read, within the cap, before it goes: the body of a query this layer
    /// would key by it may show a write ([`screens_body`](Self::screens_body)), whose success must remove
    /// entries as any write's does. Not when nothing it could name would be removed, or the request is already
    /// known to be a write.
    pub(crate) fn reads_bypassed_body(&self, facts: &RequestFacts, headers: &HeaderMap) -> bool {
        self.rules.invalidate_on_unsafe
            && facts.query_method
            && !facts.too_large
            && !facts.upgrade
            && !facts.tunnels_a_write()
            && (self.query_when.is_some() || tunnel::readable(headers))
    }

    /// The decision for a request whose entry was not read yet: a bypass, [`Action::Read`], or a forward.
    pub(crate) fn screen(&self, facts: &RequestFacts) -> Action {
        decide(&self.rules, facts, Lookup::NotRead, 0)
    }

    /// Why a request [`screen`](Self::screen) let through goes to the origin after all, once its body showed a
    /// reason (`fallback`, unless its facts now give one of their own); `None` when its `only-if-cached` refuses
    /// it instead.
    pub(crate) fn bypass_after_body(
        &self,
        facts: &RequestFacts,
        fallback: BypassReason,
    ) -> Option<BypassReason> {
        match self.screen(facts) {
            Action::Bypass(reason) => Some(reason),
            Action::OnlyIfCachedMiss => None,
            _ => Some(fallback),
        }
    }

    /// Whether a request of `method` is a `HEAD` this layer answers as the `GET` of the same request.
    #[inline]
    pub(crate) fn head_as_get(&self, method: &Method) -> bool {
        self.head_as_get && *method == Method::HEAD
    }

    /// The method a request of `method` is keyed (and its origin asked) as: `GET` for a
    /// [`head_as_get`](Self::head_as_get) `HEAD`, else its own.
    pub(crate) fn keyed_method<'m>(&self, method: &'m Method) -> &'m Method {
        static GET: Method = Method::GET;
        if self.head_as_get(method) {
            &GET
        } else {
            method
        }
    }

    /// What an answer's head says, by this layer's rules: its targeted fields, and cookies it sets that the layer
    /// ignores ([`ignore_cookies`](super::RedisCacheLayerBuilder::ignore_cookies)), which are no reason not to
    /// store it (an entry holds no `Set-Cookie`, and a shared answer passes none on).
    pub(crate) fn response_facts(&self, status: StatusCode, headers: &HeaderMap) -> ResponseFacts {
        let mut facts = ResponseFacts::read(status, headers, &self.rules.targeted);
        if facts.set_cookie
            && !self.ignored_cookies.is_empty()
            && sets_only_ignored_cookies(headers, &self.ignored_cookies)
        {
            facts.set_cookie = false;
        }
        facts
    }

    /// Whether requests like this one may be answered from the cache.
    fn method_cacheable(&self, parts: &request::Parts) -> bool {
        if self.methods.contains(&parts.method) {
            return true;
        }
        parts.method == Method::POST && self.post_when.as_ref().is_some_and(|when| when(parts))
    }
}

/// The request fields that carry the client's own validators: a cache evaluates them itself
/// ([`not_modified`]) and never forwards them, since the origin's `304` would confirm what the client holds,
/// not what the cache may store and share (RFC 9111 §4.3.2).
const CLIENT_VALIDATORS: [HeaderName; 2] = [IF_NONE_MATCH, IF_MODIFIED_SINCE];

/// The headers of an origin call for a cached request: the client's own validators taken out, the cache's
/// `extra` ones (a stored response's, or none) put in.
pub(crate) fn with_validators(headers: &mut HeaderMap, extra: HeaderMap) {
    for name in CLIENT_VALIDATORS {
        headers.remove(name);
    }
    headers.extend(extra);
}

/// The store let the lease `guard` holds go with a write (or it was no longer this holder's): nothing is left to
/// release.
fn released(guard: &mut Option<LeaseGuard>) {
    if let Some(guard) = guard.take() {
        guard.disarm();
    }
}

/// What a request that may make entries stale (see [`Engine::stale_targets`]) needs to name them once it is
/// answered: its target URI and its headers, which key the `GET` and `HEAD` entries of that URI and of those its
/// answer names.
#[derive(Debug)]
pub(crate) struct StaleTargets {
    uri: Uri,
    headers: HeaderMap,
    /// The request's tag sets.
    tag_sets: Vec<String>,
    /// Its own partition.
    partition: Option<Vec<u8>>,
}

/// What a coalesced inner call leaves for its waiters.
#[derive(Clone, Debug)]
pub(crate) enum Shared {
    /// The response, and the digest of the leader's varied headers (a waiter shares it only if its own match).
    Response {
        response: Arc<Buffered>,
        vary: Option<[u8; 32]>,
    },
    Error(Arc<BoxError>),
    /// Each waiter calls the origin itself: the response was too large to hold, or meant for its requester
    /// alone (`Set-Cookie`, `private`, `no-store`, `Vary: *`).
    Uncoalesced,
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The state one layer shares with every service it builds.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) policy: Policy,
    pub(crate) keys: KeyConfig,
    pub(crate) store: GuardedStore,
    pub(crate) counters: Arc<Counters>,
    pub(crate) clock: Arc<Clock>,
    /// The near cache, when the layer has one.
    pub(crate) near: Option<Arc<Near>>,
    pub(super) flights: Coalescer<Shared>,
    pub(super) refreshing: Mutex<Refreshes>,
    /// Bytes of origin responses read into memory by misses and refreshes in flight.
    pub(crate) budget: Arc<ByteBudget>,
    /// The near cache's count of tag marks when this process last ended the sharing of its calls for them.
    marks_seen: AtomicU64,
    /// Refreshes, removals and lease releases running on tasks of their own.
    pub(crate) background: Background,
    /// The request headers this process learned that answers vary on, when the layer keeps variants.
    pub(crate) variants: Option<Variants>,
    /// When this process next looks whether the tag sets are due a sweep.
    pub(crate) sweeps: super::tags::Sweeps,
    /// Whether this layer warned that `store_when` refused an answer it was given still encoded.
    warned_encoded: AtomicBool,
}

impl Engine {
    pub(crate) fn new(
        policy: Policy,
        keys: KeyConfig,
        store: GuardedStore,
        near: Option<NearConfig>,
    ) -> Self {
        let (unguarded, deadlines) = store.unguarded();
        let counters = store.counters.clone();
        let clock = Clock::following(unguarded, deadlines, counters.clone());
        let near = near.map(|config| {
            Arc::new(Near::new(
                keys.namespace_prefix(),
                config.max_bytes,
                config.max_ttl,
                config.tracking,
                counters.clone(),
                clock.clone(),
            ))
        });
        let variants = policy.keep_variants.then(Variants::default);
        let sweeps = super::tags::Sweeps::new(policy.tag_sweep_every);
        Engine {
            budget: ByteBudget::new(policy.max_in_flight_bytes, {
                let counters = counters.clone();
                move || bump(&counters.over_memory_budget)
            }),
            counters,
            policy,
            keys,
            store,
            clock,
            near,
            flights: Coalescer::default(),
            refreshing: Mutex::new(Refreshes::default()),
            marks_seen: AtomicU64::new(0),
            background: Background::default(),
            variants,
            sweeps,
            warned_encoded: AtomicBool::new(false),
        }
    }

    /// The digest of the key the request with `parts`, `facts`, its own `partition` and its whole `body` (as
    /// [`Policy::content`] reads it) is stored under: its primary key's, or, once this process learned that the
    /// answers to that key vary on request headers (see [`variants`](super::variants)), its variant's (and
    /// `facts.variant` is set).
    #[inline]
    pub(crate) fn digest_of(
        &self,
        parts: &request::Parts,
        facts: &mut RequestFacts,
        partition: Option<&[u8]>,
        body: KeyedBody<'_>,
    ) -> [u8; 32] {
        let digest = self.keys.digest_with(
            &parts.method,
            &parts.uri,
            &parts.headers,
            facts.implied_vary,
            partition,
            body,
        );
        match self
            .variants
            .as_ref()
            .and_then(|variants| variants.variant_of(&digest, &parts.headers))
        {
            Some(variant) => {
                facts.variant = true;
                variant
            }
            None => digest,
        }
    }

    /// With answer tags and a near cache: once the near cache has heard of a tag removal (a mark's push, from
    /// any process), no call in flight here is shared any more, since any may answer with that tag. Run before
    /// joining a flight.
    fn catch_up_on_marks(&self) {
        if !self.policy.answer_tags() {
            return;
        }
        if let Some(near) = &self.near {
            let heard = near.marks();
            if self.marks_seen.swap(heard, Ordering::AcqRel) != heard {
                self.flights.detach_all();
            }
        }
    }

    /// Answers one request that the adapter did not bypass (`action`: what [`Policy::screen`] said of its
    /// `facts`, which the adapter asked to see whether to bypass): reads its entry when the decision asks for
    /// it, then serves, serves stale and refreshes, or forwards, as [`decide`] says.
    ///
    /// The future of a hit is kept small, because its size is paid on every request (allocated, moved, and
    /// brought into cache on whichever core resumes it): this is an async block rather than an `async fn`
    /// (which would hold every argument twice), and the forward path is boxed apart, in [`Engine::forward`].
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future keeps a second copy of its arguments"
    )]
    pub(crate) fn respond<R, O>(
        self: Arc<Self>,
        key: CacheKey,
        facts: RequestFacts,
        action: Action,
        origin: O,
        probe: NearProbe,
    ) -> impl Future<Output = Result<Response<ResponseBody<R>>, BoxError>> + Send
    where
        R: Body + Send + 'static,
        O: Origin<R>,
    {
        async move {
            if action != Action::Read {
                return self.forward(key, facts, origin, action, Read::NONE).await;
            }
            let fill = match probe {
                NearProbe::Missed(fill) => fill,
                NearProbe::Unasked if self.near.is_some() => {
                    match self.near_answer(key.digest(), &facts, action, origin.headers()) {
                        Ok(response) => return Ok(response),
                        Err(NearProbe::Missed(fill)) => fill,
                        Err(NearProbe::Unasked) => None,
                    }
                }
                NearProbe::Unasked => {
                    let epoch = self.flights.epoch();
                    let read = self.read_bytes(&key).await;
                    let forward = match self.conclude(key, facts, origin, read, None, epoch) {
                        Next::Answer(response) => return Ok(response),
                        Next::Forward(forward) => forward,
                    };
                    return forward.await;
                }
            };
            self.respond_through(key, facts, origin, fill).await
        }
    }

    /// [`respond`](Self::respond) past a near-cache miss: the store read, with a near-cache placeholder in
    /// flight (`fill`), and the read of a request's own variant once its primary key held another's. Boxed
    /// apart, so that the future of a hit without a near cache does not carry it.
    fn respond_through<'o, R, O>(
        self: Arc<Self>,
        key: CacheKey,
        facts: RequestFacts,
        origin: O,
        fill: Option<Fill>,
    ) -> AnswerFuture<'o, R>
    where
        R: Body + Send + 'static,
        O: Origin<R> + 'o,
    {
        Box::pin(async move {
            let epoch = self.flights.epoch();
            let read = self.read_bytes(&key).await;
            let forward = match self.conclude(key, facts, origin, read, fill, epoch) {
                Next::Answer(response) => return Ok(response),
                Next::Forward(forward) => forward,
            };
            forward.await
        })
    }

    /// Where the layer keeps variants and the answer `found` under the primary key `key` (another variant's
    /// than the request with `headers`) varies on headers it can key by, or is of a type the request's `Accept`
    /// refuses: learns them, and returns the key of the request's own variant. Apart from
    /// [`conclude`](Self::conclude), which every hit runs.
    #[inline(never)]
    fn learn_variants(
        &self,
        key: &CacheKey,
        found: &Entry,
        headers: &HeaderMap,
    ) -> Option<CacheKey> {
        let variants = self.variants.as_ref()?;
        let names =
            learnable(&found.headers, self.keys.keyed_headers()).unwrap_or_else(|| Arc::new([]));
        let variant = variant_key(key.digest(), &names, &found.headers, headers)?;
        variants.learn(
            *key.digest(),
            Learned::new(names, &found.headers, found.vary),
        );
        bump(&self.counters.variant_reads);
        let variant = self.keys.key_of(variant);
        tracing::debug!(
            key = key.short(),
            variant = variant.short(),
            "cache entry of another variant: reading the request's own"
        );
        Some(variant)
    }

    /// What a store read (made in `epoch`) leads to: an answer from the entry (fresh, or stale with a refresh
    /// started), or a forward. Settles the near-cache placeholder `fill`, if any.
    ///
    /// A fresh entry whose head this thread keeps (see [`heads`]) is answered from that head, with the headers
    /// of its latest answer when its `ttl` and `age` are the same: nothing decoded, no header hashed.
    fn conclude<'o, R, O>(
        self: Arc<Self>,
        key: CacheKey,
        mut facts: RequestFacts,
        origin: O,
        read: Result<Option<Bytes>, StoreHealth>,
        fill: Option<Fill>,
        epoch: u64,
    ) -> Next<'o, R>
    where
        R: Body + Send + 'static,
        O: Origin<R> + 'o,
    {
        let now = self.clock.now_ms();
        if fill.is_none()
            && let Ok(Some(bytes)) = &read
            && let Some(response) =
                heads::with_kept(bytes, key.digest(), self.policy.max_body, |kept| {
                    let vary_matches = kept.vary_digest(origin.headers()) == kept.head.vary;
                    let stored = Lookup::Found(kept.head.stored(vary_matches));
                    (decide(&self.policy.rules, &facts, stored, now) == Action::ServeFresh)
                        .then(|| kept_answer(kept, now))
                })
        {
            bump(&self.counters.hits);
            tracing::debug!(key = key.short(), outcome = "hit", "cache decision");
            return Next::Answer(response);
        }
        // A marker in the entry's place: nothing stored, and misses on this key need not wait for each other.
        let mut unstored = None;
        let read = read.map(|read| {
            read.and_then(|bytes| match Unstored::read(&bytes, key.digest()) {
                Some(marker) => {
                    unstored = Some(marker);
                    None
                }
                None => self.decode(&key, &bytes),
            })
        });
        let mut health = StoreHealth::Ok;
        let (entry, lookup) = match read {
            Ok(Some(found)) => {
                let vary_matches = vary_digest(&found.headers, origin.headers()) == found.vary;
                // Another variant's answer at the primary key: this request's own has a key of its own.
                if !vary_matches
                    && !facts.variant
                    && let Some(variant) = self.learn_variants(&key, &found, origin.headers())
                {
                    if let (Some(near), Some(fill)) = (&self.near, fill) {
                        near.abandon_fill(key.digest(), fill);
                    }
                    facts.variant = true;
                    // Its own variant's read, as any other.
                    return Next::Forward(self.respond_through(variant, facts, origin, None));
                }
                let stored = found.stored(vary_matches);
                (Some(found), Lookup::Found(stored))
            }
            Ok(None) => (None, Lookup::Absent),
            Err(store_health) => {
                health = store_health;
                (None, Lookup::Failed)
            }
        };
        let action = decide(&self.policy.rules, &facts, lookup, now);
        if let (Some(near), Some(fill)) = (&self.near, fill) {
            match (action, &entry) {
                (Action::ServeFresh, Some(entry)) => {
                    near.complete_fill(key.digest(), fill, entry, now);
                }
                _ => near.abandon_fill(key.digest(), fill),
            }
        }
        match (action, entry) {
            (Action::ServeFresh, Some(entry)) => {
                bump(&self.counters.hits);
                tracing::debug!(key = key.short(), outcome = "hit", "cache decision");
                Next::Answer(cached(entry, now, CacheOutcome::Hit, None))
            }
            (Action::ServeFreshAndRefresh, Some(entry)) => {
                bump(&self.counters.hits);
                let refreshing = self.start_refresh(&key, facts, origin.into_refresh());
                tracing::debug!(
                    key = key.short(),
                    outcome = "hit",
                    refreshing,
                    "cache decision"
                );
                Next::Answer(if refreshing {
                    refreshing_hit(entry, now)
                } else {
                    cached(entry, now, CacheOutcome::Hit, None)
                })
            }
            (Action::ServeStale, Some(entry)) => {
                bump(&self.counters.stale_hits);
                let refreshing = self.start_refresh(&key, facts, origin.into_refresh());
                tracing::debug!(
                    key = key.short(),
                    outcome = "stale",
                    refreshing,
                    "cache decision"
                );
                let outcome = CacheOutcome::Stale { refreshing };
                Next::Answer(cached(entry, now, outcome, None))
            }
            (Action::PassAndFill, entry) => {
                // Not for a key whose answer was found unstorable: fetched whole, it would not be stored either.
                let filling =
                    unstored.is_none() && self.start_refresh(&key, facts, origin.refresh());
                tracing::debug!(
                    key = key.short(),
                    outcome = "bypass",
                    filling,
                    "cache decision: a range passed on"
                );
                let read = Read {
                    entry,
                    health,
                    epoch: Some(epoch),
                    unstored,
                };
                let bypass = Action::Bypass(BypassReason::Range);
                Next::Forward(self.forward(key, facts, origin, bypass, read))
            }
            (action, entry) => {
                let read = Read {
                    entry,
                    health,
                    epoch: Some(epoch),
                    unstored,
                };
                Next::Forward(self.forward(key, facts, origin, action, read))
            }
        }
    }

    /// Answers from the near cache, at once, when it holds a fresh entry for the request whose digest is
    /// `digest` (`action`: what the request's screening said); otherwise says what [`respond`](Self::respond)
    /// needs to know: [`NearProbe::Missed`] with the placeholder a read from the store may fill (`None` while
    /// the near cache may not answer), or [`NearProbe::Unasked`] when the request is not one the cache reads
    /// for, or there is no near cache.
    pub(crate) fn near_answer<R>(
        &self,
        digest: &[u8; 32],
        facts: &RequestFacts,
        action: Action,
        headers: &HeaderMap,
    ) -> Result<Response<ResponseBody<R>>, NearProbe> {
        let Some(near) = &self.near else {
            return Err(NearProbe::Unasked);
        };
        if action != Action::Read {
            return Err(NearProbe::Unasked);
        }
        near.start();
        let now = self.clock.now_ms();
        let answered = near.with_entry(digest, now, |entry, renders| {
            let vary_matches = vary_digest(&entry.headers, headers) == entry.vary;
            let stored = Lookup::Found(entry.stored(vary_matches));
            if decide(&self.policy.rules, facts, stored, now) != Action::ServeFresh {
                return None;
            }
            Some(near_answer_from(
                AnswerHead::of(entry, now),
                &entry.headers,
                entry.body.clone(),
                renders,
            ))
        });
        if let Some(response) = answered {
            bump(&self.counters.hits);
            bump(&self.counters.near_hits);
            tracing::debug!(
                key = short_hex(digest).as_str(),
                outcome = "hit",
                near = true,
                "cache decision"
            );
            return Ok(response);
        }
        Err(NearProbe::Missed(near.begin_fill(digest, now)))
    }

    /// The forward path: coalesce, call the origin, store. Boxed on its own so that the future of a hit, the
    /// path that must stay cheap, carries none of this state (a smaller future is less to allocate and copy).
    ///
    /// `action` is a [`Forward`]; anything else (a bypass the adapter did not take, an answer without its
    /// entry, neither of which its callers produce) goes to the origin uncached. `read` is what the store read
    /// found.
    fn forward<'o, R, O>(
        self: Arc<Self>,
        key: CacheKey,
        facts: RequestFacts,
        mut origin: O,
        action: Action,
        read: Read,
    ) -> AnswerFuture<'o, R>
    where
        R: Body + Send + 'static,
        O: Origin<R> + 'o,
    {
        Box::pin(async move {
            let forward = match action {
                Action::Forward(forward) => forward,
                Action::Bypass(reason) => return self.bypass(origin, &facts, reason).await,
                Action::OnlyIfCachedMiss => return Ok(self.only_if_cached_miss()),
                _ => return self.bypass(origin, &facts, BypassReason::Method).await,
            };
            let Read {
                entry,
                health,
                epoch,
                unstored,
            } = read;
            if unstored.is_some() {
                bump(&self.counters.uncacheable_misses);
            }
            let baseline = entry.as_ref().map(|e| e.stored_at);
            // The entry this request may revalidate with its validators: the one it read, of its own variant (a
            // miss, or an entry older than the request's `max-age` allows).
            let current = entry
                .clone()
                .filter(|_| matches!(forward.why, Fwd::UriMiss | Fwd::Request));
            let fallback = entry.filter(|_| forward.fallback);
            let answer = |result, kept: Storing| {
                self.answer(result, fallback.clone(), forward, kept, health)
            };
            // A marker may be written when nothing usable was at the key: never over another variant's entry,
            // nor over one a revalidation or stale-if-error could still use.
            let may_mark = forward.why == Fwd::UriMiss
                && forward.store
                && baseline.is_none()
                && !self.policy.uncacheable_for.is_zero();
            loop {
                self.catch_up_on_marks();
                // An answer meant for one requester is not shared: a marked key's callers do not wait for each
                // other in this process either.
                let role = match unstored {
                    Some(Unstored::Alone) => Role::Leader(self.flights.solo(key.as_str())),
                    _ => self.flights.join(key.as_str()),
                };
                match role {
                    Role::Leader(leader) => {
                        // A call for this key may have finished and stored between this request's read and its
                        // joining: then that entry answers, and the origin is not asked twice. (Not after a failed
                        // read: a request pays at most one store timeout.)
                        if forward.why == Fwd::UriMiss
                            && forward.store
                            && epoch.is_some_and(|e| e != self.flights.epoch())
                            && let Some(entry) =
                                self.fresh_entry(&key, &facts, origin.headers()).await
                        {
                            let now = self.clock.now_ms();
                            leader.complete(Shared::Response {
                                response: Arc::new(Buffered::from_entry(&entry)),
                                vary: entry.vary,
                            });
                            bump(&self.counters.hits);
                            return Ok(cached(entry, now, CacheOutcome::Hit, None));
                        }
                        // A revalidation that read nothing yet (`no-cache`): its entry gives the validators, and
                        // is the one a wait for another process must not take for new.
                        let (current, baseline) =
                            if forward.why == Fwd::Request && forward.store && current.is_none() {
                                let read = self.read(&key).await.ok().flatten().filter(|e| {
                                    vary_digest(&e.headers, origin.headers()) == e.vary
                                });
                                let baseline = read.as_ref().map(|e| e.stored_at);
                                (read, baseline)
                            } else {
                                (current.clone(), baseline)
                            };
                        // One origin call per key for the fleet: lead with the key's lease, or wait for the
                        // process that holds it.
                        let (mut lease, health, untaggable) = match self
                            .fleet_turn(
                                &key,
                                &facts,
                                origin.parts(),
                                forward,
                                baseline,
                                unstored.is_none(),
                            )
                            .await
                        {
                            Turn::Answered(entry) => {
                                leader.complete(Shared::Response {
                                    response: Arc::new(Buffered::from_entry(&entry)),
                                    vary: entry.vary,
                                });
                                return Ok(fleet_answer(entry, forward));
                            }
                            Turn::Lead(lease) => (lease, health, false),
                            // A request pays for at most one store failure: no write after this one.
                            Turn::StoreFailed => (None, StoreHealth::Error, false),
                            Turn::Untaggable => (None, health, true),
                        };
                        bump(&self.counters.misses);
                        tracing::debug!(key = key.short(), outcome = "miss", "cache decision");
                        let validators = current
                            .as_ref()
                            .map(|stored| validators(&origin.parts().method, &stored.headers))
                            .unwrap_or_default();
                        let asked = !validators.is_empty();
                        let timer = OriginTimer::start();
                        let called = self
                            .renewing(
                                lease.as_ref().and_then(LeaseGuard::lease),
                                origin.call(validators, self.holding(&facts)),
                                || leader.detach(),
                            )
                            .await;
                        timer.stop(&self.counters, OriginCall::Miss, status_of(&called));
                        // Why the answer was not stored, and its status: what it leaves in the entry's place.
                        let mut not_stored = None;
                        let answered = match called {
                            Ok(Fetched::Buffered(response)) => {
                                let (response, verdict, vary) = self.settle(
                                    current.as_ref().filter(|_| asked),
                                    response,
                                    &facts,
                                    origin.headers(),
                                );
                                // A store that just failed this request's read is not asked to write: a
                                // request pays at most one store timeout.
                                let written = if store_well(forward, health) && verdict.store {
                                    let parts = origin.parts();
                                    let request = (&parts.uri, &parts.headers);
                                    self.write(&key, &response, vary, &facts, request, &mut lease)
                                        .await
                                } else {
                                    Written::No
                                };
                                let kept = match written {
                                    Written::Stored => Storing::Stored,
                                    // Why, when the answer itself is the reason; a store that failed or was
                                    // skipped says so in its own detail.
                                    _ if !store_well(forward, health) => Storing::Not(None),
                                    _ if !verdict.store => Storing::Not(verdict.why),
                                    written @ (Written::Expired
                                    | Written::Fenced
                                    | Written::Tags) => Storing::Not(written.not_stored()),
                                    Written::No if untaggable => {
                                        Storing::Not(Some(NotStored::Tags))
                                    }
                                    Written::No => Storing::Not(None),
                                };
                                if let Storing::Not(Some(why)) = kept {
                                    not_stored = Some((why, response.status));
                                }
                                let response = Arc::new(response);
                                leader.complete(if verdict.share {
                                    Shared::Response {
                                        response: response.clone(),
                                        vary,
                                    }
                                } else {
                                    Shared::Uncoalesced
                                });
                                self.answer(Ok(response), fallback.clone(), forward, kept, health)
                            }
                            Ok(Fetched::Streaming(response, why)) => {
                                leader.complete(Shared::Uncoalesced);
                                // Too large or trailed; not one streamed because the memory budget ran out
                                // for the moment, which the next call may not meet.
                                not_stored = why.map(|why| (why, response.status()));
                                Ok(self.pass_through(response, forward, health, why))
                            }
                            Err(error) => {
                                let error = Arc::new(error);
                                leader.complete(Shared::Error(error.clone()));
                                self.answer(
                                    Err(error),
                                    fallback.clone(),
                                    forward,
                                    Storing::Not(None),
                                    health,
                                )
                            }
                        };
                        if let Some(marker) = not_stored
                            .and_then(|(why, status)| marker_for(why, status))
                            .filter(|_| may_mark && health == StoreHealth::Ok)
                        {
                            self.mark_unstored(&key, marker, &mut lease).await;
                        }
                        // The lease goes after the write (or with it, above): a process waiting on it finds the
                        // entry (or the marker), or (the call failed) takes the lease and tries itself.
                        if let Some(lease) = lease {
                            lease.release().await;
                        }
                        return answered;
                    }
                    Role::Waiter(waiter) => {
                        let shared =
                            match tokio::time::timeout(self.policy.coalesced_wait, waiter.wait())
                                .await
                            {
                                Ok(Some(shared)) => Some(shared),
                                // The leader was cancelled: join again (one of the waiters becomes the leader).
                                Ok(None) => continue,
                                // The leader's call is taking too long (or its future is kept unpolled).
                                Err(_) => {
                                    bump(&self.counters.coalesce_timeouts);
                                    tracing::debug!(
                                        key = key.short(),
                                        "coalesced wait timed out; calling the origin"
                                    );
                                    None
                                }
                            };
                        match shared {
                            Some(Shared::Response { response, vary })
                                if vary_digest(&response.headers, origin.headers()) == vary =>
                            {
                                bump(&self.counters.coalesced);
                                return answer(Ok(response), Storing::Collapsed);
                            }
                            Some(Shared::Error(error)) => {
                                bump(&self.counters.coalesced);
                                return answer(Err(error), Storing::Collapsed);
                            }
                            // Not for this caller (too large, for the leader alone, another variant), or no
                            // answer in time: it asks the origin itself, uncoalesced and unstored.
                            _ => {
                                bump(&self.counters.misses);
                                return match origin
                                    .call(HeaderMap::new(), self.holding(&facts))
                                    .await
                                {
                                    Ok(Fetched::Streaming(response, why)) => {
                                        Ok(self.pass_through(response, forward, health, why))
                                    }
                                    // Unstored as the leader stores; the answer's own reason, if it has one.
                                    Ok(Fetched::Buffered(response)) => {
                                        let why = self.judge(&facts, &response).why;
                                        answer(Ok(Arc::new(response)), Storing::Not(why))
                                    }
                                    Err(error) => answer(Err(Arc::new(error)), Storing::Not(None)),
                                };
                            }
                        }
                    }
                }
            }
        })
    }

    /// Builds the answer to an origin result, falling back to a stale-if-error entry when the origin failed.
    fn answer<R>(
        &self,
        result: Result<Arc<Buffered>, Arc<BoxError>>,
        fallback: Option<Entry>,
        forward: Forward,
        kept: Storing,
        health: StoreHealth,
    ) -> Result<Response<ResponseBody<R>>, BoxError> {
        if let Some(entry) = fallback {
            let now = self.clock.now_ms();
            let status = result.as_ref().ok().map(|r| r.status);
            // Of an answer with a status that is stored (a `404` is no error in a `200`); asked again here, rarely
            // (an entry is in its stale-if-error window): a coalesced caller does not know why the answer it
            // shares was not stored.
            let refused = result.as_ref().is_ok_and(|r| {
                self.policy.rules.statuses.contains(&r.status)
                    && self.refuses(r) == Some(NotStored::Refused)
            });
            if serve_stale_on_error(status, refused, Some(&entry.stored(true)), now) {
                bump(&self.counters.stale_if_error);
                tracing::debug!(outcome = "stale-if-error", "cache decision");
                return Ok(stale_if_error(entry, now, status, refused));
            }
        }
        let response = result.map_err(|error| Box::new(SharedError::new(error)) as BoxError)?;
        let mut status = Status::new(CacheOutcome::Miss {
            collapsed: kept == Storing::Collapsed,
            stored: kept == Storing::Stored,
        });
        status.fwd_status = Some(response.origin_status.as_u16());
        status.fwd = forward.why;
        status.store = health;
        if let Storing::Not(Some(why)) = kept {
            bump_not_stored(&self.counters, why);
            status.not_stored = Some(why);
        }
        let mut out = Response::new(ResponseBody::full(response.body.clone()));
        *out.status_mut() = response.status;
        *out.version_mut() = response.version;
        *out.headers_mut() = response.headers.clone();
        *out.extensions_mut() = response.extensions.clone();
        // Another caller's answer: the cookies it set (only ones the layer ignores, or it would not be shared)
        // were that caller's.
        if kept == Storing::Collapsed {
            out.headers_mut().remove(SET_COOKIE);
        }
        decorate(&mut out, &status);
        Ok(out)
    }

    fn pass_through<R>(
        &self,
        mut response: Response<ResponseBody<R>>,
        forward: Forward,
        health: StoreHealth,
        why: Option<NotStored>,
    ) -> Response<ResponseBody<R>> {
        let mut status = Status::new(CacheOutcome::Miss {
            collapsed: false,
            stored: false,
        });
        status.fwd_status = Some(response.status().as_u16());
        status.fwd = forward.why;
        status.store = health;
        // As for an answer read whole (see `forward`): the answer's own reason when the store was well; a store
        // that failed or was skipped says so in its own detail, and is counted there.
        if let Some(why) = why.filter(|_| store_well(forward, health)) {
            bump_not_stored(&self.counters, why);
            status.not_stored = Some(why);
        }
        decorate(&mut response, &status);
        response
    }

    /// How much of the origin's answer to a request with `facts` may be held.
    pub(super) fn holding(self: &Arc<Self>, facts: &RequestFacts) -> Holding {
        Holding {
            engine: self.clone(),
            facts: *facts,
        }
    }

    /// Calls the origin for a request the cache takes no part in.
    async fn bypass<R, O>(
        self: &Arc<Self>,
        mut origin: O,
        facts: &RequestFacts,
        reason: BypassReason,
    ) -> Result<Response<ResponseBody<R>>, BoxError>
    where
        O: Origin<R>,
    {
        let status = self.bypassed(reason);
        let timer = OriginTimer::start();
        let called = origin.call(HeaderMap::new(), self.holding(facts)).await;
        timer.stop(&self.counters, OriginCall::Bypass, status_of(&called));
        let mut response = match called? {
            Fetched::Streaming(response, _) => response,
            Fetched::Buffered(response) => {
                let mut out = Response::new(ResponseBody::full(response.body));
                *out.status_mut() = response.status;
                *out.version_mut() = response.version;
                *out.headers_mut() = response.headers;
                *out.extensions_mut() = response.extensions;
                out
            }
        };
        decorate(&mut response, &status);
        Ok(response)
    }

    /// The entry for `key` if the decision would serve it fresh to this request.
    async fn fresh_entry(
        &self,
        key: &CacheKey,
        facts: &RequestFacts,
        headers: &HeaderMap,
    ) -> Option<Entry> {
        let entry = self.read(key).await.ok()??;
        let stored = entry.stored(vary_digest(&entry.headers, headers) == entry.vary);
        let now = self.clock.now_ms();
        let fresh = decide(&self.policy.rules, facts, Lookup::Found(stored), now);
        fresh.is_fresh().then_some(entry)
    }

    /// The stored response, renewed, when the origin answered a conditional request with `304` (RFC 9111
    /// §4.3.4: its header fields replace the stored ones, the stored body stays); `response` otherwise.
    /// An origin answer made ready to store and share: a `304` to a conditional request becomes the stored
    /// response it confirms (`asked_with`, the entry whose validators were sent); then the verdict on it and
    /// the digest of the request headers it varies on.
    pub(super) fn settle(
        &self,
        asked_with: Option<&Entry>,
        response: Buffered,
        facts: &RequestFacts,
        request_headers: &HeaderMap,
    ) -> (Buffered, Verdict, Option<[u8; 32]>) {
        let response = match asked_with {
            Some(stored) => self.confirmed(stored, response),
            None => response,
        };
        let response = if facts.echoes {
            self.decoded_for_echo(response, request_headers)
        } else {
            response
        };
        let verdict = self.judge(facts, &response);
        let vary = vary_digest(&response.headers, request_headers);
        (response, verdict, vary)
    }

    /// `response` to a query whose body member the layer echoes, in no coding when it came in one that feature
    /// `decompress` undoes within the cap and the in-flight budget, and the client takes an answer in none
    /// (RFC 9110 §12.5.3): the member can then be set in it, so it is stored and shared as any other answer,
    /// where an encoded one is neither ([`NotStored::Encoded`]). Its `ETag` and digests, which name the encoded
    /// bytes, go with the coding. Its `Vary` names `Accept-Encoding` (the origin chose the coding by it, whether or
    /// not it said so): a request that takes no answer in no coding is another variant, which the origin answers.
    fn decoded_for_echo(&self, response: Buffered, request_headers: &HeaderMap) -> Buffered {
        if !content_encoded(&response.headers)
            || !self.policy.rules.statuses.contains(&response.status)
            // A response that names no coding is one in `identity`.
            || !accepts_coding(request_headers, &HeaderMap::new())
        {
            return response;
        }
        let Readable::Body(Cow::Owned(decoded)) =
            decode::readable(&response.headers, &response.body, self.policy.max_body)
        else {
            return response;
        };
        let mut claim = self.budget.claim();
        if !claim.grow(decoded.len()) {
            return response;
        }
        let mut headers = response.headers;
        headers.remove(CONTENT_ENCODING);
        if !vary_names(&headers).is_some_and(|names| names.contains(&ACCEPT_ENCODING)) {
            headers.append(VARY, HeaderValue::from_static("accept-encoding"));
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(decoded.len()));
        headers.remove(ETAG);
        for name in echo::BYTE_FIELDS {
            headers.remove(name);
        }
        Buffered {
            headers,
            body: Bytes::from(decoded),
            claim: Some(Arc::new(claim)),
            ..response
        }
    }

    /// [`judge`] of `response` to a request with `facts`, by this layer's rules; then, for an answer they would
    /// store, the layer's [`store_when`](super::RedisCacheLayerBuilder::store_when). A refused answer is still
    /// shared: it is no one user's.
    fn judge(&self, facts: &RequestFacts, response: &Buffered) -> Verdict {
        let verdict = judge(
            &self.policy.rules,
            facts,
            &self
                .policy
                .response_facts(response.status, &response.headers),
        );
        let echo = self.policy.echo.as_deref().unwrap_or_default();
        if verdict.share && facts.echoes && content_encoded(&response.headers) {
            // Another request's answer would carry this request's value of the member.
            Verdict {
                store: false,
                share: false,
                why: Some(NotStored::Encoded),
            }
        } else if verdict.share
            && facts.echo_order != 0
            && !echo::in_order(&response.body, echo, facts.echo_order)
        {
            // Another batch's answers would be set place by place, and land at the wrong calls.
            Verdict {
                store: false,
                share: false,
                why: Some(NotStored::Unordered),
            }
        } else if verdict.store
            && let Some(why) = self.refuses(response)
        {
            Verdict {
                store: false,
                why: Some(why),
                ..verdict
            }
        } else {
            verdict
        }
    }

    /// Why the layer's [`store_when`](super::RedisCacheLayerBuilder::store_when) keeps `response` out of the
    /// store, if it does: it refused it ([`NotStored::Refused`]), or could not be given its body decoded
    /// ([`NotStored::Undecodable`]).
    fn refuses(&self, response: &Buffered) -> Option<NotStored> {
        let when = self.policy.store_when.as_ref()?;
        match decode::readable(&response.headers, &response.body, self.policy.max_body) {
            Readable::Body(body) => {
                let refused = !when(response.status, &response.headers, &body);
                if refused && matches!(body, Cow::Borrowed(_)) && content_encoded(&response.headers)
                {
                    warn_encoded_refusal(
                        &self.warned_encoded,
                        "`store_when` refused an answer",
                        &response.headers,
                    );
                }
                refused.then_some(NotStored::Refused)
            }
            Readable::Undecodable => Some(NotStored::Undecodable),
        }
    }

    fn confirmed(&self, stored: &Entry, response: Buffered) -> Buffered {
        if response.status != StatusCode::NOT_MODIFIED {
            return response;
        }
        bump(&self.counters.revalidated);
        let mut headers = stored.headers.clone();
        if let Some(fresh) = storable_headers(&response.headers) {
            merge_headers(&mut headers, fresh);
        }
        // A cookie the `304` sets is its requester's, as a `200`'s would be: passed on to it, so the renewed
        // answer is then neither stored nor shared (the entry stays as it was, and is asked about again).
        for name in [SET_COOKIE, HeaderName::from_static("set-cookie2")] {
            for cookie in response.headers.get_all(&name) {
                headers.append(name.clone(), cookie.clone());
            }
        }
        Buffered {
            status: stored.status,
            origin_status: response.status,
            version: response.version,
            headers,
            body: stored.body.clone(),
            extensions: response.extensions,
            claim: response.claim,
        }
    }

    /// Reads and decodes the entry for `key`. Undecodable values are misses (the next store overwrites them).
    pub(super) async fn read(&self, key: &CacheKey) -> Result<Option<Entry>, StoreHealth> {
        let read = self.read_bytes(key).await?;
        Ok(read.and_then(|bytes| self.decode(key, &bytes)))
    }

    /// Reads the stored bytes of the entry for `key`.
    pub(super) async fn read_bytes(&self, key: &CacheKey) -> Result<Option<Bytes>, StoreHealth> {
        match self.store.get(key.as_str()).await {
            Ok(read) => Ok(read),
            Err(StoreError::Unavailable) => Err(StoreHealth::Unavailable),
            Err(_) => Err(StoreHealth::Error),
        }
    }

    /// The keys a request with `headers` whose primary key is `primary` may have its entry under: `primary`,
    /// and its variant's key where answers are kept per variant and those to `primary` vary on request headers,
    /// or the request's `Accept` refuses the type of the one stored there (as this process learned, or as the
    /// entry stored under `primary` says; see [`variants`](super::variants)).
    ///
    /// # Errors
    ///
    /// The store's, reading the entry under `primary` (unguarded: no breaker, no timeout).
    pub(crate) async fn own_keys(
        &self,
        primary: CacheKey,
        headers: &HeaderMap,
    ) -> Result<Vec<CacheKey>, StoreError> {
        let Some(variants) = &self.variants else {
            return Ok(vec![primary]);
        };
        let variant = match variants.learned_of(primary.digest()) {
            Some(learned) => learned.own_variant(primary.digest(), headers),
            None => self
                .store
                .call_as(false, "get", primary.as_str(), |s| s.get(primary.as_str()))
                .await?
                .and_then(|bytes| {
                    heads::decode(&bytes, primary.digest(), self.policy.max_body).ok()
                })
                .and_then(|entry| {
                    let names = learnable(&entry.headers, self.keys.keyed_headers());
                    variant_key(
                        primary.digest(),
                        names.as_deref().unwrap_or_default(),
                        &entry.headers,
                        headers,
                    )
                }),
        };
        let variant = variant.map(|digest| self.keys.key_of(digest));
        Ok([Some(primary), variant].into_iter().flatten().collect())
    }

    /// Decodes the entry `bytes` read for `key`; `None` (a miss, counted and logged) when they do not decode.
    pub(super) fn decode(&self, key: &CacheKey, bytes: &Bytes) -> Option<Entry> {
        if Unstored::read(bytes, key.digest()).is_some() {
            return None;
        }
        match heads::decode(bytes, key.digest(), self.policy.max_body) {
            Ok(entry) => Some(entry),
            Err(error) => {
                bump(&self.counters.decode_errors);
                tracing::debug!(
                    key = key.short(),
                    ?error,
                    "undecodable cache entry treated as a miss"
                );
                None
            }
        }
    }

    /// Stores an origin response to a request with `facts` under `key`, for the variant `vary`, with the
    /// windows the request chose or the origin's headers set; returns what became of it.
    ///
    /// Only under `lease`, the key's lease taken before the origin was asked, and only while it still holds it
    /// (see [`Store::set_if_leased`]): an invalidation removes the lease before the entry, so an answer the
    /// origin gave before a change is never stored after the change was reported. Without a lease (another
    /// process held it, or the wait for that process gave up) nothing is stored: the holder stores.
    ///
    /// The lease goes with the write ([`Store::set_if_leased_and_release`]): `guard` is emptied once the store
    /// answered that call, and is left for the caller to release otherwise.
    ///
    /// [`Store::set_if_leased`]: super::store::Store::set_if_leased
    /// [`Store::set_if_leased_and_release`]: super::store::Store::set_if_leased_and_release
    pub(super) async fn write(
        &self,
        key: &CacheKey,
        response: &Buffered,
        vary: Option<[u8; 32]>,
        facts: &RequestFacts,
        request: (&Uri, &HeaderMap),
        guard: &mut Option<LeaseGuard>,
    ) -> Written {
        let Some(lease) = guard.as_ref().and_then(LeaseGuard::lease) else {
            return Written::No;
        };
        if response.body.len() > self.policy.max_body {
            return Written::No;
        }
        let Some(headers) = storable_headers(&response.headers) else {
            return Written::No;
        };
        let now = self.clock.now_ms();
        let windows = self
            .policy
            .answer_windows(facts, response.status, &response.headers, now);
        let fresh_until = now.saturating_add(millis(windows.fresh_for()));
        let entry = Entry {
            // When the origin made this response, as far as this cache can tell: so an answer's `Age`, and a
            // request's `max-age`, count the age it already had (an upstream cache's `Age`), RFC 9111 §4.2.3.
            stored_at: now.saturating_sub(millis(age_of(&response.headers))),
            fresh_until,
            stale_until: fresh_until.saturating_add(millis(windows.stale_for())),
            stale_if_error_until: fresh_until.saturating_add(millis(windows.stale_if_error_for())),
            vary,
            status: response.status,
            headers,
            body: response.body.clone(),
        };
        let ttl = Duration::from_millis(entry.store_ttl_ms(now, millis(self.policy.keep_for)));
        if ttl.is_zero() {
            return Written::Expired;
        }
        if let Err(written) = self
            .record_answer_tags(key, response, request, lease, now, ttl)
            .await
        {
            return written;
        }
        let value = entry.encode_with(key.digest(), self.policy.compress_above);
        let (stored_bytes, raw_bytes) = (value.len(), entry.encoded_len());
        let written = self
            .store
            .call("set", key.as_str(), |s| {
                s.set_if_leased_and_release(key.as_str(), value, ttl, &lease.key, &lease.token)
            })
            .await;
        // The entry changed (or may have): the near copy goes; the next read fills it again.
        self.forget(key);
        if written.is_ok() {
            released(guard);
        }
        match written {
            Ok(true) => {
                bump(&self.counters.stores);
                add(&self.counters.stored_bytes, stored_bytes as u64);
                if raw_bytes > stored_bytes {
                    add(
                        &self.counters.compression_saved_bytes,
                        (raw_bytes - stored_bytes) as u64,
                    );
                }
                Written::Stored
            }
            Ok(false) => {
                bump(&self.counters.stores_fenced);
                tracing::debug!(
                    key = key.short(),
                    "answer not stored: the key's lease was removed (an invalidation) or lost meanwhile"
                );
                Written::Fenced
            }
            Err(_) => Written::No,
        }
    }

    /// Leaves `marker` in the place of `key`'s entry for `uncacheable_for`, under the lease `guard` holds as an
    /// entry is stored (an invalidation since the origin was asked removes the lease first, and then nothing is
    /// written), and with the lease going as [`write`](Self::write)'s does.
    pub(super) async fn mark_unstored(
        &self,
        key: &CacheKey,
        marker: Unstored,
        guard: &mut Option<LeaseGuard>,
    ) {
        let Some(lease) = guard.as_ref().and_then(LeaseGuard::lease) else {
            return;
        };
        let value = marker.encode(key.digest());
        let ttl = self.policy.uncacheable_for;
        let written = self
            .store
            .call("mark", key.as_str(), |s| {
                s.set_if_leased_and_release(key.as_str(), value, ttl, &lease.key, &lease.token)
            })
            .await;
        if written.is_ok() {
            released(guard);
        }
        if let Ok(true) = written {
            bump(&self.counters.uncacheable_marks);
            tracing::debug!(
                key = key.short(),
                ?marker,
                "answer not storable: key marked"
            );
        }
    }

    /// Records the key of an answer about to be stored (`ttl` from `now`) under the tags it needs: its
    /// response's tags, unless a removal marked one since `lease` was taken; and its request's again, if the
    /// origin call outlasted the time they were recorded for. `Err` with what became of the answer when it must
    /// not be stored.
    async fn record_answer_tags(
        &self,
        key: &CacheKey,
        response: &Buffered,
        request: (&Uri, &HeaderMap),
        lease: &Lease,
        now: u64,
        ttl: Duration,
    ) -> Result<(), Written> {
        let lifetime = ttl.saturating_add(self.policy.lease_for);
        if !lease.tag_sets.is_empty() && now.saturating_add(millis(ttl)) > lease.tagged_until {
            match self
                .record_tags(key.as_str(), &lease.tag_sets, lifetime, u64::MAX)
                .await
            {
                Ok(true) => {}
                _ => return Err(Written::No),
            }
        }
        let mut sets = self
            .response_tag_sets(&response.headers, request)
            .map_err(|()| Written::Tags)?;
        sets.retain(|set| !lease.tag_sets.contains(set));
        if sets.is_empty() {
            return Ok(());
        }
        let since = lease.since.ok_or(Written::No)?;
        match self.record_tags(key.as_str(), &sets, lifetime, since).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                bump(&self.counters.stores_fenced);
                tracing::debug!(
                    key = key.short(),
                    "answer not stored: one of its tags was invalidated since the origin was asked"
                );
                Err(Written::Fenced)
            }
            Err(()) => Err(Written::No),
        }
    }

    /// What a request would make stale by succeeding (RFC 9111 §4.4): the entries of its target URI (see
    /// [`uri_entries`](Self::uri_entries)) and those of its tags. `None` unless [`may_invalidate`] says it may.
    /// Read before the request goes on, since the request goes with it.
    pub(crate) fn stale_targets(
        &self,
        parts: &request::Parts,
        facts: &RequestFacts,
        partition: Option<Vec<u8>>,
    ) -> Option<StaleTargets> {
        if !may_invalidate(&self.policy.rules, facts) {
            return None;
        }
        if unread_write(&self.policy.rules, facts)
            && !self
                .policy
                .warned_unread_write
                .swap(true, Ordering::Relaxed)
        {
            let (unread, raise) = if facts.too_large {
                (
                    "was over `max_body_size` (or, through the reqwest middleware, a stream)",
                    "`max_body_size` if queries this large are usual",
                )
            } else if facts.over_budget {
                (
                    "came as a stream while the bodies held for requests in flight filled `max_in_flight_bytes`",
                    "`max_in_flight_bytes` if this is usual",
                )
            } else {
                (
                    "did not decode within `max_body_size`",
                    "`max_body_size` if queries this large are usual",
                )
            };
            tracing::warn!(
                namespace = self.keys.namespace,
                method = %parts.method,
                "a request body for `query_when` to judge {unread}, so it was not read: counted as a write, its \
                 success removes its URI's entries and the queries sent to it; raise {raise}; this is said once"
            );
        }
        Some(StaleTargets {
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            tag_sets: self.tag_sets(parts),
            partition,
        })
    }

    /// Removes the entries of `targets` if what the request that named them was `answered` (its status and headers,
    /// or `None`: no answer) says it may have changed them (see [`invalidates`]), with those of the URIs of its own
    /// origin that the answer's headers name in `Location` and `Content-Location` (see [`also_stale`]): from this
    /// process's near cache, then from the store, which tells every other process. A store call like the others,
    /// under the breaker and the timeout; a failure is counted and logged, never the request's, and the entries
    /// then live out their windows.
    ///
    /// The request's response waits for the removal, so that its caller's next read does not find what its
    /// write replaced. The removal runs on a task of its own: a caller that stops waiting does not stop it, since
    /// the origin has made the change (or may have).
    pub(crate) async fn invalidate(
        self: &Arc<Self>,
        targets: StaleTargets,
        answered: Option<(StatusCode, &HeaderMap)>,
    ) {
        if !invalidates(answered.map(|(status, _)| status)) {
            return;
        }
        let none = HeaderMap::new();
        let headers = answered.map_or(&none, |(_, headers)| headers);
        let host = targets.headers.get(HOST);
        let mut uris = vec![targets.uri.clone()];
        // A method tunnelled through the query acts on the URI without it.
        uris.extend(tunnel::untunnelled(&targets.uri));
        for name in [LOCATION, CONTENT_LOCATION] {
            for named in headers.get_all(name) {
                if let Some(uri) = also_stale(&targets.uri, host, named)
                    && !uris.contains(&uri)
                {
                    uris.push(uri);
                }
            }
        }
        let (keys, uri_sets) =
            self.uri_entries(&uris, &targets.headers, targets.partition.as_deref());
        let mut tag_sets = targets.tag_sets;
        tag_sets.extend(self.invalidated_group_sets(headers, &targets.uri, &targets.headers));
        tag_sets.sort_unstable();
        tag_sets.dedup();
        let engine = self.clone();
        let task = self.background.task();
        // A panic in the removal is the task's alone: the response goes on either way.
        let _ = tokio::spawn(async move {
            let _task = task;
            // The three side by side: the keys the request names, the entries its URIs' tags name, and those of
            // its own tags. Each removes leases before entries: a fill that asked the origin before the change
            // then cannot store its answer after the entry is gone.
            let named = async {
                if !keys.is_empty() && engine.remove_entries(&keys, true).await.is_ok() {
                    bump(&engine.counters.unsafe_invalidations);
                    tracing::debug!(
                        uris = keys.len() / 2,
                        "cache entries of an unsafe request's target removed"
                    );
                }
            };
            let by_uri = async {
                if let Err(error) = engine.purge_uri_tagged(&uri_sets, true, Purge::Remove).await {
                    tracing::debug!(%error, "cache entries of an unsafe request's target not all removed");
                }
            };
            let tagged = async {
                if !tag_sets.is_empty()
                    && let Err(error) = engine.remove_tagged(&tag_sets, true).await
                {
                    tracing::debug!(%error, "cache entries of an unsafe request's tags not all removed");
                }
            };
            futures_util::future::join3(named, by_uri, tagged).await;
        })
        .await;
    }

    /// What names the entries of `uris` for a request with `headers` in `partition` (its own; see
    /// [`Policy::partition_of`]): the keys of their `GET` and `HEAD`, and the tag sets of those URIs where some
    /// fills record themselves (see [`Policy::uri_tags`]), through which variants and queries are found.
    /// Nothing when the layer keys by a partition of each request's own and `partition` is `None`: such a
    /// request names no entry.
    pub(crate) fn uri_entries(
        &self,
        uris: &[Uri],
        headers: &HeaderMap,
        partition: Option<&[u8]>,
    ) -> (Vec<CacheKey>, Vec<String>) {
        if self.policy.partition_by.is_some() && partition.is_none() {
            return (Vec::new(), Vec::new());
        }
        // Keyed as a `GET` and a `HEAD` are: without a body (and so without the `Content-Type` that is part of
        // the key of a request with one). The `HEAD` entries go too when this layer answers a `HEAD` as its
        // `GET`: a process that does not (another setting, an older version mid-deploy) may have stored them.
        let mut keys = Vec::new();
        for uri in uris {
            for (uri, headers) in spellings(uri, headers) {
                for method in [Method::GET, Method::HEAD] {
                    keys.push(self.keys.key_in(
                        &method,
                        &uri,
                        &headers,
                        partition,
                        KeyedBody::sent(b""),
                    ));
                }
            }
        }
        let sets = if self.policy.uri_tags.any() {
            uris.iter()
                .map(|uri| self.keys.uri_tag_key(uri, headers, partition))
                .collect()
        } else {
            Vec::new()
        };
        (keys, sets)
    }

    /// Drops this process's near copy of `key`, if it has a near cache.
    pub(crate) fn forget(&self, key: &CacheKey) {
        if let Some(near) = &self.near {
            near.remove(key.digest());
        }
    }

    /// Empties this process's near cache, if it has one.
    pub(crate) fn forget_all(&self) {
        if let Some(near) = &self.near {
            near.flush(FlushCause::Local);
        }
    }

    /// The answer to a request that said `only-if-cached` when nothing stored may answer it: `504 Gateway
    /// Timeout`, made here; the inner service is not called (RFC 9111 §5.2.1.7).
    pub(crate) fn only_if_cached_miss<R>(&self) -> Response<ResponseBody<R>> {
        bump(&self.counters.only_if_cached_misses);
        tracing::debug!(outcome = "only-if-cached-miss", "cache decision");
        let mut response = Response::new(ResponseBody::full(Bytes::new()));
        *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        decorate(&mut response, &Status::new(CacheOutcome::OnlyIfCachedMiss));
        response
    }

    /// Counts and logs a request that bypasses the cache; returns the status its response carries.
    pub(crate) fn bypassed(&self, reason: BypassReason) -> Status {
        bump_bypass(&self.counters, reason);
        tracing::debug!(
            outcome = "bypass",
            reason = reason.as_str(),
            "cache decision"
        );
        Status::new(CacheOutcome::Bypass(reason))
    }

    /// `response`, or a `304 Not Modified` in its place when the client's validators (`request`: the request's
    /// headers, or the fields a [`Finish`] kept from them) show that it holds that response already
    /// ([`not_modified`]). The `304` keeps the answer's header fields but those that describe a body it no
    /// longer has (RFC 9110 §15.4.5).
    pub(crate) fn validated<B>(
        &self,
        request: &HeaderMap,
        response: Response<ResponseBody<B>>,
    ) -> Response<ResponseBody<B>> {
        if !not_modified(request, response.status(), response.headers()) {
            return response;
        }
        bump(&self.counters.not_modified);
        let (mut parts, _body) = response.into_parts();
        parts.status = StatusCode::NOT_MODIFIED;
        for name in [
            CONTENT_TYPE,
            CONTENT_LENGTH,
            CONTENT_ENCODING,
            CONTENT_LANGUAGE,
            CONTENT_RANGE,
            TRANSFER_ENCODING,
        ] {
            parts.headers.remove(name);
        }
        Response::from_parts(parts, ResponseBody::full(Bytes::new()))
    }
}

/// What an answer still needs before it goes to its caller: the request's own value of an echoed body member
/// ([`echo::echoed`]); then, in the order RFC 9110 §13.2.2 evaluates it, its body dropped, for a `HEAD`
/// answered as its `GET` ([`head_answer`]); the client's own validators evaluated on it
/// ([`Engine::validated`]); then the part of it a `Range` asks for ([`Engine::ranged`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Steps {
    echo: bool,
    head: bool,
    validators: bool,
    range: bool,
}

impl Steps {
    /// The steps the answer to a request with `facts` needs, if any; `head`: it is a `HEAD` answered as its
    /// `GET`.
    #[inline]
    pub(crate) fn of(facts: &RequestFacts, head: bool) -> Option<Steps> {
        (facts.echoes || head || facts.validators || facts.range).then_some(Steps {
            echo: facts.echoes,
            head,
            validators: facts.validators,
            range: facts.range,
        })
    }
}

/// The request fields the [`Steps`] read.
const STEP_FIELDS: [HeaderName; 4] = [IF_NONE_MATCH, IF_MODIFIED_SINCE, RANGE, IF_RANGE];

/// [`Steps`] with the request fields they read, kept for an answer that comes later (the request's head goes
/// on to the origin call).
pub(crate) struct Finish {
    steps: Steps,
    fields: HeaderMap,
    echoed: Option<Echoed>,
}

impl Finish {
    /// `steps`, with the fields they read kept from the request's `headers`, and the value of the body member
    /// the answer echoes, if any.
    pub(crate) fn new(steps: Steps, headers: &HeaderMap, echoed: Option<Echoed>) -> Finish {
        let mut fields = HeaderMap::new();
        for name in STEP_FIELDS {
            for value in headers.get_all(&name) {
                fields.append(name.clone(), value.clone());
            }
        }
        Finish {
            steps,
            fields,
            echoed,
        }
    }
}

impl Engine {
    /// `response` as [`Finish`] says it goes to its caller.
    pub(crate) fn finish<B: Body>(
        &self,
        finish: &Finish,
        response: Response<ResponseBody<B>>,
    ) -> Response<ResponseBody<B>> {
        self.finish_with(
            finish.steps,
            &finish.fields,
            finish.echoed.as_ref(),
            response,
        )
    }

    /// `response` after `steps`, which read the `request` headers and the value of the body member it echoes.
    pub(crate) fn finish_with<B: Body>(
        &self,
        steps: Steps,
        request: &HeaderMap,
        echoed: Option<&Echoed>,
        response: Response<ResponseBody<B>>,
    ) -> Response<ResponseBody<B>> {
        let response = match (steps.echo, self.policy.echo.as_deref(), echoed) {
            (true, Some(name), Some(echoed)) => echo::echoed(name, echoed, response),
            _ => response,
        };
        let response = if steps.head {
            head_answer(response)
        } else {
            response
        };
        let response = if steps.validators {
            self.validated(request, response)
        } else {
            response
        };
        if steps.range {
            self.ranged(request, response)
        } else {
            response
        }
    }

    /// `response`, or the part of it that the `Range` among the `request` headers asks for ([`part_of`]): a
    /// `206 Partial Content` with that slice of the body and its `Content-Range`, or a `416 Range Not
    /// Satisfiable` saying how long the body is. Only a complete body is divided; one streamed through from the
    /// origin goes whole.
    pub(crate) fn ranged<B>(
        &self,
        request: &HeaderMap,
        response: Response<ResponseBody<B>>,
    ) -> Response<ResponseBody<B>> {
        let Some(bytes) = response.body().full_bytes() else {
            return response;
        };
        let len = bytes.len() as u64;
        let (status, range, body) =
            match part_of(request, response.status(), response.headers(), len) {
                Part::Whole => return response,
                // Both ends are within the body, whose length is a `usize`.
                Part::Bytes { first, last } => (
                    StatusCode::PARTIAL_CONTENT,
                    format!("bytes {first}-{last}/{len}"),
                    bytes.slice(first as usize..=last as usize),
                ),
                Part::Unsatisfiable => (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("bytes */{len}"),
                    Bytes::new(),
                ),
            };
        bump(&self.counters.partial);
        let (mut parts, _whole) = response.into_parts();
        parts.status = status;
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            // Nothing of the representation is sent: no field describes it.
            for name in [CONTENT_TYPE, CONTENT_ENCODING, CONTENT_LANGUAGE] {
                parts.headers.remove(name);
            }
        }
        if let Ok(range) = HeaderValue::try_from(range) {
            parts.headers.insert(CONTENT_RANGE, range);
        }
        // The part's length, framed by it alone.
        parts.headers.remove(TRANSFER_ENCODING);
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        Response::from_parts(parts, ResponseBody::full(body))
    }
}

/// The answer to a `HEAD` from the answer to its `GET` (RFC 9110 §9.3.2): the same status and header fields,
/// without the body. When the origin did not say how long that body is, `Content-Length` says it (a complete
/// body's; a body streamed through from the origin is dropped unread, and its length is not known).
fn head_answer<B: Body>(response: Response<ResponseBody<B>>) -> Response<ResponseBody<B>> {
    let (mut parts, body) = response.into_parts();
    let bodiless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if !bodiless
        && !parts.headers.contains_key(CONTENT_LENGTH)
        && !parts.headers.contains_key(TRANSFER_ENCODING)
        // A body passed on from the origin's head (`Set-Cookie`, ...) is not held, but may say how long it is.
        && let Some(len) = body.exact_len()
    {
        parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(parts, ResponseBody::full(Bytes::new()))
}

/// The answer to a request that waited for another process to fill its key: a collapsed miss, fleet-wide.
fn fleet_answer<R>(entry: Entry, forward: Forward) -> Response<ResponseBody<R>> {
    let mut status = Status::new(CacheOutcome::Miss {
        collapsed: true,
        stored: false,
    });
    status.fwd_status = Some(entry.status.as_u16());
    status.fwd = forward.why;
    status.fleet = true;
    let mut response = Response::new(ResponseBody::full(entry.body));
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers;
    decorate(&mut response, &status);
    response
}

/// A response built from a stored entry (`near`: from the near cache).
fn cached<R>(
    entry: Entry,
    now: u64,
    outcome: CacheOutcome,
    fwd_status: Option<u16>,
) -> Response<ResponseBody<R>> {
    let head = AnswerHead::of(&entry, now);
    answer(head, entry.headers, entry.body, outcome, fwd_status)
}

/// The stored `entry` at `now` in place of an origin that failed with `status` (`None`: a transport error) or
/// answered what `store_when` `refused`, which `Cache-Status` says (`detail=response-refused`).
#[cold]
fn stale_if_error<R>(
    entry: Entry,
    now: u64,
    status: Option<StatusCode>,
    refused: bool,
) -> Response<ResponseBody<R>> {
    let head = AnswerHead::of(&entry, now);
    let mut headers = entry.headers;
    let mut cache_status = Status::new(CacheOutcome::StaleIfError);
    cache_status.ttl = Some(head.ttl);
    cache_status.fwd_status = status.map(|s| s.as_u16());
    cache_status.not_stored = refused.then_some(NotStored::Refused);
    set_answer_headers(&mut headers, &cache_status, head.age);
    respond_with(head.status, headers, entry.body, CacheOutcome::StaleIfError)
}

/// A fresh hit at `now` that started the entry's refresh ahead of expiry: `Cache-Status` says
/// `detail=refreshing`.
#[cold]
fn refreshing_hit<R>(entry: Entry, now: u64) -> Response<ResponseBody<R>> {
    let head = AnswerHead::of(&entry, now);
    let mut status = Status::new(CacheOutcome::Hit);
    status.ttl = Some(head.ttl);
    status.refreshing = true;
    let mut headers = entry.headers;
    set_answer_headers(&mut headers, &status, head.age);
    respond_with(head.status, headers, entry.body, CacheOutcome::Hit)
}

/// What an answer from an entry takes from it besides its headers and body.
struct AnswerHead {
    status: StatusCode,
    /// `Cache-Status` `ttl`.
    ttl: i64,
    /// `Age`.
    age: u64,
}

impl AnswerHead {
    fn of(entry: &Entry, now: u64) -> Self {
        AnswerHead {
            status: entry.status,
            ttl: entry.ttl_secs(now),
            age: entry.age_secs(now),
        }
    }
}

/// The answer from a stored entry: `head`, `headers` and `body` (the entry's own), with `Age`, `Cache-Status`
/// and the [`CacheOutcome`] extension added.
fn answer<R>(
    head: AnswerHead,
    mut headers: HeaderMap,
    body: Bytes,
    outcome: CacheOutcome,
    fwd_status: Option<u16>,
) -> Response<ResponseBody<R>> {
    if outcome == CacheOutcome::Hit && fwd_status.is_none() {
        set_hit_headers(&mut headers, head.ttl, head.age);
    } else {
        let mut status = Status::new(outcome);
        status.ttl = Some(head.ttl);
        status.fwd_status = fwd_status;
        set_answer_headers(&mut headers, &status, head.age);
    }
    respond_with(head.status, headers, body, outcome)
}

/// How many `(ttl, age)` pairs a thread keeps the values of.
const HIT_VALUES: usize = 4;

/// A plain hit's `Cache-Status` and `Age` values for one `(ttl, age)`.
struct HitValues {
    ttl: i64,
    age: u64,
    cache_status: HeaderValue,
    age_value: HeaderValue,
}

thread_local! {
    /// The values of a thread's latest plain hits from the store. They change once a second per entry at
    /// most: a thread answering the same entries shares them (a reference count each) instead of formatting
    /// and allocating them again.
    static LATEST_HIT_VALUES: RefCell<[Option<HitValues>; HIT_VALUES]> =
        const { RefCell::new([const { None }; HIT_VALUES]) };
}

/// The `Cache-Status` and `Age` values of a plain hit (from the store, fresh) with `ttl` and `age`.
fn hit_values(ttl: i64, age: u64) -> (HeaderValue, HeaderValue) {
    let make = || {
        let mut status = Status::new(CacheOutcome::Hit);
        status.ttl = Some(ttl);
        answer_values(&status, age)
    };
    let slot = (ttl as u64 ^ age.rotate_left(7)) as usize % HIT_VALUES;
    LATEST_HIT_VALUES
        .try_with(|latest| {
            let mut latest = latest.borrow_mut();
            let kept = &mut latest[slot];
            match kept {
                Some(kept) if kept.ttl == ttl && kept.age == age => {
                    (kept.cache_status.clone(), kept.age_value.clone())
                }
                _ => {
                    let (cache_status, age_value) = make();
                    *kept = Some(HitValues {
                        ttl,
                        age,
                        cache_status: cache_status.clone(),
                        age_value: age_value.clone(),
                    });
                    (cache_status, age_value)
                }
            }
        })
        // The thread is exiting: make them.
        .unwrap_or_else(|_| make())
}

/// The answer from a near entry: its status and `body`, and its headers with `Age` and `Cache-Status`, which
/// `renders` may hold already (a thread's answers from one front slot within one second share them).
fn near_answer_from<R>(
    head: AnswerHead,
    entry_headers: &HeaderMap,
    body: Bytes,
    mut renders: Renders<'_>,
) -> Response<ResponseBody<R>> {
    let headers = renders.headers(head.ttl, head.age, || {
        let mut status = Status::new(CacheOutcome::Hit);
        status.ttl = Some(head.ttl);
        status.near = true;
        // The near entry's headers have room for the two already: the clone takes them without growing.
        let mut headers = entry_headers.clone();
        set_answer_headers(&mut headers, &status, head.age);
        headers
    });
    respond_with(head.status, headers, body, CacheOutcome::Hit)
}

/// A plain hit at `now` answered from a kept head: the headers of the head's latest answer when its `ttl` and
/// `age` were the same, else the head's with `Age` and `Cache-Status` added.
#[inline]
fn kept_answer<R>(kept: Kept<'_>, now: u64) -> Response<ResponseBody<R>> {
    let Kept {
        head: entry,
        body,
        mut renders,
        ..
    } = kept;
    let head = AnswerHead::of(entry, now);
    let headers = renders.headers(head.ttl, head.age, || {
        let mut headers = entry.headers.clone();
        set_hit_headers(&mut headers, head.ttl, head.age);
        headers
    });
    respond_with(head.status, headers, body, CacheOutcome::Hit)
}

/// Sets a plain hit's `Age` and `Cache-Status` (from the store, fresh) for `ttl` and `age`.
///
/// `#[inline]`: without it, the kept-head answer in `conclude` is no longer inlined, which costs a hit about
/// 75 instructions (callgrind).
#[inline]
fn set_hit_headers(headers: &mut HeaderMap, ttl: i64, age: u64) {
    let (cache_status, age) = hit_values(ttl, age);
    headers.insert(AGE, age);
    headers.insert(CACHE_STATUS, cache_status);
}

/// Sets `Age` and `Cache-Status`.
fn set_answer_headers(headers: &mut HeaderMap, status: &Status, age: u64) {
    let (cache_status, age) = answer_values(status, age);
    headers.insert(AGE, age);
    headers.insert(CACHE_STATUS, cache_status);
}

/// The `Cache-Status` and `Age` values of an answer, written into one buffer that both share: one allocation
/// for the two.
fn answer_values(status: &Status, age: u64) -> (HeaderValue, HeaderValue) {
    let mut text = HeaderText::default();
    status.write_to(&mut text);
    let split = text.len();
    text.push_u64(age);
    text.split_values(split).unwrap_or_else(|| {
        let mut text = HeaderText::default();
        text.push_u64(age);
        let age = text.value().unwrap_or(HeaderValue::from_static("0"));
        (status.header_value(), age)
    })
}

/// A response of `status`, `headers` and `body`, with the [`CacheOutcome`] extension.
fn respond_with<R>(
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    outcome: CacheOutcome,
) -> Response<ResponseBody<R>> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.extensions_mut().insert(outcome);
    response
}

/// Adds this cache's `Cache-Status` member and the [`CacheOutcome`] extension to a response from the origin.
pub(crate) fn decorate<B>(response: &mut Response<B>, status: &Status) {
    add_cache_status(response.headers_mut(), status.header_value());
    response.extensions_mut().insert(status.outcome);
}

/// Adds `member` to the `Cache-Status` in `headers`, after the members already there.
///
/// RFC 9211 §2: a cache preserves the field it received, and the member of the cache nearest the client comes
/// last. A response from the origin may carry the members of caches behind it (a CDN, another service with this
/// layer); they stay, joined into one field line, so that `headers()["cache-status"]` shows the whole path.
/// Answers made from an entry start without the field: entries never store it.
pub(crate) fn add_cache_status(headers: &mut HeaderMap, member: HeaderValue) {
    let mut upstream = match headers.entry(CACHE_STATUS) {
        http::header::Entry::Vacant(vacant) => {
            vacant.insert(member);
            return;
        }
        http::header::Entry::Occupied(occupied) => occupied,
    };
    let mut joined = Vec::new();
    for value in upstream.iter() {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            joined.extend_from_slice(value);
            joined.extend_from_slice(b", ");
        }
    }
    joined.extend_from_slice(member.as_bytes());
    // Bytes of header values, joined by ", ": always a valid value. Should that ever fail, the members stay as
    // separate field lines, which mean the same (RFC 9110 §5.3).
    match HeaderValue::from_bytes(&joined) {
        Ok(value) => {
            upstream.insert(value);
        }
        Err(_) => upstream.append(member),
    }
}

/// Every spelling under which a server may have keyed the resource `uri` names, a request with `headers` asking
/// for it. A key holds the scheme and the authority, its host in lowercase and without the scheme's default port
/// (`https://h:443/p` is `https://h/p`), but a server's origin-form request (`/p` with `Host: h`, as HTTP/1.1
/// requests to a server carry it) holds its `Host` port and all: which port is the default is not known there.
/// So the spellings are `uri` itself; for a URI with an authority (`https://h/p`, as HTTP/2 and a client's
/// requests carry it), its origin form under each `Host` that spells that authority; for an origin-form URI with a
/// `Host`, its `http` and `https` forms, and the `Host` on a default port spelled the other ways (`h:443` for `h`).
/// A URI with an authority and a `Host` naming another (see [`foreign_host`]) is also spelled without that `Host`.
/// A write in one spelling thus removes the entries stored under the others.
fn spellings<'a>(uri: &Uri, headers: &'a HeaderMap) -> Vec<(Uri, Cow<'a, HeaderMap>)> {
    let mut forms = vec![(uri.clone(), Cow::Borrowed(headers))];
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let under_host = |host: &str| {
        let origin_form = path.parse::<Uri>().ok()?;
        let host = HeaderValue::from_str(host).ok()?;
        let mut headers = headers.clone();
        headers.insert(HOST, host);
        Some((origin_form, Cow::Owned(headers)))
    };
    match uri.authority() {
        Some(authority) => {
            // A `Host` naming another authority is in the key: the entry stored without one is named too.
            if foreign_host(uri, headers) {
                let mut plain = headers.clone();
                plain.remove(HOST);
                forms.push((uri.clone(), Cow::Owned(plain)));
            }
            let ports = default_ports(uri.scheme_str());
            forms.extend(
                host_spellings(authority.as_str(), ports)
                    .iter()
                    .filter_map(|host| under_host(host)),
            );
        }
        None => {
            let Some(host) = headers.get(HOST).and_then(|host| host.to_str().ok()) else {
                return forms;
            };
            for scheme in ["http", "https"] {
                let absolute = Uri::builder()
                    .scheme(scheme)
                    .authority(host)
                    .path_and_query(path)
                    .build();
                if let Ok(absolute) = absolute {
                    forms.push((absolute, Cow::Borrowed(headers)));
                }
            }
            forms.extend(
                host_spellings(host, WEB_DEFAULT_PORTS)
                    .iter()
                    .filter(|other| !other.eq_ignore_ascii_case(host))
                    .filter_map(|other| under_host(other)),
            );
        }
    }
    forms
}

/// The `Host` fields that spell `authority`: itself on a port other than `defaults`; else its host alone and
/// with each of `defaults` written out (lowercase: a key holds a `Host` so).
fn host_spellings(authority: &str, defaults: &[&str]) -> Vec<String> {
    let bare = normal_authority(authority.as_bytes(), defaults);
    if port_colon(&bare).is_some() {
        return vec![authority.to_owned()];
    }
    let bare = String::from_utf8_lossy(&bare).into_owned();
    let mut hosts: Vec<String> = defaults
        .iter()
        .map(|port| format!("{bare}:{port}"))
        .collect();
    hosts.insert(0, bare);
    hosts
}

/// Tells the operator, once for the layer (`warned` notes that it was told), of `refused`, a predicate's refusal
/// of an answer or a request body it read still in the `Content-Encoding` given by `headers`: a predicate that
/// reads JSON refuses every such body, so the layer may store nothing (`store_when`), or take every query for a
/// write (`query_when`), and only each answer's `detail` would say so.
#[cold]
fn warn_encoded_refusal(warned: &AtomicBool, refused: &str, headers: &HeaderMap) {
    if warned.swap(true, Ordering::Relaxed) {
        return;
    }
    let coding: Vec<&str> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .map(|value| value.to_str().unwrap_or("(not visible ASCII)"))
        .collect();
    let remedy = if cfg!(feature = "decompress") {
        "the `decompress` feature decodes gzip, deflate, br and zstd, not this coding"
    } else {
        "enable tower-redis-cache's `decompress` feature so that it reads gzip, deflate, br and zstd decoded"
    };
    tracing::warn!(
        content_encoding = coding.join(", "),
        "{refused} it read still in its Content-Encoding, perhaps for that alone: {remedy}; this is said once"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_is_spelled_in_every_form_a_server_may_have_keyed_it() {
        let forms = |uri: &str, host: Option<&'static str>| {
            let uri: Uri = uri.parse().unwrap();
            let mut headers = HeaderMap::new();
            if let Some(host) = host {
                headers.insert(HOST, HeaderValue::from_static(host));
            }
            spellings(&uri, &headers)
                .into_iter()
                .map(|(uri, headers)| {
                    let host = headers.get(HOST).map(|host| host.to_str().unwrap_or("?"));
                    format!("{uri} {}", host.unwrap_or("-"))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            forms("https://API.example/p?q=1", None),
            [
                "https://API.example/p?q=1 -",
                "/p?q=1 api.example",
                "/p?q=1 api.example:443",
            ]
        );
        assert_eq!(
            forms("http://api.example:80/p", None),
            [
                "http://api.example:80/p -",
                "/p api.example",
                "/p api.example:80"
            ]
        );
        assert_eq!(
            forms("https://api.example:8443/p", None),
            ["https://api.example:8443/p -", "/p api.example:8443"]
        );
        assert_eq!(
            forms("/p", Some("api.example")),
            [
                "/p api.example",
                "http://api.example/p api.example",
                "https://api.example/p api.example",
                "/p api.example:80",
                "/p api.example:443",
            ]
        );
        assert_eq!(
            forms("/p", Some("api.example:443")),
            [
                "/p api.example:443",
                "http://api.example:443/p api.example:443",
                "https://api.example:443/p api.example:443",
                "/p api.example",
                "/p api.example:80",
            ]
        );
        assert_eq!(forms("/p", None), ["/p -"]);
    }

    #[test]
    fn safe_methods_are_those_rfc_9110_names_and_query() {
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "QUERY"] {
            assert!(
                is_safe(&Method::from_bytes(method.as_bytes()).unwrap()),
                "{method}"
            );
        }
        for method in [
            "POST", "PUT", "PATCH", "DELETE", "CONNECT", "PURGE", "get", "query",
        ] {
            assert!(
                !is_safe(&Method::from_bytes(method.as_bytes()).unwrap()),
                "{method}"
            );
        }
    }

    #[test]
    fn cache_status_members_are_added_after_those_already_there() {
        let ours = HeaderValue::from_static("tower-redis-cache; fwd=uri-miss; stored");
        let field = |upstream: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for value in upstream {
                headers.append(CACHE_STATUS, HeaderValue::from_static(value));
            }
            add_cache_status(&mut headers, ours.clone());
            let lines: Vec<_> = headers.get_all(CACHE_STATUS).iter().cloned().collect();
            assert_eq!(lines.len(), 1, "one field line");
            lines[0].to_str().map(str::to_owned).unwrap_or_default()
        };
        assert_eq!(field(&[]), "tower-redis-cache; fwd=uri-miss; stored");
        assert_eq!(
            field(&["cdn; hit"]),
            "cdn; hit, tower-redis-cache; fwd=uri-miss; stored"
        );
        assert_eq!(
            field(&["origin-cache; fwd=stale", "", " cdn; hit "]),
            "origin-cache; fwd=stale, cdn; hit, tower-redis-cache; fwd=uri-miss; stored"
        );
    }

    #[test]
    fn a_plain_hit_gets_the_values_of_its_own_ttl_and_age() {
        // More pairs than a thread keeps, twice over, in an order that makes them evict each other: every answer
        // must still carry its own pair's values.
        let pairs: Vec<(i64, u64)> = (0..3 * HIT_VALUES as i64)
            .map(|i| (3600 - i, i as u64))
            .chain([(-2, 7), (0, 0), (i64::MAX, u64::MAX)])
            .collect();
        for _ in 0..2 {
            for &(ttl, age) in pairs.iter().chain(pairs.iter().rev()) {
                let (cache_status, age_value) = hit_values(ttl, age);
                assert_eq!(
                    cache_status.to_str().ok(),
                    Some(format!("tower-redis-cache; hit; ttl={ttl}").as_str())
                );
                assert_eq!(age_value.to_str().ok(), Some(age.to_string().as_str()));
            }
        }
    }
}
