//! The cache decision, as pure functions of plain data: [`decide`] takes what a request says, what the store
//! holds for it (or that it was not read yet) and the time, and returns the [`Action`] the engine carries out;
//! [`judge`] says whether an origin response may be stored and shared; [`serve_stale_on_error`] whether a
//! stored entry answers for a failed origin.
//!
//! The rules are those of a *shared* cache (RFC 9111 §3, §3.5, §4.1), so one user is never answered with
//! another's response:
//!
//! - requests carrying credentials (`Authorization`, `Cookie`, or a header the layer names as one, such as
//!   `X-Api-Key`) bypass the cache unless the layer says how users are told apart ([`Credentials`]), and so do
//!   requests with a header no list names whose name says it is one ([`named_like_a_credential`]), unless a
//!   partition says whom every request acts for;
//! - preconditions (`If-Match`, `If-Unmodified-Since`, and validators on a method other than `GET` and `HEAD`)
//!   go to the origin, and their responses are not stored;
//! - a `GET` with `Range` is answered from a fresh or stale entry, and [`part_of`] says which part of it (RFC
//!   9110 §14): a `206` or `416` cut by the cache (a stale entry's refresh asks for the whole answer); with no
//!   entry to cut it from it goes to the origin as it came, its answer neither stored nor shared, while one
//!   background fetch of the whole answer fills the entry ([`Action::PassAndFill`]). `Range` on any other
//!   method goes to the origin;
//! - a `GET` or `HEAD` carrying the client's own validators (`If-None-Match`, `If-Modified-Since`) is answered
//!   like any other, then [`not_modified`] says whether the client gets `304 Not Modified` instead (RFC 9111
//!   §4.3.2): the validators are the client's, so they are evaluated here and never forwarded;
//! - `206` and `304` are never stored; by default only `200`, `203` and `204` are;
//! - a response with `Set-Cookie`, `Vary: *`, or `Cache-Control: private` / `no-store` is neither stored nor
//!   shared with coalesced callers; a `Vary` or `Cache-Control` that cannot be read (bytes outside visible
//!   ASCII, a `Vary` element that is no field name) counts as `Vary: *` or `no-store`, and a request's
//!   unreadable `Cache-Control` as `no-store`. A targeted field the layer names (RFC 9213, such as
//!   `CDN-Cache-Control`), when valid, speaks in place of the response's `Cache-Control`;
//! - the response's `Vary` is honoured: an entry answers only a request with the same values of the headers it
//!   names;
//! - a request asking to switch protocols (`Upgrade`: a WebSocket handshake) goes to the origin, and so do one
//!   tunnelling another method (`X-HTTP-Method-Override`, [`METHOD_OVERRIDES`], or a `_method` parameter: see
//!   [`tunnel`](super::tunnel); the method it names counts as the request's for invalidation) and one whose body ends with trailers (no key holds them); an answer ending
//!   with trailers is passed on, not stored;
//! - a request subscribing to an event stream (`Accept: text/event-stream`) goes to the origin, and an answer
//!   that is a live stream ([`is_live_stream`]: an event stream, gRPC, ...) is passed on from its head as it
//!   arrives, neither stored nor shared: held whole, one that never ends would never answer.

use super::directives::{Directives, delta_seconds, split_directives};
use super::freshness::{Windows, http_date};
use super::key::{default_ports, normal_authority};
use super::status::{BypassReason, NotStored};
use http::header::{
    ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, DATE, ETAG, HOST,
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED,
    PRAGMA, RANGE, SET_COOKIE, UPGRADE, VARY,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

/// How the cache treats requests that carry credentials (`Authorization`, `Cookie`, or a header named by
/// [`credential_headers`](super::RedisCacheLayerBuilder::credential_headers)).
///
/// A shared cache must never answer one user with a response made for another (RFC 9111 §3.5), so by default
/// such requests bypass it. To cache them, say how users are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Credentials {
    /// Requests with credentials go to the inner service uncached. The default.
    ///
    /// Credentials here are those a request carries in its headers: `Authorization`, `Cookie` (but the
    /// [ignored](super::RedisCacheLayerBuilder::ignore_cookies) ones) and the credential headers. One in the URI
    /// or the body (`?access_token=`, `?key=`, a presigned URL's signature, `{"api_key": ...}`) is part of the
    /// key, as the whole URI and body are, so each credential gets entries of its own, as with
    /// [`InKey`](Self::InKey), and `private` answers are still not stored.
    #[default]
    Bypass,
    /// The values of `Authorization`, `Cookie` and the credential headers are part of the key: each credential
    /// gets entries of its own. Responses marked `Cache-Control: private` may then be stored for requests that
    /// carry credentials.
    InKey,
    /// Every request through the layer acts for whom its partition names: the layer's
    /// [`partition`](super::RedisCacheLayerBuilder::partition), and the request's own with
    /// [`partition_by`](super::RedisCacheLayerBuilder::partition_by) (one of them must be set). Credentials do
    /// not split entries, and `private` responses may be stored.
    Partition,
}

/// What the decision needs to know about the layer's configuration.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) credentials: Credentials,
    /// Statuses that may be stored; `206` and `304` never are, listed or not.
    pub(crate) statuses: Vec<StatusCode>,
    /// Whether response `Cache-Control: no-store` and `private` are honoured.
    pub(crate) respect_response_cache_control: bool,
    /// The targeted fields (RFC 9213) that speak for `Cache-Control` to this cache, most applicable first.
    pub(crate) targeted: Vec<HeaderName>,
    /// Whether a successful unsafe request drops the entries of its target URI (RFC 9111 §4.4).
    pub(crate) invalidate_on_unsafe: bool,
    /// Whether the layer's [`query_when`](super::RedisCacheLayerBuilder::query_when) judges by its body whether a
    /// request it keys by its body is a query: then a body it cannot read counts as a write ([`unread_write`]).
    pub(crate) queries_judged: bool,
    /// How much of an entry's fresh lifetime, in thousandths, is left when a hit starts its refresh ahead of
    /// expiry ([`Stored::refresh_at`]); 0: none is.
    pub(crate) refresh_ahead: u16,
}

/// What a request's head says, read in one pass over its headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequestFacts {
    /// The method is one the layer caches (configured methods, or a `POST` its predicate accepts).
    pub(crate) method_cacheable: bool,
    /// The request's own method is one the layer caches other than `GET` and `HEAD`: a query, keyed by its
    /// body, whose body may tunnel another method ([`tunnel`](super::tunnel)). It stays so when a header or
    /// parameter is found to tunnel one, which `method_cacheable` does not.
    pub(crate) query_method: bool,
    /// `Cache-Control: no-store`.
    pub(crate) no_store: bool,
    /// `Cache-Control: no-cache` (or `Pragma: no-cache` without `Cache-Control`): revalidate.
    pub(crate) no_cache: bool,
    /// `Cache-Control: max-age=N`: no stored answer older than `N` seconds (and none stale, unless
    /// `max-stale` says so).
    pub(crate) max_age: Option<u32>,
    /// `Cache-Control: min-fresh=N`: no stored answer that stays fresh for less than `N` more seconds.
    pub(crate) min_fresh: Option<u32>,
    /// `Cache-Control: max-stale[=N]`: a stale answer is welcome, up to `N` seconds past its freshness
    /// ([`ANY_STALENESS`] without `N`). It matters only beside `max-age` or `min-fresh`: without them, the layer's
    /// own `stale_for` says what it serves stale.
    pub(crate) max_stale: Option<u32>,
    /// `Cache-Control: only-if-cached`: a stored answer or none; the inner service is not to be called.
    pub(crate) only_if_cached: bool,
    pub(crate) authorization: bool,
    pub(crate) cookie: bool,
    /// A header no list of the layer's names, whose name says it carries a credential or names whom the request
    /// acts for ([`named_like_a_credential`]): not in the key, so the request is not the cache's unless a
    /// partition says whom every request acts for.
    pub(crate) unnamed_credential: bool,
    /// Its JSON body holds the member the layer's answers echo
    /// ([`echo_body_field`](super::RedisCacheLayerBuilder::echo_body_field)): an answer that cannot carry this
    /// request's value of it is not shared.
    pub(crate) echoes: bool,
    /// For a batch among those, a digest of its calls' values of the member in order
    /// ([`Echoed::order`](super::echo::Echoed::order)), never 0; 0 for any other request. Only an answer that
    /// lists them so is shared.
    pub(crate) echo_order: u64,
    /// `Range`: a `GET` of it is answered from an entry, in part ([`part_of`]), or passed on while the entry
    /// is filled ([`Action::PassAndFill`]); anything else with it goes to the origin as it came. (`If-Range`
    /// alone means nothing: RFC 9110 §13.1.5.)
    pub(crate) range: bool,
    /// The method is `GET`, the one method with range semantics (RFC 9110 §14.2).
    pub(crate) get: bool,
    /// `If-Match` or `If-Unmodified-Since`: preconditions on the origin's state, for the origin to evaluate.
    pub(crate) preconditions: bool,
    /// `If-None-Match` or `If-Modified-Since`: the client's validators of responses it holds, which a cache
    /// evaluates itself for a `GET` or `HEAD` ([`not_modified`]).
    pub(crate) validators: bool,
    /// The method is `GET` or `HEAD`, the methods whose validators a cache may answer (RFC 9110 §13.1.1).
    pub(crate) get_or_head: bool,
    /// The body is over the layer's cap (by `Content-Length`, or found while reading it).
    pub(crate) too_large: bool,
    /// The body came as a stream, and reading it would have passed the layer's in-flight budget: it goes on as
    /// far as it was read chained with the rest, unread.
    pub(crate) over_budget: bool,
    /// The body ended with trailers (found while reading it).
    pub(crate) trailers: bool,
    /// The body is in codings the layer undoes, and they did not undo within the cap (see
    /// [`Content`](super::decode::Content)): what it asks cannot be read.
    pub(crate) undecodable: bool,
    /// `Upgrade`: the client asks to switch protocols (a WebSocket handshake), which no stored answer does.
    pub(crate) upgrade: bool,
    /// `Accept` names `text/event-stream`: the client subscribes to a live stream (an `EventSource`), which no
    /// stored answer is.
    pub(crate) event_stream: bool,
    /// The layer's [`query_when`](super::RedisCacheLayerBuilder::query_when) refused the request's body: no
    /// query (and `method_cacheable` is cleared with it).
    pub(crate) not_a_query: bool,
    /// The request opted out of the cache ([`CacheOverride::Skip`](super::CacheOverride::Skip)).
    pub(crate) skip: bool,
    /// The layer keys each request by a partition of its own
    /// ([`partition_by`](super::RedisCacheLayerBuilder::partition_by)), and named none for this one: it is not
    /// known whose answer it would get or give.
    pub(crate) unpartitioned: bool,
    /// The method is not safe (RFC 9110 §9.2.1): any but `GET`, `HEAD`, `OPTIONS`, `TRACE` and `QUERY`, unknown
    /// methods included. A request with one may change its target resource. With a method override, the method
    /// it names counts.
    pub(crate) unsafe_method: bool,
    /// A header overrides the method ([`METHOD_OVERRIDES`]): the origin may act on another method than the
    /// request's, which the key does not hold, so the request is not cached.
    pub(crate) method_overridden: bool,
    /// A header every key holds ([`IMPLIED_VARY`](super::key::IMPLIED_VARY): what a proxy forwards, `Prefer`,
    /// API versions, account selectors, fragment requests), or a `Host` naming another authority than the URI's
    /// ([`foreign_host`](super::key::foreign_host)): the key holds its fields.
    pub(crate) implied_vary: bool,
    /// The request has a `Host` field.
    pub(crate) host: bool,
    /// The request is keyed by its variant of answers that vary on request headers (see
    /// [`variants`](super::variants)), not by its primary key, which held another variant's answer when last
    /// read: a miss of its own variant is a `vary-miss`.
    pub(crate) variant: bool,
    /// The windows chosen for this request (its extension, the layer's hook, or the layer's own), for the
    /// entry it stores.
    pub(crate) windows: Windows,
    /// The windows are the request's own extension's ([`CacheOverride::Windows`](super::CacheOverride)):
    /// they win over the layer's windows for the answer's status.
    pub(crate) windows_by_call: bool,
    /// Whether the origin's own freshness headers count for this request's method.
    pub(crate) origin_freshness: bool,
}

/// Whether a pattern of `ignored` names the cookie `name`, and its name does not say it holds a session.
fn is_ignored_cookie(name: &str, ignored: &[String]) -> bool {
    ignored
        .iter()
        .any(|pattern| super::key::names(pattern, name))
        && !holds_a_session(name)
}

/// Whether a request header's name (lowercase, as a [`HeaderName`] is) says it carries a credential or names whom
/// the request acts for, though no list of the layer's names it: an API's own key or token header (Shopify's
/// `X-Shopify-Access-Token`, Algolia's `X-Algolia-Api-Key`, Datadog's `Dd-Api-Key`, Cloudflare's `X-Auth-Key`,
/// RapidAPI's `X-Rapidapi-Key`, a CSRF token), a signature (RFC 9421's `Signature`), the user a proxy names
/// (`X-User`, `X-User-Id`, `X-Auth-Request-Preferred-Username`), what it says of that user (`X-Userinfo`,
/// `X-Jwt-Payload`, `X-Forwarded-Groups`, `X-Hasura-Role`, `X-Authenticated-Scope`, a certificate's
/// `X-Ssl-Client-S-Dn`), or the tenant or account a request is for (`X-Tenant-Id`, Grafana Mimir's and Loki's
/// `X-Scope-OrgID`, ABP's `__tenant`, `X-Account-Id`). Its last words (between `-` and `_`) decide: the last is
/// `auth`, `oauth`, `authorization`, `authenticated`, `token`, `key`, `apikey`, `hapikey`, `secret`, `password`,
/// `passwd`, `jwt`, `assertion`, `credential(s)`, `session`, `sessid`, `sessionid`, `sid`, `sig`, `signature`,
/// `cert`, `clientcert`, `dn`, `user`, `username`, `userid`, `email`, `userinfo`, `claims`, `role(s)`, `groups`,
/// `scope(s)`, `permissions`, `identity`, `principal`, `tenant`, `tenantid`, `orgid`, `organizationid`,
/// `accountid`, `workspaceid`, `customerid` (`X-OrgId`, `X-AccountId`: names written in one word) or `subject`; or
/// the last two are `jwt` and `payload`, `authorization` and `auxiliary`, `claim`, `jwt`, `token`, `auth` or `user`
/// and `sub`, or `user`, `principal`, `session`, `consumer` (Kong's), `credential`, `tenant`, `org`,
/// `organization`, `account`, `workspace` or `customer` and `id`, `uid`, `identifier`, `name`, `login` or `info`.
/// So every one of [`CREDENTIAL_PARAMS`](super::CREDENTIAL_PARAMS), as a header, is one. So is each of Kubernetes'
/// impersonation headers, whatever its last word (`Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid`,
/// `Impersonate-Extra-<key>`): each names whom the request acts for, or what that user may do. Not
/// `Idempotency-Key` (nor its `X-` form), which says nothing of who asks, nor Fetch Metadata's `Sec-Fetch-User`,
/// which says a user started the request (browsers send it with every page a user opens).
pub(crate) fn named_like_a_credential(name: &str) -> bool {
    // Every request header the layer does not know comes here, on every request: the last word is found from the
    // end and screened by its length and last letter, and the one before it is read only for the words whose
    // meaning it decides.
    let bytes = name.as_bytes();
    if bytes.starts_with(b"impersonate-") {
        return true;
    }
    let (rest, last) = match last_separator(bytes) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (&[][..], bytes),
    };
    let screened = last.last().is_some_and(|&end| {
        LAST_LETTERS
            .get(last.len())
            .is_some_and(|letters| end.is_ascii_lowercase() && letters & 1 << (end - b'a') != 0)
    });
    if !screened {
        return false;
    }
    let previous = || last_separator(rest).map_or(rest, |at| &rest[at + 1..]);
    match last {
        b"key" => previous() != b"idempotency",
        // Fetch Metadata's `Sec-Fetch-User: ?1`, which browsers send with every page a user opens, says a user
        // started the request, not who.
        b"user" => rest != b"sec-fetch",
        b"auth" | b"oauth" | b"authorization" | b"authenticated" | b"token" | b"apikey"
        | b"hapikey" | b"secret" | b"password" | b"passwd" | b"jwt" | b"assertion"
        | b"credential" | b"credentials" | b"session" | b"sessid" | b"sessionid" | b"sid"
        | b"sig" | b"signature" | b"cert" | b"clientcert" | b"dn" | b"username" | b"userid"
        | b"email" | b"userinfo" | b"claims" | b"role" | b"roles" | b"groups" | b"scope"
        | b"scopes" | b"permissions" | b"identity" | b"principal" | b"tenant" | b"tenantid"
        | b"orgid" | b"organizationid" | b"accountid" | b"workspaceid" | b"customerid"
        | b"subject" => true,
        // A token's subject claim, as mod_auth_openidc (`OIDC_CLAIM_sub`) and gateways pass it on.
        b"sub" => matches!(previous(), b"claim" | b"jwt" | b"token" | b"auth" | b"user"),
        b"payload" => previous() == b"jwt",
        // Azure Resource Manager's `X-Ms-Authorization-Auxiliary`: tokens for other tenants beside `Authorization`.
        b"auxiliary" => previous() == b"authorization",
        b"id" | b"uid" | b"identifier" | b"name" | b"login" | b"info" => matches!(
            previous(),
            b"user"
                | b"principal"
                | b"session"
                | b"consumer"
                | b"credential"
                | b"tenant"
                | b"org"
                | b"organization"
                | b"account"
                | b"workspace"
                | b"customer"
        ),
        _ => false,
    }
}

/// Where the last `-` or `_` of a header name is. (Most of a name's bytes are letters, above both: one comparison
/// passes each.)
fn last_separator(name: &[u8]) -> Option<usize> {
    let mut rest = name;
    while let [before @ .., b] = rest {
        if *b < b'a' && (*b == b'-' || *b == b'_') {
            return Some(before.len());
        }
        rest = before;
    }
    None
}

/// The last words [`named_like_a_credential`] reads, by length: a bit for each letter one of that length ends in.
const LAST_LETTERS: [u32; 15] = {
    const WORDS: [&[u8]; 55] = [
        b"key",
        b"auth",
        b"oauth",
        b"authorization",
        b"authenticated",
        b"token",
        b"apikey",
        b"hapikey",
        b"secret",
        b"password",
        b"passwd",
        b"jwt",
        b"assertion",
        b"credential",
        b"credentials",
        b"session",
        b"sessid",
        b"sessionid",
        b"sid",
        b"sig",
        b"signature",
        b"cert",
        b"clientcert",
        b"user",
        b"username",
        b"userid",
        b"email",
        b"dn",
        b"userinfo",
        b"claims",
        b"role",
        b"roles",
        b"groups",
        b"scope",
        b"scopes",
        b"permissions",
        b"identity",
        b"principal",
        b"tenant",
        b"tenantid",
        b"orgid",
        b"organizationid",
        b"accountid",
        b"workspaceid",
        b"customerid",
        b"subject",
        b"sub",
        b"payload",
        b"auxiliary",
        b"id",
        b"uid",
        b"identifier",
        b"name",
        b"login",
        b"info",
    ];
    let mut letters = [0u32; 15];
    let mut i = 0;
    while i < WORDS.len() {
        let word = WORDS[i];
        letters[word.len()] |= 1 << (word[word.len() - 1] - b'a');
        i += 1;
    }
    letters
};

/// Whether a cookie's name says it holds a session or a credential, so that no
/// [`ignore_cookies`](super::RedisCacheLayerBuilder::ignore_cookies) pattern makes it one to ignore: a name
/// that ends as session cookies and tokens do (`session`, `sessid`, `sessionid`, `session_id`, `token`, `.sid`:
/// `PHPSESSID`, `JSESSIONID`, Express's `connect.sid`, Rails' `_myapp_session`, Laravel's `laravel_session`,
/// NextAuth's `next-auth.session-token`, Devise's `remember_user_token`), begins `.AspNetCore.` (ASP.NET Core's
/// session, sign-in and identity cookies), or is one of [`CREDENTIAL_PARAMS`](super::CREDENTIAL_PARAMS) however
/// its words are joined (`jwt`, `auth`, `apiKey`). In any case.
pub(crate) fn holds_a_session(name: &str) -> bool {
    const ENDINGS: [&str; 6] = [
        "session",
        "sessid",
        "sessionid",
        "session_id",
        "token",
        ".sid",
    ];
    let bytes = name.as_bytes();
    let ends = |ending: &str| {
        bytes.len() >= ending.len()
            && bytes[bytes.len() - ending.len()..].eq_ignore_ascii_case(ending.as_bytes())
    };
    // A name's letters and digits, in lowercase: `api-key`, `apiKey` and `API_KEY` are one.
    fn letters(name: &str) -> impl Iterator<Item = u8> + '_ {
        name.bytes()
            .filter(u8::is_ascii_alphanumeric)
            .map(|b| b.to_ascii_lowercase())
    }
    ENDINGS.into_iter().any(ends)
        || bytes
            .get(..12)
            .is_some_and(|start| start.eq_ignore_ascii_case(b".aspnetcore."))
        || super::CREDENTIAL_PARAMS
            .iter()
            .any(|credential| letters(credential).eq(letters(name)))
}

/// Whether every cookie `headers` carry is one `ignored` names (see
/// [`ignore_cookies`](super::RedisCacheLayerBuilder::ignore_cookies)): then the request counts as sending none.
/// A `Cookie` field that cannot be read, or a pair that is not a cookie pair of RFC 6265 (a name, `=`, a value of
/// cookie octets, perhaps quoted), counts as a cookie no pattern names. That grammar has no space and no `,` in a
/// value, and lax servers split there: Rack 2 reads `_ga=1, session=x` and Python's `SimpleCookie` reads
/// `_ga=1 session=x` as two cookies, a session among them, where a reading of `;` alone finds only `_ga`.
pub(crate) fn only_ignored_cookies(headers: &HeaderMap, ignored: &[String]) -> bool {
    headers.get_all(http::header::COOKIE).iter().all(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(';')
                .map(|pair| pair.trim_matches([' ', '\t']))
                .filter(|pair| !pair.is_empty())
                .all(|pair| {
                    pair.split_once('=').is_some_and(|(name, value)| {
                        is_cookie_pair(name, value) && is_ignored_cookie(name, ignored)
                    })
                })
        })
    })
}

/// Whether `name` and `value` make a cookie pair as RFC 6265 §4.2.1 writes one: a token, and cookie octets
/// (visible ASCII but `"`, `,`, `;` and `\`), perhaps between double quotes.
fn is_cookie_pair(name: &str, value: &str) -> bool {
    let octets = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    !name.is_empty()
        && name.bytes().all(crate::structured::is_tchar)
        && octets
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e))
}

/// RFC 2965's `Set-Cookie2`: obsolete, and read by no browser, but it sets state for its requester alone as
/// `Set-Cookie` does, and a client or proxy that still reads it would take another user's.
const SET_COOKIE2: &str = "set-cookie2";

/// Whether every cookie an answer's `Set-Cookie` fields set is one `ignored` names (see
/// [`ignore_cookies`](super::RedisCacheLayerBuilder::ignore_cookies)): then it is no reason not to store the
/// answer. A field that cannot be read, sets a cookie without a name, or holds a `,` anywhere but in an
/// `Expires` date counts as a cookie no pattern names: RFC 9110 forbids joining `Set-Cookie` fields with `,`,
/// but proxies and frameworks that fold every header do, and `__cf_bm=x; Path=/, session=y` sets a session
/// where its first cookie alone is `__cf_bm`. A `Set-Cookie2` field (RFC 2965, obsolete, whose value is a list
/// of cookies by design) always counts as one.
pub(crate) fn sets_only_ignored_cookies(headers: &HeaderMap, ignored: &[String]) -> bool {
    !headers.contains_key(SET_COOKIE2)
        && headers.get_all(SET_COOKIE).iter().all(|value| {
            value.to_str().is_ok_and(|value| {
                let mut parts = value.split(';');
                let pair = parts.next().unwrap_or("");
                !pair.contains(',')
                    && parts.all(|attribute| !attribute.contains(',') || is_expires_date(attribute))
                    && pair.split_once('=').is_some_and(|(name, _)| {
                        let name = name.trim();
                        !name.is_empty() && is_ignored_cookie(name, ignored)
                    })
            })
        })
}

/// Whether a `Set-Cookie` attribute is `Expires` with a date as servers write one, whose one `,` follows the
/// weekday: `Wed, 09 Jun 2021 10:18:14 GMT` (RFC 1123: Go, Node, Python, ASP.NET) or `Wed, 09-Jun-21 10:18:14
/// GMT` (RFC 850: PHP, Java, Cloudflare), two- or four-digit years. Any other `,` may join a second cookie.
fn is_expires_date(attribute: &str) -> bool {
    let Some((name, date)) = attribute.split_once('=') else {
        return false;
    };
    let Some((weekday, rest)) = date.split_once(',') else {
        return false;
    };
    let letters = |token: &str, lengths: std::ops::RangeInclusive<usize>| {
        lengths.contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphabetic())
    };
    let digits = |token: &str, lengths: &[usize]| {
        lengths.contains(&token.len()) && token.bytes().all(|b| b.is_ascii_digit())
    };
    let mut tokens = rest.split([' ', '-']).filter(|token| !token.is_empty());
    name.trim().eq_ignore_ascii_case("expires")
        && letters(weekday.trim_start(), 3..=9)
        && tokens.next().is_some_and(|day| digits(day, &[1, 2]))
        && tokens.next().is_some_and(|month| letters(month, 3..=3))
        && tokens.next().is_some_and(|year| digits(year, &[2, 4]))
        && tokens.next().is_some_and(|time| {
            let mut fields = time.split(':');
            fields
                .by_ref()
                .take(3)
                .filter(|field| digits(field, &[1, 2]))
                .count()
                == 3
                && fields.next().is_none()
        })
        && tokens.next().is_some_and(|zone| letters(zone, 1..=5))
        && tokens.next().is_none()
}

/// Headers that tunnel a method through another (`POST` with `X-HTTP-Method-Override: DELETE`), as Rails, ASP.NET
/// Core, Express's `method-override` and Google's APIs honour: the origin acts on the method they name.
pub(crate) const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// What a request header the facts pass does not know by its standard name is to the cache: none, or one or
/// more of the kinds below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct HeaderKind(u8);

impl HeaderKind {
    /// A credential ([`credential_headers`](super::RedisCacheLayerBuilder::credential_headers)): counts as
    /// `Authorization`.
    pub(crate) const CREDENTIAL: HeaderKind = HeaderKind(1);
    /// One of [`IMPLIED_VARY`](super::key::IMPLIED_VARY): the key holds it.
    pub(crate) const IMPLIED_VARY: HeaderKind = HeaderKind(2);
    /// One of [`METHOD_OVERRIDES`].
    pub(crate) const METHOD_OVERRIDE: HeaderKind = HeaderKind(4);
    /// One of the layer's [`vary_headers`](super::RedisCacheLayerBuilder::vary_headers): the key holds it,
    /// whatever its name says.
    pub(crate) const KEYED: HeaderKind = HeaderKind(8);

    /// Whether this is (among others) `kind`.
    #[inline]
    pub(crate) fn is(self, kind: HeaderKind) -> bool {
        self.0 & kind.0 != 0
    }
}

/// Header names, each with a value, looked up by a name a request sent. Every request header the facts pass does
/// not know by its standard name is looked up in one ([`HeaderKinds`]), on every request, so the names are
/// bucketed by length and screened by their first and last bytes: a name that is none of them costs a few
/// comparisons.
#[derive(Debug, Clone)]
pub(crate) struct NameTable<T> {
    /// By length ([`NameTable::LONG`] and longer in the last).
    buckets: Box<[Vec<Named<T>>]>,
}

/// A name of a [`NameTable`]: its first and last byte, the name, its value.
type Named<T> = (u8, u8, HeaderName, T);

impl<T: Copy> NameTable<T> {
    /// Names this long or longer share the last bucket.
    const LONG: usize = 32;

    /// The table of `named`; a name given twice has its values combined by `merge`.
    pub(crate) fn new(
        named: impl IntoIterator<Item = (HeaderName, T)>,
        merge: impl Fn(T, T) -> T,
    ) -> Self {
        let mut buckets: Box<[Vec<Named<T>>]> = (0..=Self::LONG).map(|_| Vec::new()).collect();
        for (name, value) in named {
            let bytes = name.as_str().as_bytes();
            let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
                continue;
            };
            let bucket = &mut buckets[bytes.len().min(Self::LONG)];
            match bucket.iter_mut().find(|(_, _, known, _)| *known == name) {
                Some((_, _, _, held)) => *held = merge(*held, value),
                None => bucket.push((first, last, name, value)),
            }
        }
        NameTable { buckets }
    }

    /// The value of the header `name` (lower case, as a [`HeaderName`] is); `None` for a name not in the table.
    #[inline]
    pub(crate) fn get(&self, name: &str) -> Option<T> {
        let bytes = name.as_bytes();
        let (&first, &last) = (bytes.first()?, bytes.last()?);
        self.buckets
            .get(bytes.len().min(Self::LONG))?
            .iter()
            .find(|(f, l, known, _)| *f == first && *l == last && known.as_str() == name)
            .map(|(_, _, _, value)| *value)
    }
}

/// The names of each [`HeaderKind`], for a layer.
#[derive(Debug, Clone)]
pub(crate) struct HeaderKinds(NameTable<HeaderKind>);

impl HeaderKinds {
    /// The kinds of a layer whose credential headers are `credentials` and whose vary headers are `keyed`. A name
    /// may be of several (a credential that is also in every key is both).
    pub(crate) fn new(credentials: &[HeaderName], keyed: &[HeaderName]) -> Self {
        let named = credentials
            .iter()
            .map(|name| (name.clone(), HeaderKind::CREDENTIAL))
            .chain(keyed.iter().map(|name| (name.clone(), HeaderKind::KEYED)))
            .chain(
                super::key::IMPLIED_VARY
                    .into_iter()
                    .map(|name| (name, HeaderKind::IMPLIED_VARY)),
            )
            .chain(
                METHOD_OVERRIDES
                    .into_iter()
                    .map(|name| (HeaderName::from_static(name), HeaderKind::METHOD_OVERRIDE)),
            );
        HeaderKinds(NameTable::new(named, |a, b| HeaderKind(a.0 | b.0)))
    }

    /// The kinds of the header `name` (lower case, as a [`HeaderName`] is); none for any other.
    #[inline]
    pub(crate) fn of(&self, name: &str) -> HeaderKind {
        self.0.get(name).unwrap_or_default()
    }
}

/// Whether `method` is safe (RFC 9110 §9.2.1, and `QUERY`, safe by its definition): it does not ask the origin
/// to change anything.
pub(crate) fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || method.as_str() == "QUERY"
}

impl RequestFacts {
    /// Notes that the request tunnels a method through a parameter (see [`tunnel`](super::tunnel)), naming an
    /// unsafe one (or none it can read) if `names_unsafe`: as one tunnelled through a header, it goes to the
    /// origin, and the method it names decides whether it is a write.
    pub(crate) fn tunnel(&mut self, names_unsafe: bool) {
        self.unsafe_method = names_unsafe || self.tunnels_a_write();
        self.method_overridden = true;
        self.method_cacheable = false;
    }

    /// Forgets what the request's `Cache-Control` and `Pragma` asked of the cache (see
    /// [`respect_request_cache_control`](super::RedisCacheLayerBuilder::respect_request_cache_control)): it is
    /// answered as a request without them would be.
    pub(crate) fn ignore_directives(&mut self) {
        self.no_store = false;
        self.no_cache = false;
        self.only_if_cached = false;
        self.max_age = None;
        self.min_fresh = None;
        self.max_stale = None;
    }

    /// Whether a header or parameter already tunnels a write through the request: no other tunnel it carries
    /// can make it more of one.
    pub(crate) fn tunnels_a_write(&self) -> bool {
        self.method_overridden && self.unsafe_method
    }

    /// Reads the facts of a request head; `max_body` is the layer's body cap, `kinds` its table of the header
    /// names it knows besides the standard ones (credentials, implied vary, method overrides).
    // Grown by the header rule's words past what LLVM inlines unasked: out of line, a hit without headers ran
    // about 90 instructions more (`scripts/callgrind`).
    #[inline]
    pub(crate) fn read(
        headers: &HeaderMap,
        method_cacheable: bool,
        max_body: usize,
        kinds: &HeaderKinds,
    ) -> Self {
        let mut facts = RequestFacts {
            method_cacheable,
            ..RequestFacts::default()
        };
        let mut cache_control = false;
        let mut pragma_no_cache = false;
        for (name, value) in headers {
            if name == CACHE_CONTROL {
                cache_control = true;
                // A field that cannot be read (bytes outside visible ASCII) may say anything: the cache stays
                // out of it.
                facts.no_store |= value.to_str().is_err();
                for (directive, argument) in directives_with_arguments(value) {
                    // A repeated directive: the strictest counts; one with a malformed argument is ignored.
                    let seconds = argument.and_then(delta_seconds);
                    let strictest = |held: Option<u32>, pick: fn(u32, u32) -> u32| {
                        seconds.map(|n| held.map_or(n, |m| pick(m, n))).or(held)
                    };
                    if directive.eq_ignore_ascii_case("no-store") {
                        facts.no_store = true;
                    } else if directive.eq_ignore_ascii_case("no-cache") {
                        facts.no_cache = true;
                    } else if directive.eq_ignore_ascii_case("only-if-cached") {
                        facts.only_if_cached = true;
                    } else if directive.eq_ignore_ascii_case("max-age") {
                        facts.max_age = strictest(facts.max_age, u32::min);
                    } else if directive.eq_ignore_ascii_case("min-fresh") {
                        facts.min_fresh = strictest(facts.min_fresh, u32::max);
                    } else if directive.eq_ignore_ascii_case("max-stale") {
                        facts.max_stale = match argument {
                            None => facts.max_stale.or(Some(ANY_STALENESS)),
                            Some(_) => strictest(facts.max_stale, u32::min),
                        };
                    }
                }
            } else if name == AUTHORIZATION {
                facts.authorization = true;
            } else if name == COOKIE {
                facts.cookie = true;
            } else if name == RANGE {
                facts.range = true;
            } else if name == UPGRADE {
                facts.upgrade = true;
            } else if name == ACCEPT {
                facts.event_stream |= names_event_stream(value);
            } else if name == IF_NONE_MATCH || name == IF_MODIFIED_SINCE {
                facts.validators = true;
            } else if name == IF_MATCH || name == IF_UNMODIFIED_SINCE {
                facts.preconditions = true;
            } else if name == CONTENT_LENGTH {
                facts.too_large |= value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > max_body as u64);
            } else if name == PRAGMA {
                pragma_no_cache |= directives(value).any(|d| d.eq_ignore_ascii_case("no-cache"));
            } else if name == HOST {
                facts.host = true;
            } else {
                // Every request header not matched above comes here, on every request.
                let name = name.as_str();
                let kind = kinds.of(name);
                if kind == HeaderKind::default() {
                    facts.unnamed_credential |= named_like_a_credential(name);
                    continue;
                }
                facts.authorization |= kind.is(HeaderKind::CREDENTIAL);
                facts.implied_vary |= kind.is(HeaderKind::IMPLIED_VARY);
                if kind.is(HeaderKind::METHOD_OVERRIDE) {
                    facts.method_overridden = true;
                    facts.method_cacheable = false;
                    // Unreadable, or any method but a safe one: it may change the resource.
                    facts.unsafe_method |=
                        !Method::from_bytes(value.as_bytes()).is_ok_and(|method| is_safe(&method));
                }
            }
        }
        // RFC 9111 §5.4: `Pragma` counts only when the request has no `Cache-Control`.
        facts.no_cache |= pragma_no_cache && !cache_control;
        facts
    }
}

/// Whether an `Accept` field value names `text/event-stream` (with any parameters, even `q=0`: a client that
/// names it at all is one that subscribes, and a bypass costs nothing but a miss).
fn names_event_stream(value: &HeaderValue) -> bool {
    const EVENT_STREAM: &[u8] = b"text/event-stream";
    // `*/*` and `application/json`, the common values, are shorter: nothing to split.
    value.len() >= EVENT_STREAM.len()
        && value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|element| media_type(element).eq_ignore_ascii_case(EVENT_STREAM))
}

/// A media type as a field names it (`Content-Type`, an `Accept` element), without its parameters and the white
/// space around it: `text/event-stream` of ` text/event-stream; q=0.9`.
fn media_type(value: &[u8]) -> &[u8] {
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    value[..end].trim_ascii()
}

/// The directive names of one `Cache-Control` (or `Pragma`) field value.
fn directives(value: &HeaderValue) -> impl Iterator<Item = &str> {
    directives_with_arguments(value).map(|(name, _)| name)
}

/// The directives of one `Cache-Control` (or `Pragma`) field value, each with its argument (quotes removed).
fn directives_with_arguments(value: &HeaderValue) -> impl Iterator<Item = (&str, Option<&str>)> {
    split_directives(value.to_str().unwrap_or(""))
}

/// `max-stale` without a value: any staleness.
pub(crate) const ANY_STALENESS: u32 = u32::MAX;

/// What the store holds for the request, as far as the decision is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The store was not read yet.
    NotRead,
    /// No entry (or one that could not be decoded).
    Absent,
    /// The read failed or timed out, or the breaker skipped it.
    Failed,
    /// An entry, with its windows.
    Found(Stored),
}

/// A stored entry's windows (unix ms) and whether it was stored for this request's variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) stored_at: u64,
    pub(crate) fresh_until: u64,
    pub(crate) stale_until: u64,
    pub(crate) stale_if_error_until: u64,
    /// The request has the same values as the stored response's request for the headers its `Vary` names.
    pub(crate) vary_matches: bool,
}

impl Stored {
    /// Whether the request's own `Cache-Control` lets this entry answer at `now` (RFC 9111 §5.2.1): `max-age`
    /// bounds its age, `min-fresh` asks for that much freshness left, and with either of them a stale entry
    /// answers only within `max-stale`. A request without them takes what the layer's windows allow.
    fn meets(&self, request: &RequestFacts, now: u64) -> bool {
        if request.max_age.is_none() && request.min_fresh.is_none() {
            return true;
        }
        let age_secs = now.saturating_sub(self.stored_at) / 1000;
        if request.max_age.is_some_and(|max| age_secs > u64::from(max)) {
            return false;
        }
        let min_fresh_ms = request.min_fresh.map_or(0, |n| u64::from(n) * 1000);
        if request.min_fresh.is_some() && self.fresh_until < now.saturating_add(min_fresh_ms) {
            return false;
        }
        if now < self.fresh_until {
            return true;
        }
        match request.max_stale {
            None => false,
            Some(ANY_STALENESS) => true,
            Some(n) => now - self.fresh_until <= u64::from(n) * 1000,
        }
    }

    /// When a fresh hit starts the entry's refresh ahead of expiry: `permille` thousandths of its fresh
    /// lifetime (from `stored_at`, so counting the age it came with) before `fresh_until`; at `fresh_until`
    /// with `permille` 0, which no fresh hit reaches.
    pub(crate) fn refresh_at(&self, permille: u16) -> u64 {
        let lifetime = self.fresh_until.saturating_sub(self.stored_at);
        let permille = u64::from(permille.min(1000));
        // `lifetime * permille / 1000`, rounded down, without overflow.
        let ahead = lifetime / 1000 * permille + lifetime % 1000 * permille / 1000;
        self.fresh_until.saturating_sub(ahead)
    }

    /// Whether the entry may answer at `now` for an origin that failed (stale-if-error).
    pub(crate) fn usable_on_error(&self, now: u64) -> bool {
        self.vary_matches && now < self.stale_if_error_until.max(self.stale_until)
    }
}

/// What the engine does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send the request to the inner service as it is; the cache takes no part.
    Bypass(BypassReason),
    /// Read the request's entry (computing its key needs the body), then decide again.
    Read,
    /// Answer from the fresh entry; no inner call.
    ServeFresh,
    /// Answer from the fresh entry, and start one background refresh: it is in the last part of its freshness
    /// ([`Rules::refresh_ahead`]), so a key that keeps being asked for is renewed before it goes stale.
    ServeFreshAndRefresh,
    /// Answer from the stale entry at once and start one background refresh.
    ServeStale,
    /// Call the inner service (coalesced with concurrent callers of the same key).
    Forward(Forward),
    /// Send the request to the inner service as it is (a `GET` with `Range`, whose `206` is neither stored nor
    /// shared), and start one background fetch of the whole answer, as a refresh (under the entry's lease:
    /// once for the whole fleet), which stores it: the ranges asked for next are cut from the entry. Its
    /// outcome is a bypass for [`BypassReason::Range`].
    PassAndFill,
    /// Answer `504 Gateway Timeout` without calling the inner service: the request said `only-if-cached`, and
    /// nothing stored may answer it (RFC 9111 §5.2.1.7).
    OnlyIfCachedMiss,
}

impl Action {
    /// Whether the entry answers as fresh (with a refresh ahead of expiry or not).
    pub(crate) fn is_fresh(self) -> bool {
        matches!(self, Action::ServeFresh | Action::ServeFreshAndRefresh)
    }
}

/// How a request goes to the inner service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forward {
    /// Why: no usable entry (`uri-miss`), another variant stored (`vary-miss`), or the request asked to
    /// revalidate (`request`).
    pub(crate) why: Fwd,
    /// Write the response if it is storable (false when the store just failed this request's read: a request
    /// pays at most one store timeout).
    pub(crate) store: bool,
    /// The entry read may answer instead if the inner service fails (stale-if-error).
    pub(crate) fallback: bool,
}

/// Why a request was forwarded, as RFC 9211's `fwd` parameter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fwd {
    UriMiss,
    VaryMiss,
    Request,
}

impl Fwd {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Request => "request",
        }
    }
}

/// Whether a request may make entries of its target URI stale (RFC 9111 §4.4), so that the cache keys them
/// before the request goes on: its method is unsafe, and not one this layer caches (a `POST` the layer was told
/// to cache is a query to it, which changes nothing), or [`unread_write`] says it may be a write all the same.
/// [`invalidates`] says whether its answer does.
pub(crate) fn may_invalidate(rules: &Rules, request: &RequestFacts) -> bool {
    rules.invalidate_on_unsafe
        && request.unsafe_method
        && (!request.method_cacheable || unread_write(rules, request))
}

/// Whether a request the layer would take for a query is counted as a write because its body, which the layer's
/// `query_when` would have judged ([`Rules::queries_judged`]), was not read: over the cap, past the in-flight
/// budget, or in codings that do not undo within the cap. Unsure, the cache takes it for a write: a write taken for
/// a query leaves the entries it changed to answer its caller's next read, where a query taken for a write costs
/// their refill. (Without `query_when` the layer was told that every body is a query; a `_method` parameter that an
/// unread body might tunnel is not guessed at.)
pub(crate) fn unread_write(rules: &Rules, request: &RequestFacts) -> bool {
    rules.queries_judged
        && request.query_method
        && request.method_cacheable
        && (request.too_large || request.over_budget || request.undecodable)
}

/// Whether what a request [`may_invalidate`] accepted was `answered` makes the entries of its target URI stale:
/// any status below 400 (RFC 9111 §4.4: "a non-error status code"), and no answer from the origin at all, which
/// leaves the outcome unknown: the origin may have made the change before the connection failed, and a refill costs
/// less than answering the writer's next read with what it replaced. That is `None` (a transport error, a
/// timeout below the cache) and a gateway's word that the origin's answer never reached it
/// ([`NO_ANSWER_FROM_ORIGIN`]). Any other error status is the origin's word that it changed nothing, so the
/// entries stay.
pub(crate) fn invalidates(answered: Option<StatusCode>) -> bool {
    answered.is_none_or(|status| {
        status.as_u16() < 400 || NO_ANSWER_FROM_ORIGIN.contains(&status.as_u16())
    })
}

/// The statuses a gateway between the cache and the origin answers with when the origin's answer never reached
/// it, possibly after the request did: `502 Bad Gateway` (a connection refused, or reset mid-answer), `504
/// Gateway Timeout`, and Cloudflare's `520` (an empty or unreadable answer) and `524` (none in time, the
/// connection made).
pub(crate) const NO_ANSWER_FROM_ORIGIN: [u16; 4] = [502, 504, 520, 524];

/// The other URI an answer to an unsafe request names, in its `Location` or `Content-Location` field (`named`),
/// whose entries that answer also makes stale (RFC 9111 §4.4, which allows it), resolved against the request's
/// `target` (and its `Host`, when the target has no authority): `None` unless it has the target's origin, since
/// a response must not reach the entries of another origin.
///
/// Absolute URIs and absolute paths (`/items/42?v=2`) are resolved; relative paths (`42`, `../items`) name
/// nothing here. A fragment is dropped.
pub(crate) fn also_stale(
    target: &Uri,
    host: Option<&HeaderValue>,
    named: &HeaderValue,
) -> Option<Uri> {
    let named = named.to_str().ok()?.trim();
    let named = named.split_once('#').map_or(named, |(before, _)| before);
    let path: PathAndQuery = if named.starts_with('/') && !named.starts_with("//") {
        named.parse().ok()?
    } else {
        let named: Uri = named.parse().ok()?;
        let (scheme, authority) = (named.scheme()?, named.authority()?);
        // Compared as one origin's spellings are: `https://h:443` is `https://h`.
        let ports = default_ports(Some(scheme.as_str()));
        let named_origin = normal_authority(authority.as_str().as_bytes(), ports);
        let same_origin = match target.authority() {
            Some(own) => {
                target.scheme() == Some(scheme)
                    && normal_authority(own.as_str().as_bytes(), ports) == named_origin
            }
            // An origin-form target (a server's request): its authority is its `Host`, on the named scheme's
            // default port unless it names another.
            None => {
                host.is_some_and(|host| normal_authority(host.as_bytes(), ports) == named_origin)
            }
        };
        if !same_origin {
            return None;
        }
        named.path_and_query()?.clone()
    };
    // The target's own scheme and authority, as they are spelled in its keys.
    let mut parts = target.clone().into_parts();
    parts.path_and_query = Some(path);
    Uri::from_parts(parts).ok()
}

/// Whether a `GET` or `HEAD` whose client sent validators (`request`: its `If-None-Match` and
/// `If-Modified-Since` fields) is answered `304 Not Modified` instead of `status` with the `response` headers the
/// cache would send (RFC 9111 §4.3.2; RFC 9110 §13.1.2, §13.1.3, §13.2.2).
///
/// Only a `2xx` answer gives way (a server evaluates conditions only then). `If-None-Match`, when present,
/// decides alone: a `*`, or an entity-tag of its list that matches the answer's `ETag` by the weak comparison.
/// Otherwise a single valid `If-Modified-Since` date decides: the answer's `Last-Modified` (its `Date` without
/// one) is no later than it. A field that cannot be read never yields a `304`: a whole answer is always correct.
pub(crate) fn not_modified(request: &HeaderMap, status: StatusCode, response: &HeaderMap) -> bool {
    if !status.is_success() || status == StatusCode::PARTIAL_CONTENT {
        return false;
    }
    let mut none_match = request.get_all(IF_NONE_MATCH).iter().peekable();
    if none_match.peek().is_some() {
        let mut etags = response.get_all(ETAG).iter();
        let etag = match (etags.next(), etags.next()) {
            (Some(etag), None) => etag.to_str().ok().and_then(single_entity_tag),
            _ => None,
        };
        let mut matched = false;
        for field in none_match {
            // A field that cannot be read makes the whole condition unreadable.
            let Some(hit) = none_match_hits(field, etag) else {
                return false;
            };
            matched |= hit;
        }
        return matched;
    }
    let mut since = request.get_all(IF_MODIFIED_SINCE).iter();
    let (Some(since), None) = (since.next(), since.next()) else {
        return false;
    };
    let Some(since) = http_date(since) else {
        return false;
    };
    response
        .get(LAST_MODIFIED)
        .or_else(|| response.get(DATE))
        .and_then(http_date)
        .is_some_and(|modified| modified <= since)
}

/// What part of an answer a `GET` with `Range` gets (RFC 9110 §14), from [`part_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The whole answer, as a server that ignores the `Range` sends it.
    Whole,
    /// Bytes `first..=last` of the body, in a `206 Partial Content`.
    Bytes { first: u64, last: u64 },
    /// None of the range's bytes exist: `416 Range Not Satisfiable`.
    Unsatisfiable,
}

/// The part of an answer (its `status`, the `response` headers the cache would send, a body of `len` bytes)
/// that a `GET` gets for the `Range` and `If-Range` fields among its `request` headers (RFC 9110 §14.1.2,
/// §14.2, §13.1.5).
///
/// Only a `200` is divided. One range of bytes is answered: `first-last`, `first-` or `-suffix`; a range that
/// starts at or past the end, or a suffix of zero, is [`Part::Unsatisfiable`]. Everything a server may ignore
/// gets the whole answer: several ranges (no `multipart/byteranges` here), another unit, a field that cannot be
/// read, and an `If-Range` that does not match by the strong comparison (an entity-tag equal to a strong
/// `ETag`, or a date equal to a `Last-Modified` at least a second before the answer's `Date`).
pub(crate) fn part_of(
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    len: u64,
) -> Part {
    if status != StatusCode::OK {
        return Part::Whole;
    }
    let mut ranges = request.get_all(RANGE).iter();
    let (Some(range), None) = (ranges.next(), ranges.next()) else {
        return Part::Whole;
    };
    if !if_range_holds(request, response) {
        return Part::Whole;
    }
    let Some(spec) = byte_range(range) else {
        return Part::Whole;
    };
    match spec {
        (None, 0) => Part::Unsatisfiable,
        _ if len == 0 => Part::Unsatisfiable,
        (None, suffix) => Part::Bytes {
            first: len.saturating_sub(suffix),
            last: len - 1,
        },
        (Some(first), _) if first >= len => Part::Unsatisfiable,
        (Some(first), last) => Part::Bytes {
            first,
            last: last.min(len - 1),
        },
    }
}

/// The one byte range of a `Range` field value: `(Some(first), last)` for `first-last` (`u64::MAX` for an
/// open `first-`), `(None, suffix)` for `-suffix`. `None` when the value is not exactly one valid range of the
/// `bytes` unit.
fn byte_range(value: &HeaderValue) -> Option<(Option<u64>, u64)> {
    let value = value.to_str().ok()?.trim_matches([' ', '\t']);
    let (unit, set) = value.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    // Empty list elements are allowed and skipped (RFC 9110 §5.6.1.2).
    let mut specs = set
        .split(',')
        .map(|spec| spec.trim_matches([' ', '\t']))
        .filter(|spec| !spec.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return None;
    };
    let (first, last) = spec.split_once('-')?;
    let number = |digits: &str| {
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<u64>().ok())
            .flatten()
    };
    if first.is_empty() {
        return Some((None, number(last)?));
    }
    let first = number(first)?;
    if last.is_empty() {
        return Some((Some(first), u64::MAX));
    }
    let last = number(last)?;
    (first <= last).then_some((Some(first), last))
}

/// Whether the request's `If-Range`, if any, holds for the answer with the `response` headers: exactly one
/// field, naming the answer by the strong comparison.
fn if_range_holds(request: &HeaderMap, response: &HeaderMap) -> bool {
    let mut fields = request.get_all(IF_RANGE).iter();
    let field = match (fields.next(), fields.next()) {
        (None, _) => return true,
        (Some(field), None) => field,
        _ => return false,
    };
    let Ok(text) = field.to_str() else {
        return false;
    };
    let text = text.trim_matches([' ', '\t']);
    if text.starts_with('"') || text.starts_with("W/") {
        let mut etags = response.get_all(ETAG).iter();
        return match (etags.next(), etags.next()) {
            (Some(etag), None) => etag
                .to_str()
                .ok()
                .and_then(strong_entity_tag)
                .is_some_and(|etag| strong_entity_tag(text) == Some(etag)),
            _ => false,
        };
    }
    let Some(date) = http_date(field) else {
        return false;
    };
    let modified = response.get(LAST_MODIFIED).and_then(http_date);
    let sent = response.get(DATE).and_then(http_date);
    match (modified, sent) {
        (Some(modified), Some(sent)) => {
            modified == date
                && modified
                    .checked_add(std::time::Duration::from_secs(1))
                    .is_some_and(|strong_until| strong_until <= sent)
        }
        _ => false,
    }
}

/// Whether one `If-None-Match` field value names the answer whose entity-tag's opaque part is `etag`: it is `*`,
/// or one of its entity-tags has that opaque part (the weak comparison: `W/` does not count). `None` when the
/// value is neither `*` nor a list of entity-tags.
fn none_match_hits(value: &HeaderValue, etag: Option<&str>) -> Option<bool> {
    let value = value.to_str().ok()?.trim_matches([' ', '\t']);
    if value == "*" {
        return Some(true);
    }
    let (mut rest, mut tags, mut hit) = (value, 0, false);
    loop {
        // Empty list elements (`"a", , "b"`) are allowed and skipped (RFC 9110 §5.6.1.2).
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let (opaque, after) = entity_tag_prefix(rest)?;
        hit |= etag == Some(opaque);
        tags += 1;
        rest = after.trim_start_matches([' ', '\t']);
        if !rest.is_empty() && !rest.starts_with(',') {
            return None;
        }
    }
    (tags > 0).then_some(hit)
}

/// The opaque part (quotes included) of a field value that is exactly one strong entity-tag: a weak one never
/// matches by the strong comparison (RFC 9110 §8.8.3.2).
fn strong_entity_tag(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    if value.starts_with("W/") {
        return None;
    }
    single_entity_tag(value)
}

/// The opaque part (quotes included) of an `ETag` field value that is exactly one entity-tag.
fn single_entity_tag(value: &str) -> Option<&str> {
    match entity_tag_prefix(value.trim_matches([' ', '\t']))? {
        (opaque, "") => Some(opaque),
        _ => None,
    }
}

/// The opaque part (quotes included) of the entity-tag (RFC 9110 §8.8.3) at the start of `text`, and what
/// follows it.
fn entity_tag_prefix(text: &str) -> Option<(&str, &str)> {
    let quoted = text.strip_prefix("W/").unwrap_or(text);
    let inside = quoted.strip_prefix('"')?;
    let end = inside.find('"')?;
    // `etagc`: `!`, `#` to `~`, and obs-text; no spaces, controls or quotes.
    if !inside[..end]
        .bytes()
        .all(|b| b == 0x21 || (b >= 0x23 && b != 0x7f))
    {
        return None;
    }
    Some((&quoted[..end + 2], &inside[end + 1..]))
}

/// The cache decision for one request at `now` (unix ms).
pub(crate) fn decide(rules: &Rules, request: &RequestFacts, lookup: Lookup, now: u64) -> Action {
    match decide_for_origin(rules, request, lookup, now) {
        // Whatever would have gone to the inner service, bypass or forward, is refused instead.
        Action::Bypass(_) | Action::Forward(_) | Action::PassAndFill if request.only_if_cached => {
            Action::OnlyIfCachedMiss
        }
        action => action,
    }
}

/// [`decide`] for a request that lets the cache call the inner service.
fn decide_for_origin(rules: &Rules, request: &RequestFacts, lookup: Lookup, now: u64) -> Action {
    let unshared_credentials = rules.credentials == Credentials::Bypass;
    let bypass = if request.skip {
        Some(BypassReason::Skipped)
    } else if !request.method_cacheable {
        Some(if request.not_a_query {
            BypassReason::NotAQuery
        } else {
            BypassReason::Method
        })
    } else if request.no_store {
        Some(BypassReason::NoStore)
    } else if request.upgrade {
        Some(BypassReason::Upgrade)
    } else if request.event_stream {
        Some(BypassReason::EventStream)
    } else if request.unpartitioned {
        Some(BypassReason::Partition)
    } else if request.authorization && unshared_credentials {
        Some(BypassReason::Authorization)
    } else if request.cookie && unshared_credentials {
        Some(BypassReason::Cookie)
    } else if request.unnamed_credential && rules.credentials != Credentials::Partition {
        Some(BypassReason::Authorization)
    } else if request.range && !request.get {
        Some(BypassReason::Range)
    } else if request.preconditions || (request.validators && !request.get_or_head) {
        Some(BypassReason::Conditional)
    } else if request.too_large {
        Some(BypassReason::RequestTooLarge)
    } else if request.over_budget {
        Some(BypassReason::RequestOverBudget)
    } else if request.trailers {
        Some(BypassReason::RequestTrailers)
    } else if request.undecodable {
        Some(BypassReason::RequestUndecodable)
    } else {
        None
    };
    if let Some(reason) = bypass {
        return Action::Bypass(reason);
    }
    let forward = |why, store, fallback| {
        Action::Forward(Forward {
            why,
            store,
            fallback,
        })
    };
    if request.no_cache {
        // Revalidate: no stored answer, the response replaces the entry.
        return if request.range {
            Action::Bypass(BypassReason::Range)
        } else {
            forward(Fwd::Request, true, false)
        };
    }
    let action = match lookup {
        Lookup::NotRead => Action::Read,
        Lookup::Absent if request.variant => forward(Fwd::VaryMiss, true, false),
        Lookup::Absent => forward(Fwd::UriMiss, true, false),
        Lookup::Failed => forward(Fwd::UriMiss, false, false),
        // Another variant's entry answers nothing for this request, not even on error.
        Lookup::Found(stored) if !stored.vary_matches => forward(Fwd::VaryMiss, true, false),
        // What the request said it accepts bounds what may answer it, even on error: the entry is refreshed.
        Lookup::Found(stored) if !stored.meets(request, now) => forward(Fwd::Request, true, false),
        Lookup::Found(stored) if now < stored.fresh_until => {
            if rules.refresh_ahead != 0 && now >= stored.refresh_at(rules.refresh_ahead) {
                Action::ServeFreshAndRefresh
            } else {
                Action::ServeFresh
            }
        }
        Lookup::Found(stored) if now < stored.stale_until => Action::ServeStale,
        Lookup::Found(stored) => forward(Fwd::UriMiss, true, stored.usable_on_error(now)),
    };
    // A range is cut from the entry, fresh or stale (a refresh asks for the whole answer). With no entry to cut
    // it from, it goes to the origin as it came, since the origin sends a part sooner than the whole; its `206`
    // is neither stored nor shared, and a background fetch of the whole answer fills the entry. Not when the
    // store just failed this request's read: nothing could be stored.
    match action {
        Action::Forward(forward) if request.range => {
            if forward.store {
                Action::PassAndFill
            } else {
                Action::Bypass(BypassReason::Range)
            }
        }
        action => action,
    }
}

/// What an origin response's head says, for [`judge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseFacts {
    pub(crate) status: StatusCode,
    pub(crate) no_store: bool,
    pub(crate) private: bool,
    pub(crate) set_cookie: bool,
    /// `Vary: *`: the response depends on more than the request's headers.
    pub(crate) vary_any: bool,
}

impl ResponseFacts {
    /// Reads a response head; `targets` is the layer's list of targeted fields ([`Rules::targeted`]), whose
    /// first valid one, if any, speaks for `Cache-Control`.
    pub(crate) fn read(status: StatusCode, headers: &HeaderMap, targets: &[HeaderName]) -> Self {
        let mut facts = ResponseFacts {
            status,
            no_store: false,
            private: false,
            set_cookie: false,
            vary_any: false,
        };
        for (name, value) in headers {
            if name == SET_COOKIE || name == SET_COOKIE2 {
                facts.set_cookie = true;
            } else if name == VARY {
                facts.vary_any |= vary_unknowable(value);
            }
        }
        Directives::of(headers, targets).for_each(|directive, _| {
            facts.no_store |= directive.eq_ignore_ascii_case("no-store");
            facts.private |= directive.eq_ignore_ascii_case("private");
        });
        facts
    }
}

/// Whether a `Vary` field value makes the response's variants impossible to tell apart: `*`, or a value that
/// cannot be read, or an element that is no field name. Such a response is treated as `Vary: *`, since a
/// variant keyed on fewer fields than the origin named could answer the wrong requester.
fn vary_unknowable(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else {
        return true;
    };
    value.split(',').map(str::trim).any(|name| {
        name == "*" || (!name.is_empty() && HeaderName::from_bytes(name.as_bytes()).is_err())
    })
}

/// Whether an origin response may be stored, and whether callers coalesced onto its request may share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Written to the store (when the forward allows it).
    pub(crate) store: bool,
    /// Handed to coalesced callers; when false, each of them calls the inner service itself.
    pub(crate) share: bool,
    /// Why it is not stored, when it is not.
    pub(crate) why: Option<NotStored>,
}

/// Judges an origin response to `request`.
///
/// A response meant for its requester alone (`Set-Cookie`, `Vary: *`, `private` or `no-store`) is neither
/// stored nor shared. Any other response is shared with coalesced callers, whatever its status (they asked the
/// same thing, and an origin in trouble is not asked again by each of them); it is stored when its status is
/// configured as cacheable, and never when it is `206` or `304`.
pub(crate) fn judge(rules: &Rules, request: &RequestFacts, response: &ResponseFacts) -> Verdict {
    // `private` is for one user: storable only where the key tells users apart.
    let one_user = match rules.credentials {
        Credentials::Bypass => false,
        Credentials::InKey => request.authorization || request.cookie,
        Credentials::Partition => true,
    };
    let respect = rules.respect_response_cache_control;
    let status = response.status;
    let status_storable = status != StatusCode::PARTIAL_CONTENT
        && status != StatusCode::NOT_MODIFIED
        && rules.statuses.contains(&status);
    let alone = if response.set_cookie {
        Some(NotStored::SetCookie)
    } else if response.vary_any {
        Some(NotStored::VaryStar)
    } else if respect && response.no_store {
        Some(NotStored::NoStore)
    } else if respect && response.private && !one_user {
        Some(NotStored::Private)
    } else {
        None
    };
    let share = alone.is_none();
    Verdict {
        store: share && status_storable,
        share,
        why: alone.or((!status_storable).then_some(NotStored::Status)),
    }
}

/// Statuses for which a stored entry inside its stale-if-error window answers instead: those the retry layer
/// retries (`408`, `429`, `500`, `502`, `503`, `504`, Cloudflare's `520`-`524`, `529`; a transport error counts
/// too).
pub(crate) fn is_origin_failure(status: StatusCode) -> bool {
    crate::retry::is_transient(status)
}

/// Whether `fallback` answers at `now` for an origin that answered `status` (`None`: a transport error): when
/// that is a failure, or the answer is one the layer's
/// [`store_when`](super::RedisCacheLayerBuilder::store_when) `refused` (an error inside a `200`).
pub(crate) fn serve_stale_on_error(
    status: Option<StatusCode>,
    refused: bool,
    fallback: Option<&Stored>,
    now: u64,
) -> bool {
    (refused || status.is_none_or(is_origin_failure))
        && fallback.is_some_and(|f| f.usable_on_error(now))
}

/// Whether a response is a stream its origin sends as it goes, which may never end, so that a cache must pass it
/// on as it arrives rather than read it whole first ([`NotStored::Stream`]): an event stream
/// (`text/event-stream`, as axum's `Sse` and LLM APIs send), `multipart/x-mixed-replace` (camera feeds), gRPC
/// (`application/grpc`, `+proto`, `-web`, ...), or any answer saying `X-Accel-Buffering: no` (the field with
/// which origins ask nginx not to buffer them).
pub(crate) fn is_live_stream(headers: &HeaderMap) -> bool {
    let live_type = |value: &HeaderValue| {
        let media = media_type(value.as_bytes());
        let is = |name: &[u8]| media.eq_ignore_ascii_case(name);
        let starts = |prefix: &[u8]| {
            media
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
        };
        is(b"text/event-stream")
            || is(b"multipart/x-mixed-replace")
            || is(b"application/grpc")
            || starts(b"application/grpc+")
            || starts(b"application/grpc-web")
    };
    headers.get_all(CONTENT_TYPE).iter().any(live_type)
        || headers
            .get_all(X_ACCEL_BUFFERING)
            .iter()
            .any(|value| value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"no"))
}

/// The field with which an origin asks a proxy not to buffer its answer (nginx's, followed by others).
const X_ACCEL_BUFFERING: &str = "x-accel-buffering";

/// The default cacheable statuses: `200`, `203`, `204` (RFC 9110 §15.1 lists them among the heuristically
/// cacheable ones; the others carry errors or redirects worth asking about again).
pub(crate) fn default_statuses() -> Vec<StatusCode> {
    vec![
        StatusCode::OK,
        StatusCode::NON_AUTHORITATIVE_INFORMATION,
        StatusCode::NO_CONTENT,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::{Fields, head};
    use proptest::prelude::*;

    fn rules(credentials: Credentials) -> Rules {
        Rules {
            credentials,
            statuses: default_statuses(),
            respect_response_cache_control: true,
            targeted: Vec::new(),
            invalidate_on_unsafe: true,
            queries_judged: false,
            refresh_ahead: 0,
        }
    }

    #[test]
    fn header_names_that_carry_credentials_or_name_users_are_told_apart() {
        for name in [
            "x-shopify-access-token",
            "x-algolia-api-key",
            "dd-api-key",
            "dd-application-key",
            "x-auth-key",
            "x-auth-email",
            "x-rapidapi-key",
            "x-postmark-server-token",
            "x-csrf-token",
            "x-authorization",
            "signature",
            "x-hub-signature",
            "x-user",
            "x-user-id",
            "x-user-email",
            "x-end-user",
            "x-auth-request-preferred-username",
            "x-session-id",
            "x_session_token",
            "x-client-cert",
            "token",
            "apikey",
            "x-oauth-scope-token",
            "x-oauth",
            "x-authenticated-userid",
            "x-consumer-id",
            "x-credential-identifier",
            "x-userinfo",
            "x-jwt-payload",
            "x-jwt-claims",
            "x-forwarded-groups",
            "x-user-roles",
            "x-hasura-role",
            "x-authenticated-scope",
            "x-permissions",
            "x-ssl-client-s-dn",
            "x-tenant-id",
            "__tenant",
            "x-scope-orgid",
            "x-grafana-org-id",
            "x-organization-id",
            "x-account-id",
            "x-workspace-id",
            "login-customer-id",
            "x-user-uid",
            "x-user-info",
            "x-principal-id",
            "x-identity",
            "x-ms-authorization-auxiliary",
            "x-auth-subject",
            "oidc_claim_sub",
            "x-jwt-sub",
            "impersonate-user",
            "impersonate-group",
            "impersonate-uid",
            "impersonate-extra-reason",
            "impersonate-extra-acme.com%2fproject",
        ] {
            assert!(named_like_a_credential(name), "{name}");
        }
        // Every last word the rule names passes the screen by length and last letter.
        for word in [
            "auth",
            "oauth",
            "authorization",
            "authenticated",
            "token",
            "key",
            "apikey",
            "hapikey",
            "secret",
            "password",
            "passwd",
            "jwt",
            "assertion",
            "credential",
            "credentials",
            "session",
            "sessid",
            "sessionid",
            "sid",
            "sig",
            "signature",
            "cert",
            "clientcert",
            "user",
            "username",
            "userid",
            "email",
            "dn",
            "userinfo",
            "claims",
            "role",
            "roles",
            "groups",
            "scope",
            "scopes",
            "permissions",
            "identity",
            "principal",
            "tenant",
            "tenantid",
            "orgid",
            "organizationid",
            "accountid",
            "workspaceid",
            "customerid",
            "subject",
            "jwt-payload",
            "jwt-sub",
        ] {
            assert!(named_like_a_credential(&format!("x-{word}")), "x-{word}");
        }
        for word in ["id", "uid", "identifier", "name", "login", "info"] {
            for before in [
                "user",
                "principal",
                "session",
                "consumer",
                "credential",
                "tenant",
                "org",
                "organization",
                "account",
                "workspace",
                "customer",
            ] {
                assert!(
                    named_like_a_credential(&format!("x-{before}-{word}")),
                    "x-{before}-{word}"
                );
            }
            assert!(
                !named_like_a_credential(&format!("x-request-{word}")),
                "x-request-{word}"
            );
        }
        // Every parameter a key may not ignore is one as a header too, with or without `x-`.
        for param in crate::cache::CREDENTIAL_PARAMS {
            let header = param.replace('_', "-");
            assert!(named_like_a_credential(&header), "{header}");
            assert!(
                named_like_a_credential(&format!("x-{header}")),
                "x-{header}"
            );
        }
        for name in [
            "accept-language",
            "user-agent",
            "x-amz-user-agent",
            "x-request-id",
            "x-correlation-id",
            "traceparent",
            "x-forwarded-for",
            "sec-ch-ua-mobile",
            "x-api-version",
            "x-goog-user-project",
            "x-client-data",
            "x-envoy-peer-metadata-id",
            "idempotency-key",
            "x-idempotency-key",
            "sec-fetch-user",
            "x-request-payload",
            "x-dashboard-uid",
            "x-client-name",
            "x-app-id",
            "x-device-id",
            "x-user-agent",
            "x-user-locale",
            "x-sub",
            "x-pub-sub",
            "authority-hint",
            "x-oauthority",
            "author",
            "x-a-uth",
            "keyword",
            "x-monkey",
            "impersonate",
            "x-impersonate-mode",
        ] {
            assert!(!named_like_a_credential(name), "{name}");
        }
    }

    /// What browsers, API clients, tracers, front-end frameworks and proxies add to requests that name no one:
    /// a request carrying any of these stays the cache's. (A word added to the rule must not catch one of them.)
    #[test]
    fn headers_sent_on_every_request_name_no_one() {
        let browsers = [
            "sec-ch-ua",
            "sec-ch-ua-mobile",
            "sec-ch-ua-platform",
            "sec-ch-ua-full-version-list",
            "sec-fetch-dest",
            "sec-fetch-mode",
            "sec-fetch-site",
            "sec-fetch-user",
            "sec-purpose",
            "sec-gpc",
            "purpose",
            "priority",
            "dnt",
            "upgrade-insecure-requests",
            "x-client-data",
        ];
        let clients = [
            "x-stainless-os",
            "x-stainless-lang",
            "x-stainless-package-version",
            "x-stainless-runtime-version",
            "x-stainless-retry-count",
            "x-stainless-helper-method",
            "amz-sdk-invocation-id",
            "amz-sdk-request",
            "x-amz-date",
            "x-amz-content-sha256",
            "x-amz-user-agent",
            "x-amz-target",
            "x-goog-api-client",
            "x-goog-request-params",
            "x-goog-user-project",
            "x-ms-client-request-id",
            "x-ms-return-client-request-id",
            "x-ms-useragent",
            "x-ms-date",
            "x-stripe-client-user-agent",
            "x-user-agent",
            "connect-protocol-version",
            "grpc-timeout",
        ];
        let tracers = [
            "traceparent",
            "tracestate",
            "baggage",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-datadog-trace-id",
            "x-datadog-parent-id",
            "sentry-trace",
            "x-amzn-trace-id",
            "x-cloud-trace-context",
            "x-request-id",
            "x-correlation-id",
        ];
        let frameworks = [
            "rsc",
            "next-router-state-tree",
            "next-router-prefetch",
            "next-url",
            "hx-target",
            "hx-current-url",
            "hx-trigger-name",
            "x-inertia",
            "x-inertia-version",
            "x-livewire",
            "x-up-target",
        ];
        let proxies = [
            "cdn-loop",
            "cf-connecting-ip",
            "cf-ray",
            "cf-ipcountry",
            "cf-visitor",
            "x-real-ip",
            "true-client-ip",
            "x-envoy-attempt-count",
            "x-envoy-expected-rq-timeout-ms",
            "x-vercel-id",
            "x-request-start",
            "via",
        ];
        for name in [&browsers[..], &clients, &tracers, &frameworks, &proxies].concat() {
            assert!(!named_like_a_credential(name), "{name}");
        }
    }

    #[test]
    fn cookies_named_like_sessions_and_credentials_hold_one() {
        for name in [
            "PHPSESSID",
            "JSESSIONID",
            "ASP.NET_SessionId",
            ".AspNetCore.Cookies",
            ".AspNetCore.Identity.Application",
            "connect.sid",
            "_session_id",
            "_myapp_session",
            "laravel_session",
            "ci_session",
            "__Secure-next-auth.session-token",
            "remember_user_token",
            "XSRF-TOKEN",
            "sessionid",
            "jwt",
            "Auth",
            "apiKey",
            "x-amz-security-token",
        ] {
            assert!(holds_a_session(name), "{name}");
        }
        // What analytics, consent and bot management set on every browser.
        for name in [
            "_ga",
            "_ga_X1Y2",
            "_gid",
            "_fbp",
            "_hjSessionUser_123",
            "_hjSession_123",
            "__cf_bm",
            "_cfuvid",
            "cf_clearance",
            "__stripe_sid",
            "__stripe_mid",
            "OptanonConsent",
            "keyword",
        ] {
            assert!(!holds_a_session(name), "{name}");
        }
    }

    #[test]
    fn cookie_fields_count_as_ignored_only_when_every_pair_is_a_cookie_pair_an_ignored_name_names()
    {
        let ignored = ["_ga".to_owned(), "_ga_*".to_owned(), "_gid".to_owned()];
        for (fields, only_ignored) in [
            (&[("cookie", "_ga=GA1.2.3; _gid=GA1.2.9")][..], true),
            (
                &[
                    ("cookie", "_ga_X1=GS1.1;_ga=\"GA1\""),
                    ("cookie", " _gid= ;"),
                ],
                true,
            ),
            (&[], true),
            (&[("cookie", "_ga=1; session=x")], false),
            (&[("cookie", "_ga=1"), ("cookie", "session=x")], false),
            // What lax servers split into two cookies, one of them a session (Rack 2 at `,`; `SimpleCookie` at
            // a space), is no pair of ignored cookies.
            (&[("cookie", "_ga=1, session=x")], false),
            (&[("cookie", "_ga=1,session=x")], false),
            (&[("cookie", "_ga=1 session=x")], false),
            (&[("cookie", "_ga=\"1, session=x")], false),
            (&[("cookie", "_ga=1\\")], false),
            // No `=`, no name, a name that is no token, space around the `=`.
            (&[("cookie", "_ga")], false),
            (&[("cookie", "=_ga")], false),
            (&[("cookie", "_g(a)=1")], false),
            (&[("cookie", "_ga =1")], false),
            // A session or a token, however a pattern names it.
            (&[("cookie", "_ga_session=1")], false),
            (&[("cookie", "_ga_remember_token=1")], false),
            (&[("cookie", "_ga_X1=3; _ga_PHPSESSID=x")], false),
        ] {
            assert_eq!(
                only_ignored_cookies(&head(fields), &ignored),
                only_ignored,
                "{fields:?}"
            );
        }
    }

    #[test]
    fn set_cookie_fields_count_as_ignored_only_when_every_one_names_an_ignored_cookie() {
        let ignored = ["__cf_bm".to_owned(), "_cf*".to_owned()];
        for (fields, only_ignored) in [
            (&[("set-cookie", "__cf_bm=x; Path=/; HttpOnly")][..], true),
            (
                &[("set-cookie", "_cfuvid=1"), ("set-cookie", " __cf_bm = x")],
                true,
            ),
            (&[], true),
            (
                &[("set-cookie", "__cf_bm=x"), ("set-cookie", "session=1")],
                false,
            ),
            (&[("set-cookie", "__cf_bm")], false),
            (&[("set-cookie", "=__cf_bm")], false),
            (&[("set-cookie", "__cf_bmx=1")], false),
            // Dates as servers write them hold a `,` of their own.
            (
                &[(
                    "set-cookie",
                    "__cf_bm=x; Expires=Wed, 09 Jun 2021 10:18:14 GMT; Path=/",
                )],
                true,
            ),
            (
                &[(
                    "set-cookie",
                    "__cf_bm=x; path=/; expires=Friday, 4-Dec-26 10:18:14 GMT",
                )],
                true,
            ),
            // Fields folded into one with `,`, a session among their cookies, after any part of the first.
            (&[("set-cookie", "__cf_bm=x, session=1")], false),
            (&[("set-cookie", "__cf_bm=x; Path=/, session=1")], false),
            (
                &[("set-cookie", "__cf_bm=x; HttpOnly,session=1; Path=/")],
                false,
            ),
            (
                &[(
                    "set-cookie",
                    "__cf_bm=x; Expires=Wed, 09 Jun 2021 10:18:14 GMT, session=1",
                )],
                false,
            ),
            (
                &[("set-cookie", "__cf_bm=x; Expires=Wed, session=1")],
                false,
            ),
            (
                &[(
                    "set-cookie",
                    "__cf_bm=x; Expires=Wed, 09 Jun 2021 10:18:14:00 GMT",
                )],
                false,
            ),
            (&[("set-cookie", "__cf_bm=x; Max-Age=60, session=1")], false),
            // A session or a token, however a pattern names it.
            (&[("set-cookie", "_cf_session=1; Path=/")], false),
            (
                &[("set-cookie", "_cfuvid=1"), ("set-cookie", "_cf.sid=2")],
                false,
            ),
            // RFC 2965's obsolete field is a list of cookies by design; never read as ignored ones.
            (&[("set-cookie2", "__cf_bm=x; Version=1")], false),
            (
                &[
                    ("set-cookie", "__cf_bm=x"),
                    ("set-cookie2", "_cfuvid=1; Version=1"),
                ],
                false,
            ),
        ] {
            assert_eq!(
                sets_only_ignored_cookies(&head(fields), &ignored),
                only_ignored,
                "{fields:?}"
            );
        }
        // The date's shape, token by token: a weekday of letters, a day of one or two digits, a month of three
        // letters, a year of two or four digits, a time of three fields, a zone of letters.
        assert!(is_expires_date(" Expires=Wed, 09 Jun 2021 10:18:14 GMT"));
        assert!(is_expires_date("expires=Friday, 4-Dec-26 1:2:3 UTC"));
        for odd in [
            "Expires=W3d, 09 Jun 2021 10:18:14 GMT",
            "Expires=We, 09 Jun 2021 10:18:14 GMT",
            "Expires=Wed, 9a Jun 2021 10:18:14 GMT",
            "Expires=Wed, 091 Jun 2021 10:18:14 GMT",
            "Expires=Wed, 09 J1n 2021 10:18:14 GMT",
            "Expires=Wed, 09 Jun 2o21 10:18:14 GMT",
            "Expires=Wed, 09 Jun 202 10:18:14 GMT",
            "Expires=Wed, 09 Jun 2021 10:18 GMT",
            "Expires=Wed, 09 Jun 2021 10:1a:14 GMT",
            "Expires=Wed, 09 Jun 2021 10:18:14 G1T",
            "Expires=Wed, 09 Jun 2021 10:18:14",
            "Max-Age=Wed, 09 Jun 2021 10:18:14 GMT",
            "Expires",
        ] {
            assert!(!is_expires_date(odd), "{odd}");
        }
        let mut unreadable = head(&[("set-cookie", "__cf_bm=x")]);
        unreadable.append(
            SET_COOKIE,
            HeaderValue::from_bytes(b"__cf_bm=\xff").unwrap(),
        );
        assert!(!sets_only_ignored_cookies(&unreadable, &ignored));
    }

    #[test]
    fn live_streams_are_told_by_their_type_or_by_x_accel_buffering() {
        for (fields, live) in [
            (&[("content-type", "text/event-stream")][..], true),
            (
                &[("content-type", "Text/Event-Stream; charset=utf-8")],
                true,
            ),
            (
                &[("content-type", "multipart/x-mixed-replace; boundary=frame")],
                true,
            ),
            (&[("content-type", "application/grpc")], true),
            (&[("content-type", "application/grpc+proto")], true),
            (&[("content-type", "application/grpc-web-text")], true),
            (
                &[
                    ("content-type", "application/json"),
                    ("x-accel-buffering", " No "),
                ],
                true,
            ),
            (&[("content-type", "application/json")], false),
            (&[("content-type", "text/event-streaming")], false),
            (&[("content-type", "application/grpcx")], false),
            (
                &[("content-type", "text/plain; note=text/event-stream")],
                false,
            ),
            (&[("x-accel-buffering", "yes")], false),
            (&[], false),
        ] {
            assert_eq!(is_live_stream(&head(fields)), live, "{fields:?}");
        }
    }

    #[test]
    fn an_unsafe_answer_also_makes_stale_the_uris_it_names_of_its_own_origin_only() {
        let named = |target: &str, host: Option<&'static str>, named: &'static str| {
            let target: Uri = target.parse().unwrap();
            let host = host.map(HeaderValue::from_static);
            also_stale(&target, host.as_ref(), &HeaderValue::from_static(named))
                .map(|uri| uri.to_string())
        };
        let api = "https://api.example.com/items";
        for (reference, expected) in [
            ("/items/42", Some("https://api.example.com/items/42")),
            (
                "/items/42?v=2#top",
                Some("https://api.example.com/items/42?v=2"),
            ),
            (" /items/42 ", Some("https://api.example.com/items/42")),
            (
                "https://api.example.com/items/42",
                Some("https://api.example.com/items/42"),
            ),
            (
                "https://API.example.com/items/42",
                Some("https://api.example.com/items/42"),
            ),
            // The origin's default port, written out or left empty.
            (
                "https://api.example.com:443/items/42",
                Some("https://api.example.com/items/42"),
            ),
            (
                "HTTPS://API.example.com:/items/42",
                Some("https://api.example.com/items/42"),
            ),
            // Another origin: another host, scheme or port, or a network-path reference.
            ("https://evil.example/items/42", None),
            ("http://api.example.com/items/42", None),
            ("https://api.example.com:8443/items/42", None),
            ("https://api.example.com:80/items/42", None),
            ("//evil.example/items/42", None),
            // Relative paths are not resolved; junk names nothing.
            ("42", None),
            ("../items/42", None),
            ("", None),
            ("/items/with space", None),
        ] {
            assert_eq!(
                named(api, None, reference).as_deref(),
                expected,
                "{reference}"
            );
        }
        // A server's origin-form target: same origin when the authority is its Host.
        let local = Some("api.example.com");
        assert_eq!(
            named("/items", local, "/items/42").as_deref(),
            Some("/items/42")
        );
        assert_eq!(
            named("/items", local, "https://api.example.com/items/42?a=1").as_deref(),
            Some("/items/42?a=1")
        );
        assert_eq!(
            named("/items", local, "https://evil.example/items/42"),
            None
        );
        assert_eq!(
            named("/items", None, "https://api.example.com/items/42"),
            None
        );
        // A `Host` on the named scheme's default port, written out or not, in any case.
        for (host, reference, same) in [
            ("api.example.com", "https://api.example.com:443/x", true),
            ("API.example.com:443", "https://api.example.com/x", true),
            ("api.example.com:80", "http://api.example.com/x", true),
            ("api.example.com:443", "http://api.example.com/x", false),
            ("api.example.com:8443", "https://api.example.com/x", false),
        ] {
            assert_eq!(
                named("/items", Some(host), reference).is_some(),
                same,
                "{host} {reference}"
            );
        }
    }

    #[test]
    fn unsafe_requests_invalidate_only_when_they_succeed() {
        let on = rules(Credentials::Bypass);
        let off = Rules {
            invalidate_on_unsafe: false,
            ..rules(Credentials::Bypass)
        };
        let put = RequestFacts {
            unsafe_method: true,
            ..RequestFacts::default()
        };
        assert!(may_invalidate(&on, &put));
        assert!(!may_invalidate(&off, &put));
        let cached_post = RequestFacts {
            method_cacheable: true,
            ..put
        };
        assert!(
            !may_invalidate(&on, &cached_post),
            "a query the layer caches"
        );
        // Under `query_when`, a query's body unread: counted as a write.
        let judged = Rules {
            queries_judged: true,
            ..rules(Credentials::Bypass)
        };
        let query = RequestFacts {
            query_method: true,
            ..cached_post
        };
        assert!(!may_invalidate(&judged, &query), "read, and a query");
        for unread in [
            RequestFacts {
                too_large: true,
                ..query
            },
            RequestFacts {
                over_budget: true,
                ..query
            },
            RequestFacts {
                undecodable: true,
                ..query
            },
        ] {
            assert!(may_invalidate(&judged, &unread), "{unread:?}");
            assert!(
                !may_invalidate(&on, &unread),
                "every body a query: {unread:?}"
            );
            let off = Rules {
                invalidate_on_unsafe: false,
                ..judged.clone()
            };
            assert!(!may_invalidate(&off, &unread), "{unread:?}");
            let safe = RequestFacts {
                unsafe_method: false,
                ..unread
            };
            assert!(!may_invalidate(&judged, &safe), "a `QUERY`: {unread:?}");
        }
        assert!(
            !may_invalidate(&on, &RequestFacts::default()),
            "a safe method"
        );
        for code in [200, 201, 202, 204, 301, 303, 307, 399] {
            assert!(invalidates(StatusCode::from_u16(code).ok()), "{code}");
        }
        for code in [400, 404, 409, 412, 429, 500, 501, 503, 521, 522, 523, 599] {
            assert!(!invalidates(StatusCode::from_u16(code).ok()), "{code}");
        }
        assert!(invalidates(None), "no answer: the outcome unknown");
        for code in [502, 504, 520, 524] {
            let gateway = StatusCode::from_u16(code).ok();
            assert!(invalidates(gateway), "{code}: no answer from the origin");
        }
    }

    fn plain() -> RequestFacts {
        RequestFacts {
            method_cacheable: true,
            ..RequestFacts::default()
        }
    }

    fn entry(fresh_until: u64, stale_until: u64, stale_if_error_until: u64) -> Lookup {
        Lookup::Found(Stored {
            stored_at: 0,
            fresh_until,
            stale_until,
            stale_if_error_until,
            vary_matches: true,
        })
    }

    fn forward(why: Fwd, store: bool, fallback: bool) -> Action {
        Action::Forward(Forward {
            why,
            store,
            fallback,
        })
    }

    #[test]
    fn a_range_of_a_200_is_cut_when_it_is_one_byte_range_and_if_range_holds() {
        const MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
        const A_SECOND_LATER: &str = "Sun, 06 Nov 1994 08:49:38 GMT";
        let ok = StatusCode::OK;
        let bytes = |first, last| Part::Bytes { first, last };
        let dated = vec![
            ("etag", "\"a\""),
            ("last-modified", MODIFIED),
            ("date", A_SECOND_LATER),
        ];
        type Fields = Vec<(&'static str, &'static str)>;
        #[rustfmt::skip]
        let cases: Vec<(&str, Fields, StatusCode, Fields, u64, Part)> = vec![
            ("first to last", vec![("range", "bytes=0-4")], ok, vec![], 10, bytes(0, 4)),
            ("one byte", vec![("range", "bytes=3-3")], ok, vec![], 10, bytes(3, 3)),
            ("from a byte on", vec![("range", "bytes=7-")], ok, vec![], 10, bytes(7, 9)),
            ("the last bytes", vec![("range", "bytes=-3")], ok, vec![], 10, bytes(7, 9)),
            ("a suffix longer than the body", vec![("range", "bytes=-30")], ok, vec![], 10, bytes(0, 9)),
            ("past the end, cut at it", vec![("range", "bytes=5-99")], ok, vec![], 10, bytes(5, 9)),
            ("the unit in capitals, spaces around", vec![("range", " BYTES=1-2 ")], ok, vec![], 10, bytes(1, 2)),
            ("empty list elements", vec![("range", "bytes=, 1-2 ,")], ok, vec![], 10, bytes(1, 2)),
            ("starting at the end", vec![("range", "bytes=10-")], ok, vec![], 10, Part::Unsatisfiable),
            ("a suffix of nothing", vec![("range", "bytes=-0")], ok, vec![], 10, Part::Unsatisfiable),
            ("of an empty body", vec![("range", "bytes=0-0")], ok, vec![], 0, Part::Unsatisfiable),
            ("the last bytes of an empty body", vec![("range", "bytes=-5")], ok, vec![], 0, Part::Unsatisfiable),
            ("two ranges", vec![("range", "bytes=0-1,4-5")], ok, vec![], 10, Part::Whole),
            ("two fields", vec![("range", "bytes=0-1"), ("range", "bytes=0-1")], ok, vec![], 10, Part::Whole),
            ("last before first", vec![("range", "bytes=5-4")], ok, vec![], 10, Part::Whole),
            ("another unit", vec![("range", "items=0-4")], ok, vec![], 10, Part::Whole),
            ("no unit", vec![("range", "0-4")], ok, vec![], 10, Part::Whole),
            ("a sign", vec![("range", "bytes=+1-4")], ok, vec![], 10, Part::Whole),
            ("no dash", vec![("range", "bytes=4")], ok, vec![], 10, Part::Whole),
            ("no numbers", vec![("range", "bytes=-")], ok, vec![], 10, Part::Whole),
            ("a number too large to read", vec![("range", "bytes=99999999999999999999999-")], ok, vec![], 10, Part::Whole),
            ("not a 200", vec![("range", "bytes=0-4")], StatusCode::NON_AUTHORITATIVE_INFORMATION, vec![], 10, Part::Whole),
            ("no range", vec![("if-range", "\"a\"")], ok, vec![("etag", "\"a\"")], 10, Part::Whole),
            ("if-range: the tag", vec![("range", "bytes=0-4"), ("if-range", "\"a\"")], ok, dated.clone(), 10, bytes(0, 4)),
            ("if-range: another tag", vec![("range", "bytes=0-4"), ("if-range", "\"b\"")], ok, dated.clone(), 10, Part::Whole),
            ("if-range: a weak tag", vec![("range", "bytes=0-4"), ("if-range", "W/\"a\"")], ok, dated.clone(), 10, Part::Whole),
            ("if-range: a weak answer", vec![("range", "bytes=0-4"), ("if-range", "\"a\"")], ok, vec![("etag", "W/\"a\"")], 10, Part::Whole),
            ("if-range: the date", vec![("range", "bytes=0-4"), ("if-range", MODIFIED)], ok, dated.clone(), 10, bytes(0, 4)),
            ("if-range: another date", vec![("range", "bytes=0-4"), ("if-range", A_SECOND_LATER)], ok, dated.clone(), 10, Part::Whole),
            ("if-range: modified as it was sent", vec![("range", "bytes=0-4"), ("if-range", MODIFIED)], ok, vec![("last-modified", MODIFIED), ("date", MODIFIED)], 10, Part::Whole),
            ("if-range: no date sent", vec![("range", "bytes=0-4"), ("if-range", MODIFIED)], ok, vec![("last-modified", MODIFIED)], 10, Part::Whole),
            ("if-range: unreadable", vec![("range", "bytes=0-4"), ("if-range", "soon")], ok, dated.clone(), 10, Part::Whole),
            ("if-range: twice", vec![("range", "bytes=0-4"), ("if-range", "\"a\""), ("if-range", "\"a\"")], ok, dated, 10, Part::Whole),
        ];
        for (name, request, status, response, len, expected) in cases {
            assert_eq!(
                part_of(&head(&request), status, &head(&response), len),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn the_clients_validators_turn_a_2xx_answer_into_a_304_only_when_they_match_it() {
        const MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
        const BEFORE: &str = "Sun, 06 Nov 1994 08:49:36 GMT";
        const AFTER: &str = "Sunday, 06-Nov-94 08:49:38 GMT";
        let ok = StatusCode::OK;
        type Fields = Vec<(&'static str, &'static str)>;
        #[rustfmt::skip]
        let cases: Vec<(&str, Fields, StatusCode, Fields, bool)> = vec![
            ("same strong tag", vec![("if-none-match", "\"a\"")], ok, vec![("etag", "\"a\"")], true),
            ("weak asks, strong held", vec![("if-none-match", "W/\"a\"")], ok, vec![("etag", "\"a\"")], true),
            ("strong asks, weak held", vec![("if-none-match", "\"a\"")], ok, vec![("etag", "W/\"a\"")], true),
            ("another tag", vec![("if-none-match", "\"b\"")], ok, vec![("etag", "\"a\"")], false),
            ("a list that names it", vec![("if-none-match", " \"b\" ,, W/\"a\" ")], ok, vec![("etag", "\"a\"")], true),
            ("a comma inside a tag", vec![("if-none-match", "\"a,b\"")], ok, vec![("etag", "\"a,b\"")], true),
            ("a tag that only starts alike", vec![("if-none-match", "\"a,b\"")], ok, vec![("etag", "\"a\"")], false),
            ("two fields, the second names it", vec![("if-none-match", "\"b\""), ("if-none-match", "\"a\"")], ok, vec![("etag", "\"a\"")], true),
            ("any", vec![("if-none-match", "*")], ok, vec![], true),
            ("an answer without a tag", vec![("if-none-match", "\"a\"")], ok, vec![], false),
            ("an answer with two tags", vec![("if-none-match", "\"a\"")], ok, vec![("etag", "\"a\""), ("etag", "\"a\"")], false),
            ("an unquoted tag", vec![("if-none-match", "a")], ok, vec![("etag", "a")], false),
            ("junk after a matching tag", vec![("if-none-match", "\"a\" x")], ok, vec![("etag", "\"a\"")], false),
            ("an unreadable field beside a match", vec![("if-none-match", "\"a\""), ("if-none-match", "x")], ok, vec![("etag", "\"a\"")], false),
            ("a field of empty elements beside a match", vec![("if-none-match", " , ,"), ("if-none-match", "\"a\"")], ok, vec![("etag", "\"a\"")], false),
            ("a space inside the tag", vec![("if-none-match", "\"a b\"")], ok, vec![("etag", "\"a b\"")], false),
            ("an error answer", vec![("if-none-match", "\"a\"")], StatusCode::NOT_FOUND, vec![("etag", "\"a\"")], false),
            ("a partial answer", vec![("if-none-match", "*")], StatusCode::PARTIAL_CONTENT, vec![], false),
            ("a 204", vec![("if-none-match", "\"a\"")], StatusCode::NO_CONTENT, vec![("etag", "\"a\"")], true),
            // `If-None-Match` decides alone: `If-Modified-Since` is not read beside it.
            ("tags decide over dates", vec![("if-none-match", "\"b\""), ("if-modified-since", MODIFIED)], ok, vec![("etag", "\"a\""), ("last-modified", MODIFIED)], false),
            ("modified at that time", vec![("if-modified-since", MODIFIED)], ok, vec![("last-modified", MODIFIED)], true),
            ("modified after it", vec![("if-modified-since", BEFORE)], ok, vec![("last-modified", MODIFIED)], false),
            ("modified before it (RFC 850 date)", vec![("if-modified-since", AFTER)], ok, vec![("last-modified", MODIFIED)], true),
            ("dated, no last-modified", vec![("if-modified-since", MODIFIED)], ok, vec![("date", MODIFIED)], true),
            ("last-modified counts over date", vec![("if-modified-since", MODIFIED)], ok, vec![("last-modified", AFTER), ("date", BEFORE)], false),
            ("neither date", vec![("if-modified-since", MODIFIED)], ok, vec![], false),
            ("an invalid date", vec![("if-modified-since", "yesterday")], ok, vec![("last-modified", MODIFIED)], false),
            ("two dates", vec![("if-modified-since", MODIFIED), ("if-modified-since", MODIFIED)], ok, vec![("last-modified", MODIFIED)], false),
            ("no validators", vec![], ok, vec![("etag", "\"a\""), ("last-modified", MODIFIED)], false),
        ];
        for (name, request, status, response, expected) in cases {
            assert_eq!(
                not_modified(&head(&request), status, &head(&response)),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn request_facts_come_from_one_pass_over_the_head() {
        let facts = RequestFacts::read(
            &head(&[
                ("cache-control", "max-age=0, No-Cache"),
                ("authorization", "Bearer a"),
                ("cookie", "s=1"),
                ("range", "bytes=0-1"),
                ("if-none-match", "\"e\""),
                ("if-match", "\"e\""),
                ("content-length", "11"),
            ]),
            true,
            10,
            &HeaderKinds::new(&[], &[]),
        );
        assert_eq!(
            facts,
            RequestFacts {
                method_cacheable: true,
                no_store: false,
                no_cache: true,
                authorization: true,
                cookie: true,
                range: true,
                preconditions: true,
                validators: true,
                too_large: true,
                max_age: Some(0),
                ..RequestFacts::default()
            }
        );
        // A `Cache-Control` that cannot be read keeps the cache out.
        let mut odd = HeaderMap::new();
        odd.insert(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"max-age=60, x=\"\xc3\xa9\"").unwrap(),
        );
        assert!(RequestFacts::read(&odd, true, 10, &HeaderKinds::new(&[], &[])).no_store);
        // An `Accept` naming an event stream, whatever else it names and however it spells it.
        for (accept, subscribes) in [
            ("text/event-stream", true),
            ("Text/Event-Stream ; q=0.9", true),
            ("application/json, text/event-stream", true),
            ("text/event-stream;q=0", true),
            ("*/*", false),
            ("application/json", false),
            ("text/event-streams, text/*", false),
            ("text/html; profile=\"text/event-stream\"", false),
        ] {
            let facts = RequestFacts::read(
                &head(&[("accept", accept)]),
                true,
                10,
                &HeaderKinds::new(&[], &[]),
            );
            assert_eq!(facts.event_stream, subscribes, "{accept}");
        }
        // `If-Range` without `Range` means nothing (RFC 9110 §13.1.5).
        let if_range = RequestFacts::read(
            &head(&[("if-range", "\"e\"")]),
            true,
            10,
            &HeaderKinds::new(&[], &[]),
        );
        assert!(!if_range.range);
        let pragma = RequestFacts::read(
            &head(&[("pragma", "no-cache")]),
            true,
            10,
            &HeaderKinds::new(&[], &[]),
        );
        assert!(pragma.no_cache);
        let both = RequestFacts::read(
            &head(&[("pragma", "no-cache"), ("cache-control", "max-age=5")]),
            true,
            10,
            &HeaderKinds::new(&[], &[]),
        );
        assert!(!both.no_cache, "Cache-Control overrides Pragma");
        assert_eq!(
            RequestFacts::read(
                &head(&[("content-length", "10")]),
                true,
                10,
                &HeaderKinds::new(&[], &[])
            ),
            plain()
        );
        // A header named as a credential counts as `Authorization`; unnamed, as a credential no key holds when
        // its name says it is one, and as nothing when the layer keys by it.
        let api_key = HeaderName::from_static("x-api-key");
        let keyed = head(&[("x-api-key", "k")]);
        assert!(
            RequestFacts::read(
                &keyed,
                true,
                10,
                &HeaderKinds::new(std::slice::from_ref(&api_key), &[])
            )
            .authorization
        );
        assert_eq!(
            RequestFacts::read(&keyed, true, 10, &HeaderKinds::new(&[], &[])),
            RequestFacts {
                unnamed_credential: true,
                ..plain()
            }
        );
        assert_eq!(
            RequestFacts::read(
                &keyed,
                true,
                10,
                &HeaderKinds::new(&[], std::slice::from_ref(&api_key))
            ),
            plain()
        );
        assert_eq!(
            RequestFacts::read(
                &head(&[("x-client-version", "3")]),
                true,
                10,
                &HeaderKinds::new(&[], &[])
            ),
            plain()
        );
        assert_eq!(
            RequestFacts::read(
                &head(&[("accept", "*/*")]),
                true,
                10,
                &HeaderKinds::new(&[api_key], &[])
            ),
            plain()
        );
        // A tunnelled method: never cached; unsafe unless it names a safe method, spelled as methods are.
        for (value, unsafe_method) in [
            ("GET", false),
            ("QUERY", false),
            ("DELETE", true),
            ("get", true),
        ] {
            for name in METHOD_OVERRIDES {
                let facts = RequestFacts::read(
                    &head(&[(name, value)]),
                    true,
                    10,
                    &HeaderKinds::new(&[], &[]),
                );
                assert!(facts.method_overridden && !facts.method_cacheable, "{name}");
                assert_eq!(facts.unsafe_method, unsafe_method, "{name}: {value}");
            }
        }
        // What the key always holds is noted, and nothing else changes; the client's address is not.
        for name in super::super::key::IMPLIED_VARY {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), HeaderValue::from_static("a"));
            let facts = RequestFacts::read(&headers, true, 10, &HeaderKinds::new(&[], &[]));
            assert_eq!(
                facts,
                RequestFacts {
                    implied_vary: true,
                    ..plain()
                },
                "{name}"
            );
        }
        for name in [
            "x-forwarded-for",
            "x-request-id",
            "from",
            "x-http-method-overrides",
        ] {
            assert_eq!(
                RequestFacts::read(&head(&[(name, "a")]), true, 10, &HeaderKinds::new(&[], &[])),
                plain(),
                "{name}"
            );
        }
    }

    #[test]
    fn each_header_name_has_its_kind_and_no_other_has_one() {
        use crate::cache::DEFAULT_CREDENTIAL_HEADERS;
        use crate::cache::key::IMPLIED_VARY;
        let kinds = HeaderKinds::new(&DEFAULT_CREDENTIAL_HEADERS, &[]);
        for name in DEFAULT_CREDENTIAL_HEADERS {
            assert_eq!(kinds.of(name.as_str()), HeaderKind::CREDENTIAL, "{name}");
        }
        for name in IMPLIED_VARY {
            assert_eq!(kinds.of(name.as_str()), HeaderKind::IMPLIED_VARY, "{name}");
        }
        for name in METHOD_OVERRIDES {
            assert_eq!(kinds.of(name), HeaderKind::METHOD_OVERRIDE, "{name}");
        }
        // Same length, first and last bytes as a known name, or none of them.
        let others = [
            "accept",
            "accept-encoding",
            "user-agent",
            "x-request-id",
            "traceparent",
            "x-api-kay",
            "x-api-keys",
            "api-ke",
            "x-auth-tokem",
            "content-type",
            "a",
            "x",
            "",
        ];
        for other in others {
            assert_eq!(kinds.of(other), HeaderKind::default(), "{other}");
        }
        let long = "x-".repeat(40);
        assert_eq!(kinds.of(&long), HeaderKind::default());
        // A name configured as a credential is one, and stays whatever else it is.
        let own = HeaderKinds::new(&[HeaderName::from_static("prefer")], &[]);
        let prefer = own.of("prefer");
        assert!(prefer.is(HeaderKind::CREDENTIAL) && prefer.is(HeaderKind::IMPLIED_VARY));
        assert!(!prefer.is(HeaderKind::METHOD_OVERRIDE));
        assert_eq!(own.of("x-api-key"), HeaderKind::default());
        let long = HeaderName::try_from("x-".repeat(40)).unwrap();
        assert_eq!(
            HeaderKinds::new(std::slice::from_ref(&long), &[]).of(long.as_str()),
            HeaderKind::CREDENTIAL
        );
        // And the facts say both.
        let facts = RequestFacts::read(&head(&[("prefer", "a")]), true, 10, &own);
        assert!(facts.authorization && facts.implied_vary);
    }

    #[test]
    fn request_freshness_directives_are_read_strictest_first() {
        let read = |value: &'static str| {
            let facts = RequestFacts::read(
                &head(&[("cache-control", value)]),
                true,
                10,
                &HeaderKinds::new(&[], &[]),
            );
            (facts.max_age, facts.min_fresh, facts.max_stale)
        };
        let any = Some(ANY_STALENESS);
        assert_eq!(
            read(r#"max-age=5, min-fresh="3", max-stale"#),
            (Some(5), Some(3), any)
        );
        assert_eq!(read("MAX-AGE=3 , Min-Fresh=1"), (Some(3), Some(1), None));
        assert_eq!(
            read("max-age=9, max-age=4, max-age=6"),
            (Some(4), None, None)
        );
        assert_eq!(read("min-fresh=1, min-fresh=7"), (None, Some(7), None));
        assert_eq!(read("max-stale=2, max-stale"), (None, None, Some(2)));
        assert_eq!(read("max-stale, max-stale=2"), (None, None, Some(2)));
        assert_eq!(read("max-age=99999999999"), (Some(u32::MAX), None, None));
        for malformed in [
            "max-age=",
            "max-age=-1",
            "max-age=1.5",
            "max-age=abc",
            "max-age",
        ] {
            assert_eq!(read(malformed), (None, None, None), "{malformed}");
        }
        assert_eq!(
            read("max-age=2, max-age=x"),
            (Some(2), None, None),
            "the malformed one is ignored"
        );
    }

    /// One row per rule: the facts, what the store holds, the time, the action.
    #[test]
    fn the_decision_table() {
        let fresh = entry(2_000, 3_000, 5_000);
        // Stale for a long while after its freshness: `max-stale` ends its use first.
        let long_stale = entry(2_000, 10_000, 10_000);
        let other_variant = Lookup::Found(Stored {
            vary_matches: false,
            ..match fresh {
                Lookup::Found(s) => s,
                _ => unreachable!(),
            }
        });
        let with = |f: fn(&mut RequestFacts)| {
            let mut facts = plain();
            f(&mut facts);
            facts
        };
        let shared = rules(Credentials::Bypass);
        let in_key = rules(Credentials::InKey);
        let partition = rules(Credentials::Partition);
        // The last quarter of the entry's 2 s of freshness: from 1.5 s.
        let ahead = Rules {
            refresh_ahead: 250,
            ..rules(Credentials::Bypass)
        };
        #[rustfmt::skip]
        let rows: Vec<(&str, &Rules, RequestFacts, Lookup, u64, Action)> = vec![
            ("uncached method", &shared, RequestFacts::default(), fresh, 1_000, Action::Bypass(BypassReason::Method)),
            ("skipped", &shared, with(|f| f.skip = true), fresh, 1_000, Action::Bypass(BypassReason::Skipped)),
            ("no-store", &shared, with(|f| f.no_store = true), fresh, 1_000, Action::Bypass(BypassReason::NoStore)),
            ("no partition", &partition, with(|f| { f.unpartitioned = true; f.cookie = true }), fresh, 1_000, Action::Bypass(BypassReason::Partition)),
            ("authorization", &shared, with(|f| f.authorization = true), fresh, 1_000, Action::Bypass(BypassReason::Authorization)),
            ("cookie", &shared, with(|f| f.cookie = true), fresh, 1_000, Action::Bypass(BypassReason::Cookie)),
            ("authorization, keyed", &in_key, with(|f| f.authorization = true), fresh, 1_000, Action::ServeFresh),
            ("cookie, partitioned", &partition, with(|f| f.cookie = true), fresh, 1_000, Action::ServeFresh),
            // A credential by its name alone is in no key: only a partition makes the request the cache's.
            ("unnamed credential", &shared, with(|f| f.unnamed_credential = true), fresh, 1_000, Action::Bypass(BypassReason::Authorization)),
            ("unnamed credential, keyed", &in_key, with(|f| f.unnamed_credential = true), fresh, 1_000, Action::Bypass(BypassReason::Authorization)),
            ("unnamed credential, partitioned", &partition, with(|f| f.unnamed_credential = true), fresh, 1_000, Action::ServeFresh),
            ("range, not a GET", &in_key, with(|f| f.range = true), fresh, 1_000, Action::Bypass(BypassReason::Range)),
            // A `GET`'s range is cut from an entry, fresh or stale; with none, it goes to the origin as it came while
            // the entry is filled (unless the store just failed).
            ("range of a GET: read first", &shared, with(|f| { f.range = true; f.get = true }), Lookup::NotRead, 1_000, Action::Read),
            ("range of a GET: fresh", &shared, with(|f| { f.range = true; f.get = true }), fresh, 1_000, Action::ServeFresh),
            ("range of a GET: stale", &shared, with(|f| { f.range = true; f.get = true }), fresh, 2_500, Action::ServeStale),
            ("range of a GET: absent", &shared, with(|f| { f.range = true; f.get = true }), Lookup::Absent, 1_000, Action::PassAndFill),
            ("range of a GET: store failed", &shared, with(|f| { f.range = true; f.get = true }), Lookup::Failed, 1_000, Action::Bypass(BypassReason::Range)),
            ("range of a GET: another variant", &shared, with(|f| { f.range = true; f.get = true }), other_variant, 1_000, Action::PassAndFill),
            ("range of a GET: stale-if-error only", &shared, with(|f| { f.range = true; f.get = true }), fresh, 3_500, Action::PassAndFill),
            ("range of a GET: no-cache", &shared, with(|f| { f.range = true; f.get = true; f.no_cache = true }), Lookup::NotRead, 1_000, Action::Bypass(BypassReason::Range)),
            ("range of a GET: only-if-cached, absent", &shared, with(|f| { f.range = true; f.get = true; f.only_if_cached = true }), Lookup::Absent, 1_000, Action::OnlyIfCachedMiss),
            ("if-match", &shared, with(|f| f.preconditions = true), fresh, 1_000, Action::Bypass(BypassReason::Conditional)),
            ("if-match on a GET", &shared, with(|f| { f.preconditions = true; f.get_or_head = true }), fresh, 1_000, Action::Bypass(BypassReason::Conditional)),
            ("validators of a GET", &shared, with(|f| { f.validators = true; f.get_or_head = true }), fresh, 1_000, Action::ServeFresh),
            ("validators of a GET, absent", &shared, with(|f| { f.validators = true; f.get_or_head = true }), Lookup::Absent, 1_000, forward(Fwd::UriMiss, true, false)),
            ("validators of a POST", &shared, with(|f| f.validators = true), fresh, 1_000, Action::Bypass(BypassReason::Conditional)),
            ("too large", &shared, with(|f| f.too_large = true), Lookup::NotRead, 1_000, Action::Bypass(BypassReason::RequestTooLarge)),
            ("over budget", &shared, with(|f| f.over_budget = true), Lookup::NotRead, 1_000, Action::Bypass(BypassReason::RequestOverBudget)),
            ("over budget, only-if-cached", &shared, with(|f| { f.over_budget = true; f.only_if_cached = true }), fresh, 1_000, Action::OnlyIfCachedMiss),
            ("trailers", &shared, with(|f| f.trailers = true), fresh, 1_000, Action::Bypass(BypassReason::RequestTrailers)),
            ("upgrade", &shared, with(|f| { f.upgrade = true; f.get = true; f.get_or_head = true }), fresh, 1_000, Action::Bypass(BypassReason::Upgrade)),
            ("event stream", &shared, with(|f| { f.event_stream = true; f.no_cache = true; f.get = true; f.get_or_head = true }), fresh, 1_000, Action::Bypass(BypassReason::EventStream)),
            ("trailers, too large", &shared, with(|f| { f.trailers = true; f.too_large = true }), Lookup::NotRead, 1_000, Action::Bypass(BypassReason::RequestTooLarge)),
            ("undecodable", &shared, with(|f| f.undecodable = true), fresh, 1_000, Action::Bypass(BypassReason::RequestUndecodable)),
            ("undecodable, only-if-cached", &shared, with(|f| { f.undecodable = true; f.only_if_cached = true }), fresh, 1_000, Action::OnlyIfCachedMiss),
            ("not read yet", &shared, plain(), Lookup::NotRead, 1_000, Action::Read),
            ("no-cache skips the read", &shared, with(|f| f.no_cache = true), Lookup::NotRead, 1_000, forward(Fwd::Request, true, false)),
            ("no-cache ignores a fresh entry", &shared, with(|f| f.no_cache = true), fresh, 1_000, forward(Fwd::Request, true, false)),
            ("absent", &shared, plain(), Lookup::Absent, 1_000, forward(Fwd::UriMiss, true, false)),
            ("store failed", &shared, plain(), Lookup::Failed, 1_000, forward(Fwd::UriMiss, false, false)),
            ("fresh", &shared, plain(), fresh, 1_999, Action::ServeFresh),
            ("stale from fresh_until", &shared, plain(), fresh, 2_000, Action::ServeStale),
            ("stale to stale_until", &shared, plain(), fresh, 2_999, Action::ServeStale),
            ("stale-if-error only", &shared, plain(), fresh, 3_000, forward(Fwd::UriMiss, true, true)),
            ("refresh ahead: not yet", &ahead, plain(), fresh, 1_499, Action::ServeFresh),
            ("refresh ahead: from its last quarter", &ahead, plain(), fresh, 1_500, Action::ServeFreshAndRefresh),
            ("refresh ahead: to fresh_until", &ahead, plain(), fresh, 1_999, Action::ServeFreshAndRefresh),
            ("refresh ahead: then stale", &ahead, plain(), fresh, 2_000, Action::ServeStale),
            ("refresh ahead: a range's entry is refreshed too", &ahead, with(|f| { f.range = true; f.get = true }), fresh, 1_500, Action::ServeFreshAndRefresh),
            ("refresh ahead: within max-age", &ahead, with(|f| { f.max_age = Some(1); }), fresh, 1_500, Action::ServeFreshAndRefresh),
            ("refresh ahead: only-if-cached", &ahead, with(|f| f.only_if_cached = true), fresh, 1_500, Action::ServeFreshAndRefresh),
            ("expired", &shared, plain(), fresh, 5_000, forward(Fwd::UriMiss, true, false)),
            ("another variant", &shared, plain(), other_variant, 1_000, forward(Fwd::VaryMiss, true, false)),
            ("own variant's key", &shared, with(|f| f.variant = true), Lookup::Absent, 1_000, forward(Fwd::VaryMiss, true, false)),
            ("own variant's key: store failed", &shared, with(|f| f.variant = true), Lookup::Failed, 1_000, forward(Fwd::UriMiss, false, false)),
            // The entry was stored at 0, fresh until 2 s, stale until 3 s.
            ("max-age: young enough", &shared, with(|f| { f.max_age = Some(1); }), fresh, 1_999, Action::ServeFresh),
            ("max-age=0: in its first second", &shared, with(|f| { f.max_age = Some(0); }), fresh, 999, Action::ServeFresh),
            ("max-age: too old, refreshed", &shared, with(|f| { f.max_age = Some(0); }), fresh, 1_000, forward(Fwd::Request, true, false)),
            ("max-age: never stale", &shared, with(|f| { f.max_age = Some(10); }), fresh, 2_000, forward(Fwd::Request, true, false)),
            ("max-age, max-stale=1: 0.5 s stale", &shared, with(|f| { f.max_age = Some(10); f.max_stale = Some(1); }), fresh, 2_500, Action::ServeStale),
            ("max-age, max-stale=1: 1.5 s stale", &shared, with(|f| { f.max_age = Some(10); f.max_stale = Some(1); }), long_stale, 3_500, forward(Fwd::Request, true, false)),
            ("max-age, max-stale=2: 1.5 s stale", &shared, with(|f| { f.max_age = Some(10); f.max_stale = Some(2); }), long_stale, 3_500, Action::ServeStale),
            ("max-age, max-stale=0: stale", &shared, with(|f| { f.max_age = Some(10); f.max_stale = Some(0); }), fresh, 2_001, forward(Fwd::Request, true, false)),
            ("max-age, max-stale: any", &shared, with(|f| { f.max_age = Some(10); f.max_stale = Some(ANY_STALENESS); }), fresh, 2_999, Action::ServeStale),
            ("min-fresh: enough left", &shared, with(|f| { f.min_fresh = Some(1); }), fresh, 1_000, Action::ServeFresh),
            ("min-fresh: too little left", &shared, with(|f| { f.min_fresh = Some(1); }), fresh, 1_001, forward(Fwd::Request, true, false)),
            ("max-stale alone: the layer's windows", &shared, with(|f| { f.max_stale = Some(0); }), fresh, 2_500, Action::ServeStale),
            ("max-age: no fallback past its windows", &shared, with(|f| { f.max_age = Some(0); }), fresh, 3_500, forward(Fwd::Request, true, false)),
            ("max-age: another variant", &shared, with(|f| { f.max_age = Some(0); }), other_variant, 1_000, forward(Fwd::VaryMiss, true, false)),
            ("only-if-cached: fresh", &shared, with(|f| f.only_if_cached = true), fresh, 1_000, Action::ServeFresh),
            ("only-if-cached: stale", &shared, with(|f| f.only_if_cached = true), fresh, 2_500, Action::ServeStale),
            ("only-if-cached: read first", &shared, with(|f| f.only_if_cached = true), Lookup::NotRead, 1_000, Action::Read),
            ("only-if-cached: absent", &shared, with(|f| f.only_if_cached = true), Lookup::Absent, 1_000, Action::OnlyIfCachedMiss),
            ("only-if-cached: store failed", &shared, with(|f| f.only_if_cached = true), Lookup::Failed, 1_000, Action::OnlyIfCachedMiss),
            ("only-if-cached: expired", &shared, with(|f| f.only_if_cached = true), fresh, 3_500, Action::OnlyIfCachedMiss),
            ("only-if-cached: another variant", &shared, with(|f| f.only_if_cached = true), other_variant, 1_000, Action::OnlyIfCachedMiss),
            ("only-if-cached, no-cache", &shared, with(|f| { f.only_if_cached = true; f.no_cache = true; }), Lookup::NotRead, 1_000, Action::OnlyIfCachedMiss),
            ("only-if-cached, max-age too old", &shared, with(|f| { f.only_if_cached = true; f.max_age = Some(0); }), fresh, 1_000, Action::OnlyIfCachedMiss),
            ("only-if-cached, uncached method", &shared, RequestFacts { only_if_cached: true, ..RequestFacts::default() }, Lookup::NotRead, 1_000, Action::OnlyIfCachedMiss),
            ("only-if-cached, authorization", &shared, with(|f| { f.only_if_cached = true; f.authorization = true; }), Lookup::NotRead, 1_000, Action::OnlyIfCachedMiss),
        ];
        for (name, rules, facts, lookup, now, expected) in rows {
            assert_eq!(decide(rules, &facts, lookup, now), expected, "{name}");
        }
    }

    #[test]
    fn a_targeted_field_decides_what_is_stored_in_place_of_cache_control() {
        let targets = [HeaderName::from_static("cdn-cache-control")];
        let stored = |pairs: &[(&'static str, &'static str)]| {
            let response = ResponseFacts::read(StatusCode::OK, &head(pairs), &targets);
            judge(
                &rules(Credentials::Bypass),
                &RequestFacts::default(),
                &response,
            )
            .why
        };
        #[rustfmt::skip]
        let cases: &[(&str, &Fields, Option<NotStored>)] = &[
            ("browsers kept out, this cache let in",
             &[("cache-control", "private, no-store"), ("cdn-cache-control", "max-age=60")], None),
            ("the other way round",
             &[("cache-control", "public, max-age=60"), ("cdn-cache-control", "no-store")], Some(NotStored::NoStore)),
            ("private in it", &[("cdn-cache-control", "private")], Some(NotStored::Private)),
            ("an explicit false", &[("cache-control", "no-store"), ("cdn-cache-control", "no-store=?0")], None),
            ("an invalid one leaves Cache-Control",
             &[("cache-control", "no-store"), ("cdn-cache-control", "max-age=60,")], Some(NotStored::NoStore)),
            ("Set-Cookie is never stored",
             &[("set-cookie", "a=1"), ("cdn-cache-control", "max-age=60")], Some(NotStored::SetCookie)),
        ];
        for (case, pairs, expected) in cases {
            assert_eq!(stored(pairs), *expected, "{case}");
        }
    }

    #[test]
    fn responses_for_one_requester_are_neither_stored_nor_shared() {
        let ok = |pairs: &[(&'static str, &'static str)]| {
            ResponseFacts::read(StatusCode::OK, &head(pairs), &[])
        };
        // A field with bytes outside visible ASCII, which a `&str` cannot hold.
        let unreadable = |name: &'static str, value: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_bytes(value).unwrap());
            ResponseFacts::read(StatusCode::OK, &headers, &[])
        };
        let shared = rules(Credentials::Bypass);
        let both = Verdict {
            store: true,
            share: true,
            why: None,
        };
        let neither = |why| Verdict {
            store: false,
            share: false,
            why: Some(why),
        };
        let share_only = Verdict {
            store: false,
            share: true,
            why: Some(NotStored::Status),
        };
        use NotStored::{NoStore, Private, SetCookie, VaryStar};
        #[rustfmt::skip]
        let rows: Vec<(&str, &Rules, RequestFacts, ResponseFacts, Verdict)> = vec![
            ("plain 200", &shared, plain(), ok(&[]), both),
            ("set-cookie", &shared, plain(), ok(&[("set-cookie", "s=1")]), neither(SetCookie)),
            ("set-cookie2", &shared, plain(), ok(&[("set-cookie2", "s=1; Version=1")]), neither(SetCookie)),
            ("no-store", &shared, plain(), ok(&[("cache-control", "max-age=60, no-store")]), neither(NoStore)),
            ("private", &shared, plain(), ok(&[("cache-control", "private")]), neither(Private)),
            ("private=\"x\"", &shared, plain(), ok(&[("cache-control", "private=\"set-cookie\"")]), neither(Private)),
            ("vary *", &shared, plain(), ok(&[("vary", "accept, *")]), neither(VaryStar)),
            ("vary accept", &shared, plain(), ok(&[("vary", "accept")]), both),
            ("vary with empty elements", &shared, plain(), ok(&[("vary", "accept, ,")]), both),
            ("vary naming no field", &shared, plain(), ok(&[("vary", "accept, x(y)")]), neither(VaryStar)),
            ("vary unreadable", &shared, plain(), unreadable("vary", b"authorization, x-\xc3\xa9"), neither(VaryStar)),
            ("cache-control unreadable", &shared, plain(), unreadable("cache-control", b"private, x=\"\xc3\xa9\""), neither(NoStore)),
            ("500 shared, not stored", &shared, plain(), ResponseFacts::read(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new(), &[]), share_only),
            ("206", &shared, plain(), ResponseFacts::read(StatusCode::PARTIAL_CONTENT, &HeaderMap::new(), &[]), share_only),
            ("201 not by default", &shared, plain(), ResponseFacts::read(StatusCode::CREATED, &HeaderMap::new(), &[]), share_only),
            ("203", &shared, plain(), ResponseFacts::read(StatusCode::NON_AUTHORITATIVE_INFORMATION, &HeaderMap::new(), &[]), both),
            ("204", &shared, plain(), ResponseFacts::read(StatusCode::NO_CONTENT, &HeaderMap::new(), &[]), both),
        ];
        for (name, rules, request, response, expected) in rows {
            assert_eq!(judge(rules, &request, &response), expected, "{name}");
        }

        // `private` is stored only where the key tells users apart.
        let private = ok(&[("cache-control", "private")]);
        let credentialed = RequestFacts {
            authorization: true,
            ..plain()
        };
        assert_eq!(
            judge(&rules(Credentials::InKey), &credentialed, &private),
            both
        );
        assert_eq!(
            judge(&rules(Credentials::InKey), &plain(), &private),
            neither(Private)
        );
        assert_eq!(
            judge(&rules(Credentials::Partition), &plain(), &private),
            both
        );
        // Listing 206 or 304 does not make them storable.
        let mut listed = rules(Credentials::Bypass);
        listed.statuses = vec![StatusCode::PARTIAL_CONTENT, StatusCode::NOT_MODIFIED];
        for status in [StatusCode::PARTIAL_CONTENT, StatusCode::NOT_MODIFIED] {
            let response = ResponseFacts::read(status, &HeaderMap::new(), &[]);
            assert!(!judge(&listed, &plain(), &response).store, "{status}");
        }
        // Opting out of response Cache-Control stores `no-store` and `private`, never `Set-Cookie`.
        let mut lax = rules(Credentials::Partition);
        lax.respect_response_cache_control = false;
        assert_eq!(
            judge(&lax, &plain(), &ok(&[("cache-control", "no-store")])),
            both
        );
        assert_eq!(
            judge(&lax, &plain(), &ok(&[("set-cookie", "s=1")])),
            neither(SetCookie)
        );
    }

    #[test]
    fn a_refresh_ahead_is_timed_to_the_millisecond_of_any_lifetime() {
        let stored = |stored_at, fresh_until| Stored {
            stored_at,
            fresh_until,
            stale_until: fresh_until,
            stale_if_error_until: fresh_until,
            vary_matches: true,
        };
        // 1,999 ms of freshness: half of it ahead is 999 ms (rounded down), a tenth 199, all of it 1,999.
        assert_eq!(stored(1_000, 2_999).refresh_at(500), 2_000);
        assert_eq!(stored(1_000, 2_999).refresh_at(100), 2_800);
        assert_eq!(stored(1_000, 2_999).refresh_at(1000), 1_000);
        assert_eq!(stored(1_000, 2_999).refresh_at(0), 2_999);
        // More than all of it is all of it; a lifetime of every millisecond there is does not overflow.
        assert_eq!(stored(0, 2_999).refresh_at(1500), 0);
        assert_eq!(stored(0, u64::MAX).refresh_at(1000), 0);
        assert_eq!(
            stored(0, u64::MAX).refresh_at(1),
            u64::MAX - u64::MAX / 1000
        );
    }

    #[test]
    fn stale_if_error_covers_429_5xx_and_transport_errors_inside_the_window() {
        let stored = Stored {
            stored_at: 0,
            fresh_until: 1_000,
            stale_until: 2_000,
            stale_if_error_until: 9_000,
            vary_matches: true,
        };
        for status in [408, 429, 500, 502, 503, 504, 520, 522, 524, 529] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                serve_stale_on_error(Some(status), false, Some(&stored), 8_999),
                "{status}"
            );
            assert!(
                !serve_stale_on_error(Some(status), false, Some(&stored), 9_000),
                "{status}"
            );
        }
        assert!(
            serve_stale_on_error(None, false, Some(&stored), 5_000),
            "transport error"
        );
        for status in [200, 404, 501, 505, 525] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                !serve_stale_on_error(Some(status), false, Some(&stored), 5_000),
                "{status}"
            );
        }
        assert!(!serve_stale_on_error(None, false, None, 5_000));
        // An answer `store_when` refused counts as a failure, inside the window only.
        assert!(serve_stale_on_error(
            Some(StatusCode::OK),
            true,
            Some(&stored),
            8_999
        ));
        assert!(!serve_stale_on_error(
            Some(StatusCode::OK),
            true,
            Some(&stored),
            9_000
        ));
        assert!(!serve_stale_on_error(
            Some(StatusCode::OK),
            true,
            None,
            5_000
        ));
        let other_variant = Stored {
            vary_matches: false,
            ..stored
        };
        assert!(!serve_stale_on_error(
            None,
            false,
            Some(&other_variant),
            5_000
        ));
    }

    /// A reference model of the decision, written as the rules read in prose, one question at a time.
    fn model(rules: &Rules, r: &RequestFacts, lookup: Lookup, now: u64) -> Action {
        // A request that forbids the origin gets what is stored, or a refusal.
        let action = model_with_origin(rules, r, lookup, now);
        let needs_origin = matches!(
            action,
            Action::Bypass(_) | Action::Forward(_) | Action::PassAndFill
        );
        if r.only_if_cached && needs_origin {
            return Action::OnlyIfCachedMiss;
        }
        action
    }

    fn model_with_origin(rules: &Rules, r: &RequestFacts, lookup: Lookup, now: u64) -> Action {
        // A range is cut from any entry that would answer the whole (a refresh asks for the whole answer). What
        // would go to the origin goes as it came, and fills the entry beside if the whole could be stored.
        let action = model_whole(rules, r, lookup, now);
        match action {
            Action::Forward(forward) if r.range && forward.store => Action::PassAndFill,
            Action::Forward(_) if r.range => Action::Bypass(BypassReason::Range),
            action => action,
        }
    }

    fn model_whole(rules: &Rules, r: &RequestFacts, lookup: Lookup, now: u64) -> Action {
        // Would answering from the cache be wrong whatever it holds?
        let credentials_allowed = !matches!(rules.credentials, Credentials::Bypass);
        let reasons = [
            (r.skip, BypassReason::Skipped),
            (
                !r.method_cacheable && r.not_a_query,
                BypassReason::NotAQuery,
            ),
            (!r.method_cacheable, BypassReason::Method),
            (r.no_store, BypassReason::NoStore),
            // A switch of protocols is the origin's to make, and a live stream the origin's to send.
            (r.upgrade, BypassReason::Upgrade),
            (r.event_stream, BypassReason::EventStream),
            // Whose answer it is cannot be told.
            (r.unpartitioned, BypassReason::Partition),
            (
                r.authorization && !credentials_allowed,
                BypassReason::Authorization,
            ),
            (r.cookie && !credentials_allowed, BypassReason::Cookie),
            (
                r.unnamed_credential && !matches!(rules.credentials, Credentials::Partition),
                BypassReason::Authorization,
            ),
            // Only a `GET` has range semantics.
            (r.range && !r.get, BypassReason::Range),
            // Validators a cache answers only for a `GET` or `HEAD`; preconditions never.
            (
                r.preconditions || (r.validators && !r.get_or_head),
                BypassReason::Conditional,
            ),
            (r.too_large, BypassReason::RequestTooLarge),
            (r.over_budget, BypassReason::RequestOverBudget),
            (r.trailers, BypassReason::RequestTrailers),
            // What it asks cannot be read.
            (r.undecodable, BypassReason::RequestUndecodable),
        ];
        if let Some((_, reason)) = reasons.iter().find(|(applies, _)| *applies) {
            return Action::Bypass(*reason);
        }
        if r.no_cache {
            // Only a whole answer revalidates the entry: a range asking for one goes as it came, filling nothing.
            if r.range {
                return Action::Bypass(BypassReason::Range);
            }
            return forward(Fwd::Request, true, false);
        }
        let stored = match lookup {
            Lookup::NotRead => return Action::Read,
            Lookup::Failed => return forward(Fwd::UriMiss, false, false),
            Lookup::Absent => return forward(Fwd::UriMiss, true, false),
            Lookup::Found(stored) => stored,
        };
        if !stored.vary_matches {
            return forward(Fwd::VaryMiss, true, false);
        }
        // Does the request's own Cache-Control refuse this entry? Only when it bounds age or freshness.
        if r.max_age.is_some() || r.min_fresh.is_some() {
            let age = u128::from(now.saturating_sub(stored.stored_at)) / 1000;
            let too_old = r.max_age.is_some_and(|max| age > u128::from(max));
            let freshness_left = i128::from(stored.fresh_until) - i128::from(now);
            let too_close = r
                .min_fresh
                .is_some_and(|min| freshness_left < i128::from(min) * 1000);
            let staleness = -freshness_left;
            let stale_refused = staleness >= 0
                && match r.max_stale {
                    None => true,
                    Some(ANY_STALENESS) => false,
                    Some(n) => staleness > i128::from(n) * 1000,
                };
            if too_old || too_close || stale_refused {
                return forward(Fwd::Request, true, false);
            }
        }
        // In the last `refresh_ahead` thousandths of its fresh lifetime, a fresh entry is refreshed too.
        let lifetime = u128::from(stored.fresh_until.saturating_sub(stored.stored_at));
        let left = u128::from(stored.fresh_until.saturating_sub(now));
        let fresh = if left * 1000 <= lifetime * u128::from(rules.refresh_ahead) {
            Action::ServeFreshAndRefresh
        } else {
            Action::ServeFresh
        };
        let age_state = [
            (stored.fresh_until, fresh),
            (stored.stale_until, Action::ServeStale),
        ];
        for (until, action) in age_state {
            if now < until {
                return action;
            }
        }
        let on_error = now < stored.stale_until || now < stored.stale_if_error_until;
        forward(Fwd::UriMiss, true, on_error)
    }

    fn arb_seconds() -> impl Strategy<Value = Option<u32>> {
        prop_oneof![
            Just(None),
            (0..12u32).prop_map(Some),
            Just(Some(ANY_STALENESS)),
            any::<u32>().prop_map(Some),
        ]
    }

    fn arb_facts() -> impl Strategy<Value = RequestFacts> {
        (
            prop::array::uniform8(any::<bool>()),
            prop::array::uniform8(any::<bool>()),
            (arb_seconds(), arb_seconds(), arb_seconds()),
            (
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    b,
                    [
                        skip,
                        only_if_cached,
                        validators,
                        get_or_head,
                        get,
                        unpartitioned,
                        trailers,
                        upgrade,
                    ],
                    (max_age, min_fresh, max_stale),
                    (event_stream, not_a_query, unnamed_credential, undecodable, over_budget),
                )| RequestFacts {
                    method_cacheable: b[0],
                    no_store: b[1],
                    no_cache: b[2],
                    authorization: b[3],
                    cookie: b[4],
                    range: b[5],
                    preconditions: b[6],
                    too_large: b[7],
                    over_budget,
                    trailers,
                    undecodable,
                    upgrade,
                    event_stream,
                    not_a_query,
                    unnamed_credential,
                    skip,
                    unpartitioned,
                    validators,
                    get_or_head,
                    get,
                    max_age,
                    min_fresh,
                    max_stale,
                    only_if_cached,
                    ..RequestFacts::default()
                },
            )
    }

    fn arb_time() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..10_000u64,
            Just(u64::MAX),
            Just(u64::MAX - 1),
            any::<u64>()
        ]
    }

    fn arb_lookup() -> impl Strategy<Value = Lookup> {
        prop_oneof![
            Just(Lookup::NotRead),
            Just(Lookup::Absent),
            Just(Lookup::Failed),
            (
                arb_time(),
                arb_time(),
                arb_time(),
                arb_time(),
                any::<bool>()
            )
                .prop_map(|(at, f, s, e, v)| Lookup::Found(Stored {
                    stored_at: at,
                    fresh_until: f,
                    stale_until: s,
                    stale_if_error_until: e,
                    vary_matches: v,
                })),
        ]
    }

    fn arb_credentials() -> impl Strategy<Value = Credentials> {
        prop_oneof![
            Just(Credentials::Bypass),
            Just(Credentials::InKey),
            Just(Credentials::Partition),
        ]
    }

    proptest! {
        #[test]
        fn decide_agrees_with_the_reference_model(
            credentials in arb_credentials(),
            refresh_ahead in prop_oneof![Just(0u16), 1..1000u16],
            facts in arb_facts(),
            lookup in arb_lookup(),
            now in arb_time(),
        ) {
            let rules = Rules { refresh_ahead, ..rules(credentials) };
            prop_assert_eq!(decide(&rules, &facts, lookup, now), model(&rules, &facts, lookup, now));
        }

        #[test]
        fn nothing_stored_ever_answers_a_request_the_shared_rules_exclude(
            facts in arb_facts(),
            lookup in arb_lookup(),
            now in arb_time(),
        ) {
            let action = decide(&rules(Credentials::Bypass), &facts, lookup, now);
            let served = matches!(
                action,
                Action::ServeFresh | Action::ServeFreshAndRefresh | Action::ServeStale
            );
            let range_unanswerable = facts.range && !facts.get;
            let credential = facts.authorization || facts.cookie || facts.unnamed_credential;
            if credential || range_unanswerable || facts.preconditions || facts.no_cache {
                prop_assert!(!served, "{:?} answered from the store for {:?}", action, facts);
            }
            // A range is cut from an entry or asked of the origin as it came, its answer never stored or shared.
            if facts.range {
                let forwarded = matches!(action, Action::Forward(_));
                prop_assert!(!forwarded, "{:?} for a range: {:?}", action, facts);
            }
        }

        /// Any `Range` and `If-Range` values are read without a panic, and a part is always within the body.
        #[test]
        fn any_range_is_read_and_a_part_is_always_within_the_body(
            range in "(bytes=)?[-0-9, ]{0,16}|[ -~]{0,24}",
            if_range in prop::option::of("[ -~]{0,24}"),
            len in prop_oneof![0..20u64, any::<u64>()],
        ) {
            let field = |v: &str| HeaderValue::from_str(v).ok();
            let mut request = HeaderMap::new();
            if let Some(range) = field(&range) {
                request.insert(RANGE, range);
            }
            if let Some(value) = if_range.as_deref().and_then(field) {
                request.insert(IF_RANGE, value);
            }
            let response = head(&[("etag", "\"a\"")]);
            if let Part::Bytes { first, last } = part_of(&request, StatusCode::OK, &response, len) {
                prop_assert!(first <= last && last < len, "{first}-{last} of {len} for {range:?}");
            }
        }

        /// Any field values (quotes, commas, `W/`, spaces in odd places) are read without a panic, and a tag
        /// the answer carries, sent back alone or in a list, always matches.
        #[test]
        fn any_validator_is_read_and_a_tag_sent_back_always_matches(
            none_match in "[ -~]{0,24}",
            etag in "(W/)?\"[!#-~]{0,12}\"",
            others in prop::collection::vec("(W/)?\"[!#-~]{0,6}\"", 0..3),
            junk in "[ -~]{0,24}",
        ) {
            let field = |v: &str| HeaderValue::from_str(v).ok();
            let mut request = HeaderMap::new();
            let mut response = HeaderMap::new();
            if let (Some(a), Some(b)) = (field(&none_match), field(&junk)) {
                request.insert(IF_NONE_MATCH, a);
                response.insert(ETAG, b);
                not_modified(&request, StatusCode::OK, &response);
                request.insert(IF_MODIFIED_SINCE, field(&junk).unwrap_or(HeaderValue::from_static("x")));
                request.remove(IF_NONE_MATCH);
                not_modified(&request, StatusCode::OK, &response);
            }
            let mut list = others.clone();
            list.push(etag.clone());
            let mut request = HeaderMap::new();
            request.insert(IF_NONE_MATCH, field(&list.join(", ")).unwrap());
            response.insert(ETAG, field(&etag).unwrap());
            prop_assert!(not_modified(&request, StatusCode::OK, &response), "{list:?} against {etag}");
        }
    }
}
