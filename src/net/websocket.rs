//! WebSocket exchanges (`docs/protocol.md`, "WebSocket"): one long event that
//! holds its slot for the life of the socket, with messages both ways.
//!
//! The host builds the event with [`Event::websocket`](super::Event::websocket)
//! and a [`WebSocketLink`]; it keeps the link's other two ends, a
//! [`WebSocketSender`] for the client's messages and a [`WebSocketReceiver`]
//! for the app's. The transport's `call` pumps both until the worker ends the
//! exchange (`O` or `X`), and returns that answer.
//!
//! Both directions are bounded by credit: each side may send data only while
//! the other has granted it credit (a window of bytes), and grants more as
//! its reader takes what arrived. A slow reader on either side therefore
//! stops the sender instead of filling memory, and on a multiplexed
//! connection the shared reader never waits for one stream.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::{Notify, mpsc, oneshot};

use super::envelope::{
    BODY, DONE, HEADER_LEN, HeaderPair, RAISED, RETURNED, Reply, WS_BINARY, WS_CONTROL, WS_CREDIT,
    WS_TEXT, head, parse_meta, split,
};
use super::error::{NetError, ProtocolError};
use super::response_stream::ResponsePart;
use crate::stats::WebSocketStats;

/// The receive window each side grants unless told otherwise: 64 KiB of
/// credit, messages costing their length plus [`MESSAGE_COST`].
pub const DEFAULT_WINDOW: u32 = 64 * 1024;

/// What a message costs in credit beyond its length, so that a flood of
/// empty messages is bounded too.
pub const MESSAGE_COST: u64 = 64;

/// The version of the WebSocket exchange this host speaks; a worker says
/// which it speaks in its ready frame.
pub const WEBSOCKET_VERSION: u32 = 1;

/// The close code a disconnect carries when the host's sender is dropped
/// without [`WebSocketSender::close`]: 1006, the connection was lost.
pub const ABNORMAL_CLOSURE: u16 = 1006;

/// One WebSocket message, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebSocketMessage {
    /// A text message (kind `T` on the wire).
    Text(String),
    /// A binary message (kind `Y`).
    Binary(Bytes),
}

impl WebSocketMessage {
    /// The message's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Binary(bytes) => bytes.len(),
        }
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn cost(&self) -> u64 {
        self.len() as u64 + MESSAGE_COST
    }
}

/// What the worker's app said on a WebSocket exchange, in order.
///
/// First one of: [`Accept`](Self::Accept) (answer the client's handshake
/// with 101), [`Close`](Self::Close) before accepting (refuse it; uvicorn
/// answers 403), or a denial response ([`Deny`](Self::Deny) parts: head,
/// chunks, end). After an accept: messages, and at most one `Close`. The
/// receiver ends (`None`) once the call has ended; the call's answer says how
/// (`Returned` when the app returned, `Raised` when it raised).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FromWorker {
    /// The app accepted the connection (ASGI `websocket.accept`).
    Accept {
        /// The subprotocol it chose among those the client offered.
        subprotocol: Option<String>,
        /// Headers to add to the 101 response.
        headers: Vec<(String, String)>,
    },
    /// A message for the client.
    Message(WebSocketMessage),
    /// The app closed the connection (ASGI `websocket.close`).
    Close {
        /// The close code, 1000 when the app gave none.
        code: u16,
        /// The close reason; may be empty.
        reason: String,
    },
    /// A part of the app's denial response (ASGI's `websocket.http.response`
    /// extension), in place of an accept.
    Deny(ResponsePart),
}

/// The transport's ends of one WebSocket exchange, carried by
/// [`Event::websocket`](super::Event::websocket). The host keeps the
/// [`WebSocketSender`] and [`WebSocketReceiver`] made with it.
///
/// Cloning shares it: only the first call that carries it uses it, a later
/// one fails with [`NetError::WebSocketLinkUsed`].
#[derive(Clone)]
pub struct WebSocketLink {
    inner: Arc<LinkInner>,
}

struct LinkInner {
    window: u32,
    ends: parking_lot::Mutex<Option<Ends>>,
}

/// What the pump takes from the link.
pub(crate) struct Ends {
    to_worker: mpsc::Receiver<WebSocketMessage>,
    disconnect: oneshot::Receiver<(u16, String)>,
    from_worker: mpsc::UnboundedSender<(FromWorker, u64)>,
    consumed: Arc<Consumed>,
    window: u32,
}

/// Credit the host's reader has freed, for the pump to grant.
#[derive(Debug, Default)]
struct Consumed {
    bytes: AtomicU64,
    notify: Notify,
}

impl Consumed {
    fn add(&self, cost: u64) {
        if cost > 0 {
            self.bytes.fetch_add(cost, Ordering::AcqRel);
            self.notify.notify_one();
        }
    }
}

impl std::fmt::Debug for WebSocketLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketLink")
            .field("window", &self.inner.window)
            .field("used", &self.inner.ends.lock().is_none())
            .finish()
    }
}

/// Two links are equal when they are the same link.
impl PartialEq for WebSocketLink {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for WebSocketLink {}

impl WebSocketLink {
    /// A link and the host's two ends of it, with a receive window of
    /// [`DEFAULT_WINDOW`].
    ///
    /// # Examples
    ///
    /// A WebSocket echo through a pool of the reference worker running an
    /// ASGI app (not run here: it needs Python and the app):
    ///
    #[cfg_attr(feature = "process", doc = "```no_run")]
    #[cfg_attr(not(feature = "process"), doc = "```ignore")]
    /// use std::time::Duration;
    /// use async_worker_pool::net::{Event, FromWorker, SocketTransport, WebSocketLink, WebSocketMessage};
    /// use async_worker_pool::{Pool, ProcessLauncher};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let launcher = ProcessLauncher::asgi_app("app:app").build()?;
    /// let pool = Pool::builder(SocketTransport::new().multiplex(1), launcher).build()?;
    /// pool.ready(Duration::from_secs(10)).await?;
    ///
    /// let (link, to_worker, mut from_worker) = WebSocketLink::channel();
    /// let event = Event::websocket("/echo", vec![], link).with_scheme("ws");
    /// let call = tokio::spawn({
    ///     let pool = pool.clone();
    ///     async move { pool.dispatch(event).await }
    /// });
    /// assert!(matches!(from_worker.recv().await, Some(FromWorker::Accept { .. })));
    /// to_worker.send(WebSocketMessage::Text("hello".into())).await?;
    /// let echo = from_worker.recv().await;
    /// assert_eq!(echo, Some(FromWorker::Message(WebSocketMessage::Text("hello".into()))));
    /// to_worker.close(1000, "bye"); // the app sees websocket.disconnect with 1000
    /// let answer = call.await??; // the app returned: the slot is free again
    /// # let _ = answer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn channel() -> (Self, WebSocketSender, WebSocketReceiver) {
        Self::with_window(DEFAULT_WINDOW)
    }

    /// As [`channel`](Self::channel), granting the worker `window` bytes of
    /// credit (at least [`MESSAGE_COST`]): the most the worker may have sent
    /// that the host's reader has not yet taken, plus one message.
    pub fn with_window(window: u32) -> (Self, WebSocketSender, WebSocketReceiver) {
        let window = window.max(MESSAGE_COST as u32);
        // One message waits in the channel; more wait in the host's `send`.
        let (to_tx, to_rx) = mpsc::channel(1);
        let (close_tx, close_rx) = oneshot::channel();
        let (from_tx, from_rx) = mpsc::unbounded_channel();
        let consumed = Arc::new(Consumed::default());
        let ends = Ends {
            to_worker: to_rx,
            disconnect: close_rx,
            from_worker: from_tx,
            consumed: Arc::clone(&consumed),
            window,
        };
        let link = Self {
            inner: Arc::new(LinkInner {
                window,
                ends: parking_lot::Mutex::new(Some(ends)),
            }),
        };
        let sender = WebSocketSender {
            tx: to_tx,
            disconnect: parking_lot::Mutex::new(Some(close_tx)),
        };
        let receiver = WebSocketReceiver {
            rx: from_rx,
            consumed,
        };
        (link, sender, receiver)
    }

    /// The window the host grants the worker.
    pub(crate) fn window(&self) -> u32 {
        self.inner.window
    }

    /// The ends, for the one call that pumps them.
    pub(crate) fn take(&self) -> Option<Ends> {
        self.inner.ends.lock().take()
    }
}

/// The host's end for the client's messages to the worker's app.
///
/// Dropping it without [`close`](Self::close) tells the app that the
/// connection was lost (`websocket.disconnect` with code 1006).
#[derive(Debug)]
pub struct WebSocketSender {
    tx: mpsc::Sender<WebSocketMessage>,
    /// Taken by the first close (or the drop).
    disconnect: parking_lot::Mutex<Option<oneshot::Sender<(u16, String)>>>,
}

/// The exchange has ended: the message was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the WebSocket exchange has ended")]
pub struct WebSocketClosed(pub WebSocketMessage);

impl WebSocketSender {
    /// Sends a client message to the app, waiting while the worker has
    /// granted no credit (its app is not reading): that wait is the
    /// backpressure a host passes on to its client.
    ///
    /// # Errors
    ///
    /// [`WebSocketClosed`], with the message, once the exchange has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped before it completes, the message was not sent.
    pub async fn send(&self, message: WebSocketMessage) -> Result<(), WebSocketClosed> {
        self.tx
            .send(message)
            .await
            .map_err(|error| WebSocketClosed(error.0))
    }

    /// Tells the app that the client closed the connection with `code` and
    /// `reason` (ASGI `websocket.disconnect`); only the first close counts.
    /// Messages sent before it go first while the worker grants credit;
    /// those still waiting for credit then are dropped, and so is every
    /// message sent after it.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        if let Some(disconnect) = self.disconnect.lock().take() {
            let _ = disconnect.send((code, reason.into()));
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.disconnect.lock().is_none()
    }
}

impl Drop for WebSocketSender {
    fn drop(&mut self) {
        self.close(ABNORMAL_CLOSURE, String::new());
    }
}

/// The host's end for what the worker's app says, in order; see
/// [`FromWorker`].
///
/// Taking a message or a denial part grants its credit back to the worker,
/// so a host that stops reading stops the app's `send` (after at most the
/// window). Dropping the receiver discards what the app sends from then on.
#[derive(Debug)]
pub struct WebSocketReceiver {
    rx: mpsc::UnboundedReceiver<(FromWorker, u64)>,
    consumed: Arc<Consumed>,
}

impl WebSocketReceiver {
    /// The app's next message, or `None` once the call has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken (and its credit granted) only when
    /// the future completes.
    pub async fn recv(&mut self) -> Option<FromWorker> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the app's next message, as [`recv`](Self::recv) waits for it.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<FromWorker>> {
        self.rx.poll_recv(cx).map(|item| {
            item.map(|(item, cost)| {
                self.consumed.add(cost);
                item
            })
        })
    }
}

impl Drop for WebSocketReceiver {
    fn drop(&mut self) {
        // What is still queued will never be read: its credit is free.
        self.rx.close();
        while let Ok((_, cost)) = self.rx.try_recv() {
            self.consumed.add(cost);
        }
    }
}

/// The transport's WebSocket counters, shared by the clones of a transport.
#[derive(Debug, Default)]
pub(crate) struct WebSocketCounters {
    open: AtomicU64,
    opened: AtomicU64,
    to_worker: AtomicU64,
    from_worker: AtomicU64,
}

impl WebSocketCounters {
    pub(crate) fn snapshot(&self) -> WebSocketStats {
        WebSocketStats {
            open: self.open.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            messages_to_worker: self.to_worker.load(Ordering::Relaxed),
            messages_from_worker: self.from_worker.load(Ordering::Relaxed),
        }
    }
}

/// Counts an exchange open until it is dropped, however it ends.
struct Open<'a>(&'a WebSocketCounters);

impl<'a> Open<'a> {
    fn new(counters: &'a WebSocketCounters) -> Self {
        counters.open.fetch_add(1, Ordering::Relaxed);
        counters.opened.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where the frames of one exchange go and come from: a connection of its
/// own, or a stream of a multiplexed one. Envelopes only; the wire adds the
/// length prefix (and stream id).
pub(crate) trait Wire: Send {
    /// The worker's next envelope on this exchange. Cancel safe.
    fn next_frame(&mut self) -> impl Future<Output = Result<Bytes, NetError>> + Send;
    /// Sends one envelope to the worker.
    fn send_frame(&mut self, envelope: Bytes) -> impl Future<Output = Result<(), NetError>> + Send;
}

/// Where the exchange is, as the worker's frames move it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sent the event; waiting for an accept, a close or a denial.
    Opening,
    Accepted,
    /// The app closed the connection; only its end may follow.
    Closed,
    /// A denial response is under way.
    Denying,
    /// The denial response is complete; only the end may follow.
    Denied,
}

#[derive(Deserialize)]
struct Control {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    subprotocol: Option<String>,
    #[serde(default)]
    headers: Option<Vec<HeaderPair>>,
    #[serde(default)]
    window: Option<u32>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

/// Pumps one WebSocket exchange whose event has been sent, until the
/// worker's `O` or `X`, which it returns.
///
/// Dropped midway, it leaves the exchange unfinished; the caller's guard
/// (the connection marked unusable, or the stream's cancel frame) deals with
/// that.
pub(crate) async fn exchange<W: Wire>(
    wire: &mut W,
    ends: Ends,
    counters: &WebSocketCounters,
) -> Result<Reply, NetError> {
    let _open = Open::new(counters);
    let Ends {
        mut to_worker,
        mut disconnect,
        from_worker,
        consumed,
        window,
    } = ends;
    let forward = |item: FromWorker, cost: u64| {
        if from_worker.send((item, cost)).is_err() {
            // Nobody reads any more: the credit is free at once.
            consumed.add(cost);
        }
    };
    let mut phase = Phase::Opening;
    // What the worker has granted the host, and what the host still grants it.
    let mut send_credit: i64 = 0;
    let mut recv_credit = i64::from(window);
    let mut granted: u64 = 0;
    let threshold = u64::from(window / 2).max(1);
    let mut to_worker_open = true;
    let mut disconnected = false;
    loop {
        tokio::select! {
            biased;
            frame = wire.next_frame() => {
                let payload = frame?;
                let (kind, meta_end) = split(&payload)?;
                let cost = (payload.len() - meta_end) as u64 + MESSAGE_COST;
                let mut take_credit = || {
                    if recv_credit <= 0 {
                        return Err(ProtocolError::WebSocketCredit { cost, credit: recv_credit });
                    }
                    recv_credit -= i64::try_from(cost).unwrap_or(i64::MAX);
                    Ok(())
                };
                match (kind, phase) {
                    (RETURNED | RAISED, _) => return Ok(Reply::decode(payload)?),
                    (WS_CREDIT, _) => {
                        send_credit = send_credit.saturating_add(i64::from(credit_of(&payload[meta_end..])?));
                    }
                    (WS_CONTROL, _) => {
                        let control: Control = parse_meta(kind, &payload[HEADER_LEN..meta_end])?;
                        match (control.kind.as_str(), phase) {
                            ("accept", Phase::Opening) => {
                                phase = Phase::Accepted;
                                send_credit = i64::from(control.window.unwrap_or(DEFAULT_WINDOW));
                                let headers = control
                                    .headers
                                    .unwrap_or_default()
                                    .into_iter()
                                    .map(|HeaderPair(name, value)| (name, value))
                                    .collect();
                                forward(FromWorker::Accept { subprotocol: control.subprotocol, headers }, 0);
                            }
                            ("close", Phase::Opening | Phase::Accepted) => {
                                phase = Phase::Closed;
                                let code = control.code.unwrap_or(1000);
                                let reason = control.reason.unwrap_or_default();
                                forward(FromWorker::Close { code, reason }, 0);
                            }
                            (other, _) => {
                                return Err(NetError::StreamOrder(ProtocolError::WebSocketControl(other.to_owned())));
                            }
                        }
                    }
                    (WS_TEXT, Phase::Accepted) => {
                        take_credit()?;
                        let text = String::from_utf8(payload[meta_end..].to_vec())
                            .map_err(|_| ProtocolError::TextNotUtf8)?;
                        counters.from_worker.fetch_add(1, Ordering::Relaxed);
                        forward(FromWorker::Message(WebSocketMessage::Text(text)), cost);
                    }
                    (WS_BINARY, Phase::Accepted) => {
                        take_credit()?;
                        counters.from_worker.fetch_add(1, Ordering::Relaxed);
                        let body = payload.slice(meta_end..);
                        forward(FromWorker::Message(WebSocketMessage::Binary(body)), cost);
                    }
                    (super::envelope::HEAD, Phase::Opening) => {
                        take_credit()?;
                        let (status, headers) = head(kind, &payload[HEADER_LEN..meta_end])?;
                        phase = Phase::Denying;
                        forward(FromWorker::Deny(ResponsePart::Head { status, headers }), MESSAGE_COST);
                        let body = payload.slice(meta_end..);
                        let len = body.len() as u64;
                        if len > 0 {
                            forward(FromWorker::Deny(ResponsePart::Chunk(body)), len);
                        }
                    }
                    (BODY | DONE, Phase::Denying) => {
                        take_credit()?;
                        let body = payload.slice(meta_end..);
                        let len = body.len() as u64;
                        let mut cost_left = cost;
                        if len > 0 {
                            forward(FromWorker::Deny(ResponsePart::Chunk(body)), len);
                            cost_left -= len;
                        }
                        if kind == DONE {
                            phase = Phase::Denied;
                            forward(FromWorker::Deny(ResponsePart::End), cost_left);
                        } else {
                            consumed.add(cost_left);
                        }
                    }
                    (kind, phase) => {
                        return Err(NetError::StreamOrder(ProtocolError::UnexpectedKind {
                            kind,
                            expected: expected_in(phase),
                        }));
                    }
                }
            }
            message = to_worker.recv(),
                if to_worker_open && !disconnected && phase == Phase::Accepted && send_credit > 0 =>
            {
                match message {
                    Some(message) => {
                        send_credit -= i64::try_from(message.cost()).unwrap_or(i64::MAX);
                        counters.to_worker.fetch_add(1, Ordering::Relaxed);
                        wire.send_frame(encode_message(message)).await?;
                    }
                    None => to_worker_open = false,
                }
            }
            close = &mut disconnect, if !disconnected => {
                disconnected = true;
                let (code, reason) = close.unwrap_or((ABNORMAL_CLOSURE, String::new()));
                wire.send_frame(encode_disconnect(code, &reason)).await?;
            }
            () = consumed.notify.notified() => {
                let total = consumed.bytes.load(Ordering::Acquire);
                let due = total - granted;
                if due >= threshold {
                    let grant = u32::try_from(due).unwrap_or(u32::MAX);
                    granted += u64::from(grant);
                    recv_credit = recv_credit.saturating_add(i64::from(grant));
                    wire.send_frame(encode_credit(grant)).await?;
                }
            }
        }
    }
}

fn expected_in(phase: Phase) -> &'static str {
    match phase {
        Phase::Opening => "`W`, `H`, `O` or `X`",
        Phase::Accepted => "`T`, `Y`, `U`, `W`, `O` or `X`",
        Phase::Closed | Phase::Denied => "`U`, `O` or `X`",
        Phase::Denying => "`B`, `D`, `U` or `X`",
    }
}

/// The credit a `U` frame grants: its body, a big-endian `u32`.
fn credit_of(body: &[u8]) -> Result<u32, ProtocolError> {
    let bytes: [u8; 4] = body
        .try_into()
        .map_err(|_| ProtocolError::WebSocketControl(format!("credit of {} bytes", body.len())))?;
    Ok(u32::from_be_bytes(bytes))
}

const EMPTY_META: &[u8] = b"\0\0\0\x02{}";

fn encode_message(message: WebSocketMessage) -> Bytes {
    let (kind, body): (u8, &[u8]) = match &message {
        WebSocketMessage::Text(text) => (WS_TEXT, text.as_bytes()),
        WebSocketMessage::Binary(bytes) => (WS_BINARY, bytes),
    };
    let mut out = BytesMut::with_capacity(1 + EMPTY_META.len() + body.len());
    out.put_u8(kind);
    out.put_slice(EMPTY_META);
    out.put_slice(body);
    out.freeze()
}

fn encode_credit(grant: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + EMPTY_META.len() + 4);
    out.put_u8(WS_CREDIT);
    out.put_slice(EMPTY_META);
    out.put_u32(grant);
    out.freeze()
}

fn encode_disconnect(code: u16, reason: &str) -> Bytes {
    #[derive(serde::Serialize)]
    struct Disconnect<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        code: u16,
        reason: &'a str,
    }
    let meta = serde_json::to_vec(&Disconnect {
        kind: "disconnect",
        code,
        reason,
    })
    .expect("a struct of strings and numbers serializes");
    let mut out = BytesMut::with_capacity(HEADER_LEN + meta.len());
    out.put_u8(WS_CONTROL);
    out.put_u32(u32::try_from(meta.len()).unwrap_or(u32::MAX));
    out.put_slice(&meta);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_frames_encode_as_the_protocol_says() {
        assert_eq!(
            &encode_message(WebSocketMessage::Text("hé".into()))[..],
            b"T\0\0\0\x02{}h\xc3\xa9"
        );
        assert_eq!(
            &encode_message(WebSocketMessage::Binary(Bytes::from_static(b"\0\x01")))[..],
            b"Y\0\0\0\x02{}\0\x01"
        );
        assert_eq!(&encode_credit(258)[..], b"U\0\0\0\x02{}\0\0\x01\x02");
        let disconnect = encode_disconnect(1001, "bye");
        let (kind, meta_end) = split(&disconnect).unwrap();
        assert_eq!(kind, b'W');
        let meta: serde_json::Value = serde_json::from_slice(&disconnect[5..meta_end]).unwrap();
        assert_eq!(
            meta,
            serde_json::json!({"type": "disconnect", "code": 1001, "reason": "bye"})
        );
    }

    #[test]
    fn a_credit_frame_must_hold_exactly_four_bytes() {
        assert_eq!(credit_of(&[0, 0, 1, 0]).unwrap(), 256);
        assert!(credit_of(&[0, 1, 0]).is_err());
        assert!(credit_of(&[0, 0, 0, 1, 0]).is_err());
    }

    #[tokio::test]
    async fn the_receiver_frees_credit_as_it_takes_and_when_dropped() {
        let (link, _sender, mut receiver) = WebSocketLink::with_window(1000);
        let ends = link.take().unwrap();
        assert!(link.take().is_none(), "a link is used once");
        let text = FromWorker::Message(WebSocketMessage::Text("x".into()));
        ends.from_worker.send((text.clone(), 65)).unwrap();
        ends.from_worker.send((text, 65)).unwrap();
        assert_eq!(ends.consumed.bytes.load(Ordering::Acquire), 0);
        assert!(receiver.recv().await.is_some());
        assert_eq!(ends.consumed.bytes.load(Ordering::Acquire), 65);
        drop(receiver);
        assert_eq!(ends.consumed.bytes.load(Ordering::Acquire), 130);
    }

    #[tokio::test]
    async fn a_dropped_sender_disconnects_with_1006_and_close_with_its_code() {
        let (link, sender, _receiver) = WebSocketLink::channel();
        let ends = link.take().unwrap();
        drop(sender);
        assert_eq!(ends.disconnect.await.unwrap(), (1006, String::new()));
        let (link, sender, _receiver) = WebSocketLink::channel();
        let ends = link.take().unwrap();
        sender.close(4000, "done");
        assert_eq!(ends.disconnect.await.unwrap(), (4000, "done".to_owned()));
    }
}
