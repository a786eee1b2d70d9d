//! Deadlines of store calls, watched by one shared thread instead of a timer armed for every call.
//!
//! Every store call is bounded by the store timeout. A Tokio timer per call costs each hit a registration in
//! the runtime's timer wheel and a removal from it, both under the timer's lock, and, in a program that does other
//! work between hits, the timer code's footprint in a cold instruction cache: more than anything else the layer
//! does on a Redis hit. Here a call records its deadline and waker in its store's queue when it first waits (a
//! lock and a push), and clears its slot when it ends (a lock and a write). One thread for the whole process,
//! started on first use, wakes the calls whose deadline passed; each such future then finds its deadline
//! passed and ends with [`Elapsed`]. The thread parks while no call has waited for a second.
//!
//! The calls of one queue share one timeout, so each queue is in deadline order and the watchdog looks only at
//! its front. It looks again at the earliest deadline it saw, and never later than the shortest timeout of any
//! queue from now: a call that joins a queue just after the watchdog looked at it is then never woken late by
//! more than the few instructions between its clock read and its push. A call whose deadline is earlier than the
//! watchdog's next look (a queue with a shorter timeout than the one it waits for), or that finds it parked,
//! wakes it.
//!
//! Deadlines are on the monotonic clock (`std::time::Instant`), not Tokio's: the bound is on real waiting for a
//! real store, and paused Tokio time does not pause the store.

use crate::atomic::AtomicU64;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How long the watchdog keeps looking after the last call it saw, before it parks.
const LINGER: Duration = Duration::from_secs(1);

/// The error of a call whose deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// The pending calls of one store, all with the same timeout.
pub(crate) struct Deadlines {
    timeout: Duration,
    /// Whether the watchdog runs; if its thread could not be started, each call arms a Tokio timer instead.
    watched: bool,
    queue: Mutex<Queue>,
}

/// Slots in the order the calls first waited, which is deadline order.
#[derive(Default)]
struct Queue {
    /// The sequence number of `slots[0]`.
    head: u64,
    slots: VecDeque<Slot>,
}

struct Slot {
    deadline: Instant,
    /// The waiting call's waker; `None` once the call ended or was woken for its deadline.
    waker: Option<Waker>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; should a waker's code do so, the data is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Queue {
    /// Drops the ended calls at the front.
    fn trim(&mut self) {
        while self.slots.front().is_some_and(|slot| slot.waker.is_none()) {
            self.slots.pop_front();
            self.head += 1;
        }
    }

    fn slot(&mut self, seq: u64) -> Option<&mut Slot> {
        let index = usize::try_from(seq.checked_sub(self.head)?).ok()?;
        self.slots.get_mut(index)
    }
}

impl Deadlines {
    /// Deadlines `timeout` after each call first waits, watched by the shared watchdog (or, when its thread
    /// cannot be started, by a Tokio timer per call).
    pub(crate) fn new(timeout: Duration) -> Arc<Self> {
        let watchdog = Watchdog::get();
        let deadlines = Arc::new(Deadlines {
            timeout,
            watched: watchdog.is_some(),
            queue: Mutex::new(Queue::default()),
        });
        if let Some(watchdog) = watchdog {
            let mut queues = lock(&watchdog.queues);
            queues.retain(|queue| queue.strong_count() > 0);
            queues.push(Arc::downgrade(&deadlines));
        }
        deadlines
    }

    /// How long after it first waits a call ends.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `future`, ended with [`Elapsed`] if it is still pending at the deadline.
    pub(crate) fn bound<F: Future + Unpin>(&self, future: F) -> Bounded<'_, F> {
        Bounded {
            future,
            deadlines: self,
            state: State::New,
        }
    }

    fn register(&self, deadline: Instant, waker: Waker) -> u64 {
        let seq = {
            let mut queue = lock(&self.queue);
            queue.trim();
            queue.slots.push_back(Slot {
                deadline,
                waker: Some(waker),
            });
            queue.head + (queue.slots.len() as u64 - 1)
        };
        if let Some(watchdog) = Watchdog::get() {
            watchdog.note(deadline);
        }
        seq
    }

    fn finish(&self, seq: u64) {
        let mut queue = lock(&self.queue);
        if let Some(slot) = queue.slot(seq) {
            slot.waker = None;
        }
        queue.trim();
    }

    /// A pending call polled again: keeps the waker of the task that polls it now.
    fn refresh(&self, seq: u64, waker: &Waker) {
        let mut queue = lock(&self.queue);
        if let Some(Slot {
            waker: Some(stored),
            ..
        }) = queue.slot(seq)
            && !stored.will_wake(waker)
        {
            stored.clone_from(waker);
        }
    }

    /// Takes the wakers of the calls whose deadline is at or before `now` into `due`; returns the earliest
    /// deadline still pending.
    fn expire(&self, now: Instant, due: &mut Vec<Waker>) -> Option<Instant> {
        let mut queue = lock(&self.queue);
        loop {
            let slot = queue.slots.front_mut()?;
            match slot.waker.take() {
                Some(waker) if slot.deadline <= now => due.push(waker),
                Some(waker) => {
                    slot.waker = Some(waker);
                    return Some(slot.deadline);
                }
                None => {}
            }
            queue.slots.pop_front();
            queue.head += 1;
        }
    }
}

/// A future bounded by a deadline of [`Deadlines`].
pub(crate) struct Bounded<'d, F> {
    future: F,
    deadlines: &'d Deadlines,
    state: State,
}

enum State {
    /// Not polled yet, or ready at once: nothing registered.
    New,
    /// Registered as `seq`.
    Waiting { seq: u64, deadline: Instant },
    /// Without the watchdog: a timer of its own.
    Timer(Pin<Box<tokio::time::Sleep>>),
    /// Ended, or without a deadline (a timeout past the end of the clock).
    Unbounded,
}

impl<F: Future + Unpin> Future for Bounded<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(output) = Pin::new(&mut this.future).poll(cx) {
            if let State::Waiting { seq, .. } = this.state {
                this.deadlines.finish(seq);
            }
            this.state = State::Unbounded;
            return Poll::Ready(Ok(output));
        }
        match &mut this.state {
            State::New => {
                let timeout = this.deadlines.timeout;
                match Instant::now().checked_add(timeout) {
                    None => this.state = State::Unbounded,
                    Some(deadline) if this.deadlines.watched => {
                        let seq = this.deadlines.register(deadline, cx.waker().clone());
                        this.state = State::Waiting { seq, deadline };
                    }
                    Some(_) => {
                        let mut timer = Box::pin(tokio::time::sleep(timeout));
                        if timer.as_mut().poll(cx).is_ready() {
                            this.state = State::Unbounded;
                            return Poll::Ready(Err(Elapsed));
                        }
                        this.state = State::Timer(timer);
                    }
                }
            }
            State::Waiting { seq, deadline } => {
                let seq = *seq;
                if Instant::now() >= *deadline {
                    this.deadlines.finish(seq);
                    this.state = State::Unbounded;
                    return Poll::Ready(Err(Elapsed));
                }
                this.deadlines.refresh(seq, cx.waker());
            }
            State::Timer(timer) => {
                if timer.as_mut().poll(cx).is_ready() {
                    this.state = State::Unbounded;
                    return Poll::Ready(Err(Elapsed));
                }
            }
            State::Unbounded => {}
        }
        Poll::Pending
    }
}

impl<F> Drop for Bounded<'_, F> {
    fn drop(&mut self) {
        if let State::Waiting { seq, .. } = self.state {
            self.deadlines.finish(seq);
        }
    }
}

/// The one thread that wakes calls at their deadline.
struct Watchdog {
    queues: Mutex<Vec<Weak<Deadlines>>>,
    /// When the watchdog looks next, in nanoseconds since `epoch`; `u64::MAX` while it is parked.
    next: AtomicU64,
    epoch: Instant,
    /// Set (and the condition variable notified) to have the watchdog look now.
    kicked: Mutex<bool>,
    kick: Condvar,
}

impl Watchdog {
    /// The watchdog, started on first use; `None` if its thread could not be started.
    fn get() -> Option<&'static Watchdog> {
        static WATCHDOG: OnceLock<Option<&'static Watchdog>> = OnceLock::new();
        *WATCHDOG.get_or_init(|| {
            let watchdog: &'static Watchdog = Box::leak(Box::new(Watchdog {
                queues: Mutex::new(Vec::new()),
                next: AtomicU64::new(u64::MAX),
                epoch: Instant::now(),
                kicked: Mutex::new(false),
                kick: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("tower-redis-cache-deadlines".into())
                .spawn(move || watchdog.run())
                .ok()
                .map(|_| watchdog)
        })
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// A call waits until `deadline`: wakes the watchdog if it would look later than that.
    fn note(&self, deadline: Instant) {
        // Ordered after the push by the queue's lock: a watchdog that parks after looking at the queue without
        // seeing the push stored `u64::MAX` before it looked (see `run`), so this load sees it.
        if self.nanos(deadline) < self.next.load(Ordering::SeqCst) {
            *lock(&self.kicked) = true;
            self.kick.notify_one();
        }
    }

    fn run(&self) {
        let mut due = Vec::new();
        let mut quiet_since: Option<Instant> = None;
        let mut parking = false;
        loop {
            let now = Instant::now();
            let mut earliest: Option<Instant> = None;
            let mut shortest: Option<Duration> = None;
            lock(&self.queues).retain(|queue| {
                let Some(queue) = queue.upgrade() else {
                    return false;
                };
                if let Some(at) = queue.expire(now, &mut due) {
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                }
                shortest = Some(shortest.map_or(queue.timeout, |s| s.min(queue.timeout)));
                true
            });
            for waker in due.drain(..) {
                // A waker is the caller's executor's code: should one panic, the watchdog must live on, or no
                // later call would ever time out.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake()));
            }
            let look = now.checked_add(shortest.unwrap_or(LINGER));
            let target = match earliest {
                Some(at) => {
                    quiet_since = None;
                    Some(look.map_or(at, |look| look.min(at)))
                }
                None if now.duration_since(*quiet_since.get_or_insert(now)) < LINGER => look,
                None => None,
            };
            match target {
                Some(at) => {
                    parking = false;
                    self.next.store(self.nanos(at), Ordering::SeqCst);
                }
                // Say so before looking a last time: a call that joins a queue after that look sees it and kicks.
                None if !parking => {
                    parking = true;
                    self.next.store(u64::MAX, Ordering::SeqCst);
                    continue;
                }
                None => {}
            }
            let mut kicked = lock(&self.kicked);
            while !*kicked {
                match target {
                    None => {
                        kicked = self
                            .kick
                            .wait(kicked)
                            .unwrap_or_else(PoisonError::into_inner)
                    }
                    Some(at) => {
                        let left = at.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        kicked = self
                            .kick
                            .wait_timeout(kicked, left)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
            }
            *kicked = false;
            if target.is_none() {
                // Kicked out of parking: a call waits; look at once, and linger from now.
                quiet_since = None;
                parking = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn never() -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(pending())
    }

    #[tokio::test]
    async fn a_call_still_pending_at_its_deadline_ends_elapsed() {
        let deadlines = Deadlines::new(Duration::from_millis(30));
        let started = Instant::now();
        assert_eq!(deadlines.bound(never()).await, Err(Elapsed));
        assert!(
            started.elapsed() >= Duration::from_millis(30),
            "not before the deadline"
        );
        // Its slot is gone with it.
        assert!(lock(&deadlines.queue).slots.is_empty());
    }

    #[tokio::test]
    async fn a_call_that_ends_in_time_leaves_nothing_behind() {
        let deadlines = Deadlines::new(Duration::from_secs(5));
        for n in 0..100u32 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let call = deadlines.bound(rx);
            let answer = tokio::spawn(async move {
                tokio::task::yield_now().await;
                tx.send(n)
            });
            assert_eq!(call.await, Ok(Ok(n)));
            answer.await.expect("sender").expect("sent");
        }
        // Every call registered (it waited for its sender) and cleared its slot when it ended.
        let queue = lock(&deadlines.queue);
        assert!(queue.slots.is_empty(), "{} slots left", queue.slots.len());
        assert_eq!(queue.head, 100, "each of the hundred calls waited once");
    }

    #[tokio::test]
    async fn a_short_timeout_is_not_held_up_by_a_longer_one() {
        // The watchdog first waits for the long queue's deadline; the short call joining later must wake it.
        let long = Deadlines::new(Duration::from_secs(30));
        let slow = tokio::spawn(async move { long.bound(never()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let short = Deadlines::new(Duration::from_millis(40));
        let started = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(10), short.bound(never())).await;
        assert_eq!(
            ended,
            Ok(Err(Elapsed)),
            "the short call timed out on its own deadline"
        );
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert!(!slow.is_finished(), "the long call is still waiting");
        slow.abort();
    }

    #[tokio::test]
    async fn a_waker_that_panics_does_not_stop_the_watchdog() {
        struct Panics;
        impl std::task::Wake for Panics {
            fn wake(self: Arc<Self>) {
                panic!("a waker that panics (expected by this test)");
            }
        }
        let deadlines = Deadlines::new(Duration::from_millis(10));
        let mut call = deadlines.bound(never());
        let waker = Waker::from(Arc::new(Panics));
        assert!(
            Pin::new(&mut call)
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        // The watchdog takes the slot when it wakes (and so panics in) that waker.
        for _ in 0..1000 {
            if lock(&deadlines.queue).slots.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            lock(&deadlines.queue).slots.is_empty(),
            "the watchdog woke the call"
        );
        // It still wakes a later call at its deadline.
        struct Woken(tokio::sync::Notify);
        impl std::task::Wake for Woken {
            fn wake(self: Arc<Self>) {
                self.0.notify_one();
            }
        }
        let woken = Arc::new(Woken(tokio::sync::Notify::new()));
        let waker = Waker::from(woken.clone());
        let mut later = deadlines.bound(never());
        assert!(
            Pin::new(&mut later)
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        let wait = tokio::time::timeout(Duration::from_secs(10), woken.0.notified()).await;
        assert!(wait.is_ok(), "the watchdog woke the later call");
        let ended = Pin::new(&mut later).poll(&mut Context::from_waker(&waker));
        assert_eq!(ended, Poll::Ready(Err(Elapsed)));
        drop(call);
    }

    #[test]
    fn a_dropped_call_clears_its_slot() {
        let deadlines = Deadlines::new(Duration::from_secs(30));
        let mut call = deadlines.bound(never());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut call).poll(&mut cx).is_pending());
        assert_eq!(lock(&deadlines.queue).slots.len(), 1);
        drop(call);
        assert!(lock(&deadlines.queue).slots.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_watchdog_a_timer_bounds_the_call() {
        let deadlines = Arc::new(Deadlines {
            timeout: Duration::from_secs(3),
            watched: false,
            queue: Mutex::new(Queue::default()),
        });
        let started = tokio::time::Instant::now();
        assert_eq!(deadlines.bound(never()).await, Err(Elapsed));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(3),
            "the Tokio timer's deadline"
        );
        assert_eq!(
            lock(&deadlines.queue).head,
            0,
            "nothing went through the queue"
        );
    }

    #[test]
    fn a_timeout_past_the_end_of_the_clock_never_elapses() {
        let deadlines = Deadlines::new(Duration::MAX);
        let mut call = deadlines.bound(never());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut call).poll(&mut cx).is_pending());
        assert!(lock(&deadlines.queue).slots.is_empty(), "nothing to watch");
    }
}
