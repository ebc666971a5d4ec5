//! The API as a user's crate meets it: the names it must compile against,
//! `Pool::ready`, connections that die while idle (`Transport::is_broken`),
//! events refused before sending (`Transport::is_unsent`), and typed transport
//! errors.

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use async_worker_pool::{
    BoxError, Endpoint, InProcessLauncher, LaunchError, Pool, PoolError, ReadyError, Stats,
    Transport, WorkerId, WorkerInfo, WorkerState, WorkerStats, async_trait,
};
use support::trace::Capture;
use support::{Action, ConnectRule, FakeLauncher, LaunchRule, MemTransport, Req, harness};

/// A transport as a user writes one: its error type is `BoxError` itself.
struct Doubler;

#[async_trait]
impl Transport for Doubler {
    type Conn = ();
    type Request = i64;
    type Response = i64;
    type Error = BoxError;

    async fn connect(&self, _worker: &WorkerInfo) -> Result<(), BoxError> {
        Ok(())
    }

    async fn call(&self, _conn: &mut (), n: i64) -> Result<i64, BoxError> {
        n.checked_mul(2).ok_or_else(|| "overflow".into())
    }

    fn is_broken(&self, _conn: &mut ()) -> bool {
        false
    }
}

#[tokio::test]
async fn a_users_names_compile_and_work() {
    let stats = Stats::default();
    assert_eq!((stats.capacity, stats.workers.len()), (0, 0));
    let info = WorkerInfo::new(WorkerId::new(3), 1, Endpoint::Named("x".into()), None);
    assert_eq!((info.id.index(), info.generation, info.pid), (3, 1, None));
    let worker = WorkerStats::new(WorkerId::new(0), WorkerState::Running);
    assert_eq!((worker.generation, worker.busy), (0, 0));

    // One type parameter: the launcher is not part of the pool's type.
    let pool: Pool<Doubler> = Pool::builder(Doubler, InProcessLauncher)
        .max_connections(2)
        .build()
        .unwrap();
    pool.ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(pool.dispatch(21).await.unwrap(), 42);
    let error = pool.dispatch(i64::MAX).await.unwrap_err();
    assert!(matches!(error, PoolError::Transport { .. }));
    assert_eq!(
        std::error::Error::source(&error).unwrap().to_string(),
        "overflow"
    );
    pool.shutdown(Duration::ZERO).await;
}

#[tokio::test(start_paused = true)]
async fn ready_waits_for_every_connection() {
    let h = harness(|b| b.num_workers(2).max_connections(3)).await;
    h.pool.ready(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn ready_reports_a_worker_whose_first_launch_failed_at_once() {
    let launcher = FakeLauncher::default();
    launcher.state.script(1, [LaunchRule::Fail]);
    let pool = Pool::builder(MemTransport::default(), launcher)
        .num_workers(2)
        .max_connections(2)
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = pool.ready(Duration::from_secs(60)).await.unwrap_err();
    match &error {
        ReadyError::LaunchFailed { worker, reason, .. } => {
            assert_eq!(worker.index(), 1);
            assert!(reason.contains("cannot start (scripted)"), "{reason}");
        }
        other => panic!("expected LaunchFailed, got {other:?}"),
    }
    // The launcher's error is the source, as a value of its own type.
    let source = std::error::Error::source(&error).expect("a source");
    let launch = source
        .downcast_ref::<LaunchError>()
        .expect("the source is the LaunchError");
    assert!(launch.to_string().contains("scripted"), "{launch}");
    assert_eq!(error.clone(), error, "a clone shares its cause");
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_cannot_be_connected_to_fails_ready_with_the_connect_error_as_source() {
    let transport = MemTransport::default();
    transport.state.set_connect(None, None, ConnectRule::Fail);
    let pool = Pool::builder(transport, FakeLauncher::default())
        .max_connections(2)
        .build()
        .unwrap();
    let error = pool.ready(Duration::from_secs(3600)).await.unwrap_err();
    let ReadyError::WorkerFailed { reason, .. } = &error else {
        panic!("expected WorkerFailed, got {error:?}");
    };
    // The cause is named in the reason (as the WARN log and Stats have it)...
    assert!(
        reason.contains("connections could not be re-established (connection refused (scripted))"),
        "{reason}"
    );
    // ...and handed over as the transport's own error.
    let source = std::error::Error::source(&error).expect("a source");
    let io = source
        .downcast_ref::<std::io::Error>()
        .expect("the transport's io::Error");
    assert_eq!(io.to_string(), "connection refused (scripted)");
    pool.shutdown(Duration::ZERO).await;
}

#[tokio::test(start_paused = true)]
async fn ready_times_out_saying_how_many_connections_are_up() {
    let transport = MemTransport::default();
    transport
        .state
        .set_connect(Some(1), None, ConnectRule::Hang);
    let pool = Pool::builder(transport, FakeLauncher::default())
        .num_workers(2)
        .max_connections(2)
        .probe_timeout(None)
        .probe_interval(None)
        .build()
        .unwrap();
    match pool.ready(Duration::from_secs(5)).await {
        Err(ReadyError::Timeout {
            connected,
            capacity,
            waited,
            ..
        }) => {
            assert_eq!((connected, capacity), (2, 4));
            assert_eq!(waited, Duration::from_secs(5));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    pool.shutdown(Duration::ZERO).await;
    assert_eq!(
        pool.ready(Duration::from_secs(1)).await,
        Err(ReadyError::Closed)
    );
}

#[tokio::test(start_paused = true)]
async fn connections_that_die_while_idle_fail_no_event() {
    let h = harness(|b| b.num_workers(2).max_connections(4)).await;
    // Like uvicorn's keep-alive timeout: an idle connection dies after 100 ms.
    h.transport.set_idle_death(Some(Duration::from_millis(100)));
    let mut ok = 0;
    for round in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let events: Vec<_> = (0..6)
            .map(|n| {
                let pool = h.pool.clone();
                tokio::spawn(async move { pool.dispatch(Req::now(round * 10 + n)).await })
            })
            .collect();
        for event in events {
            event
                .await
                .unwrap()
                .expect("no event fails across an idle gap");
            ok += 1;
        }
    }
    assert_eq!(ok, 120);
    let stats = h.pool.stats();
    assert_eq!(stats.events.error, 0);
    assert!(
        stats.connection_restarts.ok >= 20,
        "dead connections were restarted: {stats:?}"
    );
    // Each acquire counted once, whatever it skipped.
    assert_eq!(stats.allocations.count, 120);
    assert_eq!(
        stats.allocations.immediate + stats.allocations.after_wait,
        120
    );
}

#[tokio::test(start_paused = true)]
async fn an_event_refused_before_sending_keeps_its_connection() {
    let h = harness(|b| b.max_connections(1)).await;
    let conn = h.pool.dispatch(Req::now(1)).await.unwrap().conn;
    let error = h
        .pool
        .dispatch(Req {
            id: 2,
            action: Action::Refuse,
        })
        .await
        .unwrap_err();
    let source = error.transport_error::<std::io::Error>().unwrap();
    assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(h.pool.dispatch(Req::now(3)).await.unwrap().conn, conn);
    assert_eq!(h.transport.dropped.load(SeqCst), 0);
    assert_eq!(h.pool.stats().connection_restarts.ok, 0);
}

#[test]
fn each_event_has_a_span_with_its_worker_wait_and_outcome() {
    let capture = Capture::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let h = harness(|b| b.max_connections(1).event_timeout(Duration::from_secs(1))).await;
        h.pool.dispatch(Req::now(1)).await.unwrap();
        let hang = Req {
            id: 2,
            action: Action::Hang,
        };
        h.pool.dispatch(hang).await.unwrap_err();
    });
    let fields = capture.span_fields();
    for expected in [
        "worker=0",
        "generation=1",
        "waited_us=0",
        "outcome=ok",
        "outcome=event_timeout",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} not in {fields:?}"
        );
    }
}
