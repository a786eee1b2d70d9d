//! [`RetryLayer`] and its builder.

use super::Retry;
use super::backoff::Backoff;
use super::budget::RetryBudget;
use super::policy::{Classify, DefaultClassifier};
use crate::budget::ByteBudget;
use crate::error::{ConfigError, Setting};
use http::HeaderName;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// A Tower layer that retries transient failures; see the [module docs](super) for the policy.
///
/// Every service built by one layer (and its clones) shares the [`RetryBudget`].
#[derive(Clone)]
pub struct RetryLayer {
    config: Arc<Config>,
}

pub(crate) struct Config {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) deadline: Duration,
    pub(crate) retry_after_cap: Duration,
    pub(crate) retry_non_idempotent: bool,
    pub(crate) idempotency_keys: Vec<HeaderName>,
    pub(crate) max_body: usize,
    /// The request bodies held for replay, by all services of the layer together.
    pub(crate) bodies: Arc<ByteBudget>,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) classifier: Arc<dyn Classify>,
    pub(crate) jitter_seed: Option<u64>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("base_delay", &self.backoff.base)
            .field("max_delay", &self.backoff.max)
            .field("deadline", &self.deadline)
            .field("retry_after_cap", &self.retry_after_cap)
            .field("retry_non_idempotent", &self.retry_non_idempotent)
            .field("idempotency_keys", &self.idempotency_keys)
            .field("max_body", &self.max_body)
            .field("bodies", &self.bodies)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// The layer with every default (see [`RetryLayerBuilder`]): 4 attempts, 200 ms base delay, a 60 s
    /// deadline, a shared retry budget.
    pub fn new() -> Self {
        RetryLayer::default()
    }

    /// Starts a builder with the defaults each setter documents.
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            deadline: Duration::from_secs(60),
            retry_after_cap: Duration::from_secs(180),
            retry_non_idempotent: false,
            idempotency_keys: vec![HeaderName::from_static("idempotency-key")],
            max_body: 1024 * 1024,
            max_in_flight_bytes: 64 * 1024 * 1024,
            budget: Some(RetryBudget::default()),
            classifier: Arc::new(DefaultClassifier),
            jitter_seed: None,
        }
    }
}

impl Default for RetryLayer {
    /// The layer with every default (see [`RetryLayerBuilder`]).
    fn default() -> Self {
        RetryLayer {
            config: Arc::new(RetryLayer::builder().into_config()),
        }
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RetryLayer").field(&self.config).finish()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::from_parts(inner, self.config.clone())
    }
}

/// Builds a [`RetryLayer`]; every setter states its default. Validation happens in [`build`](Self::build).
///
/// A clone shares the [`budget`](Self::budget) set so far: layers built from both draw on one budget.
#[derive(Clone)]
#[must_use]
pub struct RetryLayerBuilder {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    deadline: Duration,
    retry_after_cap: Duration,
    retry_non_idempotent: bool,
    idempotency_keys: Vec<HeaderName>,
    max_body: usize,
    max_in_flight_bytes: usize,
    budget: Option<RetryBudget>,
    classifier: Arc<dyn Classify>,
    jitter_seed: Option<u64>,
}

impl fmt::Debug for RetryLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayerBuilder")
            .field("max_attempts", &self.max_attempts)
            .field("base_delay", &self.base_delay)
            .field("max_delay", &self.max_delay)
            .field("deadline", &self.deadline)
            .field("retry_after_cap", &self.retry_after_cap)
            .field("retry_non_idempotent", &self.retry_non_idempotent)
            .field("idempotency_keys", &self.idempotency_keys)
            .field("max_body", &self.max_body)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl RetryLayerBuilder {
    /// Attempts in all, the first included. Default: 4 (three retries). `1` disables retrying.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The backoff base: retry `n` (from 0) sleeps a random time in `[0, min(max_delay, base * 2^n)]`.
    /// Default: 200 ms.
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.base_delay = base;
        self
    }

    /// The backoff ceiling. Default: 10 s. A longer wait the answer asks for (`Retry-After`) still wins (up to
    /// [`retry_after_cap`](Self::retry_after_cap)).
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// The total time budget of one call, measured from its first attempt: no retry is scheduled whose start
    /// would fall after it, and the last answer is returned instead. An attempt already in flight is bounded
    /// by your per-attempt timeout layer, not by this. Default: 60 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The longest wait an answer may ask for (`Retry-After`, or a rate limit's reset; see the
    /// [module docs](super#policy)) that is worth waiting; a longer one returns the answer at once. Default: 180 s,
    /// as the Genesys Cloud SDKs use.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// Also retry non-idempotent requests (`POST`, `PATCH`, ...) on every retryable answer. Default: `false`,
    /// so they are retried only on `429`, which says the request was not processed, on a connection that could
    /// not be made, which the request never reached, or when they carry an
    /// [idempotency key](Self::idempotency_key_headers). Turn it on for `POST` queries that change nothing.
    pub fn retry_non_idempotent(mut self, retry: bool) -> Self {
        self.retry_non_idempotent = retry;
        self
    }

    /// Request headers that carry an idempotency key: a non-idempotent request with one of them is retried as an
    /// idempotent one is, since the server answers a repeat of the key with the first request's result instead
    /// of acting twice (the IETF `Idempotency-Key` field, draft-ietf-httpapi-idempotency-key-header, as Stripe,
    /// Adyen and Square read it). Default: `Idempotency-Key`. The names given replace the default: pass
    /// `Idempotency-Key` and `PayPal-Request-Id` to read both, or none to retry such requests only on `429` and
    /// failed connects.
    pub fn idempotency_key_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.idempotency_keys = names.into_iter().collect();
        self
    }

    /// The largest request body buffered for replay. A larger one is sent once and not retried, streamed on as it
    /// is read (what was read, then the rest), never held whole. Default: 1 MiB.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The most request body bytes the calls in flight may hold for replay together, across all services of the
    /// layer: each body the layer reads from a stream (a hyper server's upload, a chunked `POST`) is held until
    /// its call ends. A body read while the others already hold this much is sent once and not retried, as one
    /// over [`max_body_size`](Self::max_body_size) is ([`GaveUp::OverMemoryBudget`] if its answer was
    /// retryable). A body its caller made whole (a `Full`, a [`RequestBody`](crate::RequestBody) of bytes), as a
    /// client's usually is, is not read by the layer and not counted: its caller holds it anyway. Default: 64 MiB.
    ///
    /// [`GaveUp::OverMemoryBudget`]: super::GaveUp::OverMemoryBudget
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight_bytes = bytes;
        self
    }

    /// The retry budget, shared by every service this layer builds. Default: [`RetryBudget::default`] (20 in a
    /// burst, then one per five completed requests).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Retries bounded only by attempts and the deadline. Not recommended against shared APIs.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// What is transient. Default: [`DefaultClassifier`] (408, 429, 500, 502, 503, 504, 520-524, 529 and
    /// transport errors).
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }

    /// Seeds the jitter so delays repeat from run to run (each call starts from this seed). Default: a fresh
    /// random seed per call. For tests: not part of the stable API.
    #[doc(hidden)]
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// Validates the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `max_attempts` is zero, `max_delay` is shorter than `base_delay`, or
    /// `max_in_flight_bytes` is below `max_body_size`.
    pub fn build(self) -> Result<RetryLayer, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                Setting::MaxAttempts,
                "must be at least 1 (the first attempt)",
            ));
        }
        if self.max_delay < self.base_delay {
            return Err(ConfigError::new(
                Setting::MaxDelay,
                "must not be shorter than base_delay",
            ));
        }
        if self.max_in_flight_bytes < self.max_body {
            return Err(ConfigError::new(
                Setting::MaxInFlightBytes,
                "must not be below max_body_size (one body it allows would not fit)",
            ));
        }
        Ok(RetryLayer {
            config: Arc::new(self.into_config()),
        })
    }

    fn into_config(self) -> Config {
        Config {
            max_attempts: self.max_attempts.max(1),
            backoff: Backoff {
                base: self.base_delay,
                max: self.max_delay,
            },
            deadline: self.deadline,
            retry_after_cap: self.retry_after_cap,
            retry_non_idempotent: self.retry_non_idempotent,
            idempotency_keys: self.idempotency_keys,
            max_body: self.max_body,
            bodies: ByteBudget::new(self.max_in_flight_bytes, || {}),
            budget: self.budget,
            classifier: self.classifier,
            jitter_seed: self.jitter_seed,
        }
    }
}
