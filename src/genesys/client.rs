//! [`GenesysClient`], its builder, and the assembled service stack.

use super::error::GenesysError;
use super::proxy::{Connector, ProxySetting};
use super::region::Region;
use crate::auth::{AuthLayer, ClientCredentials, Secret};
use crate::body::RequestBody;
use crate::buffer::{Collected, collect_capped};
use crate::cache::{
    CacheHandle, CacheOutcome, CacheOverride, RedisCacheLayer, ResponseBody, Store, Windows,
};
use crate::error::{BoxError, ConfigError, Setting, StoreError};
use crate::retry::{RetryLayer, RetryOutcome};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::ServiceExt;
use tower::timeout::Timeout;
use tower::util::BoxCloneSyncService;
use tower_layer::Layer;
use tower_service::Service;

/// The HTTP client at the bottom of the stack: hyper-util's pooled client over rustls (the application's
/// installed provider, else ring; Mozilla roots), HTTP/1.1 and HTTP/2 by ALPN, straight or through a proxy.
pub(crate) type HttpClient = Client<HttpsConnector<Connector>, RequestBody>;

/// The assembled stack (cache, retry, auth, per-attempt timeout, hyper-util client), as one opaque service:
/// clone it and add your own layers on top; [`GenesysClient::service`] hands it out. Its errors are the
/// layers' boxed errors (a [`RetryError`](crate::retry::error::RetryError), a token error, a timeout).
#[derive(Clone)]
pub struct GenesysService {
    inner: BoxCloneSyncService<Request<RequestBody>, Response<GenesysBody>, BoxError>,
}

impl GenesysService {
    fn new<S>(service: S) -> Self
    where
        S: Service<Request<RequestBody>, Response = Response<GenesysBody>, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        GenesysService {
            inner: BoxCloneSyncService::new(service),
        }
    }
}

impl fmt::Debug for GenesysService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenesysService").finish_non_exhaustive()
    }
}

impl Service<Request<RequestBody>> for GenesysService {
    type Response = Response<GenesysBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GenesysBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        self.inner.call(request)
    }
}

/// The response body the stack returns: cached bytes, or hyper's body streamed through.
pub type GenesysBody = ResponseBody<Incoming>;

/// The largest API response body the client reads into memory.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// A value read from the API with the facts of how it was fetched.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Fetched<T> {
    /// The value.
    pub value: T,
    /// How the cache answered (`None` if the response carried no outcome).
    pub cache: Option<CacheOutcome>,
    /// Attempts the retry layer made: 0 for an answer from the cache that never reached the API (a fresh or
    /// stale hit), at least 1 otherwise.
    pub attempts: u32,
    /// The `ININ-Correlation-Id` of the response that produced the value.
    pub correlation_id: Option<String>,
}

impl<T> Fetched<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.value
    }

    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Fetched<U> {
        Fetched {
            value: f(self.value),
            cache: self.cache,
            attempts: self.attempts,
            correlation_id: self.correlation_id,
        }
    }
}

impl<T> Deref for Fetched<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

/// A Genesys Cloud API client: Data Actions, pagination and typed errors over a cached, retried,
/// authenticated stack. Cheap to clone; clones share the cache, the token and the connection pool.
///
/// See the [module docs](super) for an example.
#[derive(Clone)]
pub struct GenesysClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) service: GenesysService,
    pub(crate) cache: CacheHandle,
    pub(crate) auth: AuthLayer,
    pub(crate) api_base: String,
    base: Base,
    pub(crate) max_pages: u32,
    pub(crate) user_agent: HeaderValue,
    pub(crate) executions: Arc<Executions>,
}

/// Which Data Action executions are cached: the builder's rules, and what the client learned of which actions
/// are `secure`. Action ids are kept as the client encodes them in paths.
pub(crate) struct Executions {
    /// Never cached ([`GenesysClientBuilder::uncached_action`]).
    uncached: HashSet<String>,
    /// Given windows of their own ([`GenesysClientBuilder::action_windows`]): cached, `secure` or not.
    windowed: HashSet<String>,
    /// Whether the actions without windows of their own are cached.
    cache_executions: bool,
    /// Whether `secure` actions are cached as the others are.
    cache_secure: bool,
    /// Whether each action read so far is `secure`. Bounded: emptied when full.
    secure: Mutex<HashMap<String, bool>>,
}

/// The most actions whose `secure` flag a client keeps.
const SECURE_FLAGS: usize = 10_000;

impl Executions {
    /// Whether the calls sent for the action `id` (encoded) are left uncached whatever their windows.
    fn skipped(&self, id: &str, own_windows: bool) -> bool {
        self.uncached.contains(id)
            || (!own_windows && !self.cache_executions && !self.windowed.contains(id))
    }

    /// Whether an execution of the action `id` (encoded), without windows of its own, is cached only once the
    /// action is known not to be `secure`.
    pub(crate) fn asks_secure(&self, id: &str) -> bool {
        !self.cache_secure
            && self.cache_executions
            && !self.uncached.contains(id)
            && !self.windowed.contains(id)
    }

    /// Whether the action `id` (encoded) is `secure`, if the client read it.
    pub(crate) fn known_secure(&self, id: &str) -> Option<bool> {
        self.flags().get(id).copied()
    }

    /// Remembers whether `action` is `secure`; one that does not say counts as `secure`.
    pub(crate) fn learn(&self, action: &super::model::Action) {
        let mut flags = self.flags();
        if flags.len() >= SECURE_FLAGS {
            flags.clear();
        }
        flags.insert(
            super::actions::segment(&action.id),
            action.secure.unwrap_or(true),
        );
    }

    /// Forgets what was read of the action `id` (encoded): it changed, or is gone.
    pub(crate) fn forget(&self, id: &str) {
        self.flags().remove(id);
    }

    fn flags(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.secure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl fmt::Debug for GenesysClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenesysClient")
            .field("api_base", &self.inner.api_base)
            .field("max_pages", &self.inner.max_pages)
            .finish_non_exhaustive()
    }
}

impl GenesysClient {
    /// Starts a builder.
    pub fn builder() -> GenesysClientBuilder {
        GenesysClientBuilder::default()
    }

    /// The assembled service, to call directly or wrap in more layers.
    pub fn service(&self) -> GenesysService {
        self.inner.service.clone()
    }

    /// The cache's stats, invalidation and purge.
    pub fn cache(&self) -> &CacheHandle {
        &self.inner.cache
    }

    /// Removes the cached answers that a change to the Data Action `id` makes stale, in every process
    /// sharing the cache: its `GET` and every execution of it, and every listing page. For a change made
    /// elsewhere (the admin UI, another tool); a change sent through this client removes them itself once it
    /// succeeds. What the client learned of whether the action is `secure` is forgotten too. Returns how many
    /// entries were removed.
    ///
    /// # Errors
    ///
    /// The store's error (entries removed before it stay removed).
    pub async fn invalidate_action(&self, id: &str) -> Result<u64, StoreError> {
        self.inner.executions.forget(&super::actions::segment(id));
        let own = self
            .inner
            .cache
            .invalidate_tag(&action_tag(&super::actions::segment(id)))
            .await?;
        Ok(own + self.inner.cache.invalidate_tag(LISTINGS_TAG).await?)
    }

    /// Tokens fetched so far (a cache hit needs none). For tests: not part of the stable API.
    #[doc(hidden)]
    pub fn token_fetches(&self) -> u64 {
        self.inner.auth.token_fetches()
    }

    /// The API base URL.
    pub fn api_base(&self) -> &str {
        &self.inner.api_base
    }

    /// Sends a request for `path_and_query` (which starts with `/api/v2/`) and decodes a 2xx JSON answer.
    ///
    /// The path is joined to the API base as a URI, never by pasting strings: it must start with one `/` and
    /// hold no scheme, host, fragment or `.`/`..` segment, so no path can send the token to another host.
    ///
    /// # Errors
    ///
    /// A [`GenesysError`] for a non-2xx status (redirects included: they are not followed), a transport failure
    /// or timeout after retries, a token failure, a body that is not the expected JSON, or a path that is not
    /// one ([`is_request`](GenesysError::is_request)).
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Fetched<T>, GenesysError> {
        self.send_json_with(method, path_and_query, body, None)
            .await
    }

    /// [`send_json`](Self::send_json), with a cache override for this one call.
    pub(crate) async fn send_json_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        cache: Option<CacheOverride>,
    ) -> Result<Fetched<T>, GenesysError> {
        let fetched = self.send_with(method, path_and_query, body, cache).await?;
        let value = serde_json::from_slice(&fetched.value).map_err(|e| {
            GenesysError::decode(
                format!("{path_and_query}: {e}"),
                fetched.correlation_id.clone(),
            )
        })?;
        Ok(fetched.map(|_| value))
    }

    /// Sends a request and returns the raw 2xx body.
    pub(crate) async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Fetched<Bytes>, GenesysError> {
        self.send_with(method, path_and_query, body, None).await
    }

    /// [`send`](Self::send), with a cache override for this one call.
    pub(crate) async fn send_with(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        cache: Option<CacheOverride>,
    ) -> Result<Fetched<Bytes>, GenesysError> {
        let uri = self.inner.base.join(path_and_query).map_err(|reason| {
            GenesysError::request(format!(
                "request path {:?} {reason}",
                path_and_query.chars().take(200).collect::<String>()
            ))
        })?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, self.inner.user_agent.clone());
        let bytes = match body {
            Some(json) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(
                    serde_json::to_vec(json).map_err(|e| GenesysError::request(e.to_string()))?,
                )
            }
            None => Bytes::new(),
        };
        let mut request = builder
            .body(RequestBody::from(bytes))
            .map_err(|e| GenesysError::request(e.to_string()))?;
        if let Some(cache) = cache {
            request.extensions_mut().insert(cache);
        }
        let response: Response<GenesysBody> = self
            .inner
            .service
            .clone()
            .oneshot(request)
            .await
            .map_err(GenesysError::from_stack)?;
        read(response).await
    }
}

/// The API base: where every request path is joined, as URI parts.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    scheme: Scheme,
    authority: Authority,
    /// The base's path without its trailing `/` (empty for none).
    prefix: String,
}

impl Base {
    /// Checks a base URL: absolute, `https` (or `http` to a loopback host, or anywhere when `allow_http`), no
    /// user info, query or fragment.
    pub(crate) fn parse(
        setting: Setting,
        url: &str,
        allow_http: bool,
    ) -> Result<Base, ConfigError> {
        let shown: String = url.chars().take(200).collect();
        let rejected = |why: &str| ConfigError::new(setting, format!("{shown:?} {why}"));
        let uri: Uri = url
            .parse()
            .map_err(|_| rejected("must be an absolute https URL"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(rejected("must be an absolute https URL"));
        };
        if authority.as_str().contains('@') {
            // Not echoed: the URL holds a password.
            return Err(ConfigError::new(setting, "must not carry credentials"));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(rejected("must not carry a query or fragment"));
        }
        match scheme.as_str() {
            "https" => {}
            "http" if allow_http || is_loopback(authority.host()) => {}
            "http" => {
                return Err(rejected(
                    "is plain http to a host other than this machine, which would send the client secret \
                     and tokens in clear: use https, or allow_insecure_http(true)",
                ));
            }
            _ => return Err(rejected("must be an https URL")),
        }
        Ok(Base {
            scheme: scheme.clone(),
            authority: authority.clone(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Joins a request path (and query) to the base. The path must start with one `/` and hold no fragment,
    /// backslash or `.`/`..` segment: whatever it is, the request goes to the base's host.
    pub(crate) fn join(&self, path_and_query: &str) -> Result<Uri, String> {
        if !path_and_query.starts_with('/') || path_and_query.starts_with("//") {
            return Err("must start with a single '/' (a path, not a URL)".into());
        }
        if path_and_query.contains(['#', '\\']) {
            return Err("must not hold '#' or '\\'".into());
        }
        let path = path_and_query.split('?').next().unwrap_or_default();
        if path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err("must not hold '.' or '..' segments".into());
        }
        let path_and_query = PathAndQuery::try_from(format!("{}{path_and_query}", self.prefix))
            .map_err(|e| format!("is not a valid URI path: {e}"))?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| format!("is not a valid URI path: {e}"))
    }
}

/// `localhost`, or a loopback IP address (`127.0.0.0/8`, `::1`).
pub(super) fn is_loopback(host: &str) -> bool {
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads a response: the body (capped), the correlation id, the cache outcome and the attempt count; a
/// non-2xx status becomes a [`GenesysError`].
async fn read(response: Response<GenesysBody>) -> Result<Fetched<Bytes>, GenesysError> {
    let (parts, body) = response.into_parts();
    let correlation_id = parts
        .headers
        .get("inin-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(100).collect::<String>());
    let cache = CacheOutcome::from_headers(&parts.headers);
    let attempts = match cache {
        // Answered from the store: no attempt reached the API (a stale answer's refresh runs apart).
        Some(CacheOutcome::Hit | CacheOutcome::Stale { .. }) => 0,
        _ => parts
            .extensions
            .get::<RetryOutcome>()
            .map_or(1, |o| o.attempts),
    };
    let bytes = match collect_capped(body, MAX_RESPONSE).await {
        // The API's answers are read from their bodies; trailers say nothing about them.
        Ok(Collected::Complete(bytes) | Collected::Trailed { body: bytes, .. }) => bytes,
        Ok(Collected::TooLarge(_)) => {
            return Err(GenesysError::decode(
                format!("response body over {MAX_RESPONSE} bytes"),
                correlation_id,
            ));
        }
        Err(e) => return Err(GenesysError::from_stack(e)),
    };
    if !parts.status.is_success() {
        let retry_after = crate::retry::wait_of(parts.status, &parts.headers);
        return Err(GenesysError::from_status(
            parts.status,
            &bytes,
            correlation_id,
            attempts,
            retry_after,
        ));
    }
    Ok(Fetched {
        value: bytes,
        cache,
        attempts,
        correlation_id,
    })
}

/// Builds a [`GenesysClient`]; every setter states its default.
///
/// A clone shares the store and retry budget set so far.
#[derive(Clone)]
#[must_use]
pub struct GenesysClientBuilder {
    api_base: Option<String>,
    login_base: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    store: Option<Arc<dyn Store>>,
    #[cfg(feature = "redis")]
    redis_url: Option<String>,
    namespace: String,
    fresh_for: Duration,
    stale_for: Duration,
    stale_if_error_for: Duration,
    refresh_ahead: f64,
    action_windows: HashMap<String, Windows>,
    uncached_actions: HashSet<String>,
    cache_executions: bool,
    cache_secure_actions: bool,
    listing_windows: Option<Windows>,
    retry: Option<RetryLayer>,
    attempt_timeout: Duration,
    store_timeout: Duration,
    max_pages: u32,
    allow_insecure_http: bool,
    proxy: ProxySetting,
    root_certificates: Vec<Vec<u8>>,
    #[cfg(feature = "compression")]
    compress_above: Option<usize>,
    #[cfg(feature = "redis")]
    near_cache: Option<u64>,
}

impl Default for GenesysClientBuilder {
    fn default() -> Self {
        GenesysClientBuilder {
            api_base: None,
            login_base: None,
            client_id: None,
            client_secret: None,
            store: None,
            #[cfg(feature = "redis")]
            redis_url: None,
            namespace: "genesys".into(),
            fresh_for: Duration::from_secs(300),
            stale_for: Duration::from_secs(600),
            stale_if_error_for: Duration::from_secs(3600),
            refresh_ahead: 0.0,
            action_windows: HashMap::new(),
            uncached_actions: HashSet::new(),
            cache_executions: true,
            cache_secure_actions: false,
            listing_windows: None,
            retry: None,
            attempt_timeout: Duration::from_secs(30),
            store_timeout: Duration::from_millis(50),
            max_pages: 1000,
            allow_insecure_http: false,
            proxy: ProxySetting::Environment,
            root_certificates: Vec::new(),
            #[cfg(feature = "compression")]
            compress_above: None,
            #[cfg(feature = "redis")]
            near_cache: None,
        }
    }
}

impl fmt::Debug for GenesysClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenesysClientBuilder")
            .field("api_base", &self.api_base)
            .field("login_base", &self.login_base)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("fresh_for", &self.fresh_for)
            .field("stale_for", &self.stale_for)
            .field("proxy", &self.proxy)
            .field("root_certificates", &self.root_certificates.len())
            .finish_non_exhaustive()
    }
}

impl GenesysClientBuilder {
    /// The region: sets both bases (`https://api.{domain}`, `https://login.{domain}`). Required unless both
    /// bases are given.
    pub fn region(mut self, region: Region) -> Self {
        self.api_base = Some(region.api_base());
        self.login_base = Some(region.login_base());
        self
    }

    /// Overrides the API base URL (an emulator, a proxy). It may carry a path prefix; `http://` is accepted for
    /// a loopback host only, unless [`allow_insecure_http`](Self::allow_insecure_http).
    pub fn api_base(mut self, base: impl Into<String>) -> Self {
        self.api_base = Some(base.into());
        self
    }

    /// Overrides the OAuth base URL; tokens come from `{login_base}/oauth/token`. Same rules as
    /// [`api_base`](Self::api_base).
    pub fn login_base(mut self, base: impl Into<String>) -> Self {
        self.login_base = Some(base.into());
        self
    }

    /// The OAuth client (client-credentials grant). Required.
    pub fn client_credentials(
        mut self,
        client_id: impl Into<String>,
        client_secret: impl Into<Secret>,
    ) -> Self {
        self.client_id = Some(client_id.into());
        self.client_secret = Some(client_secret.into());
        self
    }

    /// The cache store: a [`RedisStore`](crate::RedisStore) shared by every process, a
    /// [`MemoryStore`](crate::MemoryStore), or your own [`Store`]. Default: a 64 MiB `MemoryStore` (feature
    /// `memory`). See also [`redis_url`](Self::redis_url) and [`redis_client`](Self::redis_client).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Caches in the Redis at `url` (`redis://`, `rediss://`, `redis-cluster://`, `redis-sentinel://`, with
    /// credentials), connecting in the background when the client is built; until Redis answers, calls go
    /// to the API uncached. Replaces any [`store`](Self::store).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self.store = None;
        self
    }

    /// Caches in Redis through an existing fred client (connected or connecting), with its own settings: see
    /// [`RedisStore::new`](crate::RedisStore::new) for the one to set.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_client(self, client: fred::clients::Client) -> Self {
        self.store(crate::RedisStore::new(client))
    }

    /// Keeps up to `max_bytes` of fresh answers in this process as well, kept coherent with Redis by client
    /// tracking, so that a repeated call is answered without a round trip to Redis (see
    /// [`RedisCacheLayerBuilder::near_cache`](crate::cache::RedisCacheLayerBuilder::near_cache)). Needs Redis
    /// as the store ([`redis_url`](Self::redis_url) or [`redis_client`](Self::redis_client)): `build` refuses
    /// it over another. Default: off.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn near_cache(mut self, max_bytes: u64) -> Self {
        self.near_cache = Some(max_bytes);
        self
    }

    /// The Redis key namespace. Default: `genesys`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long an answer is fresh. Default: 300 s.
    pub fn fresh_for(mut self, fresh_for: Duration) -> Self {
        self.fresh_for = fresh_for;
        self
    }

    /// How long after that it is served stale while one refresh runs. Default: 600 s.
    pub fn stale_for(mut self, stale_for: Duration) -> Self {
        self.stale_for = stale_for;
        self
    }

    /// How long after that it is served if the API fails. Default: 3600 s.
    pub fn stale_if_error_for(mut self, window: Duration) -> Self {
        self.stale_if_error_for = window;
        self
    }

    /// Renews a cached answer that is asked for in the last `fraction` of its freshness (`0.2`: its last fifth)
    /// in the background, so that the Data Actions called all the time never answer stale nor make a caller
    /// wait at expiry (see [`RedisCacheLayerBuilder::refresh_ahead`](crate::cache::RedisCacheLayerBuilder::refresh_ahead)). Default: 0, off.
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = fraction;
        self
    }

    /// The windows of one Data Action's results (by its id), instead of the client's: a lookup of fast-changing
    /// data briefly, a static one long. A call can still pass its own with
    /// [`execute_action_with`](GenesysClient::execute_action_with). Default: the client's windows for every
    /// action.
    pub fn action_windows(mut self, action_id: impl AsRef<str>, windows: Windows) -> Self {
        self.action_windows
            .insert(super::actions::segment(action_id.as_ref()), windows);
        self
    }

    /// Never caches the executions of the Data Action `action_id` (by its id): each
    /// [`execute_action`](GenesysClient::execute_action) of it runs the action, and concurrent calls with the same
    /// input each run it, as an action that changes something needs (it creates a ticket, sends a message,
    /// updates a record). Cached, a second call with the same input within the windows would get the first
    /// one's output and the action would not run again. Also for an action whose data must not rest in the
    /// store though it is not `secure` (those are left uncached already: see
    /// [`cache_secure_actions`](Self::cache_secure_actions)): a cached execution keeps the input's digest and the
    /// whole output there. Wins over any windows, the call's own included; the action's `GET` is still cached.
    /// [`execute_action_uncached`](GenesysClient::execute_action_uncached) does the same for one call;
    /// [`cache_executions(false)`](Self::cache_executions) makes caching opt-in per action instead. Default:
    /// every action's executions are cached.
    pub fn uncached_action(mut self, action_id: impl AsRef<str>) -> Self {
        self.uncached_actions
            .insert(super::actions::segment(action_id.as_ref()));
        self
    }

    /// Whether the executions of actions without windows of their own are cached. Default: true, every action's
    /// (but those named in [`uncached_action`](Self::uncached_action)). Off, only the executions of the actions
    /// given [`action_windows`](Self::action_windows), and the calls given windows of their own
    /// ([`execute_action_with`](GenesysClient::execute_action_with)), are cached; every other execution runs
    /// on every call: for an org whose actions mostly change things, caching becomes opt-in per action.
    pub fn cache_executions(mut self, cache: bool) -> Self {
        self.cache_executions = cache;
        self
    }

    /// Whether the executions of `secure` Data Actions are cached as the others are. Genesys keeps a secure
    /// action's input and output out of its own logs (payment details, personal data), and a cached execution
    /// keeps its output in the store, so by default they are not: before the first execution of an action, the
    /// client reads the action (its `GET`, cached as any) to learn whether it is `secure`, and remembers. An
    /// action given windows of its own ([`action_windows`](Self::action_windows)), or a call given its own
    /// ([`execute_action_with`](GenesysClient::execute_action_with)), is cached whatever its flag: naming it
    /// is the choice. Calls sent through [`service`](GenesysClient::service) are not checked. A flag changed
    /// outside this client is seen after [`invalidate_action`](GenesysClient::invalidate_action) (or a restart).
    /// Default: false.
    pub fn cache_secure_actions(mut self, cache: bool) -> Self {
        self.cache_secure_actions = cache;
        self
    }

    /// The windows of listings (the pages of Data Actions and of their categories, and `.../query` searches),
    /// instead of the client's.
    /// Default: the client's.
    pub fn listing_windows(mut self, windows: Windows) -> Self {
        self.listing_windows = Some(windows);
        self
    }

    /// The retry policy. Default: [`RetryLayer::default`] (4 attempts, 200 ms base, 60 s deadline, a
    /// `Retry-After` up to 180 s honoured; a `POST` retried only on `429`, unless it is a cached execution or
    /// query, which is retried as a `GET` is).
    pub fn retry(mut self, retry: RetryLayer) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The timeout of each attempt (and of each token request). Default: 30 s.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How long a cache store call may take before the request goes on without it. Default: 50 ms.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// Stores answers longer than `bytes` LZ4-compressed in the cache: listings of many actions shrink to
    /// a fraction. See [`RedisCacheLayerBuilder::compress_above`](crate::cache::RedisCacheLayerBuilder::compress_above).
    /// Default: off.
    #[cfg(feature = "compression")]
    #[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = Some(bytes);
        self
    }

    /// Accepts `http://` API and login bases on hosts other than loopback, for a TLS-terminating proxy on a
    /// network you trust. Default: `false`: the client secret and tokens travel over HTTPS, or to this machine.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Connects through the HTTP proxy at `url` (`http://proxy.corp:3128`, or `http://user:password@...`,
    /// percent-encoded, for its Basic `Proxy-Authorization`), by a `CONNECT` tunnel per connection, inside which
    /// TLS runs to the API as without one. Default: the proxy the environment names, as curl reads it
    /// (`HTTPS_PROXY`, `HTTP_PROXY` for an `http://` base, `ALL_PROXY`, with `NO_PROXY`'s exceptions, in lower
    /// case too; not in a CGI process), except for bases on this machine.
    ///
    /// Only `http://` proxies: [`build`](Self::build) refuses another kind (`socks5://`, `https://`), or a
    /// value that does not read, here or in the environment, rather than connect around it. The password is
    /// never shown (`Debug`, errors).
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = ProxySetting::Url(url.into());
        self
    }

    /// Connects straight to the API, whatever proxy the environment names.
    pub fn no_proxy(mut self) -> Self {
        self.proxy = ProxySetting::Off;
        self
    }

    /// Trusts the certificates in `pem` (the contents of a PEM file: one or more `-----BEGIN CERTIFICATE-----`
    /// blocks) as roots, besides Mozilla's: the company CA of a proxy that inspects TLS, or of a private gateway
    /// in front of the API. Calls add up. [`build`](Self::build) refuses PEM without a certificate, or a
    /// certificate that cannot be a root. Default: Mozilla's roots only.
    pub fn add_root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.root_certificates.push(pem.as_ref().to_vec());
        self
    }

    /// The most pages one listing may read before it fails. Default: 1000.
    pub fn max_pages(mut self, pages: u32) -> Self {
        self.max_pages = pages;
        self
    }

    /// Assembles the client. Needs a Tokio runtime (the pool and background refreshes run on it).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when a base or the credentials are missing or invalid (a base must be an absolute
    /// `https://` URL, or `http://` to loopback, without credentials, query or fragment), a Redis URL is
    /// invalid, no store was given and the `memory` feature is off, a [`near_cache`](Self::near_cache) was
    /// asked for over a store other than Redis, the [`proxy`](Self::proxy) is not one the client can use, or
    /// [root certificates](Self::add_root_certificates_pem) are not.
    pub fn build(self) -> Result<GenesysClient, ConfigError> {
        let api_base = self
            .api_base
            .ok_or_else(|| ConfigError::new(Setting::ApiBase, "no region or api base given"))?;
        let api_base = api_base.trim_end_matches('/').to_owned();
        let login_base = self
            .login_base
            .ok_or_else(|| ConfigError::new(Setting::LoginBase, "no region or login base given"))?;
        let login_base = login_base.trim_end_matches('/');
        let base = Base::parse(Setting::ApiBase, &api_base, self.allow_insecure_http)?;
        Base::parse(Setting::LoginBase, login_base, self.allow_insecure_http)?;
        let (client_id, secret) = self
            .client_id
            .zip(self.client_secret)
            .ok_or_else(|| ConfigError::new(Setting::ClientCredentials, "none given"))?;
        #[cfg(feature = "redis")]
        let url_store: Option<Arc<dyn Store>> = match &self.redis_url {
            Some(url) => Some(Arc::new(
                crate::RedisStore::connect_lazy(url)
                    // The message, not the URL: it may hold a password.
                    .map_err(|e| ConfigError::new(Setting::RedisUrl, e.details().to_string()))?,
            )),
            None => None,
        };
        #[cfg(not(feature = "redis"))]
        let url_store: Option<Arc<dyn Store>> = None;
        let store = match url_store.or(self.store) {
            Some(store) => store,
            None => default_store()?,
        };

        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                crate::tls::https_config(&self.root_certificates)
                    .map_err(|why| ConfigError::new(Setting::Tls, why))?,
            )
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(Connector::new(&self.proxy, &[&api_base, login_base])?);
        let http: HttpClient = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let transport = Timeout::new(http, self.attempt_timeout);

        let source = ClientCredentials::new(
            transport.clone(),
            &format!("{login_base}/oauth/token"),
            client_id.clone(),
            secret,
        )?;
        let auth = AuthLayer::new(source);
        let retry = self.retry.unwrap_or_default();
        let executions = Arc::new(Executions {
            uncached: self.uncached_actions,
            windowed: self.action_windows.keys().cloned().collect(),
            cache_executions: self.cache_executions,
            cache_secure: self.cache_secure_actions,
            secure: Mutex::new(HashMap::new()),
        });
        // The routes below are read from the path under the base's own (a gateway may publish the API under one).
        let prefix: Arc<str> = base.prefix.as_str().into();
        // The API marks every response `Cache-Control: no-cache, no-store, must-revalidate` (`Expires: 0`),
        // whatever it holds: honoured, nothing would ever be cached. The entries are this client's own (the
        // partition: API host and client id, whose one token sees the same answers for every caller), and their
        // windows are the ones this builder sets.
        let cache = RedisCacheLayer::builder(store)
            .namespace(self.namespace)
            .partition(format!("{api_base}\n{client_id}"))
            .respect_response_cache_control(false)
            .origin_freshness(false)
            .fresh_for(self.fresh_for)
            .stale_for(self.stale_for)
            .stale_if_error_for(self.stale_if_error_for)
            .refresh_ahead(self.refresh_ahead)
            .store_timeout(self.store_timeout)
            .cache_post_when({
                let prefix = prefix.clone();
                move |parts| api_path(&prefix, parts.uri.path()).is_some_and(is_cached_post)
            })
            .windows_for(windows_by_route(
                prefix.clone(),
                self.action_windows,
                self.listing_windows,
            ))
            .tags({
                let prefix = prefix.clone();
                move |parts| action_tags(&prefix, parts)
            });
        #[cfg(feature = "compression")]
        let cache = match self.compress_above {
            Some(bytes) => cache.compress_above(bytes),
            None => cache,
        };
        #[cfg(feature = "redis")]
        let cache = match self.near_cache {
            Some(bytes) => cache.near_cache(bytes),
            None => cache,
        };
        let cache = cache.build()?;
        let handle = cache.handle();
        let stack = cache.layer(retry.layer(auth.layer(transport)));
        let service = if executions.uncached.is_empty() && executions.cache_executions {
            GenesysService::new(stack)
        } else {
            // Marked on the way in, so that calls made through `service()` are left uncached too.
            let executions = executions.clone();
            GenesysService::new(stack.map_request(move |mut request: Request<RequestBody>| {
                let action = api_path(&prefix, request.uri().path()).and_then(executed_action);
                let own_windows = matches!(
                    request.extensions().get::<CacheOverride>(),
                    Some(CacheOverride::Windows(_))
                );
                let skip = |id: &str| executions.skipped(id, own_windows);
                if request.method() == Method::POST && action.is_some_and(skip) {
                    request.extensions_mut().insert(CacheOverride::Skip);
                }
                request
            }))
        };
        let user_agent =
            HeaderValue::from_static(concat!("tower-redis-cache/", env!("CARGO_PKG_VERSION")));
        Ok(GenesysClient {
            inner: Arc::new(Inner {
                service,
                cache: handle,
                auth,
                api_base,
                base,
                max_pages: self.max_pages.max(1),
                user_agent,
                executions,
            }),
        })
    }
}

/// The windows of a request by its route: a Data Action's own (`.../actions/{id}/execute`, the id as the
/// client encodes it), or the listings' (`.../actions` and `.../actions/categories` pages, `.../query` searches).
fn windows_by_route(
    prefix: Arc<str>,
    actions: HashMap<String, Windows>,
    listings: Option<Windows>,
) -> impl Fn(&http::request::Parts) -> Option<Windows> + Send + Sync + 'static {
    use super::actions::{ACTIONS, CATEGORIES};
    move |parts| {
        let path = api_path(&prefix, parts.uri.path())?;
        if let Some(id) = executed_action(path) {
            return actions.get(id).copied();
        }
        if path == ACTIONS || path == CATEGORIES || path.ends_with("/query") {
            return listings;
        }
        None
    }
}

/// The tag of the Data Action listings (and anything under `.../actions` that is not one action's).
const LISTINGS_TAG: &str = "genesys:actions";

/// The tag of one Data Action's entries (its `GET` and its executions), by its id as the client encodes it.
fn action_tag(encoded_id: &str) -> String {
    format!("genesys:action:{encoded_id}")
}

/// The cache tags of a Data Actions request: an action's own routes (`.../actions/{id}`, `.../{id}/execute`,
/// ...) its tag; the listings (`.../actions`, `.../categories`, `.../drafts`, ...) theirs; a write to an
/// action both, since the listings show it. Testing an action (`.../{id}/test`) changes nothing.
fn action_tags(prefix: &str, parts: &http::request::Parts) -> Vec<String> {
    let Some(path) = api_path(prefix, parts.uri.path()) else {
        return Vec::new();
    };
    let rest = match path.strip_prefix(super::actions::ACTIONS) {
        Some("") => "",
        Some(rest) if rest.starts_with('/') => &rest[1..],
        _ => return Vec::new(),
    };
    let mut segments = rest.split('/');
    let id = segments.next().filter(|id| !id.is_empty());
    let tail = segments.next();
    let collection = matches!(id, None | Some("categories" | "drafts" | "certificates"));
    if collection {
        return vec![LISTINGS_TAG.to_owned()];
    }
    let Some(id) = id else {
        return Vec::new();
    };
    let reads = parts.method == Method::GET || parts.method == Method::HEAD || is_cached_post(path);
    if reads {
        vec![action_tag(id)]
    } else if tail == Some("test") {
        Vec::new()
    } else {
        vec![action_tag(id), LISTINGS_TAG.to_owned()]
    }
}

/// A request's path under the API base's own path `prefix` (`/api/v2/...`); `None` for one outside it.
fn api_path<'p>(prefix: &str, path: &'p str) -> Option<&'p str> {
    path.strip_prefix(prefix)
        .filter(|rest| rest.starts_with('/'))
}

/// The id (as the client encodes it) of the Data Action a path under the API base runs
/// (`/api/v2/integrations/actions/{id}/execute`).
fn executed_action(path: &str) -> Option<&str> {
    path.strip_prefix(super::actions::ACTIONS)?
        .strip_prefix('/')?
        .strip_suffix("/execute")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// `POST` endpoints that read rather than write, and so are cached: Data Action execution (keyed by its
/// input) and `.../query` searches. `path` is under the API base's own path ([`api_path`]).
fn is_cached_post(path: &str) -> bool {
    (path.starts_with("/api/v2/integrations/actions/") && path.ends_with("/execute"))
        || path.ends_with("/query")
}

#[cfg(feature = "memory")]
fn default_store() -> Result<Arc<dyn Store>, ConfigError> {
    Ok(Arc::new(crate::MemoryStore::new(64 * 1024 * 1024)))
}

#[cfg(not(feature = "memory"))]
fn default_store() -> Result<Arc<dyn Store>, ConfigError> {
    Err(ConfigError::new(
        Setting::Store,
        "none given: pass one with .store(..) (or enable the `memory` feature)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_action_requests_are_tagged_by_what_a_change_makes_stale() {
        // The tags of a request to `path` under a base whose own path is `prefix`.
        let tags_under = |prefix: &str, method: Method, path: &str| {
            let (parts, ()) = Request::builder()
                .method(method)
                .uri(format!("https://api.mypurecloud.ie{path}"))
                .body(())
                .unwrap()
                .into_parts();
            action_tags(prefix, &parts)
        };
        let tags = |method: Method, path: &str| tags_under("", method, path);
        let own = || vec!["genesys:action:custom_-_1".to_owned()];
        let listings = || vec!["genesys:actions".to_owned()];
        let both = || {
            vec![
                "genesys:action:custom_-_1".to_owned(),
                "genesys:actions".to_owned(),
            ]
        };
        let actions = "/api/v2/integrations/actions";
        for (method, path, expected) in [
            (Method::GET, format!("{actions}?pageSize=25"), listings()),
            (Method::GET, format!("{actions}/"), listings()),
            (Method::GET, format!("{actions}/categories"), listings()),
            (Method::GET, format!("{actions}/drafts"), listings()),
            (Method::GET, format!("{actions}/custom_-_1"), own()),
            (Method::HEAD, format!("{actions}/custom_-_1"), own()),
            (Method::POST, format!("{actions}/custom_-_1/execute"), own()),
            (Method::PATCH, format!("{actions}/custom_-_1"), both()),
            (Method::DELETE, format!("{actions}/custom_-_1"), both()),
            (
                Method::POST,
                format!("{actions}/custom_-_1/draft/publish"),
                both(),
            ),
            (
                Method::POST,
                format!("{actions}/custom_-_1/test"),
                Vec::new(),
            ),
            (Method::POST, actions.to_owned(), listings()),
            (
                Method::POST,
                "/api/v2/taskmanagement/workitems/query".to_owned(),
                Vec::new(),
            ),
            (
                Method::GET,
                "/api/v2/integrations/actionsx".to_owned(),
                Vec::new(),
            ),
        ] {
            assert_eq!(tags(method.clone(), &path), expected, "{method} {path}");
        }

        // Under a base with a path (a gateway's `/genesys`), routes are read below it; nothing outside it is one.
        let prefixed = |method: Method, path: &str| tags_under("/genesys", method, path);
        let execute = format!("/genesys{actions}/custom_-_1/execute");
        assert_eq!(prefixed(Method::POST, &execute), own());
        assert_eq!(
            prefixed(Method::PATCH, &format!("/genesys{actions}/custom_-_1")),
            both()
        );
        for outside in [
            format!("{actions}/custom_-_1"),
            format!("/genesysx{actions}/custom_-_1"),
        ] {
            assert_eq!(
                prefixed(Method::PATCH, &outside),
                Vec::<String>::new(),
                "{outside}"
            );
        }
    }

    #[test]
    fn listings_take_the_listing_windows_and_executions_their_actions() {
        let minute = std::time::Duration::from_secs(60);
        let listing = Windows::new(minute, minute, minute);
        let own = Windows::new(2 * minute, minute, minute);
        let actions = HashMap::from([("custom_-_1".to_owned(), own)]);
        let windows = windows_by_route("/genesys".into(), actions, Some(listing));
        let of = |method: Method, path: &str| {
            let (parts, ()) = Request::builder()
                .method(method)
                .uri(format!("https://proxy.example/genesys{path}?pageSize=25"))
                .body(())
                .unwrap()
                .into_parts();
            windows(&parts)
        };
        let actions = "/api/v2/integrations/actions";
        for (method, path, expected) in [
            (Method::GET, actions.to_owned(), Some(listing)),
            (Method::GET, format!("{actions}/categories"), Some(listing)),
            (
                Method::POST,
                "/api/v2/taskmanagement/workitems/query".to_owned(),
                Some(listing),
            ),
            (
                Method::POST,
                format!("{actions}/custom_-_1/execute"),
                Some(own),
            ),
            (Method::POST, format!("{actions}/custom_-_2/execute"), None),
            (Method::GET, format!("{actions}/custom_-_1"), None),
            (Method::GET, format!("{actions}/drafts"), None),
        ] {
            assert_eq!(of(method.clone(), &path), expected, "{method} {path}");
        }
    }

    #[test]
    fn paths_are_joined_to_the_base_host_or_refused() {
        let base = Base::parse(Setting::ApiBase, "https://api.mypurecloud.ie", false).unwrap();
        let join = |p: &str| base.join(p).map(|u| u.to_string());
        assert_eq!(
            join("/api/v2/integrations/actions?pageSize=25").unwrap(),
            "https://api.mypurecloud.ie/api/v2/integrations/actions?pageSize=25"
        );
        for bad in [
            "api/v2/x",
            ".evil.example/api",
            "@evil.example/api",
            "//evil.example/api",
            "https://evil.example/api",
            "/api/v2/../../admin",
            "/api/v2/./x",
            "/api/v2/x#frag",
            "/api/v2/x\\y",
            "/api/v2/x y",
            "",
        ] {
            assert!(join(bad).is_err(), "{bad:?} accepted: {:?}", join(bad));
        }
        // A `..` inside a query value is not a path segment.
        assert!(join("/api/v2/x?q=..").is_ok());

        let prefixed =
            Base::parse(Setting::ApiBase, "https://proxy.example/genesys/", false).unwrap();
        assert_eq!(
            prefixed.join("/api/v2/x").unwrap().to_string(),
            "https://proxy.example/genesys/api/v2/x"
        );
    }

    #[test]
    fn bases_must_be_https_unless_loopback_or_allowed() {
        for ok in [
            "https://api.mypurecloud.com",
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            assert!(Base::parse(Setting::ApiBase, ok, false).is_ok(), "{ok}");
        }
        let error = Base::parse(Setting::ApiBase, "http://api.example", false).unwrap_err();
        assert!(error.to_string().contains("allow_insecure_http"), "{error}");
        assert!(Base::parse(Setting::ApiBase, "http://api.example", true).is_ok());
        for bad in [
            "api.example",
            "/api",
            "ftp://api.example",
            "https://user:pw@api.example",
            "https://api.example/?x=1",
            "https://api.example/#x",
        ] {
            assert!(Base::parse(Setting::ApiBase, bad, true).is_err(), "{bad}");
        }
        let error =
            Base::parse(Setting::ApiBase, "https://u:hunter2@api.example", false).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("credentials") && !text.contains("hunter2"),
            "{text}"
        );
    }
}
