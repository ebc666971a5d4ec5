//! ASGI apps behind the pool: a real FastAPI app and a real Starlette app
//! (`tests/asgi_apps/`), served unchanged by the HTTP gateway's
//! `--asgi`, through its real binary, with a real HTTP client.
//!
//! The apps need FastAPI and Starlette from PyPI: the tests use the Python of
//! the virtualenv `scripts/uvloop_venv.sh` makes (it installs them), or the one
//! named by `ASGI_TEST_PYTHON`. Without either every test here fails and says
//! what is missing: none passes without having run.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use async_worker_pool::net::SocketTransport;
use async_worker_pool::process::Lifespan;
use async_worker_pool::{Pool, ProcessLauncher};

mod support;

fn apps_dir() -> PathBuf {
    support::crate_dir("tests/asgi_apps")
}

/// The interpreter of the tests' virtualenv, with FastAPI and Starlette.
fn python() -> PathBuf {
    support::test_python(&["fastapi", "starlette", "uvloop"])
}

use support::Gateway;

fn gateway_command(app: &str, args: &[&str]) -> Command {
    let binary = PathBuf::from(support::HTTP_GATEWAY);
    let mut command = Command::new(binary);
    command
        .args(["--listen", "127.0.0.1:0", "--shutdown-grace", "5s"])
        .arg("--python")
        .arg(python())
        .arg("--handler-path")
        .arg(apps_dir())
        .args(["--asgi", app, "--max-connections", "20"])
        .args(args);
    command
}

fn start(app: &str, args: &[&str]) -> Gateway {
    support::start_gateway(&mut gateway_command(app, args))
}

async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

async fn notes(client: &reqwest::Client, gateway: &Gateway) -> Vec<String> {
    let notes = get_json(client, format!("{}/notes", gateway.base)).await;
    serde_json::from_value(notes).unwrap()
}

/// Waits until the app has noted `note`, failing after 10 s.
async fn wait_for_note(client: &reqwest::Client, gateway: &Gateway, note: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = notes(client, gateway).await;
        if seen.iter().any(|seen| seen == note) {
            return;
        }
        assert!(Instant::now() < deadline, "no {note:?} in {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_app_serves_params_json_uploads_headers_state_and_errors() {
    let gateway = start("fastapi_app:app", &["--workers", "2"]);
    let client = reqwest::Client::new();

    let item = get_json(
        &client,
        format!("{}/items/42?q=caf%C3%A9&limit=3", gateway.base),
    )
    .await;
    assert_eq!(
        item,
        serde_json::json!({"item_id": 42, "q": "café", "limit": 3})
    );
    let invalid = client
        .get(format!("{}/items/not-a-number", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 422, "FastAPI's own validation error");

    let created = client
        .post(format!("{}/items", gateway.base))
        .header("content-type", "application/json")
        .body(r#"{"name": "widget", "price": 2.5, "tags": ["a", "b"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&created.bytes().await.unwrap()).unwrap(),
        serde_json::json!({"name": "WIDGET", "price_cents": 250, "tags": ["b", "a"]})
    );

    let upload: Vec<u8> = (0..8 * 1024 * 1024).map(|n: u32| (n % 251) as u8).collect();
    let uploaded = client
        .post(format!("{}/upload", gateway.base))
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 200);
    let uploaded: serde_json::Value =
        serde_json::from_slice(&uploaded.bytes().await.unwrap()).unwrap();
    assert_eq!(uploaded["bytes"], 8 * 1024 * 1024);
    assert_eq!(uploaded["sha256"].as_str().unwrap().len(), 64);

    let headers = client
        .get(format!("{}/headers", gateway.base))
        .header("x-repeat", "first")
        .header("x-repeat", "second")
        .send()
        .await
        .unwrap();
    assert_eq!(headers.status(), 200);
    let multi: Vec<_> = headers
        .headers()
        .get_all("x-multi")
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(multi, ["one", "two"]);
    let seen: serde_json::Value = serde_json::from_slice(&headers.bytes().await.unwrap()).unwrap();
    assert_eq!(seen["x-repeat"], serde_json::json!(["first", "second"]));
    assert_eq!(seen["scheme"], "http");
    assert_eq!(seen["http_version"], "1.1");
    assert_eq!(seen["client"][0], "127.0.0.1");

    let state = get_json(&client, format!("{}/state", gateway.base)).await;
    assert_eq!(state["greeting"], "hello from the lifespan");

    let boom = client
        .get(format!("{}/boom", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(boom.status(), 500);
    // The worker still serves.
    let trivial = get_json(&client, format!("{}/", gateway.base)).await;
    assert_eq!(trivial, serde_json::json!({"hello": "world"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_response_reaches_the_client_before_its_last_chunk_is_produced() {
    let gateway = start("fastapi_app:app", &["--workers", "1"]);
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
        .expect("the first chunk arrives while the app still runs")
        .unwrap()
        .unwrap();
    assert_eq!(first.as_ref(), b"first\n");
    assert!(
        !notes(&client, &gateway)
            .await
            .contains(&"last chunk produced".to_owned())
    );
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
async fn background_tasks_run_after_the_response() {
    let gateway = start("fastapi_app:app", &["--workers", "1"]);
    let client = reqwest::Client::new();
    let queued = get_json_post(&client, format!("{}/background", gateway.base)).await;
    assert_eq!(queued["queued"], true);
    wait_for_note(&client, &gateway, "background ran").await;
}

async fn get_json_post(client: &reqwest::Client, url: String) -> serde_json::Value {
    let response = client.post(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_its_client_disconnect() {
    let gateway = start("fastapi_app:app", &["--workers", "1"]);
    let client = reqwest::Client::new();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .get(format!("{}/wait-disconnect", gateway.base))
        .send()
        .await;
    assert!(gave_up.is_err(), "the route waits for the disconnect");
    wait_for_note(&client, &gateway, "client disconnected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_stops_the_app_and_the_slot_comes_back() {
    let gateway = start("fastapi_app:app", &["--workers", "1"]);
    let client = reqwest::Client::new();
    let mut response = client
        .get(format!("{}/ticks", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.chunk().await.unwrap().unwrap().as_ref(), b"tick\n");
    drop(response);
    wait_for_note(&client, &gateway, "ticks stopped").await;
    // Every slot is idle again: the one that streamed was restarted, not lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = client
            .get(format!("{}/metrics", gateway.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("async_worker_pool_slots{state=\"idle\"} 20") {
            break;
        }
        assert!(Instant::now() < deadline, "slots not all idle:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_route_gets_504_and_its_worker_is_replaced() {
    let gateway = start(
        "fastapi_app:app",
        &["--workers", "1", "--event-timeout", "1s"],
    );
    let client = reqwest::Client::new();
    let started = Instant::now();
    let blocked = client
        .get(format!("{}/block", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(blocked.status(), 504);
    // The blocked worker is probed, killed and relaunched (lifespan again).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = client.get(format!("{}/state", gateway.base)).send().await;
        if let Ok(response) = response {
            if response.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no worker serves again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "recovered well before the 30 s the route blocks for"
    );
}

#[test]
fn a_failed_lifespan_startup_fails_the_gateway_with_the_apps_message() {
    let output = gateway_command("fastapi_app:failing_app", &["--workers", "1"])
        .args(["--establish-connection-timeout", "10s"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("database unreachable at startup"),
        "the app's message in the gateway's log: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lifespan_startup_is_the_error_of_ready() {
    let launcher = ProcessLauncher::asgi_app("fastapi_app:failing_app")
        .python(python())
        .handler_path(apps_dir())
        .lifespan(Lifespan::On)
        .connections(2)
        .build()
        .unwrap();
    let pool = Pool::builder(SocketTransport::new(), launcher)
        .max_connections(2)
        .build()
        .unwrap();
    let error = pool
        .ready(Duration::from_secs(20))
        .await
        .expect_err("the launch fails");
    let message = format!("{error:?} {error}");
    assert!(
        message.contains("database unreachable at startup"),
        "{message}"
    );
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starlette_app_serves_path_params_json_streams_and_errors() {
    let gateway = start("starlette_app:app", &["--workers", "1"]);
    let client = reqwest::Client::new();
    let user = get_json(&client, format!("{}/users/7?sort=a&sort=b", gateway.base)).await;
    assert_eq!(
        user,
        serde_json::json!({"user": 7, "sort": ["a", "b"], "path": "/users/7",
                           "raw_path": "/users/7", "state": "starlette state"})
    );
    let echoed = client
        .post(format!("{}/echo", gateway.base))
        .header("content-type", "application/json")
        .body(r#"{"list": [1, 2, {"x": null}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&echoed.bytes().await.unwrap()).unwrap(),
        serde_json::json!({"echo": {"list": [1, 2, {"x": null}]}, "type": "application/json"})
    );
    let counted = client
        .get(format!("{}/count", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(counted.status(), 200);
    assert_eq!(counted.text().await.unwrap(), "0\n1\n2\n");
    let failed = client
        .get(format!("{}/fail", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    let missing = client
        .get(format!("{}/nowhere", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_root_path_the_routes_answer_and_the_openapi_document_carries_the_prefix() {
    let gateway = start(
        "fastapi_app:app",
        &["--workers", "1", "--root-path", "/api"],
    );
    let client = reqwest::Client::new();
    // The proxy in front strips the prefix; the app routes what is left.
    let item = get_json(&client, format!("{}/items/7?q=x", gateway.base)).await;
    assert_eq!(
        item,
        serde_json::json!({"item_id": 7, "q": "x", "limit": 10})
    );
    // As under uvicorn --root-path: FastAPI names the prefix as the server
    // of its OpenAPI document, and its docs page loads the document there.
    let openapi = get_json(&client, format!("{}/openapi.json", gateway.base)).await;
    assert_eq!(openapi["servers"], serde_json::json!([{"url": "/api"}]));
    let docs = client
        .get(format!("{}/docs", gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    let page = docs.text().await.unwrap();
    assert!(page.contains("'/api/openapi.json'"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_factory_each_worker_calls_the_factory_once_for_its_app() {
    let gateway = start(
        "factory_app:create_app",
        &["--workers", "2", "--factory", "--root-path", "/v1"],
    );
    let client = reqwest::Client::new();
    for _ in 0..4 {
        let made = get_json(&client, format!("{}/made", gateway.base)).await;
        assert_eq!(
            made,
            serde_json::json!({"made_by": "create_app", "apps_made": 1, "root_path": "/v1"})
        );
    }
}

#[test]
fn factory_and_root_path_need_asgi() {
    for flag in [&["--factory"][..], &["--root-path", "/api"]] {
        let output = Command::new(support::HTTP_GATEWAY)
            .args(flag)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--asgi"), "{stderr}");
    }
}

/// The scheme and client the app's scope had, asked from `local` with
/// forwarding headers a proxy would add.
async fn seen_through_proxy_headers(gateway: &Gateway, local: &str) -> (String, serde_json::Value) {
    let client = reqwest::Client::builder()
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let seen = client
        .get(format!("{}/headers", gateway.base))
        .header("x-forwarded-for", "203.0.113.9, 198.51.100.7")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 200);
    let seen: serde_json::Value = serde_json::from_slice(&seen.bytes().await.unwrap()).unwrap();
    (
        seen["scheme"].as_str().unwrap().to_owned(),
        seen["client"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_set_the_scopes_client_and_scheme_only_from_a_trusted_peer() {
    let gateway = start(
        "fastapi_app:app",
        &[
            "--workers",
            "1",
            "--proxy-headers",
            "--forwarded-allow-ips",
            "127.0.0.1",
            "--access-log",
        ],
    );
    // The proxy on 127.0.0.1 is trusted: the last hop it names is the client.
    let (scheme, client) = seen_through_proxy_headers(&gateway, "127.0.0.1").await;
    assert_eq!(scheme, "https");
    assert_eq!(client, serde_json::json!(["198.51.100.7", 0]));
    // The access log names the same client, and the worker of the streamed
    // (ASGI) response.
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = gateway.log.lock().unwrap().clone();
        if let Some(line) = log
            .lines()
            .find(|line| line.contains("http_gateway::access"))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no access line in {log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        line.contains(r#"198.51.100.7:0 - "GET /headers HTTP/1.1" 200 "#),
        "{line}"
    );
    assert!(line.contains("worker=0"), "{line}");
    // A client on 127.0.0.2 sending the same headers is not believed.
    let (scheme, client) = seen_through_proxy_headers(&gateway, "127.0.0.2").await;
    assert_eq!(scheme, "http");
    assert_eq!(client[0], "127.0.0.2");
    assert_ne!(client[1], 0, "the connection's own port");

    // Without --proxy-headers, not even the trusted address is believed.
    let plain = start("fastapi_app:app", &["--workers", "1"]);
    let (scheme, client) = seen_through_proxy_headers(&plain, "127.0.0.1").await;
    assert_eq!(scheme, "http");
    assert_eq!(client[0], "127.0.0.1");
}
