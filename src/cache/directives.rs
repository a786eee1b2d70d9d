//! Where a response's cache directives come from: its `Cache-Control` (and `Expires`), or the first targeted
//! field (RFC 9213) on the layer's list that holds a valid, non-empty value, which then replaces both.
//!
//! A targeted field such as `CDN-Cache-Control` lets an origin speak to one class of caches apart from the
//! rest: `Cache-Control: no-store` for browsers, `CDN-Cache-Control: max-age=60` for the shared caches it runs.
//! Its value is a Structured Field Dictionary (RFC 8941 §3.2), parsed as that grammar says rather than as
//! `Cache-Control`: a value that does not parse is ignored whole, and the next field on the list (at last
//! `Cache-Control`) counts instead.

use crate::structured::{Value, dictionary, field_value};
use http::header::CACHE_CONTROL;
use http::{HeaderMap, HeaderName};

/// The cache directives of one response, read from the field that governs it.
#[derive(Debug)]
pub(crate) enum Directives<'a> {
    /// No targeted field applies: `Cache-Control`, and `Expires`, govern.
    CacheControl(&'a HeaderMap),
    /// The members of the first targeted field with a valid, non-empty value; `Cache-Control` and `Expires` are
    /// ignored (RFC 9213 §2.2).
    Targeted(Vec<(String, Value)>),
}

impl<'a> Directives<'a> {
    /// The directives of a response with `headers`, for a cache whose target list is `targets` (most
    /// applicable first).
    pub(crate) fn of(headers: &'a HeaderMap, targets: &[HeaderName]) -> Self {
        targets
            .iter()
            .find_map(|target| targeted(headers, target))
            .map_or(Directives::CacheControl(headers), Directives::Targeted)
    }

    /// Whether `Expires` counts: only when `Cache-Control` governs.
    pub(crate) fn honours_expires(&self) -> bool {
        matches!(self, Directives::CacheControl(_))
    }

    /// Calls `each` with every directive's name and argument (quotes removed; `None` without one). A
    /// `Cache-Control` value that cannot be read counts as `no-store`, since it may say so; a targeted member
    /// whose value is Boolean false is absent, and one whose value no directive takes (a String, an inner list,
    /// a byte sequence) has an empty argument, which no directive accepts: a duration there is an Integer, and
    /// a value of another type is not consumed (RFC 9213 §2.1), where `Cache-Control` takes `max-age="60"` as
    /// well as `max-age=60` (RFC 9111 §5.2).
    pub(crate) fn for_each(&self, mut each: impl FnMut(&str, Option<&str>)) {
        match self {
            Directives::CacheControl(headers) => {
                for value in headers.get_all(CACHE_CONTROL) {
                    let Ok(value) = value.to_str() else {
                        each("no-store", None);
                        continue;
                    };
                    for (name, argument) in split_directives(value) {
                        each(name, argument);
                    }
                }
            }
            Directives::Targeted(members) => {
                for (name, value) in members {
                    match value {
                        Value::Bool(false) => {}
                        Value::Bool(true) => each(name, None),
                        Value::Bare(text) => each(name, Some(text)),
                        Value::String(_) | Value::Other => each(name, Some("")),
                    }
                }
            }
        }
    }
}

/// The directives of one `Cache-Control` (or `Pragma`) field value, each with its argument (quotes removed). A
/// comma inside a quoted argument (`no-cache="Set-Cookie, X-Id"`) does not end its directive.
///
/// No white space may stand by a directive's `=` (RFC 9111 §5.2: `token "=" ( token / quoted-string )`): a
/// directive written so (`max-age =60`, `max-age= 60`) keeps its name, which is all a `no-store` or a `private`
/// needs, but its argument is empty, which no directive that takes one accepts.
pub(crate) fn split_directives(value: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let text = rest?;
        let (directive, next) = match directive_end(text) {
            Some(comma) => (&text[..comma], Some(&text[comma + 1..])),
            None => (text, None),
        };
        rest = next;
        let (name, argument) = match directive.split_once('=') {
            Some((name, argument))
                if name.ends_with([' ', '\t']) || argument.starts_with([' ', '\t']) =>
            {
                (name, Some(""))
            }
            Some((name, argument)) => (name, Some(argument.trim_end().trim_matches('"'))),
            None => (directive, None),
        };
        Some((name.trim(), argument))
    })
}

/// A `delta-seconds` argument (RFC 9111 §1.2.2): digits, a value too large for a `u32` taken as the largest
/// one (the spec's "greatest positive integer it can conveniently represent"). `None` for anything else (a sign, a
/// fraction, letters, white space, nothing), and the directive is then ignored.
pub(crate) fn delta_seconds(argument: &str) -> Option<u32> {
    if argument.is_empty() || !argument.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(argument.parse().unwrap_or(u32::MAX))
}

/// Where the first directive of `text` ends: the first comma outside a quoted string (RFC 9110 §5.6.4, `\`
/// escaping the next character); `None` when it runs to the end.
fn directive_end(text: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (at, byte) in text.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => return Some(at),
            _ => {}
        }
    }
    None
}

/// The members of `target` in `headers` when its lines, joined, are a valid dictionary with at least one member.
fn targeted(headers: &HeaderMap, target: &HeaderName) -> Option<Vec<(String, Value)>> {
    if !headers.contains_key(target) {
        return None;
    }
    let members = field_value(headers, target).and_then(|value| dictionary(&value));
    if members.is_none() {
        // Said once per fill, and only to a subscriber that asks: why an origin's field did not count.
        tracing::debug!(field = %target, "targeted cache-control field is no valid dictionary: ignored");
    }
    members.filter(|members| !members.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::{Fields, head};
    use http::HeaderValue;

    fn said(directives: &Directives<'_>) -> Vec<String> {
        let mut out = Vec::new();
        directives.for_each(|name, argument| {
            out.push(argument.map_or(name.to_owned(), |a| format!("{name}={a}")));
        });
        out
    }

    #[test]
    fn the_first_valid_non_empty_targeted_field_replaces_cache_control() {
        let ours = HeaderName::from_static("ours-cache-control");
        let cdn = HeaderName::from_static("cdn-cache-control");
        let targets = [ours, cdn];
        #[rustfmt::skip]
        let cases: &[(&str, &Fields, &[&str], bool)] = &[
            ("no targeted field", &[("cache-control", "no-store")], &["no-store"], true),
            ("the first on the list wins",
             &[("cache-control", "no-store"), ("cdn-cache-control", "max-age=5"), ("ours-cache-control", "max-age=60")],
             &["max-age=60"], false),
            ("a field off the list counts for nothing",
             &[("cache-control", "max-age=1"), ("surrogate-control", "max-age=60")], &["max-age=1"], true),
            ("an invalid field passes to the next",
             &[("cache-control", "no-store"), ("ours-cache-control", "max-age=60,"), ("cdn-cache-control", "max-age=5")],
             &["max-age=5"], false),
            ("an empty one too",
             &[("cache-control", "no-store"), ("ours-cache-control", ""), ("cdn-cache-control", "private")],
             &["private"], false),
            ("none valid: Cache-Control",
             &[("cache-control", "max-age=1"), ("cdn-cache-control", "Max-Age=60")], &["max-age=1"], true),
            ("lines are joined",
             &[("cdn-cache-control", "max-age=60"), ("cdn-cache-control", "stale-if-error=9")],
             &["max-age=60", "stale-if-error=9"], false),
            ("a broken line breaks the field",
             &[("cache-control", "no-cache"), ("cdn-cache-control", "max-age=60"), ("cdn-cache-control", "(")],
             &["no-cache"], true),
            ("false is absent, lists take nothing",
             &[("cdn-cache-control", "no-store=?0, max-age=(1 2), s-maxage=3")], &["max-age=", "s-maxage=3"], false),
            ("a string is no integer",
             &[("cdn-cache-control", "max-age=\"60\", private=\"x\"")], &["max-age=", "private="], false),
        ];
        for (case, pairs, expected, cache_control) in cases {
            let headers = head(pairs);
            let directives = Directives::of(&headers, &targets);
            assert_eq!(said(&directives), *expected, "{case}");
            assert_eq!(directives.honours_expires(), *cache_control, "{case}");
        }
        let plain = head(&[("cdn-cache-control", "max-age=60")]);
        assert!(
            Directives::of(&plain, &[]).honours_expires(),
            "no target list: every targeted field is ignored"
        );
    }

    #[test]
    fn a_comma_in_a_quoted_argument_does_not_split_its_directive() {
        let value = r#"no-cache="set-cookie, x-id", max-age=5, ext="a \", s-maxage=9", private,"#;
        let split: Vec<_> = split_directives(value).collect();
        assert_eq!(
            split,
            [
                ("no-cache", Some("set-cookie, x-id")),
                ("max-age", Some("5")),
                ("ext", Some(r#"a \", s-maxage=9"#)),
                ("private", None),
                ("", None),
            ]
        );
        let spaced: Vec<_> =
            split_directives(r#"max-age =5, s-maxage= 5, private ="x", max-age=5 "#).collect();
        assert_eq!(
            spaced,
            [
                ("max-age", Some("")),
                ("s-maxage", Some("")),
                ("private", Some("")),
                ("max-age", Some("5")),
            ],
            "white space by the `=` empties the argument, never the name"
        );
        let plain: Vec<_> = split_directives("no-store").collect();
        assert_eq!(plain, [("no-store", None)]);
    }

    #[test]
    fn an_unreadable_cache_control_counts_as_no_store() {
        let mut headers = HeaderMap::new();
        headers.append(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"max-age=60, \xffprivate").unwrap(),
        );
        headers.append(CACHE_CONTROL, HeaderValue::from_static("s-maxage=5"));
        assert_eq!(
            said(&Directives::of(&headers, &[])),
            ["no-store", "s-maxage=5"]
        );
    }
}
