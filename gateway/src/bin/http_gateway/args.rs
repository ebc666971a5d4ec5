//! The gateway's command line. Every flag also reads an environment variable, and
//! every default is Nuclio's where Nuclio has one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// An HTTP front end that forwards every request to a pool of Python asyncio
/// workers, many connections per worker (Nuclio's async mode).
#[derive(Debug, Parser)]
#[command(name = "http_gateway", version)]
// The app servers' flags (--root-path) need one of the two.
#[command(group(clap::ArgGroup::new("framework").args(["asgi", "wsgi"])))]
pub struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Serve HTTP on this Unix socket instead of --listen, which it overrides
    /// as uvicorn's does (a reverse proxy on the same host connects to it); a
    /// stale socket file is removed first, and the socket is removed at exit.
    #[arg(long, env = "GATEWAY_UDS")]
    pub uds: Option<PathBuf>,

    /// The Python handler, as module:function. The default, a greeting, comes
    /// with the embedded worker.
    #[arg(
        long,
        env = "GATEWAY_HANDLER",
        default_value = "async_pool_worker.hello:handler"
    )]
    pub handler: String,

    /// Serve this ASGI 3 app (FastAPI, Starlette, ...), as module:attribute,
    /// instead of a handler; its module is imported from --handler-path.
    /// Streamed responses reach the client as the app sends them.
    #[arg(long, env = "GATEWAY_ASGI", conflicts_with = "handler")]
    pub asgi: Option<String>,

    /// Serve this WSGI app (Flask, Django, ...), as module:attribute, instead
    /// of a handler, in --wsgi-threads threads per worker: each worker gets one
    /// connection per thread (so not --max-connections), and a worker with a
    /// request past --event-timeout, whose thread cannot be stopped, is
    /// replaced once its other requests are done, new before old.
    #[arg(
        long,
        env = "GATEWAY_WSGI",
        conflicts_with_all = ["handler", "asgi", "max_connections"]
    )]
    pub wsgi: Option<String>,

    /// With --wsgi: threads per worker, which are also its connections.
    #[arg(
        long,
        env = "GATEWAY_WSGI_THREADS",
        default_value_t = async_worker_pool::process::DEFAULT_WSGI_THREADS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        requires = "wsgi"
    )]
    pub wsgi_threads: usize,

    /// With --asgi: run the app's lifespan protocol (auto, on or off, as uvicorn's).
    #[arg(
        long,
        env = "GATEWAY_LIFESPAN",
        default_value = "auto",
        requires = "asgi"
    )]
    pub lifespan: async_worker_pool::process::Lifespan,

    /// With --asgi or --wsgi: the prefix a reverse proxy mounts the app under
    /// and strips before forwarding (uvicorn's --root-path): the ASGI scope's
    /// root_path, or the WSGI environ's SCRIPT_NAME; the app's own links and
    /// OpenAPI document carry it.
    #[arg(long, env = "GATEWAY_ROOT_PATH", requires = "framework")]
    pub root_path: Option<String>,

    /// With --asgi: the attribute is an app factory, called with no arguments
    /// in each worker for the app (uvicorn's --factory).
    #[arg(long, env = "GATEWAY_FACTORY", requires = "asgi")]
    pub factory: bool,

    /// Directory the handler's (or app's) module is imported from, before the
    /// current directory.
    #[arg(long, env = "GATEWAY_HANDLER_PATH", default_value = ".")]
    pub handler_path: PathBuf,

    /// The Python interpreter.
    #[arg(long, env = "GATEWAY_PYTHON", default_value = "python3")]
    pub python: String,

    /// Worker processes (Nuclio's numWorkers).
    #[arg(long, env = "GATEWAY_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Connections to each worker (Nuclio's async.maxConnectionsNumber).
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 1000)]
    pub max_connections: usize,

    /// How long a request waits for a free connection before a 503.
    #[arg(long, env = "GATEWAY_CONNECTION_AVAILABILITY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connection_availability_timeout: Duration,

    /// A request running longer gets a 504 and its connection is restarted (no limit by default).
    #[arg(long, env = "GATEWAY_EVENT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub event_timeout: Option<Duration>,

    /// Bound on one connect attempt and on a worker's start-up.
    #[arg(long, env = "GATEWAY_ESTABLISH_CONNECTION_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub establish_connection_timeout: Duration,

    /// How long a worker's liveness probe may take before the worker counts as
    /// blocked and is restarted; `off` turns probes off.
    #[arg(long, env = "GATEWAY_PROBE_TIMEOUT", default_value = "1s", value_parser = optional_duration)]
    pub probe_timeout: OrOff,

    /// How often each worker is probed when no event timeout gave reason to;
    /// `off` probes only after an event timeout.
    #[arg(long, env = "GATEWAY_PROBE_INTERVAL", default_value = "5s", value_parser = optional_duration)]
    pub probe_interval: OrOff,

    /// A worker with requests in flight that has answered none within this
    /// long of its start, for this long, gets no new requests while a worker
    /// that progressed later can take them (its loop is likely held by a
    /// CPU-bound request); `off` chooses workers by free connections alone.
    #[arg(long, env = "GATEWAY_STALL_AFTER", default_value = "1ms", value_parser = optional_duration)]
    pub stall_after: OrOff,

    /// At most this many requests wait for a connection; beyond it, a 503 at once.
    #[arg(long, env = "GATEWAY_MAX_WAITERS")]
    pub max_waiters: Option<usize>,

    /// Replace a worker process after about this many requests (plus up to a
    /// tenth, drawn per worker), new before old, as gunicorn's max_requests.
    #[arg(long, env = "GATEWAY_MAX_EVENTS_PER_WORKER")]
    pub max_events_per_worker: Option<u64>,

    /// Replace a worker process whose resident memory passes this size, in
    /// bytes or with a K, M or G suffix (Linux only).
    #[arg(long, env = "GATEWAY_MAX_WORKER_RSS", value_parser = byte_size)]
    pub max_worker_rss: Option<u64>,

    /// The least time a worker serves before it is recycled for either bound
    /// above, so that a handler past --max-worker-rss from the start is not
    /// replaced over and over.
    #[arg(long, env = "GATEWAY_MIN_WORKER_UPTIME", default_value = "60s", value_parser = humantime::parse_duration)]
    pub min_worker_uptime: Duration,

    /// Log one line per request (target http_gateway::access, at INFO
    /// whatever RUST_LOG says): client, request line, status, body bytes,
    /// duration, request id (X-Request-Id, made if absent, and returned as
    /// x-request-id) and the worker that served it.
    #[arg(long, env = "GATEWAY_ACCESS_LOG")]
    pub access_log: bool,

    /// Take the client's address from X-Forwarded-For and the scheme from
    /// X-Forwarded-Proto (for the ASGI scope and the access log), when the
    /// request comes from a peer in --forwarded-allow-ips, as uvicorn's.
    #[arg(long, env = "GATEWAY_PROXY_HEADERS")]
    pub proxy_headers: bool,

    /// With --proxy-headers: the peers trusted to set those headers, a
    /// comma-separated list of IP addresses and networks (10.0.0.0/8), or `*`
    /// for every peer (a Unix socket's peers are trusted only with `*`).
    #[arg(
        long,
        env = "GATEWAY_FORWARDED_ALLOW_IPS",
        default_value = async_worker_pool_gateway::proxy_headers::DEFAULT_FORWARDED_ALLOW_IPS,
        requires = "proxy_headers"
    )]
    pub forwarded_allow_ips: async_worker_pool_gateway::proxy_headers::TrustedProxies,

    /// Largest request or response body, in bytes (one frame of the wire protocol).
    #[arg(long, env = "GATEWAY_MAX_FRAME_BYTES", default_value_t = async_worker_pool::net::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,

    /// Where the private directory for the workers' Unix sockets is made
    /// (the system's temporary directory by default).
    #[arg(long, env = "GATEWAY_SOCKET_DIR")]
    pub socket_dir: Option<PathBuf>,

    /// Workers listen on loopback TCP ports instead of Unix sockets.
    #[arg(long, env = "GATEWAY_TCP")]
    pub tcp: bool,

    /// Physical connections to each worker in the multiplexed mode (every
    /// slot a stream on one of them); 0 for one connection per slot. One by
    /// default: it used the least CPU per event in the socket dispatch bench
    /// (BENCHMARKS.md, "Multiplexing").
    #[arg(long, env = "GATEWAY_MULTIPLEX", default_value_t = 1)]
    pub multiplex: usize,

    /// On Ctrl-C or SIGTERM, how long requests in flight get to finish.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// With --asgi: WebSocket message size, pings and lifetime.
    #[command(flatten)]
    pub websocket: crate::websocket::WebSocketArgs,

    /// The HTTP listener: backlog, client timeouts, connection cap.
    #[command(flatten)]
    pub listener: async_worker_pool_gateway::listener::ListenerArgs,

    /// The async runtime's threads.
    #[command(flatten)]
    pub runtime: async_worker_pool_gateway::runtime::RuntimeArgs,
}

/// A size in bytes: `1048576`, `512K`, `200M`, `2G` (powers of 1024).
fn byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        other => return Err(format!("unknown unit {other:?}; use K, M or G")),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size in bytes"))?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text} is too large"))
}

/// A duration, or none (`off`).
#[derive(Debug, Clone, Copy)]
pub struct OrOff(pub Option<Duration>);

pub fn optional_duration(text: &str) -> Result<OrOff, humantime::DurationError> {
    match text {
        "off" | "none" => Ok(OrOff(None)),
        _ => humantime::parse_duration(text).map(|d| OrOff(Some(d))),
    }
}

impl Args {
    /// Connections (slots) to each worker: a WSGI app's threads, or
    /// --max-connections.
    pub fn connections_per_worker(&self) -> usize {
        match self.wsgi {
            Some(_) => self.wsgi_threads,
            None => self.max_connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::byte_size;

    #[test]
    fn sizes_read_with_and_without_a_unit() {
        assert_eq!(byte_size("1048576"), Ok(1 << 20));
        assert_eq!(byte_size("512K"), Ok(512 << 10));
        assert_eq!(byte_size("200M"), Ok(200 << 20));
        assert_eq!(byte_size("2g"), Ok(2 << 30));
        assert!(byte_size("12X").is_err());
        assert!(byte_size("M").is_err());
        assert!(byte_size("99999999999999999999G").is_err());
    }
}
