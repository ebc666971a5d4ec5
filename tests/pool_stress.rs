//! The core under random load: 64 tasks × 2000 dispatches on 16 slots, with
//! random event timeouts, transport errors and cancellations. Every dispatch
//! must get exactly one outcome, the counters must add up, every answer must be
//! its own event's, and every slot must come back idle.

mod support;

use std::time::Duration;

use async_worker_pool::PoolError;
use support::{Action, Req, harness};

const TASKS: u64 = 64;
const PER_TASK: u64 = 2000;

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: u64,
    event_timeout: u64,
    transport: u64,
    acquire_timeout: u64,
    cancelled: u64,
    other: u64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.ok
            + self.event_timeout
            + self.transport
            + self.acquire_timeout
            + self.cancelled
            + self.other
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.event_timeout += other.event_timeout;
        self.transport += other.transport;
        self.acquire_timeout += other.acquire_timeout;
        self.cancelled += other.cancelled;
        self.other += other.other;
    }
}

#[tokio::test(start_paused = true)]
async fn every_dispatch_gets_exactly_one_outcome_under_random_faults() {
    stress(TASKS, PER_TASK, Duration::from_millis(40)).await;
}

/// The same on real threads and the real clock, where wakeups race for the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dispatch_gets_exactly_one_outcome_on_a_multi_thread_runtime() {
    stress(32, 300, Duration::from_millis(4)).await;
}

/// `tasks` × `per_task` dispatches on 2 × 8 slots; event durations run to 9/8 of
/// `event_timeout`, so about one in ten times out.
async fn stress(tasks: u64, per_task: u64, event_timeout: Duration) {
    let seed = std::env::var("STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("stress seed {seed} (set STRESS_SEED to replay)");
    let h = harness(|b| {
        b.num_workers(2)
            .max_connections(8)
            .event_timeout(event_timeout)
    })
    .await;
    let limit_us = event_timeout.as_micros() as u64;

    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let pool = h.pool.clone();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(seed ^ task);
                let mut tally = Tally::default();
                for n in 0..per_task {
                    let id = task * per_task + n;
                    let action = match rng.u32(..100) {
                        0..2 => Action::Fail,
                        _ => Action::Reply(Duration::from_micros(rng.u64(..limit_us * 9 / 8))),
                    };
                    let dispatch = pool.dispatch(Req { id, action });
                    // About 3 % of callers give up somewhere between the queue and the answer.
                    let outcome = if rng.u32(..100) < 3 {
                        let cut = Duration::from_micros(rng.u64(..limit_us * 3 / 2));
                        match tokio::time::timeout(cut, dispatch).await {
                            Ok(outcome) => outcome,
                            Err(_) => {
                                tally.cancelled += 1;
                                continue;
                            }
                        }
                    } else {
                        dispatch.await
                    };
                    match outcome {
                        Ok(resp) => {
                            assert_eq!(resp.id, id, "an answer to another event");
                            tally.ok += 1;
                        }
                        Err(PoolError::EventTimeout { .. }) => tally.event_timeout += 1,
                        Err(PoolError::Transport { .. }) => tally.transport += 1,
                        Err(PoolError::AcquireTimeout { .. }) => tally.acquire_timeout += 1,
                        Err(_) => tally.other += 1,
                    }
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for task in handles {
        tally.add(task.await.expect("no caller panicked"));
    }
    println!("{tally:?}");

    assert_eq!(tally.total(), tasks * per_task, "exactly one outcome each");
    assert_eq!(tally.other, 0, "{tally:?}");
    assert!(tally.ok > 0 && tally.event_timeout > 0 && tally.transport > 0 && tally.cancelled > 0);

    let stats = h
        .until("every slot idle again", |s| s.idle == s.capacity)
        .await;
    assert_eq!(stats.waiters, 0);
    assert_eq!(stats.allocations.count, tasks * per_task);
    let a = stats.allocations;
    let cancelled_waiting = a.count - (a.immediate + a.after_wait + a.timeout + a.queue_full);
    assert!(cancelled_waiting <= tally.cancelled, "{a:?} {tally:?}");
    assert_eq!(a.timeout, tally.acquire_timeout);
    assert_eq!(stats.events.ok, tally.ok);
    assert_eq!(stats.events.timed_out, tally.event_timeout);
    assert_eq!(stats.events.error, tally.transport);
    // Every connection that ended unclean was replaced, and none failed to be.
    assert_eq!(stats.connection_restarts.failed, 0);
    assert!(stats.connection_restarts.ok >= tally.event_timeout + tally.transport);
    assert!(
        stats.connection_restarts.ok <= tally.event_timeout + tally.transport + tally.cancelled
    );
    assert_eq!(stats.worker_restarts, 0);
    assert_eq!(
        h.transport.live.load(std::sync::atomic::Ordering::SeqCst),
        stats.capacity
    );
}
