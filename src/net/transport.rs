//! [`SocketTransport`]: the [`Transport`] that speaks the wire protocol over Unix
//! or TCP sockets, and [`SocketConn`], one connection it opened.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{BufMut, Bytes};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::answer::{AnswerFrames, PREFIX_LEN, closed_or_io, read_error, read_streamed};
use super::envelope::{Event, Ready, Reply};
use super::error::NetError;
use super::handshake::{CHALLENGE, Challenge};
use super::mux::{self, Cancellation, Group, MuxStream, Physical};
use super::secret::WorkerSecret;
use super::stream::Stream;
use super::websocket::{self, Wire};
use super::websocket_link::WebSocketCounters;
use crate::endpoint::Endpoint;
use crate::stats::WebSocketStats;
use crate::transport::Transport;
use crate::worker::WorkerInfo;

/// The maximum frame length unless [`SocketTransport::max_frame_bytes`] says
/// otherwise: 16 MiB, the reference worker's default too.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// A connection idle this long is checked for a worker that closed it before
/// it is used again; one used more recently is trusted, so that the hot path
/// pays no system call.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// The largest payload a 4-byte length prefix can announce.
const LARGEST_FRAME: usize = u32::MAX as usize;

/// A [`Transport`] over Unix or TCP sockets, speaking the protocol of
/// `docs/protocol.md` to workers such as the `python/async_pool_worker/` package.
///
/// It connects to [`Endpoint::Unix`] and [`Endpoint::Tcp`] endpoints; an
/// [`Endpoint::Named`] is refused with [`NetError::UnsupportedEndpoint`].
///
/// # Frame length
///
/// Frames in both directions are limited to [`DEFAULT_MAX_FRAME_BYTES`], or to
/// what [`max_frame_bytes`](Self::max_frame_bytes) sets. A longer frame from the
/// worker fails with [`NetError::FrameTooLarge`] as soon as its length prefix is
/// read, before any of it is buffered; a longer event fails with
/// [`NetError::EventTooLarge`] before anything is sent. Give the worker the same
/// limit (`--max-frame-bytes`).
///
/// # Handshake
///
/// A worker that has a secret opens every connection with a challenge; the
/// transport answers it with the [`WorkerSecret`] attached to the worker's
/// process ([`WorkerInfo::attachments`], where the process launcher puts the
/// secret of every launch) before it waits for the ready frame, so a pool of
/// launched workers needs no setting for it. The cost is one more round trip
/// per connection, none per event. A worker without a secret sends its ready
/// frame at once and is served as before.
///
/// # Multiplexing
///
/// By default every connection carries one event at a time, and a worker with
/// 1000 slots has 1000 sockets. [`multiplex`](Self::multiplex) turns on the
/// multiplexed mode (`docs/protocol.md`, "Multiplexing"): each slot's
/// connection is then a stream on one of a few physical connections per
/// worker, events and answers that are ready together share one system call,
/// and a call dropped midway is cancelled in the worker with a cancel frame.
/// A worker that does not speak it (it closes the connection when asked) is
/// served one event per connection, as before.
///
/// # Examples
///
/// A pool of the reference Python worker (it needs `python3`, so the example
/// is not run here; it needs the `process` feature too):
///
#[cfg_attr(feature = "process", doc = "```no_run")]
#[cfg_attr(not(feature = "process"), doc = "```ignore")]
/// use std::time::Duration;
/// use async_worker_pool::net::{Event, Reply, SocketTransport};
/// use async_worker_pool::{Pool, ProcessLauncher};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let launcher = ProcessLauncher::python_worker("echo:handler")
///     .handler_path("examples/handlers")
///     .connections(100)
///     .build()?;
/// let pool = Pool::builder(SocketTransport::new().max_frame_bytes(1 << 20), launcher)
///     .num_workers(2)
///     .max_connections(100)
///     .build()?;
/// pool.ready(Duration::from_secs(10)).await?;
/// match pool.dispatch(Event::plain("hello")).await? {
///     Reply::Returned { status, body, .. } => println!("{status}: {body:?}"),
///     other => println!("the handler did not return: {other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SocketTransport {
    max_frame_bytes: usize,
    /// Counted across clones: the pool's stats read them.
    websockets: Arc<WebSocketCounters>,
    /// The multiplexed mode's groups of physical connections, one group per
    /// worker process; `None` in the one-per-connection mode.
    multiplex: Option<Arc<Multiplexed>>,
}

/// The state of the multiplexed mode, shared by the clones of a transport.
#[derive(Debug)]
struct Multiplexed {
    per_worker: usize,
    groups: parking_lot::Mutex<HashMap<(String, u64), Arc<Group>>>,
}

impl Multiplexed {
    /// The group of the worker process at `endpoint` in its `generation`;
    /// groups of processes that are gone are dropped on the way.
    fn group(&self, endpoint: &Endpoint, generation: u64) -> Arc<Group> {
        let mut groups = self.groups.lock();
        let key = (endpoint.to_string(), generation);
        if let Some(group) = groups.get(&key) {
            return Arc::clone(group);
        }
        // A group nothing else holds (no stream, no connect under way) has
        // no live connection either: streams keep theirs alive.
        groups.retain(|_, group| Arc::strong_count(group) > 1);
        Arc::clone(groups.entry(key).or_default())
    }
}

/// Gives a claimed cancellation back if the connect that waits for it is
/// dropped, so that the next reconnect waits for it instead.
struct Claim<'a> {
    group: &'a Group,
    cancellation: Option<Cancellation>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(cancellation) = self.cancellation.take() {
            self.group.unclaim(cancellation);
        }
    }
}

impl Default for SocketTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl SocketTransport {
    /// A transport with the default maximum frame length.
    pub fn new() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            websockets: Arc::default(),
            multiplex: None,
        }
    }

    /// Turns on the multiplexed mode with `connections_per_worker` physical
    /// connections to each worker (at least 1), or, with 0, goes back to one
    /// connection per slot. See [Multiplexing](Self#multiplexing).
    ///
    /// In this mode [`Transport::connect`] opens a stream, not a socket; a
    /// call dropped midway sends a cancel frame, and the next connect to that
    /// worker waits for the worker to confirm it (bounded by the pool's
    /// `establish_connection_timeout`), so the worker never runs more events
    /// than the pool has slots. [`connect_endpoint`](Self::connect_endpoint)
    /// and the liveness probe always open a connection of their own.
    ///
    /// # Examples
    ///
    /// ```
    /// use async_worker_pool::net::SocketTransport;
    ///
    /// let transport = SocketTransport::new().multiplex(2);
    /// assert_eq!(transport.connections_per_worker(), Some(2));
    /// assert_eq!(transport.multiplex(0).connections_per_worker(), None);
    /// ```
    #[must_use]
    pub fn multiplex(mut self, connections_per_worker: usize) -> Self {
        self.multiplex = (connections_per_worker > 0).then(|| {
            Arc::new(Multiplexed {
                per_worker: connections_per_worker,
                groups: parking_lot::Mutex::default(),
            })
        });
        self
    }

    /// The physical connections per worker in the multiplexed mode, or
    /// `None` in the one-per-connection mode.
    pub fn connections_per_worker(&self) -> Option<usize> {
        self.multiplex
            .as_ref()
            .map(|multiplex| multiplex.per_worker)
    }

    /// Sets the maximum frame length, in bytes of payload (the 4-byte length
    /// prefix not counted). Values above `u32::MAX` are lowered to it, since the
    /// prefix cannot announce more.
    #[must_use]
    pub fn max_frame_bytes(mut self, limit: usize) -> Self {
        self.max_frame_bytes = limit.min(LARGEST_FRAME);
        self
    }

    /// The maximum frame length in force.
    pub fn frame_limit(&self) -> usize {
        self.max_frame_bytes
    }

    /// The codec that frames this transport's connections: a 4-byte big-endian
    /// length prefix and the maximum frame length in force.
    ///
    /// For the fuzz targets and the tests, which must decode exactly as a
    /// connection does; not part of the stable API.
    #[doc(hidden)]
    pub fn frame_codec(&self) -> LengthDelimitedCodec {
        LengthDelimitedCodec::builder()
            .length_field_length(4)
            .big_endian()
            .max_frame_length(self.max_frame_bytes)
            .new_codec()
    }

    /// Opens a connection to `endpoint` and resolves once the worker has sent a
    /// valid ready frame on it.
    ///
    /// This knows no secret: a worker that sends its ready frame at once,
    /// having none, is served; one that opens with a handshake challenge fails
    /// the connect with [`NetError::NoSecret`]. For such a worker, use
    /// [`connect_authenticated`](Self::connect_authenticated) with its secret,
    /// or [`Transport::connect`] with a [`WorkerInfo`] that carries it.
    ///
    /// # Errors
    ///
    /// [`NetError::UnsupportedEndpoint`] for an [`Endpoint::Named`];
    /// [`NetError::Io`] if the socket cannot be opened;
    /// [`NetError::ClosedBeforeReady`] if the worker closes it first;
    /// [`NetError::Handshake`] for a challenge this host cannot answer,
    /// [`NetError::NoSecret`] if the worker asks for a secret, and
    /// [`NetError::Rejected`] if the worker closes the connection after the
    /// answer; [`NetError::FrameTooLarge`] or [`NetError::NotReady`] if the
    /// worker's frame is not a valid ready frame.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes the half-open socket, and no
    /// event has been sent on it.
    pub async fn connect_endpoint(&self, endpoint: &Endpoint) -> Result<SocketConn, NetError> {
        self.open(endpoint, None).await.map(Direct::into_conn)
    }

    /// Like [`connect_endpoint`](Self::connect_endpoint), but answers a
    /// challenge with `secret`: for hosts with a launcher of their own that
    /// keep their workers' secrets themselves and connect without a pool.
    ///
    /// # Errors
    ///
    /// As [`connect_endpoint`](Self::connect_endpoint), without
    /// [`NetError::NoSecret`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes the half-open socket, and no
    /// event has been sent on it.
    pub async fn connect_authenticated(
        &self,
        endpoint: &Endpoint,
        secret: &WorkerSecret,
    ) -> Result<SocketConn, NetError> {
        self.open(endpoint, Some(secret))
            .await
            .map(Direct::into_conn)
    }

    async fn open(
        &self,
        endpoint: &Endpoint,
        secret: Option<&WorkerSecret>,
    ) -> Result<Direct, NetError> {
        let stream = match endpoint {
            Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await?;
                // One small frame per event each way: Nagle would only add latency.
                stream.set_nodelay(true)?;
                Stream::Tcp(stream)
            }
            Endpoint::Named(_) => return Err(NetError::UnsupportedEndpoint(endpoint.to_string())),
        };
        let limit = self.max_frame_bytes;
        let mut framed = Framed::new(stream, self.frame_codec());
        let mut frame = match framed.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Err(read_error(err, limit, NetError::ClosedBeforeReady)),
            None => return Err(NetError::ClosedBeforeReady),
        };
        if frame.first() == Some(&CHALLENGE) {
            let challenge = Challenge::decode(&frame).map_err(NetError::Handshake)?;
            let Some(secret) = secret else {
                return Err(NetError::NoSecret {
                    endpoint: endpoint.to_string(),
                });
            };
            let buffer = framed.write_buffer_mut();
            let start = buffer.len();
            buffer.put_u32(0);
            challenge.encode_answer(secret, buffer);
            let answer_len = u32::try_from(buffer.len() - start - PREFIX_LEN).unwrap_or(u32::MAX);
            buffer[start..start + PREFIX_LEN].copy_from_slice(&answer_len.to_be_bytes());
            SinkExt::<Bytes>::flush(&mut framed)
                .await
                .map_err(|err| closed_or_io(err, NetError::Rejected))?;
            frame = match framed.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => return Err(read_error(err, limit, NetError::Rejected)),
                None => return Err(NetError::Rejected),
            };
        }
        let ready = Ready::decode(&frame).map_err(NetError::NotReady)?;
        tracing::debug!(
            %endpoint,
            pid = ready.pid(),
            worker_id = ready.worker_id(),
            authenticated = secret.is_some(),
            "connected to worker"
        );
        Ok(Direct {
            framed,
            ready,
            limit,
            usable: true,
            last_used: Instant::now(),
            websockets: Arc::clone(&self.websockets),
        })
    }
}

impl SocketTransport {
    /// A connection of its own to `worker`, answering its challenge with the
    /// secret its launcher attached, if any.
    async fn connect_direct(&self, worker: &WorkerInfo) -> Result<SocketConn, NetError> {
        let secret = worker.attachments.get::<WorkerSecret>();
        self.open(&worker.endpoint, secret)
            .await
            .map(Direct::into_conn)
    }

    /// A stream to `worker` in the multiplexed mode: on the least loaded of
    /// its physical connections, once as many are open as configured, after
    /// waiting for one unconfirmed cancellation to that worker, if any.
    async fn connect_stream(
        &self,
        multiplex: &Multiplexed,
        worker: &WorkerInfo,
    ) -> Result<SocketConn, NetError> {
        let endpoint = &worker.endpoint;
        let group = multiplex.group(endpoint, worker.generation);
        if group.refused() {
            return self.connect_direct(worker).await;
        }
        let mut claim = Claim {
            group: &group,
            cancellation: group.claim_cancellation(),
        };
        if let Some(cancellation) = claim.cancellation.as_mut() {
            // A dropped sender means the physical connection is gone, and the
            // worker cancels what ran on it. A worker that never confirms
            // holds this connect up until the pool's establish timeout; the
            // cancellation then waits for the slot's next attempt.
            let _ = (&mut cancellation.confirmed).await;
        }
        // Held until the stream is open: the cancelled stream may have been
        // the last on its connection, which the new stream should reuse.
        let _cancelled_on = claim.cancellation.take().map(|done| done.physical);
        let limit = self.max_frame_bytes;
        let stream = |physical| SocketConn {
            inner: Inner::Stream(MuxStream::open(
                physical,
                Arc::clone(&group),
                limit,
                Arc::clone(&self.websockets),
            )),
        };
        if let Some(physical) = group.pick(multiplex.per_worker) {
            return Ok(stream(physical));
        }
        let _opening = group.opening.lock().await;
        if let Some(physical) = group.pick(multiplex.per_worker) {
            return Ok(stream(physical));
        }
        match self.open_physical(worker).await? {
            Some(physical) => {
                group.add(&physical);
                Ok(stream(physical))
            }
            None => {
                tracing::info!(%endpoint, "the worker does not multiplex; one event per connection");
                group.refuse();
                self.connect_direct(worker).await
            }
        }
    }

    /// Opens a connection, asks the worker to multiplex it, and starts its
    /// reader and writer; `None` if the worker closed the connection or
    /// answered anything but an acknowledgement.
    async fn open_physical(&self, worker: &WorkerInfo) -> Result<Option<Arc<Physical>>, NetError> {
        let endpoint = &worker.endpoint;
        let Direct {
            mut framed, ready, ..
        } = self
            .open(endpoint, worker.attachments.get::<WorkerSecret>())
            .await?;
        framed
            .send(mux::multiplex_request())
            .await
            .map_err(|err| closed_or_io(err, NetError::Closed))?;
        let ack = match framed.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => match read_error(err, self.max_frame_bytes, NetError::Closed) {
                NetError::Closed => return Ok(None),
                error => return Err(error),
            },
            None => return Ok(None),
        };
        if let Err(error) = mux::check_multiplex_ack(&ack) {
            // Not an acknowledgement: a worker from before multiplexing that
            // took `M` for an event, say. Serve it one event per connection.
            tracing::debug!(%endpoint, %error, "the worker did not acknowledge multiplexing");
            return Ok(None);
        }
        let parts = framed.into_parts();
        let (read, write) = parts.io.into_split();
        tracing::debug!(%endpoint, pid = ready.pid(), "multiplexed connection opened");
        Ok(Some(Physical::start(
            read,
            write,
            parts.read_buf,
            self.frame_codec(),
            self.max_frame_bytes,
            ready,
        )))
    }
}

#[async_trait]
impl Transport for SocketTransport {
    type Conn = SocketConn;
    type Request = Event;
    type Response = Reply;
    type Error = NetError;

    /// Connects to `worker.endpoint` and answers a handshake challenge with
    /// the [`WorkerSecret`] attached to the worker's process
    /// ([`WorkerInfo::attachments`]); see
    /// [`SocketTransport::connect_authenticated`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes the half-open socket.
    async fn connect(&self, worker: &WorkerInfo) -> Result<SocketConn, NetError> {
        match &self.multiplex {
            None => self.connect_direct(worker).await,
            Some(multiplex) => self.connect_stream(multiplex, worker).await,
        }
    }

    /// Opens a connection of its own and waits for the worker's ready frame,
    /// in either mode: only a running event loop writes it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes the half-open socket.
    async fn probe(&self, worker: &WorkerInfo) -> Result<(), NetError> {
        self.connect_direct(worker).await.map(drop)
    }

    /// Sends `event` and reads its answer; see [`SocketConn::call`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a dropped call leaves the connection unusable.
    async fn call(&self, conn: &mut SocketConn, event: Event) -> Result<Reply, NetError> {
        conn.call(&event).await
    }

    /// A connection idle for a second or more is broken if the worker closed it
    /// or sent something unasked meanwhile (one non-blocking read); one used
    /// more recently is trusted.
    ///
    /// A stream of the multiplexed mode is broken once its physical
    /// connection is.
    fn is_broken(&self, conn: &mut SocketConn) -> bool {
        match &mut conn.inner {
            Inner::Direct(direct) => {
                direct.last_used.elapsed() >= IDLE_CHECK_AFTER
                    && (!direct.framed.read_buffer().is_empty()
                        || direct.framed.get_ref().closed_or_readable())
            }
            Inner::Stream(stream) => stream.is_broken(),
        }
    }

    /// [`NetError::EventTooLarge`], [`NetError::WebSocketUnsupported`] and
    /// [`NetError::WebSocketLinkUsed`] are refused before a byte is sent.
    fn is_unsent(&self, error: &NetError) -> bool {
        matches!(
            error,
            NetError::EventTooLarge { .. }
                | NetError::WebSocketUnsupported
                | NetError::WebSocketLinkUsed
        )
    }

    /// A WebSocket event ([`Event::websocket`]) lasts as long as its client.
    fn is_long_lived(&self, request: &Event) -> bool {
        request.is_websocket()
    }

    /// Counted by every clone of this transport.
    fn websocket_stats(&self) -> WebSocketStats {
        self.websockets.snapshot()
    }

    fn is_disconnect(&self, error: &NetError) -> bool {
        match error {
            NetError::Closed | NetError::ClosedBeforeReady | NetError::Rejected => true,
            NetError::Io(io) => crate::transport::is_disconnect_io(io),
            _ => false,
        }
    }
}

/// One open connection to a worker, ready for events. Dropping it closes it.
///
/// In the multiplexed mode ([`SocketTransport::multiplex`]) it is a stream on a
/// physical connection shared with other slots; dropping it closes the stream,
/// and the physical connection once its last stream is gone.
#[derive(Debug)]
pub struct SocketConn {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// Boxed: a stream is a few pointers, a direct connection its codec's
    /// buffers; one allocation per connect costs nothing per event.
    Direct(Box<Direct>),
    Stream(MuxStream),
}

/// A connection that carries one event at a time.
#[derive(Debug)]
struct Direct {
    framed: Framed<Stream, LengthDelimitedCodec>,
    ready: Ready,
    limit: usize,
    /// False from the start of an exchange until it finishes cleanly.
    usable: bool,
    /// When it was connected or last finished an exchange.
    last_used: Instant,
    websockets: Arc<WebSocketCounters>,
}

impl SocketConn {
    /// The ready frame the worker sent when the connection opened (in the
    /// multiplexed mode, when the physical connection opened).
    pub fn ready(&self) -> Ready {
        match &self.inner {
            Inner::Direct(direct) => direct.ready,
            Inner::Stream(stream) => stream.ready(),
        }
    }

    /// Whether the connection can carry another event: false once an exchange
    /// failed or was dropped before it finished (in the multiplexed mode, also
    /// once the physical connection broke).
    pub fn is_usable(&self) -> bool {
        match &self.inner {
            Inner::Direct(direct) => direct.usable,
            Inner::Stream(stream) => stream.is_usable(),
        }
    }

    /// Whether it is a stream of the multiplexed mode.
    pub fn is_multiplexed(&self) -> bool {
        matches!(self.inner, Inner::Stream(_))
    }

    /// Sends one event and reads its answer: one frame, or for an event with a
    /// [`ResponseSink`](super::ResponseSink) that the worker streams, a head, body chunks and an end,
    /// each forwarded into the sink as it arrives.
    ///
    /// An [`Reply::Raised`] answer is `Ok`: the handler failed, the connection
    /// did not. A streamed answer returns [`Reply::Streamed`] once its last
    /// frame has arrived and [`ResponsePart::End`](super::ResponsePart::End) is in the sink; an `X` after
    /// the head returns [`Reply::Raised`], with no `End` in the sink.
    ///
    /// # Errors
    ///
    /// [`NetError::EventTooLarge`] before sending (the connection stays usable);
    /// after that, [`NetError::Closed`] if the worker closes the connection
    /// before answering, [`NetError::FrameTooLarge`], [`NetError::Protocol`],
    /// [`NetError::Io`], and [`NetError::Unusable`] if an earlier exchange on
    /// this connection did not finish; for a streamed answer,
    /// [`NetError::StreamAbandoned`] if the sink's reader is gone and
    /// [`NetError::StreamOrder`] for frames out of order. After any of these
    /// but the first the connection is unusable.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if the future is dropped before it completes, the event
    /// may be half written or its answer still on its way, so the connection
    /// becomes unusable and every later call fails with [`NetError::Unusable`].
    /// The pool drops such a connection and opens a new one. In the
    /// multiplexed mode the dropped call also sends a cancel frame, so that
    /// the worker cancels the event.
    pub async fn call(&mut self, event: &Event) -> Result<Reply, NetError> {
        match &mut self.inner {
            Inner::Direct(direct) => direct.call(event).await,
            Inner::Stream(stream) => stream.call(event).await,
        }
    }
}

impl Direct {
    fn into_conn(self) -> SocketConn {
        SocketConn {
            inner: Inner::Direct(Box::new(self)),
        }
    }

    async fn call(&mut self, event: &Event) -> Result<Reply, NetError> {
        if !self.usable {
            return Err(NetError::Unusable);
        }
        // Refused before anything is sent, so the connection stays usable.
        let websocket = match event.websocket_link() {
            None => None,
            Some(_) if self.ready.websocket_version().is_none() => {
                return Err(NetError::WebSocketUnsupported);
            }
            Some(link) => Some(link.take().ok_or(NetError::WebSocketLinkUsed)?),
        };
        // Refuse an oversized body before copying it.
        let at_least = event.body().len().saturating_add(5);
        if at_least > self.limit {
            return Err(NetError::EventTooLarge {
                len: at_least,
                limit: self.limit,
            });
        }
        // Encode the frame straight into the codec's write buffer, so that the
        // body is copied once on its way to the socket instead of twice. The
        // buffer is empty here: every exchange that got this far flushed it, and
        // one that did not left the connection unusable.
        let buffer = self.framed.write_buffer_mut();
        let start = buffer.len();
        buffer.put_u32(0); // the length prefix, patched once the payload is known
        event.encode(buffer);
        let payload_len = buffer.len() - start - PREFIX_LEN;
        if payload_len > self.limit {
            buffer.truncate(start);
            return Err(NetError::EventTooLarge {
                len: payload_len,
                limit: self.limit,
            });
        }
        // Within the limit, which is at most `u32::MAX`.
        let prefix = u32::try_from(payload_len).unwrap_or(u32::MAX).to_be_bytes();
        buffer[start..start + PREFIX_LEN].copy_from_slice(&prefix);
        // Armed before the first await: a call dropped midway leaves it unusable.
        self.usable = false;
        SinkExt::<Bytes>::flush(&mut self.framed)
            .await
            .map_err(|err| closed_or_io(err, NetError::Closed))?;
        let reply = match (websocket, event.sink()) {
            (Some(ends), _) => {
                let counters = Arc::clone(&self.websockets);
                websocket::exchange(self, ends, &counters).await?
            }
            (None, None) => Reply::decode(self.next_frame().await?)?,
            (None, Some(sink)) => read_streamed(self, sink).await?,
        };
        self.usable = true;
        self.last_used = Instant::now();
        Ok(reply)
    }

    async fn next_frame(&mut self) -> Result<Bytes, NetError> {
        match self.framed.next().await {
            Some(Ok(frame)) => Ok(frame.freeze()),
            Some(Err(err)) => Err(read_error(err, self.limit, NetError::Closed)),
            None => Err(NetError::Closed),
        }
    }
}

/// A WebSocket exchange on a connection of its own: the codec frames both ways.
impl Wire for Direct {
    fn next_frame(&mut self) -> impl Future<Output = Result<Bytes, NetError>> + Send {
        Direct::next_frame(self)
    }

    async fn send_frame(&mut self, envelope: Bytes) -> Result<(), NetError> {
        self.framed
            .send(envelope)
            .await
            .map_err(|err| closed_or_io(err, NetError::Closed))
    }
}

impl AnswerFrames for Direct {
    fn next_answer_frame(&mut self) -> impl Future<Output = Result<Bytes, NetError>> + Send {
        self.next_frame()
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;
    use crate::net::{ResponsePart, ResponseSink};
    use crate::worker::WorkerId;

    fn frame(kind: u8, meta: &str, body: &[u8]) -> Vec<u8> {
        let payload_len = 5 + meta.len() + body.len();
        let mut out = Vec::with_capacity(4 + payload_len);
        out.extend_from_slice(&(payload_len as u32).to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(meta.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn connect_through_the_transport_trait_uses_the_worker_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream
                .write_all(&frame(b'R', r#"{"pid":42,"worker_id":3}"#, b""))
                .await
                .unwrap();
            let mut len = [0; 4];
            stream.read_exact(&mut len).await.unwrap();
            let mut payload = vec![0; u32::from_be_bytes(len) as usize];
            stream.read_exact(&mut payload).await.unwrap();
            // Answer with the event body, which follows the `{}` meta.
            stream
                .write_all(&frame(b'O', "{}", &payload[7..]))
                .await
                .unwrap();
        });
        let worker = WorkerInfo::new(WorkerId::new(3), 1, Endpoint::Unix(path), Some(42));
        let transport = SocketTransport::new();
        let mut conn = transport.connect(&worker).await.unwrap();
        assert_eq!(conn.ready().pid(), 42);
        assert_eq!(conn.ready().worker_id(), 3);
        let reply = transport
            .call(&mut conn, Event::plain("ping"))
            .await
            .unwrap();
        assert!(matches!(reply, Reply::Returned { status: 200, ref body, .. } if body == "ping"));
        server.await.unwrap();
    }

    /// A worker on a Unix socket that answers the first event with `frames`
    /// (each written and flushed on its own, `gap` apart) and returns the
    /// event's payload.
    async fn streaming_worker(
        frames: Vec<Vec<u8>>,
        gap: std::time::Duration,
    ) -> (
        SocketConn,
        tokio::task::JoinHandle<Vec<u8>>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream
                .write_all(&frame(b'R', r#"{"pid":1,"worker_id":0}"#, b""))
                .await
                .unwrap();
            let mut len = [0; 4];
            stream.read_exact(&mut len).await.unwrap();
            let mut payload = vec![0; u32::from_be_bytes(len) as usize];
            stream.read_exact(&mut payload).await.unwrap();
            for bytes in frames {
                // The reader may be gone in the tests that drop it.
                if stream.write_all(&bytes).await.is_err() {
                    break;
                }
                tokio::time::sleep(gap).await;
            }
            payload
        });
        let conn = SocketTransport::new()
            .connect_endpoint(&Endpoint::Unix(path))
            .await
            .unwrap();
        (conn, server, dir)
    }

    #[tokio::test]
    async fn a_streamed_answer_reaches_the_sink_part_by_part() {
        let frames = vec![
            frame(b'H', r#"{"status":206,"headers":[["a","1"]]}"#, b"one "),
            frame(b'B', "{}", b""),
            frame(b'B', "{}", b"two "),
            frame(b'D', "{}", b"three"),
        ];
        let (mut conn, server, _dir) = streaming_worker(frames, Duration::ZERO).await;
        let (sink, mut parts) = ResponseSink::channel(1);
        let event = Event::http("GET", "/s", vec![], "").with_response_sink(sink);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(part) = parts.recv().await {
                got.push(part);
            }
            got
        });
        let reply = conn.call(&event).await.unwrap();
        assert_eq!(
            reply,
            Reply::Streamed {
                status: 206,
                body_bytes: 13
            }
        );
        assert!(conn.is_usable());
        drop(event);
        assert_eq!(
            reader.await.unwrap(),
            [
                ResponsePart::Head {
                    status: 206,
                    headers: vec![("a".into(), "1".into())]
                },
                ResponsePart::Chunk(Bytes::from_static(b"one ")),
                ResponsePart::Chunk(Bytes::from_static(b"two ")),
                ResponsePart::Chunk(Bytes::from_static(b"three")),
                ResponsePart::End,
            ]
        );
        let payload = server.await.unwrap();
        assert!(String::from_utf8_lossy(&payload).contains(r#""stream":true"#));
    }

    #[tokio::test]
    async fn a_whole_answer_to_a_streamed_event_leaves_the_sink_empty() {
        let (mut conn, _server, _dir) =
            streaming_worker(vec![frame(b'O', "{}", b"all")], Duration::ZERO).await;
        let (sink, mut parts) = ResponseSink::channel(1);
        let event = Event::plain("x").with_response_sink(sink);
        let reply = conn.call(&event).await.unwrap();
        assert!(matches!(reply, Reply::Returned { ref body, .. } if body == "all"));
        drop(event);
        assert_eq!(parts.recv().await, None);
    }

    #[tokio::test]
    async fn a_raise_after_the_head_is_a_cut_stream_without_end() {
        let frames = vec![
            frame(b'H', "{}", b"part"),
            frame(b'X', r#"{"type":"ValueError","message":"m"}"#, b"tb"),
        ];
        let (mut conn, _server, _dir) = streaming_worker(frames, Duration::ZERO).await;
        let (sink, mut parts) = ResponseSink::channel(8);
        let event = Event::http("GET", "/", vec![], "").with_response_sink(sink);
        let reply = conn.call(&event).await.unwrap();
        assert!(matches!(reply, Reply::Raised { ref message, .. } if message == "m"));
        drop(event);
        let mut got = Vec::new();
        while let Some(part) = parts.recv().await {
            got.push(part);
        }
        assert_eq!(got.len(), 2);
        assert!(!got.contains(&ResponsePart::End));
    }

    #[tokio::test]
    async fn frames_out_of_order_break_the_connection() {
        for frames in [
            vec![frame(b'B', "{}", b"x")],
            vec![frame(b'D', "{}", b"x")],
            vec![frame(b'H', "{}", b""), frame(b'O', "{}", b"")],
            vec![frame(b'H', "{}", b""), frame(b'H', "{}", b"")],
        ] {
            let (mut conn, _server, _dir) = streaming_worker(frames, Duration::ZERO).await;
            let (sink, _parts) = ResponseSink::channel(8);
            let event = Event::http("GET", "/", vec![], "").with_response_sink(sink);
            let error = conn.call(&event).await.unwrap_err();
            assert!(matches!(error, NetError::StreamOrder(_)), "{error:?}");
            assert!(!conn.is_usable());
        }
    }

    #[tokio::test]
    async fn stream_frames_without_a_sink_are_a_protocol_error() {
        let (mut conn, _server, _dir) =
            streaming_worker(vec![frame(b'H', "{}", b"")], Duration::ZERO).await;
        let error = conn.call(&Event::plain("x")).await.unwrap_err();
        assert!(matches!(
            error,
            NetError::Protocol(crate::net::ProtocolError::UnexpectedKind { kind: b'H', .. })
        ));
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_fails_the_call_and_the_connection() {
        let frames = vec![
            frame(b'H', "{}", b"first"),
            frame(b'B', "{}", b"second"),
            frame(b'D', "{}", b""),
        ];
        let (mut conn, _server, _dir) = streaming_worker(frames, Duration::from_millis(20)).await;
        let (sink, mut parts) = ResponseSink::channel(1);
        let event = Event::http("GET", "/", vec![], "").with_response_sink(sink);
        let reader = async move {
            // Takes the head and leaves.
            assert!(matches!(
                parts.recv().await,
                Some(ResponsePart::Head { .. })
            ));
        };
        let (result, ()) = tokio::join!(conn.call(&event), reader);
        assert!(
            matches!(result, Err(NetError::StreamAbandoned)),
            "{result:?}"
        );
        assert!(!conn.is_usable());
    }

    #[tokio::test]
    async fn named_endpoint_is_unsupported() {
        let err = SocketTransport::new()
            .connect_endpoint(&Endpoint::Named("in-process/0".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::UnsupportedEndpoint(name) if name == "in-process/0"));
    }

    #[test]
    fn frame_limit_defaults_to_16_mib_and_is_capped_at_u32_max() {
        assert_eq!(SocketTransport::new().frame_limit(), 16 * 1024 * 1024);
        assert_eq!(
            SocketTransport::default().frame_limit(),
            DEFAULT_MAX_FRAME_BYTES
        );
        assert_eq!(
            SocketTransport::new().max_frame_bytes(1024).frame_limit(),
            1024
        );
        assert_eq!(
            SocketTransport::new()
                .max_frame_bytes(usize::MAX)
                .frame_limit(),
            u32::MAX as usize
        );
    }

    #[test]
    fn eof_inside_a_frame_counts_as_closed() {
        let err = io::Error::other("bytes remaining on stream");
        assert!(matches!(
            read_error(err, 10, NetError::Closed),
            NetError::Closed
        ));
        let err = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(matches!(
            read_error(err, 10, NetError::Closed),
            NetError::Io(_)
        ));
    }
}
