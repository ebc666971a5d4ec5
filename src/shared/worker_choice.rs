//! Which worker takes an event that finds a free slot.
//!
//! The idle index names a worker with the most free slots. Free slots alone
//! cannot tell a worker whose loop is busy (one CPU-bound handler, a WSGI view
//! that holds the GIL) from one whose events only wait on I/O, and a light
//! event sent to the first waits out the whole block. Prompt answers can: a
//! worker whose loop runs answers its short events within `stall_after`, one
//! whose loop is held answers none of them in time (a WSGI worker whose GIL
//! another thread holds still answers, but late). So the choice also reads
//! each worker's [`Progress`]: among workers with as many free slots it
//! prefers the one whose last prompt answer (or first event) is the most
//! recent, and a worker with events in flight that has answered none of them
//! promptly for `stall_after` is passed over for one that progressed later
//! (a prompt answer, or a first event), within a bound. The order of
//! answers is kept by a counter; the time is read once when a slot is taken
//! (for the choice and the record) and once when it is answered, in pools of
//! more than one worker with the policy on.

// The pool's shared state is one type; its parts are split by concern.
#[allow(clippy::wildcard_imports)]
use super::*;

/// How many workers with as many free slots as the first are compared for
/// the most recent progress: a bound, so that a pool of many equally loaded
/// workers does not walk all of them on every acquire.
const TIE_BREAK_PEERS: usize = 4;

/// How many events more than a stalled worker another may come to hold by
/// being chosen in its place, at the least: the most by which a stall that
/// was only a long await can unbalance the workers. Three lets a WSGI worker
/// take the light requests of a burst while its peer's GIL is held; those
/// that find its threads all busy are held for them (see [`HOLD_LIMIT`]).
const STALL_SLACK: usize = 3;

/// Beyond [`STALL_SLACK`], the share of `max_connections` by which the other
/// worker may come to hold more: a burst (the gateway's thread descheduled
/// for a few ms, then sixty requests at once) must not spill onto the
/// stalled worker once three have gone elsewhere. With a thousand
/// connections, 62 events waiting on I/O on one worker more than on another
/// cost nothing.
const STALL_SLACK_SHARE: usize = 16;

/// How long, in `stall_after`s, an event held for an answering worker may
/// wait for one of its slots while the only free ones are a stalled
/// worker's. A held event normally gets the answering worker's next freed
/// slot within a `stall_after` or two; when the host's thread and that
/// worker's share a busy core, it may take a few more (a WSGI worker's
/// threads each answering late by a descheduled millisecond or three), and
/// the stalled worker's slot would mean waiting out the whole stall, most
/// likely longer. Past this, the stall may have been only a long await. In
/// Flask's mixed load (a 50 ms GIL-holding view every 0.2 s beside 1000
/// light requests a second) a limit of one `stall_after` left 53 to 73 of
/// 6,000 lights over 10 ms, four and eight 5 to 15; eight had the lower
/// p99.9 in two runs of three.
pub(super) const HOLD_LIMIT: u32 = 8;

/// A worker's answers, as the choice of worker reads them.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// The pool's progress counter (`Core::ticks`, which moves at every
    /// prompt answer and every first event of a worker) at this worker's
    /// last prompt answer or first event, whichever is later. Among workers
    /// with as many free slots, the one with the latest is preferred.
    quiet_from: u64,
    /// The time of `quiet_from`, when answers are timed: with events in
    /// flight and no prompt answer since for `stall_after`, the worker is
    /// stalled.
    quiet_since: Option<Instant>,
    /// When each of its slots was last taken, by local index, when answers
    /// are timed: an answer later than `stall_after` is not a prompt one.
    taken_at: Vec<Instant>,
}

impl<C> Core<C> {
    /// Whether answers are timed: the policy is on, and there is more than
    /// one worker to choose from.
    #[inline]
    pub(super) fn times_answers(&self) -> bool {
        self.stall_after.is_some() && !self.idle_index.single()
    }

    /// `slot` was taken for an event, at `now` if the caller read the clock;
    /// `first` when its worker had no other event in flight, which is
    /// progress (the start of a fresh spell).
    #[inline]
    pub(super) fn taken(&mut self, slot: SlotId, first: bool, now: Option<Instant>) {
        let now = self
            .times_answers()
            .then(|| now.unwrap_or_else(Instant::now));
        self.ticks += u64::from(first);
        let ticks = self.ticks;
        let progress = &mut self.workers[slot.worker as usize].progress;
        if first {
            progress.quiet_from = ticks;
            progress.quiet_since = now;
        }
        let Some(now) = now else {
            return;
        };
        let local = slot.local as usize;
        if local >= progress.taken_at.len() {
            progress.taken_at.resize(local + 1, now);
        }
        progress.taken_at[local] = now;
    }

    /// `slot` is being answered (released, clean or not). A prompt answer (or
    /// any answer, when answers are not timed) is progress; a late one is not.
    /// Returns the time it read when answers are timed, for a waiter that
    /// takes the slot next.
    #[inline]
    pub(super) fn answered(&mut self, slot: SlotId) -> Option<Instant> {
        let now = self.times_answers().then(Instant::now);
        let progress = &mut self.workers[slot.worker as usize].progress;
        let prompt = match (now, self.stall_after) {
            (Some(now), Some(stall_after)) => progress
                .taken_at
                .get(slot.local as usize)
                .is_some_and(|&taken| now.saturating_duration_since(taken) < stall_after),
            _ => true,
        };
        if prompt {
            self.ticks += 1;
            progress.quiet_from = self.ticks;
            progress.quiet_since = now;
        }
        now
    }

    /// The worker the next event with a free slot goes to, if any slot is
    /// free; `now` is the time when answers are timed. With `may_hold`, none
    /// when the only free slots are a stalled worker's while a worker that
    /// answers promptly will free one soon (see [`Self::can_hold`]).
    #[inline]
    pub(super) fn choose_worker(&self, now: Option<Instant>, may_hold: bool) -> Option<usize> {
        let first = self.idle_index.most_idle()?;
        if self.idle_index.single() {
            return Some(first);
        }
        let mut chosen = first;
        for peer in self.idle_index.peers(first).take(TIE_BREAK_PEERS - 1) {
            if self.workers[peer].progress.quiet_from > self.workers[chosen].progress.quiet_from {
                chosen = peer;
            }
        }
        if let Some(now) = now.filter(|_| self.workers[chosen].busy() > 0) {
            return self.unless_stalled(chosen, now, may_hold);
        }
        Some(chosen)
    }

    /// `w`, unless it is stalled and a worker that progressed since can take
    /// the event in its place: one that is not stalled first, then the one
    /// with the most free slots, then the latest progress. A worker stalled
    /// too still qualifies when it progressed later than `w`: when the
    /// host's own thread was descheduled for a while, every answer read
    /// after it came late, yet the worker that answered then is still a
    /// better bet than the one that has answered nothing since.
    #[cold]
    fn unless_stalled(&self, w: usize, now: Instant, may_hold: bool) -> Option<usize> {
        if !self.stalled(w, now) {
            return Some(w);
        }
        let since = self.workers[w].progress.quiet_since;
        // With the event, the other worker holds at most `slack` more.
        let slack = STALL_SLACK.max(self.max_connections / STALL_SLACK_SHARE);
        let most_busy = self.workers[w].busy() + slack - 1;
        // The rare path: a scan of the workers, unstalled first, then the
        // most free slots, then the latest progress.
        let best = (0..self.idle_index.len())
            .filter(|&other| other != w)
            .filter(|&other| {
                let entry = &self.workers[other];
                let later = entry.busy() == 0 || entry.progress.quiet_since > since;
                self.idle_index.idle(other) > 0 && entry.busy() <= most_busy && later
            })
            .max_by_key(|&other| {
                let progressed = self.workers[other].progress.quiet_from;
                (
                    !self.stalled(other, now),
                    self.idle_index.idle(other),
                    progressed,
                )
            });
        match best {
            Some(other) => Some(other),
            None if may_hold && self.can_hold(w, now) => None,
            None => Some(w),
        }
    }

    /// Whether an event is better held in the queue than sent to stalled
    /// `w`: it may wait at all, there is room in the queue, and fewer events
    /// wait than are in flight on the workers that will free a slot sooner
    /// than `w` (see [`Self::frees_sooner`]). The sweeper hands a held event
    /// a free slot anyway once it has waited `stall_after`, or up to
    /// [`HOLD_LIMIT`] times that while such a worker still has events in
    /// flight.
    fn can_hold(&self, w: usize, now: Instant) -> bool {
        let answering: usize = (0..self.workers.len())
            .filter(|&x| self.frees_sooner(x, w, now))
            .map(|x| self.workers[x].busy())
            .sum();
        let waiting = self.waiters.len();
        self.may_hold && waiting < answering && self.max_waiters.is_none_or(|max| waiting < max)
    }

    /// Whether the events held past `stall_after` are better held still
    /// than given a slot of `w`, the worker that would get the next one: it
    /// is stalled, and another that will free a slot sooner has events in
    /// flight.
    pub(super) fn keeps_holding(&self, w: usize, now: Instant) -> bool {
        self.stalled(w, now)
            && (0..self.workers.len())
                .any(|x| self.frees_sooner(x, w, now) && self.workers[x].busy() > 0)
    }

    /// Whether worker `x`, rather than stalled `w`, is the one to wait for:
    /// it serves, and it is not stalled, or stalled since later than `w`.
    /// When the host's thread was descheduled for a few ms, every answer it
    /// reads afterwards is late and both look stalled; the one that answered
    /// last is still the better bet.
    fn frees_sooner(&self, x: usize, w: usize, now: Instant) -> bool {
        let entry = &self.workers[x];
        x != w
            && entry.serving
            && !entry.suspect
            && !entry.draining
            && (!self.stalled(x, now)
                || entry.progress.quiet_since > self.workers[w].progress.quiet_since)
    }

    /// Events wait in the queue while a worker has a free slot: they were
    /// held for an answering worker (the only way both can be true, since a
    /// freed slot goes to the oldest waiter before the idle list).
    pub(super) fn holds(&self) -> bool {
        !self.waiters.is_empty() && self.idle_index.most_idle().is_some()
    }

    /// Whether `w` is stalled at `now`: events in flight, and no prompt
    /// answer (nor a first event) for `stall_after`.
    pub(super) fn stalled(&self, w: usize, now: Instant) -> bool {
        let entry = &self.workers[w];
        let (Some(stall_after), true) = (self.stall_after, entry.busy() > 0) else {
            return false;
        };
        entry
            .progress
            .quiet_since
            .is_some_and(|since| now.saturating_duration_since(since) >= stall_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL_AFTER: Duration = Duration::from_millis(1);

    /// A core of `workers` workers of `slots` slots each, every slot idle,
    /// with unit connections.
    fn core(workers: usize, slots: usize) -> Core<()> {
        let config = PoolConfig {
            num_workers: workers,
            max_connections: slots,
            stall_after: Some(STALL_AFTER),
            ..PoolConfig::default()
        };
        let mut core = Core::new(&config, Arc::default());
        for w in 0..workers {
            core.workers[w].serving = true;
            for local in 0..slots as u32 {
                let slot = SlotId::new(w as u32, local);
                core.set_state(slot, SlotState::Reconnecting);
                let _ = core.make_available(w, slot, 0, (), None);
            }
        }
        core
    }

    fn take(core: &mut Core<()>) -> SlotId {
        core.take_idle(false).expect("a free slot").slot
    }

    fn answer(core: &mut Core<()>, slot: SlotId) {
        let _ = core.release(slot, 0, Some(()), true);
    }

    /// The worker whose slot the waiter `key` was granted, if it was.
    fn granted_worker(core: &mut Core<()>, key: u32) -> Option<usize> {
        match core.waiters.poll_outcome(key, Waker::noop()) {
            Some(Outcome::Granted { slot, .. }) => Some(slot.worker as usize),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ties_go_to_the_worker_that_answered_last() {
        let mut core = core(3, 4);
        let slots = [take(&mut core), take(&mut core), take(&mut core)];
        let workers: Vec<u32> = slots.iter().map(|s| s.worker).collect();
        assert!(
            workers.contains(&0) && workers.contains(&1) && workers.contains(&2),
            "the shortest queue first: {workers:?}"
        );
        for &slot in &slots {
            answer(&mut core, slot);
        }
        // Every slot is free again; the last worker to answer gets the next.
        assert_eq!(take(&mut core).worker, slots[2].worker);
    }

    /// One event on one worker that stays in flight (the block) for
    /// `for_how_long`, while the other answers a light event promptly every
    /// quarter of `STALL_AFTER`; then two events held on the other, so that
    /// by free slots alone the blocked worker is next. The blocked event's
    /// slot, its worker and the other.
    async fn block_beside_two_held(
        core: &mut Core<()>,
        for_how_long: Duration,
    ) -> (SlotId, usize, usize) {
        let blocked = take(core);
        let (busy, free) = (blocked.worker as usize, 1 - blocked.worker as usize);
        let step = STALL_AFTER / 4;
        let mut waited = Duration::ZERO;
        while waited < for_how_long {
            tokio::time::advance(step).await;
            waited += step;
            let light = take(core);
            assert_eq!(light.worker as usize, free);
            answer(core, light);
        }
        let held = [take(core), take(core)];
        assert!(held.iter().all(|s| s.worker as usize == free), "{held:?}");
        (blocked, busy, free)
    }

    /// On a core of two workers of four slots each, as a WSGI worker of four
    /// threads would have: one blocked as `block_beside_two_held` leaves it,
    /// the other's slots all taken (two of them returned). The blocked
    /// worker, the other, and the two slots taken last.
    async fn full_beside_blocked(core: &mut Core<()>) -> (usize, usize, [SlotId; 2]) {
        let (_, busy, free) = block_beside_two_held(core, STALL_AFTER).await;
        let more = [take(core), take(core)];
        assert!(more.iter().all(|s| s.worker as usize == free));
        assert_eq!(core.workers[free].busy(), 4);
        (busy, free, more)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_worker_is_passed_over_for_one_that_answers() {
        let mut core = core(2, 8);
        let (_, busy, _) = block_beside_two_held(&mut core, STALL_AFTER / 2).await;
        assert_eq!(
            core.choose_worker(Some(Instant::now()), false),
            Some(busy),
            "not yet stalled"
        );

        let mut core = self::core(2, 8);
        let (blocked, busy, free) = block_beside_two_held(&mut core, STALL_AFTER).await;
        assert!(core.stalled(busy, Instant::now()));
        assert!(!core.stalled(free, Instant::now()), "it answered last");
        for _ in 0..STALL_SLACK - 1 {
            assert_eq!(take(&mut core).worker as usize, free);
        }
        // One event against 1 + STALL_SLACK: past the slack, the stalled
        // worker's free slots are used rather than the other's piling up.
        assert_eq!(core.workers[free].busy(), 1 + STALL_SLACK);
        assert_eq!(core.choose_worker(Some(Instant::now()), false), Some(busy));

        // Once its events are done, it is idle, not stalled.
        answer(&mut core, blocked);
        assert!(!core.stalled(busy, Instant::now()));
        assert_eq!(core.choose_worker(Some(Instant::now()), false), Some(busy));
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_waits_for_an_answering_worker_rather_than_a_stalled_one() {
        let mut core = core(2, 4);
        let (busy, free, more) = full_beside_blocked(&mut core).await;
        assert_eq!(core.choose_worker(Some(Instant::now()), false), Some(busy));
        assert!(
            core.take_idle(true).is_none(),
            "held for the answering worker"
        );

        // Held past `stall_after`, the other worker still full: it has
        // events in flight and progressed later, so the hold goes on, and
        // the next slot it frees is the held event's.
        let since = Instant::now();
        let first = core.waiters.push_back(since, None);
        assert!(core.holds());
        let mut wake = Vec::new();
        assert_eq!(
            core.release_held(Instant::now(), &mut wake),
            Some(since + STALL_AFTER),
            "not yet"
        );
        tokio::time::advance(STALL_AFTER).await;
        let limit = since + STALL_AFTER * HOLD_LIMIT;
        assert_eq!(core.release_held(Instant::now(), &mut wake), Some(limit));
        answer(&mut core, more[0]);
        assert_eq!(
            granted_worker(&mut core, first),
            Some(free),
            "the answering worker's freed slot went elsewhere"
        );

        // Held with the answering worker full and freeing none: after
        // `HOLD_LIMIT` stall_afters, the sweeper hands it the stalled
        // worker's free slot after all.
        assert_eq!(
            core.workers[free].busy(),
            4,
            "the granted slot is busy again"
        );
        let since = Instant::now();
        let second = core.waiters.push_back(since, None);
        tokio::time::advance(STALL_AFTER * (HOLD_LIMIT - 1)).await;
        assert_eq!(
            core.release_held(Instant::now(), &mut wake),
            Some(since + STALL_AFTER * HOLD_LIMIT)
        );
        tokio::time::advance(STALL_AFTER).await;
        assert_eq!(core.release_held(Instant::now(), &mut wake), None);
        assert!(!core.holds());
        assert_eq!(
            granted_worker(&mut core, second),
            Some(busy),
            "no slot granted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_waits_for_the_worker_that_answered_last_when_both_look_stalled() {
        // The host's thread was descheduled for a while: the answering
        // worker's answers are late too, and both look stalled. The one
        // whose block began before the other's last prompt answer is still
        // the worse bet.
        let mut core = core(2, 4);
        let (busy, free, more) = full_beside_blocked(&mut core).await;
        tokio::time::advance(STALL_AFTER * 2).await;
        let now = Instant::now();
        assert!(core.stalled(busy, now) && core.stalled(free, now));
        assert!(core.take_idle(true).is_none(), "held for the later one");
        let key = core.waiters.push_back(now, None);
        let mut wake = Vec::new();
        tokio::time::advance(STALL_AFTER).await;
        assert_eq!(
            core.release_held(Instant::now(), &mut wake),
            Some(now + STALL_AFTER * HOLD_LIMIT),
            "held still"
        );
        answer(&mut core, more[1]);
        assert_eq!(
            granted_worker(&mut core, key),
            Some(free),
            "the later worker's freed slot went elsewhere"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_does_not_end_a_stall() {
        // A WSGI worker whose GIL a CPU-bound view holds still answers its
        // other requests, but late: that is no sign its loop is free.
        let mut core = core(2, 8);
        let (_, busy, free) = block_beside_two_held(&mut core, STALL_AFTER / 2).await;
        let late = take(&mut core);
        assert_eq!(late.worker as usize, busy, "not yet stalled");
        // The free worker goes on answering light events promptly.
        for _ in 0..2 {
            tokio::time::advance(STALL_AFTER / 4).await;
            let light = take(&mut core);
            assert_eq!(light.worker as usize, free, "a tie, and it progressed last");
            tokio::time::advance(STALL_AFTER / 4).await;
            answer(&mut core, light);
        }
        // A full `stall_after` after it was taken.
        answer(&mut core, late);
        assert!(core.stalled(busy, Instant::now()));
        assert!(!core.stalled(free, Instant::now()));
        assert_eq!(core.choose_worker(Some(Instant::now()), false), Some(free));
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_busy_worker_is_stalled_the_later_one_takes_the_slack() {
        // Long events everywhere: no answer is prompt and every busy worker
        // is stalled. The one whose first event came later takes up to the
        // slack more, then free slots decide again.
        let mut core = core(2, 8);
        let first = take(&mut core);
        tokio::time::advance(STALL_AFTER / 4).await;
        let second = take(&mut core);
        let (early, late) = (first.worker as usize, second.worker as usize);
        assert_ne!(early, late);
        tokio::time::advance(STALL_AFTER * 10).await;
        assert!(core.stalled(early, Instant::now()));
        assert!(core.stalled(late, Instant::now()));
        // The first by the tie-break, the others past the stall.
        for _ in 0..STALL_SLACK {
            assert_eq!(take(&mut core).worker as usize, late);
        }
        assert_eq!(core.workers[late].busy(), 1 + STALL_SLACK);
        assert_eq!(take(&mut core).worker as usize, early);
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_just_began_is_preferred_to_a_stalled_one() {
        // The host's own thread was descheduled for a while: when it comes
        // back, the free worker has not answered anything yet, but its
        // first event is young, while the other's has been running for
        // longer than `stall_after`.
        let mut core = core(2, 8);
        let blocked = take(&mut core);
        let (busy, free) = (blocked.worker as usize, 1 - blocked.worker as usize);
        tokio::time::advance(STALL_AFTER * 4).await;
        for _ in 0..3 {
            assert_eq!(take(&mut core).worker as usize, free);
        }
        assert!(core.stalled(busy, Instant::now()));
        assert!(!core.stalled(free, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn without_stall_after_only_free_slots_count() {
        let mut core = core(2, 4);
        core.stall_after = None;
        let blocked = take(&mut core);
        let light = take(&mut core);
        answer(&mut core, light);
        let _held = [take(&mut core), take(&mut core)];
        tokio::time::advance(STALL_AFTER * 10).await;
        assert!(!core.stalled(blocked.worker as usize, Instant::now()));
        assert_eq!(
            core.choose_worker(Some(Instant::now()), false),
            Some(blocked.worker as usize)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn equal_events_spread_evenly() {
        // Events of equal length, answered in the order they were sent, with
        // time passing: no worker is starved and none gets more than its share.
        let mut core = core(4, 8);
        let mut in_flight = std::collections::VecDeque::new();
        let mut taken = [0u32; 4];
        for _ in 0..4_000 {
            if in_flight.len() == 12 {
                answer(&mut core, in_flight.pop_front().unwrap());
            }
            let slot = take(&mut core);
            taken[slot.worker as usize] += 1;
            in_flight.push_back(slot);
            tokio::time::advance(Duration::from_micros(300)).await;
        }
        assert!(
            taken.iter().all(|&n| (900..=1100).contains(&n)),
            "{taken:?}"
        );
    }
}
