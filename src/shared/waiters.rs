//! The timing of waiters: polling a queued acquire for its outcome, giving up
//! a place in the queue, and the sweeper that fails waiters whose
//! `acquire_timeout` is up, with one timer for the whole queue.

// The pool's shared state is one type; its parts are split by concern.
#[allow(clippy::wildcard_imports)]
use super::*;

impl<T: Transport> Shared<T> {
    /// Polls a queued waiter: its slot, its error, or pending.
    pub(crate) fn poll_waiter(
        &self,
        key: u32,
        since: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Taken<T::Conn>, PoolError>> {
        let mut core = self.lock();
        // The wait ends at a time read after the grant, if the pool read one
        // (the next acquire to join does, under contention), else now.
        let served = core.waiters.time_after_outcome(key);
        match core.waiters.poll_outcome(key, cx.waker()) {
            None => Poll::Pending,
            Some(Outcome::Granted {
                slot,
                generation,
                conn,
            }) => {
                let served = served.unwrap_or_else(|| core.waiters.read_clock());
                let waited = served.saturating_duration_since(since);
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

    /// Counts an acquire given up by its own bound (`Pool::acquire_within`).
    pub(crate) fn count_acquire_timeout(&self) {
        self.lock().allocations.timeout += 1;
    }

    /// Fails every waiter that has waited `acquire_timeout`, until
    /// the pool closes. Runs as one task per pool.
    ///
    /// One timer serves the whole queue: deadlines rise from front to back, so the
    /// sweeper sleeps until the front waiter's and, when the queue is empty, parks
    /// until a waiter joins. A waiter therefore costs no timer of its own, which
    /// is most of what waiting used to cost under contention.
    pub(crate) async fn expire_waiters(&self) {
        let limit = self.config.acquire_timeout;
        loop {
            let mut expired = Vec::new();
            let next = {
                let mut core = self.lock();
                if core.closing {
                    return;
                }
                let now = core.waiters.read_clock();
                let next_held = core.release_held(now, &mut expired);
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
                        Some(deadline) => {
                            break Some(next_held.map_or(deadline, |held| held.min(deadline)));
                        }
                        // A timeout too long to represent: check back now and then.
                        None => break Some(now + Duration::from_secs(3600)),
                    }
                }
            };
            expired.into_iter().for_each(Waker::wake);
            match next {
                // A held acquire wakes it before the deadline.
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = self.sweep.notified() => {}
                    }
                }
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
}
