//! The emulator's request handling: token endpoint, bearer check, faults, rate limit, and the API routes.

use super::Shared;
use super::state::{Endpoint, TokenInfo};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use rand::RngExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ACTIONS: &str = "/api/v2/integrations/actions";
const WORKITEMS_QUERY: &str = "/api/v2/taskmanagement/workitems/query";

type Reply = Response<Full<Bytes>>;

pub(crate) async fn handle(shared: &Shared, request: http::Request<Incoming>) -> Reply {
    let correlation = correlation_id();
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, 1024 * 1024).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return with_api_headers(
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body over 1 MiB",
                    &correlation,
                ),
                &correlation,
            );
        }
    };
    let endpoint = classify(&parts.method, parts.uri.path());
    shared.counters.bump(endpoint);
    let response = match endpoint {
        Endpoint::Token => token(shared, &parts, &body),
        Endpoint::Other => error(
            StatusCode::NOT_FOUND,
            "The requested resource was not found",
            &correlation,
        ),
        _ => api(shared, endpoint, &parts, &body, &correlation).await,
    };
    with_api_headers(response, &correlation)
}

/// The header fields the real API puts on every response: its correlation id, and a ban on caching whatever the
/// response holds (as a trace of `GET /api/v2/users` on api.mypurecloud.com shows).
fn with_api_headers(mut response: Reply, correlation: &str) -> Reply {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(correlation) {
        headers.insert("inin-correlation-id", value);
    }
    headers.insert(
        "cache-control",
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    headers.insert("pragma", HeaderValue::from_static("no-cache"));
    headers.insert("expires", HeaderValue::from_static("0"));
    response
}

fn classify(method: &Method, path: &str) -> Endpoint {
    let rest = path.strip_prefix(ACTIONS);
    match (method, path, rest) {
        (&Method::POST, "/oauth/token", _) => Endpoint::Token,
        (&Method::GET, _, Some("" | "/")) => Endpoint::ListActions,
        (&Method::POST, _, Some("" | "/")) => Endpoint::CreateAction,
        (&Method::POST, WORKITEMS_QUERY, _) => Endpoint::QueryWorkitems,
        (_, _, Some(rest)) if rest.starts_with('/') => {
            let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
            match (method, segments.as_slice()) {
                (&Method::GET, ["categories"]) => Endpoint::ListCategories,
                (&Method::GET, [id]) if !id.is_empty() => Endpoint::GetAction,
                (&Method::POST, [id, "execute"]) if !id.is_empty() => Endpoint::ExecuteAction,
                (&Method::POST, [id, "test"]) if !id.is_empty() => Endpoint::TestAction,
                (&Method::PATCH, [id]) if !id.is_empty() => Endpoint::UpdateAction,
                (&Method::DELETE, [id]) if !id.is_empty() => Endpoint::DeleteAction,
                _ => Endpoint::Other,
            }
        }
        _ => Endpoint::Other,
    }
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// A Genesys error body: `{message, code, status, contextId, details, errors}`.
fn error(status: StatusCode, message: &str, correlation: &str) -> Reply {
    let code = match status.as_u16() {
        400 => "bad.request",
        401 => "bad.credentials",
        404 => "not.found",
        409 => "conflict",
        413 => "request.entity.too.large",
        429 => "too.many.requests.retry.after",
        500 => "internal.server.error",
        503 => "service.unavailable",
        504 => "gateway.timeout",
        _ => "error",
    };
    json_reply(
        status,
        &json!({
            "message": message,
            "code": code,
            "status": status.as_u16(),
            "contextId": correlation,
            "details": [],
            "errors": [],
        }),
    )
}

fn too_many(retry_after: u64, correlation: &str) -> Reply {
    let message =
        format!("Rate limit exceeded the maximum. Retry the request in [{retry_after}] seconds");
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, &message, correlation);
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from(retry_after));
    response
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Reply {
    json_reply(
        status,
        &json!({"error": code, "description": description, "error_description": description}),
    )
}

/// `POST /oauth/token`: the client-credentials grant with Basic (or form) client authentication.
fn token(shared: &Shared, parts: &Parts, body: &[u8]) -> Reply {
    let form_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected a form body",
        );
    }
    let form = parse_query(&String::from_utf8_lossy(body));
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let clients = std::iter::once((&shared.client_id, &shared.client_secret))
        .chain(shared.other_clients.iter().map(|(id, secret)| (id, secret)));
    let basic = parts
        .headers
        .get("authorization")
        .and_then(|v| basic_credentials(v.as_bytes()));
    let mut known = false;
    for (id, secret) in clients {
        known |= basic
            .as_ref()
            .is_some_and(|(bid, bsecret)| bid == id && bsecret == secret);
        known |= form.get("client_id") == Some(id) && form.get("client_secret") == Some(secret);
    }
    if !known {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client not found or secret mismatch",
        );
    }
    let mut data = shared.data();
    let token: String = {
        let mut rng = rand::rng();
        (0..40)
            .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
            .collect()
    };
    let now = Instant::now();
    let lifetime = data.token_lifetime;
    data.issued += 1;
    data.tokens.insert(
        token.clone(),
        TokenInfo {
            expires_at: now + lifetime,
            window_start: now,
            window_count: 0,
        },
    );
    json_reply(
        StatusCode::OK,
        &json!({"access_token": token, "token_type": "bearer", "expires_in": lifetime.as_secs()}),
    )
}

/// An API call: bearer check, injected faults, the per-token rate limit, then the route.
async fn api(
    shared: &Shared,
    endpoint: Endpoint,
    parts: &Parts,
    body: &[u8],
    correlation: &str,
) -> Reply {
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let latency = {
        let mut data = shared.data();
        let now = Instant::now();
        let valid = data.tokens.get(&bearer).is_some_and(|t| t.expires_at > now);
        if !valid || data.reject_next_token {
            if valid {
                data.reject_next_token = false;
                data.tokens.remove(&bearer);
            }
            return error(
                StatusCode::UNAUTHORIZED,
                "Invalid login credentials.",
                correlation,
            );
        }
        if let Some(fault) = data.take_fault(target) {
            let mut response = error(fault.status, "Injected fault", correlation);
            if let Some(seconds) = fault.retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(seconds));
            }
            return response;
        }
        let limit = data.rate_limit;
        if let Some(info) = data.tokens.get_mut(&bearer) {
            if now.duration_since(info.window_start) >= Duration::from_secs(60) {
                info.window_start = now;
                info.window_count = 0;
            }
            info.window_count += 1;
            if info.window_count > limit {
                let left =
                    Duration::from_secs(60).saturating_sub(now.duration_since(info.window_start));
                return too_many(left.as_secs().max(1), correlation);
            }
        }
        data.execute_latency
    };
    match endpoint {
        Endpoint::ListActions => list_actions(shared, parts, correlation),
        Endpoint::ListCategories => list_categories(shared, parts, correlation),
        Endpoint::CreateAction => create_action(shared, body, correlation),
        Endpoint::GetAction => get_action(shared, parts, correlation),
        Endpoint::ExecuteAction => {
            execute(shared, parts.uri.path(), body, latency, correlation).await
        }
        Endpoint::TestAction => test(shared, parts.uri.path(), body, latency, correlation).await,
        Endpoint::UpdateAction => update_action(shared, parts.uri.path(), body, correlation),
        Endpoint::DeleteAction => delete_action(shared, parts.uri.path(), correlation),
        Endpoint::QueryWorkitems => workitems(shared, body, correlation),
        _ => error(
            StatusCode::NOT_FOUND,
            "The requested resource was not found",
            correlation,
        ),
    }
}

/// The `pageSize` (default 25, at most 500) and `pageNumber` (default 1) of a page-number listing, or the `400`
/// the API answers for others.
fn paging(query: &HashMap<String, String>, correlation: &str) -> Result<(u64, u64), Reply> {
    let number = |key: &str, default: u64| -> Option<u64> {
        query.get(key).map_or(Some(default), |v| v.parse().ok())
    };
    let (Some(page_size), Some(page_number)) = (number("pageSize", 25), number("pageNumber", 1))
    else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "pageSize and pageNumber must be numbers",
            correlation,
        ));
    };
    if !(1..=500).contains(&page_size) || page_number < 1 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "pageSize must be 1 to 500 and pageNumber at least 1",
            correlation,
        ));
    }
    Ok((page_size, page_number))
}

/// Page `page_number` of `items` (in listing order), in the API's page envelope, its links to `path` with the
/// listing's `query` (page number replaced).
fn page_reply(
    path: &str,
    query: &HashMap<String, String>,
    items: Vec<Value>,
    (page_size, page_number): (u64, u64),
) -> Reply {
    let total = items.len() as u64;
    let page_count = total.div_ceil(page_size);
    let start = usize::try_from((page_number - 1).saturating_mul(page_size)).unwrap_or(usize::MAX);
    let entities: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(usize::try_from(page_size).unwrap_or(usize::MAX))
        .collect();
    let uri = |n: u64| {
        let mut rest: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| k.as_str() != "pageNumber")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rest.sort();
        let mut out = format!("{path}?pageNumber={n}");
        for (k, v) in rest {
            out.push_str(&format!("&{k}={}", crate::genesys::actions::encode(&v)));
        }
        out
    };
    let link = |n: u64, exists: bool| {
        if exists {
            Value::String(uri(n))
        } else {
            Value::Null
        }
    };
    let mut page = json!({
        "entities": entities,
        "pageSize": page_size,
        "pageNumber": page_number,
        "total": total,
        "pageCount": page_count,
        "firstUri": uri(1),
        "selfUri": uri(page_number),
        "lastUri": uri(page_count.max(1)),
    });
    if let Value::Object(map) = &mut page {
        map.insert(
            "nextUri".into(),
            link(page_number + 1, page_number < page_count),
        );
        map.insert("previousUri".into(), link(page_number - 1, page_number > 1));
        map.retain(|_, v| !v.is_null());
    }
    json_reply(StatusCode::OK, &page)
}

/// Whether `sortOrder` asks for descending order.
fn descending(query: &HashMap<String, String>) -> bool {
    query
        .get("sortOrder")
        .is_some_and(|o| o.eq_ignore_ascii_case("desc"))
}

fn list_actions(shared: &Shared, parts: &Parts, correlation: &str) -> Reply {
    let query = parse_query(parts.uri.query().unwrap_or_default());
    let (page_size, page_number) = match paging(&query, correlation) {
        Ok(paging) => paging,
        Err(reply) => return reply,
    };
    let data = shared.data();
    let page_number = if data.repeat_pages { 1 } else { page_number };
    let name = query.get("name").map(|n| n.to_lowercase());
    let category = query.get("category").map(|c| c.to_lowercase());
    let secure = query.get("secure").map(|s| s == "true");
    let mut matching: Vec<&Value> = data
        .actions
        .iter()
        .filter(|a| {
            name.as_ref()
                .is_none_or(|n| field(a, "name").to_lowercase().contains(n))
        })
        .filter(|a| {
            category
                .as_ref()
                .is_none_or(|c| field(a, "category").to_lowercase() == *c)
        })
        .filter(|a| secure.is_none_or(|s| a.get("secure").and_then(Value::as_bool) == Some(s)))
        .collect();
    let sort_by = query.get("sortBy").map_or("name", String::as_str);
    let sort_key = if sort_by == "category" {
        "category"
    } else {
        "name"
    };
    matching.sort_by(|a, b| {
        field(a, sort_key)
            .cmp(field(b, sort_key))
            .then(field(a, "name").cmp(field(b, "name")))
    });
    if descending(&query) {
        matching.reverse();
    }
    let items = matching
        .into_iter()
        .map(|action| shown(action, false, false))
        .collect();
    page_reply(ACTIONS, &query, items, (page_size, page_number))
}

/// `GET .../actions/categories`: the categories of the actions (of the secure ones, or of the others, with
/// `secure`), by name, paged as the actions are.
fn list_categories(shared: &Shared, parts: &Parts, correlation: &str) -> Reply {
    let query = parse_query(parts.uri.query().unwrap_or_default());
    let paging = match paging(&query, correlation) {
        Ok(paging) => paging,
        Err(reply) => return reply,
    };
    let secure = query.get("secure").map(|s| s == "true");
    let data = shared.data();
    let mut names: Vec<&str> = data
        .actions
        .iter()
        .filter(|a| secure.is_none_or(|s| a.get("secure").and_then(Value::as_bool) == Some(s)))
        .map(|a| field(a, "category"))
        .filter(|name| !name.is_empty())
        .collect();
    names.sort_unstable();
    names.dedup();
    if descending(&query) {
        names.reverse();
    }
    let items = names
        .into_iter()
        .map(|name| json!({"name": name}))
        .collect();
    page_reply(&format!("{ACTIONS}/categories"), &query, items, paging)
}

/// `POST .../actions`: `{name, category, integrationId, config, contract, secure}`, all but `secure` required.
/// The new action has an id of the emulator's making (`custom_-_` and a UUID, as the API's custom actions do)
/// and version 1; the answer is the action, its contract and config included.
fn create_action(shared: &Shared, body: &[u8], correlation: &str) -> Reply {
    let Ok(Value::Object(new)) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "The action must be a JSON object",
            correlation,
        );
    };
    let text = |key: &str| {
        new.get(key)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let schema = |pointer: &str| {
        new.get("contract")
            .and_then(|c| c.pointer(pointer))
            .is_some_and(Value::is_object)
    };
    let (Some(name), Some(category), Some(integration)) =
        (text("name"), text("category"), text("integrationId"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "name, category and integrationId are required",
            correlation,
        );
    };
    if !new.get("config").is_some_and(Value::is_object)
        || !schema("/input/inputSchema")
        || !schema("/output/successSchema")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "config and contract (input.inputSchema, output.successSchema) are required",
            correlation,
        );
    }
    let Some(secure) = new.get("secure").map_or(Some(false), Value::as_bool) else {
        return error(
            StatusCode::BAD_REQUEST,
            "secure must be true or false",
            correlation,
        );
    };
    let id = format!("custom_-_{}", correlation_id());
    let action = json!({
        "id": id,
        "name": name,
        "category": category,
        "integrationId": integration,
        "secure": secure,
        "version": 1,
        "contract": new.get("contract"),
        "config": new.get("config"),
        "selfUri": format!("{ACTIONS}/{id}"),
    });
    shared.data().actions.push(action.clone());
    json_reply(StatusCode::OK, &action)
}

fn action_id(path: &str) -> String {
    let rest = path.strip_prefix(ACTIONS).unwrap_or_default();
    let id = rest
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    percent_decode(id)
}

/// An action as the API shows it: its `contract` only when asked for (`expand=contract`), its `config` only
/// when asked for (`includeConfig=true`); a listing shows neither.
fn shown(action: &Value, contract: bool, config: bool) -> Value {
    let mut action = action.clone();
    if let Value::Object(fields) = &mut action {
        if !contract {
            fields.remove("contract");
        }
        if !config {
            fields.remove("config");
        }
    }
    action
}

/// `GET .../actions/{id}`, `expand=contract` and `includeConfig=true` honoured.
fn get_action(shared: &Shared, parts: &Parts, correlation: &str) -> Reply {
    let id = action_id(parts.uri.path());
    let query = parse_query(parts.uri.query().unwrap_or_default());
    let contract = query
        .get("expand")
        .is_some_and(|e| e.split(',').any(|e| e == "contract"));
    let config = query.get("includeConfig").is_some_and(|c| c == "true");
    let data = shared.data();
    match data.actions.iter().find(|a| field(a, "id") == id) {
        Some(action) => json_reply(StatusCode::OK, &shown(action, contract, config)),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("Action {id} not found"),
            correlation,
        ),
    }
}

/// `PATCH .../actions/{id}`: `{version, name, category, config}`, all but `version` optional. The version must
/// be the action's (optimistic concurrency: `409` otherwise), and the update increments it.
fn update_action(shared: &Shared, path: &str, body: &[u8], correlation: &str) -> Reply {
    let id = action_id(path);
    let Ok(Value::Object(update)) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "The update must be a JSON object",
            correlation,
        );
    };
    let Some(version) = update.get("version").and_then(Value::as_i64) else {
        return error(
            StatusCode::BAD_REQUEST,
            "The update must carry the action's version",
            correlation,
        );
    };
    let well_formed = ["name", "category"]
        .iter()
        .all(|key| update.get(*key).is_none_or(Value::is_string))
        && update.get("config").is_none_or(Value::is_object);
    if !well_formed {
        return error(
            StatusCode::BAD_REQUEST,
            "name and category must be strings, config an object",
            correlation,
        );
    }
    let mut data = shared.data();
    let Some(Value::Object(action)) = data.actions.iter_mut().find(|a| field(a, "id") == id) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("Action {id} not found"),
            correlation,
        );
    };
    let current = action.get("version").and_then(Value::as_i64).unwrap_or(1);
    if version != current {
        return error(
            StatusCode::CONFLICT,
            &format!("Action {id} is at version {current}, not {version}"),
            correlation,
        );
    }
    for key in ["name", "category", "config"] {
        if let Some(value) = update.get(key) {
            action.insert(key.to_owned(), value.clone());
        }
    }
    action.insert("version".to_owned(), Value::from(current + 1));
    json_reply(StatusCode::OK, &Value::Object(action.clone()))
}

/// `DELETE .../actions/{id}`: `204`, and the action is gone.
fn delete_action(shared: &Shared, path: &str, correlation: &str) -> Reply {
    let id = action_id(path);
    let mut data = shared.data();
    let before = data.actions.len();
    data.actions.retain(|a| field(a, "id") != id);
    if data.actions.len() == before {
        return error(
            StatusCode::NOT_FOUND,
            &format!("Action {id} not found"),
            correlation,
        );
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// Why a run of an action stopped: the status `execute` answers with, the message, and the step that failed.
struct Failure {
    status: StatusCode,
    message: String,
    step: usize,
}

/// The steps of a run, as a test shows them. The emulator's own: the real API names the steps of the action's
/// kind (templates resolved, the HTTP request, the translation map).
const STEPS: [&str; 3] = [
    "Validate input against the input schema",
    "Execute the action",
    "Validate output against the success schema",
];

/// Runs the action at `path` on `body`: the action must exist, the input be a JSON object holding every member
/// the action's input schema names in `required`. Returns the output, or why the run failed.
async fn run(
    shared: &Shared,
    path: &str,
    body: &[u8],
    latency: Duration,
) -> Result<Value, Failure> {
    let id = action_id(path);
    let (name, version, required) = {
        let data = shared.data();
        let Some(action) = data.actions.iter().find(|a| field(a, "id") == id) else {
            return Err(Failure {
                status: StatusCode::NOT_FOUND,
                message: format!("Action {id} not found"),
                step: 0,
            });
        };
        let required: Vec<String> = action
            .pointer("/contract/input/inputSchema/required")
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        (
            field(action, "name").to_owned(),
            action.get("version").cloned().unwrap_or(Value::Null),
            required,
        )
    };
    let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure {
            status: StatusCode::BAD_REQUEST,
            message: "The action input must be a JSON object".to_owned(),
            step: 0,
        });
    };
    if let Some(missing) = required
        .iter()
        .find(|name| !input.contains_key(name.as_str()))
    {
        return Err(Failure {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "Input failed schema validation: required property '{missing}' is missing"
            ),
            step: 1,
        });
    }
    tokio::time::sleep(latency).await;
    let fields = input.len();
    Ok(
        json!({"action": name, "version": version, "input": input, "result": {"status": "ok", "inputFields": fields}}),
    )
}

/// `POST .../actions/{id}/execute`: the output, or the failure as an error.
async fn execute(
    shared: &Shared,
    path: &str,
    body: &[u8],
    latency: Duration,
    correlation: &str,
) -> Reply {
    match run(shared, path, body, latency).await {
        Ok(output) => json_reply(StatusCode::OK, &output),
        Err(failure) => error(failure.status, &failure.message, correlation),
    }
}

/// `POST .../actions/{id}/test`: every step with its result, and a failure of the action as a `200` saying
/// where it failed; only an unknown action or an input that is no JSON object is an error.
async fn test(
    shared: &Shared,
    path: &str,
    body: &[u8],
    latency: Duration,
    correlation: &str,
) -> Reply {
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let (output, failure) = match run(shared, path, body, latency).await {
        Ok(output) => (Some(output), None),
        Err(failure) if failure.step == 0 => {
            return error(failure.status, &failure.message, correlation);
        }
        Err(failure) => (None, Some(failure)),
    };
    let failed_at = failure.as_ref().map_or(usize::MAX, |f| f.step);
    let error_body = |failure: &Failure| json!({"message": failure.message, "code": "bad.request", "status": failure.status.as_u16()});
    let operations: Vec<Value> = STEPS
        .iter()
        .enumerate()
        .map(|(i, name)| (i + 1, name))
        .take_while(|(step, _)| *step <= failed_at)
        .map(|(step, name)| match &failure {
            Some(failure) if step == failed_at => {
                json!({"step": step, "name": name, "success": false, "error": error_body(failure)})
            }
            _ => {
                let result = if step == 1 {
                    &input
                } else {
                    output.as_ref().unwrap_or(&Value::Null)
                };
                json!({"step": step, "name": name, "success": true, "result": result})
            }
        })
        .collect();
    let mut answer = json!({"operations": operations, "success": failure.is_none()});
    if let Value::Object(fields) = &mut answer {
        match (&output, &failure) {
            (Some(output), _) => {
                fields.insert("finalResult".into(), output.clone());
            }
            (None, Some(failure)) => {
                fields.insert("error".into(), error_body(failure));
            }
            (None, None) => {}
        }
    }
    json_reply(StatusCode::OK, &answer)
}

/// `POST .../workitems/query`: a cursor listing; the cursor is `after`.
fn workitems(shared: &Shared, body: &[u8], correlation: &str) -> Reply {
    let Ok(Value::Object(query)) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "The query must be a JSON object",
            correlation,
        );
    };
    let page_size = query
        .get("pageSize")
        .and_then(Value::as_u64)
        .unwrap_or(25)
        .clamp(1, 200) as usize;
    let data = shared.data();
    let offset = match query.get("after").and_then(Value::as_str) {
        _ if data.repeat_pages => 0,
        None => 0,
        Some(after) => match after
            .strip_prefix("c-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(offset) => offset,
            None => return error(StatusCode::BAD_REQUEST, "Invalid cursor", correlation),
        },
    };
    let entities: Vec<Value> = data
        .workitems
        .iter()
        .skip(offset)
        .take(page_size)
        .cloned()
        .collect();
    let next = offset + entities.len();
    let mut page = json!({"entities": entities, "count": entities.len()});
    if next < data.workitems.len()
        && let Value::Object(map) = &mut page
    {
        map.insert("after".into(), Value::String(format!("c-{next}")));
    }
    json_reply(StatusCode::OK, &page)
}

fn field<'a>(value: &'a Value, name: &str) -> &'a str {
    value.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// The client id and secret of a `Basic` header, as RFC 6749 section 2.3.1 has them: base64 of `id:secret`,
/// each part form-encoded.
fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    let encoded = header.strip_prefix(b"Basic ")?;
    let decoded = BASE64.decode(encoded).ok()?;
    let pair = std::str::from_utf8(&decoded).ok()?;
    let (id, secret) = pair.split_once(':')?;
    let form_decode = |part: &str| {
        percent_decode_str(&part.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    Some((form_decode(id), form_decode(secret)))
}

fn parse_query(query: &str) -> HashMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// A path segment, percent-decoded (`+` is a plus sign in a path).
fn percent_decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// A UUID-shaped random id, as Genesys correlation ids look.
fn correlation_id() -> String {
    let n: u128 = rand::rng().random();
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}
