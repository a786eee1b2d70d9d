//! The parts of Structured Field Values (RFC 8941) the crate reads: Dictionaries (targeted cache-control fields,
//! RFC 9213) and Lists (cache groups, RFC 9875; the `RateLimit` field the retry layer reads, whose members'
//! parameters it keeps). Parsed strictly, as the RFC's algorithms say: a field value that does not parse is
//! refused whole, and the caller then ignores the field. Parameters are checked, and dropped unless asked for.

use http::{HeaderMap, HeaderName};
use std::borrow::Cow;

/// The value of a member, as far as the cache goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// A Boolean; a dictionary member without a value is `true`.
    Bool(bool),
    /// An Integer or Decimal as written, or a Token.
    Bare(String),
    /// A String, without its quotes and escapes.
    String(String),
    /// An Inner List or a Byte Sequence.
    Other,
}

/// The lines of the field `name` in `headers`, joined with commas as RFC 8941 §4.2 parses a field of several
/// lines; empty without the field, `None` when a line is not visible ASCII.
pub(crate) fn field_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    let mut lines = headers.get_all(name).iter();
    let Some(first) = lines.next() else {
        return Some(Cow::Borrowed(""));
    };
    let first = first.to_str().ok()?;
    let Some(second) = lines.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = format!("{first}, {}", second.to_str().ok()?);
    for line in lines {
        joined.push_str(", ");
        joined.push_str(line.to_str().ok()?);
    }
    Some(Cow::Owned(joined))
}

/// Parses a Dictionary (§4.2, §4.2.2) into its members, in order, a key given twice keeping its place and its
/// last value; `None` when the value is not one.
pub(crate) fn dictionary(input: &str) -> Option<Vec<(String, Value)>> {
    let mut parser = Parser::new(input);
    let mut members: Vec<(String, Value)> = Vec::new();
    while !parser.done() {
        let key = parser.key()?;
        let value = if parser.eat(b'=') {
            parser.item_or_inner_list()?
        } else {
            parser.parameters()?;
            Value::Bool(true)
        };
        match members.iter_mut().find(|(k, _)| *k == key) {
            Some(member) => member.1 = value,
            None => members.push((key.to_owned(), value)),
        }
        if !parser.next_member()? {
            break;
        }
    }
    Some(members)
}

/// Parses a List (§4.2, §4.2.1) into its members, in order; `None` when the value is not one.
pub(crate) fn list(input: &str) -> Option<Vec<Value>> {
    let mut parser = Parser::new(input);
    let mut members = Vec::new();
    while !parser.done() {
        members.push(parser.item_or_inner_list()?);
        if !parser.next_member()? {
            break;
        }
    }
    Some(members)
}

/// One member's parameters, in order: each key with its value (`true` without one).
pub(crate) type Parameters = Vec<(String, Value)>;

/// Parses a List (§4.2, §4.2.1) into its members with their parameters, in order; `None` when the value is not
/// one.
pub(crate) fn list_with_parameters(input: &str) -> Option<Vec<(Value, Parameters)>> {
    let mut parser = Parser::new(input);
    let mut members = Vec::new();
    while !parser.done() {
        let mut parameters = Vec::new();
        let value = parser.item_or_inner_list_into(Some(&mut parameters))?;
        members.push((value, parameters));
        if !parser.next_member()? {
            break;
        }
    }
    Some(members)
}

/// A cursor over a field value.
struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    /// At the start of `input`, past its leading spaces.
    fn new(input: &'a str) -> Self {
        let mut parser = Parser {
            bytes: input.as_bytes(),
            at: 0,
        };
        parser.skip(|b| b == b' ');
        parser
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// Consumes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        self.at += usize::from(next);
        next
    }

    /// Consumes bytes while `keep` holds; returns them.
    fn skip(&mut self, keep: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.at;
        while self.peek().is_some_and(&keep) {
            self.at += 1;
        }
        &self.bytes[start..self.at]
    }

    /// After a member: `Some(false)` at the end, `Some(true)` past the comma before another member, `None` for
    /// anything else (a trailing comma included).
    fn next_member(&mut self) -> Option<bool> {
        let ows = |b| b == b' ' || b == b'\t';
        self.skip(ows);
        if self.done() {
            return Some(false);
        }
        if !self.eat(b',') {
            return None;
        }
        self.skip(ows);
        (!self.done()).then_some(true)
    }

    /// A key (§4.2.3.3): `lcalpha` or `*`, then `lcalpha`, digits, `_`, `-`, `.`, `*`.
    fn key(&mut self) -> Option<&'a str> {
        if !self
            .peek()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
        {
            return None;
        }
        let key = self.skip(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b'*')
        });
        std::str::from_utf8(key).ok()
    }

    /// An Item or an Inner List, with its parameters (§4.2.1.1).
    fn item_or_inner_list(&mut self) -> Option<Value> {
        self.item_or_inner_list_into(None)
    }

    /// [`item_or_inner_list`](Self::item_or_inner_list), its own parameters (not those of an inner list's
    /// items) pushed to `keep` when given.
    fn item_or_inner_list_into(&mut self, keep: Option<&mut Parameters>) -> Option<Value> {
        if !self.eat(b'(') {
            let value = self.bare_item()?;
            self.parameters_into(keep)?;
            return Some(value);
        }
        loop {
            self.skip(|b| b == b' ');
            if self.eat(b')') {
                self.parameters_into(keep)?;
                return Some(Value::Other);
            }
            self.bare_item()?;
            self.parameters()?;
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return None;
            }
        }
    }

    /// Parameters (§4.2.3.2): `;key[=bare-item]`, each after optional spaces; dropped once checked.
    fn parameters(&mut self) -> Option<()> {
        self.parameters_into(None)
    }

    /// [`parameters`](Self::parameters), pushed to `keep` when given (a key given twice keeps its place and its
    /// last value).
    fn parameters_into(&mut self, mut keep: Option<&mut Parameters>) -> Option<()> {
        while self.eat(b';') {
            self.skip(|b| b == b' ');
            let key = self.key()?;
            let value = if self.eat(b'=') {
                self.bare_item()?
            } else {
                Value::Bool(true)
            };
            if let Some(keep) = keep.as_deref_mut() {
                match keep.iter_mut().find(|(k, _)| k == key) {
                    Some(parameter) => parameter.1 = value,
                    None => keep.push((key.to_owned(), value)),
                }
            }
        }
        Some(())
    }

    /// A Bare Item (§4.2.3.1).
    fn bare_item(&mut self) -> Option<Value> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b'*' | b'a'..=b'z' | b'A'..=b'Z' => {
                let token = self.skip(|b| is_tchar(b) || b == b':' || b == b'/');
                Some(Value::Bare(String::from_utf8_lossy(token).into_owned()))
            }
            b':' => {
                self.at += 1;
                self.skip(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
                self.eat(b':').then_some(Value::Other)
            }
            b'?' => {
                self.at += 1;
                let value = match self.peek()? {
                    b'1' => true,
                    b'0' => false,
                    _ => return None,
                };
                self.at += 1;
                Some(Value::Bool(value))
            }
            _ => None,
        }
    }

    /// An Integer (at most 15 digits) or a Decimal (at most 12 digits, a dot, 1 to 3 digits) (§4.2.4).
    fn number(&mut self) -> Option<Value> {
        let start = self.at;
        self.eat(b'-');
        let whole = self.skip(|b| b.is_ascii_digit()).len();
        if whole == 0 {
            return None;
        }
        if self.eat(b'.') {
            let fraction = self.skip(|b| b.is_ascii_digit()).len();
            if whole > 12 || !(1..=3).contains(&fraction) {
                return None;
            }
        } else if whole > 15 {
            return None;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
        Some(Value::Bare(text.to_owned()))
    }

    /// A String (§4.2.5): printable ASCII between quotes, `\"` and `\\` its only escapes.
    fn string(&mut self) -> Option<Value> {
        self.at += 1;
        let mut text = String::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(Value::String(text));
                }
                b'\\' => {
                    self.at += 1;
                    let escaped = self.peek().filter(|b| matches!(b, b'"' | b'\\'))?;
                    text.push(char::from(escaped));
                }
                b @ 0x20..=0x7e => text.push(char::from(b)),
                _ => return None,
            }
            self.at += 1;
        }
    }
}

/// `tchar` (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bare(s: &str) -> Value {
        Value::Bare(s.to_owned())
    }

    fn string(s: &str) -> Value {
        Value::String(s.to_owned())
    }

    #[test]
    fn dictionaries_parse_as_rfc_8941_says() {
        let t = Value::Bool(true);
        #[rustfmt::skip]
        let cases: &[(&str, &[(&str, Value)])] = &[
            ("max-age=60", &[("max-age", bare("60"))]),
            ("no-store", &[("no-store", t.clone())]),
            ("", &[]),
            ("  max-age=60", &[("max-age", bare("60"))]),
            ("a=1,b=2", &[("a", bare("1")), ("b", bare("2"))]),
            ("a=1 ,\tb=2", &[("a", bare("1")), ("b", bare("2"))]),
            ("private=\"set-cookie, x-a\"", &[("private", string("set-cookie, x-a"))]),
            (r#"a="q\"uote\\d""#, &[("a", string(r#"q"uote\d"#))]),
            ("a=?0, b=?1", &[("a", Value::Bool(false)), ("b", t.clone())]),
            ("a=1.5, b=-3, c=tok/en:x", &[("a", bare("1.5")), ("b", bare("-3")), ("c", bare("tok/en:x"))]),
            ("a=(1 2);p, b=:aGk=:", &[("a", Value::Other), ("b", Value::Other)]),
            ("a=( ), b", &[("a", Value::Other), ("b", t.clone())]),
            ("max-age=60;x=1;y, private;z", &[("max-age", bare("60")), ("private", t.clone())]),
            ("a=1, b=2, a=3", &[("a", bare("3")), ("b", bare("2"))]),
            ("*k.e-y_9=*", &[("*k.e-y_9", bare("*"))]),
            ("a=999999999999999", &[("a", bare("999999999999999"))]),
            ("a=123456789012.123", &[("a", bare("123456789012.123"))]),
        ];
        for (input, members) in cases {
            let expected: Vec<(String, Value)> = members
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            assert_eq!(dictionary(input), Some(expected), "{input:?}");
        }
    }

    #[test]
    fn lists_parse_as_rfc_8941_says() {
        #[rustfmt::skip]
        let cases: &[(&str, &[Value])] = &[
            (r#""articles", "article/17""#, &[string("articles"), string("article/17")]),
            (r#""a";p=1,"b""#, &[string("a"), string("b")]),
            (r#""a", "a""#, &[string("a"), string("a")]),
            (r#"tok, 7, ?1, ("x" "y")"#, &[bare("tok"), bare("7"), Value::Bool(true), Value::Other]),
            ("", &[]),
        ];
        for (input, members) in cases {
            assert_eq!(list(input).as_deref(), Some(*members), "{input:?}");
        }
        for input in [
            r#""a","#,
            r#""a" "b""#,
            r#""a",,"b""#,
            r#""unterminated"#,
            "a=1",
        ] {
            assert_eq!(list(input), None, "{input:?}");
        }
    }

    /// A member's value as an origin would write it, and what it parses to.
    fn written_value() -> impl Strategy<Value = (String, Value)> {
        prop_oneof![
            Just((String::new(), Value::Bool(true))),
            any::<bool>().prop_map(|b| (format!("=?{}", u8::from(b)), Value::Bool(b))),
            (-999_999_999_999_999i64..=999_999_999_999_999)
                .prop_map(|n| (format!("={n}"), Value::Bare(n.to_string()))),
            "[ -~]{0,16}".prop_map(|text| {
                let quoted = text.replace('\\', r"\\").replace('"', r#"\""#);
                (format!("=\"{quoted}\""), Value::String(text))
            }),
            "[a-zA-Z*][a-zA-Z0-9:/!#$%&'*+.^_`|~-]{0,8}"
                .prop_map(|token| (format!("={token}"), Value::Bare(token))),
        ]
    }

    proptest! {
        #[test]
        fn what_an_origin_writes_parses_back(
            members in proptest::collection::vec(("[a-z*][a-z0-9_.*-]{0,6}", written_value()), 0..6),
            separator in prop_oneof![Just(","), Just(", "), Just(" ,\t")],
        ) {
            let written: Vec<String> =
                members.iter().map(|(key, (value, _))| format!("{key}{value}")).collect();
            let mut expected: Vec<(String, Value)> = Vec::new();
            for (key, (_, value)) in members {
                match expected.iter_mut().find(|(k, _)| *k == key) {
                    Some(member) => member.1 = value,
                    None => expected.push((key, value)),
                }
            }
            prop_assert_eq!(dictionary(&written.join(separator)), Some(expected));
        }

        #[test]
        fn any_input_parses_to_valid_members_or_is_refused(input in "([ -~\t]|\\PC){0,40}") {
            if let Some(members) = dictionary(&input) {
                for (i, (key, _)) in members.iter().enumerate() {
                    prop_assert!(
                        key.starts_with(|c: char| c.is_ascii_lowercase() || c == '*'),
                        "{key:?}"
                    );
                    prop_assert!(input.contains(key.as_str()));
                    prop_assert!(members[..i].iter().all(|(k, _)| k != key), "{key:?} twice");
                }
            }
            for member in list(&input).unwrap_or_default() {
                if let Value::String(text) = member {
                    prop_assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn what_is_not_a_dictionary_is_refused_whole() {
        for input in [
            "max-age=60,",          // trailing comma
            "max-age=60,,private",  // empty member
            "Max-Age=60",           // keys are lowercase
            "max-age = 60",         // no spaces around `=`
            "max-age=60 private",   // members need commas
            "1a=1",                 // keys start with a letter or `*`
            "a=\"open",             // unterminated string
            "a=\"bad \\n escape\"", // only \" and \\ escape
            "a=\"tab\there\"",      // control characters
            "a=1.",                 // a decimal needs a fraction
            "a=1.2345",             // at most three fraction digits
            "a=1234567890123.1",    // at most twelve whole digits
            "a=1234567890123456",   // at most fifteen digits
            "a=-",                  // a sign alone
            "a=?2",                 // booleans are ?0 and ?1
            "a=:aGk=",              // unterminated byte sequence
            "a=(1 2",               // unterminated inner list
            "a=(1,2)",              // inner lists are space-separated
            "a=1;",                 // a parameter needs a key
            "a=@1",                 // not a bare item here
            "max-age=60, ",         // a trailing comma after spaces
        ] {
            assert_eq!(dictionary(input), None, "{input:?}");
        }
    }
}
