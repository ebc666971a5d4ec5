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
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::OpsError;
use crate::shared::{DueRecycle, NewWorker, Replacement, Shared};
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
        mut recycles: mpsc::UnboundedReceiver<DueRecycle>,
    ) {
        // Recycles that came due before `min_worker_uptime`, each waiting
        // out the rest of it.
        let mut deferred: JoinSet<DueRecycle> = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                Some(command) = commands.recv() => {
                    let (result, reply) = match command {
                        Command::Reload(reply) => {
                            let all: Vec<usize> = (0..self.shared.worker_count()).collect();
                            (self.or_closed(self.replace(&all, Replacement::Reload)).await, reply)
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
                    self.recycle(due, &mut deferred).await;
                }
                Some(Ok(later)) = deferred.join_next() => {
                    self.recycle(vec![later], &mut deferred).await;
                }
            }
        }
    }

    /// Replaces the workers in `due` that still run the generation that came
    /// due, new before old; one that has not served `min_worker_uptime` yet
    /// is put off until it has, so that a worker past its bounds from the
    /// start is not replaced over and over.
    async fn recycle(&self, due: Vec<DueRecycle>, deferred: &mut JoinSet<DueRecycle>) {
        let min_uptime = self.shared.config.min_worker_uptime;
        let mut now: Vec<(usize, Replacement)> = Vec::with_capacity(due.len());
        for (w, generation, why) in due {
            let Some(uptime) = self.shared.uptime(w, generation) else {
                continue;
            };
            // An event that timed out may still hold a thread that only the
            // end of its process gives back: that does not wait.
            let wait = match why {
                Replacement::EventTimeout => None,
                _ => min_uptime.checked_sub(uptime).filter(|w| !w.is_zero()),
            };
            if let Some(wait) = wait {
                tracing::info!(
                    worker = w,
                    generation,
                    ?why,
                    ?uptime,
                    ?wait,
                    "worker due for recycling before min_worker_uptime; recycling it later"
                );
                deferred.spawn(async move {
                    tokio::time::sleep(wait).await;
                    (w, generation, why)
                });
                continue;
            }
            if !now.iter().any(|&(other, _)| other == w) {
                now.push((w, why));
            }
        }
        for why in [
            Replacement::EventTimeout,
            Replacement::Events,
            Replacement::Rss,
        ] {
            let mut workers: Vec<usize> = now
                .iter()
                .filter(|&&(_, cause)| cause == why)
                .map(|&(w, _)| w)
                .collect();
            workers.sort_unstable();
            if workers.is_empty() {
                continue;
            }
            if let Err(error) = self.or_closed(self.replace(&workers, why)).await {
                tracing::warn!(%error, "recycling workers failed");
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
    async fn replace(&self, workers: &[usize], why: Replacement) -> Result<(), OpsError> {
        let keep = self.shared.worker_count();
        let spare = self.add_worker();
        tracing::info!(%spare, ?workers, ?why, "replacing workers; spare worker starting");
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
            let Some(generation) = self.shared.request_replace(w, why) else {
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
