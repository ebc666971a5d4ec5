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
pub struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

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

    /// With --asgi: run the app's lifespan protocol (auto, on or off, as uvicorn's).
    #[arg(
        long,
        env = "GATEWAY_LIFESPAN",
        default_value = "auto",
        requires = "asgi"
    )]
    pub lifespan: async_worker_pool::process::Lifespan,

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
