//! The `warn` events a test binary logs, for tests that check what the cache tells its operator.

use std::sync::{Arc, Mutex, OnceLock};

/// The fields of the `warn` events every test of this binary logged (`message=... field=... `), from the
/// first call on: a subscriber for the whole process, installed by that call.
pub fn warnings() -> Arc<Mutex<Vec<String>>> {
    static WARNINGS: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    WARNINGS
        .get_or_init(|| {
            let warnings = Arc::new(Mutex::new(Vec::new()));
            let subscriber = tracing_subscriber::layer::SubscriberExt::with(
                tracing_subscriber::registry(),
                Warnings(warnings.clone()),
            );
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
            warnings
        })
        .clone()
}

/// The fields of the `warn` events among `warnings` that contain `text`.
pub fn containing(warnings: &Mutex<Vec<String>>, text: &str) -> Vec<String> {
    let warnings = warnings.lock().unwrap();
    warnings
        .iter()
        .filter(|fields| fields.contains(text))
        .cloned()
        .collect()
}

struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = String::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}
