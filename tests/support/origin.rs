//! A counting origin service for cache tests: numbered answers, an optional gate that holds every call until
//! opened, a switch to fail, headers to add to every answer, and the parts of HTTP a shared cache must not
//! mix up (it names the `Authorization` it saw, and answers a `Range` with `206`). It answers a `HEAD` as a
//! server does: the `GET`'s header fields with its `Content-Length`, and no body.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tower_redis_cache::RequestBody;
use tower_redis_cache::error::BoxError;

/// Shared state of one origin.
pub struct Origin {
    calls: AtomicUsize,
    /// 0: answer 200; a status: answer that; 1: fail with a transport error.
    failure: AtomicU16,
    gate: watch::Sender<bool>,
    headers: Mutex<Vec<(HeaderName, HeaderValue)>>,
    echo_user: AtomicBool,
    echo_headers: AtomicBool,
    delay_ms: AtomicU64,
    etag: Mutex<Option<HeaderValue>>,
    body_bytes: AtomicUsize,
    methods: Mutex<Vec<Method>>,
}

impl Origin {
    /// An origin that answers at once.
    pub fn new() -> Arc<Self> {
        let (gate, _) = watch::channel(true);
        Arc::new(Origin {
            calls: AtomicUsize::new(0),
            failure: AtomicU16::new(0),
            gate,
            headers: Mutex::new(Vec::new()),
            echo_user: AtomicBool::new(false),
            echo_headers: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            etag: Mutex::new(None),
            body_bytes: AtomicUsize::new(0),
            methods: Mutex::new(Vec::new()),
        })
    }

    /// Tags every answer with `ETag: <etag>` from now on, and answers `304` with no body to a request whose
    /// `If-None-Match` names it.
    pub fn set_etag(&self, etag: &'static str) {
        *self.etag.lock().unwrap() = Some(HeaderValue::from_static(etag));
    }

    /// The body bytes the origin has written in all its answers.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes.load(Ordering::SeqCst)
    }

    /// Takes `delay` over every call from now on (after counting it), like a slow API.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Names the request's `Authorization` in every answer from now on (`"user":"<value>"`), as an API whose
    /// answers are per user does.
    pub fn echo_user(&self) {
        self.echo_user.store(true, Ordering::SeqCst);
    }

    /// Reflects every request header into the answer from now on, as `x-echo-<name>: <value>`, credentials
    /// included, as a debugging gateway does.
    pub fn echo_headers(&self) {
        self.echo_headers.store(true, Ordering::SeqCst);
    }

    /// Adds `name: value` to every answer from now on (`set-cookie`, `cache-control`, `vary`, ...).
    pub fn add_header(&self, name: &'static str, value: &'static str) {
        self.add_header_value(name, HeaderValue::from_static(value));
    }

    /// [`add_header`](Self::add_header) with any value (one a static string cannot hold).
    pub fn add_header_value(&self, name: &'static str, value: HeaderValue) {
        self.headers
            .lock()
            .unwrap()
            .push((HeaderName::from_static(name), value));
    }

    /// Stops adding the headers [`add_header`](Self::add_header) added.
    pub fn clear_headers(&self) {
        self.headers.lock().unwrap().clear();
    }

    /// The methods of the calls that reached the origin, in order.
    pub fn methods(&self) -> Vec<Method> {
        self.methods.lock().unwrap().clone()
    }

    /// How many calls reached the origin.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Holds every call (already waiting or new) until [`open`](Self::open).
    pub fn close(&self) {
        self.gate.send_replace(false);
    }

    /// Releases held calls.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Answers `status` with an error body from now on.
    pub fn fail_with(&self, status: StatusCode) {
        self.failure.store(status.as_u16(), Ordering::SeqCst);
    }

    /// Fails every call with a transport error from now on.
    pub fn fail_transport(&self) {
        self.failure.store(1, Ordering::SeqCst);
    }

    /// Answers 200 again.
    pub fn heal(&self) {
        self.failure.store(0, Ordering::SeqCst);
    }

    /// A service over this origin: `{"n":<call number>,"echo":<request body>}` with `content-type:
    /// application/json`, plus `"user":"<authorization>"` when asked to ([`echo_user`](Self::echo_user)). A request
    /// with `Range` gets `206` and the first byte of that.
    pub fn service(
        self: &Arc<Self>,
    ) -> impl tower::Service<
        Request<RequestBody>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        let origin = self.clone();
        tower::service_fn(move |request: Request<RequestBody>| {
            let origin = origin.clone();
            async move {
                let n = origin.calls.fetch_add(1, Ordering::SeqCst) + 1;
                origin
                    .methods
                    .lock()
                    .unwrap()
                    .push(request.method().clone());
                let head = request.method() == Method::HEAD;
                let user = request
                    .headers()
                    .get("authorization")
                    .filter(|_| origin.echo_user.load(Ordering::SeqCst))
                    .map(|v| v.to_str().unwrap().to_owned());
                let range = request.headers().contains_key("range");
                let echoed: Vec<(HeaderName, HeaderValue)> =
                    if origin.echo_headers.load(Ordering::SeqCst) {
                        request
                            .headers()
                            .iter()
                            .map(|(name, value)| {
                                let echo = format!("x-echo-{name}");
                                (HeaderName::try_from(echo).unwrap(), value.clone())
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                let etag = origin.etag.lock().unwrap().clone();
                let confirmed = etag
                    .as_ref()
                    .is_some_and(|etag| request.headers().get("if-none-match") == Some(etag));
                let body = request.into_body().collect().await?.to_bytes();
                let mut gate = origin.gate.subscribe();
                gate.wait_for(|open| *open).await?;
                let delay = origin.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                }
                match origin.failure.load(Ordering::SeqCst) {
                    0 => {}
                    1 => {
                        return Err::<Response<Full<Bytes>>, BoxError>("origin unreachable".into());
                    }
                    status => {
                        return Ok(Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(b"{\"error\":true}")))?);
                    }
                }
                let echo = if body.is_empty() {
                    Bytes::from_static(b"null")
                } else {
                    body
                };
                let mut out = format!("{{\"n\":{n},\"echo\":").into_bytes();
                out.extend_from_slice(&echo);
                if let Some(user) = user {
                    out.extend_from_slice(format!(",\"user\":{user:?}").as_bytes());
                }
                out.push(b'}');
                let mut response = Response::builder().header("content-type", "application/json");
                for (name, value) in origin.headers.lock().unwrap().iter() {
                    response = response.header(name, value);
                }
                if let Some(etag) = etag {
                    response = response.header("etag", etag);
                }
                for (name, value) in echoed {
                    response = response.header(name, value);
                }
                if confirmed {
                    return Ok(response
                        .status(StatusCode::NOT_MODIFIED)
                        .body(Full::new(Bytes::new()))?);
                }
                if range {
                    out.truncate(1);
                    let total = out.len();
                    response = response
                        .status(StatusCode::PARTIAL_CONTENT)
                        .header("content-range", format!("bytes 0-0/{total}"));
                }
                if head {
                    return Ok(response
                        .header("content-length", out.len())
                        .body(Full::new(Bytes::new()))?);
                }
                origin.body_bytes.fetch_add(out.len(), Ordering::SeqCst);
                Ok(response.body(Full::new(Bytes::from(out)))?)
            }
        })
    }
}
