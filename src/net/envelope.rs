//! The envelope inside every frame: [`Event`] (host to worker), [`Reply`] and
//! [`Ready`] (worker to host).
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
use crate::trace_context::TraceContext;

const READY: u8 = b'R';
const EVENT: u8 = b'E';
const RETURNED: u8 = b'O';
const RAISED: u8 = b'X';

/// Kind byte and meta length.
const HEADER_LEN: usize = 5;

/// One event for a worker's handler: a body, for an HTTP event its method,
/// path and headers, and the caller's trace context if it has one. Kind `E`
/// on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    http: Option<HttpRequest>,
    body: Bytes,
    trace: Option<TraceContext>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

/// The meta of an HTTP event, borrowed from the [`Event`] for encoding.
#[derive(serde::Serialize)]
struct HttpMeta<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a [(String, String)],
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<TraceMeta<'a>>,
}

/// The meta of a plain event that carries a trace context.
#[derive(serde::Serialize)]
struct PlainMeta<'a> {
    trace: TraceMeta<'a>,
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
            trace: None,
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
            }),
            body: body.into(),
            trace: None,
        }
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
                48 + http.method.len()
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
        let written = match (&self.http, trace) {
            (None, None) => {
                dst.put_slice(b"{}");
                Ok(())
            }
            (None, Some(trace)) => serde_json::to_writer(dst.writer(), &PlainMeta { trace }),
            (Some(http), trace) => {
                let meta = HttpMeta {
                    method: &http.method,
                    path: &http.path,
                    headers: &http.headers,
                    trace,
                };
                serde_json::to_writer(dst.writer(), &meta)
            }
        };
        written.expect("strings serialize into a BytesMut without error");
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
    /// The handler raised an exception (kind `X`).
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
struct HeaderPair(String, String);

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
                let meta: ReturnedMeta = parse_meta(kind, &payload[HEADER_LEN..meta_end])?;
                let status = match meta.status {
                    None => 200,
                    Some(status) => u16::try_from(status)
                        .ok()
                        .filter(|status| (100..=999).contains(status))
                        .ok_or(ProtocolError::StatusOutOfRange { status })?,
                };
                let body = payload.split_off(meta_end);
                Ok(Self::Returned {
                    status,
                    headers: meta
                        .headers
                        .unwrap_or_default()
                        .into_iter()
                        .map(|HeaderPair(name, value)| (name, value))
                        .collect(),
                    body,
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
            READY | EVENT => Err(ProtocolError::UnexpectedKind {
                kind,
                expected: "`O` or `X`",
            }),
            _ => Err(ProtocolError::UnknownKind { kind }),
        }
    }
}

/// The ready frame a worker sends first on every connection (kind `R`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pid: u32,
    worker_id: u32,
}

#[derive(Deserialize)]
struct ReadyMeta {
    pid: u32,
    worker_id: u32,
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
                })
            }
            EVENT | RETURNED | RAISED => Err(ProtocolError::UnexpectedKind {
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
fn split(payload: &[u8]) -> Result<(u8, usize), ProtocolError> {
    let Some((&kind, rest)) = payload.split_first() else {
        return Err(ProtocolError::Empty);
    };
    if ![READY, EVENT, RETURNED, RAISED].contains(&kind) {
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

fn parse_meta<T: DeserializeOwned>(kind: u8, raw: &[u8]) -> Result<T, ProtocolError> {
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
