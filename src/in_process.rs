//! [`InProcessLauncher`]: workers that live inside the host, with no process to
//! start. For transports whose "worker" is a task or an in-memory service, for
//! tests and for benchmarks of the pool itself.

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::endpoint::Endpoint;
use crate::launcher::LaunchError;
use crate::launcher::{Launcher, WorkerExit, WorkerProcess};
use crate::worker::WorkerId;

/// A [`Launcher`] whose workers are not processes: launching one always succeeds
/// at once, and the "process" only ends when the pool terminates it.
///
/// Its endpoint is [`Endpoint::Named`] `in-process/N`, for a transport that
/// routes by worker id.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcessLauncher;

/// The handle [`InProcessLauncher`] returns: it never exits by itself.
#[derive(Debug)]
pub struct InProcessWorker {
    worker: WorkerId,
    stopped: CancellationToken,
}

#[async_trait]
impl Launcher for InProcessLauncher {
    type Process = InProcessWorker;

    async fn launch(&self, worker: WorkerId) -> Result<InProcessWorker, LaunchError> {
        Ok(InProcessWorker {
            worker,
            stopped: CancellationToken::new(),
        })
    }
}

#[async_trait]
impl WorkerProcess for InProcessWorker {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Named(format!("in-process/{}", self.worker))
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    /// Cancel safe: it only waits on a cancellation token.
    async fn wait(&mut self) -> WorkerExit {
        self.stopped.cancelled().await;
        WorkerExit::code(0)
    }

    /// Stops it at once; there is nothing to drain.
    async fn terminate(&mut self, _grace: Duration) -> WorkerExit {
        self.stopped.cancel();
        WorkerExit::code(0)
    }
}
