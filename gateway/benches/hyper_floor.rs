//! The floor under the gateway's HTTP layer: a bare hyper server that answers
//! every request with a constant from memory, on the gateway's runtime (one
//! thread beside two workers on two cores), allocator and HTTP/1 settings,
//! with no router, no pool and no worker. `scripts/bench_e2e.py` runs it
//! beside the gateway under the same wrk load (side `hyper-floor`), so that
//! the gateway process's CPU per request can be read against it: what is
//! left above the floor is the router, the pool and the hop to the workers.
//!
//! Usage: `hyper_floor PORT [THREADS]`; it serves until killed.

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the trivial handler answers.
const BODY: &[u8] = b"Hello, World!";

async fn answer(
    _request: Request<hyper::body::Incoming>,
) -> Result<Response<http_body_util::Full<Bytes>>, Infallible> {
    let mut response = Response::new(http_body_util::Full::new(Bytes::from_static(BODY)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port = args.next().ok_or("usage: hyper_floor PORT [THREADS]")?;
    if port.starts_with("--") {
        // `cargo bench` and `cargo nextest run --all-targets` run every bench
        // target with their own flags (`--bench`, `--list`): this one is a
        // server the e2e script starts, with no benchmark or test of its own.
        return Ok(());
    }
    let port: u16 = port.parse()?;
    let threads: usize = args.next().map_or(Ok(1), |t| t.parse())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).keep_alive(true);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(answer);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
