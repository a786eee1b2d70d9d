//! A Genesys Cloud client assembled from this crate's layers: Data Actions (list, list their categories, get,
//! with their contract and config when asked, execute, test, create, update, delete), page-number and cursor
//! pagination, and typed errors, over
//! `RedisCacheLayer -> RetryLayer -> AuthLayer -> per-attempt timeout -> hyper-util (rustls, HTTP/1.1 + HTTP/2)`.
//!
//! The cache sits outermost, so a hit costs no token and no network; its partition is the API base plus the
//! OAuth client id, so two clients (two orgs) sharing one Redis never share an entry. The API marks every
//! response `Cache-Control: no-cache, no-store, must-revalidate`, whatever it holds, so the client's cache
//! does not take its caching rules from the API: it keeps answers for the windows its builder sets
//! ([`fresh_for`](GenesysClientBuilder::fresh_for), per action, per listing); an action that changes
//! something runs on every call once named in [`uncached_action`](GenesysClientBuilder::uncached_action).
//! Retry sits outside auth, so each attempt carries the current token. Connections go through the HTTP proxy the
//! environment names (`HTTPS_PROXY`, as curl reads it) or [`proxy`](GenesysClientBuilder::proxy) sets, by `CONNECT`
//! tunnels. [`emulator`] (feature `emulator`) serves the same API locally.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "emulator")]
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_redis_cache::CacheOutcome;
//! use tower_redis_cache::genesys::{ActionQuery, GenesysClient};
//! use tower_redis_cache::genesys::emulator::{Emulator, Endpoint};
//!
//! // For the real API: `.region(Region::EuWest1)` and your OAuth client, `.store(RedisStore::connect(url).await?)`.
//! let emulator = Emulator::start().await?;
//! let client = GenesysClient::builder()
//!     .api_base(emulator.base_url())
//!     .login_base(emulator.base_url())
//!     .client_credentials(emulator.client_id(), emulator.client_secret())
//!     .build()?;
//!
//! let query = ActionQuery::new().name("order_lookup").page_size(25);
//! let actions = client.list_all_actions(&query).await?;
//! assert_eq!(actions.len(), 60);
//! assert_eq!(emulator.requests(Endpoint::ListActions), 3);
//!
//! // The same listing again: three cache hits, no API call.
//! let again = client.list_all_actions(&query).await?;
//! assert_eq!(again, actions);
//! assert_eq!(emulator.requests(Endpoint::ListActions), 3);
//!
//! // Execute is cached by its input, whatever the member order.
//! let id = &actions[0].id;
//! let first = client.execute_action(id, &serde_json::json!({"orderId": "A-1", "expand": true})).await?;
//! let second = client.execute_action(id, &serde_json::json!({"expand": true, "orderId": "A-1"})).await?;
//! assert!(matches!(first.cache, Some(CacheOutcome::Miss { .. })));
//! assert_eq!(second.cache, Some(CacheOutcome::Hit));
//! assert_eq!(first.value, second.value);
//! # Ok(()) }
//! # #[cfg(not(feature = "emulator"))] fn main() {}
//! ```
//!
//! # Which executions are cached
//!
//! A Data Action that looks something up is what the cache is for: the same input within its windows costs no
//! API call, and concurrent calls with it make one. A `secure` action's output (payment details, personal data
//! that Genesys keeps out of its own logs) does not belong in a shared store, so it is never cached unless chosen
//! ([`cache_secure_actions`](GenesysClientBuilder::cache_secure_actions), or windows named for it): the client
//! reads each action once (its `GET`, cached as any, or a listing) to learn whether it is. An action that
//! changes something (it creates a ticket, sends a message) must run on every call: name those, or make caching
//! opt-in:
//!
//! ```no_run
//! # fn demo() -> Result<(), tower_redis_cache::error::ConfigError> {
//! use std::time::Duration;
//! use tower_redis_cache::cache::Windows;
//! use tower_redis_cache::genesys::{GenesysClient, Region};
//!
//! // Every execution cached but those of the actions named here.
//! let client = GenesysClient::builder()
//!     .region(Region::EuWest1)
//!     .client_credentials("client-id", "client-secret")
//!     .uncached_action("custom_-_create-ticket")
//!     .build()?;
//!
//! // Only the lookups named here cached, each for its own windows.
//! let minute = Duration::from_secs(60);
//! let opt_in = GenesysClient::builder()
//!     .region(Region::EuWest1)
//!     .client_credentials("client-id", "client-secret")
//!     .cache_executions(false)
//!     .action_windows("custom_-_order-lookup", Windows::new(5 * minute, minute, 10 * minute))
//!     .build()?;
//! # let _ = (client, opt_in);
//! # Ok(()) }
//! ```
//!
//! One call can leave the cache out with [`GenesysClient::execute_action_uncached`], or bring windows of its own
//! with [`GenesysClient::execute_action_with`].
//!
//! # Errors
//!
//! Every call returns a [`GenesysError`]: the HTTP status with the Genesys `code`, `message` and correlation
//! id, or a transport, timeout, token, decoding or pagination failure, with the number of attempts made.

mod actions;
mod client;
#[cfg(feature = "emulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "emulator")))]
pub mod emulator;
mod error;
mod model;
mod paginate;
mod proxy;
mod region;

pub use self::actions::{ActionDetails, ActionQuery, CategoryQuery, SortOrder};
pub use self::client::{Fetched, GenesysBody, GenesysClient, GenesysClientBuilder, GenesysService};
pub use self::error::GenesysError;
pub use self::model::{
    Action, ActionCategory, ActionContract, ActionTest, ActionUpdate, ContractInput,
    ContractOutput, ErrorBody, NewAction, Page, TestStep,
};
pub use self::paginate::{CursorPage, CursorQuery, CursorStyle};
pub use self::region::{Region, UnknownRegion};
