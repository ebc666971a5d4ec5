//! The multiplexed mode of the socket transport with real worker processes
//! (`docs/protocol.md`, "Multiplexing"): which workers it is used with, the
//! file descriptors it saves, and how a cancelled event holds its slot until
//! the worker confirms. The fault suite runs in this mode too, through
//! `support::real::transport` (see `scripts/test.sh`).

mod support;

use std::time::Duration;

use async_worker_pool::net::{Event, SocketTransport};
use async_worker_pool::{Pool, PoolError, ProcessLauncher};
use support::real::{RealPool, python_worker, returned_body, test_worker};
use support::stats::{STARTUP, until_full};
use tokio::task::JoinSet;

/// The tests of this file count the process's sockets, so they run one at a
/// time even where they share a process (`cargo test`).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A pool of one `worker` script (from tests/workers) with `slots` slots, in
/// the multiplexed mode with one physical connection.
fn script_pool(script: &str, slots: usize) -> RealPool {
    let launcher = ProcessLauncher::builder("python3")
        .arg(test_worker(script))
        .connections(slots)
        .build()
        .unwrap();
    Pool::builder(SocketTransport::new().multiplex(1), launcher)
        .max_connections(slots)
        .build()
        .unwrap()
}

/// Whether the slot the pool hands out next is a multiplexed stream.
async fn first_slot_is_multiplexed(pool: &RealPool) -> bool {
    let mut slot = pool.acquire().await.unwrap();
    slot.conn_mut()
        .expect("a fresh slot has its connection")
        .is_multiplexed()
}

/// The host process's open socket descriptors.
fn host_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_acknowledge_multiplex_and_an_older_one_is_served_one_event_per_connection() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let launcher = python_worker("echo:handler", 4).build().unwrap();
    let reference = Pool::builder(SocketTransport::new().multiplex(1), launcher)
        .max_connections(4)
        .build()
        .unwrap();
    let chaos = script_pool("chaos_worker.py", 4);
    // It takes `M` for an event and echoes it: no acknowledgement.
    let older = script_pool("bad_frames.py", 4);
    for (name, pool, multiplexed) in [
        ("reference", &reference, true),
        ("chaos", &chaos, true),
        ("older", &older, false),
    ] {
        until_full(pool).await;
        assert_eq!(first_slot_is_multiplexed(pool).await, multiplexed, "{name}");
        let reply = pool.dispatch(Event::plain("id=1;act=echo")).await;
        assert_eq!(returned_body(reply.unwrap()), "id=1;act=echo", "{name}");
    }
    for pool in [reference, chaos, older] {
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_workers_with_a_thousand_slots_each_fit_in_1024_descriptors() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const WORKERS: usize = 16;
    const SLOTS: usize = 1000;
    const PER_WORKER: usize = 2;
    let before = host_sockets();
    let launcher = python_worker("echo:handler", SLOTS).build().unwrap();
    let pool = Pool::builder(SocketTransport::new().multiplex(PER_WORKER), launcher)
        .num_workers(WORKERS)
        .max_connections(SLOTS)
        .establish_connection_timeout(STARTUP)
        .build()
        .unwrap();
    let stats = until_full(&pool).await;
    assert_eq!(stats.capacity, WORKERS * SLOTS);
    // Every slot busy at once, then idle again.
    let mut events = JoinSet::new();
    for n in 0..WORKERS * SLOTS {
        let pool = pool.clone();
        events.spawn(async move {
            let body = format!("event {n}");
            let reply = pool.dispatch(Event::plain(body.clone())).await.unwrap();
            assert_eq!(returned_body(reply), body);
        });
    }
    while let Some(joined) = events.join_next().await {
        joined.unwrap();
    }
    let sockets = host_sockets() - before;
    assert!(
        sockets <= WORKERS * PER_WORKER,
        "{sockets} sockets for {WORKERS} workers"
    );
    let descriptors = std::fs::read_dir("/proc/self/fd").unwrap().count();
    assert!(
        descriptors < 1024,
        "{descriptors} descriptors open for {WORKERS} x {SLOTS} slots"
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

/// How an event is given up on: by the pool's event timeout, or by its
/// caller, who drops the dispatch.
#[derive(Debug, Clone, Copy)]
enum GiveUp {
    EventTimeout,
    CallerGone,
}

/// Gives up on a minute-long event three times, each time checking that the
/// one slot carries its next event only once the worker has confirmed the
/// cancellation: by then it has counted it, and nothing else runs.
async fn cancelled_before_the_slot_carries_another(give_up: GiveUp) {
    let launcher = python_worker("cancellable:handler", 1).build().unwrap();
    let mut builder =
        Pool::builder(SocketTransport::new().multiplex(1), launcher).max_connections(1);
    if let GiveUp::EventTimeout = give_up {
        builder = builder.event_timeout(Duration::from_millis(300));
    }
    let pool = builder.build().unwrap();
    until_full(&pool).await;
    for round in 1..=3 {
        let sleeping = pool.dispatch(Event::plain("sleep"));
        match give_up {
            GiveUp::EventTimeout => {
                let error = sleeping.await.unwrap_err();
                assert!(matches!(error, PoolError::EventTimeout { .. }), "{error:?}");
            }
            GiveUp::CallerGone => {
                let gone = tokio::time::timeout(Duration::from_millis(300), sleeping).await;
                assert!(gone.is_err(), "{gone:?}");
            }
        }
        let reply = pool.dispatch(Event::plain("count")).await.unwrap();
        let counts: serde_json::Value = serde_json::from_slice(&returned_body(reply)).unwrap();
        assert_eq!(
            counts,
            serde_json::json!({"cancelled": round, "running": 1}),
            "{give_up:?}, round {round}"
        );
    }
    assert_eq!(pool.stats().worker_restarts, 0, "cancelled, not restarted");
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_event_is_cancelled_in_the_worker_before_its_slot_carries_another() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    cancelled_before_the_slot_carries_another(GiveUp::EventTimeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_caller_went_away_is_cancelled_before_its_slot_carries_another() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    cancelled_before_the_slot_carries_another(GiveUp::CallerGone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_another_order_than_asked_reach_their_own_callers() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const SLOTS: usize = 200;
    let launcher = python_worker("sleepy:handler", SLOTS).build().unwrap();
    let pool = Pool::builder(SocketTransport::new().multiplex(2), launcher)
        .max_connections(SLOTS)
        .build()
        .unwrap();
    until_full(&pool).await;
    let mut events = JoinSet::new();
    for n in 0..2 * SLOTS {
        let pool = pool.clone();
        events.spawn(async move {
            // Later events sleep less, so answers overtake one another.
            let body = format!("0.{:03}", 400 - n % 400);
            let reply = pool.dispatch(Event::plain(body.clone())).await.unwrap();
            assert_eq!(returned_body(reply), body);
        });
    }
    while let Some(joined) = events.join_next().await {
        joined.unwrap();
    }
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_fails_exactly_its_events_and_they_reconnect_on_one_new_connection() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const SLOTS: usize = 20;
    let before = host_sockets();
    let launcher = ProcessLauncher::builder("python3")
        .arg(test_worker("chaos_worker.py"))
        .connections(SLOTS)
        .build()
        .unwrap();
    let pool = Pool::builder(SocketTransport::new().multiplex(1), launcher)
        .max_connections(SLOTS)
        .probe_interval(None)
        .build()
        .unwrap();
    until_full(&pool).await;
    let mut events = JoinSet::new();
    for n in 0..SLOTS - 1 {
        let pool = pool.clone();
        events.spawn(async move {
            pool.dispatch(Event::plain(format!("id={n};act=hang")))
                .await
        });
    }
    support::stats::wait_for(&pool, "the hanging events to run", STARTUP, |s| {
        s.busy == SLOTS - 1
    })
    .await;
    // Its worker closes the one physical connection every event shares.
    let closing = pool.dispatch(Event::plain("id=last;act=close")).await;
    assert!(closing.is_err(), "{closing:?}");
    let mut failed = 0;
    while let Some(joined) = events.join_next().await {
        let error = joined.unwrap().unwrap_err();
        assert!(matches!(error, PoolError::Transport { .. }), "{error:?}");
        failed += 1;
    }
    assert_eq!(failed, SLOTS - 1);
    let stats = until_full(&pool).await;
    assert_eq!(stats.worker_restarts, 0);
    assert_eq!(host_sockets() - before, 1, "one new physical connection");
    let reply = pool.dispatch(Event::plain("id=after;act=echo")).await;
    assert_eq!(returned_body(reply.unwrap()), "id=after;act=echo");
    pool.shutdown(Duration::from_secs(2)).await;
}
