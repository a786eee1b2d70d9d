//! Fenced leases: one refresh per key for the whole fleet, however long the refresh takes.
//!
//! A lease (`<key>:lease`, in the entry's hash slot) holds a token unique to its holder. Taking it is
//! `SET NX PX`; extending and releasing it are compare-and-act (Lua, by SHA), so a holder whose lease expired
//! can never extend or remove the next holder's. A holder renews its lease while its origin call runs (every
//! third of the lease), so the lease cannot expire under a live call and still expires soon after the holder
//! dies; a holder whose future is dropped releases it at once.

use super::engine::Engine;
use super::key::CacheKey;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A lease this process holds.
#[derive(Debug)]
pub(crate) struct Lease {
    key: String,
    token: String,
}

/// A held lease that is released when dropped (a cancelled request lets the next holder in at once) unless it
/// was released or kept on purpose.
pub(crate) struct LeaseGuard {
    engine: Arc<Engine>,
    lease: Option<Lease>,
}

impl LeaseGuard {
    /// The held lease.
    pub(crate) fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Releases the lease now (only if it still holds this holder's token).
    pub(crate) async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            let _ = self
                .engine
                .store
                .call("unlease", |s| s.release_lease(&lease.key, &lease.token))
                .await;
        }
    }

    /// Leaves the lease to expire on its own (after a failed refresh: it spaces out the retries).
    pub(crate) fn keep(mut self) {
        self.lease = None;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = self.engine.clone();
        runtime.spawn(async move {
            let _ = engine
                .store
                .call("unlease", |s| s.release_lease(&lease.key, &lease.token))
                .await;
        });
    }
}

/// A random token, unique to one holder of one lease.
fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Engine {
    /// Takes the lease of `key`: `Ok(Some)` when this process holds it now, `Ok(None)` when another does.
    pub(crate) async fn take_lease(
        self: &Arc<Self>,
        key: &CacheKey,
    ) -> Result<Option<LeaseGuard>, ()> {
        let lease = Lease {
            key: key.lease_key(),
            token: token(),
        };
        let ttl = self.policy.lease_for;
        match self
            .store
            .call("lease", |s| s.try_lease(&lease.key, &lease.token, ttl))
            .await
        {
            Ok(true) => Ok(Some(LeaseGuard {
                engine: self.clone(),
                lease: Some(lease),
            })),
            Ok(false) => Ok(None),
            Err(_) => Err(()),
        }
    }

    /// Runs `work` while renewing `lease` every third of its lifetime, so that it cannot expire under a live
    /// origin call.
    pub(crate) async fn renewing<T>(
        &self,
        lease: Option<&Lease>,
        work: impl Future<Output = T>,
    ) -> T {
        let Some(lease) = lease else {
            return work.await;
        };
        let lease_for = self.policy.lease_for;
        let every = (lease_for / 3).max(Duration::from_millis(1));
        let mut renew = tokio::time::interval_at(Instant::now() + every, every);
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = renew.tick() => {
                    let extended = self
                        .store
                        .call("renew", |s| s.extend_lease(&lease.key, &lease.token, lease_for))
                        .await;
                    if !matches!(extended, Ok(true)) {
                        tracing::debug!(lease = lease.key, "lease not renewed: lost or store failing");
                    }
                }
            }
        }
    }
}
