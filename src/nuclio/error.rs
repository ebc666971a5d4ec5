//! [`NuclioError`]: everything that can fail on a connection to Nuclio's async
//! wrapper, and [`SpecError`]: a function spec the pool cannot be configured from.

use std::io;

use crate::error::ConfigError;

/// Everything that can fail on a [`NuclioTransport`](super::NuclioTransport)
/// connection.
///
/// After any of these but [`Unusable`](Self::Unusable) the connection is out
/// of step or gone: drop it and open a new one (the pool does so itself).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NuclioError {
    /// The socket failed.
    #[error("socket I/O failed")]
    Io(#[from] io::Error),
    /// The endpoint is not a TCP address; the async wrapper listens on TCP only.
    #[error("the Nuclio transport connects to TCP endpoints only, not `{0}`")]
    UnsupportedEndpoint(String),
    /// The wrapper closed the connection before it sent its start packet `s`.
    #[error("the wrapper closed the connection before it started serving it")]
    ClosedBeforeReady,
    /// The wrapper's first packet on a connection was not `s`.
    #[error("the wrapper's first packet was `{kind}`, not the start packet `s`")]
    NotReady {
        /// The packet type it sent instead.
        kind: char,
    },
    /// The wrapper closed the connection before it answered the event.
    #[error("the wrapper closed the connection before answering the event")]
    Closed,
    /// The wrapper sent a line longer than the maximum line length. At most that
    /// much of it was buffered.
    #[error("the wrapper sent a line longer than the maximum of {limit} bytes")]
    LineTooLong {
        /// The configured maximum line length.
        limit: usize,
    },
    /// The wrapper sent an empty line, which has no packet type.
    #[error("the wrapper sent an empty line")]
    EmptyLine,
    /// A packet type the protocol does not define.
    #[error("unknown packet type `{kind}`")]
    UnknownPacket {
        /// The packet type received.
        kind: char,
    },
    /// A packet type the protocol defines, but not one allowed at this point.
    #[error("unexpected packet `{kind}` (expected {expected})")]
    UnexpectedPacket {
        /// The packet type received.
        kind: char,
        /// What was allowed instead.
        expected: &'static str,
    },
    /// A packet's JSON is malformed, or a field is missing or has the wrong type.
    #[error("the JSON of packet `{kind}` is invalid")]
    InvalidJson {
        /// The packet type.
        kind: char,
        /// What the JSON parser reported; its message names the field.
        #[source]
        source: serde_json::Error,
    },
    /// A batch response (an `r` packet holding a list) with no response in it.
    #[error("the wrapper answered with an empty batch response")]
    EmptyBatch,
    /// A body the wrapper said was base64 is not.
    #[error("a body or body chunk is not valid base64")]
    InvalidBase64(#[source] base64::DecodeError),
    /// The `body_encoding` of a response is neither `text` nor `base64`.
    #[error("unknown body encoding {0:?} (expected \"text\" or \"base64\")")]
    UnknownBodyEncoding(String),
    /// A response with a status outside `100..=999`.
    #[error("status {status} is outside 100..=999")]
    StatusOutOfRange {
        /// The status received.
        status: i64,
    },
    /// A streamed response grew beyond the maximum body length.
    #[error("a streamed response grew beyond the maximum of {limit} bytes")]
    StreamTooLarge {
        /// The configured maximum body length.
        limit: usize,
    },
    /// The event could not be encoded as msgpack; nothing was sent.
    #[error("the event cannot be encoded as msgpack")]
    Encode(#[source] rmp_serde::encode::Error),
    /// The encoded event is longer than the maximum event length; nothing was sent.
    #[error("an encoded event of {len} bytes exceeds the maximum of {limit} bytes")]
    EventTooLarge {
        /// The encoded length.
        len: usize,
        /// The configured maximum event length.
        limit: usize,
    },
    /// An earlier exchange on this connection failed or was cancelled, so an answer
    /// may still be on its way: the connection cannot carry another event.
    #[error("an earlier exchange on this connection did not finish; it cannot carry another event")]
    Unusable,
}

/// A Nuclio function spec that cannot be turned into a
/// [`PoolConfig`](crate::PoolConfig).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The document is not valid JSON, or a field has the wrong type or value.
    #[error("invalid function spec at `{path}`")]
    Invalid {
        /// Where in the document, e.g. `spec.triggers.http.numWorkers`.
        path: String,
        /// What the JSON parser reported.
        #[source]
        source: serde_json::Error,
    },
    /// The spec has no trigger of that name.
    #[error("the function spec has no trigger {name:?} (it has: {available})")]
    NoSuchTrigger {
        /// The name asked for.
        name: String,
        /// The triggers it has, comma-separated.
        available: String,
    },
    /// The values parse, but the pool cannot run with them.
    #[error(transparent)]
    Config(#[from] ConfigError),
}
