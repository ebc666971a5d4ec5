//! The [`Launcher`] and [`WorkerProcess`] traits: how the pool starts, watches and
//! stops worker processes, and the names it gives them.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::LaunchError;

/// The index of a worker in its pool, from 0 to `num_workers - 1`.
///
/// It stays the same across restarts; [`WorkerInfo::generation`] tells the
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

/// Where a worker process accepts connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
    /// Any other address a host's own transport understands.
    Named(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp:{addr}"),
            Self::Named(name) => f.write_str(name),
        }
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

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerExit {
    code: Option<i32>,
    signal: Option<i32>,
}

impl WorkerExit {
    /// It exited with status `code`.
    pub const fn code(code: i32) -> Self {
        Self {
            code: Some(code),
            signal: None,
        }
    }

    /// It was killed by signal `signal`.
    pub const fn signal(signal: i32) -> Self {
        Self {
            code: None,
            signal: Some(signal),
        }
    }

    /// It is gone, for a reason the launcher cannot tell.
    pub const fn unknown() -> Self {
        Self {
            code: None,
            signal: None,
        }
    }

    /// The exit status, if it exited by itself.
    pub const fn exit_code(&self) -> Option<i32> {
        self.code
    }

    /// The signal that ended it, if one did.
    pub const fn exit_signal(&self) -> Option<i32> {
        self.signal
    }
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit status {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => f.write_str("unknown exit"),
        }
    }
}

/// A running worker process, owned by the pool's supervisor for that worker.
///
/// Dropping it must stop the process (kill it and reap it, or arrange for that):
/// the pool drops processes when it is dropped without a shutdown, and relies on
/// that so that nothing outlives it.
#[async_trait]
pub trait WorkerProcess: Send + 'static {
    /// Where it accepts connections.
    fn endpoint(&self) -> Endpoint;

    /// Its operating-system process id, where it has one.
    fn pid(&self) -> Option<u32>;

    /// Resolves when the process has exited.
    ///
    /// # Cancel safety
    ///
    /// Must be cancel safe: the supervisor polls it in a `select!` loop and drops
    /// the future whenever another branch wins.
    async fn wait(&mut self) -> WorkerExit;

    /// Asks the process to stop, waits up to `grace` for it to exit, then kills it,
    /// and reaps it either way.
    async fn terminate(&mut self, grace: Duration) -> WorkerExit;
}

/// Starts worker processes.
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// The process handle it returns.
    type Process: WorkerProcess;

    /// Starts a process for `worker` and resolves once it accepts connections.
    ///
    /// The pool bounds it with `establish_connection_timeout` and runs it in a task
    /// of its own; a launch that fails, hangs or panics counts as a failed restart.
    async fn launch(&self, worker: WorkerId) -> Result<Self::Process, LaunchError>;
}
