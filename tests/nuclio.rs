//! The `nuclio` feature against a peer wrapper written for these tests
//! (`tests/nuclio_peer/_nuclio_async_wrapper.py`, on msgpack and nuclio-sdk from
//! PyPI): readiness, bodies, headers, errors, logs and metrics, streaming, drain
//! and terminate.
//!
//! The peer needs a Python with msgpack and nuclio-sdk, named by the environment
//! variable `NUCLIO_TEST_PYTHON`; `scripts/test.sh` makes one. Without it every
//! test here fails and says what is missing: none passes without having run.

#![cfg(feature = "nuclio")]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_worker_pool::nuclio::{
    NuclioBody, NuclioEvent, NuclioLauncher, NuclioLauncherBuilder, NuclioSpec, NuclioTransport,
};
use async_worker_pool::{Launcher, Pool, Stats, WorkerId, WorkerProcess};
use bytes::Bytes;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

type NuclioPool = Pool<NuclioTransport>;

const STARTUP: Duration = Duration::from_secs(20);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The interpreter for the peer, checked once: it must import msgpack and nuclio_sdk.
fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let checked = PYTHON.get_or_init(|| {
        let Some(python) = std::env::var_os("NUCLIO_TEST_PYTHON") else {
            return Err(
                "NUCLIO_TEST_PYTHON is not set. Run `sh scripts/test.sh`, which makes a \
                        virtualenv with msgpack and nuclio-sdk, or set it to a Python that has \
                        both (`sh scripts/nuclio-venv.sh` prints one)"
                    .to_owned(),
            );
        };
        let output = std::process::Command::new(&python)
            .args(["-c", "import msgpack, nuclio_sdk"])
            .output()
            .map_err(|error| format!("NUCLIO_TEST_PYTHON={python:?} cannot be run: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "NUCLIO_TEST_PYTHON={python:?} cannot import msgpack and nuclio_sdk \
                 (pip install msgpack nuclio-sdk): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(PathBuf::from(python))
    });
    match checked {
        Ok(python) => python.clone(),
        Err(missing) => panic!("cannot run the nuclio tests: {missing}"),
    }
}

fn launcher(handler: &str) -> NuclioLauncherBuilder {
    NuclioLauncher::builder(
        manifest_dir().join("tests/nuclio_peer/_nuclio_async_wrapper.py"),
        handler,
    )
    .python(python())
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
    wait_for(&pool, "every slot to be idle", |s| s.idle == s.capacity).await;
    (pool, transport)
}

async fn wait_for(pool: &NuclioPool, what: &str, mut done: impl FnMut(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + STARTUP;
    loop {
        let stats = pool.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "waited {STARTUP:?} for {what}; last stats: {stats:#?}"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

fn full_body(body: &NuclioBody) -> Bytes {
    match body {
        NuclioBody::Full(body) => body.clone(),
        other => panic!("expected a whole body, got {other:?}"),
    }
}

#[tokio::test]
async fn launch_waits_for_wrapper_initialized_and_terminate_sends_sigusr1() {
    let launcher = launcher("peer_handlers:echo").build().unwrap();
    let mut worker = launcher.launch(WorkerId::new(3)).await.unwrap();
    assert!(worker.pid().is_some());
    // Ready means listening: connections open at once, each started with `s`.
    let transport = NuclioTransport::new();
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(
            transport
                .connect_endpoint(&worker.endpoint(), WorkerId::new(3))
                .await
                .unwrap(),
        );
    }
    let response = conns[2]
        .call(&transport, &NuclioEvent::new("direct"))
        .await
        .unwrap();
    assert_eq!(full_body(&response.body), "direct");
    let exit = worker.terminate(Duration::from_secs(5)).await;
    assert_eq!(
        exit.exit_code(),
        Some(0),
        "SIGUSR1 ends the wrapper cleanly"
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

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn interleaved_log_and_metric_lines_are_forwarded_and_counted() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
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

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let handler_lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("async_worker_pool::nuclio::handler"))
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
    wait_for(&pool, "three events in flight", |s| s.busy == 3).await;
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
