//! A local emulator of the Genesys Cloud API parts the client uses: a real HTTP/1.1 server on `127.0.0.1`,
//! for tests, examples, benchmarks, and trying the crate without an org.
//!
//! It serves `POST /oauth/token` (client-credentials, Basic auth checked, OAuth error bodies),
//! `GET /api/v2/integrations/actions` (the real query parameters and page envelope),
//! `GET .../actions/categories` (the categories its actions are in, paged alike), `GET .../actions/{id}`
//! (its `contract` with `expand=contract`, its `config` with `includeConfig=true`, as the API does),
//! `POST .../actions` (a new action, version 1, with an id of its own; a `400` without a name, category,
//! integration id, config or contract),
//! `POST .../actions/{id}/execute` (with a configurable latency: the expensive call; its output names the
//! action's version; an input missing a member the contract's input schema lists in `required` is a `400`),
//! `POST .../actions/{id}/test` (the same run, answered step by step: where it failed, or every step and the
//! output; the steps are the emulator's own, where the real API names those of the action's kind),
//! `PATCH .../actions/{id}` (the action's `version` required: `409 conflict` when it is not the current one), `DELETE .../actions/{id}` (`204`), and the cursor listing
//! `POST /api/v2/taskmanagement/workitems/query`. API calls need a bearer token it issued (else `401
//! bad.credentials`), are rate limited per token (default 300 a minute, answered with the real `429` body and
//! `Retry-After`), and every response carries `ININ-Correlation-Id` and, as the real API's do, `Cache-Control:
//! no-cache, no-store, must-revalidate` (with `Pragma: no-cache`, `Expires: 0`). Switches inject faults,
//! change the token lifetime, reject the next token, and make pages repeat; counters tell how many requests
//! each endpoint served.
//!
//! # Example
//!
//! ```
//! use tower_redis_cache::genesys::GenesysClient;
//! use tower_redis_cache::genesys::emulator::{Emulator, Endpoint};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let emulator = Emulator::start().await?;
//! let client = GenesysClient::builder()
//!     .api_base(emulator.base_url())
//!     .login_base(emulator.base_url())
//!     .client_credentials(emulator.client_id(), emulator.client_secret())
//!     .build()?;
//! let action = client.get_action(&emulator.action_ids()[0]).await?;
//! assert_eq!(action.name, "customer_profile_01"); // the first by name
//! assert_eq!(emulator.requests(Endpoint::Token), 1);
//! # Ok(()) }
//! ```

mod routes;
mod state;

pub use self::state::{Endpoint, Fault};

use self::state::{Counters, Data, default_actions, default_workitems};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running emulator; the server stops when this is dropped.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    /// Dropped with the emulator, which ends every open connection.
    _shutdown: watch::Sender<()>,
}

pub(crate) struct Shared {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    /// Further OAuth clients it accepts (other tenants of the same API).
    pub(crate) other_clients: Vec<(String, String)>,
    pub(crate) data: Mutex<Data>,
    pub(crate) counters: Counters,
}

impl Shared {
    pub(crate) fn data(&self) -> MutexGuard<'_, Data> {
        self.data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Emulator {
    /// Starts an emulator with every default on a free port.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start() -> std::io::Result<Emulator> {
        Emulator::builder().start().await
    }

    /// Starts a builder.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder {
            client_id: "emulator-client".into(),
            client_secret: "emulator-secret".into(),
            other_clients: Vec::new(),
            actions: None,
            execute_latency: Duration::from_millis(150),
            rate_limit: 300,
            token_lifetime: Duration::from_secs(86_399),
        }
    }

    /// `http://127.0.0.1:{port}`: both the API base and the login base.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client id it accepts.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The client secret it accepts.
    pub fn client_secret(&self) -> &str {
        &self.shared.client_secret
    }

    /// The ids of its actions, in listing order (by name).
    pub fn action_ids(&self) -> Vec<String> {
        let mut actions: Vec<(String, String)> = self
            .shared
            .data()
            .actions
            .iter()
            .map(|a| (text(a, "name"), text(a, "id")))
            .collect();
        actions.sort();
        actions.into_iter().map(|(_, id)| id).collect()
    }

    /// Requests served by `endpoint` so far (faults and rejections included).
    pub fn requests(&self, endpoint: Endpoint) -> u64 {
        self.shared.counters.get(endpoint)
    }

    /// Requests served by every endpoint, keyed by endpoint.
    pub fn request_counts(&self) -> HashMap<Endpoint, u64> {
        Endpoint::ALL
            .into_iter()
            .map(|e| (e, self.shared.counters.get(e)))
            .collect()
    }

    /// Queues a fault.
    pub fn inject(&self, fault: Fault) {
        self.shared.data().faults.push(fault);
    }

    /// Removes every queued fault.
    pub fn clear_faults(&self) {
        self.shared.data().faults.clear();
    }

    /// The `expires_in` of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.data().token_lifetime = lifetime;
    }

    /// The next API request is answered `401 bad.credentials` and its token revoked, as when an admin
    /// rotates the client's credentials.
    pub fn reject_next_token(&self) {
        self.shared.data().reject_next_token = true;
    }

    /// Makes the listings misbehave: page-number listings ignore `pageNumber` and always answer page 1, and
    /// cursor listings hand out the same cursor again.
    pub fn set_repeat_pages(&self, repeat: bool) {
        self.shared.data().repeat_pages = repeat;
    }

    /// The time `execute` takes.
    pub fn set_execute_latency(&self, latency: Duration) {
        self.shared.data().execute_latency = latency;
    }
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("client_id", &self.shared.client_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Builds an [`Emulator`]; every setter states its default.
#[must_use]
#[derive(Debug)]
pub struct EmulatorBuilder {
    client_id: String,
    client_secret: String,
    other_clients: Vec<(String, String)>,
    actions: Option<Vec<Value>>,
    execute_latency: Duration,
    rate_limit: u32,
    token_lifetime: Duration,
}

impl EmulatorBuilder {
    /// The client it accepts. Default: `emulator-client` / `emulator-secret`.
    pub fn client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.client_id = id.into();
        self.client_secret = secret.into();
        self
    }

    /// Also accepts this client, as a second org's client against the same API would be.
    pub fn also_client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.other_clients.push((id.into(), secret.into()));
        self
    }

    /// Its actions, as Data Action JSON objects (each needs `id` and `name`). Default: 60 `order_lookup_NN`,
    /// 15 `customer_profile_NN` and 5 `ticket_create_NN`.
    pub fn actions(mut self, actions: Vec<Value>) -> Self {
        self.actions = Some(actions);
        self
    }

    /// The time `execute` takes. Default: 150 ms.
    pub fn execute_latency(mut self, latency: Duration) -> Self {
        self.execute_latency = latency;
        self
    }

    /// API requests allowed per token per minute. Default: 300, as Genesys Cloud.
    pub fn rate_limit(mut self, per_minute: u32) -> Self {
        self.rate_limit = per_minute;
        self
    }

    /// The `expires_in` of issued tokens. Default: 86399 s, as Genesys Cloud.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Binds `127.0.0.1:0` and serves in the background (a Tokio task).
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start(self) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            client_id: self.client_id,
            client_secret: self.client_secret,
            other_clients: self.other_clients,
            data: Mutex::new(Data {
                actions: self.actions.unwrap_or_else(default_actions),
                workitems: default_workitems(),
                tokens: HashMap::new(),
                faults: Vec::new(),
                token_lifetime: self.token_lifetime,
                reject_next_token: false,
                repeat_pages: false,
                execute_latency: self.execute_latency,
                rate_limit: self.rate_limit,
                issued: 0,
            }),
            counters: Counters::default(),
        });
        let (shutdown, closed) = watch::channel(());
        let task = tokio::spawn(serve(listener, shared.clone(), closed));
        Ok(Emulator {
            addr,
            shared,
            task,
            _shutdown: shutdown,
        })
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, closed: watch::Receiver<()>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let mut closed = closed.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(routes::handle(&shared, request).await) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let shutdown = closed.changed();
            futures_util::future::select(std::pin::pin!(connection), std::pin::pin!(shutdown))
                .await;
        });
    }
}

fn text(value: &Value, field: &str) -> String {
    value
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}
