//! The state every task of one pool shares: the slot table, the idle connections,
//! the wait queue and the counters, under one short lock.
//!
//! Every slot transition happens here, so the invariants are kept in one place:
//! each slot is in exactly one [`SlotState`]; a slot freed while someone waits goes
//! to the oldest waiter, never to the idle stack; an idle connection always belongs
//! to its worker's current generation. Wakers are woken, connections dropped and
//! reconnects requested only after the lock is released.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use parking_lot::{Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::PoolConfig;
use crate::error::{Cause, PoolError, ReadyError};
use crate::stats::{
    AllocationStats, ConnectionRestartStats, EventCounters, RestartReasons, SlotCounts, SlotState,
    Stats, WorkerState, WorkerStats,
};
use crate::transport::Transport;
use crate::worker::WorkerId;
use idle_index::IdleIndex;
use wait_queue::{Outcome, WaitQueue};
use worker_choice::{HOLD_LIMIT, Progress};

mod health;
mod idle_index;
mod slots;
mod snapshot;
mod wait_queue;
mod waiters;
mod worker_choice;
mod worker_set;

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
    Replace { generation: u64, why: Replacement },
}

/// Why a worker's generation is replaced, new before old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replacement {
    /// [`Pool::reload`](crate::Pool::reload).
    Reload,
    /// It served `max_events_per_worker` events.
    Events,
    /// Its resident memory passed `max_worker_rss`.
    Rss,
    /// One of its events ran past `event_timeout`, with
    /// `recycle_after_event_timeout`.
    EventTimeout,
}

/// A worker's generation that came due for a recycle, and why.
pub(crate) type DueRecycle = (usize, u64, Replacement);

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
    Replaced(Replacement),
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
    recycle: Option<DueRecycle>,
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
    /// The newest generation of this worker whose drain began (a reload, a
    /// recycle, a removal): long-lived exchanges on it wind down.
    draining: watch::Sender<u64>,
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
            draining: watch::Sender::new(0),
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
    /// Its busy slots, kept with every move so that a snapshot need not
    /// count them under the lock.
    busy: usize,
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
    /// When the current generation began serving, for `min_worker_uptime`.
    started: Instant,
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
    /// The error behind `last_error`, where there is one: the source of the
    /// `ready` and operations errors that report it.
    last_cause: Option<Cause>,
    /// Its answers, as the choice of worker reads them.
    progress: Progress,
    /// A launch failed before any generation served: `ready` reports it.
    never_launched: bool,
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
    /// The order of prompt answers and first events, for [`Progress`].
    ticks: u64,
    /// Acquires may be held for an answering worker: they may wait at all
    /// (`acquire_timeout` is not zero).
    may_hold: bool,
    /// [`PoolConfig::max_waiters`]: a held acquire must not take the last
    /// place in the queue from one that finds no free slot at all.
    max_waiters: Option<usize>,
    /// [`PoolConfig::stall_after`].
    stall_after: Option<Duration>,
}

impl<C> Core<C> {
    /// `waiting` is the wait queue's flag, also read outside the lock.
    fn new(config: &PoolConfig, waiting: Arc<AtomicBool>) -> Self {
        let (workers, conns) = (config.num_workers, config.max_connections);
        Self {
            workers: (0..workers).map(|_| WorkerEntry::new(conns)).collect(),
            capacity: config.capacity(),
            idle_index: IdleIndex::new(workers, conns),
            waiters: WaitQueue::new(waiting),
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
            ticks: 0,
            may_hold: !config.acquire_timeout.is_zero(),
            max_waiters: config.max_waiters,
            stall_after: config.stall_after,
        }
    }
}

pub(crate) struct Shared<T: Transport> {
    pub(crate) transport: Arc<T>,
    pub(crate) config: PoolConfig,
    pub(crate) events: EventCounters,
    /// The grace that `shutdown` gives the worker processes: the shortest
    /// any call asked for.
    shutdown_grace: Mutex<Option<Duration>>,
    core: Mutex<Core<T::Conn>>,
    /// One per worker entry, in the same order. Taken for reading outside
    /// the core lock; pushed before an entry is added, popped after one is
    /// removed, so that every entry has its link.
    links: RwLock<Vec<WorkerLink>>,
    /// Tells the operations task that a worker is due for recycling.
    recycle: mpsc::UnboundedSender<DueRecycle>,
    /// Whether anyone waits for a slot, read without the lock by an acquire
    /// that finds the lock busy (see `begin_acquire`); kept by the wait queue.
    waiting: Arc<AtomicBool>,
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
        mpsc::UnboundedReceiver<DueRecycle>,
    ) {
        let workers = config.num_workers;
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
        let waiting = Arc::new(AtomicBool::new(false));
        let core = Core::new(&config, waiting.clone());
        let (recycle, recycles) = mpsc::unbounded_channel();
        let shared = Self {
            transport,
            config,
            events: EventCounters::default(),
            shutdown_grace: Mutex::new(None),
            core: Mutex::new(core),
            links: RwLock::new(links),
            recycle,
            waiting,
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
        let mut prepared = None;
        let mut core = match self.core.try_lock() {
            Some(core) => core,
            None => {
                // Another thread holds the lock, and if others wait already
                // this acquire most likely will too: its clock read and its
                // waker's clone are done while the lock is busy, which keeps
                // this section short for the thread contending with it.
                if self.waiting.load(Relaxed) {
                    prepared = Some((Instant::now(), waker.clone()));
                }
                self.lock()
            }
        };
        // An acquire that retries after a broken connection is still one acquire.
        core.allocations.count += u64::from(first_try);
        if core.closing {
            return Begin::Refused(PoolError::Closed);
        }
        if let Some(taken) = core.take_idle(true) {
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
        if self.config.acquire_timeout.is_zero() {
            core.allocations.timeout += 1;
            return Begin::Refused(PoolError::AcquireTimeout {
                waited: Duration::ZERO,
            });
        }
        let (since, waker) = prepared.unwrap_or_else(|| (core.waiters.read_clock(), waker.clone()));
        let key = core.waiters.push_back(since, Some(waker));
        // A held acquire needs the sweeper within `stall_after`, even if it
        // sleeps until a later deadline.
        let wake_sweeper = std::mem::take(&mut core.sweeper_parked) || core.holds();
        drop(core);
        if wake_sweeper {
            self.sweep.notify_one();
        }
        Begin::Wait(key, since)
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
        let after = core.make_available(w, slot, generation, conn, None);
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
        entry.started = Instant::now();
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
            EndReason::Replaced(Replacement::Events) => reasons.recycled_events += 1,
            EndReason::Replaced(Replacement::Rss) => reasons.recycled_rss += 1,
            EndReason::Replaced(Replacement::EventTimeout) => {
                reasons.recycled_event_timeout += 1;
            }
            EndReason::Replaced(Replacement::Reload) => reasons.reloaded += 1,
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

    /// Remembers why the worker's last launch or process failed, for Stats.
    pub(crate) fn set_last_error(&self, worker: WorkerId, error: String) {
        self.set_last_error_caused(worker, error, None);
    }

    /// [`set_last_error`](Self::set_last_error), with the error behind it.
    pub(crate) fn set_last_error_caused(
        &self,
        worker: WorkerId,
        error: String,
        cause: Option<Cause>,
    ) {
        if let Some(entry) = self.lock().workers.get_mut(worker.index()) {
            entry.last_error = Some(error);
            entry.last_cause = cause;
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

    /// Records the grace a `shutdown` call gives the worker processes; a second
    /// call can shorten it, never lengthen it.
    pub(crate) fn ask_shutdown_grace(&self, grace: Duration) {
        let mut current = self.shutdown_grace.lock();
        *current = Some(current.map_or(grace, |asked| asked.min(grace)));
    }

    /// The grace worker processes get at shutdown.
    pub(crate) fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace.lock().unwrap_or_default()
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

    /// Watches for the start of `worker`'s drains, by generation.
    pub(crate) fn draining(&self, worker: WorkerId) -> watch::Receiver<u64> {
        match self.links.read().get(worker.index()) {
            Some(link) => link.draining.subscribe(),
            // A worker removed already: every generation of it has drained.
            None => watch::channel(u64::MAX).1,
        }
    }

    /// Tells long-lived exchanges on `generation` of `worker` that it drains.
    pub(crate) fn announce_drain(&self, worker: WorkerId, generation: u64) {
        if let Some(link) = self.links.read().get(worker.index()) {
            link.draining.send_if_modified(|drained| {
                let newer = generation > *drained;
                if newer {
                    *drained = generation;
                }
                newer
            });
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
}
