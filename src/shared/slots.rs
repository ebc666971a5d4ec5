//! The slot state machine: every transition of a slot, under the pool's lock.
//! A slot is in exactly one [`SlotState`]; the counts follow each move; a
//! freed slot goes to the oldest waiter before the idle list; a slot that
//! must go (a draining worker's, one above a shrunk segment's target) is
//! closed instead of reused.

// The pool's shared state is one type; its parts are split by concern.
#[allow(clippy::wildcard_imports)]
use super::*;

impl<C> WorkerEntry<C> {
    pub(super) fn new(connections: usize) -> Self {
        Self {
            slots: vec![SlotState::Down; connections],
            busy: 0,
            target: connections,
            draining: false,
            shedding: false,
            released: 0,
            recycle_at: u64::MAX,
            started: Instant::now(),
            idle: Vec::with_capacity(connections),
            generation: 0,
            serving: false,
            suspect: false,
            state: WorkerState::Starting,
            pid: None,
            restarts: 0,
            last_error: None,
            last_cause: None,
            progress: Progress::default(),
            never_launched: false,
        }
    }

    pub(super) fn busy(&self) -> usize {
        self.busy
    }

    /// Every slot the worker keeps is connected.
    pub(super) fn connected(&self) -> bool {
        self.slots[..self.target.min(self.slots.len())]
            .iter()
            .all(|&s| matches!(s, SlotState::Idle | SlotState::Busy))
    }
}

impl<C> Core<C> {
    #[inline]
    pub(super) fn state(&self, slot: SlotId) -> SlotState {
        self.workers[slot.worker as usize].slots[slot.local as usize]
    }

    #[inline]
    pub(super) fn set_state(&mut self, slot: SlotId, state: SlotState) {
        let entry = &mut self.workers[slot.worker as usize];
        let old = std::mem::replace(&mut entry.slots[slot.local as usize], state);
        entry.busy = entry.busy + usize::from(state == SlotState::Busy)
            - usize::from(old == SlotState::Busy);
        self.counts.moved(old, state);
    }

    /// `slot` goes to an event: busy, and its worker's progress told, with
    /// `now` if the caller read the clock already.
    #[inline]
    pub(super) fn set_busy(&mut self, slot: SlotId, now: Option<Instant>) {
        let first = self.workers[slot.worker as usize].busy == 0;
        self.set_state(slot, SlotState::Busy);
        self.taken(slot, first, now);
    }

    /// An idle connection of the worker that [`choose_worker`](Self::choose_worker)
    /// names. With `may_hold`, none when the event is better held in the queue for
    /// an answering worker (see `can_hold`).
    #[inline]
    pub(super) fn take_idle(&mut self, may_hold: bool) -> Option<Taken<C>> {
        // One clock read serves the choice and the record of the take.
        let now = self.times_answers().then(Instant::now);
        let w = self.choose_worker(now, may_hold)?;
        self.take_from(w, now)
    }

    /// An idle connection of worker `w`, taken at `now` if the caller read
    /// the clock.
    #[inline]
    fn take_from(&mut self, w: usize, now: Option<Instant>) -> Option<Taken<C>> {
        let worker = &mut self.workers[w];
        let (local, conn) = worker.idle.pop()?;
        let generation = worker.generation;
        let slot = SlotId::new(w as u32, local);
        self.idle_index.decrement(w);
        self.set_busy(slot, now);
        Some(Taken {
            slot,
            generation,
            conn,
            waited: None,
        })
    }

    /// Hands free slots to the waiters held for a worker that answers (see
    /// `can_hold`) once the oldest has waited `stall_after`, unless the
    /// only free slots are a stalled worker's and another that progressed
    /// later still has events in flight: then the hold goes on, up to
    /// `HOLD_LIMIT` times `stall_after`. Returns when to look again while
    /// some are still held; the wakers to wake go to `wake`.
    pub(super) fn release_held(&mut self, now: Instant, wake: &mut Vec<Waker>) -> Option<Instant> {
        let stall_after = self.stall_after.filter(|_| self.holds())?;
        let hold_limit = stall_after.saturating_mul(HOLD_LIMIT);
        while let Some(since) = self.waiters.front_since() {
            let waited = now.saturating_duration_since(since);
            if waited < stall_after {
                return Some(since + stall_after);
            }
            let Some(w) = self.choose_worker(Some(now), false) else {
                break;
            };
            if waited < hold_limit && self.keeps_holding(w, now) {
                return Some(since + hold_limit);
            }
            let Some(taken) = self.take_from(w, Some(now)) else {
                break;
            };
            let granted = Outcome::Granted {
                slot: taken.slot,
                generation: taken.generation,
                conn: taken.conn,
            };
            match self.waiters.pop_front(granted) {
                Ok(waker) => wake.extend(waker),
                Err(Outcome::Granted {
                    slot,
                    generation,
                    conn,
                }) => {
                    let _ = self.make_available(slot.worker as usize, slot, generation, conn, None);
                    break;
                }
                Err(_) => break,
            }
        }
        None
    }

    /// A usable connection of worker `w`: to the oldest waiter if there is one,
    /// else idle. `now` is the time when the caller read the clock.
    #[inline]
    pub(super) fn make_available(
        &mut self,
        w: usize,
        slot: SlotId,
        generation: u64,
        conn: C,
        now: Option<Instant>,
    ) -> Aftermath<C> {
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
                    self.set_busy(slot, now);
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
    pub(super) fn sheds(&self, slot: SlotId) -> bool {
        let entry = &self.workers[slot.worker as usize];
        entry.draining || slot.local as usize >= entry.target
    }

    /// Closes a freed slot of a draining or shrinking worker.
    #[cold]
    pub(super) fn shed(&mut self, slot: SlotId, conn: C) -> Aftermath<C> {
        self.shed_state(slot);
        self.trim(slot.worker as usize);
        let mut after = Aftermath::none();
        after.close = Some(conn);
        after.shed = true;
        after
    }

    /// A slot that will not be reused: closed if it is to be removed, else
    /// down until the worker's next generation connects it.
    pub(super) fn shed_state(&mut self, slot: SlotId) {
        let target = self.workers[slot.worker as usize].target;
        let state = if slot.local as usize >= target {
            SlotState::Closed
        } else {
            SlotState::Down
        };
        self.set_state(slot, state);
    }

    /// Removes the slots beyond worker `w`'s target once all are closed.
    pub(super) fn trim(&mut self, w: usize) {
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
    pub(super) fn release(
        &mut self,
        slot: SlotId,
        generation: u64,
        conn: Option<C>,
        clean: bool,
    ) -> Aftermath<C> {
        let w = slot.worker as usize;
        // Read once, for the answer and for a waiter that takes the slot.
        let now = self.answered(slot);
        let entry = &mut self.workers[w];
        let (serving, worker_generation) = (entry.serving, entry.generation);
        entry.released += 1;
        let recycle = entry.released == entry.recycle_at;
        let current = serving && worker_generation == generation;
        let mut after = match conn {
            Some(conn) if clean && current && !self.closed => {
                self.make_available(w, slot, generation, conn, now)
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
            after.recycle = Some((w, worker_generation, Replacement::Events));
        }
        after.drained = self.closing && self.counts.get(SlotState::Busy) == 0;
        after
    }
}
