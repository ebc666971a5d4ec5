//! [`ProcessWorker`]: the pool's handle on one running worker process, which
//! watches it, stops it and makes sure nothing of it outlives the handle.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStdin};

use super::output::StderrTail;
use crate::endpoint::Endpoint;
use crate::launcher::{WorkerExit, WorkerProcess};
use crate::net::WorkerSecret;
use crate::worker::{Attachments, WorkerId};

/// A worker process started by [`ProcessLauncher`](super::ProcessLauncher), the
/// leader of a process group of its own.
///
/// Dropping it before the process was reaped kills the whole group with `SIGKILL`
/// and leaves the reaping to tokio, so nothing the worker started outlives it.
#[derive(Debug)]
pub struct ProcessWorker {
    worker: WorkerId,
    endpoint: Endpoint,
    pid: u32,
    child: Child,
    /// Set once the process is reaped; `wait` and `terminate` return it from then on.
    exit: Option<WorkerExit>,
    stderr_tail: StderrTail,
    /// What `terminate` sends first: `SIGTERM` unless a launcher says otherwise.
    stop_signal: Signal,
    /// The write end of the worker's stdin, never written: the worker sees end
    /// of file once it is closed, which happens when the host process dies.
    _lifeline: Option<ChildStdin>,
    /// The secret the process was given, which the transport finds among its
    /// attachments.
    secret: Option<WorkerSecret>,
}

impl ProcessWorker {
    pub(crate) fn new(
        worker: WorkerId,
        endpoint: Endpoint,
        pid: u32,
        child: Child,
        stderr_tail: StderrTail,
        lifeline: Option<ChildStdin>,
    ) -> Self {
        Self {
            worker,
            endpoint,
            pid,
            child,
            exit: None,
            stderr_tail,
            stop_signal: Signal::SIGTERM,
            _lifeline: lifeline,
            secret: None,
        }
    }

    /// Keeps the process's secret, for the transport to answer its handshake with.
    pub(crate) fn hold_secret(&mut self, secret: WorkerSecret) {
        self.secret = Some(secret);
    }

    /// The secret the process was given in
    /// [`SECRET_ENV`](super::SECRET_ENV), for
    /// [`SocketTransport::connect_authenticated`](crate::net::SocketTransport::connect_authenticated);
    /// `None` for a process started without one (a Nuclio wrapper).
    pub fn secret(&self) -> Option<&WorkerSecret> {
        self.secret.as_ref()
    }

    /// Makes [`terminate`](WorkerProcess::terminate) ask the process to stop with
    /// `signal` instead of `SIGTERM`, for programs that drain on another signal.
    #[cfg(feature = "nuclio")]
    pub(crate) fn set_stop_signal(&mut self, signal: Signal) {
        self.stop_signal = signal;
    }

    /// Sends `signal` to the worker process itself (not its group), unless it has
    /// been reaped already; `ESRCH` (it is exiting) is not an error.
    pub(crate) fn signal(&self, signal: Signal) -> nix::Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        // The child is not reaped yet, so its pid still names it (a zombie at worst).
        match kill(self.nix_pid(), signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Which worker of the pool this process serves.
    pub fn worker_id(&self) -> WorkerId {
        self.worker
    }

    /// The last lines (up to 20) the process wrote on stderr, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr_tail.lines()
    }

    /// How it exited, once [`wait`](WorkerProcess::wait) or
    /// [`terminate`](WorkerProcess::terminate) has seen it exit.
    pub fn exit(&self) -> Option<WorkerExit> {
        self.exit
    }

    /// The worker's pid, which is also its process group's id (it was started
    /// with `process_group(0)`).
    fn nix_pid(&self) -> Pid {
        Pid::from_raw(self.pid as i32)
    }

    /// `SIGKILL` to every process of the group. ESRCH means the group is already
    /// empty, which is what we want.
    fn kill_group(&self) {
        match killpg(self.nix_pid(), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => {
                tracing::warn!(worker = %self.worker, pid = self.pid, %error, "cannot kill the worker's process group");
            }
        }
    }

    /// Records the outcome of waiting for the process.
    ///
    /// Once the worker is reaped its group is swept as well: children it left
    /// behind (a handler's subprocesses, say) must not outlive it. The group id
    /// cannot be reused for a new process while any of them is still in it.
    fn record(&mut self, status: io::Result<ExitStatus>) -> WorkerExit {
        match status {
            Ok(status) => {
                let exit = match (status.code(), status.signal()) {
                    (Some(code), _) => WorkerExit::code(code),
                    (None, Some(signal)) => WorkerExit::signal(signal),
                    (None, None) => WorkerExit::unknown(),
                };
                self.exit = Some(exit);
                self.kill_group();
                exit
            }
            Err(error) => {
                // Not cached: the process may still be there, and Drop must kill it.
                tracing::warn!(worker = %self.worker, pid = self.pid, %error, "cannot wait for the worker process");
                WorkerExit::unknown()
            }
        }
    }
}

#[async_trait]
impl WorkerProcess for ProcessWorker {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    /// The process's [`WorkerSecret`], which the socket transport answers its
    /// handshake with; none for a process started without one.
    fn attachments(&self) -> Attachments {
        match &self.secret {
            Some(secret) => Attachments::new().with(secret.clone()),
            None => Attachments::new(),
        }
    }

    /// Resolves when the process has exited, and reaps it and kills whatever is
    /// left of its process group. Once it has resolved, it returns the same exit
    /// at once on every later call.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only polls tokio's `Child::wait`, which is, and records the
    /// exit after that has completed.
    async fn wait(&mut self) -> WorkerExit {
        if let Some(exit) = self.exit {
            return exit;
        }
        let status = self.child.wait().await;
        self.record(status)
    }

    /// Sends `SIGTERM` to the worker process (not its group: the reference
    /// Python worker drains on it and its children are its own business until
    /// then; a launcher for another program may choose another signal), waits up
    /// to `grace`, then sends `SIGKILL` to the whole group and
    /// reaps the worker. Any process left in the group is killed in either case.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future part way leaves the process to the handle's `Drop`,
    /// which kills the group at once.
    async fn terminate(&mut self, grace: Duration) -> WorkerExit {
        if let Some(exit) = self.exit {
            self.kill_group();
            return exit;
        }
        if let Err(error) = self.signal(self.stop_signal) {
            tracing::warn!(worker = %self.worker, pid = self.pid, %error, signal = %self.stop_signal, "cannot ask the worker to stop");
        }
        if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
            return self.record(status);
        }
        tracing::warn!(worker = %self.worker, pid = self.pid, ?grace, "worker did not exit within its grace period; killing its process group");
        self.kill_group();
        // The worker could have left its group (setsid); kill it by pid as well.
        let _ = self.child.start_kill();
        let status = self.child.wait().await;
        self.record(status)
    }
}

impl Drop for ProcessWorker {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // kill_on_drop then kills the leader by pid (should it have left the
            // group) and tokio reaps it in the background.
            self.kill_group();
        }
    }
}
