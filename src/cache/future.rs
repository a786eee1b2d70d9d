//! The response future of [`RedisCache`](super::RedisCache).

use super::body::ResponseBody;
use crate::error::BoxError;
use http::Response;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type Output<R> = Result<Response<ResponseBody<R>>, BoxError>;

/// The future [`RedisCache`](super::RedisCache) returns: the answer itself when `call` could give it at once
/// (a near-cache hit, an unreadable request), else the store look-up, then the inner call on a miss.
pub struct ResponseFuture<R> {
    state: State<R>,
}

enum State<R> {
    /// Answered in `call`; taken by the first poll.
    Ready(Option<Output<R>>),
    /// Work left to do.
    Pending(Pin<Box<dyn Future<Output = Output<R>> + Send>>),
}

impl<R> ResponseFuture<R> {
    pub(crate) fn new(inner: Pin<Box<dyn Future<Output = Output<R>> + Send>>) -> Self {
        ResponseFuture {
            state: State::Pending(inner),
        }
    }

    /// A future that completes with `output` at its first poll: nothing to allocate.
    pub(crate) fn ready(output: Output<R>) -> Self {
        ResponseFuture {
            state: State::Ready(Some(output)),
        }
    }
}

// Never pinned structurally: the ready answer is moved out, the pending future is boxed.
impl<R> Unpin for ResponseFuture<R> {}

impl<R> fmt::Debug for ResponseFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ready = matches!(self.state, State::Ready(_));
        f.debug_struct("ResponseFuture")
            .field("ready", &ready)
            .finish_non_exhaustive()
    }
}

impl<R> Future for ResponseFuture<R> {
    type Output = Output<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Ready(output) => match output.take() {
                Some(output) => Poll::Ready(output),
                None => Poll::Ready(Err("ResponseFuture polled after it completed".into())),
            },
            State::Pending(future) => future.as_mut().poll(cx),
        }
    }
}
