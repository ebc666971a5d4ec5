//! The multiplexed mode of the socket transport (`docs/protocol.md`,
//! "Multiplexing"): many streams, one per pool slot, on a few physical
//! connections per worker.
//!
//! - A [`Physical`] connection has done the handshake and the `M` exchange. A
//!   writer task drains its queue of encoded frames into one buffer and writes
//!   it with one system call, once the runtime has run the other tasks that
//!   were ready beside the one that woke it; a reader task reads large buffers
//!   and hands every complete frame to the waiter of its stream.
//! - A [`MuxStream`] is one stream id on one physical connection, one event at
//!   a time, as a slot's connection is in the one-per-connection mode.
//! - A call dropped midway sends a cancel frame (`K`) for its stream; the
//!   worker cancels that event and confirms (`Q`). Until then the cancellation
//!   is *unclaimed*: the next stream opened to that worker (the slot's
//!   reconnect) waits for the confirmation, so the worker never runs more events
//!   than the pool has slots.
//! - A physical connection that breaks fails exactly the events on it, one
//!   outcome each; its streams' slots reconnect, and the first reconnect opens
//!   one new physical connection that the others share.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::answer::{AnswerFrames, PREFIX_LEN, read_error, read_streamed};
use super::envelope::{Event, Ready, Reply, answer_goes_on, ends_websocket};
use super::error::{NetError, ProtocolError};
use super::websocket::{self, Wire};
use super::websocket_link::WebSocketCounters;

/// The kind byte of the host's request to multiplex a connection, and of the
/// worker's acknowledgement.
pub(crate) const MULTIPLEX: u8 = b'M';
/// The kind byte of a cancel frame, host to worker.
const CANCEL: u8 = b'K';
/// The kind byte of a cancel confirmation, worker to host.
const CANCELLED: u8 = b'Q';
/// The multiplexing version this host speaks.
pub(crate) const MUX_VERSION: u32 = 1;
/// The stream id in front of every envelope in this mode.
const STREAM_ID_LEN: usize = 4;
/// At most this many queued frames go into one write.
const BATCH: usize = 512;
/// Frames at least this long are written on their own rather than copied
/// into the batch buffer.
const LARGE_FRAME: usize = 16 * 1024;

/// The `M` envelope the host sends after `R` (and the worker's acknowledgement
/// has the same shape): kind, meta length, `{"version":1}`.
pub(crate) fn multiplex_request() -> Bytes {
    let meta = format!("{{\"version\":{MUX_VERSION}}}");
    let mut out = BytesMut::with_capacity(5 + meta.len());
    out.put_u8(MULTIPLEX);
    out.put_u32(u32::try_from(meta.len()).unwrap_or(u32::MAX));
    out.put_slice(meta.as_bytes());
    out.freeze()
}

/// Checks the worker's acknowledgement of [`multiplex_request`].
pub(crate) fn check_multiplex_ack(payload: &[u8]) -> Result<(), ProtocolError> {
    let Some((&kind, _)) = payload.split_first() else {
        return Err(ProtocolError::Empty);
    };
    if kind != MULTIPLEX {
        return Err(ProtocolError::UnexpectedKind {
            kind,
            expected: "`M`",
        });
    }
    #[derive(serde::Deserialize)]
    struct Ack {
        version: u32,
    }
    let meta_len = payload
        .get(1..5)
        .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
        .ok_or(ProtocolError::ShortHeader { len: payload.len() })?;
    let meta =
        payload
            .get(5..5usize.saturating_add(meta_len))
            .ok_or(ProtocolError::MetaPastEnd {
                meta_len: u32::try_from(meta_len).unwrap_or(u32::MAX),
                payload_len: payload.len(),
            })?;
    let ack: Ack = serde_json::from_slice(meta)
        .map_err(|source| ProtocolError::InvalidMeta { kind, source })?;
    if ack.version != MUX_VERSION {
        return Err(ProtocolError::UnsupportedMultiplexVersion {
            version: ack.version,
        });
    }
    Ok(())
}

/// What a stream's waiter gets: the envelope of its answer, or why none came.
type Answer = Result<Bytes, NetError>;

/// Where the frames of one stream's exchange go.
#[derive(Debug)]
struct Waiter {
    answers: mpsc::UnboundedSender<Answer>,
    /// A WebSocket exchange: every frame but `O` and `X` goes on.
    websocket: bool,
}

impl Waiter {
    fn goes_on(&self, kind: u8) -> bool {
        if self.websocket {
            !ends_websocket(kind)
        } else {
            answer_goes_on(kind)
        }
    }
}

/// State shared by a physical connection's handle, reader and writer.
#[derive(Debug, Default)]
struct Shared {
    state: parking_lot::Mutex<PhysicalState>,
    /// Told once the connection is dead, so that the writer stops.
    closed: Notify,
}

#[derive(Debug, Default)]
struct PhysicalState {
    dead: bool,
    /// The stream of every event in flight, and where its answer goes.
    /// A streamed answer comes in several frames, hence a channel.
    waiters: HashMap<u32, Waiter>,
    /// Streams whose event was cancelled and not yet confirmed; the sender
    /// tells the reconnect that waits for it.
    cancelling: HashMap<u32, oneshot::Sender<()>>,
}

impl Shared {
    /// Marks the connection dead and fails every event on it, each with its
    /// own error; unconfirmed cancellations count as done (the worker cancels
    /// what ran on a connection it lost).
    fn fail(&self, error: &NetError) {
        let (waiters, cancelling) = {
            let mut state = self.state.lock();
            state.dead = true;
            (
                std::mem::take(&mut state.waiters),
                std::mem::take(&mut state.cancelling),
            )
        };
        self.closed.notify_one();
        for (_, waiter) in waiters {
            let _ = waiter.answers.send(Err(each(error)));
        }
        drop(cancelling);
    }

    fn is_dead(&self) -> bool {
        self.state.lock().dead
    }

    /// How many events (WebSocket exchanges included) await their answer.
    fn in_flight(&self) -> usize {
        self.state.lock().waiters.len()
    }
}

/// A copy of `error` for one of the events that a broken connection fails.
fn each(error: &NetError) -> NetError {
    match error {
        NetError::Io(io) => NetError::Io(std::io::Error::new(io.kind(), io.to_string())),
        NetError::FrameTooLarge { limit } => NetError::FrameTooLarge { limit: *limit },
        NetError::Protocol(protocol) => NetError::Protocol(ProtocolError::OnSharedConnection {
            reason: protocol.to_string(),
        }),
        _ => NetError::Closed,
    }
}

/// One physical connection in multiplexed mode.
#[derive(Debug)]
pub(crate) struct Physical {
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<Bytes>,
    ready: Ready,
    /// Streams open on it.
    streams: AtomicUsize,
    next_stream: AtomicU32,
    reader: tokio::task::AbortHandle,
}

impl Drop for Physical {
    fn drop(&mut self) {
        // The writer ends once its queue is empty and every sender is gone,
        // which closes the socket's write side; the reader stops here.
        self.reader.abort();
        self.shared.fail(&NetError::Closed);
    }
}

impl Physical {
    /// Starts the reader and the writer of a connection that has agreed to
    /// multiplex. `leftover` is what was read past the acknowledgement.
    pub(crate) fn start<R, W>(
        read: R,
        write: W,
        leftover: BytesMut,
        codec: LengthDelimitedCodec,
        limit: usize,
        ready: Ready,
    ) -> Arc<Self>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let shared = Arc::new(Shared::default());
        let mut framed = FramedRead::with_capacity(read, codec, 64 * 1024);
        framed.read_buffer_mut().extend_from_slice(&leftover);
        let reader = tokio::spawn(read_frames(framed, Arc::clone(&shared), limit));
        let (outgoing, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(write, queue, Arc::clone(&shared)));
        Arc::new(Self {
            shared,
            outgoing,
            ready,
            streams: AtomicUsize::new(0),
            next_stream: AtomicU32::new(1),
            reader: reader.abort_handle(),
        })
    }

    /// Whether the connection broke or was closed.
    pub(crate) fn is_dead(&self) -> bool {
        self.shared.is_dead()
    }

    /// How many streams are open on it.
    pub(crate) fn load(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// The ready frame the worker sent when the connection opened.
    pub(crate) fn ready(&self) -> Ready {
        self.ready
    }
}

/// Reads frames and hands each to the waiter of its stream, until the
/// connection ends or breaks the protocol.
async fn read_frames<R: AsyncRead + Unpin>(
    mut framed: FramedRead<R, LengthDelimitedCodec>,
    shared: Arc<Shared>,
    limit: usize,
) {
    let error = loop {
        match framed.next().await {
            Some(Ok(frame)) => {
                if let Err(error) = dispatch(&shared, frame) {
                    break NetError::Protocol(error);
                }
            }
            Some(Err(error)) => break read_error(error, limit, NetError::Closed),
            None => break NetError::Closed,
        }
    };
    tracing::debug!(%error, "multiplexed connection ended");
    shared.fail(&error);
}

/// Hands one frame to its stream's waiter.
fn dispatch(shared: &Shared, mut frame: BytesMut) -> Result<(), ProtocolError> {
    if frame.len() < STREAM_ID_LEN + 1 {
        return Err(ProtocolError::ShortHeader { len: frame.len() });
    }
    let stream = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let payload = frame.split_off(STREAM_ID_LEN).freeze();
    let mut state = shared.state.lock();
    if payload[0] == CANCELLED {
        return match state.cancelling.remove(&stream) {
            Some(confirmed) => {
                let _ = confirmed.send(());
                Ok(())
            }
            None => Err(ProtocolError::UnknownStream { stream }),
        };
    }
    // The waiter stays for the rest of a streamed answer (or of a
    // WebSocket exchange); its last frame ends the exchange.
    let waiter = match state.waiters.get(&stream) {
        Some(waiter) if waiter.goes_on(payload[0]) => Some(waiter.answers.clone()),
        Some(_) => state.waiters.remove(&stream).map(|waiter| waiter.answers),
        None => None,
    };
    if let Some(waiter) = waiter {
        drop(state);
        // A waiter that went away meanwhile has sent its cancel frame.
        let _ = waiter.send(Ok(payload));
        return Ok(());
    }
    if state.cancelling.contains_key(&stream) {
        // The answer crossed the cancel frame: nobody wants it.
        return Ok(());
    }
    Err(ProtocolError::UnknownStream { stream })
}

/// Writes every queued frame, as many at once as are queued.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut write: W,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
    shared: Arc<Shared>,
) {
    let mut frames = Vec::with_capacity(BATCH);
    let mut batch = BytesMut::with_capacity(64 * 1024);
    loop {
        let taken = tokio::select! {
            biased;
            taken = queue.recv_many(&mut frames, BATCH) => taken,
            () = shared.closed.notified() => 0,
        };
        if taken == 0 {
            break;
        }
        if frames.len() < BATCH && shared.in_flight() > frames.len() {
            // Woken by the first frame of a scheduler tick (the runtime runs a
            // task woken by another one next): let the tick's other tasks
            // queue theirs first, so that they go out in this write. Only
            // under load: with every event in flight already taken, nobody
            // else will add to the batch.
            behind_ready_tasks().await;
            while frames.len() < BATCH {
                match queue.try_recv() {
                    Ok(frame) => frames.push(frame),
                    Err(_) => break,
                }
            }
        }
        let result = write_batch(&mut write, &mut frames, &mut batch).await;
        frames.clear();
        if let Err(error) = result {
            shared.fail(&NetError::from(error));
            break;
        }
    }
    let _ = write.shutdown().await;
}

/// Pending once, waking itself: the runtime puts a task that woke itself
/// at the back of its run queue, behind the tasks already ready (where
/// `tokio::task::yield_now` would wait for the queue to empty and the driver
/// to be polled).
fn behind_ready_tasks() -> impl std::future::Future<Output = ()> {
    let mut woken = false;
    std::future::poll_fn(move |cx| {
        if woken {
            return std::task::Poll::Ready(());
        }
        woken = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
}

async fn write_batch<W: AsyncWrite + Unpin>(
    write: &mut W,
    frames: &mut [Bytes],
    batch: &mut BytesMut,
) -> std::io::Result<()> {
    if let [frame] = frames {
        return write.write_all(frame).await;
    }
    for frame in frames.iter() {
        if frame.len() >= LARGE_FRAME {
            if !batch.is_empty() {
                write.write_all(batch).await?;
                batch.clear();
            }
            write.write_all(frame).await?;
        } else {
            batch.extend_from_slice(frame);
        }
    }
    if !batch.is_empty() {
        write.write_all(batch).await?;
        batch.clear();
    }
    Ok(())
}

/// A cancel frame sent and not yet confirmed.
#[derive(Debug)]
pub(crate) struct Cancellation {
    /// Resolves when the worker confirms, or fails when the connection dies
    /// (the worker then cancels what ran on it).
    pub(crate) confirmed: oneshot::Receiver<()>,
    /// The connection it was sent on, held open until then.
    pub(crate) physical: Arc<Physical>,
}

/// The physical connections to one worker process, and its unconfirmed
/// cancellations.
#[derive(Debug, Default)]
pub(crate) struct Group {
    /// Held while a physical connection is opened, so that streams that
    /// reconnect together share one.
    pub(crate) opening: tokio::sync::Mutex<()>,
    state: parking_lot::Mutex<GroupState>,
}

#[derive(Debug, Default)]
struct GroupState {
    physical: Vec<Weak<Physical>>,
    /// Each with the connection it runs on, kept open until the confirmation
    /// comes (the stream that sent it may have been its last).
    unclaimed: VecDeque<Cancellation>,
    /// The worker answered `M` by closing the connection: it does not speak
    /// multiplexing, so its slots use one connection each.
    refused: bool,
}

impl Group {
    /// The least loaded live physical connection, if `wanted` are open.
    pub(crate) fn pick(&self, wanted: usize) -> Option<Arc<Physical>> {
        let mut state = self.state.lock();
        state
            .physical
            .retain(|weak| weak.upgrade().is_some_and(|physical| !physical.is_dead()));
        if state.physical.len() < wanted {
            return None;
        }
        state
            .physical
            .iter()
            .filter_map(Weak::upgrade)
            .min_by_key(|physical| physical.load())
    }

    /// Adds a physical connection just opened.
    pub(crate) fn add(&self, physical: &Arc<Physical>) {
        self.state.lock().physical.push(Arc::downgrade(physical));
    }

    /// Takes the oldest cancellation no reconnect has waited for yet.
    pub(crate) fn claim_cancellation(&self) -> Option<Cancellation> {
        self.state.lock().unclaimed.pop_front()
    }

    /// Gives back a cancellation claimed by a connect that was dropped.
    pub(crate) fn unclaim(&self, cancellation: Cancellation) {
        self.state.lock().unclaimed.push_front(cancellation);
    }

    fn unclaimed(&self, cancellation: Cancellation) {
        self.state.lock().unclaimed.push_back(cancellation);
    }

    /// Whether the worker refused to multiplex.
    pub(crate) fn refused(&self) -> bool {
        self.state.lock().refused
    }

    /// Remembers that the worker refused to multiplex.
    pub(crate) fn refuse(&self) {
        self.state.lock().refused = true;
    }
}

/// One stream on a physical connection: a slot's connection in multiplexed
/// mode.
#[derive(Debug)]
pub(crate) struct MuxStream {
    physical: Arc<Physical>,
    group: Arc<Group>,
    id: u32,
    limit: usize,
    usable: bool,
    websockets: Arc<WebSocketCounters>,
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        self.physical.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl MuxStream {
    /// A new stream on `physical`.
    pub(crate) fn open(
        physical: Arc<Physical>,
        group: Arc<Group>,
        limit: usize,
        websockets: Arc<WebSocketCounters>,
    ) -> Self {
        physical.streams.fetch_add(1, Ordering::Relaxed);
        let id = physical.next_stream.fetch_add(1, Ordering::Relaxed);
        Self {
            physical,
            group,
            id,
            limit,
            usable: true,
            websockets,
        }
    }

    pub(crate) fn ready(&self) -> Ready {
        self.physical.ready()
    }

    pub(crate) fn is_usable(&self) -> bool {
        self.usable && !self.physical.is_dead()
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.physical.is_dead()
    }

    /// Sends one event on this stream and waits for its answer.
    ///
    /// Dropped midway, it sends a cancel frame for the stream (see the module
    /// documentation) and leaves the stream unusable.
    pub(crate) async fn call(&mut self, event: &Event) -> Result<Reply, NetError> {
        if !self.usable {
            return Err(NetError::Unusable);
        }
        // Refused before anything is sent, so the stream stays usable.
        let websocket = match event.websocket_link() {
            None => None,
            Some(_) if self.ready().websocket_version().is_none() => {
                return Err(NetError::WebSocketUnsupported);
            }
            Some(link) => Some(link.take().ok_or(NetError::WebSocketLinkUsed)?),
        };
        let at_least = event.body().len().saturating_add(STREAM_ID_LEN + 5);
        if at_least > self.limit {
            return Err(NetError::EventTooLarge {
                len: at_least,
                limit: self.limit,
            });
        }
        let mut frame =
            BytesMut::with_capacity(PREFIX_LEN + STREAM_ID_LEN + 64 + event.body().len());
        frame.put_u32(0);
        frame.put_u32(self.id);
        event.encode(&mut frame);
        let payload_len = frame.len() - PREFIX_LEN;
        if payload_len > self.limit {
            return Err(NetError::EventTooLarge {
                len: payload_len,
                limit: self.limit,
            });
        }
        let prefix = u32::try_from(payload_len).unwrap_or(u32::MAX).to_be_bytes();
        frame[..PREFIX_LEN].copy_from_slice(&prefix);
        let (answer, mut answers) = mpsc::unbounded_channel();
        {
            let mut state = self.physical.shared.state.lock();
            if state.dead {
                return Err(NetError::Closed);
            }
            state.waiters.insert(
                self.id,
                Waiter {
                    answers: answer,
                    websocket: websocket.is_some(),
                },
            );
        }
        self.usable = false;
        // Armed until the exchange has ended well: a call dropped (or failed,
        // say because a streamed answer's reader went away) while the worker
        // still answers sends a cancel frame.
        let in_flight = InFlight {
            stream: self,
            armed: true,
        };
        if in_flight
            .stream
            .physical
            .outgoing
            .send(frame.freeze())
            .is_err()
        {
            return Err(NetError::Closed);
        }
        let reply = match (websocket, event.sink()) {
            (Some(ends), _) => {
                let mut wire = StreamWire {
                    answers: &mut answers,
                    physical: &in_flight.stream.physical,
                    id: in_flight.stream.id,
                };
                websocket::exchange(&mut wire, ends, &in_flight.stream.websockets).await?
            }
            (None, None) => Reply::decode(answers.next_answer_frame().await?)?,
            (None, Some(sink)) => read_streamed(&mut answers, sink).await?,
        };
        let mut in_flight = in_flight;
        in_flight.armed = false;
        drop(in_flight);
        self.usable = true;
        Ok(reply)
    }
}

/// A stream's answer frames, as the reader hands them over.
impl AnswerFrames for mpsc::UnboundedReceiver<Answer> {
    async fn next_answer_frame(&mut self) -> Result<Bytes, NetError> {
        self.recv().await.unwrap_or(Err(NetError::Closed))
    }
}

/// One stream's side of a WebSocket exchange: frames from the reader, and
/// frames out through the writer's queue with the stream id in front.
struct StreamWire<'a> {
    answers: &'a mut mpsc::UnboundedReceiver<Answer>,
    physical: &'a Physical,
    id: u32,
}

impl Wire for StreamWire<'_> {
    async fn next_frame(&mut self) -> Result<Bytes, NetError> {
        self.answers.next_answer_frame().await
    }

    async fn send_frame(&mut self, envelope: Bytes) -> Result<(), NetError> {
        let mut frame = BytesMut::with_capacity(PREFIX_LEN + STREAM_ID_LEN + envelope.len());
        let len = u32::try_from(STREAM_ID_LEN + envelope.len()).unwrap_or(u32::MAX);
        frame.put_u32(len);
        frame.put_u32(self.id);
        frame.put_slice(&envelope);
        self.physical
            .outgoing
            .send(frame.freeze())
            .map_err(|_| NetError::Closed)
    }
}

/// Sends the cancel frame of a call dropped before its answer came.
struct InFlight<'a> {
    stream: &'a MuxStream,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let stream = self.stream;
        let physical = &stream.physical;
        let (confirm, confirmed) = oneshot::channel();
        {
            let mut state = physical.shared.state.lock();
            if state.waiters.remove(&stream.id).is_none() || state.dead {
                // Answered (or failed) just now: nothing runs to cancel.
                return;
            }
            state.cancelling.insert(stream.id, confirm);
        }
        let mut frame = BytesMut::with_capacity(PREFIX_LEN + STREAM_ID_LEN + 7);
        frame.put_u32((STREAM_ID_LEN + 7) as u32);
        frame.put_u32(stream.id);
        frame.put_u8(CANCEL);
        frame.put_u32(2);
        frame.put_slice(b"{}");
        if physical.outgoing.send(frame.freeze()).is_ok() {
            stream.group.unclaimed(Cancellation {
                confirmed,
                physical: Arc::clone(physical),
            });
        }
        tracing::debug!(stream = stream.id, "event cancelled; cancel frame sent");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn envelope(kind: u8, meta: &str) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(meta.as_bytes());
        out
    }

    fn plain(answers: mpsc::UnboundedSender<Answer>) -> Waiter {
        Waiter {
            answers,
            websocket: false,
        }
    }

    #[test]
    fn a_websocket_stream_keeps_its_waiter_until_o_or_x() {
        let shared = Shared::default();
        let (answers, mut frames) = mpsc::unbounded_channel();
        shared.state.lock().waiters.insert(
            5,
            Waiter {
                answers,
                websocket: true,
            },
        );
        for kind in [b'W', b'T', b'Y', b'U', b'H', b'B', b'D', b'O'] {
            dispatch(&shared, frame(5, &envelope(kind, "{}"))).unwrap();
            assert_eq!(frames.try_recv().unwrap().unwrap()[0], kind);
        }
        assert!(!shared.state.lock().waiters.contains_key(&5));
    }

    fn frame(stream: u32, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_u32(stream);
        out.put_slice(payload);
        out
    }

    #[test]
    fn the_request_is_acknowledged_by_its_own_shape_and_nothing_else() {
        let request = multiplex_request();
        assert_eq!(&request[..], &envelope(b'M', r#"{"version":1}"#)[..]);
        assert!(check_multiplex_ack(&request).is_ok());
        let refusals: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "Empty"),
            (envelope(b'O', "{}"), "UnexpectedKind"),
            (vec![b'M', 0, 0], "ShortHeader"),
            (
                envelope(b'M', r#"{"version":1}"#)[..8].to_vec(),
                "MetaPastEnd",
            ),
            (envelope(b'M', "{}"), "InvalidMeta"),
            (
                envelope(b'M', r#"{"version":2}"#),
                "UnsupportedMultiplexVersion",
            ),
        ];
        for (payload, want) in refusals {
            let error = check_multiplex_ack(&payload).unwrap_err();
            assert!(
                format!("{error:?}").starts_with(want),
                "{payload:?}: {error:?}"
            );
        }
    }

    #[test]
    fn frames_go_to_their_own_stream_and_strays_break_the_protocol() {
        let shared = Shared::default();
        let (one, mut one_answer) = mpsc::unbounded_channel();
        let (two, mut two_answer) = mpsc::unbounded_channel();
        let (cancelled, mut confirmed) = oneshot::channel();
        {
            let mut state = shared.state.lock();
            state.waiters.insert(1, plain(one));
            state.waiters.insert(2, plain(two));
            state.cancelling.insert(3, cancelled);
        }
        // Answers in another order than asked, each to its own waiter.
        dispatch(&shared, frame(2, &envelope(b'O', "{}"))).unwrap();
        dispatch(&shared, frame(1, &envelope(b'X', "{}"))).unwrap();
        assert_eq!(two_answer.try_recv().unwrap().unwrap()[0], b'O');
        assert_eq!(one_answer.try_recv().unwrap().unwrap()[0], b'X');
        // A streamed answer: its head and chunks keep the stream's waiter,
        // its last frame ends the exchange.
        let (streamed, mut parts) = mpsc::unbounded_channel();
        shared.state.lock().waiters.insert(4, plain(streamed));
        for kind in [b'H', b'B', b'B', b'D'] {
            dispatch(&shared, frame(4, &envelope(kind, "{}"))).unwrap();
            assert_eq!(parts.try_recv().unwrap().unwrap()[0], kind);
        }
        assert!(!shared.state.lock().waiters.contains_key(&4));
        // An answer that crossed the cancel frame is dropped; `Q` confirms.
        dispatch(&shared, frame(3, &envelope(b'O', "{}"))).unwrap();
        assert!(confirmed.try_recv().is_err());
        dispatch(&shared, frame(3, &envelope(CANCELLED, "{}"))).unwrap();
        assert!(confirmed.try_recv().is_ok());
        // Streams with nothing in flight, and frames too short for a kind.
        for (stray, want) in [
            (frame(1, &envelope(b'O', "{}")), "UnknownStream"),
            (frame(3, &envelope(CANCELLED, "{}")), "UnknownStream"),
            (frame(9, b""), "ShortHeader"),
            (BytesMut::from(&[0, 0][..]), "ShortHeader"),
        ] {
            let error = dispatch(&shared, stray).unwrap_err();
            assert!(format!("{error:?}").starts_with(want), "{error:?}");
        }
    }

    #[test]
    fn a_failed_connection_gives_every_event_its_own_error() {
        let shared = Shared::default();
        let mut answers = Vec::new();
        for stream in 0..3 {
            let (waiter, answer) = mpsc::unbounded_channel();
            shared.state.lock().waiters.insert(stream, plain(waiter));
            answers.push(answer);
        }
        let (cancelled, mut confirmed) = oneshot::channel();
        shared.state.lock().cancelling.insert(7, cancelled);
        shared.fail(&NetError::Io(std::io::ErrorKind::ConnectionReset.into()));
        assert!(shared.is_dead());
        for mut answer in answers {
            let error = answer.try_recv().unwrap().unwrap_err();
            assert!(
                matches!(&error, NetError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset),
                "{error:?}"
            );
        }
        // The worker cancels what ran on a connection it lost.
        assert!(matches!(
            confirmed.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }

    /// An `AsyncWrite` that keeps the length of every write it is given.
    struct Recorder(Arc<parking_lot::Mutex<Vec<usize>>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.lock().push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_frames_of_one_scheduler_tick_go_out_in_one_write() {
        // The gateway's runtime: multi-threaded, one worker thread, whose
        // LIFO slot runs the writer right after the first task that wakes it.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let writes = Arc::new(parking_lot::Mutex::new(Vec::new()));
        runtime.block_on(async {
            let shared = Arc::new(Shared::default());
            // The nine events in flight, whose answers nobody reads here.
            let (answers, _unread) = mpsc::unbounded_channel();
            for stream in 1..=9 {
                shared
                    .state
                    .lock()
                    .waiters
                    .insert(stream, plain(answers.clone()));
            }
            let (outgoing, queue) = mpsc::unbounded_channel();
            let writer = tokio::spawn(write_frames(Recorder(Arc::clone(&writes)), queue, shared));
            let frame = Bytes::from_static(b"0123456789");
            // A first frame alone, so that the writer is back on its queue.
            outgoing.send(frame.clone()).unwrap();
            while writes.lock().is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Eight requests of one tick, each queueing its event.
            let senders = outgoing.clone();
            let tick_frame = frame.clone();
            tokio::spawn(async move {
                for _ in 0..8 {
                    let senders = senders.clone();
                    let frame = tick_frame.clone();
                    tokio::spawn(async move { senders.send(frame).unwrap() });
                }
            })
            .await
            .unwrap();
            drop(outgoing);
            writer.await.unwrap();
        });
        assert_eq!(*writes.lock(), [10, 80]);
    }
}
