//! WebSocket exchanges through the socket transport with the reference worker
//! running a plain ASGI app (`tests/handlers/websocket_apps.py`): both modes
//! of the transport, the app's accept, close and denial, flow control each
//! way, and a caller that goes away mid-stream (`docs/protocol.md`,
//! "WebSocket").

mod support;

use std::time::Duration;

use async_worker_pool::net::{
    Event, FromWorker, NetError, Reply, ResponsePart, SocketTransport, WebSocketLink,
    WebSocketMessage, WebSocketReceiver, WebSocketSender,
};
use async_worker_pool::{Pool, PoolError, ProcessLauncher};
use bytes::Bytes;
use support::real::{RealPool, python_worker, test_handlers};
use support::stats::{assert_slots_add_up, until_full, wait_for};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(10);

/// A pool of one worker running the test app, `multiplex` physical
/// connections to it (0: one connection per slot), `slots` slots.
async fn app_pool(multiplex: usize, slots: usize) -> RealPool {
    let launcher = ProcessLauncher::asgi_app("websocket_apps:app")
        .handler_path(test_handlers())
        .connections(slots)
        .build()
        .unwrap();
    let pool = Pool::builder(SocketTransport::new().multiplex(multiplex), launcher)
        .max_connections(slots)
        // Never applies to a WebSocket, however long it stays.
        .event_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    until_full(&pool).await;
    pool
}

/// One open WebSocket exchange: the host's two ends, and the call.
struct Socket {
    to: WebSocketSender,
    from: WebSocketReceiver,
    call: JoinHandle<Result<Reply, PoolError>>,
}

impl Socket {
    fn open(pool: &RealPool, path: &str, headers: Vec<(String, String)>) -> Self {
        let (link, to, from) = WebSocketLink::channel();
        let event = Event::websocket(path, headers, link).with_scheme("ws");
        let pool = pool.clone();
        let call = tokio::spawn(async move { pool.dispatch(event).await });
        Self { to, from, call }
    }

    async fn next(&mut self) -> Option<FromWorker> {
        timeout(PATIENCE, self.from.recv())
            .await
            .expect("the app said nothing in time")
    }

    async fn say(&self, text: &str) {
        self.to
            .send(WebSocketMessage::Text(text.into()))
            .await
            .unwrap();
    }

    /// Tells the app that the client closed with `code`, and waits for the
    /// exchange's end.
    async fn close(self, code: u16) -> Reply {
        self.to.close(code, "done");
        Self::wait(self.call).await
    }

    async fn end(self) -> Reply {
        Self::wait(self.call).await
    }

    async fn wait(call: JoinHandle<Result<Reply, PoolError>>) -> Reply {
        timeout(PATIENCE, call)
            .await
            .expect("the exchange did not end")
            .unwrap()
            .unwrap()
    }
}

fn text(text: &str) -> Option<FromWorker> {
    Some(FromWorker::Message(WebSocketMessage::Text(text.into())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_in_both_modes_outlives_the_event_timeout_and_gives_its_slot_back() {
    for multiplex in [1, 0] {
        let pool = app_pool(multiplex, 2).await;
        let offer = vec![("Sec-WebSocket-Protocol".into(), "chat, other".into())];
        let mut socket = Socket::open(&pool, "/echo", offer);
        let Some(FromWorker::Accept {
            subprotocol,
            headers,
        }) = socket.next().await
        else {
            panic!("no accept");
        };
        assert_eq!(subprotocol.as_deref(), Some("chat"));
        assert!(headers.contains(&("x-accepted".into(), "ws".into())));
        socket.say("hello").await;
        assert_eq!(socket.next().await, text("hello"), "mode {multiplex}");
        // Longer than the event timeout: a WebSocket is not bounded by it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let bytes = Bytes::from_static(b"\x00\xffbinary");
        socket
            .to
            .send(WebSocketMessage::Binary(bytes.clone()))
            .await
            .unwrap();
        assert_eq!(
            socket.next().await,
            Some(FromWorker::Message(WebSocketMessage::Binary(bytes)))
        );
        let stats = pool.stats();
        assert_eq!((stats.busy, stats.websockets.open), (1, 1));
        let reply = socket.close(1000).await;
        assert!(matches!(reply, Reply::Returned { .. }), "{reply:?}");
        let stats = wait_for(&pool, "the slot back", PATIENCE, |s| s.idle == s.capacity).await;
        assert_eq!(stats.websockets.open, 0);
        assert_eq!(stats.websockets.opened, 1);
        assert_eq!(stats.websockets.messages_to_worker, 2);
        assert_eq!(stats.websockets.messages_from_worker, 2);
        assert_eq!(
            stats.events.ok + stats.events.error + stats.events.timed_out,
            0
        );
        assert_eq!(
            stats.connection_restarts.ok, 0,
            "the exchange ended cleanly"
        );
        // The app saw the client's own close code.
        let mut socket = Socket::open(&pool, "/echo", vec![]);
        assert!(matches!(
            socket.next().await,
            Some(FromWorker::Accept { .. })
        ));
        socket.say("codes").await;
        assert_eq!(socket.next().await, text("1000"));
        drop(socket.to);
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_closes_denies_refuses_and_raises_each_in_its_own_way() {
    let pool = app_pool(1, 4).await;
    let mut socket = Socket::open(&pool, "/echo", vec![]);
    assert!(matches!(
        socket.next().await,
        Some(FromWorker::Accept { .. })
    ));
    socket.say("close").await;
    assert_eq!(
        socket.next().await,
        Some(FromWorker::Close {
            code: 4000,
            reason: "bye".into()
        })
    );
    assert!(matches!(socket.end().await, Reply::Returned { .. }));

    let mut denied = Socket::open(&pool, "/deny", vec![]);
    let mut parts = Vec::new();
    while let Some(FromWorker::Deny(part)) = denied.next().await {
        parts.push(part);
    }
    assert_eq!(
        parts,
        [
            ResponsePart::Head {
                status: 401,
                headers: vec![
                    ("content-type".into(), "text/plain".into()),
                    ("x-why".into(), "no".into())
                ]
            },
            ResponsePart::Chunk(Bytes::from_static(b"go ")),
            ResponsePart::Chunk(Bytes::from_static(b"away")),
            ResponsePart::End,
        ]
    );
    assert!(matches!(denied.end().await, Reply::Returned { .. }));

    let mut refused = Socket::open(&pool, "/refuse", vec![]);
    assert!(matches!(
        refused.next().await,
        Some(FromWorker::Close { code: 4001, .. })
    ));
    assert!(matches!(refused.end().await, Reply::Returned { .. }));

    let mut raising = Socket::open(&pool, "/raise", vec![]);
    assert!(matches!(
        raising.next().await,
        Some(FromWorker::Accept { .. })
    ));
    let reply = raising.end().await;
    assert!(
        matches!(&reply, Reply::Raised { exception_type, .. } if exception_type == "ValueError"),
        "{reply:?}"
    );
    let stats = wait_for(&pool, "every slot back", PATIENCE, |s| s.idle == s.capacity).await;
    assert_eq!(stats.connection_restarts.ok, 0);
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_does_not_speak_websocket_gets_nothing_and_keeps_its_connection() {
    let launcher = python_worker("echo:handler", 1).build().unwrap();
    let pool = Pool::builder(SocketTransport::new().multiplex(1), launcher)
        .max_connections(1)
        .build()
        .unwrap();
    until_full(&pool).await;
    let (link, _to, _from) = WebSocketLink::channel();
    let error = pool
        .dispatch(Event::websocket("/", vec![], link))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.transport_error::<NetError>(),
            Some(NetError::WebSocketUnsupported)
        ),
        "{error:?}"
    );
    let stats = pool.stats();
    assert_eq!((stats.idle, stats.connection_restarts.ok), (1, 0));
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_reading_stops_the_app_within_the_window() {
    for multiplex in [1, 0] {
        let pool = app_pool(multiplex, 1).await;
        let mut socket = Socket::open(&pool, "/echo", vec![]);
        assert!(matches!(
            socket.next().await,
            Some(FromWorker::Accept { .. })
        ));
        socket.say("flood 2000 1024").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // 64 KiB of credit at 1024 + 64 a message, and one past it.
        let sent = pool.stats().websockets.messages_from_worker;
        assert!((55..=62).contains(&sent), "{sent} messages in flight");
        let mut got = 0;
        loop {
            match socket.next().await {
                Some(FromWorker::Message(WebSocketMessage::Binary(bytes))) => {
                    assert_eq!(bytes.len(), 1024);
                    got += 1;
                }
                other => {
                    assert_eq!(other, text("flooded"));
                    break;
                }
            }
        }
        assert_eq!(got, 2000);
        assert!(matches!(socket.close(1001).await, Reply::Returned { .. }));
        pool.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_stops_reading_stops_the_host_sender_within_the_window() {
    let pool = app_pool(1, 1).await;
    let mut socket = Socket::open(&pool, "/deaf", vec![]);
    assert!(matches!(
        socket.next().await,
        Some(FromWorker::Accept { .. })
    ));
    let message = WebSocketMessage::Binary(Bytes::from(vec![7; 1024]));
    let mut sent = 0;
    while timeout(Duration::from_millis(500), socket.to.send(message.clone()))
        .await
        .is_ok()
    {
        sent += 1;
        assert!(sent < 100, "the sender never waited");
    }
    // The worker's 64 KiB window, one past it, and one in the channel.
    assert!((55..=64).contains(&sent), "{sent} messages before the wait");
    socket.call.abort();
    wait_for(&pool, "the slot back", PATIENCE, |s| s.idle == s.capacity).await;
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_mid_stream_gives_the_slot_back_once_and_the_app_hears_1006() {
    for multiplex in [1, 0] {
        let pool = app_pool(multiplex, 2).await;
        let mut socket = Socket::open(&pool, "/echo", vec![]);
        assert!(matches!(
            socket.next().await,
            Some(FromWorker::Accept { .. })
        ));
        socket.say("one").await;
        assert_eq!(socket.next().await, text("one"));
        socket.call.abort();
        assert!(socket.call.await.unwrap_err().is_cancelled());
        let stats = wait_for(&pool, "the slot back", PATIENCE, |s| s.idle == s.capacity).await;
        assert_slots_add_up(&stats);
        assert_eq!(
            (stats.capacity, stats.busy, stats.websockets.open),
            (2, 0, 0)
        );
        // Both slots serve, and the app heard the caller go.
        let mut first = Socket::open(&pool, "/echo", vec![]);
        let mut second = Socket::open(&pool, "/echo", vec![]);
        assert!(matches!(
            first.next().await,
            Some(FromWorker::Accept { .. })
        ));
        assert!(matches!(
            second.next().await,
            Some(FromWorker::Accept { .. })
        ));
        first.say("codes").await;
        assert_eq!(first.next().await, text("1006"), "mode {multiplex}");
        let stats = pool.stats();
        assert_eq!((stats.busy, stats.websockets.open), (2, 2));
        drop((first, second));
        let stats = wait_for(&pool, "both slots back", PATIENCE, |s| s.idle == s.capacity).await;
        assert_slots_add_up(&stats);
        pool.shutdown(Duration::from_secs(2)).await;
    }
}
