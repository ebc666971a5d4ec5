//! Issue items 4, 5, 6, 9, 10 and 14: event timeouts, connection restarts, worker
//! restarts, the escalation limits, and faults from the transport and launcher.

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use async_worker_pool::{PoolError, RestartPolicy, WorkerExit, WorkerState};
use support::{Action, ConnectRule, LaunchRule, Req, harness, settle};
use tokio::time::Instant;

fn hang(id: u64) -> Req {
    Req {
        id,
        action: Action::Hang,
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_past_event_timeout_fails_and_its_connection_is_closed_and_replaced() {
    // Liveness probes off: a hung reconnect is what a blocked worker looks like,
    // and this test is about the connection ladder alone (tests/pool_liveness.rs
    // has the probes).
    let h = harness(|b| {
        b.max_connections(2)
            .event_timeout(Duration::from_secs(1))
            .probe_timeout(None)
            .probe_interval(None)
    })
    .await;
    // Hold the replacement connect so that the slot can be seen reconnecting.
    h.transport.set_connect(None, None, ConnectRule::Hang);
    let started = Instant::now();
    let error = h.pool.dispatch(hang(1)).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    match &error {
        PoolError::EventTimeout { worker, timeout } => {
            assert_eq!(worker.index(), 0);
            assert_eq!(*timeout, Duration::from_secs(1));
        }
        other => panic!("expected EventTimeout, got {other:?}"),
    }
    settle().await;
    assert_eq!(h.transport.dropped.load(SeqCst), 1, "the Conn was dropped");
    let stats = h.pool.stats();
    assert_eq!((stats.idle, stats.reconnecting), (1, 1), "{stats:?}");
    assert_eq!(stats.events.timed_out, 1);

    // Meanwhile the other connection serves, and the closed one never comes back.
    let closed_conn = h.pool.dispatch(Req::now(2)).await.unwrap().conn;
    for id in 3..10 {
        assert_eq!(
            h.pool.dispatch(Req::now(id)).await.unwrap().conn,
            closed_conn
        );
    }
    h.transport.set_connect(None, None, ConnectRule::Ok);
    let stats = h.until("the slot reconnected", |s| s.idle == 2).await;
    assert_eq!(stats.connection_restarts.ok, 1);
    assert_eq!(stats.worker_restarts, 0);
    let (a, b) = (
        h.pool.acquire().await.unwrap(),
        h.pool.acquire().await.unwrap(),
    );
    assert_ne!(a.generation(), 0);
    drop((a, b));
    assert_eq!(h.transport.live.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn failed_reconnects_restart_the_worker_exactly_once_for_hundreds_of_connections() {
    const CONNS: usize = 300;
    let h = harness(|b| {
        b.max_connections(CONNS)
            .event_timeout(Duration::from_secs(1))
    })
    .await;
    // Every reconnect to the first process fails; the next process is healthy.
    h.transport.set_connect(Some(0), Some(1), ConnectRule::Fail);
    let events: Vec<_> = (0..CONNS as u64)
        .map(|id| {
            let pool = h.pool.clone();
            tokio::spawn(async move { pool.dispatch(hang(id)).await })
        })
        .collect();
    for event in events {
        assert!(matches!(
            event.await.unwrap(),
            Err(PoolError::EventTimeout { .. })
        ));
    }
    let stats = h
        .until("all slots back on the new process", |s| s.idle == CONNS)
        .await;
    assert_eq!(h.launcher.attempts(0), 2, "launched once, restarted once");
    assert_eq!(stats.worker_restarts, 1);
    assert_eq!(stats.workers[0].restarts, 1);
    assert_eq!(stats.workers[0].generation, 2);
    assert_eq!(stats.workers[0].state, WorkerState::Running);
    assert_eq!(stats.workers[0].pid, Some(1001));
    assert_eq!(stats.connection_restarts.failed, 1);
    let (pid, grace) = h.launcher.terminated.lock().unwrap()[0];
    assert_eq!(
        (pid, grace),
        (1000, RestartPolicy::default().terminate_grace)
    );
    assert_eq!(h.launcher.alive.load(SeqCst), 1, "the old process is gone");
    assert_eq!(h.transport.live.load(SeqCst), CONNS);
    assert_eq!(h.pool.dispatch(Req::now(1)).await.unwrap().generation, 2);
}

#[tokio::test(start_paused = true)]
async fn each_reconnect_attempt_is_bounded_by_establish_connection_timeout() {
    // Probes off, so that the ladder alone restarts the worker.
    let h = harness(|b| {
        b.max_connections(1)
            .event_timeout(Duration::from_secs(1))
            .establish_connection_timeout(Duration::from_secs(2))
            .probe_timeout(None)
            .probe_interval(None)
    })
    .await;
    h.transport.set_connect(Some(0), Some(1), ConnectRule::Hang);
    let attempts_before = h.transport.connect_attempts.load(SeqCst);
    let _ = h.pool.dispatch(hang(1)).await;
    let started = Instant::now();
    h.until("the worker restarted", |s| s.workers[0].generation == 2)
        .await;
    assert_eq!(
        h.transport.connect_attempts.load(SeqCst) - attempts_before,
        3 + 1,
        "three hung attempts on the old process, then one on the new"
    );
    // Three attempts of 2 s with backoffs of 100 ms and 200 ms between them, then
    // the first relaunch backoff of 100 ms (plus the 1 ms polling step).
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(6400) && elapsed <= Duration::from_millis(6402),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_exits_is_noticed_at_once_and_its_events_fail_with_worker_exited() {
    let h = harness(|b| b.num_workers(2).max_connections(2)).await;
    let events: Vec<_> = (0..4)
        .map(|id| {
            let pool = h.pool.clone();
            tokio::spawn(async move { pool.dispatch(hang(id)).await })
        })
        .collect();
    settle().await;
    assert_eq!(h.pool.stats().busy, 4);
    let killed_at = Instant::now();
    h.launcher.kill(0, WorkerExit::signal(9));
    let mut exited = 0;
    for event in &events {
        if event.is_finished() {
            exited += 1;
        }
    }
    settle().await;
    let mut outcomes = Vec::new();
    for event in events {
        if event.is_finished() {
            outcomes.push(event.await.unwrap());
        }
    }
    assert_eq!(exited, 0, "nothing finished before the kill");
    assert_eq!(
        killed_at.elapsed(),
        Duration::ZERO,
        "noticed without any timeout"
    );
    assert_eq!(
        outcomes.len(),
        2,
        "exactly the events on the dead worker ended"
    );
    for outcome in outcomes {
        match outcome {
            Err(PoolError::WorkerExited { worker, generation }) => {
                assert_eq!((worker.index(), generation), (0, 1));
            }
            other => panic!("expected WorkerExited, got {other:?}"),
        }
    }
    let stats = h
        .until("worker 0 relaunched with its slots back", |s| {
            s.workers[0].generation == 2 && s.workers[0].idle == 2
        })
        .await;
    assert_eq!(stats.worker_restarts, 1);
    assert_ne!(stats.workers[0].pid, Some(1000));
    assert_eq!(
        stats.workers[0].last_error.as_deref(),
        Some("process exited (killed by signal 9)")
    );
    assert_eq!(
        stats.workers[1].busy, 2,
        "the other worker's events are untouched"
    );
    assert_eq!(
        stats.idle + stats.busy,
        stats.capacity,
        "back to full capacity"
    );
}

#[tokio::test(start_paused = true)]
async fn a_transport_error_restarts_the_connection_and_reaches_the_caller_with_its_source() {
    let h = harness(|b| b.max_connections(1)).await;
    let failed = Req {
        id: 1,
        action: Action::Fail,
    };
    let error = h.pool.dispatch(failed).await.unwrap_err();
    let PoolError::Transport { worker, source } = &error else {
        panic!("expected a transport error, got {error:?}");
    };
    assert_eq!(worker.index(), 0);
    let io = source
        .downcast_ref::<std::io::Error>()
        .expect("the transport's own error is the source");
    assert_eq!(io.to_string(), "broken pipe (scripted)");
    assert!(std::error::Error::source(&error).is_some());
    settle().await;
    assert_eq!(h.transport.dropped.load(SeqCst), 1);
    let stats = h.until("reconnected", |s| s.idle == 1).await;
    assert_eq!(stats.connection_restarts.ok, 1);
    assert_eq!(stats.events.error, 1);
    assert_eq!(h.pool.dispatch(Req::now(2)).await.unwrap().id, 2);
}

/// Kills worker 0 and returns how long the pool waited before launching again.
async fn relaunch_delay_after_kill(h: &support::Harness) -> Duration {
    let attempts = h.launcher.attempts(0);
    h.launcher.kill(0, WorkerExit::code(1));
    let killed = Instant::now();
    while h.launcher.attempts(0) == attempts {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let delay = killed.elapsed();
    h.until("relaunched and serving", |s| s.idle == s.capacity)
        .await;
    delay
}

#[tokio::test(start_paused = true)]
async fn relaunch_backoff_grows_exponentially_to_a_cap_and_resets_after_a_stable_run() {
    let mut policy = RestartPolicy::default();
    policy.initial_backoff = Duration::from_millis(100);
    policy.max_backoff = Duration::from_millis(800);
    policy.max_restarts = 100;
    let h = harness(|b| b.max_connections(2).restart_policy(policy)).await;
    let mut delays = Vec::new();
    for _ in 0..6 {
        delays.push(relaunch_delay_after_kill(&h).await.as_millis());
    }
    // The 1 ms polling step rounds each measurement up by at most 1 ms.
    let expected = [100, 200, 400, 800, 800, 800];
    for (got, want) in delays.iter().zip(expected) {
        assert!((want..=want + 1).contains(got), "{delays:?}");
    }
    // A process that has served for `stable_after` starts the ladder again.
    tokio::time::sleep(RestartPolicy::default().stable_after).await;
    let delay = relaunch_delay_after_kill(&h).await.as_millis();
    assert!((100..=101).contains(&delay), "{delay}");
}

#[tokio::test(start_paused = true)]
async fn too_many_restarts_leave_the_worker_failed_and_dispatch_fails_at_once() {
    let mut policy = RestartPolicy::default();
    policy.max_restarts = 3;
    policy.restart_window = Duration::from_secs(60);
    let h = harness(|b| b.max_connections(1).restart_policy(policy)).await;
    for _ in 0..3 {
        relaunch_delay_after_kill(&h).await;
    }
    // A waiter is parked when the last worker fails: it must hear about it.
    let _held = h.pool.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.dispatch(Req::now(1)).await }
    });
    settle().await;
    h.launcher.kill(0, WorkerExit::code(1));
    let stats = h
        .until("the worker is failed", |s| {
            s.workers[0].state == WorkerState::Failed
        })
        .await;
    assert_eq!(stats.worker_restarts, 3);
    assert!(matches!(
        waiter.await.unwrap(),
        Err(PoolError::NoWorkerAvailable)
    ));
    let started = Instant::now();
    assert!(matches!(
        h.pool.dispatch(Req::now(2)).await,
        Err(PoolError::NoWorkerAvailable)
    ));
    assert_eq!(started.elapsed(), Duration::ZERO);
    // Not relaunched in a loop: nothing happens in the next ten minutes.
    let attempts = h.launcher.attempts(0);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(h.launcher.attempts(0), attempts);
}

#[tokio::test(start_paused = true)]
async fn a_launcher_that_always_fails_ends_failed_instead_of_looping() {
    let (transport, launcher) = (
        support::MemTransport::default(),
        support::FakeLauncher::default(),
    );
    launcher.state.script(0, [LaunchRule::Fail; 100]);
    let state = launcher.state.clone();
    let pool = async_worker_pool::Pool::builder(transport, launcher)
        .max_connections(4)
        .build()
        .unwrap();
    let stats = support::until(&pool, "failed", |s| {
        s.workers[0].state == WorkerState::Failed
    })
    .await;
    assert_eq!(stats.down, 4);
    assert_eq!(
        stats.workers[0].last_error.as_deref(),
        Some("launch failed: cannot start (scripted)"),
        "Stats says why the worker is failing"
    );
    let default_limit = RestartPolicy::default().max_restarts as usize;
    assert_eq!(state.attempts(0), 1 + default_limit);
    assert!(matches!(
        pool.dispatch(Req::now(1)).await,
        Err(PoolError::NoWorkerAvailable)
    ));
}

#[tokio::test(start_paused = true)]
async fn panicking_and_hanging_launches_and_connects_leave_the_pool_working() {
    let (transport, launcher) = (
        support::MemTransport::default(),
        support::FakeLauncher::default(),
    );
    // Launches panic, hang, then fail; the first process's connects panic, the
    // second's hang; the third process is healthy.
    launcher
        .state
        .script(0, [LaunchRule::Panic, LaunchRule::Hang, LaunchRule::Fail]);
    transport
        .state
        .set_connect(None, Some(1), ConnectRule::Panic);
    transport
        .state
        .set_connect(None, Some(2), ConnectRule::Hang);
    let mut policy = RestartPolicy::default();
    policy.max_restarts = 10;
    let pool = async_worker_pool::Pool::builder(transport, launcher)
        .max_connections(2)
        .establish_connection_timeout(Duration::from_secs(5))
        .restart_policy(policy)
        .build()
        .unwrap();
    let stats = support::until(&pool, "serving", |s| s.idle == 2).await;
    assert_eq!(stats.workers[0].generation, 3);
    assert_eq!(
        stats.worker_restarts,
        3 + 2,
        "three failed launches, two bad processes"
    );
    assert_eq!(stats.workers[0].state, WorkerState::Running);
    assert_eq!(pool.dispatch(Req::now(7)).await.unwrap().id, 7);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_call_costs_its_caller_only_and_the_connection_is_restarted() {
    let h = harness(|b| b.max_connections(2)).await;
    let pool = h.pool.clone();
    let panicked = tokio::spawn(async move {
        pool.dispatch(Req {
            id: 1,
            action: Action::Panic,
        })
        .await
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    let stats = h.until("the slot reconnected", |s| s.idle == 2).await;
    assert_eq!(stats.connection_restarts.ok, 1);
    assert_eq!(h.pool.dispatch(Req::now(2)).await.unwrap().id, 2);
}
