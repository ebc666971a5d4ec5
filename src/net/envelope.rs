//! The envelope inside every frame: [`Event`] (host to worker), [`Reply`] and
//! [`Ready`] (worker to host), and the frames of a streamed response (`H`,
//! `B`, `D`), which the transport forwards to the event's [`ResponseSink`].
//!
//! ```text
//! kind u8 | meta_len u32 BE | meta: meta_len bytes of UTF-8 JSON object | body: the rest
//! ```
//!
//! Bodies stay [`Bytes`]: an event body is copied once, into the outgoing frame,
//! and a reply body is a slice of the frame it arrived in.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::ProtocolError;
use super::response_stream::ResponseSink;
use super::websocket_link::WebSocketLink;
use crate::trace_context::TraceContext;

const READY: u8 = b'R';
const EVENT: u8 = b'E';
pub(crate) const RETURNED: u8 = b'O';
pub(crate) const RAISED: u8 = b'X';
pub(crate) const HEAD: u8 = b'H';
pub(crate) const BODY: u8 = b'B';

/// Whether an answer frame of `kind` is followed by more of the same answer
/// (the head and body chunks of a streamed one).
pub(crate) fn answer_goes_on(kind: u8) -> bool {
    matches!(kind, HEAD | BODY)
}

/// Whether a frame of `kind` ends a WebSocket exchange: the app's end (`O`)
/// or its exception (`X`); every other frame of it goes on.
pub(crate) fn ends_websocket(kind: u8) -> bool {
    matches!(kind, RETURNED | RAISED)
}
pub(crate) const DONE: u8 = b'D';
/// The kinds of a WebSocket exchange (`docs/protocol.md`, "WebSocket"):
/// control, text and binary messages, and credit.
pub(crate) const WS_CONTROL: u8 = b'W';
pub(crate) const WS_TEXT: u8 = b'T';
pub(crate) const WS_BINARY: u8 = b'Y';
pub(crate) const WS_CREDIT: u8 = b'U';

/// Kind byte and meta length.
pub(crate) const HEADER_LEN: usize = 5;

/// One event for a worker's handler: a body, and for an HTTP event its method,
/// path and headers, and what else the front end knows about the request
/// (scheme, client and server addresses, HTTP version), and the caller's W3C
/// trace context if it has one ([`with_trace`](Self::with_trace)). Kind `E` on
/// the wire.
///
/// An event may also carry a [`ResponseSink`]
/// ([`with_response_sink`](Self::with_response_sink)): the worker may then
/// stream its response, and the transport forwards the parts into the sink as
/// they arrive.
///
/// # Examples
///
/// ```
/// use async_worker_pool::net::Event;
///
/// let event = Event::http("GET", "/items/3?q=x", vec![("accept".into(), "*/*".into())], "")
///     .with_scheme("https")
///     .with_client("203.0.113.7", 51234)
///     .with_server("127.0.0.1", 8080)
///     .with_http_version("1.1");
/// assert_eq!(event.scheme(), Some("https"));
/// assert_eq!(event.client(), Some(("203.0.113.7", 51234)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    http: Option<HttpRequest>,
    body: Bytes,
    sink: Option<ResponseSink>,
    trace: Option<TraceContext>,
    websocket: Option<WebSocketLink>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    scheme: Option<String>,
    client: Option<(String, u16)>,
    server: Option<(String, u16)>,
    http_version: Option<String>,
    /// The subprotocols a WebSocket client offered, in its order.
    subprotocols: Vec<String>,
}

/// The meta of an HTTP event, borrowed from the [`Event`] for encoding. The
/// optional keys are left out when unknown, so that the meta of an event
/// without them is what it always was.
#[derive(serde::Serialize)]
struct HttpMeta<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a [(String, String)],
    #[serde(skip_serializing_if = "Option::is_none")]
    scheme: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<(&'a str, u16)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<(&'a str, u16)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_version: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<TraceMeta<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    websocket: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    subprotocols: Option<&'a [String]>,
    /// The host's receive window of a WebSocket exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<u32>,
}

/// The meta of a plain event that asks for a streamed response or carries a
/// trace context (without either it is `{}`).
#[derive(serde::Serialize)]
struct PlainMeta<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<TraceMeta<'a>>,
}

/// The `"trace"` key of an event's meta.
#[derive(serde::Serialize)]
struct TraceMeta<'a> {
    traceparent: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
}

impl<'a> From<&'a TraceContext> for TraceMeta<'a> {
    fn from(trace: &'a TraceContext) -> Self {
        Self {
            traceparent: trace.traceparent(),
            tracestate: trace.tracestate(),
        }
    }
}

impl Event {
    /// A plain event: only a body (meta `{}`).
    pub fn plain(body: impl Into<Bytes>) -> Self {
        Self {
            http: None,
            body: body.into(),
            sink: None,
            trace: None,
            websocket: None,
        }
    }

    /// An HTTP event. Headers are pairs so that a name may repeat.
    pub fn http(
        method: impl Into<String>,
        path: impl Into<String>,
        headers: Vec<(String, String)>,
        body: impl Into<Bytes>,
    ) -> Self {
        Self {
            http: Some(HttpRequest {
                method: method.into(),
                path: path.into(),
                headers,
                scheme: None,
                client: None,
                server: None,
                http_version: None,
                subprotocols: Vec::new(),
            }),
            body: body.into(),
            sink: None,
            trace: None,
            websocket: None,
        }
    }

    /// A WebSocket event (`docs/protocol.md`, "WebSocket"): the client's
    /// opening handshake, a `GET` of `path` with `headers`, and the ends of
    /// the two-way exchange that follows, `link`, which the transport pumps
    /// for as long as the exchange lasts. The subprotocols the client offered
    /// are read from its `Sec-WebSocket-Protocol` headers.
    ///
    /// The event is never bounded by the pool's `event_timeout` (see
    /// [`Transport::is_long_lived`](crate::Transport::is_long_lived)), and
    /// goes only to a worker that said in its ready frame that it speaks
    /// WebSocket; any other fails with
    /// [`NetError::WebSocketUnsupported`](super::NetError::WebSocketUnsupported)
    /// before anything is sent.
    ///
    /// # Examples
    ///
    /// ```
    /// use async_worker_pool::net::{Event, WebSocketLink};
    ///
    /// let (link, _to_worker, _from_worker) = WebSocketLink::channel();
    /// let headers = vec![("sec-websocket-protocol".into(), "chat, superchat".into())];
    /// let event = Event::websocket("/ws?room=1", headers, link).with_scheme("ws");
    /// assert!(event.is_websocket());
    /// assert_eq!(event.subprotocols(), ["chat", "superchat"]);
    /// ```
    pub fn websocket(
        path: impl Into<String>,
        headers: Vec<(String, String)>,
        link: WebSocketLink,
    ) -> Self {
        let subprotocols = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-protocol"))
            .flat_map(|(_, value)| value.split(','))
            .map(str::trim)
            .filter(|protocol| !protocol.is_empty())
            .map(String::from)
            .collect();
        let mut event = Self::http("GET", path, headers, Bytes::new());
        if let Some(http) = &mut event.http {
            http.subprotocols = subprotocols;
        }
        event.websocket = Some(link);
        event
    }

    /// Whether it is a WebSocket event.
    pub fn is_websocket(&self) -> bool {
        self.websocket.is_some()
    }

    /// The subprotocols a WebSocket event's client offered; empty for other
    /// events.
    pub fn subprotocols(&self) -> &[String] {
        self.http.as_ref().map_or(&[], |http| &http.subprotocols)
    }

    /// The exchange's ends, for the transport.
    pub(crate) fn websocket_link(&self) -> Option<&WebSocketLink> {
        self.websocket.as_ref()
    }

    /// The event with the caller's trace context, which the worker's handler
    /// sees (the reference worker as `context.trace`). Meta key `"trace"`; a
    /// worker that predates it ignores it.
    #[must_use]
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The caller's trace context, if the event carries one.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// Sets the scheme the client used (`http`, `https`); meta key `scheme`.
    /// Ignored for a plain event.
    #[must_use]
    pub fn with_scheme(mut self, scheme: impl Into<String>) -> Self {
        if let Some(http) = &mut self.http {
            http.scheme = Some(scheme.into());
        }
        self
    }

    /// Sets the client's address (the peer of the front end's connection, or
    /// what a trusted proxy said it was); meta key `client`, `[host, port]`.
    /// Ignored for a plain event.
    #[must_use]
    pub fn with_client(mut self, host: impl Into<String>, port: u16) -> Self {
        if let Some(http) = &mut self.http {
            http.client = Some((host.into(), port));
        }
        self
    }

    /// Sets the address the request arrived on; meta key `server`,
    /// `[host, port]`. Ignored for a plain event.
    #[must_use]
    pub fn with_server(mut self, host: impl Into<String>, port: u16) -> Self {
        if let Some(http) = &mut self.http {
            http.server = Some((host.into(), port));
        }
        self
    }

    /// Sets the HTTP version, as ASGI spells it (`1.0`, `1.1`, `2`); meta key
    /// `http_version`. Ignored for a plain event.
    #[must_use]
    pub fn with_http_version(mut self, version: impl Into<String>) -> Self {
        if let Some(http) = &mut self.http {
            http.http_version = Some(version.into());
        }
        self
    }

    /// Asks the worker to stream its response (meta `"stream": true`) and gives
    /// the transport the sink to forward the parts into as they arrive. A
    /// worker may still answer with one `O` frame; then nothing goes into the
    /// sink and the call returns [`Reply::Returned`] as usual.
    ///
    /// # Examples
    ///
    /// ```
    /// use async_worker_pool::net::{Event, ResponseSink};
    ///
    /// let (sink, _parts) = ResponseSink::channel(8);
    /// let event = Event::http("GET", "/feed", vec![], "").with_response_sink(sink);
    /// assert!(event.streams());
    /// ```
    #[must_use]
    pub fn with_response_sink(mut self, sink: ResponseSink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Whether the event asks for a streamed response.
    pub fn streams(&self) -> bool {
        self.sink.is_some()
    }

    /// The sink of a streamed response, for the transport.
    pub(crate) fn sink(&self) -> Option<&ResponseSink> {
        self.sink.as_ref()
    }

    /// The scheme, if the front end set one.
    pub fn scheme(&self) -> Option<&str> {
        self.http.as_ref()?.scheme.as_deref()
    }

    /// The client's address, if the front end set one.
    pub fn client(&self) -> Option<(&str, u16)> {
        let (host, port) = self.http.as_ref()?.client.as_ref()?;
        Some((host.as_str(), *port))
    }

    /// The server's address, if the front end set one.
    pub fn server(&self) -> Option<(&str, u16)> {
        let (host, port) = self.http.as_ref()?.server.as_ref()?;
        Some((host.as_str(), *port))
    }

    /// The HTTP version, if the front end set one.
    pub fn http_version(&self) -> Option<&str> {
        self.http.as_ref()?.http_version.as_deref()
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body, giving up the rest.
    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// Whether it is an HTTP event.
    pub fn is_http(&self) -> bool {
        self.http.is_some()
    }

    /// The HTTP method, or `None` for a plain event.
    pub fn method(&self) -> Option<&str> {
        self.http.as_ref().map(|http| http.method.as_str())
    }

    /// The HTTP path, or `None` for a plain event.
    pub fn path(&self) -> Option<&str> {
        self.http.as_ref().map(|http| http.path.as_str())
    }

    /// The HTTP headers, in order; empty for a plain event.
    pub fn headers(&self) -> &[(String, String)] {
        self.http.as_ref().map_or(&[], |http| &http.headers)
    }

    /// Appends the event's envelope (the frame payload, without the frame's length
    /// prefix) to `dst`, reserving room for all of it first.
    pub fn encode(&self, dst: &mut BytesMut) {
        let trace_hint = self.trace.as_ref().map_or(0, |trace| {
            48 + trace.traceparent().len() + trace.tracestate().map_or(0, str::len)
        });
        let meta_hint = trace_hint
            + self.http.as_ref().map_or(2, |http| {
                // Quotes, brackets and key names; escapes may need more, which is fine.
                160 + http.method.len()
                    + http.path.len()
                    + http
                        .headers
                        .iter()
                        .map(|(name, value)| name.len() + value.len() + 8)
                        .sum::<usize>()
            });
        dst.reserve(HEADER_LEN + meta_hint + self.body.len());
        dst.put_u8(EVENT);
        let len_at = dst.len();
        dst.put_u32(0); // patched below, once the meta's length is known
        let meta_start = dst.len();
        let trace = self.trace.as_ref().map(TraceMeta::from);
        match &self.http {
            None if trace.is_none() && self.sink.is_none() => dst.put_slice(b"{}"),
            None => {
                let meta = PlainMeta {
                    stream: self.sink.is_some(),
                    trace,
                };
                serde_json::to_writer(dst.writer(), &meta)
                    .expect("strings serialize into a BytesMut without error");
            }
            Some(http) => {
                let meta = HttpMeta {
                    method: &http.method,
                    path: &http.path,
                    headers: &http.headers,
                    scheme: http.scheme.as_deref(),
                    client: http
                        .client
                        .as_ref()
                        .map(|(host, port)| (host.as_str(), *port)),
                    server: http
                        .server
                        .as_ref()
                        .map(|(host, port)| (host.as_str(), *port)),
                    http_version: http.http_version.as_deref(),
                    stream: self.sink.is_some(),
                    trace,
                    websocket: self.websocket.is_some(),
                    subprotocols: self
                        .websocket
                        .as_ref()
                        .map(|_| http.subprotocols.as_slice()),
                    window: self.websocket.as_ref().map(WebSocketLink::window),
                };
                serde_json::to_writer(dst.writer(), &meta)
                    .expect("strings serialize into a BytesMut without error");
            }
        }
        // Meta over 4 GiB cannot be framed anyway: the frame-length check refuses it.
        let meta_len = u32::try_from(dst.len() - meta_start).unwrap_or(u32::MAX);
        dst[len_at..meta_start].copy_from_slice(&meta_len.to_be_bytes());
        dst.put_slice(&self.body);
    }
}

/// A worker's answer to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// The handler returned (kind `O`).
    Returned {
        /// The status, `100..=999`; 200 when the worker sent none.
        status: u16,
        /// The response headers, in order; a name may repeat.
        headers: Vec<(String, String)>,
        /// The response body, a slice of the frame it arrived in.
        body: Bytes,
    },
    /// The response was streamed (`H`, `B` ..., `D`): its head and body went
    /// into the event's [`ResponseSink`] as they arrived.
    Streamed {
        /// The status the head carried.
        status: u16,
        /// How many body bytes went into the sink.
        body_bytes: u64,
    },
    /// The handler raised an exception (kind `X`). After a streamed head, this
    /// means the stream was cut: the sink got no [`End`](super::ResponsePart::End).
    Raised {
        /// The exception's class name, e.g. `ValueError`.
        exception_type: String,
        /// The exception's message.
        message: String,
        /// The formatted traceback. The worker may trim it from the front to fit
        /// a frame, possibly inside a UTF-8 sequence, so invalid UTF-8 is replaced
        /// with U+FFFD rather than refused.
        traceback: String,
    },
}

#[derive(Deserialize)]
struct ReturnedMeta {
    // i64, not u16, so that 70000 is reported as a bad status, not a bad type.
    #[serde(default)]
    status: Option<i64>,
    #[serde(default)]
    headers: Option<Vec<HeaderPair>>,
}

/// A `[name, value]` header. Deserialized by hand because serde's tuples report
/// an extra element as a JSON syntax error rather than as a mistyped field.
pub(crate) struct HeaderPair(pub(crate) String, pub(crate) String);

impl<'de> Deserialize<'de> for HeaderPair {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairVisitor;

        impl<'de> serde::de::Visitor<'de> for PairVisitor {
            type Value = HeaderPair;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a [name, value] pair of strings")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<HeaderPair, A::Error> {
                use serde::de::Error;
                let name = seq
                    .next_element()?
                    .ok_or_else(|| Error::invalid_length(0, &self))?;
                let value = seq
                    .next_element()?
                    .ok_or_else(|| Error::invalid_length(1, &self))?;
                let mut len = 2;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    len += 1;
                }
                if len > 2 {
                    return Err(Error::invalid_length(len, &self));
                }
                Ok(HeaderPair(name, value))
            }
        }

        deserializer.deserialize_seq(PairVisitor)
    }
}

#[derive(Deserialize)]
struct RaisedMeta {
    #[serde(rename = "type")]
    exception_type: String,
    message: String,
}

impl Reply {
    /// Decodes a worker's answer from a frame payload.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] for anything but a well-formed `O` or `X` envelope,
    /// including a ready frame (`R`) or an event (`E`). Never panics, whatever
    /// the input.
    pub fn decode(mut payload: Bytes) -> Result<Self, ProtocolError> {
        let (kind, meta_end) = split(&payload)?;
        match kind {
            RETURNED if &payload[HEADER_LEN..meta_end] == b"{}" => {
                // A plain 200 without headers, as the reference worker sends
                // it: nothing to parse.
                Ok(Self::Returned {
                    status: 200,
                    headers: Vec::new(),
                    body: payload.split_off(meta_end),
                })
            }
            RETURNED => {
                let (status, headers) = head(kind, &payload[HEADER_LEN..meta_end])?;
                Ok(Self::Returned {
                    status,
                    headers,
                    body: payload.split_off(meta_end),
                })
            }
            RAISED => {
                let meta: RaisedMeta = parse_meta(kind, &payload[HEADER_LEN..meta_end])?;
                Ok(Self::Raised {
                    exception_type: meta.exception_type,
                    message: meta.message,
                    traceback: String::from_utf8_lossy(&payload[meta_end..]).into_owned(),
                })
            }
            READY | EVENT | HEAD | BODY | DONE | WS_CONTROL | WS_TEXT | WS_BINARY | WS_CREDIT => {
                Err(ProtocolError::UnexpectedKind {
                    kind,
                    expected: "`O` or `X`",
                })
            }
            _ => Err(ProtocolError::UnknownKind { kind }),
        }
    }
}

/// One frame of a worker's answer to an event that asked for streaming.
#[derive(Debug)]
pub(crate) enum AnswerFrame {
    /// `O` or `X`: the whole answer, as without streaming.
    Whole(Reply),
    /// `H`: the response's status and headers, and its first body bytes.
    Head {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// `B`: more of the body.
    Chunk(Bytes),
    /// `D`: the last of the body; the exchange is over.
    Done(Bytes),
}

impl AnswerFrame {
    /// Decodes one frame of an answer to a streamed event.
    ///
    /// # Errors
    ///
    /// As [`Reply::decode`], with `H`, `B` and `D` allowed too. Never panics.
    pub(crate) fn decode(mut payload: Bytes) -> Result<Self, ProtocolError> {
        let (kind, meta_end) = split(&payload)?;
        match kind {
            HEAD => {
                let (status, headers) = head(kind, &payload[HEADER_LEN..meta_end])?;
                Ok(Self::Head {
                    status,
                    headers,
                    body: payload.split_off(meta_end),
                })
            }
            BODY => Ok(Self::Chunk(payload.split_off(meta_end))),
            DONE => Ok(Self::Done(payload.split_off(meta_end))),
            _ => Reply::decode(payload).map(Self::Whole),
        }
    }
}

/// The status and headers of an `O` or `H` meta.
pub(crate) fn head(kind: u8, raw: &[u8]) -> Result<(u16, Vec<(String, String)>), ProtocolError> {
    let meta: ReturnedMeta = parse_meta(kind, raw)?;
    let status = match meta.status {
        None => 200,
        Some(status) => u16::try_from(status)
            .ok()
            .filter(|status| (100..=999).contains(status))
            .ok_or(ProtocolError::StatusOutOfRange { status })?,
    };
    let headers = meta
        .headers
        .unwrap_or_default()
        .into_iter()
        .map(|HeaderPair(name, value)| (name, value))
        .collect();
    Ok((status, headers))
}

/// The ready frame a worker sends first on every connection (kind `R`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pid: u32,
    worker_id: u32,
    websocket: Option<u32>,
}

#[derive(Deserialize)]
struct ReadyMeta {
    pid: u32,
    worker_id: u32,
    /// The version of the WebSocket section the worker speaks; absent in a
    /// worker that does not.
    #[serde(default)]
    websocket: Option<u32>,
}

impl Ready {
    /// The worker's operating-system process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The worker number it was started with.
    pub fn worker_id(&self) -> u32 {
        self.worker_id
    }

    /// The version of the WebSocket exchange the worker speaks (meta key
    /// `websocket`), or `None` for a worker that does not: such a worker
    /// gets no WebSocket event.
    pub fn websocket_version(&self) -> Option<u32> {
        self.websocket
    }

    /// Decodes a ready frame from a frame payload. A body, which the protocol
    /// leaves empty, is ignored.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] for anything but a well-formed `R` envelope. Never
    /// panics, whatever the input.
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let (kind, meta_end) = split(payload)?;
        match kind {
            READY => {
                let meta: ReadyMeta = parse_meta(kind, &payload[HEADER_LEN..meta_end])?;
                Ok(Self {
                    pid: meta.pid,
                    worker_id: meta.worker_id,
                    websocket: meta.websocket,
                })
            }
            EVENT | RETURNED | RAISED | HEAD | BODY | DONE | WS_CONTROL | WS_TEXT | WS_BINARY
            | WS_CREDIT => Err(ProtocolError::UnexpectedKind {
                kind,
                expected: "`R`",
            }),
            _ => Err(ProtocolError::UnknownKind { kind }),
        }
    }
}

/// Checks the envelope header; returns the kind and where the meta ends.
///
/// An unknown kind is reported before a bad length: it says more about what the
/// worker sent.
pub(crate) fn split(payload: &[u8]) -> Result<(u8, usize), ProtocolError> {
    let Some((&kind, rest)) = payload.split_first() else {
        return Err(ProtocolError::Empty);
    };
    if ![
        READY, EVENT, RETURNED, RAISED, HEAD, BODY, DONE, WS_CONTROL, WS_TEXT, WS_BINARY, WS_CREDIT,
    ]
    .contains(&kind)
    {
        return Err(ProtocolError::UnknownKind { kind });
    }
    let Some((len, _)) = rest.split_first_chunk::<4>() else {
        return Err(ProtocolError::ShortHeader { len: payload.len() });
    };
    let meta_len = u32::from_be_bytes(*len);
    // usize is at least 32 bits on every target tokio supports.
    let meta_end = HEADER_LEN.saturating_add(meta_len as usize);
    if meta_end > payload.len() {
        return Err(ProtocolError::MetaPastEnd {
            meta_len,
            payload_len: payload.len(),
        });
    }
    Ok((kind, meta_end))
}

pub(crate) fn parse_meta<T: DeserializeOwned>(kind: u8, raw: &[u8]) -> Result<T, ProtocolError> {
    let text =
        std::str::from_utf8(raw).map_err(|source| ProtocolError::MetaNotUtf8 { kind, source })?;
    // Derived structs also accept a JSON array, so check for an object by hand: a
    // JSON text that starts with `{` is an object or not JSON at all.
    let is_object = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{');
    match serde_json::from_str(text) {
        Ok(meta) if is_object => Ok(meta),
        Ok(_) => Err(ProtocolError::MetaNotObject { kind }),
        Err(source) if source.is_data() && is_object => {
            Err(ProtocolError::InvalidMeta { kind, source })
        }
        Err(source) if source.is_data() => Err(ProtocolError::MetaNotObject { kind }),
        Err(source) => Err(ProtocolError::MetaNotJson { kind, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An envelope as a worker would build it.
    fn envelope(kind: u8, meta: &str, body: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(kind);
        out.put_u32(meta.len() as u32);
        out.put_slice(meta.as_bytes());
        out.put_slice(body);
        out.freeze()
    }

    /// Splits an encoded event back into its kind, meta (parsed) and body.
    fn open_event(payload: &[u8]) -> (u8, serde_json::Value, Vec<u8>) {
        let (kind, meta_end) = split(payload).expect("a well-formed header");
        let meta = serde_json::from_slice(&payload[HEADER_LEN..meta_end]).expect("JSON meta");
        (kind, meta, payload[meta_end..].to_vec())
    }

    fn encoded(event: &Event) -> BytesMut {
        let mut out = BytesMut::new();
        event.encode(&mut out);
        out
    }

    fn all_byte_values() -> Vec<u8> {
        (0..=255).collect()
    }

    #[test]
    fn plain_event_encodes_as_empty_meta_and_raw_body() {
        let event = Event::plain(all_byte_values());
        let payload = encoded(&event);
        assert_eq!(&payload[..5], b"E\0\0\0\x02");
        let (kind, meta, body) = open_event(&payload);
        assert_eq!(kind, b'E');
        assert_eq!(meta, serde_json::json!({}));
        assert_eq!(body, all_byte_values());
        assert!(!event.is_http());
        assert_eq!(event.method(), None);
        assert_eq!(event.path(), None);
        assert!(event.headers().is_empty());
    }

    #[test]
    fn http_event_encodes_method_path_and_repeated_headers() {
        let headers = vec![
            ("accept".to_string(), "a/b".to_string()),
            ("x-q\"uote".to_string(), "é\n".to_string()),
            ("accept".to_string(), "c/d".to_string()),
        ];
        let event = Event::http("POST", "/p?q=1", headers.clone(), &b"body"[..]);
        let (kind, meta, body) = open_event(&encoded(&event));
        assert_eq!(kind, b'E');
        assert_eq!(
            meta,
            serde_json::json!({
                "method": "POST",
                "path": "/p?q=1",
                "headers": [["accept", "a/b"], ["x-q\"uote", "é\n"], ["accept", "c/d"]],
            })
        );
        assert_eq!(body, b"body");
        assert_eq!(event.method(), Some("POST"));
        assert_eq!(event.path(), Some("/p?q=1"));
        assert_eq!(event.headers(), headers);
        assert_eq!(event.into_body(), Bytes::from_static(b"body"));
    }

    #[test]
    fn what_the_front_end_knows_travels_in_optional_meta_keys() {
        let (sink, _parts) = ResponseSink::channel(1);
        let event = Event::http("GET", "/p?q=1", vec![], "")
            .with_scheme("https")
            .with_client("::1", 4000)
            .with_server("127.0.0.1", 8080)
            .with_http_version("2")
            .with_response_sink(sink);
        let (_, meta, _) = open_event(&encoded(&event));
        assert_eq!(
            meta,
            serde_json::json!({
                "method": "GET",
                "path": "/p?q=1",
                "headers": [],
                "scheme": "https",
                "client": ["::1", 4000],
                "server": ["127.0.0.1", 8080],
                "http_version": "2",
                "stream": true,
            })
        );
        assert_eq!(event.server(), Some(("127.0.0.1", 8080)));
        assert_eq!(event.http_version(), Some("2"));
        // Ignored for a plain event, which has no request line to go with them.
        let plain = Event::plain("x").with_scheme("https").with_client("h", 1);
        assert_eq!(plain.scheme(), None);
        assert_eq!(plain.client(), None);
        assert_eq!(&encoded(&plain)[..], b"E\0\0\0\x02{}x");
    }

    #[test]
    fn stream_frames_decode_head_chunks_and_done() {
        let head = AnswerFrame::decode(envelope(b'H', r#"{"status":201}"#, b"a")).unwrap();
        assert!(
            matches!(head, AnswerFrame::Head { status: 201, ref headers, ref body } if headers.is_empty() && body == "a")
        );
        assert!(
            matches!(AnswerFrame::decode(envelope(b'B', "{}", b"b")), Ok(AnswerFrame::Chunk(body)) if body == "b")
        );
        assert!(
            matches!(AnswerFrame::decode(envelope(b'D', "{}", b"")), Ok(AnswerFrame::Done(body)) if body.is_empty())
        );
        assert!(matches!(
            AnswerFrame::decode(envelope(b'O', "{}", b"")),
            Ok(AnswerFrame::Whole(Reply::Returned { .. }))
        ));
        assert!(matches!(
            AnswerFrame::decode(envelope(b'H', r#"{"status":5}"#, b"")),
            Err(ProtocolError::StatusOutOfRange { status: 5 })
        ));
        for kind in [b'H', b'B', b'D'] {
            assert!(matches!(
                Reply::decode(envelope(kind, "{}", b"")),
                Err(ProtocolError::UnexpectedKind { .. })
            ));
        }
    }

    #[test]
    fn a_trace_context_travels_as_the_trace_key_of_plain_and_http_events() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceContext::parse(parent, Some("congo=t61rcWkgMzE")).unwrap();
        let plain = Event::plain("b").with_trace(trace.clone());
        let (_, meta, body) = open_event(&encoded(&plain));
        assert_eq!(
            meta,
            serde_json::json!({"trace": {"traceparent": parent, "tracestate": "congo=t61rcWkgMzE"}})
        );
        assert_eq!(body, b"b");
        let without_state = TraceContext::parse(parent, None).unwrap();
        let http = Event::http("GET", "/", vec![], "").with_trace(without_state);
        let (_, meta, _) = open_event(&encoded(&http));
        assert_eq!(
            meta,
            serde_json::json!({
                "method": "GET", "path": "/", "headers": [],
                "trace": {"traceparent": parent},
            })
        );
        assert_eq!(
            http.trace().map(TraceContext::trace_id),
            Some(&parent[3..35])
        );
    }

    #[test]
    fn a_plain_event_that_streams_and_carries_a_trace_has_both_keys() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (sink, _parts) = ResponseSink::channel(1);
        let event = Event::plain("b")
            .with_response_sink(sink)
            .with_trace(TraceContext::parse(parent, None).unwrap());
        let (_, meta, _) = open_event(&encoded(&event));
        assert_eq!(
            meta,
            serde_json::json!({"stream": true, "trace": {"traceparent": parent}})
        );
    }

    #[test]
    fn encode_appends_to_what_is_already_in_the_buffer() {
        let mut out = BytesMut::from(&b"prefix"[..]);
        Event::plain("x").encode(&mut out);
        assert_eq!(&out[..], b"prefixE\0\0\0\x02{}x");
    }

    #[test]
    fn returned_reply_decodes_status_headers_and_body_without_copying() {
        let payload = envelope(
            b'O',
            r#"{"status": 201, "headers": [["a", "1"], ["a", "2"]], "later": true}"#,
            &all_byte_values(),
        );
        let body_ptr = payload[payload.len() - 256..].as_ptr();
        let Reply::Returned {
            status,
            headers,
            body,
        } = Reply::decode(payload).unwrap()
        else {
            panic!("expected Returned");
        };
        assert_eq!(status, 201);
        assert_eq!(
            headers,
            [("a".into(), "1".into()), ("a".into(), "2".into())]
        );
        assert_eq!(body, all_byte_values());
        assert_eq!(body.as_ptr(), body_ptr, "the body is a slice of the frame");
    }

    #[test]
    fn returned_reply_defaults_to_status_200_and_no_headers() {
        let expected = Reply::Returned {
            status: 200,
            headers: vec![],
            body: Bytes::from_static(b"hi"),
        };
        // `{}` exactly takes the short way; any other spelling is parsed.
        for meta in ["{}", " { } ", r#"{"headers": []}"#] {
            assert_eq!(
                Reply::decode(envelope(b'O', meta, b"hi")).unwrap(),
                expected,
                "{meta}"
            );
        }
        assert!(matches!(
            Reply::decode(envelope(b'O', "{}", b"")),
            Ok(Reply::Returned { ref body, .. }) if body.is_empty()
        ));
    }

    #[test]
    fn raised_reply_decodes_type_message_and_lossy_traceback() {
        let reply = Reply::decode(envelope(
            b'X',
            r#"{"type": "ValueError", "message": "boom"}"#,
            b"\xa9 trimmed Traceback",
        ))
        .unwrap();
        assert_eq!(
            reply,
            Reply::Raised {
                exception_type: "ValueError".into(),
                message: "boom".into(),
                traceback: "\u{fffd} trimmed Traceback".into(),
            }
        );
    }

    #[test]
    fn ready_frame_decodes_pid_and_worker_id() {
        let ready =
            Ready::decode(&envelope(b'R', r#"{"pid": 4321, "worker_id": 7}"#, b"")).unwrap();
        assert_eq!(ready.pid(), 4321);
        assert_eq!(ready.worker_id(), 7);
    }

    #[test]
    fn empty_payload_is_refused() {
        assert!(matches!(
            Reply::decode(Bytes::new()),
            Err(ProtocolError::Empty)
        ));
        assert!(matches!(Ready::decode(b""), Err(ProtocolError::Empty)));
    }

    #[test]
    fn payload_shorter_than_the_header_is_refused() {
        assert!(matches!(
            Reply::decode(Bytes::from_static(b"O\0\0")),
            Err(ProtocolError::ShortHeader { len: 3 })
        ));
    }

    #[test]
    fn unknown_kind_is_refused() {
        assert!(matches!(
            Reply::decode(envelope(b'Z', "{}", b"")),
            Err(ProtocolError::UnknownKind { kind: b'Z' })
        ));
        assert!(matches!(
            Ready::decode(&envelope(0, "{}", b"")),
            Err(ProtocolError::UnknownKind { kind: 0 })
        ));
        // Reported before a short or overlong header: it says more.
        for payload in [&b"Z"[..], b"\xffnot an envelope"] {
            assert!(matches!(
                Reply::decode(Bytes::copy_from_slice(payload)),
                Err(ProtocolError::UnknownKind { .. })
            ));
        }
    }

    #[test]
    fn ready_frame_where_a_reply_is_expected_is_refused() {
        let ready = envelope(b'R', r#"{"pid": 1, "worker_id": 0}"#, b"");
        assert!(matches!(
            Reply::decode(ready),
            Err(ProtocolError::UnexpectedKind { kind: b'R', .. })
        ));
        assert!(matches!(
            Reply::decode(envelope(b'E', "{}", b"")),
            Err(ProtocolError::UnexpectedKind { kind: b'E', .. })
        ));
    }

    #[test]
    fn reply_where_a_ready_frame_is_expected_is_refused() {
        assert!(matches!(
            Ready::decode(&envelope(b'O', "{}", b"")),
            Err(ProtocolError::UnexpectedKind { kind: b'O', .. })
        ));
    }

    #[test]
    fn meta_length_past_the_end_is_refused() {
        let mut payload = BytesMut::from(&b"O\xff\xff\xff\xff{}"[..]);
        assert!(matches!(
            Reply::decode(payload.split().freeze()),
            Err(ProtocolError::MetaPastEnd {
                meta_len: u32::MAX,
                payload_len: 7
            })
        ));
        assert!(matches!(
            Reply::decode(Bytes::from_static(b"O\0\0\0\x03{}")),
            Err(ProtocolError::MetaPastEnd { meta_len: 3, .. })
        ));
    }

    #[test]
    fn meta_that_is_not_utf8_is_refused() {
        let mut payload = BytesMut::new();
        payload.put_slice(b"O\0\0\0\x04{\"\xff\"");
        assert!(matches!(
            Reply::decode(payload.freeze()),
            Err(ProtocolError::MetaNotUtf8 { kind: b'O', .. })
        ));
    }

    #[test]
    fn meta_that_is_not_json_is_refused() {
        for meta in ["", "{", "{\"status\": }", "{} {}", "nope"] {
            assert!(
                matches!(
                    Reply::decode(envelope(b'O', meta, b"")),
                    Err(ProtocolError::MetaNotJson { kind: b'O', .. })
                ),
                "{meta:?}"
            );
        }
    }

    #[test]
    fn meta_that_is_not_an_object_is_refused() {
        for meta in [
            "[200, []]",
            "[]",
            "\"x\"",
            "3",
            "null",
            " [\"ValueError\", \"m\"]",
        ] {
            assert!(
                matches!(
                    Reply::decode(envelope(b'O', meta, b"")),
                    Err(ProtocolError::MetaNotObject { kind: b'O' })
                ),
                "{meta:?}"
            );
            assert!(
                matches!(
                    Reply::decode(envelope(b'X', meta, b"")),
                    Err(ProtocolError::MetaNotObject { kind: b'X' })
                ),
                "{meta:?}"
            );
        }
        assert!(matches!(
            Ready::decode(&envelope(b'R', "[1, 2]", b"")),
            Err(ProtocolError::MetaNotObject { kind: b'R' })
        ));
    }

    #[test]
    fn meta_fields_of_the_wrong_type_are_refused() {
        let cases = [
            (b'O', r#"{"status": "200"}"#),
            (b'O', r#"{"status": 200.5}"#),
            (b'O', r#"{"headers": {"a": "1"}}"#),
            (b'O', r#"{"headers": [["a"]]}"#),
            (b'O', r#"{"headers": [["a", "1", "2"]]}"#),
            (b'O', r#"{"headers": [["a", 1]]}"#),
            (b'X', r#"{"type": 1, "message": "m"}"#),
            (b'X', r#"{"type": "ValueError"}"#),
        ];
        for (kind, meta) in cases {
            assert!(
                matches!(
                    Reply::decode(envelope(kind, meta, b"")),
                    Err(ProtocolError::InvalidMeta { .. })
                ),
                "{meta}"
            );
        }
        for meta in [r#"{"pid": -1, "worker_id": 0}"#, r#"{"pid": 1}"#] {
            assert!(
                matches!(
                    Ready::decode(&envelope(b'R', meta, b"")),
                    Err(ProtocolError::InvalidMeta { kind: b'R', .. })
                ),
                "{meta}"
            );
        }
    }

    #[test]
    fn status_outside_100_to_999_is_refused() {
        for status in [0_i64, 99, 1000, 70_000, -200, i64::MAX] {
            let meta = format!(r#"{{"status": {status}}}"#);
            assert!(
                matches!(
                    Reply::decode(envelope(b'O', &meta, b"")),
                    Err(ProtocolError::StatusOutOfRange { status: got }) if got == status
                ),
                "{status}"
            );
        }
        for status in [100, 999] {
            let meta = format!(r#"{{"status": {status}}}"#);
            assert!(Reply::decode(envelope(b'O', &meta, b"")).is_ok());
        }
    }
}
