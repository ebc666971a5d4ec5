//! The HTTP gateway example end to end: the real binary, real Python workers, a
//! real HTTP client.
//!
//! The test runs the example's binary, which `scripts/test.sh` builds first
//! (`cargo build --examples`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod real_support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use real_support::is_alive;

/// A running gateway, killed if the test fails before stopping it.
struct Gateway {
    child: Child,
    base: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/this-test → target/<profile>/examples/http_gateway
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("http_gateway"))
        .expect("a target directory layout");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --example http_gateway` \
         (scripts/test.sh does so)",
        path.display()
    );
    path
}

fn start(args: &[&str]) -> Gateway {
    start_with_env(args, &[])
}

/// Starts the gateway with extra environment variables.
fn start_with_env(args: &[&str], env: &[(&str, &Path)]) -> Gateway {
    let mut child = Command::new(gateway_binary())
        .args(["--listen", "127.0.0.1:0", "--shutdown-grace", "5s"])
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the gateway starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .expect("the gateway prints its address")
        .unwrap();
    let base = first
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    // Keep draining stdout so that the gateway never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Gateway { child, base }
}

/// The gateway's worker processes, from the kernel's list of its children.
fn children(pid: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        pids.extend(text.split_whitespace().map(|p| p.parse::<i32>().unwrap()));
    }
    pids
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
    assert!(
        raised
            .text()
            .await
            .unwrap()
            .contains("ValueError: asked to raise")
    );

    let exited = post("exit").await;
    assert_eq!(exited.status(), 502);
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

#[test]
fn sighup_stops_the_gateway_gracefully_with_its_workers() {
    let gateway = start(&["--workers", "2", "--max-connections", "10"]);
    stop_with(gateway, Signal::SIGHUP);
}
