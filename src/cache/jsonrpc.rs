//! JSON-RPC over HTTP: which calls are reads, for [`query_when`](super::RedisCacheLayerBuilder::query_when),
//! and which answers are results rather than errors, for
//! [`store_when`](super::RedisCacheLayerBuilder::store_when).
//!
//! A JSON-RPC server takes every call at one URI, as a `POST`, and answers an error inside a `200` (an Ethereum
//! node that is behind answers `header not found` for a block it has not seen yet). With
//! [`echo_body_field("id")`](super::RedisCacheLayerBuilder::echo_body_field), the reads a layer caches are
//! shared by clients however they number their calls.
//!
//! # Example
//!
//! ```
//! use http::Method;
//! use tower_redis_cache::cache::jsonrpc;
//! use tower_redis_cache::{MemoryStore, RedisCacheLayer};
//!
//! const READS: &[&str] = &["eth_chainId", "eth_getCode", "eth_getBlockByNumber"];
//! let layer = RedisCacheLayer::builder(MemoryStore::new(64 << 20))
//!     .methods([Method::POST])
//!     .query_when(|_, body| jsonrpc::only_calls_to(body, READS))
//!     .store_when(|_, _, body| jsonrpc::is_success(body))
//!     .echo_body_field("id")
//!     .build()?;
//!
//! assert!(jsonrpc::only_calls_to(br#"{"jsonrpc": "2.0", "method": "eth_chainId", "id": 1}"#, READS));
//! assert!(!jsonrpc::only_calls_to(br#"{"jsonrpc": "2.0", "method": "eth_sendRawTransaction", "id": 2}"#, READS));
//! assert!(jsonrpc::is_success(br#"{"jsonrpc": "2.0", "result": "0x1", "id": 1}"#));
//! let behind = br#"{"jsonrpc": "2.0", "error": {"code": -32000, "message": "header not found"}, "id": 1}"#;
//! assert!(!jsonrpc::is_success(behind));
//! # Ok::<_, tower_redis_cache::error::ConfigError>(())
//! ```

use super::batch::one_or_batch;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Whether a JSON-RPC request body holds only calls to `methods`: a JSON object whose `method` is one of them,
/// or a non-empty JSON array (a batch) of such objects. A body this cannot read is none.
pub fn only_calls_to(body: &[u8], methods: &[&str]) -> bool {
    one_or_batch(body, |call: &Call<'_>| {
        call.method
            .as_deref()
            .is_some_and(|method| methods.contains(&method))
    })
}

/// Whether a JSON-RPC response body is a result, not an error: a JSON object with a `result` member (of any
/// value, `null` included) and no `error` (or a `null` one), or a non-empty JSON array (a batch's answer) of
/// such objects. A body this cannot read (another shape, one still compressed) is no success: with feature
/// `decompress`, `store_when` is given a compressed answer decoded.
pub fn is_success(body: &[u8]) -> bool {
    one_or_batch(body, |reply: &Reply| reply.result && !reply.error)
}

/// One call, reduced to its method; read from a JSON object only (a derived `Deserialize` would take an array
/// for the struct's fields in order).
struct Call<'a> {
    method: Option<Cow<'a, str>>,
}

impl<'de> Deserialize<'de> for Call<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CallVisitor;
        impl<'de> Visitor<'de> for CallVisitor {
            type Value = Call<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON-RPC call object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Call<'de>, A::Error> {
                let mut method = None;
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    if name == "method" {
                        // A second `method` makes the call ambiguous: no method at all.
                        if method.is_some() {
                            return Err(de::Error::duplicate_field("method"));
                        }
                        method = Some(map.next_value::<Cow<'de, str>>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Call { method })
            }
        }
        deserializer.deserialize_map(CallVisitor)
    }
}

/// One answer, reduced to whether it holds a `result` and a non-`null` `error`; read from a JSON object only.
struct Reply {
    result: bool,
    error: bool,
}

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ReplyVisitor;
        impl<'de> Visitor<'de> for ReplyVisitor {
            type Value = Reply;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON-RPC response object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Reply, A::Error> {
                let (mut result, mut error) = (false, false);
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    match &*name {
                        "result" => {
                            map.next_value::<IgnoredAny>()?;
                            result = true;
                        }
                        "error" => error = map.next_value::<Option<IgnoredAny>>()?.is_some(),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Reply { result, error })
            }
        }
        deserializer.deserialize_map(ReplyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const READS: &[&str] = &["eth_call", "eth_getBalance"];

    #[test]
    fn calls_to_the_methods_named_are_reads() {
        for (body, read) in [
            (&br#"{"jsonrpc": "2.0", "method": "eth_call", "params": [{}, "latest"], "id": 1}"#[..], true),
            (br#"{"method": "eth_g\u0065tBalance", "id": "a"}"#, true),
            (br#"[{"method": "eth_call", "id": 1}, {"method": "eth_getBalance", "id": 2}]"#, true),
            (br#"{"method": "eth_sendRawTransaction", "params": ["0x"], "id": 1}"#, false),
            (br#"[{"method": "eth_call", "id": 1}, {"method": "eth_sendRawTransaction", "id": 2}]"#, false),
            (br#"{"method": "eth_call", "method": "eth_sendRawTransaction"}"#, false),
            (br#"{"params": [], "id": 1}"#, false),
            (br#"{"method": 7}"#, false),
            (br#"[["eth_call"]]"#, false),
            (br#"[]"#, false),
            (b"eth_call", false),
            (b"", false),
        ] {
            assert_eq!(only_calls_to(body, READS), read, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn results_are_successes_and_errors_are_not() {
        for (body, success) in [
            (&br#"{"jsonrpc": "2.0", "result": "0x1", "id": 1}"#[..], true),
            (br#"{"jsonrpc": "2.0", "result": null, "id": 1}"#, true),
            (br#"{"jsonrpc": "2.0", "result": {"a": [1]}, "error": null, "id": 1}"#, true),
            (br#"[{"result": 1, "id": 1}, {"result": 2, "id": 2}]"#, true),
            (br#"{"jsonrpc": "2.0", "error": {"code": -32000, "message": "header not found"}, "id": 1}"#, false),
            (br#"{"result": 1, "error": {"code": 1}, "id": 1}"#, false),
            (br#"[{"result": 1, "id": 1}, {"error": {"code": 1}, "id": 2}]"#, false),
            (br#"{"jsonrpc": "2.0", "id": 1}"#, false),
            (br#"[[1]]"#, false),
            (br#"[]"#, false),
            (b"\x1f\x8b\x08\x00", false),
            (br#"{"result": 1"#, false),
        ] {
            assert_eq!(is_success(body), success, "{}", String::from_utf8_lossy(body));
        }
    }

    proptest! {
        // Any bytes get an answer, never a panic.
        #[test]
        fn reads_any_bytes_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = only_calls_to(&body, READS);
            let _ = is_success(&body);
        }
    }
}
