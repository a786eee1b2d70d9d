//! Tracing spans as a `tracing-subscriber` user sees them. A test binary of its own: tracing caches each
//! callsite's interest process-wide, so a test on another thread hitting the same callsites without a
//! subscriber could race with the scoped subscriber installed here.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_redis_cache::{MemoryStore, RedisCacheLayer, RequestBody};

/// Span fields as a subscriber sees them: span name -> every recorded field, in order.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(String, Fields)>>>);

type Fields = HashMap<String, String>;

struct Recorder<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Recorder<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for Captured
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = HashMap::new();
        attrs.record(&mut Recorder(&mut fields));
        fields.insert("#id".into(), id.into_u64().to_string());
        self.0
            .lock()
            .unwrap()
            .push((attrs.metadata().name().to_owned(), fields));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut spans = self.0.lock().unwrap();
        let id = id.into_u64().to_string();
        if let Some((_, fields)) = spans
            .iter_mut()
            .rev()
            .find(|(_, f)| f.get("#id") == Some(&id))
        {
            values.record(&mut Recorder(fields));
        }
    }
}

impl Captured {
    fn spans(&self, name: &str) -> Vec<HashMap<String, String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

#[test]
fn a_tracing_subscriber_sees_outcome_key_attempts_and_token_refresh() {
    use tower_redis_cache::auth::{AuthLayer, Token, TokenFuture, TokenSource};
    use tower_redis_cache::retry::RetryLayer;
    use tracing_subscriber::layer::SubscriberExt;

    struct Fixed;
    impl TokenSource for Fixed {
        fn fetch_token(&self) -> TokenFuture<'_> {
            Box::pin(async { Ok(Token::new("t", Some(Duration::from_secs(3600)))) })
        }
    }

    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let failures = Arc::new(AtomicU64::new(0));
        let api = service_fn(move |_req: Request<RequestBody>| {
            let n = failures.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                if n == 0 {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, Infallible>(response)
            }
        });
        let client = ServiceBuilder::new()
            .layer(
                RedisCacheLayer::builder(MemoryStore::new(1 << 20))
                    .build()
                    .unwrap(),
            )
            .layer(
                RetryLayer::builder()
                    .base_delay(Duration::from_millis(10))
                    .build()
                    .unwrap(),
            )
            .layer(AuthLayer::new(Fixed))
            .service(api);
        for _ in 0..2 {
            let request = Request::get("https://api.example/report")
                .body(Full::<Bytes>::default())
                .unwrap();
            client.clone().oneshot(request).await.unwrap();
        }
    });

    let cache = captured.spans("cache");
    assert_eq!(cache.len(), 2);
    let outcomes: Vec<&str> = cache.iter().map(|f| f["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["miss", "hit"]);
    assert_eq!(cache[0]["key"].len(), 8, "a digest prefix: {:?}", cache[0]);
    assert_eq!(cache[0]["key"], cache[1]["key"]);
    let attempts: Vec<String> = captured
        .spans("attempt")
        .iter()
        .map(|f| f["attempt"].clone())
        .collect();
    assert_eq!(attempts, ["1", "2"]);
    assert_eq!(captured.spans("retry")[0]["attempts"], "2");
    let refresh = captured.spans("token_refresh");
    assert_eq!(refresh.len(), 1, "one token fetch for both attempts");
    assert_eq!(refresh[0]["generation"], "1");
}
