//! What the test binaries share, one part per file:
//!
//! - `doubles`, re-exported here: the pool core's test doubles (an in-memory
//!   transport, a scriptable launcher) and the harness over them.
//! - `stats`: waiting for a pool's stats to show something.
//! - `real`: pools of real Python worker processes, and their processes.
//! - `python`: the interpreters of the tests' virtualenvs.
//! - `trace`: what `tracing` saw while a test ran.
//!
//! `alloc_counter.rs` is not a part of it: it installs a global allocator, so a
//! binary opts into it on its own, with
//! `#[path = "support/alloc_counter.rs"] mod alloc_counter;`.

// Each test binary uses a different part.
#![allow(dead_code, unreachable_pub)]

mod doubles;
pub mod python;
#[cfg(feature = "process")]
pub mod real;
pub mod stats;
pub mod trace;

// Used by the core's tests, not by every binary.
#[allow(unused_imports)]
pub use doubles::*;
