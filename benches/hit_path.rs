//! Criterion benchmarks of the cache hit path (filled in by the benchmark issue).

fn main() {}
