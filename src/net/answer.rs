//! Reading a worker's answer, the same on a connection of its own and on a
//! stream of a multiplexed one: what a frame-read error means, and the frames
//! of a streamed answer in their order.

use std::io;

use bytes::Bytes;
use tokio_util::codec::LengthDelimitedCodecError;

use super::envelope::{AnswerFrame, Reply};
use super::error::{NetError, ProtocolError};
use super::response_stream::{ResponsePart, ResponseSink};

/// The bytes of a frame's length prefix (a big-endian `u32`).
pub(crate) const PREFIX_LEN: usize = 4;

/// Reads the answer to an event that asked for streaming: a whole `O` or
/// `X`, or `H`, `B`..., and `D` (or `X`), forwarding the parts to `sink`.
/// `frames` gives the exchange's frames in order, from a connection of its
/// own or from a stream of a multiplexed one.
pub(super) async fn read_streamed<F: AnswerFrames>(
    frames: &mut F,
    sink: &ResponseSink,
) -> Result<Reply, NetError> {
    let (status, mut body_bytes) = match AnswerFrame::decode(frames.next_answer_frame().await?)? {
        AnswerFrame::Whole(reply) => return Ok(reply),
        AnswerFrame::Head {
            status,
            headers,
            body,
        } => {
            forward(sink, ResponsePart::Head { status, headers }).await?;
            (status, forward_body(sink, body).await?)
        }
        AnswerFrame::Chunk(_) => return Err(out_of_order(b'B', "`H`, `O` or `X`")),
        AnswerFrame::Done(_) => return Err(out_of_order(b'D', "`H`, `O` or `X`")),
    };
    loop {
        match AnswerFrame::decode(frames.next_answer_frame().await?)? {
            AnswerFrame::Chunk(body) => body_bytes += forward_body(sink, body).await?,
            AnswerFrame::Done(body) => {
                body_bytes += forward_body(sink, body).await?;
                forward(sink, ResponsePart::End).await?;
                return Ok(Reply::Streamed { status, body_bytes });
            }
            AnswerFrame::Whole(reply @ Reply::Raised { .. }) => return Ok(reply),
            AnswerFrame::Whole(_) => return Err(out_of_order(b'O', "`B`, `D` or `X`")),
            AnswerFrame::Head { .. } => return Err(out_of_order(b'H', "`B`, `D` or `X`")),
        }
    }
}

/// Where the frames of one exchange's answer come from.
pub(super) trait AnswerFrames: Send {
    /// The next frame of the answer.
    fn next_answer_frame(&mut self) -> impl Future<Output = Result<Bytes, NetError>> + Send;
}

async fn forward(sink: &ResponseSink, part: ResponsePart) -> Result<(), NetError> {
    if sink.send(part).await {
        Ok(())
    } else {
        Err(NetError::StreamAbandoned)
    }
}

/// Forwards a body chunk unless it is empty; returns its length.
async fn forward_body(sink: &ResponseSink, body: Bytes) -> Result<u64, NetError> {
    let len = body.len() as u64;
    if len > 0 {
        forward(sink, ResponsePart::Chunk(body)).await?;
    }
    Ok(len)
}

fn out_of_order(kind: u8, expected: &'static str) -> NetError {
    NetError::StreamOrder(ProtocolError::UnexpectedKind { kind, expected })
}

/// Classifies an error from reading a frame.
pub(crate) fn read_error(err: io::Error, limit: usize, closed: NetError) -> NetError {
    if err
        .get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
    {
        return NetError::FrameTooLarge { limit };
    }
    // At end of stream inside a frame, tokio-util's `decode_eof` reports an
    // `ErrorKind::Other` ("bytes remaining on stream"); socket errors from the OS
    // are never of that kind.
    if err.kind() == io::ErrorKind::Other {
        return closed;
    }
    closed_or_io(err, closed)
}

/// Reports a peer that closed or reset the connection as `closed`.
pub(super) fn closed_or_io(err: io::Error, closed: NetError) -> NetError {
    match err.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => closed,
        _ => NetError::Io(err),
    }
}
