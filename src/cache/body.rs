//! [`ResponseBody`]: the one body type for answers from the store and from the inner service, plus the
//! size-capped buffering both directions need.

use crate::error::BoxError;
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// The response body of [`RedisCache`](super::RedisCache): complete bytes (a cached or buffered answer), or
/// the inner service's body streamed through (responses over the size cap, bypassed requests).
pub struct ResponseBody<R> {
    kind: Kind<R>,
}

enum Kind<R> {
    Full(Option<Bytes>),
    Streaming {
        prefix: Option<Bytes>,
        inner: Pin<Box<R>>,
    },
}

impl<R> ResponseBody<R> {
    pub(crate) fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full(if bytes.is_empty() { None } else { Some(bytes) }),
        }
    }

    pub(crate) fn streaming(prefix: Option<Bytes>, inner: Pin<Box<R>>) -> Self {
        ResponseBody {
            kind: Kind::Streaming {
                prefix: prefix.filter(|p| !p.is_empty()),
                inner,
            },
        }
    }
}

impl<R> fmt::Debug for ResponseBody<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full(bytes) => f
                .debug_struct("ResponseBody::Full")
                .field("len", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Streaming { .. } => f
                .debug_struct("ResponseBody::Streaming")
                .finish_non_exhaustive(),
        }
    }
}

impl<R> Body for ResponseBody<R>
where
    R: Body,
    R::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Streaming { prefix, inner } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                match ready!(inner.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => Poll::Ready(Some(Ok(
                        frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                    ))),
                    Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streaming { prefix, inner } => prefix.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streaming { prefix, inner } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let hint = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + extra);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + extra);
                }
                out
            }
        }
    }
}

/// A body read up to a cap.
pub(crate) enum Collected<T> {
    /// The whole body, within the cap.
    Complete(Bytes),
    /// Over the cap: what was read, and the rest still unread.
    TooLarge { prefix: Bytes, rest: Pin<Box<T>> },
}

/// The `Content-Length` header, when present and valid.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads `body` until it ends or passes `max` bytes. Trailers are dropped. A single-frame body is not copied.
pub(crate) async fn collect_capped<T>(body: T, max: usize) -> Result<Collected<T>, BoxError>
where
    T: Body,
    T::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let chunk = data.copy_to_bytes(data.remaining());
        if chunk.is_empty() {
            continue;
        }
        len += chunk.len();
        match (&mut first, &mut rest) {
            (None, _) => first = Some(chunk),
            (Some(head), None) => {
                let mut buf = BytesMut::with_capacity(head.len() + chunk.len());
                buf.extend_from_slice(head);
                buf.extend_from_slice(&chunk);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&chunk),
        }
        if len > max {
            let prefix = match rest {
                Some(buf) => buf.freeze(),
                None => first.unwrap_or_default(),
            };
            return Ok(Collected::TooLarge { prefix, rest: body });
        }
    }
    Ok(Collected::Complete(match rest {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    }))
}

/// Reads the whole of `body` after a prefix (for requests over the cap, which must still reach the inner
/// service intact).
pub(crate) async fn collect_rest<T>(prefix: Bytes, mut rest: Pin<Box<T>>) -> Result<Bytes, BoxError>
where
    T: Body,
    T::Error: Into<BoxError>,
{
    let mut buf = BytesMut::from(&prefix[..]);
    while let Some(frame) = rest.frame().await {
        if let Ok(mut data) = frame.map_err(Into::into)?.into_data() {
            while data.has_remaining() {
                let chunk = data.chunk();
                buf.extend_from_slice(chunk);
                let n = chunk.len();
                data.advance(n);
            }
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn collects_within_the_cap_and_stops_past_it() {
        let Collected::Complete(all) = collect_capped(chunks(&["ab", "cd", "e"]), 5).await.unwrap()
        else {
            panic!("within the cap");
        };
        assert_eq!(&all[..], b"abcde");
        let Collected::TooLarge { prefix, rest } =
            collect_capped(chunks(&["ab", "cd", "ef", "gh"]), 5)
                .await
                .unwrap()
        else {
            panic!("over the cap");
        };
        assert_eq!(&prefix[..], b"abcdef");
        assert_eq!(&collect_rest(prefix, rest).await.unwrap()[..], b"abcdefgh");
    }

    #[tokio::test]
    async fn streaming_body_yields_prefix_then_rest() {
        let body: ResponseBody<Full<Bytes>> = ResponseBody::streaming(
            Some(Bytes::from_static(b"head-")),
            Box::pin(Full::new(Bytes::from_static(b"tail"))),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"head-tail");
        let full: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::from_static(b"x"));
        assert_eq!(full.size_hint().exact(), Some(1));
    }
}
