//! Operations on the worker set: adding and retiring workers, draining one,
//! and resizing every worker's segment of the slot table. None of this is on
//! the hot path; the pool's operations task calls it one operation at a time.

// The pool's shared state is one type; its parts are split by concern.
#[allow(clippy::wildcard_imports)]
use super::*;

/// Operations: the worker set and each worker's segment change at run time.
/// None of this is on the hot path; the operations task calls it one
/// operation at a time.
impl<T: Transport> Shared<T> {
    /// Workers in the table, draining and retiring ones included.
    pub(crate) fn worker_count(&self) -> usize {
        self.lock().workers.len()
    }

    /// The `max_connections` the pool runs with now.
    pub(crate) fn max_connections(&self) -> usize {
        self.lock().max_connections
    }

    /// Appends a worker entry with `max_connections` down slots, for a new
    /// supervisor to launch.
    pub(crate) fn add_worker(&self) -> NewWorker {
        let (link, requests) = WorkerLink::new();
        let retire = link.retire.clone();
        // The link goes first, so that whoever finds the entry finds its link.
        let mut links = self.links.write();
        links.push(link);
        let mut core = self.lock();
        let core_ref = &mut *core;
        let conns = core_ref.max_connections;
        core_ref.workers.push(WorkerEntry::new(conns));
        core_ref.counts.add(SlotState::Down, conns);
        core_ref.capacity += conns;
        let workers = core_ref.workers.len();
        core_ref.idle_index.resize(workers, conns);
        drop(core);
        drop(links);
        NewWorker {
            id: WorkerId::new((workers - 1) as u32),
            requests,
            retire,
        }
    }

    /// Tells `worker`'s supervisor to drain it, stop its process and end.
    pub(crate) fn retire(&self, worker: usize) {
        if let Some(link) = self.links.read().get(worker) {
            link.retire.cancel();
        }
    }

    /// Asks `worker`'s supervisor to replace its current generation, if that
    /// generation is running; returns the generation asked about.
    pub(crate) fn request_replace(&self, worker: usize, why: Replacement) -> Option<u64> {
        let generation = {
            let core = self.lock();
            let entry = core.workers.get(worker)?;
            if !entry.serving || entry.draining {
                return None;
            }
            entry.generation
        };
        let request = Request::Replace { generation, why };
        let link = self.links.read();
        link.get(worker)?.requests.send(request).ok()?;
        Some(generation)
    }

    /// A supervisor was told to drain `worker`'s `generation`: its idle
    /// connections close now, busy ones as they are freed, and it gets no new
    /// events.
    pub(crate) fn begin_drain(&self, worker: WorkerId, generation: u64) {
        let mut core = self.lock();
        let w = worker.index();
        let Some(entry) = core.workers.get_mut(w) else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        entry.draining = true;
        entry.shedding = true;
        entry.suspect = false;
        entry.state = WorkerState::Draining;
        let idle: Vec<(u32, T::Conn)> = entry.idle.drain(..).collect();
        core.idle_index.clear(w);
        for &(local, _) in &idle {
            core.shed_state(SlotId::new(w as u32, local));
        }
        core.trim(w);
        drop(core);
        drop(idle);
        self.announce_drain(worker, generation);
        self.progress.notify_waiters();
    }

    /// Resolves once no slot of `worker` is busy. Cancel safe.
    pub(crate) async fn worker_idle(&self, worker: WorkerId) {
        self.until(|core| {
            core.workers
                .get(worker.index())
                .is_none_or(|entry| entry.busy() == 0)
        })
        .await;
    }

    /// Resolves once `worker` serves a generation after `after` with every
    /// slot connected; or with the reason it will not: its first launch
    /// failed, or it restarted too often. Cancel safe.
    pub(crate) async fn worker_serving(
        &self,
        worker: WorkerId,
        after: u64,
    ) -> Result<(), (String, Option<Cause>)> {
        let mut outcome = Ok(());
        self.until(|core| {
            let Some(entry) = core.workers.get(worker.index()) else {
                outcome = Err(("the worker was removed".into(), None));
                return true;
            };
            if entry.state == WorkerState::Failed || entry.never_launched {
                outcome = Err((
                    entry.last_error.clone().unwrap_or_default(),
                    entry.last_cause.clone(),
                ));
                return true;
            }
            entry.generation > after && entry.state == WorkerState::Running && entry.connected()
        })
        .await;
        outcome
    }

    /// Resolves once workers `from..` have stopped and none of their slots is
    /// busy, then removes them from the table. Cancel safe: it removes them
    /// in the same lock section that finds them done.
    pub(crate) async fn remove_workers(&self, from: usize) {
        let mut removed = Vec::new();
        let mut wakers = Vec::new();
        self.until(|core| {
            let done = core.workers.iter().skip(from).all(|entry| {
                matches!(entry.state, WorkerState::Stopped | WorkerState::Failed)
                    && entry.busy() == 0
            });
            if !done {
                return false;
            }
            while core.workers.len() > from {
                let Some(mut entry) = core.workers.pop() else {
                    break;
                };
                for &state in &entry.slots {
                    core.counts.remove(state);
                }
                core.capacity -= entry.slots.len();
                if entry.state == WorkerState::Failed {
                    core.failed_workers -= 1;
                }
                removed.append(&mut entry.idle);
            }
            let (workers, conns) = (core.workers.len(), core.max_connections);
            core.idle_index.resize(workers, conns);
            if core.failed_workers == core.workers.len() {
                wakers = core.waiters.drain(|| Outcome::NoWorker);
            }
            true
        })
        .await;
        drop(removed);
        wakers.into_iter().for_each(Waker::wake);
        self.links.write().truncate(from);
    }

    /// Sets every worker's number of slots to `max_connections`: new slots
    /// are connected at once by a running worker, slots beyond it close when
    /// free (see `segments_resized`).
    pub(crate) fn resize_segments(&self, max_connections: usize) {
        let mut requests = Vec::new();
        let mut closed = Vec::new();
        let mut core = self.lock();
        let core_ref = &mut *core;
        core_ref.max_connections = max_connections;
        for w in 0..core_ref.workers.len() {
            let entry = &mut core_ref.workers[w];
            let old_len = entry.slots.len();
            entry.target = max_connections;
            if old_len < max_connections {
                entry.slots.resize(max_connections, SlotState::Down);
                core_ref
                    .counts
                    .add(SlotState::Down, max_connections - old_len);
                core_ref.capacity += max_connections - old_len;
            }
            let entry = &mut core_ref.workers[w];
            let (serving, generation) = (entry.serving && !entry.draining, entry.generation);
            // Idle connections beyond the new size close now.
            let mut kept = Vec::with_capacity(entry.idle.len());
            for (local, conn) in entry.idle.drain(..) {
                if (local as usize) < max_connections {
                    kept.push((local, conn));
                } else {
                    closed.push(conn);
                }
            }
            entry.idle = kept;
            let in_index = !entry.suspect && !entry.draining;
            let idle = entry.idle.len() as u32;
            for local in 0..entry.slots.len() as u32 {
                let slot = SlotId::new(w as u32, local);
                let state = core_ref.state(slot);
                if (local as usize) < max_connections {
                    // A slot closed by an earlier shrink comes back.
                    let state = if state == SlotState::Closed {
                        core_ref.set_state(slot, SlotState::Down);
                        SlotState::Down
                    } else {
                        state
                    };
                    if serving && state == SlotState::Down {
                        core_ref.set_state(slot, SlotState::Reconnecting);
                        requests.push((
                            w,
                            Request::Connect {
                                slot: local,
                                generation,
                            },
                        ));
                    }
                } else if state != SlotState::Busy {
                    core_ref.set_state(slot, SlotState::Closed);
                }
            }
            if in_index {
                core_ref.idle_index.set(w, idle);
            }
            core_ref.trim(w);
        }
        let (workers, conns) = (core_ref.workers.len(), max_connections);
        core_ref.idle_index.resize(workers, conns);
        drop(core);
        drop(closed);
        let links = self.links.read();
        for (w, request) in requests {
            if let Some(link) = links.get(w) {
                let _ = link.requests.send(request);
            }
        }
        drop(links);
        self.progress.notify_waiters();
    }

    /// Resolves once every worker's segment is `max_connections` long (the
    /// slots beyond it were freed and removed). Cancel safe.
    pub(crate) async fn segments_resized(&self) {
        self.until(|core| {
            core.workers
                .iter()
                .all(|entry| entry.slots.len() == core.max_connections)
        })
        .await;
    }

    /// How long `worker` has served `generation`, if it still does: `None`
    /// for a recycle request overtaken by a restart or a reload.
    pub(crate) fn uptime(&self, worker: usize, generation: u64) -> Option<Duration> {
        self.lock()
            .workers
            .get(worker)
            .filter(|entry| entry.serving && !entry.draining && entry.generation == generation)
            .map(|entry| entry.started.elapsed())
    }

    /// A supervisor found its worker's memory past `max_worker_rss`.
    pub(crate) fn request_recycle(&self, worker: WorkerId, generation: u64) {
        let _ = self
            .recycle
            .send((worker.index(), generation, Replacement::Rss));
    }

    /// An event of `worker`'s `generation` ran past its timeout, and the pool
    /// replaces such workers.
    pub(crate) fn recycle_after_timeout(&self, worker: WorkerId, generation: u64) {
        let _ = self
            .recycle
            .send((worker.index(), generation, Replacement::EventTimeout));
    }

    /// Resolves once `condition` holds, checked under the lock each time the
    /// pool makes progress. Cancel safe.
    async fn until(&self, mut condition: impl FnMut(&mut Core<T::Conn>) -> bool) {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(&mut *self.lock()) {
                return;
            }
            notified.await;
        }
    }
}
