//! WebSocket routes of real FastAPI and Starlette apps
//! (`tests/asgi_apps/ws_*.py`) behind the HTTP gateway's `--asgi`, through
//! its real binary, with a real WebSocket client (tokio-tungstenite): the
//! handshake answered as the app answers it, messages both ways, close codes
//! each way, and what happens to open sockets when a worker blocks or the
//! gateway reloads.
//!
//! The apps need FastAPI and Starlette: the tests use the Python of the
//! virtualenv `scripts/uvloop_venv.sh` makes, or the one named by
//! `ASGI_TEST_PYTHON`, as tests/asgi.rs does.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod support;

use support::Gateway;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PATIENCE: Duration = Duration::from_secs(10);

/// The interpreter of the tests' virtualenv, with FastAPI and Starlette.
fn python() -> PathBuf {
    support::test_python(&["fastapi", "starlette"])
}

fn start(app: &str, args: &[&str]) -> Gateway {
    let mut command = Command::new(support::HTTP_GATEWAY);
    command
        .args(["--listen", "127.0.0.1:0"])
        .arg("--python")
        .arg(python())
        .arg("--handler-path")
        .arg(support::crate_dir("tests/asgi_apps"))
        .args(["--asgi", app])
        .args(args);
    // Defaults a test may set otherwise (clap takes each flag once).
    for (flag, value) in [("--max-connections", "20"), ("--shutdown-grace", "5s")] {
        if !args.contains(&flag) {
            command.args([flag, value]);
        }
    }
    support::start_gateway(&mut command)
}

fn ws_url(gateway: &Gateway, path: &str) -> String {
    format!("{}{path}", gateway.base.replacen("http://", "ws://", 1))
}

/// Opens a WebSocket to `path` with `headers`; the handshake's response
/// comes back too.
async fn connect(
    gateway: &Gateway,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<
    (
        Client,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    WsError,
> {
    let mut request = ws_url(gateway, path).into_client_request().unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .append(*name, HeaderValue::from_str(value).unwrap());
    }
    tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
        .await
        .expect("the handshake took too long")
}

async fn open(gateway: &Gateway, path: &str) -> Client {
    connect(gateway, path, &[]).await.unwrap().0
}

/// The next message that is not a ping or pong.
async fn next(client: &mut Client) -> Message {
    loop {
        let message = tokio::time::timeout(PATIENCE, client.next())
            .await
            .expect("no message in time")
            .expect("the socket ended")
            .expect("the socket failed");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

async fn next_text(client: &mut Client) -> String {
    match next(client).await {
        Message::Text(text) => text.as_str().to_owned(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn next_json(client: &mut Client) -> serde_json::Value {
    serde_json::from_str(&next_text(client).await).unwrap()
}

/// The close frame's code, once the server closes.
async fn close_code(client: &mut Client) -> u16 {
    loop {
        match next(client).await {
            Message::Close(Some(frame)) => return frame.code.into(),
            Message::Close(None) => return 1005,
            _ => {}
        }
    }
}

async fn close_with(client: &mut Client, code: u16, reason: &str) {
    client
        .close(Some(CloseFrame {
            code: code.into(),
            reason: reason.to_owned().into(),
        }))
        .await
        .unwrap();
    // The server's reply to the close, then the end.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, client.next()).await {}
}

async fn get_json(gateway: &Gateway, path: &str) -> serde_json::Value {
    let response = reqwest::get(format!("{}{path}", gateway.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// Polls `path` until `done` holds for its JSON, failing after [`PATIENCE`].
async fn until_json(gateway: &Gateway, path: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let value = get_json(gateway, path).await;
        if done(&value) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} stayed {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(gateway: &Gateway) -> String {
    reqwest::get(format!("{}/metrics", gateway.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_echo_negotiates_a_subprotocol_echoes_and_answers_pings_itself() {
    let gateway = start("ws_fastapi_app:app", &[]);
    let (mut client, response) = connect(
        &gateway,
        "/echo",
        &[("sec-websocket-protocol", "chat, superchat")],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
    assert!(response.headers().contains_key("x-served-by"));

    client.send(Message::text("héllo")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "héllo");
    let bytes: Vec<u8> = (0..=255).collect();
    client.send(Message::binary(bytes.clone())).await.unwrap();
    assert_eq!(next(&mut client).await, Message::binary(bytes));
    // Answered by the gateway: the app would echo anything it got.
    client
        .send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(PATIENCE, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong("are you there".into()));
    // A large message, in many of the gateway's frames to the worker.
    let large = "x".repeat(300_000);
    client.send(Message::text(large.clone())).await.unwrap();
    assert_eq!(next_text(&mut client).await, large);

    let text = metrics(&gateway).await;
    assert_eq!(metric(&text, "async_worker_pool_websockets_open"), 1.0);
    assert_eq!(
        metric(
            &text,
            "async_worker_pool_websocket_messages_total{direction=\"to_worker\"}"
        ),
        3.0
    );
    close_with(&mut client, 1000, "done").await;
    until_json(&gateway, "/disconnects", |seen| {
        seen == &serde_json::json!([["echo", 1000]])
    })
    .await;
    let text = metrics(&gateway).await;
    assert_eq!(metric(&text, "async_worker_pool_websockets_open"), 0.0);
    assert_eq!(
        metric(&text, "async_worker_pool_slots{state=\"busy\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_chat_broadcasts_json_and_a_leaving_client_is_seen_with_its_code() {
    let gateway = start("ws_fastapi_app:app", &[]);
    let mut alice = open(&gateway, "/chat/alice").await;
    assert_eq!(
        next_json(&mut alice).await,
        serde_json::json!({"event": "joined", "name": "alice", "members": ["alice"]})
    );
    let mut bob = open(&gateway, "/chat/bob").await;
    let joined = serde_json::json!({"event": "joined", "name": "bob", "members": ["alice", "bob"]});
    assert_eq!(next_json(&mut alice).await, joined);
    assert_eq!(next_json(&mut bob).await, joined);

    alice
        .send(Message::text(r#"{"text": "hi bob"}"#))
        .await
        .unwrap();
    let said = serde_json::json!({"from": "alice", "text": "hi bob"});
    assert_eq!(next_json(&mut alice).await, said);
    assert_eq!(next_json(&mut bob).await, said);

    close_with(&mut bob, 4001, "gone fishing").await;
    assert_eq!(
        next_json(&mut alice).await,
        serde_json::json!({"event": "left", "name": "bob", "code": 4001})
    );
    assert_eq!(
        get_json(&gateway, "/disconnects").await,
        serde_json::json!([["bob", 4001]])
    );
    // A client that drops its connection without a close frame: the app
    // sees an abnormal closure, 1006.
    drop(alice);
    until_json(&gateway, "/disconnects", |seen| {
        seen.as_array().is_some_and(|seen| seen.len() == 2)
    })
    .await;
    assert_eq!(
        get_json(&gateway, "/disconnects").await[1],
        serde_json::json!(["alice", 1006])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_depends_reads_query_cookie_and_header_and_bad_credentials_get_403() {
    let gateway = start("ws_fastapi_app:app", &[]);
    let (mut client, _) = connect(
        &gateway,
        "/items/7/ws?q=3&token=abc",
        &[("x-client", "rust")],
    )
    .await
    .unwrap();
    client.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        next_json(&mut client).await,
        serde_json::json!({"item_id": "7", "q": 3, "client": "rust", "who": "abc", "text": "hi"})
    );
    let (mut cookie, _) = connect(&gateway, "/items/8/ws", &[("cookie", "session=s1")])
        .await
        .unwrap();
    cookie.send(Message::text("yo")).await.unwrap();
    let answer = next_json(&mut cookie).await;
    assert_eq!(
        (&answer["who"], &answer["q"]),
        (&"s1".into(), &serde_json::Value::Null)
    );

    // WebSocketException before the accept: the handshake is refused, as
    // uvicorn refuses it.
    match connect(&gateway, "/items/9/ws", &[]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }
    // So is a route that does not exist (Starlette closes before accepting).
    match connect(&gateway, "/nowhere", &[]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starlette_endpoint_counts_closes_with_its_code_and_denies_with_its_own_response() {
    let gateway = start("ws_starlette_app:app", &[]);
    let mut client = open(&gateway, "/count").await;
    for (n, word) in ["a", "b"].iter().enumerate() {
        client.send(Message::text(*word)).await.unwrap();
        assert_eq!(next_text(&mut client).await, format!("{}: {word}", n + 1));
    }
    client.send(Message::text("bye")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "3: bye");
    match next(&mut client).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4002);
            assert_eq!(frame.reason.as_str(), "counted");
        }
        other => panic!("expected the app's close, got {other:?}"),
    }
    until_json(&gateway, "/closes", |seen| {
        seen == &serde_json::json!([4002])
    })
    .await;

    match connect(&gateway, "/members", &[]).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 401);
            assert_eq!(response.headers()["x-why"], "no token");
            assert_eq!(response.body().as_deref(), Some(&b"members only\n"[..]));
        }
        other => panic!("expected the app's denial, got {other:?}"),
    }
    let mut member = open(&gateway, "/members?token=sesame").await;
    assert_eq!(next_text(&mut member).await, "welcome");
    assert_eq!(close_code(&mut member).await, 1000);
}

/// The pid of the worker process that accepted a socket (the echo route
/// says it in a header of its 101).
fn served_by(response: &tokio_tungstenite::tungstenite::handshake::client::Response) -> u32 {
    response.headers()["x-served-by"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_or_dead_worker_closes_its_sockets_with_1011_and_a_new_one_serves() {
    let gateway = start(
        "ws_fastapi_app:app",
        &["--probe-interval", "500ms", "--probe-timeout", "500ms"],
    );
    let (mut client, response) = connect(&gateway, "/echo", &[]).await.unwrap();
    let blocked_pid = served_by(&response);
    client.send(Message::text("before")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "before");
    // The app blocks its own event loop, which answers no probe meanwhile.
    let block = tokio::spawn(reqwest::get(format!(
        "{}/block-loop?seconds=30",
        gateway.base
    )));
    let blocked_at = Instant::now();
    assert_eq!(close_code(&mut client).await, 1011);
    let took = blocked_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "closed {took:?} after the block"
    );
    let (mut fresh, response) = connect(&gateway, "/echo", &[]).await.unwrap();
    let replacement = served_by(&response);
    assert_ne!(replacement, blocked_pid, "the replacement serves it");
    fresh.send(Message::text("after")).await.unwrap();
    assert_eq!(next_text(&mut fresh).await, "after");
    block.abort();
    // A worker that dies (an OOM kill, say) closes its sockets with 1011 too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(replacement as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(close_code(&mut fresh).await, 1011);
}

/// How one socket of the reload test ended.
#[derive(Debug)]
enum Outcome {
    /// Closed by the gateway with this code, this long after the reload.
    Closed(u16, Duration),
    /// Ended another way (a reset, an echo that never came): a failure.
    Broken(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_every_open_socket_with_1012_after_the_grace_and_none_hangs() {
    const SOCKETS: usize = 200;
    let grace = Duration::from_secs(2);
    let gateway = start(
        "ws_fastapi_app:app",
        &["--max-connections", "250", "--shutdown-grace", "2s"],
    );
    let mut clients = Vec::new();
    let mut old_pid = None;
    for _ in 0..SOCKETS {
        let (client, response) = connect(&gateway, "/echo", &[]).await.unwrap();
        old_pid = Some(served_by(&response));
        clients.push(client);
    }
    let reloaded_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gateway.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    // Every socket keeps echoing until the gateway closes it.
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(n, mut client)| {
            tokio::spawn(async move {
                let mut round = 0;
                loop {
                    round += 1;
                    let text = format!("{n}/{round}");
                    if let Err(error) = client.send(Message::text(text.clone())).await {
                        return Outcome::Broken(format!("send: {error}"));
                    }
                    let answer = match tokio::time::timeout(PATIENCE, client.next()).await {
                        Err(_) => return Outcome::Broken("no echo within 10 s".into()),
                        Ok(None) => return Outcome::Broken("ended without a close".into()),
                        Ok(Some(Err(error))) => return Outcome::Broken(error.to_string()),
                        Ok(Some(Ok(answer))) => answer,
                    };
                    match answer {
                        Message::Text(echo) if echo.as_str() == text => {}
                        Message::Close(frame) => {
                            let code = frame.map_or(1005, |frame| frame.code.into());
                            return Outcome::Closed(code, reloaded_at.elapsed());
                        }
                        other => return Outcome::Broken(format!("{other:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("a socket hung")
                .unwrap(),
        );
    }
    for outcome in &outcomes {
        match outcome {
            Outcome::Closed(1012, after) => assert!(*after >= grace, "closed after {after:?}"),
            Outcome::Closed(code, after) => panic!("closed with {code} after {after:?}"),
            Outcome::Broken(why) => panic!("a socket broke: {why}"),
        }
    }
    let (mut fresh, response) = connect(&gateway, "/echo", &[]).await.unwrap();
    assert_ne!(
        Some(served_by(&response)),
        old_pid,
        "a new worker serves it"
    );
    fresh.send(Message::text("new")).await.unwrap();
    assert_eq!(next_text(&mut fresh).await, "new");
}

/// A process's resident memory, from /proc, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/PID/status")
        * 1024
}

/// Opens `count` sockets to `/echo`, `at_once` handshakes at a time.
async fn open_many(gateway: &Gateway, count: usize, at_once: usize) -> Vec<Client> {
    let url = ws_url(gateway, "/echo");
    let mut clients = Vec::with_capacity(count);
    while clients.len() < count {
        let batch = at_once.min(count - clients.len());
        let handshakes: Vec<_> = (0..batch)
            .map(|_| tokio::spawn(tokio_tungstenite::connect_async(url.clone())))
            .collect();
        for handshake in handshakes {
            clients.push(handshake.await.unwrap().expect("a handshake").0);
        }
    }
    clients
}

/// 10,000 idle sockets on one worker: all open within a bound, each holds
/// one slot, they still echo, and what each costs the gateway and the worker
/// in resident memory is printed (the gateway's goal: at most 16 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_sockets_on_one_worker_stay_open_and_cheap() {
    const SOCKETS: usize = 10_000;
    const BASE: usize = 100;
    let gateway = start(
        "ws_fastapi_app:app",
        &[
            "--max-connections",
            "10100",
            "--ws-ping-interval",
            "off",
            "--establish-connection-timeout",
            "60s",
        ],
    );
    let gateway_pid = gateway.child.id();
    let started = Instant::now();
    let mut clients = open_many(&gateway, BASE, 50).await;
    let (_, response) = connect(&gateway, "/echo", &[]).await.unwrap();
    let worker_pid = served_by(&response);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (gateway_base, worker_base) = (rss(gateway_pid), rss(worker_pid));
    clients.extend(open_many(&gateway, SOCKETS - BASE, 200).await);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(120), "opening took {took:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let added = (SOCKETS - BASE) as u64;
    let gateway_each = rss(gateway_pid).saturating_sub(gateway_base) / added;
    let worker_each = rss(worker_pid).saturating_sub(worker_base) / added;
    println!(
        "{SOCKETS} idle WebSockets opened in {took:?}: resident memory per socket: \
         gateway {gateway_each} B, worker {worker_each} B"
    );
    let text = metrics(&gateway).await;
    assert_eq!(
        metric(&text, "async_worker_pool_websockets_open"),
        SOCKETS as f64
    );
    // The first and the last still echo.
    for index in [0, SOCKETS - 1] {
        let client = &mut clients[index];
        client.send(Message::text("still here")).await.unwrap();
        assert_eq!(next_text(client).await, "still here");
    }
    assert!(
        gateway_each <= 16 * 1024,
        "the gateway holds {gateway_each} B per idle socket"
    );
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(
        &metrics(&gateway).await,
        "async_worker_pool_websockets_open",
    ) > 0.0
    {
        assert!(Instant::now() < deadline, "sockets stayed open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `text` as three frames: a text frame without FIN and two
/// continuations, the last with FIN.
async fn send_fragmented(client: &mut Client, text: &str) {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let third = text.len() / 3;
    let parts = [&text[..third], &text[third..2 * third], &text[2 * third..]];
    for (index, part) in parts.iter().enumerate() {
        let opcode = if index == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let frame = Frame::message(part.as_bytes().to_vec(), OpCode::Data(opcode), index == 2);
        client.send(Message::Frame(frame)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_lifetime_and_pings_bound_sockets_and_the_event_timeout_does_not() {
    let gateway = start(
        "ws_fastapi_app:app",
        &[
            "--ws-max-message-bytes",
            "1000",
            "--ws-max-lifetime",
            "2s",
            "--event-timeout",
            "300ms",
            "--ws-ping-interval",
            "300ms",
            // One connection per slot: the exchange is the same there.
            "--multiplex",
            "0",
        ],
    );
    // Over the size limit: closed with 1009, and the app hears it.
    let mut big = open(&gateway, "/echo").await;
    big.send(Message::text("x".repeat(2000))).await.unwrap();
    assert_eq!(close_code(&mut big).await, 1009);
    until_json(&gateway, "/disconnects", |seen| {
        seen == &serde_json::json!([["echo", 1009]])
    })
    .await;

    // A client that never reads answers no ping: dropped, as 1006 to the app.
    let silent = open(&gateway, "/echo").await;
    until_json(&gateway, "/disconnects", |seen| {
        seen.as_array().is_some_and(|seen| seen.len() == 2)
    })
    .await;
    assert_eq!(
        get_json(&gateway, "/disconnects").await[1],
        serde_json::json!(["echo", 1006])
    );
    drop(silent);

    // A fragmented message arrives whole; the socket outlives the event
    // timeout while it answers pings, and closes with 1001 at its lifetime.
    let opened = Instant::now();
    let mut lasting = open(&gateway, "/echo").await;
    let text = "fragmented ".repeat(80);
    send_fragmented(&mut lasting, &text).await;
    assert_eq!(next_text(&mut lasting).await, text);
    while opened.elapsed() < Duration::from_millis(900) {
        // Reading answers the gateway's pings meanwhile.
        let _ = tokio::time::timeout(Duration::from_millis(100), lasting.next()).await;
    }
    lasting.send(Message::text("still")).await.unwrap();
    assert_eq!(next_text(&mut lasting).await, "still");
    assert_eq!(close_code(&mut lasting).await, 1001);
    let lived = opened.elapsed();
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(4)).contains(&lived),
        "closed after {lived:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_open_sockets_with_1012_after_the_grace_and_the_gateway_exits() {
    let mut gateway = start("ws_fastapi_app:app", &["--shutdown-grace", "1s"]);
    let mut client = open(&gateway, "/echo").await;
    client.send(Message::text("before")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "before");
    let stopped_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gateway.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // Still served during the grace.
    client.send(Message::text("during")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "during");
    assert_eq!(close_code(&mut client).await, 1012);
    assert!(stopped_at.elapsed() >= Duration::from_secs(1));
    let deadline = Instant::now() + PATIENCE;
    while gateway.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the gateway did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
