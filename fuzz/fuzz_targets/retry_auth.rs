//! `RetryLayer` over `AuthLayer` (OAuth2 client credentials), driven by arbitrary API and token-endpoint
//! answers (statuses, `Retry-After` and rate-limit headers, token bodies), on paused Tokio time.
//!
//! Besides "no panic, no hang", it checks what the layers promise: a request reaches the API at most twice per
//! attempt (an attempt, and one replay after a `401`), every time with its whole body byte for byte (a body its
//! caller made whole, or one streamed in arbitrary parts past small body caps and replay budgets), no body is held
//! for a replay once every call has ended, and neither the client secret nor any token the endpoint handed out
//! appears in an error or in the Debug output of the layers.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_redis_cache::auth::{AuthLayer, ClientCredentials};
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{RequestBody, RetryLayer};

const SECRET: &str = "s3cr3t-FUZZ";
/// Every token the endpoint hands out starts with this.
const TOKEN: &str = "tok-FUZZ-";

/// Header names the two layers read.
const NAMES: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "ratelimit",
    "ratelimit-reset",
    "ratelimit-remaining",
    "ratelimit-policy",
    "x-ratelimit-reset",
    "x-ratelimit-remaining",
    "x-ratelimit-limit",
    "www-authenticate",
    "content-type",
    "content-length",
    "date",
    "x-should-retry",
];

#[derive(Arbitrary, Debug)]
struct Header {
    name: u8,
    value: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Answer {
    status: u16,
    headers: Vec<Header>,
    body: Vec<u8>,
    /// A transport error instead of an answer.
    fail: bool,
}

/// A token endpoint's answer: a well-formed token (with odd lifetimes), or any bytes.
#[derive(Arbitrary, Debug)]
enum TokenBody {
    Token {
        expires_in: Option<i64>,
        expires_in_text: bool,
        token_type: Option<String>,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct TokenAnswer {
    status: u16,
    headers: Vec<Header>,
    body: TokenBody,
    fail: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A request: `GET`, or a `POST` (retried only where it is safe), its body whole or streamed in these parts.
    Send {
        post: bool,
        idempotency_key: bool,
        streamed: Option<Vec<Vec<u8>>>,
    },
    /// Two at once: they share one token fetch, and hold their bodies (streamed in these parts) together.
    Together {
        streamed: Option<Vec<Vec<u8>>>,
    },
    Wait(u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_attempts: u8,
    base_ms: u16,
    max_ms: u32,
    deadline_s: u16,
    cap_s: u16,
    budget: bool,
    /// Each layer's body cap, and the replay budget over it (retry's may not be below its cap; auth's may).
    bodies: Option<(u16, u16, u16)>,
    /// Auth around retry rather than retry around auth: then auth reads the bodies as they come.
    auth_outside: bool,
    skew_s: u16,
    api: Vec<Answer>,
    tokens: Vec<TokenAnswer>,
    ops: Vec<Op>,
}

fn headers(list: &[Header]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for h in list {
        if let Ok(v) = HeaderValue::from_bytes(&h.value) {
            map.append(
                HeaderName::from_static(NAMES[h.name as usize % NAMES.len()]),
                v,
            );
        }
    }
    map
}

fn answer(status: u16, list: &[Header], body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    *response.headers_mut() = headers(list);
    response
}

/// Fails the run if `text` shows a secret.
fn no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET) && !text.contains(TOKEN),
        "{what} shows a secret: {text}"
    );
}

/// A body streamed in parts, as a server's upload comes: no size hint, ended with its last part.
struct Parts(VecDeque<Bytes>);

impl Body for Parts {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|part| Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// A body's length and FNV-1a hash, which the API checks each copy it gets against.
fn sum(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}:{hash:x}", bytes.len())
}

fn has(bytes: &[u8], needle: &[u8]) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// Whether the input itself spells the secrets' marker somewhere the layers may quote (a `token_type`, an
/// error body): then finding it in an error proves nothing.
fn spells_marker(input: &Input) -> bool {
    let marker = b"FUZZ";
    let in_headers = |list: &[Header]| list.iter().any(|h| has(&h.value, marker));
    input
        .api
        .iter()
        .any(|a| has(&a.body, marker) || in_headers(&a.headers))
        || input.tokens.iter().any(|t| {
            in_headers(&t.headers)
                || match &t.body {
                    TokenBody::Raw(bytes) => has(bytes, marker),
                    TokenBody::Token { token_type, .. } => token_type
                        .as_deref()
                        .is_some_and(|t| has(t.as_bytes(), marker)),
                }
        })
}

fuzz_target!(|input: Input| {
    let check_secrets = !spells_marker(&input);
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let tokens = Arc::new(Mutex::new(VecDeque::from(input.tokens)));
        let issued = Arc::new(AtomicU32::new(0));
        let endpoint = {
            let issued = issued.clone();
            tower::service_fn(move |_: Request<Full<Bytes>>| {
                let next = tokens.lock().ok().and_then(|mut t| t.pop_front());
                let n = issued.fetch_add(1, Ordering::Relaxed);
                async move {
                    let Some(t) = next else {
                        let body = format!(r#"{{"access_token":"{TOKEN}{n}","expires_in":3600}}"#);
                        return Ok::<_, BoxError>(answer(200, &[], body.into_bytes()));
                    };
                    if t.fail {
                        return Err("the token endpoint is unreachable".into());
                    }
                    let body = match t.body {
                        TokenBody::Raw(bytes) => bytes,
                        TokenBody::Token {
                            expires_in,
                            expires_in_text,
                            token_type,
                        } => {
                            let mut o = format!(r#"{{"access_token":"{TOKEN}{n}""#);
                            if let Some(e) = expires_in {
                                if expires_in_text {
                                    o.push_str(&format!(r#","expires_in":"{e}""#));
                                } else {
                                    o.push_str(&format!(r#","expires_in":{e}"#));
                                }
                            }
                            if let Some(t) = token_type {
                                o.push_str(&format!(r#","token_type":{t:?}"#));
                            }
                            o.push('}');
                            o.into_bytes()
                        }
                    };
                    Ok(answer(t.status, &t.headers, body))
                }
            })
        };
        let Ok(source) =
            ClientCredentials::new(endpoint, "https://login.test/oauth/token", "client", SECRET)
        else {
            return;
        };
        let mut auth =
            AuthLayer::builder(source).skew(Duration::from_secs(u64::from(input.skew_s % 7200)));
        if let Some((cap, _, budget)) = input.bodies {
            auth = auth
                .max_body_size(usize::from(cap))
                .max_in_flight_bytes(usize::from(budget));
        }
        let auth = auth.build();
        let mut retry = RetryLayer::builder()
            .max_attempts(u32::from(input.max_attempts % 8).max(1))
            .base_delay(Duration::from_millis(u64::from(input.base_ms)))
            .max_delay(Duration::from_millis(u64::from(input.max_ms % 600_000)))
            .deadline(Duration::from_secs(u64::from(input.deadline_s % 600)))
            .retry_after_cap(Duration::from_secs(u64::from(input.cap_s % 600)))
            .jitter_seed(7);
        if !input.budget {
            retry = retry.no_budget();
        }
        if let Some((cap, over, _)) = input.bodies {
            retry = retry
                .max_body_size(usize::from(cap))
                .max_in_flight_bytes(usize::from(cap) + usize::from(over));
        }
        let Ok(retry) = retry.build() else { return };
        let attempts = u32::from(input.max_attempts % 8).max(1);

        let api = Arc::new(Mutex::new(VecDeque::from(input.api)));
        let calls = Arc::new(AtomicU32::new(0));
        let origin = {
            let calls = calls.clone();
            tower::service_fn(move |request: Request<RequestBody>| {
                let next = api.lock().ok().and_then(|mut a| a.pop_front());
                calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    let bearer = request
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("Bearer "));
                    assert!(bearer, "a request reached the API without its token");
                    let expected = request.headers().get("x-sum").cloned();
                    let body = request.into_body().collect().await?.to_bytes();
                    assert_eq!(
                        expected.as_ref().and_then(|v| v.to_str().ok()),
                        Some(sum(&body).as_str()),
                        "a body reached the API altered"
                    );
                    match next {
                        Some(a) if a.fail => Err::<_, BoxError>("connection reset".into()),
                        Some(a) => Ok(answer(a.status, &a.headers, a.body)),
                        None => Ok(answer(200, &[], b"{}".to_vec())),
                    }
                }
            })
        };
        type Sent = Request<Either<Full<Bytes>, Parts>>;
        let (service, debug): (BoxCloneService<Sent, Response<Full<Bytes>>, BoxError>, _) =
            if input.auth_outside {
                let service = auth.layer(retry.layer(origin));
                let debug = format!("{service:?}");
                (BoxCloneService::new(service), debug)
            } else {
                let service = retry.layer(auth.layer(origin));
                let debug = format!("{service:?}");
                (BoxCloneService::new(service), debug)
            };
        let no_secret = move |what: &str, text: &str| {
            if check_secrets {
                no_secret(what, text);
            }
        };
        no_secret("the services' Debug", &debug);

        let send = |post: bool, key: bool, streamed: Option<Vec<Vec<u8>>>, alone: bool| {
            let service = service.clone();
            let calls = calls.clone();
            async move {
                let before = calls.load(Ordering::Relaxed);
                let streamed: Option<Vec<Bytes>> =
                    streamed.map(|parts| parts.into_iter().take(64).map(Bytes::from).collect());
                let whole = streamed
                    .as_ref()
                    .map_or(b"{\"a\":1}".to_vec(), |parts| parts.concat());
                let mut request = Request::builder()
                    .method(if post { "POST" } else { "GET" })
                    .uri("https://api.test/things")
                    .header("x-sum", sum(&whole));
                if key {
                    request = request.header("idempotency-key", "k1");
                }
                let body = match streamed {
                    None => Either::Left(Full::new(Bytes::from(whole))),
                    Some(parts) => Either::Right(Parts(parts.into())),
                };
                let Ok(request) = request.body(body) else {
                    return;
                };
                match service.oneshot(request).await {
                    Ok(response) => {
                        no_secret("a response's Debug", &format!("{response:?}"));
                        let _ = response.into_body().collect().await;
                    }
                    Err(error) => {
                        no_secret("an error's Debug", &format!("{error:?}"));
                        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
                        while let Some(e) = source {
                            no_secret("an error", &e.to_string());
                            source = e.source();
                        }
                    }
                }
                let made = calls.load(Ordering::Relaxed) - before;
                // Alone, a request makes at most an attempt and a replay after a `401`, per attempt.
                assert!(
                    !alone || made <= 2 * attempts,
                    "{made} calls for {attempts} attempts"
                );
            }
        };
        for op in input.ops.into_iter().take(16) {
            match op {
                Op::Send {
                    post,
                    idempotency_key,
                    streamed,
                } => send(post, idempotency_key, streamed, true).await,
                Op::Together { streamed } => {
                    tokio::join!(
                        send(false, false, streamed.clone(), false),
                        send(true, false, streamed, false)
                    );
                }
                Op::Wait(ms) => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
            }
        }
        // Every call has ended: no body is held for a replay any more.
        for (what, layer) in [
            ("retry", format!("{retry:?}")),
            ("auth", format!("{auth:?}")),
        ] {
            assert!(
                layer.contains("ByteBudget { used: 0,"),
                "{what} still holds bodies: {layer}"
            );
        }
    });
});
