//! The HTTP gateway over Nuclio's own async wrapper (feature `nuclio`).
//!
//! ```sh
//! cargo run --release -p async-worker-pool-gateway --bin nuclio_gateway -- \
//!     --wrapper /path/to/_nuclio_async_wrapper.py \
//!     --handler main:handler --handler-path /path/to/handler \
//!     --python /path/to/python-with-nuclio-sdk
//! curl http://127.0.0.1:8080/some/path
//! ```
//!
//! Without `--wrapper` it runs the tests' stand-in wrapper and echo handler,
//! which need a Python with `msgpack` and `nuclio-sdk` (`sh
//! scripts/nuclio_venv.sh` prints one). `--spec function.json --trigger NAME`
//! takes the pool settings from a Nuclio function configuration in JSON;
//! otherwise `--workers`, `--max-connections` and `--event-timeout` set them
//! (`--event-timeout` also overrides the spec's `eventTimeout`). Requests
//! reach the handler as Nuclio's HTTP trigger gives them: `event.path`
//! without the query, the query's parameters in `event.fields`, header names
//! in canonical form. It serves as soon as every worker has a connection and
//! the others keep coming (Nuclio's early-2025 wrapper accepts about five a
//! second). `/metrics` serves
//! the pool's numbers under the crate's names, Nuclio's names and the handler
//! durations; `/healthz` says whether a worker serves. Ctrl-C or SIGTERM stop
//! it gracefully; as in the HTTP gateway, SIGHUP reloads every worker (new
//! before old, no request fails), SIGTTIN adds one and SIGTTOU removes one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;

use async_worker_pool::nuclio::{
    HandlerDurations, NuclioEvent, NuclioLauncher, NuclioResponse, NuclioSpec, NuclioTransport,
};
use async_worker_pool::{Pool, PoolConfig, prometheus};
use async_worker_pool_gateway::{answers, listener, logging, runtime, signals};

type GatewayPool = Pool<NuclioTransport>;

/// The allocator of the whole front end: see the `mimalloc` entry in
/// Cargo.toml for why not the system's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An HTTP front end that forwards every request to Nuclio's Python async
/// wrapper, many connections per worker.
#[derive(Debug, Parser)]
#[command(name = "nuclio_gateway", version)]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// The wrapper script, `_nuclio_async_wrapper.py` of a Nuclio installation.
    #[arg(long, env = "GATEWAY_WRAPPER", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/nuclio_peer/_nuclio_async_wrapper.py"))]
    wrapper: PathBuf,

    /// The handler, as module:function.
    #[arg(long, env = "GATEWAY_HANDLER", default_value = "peer_handlers:echo")]
    handler: String,

    /// Directory the handler's module is imported from.
    #[arg(long, env = "GATEWAY_HANDLER_PATH", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/nuclio_handlers"))]
    handler_path: PathBuf,

    /// The Python interpreter, one with nuclio-sdk and msgpack installed.
    #[arg(long, env = "GATEWAY_PYTHON", default_value = "python3")]
    python: String,

    /// A Nuclio function configuration in JSON to take the pool settings from.
    #[arg(long, env = "GATEWAY_SPEC")]
    spec: Option<PathBuf>,

    /// The trigger of --spec to use; also the trigger name the handler sees.
    #[arg(long, env = "GATEWAY_TRIGGER", default_value = "http")]
    trigger: String,

    /// Worker processes, without --spec.
    #[arg(long, env = "GATEWAY_WORKERS", default_value_t = 1)]
    workers: usize,

    /// Connections to each worker, without --spec.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 1000)]
    max_connections: usize,

    /// How long an event may run before it fails with 504 (Nuclio's
    /// spec.eventTimeout); overrides --spec's. No limit unless given.
    #[arg(long, env = "GATEWAY_EVENT_TIMEOUT", value_parser = humantime::parse_duration)]
    event_timeout: Option<Duration>,

    /// On Ctrl-C or SIGTERM, how long requests in flight get to finish.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,

    /// The HTTP listener: backlog, client timeouts, connection cap.
    #[command(flatten)]
    listener: listener::ListenerArgs,

    /// The async runtime's threads.
    #[command(flatten)]
    runtime: runtime::RuntimeArgs,
}

struct Gateway {
    pool: GatewayPool,
    durations: HandlerDurations,
}

fn main() -> ExitCode {
    logging::init();
    let args = Args::parse();
    let outcome = pool_config(&args).and_then(|config| {
        runtime::block_on(args.runtime.threads, config.num_workers, run(args, config))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("nuclio_gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

fn pool_config(args: &Args) -> Result<PoolConfig, String> {
    let mut config = spec_config(args)?;
    if args.event_timeout.is_some() {
        config.event_timeout = args.event_timeout;
    }
    Ok(config)
}

fn spec_config(args: &Args) -> Result<PoolConfig, String> {
    let Some(path) = &args.spec else {
        let mut config = PoolConfig::default();
        config.num_workers = args.workers;
        config.max_connections = args.max_connections;
        return Ok(config);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let spec =
        NuclioSpec::from_json(&text).map_err(|error| match std::error::Error::source(&error) {
            Some(source) => format!("{}: {error}: {source}", path.display()),
            None => format!("{}: {error}", path.display()),
        })?;
    spec.pool_config(&args.trigger)
        .map_err(|error| format!("{}: {error}", path.display()))
}

async fn run(args: Args, config: PoolConfig) -> Result<(), String> {
    let (listener, backlog) = listener::bind(args.listen, args.listener.backlog)
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let reserved = listener::reserved_fds(config.capacity(), config.max_connections);
    let wanted = listener::wanted_fds(&args.listener, reserved);
    if let Ok(limit) = async_worker_pool::process::raise_fd_limit(wanted) {
        if limit < wanted {
            tracing::warn!(
                limit,
                wanted,
                "the open-file limit is below what the connections need"
            );
        }
    }
    let max_clients = listener::client_cap(&args.listener, reserved);
    tracing::info!(backlog, max_clients, "HTTP listener");
    let launcher = NuclioLauncher::builder(&args.wrapper, &args.handler)
        .python(&args.python)
        .handler_path(&args.handler_path)
        .trigger("http", &args.trigger)
        .build()
        .map_err(|error| format!("cannot prepare the workers: {}", error.chain()))?;
    let transport = NuclioTransport::new();
    let durations = transport.handler_durations();
    let (establish, workers) = (config.establish_connection_timeout, config.num_workers);
    let pool = Pool::builder(transport, launcher)
        .config(config)
        .build()
        .map_err(|error| error.to_string())?;
    wait_until_serving(&pool, 2 * establish).await?;
    // Listening for signals from before the address is printed on.
    let signalled = signals::stop_signal();
    let _operator = signals::serve_operator_signals(pool.clone(), workers)?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let stats = pool.stats();
    println!(
        "nuclio_gateway: listening on http://{address} ({} {} x {} connections, {} open so far, handler {})",
        stats.workers.len(),
        answers::plural(stats.workers.len(), "worker", "workers"),
        stats.capacity / stats.workers.len().max(1),
        stats.idle + stats.busy,
        args.handler
    );

    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(forward)
        .layer(DefaultBodyLimit::max(
            async_worker_pool::nuclio::DEFAULT_MAX_EVENT_BYTES / 2,
        ))
        .with_state(Arc::new(Gateway {
            pool: pool.clone(),
            durations,
        }));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            signalled.await;
            tracing::info!("shutting down");
            stop.cancel();
        }
    });
    let serve = listener::serve(listener, app, &args.listener, max_clients, stop.clone());
    // Requests in flight get the grace to finish; then the pool stops anyway.
    tokio::select! {
        () = serve => {}
        () = async { stop.cancelled().await; tokio::time::sleep(args.shutdown_grace).await } => {}
    }
    pool.shutdown(args.shutdown_grace).await;
    println!("nuclio_gateway: stopped");
    Ok(())
}

/// Waits until every worker serves at least one connection; the pool keeps
/// connecting the rest meanwhile. A worker that cannot start is reported with
/// the reason the pool recorded; on failure the pool is shut down.
async fn wait_until_serving(pool: &GatewayPool, limit: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let stats = pool.stats();
        if stats.workers.iter().all(|w| w.idle + w.busy > 0) {
            return Ok(());
        }
        if let Some(worker) = stats.workers.iter().find(|w| w.last_error.is_some()) {
            let reason = worker.last_error.clone().unwrap_or_default();
            pool.shutdown(Duration::ZERO).await;
            return Err(format!("worker {} did not start: {reason}", worker.id));
        }
        if tokio::time::Instant::now() >= deadline {
            pool.shutdown(Duration::ZERO).await;
            return Err(format!(
                "not every worker opened a connection within {limit:?} ({} of {} connections ready)",
                stats.idle, stats.capacity
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every other request: one event to a wrapper.
async fn forward(
    State(gateway): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = async_worker_pool::http::request_target(&uri);
    // Nuclio keeps one value per header name; a repeated header keeps its last.
    let trace = async_worker_pool::http::trace_from_headers(&headers);
    let headers = async_worker_pool::http::header_pairs(&headers);
    let mut event = NuclioEvent::from_http_request(method.as_str(), &target, headers, body);
    // The trace context, checked, and a repeated Tracestate joined, not cut to its last.
    if let Some(trace) = trace {
        event = event.with_trace(&trace);
    }
    match gateway.pool.dispatch(event).await {
        Ok(response) => from_response(response),
        Err(error) => answers::from_pool_error(error),
    }
}

fn from_response(response: NuclioResponse) -> Response {
    let Ok(status) = StatusCode::from_u16(response.status_code) else {
        let text = format!(
            "the handler returned an invalid status {}\n",
            response.status_code
        );
        return (StatusCode::BAD_GATEWAY, text).into_response();
    };
    // A streamed body was read whole by the transport; its chunks go out in order.
    let body = match response.body {
        async_worker_pool::nuclio::NuclioBody::Streamed(chunks) => Body::from_stream(
            futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>)),
        ),
        other => Body::from(other.to_bytes()),
    };
    let mut http = Response::new(body);
    *http.status_mut() = status;
    if let Ok(value) = HeaderValue::try_from(response.content_type.as_str()) {
        http.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    for (name, value) in response.headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(name), Ok(value)) => {
                http.headers_mut().insert(name, value);
            }
            _ => tracing::warn!(
                name,
                "dropping a header the handler returned that HTTP cannot carry"
            ),
        }
    }
    http
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    let stats = gateway.pool.stats();
    let mut text = prometheus::render(&stats);
    text.push_str(&prometheus::render_nuclio(&stats));
    text.push_str(&gateway.durations.snapshot().render_prometheus());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// 200 while at least one worker serves, else 503.
async fn healthz(State(gateway): State<Arc<Gateway>>) -> Response {
    answers::health(&gateway.pool.stats())
}
