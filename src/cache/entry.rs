//! The stored envelope: encode and decode.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! magic "\xffTRC" | version u8 = 2 | digest [32] | stored_at u64 | fresh_until u64 | stale_until u64
//! | stale_if_error_until u64 | vary flag u8 | (flag 1: vary digest [32]) | status u16 | header count u16
//! | per header: name len u16, name, value len u32, value
//! | body len u32 | body
//! ```
//!
//! Times are unix milliseconds. The vary digest is a SHA-256 of the request's values of the headers the
//! response's `Vary` names (never the values themselves: `Vary: Authorization` must not put tokens in Redis). The body is stored raw (no base64, no JSON wrapping) and decoded as a slice of
//! the bytes the store returned, so a hit copies nothing.
//!
//! With the `compression` feature and [`compress_above`](crate::cache::RedisCacheLayerBuilder::compress_above), a
//! body that LZ4 shrinks by at least an eighth is stored compressed, as version 3: the same layout, with the
//! body field holding `raw len u32 | LZ4 block` (an empty field is an empty body). A reader from before version
//! 3, or built without the feature, takes such an entry for another version: a miss, never wrong bytes.

use super::decision::Stored;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

const MAGIC: &[u8; 4] = b"\xffTRC";
const VERSION: u8 = 2;
/// The version of an entry whose body is stored LZ4-compressed.
const VERSION_LZ4: u8 = 3;
/// The version of an [`Unstored`] marker: not an entry, so a reader of an older version of this crate finds a
/// version it does not know, which it takes for a miss (what a marker means).
const VERSION_UNSTORED: u8 = 4;
/// Bytes before the first header: magic, version, digest, four timestamps, vary flag, status, header count.
const FIXED_HEAD: usize = 4 + 1 + 32 + 8 * 4 + 1 + 2 + 2;
/// The bytes a vary digest adds to an entry whose response has `Vary`.
pub(crate) const VARY_DIGEST: usize = 32;
/// Per-header framing: name length and value length.
const PER_HEADER: usize = 2 + 4;
/// Fixed bytes an entry adds around its headers and body.
pub(crate) const FIXED_OVERHEAD: usize = FIXED_HEAD + 4;

/// A cached response and its freshness windows.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// When the response was made, as far as this cache can tell (unix ms): when it was stored, less the `Age`
    /// it came with.
    pub(crate) stored_at: u64,
    pub(crate) fresh_until: u64,
    pub(crate) stale_until: u64,
    pub(crate) stale_if_error_until: u64,
    /// The digest of the varied request headers, when the response has `Vary`.
    pub(crate) vary: Option<[u8; 32]>,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Entry {
    /// The entry's windows, and whether it was stored for the variant of the request at hand.
    pub(crate) fn stored(&self, vary_matches: bool) -> Stored {
        Stored {
            stored_at: self.stored_at,
            fresh_until: self.fresh_until,
            stale_until: self.stale_until,
            stale_if_error_until: self.stale_if_error_until,
            vary_matches,
        }
    }

    /// Remaining freshness in whole seconds, as `Cache-Status` `ttl` reports it: at least 0 while fresh (before
    /// `fresh_until`), at most -1 once stale, so the sign alone tells the two apart.
    pub(crate) fn ttl_secs(&self, now: u64) -> i64 {
        // In i128: neither a forged timestamp nor a far clock can overflow.
        let ms = i128::from(self.fresh_until) - i128::from(now);
        let secs = if ms > 0 {
            ms.div_euclid(1000)
        } else {
            ms.div_euclid(1000).min(-1)
        };
        i64::try_from(secs).unwrap_or(if ms > 0 { i64::MAX } else { i64::MIN })
    }

    /// Seconds since the response was made (its stored `Age` counted), for the `Age` header.
    pub(crate) fn age_secs(&self, now: u64) -> u64 {
        now.saturating_sub(self.stored_at) / 1000
    }

    /// Milliseconds the store should keep it: until the end of the last window, and `keep_ms` more when it has
    /// a validator, with which it can still be revalidated ([`keep_for`](super::RedisCacheLayerBuilder::keep_for)).
    pub(crate) fn store_ttl_ms(&self, now: u64, keep_ms: u64) -> u64 {
        let last = self
            .stale_until
            .max(self.stale_if_error_until)
            .max(self.fresh_until);
        let kept = if self.has_validator() {
            last.saturating_add(keep_ms)
        } else {
            last
        };
        kept.saturating_sub(now)
    }

    /// Whether the origin can be asked whether the entry is still current: it has an `ETag` or a
    /// `Last-Modified`.
    pub(crate) fn has_validator(&self) -> bool {
        self.headers.contains_key(header::ETAG) || self.headers.contains_key(header::LAST_MODIFIED)
    }

    /// Encodes the entry for `digest`, its body raw.
    #[cfg(test)]
    pub(crate) fn encode(&self, digest: &[u8; 32]) -> Bytes {
        self.encode_with(digest, None)
    }

    /// Encodes the entry for `digest`; with `compress_above`, a body longer than that many bytes is stored
    /// LZ4-compressed when that saves at least an eighth of it (never one the origin already encoded: a
    /// `Content-Encoding` other than `identity`).
    pub(crate) fn encode_with(&self, digest: &[u8; 32], compress_above: Option<usize>) -> Bytes {
        let compressed = compress_above
            .filter(|above| self.body.len() > *above && !self.content_encoded())
            .and_then(|_| compressed(&self.body));
        let body_bytes = compressed.as_ref().map_or(self.body.len(), |c| 4 + c.len());
        let mut out = BytesMut::with_capacity(self.encoded_len() - self.body.len() + body_bytes);
        out.put_slice(MAGIC);
        out.put_u8(if compressed.is_some() {
            VERSION_LZ4
        } else {
            VERSION
        });
        out.put_slice(digest);
        out.put_u64(self.stored_at);
        out.put_u64(self.fresh_until);
        out.put_u64(self.stale_until);
        out.put_u64(self.stale_if_error_until);
        match &self.vary {
            Some(digest) => {
                out.put_u8(1);
                out.put_slice(digest);
            }
            None => out.put_u8(0),
        }
        out.put_u16(self.status.as_u16());
        // Header counts and lengths were bounded when the entry was built (see `storable_headers`).
        out.put_u16(self.headers.len() as u16);
        for (name, value) in &self.headers {
            out.put_u16(name.as_str().len() as u16);
            out.put_slice(name.as_str().as_bytes());
            out.put_u32(value.len() as u32);
            out.put_slice(value.as_bytes());
        }
        out.put_u32(body_bytes as u32);
        match &compressed {
            Some(block) => {
                out.put_u32(self.body.len() as u32);
                out.put_slice(block);
            }
            None => out.put_slice(&self.body),
        }
        out.freeze()
    }

    /// The length of the entry encoded with its body raw.
    pub(crate) fn encoded_len(&self) -> usize {
        let header_bytes: usize = self
            .headers
            .iter()
            .map(|(n, v)| PER_HEADER + n.as_str().len() + v.len())
            .sum();
        let vary_bytes = if self.vary.is_some() { VARY_DIGEST } else { 0 };
        FIXED_OVERHEAD + vary_bytes + header_bytes + self.body.len()
    }

    /// Whether the body is in a content coding other than `identity` (so compressing it again gains nothing).
    fn content_encoded(&self) -> bool {
        super::key::content_encoded(&self.headers)
    }

    /// Decodes bytes from the store. Anything malformed, from another format version, or stored under another
    /// digest (a collision or a foreign value) is an error, which the cache treats as a miss; so is a
    /// compressed body that would be longer than `max_body` bytes.
    pub(crate) fn decode(
        bytes: &Bytes,
        digest: &[u8; 32],
        max_body: usize,
    ) -> Result<Entry, DecodeError> {
        Self::decode_head(bytes, digest, max_body).map(|(entry, _)| entry)
    }

    /// [`decode`](Self::decode), also saying where the head ends: the offset of the body length, before
    /// which every byte the entry's fields (all but its body) are read from lies.
    pub(crate) fn decode_head(
        bytes: &Bytes,
        digest: &[u8; 32],
        max_body: usize,
    ) -> Result<(Entry, usize), DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err(DecodeError::Foreign);
        }
        match r.u8()? {
            VERSION => {}
            VERSION_LZ4 if cfg!(feature = "compression") => {}
            _ => return Err(DecodeError::Version),
        }
        if r.take(32)? != digest {
            return Err(DecodeError::DigestMismatch);
        }
        let stored_at = r.u64()?;
        let fresh_until = r.u64()?;
        let stale_until = r.u64()?;
        let stale_if_error_until = r.u64()?;
        let vary = match r.u8()? {
            0 => None,
            1 => Some(r.array::<32>()?),
            _ => return Err(DecodeError::Malformed),
        };
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError::Malformed)?;
        let count = usize::from(r.u16()?);
        // Room for the two headers every answer from the store adds (`Age`, `Cache-Status`).
        let mut headers =
            HeaderMap::try_with_capacity(count.min(64) + 2).map_err(|_| DecodeError::Malformed)?;
        for _ in 0..count {
            let name_len = usize::from(r.u16()?);
            let name =
                HeaderName::from_bytes(r.take(name_len)?).map_err(|_| DecodeError::Malformed)?;
            let value_len = r.u32()? as usize;
            let start = r.pos;
            r.take(value_len)?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(start..r.pos))
                .map_err(|_| DecodeError::Malformed)?;
            headers
                .try_append(name, value)
                .map_err(|_| DecodeError::Malformed)?;
        }
        let head = r.pos;
        let body = body_of(bytes, head, max_body).ok_or(DecodeError::Malformed)?;
        let entry = Entry {
            stored_at,
            fresh_until,
            stale_until,
            stale_if_error_until,
            vary,
            status,
            headers,
            body,
        };
        Ok((entry, head))
    }
}

/// The body of an entry whose head ends at `head`: the bytes after the body length, if they are exactly as many
/// as it says; decompressed, for a compressed entry (`None` if it is not valid, or longer than `max_body`).
#[inline]
pub(crate) fn body_of(bytes: &Bytes, head: usize, max_body: usize) -> Option<Bytes> {
    let start = head.checked_add(4)?;
    let len = u32::from_be_bytes(bytes.get(head..start)?.try_into().ok()?);
    if bytes.len() - start != len as usize {
        return None;
    }
    // Without the feature no compressed entry decodes (`decode_head` refuses its version): no check to make.
    if cfg!(feature = "compression") && bytes.get(4) == Some(&VERSION_LZ4) {
        return decompressed(&bytes[start..], max_body);
    }
    Some(bytes.slice(start..))
}

/// The LZ4 block of `body`, if it is at least an eighth shorter.
#[cfg(feature = "compression")]
fn compressed(body: &[u8]) -> Option<Vec<u8>> {
    let mut block = vec![0; lz4_flex::block::get_maximum_output_size(body.len())];
    let len = lz4_flex::block::compress_into(body, &mut block).ok()?;
    // The raw length the entry adds counts against the saving.
    (len + 4 <= body.len() - body.len() / 8).then(|| {
        block.truncate(len);
        block
    })
}

#[cfg(not(feature = "compression"))]
fn compressed(_: &[u8]) -> Option<Vec<u8>> {
    None
}

/// The body a compressed entry's body field (`raw len u32 | LZ4 block`) holds, if the block decodes to exactly
/// `raw len` bytes, at most `max_body`. The length is checked before anything is allocated: LZ4 expands at most
/// about 255 to 1, so a forged length cannot make a small value claim a large buffer.
#[cfg(feature = "compression")]
fn decompressed(field: &[u8], max_body: usize) -> Option<Bytes> {
    if field.is_empty() {
        return Some(Bytes::new());
    }
    let (raw_len, block) = field.split_first_chunk::<4>()?;
    let raw_len = u32::from_be_bytes(*raw_len) as usize;
    if raw_len > max_body || raw_len > block.len().saturating_mul(256) {
        return None;
    }
    let mut body = vec![0; raw_len];
    match lz4_flex::block::decompress_into(block, &mut body) {
        Ok(written) if written == raw_len => Some(Bytes::from(body)),
        _ => None,
    }
}

#[cfg(not(feature = "compression"))]
fn decompressed(_: &[u8], _: usize) -> Option<Bytes> {
    None
}

/// Why a key's last origin answer was not stored, as a marker in the entry's place says (Varnish's
/// hit-for-miss): a miss for a marked key does not wait for another caller's call, whose answer would not be
/// stored either, but calls the origin itself. The first answer that can be stored replaces the marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unstored {
    /// Meant for its requester alone (`private`, `no-store`, `Set-Cookie`, `Vary: *`), or too large to hold
    /// (its `Content-Length` over the cap): never shared, so callers in one process do not wait for each
    /// other either.
    Alone,
    /// Shared, but of a status the cache does not store (a `404`), or with nothing to keep (`max-age=0,
    /// must-revalidate`): callers in one process still share one call; processes no longer wait for each
    /// other's.
    Shared,
}

impl Unstored {
    /// Marker bytes: magic, version, the key's digest (a marker read for another key is not one), the kind.
    const LEN: usize = 4 + 1 + 32 + 1;

    /// The marker for the key whose digest is `digest`.
    pub(crate) fn encode(self, digest: &[u8; 32]) -> Bytes {
        let mut out = BytesMut::with_capacity(Self::LEN);
        out.put_slice(MAGIC);
        out.put_u8(VERSION_UNSTORED);
        out.put_slice(digest);
        out.put_u8(match self {
            Unstored::Alone => 0,
            Unstored::Shared => 1,
        });
        out.freeze()
    }

    /// The marker `bytes` hold for `digest`, if they are one.
    pub(crate) fn read(bytes: &[u8], digest: &[u8; 32]) -> Option<Unstored> {
        if bytes.len() != Self::LEN
            || bytes.get(..4)? != MAGIC
            || bytes.get(4) != Some(&VERSION_UNSTORED)
            || bytes.get(5..37)? != digest
        {
            return None;
        }
        match bytes.get(37)? {
            0 => Some(Unstored::Alone),
            1 => Some(Unstored::Shared),
            _ => None,
        }
    }
}

/// Why stored bytes could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not written by this crate.
    Foreign,
    /// Written by another envelope version.
    Version,
    /// Written for another request.
    DigestMismatch,
    /// Truncated or inconsistent.
    Malformed,
}

struct Reader<'a> {
    bytes: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Malformed)?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Malformed)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

/// Headers that describe one connection or one hop, or that must never be replayed to another caller.
fn never_stored(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "set-cookie"
            | "set-cookie2"
            | "authorization"
            | "proxy-authentication-info"
            | "age"
            | "cache-status"
    )
}

/// The response headers worth storing: hop-by-hop headers (and any the `Connection` header names),
/// `set-cookie` (and `set-cookie2`), `authorization`, `proxy-authentication-info` (a proxy's word to one client),
/// `age` and `cache-status` are dropped. Returns `None` when the headers cannot be framed (over 65,535 headers),
/// so the response is passed through uncached.
pub(crate) fn storable_headers(headers: &HeaderMap) -> Option<HeaderMap> {
    // Read as bytes: a value that is not all visible ASCII still names the fields it can (a field name is ASCII).
    let connection_listed: Vec<Vec<u8>> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|name| name.trim_ascii().to_ascii_lowercase())
        .collect();
    // Room for each name, not each value: `http` caps a map's slots (`with_capacity` panics past 24,576), and a
    // response can carry more values than that, one name repeated. The capacity is a hint: never a reason to fail.
    let mut kept = HeaderMap::try_with_capacity(headers.keys_len()).unwrap_or_default();
    for (name, value) in headers {
        if never_stored(name)
            || connection_listed
                .iter()
                .any(|c| c.as_slice() == name.as_str().as_bytes())
        {
            continue;
        }
        kept.append(name.clone(), value.clone());
    }
    if kept.len() > usize::from(u16::MAX) {
        return None;
    }
    Some(kept)
}

/// Where an entry's three windows (`fresh_until`, `stale_until`, `stale_if_error_until`) are: after magic,
/// version, digest and `stored_at`.
#[cfg_attr(not(any(feature = "redis", feature = "memory")), allow(dead_code))]
pub(crate) const WINDOWS_AT: usize = 4 + 1 + 32 + 8;
/// The bytes of the three windows.
#[cfg_attr(not(any(feature = "redis", feature = "memory")), allow(dead_code))]
pub(crate) const WINDOWS_LEN: usize = 8 * 3;

/// The windows of the entry whose first bytes are `head` (at least [`WINDOWS_AT`] + [`WINDOWS_LEN`] of them), as
/// they are once the entry is made stale at `at` (unix ms): each moved back by the freshness it had left, so that
/// the entry is stale from `at` on and its stale and stale-if-error windows keep their lengths from there (never
/// growing). `None` when `head` is no entry (another format, a marker) or the entry is stale at `at` already.
#[cfg_attr(not(any(feature = "redis", feature = "memory")), allow(dead_code))]
pub(crate) fn staled_windows(head: &[u8], at: u64) -> Option<[u8; WINDOWS_LEN]> {
    if head.get(..4)? != MAGIC || !matches!(head.get(4)?, &VERSION | &VERSION_LZ4) {
        return None;
    }
    let window = |i: usize| {
        let start = WINDOWS_AT + 8 * i;
        Some(u64::from_be_bytes(
            head.get(start..start + 8)?.try_into().ok()?,
        ))
    };
    let (fresh, stale, if_error) = (window(0)?, window(1)?, window(2)?);
    let left = fresh.checked_sub(at).filter(|&left| left > 0)?;
    let mut windows = [0; WINDOWS_LEN];
    for (i, until) in [
        at,
        stale.saturating_sub(left).max(at),
        if_error.saturating_sub(left).max(at),
    ]
    .into_iter()
    .enumerate()
    {
        windows[8 * i..8 * i + 8].copy_from_slice(&until.to_be_bytes());
    }
    Some(windows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_entry_made_stale_keeps_its_stale_windows_lengths_from_then() {
        let digest = [7u8; 32];
        // Fresh until 1,010,000, stale until 1,040,000, stale-if-error until 1,100,000.
        let bytes = entry(b"{}").encode(&digest);
        let windows = staled_windows(&bytes, 1_004_000).unwrap();
        let mut staled = bytes.to_vec();
        staled[WINDOWS_AT..WINDOWS_AT + WINDOWS_LEN].copy_from_slice(&windows);
        let d = Entry::decode(&Bytes::from(staled), &digest, MAX_BODY).unwrap();
        assert_eq!(d.stored_at, 1_000_000);
        assert_eq!(d.fresh_until, 1_004_000);
        assert_eq!(d.stale_until, 1_034_000);
        assert_eq!(d.stale_if_error_until, 1_094_000);
        assert_eq!(d.body, Bytes::from_static(b"{}"));
        // Stale already (or at its last fresh instant's end): left as it is.
        assert_eq!(staled_windows(&bytes, 1_010_000), None);
        assert_eq!(staled_windows(&bytes, 1_020_000), None);
        // Windows already shorter than the shift end at once, never before `at`.
        let short = Entry {
            stale_until: 1_010_000,
            stale_if_error_until: 1_010_000,
            ..entry(b"{}")
        }
        .encode(&digest);
        let windows = staled_windows(&short, 1_000_500).unwrap();
        assert_eq!(windows[..8], 1_000_500u64.to_be_bytes());
        assert_eq!(windows[8..16], 1_000_500u64.to_be_bytes());
        assert_eq!(windows[16..], 1_000_500u64.to_be_bytes());
        // Markers, other formats and short reads are no entries.
        assert_eq!(staled_windows(&Unstored::Alone.encode(&digest), 0), None);
        assert_eq!(staled_windows(b"{\"not\":\"ours\"}", 0), None);
        assert_eq!(staled_windows(&bytes[..WINDOWS_AT + 16], 1_004_000), None);
        // An entry's bytes of a version this crate does not write, or under another magic, are no entry either.
        for (at, byte) in [
            (4, 1),
            (4, VERSION_UNSTORED),
            (4, VERSION_LZ4 + 2),
            (0, b'{'),
        ] {
            let mut other = bytes.to_vec();
            other[at] = byte;
            assert_eq!(
                staled_windows(&other, 1_004_000),
                None,
                "byte {at} = {byte}"
            );
        }
    }

    /// The body cap the decoder is given.
    const MAX_BODY: usize = 1 << 20;

    fn entry(body: &'static [u8]) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.append("x-multi", HeaderValue::from_static("1"));
        headers.append("x-multi", HeaderValue::from_static("2"));
        Entry {
            stored_at: 1_000_000,
            fresh_until: 1_010_000,
            stale_until: 1_040_000,
            stale_if_error_until: 1_100_000,
            vary: None,
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn round_trip_keeps_everything_and_slices_the_body() {
        let e = entry(br#"{"a":1}"#);
        let digest = [7u8; 32];
        let bytes = e.encode(&digest);
        let d = Entry::decode(&bytes, &digest, MAX_BODY).unwrap();
        assert_eq!(d.stored_at, e.stored_at);
        assert_eq!(d.fresh_until, e.fresh_until);
        assert_eq!(d.stale_until, e.stale_until);
        assert_eq!(d.stale_if_error_until, e.stale_if_error_until);
        assert_eq!(d.vary, None);
        assert_eq!(d.status, e.status);
        assert_eq!(d.headers, e.headers);
        assert_eq!(d.body, e.body);
        // Zero-copy: the body points into the stored bytes.
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        assert!(range.contains(&(d.body.as_ptr() as usize)));
    }

    #[test]
    fn size_is_body_plus_headers_plus_fixed_overhead() {
        let e = entry(b"0123456789");
        let headers: usize = e
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + PER_HEADER)
            .sum();
        assert_eq!(e.encode(&[0; 32]).len(), FIXED_OVERHEAD + headers + 10);
        assert_eq!(e.encoded_len(), FIXED_OVERHEAD + headers + 10);
        assert_eq!(FIXED_OVERHEAD, 78);
        let varied = Entry {
            vary: Some([3; 32]),
            ..e
        };
        let bytes = varied.encode(&[0; 32]);
        assert_eq!(bytes.len(), FIXED_OVERHEAD + VARY_DIGEST + headers + 10);
        // What the compression counts save against: the length raw, vary digest and all.
        assert_eq!(varied.encoded_len(), bytes.len());
        assert_eq!(
            Entry::decode(&bytes, &[0; 32], MAX_BODY).unwrap().vary,
            Some([3; 32])
        );
    }

    #[test]
    fn markers_are_read_for_their_own_key_and_never_decode_as_entries() {
        let digest = [5u8; 32];
        for kind in [Unstored::Alone, Unstored::Shared] {
            let marker = kind.encode(&digest);
            assert_eq!(Unstored::read(&marker, &digest), Some(kind));
            assert_eq!(Unstored::read(&marker, &[6u8; 32]), None);
            // What a reader of an entry (of this version or an older one) makes of it: a miss.
            assert_eq!(
                Entry::decode(&marker, &digest, MAX_BODY).unwrap_err(),
                DecodeError::Version
            );
            assert_eq!(Unstored::read(&marker[..marker.len() - 1], &digest), None);
        }
        let mut unknown = Unstored::Alone.encode(&digest).to_vec();
        unknown[37] = 9;
        assert_eq!(Unstored::read(&unknown, &digest), None);
        // Each part must hold on its own: a marker's bytes with one more after them, or under another magic.
        let mut longer = Unstored::Alone.encode(&digest).to_vec();
        longer.push(0);
        assert_eq!(Unstored::read(&longer, &digest), None);
        let mut foreign = Unstored::Alone.encode(&digest).to_vec();
        foreign[0] = b'{';
        assert_eq!(Unstored::read(&foreign, &digest), None);
        assert_eq!(Unstored::read(&entry(b"x").encode(&digest), &digest), None);
    }

    #[test]
    fn foreign_versions_digests_and_truncations_are_rejected() {
        let e = entry(b"body");
        let digest = [1u8; 32];
        let bytes = e.encode(&digest);
        assert_eq!(
            Entry::decode(&bytes, &[2u8; 32], MAX_BODY).unwrap_err(),
            DecodeError::DigestMismatch
        );
        let mut v = bytes.to_vec();
        v[4] = 1;
        assert_eq!(
            Entry::decode(&Bytes::from(v), &digest, MAX_BODY).unwrap_err(),
            DecodeError::Version
        );
        assert_eq!(
            Entry::decode(&Bytes::from_static(b"{\"json\":1}"), &digest, MAX_BODY).unwrap_err(),
            DecodeError::Foreign
        );
        for cut in 0..bytes.len() {
            assert!(
                Entry::decode(&bytes.slice(..cut), &digest, MAX_BODY).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(
            Entry::decode(&Bytes::from(longer), &digest, MAX_BODY).unwrap_err(),
            DecodeError::Malformed
        );
    }

    #[test]
    fn times_are_reported_without_overflow() {
        let e = entry(b"");
        assert_eq!(e.ttl_secs(1_000_000), 10);
        assert_eq!(e.ttl_secs(1_012_500), -3);
        // Fresh until its last millisecond, stale from `fresh_until` on: the sign says which.
        assert_eq!(e.ttl_secs(1_009_999), 0);
        assert_eq!(e.ttl_secs(1_010_000), -1);
        assert_eq!(e.ttl_secs(1_011_000), -1);
        assert_eq!(e.ttl_secs(1_011_001), -2);
        assert_eq!(e.age_secs(1_012_500), 12);
        assert_eq!(e.store_ttl_ms(1_000_000, 5_000), 100_000);
        // An entry the origin can be asked about is kept that much longer, for revalidation.
        let mut validated = e.clone();
        validated
            .headers
            .insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        assert_eq!(validated.store_ttl_ms(1_000_000, 5_000), 105_000);
        validated.headers.remove(header::ETAG);
        validated.headers.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(validated.store_ttl_ms(1_000_000, 5_000), 105_000);
        assert_eq!(
            validated.store_ttl_ms(1_200_000, 5_000),
            0,
            "gone when its keep is over"
        );
        // Timestamps forged near the ends of the range, read at either end of time.
        let forged = Entry {
            stored_at: u64::MAX,
            fresh_until: u64::MAX,
            stale_until: u64::MAX,
            stale_if_error_until: u64::MAX,
            ..e
        };
        assert_eq!(forged.ttl_secs(0), (u64::MAX / 1000) as i64);
        assert_eq!(forged.ttl_secs(u64::MAX), -1);
        assert_eq!(forged.age_secs(0), 0);
        assert_eq!(forged.store_ttl_ms(0, u64::MAX), u64::MAX);
        let past = Entry {
            stored_at: 0,
            fresh_until: 0,
            ..forged
        };
        assert_eq!(past.ttl_secs(u64::MAX), -((u64::MAX / 1000) as i64) - 1);
        assert_eq!(past.age_secs(u64::MAX), u64::MAX / 1000);
    }

    #[test]
    fn hop_by_hop_and_secret_headers_are_not_stored() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(header::SET_COOKIE, HeaderValue::from_static("s=1"));
        h.insert("set-cookie2", HeaderValue::from_static("s=1; Version=1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert(
            "proxy-authentication-info",
            HeaderValue::from_static("nextnonce=\"b\""),
        );
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let kept = storable_headers(&h).unwrap();
        assert_eq!(kept.len(), 1);
        assert!(kept.contains_key(header::CONTENT_TYPE));

        // A `Connection` value with a byte outside visible ASCII still names the fields it can.
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"X-Hop, x-\xc3\xa9").unwrap(),
        );
        let kept = storable_headers(&h).unwrap();
        assert!(!kept.contains_key("x-hop"));
    }

    #[test]
    fn headers_are_stored_up_to_as_many_as_their_count_can_say() {
        // The count is a `u16`: 65,535 values frame, one more would not (the response then passes uncached).
        let mut h = HeaderMap::new();
        for i in 0..u32::from(u16::MAX) {
            h.append("x-row", HeaderValue::from(i));
        }
        assert_eq!(storable_headers(&h).map(|kept| kept.len()), Some(65_535));
        h.append("x-row", HeaderValue::from_static("over"));
        assert_eq!(storable_headers(&h), None);
    }

    /// Without the feature, a compressed entry (version 3) is another version: a miss, never its block for a body.
    #[test]
    #[cfg(not(feature = "compression"))]
    fn a_compressed_entry_is_another_version_without_the_feature() {
        let digest = [4u8; 32];
        let mut v = entry(b"body").encode(&digest).to_vec();
        v[4] = VERSION_LZ4;
        assert_eq!(
            Entry::decode(&Bytes::from(v), &digest, MAX_BODY).unwrap_err(),
            DecodeError::Version
        );
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Entry::decode(&Bytes::from(bytes), &[0; 32], MAX_BODY);
        }

        #[test]
        fn decoder_survives_mutations_of_valid_entries(
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let digest = [9u8; 32];
            let mut v = entry(b"hello world").encode(&digest).to_vec();
            let i = at.index(v.len());
            v[i] = byte;
            let _ = Entry::decode(&Bytes::from(v), &digest, MAX_BODY);
        }

        #[test]
        #[cfg(feature = "compression")]
        fn decoder_survives_mutations_of_compressed_entries(
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let digest = [9u8; 32];
            let body = json_rows(2000);
            let mut v = Entry { body: Bytes::from(body.clone()), ..entry(b"") }
                .encode_with(&digest, Some(0))
                .to_vec();
            let i = at.index(v.len());
            v[i] = byte;
            // No panic, and (unless the version byte changed) never a body of another length than the one stored.
            let compressed = v[4] == VERSION_LZ4;
            if let Ok(d) = Entry::decode(&Bytes::from(v), &digest, MAX_BODY)
                && compressed
            {
                prop_assert_eq!(d.body.len(), body.len());
            }
        }
    }

    /// `rows` rows of a JSON report: compressible, as API answers are.
    #[cfg(feature = "compression")]
    fn json_rows(rows: usize) -> Vec<u8> {
        let rows: Vec<String> = (0..rows)
            .map(|i| format!(r#"{{"id":{i},"status":"open","owner":"team-{}"}}"#, i % 7))
            .collect();
        format!("[{}]", rows.join(",")).into_bytes()
    }

    #[cfg(feature = "compression")]
    mod compressed {
        use super::*;

        fn with_body(body: Vec<u8>) -> Entry {
            Entry {
                body: Bytes::from(body),
                ..entry(b"")
            }
        }

        #[test]
        fn a_body_above_the_threshold_is_stored_compressed_and_read_back_whole() {
            let digest = [4u8; 32];
            let e = with_body(json_rows(1000));
            let raw = e.encode(&digest);
            let small = e.encode_with(&digest, Some(1024));
            assert_eq!(small[4], VERSION_LZ4);
            assert!(
                small.len() * 3 < raw.len(),
                "{} of {}",
                small.len(),
                raw.len()
            );
            let d = Entry::decode(&small, &digest, MAX_BODY).unwrap();
            assert_eq!(d.body, e.body);
            assert_eq!(d.headers, e.headers);
            assert_eq!(
                (
                    d.stored_at,
                    d.fresh_until,
                    d.stale_until,
                    d.stale_if_error_until
                ),
                (
                    e.stored_at,
                    e.fresh_until,
                    e.stale_until,
                    e.stale_if_error_until
                )
            );
            // At or below the threshold, or without one: raw, byte for byte.
            assert_eq!(e.encode_with(&digest, Some(e.body.len())), raw);
            assert_eq!(e.encode_with(&digest, None), raw);
            assert_eq!(raw[4], VERSION);
            // The worst case LZ4 can express decodes too: a megabyte of zeros.
            let zeros = with_body(vec![0; 1 << 20]);
            let bytes = zeros.encode_with(&digest, Some(0));
            assert!(bytes.len() < 8 << 10, "{}", bytes.len());
            assert_eq!(
                Entry::decode(&bytes, &digest, 1 << 20).unwrap().body,
                zeros.body
            );
        }

        /// `len` bytes of noise (xorshift): LZ4 cannot shrink it by an eighth.
        fn noise(len: usize) -> Vec<u8> {
            let mut x = 0x9e37_79b9_7f4a_7c15_u64;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }

        #[test]
        fn bodies_that_do_not_shrink_or_are_already_encoded_are_stored_raw() {
            let digest = [4u8; 32];
            let e = with_body(noise(8192));
            assert_eq!(e.encode_with(&digest, Some(0)), e.encode(&digest));
            let mut gzipped = with_body(json_rows(1000));
            gzipped
                .headers
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            assert_eq!(gzipped.encode_with(&digest, Some(0))[4], VERSION);
            gzipped.headers.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static("Identity"),
            );
            assert_eq!(gzipped.encode_with(&digest, Some(0))[4], VERSION_LZ4);
        }

        #[test]
        fn a_body_is_stored_compressed_when_its_block_and_length_take_at_most_seven_eighths() {
            let digest = [4u8; 32];
            // Noise, then zeros: LZ4 copies the noise and folds the zeros, so a body with more zeros saves more.
            // The stored field is the block and the raw length's 4 bytes; the body's length less an eighth of it
            // (rounded down) is the most it may take.
            let body = |zeros: usize| {
                let mut body = noise(4096);
                body.resize(4096 + zeros, 0);
                body
            };
            let over = |zeros: usize| {
                let body = body(zeros);
                let mut block = vec![0; lz4_flex::block::get_maximum_output_size(body.len())];
                let len = lz4_flex::block::compress_into(&body, &mut block).unwrap();
                (len + 4) as i64 - (body.len() - body.len() / 8) as i64
            };
            let exact = (0..2048).find(|&zeros| over(zeros) == 0).unwrap();
            let short = (0..2048).find(|&zeros| over(zeros) == 1).unwrap();
            let e = with_body(body(exact));
            let stored = e.encode_with(&digest, Some(0));
            assert_eq!(stored[4], VERSION_LZ4);
            assert_eq!(
                stored.len(),
                e.encoded_len() - e.body.len() / 8,
                "{exact} zeros"
            );
            assert_eq!(
                Entry::decode(&stored, &digest, MAX_BODY).unwrap().body,
                e.body
            );
            let e = with_body(body(short));
            assert_eq!(
                e.encode_with(&digest, Some(0)),
                e.encode(&digest),
                "{short} zeros"
            );
        }

        #[test]
        fn a_compressed_body_longer_than_the_cap_or_than_its_block_allows_is_rejected() {
            let digest = [4u8; 32];
            let e = with_body(json_rows(1000));
            let bytes = e.encode_with(&digest, Some(0));
            let len = e.body.len();
            assert!(Entry::decode(&bytes, &digest, len).is_ok());
            assert_eq!(
                Entry::decode(&bytes, &digest, len - 1).unwrap_err(),
                DecodeError::Malformed
            );
            // The raw length sits right after the body field's length, at the end of the head.
            let (_, head) = Entry::decode_head(&bytes, &digest, len).unwrap();
            let forge = |raw_len: u32| {
                let mut v = bytes.to_vec();
                v[head + 4..head + 8].copy_from_slice(&raw_len.to_be_bytes());
                Entry::decode(&Bytes::from(v), &digest, usize::MAX)
            };
            assert!(forge(len as u32).is_ok());
            let block = bytes.len() - head - 8;
            for raw_len in [
                len as u32 - 1,
                len as u32 + 1,
                (block * 256 + 1) as u32,
                u32::MAX,
            ] {
                assert_eq!(
                    forge(raw_len).unwrap_err(),
                    DecodeError::Malformed,
                    "{raw_len}"
                );
            }
            for cut in 0..bytes.len() {
                assert!(
                    Entry::decode(&bytes.slice(..cut), &digest, len).is_err(),
                    "cut at {cut}"
                );
            }
        }
    }
}
