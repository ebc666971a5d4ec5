//! [`NuclioWorker`]: the pool's handle on one running async wrapper.

use std::sync::Arc;
use std::time::Duration;

use crate::task::AbortOnDropHandle;
use async_trait::async_trait;
use nix::sys::signal::Signal;
use tokio::time::{Instant, timeout};

use super::endpoint::EndpointState;
use crate::endpoint::Endpoint;
use crate::launcher::{WorkerExit, WorkerProcess};
use crate::process::ProcessWorker;
use crate::worker::{Attachments, WorkerId};

/// A wrapper process started by [`NuclioLauncher`](super::NuclioLauncher): a
/// [`ProcessWorker`] whose terminate signal is `SIGUSR1`, plus the task that
/// reads its control socket.
///
/// # Stopping
///
/// [`terminate`](WorkerProcess::terminate) sends `SIGUSR1`, Nuclio's terminate
/// signal. No wrapper version exits on it by itself: it only marks itself
/// terminating (the newest ignores it altogether). So the wrapper is given
/// until every event in flight on its connections (through any
/// [`NuclioTransport`](super::NuclioTransport)) has been answered or given up,
/// and then [`IDLE_SETTLE`](Self::IDLE_SETTLE) to exit by itself (the
/// early-2025 wrapper exits when its connections close); then it is sent
/// `SIGTERM`, and its group `SIGKILL` if it is still there
/// [`KILL_AFTER`](Self::KILL_AFTER) later. The whole never takes longer than
/// the grace given, plus [`KILL_AFTER`](Self::KILL_AFTER).
///
/// Dropping it kills the wrapper's process group, as dropping a
/// [`ProcessWorker`] does.
#[derive(Debug)]
pub struct NuclioWorker {
    process: ProcessWorker,
    _control: AbortOnDropHandle<()>,
    endpoint: Arc<EndpointState>,
}

/// How often `terminate` looks at the events in flight.
const IDLE_POLL: Duration = Duration::from_millis(20);

impl NuclioWorker {
    /// How long an idle wrapper gets after `SIGUSR1` to exit by itself.
    pub const IDLE_SETTLE: Duration = Duration::from_millis(300);

    /// How long a wrapper gets after `SIGTERM` before its group is killed.
    pub const KILL_AFTER: Duration = Duration::from_millis(500);

    pub(crate) fn new(
        process: ProcessWorker,
        control: AbortOnDropHandle<()>,
        endpoint: Arc<EndpointState>,
    ) -> Self {
        Self {
            process,
            _control: control,
            endpoint,
        }
    }

    /// How many events are in flight on this wrapper's connections.
    pub fn events_in_flight(&self) -> usize {
        self.endpoint.in_flight()
    }

    /// Waits up to `grace` until the process exits (`Some`) or no event has
    /// been in flight for `IDLE_SETTLE` (`None`).
    async fn exit_or_idle(&mut self, grace: Duration) -> Option<WorkerExit> {
        let deadline = Instant::now() + grace;
        let mut idle_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            if self.endpoint.in_flight() == 0 {
                let since = *idle_since.get_or_insert(now);
                if now.duration_since(since) >= Self::IDLE_SETTLE {
                    return None;
                }
            } else {
                idle_since = None;
            }
            let nap = IDLE_POLL.min(deadline - now);
            if let Ok(exit) = timeout(nap, self.process.wait()).await {
                return Some(exit);
            }
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

    /// The wrapper's endpoint state, which the transport's connections share.
    fn attachments(&self) -> Attachments {
        self.process.attachments().with(self.endpoint.clone())
    }

    /// See [`ProcessWorker::wait`](WorkerProcess::wait).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    async fn wait(&mut self) -> WorkerExit {
        self.process.wait().await
    }

    /// Sends `SIGUSR1` (the wrapper's terminate signal), waits up to `grace`
    /// for the events in flight, then stops the wrapper; see
    /// [Stopping](NuclioWorker#stopping). Reaps it and kills its group.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future part way leaves the process to the handle's `Drop`,
    /// which kills the group at once.
    async fn terminate(&mut self, grace: Duration) -> WorkerExit {
        if let Err(error) = self.process.signal(Signal::SIGUSR1) {
            tracing::warn!(worker = %self.worker_id(), %error, "cannot send SIGUSR1 to the Nuclio wrapper");
        }
        if self.exit_or_idle(grace).await.is_some() {
            // Reaped already: this only sweeps the group and returns the exit.
            return self.process.terminate(Duration::ZERO).await;
        }
        self.process.set_stop_signal(Signal::SIGTERM);
        self.process.terminate(Self::KILL_AFTER).await
    }
}
