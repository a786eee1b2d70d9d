//! The shared-cache rules against real redis-server processes: no user is answered with another's response,
//! partial and conditional answers are never stored (a client's own validators are answered from the entry and
//! never forwarded), `Vary` is honoured, keys keep meaning apart, writes are never undone by older answers, and
//! bodies over the cap are never held whole.

use crate::support;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::calls::{Cached, Reply, body, cache_status, call, echoed, outcome, post, wait_until};
use support::store::CountingStore;
use support::{Origin, RedisServer, fred_client};
use tower::ServiceExt;
use tower_redis_cache::cache::store::Store;
use tower_redis_cache::cache::{
    BypassReason, Credentials, DEFAULT_CREDENTIAL_HEADERS, NotStored, RedisCacheLayerBuilder,
    graphql,
};
use tower_redis_cache::error::{ConfigError, Setting};
use tower_redis_cache::{CacheOutcome, RedisCache, RedisCacheLayer, RedisStore};

async fn layer(server: &RedisServer) -> RedisCacheLayerBuilder {
    RedisCacheLayer::builder(RedisStore::new(fred_client(&server.url()).await))
        .namespace("shared")
        // Generous, so a loaded CI machine never turns a slow store call into a miss.
        .store_timeout(Duration::from_secs(2))
}

fn cached<S>(layer: &RedisCacheLayer, inner: S) -> RedisCache<S> {
    tower::Layer::layer(layer, inner)
}

fn get(uri: &str, headers: &[(&'static str, &'static str)]) -> Request<Full<Bytes>> {
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::default()).unwrap()
}

/// Every key the cache wrote to `server`.
fn stored_keys(server: &RedisServer) -> usize {
    // Every key of the layer but the markers a key whose answer could not be stored keeps in its entry's place
    // (`uncacheable_for`): they hold no response, only the key's digest (their version byte is 4).
    let script = b"local n = 0 \
        for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
          if redis.call('TYPE', k).ok ~= 'string' or string.byte(redis.call('GET', k), 5) ~= 4 then n = n + 1 end \
        end \
        return n";
    let reply = String::from_utf8(server.command(&[b"EVAL", script, b"0", b"shared:*"])).unwrap();
    reply.trim_start_matches(':').trim().parse().unwrap()
}

#[tokio::test]
async fn a_protocol_upgrade_is_never_answered_from_the_cache() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let page = || get("http://api.test/chat", &[]);
    call(&service, page()).await;
    assert_eq!(outcome(&call(&service, page()).await), CacheOutcome::Hit);

    // A WebSocket handshake to the same URI: only the origin can switch protocols.
    let handshake = get(
        "http://api.test/chat",
        &[("connection", "upgrade"), ("upgrade", "websocket")],
    );
    let handshake = call(&service, handshake).await;
    assert_eq!(
        cache_status(&handshake),
        "tower-redis-cache; fwd=bypass; detail=upgrade"
    );
    assert_eq!(origin.calls(), 2);
    assert_eq!(
        layer.handle().stats().bypasses_for(BypassReason::Upgrade),
        1
    );
    // The entry still answers the page.
    assert_eq!(outcome(&call(&service, page()).await), CacheOutcome::Hit);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn an_event_stream_subscription_is_never_answered_from_the_cache() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let page = |accept| get("http://api.test/feed", &[("accept", accept)]);
    call(&service, page("application/json")).await;
    assert_eq!(
        outcome(&call(&service, page("application/json")).await),
        CacheOutcome::Hit
    );

    // An `EventSource` on the same URI (it sends `no-cache` too), and a client that takes either.
    for (n, accept) in [
        (2, "text/event-stream"),
        (3, "application/json, text/event-stream"),
    ] {
        let mut subscription = page(accept);
        subscription
            .headers_mut()
            .insert("cache-control", http::HeaderValue::from_static("no-cache"));
        let subscription = call(&service, subscription).await;
        assert_eq!(
            cache_status(&subscription),
            "tower-redis-cache; fwd=bypass; detail=event-stream"
        );
        assert_eq!(origin.calls(), n);
    }
    assert_eq!(
        layer
            .handle()
            .stats()
            .bypasses_for(BypassReason::EventStream),
        2
    );
    // The entry still answers the page: the subscriptions did not replace it.
    assert_eq!(
        outcome(&call(&service, page("application/json")).await),
        CacheOutcome::Hit
    );
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn what_a_proxy_forwards_and_prefer_keep_answers_apart_and_the_clients_address_does_not() {
    let server = RedisServer::start();
    let origin = Origin::new();
    // As a framework that builds links and redirects from what its proxy forwards.
    origin.echo_headers();
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let page = |headers| get("http://api.test/page", headers);

    // An attacker's `X-Forwarded-Host` is stored under a key of its own...
    let evil = [("x-forwarded-host", "evil.example")];
    let poisoned = call(&service, page(&evil)).await;
    assert_eq!(echoed(&poisoned, "x-forwarded-host"), Some("evil.example"));
    // ...which no other request reads.
    let plain = call(&service, page(&[])).await;
    assert!(matches!(outcome(&plain), CacheOutcome::Miss { .. }));
    assert_eq!(echoed(&plain, "x-forwarded-host"), None);
    assert_eq!(origin.calls(), 2);

    // A client that reached the proxy over `https` is not answered with what the `http` one got, but two clients
    // behind the proxy share an entry: their addresses are not in the key.
    let https = |client: &'static str| {
        [
            ("x-forwarded-proto", "https"),
            ("forwarded", client),
            ("x-forwarded-for", client),
        ]
    };
    let (one, another) = (
        https("for=192.0.2.1;proto=https"),
        https("for=198.51.100.7;proto=https"),
    );
    let first = call(&service, page(&one)).await;
    assert!(matches!(outcome(&first), CacheOutcome::Miss { .. }));
    let second = call(&service, page(&another)).await;
    assert_eq!(outcome(&second), CacheOutcome::Hit);
    assert_eq!(
        echoed(&second, "forwarded"),
        Some("for=192.0.2.1;proto=https")
    );
    assert_eq!(origin.calls(), 3);

    // Each request still gets its own variant's entry.
    for (headers, host) in [(&evil[..], Some("evil.example")), (&[][..], None)] {
        let again = call(&service, page(headers)).await;
        assert_eq!(outcome(&again), CacheOutcome::Hit);
        assert_eq!(echoed(&again, "x-forwarded-host"), host);
    }
    assert_eq!(origin.calls(), 3);

    // An API that reads `Prefer` on reads (Microsoft Graph's time zone) and leaves it out of `Vary`.
    let pacific = [("prefer", "outlook.timezone=\"Pacific Standard Time\"")];
    let local = call(&service, page(&pacific)).await;
    assert!(matches!(outcome(&local), CacheOutcome::Miss { .. }));
    let again = call(&service, page(&pacific)).await;
    assert_eq!(echoed(&again, "prefer"), Some(pacific[0].1));
    assert_eq!(origin.calls(), 4);

    // A write to the URI removes every variant, those whose fields it does not send too.
    let delete = Request::delete("http://api.test/page")
        .body(Full::default())
        .unwrap();
    assert_eq!(call(&service, delete).await.status(), StatusCode::OK);
    for headers in [&evil[..], &one[..], &pacific[..], &[][..]] {
        let after = call(&service, page(headers)).await;
        assert!(matches!(outcome(&after), CacheOutcome::Miss { .. }));
    }
    assert_eq!(origin.calls(), 9);
}

#[tokio::test]
async fn a_request_for_a_page_fragment_never_shares_the_pages_entry() {
    // htmx, Hotwire and PJAX ask for a partial with a header most servers leave out of `Vary`.
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.echo_headers();
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let page = |headers: &[(&'static str, &'static str)]| get("http://app.test/contacts", headers);
    let fragments = [
        ("hx-request", "true"),
        ("turbo-frame", "contacts"),
        ("x-pjax", "true"),
        ("x-requested-with", "XMLHttpRequest"),
    ];
    call(&service, page(&[])).await;
    for (name, value) in fragments {
        let partial = call(&service, page(&[(name, value)])).await;
        assert!(
            matches!(outcome(&partial), CacheOutcome::Miss { .. }),
            "{name}"
        );
        assert_eq!(echoed(&partial, name), Some(value));
    }
    assert_eq!(origin.calls(), 5);
    let full = call(&service, page(&[])).await;
    assert_eq!(outcome(&full), CacheOutcome::Hit);
    for (name, _) in fragments {
        assert_eq!(echoed(&full, name), None, "{name}");
    }
    for (name, value) in fragments {
        let again = call(&service, page(&[(name, value)])).await;
        assert_eq!(outcome(&again), CacheOutcome::Hit, "{name}");
        assert_eq!(echoed(&again, name), Some(value));
    }
    assert_eq!(origin.calls(), 5);
}

#[tokio::test]
async fn a_host_field_naming_another_authority_than_the_uri_keeps_its_answer_apart() {
    let server = RedisServer::start();
    let origin = Origin::new();
    // As virtual hosts behind one address, or a framework that writes links from `Host`.
    origin.echo_headers();
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let status = |host: Option<&'static str>| match host {
        Some(host) => get("http://10.0.0.5/status", &[("host", host)]),
        None => get("http://10.0.0.5/status", &[]),
    };

    let a = call(&service, status(Some("a.example"))).await;
    assert_eq!(echoed(&a, "host"), Some("a.example"));
    let b = call(&service, status(Some("b.example"))).await;
    assert!(matches!(outcome(&b), CacheOutcome::Miss { .. }));
    assert_eq!(echoed(&b, "host"), Some("b.example"));
    let bare = call(&service, status(None)).await;
    assert!(matches!(outcome(&bare), CacheOutcome::Miss { .. }));
    assert_eq!(origin.calls(), 3);
    // Each reads its own entry; a `Host` naming the URI's own authority (its case, its default port) is no
    // other host.
    for (host, echo) in [
        (Some("a.example"), Some("a.example")),
        (Some("B.example"), Some("b.example")),
        (Some("10.0.0.5:80"), None),
        (None, None),
    ] {
        let again = call(&service, status(host)).await;
        assert_eq!(outcome(&again), CacheOutcome::Hit, "{host:?}");
        assert_eq!(
            echoed(&again, "host")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            echo,
            "{host:?}"
        );
    }
    assert_eq!(origin.calls(), 3);

    // A write to the URI removes them all, whichever `Host` it sends.
    let delete = Request::delete("http://10.0.0.5/status")
        .header("host", "a.example")
        .body(Full::default())
        .unwrap();
    assert_eq!(call(&service, delete).await.status(), StatusCode::OK);
    for host in [Some("a.example"), Some("b.example"), None] {
        let after = call(&service, status(host)).await;
        assert!(
            matches!(outcome(&after), CacheOutcome::Miss { .. }),
            "{host:?}"
        );
    }
    assert_eq!(origin.calls(), 7, "the write and three misses");
}

#[tokio::test]
async fn a_write_in_one_spelling_of_a_uri_removes_the_entries_of_the_other() {
    let server = RedisServer::start();
    let origin = Origin::new();
    // A server sees one resource as `https://api.test/items?x=1` over HTTP/2 and as `/items?x=1` with
    // `Host: api.test` over HTTP/1.1: two keys. With request headers in the key, the write names neither
    // variant, and finds them through the URI's tag.
    for (namespace, vary) in [
        ("spelling", None),
        ("spelling-vary", Some("accept-language")),
    ] {
        let mut builder = layer(&server).await.namespace(namespace);
        if let Some(name) = vary {
            builder = builder.vary_headers([HeaderName::from_static(name)]);
        }
        let layer = builder.build().unwrap();
        let service = cached(&layer, origin.service());
        let h2 = || get("https://api.test/items?x=1", &[("accept-language", "de")]);
        let h1 = || {
            get(
                "/items?x=1",
                &[("host", "api.test"), ("accept-language", "de")],
            )
        };
        // The origin's default port, written out or left out, is one spelling more.
        let writes = [
            Request::delete("/items?x=1").header("host", "api.test"),
            Request::delete("https://api.test/items?x=1"),
            Request::delete("https://API.test:443/items?x=1"),
            Request::delete("/items?x=1").header("host", "api.test:443"),
        ];
        for write in writes {
            call(&service, h2()).await;
            call(&service, h1()).await;
            assert_eq!(outcome(&call(&service, h2()).await), CacheOutcome::Hit);
            assert_eq!(outcome(&call(&service, h1()).await), CacheOutcome::Hit);
            let write = write.body(Full::default()).unwrap();
            let uri = write.uri().clone();
            assert_eq!(call(&service, write).await.status(), StatusCode::OK);
            for (form, read) in [("HTTP/2", h2()), ("HTTP/1.1", h1())] {
                let after = outcome(&call(&service, read).await);
                assert!(
                    matches!(after, CacheOutcome::Miss { .. }),
                    "{namespace}: {form} entry after a write to {uri}: {after:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_tunnelled_method_is_never_cached_and_a_tunnelled_write_removes_what_a_write_would() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server)
        .await
        .methods([Method::GET, Method::POST])
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let query = |headers: &[(&'static str, &'static str)]| {
        let mut request = Request::post("http://api.test/items");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .body(Full::new(Bytes::from_static(br#"{"q":1}"#)))
            .unwrap()
    };
    let read = || get("http://api.test/items", &[]);
    call(&service, query(&[])).await;
    call(&service, read()).await;
    let outcomes = || async {
        [
            outcome(&call(&service, query(&[])).await),
            outcome(&call(&service, read()).await),
        ]
    };
    assert_eq!(outcomes().await, [CacheOutcome::Hit, CacheOutcome::Hit]);

    // Each tunnelled query reaches the origin: the key does not hold the method it names. A tunnelled `GET`
    // changes nothing; a tunnelled `DELETE`, once it succeeds, removes the URI's entries as a `DELETE` would, the
    // query's included.
    for (method, kept) in [("GET", true), ("DELETE", false)] {
        let before = origin.calls();
        let tunnelled = call(&service, query(&[("x-http-method-override", method)])).await;
        assert_eq!(
            cache_status(&tunnelled),
            "tower-redis-cache; fwd=method; detail=method",
            "{method}"
        );
        assert_eq!(origin.calls(), before + 1, "{method}");
        let after = outcomes().await;
        if kept {
            assert_eq!(after, [CacheOutcome::Hit, CacheOutcome::Hit], "{method}");
        } else {
            assert!(
                after.iter().all(|o| matches!(o, CacheOutcome::Miss { .. })),
                "{method}: {after:?}"
            );
        }
    }

    // A `_method` parameter tunnels a method too (Laravel, Symfony, Rack, Express): in the query, a form, a
    // multipart form or a JSON body. Each such request reaches the origin, and a write removes what a write would.
    // Frameworks differ in which they read first, so a write named anywhere makes the request one; and a query
    // bypassed for its credentials has its body read all the same.
    const TUNNELLED: &str = "tower-redis-cache; fwd=method; detail=method";
    const JSON: &str = "application/json";
    // Path, extra headers, content type, body, whether the entries stay, `Cache-Status`.
    type Row = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
        bool,
        &'static str,
    );
    let tunnelling: [Row; 11] = [
        (
            "/items?_method=GET",
            &[],
            JSON,
            r#"{"q":1}"#,
            true,
            TUNNELLED,
        ),
        (
            "/items?_method=DELETE",
            &[],
            JSON,
            r#"{"q":1}"#,
            false,
            TUNNELLED,
        ),
        (
            "/items",
            &[],
            "application/x-www-form-urlencoded",
            "title=x&_method=put",
            false,
            TUNNELLED,
        ),
        (
            "/items",
            &[],
            JSON,
            r#"{"_method":"PATCH","q":1}"#,
            false,
            TUNNELLED,
        ),
        (
            "/items",
            &[],
            "multipart/form-data; boundary=b",
            "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n",
            false,
            TUNNELLED,
        ),
        (
            "/items?_method=GET",
            &[],
            JSON,
            r#"{"_method":"DELETE"}"#,
            false,
            TUNNELLED,
        ),
        (
            "/items",
            &[("x-http-method-override", "GET")],
            JSON,
            r#"{"_method":"DELETE"}"#,
            false,
            TUNNELLED,
        ),
        // A write named first stays one whatever a later tunnel names.
        (
            "/items?_method=DELETE",
            &[],
            JSON,
            r#"{"_method":"GET"}"#,
            false,
            TUNNELLED,
        ),
        (
            "/items?_method=GET",
            &[("x-http-method-override", "DELETE")],
            JSON,
            r#"{"q":1}"#,
            false,
            TUNNELLED,
        ),
        (
            "/items",
            &[("authorization", "Bearer a")],
            "application/x-www-form-urlencoded",
            "title=x&_method=DELETE",
            false,
            "tower-redis-cache; fwd=bypass; detail=authorization",
        ),
        (
            "/items",
            &[("authorization", "Bearer a")],
            "application/x-www-form-urlencoded",
            "title=x&_method=GET",
            true,
            "tower-redis-cache; fwd=bypass; detail=authorization",
        ),
    ];
    for (path, headers, content_type, body, kept, status) in tunnelling {
        for _ in 0..2 {
            call(&service, query(&[])).await;
            call(&service, read()).await;
        }
        let before = origin.calls();
        for waits in [false, true] {
            let mut request = Request::post(format!("http://api.test{path}"))
                .header("content-type", content_type);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            // Whole at once, then streamed as a server's request body is, arriving after the head: the layer
            // has to wait for it.
            let stream = StreamBody::new(futures_util::stream::once(async move {
                if waits {
                    tokio::task::yield_now().await;
                }
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(body)))
            }));
            let tunnelled = service
                .clone()
                .oneshot(request.body(stream).unwrap())
                .await
                .unwrap();
            assert_eq!(cache_status(&tunnelled), status, "{path} {body}");
            let echoed = self::body(tunnelled).await;
            assert!(
                echoed.ends_with(format!("\"echo\":{body}}}").as_bytes()),
                "{path}: the origin gets the body whole: {echoed:?}"
            );
        }
        assert_eq!(origin.calls(), before + 2, "{path} {body}: never cached");
        let after = outcomes().await;
        if kept {
            assert_eq!(
                after,
                [CacheOutcome::Hit, CacheOutcome::Hit],
                "{path} {body}"
            );
        } else {
            assert!(
                after.iter().all(|o| matches!(o, CacheOutcome::Miss { .. })),
                "{path} {body}: {after:?}"
            );
        }
    }

    // A JSON-RPC call's `method` member tunnels nothing: it is cached as any query.
    let rpc = || {
        Request::post("http://api.test/rpc")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"jsonrpc":"2.0","method":"eth_call","id":1}"#,
            )))
            .unwrap()
    };
    call(&service, rpc()).await;
    assert_eq!(outcome(&call(&service, rpc()).await), CacheOutcome::Hit);
}

#[tokio::test]
async fn a_body_query_when_refuses_is_never_cached_and_a_refused_post_removes_what_a_write_would() {
    let server = RedisServer::start();
    let origin = Origin::new();
    // GraphQL: queries and mutations are all a `POST /graphql`. The predicate sees the body whatever its type
    // (`application/graphql` is the document itself).
    let layer = layer(&server)
        .await
        .methods([Method::GET, Method::POST])
        .query_when(|_, body| graphql::is_query(body))
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let graphql = |body: &'static str, headers: &[(&'static str, &'static str)]| {
        let mut request = Request::post("http://api.test/graphql");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    const JSON: (&str, &str) = ("content-type", "application/json");
    let items = || graphql(r#"{"query":"{ items { id } }"}"#, &[JSON]);
    let page = || get("http://api.test/graphql", &[]);
    call(&service, items()).await;
    call(&service, page()).await;
    let outcomes = || async {
        [
            outcome(&call(&service, items()).await),
            outcome(&call(&service, page()).await),
        ]
    };
    assert_eq!(outcomes().await, [CacheOutcome::Hit, CacheOutcome::Hit]);
    assert_eq!(origin.calls(), 2);

    // A mutation reaches the origin every time, and once it succeeds the URI's entries are gone, the queries'
    // included: as JSON, as a bare document, and bypassed for its credentials (its body read all the same).
    let mutations = [
        graphql(r#"{"query":"mutation { add(id: 1) { id } }"}"#, &[JSON]),
        graphql(
            "mutation { add(id: 2) { id } }",
            &[("content-type", "application/graphql")],
        ),
        graphql(
            "mutation { add(id: 3) { id } }",
            &[
                ("content-type", "application/graphql"),
                ("authorization", "Bearer a"),
            ],
        ),
    ];
    for (n, mutation) in mutations.into_iter().enumerate() {
        let credentials = n == 2;
        let before = origin.calls();
        let answer = call(&service, mutation).await;
        let expected = if credentials {
            "tower-redis-cache; fwd=bypass; detail=authorization"
        } else {
            "tower-redis-cache; fwd=method; detail=not-a-query"
        };
        assert_eq!(cache_status(&answer), expected, "mutation {n}");
        assert_eq!(origin.calls(), before + 1, "mutation {n}");
        let after = outcomes().await;
        assert!(
            after.iter().all(|o| matches!(o, CacheOutcome::Miss { .. })),
            "mutation {n}: {after:?}"
        );
        assert_eq!(outcomes().await, [CacheOutcome::Hit, CacheOutcome::Hit]);
    }
    assert_eq!(
        layer.handle().stats().bypasses_for(BypassReason::NotAQuery),
        2
    );
}

#[tokio::test]
async fn a_write_naming_a_safe_method_in_a_header_still_removes_entries() {
    // An origin that does not honour `X-HTTP-Method-Override` (most do not, unless told to) acts on the
    // request's own method: a `POST` this layer does not cache is a write, whatever the header names.
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let read = || get("http://api.test/items", &[]);
    for (method, named) in [
        (Method::POST, "GET"),
        (Method::DELETE, "HEAD"),
        (Method::PUT, "get"),
    ] {
        call(&service, read()).await;
        assert_eq!(outcome(&call(&service, read()).await), CacheOutcome::Hit);
        let write = Request::builder()
            .method(method.clone())
            .uri("http://api.test/items")
            .header("x-http-method-override", named)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let answer = call(&service, write).await;
        assert_eq!(
            cache_status(&answer),
            "tower-redis-cache; fwd=method; detail=method",
            "{method}"
        );
        assert!(
            matches!(
                outcome(&call(&service, read()).await),
                CacheOutcome::Miss { .. }
            ),
            "{method} naming {named} removed the entry"
        );
    }
}

#[tokio::test]
async fn cookies_named_as_ignored_make_no_credential_and_any_other_does() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server)
        .await
        .ignore_cookies(["_ga", "_ga_*", "_gid", "_my*"])
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let page = |cookie: &'static str| get("http://api.test/page", &[("cookie", cookie)]);

    let stored = call(&service, page("_ga=GA1.2.1; _gid=GA1.2.9")).await;
    assert!(matches!(
        outcome(&stored),
        CacheOutcome::Miss { stored: true, .. }
    ));
    // Each browser's analytics ids differ; the page is one.
    for cookie in ["_ga=GA1.2.7", "_ga_X1Y2=GS1.1; _ga=GA1.2.8", " _gid=1 ;"] {
        assert_eq!(
            outcome(&call(&service, page(cookie)).await),
            CacheOutcome::Hit,
            "{cookie}"
        );
    }
    assert_eq!(
        outcome(&call(&service, get("http://api.test/page", &[])).await),
        CacheOutcome::Hit
    );
    // Any other cookie is a credential: a session, a name the patterns do not name, a pair without a name, and
    // a session a lax server splits off a pair at a `,` (Rack 2) or a space (Python's `SimpleCookie`). So is a
    // cookie a pattern names whose name says it holds a session or a token.
    for cookie in [
        "_ga=GA1.2.7; session=s3cr3t",
        "_gax=1",
        "_ga_=1; =x",
        "token",
        "_ga=GA1.2.7, session=s3cr3t",
        "_ga=GA1.2.7 session=s3cr3t",
        "_ga=GA1.2.7; _myapp_session=s3cr3t",
        "_ga_remember_token=s3cr3t",
    ] {
        let response = call(&service, page(cookie)).await;
        assert_eq!(
            outcome(&response),
            CacheOutcome::Bypass(BypassReason::Cookie),
            "{cookie}"
        );
    }
    let mut unreadable = page("_ga=1");
    unreadable
        .headers_mut()
        .insert("cookie", HeaderValue::from_bytes(b"_ga=\xff").unwrap());
    assert_eq!(
        outcome(&call(&service, unreadable).await),
        CacheOutcome::Bypass(BypassReason::Cookie)
    );
    assert_eq!(origin.calls(), 10);

    // Every cookie, or no name at all, is refused; so is a session's or a credential's name, and a prefix of
    // one a framework sets (Rails's `_session_id`).
    for names in [
        &["*"][..],
        &[""],
        &["a=b"],
        &["_ga", "PHPSESSID"],
        &["_myapp_session"],
        &["connect.sid"],
        &["jwt"],
        &["_*"],
        &["JSESS*"],
        &["s*"],
    ] {
        let error = layer_builder_error(&server, names).await;
        assert_eq!(
            error.setting(),
            Setting::IgnoreCookies,
            "{names:?}: {error}"
        );
    }
}

#[tokio::test]
async fn an_answer_setting_only_ignored_cookies_is_stored_and_shared_without_them() {
    let origin = Origin::new();
    // A Cloudflare-fronted API sets its bot-management cookie on every answer.
    origin.add_header("set-cookie", "__cf_bm=abc; path=/; HttpOnly; Secure");
    let layer = RedisCacheLayer::builder(tower_redis_cache::MemoryStore::new(1 << 20))
        .ignore_cookies(["__cf_bm", "_cfuvid"])
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let cookies = |reply: &Reply| reply.headers().get_all("set-cookie").iter().count();
    let models = || get("http://api.test/models", &[]);
    let first = call(&service, models()).await;
    assert!(matches!(
        outcome(&first),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(
        cookies(&first),
        1,
        "the caller the origin answered keeps its cookie"
    );
    let hit = call(&service, models()).await;
    assert_eq!((outcome(&hit), cookies(&hit)), (CacheOutcome::Hit, 0));

    // A caller coalesced onto another's call shares its answer, not its cookie.
    origin.close();
    let spawn = || {
        let service = service.clone();
        tokio::spawn(async move { call(&service, get("http://api.test/plans", &[])).await })
    };
    let leader = spawn();
    wait_until("the leader reached the origin", || origin.calls() == 2).await;
    let waiter = spawn();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    origin.open();
    let (leader, waiter) = (leader.await.unwrap(), waiter.await.unwrap());
    assert_eq!(origin.calls(), 2);
    assert_eq!(cookies(&leader), 1);
    assert_eq!(
        (outcome(&waiter), cookies(&waiter)),
        (
            CacheOutcome::Miss {
                collapsed: true,
                stored: false
            },
            0
        )
    );

    // Any other cookie beside it keeps the answer its caller's alone.
    origin.add_header("set-cookie", "session=s3cr3t");
    let private = call(&service, get("http://api.test/me", &[])).await;
    assert!(cache_status(&private).ends_with("; detail=response-set-cookie"));
    assert_eq!(cookies(&private), 2);
    assert_eq!(
        outcome(&call(&service, get("http://api.test/me", &[])).await),
        CacheOutcome::Miss {
            collapsed: false,
            stored: false
        }
    );

    // So does one folded into the same field with `,`, as proxies that join every header do; a date's own `,`
    // does not. RFC 2965's obsolete `Set-Cookie2` is a list by design: never read as ignored cookies.
    for (n, (field, folded, stored)) in [
        ("set-cookie", "__cf_bm=abc; Path=/, session=s3cr3t", false),
        (
            "set-cookie",
            "__cf_bm=abc; Expires=Fri, 04 Dec 2026 10:18:14 GMT, session=s3cr3t; Path=/",
            false,
        ),
        (
            "set-cookie",
            "__cf_bm=abc; Expires=Fri, 04-Dec-26 10:18:14 GMT; Path=/",
            true,
        ),
        ("set-cookie2", "__cf_bm=abc; Version=1", false),
    ]
    .into_iter()
    .enumerate()
    {
        origin.clear_headers();
        origin.add_header(field, folded);
        let uri = format!("http://api.test/folded/{n}");
        let first = call(&service, get(&uri, &[])).await;
        assert_eq!(
            outcome(&first),
            CacheOutcome::Miss {
                collapsed: false,
                stored
            },
            "{folded}"
        );
        assert_eq!(first.headers().get_all(field).iter().count(), 1, "{folded}");
        let second = call(&service, get(&uri, &[])).await;
        assert_eq!(outcome(&second) == CacheOutcome::Hit, stored, "{folded}");
    }
}

async fn layer_builder_error(server: &RedisServer, names: &[&str]) -> ConfigError {
    layer(server)
        .await
        .ignore_cookies(names.iter().copied())
        .build()
        .unwrap_err()
}

#[tokio::test]
async fn requests_with_credentials_bypass_by_default() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.echo_user();
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());

    let alice = call(
        &service,
        get("http://api.test/me", &[("authorization", "Bearer alice")]),
    )
    .await;
    let bob = call(
        &service,
        get("http://api.test/me", &[("authorization", "Bearer bob")]),
    )
    .await;
    assert_eq!(
        outcome(&bob),
        CacheOutcome::Bypass(BypassReason::Authorization)
    );
    assert_eq!(
        cache_status(&bob),
        "tower-redis-cache; fwd=bypass; detail=authorization"
    );
    assert_eq!(
        &body(alice).await[..],
        br#"{"n":1,"echo":null,"user":"Bearer alice"}"#
    );
    assert_eq!(
        &body(bob).await[..],
        br#"{"n":2,"echo":null,"user":"Bearer bob"}"#
    );

    let with_cookie = call(
        &service,
        get("http://api.test/me", &[("cookie", "session=alice")]),
    )
    .await;
    assert_eq!(
        cache_status(&with_cookie),
        "tower-redis-cache; fwd=bypass; detail=cookie"
    );
    assert_eq!(origin.calls(), 3);
    assert_eq!(
        stored_keys(&server),
        0,
        "nothing stored for a credentialed request"
    );
}

#[tokio::test]
async fn credentials_in_the_key_give_each_user_their_own_entries() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.echo_user();
    let layer = layer(&server)
        .await
        .credentials(Credentials::InKey)
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let me = |user: &'static str| get("http://api.test/me", &[("authorization", user)]);

    assert!(matches!(
        outcome(&call(&service, me("Bearer alice")).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    let bob = call(&service, me("Bearer bob")).await;
    assert!(matches!(
        outcome(&bob),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(
        &body(bob).await[..],
        br#"{"n":2,"echo":null,"user":"Bearer bob"}"#
    );
    let alice = call(&service, me("Bearer alice")).await;
    assert_eq!(outcome(&alice), CacheOutcome::Hit);
    assert_eq!(
        &body(alice).await[..],
        br#"{"n":1,"echo":null,"user":"Bearer alice"}"#
    );
    let cookie = call(
        &service,
        get("http://api.test/me", &[("cookie", "s=carol")]),
    )
    .await;
    assert!(
        matches!(outcome(&cookie), CacheOutcome::Miss { .. }),
        "another cookie, another user"
    );
    assert_eq!(origin.calls(), 3);
}

/// A header no list names, whose name says it carries a credential or names a user (an API's own key header, a
/// gateway's user), is in no key: such a request bypasses, unless the layer keys by it or a partition says whom
/// every request acts for.
#[tokio::test]
async fn headers_named_like_credentials_bypass_unless_the_key_or_a_partition_holds_them() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.echo_headers();
    let with =
        |name: &'static str, value: &'static str| get("http://api.test/me", &[(name, value)]);
    for (credentials, namespace) in [
        (Credentials::Bypass, "bypass"),
        (Credentials::InKey, "keyed"),
    ] {
        let layer = layer(&server)
            .await
            .namespace(namespace)
            .credentials(credentials)
            .build()
            .unwrap();
        let service = cached(&layer, origin.service());
        for (name, value) in [
            ("x-shopify-access-token", "shpat_1"),
            ("x-algolia-api-key", "k1"),
            ("x-user-id", "alice"),
            ("x-auth-email", "alice@example.com"),
            ("x-tenant-id", "acme"),
            ("x-forwarded-groups", "admins"),
        ] {
            let reply = call(&service, with(name, value)).await;
            assert_eq!(
                (outcome(&reply), echoed(&reply, name)),
                (
                    CacheOutcome::Bypass(BypassReason::Authorization),
                    Some(value)
                ),
                "{credentials:?}: {name}"
            );
        }
    }
    assert_eq!(origin.calls(), 12);

    // Keyed by the layer's vary headers: each value its own entries.
    let keyed = layer(&server)
        .await
        .namespace("vary")
        .vary_headers([HeaderName::from_static("x-user-id")])
        .build()
        .unwrap();
    let service = cached(&keyed, origin.service());
    for user in ["alice", "bob", "alice", "bob"] {
        let reply = call(&service, with("x-user-id", user)).await;
        assert_eq!(echoed(&reply, "x-user-id"), Some(user));
    }
    assert_eq!(origin.calls(), 14);

    // Under a partition, credentials do not split entries, by the user's word.
    let partitioned = layer(&server)
        .await
        .namespace("partition")
        .credentials(Credentials::Partition)
        .partition("reports-service")
        .build()
        .unwrap();
    let service = cached(&partitioned, origin.service());
    for key in ["k1", "k2"] {
        call(&service, with("x-algolia-api-key", key)).await;
    }
    assert_eq!(origin.calls(), 15);
}

/// What Chrome sends with a page a user opened (a typed address, a clicked link), cookies aside: the header
/// rule reads `Sec-Fetch-User` (`?1`: the user started it) as naming no one, so a server's cache answers the
/// second such request.
#[tokio::test]
async fn a_browsers_navigation_is_cached_whatever_headers_the_browser_adds() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let service = cached(&layer(&server).await.build().unwrap(), origin.service());
    let navigation = || {
        get(
            "http://shop.test/products",
            &[
                ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
                ("accept-encoding", "gzip, deflate, br, zstd"),
                ("accept-language", "en-GB,en;q=0.9"),
                ("priority", "u=0, i"),
                ("sec-ch-ua", r#""Chromium";v="131", "Not_A Brand";v="24""#),
                ("sec-ch-ua-mobile", "?0"),
                ("sec-ch-ua-platform", r#""Linux""#),
                ("sec-fetch-dest", "document"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-site", "none"),
                ("sec-fetch-user", "?1"),
                ("upgrade-insecure-requests", "1"),
                (
                    "user-agent",
                    "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0",
                ),
            ],
        )
    };
    let first = call(&service, navigation()).await;
    assert!(
        matches!(outcome(&first), CacheOutcome::Miss { stored: true, .. }),
        "{}",
        cache_status(&first)
    );
    let second = call(&service, navigation()).await;
    assert_eq!(outcome(&second), CacheOutcome::Hit);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn credential_headers_count_as_authorization() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.echo_headers();
    let with = |name: &'static str, key: &'static str| get("http://api.test/me", &[(name, key)]);

    // By default an `X-Api-Key` counts as `Authorization`: a request with it bypasses; one without is cached.
    let service = cached(&layer(&server).await.build().unwrap(), origin.service());
    for key in ["alice", "bob", "alice"] {
        let reply = call(&service, with("x-api-key", key)).await;
        assert_eq!(
            cache_status(&reply),
            "tower-redis-cache; fwd=bypass; detail=authorization"
        );
        assert_eq!(echoed(&reply, "x-api-key"), Some(key));
    }
    assert_eq!(origin.calls(), 3);
    assert_eq!(
        stored_keys(&server),
        0,
        "nothing stored for a credentialed request"
    );
    call(&service, get("http://api.test/me", &[])).await;
    let anonymous = call(&service, get("http://api.test/me", &[])).await;
    assert_eq!(outcome(&anonymous), CacheOutcome::Hit);
    assert_eq!(origin.calls(), 4);
    // So does every other default: a gateway's subscription key, a GitLab token, ...
    for name in DEFAULT_CREDENTIAL_HEADERS {
        let request = Request::get("http://api.test/me")
            .header(name.clone(), "k")
            .body(Full::default())
            .unwrap();
        let reply = call(&service, request).await;
        assert_eq!(
            outcome(&reply),
            CacheOutcome::Bypass(BypassReason::Authorization),
            "{name}"
        );
    }
    assert_eq!(origin.calls(), 4 + DEFAULT_CREDENTIAL_HEADERS.len());

    // The names given replace the defaults.
    let own = layer(&server)
        .await
        .namespace("own")
        .credential_headers([HeaderName::from_static("x-session")])
        .build()
        .unwrap();
    let service = cached(&own, origin.service());
    let session = call(&service, with("x-session", "s1")).await;
    assert_eq!(
        outcome(&session),
        CacheOutcome::Bypass(BypassReason::Authorization)
    );
    call(&service, with("x-client-version", "1")).await;
    let later = call(&service, with("x-client-version", "2")).await;
    assert_eq!(
        (outcome(&later), echoed(&later, "x-client-version")),
        (CacheOutcome::Hit, Some("1")),
        "a header not named, nor named like a credential, is taken not to change the answer"
    );
    let defaults = DEFAULT_CREDENTIAL_HEADERS.len();
    assert_eq!(origin.calls(), defaults + 6);

    // With `Credentials::InKey`, each key gets entries of its own.
    let keyed = layer(&server)
        .await
        .namespace("keyed")
        .credentials(Credentials::InKey)
        .build()
        .unwrap();
    let service = cached(&keyed, origin.service());
    for key in ["alice", "bob"] {
        let reply = call(&service, with("x-api-key", key)).await;
        assert!(matches!(
            outcome(&reply),
            CacheOutcome::Miss { stored: true, .. }
        ));
    }
    for key in ["alice", "bob"] {
        let reply = call(&service, with("x-api-key", key)).await;
        assert_eq!(
            (outcome(&reply), echoed(&reply, "x-api-key")),
            (CacheOutcome::Hit, Some(key))
        );
    }
    assert_eq!(origin.calls(), defaults + 8);
    // One credential, two accounts it acts for: an entry each.
    for account in ["acct_1", "acct_2", "acct_1", "acct_2"] {
        let request = get(
            "http://api.test/me",
            &[("x-api-key", "alice"), ("stripe-account", account)],
        );
        let reply = call(&service, request).await;
        assert_eq!(echoed(&reply, "stripe-account"), Some(account));
    }
    assert_eq!(origin.calls(), defaults + 10);
}

#[tokio::test]
async fn range_and_precondition_requests_go_to_the_origin_and_206_is_never_stored() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());

    let partial = call(
        &service,
        get("http://api.test/file", &[("range", "bytes=0-0")]),
    )
    .await;
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        cache_status(&partial),
        "tower-redis-cache; fwd=bypass; detail=range"
    );
    // Meanwhile one fetch of the whole answer (the origin's `206` to a range is never stored) filled the entry.
    wait_until("the range's fill stored", || {
        layer.handle().stats().stores == 1
    })
    .await;
    let whole = call(&service, get("http://api.test/file", &[])).await;
    assert_eq!(
        (whole.status(), outcome(&whole)),
        (StatusCode::OK, CacheOutcome::Hit)
    );
    assert_eq!(&body(whole).await[..], br#"{"n":2,"echo":null}"#);
    let hit = call(&service, get("http://api.test/file", &[])).await;
    assert_eq!(
        (hit.status(), outcome(&hit)),
        (StatusCode::OK, CacheOutcome::Hit)
    );

    for conditional in [
        ("if-match", "\"v1\""),
        ("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ] {
        let response = call(&service, get("http://api.test/file", &[conditional])).await;
        let status = cache_status(&response);
        assert!(
            status.starts_with("tower-redis-cache; fwd=bypass; detail="),
            "{conditional:?}: {status}"
        );
    }
    // `If-Range` without `Range` means nothing: a plain hit.
    let if_range = call(
        &service,
        get("http://api.test/file", &[("if-range", "\"v1\"")]),
    )
    .await;
    assert_eq!(outcome(&if_range), CacheOutcome::Hit);
    assert_eq!(origin.calls(), 4);

    // A 206 the origin sends unasked is not stored, even when 206 could be listed.
    let store = RedisStore::new(fred_client(&server.url()).await);
    let listed = RedisCacheLayer::builder(store)
        .cacheable_statuses([StatusCode::OK, StatusCode::PARTIAL_CONTENT])
        .build();
    assert!(listed.unwrap_err().to_string().contains("206"));
}

/// The `Last-Modified` of the origin's answers in the validator tests.
const MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

#[tokio::test]
async fn a_range_of_a_fresh_entry_is_cut_from_it() {
    // RFC 9110 §14: one byte range of a stored `200`, answered `206` (or `416`) by the cache.
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.set_etag("\"v1\"");
    origin.add_header("last-modified", MODIFIED);
    origin.add_header("date", "Sun, 06 Nov 1994 08:49:40 GMT");
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    const FILE: &str = "http://api.test/file";
    let whole: &[u8] = br#"{"n":1,"echo":null}"#;
    let filled = call(&service, get(FILE, &[])).await;
    assert!(matches!(
        outcome(&filled),
        CacheOutcome::Miss { stored: true, .. }
    ));

    type Fields = &'static [(&'static str, &'static str)];
    #[rustfmt::skip]
    let cases: [(Fields, StatusCode, Option<&str>, &[u8]); 9] = [
        (&[("range", "bytes=0-4")], StatusCode::PARTIAL_CONTENT, Some("bytes 0-4/19"), &whole[..5]),
        (&[("range", "bytes=-5")], StatusCode::PARTIAL_CONTENT, Some("bytes 14-18/19"), &whole[14..]),
        (&[("range", "bytes=10-")], StatusCode::PARTIAL_CONTENT, Some("bytes 10-18/19"), &whole[10..]),
        (&[("range", "bytes=19-")], StatusCode::RANGE_NOT_SATISFIABLE, Some("bytes */19"), b""),
        // Several ranges get the whole answer, as a server may send.
        (&[("range", "bytes=0-1,3-4")], StatusCode::OK, None, whole),
        (&[("range", "bytes=0-4"), ("if-range", "\"v1\"")], StatusCode::PARTIAL_CONTENT, Some("bytes 0-4/19"), &whole[..5]),
        (&[("range", "bytes=0-4"), ("if-range", MODIFIED)], StatusCode::PARTIAL_CONTENT, Some("bytes 0-4/19"), &whole[..5]),
        (&[("range", "bytes=0-4"), ("if-range", "\"v0\"")], StatusCode::OK, None, whole),
        // The client's own validators come first (RFC 9110 §13.2.2).
        (&[("range", "bytes=0-4"), ("if-none-match", "\"v1\"")], StatusCode::NOT_MODIFIED, None, b""),
    ];
    for (headers, status, content_range, part) in cases {
        let response = call(&service, get(FILE, headers)).await;
        assert_eq!(outcome(&response), CacheOutcome::Hit, "{headers:?}");
        assert_eq!(response.status(), status, "{headers:?}");
        let range = response.headers().get("content-range");
        assert_eq!(
            range.map(|v| v.to_str().unwrap()),
            content_range,
            "{headers:?}"
        );
        if status != StatusCode::NOT_MODIFIED && status != StatusCode::OK {
            assert_eq!(response.headers()["content-length"], part.len().to_string());
        }
        assert_eq!(&body(response).await[..], part, "{headers:?}");
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(layer.handle().stats().partial, 6);

    // A `HEAD` has no ranges: the whole answer's head.
    let head = Request::head(FILE)
        .header("range", "bytes=0-4")
        .body(Full::default())
        .unwrap();
    let head = call(&service, head).await;
    assert_eq!(
        (head.status(), outcome(&head)),
        (StatusCode::OK, CacheOutcome::Hit)
    );
    assert_eq!(head.headers()["content-length"], "19");

    // A range with no entry goes to the origin as it came (its `206` is neither stored nor shared), while one
    // background fetch of the whole answer fills the entry, from which the next range is cut.
    const OTHER: &str = "http://api.test/other";
    let partial = call(&service, get(OTHER, &[("range", "bytes=0-0")])).await;
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        cache_status(&partial),
        "tower-redis-cache; fwd=bypass; detail=range"
    );
    assert_eq!(&body(partial).await[..], b"{");
    wait_until("the range's fill stored", || {
        layer.handle().stats().stores == 2
    })
    .await;
    let cut = call(&service, get(OTHER, &[("range", "bytes=1-4")])).await;
    assert_eq!(
        (cut.status(), outcome(&cut)),
        (StatusCode::PARTIAL_CONTENT, CacheOutcome::Hit)
    );
    assert_eq!(cut.headers()["content-range"], "bytes 1-4/19");
    assert_eq!(&body(cut).await[..], br#""n":"#);
    assert_eq!(origin.calls(), 3);
    assert_eq!(layer.handle().stats().refreshes_started, 1);
}

#[tokio::test]
async fn ranges_asked_for_together_before_the_entry_exists_fill_it_once() {
    let server = RedisServer::start();
    let origin = Origin::new();
    // Slow enough that every range below has read the store before the fill answers.
    origin.set_delay(Duration::from_secs(1));
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    const FILE: &str = "http://api.test/video";
    let ranges = (0..8).map(|_| call(&service, get(FILE, &[("range", "bytes=0-0")])));
    for partial in futures_util::future::join_all(ranges).await {
        assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(outcome(&partial), CacheOutcome::Bypass(BypassReason::Range));
    }
    wait_until("the fill stored", || layer.handle().stats().stores == 1).await;
    assert_eq!(origin.calls(), 9, "eight ranges passed on, one fill");
    assert_eq!(layer.handle().stats().refreshes_started, 1);

    // A key whose answer may not be stored is fetched whole once: the fill leaves a marker in the entry's place,
    // as a miss does, and the ranges after it are only passed on.
    origin.add_header("cache-control", "no-store");
    origin.set_delay(Duration::ZERO);
    const PRIVATE: &str = "http://api.test/private-video";
    let range = || get(PRIVATE, &[("range", "bytes=0-0")]);
    assert_eq!(
        call(&service, range()).await.status(),
        StatusCode::PARTIAL_CONTENT
    );
    wait_until("the fill marked the key", || {
        let stats = layer.handle().stats();
        (stats.uncacheable_marks, stats.refreshes_failed) == (1, 1)
    })
    .await;
    for _ in 0..2 {
        let partial = call(&service, range()).await;
        assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    }
    let stats = layer.handle().stats();
    assert_eq!(
        (
            stats.stores,
            stats.refreshes_started,
            stats.refreshes_skipped
        ),
        (1, 2, 0)
    );
    assert_eq!(
        origin.calls(),
        9 + 3 + 1,
        "three ranges passed on, one fill"
    );
}

#[tokio::test]
async fn a_clients_own_validators_are_answered_by_the_cache_and_never_forwarded() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.set_etag("\"v1\"");
    origin.add_header("last-modified", MODIFIED);
    let gets = layer(&server).await.build().unwrap();
    let service = cached(&gets, origin.service());

    // A cold miss from a client that holds v1. Forwarded, its `If-None-Match` would get the origin's 304, which
    // nothing could store; the cache asks without it, stores the 200, and answers the client's validator itself.
    let first = call(
        &service,
        get("http://api.test/doc", &[("if-none-match", "\"v1\"")]),
    )
    .await;
    assert_eq!(first.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        cache_status(&first),
        "tower-redis-cache; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(first.headers()["etag"], "\"v1\"");
    assert_eq!(first.headers()["last-modified"], MODIFIED);
    assert!(!first.headers().contains_key("content-type"));
    assert!(body(first).await.is_empty());

    // The stored answer is whole, for a client without validators or with others.
    for headers in [
        &[][..],
        &[("if-none-match", "\"v0\"")],
        &[("if-modified-since", "Sun, 06 Nov 1994 08:49:36 GMT")],
        // `If-None-Match` decides alone, even beside a date that would match.
        &[("if-none-match", "\"v0\""), ("if-modified-since", MODIFIED)],
    ] {
        let whole = call(&service, get("http://api.test/doc", headers)).await;
        assert_eq!(
            (whole.status(), outcome(&whole)),
            (StatusCode::OK, CacheOutcome::Hit),
            "{headers:?}"
        );
        assert_eq!(whole.headers()["content-type"], "application/json");
        assert_eq!(
            &body(whole).await[..],
            br#"{"n":1,"echo":null}"#,
            "{headers:?}"
        );
    }

    // Hits for clients that hold it: a weak tag, a list, `*`, a date at or after `Last-Modified`.
    for headers in [
        &[("if-none-match", "W/\"v1\"")][..],
        &[("if-none-match", "\"v0\", \"v1\"")],
        &[("if-none-match", "*")],
        &[("if-modified-since", MODIFIED)],
        &[("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")],
    ] {
        let confirmed = call(&service, get("http://api.test/doc", headers)).await;
        assert_eq!(
            (confirmed.status(), outcome(&confirmed)),
            (StatusCode::NOT_MODIFIED, CacheOutcome::Hit),
            "{headers:?}"
        );
        let status = cache_status(&confirmed);
        assert!(
            status.starts_with("tower-redis-cache; hit; ttl="),
            "{headers:?}: {status}"
        );
        assert!(body(confirmed).await.is_empty(), "{headers:?}");
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(gets.handle().stats().not_modified, 6);

    // Preconditions are the origin's to evaluate, and validators of a method other than `GET` and `HEAD` too.
    let precondition = call(
        &service,
        get("http://api.test/doc", &[("if-match", "\"v1\"")]),
    )
    .await;
    assert_eq!(
        outcome(&precondition),
        CacheOutcome::Bypass(BypassReason::Conditional)
    );
    let mut query = post(r#"{"q":1}"#);
    query
        .headers_mut()
        .insert("if-none-match", http::HeaderValue::from_static("\"v1\""));
    let queries = layer(&server)
        .await
        .methods([Method::GET, Method::POST])
        .build()
        .unwrap();
    let posted = call(&cached(&queries, origin.service()), query).await;
    assert_eq!(
        outcome(&posted),
        CacheOutcome::Bypass(BypassReason::Conditional)
    );
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn responses_with_set_cookie_are_neither_stored_nor_shared_with_waiters() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("set-cookie", "session=for-the-first-caller");
    let (store, reads) = CountingStore::new(RedisStore::new(fred_client(&server.url()).await));
    let layer = RedisCacheLayer::builder(store)
        .namespace("shared")
        .store_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());

    origin.close();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                let response = call(&service, get("http://api.test/profile", &[])).await;
                (
                    outcome(&response),
                    cache_status(&response),
                    body(response).await,
                )
            })
        })
        .collect();
    // Past its look-up, each caller has joined the in-flight call: two of them wait on the first.
    wait_until("all three looked up", || reads.load(Ordering::SeqCst) == 3).await;
    assert_eq!(origin.calls(), 1);
    origin.open();
    let mut bodies = Vec::new();
    let mut told = 0;
    for task in tasks {
        let (outcome, status, body) = task.await.unwrap();
        assert_eq!(
            outcome,
            CacheOutcome::Miss {
                collapsed: false,
                stored: false
            }
        );
        told += usize::from(status.ends_with("; detail=response-set-cookie"));
        bodies.push(body);
    }
    // Each answer says why it was not kept.
    assert_eq!(told, 3);
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 3, "each caller got an answer of its own");
    assert_eq!(origin.calls(), 3);
    assert_eq!(stored_keys(&server), 0);
}

#[tokio::test]
async fn private_and_no_store_responses_are_not_stored() {
    let server = RedisServer::start();
    for (directive, reason) in [
        ("private, max-age=60", NotStored::Private),
        ("no-store", NotStored::NoStore),
    ] {
        let why = reason.as_str();
        let origin = Origin::new();
        origin.add_header("cache-control", directive);
        let layer = layer(&server).await.build().unwrap();
        let service = cached(&layer, origin.service());
        for n in 1..=2 {
            let response = call(&service, get("http://api.test/account", &[])).await;
            assert_eq!(
                outcome(&response),
                CacheOutcome::Miss {
                    collapsed: false,
                    stored: false
                },
                "{directive}"
            );
            assert_eq!(
                cache_status(&response),
                format!("tower-redis-cache; fwd=uri-miss; fwd-status=200; detail={why}")
            );
            assert_eq!(body(response).await, format!(r#"{{"n":{n},"echo":null}}"#));
        }
        let stats = layer.handle().stats();
        assert_eq!(
            (stats.not_stored, stats.not_stored_for(reason)),
            (2, 2),
            "{why}"
        );
    }
    assert_eq!(stored_keys(&server), 0);
}

#[tokio::test]
async fn the_response_vary_is_honoured_per_variant() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("vary", "Accept-Language");
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let greet = |lang: &'static str| get("http://api.test/greeting", &[("accept-language", lang)]);

    assert!(matches!(
        outcome(&call(&service, greet("de")).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    // Hits enough for this thread to keep the entry's head, which must keep honouring the variant.
    for _ in 0..4 {
        let de = call(&service, greet("de")).await;
        assert_eq!(outcome(&de), CacheOutcome::Hit);
    }
    let fr = call(&service, greet("fr")).await;
    assert_eq!(
        cache_status(&fr),
        "tower-redis-cache; fwd=vary-miss; fwd-status=200; stored"
    );
    assert_eq!(&body(fr).await[..], br#"{"n":2,"echo":null}"#);
    // Each variant keeps an entry: clients alternating between them hit their own.
    for _ in 0..3 {
        for (lang, n) in [("fr", 2), ("de", 1)] {
            let response = call(&service, greet(lang)).await;
            assert_eq!(outcome(&response), CacheOutcome::Hit, "{lang}");
            let expected = format!(r#"{{"n":{n},"echo":null}}"#);
            assert_eq!(&body(response).await[..], expected.as_bytes(), "{lang}");
        }
    }
    assert_eq!(origin.calls(), 2);
    assert_eq!(
        layer.handle().stats().variant_reads,
        1,
        "only the first French request read two keys"
    );

    // Coalesced callers share an answer only with those of the same variant.
    origin.close();
    let spawn = |lang: &'static str| {
        let service = service.clone();
        tokio::spawn(async move {
            let mut request = greet(lang);
            request
                .headers_mut()
                .insert("cache-control", "no-cache".parse().unwrap());
            let response = call(&service, request).await;
            (outcome(&response), body(response).await)
        })
    };
    let leader = spawn("en");
    wait_until("the leader reached the origin", || origin.calls() == 3).await;
    let same = spawn("en");
    let other = spawn("it");
    // No-cache requests read nothing: once they have run, the other language has called the origin.
    wait_until("the other language reached the origin", || {
        origin.calls() == 4
    })
    .await;
    origin.open();
    let (_, leader_body) = leader.await.unwrap();
    let (same_outcome, same_body) = same.await.unwrap();
    let (_, other_body) = other.await.unwrap();
    assert_eq!(same_body, leader_body);
    assert_eq!(
        same_outcome,
        CacheOutcome::Miss {
            collapsed: true,
            stored: false
        }
    );
    assert_ne!(
        other_body, leader_body,
        "another language never gets the leader's answer"
    );
    assert_eq!(origin.calls(), 4);
    // Both were stored, each for its own variant.
    for lang in ["en", "it", "de", "fr"] {
        assert_eq!(
            outcome(&call(&service, greet(lang)).await),
            CacheOutcome::Hit,
            "{lang}"
        );
    }
    assert_eq!(origin.calls(), 4);
}

/// Without [`keep_variants`](RedisCacheLayerBuilder::keep_variants) a key holds one answer: another variant's
/// replaces it, and it never answers another variant.
#[tokio::test]
async fn without_kept_variants_one_replaces_another() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("vary", "Accept-Language");
    let layer = layer(&server).await.keep_variants(false).build().unwrap();
    let service = cached(&layer, origin.service());
    let greet = |lang: &'static str| get("http://api.test/greeting", &[("accept-language", lang)]);
    for lang in ["de", "fr", "de", "fr"] {
        let response = call(&service, greet(lang)).await;
        assert_eq!(
            cache_status(&response),
            if origin.calls() == 1 {
                "tower-redis-cache; fwd=uri-miss; fwd-status=200; stored"
            } else {
                "tower-redis-cache; fwd=vary-miss; fwd-status=200; stored"
            },
            "{lang}"
        );
    }
    assert_eq!(origin.calls(), 4);
    assert_eq!(
        outcome(&call(&service, greet("fr")).await),
        CacheOutcome::Hit
    );
    assert_eq!(stored_keys(&server), 1);
}

/// Variants kept apart across processes: a process that never saw a URI's answers vary learns it from the entry
/// under the request's key and reads the variant another process stored; a write to the URI, or `invalidate`
/// and `invalidate_uri`, from a process that learned nothing, removes every variant.
#[tokio::test]
async fn variants_are_shared_by_every_process_and_removed_by_any() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("vary", "Accept-Language");
    let (layer_a, layer_b) = (
        layer(&server).await.build().unwrap(),
        layer(&server).await.build().unwrap(),
    );
    let (a, b) = (
        cached(&layer_a, origin.service()),
        cached(&layer_b, origin.service()),
    );
    let languages = [
        ("accept-language", "de"),
        ("accept-language", "en"),
        ("accept-language", "fr"),
    ];
    for language in languages {
        assert!(is_stored_miss(read_with(&a, ITEM, &[language]).await));
    }
    assert_eq!(origin.calls(), 3);
    // Only the first request of another variant read two keys; once learned, French went to its own at once.
    assert_eq!(layer_a.handle().stats().variant_reads, 1);
    for language in languages.iter().rev().chain(&languages) {
        assert_eq!(
            read_with(&b, ITEM, &[*language]).await,
            CacheOutcome::Hit,
            "{language:?}"
        );
    }
    assert_eq!(origin.calls(), 3);
    assert_eq!(
        layer_b.handle().stats().variant_reads,
        1,
        "b's first French request"
    );
    assert_eq!(
        stored_keys(&server),
        3 + 1,
        "three entries and the URI's tag"
    );

    // A write from a process that learned nothing, in a language no entry has: every variant goes.
    let layer_c = layer(&server).await.build().unwrap();
    let c = cached(&layer_c, origin.service());
    write_with(&c, "PUT", &[("accept-language", "it")]).await;
    for language in languages {
        assert!(
            is_stored_miss(read_with(&b, ITEM, &[language]).await),
            "{language:?}"
        );
    }
    assert_eq!(origin.calls(), 3 + 1 + 3);

    // `invalidate` removes a request's own variant (and the entry under its key), found through that entry.
    let layer_d = layer(&server).await.build().unwrap();
    let fr = get(ITEM, &[languages[2]]).map(|_| Bytes::new());
    assert!(layer_d.handle().invalidate(&fr).await.unwrap());
    assert!(is_stored_miss(read_with(&b, ITEM, &[languages[2]]).await));
    assert_eq!(
        read_with(&b, ITEM, &[languages[1]]).await,
        CacheOutcome::Hit
    );
    let webhook = layer_d
        .handle()
        .invalidate_uri(&get(ITEM, &[]))
        .await
        .unwrap();
    assert!(webhook >= 2, "{webhook}");
    for language in languages {
        assert!(
            is_stored_miss(read_with(&a, ITEM, &[language]).await),
            "{language:?}"
        );
    }
}

/// Pages on two origins calling one CORS API: each gets the grant to its own, and neither evicts the other.
#[tokio::test]
async fn pages_on_two_origins_each_hit_their_own_cors_answer() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.echo_headers();
    origin.add_header("vary", "Origin");
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let from = |page: &'static str| get("http://api.test/items", &[("origin", page)]);
    for _ in 0..3 {
        for page in ["https://a.example", "https://b.example"] {
            let response = call(&service, from(page)).await;
            assert_eq!(echoed(&response, "origin"), Some(page));
        }
    }
    assert_eq!(origin.calls(), 2);
}

/// Answers that depend on a request header their origin leaves out of `Vary`: one compressed for whoever asks
/// (nginx's default leaves out `Vary: Accept-Encoding`), a CORS grant to the page's origin (servers that
/// reflect `Origin` often leave out `Vary: Origin`). A client that sent another value, or none, is not answered
/// from the entry: it could not read the body, or its browser would refuse the grant.
#[tokio::test]
async fn an_answer_varies_on_the_request_header_it_depends_on_whether_said_or_not() {
    let server = RedisServer::start();
    let cases = [
        ("content-encoding", "gzip", "accept-encoding", "gzip", "br"),
        (
            "access-control-allow-origin",
            "https://a.example",
            "origin",
            "https://a.example",
            "https://b.example",
        ),
    ];
    for (answer, value, asked, first, other) in cases {
        let origin = Origin::new();
        origin.add_header(answer, value);
        let layer = layer(&server).await.namespace(answer).build().unwrap();
        let service = cached(&layer, origin.service());
        let request = |value: Option<&'static str>| {
            let mut request = Request::get("http://api.test/report");
            if let Some(value) = value {
                request = request.header(asked, value);
            }
            request.body(Full::default()).unwrap()
        };

        let stored = call(&service, request(Some(first))).await;
        assert!(
            matches!(outcome(&stored), CacheOutcome::Miss { stored: true, .. }),
            "{answer}"
        );
        let hit = call(&service, request(Some(first))).await;
        assert_eq!(outcome(&hit), CacheOutcome::Hit, "{answer}");
        for value in [Some(other), None] {
            let response = call(&service, request(value)).await;
            assert!(
                cache_status(&response).contains("fwd=vary-miss"),
                "{answer}, {asked}: {value:?}: {}",
                cache_status(&response)
            );
        }
        assert_eq!(origin.calls(), 3, "{answer}");
    }
}

/// Browsers list the codings they accept differently (Chrome and Firefox add `zstd`, Safari does not): one
/// compressed entry answers all that accept its coding, instead of each replacing the others'.
#[tokio::test]
async fn clients_that_list_codings_differently_share_one_compressed_entry() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("content-encoding", "br");
    origin.add_header("vary", "Accept-Encoding");
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let asking =
        |codings: &'static str| get("http://api.test/page", &[("accept-encoding", codings)]);

    let stored = call(&service, asking("gzip, deflate, br, zstd")).await;
    assert!(matches!(
        outcome(&stored),
        CacheOutcome::Miss { stored: true, .. }
    ));
    for codings in ["gzip, deflate, br", "br", "gzip, deflate, br, zstd"] {
        let response = call(&service, asking(codings)).await;
        assert_eq!(outcome(&response), CacheOutcome::Hit, "{codings}");
        assert_eq!(response.headers()["content-encoding"], "br");
    }
    // One that cannot decode it is never answered from it, nor from what was stored for another that cannot
    // (here the origin sends `br` to each regardless).
    for codings in ["gzip, deflate", "br;q=0, gzip", "gzip, deflate"] {
        let response = call(&service, asking(codings)).await;
        assert!(
            cache_status(&response).contains("fwd=vary-miss"),
            "{codings}: {}",
            cache_status(&response)
        );
    }
    assert_eq!(origin.calls(), 4);
}

/// An origin that answers by `Accept` and does not say so in `Vary` (Laravel's `wantsJson`: JSON when the first
/// type asked for is JSON, else the HTML page): a client is never answered with a type its `Accept` refuses, and
/// the clients of each type keep an entry each, in every process.
#[tokio::test]
async fn an_answer_is_never_given_to_a_request_whose_accept_refuses_its_type() {
    let server = RedisServer::start();
    let first = layer(&server).await.build().unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let origin = tower::service_fn({
        let calls = calls.clone();
        move |request: Request<tower_redis_cache::RequestBody>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let json = request
                .headers()
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').next().unwrap_or("").contains("json"));
            let (content_type, page): (&str, &[u8]) = if json {
                ("application/json", br#"{"items":[]}"#)
            } else {
                ("text/html; charset=utf-8", b"<ul></ul>")
            };
            async move {
                Ok::<_, tower_redis_cache::error::BoxError>(
                    http::Response::builder()
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from_static(page)))?,
                )
            }
        }
    });
    let service = cached(&first, origin);
    let asking = |accept: &'static str| get("http://api.test/items", &[("accept", accept)]);
    let json = "application/json";

    let stored = call(&service, asking(json)).await;
    assert!(matches!(
        outcome(&stored),
        CacheOutcome::Miss { stored: true, .. }
    ));
    // Hits enough for this thread to keep the entry's head: it must read `Accept` too.
    for accept in [json, json, json, "*/*", "application/*", json] {
        let response = call(&service, asking(accept)).await;
        assert_eq!(outcome(&response), CacheOutcome::Hit, "{accept}");
        assert_eq!(&body(response).await[..], br#"{"items":[]}"#);
    }
    let none = call(&service, get("http://api.test/items", &[])).await;
    assert_eq!(outcome(&none), CacheOutcome::Hit, "no `Accept`: any type");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A client that takes HTML only is sent to the origin, and its page is stored as a variant of its own.
    let html = "text/html";
    let page = call(&service, asking(html)).await;
    assert_eq!(
        cache_status(&page),
        "tower-redis-cache; fwd=vary-miss; fwd-status=200; stored"
    );
    assert_eq!(&body(page).await[..], b"<ul></ul>");
    // Each keeps its entry: clients alternating between the two types hit their own.
    for _ in 0..3 {
        for (accept, expected) in [(html, &b"<ul></ul>"[..]), (json, br#"{"items":[]}"#)] {
            let response = call(&service, asking(accept)).await;
            assert_eq!(outcome(&response), CacheOutcome::Hit, "{accept}");
            assert_eq!(&body(response).await[..], expected, "{accept}");
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(stored_keys(&server), 2 + 1, "two entries and the URI's tag");

    // Another process learns the same from the entry, and reads the variant the first stored.
    let other = layer(&server).await.build().unwrap();
    let elsewhere = cached(&other, service.get_ref().clone());
    for (accept, expected) in [(html, &b"<ul></ul>"[..]), (json, br#"{"items":[]}"#)] {
        let response = call(&elsewhere, asking(accept)).await;
        assert_eq!(outcome(&response), CacheOutcome::Hit, "{accept}");
        assert_eq!(&body(response).await[..], expected, "{accept}");
    }
    // Invalidating the HTML client's request removes its entry, from a process that read that variant, and from
    // one that learned nothing and finds it from the entry under the URI's key (which the first invalidation
    // took too, and the JSON client fills again).
    let fresh = layer(&server).await.build().unwrap();
    for (n, invalidating) in [&other, &fresh].into_iter().enumerate() {
        if n > 0 {
            let items = call(&service, asking(json)).await;
            assert!(matches!(
                outcome(&items),
                CacheOutcome::Miss { stored: true, .. }
            ));
        }
        let request = Request::get("http://api.test/items")
            .header("accept", html)
            .body(Bytes::new())
            .unwrap();
        assert!(invalidating.handle().invalidate(&request).await.unwrap());
        let page = call(&service, asking(html)).await;
        assert!(matches!(
            outcome(&page),
            CacheOutcome::Miss { stored: true, .. }
        ));
        assert_eq!(&body(page).await[..], b"<ul></ul>");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);

    // An origin that answers one type whatever is asked: the client it refuses still hits what was stored for
    // the same `Accept`, and no other refusing client is answered with it.
    let origin = Origin::new();
    let service = cached(&first, origin.service());
    let xml = |accept: &'static str| get("http://api.test/orders", &[("accept", accept)]);
    for expected in [
        CacheOutcome::Miss {
            collapsed: false,
            stored: true,
        },
        CacheOutcome::Hit,
    ] {
        let response = call(&service, xml("application/xml")).await;
        assert_eq!(outcome(&response), expected);
        assert_eq!(response.headers()["content-type"], "application/json");
    }
    let csv = call(&service, xml("text/csv")).await;
    assert!(
        cache_status(&csv).contains("fwd=vary-miss"),
        "{}",
        cache_status(&csv)
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("vary", "*");
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    for _ in 0..2 {
        let response = call(&service, get("http://api.test/random", &[])).await;
        assert_eq!(
            outcome(&response),
            CacheOutcome::Miss {
                collapsed: false,
                stored: false
            }
        );
        assert!(cache_status(&response).ends_with("; detail=response-vary-star"));
    }
    assert_eq!(origin.calls(), 2);
    assert_eq!(stored_keys(&server), 0);
}

#[tokio::test]
async fn keys_keep_repeated_query_parameters_and_escaped_json_keys_apart() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server)
        .await
        .methods([Method::GET, Method::POST])
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());

    let by_name = call(
        &service,
        get("http://api.test/items?sort=name&sort=date", &[]),
    )
    .await;
    let by_date = call(
        &service,
        get("http://api.test/items?sort=date&sort=name", &[]),
    )
    .await;
    assert!(matches!(outcome(&by_date), CacheOutcome::Miss { .. }));
    assert_ne!(body(by_name).await, body(by_date).await);

    // Last-wins parsers read these as a=2 and a=1.
    let two = call(&service, post(r#"{"a":1,"\u0061":2}"#)).await;
    let one = call(&service, post(r#"{"\u0061":2,"a":1}"#)).await;
    assert!(matches!(outcome(&one), CacheOutcome::Miss { .. }));
    assert_eq!(
        &body(two).await[..],
        br#"{"n":3,"echo":{"a":1,"\u0061":2}}"#
    );
    assert_eq!(
        &body(one).await[..],
        br#"{"n":4,"echo":{"\u0061":2,"a":1}}"#
    );
    // Escapes that mean the same letters are the same query.
    let escaped = call(&service, post(r#"{"\u0071":"x"}"#)).await;
    let plain = call(&service, post(r#"{"q":"x"}"#)).await;
    assert!(matches!(outcome(&escaped), CacheOutcome::Miss { .. }));
    assert_eq!(outcome(&plain), CacheOutcome::Hit);
    assert_eq!(origin.calls(), 5);
}

#[tokio::test]
async fn concurrent_no_cache_requests_still_make_one_origin_call() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    call(&service, get("http://api.test/report", &[])).await;

    origin.close();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                let response = call(
                    &service,
                    get("http://api.test/report", &[("cache-control", "no-cache")]),
                )
                .await;
                (cache_status(&response), body(response).await)
            })
        })
        .collect();
    wait_until("the revalidation reached the origin", || {
        origin.calls() == 2
    })
    .await;
    // No-cache requests read nothing: once they have run, all four others wait on the first.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    origin.open();
    let mut collapsed = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert!(
            status.starts_with("tower-redis-cache; fwd=request; fwd-status=200"),
            "{status}"
        );
        collapsed += usize::from(status.ends_with("collapsed"));
        assert_eq!(&body[..], br#"{"n":2,"echo":null}"#);
    }
    assert_eq!(origin.calls(), 2, "one revalidation for five callers");
    assert_eq!(collapsed, 4, "the others shared it");
    let after = call(&service, get("http://api.test/report", &[])).await;
    assert_eq!(outcome(&after), CacheOutcome::Hit);
    assert_eq!(&body(after).await[..], br#"{"n":2,"echo":null}"#);
}

/// A chunked body of `chunks` chunks of `size` bytes each, made as it is read.
fn chunked(
    chunks: usize,
    size: usize,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>>> {
    let chunk = Bytes::from(vec![b'x'; size]);
    StreamBody::new(futures_util::stream::iter(
        (0..chunks).map(move |_| Ok(Frame::data(chunk.clone()))),
    ))
}

#[tokio::test]
async fn a_chunked_body_over_the_cap_reaches_the_origin_whole_and_uncached() {
    let server = RedisServer::start();
    let layer = layer(&server)
        .await
        .methods([Method::POST])
        .max_body_size(4096)
        .build()
        .unwrap();
    // An origin that counts what it receives.
    let origin = tower::service_fn(
        |request: Request<tower_redis_cache::RequestBody>| async move {
            let received = request.into_body().collect().await?.to_bytes();
            Ok::<_, tower_redis_cache::error::BoxError>(http::Response::new(Full::new(
                Bytes::from(received.len().to_string()),
            )))
        },
    );
    let service = cached(&layer, origin);
    let request = Request::post("http://api.test/upload")
        .body(chunked(64, 1024))
        .unwrap();
    let response: Reply = service.clone().oneshot(request).await.unwrap();
    assert_eq!(
        cache_status(&response),
        "tower-redis-cache; fwd=bypass; detail=request-too-large"
    );
    assert_eq!(&body(response).await[..], b"65536");

    // Within the cap, a chunked body is keyed like any other.
    for expected in [
        CacheOutcome::Miss {
            collapsed: false,
            stored: true,
        },
        CacheOutcome::Hit,
    ] {
        let request = Request::post("http://api.test/upload")
            .body(chunked(4, 1024))
            .unwrap();
        let response: Reply = service.clone().oneshot(request).await.unwrap();
        assert_eq!(outcome(&response), expected);
    }
}

/// A body of `data`, then one frame of trailers (`x-sum: <sum>`).
fn with_trailers(
    data: &'static str,
    sum: &'static str,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>>> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static(sum));
    let data = (!data.is_empty()).then(|| Ok(Frame::data(Bytes::from_static(data.as_bytes()))));
    StreamBody::new(futures_util::stream::iter(
        data.into_iter().chain([Ok(Frame::trailers(trailers))]),
    ))
}

#[tokio::test]
async fn trailers_reach_the_other_side_and_what_they_end_is_never_stored() {
    let server = RedisServer::start();
    let layer = layer(&server)
        .await
        .methods([Method::GET, Method::POST])
        .build()
        .unwrap();
    // An origin that records the trailers of each request it receives and answers `/trailed` with trailers.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let origin = {
        let seen = seen.clone();
        tower::service_fn(move |request: Request<tower_redis_cache::RequestBody>| {
            let seen = seen.clone();
            async move {
                let trailed = request.uri().path() == "/trailed";
                let received = request.into_body().collect().await?;
                let sum = received.trailers().and_then(|t| t.get("x-sum").cloned());
                seen.lock().unwrap().push(sum);
                let answer = Bytes::from(format!("{} bytes", received.to_bytes().len()));
                let body = if trailed {
                    with_trailers("answer", "7").boxed_unsync()
                } else {
                    Full::new(answer).map_err(|e| match e {}).boxed_unsync()
                };
                Ok::<_, tower_redis_cache::error::BoxError>(http::Response::new(body))
            }
        })
    };
    let service = cached(&layer, origin);
    let status = |response: &http::Response<_>| {
        response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned()
    };

    // An answer with trailers: each caller gets them, and nothing is stored.
    for _ in 0..2 {
        let request = get("http://api.test/trailed", &[]);
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(
            status(&response),
            "tower-redis-cache; fwd=uri-miss; fwd-status=200; detail=response-trailers"
        );
        let answer = response.into_body().collect().await.unwrap();
        assert_eq!(answer.trailers().unwrap()["x-sum"], "7");
        assert_eq!(&answer.to_bytes()[..], b"answer");
    }
    assert_eq!(
        layer.handle().stats().not_stored_for(NotStored::Trailers),
        2
    );
    assert_eq!(stored_keys(&server), 0);

    // A query whose body ends with trailers: they reach the origin, and it is not keyed without them.
    for (data, sum) in [("{\"q\":1}", "1"), ("{\"q\":1}", "2"), ("", "3")] {
        let request = Request::post("http://api.test/query")
            .body(with_trailers(data, sum))
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(
            status(&response),
            "tower-redis-cache; fwd=bypass; detail=request-trailers"
        );
        let expected = format!("{} bytes", data.len());
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            expected
        );
    }
    assert_eq!(
        layer
            .handle()
            .stats()
            .bypasses_for(BypassReason::RequestTrailers),
        3
    );
    let sums: Vec<_> = seen.lock().unwrap().drain(..).collect();
    assert_eq!(
        sums,
        [None, None, Some("1"), Some("2"), Some("3")].map(|s| s.map(HeaderValue::from_static))
    );
    assert_eq!(stored_keys(&server), 0);
}

#[tokio::test]
async fn a_body_ended_by_trailers_is_read_for_a_write_it_shows() {
    let server = RedisServer::start();
    let layer = layer(&server)
        .await
        .methods([Method::GET, Method::POST])
        .query_when(|_, body| tower_redis_cache::cache::graphql::is_query(body))
        .build()
        .unwrap();
    let origin = Origin::new();
    let service = cached(&layer, origin.service());
    let page = || get("http://api.test/graphql", &[]);
    let send = |data: &'static str| {
        let request = Request::post("http://api.test/graphql")
            .header("content-type", "application/json")
            .body(with_trailers(data, "1"))
            .unwrap();
        service.clone().oneshot(request)
    };
    call(&service, page()).await;
    assert_eq!(outcome(&call(&service, page()).await), CacheOutcome::Hit);

    // A query ended by trailers goes to the origin unkeyed, and changes nothing.
    let query = send(r#"{"query":"{ items { id } }"}"#).await.unwrap();
    assert_eq!(
        cache_status(&query),
        "tower-redis-cache; fwd=bypass; detail=request-trailers"
    );
    assert_eq!(outcome(&call(&service, page()).await), CacheOutcome::Hit);
    // A mutation so ended is read as one: once it succeeds, the URI's entries are gone.
    let mutation = send(r#"{"query":"mutation { add { id } }"}"#)
        .await
        .unwrap();
    assert_eq!(
        cache_status(&mutation),
        "tower-redis-cache; fwd=method; detail=not-a-query"
    );
    assert!(matches!(
        outcome(&call(&service, page()).await),
        CacheOutcome::Miss { .. }
    ));
    assert_eq!(origin.calls(), 4);
}

fn request(method: &str, uri: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"name":"new"}"#)))
        .unwrap()
}

const ITEM: &str = "https://api.example.com/items/1";
const OTHER_ITEM: &str = "https://api.example.com/items/2";

/// Fills the entries of a `GET` and a `HEAD` of `ITEM` and of a `GET` of `OTHER_ITEM`, and checks they answer.
async fn fill<S: Cached>(service: &S) {
    let reads = [("GET", ITEM), ("HEAD", ITEM), ("GET", OTHER_ITEM)];
    for (method, uri) in reads {
        call(service, request(method, uri).map(|_| Full::default())).await;
    }
    for (method, uri) in reads {
        let response = call(service, request(method, uri).map(|_| Full::default())).await;
        assert_eq!(outcome(&response), CacheOutcome::Hit, "{method} {uri}");
    }
}

#[tokio::test]
async fn a_successful_unsafe_request_drops_the_entries_of_its_target_uri() {
    // RFC 9111 §4.4, for every unsafe method, known or not.
    let server = RedisServer::start();
    let origin = Origin::new();
    // `HEAD`s with entries of their own, so that a write must drop two entries of its URI.
    let layer = layer(&server).await.head_from_get(false).build().unwrap();
    let service = cached(&layer, origin.service());
    for (done, method) in ["PUT", "PATCH", "DELETE", "POST", "PURGE"]
        .into_iter()
        .enumerate()
    {
        fill(&service).await;
        let calls = origin.calls();
        let write = call(&service, request(method, ITEM)).await;
        assert_eq!(write.status(), StatusCode::OK);
        assert_eq!(outcome(&write), CacheOutcome::Bypass(BypassReason::Method));
        assert_eq!(origin.calls(), calls + 1, "{method} reached the origin");
        for read in ["GET", "HEAD"] {
            let after = call(&service, request(read, ITEM).map(|_| Full::default())).await;
            assert!(
                matches!(outcome(&after), CacheOutcome::Miss { stored: true, .. }),
                "{read} after {method}: {}",
                cache_status(&after)
            );
        }
        let neighbour = call(
            &service,
            request("GET", OTHER_ITEM).map(|_| Full::default()),
        )
        .await;
        assert_eq!(
            outcome(&neighbour),
            CacheOutcome::Hit,
            "another URI keeps its entry"
        );
        assert_eq!(layer.handle().stats().unsafe_invalidations, done as u64 + 1);
    }
}

#[tokio::test]
async fn a_write_whose_answer_never_came_removes_the_entries_of_its_target_uri() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server)
        .await
        .methods([Method::GET, Method::HEAD])
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    fill(&service).await;

    // The connection failed after the request went out: the origin may have deleted the item, so its entries go,
    // and the caller gets the error.
    origin.fail_transport();
    let error = service.clone().oneshot(request("DELETE", ITEM)).await;
    assert!(error.is_err(), "a transport error reaches the caller");
    origin.heal();
    let calls = origin.calls();
    let after = call(&service, get(ITEM, &[])).await;
    assert!(matches!(outcome(&after), CacheOutcome::Miss { .. }));
    assert_eq!(origin.calls(), calls + 1);
    let other = call(&service, get(OTHER_ITEM, &[])).await;
    assert_eq!(outcome(&other), CacheOutcome::Hit);
    assert_eq!(layer.handle().stats().unsafe_invalidations, 1);

    // A gateway in front of the origin that got no answer from it says so in a status: the same.
    for (n, status) in [
        (2, StatusCode::BAD_GATEWAY),
        (3, StatusCode::GATEWAY_TIMEOUT),
    ] {
        let again = call(&service, get(ITEM, &[])).await;
        assert_eq!(outcome(&again), CacheOutcome::Hit, "{status}");
        origin.fail_with(status);
        let gateway = call(&service, request("DELETE", ITEM)).await;
        assert_eq!(gateway.status(), status);
        origin.heal();
        let calls = origin.calls();
        let after = call(&service, get(ITEM, &[])).await;
        assert!(
            matches!(outcome(&after), CacheOutcome::Miss { .. }),
            "{status}"
        );
        assert_eq!(origin.calls(), calls + 1);
        assert_eq!(layer.handle().stats().unsafe_invalidations, n);
    }
}

#[tokio::test]
async fn failed_safe_or_cached_requests_leave_the_entries_of_their_target_uri() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server)
        .await
        .methods([Method::GET, Method::HEAD])
        // A POST to the items is a query this layer caches: it changes nothing.
        .cache_post_when(|parts| parts.uri.path().starts_with("/items/"))
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    fill(&service).await;

    origin.fail_with(StatusCode::CONFLICT);
    let refused = call(&service, request("PUT", ITEM)).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    origin.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    let unavailable = call(&service, request("DELETE", ITEM)).await;
    assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
    origin.heal();
    for method in ["OPTIONS", "TRACE"] {
        let safe = call(&service, request(method, ITEM)).await;
        assert_eq!(outcome(&safe), CacheOutcome::Bypass(BypassReason::Method));
    }
    let query = call(&service, request("POST", ITEM)).await;
    assert!(matches!(
        outcome(&query),
        CacheOutcome::Miss { stored: true, .. }
    ));
    // The same query past the cache is still a query.
    let mut uncached = request("POST", ITEM);
    uncached
        .headers_mut()
        .insert("cache-control", "no-store".parse().unwrap());
    let uncached = call(&service, uncached).await;
    assert_eq!(
        outcome(&uncached),
        CacheOutcome::Bypass(BypassReason::NoStore)
    );

    for read in ["GET", "HEAD"] {
        let after = call(&service, request(read, ITEM).map(|_| Full::default())).await;
        assert_eq!(outcome(&after), CacheOutcome::Hit, "{read}");
    }
    assert_eq!(layer.handle().stats().unsafe_invalidations, 0);

    // Turned off, a successful PUT leaves them too.
    let keeping = self::layer(&server)
        .await
        .invalidate_on_unsafe(false)
        .build()
        .unwrap();
    let service = cached(&keeping, origin.service());
    let put = call(&service, request("PUT", ITEM)).await;
    assert_eq!(put.status(), StatusCode::OK);
    let after = call(&service, request("GET", ITEM).map(|_| Full::default())).await;
    assert_eq!(outcome(&after), CacheOutcome::Hit);
    assert_eq!(keeping.handle().stats().unsafe_invalidations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_waiting_does_not_stop_the_removal() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server).await.build().unwrap();
    // Counts the origin's answers as they leave it.
    let (answered, _) = tokio::sync::watch::channel(0usize);
    let inner = {
        let (service, answered) = (origin.service(), answered.clone());
        tower::service_fn(move |request| {
            let (service, answered) = (service.clone(), answered.clone());
            async move {
                let response = service.oneshot(request).await;
                answered.send_modify(|n| *n += 1);
                response
            }
        })
    };
    let service = cached(&layer, inner);
    let item = || request("GET", ITEM).map(|_| Full::default());
    call(&service, item()).await;

    // Redis holds the removal; the PUT's caller gives up once the origin has answered.
    server.pause();
    let put = tokio::spawn(service.clone().oneshot(request("PUT", ITEM)));
    answered.subscribe().wait_for(|n| *n == 2).await.unwrap();
    put.abort();
    assert!(
        put.await.unwrap_err().is_cancelled(),
        "the response was waiting for the removal"
    );
    server.resume();

    wait_until("the removal ran on", || {
        layer.handle().stats().unsafe_invalidations == 1
    })
    .await;
    let after = call(&service, item()).await;
    assert!(
        matches!(outcome(&after), CacheOutcome::Miss { stored: true, .. }),
        "{}",
        cache_status(&after)
    );
}

/// An origin holding one item whose version a `PUT` moves on; it answers a `GET` with the version it read, and
/// holds one `GET` (the first, unless told another) after reading it until told to let go, like an origin call
/// that is slow to return.
struct Versioned {
    version: std::sync::atomic::AtomicUsize,
    gets: std::sync::atomic::AtomicUsize,
    /// The number (from 0) of the `GET` it holds.
    held: usize,
    /// Moves to 1 when the held `GET` has read the version.
    read: tokio::sync::watch::Sender<usize>,
    /// The held `GET` answers once this is true.
    release: tokio::sync::watch::Sender<bool>,
}

impl Versioned {
    fn new() -> std::sync::Arc<Self> {
        Self::holding(0)
    }

    /// An origin that holds its `GET` number `held` (from 0) instead of its first.
    fn holding(held: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Versioned {
            version: 1.into(),
            gets: 0.into(),
            held,
            read: tokio::sync::watch::Sender::new(0),
            release: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Starts `call`, and returns it once the origin holds it (it has read the version).
    async fn hold<T: Send + 'static>(
        &self,
        call: impl std::future::Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        let held = tokio::spawn(call);
        self.read.subscribe().wait_for(|n| *n == 1).await.unwrap();
        held
    }

    /// Lets the held call answer, and checks that it gave its caller version 1 without storing it.
    async fn release_unstored(
        &self,
        held: tokio::task::JoinHandle<Result<Reply, tower_redis_cache::error::BoxError>>,
        why: &str,
    ) {
        self.release.send_replace(true);
        let slow = held.await.unwrap().unwrap();
        assert!(
            matches!(outcome(&slow), CacheOutcome::Miss { stored: false, .. }),
            "{why}: {}",
            cache_status(&slow)
        );
        // The answer says why it was not kept.
        assert!(
            cache_status(&slow).ends_with("; detail=invalidated"),
            "{why}: {}",
            cache_status(&slow)
        );
        assert_eq!(body(slow).await, "v1", "{why}");
    }

    fn service(
        self: &std::sync::Arc<Self>,
    ) -> impl tower::Service<
        Request<tower_redis_cache::RequestBody>,
        Response = http::Response<Full<Bytes>>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let origin = self.clone();
        tower::service_fn(move |request: Request<tower_redis_cache::RequestBody>| {
            let origin = origin.clone();
            async move {
                if request.method() != Method::GET {
                    origin.version.fetch_add(1, Ordering::SeqCst);
                    return Ok(http::Response::new(Full::default()));
                }
                let version = origin.version.load(Ordering::SeqCst);
                if origin.gets.fetch_add(1, Ordering::SeqCst) == origin.held {
                    origin.read.send_replace(1);
                    let mut release = origin.release.subscribe();
                    let _ = release.wait_for(|open| *open).await;
                }
                // Tagged as a server names what an answer holds (read by layers with `tags_from_header`).
                let mut answer = http::Response::new(Full::new(Bytes::from(format!("v{version}"))));
                answer
                    .headers_mut()
                    .insert("cache-tag", http::HeaderValue::from_static("item-versions"));
                Ok(answer)
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_read_before_a_write_is_not_stored_after_it() {
    let server = RedisServer::start();
    let origin = Versioned::new();
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let item = || request("GET", ITEM).map(|_| Full::default());

    // A miss reads version 1 at the origin and is slow to come back.
    let slow = origin.hold(service.clone().oneshot(item())).await;
    let put = call(&service, request("PUT", ITEM)).await;
    assert_eq!(put.status(), StatusCode::OK);

    // A read after the write does not share the slow call: it asks the origin, and stores version 2.
    let after = call(&service, item()).await;
    assert_stored_v2(after, "").await;

    // The slow call's answer goes to its caller, but never into the store over version 2.
    origin.release_unstored(slow, "the held call").await;
    assert_eq!(layer.handle().stats().stores_fenced, 1);
    let hit = call(&service, item()).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert_eq!(body(hit).await, "v2");
    assert_eq!(origin.gets.load(Ordering::SeqCst), 2);
}

/// Checks that `reply` was a miss that stored the origin's version 2.
async fn assert_stored_v2(reply: Reply, why: &str) {
    assert!(
        matches!(outcome(&reply), CacheOutcome::Miss { stored: true, .. }),
        "{why}: {}",
        cache_status(&reply)
    );
    assert_eq!(body(reply).await, "v2", "{why}");
}

/// Sends `read()` up to `attempts` times, each given up after 250 ms: the first answer.
async fn first_answer<F>(attempts: usize, read: impl Fn() -> F) -> Option<Reply>
where
    F: std::future::Future<Output = Result<Reply, tower_redis_cache::error::BoxError>>,
{
    for _ in 0..attempts {
        if let Ok(answer) = tokio::time::timeout(Duration::from_millis(250), read()).await {
            return Some(answer.unwrap());
        }
    }
    None
}

/// A `GET` of `ITEM` through `layer_a` waits on the origin while a `PUT` of it through another layer succeeds;
/// then reads through `layer_a`, each given up after 250 ms, `attempts` times, until one is answered: it must
/// be version 2 (asked of the origin, or a hit on what an earlier given-up read stored). Then the held call
/// answers version 1 to its own caller, and `layer_a` holds version 2.
async fn a_read_after_a_write_elsewhere_gets_the_new_version(
    server: &RedisServer,
    layer_a: RedisCacheLayerBuilder,
    attempts: usize,
    why_not: &str,
) {
    let origin = Versioned::new();
    let layer_a = layer_a.build().unwrap();
    let layer_b = layer(server).await.build().unwrap();
    let (a, b) = (
        cached(&layer_a, origin.service()),
        cached(&layer_b, origin.service()),
    );
    let item = || request("GET", ITEM).map(|_| Full::default());
    let slow = origin.hold(a.clone().oneshot(item())).await;
    let put = call(&b, request("PUT", ITEM)).await;
    assert_eq!(put.status(), StatusCode::OK);

    let after = first_answer(attempts, || a.clone().oneshot(item())).await;
    let after: Reply = after.expect(why_not);
    assert_eq!(body(after).await, "v2");

    origin.release_unstored(slow, "the held call").await;
    let hit = call(&a, item()).await;
    assert_eq!(body(hit).await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_lease_a_write_removed_is_no_longer_shared_in_its_process() {
    let server = RedisServer::start();
    // A renews its fill's lease every 100 ms. Until a renewal finds the lease gone, a read in A shares the held
    // call and waits with it; from then on it asks the origin itself.
    let layer_a = layer(&server)
        .await
        .refresh_lease_for(Duration::from_millis(300));
    let why_not = "every read in A kept waiting on the call that predates the write";
    a_read_after_a_write_elsewhere_gets_the_new_version(&server, layer_a, 100, why_not).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_near_cache_the_push_for_a_removed_lease_stops_the_sharing_at_once() {
    let server = RedisServer::start();
    // A renews its fill's lease only every 20 s. The push for the lease the write removed wakes the fill, which
    // reads that the lease is gone and stops sharing its call: within 40 reads (10 s, half the renewal).
    let layer_a = layer(&server)
        .await
        .refresh_lease_for(Duration::from_secs(60))
        .near_cache(16 << 20);
    let why_not = "A kept sharing the call that predates the write until its renewal";
    a_read_after_a_write_elsewhere_gets_the_new_version(&server, layer_a, 40, why_not).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_a_write_overtakes_is_fenced_not_failed() {
    let server = RedisServer::start();
    // The second `GET` is the background refresh of a stale hit; it reads version 1 and is slow to come back.
    let origin = Versioned::holding(1);
    let layer = layer(&server)
        .await
        .fresh_for(Duration::ZERO)
        .stale_for(Duration::from_secs(60))
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let item = || request("GET", ITEM).map(|_| Full::default());
    call(&service, item()).await;
    let stale = call(&service, item()).await;
    assert_eq!(outcome(&stale), CacheOutcome::Stale { refreshing: true });
    origin.read.subscribe().wait_for(|n| *n == 1).await.unwrap();

    let put = call(&service, request("PUT", ITEM)).await;
    assert_eq!(put.status(), StatusCode::OK);
    origin.release.send_replace(true);
    wait_until("the refresh fenced off", || {
        layer.handle().stats().stores_fenced == 1
    })
    .await;
    let stats = layer.handle().stats();
    assert_eq!((stats.refreshes_started, stats.refreshes_failed), (1, 0));

    // The write removed the entry, and the refresh's version 1 did not come back in its place.
    let after = call(&service, item()).await;
    assert_stored_v2(after, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_invalidation_in_another_process_is_undone_by_a_fill_that_predates_it() {
    // Five ways to tell the fleet that the item changed, each from another process than the slow fill's. By
    // a request's tag, the fill is found because it recorded its key under the tag before it asked the origin;
    // by a tag its answer names, because it read the tag clock before it asked and the removal marked the tag.
    for way in ["PUT", "invalidate", "tag", "answer's tag", "purge"] {
        let server = RedisServer::start();
        let origin = Versioned::new();
        let tagged = || async {
            layer(&server)
                .await
                .tags(item_tags)
                .tags_from_header(http::HeaderName::from_static("cache-tag"))
        };
        let (layer_a, layer_b) = (
            tagged().await.build().unwrap(),
            // Fleet-wide collapsing off: B still leaves the storing to the holder of the key's lease.
            tagged().await.fleet_wait(Duration::ZERO).build().unwrap(),
        );
        let (a, b) = (
            cached(&layer_a, origin.service()),
            cached(&layer_b, origin.service()),
        );
        let item = || request("GET", ITEM).map(|_| Full::default());

        let slow = origin.hold(a.clone().oneshot(item())).await;
        match way {
            "PUT" => {
                let put = call(&b, request("PUT", ITEM)).await;
                assert_eq!(put.status(), StatusCode::OK);
            }
            "invalidate" => {
                origin.version.fetch_add(1, Ordering::SeqCst);
                let read = request("GET", ITEM).map(|_| Bytes::new());
                let existed = layer_b.handle().invalidate(&read).await.unwrap();
                assert!(!existed, "nothing stored yet: only the lease goes");
            }
            "tag" => {
                origin.version.fetch_add(1, Ordering::SeqCst);
                let removed = layer_b.handle().invalidate_tag("items").await.unwrap();
                assert_eq!(removed, 0, "nothing stored yet: only the lease goes");
            }
            "answer's tag" => {
                origin.version.fetch_add(1, Ordering::SeqCst);
                let removed = layer_b.handle().invalidate_tag("item-versions").await;
                assert_eq!(removed.unwrap(), 0, "nothing recorded yet: only the mark");
            }
            _ => {
                origin.version.fetch_add(1, Ordering::SeqCst);
                layer_b.handle().purge().await.unwrap();
            }
        }
        origin.release_unstored(slow, way).await;
        assert_eq!(layer_a.handle().stats().stores_fenced, 1, "{way}");

        // Version 2 is what either process reads next, and the one that asks stores it.
        let from_b = call(&b, item()).await;
        assert_stored_v2(from_b, way).await;
        let from_a = call(&a, item()).await;
        assert_eq!(outcome(&from_a), CacheOutcome::Hit, "{way}");
        assert_eq!(body(from_a).await, "v2", "{way}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_invalidation_in_another_process_is_undone_by_a_refresh_that_predates_it() {
    // As for a fill, for the background refresh of a stale entry: it holds the key's lease (removed with the
    // entry by a removal of its URI or its request's tag, and by a purge) and read the tag clock when it took
    // it (which a removal of its answer's tag moves on).
    for way in ["invalidate", "tag", "answer's tag", "purge"] {
        let server = RedisServer::start();
        // The second `GET` is the refresh; it reads version 1 and is slow to come back.
        let origin = Versioned::holding(1);
        let tagged = || async {
            layer(&server)
                .await
                .tags(item_tags)
                .tags_from_header(http::HeaderName::from_static("cache-tag"))
                .fresh_for(Duration::ZERO)
                .stale_for(Duration::from_secs(60))
                .build()
                .unwrap()
        };
        let (layer_a, layer_b) = (tagged().await, tagged().await);
        let a = cached(&layer_a, origin.service());
        let item = || request("GET", ITEM).map(|_| Full::default());
        call(&a, item()).await;
        let stale = call(&a, item()).await;
        assert_eq!(
            outcome(&stale),
            CacheOutcome::Stale { refreshing: true },
            "{way}"
        );
        origin.read.subscribe().wait_for(|n| *n == 1).await.unwrap();

        origin.version.fetch_add(1, Ordering::SeqCst);
        let handle = layer_b.handle();
        let removed = match way {
            "invalidate" => {
                let read = request("GET", ITEM).map(|_| Bytes::new());
                u64::from(handle.invalidate(&read).await.unwrap())
            }
            "tag" => handle.invalidate_tag("items").await.unwrap(),
            "answer's tag" => handle.invalidate_tag("item-versions").await.unwrap(),
            _ => handle.purge().await.unwrap(),
        };
        assert!(removed >= 1, "{way}: the stale entry went");
        origin.release.send_replace(true);
        wait_until("the refresh fenced off", || {
            layer_a.handle().stats().stores_fenced == 1
        })
        .await;
        let stats = layer_a.handle().stats();
        assert_eq!(
            (
                stats.stores,
                stats.refreshes_started,
                stats.refreshes_failed
            ),
            (1, 1, 0),
            "{way}"
        );

        // The refresh's version 1 did not come back in the entry's place.
        assert_stored_v2(call(&a, item()).await, way).await;
    }
}

#[tokio::test]
async fn a_write_also_drops_the_entries_of_the_uris_its_answer_names_on_its_own_origin() {
    // RFC 9111 §4.4 lets a cache drop what `Location` and `Content-Location` name, and forbids it across origins.
    let server = RedisServer::start();
    let origin = Origin::new();
    // `HEAD`s with entries of their own, so that a write must drop two entries of each URI.
    let layer = layer(&server).await.head_from_get(false).build().unwrap();
    let service = cached(&layer, origin.service());
    let third = "https://api.example.com/items/3";
    let foreign = "https://elsewhere.example/items/1";
    for uri in [ITEM, OTHER_ITEM, third, foreign] {
        for method in ["GET", "HEAD"] {
            call(&service, request(method, uri).map(|_| Full::default())).await;
        }
    }

    origin.add_header("location", "/items/2");
    origin.add_header("location", foreign);
    origin.add_header("content-location", third);
    let put = call(&service, request("PUT", ITEM)).await;
    assert_eq!(put.status(), StatusCode::OK);
    for (uri, dropped) in [
        (ITEM, true),
        (OTHER_ITEM, true),
        (third, true),
        (foreign, false),
    ] {
        for method in ["GET", "HEAD"] {
            let after = call(&service, request(method, uri).map(|_| Full::default())).await;
            let missed = matches!(outcome(&after), CacheOutcome::Miss { .. });
            assert_eq!(missed, dropped, "{method} {uri}: {}", cache_status(&after));
        }
    }
    assert_eq!(layer.handle().stats().unsafe_invalidations, 1);
}

/// Tags `/items...` requests `items`, and `/items/<id>` also `item:<id>`.
fn item_tags(parts: &http::request::Parts) -> Vec<String> {
    let Some(rest) = parts.uri.path().strip_prefix("/items") else {
        return Vec::new();
    };
    match rest.strip_prefix('/') {
        Some(id) if !id.is_empty() => vec!["items".into(), format!("item:{id}")],
        _ => vec!["items".into()],
    }
}

const ITEM_LIST: &str = "https://api.example.com/items?page=1";
const USER: &str = "https://api.example.com/users/1";

/// Whether a `GET` of each of `uris` through `service` is a hit (else it was a miss, stored again).
async fn hits<S: Cached>(service: &S, uris: &[&str]) -> Vec<bool> {
    let mut hits = Vec::new();
    for uri in uris {
        let response = call(service, get(uri, &[])).await;
        hits.push(outcome(&response) == CacheOutcome::Hit);
    }
    hits
}

#[tokio::test]
async fn invalidating_a_tag_removes_its_entries_in_every_process_and_nothing_else() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let (layer_a, layer_b) = (
        layer(&server).await.tags(item_tags).build().unwrap(),
        layer(&server).await.tags(item_tags).build().unwrap(),
    );
    let (a, b) = (
        cached(&layer_a, origin.service()),
        cached(&layer_b, origin.service()),
    );
    let all = [ITEM, OTHER_ITEM, ITEM_LIST, USER];
    hits(&a, &all).await;
    assert_eq!(hits(&b, &all).await, [true; 4], "B reads A's entries");

    // One item's tag: its entry alone.
    assert_eq!(layer_b.handle().invalidate_tag("item:1").await.unwrap(), 1);
    assert_eq!(hits(&a, &all).await, [false, true, true, true]);
    // The collection's: every item and the listing, not the untagged user.
    assert_eq!(layer_b.handle().invalidate_tag("items").await.unwrap(), 3);
    assert_eq!(hits(&a, &all).await, [false, false, false, true]);
    assert_eq!(layer_b.handle().stats().tag_removals, 4);
    // A tag nothing was stored with removes nothing.
    assert_eq!(layer_b.handle().invalidate_tag("orders").await.unwrap(), 0);
    assert_eq!(hits(&a, &all).await, [true; 4]);
}

#[tokio::test]
async fn a_tag_is_the_partitions_own() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let (layer_a, layer_b) = (
        layer(&server)
            .await
            .partition("a")
            .tags(item_tags)
            .build()
            .unwrap(),
        layer(&server)
            .await
            .partition("b")
            .tags(item_tags)
            .build()
            .unwrap(),
    );
    let (a, b) = (
        cached(&layer_a, origin.service()),
        cached(&layer_b, origin.service()),
    );
    hits(&a, &[ITEM]).await;
    hits(&b, &[ITEM]).await;
    assert_eq!(layer_a.handle().invalidate_tag("items").await.unwrap(), 1);
    assert_eq!(hits(&b, &[ITEM]).await, [true], "tenant b's entry stays");
    assert_eq!(hits(&a, &[ITEM]).await, [false]);
}

#[tokio::test]
async fn a_successful_write_removes_the_entries_of_its_tags() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server).await.tags(item_tags).build().unwrap();
    let service = cached(&layer, origin.service());
    let all = [ITEM, OTHER_ITEM, ITEM_LIST, USER];
    hits(&service, &all).await;

    // A `PUT` of one item: its tag `items` reaches the listing and the other item, whose URIs it does not name.
    let put = call(&service, request("PUT", OTHER_ITEM)).await;
    assert_eq!(put.status(), StatusCode::OK);
    assert_eq!(hits(&service, &all).await, [false, false, false, true]);
    // The target's own entry went by its URI, first; the tag took the other two.
    assert_eq!(layer.handle().stats().unsafe_invalidations, 1);
    assert_eq!(layer.handle().stats().tag_removals, 2);

    // A failed write changes nothing.
    origin.fail_with(StatusCode::CONFLICT);
    let put = call(&service, request("PUT", OTHER_ITEM)).await;
    assert_eq!(put.status(), StatusCode::CONFLICT);
    origin.heal();
    assert_eq!(hits(&service, &all).await, [true; 4]);
    assert_eq!(layer.handle().stats().tag_removals, 2);
}

#[tokio::test]
async fn a_tag_set_drops_expired_members_and_a_sweep_drops_it_once_all_expired() {
    let server = RedisServer::start();
    let store = RedisStore::new(fred_client(&server.url()).await);
    let set = "shared:v1:tag:{t}";
    let tag = |member: &'static str, lifetime: Duration| store.tag(set, member, lifetime, u64::MAX);
    assert!(
        tag("shared:v1:{a}", Duration::from_millis(1))
            .await
            .unwrap()
    );
    assert!(tag("shared:v1:{b}", Duration::from_secs(60)).await.unwrap());
    // A later, shorter expiry does not shorten a member's.
    assert!(
        tag("shared:v1:{b}", Duration::from_millis(1))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(tag("shared:v1:{c}", Duration::from_secs(30)).await.unwrap());
    let (mut members, next) = store.tagged(set, 0).await.unwrap();
    members.sort();
    assert_eq!(
        (members, next),
        (
            vec!["shared:v1:{b}".to_owned(), "shared:v1:{c}".to_owned()],
            0
        )
    );
    // No TTL on the set: a Redis evicting only keys with one never takes it from under its entries.
    assert_eq!(server.command(&[b"PTTL", set.as_bytes()]), b":-1\r\n");

    // A sweep drops what expired, the sets left empty and the marks a day old (their readings of the tag clock,
    // in µs); a recent mark, the sets and marks of other namespaces and every other key stay. Marks carry no TTL
    // either, so that a Redis evicting keys with one never takes a mark while a fill it fences still runs.
    let gone = "shared:v1:tag:{gone}";
    assert!(
        store
            .tag(gone, "shared:v1:{d}", Duration::from_millis(1), u64::MAX)
            .await
            .unwrap()
    );
    let now = store.tag_clock("shared:v1:tag-clock", false).await.unwrap();
    let day = 86_400 * 1_000_000;
    store
        .mark_invalidated(gone, now - day - 5_000_000)
        .await
        .unwrap();
    store
        .mark_invalidated(set, now - day + 60_000_000)
        .await
        .unwrap();
    let (old_mark, mark) = (format!("{gone}:invalidated"), format!("{set}:invalidated"));
    assert_eq!(server.command(&[b"PTTL", mark.as_bytes()]), b":-1\r\n");
    let other = "other:v1:tag:{x}";
    server.command(&[b"ZADD", other.as_bytes(), b"1", b"other:v1:{x}"]);
    let other_mark = "other:v1:tag:{x}:invalidated";
    server.command(&[b"SET", other_mark.as_bytes(), b"1"]);
    assert!(
        store
            .tag(set, "shared:v1:{e}", Duration::from_millis(1), u64::MAX)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.sweep_tags("shared:v1:").await.unwrap(), 1);
    let exists = |key: &str| server.command(&[b"EXISTS", key.as_bytes()]) == b":1\r\n";
    assert!(!exists(gone) && !exists(&old_mark));
    assert!(exists(&mark) && exists(other) && exists(other_mark) && exists(set));
    assert_eq!(server.command(&[b"ZCARD", set.as_bytes()]), b":2\r\n");
}

#[tokio::test]
async fn a_tag_marked_after_a_clock_reading_refuses_members_recorded_under_it() {
    let server = RedisServer::start();
    let store = RedisStore::new(fred_client(&server.url()).await);
    let (clock, set, life) = (
        "shared:v1:tag-clock",
        "shared:v1:tag:{t}",
        Duration::from_secs(60),
    );
    let before = store.tag_clock(clock, false).await.unwrap();
    let at = store.tag_clock(clock, true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let after = store.tag_clock(clock, false).await.unwrap();
    assert!(
        before <= at && at < after,
        "readings move on: {before} {at} {after}"
    );
    store.mark_invalidated(set, at).await.unwrap();
    // A lower mark later does not lower it.
    store.mark_invalidated(set, before).await.unwrap();
    assert!(!store.tag(set, "shared:v1:{a}", life, before).await.unwrap());
    assert!(!store.tag(set, "shared:v1:{a}", life, at).await.unwrap());
    assert!(store.tag(set, "shared:v1:{b}", life, after).await.unwrap());
    let (members, _) = store.tagged(set, 0).await.unwrap();
    assert_eq!(members, ["shared:v1:{b}"]);

    // The clock never falls behind the server's own, so losing its key (an eviction) loses nothing.
    server.command(&[b"DEL", clock.as_bytes()]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = store.tag_clock(clock, true).await.unwrap();
    assert!(again > at, "{again} {at}");
}

#[tokio::test]
async fn the_tags_an_answer_names_remove_it_whatever_its_uri() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let tagged = layer(&server)
        .await
        .tags(item_tags)
        .tags_from_header(http::HeaderName::from_static("cache-tag"))
        .build()
        .unwrap();
    let service = cached(&tagged, origin.service());
    // A user's page that shows item 1 (its answer says so), and one that shows nothing tagged.
    origin.add_header("cache-tag", "user:1, items  item:1");
    hits(&service, &[USER]).await;
    let plain = layer(&server).await.build().unwrap();
    let other = "https://api.example.com/users/2";
    hits(&cached(&plain, Origin::new().service()), &[other]).await;
    assert_eq!(hits(&service, &[USER, other]).await, [true, true]);

    assert_eq!(tagged.handle().invalidate_tag("user:1").await.unwrap(), 1);
    assert_eq!(hits(&service, &[USER, other]).await, [false, true]);
    // A write to item 1 (its request tags `items` and `item:1`) reaches it too.
    let put = call(&service, request("PUT", ITEM)).await;
    assert_eq!(put.status(), StatusCode::OK);
    assert_eq!(hits(&service, &[USER, other]).await, [false, true]);
    assert_eq!(tagged.handle().stats().tag_removals, 2);
}

#[tokio::test]
async fn a_write_answered_with_cache_group_invalidation_removes_those_groups_of_its_origin() {
    // RFC 9875. Another origin's entries in a group of the same name stay, and so do the origin's other groups.
    const MIRROR_LIST: &str = "https://mirror.example.com/items?page=1";
    let server = RedisServer::start();
    let origin = Origin::new();
    let grouped = layer(&server).await.cache_groups(true).build().unwrap();
    let service = cached(&grouped, origin.service());
    let answers_with = |field: &'static str, value: &'static str| {
        origin.clear_headers();
        origin.add_header(field, value);
    };
    answers_with("cache-groups", r#""items", tok;a=1, 7"#); // a token and an integer: not groups
    hits(&service, &[ITEM_LIST, MIRROR_LIST]).await;
    answers_with("cache-groups", r#""users""#);
    hits(&service, &[USER]).await;
    let all = [ITEM_LIST, MIRROR_LIST, USER];
    assert_eq!(hits(&service, &all).await, [true, true, true]);

    // On the answer to a safe request, the field means nothing.
    answers_with("cache-group-invalidation", r#""items", "users""#);
    hits(&service, &["https://api.example.com/about"]).await;
    assert_eq!(hits(&service, &all).await, [true, true, true]);

    // A write elsewhere on the origin (its authority's case and default port ignored) whose answer names
    // `items`.
    answers_with("cache-group-invalidation", r#""items""#);
    let post = call(
        &service,
        request("POST", "https://API.example.com:443/orders"),
    )
    .await;
    assert_eq!(post.status(), StatusCode::OK);
    assert_eq!(hits(&service, &all).await, [false, true, true]);
    assert_eq!(grouped.handle().stats().tag_removals, 1);

    // A failed write removes nothing.
    origin.fail_with(StatusCode::CONFLICT);
    call(&service, request("POST", "https://api.example.com/orders")).await;
    origin.heal();
    assert_eq!(hits(&service, &[MIRROR_LIST, USER]).await, [true, true]);

    // From outside, by origin and group.
    let handle = grouped.handle();
    assert_eq!(
        handle
            .invalidate_group("api.example.com", "users")
            .await
            .unwrap(),
        1
    );
    assert_eq!(hits(&service, &[MIRROR_LIST, USER]).await, [true, false]);

    // A layer that does not follow groups reads neither field.
    let plain = layer(&server).await.namespace("plain").build().unwrap();
    let service = cached(&plain, origin.service());
    answers_with("cache-groups", r#""items""#);
    hits(&service, &[ITEM_LIST]).await;
    answers_with("cache-group-invalidation", r#""items""#);
    call(&service, request("POST", "https://api.example.com/orders")).await;
    assert_eq!(hits(&service, &[ITEM_LIST]).await, [true]);
}

#[tokio::test]
async fn an_answer_whose_cache_groups_is_no_list_is_not_stored() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("cache-groups", r#""items","#);
    let grouped = layer(&server).await.cache_groups(true).build().unwrap();
    let service = cached(&grouped, origin.service());
    for _ in 0..2 {
        let response = call(&service, get(USER, &[])).await;
        assert_eq!(
            cache_status(&response),
            "tower-redis-cache; fwd=uri-miss; fwd-status=200; detail=tags"
        );
    }
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn an_answer_with_too_many_tags_or_tags_that_cannot_be_read_is_not_stored_and_says_why() {
    let server = RedisServer::start();
    let many: String = (0..33).map(|n| format!("t{n} ")).collect();
    type Setup = fn(RedisCacheLayerBuilder) -> RedisCacheLayerBuilder;
    // What each leaves in Redis: nothing for a request whose tags are refused before the store is asked; for an
    // answer whose tags are, the marker that stops the key's misses queueing (`uncacheable_for`).
    let cases: [(&str, Setup, Option<http::HeaderValue>, usize); 3] = [
        (
            "33 request tags",
            |b| b.tags(|_| (0..33).map(|n| format!("tag-{n}")).collect()),
            None,
            0,
        ),
        (
            "unreadable answer tags",
            |b| b.tags_from_header(http::HeaderName::from_static("cache-tag")),
            Some(http::HeaderValue::from_bytes(b"order:\xe9").unwrap()),
            1,
        ),
        (
            "33 answer tags",
            |b| b.tags_from_header(http::HeaderName::from_static("cache-tag")),
            Some(http::HeaderValue::from_str(&many).unwrap()),
            1,
        ),
    ];
    for (what, setup, tags, markers) in cases {
        server.command(&[b"FLUSHALL"]);
        let origin = Origin::new();
        if let Some(tags) = tags {
            origin.add_header_value("cache-tag", tags);
        }
        let tagged = setup(layer(&server).await).build().unwrap();
        let service = cached(&tagged, origin.service());
        for _ in 0..2 {
            let response = call(&service, get(USER, &[])).await;
            assert!(
                matches!(outcome(&response), CacheOutcome::Miss { stored: false, .. }),
                "{what}: {}",
                cache_status(&response)
            );
            // Nothing failed: the answer is not stored, and the tags are why.
            assert_eq!(
                cache_status(&response),
                "tower-redis-cache; fwd=uri-miss; fwd-status=200; detail=tags",
                "{what}"
            );
        }
        assert_eq!(origin.calls(), 2, "{what}");
        let stats = tagged.handle().stats();
        assert_eq!(stats.store_errors, 0, "{what}");
        assert_eq!(stats.not_stored_for(NotStored::Tags), 2, "{what}");
        assert_eq!(
            stored_keys(&server),
            0,
            "{what}: no entry, lease or tag set"
        );
        assert_eq!(
            String::from_utf8(server.command(&[b"DBSIZE"])).unwrap(),
            format!(":{markers}\r\n"),
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_answer_tag_is_removed_no_caller_here_joins_a_call_already_in_flight() {
    // Which call in flight will name the tag is unknown until it answers: a caller arriving after the removal
    // makes its own call (once the one in flight lets go of the key's lease) instead of sharing version 1.
    let server = RedisServer::start();
    let origin = Versioned::new();
    let layer = layer(&server)
        .await
        .tags_from_header(http::HeaderName::from_static("cache-tag"))
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let item = || get(ITEM, &[]);

    let slow = origin.hold(service.clone().oneshot(item())).await;
    origin.version.fetch_add(1, Ordering::SeqCst);
    layer
        .handle()
        .invalidate_tag("item-versions")
        .await
        .unwrap();
    let after = tokio::spawn(service.clone().oneshot(item()));
    let handle = layer.handle();
    wait_until("the later caller waits for the key's lease", || {
        handle.stats().fleet_waits == 1
    })
    .await;
    origin.release_unstored(slow, "the held call").await;
    let after: Reply = after.await.unwrap().unwrap();
    assert_stored_v2(after, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_near_cache_an_answer_tag_removed_elsewhere_stops_the_sharing_here() {
    // B removes a tag while A's call for the item is in flight. A's near cache hears the tag's mark: a read
    // in A arriving afterwards does not join that call, waits its short fleet wait for the call's lease, and
    // asks the origin itself (version 2, not stored: the lease is not its own).
    let server = RedisServer::start();
    // Its `GET` number 1: the first (0) starts the near cache's tracking.
    let origin = Versioned::holding(1);
    let tag_header = || http::HeaderName::from_static("cache-tag");
    let layer_a = layer(&server)
        .await
        .tags_from_header(tag_header())
        .near_cache(16 << 20)
        .fleet_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let layer_b = layer(&server).await.build().unwrap();
    let a = cached(&layer_a, origin.service());
    let item = || get(ITEM, &[]);
    // The near cache is tracking before the call starts.
    call(&a, get(USER, &[])).await;

    let slow = origin.hold(a.clone().oneshot(item())).await;
    origin.version.fetch_add(1, Ordering::SeqCst);
    layer_b
        .handle()
        .invalidate_tag("item-versions")
        .await
        .unwrap();

    let after = first_answer(40, || a.clone().oneshot(item())).await;
    let after: Reply =
        after.expect("every read in A kept waiting on the call from before the removal");
    assert_eq!(body(after).await, "v2");

    origin.release_unstored(slow, "the held call").await;
}

/// What an authentication layer in front of the cache leaves in a request it lets through.
#[derive(Clone)]
struct Tenant(&'static str);

/// `request` with `token` as its credential, and `tenant` in its extensions where there is one.
fn as_tenant(
    tenant: Option<&'static str>,
    token: &'static str,
    request: Request<Full<Bytes>>,
) -> Request<Full<Bytes>> {
    let (mut parts, body) = request.into_parts();
    parts
        .headers
        .insert("authorization", http::HeaderValue::from_static(token));
    if let Some(tenant) = tenant {
        parts.extensions.insert(Tenant(tenant));
    }
    Request::from_parts(parts, body)
}

/// A layer that partitions requests by their tenant, and caches them whatever their credentials.
async fn by_tenant(server: &RedisServer) -> RedisCacheLayer {
    layer(server)
        .await
        .partition_by(|parts| parts.extensions.get::<Tenant>().map(|tenant| tenant.0))
        .credentials(Credentials::Partition)
        .build()
        .unwrap()
}

fn is_stored_miss(outcome: CacheOutcome) -> bool {
    matches!(outcome, CacheOutcome::Miss { stored: true, .. })
}

#[tokio::test]
async fn each_partition_has_entries_of_its_own_and_a_request_without_one_bypasses() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = by_tenant(&server).await;
    let service = cached(&layer, origin.service());
    let read = |tenant, token| call(&service, as_tenant(tenant, token, get(USER, &[])));

    // Tenant a's first read fills; another of a's users (another token) is answered from it.
    assert!(is_stored_miss(outcome(&read(Some("a"), "Bearer a1").await)));
    assert_eq!(
        outcome(&read(Some("a"), "Bearer a2").await),
        CacheOutcome::Hit
    );
    // Tenant b never gets a's answer.
    assert!(is_stored_miss(outcome(&read(Some("b"), "Bearer b1").await)));
    assert_eq!(origin.calls(), 2);
    // No tenant named: whose answer it would be is not known, so the cache stays out.
    for _ in 0..2 {
        let response = read(None, "Bearer a1").await;
        assert_eq!(
            outcome(&response),
            CacheOutcome::Bypass(BypassReason::Partition)
        );
        assert_eq!(
            cache_status(&response),
            "tower-redis-cache; fwd=bypass; detail=partition"
        );
    }
    assert_eq!(origin.calls(), 4);
    assert_eq!(stored_keys(&server), 2);
    let stats = layer.handle().stats();
    assert_eq!(stats.bypasses_for(BypassReason::Partition), 2);
    assert_eq!(stats.bypasses_for(BypassReason::Authorization), 0);
    assert_eq!(stats.bypasses, 2);

    // The handle names an entry by the request's tenant too.
    let handle = layer.handle();
    let of = |tenant| as_tenant(tenant, "Bearer x", get(USER, &[])).map(|_| Bytes::new());
    assert_ne!(
        handle.key_for(&of(Some("a"))),
        handle.key_for(&of(Some("b")))
    );
    assert!(!handle.invalidate(&of(None)).await.unwrap());
    assert!(handle.invalidate(&of(Some("a"))).await.unwrap());
    assert!(is_stored_miss(outcome(&read(Some("a"), "Bearer a2").await)));
    assert_eq!(
        outcome(&read(Some("b"), "Bearer b2").await),
        CacheOutcome::Hit
    );
}

#[tokio::test]
async fn a_write_removes_the_entries_of_its_uri_in_its_own_partition_only() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = by_tenant(&server).await;
    let service = &cached(&layer, origin.service());
    let read = |tenant| async move {
        let response = call(service, as_tenant(Some(tenant), "Bearer t", get(ITEM, &[]))).await;
        outcome(&response)
    };
    let write = |tenant| async move {
        let response = call(service, as_tenant(tenant, "Bearer t", request("PUT", ITEM))).await;
        assert_eq!(response.status(), StatusCode::OK);
    };
    for tenant in ["a", "b"] {
        assert!(is_stored_miss(read(tenant).await));
    }
    // A write that names no tenant names no entry: both stay.
    write(None).await;
    assert_eq!([read("a").await, read("b").await], [CacheOutcome::Hit; 2]);
    // Tenant a's write removes a's entry, and b's stays.
    write(Some("a")).await;
    assert!(is_stored_miss(read("a").await));
    assert_eq!(read("b").await, CacheOutcome::Hit);
    assert_eq!(layer.handle().stats().unsafe_invalidations, 1);
}

/// What a `GET` of `uri` with these headers got from `service`.
async fn read_with<S: Cached>(
    service: &S,
    uri: &str,
    headers: &[(&'static str, &'static str)],
) -> CacheOutcome {
    outcome(&call(service, get(uri, headers)).await)
}

/// A write to `ITEM` through `service` with these headers, which the origin accepts.
async fn write_with<S: Cached>(
    service: &S,
    method: &str,
    headers: &[(&'static str, &'static str)],
) {
    let mut write = request(method, ITEM);
    for (name, value) in headers {
        write
            .headers_mut()
            .insert(*name, HeaderValue::from_static(value));
    }
    assert_eq!(call(service, write).await.status(), StatusCode::OK);
}

/// RFC 9111 §4.4: a write invalidates its target URI. With request headers in the key (`vary_headers`), that is
/// every entry stored for the URI, not only the one its own headers key, and in every process.
#[tokio::test]
async fn a_write_removes_every_variant_of_its_uri_in_every_process() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let by_language = || async {
        layer(&server)
            .await
            .vary_headers([http::header::ACCEPT_LANGUAGE])
            .build()
            .unwrap()
    };
    let (layer_a, layer_b) = (by_language().await, by_language().await);
    let (a, b) = (
        cached(&layer_a, origin.service()),
        cached(&layer_b, origin.service()),
    );
    let languages = [
        ("accept-language", "de"),
        ("accept-language", "en"),
        ("accept-language", "fr"),
    ];
    for language in languages {
        assert!(is_stored_miss(read_with(&a, ITEM, &[language]).await));
        assert_eq!(read_with(&b, ITEM, &[language]).await, CacheOutcome::Hit);
    }
    assert!(is_stored_miss(
        read_with(&a, OTHER_ITEM, &[languages[0]]).await
    ));

    // From process a, in a language no entry has: process b reads every language from the origin again.
    write_with(&a, "PUT", &[("accept-language", "it")]).await;
    let calls = origin.calls();
    for language in languages {
        assert!(
            is_stored_miss(read_with(&b, ITEM, &[language]).await),
            "{language:?}"
        );
    }
    assert_eq!(origin.calls(), calls + 3);
    assert_eq!(
        read_with(&b, OTHER_ITEM, &[languages[0]]).await,
        CacheOutcome::Hit,
        "another URI keeps its entry"
    );
    assert_eq!(layer_a.handle().stats().unsafe_invalidations, 1);

    // A change the cache did not see (a webhook): `invalidate_uri` removes what the write did, every variant.
    let webhook = layer_a
        .handle()
        .invalidate_uri(&get(ITEM, &[]))
        .await
        .unwrap();
    assert_eq!(webhook, 3);
    for language in languages {
        assert!(
            is_stored_miss(read_with(&a, ITEM, &[language]).await),
            "{language:?}"
        );
    }
    assert_eq!(
        read_with(&a, OTHER_ITEM, &[languages[0]]).await,
        CacheOutcome::Hit
    );
}

/// With credentials in the key, each user has entries of their own; a write by one of them changes the resource
/// for all, so every user's entry of the URI goes.
#[tokio::test]
async fn a_write_by_one_user_removes_every_users_entry_of_its_uri() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server)
        .await
        .credentials(Credentials::InKey)
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let (alice, bob) = (
        ("authorization", "Bearer alice"),
        ("authorization", "Bearer bob"),
    );
    for user in [alice, bob] {
        assert!(is_stored_miss(read_with(&service, ITEM, &[user]).await));
        assert!(is_stored_miss(
            read_with(&service, OTHER_ITEM, &[user]).await
        ));
    }
    write_with(&service, "PATCH", &[alice]).await;
    for user in [alice, bob] {
        assert!(
            is_stored_miss(read_with(&service, ITEM, &[user]).await),
            "{user:?}"
        );
        assert_eq!(
            read_with(&service, OTHER_ITEM, &[user]).await,
            CacheOutcome::Hit
        );
    }
}

/// A `QUERY` of `uri` with the JSON `body` through `service`: what the cache did.
async fn query<S: Cached>(service: &S, uri: &str, body: &'static str) -> CacheOutcome {
    let request = Request::builder()
        .method("QUERY")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    outcome(&call(service, request).await)
}

/// RFC 9111 §4.4 invalidates every response stored for the target URI, those of queries too: their keys hold
/// their bodies, which a write cannot name, so they are found through the URI's tag, in every process.
#[tokio::test]
async fn a_write_removes_the_queries_of_its_uri_in_every_process() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let (layer_a, layer_b) = (
        layer(&server).await.build().unwrap(),
        layer(&server).await.build().unwrap(),
    );
    let (a, b) = (
        cached(&layer_a, origin.service()),
        cached(&layer_b, origin.service()),
    );
    let bodies = [r#"{"status":"open"}"#, r#"{"status":"closed"}"#];
    for body in bodies {
        assert!(is_stored_miss(query(&a, ITEM, body).await));
        assert_eq!(query(&b, ITEM, body).await, CacheOutcome::Hit);
    }
    assert!(is_stored_miss(read_with(&a, ITEM, &[]).await));
    assert!(is_stored_miss(query(&a, OTHER_ITEM, bodies[0]).await));

    // From process b: process a asks the origin again for both queries and the read of the URI.
    write_with(&b, "PUT", &[]).await;
    let calls = origin.calls();
    for body in bodies {
        assert!(is_stored_miss(query(&a, ITEM, body).await), "{body}");
    }
    assert!(is_stored_miss(read_with(&a, ITEM, &[]).await));
    assert_eq!(origin.calls(), calls + 3);
    assert_eq!(
        query(&a, OTHER_ITEM, bodies[0]).await,
        CacheOutcome::Hit,
        "another URI keeps its queries"
    );

    // A change the cache did not see: `invalidate_uri` reaches the queries too.
    let webhook = layer_b
        .handle()
        .invalidate_uri(&get(ITEM, &[]))
        .await
        .unwrap();
    assert_eq!(webhook, 3, "two queries and the read");
    for body in bodies {
        assert!(is_stored_miss(query(&b, ITEM, body).await), "{body}");
    }
    assert_eq!(query(&b, OTHER_ITEM, bodies[0]).await, CacheOutcome::Hit);
}

/// Over a store that keeps no tags, entries are still keyed by request headers; a write then reaches the entry
/// its own headers key, and the others live out their windows.
#[tokio::test]
async fn over_a_store_without_tags_a_write_removes_the_variant_its_headers_key() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let (store, _) = CountingStore::new(RedisStore::new(fred_client(&server.url()).await));
    assert!(!store.keeps_tags());
    let layer = RedisCacheLayer::builder(store)
        .namespace("shared")
        .store_timeout(Duration::from_secs(2))
        .vary_headers([http::header::ACCEPT_LANGUAGE])
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let (de, en) = (("accept-language", "de"), ("accept-language", "en"));
    for language in [de, en] {
        assert!(is_stored_miss(read_with(&service, ITEM, &[language]).await));
        assert_eq!(
            read_with(&service, ITEM, &[language]).await,
            CacheOutcome::Hit
        );
    }
    write_with(&service, "PUT", &[de]).await;
    assert!(is_stored_miss(read_with(&service, ITEM, &[de]).await));
    assert_eq!(read_with(&service, ITEM, &[en]).await, CacheOutcome::Hit);
    // The write asked the store for no URI tag (which it would refuse).
    assert_eq!(layer.handle().stats().store_errors, 0);
}

#[tokio::test]
async fn the_layer_sweeps_tag_sets_as_often_as_told_and_never_when_told_not_to() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let by_path = |parts: &http::request::Parts| vec![parts.uri.path().to_owned()];
    // Entries, and so their keys in the tag sets, live for 200 ms.
    let short = |builder: RedisCacheLayerBuilder, namespace: &str| {
        builder
            .namespace(namespace)
            .tags(by_path)
            .origin_freshness(false)
            .fresh_for(Duration::from_millis(100))
            .stale_for(Duration::ZERO)
            .stale_if_error_for(Duration::ZERO)
            .refresh_lease_for(Duration::from_millis(100))
    };
    let every = Duration::from_secs(2);
    let (sweeping, idle) = (
        short(layer(&server).await, "swept")
            .tag_sweep_every(Some(every))
            .build()
            .unwrap(),
        short(layer(&server).await, "kept")
            .tag_sweep_every(None)
            .build()
            .unwrap(),
    );
    let services = [
        cached(&sweeping, origin.service()),
        cached(&idle, origin.service()),
    ];
    for service in &services {
        hits(service, &["https://api.example.com/a"]).await;
    }
    let sets = |namespace: &str| {
        let pattern = format!("{namespace}:v1:tag:*");
        let reply = server.command(&[
            b"EVAL",
            b"return #redis.call('KEYS', ARGV[1])",
            b"0",
            pattern.as_bytes(),
        ]);
        String::from_utf8(reply).unwrap()
    };
    assert_eq!(
        (sets("swept"), sets("kept")),
        (":1\r\n".into(), ":1\r\n".into())
    );

    // Past the entries' lives and the sweeping layer's first look: the next tagged fill starts its sweep, which
    // drops `/a`'s set, now empty, and takes the fleet's turn for as long as told.
    tokio::time::sleep(every + Duration::from_millis(100)).await;
    for service in &services {
        hits(service, &["https://api.example.com/b"]).await;
    }
    wait_until("the sweep ran", || {
        sweeping.handle().stats().tag_sets_swept == 1
    })
    .await;
    assert_eq!(sets("swept"), ":1\r\n", "only `/b`'s set is left");
    let turn = String::from_utf8(server.command(&[b"PTTL", b"swept:v1:tag-sweep"])).unwrap();
    let turn: u64 = turn.trim_start_matches(':').trim().parse().unwrap();
    assert!(
        (1..=2000).contains(&turn),
        "the turn lasts `every`: {turn} ms left"
    );

    // Told not to sweep, the other layer left both sets; a job of the user's own sweeps them.
    assert_eq!(idle.handle().stats().tag_sets_swept, 0);
    assert_eq!(sets("kept"), ":2\r\n");
    assert_eq!(idle.handle().sweep_tags().await.unwrap(), 1);
    assert_eq!(sets("kept"), ":1\r\n");
    assert_eq!(idle.handle().stats().tag_sets_swept, 1);
    assert_eq!(
        server.command(&[b"EXISTS", b"kept:v1:tag-sweep"]),
        b":0\r\n"
    );

    // Zero is no interval.
    let zero = short(layer(&server).await, "zero")
        .tag_sweep_every(Some(Duration::ZERO))
        .build();
    assert_eq!(zero.unwrap_err().setting(), Setting::TagSweepEvery);
}
