//! Issue item 13: every counter of the Stats snapshot after a scripted scenario.

mod support;

use std::time::Duration;

use async_worker_pool::{PoolError, WorkerExit, WorkerState};
use support::{Action, Req, harness, settle};

#[tokio::test(start_paused = true)]
async fn every_counter_matches_a_scripted_scenario() {
    let h = harness(|b| {
        b.num_workers(2)
            .max_connections(2)
            .event_timeout(Duration::from_secs(1))
            .acquire_timeout(Duration::from_secs(2))
    })
    .await;

    // Two events served at once.
    for id in 0..2 {
        h.pool.dispatch(Req::now(id)).await.unwrap();
    }
    // Every slot held: an event waits 500 ms for one.
    let mut held: Vec<_> = Vec::new();
    for _ in 0..4 {
        held.push(h.pool.acquire().await.unwrap());
    }
    let stats = h.pool.stats();
    assert_eq!((stats.busy, stats.idle), (4, 0));
    assert_eq!(stats.workers[0].busy + stats.workers[1].busy, 4);
    let waiter = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.dispatch(Req::now(2)).await }
    });
    settle().await;
    assert_eq!(h.pool.stats().waiters, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    held.pop();
    waiter.await.unwrap().unwrap();
    // Every slot held again: an event waits the full 2 s in vain.
    held.push(h.pool.acquire().await.unwrap());
    assert!(matches!(
        h.pool.dispatch(Req::now(3)).await,
        Err(PoolError::AcquireTimeout { .. })
    ));
    drop(held);
    // One event times out, one fails in the transport; both connections restart.
    let hang = Req {
        id: 4,
        action: Action::Hang,
    };
    assert!(matches!(
        h.pool.dispatch(hang).await,
        Err(PoolError::EventTimeout { .. })
    ));
    let fail = Req {
        id: 5,
        action: Action::Fail,
    };
    assert!(matches!(
        h.pool.dispatch(fail).await,
        Err(PoolError::Transport { .. })
    ));
    h.until("both connections restarted", |s| {
        s.connection_restarts.ok == 2 && s.idle == 4
    })
    .await;
    // Worker 1's process dies and is relaunched.
    h.launcher.kill(1, WorkerExit::signal(9));
    let stats = h
        .until("worker 1 back", |s| {
            s.workers[1].generation == 2 && s.idle == 4
        })
        .await;

    assert_eq!(stats.capacity, 4);
    assert_eq!(
        (
            stats.idle,
            stats.busy,
            stats.reconnecting,
            stats.down,
            stats.closed
        ),
        (4, 0, 0, 0, 0)
    );
    assert_eq!(stats.waiters, 0);
    let a = stats.allocations;
    assert_eq!(a.count, 11);
    assert_eq!(a.immediate, 9);
    assert_eq!(a.after_wait, 1);
    assert_eq!(a.timeout, 1);
    assert_eq!(a.queue_full, 0);
    assert_eq!(a.wait_duration_sum, Duration::from_millis(500));
    assert_eq!(
        (stats.events.ok, stats.events.error, stats.events.timed_out),
        (3, 1, 1)
    );
    assert_eq!(
        (
            stats.connection_restarts.ok,
            stats.connection_restarts.failed
        ),
        (2, 0)
    );
    assert_eq!(stats.worker_restarts, 1);
    let workers: Vec<_> = stats
        .workers
        .iter()
        .map(|w| {
            (
                w.id.index(),
                w.state,
                w.generation,
                w.restarts,
                w.idle,
                w.busy,
            )
        })
        .collect();
    assert_eq!(
        workers,
        [
            (0, WorkerState::Running, 1, 0, 2, 0),
            (1, WorkerState::Running, 2, 1, 2, 0),
        ]
    );
    assert_eq!(stats.workers[0].pid, Some(1000));
    assert_eq!(stats.workers[1].pid, Some(1002));
}

#[tokio::test(start_paused = true)]
async fn slots_of_a_restarting_worker_show_as_down() {
    let h = harness(|b| b.num_workers(2).max_connections(3)).await;
    h.launcher.script(0, [support::LaunchRule::Hang]);
    h.launcher.kill(0, WorkerExit::code(1));
    let stats = h.until("worker 0 restarting", |s| s.down == 3).await;
    assert_eq!(stats.idle, 3);
    assert_ne!(stats.workers[0].state, WorkerState::Running);
    assert_eq!(stats.workers[0].pid, None);
}
