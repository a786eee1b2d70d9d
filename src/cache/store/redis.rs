//! [`RedisStore`]: entries in Redis through fred (standalone, Sentinel or Cluster; a `Client` or a `Pool`).

use super::diagnosis;
use super::homes::{self, Homes};
use super::sentinel::{Following, Primary};
use super::shards::Shards;
use super::{Store, StoreFuture};
use crate::atomic::AtomicU64;
use crate::cache::entry::{WINDOWS_AT, WINDOWS_LEN, staled_windows};
use crate::error::StoreError;
use bytes::Bytes;
use fred::cmd;
use fred::interfaces::{ClusterInterface, EventInterface};
use fred::prelude::{
    Builder, Client, ClientLike, Config, Expiration, KeysInterface, LuaInterface, Options, Pool,
    ReconnectPolicy, SetOptions, Value,
};
use fred::types::{ClusterHash, ConnectHandle, Key};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A [`Store`] on Redis through [fred](https://docs.rs/fred).
///
/// The store [`connect`](Self::connect) makes keeps two clients (a connection each, or one per node of a
/// Cluster): one sends the `GET`s, which are the hits, the other everything else. Redis answers a connection's
/// commands in order, so a hit sent behind a write it holds would wait for it: a large entry arriving, a script, a
/// write held while writes are paused (`CLIENT PAUSE WRITE`, which `FAILOVER` and a Cluster's manual failover
/// use). The cache gives the writes circuit breakers of their own too (per node on a Cluster), so that hits go on
/// while writes fail. A store over your own client ([`new`](Self::new)) or pool sends everything through it.
///
/// Commands are sent *fail fast*: while a connection is known to be down they error at once instead of queueing for
/// the reconnect, so the cache falls back to the inner service without waiting. The clients a store makes itself
/// log why they cannot connect or lost their connection (fred's error, the server's address, and for the usual
/// mistakes what to check: a port that is not Redis's, plain text sent to a TLS port or TLS to a plain one), each
/// cause at `warn` once a minute; for your own client, fred's `on_error` tells the same. A command already written
/// when the connection dies is bounded by the cache's store timeout, and the circuit breaker stops further ones;
/// once a client has connected again, the breaker lets a call through at once rather than after its cooldown.
/// When its calls keep timing out (a black-holed or half-open link, which would otherwise hold every later command
/// behind replies that never come), the breaker has the store remake its connections. On a Cluster, where that is
/// done only when every node is failing, the clients [`connect`](Self::connect) builds also take a connection whose
/// oldest command has waited a second for its reply for dead, and reconnect it; give Cluster clients you build
/// yourself the same (`UnresponsiveConfig`). fred's cluster client connects to every primary or to none: while a
/// primary is gone (until a replica takes its slots, or for good without one) it sends nothing to any node, so
/// meanwhile the store sends each command on a key to a connection of its own to the key's primary, and only the
/// lost shard's keys go to the origin. Keys of one entry and its lease share a Cluster hash slot, so no command
/// crosses slots; `purge` scans every primary of a cluster (through those connections while a primary is gone),
/// goes on past one that fails, and then names it in its error.
///
/// Behind Sentinel, a store built inside a Tokio runtime also keeps one connection to a sentinel, subscribed to
/// its announcements of a new primary (`+switch-master`) and asking it where the primary is every second: after a
/// failover its clients connect to the new primary at once, even while the old one still runs and answers (a
/// `SENTINEL FAILOVER`, a primary the sentinels cannot reach but the clients can), so that the processes of a
/// fleet never read and write different primaries for long. The watch ends when the last clone of the store is
/// dropped.
///
/// The clients [`connect`](Self::connect) and [`connect_lazy`](Self::connect_lazy) make quit when the last clone
/// of the store is dropped (inside a Tokio runtime), closing their connections, or ending their attempts while
/// Redis is out of reach.
///
/// Tag sets (the keys of a tag's entries, for
/// [`CacheHandle::invalidate_tag`](crate::cache::CacheHandle::invalidate_tag)) carry no TTL, so that a Redis
/// evicting only keys with one (`maxmemory-policy volatile-lru`, `volatile-lfu`, ...: the usual policy of managed
/// Redis) never takes a set from under entries still stored, and a removal by tag finds every entry left. Under
/// `allkeys-*` it may: the store says so once at `warn`, after the first tag it records.
///
/// It can log in as a Redis user allowed only its namespace's keys (`~<namespace>:v1:*`) and the commands the
/// README's "A Redis user of its own" lists (`ACL SETUSER` lines for one server, a Cluster and Sentinel). What
/// each command is for:
///
/// - `GET`, `SET`: hits, fills and leases;
/// - `EVAL`, `EVALSHA`: writes under a lease, tags and the tag clock; Redis checks what each script runs too:
///   `DEL`, `PEXPIRE`, `TIME`, `ZADD`, `ZSCORE`, `ZREMRANGEBYSCORE`, `EXISTS`;
/// - `TIME`: the server's clock, which a process whose own clock is off times entries by;
/// - `GETRANGE`, and `SETRANGE` in a script: the soft purges (`mark_stale`, ...) move an entry's windows in place;
/// - `UNLINK`, `SCAN`, `ZSCAN`: invalidation, `purge()` and the hourly sweep of tag sets and removal marks;
/// - `CLIENT TRACKING`, `EXISTS`: the near cache;
/// - `CLIENT ID`, `INFO`: the client asks them on each connection;
/// - on a Cluster, `CLUSTER SLOTS`, `CLUSTER INFO`: the client reads the topology;
/// - behind Sentinel, `ROLE` on each server (the client asks whether it is the primary), and on the sentinels,
///   which the client logs in to as to Redis, `SENTINEL GET-MASTER-ADDR-BY-NAME`, `SENTINEL SENTINELS`: where the
///   primary is, and which sentinels watch it; `SUBSCRIBE` to `+switch-master`: a failover is followed at once,
///   even when the old primary lives on (without it, the store asks a sentinel every second instead, and says so
///   once at `warn`).
///
/// A command the user may not run fails no request: it is a refusal, as a full Redis's `OOM` is. What needs it
/// stops (a miss is not stored, `detail=store-error`; the near cache stays off and logs a warning saying why), and
/// Redis hits go on.
///
/// ```no_run
/// use tower_redis_cache::RedisStore;
///
/// # async fn run() -> Result<(), fred::error::Error> {
/// // redis://, rediss:// (feature `redis-tls`), redis-cluster://, redis-sentinel://, and on Unix
/// // redis+unix:///run/redis/redis.sock URLs, with credentials.
/// let store = RedisStore::connect("redis://cache:change-me@127.0.0.1:6379").await?;
/// # let _ = store; Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Clone)]
pub struct RedisStore {
    /// Every client: those that send `GET`s first, then those that send the rest (the same ones when
    /// `readers` is all of them).
    clients: Clients,
    /// How many of `clients`, from the first, send the `GET`s. Fewer than all when the store made its own
    /// clients ([`connect`](Self::connect)): the last sends everything else, so that no hit waits in Redis
    /// behind a write on its connection.
    readers: usize,
    next: std::sync::Arc<AtomicUsize>,
    /// `GET`s, in futures whose homes are reused (see [`Homes`]).
    reads: Arc<Homes<ReadOf>>,
    /// Which primary serves each hash slot, for the cache's per-node circuit breakers; `None` unless Cluster.
    routes: Option<std::sync::Arc<Routes>>,
    /// Behind Sentinel, the watch that moves the clients to a new primary as soon as Sentinel names it.
    following: Option<std::sync::Arc<Following>>,
    /// Whether the server's eviction policy was looked at (at the first tag recorded).
    policy_read: std::sync::Arc<AtomicBool>,
    /// The clients the store made itself, stopped when its last clone is dropped; `None` for the caller's.
    _owned: Option<std::sync::Arc<Owned>>,
    /// How many connections the clients have made.
    connections: std::sync::Arc<Connections>,
    /// On a Cluster, a client per primary for the keys of those that answer while the cluster clients cannot
    /// send (see [`Shards`]); `None` otherwise.
    shards: Option<std::sync::Arc<Shards>>,
}

/// How many connections a store's clients have made, counted from fred's notice of each (`reconnect_rx`, sent
/// once a connection is made and set up, first ones included) when asked, which is while a circuit breaker of the
/// cache is open or opening: it probes at once when a connection was made since it opened. No task reads them:
/// they wait in fred's channels, which keep the last few, until asked.
pub(crate) struct Connections {
    made: AtomicU64,
    /// Each client, with its notices.
    notices: std::sync::Mutex<
        Vec<(
            Client,
            tokio::sync::broadcast::Receiver<fred::types::config::Server>,
        )>,
    >,
}

impl Connections {
    pub(crate) fn of(clients: &[Client]) -> Self {
        Connections {
            made: AtomicU64::new(0),
            notices: std::sync::Mutex::new(
                clients
                    .iter()
                    .map(|c| (c.clone(), c.reconnect_rx()))
                    .collect(),
            ),
        }
    }

    /// Stops counting the connections `client` makes.
    pub(crate) fn remove(&self, client: &Client) {
        self.notices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(counted, _)| counted.id() != client.id());
    }

    /// Counts the connections `client` makes from now on too.
    pub(crate) fn add(&self, client: &Client) {
        let notices = client.reconnect_rx();
        self.notices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((client.clone(), notices));
    }

    /// The connections made so far that it has read of. Reads the notices unless another caller is reading them
    /// (it counts them then), and only those of a client that says it is connected: fred sends its notice before
    /// it has resent the commands left from the connection lost and says so, and until then it fails a command
    /// sent fail fast, as the store's are, which would spend a breaker's probe for nothing.
    fn made(&self) -> u64 {
        use tokio::sync::broadcast::error::TryRecvError;
        if let Ok(mut notices) = self.notices.try_lock() {
            let mut new = 0u64;
            for (client, notice) in notices.iter_mut() {
                if client.state() != fred::types::ClientState::Connected {
                    continue;
                }
                loop {
                    match notice.try_recv() {
                        Ok(_) => new = new.saturating_add(1),
                        // Notices fred dropped for want of room were connections made all the same.
                        Err(TryRecvError::Lagged(missed)) => new = new.saturating_add(missed),
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
            }
            if new > 0 {
                self.made.fetch_add(new, Ordering::AcqRel);
            }
        }
        self.made.load(Ordering::Acquire)
    }
}

/// The clients a store made itself ([`RedisStore::connect`], [`RedisStore::connect_lazy`]), with their connection
/// tasks. When the last clone of the store is dropped they are stopped: otherwise fred's connection tasks would
/// outlive it, each holding a connection to Redis, or, while Redis is out of reach, trying to connect every 100 ms
/// for as long as the process lives.
struct Owned {
    clients: Vec<(Client, ConnectHandle)>,
    /// Tasks that wait on the clients (the check of a lazily connected store's server, which waits for a first
    /// connection that may never come): ended with them.
    helpers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        for helper in self.helpers.drain(..) {
            helper.abort();
        }
        for (client, task) in self.clients.drain(..) {
            stop_in_background(client, task);
        }
    }
}

/// How long a client that is let go has to send `QUIT` before its connection task is ended.
const QUIT_WAIT: Duration = Duration::from_secs(1);

/// Has `client` quit and its connection task `task` end. fred 10.1's `quit` alone does not always end it: while the
/// task is connecting (a first connection, or again after losing one) it reads no command, so the `QUIT` waits in
/// its queue, and `quit` for its answer, until a connection is made; and the close `quit` announces is heard only
/// in the pause between two attempts, so one announced during an attempt goes unheard and the task goes on trying
/// every 100 ms for as long as the process lives. So the task is ended (aborted, which closes its connections)
/// once `QUIT` is sent, or after [`QUIT_WAIT`] without. Give it the plain client: a `QUIT` sent fail fast is
/// cancelled, as fred marks the client disconnecting first, and leaves the connection open.
pub(crate) async fn stop(client: Client, task: ConnectHandle) {
    let _ = tokio::time::timeout(QUIT_WAIT, client.quit()).await;
    task.abort();
}

/// [`stop`], on a task of its own; outside a Tokio runtime the task is ended at once (it cannot run there anyway).
pub(crate) fn stop_in_background(client: Client, task: ConnectHandle) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(stop(client, task))),
        Err(_) => task.abort(),
    }
}

/// The store's clients (one per connection of a `Pool`), each sending commands fail fast.
type Clients = std::sync::Arc<[fred::clients::WithOptions<Client>]>;

/// What a `GET` needs: the clients, which one of them sends it, and the key.
type ReadOf = (Clients, usize, Key);

/// A `GET` in flight, in its reused home.
pub(crate) type Housed<'h> = homes::Housed<'h, ReadOf>;

/// The `GET` of `key` on `clients[index]`: a future that owns what it needs, so that its home outlives it.
async fn get_on(clients: Clients, index: usize, key: Key) -> Result<Option<Bytes>, StoreError> {
    let client = clients
        .get(index)
        .ok_or_else(|| StoreError::Backend("no such client".into()))?;
    client.get(key).await.map_err(backend)
}

/// The primary of every hash slot, as a small number per primary, rebuilt from fred's view of the cluster at
/// most once a second (fred follows `MOVED` and failovers; this follows fred).
struct Routes {
    table: RwLock<Arc<[u8]>>,
    /// When `table` was last rebuilt (ms since `base`); 0: never.
    built: AtomicU64,
    base: std::time::Instant,
}

/// How often the slot table is rebuilt from fred's cluster state.
const ROUTES_EVERY_MS: u64 = 1000;

/// Primaries past this many share one breaker: a node number is a byte, 0 meaning "unknown".
const MAX_ROUTED_NODES: usize = 255;

impl Routes {
    fn new() -> Self {
        Routes {
            table: RwLock::new(Arc::from(vec![0u8; 16384])),
            built: AtomicU64::new(0),
            base: std::time::Instant::now(),
        }
    }

    /// The node number (from 1) of `key`'s primary, rebuilding the table first when it is old.
    fn node_of(&self, client: &fred::clients::WithOptions<Client>, key: &str) -> Option<usize> {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let built = self.built.load(Ordering::Acquire);
        if (built == 0 || now.saturating_sub(built) >= ROUTES_EVERY_MS)
            && self
                .built
                .compare_exchange(built, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.rebuild(client);
        }
        let slot = usize::from(fred::util::redis_keyslot(key.as_bytes()));
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table
            .get(slot)
            .copied()
            .filter(|n| *n != 0)
            .map(usize::from)
    }

    fn rebuild(&self, client: &fred::clients::WithOptions<Client>) {
        let Some(state) = client.cached_cluster_state() else {
            return;
        };
        // Numbered in address order, so a number stays with its node while the set of primaries does.
        let primaries = state.unique_primary_nodes();
        let mut table = vec![0u8; 16384];
        for range in state.slots() {
            let Some(n) = primaries.iter().position(|p| *p == range.primary) else {
                continue;
            };
            let n = u8::try_from((n + 1).min(MAX_ROUTED_NODES)).unwrap_or(u8::MAX);
            let (start, end) = (usize::from(range.start), usize::from(range.end));
            if let Some(slots) = table.get_mut(start..=end.min(16383)) {
                slots.fill(n);
            }
        }
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::from(table);
    }
}

impl RedisStore {
    /// Wraps a connected (or connecting) fred client, with its own settings. Build it with `reconnect_on_auth_error
    /// = true`, as [`connect`](Self::connect) does (a connection that loses its login, as behind a managed Redis's
    /// proxy whose node was replaced, is then made again at its first `NOAUTH`; without it, only once the cache
    /// has the store reconnect, within seconds), and with `tcp.nodelay =
    /// Some(true)`, as [`connect`](Self::connect) does too: with fred's default (Nagle's algorithm on), a command
    /// written while an earlier one is unacknowledged is held until the acknowledgement, which comes with the
    /// reply: up to a round trip before it is sent. [`connect`](Self::connect) also sets `tcp.keepalive` (probes
    /// after 30 s of silence), so that a NAT or load balancer that forgets quiet connections keeps its own. This
    /// one client sends every command: a hit can wait behind a write (see [`RedisStore`]).
    ///
    /// Build it with a reconnect policy (`Builder::set_policy`; [`connect`](Self::connect)'s clients try every
    /// 100 ms, forever). fred gives a client without one (its default) up at its first lost connection, a Redis
    /// restart or failover: its connection task ends, its commands wait for one that never comes, and the cache
    /// stores and answers nothing again until the process restarts. The store says so at `warn` when given such
    /// a client, and never has it reconnect: fred would end its connection task for want of a policy.
    pub fn new(client: Client) -> Self {
        Self::over(vec![client])
    }

    /// Wraps a fred pool; commands go round-robin over its clients. Build it with a reconnect policy, as
    /// [`new`](Self::new) says.
    pub fn from_pool(pool: Pool) -> Self {
        Self::over(pool.clients().to_vec())
    }

    /// A store over the caller's `clients`.
    fn over(clients: Vec<Client>) -> Self {
        if clients.iter().any(gives_up) {
            tracing::warn!(
                "the cache store's fred client has no reconnect policy (or its attempts are spent): fred gives it \
                 up at its first lost connection (a Redis restart, a failover), after which the cache stores and \
                 answers nothing; build it with one (`Builder::set_policy`), as `RedisStore::connect` does"
            );
        }
        Self::from_clients(clients)
    }

    /// A store whose `GET`s go to `reader` and every other command to `writer`, each its own connection (one
    /// per node on a Cluster): Redis answers a connection's commands in order, so a hit sent behind a write on
    /// the same connection waits for it, be it a large entry being stored, a script, or a write held while
    /// writes are paused (`CLIENT PAUSE WRITE`, which `FAILOVER` and a Cluster's manual failover use).
    /// `tasks` are their connection tasks, `helpers` tasks that wait on them (see [`Owned`]).
    fn split(
        (reader, writer): (Client, Client),
        tasks: (ConnectHandle, ConnectHandle),
        helpers: Vec<tokio::task::JoinHandle<()>>,
    ) -> Self {
        let owned = Owned {
            clients: vec![(reader.clone(), tasks.0), (writer.clone(), tasks.1)],
            helpers,
        };
        let mut store = Self::from_clients(vec![reader, writer]);
        store.readers = 1;
        store._owned = Some(std::sync::Arc::new(owned));
        store
    }

    fn from_clients(clients: Vec<Client>) -> Self {
        let options = Options {
            fail_fast: true,
            ..Options::default()
        };
        let routes = clients
            .first()
            .is_some_and(|c| c.is_clustered())
            .then(|| Arc::new(Routes::new()));
        let following = super::sentinel::follow(&clients).map(std::sync::Arc::new);
        let connections = std::sync::Arc::new(Connections::of(&clients));
        let shards = routes
            .is_some()
            .then(|| std::sync::Arc::new(Shards::new(connections.clone(), options.clone())));
        let clients: Vec<_> = clients.iter().map(|c| c.with_options(&options)).collect();
        let homes = Homes::new(|(clients, index, key)| get_on(clients, index, key));
        RedisStore {
            readers: clients.len(),
            clients: clients.into(),
            next: std::sync::Arc::new(AtomicUsize::new(0)),
            reads: Arc::new(homes),
            routes,
            following,
            policy_read: std::sync::Arc::default(),
            _owned: None,
            connections,
            shards,
        }
    }

    /// Connects to the Redis named by `url` with two reconnecting clients, one for the hits' `GET`s and one for
    /// everything else (see [`RedisStore`]; each: constant 100 ms between attempts, forever; `TCP_NODELAY`;
    /// keepalive probes after 30 s of silence; a connection that keeps timing out is made again, by the cache's
    /// breaker or, on a Cluster, when it has not replied for a second) and waits for their first connections.
    /// Their errors connecting again later are logged (see [`RedisStore`]).
    ///
    /// `rediss://` (and `rediss-cluster://`, `rediss-sentinel://`) connect over TLS, verifying the server
    /// against the system's roots (or `SSL_CERT_FILE` / `SSL_CERT_DIR`) with the rustls provider the crate docs'
    /// [TLS](crate#tls) section names; they need the `redis-tls` feature, and without it are refused rather than
    /// sent in plain text. For a private CA, use [`connect_with`](Self::connect_with).
    ///
    /// On Unix, `redis+unix:///path/to/redis.sock` reaches a Redis on the same machine through its socket (Redis's
    /// `unixsocket` setting), which skips the TCP stack on every hit; with credentials,
    /// `redis+unix://user:password@localhost/path/to/redis.sock` (a host is needed before the path; any will do).
    /// The path being the socket's, a database is named in the query, as redis-rs reads it, whose `unix://`
    /// spelling works too: `unix:///path/to/redis.sock?db=2&user=cache&pass=change-me`. Another query parameter
    /// is refused rather than ignored.
    ///
    /// # Errors
    ///
    /// An invalid URL, one whose scheme is none of those above (fred would take any other for `redis://`), a TLS
    /// URL without the `redis-tls` feature, a Unix socket URL on a system without Unix sockets, or no connection
    /// on the first attempt: that error says where it was going (never with the credentials) and, when its cause
    /// reads as a usual mistake, what to check (`... (what answered does not speak Redis's protocol (RESP): is
    /// this a Redis port? A TLS port needs rediss://)`). A URL of one server that reaches a node of a Redis
    /// Cluster or a sentinel is refused too (a `Config` error saying to use `redis-cluster://` or
    /// `redis-sentinel://`): through it, every key another node serves would be refused by Redis (`MOVED`), or
    /// every command by the sentinel. One that reaches a replica is said at `warn` (it refuses every write, so no
    /// miss is stored), not refused: an address naming a replica for a moment, during a failover, is followed to
    /// the new primary at the first refused write. [`connect_lazy`](Self::connect_lazy) says all that at `warn`
    /// once connected.
    pub async fn connect(url: &str) -> Result<Self, fred::error::Error> {
        Self::connect_with(parse_url(url)?).await
    }

    /// [`connect`](Self::connect) with a fred [`Config`] you built: a `TlsConnector` over your own CA, a
    /// credential provider, Sentinel or Cluster settings the URL cannot carry.
    ///
    /// fred's own `Config::from_url` with a `rediss://` URL builds a connector that leaves the provider to
    /// rustls's crate features, and panics in a build that links both (see [TLS](crate#tls)): parse the `redis://`
    /// spelling, or build the connector with `rustls::ClientConfig::builder_with_provider`, then set `tls`.
    ///
    /// # Errors
    ///
    /// An invalid configuration, or no connection on the first attempt (said as [`connect`](Self::connect) says
    /// it).
    pub async fn connect_with(config: Config) -> Result<Self, fred::error::Error> {
        let (place, tls) = (diagnosis::place(&config), diagnosis::uses_tls(&config));
        let one_server = diagnosis::one_server(&config);
        let settings = connection_config_for(&config);
        let reader = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_constant(0, 100))
            .with_connection_config(settings)
            .build()?;
        let writer = reader.clone_new();
        let failed = match futures_util::future::join(reader.init(), writer.init()).await {
            (Ok(read), Ok(write)) => {
                let misplaced = if one_server {
                    diagnosis::misplaced(&reader).await
                } else {
                    None
                };
                match misplaced {
                    Some(misplaced) if misplaced.refused() => {
                        futures_util::future::join(stop(reader, read), stop(writer, write)).await;
                        return Err(diagnosis::misplaced_error(&place, misplaced));
                    }
                    Some(misplaced) => diagnosis::warn_misplaced(&place, misplaced),
                    None => {}
                }
                diagnosis::watch(&[&reader, &writer], &place, tls);
                return Ok(Self::split((reader, writer), (read, write), Vec::new()));
            }
            // The one that connected is not left reconnecting forever for a store never made.
            (Err(error), Ok(write)) => {
                stop(writer, write).await;
                error
            }
            (Ok(read), Err(error)) => {
                stop(reader, read).await;
                error
            }
            (Err(error), Err(_)) => error,
        };
        Err(diagnosis::explain(failed, &place, tls))
    }

    /// Like [`connect`](Self::connect), but returns at once: the clients connect (and reconnect) in the
    /// background, every 100 ms until Redis answers however long it takes to come up, and until they are
    /// connected every store call fails fast, so requests go to the inner service. Why they cannot connect is
    /// logged, from the first attempt (see [`RedisStore`]). Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// An invalid URL, one whose scheme is none of [`connect`](Self::connect)'s, a TLS URL without the
    /// `redis-tls` feature, or no Tokio runtime.
    pub fn connect_lazy(url: &str) -> Result<Self, fred::error::Error> {
        Self::connect_lazy_with(parse_url(url)?)
    }

    /// [`connect_lazy`](Self::connect_lazy) with a fred [`Config`] you built.
    ///
    /// # Errors
    ///
    /// An invalid configuration, or no Tokio runtime.
    pub fn connect_lazy_with(mut config: Config) -> Result<Self, fred::error::Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Config,
                "RedisStore::connect_lazy needs a Tokio runtime",
            ));
        }
        let (place, tls) = (diagnosis::place(&config), diagnosis::uses_tls(&config));
        let one_server = diagnosis::one_server(&config);
        let settings = connection_config_for(&config);
        // fred gives up on a client whose first connection fails (`fail_fast`, its default): a store made while
        // its Redis was out of reach would never cache. The reconnect policy applies to the first one too.
        config.fail_fast = false;
        let reader = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_constant(0, 100))
            .with_connection_config(settings)
            .build()?;
        let writer = reader.clone_new();
        // Watched before they connect, so that the first failure is told too.
        diagnosis::watch(&[&reader, &writer], &place, tls);
        let helpers = if one_server {
            diagnosis::check_placed(&reader, &place)
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        // The clients reconnect on their own, until the store is dropped.
        let tasks = (reader.connect(), writer.connect());
        Ok(Self::split((reader, writer), tasks, helpers))
    }

    /// Runs `script`, one of the writes under a lease: `value` at `key` (expiring after `ttl`) if the lease at
    /// `lease` holds `token`. Returns whether it wrote.
    async fn write_if_leased(
        &self,
        script: &Script,
        key: &str,
        value: Bytes,
        ttl: Duration,
        lease: &str,
        token: &str,
    ) -> Result<bool, StoreError> {
        let keys = vec![Key::from(key), Key::from(lease)];
        let args = vec![
            Value::from(token),
            Value::Bytes(value),
            integer(millis(ttl)),
        ];
        Ok(run_script(&self.client_for(key), script, keys, args).await? == 1)
    }

    /// The configuration of the store's (first) client: where Redis is and how to reach it.
    pub(crate) fn config(&self) -> Config {
        self.clients[0].client_config()
    }

    /// Behind Sentinel (and built inside a Tokio runtime), the primary as the sentinels last named it.
    pub(crate) fn primaries(&self) -> Option<tokio::sync::watch::Receiver<Option<Primary>>> {
        self.following.as_ref().map(|f| f.primaries())
    }

    /// The store's clients, on a Cluster; none otherwise.
    pub(crate) fn cluster_clients(&self) -> Vec<Client> {
        if self.routes.is_none() {
            return Vec::new();
        }
        self.clients.iter().map(|c| (**c).clone()).collect()
    }

    /// How many connections the store's clients have made so far, first ones included (see [`Connections`]).
    pub(crate) fn connections_made(&self) -> u64 {
        self.connections.made()
    }

    /// The client the next command other than a `GET` goes to.
    fn client(&self) -> &fred::clients::WithOptions<Client> {
        let index = if self.readers < self.clients.len() {
            self.readers
        } else {
            self.client_index()
        };
        &self.clients[index]
    }

    /// [`Store::mark_stale`] of one key: its head read, its windows moved, and written back only if they are
    /// still what was read (a fill since then wrote an answer from after the call). Whether it changed.
    async fn mark_one_stale(&self, key: &str, at: u64) -> Result<bool, StoreError> {
        let end = WINDOWS_AT + WINDOWS_LEN;
        let client = self.client_for(key);
        let head: Bytes = client.getrange(key, 0, end - 1).await.map_err(backend)?;
        let Some(windows) = staled_windows(&head, at) else {
            return Ok(false);
        };
        let args = vec![
            Value::from(WINDOWS_AT as i64),
            Value::from((end - 1) as i64),
            Value::Bytes(head.slice(WINDOWS_AT..end)),
            Value::Bytes(Bytes::copy_from_slice(&windows)),
        ];
        Ok(run_script(&client, &SET_RANGE_IF, vec![Key::from(key)], args).await? == 1)
    }

    /// [`Store::get`], unboxed: the cache's own reads hold this handle as it is.
    pub(crate) fn read(&self, key: &str) -> Housed<'_> {
        let index = if self.readers == 1 {
            0
        } else {
            self.client_index()
        };
        self.reads
            .read((self.clients.clone(), index, Key::from(key)))
    }

    /// The `GET` of `key` on the client of its primary, when the store's Cluster client cannot send now (see
    /// [`Shards`]); `None` otherwise, and always for one server or Sentinel.
    pub(crate) fn read_on_shard<'a>(&self, key: &'a str) -> Option<StoreFuture<'a, Option<Bytes>>> {
        let shards = self.shards.as_ref()?;
        let client = shards.for_key(&self.clients, self.clients.first()?, key.as_bytes())?;
        Some(Box::pin(
            async move { client.get(key).await.map_err(backend) },
        ))
    }

    /// The client a command on `key` other than a `GET` goes to: the store's, or on a Cluster whose client
    /// cannot send now, the client of the key's primary (see [`Shards`]).
    fn client_for(&self, key: &str) -> std::borrow::Cow<'_, fred::clients::WithOptions<Client>> {
        let client = self.client();
        match &self.shards {
            Some(shards) => shards
                .for_key(&self.clients, client, key.as_bytes())
                .map_or(std::borrow::Cow::Borrowed(client), std::borrow::Cow::Owned),
            None => std::borrow::Cow::Borrowed(client),
        }
    }

    /// `script` on the one key `key`, sent by [`client_for`](Self::client_for) it.
    async fn run_script_on(
        &self,
        script: &Script,
        key: &str,
        args: Vec<Value>,
    ) -> Result<i64, StoreError> {
        run_script(&self.client_for(key), script, vec![Key::from(key)], args).await
    }

    /// Whether the `GET`s go on connections of their own, apart from every other command.
    pub(crate) fn writes_apart(&self) -> bool {
        self.readers < self.clients.len()
    }

    /// [`Store::reconnect`] after calls kept timing out: every client when `GET`s did (a link that holds reads
    /// holds the rest too: a half-open connection, a black hole), only those that send the rest when only they
    /// did (a write held in Redis: writes paused, a script running), so that hits, answered on connections of
    /// their own, are not held up while those are made again.
    pub(crate) async fn reconnect_side(&self, reads: bool) -> Result<(), StoreError> {
        let side = match self.clients.get(self.readers..) {
            Some(writers) if !reads && !writers.is_empty() => writers,
            _ => &self.clients[..],
        };
        tracing::info!(
            clients = side.len(),
            "cache store failing: reconnecting its clients"
        );
        force_reconnection(side).await
    }

    /// The index of the client the next command goes to: each in turn.
    fn client_index(&self) -> usize {
        if self.clients.len() == 1 {
            return 0;
        }
        self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len()
    }
}

impl RedisStore {
    /// Warns, once, when the server holding the tag set `tag` evicts keys without a TTL when full
    /// (`maxmemory-policy allkeys-*` under a `maxmemory`): it may take a tag's set before the entries it names.
    async fn warn_of_eviction(&self, tag: &str) {
        let info: Result<String, _> = self
            .client()
            .custom(
                cmd!("INFO", hash: ClusterHash::Custom(fred::util::redis_keyslot(tag.as_bytes()))),
                vec![Value::from_static_str("memory")],
            )
            .await;
        let Ok(info) = info else {
            return;
        };
        if let Some(policy) = evicts_any_key(&info) {
            tracing::warn!(
                policy,
                "cache store: Redis evicts keys without a TTL when full, so it may evict a tag's set before the \
                 entries it names, and a removal by tag then misses them (they are answered until they expire); \
                 run it with a `volatile-*` policy, which never evicts a set, or `noeviction`"
            );
        }
    }
}

/// The `maxmemory_policy` of an `INFO memory` reply when it evicts keys without a TTL (`allkeys-...`) and a
/// `maxmemory` is set (`0`: no limit, nothing evicted).
fn evicts_any_key(info: &str) -> Option<&str> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let policy = field("maxmemory_policy")?;
    let limited = field("maxmemory").is_some_and(|limit| limit != "0");
    (limited && policy.starts_with("allkeys-")).then_some(policy)
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("clients", &self.clients.len())
            .finish()
    }
}

/// Parses a Redis URL, refusing a TLS one when this build cannot speak TLS (fred would only log a warning and
/// connect in plain text, sending the password in clear).
///
/// A TLS URL gets the crate's own connector (`crate::tls`): fred's default leaves the crypto provider to rustls's
/// crate features, and panics in a build that links both providers.
fn parse_url(url: &str) -> Result<Config, fred::error::Error> {
    refuse_unknown_scheme(url)?;
    refuse_tls_without_support(url, cfg!(feature = "redis-tls"))?;
    if let Some(socket) = unix_socket(url) {
        return socket_config(socket?);
    }
    #[cfg(feature = "redis-tls")]
    if let Some(plain) = without_tls(url) {
        let mut config = Config::from_url(&plain)?;
        config.tls = Some(crate::tls::redis_connector()?.into());
        return Ok(config);
    }
    Config::from_url(url)
}

/// A Unix socket URL read by [`unix_socket`]: fred's spelling of it, with no query, and what its query said.
#[derive(Debug, PartialEq, Eq)]
struct Socket {
    url: String,
    database: Option<u8>,
    username: Option<String>,
    password: Option<String>,
}

/// A Unix socket URL, in fred's spelling (`redis+unix://`, `valkey+unix://`) or redis-rs's (`unix://`), read
/// with the query parameters redis-rs takes (`db`, `user`, `pass`), which fred would drop: a database asked
/// for is never silently replaced by `0`. `None` for any other URL; an error for a parameter it does not know
/// or cannot read (named, its value never shown: it may be a password).
fn unix_socket(url: &str) -> Option<Result<Socket, fred::error::Error>> {
    let url = url.trim_start();
    let (_, rest) = url.split_once("://")?;
    let scheme = scheme(url);
    let fred_scheme = match scheme.as_str() {
        "unix" | "redis+unix" => "redis+unix",
        "valkey+unix" => "valkey+unix",
        _ => return None,
    };
    let refuse = |what: String| {
        Some(Err(fred::error::Error::new(
            fred::error::ErrorKind::Config,
            format!("{what} in a {scheme}:// URL"),
        )))
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut socket = Socket {
        url: format!("{fred_scheme}://{rest}"),
        database: None,
        username: None,
        password: None,
    };
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "db" => match value.parse() {
                Ok(database) => socket.database = Some(database),
                Err(_) => return refuse(format!("`db={value}` is no database number (0 to 255)")),
            },
            "user" => socket.username = Some(value.into_owned()),
            "pass" | "password" => socket.password = Some(value.into_owned()),
            _ => {
                return refuse(format!(
                    "the query parameter `{name}` is not one this crate reads (`db`, `user`, `pass`)"
                ));
            }
        }
    }
    let credentials_in_authority = rest
        .split('/')
        .next()
        .is_some_and(|host| host.contains('@'));
    if credentials_in_authority && (socket.username.is_some() || socket.password.is_some()) {
        return refuse("credentials both before the host and in the query".to_owned());
    }
    Some(Ok(socket))
}

/// The configuration of a Unix socket URL read by [`unix_socket`].
#[cfg(unix)]
fn socket_config(socket: Socket) -> Result<Config, fred::error::Error> {
    let mut config = Config::from_url_unix(&socket.url)?;
    config.database = socket.database;
    config.username = socket.username.or(config.username);
    config.password = socket.password.or(config.password);
    Ok(config)
}

/// No Unix sockets here: a Unix socket URL is refused, saying so.
#[cfg(not(unix))]
fn socket_config(_: Socket) -> Result<Config, fred::error::Error> {
    Err(fred::error::Error::new(
        fred::error::ErrorKind::Config,
        "a Unix socket URL (redis+unix://), and this system has no Unix sockets",
    ))
}

/// A URL's scheme, lowercased (empty when it has none).
fn scheme(url: &str) -> String {
    url.trim_start()
        .split_once("://")
        .map_or("", |(scheme, _)| scheme)
        .to_ascii_lowercase()
}

/// A TLS URL (`rediss`, `rediss-cluster`, `rediss-sentinel`, and fred's `valkeys` spellings) spelled with its
/// plain scheme (`rediss-cluster://` as `redis-cluster://`, the rest unchanged), for fred to parse without building
/// its own TLS connector; `None` for a URL that is not TLS.
fn without_tls(url: &str) -> Option<String> {
    let url = url.trim_start();
    let (_, rest) = url.split_once("://")?;
    let scheme = scheme(url);
    let plain = match (
        scheme.strip_prefix("rediss"),
        scheme.strip_prefix("valkeys"),
    ) {
        (Some(suffix), _) => format!("redis{suffix}"),
        (None, Some(suffix)) => format!("valkey{suffix}"),
        (None, None) => return None,
    };
    Some(format!("{plain}://{rest}"))
}

/// The URL schemes [`parse_url`] reads: fred's, in their `redis` and `valkey` spellings, and redis-rs's `unix`.
const SCHEMES: [&str; 15] = [
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "redis+unix",
    "unix",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
    "valkey+unix",
];

/// `Err` for a URL whose scheme is none of [`SCHEMES`]. fred reads any other as `redis://`, so `tls://` or
/// `redis-tls://` would send the password in plain text, and `redis-clustr://` would talk to one node of a
/// Cluster. The scheme is named only when it reads as one: text before a `://` may be credentials misplaced.
fn refuse_unknown_scheme(url: &str) -> Result<(), fred::error::Error> {
    let scheme = scheme(url);
    if SCHEMES.contains(&scheme.as_str()) {
        return Ok(());
    }
    let reads_as_scheme = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let what = if reads_as_scheme {
        format!("`{scheme}://` is no Redis URL scheme")
    } else {
        "no Redis URL scheme is given".to_owned()
    };
    Err(fred::error::Error::new(
        fred::error::ErrorKind::Config,
        format!(
            "{what}: tower-redis-cache reads redis://, redis-cluster:// and redis-sentinel:// (rediss://, \
             rediss-cluster:// and rediss-sentinel:// over TLS), redis+unix:// and unix://, each also spelled \
             valkey"
        ),
    ))
}

/// `Err` for a TLS scheme when `tls` support is absent.
fn refuse_tls_without_support(url: &str, tls: bool) -> Result<(), fred::error::Error> {
    if !tls && without_tls(url).is_some() {
        let scheme = scheme(url);
        return Err(fred::error::Error::new(
            fred::error::ErrorKind::Config,
            format!(
                "a {scheme}:// URL needs TLS, and this build has none: enable the `redis-tls` feature of \
                 tower-redis-cache (refusing to connect in plain text)"
            ),
        ));
    }
    Ok(())
}

/// A fred error as a store error: an error reply of a reachable server (see [`is_refusal`]) is
/// [`StoreError::Refused`], anything else (a lost connection, a timeout, a cluster without a slot's node)
/// [`StoreError::Backend`].
fn backend(error: fred::error::Error) -> StoreError {
    if is_refusal(&error) {
        StoreError::Refused(error.into())
    } else {
        StoreError::backend(error)
    }
}

/// Whether `error` is an error reply from the server (`OOM command not allowed ...`, `READONLY ...`,
/// `WRONGTYPE ...`, `NOPERM ...`): fred gives those the kinds below and keeps the reply, which starts with its
/// upper-case code. Cluster replies (`MOVED`, `CLUSTERDOWN`) and authentication failures are left out: they say
/// the store cannot be reached as configured.
pub(super) fn is_refusal(error: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::Unknown | ErrorKind::InvalidArgument | ErrorKind::InvalidCommand
    ) && error
        .details()
        .split_whitespace()
        .next()
        .is_some_and(|code| code.len() > 1 && code.bytes().all(|b| b.is_ascii_uppercase()))
}

/// Has each of `clients` make its connections again.
async fn force_reconnection(
    clients: &[fred::clients::WithOptions<Client>],
) -> Result<(), StoreError> {
    // All at once: a reader made again while the writer still waits its turn would send misses' writes to a
    // stuck connection meanwhile.
    let reconnects = clients.iter().map(reconnect);
    for reconnected in futures_util::future::join_all(reconnects).await {
        reconnected.map_err(backend)?;
    }
    Ok(())
}

/// Has `client` make its connections again, unless fred would end it instead: fred reconnects by the client's
/// policy, and without one ends the connection task, for good.
pub(crate) async fn reconnect(client: &impl ClientLike) -> Result<(), fred::error::Error> {
    if gives_up(client) {
        return Ok(());
    }
    client.force_reconnection().await
}

/// Whether fred gives `client` up at a lost connection, and when asked to reconnect: no reconnect policy, or one
/// whose attempts have run out (its connection task ends, and its commands then wait, unanswered, for another).
fn gives_up(client: &impl ClientLike) -> bool {
    client.client_reconnect_policy().is_none_or(|policy| {
        policy.max_attempts() != 0 && policy.attempts() >= policy.max_attempts()
    })
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// The largest whole number [`integer`] sends as a number, and [`expiry`] as milliseconds.
const SENT_AS_IS: i64 = u32::MAX as i64;

/// A whole number as a command argument (a script's `ARGV`, which Lua reads as a string either way).
///
/// Not `Value::Integer` beyond 2^32: redis-protocol 6.0 (fred 10's) sizes an integer's encoding from the number
/// cast to `usize`, so on a 32-bit target one of 2^32 or more fails to encode ("Buffer too small"), fred drops
/// the connection, and the client's next commands fail ("Failed to route command"). A TTL past 50 days in
/// milliseconds is such a number, and so is a tag mark's day in microseconds. Its decimal digits as a string
/// are the same bytes on the wire.
fn integer(n: i64) -> Value {
    if (-SENT_AS_IS..=SENT_AS_IS).contains(&n) {
        Value::Integer(n)
    } else {
        Value::from(n.to_string())
    }
}

/// The expiry of a `SET` after `ttl`: `PX`, or, past 2^32 ms (50 days), `EX` in whole seconds rounded up (fred
/// encodes the number itself; see [`integer`]), at most 2^32 - 1 seconds (136 years).
fn expiry(ttl: Duration) -> Expiration {
    let ms = millis(ttl);
    if ms <= SENT_AS_IS {
        Expiration::PX(ms)
    } else {
        let seconds = ttl
            .as_secs()
            .saturating_add(u64::from(ttl.subsec_nanos() > 0));
        Expiration::EX(i64::try_from(seconds).map_or(SENT_AS_IS, |s| s.min(SENT_AS_IS)))
    }
}

/// `duration` in µs, as the tag clock counts.
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// How long a store connection may carry nothing before the kernel probes it (TCP keepalive).
///
/// A NAT gateway, load balancer or firewall forgets a connection it has seen nothing on for a while (Azure's load
/// balancer after 4 minutes, AWS's NAT gateway after 350 s, many firewalls after 5 to 60), mostly without telling
/// either end; Redis's own probes come every 300 s (`tcp-keepalive`), too seldom for some of them. The first
/// call after a quiet spell then waits out the store timeout, or finds the connection reset. A probe every 30 s
/// of silence keeps the path's state alive, at a few bytes a connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// How the store's own connections are set up: a 2 s connect timeout (the handshake's commands too), enough write
/// attempts for a redirected command, a new connection when one loses its login, `TCP_NODELAY`, and keepalive
/// probes after [`KEEPALIVE_IDLE`].
///
/// fred counts every write of a command as an attempt, redirections included, and gives up after
/// `max_command_attempts` (3 by default): during a Cluster reshard a `GET` sent on a stale slot map (`MOVED`)
/// and then to a slot being migrated (`ASK`) could fail with "Too many failed write attempts" although every
/// node answered. So a command may be written once more than it may be redirected (`max_redirections`, 5);
/// the store timeout still bounds how long a request waits for it.
pub(crate) fn connection_config(config: &mut fred::types::config::ConnectionConfig) {
    config.connection_timeout = Duration::from_secs(2);
    // The handshake (`HELLO`, `AUTH`, `SELECT`) and `CLUSTER SLOTS` are bounded as the connection is: with fred's
    // 10 s, a server that accepts and never answers (stopped, or not Redis) held a `connect` 10 s, and each
    // attempt of a store connecting in the background as long.
    config.internal_command_timeout = Duration::from_secs(2);
    // A connection that loses its login (`NOAUTH` on a command, as behind a managed Redis's proxy once the node
    // behind it was replaced) is made again, and logs in again: left alone, every command on it is refused for
    // as long as it lives, which no timeout or breaker notices.
    config.reconnect_on_auth_error = true;
    config.max_command_attempts = config.max_redirections + 1;
    // Each command goes out when written: with Nagle's algorithm (fred's default), a command written while an
    // earlier one is unacknowledged is held until the acknowledgement, which comes with the reply: up to a round
    // trip more for the calls a fill makes side by side (lease and tags) and the hits of concurrent requests.
    config.tcp.nodelay = Some(true);
    config.tcp.keepalive = Some(socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE));
}

/// [`connection_config`], and a connection whose oldest command has waited a second for its reply is taken for
/// dead, closed and reconnected: without that, a connection whose replies were lost (a black-holed or
/// half-open link) keeps every later command waiting on them. For the connections nothing else retires: a
/// Cluster's (the cache's breaker has the store reconnect only when all of it is failing, not one node) and
/// the near cache's tracking connection. A standalone or Sentinel store's connections are remade by the
/// breaker ([`Store::reconnect`]) when its calls keep timing out, so they go without: fred arms a timer for
/// every turn of its connection task when this is set, about 1,800 instructions a command, a tenth of a `GET`.
pub(crate) fn watched_connection_config(config: &mut fred::types::config::ConnectionConfig) {
    connection_config(config);
    config.unresponsive = fred::types::config::UnresponsiveConfig {
        max_timeout: Some(Duration::from_secs(1)),
        interval: Duration::from_millis(200),
    };
}

/// The connection settings for a store client of `config`.
fn connection_config_for(config: &Config) -> fn(&mut fred::types::config::ConnectionConfig) {
    if config.server.is_clustered() {
        watched_connection_config
    } else {
        connection_config
    }
}

/// A Lua script, called by its SHA-1 (`EVALSHA`), sent whole (`EVAL`, which also caches it again) when the
/// server's script cache does not hold it: after a restart, a `SCRIPT FLUSH`, or on a new Cluster node.
pub(crate) struct Script {
    pub(crate) lua: &'static str,
    /// The SHA-1 of `lua`, as `SCRIPT LOAD` reports it (a test checks it against a real server).
    pub(crate) sha1: &'static str,
}

/// Deletes the lease only if it still holds the caller's token.
pub(crate) const RELEASE_LEASE: Script = Script {
    lua: "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    sha1: "d02e481a9c91ceec59c5822a58a49d5d5d7ac80b",
};

/// Extends the lease (`PEXPIRE`, milliseconds) only if it still holds the caller's token.
pub(crate) const EXTEND_LEASE: Script = Script {
    lua: "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
    sha1: "3c47f94dc28d90f47ce03eabe2ebe59e85e54bf1",
};

/// Writes the entry (`KEYS[1]`, value `ARGV[2]`, `PX` `ARGV[3]`) only if its lease (`KEYS[2]`, in the same hash
/// slot) still holds the caller's token.
pub(crate) const SET_IF_LEASED: Script = Script {
    lua: "if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end",
    sha1: "e6cceb9d359e304a86c22a4295571cd49e2356a5",
};

/// [`SET_IF_LEASED`], and the lease deleted in the same step.
pub(crate) const SET_IF_LEASED_AND_RELEASE: Script = Script {
    lua: "if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) redis.call('DEL', KEYS[2]) return 1 else return 0 end",
    sha1: "0d9afd68e1111169e8ff3b839a4d7b9619fd33fb",
};

/// Records `ARGV[1]` in the tag set `KEYS[1]` until `ARGV[2]` ms from the server's now (its score; an
/// expiry already later stays) and drops the members whose expiry passed; unless the set's invalidation mark
/// (`KEYS[2]`) is at or above `ARGV[3]`. The server's clock, so that every process's members expire by one clock.
/// The set itself gets no TTL: a Redis that evicts only keys with one (`volatile-*`) never takes it from under
/// entries still stored, whose removal by tag would then miss them. [`SWEEP`] drops the sets whose every member
/// expired.
pub(crate) const TAG: Script = Script {
    lua: "local mark = redis.call('GET', KEYS[2]) if mark and tonumber(mark) >= tonumber(ARGV[3]) then return 0 end local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) local life = tonumber(ARGV[2]) redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) local held = redis.call('ZSCORE', KEYS[1], ARGV[1]) if not held or tonumber(held) < now + life then redis.call('ZADD', KEYS[1], now + life, ARGV[1]) end return 1",
    sha1: "2ef5851a7e09d828b8dee4886cf71de1e30bb568",
};

/// Drops the members of the tag set `KEYS[1]` whose expiry passed (by the server's clock, as [`TAG`] records
/// them), which removes the set if none is left (Redis removes an empty set); returns whether the set is still
/// there.
pub(crate) const SWEEP: Script = Script {
    lua: "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) return redis.call('EXISTS', KEYS[1])",
    sha1: "1ab4de3400f3ea6c240c470998c95f47fd44acb9",
};

/// Raises the invalidation mark `KEYS[1]` to `ARGV[1]` (a lower one stays). No TTL, as for the tag sets, so that a
/// Redis evicting only keys with one (`volatile-*`) never takes a mark while a fill that read the tag clock before
/// it may still record under its set. [`SWEEP_MARK`] drops it once it is [`MARK_FOR`] old.
pub(crate) const MARK: Script = Script {
    lua: "local mark = redis.call('GET', KEYS[1]) if not mark or tonumber(mark) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end return 1",
    sha1: "69f644609fdd2e30e80fba2da4537a5947f63802",
};

/// Deletes the invalidation mark `KEYS[1]` if its reading (µs, of the tag clock) is over `ARGV[1]` µs before the
/// server's now; returns whether it did.
pub(crate) const SWEEP_MARK: Script = Script {
    lua: "local t = redis.call('TIME') local now = t[1] * 1000000 + t[2] local mark = tonumber(redis.call('GET', KEYS[1]) or '') if mark and mark < now - tonumber(ARGV[1]) then return redis.call('DEL', KEYS[1]) end return 0",
    sha1: "d4ea05262c76a2b135b0c5a4d08018d08e306b2c",
};

/// Reads the tag clock `KEYS[1]`: the server's clock in µs, or the counter there if it is ahead; with `ARGV[1]`
/// `1`, one more than that, written back (so that a clock stepping back never moves a later advance below an
/// earlier one).
pub(crate) const CLOCK: Script = Script {
    lua: "local t = redis.call('TIME') local now = t[1] * 1000000 + t[2] local c = tonumber(redis.call('GET', KEYS[1]) or '0') if ARGV[1] == '1' then c = c + 1 if c < now then c = now end redis.call('SET', KEYS[1], string.format('%d', c)) elseif c < now then c = now end return c",
    sha1: "b7e1e99280b3dbe45587ce561324464622eaeebe",
};

/// Overwrites bytes `ARGV[1]` to `ARGV[2]` of `KEYS[1]` with `ARGV[4]` (`SETRANGE`, which keeps the key's TTL)
/// only if they still hold `ARGV[3]`; a missing key reads as empty, so it is never made.
pub(crate) const SET_RANGE_IF: Script = Script {
    lua: "if redis.call('GETRANGE', KEYS[1], ARGV[1], ARGV[2]) == ARGV[3] then redis.call('SETRANGE', KEYS[1], ARGV[1], ARGV[4]) return 1 else return 0 end",
    sha1: "5b88cb35e72f8456b9cc69793cb4e7416dbc3942",
};

/// How long an invalidation mark is kept before a sweep drops it: longer than any fill that read the tag clock
/// before it runs.
const MARK_FOR: Duration = Duration::from_secs(86_400);

/// Members of a tag set per `ZSCAN` reply (a hint to the server).
const TAG_PAGE: i64 = 500;

/// Runs `script` on `keys` (of one hash slot) with `args`: by SHA, and whole if the server does not know it.
async fn run_script(
    client: &fred::clients::WithOptions<Client>,
    script: &Script,
    keys: Vec<Key>,
    args: Vec<Value>,
) -> Result<i64, StoreError> {
    match client
        .evalsha::<i64, _, _, _>(script.sha1, keys.clone(), args.clone())
        .await
    {
        Err(error) if error.details().starts_with("NOSCRIPT") => client
            .eval::<i64, _, _, _>(script.lua, keys, args)
            .await
            .map_err(backend),
        result => result.map_err(backend),
    }
}

/// Escapes the glob characters `SCAN MATCH` interprets.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    out
}

impl Store for RedisStore {
    fn node_of(&self, key: &str) -> Option<usize> {
        let routes = self.routes.as_ref()?;
        routes.node_of(self.clients.first()?, key)
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        if let Some(read) = self.read_on_shard(key) {
            return read;
        }
        Box::pin(self.read(key))
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.client_for(key)
                .set::<(), _, _>(key, Value::Bytes(value), Some(expiry(ttl)), None, false)
                .await
                .map_err(backend)
        })
    }

    fn set_if_leased<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.write_if_leased(&SET_IF_LEASED, key, value, ttl, lease, token))
    }

    fn set_if_leased_and_release<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.write_if_leased(&SET_IF_LEASED_AND_RELEASE, key, value, ttl, lease, token))
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let reply: Option<String> = self
                .client_for(key)
                .set(key, token, Some(expiry(ttl)), Some(SetOptions::NX), false)
                .await
                .map_err(backend)?;
            Ok(reply.is_some())
        })
    }

    fn extend_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let args = vec![Value::from(token), integer(millis(ttl))];
            let done = self.run_script_on(&EXTEND_LEASE, key, args).await?;
            Ok(done == 1)
        })
    }

    fn release_lease<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let args = vec![Value::from(token)];
            let done = self.run_script_on(&RELEASE_LEASE, key, args).await?;
            Ok(done == 1)
        })
    }

    fn remove<'a>(&'a self, keys: &'a [&'a str]) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let client = self.client();
            if keys.is_empty() {
                return Ok(0);
            }
            if client.is_clustered() {
                // One key per command, since keys of different entries live in different slots; sent at once
                // (fred pipelines them to each node), so a tag of a thousand entries costs no thousand trips.
                // Each to its primary's own client while the cluster client cannot send (see `Shards`).
                let unlinks = keys.iter().map(|key| {
                    let client = self.client_for(key);
                    async move { client.unlink::<u64, _>(*key).await }
                });
                let mut removed = 0;
                for unlinked in futures_util::future::join_all(unlinks).await {
                    removed += unlinked.map_err(backend)?;
                }
                Ok(removed)
            } else {
                let keys: Vec<Key> = keys.iter().map(|k| Key::from(*k)).collect();
                client.unlink::<u64, _>(keys).await.map_err(backend)
            }
        })
    }

    fn mark_stale<'a>(&'a self, keys: &'a [&'a str], at: u64) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            // Each key read and changed on its own (two trips), all keys at once, as `remove` unlinks them.
            let marks = keys.iter().map(|key| self.mark_one_stale(key, at));
            let mut marked = 0;
            for changed in futures_util::future::join_all(marks).await {
                marked += u64::from(changed?);
            }
            Ok(marked)
        })
    }

    fn keeps_tags(&self) -> bool {
        true
    }

    fn tag<'a>(
        &'a self,
        tag: &'a str,
        member: &'a str,
        lifetime: Duration,
        since: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let keys = vec![Key::from(tag), Key::from(marked(tag))];
            let args = vec![
                Value::from(member),
                integer(millis(lifetime)),
                Value::from(since.to_string()),
            ];
            let recorded = run_script(&self.client_for(tag), &TAG, keys, args).await? == 1;
            if !self.policy_read.swap(true, Ordering::Relaxed) {
                // On a task of its own: this call is bounded by the store timeout, and the fill waits for it.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let (store, tag) = (self.clone(), tag.to_owned());
                    drop(runtime.spawn(async move { store.warn_of_eviction(&tag).await }));
                }
            }
            Ok(recorded)
        })
    }

    fn mark_invalidated<'a>(&'a self, tag: &'a str, at: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let args = vec![Value::from(at.to_string())];
            let key = marked(tag);
            self.run_script_on(&MARK, &key, args).await?;
            Ok(())
        })
    }

    fn tag_clock<'a>(&'a self, key: &'a str, advance: bool) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let args = vec![Value::from(i64::from(advance))];
            let reading = self.run_script_on(&CLOCK, key, args).await?;
            u64::try_from(reading).map_err(|_| StoreError::backend("negative tag clock"))
        })
    }

    fn tagged<'a>(&'a self, tag: &'a str, cursor: u64) -> StoreFuture<'a, (Vec<String>, u64)> {
        Box::pin(async move {
            let args = vec![
                Value::from(tag),
                Value::from(cursor.to_string()),
                Value::from_static_str("COUNT"),
                Value::from(TAG_PAGE),
            ];
            let reply: Value = self
                .client_for(tag)
                .custom(cmd!("ZSCAN", hash: ClusterHash::FirstKey), args)
                .await
                .map_err(backend)?;
            zscan_page(reply).ok_or_else(|| StoreError::backend("unreadable ZSCAN reply"))
        })
    }

    fn reconnect_cures(&self, error: &StoreError) -> bool {
        is_demoted(error) || lost_login(error)
    }

    fn server_time(&self) -> StoreFuture<'_, Option<SystemTime>> {
        Box::pin(async move {
            // On a Cluster, always the node serving slot 0: every process of a fleet then reads one clock,
            // however the nodes' own clocks differ.
            let reply: Value = self
                .client()
                .custom(
                    cmd!("TIME", hash: ClusterHash::Custom(0)),
                    Vec::<Value>::new(),
                )
                .await
                .map_err(backend)?;
            time_reply(reply)
                .map(Some)
                .ok_or_else(|| StoreError::backend("unreadable TIME reply"))
        })
    }

    fn reconnect(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            tracing::info!("cache store failing: reconnecting its clients");
            force_reconnection(&self.clients).await
        })
    }

    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            // Leases first: a fill still running when its lease goes is not stored (`set_if_leased`), so none can
            // put back an entry this purge has already removed. A lease and its entry share a slot, so a primary
            // at a time.
            let leases = &format!("{}{}", glob_escape(prefix), crate::cache::key::LEASE_SUFFIX);
            let entries = &glob_escape(prefix);
            self.on_every_primary("purge", "keys removed", |primary| async move {
                let removed = unlink_matching(&primary, leases).await?;
                Ok(removed + unlink_matching(&primary, entries).await?)
            })
            .await
        })
    }

    fn sweep_tags<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            // Every tag set, `<prefix>tag:{<digest>}`, and every mark, `...}:invalidated`: one `SCAN`.
            let pattern = &glob_escape(&format!("{prefix}tag:{{"));
            let mark_for = &integer(micros(MARK_FOR));
            self.on_every_primary("tag sweep", "tag sets removed", |primary| async move {
                let client = &primary.keys;
                for_each_page(&primary, pattern, |keys| async move {
                    // A script per key (each in its own slot on a Cluster), sent at once, as `remove` unlinks.
                    let sweeps = keys.into_iter().filter_map(|key| {
                        let name = key.as_str()?;
                        let set = name.ends_with('}');
                        let (script, args) = if set {
                            (&SWEEP, Vec::new())
                        } else if name.ends_with(crate::cache::key::MARK_SUFFIX) {
                            (&SWEEP_MARK, vec![mark_for.clone()])
                        } else {
                            return None;
                        };
                        Some(async move {
                            let left = run_script(client, script, vec![key], args).await?;
                            // A set that is gone, counted; a mark, not.
                            Ok::<_, StoreError>(u64::from(set && left == 0))
                        })
                    });
                    let mut gone = 0;
                    for swept in futures_util::future::join_all(sweeps).await {
                        gone += swept?;
                    }
                    Ok(gone)
                })
                .await
            })
            .await
        })
    }
}

/// A primary a `SCAN` of every key visits (the one server outside a Cluster), with the clients that reach it.
struct ScanTarget {
    /// Where it is, on a Cluster.
    server: Option<fred::types::config::Server>,
    /// The client its `SCAN`s go to (routed to it alone).
    scan: fred::clients::WithOptions<Client>,
    /// The client the commands on its keys go to.
    keys: fred::clients::WithOptions<Client>,
    /// Whether it is a Cluster's, whose keys live in different slots: one key a command.
    clustered: bool,
}

impl RedisStore {
    /// Runs `each` on every primary (on a Cluster, as fred's last view of it lists them; while the cluster client
    /// cannot send, through the primaries' own clients, as the commands on single keys do: see [`Shards`]), going on
    /// past one that fails. Returns the sum of what it returned, or, when it failed on any, an error that names
    /// each of those, how many answered and the sum over them (`done`: what the sum counts).
    async fn on_every_primary<F>(
        &self,
        what: &str,
        done: &str,
        mut each: impl FnMut(ScanTarget) -> F,
    ) -> Result<u64, StoreError>
    where
        F: Future<Output = Result<u64, StoreError>>,
    {
        let client = self.client();
        if !client.is_clustered() {
            let primary = ScanTarget {
                server: None,
                scan: client.clone(),
                keys: client.clone(),
                clustered: false,
            };
            return each(primary).await;
        }
        let servers = client
            .cached_cluster_state()
            .map(|state| state.unique_primary_nodes())
            .unwrap_or_default();
        // None while fred reads the Cluster's slots again: done on none of them, not on all.
        if servers.is_empty() {
            return Err(StoreError::backend(format!(
                "{what}: no Cluster primaries known yet"
            )));
        }
        let (mut total, mut failed) = (0u64, Vec::new());
        for server in &servers {
            let own = self
                .shards
                .as_ref()
                .and_then(|shards| shards.for_primary(&self.clients, client, server));
            let primary = match own {
                Some(own) => ScanTarget {
                    server: None,
                    scan: own.clone(),
                    keys: own,
                    clustered: true,
                },
                None => ScanTarget {
                    server: Some(server.clone()),
                    scan: client.clone(),
                    keys: client.clone(),
                    clustered: true,
                },
            };
            match each(primary).await {
                Ok(n) => total += n,
                Err(error) => failed.push((server, error)),
            }
        }
        if failed.is_empty() {
            return Ok(total);
        }
        let refused = failed
            .iter()
            .all(|(_, e)| matches!(e, StoreError::Refused(_)));
        let failures: Vec<String> = failed
            .iter()
            .map(|(server, e)| format!("{server}: {e}"))
            .collect();
        let message = format!(
            "{what} done on {} of {} Cluster primaries ({total} {done} there), failed on {}",
            servers.len() - failed.len(),
            servers.len(),
            failures.join("; ")
        );
        Err(if refused {
            StoreError::Refused(message.into())
        } else {
            StoreError::backend(message)
        })
    }
}

/// Removes every key of `primary` matching the `SCAN` glob `pattern` (`UNLINK`, 500 keys a command, one key a
/// command on a Cluster, whose keys live in different slots); returns how many were removed.
async fn unlink_matching(primary: &ScanTarget, pattern: &str) -> Result<u64, StoreError> {
    let client = &primary.keys;
    let clustered = primary.clustered;
    for_each_page(primary, pattern, |keys| async move {
        if clustered {
            let mut removed = 0;
            for key in keys {
                removed += client.unlink::<u64, _>(key).await.map_err(backend)?;
            }
            Ok(removed)
        } else if keys.is_empty() {
            Ok(0)
        } else {
            client.unlink::<u64, _>(keys).await.map_err(backend)
        }
    })
    .await
}

/// Runs `each` on every page of the keys of `primary` matching the `SCAN` glob `pattern`; returns the sum of
/// what it returned.
///
/// Its own `SCAN` loop, not fred's scan streams: those take an error reply (`NOPERM` for a user without
/// `+scan`) for an unreadable one, and the caller would learn nothing of why the purge failed.
async fn for_each_page<F>(
    primary: &ScanTarget,
    pattern: &str,
    mut each: impl FnMut(Vec<Key>) -> F,
) -> Result<u64, StoreError>
where
    F: Future<Output = Result<u64, StoreError>>,
{
    let mut options = primary.scan.options().clone();
    options.cluster_node.clone_from(&primary.server);
    let scanning = (*primary.scan).with_options(&options);
    let mut total = 0u64;
    let mut cursor = String::from("0");
    loop {
        let args = vec![
            Value::from(cursor),
            Value::from_static_str("MATCH"),
            Value::from(pattern),
            Value::from_static_str("COUNT"),
            Value::from(500),
        ];
        let reply: Value = scanning
            .custom(cmd!("SCAN", hash: ClusterHash::Random), args)
            .await
            .map_err(backend)?;
        let (next, keys) =
            scan_page(reply).ok_or_else(|| StoreError::backend("unreadable SCAN reply"))?;
        total += each(keys).await?;
        if next == "0" {
            return Ok(total);
        }
        cursor = next;
    }
}

/// A `TIME` reply: seconds and microseconds since the Unix epoch, each as a string (or, to be lenient, a number).
fn time_reply(reply: Value) -> Option<SystemTime> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let [seconds, micros] = <[Value; 2]>::try_from(parts).ok()?;
    let number = |value: Value| match value {
        Value::Integer(n) => u64::try_from(n).ok(),
        other => other.as_string()?.parse::<u64>().ok(),
    };
    let micros = number(micros).filter(|&micros| micros < 1_000_000)?;
    UNIX_EPOCH.checked_add(
        Duration::from_secs(number(seconds)?).checked_add(Duration::from_micros(micros))?,
    )
}

/// A `SCAN` reply: the next cursor (`"0"` once done) and the keys of this page.
fn scan_page(reply: Value) -> Option<(String, Vec<Key>)> {
    let Value::Array(mut parts) = reply else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let Value::Array(keys) = parts.pop()? else {
        return None;
    };
    let cursor = parts.pop()?.as_string()?;
    let keys = keys
        .into_iter()
        .map(|key| key.as_bytes().map(Key::from))
        .collect::<Option<Vec<Key>>>()?;
    Some((cursor, keys))
}

/// Whether `refusal` is a replica's `READONLY`: the server the store reached was the primary, and the address
/// the store was given may name the new primary now (a managed Redis's failover moves it and leaves open
/// connections where they were).
fn is_demoted(refusal: &StoreError) -> bool {
    matches!(refusal, StoreError::Refused(error)
        if error
            .downcast_ref::<fred::error::Error>()
            .is_some_and(is_replica_reply))
}

/// Whether `error` is `NOAUTH` on a connection that was logged in: behind a managed Redis's proxy whose node was
/// replaced, every command on it is refused so for as long as it lives. fred's `reconnect_on_auth_error` takes it
/// for a lost connection (the store's own clients set it); on a caller's client without it, it reaches the cache.
fn lost_login(error: &StoreError) -> bool {
    matches!(error, StoreError::Backend(error)
        if error
            .downcast_ref::<fred::error::Error>()
            .is_some_and(|error| error.details().starts_with("NOAUTH")))
}

/// Whether `error` is a replica's refusal of a write (`READONLY ...`).
pub(super) fn is_replica_reply(error: &fred::error::Error) -> bool {
    error.details().starts_with("READONLY")
}

/// Whether `error` is a server saying it cannot answer yet, not that it never will: `LOADING` (a restarted
/// Redis reading its snapshot, a replica its primary's), `BUSY` (a script or function running past
/// `busy-reply-threshold`), `MASTERDOWN` (a replica cut off from its primary) or `TRYAGAIN` (a Cluster slot
/// migrating). What it refused is asked again later, and needs no operator.
pub(super) fn is_unready_reply(error: &fred::error::Error) -> bool {
    let code = error.details().split_whitespace().next().unwrap_or("");
    matches!(code, "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN")
}

/// The key of the invalidation mark of the tag set `tag` (in its hash slot).
fn marked(tag: &str) -> String {
    format!("{tag}{}", crate::cache::key::MARK_SUFFIX)
}

/// A `ZSCAN` reply: `[cursor, [member, score, member, score, ...]]`, as members and the next cursor.
fn zscan_page(reply: Value) -> Option<(Vec<String>, u64)> {
    let Value::Array(mut parts) = reply else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let Value::Array(pairs) = parts.pop()? else {
        return None;
    };
    let cursor = parts.pop()?.as_string()?.parse().ok()?;
    let members = pairs
        .into_iter()
        .step_by(2)
        .map(|member| member.as_string())
        .collect::<Option<Vec<String>>>()?;
    Some((members, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gives_up_without_a_reconnect_policy_only() {
        let client = |policy: Option<ReconnectPolicy>| {
            let mut builder = Builder::from_config(Config::default());
            if let Some(policy) = policy {
                builder.set_policy(policy);
            }
            builder.build().map(|client| gives_up(&client)).ok()
        };
        assert_eq!(client(None), Some(true));
        assert_eq!(
            client(Some(ReconnectPolicy::new_constant(0, 100))),
            Some(false)
        );
        // Three attempts left: not yet.
        assert_eq!(
            client(Some(ReconnectPolicy::new_constant(3, 100))),
            Some(false)
        );
    }

    #[test]
    fn numbers_past_32_bits_are_sent_as_digits_and_long_expiries_in_seconds() {
        let day = Duration::from_secs(86_400);
        assert_eq!(integer(4_294_967_295), Value::Integer(4_294_967_295));
        assert_eq!(integer(-4_294_967_295), Value::Integer(-4_294_967_295));
        assert_eq!(integer(4_294_967_296), Value::from("4294967296"));
        assert_eq!(integer(i64::MIN), Value::from("-9223372036854775808"));
        assert_eq!(integer(millis(day * 3650)), Value::from("315360000000"));
        assert_eq!(integer(micros(MARK_FOR)), Value::from("86400000000"));
        assert_eq!(expiry(day * 49), Expiration::PX(4_233_600_000));
        assert_eq!(expiry(Duration::ZERO), Expiration::PX(1));
        assert_eq!(expiry(day * 3650), Expiration::EX(315_360_000));
        assert_eq!(
            expiry(day * 50 + Duration::from_millis(1)),
            Expiration::EX(4_320_001)
        );
        assert_eq!(expiry(Duration::MAX), Expiration::EX(4_294_967_295));
    }

    #[test]
    fn time_replies_are_read_and_odd_ones_refused() {
        let reply = |parts: Vec<Value>| time_reply(Value::Array(parts));
        let text = |s: &'static str| Value::from_static_str(s);
        assert_eq!(
            reply(vec![text("1796339077"), text("250001")]),
            Some(UNIX_EPOCH + Duration::from_micros(1_796_339_077_250_001))
        );
        assert_eq!(
            reply(vec![Value::Integer(7), Value::Integer(5)]),
            Some(UNIX_EPOCH + Duration::from_micros(7_000_005))
        );
        for odd in [
            vec![text("1796339077")],
            vec![text("1796339077"), text("1000000")],
            vec![text("-1"), text("0")],
            vec![Value::Integer(-1), text("0")],
            vec![text("x"), text("0")],
            vec![text("18446744073709551615"), text("999999")],
            vec![text("1"), text("2"), text("3")],
        ] {
            assert_eq!(reply(odd.clone()), None, "{odd:?}");
        }
        assert_eq!(time_reply(text("1796339077")), None);
    }

    #[test]
    fn error_replies_are_refusals_and_lost_connections_are_not() {
        use fred::error::{Error, ErrorKind};
        for (kind, details) in [
            (
                ErrorKind::Unknown,
                "OOM command not allowed when used memory > 'maxmemory'.",
            ),
            (
                ErrorKind::Unknown,
                "READONLY You can't write against a read only replica.",
            ),
            (ErrorKind::Unknown, "ERR max number of clients reached"),
            (
                ErrorKind::Unknown,
                "NOPERM this user has no permissions to run the 'evalsha' command",
            ),
            (
                ErrorKind::InvalidArgument,
                "WRONGTYPE Operation against a key holding the wrong kind of value",
            ),
        ] {
            assert!(is_refusal(&Error::new(kind.clone(), details)), "{details}");
            assert!(matches!(
                backend(Error::new(kind, details)),
                StoreError::Refused(_)
            ));
        }
        for details in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
        ] {
            assert!(
                is_unready_reply(&Error::new(ErrorKind::Unknown, details)),
                "{details}"
            );
        }
        for details in [
            "NOPERM this user has no permissions to run the 'client|tracking' command",
            "ERR unknown command 'CLIENT', with args beginning with: 'TRACKING'",
            "BUSYKEY Target key name already exists.",
            "",
        ] {
            assert!(
                !is_unready_reply(&Error::new(ErrorKind::Unknown, details)),
                "{details}"
            );
        }
        assert!(is_demoted(&backend(Error::new(
            ErrorKind::Unknown,
            "READONLY You can't write against a read only replica."
        ))));
        for error in [
            backend(Error::new(
                ErrorKind::Unknown,
                "OOM command not allowed when used memory > 'maxmemory'.",
            )),
            backend(Error::new(ErrorKind::IO, "READONLY")),
            StoreError::Timeout,
        ] {
            assert!(!is_demoted(&error), "{error:?}");
        }
        for (kind, details) in [
            (ErrorKind::IO, "ECONNRESET"),
            (ErrorKind::Canceled, "Canceled."),
            (ErrorKind::Timeout, "Request timed out."),
            (ErrorKind::Cluster, "CLUSTERDOWN The cluster is down"),
            (ErrorKind::Auth, "NOAUTH Authentication required."),
            (ErrorKind::Unknown, "Connection closed abruptly."),
            (ErrorKind::Unknown, ""),
        ] {
            assert!(!is_refusal(&Error::new(kind.clone(), details)), "{details}");
            assert!(matches!(
                backend(Error::new(kind, details)),
                StoreError::Backend(_)
            ));
        }
    }

    /// Nagle's algorithm holds a command written while an earlier one is unacknowledged until the
    /// acknowledgement, which comes with the reply: up to a round trip more for every call that overlaps another.
    #[tokio::test]
    async fn the_stores_own_clients_send_each_command_at_once() {
        use fred::interfaces::ClientLike;
        for url in ["redis://127.0.0.1:1", "redis-cluster://127.0.0.1:1"] {
            let store = RedisStore::connect_lazy(url).unwrap();
            let settings = store.clients[0].connection_config().clone();
            assert_eq!(settings.tcp.nodelay, Some(true), "{url}");
            assert!(settings.tcp.keepalive.is_some(), "{url}");
            assert!(
                settings.internal_command_timeout <= settings.connection_timeout,
                "a handshake left unanswered is bounded as the connection is: {url}"
            );
            assert!(settings.reconnect_on_auth_error, "{url}");
        }
    }

    #[test]
    fn only_a_limit_under_an_allkeys_policy_may_evict_a_tag_set() {
        let info = |limit: &str, policy: &str| {
            format!(
                "# Memory\r\nused_memory:1000\r\nmaxmemory:{limit}\r\nmaxmemory_human:x\r\nmaxmemory_policy:{policy}\r\n"
            )
        };
        assert_eq!(
            evicts_any_key(&info("1000", "allkeys-lru")),
            Some("allkeys-lru")
        );
        assert_eq!(
            evicts_any_key(&info("1000", "allkeys-random")),
            Some("allkeys-random")
        );
        assert_eq!(evicts_any_key(&info("0", "allkeys-lru")), None, "no limit");
        for policy in ["volatile-lru", "volatile-ttl", "noeviction"] {
            assert_eq!(evicts_any_key(&info("1000", policy)), None);
        }
        assert_eq!(evicts_any_key("garbage"), None);
        assert_eq!(evicts_any_key("maxmemory:1000\r\n"), None, "no policy");
    }

    #[test]
    fn scan_patterns_escape_globs() {
        assert_eq!(glob_escape("ns:v1:"), "ns:v1:*");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
    }

    #[test]
    fn tls_urls_are_refused_without_tls_never_downgraded() {
        for url in [
            "rediss://:pw@cache.example:6380",
            "REDISS://cache.example",
            "rediss-cluster://cache.example:7000",
            "rediss-sentinel://cache.example:26379/0?sentinelServiceName=m",
            "valkeys://cache.example",
        ] {
            let error = refuse_tls_without_support(url, false).unwrap_err();
            assert_eq!(*error.kind(), fred::error::ErrorKind::Config, "{url}");
            assert!(error.details().contains("redis-tls"), "{error}");
            assert!(!error.details().contains("pw@"), "{error}");
            assert!(refuse_tls_without_support(url, true).is_ok(), "{url}");
        }
        for url in [
            "redis://cache.example",
            "redis-cluster://cache.example",
            "redis-sentinel://cache.example",
        ] {
            assert!(refuse_tls_without_support(url, false).is_ok(), "{url}");
        }
    }

    #[test]
    fn only_redis_url_schemes_are_read() {
        for url in [
            "redis://cache.example",
            "REDIS://cache.example:6379/2",
            "rediss://:pw@cache.example:6380",
            "redis-cluster://cache.example:7000",
            "rediss-sentinel://cache.example:26379/0?sentinelServiceName=m",
            "redis+unix:///run/redis.sock",
            "unix:///run/redis.sock?db=2",
            "valkeys-cluster://cache.example",
            "valkey+unix:///run/valkey.sock",
        ] {
            assert!(refuse_unknown_scheme(url).is_ok(), "{url}");
        }
        for (url, named) in [
            ("tls://:pw@cache.example:6380", Some("tls")),
            ("redis-tls://:pw@cache.example", Some("redis-tls")),
            ("redis-clustr://cache.example:7000", Some("redis-clustr")),
            ("https://cache.example", Some("https")),
            ("cache.example:6379", None),
            ("user:s3cret@cache.example://", None),
            ("", None),
        ] {
            let error = refuse_unknown_scheme(url).unwrap_err();
            assert_eq!(*error.kind(), fred::error::ErrorKind::Config, "{url}");
            let details = error.details();
            assert!(details.contains("redis-sentinel://"), "{details}");
            assert!(
                !details.contains("pw") && !details.contains("s3cret"),
                "{details}"
            );
            match named {
                Some(scheme) => {
                    assert!(details.starts_with(&format!("`{scheme}://`")), "{details}")
                }
                None => assert!(details.starts_with("no Redis URL scheme"), "{details}"),
            }
            assert!(parse_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn unix_socket_urls_keep_the_database_and_credentials_their_query_names() {
        let socket = |url: &str, database, username: Option<&str>, password: Option<&str>| Socket {
            url: url.to_owned(),
            database,
            username: username.map(str::to_owned),
            password: password.map(str::to_owned),
        };
        for (url, read) in [
            (
                "redis+unix:///run/redis.sock",
                socket("redis+unix:///run/redis.sock", None, None, None),
            ),
            (
                " UNIX:///run/redis.sock?db=3",
                socket("redis+unix:///run/redis.sock", Some(3), None, None),
            ),
            (
                "unix:///run/redis.sock?db=1&user=cache&pass=p%40ss%26",
                socket(
                    "redis+unix:///run/redis.sock",
                    Some(1),
                    Some("cache"),
                    Some("p@ss&"),
                ),
            ),
            (
                "redis+unix://cache:pw@localhost/run/redis.sock?db=2",
                socket(
                    "redis+unix://cache:pw@localhost/run/redis.sock",
                    Some(2),
                    None,
                    None,
                ),
            ),
            (
                "valkey+unix:///run/valkey.sock",
                socket("valkey+unix:///run/valkey.sock", None, None, None),
            ),
        ] {
            assert_eq!(unix_socket(url).unwrap().unwrap(), read, "{url}");
        }
        for (url, said) in [
            (
                "unix:///run/redis.sock?db=256",
                "`db=256` is no database number",
            ),
            ("unix:///run/redis.sock?db=", "`db=` is no database number"),
            (
                "unix:///run/redis.sock?database=2",
                "the query parameter `database`",
            ),
            (
                "unix://:pw@localhost/run/redis.sock?pass=other",
                "credentials both",
            ),
        ] {
            let error = unix_socket(url).unwrap().unwrap_err();
            assert_eq!(*error.kind(), fred::error::ErrorKind::Config, "{url}");
            assert!(error.details().contains(said), "{url}: {error}");
            assert!(
                !error.details().contains("pw") && !error.details().contains("other"),
                "{error}"
            );
        }
        for url in [
            "redis://cache.example",
            "rediss://x",
            "unixy:///x",
            "/run/redis.sock",
        ] {
            assert!(unix_socket(url).is_none(), "{url}");
        }
    }

    #[test]
    fn a_tls_url_is_parsed_in_its_plain_spelling_and_the_rest_kept() {
        for (url, plain) in [
            (
                "rediss://:pw@cache.example:6380/2",
                "redis://:pw@cache.example:6380/2",
            ),
            ("REDISS://cache.example", "redis://cache.example"),
            (
                " rediss-cluster://a:7000?node=b:7001",
                "redis-cluster://a:7000?node=b:7001",
            ),
            (
                "rediss-sentinel://s:26379/0?sentinelServiceName=m",
                "redis-sentinel://s:26379/0?sentinelServiceName=m",
            ),
            ("valkeys://cache.example", "valkey://cache.example"),
            (
                "valkeys-cluster://cache.example",
                "valkey-cluster://cache.example",
            ),
        ] {
            assert_eq!(without_tls(url).as_deref(), Some(plain), "{url}");
        }
        for url in [
            "redis://rediss",
            "redis-cluster://x",
            "valkey://x",
            "cache.example:6379",
            "",
        ] {
            assert_eq!(without_tls(url), None, "{url}");
        }
    }
}
