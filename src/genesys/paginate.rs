//! Pagination: page-number listings (`pageNumber` until `pageCount`) and cursor listings (`after` / `cursor`),
//! each guarded against a server that repeats itself and against unbounded listings.

use super::client::{Fetched, GenesysClient};
use super::error::GenesysError;
use super::model::Page;
use bytes::Bytes;
use futures_util::Stream;
use http::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Streams the pages of a page-number listing: `path_and_query` plus `pageNumber=1, 2, ...`, until
/// `pageCount` is reached, a page is empty, or (without `pageCount`) there is no `nextUri`.
///
/// Fails (and ends) when the server answers a different page than asked, repeats the previous page byte for
/// byte, or the listing passes the client's page limit.
pub(crate) fn page_numbers<T>(
    client: GenesysClient,
    path_and_query: String,
) -> impl Stream<Item = Result<Fetched<Page<T>>, GenesysError>> + Send + 'static
where
    T: DeserializeOwned + Send + 'static,
{
    struct State {
        client: GenesysClient,
        path_and_query: String,
        next: Option<u32>,
        previous: Option<Bytes>,
    }
    let state = State {
        client,
        path_and_query,
        next: Some(1),
        previous: None,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let number = state.next.take()?;
        if let Err(error) = page_limit(&state.client, number) {
            return Some((Err(error), state));
        }
        let sep = if state.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}pageNumber={number}", state.path_and_query);
        let fetched = match state.client.send(Method::GET, &url, None).await {
            Ok(fetched) => fetched,
            Err(error) => return Some((Err(error), state)),
        };
        if state.previous.as_ref() == Some(&fetched.value) {
            let error =
                GenesysError::pagination(format!("page {number} repeats page {}", number - 1));
            return Some((Err(error), state));
        }
        let page: Page<T> = match serde_json::from_slice(&fetched.value) {
            Ok(page) => page,
            Err(e) => {
                let error = GenesysError::decode(
                    format!("page {number} of {url}: {e}"),
                    fetched.correlation_id,
                );
                return Some((Err(error), state));
            }
        };
        if let Some(got) = page.page_number
            && got != number
        {
            let error = GenesysError::pagination(format!(
                "asked for page {number}, the server answered page {got}"
            ));
            return Some((Err(error), state));
        }
        let last = page.entities.is_empty()
            || page
                .page_count
                .map_or(page.next_uri.is_none(), |count| number >= count);
        state.next = (!last).then_some(number + 1);
        state.previous = Some(fetched.value.clone());
        Some((Ok(fetched.map(|_| page)), state))
    })
}

/// The guard against unbounded listings: page `number` (from 1) may be read only within the client's limit.
fn page_limit(client: &GenesysClient, number: u32) -> Result<(), GenesysError> {
    let max = client.inner.max_pages;
    if number > max {
        return Err(GenesysError::pagination(format!(
            "listing has more than {max} pages"
        )));
    }
    Ok(())
}

/// How a cursor listing passes its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CursorStyle {
    /// `POST` with a JSON body; the cursor goes in the body's `after` field and comes back in the response's
    /// `after` (e.g. `POST /api/v2/taskmanagement/workitems/query`).
    BodyAfter,
    /// `GET`; the cursor goes in the `cursor` query parameter and comes back in the response's `cursor`.
    QueryCursor,
}

/// A cursor listing to read: where, how, and the first request's body.
#[derive(Debug, Clone)]
pub struct CursorQuery {
    pub(crate) path_and_query: String,
    pub(crate) style: CursorStyle,
    pub(crate) body: Value,
}

impl CursorQuery {
    /// A `POST` query paged by the body's `after` field. `body` is the query (filters, `pageSize`, ...); it
    /// must be a JSON object.
    pub fn post_after(path: impl Into<String>, body: Value) -> Self {
        CursorQuery {
            path_and_query: path.into(),
            style: CursorStyle::BodyAfter,
            body,
        }
    }

    /// A `GET` listing paged by the `cursor` query parameter.
    pub fn get_cursor(path_and_query: impl Into<String>) -> Self {
        CursorQuery {
            path_and_query: path_and_query.into(),
            style: CursorStyle::QueryCursor,
            body: Value::Null,
        }
    }
}

/// One page of a cursor listing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct CursorPage<T> {
    /// The items on this page.
    #[serde(default = "Vec::new")]
    pub entities: Vec<T>,
    /// The cursor of the next page (`after` or `cursor`); absent on the last page.
    #[serde(default, alias = "after", alias = "cursor")]
    pub next: Option<String>,
    /// The envelope's other fields (`count`, `total`, ...).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Streams the pages of a cursor listing until the server returns no cursor (or an empty page).
pub(crate) fn cursors<T>(
    client: GenesysClient,
    query: CursorQuery,
) -> impl Stream<Item = Result<Fetched<CursorPage<T>>, GenesysError>> + Send + 'static
where
    T: DeserializeOwned + Send + 'static,
{
    struct State {
        client: GenesysClient,
        query: CursorQuery,
        cursor: Option<String>,
        seen: HashSet<String>,
        pages: u32,
        done: bool,
    }
    let state = State {
        client,
        query,
        cursor: None,
        seen: HashSet::new(),
        pages: 0,
        done: false,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        state.done = true;
        state.pages += 1;
        if let Err(error) = page_limit(&state.client, state.pages) {
            return Some((Err(error), state));
        }
        let result = match state.query.style {
            CursorStyle::BodyAfter => {
                let mut body = state.query.body.clone();
                match (&mut body, &state.cursor) {
                    (Value::Object(map), Some(cursor)) => {
                        map.insert("after".into(), Value::String(cursor.clone()));
                    }
                    (Value::Object(_), None) => {}
                    _ => {
                        let error =
                            GenesysError::pagination("a cursor query body must be a JSON object");
                        return Some((Err(error), state));
                    }
                }
                state
                    .client
                    .send_json::<CursorPage<T>>(
                        Method::POST,
                        &state.query.path_and_query,
                        Some(&body),
                    )
                    .await
            }
            CursorStyle::QueryCursor => {
                let url = match &state.cursor {
                    Some(cursor) => {
                        let sep = if state.query.path_and_query.contains('?') {
                            '&'
                        } else {
                            '?'
                        };
                        format!(
                            "{}{sep}cursor={}",
                            state.query.path_and_query,
                            super::actions::encode(cursor)
                        )
                    }
                    None => state.query.path_and_query.clone(),
                };
                state
                    .client
                    .send_json::<CursorPage<T>>(Method::GET, &url, None)
                    .await
            }
        };
        let page = match result {
            Ok(page) => page,
            Err(error) => return Some((Err(error), state)),
        };
        match page.next.as_deref().filter(|c| !c.is_empty()) {
            Some(next) if !page.entities.is_empty() => {
                if !state.seen.insert(next.to_owned()) {
                    let error = GenesysError::pagination(format!(
                        "cursor repeats after page {}: the server sent it before",
                        state.pages
                    ));
                    return Some((Err(error), state));
                }
                state.cursor = Some(next.to_owned());
                state.done = false;
            }
            _ => {}
        }
        Some((Ok(page), state))
    })
}
