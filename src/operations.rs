//! Operations on a running pool: rolling reload, recycling, and resizing the
//! worker set or each worker's number of connections.
//!
//! One task per pool runs them one at a time, so that no two of them change
//! the worker set at once; the pool's methods send it a command and wait for
//! its answer. Dropping that wait does not stop the operation.
//!
//! A worker is replaced new before old: a spare worker is added and waited
//! for until all its slots are connected, then each worker to replace is
//! drained (no new events; those in flight finish within the restart policy's
//! `terminate_grace`), terminated and relaunched as its next generation, and
//! waited for in turn; last, the spare is removed the same draining way. So
//! capacity never drops below `num_workers × max_connections` while the
//! replaced workers come back, and a pool of one worker always has a process
//! that serves.

use std::sync::{Arc, Mutex};

use crate::abort_on_drop::AbortOnDropHandle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::OpsError;
use crate::shared::{NewWorker, Shared};
use crate::transport::Transport;
use crate::worker::WorkerId;

/// Starts the supervisor of a new worker (it owns the launcher).
pub(crate) type Spawn = Box<dyn Fn(NewWorker) -> AbortOnDropHandle<()> + Send + Sync>;

/// The supervisor tasks, by worker index.
pub(crate) type Supervisors = Arc<Mutex<Vec<AbortOnDropHandle<()>>>>;

type Reply = oneshot::Sender<Result<(), OpsError>>;

/// What the pool asks of its operations task.
pub(crate) enum Command {
    Reload(Reply),
    SetNumWorkers(usize, Reply),
    SetMaxConnections(usize, Reply),
}

pub(crate) struct Ops<T: Transport> {
    pub(crate) shared: Arc<Shared<T>>,
    pub(crate) spawn: Spawn,
    pub(crate) supervisors: Supervisors,
    pub(crate) shutdown: CancellationToken,
}

impl<T: Transport> Ops<T> {
    pub(crate) async fn run(
        self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut recycles: mpsc::UnboundedReceiver<(usize, u64)>,
    ) {
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                Some(command) = commands.recv() => {
                    let (result, reply) = match command {
                        Command::Reload(reply) => {
                            let all: Vec<usize> = (0..self.shared.worker_count()).collect();
                            (self.or_closed(self.replace(&all, false)).await, reply)
                        }
                        Command::SetNumWorkers(n, reply) => {
                            (self.or_closed(self.set_num_workers(n)).await, reply)
                        }
                        Command::SetMaxConnections(m, reply) => {
                            (self.or_closed(self.set_max_connections(m)).await, reply)
                        }
                    };
                    // The caller may have stopped waiting; the operation is done either way.
                    let _ = reply.send(result);
                }
                Some(first) = recycles.recv() => {
                    // Workers that came due together are replaced with one spare.
                    let mut due = vec![first];
                    while let Ok(next) = recycles.try_recv() {
                        due.push(next);
                    }
                    let mut workers: Vec<usize> = due
                        .into_iter()
                        .filter(|&(w, generation)| self.shared.runs_generation(w, generation))
                        .map(|(w, _)| w)
                        .collect();
                    workers.sort_unstable();
                    workers.dedup();
                    if !workers.is_empty() {
                        if let Err(error) = self.or_closed(self.replace(&workers, true)).await {
                            tracing::warn!(%error, "recycling workers failed");
                        }
                    }
                }
            }
        }
    }

    /// Runs `operation` unless the pool shuts down first.
    async fn or_closed(
        &self,
        operation: impl Future<Output = Result<(), OpsError>>,
    ) -> Result<(), OpsError> {
        if self.shared.is_closing() {
            return Err(OpsError::Closed);
        }
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(OpsError::Closed),
            result = operation => result,
        }
    }

    /// Adds one worker and starts its supervisor.
    fn add_worker(&self) -> WorkerId {
        let new = self.shared.add_worker();
        let id = new.id;
        let handle = (self.spawn)(new);
        self.lock_supervisors().push(handle);
        id
    }

    /// Removes workers `keep..`: each drains and stops, then leaves the table.
    async fn remove_workers(&self, keep: usize) {
        for w in keep..self.shared.worker_count() {
            self.shared.retire(w);
        }
        self.shared.remove_workers(keep).await;
        // Their supervisors have ended; dropping the handles changes nothing.
        self.lock_supervisors().truncate(keep);
    }

    async fn set_num_workers(&self, n: usize) -> Result<(), OpsError> {
        let current = self.shared.worker_count();
        if n > current {
            for _ in current..n {
                self.add_worker();
            }
        } else if n < current {
            self.remove_workers(n).await;
        }
        Ok(())
    }

    async fn set_max_connections(&self, m: usize) -> Result<(), OpsError> {
        self.shared.resize_segments(m);
        self.shared.segments_resized().await;
        Ok(())
    }

    /// Replaces each of `workers`, new before old (see the module's docs).
    async fn replace(&self, workers: &[usize], recycle: bool) -> Result<(), OpsError> {
        let keep = self.shared.worker_count();
        let spare = self.add_worker();
        tracing::info!(%spare, ?workers, recycle, "replacing workers; spare worker starting");
        if let Err((reason, source)) = self.shared.worker_serving(spare, 0).await {
            self.remove_workers(keep).await;
            return Err(OpsError::WorkerDidNotStart {
                worker: spare,
                reason,
                source,
            });
        }
        let mut outcome = Ok(());
        for &w in workers {
            let worker = WorkerId::new(w as u32);
            // A worker between generations comes back as a new one anyway.
            let Some(generation) = self.shared.request_replace(w, recycle) else {
                continue;
            };
            if let Err((reason, source)) = self.shared.worker_serving(worker, generation).await {
                outcome = Err(OpsError::WorkerDidNotStart {
                    worker,
                    reason,
                    source,
                });
                break;
            }
        }
        self.remove_workers(keep).await;
        outcome
    }

    fn lock_supervisors(&self) -> std::sync::MutexGuard<'_, Vec<AbortOnDropHandle<()>>> {
        self.supervisors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
