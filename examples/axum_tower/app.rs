//! The core of the axum example, apart from its `main` so that
//! `tests/axum_tower.rs` can drive it without a socket: the tower stack over
//! the pool, the axum router around it, and an in-process worker for a run
//! with no Python.

#![allow(dead_code, unreachable_pub)] // the example and its test each use a part

use std::time::Duration;

use async_worker_pool::http::{error_response, event_from_parts, response_from_reply};
use async_worker_pool::net::{Event, Reply};
use async_worker_pool::{Pool, PoolError, PoolService, Transport, WorkerId, WorkerInfo};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// The pool behind tower's middleware, with the transport's type erased.
pub type EventService = BoxCloneSyncService<Event, Reply, BoxError>;

/// `PoolService` under an optional load shedder (a request that finds no free
/// slot is refused at once instead of waiting its turn) and an optional bound
/// on each event's run.
pub fn event_service<T>(pool: Pool<T>, timeout: Option<Duration>, shed: bool) -> EventService
where
    T: Transport<Request = Event, Response = Reply>,
{
    let stack = ServiceBuilder::new()
        .option_layer(shed.then(LoadShedLayer::new))
        .option_layer(timeout.map(TimeoutLayer::new))
        .map_err(BoxError::from)
        .service(PoolService::new(pool));
    BoxCloneSyncService::new(stack)
}

/// Every request goes to the pool as one event.
pub fn router(service: EventService) -> Router {
    Router::new().fallback(forward).with_state(service)
}

async fn forward(
    State(service): State<EventService>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let event = event_from_parts(&method, &uri, &headers, body);
    match service.oneshot(event).await {
        Ok(reply) => response_from_reply(reply).map(Body::from),
        Err(error) => from_error(error),
    }
}

/// The pool's own errors by the crate's table; the middleware's: 503 when
/// shed, 504 when the event ran out of time.
fn from_error(error: BoxError) -> Response {
    if let Some(error) = error.downcast_ref::<PoolError>() {
        return error_response(error).map(Body::from);
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        let retry = [(header::RETRY_AFTER, HeaderValue::from_static("1"))];
        return (StatusCode::SERVICE_UNAVAILABLE, retry, "no free slot\n").into_response();
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return (StatusCode::GATEWAY_TIMEOUT, "the event ran out of time\n").into_response();
    }
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response()
}

/// A worker that lives in the host: each connection answers with the event's
/// method, target and body, and the worker it reached, at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcessEcho;

#[async_worker_pool::async_trait]
impl Transport for InProcessEcho {
    type Conn = WorkerId;
    type Request = Event;
    type Response = Reply;
    type Error = std::io::Error;

    async fn connect(&self, worker: &WorkerInfo) -> std::io::Result<WorkerId> {
        Ok(worker.id)
    }

    async fn call(&self, worker: &mut WorkerId, event: Event) -> std::io::Result<Reply> {
        let mut text = format!(
            "hello from in-process worker {worker}: {} {}\n",
            event.method().unwrap_or("-"),
            event.path().unwrap_or("-"),
        )
        .into_bytes();
        text.extend_from_slice(event.body());
        Ok(Reply::Returned {
            status: 200,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: text.into(),
        })
    }
}
