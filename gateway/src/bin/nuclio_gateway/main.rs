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
//! scripts/nuclio_venv.sh` prints one). `--spec function.yaml --trigger NAME`
//! takes a Nuclio user's own function configuration as written (YAML, or
//! JSON): the handler (unless `--handler` is given), the workers' environment
//! (`spec.env`) and namespace, and the trigger's pool settings; every key it
//! does not take is logged by its dotted path, as a warning where the function
//! would run otherwise than under Nuclio (`--help` lists which). Without
//! `--spec`, `--workers`, `--max-connections` and `--event-timeout` set the
//! pool (`--event-timeout` also overrides the spec's `eventTimeout`). Requests
//! reach the handler as Nuclio's HTTP trigger gives them: `event.path`
//! without the query, the query's parameters in `event.fields`, header names
//! in canonical form. It serves as soon as every worker has a connection and
//! the others keep coming (Nuclio's early-2025 wrapper accepts about five a
//! second). `/metrics` serves
//! the pool's numbers under the crate's names, Nuclio's names and the handler
//! durations; `/healthz` says whether a worker serves. Ctrl-C or SIGTERM stop
//! it gracefully; as in the HTTP gateway, SIGHUP reloads every worker (new
//! before old, no request fails), SIGTTIN adds one and SIGTTOU removes one.

mod function_config;

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
    HandlerDurations, NuclioEvent, NuclioLauncher, NuclioResponse, NuclioTransport,
};
use async_worker_pool::{Pool, PoolConfig, prometheus};
use async_worker_pool_gateway::{answers, listener, logging, runtime, signals};

use function_config::FunctionConfig;

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

    /// The handler, as module:function [default: --spec's spec.handler, else
    /// peer_handlers:echo, the stand-in's echo]
    #[arg(long, env = "GATEWAY_HANDLER")]
    handler: Option<String>,

    /// Directory the handler's module is imported from.
    #[arg(long, env = "GATEWAY_HANDLER_PATH", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/nuclio_handlers"))]
    handler_path: PathBuf,

    /// The Python interpreter, one with nuclio-sdk and msgpack installed.
    #[arg(long, env = "GATEWAY_PYTHON", default_value = "python3")]
    python: String,

    /// A Nuclio function configuration, function.yaml as `nuctl deploy
    /// --file` takes it (or the same in JSON), to take the handler, the
    /// workers' environment and the pool settings from.
    ///
    /// Taken as Nuclio's processor takes them: spec.handler (unless --handler
    /// is given); spec.env's name and value pairs, set for the workers on top
    /// of the gateway's own environment; metadata.name and spec.description as
    /// NUCLIO_FUNCTION_NAME and NUCLIO_FUNCTION_DESCRIPTION; metadata.namespace
    /// as the wrapper's --namespace; spec.eventTimeout; and of the trigger
    /// --trigger names, numWorkers, mode and async.maxConnectionsNumber,
    /// .connectionAvailabilityTimeout and .establishConnectionTimeout. A
    /// function without triggers gets, as in Nuclio, a default HTTP trigger,
    /// here with the pool's defaults.
    ///
    /// Every other key is logged with its dotted path (spec.build.image,
    /// `spec.env[2].valueFrom`). A warning for a key it does not know, and for a
    /// setting it knows but cannot honour, so that the function runs
    /// otherwise than under Nuclio: `spec.env[].valueFrom` and spec.envFrom
    /// (those variables are not set), spec.volumes, spec.streamChunkTimeout,
    /// spec.dataBindings, spec.runtimeAttributes, a trigger kind other than
    /// http, and the trigger's maxWorkers, workerAvailabilityTimeoutMilliseconds,
    /// batch, async.minConnectionsNumber and a dynamic
    /// async.connectionCreationMode. A debug line ("ignored as not
    /// applicable") for keys about building, deploying, scaling and scheduling
    /// on a platform, without which the function runs the same: apiVersion,
    /// kind, status, metadata.labels and .annotations, spec.runtime,
    /// spec.build, spec.image, spec.resources, spec.minReplicas,
    /// spec.maxReplicas, spec.platform, spec.securityContext, the probes, the
    /// trigger's attributes.port and .ingresses, the other triggers, and the
    /// like. A YAML merge key (`<<`) is refused.
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

/// The handler when neither --handler nor --spec names one: the stand-in's
/// echo, beside the stand-in wrapper that is --wrapper's default.
const DEFAULT_HANDLER: &str = "peer_handlers:echo";

struct Gateway {
    pool: GatewayPool,
    durations: HandlerDurations,
}

/// What the workers run and how many: the flags, with --spec's settings where
/// the flags leave them.
#[derive(Debug)]
struct Setup {
    pool: PoolConfig,
    handler: String,
    namespace: Option<String>,
    env: Vec<(String, String)>,
}

fn main() -> ExitCode {
    logging::init();
    let args = Args::parse();
    let outcome = setup(&args).and_then(|setup| {
        runtime::block_on(
            args.runtime.threads,
            setup.pool.num_workers,
            run(args, setup),
        )
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("nuclio_gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

fn setup(args: &Args) -> Result<Setup, String> {
    let mut setup = match &args.spec {
        Some(file) => {
            let function = FunctionConfig::read(file, &args.trigger).map_err(|e| e.to_string())?;
            function.log_remarks(file);
            Setup {
                pool: function.pool,
                handler: function
                    .handler
                    .unwrap_or_else(|| DEFAULT_HANDLER.to_owned()),
                namespace: function.namespace,
                env: function.env,
            }
        }
        None => {
            let mut pool = PoolConfig::default();
            pool.num_workers = args.workers;
            pool.max_connections = args.max_connections;
            Setup {
                pool,
                handler: DEFAULT_HANDLER.to_owned(),
                namespace: None,
                env: Vec::new(),
            }
        }
    };
    if let Some(handler) = &args.handler {
        setup.handler.clone_from(handler);
    }
    if args.event_timeout.is_some() {
        setup.pool.event_timeout = args.event_timeout;
    }
    Ok(setup)
}

async fn run(args: Args, setup: Setup) -> Result<(), String> {
    let Setup {
        pool: config,
        handler,
        namespace,
        env,
    } = setup;
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
    let mut launcher = NuclioLauncher::builder(&args.wrapper, &handler)
        .python(&args.python)
        .handler_path(&args.handler_path)
        .trigger("http", &args.trigger);
    if let Some(namespace) = namespace {
        launcher = launcher.namespace(namespace);
    }
    // Each worker's own environment, on top of the gateway's: the gateway's
    // process is left as it is.
    for (name, value) in env {
        launcher = launcher.env(name, value);
    }
    let launcher = launcher
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
        handler
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
    listener::serve_until_stopped(
        listener,
        app,
        &args.listener,
        max_clients,
        signalled,
        stop,
        args.shutdown_grace,
    )
    .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The setup from these flags, with `spec` (YAML) as --spec.
    fn setup_with(spec: &str, flags: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("function.yaml");
        std::fs::write(&file, spec).unwrap();
        let mut argv = vec!["nuclio_gateway", "--spec", file.to_str().unwrap()];
        argv.extend_from_slice(flags);
        setup(&Args::try_parse_from(argv).unwrap()).unwrap()
    }

    const SPEC: &str = "spec:\n  handler: greet:handler\n  eventTimeout: 20s\n";

    #[test]
    fn the_handler_flag_wins_over_the_specs_handler() {
        let setup = setup_with(SPEC, &["--handler", "other:handler"]);
        assert_eq!(setup.handler, "other:handler");
    }

    #[test]
    fn the_specs_handler_serves_when_no_flag_names_one() {
        assert_eq!(setup_with(SPEC, &[]).handler, "greet:handler");
        let without = setup_with("spec:\n  runtime: python\n", &[]);
        assert_eq!(without.handler, DEFAULT_HANDLER);
    }

    #[test]
    fn the_event_timeout_flag_wins_over_the_specs() {
        let setup = setup_with(SPEC, &["--event-timeout", "3s"]);
        assert_eq!(setup.pool.event_timeout, Some(Duration::from_secs(3)));
        let setup = setup_with(SPEC, &[]);
        assert_eq!(setup.pool.event_timeout, Some(Duration::from_secs(20)));
    }
}
