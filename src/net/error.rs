//! [`ProtocolError`], for a payload that breaks the envelope format, and
//! [`NetError`], for everything that can fail on a socket connection.

use std::fmt;
use std::io;

/// A worker payload that breaks the envelope format of `docs/protocol.md`.
///
/// The worker is at fault; the host should close the connection and open a new one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame carried no payload at all.
    #[error("empty payload: an envelope needs at least a kind byte and a meta length")]
    Empty,
    /// The payload ended inside the 5-byte envelope header.
    #[error("payload of {len} bytes is shorter than the 5-byte envelope header")]
    ShortHeader {
        /// The payload's length.
        len: usize,
    },
    /// The kind byte is not one the protocol defines.
    #[error("unknown envelope kind {}", Kind(*kind))]
    UnknownKind {
        /// The kind byte received.
        kind: u8,
    },
    /// A kind the protocol defines, but not one allowed at this point.
    #[error("unexpected envelope kind {} (expected {expected})", Kind(*kind))]
    UnexpectedKind {
        /// The kind byte received.
        kind: u8,
        /// What was allowed instead, e.g. `` `O` or `X` ``.
        expected: &'static str,
    },
    /// The meta length runs past the end of the payload.
    #[error("meta length {meta_len} runs past the end of a {payload_len}-byte payload")]
    MetaPastEnd {
        /// The meta length from the header.
        meta_len: u32,
        /// The payload's length.
        payload_len: usize,
    },
    /// The meta is not valid UTF-8.
    #[error("the meta of {} is not UTF-8", Kind(*kind))]
    MetaNotUtf8 {
        /// The kind of the envelope.
        kind: u8,
        /// Where the decoding failed.
        #[source]
        source: std::str::Utf8Error,
    },
    /// The meta is not valid JSON.
    #[error("the meta of {} is not valid JSON", Kind(*kind))]
    MetaNotJson {
        /// The kind of the envelope.
        kind: u8,
        /// What the JSON parser reported.
        #[source]
        source: serde_json::Error,
    },
    /// The meta is valid JSON, but not an object.
    #[error("the meta of {} is not a JSON object", Kind(*kind))]
    MetaNotObject {
        /// The kind of the envelope.
        kind: u8,
    },
    /// A field of the meta is missing or has the wrong type.
    #[error("the meta of {} has a missing or mistyped field", Kind(*kind))]
    InvalidMeta {
        /// The kind of the envelope.
        kind: u8,
        /// What the JSON parser reported; its message names the field.
        #[source]
        source: serde_json::Error,
    },
    /// A handshake challenge (`C`) of a version this host does not speak.
    #[error("the worker's handshake is version {version}; this host speaks version 1")]
    UnsupportedHandshakeVersion {
        /// The version byte received.
        version: u8,
    },
    /// A version-1 handshake challenge that is not exactly 34 bytes long.
    #[error("a handshake challenge of {len} bytes; version 1 has 34")]
    ChallengeLength {
        /// The payload's length.
        len: usize,
    },
    /// A multiplexed frame for a stream that has no event in flight and none
    /// being cancelled (`docs/protocol.md`, "Multiplexing").
    #[error("a frame for stream {stream}, which has no event in flight")]
    UnknownStream {
        /// The stream id received.
        stream: u32,
    },
    /// The worker acknowledged multiplexing in a version this host does not
    /// speak.
    #[error("the worker multiplexes in version {version}; this host speaks version 1")]
    UnsupportedMultiplexVersion {
        /// The version received.
        version: u32,
    },
    /// A multiplexed connection carrying this event broke the protocol on
    /// another stream; every event on it failed.
    #[error("the shared connection broke the protocol: {reason}")]
    OnSharedConnection {
        /// What the worker did wrong, as text.
        reason: String,
    },
    /// A WebSocket message (or denial body) sent past the credit the host
    /// had granted (`docs/protocol.md`, "Flow control").
    #[error("the worker sent {cost} credit bytes of WebSocket data with {credit} left")]
    WebSocketCredit {
        /// What the frame cost.
        cost: u64,
        /// The credit left before it, zero or below.
        credit: i64,
    },
    /// A WebSocket text message (`T`) that is not UTF-8.
    #[error("a WebSocket text message is not UTF-8")]
    TextNotUtf8,
    /// A `W` frame whose `type` this host does not know or does not allow
    /// from a worker.
    #[error("a WebSocket control frame of type {0:?}")]
    WebSocketControl(String),
    /// An `O` reply with a status outside `100..=999`.
    #[error("status {status} is outside 100..=999")]
    StatusOutOfRange {
        /// The status received.
        status: i64,
    },
}

/// Everything that can fail on a [`SocketTransport`](super::SocketTransport)
/// connection.
///
/// After any of these the connection is out of step or gone: drop it and open a
/// new one (the pool does so itself).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The socket failed.
    #[error("socket I/O failed")]
    Io(#[from] io::Error),
    /// The worker closed the connection before it sent its ready frame.
    #[error("the worker closed the connection before sending its ready frame")]
    ClosedBeforeReady,
    /// The worker closed the connection before it answered the event.
    #[error("the worker closed the connection before answering the event")]
    Closed,
    /// The worker announced a frame longer than the maximum frame length. The
    /// payload was neither read nor allocated.
    #[error("the worker sent a frame longer than the maximum of {limit} bytes")]
    FrameTooLarge {
        /// The configured maximum frame length.
        limit: usize,
    },
    /// The event's envelope does not fit in the maximum frame length; nothing was
    /// sent.
    #[error("an event envelope of {len} bytes exceeds the maximum frame length of {limit} bytes")]
    EventTooLarge {
        /// The envelope's length (at least; the body alone when that is too long).
        len: usize,
        /// The configured maximum frame length.
        limit: usize,
    },
    /// The worker's answer broke the protocol.
    #[error("the worker broke the protocol")]
    Protocol(#[from] ProtocolError),
    /// The worker's first frame was a well-formed frame, but not a valid ready frame.
    #[error("the worker's first frame was not a valid ready frame")]
    NotReady(#[source] ProtocolError),
    /// The worker's first frame was a handshake challenge that cannot be answered.
    #[error("the worker's handshake challenge is malformed or of another version")]
    Handshake(#[source] ProtocolError),
    /// The worker asks the host to prove that it knows the worker's secret, and
    /// the connect has none: its [`WorkerInfo`](crate::WorkerInfo) carries no
    /// [`WorkerSecret`](super::WorkerSecret) in its attachments, or it was
    /// [`connect_endpoint`](super::SocketTransport::connect_endpoint).
    #[error(
        "the worker at `{endpoint}` asks for its secret, and the host has none for that worker \
         (the launcher attached none to its process)"
    )]
    NoSecret {
        /// The endpoint connected to.
        endpoint: String,
    },
    /// The worker closed the connection after the host answered its challenge:
    /// the secret is wrong, the answer came after the worker's deadline, or the
    /// worker has all the connections it accepts.
    #[error(
        "the worker closed the connection after the handshake: wrong secret, too late, or no connection left"
    )]
    Rejected,
    /// The endpoint is not one the socket transport can connect to.
    #[error("the socket transport cannot connect to endpoint `{0}`")]
    UnsupportedEndpoint(String),
    /// An earlier exchange on this connection failed or was cancelled, so an answer
    /// may still be on its way: the connection cannot carry another event.
    #[error("an earlier exchange on this connection did not finish; it cannot carry another event")]
    Unusable,
    /// The reader of a streamed response ([`ResponseParts`](super::ResponseParts))
    /// went away before the response was complete, e.g. because the HTTP client
    /// disconnected.
    #[error("the reader of the streamed response went away before it was complete")]
    StreamAbandoned,
    /// The event is a WebSocket event and the worker did not say in its ready
    /// frame that it speaks WebSocket (`docs/protocol.md`, "WebSocket");
    /// nothing was sent, and the connection stays usable.
    #[error("the worker does not speak WebSocket (its ready frame does not say so)")]
    WebSocketUnsupported,
    /// The WebSocket event's [`WebSocketLink`](super::WebSocketLink) was used
    /// by an earlier call already; nothing was sent.
    #[error("this WebSocket event's link was used by an earlier call")]
    WebSocketLinkUsed,
    /// The worker's streamed answer came out of order (a body chunk before the
    /// head, a second head, a whole answer after the head).
    #[error("the worker's streamed answer broke the protocol")]
    StreamOrder(#[source] ProtocolError),
}

/// Shows a kind byte as `` `O` `` when it is printable ASCII, as `0x07` otherwise.
struct Kind(u8);

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "`{}`", char::from(self.0))
        } else {
            write!(f, "{:#04x}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_bytes_are_shown_readably() {
        assert_eq!(
            ProtocolError::UnknownKind { kind: b'Q' }.to_string(),
            "unknown envelope kind `Q`"
        );
        assert_eq!(
            ProtocolError::UnknownKind { kind: 0 }.to_string(),
            "unknown envelope kind 0x00"
        );
    }
}
