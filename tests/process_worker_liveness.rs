//! Liveness with real Python workers: a handler that really blocks its event
//! loop with `time.sleep` costs its worker seconds, not the minute and a half
//! of the reconnect ladder; with two workers nothing fails once the blocked one
//! is suspect; and a thousand concurrent `asyncio.sleep` events never make a
//! busy worker look blocked. The figures are printed for RELIABILITY.md.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_worker_pool::net::Event;
use async_worker_pool::{PoolError, WorkerState};
use support::real::{is_alive, python_pool, returned_body, worker_pids};
use support::stats::{until_full, wait_for};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

const EVENT_TIMEOUT: Duration = Duration::from_millis(500);

/// When each event ended, counted from the start of the load, and its error if any.
type Outcomes = Arc<Mutex<Vec<(Duration, Result<(), String>)>>>;

/// The bound on recovery after the first event timeout of a blocking
/// handler, with the default liveness settings.
const RECOVERY_BOUND: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_handler_costs_its_worker_less_than_three_seconds() {
    // The set-up: one worker, a thousand connections, default liveness.
    let pool = python_pool("faulty:handler", 1, 1000, |b| {
        b.event_timeout(EVENT_TIMEOUT)
            .acquire_timeout(Duration::from_secs(10))
    });
    let old_pid = worker_pids(&until_full(&pool).await)[0];

    let error = pool.dispatch(Event::plain("block")).await.unwrap_err();
    assert!(matches!(error, PoolError::EventTimeout { .. }), "{error:?}");
    let timed_out = Instant::now();
    // Events sent meanwhile wait for a healthy slot instead of failing.
    let mut waiting = JoinSet::new();
    for n in 0..50 {
        let pool = pool.clone();
        waiting.spawn(async move {
            let body = format!("waited {n}");
            let reply = pool.dispatch(Event::plain(body.clone())).await;
            (body, reply, Instant::now())
        });
    }
    let mut first_answer = None;
    while let Some(joined) = waiting.join_next().await {
        let (body, reply, at) = joined.unwrap();
        let reply = reply.unwrap_or_else(|error| panic!("{body} failed: {error:?}"));
        assert_eq!(returned_body(reply), body);
        first_answer = Some(first_answer.map_or(at, |first: Instant| first.min(at)));
    }
    let recovery = first_answer.unwrap() - timed_out;
    println!("liveness: first answer {recovery:?} after the blocking event's timeout");
    assert!(
        recovery <= RECOVERY_BOUND,
        "recovery took {recovery:?}, over {RECOVERY_BOUND:?}"
    );

    let stats = pool.stats();
    assert_eq!(stats.restart_reasons.unresponsive, 1, "{stats:#?}");
    assert_eq!(stats.restart_reasons.reconnect_failed, 0);
    assert_eq!(stats.workers[0].state, WorkerState::Running);
    assert_ne!(stats.workers[0].pid, Some(old_pid));
    let reason = stats.workers[0].last_error.as_deref().unwrap_or_default();
    assert!(reason.starts_with("unresponsive: "), "{reason}");
    assert!(!is_alive(old_pid), "the blocked worker survived");
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_two_workers_blocked_nothing_fails_after_the_first_second() {
    const CONNS: usize = 50;
    const LOOPS: usize = 20;
    let pool = python_pool("faulty:handler", 2, CONNS, |b| {
        b.event_timeout(EVENT_TIMEOUT)
            .acquire_timeout(Duration::from_secs(10))
    });
    let pids = worker_pids(&until_full(&pool).await);

    // A steady flow of echo events; each outcome is kept with its time.
    let outcomes: Outcomes = Arc::default();
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(6);
    let mut loops = JoinSet::new();
    for task in 0..LOOPS {
        let (pool, outcomes) = (pool.clone(), outcomes.clone());
        loops.spawn(async move {
            let mut n = 0;
            while Instant::now() < stop_at {
                let body = format!("echo {task}/{n}");
                let result = match pool.dispatch(Event::plain(body.clone())).await {
                    Ok(reply) => {
                        assert_eq!(returned_body(reply), body);
                        Ok(())
                    }
                    Err(error) => Err(error.to_string()),
                };
                outcomes.lock().unwrap().push((started.elapsed(), result));
                n += 1;
                sleep(Duration::from_millis(5)).await;
            }
        });
    }
    sleep(Duration::from_millis(300)).await;
    let blocked_at = started.elapsed();
    let block = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.dispatch(Event::plain("block")).await })
    };
    let error = block.await.unwrap().unwrap_err();
    let PoolError::EventTimeout { worker, .. } = error else {
        panic!("expected an event timeout, got {error:?}");
    };
    let blocked = worker.index();
    let replaced = wait_for(
        &pool,
        "the blocked worker replaced",
        Duration::from_secs(10),
        |s| {
            s.workers[blocked]
                .pid
                .is_some_and(|pid| pid != pids[blocked])
                && s.workers[blocked].state == WorkerState::Running
        },
    )
    .await;
    let replaced_after = started.elapsed() - blocked_at;
    while let Some(joined) = loops.join_next().await {
        joined.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let late_failures: Vec<_> = outcomes
        .iter()
        .filter(|(at, result)| result.is_err() && *at > blocked_at + Duration::from_secs(1))
        .collect();
    let failures = outcomes.iter().filter(|(_, r)| r.is_err()).count();
    println!(
        "liveness: {} events, {failures} failed (all within the first second), \
         blocked worker replaced {replaced_after:?} after the block",
        outcomes.len()
    );
    assert!(
        late_failures.is_empty(),
        "failed after the first second: {late_failures:?}"
    );
    assert!(
        replaced_after <= Duration::from_secs(5),
        "replaced only after {replaced_after:?}"
    );
    assert_eq!(replaced.restart_reasons.unresponsive, 1);
    assert_eq!(replaced.workers[1 - blocked].pid, Some(pids[1 - blocked]));
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sleeps_never_look_like_a_blocked_worker() {
    const CONNS: usize = 1000;
    // Probes five times a second and an event timeout that half the events
    // run into, so that many probes meet a loop with a thousand tasks on it.
    let pool = python_pool("sleepy:handler", 1, CONNS, |b| {
        b.event_timeout(Duration::from_millis(500))
            .probe_interval(Duration::from_millis(200))
            .acquire_timeout(Duration::from_secs(30))
    });
    until_full(&pool).await;
    let mut events = JoinSet::new();
    for n in 0..3 * CONNS {
        let pool = pool.clone();
        // Half sleep twice the event timeout; their worker must be cleared.
        let secs = if n % 2 == 0 { "0.1" } else { "1.0" };
        events.spawn(async move { (secs, pool.dispatch(Event::plain(secs)).await) });
    }
    let (mut ok, mut timed_out) = (0, 0);
    while let Some(joined) = events.join_next().await {
        match joined.unwrap() {
            (_, Ok(reply)) => {
                returned_body(reply);
                ok += 1;
            }
            // A loaded machine may stretch a short sleep past the timeout too;
            // what may never happen is an unresponsive worker or a lost one.
            (_, Err(PoolError::EventTimeout { .. })) => timed_out += 1,
            (secs, Err(error)) => panic!("a {secs} s sleep failed: {error:?}"),
        }
    }
    let stats = pool.stats();
    println!("liveness: {ok} answered, {timed_out} timed out, no worker found unresponsive");
    assert_eq!(stats.restart_reasons, Default::default(), "{stats:#?}");
    assert_eq!(stats.worker_restarts, 0);
    assert!(
        timed_out >= 3 * CONNS / 2,
        "only {timed_out} events timed out, so few probes followed one"
    );
    pool.shutdown(Duration::from_secs(2)).await;
}
