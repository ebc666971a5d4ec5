//! The socket transport against workers that follow the protocol, workers that
//! break it, and the real Python worker.
//!
//! The in-process test workers below speak the protocol with plain reads and
//! writes, not with the crate's codec, so that they check the wire format too.

use std::path::Path;
use std::time::{Duration, Instant};

use async_worker_pool::net::{
    DEFAULT_MAX_FRAME_BYTES, Event, NetError, ProtocolError, Reply, SocketTransport, WorkerSecret,
};
use async_worker_pool::process::SECRET_ENV;
use async_worker_pool::{Attachments, Endpoint, Transport, WorkerId, WorkerInfo};
use bytes::Bytes;
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// What a test worker does on each connection.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Sends `R`, then answers every `E` with `O` carrying the event's body and
    /// its meta in an `x-meta` header.
    Echo,
    /// Like `Echo`, after holding back `R` this long.
    DelayReady(Duration),
    /// Sends an `O` where `R` belongs.
    ReplyBeforeReady,
    /// Closes the connection before sending `R`.
    CloseBeforeReady,
    /// Sends `R`, then closes the idle connection, as a server whose
    /// keep-alive timeout is up does.
    CloseAfterReady,
    /// Answers with a length prefix announcing 1 GiB, then stays silent.
    HugeHeader,
    /// Answers with a frame that is not an envelope.
    Garbage,
    /// Reads the event, then closes without answering.
    CloseMidEvent,
    /// Reads the event, writes half an answer frame, then closes.
    CloseMidFrame,
    /// Answers with `X`, as for a handler that raised.
    Raise,
    /// Opens with a handshake challenge and, once it is answered with
    /// [`test_secret`], behaves as `Echo`; closes on a wrong answer.
    Authenticated,
    /// Opens with a challenge of version 2, which no host speaks yet.
    ChallengeVersion2,
}

/// The secret of the `Authenticated` test worker.
fn test_secret() -> WorkerSecret {
    WorkerSecret::from_hex(&"5e".repeat(32)).unwrap()
}

/// An in-process worker listening on a Unix socket or loopback TCP.
struct TestWorker {
    endpoint: Endpoint,
    accept_loop: JoinHandle<()>,
    _dir: Option<TempDir>,
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl TestWorker {
    fn unix(script: Script) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let accept_loop = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, script));
            }
        });
        Self {
            endpoint: Endpoint::Unix(path),
            accept_loop,
            _dir: Some(dir),
        }
    }

    async fn tcp(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept_loop = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, script));
            }
        });
        Self {
            endpoint: Endpoint::Tcp(addr),
            accept_loop,
            _dir: None,
        }
    }
}

fn envelope(kind: u8, meta: &str, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(body);
    out
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, payload: &[u8]) {
    stream
        .write_all(&(payload.len() as u32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(payload).await.unwrap();
}

/// One frame's payload, or `None` once the host has closed the connection.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut len = [0; 4];
    stream.read_exact(&mut len).await.ok()?;
    let mut payload = vec![0; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).await.ok()?;
    Some(payload)
}

/// Splits an `E` envelope into its meta and body.
fn open_event(payload: &[u8]) -> (String, Vec<u8>) {
    assert_eq!(payload[0], b'E', "the host sent a non-event");
    let meta_len = u32::from_be_bytes(payload[1..5].try_into().unwrap()) as usize;
    let meta = String::from_utf8(payload[5..5 + meta_len].to_vec()).unwrap();
    (meta, payload[5 + meta_len..].to_vec())
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, script: Script) {
    let ready = envelope(b'R', r#"{"pid":1234,"worker_id":0}"#, b"");
    match script {
        Script::Authenticated => {
            let nonce: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
            write_frame(&mut stream, &[&b"C\x01"[..], &nonce].concat()).await;
            let Some(answer) = read_frame(&mut stream).await else {
                return;
            };
            let right = answer.len() == 34
                && answer[..2] == *b"A\x01"
                && test_secret().verify(&nonce, &answer[2..]);
            if !right {
                return;
            }
        }
        Script::ChallengeVersion2 => {
            write_frame(&mut stream, &[b'C', 2, 0, 0, 0]).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        Script::CloseBeforeReady => return,
        Script::ReplyBeforeReady => {
            write_frame(&mut stream, &envelope(b'O', "{}", b"")).await;
            return;
        }
        Script::DelayReady(delay) => tokio::time::sleep(delay).await,
        _ => {}
    }
    write_frame(&mut stream, &ready).await;
    if let Script::CloseAfterReady = script {
        return;
    }
    while let Some(payload) = read_frame(&mut stream).await {
        let (meta, body) = open_event(&payload);
        match script {
            Script::HugeHeader => {
                stream.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
                // Stay connected: the host must not wait for the payload.
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Script::Garbage => write_frame(&mut stream, b"\xffnot an envelope").await,
            Script::CloseMidEvent => return,
            Script::CloseMidFrame => {
                stream.write_all(&100u32.to_be_bytes()).await.unwrap();
                stream.write_all(b"O\0\0\0\x02{}half").await.unwrap();
                return;
            }
            Script::Raise => {
                let meta = r#"{"type":"ValueError","message":"asked to raise"}"#;
                let traceback = b"Traceback (most recent call last):\nValueError: asked to raise\n";
                write_frame(&mut stream, &envelope(b'X', meta, traceback)).await;
            }
            _ => {
                let meta = serde_json::json!({
                    "status": 200,
                    "headers": [["x-meta", meta]],
                })
                .to_string();
                write_frame(&mut stream, &envelope(b'O', &meta, &body)).await;
            }
        }
    }
}

fn all_byte_values() -> Bytes {
    (0..=255).collect::<Vec<u8>>().into()
}

/// Sends a text, a binary, an empty and an HTTP event and checks the echoes.
async fn check_round_trips(endpoint: &Endpoint) {
    let transport = SocketTransport::new();
    let mut conn = transport.connect_endpoint(endpoint).await.unwrap();
    assert_eq!(conn.ready().pid(), 1234);
    for body in [Bytes::from("hello, wörld"), all_byte_values(), Bytes::new()] {
        let reply = conn.call(&Event::plain(body.clone())).await.unwrap();
        assert_eq!(
            reply,
            Reply::Returned {
                status: 200,
                headers: vec![("x-meta".into(), "{}".into())],
                body,
            }
        );
    }
    let headers = vec![("accept".to_string(), "*/*".to_string())];
    let event = Event::http("PUT", "/a/b", headers, all_byte_values());
    let Reply::Returned { headers, body, .. } = conn.call(&event).await.unwrap() else {
        panic!("expected Returned");
    };
    let meta: serde_json::Value = serde_json::from_str(&headers[0].1).unwrap();
    assert_eq!(
        meta,
        serde_json::json!({"method": "PUT", "path": "/a/b", "headers": [["accept", "*/*"]]})
    );
    assert_eq!(body, all_byte_values());
    assert!(conn.is_usable());
}

#[tokio::test]
async fn text_and_binary_bodies_round_trip_over_unix() {
    let worker = TestWorker::unix(Script::Echo);
    check_round_trips(&worker.endpoint).await;
}

#[tokio::test]
async fn text_and_binary_bodies_round_trip_over_tcp() {
    let worker = TestWorker::tcp(Script::Echo).await;
    check_round_trips(&worker.endpoint).await;
}

#[tokio::test]
async fn many_connections_to_one_worker_are_independent() {
    let worker = TestWorker::unix(Script::Echo);
    let transport = SocketTransport::new();
    let calls = (0..50).map(|i| {
        let (transport, endpoint) = (&transport, &worker.endpoint);
        async move {
            let mut conn = transport.connect_endpoint(endpoint).await.unwrap();
            for round in 0..5 {
                let body = format!("connection {i}, round {round}");
                let reply = conn.call(&Event::plain(body.clone())).await.unwrap();
                assert!(matches!(reply, Reply::Returned { body: got, .. } if got == body));
            }
        }
    });
    futures_util::future::join_all(calls).await;
}

#[tokio::test]
async fn connect_resolves_only_after_the_ready_frame() {
    let worker = TestWorker::unix(Script::DelayReady(Duration::from_millis(200)));
    let started = Instant::now();
    let mut conn = SocketTransport::new()
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "connect resolved after {:?}, before the ready frame",
        started.elapsed()
    );
    assert!(conn.call(&Event::plain("x")).await.is_ok());
}

#[tokio::test]
async fn reply_instead_of_ready_frame_fails_connect_with_not_ready() {
    let worker = TestWorker::unix(Script::ReplyBeforeReady);
    let err = SocketTransport::new()
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::NotReady(ProtocolError::UnexpectedKind { kind: b'O', .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn worker_closing_before_ready_fails_connect() {
    let worker = TestWorker::unix(Script::CloseBeforeReady);
    let err = SocketTransport::new()
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::ClosedBeforeReady), "{err:?}");
}

#[tokio::test]
async fn connect_to_a_missing_socket_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = SocketTransport::new()
        .connect_endpoint(&Endpoint::Unix(dir.path().join("nobody.sock")))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Io(_)), "{err:?}");
}

#[tokio::test]
async fn frame_announcing_a_gibibyte_fails_promptly_with_frame_too_large() {
    let worker = TestWorker::unix(Script::HugeHeader);
    let mut conn = SocketTransport::new()
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(2), conn.call(&Event::plain("x")))
        .await
        .expect("the oversized frame must be refused at once, not awaited");
    assert!(
        matches!(
            outcome,
            Err(NetError::FrameTooLarge {
                limit: DEFAULT_MAX_FRAME_BYTES
            })
        ),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn event_over_the_limit_is_refused_before_sending() {
    let worker = TestWorker::unix(Script::Echo);
    let mut conn = SocketTransport::new()
        .max_frame_bytes(1024)
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap();
    let err = conn.call(&Event::plain(vec![0; 2000])).await.unwrap_err();
    assert!(
        matches!(err, NetError::EventTooLarge { limit: 1024, len } if len > 1024),
        "{err:?}"
    );
    // Headers can push an envelope over the limit too.
    let headers = vec![("x-big".to_string(), "v".repeat(1100))];
    let err = conn
        .call(&Event::http("GET", "/", headers, Bytes::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::EventTooLarge { .. }), "{err:?}");
    // Nothing was sent, so the connection is still in step.
    assert!(conn.is_usable());
    assert!(conn.call(&Event::plain(vec![1; 900])).await.is_ok());
}

#[tokio::test]
async fn an_idle_connection_the_worker_closed_is_broken_and_a_live_one_is_not() {
    let transport = SocketTransport::new();
    for closes in [true, false] {
        let script = if closes {
            Script::CloseAfterReady
        } else {
            Script::Echo
        };
        for worker in [TestWorker::unix(script), TestWorker::tcp(script).await] {
            let mut conn = transport.connect_endpoint(&worker.endpoint).await.unwrap();
            // Checked only after a second of idleness, so that the hot path pays
            // no system call.
            assert!(!transport.is_broken(&mut conn));
            tokio::time::sleep(Duration::from_millis(1100)).await;
            assert_eq!(transport.is_broken(&mut conn), closes, "{script:?}");
            if !closes {
                assert!(conn.call(&Event::plain("still here")).await.is_ok());
            }
        }
    }
}

#[tokio::test]
async fn an_event_over_the_limit_counts_as_unsent() {
    let worker = TestWorker::unix(Script::Echo);
    let transport = SocketTransport::new().max_frame_bytes(1024);
    let mut conn = transport.connect_endpoint(&worker.endpoint).await.unwrap();
    let err = conn.call(&Event::plain(vec![0; 2000])).await.unwrap_err();
    assert!(transport.is_unsent(&err));
    let err = NetError::Closed;
    assert!(!transport.is_unsent(&err));
}

#[tokio::test]
async fn garbage_answer_is_a_protocol_error() {
    let worker = TestWorker::unix(Script::Garbage);
    let mut conn = SocketTransport::new()
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap();
    let err = conn.call(&Event::plain("x")).await.unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Protocol(ProtocolError::UnknownKind { kind: 0xff })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn worker_closing_mid_event_is_reported_as_closed() {
    let worker = TestWorker::unix(Script::CloseMidEvent);
    let mut conn = SocketTransport::new()
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap();
    let err = conn.call(&Event::plain("x")).await.unwrap_err();
    assert!(matches!(err, NetError::Closed), "{err:?}");
}

#[tokio::test]
async fn worker_closing_inside_an_answer_frame_is_reported_as_closed() {
    let worker = TestWorker::tcp(Script::CloseMidFrame).await;
    let mut conn = SocketTransport::new()
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap();
    let err = conn.call(&Event::plain("x")).await.unwrap_err();
    assert!(matches!(err, NetError::Closed), "{err:?}");
}

#[tokio::test]
async fn failed_exchange_leaves_the_connection_unusable() {
    let worker = TestWorker::unix(Script::Garbage);
    let mut conn = SocketTransport::new()
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap();
    assert!(conn.call(&Event::plain("x")).await.is_err());
    assert!(!conn.is_usable());
    let err = conn.call(&Event::plain("y")).await.unwrap_err();
    assert!(matches!(err, NetError::Unusable), "{err:?}");
}

#[tokio::test]
async fn raised_answer_is_ok_and_keeps_the_connection() {
    let worker = TestWorker::unix(Script::Raise);
    let mut conn = SocketTransport::new()
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap();
    for _ in 0..2 {
        let reply = conn.call(&Event::plain("raise")).await.unwrap();
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
        assert!(traceback.ends_with("ValueError: asked to raise\n"));
    }
}

/// The reference Python worker, killed when dropped.
struct PythonWorker {
    endpoint: Endpoint,
    /// The secret it was started with; not registered, so connects pass it.
    secret: WorkerSecret,
    _child: tokio::process::Child,
    _dir: TempDir,
}

impl PythonWorker {
    async fn start(handler: &str) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let secret = WorkerSecret::generate().unwrap();
        // Run from the checkout: its python/ holds the package.
        let child = tokio::process::Command::new("python3")
            .current_dir(root)
            .env(SECRET_ENV, secret.to_hex())
            .env("PYTHONPATH", root.join("python"))
            .args(["-m", "async_pool_worker"])
            .args(["--handler", handler, "--handler-path", "examples/handlers"])
            .arg("--unix")
            .arg(&path)
            .args(["--worker-id", "0", "--connections", "4"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 must be on PATH to run the reference worker");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&path).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the Python worker did not accept connections within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            endpoint: Endpoint::Unix(path),
            secret,
            _child: child,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn real_python_worker_echoes_plain_and_http_events() {
    let worker = PythonWorker::start("echo:handler").await;
    let mut conn = SocketTransport::new()
        .connect_authenticated(&worker.endpoint, &worker.secret)
        .await
        .unwrap();
    assert_eq!(conn.ready().worker_id(), 0);
    // echo.py answers (200, {"x-worker-id": "<id>"}, event.body).
    let expected = |body: Bytes| Reply::Returned {
        status: 200,
        headers: vec![("x-worker-id".into(), "0".into())],
        body,
    };
    let reply = conn.call(&Event::plain(all_byte_values())).await.unwrap();
    assert_eq!(reply, expected(all_byte_values()));
    let headers = vec![
        ("content-type".to_string(), "text/plain".to_string()),
        ("x-repeat".to_string(), "1".to_string()),
        ("x-repeat".to_string(), "2".to_string()),
    ];
    let event = Event::http("POST", "/echo?q=1", headers, "héllo");
    let reply = conn.call(&event).await.unwrap();
    assert_eq!(reply, expected(Bytes::from("héllo")));
}

#[tokio::test]
async fn real_python_worker_reports_a_raising_handler_as_raised() {
    let worker = PythonWorker::start("faulty:handler").await;
    let mut conn = SocketTransport::new()
        .connect_authenticated(&worker.endpoint, &worker.secret)
        .await
        .unwrap();
    let reply = conn.call(&Event::plain("raise")).await.unwrap();
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
    assert!(traceback.contains("Traceback"), "{traceback}");
    // The connection survives a raising handler.
    let reply = conn.call(&Event::plain("fine")).await.unwrap();
    assert!(matches!(reply, Reply::Returned { body, .. } if body == "fine"));
}

#[tokio::test]
async fn the_handshake_is_answered_with_the_secret_attached_to_the_workers_process() {
    for worker in [
        TestWorker::unix(Script::Authenticated),
        TestWorker::tcp(Script::Authenticated).await,
    ] {
        let info = WorkerInfo::new(WorkerId::new(0), 1, worker.endpoint.clone(), None)
            .with_attachments(Attachments::new().with(test_secret()));
        let transport = SocketTransport::new();
        let mut conn = transport.connect(&info).await.unwrap();
        assert_eq!(conn.ready().pid(), 1234);
        let reply = transport.call(&mut conn, Event::plain("x")).await.unwrap();
        assert!(matches!(reply, Reply::Returned { body, .. } if body == "x"));
        // Without the attachment, the same worker is not served.
        let bare = WorkerInfo::new(WorkerId::new(0), 1, worker.endpoint.clone(), None);
        let err = transport.connect(&bare).await.unwrap_err();
        assert!(matches!(err, NetError::NoSecret { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn a_worker_that_asks_for_a_secret_the_host_lacks_fails_connect_with_no_secret() {
    let worker = TestWorker::unix(Script::Authenticated);
    let err = SocketTransport::new()
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NetError::NoSecret { endpoint } if *endpoint == worker.endpoint.to_string()),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_wrong_secret_is_rejected_and_a_right_one_passed_directly_works() {
    let worker = TestWorker::unix(Script::Authenticated);
    let wrong = WorkerSecret::generate().unwrap();
    let err = SocketTransport::new()
        .connect_authenticated(&worker.endpoint, &wrong)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Rejected), "{err:?}");
    let mut conn = SocketTransport::new()
        .connect_authenticated(&worker.endpoint, &test_secret())
        .await
        .unwrap();
    assert_eq!(conn.ready().pid(), 1234);
    assert!(conn.call(&Event::plain("x")).await.is_ok());
}

#[tokio::test]
async fn a_challenge_of_an_unknown_version_fails_connect_with_a_handshake_error() {
    let worker = TestWorker::unix(Script::ChallengeVersion2);
    let err = SocketTransport::new()
        .connect_authenticated(&worker.endpoint, &test_secret())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Handshake(ProtocolError::UnsupportedHandshakeVersion { version: 2 })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn real_python_worker_refuses_a_host_without_its_secret() {
    let worker = PythonWorker::start("echo:handler").await;
    let err = SocketTransport::new()
        .connect_endpoint(&worker.endpoint)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::NoSecret { .. }), "{err:?}");
    let wrong = WorkerSecret::generate().unwrap();
    let err = SocketTransport::new()
        .connect_authenticated(&worker.endpoint, &wrong)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Rejected), "{err:?}");
    // And it still serves its host.
    let mut conn = SocketTransport::new()
        .connect_authenticated(&worker.endpoint, &worker.secret)
        .await
        .unwrap();
    assert!(conn.call(&Event::plain("x")).await.is_ok());
}
