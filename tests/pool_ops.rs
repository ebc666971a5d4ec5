//! Issue 14: rolling reload, recycling and resizing a running pool, on the
//! paused clock. Each test loads the pool while it changes and checks that no
//! event fails and that the slot states add up to the capacity at every step.

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use async_worker_pool::{Mode, OpsError, PoolError, Stats, WorkerState};
use support::stats::assert_slots_add_up;
use support::{ConnectRule, Harness, LaunchRule, Req, TestPool, harness, settle, until};
use tokio::task::JoinHandle;

/// Connections that serve, counted on the workers that take new events.
fn serving(stats: &Stats) -> usize {
    stats
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Running)
        .map(|w| w.idle + w.busy)
        .sum()
}

/// `clients` tasks each sending events of `event` back to back until
/// `stop` flips; each returns how many events it sent, and panics on a failed one.
fn load(pool: &TestPool, clients: u64, event: Duration) -> (Vec<JoinHandle<u64>>, Stop) {
    let stop = Stop::default();
    let tasks = (0..clients)
        .map(|client| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.is_set() {
                    let id = client * 1_000_000 + sent;
                    match pool.dispatch(Req::reply(id, event)).await {
                        Ok(resp) => assert_eq!(resp.id, id),
                        Err(error) => panic!("event {id} failed: {error:?}"),
                    }
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    (tasks, stop)
}

#[derive(Clone, Default)]
struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Stop {
    fn set(&self) {
        self.0.store(true, SeqCst);
    }
    fn is_set(&self) -> bool {
        self.0.load(SeqCst)
    }
}

async fn finish(tasks: Vec<JoinHandle<u64>>, stop: Stop) -> u64 {
    stop.set();
    let mut sent = 0;
    for task in tasks {
        sent += task.await.expect("no event failed");
    }
    sent
}

/// Runs `operation` while sampling the stats every millisecond of pool time;
/// returns the lowest count of serving connections seen, and the running
/// workers' lowest count.
async fn watch_during<F>(pool: &TestPool, operation: F) -> (F::Output, usize, usize)
where
    F: Future,
{
    let mut operation = std::pin::pin!(operation);
    let (mut least_serving, mut least_running) = (usize::MAX, usize::MAX);
    loop {
        let stats = pool.stats();
        assert_slots_add_up(&stats);
        least_serving = least_serving.min(serving(&stats));
        let running = stats
            .workers
            .iter()
            .filter(|w| w.state == WorkerState::Running)
            .count();
        least_running = least_running.min(running);
        tokio::select! {
            output = &mut operation => return (output, least_serving, least_running),
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
}

async fn two_by_four() -> Harness {
    harness(|b| b.num_workers(2).max_connections(4)).await
}

#[tokio::test(start_paused = true)]
async fn reload_replaces_every_worker_under_load_with_no_event_failing() {
    let h = two_by_four().await;
    // Connects take a while, so that a process that serves before its
    // connections are up would show as lost capacity.
    h.transport
        .set_connect(None, None, ConnectRule::After(Duration::from_millis(5)));
    let pids: Vec<_> = h.pool.stats().workers.iter().map(|w| w.pid).collect();
    let (tasks, stop) = load(&h.pool, 6, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (reloaded, least_serving, _) = watch_during(&h.pool, h.pool.reload()).await;
    reloaded.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = finish(tasks, stop).await;
    assert!(sent >= 40, "{sent}");

    let stats = h.pool.stats();
    assert_eq!(stats.workers.len(), 2, "the spare is gone: {stats:#?}");
    assert_eq!(stats.capacity, 8);
    assert_eq!(stats.events.error + stats.events.timed_out, 0);
    assert_eq!(stats.restart_reasons.reloaded, 2);
    assert_eq!(stats.worker_restarts, 0, "a reload is not a failure");
    for (worker, old) in stats.workers.iter().zip(pids) {
        assert_eq!(worker.generation, 2);
        assert_ne!(worker.pid, old);
    }
    // (num_workers - 1) × max_connections, at every step.
    assert!(least_serving >= 4, "capacity dropped to {least_serving}");
    // The spare's process and both old ones were stopped.
    settle().await;
    assert_eq!(h.launcher.alive.load(SeqCst), 2);
    assert_eq!(h.launcher.terminated.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn reload_of_a_single_worker_brings_the_new_process_up_before_the_old_one_stops() {
    let h = harness(|b| b.max_connections(4)).await;
    // Connects take a while, so that a process that serves before its
    // connections are up would show as lost capacity.
    h.transport
        .set_connect(None, None, ConnectRule::After(Duration::from_millis(5)));
    let (tasks, stop) = load(&h.pool, 3, Duration::from_millis(50));
    let (reloaded, least_serving, least_running) = watch_during(&h.pool, h.pool.reload()).await;
    reloaded.unwrap();
    finish(tasks, stop).await;
    assert!(least_running >= 1, "no worker served at some point");
    assert!(least_serving >= 4, "capacity dropped to {least_serving}");
    let stats = h.pool.stats();
    assert_eq!(stats.workers.len(), 1);
    assert_eq!(stats.workers[0].generation, 2);
    assert_eq!(stats.events.error, 0);
}

#[tokio::test(start_paused = true)]
async fn an_event_in_flight_on_a_draining_worker_finishes_and_its_slot_is_not_reused() {
    let h = harness(|b| b.max_connections(2)).await;
    let long = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.dispatch(Req::reply(1, Duration::from_secs(3))).await }
    });
    settle().await;
    let reload = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.reload().await }
    });
    h.until("worker 0 drains", |s| {
        s.workers[0].state == WorkerState::Draining
    })
    .await;
    // New events go to the spare while the old process finishes its event.
    for id in 2..10 {
        let resp = h.pool.dispatch(Req::now(id)).await.unwrap();
        assert_eq!(resp.worker, 1, "an event went to the draining worker");
    }
    let resp = long.await.unwrap().unwrap();
    assert_eq!((resp.worker, resp.generation), (0, 1));
    reload.await.unwrap().unwrap();
    assert_eq!(h.pool.stats().events.error, 0);
}

#[tokio::test(start_paused = true)]
async fn events_past_the_terminate_grace_fail_and_the_reload_goes_on() {
    let mut policy = async_worker_pool::RestartPolicy::default();
    policy.terminate_grace = Duration::from_secs(1);
    let h = harness(|b| b.max_connections(2).restart_policy(policy)).await;
    let endless = tokio::spawn({
        let pool = h.pool.clone();
        async move {
            pool.dispatch(Req::reply(1, Duration::from_secs(3600)))
                .await
        }
    });
    settle().await;
    h.pool.reload().await.unwrap();
    assert!(matches!(
        endless.await.unwrap(),
        Err(PoolError::WorkerExited { .. })
    ));
    let stats = h.until("all connected", |s| s.idle == s.capacity).await;
    assert_eq!((stats.capacity, stats.workers.len()), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_reload_whose_spare_cannot_start_leaves_the_pool_as_it_was() {
    let h = harness(|b| b.max_connections(2)).await;
    h.launcher.script(1, [LaunchRule::Fail]);
    let error = h.pool.reload().await.unwrap_err();
    match &error {
        OpsError::WorkerDidNotStart { worker, reason, .. } => {
            assert_eq!(worker.index(), 1);
            assert!(reason.contains("scripted"), "{reason}");
        }
        other => panic!("expected WorkerDidNotStart, got {other:?}"),
    }
    let source = std::error::Error::source(&error).expect("the launch error");
    assert!(
        source
            .downcast_ref::<async_worker_pool::LaunchError>()
            .is_some(),
        "{source:?}"
    );
    let stats = h.until("the spare is gone", |s| s.workers.len() == 1).await;
    assert_eq!(stats.workers[0].generation, 1, "the old worker was kept");
    assert_eq!(stats.capacity, 2);
    assert_eq!(h.pool.dispatch(Req::now(1)).await.unwrap().generation, 1);
}

#[tokio::test(start_paused = true)]
async fn a_second_reload_waits_for_the_first_then_replaces_again() {
    let h = two_by_four().await;
    let (a, b) = tokio::join!(h.pool.reload(), h.pool.reload());
    a.unwrap();
    b.unwrap();
    let stats = h.pool.stats();
    assert!(
        stats.workers.iter().all(|w| w.generation == 3),
        "{stats:#?}"
    );
    assert_eq!(stats.restart_reasons.reloaded, 4);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_reload_future_still_completes() {
    let h = harness(|b| b.max_connections(2)).await;
    let reload = h.pool.reload();
    // Polled once, so that the command is sent, then dropped.
    let _ = tokio::time::timeout(Duration::from_millis(1), reload).await;
    let stats = h
        .until("the reload finished", |s| {
            s.workers.len() == 1 && s.workers[0].generation == 2 && s.idle == 2
        })
        .await;
    assert_eq!(stats.restart_reasons.reloaded, 1);
}

#[tokio::test(start_paused = true)]
async fn max_events_per_worker_recycles_each_worker_with_jitter_and_no_failed_event() {
    let h = harness(|b| {
        b.num_workers(2)
            .max_connections(2)
            .max_events_per_worker(40)
            .min_worker_uptime(Duration::ZERO)
    })
    .await;
    let (tasks, stop) = load(&h.pool, 4, Duration::from_millis(10));
    let stats = h
        .until("both workers recycled twice", |s| {
            s.workers.len() == 2 && s.workers.iter().all(|w| w.generation >= 3)
        })
        .await;
    let sent = finish(tasks, stop).await;
    assert!(stats.restart_reasons.recycled_events >= 4, "{stats:#?}");
    assert_eq!(stats.worker_restarts, 0);
    let stats = h.pool.stats();
    assert_eq!(stats.events.error, 0);
    assert_eq!(stats.events.ok, sent);
    // About one recycle per 40 to 44 events on each worker.
    let generations: u64 = stats.workers.iter().map(|w| w.generation - 1).sum();
    assert!(
        generations * 40 <= sent && sent <= (generations + 4) * 44 + 8,
        "{generations} recycles for {sent} events"
    );
}

#[tokio::test(start_paused = true)]
async fn set_max_connections_grows_at_once_and_shrinks_without_failing_an_event() {
    let h = two_by_four().await;
    h.pool.set_max_connections(6).await.unwrap();
    let stats = h.until("12 slots idle", |s| s.idle == 12).await;
    assert_eq!(stats.capacity, 12);
    assert_eq!(h.transport.live.load(SeqCst), 12);

    // Busy slots above the new size close when their events end; idle ones now.
    let events: Vec<_> = (0..8)
        .map(|id| {
            let pool = h.pool.clone();
            tokio::spawn(async move { pool.dispatch(Req::reply(id, Duration::from_secs(1))).await })
        })
        .collect();
    settle().await;
    let shrink = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.set_max_connections(1).await }
    });
    settle().await;
    let stats = h.pool.stats();
    assert_slots_add_up(&stats);
    // The idle slots above the new size closed at once; the busy ones are
    // kept, so the segments keep their length until those are freed.
    assert_eq!(
        (stats.capacity, stats.busy, stats.idle, stats.closed),
        (12, 8, 2, 2)
    );
    assert!(!shrink.is_finished(), "events still hold slots to remove");
    for event in events {
        event.await.unwrap().unwrap();
    }
    shrink.await.unwrap().unwrap();
    let stats = h.until("2 slots idle", |s| s.idle == 2).await;
    assert_eq!(stats.capacity, 2);
    settle().await;
    assert_eq!(h.transport.live.load(SeqCst), 2);
    assert_eq!(stats.events.error, 0);

    h.pool.set_max_connections(3).await.unwrap();
    let stats = h.until("6 slots idle", |s| s.idle == 6).await;
    assert_eq!(stats.capacity, 6);
}

#[tokio::test(start_paused = true)]
async fn set_num_workers_grows_at_once_and_shrinks_letting_in_flight_events_finish() {
    let h = harness(|b| b.max_connections(2)).await;
    h.pool.set_num_workers(3).await.unwrap();
    let stats = h.until("6 slots idle", |s| s.idle == 6).await;
    assert_eq!((stats.capacity, stats.workers.len()), (6, 3));

    let (tasks, stop) = load(&h.pool, 6, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (shrunk, _, _) = watch_during(&h.pool, h.pool.set_num_workers(1)).await;
    shrunk.unwrap();
    let stats = h.pool.stats();
    assert_eq!((stats.capacity, stats.workers.len()), (2, 1));
    tokio::time::sleep(Duration::from_millis(250)).await;
    finish(tasks, stop).await;
    assert_eq!(h.pool.stats().events.error, 0);
    settle().await;
    assert_eq!(h.launcher.alive.load(SeqCst), 1);
    assert_eq!(h.launcher.terminated.lock().unwrap().len(), 2);

    h.pool.set_num_workers(2).await.unwrap();
    let stats = h.until("4 slots idle", |s| s.idle == 4).await;
    assert_eq!(stats.workers.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_removed_worker_whose_event_outlives_the_grace_fails_that_event_and_is_removed() {
    let mut policy = async_worker_pool::RestartPolicy::default();
    policy.terminate_grace = Duration::from_secs(1);
    let h = harness(|b| b.num_workers(2).max_connections(1).restart_policy(policy)).await;
    let endless: Vec<_> = (0..2)
        .map(|id| {
            let pool = h.pool.clone();
            tokio::spawn(async move {
                pool.dispatch(Req::reply(id, Duration::from_secs(3600)))
                    .await
            })
        })
        .collect();
    settle().await;
    assert_eq!(h.pool.stats().busy, 2);
    let started = tokio::time::Instant::now();
    h.pool.set_num_workers(1).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    let stats = h.pool.stats();
    assert_slots_add_up(&stats);
    assert_eq!((stats.capacity, stats.busy, stats.workers.len()), (1, 1, 1));
    let mut outcomes = Vec::new();
    for event in endless {
        if event.is_finished() {
            outcomes.push(event.await.unwrap());
        } else {
            event.abort();
        }
    }
    assert!(
        matches!(outcomes.as_slice(), [Err(PoolError::WorkerExited { worker, .. })] if worker.index() == 1),
        "{outcomes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_removed_worker_leaves_the_table_when_a_slot_held_past_its_stop_is_dropped() {
    let mut policy = async_worker_pool::RestartPolicy::default();
    policy.terminate_grace = Duration::from_secs(1);
    let h = harness(|b| b.num_workers(2).max_connections(1).restart_policy(policy)).await;
    let (a, b) = (
        h.pool.acquire().await.unwrap(),
        h.pool.acquire().await.unwrap(),
    );
    let (kept, held) = if a.worker().index() == 0 {
        (a, b)
    } else {
        (b, a)
    };
    let shrink = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.set_num_workers(1).await }
    });
    h.until("worker 1 stopped", |s| {
        s.workers[1].state == WorkerState::Stopped
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!shrink.is_finished(), "removed while a slot of it was held");
    drop(held);
    shrink.await.unwrap().unwrap();
    let stats = h.pool.stats();
    assert_slots_add_up(&stats);
    assert_eq!((stats.capacity, stats.busy, stats.workers.len()), (1, 1, 1));
    drop(kept);
}

#[tokio::test(start_paused = true)]
async fn resizes_to_invalid_sizes_are_refused_naming_the_field() {
    let h = harness(|b| b.max_connections(2)).await;
    let field = |result: Result<(), OpsError>| match result {
        Err(OpsError::Config(error)) => error.field(),
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(field(h.pool.set_num_workers(0).await), "num_workers");
    assert_eq!(
        field(h.pool.set_max_connections(0).await),
        "max_connections"
    );
    assert_eq!(
        field(h.pool.set_max_connections(1 << 21).await),
        "max_connections"
    );
    let sync = harness(|b| b.mode(Mode::Sync)).await;
    assert_eq!(
        field(sync.pool.set_max_connections(2).await),
        "max_connections"
    );
    sync.pool.set_max_connections(1).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn operations_after_shutdown_fail_with_closed() {
    let h = harness(|b| b.max_connections(2)).await;
    h.pool.shutdown(Duration::ZERO).await;
    assert_eq!(h.pool.reload().await, Err(OpsError::Closed));
    assert_eq!(h.pool.set_num_workers(2).await, Err(OpsError::Closed));
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_reload_ends_it_and_leaves_no_process() {
    let h = harness(|b| b.max_connections(2)).await;
    // The spare takes a while to connect, so that the shutdown finds it starting.
    h.transport
        .set_connect(Some(1), None, ConnectRule::After(Duration::from_secs(1)));
    let reload = tokio::spawn({
        let pool = h.pool.clone();
        async move { pool.reload().await }
    });
    until(&h.pool, "the spare joined", |s| s.workers.len() == 2).await;
    h.pool.shutdown(Duration::ZERO).await;
    assert_eq!(reload.await.unwrap(), Err(OpsError::Closed));
    settle().await;
    assert_eq!(h.launcher.alive.load(SeqCst), 0);
    let stats = h.pool.stats();
    assert_slots_add_up(&stats);
    assert_eq!(stats.closed, stats.capacity);
}

#[tokio::test(start_paused = true)]
async fn random_operations_and_crashes_under_load_keep_every_invariant() {
    let h = harness(|b| b.num_workers(2).max_connections(3)).await;
    let seed = std::env::var("OPS_SEED").map_or(14, |s| s.parse().unwrap_or(14));
    let mut rng = fastrand::Rng::with_seed(seed);
    let stop = Stop::default();
    // Clients that accept only the errors a crash causes.
    let clients: Vec<_> = (0..6)
        .map(|client| {
            let (pool, stop) = (h.pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut outcomes = 0u64;
                while !stop.is_set() {
                    let id = client * 1_000_000 + outcomes;
                    match pool
                        .dispatch(Req::reply(id, Duration::from_millis(30)))
                        .await
                    {
                        Ok(resp) => assert_eq!(resp.id, id),
                        Err(PoolError::WorkerExited { .. }) => {}
                        Err(error) => panic!("event {id}: unexpected {error:?}"),
                    }
                    outcomes += 1;
                }
                outcomes
            })
        })
        .collect();
    for _ in 0..40 {
        let operation = match rng.u8(..4) {
            0 => h.pool.reload().await,
            1 => h.pool.set_num_workers(rng.usize(1..=4)).await,
            2 => h.pool.set_max_connections(rng.usize(1..=6)).await,
            _ => {
                let workers = h.pool.stats().workers.len();
                h.launcher.kill(
                    rng.usize(..workers),
                    async_worker_pool::WorkerExit::signal(9),
                );
                Ok(())
            }
        };
        // A crash of a worker being replaced may fail the replacement's wait.
        if let Err(error) = operation {
            assert!(
                matches!(error, OpsError::WorkerDidNotStart { .. }),
                "{error:?}"
            );
        }
        assert_slots_add_up(&h.pool.stats());
        tokio::time::sleep(Duration::from_millis(rng.u64(0..100))).await;
    }
    stop.set();
    let mut outcomes = 0;
    for client in clients {
        outcomes += client.await.expect("every event got an expected outcome");
    }
    let stats = h.pool.stats();
    assert_slots_add_up(&stats);
    assert_eq!(stats.events.ok + stats.events.error, outcomes);
    assert_eq!(stats.busy, 0);
    // After the dust settles the pool is whole at its last size.
    let workers = stats.workers.len();
    let stats = h
        .until("every slot connected", |s| {
            s.idle == s.capacity && s.workers.len() == workers
        })
        .await;
    assert_eq!(stats.capacity % workers, 0);
}

#[tokio::test(start_paused = true)]
async fn an_event_past_its_timeout_has_its_worker_replaced_new_before_old_when_asked() {
    // min_worker_uptime stays at its minute: a timeout does not wait for it.
    let h = harness(|b| {
        b.max_connections(2)
            .event_timeout(Duration::from_secs(1))
            .recycle_after_event_timeout(true)
    })
    .await;
    let (tasks, stop) = load(&h.pool, 1, Duration::from_millis(10));
    let slow = h
        .pool
        .dispatch(Req::reply(u64::MAX, Duration::from_secs(30)))
        .await;
    assert!(
        matches!(slow, Err(PoolError::EventTimeout { .. })),
        "{slow:?}"
    );
    let stats = h
        .until("the worker replaced", |s| {
            s.restart_reasons.recycled_event_timeout == 1
                && s.workers.len() == 1
                && s.workers[0].generation == 2
                && s.workers[0].state == WorkerState::Running
        })
        .await;
    let sent = finish(tasks, stop).await;
    assert_eq!(stats.worker_restarts, 0, "{stats:#?}");
    assert_eq!(stats.restart_reasons.unresponsive, 0);
    let stats = h.pool.stats();
    assert_eq!(stats.events.error, 0, "the other events finished");
    assert_eq!(stats.events.timed_out, 1);
    assert_eq!(stats.events.ok, sent);
}

#[tokio::test(start_paused = true)]
async fn an_event_past_its_timeout_leaves_its_worker_alone_by_default() {
    let h = harness(|b| b.max_connections(2).event_timeout(Duration::from_secs(1))).await;
    let slow = h
        .pool
        .dispatch(Req::reply(1, Duration::from_secs(30)))
        .await;
    assert!(matches!(slow, Err(PoolError::EventTimeout { .. })));
    let stats = h.until("2 slots idle", |s| s.idle == 2).await;
    assert_eq!(stats.workers[0].generation, 1);
    assert_eq!(stats.restart_reasons.recycled_event_timeout, 0);
}
