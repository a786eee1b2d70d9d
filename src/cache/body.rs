//! [`ResponseBody`]: the one body type for answers from the store and from the inner service.

use crate::body::{Trailed, prefixed_hint};
use crate::error::BoxError;
use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// The response body of [`RedisCache`](super::RedisCache): complete bytes (a cached or buffered answer), or
/// the inner service's body streamed through (responses over the size cap, bypassed requests), or an answer of
/// the inner service read whole with the trailers that ended it (passed on, never stored).
pub struct ResponseBody<R> {
    kind: Kind<R>,
}

/// The variants other than `Full` are boxed: a hit's body stays the size of its bytes' handle and a tag.
enum Kind<R> {
    Full(Option<Bytes>),
    Streaming(Pin<Box<Streamed<R>>>),
    Trailed(Box<Trailed>),
}

pin_project_lite::pin_project! {
    /// A body streamed through: what was already read of it, then the rest.
    pub(crate) struct Streamed<R> {
        prefix: Option<Bytes>,
        #[pin]
        inner: R,
    }
}

impl<R> Streamed<R> {
    /// `inner` with nothing read yet, boxed where it will stay: read from it through
    /// [`inner`](Self::inner), then hand it on with [`ResponseBody::streamed`].
    pub(crate) fn boxed(inner: R) -> Pin<Box<Self>> {
        Box::pin(Streamed {
            prefix: None,
            inner,
        })
    }

    /// The body itself, to read from.
    pub(crate) fn inner(self: Pin<&mut Self>) -> Pin<&mut R> {
        self.project().inner
    }
}

impl<R> ResponseBody<R> {
    pub(crate) fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full(if bytes.is_empty() { None } else { Some(bytes) }),
        }
    }

    /// Complete `bytes`, then `trailers`.
    pub(crate) fn trailed(bytes: Bytes, trailers: HeaderMap) -> Self {
        ResponseBody {
            kind: Kind::Trailed(Box::new(Trailed::new(bytes, trailers))),
        }
    }

    /// `inner`, streamed through.
    pub(crate) fn streaming(inner: R) -> Self {
        ResponseBody::streamed(Streamed::boxed(inner), Bytes::new())
    }

    /// `prefix` (already read from `streamed`'s body), then the rest of that body.
    pub(crate) fn streamed(mut streamed: Pin<Box<Streamed<R>>>, prefix: Bytes) -> Self {
        *streamed.as_mut().project().prefix = (!prefix.is_empty()).then_some(prefix);
        ResponseBody {
            kind: Kind::Streaming(streamed),
        }
    }

    /// The bytes of a complete body not yet read; `None` for one streamed through or with trailers.
    pub(crate) fn full_bytes(&self) -> Option<Bytes> {
        match &self.kind {
            Kind::Full(bytes) => Some(bytes.clone().unwrap_or_default()),
            Kind::Streaming(_) | Kind::Trailed(_) => None,
        }
    }
}

impl<R: Body> ResponseBody<R> {
    /// The body's length, when it is known before it is read: whole bytes, or a stream whose origin said how
    /// long it is.
    pub(crate) fn exact_len(&self) -> Option<u64> {
        match &self.kind {
            Kind::Full(bytes) => Some(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streaming(streamed) => {
                prefixed_hint(streamed.prefix.as_ref(), streamed.inner.size_hint()).exact()
            }
            Kind::Trailed(_) => None,
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
            Kind::Streaming(_) => f
                .debug_struct("ResponseBody::Streaming")
                .finish_non_exhaustive(),
            Kind::Trailed(trailed) => f
                .debug_struct("ResponseBody::Trailed")
                .field("len", &trailed.data_len())
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
            Kind::Streaming(streamed) => {
                let streamed = streamed.as_mut().project();
                if let Some(prefix) = streamed.prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                match ready!(streamed.inner.poll_frame(cx)) {
                    Some(Ok(frame)) => Poll::Ready(Some(Ok(
                        frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                    ))),
                    Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
                    None => Poll::Ready(None),
                }
            }
            Kind::Trailed(trailed) => Poll::Ready(trailed.next_frame().map(Ok)),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streaming(streamed) => {
                streamed.prefix.is_none() && streamed.inner.is_end_stream()
            }
            Kind::Trailed(trailed) => trailed.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streaming(streamed) => {
                prefixed_hint(streamed.prefix.as_ref(), streamed.inner.size_hint())
            }
            Kind::Trailed(trailed) => trailed.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn streaming_body_yields_prefix_then_rest() {
        let body: ResponseBody<Full<Bytes>> = ResponseBody::streamed(
            Streamed::boxed(Full::new(Bytes::from_static(b"tail"))),
            Bytes::from_static(b"head-"),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"head-tail");
        let full: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::from_static(b"x"));
        assert_eq!(full.size_hint().exact(), Some(1));
    }

    #[tokio::test]
    async fn a_body_says_when_it_has_ended_and_how_long_it_is_when_that_is_known() {
        // Whole bytes: their length, and ended once read (or at once, when there are none).
        let mut full: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::from_static(b"abc"));
        assert_eq!((full.exact_len(), full.is_end_stream()), (Some(3), false));
        assert!(full.frame().await.is_some());
        assert_eq!((full.exact_len(), full.is_end_stream()), (Some(0), true));
        let empty: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::new());
        assert_eq!((empty.exact_len(), empty.is_end_stream()), (Some(0), true));

        // Streamed: what was read, then the rest; ended when both are sent.
        let mut streamed: ResponseBody<Full<Bytes>> = ResponseBody::streamed(
            Streamed::boxed(Full::new(Bytes::from_static(b"tail"))),
            Bytes::from_static(b"head-"),
        );
        assert_eq!(
            (streamed.exact_len(), streamed.is_end_stream()),
            (Some(9), false)
        );
        assert!(streamed.frame().await.is_some());
        assert_eq!(
            (streamed.exact_len(), streamed.is_end_stream()),
            (Some(4), false)
        );
        assert!(streamed.frame().await.is_some());
        assert_eq!(
            (streamed.exact_len(), streamed.is_end_stream()),
            (Some(0), true)
        );
        // All of it read already: the prefix is still to send.
        let read: ResponseBody<Full<Bytes>> = ResponseBody::streamed(
            Streamed::boxed(Full::new(Bytes::new())),
            Bytes::from_static(b"all"),
        );
        assert_eq!((read.exact_len(), read.is_end_stream()), (Some(3), false));
        // A stream that does not say its length, and an answer with trailers: no length told before.
        let unsaid: ResponseBody<_> = ResponseBody::streaming(http_body_util::StreamBody::new(
            futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x")))]),
        ));
        assert_eq!((unsaid.exact_len(), unsaid.is_end_stream()), (None, false));
        let trailed: ResponseBody<Full<Bytes>> =
            ResponseBody::trailed(Bytes::from_static(b"abc"), HeaderMap::new());
        assert_eq!(
            (trailed.exact_len(), trailed.is_end_stream()),
            (None, false)
        );
    }

    #[test]
    fn debug_says_the_kind_and_the_length_it_holds() {
        let full: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::from_static(b"abc"));
        assert_eq!(format!("{full:?}"), "ResponseBody::Full { len: 3 }");
        let streamed: ResponseBody<Full<Bytes>> = ResponseBody::streaming(Full::new(Bytes::new()));
        assert_eq!(format!("{streamed:?}"), "ResponseBody::Streaming { .. }");
        let trailed: ResponseBody<Full<Bytes>> =
            ResponseBody::trailed(Bytes::from_static(b"ab"), HeaderMap::new());
        assert_eq!(
            format!("{trailed:?}"),
            "ResponseBody::Trailed { len: 2, .. }"
        );
    }
}
