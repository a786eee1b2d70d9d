//! Size-capped body reading, the one mechanism every layer uses: the cache hashes and replays request bodies,
//! retry and auth replay them, and the cache stores response bodies.
//!
//! A request body is read up to the layer's cap and never further: within the cap it is kept whole (and can be
//! replayed); past it, what was read goes on as the prefix of a [`RequestBody`] chained with the rest of the
//! stream, so the request reaches the origin intact while at most `cap` bytes of it were ever held.

use crate::body::{RequestBody, try_downcast};
use crate::budget::ByteBudget;
use crate::error::BoxError;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::poll_fn;
use http::{HeaderMap, Request, request};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tower_service::Service;

/// The `Content-Length` header, when present and valid.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A body read up to a cap.
pub(crate) enum Collected {
    /// The whole body, within the cap.
    Complete(Bytes),
    /// The whole body, within the cap, and the trailers that ended it.
    Trailed { body: Bytes, trailers: HeaderMap },
    /// Over the cap, or refused: what was read; the rest is still in the body.
    TooLarge(Bytes),
}

/// Reads `body` until it ends or passes `max` bytes, keeping the trailers that end it; what is left of a body
/// over the cap is dropped unread. A single-frame body is not copied.
pub(crate) async fn collect_capped<T>(body: T, max: usize) -> Result<Collected, BoxError>
where
    T: Body,
    T::Error: Into<BoxError>,
{
    collect_within(Bytes::new(), std::pin::pin!(body), max, |_| true).await
}

/// Reads the borrowed `body`, whose first `prefix` bytes were already read, until it ends or passes `max` bytes in
/// all; `admit` is asked for more bytes before the prefix and each chunk read is held, and a refusal ends the
/// reading as if the body were over the cap (the part it refused goes on as the end of the prefix).
///
/// Chunks are joined in one buffer made, once a second chunk comes, the size the body says it has in all (a
/// `Content-Length`'s: hyper's size hint counts down what is left), within the cap, rather than one doubled as
/// they come (a copy at each step, and up to twice the bytes read). A body that says nothing (chunked) has its
/// buffer doubled as it fills, within the cap. `admit` is asked for the buffer's capacity, not the bytes in it:
/// a body that declares more than it sends (a client that stalls) or one that just passed a doubling holds no
/// memory the budget does not count.
pub(crate) async fn collect_within<T>(
    prefix: Bytes,
    mut body: Pin<&mut T>,
    max: usize,
    mut admit: impl FnMut(usize) -> bool,
) -> Result<Collected, BoxError>
where
    T: Body,
    T::Error: Into<BoxError>,
{
    let mut len = prefix.len();
    let mut admitted = len == 0 || len > max || admit(len);
    // What `admit` granted: the bytes held, or the buffer made for the rest.
    let mut granted = len;
    let mut first: Option<Bytes> = (!prefix.is_empty()).then_some(prefix);
    let mut rest: Option<BytesMut> = None;
    let mut trailers: Option<HeaderMap> = None;
    // The cap is checked before each read, so a prefix already over it is not read further either.
    while len <= max && admitted {
        let Some(frame) = body.frame().await else {
            let body = joined(first, rest);
            return Ok(match trailers {
                None => Collected::Complete(body),
                Some(trailers) => Collected::Trailed { body, trailers },
            });
        };
        let frame = frame.map_err(Into::into)?;
        let mut data = match frame.into_data() {
            Ok(data) => data,
            // Trailers end a body; a body that sent several frames of them has them all, in order.
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    match &mut trailers {
                        None => trailers = Some(more),
                        Some(all) => {
                            for (name, value) in &more {
                                all.append(name, value.clone());
                            }
                        }
                    }
                }
                continue;
            }
        };
        let chunk = data.copy_to_bytes(data.remaining());
        if chunk.is_empty() {
            continue;
        }
        len += chunk.len();
        // What the bytes read take once this chunk is in: the chunk itself, a buffer made for the whole body,
        // or the buffer as it is or grown (doubled, within the cap) if the chunk does not fit.
        let wanted = match (&first, &rest) {
            (None, _) => len,
            (Some(_), None) => {
                let left = body.size_hint().exact().unwrap_or(0);
                let left = usize::try_from(left).unwrap_or(usize::MAX);
                len.saturating_add(left).min(max).max(len)
            }
            (Some(_), Some(buf)) if buf.capacity() >= len => buf.capacity(),
            (Some(_), Some(buf)) => buf.capacity().saturating_mul(2).min(max).max(len),
        };
        admitted = len > max || wanted <= granted || admit(wanted - granted);
        let size = if admitted { wanted } else { len };
        granted = granted.max(size);
        match (&mut first, &mut rest) {
            (None, _) => first = Some(chunk),
            (Some(head), None) => {
                let mut buf = BytesMut::with_capacity(size);
                buf.extend_from_slice(head);
                buf.extend_from_slice(&chunk);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => {
                // Grown here rather than by `extend_from_slice`, whose doubling would not keep to `size`.
                if buf.capacity() < len {
                    let mut grown = BytesMut::with_capacity(size);
                    grown.extend_from_slice(buf);
                    *buf = grown;
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(Collected::TooLarge(joined(first, rest)))
}

/// What [`collect_within`] read: the single chunk uncopied, or the joined ones.
fn joined(first: Option<Bytes>, rest: Option<BytesMut>) -> Bytes {
    match rest {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    }
}

/// A request body as far as it could be read without waiting.
pub(crate) enum Ready {
    /// The whole body, within the cap, as its caller made it (empty, a `Full`, a [`RequestBody`] of bytes): the
    /// caller holds these bytes anyway.
    Complete(Bytes),
    /// The whole body, within the cap, read in one frame from a stream whose bytes had all arrived (a hyper
    /// body, say): bytes the reader now holds, to count as one read in parts is.
    Arrived(Bytes),
    /// More may follow (or the cap was passed): `prefix` was read, `rest` is still to read (with [`finish`]).
    Partial { prefix: Bytes, rest: RequestBody },
}

/// Reads what `body` holds already, without waiting: a body that is empty or complete in one frame (a `Full`,
/// a [`RequestBody`] of bytes, a buffered client body, a hyper body whose bytes have arrived) is taken whole, so
/// its request needs no asynchronous step before the cache key. Anything else comes back [`Ready::Partial`], to
/// be read with [`finish`]; nothing read is lost.
///
/// The body is polled with a no-op waker: if it is not ready, the caller's next poll registers the real one.
#[inline]
pub(crate) fn take_ready<B>(body: B, max: usize) -> Result<Ready, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut body = match try_downcast::<RequestBody, B>(body) {
        Ok(mut body) => match body.take_full() {
            Some(bytes) => return Ok(whole(bytes, max)),
            None => body,
        },
        Err(body) => {
            if body.is_end_stream() {
                return Ok(Ready::Complete(Bytes::new()));
            }
            // The usual client body: its bytes are taken without boxing it first.
            let body = match try_downcast::<Full<Bytes>, B>(body) {
                Ok(full) => return Ok(whole(full_bytes(full), max)),
                Err(body) => body,
            };
            RequestBody::new(body)
        }
    };
    let mut cx = Context::from_waker(Waker::noop());
    let prefix = match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(None) => return Ok(Ready::Complete(Bytes::new())),
        Poll::Ready(Some(frame)) => match frame?.into_data() {
            Ok(data) => data,
            // A body of trailers alone (trailers are a body's last frame): `finish` takes them from here.
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return Ok(Ready::Partial {
                        prefix: Bytes::new(),
                        rest: RequestBody::trailed(Bytes::new(), trailers),
                    });
                }
                Bytes::new()
            }
        },
        Poll::Pending => Bytes::new(),
    };
    if body.is_end_stream() && prefix.is_empty() {
        Ok(Ready::Complete(prefix))
    } else if body.is_end_stream() && prefix.len() <= max {
        Ok(Ready::Arrived(prefix))
    } else {
        Ok(Ready::Partial { prefix, rest: body })
    }
}

/// A body's complete `bytes`: [`Ready::Complete`] within `max`, else a [`Ready::Partial`] with nothing left
/// to read.
fn whole(bytes: Bytes, max: usize) -> Ready {
    if bytes.len() <= max {
        Ready::Complete(bytes)
    } else {
        Ready::Partial {
            prefix: bytes,
            rest: RequestBody::empty(),
        }
    }
}

/// The bytes of a [`Full`] body: its one frame, there at the first poll.
fn full_bytes(mut full: Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut full).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// A request body read up to a cap.
pub(crate) enum Capped {
    /// The whole body, within the cap: the request can be replayed.
    Whole(Bytes),
    /// The whole body, within the cap, and the trailers that ended it.
    Trailed { body: Bytes, trailers: HeaderMap },
    /// Over the cap, or refused by `admit`: the prefix read so far chained with the unread rest, to be sent once.
    TooLarge(RequestBody),
}

/// Reads `body`, up to `max` bytes: what it holds already without waiting ([`take_ready`]), then the rest as
/// [`finish`] does, `admit` asked before each part read from a stream is held (a body whole as its caller made
/// it is not read, so not asked for).
pub(crate) async fn read_capped<B>(
    body: B,
    max: usize,
    mut admit: impl FnMut(usize) -> bool,
) -> Result<Capped, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    match take_ready(body, max)? {
        Ready::Complete(bytes) => Ok(Capped::Whole(bytes)),
        Ready::Arrived(bytes) if admit(bytes.len()) => Ok(Capped::Whole(bytes)),
        Ready::Arrived(bytes) => Ok(Capped::TooLarge(RequestBody::from(bytes))),
        Ready::Partial { prefix, rest } => finish(prefix, rest, max, admit).await,
    }
}

/// Reads the rest of a [`Ready::Partial`] body, up to `max` bytes in all; `admit` is asked before the prefix
/// and each chunk read is held, and one it refuses ends the reading as the cap does ([`Capped::TooLarge`]).
pub(crate) async fn finish(
    prefix: Bytes,
    rest: RequestBody,
    max: usize,
    admit: impl FnMut(usize) -> bool,
) -> Result<Capped, BoxError> {
    let mut rest = Box::pin(rest);
    match collect_within(prefix, rest.as_mut(), max, admit).await? {
        Collected::Complete(bytes) => Ok(Capped::Whole(bytes)),
        Collected::Trailed { body, trailers } => Ok(Capped::Trailed { body, trailers }),
        Collected::TooLarge(prefix) => Ok(Capped::TooLarge(Pin::into_inner(rest).prepend(prefix))),
    }
}

/// A request whose body was read so that it can be sent more than once, or one that must go out as it is.
pub(crate) enum Buffered {
    /// The head and the whole body, within the cap: rebuild the request with [`Buffered::rebuild`].
    Replayable { parts: request::Parts, body: Replay },
    /// Over the cap (by `Content-Length`, or found while reading), or past the in-flight budget
    /// (`over_budget`): the request, its body streamed on, to send once.
    Once {
        request: Request<RequestBody>,
        over_budget: bool,
    },
}

/// A request body read whole, to send as often as needed: its bytes and the trailers that ended it, if any.
pub(crate) struct Replay {
    bytes: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// The body to send once more: the bytes shared (no byte copy), the trailers cloned.
    fn body(&self) -> RequestBody {
        match &self.trailers {
            None => RequestBody::from(self.bytes.clone()),
            Some(trailers) => RequestBody::trailed(self.bytes.clone(), trailers.clone()),
        }
    }
}

impl Buffered {
    /// A copy of a replayable request: the head cloned, the body shared.
    pub(crate) fn rebuild(parts: &request::Parts, body: &Replay) -> Request<RequestBody> {
        Request::from_parts(parts.clone(), body.body())
    }
}

/// Reads a request body of at most `max` bytes so the request can be replayed. A request announcing more with
/// `Content-Length` is not read at all; one found to be larger while reading, or that `budget` has no room for,
/// goes on as the prefix read so far chained with the rest of its stream. Either way nothing is lost, and at most
/// `max` bytes are held.
///
/// What is read from a stream holds its share of `budget` until the last copy of the bytes is gone (every
/// attempt sent); a body its caller made whole (a `Full`, a [`RequestBody`] of bytes) is not read, and not
/// counted: its caller holds it anyway.
pub(crate) async fn buffer_request<B>(
    request: Request<B>,
    max: usize,
    budget: &Arc<ByteBudget>,
) -> Result<Buffered, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    if content_length(&parts.headers).is_some_and(|n| n > max as u64) {
        return Ok(Buffered::Once {
            request: Request::from_parts(parts, RequestBody::new(body)),
            over_budget: false,
        });
    }
    let mut claim = budget.claim();
    let capped = read_capped(body, max, |n| claim.grow(n)).await?;
    let (bytes, trailers) = match capped {
        Capped::Whole(bytes) => (bytes, None),
        Capped::Trailed { body, trailers } => (body, Some(trailers)),
        Capped::TooLarge(body) => {
            return Ok(Buffered::Once {
                request: Request::from_parts(parts, body),
                over_budget: claim.refused(),
            });
        }
    };
    Ok(Buffered::Replayable {
        parts,
        body: Replay {
            bytes: claim.hold(bytes),
            trailers,
        },
    })
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
    use std::pin::pin;

    fn chunks(
        parts: &[&'static str],
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn all(body: RequestBody) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    fn unbounded() -> Arc<ByteBudget> {
        ByteBudget::new(usize::MAX, || {})
    }

    #[tokio::test]
    async fn collects_within_the_cap_and_stops_past_it() {
        let Collected::Complete(whole) =
            collect_capped(chunks(&["ab", "cd", "e"]), 5).await.unwrap()
        else {
            panic!("within the cap");
        };
        assert_eq!(&whole[..], b"abcde");
        let Collected::TooLarge(prefix) = collect_capped(chunks(&["ab", "cd", "ef", "gh"]), 5)
            .await
            .unwrap()
        else {
            panic!("over the cap");
        };
        assert_eq!(
            &prefix[..],
            b"abcdef",
            "reading stops at the first chunk past the cap"
        );
    }

    #[tokio::test]
    async fn buffers_a_request_within_the_cap_and_streams_a_larger_one_once() {
        let request = Request::post("/q")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let Buffered::Replayable { parts, body } =
            buffer_request(request, 8, &unbounded()).await.unwrap()
        else {
            panic!("within the cap");
        };
        let again = Buffered::rebuild(&parts, &body);
        assert_eq!(again.uri(), "/q");
        assert_eq!(&all(again.into_body()).await[..], b"{}");

        let announced = Request::post("/q")
            .header("content-length", "9")
            .body(Full::new(Bytes::from_static(b"123456789")))
            .unwrap();
        let Buffered::Once { request, .. } =
            buffer_request(announced, 8, &unbounded()).await.unwrap()
        else {
            panic!("over the cap by content-length");
        };
        assert_eq!(&all(request.into_body()).await[..], b"123456789");

        let chunked = Request::post("/q")
            .body(chunks(&["12345", "6789", "abc"]))
            .unwrap();
        let Buffered::Once { request, .. } =
            buffer_request(chunked, 8, &unbounded()).await.unwrap()
        else {
            panic!("over the cap while reading");
        };
        assert_eq!(&all(request.into_body()).await[..], b"123456789abc");
    }

    #[tokio::test]
    async fn a_streamed_body_buffered_for_replay_holds_the_budget_while_any_copy_lives() {
        let budget = ByteBudget::new(6, || {});
        let request = Request::post("/q").body(chunks(&["ab", "cd"])).unwrap();
        let Buffered::Replayable { parts, body } =
            buffer_request(request, 8, &budget).await.unwrap()
        else {
            panic!("within the cap and the budget");
        };
        assert_eq!(budget.in_use(), 4);
        let sent = Buffered::rebuild(&parts, &body);
        drop(body);
        assert_eq!(budget.in_use(), 4, "an attempt still holds the bytes");

        // The budget has 2 bytes left: the next body is sent once, whole, as one over the cap.
        let request = Request::post("/q").body(chunks(&["ef", "gh"])).unwrap();
        let Buffered::Once {
            request,
            over_budget: true,
        } = buffer_request(request, 8, &budget).await.unwrap()
        else {
            panic!("past the budget");
        };
        assert_eq!(&all(request.into_body()).await[..], b"efgh");
        // A body its caller made whole is not read, so not counted.
        let request = Request::post("/q")
            .body(Full::new(Bytes::from_static(b"ijklmn")))
            .unwrap();
        assert!(matches!(
            buffer_request(request, 8, &budget).await.unwrap(),
            Buffered::Replayable { .. }
        ));
        assert_eq!(budget.in_use(), 4);
        assert_eq!(&all(sent.into_body()).await[..], b"abcd");
        assert_eq!(budget.in_use(), 0, "given back with the last copy");
    }

    #[tokio::test]
    async fn a_body_past_the_cap_is_chained_not_read_to_its_end() {
        // A stream that would never end: if anything read it whole, this test would not finish.
        let endless = StreamBody::new(futures_util::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(&[7u8; 1024])))
        }));
        let request = Request::post("/upload").body(endless).unwrap();
        let Buffered::Once { request, .. } =
            buffer_request(request, 4096, &unbounded()).await.unwrap()
        else {
            panic!("over the cap");
        };
        let mut body = request.into_body();
        let mut read = 0usize;
        while read < 64 * 1024 {
            let frame = body.frame().await.unwrap().unwrap();
            read += frame.into_data().unwrap().len();
        }
        assert!(read >= 64 * 1024);
    }

    #[tokio::test]
    async fn takes_a_whole_body_at_once_and_leaves_the_rest_to_read() {
        let Ok(Ready::Complete(whole)) = take_ready(Full::new(Bytes::from_static(b"{}")), 8) else {
            panic!("a Full body is whole at once");
        };
        assert_eq!(&whole[..], b"{}");
        let Ok(Ready::Complete(bytes)) = take_ready(RequestBody::from("{}"), 8) else {
            panic!("a RequestBody of bytes is whole at once");
        };
        assert_eq!(&bytes[..], b"{}");
        let Ok(Ready::Complete(empty)) = take_ready(http_body_util::Empty::<Bytes>::new(), 8)
        else {
            panic!("an empty body is whole at once");
        };
        assert!(empty.is_empty());

        // A body of another kind that is whole at the first poll (a hyper body whose bytes have all arrived) is
        // read, and asked for, once.
        let foreign = || http_body_util::combinators::BoxBody::new(Full::new(Bytes::from("{}")));
        let Ok(Ready::Arrived(bytes)) = take_ready(foreign(), 8) else {
            panic!("read from a body of another kind");
        };
        assert_eq!(&bytes[..], b"{}");
        let mut asked = Vec::new();
        let Capped::Whole(bytes) = read_capped(foreign(), 8, |n| {
            asked.push(n);
            true
        })
        .await
        .unwrap() else {
            panic!("admitted");
        };
        assert_eq!((&bytes[..], &asked[..]), (&b"{}"[..], &[2][..]));
        let Capped::TooLarge(refused) = read_capped(foreign(), 8, |_| false).await.unwrap() else {
            panic!("refused");
        };
        assert_eq!(&all(refused).await[..], b"{}");
        let never = |_| unreachable!("a body its caller made whole is not read");
        assert!(matches!(
            read_capped(Full::new(Bytes::from("{}")), 8, never).await,
            Ok(Capped::Whole(_))
        ));

        // Several frames: the first is kept, the rest read afterwards, nothing lost.
        let Ok(Ready::Partial { prefix, rest }) = take_ready(chunks(&["ab", "cd", "e"]), 8) else {
            panic!("a streamed body is not whole after one frame");
        };
        assert_eq!(&prefix[..], b"ab");
        let Capped::Whole(bytes) = finish(prefix, rest, 8, |_| true).await.unwrap() else {
            panic!("within the cap");
        };
        assert_eq!(&bytes[..], b"abcde");

        // One frame over the cap: read, but passed on whole, as one body.
        for body in [
            RequestBody::new(Full::new(Bytes::from_static(b"123456789"))),
            RequestBody::from("123456789"),
        ] {
            let Ok(Ready::Partial { prefix, rest }) = take_ready(body, 8) else {
                panic!("over the cap");
            };
            let Capped::TooLarge(body) = finish(prefix, rest, 8, |_| true).await.unwrap() else {
                panic!("over the cap");
            };
            assert_eq!(&all(body).await[..], b"123456789");
        }
    }

    #[tokio::test]
    async fn a_part_admit_refuses_ends_the_reading_and_loses_nothing() {
        // Refused at the prefix, or at a later chunk: either way the body goes on whole, unread from there.
        for refuse_at in [2, 4] {
            let Ok(Ready::Partial { prefix, rest }) = take_ready(chunks(&["ab", "cd", "e"]), 8)
            else {
                panic!("a streamed body is not whole after one frame");
            };
            let mut asked = Vec::new();
            let admit = |n| {
                asked.push(n);
                asked.iter().sum::<usize>() < refuse_at
            };
            let Capped::TooLarge(body) = finish(prefix, rest, 8, admit).await.unwrap() else {
                panic!("refused at {refuse_at}");
            };
            assert_eq!(asked, [2, 2][..refuse_at / 2], "asked per part held");
            assert_eq!(&all(body).await[..], b"abcde");
        }
        // A body past the cap does not ask.
        let Ok(Ready::Partial { prefix, rest }) = take_ready(chunks(&["123456789", "0"]), 8) else {
            panic!("over the cap");
        };
        let never = |_| unreachable!("a prefix over the cap is not held");
        let Capped::TooLarge(body) = finish(prefix, rest, 8, never).await.unwrap() else {
            panic!("over the cap");
        };
        assert_eq!(&all(body).await[..], b"1234567890");
    }

    /// Frames with the exact size hint of what is left, as a body with a `Content-Length` gives it.
    struct Hinted(std::collections::VecDeque<Bytes>);

    impl Body for Hinted {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|data| Ok(Frame::data(data))))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
        }
    }

    #[tokio::test]
    async fn chunks_are_joined_in_one_buffer_of_the_size_the_body_gives() {
        let frames = |n: usize| (0..n).map(|_| Bytes::from(vec![b'x'; 1000])).collect();
        let capacity = |collected| {
            let Collected::Complete(bytes) = collected else {
                panic!("within the cap");
            };
            bytes.try_into_mut().expect("unshared").capacity()
        };
        let hinted = pin!(Hinted(frames(9)));
        let read = collect_within(Bytes::new(), hinted, 10_000, |_| true).await;
        assert_eq!(
            capacity(read.unwrap()),
            9000,
            "one buffer of the body's size"
        );
        // A hint past the cap sizes the buffer to the cap, no more.
        let hinted = pin!(Hinted(frames(9)));
        let read = collect_within(Bytes::new(), hinted, 8_999, |_| true)
            .await
            .unwrap();
        assert!(matches!(read, Collected::TooLarge(ref prefix) if prefix.len() == 9000));
        // The declared size is asked for when the buffer is made, and nothing more after.
        let mut asked = Vec::new();
        let hinted = pin!(Hinted(frames(9)));
        let admit = |n| {
            asked.push(n);
            true
        };
        let read = collect_within(Bytes::new(), hinted, 10_000, admit).await;
        assert_eq!(capacity(read.unwrap()), 9000);
        assert_eq!(asked, [1000, 8000]);
        // A body that declares more than `admit` grants is not read further, and no larger buffer is made.
        let hinted = pin!(Hinted(frames(9)));
        let read = collect_within(Bytes::new(), hinted, 10_000, |n| n <= 1000).await;
        let Collected::TooLarge(prefix) = read.unwrap() else {
            panic!("refused");
        };
        assert_eq!(prefix.len(), 2000);
        assert_eq!(prefix.try_into_mut().expect("unshared").capacity(), 2000);
        // Without a hint, the buffer doubles within the cap, and each step of it is asked for as it is made.
        let unhinted = || {
            Box::pin(StreamBody::new(futures_util::stream::iter(
                frames(9)
                    .into_iter()
                    .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
            )))
        };
        let mut asked = Vec::new();
        let admit = |n| {
            asked.push(n);
            true
        };
        let read = collect_within(Bytes::new(), unhinted().as_mut(), 10_000, admit).await;
        assert_eq!(capacity(read.unwrap()), 10_000);
        assert_eq!(
            asked,
            [1000, 1000, 2000, 4000, 2000],
            "the buffer's steps: 2,000 to 10,000"
        );
        // A refused step ends the reading with the buffer grown to what was read, no more.
        let read = collect_within(Bytes::new(), unhinted().as_mut(), 10_000, |n| n < 4000).await;
        let Collected::TooLarge(prefix) = read.unwrap() else {
            panic!("refused");
        };
        assert_eq!(prefix.len(), 5000);
        assert_eq!(prefix.try_into_mut().expect("unshared").capacity(), 5000);
    }

    #[tokio::test]
    async fn a_body_not_ready_yet_is_read_when_it_arrives() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let Ok(Ready::Partial { prefix, rest }) = take_ready(body, 8) else {
            panic!("nothing has arrived");
        };
        assert!(prefix.is_empty());
        let reader = tokio::spawn(finish(prefix, rest, 8, |_| true));
        tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))
            .await
            .unwrap();
        drop(tx);
        let Capped::Whole(bytes) = reader.await.unwrap().unwrap() else {
            panic!("within the cap");
        };
        assert_eq!(&bytes[..], b"late");
    }

    /// `parts` as data frames, then one frame of `trailers`.
    fn trailed(
        parts: &[&'static str],
        trailers: &[(&'static str, &'static str)],
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static {
        let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        let mut map = HeaderMap::new();
        for (name, value) in trailers {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        frames.push(Ok(Frame::trailers(map)));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn trailers_are_kept_with_the_body_they_end_and_replayed_with_it() {
        let Collected::Trailed { body, trailers } =
            collect_capped(trailed(&["ab", "cd"], &[("x-sum", "1")]), 8)
                .await
                .unwrap()
        else {
            panic!("within the cap, with trailers");
        };
        assert_eq!(&body[..], b"abcd");
        assert_eq!(trailers["x-sum"], "1");

        // A request's, with data or trailers alone: every copy sent carries them.
        for (parts, bytes) in [(&["ab", "cd"][..], &b"abcd"[..]), (&[][..], &b""[..])] {
            let request = Request::post("/q")
                .body(trailed(parts, &[("x-sum", "1"), ("x-sum", "2")]))
                .unwrap();
            let Buffered::Replayable { parts, body } =
                buffer_request(request, 8, &unbounded()).await.unwrap()
            else {
                panic!("within the cap");
            };
            for _ in 0..2 {
                let sent = Buffered::rebuild(&parts, &body)
                    .into_body()
                    .collect()
                    .await
                    .unwrap();
                let trailers = sent.trailers().cloned().expect("the trailers");
                assert_eq!(
                    trailers.get_all("x-sum").iter().collect::<Vec<_>>(),
                    ["1", "2"]
                );
                assert_eq!(&sent.to_bytes()[..], bytes);
            }
        }
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
}
