//! [`NuclioResponse`] and [`NuclioBody`]: the wrapper's answer to one event.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Deserializer};

use super::error::NuclioError;
use super::packet;

/// A response body: whole, or the chunks of a streamed response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NuclioBody {
    /// The body of an `r` response.
    Full(Bytes),
    /// The chunks of a streamed response (`c`, then `b` lines, then `e`), in
    /// order; the first is the body of the `c` packet.
    ///
    /// The whole stream has been read when the response is returned: the pool
    /// holds the connection until [`Transport::call`](crate::Transport::call)
    /// returns, so a stream read later could not be told from the next event's
    /// answer. The chunks keep the handler's boundaries for a front end that
    /// forwards them as they were produced.
    Streamed(Vec<Bytes>),
}

impl NuclioBody {
    /// The whole body, chunks joined.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Self::Full(body) => body.clone(),
            Self::Streamed(chunks) if chunks.len() == 1 => chunks[0].clone(),
            Self::Streamed(chunks) => {
                let mut body = BytesMut::with_capacity(self.len());
                for chunk in chunks {
                    body.extend_from_slice(chunk);
                }
                body.freeze()
            }
        }
    }

    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Full(body) => body.len(),
            Self::Streamed(chunks) => chunks.iter().map(Bytes::len).sum(),
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it came as a stream.
    pub fn is_streamed(&self) -> bool {
        matches!(self, Self::Streamed(_))
    }
}

/// The wrapper's answer to one event.
///
/// A handler that raised is answered with status 500 and the exception's
/// message in the body, as the wrapper does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NuclioResponse {
    /// The status code.
    pub status_code: u16,
    /// The body's media type.
    pub content_type: String,
    /// The headers; values that are not strings in the wrapper's JSON (a
    /// number, `true`) are given as their JSON text.
    pub headers: BTreeMap<String, String>,
    /// The body, decoded from the wire's text or base64.
    pub body: NuclioBody,
    /// The `event_id` the handler set on its response, empty if none: a batch
    /// response names with it the event each of its responses answers.
    pub event_id: String,
    /// Every response of a batch response (the handler returned a list), in
    /// order, with their bodies; empty for a single response. The other fields
    /// of this response are those of the first, as Nuclio answers a single event
    /// with the first response of a batch.
    pub batch: Vec<NuclioResponse>,
}

/// The JSON of an `r` or `c` packet.
#[derive(Debug, Deserialize)]
pub(crate) struct WireResponse {
    #[serde(default)]
    body: String,
    #[serde(default = "text_plain")]
    content_type: String,
    #[serde(default, deserialize_with = "header_values")]
    headers: BTreeMap<String, String>,
    #[serde(default = "ok")]
    status_code: i64,
    #[serde(default)]
    body_encoding: Option<String>,
    #[serde(default)]
    event_id: Option<String>,
}

fn text_plain() -> String {
    "text/plain".to_owned()
}

fn ok() -> i64 {
    200
}

/// Header values as strings, whatever JSON type the handler gave them; `null`
/// drops the header.
fn header_values<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = Option::<BTreeMap<String, serde_json::Value>>::deserialize(deserializer)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, value)| match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(text) => Some((name, text)),
            other => Some((name, other.to_string())),
        })
        .collect())
}

impl WireResponse {
    /// The response with its first (or only) body, checked and decoded.
    pub(crate) fn into_parts(self) -> Result<(NuclioResponse, Bytes), NuclioError> {
        let status_code = u16::try_from(self.status_code)
            .ok()
            .filter(|status| (100..=999).contains(status))
            .ok_or(NuclioError::StatusOutOfRange {
                status: self.status_code,
            })?;
        let body = match self.body_encoding.as_deref() {
            None | Some("text") => Bytes::from(self.body),
            Some("base64") => decode_base64(&self.body)?,
            Some(other) => return Err(NuclioError::UnknownBodyEncoding(other.to_owned())),
        };
        let response = NuclioResponse {
            status_code,
            content_type: self.content_type,
            headers: self.headers,
            body: NuclioBody::Full(Bytes::new()),
            event_id: self.event_id.unwrap_or_default(),
            batch: Vec::new(),
        };
        Ok((response, body))
    }

    /// The response with its body in place.
    fn into_response(self) -> Result<NuclioResponse, NuclioError> {
        let (mut response, body) = self.into_parts()?;
        response.body = NuclioBody::Full(body);
        Ok(response)
    }
}

/// Parses the JSON of an `r` packet: one response, or a list of them (a batch
/// response), which is answered with its first.
pub(crate) fn parse_r(text: &str) -> Result<NuclioResponse, NuclioError> {
    if !text.trim_start().starts_with('[') {
        return packet::json::<WireResponse>('r', text)?.into_response();
    }
    let batch = packet::json::<Vec<WireResponse>>('r', text)?
        .into_iter()
        .map(WireResponse::into_response)
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = batch.first() else {
        return Err(NuclioError::EmptyBatch);
    };
    let mut response = first.clone();
    response.batch = batch;
    Ok(response)
}

/// Decodes a base64 body or chunk.
pub(crate) fn decode_base64(text: &str) -> Result<Bytes, NuclioError> {
    BASE64
        .decode(text)
        .map(Bytes::from)
        .map_err(NuclioError::InvalidBase64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<(NuclioResponse, Bytes), NuclioError> {
        serde_json::from_str::<WireResponse>(json)
            .unwrap()
            .into_parts()
    }

    #[test]
    fn a_base64_body_is_decoded_and_header_values_become_strings() {
        let (response, body) = parse(
            r#"{"body": "AP8=", "body_encoding": "base64", "status_code": 201,
                "content_type": "application/octet-stream",
                "headers": {"x-n": 3, "x-no-ack": true, "x-s": "v", "x-gone": null}}"#,
        )
        .unwrap();
        assert_eq!(body.as_ref(), &[0, 255]);
        assert_eq!(response.status_code, 201);
        assert_eq!(response.headers["x-n"], "3");
        assert_eq!(response.headers["x-no-ack"], "true");
        assert_eq!(response.headers["x-s"], "v");
        assert!(!response.headers.contains_key("x-gone"));
    }

    #[test]
    fn missing_fields_take_the_wrappers_defaults() {
        let (response, body) = parse("{}").unwrap();
        assert_eq!(response.status_code, 200);
        assert_eq!(response.content_type, "text/plain");
        assert!(body.is_empty());
    }

    #[test]
    fn a_bad_status_or_encoding_is_a_typed_error() {
        assert!(matches!(
            parse(r#"{"status_code": 42}"#),
            Err(NuclioError::StatusOutOfRange { status: 42 })
        ));
        assert!(matches!(
            parse(r#"{"body_encoding": "rot13"}"#),
            Err(NuclioError::UnknownBodyEncoding(_))
        ));
        assert!(matches!(
            parse(r#"{"body": "!!", "body_encoding": "base64"}"#),
            Err(NuclioError::InvalidBase64(_))
        ));
    }

    #[test]
    fn a_batch_response_is_answered_with_its_first_and_keeps_them_all() {
        let response = parse_r(
            r#"[{"body": "one", "status_code": 201, "event_id": "e1"},
                {"body": "dHdv", "body_encoding": "base64", "event_id": "e2"}]"#,
        )
        .unwrap();
        assert_eq!(response.status_code, 201);
        assert_eq!(response.body.to_bytes(), "one");
        assert_eq!(response.event_id, "e1");
        assert_eq!(response.batch.len(), 2);
        assert_eq!(response.batch[1].body.to_bytes(), "two");
        assert_eq!(response.batch[1].event_id, "e2");
        assert!(response.batch[1].batch.is_empty());
        let single = parse_r(r#"{"body": "x"}"#).unwrap();
        assert!(single.batch.is_empty());
        assert_eq!(single.event_id, "");
    }

    #[test]
    fn an_empty_or_broken_batch_is_a_typed_error() {
        assert!(matches!(parse_r(" []"), Err(NuclioError::EmptyBatch)));
        assert!(matches!(
            parse_r(r#"[{"status_code": "x"}]"#),
            Err(NuclioError::InvalidJson { kind: 'r', .. })
        ));
        assert!(matches!(
            parse_r(r#"[{"status_code": 7}]"#),
            Err(NuclioError::StatusOutOfRange { status: 7 })
        ));
    }

    #[test]
    fn streamed_chunks_join_into_the_whole_body() {
        let body = NuclioBody::Streamed(vec![Bytes::from("ab"), Bytes::from("c")]);
        assert_eq!(body.to_bytes(), Bytes::from("abc"));
        assert_eq!(body.len(), 3);
        assert!(body.is_streamed());
    }
}
