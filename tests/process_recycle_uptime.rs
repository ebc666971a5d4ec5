//! Recycling that cannot flap: a handler already past `max_worker_rss` when
//! it is imported gets its worker replaced at most once per
//! `min_worker_uptime`, each replacement counted as a memory recycle, and
//! no event fails meanwhile. Real Python workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use async_worker_pool::net::Event;
use bytes::Bytes;
use tokio::time::{Instant, sleep};

mod support;

use support::real::{python_pool, returned_body};
use support::stats::until_full;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_memory_bound_at_import_is_recycled_once_per_min_uptime() {
    const MIN_UPTIME: Duration = Duration::from_secs(3);
    // The interpreter alone stays under 48 MiB; the handler's module holds 64.
    let pool = python_pool("bloated:handler", 1, 4, |b| {
        b.max_worker_rss(48 << 20).min_worker_uptime(MIN_UPTIME)
    });
    until_full(&pool).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = 0u64;
                while !stop.load(SeqCst) {
                    let reply = pool.dispatch(Event::plain(Bytes::from("ping"))).await;
                    let reply = reply.unwrap_or_else(|error| panic!("an event failed: {error:?}"));
                    assert_eq!(returned_body(reply).as_ref(), b"ping");
                    sent += 1;
                    sleep(Duration::from_millis(20)).await;
                }
                sent
            })
        })
        .collect();

    // Watch the worker's generations for 12 s: when each one began.
    let watch = Instant::now();
    let mut generation = pool.stats().workers[0].generation;
    let mut began = vec![watch];
    while watch.elapsed() < Duration::from_secs(12) {
        let now = pool.stats().workers[0].generation;
        if now != generation {
            generation = now;
            began.push(Instant::now());
        }
        sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, SeqCst);
    let mut sent = 0;
    for client in clients {
        sent += client.await.expect("no event failed");
    }
    let stats = pool.stats();
    let lifetimes: Vec<Duration> = began.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!(
        "figure: a worker past max_worker_rss from import, min_worker_uptime {MIN_UPTIME:?}: \
         {} recycles in 12 s, generations lived {lifetimes:?}; {sent} events, none failed",
        stats.restart_reasons.recycled_rss
    );
    // It is recycled: the bound is enforced ...
    assert!(stats.restart_reasons.recycled_rss >= 2, "{stats:#?}");
    assert_eq!(stats.restart_reasons.recycled_events, 0);
    assert_eq!(stats.restart_reasons.exited, 0);
    // ... but no generation after the first went before the minimum uptime
    // (the first was up before the watch began). A generation's uptime
    // counts from when it serves, a little after the generation number
    // changes, so a lifetime can only be longer than the uptime.
    for lifetime in lifetimes.iter().skip(1) {
        assert!(
            *lifetime >= MIN_UPTIME - Duration::from_millis(100),
            "a generation was replaced after {lifetime:?}: {lifetimes:?}"
        );
    }
    // Without the minimum the worker is replaced about every second.
    assert!(
        stats.restart_reasons.recycled_rss <= 4,
        "{} recycles in 12 s",
        stats.restart_reasons.recycled_rss
    );
    assert_eq!(stats.events.error, 0);
    pool.shutdown(Duration::from_secs(2)).await;
}
