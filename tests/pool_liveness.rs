//! Worker liveness on the paused clock: a worker whose event times out is
//! probed at once and gets no new events meanwhile (suspect); a probe that
//! fails gets it terminated with a short grace and relaunched (unresponsive);
//! a heartbeat finds a blocked worker when no event timeout is set; a slow but
//! live worker is cleared and keeps its process.
//!
//! A "stuck" worker of the in-memory transport answers neither events nor
//! connects, as a Python worker blocked in `time.sleep` does.

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use async_worker_pool::{PoolError, WorkerState};
use support::{Action, ConnectRule, Req, harness, settle};
use tokio::time::Instant;

const EVENT_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `elapsed` is `expected` give or take the 1 ms polling steps of the harness.
#[track_caller]
fn assert_near(elapsed: Duration, expected: Duration) {
    let slack = Duration::from_millis(2);
    assert!(
        elapsed + slack >= expected && elapsed <= expected + slack,
        "took {elapsed:?}, expected {expected:?}"
    );
}

fn hang(id: u64) -> Req {
    Req {
        id,
        action: Action::Hang,
    }
}

#[tokio::test(start_paused = true)]
async fn a_blocked_worker_is_suspect_after_an_event_timeout_and_replaced_when_its_probe_fails() {
    let h = harness(|b| {
        b.num_workers(2)
            .max_connections(2)
            .event_timeout(EVENT_TIMEOUT)
            .probe_timeout(PROBE_TIMEOUT)
            .probe_interval(None)
    })
    .await;
    h.transport.set_stuck(0, true);
    // Two events each way: the two on worker 0 hang until their timeout.
    let started = Instant::now();
    let first: Vec<_> = (0..4)
        .map(|id| {
            let pool = h.pool.clone();
            tokio::spawn(async move { pool.dispatch(Req::now(id)).await })
        })
        .collect();
    let mut timed_out = 0;
    for event in first {
        match event.await.unwrap() {
            Ok(resp) => assert_eq!(resp.worker, 1),
            Err(PoolError::EventTimeout { worker, .. }) => {
                assert_eq!(worker.index(), 0);
                timed_out += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(timed_out, 2);
    assert_eq!(started.elapsed(), EVENT_TIMEOUT);
    settle().await;
    let stats = h.pool.stats();
    assert_eq!(stats.workers[0].state, WorkerState::Suspect, "{stats:#?}");

    // While the probe is outstanding every event goes to worker 1.
    for id in 10..30 {
        let resp = h.pool.dispatch(Req::now(id)).await.unwrap();
        assert_eq!(resp.worker, 1);
    }

    // The probe fails one probe timeout after the event timeout: the worker is
    // terminated with the short grace and relaunched after the first backoff.
    h.transport.set_stuck(0, false);
    let stats = h
        .until("worker 0 relaunched", |s| s.workers[0].generation == 2)
        .await;
    assert_near(
        started.elapsed(),
        EVENT_TIMEOUT + PROBE_TIMEOUT + Duration::from_millis(100),
    );
    assert_eq!(stats.restart_reasons.unresponsive, 1);
    assert_eq!(stats.restart_reasons.exited, 0);
    assert_eq!(stats.worker_restarts, 1);
    let error = stats.workers[0].last_error.as_deref().unwrap_or_default();
    assert!(error.starts_with("unresponsive: "), "{error}");
    let terminated = h.launcher.terminated.lock().unwrap().clone();
    assert_eq!(terminated.len(), 1);
    assert_eq!(terminated[0].1, Duration::from_millis(500));
    h.until("every slot idle again", |s| s.idle == s.capacity)
        .await;
    assert_eq!(h.pool.stats().workers[0].state, WorkerState::Running);
}

#[tokio::test(start_paused = true)]
async fn a_slow_but_live_worker_is_cleared_and_its_waiters_get_its_idle_slots() {
    let h = harness(|b| {
        b.max_connections(2)
            .event_timeout(EVENT_TIMEOUT)
            .probe_timeout(PROBE_TIMEOUT)
            .probe_interval(None)
    })
    .await;
    // The probe's connect (and the replacement connection's) takes 300 ms.
    h.transport
        .set_connect(None, None, ConnectRule::After(Duration::from_millis(300)));
    let error = h
        .pool
        .dispatch(Req::reply(1, Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(matches!(error, PoolError::EventTimeout { .. }), "{error:?}");
    settle().await;
    let stats = h.pool.stats();
    assert_eq!(stats.workers[0].state, WorkerState::Suspect);
    assert_eq!(
        stats.workers[0].idle, 1,
        "the other connection is idle, but not handed out"
    );

    let waited = Instant::now();
    let pool = h.pool.clone();
    let event = tokio::spawn(async move { pool.dispatch(Req::now(2)).await });
    settle().await;
    assert_eq!(h.pool.stats().waiters, 1);
    let resp = event.await.unwrap().unwrap();
    assert_eq!(resp.id, 2);
    assert_eq!(waited.elapsed(), Duration::from_millis(300));
    let stats = h.pool.stats();
    assert_eq!(stats.workers[0].state, WorkerState::Running);
    assert_eq!(stats.worker_restarts, 0);
    assert_eq!(stats.restart_reasons.unresponsive, 0);
    assert_eq!(stats.workers[0].generation, 1);
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_finds_a_blocked_worker_with_no_event_timeout() {
    let h = harness(|b| {
        b.max_connections(2)
            .probe_timeout(PROBE_TIMEOUT)
            .probe_interval(Duration::from_secs(5))
    })
    .await;
    let started = Instant::now();
    h.transport.set_stuck(0, true);
    // With no event timeout an event on a blocked worker would wait for ever.
    let pool = h.pool.clone();
    let in_flight = tokio::spawn(async move { pool.dispatch(hang(1)).await });

    // The heartbeat probe is due at 5 s; a quarter of the probe timeout later
    // it is overdue and the worker suspect.
    h.until("worker 0 suspect", |s| {
        s.workers[0].state == WorkerState::Suspect
    })
    .await;
    assert_near(
        started.elapsed(),
        Duration::from_secs(5) + PROBE_TIMEOUT / 4,
    );
    match in_flight.await.unwrap() {
        Err(PoolError::WorkerUnresponsive { worker, generation }) => {
            assert_eq!((worker.index(), generation), (0, 1));
        }
        other => panic!("expected WorkerUnresponsive, got {other:?}"),
    }
    assert_near(started.elapsed(), Duration::from_secs(5) + PROBE_TIMEOUT);
    h.transport.set_stuck(0, false);
    let stats = h
        .until("worker 0 back", |s| {
            s.workers[0].generation == 2 && s.idle == s.capacity
        })
        .await;
    assert_eq!(stats.restart_reasons.unresponsive, 1);
}

#[tokio::test(start_paused = true)]
async fn a_healthy_worker_passes_every_heartbeat() {
    let h = harness(|b| {
        b.num_workers(2)
            .max_connections(4)
            .probe_interval(Duration::from_secs(5))
    })
    .await;
    // A minute of heartbeats under a steady trickle of events.
    for id in 0..600 {
        h.pool
            .dispatch(Req::reply(id, Duration::from_millis(100)))
            .await
            .unwrap();
    }
    let stats = h.pool.stats();
    assert_eq!(stats.worker_restarts, 0);
    assert_eq!(stats.restart_reasons.unresponsive, 0);
    assert!(
        stats
            .workers
            .iter()
            .all(|w| w.state == WorkerState::Running)
    );
    // The probes went through connect: twelve per worker in the minute.
    assert!(
        h.transport
            .connects
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 8 + 2 * 11
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_never_answers_ends_failed_by_the_restart_intensity_limit() {
    let h = harness(|b| {
        b.max_connections(1)
            .probe_timeout(PROBE_TIMEOUT)
            .probe_interval(Duration::from_secs(5))
    })
    .await;
    h.transport.set_stuck(0, true);
    let stats = h
        .until("worker 0 failed", |s| {
            s.workers[0].state == WorkerState::Failed
        })
        .await;
    assert_eq!(stats.worker_restarts, 5, "{stats:#?}");
    assert_eq!(stats.restart_reasons.unresponsive, 6);
    assert!(matches!(
        h.pool.dispatch(Req::now(1)).await,
        Err(PoolError::NoWorkerAvailable)
    ));
}

#[tokio::test(start_paused = true)]
async fn with_probes_off_a_blocked_worker_is_left_alone() {
    let h = harness(|b| {
        b.max_connections(1)
            .event_timeout(EVENT_TIMEOUT)
            .probe_timeout(None)
            .probe_interval(None)
    })
    .await;
    h.transport.set_stuck(0, true);
    let error = h.pool.dispatch(Req::now(1)).await.unwrap_err();
    assert!(matches!(error, PoolError::EventTimeout { .. }));
    tokio::time::sleep(Duration::from_secs(20)).await;
    let stats = h.pool.stats();
    assert_eq!(stats.workers[0].state, WorkerState::Running);
    assert_eq!(stats.worker_restarts, 0);
}

#[tokio::test(start_paused = true)]
async fn a_host_out_of_file_descriptors_keeps_its_worker_serving_on_the_connections_it_has() {
    let h = harness(|b| {
        b.max_connections(2)
            .probe_timeout(PROBE_TIMEOUT)
            .probe_interval(Some(Duration::from_secs(1)))
    })
    .await;
    // Every probe (a fresh connect) fails for lack of a descriptor, for
    // longer than the restart-intensity window would allow restarts.
    h.transport.set_connect(None, None, ConnectRule::OutOfFiles);
    for id in 0..90 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let resp = h.pool.dispatch(Req::now(id)).await.unwrap();
        assert_eq!(resp.generation, 1);
    }
    let stats = h.pool.stats();
    assert_eq!(stats.workers[0].state, WorkerState::Running, "{stats:#?}");
    assert_eq!(stats.worker_restarts, 0);
    assert!(
        h.transport.connect_attempts.load(SeqCst) > 90,
        "it kept probing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_lost_while_the_host_is_out_of_descriptors_is_back_as_soon_as_one_frees() {
    let h = harness(|b| {
        b.max_connections(2)
            .event_timeout(EVENT_TIMEOUT)
            .probe_timeout(PROBE_TIMEOUT)
            .probe_interval(Some(Duration::from_secs(5)))
    })
    .await;
    h.transport.set_connect(None, None, ConnectRule::OutOfFiles);
    // The timed-out event's connection is restarted while no descriptor is free.
    let error = h.pool.dispatch(hang(1)).await.unwrap_err();
    assert!(matches!(error, PoolError::EventTimeout { .. }), "{error:?}");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let stats = h.pool.stats();
    assert_eq!((stats.idle, stats.reconnecting), (1, 1), "{stats:#?}");
    assert_eq!(stats.worker_restarts, 0);
    assert_eq!(stats.connection_restarts.failed, 0);

    let freed = Instant::now();
    h.transport.set_connect(None, None, ConnectRule::Ok);
    let stats = h
        .until("both connections idle, the worker running", |s| {
            s.idle == 2 && s.workers[0].state == WorkerState::Running
        })
        .await;
    assert!(
        freed.elapsed() <= Duration::from_millis(60),
        "back {:?} after a descriptor came free",
        freed.elapsed()
    );
    assert_eq!(stats.worker_restarts, 0);
    assert_eq!(stats.connection_restarts.ok, 1);
}
