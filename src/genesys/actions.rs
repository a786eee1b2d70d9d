//! Data Actions: list (paged), their categories, get, create, update, delete, execute and test, plus the generic
//! cursor listing.

use super::client::{Fetched, GenesysClient};
use super::error::GenesysError;
use super::model::{Action, ActionCategory, ActionTest, ActionUpdate, NewAction, Page};
use super::paginate::{CursorPage, CursorQuery, cursors, page_numbers};
use crate::cache::{CacheOverride, Windows};
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::Method;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The Data Actions listing path.
pub(crate) const ACTIONS: &str = "/api/v2/integrations/actions";

/// The Data Action categories listing path.
pub(crate) const CATEGORIES: &str = "/api/v2/integrations/actions/categories";

/// Sort direction of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    /// `ASC`.
    Asc,
    /// `DESC`.
    Desc,
}

/// What [`GenesysClient::get_action_with`](GenesysClient::get_action_with) asks the API to add to an
/// action: its [`contract`](super::Action::contract), its [`config`](super::Action::config), or both.
///
/// ```
/// use tower_redis_cache::genesys::ActionDetails;
///
/// assert_eq!(ActionDetails::new().contract().config().to_query_string(), "expand=contract&includeConfig=true");
/// assert_eq!(ActionDetails::new().to_query_string(), "");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct ActionDetails {
    contract: bool,
    config: bool,
}

impl ActionDetails {
    /// Nothing beyond what the API sends by default.
    pub fn new() -> Self {
        ActionDetails::default()
    }

    /// With the action's contract (`expand=contract`).
    pub fn contract(mut self) -> Self {
        self.contract = true;
        self
    }

    /// With the action's config (`includeConfig=true`).
    pub fn config(mut self) -> Self {
        self.config = true;
        self
    }

    /// The query string that asks for these details (without a leading `?`).
    pub fn to_query_string(&self) -> &'static str {
        match (self.contract, self.config) {
            (false, false) => "",
            (true, false) => "expand=contract",
            (false, true) => "includeConfig=true",
            (true, true) => "expand=contract&includeConfig=true",
        }
    }
}

/// Filters and paging of `GET /api/v2/integrations/actions`. Unset fields are left to the API's defaults
/// (page size 25).
///
/// ```
/// use tower_redis_cache::genesys::{ActionQuery, SortOrder};
///
/// let query = ActionQuery::new().name("order_lookup").sort_by("name").sort_order(SortOrder::Asc).page_size(25);
/// assert_eq!(query.to_query_string(), "pageSize=25&name=order_lookup&sortBy=name&sortOrder=ASC");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct ActionQuery {
    name: Option<String>,
    category: Option<String>,
    sort_by: Option<String>,
    sort_order: Option<SortOrder>,
    page_size: Option<u32>,
    secure: Option<bool>,
    include_auth_actions: Option<bool>,
}

impl ActionQuery {
    /// No filters.
    pub fn new() -> Self {
        ActionQuery::default()
    }

    /// Actions whose name contains `name` (`name`, a partial match).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Actions in `category` (`category`).
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    /// The field to sort by (`sortBy`), e.g. `name`.
    pub fn sort_by(mut self, field: impl Into<String>) -> Self {
        self.sort_by = Some(field.into());
        self
    }

    /// The direction (`sortOrder`).
    pub fn sort_order(mut self, order: SortOrder) -> Self {
        self.sort_order = Some(order);
        self
    }

    /// Items per page (`pageSize`; the API's default is 25).
    pub fn page_size(mut self, size: u32) -> Self {
        self.page_size = Some(size);
        self
    }

    /// Only secure (or only non-secure) actions (`secure`).
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = Some(secure);
        self
    }

    /// Include the auth actions of integrations (`includeAuthActions`).
    pub fn include_auth_actions(mut self, include: bool) -> Self {
        self.include_auth_actions = Some(include);
        self
    }

    /// The query string, in a fixed order (so equal queries make equal cache keys), without `pageNumber`.
    pub fn to_query_string(&self) -> String {
        let mut out = QueryString::default();
        out.number("pageSize", self.page_size);
        out.text("name", self.name.as_deref());
        out.text("category", self.category.as_deref());
        out.text("sortBy", self.sort_by.as_deref());
        out.order(self.sort_order);
        out.flag("secure", self.secure);
        out.flag("includeAuthActions", self.include_auth_actions);
        out.0
    }
}

/// Filters and paging of `GET /api/v2/integrations/actions/categories`. Unset fields are left to the API's
/// defaults (page size 25).
///
/// ```
/// use tower_redis_cache::genesys::{CategoryQuery, SortOrder};
///
/// let query = CategoryQuery::new().secure(false).sort_order(SortOrder::Desc).page_size(100);
/// assert_eq!(query.to_query_string(), "pageSize=100&sortOrder=DESC&secure=false");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct CategoryQuery {
    sort_by: Option<String>,
    sort_order: Option<SortOrder>,
    page_size: Option<u32>,
    secure: Option<bool>,
}

impl CategoryQuery {
    /// No filters.
    pub fn new() -> Self {
        CategoryQuery::default()
    }

    /// The field to sort by (`sortBy`), e.g. `name`.
    pub fn sort_by(mut self, field: impl Into<String>) -> Self {
        self.sort_by = Some(field.into());
        self
    }

    /// The direction (`sortOrder`).
    pub fn sort_order(mut self, order: SortOrder) -> Self {
        self.sort_order = Some(order);
        self
    }

    /// Items per page (`pageSize`; the API's default is 25).
    pub fn page_size(mut self, size: u32) -> Self {
        self.page_size = Some(size);
        self
    }

    /// Only the categories of secure actions, or only those of the others (`secure`).
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = Some(secure);
        self
    }

    /// The query string, in a fixed order (so equal queries make equal cache keys), without `pageNumber`.
    pub fn to_query_string(&self) -> String {
        let mut out = QueryString::default();
        out.number("pageSize", self.page_size);
        out.text("sortBy", self.sort_by.as_deref());
        out.order(self.sort_order);
        out.flag("secure", self.secure);
        out.0
    }
}

/// A query string in the making: `key=value` pairs joined by `&`, each value percent-encoded; a field left unset
/// is left out.
#[derive(Default)]
struct QueryString(String);

impl QueryString {
    fn text(&mut self, key: &str, value: Option<&str>) {
        let Some(value) = value else { return };
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(&encode(value));
    }

    fn number(&mut self, key: &str, value: Option<u32>) {
        self.text(key, value.map(|n| n.to_string()).as_deref());
    }

    fn flag(&mut self, key: &str, value: Option<bool>) {
        self.text(key, value.map(|on| if on { "true" } else { "false" }));
    }

    fn order(&mut self, order: Option<SortOrder>) {
        let order = order.map(|order| match order {
            SortOrder::Asc => "ASC",
            SortOrder::Desc => "DESC",
        });
        self.text("sortOrder", order);
    }
}

/// `path`, with `query` (percent-encoded already) after a `?` unless it is empty.
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// Everything but RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// As [`QUERY_VALUE`], and dots too.
const PATH_SEGMENT: &AsciiSet = &QUERY_VALUE.add(b'.');

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub(crate) fn encode(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// Percent-encodes a path segment: as a query value, and dots too, so an id of `..` cannot climb the path.
pub(crate) fn segment(value: &str) -> String {
    utf8_percent_encode(value, PATH_SEGMENT).to_string()
}

impl GenesysClient {
    /// The Data Actions matching `query`, following `pageNumber` page by page as the stream is read.
    ///
    /// ```no_run
    /// # async fn demo(client: tower_redis_cache::genesys::GenesysClient) -> Result<(), tower_redis_cache::genesys::GenesysError> {
    /// use futures_util::TryStreamExt;
    /// use tower_redis_cache::genesys::ActionQuery;
    ///
    /// let mut actions = std::pin::pin!(client.list_actions(&ActionQuery::new().name("order_lookup")));
    /// while let Some(action) = actions.try_next().await? {
    ///     println!("{} {}", action.id, action.name);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn list_actions(
        &self,
        query: &ActionQuery,
    ) -> impl Stream<Item = Result<Action, GenesysError>> + Send + 'static {
        self.list_action_pages(query)
            .map_ok(|page| futures_util::stream::iter(page.value.entities.into_iter().map(Ok)))
            .try_flatten()
    }

    /// The pages of the listing, each with its cache outcome, attempts and correlation id.
    pub fn list_action_pages(
        &self,
        query: &ActionQuery,
    ) -> impl Stream<Item = Result<Fetched<Page<Action>>, GenesysError>> + Send + 'static {
        let path = with_query(ACTIONS, &query.to_query_string());
        let executions = self.inner.executions.clone();
        page_numbers(self.clone(), path).inspect_ok(move |page: &Fetched<Page<Action>>| {
            for action in &page.value.entities {
                executions.learn(action);
            }
        })
    }

    /// Every Data Action matching `query`, all pages read.
    ///
    /// # Errors
    ///
    /// The first page's [`GenesysError`]; a repeated page or more pages than the limit.
    pub async fn list_all_actions(&self, query: &ActionQuery) -> Result<Vec<Action>, GenesysError> {
        self.list_actions(query).try_collect().await
    }

    /// The categories of Data Actions (`GET /api/v2/integrations/actions/categories`), following `pageNumber`
    /// page by page as the stream is read. Cached as the action listings are
    /// ([`listing_windows`](super::GenesysClientBuilder::listing_windows)), and dropped with them when an action
    /// is created, changed or deleted.
    ///
    /// ```no_run
    /// # async fn demo(client: tower_redis_cache::genesys::GenesysClient) -> Result<(), tower_redis_cache::genesys::GenesysError> {
    /// use tower_redis_cache::genesys::{ActionQuery, CategoryQuery};
    ///
    /// for category in client.list_all_categories(&CategoryQuery::new()).await? {
    ///     let actions = client.list_all_actions(&ActionQuery::new().category(&category.name)).await?;
    ///     println!("{}: {} actions", category.name, actions.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn list_categories(
        &self,
        query: &CategoryQuery,
    ) -> impl Stream<Item = Result<ActionCategory, GenesysError>> + Send + 'static {
        let path = with_query(CATEGORIES, &query.to_query_string());
        page_numbers(self.clone(), path)
            .map_ok(|page: Fetched<Page<ActionCategory>>| {
                futures_util::stream::iter(page.value.entities.into_iter().map(Ok))
            })
            .try_flatten()
    }

    /// Every category matching `query`, all pages read.
    ///
    /// # Errors
    ///
    /// As for [`list_all_actions`](Self::list_all_actions).
    pub async fn list_all_categories(
        &self,
        query: &CategoryQuery,
    ) -> Result<Vec<ActionCategory>, GenesysError> {
        self.list_categories(query).try_collect().await
    }

    /// One Data Action, `GET /api/v2/integrations/actions/{id}`.
    ///
    /// # Errors
    ///
    /// [`GenesysError::is_not_found`] for an unknown id, and the other failures of any call.
    pub async fn get_action(&self, id: &str) -> Result<Fetched<Action>, GenesysError> {
        self.get_action_with(id, ActionDetails::new()).await
    }

    /// One Data Action with the details asked for: its contract (the JSON Schema of its input and of its
    /// output), its config (the templates [`ActionUpdate::config`] replaces), or both. Cached as
    /// [`get_action`](Self::get_action) is, and dropped with it when the action changes.
    ///
    /// ```no_run
    /// # async fn demo(client: tower_redis_cache::genesys::GenesysClient) -> Result<(), tower_redis_cache::genesys::GenesysError> {
    /// use tower_redis_cache::genesys::{ActionDetails, ActionUpdate};
    ///
    /// let action = client.get_action_with("custom_-_order-lookup", ActionDetails::new().contract().config()).await?;
    /// if let Some(contract) = &action.contract {
    ///     println!("input: {}", contract.input.input_schema);
    /// }
    /// // A change to the config, made to the version read.
    /// let mut config = action.config.clone().unwrap_or_default();
    /// config["request"]["requestType"] = "GET".into();
    /// let update = ActionUpdate::new(action.version.unwrap_or(1)).config(config);
    /// client.update_action(&action.id, &update).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`get_action`](Self::get_action).
    pub async fn get_action_with(
        &self,
        id: &str,
        details: ActionDetails,
    ) -> Result<Fetched<Action>, GenesysError> {
        let mut path = format!("{ACTIONS}/{}", segment(id));
        let query = details.to_query_string();
        if !query.is_empty() {
            path.push('?');
            path.push_str(query);
        }
        let action: Fetched<Action> = self.send_json(Method::GET, &path, None).await?;
        self.inner.executions.learn(&action);
        Ok(action)
    }

    /// Creates a Data Action, `POST /api/v2/integrations/actions`, and returns it as the API made it (its id,
    /// version 1).
    ///
    /// Once the API accepts it, the cached listings (of actions and of categories) are gone, in every process
    /// sharing the cache, so the next listing shows it. Sent once: retried only when it cannot have reached the
    /// API (a rate limit, a connection never made), since a second send would make a second action.
    ///
    /// ```no_run
    /// # async fn demo(client: tower_redis_cache::genesys::GenesysClient) -> Result<(), tower_redis_cache::genesys::GenesysError> {
    /// use serde_json::json;
    /// use tower_redis_cache::genesys::{ActionContract, NewAction};
    ///
    /// let contract = ActionContract::new(
    ///     json!({"type": "object", "required": ["orderId"], "properties": {"orderId": {"type": "string"}}}),
    ///     json!({"type": "object", "properties": {"status": {"type": "string"}}}),
    /// );
    /// let config = json!({
    ///     "request": {"requestUrlTemplate": "https://orders.example/${input.orderId}", "requestType": "GET",
    ///                 "headers": {}, "requestTemplate": "${input.rawRequest}"},
    ///     "response": {"translationMap": {}, "translationMapDefaults": {}, "successTemplate": "${rawResult}"}
    /// });
    /// let new = NewAction::new("integration-id", "order_status", "Orders").contract(contract).config(config);
    /// let created = client.create_action(&new).await?;
    /// let output = client.execute_action(&created.id, &json!({"orderId": "A-17"})).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// A `400` ([`GenesysError::status`]) when the API refuses `action` (a field missing or malformed), and the
    /// other failures of any call.
    pub async fn create_action(&self, action: &NewAction) -> Result<Fetched<Action>, GenesysError> {
        let body =
            serde_json::to_value(action).map_err(|e| GenesysError::request(e.to_string()))?;
        let created: Fetched<Action> = self.send_json(Method::POST, ACTIONS, Some(&body)).await?;
        self.inner.executions.learn(&created);
        Ok(created)
    }

    /// Changes a Data Action, `PATCH /api/v2/integrations/actions/{id}`, and returns it as it is now (its
    /// version one higher).
    ///
    /// Once the API accepts it, the cached answers it makes stale are gone, in every process sharing the
    /// cache: the action's `GET`, its executions, and the listings. An update refused by the API removes
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`GenesysError::is_conflict`] when `update` names a version that is no longer the action's,
    /// [`GenesysError::is_not_found`] for an unknown id, and the other failures of any call.
    pub async fn update_action(
        &self,
        id: &str,
        update: &ActionUpdate,
    ) -> Result<Fetched<Action>, GenesysError> {
        let body =
            serde_json::to_value(update).map_err(|e| GenesysError::request(e.to_string()))?;
        let updated: Result<Fetched<Action>, _> = self
            .send_json(
                Method::PATCH,
                &format!("{ACTIONS}/{}", segment(id)),
                Some(&body),
            )
            .await;
        match updated {
            Ok(updated) => {
                self.inner.executions.learn(&updated);
                Ok(updated)
            }
            Err(error) => {
                self.inner.executions.forget(&segment(id));
                Err(error)
            }
        }
    }

    /// Deletes a Data Action, `DELETE /api/v2/integrations/actions/{id}`; its cached answers go as for
    /// [`update_action`](Self::update_action).
    ///
    /// # Errors
    ///
    /// [`GenesysError::is_not_found`] for an unknown id, and the other failures of any call.
    pub async fn delete_action(&self, id: &str) -> Result<Fetched<()>, GenesysError> {
        let deleted = self
            .send(Method::DELETE, &format!("{ACTIONS}/{}", segment(id)), None)
            .await;
        self.inner.executions.forget(&segment(id));
        let deleted = deleted?;
        Ok(deleted.map(|_| ()))
    }

    /// Runs a Data Action, `POST /api/v2/integrations/actions/{id}/execute`, and returns its output JSON.
    ///
    /// This is the expensive call: it is cached, keyed by the canonical form of `input` (member order and
    /// whitespace do not matter), so the same input within the freshness window costs no API call, and
    /// concurrent calls with it make one. That suits an action that looks something up. An action that changes
    /// something (it creates a ticket, sends a message) must run on every call: name it in
    /// [`uncached_action`](super::GenesysClientBuilder::uncached_action), or call
    /// [`execute_action_uncached`](Self::execute_action_uncached); or cache only the actions named with
    /// [`cache_executions(false)`](super::GenesysClientBuilder::cache_executions). A `secure` action's output is
    /// not cached unless chosen ([`cache_secure_actions`](super::GenesysClientBuilder::cache_secure_actions)):
    /// the first execution of an action the client has not read (listed or fetched) reads it once to learn which
    /// it is.
    ///
    /// # Errors
    ///
    /// As for any call; a failing action usually answers `400` with the action's error in the message.
    pub async fn execute_action(
        &self,
        id: &str,
        input: &Value,
    ) -> Result<Fetched<Value>, GenesysError> {
        self.execute(id, input, None).await
    }

    /// [`execute_action`](Self::execute_action) with windows of its own for the entry this call stores,
    /// whatever the client's are for this action.
    ///
    /// # Errors
    ///
    /// As for [`execute_action`](Self::execute_action).
    pub async fn execute_action_with(
        &self,
        id: &str,
        input: &Value,
        windows: Windows,
    ) -> Result<Fetched<Value>, GenesysError> {
        self.execute(id, input, Some(CacheOverride::Windows(windows)))
            .await
    }

    /// [`execute_action`](Self::execute_action) without the cache: the action runs, whatever is cached for
    /// this input, and its output is not stored (`Cache-Status: ...; fwd=bypass; detail=skipped`).
    ///
    /// # Errors
    ///
    /// As for [`execute_action`](Self::execute_action).
    pub async fn execute_action_uncached(
        &self,
        id: &str,
        input: &Value,
    ) -> Result<Fetched<Value>, GenesysError> {
        self.execute(id, input, Some(CacheOverride::Skip)).await
    }

    /// Runs the Data Action `id` on `input`, with `cache` for this one call.
    async fn execute(
        &self,
        id: &str,
        input: &Value,
        cache: Option<CacheOverride>,
    ) -> Result<Fetched<Value>, GenesysError> {
        let encoded = segment(id);
        let cache = self.execution_override(id, &encoded, cache).await;
        self.send_json_with(
            Method::POST,
            &format!("{ACTIONS}/{encoded}/execute"),
            Some(input),
            cache,
        )
        .await
    }

    /// `cache`, or, for an execution the client's windows would cache, [`CacheOverride::Skip`] when the action
    /// is `secure` ([`cache_secure_actions`](super::GenesysClientBuilder::cache_secure_actions)), read once. An
    /// action that cannot be read (yet) is not cached this time. `encoded` is `id` as a path segment.
    async fn execution_override(
        &self,
        id: &str,
        encoded: &str,
        cache: Option<CacheOverride>,
    ) -> Option<CacheOverride> {
        let executions = &self.inner.executions;
        if cache.is_some() || !executions.asks_secure(encoded) {
            return cache;
        }
        let secure = match executions.known_secure(encoded) {
            Some(secure) => secure,
            None => self
                .get_action(id)
                .await
                .map_or(true, |action| action.secure.unwrap_or(true)),
        };
        secure.then_some(CacheOverride::Skip)
    }

    /// The raw output of a Data Action (the bytes, not parsed).
    ///
    /// # Errors
    ///
    /// As for [`execute_action`](Self::execute_action).
    pub async fn execute_action_raw(
        &self,
        id: &str,
        input: &Value,
    ) -> Result<Fetched<bytes::Bytes>, GenesysError> {
        let encoded = segment(id);
        let cache = self.execution_override(id, &encoded, None).await;
        self.send_with(
            Method::POST,
            &format!("{ACTIONS}/{encoded}/execute"),
            Some(input),
            cache,
        )
        .await
    }

    /// Runs the Data Action `id` on `input` as a test, `POST /api/v2/integrations/actions/{id}/test`: the answer
    /// shows each step the action went through, what it produced and where it failed, where
    /// [`execute_action`](Self::execute_action) answers only the output or one error. For building and
    /// debugging an action: never cached (the action runs on every call), and, as an uncached `POST`, retried only
    /// when it cannot have run (a rate limit, a connection never made).
    ///
    /// A test whose action fails is an answer (`success: false`, with the failed step's error), not an `Err`.
    ///
    /// # Errors
    ///
    /// [`GenesysError::is_not_found`] for an unknown id, and the other failures of any call.
    pub async fn test_action(
        &self,
        id: &str,
        input: &Value,
    ) -> Result<Fetched<ActionTest>, GenesysError> {
        self.send_json_with(
            Method::POST,
            &format!("{ACTIONS}/{}/test", segment(id)),
            Some(input),
            Some(CacheOverride::Skip),
        )
        .await
    }

    /// The pages of a cursor listing (`after` in a `POST` body, or a `cursor` query parameter), until the
    /// server returns no cursor. A cursor the server already sent fails the listing instead of looping.
    pub fn cursor_pages<T>(
        &self,
        query: CursorQuery,
    ) -> impl Stream<Item = Result<Fetched<CursorPage<T>>, GenesysError>> + Send + 'static
    where
        T: DeserializeOwned + Send + 'static,
    {
        cursors(self.clone(), query)
    }

    /// The items of a cursor listing, page after page.
    pub fn cursor_items<T>(
        &self,
        query: CursorQuery,
    ) -> impl Stream<Item = Result<T, GenesysError>> + Send + 'static
    where
        T: DeserializeOwned + Send + 'static,
    {
        self.cursor_pages(query)
            .map_ok(|page| futures_util::stream::iter(page.value.entities.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_string_is_ordered_and_encoded() {
        let query = ActionQuery::new()
            .category("Web Services & Co")
            .name("order lookup/ä")
            .page_size(25)
            .secure(false)
            .include_auth_actions(true)
            .sort_order(SortOrder::Desc);
        assert_eq!(
            query.to_query_string(),
            "pageSize=25&name=order%20lookup%2F%C3%A4&category=Web%20Services%20%26%20Co&sortOrder=DESC&secure=false&includeAuthActions=true"
        );
        assert_eq!(ActionQuery::new().to_query_string(), "");
        assert_eq!(encode("../x?y#z"), "..%2Fx%3Fy%23z");
        assert_eq!(segment(".."), "%2E%2E");
    }
}
