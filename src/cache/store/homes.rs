//! Homes for the futures of store reads, kept between reads.
//!
//! fred's `GET` future is about 5 KiB: it keeps room for paths a `GET` rarely takes (interrupting a blocked
//! connection on a side channel). Boxing a fresh one for every read, as `dyn Store` needs, costs every cache
//! hit an allocation past the allocator's fast sizes, its release, and a write of 5 KiB into memory that a
//! program doing other work between hits has let go cold. A read here takes a home a finished read gave back
//! (or makes one), puts its future in it, and gives it back when it ends. What the cache holds of a read is a
//! [`Housed`] handle of three words, one type whatever the store's future: nothing is boxed per read (a caller of
//! `Store::get`, which wants a `StoreFuture`, boxes the handle).
//!
//! Homes are kept in a few shards, each thread using one, so that cores rarely wait on each other's lock;
//! a shard keeps at most [`KEPT`] homes, enough for the reads a thread has in flight at once in a busy server.
//! After a burst, a store keeps at most `SHARDS * KEPT` (128) empty homes, about 650 KiB; reads past that
//! many in flight at once allocate their home and free it when they end.

use crate::error::StoreError;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

/// Homes a shard keeps; more are freed.
const KEPT: usize = 16;

/// Shards of homes.
const SHARDS: usize = 8;

type Output = Result<Option<Bytes>, StoreError>;

/// A home, with the read it holds (if any) behind a trait object: the read's type is the store's, and a
/// [`Housed`] read is one type whatever the store, so that the cache can hold it without boxing it again.
trait Home<I>: Send {
    /// Starts the read of `input` in this home (which is empty).
    fn start(self: Pin<&mut Self>, input: I);
    /// Polls the read in this home; `None` when the home is empty.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Option<Poll<Output>>;
    /// Drops the read in this home, if any.
    fn empty(self: Pin<&mut Self>);
}

pin_project_lite::pin_project! {
    /// A home for the futures `M` makes.
    struct HomeOf<F, M> {
        make: M,
        #[pin]
        read: Option<F>,
    }
}

impl<F, M, I> Home<I> for HomeOf<F, M>
where
    F: Future<Output = Output> + Send,
    M: Fn(I) -> F + Send,
{
    fn start(self: Pin<&mut Self>, input: I) {
        let mut this = self.project();
        let read = (this.make)(input);
        this.read.set(Some(read));
    }

    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Option<Poll<Output>> {
        self.project().read.as_pin_mut().map(|read| read.poll(cx))
    }

    fn empty(self: Pin<&mut Self>) {
        self.project().read.set(None);
    }
}

type Boxed<I> = Pin<Box<dyn Home<I>>>;

/// Homes for the futures of reads of input `I`.
pub(crate) struct Homes<I> {
    /// Makes a new, empty home.
    build: Box<dyn Fn() -> Boxed<I> + Send + Sync>,
    shards: [Mutex<Vec<Boxed<I>>>; SHARDS],
}

impl<I: 'static> Homes<I> {
    /// Homes for the futures `make` returns.
    pub(crate) fn new<F, M>(make: M) -> Self
    where
        F: Future<Output = Output> + Send + 'static,
        M: Fn(I) -> F + Clone + Send + Sync + 'static,
    {
        Homes {
            build: Box::new(move || {
                Box::pin(HomeOf {
                    make: make.clone(),
                    read: None,
                })
            }),
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
        }
    }
}

impl<I> Homes<I> {
    fn shard(&self) -> MutexGuard<'_, Vec<Boxed<I>>> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        }
        let shard = SHARD.try_with(|shard| *shard).unwrap_or(0);
        // A panic while holding the lock leaves a valid vector of empty homes.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn give_back(&self, mut home: Boxed<I>) {
        home.as_mut().empty();
        let mut shard = self.shard();
        if shard.len() < KEPT {
            shard.push(home);
        }
    }

    /// Starts the read of `input`, in a home a finished read gave back (or a new one).
    pub(crate) fn read(&self, input: I) -> Housed<'_, I> {
        let kept = self.shard().pop();
        let mut home = kept.unwrap_or_else(|| (self.build)());
        home.as_mut().start(input);
        Housed {
            homes: self,
            home: Some(home),
        }
    }
}

/// A read in a home, which it gives back when it ends. Three words (the homes, and the home's boxed trait
/// object), and `Unpin`: what the cache holds of a store read, with nothing boxed for it.
pub(crate) struct Housed<'h, I> {
    homes: &'h Homes<I>,
    home: Option<Boxed<I>>,
}

impl<I> Future for Housed<'_, I> {
    type Output = Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let polled = self
            .home
            .as_mut()
            .and_then(|home| home.as_mut().poll_read(cx));
        let Some(polled) = polled else {
            return Poll::Ready(Err(StoreError::Backend(
                "store read polled after it ended".into(),
            )));
        };
        let output = std::task::ready!(polled);
        if let Some(home) = self.home.take() {
            self.homes.give_back(home);
        }
        Poll::Ready(output)
    }
}

impl<I> Drop for Housed<'_, I> {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            self.homes.give_back(home);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    type Boxed = Pin<Box<dyn Future<Output = Result<Option<Bytes>, StoreError>> + Send>>;

    /// Reads answering their input after one yield, counting how many of their futures were dropped.
    fn reader(dropped: Arc<AtomicU64>) -> impl Fn(u8) -> Boxed + Clone + Send + Sync + 'static {
        move |n: u8| {
            let guard = DropCount(dropped.clone());
            Box::pin(async move {
                let _guard = guard;
                tokio::task::yield_now().await;
                Ok(Some(Bytes::from(vec![n])))
            })
        }
    }

    struct DropCount(Arc<AtomicU64>);

    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn kept<I>(homes: &Homes<I>) -> usize {
        homes
            .shards
            .iter()
            .map(|shard| shard.lock().unwrap().len())
            .sum()
    }

    #[tokio::test]
    async fn reads_answer_their_own_input_and_reuse_one_home() {
        let dropped = Arc::new(AtomicU64::new(0));
        let homes = Homes::new(reader(dropped.clone()));
        for n in 0..50u8 {
            assert_eq!(homes.read(n).await.unwrap(), Some(Bytes::from(vec![n])));
            assert_eq!(
                dropped.load(Ordering::SeqCst),
                u64::from(n) + 1,
                "the ended read's future is dropped"
            );
        }
        assert_eq!(
            kept(&homes),
            1,
            "one thread reading one at a time needs one home"
        );
    }

    #[tokio::test]
    async fn reads_in_flight_at_once_each_have_a_home_and_at_most_kept_stay() {
        let dropped = Arc::new(AtomicU64::new(0));
        let homes = Homes::new(reader(dropped.clone()));
        let reads: Vec<_> = (0..40u8).map(|n| homes.read(n)).collect();
        let answers = futures_util::future::join_all(reads).await;
        for (n, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.unwrap(), Some(Bytes::from(vec![n as u8])));
        }
        assert_eq!(dropped.load(Ordering::SeqCst), 40);
        assert_eq!(kept(&homes), KEPT, "a shard keeps at most KEPT homes");
    }

    #[tokio::test]
    async fn a_read_dropped_before_it_ends_gives_its_home_back_empty() {
        let dropped = Arc::new(AtomicU64::new(0));
        let homes = Homes::new(reader(dropped.clone()));
        let mut read = homes.read(7);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut read).poll(&mut cx).is_pending());
        drop(read);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "its future is dropped with it"
        );
        assert_eq!(kept(&homes), 1);
        assert_eq!(homes.read(8).await.unwrap(), Some(Bytes::from(vec![8])));
    }
}
