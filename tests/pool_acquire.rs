//! Issue items 2, 3, 7 and 11: concurrency equals capacity, a fair wait queue with
//! a timeout, late binding past a stuck worker, and the waiter cap.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_worker_pool::PoolError;
use support::{Req, harness, settle};
use tokio::time::Instant;

const SLOW: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn start_up_opens_workers_times_connections() {
    let h = harness(|b| b.num_workers(2).max_connections(3)).await;
    let stats = h.pool.stats();
    assert_eq!(stats.capacity, 6);
    assert_eq!(stats.idle, 6);
    assert_eq!(
        h.transport
            .connects
            .load(std::sync::atomic::Ordering::SeqCst),
        6
    );
    assert_eq!(
        h.transport.live.load(std::sync::atomic::Ordering::SeqCst),
        6
    );
    for worker in &stats.workers {
        assert_eq!(worker.idle, 3);
        assert_eq!(worker.generation, 1);
        assert!(worker.pid.is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_exactly_capacity_and_the_rest_wait() {
    let h = harness(|b| b.num_workers(2).max_connections(3)).await;
    let started = Instant::now();
    let events: Vec<_> = (0..10)
        .map(|id| {
            let pool = h.pool.clone();
            tokio::spawn(async move { pool.dispatch(Req::reply(id, SLOW)).await })
        })
        .collect();
    settle().await;
    let stats = h.pool.stats();
    assert_eq!(stats.busy, 6, "{stats:?}");
    assert_eq!(stats.waiters, 4, "{stats:?}");
    assert_eq!(
        h.transport
            .received
            .load(std::sync::atomic::Ordering::SeqCst),
        6
    );
    for (id, event) in events.into_iter().enumerate() {
        let resp = event.await.unwrap().expect("every event is served");
        assert_eq!(resp.id, id as u64);
    }
    // Two rounds of one second each: six at once, then the four that waited.
    assert_eq!(started.elapsed(), 2 * SLOW);
    let stats = h.pool.stats();
    assert_eq!(stats.allocations.immediate, 6);
    assert_eq!(stats.allocations.after_wait, 4);
    assert_eq!(stats.events.ok, 10);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order_as_soon_as_a_slot_frees() {
    let h = harness(|b| b.max_connections(1)).await;
    let held = h.pool.acquire().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for n in 0..5 {
        let (pool, order) = (h.pool.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let slot = pool.acquire().await.expect("served before the timeout");
            order.lock().unwrap().push((n, Instant::now()));
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(slot);
        }));
        // Arrive one after the other.
        settle().await;
    }
    assert_eq!(h.pool.stats().waiters, 5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let freed_at = Instant::now();
    drop(held);
    for waiter in waiters {
        waiter.await.unwrap();
    }
    let order = order.lock().unwrap();
    let served: Vec<_> = order.iter().map(|&(n, _)| n).collect();
    assert_eq!(served, [0, 1, 2, 3, 4]);
    // The first waiter got the slot the moment it was freed, each next one the
    // moment its predecessor let go.
    for (i, &(_, at)) in order.iter().enumerate() {
        assert_eq!(at - freed_at, Duration::from_millis(100) * i as u32);
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_fails_with_acquire_timeout_saying_how_long_it_waited() {
    let h = harness(|b| b.max_connections(1)).await;
    let _held = h.pool.acquire().await.unwrap();
    let started = Instant::now();
    let error = h.pool.dispatch(Req::now(1)).await.unwrap_err();
    match error {
        PoolError::AcquireTimeout { waited } => {
            assert_eq!(waited, Duration::from_secs(10));
            assert_eq!(started.elapsed(), Duration::from_secs(10));
        }
        other => panic!("expected AcquireTimeout, got {other:?}"),
    }
    assert!(error.to_string().contains("10s"), "{error}");
    let stats = h.pool.stats();
    assert_eq!(stats.allocations.timeout, 1);
    assert_eq!(stats.waiters, 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_bounds_its_own_wait_below_the_pools_acquire_timeout() {
    let h = harness(|b| b.max_connections(1)).await;
    // A free slot is taken even with no time to wait.
    let held = h.pool.acquire_within(Duration::ZERO).await.unwrap();
    let started = Instant::now();
    let error = h
        .pool
        .dispatch_within(Req::now(1), Duration::from_millis(250))
        .await
        .unwrap_err();
    assert!(
        matches!(error, PoolError::AcquireTimeout { waited } if waited == Duration::from_millis(250)),
        "{error:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(error.kind(), "acquire_timeout");
    // Counted as the pool's own timeout is, and nobody is left queued.
    let stats = h.pool.stats();
    assert_eq!((stats.allocations.timeout, stats.waiters), (1, 0));
    // A bound longer than the pool's is cut to the pool's (10 s).
    let error = h
        .pool
        .acquire_within(Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(error, PoolError::AcquireTimeout { waited } if waited == Duration::from_secs(10)),
        "{error:?}"
    );
    assert_eq!(h.pool.stats().allocations.timeout, 2);
    // And the slot, once free, still serves a bounded call.
    drop(held);
    let reply = h
        .pool
        .dispatch_within(Req::now(2), Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(reply.id, 2);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_waiter_does_not_take_the_next_free_slot() {
    let h = harness(|b| b.max_connections(1).acquire_timeout(Duration::from_secs(1))).await;
    let held = h.pool.acquire().await.unwrap();
    let early = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.dispatch(Req::now(1)).await }
    });
    settle().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let late = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.dispatch(Req::now(2)).await }
    });
    settle().await;
    // The early waiter gives up at 1 s; the slot frees at 1.2 s and goes to the late one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        early.await.unwrap(),
        Err(PoolError::AcquireTimeout { .. })
    ));
    drop(held);
    assert_eq!(late.await.unwrap().unwrap().id, 2);
    assert_eq!(h.pool.stats().idle, 1);
}

#[tokio::test(start_paused = true)]
async fn late_binding_serves_every_event_from_the_healthy_worker_while_one_is_stuck() {
    const CONNS: usize = 4;
    // Probes off: late binding alone, as in Nuclio's model where nothing
    // replaces a blocked worker (tests/pool_liveness.rs has the probes).
    let h = harness(|b| {
        b.num_workers(2)
            .max_connections(CONNS)
            .acquire_timeout(Duration::from_secs(60))
            .probe_timeout(None)
            .probe_interval(None)
    })
    .await;
    h.transport.set_stuck(0, true);
    let started = Instant::now();
    let events: Vec<_> = (0..100)
        .map(|id| {
            let pool = h.pool.clone();
            tokio::spawn(async move {
                let result = pool.dispatch(Req::reply(id, SLOW)).await;
                (result, started.elapsed())
            })
        })
        .collect();
    // Whenever an event waits, the healthy worker has no free slot.
    let watcher = tokio::spawn({
        let pool = h.pool.clone();
        async move {
            for _ in 0..400 {
                let stats = pool.stats();
                if stats.waiters > 0 {
                    assert_eq!(stats.workers[1].idle, 0, "{stats:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let mut served = 0;
    let mut stuck = Vec::new();
    let mut last_done = Duration::ZERO;
    for event in events {
        // `timeout_at` polls the event first, so one already done always counts.
        match tokio::time::timeout_at(started + Duration::from_secs(30), event).await {
            Ok(joined) => {
                let (result, done_at) = joined.unwrap();
                let resp = result.expect("served by the healthy worker");
                last_done = last_done.max(done_at);
                assert_eq!(resp.worker, 1);
                served += 1;
            }
            Err(_) => stuck.push(()),
        }
    }
    // At most the stuck worker's own slots hold events; the healthy worker runs
    // the rest at its full concurrency of CONNS at once.
    assert_eq!(stuck.len(), CONNS);
    assert_eq!(served, 100 - CONNS);
    let rounds = (served as u32).div_ceil(CONNS as u32);
    let stats = h.pool.stats();
    assert_eq!(stats.events.ok, served as u64);
    assert_eq!(stats.workers[0].busy, CONNS);
    watcher.await.unwrap();
    // No event waited behind the stuck worker: the healthy one finished the lot
    // in exactly as many rounds as its own concurrency needs.
    assert_eq!(last_done, SLOW * rounds);
}

#[tokio::test(start_paused = true)]
async fn beyond_max_waiters_dispatch_fails_at_once_with_queue_full() {
    let h = harness(|b| b.max_connections(1).max_waiters(2)).await;
    let _held = h.pool.acquire().await.unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|id| {
            let pool = h.pool.clone();
            tokio::spawn(async move { pool.dispatch(Req::now(id)).await })
        })
        .collect();
    settle().await;
    assert_eq!(h.pool.stats().waiters, 2);
    let started = Instant::now();
    let error = h.pool.dispatch(Req::now(9)).await.unwrap_err();
    assert!(
        matches!(error, PoolError::QueueFull { max_waiters: 2 }),
        "{error:?}"
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(h.pool.stats().allocations.queue_full, 1);
    drop(waiters);
}

#[tokio::test(start_paused = true)]
async fn owned_slot_moves_into_a_spawned_task_and_comes_back_on_drop() {
    let h = harness(|b| b.max_connections(1)).await;
    let mut slot = h.pool.acquire_owned().await.unwrap();
    let worker = slot.worker();
    let task = tokio::spawn(async move {
        let resp = slot.call(Req::now(11)).await.unwrap();
        // The slot is still held here: the pool has nothing idle.
        (resp, slot)
    });
    let (resp, slot) = task.await.unwrap();
    assert_eq!((resp.id, resp.worker), (11, worker.index()));
    assert_eq!(h.pool.stats().busy, 1);
    drop(slot);
    let stats = h.until("the owned slot is back", |s| s.idle == 1).await;
    assert_eq!(stats.busy, 0);
    // A clean owned slot goes back to the idle slots and serves the next event.
    assert_eq!(h.pool.dispatch(Req::now(12)).await.unwrap().id, 12);
}

#[tokio::test(start_paused = true)]
async fn an_owned_slot_that_outlives_every_pool_handle_ends_without_hanging() {
    let h = harness(|b| b.max_connections(1)).await;
    let mut slot = h.pool.acquire_owned().await.unwrap();
    let support::Harness {
        pool, transport, ..
    } = h;
    drop(pool);
    settle().await;
    // The workers are gone with the pool; the call ends one way or the other,
    // and giving the slot back to a pool that is gone is harmless.
    let outcome = tokio::time::timeout(Duration::from_secs(60), slot.call(Req::now(13))).await;
    match outcome.expect("the call ends") {
        Ok(resp) => assert_eq!(resp.id, 13),
        Err(error) => assert!(
            matches!(error, PoolError::Closed | PoolError::WorkerExited { .. }),
            "{error:?}"
        ),
    }
    drop(slot);
    settle().await;
    assert_eq!(
        transport.live.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no connection outlives the pool and its last slot"
    );
}
