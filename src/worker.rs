//! [`WorkerId`]: which worker of a pool, the name every other part uses, and
//! [`WorkerInfo`]: one running generation of it, as a transport needs it.

use std::fmt;

use crate::endpoint::Endpoint;

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

/// One running generation of a worker, as the transport needs it to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Which worker.
    pub id: WorkerId,
    /// Which process of that worker: 1 for the first launch, one more per restart.
    pub generation: u64,
    /// Where it accepts connections.
    pub endpoint: Endpoint,
    /// Its operating-system process id, where it has one.
    pub pid: Option<u32>,
}

impl WorkerInfo {
    /// Generation `generation` of worker `id`, listening on `endpoint`, with
    /// process id `pid` where it has one. The pool builds these itself; this is
    /// for tests of a [`Transport`](crate::Transport) and for custom pools.
    pub fn new(id: WorkerId, generation: u64, endpoint: Endpoint, pid: Option<u32>) -> Self {
        Self {
            id,
            generation,
            endpoint,
            pid,
        }
    }
}
