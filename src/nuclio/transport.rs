//! [`NuclioTransport`]: the [`Transport`] that speaks the async wrapper's
//! protocol, and [`NuclioConn`], one connection it opened.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::durations::HandlerDurations;
use super::endpoint::{EndpointState, EndpointTable};
use super::error::NuclioError;
use super::event::NuclioEvent;
use super::packet::{self, Packet};
use super::response::{self, NuclioBody, NuclioResponse, WireResponse, decode_base64};
use super::socket::{Started, next_line, open};
use crate::endpoint::Endpoint;
use crate::transport::Transport;
use crate::worker::{WorkerId, WorkerInfo};

/// The maximum line length unless [`NuclioTransport::max_line_bytes`] says
/// otherwise: 16 MiB, room for a 12 MiB body in base64.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The maximum encoded event unless [`NuclioTransport::max_event_bytes`] says
/// otherwise: 16 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The maximum streamed body unless [`NuclioTransport::max_stream_bytes`] says
/// otherwise: 64 MiB.
pub const DEFAULT_MAX_STREAM_BYTES: usize = 64 * 1024 * 1024;

/// A [`Transport`] to Nuclio's Python async wrapper over TCP.
///
/// Each connection waits for the wrapper's `s` packet before it counts as
/// ready. Connections to one wrapper are opened one at a time: a connection
/// opens its socket only when the one before it has been accepted. Nuclio's
/// early-2025 wrapper accepts about one connection per 0.2 s and exits when
/// any connection closes, even one it has not accepted yet; so a connect that
/// is given up while it waits for its turn must not have a socket to close.
///
/// An event goes out as a 4-byte big-endian length and a msgpack map;
/// the answer comes back as lines: `l` log records are forwarded to `tracing`
/// (target `async_worker_pool::nuclio::handler`, field `worker`, at the record's
/// level), `m` metrics are added to [`handler_durations`](Self::handler_durations),
/// and the `r` response, or a streamed `c`, `b`…, `e` response, is returned.
/// A batch response (an `r` packet holding a list, as the wrapper sends when
/// the handler returns one) is returned as its first response, with the whole
/// list in [`NuclioResponse::batch`].
///
/// # Delayed acknowledgements
///
/// The wrapper writes its `m` and `r` packets in two sends on a socket without
/// `TCP_NODELAY`, so Nagle's algorithm holds `r` back until `m` is
/// acknowledged, and a receiver that delays its acknowledgement (Linux does,
/// up to 40 ms, once a connection looks interactive) delays every answer by
/// that much. On Linux the transport therefore acknowledges at once
/// (`TCP_QUICKACK`) whenever it has read a packet that is not the end of the
/// answer and nothing more is buffered.
///
/// # Limits
///
/// No line the wrapper sends may be longer than
/// [`max_line_bytes`](Self::max_line_bytes), no event longer than
/// [`max_event_bytes`](Self::max_event_bytes), and no streamed body longer than
/// [`max_stream_bytes`](Self::max_stream_bytes); beyond them the exchange fails
/// with a typed error before more is buffered.
///
/// Clones share the duration counters.
#[derive(Debug, Clone)]
pub struct NuclioTransport {
    max_line_bytes: usize,
    max_event_bytes: usize,
    max_stream_bytes: usize,
    refused_retry: Duration,
    durations: HandlerDurations,
    /// For connects to a bare address (`connect_endpoint`); a pool's connects
    /// find the wrapper's state attached to its handle.
    endpoints: EndpointTable,
}

impl Default for NuclioTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl NuclioTransport {
    /// A transport with the default limits.
    pub fn new() -> Self {
        Self {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_stream_bytes: DEFAULT_MAX_STREAM_BYTES,
            refused_retry: Duration::from_secs(5),
            durations: HandlerDurations::default(),
            endpoints: EndpointTable::default(),
        }
    }

    /// Sets the longest line accepted from the wrapper, newline not counted.
    #[must_use]
    pub fn max_line_bytes(mut self, limit: usize) -> Self {
        self.max_line_bytes = limit;
        self
    }

    /// Sets the longest encoded event (the msgpack map) sent to the wrapper.
    #[must_use]
    pub fn max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit.min(u32::MAX as usize);
        self
    }

    /// Sets the longest streamed response body, all chunks together.
    #[must_use]
    pub fn max_stream_bytes(mut self, limit: usize) -> Self {
        self.max_stream_bytes = limit;
        self
    }

    /// How long a refused connection is retried; default 5 s. The wrapper starts
    /// to listen only after it has reported `wrapperInitialized`, so the first
    /// connections can come a moment too early.
    #[must_use]
    pub fn refused_retry(mut self, window: Duration) -> Self {
        self.refused_retry = window;
        self
    }

    /// The handler durations reported in `m` packets on this transport's
    /// connections (and its clones'), live.
    pub fn handler_durations(&self) -> HandlerDurations {
        self.durations.clone()
    }

    /// Opens a connection to `endpoint` for `worker` and resolves once the
    /// wrapper has sent `s` on it.
    ///
    /// [`Transport::connect`] does the same for a [`WorkerInfo`]; this is for
    /// hosts (and tests) that drive a wrapper without a pool. Its connections
    /// to one address take turns with this transport's (and its clones')
    /// other connects to that address only; [`Transport::connect`] with the
    /// wrapper's attachments ([`WorkerProcess::attachments`](crate::WorkerProcess::attachments)
    /// of its [`NuclioWorker`](super::NuclioWorker)) shares the wrapper's own
    /// state, so that its handle counts the events in flight when it drains.
    ///
    /// # Errors
    ///
    /// [`NuclioError::UnsupportedEndpoint`] unless `endpoint` is TCP;
    /// [`NuclioError::Io`] if the socket cannot be opened;
    /// [`NuclioError::ClosedBeforeReady`] or [`NuclioError::NotReady`] if the
    /// wrapper does not start with `s`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing has been sent when it is dropped. A socket it has
    /// opened stays open until the wrapper has started the connection, which
    /// then goes to the next connect to the same wrapper.
    pub async fn connect_endpoint(
        &self,
        endpoint: &Endpoint,
        worker: WorkerId,
    ) -> Result<NuclioConn, NuclioError> {
        let Endpoint::Tcp(addr) = endpoint else {
            return Err(NuclioError::UnsupportedEndpoint(endpoint.to_string()));
        };
        let endpoint_state = self.endpoints.of(*addr);
        self.connect_to(*addr, endpoint_state, worker).await
    }

    /// Opens a connection to the wrapper at `addr`, whose shared state is
    /// `endpoint_state`, in its turn.
    async fn connect_to(
        &self,
        addr: SocketAddr,
        endpoint_state: Arc<EndpointState>,
        worker: WorkerId,
    ) -> Result<NuclioConn, NuclioError> {
        let turn = endpoint_state.accept_turn().await;
        let started = match endpoint_state.take_stashed() {
            Some(started) => started,
            None => {
                // The socket is opened by a task of its own, which outlives this
                // future: a connect given up while the wrapper has not accepted
                // yet leaves the socket open and its connection to the next one.
                let (sender, receiver) = oneshot::channel();
                let stash = endpoint_state.clone();
                let (limit, refused_retry) = (self.max_line_bytes, self.refused_retry);
                tokio::spawn(async move {
                    if let Err(Ok(started)) = sender.send(open(addr, limit, refused_retry).await) {
                        stash.stash(started);
                    }
                });
                receiver
                    .await
                    .map_err(|_| NuclioError::ClosedBeforeReady)??
            }
        };
        drop(turn);
        Ok(NuclioConn {
            io: Some(started),
            worker,
            scratch: Vec::new(),
            state: ConnState::Ready,
            endpoint: endpoint_state,
        })
    }

    /// Sends `event` on `conn` and reads its answer; see [`Transport::call`].
    async fn exchange(
        &self,
        conn: &mut NuclioConn,
        event: &NuclioEvent,
    ) -> Result<NuclioResponse, NuclioError> {
        conn.scratch.clear();
        event.encode(&mut conn.scratch, self.max_event_bytes)?;
        let io = conn.io.as_mut().ok_or(NuclioError::Unusable)?;
        io.write.write_all(&conn.scratch).await?;
        conn.state = ConnState::Sent;
        // Give back a large event's buffer; small ones keep theirs for the next.
        if conn.scratch.capacity() > 64 * 1024 {
            conn.scratch = Vec::new();
        }
        let mut stream: Option<(NuclioResponse, Vec<bytes::Bytes>, usize)> = None;
        loop {
            let Some(line) = conn.next_line().await? else {
                return Err(NuclioError::Closed);
            };
            let packet = Packet::parse(&line)?;
            match (packet, &mut stream) {
                (Packet::Log(text), _) => {
                    packet::forward_log(conn.worker, text)?;
                    conn.acknowledge_now();
                }
                (Packet::Metric(text), _) => {
                    if let Some(duration) = packet::metric_duration(text)? {
                        self.durations.record(duration);
                    }
                    conn.acknowledge_now();
                }
                (Packet::Response(text), None) => return response::parse_r(text),
                (Packet::StreamStart(text), None) => {
                    let wire: WireResponse = packet::json('c', text)?;
                    let (response, first) = wire.into_parts()?;
                    conn.acknowledge_now();
                    let len = first.len();
                    self.check_stream(len)?;
                    stream = Some((response, vec![first], len));
                }
                (Packet::Chunk(text), Some((_, chunks, len))) => {
                    let chunk = decode_base64(text)?;
                    *len += chunk.len();
                    self.check_stream(*len)?;
                    chunks.push(chunk);
                    conn.acknowledge_now();
                }
                (Packet::End, Some(_)) => {
                    let (mut response, chunks, _) = stream
                        .take()
                        .unwrap_or_else(|| unreachable!("matched Some just above"));
                    response.body = NuclioBody::Streamed(chunks);
                    return Ok(response);
                }
                (other, None) => {
                    return Err(NuclioError::UnexpectedPacket {
                        kind: other.kind(),
                        expected: "`l`, `m`, `r` or `c`",
                    });
                }
                (other, Some(_)) => {
                    return Err(NuclioError::UnexpectedPacket {
                        kind: other.kind(),
                        expected: "`l`, `m`, `b` or `e` in a streamed response",
                    });
                }
            }
        }
    }

    fn check_stream(&self, len: usize) -> Result<(), NuclioError> {
        if len > self.max_stream_bytes {
            return Err(NuclioError::StreamTooLarge {
                limit: self.max_stream_bytes,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for NuclioTransport {
    type Conn = NuclioConn;
    type Request = NuclioEvent;
    type Response = NuclioResponse;
    type Error = NuclioError;

    /// Connects to `worker.endpoint`; see [`NuclioTransport::connect_endpoint`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; see [`NuclioTransport::connect_endpoint`].
    async fn connect(&self, worker: &WorkerInfo) -> Result<NuclioConn, NuclioError> {
        match (
            &worker.endpoint,
            worker.attachments.get::<Arc<EndpointState>>(),
        ) {
            (Endpoint::Tcp(addr), Some(state)) => {
                self.connect_to(*addr, state.clone(), worker.id).await
            }
            _ => self.connect_endpoint(&worker.endpoint, worker.id).await,
        }
    }

    /// Sends `event` and reads every packet up to its response; see
    /// [`NuclioConn::call`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a dropped call leaves the connection unusable.
    async fn call(
        &self,
        conn: &mut NuclioConn,
        event: NuclioEvent,
    ) -> Result<NuclioResponse, NuclioError> {
        conn.call(self, &event).await
    }

    /// Answers `Ok` at once: Nuclio's wrapper offers no probe it tolerates.
    ///
    /// It writes its `s` packet from its event loop, so a fresh connection
    /// would be a true probe, but the early-2025 wrapper exits when any of its
    /// connections closes, and it accepts about one connection per 0.2 s, so a
    /// probe would also queue behind a start-up's connects. In Nuclio mode a
    /// blocked wrapper is therefore found as in Nuclio itself: its events time
    /// out, their reconnects fail, and the reconnect ladder restarts it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it does nothing.
    async fn probe(&self, worker: &WorkerInfo) -> Result<(), NuclioError> {
        let _ = worker;
        Ok(())
    }

    fn is_disconnect(&self, error: &NuclioError) -> bool {
        match error {
            NuclioError::Closed | NuclioError::ClosedBeforeReady => true,
            NuclioError::Io(io) => crate::transport::is_disconnect_io(io),
            _ => false,
        }
    }
}

/// One open connection to a wrapper, ready for events.
///
/// Dropping it closes it, with one exception: dropped after its event was sent
/// whole and before the answer came (the event timed out, or its caller went
/// away), it stays open until the late answer has been read to its end, then
/// goes, in step again, to the next connect to the same wrapper. Nuclio's
/// early-2025 wrapper exits when any of its connections closes, so closing it
/// would restart the worker and fail every other event on it. It counts as an
/// event in flight meanwhile. Anything unexpected closes it.
#[derive(Debug)]
pub struct NuclioConn {
    /// The socket; taken only by `Drop`.
    io: Option<Started>,
    worker: WorkerId,
    /// Where events are encoded.
    scratch: Vec<u8>,
    state: ConnState,
    /// Shared with the wrapper's other connections and its launcher.
    endpoint: Arc<EndpointState>,
}

/// Where a connection is in its exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Ready for an event.
    Ready,
    /// An event is being sent.
    Sending,
    /// An event has been sent whole; its answer is being read.
    Sent,
    /// An exchange failed: the connection is out of step or gone.
    Failed,
}

impl Drop for NuclioConn {
    /// A connection dropped while its event's answer is still to come (the
    /// event timed out, or its caller went away) is not closed at once: Nuclio's
    /// early-2025 wrapper exits when any connection closes. A task reads the
    /// late answer to its end and then leaves the connection, in step again,
    /// for the next connect to the wrapper; it counts as an event in flight
    /// until then. Anything unexpected on the way closes it.
    fn drop(&mut self) {
        if self.state != ConnState::Sent {
            return;
        }
        let (Some(io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let endpoint = self.endpoint.clone();
        let in_flight = endpoint.event_in_flight();
        let worker = self.worker;
        runtime.spawn(async move {
            if let Some(io) = read_late_answer(io, worker).await {
                endpoint.stash(io);
            }
            drop(in_flight);
        });
    }
}

/// Reads the rest of an answer nobody waits for; the connection if it ended
/// cleanly, with nothing after it.
async fn read_late_answer(mut io: Started, worker: WorkerId) -> Option<Started> {
    loop {
        let line = next_line(&mut io.lines, io.limit).await.ok()??;
        match Packet::parse(&line).ok()? {
            Packet::Response(_) | Packet::End => {
                return io.lines.read_buffer().is_empty().then_some(io);
            }
            Packet::Log(text) => {
                let _ = packet::forward_log(worker, text);
            }
            Packet::Metric(_) | Packet::StreamStart(_) | Packet::Chunk(_) => {}
            Packet::Start => return None,
        }
    }
}

impl NuclioConn {
    /// Whether the connection can carry another event: false once an exchange
    /// failed or was dropped before it finished.
    pub fn is_usable(&self) -> bool {
        self.state == ConnState::Ready
    }

    /// Sends `event` and reads every packet up to its response, with the limits
    /// and counters of `transport`.
    ///
    /// # Errors
    ///
    /// Any [`NuclioError`]; after one the connection is unusable.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future part way leaves the connection
    /// unusable, since its answer may still arrive.
    pub async fn call(
        &mut self,
        transport: &NuclioTransport,
        event: &NuclioEvent,
    ) -> Result<NuclioResponse, NuclioError> {
        if self.state != ConnState::Ready {
            return Err(NuclioError::Unusable);
        }
        self.state = ConnState::Sending;
        let _in_flight = self.endpoint.event_in_flight();
        match transport.exchange(self, event).await {
            Ok(response) => {
                self.state = ConnState::Ready;
                Ok(response)
            }
            Err(error) => {
                self.state = ConnState::Failed;
                Err(error)
            }
        }
    }

    /// Acknowledges what was read at once, unless more is buffered (then the
    /// answer is not held back). See "Delayed acknowledgements" on
    /// [`NuclioTransport`]. A failure only costs latency, so it is ignored.
    fn acknowledge_now(&self) {
        #[cfg(target_os = "linux")]
        if let Some(io) = &self.io {
            if io.lines.read_buffer().is_empty() {
                let socket = socket2::SockRef::from(io.lines.get_ref().as_ref());
                let _ = socket.set_tcp_quickack(true);
            }
        }
    }

    /// The next line, `None` at end of stream.
    async fn next_line(&mut self) -> Result<Option<String>, NuclioError> {
        let io = self.io.as_mut().ok_or(NuclioError::Unusable)?;
        next_line(&mut io.lines, io.limit).await
    }
}
