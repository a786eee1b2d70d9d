//! Reading what reaches the `metrics` facade, for the tests of what the crate exports.

use metrics::Key;

/// A metric's name with its labels, as the tests look it up: `name{label=value,...}`.
pub fn name_of(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

/// Runs `test` to its end on a current-thread runtime of its own, with `recorder` receiving what the crate
/// exports meanwhile (a local recorder: the tasks the test spawns run on this thread too).
pub fn recorded<R: metrics::Recorder, F: std::future::Future>(recorder: &R, test: F) -> F::Output {
    metrics::with_local_recorder(recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(test)
    })
}
