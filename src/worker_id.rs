//! [`WorkerId`]: which worker of a pool, the name every other part uses.

use std::fmt;

/// The index of a worker in its pool, from 0 to `num_workers - 1`.
///
/// It stays the same across restarts; [`WorkerInfo::generation`](crate::WorkerInfo::generation) tells the
/// processes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(u32);

impl WorkerId {
    /// The worker with index `index`.
    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    /// Its index in the pool.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
