//! A body as the layer reads it, with feature `decompress` its `Content-Encoding` undone (gzip, deflate, br,
//! zstd) within the layer's body cap: an answer's, as [`store_when`](super::RedisCacheLayerBuilder::store_when)
//! judges it ([`readable`]), and a request's, as the layer screens, keys and echoes it ([`Content`]).
//!
//! An origin answers in a `Content-Encoding` when its client asked for one (`Accept-Encoding`, as tower-http's
//! decompression layer sends it from outside the cache, so that entries stay compressed). A predicate that reads
//! JSON ([`graphql::is_success`](super::graphql::is_success)) would find none in the encoded bytes and refuse
//! every such answer, so nothing would ever be stored. The entry keeps the encoded bytes: only the predicate's
//! view is decoded, on a miss, never on a hit. (An answer to a call whose member the answers echo is decoded
//! itself, so that the member can be set in it: `Engine::decoded_for_echo`.)
//!
//! A client may compress its request body too (Elasticsearch's and OpenSearch's clients can gzip theirs). The
//! origin is sent the bytes as they came; the layer reads them decoded, so that
//! [`query_when`](super::RedisCacheLayerBuilder::query_when) and the `_method` screen see the query, the key
//! holds its canonical JSON, and the echoed member is found.

use super::key::KeyedBody;
use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_ENCODING;
use std::borrow::Cow;

/// What `store_when` is given of an answer's body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Readable<'a> {
    /// The body to judge: decoded, or as it came when it is in no coding, or in one this build does not decode
    /// (a predicate may know it).
    Body(Cow<'a, [u8]>),
    /// In codings this build decodes, but they do not undo (a corrupt or cut stream), or undone they hold more
    /// than the cap: the predicate cannot judge it, so it is not stored.
    #[cfg_attr(not(feature = "decompress"), allow(dead_code))]
    Undecodable,
}

/// `body` as `store_when` reads it, given the answer's `headers`, decoded to at most `limit` bytes.
pub(crate) fn readable<'a>(headers: &HeaderMap, body: &'a [u8], limit: usize) -> Readable<'a> {
    #[cfg(feature = "decompress")]
    {
        codecs::readable(headers, body, limit)
    }
    #[cfg(not(feature = "decompress"))]
    {
        let _ = (headers, limit);
        Readable::Body(Cow::Borrowed(body))
    }
}

/// A request's body as the layer reads it: to screen it (`query_when`, the `_method` screen), key it and find its
/// echoed member. The origin is sent the body as it came, whatever this says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Content {
    /// In no coding, or in one this build does not undo: read as it came.
    AsSent,
    /// Undone from the codings its `Content-Encoding` names.
    #[cfg_attr(not(feature = "decompress"), allow(dead_code))]
    Decoded(Bytes),
    /// In codings this build undoes, but they do not undo within the cap (a corrupt or cut stream, or more than
    /// the cap once undone): the layer cannot tell what it asks, so the request is not the cache's.
    #[cfg_attr(not(feature = "decompress"), allow(dead_code))]
    Undecodable,
}

impl Content {
    /// The content of a request `body` whose head has `headers`, decoded to at most `limit` bytes. A body in no
    /// coding (nearly every one) costs one look-up of `Content-Encoding`.
    #[inline]
    pub(crate) fn of(headers: &HeaderMap, body: &[u8], limit: usize) -> Content {
        if body.is_empty() || !headers.contains_key(CONTENT_ENCODING) {
            return Content::AsSent;
        }
        match readable(headers, body, limit) {
            Readable::Body(Cow::Borrowed(_)) => Content::AsSent,
            Readable::Body(Cow::Owned(decoded)) => Content::Decoded(Bytes::from(decoded)),
            Readable::Undecodable => Content::Undecodable,
        }
    }

    /// The bytes to read: the decoded ones, else `sent`, the body as it came.
    #[inline]
    pub(crate) fn read<'a>(&'a self, sent: &'a [u8]) -> &'a [u8] {
        match self {
            Content::Decoded(decoded) => decoded,
            Content::AsSent | Content::Undecodable => sent,
        }
    }

    /// The body as its key holds it, given `sent`, the body as it came.
    #[inline]
    pub(crate) fn keyed<'a>(&'a self, sent: &'a [u8]) -> KeyedBody<'a> {
        match self {
            Content::Decoded(decoded) => KeyedBody {
                bytes: decoded,
                decoded: true,
            },
            Content::AsSent | Content::Undecodable => KeyedBody::sent(sent),
        }
    }
}

#[cfg(feature = "decompress")]
mod codecs {
    use super::Readable;
    use crate::cache::key::content_codings;
    use http::HeaderMap;
    use std::borrow::Cow;
    use std::io::Read;

    /// More codings than this on one answer are not undone: no server stacks them so, and each pass costs.
    const MAX_CODINGS: usize = 3;

    /// A coding this build undoes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Coding {
        Gzip,
        Deflate,
        Brotli,
        Zstd,
    }

    impl Coding {
        /// The coding a `Content-Encoding` token names (RFC 9110 §8.4.1; [`content_codings`] reads `x-gzip` as
        /// `gzip`), if this build undoes it.
        fn named(token: &str) -> Option<Coding> {
            [
                ("gzip", Coding::Gzip),
                ("deflate", Coding::Deflate),
                ("br", Coding::Brotli),
                ("zstd", Coding::Zstd),
            ]
            .into_iter()
            .find_map(|(name, coding)| token.eq_ignore_ascii_case(name).then_some(coding))
        }
    }

    pub(super) fn readable<'a>(headers: &HeaderMap, body: &'a [u8], limit: usize) -> Readable<'a> {
        let mut applied = [Coding::Gzip; MAX_CODINGS];
        let mut count = 0;
        for token in content_codings(headers) {
            let Some(coding) = Coding::named(token) else {
                // Not one to undo here: the predicate gets the bytes as they came, as without the feature.
                return Readable::Body(Cow::Borrowed(body));
            };
            if count == MAX_CODINGS {
                return Readable::Undecodable;
            }
            applied[count] = coding;
            count += 1;
        }
        let mut decoded = Cow::Borrowed(body);
        // The last coding applied is the first undone.
        for &coding in applied[..count].iter().rev() {
            match decode(coding, &decoded, limit) {
                Some(bytes) => decoded = Cow::Owned(bytes),
                None => return Readable::Undecodable,
            }
        }
        Readable::Body(decoded)
    }

    /// `input` decoded from `coding`, or `None` when it does not decode or holds more than `limit` bytes.
    fn decode(coding: Coding, input: &[u8], limit: usize) -> Option<Vec<u8>> {
        match coding {
            Coding::Gzip => read_all(flate2::read::MultiGzDecoder::new(input), input.len(), limit),
            // RFC 9110's `deflate` is the zlib format (RFC 1950); some servers send a raw deflate stream (RFC 1951)
            // under that name, which browsers read too: the one tried when the other does not decode.
            Coding::Deflate => is_zlib(input)
                .then(|| read_all(flate2::read::ZlibDecoder::new(input), input.len(), limit))
                .flatten()
                .or_else(|| read_all(flate2::read::DeflateDecoder::new(input), input.len(), limit)),
            Coding::Brotli => {
                use brotli_decompressor::BrotliDecoderParameter::BROTLI_DECODER_PARAM_LARGE_WINDOW;
                let mut decoder = brotli_decompressor::Decompressor::new(input, 4096);
                // HTTP's `br` is RFC 7932's format, whose window is at most 16 MiB; the decoder would also take
                // the large-window variant's, up to 1 GiB.
                decoder.set_parameter(BROTLI_DECODER_PARAM_LARGE_WINDOW, 0);
                read_all(decoder, input.len(), limit)
            }
            Coding::Zstd => zstd(input, limit),
        }
    }

    /// Whether `input` opens with a zlib header (RFC 1950 §2.2): method 8 (deflate), a window of at most 32 KiB,
    /// and a check that makes the first two bytes a multiple of 31.
    pub(super) fn is_zlib(input: &[u8]) -> bool {
        match input {
            [cmf, flg, ..] => {
                cmf & 0x0f == 8
                    && cmf >> 4 <= 7
                    && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
            }
            _ => false,
        }
    }

    /// Everything `reader` decodes, if it decodes to the end within `limit` bytes.
    fn read_all(reader: impl Read, encoded: usize, limit: usize) -> Option<Vec<u8>> {
        let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
        let mut out = Vec::with_capacity(encoded.saturating_mul(4).min(limit));
        reader.take(cap).read_to_end(&mut out).ok()?;
        (out.len() <= limit).then_some(out)
    }

    /// A zstd stream decoded: one or more frames (RFC 8878 §3), skippable frames passed over.
    fn zstd(input: &[u8], limit: usize) -> Option<Vec<u8>> {
        use ruzstd::decoding::StreamingDecoder;
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};

        // No frame needs a window larger than the cap to decode within it, and the decoder allocates by the
        // window a frame asks for.
        let window = u64::try_from(limit).unwrap_or(u64::MAX).max(1 << 20);
        let mut rest = input;
        let mut out = Vec::with_capacity(input.len().saturating_mul(4).min(limit));
        while !rest.is_empty() {
            match StreamingDecoder::new_with_max_window_size(&mut rest, window) {
                Ok(frame) => {
                    let room = limit.checked_sub(out.len())?;
                    out.extend(read_all(frame, 0, room)?);
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => rest = rest.get(usize::try_from(length).ok()?..)?,
                Err(_) => return None,
            }
        }
        // An empty stream holds no frame, and is no zstd.
        (!input.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::CONTENT_ENCODING;

    fn headers(codings: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for coding in codings {
            headers.append(CONTENT_ENCODING, HeaderValue::from_static(coding));
        }
        headers
    }

    #[test]
    fn a_body_in_no_coding_is_read_as_it_came() {
        for codings in [&[][..], &["identity"]] {
            let read = readable(&headers(codings), b"{\"data\": 1}", 4);
            assert_eq!(
                read,
                Readable::Body(Cow::Borrowed(&b"{\"data\": 1}"[..])),
                "{codings:?}"
            );
        }
    }

    #[cfg(not(feature = "decompress"))]
    #[test]
    fn without_the_feature_an_encoded_body_is_read_as_it_came() {
        let read = readable(&headers(&["gzip"]), b"\x1f\x8b", 100);
        assert_eq!(read, Readable::Body(Cow::Borrowed(&b"\x1f\x8b"[..])));
        assert_eq!(
            Content::of(&headers(&["gzip"]), b"\x1f\x8b", 100),
            Content::AsSent
        );
    }

    #[test]
    fn a_request_body_in_no_coding_is_read_and_keyed_as_it_came() {
        let sent = Bytes::from_static(b"{\"query\": 1}");
        for codings in [&[][..], &["identity"], &["compress"]] {
            let content = Content::of(&headers(codings), &sent, 4);
            assert_eq!(content, Content::AsSent, "{codings:?}");
            assert_eq!(content.read(&sent), &sent[..]);
            assert!(!content.keyed(&sent).decoded);
        }
        // An empty body holds nothing to decode, whatever its head says.
        assert_eq!(Content::of(&headers(&["gzip"]), b"", 4), Content::AsSent);
    }

    #[cfg(feature = "decompress")]
    mod decompress {
        use super::*;
        use flate2::Compression;
        use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
        use std::io::Write;

        const JSON: &[u8] = br#"{"data": {"items": [{"id": 1}, {"id": 2}]}}"#;

        fn gzip(bytes: &[u8]) -> Vec<u8> {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
            encoder.write_all(bytes).unwrap();
            encoder.finish().unwrap()
        }

        fn zlib(bytes: &[u8]) -> Vec<u8> {
            let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
            encoder.write_all(bytes).unwrap();
            encoder.finish().unwrap()
        }

        fn raw_deflate(bytes: &[u8]) -> Vec<u8> {
            let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
            encoder.write_all(bytes).unwrap();
            encoder.finish().unwrap()
        }

        fn zstd(bytes: &[u8]) -> Vec<u8> {
            ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
        }

        /// `{"data": {"pad": "a…a"}}` with 100,000 `a`s, as Python's `brotli.compress` writes it (quality 11): 46
        /// bytes for 100,021.
        const BROTLI_PAD: [u8; 46] = [
            0x5b, 0xb4, 0x86, 0x81, 0xdf, 0x71, 0x60, 0xc7, 0x38, 0x5e, 0x3c, 0x82, 0xf0, 0x76,
            0x29, 0xd4, 0x22, 0x61, 0x64, 0x7b, 0x0b, 0x04, 0xae, 0x74, 0xfa, 0x60, 0x03, 0x4e,
            0xc0, 0xa3, 0x9a, 0x58, 0x6e, 0x02, 0x18, 0x80, 0x00, 0x03, 0xdc, 0xc2, 0x36, 0x9e,
            0xe5, 0x17, 0xa0, 0x66,
        ];

        fn pad() -> Vec<u8> {
            let mut json = br#"{"data": {"pad": ""#.to_vec();
            json.extend(std::iter::repeat_n(b'a', 100_000));
            json.extend(br#""}}"#);
            json
        }

        fn read(codings: &[&'static str], body: &[u8], limit: usize) -> Option<Vec<u8>> {
            match readable(&headers(codings), body, limit) {
                Readable::Body(bytes) => Some(bytes.into_owned()),
                Readable::Undecodable => None,
            }
        }

        #[test]
        fn a_request_body_is_read_and_keyed_decoded_within_the_cap_or_not_at_all() {
            let sent = Bytes::from(gzip(JSON));
            let content = Content::of(&headers(&["gzip"]), &sent, JSON.len());
            assert_eq!(content, Content::Decoded(Bytes::from_static(JSON)));
            assert_eq!(content.read(&sent), JSON);
            let keyed = content.keyed(&sent);
            assert_eq!((keyed.bytes, keyed.decoded), (JSON, true));
            // A byte over the cap, or a stream cut short: what it asks cannot be read, and is keyed as it came.
            let cut = Bytes::copy_from_slice(&sent[..sent.len() - 4]);
            for (body, limit) in [(&sent, JSON.len() - 1), (&cut, 1 << 20)] {
                let content = Content::of(&headers(&["gzip"]), body, limit);
                assert_eq!(content, Content::Undecodable, "{limit}");
                assert_eq!(content.read(body), &body[..]);
                assert!(!content.keyed(body).decoded);
            }
        }

        #[test]
        fn each_coding_is_undone() {
            assert_eq!(read(&["gzip"], &gzip(JSON), 1 << 20).as_deref(), Some(JSON));
            assert_eq!(
                read(&["X-GZIP"], &gzip(JSON), 1 << 20).as_deref(),
                Some(JSON)
            );
            assert_eq!(
                read(&["deflate"], &zlib(JSON), 1 << 20).as_deref(),
                Some(JSON)
            );
            assert_eq!(
                read(&["deflate"], &raw_deflate(JSON), 1 << 20).as_deref(),
                Some(JSON)
            );
            assert_eq!(read(&["zstd"], &zstd(JSON), 1 << 20).as_deref(), Some(JSON));
            assert_eq!(read(&["br"], &BROTLI_PAD, 1 << 20), Some(pad()));
        }

        #[test]
        fn a_zlib_header_is_told_by_its_method_window_and_check() {
            // RFC 1950 §2.2: method 8, a window of at most 2^15 (CINFO 7), and CMF·256 + FLG a multiple of 31.
            for (header, zlib) in [
                ([0x78, 0x9c], true),
                ([0x78, 0x01], true),
                ([0x78, 0xda], true),
                ([0x08, 0x1d], true),
                ([0x79, 0x18], false),
                ([0x88, 0x1c], false),
                ([0x78, 0x9d], false),
            ] {
                assert_eq!(codecs::is_zlib(&header), zlib, "{header:02x?}");
            }
            assert!(!codecs::is_zlib(&[0x78]));
            assert!(!codecs::is_zlib(&[]));
        }

        #[test]
        fn a_raw_deflate_stream_that_opens_as_zlib_does_is_read_raw() {
            // A stored block of 29 bytes, not the last, whose unused header bit is set: the first two bytes,
            // 0x08 0x1d, pass the zlib header's checks; then an empty last block.
            let json = br#"{"data": {"items": [1, 234]}}"#;
            let stream = [
                &[0x08, 0x1d, 0x00, 0xe2, 0xff][..],
                json,
                &[0x01, 0x00, 0x00, 0xff, 0xff],
            ]
            .concat();
            assert!(codecs::is_zlib(&stream));
            assert_eq!(
                read(&["deflate"], &stream, 1 << 20).as_deref(),
                Some(&json[..])
            );
        }

        #[test]
        fn stacked_codings_are_undone_last_first() {
            let twice = zstd(&gzip(JSON));
            assert_eq!(
                read(&["gzip", "zstd"], &twice, 1 << 20).as_deref(),
                Some(JSON)
            );
            assert_eq!(
                read(&["gzip, zstd"], &twice, 1 << 20).as_deref(),
                Some(JSON)
            );
            // In the wrong order, the outer coding is not gzip.
            assert_eq!(read(&["zstd, gzip"], &twice, 1 << 20), None);
            let four = ["gzip", "gzip", "gzip", "gzip"];
            let mut body = JSON.to_vec();
            for _ in four {
                body = gzip(&body);
            }
            assert_eq!(
                read(&four, &body, 1 << 20),
                None,
                "more codings than undone"
            );
            assert_eq!(
                read(&four[..3], &gzip(&gzip(&gzip(JSON))), 1 << 20).as_deref(),
                Some(JSON)
            );
        }

        #[test]
        fn gzip_members_and_zstd_frames_are_read_in_turn() {
            let (a, b) = JSON.split_at(10);
            let members = [gzip(a), gzip(b)].concat();
            assert_eq!(read(&["gzip"], &members, 1 << 20).as_deref(), Some(JSON));
            // A skippable frame (magic 0x184D2A5?, a length, that many bytes) between two frames.
            let skippable = [
                &0x184D_2A50_u32.to_le_bytes()[..],
                &3_u32.to_le_bytes(),
                b"xyz",
            ]
            .concat();
            let frames = [zstd(a), skippable, zstd(b)].concat();
            assert_eq!(read(&["zstd"], &frames, 1 << 20).as_deref(), Some(JSON));
        }

        #[test]
        fn a_body_that_decodes_past_the_cap_is_undecodable_whatever_its_coding() {
            let pad = pad();
            let limit = pad.len() - 1;
            assert_eq!(
                read(&["br"], &BROTLI_PAD, pad.len()),
                Some(pad.clone()),
                "at the cap"
            );
            assert_eq!(read(&["br"], &BROTLI_PAD, limit), None);
            assert_eq!(read(&["gzip"], &gzip(&pad), limit), None);
            assert_eq!(read(&["deflate"], &zlib(&pad), limit), None);
            assert_eq!(read(&["deflate"], &raw_deflate(&pad), limit), None);
            assert_eq!(read(&["zstd"], &zstd(&pad), limit), None);
            let (a, b) = pad.split_at(60_000);
            assert_eq!(
                read(&["zstd"], &[zstd(a), zstd(b)].concat(), limit),
                None,
                "over two frames"
            );
            assert_eq!(
                read(&["gzip"], &[gzip(a), gzip(b)].concat(), limit),
                None,
                "over two members"
            );
        }

        #[test]
        fn a_cut_or_corrupt_stream_is_undecodable() {
            for (coding, encoded) in [
                ("gzip", gzip(JSON)),
                ("deflate", zlib(JSON)),
                ("zstd", zstd(JSON)),
                ("br", BROTLI_PAD.to_vec()),
            ] {
                let cut = &encoded[..encoded.len() - 5];
                assert_eq!(read(&[coding], cut, 1 << 20), None, "{coding} cut");
                assert_eq!(read(&[coding], b"", 1 << 20), None, "{coding} empty");
            }
            assert_eq!(read(&["gzip"], JSON, 1 << 20), None, "not gzip at all");
            assert_eq!(read(&["zstd"], JSON, 1 << 20), None, "not zstd at all");
            let mut trailing = gzip(JSON);
            trailing.extend(b"garbage");
            assert_eq!(
                read(&["gzip"], &trailing, 1 << 20),
                None,
                "gzip with bytes after it"
            );
        }

        const CODINGS: [&str; 4] = ["gzip", "deflate", "br", "zstd"];

        proptest::proptest! {
            #[test]
            fn any_bytes_in_any_coding_decode_within_the_cap_or_not_at_all(
                coding in 0..CODINGS.len(),
                body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
                limit in 0usize..4096,
            ) {
                if let Some(decoded) = read(&[CODINGS[coding]], &body, limit) {
                    proptest::prop_assert!(decoded.len() <= limit);
                }
            }

            #[test]
            fn an_encoded_body_decodes_to_itself_when_it_fits(
                coding in 0..3usize,
                body in proptest::collection::vec(0u8..4, 0..4096),
                limit in 0usize..4096,
            ) {
                let (name, encoded) = match coding {
                    0 => ("gzip", gzip(&body)),
                    1 => ("deflate", zlib(&body)),
                    _ => ("zstd", zstd(&body)),
                };
                let expected = (body.len() <= limit).then_some(body);
                proptest::prop_assert_eq!(read(&[name], &encoded, limit), expected);
            }
        }

        #[test]
        fn an_unknown_coding_leaves_the_body_as_it_came() {
            let gz = gzip(JSON);
            assert_eq!(read(&["compress"], &gz, 1 << 20), Some(gz.clone()));
            assert_eq!(read(&["gzip", "x-custom"], &gz, 1 << 20), Some(gz));
        }
    }
}
