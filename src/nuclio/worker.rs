//! [`NuclioWorker`]: the pool's handle on one running async wrapper.

use std::time::Duration;

use crate::task::AbortOnDropHandle;
use async_trait::async_trait;
use nix::sys::signal::Signal;

use crate::launcher::{Endpoint, WorkerExit, WorkerId, WorkerProcess};
use crate::process::ProcessWorker;

/// A wrapper process started by [`NuclioLauncher`](super::NuclioLauncher): a
/// [`ProcessWorker`] whose terminate signal is `SIGUSR1`, plus the task that
/// reads its control socket.
///
/// Dropping it kills the wrapper's process group, as dropping a
/// [`ProcessWorker`] does.
#[derive(Debug)]
pub struct NuclioWorker {
    process: ProcessWorker,
    _control: AbortOnDropHandle<()>,
}

impl NuclioWorker {
    pub(crate) fn new(process: ProcessWorker, control: AbortOnDropHandle<()>) -> Self {
        Self {
            process,
            _control: control,
        }
    }

    /// Which worker of the pool this wrapper serves.
    pub fn worker_id(&self) -> WorkerId {
        self.process.worker_id()
    }

    /// The last lines (up to 20) the wrapper wrote on stderr, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.process.stderr_tail()
    }

    /// Asks the wrapper to drain (`SIGUSR2`): it runs the handler's drain
    /// callback; events in flight finish.
    ///
    /// # Errors
    ///
    /// If the signal cannot be sent; a wrapper already gone is not an error.
    pub fn drain(&self) -> nix::Result<()> {
        self.process.signal(Signal::SIGUSR2)
    }

    /// Tells a drained wrapper to continue (`SIGCONT`).
    ///
    /// # Errors
    ///
    /// If the signal cannot be sent; a wrapper already gone is not an error.
    pub fn resume(&self) -> nix::Result<()> {
        self.process.signal(Signal::SIGCONT)
    }
}

#[async_trait]
impl WorkerProcess for NuclioWorker {
    fn endpoint(&self) -> Endpoint {
        self.process.endpoint()
    }

    fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// See [`ProcessWorker::wait`](WorkerProcess::wait).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    async fn wait(&mut self) -> WorkerExit {
        self.process.wait().await
    }

    /// Sends `SIGUSR1` (the wrapper's terminate signal), waits up to `grace`,
    /// then kills the wrapper's process group with `SIGKILL`, and reaps it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future part way leaves the process to the handle's `Drop`,
    /// which kills the group at once.
    async fn terminate(&mut self, grace: Duration) -> WorkerExit {
        self.process.terminate(grace).await
    }
}
