//! The `nuclio` feature against a peer wrapper written for these tests
//! (`tests/nuclio_peer/_nuclio_async_wrapper.py`, on msgpack and nuclio-sdk from
//! PyPI): readiness, bodies, headers, errors, logs and metrics, streaming, drain
//! and terminate; and what Nuclio's real wrappers do that the crate must cope
//! with, which the peer reproduces: raw strings unless `--decode-event-strings`,
//! logs on stdout or the control socket, batch responses, `m` and `r` in two
//! sends with Nagle's algorithm on, slow accept with exit on a closed
//! connection, and SIGUSR1 ignored.
//!
//! The peer needs a Python with msgpack and nuclio-sdk, named by the environment
//! variable `NUCLIO_TEST_PYTHON`; `scripts/test.sh` makes one. Without it every
//! test here fails and says what is missing: none passes without having run.

#![cfg(feature = "nuclio")]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_worker_pool::nuclio::{
    NuclioBody, NuclioEvent, NuclioLauncher, NuclioLauncherBuilder, NuclioSpec, NuclioTransport,
};
use async_worker_pool::{
    Launcher, Pool, PoolConfig, Transport, WorkerId, WorkerInfo, WorkerProcess,
};
use bytes::Bytes;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::python::venv_python;
use support::stats::{STARTUP, until_full, wait_for};
use support::trace::{Capture, SeenEvent};
use tokio::time::{Instant, sleep};

type NuclioPool = Pool<NuclioTransport>;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn launcher(handler: &str) -> NuclioLauncherBuilder {
    NuclioLauncher::builder(
        manifest_dir().join("tests/nuclio_peer/_nuclio_async_wrapper.py"),
        handler,
    )
    .python(venv_python(
        "NUCLIO_TEST_PYTHON",
        &["msgpack", "nuclio_sdk"],
        "Run `sh scripts/test.sh`, which makes a virtualenv with msgpack and nuclio-sdk, \
         or set NUCLIO_TEST_PYTHON to a Python that has both (`sh scripts/nuclio-venv.sh` \
         prints one).",
    ))
    .handler_path(manifest_dir().join("tests/nuclio_handlers"))
    .namespace("tests")
}

/// A pool configured from a Nuclio spec, full before it is returned.
async fn pool(handler: &str, workers: usize, connections: usize) -> (NuclioPool, NuclioTransport) {
    let spec = NuclioSpec::from_json(&format!(
        r#"{{"spec": {{"eventTimeout": "10s", "triggers": {{"web": {{"kind": "http",
            "numWorkers": {workers}, "mode": "async",
            "async": {{"maxConnectionsNumber": {connections},
                       "connectionAvailabilityTimeout": "5s"}}}}}}}}}}"#
    ))
    .unwrap();
    let transport = NuclioTransport::new();
    let pool = Pool::builder(
        transport.clone(),
        launcher(handler).trigger("http", "web").build().unwrap(),
    )
    .config(spec.pool_config("web").unwrap())
    .build()
    .unwrap();
    until_full(&pool).await;
    (pool, transport)
}

fn full_body(body: &NuclioBody) -> Bytes {
    match body {
        NuclioBody::Full(body) => body.clone(),
        other => panic!("expected a whole body, got {other:?}"),
    }
}

#[tokio::test]
async fn launch_waits_for_wrapper_initialized_and_terminate_sends_sigusr1() {
    let launcher = launcher("peer_handlers:echo_or_await_termination")
        .build()
        .unwrap();
    let mut worker = launcher.launch(WorkerId::new(3)).await.unwrap();
    let pid = worker.pid().expect("a wrapper process");
    // Ready means listening: connections open at once, each started with `s`.
    // Connected through the worker's own endpoint state (its attachments), as
    // a pool connects, so that the worker counts the events in flight on them.
    let transport = NuclioTransport::new();
    let info = WorkerInfo::new(WorkerId::new(3), 1, worker.endpoint(), Some(pid))
        .with_attachments(worker.attachments());
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(transport.connect(&info).await.unwrap());
    }
    let response = conns[2]
        .call(&transport, &NuclioEvent::new("direct"))
        .await
        .unwrap();
    assert_eq!(full_body(&response.body), "direct");
    // An event that is answered only once the wrapper was told to terminate.
    // `terminate` waits for it (up to the grace), so its answer shows that
    // SIGUSR1 came first, however slowly a loaded machine lets the wrapper
    // run; how the wrapper then exits (by itself, or at SIGTERM if it takes
    // longer than NuclioWorker::IDLE_SETTLE) is the machine's timing.
    let (mut conn, transport) = (conns.swap_remove(0), transport.clone());
    let waiting = tokio::spawn(async move {
        conn.call(&transport, &NuclioEvent::new("await termination"))
            .await
    });
    let started = async {
        while worker.events_in_flight() == 0 {
            sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .expect("the worker counts the event in flight");
    worker.terminate(Duration::from_secs(60)).await;
    let response = waiting.await.unwrap().unwrap();
    assert_eq!(full_body(&response.body), "told to terminate");
    assert_eq!(
        kill(Pid::from_raw(pid as i32), None),
        Err(nix::errno::Errno::ESRCH),
        "the wrapper is gone"
    );
    // The control socket file was removed once the wrapper had connected.
    assert_eq!(std::fs::read_dir(launcher.socket_dir()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_wrapper_that_cannot_load_its_handler_fails_the_launch_with_its_stderr() {
    let launcher = launcher("no_such_module:handler").build().unwrap();
    let error = launcher.launch(WorkerId::new(0)).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("exited during start-up"), "{message}");
    assert!(message.contains("no_such_module"), "{message}");
}

#[tokio::test]
async fn text_and_binary_bodies_make_the_round_trip() {
    let (pool, _) = pool("peer_handlers:echo", 1, 4).await;
    let binary: Vec<u8> = (0..=255).collect();
    let response = pool
        .dispatch(NuclioEvent::new(binary.clone()))
        .await
        .unwrap();
    assert_eq!(full_body(&response.body), binary);
    assert_eq!(response.content_type, "application/octet-stream");

    let mut headers = BTreeMap::new();
    headers.insert("x-as-text".to_owned(), "yes".to_owned());
    headers.insert("content-type".to_owned(), "text/plain".to_owned());
    let text = "grüße, nuclio";
    let response = pool
        .dispatch(NuclioEvent::http("POST", "/text", headers, text))
        .await
        .unwrap();
    assert_eq!(full_body(&response.body), text);
    assert_eq!(response.content_type, "text/plain");
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn headers_status_codes_and_the_trigger_reach_the_handler_and_back() {
    let (pool, _) = pool("peer_handlers:echo", 1, 2).await;
    let mut headers = BTreeMap::new();
    headers.insert("x-test".to_owned(), "hello".to_owned());
    headers.insert("x-status".to_owned(), "418".to_owned());
    let mut event = NuclioEvent::http("PUT", "/teapot?q=1", headers, "tea");
    event.trigger.name = "web".to_owned();
    let response = pool.dispatch(event).await.unwrap();
    assert_eq!(response.status_code, 418);
    assert_eq!(response.headers["x-method"], "PUT");
    assert_eq!(response.headers["x-path"], "/teapot?q=1");
    assert_eq!(response.headers["x-header"], "hello");
    assert_eq!(response.headers["x-trigger"], "http/web");
    // A number in the handler's headers comes back as its text.
    assert_eq!(response.headers["x-size"], "3");
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_raising_handler_is_answered_with_500_and_its_message() {
    let (pool, _) = pool("peer_handlers:raising", 1, 2).await;
    let response = pool.dispatch(NuclioEvent::new("x")).await.unwrap();
    assert_eq!(response.status_code, 500);
    let body = full_body(&response.body);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("no such thing"), "{body}");
    // The connection stays in use: the next event is served on it.
    let response = pool.dispatch(NuclioEvent::new("y")).await.unwrap();
    assert_eq!(response.status_code, 500);
    assert_eq!(pool.stats().connection_restarts.ok, 0);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn interleaved_log_and_metric_lines_are_forwarded_and_counted() {
    let capture = Capture::start();
    let (pool, transport) = pool("peer_handlers:chatty", 1, 2).await;
    let before = transport.handler_durations().snapshot();
    for _ in 0..2 {
        let response = pool.dispatch(NuclioEvent::new("")).await.unwrap();
        assert_eq!(full_body(&response.body), "done");
    }
    let after = transport.handler_durations().snapshot();
    assert_eq!(after.count - before.count, 2);
    // The handler sleeps 10 ms before answering.
    assert!(
        after.sum - before.sum >= Duration::from_millis(20),
        "{after:?}"
    );
    pool.shutdown(Duration::from_secs(5)).await;

    let handler_lines: Vec<String> = capture
        .events()
        .iter()
        .filter(|event| event.target == "async_worker_pool::nuclio::handler")
        .map(SeenEvent::line)
        .collect();
    for (level, message) in [
        ("DEBUG", "first"),
        ("INFO", "second"),
        ("WARN", "third"),
        ("ERROR", "fourth"),
    ] {
        assert!(
            handler_lines
                .iter()
                .any(|line| line.contains(level) && line.contains(message)),
            "no {level} {message:?} among\n{}",
            handler_lines.join("\n")
        );
    }
    assert!(
        handler_lines.iter().all(|line| line.contains("worker=0")),
        "{handler_lines:#?}"
    );
    assert!(
        handler_lines
            .iter()
            .any(|line| line.contains("second") && line.contains(r#"{\"step\":2}"#)),
        "{handler_lines:#?}"
    );
}

#[tokio::test]
async fn a_streamed_response_arrives_as_its_chunks() {
    let (pool, _) = pool("peer_handlers:streaming", 1, 2).await;
    let response = pool.dispatch(NuclioEvent::new("")).await.unwrap();
    assert_eq!(response.status_code, 206);
    assert_eq!(response.content_type, "text/csv");
    assert_eq!(
        response.body,
        NuclioBody::Streamed(vec![
            Bytes::from("alpha,"),
            Bytes::from("beta,"),
            Bytes::from("gamma")
        ])
    );
    assert_eq!(response.body.to_bytes(), "alpha,beta,gamma");
    // The connection is in step afterwards.
    let again = pool.dispatch(NuclioEvent::new("")).await.unwrap();
    assert_eq!(again.body.to_bytes(), "alpha,beta,gamma");
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn drain_lets_the_events_in_flight_finish() {
    let (pool, _) = pool("peer_handlers:slow", 1, 4).await;
    let pid = pool.stats().workers[0].pid.unwrap();
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.dispatch(NuclioEvent::new("0.6")).await })
        })
        .collect();
    wait_for(&pool, "three events in flight", STARTUP, |s| s.busy == 3).await;
    kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).unwrap();
    for event in in_flight {
        let response = event.await.unwrap().unwrap();
        assert_eq!(response.status_code, 200);
        assert_eq!(response.body.to_bytes(), "slept; drained=True");
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
    let response = pool.dispatch(NuclioEvent::new("0")).await.unwrap();
    assert_eq!(response.status_code, 200);
    let stats = pool.stats();
    assert_eq!(stats.worker_restarts, 0, "{stats:#?}");
    pool.shutdown(Duration::from_secs(5)).await;
}

/// A pool of one worker with `connections` slots on the peer, the launcher
/// adjusted by `adjust`, full before it is returned.
async fn pool_with(
    handler: &str,
    connections: usize,
    adjust: impl FnOnce(NuclioLauncherBuilder) -> NuclioLauncherBuilder,
) -> NuclioPool {
    let mut config = PoolConfig::default();
    config.max_connections = connections;
    let pool = Pool::builder(
        NuclioTransport::new(),
        adjust(launcher(handler)).build().unwrap(),
    )
    .config(config)
    .build()
    .unwrap();
    until_full(&pool).await;
    pool
}

fn json_body(response: &async_worker_pool::nuclio::NuclioResponse) -> serde_json::Value {
    assert_eq!(response.status_code, 200, "{response:?}");
    serde_json::from_slice(&response.body.to_bytes()).unwrap()
}

fn strings_event() -> NuclioEvent {
    let mut headers = BTreeMap::new();
    headers.insert("X-H5".to_owned(), "five".to_owned());
    NuclioEvent::http("GET", "/s", headers, "")
}

#[tokio::test]
async fn event_strings_are_decoded_as_nuclio_does_unless_turned_off() {
    let pool = pool_with("peer_handlers:strings", 1, |b| b).await;
    let seen = json_body(&pool.dispatch(strings_event()).await.unwrap());
    assert_eq!(seen["method"], "str");
    assert_eq!(seen["path"], "str");
    assert_eq!(seen["header_names"], serde_json::json!(["str"]));
    assert_eq!(seen["x_h5"], "'five'");
    pool.shutdown(Duration::from_secs(5)).await;

    for off in [
        launcher("peer_handlers:strings").decode_event_strings(false),
        launcher("peer_handlers:strings").env("NUCLIO_PYTHON_DECODE_EVENT_STRINGS", "disabled"),
    ] {
        let launcher = off.build().unwrap();
        assert!(!launcher.decodes_event_strings());
        let pool = Pool::builder(NuclioTransport::new(), launcher)
            .config(PoolConfig::default())
            .build()
            .unwrap();
        wait_for(&pool, "a slot", STARTUP, |s| s.idle > 0).await;
        let seen = json_body(&pool.dispatch(strings_event()).await.unwrap());
        assert_eq!(seen["method"], "bytes");
        assert_eq!(seen["header_names"], serde_json::json!(["bytes"]));
        assert_eq!(seen["x_h5"], "None");
        pool.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn answers_are_not_held_back_by_delayed_acknowledgements() {
    // The peer writes `m` and `r` in two sends with Nagle's algorithm on, as
    // Nuclio's wrapper does: unless the host acknowledges `m` at once, `r`
    // waits for the delayed acknowledgement, about 40 ms on Linux.
    let pool = pool_with("peer_handlers:trivial", 1, |b| b).await;
    let mut took = Vec::new();
    for _ in 0..60 {
        let started = Instant::now();
        let response = pool.dispatch(NuclioEvent::new("")).await.unwrap();
        took.push(started.elapsed());
        assert_eq!(response.body.to_bytes(), "ok");
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < Duration::from_millis(15),
        "median {median:?}; all: {took:?}"
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_batch_response_is_answered_with_its_first_and_carries_them_all() {
    let pool = pool_with("peer_handlers:batch", 1, |b| b).await;
    let response = pool.dispatch(NuclioEvent::new("")).await.unwrap();
    assert_eq!(response.status_code, 201);
    assert_eq!(response.body.to_bytes(), "first");
    assert_eq!(response.event_id, "e1");
    assert_eq!(response.batch.len(), 2);
    assert_eq!(response.batch[1].body.to_bytes(), "second");
    assert_eq!(response.batch[1].status_code, 200);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_http_request_reaches_the_handler_as_nuclios_http_trigger_gives_it() {
    let pool = pool_with("peer_handlers:http_view", 1, |b| b).await;
    let headers = [
        ("x-h5".to_owned(), "five".to_owned()),
        ("content-type".to_owned(), "text/plain".to_owned()),
    ];
    let event =
        NuclioEvent::from_http_request("PATCH", "/items/7?color=dark+red&n=%31", headers, "x");
    let seen = json_body(&pool.dispatch(event).await.unwrap());
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["path"], "/items/7");
    assert_eq!(seen["url"], "/items/7?color=dark+red&n=%31");
    assert_eq!(
        seen["fields"],
        serde_json::json!({"color": "dark red", "n": "1"})
    );
    assert_eq!(seen["x_h5"], "five");
    assert_eq!(seen["content_type"], "text/plain");
    pool.shutdown(Duration::from_secs(5)).await;
}

/// Runs `body` with `tracing` captured, and returns the events it logged, one
/// line each.
async fn capture_logs(body: impl std::future::Future<Output = ()>) -> String {
    let capture = Capture::start();
    body.await;
    capture.lines().join("\n")
}

fn has_line(text: &str, parts: &[&str]) -> bool {
    text.lines()
        .any(|line| parts.iter().all(|part| line.contains(part)))
}

#[tokio::test(flavor = "current_thread")]
async fn control_socket_logs_reach_tracing_at_their_level_even_before_initialization() {
    let text = capture_logs(async {
        let pool = pool_with("peer_handlers:chatty", 1, |b| b).await;
        pool.dispatch(NuclioEvent::new("")).await.unwrap();
        pool.shutdown(Duration::from_secs(5)).await;
    })
    .await;
    // init_context logs before the wrapper reports wrapperInitialized.
    assert!(
        has_line(
            &text,
            &[
                " INFO ",
                "async_worker_pool::nuclio::handler",
                "via=\"control socket\"",
                "initialized",
                r#"{\"worker\":"#
            ]
        ),
        "{text}"
    );
    assert!(
        has_line(&text, &[" WARN ", "via=\"event socket\"", "third"]),
        "{text}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn stdout_json_logs_reach_tracing_at_their_level() {
    let text = capture_logs(async {
        let pool = pool_with("peer_handlers:chatty", 1, |b| b.env("PEER_LOGS", "stdout")).await;
        pool.dispatch(NuclioEvent::new("")).await.unwrap();
        // The stdout pipe is read by a task of its own; give it a moment.
        sleep(Duration::from_millis(200)).await;
        pool.shutdown(Duration::from_secs(5)).await;
    })
    .await;
    for (level, message) in [
        (" INFO ", "initialized"),
        ("DEBUG ", "first"),
        (" WARN ", "third"),
        ("ERROR ", "fourth"),
    ] {
        assert!(
            has_line(
                &text,
                &[
                    level,
                    "async_worker_pool::nuclio::handler",
                    "via=\"stdout\"",
                    message
                ]
            ),
            "no {level} {message} from stdout in\n{text}"
        );
    }
    assert!(
        !has_line(&text, &["async_worker_pool::worker", "\"message\""]),
        "a JSON log record was forwarded as plain stdout:\n{text}"
    );
}

#[tokio::test]
async fn a_slow_accepting_wrapper_serves_at_once_and_gets_every_connection() {
    // One accept per 100 ms, and an exit as soon as any connection closes, as
    // Nuclio's early-2025 wrapper does: 150 connections take 15 s, more than
    // the three connect attempts of 4 s (and 0.3 s of backoff) a slot has.
    // The timeout also bounds the wrapper's start, which takes seconds on a
    // busy machine, so it cannot be much shorter.
    let mut config = PoolConfig::default();
    config.max_connections = 150;
    config.establish_connection_timeout = Duration::from_secs(4);
    let launcher = launcher("peer_handlers:echo")
        .env("PEER_ACCEPT_INTERVAL", "0.1")
        .env("PEER_EXIT_ON_CLOSE", "1")
        .build()
        .unwrap();
    let pool = Pool::builder(NuclioTransport::new(), launcher)
        .config(config)
        .build()
        .unwrap();
    let first = wait_for(&pool, "a first slot", STARTUP, |s| s.idle > 0).await;
    let pid = first.workers[0].pid;
    let response = pool.dispatch(NuclioEvent::new("early")).await.unwrap();
    assert_eq!(response.body.to_bytes(), "early");
    assert!(
        pool.stats().idle < 150,
        "served only once every connection was up"
    );
    let full = wait_for(
        &pool,
        "every slot to be idle",
        Duration::from_secs(60),
        |s| s.idle == s.capacity,
    )
    .await;
    assert_eq!(full.worker_restarts, 0, "{full:#?}");
    assert_eq!(full.workers[0].last_error, None, "{full:#?}");
    assert_eq!(full.workers[0].pid, pid);
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_idle_wrapper_that_ignores_sigusr1_is_stopped_within_two_seconds() {
    let pool = pool_with("peer_handlers:echo", 4, |b| {
        b.env("PEER_IGNORE_SIGUSR1", "1")
    })
    .await;
    let pid = pool.stats().workers[0].pid.unwrap();
    pool.dispatch(NuclioEvent::new("x")).await.unwrap();
    let started = Instant::now();
    pool.shutdown(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    assert!(
        kill(Pid::from_raw(pid as i32), None).is_err(),
        "the wrapper is still there"
    );
}

#[tokio::test]
async fn terminate_lets_the_event_in_flight_finish_before_it_stops_the_wrapper() {
    let launcher = launcher("peer_handlers:slow")
        .env("PEER_IGNORE_SIGUSR1", "1")
        .build()
        .unwrap();
    let mut worker = launcher.launch(WorkerId::new(0)).await.unwrap();
    let transport = NuclioTransport::new();
    // As a pool connects: with the wrapper's state attached, so its handle
    // counts the event in flight.
    let info = WorkerInfo::new(WorkerId::new(0), 1, worker.endpoint(), worker.pid())
        .with_attachments(worker.attachments());
    let mut conn = transport.connect(&info).await.unwrap();
    let in_flight =
        tokio::spawn(async move { conn.call(&transport, &NuclioEvent::new("0.8")).await });
    sleep(Duration::from_millis(100)).await;
    assert_eq!(worker.events_in_flight(), 1);
    let started = Instant::now();
    worker.terminate(Duration::from_secs(10)).await;
    let took = started.elapsed();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.body.to_bytes(), "slept; drained=False");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(3),
        "terminate took {took:?}"
    );
}

#[tokio::test]
async fn an_event_timeout_does_not_close_the_connection_under_the_wrapper() {
    // Nuclio's early-2025 wrapper exits when any connection closes; the peer
    // does so too when asked. A timed-out event's connection must therefore
    // be kept open until its late answer has come, then be used again.
    let mut config = PoolConfig::default();
    config.max_connections = 2;
    config.event_timeout = Some(Duration::from_millis(300));
    let launcher = launcher("peer_handlers:slow")
        .env("PEER_EXIT_ON_CLOSE", "1")
        .build()
        .unwrap();
    let pool = Pool::builder(NuclioTransport::new(), launcher)
        .config(config)
        .build()
        .unwrap();
    let first = wait_for(&pool, "every slot", STARTUP, |s| s.idle == s.capacity).await;
    let pid = first.workers[0].pid;
    let late = pool.dispatch(NuclioEvent::new("0.8")).await.unwrap_err();
    assert!(
        matches!(late, async_worker_pool::PoolError::EventTimeout { .. }),
        "{late:?}"
    );
    let response = pool.dispatch(NuclioEvent::new("0")).await.unwrap();
    assert_eq!(response.status_code, 200);
    // The late answer comes at 0.8 s; the slot is back by then.
    sleep(Duration::from_millis(1000)).await;
    wait_for(&pool, "every slot again", STARTUP, |s| s.idle == s.capacity).await;
    let response = pool.dispatch(NuclioEvent::new("0")).await.unwrap();
    assert_eq!(response.status_code, 200);
    let after = pool.stats();
    assert_eq!(after.worker_restarts, 0, "{after:#?}");
    assert_eq!(after.workers[0].pid, pid);
    pool.shutdown(Duration::from_secs(5)).await;
}
