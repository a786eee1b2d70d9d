//! [`RequestBody`]: the request body every layer of this crate hands to the service it wraps.
//!
//! The layers read request bodies: the cache to key a request by its body, retry and auth to replay one. A body
//! within the layer's cap is read whole and sent as bytes (replayed without a copy), with the trailers that ended
//! it, if any. A larger one is never read whole: what was read goes on as a prefix, chained with the rest of the
//! stream, and the request is sent once. Either way the wrapped service receives a `Request<RequestBody>`,
//! whatever body type the caller used, so the layers stack without nesting body types: a `RequestBody` reaching a
//! second layer is taken as it is.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use std::convert::Infallible;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_redis_cache::{RequestBody, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_redis_cache::error::BoxError> {
//! // The wrapped service takes `Request<RequestBody>`; callers may send any body type.
//! let echo = service_fn(|request: Request<RequestBody>| async move {
//!     let bytes = request.into_body().collect().await?.to_bytes();
//!     Ok::<_, tower_redis_cache::error::BoxError>(Response::new(Full::new(bytes)))
//! });
//! let client = ServiceBuilder::new().layer(RetryLayer::builder().build()?).service(echo);
//! let response = client.oneshot(Request::post("http://api.example/").body(Full::new(Bytes::from("hi")))?).await?;
//! assert_eq!(response.into_body().collect().await?.to_bytes(), "hi");
//! # Ok(()) }
//! ```

use crate::error::BoxError;
use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A request body as the layers pass it on: bytes already read, or a prefix already read followed by the rest
/// of a stream that was too large to hold.
///
/// Build one from bytes (`RequestBody::from(Bytes)`, a `String`, a `Vec<u8>`, a `&'static str`) or wrap any
/// [`Body`] with [`RequestBody::new`].
pub struct RequestBody {
    kind: Kind,
}

enum Kind {
    /// Complete bytes; `None` once sent (or when empty).
    Full(Option<Bytes>),
    /// Bytes already read, then the rest of the stream.
    Chained {
        prefix: Option<Bytes>,
        rest: UnsyncBoxBody<Bytes, BoxError>,
    },
    /// Complete bytes and the trailers that ended them (boxed: rare, and a header map would double the body's
    /// size).
    Trailed(Box<Trailed>),
}

impl RequestBody {
    /// Wraps any body. A `RequestBody` is returned as it is (no second box).
    pub fn new<B>(body: B) -> Self
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        match try_downcast::<RequestBody, B>(body) {
            Ok(body) => body,
            Err(body) => RequestBody::chained(Bytes::new(), body),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        RequestBody::full(Bytes::new())
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        RequestBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// Complete `bytes`, then `trailers`.
    pub(crate) fn trailed(bytes: Bytes, trailers: HeaderMap) -> Self {
        RequestBody {
            kind: Kind::Trailed(Box::new(Trailed::new(bytes, trailers))),
        }
    }

    /// `prefix` (already read from the stream), then whatever `rest` still yields.
    pub(crate) fn chained<B>(prefix: Bytes, rest: B) -> Self
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        RequestBody {
            kind: Kind::Chained {
                prefix: (!prefix.is_empty()).then_some(prefix),
                rest: UnsyncBoxBody::new(AsBytes { inner: rest }),
            },
        }
    }

    /// `prefix` (already read from this body's stream) followed by what this body still yields.
    pub(crate) fn prepend(self, prefix: Bytes) -> RequestBody {
        if prefix.is_empty() {
            return self;
        }
        match self.kind {
            Kind::Full(None) => RequestBody::full(prefix),
            Kind::Chained { prefix: None, rest } => RequestBody {
                kind: Kind::Chained {
                    prefix: Some(prefix),
                    rest,
                },
            },
            kind => RequestBody::chained(prefix, RequestBody { kind }),
        }
    }

    /// The whole body, when it is complete bytes with no trailers: no read needed.
    pub(crate) fn take_full(&mut self) -> Option<Bytes> {
        match &mut self.kind {
            Kind::Full(bytes) => Some(bytes.take().unwrap_or_default()),
            Kind::Chained { .. } | Kind::Trailed(_) => None,
        }
    }
}

/// A body already read whole that ended with trailers: its bytes, then its trailers, then the end. The request and
/// response bodies of this crate hold one so that a body's trailers reach the other side.
pub(crate) struct Trailed {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Trailed {
    pub(crate) fn new(data: Bytes, trailers: HeaderMap) -> Self {
        Trailed {
            data: (!data.is_empty()).then_some(data),
            trailers: Some(trailers),
        }
    }

    /// The next frame: the bytes, then the trailers.
    pub(crate) fn next_frame(&mut self) -> Option<Frame<Bytes>> {
        match self.data.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(Frame::trailers),
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |b| b.len() as u64))
    }

    /// The bytes not yet read.
    pub(crate) fn data_len(&self) -> usize {
        self.data.as_ref().map_or(0, Bytes::len)
    }
}

pin_project_lite::pin_project! {
    /// `inner` with its data as `Bytes`, every byte kept: so its size hint and its end are still its own (a
    /// `Content-Length`'s count of what is left, by which a reader sizes its buffer and a client its framing),
    /// where `BodyExt::map_frame`, which may change sizes, would give neither.
    struct AsBytes<B> {
        #[pin]
        inner: B,
    }
}

impl<B> Body for AsBytes<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx).map(|frame| {
            frame.map(|frame| {
                frame
                    .map(|frame| frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
                    .map_err(Into::into)
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The size hint of `prefix` followed by a body hinting `hint`.
pub(crate) fn prefixed_hint(prefix: Option<&Bytes>, hint: SizeHint) -> SizeHint {
    let extra = prefix.map_or(0, |p| p.len() as u64);
    let mut out = SizeHint::new();
    out.set_lower(hint.lower().saturating_add(extra));
    if let Some(upper) = hint.upper() {
        out.set_upper(upper.saturating_add(extra));
    }
    out
}

/// `k` as a `T` when it is one, else `k` back: a downcast without `unsafe`, as axum's body does it.
pub(crate) fn try_downcast<T: 'static, K: 'static>(k: K) -> Result<T, K> {
    let mut slot = Some(k);
    if let Some(t) = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
    {
        return Ok(t);
    }
    match slot {
        Some(k) => Err(k),
        // Only a successful downcast empties the slot, and it returned above.
        None => unreachable!("the slot is emptied only by a successful downcast"),
    }
}

impl Default for RequestBody {
    fn default() -> Self {
        RequestBody::empty()
    }
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> Self {
        RequestBody::full(bytes)
    }
}

impl From<Vec<u8>> for RequestBody {
    fn from(bytes: Vec<u8>) -> Self {
        RequestBody::full(Bytes::from(bytes))
    }
}

impl From<String> for RequestBody {
    fn from(text: String) -> Self {
        RequestBody::full(Bytes::from(text))
    }
}

impl From<&'static str> for RequestBody {
    fn from(text: &'static str) -> Self {
        RequestBody::full(Bytes::from_static(text.as_bytes()))
    }
}

impl From<&'static [u8]> for RequestBody {
    fn from(bytes: &'static [u8]) -> Self {
        RequestBody::full(Bytes::from_static(bytes))
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full(bytes) => f
                .debug_struct("RequestBody::Full")
                .field("len", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Chained { prefix, .. } => f
                .debug_struct("RequestBody::Chained")
                .field("prefix_len", &prefix.as_ref().map_or(0, Bytes::len))
                .finish_non_exhaustive(),
            // Trailer values are left out, as header values are: they may carry credentials.
            Kind::Trailed(trailed) => f
                .debug_struct("RequestBody::Trailed")
                .field("len", &trailed.data_len())
                .finish_non_exhaustive(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Chained { prefix, rest } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => Pin::new(rest).poll_frame(cx),
            },
            Kind::Trailed(trailed) => Poll::Ready(trailed.next_frame().map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Chained { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            Kind::Trailed(trailed) => trailed.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Chained { prefix, rest } => prefixed_hint(prefix.as_ref(), rest.size_hint()),
            Kind::Trailed(trailed) => trailed.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn a_chained_body_yields_its_prefix_then_the_rest() {
        let frames = ["cd", "ef"].map(|s| Ok::<_, std::io::Error>(Frame::data(Bytes::from(s))));
        let body = RequestBody::chained(
            Bytes::from_static(b"ab"),
            StreamBody::new(futures_util::stream::iter(frames)),
        );
        assert_eq!(body.size_hint().lower(), 2);
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdef");
    }

    #[tokio::test]
    async fn a_wrapped_body_keeps_its_size_hint_and_its_end() {
        // A `Full` of 5 bytes stands for a body with a `Content-Length`: its hint is exact.
        let body = RequestBody::new(Full::new(Bytes::from_static(b"12345")));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let body = RequestBody::chained(Bytes::from_static(b"ab"), Full::new(Bytes::from("cde")));
        assert_eq!(body.size_hint().exact(), Some(5), "the prefix and the rest");
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcde");
        let ended = RequestBody::new(http_body_util::Empty::<Bytes>::new());
        assert!(ended.is_end_stream());
    }

    #[tokio::test]
    async fn wrapping_a_request_body_does_not_box_it_again() {
        let mut body = RequestBody::new(RequestBody::from("whole"));
        assert_eq!(body.take_full().as_deref(), Some(&b"whole"[..]));
        let mut other = RequestBody::new(Full::new(Bytes::from_static(b"x")));
        assert_eq!(other.take_full(), None, "another body type is a stream");
        assert_eq!(&other.collect().await.unwrap().to_bytes()[..], b"x");
        assert!(RequestBody::empty().is_end_stream());
    }
}
