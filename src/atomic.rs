//! 64-bit atomics: the standard library's where the target has them, portable-atomic's elsewhere (32-bit PowerPC
//! and MIPS, ARMv5 and older ARM), whose fallback takes a lock per operation there. moka (both stores' caches)
//! builds portable-atomic already, so with either store it adds nothing to a build.

#[cfg(not(target_has_atomic = "64"))]
pub(crate) use portable_atomic::{AtomicI64, AtomicU64};
#[cfg(target_has_atomic = "64")]
pub(crate) use std::sync::atomic::{AtomicI64, AtomicU64};
