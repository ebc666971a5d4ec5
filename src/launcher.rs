//! The [`Launcher`] and [`WorkerProcess`] traits: how the pool starts, watches and
//! stops worker processes; how one ended ([`WorkerExit`]) or failed to start
//! ([`LaunchError`]).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::endpoint::Endpoint;
use crate::error::BoxError;
use crate::worker::{Attachments, WorkerId};

/// A [`Launcher`] could not start a worker process.
///
/// Its message says what went wrong and what to fix; a cause it wraps (an I/O
/// error, say) is its [`source`](std::error::Error::source), not repeated in
/// the message. [`LaunchError::chain`] writes both.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LaunchError {
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl LaunchError {
    /// A launch error that says what went wrong.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A launch error caused by `source`; `message` says what was being done,
    /// without repeating `source`.
    pub fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The message and every cause after it, joined by `: `, as a log line or
    /// `Stats::last_error` shows them.
    pub fn chain(&self) -> String {
        let mut text = self.message.clone();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            text.push_str(": ");
            text.push_str(&error.to_string());
            cause = error.source();
        }
        text
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

    /// The process's resident memory in bytes, if the launcher can tell:
    /// what `max_worker_rss` is checked against, about once a second.
    /// `None` (the default) turns that check off for this process.
    fn resident_bytes(&self) -> Option<u64> {
        None
    }

    /// What the transport needs to know about this process beyond its
    /// endpoint (a handshake secret, say); the pool copies it into the
    /// [`WorkerInfo`](crate::WorkerInfo) each connect gets. None by default.
    fn attachments(&self) -> Attachments {
        Attachments::new()
    }

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
///
/// # Examples
///
/// A launcher of the host's own, here one that starts its workers inside the
/// host (as [`InProcessLauncher`](crate::InProcessLauncher) does) and serves
/// at most two of them, which it says in
/// [`check_pool_size`](Self::check_pool_size), so that a bigger pool is
/// refused at build time:
///
/// ```
/// use async_worker_pool::{
///     async_trait, BuildError, InProcessLauncher, InProcessTransport, InProcessWorker,
///     LaunchError, Launcher, Pool, WorkerId,
/// };
///
/// struct TwoAtMost;
///
/// #[async_trait]
/// impl Launcher for TwoAtMost {
///     type Process = InProcessWorker;
///
///     async fn launch(&self, worker: WorkerId) -> Result<InProcessWorker, LaunchError> {
///         if worker.index() >= 2 {
///             return Err(LaunchError::new(format!("no room for worker {worker}")));
///         }
///         InProcessLauncher.launch(worker).await
///     }
///
///     fn check_pool_size(&self, workers: usize, _connections: usize) -> Result<(), String> {
///         if workers > 2 {
///             return Err(format!("asks for {workers} workers; this launcher has room for 2"));
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let echo = InProcessTransport::new(|worker, event: String| async move {
///     Ok::<_, std::io::Error>(format!("{worker}:{event}"))
/// });
/// let refused = Pool::builder(echo.clone(), TwoAtMost).num_workers(3).build();
/// assert!(matches!(refused, Err(BuildError::Config(_))));
/// let pool = Pool::builder(echo, TwoAtMost).num_workers(2).max_connections(4).build().unwrap();
/// pool.ready(std::time::Duration::from_secs(5)).await.unwrap();
/// # }
/// ```
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// The process handle it returns.
    type Process: WorkerProcess;

    /// Starts a process for `worker` and resolves once it accepts connections.
    ///
    /// The pool bounds it with `establish_connection_timeout` and runs it in a task
    /// of its own; a launch that fails, hangs or panics counts as a failed restart.
    async fn launch(&self, worker: WorkerId) -> Result<Self::Process, LaunchError>;

    /// Whether this launcher's workers, and the host, can serve a pool of
    /// `num_workers` workers with `max_connections` connections each; `Err`
    /// says why not, naming the values at odds.
    ///
    /// The pool asks at build time and before each resize and refuses what
    /// this refuses ([`ConfigError`](crate::ConfigError) on `max_connections`),
    /// so that a limit the launcher knows of (how many connections it tells
    /// each worker to serve, the host's open-file limit) fails at once and
    /// plainly instead of as connects that fail and workers that restart in a
    /// loop. The default accepts every size.
    fn check_pool_size(&self, num_workers: usize, max_connections: usize) -> Result<(), String> {
        let _ = (num_workers, max_connections);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_error_says_its_cause_once() {
        let cause = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let error = LaunchError::with_source("cannot write the script", cause);
        assert_eq!(error.to_string(), "cannot write the script");
        assert_eq!(
            std::error::Error::source(&error).map(ToString::to_string),
            Some("permission denied".to_owned())
        );
        assert_eq!(error.chain(), "cannot write the script: permission denied");
        assert_eq!(LaunchError::new("plain").chain(), "plain");
    }
}
