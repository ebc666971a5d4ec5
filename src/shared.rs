//! The state every task of one pool shares: the slot table, the idle connections,
//! the wait queue and the counters, under one short lock.
//!
//! Every slot transition happens here, so the invariants are kept in one place:
//! each slot is in exactly one [`SlotState`]; a slot freed while someone waits goes
//! to the oldest waiter, never to the idle stack; an idle connection always belongs
//! to its worker's current generation. Wakers are woken, connections dropped and
//! reconnects requested only after the lock is released.

use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::PoolConfig;
use crate::error::{PoolError, ReadyError};
use crate::idle_index::IdleIndex;
use crate::launcher::WorkerId;
use crate::stats::{
    AllocationStats, ConnectionRestartStats, EventCounters, RestartReasons, SlotCounts, SlotState,
    Stats, WorkerState, WorkerStats,
};
use crate::transport::Transport;
use crate::wait_queue::{Outcome, WaitQueue};

/// A slot: its worker, and its place in that worker's segment of the table.
/// Each worker has a segment of its own so that workers and their connections
/// can be added and removed while the pool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotId {
    pub(crate) worker: u32,
    pub(crate) local: u32,
}

impl SlotId {
    pub(crate) const fn new(worker: u32, local: u32) -> Self {
        Self { worker, local }
    }
}

/// A slot taken for one event, with its connection.
pub(crate) struct Taken<C> {
    pub(crate) slot: SlotId,
    pub(crate) generation: u64,
    pub(crate) conn: C,
    /// How long the acquire waited for it, if it waited.
    pub(crate) waited: Option<Duration>,
}

/// How an acquire begins.
pub(crate) enum Begin<C> {
    Taken(Taken<C>),
    /// Queued under this key since this instant.
    Wait(u32, Instant),
    Refused(PoolError),
}

/// What a worker's supervisor is asked to do.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Request {
    /// Re-establish this slot's connection.
    Reconnect { slot: u32, generation: u64 },
    /// Connect this new slot (`max_connections` grew).
    Connect { slot: u32, generation: u64 },
    /// Probe the worker: an event of this generation ran past its timeout.
    Probe { generation: u64 },
    /// Drain this generation and relaunch the worker: a reload, or a recycle.
    Replace { generation: u64, recycle: bool },
}

/// The newest generation of a worker that has ended, and whether it ended
/// because it stopped answering its liveness probe.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ended {
    pub(crate) generation: u64,
    pub(crate) unresponsive: bool,
}

/// Why a generation of a worker stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    Exited,
    ReconnectFailed,
    Unresponsive,
    Recycled,
    Reloaded,
    /// The worker was removed, or the pool shut down.
    Shutdown,
}

/// What a release leaves to do once the lock is gone.
#[must_use]
struct Aftermath<C> {
    wake: Option<Waker>,
    reconnect: Option<(usize, Request)>,
    close: Option<C>,
    drained: bool,
    /// A slot of a draining or shrinking worker closed: `progress` is told.
    shed: bool,
    /// This worker's generation reached `max_events_per_worker`.
    recycle: Option<(usize, u64)>,
}

impl<C> Aftermath<C> {
    fn none() -> Self {
        Self {
            wake: None,
            reconnect: None,
            close: None,
            drained: false,
            shed: false,
            recycle: None,
        }
    }
}

/// The per-worker channels that live outside the lock.
struct WorkerLink {
    requests: mpsc::UnboundedSender<Request>,
    /// The newest generation of this worker that has ended; in-flight calls of
    /// that generation or older stop waiting for their answer.
    ended: watch::Sender<Ended>,
    /// Never read: cloned for each call. Holding one receiver for good keeps
    /// the count of receivers above zero, so that dropping a call's clone does
    /// not wake the sender's (unused) `closed()` waiters through their lock.
    ended_rx: watch::Receiver<Ended>,
    /// Cancelled when the worker is to be removed: its supervisor drains it,
    /// stops its process and ends.
    retire: CancellationToken,
}

impl WorkerLink {
    fn new() -> (Self, mpsc::UnboundedReceiver<Request>) {
        let (requests, rx) = mpsc::unbounded_channel();
        let (ended, ended_rx) = watch::channel(Ended::default());
        let link = WorkerLink {
            requests,
            ended,
            ended_rx,
            retire: CancellationToken::new(),
        };
        (link, rx)
    }
}

/// What a new worker's supervisor is started with.
pub(crate) struct NewWorker {
    pub(crate) id: WorkerId,
    pub(crate) requests: mpsc::UnboundedReceiver<Request>,
    pub(crate) retire: CancellationToken,
}

struct WorkerEntry<C> {
    /// This worker's segment of the slot table, by local index.
    slots: Vec<SlotState>,
    /// The segment's wanted length: slots at or above it are closed when
    /// free and removed once all of them are closed.
    target: usize,
    /// Its generation is being drained: no new events, and each slot freed
    /// is closed instead of reused.
    draining: bool,
    /// Draining, or the segment is longer than `target`: a freed slot takes
    /// the slow path through `shed`. The one flag the hot path reads.
    shedding: bool,
    /// Slots released since the generation began, for `max_events_per_worker`.
    released: u64,
    /// At this count the generation is recycled; `u64::MAX` when it never is.
    recycle_at: u64,
    /// Idle connections of the current generation, most recently freed last.
    idle: Vec<(u32, C)>,
    generation: u64,
    serving: bool,
    /// It may be blocked: its idle connections are kept out of the idle index
    /// and no waiter is handed one, until its probe answers.
    suspect: bool,
    state: WorkerState,
    pid: Option<u32>,
    restarts: u64,
    last_error: Option<String>,
    /// A launch failed before any generation served: `ready` reports it.
    never_launched: bool,
}

impl<C> WorkerEntry<C> {
    fn new(connections: usize) -> Self {
        Self {
            slots: vec![SlotState::Down; connections],
            target: connections,
            draining: false,
            shedding: false,
            released: 0,
            recycle_at: u64::MAX,
            idle: Vec::with_capacity(connections),
            generation: 0,
            serving: false,
            suspect: false,
            state: WorkerState::Starting,
            pid: None,
            restarts: 0,
            last_error: None,
            never_launched: false,
        }
    }

    fn busy(&self) -> usize {
        self.slots.iter().filter(|&&s| s == SlotState::Busy).count()
    }

    /// Every slot the worker keeps is connected.
    fn connected(&self) -> bool {
        self.slots[..self.target.min(self.slots.len())]
            .iter()
            .all(|&s| matches!(s, SlotState::Idle | SlotState::Busy))
    }
}

struct Core<C> {
    workers: Vec<WorkerEntry<C>>,
    /// Slots in every segment: the sum of the state counts.
    capacity: usize,
    idle_index: IdleIndex,
    waiters: WaitQueue<C>,
    counts: SlotCounts,
    allocations: AllocationStats,
    connection_restarts: ConnectionRestartStats,
    worker_restarts: u64,
    restart_reasons: RestartReasons,
    failed_workers: usize,
    /// Shutdown began: no new events.
    closing: bool,
    /// Shutdown finished: every slot goes to `Closed`.
    closed: bool,
    /// The timeout sweeper found the queue empty and waits for `Shared::sweep`.
    sweeper_parked: bool,
    max_connections: usize,
}

pub(crate) struct Shared<T: Transport> {
    pub(crate) transport: Arc<T>,
    pub(crate) config: PoolConfig,
    pub(crate) events: EventCounters,
    /// The grace that `shutdown` gives the worker processes.
    pub(crate) shutdown_grace: OnceLock<Duration>,
    core: Mutex<Core<T::Conn>>,
    /// One per worker entry, in the same order. Taken for reading outside
    /// the core lock; pushed before an entry is added, popped after one is
    /// removed, so that every entry has its link.
    links: RwLock<Vec<WorkerLink>>,
    /// Tells the operations task that a worker is due for recycling.
    recycle: mpsc::UnboundedSender<(usize, u64)>,
    /// Signalled when the last busy slot is released during shutdown.
    drained: Notify,
    /// Wakes the parked timeout sweeper: a waiter joined, or the pool closes.
    sweep: Notify,
    /// Wakes `ready`: a slot connected, a launch failed, a worker failed, or the
    /// pool closes.
    progress: Notify,
}

impl<T: Transport> Shared<T> {
    /// The shared state; for each worker what its supervisor needs; and the
    /// receiving end of recycle requests, for the operations task.
    pub(crate) fn new(
        transport: Arc<T>,
        config: PoolConfig,
    ) -> (
        Arc<Self>,
        Vec<NewWorker>,
        mpsc::UnboundedReceiver<(usize, u64)>,
    ) {
        let (workers, conns) = (config.num_workers, config.max_connections);
        let mut new_workers = Vec::with_capacity(workers);
        let links = (0..workers)
            .map(|w| {
                let (link, requests) = WorkerLink::new();
                new_workers.push(NewWorker {
                    id: WorkerId::new(w as u32),
                    requests,
                    retire: link.retire.clone(),
                });
                link
            })
            .collect();
        let core = Core {
            workers: (0..workers).map(|_| WorkerEntry::new(conns)).collect(),
            capacity: config.capacity(),
            idle_index: IdleIndex::new(workers, conns),
            waiters: WaitQueue::new(),
            counts: SlotCounts::all_down(config.capacity()),
            allocations: AllocationStats::default(),
            connection_restarts: ConnectionRestartStats::default(),
            worker_restarts: 0,
            restart_reasons: RestartReasons::default(),
            failed_workers: 0,
            closing: false,
            closed: false,
            sweeper_parked: false,
            max_connections: conns,
        };
        let (recycle, recycles) = mpsc::unbounded_channel();
        let shared = Self {
            transport,
            config,
            events: EventCounters::default(),
            shutdown_grace: OnceLock::new(),
            core: Mutex::new(core),
            links: RwLock::new(links),
            recycle,
            drained: Notify::new(),
            sweep: Notify::new(),
            progress: Notify::new(),
        };
        (Arc::new(shared), new_workers, recycles)
    }

    /// The one lock. parking_lot's mutex spins briefly before it parks a thread,
    /// which suits sections this short when two threads meet on them; and it has
    /// no poisoning to handle (no code under it panics on outside input).
    #[inline]
    fn lock(&self) -> MutexGuard<'_, Core<T::Conn>> {
        self.core.lock()
    }

    pub(crate) fn worker_of(&self, slot: SlotId) -> WorkerId {
        WorkerId::new(slot.worker)
    }

    /// The hot path: takes an idle slot if there is one, else joins the queue,
    /// to be woken with `waker` (registered now, so that waiting costs no second
    /// trip through the lock before the slot is granted).
    #[inline]
    pub(crate) fn begin_acquire(&self, waker: &Waker, first_try: bool) -> Begin<T::Conn> {
        let mut core = self.lock();
        // An acquire that retries after a broken connection is still one acquire.
        core.allocations.count += u64::from(first_try);
        if core.closing {
            return Begin::Refused(PoolError::Closed);
        }
        if let Some(taken) = core.take_idle() {
            core.allocations.immediate += 1;
            return Begin::Taken(taken);
        }
        if core.failed_workers == core.workers.len() {
            return Begin::Refused(PoolError::NoWorkerAvailable);
        }
        if let Some(max_waiters) = self.config.max_waiters {
            if core.waiters.len() >= max_waiters {
                core.allocations.queue_full += 1;
                return Begin::Refused(PoolError::QueueFull { max_waiters });
            }
        }
        if self.config.connection_availability_timeout.is_zero() {
            core.allocations.timeout += 1;
            return Begin::Refused(PoolError::AcquireTimeout {
                waited: Duration::ZERO,
            });
        }
        // Read under the lock, so that arrival times rise along the queue.
        let since = Instant::now();
        let key = core.waiters.push_back(since, Some(waker.clone()));
        let wake_sweeper = std::mem::take(&mut core.sweeper_parked);
        drop(core);
        if wake_sweeper {
            self.sweep.notify_one();
        }
        Begin::Wait(key, since)
    }

    /// Polls a queued waiter: its slot, its error, or pending.
    pub(crate) fn poll_waiter(
        &self,
        key: u32,
        since: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Taken<T::Conn>, PoolError>> {
        let mut core = self.lock();
        match core.waiters.poll_outcome(key, cx.waker()) {
            None => Poll::Pending,
            Some(Outcome::Granted {
                slot,
                generation,
                conn,
            }) => {
                let waited = since.elapsed();
                core.allocations.after_wait += 1;
                core.allocations.wait_duration_sum += waited;
                Poll::Ready(Ok(Taken {
                    slot,
                    generation,
                    conn,
                    waited: Some(waited),
                }))
            }
            Some(Outcome::Closed) => Poll::Ready(Err(PoolError::Closed)),
            Some(Outcome::NoWorker) => Poll::Ready(Err(PoolError::NoWorkerAvailable)),
            Some(Outcome::TimedOut) => Poll::Ready(Err(PoolError::AcquireTimeout {
                waited: since.elapsed(),
            })),
        }
    }

    /// Takes back the success counted for an acquire whose connection turned
    /// out broken: it tries again, and only its final outcome counts.
    pub(crate) fn retract_allocation(&self, waited: Option<Duration>) {
        let mut core = self.lock();
        let allocations = &mut core.allocations;
        match waited {
            None => allocations.immediate -= 1,
            Some(waited) => {
                allocations.after_wait -= 1;
                allocations.wait_duration_sum =
                    allocations.wait_duration_sum.saturating_sub(waited);
            }
        }
    }

    /// Fails every waiter that has waited `connection_availability_timeout`, until
    /// the pool closes. Runs as one task per pool.
    ///
    /// One timer serves the whole queue: deadlines rise from front to back, so the
    /// sweeper sleeps until the front waiter's and, when the queue is empty, parks
    /// until a waiter joins. A waiter therefore costs no timer of its own, which
    /// is most of what waiting used to cost under contention.
    pub(crate) async fn expire_waiters(&self) {
        let limit = self.config.connection_availability_timeout;
        loop {
            let mut expired = Vec::new();
            let next = {
                let mut core = self.lock();
                if core.closing {
                    return;
                }
                let now = Instant::now();
                loop {
                    let Some(since) = core.waiters.front_since() else {
                        core.sweeper_parked = true;
                        break None;
                    };
                    match since.checked_add(limit) {
                        Some(deadline) if deadline <= now => {
                            core.allocations.timeout += 1;
                            if let Ok(waker) = core.waiters.pop_front(Outcome::TimedOut) {
                                expired.extend(waker);
                            }
                        }
                        Some(deadline) => break Some(deadline),
                        // A timeout too long to represent: check back now and then.
                        None => break Some(now + Duration::from_secs(3600)),
                    }
                }
            };
            expired.into_iter().for_each(Waker::wake);
            match next {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => self.sweep.notified().await,
            }
        }
    }

    /// A waiter gave up (dropped or timed out). A slot granted to it meanwhile goes
    /// to the next waiter.
    pub(crate) fn abandon_waiter(&self, key: u32) {
        let mut core = self.lock();
        let after = match core.waiters.remove(key) {
            Some(Outcome::Granted {
                slot,
                generation,
                conn,
            }) => core.release(slot, generation, Some(conn), true),
            _ => Aftermath::none(),
        };
        drop(core);
        self.finish(after);
    }

    /// Gives a slot back: reused if `clean`, else its connection is closed and
    /// re-established.
    pub(crate) fn release(
        &self,
        slot: SlotId,
        generation: u64,
        conn: Option<T::Conn>,
        clean: bool,
    ) {
        let after = self.lock().release(slot, generation, conn, clean);
        self.finish(after);
    }

    fn finish(&self, after: Aftermath<T::Conn>) {
        if let Some(waker) = after.wake {
            waker.wake();
        }
        if let Some((worker, request)) = after.reconnect {
            // The supervisor outlives every slot guard unless the pool was dropped,
            // in which case there is nothing left to reconnect.
            if let Some(link) = self.links.read().get(worker) {
                let _ = link.requests.send(request);
            }
        }
        if after.drained {
            self.drained.notify_waiters();
        }
        if let Some(due) = after.recycle {
            // Only a pool being dropped has no operations task to tell.
            let _ = self.recycle.send(due);
        }
        if after.shed {
            self.progress.notify_waiters();
        }
        drop(after.close);
    }

    /// A connect task finished for `slot`; the connection is used only if the
    /// worker still serves the generation it was made for.
    pub(crate) fn install(
        &self,
        worker: WorkerId,
        local: u32,
        generation: u64,
        conn: T::Conn,
        was_restart: bool,
    ) {
        let mut core = self.lock();
        let w = worker.index();
        let slot = SlotId::new(worker.index() as u32, local);
        // A slot removed meanwhile (the pool shrank) has no entry left.
        let current = core.workers.get(w).is_some_and(|entry| {
            entry.serving
                && entry.generation == generation
                && entry.slots.get(local as usize) == Some(&SlotState::Reconnecting)
        });
        if core.closed || !current {
            drop(core);
            drop(conn);
            return;
        }
        if was_restart {
            core.connection_restarts.ok += 1;
        }
        let after = core.make_available(w, slot, generation, conn);
        drop(core);
        self.finish(after);
        self.progress.notify_waiters();
    }

    pub(crate) fn count_reconnect_failed(&self) {
        self.lock().connection_restarts.failed += 1;
    }

    /// A new process of `worker` is up: its down slots start connecting.
    pub(crate) fn begin_generation(
        &self,
        worker: WorkerId,
        generation: u64,
        pid: Option<u32>,
    ) -> Vec<u32> {
        let recycle_at = self.config.recycle_threshold(worker.index(), generation);
        let mut core = self.lock();
        let core = &mut *core;
        let Some(entry) = core.workers.get_mut(worker.index()) else {
            return Vec::new();
        };
        entry.generation = generation;
        entry.serving = true;
        entry.suspect = false;
        entry.draining = false;
        entry.shedding = entry.slots.len() > entry.target;
        entry.released = 0;
        entry.recycle_at = recycle_at;
        entry.state = WorkerState::Running;
        entry.pid = pid;
        let mut connecting = Vec::new();
        for local in 0..entry.target.min(entry.slots.len()) as u32 {
            let slot = SlotId::new(worker.index() as u32, local);
            if core.state(slot) == SlotState::Down {
                core.set_state(slot, SlotState::Reconnecting);
                connecting.push(local);
            }
        }
        connecting
    }

    /// The worker's current process is gone or going: its idle connections are
    /// closed, its slots go down, and its in-flight calls stop waiting.
    pub(crate) fn end_generation(&self, worker: WorkerId, next_state: WorkerState, why: EndReason) {
        let mut core = self.lock();
        let core_ref = &mut *core;
        let reasons = &mut core_ref.restart_reasons;
        match why {
            EndReason::Exited => reasons.exited += 1,
            EndReason::ReconnectFailed => reasons.reconnect_failed += 1,
            EndReason::Unresponsive => reasons.unresponsive += 1,
            EndReason::Recycled => reasons.recycled += 1,
            EndReason::Reloaded => reasons.reloaded += 1,
            EndReason::Shutdown => {}
        }
        let w = worker.index();
        let Some(entry) = core_ref.workers.get_mut(w) else {
            return;
        };
        entry.serving = false;
        entry.suspect = false;
        entry.draining = false;
        entry.state = next_state;
        entry.pid = None;
        let generation = entry.generation;
        let idle: Vec<(u32, T::Conn)> = entry.idle.drain(..).collect();
        let (len, target) = (entry.slots.len(), entry.target);
        core_ref.idle_index.clear(w);
        for local in 0..len as u32 {
            let slot = SlotId::new(w as u32, local);
            let state = core_ref.state(slot);
            if state == SlotState::Busy {
                continue;
            }
            if local as usize >= target {
                core_ref.set_state(slot, SlotState::Closed);
            } else if matches!(state, SlotState::Idle | SlotState::Reconnecting) {
                core_ref.set_state(slot, SlotState::Down);
            }
        }
        core_ref.trim(w);
        drop(core);
        drop(idle);
        if let Some(link) = self.links.read().get(w) {
            link.ended.send_replace(Ended {
                generation,
                unresponsive: why == EndReason::Unresponsive,
            });
        }
        self.progress.notify_waiters();
    }

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
                    core.set_state(slot, SlotState::Busy);
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
                        });
                    }
                    if entry.never_launched {
                        return Err(ReadyError::LaunchFailed {
                            worker,
                            reason: reason(),
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

    /// Remembers why the worker's last launch or process failed, for Stats.
    pub(crate) fn set_last_error(&self, worker: WorkerId, error: String) {
        if let Some(entry) = self.lock().workers.get_mut(worker.index()) {
            entry.last_error = Some(error);
        }
    }

    pub(crate) fn set_worker_state(&self, worker: WorkerId, state: WorkerState) {
        if let Some(entry) = self.lock().workers.get_mut(worker.index()) {
            entry.state = state;
        }
        self.progress.notify_waiters();
    }

    pub(crate) fn count_worker_restart(&self, worker: WorkerId) {
        let mut core = self.lock();
        core.worker_restarts += 1;
        if let Some(entry) = core.workers.get_mut(worker.index()) {
            entry.restarts += 1;
        }
    }

    /// The worker restarted too often. When it was the last one, waiters learn
    /// at once that no worker is left instead of waiting out their timeout.
    pub(crate) fn worker_failed(&self, worker: WorkerId) {
        let mut core = self.lock();
        let Some(entry) = core.workers.get_mut(worker.index()) else {
            return;
        };
        entry.state = WorkerState::Failed;
        core.failed_workers += 1;
        let wakers = if core.failed_workers == core.workers.len() {
            core.waiters.drain(|| Outcome::NoWorker)
        } else {
            Vec::new()
        };
        drop(core);
        wakers.into_iter().for_each(Waker::wake);
        self.progress.notify_waiters();
    }

    /// Stops admitting events and fails every waiter with `Closed`.
    pub(crate) fn close(&self) {
        let mut core = self.lock();
        core.closing = true;
        let wakers = core.waiters.drain(|| Outcome::Closed);
        drop(core);
        wakers.into_iter().for_each(Waker::wake);
        // The sweeper sees `closing` and ends, whether it slept or was parked.
        self.sweep.notify_one();
        self.progress.notify_waiters();
    }

    /// After the supervisors stopped: every slot not held by a caller is closed.
    pub(crate) fn close_slots(&self) {
        let mut core = self.lock();
        let core_ref = &mut *core;
        core_ref.closed = true;
        let mut idle = Vec::new();
        for w in 0..core_ref.workers.len() {
            idle.append(&mut core_ref.workers[w].idle);
            core_ref.idle_index.clear(w);
            for local in 0..core_ref.workers[w].slots.len() as u32 {
                let slot = SlotId::new(w as u32, local);
                if core_ref.state(slot) != SlotState::Busy {
                    core_ref.set_state(slot, SlotState::Closed);
                }
            }
        }
        drop(core);
        drop(idle);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Resolves once no slot is busy. Cancel safe.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().counts.get(SlotState::Busy) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Watches for the end of `worker`'s generations.
    pub(crate) fn ended(&self, worker: WorkerId) -> watch::Receiver<Ended> {
        match self.links.read().get(worker.index()) {
            Some(link) => link.ended_rx.clone(),
            // A worker removed already: every generation of it has ended.
            None => {
                let ended = Ended {
                    generation: u64::MAX,
                    unresponsive: false,
                };
                watch::channel(ended).1
            }
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let core = self.lock();
        let workers = core
            .workers
            .iter()
            .enumerate()
            .map(|(w, entry)| WorkerStats {
                id: WorkerId::new(w as u32),
                state: entry.state,
                generation: entry.generation,
                pid: entry.pid,
                idle: entry.idle.len(),
                busy: entry.busy(),
                restarts: entry.restarts,
                last_error: entry.last_error.clone(),
            })
            .collect();
        Stats {
            capacity: core.capacity,
            idle: core.counts.get(SlotState::Idle),
            busy: core.counts.get(SlotState::Busy),
            reconnecting: core.counts.get(SlotState::Reconnecting),
            down: core.counts.get(SlotState::Down),
            closed: core.counts.get(SlotState::Closed),
            waiters: core.waiters.len(),
            allocations: core.allocations,
            events: self.events.snapshot(),
            connection_restarts: core.connection_restarts,
            worker_restarts: core.worker_restarts,
            restart_reasons: core.restart_reasons,
            workers,
        }
    }
}

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
    pub(crate) fn request_replace(&self, worker: usize, recycle: bool) -> Option<u64> {
        let generation = {
            let core = self.lock();
            let entry = core.workers.get(worker)?;
            if !entry.serving || entry.draining {
                return None;
            }
            entry.generation
        };
        let request = Request::Replace {
            generation,
            recycle,
        };
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
    pub(crate) async fn worker_serving(&self, worker: WorkerId, after: u64) -> Result<(), String> {
        let mut outcome = Ok(());
        self.until(|core| {
            let Some(entry) = core.workers.get(worker.index()) else {
                outcome = Err("the worker was removed".into());
                return true;
            };
            if entry.state == WorkerState::Failed || entry.never_launched {
                outcome = Err(entry.last_error.clone().unwrap_or_default());
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

    /// Whether `worker` still runs `generation`, for a recycle request that
    /// may have been overtaken by a restart or a reload.
    pub(crate) fn runs_generation(&self, worker: usize, generation: u64) -> bool {
        self.lock()
            .workers
            .get(worker)
            .is_some_and(|entry| entry.serving && !entry.draining && entry.generation == generation)
    }

    /// A supervisor found its worker's memory past `max_worker_rss`.
    pub(crate) fn request_recycle(&self, worker: WorkerId, generation: u64) {
        let _ = self.recycle.send((worker.index(), generation));
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

impl<C> Core<C> {
    #[inline]
    fn state(&self, slot: SlotId) -> SlotState {
        self.workers[slot.worker as usize].slots[slot.local as usize]
    }

    #[inline]
    fn set_state(&mut self, slot: SlotId, state: SlotState) {
        let cell = &mut self.workers[slot.worker as usize].slots[slot.local as usize];
        let old = std::mem::replace(cell, state);
        self.counts.moved(old, state);
    }

    /// An idle connection of the least loaded worker.
    #[inline]
    fn take_idle(&mut self) -> Option<Taken<C>> {
        let w = self.idle_index.most_idle()?;
        let worker = &mut self.workers[w];
        let (local, conn) = worker.idle.pop()?;
        let generation = worker.generation;
        let slot = SlotId::new(w as u32, local);
        self.idle_index.decrement(w);
        self.set_state(slot, SlotState::Busy);
        Some(Taken {
            slot,
            generation,
            conn,
            waited: None,
        })
    }

    /// A usable connection of worker `w`: to the oldest waiter if there is one,
    /// else idle.
    #[inline]
    fn make_available(&mut self, w: usize, slot: SlotId, generation: u64, conn: C) -> Aftermath<C> {
        if self.workers[w].shedding && self.sheds(slot) {
            return self.shed(slot, conn);
        }
        let mut after = Aftermath::none();
        let suspect = self.workers[w].suspect;
        // Most releases find nobody waiting: skip building an outcome for them.
        // A suspect worker's connection waits idle, outside the index, for its probe.
        let conn = if self.waiters.is_empty() || suspect {
            conn
        } else {
            let granted = Outcome::Granted {
                slot,
                generation,
                conn,
            };
            match self.waiters.pop_front(granted) {
                Ok(waker) => {
                    self.set_state(slot, SlotState::Busy);
                    after.wake = waker;
                    return after;
                }
                Err(Outcome::Granted { conn, .. }) => conn,
                // pop_front hands back the outcome it was given.
                Err(_) => return after,
            }
        };
        self.workers[w].idle.push((slot.local, conn));
        if !suspect {
            self.idle_index.increment(w);
        }
        self.set_state(slot, SlotState::Idle);
        after
    }

    /// Whether a freed `slot` closes instead of being reused: its worker is
    /// draining, or the slot is beyond its worker's new size.
    #[cold]
    fn sheds(&self, slot: SlotId) -> bool {
        let entry = &self.workers[slot.worker as usize];
        entry.draining || slot.local as usize >= entry.target
    }

    /// Closes a freed slot of a draining or shrinking worker.
    #[cold]
    fn shed(&mut self, slot: SlotId, conn: C) -> Aftermath<C> {
        self.shed_state(slot);
        self.trim(slot.worker as usize);
        let mut after = Aftermath::none();
        after.close = Some(conn);
        after.shed = true;
        after
    }

    /// A slot that will not be reused: closed if it is to be removed, else
    /// down until the worker's next generation connects it.
    fn shed_state(&mut self, slot: SlotId) {
        let target = self.workers[slot.worker as usize].target;
        let state = if slot.local as usize >= target {
            SlotState::Closed
        } else {
            SlotState::Down
        };
        self.set_state(slot, state);
    }

    /// Removes the slots beyond worker `w`'s target once all are closed.
    fn trim(&mut self, w: usize) {
        let entry = &mut self.workers[w];
        let target = entry.target;
        if entry.slots.len() > target
            && entry.slots[target..]
                .iter()
                .all(|&s| s == SlotState::Closed)
        {
            let removed = entry.slots.len() - target;
            entry.slots.truncate(target);
            for _ in 0..removed {
                self.counts.remove(SlotState::Closed);
            }
            self.capacity -= removed;
        }
        let entry = &mut self.workers[w];
        entry.shedding = entry.draining || entry.slots.len() > entry.target;
    }

    #[inline]
    fn release(
        &mut self,
        slot: SlotId,
        generation: u64,
        conn: Option<C>,
        clean: bool,
    ) -> Aftermath<C> {
        let w = slot.worker as usize;
        let entry = &mut self.workers[w];
        let (serving, worker_generation) = (entry.serving, entry.generation);
        entry.released += 1;
        let recycle = entry.released == entry.recycle_at;
        let current = serving && worker_generation == generation;
        let mut after = match conn {
            Some(conn) if clean && current && !self.closed => {
                self.make_available(w, slot, generation, conn)
            }
            conn => {
                let mut after = Aftermath::none();
                after.close = conn;
                if self.closed {
                    self.set_state(slot, SlotState::Closed);
                } else if self.workers[w].shedding && self.sheds(slot) {
                    self.shed_state(slot);
                    self.trim(w);
                    after.shed = true;
                } else if serving {
                    self.set_state(slot, SlotState::Reconnecting);
                    let generation = worker_generation;
                    after.reconnect = Some((
                        w,
                        Request::Reconnect {
                            slot: slot.local,
                            generation,
                        },
                    ));
                } else {
                    self.set_state(slot, SlotState::Down);
                    // A worker being removed waits for its last busy slot.
                    after.shed = true;
                }
                after
            }
        };
        if recycle {
            after.recycle = Some((w, worker_generation));
        }
        after.drained = self.closing && self.counts.get(SlotState::Busy) == 0;
        after
    }
}
