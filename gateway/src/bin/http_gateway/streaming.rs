//! Streamed responses: the worker's head answers the HTTP client as soon as it
//! arrives, and the body follows chunk by chunk (chunked transfer) while the
//! dispatch that reads it from the worker runs to its end.
//!
//! Nothing is spawned: the dispatch future lives in the handler until the head
//! arrives, then in the response body. So when the client goes away, at any
//! point, the dispatch is dropped as a plain request's would be: the pool
//! restarts the connection and the worker's app sees `http.disconnect`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures_util::Stream;

use async_worker_pool::PoolError;
use async_worker_pool::net::{Event, Reply, ResponsePart, ResponseParts, ResponseSink};

use async_worker_pool_gateway::access_log::{self, ServedBy};
use async_worker_pool_gateway::answers;

use crate::GatewayPool;
use crate::responses;

/// Parts of a response buffered between the worker's connection and the HTTP
/// client: enough to keep both busy, few enough that a slow client slows the
/// worker down instead of filling the gateway's memory.
const BUFFERED_PARTS: usize = 16;

type Dispatch = Pin<Box<dyn Future<Output = Result<Reply, PoolError>> + Send>>;

/// Dispatches `event` asking for a streamed response, and answers with the
/// head as soon as the worker sends it; `served_by` notes its worker for the
/// access log.
pub async fn forward(
    pool: Arc<GatewayPool>,
    event: Event,
    served_by: Option<ServedBy>,
) -> Response {
    let (sink, mut parts) = ResponseSink::channel(BUFFERED_PARTS);
    let event = event.with_response_sink(sink);
    let mut dispatch: Dispatch =
        Box::pin(async move { access_log::dispatch(&pool, event, served_by.as_ref()).await });
    let head = tokio::select! {
        part = parts.recv() => part,
        result = &mut dispatch => match result {
            // The whole stream fit in the buffer before the head was looked at.
            Ok(Reply::Streamed { .. }) => return streamed(parts.recv().await, parts, None),
            Ok(reply) => return responses::from_reply(reply),
            Err(error) => return answers::from_pool_error(error),
        },
    };
    match head {
        // The sink is gone, so the call has ended: its outcome says how.
        None => match dispatch.await {
            Ok(reply) => responses::from_reply(reply),
            Err(error) => answers::from_pool_error(error),
        },
        head => streamed(head, parts, Some(dispatch)),
    }
}

fn streamed(
    head: Option<ResponsePart>,
    parts: ResponseParts,
    dispatch: Option<Dispatch>,
) -> Response {
    let Some(ResponsePart::Head { status, headers }) = head else {
        let text = "the worker's streamed response did not start with its head\n";
        let content_type = ("content-type".into(), "text/plain; charset=utf-8".into());
        return responses::with_head(502, vec![content_type], Body::from(text));
    };
    let body = Body::from_stream(StreamedBody {
        parts,
        dispatch,
        ended: false,
    });
    responses::with_head(status, headers, body)
}

/// The body of a streamed response: the chunks as they come, and the dispatch
/// that feeds them, polled along until it has finished, so that the slot is
/// released cleanly before the body ends.
struct StreamedBody {
    parts: ResponseParts,
    dispatch: Option<Dispatch>,
    /// The worker's end of body came.
    ended: bool,
}

impl Stream for StreamedBody {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(dispatch) = this.dispatch.as_mut() {
                if let Poll::Ready(result) = dispatch.as_mut().poll(cx) {
                    this.dispatch = None;
                    log_cut(&result);
                }
            }
            match this.parts.poll_recv(cx) {
                Poll::Ready(Some(ResponsePart::Chunk(bytes))) => {
                    return Poll::Ready(Some(Ok(bytes)));
                }
                Poll::Ready(Some(ResponsePart::End)) => this.ended = true,
                Poll::Ready(Some(_)) => {}
                // Polled above and still running: it wakes this task when done.
                Poll::Ready(None) if this.dispatch.is_some() => return Poll::Pending,
                Poll::Ready(None) if this.ended => return Poll::Ready(None),
                // An error ends the chunked body without its last chunk, so the
                // client sees a cut response, not a complete one.
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(io::Error::other(
                        "the worker's streamed response was cut",
                    ))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn log_cut(result: &Result<Reply, PoolError>) {
    match result {
        Ok(Reply::Streamed { .. }) => {}
        Ok(Reply::Raised {
            exception_type,
            message,
            traceback,
        }) => tracing::warn!(
            exception_type,
            message,
            traceback,
            "the app raised mid-stream; the response is cut"
        ),
        Ok(other) => tracing::warn!(?other, "unexpected end of a streamed response"),
        Err(error) => tracing::warn!(%error, "a streamed response failed; it is cut"),
    }
}
