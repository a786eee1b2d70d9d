//! The cache layer, driven by arbitrary requests (their bodies as they came, or gzipped), origin answers, stored
//! bytes and handle calls, on paused Tokio time over an in-process store.
//!
//! Besides "no panic, no hang", every response is checked. It carries a `CacheOutcome`. It keeps the shared-cache
//! rule: the origin copies the `Authorization` and tenant it was sent into the answer's headers, so an answer the
//! cache gives one request (a hit, a stale answer, a collapsed miss, a `304`, a `206`) that was fetched for
//! another credential or tenant fails the run. And a `200` from the store is, byte for byte, a body the origin
//! sent (unless the run changed what the store reads back). With cookies ignored (`_ga`, `_ga_*`), the same holds
//! for every other cookie a request sends, as the laxest server reads its `Cookie` fields; and no answer that
//! sets another cookie, as a reader of `Set-Cookie` fields folded with `,` reads them, reaches another request.
//! Under `Credentials::Bypass`, a request with an `Authorization`, a credential header (named, or named like
//! one or like a tenant's: the `X-Tenant` the partitioned runs key by) or such a cookie is bypassed.
//! An answer whose `Vary` names request headers (but the ones the cache itself evaluates or rewrites) reaches
//! only requests with the same values of them, as RFC 9111 §4.1 compares them. The origin's copies are headers
//! of the entries, so these checks, too, stop once the run changes what the store reads back.
//!
//! And a writer reads its own writes: the origin numbers its calls on its answers, and a request sent after a write
//! to its resource finished (a `PUT`, `PATCH`, `DELETE`, or a `POST` the layer does not cache or its `query_when`
//! would refuse, answered below `400`, or not by the origin, with `invalidate_on_unsafe` on) is answered with what
//! the origin sent after it took the write: never an entry filled before (of a `GET`, a `HEAD` or a query), whether
//! by a miss, a refresh or a revalidation still running.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tower::{Layer, ServiceExt};
use tower_redis_cache::cache::store::{MemoryStore, Store, StoreFuture};
use tower_redis_cache::cache::{Credentials, ResponseBody, graphql, jsonrpc};
use tower_redis_cache::error::{BoxError, StoreError};
use tower_redis_cache::{CacheOutcome, RedisCacheLayer, RequestBody};

/// Header names the cache reads or writes, so that most of the fuzzer's headers mean something to it.
const NAMES: &[&str] = &[
    "cache-control",
    "pragma",
    "expires",
    "age",
    "date",
    "vary",
    "etag",
    "last-modified",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
    "content-range",
    "content-type",
    "content-encoding",
    "content-length",
    "accept",
    "accept-encoding",
    "accept-language",
    "authorization",
    "cookie",
    "set-cookie",
    "origin",
    "access-control-allow-origin",
    "host",
    "forwarded",
    "x-forwarded-host",
    "x-http-method-override",
    "location",
    "content-location",
    "cdn-cache-control",
    "cache-groups",
    "cache-group-invalidation",
    "x-tags",
    "trailer",
    "upgrade",
    "connection",
    "x-accel-buffering",
    "prefer",
    "x-api-key",
    "cache-status",
    "transfer-encoding",
    "te",
    "x-tenant",
    "accept-ranges",
    "surrogate-control",
    "set-cookie2",
    "x-shop-token",
    "x-user-id",
];

/// URIs that share keys in several spellings, so that requests meet each other's entries.
const URIS: &[&str] = &[
    "http://api.test/a",
    "http://api.test/a?x=1&utm_source=y",
    "https://API.test:443/a",
    "https://api.test/a",
    "/a",
    "http://api.test/b",
    "http://api.test/graphql",
];

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "QUERY", "PUT", "PATCH", "DELETE", "OPTIONS",
];

/// The writes [`Op::Rewrite`] sends, as indexes of [`METHODS`]: `PUT`, `PATCH`, `DELETE`, `POST`.
const WRITES: &[u8] = &[4, 5, 6, 2];

/// The headers the origin copies from the request it was sent.
const ECHO_AUTH: &str = "x-fuzz-echo-auth";
const ECHO_TENANT: &str = "x-fuzz-echo-tenant";
const ECHO_COOKIES: &str = "x-fuzz-echo-cookies";
/// The request's values of the headers the answer's `Vary` names (see [`vary_echo`]).
const ECHO_VARY: &str = "x-fuzz-echo-vary";
/// Set by the origin on an answer (not a `304`) that sets a cookie the layer does not ignore.
const SETS_COOKIE: &str = "x-fuzz-sets-cookie";
/// The origin's count of the calls it has taken, this one included, on every answer it gives: a request sent
/// after a write to its resource must be answered with a count above the write's.
const CALL: &str = "x-fuzz-call";

/// On a write whose effect the checks follow: its number, by which the origin says when it took it.
#[derive(Clone, Copy)]
struct Followed(u64);

#[derive(Arbitrary, Clone, Debug)]
enum Name {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Clone, Debug)]
struct Header {
    name: Name,
    value: Vec<u8>,
}

/// Cookie fields as `Cookie` and `Set-Cookie` write them, or nearly: each `(pair, separator)` indexes
/// [`COOKIE_PAIRS`] and [`COOKIE_SEPARATORS`].
type Cookies = Vec<(u8, u8)>;

/// Cookie pairs: ignored ones (when a run ignores `_ga` and `_ga_*`), others (a session among them that a pattern
/// names), and ones outside RFC 6265's grammar.
const COOKIE_PAIRS: &[&str] = &[
    "_ga=GA1.2.3",
    "_ga_X1=GS1",
    "session=x",
    "__Host-id=9",
    "_ga=\"1\"",
    " _ga = 1",
    "_gax=1",
    "=x",
    "_ga",
    "_ga=a b",
    "_ga_session=s",
    "_ga_session=t",
];

/// What comes between cookie pairs, or after one's pair in `Set-Cookie`: attributes, dates with their own `,`,
/// and the `,` and white space at which lax readers split.
const COOKIE_SEPARATORS: &[&str] = &[
    "; ",
    ";",
    ", ",
    ",",
    " ",
    "; Path=/; ",
    "; Expires=Wed, 09 Jun 2021 10:18:14 GMT; ",
    "; expires=Wed, 09-Jun-21 10:18:14 GMT, ",
    "; HttpOnly, ",
    "; Max-Age=60, ",
    "; Expires=Wed, ",
];

/// The field `cookies` make: pairs with separators between them.
fn cookie_field(cookies: &Cookies) -> Option<HeaderValue> {
    let mut out = String::new();
    for (i, (pair, separator)) in cookies.iter().enumerate() {
        if i > 0 {
            out.push_str(COOKIE_SEPARATORS[*separator as usize % COOKIE_SEPARATORS.len()]);
        }
        out.push_str(COOKIE_PAIRS[*pair as usize % COOKIE_PAIRS.len()]);
    }
    HeaderValue::from_str(&out).ok()
}

/// A body as frames: data chunks, then trailers if any; `hint` is what `size_hint` says (true or not).
#[derive(Arbitrary, Clone, Debug)]
struct FuzzBody {
    chunks: Vec<Vec<u8>>,
    trailers: Option<Vec<Header>>,
    hint: Hint,
}

#[derive(Arbitrary, Clone, Debug)]
enum Hint {
    None,
    Exact,
    Wrong(u16),
}

#[derive(Arbitrary, Clone, Debug)]
struct RequestSpec {
    method: u8,
    uri: u8,
    query: Option<String>,
    headers: Vec<Header>,
    /// A `Cookie` field besides any among `headers`.
    cookies: Option<Cookies>,
    body: FuzzBody,
    /// The body is sent gzipped, under `Content-Encoding: gzip`, as a client that compresses its requests sends
    /// it (the layer reads it decoded; the fuzzer would seldom write a gzip stream itself).
    gzip: bool,
}

#[derive(Arbitrary, Debug)]
struct Answer {
    status: u16,
    headers: Vec<Header>,
    /// `Set-Cookie` fields besides any among `headers`.
    set_cookies: Vec<Cookies>,
    /// A `Vary` field besides any among `headers`: each indexes [`NAMES`], which requests send.
    vary: Vec<u8>,
    body: FuzzBody,
    /// The origin fails (a transport error) instead of answering.
    fail: bool,
    /// `set_cookies` are `Set-Cookie2` fields (RFC 2965, obsolete) instead.
    set_cookie2: bool,
    /// How long the origin takes to answer (milliseconds, below about a minute): a fill or refresh still
    /// running as other requests come.
    delay: u16,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A request; the origin, when asked, gives the next queued answer.
    Send(RequestSpec),
    /// Two requests at once (coalescing, a refresh racing a request).
    Together(RequestSpec, RequestSpec),
    /// A request as a `GET` without a body (or, `query`, as a `POST` with its body), then as a write (`write`
    /// indexes [`WRITES`]; the origin gives it `answer` if any, before the queued ones), then as the read again: a
    /// write aimed at an entry, which separate requests seldom make. With `racing`, the first read and the write
    /// go together, and the origin takes that many milliseconds over the first call it takes (the read's miss or
    /// refresh, if it makes one), so that the write lands while it runs.
    Rewrite {
        spec: RequestSpec,
        write: u8,
        answer: Option<Answer>,
        query: bool,
        racing: Option<u16>,
    },
    /// Queues an answer for the origin.
    Queue(Answer),
    /// Lets time pass (milliseconds).
    Wait(u32),
    /// Changes the bytes the store reads back from now on: each `(at, xor)` flips bits, then a cut.
    Mangle(Vec<(u16, u8)>, Option<u16>),
    /// A handle's removal (or soft purge) of a request's entry or of its URI's.
    Remove(Removal, RequestSpec),
    /// A tag's entries removed, or marked stale.
    Tag {
        stale: bool,
        tag: u8,
    },
    /// A cache group's entries removed, or marked stale.
    Group {
        stale: bool,
        group: u8,
    },
    Purge,
    SweepTags,
}

#[derive(Arbitrary, Debug)]
enum Removal {
    Invalidate,
    MarkStale,
    InvalidateUri,
    MarkUriStale,
}

#[derive(Arbitrary, Debug)]
struct Config {
    credentials: u8,
    post: bool,
    keep_variants: bool,
    head_from_get: bool,
    respect_request: bool,
    respect_response: bool,
    origin_freshness: bool,
    targeted: bool,
    cache_groups: bool,
    tags_from_header: bool,
    tags_by_path: bool,
    compress_above: Option<u16>,
    max_body_size: Option<u16>,
    /// With `max_body_size`, the in-flight budget (at least the cap), so that racing requests and answers find it
    /// full.
    in_flight: Option<u16>,
    predicates: u8,
    echo_id: bool,
    ignore_fields: bool,
    ignore_cookies: bool,
    ignore_query: bool,
    refresh_ahead: bool,
    windows: (u16, u16, u16),
    more_statuses: bool,
    invalidate_on_unsafe: bool,
    vary_on_accept: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: Config,
    ops: Vec<Op>,
}

fn name(name: &Name) -> Option<HeaderName> {
    match name {
        Name::Known(i) => Some(HeaderName::from_static(NAMES[*i as usize % NAMES.len()])),
        Name::Other(s) => HeaderName::try_from(s.as_str()).ok(),
    }
    .filter(|n| !n.as_str().starts_with("x-fuzz-"))
}

fn header_map(headers: &[Header]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for h in headers {
        if let (Some(n), Ok(v)) = (name(&h.name), HeaderValue::from_bytes(&h.value)) {
            map.append(n, v);
        }
    }
    map
}

/// A body that hands out its frames one by one.
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    hint: SizeHint,
}

impl Frames {
    fn new(spec: &FuzzBody) -> Self {
        Self::of(
            spec,
            spec.chunks
                .iter()
                .map(|c| Bytes::copy_from_slice(c))
                .collect(),
        )
    }

    /// The body of `spec` in one frame of its chunks gzipped.
    fn gzipped(spec: &FuzzBody) -> Self {
        Self::of(spec, vec![Bytes::from(gzip(&spec.chunks.concat()))])
    }

    fn of(spec: &FuzzBody, chunks: Vec<Bytes>) -> Self {
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let mut frames: VecDeque<_> = chunks.into_iter().map(Frame::data).collect();
        if let Some(trailers) = &spec.trailers {
            frames.push_back(Frame::trailers(header_map(trailers)));
        }
        let hint = match spec.hint {
            Hint::None => SizeHint::new(),
            Hint::Exact => SizeHint::with_exact(len as u64),
            Hint::Wrong(n) => SizeHint::with_exact(u64::from(n)),
        };
        Frames { frames, hint }
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// `bytes` gzipped.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a `Vec` does not fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

fn request(spec: &RequestSpec) -> Option<Request<Frames>> {
    let base = URIS[spec.uri as usize % URIS.len()];
    let uri = match &spec.query {
        Some(q) => format!("{base}{}{q}", if base.contains('?') { '&' } else { '?' }),
        None => base.to_owned(),
    };
    let method =
        Method::from_bytes(METHODS[spec.method as usize % METHODS.len()].as_bytes()).ok()?;
    let body = if spec.gzip {
        Frames::gzipped(&spec.body)
    } else {
        Frames::new(&spec.body)
    };
    let mut request = Request::builder().method(method).uri(uri).body(body).ok()?;
    *request.headers_mut() = header_map(&spec.headers);
    if spec.gzip {
        request.headers_mut().append(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip"),
        );
    }
    if let Some(cookies) = spec.cookies.as_ref().and_then(cookie_field) {
        request.headers_mut().append(http::header::COOKIE, cookies);
    }
    Some(request)
}

/// The same request with the body whole, for the handle's calls that take one.
fn request_bytes(spec: &RequestSpec) -> Option<Request<Vec<u8>>> {
    let (parts, _) = request(spec)?.into_parts();
    let body = spec.body.chunks.concat();
    let body = if spec.gzip { gzip(&body) } else { body };
    Some(Request::from_parts(parts, body))
}

/// Who a request is, as the origin copies it into its answer and the check compares it: every `Authorization`
/// value, or the first `X-Tenant` (what `partition_by` reads); each value in hex, so that none can pass for
/// another (two values for one holding a comma, an empty one for none).
fn identity(headers: &HeaderMap, name: &str) -> HeaderValue {
    let mut out = String::new();
    let count = if name == "x-tenant" { 1 } else { usize::MAX };
    for v in headers.get_all(name).iter().take(count) {
        push_hex(&mut out, v.as_bytes(), true);
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static("?"))
}

/// The cookies a request sends that the layer does not ignore, as the laxest server reads `Cookie` fields: split
/// at `;`, `,` (Rack 2) and white space (Python's `SimpleCookie`), each piece in hex.
fn other_cookies(headers: &HeaderMap, ignoring: bool) -> HeaderValue {
    let mut out = String::new();
    for v in headers.get_all("cookie") {
        let pieces = v
            .as_bytes()
            .split(|b| matches!(b, b';' | b',' | b' ' | b'\t'));
        for piece in pieces.filter(|p| !p.is_empty()) {
            let name = piece.split(|b| *b == b'=').next().unwrap_or_default();
            if ignoring && piece.contains(&b'=') && is_ignored(name) {
                continue;
            }
            push_hex(&mut out, piece, true);
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static("?"))
}

/// Whether a request carries a credential, as the laxest server reads it: an `Authorization`, a header that
/// names one (a default credential header, or one named like a credential or a tenant), or a `Cookie` piece
/// (split as [`other_cookies`] splits them) that is not an ignored cookie's pair.
fn carries_credentials(headers: &HeaderMap, ignoring: bool) -> bool {
    [
        "authorization",
        "x-api-key",
        "x-shop-token",
        "x-user-id",
        "x-tenant",
    ]
    .iter()
    .any(|name| headers.contains_key(*name))
        || !other_cookies(headers, ignoring).is_empty()
}

/// Whether an answer sets a cookie the layer does not ignore, as a reader of `Set-Cookie` (or the obsolete
/// `Set-Cookie2`) fields folded with `,` reads them: every piece between commas whose part before its first `;`
/// holds a `=` sets the cookie it names (so an `Expires` date's own `,` sets none).
fn sets_other_cookie(headers: &HeaderMap, ignoring: bool) -> bool {
    let fields = headers.get_all("set-cookie").into_iter();
    fields.chain(&headers.get_all("set-cookie2")).any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|piece| {
            let pair = piece.split(|b| *b == b';').next().unwrap_or_default();
            pair.iter()
                .position(|b| *b == b'=')
                .is_some_and(|at| !(ignoring && is_ignored(pair[..at].trim_ascii())))
        })
    })
}

/// Request headers the cache evaluates itself (validators, ranges), adjusts for what it holds
/// (`Accept-Encoding`, which it compares by the coding it accepts) or forwards otherwise than it got them: a
/// `Vary` naming them is not checked.
const NOT_ECHOED: &[&str] = &[
    "accept-encoding",
    "range",
    "if-range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "cache-control",
    "pragma",
    "te",
    "connection",
    "upgrade",
    "transfer-encoding",
    "trailer",
    "content-length",
    "host",
];

/// For each request header `names` lists (but [`NOT_ECHOED`]), its values as RFC 9111 §4.1 lets a cache
/// compare them: absent, or its comma-separated elements with the white space around them dropped, however
/// they were split over field lines; in hex.
fn vary_echo<'a>(names: impl Iterator<Item = &'a str>, request: &HeaderMap) -> String {
    let mut names: Vec<&str> = names
        .filter(|name| !NOT_ECHOED.contains(name) && HeaderName::try_from(*name).is_ok())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = String::new();
    for name in names {
        out.push_str(name);
        out.push(':');
        if request.contains_key(name) {
            let elements = request
                .get_all(name)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                .map(<[u8]>::trim_ascii);
            for (i, element) in elements.enumerate() {
                if i > 0 {
                    out.push_str("2c");
                }
                push_hex(&mut out, element, false);
            }
        } else {
            out.push('-');
        }
        out.push(';');
    }
    out
}

/// The lowercase names an answer's `Vary` fields list, as they are written.
fn vary_listed(response: &HeaderMap) -> Vec<String> {
    response
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect()
}

/// The cookie names the layer ignores when a run asks it to (`_ga`, `_ga_*`).
fn is_ignored(name: &[u8]) -> bool {
    // Not a session's, whatever pattern names it.
    (name == b"_ga" || name.starts_with(b"_ga_")) && !name.ends_with(b"session")
}

/// Writes `bytes` in hex, between `<` and `>` when `bracketed`: a copy that no value can pass for another's.
fn push_hex(out: &mut String, bytes: &[u8], bracketed: bool) {
    if bracketed {
        out.push('<');
    }
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    if bracketed {
        out.push('>');
    }
}

/// How the store's reads come back changed: each `(at, xor)` flips bits, then a cut to a length.
#[derive(Clone, Default)]
struct Mangle {
    flips: Vec<(u16, u8)>,
    cut: Option<u16>,
}

/// A `MemoryStore` whose reads can come back changed, as bytes from a Redis shared with others might.
struct Mangling {
    inner: MemoryStore,
    mangle: Mutex<Mangle>,
}

impl Store for Mangling {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let value = self.inner.get(key).await?;
            let Mangle { flips, cut } = self.mangle.lock().map(|m| m.clone()).unwrap_or_default();
            Ok(value.map(|v| {
                if flips.is_empty() && cut.is_none() {
                    return v;
                }
                let mut v = v.to_vec();
                if !v.is_empty() {
                    for (at, xor) in &flips {
                        let i = *at as usize % v.len();
                        v[i] ^= xor;
                    }
                }
                if let Some(cut) = cut {
                    v.truncate(cut as usize);
                }
                Bytes::from(v)
            }))
        })
    }
    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        self.inner.set(key, value, ttl)
    }
    fn set_if_leased<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        self.inner.set_if_leased(key, value, ttl, lease, token)
    }
    fn set_if_leased_and_release<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        self.inner
            .set_if_leased_and_release(key, value, ttl, lease, token)
    }
    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.inner.try_lease(key, token, ttl)
    }
    fn extend_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.inner.extend_lease(key, token, ttl)
    }
    fn release_lease<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        self.inner.release_lease(key, token)
    }
    fn remove<'a>(&'a self, keys: &'a [&'a str]) -> StoreFuture<'a, u64> {
        self.inner.remove(keys)
    }
    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        self.inner.purge_prefix(prefix)
    }
    fn tag<'a>(
        &'a self,
        tag: &'a str,
        member: &'a str,
        lifetime: Duration,
        since: u64,
    ) -> StoreFuture<'a, bool> {
        self.inner.tag(tag, member, lifetime, since)
    }
    fn mark_invalidated<'a>(&'a self, tag: &'a str, at: u64) -> StoreFuture<'a, ()> {
        self.inner.mark_invalidated(tag, at)
    }
    fn tag_clock<'a>(&'a self, key: &'a str, advance: bool) -> StoreFuture<'a, u64> {
        self.inner.tag_clock(key, advance)
    }
    fn tagged<'a>(&'a self, tag: &'a str, cursor: u64) -> StoreFuture<'a, (Vec<String>, u64)> {
        self.inner.tagged(tag, cursor)
    }
    fn sweep_tags<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        self.inner.sweep_tags(prefix)
    }
    fn keeps_tags(&self) -> bool {
        self.inner.keeps_tags()
    }
    fn mark_stale<'a>(&'a self, keys: &'a [&'a str], at: u64) -> StoreFuture<'a, u64> {
        self.inner.mark_stale(keys, at)
    }
    fn server_time(&self) -> StoreFuture<'_, Option<SystemTime>> {
        self.inner.server_time()
    }
    fn reconnect_cures(&self, refusal: &StoreError) -> bool {
        self.inner.reconnect_cures(refusal)
    }
}

fn layer(config: &Config, store: Arc<Mangling>) -> Option<RedisCacheLayer> {
    let secs = |s: u16| Duration::from_secs(u64::from(s % 900));
    let mut b = RedisCacheLayer::builder(store)
        .credentials(match config.credentials % 3 {
            0 => Credentials::Bypass,
            1 => Credentials::InKey,
            _ => Credentials::Partition,
        })
        .keep_variants(config.keep_variants)
        .head_from_get(config.head_from_get)
        .respect_request_cache_control(config.respect_request)
        .respect_response_cache_control(config.respect_response)
        .origin_freshness(config.origin_freshness)
        .cache_groups(config.cache_groups)
        .invalidate_on_unsafe(config.invalidate_on_unsafe)
        .fresh_for(secs(config.windows.0).max(Duration::from_secs(1)))
        .stale_for(secs(config.windows.1))
        .stale_if_error_for(secs(config.windows.2));
    if config.credentials % 3 == 2 {
        b = b.partition_by(|parts| parts.headers.get("x-tenant").map(|v| v.as_bytes().to_vec()));
    }
    if config.post {
        b = b.methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::from_bytes(b"QUERY").ok()?,
        ]);
    }
    if config.targeted {
        b = b.targeted_cache_control([HeaderName::from_static("cdn-cache-control")]);
    }
    if config.tags_from_header {
        b = b.tags_from_header(HeaderName::from_static("x-tags"));
    }
    if config.tags_by_path {
        b = b.tags(|parts| vec![parts.uri.path().to_owned()]);
    }
    if let Some(n) = config.compress_above {
        b = b.compress_above(usize::from(n));
    }
    if let Some(n) = config.max_body_size {
        b = b.max_body_size(usize::from(n));
        if let Some(budget) = config.in_flight {
            b = b.max_in_flight_bytes(usize::from(budget.max(n)));
        }
    }
    match config.predicates % 3 {
        1 => {
            b = b
                .query_when(|_, body| graphql::is_query(body))
                .store_when(|_, _, body| graphql::is_success(body));
        }
        2 => {
            b = b
                .query_when(|_, body| jsonrpc::only_calls_to(body, RPC_READS))
                .store_when(|_, _, body| jsonrpc::is_success(body));
        }
        _ => {}
    }
    if config.echo_id {
        b = b.echo_body_field("id");
    }
    if config.ignore_fields {
        b = b.ignore_body_fields(["/requestId", "/meta/trace"]);
    }
    if config.ignore_cookies {
        b = b.ignore_cookies(["_ga", "_ga_*"]);
    }
    if config.ignore_query {
        b = b.ignore_query_params(["utm_*"]);
    }
    if config.refresh_ahead {
        b = b.refresh_ahead(0.5);
    }
    if config.more_statuses {
        b = b.cacheable_statuses([
            StatusCode::OK,
            StatusCode::NOT_FOUND,
            StatusCode::MOVED_PERMANENTLY,
        ]);
    }
    if config.vary_on_accept {
        b = b.vary_headers([http::header::ACCEPT]);
    }
    b.build().ok()
}

/// Which bodies of a cached `POST` the run's `query_when` takes for queries.
#[derive(Clone, Copy, Default)]
enum Queries {
    /// No `query_when`: every one.
    #[default]
    All,
    /// GraphQL queries (`graphql::is_query`).
    GraphQl,
    /// JSON-RPC calls only to [`RPC_READS`].
    JsonRpc,
}

/// The JSON-RPC methods the runs that judge JSON-RPC calls take for reads.
const RPC_READS: &[&str] = &["eth_call", "eth_chainId"];

/// What the origin and the checks share in one run.
#[derive(Default)]
struct Run {
    /// The answers the origin gives next.
    queue: Mutex<VecDeque<Answer>>,
    /// Every body the origin answered with: a `200` from the cache must be one of them.
    bodies: Mutex<HashSet<Vec<u8>>>,
    /// Once the store's reads have been changed, a cached body and the origin's copies among an entry's headers
    /// may be too (the entry has no checksum).
    mangled: AtomicBool,
    /// The credential rule to check: `Authorization` (bypass, or in the key) or the tenant (a partition).
    partitioned: bool,
    /// `Credentials::Bypass`: a request that carries credentials goes to the origin, uncached.
    bypasses_credentials: bool,
    /// `echo_body_field` rewrites cached bodies.
    echoes: bool,
    /// The layer ignores `_ga` and `_ga_*` cookies.
    ignores_cookies: bool,
    /// The layer caches `POST` and `QUERY` (else a `POST` is a write).
    caches_post: bool,
    /// Which bodies of a cached `POST` are queries.
    queries: Queries,
    /// Writes remove their URI's entries (`invalidate_on_unsafe`): the checks follow them.
    follows_writes: bool,
    /// The calls the origin has taken.
    calls: AtomicU64,
    /// The number the next followed write gets.
    next_write: AtomicU64,
    /// For each followed write the origin took, its count of calls when it took it.
    took: Mutex<HashMap<u64, u64>>,
    /// For each resource (see [`resource`]), the origin's count of calls when it took the last write to it that
    /// succeeded or went unanswered: what every request sent afterwards must be answered with more than.
    written: Mutex<HashMap<String, u64>>,
}

/// Whether a request is a write to its target URI, as the origin reads it: a `PUT`, `PATCH` or `DELETE`; a `POST`
/// where the layer does not cache it, or where the run's `query_when` is set and `body` (as sent, before any
/// gzip) is not a query by it. (A request that tunnels a method may be one as well: not followed.)
fn is_write(method: &Method, body: &[u8], run: &Run) -> bool {
    if *method != Method::POST || !run.caches_post {
        return matches!(
            *method,
            Method::PUT | Method::PATCH | Method::DELETE | Method::POST
        );
    }
    match run.queries {
        Queries::All => false,
        Queries::GraphQl => !graphql::is_query(body),
        Queries::JsonRpc => !jsonrpc::only_calls_to(body, RPC_READS),
    }
}

/// What a request reads or writes as the checks follow writes: its URI as written, with the fields that may name
/// another authority (`Host`, `Forwarded`, `X-Forwarded-Host`) and, where the layer keys by a tenant, the tenant.
/// Spellings of one URI are different resources here, though the layer takes them for one: the checks are the
/// weaker, not wrong.
fn resource(request: &Request<Frames>, partitioned: bool) -> String {
    let mut out = request.uri().to_string();
    for name in ["host", "forwarded", "x-forwarded-host"] {
        out.push(' ');
        for v in request.headers().get_all(name) {
            push_hex(&mut out, v.as_bytes(), true);
        }
    }
    if partitioned {
        out.push(' ');
        out.push_str(
            identity(request.headers(), "x-tenant")
                .to_str()
                .unwrap_or("?"),
        );
    }
    out
}

impl Answer {
    /// The origin's plain `200` (what it gives with no answer queued), taking `delay` milliseconds.
    fn slow(delay: u16) -> Self {
        Answer {
            status: 200,
            headers: Vec::new(),
            set_cookies: Vec::new(),
            vary: Vec::new(),
            body: FuzzBody::plain(),
            fail: false,
            set_cookie2: false,
            delay,
        }
    }
}

impl FuzzBody {
    /// `{}`, with its exact size.
    fn plain() -> Self {
        FuzzBody {
            chunks: vec![b"{}".to_vec()],
            trailers: None,
            hint: Hint::Exact,
        }
    }
}

/// The origin: the next queued answer (or a plain `200`), with the request's credential, tenant and other
/// cookies copied in, and a mark when it sets a cookie the layer does not ignore.
async fn origin(
    run: Arc<Run>,
    request: Request<RequestBody>,
) -> Result<Response<Frames>, BoxError> {
    let (parts, body) = request.into_parts();
    // Read the request's body as an origin would; its error is the origin's.
    body.collect().await?;
    let call = run.calls.fetch_add(1, Ordering::Relaxed) + 1;
    if let (Some(Followed(write)), Ok(mut took)) =
        (parts.extensions.get::<Followed>(), run.took.lock())
    {
        took.insert(*write, call);
    }
    let answer = run.queue.lock().ok().and_then(|mut q| q.pop_front());
    if let Some(a) = &answer {
        tokio::time::sleep(Duration::from_millis(u64::from(a.delay))).await;
    }
    let body = match &answer {
        Some(a) if a.fail => return Err("the origin failed".into()),
        Some(a) => &a.body,
        None => &FuzzBody::plain(),
    };
    if let Ok(mut bodies) = run.bodies.lock() {
        bodies.insert(body.chunks.concat());
    }
    let mut response = Response::new(Frames::new(body));
    if let Some(a) = &answer {
        *response.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
        *response.headers_mut() = header_map(&a.headers);
        if !a.vary.is_empty() {
            let names: Vec<&str> = a
                .vary
                .iter()
                .map(|i| NAMES[*i as usize % NAMES.len()])
                .collect();
            if let Ok(vary) = HeaderValue::from_str(&names.join(", ")) {
                response.headers_mut().append(http::header::VARY, vary);
            }
        }
        let field = if a.set_cookie2 {
            HeaderName::from_static("set-cookie2")
        } else {
            http::header::SET_COOKIE
        };
        for cookies in a.set_cookies.iter().filter_map(cookie_field) {
            response.headers_mut().append(&field, cookies);
        }
    }
    for (from, to) in [("authorization", ECHO_AUTH), ("x-tenant", ECHO_TENANT)] {
        response
            .headers_mut()
            .insert(to, identity(&parts.headers, from));
    }
    let cookies = other_cookies(&parts.headers, run.ignores_cookies);
    response.headers_mut().insert(ECHO_COOKIES, cookies);
    response.headers_mut().insert(CALL, HeaderValue::from(call));
    let listed = vary_listed(response.headers());
    let vary = vary_echo(listed.iter().map(String::as_str), &parts.headers);
    if let Ok(vary) = HeaderValue::from_str(&vary) {
        response.headers_mut().insert(ECHO_VARY, vary);
    }
    // A `304` confirms a stored body, made before it: a cookie it sets is no sign of that body's owner.
    if response.status() != StatusCode::NOT_MODIFIED
        && sets_other_cookie(response.headers(), run.ignores_cookies)
    {
        let marked = HeaderValue::from_static("1");
        response.headers_mut().insert(SETS_COOKIE, marked);
    }
    Ok(response)
}

/// Sends one request and checks what came back.
async fn send<S>(service: S, run: &Run, spec: &RequestSpec)
where
    S: tower::Service<Request<Frames>, Response = Response<ResponseBody<Frames>>, Error = BoxError>,
{
    let Some(mut request) = request(spec) else {
        return;
    };
    let sent = request.headers().clone();
    let get = request.method() == Method::GET;
    let resource = resource(&request, run.partitioned);
    let writes = is_write(request.method(), &spec.body.chunks.concat(), run);
    let followed = (run.follows_writes && writes).then(|| {
        let write = run.next_write.fetch_add(1, Ordering::Relaxed);
        request.extensions_mut().insert(Followed(write));
        write
    });
    // The last write to the resource that finished before this request was sent.
    let written = run
        .written
        .lock()
        .ok()
        .and_then(|w| w.get(&resource).copied())
        .unwrap_or(0);
    let result = service.oneshot(request).await;
    if let Some(write) = followed {
        // An error status is the origin's word that nothing changed; no answer (a transport error, or a gateway's
        // status saying the origin gave none) leaves the change possible.
        let changed = result.as_ref().map_or(true, |response| {
            let status = response.status().as_u16();
            status < 400 || [502, 504, 520, 524].contains(&status)
        });
        let took = run.took.lock().ok().and_then(|mut t| t.remove(&write));
        if let (true, Some(call), Ok(mut written)) = (changed, took, run.written.lock()) {
            let last = written.entry(resource).or_default();
            *last = (*last).max(call);
        }
    }
    let Ok(response) = result else {
        return;
    };
    let Some(outcome) = CacheOutcome::of(&response) else {
        panic!("a response without a cache outcome: {response:?}");
    };
    // The origin's copies below are headers of the entries too: once the store's reads change, so may they.
    let echoes = !run.mangled.load(Ordering::Relaxed);
    // Whatever answered, it was fetched for this request's credential and tenant.
    let (from, echo) = if run.partitioned {
        ("x-tenant", ECHO_TENANT)
    } else {
        ("authorization", ECHO_AUTH)
    };
    if let (true, Some(echoed)) = (echoes, response.headers().get(echo)) {
        let asked = identity(&sent, from);
        assert_eq!(
            echoed, &asked,
            "an answer fetched for another {from} ({outcome:?}): {response:?}"
        );
    }
    // Under `Credentials::Bypass`, a request with credentials is not the cache's to answer, nor to store for.
    if run.bypasses_credentials && carries_credentials(&sent, run.ignores_cookies) {
        assert!(
            matches!(
                outcome,
                CacheOutcome::Bypass(_) | CacheOutcome::OnlyIfCachedMiss
            ),
            "a request with credentials, not bypassed ({outcome:?}): {sent:?}"
        );
    }
    // Without a partition, so were its cookies (a partition keys by tenant alone, by the user's word).
    let cookies = response.headers().get(ECHO_COOKIES);
    if let (true, false, Some(echoed)) = (echoes, run.partitioned, cookies) {
        let asked = other_cookies(&sent, run.ignores_cookies);
        assert_eq!(
            echoed, &asked,
            "an answer fetched for other cookies ({outcome:?}): {response:?}"
        );
    }
    // It was fetched for this request's values of the headers it varies on.
    let vary = response
        .headers()
        .get(ECHO_VARY)
        .and_then(|v| v.to_str().ok());
    if let (true, Some(echoed)) = (echoes, vary) {
        let names = echoed
            .split(';')
            .filter_map(|e| e.split_once(':'))
            .map(|(name, _)| name);
        assert_eq!(
            echoed,
            vary_echo(names, &sent),
            "an answer fetched for other values of what it varies on ({outcome:?}): {response:?}"
        );
    }
    // A request sent after a write to its resource is answered with what the origin sent after the write (one the
    // origin answers itself is, by its count).
    let call = response
        .headers()
        .get(CALL)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let (true, Some(call)) = (echoes, call) {
        assert!(
            call > written,
            "answered with what the origin sent before a write that finished first (call {call}, \
             the write's {written}; {outcome:?}): {response:?}"
        );
    }
    let from_entry = matches!(
        outcome,
        CacheOutcome::Hit | CacheOutcome::Stale { .. } | CacheOutcome::StaleIfError
    );
    // An answer that set a cookie is its requester's alone: never stored, never given to a collapsed caller.
    let shared = from_entry
        || matches!(
            outcome,
            CacheOutcome::Miss {
                collapsed: true,
                ..
            }
        );
    assert!(
        !(echoes && shared && response.headers().contains_key(SETS_COOKIE)),
        "an answer that set a cookie, shared ({outcome:?}): {response:?}"
    );
    let whole = get && from_entry && response.status() == StatusCode::OK;
    let Ok(body) = response.into_body().collect().await else {
        return;
    };
    // A body from the store is, byte for byte, one the origin gave.
    if whole && !run.echoes && !run.mangled.load(Ordering::Relaxed) {
        let body = body.to_bytes();
        let known = run
            .bodies
            .lock()
            .map(|b| b.contains(body.as_ref()))
            .unwrap_or(true);
        assert!(
            known,
            "a cached body the origin never sent ({outcome:?}): {body:?}"
        );
    }
}

fuzz_target!(|input: Input| {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let store = Arc::new(Mangling {
            inner: MemoryStore::new(1 << 20),
            mangle: Mutex::default(),
        });
        let Some(layer) = layer(&input.config, store.clone()) else {
            return;
        };
        let handle = layer.handle();
        let run = Arc::new(Run {
            partitioned: input.config.credentials % 3 == 2,
            bypasses_credentials: input.config.credentials.is_multiple_of(3),
            echoes: input.config.echo_id,
            ignores_cookies: input.config.ignore_cookies,
            caches_post: input.config.post,
            queries: match input.config.predicates % 3 {
                1 => Queries::GraphQl,
                2 => Queries::JsonRpc,
                _ => Queries::All,
            },
            follows_writes: input.config.invalidate_on_unsafe,
            ..Run::default()
        });
        let service = {
            let run = run.clone();
            layer.layer(tower::service_fn(move |r| origin(run.clone(), r)))
        };
        for op in input.ops.into_iter().take(24) {
            match op {
                Op::Send(spec) => send(service.clone(), &run, &spec).await,
                Op::Together(a, b) => {
                    tokio::join!(
                        send(service.clone(), &run, &a),
                        send(service.clone(), &run, &b)
                    );
                }
                Op::Rewrite {
                    spec,
                    write,
                    answer,
                    query,
                    racing,
                } => {
                    let read = if query {
                        RequestSpec {
                            method: 2,
                            ..spec.clone()
                        }
                    } else {
                        RequestSpec {
                            method: 0,
                            body: FuzzBody {
                                chunks: Vec::new(),
                                trailers: None,
                                hint: Hint::Exact,
                            },
                            gzip: false,
                            ..spec.clone()
                        }
                    };
                    let write = RequestSpec {
                        method: WRITES[write as usize % WRITES.len()],
                        ..spec
                    };
                    let Some(delay) = racing else {
                        send(service.clone(), &run, &read).await;
                        if let (Some(answer), Ok(mut q)) = (answer, run.queue.lock()) {
                            q.push_front(answer);
                        }
                        send(service.clone(), &run, &write).await;
                        send(service.clone(), &run, &read).await;
                        continue;
                    };
                    if let Ok(mut q) = run.queue.lock() {
                        if let Some(answer) = answer {
                            q.push_front(answer);
                        }
                        q.push_front(Answer::slow(delay));
                    }
                    tokio::join!(
                        send(service.clone(), &run, &read),
                        send(service.clone(), &run, &write)
                    );
                    send(service.clone(), &run, &read).await;
                }
                Op::Queue(answer) => {
                    if let Ok(mut q) = run.queue.lock() {
                        q.push_back(answer);
                    }
                }
                Op::Wait(ms) => {
                    tokio::time::sleep(Duration::from_millis(u64::from(ms % 2_000_000))).await
                }
                Op::Mangle(flips, cut) => {
                    run.mangled.store(true, Ordering::Relaxed);
                    if let Ok(mut m) = store.mangle.lock() {
                        *m = Mangle { flips, cut };
                    }
                }
                Op::Remove(removal, spec) => {
                    let Some(r) = request_bytes(&spec) else {
                        continue;
                    };
                    // What each removed is not checked here: the requests after it are.
                    let _ = match removal {
                        Removal::Invalidate => handle.invalidate(&r).await.map(u64::from),
                        Removal::MarkStale => handle.mark_stale(&r).await.map(u64::from),
                        Removal::InvalidateUri => handle.invalidate_uri(&r).await,
                        Removal::MarkUriStale => handle.mark_uri_stale(&r).await,
                    };
                }
                Op::Tag { stale, tag } => {
                    let tag = ["/a", "/b", "x"][tag as usize % 3];
                    let _ = if stale {
                        handle.mark_tag_stale(tag).await
                    } else {
                        handle.invalidate_tag(tag).await
                    };
                }
                Op::Group { stale, group } => {
                    let group = ["g", "h"][group as usize % 2];
                    let _ = if stale {
                        handle.mark_group_stale("api.test", group).await
                    } else {
                        handle.invalidate_group("api.test", group).await
                    };
                }
                Op::Purge => {
                    let _ = handle.purge().await;
                }
                Op::SweepTags => {
                    let _ = handle.sweep_tags().await;
                }
            }
        }
        // Background refreshes and fetches finish.
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
});
