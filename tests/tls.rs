//! Redis over TLS for real: a `redis-server` with a TLS port and a certificate made for the test by a CA made
//! for the test. The layer caches through `rediss://` trusting that CA, and refuses a server it cannot verify. The
//! store's and the Genesys client's handshakes use the rustls provider the application installed, else ring.

use crate::support;

use fred::prelude::{Config, TlsConnector};
use fred::rustls;
use futures_util::TryStreamExt;
use rustls::crypto::{ActiveKeyExchange, CryptoProvider, SupportedKxGroup};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::calls::{call, outcome, post};
use support::redis::free_port;
use support::{Origin, RedisServer};
use tower_redis_cache::cache::RedisCacheLayerBuilder;
use tower_redis_cache::error::Setting;
use tower_redis_cache::genesys::emulator::{Emulator, Endpoint};
use tower_redis_cache::genesys::{ActionQuery, GenesysClient};
use tower_redis_cache::retry::RetryLayer;
use tower_redis_cache::{CacheOutcome, RedisCacheLayer, RedisStore};

/// A CA and a server certificate for `127.0.0.1` it signed, made with the `openssl` tool; removed on drop.
struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    fn make() -> Self {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("trc-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &dir,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=tower-redis-cache test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        openssl(
            &dir,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        TestCa { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// A fred TLS connector that trusts this CA only.
    #[allow(
        deprecated,
        reason = "rustls 0.23.48 deprecates the ring provider; these tests are about roots, not key exchange"
    )]
    fn connector(&self) -> TlsConnector {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(self.dir.join("ca.crt")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(config)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl tool (scripts/test installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A cache of `POST`s in `store`, under `namespace`.
fn post_cache(store: RedisStore, namespace: &str) -> RedisCacheLayerBuilder {
    RedisCacheLayer::builder(store)
        .namespace(namespace)
        .methods([http::Method::POST])
        .store_timeout(Duration::from_secs(2))
}

/// A redis-server with a plain port (for the test's own inspection) and a TLS port with the CA's server
/// certificate; returns it and the TLS port.
fn tls_server(ca: &TestCa) -> (RedisServer, u16) {
    let tls_port = free_port().to_string();
    let (cert, key, root) = (
        ca.path("server.crt"),
        ca.path("server.key"),
        ca.path("ca.crt"),
    );
    let server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &root,
        "--tls-auth-clients",
        "no",
    ]);
    (server, tls_port.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_caches_through_rediss_trusting_the_tests_ca() {
    let ca = TestCa::make();
    let (server, tls_port) = tls_server(&ca);
    // The `redis://` spelling, then the connector: fred's own `rediss://` parsing builds a default connector that
    // leaves the provider to rustls's crate features, which in these tests name none (Cargo.toml says why).
    let mut config = Config::from_url(&format!("redis://127.0.0.1:{tls_port}")).unwrap();
    config.tls = Some(ca.connector().into());
    let store = RedisStore::connect_with(config).await.unwrap();
    let layer = post_cache(store, "tls")
        .near_cache(1 << 20)
        .build()
        .unwrap();
    let origin = Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());

    let first = call(&service, post(r#"{"user":"me"}"#)).await;
    assert!(matches!(outcome(&first), CacheOutcome::Miss { .. }));
    let second = call(&service, post(r#"{"user":"me"}"#)).await;
    assert_eq!(outcome(&second), CacheOutcome::Hit);
    assert_eq!(origin.calls(), 1);
    // The near cache's tracking connection speaks TLS too (it takes the store's configuration).
    let mut near = false;
    for _ in 0..300 {
        let reply = call(&service, post(r#"{"user":"me"}"#)).await;
        if support::calls::cache_status(&reply).ends_with("; detail=near") {
            near = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(near, "the near cache answered over TLS");
    assert!(layer.handle().near_cache_live());
    assert_eq!(origin.calls(), 1);
    // The entry (and its URI's tag set, and the near cache's canary) went over TLS into this server: its plain
    // port shows them.
    assert_eq!(server.command(&[b"DBSIZE"]), b":3\r\n");
    // And the TLS port really is TLS: fred speaking plain RESP to it gets no answer it accepts, and the error
    // says what to check.
    let plain = Config::from_url(&format!("redis://127.0.0.1:{tls_port}")).unwrap();
    let error = refusal(RedisStore::connect_with(plain)).await;
    assert!(error.contains("if it serves TLS, use rediss://"), "{error}");
}

/// The error `connecting` a store ends with, which it must within 10 s.
async fn refusal(
    connecting: impl std::future::Future<Output = Result<RedisStore, fred::error::Error>>,
) -> String {
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Err(error)) => error.to_string(),
        Ok(Ok(_)) => panic!("connected"),
        Err(_) => panic!("neither connected nor failed within 10 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plain_port_fails_saying_what_to_check() {
    let ca = TestCa::make();
    let (server, _) = tls_server(&ca);
    let mut config = Config::from_url(&format!("redis://127.0.0.1:{}", server.port())).unwrap();
    config.tls = Some(ca.connector().into());
    // Redis reads the handshake as the start of a command and waits for the rest; the connect timeout ends it.
    let error = refusal(RedisStore::connect_with(config)).await;
    assert!(
        error.contains(&format!("cannot connect to 127.0.0.1:{}: ", server.port()))
            && error.contains("if the port serves plain text, use redis://"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_the_roots_cannot_verify_is_refused() {
    let ca = TestCa::make();
    let (_server, tls_port) = tls_server(&ca);
    // `rediss://` alone trusts the system roots, which never signed the test CA's certificate.
    let error = refusal(RedisStore::connect(&format!(
        "rediss://127.0.0.1:{tls_port}"
    )))
    .await;
    assert!(
        error.to_ascii_lowercase().contains("certificate"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_over_tls_the_store_and_its_watch_speak_tls() {
    let ca = TestCa::make();
    let (server, tls_port) = tls_server(&ca);
    // The sentinel monitors the primary's TLS port over TLS, and serves clients on a TLS port of its own (its
    // plain port is the test's).
    let sentinel_tls = free_port();
    let sentinel = RedisServer::start_sentinel_with(
        "cache",
        tls_port,
        &format!(
            "tls-port {sentinel_tls}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-auth-clients no\ntls-replication yes\n",
            ca.path("server.crt"),
            ca.path("server.key"),
            ca.path("ca.crt"),
        ),
    );
    let mut config = Config::from_url(&format!(
        "redis-sentinel://127.0.0.1:{sentinel_tls}?sentinelServiceName=cache"
    ))
    .unwrap();
    config.tls = Some(ca.connector().into());
    let store = RedisStore::connect_with(config).await.unwrap();
    let layer = post_cache(store, "tls-sentinel").build().unwrap();
    let origin = Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    assert!(matches!(
        outcome(&call(&service, post(r#"{"user":"me"}"#)).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(
        outcome(&call(&service, post(r#"{"user":"me"}"#)).await),
        CacheOutcome::Hit
    );
    assert_eq!(origin.calls(), 1);
    // The entry and its URI's tag set, in the primary the sentinel named.
    assert_eq!(server.command(&[b"DBSIZE"]), b":2\r\n");
    // The watch holds a connection to the sentinel's TLS port, the only one the store was given, subscribed to
    // its announcements. (Counting the sentinel's clients instead raced with connections the harness and the
    // sentinel itself were still closing.)
    let tls_port = format!(" laddr=127.0.0.1:{sentinel_tls} ");
    support::calls::wait_until("the watch listens over TLS", || {
        String::from_utf8_lossy(&sentinel.command(&[b"CLIENT", b"LIST"]))
            .lines()
            .any(|client| client.contains(&tls_port) && client.contains(" sub=1 "))
    })
    .await;
}

/// The provider an application installs as the process default is the one the `rediss://` store and the Genesys
/// client shake hands with; with none installed they use ring, never rustls's pick from its crate features, which
/// in these tests is none (a panic). Each case runs in a child process: the process default is process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_use_the_installed_provider_or_else_ring() {
    let ca = TestCa::make();
    let (server, tls_port) = tls_server(&ca);
    for install in ["counting", "none"] {
        let stdout = support::child::run(
            support::child::command(module_path!(), "handshakes_in_a_child_process")
                .env("CHILD_TLS_PORT", tls_port.to_string())
                .env("CHILD_PROVIDER", install)
                // `rediss://` alone trusts the system's roots, or this file's: the test CA.
                .env("SSL_CERT_FILE", ca.path("ca.crt"))
                .env_remove("SSL_CERT_DIR"),
        );
        let counted = install == "counting";
        let expected = format!(
            "child: hit=true redis_counted={counted} genesys_counted={counted} genesys_error=certificate"
        );
        assert!(stdout.contains(&expected), "{install}: {stdout}");
    }
    // Both children's entries, and their URI's tag set, went over TLS into this server.
    assert_eq!(server.command(&[b"DBSIZE"]), b":3\r\n");
}

/// Key exchanges started by the counting provider of [`install_counting_provider`].
static KX_STARTS: AtomicUsize = AtomicUsize::new(0);

/// A key exchange group that counts its starts: the mark of the provider that made a handshake.
#[derive(Debug)]
struct Counted(&'static dyn SupportedKxGroup);

impl SupportedKxGroup for Counted {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        KX_STARTS.fetch_add(1, Ordering::Relaxed);
        self.0.start()
    }

    fn name(&self) -> rustls::NamedGroup {
        self.0.name()
    }
}

/// Installs ring with every key exchange group counted as the process default, as an application installs its
/// choice.
#[allow(
    deprecated,
    reason = "rustls 0.23.48 deprecates the ring provider; any provider serves to be counted"
)]
fn install_counting_provider() {
    let ring = rustls::crypto::ring::default_provider();
    let kx_groups = ring
        .kx_groups
        .iter()
        .map(|&group| -> &'static dyn SupportedKxGroup { Box::leak(Box::new(Counted(group))) })
        .collect();
    CryptoProvider { kx_groups, ..ring }
        .install_default()
        .unwrap();
}

/// Run by `handshakes_use_the_installed_provider_or_else_ring` as a separate process: caches through a `rediss://`
/// URL, then asks a Genesys client for a token over HTTPS from the same TLS port, whose certificate Mozilla's roots
/// do not know; prints what it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of another test; needs its environment"]
async fn handshakes_in_a_child_process() {
    let var = support::child::var;
    if var("CHILD_PROVIDER") == "counting" {
        install_counting_provider();
    }
    let base = format!("127.0.0.1:{}", var("CHILD_TLS_PORT"));
    let store = RedisStore::connect(&format!("rediss://{base}"))
        .await
        .unwrap();
    let layer = post_cache(store, "tls-provider").build().unwrap();
    let origin = Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    let body = format!(r#"{{"provider":"{}"}}"#, var("CHILD_PROVIDER"));
    call(&service, post(&body)).await;
    let hit = outcome(&call(&service, post(&body)).await) == CacheOutcome::Hit;
    let redis = KX_STARTS.load(Ordering::Relaxed);

    let client = GenesysClient::builder()
        .api_base(format!("https://{base}"))
        .login_base(format!("https://{base}"))
        .client_credentials("id", "secret")
        .retry(RetryLayer::builder().max_attempts(1).build().unwrap())
        .build()
        .unwrap();
    let error = client.get_action("x").await.unwrap_err();
    let causes = support::calls::causes(&error);
    let genesys = KX_STARTS.load(Ordering::Relaxed) - redis;
    println!(
        "child: hit={hit} redis_counted={} genesys_counted={} genesys_error={}",
        redis > 0,
        genesys > 0,
        if causes.to_ascii_lowercase().contains("certificate") {
            "certificate"
        } else {
            &causes
        },
    );
}

/// Serves HTTPS on a free loopback port with the CA's certificate for `127.0.0.1`, passing the plain bytes to
/// `upstream`, as a gateway in front of an API does; returns the port.
#[allow(
    deprecated,
    reason = "rustls 0.23.48 deprecates the ring provider; this server is about roots, not key exchange"
)]
async fn https_front(ca: &TestCa, upstream: std::net::SocketAddr) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certificates = CertificateDer::pem_file_iter(ca.path("server.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(ca.path("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certificates, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let (Ok(mut tls), Ok(mut plain)) = (
                    acceptor.accept(stream).await,
                    tokio::net::TcpStream::connect(upstream).await,
                ) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

/// The Genesys client trusts Mozilla's roots, and the ones it is given besides: an API behind a gateway whose
/// certificate a company CA signed is refused, then read once that CA is added; PEM without a certificate is
/// refused when the client is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_genesys_client_trusts_the_roots_it_is_given_besides_mozillas() {
    let ca = TestCa::make();
    let emulator = Emulator::start().await.unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        https_front(&ca, emulator.addr()).await
    );
    let builder = GenesysClient::builder()
        .api_base(&base)
        .login_base(&base)
        .client_credentials(emulator.client_id(), emulator.client_secret())
        .retry(RetryLayer::builder().max_attempts(1).build().unwrap());

    let error = builder
        .clone()
        .build()
        .unwrap()
        .get_action("x")
        .await
        .unwrap_err();
    let causes = support::calls::causes(&error);
    assert!(causes.contains("UnknownIssuer"), "{causes}");
    assert_eq!(emulator.requests(Endpoint::Token), 0);

    let pem = std::fs::read(ca.path("ca.crt")).unwrap();
    let client = builder
        .clone()
        .add_root_certificates_pem(&pem)
        .build()
        .unwrap();
    let pages: Vec<_> = client
        .list_action_pages(&ActionQuery::new().page_size(25))
        .try_collect()
        .await
        .unwrap();
    assert!(pages.iter().map(|p| p.entities.len()).sum::<usize>() >= 60);
    assert_eq!(emulator.requests(Endpoint::Token), 1);

    for pem in [
        &b"not pem"[..],
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        let error = builder
            .clone()
            .add_root_certificates_pem(pem)
            .build()
            .unwrap_err();
        assert_eq!(error.setting(), Setting::Tls, "{error}");
        assert!(
            error.to_string().contains("root certificates #1"),
            "{error}"
        );
    }
}
