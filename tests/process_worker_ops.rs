//! Issue 14 with real Python workers: reload, recycling (by event count and by
//! memory) and resizing, each under a load of events that must all succeed.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use async_worker_pool::net::Event;
use bytes::Bytes;
use support::real::{RealPool, is_alive, python_pool, returned_body, worker_pids};
use support::stats::{until_full, wait_for};
use tokio::task::JoinHandle;

/// `clients` tasks sending 20 ms events back to back until `stop` is set;
/// each returns how many it sent, and panics on a failed one.
fn load(pool: &RealPool, clients: usize) -> (Vec<JoinHandle<usize>>, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..clients)
        .map(|_| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.load(SeqCst) {
                    let reply = pool.dispatch(Event::plain(Bytes::from("0.02"))).await;
                    let reply = reply.unwrap_or_else(|error| panic!("an event failed: {error:?}"));
                    assert_eq!(returned_body(reply).as_ref(), b"0.02");
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    (tasks, stop)
}

async fn finish(tasks: Vec<JoinHandle<usize>>, stop: Arc<AtomicBool>) -> usize {
    stop.store(true, SeqCst);
    let mut sent = 0;
    for task in tasks {
        sent += task.await.expect("no event failed");
    }
    sent
}

/// Waits until every slot is connected (idle or busy: the load keeps some busy).
async fn connected(pool: &RealPool) -> async_worker_pool::Stats {
    wait_for(pool, "every slot connected", Duration::from_secs(20), |s| {
        s.idle + s.busy == s.capacity
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_replaces_real_workers_under_load_with_no_failed_event() {
    let pool = python_pool("sleepy:handler", 2, 10, |b| b);
    let old = worker_pids(&until_full(&pool).await);
    let (tasks, stop) = load(&pool, 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool.reload().await.unwrap();
    let sent = finish(tasks, stop).await;
    let stats = until_full(&pool).await;
    let new = worker_pids(&stats);
    assert_eq!(new.len(), 2);
    assert!(
        new.iter().all(|pid| !old.contains(pid)),
        "{old:?} → {new:?}"
    );
    assert!(old.iter().all(|&pid| !is_alive(pid)));
    assert_eq!(stats.events.error, 0);
    assert_eq!(stats.restart_reasons.reloaded, 2);
    assert!(sent > 0);
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_events_per_worker_recycles_a_real_worker_with_no_failed_event() {
    let pool = python_pool("sleepy:handler", 1, 4, |b| {
        b.max_events_per_worker(50)
            .min_worker_uptime(Duration::ZERO)
    });
    let first = worker_pids(&until_full(&pool).await);
    let (tasks, stop) = load(&pool, 4);
    let stats = wait_for(&pool, "two recycles", Duration::from_secs(60), |s| {
        s.workers.len() == 1 && s.workers[0].generation >= 3
    })
    .await;
    finish(tasks, stop).await;
    assert_eq!(pool.stats().events.error, 0);
    assert!(stats.restart_reasons.recycled_events >= 2, "{stats:#?}");
    assert!(!is_alive(first[0]));
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_worker_rss_recycles_a_real_worker_past_the_limit() {
    // Any interpreter is past 1 MiB: with no minimum uptime, each generation
    // is recycled about a second after it starts serving, over and over, and
    // still no event fails.
    let pool = python_pool("sleepy:handler", 1, 4, |b| {
        b.max_worker_rss(1 << 20).min_worker_uptime(Duration::ZERO)
    });
    let first = worker_pids(&until_full(&pool).await);
    let (tasks, stop) = load(&pool, 2);
    let seen = wait_for(
        &pool,
        "two recycles for memory",
        Duration::from_secs(30),
        |s| s.workers.len() == 1 && s.workers[0].generation >= 3,
    )
    .await;
    assert!(seen.restart_reasons.recycled_rss >= 2, "{seen:#?}");
    finish(tasks, stop).await;
    assert_eq!(pool.stats().events.error, 0);
    assert!(!is_alive(first[0]));
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_workers_and_connections_resize_under_load_with_no_failed_event() {
    // The workers are told to serve 8, the most the pool grows to.
    let pool = python_pool("sleepy:handler", 1, 8, |b| b.max_connections(5));
    until_full(&pool).await;
    let (tasks, stop) = load(&pool, 4);

    pool.set_num_workers(2).await.unwrap();
    let stats = connected(&pool).await;
    assert_eq!((stats.capacity, stats.workers.len()), (10, 2));
    let second = worker_pids(&stats)[1];

    pool.set_max_connections(8).await.unwrap();
    assert_eq!(connected(&pool).await.capacity, 16);
    pool.set_max_connections(2).await.unwrap();
    assert_eq!(pool.stats().capacity, 4);

    pool.set_num_workers(1).await.unwrap();
    let stats = pool.stats();
    assert_eq!((stats.capacity, stats.workers.len()), (2, 1));
    assert!(!is_alive(second), "the removed worker's process is gone");

    let sent = finish(tasks, stop).await;
    assert!(sent > 0);
    assert_eq!(pool.stats().events.error, 0);
    pool.shutdown(Duration::from_secs(2)).await;
}
