//! A request body member that answers repeat (JSON-RPC's `id`), for
//! [`echo_body_field`](super::RedisCacheLayerBuilder::echo_body_field): found in a request's JSON body (an
//! object, or each object of a batch), and set in an answer that another request's origin call made.

use super::body::ResponseBody;
use super::status::CacheOutcome;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, ETAG, HeaderName};
use http::{HeaderValue, Response};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Range;

/// Fields that describe an answer's exact bytes, which setting a member changes.
pub(crate) const BYTE_FIELDS: [&str; 4] =
    ["content-digest", "repr-digest", "digest", "content-md5"];

/// Nesting deeper than this is no JSON this reads (as the key's canonicaliser, so hostile input cannot make it
/// work without end).
const MAX_DEPTH: usize = 128;

/// A request's values of the echoed member, as written: its own, or each call's of a batch (`None` for a call
/// without one).
#[derive(Debug, Clone)]
pub(crate) enum Echoed {
    One(Bytes),
    Batch(Vec<Option<Bytes>>),
}

impl Echoed {
    /// The values of the member `name` in the request `body`, when it has any: parts of `body`.
    pub(crate) fn of(body: &Bytes, name: &str) -> Option<Echoed> {
        Self::taken(body, name, |value| body.slice(value))
    }

    /// [`of`](Self::of), the values copied out of `body`, which they then do not keep whole for as long as the
    /// request lasts (a body decoded from its `Content-Encoding`, which the origin is not sent).
    pub(crate) fn copied(body: &[u8], name: &str) -> Option<Echoed> {
        Self::taken(body, name, |value| Bytes::copy_from_slice(&body[value]))
    }

    fn taken(body: &[u8], name: &str, take: impl Fn(Range<usize>) -> Bytes) -> Option<Echoed> {
        match places(body, name)? {
            Places::One(value) => Some(Echoed::One(take(value))),
            Places::Batch(values) => Some(Echoed::Batch(
                values.into_iter().map(|value| value.map(&take)).collect(),
            )),
        }
    }

    /// For a batch, a digest of its values in order, which [`in_order`] compares an answer's with; never 0,
    /// which stands for a request that is no batch.
    pub(crate) fn order(&self) -> u64 {
        match self {
            Echoed::One(_) => 0,
            Echoed::Batch(values) => order(values.iter().map(Option::as_deref)),
        }
    }
}

/// Where the member is in a body: in its object, or in each object of its batch.
enum Places {
    One(Range<usize>),
    Batch(Vec<Option<Range<usize>>>),
}

/// Where the member `name` is in `json`: a JSON object holding it, or a JSON array of which some objects do.
fn places(json: &[u8], name: &str) -> Option<Places> {
    let start = json.iter().position(|b| !b.is_ascii_whitespace())?;
    if json[start] == b'{' {
        return member_value(json, name).map(Places::One);
    }
    let elements = elements(json)?;
    let values: Vec<Option<Range<usize>>> = elements
        .into_iter()
        .map(|element| {
            let value = member_value(&json[element.clone()], name)?;
            Some(element.start + value.start..element.start + value.end)
        })
        .collect();
    values
        .iter()
        .any(Option::is_some)
        .then_some(Places::Batch(values))
}

/// A digest of a batch's values of the member, in order (`None`: a call or an answer without one).
fn order<'a>(values: impl Iterator<Item = Option<&'a [u8]>>) -> u64 {
    let mut hasher = DefaultHasher::new();
    for value in values {
        value.hash(&mut hasher);
    }
    hasher.finish().max(1)
}

/// Whether the answer `json` to a batch is a batch whose values of the member `name` are, in order, the ones
/// whose digest is `expected`: then each of its answers is at its call's place, and another request's batch can be
/// answered from it place by place. (JSON-RPC lets a server answer a batch's calls in any order.)
pub(crate) fn in_order(json: &[u8], name: &str, expected: u64) -> bool {
    match places(json, name) {
        Some(Places::Batch(values)) => {
            order(
                values
                    .iter()
                    .map(|value| value.clone().map(|value| &json[value])),
            ) == expected
        }
        _ => false,
    }
}

/// Where the value of the top-level member `name` of the JSON object `json` is, as written. `None` when `json`
/// is no JSON object, has no such member, or has it twice (which one counts is the reader's choice).
fn member_value(json: &[u8], name: &str) -> Option<Range<usize>> {
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

/// Where each element of the JSON array `json` is. `None` when `json` is no JSON array.
fn elements(json: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut scan = Scan { json, pos: 0 };
    scan.ws();
    scan.byte(b'[')?;
    scan.ws();
    let mut elements = Vec::new();
    if scan.peek() == Some(b']') {
        scan.pos += 1;
    } else {
        loop {
            scan.ws();
            let start = scan.pos;
            scan.value(0)?;
            elements.push(start..scan.pos);
            scan.ws();
            match scan.next()? {
                b',' => {}
                b']' => break,
                _ => return None,
            }
        }
    }
    scan.ws();
    (scan.pos == json.len()).then_some(elements)
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

/// `response` with its body's member `name` set to the request's `echoed` values (JSON, as the request wrote
/// them), when its complete body holds the member with other values: an answer another request's origin call
/// made (a hit, a stale or coalesced answer, stale-if-error, or the stored answer a `304` confirmed). A batch's
/// answer is set place by place, when it has as many answers as the request has calls. Its `Content-Length`
/// follows; `ETag` and the digests of its bytes go, since they described other bytes. The request's own origin
/// call answered with its own values: nothing changes.
pub(crate) fn echoed<B>(
    name: &str,
    echoed: &Echoed,
    response: Response<ResponseBody<B>>,
) -> Response<ResponseBody<B>> {
    let Some(body) = response.body().full_bytes() else {
        return response;
    };
    // Each place of the answer, with the value the request wants there.
    let settings: Vec<(Range<usize>, &[u8])> = match (places(&body, name), echoed) {
        (Some(Places::One(place)), Echoed::One(value)) => vec![(place, &value[..])],
        (Some(Places::Batch(places)), Echoed::Batch(values)) if places.len() == values.len() => {
            places
                .into_iter()
                .zip(values)
                .filter_map(|(place, value)| Some((place?, &value.as_ref()?[..])))
                .collect()
        }
        _ => return response,
    };
    if settings
        .iter()
        .all(|(place, value)| body[place.clone()] == **value)
    {
        return response;
    }
    // An answer the origin made for this very request holds the request's values, though a batch's perhaps in
    // another order (a `304` confirms a stored answer instead, another request's, which holds other values).
    let made_for_another = matches!(
        CacheOutcome::of(&response),
        Some(
            CacheOutcome::Hit
                | CacheOutcome::Stale { .. }
                | CacheOutcome::StaleIfError
                | CacheOutcome::Miss {
                    collapsed: true,
                    ..
                }
        )
    );
    if !made_for_another && holds_the_values_of(&body, &settings) {
        return response;
    }
    let mut set = BytesMut::with_capacity(body.len() + 16 * settings.len());
    let mut from = 0;
    for (place, value) in settings {
        set.extend_from_slice(&body[from..place.start]);
        set.extend_from_slice(value);
        from = place.end;
    }
    set.extend_from_slice(&body[from..]);
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

/// Whether the values at the `settings`' places of `body` are the values the settings would write, in some order.
fn holds_the_values_of(body: &[u8], settings: &[(Range<usize>, &[u8])]) -> bool {
    let mut held: Vec<&[u8]> = settings
        .iter()
        .map(|(place, _)| &body[place.clone()])
        .collect();
    let mut wanted: Vec<&[u8]> = settings.iter().map(|(_, value)| *value).collect();
    held.sort_unstable();
    wanted.sort_unstable();
    held == wanted
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
    fn values_copied_out_of_a_body_are_its_own_and_hold_none_of_it() {
        for json in [
            &br#"{"id": 7}"#[..],
            br#"[{"id": 1}, {"x": 2}, {"id": "a"}]"#,
        ] {
            let body = Bytes::copy_from_slice(json);
            let (parts, copies) = (Echoed::of(&body, "id"), Echoed::copied(&body, "id"));
            assert_eq!(format!("{parts:?}"), format!("{copies:?}"));
            let values = match copies {
                Some(Echoed::One(value)) => vec![value],
                Some(Echoed::Batch(values)) => values.into_iter().flatten().collect(),
                None => panic!("no value"),
            };
            for value in values {
                assert!(!body.as_ptr_range().contains(&value.as_ptr()), "{value:?}");
            }
        }
    }

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
        // Empty containers skipped before the member, and the literals, skipped or read as its value.
        assert_eq!(
            value(r#"{"a": {}, "b": [ ], "id": 1}"#, "id").as_deref(),
            Some("1")
        );
        assert_eq!(
            value(r#"{"ok": true, "id": 1}"#, "id").as_deref(),
            Some("1")
        );
        assert_eq!(value(r#"{"id": false}"#, "id").as_deref(), Some("false"));
        // Values nest `MAX_DEPTH` deep, and no deeper.
        let nested =
            |depth: usize| format!(r#"{{"id": {}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
        let deepest = nested(MAX_DEPTH);
        assert_eq!(
            value(&deepest, "id").map(|v| v.len()),
            Some(2 * MAX_DEPTH + 1)
        );
        assert_eq!(value(&nested(MAX_DEPTH + 1), "id"), None);
    }

    fn answer(json: &'static str) -> Response<ResponseBody<http_body_util::Empty<Bytes>>> {
        let mut response = Response::new(ResponseBody::full(Bytes::from_static(json.as_bytes())));
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(json.len()));
        response
            .headers_mut()
            .insert(ETAG, HeaderValue::from_static("\"1\""));
        response
    }

    fn body_of(response: &Response<ResponseBody<http_body_util::Empty<Bytes>>>) -> String {
        let bytes = response.body().full_bytes().unwrap();
        assert_eq!(
            response.headers()[CONTENT_LENGTH],
            bytes.len().to_string().as_str()
        );
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn a_batch_is_set_place_by_place_and_only_when_its_answers_are_in_order() {
        let batch = Bytes::from_static(
            br#"[{"method":"a","id":7}, {"method":"b"}, {"method":"c","id":"x"}]"#,
        );
        let calls = Echoed::of(&batch, "id").unwrap();
        let Echoed::Batch(values) = &calls else {
            panic!("{calls:?}")
        };
        assert_eq!(
            values,
            &[Some(Bytes::from("7")), None, Some(Bytes::from("\"x\""))]
        );
        let order = calls.order();

        // The answer lists the calls' values in their order (the one without a value, without one): in order.
        let in_order_answer = r#"[{"result":1,"id":7},{"result":2},{"result":3,"id":"x"}]"#;
        assert!(in_order(in_order_answer.as_bytes(), "id", order));
        for other in [
            r#"[{"result":3,"id":"x"},{"result":2},{"result":1,"id":7}]"#,
            r#"[{"result":1,"id":7},{"result":3,"id":"x"}]"#,
            r#"[{"result":1,"id":7.0},{"result":2},{"result":3,"id":"x"}]"#,
            r#"{"result":1,"id":7}"#,
            "not json",
        ] {
            assert!(!in_order(other.as_bytes(), "id", order), "{other}");
        }

        // Another batch of the same calls gets the stored answers with its own values, place by place.
        let stored = r#"[{"result":1,"id":1},{"result":2},{"result":3,"id":2}]"#;
        let set = echoed(name(), &calls, answer(stored));
        assert_eq!(
            body_of(&set),
            r#"[{"result":1,"id":7},{"result":2},{"result":3,"id":"x"}]"#
        );
        assert!(!set.headers().contains_key(ETAG));
        // As many answers as calls, or none is set.
        let short = echoed(name(), &calls, answer(r#"[{"result":1,"id":1}]"#));
        assert_eq!(body_of(&short), r#"[{"result":1,"id":1}]"#);
        assert!(short.headers().contains_key(ETAG));
        // One call and one answer.
        let one = Echoed::of(&Bytes::from_static(br#"{"method":"a","id":3}"#), "id").unwrap();
        assert_eq!(one.order(), 0);
        assert_eq!(
            body_of(&echoed(name(), &one, answer(r#"{"id":1,"result":1}"#))),
            r#"{"id":3,"result":1}"#
        );
        assert_eq!(body_of(&echoed(name(), &one, answer(stored))), stored);
        // Nothing to echo: no call with the member.
        assert!(Echoed::of(&Bytes::from_static(br#"[{"method":"a"},1]"#), "id").is_none());
    }

    fn name() -> &'static str {
        "id"
    }

    proptest! {
        // Any bytes get an answer, never a panic; a span found is within the input.
        #[test]
        fn reads_any_bytes_without_panicking(json in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(span) = member_value(&json, "id") {
                prop_assert!(span.end <= json.len());
            }
            let body = Bytes::from(json);
            if let Some(echoed) = Echoed::of(&body, "id") {
                let _ = in_order(&body, "id", echoed.order());
            }
        }
    }
}
