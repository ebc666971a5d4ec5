//! How a worker's answer becomes an HTTP response (the pool's errors are
//! mapped in `common`).

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use async_worker_pool::net::Reply;

use crate::common::plain;

/// A worker's reply: what the handler returned, or a 500 if it raised.
pub fn from_reply(reply: Reply) -> Response {
    match reply {
        Reply::Returned {
            status,
            headers,
            body,
        } => with_head(status, headers, Body::from(body)),
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

/// A response with the worker's status and headers, and `body`.
pub fn with_head(status: u16, headers: Vec<(String, String)>, body: Body) -> Response {
    let Ok(status) = StatusCode::from_u16(status) else {
        return plain(
            StatusCode::BAD_GATEWAY,
            format!("the handler returned an invalid status {status}\n"),
        );
    };
    let mut response = Response::new(body);
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
