//! The in-flight map: one inner call per key; the callers that arrive meanwhile wait and share its result.
//!
//! The first caller for a key becomes the *leader* and holds a [`Leader`] guard; later callers get a
//! [`Waiter`]. The leader publishes its result with [`Leader::complete`]. If the leader is dropped first (its
//! caller was cancelled), the flight is removed and every waiter is told it was *abandoned*, so one of them
//! takes over as the new leader instead of waiting forever.

use crate::atomic::AtomicU64;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// In-flight calls by key.
#[derive(Debug)]
pub(crate) struct Coalescer<T> {
    flights: Mutex<HashMap<Arc<str>, watch::Receiver<Option<T>>>>,
    /// Flights completed so far, of any key: a caller that read the store before a flight for its key finished
    /// (and stored) and joins after it sees this move, and looks again instead of calling the origin twice.
    completed: AtomicU64,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            flights: Mutex::new(HashMap::new()),
            completed: AtomicU64::new(0),
        }
    }
}

impl<T> Coalescer<T> {
    /// How many flights have completed; read before a store look-up, compared after joining.
    pub(crate) fn epoch(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }
}

/// The caller's part in a flight.
pub(crate) enum Role<'a, T> {
    Leader(Leader<'a, T>),
    Waiter(Waiter<T>),
}

/// The one caller that makes the inner call for a key.
pub(crate) struct Leader<'a, T> {
    coalescer: &'a Coalescer<T>,
    key: Arc<str>,
    tx: Option<watch::Sender<Option<T>>>,
}

/// A caller waiting for the leader's result.
pub(crate) struct Waiter<T> {
    rx: watch::Receiver<Option<T>>,
}

impl<T: Clone> Coalescer<T> {
    /// Joins the flight for `key`, starting it if there is none.
    pub(crate) fn join(&self, key: &str) -> Role<'_, T> {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = flights.get(key) {
            return Role::Waiter(Waiter { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(None);
        let key: Arc<str> = Arc::from(key);
        flights.insert(key.clone(), rx);
        Role::Leader(Leader {
            coalescer: self,
            key,
            tx: Some(tx),
        })
    }

    /// A flight for `key` that nobody joins: its leader calls alone, and callers arriving meanwhile neither
    /// wait for it nor disturb a flight another caller leads for the key.
    pub(crate) fn solo(&self, key: &str) -> Leader<'_, T> {
        let (tx, _) = watch::channel(None);
        Leader {
            coalescer: self,
            key: Arc::from(key),
            tx: Some(tx),
        }
    }

    /// Ends the sharing of the flight for `key`, if there is one: its callers still get its result, and the next
    /// caller starts a flight of its own.
    pub(crate) fn detach(&self, key: &str) {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Ends the sharing of every flight (see [`detach`](Self::detach)).
    pub(crate) fn detach_all(&self) {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Number of flights in progress.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<T> Leader<'_, T> {
    /// Ends the sharing of this flight: callers that join from now on start one of their own, and those already
    /// waiting still get this one's result.
    pub(crate) fn detach(&self) {
        self.remove();
    }

    /// Publishes the result to every waiter and ends the flight.
    pub(crate) fn complete(mut self, value: T) {
        // Counted before the flight leaves the map: whoever joins after it is gone sees the count moved.
        self.coalescer.completed.fetch_add(1, Ordering::AcqRel);
        self.remove();
        if let Some(tx) = self.tx.take() {
            // No receivers left is fine: nobody was waiting.
            let _ = tx.send(Some(value));
        }
    }

    fn remove(&self) {
        let Some(tx) = &self.tx else { return };
        let mut flights = self
            .coalescer
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only remove our own flight: after an abandonment a new leader may own the key.
        if flights
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
        {
            flights.remove(&self.key);
        }
    }
}

impl<T> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        // Abandoned: remove the flight; dropping the sender wakes every waiter with "closed".
        self.remove();
    }
}

impl<T: Clone> Waiter<T> {
    /// The leader's result, or `None` when the leader was dropped without one.
    pub(crate) async fn wait(mut self) -> Option<T> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(value) => value.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_detached_flight_answers_its_own_waiters_and_the_next_caller_leads_anew() {
        let c = Coalescer::<u32>::default();
        let Role::Leader(old) = c.join("k") else {
            panic!("the first caller leads")
        };
        let Role::Waiter(early) = c.join("k") else {
            panic!("a second caller waits")
        };
        c.detach("k");
        let Role::Leader(new) = c.join("k") else {
            panic!("after the detach, a caller leads a flight of its own")
        };
        // The old leader finishing does not end the new flight.
        old.complete(1);
        assert_eq!(early.wait().await, Some(1));
        let Role::Waiter(late) = c.join("k") else {
            panic!("the new flight is still shared")
        };
        new.complete(2);
        assert_eq!(late.wait().await, Some(2));
        assert_eq!(c.len(), 0);

        let _one = c.join("a");
        let _two = c.join("b");
        c.detach_all();
        assert_eq!(c.len(), 0);
    }

    #[tokio::test]
    async fn a_leader_detaches_only_its_own_flight() {
        let c = Coalescer::<u32>::default();
        let Role::Leader(old) = c.join("k") else {
            panic!("the first caller leads")
        };
        let Role::Waiter(early) = c.join("k") else {
            panic!("a second caller waits")
        };
        old.detach();
        let Role::Leader(new) = c.join("k") else {
            panic!("after the leader detached, a caller leads a flight of its own")
        };
        // Detaching again (a second lost renewal) leaves the new flight alone.
        old.detach();
        assert!(matches!(c.join("k"), Role::Waiter(_)));
        old.complete(1);
        assert_eq!(early.wait().await, Some(1));
        new.complete(2);
        assert_eq!(c.len(), 0);
    }

    #[tokio::test]
    async fn waiters_share_the_leaders_result() {
        let c = Coalescer::<u32>::default();
        let Role::Leader(leader) = c.join("k") else {
            panic!("first is leader")
        };
        let Role::Waiter(w1) = c.join("k") else {
            panic!("second waits")
        };
        let Role::Waiter(w2) = c.join("k") else {
            panic!("third waits")
        };
        assert!(matches!(c.join("other"), Role::Leader(_)));
        leader.complete(7);
        assert_eq!(w1.wait().await, Some(7));
        assert_eq!(w2.wait().await, Some(7));
        assert_eq!(c.len(), 0);
        assert!(
            matches!(c.join("k"), Role::Leader(_)),
            "a finished flight is gone"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_waiters() {
        let c = Coalescer::<u32>::default();
        let leader = c.join("k");
        let Role::Waiter(w) = c.join("k") else {
            panic!("waits")
        };
        drop(leader);
        assert_eq!(w.wait().await, None);
        assert!(
            matches!(c.join("k"), Role::Leader(_)),
            "a waiter can take over"
        );
    }

    #[tokio::test]
    async fn a_solo_flight_is_joined_by_nobody_and_leaves_the_shared_one_alone() {
        let c = Coalescer::<u32>::default();
        let Role::Leader(shared) = c.join("k") else {
            panic!("leads")
        };
        let Role::Waiter(waiter) = c.join("k") else {
            panic!("waits")
        };
        let solo = c.solo("k");
        assert_eq!(c.len(), 1, "a solo flight is not in the map");
        solo.complete(1);
        assert!(
            matches!(c.join("k"), Role::Waiter(_)),
            "the shared flight is still there"
        );
        drop(c.solo("k"));
        assert_eq!(c.len(), 1, "dropping a solo leader removes nothing");
        shared.complete(2);
        assert_eq!(waiter.wait().await, Some(2));
    }
}
