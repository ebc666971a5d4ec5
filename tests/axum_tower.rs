//! The axum example's core (`examples/axum_tower/app.rs`): its router over the
//! pool's tower service answers requests, in-process and with the reference
//! Python worker, and maps a refused request to the right status.

#[path = "../examples/axum_tower/app.rs"]
mod app;

use std::time::Duration;

use async_worker_pool::net::SocketTransport;
use async_worker_pool::{InProcessLauncher, Pool, ProcessLauncher};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

async fn text(response: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_request_reaches_an_in_process_worker_through_the_tower_stack() {
    let pool = Pool::builder(app::InProcessEcho, InProcessLauncher)
        .num_workers(2)
        .max_connections(2)
        .build()
        .unwrap();
    pool.ready(Duration::from_secs(5)).await.unwrap();
    let router = app::router(app::event_service(
        pool.clone(),
        Some(Duration::from_secs(5)),
        false,
    ));
    let request = Request::post("/greet?lang=en")
        .body(Body::from("body"))
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = text(response).await;
    assert!(text.starts_with("hello from in-process worker "), "{text}");
    assert!(text.ends_with(": POST /greet?lang=en\nbody"), "{text}");
    let stats = pool.stats();
    assert_eq!((stats.idle, stats.busy), (4, 0), "no slot is held after");
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn with_shedding_a_request_that_finds_no_free_slot_gets_503_at_once() {
    let pool = Pool::builder(app::InProcessEcho, InProcessLauncher)
        .max_connections(1)
        .build()
        .unwrap();
    pool.ready(Duration::from_secs(5)).await.unwrap();
    let router = app::router(app::event_service(pool.clone(), None, true));
    let held = pool.acquire().await.unwrap();
    let response = router
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(pool.stats().waiters, 0, "the shed request left no waiter");
    drop(held);
    let response = router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_pool_error_becomes_the_crates_status() {
    // Without shedding, a request waits its turn, and times out into a 503.
    let pool = Pool::builder(app::InProcessEcho, InProcessLauncher)
        .max_connections(1)
        .connection_availability_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    pool.ready(Duration::from_secs(5)).await.unwrap();
    let router = app::router(app::event_service(pool.clone(), None, false));
    let held = pool.acquire().await.unwrap();
    let response = router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(text(response).await, "Service Unavailable\n");
    drop(held);
    pool.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_request_reaches_the_reference_python_worker_through_the_tower_stack() {
    let launcher = ProcessLauncher::python_worker("echo:handler")
        .handler_path(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/handlers"))
        .connections(2)
        .build()
        .unwrap();
    let pool = Pool::builder(SocketTransport::new(), launcher)
        .max_connections(2)
        .build()
        .unwrap();
    pool.ready(Duration::from_secs(20)).await.unwrap();
    let router = app::router(app::event_service(
        pool.clone(),
        Some(Duration::from_secs(10)),
        false,
    ));
    let response = router
        .oneshot(
            Request::post("/some/path")
                .body(Body::from("some body"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-worker-id"], "0");
    assert_eq!(text(response).await, "some body");
    pool.shutdown(Duration::from_secs(5)).await;
}
