//! Request -> [`CacheKey`]: SHA-256 over length-prefixed request fields, with JSON bodies canonicalised.
//!
//! The digest covers, each length-prefixed so no two fields can run into each other: the method, scheme (in lowercase),
//! authority (from the URI, else the `Host` header; its host in lowercase, without the scheme's default port), path,
//! the query pairs sorted by name (pairs of one name keep their order: `?sort=name&sort=date` is not
//! `?sort=date&sort=name`, and neither are `?a=1&%61=2` and `?%61=2&a=1`, nor `?A=1&a=2` and `?a=2&A=1`, which some
//! server reads as one name; a query holding a `;` keeps its order; pairs the layer ignores left out), the configured
//! vary headers, the partition (tenant identity) and, in a layer with `partition_by`, the request's own, the request
//! headers of [`IMPLIED_VARY`] (what a proxy forwards of the client's request, `X-Forwarded-Host`, `Forwarded`, ...,
//! the client's address left out; `Prefer`; API versions; account selectors), and the body with its `Content-Type` and
//! `Content-Encoding` (a coded body is another body than the same content in no coding; with feature `decompress`, one
//! in codings the build undoes is hashed decoded, after a marker, so that two compressions of one content share a key).
//! A JSON body (`application/json` or `*/*+json`) is hashed in canonical form: object members sorted by key at every
//! level, array order kept, no insignificant whitespace, strings written with the fewest escapes (`"\u0061"` is `"a"`),
//! numbers kept exactly as written (so `1e400` and `1e401` never collide). Invalid JSON, an object with a key twice
//! (after escapes are decoded: such a body means what its parser makes of it), or any other content type hashes the raw
//! bytes. Members a layer ignores (JSON Pointers, see
//! [`ignore_body_fields`](super::RedisCacheLayerBuilder::ignore_body_fields)) are left out of the canonical form.

use super::decision::NameTable;
use super::memo;
use crate::atomic::AtomicU64;
use http::header::GetAll;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What the key of an entry's lease adds to the entry's key.
pub(crate) const LEASE_SUFFIX: &str = ":lease";

/// The key of the lease of the entry at `key` (same hash slot).
pub(crate) fn lease_key_of(key: &str) -> String {
    let mut lease = String::with_capacity(key.len() + LEASE_SUFFIX.len());
    lease.push_str(key);
    lease.push_str(LEASE_SUFFIX);
    lease
}

/// What the key of a tag set's invalidation mark adds to the set's key.
#[cfg_attr(
    not(feature = "redis"),
    allow(dead_code, reason = "only Redis and its near cache name marks")
)]
pub(crate) const MARK_SUFFIX: &str = ":invalidated";
/// The Redis key of one cached request: `<namespace>:v1:{<sha256 hex>}`.
///
/// The braces are a Redis Cluster hash tag, so the entry and its refresh lease (`...}:lease`) live in one slot.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    key: Arc<str>,
    digest: [u8; 32],
}

impl CacheKey {
    /// The full Redis key.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The SHA-256 digest of the request fields.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The key of this entry's refresh lease (same hash slot).
    pub fn lease_key(&self) -> String {
        lease_key_of(&self.key)
    }

    /// The entry key `key` of the namespace whose prefix is `namespace_prefix`; `None` for any other key.
    pub(crate) fn parse(namespace_prefix: &str, key: &str) -> Option<CacheKey> {
        let digest = parse_key(namespace_prefix, key)?;
        Some(CacheKey {
            key: Arc::from(key),
            digest,
        })
    }

    /// The first 8 hex digits of the digest, for logs and traces.
    pub fn short(&self) -> &str {
        let start = self.key.len() - 65;
        &self.key[start..start + 8]
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CacheKey").field(&self.key).finish()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// A request body as its key holds it: the bytes, and whether they were decoded from the codings its
/// `Content-Encoding` names (see [`Content`](super::decode::Content)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedBody<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) decoded: bool,
}

impl<'a> KeyedBody<'a> {
    /// A body keyed as it came.
    pub(crate) fn sent(bytes: &'a [u8]) -> Self {
        KeyedBody {
            bytes,
            decoded: false,
        }
    }
}

/// What goes into a key besides the request itself.
#[derive(Debug, Clone)]
pub(crate) struct KeyConfig {
    pub(crate) namespace: String,
    // Private, as is `vary`: the memo takes settings with one id to be the same settings.
    partition: Vec<u8>,
    vary: Vec<HeaderName>,
    /// Query parameters left out of the key: names, or prefixes ending in `*`.
    ignored_query: Vec<String>,
    /// JSON body members left out of the key.
    ignored_body: Arc<[Pointer]>,
    /// Where in `vary` the credential headers a layer keys by ([`Credentials::InKey`](super::Credentials)) begin:
    /// `vary.len()` without them.
    credentials_from: usize,
    /// Those credential headers, each with its place among them, for the memo's fingerprint: it looks each
    /// request header up here instead of looking each of the (many) names up in the request.
    credentials: Option<Arc<NameTable<usize>>>,
    /// Tells these settings apart from every other in the process, in the digest memo.
    id: u64,
}

/// A number no other key settings in the process have, for the digest memo.
fn next_id() -> u64 {
    static IDS: AtomicU64 = AtomicU64::new(0);
    IDS.fetch_add(1, Ordering::Relaxed)
}

impl KeyConfig {
    pub(crate) fn new(namespace: String, partition: Vec<u8>, vary: Vec<HeaderName>) -> Self {
        KeyConfig {
            namespace,
            partition,
            credentials_from: vary.len(),
            vary,
            ignored_query: Vec::new(),
            ignored_body: Arc::from([]),
            credentials: None,
            id: next_id(),
        }
    }

    /// The request headers every key holds the values of: the layer's vary headers and the credentials it keys
    /// by.
    pub(crate) fn keyed_headers(&self) -> &[HeaderName] {
        &self.vary
    }

    /// These settings, whose vary headers from index `from` on are the credential headers the layer keys by
    /// ([`Credentials::InKey`](super::Credentials)).
    pub(crate) fn with_credentials_from(self, from: usize) -> Self {
        let from = from.min(self.vary.len());
        let tail = self.vary[from..].iter().cloned().zip(0..);
        let credentials =
            (from < self.vary.len()).then(|| Arc::new(NameTable::new(tail, |a, _| a)));
        KeyConfig {
            credentials_from: from,
            credentials,
            id: next_id(),
            ..self
        }
    }

    /// These settings, with the query parameters `names` left out of the key (see
    /// [`ignore_query_params`](super::RedisCacheLayerBuilder::ignore_query_params)).
    pub(crate) fn ignoring_query(self, names: Vec<String>) -> Self {
        KeyConfig {
            ignored_query: names,
            // Other settings: another id, so that the memo never answers for the old ones.
            id: next_id(),
            ..self
        }
    }

    /// These settings, with the JSON body members `pointers` name left out of the key (see
    /// [`ignore_body_fields`](super::RedisCacheLayerBuilder::ignore_body_fields)).
    pub(crate) fn ignoring_body(self, pointers: impl Into<Arc<[Pointer]>>) -> Self {
        KeyConfig {
            ignored_body: pointers.into(),
            id: next_id(),
            ..self
        }
    }

    /// Computes the key of a request from its parts and its complete body, for a layer without
    /// [`partition_by`](super::RedisCacheLayerBuilder::partition_by).
    #[cfg(test)]
    pub(crate) fn key(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> CacheKey {
        self.key_in(method, uri, headers, None, KeyedBody::sent(body))
    }

    /// Computes the key of a request from its parts, its own partition (see
    /// [`partition_by`](super::RedisCacheLayerBuilder::partition_by); `None` without one) and its complete
    /// body.
    pub(crate) fn key_in(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        partition: Option<&[u8]>,
        body: KeyedBody<'_>,
    ) -> CacheKey {
        self.key_of(self.digest(method, uri, headers, partition, body))
    }

    /// The key of the request whose digest is `digest`: formatted, or, for one of the few this thread
    /// formatted last, shared.
    pub(crate) fn key_of(&self, digest: [u8; 32]) -> CacheKey {
        let recent = RECENT_KEYS.try_with(|recent| {
            let mut recent = recent.try_borrow_mut().ok()?;
            if let Some(key) = recent.find(self.id, &digest) {
                return Some(key);
            }
            let key: Arc<str> = Arc::from(format_key(&self.namespace, &digest));
            recent.keep(self.id, digest, key.clone());
            Some(key)
        });
        let key = match recent {
            Ok(Some(key)) => key,
            _ => Arc::from(format_key(&self.namespace, &digest)),
        };
        CacheKey { key, digest }
    }

    /// The SHA-256 digest of a request's fields (see the module docs): all of its key but the namespace. A
    /// request this thread keyed a moment ago takes its digest from the [`memo`].
    pub(crate) fn digest(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        partition: Option<&[u8]>,
        body: KeyedBody<'_>,
    ) -> [u8; 32] {
        self.digest_with(
            method,
            uri,
            headers,
            holds_implied(uri, headers),
            partition,
            body,
        )
    }

    /// [`digest`](Self::digest), for a request whose headers were already looked through: `implied` says
    /// whether any is one of [`IMPLIED_VARY`] ([`RequestFacts::implied_vary`](super::decision::RequestFacts)),
    /// so that a hit passes over them once.
    pub(crate) fn digest_with(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        implied: bool,
        partition: Option<&[u8]>,
        body: KeyedBody<'_>,
    ) -> [u8; 32] {
        debug_assert_eq!(implied, holds_implied(uri, headers));
        memo::digest(
            // Requests with a partition of their own and those without are remembered apart, so that no other
            // fields can read as one.
            (self.id << 1) | u64::from(partition.is_some()),
            // Every input of `hash_request` that is not part of these settings, so that one fingerprint
            // always means one digest.
            |f| {
                f.field(method.as_str().as_bytes());
                f.field(uri.scheme_str().unwrap_or("").as_bytes());
                f.field(authority(uri, headers));
                f.field(uri.path().as_bytes());
                f.field(uri.query().unwrap_or("").as_bytes());
                for name in &self.vary[..self.credentials_from] {
                    let values = headers.get_all(name);
                    f.count(values.iter().count());
                    for value in values {
                        f.field(value.as_bytes());
                    }
                }
                // The credential headers as the request has them: each value after its name's place, with a
                // bit set that no length or count has. A request's values of one name come one after another,
                // in order, so the same fields mean the same values for each name (another order of names is
                // another fingerprint, and only a memo miss).
                if let Some(credentials) = &self.credentials {
                    for (name, value) in headers {
                        if let Some(place) = credentials.get(name.as_str()) {
                            f.count(place | CREDENTIAL_MARK);
                            f.field(value.as_bytes());
                        }
                    }
                }
                if let Some(partition) = partition {
                    f.field(partition);
                }
                if implied {
                    for_each_implied(uri, headers, |index, value| {
                        // With the top bit set, which no length has: never read as the content type's.
                        f.count(index | IMPLIED_MARK);
                        f.field(value);
                    });
                }
                f.field(content_type(headers));
                if !body.bytes.is_empty() || body.decoded {
                    let codings = headers.get_all(header::CONTENT_ENCODING);
                    // Decoded or not: the same bytes may be either (one content, and its compression).
                    f.count(codings.iter().count() << 1 | usize::from(body.decoded));
                    for coding in codings {
                        f.field(coding.as_bytes());
                    }
                }
                f.field(body.bytes);
            },
            || self.hash_request(method, uri, headers, implied, partition, body),
        )
    }

    /// The digest of [`digest`](Self::digest), computed (out of line: a memoised request, the hit's case, runs
    /// none of it).
    #[inline(never)]
    fn hash_request(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        implied: bool,
        partition: Option<&[u8]>,
        body: KeyedBody<'_>,
    ) -> [u8; 32] {
        let mut h = Sha256::new();
        field(&mut h, b"tower-redis-cache/key/v3");
        field(&mut h, method.as_str().as_bytes());
        // A scheme is case-insensitive (RFC 3986 §3.1), but `http` keeps the spelling of one it has no name for
        // (`WS`), and before 1.6 that of an `HTTP` given to `Uri::builder`: hashed in lowercase, as nearly every
        // request spells it already, so that `WS://` and `ws://` share a key whichever version built them.
        let scheme = uri.scheme_str();
        field(&mut h, &lowercase(scheme.unwrap_or("").as_bytes()));
        // One origin's spellings share a key; an authority already so (nearly all) hashes as it always did.
        let ports = default_ports(scheme);
        field(&mut h, &normal_authority(authority(uri, headers), ports));
        field(&mut h, uri.path().as_bytes());
        hash_query(&mut h, uri.query(), &self.ignored_query);
        count(&mut h, self.vary.len());
        for name in &self.vary {
            field(&mut h, name.as_str().as_bytes());
            let values = headers.get_all(name);
            count(&mut h, values.iter().count());
            for value in values {
                field(&mut h, value.as_bytes());
            }
        }
        field(&mut h, &self.partition);
        // A request's own partition only where the layer has one, so that other keys stay as they were. Its
        // marker byte is one the body's hashing never starts with (`2`, or a length's high byte, `0`).
        if let Some(partition) = partition {
            h.update([3u8]);
            field(&mut h, partition);
        }
        // The implied vary fields only where the request has some, so that other keys stay as they were: after
        // a marker byte neither the body's hashing nor the partition's starts with, each after its index in
        // `IMPLIED_VARY`, ended by a byte no index is.
        if implied {
            let mut any = false;
            for_each_implied(uri, headers, |index, value| {
                if !any {
                    h.update([5u8]);
                    any = true;
                }
                h.update([index as u8]);
                field(&mut h, value);
            });
            if any {
                h.update([u8::MAX]);
            }
        }
        hash_body(&mut h, headers, body, &self.ignored_body);
        h.finalize().into()
    }

    /// The key of the set of entries stored with `tag` (see
    /// [`RedisCacheLayerBuilder::tags`](super::RedisCacheLayerBuilder::tags)): `<namespace>:v1:tag:{<sha256
    /// hex>}`, a digest of the partition and the tag, so that a tag is this tenant's alone and any bytes make a
    /// key of one length. Never taken for an entry's key (which has no `tag:`).
    pub(crate) fn tag_key(&self, tag: &str) -> String {
        let mut h = Sha256::new();
        field(&mut h, b"tower-redis-cache/tag/v1");
        field(&mut h, &self.partition);
        field(&mut h, tag.as_bytes());
        format_in(&self.namespace, "tag:", &h.finalize().into())
    }

    /// The key of the set of fills of `uri` (a request with `headers`, in `partition`, its own) that its writes
    /// cannot name by key (variants, queries; see [`UriTags`](super::engine::UriTags)):
    /// `<namespace>:v1:tag:{<sha256 hex>}`, a digest of the partitions, the authority (the URI's, else the `Host`
    /// header; case and the ports `80` and `443` ignored), the path and the query as keys hold it. Not the scheme:
    /// a server sees one resource as `/p` with `Host: h` over HTTP/1.1 and as `https://h/p` over HTTP/2, and a
    /// write in either form must find the fills of both. Apart from every tag a user names (another label starts
    /// the digest).
    pub(crate) fn uri_tag_key(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        partition: Option<&[u8]>,
    ) -> String {
        let mut h = Sha256::new();
        field(&mut h, b"tower-redis-cache/uri-tag/v2");
        field(&mut h, &self.partition);
        match partition {
            Some(partition) => {
                h.update([1u8]);
                field(&mut h, partition);
            }
            None => h.update([0u8]),
        }
        field(
            &mut h,
            &normal_authority(authority(uri, headers), WEB_DEFAULT_PORTS),
        );
        field(&mut h, uri.path().as_bytes());
        hash_query(&mut h, uri.query(), &self.ignored_query);
        format_in(&self.namespace, "tag:", &h.finalize().into())
    }

    /// The key of the set of entries in cache group `group` (RFC 9875) of the origin `authority` (the URI's
    /// authority, else the `Host` header; case and the ports `80` and `443` ignored): a tag set like
    /// [`tag_key`](Self::tag_key)'s, apart from every tag a user names (another label starts the digest). A group
    /// is the origin's, so it spans every partition of a request's own, and, like a URI's tag, every scheme.
    pub(crate) fn group_key(&self, authority: &[u8], group: &str) -> String {
        let mut h = Sha256::new();
        field(&mut h, b"tower-redis-cache/group/v1");
        field(&mut h, &self.partition);
        field(&mut h, &normal_authority(authority, WEB_DEFAULT_PORTS));
        field(&mut h, group.as_bytes());
        format_in(&self.namespace, "tag:", &h.finalize().into())
    }

    /// The key of the lease of the fleet's sweep of tag sets (see [`tags`](super::tags)).
    pub(crate) fn sweep_lease_key(&self) -> String {
        format!("{}:v1:tag-sweep", self.namespace)
    }

    /// The key of the namespace's tag clock (see [`Store::tag_clock`](super::store::Store::tag_clock)).
    pub(crate) fn tag_clock_key(&self) -> String {
        format!("{}:v1:tag-clock", self.namespace)
    }

    /// The prefix of every entry (and lease) of this namespace.
    pub(crate) fn namespace_prefix(&self) -> String {
        format!("{}:v1:", self.namespace)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Keys per thread in [`RecentKeys`].
const RECENT: usize = 8;

/// The keys a thread formatted last, with the id of their settings and their digest: a hot request's key is
/// shared rather than formatted (and allocated) on every hit.
struct RecentKeys {
    keys: [Option<RecentKey>; RECENT],
    /// The slot the next key takes (round robin).
    next: usize,
}

/// A key in [`RecentKeys`].
struct RecentKey {
    /// The id of the settings it was formatted with.
    id: u64,
    digest: [u8; 32],
    key: Arc<str>,
}

impl RecentKeys {
    fn find(&self, id: u64, digest: &[u8; 32]) -> Option<Arc<str>> {
        self.keys
            .iter()
            .flatten()
            .find(|recent| recent.id == id && recent.digest == *digest)
            .map(|recent| recent.key.clone())
    }

    fn keep(&mut self, id: u64, digest: [u8; 32], key: Arc<str>) {
        self.keys[self.next % RECENT] = Some(RecentKey { id, digest, key });
        self.next = self.next.wrapping_add(1);
    }
}

thread_local! {
    static RECENT_KEYS: RefCell<RecentKeys> = const {
        RefCell::new(RecentKeys {
            keys: [const { None }; RECENT],
            next: 0,
        })
    };
}

/// The request's authority: the URI's, else the `Host` header.
pub(crate) fn authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a [u8] {
    match uri.authority() {
        Some(authority) => authority.as_str().as_bytes(),
        None => headers.get(header::HOST).map_or(&b""[..], |v| v.as_bytes()),
    }
}

/// The ports an authority drops as its scheme's default ([`normal_authority`]): `80` for `http`, `443` for
/// `https`, none for another scheme or none at all. Keys drop a port only where the scheme says it is the
/// default: without one, `Host: h:443` may reach a plain-HTTP listener whose links would then name port 443,
/// and an answer echoing it must not be served to `Host: h` (web cache poisoning by an unkeyed port).
pub(crate) fn default_ports(scheme: Option<&str>) -> &'static [&'static str] {
    match scheme {
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => &["80"],
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => &["443"],
        _ => &[],
    }
}

/// Both web default ports: what an origin's authority drops where its scheme is not part of what is compared
/// (URI tags and cache groups span schemes, and there removing too much is safe, too little is not).
pub(crate) const WEB_DEFAULT_PORTS: &[&str] = &["80", "443"];

/// `authority` as two spellings of one origin compare equal (RFC 9110 §4.2.3, RFC 3986 §6.2.2.1 and §6.2.3):
/// its host in lowercase, without an empty port or one of `defaults`. `HTTPS://API.example:443` and
/// `https://api.example` name one origin; `api.example:8443` keeps its port. Borrowed when already so, as
/// nearly every authority is.
pub(crate) fn normal_authority<'a>(authority: &'a [u8], defaults: &[&str]) -> Cow<'a, [u8]> {
    let host = host_start(authority);
    let end = match port_colon(authority) {
        Some(colon)
            if authority[colon + 1..].is_empty()
                || defaults
                    .iter()
                    .any(|default| default.as_bytes() == &authority[colon + 1..]) =>
        {
            colon
        }
        _ => authority.len(),
    };
    let kept = &authority[..end];
    if kept[host..].iter().any(u8::is_ascii_uppercase) {
        let mut lower = kept.to_vec();
        lower[host..].make_ascii_lowercase();
        Cow::Owned(lower)
    } else {
        Cow::Borrowed(kept)
    }
}

/// `bytes` in ASCII lowercase, borrowed when they are already.
fn lowercase(bytes: &[u8]) -> Cow<'_, [u8]> {
    if bytes.iter().any(u8::is_ascii_uppercase) {
        Cow::Owned(bytes.to_ascii_lowercase())
    } else {
        Cow::Borrowed(bytes)
    }
}

/// Where the host of `authority` starts: after its userinfo (`user@`, deprecated in HTTP URIs, kept as written).
fn host_start(authority: &[u8]) -> usize {
    authority
        .iter()
        .rposition(|&b| b == b'@')
        .map_or(0, |at| at + 1)
}

/// Where the `:` before the port of `authority` is, if it has one (after an IPv6 literal's closing bracket).
pub(crate) fn port_colon(authority: &[u8]) -> Option<usize> {
    let host = host_start(authority);
    let after_literal = authority[host..]
        .iter()
        .rposition(|&b| b == b']')
        .map_or(host, |bracket| host + bracket);
    authority[after_literal..]
        .iter()
        .rposition(|&b| b == b':')
        .map(|colon| after_literal + colon)
}

/// How many fields [`IMPLIED_VARY`] names.
const IMPLIED: usize = 31;

/// The index [`for_each_implied`] gives a [`foreign_host`]'s values: after those of [`IMPLIED_VARY`].
const FOREIGN_HOST: usize = IMPLIED;

/// Request headers every key holds, as if every answer named them in `Vary`: headers that change answers although
/// origins rarely say so. (Their order is part of every key that holds one: new names go at the end.)
///
/// - What a proxy in front of an origin forwards of the client's request: its host, scheme, port, path prefix or
///   original URL. Frameworks build links and redirects from them (Rails, Django, Spring, ASP.NET Core, Rack,
///   Express), so an `http` request redirected to `https` must not be the answer to the `https` one (a redirect
///   loop), and an `X-Forwarded-Host` an attacker sends must not name the host in links other users are served
///   (web cache poisoning). The client's address (`X-Forwarded-For`, `Forwarded: for=`) is not here: keying it
///   would give every client entries of its own; an origin that answers by address says so in `Vary` or
///   `Cache-Control`.
/// - `Prefer` (RFC 7240), which APIs read on reads too (Microsoft Graph's `outlook.timezone`, OData's
///   `odata.maxpagesize`).
/// - The API version a client asks for (`Stripe-Version`, `X-GitHub-Api-Version`, `Anthropic-Version`,
///   `Api-Version`, ...): two versions answer one URI in two shapes.
/// - The account a request acts for beside its credential (`Stripe-Account`, `OpenAI-Organization`,
///   `OpenAI-Project`): where a partition or the credential in the key tells users apart, these tell apart the
///   accounts one credential reaches.
/// - What asks a server for a fragment of a page instead of the page: htmx's `HX-Request`, Hotwire's
///   `Turbo-Frame`, PJAX's `X-PJAX`, and `X-Requested-With` (Rails' `xhr?`, Laravel's `ajax()`). A partial stored
///   under the page's key would be served as the page, and the page to the fragment's requests.
pub(crate) const IMPLIED_VARY: [HeaderName; IMPLIED] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("prefer"),
    HeaderName::from_static("accept-version"),
    HeaderName::from_static("api-version"),
    HeaderName::from_static("x-api-version"),
    HeaderName::from_static("x-github-api-version"),
    HeaderName::from_static("x-ms-version"),
    HeaderName::from_static("stripe-version"),
    HeaderName::from_static("notion-version"),
    HeaderName::from_static("anthropic-version"),
    HeaderName::from_static("anthropic-beta"),
    HeaderName::from_static("openai-beta"),
    HeaderName::from_static("stripe-account"),
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    HeaderName::from_static("x-requested-with"),
    HeaderName::from_static("hx-request"),
    HeaderName::from_static("turbo-frame"),
    HeaderName::from_static("x-pjax"),
];

/// Set in the memo fingerprint's count before each credential field (see
/// [`with_credentials_from`](KeyConfig::with_credentials_from)).
const CREDENTIAL_MARK: usize = 1 << (usize::BITS - 2);

/// Set in the memo fingerprint's count before each implied vary field.
const IMPLIED_MARK: usize = 1 << (usize::BITS - 1);

/// Whether any of `headers` is one of [`IMPLIED_VARY`], or a `Host` the key holds ([`foreign_host`]). (A request's
/// facts know it already: [`HeaderKinds`](super::decision::HeaderKinds) finds them in fewer steps.)
fn holds_implied(uri: &Uri, headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| IMPLIED_VARY.iter().any(|known| known == name))
        || foreign_host(uri, headers)
}

/// Whether a request whose URI has an authority also has a `Host` field naming another (case and the scheme's
/// default port aside), or more than one: then the key holds its `Host` values beside the URI's authority.
///
/// RFC 9112 §3.2.2 has a server ignore `Host` for an absolute-form target, and RFC 9113 §8.3.1 calls a differing
/// one malformed; but a client reaching several virtual hosts at one address (`http://10.0.0.5/status` with
/// `Host: a.example`) is answered by `Host`, and frameworks behind a server read `Host` for the links they write
/// (axum's `Host` extractor before the URI). Keyed by the URI's authority alone, one such answer would reach the
/// requests of the other host.
pub(crate) fn foreign_host(uri: &Uri, headers: &HeaderMap) -> bool {
    let Some(own) = uri.authority() else {
        return false;
    };
    let ports = default_ports(uri.scheme_str());
    let own = normal_authority(own.as_str().as_bytes(), ports);
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => false,
        (Some(host), None) => normal_authority(host.as_bytes(), ports) != own,
        (Some(_), Some(_)) => true,
    }
}

/// Calls `each` with every [`IMPLIED_VARY`] field of the request, in that list's order (so the order the headers
/// came in does not matter) with its index there. Of a `Forwarded` field, each `name=value` pair but `for`
/// (RFC 7239 §4: `by`, `host`, `proto` and any extension), so that clients behind one proxy share entries. Then,
/// where [`foreign_host`] says so, each `Host` value as an origin compares it, with the index [`FOREIGN_HOST`].
#[cold]
fn for_each_implied(uri: &Uri, headers: &HeaderMap, mut each: impl FnMut(usize, &[u8])) {
    for (index, name) in IMPLIED_VARY.iter().enumerate() {
        for value in headers.get_all(name) {
            if index > 0 {
                each(index, value.as_bytes());
                continue;
            }
            // Split at every `,` and `;`, quoted or not: a quoted one only makes more pairs, and only `for`
            // pairs are left out, so a `for` value cannot hide another pair.
            for pair in value.as_bytes().split(|&b| b == b',' || b == b';') {
                let pair = pair.trim_ascii();
                let name = pair
                    .split(|&b| b == b'=')
                    .next()
                    .unwrap_or(pair)
                    .trim_ascii();
                if !pair.is_empty() && !name.eq_ignore_ascii_case(b"for") {
                    each(index, pair);
                }
            }
        }
    }
    if foreign_host(uri, headers) {
        let ports = default_ports(uri.scheme_str());
        for host in headers.get_all(header::HOST) {
            each(FOREIGN_HOST, &normal_authority(host.as_bytes(), ports));
        }
    }
}

/// The request's `Content-Type`, empty without one.
fn content_type(headers: &HeaderMap) -> &[u8] {
    headers
        .get(header::CONTENT_TYPE)
        .map_or(&b""[..], |v| v.as_bytes())
}

fn format_key(namespace: &str, digest: &[u8; 32]) -> String {
    format_in(namespace, "", digest)
}

/// `digest` in lowercase hex: the hash tag of its store keys.
pub(crate) fn hex_of(digest: &[u8; 32]) -> [u8; 64] {
    let mut hex = [0u8; 64];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(digest) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    hex
}

/// `<namespace>:v1:<kind>{<hex of digest>}`.
fn format_in(namespace: &str, kind: &str, digest: &[u8; 32]) -> String {
    let hex = hex_of(digest);
    let mut key = String::with_capacity(namespace.len() + kind.len() + 6 + 64);
    key.push_str(namespace);
    key.push_str(":v1:");
    key.push_str(kind);
    key.push('{');
    // Always ASCII hex digits.
    key.push_str(std::str::from_utf8(&hex).unwrap_or_default());
    key.push('}');
    key
}

/// The first 8 hex digits of `digest`, for logs and traces (what [`CacheKey::short`] gives).
pub(crate) fn short_hex(digest: &[u8; 32]) -> ShortHex {
    let mut hex = [0u8; 8];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(digest) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    ShortHex(hex)
}

/// See [`short_hex`].
pub(crate) struct ShortHex([u8; 8]);

impl ShortHex {
    pub(crate) fn as_str(&self) -> &str {
        // Always ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The digest a key of `namespace_prefix` (`<namespace>:v1:`) was formatted from: the inverse of
/// [`KeyConfig::key_of`]; `None` for any other key (a lease, another namespace, anything malformed).
pub(crate) fn parse_key(namespace_prefix: &str, key: &str) -> Option<[u8; 32]> {
    let hex = key
        .strip_prefix(namespace_prefix)?
        .strip_prefix('{')?
        .strip_suffix('}')?
        .as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(digest)
}

fn count(h: &mut Sha256, n: usize) {
    h.update((n as u64).to_be_bytes());
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    count(h, bytes.len());
    h.update(bytes);
}

fn hash_query(h: &mut Sha256, query: Option<&str>, ignored: &[String]) {
    let Some(query) = query else {
        count(h, 0);
        return;
    };
    // A pair holding a `;` is never left out: servers that also split at `;` (Rack, Python's `parse_qsl` before
    // 3.9.2, Bottle) read `utm_content=x;callback=evil` as two parameters, and ignoring the pair would hand the
    // answer to `callback=evil` to every request without it (parameter cloaking).
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && (p.contains(';') || !is_ignored(query_name(p), ignored)))
        .collect();
    // Stable, by name only: the order of one name's values may carry meaning (`sort=a&sort=b`), and so may the
    // order of names a server reads as one however they are spelled (see `NameClass`). A query holding a `;` keeps
    // its order: a server that also splits there reads pairs inside one of these, which no sort here can see.
    if !query.contains(';') {
        pairs.sort_by(|a, b| NameClass::of(query_name(a)).cmp(NameClass::of(query_name(b))));
    }
    count(h, pairs.len());
    for pair in pairs {
        field(h, pair.as_bytes());
    }
}

/// Whether the query parameter `name` (as sent: percent-encoded, `+` for a space) is one of `ignored`: a name,
/// or a prefix ending in `*`, compared with the name decoded.
fn is_ignored(name: &str, ignored: &[String]) -> bool {
    if ignored.is_empty() {
        return false;
    }
    let decoded: std::borrow::Cow<'_, str> = if name.contains(['%', '+']) {
        form_urlencoded::parse(name.as_bytes())
            .next()
            .map_or(std::borrow::Cow::Borrowed(""), |(name, _)| name)
    } else {
        std::borrow::Cow::Borrowed(name)
    };
    ignored.iter().any(|pattern| names(pattern, &decoded))
}

/// Whether `pattern` names `name`: the same name, or, for a pattern ending in `*`, any name it begins.
pub(crate) fn names(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// What a query parameter's name sorts by: a form into which every spelling that some server reads as one name
/// falls, so that sorting never moves one parameter's values past each other, however the client spelled its
/// name. The name percent-decoded (`%61` is `a`), in ASCII lowercase (ASP.NET reads names case-blind), cut at its
/// first `[` (PHP and Rack read `a[]=1` and `a[x]=1` as parts of `a`), and every run of other characters than
/// ASCII letters and digits one `_`, dropped at either end (PHP reads ` a` as `a`, and `a.b` and `a b` as `a_b`; a
/// `+` is a space). Coarser than any server's reading: names it takes as one but a server does not only keep
/// their order, which costs a hit at most.
struct NameClass<'a> {
    /// What is left of the name.
    rest: &'a [u8],
    /// Whether a letter or digit was given yet.
    started: bool,
    /// Whether other characters came since the last letter or digit.
    gap: bool,
}

impl<'a> NameClass<'a> {
    fn of(name: &'a str) -> Self {
        NameClass {
            rest: name.as_bytes(),
            started: false,
            gap: false,
        }
    }
}

impl Iterator for NameClass<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let hex_digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
        loop {
            let (&first, after) = self.rest.split_first()?;
            let (byte, rest) = match (first, after) {
                (b'%', [hi, lo, rest @ ..]) => match (hex_digit(*hi), hex_digit(*lo)) {
                    (Some(hi), Some(lo)) => (hi << 4 | lo, rest),
                    _ => (first, after),
                },
                _ => (first, after),
            };
            if byte == b'[' {
                self.rest = &[];
                return None;
            }
            if !byte.is_ascii_alphanumeric() {
                self.rest = rest;
                self.gap = self.started;
                continue;
            }
            if self.gap {
                // The separator first; the letter on the next call.
                self.gap = false;
                return Some(b'_');
            }
            self.rest = rest;
            self.started = true;
            return Some(byte.to_ascii_lowercase());
        }
    }
}

/// The name of a `name=value` query pair (the whole pair when it has no `=`).
fn query_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

fn hash_body(h: &mut Sha256, headers: &HeaderMap, body: KeyedBody<'_>, ignored: &[Pointer]) {
    let KeyedBody {
        bytes: body,
        decoded,
    } = body;
    // (A body that decodes to nothing was sent as something: it keys as a decoded body.)
    if body.is_empty() && !decoded {
        h.update([2u8]);
        return;
    }
    // The same bytes sent as another media type, or under another coding, may mean something else to the origin.
    // The codings only when the request names some, so that the keys of all others stay as they were: each
    // after a marker byte that no body hashing starts with.
    field(h, content_type(headers));
    for coding in headers.get_all(header::CONTENT_ENCODING) {
        h.update([4u8]);
        field(h, coding.as_bytes());
    }
    // A body decoded from those codings, after a marker byte of its own: the bytes of one body sent compressed
    // are never taken for another that decodes to them (a build without `decompress` keys them as they came).
    if decoded {
        h.update([6u8]);
    }
    if is_json(headers) {
        let canonical = CANONICAL.with(|cell| {
            // The thread's buffers are reused from request to request; a re-entrant call (there is none
            // today) would simply allocate its own.
            let mut buffers = cell.take();
            buffers.out.clear();
            let ok = canonicalize_into(body, &mut buffers, ignored).is_ok();
            if ok {
                h.update([1u8]);
                field(h, &buffers.out);
            }
            // Keep the buffers for the next request unless a huge body inflated them.
            if buffers.out.capacity() <= 64 * 1024 {
                cell.set(buffers);
            }
            ok
        });
        if canonical {
            return;
        }
    }
    h.update([0u8]);
    field(h, body);
}

/// Per-thread buffers for canonicalising request bodies: the output, member spans, and reorder scratch.
#[derive(Default)]
struct Buffers {
    out: Vec<u8>,
    spans: Vec<(usize, usize, usize)>,
    scratch: Vec<u8>,
}

thread_local! {
    static CANONICAL: std::cell::Cell<Buffers> = std::cell::Cell::new(Buffers::default());
}

/// `application/json`, or any `type/subtype+json`, ignoring parameters and case.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    is_json_type(value.split(';').next().unwrap_or("").trim())
}

/// Whether the media type `essence` (a `Content-Type` without its parameters) is JSON: `application/json` or
/// `*/*+json`.
pub(crate) fn is_json_type(essence: &str) -> bool {
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// The input is not JSON this canonicaliser accepts (invalid, or nested deeper than [`MAX_DEPTH`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotJson;

/// Nesting deeper than this is treated as not JSON (and hashed raw), so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

/// Writes the canonical form of the JSON text `input` to `out`: members sorted by key (bytewise on the key as
/// written), array order kept, no insignificant whitespace, strings and numbers verbatim.
#[cfg(test)]
pub(crate) fn canonicalize_json(input: &[u8], out: &mut Vec<u8>) -> Result<(), NotJson> {
    let mut buffers = Buffers {
        out: std::mem::take(out),
        ..Buffers::default()
    };
    let result = canonicalize_into(input, &mut buffers, &[]);
    *out = buffers.out;
    result
}

/// A JSON Pointer (RFC 6901) to an object member: its reference tokens, each written as the canonical form
/// writes a member's key (quoted, with the fewest escapes), so that a key compares equal however it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pointer {
    tokens: Vec<Vec<u8>>,
    /// The member stays in the key with `null` for its value (an echoed field: requests with it and without it
    /// never share a key); otherwise it is left out.
    blank: bool,
}

impl Pointer {
    /// Parses a JSON Pointer to a member: `/` followed by tokens separated by `/`, with `~1` for `/` and `~0`
    /// for `~`. `None` for the empty pointer (the whole document) or an ill-formed one.
    pub(crate) fn parse(pointer: &str) -> Option<Pointer> {
        let rest = pointer.strip_prefix('/')?;
        let tokens = rest
            .split('/')
            .map(|token| {
                let mut decoded = String::with_capacity(token.len());
                let mut chars = token.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '~' => match chars.next()? {
                            '0' => decoded.push('~'),
                            '1' => decoded.push('/'),
                            _ => return None,
                        },
                        c => decoded.push(c),
                    }
                }
                let mut quoted = Vec::new();
                write_json_string(&decoded, &mut quoted);
                Some(quoted)
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Pointer {
            tokens,
            blank: false,
        })
    }

    /// Pointers to the member `name` of a top-level object and of each object of a top-level array (a batch),
    /// whose value, not the member, is left out of the key (see
    /// [`echo_body_field`](super::RedisCacheLayerBuilder::echo_body_field)).
    pub(crate) fn blanking(name: &str) -> [Pointer; 2] {
        let mut quoted = Vec::new();
        write_json_string(name, &mut quoted);
        [
            Pointer {
                tokens: vec![quoted.clone()],
                blank: true,
            },
            // An empty token is no member's (a canonical key is quoted): it stands for every element.
            Pointer {
                tokens: vec![Vec::new(), quoted],
                blank: true,
            },
        ]
    }
}

/// Writes `s` as a JSON string in canonical form (as [`write_canonical_string`] writes a decoded one).
fn write_json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        write_canonical_char(c, out);
    }
    out.push(b'"');
}

/// Writes the canonical form of `input` to `buffers.out`, using the other buffers as working space, leaving
/// out the members `ignored` points to.
fn canonicalize_into(
    input: &[u8],
    buffers: &mut Buffers,
    ignored: &[Pointer],
) -> Result<(), NotJson> {
    if std::str::from_utf8(input).is_err() {
        return Err(NotJson);
    }
    buffers.spans.clear();
    let mut parser = Canonicalizer {
        input,
        pos: 0,
        scratch: std::mem::take(&mut buffers.scratch),
        spans: std::mem::take(&mut buffers.spans),
        ignored,
    };
    parser.skip_ws();
    // Every pointer applies at the top (empty without any: no allocation).
    let all: Vec<usize> = (0..ignored.len()).collect();
    let result = parser.value(&mut buffers.out, 0, &all);
    parser.skip_ws();
    buffers.scratch = parser.scratch;
    buffers.spans = parser.spans;
    result?;
    if parser.pos != input.len() {
        return Err(NotJson);
    }
    Ok(())
}

/// What of a member a pointer names is left out of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Leave {
    /// Its value, written as `null`.
    Value,
    /// The whole member.
    Member,
}

struct Canonicalizer<'a> {
    input: &'a [u8],
    pos: usize,
    scratch: Vec<u8>,
    /// Member spans of the objects being parsed, as a stack: each object pushes its own above its parent's
    /// and pops them when it closes, so one allocation serves every object of the document.
    spans: Vec<(usize, usize, usize)>,
    /// The members left out.
    ignored: &'a [Pointer],
}

impl Canonicalizer<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), NotJson> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(NotJson)
        }
    }

    /// Writes the value at `pos`, at `depth`, where the pointers of [`ignored`](Self::ignored) numbered in
    /// `active` lead (their tokens before `depth` named the members on the way).
    fn value(&mut self, out: &mut Vec<u8>, depth: usize, active: &[usize]) -> Result<(), NotJson> {
        if depth > MAX_DEPTH {
            return Err(NotJson);
        }
        match self.peek().ok_or(NotJson)? {
            b'{' => self.object(out, depth, active),
            b'[' => self.array(out, depth, active),
            b'"' => self.string(out),
            b't' => self.literal(out, b"true"),
            b'f' => self.literal(out, b"false"),
            b'n' => self.literal(out, b"null"),
            b'-' | b'0'..=b'9' => self.number(out),
            _ => Err(NotJson),
        }
    }

    fn literal(&mut self, out: &mut Vec<u8>, word: &[u8]) -> Result<(), NotJson> {
        if self.input[self.pos..].starts_with(word) {
            self.pos += word.len();
            out.extend_from_slice(word);
            Ok(())
        } else {
            Err(NotJson)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self, out: &mut Vec<u8>) -> Result<(), NotJson> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(NotJson),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(NotJson);
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(NotJson);
            }
        }
        out.extend_from_slice(&self.input[start..self.pos]);
        Ok(())
    }

    fn string(&mut self, out: &mut Vec<u8>) -> Result<(), NotJson> {
        let start = self.pos;
        self.expect(b'"')?;
        let mut escaped = false;
        loop {
            match self.peek().ok_or(NotJson)? {
                b'"' => {
                    self.pos += 1;
                    break;
                }
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    match self.peek().ok_or(NotJson)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                        b'u' => {
                            let hex = self.input.get(self.pos + 1..self.pos + 5).ok_or(NotJson)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(NotJson);
                            }
                            self.pos += 5;
                        }
                        _ => return Err(NotJson),
                    }
                }
                0x00..=0x1f => return Err(NotJson),
                _ => self.pos += 1,
            }
        }
        let raw = &self.input[start..self.pos];
        if escaped {
            write_canonical_string(&raw[1..raw.len() - 1], out)
        } else {
            // Without escapes a string is already in canonical form: it cannot hold a quote or a control
            // character unescaped.
            out.extend_from_slice(raw);
            Ok(())
        }
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize, active: &[usize]) -> Result<(), NotJson> {
        // Pointers lead into an array's elements only through a wildcard token (an echoed member of each call
        // of a batch); named ones never do.
        let inner: Vec<usize> = active
            .iter()
            .copied()
            .filter(|&i| {
                self.ignored.get(i).is_some_and(|pointer| {
                    pointer.tokens.get(depth).is_some_and(Vec::is_empty)
                        && pointer.tokens.len() > depth + 1
                })
            })
            .collect();
        self.expect(b'[')?;
        out.push(b'[');
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            out.push(b']');
            return Ok(());
        }
        loop {
            self.skip_ws();
            self.value(out, depth + 1, &inner)?;
            self.skip_ws();
            match self.peek().ok_or(NotJson)? {
                b',' => {
                    self.pos += 1;
                    out.push(b',');
                }
                b']' => {
                    self.pos += 1;
                    out.push(b']');
                    return Ok(());
                }
                _ => return Err(NotJson),
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize, active: &[usize]) -> Result<(), NotJson> {
        self.expect(b'{')?;
        out.push(b'{');
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            out.push(b'}');
            return Ok(());
        }
        // Members are written in input order, comma-separated; `spans` remembers where each starts, where its
        // key ends and where it ends. Already sorted (the common case): nothing more to do. Otherwise they are
        // reordered once the object closes.
        let body_start = out.len();
        let base = self.spans.len();
        loop {
            self.skip_ws();
            let before = out.len();
            if self.spans.len() > base {
                out.push(b',');
            }
            let member_start = out.len();
            self.string(out)?;
            let key_end = out.len();
            self.skip_ws();
            self.expect(b':')?;
            out.push(b':');
            self.skip_ws();
            let (ignore, inner) = self.leads(&out[member_start..key_end], depth, active);
            let value_start = out.len();
            self.value(out, depth + 1, &inner)?;
            if ignore == Some(Leave::Value) {
                // Parsed (the document must still be JSON); the member stays, its value does not.
                out.truncate(value_start);
                out.extend_from_slice(b"null");
                self.spans.push((member_start, key_end, out.len()));
            } else if ignore == Some(Leave::Member) {
                // Parsed (the document must still be JSON), then left out, separator and all.
                out.truncate(before);
            } else {
                self.spans.push((member_start, key_end, out.len()));
            }
            self.skip_ws();
            match self.peek().ok_or(NotJson)? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(NotJson),
            }
        }
        let spans = &mut self.spans[base..];
        let key = |span: &(usize, usize, usize)| &out[span.0..span.1];
        let in_order = spans.windows(2).all(|w| key(&w[0]) < key(&w[1]));
        if !in_order {
            spans.sort_unstable_by(|a, b| out[a.0..a.1].cmp(&out[b.0..b.1]));
            // Keys are canonical, so equal keys are the same key, however each was escaped: such a document
            // means what its parser makes of it (often the last value), so it is not canonicalised at all.
            if spans
                .windows(2)
                .any(|w| out[w[0].0..w[0].1] == out[w[1].0..w[1].1])
            {
                return Err(NotJson);
            }
            // Children are complete, so the scratch buffer is free to hold this object's members while they
            // are written back in order with their separators.
            self.scratch.clear();
            self.scratch.extend_from_slice(&out[body_start..]);
            out.truncate(body_start);
            for (i, &(start, _, end)) in self.spans[base..].iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&self.scratch[start - body_start..end - body_start]);
            }
        }
        self.spans.truncate(base);
        out.push(b'}');
        Ok(())
    }
}

impl Canonicalizer<'_> {
    /// Where the pointers `active` lead at the member with the canonical `key`, in an object at `depth`:
    /// whether one names the member itself (and what of it is left out: the member wins over its value), and
    /// which lead on into its value.
    fn leads(&self, key: &[u8], depth: usize, active: &[usize]) -> (Option<Leave>, Vec<usize>) {
        let mut ignore = None;
        let mut inner = Vec::new();
        for &i in active {
            let Some(pointer) = self.ignored.get(i) else {
                continue;
            };
            let tokens = &pointer.tokens;
            if tokens.get(depth).is_some_and(|token| token[..] == *key) {
                if tokens.len() == depth + 1 {
                    let leave = if pointer.blank {
                        Leave::Value
                    } else {
                        Leave::Member
                    };
                    ignore = ignore.max(Some(leave));
                } else {
                    inner.push(i);
                }
            }
        }
        (ignore, inner)
    }
}

/// Writes the canonical form of a JSON string's contents `raw` (between its quotes, escapes already checked
/// well-formed): the decoded characters, with only `"`, `\` and control characters escaped (the short forms
/// where JSON has them, else `\u00xx`). A lone surrogate cannot be decoded, and is not JSON this canonicaliser
/// accepts.
fn write_canonical_string(raw: &[u8], out: &mut Vec<u8>) -> Result<(), NotJson> {
    out.push(b'"');
    let mut i = 0;
    while let Some(&byte) = raw.get(i) {
        if byte != b'\\' {
            out.push(byte);
            i += 1;
            continue;
        }
        let (c, used) = match raw.get(i + 1).ok_or(NotJson)? {
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'/' => ('/', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => {
                let high = hex4(raw.get(i + 2..i + 6))?;
                if (0xD800..0xDC00).contains(&high) {
                    if raw.get(i + 6..i + 8) != Some(&b"\\u"[..]) {
                        return Err(NotJson);
                    }
                    let low = hex4(raw.get(i + 8..i + 12))?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(NotJson);
                    }
                    let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    (char::from_u32(code).ok_or(NotJson)?, 12)
                } else {
                    (char::from_u32(high).ok_or(NotJson)?, 6)
                }
            }
            _ => return Err(NotJson),
        };
        i += used;
        write_canonical_char(c, out);
    }
    out.push(b'"');
    Ok(())
}

/// Writes one decoded character of a JSON string in canonical form: only `"`, `\\` and control characters
/// escaped (the short forms where JSON has them, else `\\u00xx`).
fn write_canonical_char(c: char, out: &mut Vec<u8>) {
    match c {
        '"' => out.extend_from_slice(b"\\\""),
        '\\' => out.extend_from_slice(b"\\\\"),
        '\n' => out.extend_from_slice(b"\\n"),
        '\r' => out.extend_from_slice(b"\\r"),
        '\t' => out.extend_from_slice(b"\\t"),
        '\u{8}' => out.extend_from_slice(b"\\b"),
        '\u{c}' => out.extend_from_slice(b"\\f"),
        c if u32::from(c) < 0x20 => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let n = u32::from(c) as usize;
            out.extend_from_slice(b"\\u00");
            out.push(HEX[n >> 4]);
            out.push(HEX[n & 0xf]);
        }
        c => {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
}

/// Four hex digits as a number.
fn hex4(digits: Option<&[u8]>) -> Result<u32, NotJson> {
    let digits = std::str::from_utf8(digits.ok_or(NotJson)?).map_err(|_| NotJson)?;
    u32::from_str_radix(digits, 16).map_err(|_| NotJson)
}

/// Whether a request with the `Accept-Encoding` of `request` accepts the content coding of `response` (RFC 9110
/// §12.5.3): every coding its `Content-Encoding` names, or `identity` when it names none. A coding listed with a
/// non-zero `q` is accepted, one with `q=0` (or a `q` that does not read) is not; one not listed takes the `*`
/// entry's, and `identity` is accepted unless excluded. A request without the field accepts `identity` only: one
/// that says nothing may not be able to decode anything. `x-gzip` is `gzip`, `x-compress` is `compress`.
pub(crate) fn accepts_coding(request: &HeaderMap, response: &HeaderMap) -> bool {
    /// `Some(accepted)` for an entry naming `coding` (or `*`), `None` without one.
    fn entry(request: &HeaderMap, coding: &str) -> Option<bool> {
        let mut found = None;
        for element in request
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .flat_map(|value| value.to_str().unwrap_or("").split(','))
        {
            let mut parts = element.split(';');
            let name = canonical_coding(parts.next().unwrap_or("").trim());
            if name.is_empty() || !name.eq_ignore_ascii_case(coding) {
                continue;
            }
            let q = parts.find_map(|parameter| {
                let (name, value) = parameter.split_once('=')?;
                name.trim().eq_ignore_ascii_case("q").then(|| value.trim())
            });
            let accepted = match q {
                None => true,
                Some(q) => q.parse::<f32>().is_ok_and(|q| q > 0.0 && q <= 1.0),
            };
            // Listed twice: accepted only if both say so.
            found = Some(found.unwrap_or(true) && accepted);
        }
        found
    }
    let acceptable = |coding: &str| {
        entry(request, coding)
            .or_else(|| entry(request, "*"))
            .unwrap_or(coding.eq_ignore_ascii_case("identity"))
    };
    if !request.contains_key(header::ACCEPT_ENCODING) {
        return !content_encoded(response);
    }
    let mut codings = content_codings(response).peekable();
    if codings.peek().is_none() {
        return acceptable("identity");
    }
    codings.all(acceptable)
}

/// The content codings `response`'s `Content-Encoding` fields name, in the order they were applied, `identity`
/// left out; `x-gzip` as `gzip`, `x-compress` as `compress`. A field that is not visible ASCII names `"\0"`, a
/// coding no one accepts or decodes.
pub(crate) fn content_codings(response: &HeaderMap) -> impl Iterator<Item = &str> {
    response
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("\0").split(','))
        .map(|coding| canonical_coding(coding.trim()))
        .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
}

/// Whether a request with the `Accept` of `request` accepts the media type of `response`'s `Content-Type` (RFC 9110
/// §12.5.1): the most specific of its media ranges that match the type (`type/subtype` with parameters, then
/// without, `type/*`, `*/*`) give it a non-zero `q` (listed twice, both must). A range's parameters must all be
/// the answer's, but for a `charset` the answer does not name; a `q` that does not read is no acceptance. A
/// request without the field, or with no element that reads as a media range, accepts any type, and an answer
/// without a `Content-Type` that reads as one is accepted by any request. Types, subtypes, parameter names and
/// values compare case-insensitively.
pub(crate) fn accepts_media_type(request: &HeaderMap, response: &HeaderMap) -> bool {
    // Every hit with an `Accept` comes here, so the usual fields are settled without parsing: one look-up each,
    // then a comparison of bytes.
    let accept = request.get_all(header::ACCEPT);
    let mut lines = accept.iter();
    let Some(first) = lines.next() else {
        return true;
    };
    let single = lines.next().is_none();
    // What most HTTP clients send (curl, reqwest, Go's): every type.
    if single && first.as_bytes() == b"*/*" {
        return true;
    }
    let Some(content_type) = response.get(header::CONTENT_TYPE) else {
        return true;
    };
    let content_type = content_type.as_bytes();
    // The one type an API client asks for, and the answer's (`application/json` and `application/json;
    // charset=utf-8`): when the answer's type begins with what was asked, and ends there, they are one type.
    if single {
        let asked = first.as_bytes().trim_ascii();
        if !asked.is_empty()
            && !asked.contains(&b';')
            && content_type
                .get(..asked.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(asked))
            && matches!(
                content_type.get(asked.len()),
                None | Some(b';' | b' ' | b'\t')
            )
        {
            return true;
        }
    }
    accepted_by_ranges(accept, content_type)
}

/// [`accepts_media_type`] read range by range, for the media type `content_type` (a `Content-Type` value).
fn accepted_by_ranges(accept: GetAll<'_, HeaderValue>, content_type: &[u8]) -> bool {
    let Some((kind, subtype, parameters)) = media_type(content_type) else {
        return true;
    };
    if kind == b"*" || subtype == b"*" {
        return true;
    }
    let mut ranges = false;
    // The specificity of the most specific ranges matching the type, and whether they all accept it.
    let mut best: Option<(u8, bool)> = None;
    for element in accept
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
    {
        let Some((range_kind, range_subtype, range_parameters)) = media_type(element) else {
            continue;
        };
        if range_kind == b"*" && range_subtype != b"*" {
            continue;
        }
        ranges = true;
        let matches = range_kind == b"*"
            || (range_kind.eq_ignore_ascii_case(kind)
                && (range_subtype == b"*" || range_subtype.eq_ignore_ascii_case(subtype)));
        if !matches {
            continue;
        }
        let mut q = None;
        let mut named = false;
        let mut theirs = true;
        for (name, value) in media_parameters(range_parameters) {
            if name.eq_ignore_ascii_case(b"q") {
                // What follows a weight is no parameter of the range (RFC 7231's `accept-ext`).
                q = Some(value);
                break;
            }
            named = true;
            let mut answers =
                media_parameters(parameters).filter(|(n, _)| n.eq_ignore_ascii_case(name));
            theirs &= match answers.next() {
                Some((_, v)) => v.eq_ignore_ascii_case(value),
                // A `charset` asked of a type the answer gives none for (JSON has no such parameter) is no
                // mismatch: clients send `application/json; charset=utf-8` to servers that answer without one.
                None => name.eq_ignore_ascii_case(b"charset"),
            };
        }
        if !theirs {
            continue;
        }
        let specificity = match (range_kind, range_subtype) {
            (b"*", _) => 0,
            (_, b"*") => 1,
            _ if named => 3,
            _ => 2,
        };
        let accepted = q.is_none_or(|q| {
            std::str::from_utf8(q)
                .ok()
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q > 0.0 && q <= 1.0)
        });
        best = match best {
            Some((held, _)) if held < specificity => Some((specificity, accepted)),
            Some((held, was)) if held == specificity => Some((held, was && accepted)),
            Some(kept) => Some(kept),
            None => Some((specificity, accepted)),
        };
    }
    !ranges || best.is_some_and(|(_, accepted)| accepted)
}

/// A media type or range (`type/subtype; parameters`) read from `value`: its type and subtype, trimmed, and what
/// follows its first `;`; `None` when it does not read as one (RFC 9110 §8.3.1).
fn media_type(value: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (essence, parameters) = match value.iter().position(|&b| b == b';') {
        Some(at) => (&value[..at], &value[at + 1..]),
        None => (value, &[][..]),
    };
    let essence = essence.trim_ascii();
    let slash = essence.iter().position(|&b| b == b'/')?;
    let (kind, subtype) = (
        essence[..slash].trim_ascii(),
        essence[slash + 1..].trim_ascii(),
    );
    let token = |s: &[u8]| {
        !s.is_empty()
            && s.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    (token(kind) && token(subtype)).then_some((kind, subtype, parameters))
}

/// The `name=value` pairs of a media type's `parameters` (what follows its first `;`), trimmed, a quoted value
/// without its quotes; those that do not read as a pair are passed over.
fn media_parameters(parameters: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    parameters.split(|&b| b == b';').filter_map(|parameter| {
        let at = parameter.iter().position(|&b| b == b'=')?;
        let value = parameter[at + 1..].trim_ascii();
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        Some((parameter[..at].trim_ascii(), value))
    })
}

/// A content coding's name, its `x-` alias taken for it (RFC 9110 §18.6).
fn canonical_coding(name: &str) -> &str {
    if name.eq_ignore_ascii_case("x-gzip") {
        "gzip"
    } else if name.eq_ignore_ascii_case("x-compress") {
        "compress"
    } else {
        name
    }
}

/// Whether `response`'s `Access-Control-Allow-Origin` names an origin (anything but `*`): a grant to the
/// origin of the request it answered.
pub(crate) fn grants_one_origin(response: &HeaderMap) -> bool {
    response
        .get_all(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .iter()
        .any(|v| v.as_bytes().trim_ascii() != b"*")
}

/// Whether `response`'s body is in a content coding other than `identity`.
pub(crate) fn content_encoded(response: &HeaderMap) -> bool {
    response
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// The digest of `request`'s values for the headers `response`'s `Vary` names; `None` when answers from the
/// response depend on no request header (it has no `Vary`, no body in a content coding and no CORS grant to one
/// origin) and `request` accepts its media type. Names are compared case-insensitively and in any order; a
/// header's values are compared as its comma-separated elements, whitespace around them dropped, however they were
/// split over field lines (RFC 9110 §5.3, RFC 9111 §4.1).
///
/// A body in a content coding (`Content-Encoding: gzip`) varies on `Accept-Encoding` whether or not the origin
/// said so (nginx, for one, leaves `Vary: Accept-Encoding` out unless told): an entry compressed for a client
/// that asked for it is never answered to one that does not accept that coding, or sent no `Accept-Encoding`,
/// and could not read it. `Accept-Encoding` is compared by what matters of it, as CDNs normalise it: all the
/// requests that accept the response's coding ([`accepts_coding`]) are one variant, so browsers that list codings
/// differently (`gzip, deflate, br, zstd` and `gzip, deflate, br`) share one `br` entry instead of replacing each
/// other's. A request that does not accept it is compared by its values, as any other field.
/// Likewise an `Access-Control-Allow-Origin` that names an origin varies on `Origin` (the Fetch standard asks
/// for `Vary: Origin` there; servers that reflect the request's origin often leave it out): a page on another
/// origin is never handed a grant to the first, which its browser would refuse.
///
/// And a request whose `Accept` refuses the answer's media type ([`accepts_media_type`]: a client asking for
/// `application/json` only, an answer in `text/html`) is told apart by its `Accept` values whether or not the
/// origin named `Accept` in `Vary` (Laravel's `wantsJson`, for one, answers by `Accept` and does not say so): the
/// answer is never given to it, unless the request it was stored for sent the same `Accept` (an origin that
/// answers one type whatever is asked). Requests that accept the type are not told apart by `Accept` unless the
/// origin names it: the usual `*/*`, a browser's list, or none at all share the entry.
pub(crate) fn vary_digest(response: &HeaderMap, request: &HeaderMap) -> Option<[u8; 32]> {
    vary_digest_with(vary_names(response).as_deref(), response, request)
}

/// [`vary_digest`], given the names [`vary_names`] read from `response`.
pub(crate) fn vary_digest_with(
    names: Option<&[HeaderName]>,
    response: &HeaderMap,
    request: &HeaderMap,
) -> Option<[u8; 32]> {
    let refused = refuses_type(request, response, names.unwrap_or_default());
    if names.is_none() && !refused {
        return None;
    }
    Some(vary_digest_of(
        names.unwrap_or_default(),
        refused,
        response,
        request,
    ))
}

/// The request headers answers from `response` depend on, as [`vary_digest`] reads them: the names its `Vary`
/// lists, `Accept-Encoding` for a body in a content coding, `Origin` for a CORS grant to one origin; sorted, each
/// once. `None` when answers from it depend on none but, for a request refusing its media type, `Accept` (which
/// [`vary_digest`] adds then).
pub(crate) fn vary_names(response: &HeaderMap) -> Option<Vec<HeaderName>> {
    let encoded = content_encoded(response);
    let granted = grants_one_origin(response);
    let mut values = response.get_all(header::VARY).iter().peekable();
    if values.peek().is_none() && !encoded && !granted {
        return None;
    }
    let mut names: Vec<HeaderName> = values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    if encoded {
        names.push(header::ACCEPT_ENCODING);
    }
    if granted {
        names.push(header::ORIGIN);
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// [`vary_digest`] over the `names` [`vary_names`] read from `response`, and over `request`'s `Accept` when it
/// `refused` the answer's media type.
#[inline(never)]
fn vary_digest_of(
    names: &[HeaderName],
    refused: bool,
    response: &HeaderMap,
    request: &HeaderMap,
) -> [u8; 32] {
    let mut h = Sha256::new();
    field(&mut h, b"tower-redis-cache/vary/v2");
    count(&mut h, names.len());
    for name in names {
        field(&mut h, name.as_str().as_bytes());
        // Every request that accepts the answer's coding is one variant. One that does not is its own, by its
        // values: the answer was not made for it, and another that does not accept it may be answered otherwise.
        if name == header::ACCEPT_ENCODING && accepts_coding(request, response) {
            h.update([2u8]);
            continue;
        }
        hash_values(&mut h, request, name);
    }
    // After the names, so that every digest of a request accepting the answer is the one it always was.
    hash_refusal(&mut h, refused, request);
    h.finalize().into()
}

/// Hashes `request`'s `Accept` values, marked as a refusal, when it `refused` the answer's media type
/// ([`refuses_type`]); nothing otherwise.
fn hash_refusal(h: &mut Sha256, refused: bool, request: &HeaderMap) {
    if refused {
        field(h, b"accept refused");
        hash_values(h, request, &header::ACCEPT);
    }
}

/// Hashes `request`'s values of the header `name` as a variant is told by them: absent, or its comma-separated
/// elements, whitespace around them dropped, however they were split over field lines, as one field (their
/// length, then the elements joined by commas), hashed as they are read.
#[inline(never)]
fn hash_values(h: &mut Sha256, request: &HeaderMap, name: &HeaderName) {
    let elements = || {
        request
            .get_all(name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
    };
    if !request.contains_key(name) {
        h.update([0u8]);
        return;
    }
    h.update([1u8]);
    let (elements_n, bytes) = elements().fold((0usize, 0usize), |(n, bytes), element| {
        (n + 1, bytes + element.len())
    });
    count(h, bytes + elements_n.saturating_sub(1));
    for (i, element) in elements().enumerate() {
        if i > 0 {
            h.update(b",");
        }
        h.update(element);
    }
}

/// The most request headers a URI's answers may vary on for the cache to keep an entry per variant of them (see
/// [`learnable`]); an answer naming more keeps one entry per key, as before.
const MAX_VARIANT_NAMES: usize = 8;

/// The request headers that the answers stored with `response`'s headers vary on and that a key does not
/// already hold, so that [`variant_digest`] can give each of their variants a key of its own: the names its
/// `Vary` lists, and `Origin` when its `Access-Control-Allow-Origin` grants one origin (see [`vary_digest`]),
/// sorted, each once. Left out: the names in `keyed` (the layer's [`vary_headers`] and the credentials it keys
/// by), those of [`IMPLIED_VARY`], which every key holds already, and `Accept-Encoding`, whose variants
/// [`vary_digest`] tells apart by the coding they accept, so that one compressed entry answers every client that
/// can read it. `None` when nothing is left, for `Vary: *`, or past [`MAX_VARIANT_NAMES`] names.
///
/// [`vary_headers`]: super::RedisCacheLayerBuilder::vary_headers
pub(crate) fn learnable(response: &HeaderMap, keyed: &[HeaderName]) -> Option<Arc<[HeaderName]>> {
    let mut names = Vec::new();
    for element in response
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
    {
        let element = element.trim_ascii();
        if element == b"*" {
            return None;
        }
        // A name that does not read as one names no request header the cache could key by.
        let Ok(name) = HeaderName::from_bytes(element) else {
            continue;
        };
        names.push(name);
    }
    if grants_one_origin(response) {
        names.push(header::ORIGIN);
    }
    names.retain(|name| {
        name != header::ACCEPT_ENCODING && !keyed.contains(name) && !IMPLIED_VARY.contains(name)
    });
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    (!names.is_empty() && names.len() <= MAX_VARIANT_NAMES).then(|| names.into())
}

/// Whether `request`'s `Accept` refuses the media type of the answer whose fields are `response`
/// ([`accepts_media_type`]) while no name of `names` is `Accept`, whose values would tell the request apart
/// already: then [`vary_digest`] and [`variant_digest`] add its `Accept` values.
pub(crate) fn refuses_type(
    request: &HeaderMap,
    response: &HeaderMap,
    names: &[HeaderName],
) -> bool {
    !accepts_media_type(request, response) && !names.contains(&header::ACCEPT)
}

/// The digest of the key a request with `request` headers, whose primary key's digest is `primary`, keeps its
/// own variant under when the answer whose fields are `response` is stored there: [`variant_digest`] over
/// `names` (what [`learnable`] read from it, or none) and, when the request [refuses](refuses_type) the answer's
/// type, its `Accept`. `None` when neither tells the request's variant apart: it is stored under `primary`.
pub(crate) fn variant_key(
    primary: &[u8; 32],
    names: &[HeaderName],
    response: &HeaderMap,
    request: &HeaderMap,
) -> Option<[u8; 32]> {
    let refused = refuses_type(request, response, names);
    (!names.is_empty() || refused).then(|| variant_digest(primary, names, refused, request))
}

/// The digest of the variant of the request whose key's digest is `primary` (and whose headers are `request`)
/// among the answers that vary on `names` (see [`learnable`]): `primary` with the request's values of each name,
/// compared as [`vary_digest`] compares them, and with its `Accept` values when it `refused` the stored answer's
/// type ([`refuses_type`]). Another value of any of them is another key; the same values, however split over
/// field lines or spaced, are one.
pub(crate) fn variant_digest(
    primary: &[u8; 32],
    names: &[HeaderName],
    refused: bool,
    request: &HeaderMap,
) -> [u8; 32] {
    let mut h = Sha256::new();
    field(&mut h, b"tower-redis-cache/variant/v1");
    h.update(primary);
    count(&mut h, names.len());
    for name in names {
        field(&mut h, name.as_str().as_bytes());
        hash_values(&mut h, request, name);
    }
    // After the names, so that the variant keys of requests accepting the answer are the ones they always were.
    hash_refusal(&mut h, refused, request);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    /// A key of a known request, pinned: a change to how keys are derived would orphan every stored entry.
    #[test]
    fn keys_are_stable() {
        let keys = KeyConfig::new("ns".into(), b"tenant".to_vec(), vec![]);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let key = keys.key(
            &Method::POST,
            &"https://api.example.com/q?b=2&a=1".parse().unwrap(),
            &headers,
            br#"{"b":2,"a":1}"#,
        );
        assert_eq!(
            key.as_str(),
            "ns:v1:{71b7e184ee9b8e77c45dc9d458146c715d5f5ee3e7b120e9b86d8be9449f4a5a}"
        );
    }

    /// Keys of requests that take each of a key's optional parts, pinned: a vary header, credentials, a
    /// request's own partition, a forwarding header (implied vary), an encoded body, ignored members.
    #[test]
    fn keys_of_every_part_are_stable() {
        let vary = ["accept-language", "authorization"].map(HeaderName::from_static);
        let keys = KeyConfig::new("ns".into(), b"tenant".to_vec(), vary.to_vec())
            .with_credentials_from(1)
            .ignoring_query(vec!["utm_*".into()])
            .ignoring_body(vec![Pointer::parse("/trace").unwrap()]);
        let uri: Uri = "https://api.example.com/q?b=2&a=1&utm_source=x"
            .parse()
            .unwrap();
        let json = |more: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            for (name, value) in more {
                headers.append(*name, HeaderValue::from_static(value));
            }
            headers
        };
        let body = KeyedBody::sent(br#"{"b":2,"a":1,"trace":"t"}"#);
        let cases: [(HeaderMap, Option<&[u8]>, KeyedBody<'_>, &str); 6] = [
            (
                json(&[]),
                None,
                body,
                "ns:v1:{b2f55af7017bf6a1c40114267adaaed540807f8abf11dde558402b0410eba712}",
            ),
            (
                json(&[("accept-language", "de")]),
                None,
                body,
                "ns:v1:{49dd13017c3d78bc36c0ce118e57f0d9ea1da849b3ff3852bd7f4224d564cb7d}",
            ),
            (
                json(&[("authorization", "Bearer a")]),
                None,
                body,
                "ns:v1:{3efb9ce9309605afca265a5711c4f58adae40dbe74eed6ff948ec42a071f05c5}",
            ),
            (
                json(&[]),
                Some(b"user-1"),
                body,
                "ns:v1:{b727038efc3f3ddd4f8620df905c45a1bcc6fc1e1c4c82d5b005e1ff129097cc}",
            ),
            (
                json(&[("x-forwarded-proto", "http")]),
                None,
                body,
                "ns:v1:{11d16101f5ecb92bb254c8aa6f0b5d56230ca1e295f480b67a82e6011e296149}",
            ),
            (
                json(&[("content-encoding", "gzip")]),
                None,
                KeyedBody {
                    decoded: true,
                    ..body
                },
                "ns:v1:{c98de3e17a46d4b88862bae4be7b1c89353b9193f870c0a5be33ba903928817c}",
            ),
        ];
        for (headers, partition, body, pinned) in cases {
            let key = keys.key_in(&Method::POST, &uri, &headers, partition, body);
            assert_eq!(key.as_str(), pinned, "{headers:?} {partition:?}");
        }
    }

    /// The keys of tag sets, cache groups and the namespace's own records, pinned: after a change to any, a
    /// write would no longer find the entries stored before it, and those would be served until they expire.
    #[test]
    fn tag_keys_are_stable() {
        let keys = config();
        let mut host = HeaderMap::new();
        host.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        let path: Uri = "/p?b=2&a=1".parse().unwrap();
        for (key, pinned) in [
            (
                keys.tag_key("orders"),
                "test:v1:tag:{bb0315a4051ad5fc659eb045705d2bbcf08b5e26b66d84ca72c742fa89492f0a}",
            ),
            (
                keys.uri_tag_key(&path, &host, None),
                "test:v1:tag:{2fa870f2b1d9965e34147edc4afcfbb336310bdbde747eba6531670d5c3e88db}",
            ),
            (
                keys.uri_tag_key(&path, &host, Some(b"user-1")),
                "test:v1:tag:{9e4156c855d0e18ea5b88e2c95ac5374a9c9a9cd3d5f5ef8e22037049966cb2f}",
            ),
            (
                keys.group_key(b"api.example.com", "g"),
                "test:v1:tag:{d14e470ec28686fbb432d1528cbd2b2500cfe6cae6f4c693edd91b845a127bf9}",
            ),
            (keys.sweep_lease_key(), "test:v1:tag-sweep"),
            (keys.tag_clock_key(), "test:v1:tag-clock"),
            (keys.namespace_prefix(), "test:v1:"),
        ] {
            assert_eq!(key, pinned);
        }
    }

    /// The digests of a variant, pinned: stored entries hold the first, and variant keys are the second, so a
    /// change to either would make every stored variant miss.
    #[test]
    fn variant_digests_are_stable() {
        let mut response = HeaderMap::new();
        response.insert(
            header::VARY,
            HeaderValue::from_static("Accept-Language, Origin"),
        );
        response.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let mut request = HeaderMap::new();
        request.append(
            header::ACCEPT_LANGUAGE,
            HeaderValue::from_static("de , fr;q=0.5"),
        );
        request.append(header::ACCEPT_LANGUAGE, HeaderValue::from_static(" en"));
        request.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let hex = |digest: [u8; 32]| {
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(
            hex(vary_digest(&response, &request).unwrap()),
            "109e5f40182414e7b3baed0d78730ef909d9b1d633ae4b6c79609ae6945ce41d"
        );
        let names = learnable(&response, &[]).unwrap();
        assert_eq!(
            hex(variant_digest(&[7; 32], &names, false, &request)),
            "16fec615c747df73313ce5e2ff1472388eabe391b0249e2d581a170c50a6e73b"
        );
    }

    #[test]
    fn a_coded_body_is_another_body() {
        let keys = KeyConfig::new("ns".into(), Vec::new(), vec![]);
        let uri: Uri = "https://api.example.com/q".parse().unwrap();
        let key = |coding: Option<&'static str>, body: &[u8]| {
            let mut headers = HeaderMap::new();
            if let Some(coding) = coding {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
            }
            // Twice: the second from the digest memo, which must tell them apart too.
            let first = keys.key(&Method::POST, &uri, &headers, body);
            assert_eq!(keys.key(&Method::POST, &uri, &headers, body), first);
            first
        };
        let plain = key(None, b"\x1f\x8b\x08payload");
        assert_ne!(key(Some("gzip"), b"\x1f\x8b\x08payload"), plain);
        assert_ne!(
            key(Some("br"), b"\x1f\x8b\x08payload"),
            key(Some("gzip"), b"\x1f\x8b\x08payload")
        );
        // Every field counts: a second coding is another body again.
        let mut two = HeaderMap::new();
        two.append(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        two.append(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        let both = keys.key(&Method::POST, &uri, &two, b"\x1f\x8b\x08payload");
        assert_ne!(both, key(Some("gzip"), b"\x1f\x8b\x08payload"));
        // Without a body there is nothing to decode: the field changes nothing.
        assert_eq!(key(Some("gzip"), b""), key(None, b""));
    }

    /// A body decoded from its codings is keyed by what it holds, its JSON canonical, after a marker of its own:
    /// two compressions of one query share a key, which neither the same content in no coding nor a body sent
    /// compressed whose bytes are that content has.
    #[test]
    fn a_decoded_body_is_keyed_by_its_content_apart_from_bytes_as_sent() {
        let keys = KeyConfig::new("ns".into(), Vec::new(), vec![]);
        let uri: Uri = "https://api.example.com/q".parse().unwrap();
        let mut gzip = json_headers();
        gzip.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let key = |headers: &HeaderMap, bytes: &[u8], decoded| {
            let body = KeyedBody { bytes, decoded };
            let first = keys.key_in(&Method::POST, &uri, headers, None, body);
            // Again, from the digest memo, which must tell them apart too.
            assert_eq!(keys.key_in(&Method::POST, &uri, headers, None, body), first);
            first
        };
        let decoded = key(&gzip, br#"{"a":1,"b":[2]}"#, true);
        assert_eq!(key(&gzip, br#"{ "b": [2], "a": 1 }"#, true), decoded);
        assert_ne!(key(&gzip, br#"{"a":1,"b":[3]}"#, true), decoded);
        assert_ne!(key(&gzip, br#"{"a":1,"b":[2]}"#, false), decoded);
        assert_ne!(key(&json_headers(), br#"{"a":1,"b":[2]}"#, false), decoded);
        // Not JSON: the decoded bytes, after the same marker.
        let mut text = HeaderMap::new();
        text.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_ne!(key(&text, b"payload", true), key(&text, b"payload", false));
        // A body that decodes to nothing was sent as something: no body at all is another request.
        assert_ne!(key(&text, b"", true), key(&text, b"", false));
        assert_ne!(key(&text, b"", true), key(&HeaderMap::new(), b"", false));
    }

    fn canon(s: &str) -> Option<String> {
        let mut out = Vec::new();
        canonicalize_json(s.as_bytes(), &mut out).ok()?;
        String::from_utf8(out).ok()
    }

    fn config() -> KeyConfig {
        KeyConfig::new(
            "test".into(),
            b"tenant-a".to_vec(),
            vec![HeaderName::from_static("accept-language")],
        )
    }

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers
    }

    fn post_key(config: &KeyConfig, body: &str) -> CacheKey {
        let uri: Uri = "https://api.example.com/q?b=2&a=1".parse().unwrap();
        config.key(&Method::POST, &uri, &json_headers(), body.as_bytes())
    }

    #[test]
    fn canonical_form_sorts_keys_at_every_level_and_keeps_arrays() {
        assert_eq!(
            canon(r#" { "b" : [3, {"z":1,"a":2}], "a" : {"y": null, "x": true} } "#).unwrap(),
            r#"{"a":{"x":true,"y":null},"b":[3,{"a":2,"z":1}]}"#
        );
        assert_eq!(canon("[]").unwrap(), "[]");
        assert_eq!(canon("{}").unwrap(), "{}");
        assert_eq!(canon(r#""a\u00e9\n""#).unwrap(), "\"a\u{e9}\\n\"");
        assert_eq!(canon("-0.5e+10").unwrap(), "-0.5e+10");
    }

    #[test]
    fn invalid_json_is_rejected() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\"}",
            "01",
            "1.",
            "-",
            "tru",
            "\"\u{1}\"",
            "\"\\x\"",
            "{} x",
            "[1 2]",
            "{\"a\":1,}",
            "\"\\u12g4\"",
        ] {
            assert!(canon(bad).is_none(), "{bad:?} accepted");
        }
        let deep = "[".repeat(10_000);
        assert!(canon(&deep).is_none());
        // Values nested `MAX_DEPTH` deep are JSON; one level more is not.
        let nested = |depth: usize| format!("{}0{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(canon(&nested(MAX_DEPTH)), Some(nested(MAX_DEPTH)));
        assert!(canon(&nested(MAX_DEPTH + 1)).is_none());
    }

    #[test]
    fn keys_parse_back_to_their_digest_and_nothing_else_does() {
        let c = config();
        let key = c.key(
            &Method::GET,
            &"https://h/p".parse().unwrap(),
            &HeaderMap::new(),
            b"",
        );
        let prefix = c.namespace_prefix();
        assert_eq!(parse_key(&prefix, key.as_str()), Some(*key.digest()));
        let hex = &key.as_str()[prefix.len() + 1..prefix.len() + 65];
        for other in [
            key.lease_key(),
            format!("{prefix}{{{}}}", hex.to_uppercase()),
            key.as_str().replacen(&prefix, "other:v1:", 1),
            key.as_str()[..key.as_str().len() - 1].to_owned(),
            format!("{prefix}{{{}}}", "g".repeat(64)),
            format!("{prefix}{{{}}}", "0".repeat(62)),
            format!("{prefix}{{{}é}}", "0".repeat(62)),
        ] {
            assert_eq!(parse_key(&prefix, &other), None, "{other}");
        }
    }

    /// A key formatted a moment ago is shared, and only with the settings it was formatted for.
    #[test]
    fn recent_keys_are_shared_within_their_settings_only() {
        let a = KeyConfig::new("a".into(), vec![], vec![]);
        let b = KeyConfig::new("b".into(), vec![], vec![]);
        let digest = [9u8; 32];
        let (first, again, other) = (a.key_of(digest), a.key_of(digest), b.key_of(digest));
        assert!(Arc::ptr_eq(&first.key, &again.key));
        assert_eq!(first.as_str(), format!("a:v1:{{{}}}", "09".repeat(32)));
        assert_eq!(other.as_str(), format!("b:v1:{{{}}}", "09".repeat(32)));
    }

    #[test]
    fn key_has_the_documented_format() {
        let key = post_key(&config(), "{}");
        let s = key.as_str();
        assert!(s.starts_with("test:v1:{"), "{s}");
        assert!(s.ends_with('}'));
        assert_eq!(s.len(), "test:v1:{".len() + 64 + 1);
        assert_eq!(key.lease_key(), format!("{s}:lease"));
        assert_eq!(key.short(), &s["test:v1:{".len()..][..8]);
        // What traces give before a key is formatted.
        assert_eq!(short_hex(key.digest()).as_str(), key.short());
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&[0x0f, 0xf0, 0x9a, 0x5b]);
        assert_eq!(short_hex(&digest).as_str(), "0ff09a5b");
        assert_eq!(key.to_string(), s);
        assert_eq!(format!("{key:?}"), format!("CacheKey({s:?})"));
        // Read back from a tag set's members: its own namespace's entries only.
        assert_eq!(CacheKey::parse("test:v1:", s), Some(key.clone()));
        assert_eq!(CacheKey::parse("other:v1:", s), None);
    }

    #[test]
    fn query_order_is_irrelevant_but_values_count() {
        let c = config();
        let h = HeaderMap::new();
        let a = c.key(
            &Method::GET,
            &"http://h/p?a=1&b=2".parse().unwrap(),
            &h,
            b"",
        );
        let b = c.key(
            &Method::GET,
            &"http://h/p?b=2&a=1".parse().unwrap(),
            &h,
            b"",
        );
        let d = c.key(
            &Method::GET,
            &"http://h/p?b=3&a=1".parse().unwrap(),
            &h,
            b"",
        );
        assert_eq!(a, b);
        assert_ne!(a, d);
    }

    #[test]
    fn repeated_query_names_keep_their_order() {
        let c = config();
        let h = HeaderMap::new();
        let key = |uri: &str| c.key(&Method::GET, &uri.parse().unwrap(), &h, b"");
        assert_ne!(
            key("http://h/p?sort=name&sort=date"),
            key("http://h/p?sort=date&sort=name")
        );
        assert_eq!(
            key("http://h/p?sort=name&x=1&sort=date"),
            key("http://h/p?x=1&sort=name&sort=date"),
            "other names may move around them"
        );
        assert_ne!(key("http://h/p?a"), key("http://h/p?a="));
    }

    #[test]
    fn repeated_names_keep_their_order_however_they_are_spelled() {
        let c = config();
        let h = HeaderMap::new();
        let key = |uri: &str| c.key(&Method::GET, &uri.parse().unwrap(), &h, b"");
        // A server decodes `%61` to `a`: the first asks for `a=[1,2]`, the second for `a=[2,1]`.
        assert_ne!(key("http://h/p?a=1&%61=2"), key("http://h/p?%61=2&a=1"));
        // As ASP.NET reads names (case-blind), and as PHP does (` a` is `a`; `a.b`, `a b` and `a+b` are `a_b`;
        // `a[]` is part of `a`).
        for (first, second) in [
            ("A=1&a=2", "a=2&A=1"),
            ("a+b=1&a%20b=2", "a%20b=2&a+b=1"),
            ("a.b=1&a_b=2", "a_b=2&a.b=1"),
            ("%20a=1&a=2", "a=2&%20a=1"),
            ("a%5B%5D=1&a=2", "a=2&a%5B%5D=1"),
            ("a[x]=1&a[y]=2", "a[y]=2&a[x]=1"),
        ] {
            assert_ne!(
                key(&format!("http://h/p?{first}")),
                key(&format!("http://h/p?{second}")),
                "{first} and {second}"
            );
        }
        // A server that also splits at `;` reads `b=2` inside the first pair: the order stays as sent.
        assert_ne!(key("http://h/p?b=3&a=1;b=2"), key("http://h/p?a=1;b=2&b=3"));
        // Names no server reads as one are still sorted.
        assert_eq!(
            key("http://h/p?page=2&limit=10&sort=name&page_size=5"),
            key("http://h/p?sort=name&page_size=5&limit=10&page=2")
        );
    }

    #[test]
    fn a_name_class_is_the_name_as_the_laxest_server_reads_it() {
        let class = |name: &str| String::from_utf8(NameClass::of(name).collect()).unwrap();
        assert_eq!(class("page"), "page");
        assert_eq!(class("Page_Size"), "page_size");
        assert_eq!(class(" .page..size. "), "page_size");
        assert_eq!(class("%50age+%2esize"), "page_size");
        assert_eq!(class("a%5Bx%5D"), "a");
        assert_eq!(class("a[b]c"), "a");
        assert_eq!(class("%"), "");
        assert_eq!(
            class("a%2"),
            "a_2",
            "a % that escapes nothing is a character"
        );
        assert_eq!(class("a%zz1"), "a_zz1");
        assert_eq!(class("\u{e9}t\u{e9}"), "t");
        assert_eq!(class(""), "");
    }

    #[test]
    fn escaped_and_literal_json_mean_the_same_and_duplicate_keys_hash_raw() {
        assert_eq!(canon(r#"{"\u0061":1}"#).unwrap(), r#"{"a":1}"#);
        assert_eq!(
            canon(r#""\u00e9\/\u0022\n\u0001""#).unwrap(),
            "\"\u{e9}/\\\"\\n\\u0001\""
        );
        assert_eq!(canon(r#""\ud83d\ude00""#).unwrap(), "\"\u{1F600}\"");
        // Every short escape: kept short, but `/`, which needs none; the same characters written as `\u` escapes
        // mean the same.
        let short = r#""\"\\\/\b\f\n\r\t""#;
        assert_eq!(canon(short).unwrap(), r#""\"\\/\b\f\n\r\t""#);
        assert_eq!(
            canon(r#""\u0022\u005c\u002f\u0008\u000c\u000a\u000d\u0009""#),
            canon(short)
        );
        // From the space on (DEL too: JSON escapes only what is below it), characters are written as they are.
        assert_eq!(canon(r#""\u0020~\u007f""#).unwrap(), "\" ~\u{7f}\"");
        // An escaped quote or backslash ends no string.
        assert_eq!(
            canon(r#"{"b":"\"","a":"\\"}"#).unwrap(),
            r#"{"a":"\\","b":"\""}"#
        );
        assert!(canon(r#""\ud83d""#).is_none(), "a lone surrogate");
        assert!(canon(r#""\ude00x""#).is_none(), "a lone low surrogate");
        // Escaped keys sort by what they decode to.
        assert_eq!(canon(r#"{"b":1,"\u0061":2}"#).unwrap(), r#"{"a":2,"b":1}"#);
        let c = config();
        assert_eq!(
            post_key(&c, r#"{"a":"x"}"#),
            post_key(&c, r#"{"\u0061":"\u0078"}"#)
        );
        // A key twice, once escaped: the two orders mean a=2 and a=1 to a last-wins parser.
        for dup in [
            r#"{"a":1,"\u0061":2}"#,
            r#"{"\u0061":2,"a":1}"#,
            r#"{"a":1,"a":2}"#,
        ] {
            assert!(canon(dup).is_none(), "{dup}");
        }
        assert_ne!(
            post_key(&c, r#"{"a":1,"\u0061":2}"#),
            post_key(&c, r#"{"\u0061":2,"a":1}"#)
        );
        assert_ne!(
            post_key(&c, r#"{"a":{"b":1,"b":1}}"#),
            post_key(&c, r#"{"a":{"b":1}}"#)
        );
    }

    #[test]
    fn the_content_type_of_a_body_is_part_of_its_key() {
        let c = config();
        let uri: Uri = "http://h/p".parse().unwrap();
        let typed = |ct: &'static str, body: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            c.key(&Method::POST, &uri, &h, body)
        };
        assert_ne!(
            typed("text/plain", b"a=1"),
            typed("application/x-www-form-urlencoded", b"a=1")
        );
        assert_eq!(
            typed("text/plain", b""),
            typed("text/csv", b""),
            "no body, no type"
        );
    }

    #[test]
    fn variants_are_told_apart_by_the_headers_no_key_holds_already() {
        /// The answer's fields, the headers the layer keys by, the names learned (joined by commas).
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static [&'static str],
            Option<&'static str>,
        );
        #[rustfmt::skip]
        let table: &[Case] = &[
            (&[], &[], None),
            (&[("vary", "Accept-Language")], &[], Some("accept-language")),
            // Sorted, each once, over field lines.
            (&[("vary", "Origin, accept-language"), ("vary", "ACCEPT-LANGUAGE")], &[], Some("accept-language,origin")),
            // A CORS grant to one origin varies on `Origin` whether said or not; a grant to any does not.
            (&[("access-control-allow-origin", "https://a.example")], &[], Some("origin")),
            (&[("access-control-allow-origin", "*")], &[], None),
            // `Accept-Encoding` keeps its own comparison; a compressed body alone varies on nothing else.
            (&[("vary", "Accept-Encoding")], &[], None),
            (&[("content-encoding", "gzip"), ("vary", "accept-encoding, accept")], &[], Some("accept")),
            // What every key holds already: the layer's vary headers, those of `IMPLIED_VARY`.
            (&[("vary", "accept-language, x-tenant")], &["x-tenant"], Some("accept-language")),
            (&[("vary", "x-forwarded-host, prefer")], &[], None),
            (&[("vary", "*")], &[], None),
            (&[("vary", "accept, *")], &[], None),
            // A name that does not read as one is passed over.
            (&[("vary", "accept, a b")], &[], Some("accept")),
            (&[("vary", "a, b, c, d, e, f, g, h")], &[], Some("a,b,c,d,e,f,g,h")),
            (&[("vary", "a, b, c, d, e, f, g, h, i")], &[], None),
        ];
        for (fields, keyed, expected) in table {
            let mut response = HeaderMap::new();
            for (name, value) in *fields {
                response.append(*name, HeaderValue::from_static(value));
            }
            let keyed: Vec<HeaderName> = keyed.iter().map(|n| HeaderName::from_static(n)).collect();
            let learned = learnable(&response, &keyed).map(|names| {
                names
                    .iter()
                    .map(HeaderName::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            });
            assert_eq!(learned.as_deref(), *expected, "{fields:?}");
        }
    }

    #[test]
    fn vary_digest_follows_the_named_headers_only() {
        let response = |vary: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::VARY, HeaderValue::from_static(vary));
            h
        };
        let request = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(*n, HeaderValue::from_static(v));
            }
            h
        };
        assert_eq!(vary_digest(&HeaderMap::new(), &request(&[])), None);
        let de = request(&[("accept-language", "de"), ("x-other", "1")]);
        let fr = request(&[("accept-language", "fr")]);
        let v = response("Accept-Language");
        assert_ne!(vary_digest(&v, &de), vary_digest(&v, &fr));
        assert_eq!(
            vary_digest(&v, &de),
            vary_digest(
                &response("accept-language, accept-language"),
                &request(&[("accept-language", "de")])
            )
        );
        assert_ne!(
            vary_digest(&v, &request(&[])),
            vary_digest(&v, &request(&[("accept-language", "")]))
        );
        assert_eq!(
            vary_digest(&response("a, b"), &request(&[("a", "1"), ("b", "2")])),
            vary_digest(&response("B,A"), &request(&[("b", "2"), ("a", "1")]))
        );
        assert_eq!(
            vary_digest(
                &v,
                &request(&[("accept-language", "de"), ("accept-language", "fr")])
            ),
            vary_digest(&v, &request(&[("accept-language", "de, fr")]))
        );
        // `Accept-Encoding` counts by whether it accepts the answer's coding, however it lists codings.
        let coded = |coding: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
            h
        };
        let asks = |value: &'static str| request(&[("accept-encoding", value)]);
        let br = coded("br");
        let chrome = vary_digest(&br, &asks("gzip, deflate, br, zstd"));
        for same in [
            "gzip, deflate, br",
            "br",
            "BR;q=0.5",
            "*",
            "gzip;q=0, *;q=0.1",
        ] {
            assert_eq!(vary_digest(&br, &asks(same)), chrome, "{same}");
        }
        for other in [
            "gzip",
            "",
            "br;q=0",
            "br; q = 0",
            "br;q=0.000",
            "br;q=x",
            "*, br;q=0",
            "gzip, *;q=0",
        ] {
            assert_ne!(vary_digest(&br, &asks(other)), chrome, "{other}");
        }
        // Those that do not accept it are told apart by their values, as before.
        let gzip = vary_digest(&br, &asks("gzip"));
        assert_ne!(gzip, vary_digest(&br, &asks("br;q=0, gzip")));
        assert_ne!(gzip, vary_digest(&br, &request(&[])));
        assert_eq!(
            vary_digest(&br, &asks("gzip, deflate")),
            vary_digest(&br, &asks("gzip,deflate"))
        );
        assert_ne!(vary_digest(&br, &request(&[])), chrome, "none sent");
        assert_eq!(
            vary_digest(&coded("x-gzip"), &asks("gzip")),
            vary_digest(&coded("gzip"), &asks("br, gzip"))
        );
        assert_ne!(
            vary_digest(&coded("gzip, br"), &asks("br")),
            vary_digest(&coded("gzip, br"), &asks("gzip, br")),
            "every coding applied must be accepted"
        );
        // An answer in no coding that names `Accept-Encoding` in `Vary` suits every request but one refusing
        // `identity`.
        let plain = response("accept-encoding");
        let none = vary_digest(&plain, &request(&[]));
        for same in ["gzip", "", "identity;q=0.1", "*;q=0, identity"] {
            assert_eq!(vary_digest(&plain, &asks(same)), none, "{same}");
        }
        for other in ["identity;q=0", "*;q=0", "gzip, *;q=0"] {
            assert_ne!(vary_digest(&plain, &asks(other)), none, "{other}");
        }

        // A CORS grant to one origin varies on `Origin`, said or not; a grant to every origin does not.
        let grant = |origin: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static(origin),
            );
            h
        };
        let a = request(&[("origin", "https://a.example")]);
        let b = request(&[("origin", "https://b.example")]);
        let one = grant("https://a.example");
        assert_eq!(vary_names(&one), Some(vec![header::ORIGIN]));
        assert_ne!(vary_digest(&one, &a), vary_digest(&one, &b));
        assert_ne!(vary_digest(&one, &a), vary_digest(&one, &request(&[])));
        let mut said = one.clone();
        said.insert(header::VARY, HeaderValue::from_static("Origin"));
        assert_eq!(vary_digest(&said, &a), vary_digest(&one, &a));
        assert_eq!(vary_names(&grant("*")), None);
        assert_eq!(vary_digest(&grant("*"), &a), None);
    }

    #[test]
    fn content_codings_are_read_from_every_field_in_order_identity_left_out() {
        let mut response = HeaderMap::new();
        for field in ["x-gzip, identity", " ,br", "IDENTITY", "x-custom "] {
            response.append(header::CONTENT_ENCODING, HeaderValue::from_static(field));
        }
        let found: Vec<&str> = content_codings(&response).collect();
        assert_eq!(found, ["gzip", "br", "x-custom"]);
    }

    #[test]
    fn identity_is_accepted_unless_a_weight_of_0_refuses_it() {
        let takes = |fields: &[&'static str]| {
            let mut request = HeaderMap::new();
            for field in fields {
                request.append(header::ACCEPT_ENCODING, HeaderValue::from_static(field));
            }
            accepts_coding(&request, &HeaderMap::new())
        };
        assert!(takes(&[]));
        assert!(takes(&["gzip, br"]));
        assert!(takes(&["gzip;q=1.0, identity; q=0.5, *;q=0"]));
        assert!(
            takes(&["*;q=0", "identity"]),
            "named, identity outweighs `*`"
        );
        assert!(takes(&["identity;q=0.001"]));
        assert!(!takes(&["gzip, identity;q=0"]));
        assert!(!takes(&["gzip, IDENTITY ; Q=0.000"]));
        assert!(!takes(&["gzip", "*;q=0."]));
        assert!(!takes(&["br;q=1, *;q=0.0"]));
    }

    #[test]
    fn a_media_type_is_accepted_by_the_most_specific_ranges_matching_it() {
        /// The answer's `Content-Type` (none: absent), the request's `Accept` field lines (none: no field), whether
        /// the request accepts the answer's type.
        type Case = (Option<&'static str>, &'static [&'static str], bool);
        #[rustfmt::skip]
        let table: &[Case] = &[
            (Some("application/json"), &[], true),
            (Some("application/json"), &["*/*"], true),
            (Some("application/json"), &["application/json"], true),
            (Some("application/json; charset=utf-8"), &["Application/JSON"], true),
            (Some("application/json"), &["application/*"], true),
            (Some("application/json"), &["text/html"], false),
            (Some("text/html; charset=utf-8"), &["application/json"], false),
            (Some("text/html"), &["application/json, text/plain;q=0.9"], false),
            // A browser's list takes anything through `*/*`, at a lower weight: accepted.
            (Some("application/json"), &["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"], true),
            // Over field lines, as one list.
            (Some("text/csv"), &["application/json", "text/csv"], true),
            // The most specific match decides.
            (Some("text/html"), &["text/*;q=0, text/html"], true),
            (Some("text/plain"), &["text/*;q=0, text/html"], false),
            (Some("text/plain"), &["*/*, text/*;q=0"], false),
            (Some("application/json"), &["*/*;q=0, application/json;q=0.5"], true),
            (Some("text/plain"), &["*/*;q=0, text/*"], true),
            (Some("application/json"), &["application/json;q=0"], false),
            (Some("application/json"), &["application/json; q=0.000"], false),
            (Some("application/json"), &["application/json;q=x"], false),
            (Some("application/json"), &["application/json;q=2"], false),
            (Some("application/json"), &["application/json;q=1.0"], true),
            // Listed twice at one specificity: both must accept.
            (Some("application/json"), &["application/json, application/json;q=0"], false),
            (Some("application/json"), &["application/json;q=0, application/json"], false),
            // A range's parameters must be the answer's; what follows `q` is none of them.
            (Some("text/html; level=1"), &["text/html;level=1, text/html;q=0"], true),
            (Some("text/html; level=2"), &["text/html;level=1, text/html;q=0"], false),
            (Some("text/html; level=2"), &["text/html;level=1"], false),
            (Some("text/html"), &["text/html;q=0.5;level=1"], true),
            (Some("text/plain; charset=\"UTF-8\""), &["text/plain;charset=utf-8"], true),
            (Some("text/plain; charset=iso-8859-1"), &["text/plain;charset=utf-8"], false),
            (Some("application/json"), &["application/json; charset=utf-8"], true),
            // Nothing that reads as a range: any type is accepted; one range among noise counts.
            (Some("application/json"), &[""], true),
            (Some("application/json"), &[";q=0"], true),
            (Some("application/json"), &["/json, application/, text html/plain"], true),
            (Some("application/json"), &["json, */json"], true),
            (Some("application/json"), &["json, text/html"], false),
            // An answer without a type that reads as one is accepted by any request.
            (None, &["application/json"], true),
            (Some("json"), &["application/json"], true),
            (Some("*/*"), &["application/json"], true),
            (Some("text/*"), &["application/json"], true),
            (Some("*/json"), &["application/json"], true),
        ];
        for (content_type, accept, expected) in table {
            let mut response = HeaderMap::new();
            if let Some(content_type) = content_type {
                response.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            }
            let mut request = HeaderMap::new();
            for line in *accept {
                request.append(header::ACCEPT, HeaderValue::from_static(line));
            }
            assert_eq!(
                accepts_media_type(&request, &response),
                *expected,
                "{content_type:?} for {accept:?}"
            );
        }
    }

    #[test]
    fn a_request_refusing_the_answers_media_type_is_a_variant_of_its_own() {
        let typed = |content_type: &'static str, vary: Option<&'static str>| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            if let Some(vary) = vary {
                h.insert(header::VARY, HeaderValue::from_static(vary));
            }
            h
        };
        let asks = |accept: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(accept));
            h
        };
        let html = typed("text/html", None);
        // Every request accepting the type reads the entry as one stored without `Vary`.
        for accepting in ["*/*", "text/html", "text/html,*/*;q=0.8", "text/*"] {
            assert_eq!(vary_digest(&html, &asks(accepting)), None, "{accepting}");
        }
        assert_eq!(vary_digest(&html, &HeaderMap::new()), None);
        // One refusing it is a variant of its own, told apart from others by its values.
        let json = vary_digest(&html, &asks("application/json"));
        assert!(json.is_some());
        assert_eq!(json, vary_digest(&html, &asks(" application/json ")));
        assert_ne!(json, vary_digest(&html, &asks("text/csv")));
        // Beside a `Vary` the origin sent, on top of its names.
        let localised = typed("text/html", Some("Accept-Language"));
        let mut de = asks("text/html");
        de.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("de"));
        let mut de_json = de.clone();
        de_json.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(vary_digest(&localised, &de).is_some());
        assert_ne!(
            vary_digest(&localised, &de),
            vary_digest(&localised, &de_json)
        );
        // Where the origin names `Accept`, its values tell variants apart, and the refusal adds nothing.
        let negotiated = typed("text/html", Some("Accept"));
        let by_values = |accept| vary_digest(&typed("text/html", Some("Accept")), &asks(accept));
        assert_ne!(by_values("*/*"), by_values("text/html"));
        let mut plain = HeaderMap::new();
        plain.insert(header::VARY, HeaderValue::from_static("Accept"));
        assert_eq!(
            vary_digest(&negotiated, &asks("application/json")),
            vary_digest(&plain, &asks("application/json")),
            "the same digest as for an answer without a type, which no `Accept` refuses"
        );
        // Its variant key: none for a request taking the type, unless the answers vary on named headers; a
        // refusing request's own, told apart by its `Accept`, beside those names.
        let names = [header::ACCEPT_LANGUAGE];
        assert_eq!(variant_key(&[7; 32], &[], &html, &asks("*/*")), None);
        let refusing = variant_key(&[7; 32], &[], &html, &asks("application/json"));
        assert!(refusing.is_some());
        assert_ne!(
            refusing,
            variant_key(&[7; 32], &[], &html, &asks("text/csv"))
        );
        assert_eq!(
            variant_key(&[7; 32], &names, &localised, &de),
            Some(variant_digest(&[7; 32], &names, false, &de))
        );
        assert_ne!(
            variant_key(&[7; 32], &names, &localised, &de_json),
            variant_key(&[7; 32], &names, &localised, &de)
        );
        // A request accepting the type gets the digest it always got (pinned from before the rule).
        let mut request = asks("application/json");
        request.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("de"));
        let digest = vary_digest(
            &typed("application/json", Some("Accept-Language")),
            &request,
        )
        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect::<String>());
        assert_eq!(
            digest.as_deref(),
            Some("2949830bd82a12aac1234cbac5204483cdff911ef2cc1a91a3e4a5d8e29a7eb0")
        );
    }

    /// The memo gives every request the digest its own hash gives, the second time as the first, across
    /// settings that differ only in their partition, settings derived from others, and settings whose ids differ
    /// only in their lowest bit (the memo shifts an id to make room for a bit of its own).
    #[test]
    fn memoised_digests_are_the_computed_ones() {
        let a = config();
        let b = KeyConfig::new(a.namespace.clone(), b"tenant-b".to_vec(), a.vary.clone());
        // The settings of `a`, ignoring `b` (a query parameter, a body member): a request keyed through either
        // must never take the digest `a` gave it.
        let c = a.clone().ignoring_query(vec!["b".into()]);
        let d = a.clone().ignoring_body(vec![Pointer::parse("/b").unwrap()]);
        let neighbour = 1 << 40;
        let e = KeyConfig {
            id: neighbour,
            ..a.clone()
        };
        let f = KeyConfig {
            id: neighbour + 1,
            ..b.clone()
        };
        let mut requests = Vec::new();
        for uri in [
            "http://h/p?a=1",
            "http://h/p?a=1&b=2",
            "http://h/p?b=2&a=1",
            "http://h/p?b=3&a=1",
            "/p?a=1",
        ] {
            for host in [None, Some("h"), Some("g")] {
                for (lang, forwarding) in [
                    (None, None),
                    (Some("de"), None),
                    (Some("fr"), None),
                    (None, Some(("x-forwarded-proto", "https"))),
                    (Some("de"), Some(("forwarded", "for=a;proto=https"))),
                    (None, Some(("forwarded", "for=a"))),
                ] {
                    for (content_type, body) in [
                        (None, &b""[..]),
                        (Some("application/json"), br#"{"b":1,"a":2}"#),
                        (Some("application/json"), br#"{"a":2,"b":1}"#),
                        (Some("text/plain"), br#"{"a":2,"b":1}"#),
                    ] {
                        let mut h = HeaderMap::new();
                        if let Some(host) = host {
                            h.insert(header::HOST, HeaderValue::from_static(host));
                        }
                        if let Some(lang) = lang {
                            h.insert("accept-language", HeaderValue::from_static(lang));
                        }
                        if let Some((name, value)) = forwarding {
                            h.insert(name, HeaderValue::from_static(value));
                        }
                        if let Some(content_type) = content_type {
                            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                        }
                        requests.push((uri.parse::<Uri>().unwrap(), h, body));
                    }
                }
            }
        }
        for _ in 0..2 {
            // Each request through every settings in turn, while the memo holds what the others left.
            for (uri, headers, body) in &requests {
                for method in [Method::GET, Method::POST] {
                    for partition in [None, Some(&b""[..]), Some(&b"tenant"[..])] {
                        for decoded in [false, true] {
                            let body = KeyedBody {
                                bytes: body,
                                decoded,
                            };
                            for config in [&a, &b, &c, &d, &e, &f] {
                                assert_eq!(
                                    config.digest(&method, uri, headers, partition, body),
                                    config.hash_request(
                                        &method,
                                        uri,
                                        headers,
                                        holds_implied(uri, headers),
                                        partition,
                                        body
                                    ),
                                    "{method} {uri} {headers:?} {partition:?} {decoded}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// With credentials in the key, the memo's fingerprint takes them as the request has them instead of looking
    /// up each name: the digests stay the computed ones, whatever the order of the request's headers, and every
    /// credential value, in any of the names, tells requests apart.
    #[test]
    fn credentials_in_the_key_are_read_as_the_request_has_them() {
        let names = ["accept-language", "authorization", "cookie", "x-api-key"];
        let vary = names.map(HeaderName::from_static).to_vec();
        let keys = KeyConfig::new("ns".into(), Vec::new(), vary).with_credentials_from(1);
        let uri: Uri = "http://h/p".parse().unwrap();
        let mut digests = Vec::new();
        let cases: [&[(&'static str, &'static str)]; 11] = [
            &[],
            &[("accept-language", "de")],
            &[("authorization", "Bearer a")],
            &[("authorization", "Bearer b")],
            // One value in another credential header: another user.
            &[("x-api-key", "Bearer a")],
            &[("cookie", "s=a")],
            &[("x-api-key", "a")],
            &[("x-api-key", "b")],
            &[("x-api-key", "a"), ("cookie", "s=a")],
            &[("cookie", "s=a"), ("cookie", "t=b")],
            &[("cookie", "t=b"), ("cookie", "s=a")],
        ];
        for fields in cases {
            let mut headers = HeaderMap::new();
            for (name, value) in fields {
                headers.append(*name, HeaderValue::from_static(value));
            }
            let computed = keys.hash_request(
                &Method::GET,
                &uri,
                &headers,
                false,
                None,
                KeyedBody::sent(b""),
            );
            // Twice: the second from the memo.
            for _ in 0..2 {
                assert_eq!(
                    keys.digest(&Method::GET, &uri, &headers, None, KeyedBody::sent(b"")),
                    computed
                );
            }
            assert!(!digests.contains(&computed), "{fields:?}");
            digests.push(computed);
        }
        // Two names in either order: one digest.
        let mut swapped = HeaderMap::new();
        swapped.append("cookie", HeaderValue::from_static("s=a"));
        swapped.append("x-api-key", HeaderValue::from_static("a"));
        assert_eq!(
            keys.digest(&Method::GET, &uri, &swapped, None, KeyedBody::sent(b"")),
            digests[8]
        );
    }

    #[test]
    fn ignored_query_parameters_leave_the_key() {
        let plain = config();
        let ignoring =
            config().ignoring_query(vec!["utm_*".into(), "_".into(), "request id".into()]);
        let key = |config: &KeyConfig, uri: &str| {
            config.key(&Method::GET, &uri.parse().unwrap(), &HeaderMap::new(), b"")
        };
        let base = key(&plain, "http://h/r?id=1");
        // Without an ignored parameter, the key of a layer without the setting.
        assert_eq!(key(&ignoring, "http://h/r?id=1"), base);
        for uri in [
            "http://h/r?id=1&utm_source=mail",
            "http://h/r?utm_source=web&id=1&utm_medium=x",
            "http://h/r?_=1733059200&id=1",
            "http://h/r?id=1&request%20id=7",
            "http://h/r?request+id=8&id=1",
            "http://h/r?id=1&utm_campaign",
        ] {
            assert_eq!(key(&ignoring, uri), base, "{uri}");
            assert_ne!(key(&plain, uri), base, "{uri}");
        }
        // Any other parameter still counts: another value, a name the prefix does not begin, a name the
        // ignored one only begins.
        for uri in [
            "http://h/r?id=2&utm_source=mail",
            "http://h/r?id=1&utmost=1",
            "http://h/r?id=1&__=1",
            "http://h/r?id=1&request%20ids=1",
        ] {
            assert_ne!(key(&ignoring, uri), base, "{uri}");
        }
        // A pair that a server splitting at `;` reads as two is kept whole (parameter cloaking).
        for uri in [
            "http://h/r?id=1&utm_content=x;callback=evil",
            "http://h/r?id=1&utm_content=x%3B;id=2",
            "http://h/r?id=1&_=1;id=2",
        ] {
            assert_ne!(key(&ignoring, uri), base, "{uri}");
        }
        // Only ignored parameters: the key of the bare path.
        assert_eq!(
            key(&ignoring, "http://h/r?utm_source=x"),
            key(&plain, "http://h/r")
        );
    }

    #[test]
    fn an_echoed_member_leaves_its_value_out_of_the_key_not_itself() {
        let echoing = config().ignoring_body(Pointer::blanking("id").to_vec());
        let uri: Uri = "http://h/rpc".parse().unwrap();
        let key = |body: &str| echoing.key(&Method::POST, &uri, &json_headers(), body.as_bytes());
        let call = key(r#"{"jsonrpc":"2.0","method":"eth_chainId","id":1}"#);
        for same in [
            r#"{"jsonrpc":"2.0","method":"eth_chainId","id":2}"#,
            r#"{"id":"a-7","method":"eth_chainId","jsonrpc":"2.0"}"#,
            r#"{"jsonrpc":"2.0","method":"eth_chainId","\u0069d":{"n":[1]}}"#,
            r#"{"jsonrpc":"2.0","method":"eth_chainId","id":null}"#,
        ] {
            assert_eq!(key(same), call, "{same}");
        }
        for other in [
            // Without the member: a notification, never answered with a call's answer.
            r#"{"jsonrpc":"2.0","method":"eth_chainId"}"#,
            r#"{"jsonrpc":"2.0","method":"eth_blockNumber","id":1}"#,
            // Nested in a call, or a batch of it: another request.
            r#"{"jsonrpc":"2.0","method":"eth_chainId","id":1,"params":[{"id":2}]}"#,
            r#"[{"jsonrpc":"2.0","method":"eth_chainId","id":1}]"#,
        ] {
            assert_ne!(key(other), call, "{other}");
        }
        // A batch: each call's value left out, the calls and their order kept.
        let batch = key(r#"[{"method":"eth_chainId","id":1},{"method":"eth_blockNumber","id":2}]"#);
        assert_eq!(
            key(r#"[{"method":"eth_chainId","id":7},{"id":"x","method":"eth_blockNumber"}]"#),
            batch
        );
        for other in [
            r#"[{"method":"eth_blockNumber","id":1},{"method":"eth_chainId","id":2}]"#,
            r#"[{"method":"eth_chainId","id":1},{"method":"eth_blockNumber"}]"#,
            r#"[{"method":"eth_chainId","id":1}]"#,
            r#"[[{"method":"eth_chainId","id":1}],{"method":"eth_blockNumber","id":2}]"#,
        ] {
            assert_ne!(key(other), batch, "{other}");
        }
        assert_ne!(
            key(r#"{"jsonrpc":"2.0","method":"eth_chainId","params":[{"id":2}],"id":1}"#),
            key(r#"{"jsonrpc":"2.0","method":"eth_chainId","params":[{"id":3}],"id":1}"#),
        );
    }

    #[test]
    fn ignored_body_members_leave_the_key() {
        let pointers = ["/requestId", "/meta/traceId", "/a~1b", "/t~0"];
        let ignoring = config().ignoring_body(
            pointers
                .iter()
                .map(|p| Pointer::parse(p).unwrap())
                .collect::<Vec<_>>(),
        );
        let mut json = HeaderMap::new();
        json.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let uri: Uri = "http://h/query".parse().unwrap();
        let key = |config: &KeyConfig, body: &str| {
            config.key(&Method::POST, &uri, &json, body.as_bytes())
        };
        let base = key(&config(), r#"{"q":"orders","meta":{"region":"eu"}}"#);
        assert_eq!(
            key(&ignoring, r#"{"q":"orders","meta":{"region":"eu"}}"#),
            base
        );
        for body in [
            r#"{"requestId":"r-1","q":"orders","meta":{"region":"eu"}}"#,
            r#"{"q":"orders","requestId":{"nested":[1,2]},"meta":{"traceId":"t-9","region":"eu"}}"#,
            r#"{"meta":{"region":"eu","traceId":7},"q":"orders","a/b":1,"t~":true}"#,
            // A name however it is escaped.
            r#"{"q":"orders","meta":{"region":"eu"},"request\u0049d":"r-2"}"#,
        ] {
            assert_eq!(key(&ignoring, body), base, "{body}");
            assert_ne!(key(&config(), body), base, "{body}");
        }
        for body in [
            // Another value of a member that counts.
            r#"{"requestId":"r-1","q":"refunds","meta":{"region":"eu"}}"#,
            // The name at another depth, or inside an array.
            r#"{"q":"orders","meta":{"region":"eu","requestId":"r-1"}}"#,
            r#"{"q":"orders","meta":{"region":"eu"},"traceId":"t"}"#,
            r#"{"q":"orders","meta":{"region":"eu"},"list":[{"requestId":"r-1"}]}"#,
        ] {
            assert_ne!(key(&ignoring, body), base, "{body}");
        }
        // Nor does a named pointer lead into the elements of an array, at the top or deeper.
        for (a, b) in [
            (r#"[{"traceId":"a"}]"#, r#"[{"traceId":"b"}]"#),
            (
                r#"{"meta":[{"traceId":"a"}]}"#,
                r#"{"meta":[{"traceId":"b"}]}"#,
            ),
        ] {
            assert_ne!(key(&ignoring, a), key(&ignoring, b), "{a}");
        }
        // A body that is not JSON is keyed whole; the members are still parsed, so an ignored one holding
        // invalid JSON makes the whole body raw too.
        assert_ne!(
            key(
                &ignoring,
                r#"{"q":"orders","meta":{"region":"eu"},"requestId":nope}"#
            ),
            base
        );
        for bad in ["", "requestId", "/a~2", "/a~"] {
            assert!(Pointer::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(Pointer::parse("/").unwrap().tokens, vec![b"\"\"".to_vec()]);
    }

    #[test]
    fn every_field_changes_the_key() {
        let c = config();
        let uri: Uri = "http://h/p?a=1".parse().unwrap();
        let h = HeaderMap::new();
        let base = c.key(&Method::GET, &uri, &h, b"");
        assert_ne!(base, c.key(&Method::HEAD, &uri, &h, b""));
        assert_ne!(
            base,
            c.key(&Method::GET, &"https://h/p?a=1".parse().unwrap(), &h, b"")
        );
        assert_ne!(
            base,
            c.key(&Method::GET, &"http://g/p?a=1".parse().unwrap(), &h, b"")
        );
        assert_ne!(
            base,
            c.key(&Method::GET, &"http://h/q?a=1".parse().unwrap(), &h, b"")
        );
        assert_ne!(base, c.key(&Method::GET, &uri, &h, b"x"));
        let mut lang = HeaderMap::new();
        lang.insert("accept-language", HeaderValue::from_static("de"));
        assert_ne!(base, c.key(&Method::GET, &uri, &lang, b""));
        // Headers that are not configured to vary do not change the key.
        let mut other = HeaderMap::new();
        other.insert("x-request-id", HeaderValue::from_static("1"));
        assert_eq!(base, c.key(&Method::GET, &uri, &other, b""));
        let tenant_b = KeyConfig::new(c.namespace.clone(), b"tenant-b".to_vec(), c.vary.clone());
        assert_ne!(base, tenant_b.key(&Method::GET, &uri, &h, b""));
        // A request's own partition: none, an empty one and another are three keys; the same one, one key.
        let own = |partition: Option<&[u8]>| {
            c.key_in(&Method::GET, &uri, &h, partition, KeyedBody::sent(b""))
        };
        assert_eq!(base, own(None));
        let keys = [own(Some(b"")), own(Some(b"a")), own(Some(b"b"))];
        assert!(keys.iter().all(|key| *key != base));
        assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
        assert_eq!(keys[1], own(Some(b"a")));
        // Nor does it run into the body: partition "x" with no body is not the body "x".
        assert_ne!(
            c.key_in(&Method::POST, &uri, &h, Some(b"x"), KeyedBody::sent(b"")),
            c.key_in(&Method::POST, &uri, &h, Some(b""), KeyedBody::sent(b"x"))
        );
        // Length prefixes keep adjacent fields apart: "/p" + "a=1" is not "/pa" + "=1".
        assert_ne!(
            c.key(&Method::GET, &"http://h/p?ab".parse().unwrap(), &h, b""),
            c.key(&Method::GET, &"http://h/pa?b".parse().unwrap(), &h, b"")
        );
    }

    #[test]
    fn implied_vary_headers_are_in_the_key_but_the_clients_address() {
        let c = config();
        let uri: Uri = "/p".parse().unwrap();
        let key = |fields: &[(&str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in fields {
                let name = HeaderName::try_from(*name).unwrap();
                headers.append(name, HeaderValue::from_static(value));
            }
            // Twice: the second from the digest memo, which must tell them apart too.
            let first = c.key(&Method::GET, &uri, &headers, b"");
            assert_eq!(c.key(&Method::GET, &uri, &headers, b""), first);
            first
        };
        let plain = key(&[]);
        let mut seen = vec![plain.clone()];
        for name in &IMPLIED_VARY {
            let name = name.as_str();
            let one = key(&[(name, "a")]);
            assert!(!seen.contains(&one), "{name}");
            seen.push(one.clone());
            // Only `Forwarded` leaves a `for` out: another header's value counts whole.
            if name != "forwarded" {
                assert_ne!(key(&[(name, "for=a")]), plain, "{name}");
            }
            assert_ne!(key(&[(name, "b")]), one, "{name}");
            // Every field counts, in order.
            assert_ne!(key(&[(name, "a"), (name, "b")]), one, "{name}");
            assert_ne!(
                key(&[(name, "a"), (name, "b")]),
                key(&[(name, "b"), (name, "a")]),
                "{name}"
            );
        }
        // Other headers do not make a request one that holds any (whose hash looks for them).
        let mut other = HeaderMap::new();
        other.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!holds_implied(&uri, &other));
        other.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(holds_implied(&uri, &other));
        // The order of the headers does not.
        assert_eq!(
            key(&[("x-forwarded-host", "a"), ("x-forwarded-proto", "https")]),
            key(&[("x-forwarded-proto", "https"), ("x-forwarded-host", "a")])
        );
        // Nor does a header's name run into another's value.
        assert_ne!(key(&[("x-forwarded-host", "a")]), key(&[("x-host", "a")]));
        // The client's address is not in the key; what else `Forwarded` says is.
        assert_eq!(key(&[("x-forwarded-for", "192.0.2.1")]), plain);
        assert_eq!(key(&[("forwarded", "for=192.0.2.1, for=10.0.0.1")]), plain);
        let behind = key(&[("forwarded", "for=192.0.2.1;proto=https;host=a")]);
        for (value, same) in [
            ("For=\"[2001:db8::1]:80\"; proto=https ;host=a", true),
            ("for=192.0.2.1;proto=http;host=a", false),
            ("for=192.0.2.1;proto=https;host=b", false),
            // A pair hidden in a quoted `for` still counts.
            ("for=\"x;host=b\";proto=https;host=a", false),
            // Each hop's pairs count.
            (
                "for=192.0.2.1;proto=https;host=a, for=10.0.0.1;proto=http",
                false,
            ),
        ] {
            assert_eq!(key(&[("forwarded", value)]) == behind, same, "{value}");
        }
    }

    #[test]
    fn host_header_stands_in_for_a_missing_authority() {
        let c = config();
        let uri: Uri = "/p".parse().unwrap();
        let mut a = HeaderMap::new();
        a.insert(header::HOST, HeaderValue::from_static("a.example"));
        let mut b = HeaderMap::new();
        b.insert(header::HOST, HeaderValue::from_static("b.example"));
        assert_ne!(
            c.key(&Method::GET, &uri, &a, b""),
            c.key(&Method::GET, &uri, &b, b"")
        );
    }

    #[test]
    fn one_origins_spellings_share_a_key_and_other_ports_do_not() {
        let c = config();
        let key = |uri: &str, host: Option<&'static str>| {
            let uri: Uri = uri.parse().unwrap();
            let mut headers = HeaderMap::new();
            if let Some(host) = host {
                headers.insert(header::HOST, HeaderValue::from_static(host));
            }
            c.key(&Method::GET, &uri, &headers, b"")
        };
        let https = key("https://api.example/p", None);
        assert_eq!(key("https://api.example:443/p", None), https);
        assert_eq!(key("https://API.Example/p", None), https);
        assert_eq!(key("https://api.example:/p", None), https);
        assert_ne!(key("https://api.example:80/p", None), https);
        assert_ne!(key("https://api.example:8443/p", None), https);
        let http = key("http://api.example/p", None);
        assert_eq!(key("http://api.example:80/p", None), http);
        assert_ne!(key("http://api.example:443/p", None), http);
        assert_eq!(key("HTTP://api.example/p", None), http);
        // A scheme `http` keeps as spelled: its case makes no difference either.
        let ws = key("ws://api.example/p", None);
        assert_eq!(key("WS://api.example/p", None), ws);
        assert_eq!(key("Ws://API.example/p", None), ws);
        assert_ne!(ws, http);
        // Another scheme's default port is not known here either: kept.
        assert_ne!(key("ws://api.example:443/p", None), ws);
        assert_ne!(key("ws://api.example:80/p", None), ws);
        // Without a scheme, which port is the default is unknown: `Host: h:443` keeps a key of its own (an
        // answer echoing the port must not reach `Host: h`). Case still makes no difference.
        let host = key("/p", Some("api.example"));
        assert_ne!(key("/p", Some("api.example:443")), host);
        assert_ne!(key("/p", Some("api.example:80")), host);
        assert_eq!(key("/p", Some("API.example")), host);
        // A `Host` beside a URI's authority: another authority is in the key, the URI's own is not.
        let bare = key("http://10.0.0.5/status", None);
        let a = key("http://10.0.0.5/status", Some("a.example"));
        assert_ne!(a, bare);
        assert_ne!(key("http://10.0.0.5/status", Some("b.example")), a);
        assert_eq!(key("http://10.0.0.5/status", Some("A.example:80")), a);
        assert_eq!(key("http://10.0.0.5/status", Some("10.0.0.5:80")), bare);
        assert_ne!(key("http://10.0.0.5/status", Some("10.0.0.5:8080")), bare);
    }

    #[test]
    fn an_authority_is_normalised_as_its_origin_compares() {
        for (authority, defaults, normal) in [
            ("api.example", WEB_DEFAULT_PORTS, "api.example"),
            ("API.Example:443", WEB_DEFAULT_PORTS, "api.example"),
            ("api.example:80", WEB_DEFAULT_PORTS, "api.example"),
            ("api.example:", &[][..], "api.example"),
            ("api.example:443", &[][..], "api.example:443"),
            ("api.example:443", &["80"][..], "api.example:443"),
            ("api.example:8443", WEB_DEFAULT_PORTS, "api.example:8443"),
            ("[::1]:443", &["443"][..], "[::1]"),
            ("[::1]", WEB_DEFAULT_PORTS, "[::1]"),
            (
                "[2001:DB8::1]:8080",
                WEB_DEFAULT_PORTS,
                "[2001:db8::1]:8080",
            ),
            // Userinfo is kept as written.
            (
                "User@API.example:443",
                WEB_DEFAULT_PORTS,
                "User@api.example",
            ),
            ("", WEB_DEFAULT_PORTS, ""),
        ] {
            assert_eq!(
                normal_authority(authority.as_bytes(), defaults).as_ref(),
                normal.as_bytes(),
                "{authority}"
            );
        }
        assert!(matches!(
            normal_authority(b"api.example", WEB_DEFAULT_PORTS),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn json_detection_follows_the_media_type() {
        let mut h = HeaderMap::new();
        for (ct, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/vnd.api+json", true),
            ("text/plain", false),
            ("application/jsonx", false),
            // A suffix alone names no type.
            ("+json", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_json(&h), json, "{ct}");
        }
    }

    /// The thread's canonicalising buffers are kept for the next body, but not once one grew them past 64 KiB:
    /// after a huge body a thread holds on to none of it.
    #[test]
    fn canonicalising_buffers_are_kept_only_while_small() {
        let c = config();
        let uri: Uri = "http://h/p".parse().unwrap();
        let kept = || {
            CANONICAL.with(|cell| {
                let buffers = cell.take();
                let capacity = buffers.out.capacity();
                cell.set(buffers);
                capacity
            })
        };
        let body = |len: usize| format!(r#"{{"a":"{}"}}"#, "x".repeat(len));
        c.key(
            &Method::POST,
            &uri,
            &json_headers(),
            body(16 * 1024).as_bytes(),
        );
        assert!(kept() >= 16 * 1024, "kept: {}", kept());
        c.key(
            &Method::POST,
            &uri,
            &json_headers(),
            body(100 * 1024).as_bytes(),
        );
        assert_eq!(kept(), 0);
    }

    #[test]
    fn non_json_bodies_hash_raw_bytes() {
        let c = config();
        let uri: Uri = "http://h/p".parse().unwrap();
        let h = HeaderMap::new();
        let a = c.key(&Method::POST, &uri, &h, br#"{"a":1,"b":2}"#);
        let b = c.key(&Method::POST, &uri, &h, br#"{"b":2,"a":1}"#);
        assert_ne!(a, b, "without a JSON content type the bytes are the body");
        let invalid = c.key(&Method::POST, &uri, &json_headers(), b"{not json");
        let invalid_again = c.key(&Method::POST, &uri, &json_headers(), b"{not json");
        assert_eq!(invalid, invalid_again);
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            "[a-z]{0,6}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-e]{1,3}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Serialises an object's members in a permuted order chosen by `seed`, at every level.
    fn write_permuted(value: &serde_json::Value, seed: &mut u64, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut members: Vec<_> = map.iter().collect();
                // A small LCG drives a Fisher-Yates shuffle.
                for i in (1..members.len()).rev() {
                    *seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let j = (*seed >> 33) as usize % (i + 1);
                    members.swap(i, j);
                }
                out.push_str("{ ");
                for (i, (k, v)) in members.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(" ,\n");
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push_str(" : ");
                    write_permuted(v, seed, out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_permuted(v, seed, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }

    proptest! {
        /// The shortcuts for the usual `Accept` fields say what reading every range says.
        #[test]
        fn the_accept_shortcuts_agree_with_reading_every_range(
            lines in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::sample::select(&[
                        "application/json", "Application/JSON", " application/json ", "application/json;q=0",
                        "application/json; charset=utf-8", "application/json;charset=latin1", "text/html",
                        "text/html;level=1", "text/*", "*/*", "*/*;q=0", "application/*;q=0.5", "*/json", "json",
                        "", "application/jsonx", "application/json;q=0.5",
                    ][..]),
                    1..4,
                ),
                0..3,
            ),
            content_type in proptest::option::of(proptest::sample::select(&[
                "application/json", "application/json; charset=utf-8", "application/json ;charset=latin1",
                "APPLICATION/JSON", "text/html", "text/html; level=1", "text/plain", "json", "*/*",
                " application/json", "application/json;q=0", "application/json,text/html",
            ][..])),
        ) {
            let mut request = HeaderMap::new();
            for line in &lines {
                request.append(header::ACCEPT, HeaderValue::from_str(&line.join(",")).unwrap());
            }
            let mut response = HeaderMap::new();
            if let Some(content_type) = content_type {
                response.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            }
            let read = match content_type {
                _ if lines.is_empty() => true,
                None => true,
                Some(content_type) => {
                    accepted_by_ranges(request.get_all(header::ACCEPT), content_type.as_bytes())
                }
            };
            prop_assert_eq!(accepts_media_type(&request, &response), read);
        }

        #[test]
        fn an_authority_normalises_to_one_spelling_per_origin(
            user in proptest::option::of("[a-zA-Z]{1,4}"),
            host in prop_oneof!["[a-zA-Z0-9][a-zA-Z0-9.-]{0,12}", "\\[[0-9a-fA-F:]{2,12}\\]"],
            port in proptest::option::of(prop_oneof![Just(String::new()), Just("80".to_owned()),
                Just("443".to_owned()), "[0-9]{1,5}"]),
        ) {
            let userinfo = user.map(|user| format!("{user}@")).unwrap_or_default();
            let written = match &port {
                Some(port) => format!("{userinfo}{host}:{port}"),
                None => format!("{userinfo}{host}"),
            };
            let normal = normal_authority(written.as_bytes(), WEB_DEFAULT_PORTS).into_owned();
            // What an origin compares: the host in lowercase, a port unless empty or a default; userinfo as
            // written.
            let expected = match port.as_deref() {
                Some(port) if !port.is_empty() && !WEB_DEFAULT_PORTS.contains(&port) => {
                    format!("{userinfo}{}:{port}", host.to_ascii_lowercase())
                }
                _ => format!("{userinfo}{}", host.to_ascii_lowercase()),
            };
            prop_assert_eq!(&normal, expected.as_bytes());
            // Normal already; and the host's case never matters.
            prop_assert_eq!(&normal_authority(&normal, WEB_DEFAULT_PORTS)[..], &normal[..]);
            let shouted = format!("{userinfo}{}", &written[userinfo.len()..].to_ascii_uppercase());
            prop_assert_eq!(&normal_authority(shouted.as_bytes(), WEB_DEFAULT_PORTS)[..], &normal[..]);
        }

        #[test]
        fn any_member_permutation_gives_the_same_key(value in arb_json(), seed in any::<u64>()) {
            let c = config();
            let plain = serde_json::to_string(&value).unwrap();
            let mut permuted = String::new();
            let mut s = seed;
            write_permuted(&value, &mut s, &mut permuted);
            prop_assert_eq!(post_key(&c, &plain), post_key(&c, &permuted));
        }

        #[test]
        fn any_value_change_changes_the_key(value in arb_json(), replacement in arb_json()) {
            prop_assume!(value != replacement);
            let c = config();
            let a = serde_json::json!({ "input": value, "k": 1 });
            let b = serde_json::json!({ "input": replacement, "k": 1 });
            prop_assert_ne!(post_key(&c, &a.to_string()), post_key(&c, &b.to_string()));
        }

        #[test]
        fn canonicaliser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut out = Vec::new();
            let _ = canonicalize_json(&bytes, &mut out);
        }
    }
}
