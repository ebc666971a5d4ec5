//! The [`Stats`] snapshot, taken under the lock in time proportional to the
//! number of workers, not of slots: every count it reports is kept as slots
//! change state.

// The pool's shared state is one type; its parts are split by concern.
#[allow(clippy::wildcard_imports)]
use super::*;

impl<T: Transport> Shared<T> {
    pub(crate) fn stats(&self) -> Stats {
        let core = self.lock();
        let now = Instant::now();
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
                stalled: core.stalled(w, now),
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
            websockets: self.transport.websocket_stats(),
            connection_restarts: core.connection_restarts,
            worker_restarts: core.worker_restarts,
            restart_reasons: core.restart_reasons,
            workers,
        }
    }
}
