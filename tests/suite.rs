//! The integration tests, one module a file beside this one, in one binary: each binary links the crate and its
//! dependencies and compiles `support` anew, and the harness runs one binary's tests at a time, so one binary
//! builds and runs in less time than twenty. Three stay binaries of their own: `memory.rs` measures the process's
//! peak memory, `clocks.rs` runs itself again under libfaketime, and `tracing.rs` installs its own subscriber.
//! A module is compiled with the features its file needs.

mod replay;
#[cfg(feature = "redis")]
mod support;

#[cfg(all(feature = "redis", feature = "memory"))]
mod acl;
mod auth;
#[cfg(all(feature = "redis", feature = "memory"))]
mod bounds;
#[cfg(all(feature = "redis", feature = "memory"))]
mod cache;
#[cfg(all(feature = "redis", feature = "memory"))]
mod cluster;
#[cfg(all(feature = "redis", feature = "memory"))]
mod conformance;
#[cfg(all(feature = "redis", feature = "memory"))]
mod faults;
#[cfg(all(feature = "redis", feature = "memory"))]
mod fleet;
#[cfg(all(feature = "redis", feature = "memory"))]
mod freshness;
#[cfg(all(
    feature = "genesys",
    feature = "emulator",
    feature = "redis",
    feature = "memory"
))]
mod genesys;
#[cfg(feature = "redis")]
mod harness;
#[cfg(all(
    feature = "genesys",
    feature = "reqwest",
    feature = "redis",
    feature = "memory"
))]
mod integrations;
#[cfg(all(feature = "redis", feature = "memory"))]
mod near_cache;
#[cfg(all(feature = "redis", feature = "redis-tls", feature = "memory"))]
mod reliability;
#[cfg(feature = "memory")]
mod retry;
#[cfg(all(feature = "redis", feature = "memory"))]
mod sentinel;
#[cfg(all(feature = "redis", feature = "memory"))]
mod shared_cache;
#[cfg(all(
    feature = "redis",
    feature = "redis-tls",
    feature = "memory",
    feature = "genesys",
    feature = "emulator"
))]
mod tls;
