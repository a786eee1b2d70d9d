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
