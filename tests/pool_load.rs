//! Load: a hundred thousand events, ten thousand at a time, through two real
//! Python workers with a thousand connections each. Every event either gets
//! its own answer or fails with an acquire timeout, all of them are counted,
//! and the host's memory stays bounded.

mod support;

use std::time::Duration;

use async_worker_pool::PoolError;
use async_worker_pool::net::Event;
use async_worker_pool::process::raise_fd_limit;
use support::real::{is_alive, python_pool, returned_body, worker_pids};
use support::stats::until_full;
use tokio::task::JoinSet;
use tokio::time::Instant;

const EVENTS: usize = 100_000;
const CONCURRENCY: usize = 10_000;
const WORKERS: usize = 2;
const CONNECTIONS: usize = 1000;
/// Peak resident memory allowed to the whole test process. Ten thousand
/// waiting events and two thousand connections need a few tens of MiB; this
/// bound is generous so that only a leak (memory growing with the number of
/// events) trips it.
const RSS_BOUND_KIB: u64 = 256 * 1024;

/// A line of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_events_ten_thousand_at_a_time_all_accounted_for() {
    let wanted = (WORKERS * CONNECTIONS * 2 + 256) as u64;
    let limit = raise_fd_limit(wanted).unwrap();
    assert!(
        limit >= wanted,
        "the open-file limit is {limit}, {wanted} needed"
    );
    let pool = python_pool("echo:handler", WORKERS, CONNECTIONS, |b| {
        // Heartbeats every 500 ms, so that many probes meet the full load.
        b.acquire_timeout(Duration::from_secs(10))
            .event_timeout(Duration::from_secs(30))
            .probe_interval(Duration::from_millis(500))
    });
    let pids = worker_pids(&until_full(&pool).await);
    let rss_before = status_kib("VmRSS");

    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for task in 0..CONCURRENCY {
        let pool = pool.clone();
        tasks.spawn(async move {
            let (mut ok, mut timed_out) = (0_u64, 0_u64);
            // Task t sends events t, t + CONCURRENCY, t + 2 * CONCURRENCY, ...
            for id in (task..EVENTS).step_by(CONCURRENCY) {
                let body = format!("event {id}");
                match pool.dispatch(Event::plain(body.clone())).await {
                    Ok(reply) => {
                        assert_eq!(returned_body(reply), body, "another event's answer");
                        ok += 1;
                    }
                    Err(PoolError::AcquireTimeout { waited }) => {
                        assert!(waited >= Duration::from_secs(10), "{waited:?}");
                        timed_out += 1;
                    }
                    Err(other) => panic!("event {id} failed with {other:?}"),
                }
            }
            (ok, timed_out)
        });
    }
    let (mut ok, mut timed_out) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (o, t) = joined.unwrap();
        ok += o;
        timed_out += t;
    }
    let wall = started.elapsed();
    let stats = pool.stats();
    let peak_kib = status_kib("VmHWM");
    println!(
        "load: {EVENTS} events at concurrency {CONCURRENCY} on {WORKERS} x {CONNECTIONS} slots in \
         {wall:.1?} ({:.0}/s): ok={ok} acquire_timeout={timed_out}; \
         RSS {rss_before} KiB before, peak (VmHWM) {peak_kib} KiB",
        EVENTS as f64 / wall.as_secs_f64()
    );

    assert_eq!(ok + timed_out, EVENTS as u64, "events without an outcome");
    assert_eq!(stats.allocations.count, EVENTS as u64);
    assert_eq!(stats.events.ok, ok);
    assert_eq!(stats.allocations.timeout, timed_out);
    assert_eq!(stats.events.error + stats.events.timed_out, 0, "{stats:?}");
    assert_eq!(stats.worker_restarts, 0);
    // Busy workers are probed like idle ones and must never fail a probe.
    assert_eq!(stats.restart_reasons, Default::default(), "{stats:?}");
    assert_eq!((stats.idle, stats.waiters), (stats.capacity, 0));
    assert!(
        peak_kib < RSS_BOUND_KIB,
        "peak RSS {peak_kib} KiB is over {RSS_BOUND_KIB} KiB"
    );

    pool.shutdown(Duration::from_secs(5)).await;
    for pid in pids {
        assert!(!is_alive(pid), "worker {pid} survived the shutdown");
    }
}
