//! The Genesys Cloud JSON shapes the client reads: Data Actions, page envelopes, error bodies.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A Data Action (`GET /api/v2/integrations/actions/{id}`). Fields the client does not name are kept in
/// [`other`](Self::other), so nothing the API sends is lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Action {
    /// The action id.
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its category (usually the integration's name).
    #[serde(default)]
    pub category: Option<String>,
    /// The integration it belongs to.
    #[serde(default)]
    pub integration_id: Option<String>,
    /// Whether its inputs and outputs are secure (not logged by Genesys).
    #[serde(default)]
    pub secure: Option<bool>,
    /// Its version.
    #[serde(default)]
    pub version: Option<i64>,
    /// Its URI.
    #[serde(default)]
    pub self_uri: Option<String>,
    /// Every other field (`contract`, `config`, ...).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A change to a Data Action, for [`GenesysClient::update_action`](super::GenesysClient::update_action)
/// (`PATCH /api/v2/integrations/actions/{id}`): the action's current `version` (the API refuses a stale one
/// with `409`, [`GenesysError::is_conflict`](super::GenesysError::is_conflict)) and the fields to change.
///
/// ```
/// use tower_redis_cache::genesys::ActionUpdate;
///
/// let update = ActionUpdate::new(3).name("order_lookup_v2").category("Orders");
/// assert_eq!(
///     serde_json::to_value(&update).unwrap(),
///     serde_json::json!({"version": 3, "name": "order_lookup_v2", "category": "Orders"})
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionUpdate {
    version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<Value>,
}

impl ActionUpdate {
    /// A change to the action at `version` (its [`Action::version`]), changing nothing yet.
    pub fn new(version: i64) -> Self {
        ActionUpdate {
            version,
            name: None,
            category: None,
            config: None,
        }
    }

    /// Renames the action.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Moves it to another category.
    #[must_use]
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    /// Replaces its `config` (the request and response templates).
    #[must_use]
    pub fn config(mut self, config: Value) -> Self {
        self.config = Some(config);
        self
    }
}

/// A page of a page-number listing: `{entities, pageSize, pageNumber, total, pageCount, firstUri, nextUri,
/// previousUri, lastUri, selfUri}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Page<T> {
    /// The items on this page.
    #[serde(default = "Vec::new")]
    pub entities: Vec<T>,
    /// Items per page.
    #[serde(default)]
    pub page_size: Option<u32>,
    /// This page's number, from 1.
    #[serde(default)]
    pub page_number: Option<u32>,
    /// Items in all pages.
    #[serde(default)]
    pub total: Option<u64>,
    /// Number of pages.
    #[serde(default)]
    pub page_count: Option<u32>,
    /// URI of the first page.
    #[serde(default)]
    pub first_uri: Option<String>,
    /// URI of the next page (absent on the last).
    #[serde(default)]
    pub next_uri: Option<String>,
    /// URI of the previous page.
    #[serde(default)]
    pub previous_uri: Option<String>,
    /// URI of the last page.
    #[serde(default)]
    pub last_uri: Option<String>,
    /// URI of this page.
    #[serde(default)]
    pub self_uri: Option<String>,
}

/// A Genesys Cloud error body: `{message, code, status, contextId, details, errors}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default)]
    pub(crate) code: Option<String>,
    #[serde(default)]
    pub(crate) context_id: Option<String>,
}
