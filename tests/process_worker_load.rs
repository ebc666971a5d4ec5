//! Issue item 6, under load: a thousand connections really open on one Python
//! worker, and a thousand events really running at once on two.
//!
//! The two tests take turns (see [`one_at_a_time`]): on two cores, a thousand
//! connections being opened would distort the other test's wall time.

mod support;

use std::time::Duration;

use async_worker_pool::net::Event;
use support::real::{python_pool, returned_body};
use support::stats::until_full;
use tokio::sync::{Mutex, MutexGuard};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Serializes the tests of this file.
async fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::const_new(());
    TURN.lock().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_holds_a_thousand_open_connections() {
    let _turn = one_at_a_time().await;
    let pool = python_pool("introspect:handler", 1, 1000, |b| b);
    let stats = until_full(&pool).await;
    assert_eq!(stats.idle, 1000);
    assert_eq!(stats.workers[0].idle, 1000);

    // Counted from the worker's side: its open sockets and its tasks.
    let body = returned_body(pool.dispatch(Event::plain("")).await.unwrap());
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let sockets = seen["sockets"].as_u64().unwrap();
    let tasks = seen["tasks"].as_u64().unwrap();
    println!(
        "worker {} holds {sockets} sockets and {tasks} tasks",
        seen["pid"]
    );
    assert!(sockets >= 1000, "the worker holds {sockets} sockets");
    // Idle connections cost the worker no task: framing is done by a protocol
    // object per connection, and a task runs only while an event does.
    assert!(tasks <= 3, "the worker runs {tasks} tasks");
    assert_eq!(seen["pid"].as_u64(), stats.workers[0].pid.map(u64::from));
    assert_eq!(pool.stats().idle, 1000);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_run_a_thousand_sleeping_events_at_once() {
    let _turn = one_at_a_time().await;
    const EVENTS: usize = 5000;
    let pool = python_pool("sleepy:handler", 2, 500, |b| {
        b.acquire_timeout(Duration::from_secs(30))
            .event_timeout(Duration::from_secs(30))
    });
    until_full(&pool).await;

    let started = Instant::now();
    let mut events = JoinSet::new();
    for _ in 0..EVENTS {
        let pool = pool.clone();
        events.spawn(async move { pool.dispatch(Event::plain("0.2")).await });
    }
    let mut ok = 0;
    while let Some(joined) = events.join_next().await {
        let body = returned_body(joined.unwrap().unwrap());
        assert_eq!(body, "0.2");
        ok += 1;
    }
    let wall = started.elapsed();
    println!("{EVENTS} events of 0.2 s on 2 x 500 connections took {wall:?} (ideal 1 s)");

    assert_eq!(ok, EVENTS);
    // Five rounds of a thousand is the least it can take; one event per worker
    // at a time would take 500 s, one per connection of one worker 2 s.
    assert!(wall >= Duration::from_secs(1), "{wall:?}");
    assert!(wall < Duration::from_secs(3), "{wall:?}");
    let stats = pool.stats();
    assert_eq!(stats.events.ok, EVENTS as u64);
    assert_eq!(stats.allocations.count, EVENTS as u64);
    assert!(
        stats.allocations.after_wait >= (EVENTS - 1000) as u64,
        "{stats:?}"
    );
    assert_eq!(stats.idle, 1000);
    assert_eq!(stats.worker_restarts, 0);
    pool.shutdown(Duration::from_secs(5)).await;
}
