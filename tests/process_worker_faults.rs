//! Issue item 6, when real worker processes fail: a worker whose event loop is
//! blocked, one killed with SIGKILL, one asked to drain with SIGTERM, and one
//! that answers with frames that break the protocol. Each time the pool must
//! fail exactly the events the fault touched, keep the other worker serving,
//! and come back to full capacity.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use async_worker_pool::net::{Event, NetError};
use async_worker_pool::{Pool, PoolError, ProcessLauncher, RestartPolicy, WorkerState};
use nix::sys::signal::Signal;
use support::real::{
    RealPool, is_alive, python_pool, returned_body, signal, test_worker, worker_pids,
};
use support::stats::{STARTUP, until_full, wait_for};
use tokio::task::JoinSet;
use tokio::time::sleep;

/// Keeps `tasks` echo events in flight until `stop` is set; each task returns
/// how many of its events succeeded, and panics on the first that did not.
fn keep_echoing(pool: &RealPool, tasks: usize, stop: &Arc<AtomicBool>) -> JoinSet<u64> {
    let mut set = JoinSet::new();
    for task in 0..tasks {
        let (pool, stop) = (pool.clone(), stop.clone());
        set.spawn(async move {
            let mut ok = 0;
            while !stop.load(SeqCst) {
                let body = format!("echo {task}/{ok}");
                let reply = pool.dispatch(Event::plain(body.clone())).await;
                let echoed =
                    returned_body(reply.unwrap_or_else(|error| {
                        panic!("echo event {task}/{ok} failed: {error:?}")
                    }));
                assert_eq!(echoed, body);
                ok += 1;
                // A steady flow, not a storm that would starve the relaunch.
                sleep(Duration::from_millis(2)).await;
            }
            ok
        });
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_probes_off_a_blocked_worker_is_restarted_by_the_reconnect_ladder() {
    // One connection per worker: once the blocking event holds worker W's only
    // slot, every other event can only go to the other worker, so none of them
    // can land on the blocked loop. The blocking event takes its slot through
    // `acquire`, which says which worker it got. Liveness probes are off: this
    // is the ladder alone, Nuclio's way (tests/process_worker_liveness.rs has the
    // probes, which find the blocked worker much sooner).
    let mut policy = RestartPolicy::default();
    policy.terminate_grace = Duration::from_millis(300);
    let pool = python_pool("faulty:handler", 2, 1, |b| {
        b.event_timeout(Duration::from_secs(1))
            .establish_connection_timeout(Duration::from_secs(2))
            .acquire_timeout(Duration::from_secs(30))
            .restart_policy(policy)
            .probe_timeout(None)
            .probe_interval(None)
    });
    let pids = worker_pids(&until_full(&pool).await);

    let mut slot = pool.acquire().await.unwrap();
    let blocked = slot.worker().index();
    let other = 1 - blocked;
    let stop = Arc::new(AtomicBool::new(false));
    let mut echoes = keep_echoing(&pool, 2, &stop);

    let error = slot.call(Event::plain("block")).await.unwrap_err();
    assert!(
        matches!(error, PoolError::EventTimeout { worker, .. } if worker.index() == blocked),
        "{error:?}"
    );
    drop(slot);
    // Its reconnects cannot get a ready frame from the blocked loop: three
    // attempts of 2 s each fail, so the worker is terminated (SIGTERM cannot
    // reach a blocked loop either, so after the 300 ms grace it is killed) and
    // relaunched. The 2 s also bound the relaunch, which a busy 2-core machine
    // needs for a fresh interpreter.
    wait_for(&pool, "the blocked worker's relaunch", STARTUP, |s| {
        let worker = &s.workers[blocked];
        worker.pid.is_some_and(|pid| pid != pids[blocked]) && worker.idle + worker.busy == 1
    })
    .await;
    stop.store(true, SeqCst);
    let mut ok = 0;
    while let Some(joined) = echoes.join_next().await {
        ok += joined.unwrap();
    }
    println!("{ok} echo events succeeded while worker {blocked} was blocked");
    assert!(ok >= 10, "only {ok} echo events went through meanwhile");
    let stats = until_full(&pool).await;

    assert!(!is_alive(pids[blocked]), "the blocked worker survived");
    assert_eq!(stats.workers[blocked].restarts, 1);
    assert_eq!(stats.workers[other].restarts, 0);
    assert_eq!(stats.workers[other].pid, Some(pids[other]));
    assert_eq!(stats.connection_restarts.failed, 1);
    assert_eq!(stats.events.timed_out, 1);
    assert_eq!(stats.events.error, 0);
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_fails_the_in_flight_events_of_that_worker_only() {
    const CONNS: usize = 10;
    let pool = python_pool("sleepy:handler", 2, CONNS, |b| {
        b.event_timeout(Duration::from_secs(20))
            .acquire_timeout(Duration::from_secs(20))
    });
    let pids = worker_pids(&until_full(&pool).await);

    // Every slot busy with a long sleep (the least busy worker gets each, so
    // half on each worker), and as many events again waiting for a slot.
    let mut events = JoinSet::new();
    for _ in 0..4 * CONNS {
        let pool = pool.clone();
        events.spawn(async move { pool.dispatch(Event::plain("1.5")).await });
    }
    let stats = wait_for(&pool, "every slot busy", STARTUP, |s| {
        s.busy == 2 * CONNS && s.waiters == 2 * CONNS
    })
    .await;
    assert_eq!(stats.workers[0].busy, CONNS);
    signal(pids[0], Signal::SIGKILL);

    let (mut ok, mut exited) = (0, 0);
    while let Some(joined) = events.join_next().await {
        match joined.unwrap() {
            Ok(reply) => {
                assert_eq!(returned_body(reply), "1.5");
                ok += 1;
            }
            Err(PoolError::WorkerExited { worker, generation }) => {
                assert_eq!((worker.index(), generation), (0, 1));
                exited += 1;
            }
            Err(other) => panic!("an event failed with {other:?}"),
        }
    }
    assert_eq!(exited, CONNS, "the in-flight events of the killed worker");
    assert_eq!(ok, 3 * CONNS, "the other events");

    let stats = until_full(&pool).await;
    assert!(!is_alive(pids[0]));
    let new_pid = stats.workers[0].pid.unwrap();
    assert_ne!(new_pid, pids[0]);
    assert!(is_alive(new_pid));
    assert_eq!(stats.workers[0].generation, 2);
    assert_eq!(stats.workers[1].pid, Some(pids[1]));
    assert_eq!(stats.worker_restarts, 1);
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_in_flight_events_before_the_worker_is_relaunched() {
    const CONNS: usize = 10;
    let pool = python_pool("sleepy:handler", 2, CONNS, |b| {
        b.event_timeout(Duration::from_secs(20))
    });
    let pids = worker_pids(&until_full(&pool).await);

    let mut events = JoinSet::new();
    for _ in 0..2 * CONNS {
        let pool = pool.clone();
        events.spawn(async move { pool.dispatch(Event::plain("0.5")).await });
    }
    wait_for(&pool, "every slot busy", STARTUP, |s| s.busy == 2 * CONNS).await;
    signal(pids[0], Signal::SIGTERM);

    while let Some(joined) = events.join_next().await {
        let reply = joined.unwrap().unwrap_or_else(|error| {
            panic!("an event in flight during the drain failed: {error:?}")
        });
        assert_eq!(returned_body(reply), "0.5");
    }
    let stats = wait_for(&pool, "worker 0's relaunch", STARTUP, |s| {
        s.workers[0].generation == 2 && s.idle == s.capacity
    })
    .await;
    assert!(!is_alive(pids[0]));
    assert_ne!(stats.workers[0].pid, Some(pids[0]));
    assert_eq!(stats.workers[0].state, WorkerState::Running);
    assert_eq!(stats.workers[1].pid, Some(pids[1]));
    assert_eq!(stats.events.ok, 2 * CONNS as u64);
    assert_eq!(stats.events.error, 0);
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_restart_only_their_connection() {
    const CONNS: usize = 2;
    let launcher = ProcessLauncher::builder("python3")
        .arg(test_worker("bad_frames.py"))
        .connections(CONNS)
        .build()
        .unwrap();
    let transport = support::real::transport().max_frame_bytes(64 * 1024);
    let pool = Pool::builder(transport, launcher)
        .max_connections(CONNS)
        .event_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let pid = worker_pids(&until_full(&pool).await)[0];

    for (round, body) in ["garbage", "huge", "garbage", "huge"].iter().enumerate() {
        let error = pool.dispatch(Event::plain(*body)).await.unwrap_err();
        let PoolError::Transport { worker, source } = &error else {
            panic!("{body}: expected a transport error, got {error:?}");
        };
        assert_eq!(worker.index(), 0);
        let net = source
            .downcast_ref::<NetError>()
            .unwrap_or_else(|| panic!("{body}: the source is not a NetError: {source:?}"));
        match *body {
            "garbage" => assert!(matches!(net, NetError::Protocol(_)), "{net:?}"),
            _ => assert!(
                matches!(net, NetError::FrameTooLarge { limit: 65536 }),
                "{net:?}"
            ),
        }
        let restarts = round as u64 + 1;
        let stats = wait_for(&pool, "the connection's restart", STARTUP, |s| {
            s.connection_restarts.ok == restarts && s.idle == CONNS
        })
        .await;
        assert_eq!(stats.connection_restarts.failed, 0);
        assert_eq!(stats.worker_restarts, 0);
        assert_eq!(stats.workers[0].pid, Some(pid));
        for n in 0..3 {
            let body = format!("fine {round}.{n}");
            let reply = pool.dispatch(Event::plain(body.clone())).await.unwrap();
            assert_eq!(returned_body(reply), body);
        }
    }
    let stats = pool.stats();
    assert_eq!((stats.events.ok, stats.events.error), (12, 4));
    assert!(is_alive(pid));
    pool.shutdown(Duration::from_secs(2)).await;
}
