//! How a worker's answer, or the pool's error, becomes an HTTP response.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use async_worker_pool::PoolError;
use async_worker_pool::net::{NetError, Reply};

/// A worker's reply: what the handler returned, or a 500 if it raised.
pub fn from_reply(reply: Reply) -> Response {
    match reply {
        Reply::Returned {
            status,
            headers,
            body,
        } => {
            let Ok(status) = StatusCode::from_u16(status) else {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("the handler returned an invalid status {status}\n"),
                );
            };
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            for (name, value) in headers {
                match (
                    HeaderName::try_from(name.as_str()),
                    HeaderValue::try_from(value.as_str()),
                ) {
                    (Ok(name), Ok(value)) => {
                        response.headers_mut().append(name, value);
                    }
                    _ => tracing::warn!(
                        name,
                        "dropping a header the handler returned that HTTP cannot carry"
                    ),
                }
            }
            response
        }
        Reply::Raised {
            exception_type,
            message,
            traceback,
        } => {
            tracing::warn!(exception_type, message, traceback, "handler raised");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("handler raised {exception_type}: {message}\n"),
            )
        }
        other => plain(
            StatusCode::BAD_GATEWAY,
            format!("unexpected reply from the worker: {other:?}\n"),
        ),
    }
}

/// The pool's error: 503 when no connection is free (with Retry-After), 504 for an
/// event timeout, 502 when the worker broke or went away.
pub fn from_error(error: PoolError) -> Response {
    let status = match &error {
        PoolError::AcquireTimeout { .. } | PoolError::QueueFull { .. } => {
            let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n"));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        PoolError::EventTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        PoolError::NoWorkerAvailable | PoolError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        PoolError::Transport { source, .. } => {
            if let Some(NetError::EventTooLarge { .. }) = source.downcast_ref::<NetError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_GATEWAY
            }
        }
        _ => StatusCode::BAD_GATEWAY,
    };
    let detail = match std::error::Error::source(&error) {
        Some(source) => format!("{error}: {source}\n"),
        None => format!("{error}\n"),
    };
    plain(status, detail)
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}
