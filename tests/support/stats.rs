//! Waiting for a pool's stats to show something, and the invariant every
//! snapshot keeps.

use std::time::Duration;

use async_worker_pool::{Pool, Stats, Transport};
use tokio::time::{Instant, sleep};

/// How long a pool of Python workers may take to connect all its slots: a
/// thousand connections to a fresh interpreter on a busy 2-core machine.
pub const STARTUP: Duration = Duration::from_secs(20);

/// How often [`wait_for`] looks: often enough not to slow a test down, seldom
/// enough to leave the cores to the worker processes it waits for.
const REAL_POLL: Duration = Duration::from_millis(10);

/// Polls the pool's stats until `done` holds, and returns those stats; panics
/// naming `what` with the last stats after `limit`. For pools of real
/// workers, on the real clock.
pub async fn wait_for<T: Transport>(
    pool: &Pool<T>,
    what: &str,
    limit: Duration,
    done: impl FnMut(&Stats) -> bool,
) -> Stats {
    poll(pool, what, limit, REAL_POLL, done).await
}

/// Waits until every slot of the pool is connected and idle.
pub async fn until_full<T: Transport>(pool: &Pool<T>) -> Stats {
    wait_for(pool, "every slot to be idle", STARTUP, |s| {
        s.idle == s.capacity
    })
    .await
}

/// Polls `pool.stats()` every `every` until `done` holds. `limit` and `every`
/// are on tokio's clock: on a paused clock, waiting costs no real time.
pub async fn poll<T: Transport>(
    pool: &Pool<T>,
    what: &str,
    limit: Duration,
    every: Duration,
    mut done: impl FnMut(&Stats) -> bool,
) -> Stats {
    let deadline = Instant::now() + limit;
    loop {
        let stats = pool.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for {what}; last stats: {stats:#?}"
        );
        sleep(every).await;
    }
}

/// Every slot is in exactly one state, in every snapshot.
pub fn assert_slots_add_up(stats: &Stats) {
    assert_eq!(
        stats.idle + stats.busy + stats.reconnecting + stats.down + stats.closed,
        stats.capacity,
        "slot states must add up to capacity: {stats:?}"
    );
}
