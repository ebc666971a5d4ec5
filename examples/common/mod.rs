//! What both HTTP gateway examples share: waiting for the workers at start, the
//! mapping of pool errors to HTTP answers, `/healthz`, the shutdown signal,
//! the HTTP listener (`listener`) and the async runtime (`runtime`). Included
//! by each example with `#[path]`.

pub mod listener;
pub mod runtime;

use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use async_worker_pool::{Pool, PoolError, ReadyError, Stats, Transport, WorkerState};

/// Waits until every connection is up, so that a worker that cannot start (a
/// handler that does not import, a missing interpreter) is reported at start
/// with the reason the pool recorded, not on the first request. On failure the
/// pool is shut down.
pub async fn wait_until_full<T: Transport>(pool: &Pool<T>, limit: Duration) -> Result<(), String> {
    let Err(error) = pool.ready(limit).await else {
        return Ok(());
    };
    pool.shutdown(Duration::ZERO).await;
    Err(match error {
        ReadyError::LaunchFailed { worker, reason, .. }
        | ReadyError::WorkerFailed { worker, reason, .. } => {
            format!("worker {worker} did not start: {reason}")
        }
        ReadyError::Timeout {
            connected,
            capacity,
            ..
        } => format!(
            "the workers did not open their connections in time ({connected} of {capacity} ready)"
        ),
        other => other.to_string(),
    })
}

/// The pool's error as an answer: the crate's mapping (503 with Retry-After
/// when no connection is free, 504 for an event timeout, 413 for an event over
/// the frame limit, 502 when the worker broke or went away).
pub fn from_pool_error(error: PoolError) -> Response {
    async_worker_pool::http::error_response(&error).map(Body::from)
}

/// `/healthz`: 200 while at least one worker serves, else 503, with the counts.
pub fn health(stats: &Stats) -> Response {
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

/// Ctrl-C or SIGTERM. The nuclio gateway's; the HTTP gateway has its own
/// (its `signals.rs`, with SIGTTIN and SIGTTOU besides).
///
/// The handlers are installed when this is called, not when the future is
/// first polled, so that a signal sent as soon as the gateway says it listens
/// is not lost to the default action.
#[allow(dead_code)] // unused by the HTTP gateway
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut interrupt)) = (term, interrupt) else {
            tracing::warn!("cannot listen for SIGTERM or SIGINT; only Ctrl-C stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// Installs a SIGHUP handler now and serves it on a task: each hangup
/// reloads every worker (`Pool::reload`: new before old, no event fails), as
/// gunicorn does. Hangups that come during a reload are folded into one more
/// reload after it. The nuclio gateway's; the HTTP gateway's `signals.rs`
/// does the same.
#[allow(dead_code)] // unused by the HTTP gateway
pub fn reload_on_hangup<T: Transport>(
    pool: Pool<T>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())
        .map_err(|error| format!("cannot listen for SIGHUP: {error}"))?;
    Ok(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading every worker");
            match pool.reload().await {
                Ok(()) => tracing::info!("SIGHUP: reload done"),
                Err(error) => tracing::warn!(%error, "SIGHUP: reload failed"),
            }
        }
    }))
}
