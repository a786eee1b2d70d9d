//! [`ResponseBody`]: the one body type for answers from the store and from the inner service.

use crate::body::prefixed_hint;
use crate::error::BoxError;
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
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

    /// The bytes of a complete body not yet read; `None` for one streamed through.
    pub(crate) fn full_bytes(&self) -> Option<Bytes> {
        match &self.kind {
            Kind::Full(bytes) => Some(bytes.clone().unwrap_or_default()),
            Kind::Streaming { .. } => None,
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

    #[inline]
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

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streaming { prefix, inner } => prefix.is_none() && inner.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streaming { prefix, inner } => prefixed_hint(prefix.as_ref(), inner.size_hint()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

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
