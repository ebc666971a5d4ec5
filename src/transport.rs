//! The [`Transport`] trait: how the pool opens a connection to a worker and sends
//! one event over it.

use async_trait::async_trait;

use crate::stats::WebSocketStats;
use crate::worker::WorkerInfo;

/// Connections to worker processes, and one event exchange on a connection.
///
/// The host implements this for its own encoding, or uses the built-in socket
/// transport. The pool owns the connections: it calls [`connect`](Self::connect)
/// for every slot, hands a connection to one event at a time, and drops a
/// connection whose exchange did not finish cleanly instead of reusing it.
///
/// Dropping a `Conn` must close it.
///
/// # Examples
///
/// A transport to workers that live in the host, one counter per connection;
/// a real one opens a socket in `connect` and writes and reads in `call`:
///
/// ```
/// use async_worker_pool::{async_trait, Transport, WorkerInfo};
///
/// struct Counting;
///
/// /// One connection: which worker it reaches, and how many events it carried.
/// struct Conn {
///     worker: usize,
///     events: u64,
/// }
///
/// #[async_trait]
/// impl Transport for Counting {
///     type Conn = Conn;
///     type Request = String;
///     type Response = String;
///     type Error = std::io::Error;
///
///     async fn connect(&self, worker: &WorkerInfo) -> std::io::Result<Conn> {
///         Ok(Conn { worker: worker.id.index(), events: 0 })
///     }
///
///     async fn call(&self, conn: &mut Conn, event: String) -> std::io::Result<String> {
///         conn.events += 1;
///         Ok(format!("worker {} event {}: {event}", conn.worker, conn.events))
///     }
/// }
/// # let _ = Counting;
/// ```
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// One open connection to a worker.
    type Conn: Send + 'static;
    /// An event, as the host encodes it.
    type Request: Send + 'static;
    /// A worker's answer to one event.
    type Response: Send + 'static;
    /// What a failed connect or exchange reports: any error type, or
    /// [`BoxError`](crate::BoxError) itself. The pool keeps it, boxed, as the
    /// source of [`PoolError::Transport`](crate::PoolError::Transport);
    /// [`PoolError::transport_error`](crate::PoolError::transport_error) reads
    /// it back.
    type Error: Into<crate::BoxError> + Send + 'static;

    /// Opens one connection to `worker` and resolves once the worker serves it.
    ///
    /// The pool bounds each attempt with `establish_connection_timeout` and runs it
    /// in a task of its own, so a connect that hangs or panics costs one attempt.
    async fn connect(&self, worker: &WorkerInfo) -> Result<Self::Conn, Self::Error>;

    /// Sends one event and reads its answer.
    ///
    /// Never called twice at once on one `Conn`. The future may be dropped at any
    /// await point (event timeout, caller gone, worker exited); the pool then never
    /// uses that `Conn` again, so an implementation need not be cancel safe.
    async fn call(
        &self,
        conn: &mut Self::Conn,
        request: Self::Request,
    ) -> Result<Self::Response, Self::Error>;

    /// Checks that `worker` still serves: resolves `Ok` once the worker has
    /// shown that its event loop runs.
    ///
    /// The pool probes a worker when one of its events runs past the event
    /// timeout, and every `probe_interval` otherwise, and bounds each probe with
    /// `probe_timeout`; a probe that fails or runs out of time gets the worker
    /// restarted (see [Liveness](crate::PoolConfig#liveness)). A probe must be
    /// something only a running event loop can answer: a TCP or Unix connect
    /// alone is not, since the kernel completes it from the listen backlog.
    ///
    /// The default opens a fresh connection with [`connect`](Self::connect)
    /// and closes it, which is such a probe for every transport whose
    /// connection is ready only once the worker has said so (the built-in
    /// socket transport waits for the worker's ready frame). Override it where a
    /// cheaper ping exists, or where closing a connection would upset the
    /// worker.
    ///
    /// # Cancel safety
    ///
    /// The pool runs each probe in a task of its own and aborts it once
    /// `probe_timeout` is up, so an implementation need not be cancel safe.
    async fn probe(&self, worker: &WorkerInfo) -> Result<(), Self::Error> {
        self.connect(worker).await.map(drop)
    }

    /// Whether `conn`, idle until now, is known to be dead, so that no event is
    /// put on it: the worker (or a server such as uvicorn, which closes idle
    /// keep-alive connections) has closed it, or sent something unasked.
    ///
    /// Asked each time a slot is handed out, so it must be cheap and must not
    /// block: look at state the connection already has (a socket's cached read
    /// readiness, an end of file already seen). A broken connection is
    /// restarted and the event takes another slot. The default, `false`,
    /// trusts every idle connection.
    fn is_broken(&self, conn: &mut Self::Conn) -> bool {
        let _ = conn;
        false
    }

    /// Whether `error` refused the event before any of it was sent (an event
    /// over a size limit, say), leaving the connection as it was. The pool then
    /// keeps the connection for the next event instead of restarting it. The
    /// default, `false`, restarts the connection after every error.
    fn is_unsent(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// Whether `request` is a long-lived exchange, such as a WebSocket, that
    /// holds its slot for as long as its client stays: the pool then does
    /// not bound it with `event_timeout` (it may last hours; the host bounds
    /// it if it wants to), does not count it in
    /// [`EventStats`](crate::EventStats) (the transport counts it in
    /// [`websocket_stats`](Self::websocket_stats)), and a long one is no
    /// sign of a blocked worker. The default, `false`, treats every request
    /// as an event.
    fn is_long_lived(&self, request: &Self::Request) -> bool {
        let _ = request;
        false
    }

    /// The transport's WebSocket counters, which the pool puts in
    /// [`Stats::websockets`](crate::Stats::websockets). The default reports
    /// none.
    fn websocket_stats(&self) -> WebSocketStats {
        WebSocketStats::default()
    }

    /// Whether `error` means the worker closed the connection (end of stream,
    /// reset, broken pipe), as it does when its process dies.
    ///
    /// The pool then waits briefly for the process's exit to be seen, so that the
    /// event fails with [`PoolError::WorkerExited`](crate::PoolError::WorkerExited)
    /// rather than a transport error. The default, `false`, reports every error
    /// as a transport error at once.
    fn is_disconnect(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

/// Whether an I/O error means the peer closed the connection: the kinds a
/// socket reports when the process at its other end has died (reset, aborted,
/// broken pipe, unexpected end of file). For [`Transport::is_disconnect`]
/// implementations over sockets.
pub fn is_disconnect_io(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    )
}
