//! The main job: an HTTP gateway in front of a pool of Python asyncio workers.
//!
//! ```sh
//! cargo run --release --example http_gateway
//! curl http://127.0.0.1:8080/some/path
//! ```
//!
//! Every request becomes one event on a free connection to a worker; the worker's
//! handler (`examples/handlers/hello.py` unless `--handler` says otherwise) answers
//! it. `/metrics` serves the pool's numbers in Prometheus format and `/healthz`
//! says whether any worker serves. Ctrl-C or SIGTERM shut it down gracefully,
//! leaving no worker process behind. `--help` lists every setting.

mod args;
mod responses;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use tokio::net::TcpListener;

use async_worker_pool::net::{Event, SocketTransport};
use async_worker_pool::{EndpointKind, Pool, ProcessLauncher, WorkerState, prometheus};

use args::Args;

type GatewayPool = Pool<SocketTransport, ProcessLauncher>;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("http_gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen).await.map_err(|error| {
        format!(
            "cannot listen on {}: {error}; choose another address with --listen or GATEWAY_LISTEN",
            args.listen
        )
    })?;
    // One descriptor per connection, plus room for HTTP clients and the rest.
    let wanted = (args.workers * args.max_connections) as u64 + 1024;
    match async_worker_pool::net::raise_fd_limit(wanted) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            wanted,
            "the open-file limit is below what the connections need; raise it with ulimit -n"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }
    let pool = start_pool(&args).await?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "http_gateway: listening on http://{address} ({} workers x {} connections, handler {})",
        args.workers, args.max_connections, args.handler
    );

    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(forward)
        .layer(DefaultBodyLimit::max(args.max_frame_bytes))
        .with_state(Arc::new(pool.clone()));

    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            stop.cancel();
        }
    });
    let serve = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    let served = async {
        // Requests in flight get the grace to finish; then the pool stops anyway.
        tokio::select! {
            result = serve => result.map_err(|e| format!("HTTP server failed: {e}")),
            () = async { stop.cancelled().await; tokio::time::sleep(args.shutdown_grace).await } => Ok(()),
        }
    };
    let result = served.await;
    pool.shutdown(args.shutdown_grace).await;
    println!("http_gateway: stopped");
    result
}

/// Builds the pool and waits until every worker serves all its connections, so
/// that a handler that does not import or a missing interpreter is reported at
/// start, not on the first request.
async fn start_pool(args: &Args) -> Result<GatewayPool, String> {
    let mut launcher = ProcessLauncher::python_worker(&args.handler);
    if let Some(dir) = &args.socket_dir {
        launcher = launcher.socket_dir_parent(dir);
    }
    let launcher = launcher
        .python(&args.python)
        .handler_path(&args.handler_path)
        .connections(args.max_connections)
        .endpoint_kind(if args.tcp {
            EndpointKind::Tcp
        } else {
            EndpointKind::Unix
        })
        .arg("--max-frame-bytes")
        .arg(args.max_frame_bytes.to_string())
        .build()
        .map_err(|error| format!("cannot prepare the workers: {error}"))?;
    let mut builder = Pool::builder(
        SocketTransport::new().max_frame_bytes(args.max_frame_bytes),
        launcher,
    )
    .num_workers(args.workers)
    .max_connections(args.max_connections)
    .connection_availability_timeout(args.connection_availability_timeout)
    .establish_connection_timeout(args.establish_connection_timeout);
    if let Some(timeout) = args.event_timeout {
        builder = builder.event_timeout(timeout);
    }
    if let Some(max_waiters) = args.max_waiters {
        builder = builder.max_waiters(max_waiters);
    }
    let pool = builder.build().map_err(|error| error.to_string())?;

    // One launch plus one full round of connects, each bounded by the same timeout.
    let deadline = tokio::time::Instant::now() + 2 * args.establish_connection_timeout;
    loop {
        let stats = pool.stats();
        if stats.idle == stats.capacity {
            return Ok(pool);
        }
        if let Some(worker) = stats.workers.iter().find(|w| w.last_error.is_some()) {
            let reason = worker.last_error.clone().unwrap_or_default();
            pool.shutdown(Duration::ZERO).await;
            return Err(format!("worker {} did not start: {reason}", worker.id));
        }
        if tokio::time::Instant::now() >= deadline {
            pool.shutdown(Duration::ZERO).await;
            return Err(format!(
                "the workers did not open their connections in time ({} of {} ready)",
                stats.idle, stats.capacity
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every other request: one event to a worker.
async fn forward(
    State(pool): State<Arc<GatewayPool>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    let headers = headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), value)
        })
        .collect();
    let event = Event::http(method.as_str(), path, headers, body);
    match pool.dispatch(event).await {
        Ok(reply) => responses::from_reply(reply),
        Err(error) => responses::from_error(error),
    }
}

async fn metrics(State(pool): State<Arc<GatewayPool>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus::render(&pool.stats()),
    )
        .into_response()
}

/// 200 while at least one worker serves, else 503.
async fn healthz(State(pool): State<Arc<GatewayPool>>) -> Response {
    let stats = pool.stats();
    let running = stats
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Running)
        .count();
    let status = if running > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let text = format!(
        "{} of {} workers running; {} of {} connections idle, {} busy\n",
        running,
        stats.workers.len(),
        stats.idle,
        stats.capacity,
        stats.busy
    );
    (status, text).into_response()
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
