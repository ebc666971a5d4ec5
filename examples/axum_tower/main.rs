//! An axum host that reaches the pool through tower: `PoolService` (readiness
//! is a reserved slot) under tower's timeout and, with `--shed`, its load
//! shedder, and the crate's `http` glue for requests, replies and errors.
//!
//! ```sh
//! # Workers inside the host, no Python:
//! cargo run --features tower --example axum_tower
//! # The reference Python worker with examples/handlers/echo.py:
//! cargo run --features tower --example axum_tower -- --handler echo:handler
//! curl -d 'some body' http://127.0.0.1:8081/some/path
//! ```
//!
//! Ctrl-C stops it; in-flight requests get `--shutdown-grace` to finish.

mod app;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use async_worker_pool::net::{Event, Reply, SocketTransport};
use async_worker_pool::{InProcessLauncher, Pool, ProcessLauncher, Transport};
use clap::Parser;
use tokio::net::TcpListener;

/// An axum host over the pool's tower service.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// A Python handler (module:function) for the reference worker; without
    /// it the workers live in this process and echo each request.
    #[arg(long)]
    handler: Option<String>,
    /// Directory the handler's module is imported from.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/handlers"))]
    handler_path: PathBuf,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Connections (slots) per worker.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// How long a request waits for a free slot.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    availability_timeout: Duration,
    /// How long an event may run, as tower's timeout.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    event_timeout: Duration,
    /// Refuse a request at once (503) when no slot is free, instead of waiting.
    #[arg(long)]
    shed: bool,
    /// How long in-flight requests get to finish on Ctrl-C.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let result = match &args.handler {
        None => serve(InProcessEcho::pool(&args), &args).await,
        Some(handler) => match python_pool(handler, &args) {
            Ok(pool) => serve(pool, &args).await,
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("axum_tower: {message}");
            ExitCode::FAILURE
        }
    }
}

use app::InProcessEcho;

impl InProcessEcho {
    fn pool(args: &Args) -> Pool<InProcessEcho> {
        Pool::builder(InProcessEcho, InProcessLauncher)
            .num_workers(args.workers)
            .max_connections(args.connections)
            .connection_availability_timeout(args.availability_timeout)
            .build()
            .expect("the example's settings are valid")
    }
}

fn python_pool(handler: &str, args: &Args) -> Result<Pool<SocketTransport>, String> {
    let launcher = ProcessLauncher::python_worker(handler)
        .handler_path(&args.handler_path)
        .connections(args.connections)
        .build()
        .map_err(|error| format!("cannot prepare the workers: {}", error.chain()))?;
    Pool::builder(SocketTransport::new(), launcher)
        .num_workers(args.workers)
        .max_connections(args.connections)
        .connection_availability_timeout(args.availability_timeout)
        .build()
        .map_err(|error| error.to_string())
}

async fn serve<T>(pool: Pool<T>, args: &Args) -> Result<(), String>
where
    T: Transport<Request = Event, Response = Reply>,
{
    let result = async {
        pool.ready(Duration::from_secs(30))
            .await
            .map_err(|error| format!("the workers did not start: {error}"))?;
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        println!(
            "axum_tower: listening on http://{address} ({} workers x {} connections)",
            args.workers, args.connections
        );
        let service = app::event_service(pool.clone(), Some(args.event_timeout), args.shed);
        axum::serve(listener, app::router(service))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|error| format!("HTTP server failed: {error}"))
    }
    .await;
    pool.shutdown(args.shutdown_grace).await;
    result
}
