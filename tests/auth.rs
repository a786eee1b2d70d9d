//! AuthLayer and ClientCredentials: single-flight token fetches, early refresh with paused time, 401 recovery,
//! typed token errors, and secrets kept out of errors and Debug output.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_redis_cache::RequestBody;
use tower_redis_cache::auth::error::TokenError;
use tower_redis_cache::auth::{AuthLayer, ClientCredentials, TokenSource};
use tower_redis_cache::error::{BoxError, Setting};

use crate::replay;
use replay::{Gated, streamed_put};

const CLIENT_ID: &str = "3f1c-client";
const SECRET: &str = "s3cr3t-Value-0123456789";

/// How the token endpoint answers.
#[derive(Clone)]
enum TokenAnswer {
    /// A new token `tok-<n>` living this many seconds.
    Issue(u64),
    /// This status and body.
    Fail(u16, &'static str),
    /// `429` with `Retry-After` of this many seconds.
    Limited(u64),
    /// Nothing, until the transport's 30 s timeout gives up.
    BlackHole,
}

/// The per-attempt timeout of the token endpoint's transport in these tests.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A token endpoint that records each request and issues numbered tokens after a short (virtual) delay.
#[derive(Clone)]
struct TokenEndpoint {
    answer: Arc<Mutex<TokenAnswer>>,
    issued: Arc<AtomicU32>,
    seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    /// Tokens the API accepts.
    valid: Arc<Mutex<HashSet<String>>>,
}

impl TokenEndpoint {
    fn new(answer: TokenAnswer) -> Self {
        TokenEndpoint {
            answer: Arc::new(Mutex::new(answer)),
            issued: Arc::new(AtomicU32::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
            valid: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn revoke_all(&self) {
        self.valid.lock().unwrap().clear();
    }

    fn http(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let endpoint = self.clone();
        service_fn(move |request: Request<Full<Bytes>>| {
            let endpoint = endpoint.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await?.to_bytes();
                endpoint.seen.lock().unwrap().push((parts.headers, body));
                let answer = endpoint.answer.lock().unwrap().clone();
                if let TokenAnswer::BlackHole = answer {
                    tokio::time::sleep(FETCH_TIMEOUT).await;
                    return Err("token request timed out".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let TokenAnswer::Limited(seconds) = answer {
                    return Ok(Response::builder()
                        .status(429)
                        .header("retry-after", seconds)
                        .body(Full::new(Bytes::from_static(
                            b"{\"error\":\"rate_limited\"}",
                        )))?);
                }
                let (status, body) = match answer {
                    TokenAnswer::Issue(expires_in) => {
                        let n = endpoint.issued.fetch_add(1, Ordering::SeqCst) + 1;
                        let token = format!("tok-{n}");
                        endpoint.valid.lock().unwrap().insert(token.clone());
                        let body = format!(
                            r#"{{"access_token":"{token}","token_type":"bearer","expires_in":{expires_in}}}"#
                        );
                        (200, body)
                    }
                    TokenAnswer::Fail(status, body) => (status, body.to_owned()),
                    TokenAnswer::BlackHole | TokenAnswer::Limited(_) => {
                        unreachable!("answered above")
                    }
                };
                Ok::<_, BoxError>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))?,
                )
            }
        })
    }

    fn source(&self) -> impl TokenSource + std::fmt::Debug {
        ClientCredentials::new(
            self.http(),
            "http://login.test/oauth/token",
            CLIENT_ID,
            SECRET,
        )
        .unwrap()
    }
}

/// An API that accepts the endpoint's valid tokens and records the token and body of each call.
#[derive(Clone)]
struct Api {
    valid: Arc<Mutex<HashSet<String>>>,
    calls: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl Api {
    fn new(tokens: &TokenEndpoint) -> Self {
        Api {
            valid: tokens.valid.clone(),
            calls: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn calls(&self) -> Vec<(String, Bytes)> {
        self.calls.lock().unwrap().clone()
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<RequestBody>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let api = self.clone();
        service_fn(move |request: Request<RequestBody>| {
            let api = api.clone();
            async move {
                let auth = request
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                assert!(request.headers()["authorization"].is_sensitive());
                let body = request.into_body().collect().await?.to_bytes();
                let token = auth.strip_prefix("Bearer ").unwrap_or("").to_owned();
                api.calls
                    .lock()
                    .unwrap()
                    .push((token.clone(), body.clone()));
                let ok = api.valid.lock().unwrap().contains(&token);
                let (status, body) = if ok {
                    (200, body)
                } else {
                    (
                        401,
                        Bytes::from_static(br#"{"code":"bad.credentials","status":401}"#),
                    )
                };
                Ok::<_, BoxError>(Response::builder().status(status).body(Full::new(body))?)
            }
        })
    }
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://api.test/api/v2/integrations/actions")
        .body(Full::default())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn hundred_concurrent_requests_share_one_token_fetch_when_cold_and_when_expired() {
    let tokens = TokenEndpoint::new(TokenAnswer::Issue(120));
    let api = Api::new(&tokens);
    let layer = AuthLayer::new(tokens.source());
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(api.service());
    assert_eq!(tokens.requests(), 0, "no token before a request needs one");

    for round in 1..=2 {
        let tasks: Vec<_> = (0..100)
            .map(|_| tokio::spawn(client.clone().oneshot(get())))
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        assert_eq!(tokens.requests(), round, "round {round}");
        assert_eq!(layer.token_fetches(), round as u64);
        // Past expiry (and the refresh window): the next round needs a new token.
        tokio::time::advance(Duration::from_secs(121)).await;
    }
    assert!(
        api.calls()
            .iter()
            .all(|(token, _)| token == "tok-1" || token == "tok-2")
    );
}

#[tokio::test(start_paused = true)]
async fn token_is_reused_then_refreshed_sixty_seconds_before_expiry() {
    let tokens = TokenEndpoint::new(TokenAnswer::Issue(120));
    let api = Api::new(&tokens);
    let client = ServiceBuilder::new()
        .layer(
            AuthLayer::builder(tokens.source())
                .skew(Duration::from_secs(60))
                .build(),
        )
        .service(api.service());
    let start = tokio::time::Instant::now();

    client.clone().oneshot(get()).await.unwrap();
    assert_eq!(tokens.requests(), 1);
    // The token was requested at 0 s; expires at 120 s; refresh from 60 s.
    tokio::time::advance(Duration::from_secs(30) - start.elapsed()).await;
    client.clone().oneshot(get()).await.unwrap();
    assert_eq!(tokens.requests(), 1, "at 30 s the token is reused");

    tokio::time::advance(Duration::from_secs(61) - start.elapsed()).await;
    // In the refresh window the call goes on with the current token while one refresh runs beside it.
    let response = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(61), "no wait");
    client.clone().oneshot(get()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(tokens.requests(), 2, "at 61 s one refresh");
    client.clone().oneshot(get()).await.unwrap();
    assert_eq!(tokens.requests(), 2);
    let used: Vec<String> = api.calls().into_iter().map(|(t, _)| t).collect();
    assert_eq!(used, ["tok-1", "tok-1", "tok-1", "tok-1", "tok-2"]);
}

#[tokio::test(start_paused = true)]
async fn a_401_refreshes_once_and_replays_the_same_request() {
    let tokens = TokenEndpoint::new(TokenAnswer::Issue(3600));
    let api = Api::new(&tokens);
    let layer = AuthLayer::new(tokens.source());
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(api.service());
    client.clone().oneshot(get()).await.unwrap();

    // The server revokes the token (say, the org rotated credentials); the next call sees a 401.
    tokens.revoke_all();
    let body = r#"{"input":{"orderId":"A-17"}}"#;
    let request = Request::post("http://api.test/api/v2/integrations/actions/x/execute")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        &response.into_body().collect().await.unwrap().to_bytes()[..],
        body.as_bytes()
    );
    assert_eq!(tokens.requests(), 2, "one refresh");
    let calls = api.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        (calls[1].0.as_str(), &calls[1].1[..]),
        ("tok-1", body.as_bytes())
    );
    assert_eq!(
        (calls[2].0.as_str(), &calls[2].1[..]),
        ("tok-2", body.as_bytes())
    );
}

#[tokio::test(start_paused = true)]
async fn a_persistent_401_makes_two_attempts_and_one_refresh() {
    let tokens = TokenEndpoint::new(TokenAnswer::Issue(3600));
    let api = Api::new(&tokens);
    // An API that accepts no token at all.
    let api = Api {
        valid: Arc::new(Mutex::new(HashSet::new())),
        ..api
    };
    let client = ServiceBuilder::new()
        .layer(AuthLayer::new(tokens.source()))
        .service(api.service());
    let response = client.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(api.calls().len(), 2, "two API attempts");
    assert_eq!(tokens.requests(), 2, "the first token and one refresh");
}

#[tokio::test(start_paused = true)]
async fn concurrent_401s_on_one_token_cause_one_refresh() {
    let tokens = TokenEndpoint::new(TokenAnswer::Issue(3600));
    let api = Api::new(&tokens);
    let client = ServiceBuilder::new()
        .layer(AuthLayer::new(tokens.source()))
        .service(api.service());
    client.clone().oneshot(get()).await.unwrap();
    tokens.revoke_all();
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(client.clone().oneshot(get())))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // A 401 seen with tok-1 after tok-2 replaced it must not throw tok-2 away.
    assert_eq!(tokens.requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn token_request_is_a_basic_auth_form_post() {
    let tokens = TokenEndpoint::new(TokenAnswer::Issue(60));
    let api = Api::new(&tokens);
    let client = ServiceBuilder::new()
        .layer(AuthLayer::new(tokens.source()))
        .service(api.service());
    client.oneshot(get()).await.unwrap();
    let (headers, body) = tokens.seen.lock().unwrap()[0].clone();
    // base64("3f1c-client:s3cr3t-Value-0123456789")
    assert_eq!(
        headers["authorization"],
        "Basic M2YxYy1jbGllbnQ6czNjcjN0LVZhbHVlLTAxMjM0NTY3ODk="
    );
    assert!(headers["authorization"].is_sensitive());
    assert_eq!(headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(&body[..], b"grant_type=client_credentials");

    let tokens = TokenEndpoint::new(TokenAnswer::Issue(60));
    let source = ClientCredentials::new(tokens.http(), "https://idp.test/token", "id 1", "p&ss")
        .unwrap()
        .credentials_in_body(true)
        .scope("read write")
        .param("audience", "https://api.example/v2/")
        .unwrap();
    let debug = format!("{source:?}");
    assert!(
        debug.contains("audience") && !debug.contains("api.example/v2"),
        "{debug}"
    );
    let client = ServiceBuilder::new()
        .layer(AuthLayer::new(source))
        .service(Api::new(&tokens).service());
    client.oneshot(get()).await.unwrap();
    let (headers, body) = tokens.seen.lock().unwrap()[0].clone();
    assert!(headers.get("authorization").is_none());
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        "grant_type=client_credentials&scope=read+write&audience=https%3A%2F%2Fapi.example%2Fv2%2F\
         &client_id=id+1&client_secret=p%26ss"
    );

    // A field the grant sets itself cannot be added a second time.
    for name in ["grant_type", "client_secret", "scope", ""] {
        let source = ClientCredentials::<_, Full<Bytes>>::new(
            tokens.http(),
            "https://idp.test/token",
            "id",
            "s",
        )
        .unwrap();
        let error = source.param(name, "x").unwrap_err();
        assert_eq!(error.setting(), Setting::ClientCredentials, "{name}");
    }
}

async fn token_error(answer: TokenAnswer) -> (TokenError, String, String) {
    let tokens = TokenEndpoint::new(answer);
    let api = Api::new(&tokens);
    let client = ServiceBuilder::new()
        .layer(AuthLayer::new(tokens.source()))
        .service(api.service());
    let error = client.oneshot(get()).await.unwrap_err();
    assert!(api.calls().is_empty(), "no API call without a token");
    let display = error.to_string();
    let debug = format!("{error:?}");
    let error = *error.downcast::<TokenError>().expect("a TokenError");
    (error, display, debug)
}

#[tokio::test(start_paused = true)]
async fn rejected_credentials_name_status_and_oauth_error_without_the_secret() {
    let (error, display, debug) = token_error(TokenAnswer::Fail(
        401,
        r#"{"error":"invalid_client","description":"bad client s3cr3t-Value-0123456789"}"#,
    ))
    .await;
    assert_eq!(error.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(error.oauth_error(), Some("invalid_client"));
    assert!(
        display.contains("401") && display.contains("invalid_client"),
        "{display}"
    );
    for text in [&display, &debug] {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
    }

    // Even an endpoint that echoes the secret in its description does not get it into the error.
    let (_, display, debug) = token_error(TokenAnswer::Fail(
        400,
        r#"{"error":"invalid_request","error_description":"secret s3cr3t-Value-0123456789 unknown"}"#,
    ))
    .await;
    assert!(
        display.contains("invalid_request") && display.contains("***"),
        "{display}"
    );
    assert!(!display.contains(SECRET) && !debug.contains(SECRET));
}

#[tokio::test(start_paused = true)]
async fn malformed_token_responses_are_clear_errors() {
    for (body, says) in [
        ("{not json", "not a JSON token object"),
        (
            r#"{"token_type":"bearer","expires_in":60}"#,
            "missing access_token",
        ),
        ("", "not a JSON token object"),
    ] {
        let (error, display, _) = token_error(TokenAnswer::Fail(200, body)).await;
        assert!(matches!(error, TokenError::Malformed(_)), "{display}");
        assert!(display.contains(says), "{display}");
    }
    // A redirect is not followed.
    let (error, display, _) = token_error(TokenAnswer::Fail(302, "")).await;
    assert_eq!(error.status(), Some(StatusCode::FOUND), "{display}");
}

#[tokio::test(start_paused = true)]
async fn unreachable_token_endpoint_is_a_typed_error() {
    let down = service_fn(|_req: Request<Full<Bytes>>| async {
        Err::<Response<Full<Bytes>>, BoxError>("connection refused".into())
    });
    let source =
        ClientCredentials::new(down, "http://login.test/oauth/token", CLIENT_ID, SECRET).unwrap();
    let client = ServiceBuilder::new()
        .layer(AuthLayer::new(source))
        .service(Api::new(&TokenEndpoint::new(TokenAnswer::Issue(1))).service());
    let error = client.oneshot(get()).await.unwrap_err();
    let error = error.downcast_ref::<TokenError>().expect("a TokenError");
    assert!(matches!(error, TokenError::Unreachable(_)));
    assert!(error.to_string().contains("connection refused"), "{error}");
}

/// The [`TokenError`] in an error's chain (under the retry layer's wrapper).
fn find_token_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a TokenError> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(token) = e.downcast_ref::<TokenError>() {
            return Some(token);
        }
        current = e.source();
    }
    None
}

/// Spawns `n` calls through `client` at once and returns each result with the (virtual) time it took.
async fn concurrent<S>(client: S, n: usize) -> Vec<(Result<StatusCode, BoxError>, Duration)>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let result = client.oneshot(get()).await.map(|r| r.status());
                (result, start.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(start_paused = true)]
async fn fifty_callers_and_a_black_holed_token_endpoint_make_one_fetch_and_fail_within_its_timeout()
{
    let tokens = TokenEndpoint::new(TokenAnswer::BlackHole);
    let api = Api::new(&tokens);
    let auth = AuthLayer::new(tokens.source());
    // The retry layer above must not turn one dead fetch into one per attempt.
    let client = ServiceBuilder::new()
        .layer(tower_redis_cache::RetryLayer::default())
        .layer(auth.clone())
        .service(api.service());

    let results = concurrent(client.clone(), 50).await;
    for (result, took) in &results {
        let error = result.as_ref().unwrap_err();
        assert!(
            error.to_string().contains("token request timed out"),
            "{error}"
        );
        assert!(*took <= FETCH_TIMEOUT, "a caller waited {took:?}");
    }
    assert_eq!(tokens.requests(), 1, "one fetch for fifty callers");
    assert_eq!(auth.token_fetches(), 1);
    assert!(api.calls().is_empty());

    // Remembered for the cooldown (1 s): a caller right after gets the failure at once, with no new fetch.
    let start = tokio::time::Instant::now();
    assert!(client.clone().oneshot(get()).await.is_err());
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(tokens.requests(), 1);

    // After it, the endpoint is asked again, once, and recovers.
    tokio::time::advance(Duration::from_secs(1)).await;
    *tokens.answer.lock().unwrap() = TokenAnswer::Issue(3600);
    let results = concurrent(client, 50).await;
    assert!(
        results
            .iter()
            .all(|(r, _)| *r.as_ref().unwrap() == StatusCode::OK)
    );
    assert_eq!(tokens.requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn invalid_client_makes_one_fetch_and_is_neither_retried_nor_asked_again_soon() {
    let tokens = TokenEndpoint::new(TokenAnswer::Fail(
        401,
        r#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
    ));
    let api = Api::new(&tokens);
    let client = ServiceBuilder::new()
        .layer(tower_redis_cache::RetryLayer::default())
        .layer(AuthLayer::new(tokens.source()))
        .service(api.service());

    let results = concurrent(client.clone(), 50).await;
    for (result, _) in results {
        let error = result.unwrap_err();
        let token = find_token_error(&*error).expect("a TokenError");
        assert_eq!(token.oauth_error(), Some("invalid_client"));
        assert!(!token.is_transient());
        let retry = error
            .downcast_ref::<tower_redis_cache::retry::error::RetryError>()
            .expect("the retry layer's error");
        assert_eq!(retry.attempts(), 1, "not retried");
    }
    assert_eq!(tokens.requests(), 1, "one fetch, no retry");

    // A rejection is remembered for 30 s, not the 1 s of a transient failure.
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(client.clone().oneshot(get()).await.is_err());
    assert_eq!(tokens.requests(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(client.oneshot(get()).await.is_err());
    assert_eq!(tokens.requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_token_endpoint_is_left_alone_for_its_retry_after() {
    let tokens = TokenEndpoint::new(TokenAnswer::Limited(20));
    let api = Api::new(&tokens);
    let client = ServiceBuilder::new()
        .layer(AuthLayer::new(tokens.source()))
        .service(api.service());
    let error = client.clone().oneshot(get()).await.unwrap_err();
    let token = find_token_error(&*error).expect("a TokenError");
    assert_eq!(token.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(token.retry_after(), Some(Duration::from_secs(20)));
    assert!(token.is_transient());
    assert!(token.to_string().ends_with("; retry after 20 s"), "{token}");

    // Well past the 1 s cooldown of a transient failure, but inside the 20 s asked for: not asked again.
    tokio::time::advance(Duration::from_secs(19)).await;
    *tokens.answer.lock().unwrap() = TokenAnswer::Issue(3600);
    let error = client.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(
        find_token_error(&*error).and_then(TokenError::retry_after),
        Some(Duration::from_secs(20))
    );
    assert_eq!(tokens.requests(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    let response = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(tokens.requests(), 2);

    // An endpoint asking for an hour is asked again after the cap.
    let tokens = TokenEndpoint::new(TokenAnswer::Limited(3600));
    let api = Api::new(&tokens);
    let client = ServiceBuilder::new()
        .layer(
            AuthLayer::builder(tokens.source())
                .retry_after_cap(Duration::from_secs(5))
                .build(),
        )
        .service(api.service());
    assert!(client.clone().oneshot(get()).await.is_err());
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(client.clone().oneshot(get()).await.is_err());
    assert_eq!(tokens.requests(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    *tokens.answer.lock().unwrap() = TokenAnswer::Issue(3600);
    client.oneshot(get()).await.unwrap();
    assert_eq!(tokens.requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_current_token_and_is_not_repeated_on_every_call() {
    let tokens = TokenEndpoint::new(TokenAnswer::Issue(120));
    let api = Api::new(&tokens);
    let client = ServiceBuilder::new()
        .layer(AuthLayer::new(tokens.source()))
        .service(api.service());
    client.clone().oneshot(get()).await.unwrap();

    // In the refresh window, with the endpoint failing: calls keep the current token, one refresh is tried.
    tokio::time::advance(Duration::from_secs(70)).await;
    *tokens.answer.lock().unwrap() = TokenAnswer::Fail(503, "{}");
    for _ in 0..10 {
        let response = client.clone().oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        tokens.requests(),
        2,
        "the first token and one failed refresh"
    );
    // After the 1 s cooldown, the next call tries again.
    tokio::time::advance(Duration::from_secs(1)).await;
    *tokens.answer.lock().unwrap() = TokenAnswer::Issue(120);
    client.clone().oneshot(get()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(tokens.requests(), 3);
    client.oneshot(get()).await.unwrap();
    let used: Vec<String> = api.calls().into_iter().map(|(t, _)| t).collect();
    assert_eq!(used.last().map(String::as_str), Some("tok-2"));
}

#[tokio::test(start_paused = true)]
async fn a_401_on_a_request_too_large_to_replay_still_invalidates_the_token() {
    let tokens = TokenEndpoint::new(TokenAnswer::Issue(3600));
    let api = Api::new(&tokens);
    let client = ServiceBuilder::new()
        .layer(
            AuthLayer::builder(tokens.source())
                .max_body_size(16)
                .build(),
        )
        .service(api.service());
    client.clone().oneshot(get()).await.unwrap();
    tokens.revoke_all();

    let large = Request::post("http://api.test/api/v2/integrations/actions/x/execute")
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .unwrap();
    let response = client.clone().oneshot(large).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "not replayed");
    assert_eq!(tokens.requests(), 1);
    // The next request does not send the rejected token again.
    let response = client.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(tokens.requests(), 2);
    let used: Vec<String> = api.calls().into_iter().map(|(t, _)| t).collect();
    assert_eq!(used, ["tok-1", "tok-1", "tok-2"]);
}

#[tokio::test(start_paused = true)]
async fn streamed_bodies_are_held_for_a_replay_only_within_the_in_flight_budget() {
    let tokens = TokenEndpoint::new(TokenAnswer::Issue(3600));
    let origin = Gated::new();
    let client = ServiceBuilder::new()
        .layer(
            AuthLayer::builder(tokens.source())
                .max_body_size(8)
                .max_in_flight_bytes(8)
                .build(),
        )
        .service(origin.origin(401));
    let a = tokio::spawn(
        client
            .clone()
            .oneshot(streamed_put("/a", &["abcd", "efgh"])),
    );
    origin.reached().await;
    // `/a` holds all 8 bytes: `/b`'s body goes on once, whole, and its 401 is returned as is.
    let b = client
        .clone()
        .oneshot(streamed_put("/b", &["ij", "kl"]))
        .await
        .unwrap();
    assert_eq!(b.status(), StatusCode::UNAUTHORIZED);

    origin.open();
    let a = a.await.unwrap().unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    // `/a` is done and gave its bytes back: the same body as `/b`'s is held and replayed now.
    let d = client
        .oneshot(streamed_put("/d", &["ij", "kl"]))
        .await
        .unwrap();
    assert_eq!(d.status(), StatusCode::OK);
    assert_eq!(origin.bodies("/a"), [&b"abcdefgh"[..]; 2]);
    assert_eq!(origin.bodies("/b"), [&b"ijkl"[..]]);
    assert_eq!(origin.bodies("/d"), [&b"ijkl"[..]; 2]);
}

#[test]
fn debug_output_redacts_credentials() {
    let tokens = TokenEndpoint::new(TokenAnswer::Issue(1));
    let source = tokens.source();
    let debug = format!("{source:?}");
    assert!(debug.contains(CLIENT_ID));
    assert!(!debug.contains(SECRET), "{debug}");
    let layer = AuthLayer::new(tokens.source());
    assert!(!format!("{layer:?}").contains(SECRET));
    let error = ClientCredentials::<_, Full<Bytes>>::new(
        tokens.http(),
        "login.test/oauth",
        CLIENT_ID,
        SECRET,
    )
    .unwrap_err();
    assert!(error.to_string().contains("absolute"), "{error}");
}
