//! The glue between HTTP (the `http` crate's types, which axum and
//! hyper use) and the socket transport's envelopes: a request becomes an
//! [`Event`], a [`Reply`] becomes a response, and a [`PoolError`] becomes the
//! status a gateway should answer with.
//!
//! | outcome | status |
//! |---|---|
//! | the handler returned | its own status, headers and body |
//! | the handler raised | 500 |
//! | [`AcquireTimeout`](PoolError::AcquireTimeout), [`QueueFull`](PoolError::QueueFull) | 503 with `Retry-After` |
//! | [`NoWorkerAvailable`](PoolError::NoWorkerAvailable) | 503 with `Retry-After` |
//! | [`Closed`](PoolError::Closed) | 503 |
//! | [`EventTimeout`](PoolError::EventTimeout), [`WorkerUnresponsive`](PoolError::WorkerUnresponsive) | 504 |
//! | an event over the frame limit ([`NetError::EventTooLarge`]) | 413 |
//! | [`WorkerExited`](PoolError::WorkerExited), a protocol or socket error, an invalid reply | 502 |
//!
//! Every error answer's body is the status's reason phrase and nothing else
//! ("Internal Server Error"): an exception's message, a socket path or a
//! worker's address is for the operator's log, where it goes, never for the
//! client, which may be anyone.
//!
//! ```
//! use async_worker_pool::http::{error_response, event_from_request, response_from_reply};
//! use async_worker_pool::net::Reply;
//! use async_worker_pool::PoolError;
//! use bytes::Bytes;
//! use std::time::Duration;
//!
//! let request = http::Request::post("/greet?lang=en")
//!     .header("content-type", "text/plain")
//!     .body(Bytes::from("world"))
//!     .unwrap();
//! let event = event_from_request(request);
//! assert_eq!((event.method(), event.path()), (Some("POST"), Some("/greet?lang=en")));
//!
//! let reply = Reply::Returned { status: 201, headers: vec![], body: Bytes::from("hi") };
//! assert_eq!(response_from_reply(reply).status(), 201);
//!
//! let busy = error_response(&PoolError::AcquireTimeout { waited: Duration::from_secs(10) });
//! assert_eq!(busy.status(), 503);
//! assert_eq!(busy.headers()["retry-after"], "1");
//! ```

use ::http::header::{CONTENT_TYPE, RETRY_AFTER};
use ::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use bytes::Bytes;

use crate::error::PoolError;
use crate::net::{Event, NetError, Reply};
use crate::trace_context::TraceContext;

/// The W3C trace context's headers.
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The `Retry-After` a gateway sends with a 503 that waiting may cure, in
/// seconds: a slot or a restarted worker is usually back within one.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An HTTP request as an event: its method, its target (path and query), its
/// headers (a value that is not UTF-8 is decoded lossily), its body, and its
/// W3C trace context when it has a valid one ([`trace_from_headers`]).
pub fn event_from_request(request: Request<Bytes>) -> Event {
    let (parts, body) = request.into_parts();
    event_from_parts(&parts.method, &parts.uri, &parts.headers, body)
}

/// [`event_from_request`] for a front end that holds the request in pieces,
/// as axum's extractors give them.
pub fn event_from_parts(method: &Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Event {
    let event = Event::http(
        method.as_str(),
        request_target(uri),
        header_pairs(headers).collect(),
        body,
    );
    match trace_from_headers(headers) {
        Some(trace) => event.with_trace(trace),
        None => event,
    }
}

/// The request's W3C trace context: its `traceparent` header, with its
/// `tracestate` headers joined by commas as the format asks. `None` when
/// there is no `traceparent`, more than one, or one that is not valid (see
/// [`TraceContext::parse`]); the request then simply starts no trace here.
pub fn trace_from_headers(headers: &HeaderMap) -> Option<TraceContext> {
    let mut parents = headers.get_all(TRACEPARENT).iter();
    let (Some(parent), None) = (parents.next(), parents.next()) else {
        return None;
    };
    let parent = parent.to_str().ok()?;
    let mut state = String::new();
    for value in headers.get_all(TRACESTATE) {
        let Ok(value) = value.to_str() else { continue };
        if !state.is_empty() {
            state.push(',');
        }
        state.push_str(value);
    }
    TraceContext::parse(parent, Some(state.as_str())).ok()
}

/// The request's target as a worker sees it: its path and query, without the
/// scheme and authority of an absolute URI.
pub fn request_target(uri: &Uri) -> String {
    uri.path_and_query().map_or_else(
        || uri.path().to_owned(),
        |target| target.as_str().to_owned(),
    )
}

/// Headers as `(name, value)` strings, in order, a repeated name repeated; a
/// value that is not UTF-8 is decoded lossily.
pub fn header_pairs(headers: &HeaderMap) -> impl Iterator<Item = (String, String)> + '_ {
    headers.iter().map(|(name, value)| {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        (name.as_str().to_owned(), value)
    })
}

/// A worker's reply as a response: what the handler returned, with its status,
/// headers and body; a 500 if it raised (logged at WARN with its traceback);
/// a 502 if the status is not one HTTP allows. A header that HTTP cannot carry
/// is dropped, with a WARN.
pub fn response_from_reply(reply: Reply) -> Response<Bytes> {
    match reply {
        Reply::Returned {
            status,
            headers,
            body,
        } => response_with_head(status, headers, body),
        Reply::Streamed { status, .. } => {
            tracing::warn!(
                status,
                "the worker streamed its answer into the event's sink; its body is not in the reply"
            );
            reason_only(StatusCode::BAD_GATEWAY)
        }
        Reply::Raised {
            exception_type,
            message,
            traceback,
        } => {
            tracing::warn!(exception_type, message, traceback, "handler raised");
            reason_only(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// A response with a worker's status and headers around `body`: the head of
/// a returned reply, or of a streamed one whose body follows as a stream. A
/// status that HTTP does not allow gives a 502 instead; a header that HTTP
/// cannot carry is dropped, with a WARN.
///
/// # Examples
///
/// ```
/// use async_worker_pool::http::response_with_head;
/// use bytes::Bytes;
///
/// let headers = vec![("x-a".to_string(), "1".to_string()), ("x-a".to_string(), "2".to_string())];
/// let response = response_with_head(201, headers, Bytes::from_static(b"made"));
/// assert_eq!(response.status(), 201);
/// assert_eq!(response.headers().get_all("x-a").iter().count(), 2);
/// assert_eq!(response_with_head(42, vec![], Bytes::new()).status(), 502);
/// ```
pub fn response_with_head<B: From<Bytes>>(
    status: u16,
    headers: Vec<(String, String)>,
    body: B,
) -> Response<B> {
    let Ok(status) = StatusCode::from_u16(status) else {
        tracing::warn!(status, "the handler returned an invalid status");
        return reason_only(StatusCode::BAD_GATEWAY).map(B::from);
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let map = response.headers_mut();
    map.reserve(headers.len());
    for (name, value) in headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            _ => tracing::warn!(
                name,
                "dropping a header the handler returned that HTTP cannot carry"
            ),
        }
    }
    response
}

/// A response as the reply a worker would have sent: for a transport or a
/// test double that answers with `http` types. A header value that
/// is not UTF-8 is decoded lossily.
pub fn reply_from_response(response: Response<Bytes>) -> Reply {
    let (parts, body) = response.into_parts();
    Reply::Returned {
        status: parts.status.as_u16(),
        headers: header_pairs(&parts.headers).collect(),
        body,
    }
}

/// The status a gateway answers with when the pool fails an event (see the
/// table in the [module docs](self)).
pub fn error_status(error: &PoolError) -> StatusCode {
    match error {
        PoolError::AcquireTimeout { .. }
        | PoolError::QueueFull { .. }
        | PoolError::NoWorkerAvailable
        | PoolError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        // A worker that blocked its event loop ran the event out of time with it.
        PoolError::EventTimeout { .. } | PoolError::WorkerUnresponsive { .. } => {
            StatusCode::GATEWAY_TIMEOUT
        }
        PoolError::Transport { .. } => match error.transport_error::<NetError>() {
            Some(NetError::EventTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_GATEWAY,
        },
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// How many seconds a client should wait before it retries, for the errors
/// that waiting may cure (no free slot, a full queue, every worker
/// restarting); `None` for the rest, a closed pool included.
pub fn retry_after(error: &PoolError) -> Option<u64> {
    match error {
        PoolError::AcquireTimeout { .. }
        | PoolError::QueueFull { .. }
        | PoolError::NoWorkerAvailable => Some(RETRY_AFTER_SECS),
        _ => None,
    }
}

/// The whole answer to a failed event: [`error_status`], `Retry-After` from
/// [`retry_after`], and the status's reason phrase as the body. The error
/// itself, with its source, goes to the log: at WARN for a failure of a
/// worker, at DEBUG for a wait that found no slot, which an overload repeats
/// for every event it turns away.
pub fn error_response(error: &PoolError) -> Response<Bytes> {
    let status = error_status(error);
    let detail = match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        tracing::debug!(status = status.as_u16(), error = detail, "event failed");
    } else {
        tracing::warn!(status = status.as_u16(), error = detail, "event failed");
    }
    let mut response = reason_only(status);
    if let Some(seconds) = retry_after(error) {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A plain-text response whose body is `status`'s reason phrase alone.
fn reason_only(status: StatusCode) -> Response<Bytes> {
    let reason = status.canonical_reason().unwrap_or("Error");
    plain(status, format!("{reason}\n"))
}

/// A plain-text response.
fn plain(status: StatusCode, text: String) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::WorkerId;
    use std::time::Duration;

    #[test]
    fn every_error_gets_the_status_a_gateway_should_answer_with() {
        let worker = WorkerId::new(0);
        let cases = [
            (
                PoolError::AcquireTimeout {
                    waited: Duration::from_secs(1),
                },
                503,
                Some(1),
            ),
            (PoolError::QueueFull { max_waiters: 4 }, 503, Some(1)),
            (PoolError::NoWorkerAvailable, 503, Some(1)),
            (PoolError::Closed, 503, None),
            (
                PoolError::EventTimeout {
                    worker,
                    timeout: Duration::from_secs(1),
                },
                504,
                None,
            ),
            (
                PoolError::WorkerUnresponsive {
                    worker,
                    generation: 1,
                },
                504,
                None,
            ),
            (
                PoolError::WorkerExited {
                    worker,
                    generation: 1,
                },
                502,
                None,
            ),
            (PoolError::ConnectionUnusable { worker }, 502, None),
            (
                PoolError::Transport {
                    worker,
                    source: Box::new(NetError::Closed),
                },
                502,
                None,
            ),
            (
                PoolError::Transport {
                    worker,
                    source: Box::new(NetError::EventTooLarge { len: 10, limit: 5 }),
                },
                413,
                None,
            ),
        ];
        for (error, status, retry) in cases {
            let response = error_response(&error);
            assert_eq!(response.status(), status, "{error:?}");
            let header = response.headers().get(RETRY_AFTER);
            assert_eq!(
                header.map(|value| value.to_str().unwrap().parse::<u64>().unwrap()),
                retry,
                "{error:?}"
            );
            // The reason phrase alone: nothing of the error (a worker, a
            // socket path, a cause) reaches the client.
            let reason = format!("{}\n", response.status().canonical_reason().unwrap());
            assert_eq!(response.body(), reason.as_str(), "{error:?}");
        }
    }

    #[test]
    fn a_returned_reply_keeps_its_status_headers_in_order_and_body() {
        let reply = Reply::Returned {
            status: 418,
            headers: vec![
                ("set-cookie".into(), "a=1".into()),
                ("x-kind".into(), "tea".into()),
                ("set-cookie".into(), "b=2".into()),
            ],
            body: Bytes::from_static(b"short and stout"),
        };
        let response = response_from_reply(reply.clone());
        assert_eq!(response.status(), 418);
        let cookies: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(response.body(), "short and stout");
        // And back: the same status, headers and body.
        let Reply::Returned {
            status,
            headers,
            body,
        } = reply_from_response(response)
        else {
            panic!("a response is a returned reply");
        };
        assert_eq!(status, 418);
        assert_eq!(body, "short and stout");
        assert_eq!(headers.len(), 3);
    }

    #[test]
    fn a_raised_reply_is_a_500_and_a_bad_status_or_header_a_502_or_a_drop() {
        let raised = Reply::Raised {
            exception_type: "ValueError".into(),
            message: "no".into(),
            traceback: String::new(),
        };
        let response = response_from_reply(raised);
        assert_eq!(response.status(), 500);
        assert_eq!(response.body(), "Internal Server Error\n");
        let bad_status = Reply::Returned {
            status: 99,
            headers: vec![],
            body: Bytes::new(),
        };
        assert_eq!(response_from_reply(bad_status).status(), 502);
        let bad_header = Reply::Returned {
            status: 200,
            headers: vec![("bad name".into(), "x".into()), ("ok".into(), "y".into())],
            body: Bytes::new(),
        };
        let response = response_from_reply(bad_header);
        assert_eq!(response.headers().len(), 1);
        assert_eq!(response.headers()["ok"], "y");
    }

    #[test]
    fn a_request_becomes_an_http_event_with_its_target_and_headers() {
        let request = Request::put("http://example.com/a/b?x=1&y=2")
            .header("x-one", "1")
            .header("x-one", "2")
            .body(Bytes::from_static(b"payload"))
            .unwrap();
        let event = event_from_request(request);
        assert_eq!(event.method(), Some("PUT"));
        assert_eq!(event.path(), Some("/a/b?x=1&y=2"));
        assert_eq!(
            event.headers(),
            [
                ("x-one".to_owned(), "1".to_owned()),
                ("x-one".to_owned(), "2".to_owned())
            ]
        );
        assert_eq!(event.body(), "payload");
        assert_eq!(event.trace(), None);
    }

    #[test]
    fn a_traceparent_header_travels_with_the_event_and_tracestates_join() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let request = Request::get("/")
            .header("traceparent", parent)
            .header("tracestate", "rojo=1")
            .header("tracestate", "congo=2")
            .body(Bytes::new())
            .unwrap();
        let event = event_from_request(request);
        let trace = event.trace().expect("a trace context");
        assert_eq!(trace.traceparent(), parent);
        assert_eq!(trace.tracestate(), Some("rojo=1,congo=2"));
        // The headers still reach the worker as they came.
        assert!(
            event
                .headers()
                .iter()
                .any(|(name, _)| name == "traceparent")
        );
    }

    #[test]
    fn an_invalid_or_repeated_traceparent_carries_no_trace() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = HeaderMap::new();
        headers.append("traceparent", HeaderValue::from_static("00-zz-01"));
        assert_eq!(trace_from_headers(&headers), None);
        headers.clear();
        headers.append("traceparent", HeaderValue::from_static(parent));
        headers.append("traceparent", HeaderValue::from_static(parent));
        assert_eq!(trace_from_headers(&headers), None);
    }
}
