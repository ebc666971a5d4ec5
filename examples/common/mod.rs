//! What both HTTP gateway examples share: waiting for the workers at start, the
//! mapping of pool errors to HTTP answers, `/healthz`, request headers as
//! strings, and the shutdown signal. Included by each example with `#[path]`.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use async_worker_pool::net::NetError;
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

/// The pool's error: 503 when no connection is free (with Retry-After), 504 for
/// an event timeout, 413 for an event over the frame limit, 502 when the worker
/// broke or went away.
pub fn from_pool_error(error: PoolError) -> Response {
    let status = match &error {
        PoolError::AcquireTimeout { .. } | PoolError::QueueFull { .. } => {
            let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n"));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        PoolError::EventTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        // The worker blocked its event loop; the event ran out of time with it.
        PoolError::WorkerUnresponsive { .. } => StatusCode::GATEWAY_TIMEOUT,
        PoolError::NoWorkerAvailable | PoolError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        PoolError::Transport { .. } => match error.transport_error::<NetError>() {
            Some(NetError::EventTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_GATEWAY,
        },
        _ => StatusCode::BAD_GATEWAY,
    };
    let detail = match std::error::Error::source(&error) {
        Some(source) => format!("{error}: {source}\n"),
        None => format!("{error}\n"),
    };
    plain(status, detail)
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

/// The request's path with its query, as the worker should see it.
pub fn request_target(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string())
}

/// The request's headers as strings; a value that is not UTF-8 is decoded lossily.
pub fn header_pairs(headers: &HeaderMap) -> impl Iterator<Item = (String, String)> + '_ {
    headers.iter().map(|(name, value)| {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        (name.as_str().to_string(), value)
    })
}

/// A plain-text answer.
pub fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Ctrl-C, SIGTERM or SIGHUP. A hangup would otherwise end the gateway at once,
/// with no drain. The nuclio gateway's; the HTTP gateway reloads its workers on
/// SIGHUP instead (its `signals.rs`).
///
/// The handlers are installed when this is called, not when the future is
/// first polled, so that a signal sent as soon as the gateway says it listens
/// is not lost to the default action.
#[allow(dead_code)] // unused by the HTTP gateway
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let hangup = signal(SignalKind::hangup());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut hangup), Ok(mut interrupt)) = (term, hangup, interrupt) else {
            tracing::warn!(
                "cannot listen for SIGTERM, SIGHUP or SIGINT; only Ctrl-C stops the gateway"
            );
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
            _ = hangup.recv() => {}
        }
    }
}
