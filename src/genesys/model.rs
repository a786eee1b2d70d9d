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
    /// What it promises, its input and output schemas: present when asked for
    /// ([`ActionDetails::contract`](super::ActionDetails::contract), `expand=contract`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<ActionContract>,
    /// Its request and response templates (`{request, response}`), what [`ActionUpdate::config`] replaces:
    /// present when asked for ([`ActionDetails::config`](super::ActionDetails::config), `includeConfig=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// Every other field.
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

/// A new Data Action, for [`GenesysClient::create_action`](super::GenesysClient::create_action)
/// (`POST /api/v2/integrations/actions`): the integration it belongs to, its name and category, and what the API
/// requires besides: its [`contract`](Self::contract) and its [`config`](Self::config) (the request and response
/// templates). The API refuses one without them: a [`GenesysError`](super::GenesysError) with status `400` and
/// code `bad.request`.
///
/// ```
/// use serde_json::json;
/// use tower_redis_cache::genesys::{ActionContract, NewAction};
///
/// let input = json!({"type": "object", "required": ["orderId"], "properties": {"orderId": {"type": "string"}}});
/// let output = json!({"type": "object", "properties": {"status": {"type": "string"}}});
/// let new = NewAction::new("integration-id", "order_status", "Orders")
///     .contract(ActionContract::new(input, output))
///     .config(json!({
///         "request": {"requestUrlTemplate": "https://orders.example/${input.orderId}", "requestType": "GET"},
///         "response": {"translationMap": {}, "successTemplate": "${rawResult}"}
///     }));
/// let body = serde_json::to_value(&new)?;
/// assert_eq!(body["integrationId"], "integration-id");
/// assert_eq!(body["contract"]["input"]["inputSchema"]["required"], json!(["orderId"]));
/// assert!(body.get("secure").is_none());
/// # Ok::<_, serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewAction {
    integration_id: String,
    name: String,
    category: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    contract: Option<ActionContract>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secure: Option<bool>,
}

impl NewAction {
    /// An action of the integration `integration_id`, named `name`, in `category` (usually the integration's
    /// name), without its contract and config yet.
    pub fn new(
        integration_id: impl Into<String>,
        name: impl Into<String>,
        category: impl Into<String>,
    ) -> Self {
        NewAction {
            integration_id: integration_id.into(),
            name: name.into(),
            category: category.into(),
            contract: None,
            config: None,
            secure: None,
        }
    }

    /// Its contract: the JSON Schemas of its input and of its output.
    #[must_use]
    pub fn contract(mut self, contract: ActionContract) -> Self {
        self.contract = Some(contract);
        self
    }

    /// Its config: `{request, response}`, the templates that make its HTTP request and read the answer.
    #[must_use]
    pub fn config(mut self, config: Value) -> Self {
        self.config = Some(config);
        self
    }

    /// Whether its input and output are secure: kept out of Genesys's logs, and out of this client's cache
    /// unless chosen ([`cache_secure_actions`](super::GenesysClientBuilder::cache_secure_actions)). The API's
    /// default is not.
    #[must_use]
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = Some(secure);
        self
    }
}

/// A category of Data Actions (`GET /api/v2/integrations/actions/categories`), read with
/// [`GenesysClient::list_categories`](super::GenesysClient::list_categories).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ActionCategory {
    /// Its name, what [`Action::category`] holds.
    #[serde(default)]
    pub name: String,
    /// Every other field.
    #[serde(flatten)]
    pub other: Map<String, Value>,
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

/// A Genesys Cloud error body, `{message, code, status, contextId, details, errors}`: what a failing call answers,
/// and what a step of an [`ActionTest`] reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ErrorBody {
    /// What went wrong, for a person.
    #[serde(default)]
    pub message: Option<String>,
    /// The error's code (`bad.request`, `not.found`, ...).
    #[serde(default)]
    pub code: Option<String>,
    /// The HTTP status it stands for.
    #[serde(default, deserialize_with = "lenient_status")]
    pub status: Option<u16>,
    /// The correlation id of the call, for Genesys support.
    #[serde(default)]
    pub context_id: Option<String>,
    /// Every other field (`details`, `errors`, `messageParams`, ...).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A status read as a number if it is one: an error body is read for its message, which a status of another
/// shape must not cost.
fn lenient_status<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u16>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    Ok(value.as_u64().and_then(|n| u16::try_from(n).ok()))
}

/// What a Data Action promises ([`Action::contract`]): the JSON Schema its input must satisfy and the one its
/// output follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActionContract {
    /// `input`: `{inputSchema}`.
    #[serde(default)]
    pub input: ContractInput,
    /// `output`: `{successSchema}`.
    #[serde(default)]
    pub output: ContractOutput,
}

impl ActionContract {
    /// A contract whose input must satisfy the JSON Schema `input_schema` and whose output follows
    /// `success_schema`, for [`NewAction::contract`].
    pub fn new(input_schema: Value, success_schema: Value) -> Self {
        ActionContract {
            input: ContractInput {
                input_schema,
                other: Map::new(),
            },
            output: ContractOutput {
                success_schema,
                other: Map::new(),
            },
        }
    }
}

/// The input half of an [`ActionContract`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ContractInput {
    /// The JSON Schema an input must satisfy (`Value::Null` if the API sent none).
    #[serde(default)]
    pub input_schema: Value,
    /// Every other field.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The output half of an [`ActionContract`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ContractOutput {
    /// The JSON Schema of a successful output (`Value::Null` if the API sent none).
    #[serde(default)]
    pub success_schema: Value,
    /// Every other field.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A Data Action's test run (`POST /api/v2/integrations/actions/{id}/test`, read with
/// [`GenesysClient::test_action`](super::GenesysClient::test_action)): each step the action went through with
/// what it produced, and where it failed.
///
/// ```
/// use tower_redis_cache::genesys::ActionTest;
///
/// let test: ActionTest = serde_json::from_value(serde_json::json!({
///     "operations": [{"step": 1, "name": "Resolve request URL template", "success": false,
///                     "error": {"message": "orderId is missing", "code": "bad.request", "status": 400}}],
///     "error": {"message": "orderId is missing", "code": "bad.request", "status": 400},
///     "success": false
/// }))?;
/// assert!(!test.success);
/// let failed = test.failed_step().unwrap();
/// assert_eq!(failed.name, "Resolve request URL template");
/// assert_eq!(failed.error.as_ref().and_then(|e| e.message.as_deref()), Some("orderId is missing"));
/// # Ok::<_, serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ActionTest {
    /// Whether the action ran to the end and its output followed the contract.
    #[serde(default)]
    pub success: bool,
    /// The steps, in the order they ran; the last ran is the one that failed, if any.
    #[serde(default)]
    pub operations: Vec<TestStep>,
    /// What an execution would have answered (absent when the test failed).
    #[serde(default)]
    pub final_result: Option<Value>,
    /// The error that ended a failed test.
    #[serde(default)]
    pub error: Option<ErrorBody>,
    /// Every other field.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl ActionTest {
    /// The first step that failed, if any.
    pub fn failed_step(&self) -> Option<&TestStep> {
        self.operations.iter().find(|step| !step.success)
    }
}

/// One step of an [`ActionTest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct TestStep {
    /// Its place in the run, from 1.
    #[serde(default)]
    pub step: u32,
    /// What the step does (`Resolve request URL template`, `Execute HTTP request`, ...).
    #[serde(default)]
    pub name: String,
    /// Whether it succeeded.
    #[serde(default)]
    pub success: bool,
    /// What it produced (a resolved template, the response received, the translated output).
    #[serde(default)]
    pub result: Option<Value>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<ErrorBody>,
}
