//! Following a Sentinel failover as soon as Sentinel announces it.
//!
//! fred asks a sentinel where the primary is when it connects, and a connection already open stays where it
//! is. When the old primary dies, that is enough: its connections close. But when it lives on (a failover an
//! operator or an upgrade ordered, `SENTINEL FAILOVER`; a primary cut off from the sentinels but not from the
//! clients), Sentinel takes about ten seconds to make it a replica and close its clients' connections, and
//! longer when it cannot. Meanwhile a process that connects anew reaches the new primary and one already
//! connected stays on the old one: the processes of one fleet read and write different entries, a tag's
//! invalidation written to the old primary never reaches the new one, and a near cache tracking the old
//! primary never hears of writes to the new.
//!
//! So a store behind Sentinel keeps one connection to a sentinel of its own, subscribed to `+switch-master`
//! (Sentinel's announcement of a new primary), and asks it every [`CHECK_EVERY`] where the primary is (which
//! also proves the connection alive, and catches an announcement missed while no sentinel was listened to).
//! When the primary it is told of changes, every store client connected elsewhere connects again (fred asks
//! a sentinel where to), and the near cache's tracking, told through [`Following::primaries`], does the same;
//! and again at the next few checks for a client still elsewhere (the sentinel fred asked may not have heard
//! of the failover yet). Then no more: a sentinel with an older view (cut off from the others) cannot keep the
//! store reconnecting. When the sentinel stops answering, the next one known (those configured, and those the
//! sentinels name) is tried. A sentinel that refuses the subscription (a user without `+subscribe`) is asked
//! every second all the same: a failover is followed up to a second late.

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{Builder, Config, Value};
use fred::types::config::{Server, ServerConfig};
use fred::types::{CustomCommand, RespVersion};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

/// How often the sentinel is asked where the primary is.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long connecting to a sentinel, or one of its replies, may take before the next sentinel is tried.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between two sentinels tried in turn, and before starting again from the first.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// How many checks after a change of primary look again for clients connected elsewhere.
const FOLLOW_UPS: u32 = 5;
/// The longest pause between two rounds of sentinels that all failed.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// The channel on which Sentinel announces a new primary.
const SWITCH_MASTER: &str = "+switch-master";

/// Where a primary listens, as a sentinel names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Primary {
    host: String,
    port: u16,
}

impl Primary {
    /// Whether `client` is connected to somewhere other than this primary (a client that is not connected at the
    /// moment asks a sentinel when it connects, so it is not).
    pub(crate) fn strays(&self, client: &Client) -> bool {
        let connected = client.active_connections();
        !connected.is_empty()
            && !connected
                .iter()
                .any(|server| *server.host == *self.host && server.port == self.port)
    }
}

/// A store's watch of its sentinels, kept while the store is: dropping the last clone of the store ends it.
pub(crate) struct Following {
    primary: watch::Receiver<Option<Primary>>,
    _alive: Arc<()>,
}

impl Following {
    /// The primary as the sentinels last named it (`None` until one did), changing with each failover.
    pub(crate) fn primaries(&self) -> watch::Receiver<Option<Primary>> {
        self.primary.clone()
    }
}

/// Starts following the sentinels of `clients`' configuration, if it is a Sentinel one and a Tokio runtime is
/// there to run the watch.
pub(crate) fn follow(clients: &[Client]) -> Option<Following> {
    let config = clients.first()?.client_config();
    let ServerConfig::Sentinel {
        hosts,
        service_name,
        ..
    } = &config.server
    else {
        return None;
    };
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (tell, primary) = watch::channel(None);
    let alive = Arc::new(());
    let watch = Watch {
        service: service_name.clone(),
        sentinels: hosts.clone(),
        config: sentinel_config(&config),
        store: clients.to_vec(),
        tell,
        follow_ups: 0,
        told_unsubscribed: false,
        alive: Arc::downgrade(&alive),
    };
    runtime.spawn(watch.run());
    Some(Following {
        primary,
        _alive: alive,
    })
}

/// Asks a sentinel where `service`'s primary is, within [`SENTINEL_TIMEOUT`].
async fn ask(client: &Client, service: &str) -> fred::prelude::FredResult<Value> {
    in_time(client.custom(
        CustomCommand::new_static("SENTINEL", None, false),
        vec!["GET-MASTER-ADDR-BY-NAME", service],
    ))
    .await
}

/// The configuration of a connection to one sentinel: the store's credentials and TLS settings, as fred uses
/// them for its own sentinel connections, in RESP3, where a subscribed connection may still send commands. A
/// sentinel has no databases to select.
fn sentinel_config(store: &Config) -> Config {
    let mut config = store.clone();
    config.database = None;
    config.version = RespVersion::RESP3;
    config.fail_fast = true;
    config
}

struct Watch {
    service: String,
    /// The sentinels known: those configured, then those they named.
    sentinels: Vec<Server>,
    config: Config,
    store: Vec<Client>,
    tell: watch::Sender<Option<Primary>>,
    /// How many more checks follow up the last change of primary.
    follow_ups: u32,
    /// Whether a sentinel's refusal to announce new primaries was told at `warn` (once: the user is the same
    /// on every sentinel).
    told_unsubscribed: bool,
    alive: Weak<()>,
}

impl Watch {
    async fn run(mut self) {
        let (mut next, mut rounds) = (0, 0);
        // Whether a refusal was told at `warn`: once, until a sentinel is listened to again.
        let mut told = false;
        while self.alive.strong_count() > 0 && !self.sentinels.is_empty() {
            let sentinel = self.sentinels[next % self.sentinels.len()].clone();
            next += 1;
            let (listened, ended) = self.listen(sentinel.clone()).await;
            if listened {
                (rounds, told) = (0, false);
            }
            match ended {
                Ok(()) => {}
                Err(error)
                    if super::redis::is_refusal(&error) && !std::mem::replace(&mut told, true) =>
                {
                    tracing::warn!(
                        %error,
                        %sentinel,
                        "cache store: a sentinel refused to say where the primary is (the user needs \
                         `+sentinel|get-master-addr-by-name` there); a failover that leaves the old primary \
                         running is followed only once Sentinel demotes it"
                    );
                }
                Err(error) => {
                    tracing::debug!(%error, %sentinel, "cache store: sentinel not answering; trying the next");
                }
            }
            // Each sentinel in turn, then a longer pause after every round in which none could be listened to.
            let pause = if next % self.sentinels.len() == 0 {
                rounds += 1;
                RETRY_AFTER
                    .saturating_mul(1 << rounds.min(6))
                    .min(MAX_PAUSE)
            } else {
                RETRY_AFTER
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Listens to one sentinel until it stops answering (an error) or the store is gone (`Ok`); and whether it
    /// was listened to (asked, subscribed or not).
    async fn listen(&mut self, sentinel: Server) -> (bool, fred::prelude::FredResult<()>) {
        let mut config = self.config.clone();
        config.server = ServerConfig::Centralized { server: sentinel };
        let mut refused = None;
        loop {
            // No reconnection policy: when the connection ends, the next sentinel is tried.
            let client = match Builder::from_config(config.clone())
                .with_connection_config(super::redis::connection_config)
                .build()
            {
                Ok(client) => client,
                Err(error) => return (false, Err(error)),
            };
            let mut task = client.connect();
            let mut listened = false;
            let result = self
                .watch(&client, &mut task, &mut listened, refused.as_ref())
                .await;
            super::redis::stop(client, task).await;
            match result {
                // The refusal of `SUBSCRIBE` or of the question: asked again without subscribing, on a connection
                // of its own (the refused one may still hold the question's late answer). If the question then
                // answers, the subscription was what was refused.
                Err(error)
                    if refused.is_none() && !listened && super::redis::is_refusal(&error) =>
                {
                    refused = Some(error);
                }
                ended => return (listened, ended),
            }
        }
    }

    /// Listens on `client`: subscribed unless the subscription was `refused`, asking every [`CHECK_EVERY`].
    async fn watch(
        &mut self,
        client: &Client,
        task: &mut fred::types::ConnectHandle,
        listened: &mut bool,
        refused: Option<&fred::error::Error>,
    ) -> fred::prelude::FredResult<()> {
        let mut messages = client.message_rx();
        // fred takes `SUBSCRIBE` for answered once written (its replies come out of band), so a refusal (`NOPERM`
        // for the command or the channel) is the reply of the command written next, and is dropped if none is
        // waiting yet. So the questions go out with the subscription, before any reply is read: a refusal is the
        // first one's answer. Where the primary is also catches an announcement made while no sentinel was
        // listened to; which other sentinels there are is learned in this first round trip, so that a sentinel
        // that dies right after it still leaves a way to the others.
        let (asked, named) = tokio::select! {
            answers = in_time(async {
                client.wait_for_connect().await?;
                if refused.is_some() {
                    let (asked, named) = (ask(client, &self.service), sentinels_of(client, &self.service));
                    return Ok(tokio::join!(biased; asked, named));
                }
                let (subscribed, asked, named) = tokio::join!(
                    biased;
                    client.subscribe(SWITCH_MASTER),
                    ask(client, &self.service),
                    sentinels_of(client, &self.service),
                );
                subscribed.map(|()| (asked, named))
            }) => answers?,
            // Refused, or reset: the next sentinel at once, not after the timeout.
            ended = &mut *task => return Err(connection_ended(ended)),
        };
        // After a refused `SUBSCRIBE` the replies come one place late: this one is where the primary is, which
        // names no sentinel.
        for sentinel in named.unwrap_or_default() {
            if !self.sentinels.contains(&sentinel) {
                self.sentinels.push(sentinel);
            }
        }
        self.follow(asked?).await?;
        if let Some(error) = refused {
            // The sentinel is asked every second instead, and a failover followed up to a second late.
            if !std::mem::replace(&mut self.told_unsubscribed, true) {
                tracing::warn!(
                    %error,
                    "cache store: a sentinel refused to announce new primaries (the user needs `+subscribe \
                     &+switch-master` there); a failover is followed by asking it every second instead"
                );
            }
        }
        *listened = true;
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        loop {
            tokio::select! {
                message = messages.recv() => match message {
                    Ok(message) if message.channel == SWITCH_MASTER => {
                        if let Some(primary) = switched_to(&message.value, &self.service) {
                            self.moved(primary).await;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => self.check(client).await?,
                    Err(RecvError::Closed) => return Ok(()),
                },
                _ = check.tick() => {
                    if self.alive.strong_count() == 0 {
                        return Ok(());
                    }
                    self.check(client).await?;
                }
                ended = &mut *task => return Err(connection_ended(ended)),
            }
        }
    }

    /// Asks the sentinel where the primary is, and follows it if that changed.
    async fn check(&mut self, client: &Client) -> fred::prelude::FredResult<()> {
        let reply = ask(client, &self.service).await?;
        self.follow(reply).await
    }

    /// Follows the primary a sentinel's `reply` to [`ask`] names, if that changed.
    async fn follow(&mut self, reply: Value) -> fred::prelude::FredResult<()> {
        match primary_of(reply) {
            Some(primary) => {
                self.moved(primary).await;
                Ok(())
            }
            // A sentinel that does not know the service (yet) says nothing about where the primary is.
            None => Err(fred::error::Error::new(
                fred::error::ErrorKind::Sentinel,
                "the sentinel does not name the service's primary",
            )),
        }
    }

    /// The sentinels named `primary`: if that is news, every store client connected elsewhere connects again,
    /// and the near cache's tracking is told; and so again at each of the next [`FOLLOW_UPS`] checks, for a client
    /// still elsewhere. A client reconnecting asks the first sentinel it reaches, which may not have heard of the
    /// failover yet (sentinels learn of one from each other every 2 s) and send it back to the old primary.
    async fn moved(&mut self, primary: Primary) {
        if self.tell.borrow().as_ref() == Some(&primary) {
            if self.follow_ups == 0 {
                return;
            }
            self.follow_ups -= 1;
        } else {
            self.follow_ups = FOLLOW_UPS;
        }
        let strays: Vec<_> = self
            .store
            .iter()
            .filter(|client| primary.strays(client))
            .collect();
        if !strays.is_empty() {
            tracing::info!(
                host = %primary.host,
                port = primary.port,
                "cache store: Sentinel named a new primary; connecting there"
            );
        }
        // Told every time, so that tracking checks where it is connected too.
        self.tell.send_replace(Some(primary));
        futures_util::future::join_all(strays.into_iter().map(|client| async move {
            // Not a client without a reconnect policy, which fred would end (`RedisStore::new` warned of it).
            if let Err(error) = in_time(super::redis::reconnect(client)).await {
                tracing::debug!(%error, "cache store: reconnecting to the new primary failed");
            }
        }))
        .await;
    }
}

/// Why the connection task of a sentinel connection ended.
fn connection_ended(
    ended: Result<fred::prelude::FredResult<()>, tokio::task::JoinError>,
) -> fred::error::Error {
    match ended {
        Ok(Err(error)) => error,
        _ => fred::error::Error::new(fred::error::ErrorKind::IO, "the sentinel connection ended"),
    }
}

/// `future`, failing after [`SENTINEL_TIMEOUT`].
async fn in_time<T>(
    future: impl Future<Output = fred::prelude::FredResult<T>>,
) -> fred::prelude::FredResult<T> {
    tokio::time::timeout(SENTINEL_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| {
            Err(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                "the sentinel did not answer in time",
            ))
        })
}

/// The other sentinels monitoring `service`, as `SENTINEL SENTINELS` lists them.
async fn sentinels_of(client: &Client, service: &str) -> fred::prelude::FredResult<Vec<Server>> {
    let reply: Value = client
        .custom(
            CustomCommand::new_static("SENTINEL", None, false),
            vec!["SENTINELS", service],
        )
        .await?;
    let Value::Array(sentinels) = reply else {
        return Ok(Vec::new());
    };
    Ok(sentinels
        .into_iter()
        .filter_map(|sentinel| {
            let fields = match sentinel {
                Value::Map(map) => map
                    .inner()
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v)))
                    .collect::<Vec<_>>(),
                Value::Array(flat) => flat
                    .chunks(2)
                    .filter_map(|pair| match pair {
                        [k, v] => Some((k.as_string()?, v.clone())),
                        _ => None,
                    })
                    .collect(),
                _ => return None,
            };
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| v.as_string())
            };
            let host = field("ip")?;
            let port = field("port")?.parse().ok()?;
            Some(Server::new(host, port))
        })
        .collect())
}

/// The primary in a `SENTINEL GET-MASTER-ADDR-BY-NAME` reply (`[host, port]`, or null for an unknown
/// service).
fn primary_of(reply: Value) -> Option<Primary> {
    let Value::Array(fields) = reply else {
        return None;
    };
    match fields.as_slice() {
        [host, port] => Some(Primary {
            host: host.as_string()?,
            port: port.as_string()?.parse().ok()?,
        }),
        _ => None,
    }
}

/// The new primary of `service` in a `+switch-master` message (`<service> <old host> <old port> <new host> <new
/// port>`); `None` for another service's, or a message that does not read.
fn switched_to(message: &Value, service: &str) -> Option<Primary> {
    let text = message.as_str()?;
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        [name, _, _, host, port] if *name == service => Some(Primary {
            host: (*host).to_owned(),
            port: port.parse().ok()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_names_the_new_primary_of_its_service_only() {
        let message = Value::from("cache 10.0.0.1 6379 10.0.0.2 6380");
        assert_eq!(
            switched_to(&message, "cache"),
            Some(Primary {
                host: "10.0.0.2".into(),
                port: 6380
            })
        );
        assert_eq!(switched_to(&message, "other"), None);
        assert_eq!(switched_to(&message, "cach"), None);
        for garbled in [
            "cache 10.0.0.1 6379 10.0.0.2",
            "cache 10.0.0.1 6379 10.0.0.2 port",
            "cache 10.0.0.1 6379 10.0.0.2 70000",
            "",
        ] {
            assert_eq!(
                switched_to(&Value::from(garbled), "cache"),
                None,
                "{garbled}"
            );
        }
        assert_eq!(switched_to(&Value::Integer(1), "cache"), None);
    }

    #[test]
    fn a_primary_address_reads_from_its_reply() {
        let reply = Value::Array(vec![Value::from("10.0.0.2"), Value::from("6380")]);
        assert_eq!(
            primary_of(reply),
            Some(Primary {
                host: "10.0.0.2".into(),
                port: 6380
            })
        );
        assert_eq!(primary_of(Value::Null), None);
        assert_eq!(
            primary_of(Value::Array(vec![Value::from("10.0.0.2")])),
            None
        );
        assert_eq!(
            primary_of(Value::Array(vec![Value::from("h"), Value::from("x")])),
            None
        );
    }
}
