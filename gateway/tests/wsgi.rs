//! WSGI apps behind the pool: a real Flask app and a real Django project
//! (`tests/wsgi_apps/`), served unchanged by the HTTP gateway's `--wsgi`,
//! through its real binary, with a real HTTP client.
//!
//! The apps need Flask and Django from PyPI: the tests use the Python of the
//! virtualenv `scripts/uvloop_venv.sh` makes (it installs them), or the one
//! named by `ASGI_TEST_PYTHON`. Without either every test here fails and says
//! what is missing: none passes without having run.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

mod support;

use support::{Gateway, metric};

fn python() -> PathBuf {
    support::test_python(&["flask", "django"])
}

fn gateway_command(app: &str, args: &[&str]) -> Command {
    let mut command = Command::new(support::HTTP_GATEWAY);
    command
        .args(["--listen", "127.0.0.1:0", "--shutdown-grace", "5s"])
        .arg("--python")
        .arg(python())
        .arg("--handler-path")
        .arg(support::crate_dir("tests/wsgi_apps"))
        .args(["--wsgi", app])
        .args(args);
    command
}

fn start(app: &str, args: &[&str]) -> Gateway {
    support::start_gateway(&mut gateway_command(app, args))
}

async fn json(response: reqwest::Response) -> serde_json::Value {
    let status = response.status();
    let body = response.bytes().await.unwrap();
    assert!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    json(client.get(url).send().await.unwrap()).await
}

async fn metrics(client: &reqwest::Client, gateway: &Gateway) -> String {
    let response = client
        .get(format!("{}/metrics", gateway.base))
        .send()
        .await
        .unwrap();
    response.text().await.unwrap()
}

fn restarts(metrics: &str, reason: &str) -> f64 {
    let name = format!("async_worker_pool_worker_restart_reasons_total{{reason=\"{reason}\"}}");
    metric(metrics, &name).unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

/// A multipart/form-data body with one text field and one file, as a browser
/// sends it.
fn multipart(note: &str, filename: &str, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----async-worker-pool-boundary-7d9";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n{note}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `name=value` of each Set-Cookie header.
fn cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| {
            let text = value.to_str().unwrap();
            text.split(';').next().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_app_serves_params_json_uploads_cookies_sessions_files_and_errors() {
    let gateway = start("flask_app:app", &["--workers", "2"]);
    let client = reqwest::Client::new();
    let base = &gateway.base;

    let item = get_json(&client, format!("{base}/items/42?q=caf%C3%A9&limit=3")).await;
    assert_eq!(
        item,
        serde_json::json!({"item_id": 42, "q": "café", "limit": 3})
    );

    let created = client
        .post(format!("{base}/items"))
        .header("content-type", "application/json")
        .body(r#"{"name": "widget", "price": 2.5, "tags": ["a", "b"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(
        json(created).await,
        serde_json::json!({"name": "WIDGET", "price_cents": 250, "tags": ["b", "a"]})
    );

    let file: Vec<u8> = (0..8 * 1024 * 1024).map(|n: u32| (n % 251) as u8).collect();
    let (content_type, body) = multipart("eight mebibytes", "blob.bin", &file);
    let uploaded = client
        .post(format!("{base}/upload"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let uploaded = json(uploaded).await;
    assert_eq!(uploaded["filename"], "blob.bin");
    assert_eq!(uploaded["bytes"], 8 * 1024 * 1024);
    assert_eq!(uploaded["note"], "eight mebibytes");
    assert_eq!(uploaded["sha256"].as_str().unwrap().len(), 64);

    // A session cookie and a plain one, sent back as two Cookie headers: the
    // app sees them joined by "; ".
    let login = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=ann")
        .send()
        .await
        .unwrap();
    let set = cookies(&login);
    assert_eq!(json(login).await["logged_in"], "ann");
    assert_eq!(set.len(), 2, "{set:?}");
    let mut whoami = client.get(format!("{base}/whoami"));
    for cookie in &set {
        whoami = whoami.header("cookie", cookie);
    }
    assert_eq!(
        json(whoami.send().await.unwrap()).await,
        serde_json::json!({"user": "ann", "theme": "dark"})
    );

    let environ = client
        .get(format!("{base}/environ"))
        .header("x-repeat", "first")
        .header("x-repeat", "second")
        .send()
        .await
        .unwrap();
    assert_eq!(
        json(environ).await,
        serde_json::json!({"remote_addr": "127.0.0.1", "scheme": "http",
                           "server_protocol": "HTTP/1.1", "multithread": true,
                           "x_repeat": "first,second", "path": "/environ"})
    );

    let report = client
        .get(format!("{base}/report.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 200);
    assert_eq!(report.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(report.headers()["content-length"], "88890");
    let text = report.text().await.unwrap();
    assert!(text.starts_with("row,0\nrow,1\n") && text.ends_with("row,9999\n"));

    let missing = client.get(format!("{base}/missing")).send().await.unwrap();
    assert_eq!(missing.status(), 404, "Flask's abort(404)");

    let boom = client.get(format!("{base}/boom")).send().await.unwrap();
    assert_eq!(boom.status(), 500);
    assert_eq!(boom.text().await.unwrap(), "Internal Server Error\n");
    // The worker still serves.
    let index = get_json(&client, format!("{base}/")).await;
    assert_eq!(index["hello"], "world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_reaches_the_client_before_its_last_chunk_is_produced() {
    let gateway = start("flask_app:app", &["--workers", "1"]);
    let client = reqwest::Client::new();
    let mut response = client
        .get(format!("{}/stream", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-length").is_none());
    // The app produces its last chunk only after /release: if the response
    // were buffered, this first chunk would never come.
    let first = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("the first chunk arrives while the view still runs")
        .unwrap()
        .unwrap();
    assert_eq!(first.as_ref(), b"first\n");
    let notes = get_json(&client, format!("{}/notes", gateway.base)).await;
    assert_eq!(notes, serde_json::json!([]));
    let released = client
        .post(format!("{}/release", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 200);
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"last\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_project_serves_views_templates_forms_streams_and_files() {
    let gateway = start("django_site.wsgi:application", &["--workers", "1"]);
    let client = reqwest::Client::new();
    let base = &gateway.base;

    let hello = client
        .get(format!("{base}/hello/ann?from=rust"))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), 200);
    assert_eq!(hello.text().await.unwrap(), "hello, ann (rust)\n");

    let item = get_json(&client, format!("{base}/items/7")).await;
    assert_eq!(
        item,
        serde_json::json!({"item_id": 7, "method": "GET", "script_name": ""})
    );
    let deleted = client
        .delete(format!("{base}/items/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202, "the class-based view's delete()");

    let page = client
        .get(format!("{base}/greeting?name=%3Cb%3E"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        page.text().await.unwrap(),
        "<p>Hello, &lt;b&gt;!</p>\n<ul><li>one</li><li>two</li></ul>\n"
    );

    let form = client
        .post(format!("{base}/form"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=Zo%C3%AB&tag=a&tag=b")
        .send()
        .await
        .unwrap();
    assert_eq!(
        json(form).await,
        serde_json::json!({"name": "Zoë", "tags": ["a", "b"],
                           "content_type": "application/x-www-form-urlencoded"})
    );

    let mut stream = client.get(format!("{base}/stream")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers().get("content-length").is_none());
    let mut lines = Vec::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        lines.extend_from_slice(&chunk);
    }
    assert_eq!(lines, b"line 0\nline 1\nline 2\nline 3\nline 4\n");

    let file = client.get(format!("{base}/file")).send().await.unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(file.headers()["content-length"], "1048576");
    assert_eq!(
        file.headers()["content-disposition"],
        "attachment; filename=\"data.bin\""
    );
    let bytes = file.bytes().await.unwrap();
    let expected: Vec<u8> = (0..4096).flat_map(|_| 0..=255u8).collect();
    assert!(bytes[..] == expected[..], "FileResponse's bytes");

    let missing = client.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// Sends `GET /sleep?s=0.2` from `clients` tasks back to back until `stop`;
/// returns how many were sent, the worker pids that answered, and what went
/// wrong with any that did not get a 200.
async fn steady_sleepers(
    base: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (usize, Vec<u64>, Vec<String>) {
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut sent, mut pids, mut failures) = (0, Vec::new(), Vec::new());
                while !stop.load(SeqCst) {
                    sent += 1;
                    match client.get(format!("{base}/sleep?s=0.2")).send().await {
                        Ok(response) if response.status() == 200 => {
                            let body: serde_json::Value =
                                serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
                            pids.push(body["pid"].as_u64().unwrap());
                        }
                        Ok(response) => failures.push(format!(
                            "{}: {}",
                            response.status(),
                            response.text().await.unwrap_or_default()
                        )),
                        Err(error) => failures.push(error.to_string()),
                    }
                }
                (sent, pids, failures)
            })
        })
        .collect();
    let (mut sent, mut pids, mut failures) = (0, Vec::new(), Vec::new());
    for task in tasks {
        let (s, p, f) = task.await.unwrap();
        sent += s;
        pids.extend(p);
        failures.extend(f);
    }
    (sent, pids, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_stuck_past_the_event_timeout_gets_504_and_its_worker_is_recycled_new_before_old() {
    let gateway = start(
        "flask_app:app",
        &[
            "--workers",
            "1",
            "--wsgi-threads",
            "4",
            "--event-timeout",
            "2s",
        ],
    );
    let client = reqwest::Client::new();
    let old_pid = get_json(&client, format!("{}/", gateway.base)).await["pid"]
        .as_u64()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_sleepers(gateway.base.clone(), 3, stop.clone()));

    // Two minutes in time.sleep: nothing can stop the thread but the end of
    // its process.
    let started = Instant::now();
    let stuck = client
        .get(format!("{}/sleep?s=120", gateway.base))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(stuck.status(), 504);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "the 504 came after {waited:?}"
    );

    // The worker is replaced once its other requests are done; the new one
    // serves meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = metrics(&client, &gateway).await;
        let generation = metric(
            &metrics,
            "async_worker_pool_worker_generation{worker=\"0\"}",
        );
        if restarts(&metrics, "recycled_event_timeout") == 1.0
            && generation == Some(2.0)
            // The spare is gone again: one worker's four slots.
            && metric(&metrics, "async_worker_pool_capacity") == Some(4.0)
            && metric(
                &metrics,
                "async_worker_pool_worker_state{worker=\"0\",state=\"running\"}",
            ) == Some(1.0)
        {
            break metrics;
        }
        assert!(Instant::now() < deadline, "not recycled:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A little more load on the new worker, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, SeqCst);
    let (sent, pids, failures) = load.await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(sent > 20, "only {sent} requests");
    assert!(
        pids.contains(&old_pid),
        "the old worker served during the wait"
    );
    assert!(
        pids.iter().any(|&pid| pid != old_pid),
        "the new worker served"
    );
    // Its liveness probe kept the worker in service: the only restart is the recycle.
    for reason in ["unresponsive", "exited", "reconnect_failed"] {
        assert_eq!(restarts(&metrics, reason), 0.0, "{reason}:\n{metrics}");
    }
    assert_eq!(
        metric(
            &metrics,
            "async_worker_pool_events_total{result=\"timeout\"}"
        ),
        Some(1.0)
    );
    assert!(
        !support::is_alive(old_pid as u32),
        "the stuck thread ended with its process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_liveness_probe_answers_while_every_thread_is_busy() {
    // Probes every 200 ms, failed after 500 ms: a blocked loop would have the
    // worker restarted well within the views' 3 s.
    let gateway = start(
        "flask_app:app",
        &[
            "--workers",
            "1",
            "--wsgi-threads",
            "2",
            "--probe-interval",
            "200ms",
            "--probe-timeout",
            "500ms",
        ],
    );
    let client = reqwest::Client::new();
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{}/sleep?s=3", gateway.base));
            tokio::spawn(async move { client.get(url).send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = metrics(&client, &gateway).await;
    assert_eq!(
        metric(&during, "async_worker_pool_worker_busy_slots{worker=\"0\"}"),
        Some(2.0),
        "both threads busy: {during}"
    );
    for request in busy {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
    }
    let after = metrics(&client, &gateway).await;
    assert_eq!(restarts(&after, "unresponsive"), 0.0, "{after}");
    assert_eq!(
        metric(&after, "async_worker_pool_worker_generation{worker=\"0\"}"),
        Some(1.0)
    );
}

#[test]
fn an_app_that_does_not_import_fails_the_gateway_with_its_error() {
    let output = gateway_command("flask_app:no_such_app", &["--workers", "1"])
        .args(["--establish-connection-timeout", "10s"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no_such_app"), "{stderr}");
}
