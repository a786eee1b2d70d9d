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
///
/// An answer given at the first poll (a hit from the near cache or from memory, which waits on nothing) takes a
/// unit of the task's Tokio budget, as Tokio's own resources do, and once the budget is spent the future yields
/// once before it answers: a task answering such hits in a loop would otherwise keep its thread from every other
/// task (the near cache's tracking among them) until it stops. An answer that waited (on Redis, on the origin)
/// took its turn already.
pub struct ResponseFuture<R> {
    state: State<R>,
    /// Whether a poll returned `Pending`.
    waited: bool,
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
            waited: false,
        }
    }

    /// A future that completes with `output` at its first poll: nothing to allocate.
    pub(crate) fn ready(output: Output<R>) -> Self {
        ResponseFuture {
            state: State::Ready(Some(output)),
            waited: false,
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
        let this = self.get_mut();
        let answered = match &mut this.state {
            State::Ready(output) => match output.take() {
                Some(output) => output,
                None => Err("ResponseFuture polled after it completed".into()),
            },
            State::Pending(future) => match future.as_mut().poll(cx) {
                Poll::Ready(output) => output,
                Poll::Pending => {
                    this.waited = true;
                    return Poll::Pending;
                }
            },
        };
        if this.waited {
            return Poll::Ready(answered);
        }
        // Answered without waiting: a unit of the budget (outside a Tokio runtime, always there).
        match tokio::task::coop::poll_proceed(cx) {
            Poll::Ready(budget) => {
                budget.made_progress();
                Poll::Ready(answered)
            }
            // Spent: Tokio wakes the task at its next turn, when the answer is taken.
            Poll::Pending => {
                this.state = State::Ready(Some(answered));
                this.waited = true;
                Poll::Pending
            }
        }
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use crate::{CacheOutcome, MemoryStore, RedisCacheLayer, RequestBody};
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// Another task on the runtime, counting its turns.
    struct Turns {
        ran: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Turns {
        fn start() -> Self {
            let ran = Arc::new(AtomicUsize::new(0));
            let task = tokio::spawn({
                let ran = ran.clone();
                async move {
                    loop {
                        ran.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                }
            });
            Turns { ran, task }
        }

        /// Asserts the task ran while `answers` answers were taken in a loop: Tokio's budget is 128 units a
        /// turn, so at least once every 128.
        fn assert_ran_during(self, answers: usize) {
            let ran = self.ran.load(Ordering::Relaxed);
            self.task.abort();
            assert!(ran >= answers / 128, "the other task ran {ran} times");
        }
    }

    /// A task that answers hits in a loop, each ready at once (from memory, as from the near cache), lets the
    /// runtime's other tasks run between them, as a loop over Tokio's own resources does.
    #[tokio::test(flavor = "current_thread")]
    async fn a_loop_of_hits_that_wait_on_nothing_lets_other_tasks_run() {
        let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
            .build()
            .unwrap();
        let origin = tower::service_fn(|_: Request<RequestBody>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"kept"))))
        });
        let service = tower::Layer::layer(&layer, origin);
        let request = || {
            Request::get("http://api.test/kept")
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        service.clone().oneshot(request()).await.unwrap();
        let turns = Turns::start();
        let mut hits = 0;
        for _ in 0..1_000 {
            let response = service.clone().oneshot(request()).await.unwrap();
            hits += usize::from(CacheOutcome::of(&response) == Some(CacheOutcome::Hit));
        }
        assert_eq!(hits, 1_000);
        turns.assert_ran_during(1_000);
    }

    /// So does a loop of answers given in `call` (a near-cache hit's way).
    #[tokio::test(flavor = "current_thread")]
    async fn a_loop_of_answers_given_in_call_lets_other_tasks_run() {
        let turns = Turns::start();
        for _ in 0..1_000 {
            let answer = super::ResponseFuture::<Full<Bytes>>::ready(Err("answered".into())).await;
            assert!(answer.is_err_and(|error| error.to_string() == "answered"));
        }
        turns.assert_ran_during(1_000);
    }
}
