//! [`ResponseSink`] and [`ResponseParts`]: the two ends of a streamed response.
//! The transport writes the head and body chunks into the sink as the worker
//! sends them; the front end reads them from the parts and answers its client
//! as they come, instead of when the worker has finished.

use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

/// One part of a streamed response, in order: one [`Head`](Self::Head), any
/// number of [`Chunk`](Self::Chunk)s, then [`End`](Self::End). A stream that
/// closes without `End` was cut: the worker raised mid-stream, the event timed
/// out, or the connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponsePart {
    /// The response's status and headers.
    Head {
        /// The status, `100..=999`.
        status: u16,
        /// The headers, in order; a name may repeat.
        headers: Vec<(String, String)>,
    },
    /// More of the body; never empty.
    Chunk(Bytes),
    /// The body is complete.
    End,
}

/// The sending end of a streamed response, carried by an
/// [`Event`](super::Event) (see
/// [`with_response_sink`](super::Event::with_response_sink)).
///
/// The channel is bounded: when the reader falls behind, the transport waits
/// before it reads more from the worker, so a slow HTTP client slows the
/// worker down instead of filling the host's memory. When the reader is
/// dropped, the call fails with
/// [`NetError::StreamAbandoned`](super::NetError::StreamAbandoned) and the
/// connection is restarted, so the worker sees its client go away.
#[derive(Debug, Clone)]
pub struct ResponseSink {
    tx: mpsc::Sender<ResponsePart>,
}

/// Two sinks are equal when they feed the same channel.
impl PartialEq for ResponseSink {
    fn eq(&self, other: &Self) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

impl Eq for ResponseSink {}

impl ResponseSink {
    /// A sink and the parts it feeds, holding at most `capacity` parts not yet
    /// read (at least 1).
    ///
    /// # Examples
    ///
    /// ```
    /// use async_worker_pool::net::{ResponsePart, ResponseSink};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (sink, mut parts) = ResponseSink::channel(4);
    /// drop(sink); // a transport would write into it first
    /// assert_eq!(parts.recv().await, None::<ResponsePart>);
    /// # }
    /// ```
    pub fn channel(capacity: usize) -> (Self, ResponseParts) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx }, ResponseParts { rx })
    }

    /// Hands `part` to the reader, waiting while the channel is full; `false`
    /// if the reader is gone.
    pub(crate) async fn send(&self, part: ResponsePart) -> bool {
        self.tx.send(part).await.is_ok()
    }
}

/// The receiving end of a streamed response: see [`ResponseSink::channel`].
#[derive(Debug)]
pub struct ResponseParts {
    rx: mpsc::Receiver<ResponsePart>,
}

impl ResponseParts {
    /// The next part, or `None` once every sink is dropped (the event's call
    /// has ended).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a part is taken only when the future completes.
    pub async fn recv(&mut self) -> Option<ResponsePart> {
        self.rx.recv().await
    }

    /// Polls for the next part, as [`recv`](Self::recv) waits for it.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ResponsePart>> {
        self.rx.poll_recv(cx)
    }
}
