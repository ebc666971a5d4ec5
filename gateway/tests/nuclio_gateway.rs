//! The Nuclio front end end to end, as an HTTP trigger: the real binary over
//! the tests' stand-in wrapper, a real HTTP client.
//!
//! It runs the binary with the Python named by `NUCLIO_TEST_PYTHON` (one with
//! msgpack and nuclio-sdk; `scripts/test.sh` makes it). Without it, the tests
//! fail and say what is missing.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod support;

/// A running gateway, stopped with SIGTERM when the test ends, so that it
/// stops its wrappers (a gateway killed outright would leave them running).
struct Gateway {
    child: Child,
    base: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        support::terminate(&mut self.child);
    }
}

fn gateway_binary() -> PathBuf {
    PathBuf::from(support::NUCLIO_GATEWAY)
}

fn python() -> String {
    std::env::var("NUCLIO_TEST_PYTHON").expect(
        "NUCLIO_TEST_PYTHON is not set: run `sh scripts/test.sh`, or set it to the Python \
         `sh scripts/nuclio_venv.sh` prints",
    )
}

fn start(args: &[&str]) -> Gateway {
    let (child, base, _log) = support::spawn_gateway(
        Command::new(gateway_binary())
            .args(["--listen", "127.0.0.1:0", "--shutdown-grace", "5s"])
            .args([
                "--python",
                &python(),
                "--workers",
                "1",
                "--max-connections",
                "4",
            ])
            .arg("--handler-path")
            .arg(support::workspace("tests/nuclio_handlers"))
            .args(args),
    );
    Gateway { child, base }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reaches_the_handler_as_nuclios_http_trigger_gives_it() {
    let gateway = start(&["--handler", "peer_handlers:http_view"]);
    let response = reqwest::Client::new()
        .get(format!("{}/items/7?color=dark+red&n=%31", gateway.base))
        .header("x-h5", "five")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/items/7");
    assert_eq!(
        seen["fields"],
        serde_json::json!({"color": "dark red", "n": "1"})
    );
    assert_eq!(seen["x_h5"], "five");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_reaches_the_handler_in_its_headers_with_tracestates_joined() {
    let gateway = start(&["--handler", "peer_handlers:http_view"]);
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = reqwest::Client::new()
        .get(format!("{}/traced", gateway.base))
        .header("traceparent", parent)
        .header("tracestate", "rojo=1")
        .header("tracestate", "congo=2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(seen["traceparent"], parent);
    assert_eq!(seen["tracestate"], "rojo=1,congo=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_yaml_sets_the_handler_environment_and_workers() {
    // No --handler, --workers or --max-connections: all from the spec.
    let (child, base, log) = support::spawn_gateway(
        Command::new(gateway_binary())
            .args(["--listen", "127.0.0.1:0", "--shutdown-grace", "5s"])
            .args(["--python", &python(), "--trigger", "web"])
            .arg("--handler-path")
            .arg(support::workspace("tests/nuclio_handlers"))
            .arg("--spec")
            .arg(support::crate_dir("tests/nuclio_functions/function.yaml")),
    );
    let gateway = Gateway { child, base };
    // The secret Nuclio would resolve is warned of, by its path; the keys
    // that do not apply here are not (they go to the debug log).
    let logged: Vec<String> = log.lock().unwrap().lines().map(str::to_owned).collect();
    assert!(
        logged
            .iter()
            .any(|line| line.contains(" WARN ")
                && line.contains("spec.env[1].valueFrom: not honoured")),
        "{logged:?}"
    );
    assert!(
        !logged.iter().any(|line| line.contains("spec.build")),
        "{logged:?}"
    );

    let workers = support::children(gateway.child.id());
    assert_eq!(
        workers.len(),
        2,
        "spec.triggers.web.numWorkers: {workers:?}"
    );
    let response = reqwest::Client::new()
        .post(format!("{}/", gateway.base))
        .body("GREETING,API_TOKEN,NUCLIO_FUNCTION_NAME")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "env": {
                "GREETING": "hello from function.yaml",
                "API_TOKEN": null,
                "NUCLIO_FUNCTION_NAME": "environment-reporter",
            },
            "namespace": "staging",
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_timeout_flag_bounds_an_event_without_a_spec() {
    let gateway = start(&[
        "--handler",
        "peer_handlers:slow",
        "--event-timeout",
        "300ms",
    ]);
    let client = reqwest::Client::new();
    let late = client
        .post(format!("{}/", gateway.base))
        .body("2")
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 504);
    let quick = client
        .post(format!("{}/", gateway.base))
        .body("0")
        .send()
        .await
        .unwrap();
    assert_eq!(quick.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_the_wrapper_under_load_with_no_failed_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    let gateway = start(&["--handler", "peer_handlers:slow"]);
    let pid = gateway.child.id();
    let old = support::children(pid);
    assert_eq!(old.len(), 1, "one wrapper process: {old:?}");

    // 100 requests a second, each a 20 ms event, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(support::steady_load(
        gateway.base.clone(),
        "0.02",
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    kill(Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
    loop {
        let now = support::children(pid);
        if now.len() == 1 && !old.contains(&now[0]) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no new wrapper after 30 s: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, SeqCst);
    let (sent, failures) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:?}",
        failures.len()
    );
    let metrics = reqwest::get(format!("{}/metrics", gateway.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "async_worker_pool_worker_restart_reasons_total{reason=\"reloaded\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        nix::sys::signal::kill(Pid::from_raw(old[0]), None),
        Err(nix::errno::Errno::ESRCH),
        "the old wrapper still runs"
    );
    println!("figure: SIGHUP replaced the wrapper in {took:?}; {sent} requests at 100/s, 0 failed");
}
