//! What both gateways answer the same way: the wait for the workers at start,
//! the mapping of pool errors to HTTP answers and `/healthz`.

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
        "{} of {} {} running; {} of {} connections idle, {} busy\n",
        running,
        stats.workers.len(),
        plural(stats.workers.len(), "worker", "workers"),
        stats.idle,
        stats.capacity,
        stats.busy
    );
    (status, text).into_response()
}

/// `singular` for one, else `plural`: "1 worker", "2 workers".
pub fn plural<'a>(count: usize, singular: &'a str, plural: &'a str) -> &'a str {
    if count == 1 { singular } else { plural }
}
