//! Issue item 12: graceful shutdown, and dropping the pool without one.

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use async_worker_pool::{PoolError, WorkerState};
use support::{Req, harness, settle};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn shutdown_refuses_new_events_wakes_waiters_and_lets_in_flight_events_finish() {
    let h = harness(|b| b.num_workers(2).max_connections(1)).await;
    let in_flight: Vec<_> = (0..2)
        .map(|id| {
            let pool = h.pool.clone();
            tokio::spawn(async move { pool.dispatch(Req::reply(id, Duration::from_secs(1))).await })
        })
        .collect();
    let waiter = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.dispatch(Req::now(9)).await }
    });
    settle().await;
    assert_eq!(h.pool.stats().waiters, 1);

    let started = Instant::now();
    let shutdown = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.shutdown(Duration::from_secs(5)).await }
    });
    settle().await;
    assert!(matches!(waiter.await.unwrap(), Err(PoolError::Closed)));
    assert!(matches!(
        h.pool.dispatch(Req::now(10)).await,
        Err(PoolError::Closed)
    ));
    for (id, event) in in_flight.into_iter().enumerate() {
        assert_eq!(event.await.unwrap().unwrap().id, id as u64);
    }
    shutdown.await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "shutdown ends once the in-flight events are done, not after the grace"
    );
    let stats = h.pool.stats();
    assert_eq!(stats.closed, stats.capacity);
    assert!(
        stats
            .workers
            .iter()
            .all(|w| w.state == WorkerState::Stopped)
    );
    assert_eq!(h.transport.live.load(SeqCst), 0, "every connection closed");
    assert_eq!(h.launcher.alive.load(SeqCst), 0, "every process reaped");
    let terminated = h.launcher.terminated.lock().unwrap().clone();
    assert_eq!(terminated.len(), 2);
    assert!(
        terminated
            .iter()
            .all(|&(_, grace)| grace == Duration::from_secs(5))
    );
}

#[tokio::test(start_paused = true)]
async fn events_still_running_after_the_grace_fail_with_closed() {
    let h = harness(|b| b.max_connections(1)).await;
    let long = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.dispatch(Req::reply(1, Duration::from_secs(60))).await }
    });
    settle().await;
    let started = Instant::now();
    h.pool.shutdown(Duration::from_secs(2)).await;
    assert!(matches!(long.await.unwrap(), Err(PoolError::Closed)));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let stats = h.pool.stats();
    assert_eq!(stats.closed, stats.capacity);
    assert_eq!(h.transport.live.load(SeqCst), 0);
    assert_eq!(h.launcher.alive.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn terminate_gets_the_grace_and_a_worker_ignoring_it_is_still_reaped() {
    let h = harness(|b| b.max_connections(1)).await;
    h.launcher.ignore_term.store(true, SeqCst);
    let started = Instant::now();
    h.pool.shutdown(Duration::from_secs(3)).await;
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3),
        "waited the grace for the stubborn process"
    );
    assert_eq!(h.launcher.alive.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_pool_without_shutdown_stops_its_tasks_and_processes() {
    let h = harness(|b| b.num_workers(3).max_connections(4)).await;
    let (transport, launcher) = (h.transport.clone(), h.launcher.clone());
    assert_eq!(launcher.alive.load(SeqCst), 3);
    assert_eq!(transport.live.load(SeqCst), 12);
    drop(h);
    settle().await;
    assert_eq!(
        launcher.alive.load(SeqCst),
        0,
        "no process outlives the pool"
    );
    assert_eq!(
        transport.live.load(SeqCst),
        0,
        "no connection outlives the pool"
    );
    // And nothing keeps running: no further launches or connects happen.
    let attempts = transport.connect_attempts.load(SeqCst);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(transport.connect_attempts.load(SeqCst), attempts);
    assert_eq!(launcher.attempts(0), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_twice_is_harmless() {
    let h = harness(|b| b.max_connections(2)).await;
    h.pool.shutdown(Duration::from_secs(1)).await;
    h.pool.shutdown(Duration::from_secs(1)).await;
    assert_eq!(h.launcher.terminated.lock().unwrap().len(), 1);
    assert!(matches!(h.pool.acquire().await, Err(PoolError::Closed)));
}

#[tokio::test(start_paused = true)]
async fn a_second_shutdown_shortens_the_grace_and_returns_only_when_the_pool_is_down() {
    let h = harness(|b| b.max_connections(2)).await;
    h.launcher.ignore_term.store(true, SeqCst);
    // An event held past both graces keeps the first shutdown draining.
    let held = h.pool.acquire().await.unwrap();
    let first = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.shutdown(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.shutdown(Duration::from_secs(2)).await }
    });
    settle().await;
    assert!(
        !second.is_finished(),
        "returned while the first still drains"
    );
    first.await.unwrap();
    second.await.unwrap();
    // The process got the shorter grace, and the pool was down for both calls.
    let terminated = h.launcher.terminated.lock().unwrap().clone();
    assert_eq!(terminated.len(), 1);
    assert_eq!(terminated[0].1, Duration::from_secs(2));
    drop(held);
    let stats = h.pool.stats();
    assert_eq!(stats.closed, stats.capacity, "{stats:?}");
    assert_eq!(stats.workers[0].state, WorkerState::Stopped);
}
