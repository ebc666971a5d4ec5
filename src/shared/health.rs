//! Worker health: a worker suspected after an event timeout or an overdue
//! probe, cleared when its probe answers; launches that failed; and `ready`,
//! which waits for full capacity or reports why it will not come.

// The pool's shared state is one type; its parts are split by concern.
#[allow(clippy::wildcard_imports)]
use super::*;

impl<T: Transport> Shared<T> {
    /// An event of `worker`'s `generation` ran past its timeout: unless probes
    /// are off, the worker gets no new events until its supervisor has probed it.
    pub(crate) fn suspect_after_timeout(&self, worker: WorkerId, generation: u64) {
        if self.config.probe_timeout.is_none() {
            return;
        }
        if self.mark_suspect(worker, generation) {
            let request = Request::Probe { generation };
            // Only a pool being dropped has no supervisor to ask.
            if let Some(link) = self.links.read().get(worker.index()) {
                let _ = link.requests.send(request);
            }
        }
    }

    /// Takes `worker` out of service while its probe is outstanding; true if
    /// it was not suspect already.
    pub(crate) fn mark_suspect(&self, worker: WorkerId, generation: u64) -> bool {
        let mut core = self.lock();
        let w = worker.index();
        let Some(entry) = core.workers.get_mut(w) else {
            return false;
        };
        if !entry.serving || entry.generation != generation || entry.suspect || entry.draining {
            return false;
        }
        entry.suspect = true;
        entry.state = WorkerState::Suspect;
        core.idle_index.clear(w);
        true
    }

    /// `worker`'s probe answered: it is back in service, and its idle
    /// connections go to the events that waited meanwhile.
    pub(crate) fn clear_suspect(&self, worker: WorkerId, generation: u64) {
        let mut guard = self.lock();
        let core = &mut *guard;
        let w = worker.index();
        let Some(entry) = core.workers.get_mut(w) else {
            return;
        };
        if !entry.serving || entry.generation != generation || !entry.suspect || entry.draining {
            return;
        }
        entry.suspect = false;
        entry.state = WorkerState::Running;
        let mut wake = Vec::new();
        while !core.waiters.is_empty() {
            let Some((local, conn)) = core.workers[w].idle.pop() else {
                break;
            };
            let slot = SlotId::new(w as u32, local);
            match core.waiters.pop_front(Outcome::Granted {
                slot,
                generation,
                conn,
            }) {
                Ok(waker) => {
                    core.set_busy(slot, None);
                    wake.extend(waker);
                }
                Err(Outcome::Granted { conn, .. }) => {
                    core.workers[w].idle.push((local, conn));
                    break;
                }
                // pop_front hands back the outcome it was given.
                Err(_) => break,
            }
        }
        let idle = core.workers[w].idle.len() as u32;
        core.idle_index.set(w, idle);
        drop(guard);
        wake.into_iter().for_each(Waker::wake);
    }

    /// A launch of `worker` failed, for the restart reasons in Stats and for
    /// `ready`, which reports a worker that never came up at all.
    pub(crate) fn count_launch_failed(&self, worker: WorkerId) {
        let mut core = self.lock();
        core.restart_reasons.launch_failed += 1;
        if let Some(entry) = core.workers.get_mut(worker.index()) {
            if entry.generation == 0 {
                entry.never_launched = true;
            }
        }
        drop(core);
        self.progress.notify_waiters();
    }

    /// Resolves once every slot is connected, or with the first reason it
    /// will not be: a worker whose first launch failed, a failed worker, a
    /// closed pool. Cancel safe.
    pub(crate) async fn ready(&self, timeout: Duration) -> Result<(), ReadyError> {
        let started = Instant::now();
        let deadline = started.checked_add(timeout);
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (connected, capacity) = {
                let core = self.lock();
                if core.closing {
                    return Err(ReadyError::Closed);
                }
                for (w, entry) in core.workers.iter().enumerate() {
                    let worker = WorkerId::new(w as u32);
                    let reason = || entry.last_error.clone().unwrap_or_default();
                    if entry.state == WorkerState::Failed {
                        return Err(ReadyError::WorkerFailed {
                            worker,
                            reason: reason(),
                            source: entry.last_cause.clone(),
                        });
                    }
                    if entry.never_launched {
                        return Err(ReadyError::LaunchFailed {
                            worker,
                            reason: reason(),
                            source: entry.last_cause.clone(),
                        });
                    }
                }
                let connected = core.counts.get(SlotState::Idle) + core.counts.get(SlotState::Busy);
                if connected == core.capacity {
                    return Ok(());
                }
                (connected, core.capacity)
            };
            let timed_out = match deadline {
                Some(deadline) => tokio::select! {
                    () = notified => false,
                    () = tokio::time::sleep_until(deadline) => true,
                },
                None => {
                    notified.await;
                    false
                }
            };
            if timed_out {
                return Err(ReadyError::Timeout {
                    connected,
                    capacity,
                    waited: started.elapsed(),
                });
            }
        }
    }
}
