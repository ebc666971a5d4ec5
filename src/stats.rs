//! Counters and the [`Stats`] snapshot.
//!
//! Allocation and restart counters live inside the pool's lock, which their
//! events take anyway; event outcomes are counted with relaxed atomics, outside it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::worker::WorkerId;

/// Where a slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SlotState {
    /// Connected and free.
    Idle,
    /// Held by an event (or a waiter it was just handed to).
    Busy,
    /// Its connection was closed and a new one is being established.
    Reconnecting,
    /// Its worker process is down or restarting.
    Down,
    /// The pool has shut down.
    Closed,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkerState {
    /// Its process is being launched.
    Starting,
    /// Its process is up and its slots are served.
    Running,
    /// Its process is up but may be blocked: one of its events ran past the
    /// event timeout, or a heartbeat probe is overdue. It gets no new events
    /// until its liveness probe answers; if the probe fails it is restarted.
    Suspect,
    /// Its process ended; a new one will be launched after a backoff.
    Restarting,
    /// It is being replaced (a reload or a recycle) or removed (the pool
    /// shrank): it gets no new events and its events in flight finish, within
    /// [`RestartPolicy::terminate_grace`](crate::RestartPolicy::terminate_grace).
    Draining,
    /// It restarted too often and is left down.
    Failed,
    /// The pool shut it down.
    Stopped,
}

/// Nuclio's worker-allocation counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllocationStats {
    /// Every acquire, whatever its outcome.
    pub count: u64,
    /// Acquires that found a free slot at once.
    pub immediate: u64,
    /// Acquires that got a slot after waiting.
    pub after_wait: u64,
    /// Acquires that waited `acquire_timeout`, or their call's own bound
    /// ([`Pool::acquire_within`](crate::Pool::acquire_within)), in vain.
    pub timeout: u64,
    /// Acquires refused because `max_waiters` were already waiting.
    pub queue_full: u64,
    /// Total time waited by the acquires counted in `after_wait`. Each wait
    /// runs from joining the queue until the slot was granted, or a little
    /// later: it ends at a clock read the pool made under its lock after the
    /// grant (under contention, the next acquire to join reads one), and at
    /// the latest when the acquire took the slot.
    pub wait_duration_sum: Duration,
}

/// Outcomes of events sent through [`Slot::call`](crate::Slot::call) (and so
/// through `dispatch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventStats {
    /// Answered by the worker.
    pub ok: u64,
    /// Failed for any reason but the event timeout.
    pub error: u64,
    /// Ran past `event_timeout`.
    pub timed_out: u64,
}

/// WebSocket exchanges, counted by the transport that runs them (the socket
/// transport's `net::Event::websocket` events, feature `net`) and kept apart from [`EventStats`]: a WebSocket holds its slot for the
/// socket's whole life, so `busy - open` is the slots that HTTP (or plain)
/// events occupy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebSocketStats {
    /// Open now: each holds one busy slot.
    pub open: u64,
    /// Opened since the transport was made (accepted or not).
    pub opened: u64,
    /// Client messages sent to the worker's apps.
    pub messages_to_worker: u64,
    /// Messages the worker's apps sent to their clients.
    pub messages_from_worker: u64,
}

/// Connections marked for restart, by how re-establishing them went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionRestartStats {
    /// Re-established.
    pub ok: u64,
    /// Every attempt failed, which restarts the worker.
    pub failed: u64,
}

/// Why worker processes stopped serving and were replaced, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartReasons {
    /// The process exited by itself (a crash, an OOM kill, a `sys.exit`).
    pub exited: u64,
    /// Connections marked for restart could not be re-established, so the
    /// process was terminated.
    pub reconnect_failed: u64,
    /// The process failed a liveness probe (its event loop was blocked or
    /// wedged) and was terminated.
    pub unresponsive: u64,
    /// A launch failed, hung or panicked before the process served.
    pub launch_failed: u64,
    /// The process served `max_events_per_worker` events and was replaced,
    /// new before old (see [`PoolConfig`](crate::PoolConfig#recycling)).
    pub recycled_events: u64,
    /// The process's resident memory passed `max_worker_rss` and it was
    /// replaced, new before old (see [`PoolConfig`](crate::PoolConfig#recycling)).
    pub recycled_rss: u64,
    /// The process was replaced by [`Pool::reload`](crate::Pool::reload).
    pub reloaded: u64,
    /// One of its events ran past `event_timeout` and it was replaced, new
    /// before old, with
    /// [`PoolConfig::recycle_after_event_timeout`](crate::PoolConfig::recycle_after_event_timeout).
    pub recycled_event_timeout: u64,
}

impl RestartReasons {
    /// Recycles for either bound: `recycled_events + recycled_rss`.
    ///
    /// # Examples
    ///
    /// ```
    /// let reasons = async_worker_pool::RestartReasons::default();
    /// assert_eq!(reasons.recycled(), 0);
    /// ```
    pub fn recycled(&self) -> u64 {
        self.recycled_events + self.recycled_rss
    }
}

/// One worker, as the snapshot saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Which worker.
    pub id: WorkerId,
    /// Its state.
    pub state: WorkerState,
    /// Its current (or last) process generation; 0 before the first launch.
    pub generation: u64,
    /// Its current process id, if it has one.
    pub pid: Option<u32>,
    /// Its idle slots.
    pub idle: usize,
    /// Its busy slots: its events running now (for a WSGI worker, whose
    /// slots are its threads, its busy threads).
    pub busy: usize,
    /// It has events in flight and has given no prompt answer (one within
    /// [`PoolConfig::stall_after`](crate::PoolConfig::stall_after) of its
    /// event's start) for that long: new events go to a worker that
    /// progressed later while one has a free slot (see
    /// [Worker choice](crate::PoolConfig#worker-choice)).
    pub stalled: bool,
    /// How many times its process was relaunched.
    pub restarts: u64,
    /// Why its last launch failed or its last process ended, if one did: the
    /// first thing to read when a worker keeps restarting.
    pub last_error: Option<String>,
}

impl WorkerStats {
    /// A worker in `state` with nothing else to report yet: generation 0, no
    /// pid, no slot, no restart, no error. For hosts that build stats in tests.
    pub fn new(id: WorkerId, state: WorkerState) -> Self {
        Self {
            id,
            state,
            generation: 0,
            pid: None,
            idle: 0,
            busy: 0,
            stalled: false,
            restarts: 0,
            last_error: None,
        }
    }
}

/// A consistent snapshot of the pool, taken under its lock.
///
/// `Stats::default()` is an empty snapshot (no slot, no worker), for hosts
/// that build one in their own tests, field by field.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use async_worker_pool::{InProcessLauncher, InProcessTransport, Pool, WorkerState};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let echo = InProcessTransport::new(|worker, event: String| async move {
///     Ok::<_, std::io::Error>(format!("{worker}:{event}"))
/// });
/// let pool = Pool::builder(echo, InProcessLauncher)
///     .num_workers(2)
///     .max_connections(3)
///     .build()?;
/// pool.ready(Duration::from_secs(5)).await?;
/// pool.dispatch("hello".into()).await?;
///
/// let stats = pool.stats();
/// assert_eq!((stats.capacity, stats.idle, stats.busy), (6, 6, 0));
/// assert_eq!(stats.allocations.count, 1);
/// assert_eq!(stats.allocations.immediate, 1);
/// assert_eq!(stats.events.ok, 1);
/// assert!(stats.workers.iter().all(|worker| worker.state == WorkerState::Running));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Slots of every worker: `num_workers × max_connections`, plus while a
    /// resize or a reload is under way the slots still being added or removed
    /// (the spare worker of a reload, slots closing before their removal).
    pub capacity: usize,
    /// Slots by state; the five add up to `capacity`.
    pub idle: usize,
    /// See [`SlotState::Busy`].
    pub busy: usize,
    /// See [`SlotState::Reconnecting`].
    pub reconnecting: usize,
    /// See [`SlotState::Down`].
    pub down: usize,
    /// See [`SlotState::Closed`].
    pub closed: usize,
    /// Events waiting for a slot.
    pub waiters: usize,
    /// Nuclio's allocation counters.
    pub allocations: AllocationStats,
    /// Event outcomes; WebSocket exchanges are counted apart, in `websockets`.
    pub events: EventStats,
    /// WebSocket exchanges: open now, opened, and messages each way (from
    /// [`Transport::websocket_stats`](crate::Transport::websocket_stats)).
    pub websockets: WebSocketStats,
    /// Connection restarts.
    pub connection_restarts: ConnectionRestartStats,
    /// Worker process relaunches, all workers together.
    pub worker_restarts: u64,
    /// Why worker processes stopped serving, all workers together.
    pub restart_reasons: RestartReasons,
    /// Per worker, in id order.
    pub workers: Vec<WorkerStats>,
}

/// Slot counts by state, kept exact on every transition.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SlotCounts {
    counts: [usize; 5],
}

impl SlotCounts {
    #[inline]
    pub(crate) fn moved(&mut self, from: SlotState, to: SlotState) {
        self.counts[from as usize] -= 1;
        self.counts[to as usize] += 1;
    }

    /// `n` slots in `state` join the table.
    pub(crate) fn add(&mut self, state: SlotState, n: usize) {
        self.counts[state as usize] += n;
    }

    /// A slot in `state` leaves the table.
    pub(crate) fn remove(&mut self, state: SlotState) {
        self.counts[state as usize] -= 1;
    }

    pub(crate) fn all_down(capacity: usize) -> Self {
        let mut counts = [0; 5];
        counts[SlotState::Down as usize] = capacity;
        Self { counts }
    }

    #[inline]
    pub(crate) fn get(&self, state: SlotState) -> usize {
        self.counts[state as usize]
    }
}

/// Event outcomes, counted outside the lock.
#[derive(Debug, Default)]
pub(crate) struct EventCounters {
    ok: AtomicU64,
    error: AtomicU64,
    timed_out: AtomicU64,
}

impl EventCounters {
    pub(crate) fn ok(&self) {
        self.ok.fetch_add(1, Relaxed);
    }

    pub(crate) fn error(&self) {
        self.error.fetch_add(1, Relaxed);
    }

    pub(crate) fn timed_out(&self) {
        self.timed_out.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> EventStats {
        EventStats {
            ok: self.ok.load(Relaxed),
            error: self.error.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
        }
    }
}
