//! A client of its own for each primary of a Redis Cluster, for the keys of the primaries that answer while
//! fred's cluster client cannot send.
//!
//! fred's cluster client connects all or nothing: when it loses a primary, it reads `CLUSTER SLOTS` again and
//! connects to every primary listed there, and until all of those connections are made it sends no command to any
//! node (those sent fail fast, as the store's are). A primary that is gone (killed, its host down, refusing
//! connections) is listed until a replica takes its slots over, which a Cluster does after `cluster-node-timeout`
//! (15 s by default), and never without a replica: for all that time, every key of every shard would go to the
//! origin, not only the lost shard's. So while that client is not connected, each command on one key goes to a
//! client of the primary that serves the key's slot in fred's last view of the Cluster (one that connects to that
//! node alone), made at the first such command. The lost primary's keys fail there as they would have, under that
//! node's circuit breaker; the others are served. Once fred's client is connected again, it sends everything again.
//!
//! A primary's client tries to connect every 100 ms, as the store's own clients do, and its connections count
//! among the store's (see `Connections`), so that a breaker opened meanwhile probes as soon as it has connected.
//! The primaries' clients quit once every cluster client of the store is connected again (and with the store), so
//! that none is left trying to reach an address the Cluster no longer uses.

use super::redis::{Connections, stop_in_background};
use fred::clients::{Client, WithOptions};
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::prelude::{Builder, Options, ReconnectPolicy};
use fred::types::config::{Server, ServerConfig};
use fred::types::{ClientState, ConnectHandle};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The clients of a Cluster's primaries, by address, made as they are needed, each with its connection task.
pub(crate) struct Shards {
    clients: Mutex<HashMap<Server, (WithOptions<Client>, ConnectHandle)>>,
    /// Whether `clients` holds any: read before taking the lock, on every command of a connected Cluster.
    any: AtomicBool,
    /// The store's count of connections made, which each client made here joins.
    connections: Arc<Connections>,
    /// What every client's commands are sent with (fail fast, as the store's).
    options: Options,
}

impl Shards {
    pub(crate) fn new(connections: Arc<Connections>, options: Options) -> Self {
        Shards {
            clients: Mutex::new(HashMap::new()),
            any: AtomicBool::new(false),
            connections,
            options,
        }
    }

    /// The client of the primary that serves `key`, when `cluster` (the cluster client of the store's `all`
    /// that would send the command) cannot send now; `None` when it can, or when no primary is known for the
    /// key's slot (no view of the Cluster yet), or outside a Tokio runtime (a client made here needs one for its
    /// connection task). When every one of `all` is connected, the primaries' clients quit.
    pub(crate) fn for_key<C: std::ops::Deref<Target = Client>>(
        &self,
        all: &[C],
        cluster: &Client,
        key: &[u8],
    ) -> Option<WithOptions<Client>> {
        if self.sends(all, cluster) {
            return None;
        }
        let slot = fred::util::redis_keyslot(key);
        let server = cluster.cached_cluster_state()?.get_server(slot)?.clone();
        self.client_of(cluster, server)
    }

    /// The client of the primary at `server`, when `cluster` cannot send now; as [`for_key`](Self::for_key).
    pub(crate) fn for_primary<C: std::ops::Deref<Target = Client>>(
        &self,
        all: &[C],
        cluster: &Client,
        server: &Server,
    ) -> Option<WithOptions<Client>> {
        if self.sends(all, cluster) {
            return None;
        }
        self.client_of(cluster, server.clone())
    }

    /// Whether `cluster` can send now; when it and every one of `all` can, the primaries' clients quit.
    fn sends<C: std::ops::Deref<Target = Client>>(&self, all: &[C], cluster: &Client) -> bool {
        if cluster.state() != ClientState::Connected {
            return false;
        }
        if self.any.load(Ordering::Relaxed)
            && all.iter().all(|c| c.state() == ClientState::Connected)
        {
            self.retire();
        }
        true
    }

    /// The client of the primary at `server`, made (and set connecting) if there is none yet.
    fn client_of(&self, cluster: &Client, server: Server) -> Option<WithOptions<Client>> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((client, _)) = clients.get(&server) {
            return Some(client.clone());
        }
        tokio::runtime::Handle::try_current().ok()?;
        let client = primary_client(cluster, server.clone())?;
        // Counted before it connects, so that its first connection lets an open breaker probe.
        self.connections.add(&client);
        tracing::debug!(
            server = %server,
            "cache store: the cluster client cannot send; reaching this primary on a connection of its own"
        );
        let task = client.connect();
        let client = client.with_options(&self.options);
        clients.insert(server, (client.clone(), task));
        self.any.store(true, Ordering::Relaxed);
        Some(client)
    }

    /// Stops every primary's client, and stops counting their connections.
    fn retire(&self) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        self.any.store(false, Ordering::Relaxed);
        if clients.is_empty() {
            return;
        }
        tracing::debug!(
            clients = clients.len(),
            "cache store: the cluster clients are connected again; the primaries' own clients quit"
        );
        for (_, (client, task)) in clients.drain() {
            self.connections.remove(&client);
            stop_in_background(Client::clone(&client), task);
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        let clients = self
            .clients
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, (client, task)) in clients.drain() {
            stop_in_background(Client::clone(&client), task);
        }
    }
}

/// A client of the one node at `server`, with `cluster`'s settings (credentials, TLS, timeouts, ...): trying
/// to connect every 100 ms from its first attempt on, for as long as it lives.
fn primary_client(cluster: &Client, server: Server) -> Option<Client> {
    let mut config = cluster.client_config();
    config.server = ServerConfig::Centralized { server };
    // Otherwise fred gives the client up at a first attempt that fails.
    config.fail_fast = false;
    Builder::from_config(config)
        .set_connection_config(cluster.connection_config().clone())
        .set_performance_config(cluster.perf_config())
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_with_no_view_of_a_cluster_gets_no_primary_of_its_own() {
        let shards = Shards::new(Arc::new(Connections::of(&[])), Options::default());
        // Never connected, with no view of a Cluster: no primary is known for any key, and none is made.
        let client = Builder::default_centralized()
            .build()
            .unwrap()
            .with_options(&Options::default());
        assert!(
            shards
                .for_key(std::slice::from_ref(&client), &client, b"k")
                .is_none()
        );
        assert!(shards.clients.lock().unwrap().is_empty());
    }
}
