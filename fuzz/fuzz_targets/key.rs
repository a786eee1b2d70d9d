//! The cache key of two requests that differ in their query and body spellings: one key must mean one request.
//!
//! Each request's query is built from parameters spelled in several ways (percent-encoded or not, in any order),
//! and its body is a JSON tree written in several ways (whitespace, escapes, member order), or raw bytes. Two
//! requests the layer gives one key must be one request to a server: the same values for each decoded
//! parameter name, in their order, and the same JSON (members compared as a map, numbers as written, strings as
//! decoded) or the same bytes, sent gzipped (`Content-Encoding: gzip`, which the layer reads decoded) or not,
//! both. And two spellings of one JSON body with one query must share a key, as the crate promises
//! (`{"b":2,"a":1}` is `{"a":1,"b":2}`), gzipped as well.

#![no_main]

use arbitrary::Arbitrary;
use http::Request;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::fmt::Write;
use tower_redis_cache::{MemoryStore, RedisCacheLayer};

const NAMES: &[&str] = &["a", "b", "sort", "a b", "&", "é"];
const VALUES: &[&str] = &["1", "2", "", "x y", "=", "&", "%", "+", "é"];
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "1.0",
    "1e2",
    "1E2",
    "100",
    "-1",
    "0.5",
    "1e400",
    "1e401",
    "12345678901234567890",
];
const KEYS: &[&str] = &[
    "a",
    "b",
    "A",
    "",
    "é",
    "a\u{0}",
    "\u{1F600}",
    "/",
    "\"",
    "\\",
];

#[derive(Arbitrary, Debug, Clone)]
struct Param {
    name: u8,
    value: Option<u8>,
    /// 0: as is (reserved characters encoded); 1: every byte percent-encoded; 2: `+` for a space.
    name_spelling: u8,
    value_spelling: u8,
}

#[derive(Arbitrary, Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Number(u8),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(u8, Json)>),
}

/// How a tree is written: the whitespace between tokens, how characters of strings are escaped, and the order
/// of object members.
#[derive(Arbitrary, Debug, Clone)]
struct Style {
    space: u8,
    escapes: u8,
    rotate: u8,
}

#[derive(Arbitrary, Debug)]
enum Body {
    None,
    Json(Json, Style),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Side {
    query: Vec<Param>,
    body: Body,
    /// The body is sent gzipped.
    gzip: bool,
}

/// The second request: any, or the first's parameters moved around and spelled anew (where a sort could go
/// wrong), with the first's body or another.
#[derive(Arbitrary, Debug)]
enum Other {
    Any(Side),
    Moved {
        rotate: u8,
        reverse: bool,
        spellings: Vec<(u8, u8)>,
        body: Option<Body>,
        /// Sent gzipped or not, as the first is unless this says.
        gzip: Option<bool>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    a: Side,
    b: Other,
    /// Also ask for the key of `a` written in another style, with `a`'s query reordered per name.
    restyle: Option<Style>,
}

fn encode(s: &str, spelling: u8) -> String {
    let mut out = String::new();
    for &byte in s.as_bytes() {
        let c = byte as char;
        match spelling % 3 {
            1 => write!(out, "%{byte:02X}").unwrap_or_default(),
            2 if c == ' ' => out.push('+'),
            _ if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) => out.push(c),
            _ => write!(out, "%{byte:02X}").unwrap_or_default(),
        }
    }
    out
}

fn query(params: &[Param]) -> String {
    let mut q = String::new();
    for (i, p) in params.iter().take(8).enumerate() {
        if i > 0 {
            q.push('&');
        }
        q.push_str(&encode(
            NAMES[p.name as usize % NAMES.len()],
            p.name_spelling,
        ));
        if let Some(v) = p.value {
            q.push('=');
            q.push_str(&encode(VALUES[v as usize % VALUES.len()], p.value_spelling));
        }
    }
    q
}

/// A query as a server reads it: each decoded name's values, in their order.
fn meaning(query: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        m.entry(name.into_owned())
            .or_default()
            .push(value.into_owned());
    }
    m
}

fn space(out: &mut String, style: &Style, at: usize) {
    match (style.space as usize + at) % 4 {
        1 => out.push(' '),
        2 => out.push_str("\n\t"),
        3 => out.push_str(" \r\n"),
        _ => {}
    }
}

fn write_string(out: &mut String, s: &str, style: &Style) {
    out.push('"');
    for (i, c) in s.chars().enumerate() {
        let escape = (style.escapes as usize + i) % 3;
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if escape == 1 => out.push_str("\\/"),
            '\n' if escape != 2 => out.push_str("\\n"),
            c if (c as u32) < 0x20 || escape == 2 => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").unwrap_or_default();
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(out: &mut String, j: &Json, style: &Style, depth: usize) {
    space(out, style, out.len());
    match j {
        _ if depth > 8 => out.push_str("null"),
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(NUMBERS[*n as usize % NUMBERS.len()]),
        Json::String(s) => write_string(out, s, style),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().take(6).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item, style, depth + 1);
            }
            space(out, style, out.len());
            out.push(']');
        }
        Json::Object(members) => {
            out.push('{');
            let members: Vec<_> = members.iter().take(6).collect();
            let n = members.len().max(1);
            for i in 0..members.len() {
                let (k, v) = members[(i + style.rotate as usize) % n];
                if i > 0 {
                    out.push(',');
                }
                space(out, style, out.len());
                write_string(out, KEYS[*k as usize % KEYS.len()], style);
                space(out, style, out.len());
                out.push(':');
                write_json(out, v, style, depth + 1);
            }
            space(out, style, out.len());
            out.push('}');
        }
    }
    space(out, style, out.len());
}

/// What a JSON tree means: members as a map, numbers as written, strings decoded. `None` when an object holds
/// a key twice (its meaning is whatever a parser makes of it, so the crate hashes such a body's bytes).
#[derive(PartialEq, Debug)]
enum Meaning {
    Null,
    Bool(bool),
    Number(&'static str),
    String(String),
    Array(Vec<Meaning>),
    Object(BTreeMap<&'static str, Meaning>),
}

fn meaning_of(j: &Json, depth: usize) -> Option<Meaning> {
    Some(match j {
        _ if depth > 8 => Meaning::Null,
        Json::Null => Meaning::Null,
        Json::Bool(b) => Meaning::Bool(*b),
        Json::Number(n) => Meaning::Number(NUMBERS[*n as usize % NUMBERS.len()]),
        Json::String(s) => Meaning::String(s.clone()),
        Json::Array(items) => Meaning::Array(
            items
                .iter()
                .take(6)
                .map(|i| meaning_of(i, depth + 1))
                .collect::<Option<_>>()?,
        ),
        Json::Object(members) => {
            let mut m = BTreeMap::new();
            for (k, v) in members.iter().take(6) {
                if m.insert(KEYS[*k as usize % KEYS.len()], meaning_of(v, depth + 1)?)
                    .is_some()
                {
                    return None;
                }
            }
            Meaning::Object(m)
        }
    })
}

fn body_bytes(body: &Body) -> (Vec<u8>, bool) {
    match body {
        Body::None => (Vec::new(), false),
        Body::Json(j, style) => {
            let mut out = String::new();
            write_json(&mut out, j, style, 0);
            (out.into_bytes(), true)
        }
        Body::Raw(bytes) => (bytes.clone(), false),
    }
}

fn request(query: &str, body: Vec<u8>, json: bool, gzip: bool) -> Option<Request<Vec<u8>>> {
    let uri = if query.is_empty() {
        "http://api.test/q".to_owned()
    } else {
        format!("http://api.test/q?{query}")
    };
    let mut r = Request::post(uri);
    if json {
        r = r.header("content-type", "application/json");
    }
    if !gzip {
        return r.body(body).ok();
    }
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&body).ok()?;
    r.header("content-encoding", "gzip")
        .body(encoder.finish().ok()?)
        .ok()
}

fuzz_target!(|input: Input| {
    let Ok(cache) = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .methods([http::Method::POST])
        .build()
    else {
        return;
    };
    let handle = cache.handle();
    let b = match input.b {
        Other::Any(side) => side,
        Other::Moved {
            rotate,
            reverse,
            spellings,
            body,
            gzip,
        } => {
            let mut query = input.a.query.clone();
            if reverse {
                query.reverse();
            }
            if !query.is_empty() {
                let n = rotate as usize % query.len();
                query.rotate_left(n);
            }
            for (param, (name, value)) in query.iter_mut().zip(spellings) {
                param.name_spelling = name;
                param.value_spelling = value;
            }
            let body = body.unwrap_or_else(|| match &input.a.body {
                Body::None => Body::None,
                Body::Json(j, style) => Body::Json(j.clone(), style.clone()),
                Body::Raw(bytes) => Body::Raw(bytes.clone()),
            });
            let gzip = gzip.unwrap_or(input.a.gzip);
            Side { query, body, gzip }
        }
    };
    let (qa, qb) = (query(&input.a.query), query(&b.query));
    let ((ba, ja), (bb, jb)) = (body_bytes(&input.a.body), body_bytes(&b.body));
    let (za, zb) = (input.a.gzip, b.gzip);
    let (Some(ra), Some(rb)) = (
        request(&qa, ba.clone(), ja, za),
        request(&qb, bb.clone(), jb, zb),
    ) else {
        return;
    };
    let (ka, kb) = (handle.key_for(&ra), handle.key_for(&rb));
    if ka == kb {
        assert_eq!(
            za, zb,
            "one key for a body sent gzipped and one sent as it is"
        );
        assert_eq!(
            meaning(&qa),
            meaning(&qb),
            "one key for two queries: {qa:?} and {qb:?}"
        );
        let same_body = match (&input.a.body, &b.body) {
            (Body::Json(x, _), Body::Json(y, _)) => match (meaning_of(x, 0), meaning_of(y, 0)) {
                (Some(x), Some(y)) => x == y,
                _ => ba == bb,
            },
            _ => ja == jb && ba == bb,
        };
        assert!(
            same_body,
            "one key for two bodies: {:?} and {:?}",
            String::from_utf8_lossy(&ba),
            String::from_utf8_lossy(&bb)
        );
    }
    // One JSON tree in another style, with the same query: one key.
    if let (Some(style), Body::Json(j, _)) = (&input.restyle, &input.a.body)
        && meaning_of(j, 0).is_some()
    {
        let mut other = String::new();
        write_json(&mut other, j, style, 0);
        if let Some(r) = request(&qa, other.clone().into_bytes(), true, za) {
            assert!(
                handle.key_for(&r) == ka,
                "two keys for one JSON body: {:?} and {other:?}",
                String::from_utf8_lossy(&ba)
            );
        }
    }
});
