//! Size-capped body buffering shared by the middleware: the cache hashes and replays request bodies, retry and
//! auth replay them, and the cache stores response bodies.

use crate::error::BoxError;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::poll_fn;
use http::{HeaderMap, Request, request};
use http_body::Body;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tower_service::Service;

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
pub(crate) fn collect_capped<T>(
    body: T,
    max: usize,
) -> impl Future<Output = Result<Collected<T>, BoxError>>
where
    T: Body,
    T::Error: Into<BoxError>,
{
    collect_capped_after(Bytes::new(), Box::pin(body), max)
}

/// [`collect_capped`] for a body whose first `prefix` bytes were already read.
pub(crate) async fn collect_capped_after<T>(
    prefix: Bytes,
    mut body: Pin<Box<T>>,
    max: usize,
) -> Result<Collected<T>, BoxError>
where
    T: Body,
    T::Error: Into<BoxError>,
{
    let mut len = prefix.len();
    let mut first: Option<Bytes> = (!prefix.is_empty()).then_some(prefix);
    let mut rest: Option<BytesMut> = None;
    // The cap is checked before each read, so a prefix already over it is not read further either.
    while len <= max {
        let Some(frame) = body.frame().await else {
            return Ok(Collected::Complete(joined(first, rest)));
        };
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
    }
    let prefix = joined(first, rest);
    Ok(Collected::TooLarge { prefix, rest: body })
}

/// What [`collect_capped_after`] read: the single chunk uncopied, or the joined ones.
fn joined(first: Option<Bytes>, rest: Option<BytesMut>) -> Bytes {
    match rest {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    }
}

/// A body as far as it could be read without waiting.
pub(crate) enum Ready<T> {
    /// The whole body, within the cap.
    Complete(Bytes),
    /// More may follow (or the cap was passed): `prefix` was read, `rest` is still to read.
    Partial { prefix: Bytes, rest: Pin<Box<T>> },
}

/// Reads what `body` holds already, without waiting: a body that is empty or complete in one frame (a `Full`,
/// a buffered client body, a hyper body whose bytes have arrived) is taken whole, so its request needs no
/// asynchronous step before the cache key. Anything else comes back [`Ready::Partial`], to be read with
/// [`collect_capped_after`]; nothing read is lost.
///
/// The body is polled with a no-op waker: if it is not ready, the caller's next poll registers the real one.
pub(crate) fn take_ready<T>(body: T, max: usize) -> Result<Ready<T>, BoxError>
where
    T: Body,
    T::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(Ready::Complete(Bytes::new()));
    }
    let mut rest = Box::pin(body);
    let mut cx = Context::from_waker(Waker::noop());
    let prefix = match rest.as_mut().poll_frame(&mut cx) {
        Poll::Ready(None) => return Ok(Ready::Complete(Bytes::new())),
        Poll::Ready(Some(frame)) => match frame.map_err(Into::into)?.into_data() {
            Ok(mut data) => data.copy_to_bytes(data.remaining()),
            // Trailers are dropped, as `collect_capped` drops them.
            Err(_trailers) => Bytes::new(),
        },
        Poll::Pending => Bytes::new(),
    };
    if rest.is_end_stream() && prefix.len() <= max {
        Ok(Ready::Complete(prefix))
    } else {
        Ok(Ready::Partial { prefix, rest })
    }
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

/// A request whose body was read so that it can be sent more than once, or one that must go out as it is.
pub(crate) enum Buffered<B> {
    /// The head and the whole body, within the cap: rebuild the request with [`Buffered::rebuild`].
    Replayable { parts: request::Parts, body: Bytes },
    /// Over the cap (by `Content-Length`, or found while reading): the request, body whole, to send once.
    Once(Request<B>),
}

impl<B: From<Bytes>> Buffered<B> {
    /// A copy of a replayable request: the head cloned and the body shared (no byte copy).
    pub(crate) fn rebuild(parts: &request::Parts, body: &Bytes) -> Request<B> {
        Request::from_parts(parts.clone(), B::from(body.clone()))
    }
}

/// Reads a request body of at most `max` bytes so the request can be replayed. A request announcing more
/// with `Content-Length` is not read at all; a chunked one found to be larger is read whole and returned to
/// be sent once, so nothing is lost either way.
pub(crate) async fn buffer_request<B>(
    request: Request<B>,
    max: usize,
) -> Result<Buffered<B>, BoxError>
where
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    if content_length(request.headers()).is_some_and(|n| n > max as u64) {
        return Ok(Buffered::Once(request));
    }
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return Ok(Buffered::Replayable {
            parts,
            body: Bytes::new(),
        });
    }
    match collect_capped(body, max).await? {
        Collected::Complete(body) => Ok(Buffered::Replayable { parts, body }),
        Collected::TooLarge { prefix, rest } => {
            let all = collect_rest(prefix, rest).await?;
            Ok(Buffered::Once(Request::from_parts(parts, B::from(all))))
        }
    }
}

/// Drives `inner` to readiness, then calls it once.
pub(crate) async fn call_ready<S, Req>(inner: &mut S, request: Req) -> Result<S::Response, BoxError>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    inner.call(request).await.map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
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
    async fn buffers_a_request_within_the_cap_and_passes_a_larger_one_once() {
        let request = Request::post("/q")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let Buffered::Replayable { parts, body } = buffer_request(request, 8).await.unwrap() else {
            panic!("within the cap");
        };
        let again: Request<Full<Bytes>> = Buffered::rebuild(&parts, &body);
        assert_eq!(again.uri(), "/q");
        assert_eq!(
            &again.into_body().collect().await.unwrap().to_bytes()[..],
            b"{}"
        );

        let big = Request::post("/q")
            .header("content-length", "9")
            .body(Full::new(Bytes::from_static(b"123456789")))
            .unwrap();
        assert!(matches!(
            buffer_request(big, 8).await.unwrap(),
            Buffered::Once(_)
        ));

        let stream = futures_util::stream::iter(["12345", "6789"].map(Ok::<_, std::io::Error>));
        let chunked = Request::post("/q")
            .body(axum::body::Body::from_stream(stream))
            .unwrap();
        let Buffered::Once(request) = buffer_request(chunked, 8).await.unwrap() else {
            panic!("over the cap");
        };
        assert_eq!(
            &request.into_body().collect().await.unwrap().to_bytes()[..],
            b"123456789"
        );
    }

    #[tokio::test]
    async fn takes_a_whole_body_at_once_and_leaves_the_rest_to_read() {
        let Ok(Ready::Complete(whole)) = take_ready(Full::new(Bytes::from_static(b"{}")), 8) else {
            panic!("a Full body is whole at once");
        };
        assert_eq!(&whole[..], b"{}");
        let Ok(Ready::Complete(empty)) = take_ready(http_body_util::Empty::<Bytes>::new(), 8)
        else {
            panic!("an empty body is whole at once");
        };
        assert!(empty.is_empty());

        // Several frames: the first is kept, the rest read afterwards, nothing lost.
        let Ok(Ready::Partial { prefix, rest }) = take_ready(chunks(&["ab", "cd", "e"]), 8) else {
            panic!("a streamed body is not whole after one frame");
        };
        assert_eq!(&prefix[..], b"ab");
        let Collected::Complete(all) = collect_capped_after(prefix, rest, 8).await.unwrap() else {
            panic!("within the cap");
        };
        assert_eq!(&all[..], b"abcde");

        // One frame over the cap: read, but left for the caller to pass on whole.
        let Ok(Ready::Partial { prefix, rest }) =
            take_ready(Full::new(Bytes::from_static(b"123456789")), 8)
        else {
            panic!("over the cap");
        };
        let Collected::TooLarge { prefix, rest } =
            collect_capped_after(prefix, rest, 8).await.unwrap()
        else {
            panic!("over the cap");
        };
        assert_eq!(&collect_rest(prefix, rest).await.unwrap()[..], b"123456789");
    }

    #[tokio::test]
    async fn a_body_not_ready_yet_is_read_when_it_arrives() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let body = StreamBody::new(tokio_stream_from(rx));
        let Ok(Ready::Partial { prefix, rest }) = take_ready(body, 8) else {
            panic!("nothing has arrived");
        };
        assert!(prefix.is_empty());
        let reader = tokio::spawn(collect_capped_after(prefix, rest, 8));
        tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))
            .await
            .unwrap();
        drop(tx);
        let Collected::Complete(all) = reader.await.unwrap().unwrap() else {
            panic!("within the cap");
        };
        assert_eq!(&all[..], b"late");
    }

    #[test]
    fn a_failing_body_is_an_error() {
        let frames = vec![Err::<Frame<Bytes>, _>(std::io::Error::other("reset"))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let Err(error) = take_ready(body, 8) else {
            panic!("the body failed");
        };
        assert_eq!(error.to_string(), "reset");
    }

    /// A stream over a channel's receiver (the body's frames arrive when sent).
    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
