//! A request body member that answers repeat (JSON-RPC's `id`), for
//! [`echo_body_field`](super::RedisCacheLayerBuilder::echo_body_field): found in a request's JSON body, and set
//! in an answer that another request's origin call made.

use super::body::ResponseBody;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, ETAG, HeaderName};
use http::{HeaderValue, Response};
use std::ops::Range;

/// Fields that describe an answer's exact bytes, which setting a member changes.
const BYTE_FIELDS: [&str; 4] = ["content-digest", "repr-digest", "digest", "content-md5"];

/// Nesting deeper than this is no JSON this reads (as the key's canonicaliser, so hostile input cannot make it
/// work without end).
const MAX_DEPTH: usize = 128;

/// Where the value of the top-level member `name` of the JSON object `json` is, as written. `None` when `json`
/// is no JSON object, has no such member, or has it twice (which one counts is the reader's choice).
pub(crate) fn member_value(json: &[u8], name: &str) -> Option<Range<usize>> {
    let mut scan = Scan { json, pos: 0 };
    scan.ws();
    scan.byte(b'{')?;
    scan.ws();
    let mut found = None;
    if scan.peek() == Some(b'}') {
        scan.pos += 1;
    } else {
        loop {
            scan.ws();
            let key = scan.string()?;
            scan.ws();
            scan.byte(b':')?;
            scan.ws();
            let start = scan.pos;
            scan.value(0)?;
            if key_is(&json[key], name) {
                if found.is_some() {
                    return None;
                }
                found = Some(start..scan.pos);
            }
            scan.ws();
            match scan.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
    }
    scan.ws();
    (scan.pos == json.len()).then_some(found?)
}

/// Whether the JSON string `quoted` (quotes included) is `name`.
fn key_is(quoted: &[u8], name: &str) -> bool {
    let raw = &quoted[1..quoted.len() - 1];
    if raw.contains(&b'\\') {
        serde_json::from_slice::<String>(quoted).is_ok_and(|key| key == name)
    } else {
        raw == name.as_bytes()
    }
}

/// `response` with its body's top-level member `name` set to `value` (JSON, as the request wrote it), when its
/// complete body holds the member with another value: an answer another request's origin call made (a hit, a
/// stale or coalesced answer, stale-if-error, or the stored answer a `304` confirmed). Its `Content-Length`
/// follows; `ETag` and the digests of its bytes go, since they described other bytes. The request's own origin
/// call answered with its own value: nothing changes.
pub(crate) fn echoed<B>(
    name: &str,
    value: &[u8],
    response: Response<ResponseBody<B>>,
) -> Response<ResponseBody<B>> {
    let Some(body) = response.body().full_bytes() else {
        return response;
    };
    let Some(span) = member_value(&body, name) else {
        return response;
    };
    if body[span.clone()] == *value {
        return response;
    }
    let mut set = BytesMut::with_capacity(body.len() - span.len() + value.len());
    set.extend_from_slice(&body[..span.start]);
    set.extend_from_slice(value);
    set.extend_from_slice(&body[span.end..]);
    let body: Bytes = set.freeze();
    let (mut parts, _old) = response.into_parts();
    if parts.headers.contains_key(CONTENT_LENGTH) {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    parts.headers.remove(ETAG);
    for name in BYTE_FIELDS {
        parts.headers.remove(HeaderName::from_static(name));
    }
    Response::from_parts(parts, ResponseBody::full(body))
}

/// A cursor over JSON text that checks its structure as it skips it.
struct Scan<'a> {
    json: &'a [u8],
    pos: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.json.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn byte(&mut self, expected: u8) -> Option<()> {
        (self.next()? == expected).then_some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Skips a string, returning where it is, quotes included.
    fn string(&mut self) -> Option<Range<usize>> {
        let start = self.pos;
        self.byte(b'"')?;
        loop {
            match self.next()? {
                b'"' => return Some(start..self.pos),
                b'\\' => {
                    self.next()?;
                }
                0x00..=0x1f => return None,
                _ => {}
            }
        }
    }

    /// Skips one value at `depth`.
    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.container(b'}', depth, true),
            b'[' => self.container(b']', depth, false),
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'n' => self.word(b"null"),
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
                serde_json::from_slice::<serde::de::IgnoredAny>(&self.json[start..self.pos])
                    .ok()
                    .map(drop)
            }
            _ => None,
        }
    }

    fn word(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.json.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// Skips an object (`keyed`) or an array, its opening bracket at `pos`, up to its `close`.
    fn container(&mut self, close: u8, depth: usize, keyed: bool) -> Option<()> {
        self.pos += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.pos += 1;
            return Some(());
        }
        loop {
            self.ws();
            if keyed {
                self.string()?;
                self.ws();
                self.byte(b':')?;
                self.ws();
            }
            self.value(depth + 1)?;
            self.ws();
            match self.next()? {
                b',' => {}
                byte if byte == close => return Some(()),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_the_value_of_a_top_level_member_as_written() {
        let value = |json: &str, name: &str| {
            member_value(json.as_bytes(), name).map(|r| json[r].to_owned())
        };
        let call = r#"{"jsonrpc": "2.0", "method": "eth_call", "params": [{"id": 9}], "id": 17}"#;
        assert_eq!(value(call, "id").as_deref(), Some("17"));
        assert_eq!(value(call, "params").as_deref(), Some(r#"[{"id": 9}]"#));
        assert_eq!(
            value(r#" { "id" : "a-\"1\"" } "#, "id").as_deref(),
            Some(r#""a-\"1\"""#)
        );
        assert_eq!(value(r#"{"\u0069d": null}"#, "id").as_deref(), Some("null"));
        assert_eq!(
            value(r#"{"result": {"id": 3}, "id": -1.5e3}"#, "id").as_deref(),
            Some("-1.5e3")
        );
        for none in [
            r#"{"result": {"id": 3}}"#,
            r#"[{"id": 1}]"#,
            r#"{"id": 1, "id": 2}"#,
            r#"{"id": 1"#,
            r#"{"id": 1} x"#,
            r#"{"id": 01x}"#,
            r#"{"id": tru}"#,
            r#"{"a": [1, 2}, "id": 1}"#,
            "{\"id\": \"a\u{1}\"}",
            "",
            "id",
        ] {
            assert_eq!(value(none, "id"), None, "{none}");
        }
    }

    proptest! {
        // Any bytes get an answer, never a panic; a span found is within the input.
        #[test]
        fn reads_any_bytes_without_panicking(json in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(span) = member_value(&json, "id") {
                prop_assert!(span.end <= json.len());
            }
        }
    }
}
