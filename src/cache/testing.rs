//! Helpers the cache's unit tests share.

use http::{HeaderMap, HeaderValue};

/// Header fields of a test case, as pairs of name and value.
pub(crate) type Fields = [(&'static str, &'static str)];

/// A header map of `pairs`, in order, a name given twice keeping both values.
pub(crate) fn head(pairs: &Fields) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(*name, HeaderValue::from_static(value));
    }
    headers
}
