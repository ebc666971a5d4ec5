//! The host's ends of a WebSocket exchange: the [`WebSocketLink`] an
//! [`Event::websocket`](super::Event::websocket) carries to the transport,
//! and the [`WebSocketSender`] and [`WebSocketReceiver`] the host keeps. The
//! transport's pump (`websocket.rs`) drives the exchange between them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

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

    pub(super) fn cost(&self) -> u64 {
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
/// one fails with [`NetError::WebSocketLinkUsed`](super::NetError::WebSocketLinkUsed).
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
    pub(super) to_worker: Arc<Outbox>,
    pub(super) from_worker: InboxSender,
    pub(super) consumed: Arc<Consumed>,
    pub(super) window: u32,
}

// The two queues of an exchange are small hand-made ones rather than tokio
// channels: a tokio channel allocates a block of 32 slots up front, which
// 10,000 idle sockets pay for 10,000 times; these allocate nothing until a
// message waits, and one slot's worth after.

/// The host's messages (one at most waits; the sender waits for room) and
/// its disconnect, for the pump.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    state: parking_lot::Mutex<OutboxState>,
    /// Told when the waiting message is taken, or the pump is gone.
    room: Notify,
}

#[derive(Debug, Default)]
struct OutboxState {
    message: Option<WebSocketMessage>,
    /// The first close (or the sender's drop), until the pump takes it.
    disconnect: Option<(u16, String)>,
    /// The sender closed or dropped: nothing more comes.
    sender_done: bool,
    /// The pump ended: nothing more is taken.
    pump_gone: bool,
    pump: Option<Waker>,
}

/// What the pump takes from the outbox.
pub(super) enum Outgoing {
    Message(WebSocketMessage),
    Disconnect(u16, String),
}

impl Outbox {
    /// The next thing to send: a message (only if `take_message`), else the
    /// disconnect.
    pub(super) fn poll_take(&self, cx: &mut Context<'_>, take_message: bool) -> Poll<Outgoing> {
        let mut state = self.state.lock();
        if take_message {
            if let Some(message) = state.message.take() {
                drop(state);
                self.room.notify_one();
                return Poll::Ready(Outgoing::Message(message));
            }
        }
        if let Some((code, reason)) = state.disconnect.take() {
            return Poll::Ready(Outgoing::Disconnect(code, reason));
        }
        if !state.pump.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.pump = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn wake_pump(state: &mut OutboxState) -> Option<Waker> {
        state.pump.take()
    }
}

/// The pump's end of the queue of what the app says.
pub(super) struct InboxSender(Arc<Inbox>);

#[derive(Debug, Default)]
struct Inbox {
    state: parking_lot::Mutex<InboxState>,
}

#[derive(Debug, Default)]
struct InboxState {
    items: std::collections::VecDeque<(FromWorker, u64)>,
    /// The pump ended: after the items, the end.
    pump_gone: bool,
    /// The receiver was dropped: items are refused.
    receiver_gone: bool,
    receiver: Option<Waker>,
}

impl InboxSender {
    /// Queues `item`; gives it back if the receiver is gone.
    pub(super) fn send(&self, item: (FromWorker, u64)) -> Result<(), (FromWorker, u64)> {
        let mut state = self.0.state.lock();
        if state.receiver_gone {
            return Err(item);
        }
        state.items.push_back(item);
        let waker = state.receiver.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Drop for InboxSender {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.pump_gone = true;
        let waker = state.receiver.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Tells the sender when the pump is gone, so that a `send` waiting for
/// room ends.
pub(super) struct OutboxGuard(pub(super) Arc<Outbox>);

impl Drop for OutboxGuard {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.pump_gone = true;
        state.message = None;
        drop(state);
        self.0.room.notify_waiters();
    }
}

/// Credit the host's reader has freed, for the pump to grant.
#[derive(Debug, Default)]
pub(super) struct Consumed {
    pub(super) bytes: AtomicU64,
    pub(super) notify: Notify,
}

impl Consumed {
    pub(super) fn add(&self, cost: u64) {
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
        let outbox = Arc::new(Outbox::default());
        let inbox = Arc::new(Inbox::default());
        let consumed = Arc::new(Consumed::default());
        let ends = Ends {
            to_worker: Arc::clone(&outbox),
            from_worker: InboxSender(Arc::clone(&inbox)),
            consumed: Arc::clone(&consumed),
            window,
        };
        let link = Self {
            inner: Arc::new(LinkInner {
                window,
                ends: parking_lot::Mutex::new(Some(ends)),
            }),
        };
        let sender = WebSocketSender { outbox };
        let receiver = WebSocketReceiver { inbox, consumed };
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
///
/// # Examples
///
/// ```
/// use async_worker_pool::net::{WebSocketLink, WebSocketMessage};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (_link, to_worker, _from_worker) = WebSocketLink::channel();
/// // One message waits for the exchange without one running yet.
/// to_worker.send(WebSocketMessage::Text("hi".into())).await.unwrap();
/// to_worker.close(1000, "bye");
/// assert!(to_worker.is_closed());
/// // After the close, messages are refused and handed back.
/// let refused = to_worker.send(WebSocketMessage::Text("late".into())).await;
/// assert_eq!(refused.unwrap_err().0, WebSocketMessage::Text("late".into()));
/// # }
/// ```
#[derive(Debug)]
pub struct WebSocketSender {
    outbox: Arc<Outbox>,
}

/// The exchange has ended: the message was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the WebSocket exchange has ended")]
pub struct WebSocketClosed(pub WebSocketMessage);

impl WebSocketSender {
    /// Sends a client message to the app, waiting while the worker has
    /// granted no credit (its app is not reading): that wait is the
    /// backpressure a host passes on to its client. One message waits here
    /// at most; concurrent sends take turns.
    ///
    /// # Errors
    ///
    /// [`WebSocketClosed`], with the message, once the exchange has ended or
    /// after [`close`](Self::close).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped before it completes, the message was not sent.
    pub async fn send(&self, message: WebSocketMessage) -> Result<(), WebSocketClosed> {
        let outbox = &self.outbox;
        loop {
            let room = outbox.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = outbox.state.lock();
                if state.pump_gone || state.sender_done {
                    return Err(WebSocketClosed(message));
                }
                if state.message.is_none() {
                    state.message = Some(message);
                    let pump = Outbox::wake_pump(&mut state);
                    drop(state);
                    if let Some(pump) = pump {
                        pump.wake();
                    }
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Tells the app that the client closed the connection with `code` and
    /// `reason` (ASGI `websocket.disconnect`); only the first close counts.
    /// A message sent before it goes first while the worker grants credit
    /// (one still waiting for credit then is dropped); a message sent after
    /// it is refused.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        let mut state = self.outbox.state.lock();
        if state.sender_done {
            return;
        }
        state.sender_done = true;
        state.disconnect = Some((code, reason.into()));
        let pump = Outbox::wake_pump(&mut state);
        drop(state);
        self.outbox.room.notify_waiters();
        if let Some(pump) = pump {
            pump.wake();
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.outbox.state.lock().sender_done
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
///
/// # Examples
///
/// ```
/// use async_worker_pool::net::{Event, WebSocketLink};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (link, _to_worker, mut from_worker) = WebSocketLink::channel();
/// // The event, and with it the link, goes to a call; here it is dropped
/// // unsent, so the exchange is over before it began.
/// drop(Event::websocket("/ws", vec![], link));
/// assert_eq!(from_worker.recv().await, None);
/// # }
/// ```
#[derive(Debug)]
pub struct WebSocketReceiver {
    inbox: Arc<Inbox>,
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
        let mut state = self.inbox.state.lock();
        if let Some((item, cost)) = state.items.pop_front() {
            drop(state);
            self.consumed.add(cost);
            return Poll::Ready(Some(item));
        }
        if state.pump_gone {
            return Poll::Ready(None);
        }
        if !state
            .receiver
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.receiver = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for WebSocketReceiver {
    fn drop(&mut self) {
        // What is still queued will never be read: its credit is free.
        let mut state = self.inbox.state.lock();
        state.receiver_gone = true;
        let cost: u64 = state.items.drain(..).map(|(_, cost)| cost).sum();
        drop(state);
        self.consumed.add(cost);
    }
}

/// The transport's WebSocket counters, shared by the clones of a transport.
#[derive(Debug, Default)]
pub(crate) struct WebSocketCounters {
    open: AtomicU64,
    opened: AtomicU64,
    pub(super) to_worker: AtomicU64,
    pub(super) from_worker: AtomicU64,
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
pub(super) struct Open<'a>(&'a WebSocketCounters);

impl<'a> Open<'a> {
    pub(super) fn new(counters: &'a WebSocketCounters) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let refused = FromWorker::Close {
            code: 1000,
            reason: String::new(),
        };
        assert!(ends.from_worker.send((refused, 0)).is_err());
    }

    #[tokio::test]
    async fn the_receiver_ends_after_the_last_item_once_the_pump_is_gone() {
        let (link, _sender, mut receiver) = WebSocketLink::channel();
        let ends = link.take().unwrap();
        let close = FromWorker::Close {
            code: 1000,
            reason: String::new(),
        };
        ends.from_worker.send((close.clone(), 0)).unwrap();
        drop(ends);
        assert_eq!(receiver.recv().await, Some(close));
        assert_eq!(receiver.recv().await, None);
    }

    fn take(outbox: &Outbox, take_message: bool) -> Poll<Outgoing> {
        outbox.poll_take(&mut Context::from_waker(Waker::noop()), take_message)
    }

    #[tokio::test]
    async fn one_message_waits_the_disconnect_passes_it_and_a_gone_pump_ends_sends() {
        let (link, sender, _receiver) = WebSocketLink::channel();
        let ends = link.take().unwrap();
        let message = WebSocketMessage::Text("one".into());
        sender.send(message.clone()).await.unwrap();
        // No room: a second send waits until the first is taken.
        let second = sender.send(WebSocketMessage::Text("two".into()));
        tokio::pin!(second);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        // Without credit only a disconnect could go; there is none yet.
        assert!(take(&ends.to_worker, false).is_pending());
        assert!(
            matches!(take(&ends.to_worker, true), Poll::Ready(Outgoing::Message(m)) if m == message)
        );
        second.await.unwrap();
        sender.close(4000, "done");
        sender.close(4001, "ignored");
        assert!(sender.is_closed());
        // The disconnect goes ahead of a message waiting for credit.
        assert!(matches!(
            take(&ends.to_worker, false),
            Poll::Ready(Outgoing::Disconnect(4000, ref reason)) if reason == "done"
        ));
        assert!(sender.send(message.clone()).await.is_err());
        drop(OutboxGuard(Arc::clone(&ends.to_worker)));
        let (link, sender, _receiver) = WebSocketLink::channel();
        drop(OutboxGuard(link.take().unwrap().to_worker));
        assert_eq!(
            sender.send(message.clone()).await,
            Err(WebSocketClosed(message))
        );
    }

    #[tokio::test]
    async fn a_dropped_sender_disconnects_with_1006() {
        let (link, sender, _receiver) = WebSocketLink::channel();
        let ends = link.take().unwrap();
        drop(sender);
        assert!(matches!(
            take(&ends.to_worker, true),
            Poll::Ready(Outgoing::Disconnect(1006, ref reason)) if reason.is_empty()
        ));
    }
}
