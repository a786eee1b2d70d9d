//! The `warn` events a test logs, for tests that check what the cache tells its operator.
//!
//! The tests of a binary share one process, and with it one subscriber, so each event is kept with the thread it
//! was logged on, and a test sees only its own: those logged, after it asked, on its own thread (the test harness
//! runs each test on a thread of its own, where a current-thread runtime runs every task of the test) and, for a
//! test on a multi-thread runtime, on tokio's threads. Those of other multi-thread tests cannot be told from its
//! own, so such a test looks for what only it logs (its server's address, a refusal only it provokes).

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::ThreadId;

/// How the names tokio gives a runtime's threads start (`tokio-rt-worker`; `tokio-runtime-worker` in older releases).
const TOKIO: &str = "tokio-";

/// One `warn` event: its fields (`message=... field=... `) and where it was logged.
struct Event {
    thread: ThreadId,
    on_worker: bool,
    fields: String,
}

/// The `warn` events one test logged (see the module docs), from its call of [`warnings`] on.
pub struct Warnings {
    events: Arc<Mutex<Vec<Event>>>,
    from: usize,
    thread: ThreadId,
    workers_too: bool,
}

impl Warnings {
    /// The fields of every `warn` event this test logged so far.
    pub fn all(&self) -> Vec<String> {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events
            .get(self.from..)
            .unwrap_or_default()
            .iter()
            .filter(|event| event.thread == self.thread || (self.workers_too && event.on_worker))
            .map(|event| event.fields.clone())
            .collect()
    }
}

/// The `warn` events this test logs from now on: call it first, on the test's own thread (in the test's body).
/// The first call in the process installs the subscriber for the whole process.
pub fn warnings() -> Warnings {
    static EVENTS: OnceLock<Arc<Mutex<Vec<Event>>>> = OnceLock::new();
    let events = EVENTS
        .get_or_init(|| {
            let events = Arc::new(Mutex::new(Vec::new()));
            let subscriber = tracing_subscriber::layer::SubscriberExt::with(
                tracing_subscriber::registry(),
                Recorder(events.clone()),
            );
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
            events
        })
        .clone();
    let from = events.lock().unwrap_or_else(PoisonError::into_inner).len();
    let workers_too = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    });
    Warnings {
        events,
        from,
        thread: std::thread::current().id(),
        workers_too,
    }
}

/// The fields of the `warn` events this test logged that contain `text`.
pub fn containing(warnings: &Warnings, text: &str) -> Vec<String> {
    warnings
        .all()
        .into_iter()
        .filter(|fields| fields.contains(text))
        .collect()
}

struct Recorder(Arc<Mutex<Vec<Event>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = String::new();
            event.record(&mut Fields(&mut fields));
            let thread = std::thread::current();
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Event {
                    thread: thread.id(),
                    on_worker: thread.name().is_some_and(|name| name.starts_with(TOKIO)),
                    fields,
                });
        }
    }
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}
