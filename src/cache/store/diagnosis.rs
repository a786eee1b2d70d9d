//! Why a store cannot reach Redis, told to the operator.
//!
//! fred reconnects quietly: while a store's Redis cannot be reached (a wrong port, a wrong password, plain text
//! sent to a TLS port, a server that is down), every store call fails with "not connected" or "canceled", which
//! says nothing of the cause, and the cache answers from the origin. So the clients a store makes itself are
//! watched: each attempt to connect that fails, and each connection lost, is logged with fred's cause and, where
//! the cause reads as a common mistake, what to check ([`hint`]); each cause at `warn` at most once a minute per
//! store, at `debug` otherwise. [`explain`] says the same in the error a first connection returns.
//!
//! A store configured for one server also reads its `INFO` once connected ([`misplaced`]): a node of a Redis
//! Cluster or a sentinel, through which nothing could be stored, is refused by `connect` (a lazily connected store
//! says so at `warn`), and a replica, which refuses every write, is said at `warn`.

use fred::clients::Client;
use fred::cmd;
use fred::error::{Error, ErrorKind};
use fred::interfaces::{ClientLike, EventInterface};
use fred::prelude::{Config, Value};
use fred::types::config::{Server, ServerConfig};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

/// How often a store's connection errors are logged at `warn`; the rest are logged at `debug`.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What to check, when an error connecting (`tls`: over TLS) reads as a common mistake.
pub(crate) fn hint(error: &Error, tls: bool) -> Option<&'static str> {
    let details = error.details();
    match error.kind() {
        ErrorKind::Protocol if details.contains("Decode") && !tls => Some(
            "what answered does not speak Redis's protocol (RESP): is this a Redis port? A TLS port needs rediss://",
        ),
        ErrorKind::Protocol if details.contains("Decode") => {
            Some("what answered does not speak Redis's protocol (RESP): is this a Redis port?")
        }
        // Redis's TLS port closes a connection that sends it plain text, with a reset.
        ErrorKind::IO if !tls && details.contains("ConnectionReset") => Some(
            "the server closed the connection without a word, as a TLS port does to plain text: if it serves \
             TLS, use rediss://",
        ),
        // A plain port takes a TLS handshake for the start of a command, and waits for the rest of it.
        ErrorKind::Timeout if tls => Some(
            "no answer to the TLS handshake or what followed it: if the port serves plain text, use redis://",
        ),
        ErrorKind::Config if details.contains("cluster support disabled") => {
            Some("the server is no node of a Redis Cluster: for one server, use redis://")
        }
        ErrorKind::Sentinel if details.contains("Missing primary address") => Some(
            "the sentinel names no primary by that name: is it the name the sentinels monitor it as \
             (sentinelServiceName)?",
        ),
        ErrorKind::Sentinel
            if details
                .to_ascii_lowercase()
                .contains("unknown command 'sentinel'") =>
        {
            Some(
                "the server is no sentinel: is this a sentinel's port? For Redis itself, use redis://",
            )
        }
        _ => None,
    }
}

/// Whether `config` connects over TLS.
pub(crate) fn uses_tls(config: &Config) -> bool {
    #[cfg(feature = "redis-tls")]
    let tls = config.tls.is_some();
    #[cfg(not(feature = "redis-tls"))]
    let tls = {
        let _ = config;
        false
    };
    tls
}

/// Where `config` connects: `host:port`, a socket's path, a Cluster's or the sentinels' listed nodes. Never
/// its credentials.
pub(crate) fn place(config: &Config) -> String {
    let list = |hosts: &[Server]| {
        let hosts: Vec<String> = hosts.iter().map(Server::to_string).collect();
        hosts.join(", ")
    };
    match &config.server {
        ServerConfig::Centralized { server } => server.to_string(),
        ServerConfig::Clustered { hosts, .. } => format!("the Cluster at {}", list(hosts)),
        ServerConfig::Sentinel {
            hosts,
            service_name,
            ..
        } => format!("`{service_name}` through the sentinels at {}", list(hosts)),
        #[cfg(unix)]
        ServerConfig::Unix { path } => path.display().to_string(),
    }
}

/// Whether `config` names one server, whose clients send every key to it: not a Cluster, nor Sentinel.
pub(crate) fn one_server(config: &Config) -> bool {
    !matches!(
        config.server,
        ServerConfig::Clustered { .. } | ServerConfig::Sentinel { .. }
    )
}

/// What a server a store was configured to use as one server turned out to be, when that is no server to store in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Misplaced {
    /// A node of a Redis Cluster (`cluster_enabled:1`): every key another node serves is refused (`MOVED`).
    ClusterNode,
    /// A Redis Sentinel (`redis_mode:sentinel`): it stores nothing, and refuses every command the cache sends.
    Sentinel,
    /// A replica (`role:slave`): it refuses every write (`READONLY`), so no miss is stored. Not refused: an
    /// address that names a replica for a moment, during a failover, is followed to the new primary as soon as a
    /// write is refused (the store connects again).
    Replica,
}

impl Misplaced {
    /// What a server's `INFO` says it is, when that is no server to store in: a sentinel, else a Cluster node
    /// (a Cluster's replica too), else a replica.
    fn of(info: &str) -> Option<Self> {
        let says = |what: &str| info.lines().any(|line| line.trim_end() == what);
        if says("redis_mode:sentinel") {
            Some(Misplaced::Sentinel)
        } else if says("cluster_enabled:1") {
            Some(Misplaced::ClusterNode)
        } else if says("role:slave") {
            Some(Misplaced::Replica)
        } else {
            None
        }
    }

    /// Whether `connect` refuses it: a server through which nothing could ever be stored.
    pub(crate) fn refused(self) -> bool {
        !matches!(self, Misplaced::Replica)
    }

    /// What is wrong, and what to use instead.
    fn says(self) -> &'static str {
        match self {
            Misplaced::ClusterNode => {
                "is a node of a Redis Cluster (cluster_enabled:1): connect with a redis-cluster:// URL (or fred's \
                 ServerConfig::Clustered); through a connection to one node, every key another node serves is \
                 refused (MOVED) and answered by the inner service"
            }
            Misplaced::Sentinel => {
                "is a Redis Sentinel (redis_mode:sentinel), which stores nothing: connect with a \
                 redis-sentinel://host:port/0?sentinelServiceName=<primary's name> URL, or to the primary itself"
            }
            Misplaced::Replica => {
                "is a replica (role:slave), which refuses every write (READONLY), so no miss is stored: connect \
                 to the primary, or through Sentinel"
            }
        }
    }
}

/// What the server `client` is connected to turned out to be, from its `INFO`, when that is no server to store
/// in; `None` also when it cannot tell (`INFO` refused or failed): nothing is said then.
pub(crate) async fn misplaced(client: &Client) -> Option<Misplaced> {
    let info: String = client
        .custom(cmd!("INFO"), Vec::<Value>::new())
        .await
        .ok()?;
    Misplaced::of(&info)
}

/// The error of a store configured for one server that reached a `misplaced` one at `place`.
pub(crate) fn misplaced_error(place: &str, misplaced: Misplaced) -> Error {
    Error::new(ErrorKind::Config, format!("{place} {}", misplaced.says()))
}

/// Says at `warn` that the server at `place` is `misplaced`, for a store that goes on with it.
pub(crate) fn warn_misplaced(place: &str, misplaced: Misplaced) {
    tracing::warn!(server = place, "cache store: {place} {}", misplaced.says());
}

/// Once `client` (a lazily connected store's, configured for one server at `place`) is connected, checks that
/// its server is one to store in, and says so at `warn` if it is not: on a task, returned so that the store can
/// end it with its clients (a client that never connects is waited for forever). `None` outside a Tokio runtime.
pub(crate) fn check_placed(client: &Client, place: &str) -> Option<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (client, place) = (client.clone(), place.to_owned());
    Some(runtime.spawn(async move {
        if client.wait_for_connect().await.is_err() {
            return;
        }
        if let Some(misplaced) = misplaced(&client).await {
            warn_misplaced(&place, misplaced);
        }
    }))
}

/// `error` and its [`hint`], if any, in one line.
fn described(error: &Error, tls: bool) -> String {
    match hint(error, tls) {
        Some(hint) => format!("{error} ({hint})"),
        None => error.to_string(),
    }
}

/// The error of a first connection to `place` (see [`place`]) failing with `error`: of the same kind, saying
/// where the connection was going and, where it reads as a common mistake, what to check.
pub(crate) fn explain(error: Error, place: &str, tls: bool) -> Error {
    let message = match hint(&error, tls) {
        Some(hint) => format!("cannot connect to {place}: {} ({hint})", error.details()),
        None => format!("cannot connect to {place}: {}", error.details()),
    };
    Error::new(error.kind().clone(), message)
}

/// Logs the connection errors of `clients`, a store's own, until they quit: each cause at `warn` once a
/// [`WARN_EVERY`] for all of them together (at most [`CAUSES_TOLD`] causes), at `debug` otherwise. A canceled
/// command is no cause (it follows a connection closed, whose cause is logged), so it is logged at `debug` only.
/// Nothing outside a Tokio runtime.
pub(crate) fn watch(clients: &[&Client], place: &str, tls: bool) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let told = Arc::new(Mutex::new(Told {
        since: Instant::now(),
        causes: Vec::new(),
    }));
    for client in clients {
        let mut errors = client.error_rx();
        let told = told.clone();
        let place = place.to_owned();
        runtime.spawn(async move {
            loop {
                match errors.recv().await {
                    Ok((error, server)) => report(&error, server.as_ref(), &place, tls, &told),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }
}

/// How many causes are logged at `warn` within one [`WARN_EVERY`].
const CAUSES_TOLD: usize = 4;

/// The causes a store's watch logged at `warn` since `since`.
struct Told {
    since: Instant,
    causes: Vec<String>,
}

impl Told {
    /// Whether `cause` is to be logged at `warn` now (and is then counted as told).
    fn due(&mut self, cause: &str) -> bool {
        let now = Instant::now();
        if now.duration_since(self.since) >= WARN_EVERY {
            self.since = now;
            self.causes.clear();
        }
        let due = self.causes.len() < CAUSES_TOLD && !self.causes.iter().any(|c| c == cause);
        if due {
            self.causes.push(cause.to_owned());
        }
        due
    }
}

/// Logs one connection error of a store's clients (see [`watch`]). fred names the `server` of a connection it
/// lost, and none for an attempt to connect that failed: only the latter gets a [`hint`] (a connection that
/// worked was no mistake of address or scheme).
fn report(error: &Error, server: Option<&Server>, place: &str, tls: bool, told: &Mutex<Told>) {
    let cause = match server {
        Some(_) => error.to_string(),
        None => described(error, tls),
    };
    let warn = !matches!(error.kind(), ErrorKind::Canceled)
        && told
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .due(&cause);
    let (at, what) = match server {
        Some(server) => (server.to_string(), "lost a connection to Redis"),
        None => (place.to_owned(), "cannot reach Redis"),
    };
    if warn {
        tracing::warn!(
            server = at,
            error = %cause,
            "{what}; the store connects again on its own, and requests go to the inner service meanwhile (the \
             same cause again within a minute is logged at debug)"
        );
    } else {
        tracing::debug!(server = at, error = %cause, "{what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_names_where_and_never_the_credentials() {
        let place = |url: &str| place(&Config::from_url(url).unwrap());
        assert_eq!(
            place("redis://cache:s3cret@10.0.0.7:6380/2"),
            "10.0.0.7:6380"
        );
        // In fred's order.
        assert_eq!(
            place("redis-cluster://cache:s3cret@a:7000?node=b:7001"),
            "the Cluster at b:7001, a:7000"
        );
        let sentinel = place("redis-sentinel://cache:s3cret@s1:26379/0?sentinelServiceName=cache");
        assert_eq!(sentinel, "`cache` through the sentinels at s1:26379");
    }

    #[test]
    fn hints_name_the_likely_mistake_and_only_then() {
        let error = |kind, details: &'static str| Error::new(kind, details);
        let not_resp = error(
            ErrorKind::Protocol,
            "Decode Error: frame_type: Invalid frame type.",
        );
        assert!(hint(&not_resp, false).is_some_and(|h| h.ends_with("A TLS port needs rediss://")));
        assert!(hint(&not_resp, true).is_some_and(|h| h.ends_with("is this a Redis port?")));
        let reset = error(
            ErrorKind::IO,
            "Os { code: 104, kind: ConnectionReset, message: \"...\" }",
        );
        assert!(hint(&reset, false).is_some_and(|h| h.ends_with("use rediss://")));
        assert_eq!(hint(&reset, true), None);
        let timeout = error(ErrorKind::Timeout, "Request timed out.");
        assert!(hint(&timeout, true).is_some_and(|h| h.ends_with("use redis://")));
        assert_eq!(
            hint(&timeout, false),
            None,
            "a slow or unreachable server: no guess"
        );
        let refused = error(ErrorKind::Auth, "WRONGPASS invalid username-password pair");
        assert_eq!(hint(&refused, false), None, "Redis's own words say it");

        let explained = explain(not_resp, "10.0.0.7:6380", false);
        assert_eq!(*explained.kind(), ErrorKind::Protocol);
        assert_eq!(
            explained.details(),
            "cannot connect to 10.0.0.7:6380: Decode Error: frame_type: Invalid frame type. (what answered does \
             not speak Redis's protocol (RESP): is this a Redis port? A TLS port needs rediss://)"
        );
    }

    #[test]
    fn a_cluster_node_or_a_sentinel_is_no_server_to_store_in() {
        let info = |lines: &[&str]| {
            format!(
                "# Server\r\nredis_version:7.0.15\r\n{}\r\n",
                lines.join("\r\n")
            )
        };
        assert_eq!(
            Misplaced::of(&info(&["redis_mode:standalone", "cluster_enabled:0"])),
            None
        );
        assert_eq!(
            Misplaced::of(&info(&[
                "redis_mode:cluster",
                "# Cluster",
                "cluster_enabled:1"
            ])),
            Some(Misplaced::ClusterNode)
        );
        assert_eq!(
            Misplaced::of(&info(&[
                "redis_mode:sentinel",
                "# Sentinel",
                "sentinel_masters:1"
            ])),
            Some(Misplaced::Sentinel)
        );
        assert_eq!(
            Misplaced::of(&info(&[
                "redis_mode:standalone",
                "# Replication",
                "role:slave"
            ])),
            Some(Misplaced::Replica)
        );
        assert_eq!(
            Misplaced::of(&info(&[
                "redis_mode:cluster",
                "# Replication",
                "role:slave",
                "cluster_enabled:1"
            ])),
            Some(Misplaced::ClusterNode),
            "a Cluster's replica is a Cluster node first"
        );
        assert!(
            !Misplaced::Replica.refused()
                && Misplaced::ClusterNode.refused()
                && Misplaced::Sentinel.refused()
        );
        assert_eq!(Misplaced::of("garbage"), None);
    }

    #[test]
    fn sentinel_errors_name_the_likely_mistake() {
        let missing = Error::new(
            ErrorKind::Sentinel,
            "Missing primary address in response from sentinel node.",
        );
        assert!(hint(&missing, false).is_some_and(|h| h.contains("sentinelServiceName")));
        let redis = Error::new(
            ErrorKind::Sentinel,
            "ERR unknown command 'SENTINEL', with args beginning with: 'GET-MASTER-ADDR-BY-NAME' 'cache' ",
        );
        assert!(hint(&redis, false).is_some_and(|h| h.ends_with("For Redis itself, use redis://")));
        let standalone = Error::new(
            ErrorKind::Config,
            "ERR This instance has cluster support disabled",
        );
        assert!(
            hint(&standalone, false).is_some_and(|h| h.ends_with("for one server, use redis://"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_cause_is_told_once_a_minute_and_a_few_at_most() {
        let mut told = Told {
            since: Instant::now(),
            causes: Vec::new(),
        };
        assert!(told.due("refused"));
        assert!(!told.due("refused"), "the same cause within the minute");
        assert!(told.due("WRONGPASS"), "another cause");
        assert!(told.due("c") && told.due("d"));
        assert!(!told.due("e"), "no more than four a minute");
        tokio::time::advance(WARN_EVERY).await;
        assert!(told.due("refused"), "a minute later");
    }
}
