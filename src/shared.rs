//! The state every task of one pool shares: the slot table, the idle connections,
//! the wait queue and the counters, under one short lock.
//!
//! Every slot transition happens here, so the invariants are kept in one place:
//! each slot is in exactly one [`SlotState`]; a slot freed while someone waits goes
//! to the oldest waiter, never to the idle stack; an idle connection always belongs
//! to its worker's current generation. Wakers are woken, connections dropped and
//! reconnects requested only after the lock is released.

use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Notify, mpsc, watch};

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

/// A slot taken for one event, with its connection.
pub(crate) struct Taken<C> {
    pub(crate) slot: u32,
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
    /// Probe the worker: an event of this generation ran past its timeout.
    Probe { generation: u64 },
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
    Shutdown,
}

/// What a release leaves to do once the lock is gone.
#[must_use]
struct Aftermath<C> {
    wake: Option<Waker>,
    reconnect: Option<(usize, Request)>,
    close: Option<C>,
    drained: bool,
}

impl<C> Aftermath<C> {
    fn none() -> Self {
        Self {
            wake: None,
            reconnect: None,
            close: None,
            drained: false,
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
}

struct WorkerEntry<C> {
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

struct Core<C> {
    slots: Box<[SlotState]>,
    workers: Box<[WorkerEntry<C>]>,
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
    links: Box<[WorkerLink]>,
    /// Signalled when the last busy slot is released during shutdown.
    drained: Notify,
    /// Wakes the parked timeout sweeper: a waiter joined, or the pool closes.
    sweep: Notify,
    /// Wakes `ready`: a slot connected, a launch failed, a worker failed, or the
    /// pool closes.
    progress: Notify,
}

impl<T: Transport> Shared<T> {
    /// The shared state, and for each worker the receiving end of its reconnect requests.
    pub(crate) fn new(
        transport: Arc<T>,
        config: PoolConfig,
    ) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Request>>) {
        let (workers, conns) = (config.num_workers, config.max_connections);
        let mut receivers = Vec::with_capacity(workers);
        let links = (0..workers)
            .map(|_| {
                let (requests, rx) = mpsc::unbounded_channel();
                receivers.push(rx);
                let (ended, ended_rx) = watch::channel(Ended::default());
                WorkerLink {
                    requests,
                    ended,
                    ended_rx,
                }
            })
            .collect();
        let core = Core {
            slots: vec![SlotState::Down; config.capacity()].into(),
            workers: (0..workers)
                .map(|_| WorkerEntry {
                    idle: Vec::with_capacity(conns),
                    generation: 0,
                    serving: false,
                    suspect: false,
                    state: WorkerState::Starting,
                    pid: None,
                    restarts: 0,
                    last_error: None,
                    never_launched: false,
                })
                .collect(),
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
        let shared = Self {
            transport,
            config,
            events: EventCounters::default(),
            shutdown_grace: OnceLock::new(),
            core: Mutex::new(core),
            links,
            drained: Notify::new(),
            sweep: Notify::new(),
            progress: Notify::new(),
        };
        (Arc::new(shared), receivers)
    }

    /// The one lock. parking_lot's mutex spins briefly before it parks a thread,
    /// which suits sections this short when two threads meet on them; and it has
    /// no poisoning to handle (no code under it panics on outside input).
    #[inline]
    fn lock(&self) -> MutexGuard<'_, Core<T::Conn>> {
        self.core.lock()
    }

    pub(crate) fn worker_of(&self, slot: u32) -> WorkerId {
        WorkerId::new(slot / self.config.max_connections as u32)
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
    pub(crate) fn release(&self, slot: u32, generation: u64, conn: Option<T::Conn>, clean: bool) {
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
            let _ = self.links[worker].requests.send(request);
        }
        if after.drained {
            self.drained.notify_waiters();
        }
        drop(after.close);
    }

    /// A connect task finished for `slot`; the connection is used only if the
    /// worker still serves the generation it was made for.
    pub(crate) fn install(&self, slot: u32, generation: u64, conn: T::Conn, was_restart: bool) {
        let mut core = self.lock();
        let w = core.worker_index(slot);
        let worker = &core.workers[w];
        let current = worker.serving && worker.generation == generation;
        if core.closed || !current || core.slots[slot as usize] != SlotState::Reconnecting {
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
        let mut core = self.lock();
        let core = &mut *core;
        let entry = &mut core.workers[worker.index()];
        entry.generation = generation;
        entry.serving = true;
        entry.suspect = false;
        entry.state = WorkerState::Running;
        entry.pid = pid;
        let mut connecting = Vec::new();
        for slot in core.slot_range(worker.index()) {
            if core.slots[slot as usize] == SlotState::Down {
                core.set_state(slot, SlotState::Reconnecting);
                connecting.push(slot);
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
            EndReason::Shutdown => {}
        }
        let w = worker.index();
        let entry = &mut core_ref.workers[w];
        entry.serving = false;
        entry.suspect = false;
        entry.state = next_state;
        entry.pid = None;
        let generation = entry.generation;
        let idle: Vec<(u32, T::Conn)> = entry.idle.drain(..).collect();
        core_ref.idle_index.clear(w);
        for slot in core_ref.slot_range(w) {
            if matches!(
                core_ref.slots[slot as usize],
                SlotState::Idle | SlotState::Reconnecting
            ) {
                core_ref.set_state(slot, SlotState::Down);
            }
        }
        drop(core);
        drop(idle);
        self.links[w].ended.send_replace(Ended {
            generation,
            unresponsive: why == EndReason::Unresponsive,
        });
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
            let _ = self.links[worker.index()].requests.send(request);
        }
    }

    /// Takes `worker` out of service while its probe is outstanding; true if
    /// it was not suspect already.
    pub(crate) fn mark_suspect(&self, worker: WorkerId, generation: u64) -> bool {
        let mut core = self.lock();
        let w = worker.index();
        let entry = &mut core.workers[w];
        if !entry.serving || entry.generation != generation || entry.suspect {
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
        let entry = &mut core.workers[w];
        if !entry.serving || entry.generation != generation || !entry.suspect {
            return;
        }
        entry.suspect = false;
        entry.state = WorkerState::Running;
        let mut wake = Vec::new();
        while !core.waiters.is_empty() {
            let Some((slot, conn)) = core.workers[w].idle.pop() else {
                break;
            };
            match core.waiters.pop_front(Outcome::Granted {
                slot,
                generation,
                conn,
            }) {
                Ok(waker) => {
                    core.set_state(slot, SlotState::Busy);
                    wake.extend(waker);
                }
                Err(Outcome::Granted { slot, conn, .. }) => {
                    core.workers[w].idle.push((slot, conn));
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
        let entry = &mut core.workers[worker.index()];
        if entry.generation == 0 {
            entry.never_launched = true;
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
            let connected = {
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
                if connected == core.slots.len() {
                    return Ok(());
                }
                connected
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
                    capacity: self.config.capacity(),
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// Remembers why the worker's last launch or process failed, for Stats.
    pub(crate) fn set_last_error(&self, worker: WorkerId, error: String) {
        self.lock().workers[worker.index()].last_error = Some(error);
    }

    pub(crate) fn set_worker_state(&self, worker: WorkerId, state: WorkerState) {
        self.lock().workers[worker.index()].state = state;
    }

    pub(crate) fn count_worker_restart(&self, worker: WorkerId) {
        let mut core = self.lock();
        core.worker_restarts += 1;
        core.workers[worker.index()].restarts += 1;
    }

    /// The worker restarted too often. When it was the last one, waiters learn
    /// at once that no worker is left instead of waiting out their timeout.
    pub(crate) fn worker_failed(&self, worker: WorkerId) {
        let mut core = self.lock();
        core.workers[worker.index()].state = WorkerState::Failed;
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
        }
        for slot in 0..core_ref.slots.len() as u32 {
            if core_ref.slots[slot as usize] != SlotState::Busy {
                core_ref.set_state(slot, SlotState::Closed);
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
        self.links[worker.index()].ended_rx.clone()
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
                busy: core.slots
                    [core.slot_range(w).start as usize..core.slot_range(w).end as usize]
                    .iter()
                    .filter(|&&state| state == SlotState::Busy)
                    .count(),
                restarts: entry.restarts,
                last_error: entry.last_error.clone(),
            })
            .collect();
        Stats {
            capacity: core.slots.len(),
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

impl<C> Core<C> {
    #[inline]
    fn worker_index(&self, slot: u32) -> usize {
        slot as usize / self.max_connections
    }

    fn slot_range(&self, worker: usize) -> std::ops::Range<u32> {
        let start = (worker * self.max_connections) as u32;
        start..start + self.max_connections as u32
    }

    #[inline]
    fn set_state(&mut self, slot: u32, state: SlotState) {
        let old = std::mem::replace(&mut self.slots[slot as usize], state);
        self.counts.moved(old, state);
    }

    /// An idle connection of the least loaded worker.
    #[inline]
    fn take_idle(&mut self) -> Option<Taken<C>> {
        let w = self.idle_index.most_idle()?;
        let worker = &mut self.workers[w];
        let (slot, conn) = worker.idle.pop()?;
        let generation = worker.generation;
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
    fn make_available(&mut self, w: usize, slot: u32, generation: u64, conn: C) -> Aftermath<C> {
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
        self.workers[w].idle.push((slot, conn));
        if !suspect {
            self.idle_index.increment(w);
        }
        self.set_state(slot, SlotState::Idle);
        after
    }

    #[inline]
    fn release(
        &mut self,
        slot: u32,
        generation: u64,
        conn: Option<C>,
        clean: bool,
    ) -> Aftermath<C> {
        let w = self.worker_index(slot);
        let (serving, worker_generation) = (self.workers[w].serving, self.workers[w].generation);
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
                } else if serving {
                    self.set_state(slot, SlotState::Reconnecting);
                    let generation = worker_generation;
                    after.reconnect = Some((w, Request::Reconnect { slot, generation }));
                } else {
                    self.set_state(slot, SlotState::Down);
                }
                after
            }
        };
        after.drained = self.closing && self.counts.get(SlotState::Busy) == 0;
        after
    }
}
