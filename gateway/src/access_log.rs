//! The access log: one line per request, at INFO on the target
//! `http_gateway::access`, once its response has been sent (or the client
//! went away), in a common format:
//!
//! ```text
//! 127.0.0.1:51234 - "GET /items/42?q=x HTTP/1.1" 200 27 3.1ms request_id=… worker=0
//! ```
//!
//! client address (the one a trusted proxy names, with `--proxy-headers`),
//! request line, status, body bytes sent, time from the request to the end of
//! its response, the request id and the worker that served it (`-` for the
//! gateway's own routes, or a request that never got a slot).
//!
//! The request id is the request's `X-Request-Id` when it has a usable one,
//! else a new one, which is added to the request the app sees; the response
//! carries it back as `x-request-id`, so that a client, the app's own log and
//! this line can be matched. A request whose client goes away before its
//! response is logged with status 499, as nginx does.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, Uri, Version};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use async_worker_pool::{Pool, PoolError, Transport, WorkerId};

use crate::proxy_headers::{Remote, TrustedProxies};

/// The log target of the access lines.
pub const TARGET: &str = "http_gateway::access";

/// The header that carries the request id, both ways.
const REQUEST_ID: &str = "x-request-id";

/// The longest request id taken from a request; a longer one is replaced.
const MAX_REQUEST_ID: usize = 200;

/// What the access log needs beyond the request: whose forwarding headers
/// to believe when it names the client.
#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    /// With `--proxy-headers`: the trusted proxies.
    pub proxies: Option<Arc<TrustedProxies>>,
}

/// The worker that served a request, noted by whoever dispatched it: a
/// request extension, there only while the access log is on.
#[derive(Debug, Clone, Default)]
pub struct ServedBy(Arc<AtomicUsize>);

impl ServedBy {
    fn note(&self, worker: WorkerId) {
        self.0.store(worker.index() + 1, Ordering::Relaxed);
    }

    fn worker(&self) -> Option<usize> {
        self.0.load(Ordering::Relaxed).checked_sub(1)
    }
}

/// Sends `request` through a free slot of `pool`, as [`Pool::dispatch`]
/// does; with `served_by`, through a slot taken first, so that its worker
/// can be noted (`dispatch` does not say which worker answered).
///
/// # Cancel safety
///
/// As [`Pool::dispatch`]: dropping the future loses no slot.
pub async fn dispatch<T: Transport>(
    pool: &Pool<T>,
    request: T::Request,
    served_by: Option<&ServedBy>,
) -> Result<T::Response, PoolError> {
    let Some(served_by) = served_by else {
        return pool.dispatch(request).await;
    };
    let mut slot = pool.acquire().await?;
    served_by.note(slot.worker());
    slot.call(request).await
}

/// The middleware: gives the request its id, and logs its line when its
/// response has been sent.
pub async fn record(
    State(log): State<Arc<AccessLog>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = match usable_request_id(request.headers().get(REQUEST_ID)) {
        Some(id) => id,
        None => {
            let id = new_request_id();
            request.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let served_by = ServedBy::default();
    request.extensions_mut().insert(served_by.clone());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    let remote = match &log.proxies {
        Some(proxies) => proxies.remote(peer, request.headers()),
        None => Remote::direct(peer),
    };
    let line = Line {
        client: remote.client,
        method: request.method().clone(),
        uri: request.uri().clone(),
        version: request.version(),
        request_id: id.clone(),
        served_by,
        started,
    };
    // Logs the request if the client goes away before its response.
    let mut pending = Pending(Some(line));
    let mut response = next.run(request).await;
    let line = pending.0.take().expect("taken once");
    response.headers_mut().insert(REQUEST_ID, id);
    let status = response.status().as_u16();
    response.map(|body| {
        Body::new(LoggedBody {
            body,
            line: Some((line, status)),
            sent: 0,
        })
    })
}

/// The request's own id, if it is one to keep.
fn usable_request_id(value: Option<&HeaderValue>) -> Option<HeaderValue> {
    let value = value?;
    let text = value.to_str().ok()?.trim();
    (!text.is_empty() && text.len() <= MAX_REQUEST_ID)
        .then(|| HeaderValue::from_str(text).ok())
        .flatten()
}

/// A new id: 16 hex digits drawn at start, then a counter, so that ids are
/// unique across restarts and sort within a run.
fn new_request_id() -> HeaderValue {
    static RUN: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // std's hasher keys are random per process.
    let run = *RUN.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    let id = format!("{run:016x}{:016x}", NEXT.fetch_add(1, Ordering::Relaxed));
    HeaderValue::from_str(&id).expect("hex digits")
}

/// What the line says about the request, known before its response.
struct Line {
    client: Option<(String, u16)>,
    method: Method,
    uri: Uri,
    version: Version,
    request_id: HeaderValue,
    served_by: ServedBy,
    started: Instant,
}

impl Line {
    /// Logs the line with the response's `status` and the body bytes `sent`
    /// (`None`: no response was sent).
    fn log(&self, status: u16, sent: Option<u64>) {
        let elapsed = self.started.elapsed().as_secs_f64() * 1000.0;
        let client = Client(self.client.as_ref());
        let target = self
            .uri
            .path_and_query()
            .map_or_else(|| self.uri.path(), |path| path.as_str());
        let sent = Optional(sent);
        let request_id = self.request_id.to_str().unwrap_or("-");
        let worker = Optional(self.served_by.worker());
        tracing::info!(
            target: TARGET,
            request_id = %request_id,
            %worker,
            "{client} - \"{} {target} {:?}\" {status} {sent} {elapsed:.1}ms",
            self.method,
            self.version,
        );
    }
}

/// The client as `host:port`, `[v6]:port`, or `-` (a Unix socket's peer).
struct Client<'a>(Option<&'a (String, u16)>);

impl fmt::Display for Client<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((host, port)) if host.contains(':') => write!(f, "[{host}]:{port}"),
            Some((host, port)) => write!(f, "{host}:{port}"),
            None => f.write_str("-"),
        }
    }
}

/// A value, or `-` for none, as common log formats write it.
struct Optional<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for Optional<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A request still waiting for its response: dropped unanswered, it is
/// logged as one whose client went away.
struct Pending(Option<Line>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(line) = self.0.take() {
            line.log(499, None);
        }
    }
}

/// A response body that logs the request's line once it has been sent, or
/// dropped part way (a client that went away mid-stream).
struct LoggedBody {
    body: Body,
    line: Option<(Line, u16)>,
    sent: u64,
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some((line, status)) = self.line.take() {
            line.log(status, Some(self.sent));
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_kept_if_usable_and_made_otherwise() {
        let given = HeaderValue::from_static(" abc-123 ");
        assert_eq!(usable_request_id(Some(&given)).unwrap(), "abc-123");
        let long = HeaderValue::from_str(&"x".repeat(MAX_REQUEST_ID + 1)).unwrap();
        assert!(usable_request_id(Some(&long)).is_none());
        assert!(usable_request_id(Some(&HeaderValue::from_static(""))).is_none());
        assert!(usable_request_id(None).is_none());
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(a.to_str().unwrap()[..16], b.to_str().unwrap()[..16]);
    }

    #[test]
    fn clients_are_written_as_common_logs_write_them() {
        let v4 = ("127.0.0.1".to_owned(), 8080);
        let v6 = ("::1".to_owned(), 8080);
        assert_eq!(Client(Some(&v4)).to_string(), "127.0.0.1:8080");
        assert_eq!(Client(Some(&v6)).to_string(), "[::1]:8080");
        assert_eq!(Client(None).to_string(), "-");
        assert_eq!(Optional::<u64>(None).to_string(), "-");
    }
}
