//! How a worker's answer becomes an HTTP response: the crate's mapping
//! (`async_worker_pool::http`), in axum's body type.

use axum::body::Body;
use axum::response::Response;

use async_worker_pool::net::Reply;

/// A worker's reply: what the handler returned, or a 500 if it raised.
pub fn from_reply(reply: Reply) -> Response {
    async_worker_pool::http::response_from_reply(reply).map(Body::from)
}

/// A response with the worker's status and headers, and `body` (a stream).
pub fn with_head(status: u16, headers: Vec<(String, String)>, body: Body) -> Response {
    async_worker_pool::http::response_with_head(status, headers, body)
}
