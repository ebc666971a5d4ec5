//! Issue item 6: the pool with real Python worker processes (the reference
//! worker and the example handlers) over real sockets: bodies of every kind
//! make the round trip, a raising handler is an answer and not a broken
//! connection, and a shutdown leaves no process and no socket directory behind.
//!
//! Load, crashes and protocol faults have files of their own:
//! `process_worker_load.rs` and `process_worker_faults.rs`.

mod support;

use std::time::Duration;

use async_worker_pool::PoolError;
use async_worker_pool::net::{Event, Reply};
use async_worker_pool::{ConnectionRestartStats, Pool};
use bytes::Bytes;
use support::real::{is_alive, python_pool, python_worker, returned_body, worker_pids};
use support::stats::until_full;

fn all_byte_values() -> Bytes {
    (0..=255).collect::<Vec<u8>>().into()
}

/// A mebibyte that is not a repetition of a short pattern, so that a misplaced
/// chunk would show.
fn one_mib() -> Bytes {
    let mut rng = fastrand::Rng::with_seed(6);
    (0..1024 * 1024)
        .map(|_| rng.u8(..))
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_binary_and_large_bodies_round_trip_as_plain_and_http_events() {
    let pool = python_pool("echo:handler", 2, 4, |b| {
        b.event_timeout(Duration::from_secs(10))
    });
    until_full(&pool).await;
    let bodies = [
        Bytes::from("hello, wörld ✓"),
        all_byte_values(),
        Bytes::new(),
        one_mib(),
    ];
    for body in &bodies {
        for event in [
            Event::plain(body.clone()),
            Event::http(
                "POST",
                "/echo?twice=no",
                vec![
                    ("content-type".into(), "application/octet-stream".into()),
                    ("x-repeat".into(), "1".into()),
                    ("x-repeat".into(), "2".into()),
                ],
                body.clone(),
            ),
        ] {
            let kind = if event.is_http() { "HTTP" } else { "plain" };
            let reply = pool.dispatch(event).await.unwrap();
            let Reply::Returned {
                status,
                headers,
                body: echoed,
            } = reply
            else {
                panic!("a {kind} event of {} bytes: {reply:?}", body.len());
            };
            assert_eq!(status, 200, "{kind} event of {} bytes", body.len());
            // echo.py names the worker that answered, and nothing else.
            assert_eq!(headers.len(), 1, "{headers:?}");
            assert_eq!(headers[0].0, "x-worker-id");
            assert!(["0", "1"].contains(&headers[0].1.as_str()), "{headers:?}");
            assert!(
                echoed == body,
                "the {kind} echo of a {}-byte body differs ({} bytes back)",
                body.len(),
                echoed.len()
            );
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.events.ok, 2 * bodies.len() as u64);
    assert_eq!(stats.connection_restarts, ConnectionRestartStats::default());
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_handler_answers_raised_and_its_connection_stays_in_use() {
    // One connection, so the event after the exception must travel on the same one.
    let pool = python_pool("faulty:handler", 1, 1, |b| {
        b.event_timeout(Duration::from_secs(10))
    });
    until_full(&pool).await;

    let reply = pool.dispatch(Event::plain("raise")).await.unwrap();
    let Reply::Raised {
        exception_type,
        message,
        traceback,
    } = reply
    else {
        panic!("expected Raised, got {reply:?}");
    };
    assert_eq!(exception_type, "ValueError");
    assert_eq!(message, "asked to raise");
    assert!(
        traceback.contains("ValueError: asked to raise"),
        "{traceback}"
    );

    let stats = pool.stats();
    assert_eq!((stats.idle, stats.reconnecting), (1, 0), "{stats:?}");
    let body = returned_body(pool.dispatch(Event::plain("still here")).await.unwrap());
    assert_eq!(body, "still here");
    let stats = pool.stats();
    assert_eq!(stats.connection_restarts, ConnectionRestartStats::default());
    assert_eq!(stats.events.ok, 2);
    assert_eq!(stats.events.error, 0);
    assert_eq!(stats.worker_restarts, 0);
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_worker_process_and_no_socket_directory() {
    let launcher = python_worker("echo:handler", 3).build().unwrap();
    let socket_dir = launcher.socket_dir().to_path_buf();
    let pool = Pool::builder(support::real::transport(), launcher)
        .num_workers(2)
        .max_connections(3)
        .build()
        .unwrap();
    let stats = until_full(&pool).await;
    let pids = worker_pids(&stats);
    assert!(pids.iter().all(|&pid| is_alive(pid)), "{pids:?}");
    assert!(socket_dir.join("worker-0.sock").exists());
    returned_body(pool.dispatch(Event::plain("last")).await.unwrap());

    pool.shutdown(Duration::from_secs(2)).await;
    for pid in pids {
        assert!(!is_alive(pid), "worker {pid} outlived the shutdown");
    }
    assert!(
        !socket_dir.exists(),
        "{} outlived the shutdown",
        socket_dir.display()
    );
    assert!(matches!(
        pool.dispatch(Event::plain("too late")).await,
        Err(PoolError::Closed)
    ));
}
