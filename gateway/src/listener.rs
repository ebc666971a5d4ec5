//! The gateways' HTTP listener, built for load: an explicit accept backlog, a
//! bound on how long a client may take to send its request head, a keep-alive
//! idle timeout, a cap on concurrent client connections, and accept errors
//! (out of file descriptors above all) that slow the accept loop down instead
//! of spinning it.
//!
//! `axum::serve` exposes none of these knobs, so connections are served with
//! hyper's HTTP/1 builder directly, the axum `Router` as the service.
//!
//! It listens on a TCP address, or on a Unix socket (`--uds`), as reverse
//! proxies on the same host are often wired.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, UnixListener, UnixSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The accept backlog asked for by default: uvicorn's and gunicorn's.
pub const DEFAULT_BACKLOG: u32 = 2048;

/// The most client connections at once, unless `--max-clients` says
/// otherwise or the open-file limit leaves room for fewer.
pub const DEFAULT_MAX_CLIENTS: usize = 4096;

/// Descriptors kept for the gateway itself beyond its worker connections:
/// standard streams, the runtime, the listener, a worker's launch.
const SPARE_FDS: u64 = 64;

/// The listener's command-line flags, shared by both gateways.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenerArgs {
    /// Connections the kernel queues before the gateway accepts them (the
    /// listen backlog), capped by /proc/sys/net/core/somaxconn.
    #[arg(long, env = "GATEWAY_BACKLOG", default_value_t = DEFAULT_BACKLOG)]
    pub backlog: u32,

    /// How long a client may take to send a complete request head; a slower
    /// one is disconnected.
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a kept-alive client connection may sit idle between requests
    /// before it is closed.
    #[arg(long, env = "GATEWAY_KEEP_ALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub keep_alive_timeout: Duration,

    /// At most this many client connections at once; more wait in the
    /// backlog until one closes. By default 4096, or fewer if the open-file
    /// limit leaves room for fewer beside the worker connections.
    #[arg(long, env = "GATEWAY_MAX_CLIENTS")]
    pub max_clients: Option<usize>,
}

/// The descriptors the worker connections need: every connection, and one
/// worker's worth more for a replacement that starts before the old one
/// stops (recycling, reload).
pub fn reserved_fds(capacity: usize, per_worker: usize) -> u64 {
    (capacity + per_worker) as u64 + SPARE_FDS
}

/// The open-file limit the gateway asks for: the workers' share and the
/// client connections'.
pub fn wanted_fds(settings: &ListenerArgs, reserved: u64) -> u64 {
    reserved + settings.max_clients.unwrap_or(DEFAULT_MAX_CLIENTS) as u64
}

/// How many client connections to serve at once: `--max-clients` if given
/// (with a warning when the open-file limit cannot hold them beside the
/// `reserved` descriptors), else as many as that limit leaves room for, up
/// to [`DEFAULT_MAX_CLIENTS`]. Clients over the cap wait in the backlog, so
/// that they never take the descriptors the worker connections and their
/// probes need.
pub fn client_cap(settings: &ListenerArgs, reserved: u64) -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    let room =
        limit.map(|limit| usize::try_from(limit.saturating_sub(reserved)).unwrap_or(usize::MAX));
    match (settings.max_clients, room) {
        (Some(asked), Some(room)) if asked > room => {
            tracing::warn!(
                max_clients = asked,
                room,
                "the open-file limit leaves room for fewer client connections than --max-clients; \
                 accepts will fail for lack of descriptors"
            );
            asked
        }
        (Some(asked), _) => asked,
        (None, Some(room)) => room.clamp(1, DEFAULT_MAX_CLIENTS),
        (None, None) => DEFAULT_MAX_CLIENTS,
    }
    .max(1)
}

/// Binds `address` with the backlog `asked` for, capped by the system's
/// `somaxconn` (the kernel would cap it silently); returns the listener and
/// the backlog it got.
pub fn bind(address: SocketAddr, asked: u32) -> io::Result<(TcpListener, u32)> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's bind does on Unix: a restarted gateway rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    let backlog = match somaxconn() {
        Some(cap) => asked.min(cap),
        None => asked,
    }
    .max(1);
    Ok((socket.listen(backlog)?, backlog))
}

/// Binds a Unix socket at `path` with the backlog `asked` for (capped as
/// [`bind`] caps it), after removing a stale socket file a gateway that did
/// not exit cleanly left there; a socket something still listens on is left
/// alone, and so is a file that is no socket. The socket is made connectable
/// by any local user (mode 0666, as uvicorn's): restrict who may reach it
/// with the permissions of its directory.
pub fn bind_unix(path: &Path, asked: u32) -> io::Result<(UdsListener, u32)> {
    remove_stale_socket(path)?;
    let socket = UnixSocket::new_stream()?;
    socket.bind(path)?;
    // From here the file is ours: removed again when the guard drops.
    let file = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let backlog = match somaxconn() {
        Some(cap) => asked.min(cap),
        None => asked,
    }
    .max(1);
    let listener = socket.listen(backlog)?;
    Ok((
        UdsListener {
            listener,
            _file: file,
        },
        backlog,
    ))
}

/// Removes `path` if it is a socket nothing listens on any more.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process listens on this socket",
        )),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path)
        }
        Err(error) => Err(error),
    }
}

/// A Unix socket the gateway listens on, and its file, removed when this
/// drops (at exit).
#[derive(Debug)]
pub struct UdsListener {
    listener: UnixListener,
    _file: SocketFile,
}

#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where the gateway takes its client connections from.
#[derive(Debug)]
pub enum Listener {
    /// A TCP address.
    Tcp(TcpListener),
    /// A Unix socket (`--uds`).
    Unix(UdsListener),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener)
    }
}

impl From<UdsListener> for Listener {
    fn from(socket: UdsListener) -> Self {
        Self::Unix(socket)
    }
}

/// A client connection just accepted.
enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Self::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok(Accepted::Tcp(stream, peer))
            }
            Self::Unix(socket) => {
                let (stream, _) = socket.listener.accept().await?;
                Ok(Accepted::Unix(stream))
            }
        }
    }
}

/// The system's cap on a listen backlog, where it can be read (Linux).
fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Serves `app` as [`serve`] does until `signalled` resolves (or another
/// holder of `stop` cancels it), then gives the requests in flight `grace` to
/// finish and returns, whether they did or not: the caller then stops its pool.
pub async fn serve_until_stopped(
    listener: impl Into<Listener>,
    app: Router,
    settings: &ListenerArgs,
    max_clients: usize,
    signalled: impl Future<Output = ()> + Send + 'static,
    stop: CancellationToken,
    grace: Duration,
) {
    tokio::spawn({
        let stop = stop.clone();
        async move {
            signalled.await;
            tracing::info!("shutting down");
            stop.cancel();
        }
    });
    let serving = serve(listener, app, settings, max_clients, stop.clone());
    tokio::select! {
        () = serving => {}
        () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {}
    }
}

/// Serves `app` on `listener` (a [`TcpListener`] or a [`UdsListener`]), at
/// most `max_clients` connections at once, until `stop` is cancelled; then
/// stops accepting, lets each connection finish the request it has in
/// flight, and returns once every connection has closed. The caller bounds
/// that drain.
pub async fn serve(
    listener: impl Into<Listener>,
    app: Router,
    settings: &ListenerArgs,
    max_clients: usize,
    stop: CancellationToken,
) {
    let listener = listener.into();
    let clients = Arc::new(Semaphore::new(max_clients));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    let mut errors = AcceptErrors::default();
    loop {
        // Over the cap, stop accepting: new connections wait in the backlog.
        let permit = tokio::select! {
            permit = clients.clone().acquire_owned() => permit.expect("never closed"),
            () = stop.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                if let Some(pause) = errors.record(&error) {
                    // Out of descriptors or memory: the connection stays in the
                    // backlog and accept would fail again at once. Wait for
                    // connections to close rather than spin.
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stop.cancelled() => break,
                    }
                }
                continue;
            }
        };
        let connection = Connection {
            builder: builder.clone(),
            app: app.clone(),
            keep_alive: settings.keep_alive_timeout,
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            match accepted {
                Accepted::Tcp(stream, peer) => {
                    let _ = stream.set_nodelay(true);
                    connection.serve(stream, Some(peer)).await;
                }
                Accepted::Unix(stream) => connection.serve(stream, None).await,
            }
            drop(permit);
        });
    }
    drop(listener);
    // Every connection holds a permit until it closes.
    let all = u32::try_from(max_clients).unwrap_or(u32::MAX);
    let _ = clients.acquire_many(all).await;
}

/// One client connection's settings.
struct Connection {
    builder: http1::Builder,
    app: Router,
    keep_alive: Duration,
    stop: CancellationToken,
}

impl Connection {
    /// Serves one client; its address reaches the handlers as axum's
    /// `ConnectInfo`, as `into_make_service_with_connect_info` would give it
    /// (none for a Unix socket's client, which has no address).
    async fn serve<S>(self, stream: S, peer: Option<SocketAddr>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let service = hyper::service::service_fn({
            let activity = activity.clone();
            let app = self.app;
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                if let Some(peer) = peer {
                    request.extensions_mut().insert(ConnectInfo(peer));
                }
                let active = Active::begin(activity.clone());
                let app = app.clone();
                async move {
                    let response = app.oneshot(request).await;
                    drop(active);
                    response
                }
            }
        });
        // With upgrades: a WebSocket handshake's 101 hands the socket over to
        // the handler's upgrade task (the connection future then ends).
        let mut connection = pin!(
            self.builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
        );
        let mut stopping = false;
        loop {
            let idle_check = tokio::time::sleep_until(activity.idle_deadline(self.keep_alive));
            tokio::select! {
                // A client's error (a reset, a header timeout) only ends its
                // own connection.
                _ = connection.as_mut() => return,
                () = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = idle_check, if !stopping => {
                    if activity.idle_for(self.keep_alive) {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// When a connection last finished a request, and how many it runs now: its
/// keep-alive clock. Before its first request the header-read timeout
/// bounds it instead.
struct Activity {
    origin: Instant,
    /// Milliseconds from `origin` to the end of the last request; 0 before one.
    last_done_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_done_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// The earliest time the connection can have been idle for `limit`.
    fn idle_deadline(&self, limit: Duration) -> tokio::time::Instant {
        let done = self.last_done_ms.load(Ordering::Acquire);
        let base = if done == 0 {
            // No request finished yet: look again a keep-alive period from now.
            Instant::now()
        } else {
            self.origin + Duration::from_millis(done)
        };
        tokio::time::Instant::from_std(base + limit)
    }

    /// Whether a request finished, none runs, and the last ended `limit` ago.
    fn idle_for(&self, limit: Duration) -> bool {
        let done = self.last_done_ms.load(Ordering::Acquire);
        done != 0
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.origin.elapsed() >= Duration::from_millis(done) + limit
    }
}

/// A request in flight on a connection; it ends when dropped (also when the
/// client goes away mid-request).
struct Active(Arc<Activity>);

impl Active {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let elapsed = self.0.origin.elapsed().as_millis().max(1);
        self.0.last_done_ms.store(
            u64::try_from(elapsed).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accept errors, logged at most once per `LOG_EVERY` with the count since
/// the last report, so that a gateway out of file descriptors neither floods
/// its log nor goes quiet about it.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unreported: u64,
}

impl AcceptErrors {
    const LOG_EVERY: Duration = Duration::from_secs(5);
    /// How long the loop waits after running out of a resource.
    const PAUSE: Duration = Duration::from_millis(100);

    /// Counts `error`, logs when due, and says how long to pause before the
    /// next accept: only errors about the gateway's own resources pause it;
    /// a connection reset before it was accepted does not.
    fn record(&mut self, error: &io::Error) -> Option<Duration> {
        use nix::errno::Errno;
        let exhausted = error.raw_os_error().is_some_and(|code| {
            matches!(
                Errno::from_raw(code),
                Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM
            )
        });
        if !exhausted {
            tracing::debug!(%error, "a client connection failed before it was accepted");
            return None;
        }
        self.unreported += 1;
        let due = self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Self::LOG_EVERY);
        if due {
            tracing::warn!(
                %error,
                failures = self.unreported,
                "cannot accept client connections (pausing accepts; raise the open-file limit with ulimit -n, or lower --max-clients)"
            );
            self.last_logged = Some(Instant::now());
            self.unreported = 0;
        }
        Some(Self::PAUSE)
    }
}
