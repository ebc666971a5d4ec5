//! The HTTP gateway end to end: the real binary (cargo builds it for these
//! tests), real Python workers, a real HTTP client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{children, is_alive};

use support::Gateway;

fn gateway_binary() -> PathBuf {
    PathBuf::from(support::HTTP_GATEWAY)
}

fn start(args: &[&str]) -> Gateway {
    start_with_env(args, &[])
}

/// Starts the gateway with extra environment variables. A handler that
/// `args` name comes from the library's examples unless they say where; with
/// none, the gateway serves its own default.
fn start_with_env(args: &[&str], env: &[(&str, &Path)]) -> Gateway {
    let mut command = Command::new(gateway_binary());
    if args.contains(&"--handler") && !args.contains(&"--handler-path") {
        command
            .arg("--handler-path")
            .arg(support::workspace("examples/handlers"));
    }
    support::start_gateway(
        command
            .args(["--listen", "127.0.0.1:0", "--shutdown-grace", "5s"])
            .args(args)
            .envs(env.iter().copied()),
    )
}

fn stop(gateway: Gateway) {
    stop_with(gateway, Signal::SIGTERM);
}

/// Stops the gateway with `signal` and checks that it exits cleanly, leaving
/// no worker behind.
fn stop_with(mut gateway: Gateway, signal: Signal) {
    let pid = gateway.child.id();
    let workers = children(pid);
    assert!(!workers.is_empty(), "the gateway runs worker processes");
    kill(Pid::from_raw(pid as i32), signal).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = gateway.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no exit after {signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    for worker in workers {
        assert!(
            !is_alive(worker as u32),
            "worker {worker} outlived the gateway"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_round_trips_bodies_and_serves_metrics_and_health() {
    let gateway = start(&[
        "--handler",
        "echo:handler",
        "--workers",
        "2",
        "--max-connections",
        "50",
    ]);
    let client = reqwest::Client::new();
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    for body in [b"hello gateway".to_vec(), binary] {
        let response = client
            .post(format!("{}/echo?x=1", gateway.base))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-worker-id"));
        assert_eq!(response.bytes().await.unwrap().as_ref(), body.as_slice());
    }
    // Many at once, over both workers.
    let requests: Vec<_> = (0..200)
        .map(|n| {
            let (client, url) = (client.clone(), format!("{}/n", gateway.base));
            tokio::spawn(async move { client.post(url).body(format!("{n}")).send().await })
        })
        .collect();
    for (n, request) in requests.into_iter().enumerate() {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), n.to_string());
    }

    let health = client
        .get(format!("{}/healthz", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        health
            .text()
            .await
            .unwrap()
            .starts_with("2 of 2 workers running")
    );

    let metrics = client
        .get(format!("{}/metrics", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("async_worker_pool_capacity 100\n"), "{text}");
    assert!(
        text.contains("async_worker_pool_events_total{result=\"ok\"} 202\n"),
        "{text}"
    );
    stop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_maps_raised_timed_out_and_dead_workers_to_500_504_and_502() {
    let gateway = start(&[
        "--handler",
        "faulty:handler",
        "--workers",
        "2",
        "--max-connections",
        "4",
        "--event-timeout",
        "1s",
        "--establish-connection-timeout",
        "2s",
    ]);
    let client = reqwest::Client::new();
    let post = |body: &'static str| {
        let (client, url) = (client.clone(), format!("{}/", gateway.base));
        async move { client.post(url).body(body).send().await.unwrap() }
    };
    let raised = post("raise").await;
    assert_eq!(raised.status(), 500);
    assert_eq!(raised.text().await.unwrap(), "Internal Server Error\n");
    // An exception's message is for the operator's log, never the client.
    let leaked = post("leak").await;
    assert_eq!(leaked.status(), 500);
    let body = leaked.text().await.unwrap();
    assert!(
        !body.contains("s3cr3t") && !body.contains("10.0.0.7"),
        "{body}"
    );
    let started = Instant::now();
    while !gateway.log.lock().unwrap().contains("s3cr3t-pw@10.0.0.7") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the exception is not in the log: {}",
            gateway.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let exited = post("exit").await;
    assert_eq!(exited.status(), 502);
    assert_eq!(exited.text().await.unwrap(), "Bad Gateway\n");
    // The dead worker is relaunched and the gateway serves from both again.
    let started = Instant::now();
    loop {
        let health = client
            .get(format!("{}/healthz", gateway.base))
            .send()
            .await
            .unwrap();
        if health
            .text()
            .await
            .unwrap()
            .starts_with("2 of 2 workers running; 8 of 8")
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(post("still serving").await.status(), 200);

    let timed_out = post("block").await;
    assert_eq!(timed_out.status(), 504);
    stop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_503_with_retry_after_when_no_connection_is_free() {
    let gateway = start(&[
        "--handler",
        "sleepy:handler",
        "--max-connections",
        "1",
        "--connection-availability-timeout",
        "0s",
    ]);
    let client = reqwest::Client::new();
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), format!("{}/", gateway.base));
        async move { client.post(url).body("1.0").send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = client
        .post(format!("{}/", gateway.base))
        .body("0")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(slow.await.unwrap(), 200);
    stop(gateway);
}

/// The threads of the gateway's tokio runtime, by the name tokio gives them
/// by default. The gateway starts no blocking-pool threads, which would carry
/// the same name.
fn runtime_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|task| {
            let comm = task.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap_or_default().trim() == "tokio-rt-worker"
        })
        .count()
}

#[test]
fn gateway_sizes_its_runtime_beside_its_workers_unless_told() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let gateway = start(&["--workers", "2", "--max-connections", "4"]);
    assert_eq!(
        runtime_threads(gateway.child.id()),
        cores.saturating_sub(2).max(1),
        "by default, the cores the 2 workers leave free, at least one ({cores} cores)"
    );
    stop(gateway);
    let gateway = start(&["--threads", "3", "--max-connections", "4"]);
    assert_eq!(runtime_threads(gateway.child.id()), 3);
    stop(gateway);
}

#[test]
fn gateway_refuses_a_handler_that_does_not_import_at_start() {
    let output = Command::new(gateway_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--handler",
            "no_such_module:handler",
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("worker 0 did not start"), "{stderr}");
    assert!(
        stderr.contains("No module named 'no_such_module'"),
        "{stderr}"
    );
}

#[test]
fn gateway_names_a_socket_directory_it_cannot_create() {
    let output = Command::new(gateway_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--socket-dir",
            "/proc/no/such/dir",
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/proc/no/such/dir"), "{stderr}");
}

#[test]
fn gateway_names_an_address_already_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(gateway_binary())
        .args(["--listen", &address])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
    assert!(stderr.contains("--listen"), "{stderr}");
}

#[test]
fn gateway_names_a_missing_python() {
    let output = Command::new(gateway_binary())
        .args(["--listen", "127.0.0.1:0", "--python", "no-such-python3"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no-such-python3 not found"), "{stderr}");
}

/// The Unix socket files under `dir`, at any depth.
fn socket_files(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            found.extend(socket_files(&entry.path()));
        } else if kind.is_socket() {
            found.push(entry.path());
        }
    }
    found
}

#[test]
fn workers_and_their_socket_files_go_within_two_seconds_of_a_gateway_sigkill() {
    // The gateway makes its socket directory under TMPDIR: a fresh one here,
    // so that what is left behind can be counted.
    let tmp = tempfile::tempdir().unwrap();
    let gateway = start_with_env(
        &["--workers", "2", "--max-connections", "10"],
        &[("TMPDIR", tmp.path())],
    );
    let pid = gateway.child.id();
    let workers = children(pid);
    assert_eq!(workers.len(), 2, "two worker processes: {workers:?}");
    assert_eq!(socket_files(tmp.path()).len(), 2);

    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    loop {
        let alive: Vec<_> = workers
            .iter()
            .filter(|&&worker| is_alive(worker as u32))
            .collect();
        let sockets = socket_files(tmp.path());
        if alive.is_empty() && sockets.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "2 s after the gateway's SIGKILL: workers {alive:?} alive, sockets {sockets:?} left"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "liveness: workers and socket files gone {:?} after the gateway's SIGKILL",
        killed.elapsed()
    );
    // The launcher's directory went with the last worker.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(gateway);
}

/// A steady load on `gateway` while `operate` runs; panics if any request failed.
async fn under_steady_load<F: Future<Output = ()>>(gateway: &Gateway, operate: F) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(support::steady_load(
        gateway.base.clone(),
        "0.05",
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    operate.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, SeqCst);
    let (sent, failures) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:?}",
        failures.len()
    );
    sent
}

/// Waits up to `limit` for the gateway's worker processes to satisfy `done`.
async fn until_children(
    gateway: &Gateway,
    what: &str,
    limit: Duration,
    done: impl Fn(&[i32]) -> bool,
) {
    let started = Instant::now();
    loop {
        let mut pids = children(gateway.child.id());
        pids.sort_unstable();
        if done(&pids) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "waited {limit:?} for {what}; workers {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to `limit` for /healthz to start with `prefix`.
async fn until_health(gateway: &Gateway, prefix: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let response = reqwest::get(format!("{}/healthz", gateway.base))
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        if text.starts_with(prefix) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "waited {limit:?} for {prefix:?}; health {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One sample of the gateway's /metrics, by its full name and labels.
async fn metric(gateway: &Gateway, sample: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", gateway.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
}

const RELOADED: &str = "async_worker_pool_worker_restart_reasons_total{reason=\"reloaded\"}";
const RECYCLED: &str = "async_worker_pool_worker_restart_reasons_total{reason=\"recycled_events\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_both_workers_under_load_with_no_failed_request() {
    let gateway = start(&[
        "--handler",
        "sleepy:handler",
        "--workers",
        "2",
        "--max-connections",
        "20",
    ]);
    let pid = gateway.child.id();
    let mut old = children(pid);
    old.sort_unstable();
    assert_eq!(old.len(), 2);
    let mut took = Duration::ZERO;
    let sent = under_steady_load(&gateway, async {
        let started = Instant::now();
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
        until_children(
            &gateway,
            "two new workers",
            Duration::from_secs(30),
            |pids| pids.len() == 2 && pids.iter().all(|p| !old.contains(p)),
        )
        .await;
        took = started.elapsed();
    })
    .await;
    assert!(gateway.child.id() == pid && children(pid).len() == 2);
    assert_eq!(metric(&gateway, RELOADED).await, 2);
    println!(
        "figure: SIGHUP replaced both workers in {took:?}; {sent} requests at 100/s, 0 failed"
    );
    for worker in old {
        assert!(!is_alive(worker as u32), "old worker {worker} still runs");
    }
    stop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_events_per_worker_recycles_under_load_with_no_failed_request() {
    let gateway = start(&[
        "--handler",
        "sleepy:handler",
        "--workers",
        "2",
        "--max-connections",
        "20",
        "--max-events-per-worker",
        "200",
        "--min-worker-uptime",
        "0s",
    ]);
    let sent = under_steady_load(&gateway, async {
        tokio::time::sleep(Duration::from_secs(8)).await;
    })
    .await;
    let recycled = metric(&gateway, RECYCLED).await;
    // 2 workers × 200 to 220 events each per generation.
    assert!(recycled >= 2, "{recycled} recycles for {sent} requests");
    println!(
        "figure: --max-events-per-worker 200: {recycled} recycles over {sent} requests at 100/s, 0 failed"
    );
    stop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigttin_grows_to_two_workers_and_sigttou_shrinks_back_under_load() {
    let gateway = start(&[
        "--handler",
        "sleepy:handler",
        "--workers",
        "1",
        "--max-connections",
        "20",
    ]);
    let pid = Pid::from_raw(gateway.child.id() as i32);
    let first = children(gateway.child.id());
    let mut took = (Duration::ZERO, Duration::ZERO);
    let sent = under_steady_load(&gateway, async {
        let started = Instant::now();
        kill(pid, Signal::SIGTTIN).unwrap();
        until_health(&gateway, "2 of 2 workers running", Duration::from_secs(30)).await;
        took.0 = started.elapsed();
        assert_eq!(children(gateway.child.id()).len(), 2);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = Instant::now();
        kill(pid, Signal::SIGTTOU).unwrap();
        until_children(
            &gateway,
            "one worker again",
            Duration::from_secs(30),
            |pids| pids == first,
        )
        .await;
        took.1 = started.elapsed();
    })
    .await;
    assert_eq!(metric(&gateway, "async_worker_pool_capacity").await, 20);
    println!(
        "figure: SIGTTIN 1→2 workers in {:?}, SIGTTOU 2→1 in {:?}; {sent} requests at 100/s, 0 failed",
        took.0, took.1
    );
    stop(gateway);
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_sent_to_the_gateway_is_seen_by_the_handler() {
    let handlers = support::workspace("tests/handlers");
    // Both connection modes: one connection per slot, and streams on one.
    for multiplex in ["0", "1"] {
        let gateway = start(&[
            "--handler",
            "trace:handler",
            "--handler-path",
            handlers.to_str().unwrap(),
            "--workers",
            "1",
            "--max-connections",
            "2",
            "--multiplex",
            multiplex,
        ]);
        let base = &gateway.base;
        let client = reqwest::Client::new();
        let seen = client
            .get(format!("{base}/traced"))
            .header("traceparent", PARENT)
            .header("tracestate", "rojo=00f067aa0ba902b7")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            seen,
            format!(r#"{{"traceparent": "{PARENT}", "tracestate": "rojo=00f067aa0ba902b7"}}"#),
            "--multiplex {multiplex}"
        );
        // No trace context in, none for the handler; an invalid one is dropped.
        for headers in [vec![], vec![("traceparent", "00-garbage-01")]] {
            let mut request = client.get(format!("{base}/untraced"));
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let seen = request.send().await.unwrap().text().await.unwrap();
            assert_eq!(seen, "null", "--multiplex {multiplex}");
        }
    }
}

/// The access lines in `gateway`'s log, once there are `count` of them
/// (they are written when a response has gone out, just after the client
/// has it), or those there are after `wait`.
async fn access_lines(gateway: &Gateway, count: usize, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    loop {
        let lines: Vec<String> = gateway
            .log
            .lock()
            .unwrap()
            .lines()
            .filter(|line| line.contains("http_gateway::access"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_off_by_default() {
    let gateway = start(&["--workers", "1", "--max-connections", "2"]);
    let answer = reqwest::get(format!("{}/quiet", gateway.base))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().get("x-request-id").is_none());
    let lines = access_lines(&gateway, 1, Duration::from_millis(500)).await;
    assert_eq!(lines, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_writes_a_line_per_request_with_its_id_and_worker() {
    // RUST_LOG=warn (the test support's) does not hide what the flag asks for.
    let gateway = start(&[
        "--handler",
        "sleepy:handler",
        "--workers",
        "1",
        "--max-connections",
        "2",
        "--access-log",
    ]);
    let client = reqwest::Client::new();
    let kept = client
        .post(format!("{}/items?page=2", gateway.base))
        .header("x-request-id", "req-42")
        .body("0")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), 200);
    assert_eq!(kept.headers()["x-request-id"], "req-42");
    let made = client
        .get(format!("{}/healthz", gateway.base))
        .send()
        .await
        .unwrap();
    let made_id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made_id.len(), 32, "{made_id}");
    // A client that gives up before its answer.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/slow", gateway.base))
        .body("2")
        .send()
        .await;
    assert!(gave_up.is_err());

    let lines = access_lines(&gateway, 3, Duration::from_secs(5)).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let line = |what: &str| {
        lines
            .iter()
            .find(|line| line.contains(what))
            .unwrap_or_else(|| panic!("no line with {what:?} in {lines:#?}"))
            .clone()
    };
    let first = line("/items");
    assert!(
        first.contains(" INFO http_gateway::access: 127.0.0.1:"),
        "{first}"
    );
    assert!(
        first.contains(r#" - "POST /items?page=2 HTTP/1.1" 200 "#),
        "{first}"
    );
    assert!(first.contains("request_id=req-42 worker=0"), "{first}");
    let duration = first
        .split_whitespace()
        .find(|word| word.ends_with("ms"))
        .and_then(|word| word.trim_end_matches("ms").parse::<f64>().ok());
    assert!(duration.is_some(), "a duration in {first}");
    // The gateway's own routes are served by no worker.
    let health = line("/healthz");
    assert!(
        health.contains(&format!("request_id={made_id} worker=-")),
        "{health}"
    );
    // The client that went away: nginx's 499, no bytes, and the worker that
    // had its request.
    let slow = line("/slow");
    assert!(slow.contains(r#" HTTP/1.1" 499 - "#), "{slow}");
    assert!(slow.contains("worker=0"), "{slow}");
}

/// One request written by hand over the Unix socket at `path`: the whole
/// response, head and body.
async fn over_unix_socket(path: &Path, target: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uds_serves_http_on_a_unix_socket_after_removing_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.sock");
    // A gateway killed outright leaves its socket file behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let gateway = start(&[
        "--uds",
        path.to_str().unwrap(),
        "--workers",
        "1",
        "--max-connections",
        "2",
    ]);
    assert_eq!(gateway.base, format!("unix:{}", path.display()));
    let answer = over_unix_socket(&path, "/over/uds?x=1").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\nhello from worker 0: GET /over/uds?x=1\n"),
        "{answer}"
    );
    let health = over_unix_socket(&path, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");

    // A second gateway does not take the socket of one that still listens.
    let refused = Command::new(gateway_binary())
        .args(["--uds", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("another process listens"), "{stderr}");

    stop(gateway);
    assert!(!path.exists(), "the socket is removed at exit");
}
