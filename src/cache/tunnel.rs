//! Methods tunnelled through a parameter: `POST /articles/5` with `_method=DELETE` in its query or its form
//! body. Laravel (any input: query, form, multipart, JSON), Symfony with method overrides on, Rack's
//! `MethodOverride` and Express's `method-override` act on the method named, so a request the layer would cache
//! as a query may be a write. Such a request is treated as one tunnelling a method through a header
//! ([`METHOD_OVERRIDES`](super::decision::METHOD_OVERRIDES)): never cached, and when the method it names is not
//! safe, a write that removes its URI's entries. Frameworks differ in which they read first (the header, the
//! body, the query), so a write named in any of them makes the request one; and a query bypassed for another
//! reason (its credentials) has its body read all the same, within the cap.
//!
//! Names are read as PHP reads them, the laxest of these: percent-decoded in a query or a form (`+` a space),
//! leading spaces dropped, then spaces and dots as `_` (`+_method`, `.method`). A value names a method in any
//! case (`delete` is `DELETE`); one that names none is taken for an unsafe one.

use super::decision::is_safe;
use http::{HeaderMap, Method, header};
use std::borrow::Cow;

/// The parameter that tunnels a method.
const PARAMETER: &[u8] = b"_method";

/// What the `_method` parameters of a query name: `None` without one; `Some(true)` when one names a method that
/// is not safe (or none at all), `Some(false)` when all name safe ones.
pub(crate) fn in_query(query: Option<&str>) -> Option<bool> {
    query.and_then(|query| in_form(query.as_bytes()))
}

/// `uri` without the `_method` pairs of its query, if it has some: the resource a request tunnelling a method
/// through its query acts on (`/items/5?_method=DELETE` deletes `/items/5`).
pub(crate) fn untunnelled(uri: &http::Uri) -> Option<http::Uri> {
    let query = uri.query()?;
    let is_tunnel = |pair: &&str| {
        form_urlencoded::parse(pair.as_bytes())
            .next()
            .is_some_and(|(name, _)| is_parameter(name.as_bytes()))
    };
    let pairs = query.split('&').filter(|pair| !pair.is_empty());
    let kept: Vec<&str> = pairs.clone().filter(|pair| !is_tunnel(pair)).collect();
    if kept.len() == pairs.count() {
        return None;
    }
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// [`in_query`] for a request body, read by its `Content-Type`: a form (`application/x-www-form-urlencoded`),
/// `multipart/form-data`, or JSON (a member of the top-level object). `None` for any other body.
pub(crate) fn in_body(headers: &HeaderMap, body: &[u8]) -> Option<bool> {
    if body.is_empty() {
        return None;
    }
    let (kind, content_type) = kind_of(headers)?;
    match kind {
        Kind::Form => in_form(body),
        Kind::Multipart => in_multipart(content_type, body),
        Kind::Json => in_json(body),
    }
}

/// Whether the body of a request with `headers` is of a type [`in_body`] reads.
pub(crate) fn readable(headers: &HeaderMap) -> bool {
    kind_of(headers).is_some()
}

/// The body types that may carry the parameter.
enum Kind {
    Form,
    Multipart,
    Json,
}

/// The kind of body `headers` announce, with their `Content-Type`; `None` for one [`in_body`] does not read.
fn kind_of(headers: &HeaderMap) -> Option<(Kind, &str)> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let kind = if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Kind::Form
    } else if essence.eq_ignore_ascii_case("multipart/form-data") {
        Kind::Multipart
    } else if super::key::is_json_type(essence) {
        Kind::Json
    } else {
        return None;
    };
    Some((kind, content_type))
}

/// Folds one more named method into what was found so far.
fn found(so_far: Option<bool>, value: &[u8]) -> Option<bool> {
    let unsafe_method = !Method::from_bytes(value.trim_ascii().to_ascii_uppercase().as_slice())
        .is_ok_and(|method| is_safe(&method));
    Some(so_far.unwrap_or(false) | unsafe_method)
}

/// Whether `name` (decoded) is the parameter, as PHP reads names.
fn is_parameter(name: &[u8]) -> bool {
    let name = name.trim_ascii_start();
    name.len() == PARAMETER.len()
        && name
            .iter()
            .zip(PARAMETER)
            .all(|(&b, &expected)| b == expected || (expected == b'_' && (b == b' ' || b == b'.')))
}

fn in_form(pairs: &[u8]) -> Option<bool> {
    form_urlencoded::parse(pairs)
        .filter(|(name, _)| is_parameter(name.as_bytes()))
        .fold(None, |so_far, (_, value)| found(so_far, value.as_bytes()))
}

/// The parts of a `multipart/form-data` body (RFC 7578) whose `Content-Disposition` names the parameter. A body
/// that does not parse names nothing here: its origin cannot read it either.
fn in_multipart(content_type: &str, body: &[u8]) -> Option<bool> {
    let boundary = parameter(content_type, "boundary")?;
    let delimiter = [b"--".as_slice(), boundary.as_bytes()].concat();
    let mut so_far = None;
    let mut rest = body;
    // Each part follows a delimiter line; the last delimiter ends with `--`.
    while let Some(at) = find(rest, &delimiter) {
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let Some(part) = rest.strip_prefix(b"\r\n") else {
            continue;
        };
        let end = find(part, &delimiter).unwrap_or(part.len());
        let part = &part[..end];
        let Some(head_end) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let named = part[..head_end]
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                let line = std::str::from_utf8(line).ok()?.trim();
                let (field, value) = line.split_once(':')?;
                field
                    .trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then(|| parameter(value, "name"))
                    .flatten()
            })
            .any(|name| is_parameter(name.as_bytes()));
        if named {
            let content = &part[head_end + 4..];
            so_far = found(so_far, content.strip_suffix(b"\r\n").unwrap_or(content));
        }
    }
    so_far
}

/// The value of the parameter `name` (`; boundary=x`, `; name="x"`) of a header value, unquoted.
fn parameter<'a>(value: &'a str, name: &str) -> Option<Cow<'a, str>> {
    value.split(';').skip(1).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case(name) {
            return None;
        }
        let value = value.trim();
        Some(match value.strip_prefix('"') {
            Some(quoted) => {
                let quoted = quoted.strip_suffix('"').unwrap_or(quoted);
                if quoted.contains('\\') {
                    let mut unescaped = String::with_capacity(quoted.len());
                    let mut chars = quoted.chars();
                    while let Some(c) = chars.next() {
                        unescaped.push(if c == '\\' {
                            chars.next().unwrap_or(c)
                        } else {
                            c
                        });
                    }
                    Cow::Owned(unescaped)
                } else {
                    Cow::Borrowed(quoted)
                }
            }
            None => Cow::Borrowed(value),
        })
    })
}

/// A member of the top-level object of a JSON body. Only bodies that may hold one are parsed: those with
/// `method` in them, or an escape that may spell it.
fn in_json(body: &[u8]) -> Option<bool> {
    if find(body, b"method").is_none() && find(body, b"\\u").is_none() {
        return None;
    }
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    object
        .iter()
        .filter(|(name, _)| is_parameter(name.as_bytes()))
        .fold(None, |so_far, (_, value)| match value {
            serde_json::Value::String(method) => found(so_far, method.as_bytes()),
            // Not a method's name: no framework acts on it as one.
            _ => so_far,
        })
}

/// Where `needle` first occurs in `haystack`: candidates by its first byte, a scan the compiler vectorises.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(at) = haystack.get(from..)?.iter().position(|&b| b == first) {
        let start = from + at;
        if haystack[start + 1..].starts_with(rest) {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_body_or_query_is_read_without_panicking(
            bytes in prop::collection::vec(prop_oneof![
                Just(b'-'), Just(b'\r'), Just(b'\n'), Just(b'"'), Just(b'='), Just(b';'), Just(b'&'),
                Just(b'_'), Just(b'm'), any::<u8>(),
            ], 0..256),
            kind in 0usize..4,
        ) {
            let content_type = [
                "multipart/form-data; boundary=--",
                "multipart/form-data; boundary=\"m\"",
                "application/x-www-form-urlencoded",
                "application/json",
            ][kind];
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            let _ = in_body(&headers, &bytes);
            let text = String::from_utf8_lossy(&bytes);
            let _ = in_query(Some(&text));
            if let Ok(uri) = format!("/p?{}", text.replace(['#', ' '], "")).parse::<http::Uri>() {
                let _ = untunnelled(&uri);
            }
        }
    }

    fn body(content_type: &'static str, body: &str) -> Option<bool> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        in_body(&headers, body.as_bytes())
    }

    #[test]
    fn a_query_names_a_method_as_php_reads_its_names() {
        for (query, named) in [
            (None, None),
            (Some("q=1"), None),
            (Some("method=DELETE&_methods=PUT"), None),
            (Some("_method=DELETE"), Some(true)),
            (Some("a=1&_method=delete"), Some(true)),
            (Some("_method=GET"), Some(false)),
            (Some("_method=%20get%20"), Some(false)),
            (Some("%5Fmethod=PUT"), Some(true)),
            // PHP drops leading spaces first: ` method` is `method`.
            (Some("%20method=PUT"), None),
            (Some("+_method=PATCH"), Some(true)),
            (Some(".method=PATCH"), Some(true)),
            (Some("_method=GET&_method=POST"), Some(true)),
            // Names no method: whatever the origin makes of it, not a safe one.
            (Some("_method="), Some(true)),
            (Some("_method=G%00T"), Some(true)),
        ] {
            assert_eq!(in_query(query), named, "{query:?}");
        }
    }

    #[test]
    fn find_finds_the_first_occurrence() {
        assert_eq!(find(b"a_method", b"method"), Some(2));
        assert_eq!(find(b"mmmethod", b"method"), Some(2));
        assert_eq!(find(b"metho", b"method"), None);
        assert_eq!(find(b"", b"m"), None);
        assert_eq!(find(b"abc", b""), None);
    }

    #[test]
    fn a_tunnelling_query_acts_on_its_uri_without_the_tunnel() {
        let untunnelled = |uri: &str| untunnelled(&uri.parse().unwrap()).map(|uri| uri.to_string());
        assert_eq!(
            untunnelled("https://h/items/5?_method=DELETE").as_deref(),
            Some("https://h/items/5")
        );
        assert_eq!(
            untunnelled("/items/5?a=1&%5Fmethod=put&b=2").as_deref(),
            Some("/items/5?a=1&b=2")
        );
        assert_eq!(untunnelled("/items/5?a=1"), None);
        assert_eq!(untunnelled("/items/5"), None);
    }

    #[test]
    fn a_form_multipart_or_json_body_names_a_method() {
        let form = "application/x-www-form-urlencoded";
        assert_eq!(body(form, "title=x&_method=PUT"), Some(true));
        assert_eq!(body(form, "title=x"), None);
        assert_eq!(
            body("application/json", r#"{"_method":"DELETE","q":1}"#),
            Some(true)
        );
        assert_eq!(
            body("application/json", r#"{"\u005fmethod":"put"}"#),
            Some(true)
        );
        assert_eq!(
            body("application/json", r#"{"_method":"GET"}"#),
            Some(false)
        );
        // JSON-RPC's `method` is no tunnel; nor is a nested member, or one whose value is no string.
        assert_eq!(
            body(
                "application/json",
                r#"{"jsonrpc":"2.0","method":"eth_call"}"#
            ),
            None
        );
        assert_eq!(
            body("application/json", r#"{"p":{"_method":"DELETE"}}"#),
            None
        );
        assert_eq!(body("application/json", r#"{"_method":1}"#), None);
        // Another media type is not read as a form.
        assert_eq!(body("text/plain", "_method=DELETE"), None);

        let multipart = "multipart/form-data; boundary=\"XyZ\"";
        let parts = |name: &str, value: &str| {
            format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nHello\r\n\
                 --XyZ\r\nContent-Disposition: form-data; {name}\r\nContent-Type: text/plain\r\n\r\n{value}\r\n\
                 --XyZ--\r\n"
            )
        };
        for (name, value, named) in [
            ("name=\"_method\"", "DELETE", Some(true)),
            ("name=_method", "patch", Some(true)),
            ("name=\".method\"", "PUT", Some(true)),
            ("name=\" method\"", "PUT", None),
            ("name=\"_method\"", "GET", Some(false)),
            ("filename=\"_method\"; name=\"file\"", "DELETE", None),
            ("name=\"_methods\"", "DELETE", None),
        ] {
            assert_eq!(body(multipart, &parts(name, value)), named, "{name}");
        }
        assert_eq!(
            body("multipart/form-data", &parts("name=\"_method\"", "PUT")),
            None,
            "no boundary"
        );
    }
}
