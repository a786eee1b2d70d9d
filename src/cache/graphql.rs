//! GraphQL over HTTP: which `POST` bodies are queries, for
//! [`query_when`](super::RedisCacheLayerBuilder::query_when).
//!
//! A GraphQL API takes its queries and its mutations at one URI, both as a `POST`. [`is_query`] reads a request
//! body (JSON `{"query": ...}`, a batch of them, or the document itself, as `application/graphql` sends it) and
//! says whether every operation in it is a `query`. Anything else (a `mutation`, a `subscription`, a document
//! that does not read as one, a persisted query sent as a hash alone) is not, so that the layer never caches it
//! and counts its success as a write.
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
//!     .build()?;
//!
//! assert!(graphql::is_query(br#"{"query": "query Items { items { id } }"}"#));
//! assert!(graphql::is_query(b"{ items { id } }"));
//! assert!(!graphql::is_query(br#"{"query": "mutation { add(id: 1) { id } }"}"#));
//! # Ok::<_, tower_redis_cache::error::ConfigError>(())
//! ```

use serde::Deserialize;
use std::borrow::Cow;

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
}
