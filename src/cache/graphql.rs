//! GraphQL over HTTP: which `POST` bodies are queries, for
//! [`query_when`](super::RedisCacheLayerBuilder::query_when), and which answers hold no errors, for
//! [`store_when`](super::RedisCacheLayerBuilder::store_when).
//!
//! A GraphQL API takes its queries and its mutations at one URI, both as a `POST`. [`is_query`] reads a request
//! body (JSON `{"query": ...}`, a batch of them, or the document itself, as `application/graphql` sends it) and
//! says whether every operation in it is a `query`. Anything else (a `mutation`, a `subscription`, a document
//! that does not read as one, a persisted query sent as a hash alone) is not, so that the layer never caches it
//! and counts its success as a write.
//!
//! A GraphQL server reports most errors inside a `200`: a resolver that timed out, a backend that was down, a
//! rate limit, beside partial `data` or in place of it. [`is_success`] says whether an answer holds `data` and
//! no `errors`, so that the layer stores only those.
//!
//! # Example
//!
//! ```
//! use http::Method;
//! use tower_redis_cache::cache::graphql;
//! use tower_redis_cache::{MemoryStore, RedisCacheLayer};
//!
//! let layer = RedisCacheLayer::builder(MemoryStore::new(64 << 20))
//!     .methods([Method::GET, Method::POST])
//!     .query_when(|_, body| graphql::is_query(body))
//!     .store_when(|_, _, body| graphql::is_success(body))
//!     .build()?;
//!
//! assert!(graphql::is_query(br#"{"query": "query Items { items { id } }"}"#));
//! assert!(graphql::is_query(b"{ items { id } }"));
//! assert!(!graphql::is_query(br#"{"query": "mutation { add(id: 1) { id } }"}"#));
//!
//! assert!(graphql::is_success(br#"{"data": {"items": [{"id": 1}]}}"#));
//! assert!(!graphql::is_success(br#"{"data": {"items": null}, "errors": [{"message": "timed out"}]}"#));
//! # Ok::<_, tower_redis_cache::error::ConfigError>(())
//! ```

use super::batch::one_or_batch;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Whether a GraphQL request body holds only `query` operations: a JSON object whose `query` is such a document,
/// a non-empty JSON array (a batch) of them, or, when the body is not JSON, the document itself.
///
/// Every operation counts, not only the one `operationName` selects: a document that also holds a mutation is no
/// query. A body this cannot read is no query either.
pub fn is_query(body: &[u8]) -> bool {
    /// One GraphQL-over-HTTP request: only its document matters here.
    #[derive(Deserialize)]
    struct Request<'a> {
        #[serde(borrow)]
        query: Option<Cow<'a, str>>,
    }
    /// A single request, or a batch.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Body<'a> {
        #[serde(borrow)]
        One(Request<'a>),
        #[serde(borrow)]
        Batch(Vec<Request<'a>>),
    }
    let document_is_query =
        |request: &Request<'_>| request.query.as_deref().is_some_and(only_queries);
    match serde_json::from_slice::<Body<'_>>(body) {
        Ok(Body::One(request)) => document_is_query(&request),
        Ok(Body::Batch(batch)) => !batch.is_empty() && batch.iter().all(document_is_query),
        // Not JSON at all: the document itself (`application/graphql`). JSON of another shape is no request.
        Err(error) if error.is_syntax() || error.is_eof() => {
            std::str::from_utf8(body).is_ok_and(only_queries)
        }
        Err(_) => false,
    }
}

/// Whether a GraphQL response body (GraphQL over HTTP, `application/json` or `application/graphql-response+json`)
/// answers without errors: a JSON object whose `data` is present and not `null` and whose `errors`, if any, is
/// an empty list; or a non-empty JSON array (a batch's answer) of such objects.
///
/// Partial data beside `errors` is no success: the next call may get it whole. Neither is a body this cannot
/// read: another shape, an incremental delivery (`multipart/mixed`), or one still compressed (with feature
/// `decompress`, `store_when` is given a compressed answer decoded). The body is read once, without building a
/// tree of its values.
pub fn is_success(body: &[u8]) -> bool {
    one_or_batch(body, |answer: &Answer| answer.success)
}

/// One GraphQL answer, reduced to whether it is a success; read from a JSON object only (a derived
/// `Deserialize` would take an array for the struct's fields in order).
struct Answer {
    success: bool,
}

impl<'de> Deserialize<'de> for Answer {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(AnswerVisitor)
    }
}

struct AnswerVisitor;

impl<'de> Visitor<'de> for AnswerVisitor {
    type Value = Answer;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a GraphQL response object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Answer, A::Error> {
        let (mut data, mut errors) = (false, false);
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            match &*name {
                "data" => data = map.next_value::<Option<IgnoredAny>>()?.is_some(),
                // A list of ignored values allocates nothing; its length is all that counts.
                "errors" => {
                    errors = map
                        .next_value::<Option<Vec<IgnoredAny>>>()?
                        .is_some_and(|list| !list.is_empty());
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Answer {
            success: data && !errors,
        })
    }
}

/// Whether a GraphQL document holds at least one operation and every operation in it is a `query` (named, or
/// the `{ ... }` shorthand); fragments may sit beside them. Read token by token at the top level, skipping
/// strings, block strings and comments, so that a `mutation` inside a string or a field name is no operation;
/// unbalanced brackets, an unterminated string or any other top-level definition make it no query.
fn only_queries(document: &str) -> bool {
    let bytes = document.as_bytes();
    let mut i = 0;
    // Depth of `{`, `(` and `[` together; at 0, between definitions when `starting`.
    let mut depth = 0usize;
    let mut starting = true;
    let mut operations = 0usize;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'#' => {
                while bytes.get(i).is_some_and(|&b| b != b'\n' && b != b'\r') {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                // A block string ends at the first `"""` not escaped as `\"""`.
                i += 3;
                loop {
                    match bytes.get(i) {
                        None => return false,
                        Some(b'\\') if bytes[i + 1..].starts_with(b"\"\"\"") => i += 4,
                        Some(b'"') if bytes[i..].starts_with(b"\"\"\"") => break i += 3,
                        Some(_) => i += 1,
                    }
                }
            }
            b'"' => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None | Some(b'\n' | b'\r') => return false,
                        Some(b'\\') => i += 2,
                        Some(b'"') => break i += 1,
                        Some(_) => i += 1,
                    }
                }
            }
            b'{' | b'(' | b'[' => {
                if depth == 0 && starting {
                    // Only a selection set may open a definition: the shorthand of a query.
                    if byte != b'{' {
                        return false;
                    }
                    operations += 1;
                    starting = false;
                }
                depth += 1;
                i += 1;
            }
            b'}' | b')' | b']' => {
                let Some(outer) = depth.checked_sub(1) else {
                    return false;
                };
                depth = outer;
                // A definition ends with its selection set.
                starting |= depth == 0 && byte == b'}';
                i += 1;
            }
            b'_' | b'A'..=b'Z' | b'a'..=b'z' => {
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|&b| b == b'_' || b.is_ascii_alphanumeric())
                {
                    i += 1;
                }
                if depth == 0 && starting {
                    match &document[start..i] {
                        "query" => operations += 1,
                        "fragment" => {}
                        // `mutation`, `subscription`, or no executable definition at all.
                        _ => return false,
                    }
                    starting = false;
                }
            }
            // White space, commas, punctuators, numbers, a byte order mark: nothing that starts a definition.
            _ => i += 1,
        }
    }
    depth == 0 && operations > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Any text, however broken, gets an answer, never a panic; after a mutation, nothing makes a query.
        #[test]
        fn reads_any_text_without_panicking(text in "[{}()\\[\\]\"#\\\\a-z ,\n]{0,48}") {
            let _ = is_query(text.as_bytes());
            let after_a_mutation = format!("mutation {{ b }}\n{text}");
            prop_assert!(!only_queries(&after_a_mutation));
        }
    }

    #[test]
    fn documents_of_queries_only_are_queries() {
        for (document, query) in [
            ("{ items { id } }", true),
            ("query { items { id } }", true),
            (
                "query Items($first: Int = 10, $f: In = {a: [1, 2]}) @live { items(first: $first) { id } }",
                true,
            ),
            ("fragment F on Item { id } query Q { items { ...F } }", true),
            ("query A { a } query B { b }", true),
            (
                "# mutation in a comment\n{ a(note: \"mutation { x }\") }",
                true,
            ),
            ("{ a(note: \"\"\"a \\\"\"\" mutation { x }\"\"\") }", true),
            ("{ mutation subscription }", true),
            ("\u{feff}  ,, { a }", true),
            ("mutation { add { id } }", false),
            ("subscription { ticks }", false),
            ("query A { a } mutation B { b }", false),
            ("fragment F on Item { id }", false),
            ("type Query { a: Int }", false),
            ("{ a ", false),
            ("{ a } }", false),
            ("{ a(note: \"unterminated) }", false),
            ("{ a(note: \"\"\"unterminated) }", false),
            ("($a: Int) { a }", false),
            ("", false),
        ] {
            assert_eq!(only_queries(document), query, "{document}");
        }
    }

    #[test]
    fn bodies_are_read_as_json_requests_batches_or_documents() {
        for (body, query) in [
            (
                &br#"{"query": "{ a }", "variables": {"x": 1}, "operationName": null}"#[..],
                true,
            ),
            (br#"{"query": "query Q { a }\n"}"#, true),
            (br#"[{"query": "{ a }"}, {"query": "query { b }"}]"#, true),
            (b"query Q { a }", true),
            (b"{ a }", true),
            (br#"{"query": "mutation { a }"}"#, false),
            (
                br#"[{"query": "{ a }"}, {"query": "mutation { b }"}]"#,
                false,
            ),
            (br#"[]"#, false),
            // A persisted query sent as its hash alone: which operation it is cannot be told.
            (
                br#"{"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "ab"}}}"#,
                false,
            ),
            (br#"{"query": 7}"#, false),
            (br#""{ a }""#, false),
            (b"\xff{ a }", false),
        ] {
            assert_eq!(is_query(body), query, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn answers_with_data_and_no_errors_are_successes() {
        for (body, success) in [
            (&br#"{"data": {"items": [{"id": 1}]}}"#[..], true),
            (
                br#" {"data": {"a": 1}, "errors": [], "extensions": {"cost": 3}}"#,
                true,
            ),
            (br#"{"errors": null, "data": {"a": 1}}"#, true),
            (br#"{"d\u0061ta": {"a": 1}}"#, true),
            (br#"[{"data": {"a": 1}}, {"data": {"b": 2}}]"#, true),
            // Partial data, errors alone, no data at all.
            (
                br#"{"data": {"a": null}, "errors": [{"message": "timed out", "path": ["a"]}]}"#,
                false,
            ),
            (br#"{"errors": [{"message": "rate limited"}]}"#, false),
            (br#"{"data": null, "errors": [{"message": "down"}]}"#, false),
            (br#"{"data": null}"#, false),
            (br#"{}"#, false),
            (br#"{"extensions": {"data": 1}}"#, false),
            // One failed answer in a batch, an empty batch, arrays in place of objects.
            (
                br#"[{"data": {"a": 1}}, {"errors": [{"message": "x"}]}]"#,
                false,
            ),
            (br#"[]"#, false),
            (br#"[["data", 1]]"#, false),
            (br#"[{"data": {"a": 1}}, 7]"#, false),
            // Not JSON, or not all of it: an incremental delivery, a compressed body, a truncated one.
            (
                b"--graphql\r\nContent-Type: application/json\r\n\r\n{\"data\": {}}",
                false,
            ),
            (b"\x1f\x8b\x08\x00", false),
            (br#"{"data": {"a": 1}"#, false),
            (br#"{"data": {"a": 1}} {"errors": [1]}"#, false),
            (
                br#"{"data": 1, "errors": {"message": "not a list"}}"#,
                false,
            ),
            (b"", false),
        ] {
            assert_eq!(
                is_success(body),
                success,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    proptest! {
        // Any bytes get an answer, never a panic.
        #[test]
        fn reads_any_answer_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = is_success(&body);
        }
    }
}
