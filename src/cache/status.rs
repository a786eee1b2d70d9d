//! How the cache tells the caller what it did: the RFC 9211 `Cache-Status` header, `Age`, and the
//! [`CacheOutcome`] response extension.
//!
//! | outcome | `Cache-Status` |
//! |---|---|
//! | fresh hit | `tower-redis-cache; hit; ttl=12` |
//! | fresh hit from the near cache (no store call) | `tower-redis-cache; hit; ttl=12; detail=near` |
//! | fresh hit that started the refresh ahead of expiry ([`refresh_ahead`](super::RedisCacheLayerBuilder::refresh_ahead)) | `tower-redis-cache; hit; ttl=2; detail=refreshing` |
//! | stale hit, this request started the background refresh | `tower-redis-cache; hit; ttl=-3; detail=refreshing` |
//! | stale hit, a refresh already running here or in another process | `tower-redis-cache; hit; ttl=-3` |
//! | miss | `tower-redis-cache; fwd=uri-miss; fwd-status=200; stored` |
//! | the request's variant missing, another's stored (the response's `Vary`; each variant is then stored under a key of its own, see [`keep_variants`](super::RedisCacheLayerBuilder::keep_variants)) | `tower-redis-cache; fwd=vary-miss; fwd-status=200; stored` |
//! | miss whose answer was not stored, and why | `tower-redis-cache; fwd=uri-miss; fwd-status=200; detail=response-private` (`response-no-store`, `response-set-cookie`, `response-vary-star`, `response-status`: not a cacheable status, `response-too-large`, `response-trailers`: ended by trailers, passed on but not stored, `response-stream`: a live stream, passed on as it arrives, `response-expired`: windows that end at once, `invalidated`: an invalidation ran while the origin worked, `tags`: more tags than a fill records, or an answer's tags that cannot be read, `response-refused`: [`store_when`](super::RedisCacheLayerBuilder::store_when) refused it, `response-encoded`: an encoded answer to a query whose [echoed member](super::RedisCacheLayerBuilder::echo_body_field) it cannot carry, `response-unordered`: a batch's answer that does not list the calls' echoed members in their order, `response-undecodable`: an encoded answer `store_when` could not be given decoded) |
//! | miss answered by another caller's inner call | `tower-redis-cache; fwd=uri-miss; fwd-status=200; collapsed` (and `stored` when that call stored it) |
//! | miss answered by another process's fill, waited for | `tower-redis-cache; fwd=uri-miss; fwd-status=200; collapsed; detail=fleet` |
//! | request `Cache-Control: no-cache`, or an entry older than its `max-age` allows | `tower-redis-cache; fwd=request; fwd-status=200; stored` |
//! | stale-if-error | `tower-redis-cache; fwd=stale; fwd-status=503; ttl=-40` |
//! | stale-if-error after a transport error | `tower-redis-cache; fwd=stale; ttl=-40; detail=transport-error` |
//! | stale-if-error in place of an answer [`store_when`](super::RedisCacheLayerBuilder::store_when) refused | `tower-redis-cache; fwd=stale; fwd-status=200; ttl=-40; detail=response-refused` |
//! | method not cached | `tower-redis-cache; fwd=method; detail=method` (`not-a-query`: a body [`query_when`](super::RedisCacheLayerBuilder::query_when) refused) |
//! | request `Cache-Control: no-store` | `tower-redis-cache; fwd=request; detail=no-store` |
//! | other bypasses | `tower-redis-cache; fwd=bypass; detail=authorization` (`cookie`, `range`, `conditional`, `request-too-large`, `request-over-budget`, `request-trailers`, `request-undecodable`, `upgrade`, `event-stream`, `skipped`, `partition`) |
//! | store failed or skipped | `...; detail=store-error` / `...; detail=store-unavailable` |
//! | request `Cache-Control: only-if-cached`, nothing stored may answer: `504`, the inner service not called | `tower-redis-cache; detail=only-if-cached` |
//!
//! A negative `ttl` says the answer came from the cache after its freshness ended (RFC 9211 §2.3).
//!
//! The member is added after those already in the origin's `Cache-Status` (a CDN's, another layer's), so the
//! field lists every cache on the way with this one last (RFC 9211 §2): `cdn; hit, tower-redis-cache;
//! fwd=uri-miss; fwd-status=200; stored`. An answer from an entry carries this cache's member alone.
//!
//! The header says everything a [`CacheOutcome`] holds, so the outcome travels with the response where an
//! extension does not: across a network hop to a client, through a layer that rebuilds the response.
//! [`CacheOutcome::of`] reads the extension, or else the header; [`CacheOutcome::from_headers`] the header.
//!
//! # Example
//!
//! ```
//! use http::Response;
//! use tower_redis_cache::CacheOutcome;
//!
//! let response = Response::builder()
//!     .header("cache-status", "tower-redis-cache; hit; ttl=-3; detail=refreshing")
//!     .body(())
//!     .unwrap();
//! let outcome = CacheOutcome::of(&response);
//! assert_eq!(outcome, Some(CacheOutcome::Stale { refreshing: true }));
//! assert!(outcome.is_some_and(|o| o.is_cached()));
//! ```

use super::decision::Fwd;
use super::engine::CACHE_STATUS;
use http::{HeaderMap, HeaderValue, Response};

/// What the cache did for one request, inserted as a response extension (and said by `Cache-Status`).
///
/// ```
/// # fn outcome_of<B>(response: &http::Response<B>) -> Option<tower_redis_cache::CacheOutcome> {
/// response.extensions().get::<tower_redis_cache::CacheOutcome>().copied()
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOutcome {
    /// Answered from a fresh entry; the inner service was not called.
    Hit,
    /// Answered at once from a stale entry; `refreshing` is true when this request started the one background
    /// refresh for the key in this process (false when one was already running here, or another process was
    /// found running it within the last second; a refresh started here that finds another process's lease
    /// stops there).
    Stale {
        /// Whether this request started the background refresh.
        refreshing: bool,
    },
    /// Answered by the inner service.
    Miss {
        /// This request waited for another caller's inner call and shares its response.
        collapsed: bool,
        /// The response was written to the store.
        stored: bool,
    },
    /// The cache was not consulted.
    Bypass(BypassReason),
    /// The inner service failed and a stored entry inside its stale-if-error window answered instead.
    StaleIfError,
    /// The request said `Cache-Control: only-if-cached` and nothing stored could answer it: the cache answered
    /// `504 Gateway Timeout` itself, without calling the inner service (RFC 9111 §5.2.1.7).
    OnlyIfCachedMiss,
}

impl CacheOutcome {
    /// What this crate's cache did for `response`: its extension, or else what its `Cache-Status` says (a
    /// response that lost its extensions on the way, or came over the network from a service with this
    /// layer). `None` when neither is there.
    pub fn of<B>(response: &Response<B>) -> Option<Self> {
        match response.extensions().get::<CacheOutcome>() {
            Some(outcome) => Some(*outcome),
            None => Self::from_headers(response.headers()),
        }
    }

    /// What the `Cache-Status` in `headers` says this crate's cache did (a `reqwest::Response`'s headers, a
    /// proxied response's); `None` without a member named `tower-redis-cache` that this crate would write.
    ///
    /// Members of other caches are skipped. Each cache adds its member after those already there (RFC 9211 §2),
    /// so with layers stacked the outermost one's member, the last, is read.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let member = headers
            .get_all(CACHE_STATUS)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(members)
            .filter(|member| member_name(member) == CACHE_NAME)
            .last()?;
        parse_member(member)
    }

    /// A short lower-case name: `hit`, `stale`, `miss`, `bypass`, `stale-if-error` or `only-if-cached-miss`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Stale { .. } => "stale",
            CacheOutcome::Miss { .. } => "miss",
            CacheOutcome::Bypass(_) => "bypass",
            CacheOutcome::StaleIfError => "stale-if-error",
            CacheOutcome::OnlyIfCachedMiss => "only-if-cached-miss",
        }
    }

    /// Whether the response body came from the store.
    pub fn is_cached(&self) -> bool {
        matches!(
            self,
            CacheOutcome::Hit | CacheOutcome::Stale { .. } | CacheOutcome::StaleIfError
        )
    }
}

/// Why a request bypassed the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BypassReason {
    /// The method is not configured as cacheable, or a header tunnels another through it
    /// (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`): the origin acts on the method named,
    /// and a successful one that is not safe removes what that method would.
    Method,
    /// The layer's [`query_when`](super::RedisCacheLayerBuilder::query_when) found the request's body no query
    /// (a GraphQL `mutation`, say): a successful `POST` then removes what a write would.
    NotAQuery,
    /// The request carried `Cache-Control: no-store`.
    NoStore,
    /// The request carried `Authorization` or a credential header, and the layer does not say how users are told
    /// apart (see [`Credentials`](super::Credentials)); or a header no list names whose name says it carries a
    /// credential or names whom the request acts for (a user, their roles, a tenant), which no key holds (see
    /// [`credential_headers`](super::RedisCacheLayerBuilder::credential_headers)).
    Authorization,
    /// The request carried `Cookie`, and the layer does not say how users are told apart.
    Cookie,
    /// The request asked for part of a response (`Range`): on a method other than `GET`, or on a `GET` with no
    /// fresh entry to cut it from.
    Range,
    /// A precondition for the origin to evaluate: `If-Match` or `If-Unmodified-Since`, or `If-None-Match` /
    /// `If-Modified-Since` on a method other than `GET` and `HEAD`. (The validators of a `GET` or `HEAD` are
    /// answered by the cache.)
    Conditional,
    /// The request body is larger than the configured maximum.
    RequestTooLarge,
    /// The request body came as a stream, and the bodies the layer was already holding for requests in flight
    /// left no room for it in
    /// [`max_in_flight_bytes`](super::RedisCacheLayerBuilder::max_in_flight_bytes): it goes to the inner service
    /// as far as it was read chained with the rest, unread (counted in `over_memory_budget`). Not too large for
    /// the cache, only for the moment.
    RequestOverBudget,
    /// The request body ended with trailers, which a key does not hold: the request goes to the inner service
    /// as it came, trailers and all.
    RequestTrailers,
    /// The request body is in a `Content-Encoding` the layer undoes (feature `decompress`), and it did not undo
    /// within the configured maximum: corrupt, cut short, or larger than the maximum once decoded. What it asks
    /// cannot be read, so it goes to the inner service as it came.
    RequestUndecodable,
    /// The request asked to switch protocols (`Upgrade`, a WebSocket handshake): only the origin can answer
    /// that.
    Upgrade,
    /// The request subscribes to an event stream (`Accept: text/event-stream`, as an `EventSource` sends): a
    /// live stream is the origin's to send, each subscriber its own.
    EventStream,
    /// The request opted out ([`CacheOverride::Skip`](super::CacheOverride::Skip)).
    Skipped,
    /// The layer keys each request by a partition of its own
    /// ([`partition_by`](super::RedisCacheLayerBuilder::partition_by)), and named none for this one.
    Partition,
}

impl BypassReason {
    /// A short lower-case name, as `Cache-Status` reports it in `detail`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BypassReason::Method => "method",
            BypassReason::NotAQuery => "not-a-query",
            BypassReason::NoStore => "no-store",
            BypassReason::Authorization => "authorization",
            BypassReason::Cookie => "cookie",
            BypassReason::Range => "range",
            BypassReason::Conditional => "conditional",
            BypassReason::RequestTooLarge => "request-too-large",
            BypassReason::RequestTrailers => "request-trailers",
            BypassReason::RequestUndecodable => "request-undecodable",
            BypassReason::RequestOverBudget => "request-over-budget",
            BypassReason::Upgrade => "upgrade",
            BypassReason::EventStream => "event-stream",
            BypassReason::Skipped => "skipped",
            BypassReason::Partition => "partition",
        }
    }

    /// Every reason, each at its [`index`](Self::index).
    pub(crate) const ALL: [BypassReason; 15] = [
        BypassReason::Method,
        BypassReason::NoStore,
        BypassReason::Authorization,
        BypassReason::Cookie,
        BypassReason::Range,
        BypassReason::Conditional,
        BypassReason::RequestTooLarge,
        BypassReason::Skipped,
        BypassReason::Partition,
        BypassReason::RequestTrailers,
        BypassReason::Upgrade,
        BypassReason::EventStream,
        BypassReason::NotAQuery,
        BypassReason::RequestUndecodable,
        BypassReason::RequestOverBudget,
    ];

    /// Where the reason stands in [`ALL`](Self::ALL) (and in the per-reason counts).
    pub(crate) fn index(self) -> usize {
        // No wildcard: a new reason does not compile here until it has its place.
        match self {
            BypassReason::Method => 0,
            BypassReason::NoStore => 1,
            BypassReason::Authorization => 2,
            BypassReason::Cookie => 3,
            BypassReason::Range => 4,
            BypassReason::Conditional => 5,
            BypassReason::RequestTooLarge => 6,
            BypassReason::Skipped => 7,
            BypassReason::Partition => 8,
            BypassReason::RequestTrailers => 9,
            BypassReason::Upgrade => 10,
            BypassReason::EventStream => 11,
            BypassReason::NotAQuery => 12,
            BypassReason::RequestUndecodable => 13,
            BypassReason::RequestOverBudget => 14,
        }
    }

    /// The reason whose `detail` is `detail`.
    fn from_detail(detail: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.as_str() == detail)
    }

    /// RFC 9211's `fwd` for the bypass: `method`, `request` (the request's own directives), or `bypass`.
    fn fwd(&self) -> &'static str {
        match self {
            BypassReason::Method | BypassReason::NotAQuery => "method",
            BypassReason::NoStore => "request",
            _ => "bypass",
        }
    }
}

/// The health of the store as seen by one request, reported as a `detail` when it mattered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum StoreHealth {
    #[default]
    Ok,
    Error,
    Unavailable,
}

/// Everything one `Cache-Status` value says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Status {
    pub(crate) outcome: CacheOutcome,
    /// The entry's remaining freshness in seconds, when an entry answered.
    pub(crate) ttl: Option<i64>,
    /// The inner service's status, when it was called in the foreground.
    pub(crate) fwd_status: Option<u16>,
    /// Why a miss was forwarded.
    pub(crate) fwd: Fwd,
    pub(crate) store: StoreHealth,
    /// The answer came from the near cache.
    pub(crate) near: bool,
    /// The answer is another process's fill, waited for.
    pub(crate) fleet: bool,
    /// A fresh hit that started the entry's refresh ahead of expiry.
    pub(crate) refreshing: bool,
    /// Why a miss's answer was not stored, when the answer itself was the reason.
    pub(crate) not_stored: Option<NotStored>,
}

/// Why an origin answer was not stored, as `Cache-Status` says in a miss's `detail` (`fwd=uri-miss;
/// fwd-status=200; detail=response-private`) and [`CacheStats::not_stored_for`](super::CacheStats::not_stored_for)
/// counts. The names are apart from the bypass reasons', so [`CacheOutcome::from_headers`] never takes one for
/// the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotStored {
    /// `Cache-Control: no-store`.
    NoStore,
    /// `Cache-Control: private`, and the key does not tell users apart.
    Private,
    /// `Set-Cookie`.
    SetCookie,
    /// `Vary: *`.
    VaryStar,
    /// A status not among the cacheable ones.
    Status,
    /// A body over the cap: streamed through.
    TooLarge,
    /// A body ended by trailers: passed on whole, trailers and all, since an entry holds none.
    Trailers,
    /// A stream the origin sends as it goes, which may never end: an event stream (`text/event-stream`),
    /// `multipart/x-mixed-replace`, gRPC, or an answer saying `X-Accel-Buffering: no`. Passed on as it arrives,
    /// to this caller alone.
    Stream,
    /// Windows that end as it arrives (`max-age=0, must-revalidate`): nothing to keep.
    Expired,
    /// An invalidation (an unsafe request, a tag, a purge) ran while the origin worked: the answer may predate
    /// it.
    Invalidated,
    /// Its tags cannot be recorded: the request's [`tags`](super::RedisCacheLayerBuilder::tags) or the answer's
    /// [`tags_from_header`](super::RedisCacheLayerBuilder::tags_from_header) field name more than 32, or that
    /// field cannot be read (a byte outside visible ASCII). An entry its tags could not reach would outlive
    /// their invalidation, so nothing is stored.
    Tags,
    /// The layer's [`store_when`](super::RedisCacheLayerBuilder::store_when) refused it: a GraphQL answer with
    /// `errors`, say, under a `200`. Taken for a failing origin's answer: shared with the callers coalesced onto
    /// its request, and replaced by an entry inside its stale-if-error window when there is one.
    Refused,
    /// An answer in a `Content-Encoding` to a query whose body member the answers echo
    /// ([`echo_body_field`](super::RedisCacheLayerBuilder::echo_body_field)), left encoded (without feature
    /// `decompress`, in a coding it does not undo, or for a request that refuses an answer in none): the member
    /// cannot be set in it, so it goes to its caller alone.
    Encoded,
    /// A batch's answer that does not list its calls' echoed members
    /// ([`echo_body_field`](super::RedisCacheLayerBuilder::echo_body_field)) in the order of the request's calls
    /// (JSON-RPC lets a server answer them in any order): another batch's answers would be set place by place
    /// and land at the wrong calls, so it goes to its caller alone.
    Unordered,
    /// An answer in a `Content-Encoding` (feature `decompress`) that
    /// [`store_when`](super::RedisCacheLayerBuilder::store_when) could not be given decoded: the stream does not
    /// decode (corrupt, cut short), or holds more than [`max_body_size`](super::RedisCacheLayerBuilder::max_body_size)
    /// once decoded. Not judged, so not stored; passed on, and shared with the callers coalesced onto its
    /// request, as the origin's answer.
    Undecodable,
}

impl NotStored {
    /// Every reason, each at its [`index`](Self::index).
    pub(crate) const ALL: [NotStored; 15] = [
        NotStored::NoStore,
        NotStored::Private,
        NotStored::SetCookie,
        NotStored::VaryStar,
        NotStored::Status,
        NotStored::TooLarge,
        NotStored::Expired,
        NotStored::Invalidated,
        NotStored::Tags,
        NotStored::Trailers,
        NotStored::Stream,
        NotStored::Refused,
        NotStored::Encoded,
        NotStored::Unordered,
        NotStored::Undecodable,
    ];

    /// Where the reason stands in [`ALL`](Self::ALL) (and in the per-reason counts).
    pub(crate) fn index(self) -> usize {
        // No wildcard: a new reason does not compile here until it has its place.
        match self {
            NotStored::NoStore => 0,
            NotStored::Private => 1,
            NotStored::SetCookie => 2,
            NotStored::VaryStar => 3,
            NotStored::Status => 4,
            NotStored::TooLarge => 5,
            NotStored::Expired => 6,
            NotStored::Invalidated => 7,
            NotStored::Tags => 8,
            NotStored::Trailers => 9,
            NotStored::Stream => 10,
            NotStored::Refused => 11,
            NotStored::Encoded => 12,
            NotStored::Unordered => 13,
            NotStored::Undecodable => 14,
        }
    }

    /// Its `detail` in `Cache-Status`: `response-no-store`, `response-private`, `response-set-cookie`,
    /// `response-vary-star`, `response-status`, `response-too-large`, `response-trailers`, `response-stream`,
    /// `response-expired`, `invalidated`, `tags`, `response-refused`, `response-encoded`, `response-unordered`,
    /// `response-undecodable`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::NoStore => "response-no-store",
            NotStored::Private => "response-private",
            NotStored::SetCookie => "response-set-cookie",
            NotStored::VaryStar => "response-vary-star",
            NotStored::Status => "response-status",
            NotStored::TooLarge => "response-too-large",
            NotStored::Trailers => "response-trailers",
            NotStored::Stream => "response-stream",
            NotStored::Expired => "response-expired",
            NotStored::Invalidated => "invalidated",
            NotStored::Tags => "tags",
            NotStored::Refused => "response-refused",
            NotStored::Encoded => "response-encoded",
            NotStored::Unordered => "response-unordered",
            NotStored::Undecodable => "response-undecodable",
        }
    }
}

pub(crate) const CACHE_NAME: &str = "tower-redis-cache";

/// The `detail` of a refusal to a request that said `only-if-cached`.
const ONLY_IF_CACHED: &str = "only-if-cached";

/// The members of one `Cache-Status` field value: split at commas outside quoted strings.
fn members(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let text = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    rest = Some(&text[i + 1..]);
                    return Some(text[..i].trim());
                }
                _ => {}
            }
        }
        rest = None;
        Some(text.trim())
    })
}

/// The cache a member names: its text before the first `;`.
fn member_name(member: &str) -> &str {
    member.split(';').next().unwrap_or_default().trim()
}

/// The outcome a member of this crate's says, by the rules [`Status::write_to`] writes it with.
fn parse_member(member: &str) -> Option<CacheOutcome> {
    let (mut hit, mut fwd, mut ttl, mut detail) = (false, None, None, None);
    let (mut stored, mut collapsed) = (false, false);
    // This crate's members hold only tokens and integers: no `;` inside a value.
    for param in member.split(';').skip(1) {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (param.trim(), None),
        };
        match name {
            "hit" => hit = value.is_none_or(|v| v == "?1"),
            "fwd" => fwd = value,
            "ttl" => ttl = value.and_then(|v| v.parse::<i64>().ok()),
            "stored" => stored = value.is_none_or(|v| v == "?1"),
            "collapsed" => collapsed = value.is_none_or(|v| v == "?1"),
            "detail" => detail = value,
            _ => {}
        }
    }
    if hit {
        return Some(match ttl {
            Some(ttl) if ttl < 0 => CacheOutcome::Stale {
                refreshing: detail == Some("refreshing"),
            },
            _ => CacheOutcome::Hit,
        });
    }
    let Some(fwd) = fwd else {
        return (detail == Some(ONLY_IF_CACHED)).then_some(CacheOutcome::OnlyIfCachedMiss);
    };
    if fwd == "stale" {
        return Some(CacheOutcome::StaleIfError);
    }
    let bypass = detail.and_then(BypassReason::from_detail);
    if let Some(reason) = bypass.filter(|reason| reason.fwd() == fwd) {
        return Some(CacheOutcome::Bypass(reason));
    }
    Some(CacheOutcome::Miss { collapsed, stored })
}

impl Status {
    pub(crate) fn new(outcome: CacheOutcome) -> Self {
        Status {
            outcome,
            ttl: None,
            fwd_status: None,
            fwd: Fwd::UriMiss,
            store: StoreHealth::Ok,
            near: false,
            fleet: false,
            refreshing: false,
            not_stored: None,
        }
    }

    /// Formats the `Cache-Status` field value (on the stack: the value is the one allocation).
    pub(crate) fn header_value(&self) -> HeaderValue {
        let mut s = HeaderText::default();
        self.write_to(&mut s);
        // Only ASCII from fixed strings and integers went in, and less than the buffer holds.
        s.value()
            .unwrap_or_else(|| HeaderValue::from_static(CACHE_NAME))
    }

    /// Appends the `Cache-Status` field value to `s`.
    pub(crate) fn write_to(&self, s: &mut HeaderText) {
        s.push_str(CACHE_NAME);
        let mut detail = match self.store {
            StoreHealth::Ok => None,
            StoreHealth::Error => Some("store-error"),
            StoreHealth::Unavailable => Some("store-unavailable"),
        };
        match self.outcome {
            CacheOutcome::Hit | CacheOutcome::Stale { .. } => {
                s.push_str("; hit");
                if self.near {
                    detail = Some("near");
                }
                if self.refreshing || self.outcome == (CacheOutcome::Stale { refreshing: true }) {
                    detail = Some("refreshing");
                }
            }
            CacheOutcome::Miss { .. } => {
                s.push_str("; fwd=");
                s.push_str(self.fwd.as_str());
                if self.fleet {
                    detail = Some("fleet");
                } else if detail.is_none()
                    && let Some(why) = self.not_stored
                {
                    detail = Some(why.as_str());
                }
            }
            CacheOutcome::StaleIfError => {
                s.push_str("; fwd=stale");
                if self.fwd_status.is_none() {
                    detail = Some("transport-error");
                } else if let Some(why) = self.not_stored {
                    detail = Some(why.as_str());
                }
            }
            CacheOutcome::Bypass(reason) => {
                s.push_str("; fwd=");
                s.push_str(reason.fwd());
                detail = Some(reason.as_str());
            }
            // Neither a hit nor forwarded: the answer is the cache's own refusal.
            CacheOutcome::OnlyIfCachedMiss => detail = Some(ONLY_IF_CACHED),
        }
        if let Some(status) = self.fwd_status {
            s.push_str("; fwd-status=");
            s.push_u64(u64::from(status));
        }
        if let Some(ttl) = self.ttl {
            s.push_str("; ttl=");
            s.push_i64(ttl);
        }
        if let CacheOutcome::Miss { collapsed, stored } = self.outcome {
            if stored {
                s.push_str("; stored");
            }
            if collapsed {
                s.push_str("; collapsed");
            }
        }
        if let Some(detail) = detail {
            s.push_str("; detail=");
            s.push_str(detail);
        }
    }
}

/// A header value formatted in a fixed buffer, so that building it costs only the value's own allocation.
pub(crate) struct HeaderText {
    bytes: [u8; 160],
    len: usize,
    overflow: bool,
}

impl Default for HeaderText {
    fn default() -> Self {
        HeaderText {
            bytes: [0; 160],
            len: 0,
            overflow: false,
        }
    }
}

impl HeaderText {
    pub(crate) fn push_str(&mut self, s: &str) {
        let end = self.len + s.len();
        match self.bytes.get_mut(self.len..end) {
            Some(dst) => {
                dst.copy_from_slice(s.as_bytes());
                self.len = end;
            }
            None => self.overflow = true,
        }
    }

    /// Appends `n` in decimal, without going through `core::fmt` (it is on every hit).
    pub(crate) fn push_u64(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // ASCII digits.
        self.push_str(std::str::from_utf8(&digits[i..]).unwrap_or_default());
    }

    /// Appends `n` in decimal, with a `-` when negative.
    pub(crate) fn push_i64(&mut self, n: i64) {
        if n < 0 {
            self.push_str("-");
        }
        self.push_u64(n.unsigned_abs());
    }

    /// How many bytes are written.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Values for the bytes before `split` and from `split` on, sharing one allocation; `None` if the text
    /// did not fit or either part is not a valid field value.
    pub(crate) fn split_values(self, split: usize) -> Option<(HeaderValue, HeaderValue)> {
        if self.overflow || split > self.len {
            return None;
        }
        let len = self.len;
        let shared = bytes::Bytes::from_owner(self);
        let first = HeaderValue::from_maybe_shared(shared.slice(..split)).ok()?;
        let second = HeaderValue::from_maybe_shared(shared.slice(split..len)).ok()?;
        Some((first, second))
    }

    /// The value; `None` if it did not fit or is not a valid field value.
    pub(crate) fn value(&self) -> Option<HeaderValue> {
        if self.overflow {
            return None;
        }
        HeaderValue::from_bytes(&self.bytes[..self.len]).ok()
    }
}

impl AsRef<[u8]> for HeaderText {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Write for HeaderText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push_str(s);
        if self.overflow {
            Err(std::fmt::Error)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(status: Status) -> String {
        status.header_value().to_str().unwrap().to_owned()
    }

    #[test]
    fn header_text_splits_into_two_values_sharing_one_buffer() {
        let mut text = HeaderText::default();
        text.push_str("tower-redis-cache; hit; ttl=");
        text.push_i64(-3);
        let split = text.len();
        text.push_u64(42);
        let (first, second) = text.split_values(split).unwrap();
        assert_eq!(first, "tower-redis-cache; hit; ttl=-3");
        assert_eq!(second, "42");
        let mut bad = HeaderText::default();
        bad.push_str("ok\nno");
        assert!(
            bad.split_values(2).is_none(),
            "a control character is refused"
        );
        let mut short = HeaderText::default();
        short.push_str("ab");
        assert!(short.split_values(3).is_none());
        // Split at its end, the second value is empty (a field value may be).
        let mut whole = HeaderText::default();
        whole.push_str("ab");
        assert_eq!(
            whole.split_values(2),
            Some((HeaderValue::from_static("ab"), HeaderValue::from_static("")))
        );
    }

    #[test]
    fn header_text_formats_within_its_buffer_and_refuses_past_it() {
        use std::fmt::Write as _;
        for n in [0u64, 7, 10, 86_400, u64::MAX] {
            let mut text = HeaderText::default();
            text.push_u64(n);
            assert_eq!(text.value().unwrap(), n.to_string().as_str());
        }
        for n in [0i64, -1, -40, 3599, i64::MIN, i64::MAX] {
            let mut text = HeaderText::default();
            text.push_i64(n);
            assert_eq!(text.value().unwrap(), n.to_string().as_str());
        }
        let mut text = HeaderText::default();
        write!(text, "{}", 86_400u64).unwrap();
        assert_eq!(text.value().unwrap(), "86400");
        let mut long = HeaderText::default();
        long.push_str(&"x".repeat(160));
        assert_eq!(long.value().unwrap().len(), 160);
        assert!(write!(long, "y").is_err());
        assert_eq!(
            long.value(),
            None,
            "a value that did not fit is not cut short"
        );
        let mut invalid = HeaderText::default();
        invalid.push_str("a\nb");
        assert_eq!(invalid.value(), None);
    }

    #[test]
    fn cache_status_formats() {
        let mut hit = Status::new(CacheOutcome::Hit);
        hit.ttl = Some(12);
        assert_eq!(fmt(hit), "tower-redis-cache; hit; ttl=12");
        hit.near = true;
        assert_eq!(fmt(hit), "tower-redis-cache; hit; ttl=12; detail=near");
        hit.near = false;
        hit.refreshing = true;
        assert_eq!(
            fmt(hit),
            "tower-redis-cache; hit; ttl=12; detail=refreshing"
        );
        assert_eq!(
            parse_member(&fmt(hit)),
            Some(CacheOutcome::Hit),
            "a fresh hit that started a refresh is a hit"
        );

        let mut stale = Status::new(CacheOutcome::Stale { refreshing: true });
        stale.ttl = Some(-3);
        assert_eq!(
            fmt(stale),
            "tower-redis-cache; hit; ttl=-3; detail=refreshing"
        );
        stale.outcome = CacheOutcome::Stale { refreshing: false };
        assert_eq!(fmt(stale), "tower-redis-cache; hit; ttl=-3");

        let mut miss = Status::new(CacheOutcome::Miss {
            collapsed: false,
            stored: true,
        });
        miss.fwd_status = Some(200);
        assert_eq!(
            fmt(miss),
            "tower-redis-cache; fwd=uri-miss; fwd-status=200; stored"
        );

        let mut vary = miss;
        vary.fwd = Fwd::VaryMiss;
        assert_eq!(
            fmt(vary),
            "tower-redis-cache; fwd=vary-miss; fwd-status=200; stored"
        );

        // An answer not stored says why, unless the store's own trouble is the news; a revalidation whose
        // answer said `no-store` still reads back as a miss, not as the request's `no-store` bypass.
        let mut unkept = Status::new(CacheOutcome::Miss {
            collapsed: false,
            stored: false,
        });
        unkept.fwd_status = Some(200);
        unkept.fwd = Fwd::Request;
        unkept.not_stored = Some(NotStored::NoStore);
        assert_eq!(
            fmt(unkept),
            "tower-redis-cache; fwd=request; fwd-status=200; detail=response-no-store"
        );
        assert_eq!(
            parse_member(&fmt(unkept)),
            Some(CacheOutcome::Miss {
                collapsed: false,
                stored: false
            })
        );
        unkept.store = StoreHealth::Error;
        assert_eq!(
            fmt(unkept),
            "tower-redis-cache; fwd=request; fwd-status=200; detail=store-error"
        );
        for (i, reason) in NotStored::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert!(
                BypassReason::from_detail(reason.as_str()).is_none(),
                "{reason:?}"
            );
        }

        let mut collapsed = Status::new(CacheOutcome::Miss {
            collapsed: true,
            stored: false,
        });
        collapsed.fwd_status = Some(200);
        assert_eq!(
            fmt(collapsed),
            "tower-redis-cache; fwd=uri-miss; fwd-status=200; collapsed"
        );
        let mut fleet = collapsed;
        fleet.fleet = true;
        assert_eq!(
            fmt(fleet),
            "tower-redis-cache; fwd=uri-miss; fwd-status=200; collapsed; detail=fleet"
        );
        collapsed.outcome = CacheOutcome::Miss {
            collapsed: true,
            stored: true,
        };
        assert_eq!(
            fmt(collapsed),
            "tower-redis-cache; fwd=uri-miss; fwd-status=200; stored; collapsed"
        );

        let mut revalidated = miss;
        revalidated.fwd = Fwd::Request;
        assert_eq!(
            fmt(revalidated),
            "tower-redis-cache; fwd=request; fwd-status=200; stored"
        );

        for (reason, expected) in [
            (BypassReason::Method, "fwd=method; detail=method"),
            (BypassReason::NoStore, "fwd=request; detail=no-store"),
            (
                BypassReason::Authorization,
                "fwd=bypass; detail=authorization",
            ),
            (BypassReason::Cookie, "fwd=bypass; detail=cookie"),
            (BypassReason::Range, "fwd=bypass; detail=range"),
            (BypassReason::Conditional, "fwd=bypass; detail=conditional"),
            (
                BypassReason::RequestTooLarge,
                "fwd=bypass; detail=request-too-large",
            ),
            (
                BypassReason::RequestOverBudget,
                "fwd=bypass; detail=request-over-budget",
            ),
            (BypassReason::Skipped, "fwd=bypass; detail=skipped"),
            (BypassReason::Partition, "fwd=bypass; detail=partition"),
        ] {
            let bypass = Status::new(CacheOutcome::Bypass(reason));
            assert_eq!(fmt(bypass), format!("tower-redis-cache; {expected}"));
        }

        let mut sie = Status::new(CacheOutcome::StaleIfError);
        sie.fwd_status = Some(503);
        sie.ttl = Some(-40);
        assert_eq!(
            fmt(sie),
            "tower-redis-cache; fwd=stale; fwd-status=503; ttl=-40"
        );
        sie.fwd_status = None;
        assert_eq!(
            fmt(sie),
            "tower-redis-cache; fwd=stale; ttl=-40; detail=transport-error"
        );
        sie.fwd_status = Some(200);
        sie.not_stored = Some(NotStored::Refused);
        assert_eq!(
            fmt(sie),
            "tower-redis-cache; fwd=stale; fwd-status=200; ttl=-40; detail=response-refused"
        );

        let mut down = Status::new(CacheOutcome::Miss {
            collapsed: false,
            stored: false,
        });
        down.fwd_status = Some(200);
        down.store = StoreHealth::Unavailable;
        assert_eq!(
            fmt(down),
            "tower-redis-cache; fwd=uri-miss; fwd-status=200; detail=store-unavailable"
        );
    }

    /// Every status this crate writes, one per outcome and what can change its member.
    fn every_status() -> Vec<Status> {
        let mut all = Vec::new();
        let mut outcomes = vec![
            CacheOutcome::Hit,
            CacheOutcome::Stale { refreshing: true },
            CacheOutcome::Stale { refreshing: false },
            CacheOutcome::StaleIfError,
            CacheOutcome::OnlyIfCachedMiss,
        ];
        for (collapsed, stored) in [(false, false), (false, true), (true, false), (true, true)] {
            outcomes.push(CacheOutcome::Miss { collapsed, stored });
        }
        outcomes.extend(BypassReason::ALL.map(CacheOutcome::Bypass));
        for outcome in outcomes {
            for store in [
                StoreHealth::Ok,
                StoreHealth::Error,
                StoreHealth::Unavailable,
            ] {
                for fwd in [Fwd::UriMiss, Fwd::VaryMiss, Fwd::Request] {
                    for (near, fleet) in [(false, false), (true, false), (false, true)] {
                        for fwd_status in [None, Some(200), Some(503)] {
                            let mut status = Status::new(outcome);
                            status.ttl = match outcome {
                                CacheOutcome::Hit => Some(12),
                                CacheOutcome::Stale { .. } | CacheOutcome::StaleIfError => Some(-3),
                                _ => None,
                            };
                            (status.store, status.fwd) = (store, fwd);
                            (status.near, status.fleet, status.fwd_status) =
                                (near, fleet, fwd_status);
                            all.push(status);
                        }
                    }
                }
            }
        }
        // Each also with a reason its answer was not stored, which a miss and a stale-if-error answer say.
        let with_reasons: Vec<Status> = all
            .iter()
            .map(|status| Status {
                not_stored: Some(NotStored::Refused),
                ..*status
            })
            .collect();
        all.extend(with_reasons);
        all
    }

    fn response_with(values: &[&str]) -> Response<()> {
        let mut response = Response::new(());
        for value in values {
            response
                .headers_mut()
                .append(CACHE_STATUS, HeaderValue::from_str(value).unwrap());
        }
        response
    }

    #[test]
    fn the_outcome_is_read_back_from_every_status_written() {
        let all = every_status();
        assert!(all.len() > 1000);
        for status in all {
            let value = status.header_value();
            let response = response_with(&[value.to_str().unwrap()]);
            assert_eq!(
                CacheOutcome::of(&response),
                Some(status.outcome),
                "{value:?}"
            );
        }
    }

    #[test]
    fn every_bypass_reason_is_listed_once() {
        for (i, reason) in BypassReason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert_eq!(BypassReason::from_detail(reason.as_str()), Some(reason));
        }
    }

    #[test]
    fn the_extension_comes_first() {
        let mut response = response_with(&["tower-redis-cache; hit; ttl=3"]);
        response
            .extensions_mut()
            .insert(CacheOutcome::Bypass(BypassReason::Skipped));
        assert_eq!(
            CacheOutcome::of(&response),
            Some(CacheOutcome::Bypass(BypassReason::Skipped))
        );
        assert_eq!(
            CacheOutcome::from_headers(response.headers()),
            Some(CacheOutcome::Hit)
        );
    }

    #[test]
    fn a_fresh_hit_with_under_a_second_left_is_a_hit() {
        let zero = response_with(&["tower-redis-cache; hit; ttl=0"]);
        assert_eq!(CacheOutcome::of(&zero), Some(CacheOutcome::Hit));
        let near = response_with(&["tower-redis-cache; hit; ttl=0; detail=near"]);
        assert_eq!(CacheOutcome::of(&near), Some(CacheOutcome::Hit));
    }

    #[test]
    fn the_last_member_of_this_crate_is_read_among_others() {
        // Other caches' members, before and after, one with a quoted comma and semicolon in its detail.
        let mixed = response_with(&[
            r#"origin-cdn; fwd=uri-miss; detail="a, b; c", tower-redis-cache; fwd=uri-miss; stored"#,
            "tower-redis-cache; hit; ttl=4, edge; hit",
        ]);
        assert_eq!(CacheOutcome::of(&mixed), Some(CacheOutcome::Hit));
        let earlier_only = response_with(&[
            "tower-redis-cache; fwd=bypass; detail=cookie",
            r#"edge; fwd=stale; detail="tower-redis-cache; hit""#,
        ]);
        assert_eq!(
            CacheOutcome::of(&earlier_only),
            Some(CacheOutcome::Bypass(BypassReason::Cookie))
        );
        // Structured-field booleans written out in full read as the bare ones.
        let explicit = response_with(&["tower-redis-cache; fwd=uri-miss; stored=?1; collapsed=?0"]);
        assert_eq!(
            CacheOutcome::of(&explicit),
            Some(CacheOutcome::Miss {
                collapsed: false,
                stored: true
            })
        );
        let hit = response_with(&["tower-redis-cache; hit=?1; ttl=3"]);
        assert_eq!(CacheOutcome::of(&hit), Some(CacheOutcome::Hit));
        let not_hit = response_with(&["tower-redis-cache; hit=?0; fwd=uri-miss"]);
        assert_eq!(
            CacheOutcome::of(&not_hit),
            Some(CacheOutcome::Miss {
                collapsed: false,
                stored: false
            })
        );
    }

    #[test]
    fn a_quoted_string_hides_what_looks_like_a_member_of_this_crate() {
        // Each value: this crate's member, then another cache's whose quoted `detail` holds a comma and what
        // would read as this crate's hit, were the comma taken for a member's end.
        for value in [
            r#"tower-redis-cache; fwd=bypass; detail=cookie, edge; detail="x, tower-redis-cache; hit; ttl=1;""#,
            // An escaped quote does not end the string.
            r#"tower-redis-cache; fwd=bypass; detail=cookie, edge; detail="say \", tower-redis-cache; hit; ttl=1; \"""#,
        ] {
            assert_eq!(
                CacheOutcome::of(&response_with(&[value])),
                Some(CacheOutcome::Bypass(BypassReason::Cookie)),
                "{value}"
            );
        }
        // Outside a quoted string a backslash is a byte like any other: the comma after it still ends a member.
        let stray = response_with(&[r"edge; detail=x\, tower-redis-cache; hit; ttl=2"]);
        assert_eq!(CacheOutcome::of(&stray), Some(CacheOutcome::Hit));
    }

    #[test]
    fn every_outcome_has_its_name_and_says_whether_its_body_came_from_the_store() {
        for (outcome, name, cached) in [
            (CacheOutcome::Hit, "hit", true),
            (CacheOutcome::Stale { refreshing: false }, "stale", true),
            (CacheOutcome::StaleIfError, "stale-if-error", true),
            (
                CacheOutcome::Miss {
                    collapsed: true,
                    stored: true,
                },
                "miss",
                false,
            ),
            (CacheOutcome::Bypass(BypassReason::Cookie), "bypass", false),
            (CacheOutcome::OnlyIfCachedMiss, "only-if-cached-miss", false),
        ] {
            assert_eq!((outcome.as_str(), outcome.is_cached()), (name, cached));
        }
    }

    #[test]
    fn no_member_of_this_crate_reads_as_none() {
        for values in [
            &[][..],
            &["edge; hit"][..],
            &["tower-redis-cache-2; hit"][..],
            &["tower-redis-cache"][..],
            &["tower-redis-cache; ttl=3"][..],
            &["\"tower-redis-cache; hit\""][..],
        ] {
            assert_eq!(CacheOutcome::of(&response_with(values)), None, "{values:?}");
        }
        let mut opaque = Response::new(());
        opaque.headers_mut().insert(
            CACHE_STATUS,
            HeaderValue::from_bytes(b"tower-redis-cache; hit\xff").unwrap(),
        );
        assert_eq!(CacheOutcome::of(&opaque), None, "not text");
    }
}
