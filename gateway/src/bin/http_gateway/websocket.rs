//! WebSocket routes of an ASGI app (`--asgi`): an HTTP/1.1 `Upgrade:
//! websocket` request becomes one WebSocket event on a slot, held for the
//! socket's whole life (`docs/protocol.md`, "WebSocket").
//!
//! The handshake is answered only once the app has: 101 with the
//! subprotocol it chose when it accepts, its own response when it denies
//! (ASGI's `websocket.http.response`), 403 when it closes first, 500 when it
//! ends without a word. Then one task per socket moves messages both ways:
//! tungstenite (through axum) does the framing, reassembles fragmented
//! messages, bounds their size and answers pings; the pool's exchange gives
//! the flow control, so that neither a slow client nor a slow app makes the
//! gateway buffer more than a window per socket.
//!
//! How a socket is closed, when the app does not close it itself: 1000 when
//! the app returned, 1011 when it raised or its worker died or blocked past
//! its liveness probe, 1012 when its worker drains (a reload, a recycle, the
//! gateway's own shutdown; after `--shutdown-grace`), 1001 after
//! `--ws-max-lifetime`, 1009 for a message over `--ws-max-message-bytes`,
//! and none (the peer is gone) when pings go unanswered for
//! `--ws-ping-interval`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use async_worker_pool::PoolError;
use async_worker_pool::net::{
    Event, FromWorker, NetError, Reply, ResponsePart, WebSocketLink, WebSocketMessage,
    WebSocketReceiver, WebSocketSender,
};
use async_worker_pool_gateway::answers;

use crate::GatewayPool;
use crate::responses;

/// The WebSocket flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WebSocketArgs {
    /// Largest WebSocket message from a client, in bytes, reassembled from
    /// its fragments (uvicorn's --ws-max-size); a larger one closes the
    /// socket with 1009. At most the frame limit allows.
    #[arg(
        long,
        env = "GATEWAY_WS_MAX_MESSAGE_BYTES",
        default_value_t = 16 * 1024 * 1024
    )]
    pub ws_max_message_bytes: usize,

    /// How often a WebSocket client is pinged; one that has sent nothing
    /// (not even the pong) by the next ping is taken for dead and dropped.
    /// `off` sends no pings.
    #[arg(long, env = "GATEWAY_WS_PING_INTERVAL", default_value = "20s", value_parser = crate::args::optional_duration)]
    pub ws_ping_interval: crate::args::OrOff,

    /// Close every WebSocket with 1001 after this long (the event timeout
    /// does not apply to WebSockets); no limit by default.
    #[arg(long, env = "GATEWAY_WS_MAX_LIFETIME", value_parser = humantime::parse_duration)]
    pub ws_max_lifetime: Option<Duration>,
}

/// What every socket needs to know, shared by the handlers.
#[derive(Debug, Clone)]
pub struct Settings {
    max_message_bytes: usize,
    ping_interval: Option<Duration>,
    max_lifetime: Option<Duration>,
    /// How long a socket on a draining worker (or a stopping gateway) keeps
    /// going before it is closed with 1012: `--shutdown-grace`.
    grace: Duration,
    /// The largest denial body passed on.
    max_body: usize,
    /// Cancelled when the gateway begins to shut down.
    stop: CancellationToken,
}

impl Settings {
    pub fn new(
        args: &WebSocketArgs,
        max_frame_bytes: usize,
        grace: Duration,
        stop: CancellationToken,
    ) -> Self {
        // A message travels in one frame: envelope and stream id around it.
        let room = max_frame_bytes.saturating_sub(16).max(1);
        Self {
            max_message_bytes: args.ws_max_message_bytes.clamp(1, room),
            ping_interval: args.ws_ping_interval.0.filter(|every| !every.is_zero()),
            max_lifetime: args.ws_max_lifetime,
            grace,
            max_body: max_frame_bytes,
            stop,
        }
    }
}

/// tungstenite's read buffer, allocated for every socket up front: small, so
/// that idle sockets stay cheap; larger messages grow it while they arrive.
const READ_BUFFER: usize = 2 * 1024;
/// How long an exchange may go on after its client is gone, or after the
/// gateway closed the socket, before it is cancelled (the app is then
/// cancelled too).
const DISCONNECT_WAIT: Duration = Duration::from_secs(5);
/// How long a message may wait for a client's connection to take it when
/// pings are off (with pings, two intervals) before the client counts as
/// dead.
const STALL_WITHOUT_PINGS: Duration = Duration::from_secs(60);
/// How long the gateway waits for a client's reply to its close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

/// Close codes (RFC 6455, 7.4.1).
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const PROTOCOL_ERROR: u16 = 1002;
const NO_STATUS: u16 = 1005;
const ABNORMAL: u16 = 1006;
const TOO_BIG: u16 = 1009;
const INTERNAL_ERROR: u16 = 1011;
const SERVICE_RESTART: u16 = 1012;

/// Whether the request asks to upgrade to WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

type Call = Pin<Box<dyn Future<Output = Result<Reply, PoolError>> + Send>>;

/// What the front end knows about the request, for the event's meta.
pub struct Origin {
    /// The client's host and port, as the connection or a trusted proxy says.
    pub client: Option<(String, u16)>,
    /// The TCP address the gateway listens on; none on a Unix socket.
    pub server: Option<SocketAddr>,
    /// `ws`, or `wss` when a trusted proxy says the client used TLS.
    pub scheme: &'static str,
    pub http_version: &'static str,
}

/// Answers a WebSocket handshake as the app does, and serves the socket.
pub async fn upgrade(
    pool: Arc<GatewayPool>,
    settings: Arc<Settings>,
    origin: Origin,
    mut parts: Parts,
) -> Response {
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let target = async_worker_pool::http::request_target(&parts.uri);
    let headers = async_worker_pool::http::header_pairs(&parts.headers).collect();
    let (link, to_worker, mut from_worker) = WebSocketLink::channel();
    let mut event = Event::websocket(target, headers, link)
        .with_scheme(origin.scheme)
        .with_http_version(origin.http_version);
    if let Some(server) = origin.server {
        event = event.with_server(server.ip().to_string(), server.port());
    }
    if let Some((host, port)) = origin.client {
        event = event.with_client(host, port);
    }
    if let Some(trace) = async_worker_pool::http::trace_from_headers(&parts.headers) {
        event = event.with_trace(trace);
    }
    let slot = match pool.acquire_owned().await {
        Ok(slot) => slot,
        Err(error) => return answers::from_pool_error(error),
    };
    let draining = slot.draining();
    let mut call: Call = Box::pin(async move {
        let mut slot = slot;
        slot.call(event).await
    });
    // The app answers the handshake first; the call ends only with the app.
    let (first, ended) = tokio::select! {
        biased;
        first = from_worker.recv() => (first, None),
        result = &mut call => (from_worker.recv().await, Some(result)),
    };
    match first {
        Some(FromWorker::Accept {
            subprotocol,
            headers,
        }) => {
            let mut upgrade = upgrade
                .read_buffer_size(READ_BUFFER)
                .write_buffer_size(0)
                .max_message_size(settings.max_message_bytes)
                .max_frame_size(settings.max_message_bytes);
            if let Some(protocol) = subprotocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
                upgrade.set_selected_protocol(protocol);
            }
            let mut response = upgrade.on_upgrade(move |client| {
                let socket = Socket {
                    to_worker,
                    from_worker,
                    settings,
                };
                socket.serve(client, call, ended, Box::pin(draining))
            });
            add_headers(&mut response, headers);
            response
        }
        Some(FromWorker::Close { .. }) => {
            finish_in_background(call, ended, to_worker, from_worker);
            text_response(403, "the app closed the WebSocket before accepting it\n")
        }
        Some(FromWorker::Deny(ResponsePart::Head { status, headers })) => {
            let body = denial_body(&mut from_worker, &mut call, settings.max_body).await;
            finish_in_background(call, ended, to_worker, from_worker);
            responses::with_head(status, headers, Body::from(body))
        }
        Some(_) => {
            tracing::warn!(
                "the app's first WebSocket message was neither an accept, a close nor a denial"
            );
            text_response(
                502,
                "the app answered the WebSocket handshake out of order\n",
            )
        }
        None => match ended {
            Some(Ok(Reply::Raised {
                exception_type,
                message,
                traceback,
            })) => {
                tracing::warn!(
                    exception_type,
                    message,
                    traceback,
                    "the app raised before answering a WebSocket handshake"
                );
                text_response(500, "Internal Server Error\n")
            }
            Some(Ok(_)) => {
                tracing::warn!("the app returned without answering a WebSocket handshake");
                text_response(500, "Internal Server Error\n")
            }
            Some(Err(error)) if unsupported(&error) => text_response(
                501,
                "the workers do not speak WebSocket; upgrade the async_pool_worker package\n",
            ),
            Some(Err(error)) => answers::from_pool_error(error),
            // The receiver ended, so the call did: not reached.
            None => text_response(502, "the WebSocket exchange ended without an answer\n"),
        },
    }
}

/// Whether the pool refused the event because the worker does not speak
/// WebSocket.
fn unsupported(error: &PoolError) -> bool {
    matches!(
        error.transport_error::<NetError>(),
        Some(NetError::WebSocketUnsupported)
    )
}

fn text_response(status: u16, text: &'static str) -> Response {
    let content_type = ("content-type".into(), "text/plain; charset=utf-8".into());
    responses::with_head(status, vec![content_type], Body::from(text))
}

/// The app's accept headers on the 101, but those the handshake owns.
fn add_headers(response: &mut Response, headers: Vec<(String, String)>) {
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            tracing::warn!(name, "a WebSocket accept header HTTP cannot carry; dropped");
            continue;
        };
        if [
            header::UPGRADE,
            header::CONNECTION,
            header::SEC_WEBSOCKET_ACCEPT,
            header::SEC_WEBSOCKET_PROTOCOL,
        ]
        .contains(&name)
        {
            continue;
        }
        response.headers_mut().append(name, value);
    }
}

/// The rest of a denial response's body, up to `limit` bytes, while the
/// call runs on.
async fn denial_body(
    from_worker: &mut WebSocketReceiver,
    call: &mut Call,
    limit: usize,
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut call_done = false;
    loop {
        let part = tokio::select! {
            biased;
            part = from_worker.recv() => part,
            _ = &mut *call, if !call_done => { call_done = true; continue; }
        };
        match part {
            Some(FromWorker::Deny(ResponsePart::Chunk(bytes))) => {
                if body.len() + bytes.len() > limit {
                    tracing::warn!(limit, "a WebSocket denial body over the frame limit; cut");
                    return body;
                }
                body.extend_from_slice(&bytes);
            }
            Some(FromWorker::Deny(ResponsePart::End)) | None => return body,
            Some(_) => {}
        }
    }
}

/// Lets an exchange whose handshake was refused run to its end (the app
/// returns), bounded by [`DISCONNECT_WAIT`], so that its slot comes back
/// cleanly rather than cancelled.
fn finish_in_background(
    call: Call,
    ended: Option<Result<Reply, PoolError>>,
    to_worker: WebSocketSender,
    from_worker: WebSocketReceiver,
) {
    if ended.is_some() {
        return;
    }
    drop(from_worker);
    to_worker.close(ABNORMAL, "");
    tokio::spawn(async move {
        if tokio::time::timeout(DISCONNECT_WAIT, call).await.is_err() {
            tracing::warn!("the app went on after refusing a WebSocket; cancelled");
        }
        drop(to_worker);
    });
}

/// One accepted socket's ends toward the worker.
struct Socket {
    to_worker: WebSocketSender,
    from_worker: WebSocketReceiver,
    settings: Arc<Settings>,
}

/// Why the client's side of a socket ended.
enum ClientEnd {
    /// A close frame, with its code (1005 when it had none).
    Closed(u16, String),
    /// The connection dropped, or broke the protocol.
    Lost(u16),
    /// A message over the size limit.
    TooBig,
    /// The exchange ended while a client message waited for the worker.
    ExchangeOver,
}

impl Socket {
    /// Moves messages both ways until the exchange ends, then closes the
    /// client's socket as the end says.
    async fn serve(
        self,
        client: WebSocket,
        mut call: Call,
        mut ended: Option<Result<Reply, PoolError>>,
        draining: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) {
        let Self {
            to_worker,
            mut from_worker,
            settings,
        } = self;
        let (mut client_tx, mut client_rx) = client.split();
        // Any frame from the client since the last ping.
        let heard = AtomicBool::new(true);
        let mut draining = draining;
        let mut drain_deadline: Option<Instant> = None;
        let lifetime_end = settings.max_lifetime.map(|limit| Instant::now() + limit);
        let mut next_ping = settings.ping_interval.map(|every| Instant::now() + every);
        // A message the client's connection takes nothing of for this long
        // (its TCP window stays shut) means a dead peer, pings or not.
        let stall_limit = settings
            .ping_interval
            .map_or(STALL_WITHOUT_PINGS, |every| 2 * every);
        // The close frame sent to the client, if any: then only the end is awaited.
        let mut closed_client = false;
        // When the app gave up waiting on a gone client, the exchange is cancelled.
        let mut give_up: Option<Instant> = None;
        // The worker drains (a reload, a recycle), or the gateway stops.
        let mut draining_seen = false;
        let mut drain_started = false;
        {
            let inbound = client_to_worker(&mut client_rx, &to_worker, &heard);
            tokio::pin!(inbound);
            let mut inbound_done = false;
            // The app's messages all reach the client before its end does.
            let mut from_done = false;
            loop {
                if ended.is_some() && from_done {
                    break;
                }
                // The socket's own reason to close it: the code for the client and the app.
                let closing: Option<(u16, &'static str)> = tokio::select! {
                    biased;
                    item = from_worker.recv(), if !from_done => match item {
                        Some(FromWorker::Message(message)) => {
                            let sent = !closed_client
                                && send_within(&mut client_tx, to_client(message), stall_limit).await;
                            if !closed_client && !sent {
                                // The client is gone, or takes nothing for
                                // so long that it counts as gone: the app
                                // hears it.
                                to_worker.close(ABNORMAL, "");
                                closed_client = true;
                                give_up.get_or_insert(Instant::now() + DISCONNECT_WAIT);
                            }
                            None
                        }
                        Some(FromWorker::Close { code, reason }) => {
                            if !closed_client {
                                let _ = send_within(&mut client_tx, close_message(code, reason), CLOSE_HANDSHAKE).await;
                                closed_client = true;
                            }
                            give_up.get_or_insert(Instant::now() + DISCONNECT_WAIT);
                            None
                        }
                        // Nothing else comes after an accept.
                        Some(_) => None,
                        // The exchange is over; the call says how.
                        None => {
                            from_done = true;
                            None
                        }
                    },
                    result = &mut call, if ended.is_none() => {
                        ended = Some(result);
                        None
                    }
                    end = &mut inbound, if !inbound_done => {
                        inbound_done = true;
                        match end {
                            ClientEnd::Closed(code, reason) => to_worker.close(code, reason),
                            ClientEnd::Lost(code) => to_worker.close(code, ""),
                            ClientEnd::TooBig => {
                                to_worker.close(TOO_BIG, "");
                                if !closed_client {
                                    let too_big = close_message(TOO_BIG, "message too big".into());
                                    let _ = send_within(&mut client_tx, too_big, CLOSE_HANDSHAKE).await;
                                    closed_client = true;
                                }
                            }
                            ClientEnd::ExchangeOver => {}
                        }
                        give_up.get_or_insert(Instant::now() + DISCONNECT_WAIT);
                        None
                    }
                    () = sleep_until_opt(next_ping) => {
                        if !heard.swap(false, Ordering::Relaxed) {
                            tracing::debug!("a WebSocket client answered no ping; dropping it");
                            to_worker.close(ABNORMAL, "");
                            closed_client = true;
                            give_up.get_or_insert(Instant::now() + DISCONNECT_WAIT);
                            next_ping = None;
                        } else {
                            let _ = send_within(&mut client_tx, Message::Ping(Default::default()), stall_limit).await;
                            next_ping = settings.ping_interval.map(|every| Instant::now() + every);
                        }
                        None
                    }
                    () = &mut draining, if !draining_seen => {
                        draining_seen = true;
                        if !std::mem::replace(&mut drain_started, true) {
                            drain_deadline = Some(Instant::now() + settings.grace);
                        }
                        None
                    }
                    () = settings.stop.cancelled(), if !drain_started => {
                        drain_started = true;
                        drain_deadline = Some(Instant::now() + settings.grace);
                        None
                    }
                    () = sleep_until_opt(drain_deadline) => {
                        drain_deadline = None;
                        Some((SERVICE_RESTART, "service restart"))
                    }
                    () = sleep_until_opt(lifetime_end), if !closed_client => {
                        Some((GOING_AWAY, "lifetime reached"))
                    }
                    () = sleep_until_opt(give_up) => {
                        tracing::warn!("a WebSocket app went on after its socket closed; cancelled");
                        break;
                    }
                };
                if let Some((code, reason)) = closing {
                    to_worker.close(code, reason);
                    if !closed_client {
                        let _ = send_within(
                            &mut client_tx,
                            close_message(code, reason.into()),
                            CLOSE_HANDSHAKE,
                        )
                        .await;
                        closed_client = true;
                    }
                    give_up.get_or_insert(Instant::now() + DISCONNECT_WAIT);
                }
            }
        }
        // Cancelled (dropped) if it has not ended: the worker cancels the app.
        drop(call);
        if !closed_client {
            let (code, reason) = end_code(
                ended.as_ref(),
                draining_seen || settings.stop.is_cancelled(),
            );
            let _ = send_within(
                &mut client_tx,
                close_message(code, reason.into()),
                CLOSE_HANDSHAKE,
            )
            .await;
        }
        drop(to_worker);
        drop(from_worker);
        // The client's answer to the close frame, briefly; then the socket goes.
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
            while let Some(Ok(_)) = client_rx.next().await {}
        })
        .await;
        let _ = client_tx.close().await;
    }
}

/// Passes the client's messages to the app, one at a time: while the worker
/// grants no credit, the next is not read, so the client's TCP window fills
/// instead of the gateway's memory.
async fn client_to_worker(
    client_rx: &mut futures_util::stream::SplitStream<WebSocket>,
    to_worker: &WebSocketSender,
    heard: &AtomicBool,
) -> ClientEnd {
    loop {
        let message = match client_rx.next().await {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                let error = error.into_inner();
                tracing::debug!(%error, "a WebSocket client's connection failed");
                return match error.downcast_ref::<tungstenite::Error>() {
                    // A message or frame over the limit.
                    Some(tungstenite::Error::Capacity(_)) => ClientEnd::TooBig,
                    // A client gone without a close frame: its connection was lost.
                    Some(tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    )) => ClientEnd::Lost(ABNORMAL),
                    Some(tungstenite::Error::Protocol(_)) => ClientEnd::Lost(PROTOCOL_ERROR),
                    _ => ClientEnd::Lost(ABNORMAL),
                };
            }
            None => return ClientEnd::Lost(ABNORMAL),
        };
        heard.store(true, Ordering::Relaxed);
        let message = match message {
            Message::Text(text) => WebSocketMessage::Text(text.as_str().to_owned()),
            Message::Binary(bytes) => WebSocketMessage::Binary(bytes),
            // tungstenite answers pings itself; a pong only shows the peer lives.
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(frame) => {
                return match frame {
                    Some(frame) => ClientEnd::Closed(frame.code, frame.reason.as_str().to_owned()),
                    None => ClientEnd::Closed(NO_STATUS, String::new()),
                };
            }
        };
        if to_worker.send(message).await.is_err() {
            return ClientEnd::ExchangeOver;
        }
    }
}

/// Sends `message` to the client unless its connection takes nothing of it
/// for `limit`; whether it went.
#[must_use]
async fn send_within(
    client_tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    message: Message,
    limit: Duration,
) -> bool {
    tokio::time::timeout(limit, client_tx.send(message))
        .await
        .is_ok_and(|sent| sent.is_ok())
}

fn to_client(message: WebSocketMessage) -> Message {
    match message {
        WebSocketMessage::Text(text) => Message::Text(text.into()),
        WebSocketMessage::Binary(bytes) => Message::Binary(bytes),
        // No other kind exists yet; an empty binary message stands in.
        _ => Message::Binary(Default::default()),
    }
}

fn close_message(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// The code a socket is closed with when its exchange ended without the app
/// closing it.
fn end_code(ended: Option<&Result<Reply, PoolError>>, draining: bool) -> (u16, &'static str) {
    match ended {
        Some(Ok(Reply::Raised { .. })) => (INTERNAL_ERROR, "the app raised"),
        Some(Ok(_)) => (NORMAL, ""),
        Some(Err(PoolError::WorkerExited { .. } | PoolError::Closed)) if draining => {
            (SERVICE_RESTART, "service restart")
        }
        Some(Err(PoolError::Closed)) => (SERVICE_RESTART, "service restart"),
        Some(Err(_)) => (INTERNAL_ERROR, "the worker failed"),
        // Cancelled after the socket closed: its code went out already.
        None => (INTERNAL_ERROR, ""),
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
