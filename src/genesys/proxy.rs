//! The connections under the Genesys client's TLS: straight to the host, or through an HTTP proxy's `CONNECT`
//! tunnel (TLS then runs end to end, through the tunnel).

use crate::error::{BoxError, ConfigError, Setting};
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::TokioIo;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tower::ServiceExt;
use tower_service::Service;

/// Which proxy the client's connections go through.
#[derive(Clone, Default)]
pub(crate) enum ProxySetting {
    /// The one the environment names, as curl reads it, for hosts other than this machine.
    #[default]
    Environment,
    /// This one (its URL may hold a password), for every host.
    Url(String),
    /// None.
    Off,
}

impl fmt::Debug for ProxySetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxySetting::Environment => f.write_str("Environment"),
            ProxySetting::Url(url) => f.debug_tuple("Url").field(&shown(url)).finish(),
            ProxySetting::Off => f.write_str("Off"),
        }
    }
}

/// A proxy URL as it may be shown: scheme, host and port, never its user info (a password).
fn shown(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => match uri.authority() {
            Some(authority) => {
                let host_port = authority
                    .as_str()
                    .rsplit_once('@')
                    .map_or(authority.as_str(), |(_, host)| host);
                format!("{}://{host_port}", uri.scheme_str().unwrap_or("http"))
            }
            None => "(no host)".to_owned(),
        },
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// The proxy rules of one client.
struct Route {
    matcher: Matcher,
    /// Hosts of this machine never go through the proxy (the environment's rules only, as Go's clients read
    /// them: a proxy elsewhere cannot reach them).
    direct_to_loopback: bool,
}

impl Route {
    /// Checks `setting` against the hosts the client will reach (`bases`, absolute URLs): `None` when no
    /// connection goes through a proxy.
    fn new(setting: &ProxySetting, bases: &[&str]) -> Result<Option<Route>, ConfigError> {
        let route = match setting {
            ProxySetting::Off => return Ok(None),
            ProxySetting::Url(url) => {
                if !reads(url, &Uri::from_static("https://example.com")) {
                    return Err(ConfigError::new(
                        Setting::Proxy,
                        format!("{} {UNREADABLE}", shown(url)),
                    ));
                }
                // A proxy of another kind than http:// is refused below, with the bases.
                Route {
                    matcher: Matcher::builder().all(url.as_str()).build(),
                    direct_to_loopback: false,
                }
            }
            ProxySetting::Environment => {
                refuse_unreadable_environment(bases)?;
                Route {
                    matcher: Matcher::from_env(),
                    direct_to_loopback: true,
                }
            }
        };
        let mut proxied = false;
        for base in bases {
            let Ok(uri) = base.parse::<Uri>() else {
                continue;
            };
            let Some(proxy) = route.proxy_for(&uri) else {
                continue;
            };
            if !proxy
                .uri()
                .scheme_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("http"))
            {
                return Err(ConfigError::new(
                    Setting::Proxy,
                    format!(
                        "the proxy for {base} is {}, not an http:// proxy, the only kind this client tunnels \
                         through: set `proxy` to one, or `no_proxy`",
                        shown(&proxy.uri().to_string())
                    ),
                ));
            }
            proxied = true;
        }
        Ok(proxied.then_some(route))
    }

    /// The proxy a connection to `dst` goes through, if any.
    fn proxy_for(&self, dst: &Uri) -> Option<Intercept> {
        if self.direct_to_loopback && dst.host().is_some_and(super::client::is_loopback) {
            return None;
        }
        self.matcher.intercept(dst)
    }
}

/// The error's words for a proxy value that [`reads`] refuses.
const UNREADABLE: &str =
    "is not a proxy URL this client can use (`http://[user:password@]host:port`)";

/// Whether hyper-util's reading of the proxy value `value` keeps it for `dst`: it drops, without a word, a URL
/// that does not parse, a scheme it does not know, user info without a `:password` (in some versions).
fn reads(value: &str, dst: &Uri) -> bool {
    Matcher::builder()
        .all(value)
        .build()
        .intercept(dst)
        .is_some()
}

/// `Err` when a proxy variable of the environment that applies to one of `bases` holds a value hyper-util's
/// reading drops (a scheme it does not know, a URL that does not parse), which would connect around the proxy
/// meant: curl refuses such a value too. A CGI process's variables are ignored, as the reading ignores them.
fn refuse_unreadable_environment(bases: &[&str]) -> Result<(), ConfigError> {
    if std::env::var_os("REQUEST_METHOD").is_some() {
        return Ok(());
    }
    for base in bases {
        let Ok(uri) = base.parse::<Uri>() else {
            continue;
        };
        if uri.host().is_none_or(super::client::is_loopback) {
            continue;
        }
        let names: &[&str] = if uri.scheme_str() == Some("http") {
            &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        } else {
            &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        };
        // Upper case first, as hyper-util reads them.
        for pair in names.chunks(2) {
            let Some((name, value)) = pair
                .iter()
                .find_map(|name| std::env::var(name).ok().map(|value| (name, value)))
            else {
                continue;
            };
            if !value.is_empty() && !reads(&value, &uri) {
                return Err(ConfigError::new(
                    Setting::Proxy,
                    format!(
                        "the environment's {name} ({}) {UNREADABLE}: correct it, or set `proxy` or `no_proxy`",
                        shown(&value)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Connects straight to a host, or through the proxy a [`Route`] names for it.
#[derive(Clone)]
pub(crate) struct Connector {
    http: HttpConnector,
    route: Option<Arc<Route>>,
}

/// How long a connection may carry nothing before the kernel probes it, and then the time between probes.
const KEEPALIVE: Duration = Duration::from_secs(15);

impl Connector {
    /// A connector for the proxy `setting`, checked against the hosts the client will reach.
    pub(crate) fn new(setting: &ProxySetting, bases: &[&str]) -> Result<Connector, ConfigError> {
        let mut http = HttpConnector::new();
        // The URIs it is given are https ones: TLS is the layer above.
        http.enforce_http(false);
        // A request is written whole and its answer awaited: nothing for Nagle's algorithm to gather, only a
        // segment to hold back (reqwest's default too).
        http.set_nodelay(true);
        // Probed after 15 s of silence, then every 15 s, given up after 3 unanswered (reqwest's default): a pooled
        // connection that a NAT gateway or load balancer would forget while idle is kept, and one it forgot
        // without a word is found dead and closed before a request is written to it.
        http.set_keepalive(Some(KEEPALIVE));
        http.set_keepalive_interval(Some(KEEPALIVE));
        http.set_keepalive_retries(Some(3));
        Ok(Connector {
            http,
            route: Route::new(setting, bases)?.map(Arc::new),
        })
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("proxied", &self.route.is_some())
            .finish_non_exhaustive()
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each call clones what it needs: nothing here waits.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let http = self.http.clone();
        let proxy = self.route.as_ref().and_then(|route| route.proxy_for(&dst));
        Box::pin(async move {
            let Some(proxy) = proxy else {
                return http.oneshot(dst).await.map_err(Into::into);
            };
            let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            tunnel.oneshot(dst).await.map_err(|source| {
                Box::new(ProxyError {
                    proxy: shown(&proxy.uri().to_string()),
                    source: Box::new(source),
                }) as BoxError
            })
        })
    }
}

/// A tunnel through the proxy could not be opened (the proxy refused it, asked for credentials, or could not
/// be reached); the request was not sent.
#[derive(Debug)]
struct ProxyError {
    proxy: String,
    source: BoxError,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no tunnel through the proxy {}", self.proxy)
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_url_is_shown_without_its_credentials() {
        assert_eq!(
            shown("http://user:s3cret@proxy.corp:3128"),
            "http://proxy.corp:3128"
        );
        assert_eq!(shown("proxy.corp:3128"), "http://proxy.corp:3128");
        let debug = format!("{:?}", ProxySetting::Url("http://u:s3cret@p:1".into()));
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn a_proxy_that_cannot_tunnel_is_refused_when_the_client_is_built() {
        let bases = ["https://api.example.com"];
        for (url, why) in [
            ("socks5://u:s3cret@p:1080", "not an http:// proxy"),
            ("https://p:443", "not an http:// proxy"),
            ("http://", "not a proxy URL"),
            ("not a url", "not a proxy URL"),
        ] {
            let error = Route::new(&ProxySetting::Url(url.into()), &bases)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            assert_eq!(error.setting(), Setting::Proxy, "{url}");
            assert!(error.to_string().contains(why), "{url}: {error}");
            assert!(!error.to_string().contains("s3cret"), "{error}");
        }
        for url in [
            "http://u:p@proxy.corp:3128",
            "proxy.corp:3128",
            "HTTP://proxy.corp",
        ] {
            let route = Route::new(&ProxySetting::Url(url.into()), &bases).unwrap();
            let route = route.unwrap_or_else(|| panic!("{url}: no route"));
            let dst = "https://api.example.com".parse().unwrap();
            assert_eq!(
                route
                    .proxy_for(&dst)
                    .map(|p| p.uri().host().map(str::to_owned)),
                Some(Some("proxy.corp".into()))
            );
        }
        assert!(Route::new(&ProxySetting::Off, &bases).unwrap().is_none());
    }
}
