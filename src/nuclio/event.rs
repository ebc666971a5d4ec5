//! [`NuclioEvent`]: one event as the async wrapper reads it, and its encoding: a
//! 4-byte big-endian length, then a msgpack map.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

use super::error::NuclioError;
use crate::trace_context::TraceContext;

/// The trigger an event came from, as the wrapper shows it to the handler
/// (`event.trigger.kind`, `event.trigger.name`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct TriggerInfo {
    /// Its kind, e.g. `http`.
    pub kind: String,
    /// Its name in the function spec.
    pub name: String,
}

impl TriggerInfo {
    /// A trigger of `kind` named `name`.
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
        }
    }
}

/// One event for Nuclio's Python async wrapper: the fields its `Event` object
/// is built from.
///
/// Start from [`NuclioEvent::new`] or [`NuclioEvent::http`] and set the other
/// fields as needed. The body goes out as msgpack `bin` (a Python `bytes`);
/// `size` is always the body's length, and `content-type` (the wrapper reads
/// both spellings) always equals `content_type`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NuclioEvent {
    /// The raw body.
    pub body: Bytes,
    /// Its media type. The wrapper's SDK decodes an `application/json` body into
    /// Python objects.
    pub content_type: String,
    /// The trigger it came from.
    pub trigger: TriggerInfo,
    /// Trigger-specific fields, such as an HTTP query's parameters.
    pub fields: BTreeMap<String, String>,
    /// Headers (one value per name, as Nuclio has them).
    pub headers: BTreeMap<String, String>,
    /// The event's id.
    pub id: String,
    /// The HTTP method, for HTTP events.
    pub method: String,
    /// The path, for HTTP events; Nuclio's HTTP trigger gives it without the
    /// query (see [`NuclioEvent::from_http_request`]).
    pub path: String,
    /// When it arrived, in Unix seconds.
    pub timestamp: u64,
    /// The URL, for HTTP events.
    pub url: String,
    /// The shard it came from, for stream triggers.
    pub shard_id: i64,
    /// How many shards the stream has, for stream triggers.
    pub num_shards: i64,
    /// Its type, if the trigger gives one.
    pub r#type: String,
    /// The version of its type.
    pub type_version: String,
    /// Its version.
    pub version: String,
    /// Its offset in the stream, for stream triggers.
    pub offset: i64,
    /// Its topic, for message-queue triggers.
    pub topic: String,
}

impl NuclioEvent {
    /// An event with `body`, sent now, `application/octet-stream`, from no
    /// particular trigger.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            content_type: "application/octet-stream".to_owned(),
            timestamp: now(),
            ..Self::default()
        }
    }

    /// An HTTP event: `method` on `path` with `headers` and `body`. Its content
    /// type comes from a `Content-Type` header (any case), if there is one.
    pub fn http(
        method: impl Into<String>,
        path: impl Into<String>,
        headers: BTreeMap<String, String>,
        body: impl Into<Bytes>,
    ) -> Self {
        let content_type = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.clone());
        let mut event = Self::new(body);
        if let Some(content_type) = content_type {
            event.content_type = content_type;
        }
        event.method = method.into();
        event.path = path.into();
        event.headers = headers;
        event.trigger = TriggerInfo::new("http", "http");
        event
    }

    /// The event with the caller's W3C trace context, as the headers
    /// `Traceparent` and `Tracestate` (canonical names, as Nuclio's HTTP
    /// trigger gives them), which is where a Nuclio handler finds it
    /// (`event.get_header("Traceparent")`): Nuclio's wrapper has no other
    /// place for it. A `Tracestate` already there is replaced, or removed
    /// when `trace` has none.
    #[must_use]
    pub fn with_trace(mut self, trace: &TraceContext) -> Self {
        self.headers
            .insert("Traceparent".to_owned(), trace.traceparent().to_owned());
        match trace.tracestate() {
            Some(state) => self
                .headers
                .insert("Tracestate".to_owned(), state.to_owned()),
            None => self.headers.remove("Tracestate"),
        };
        self
    }

    /// An HTTP event as Nuclio's HTTP trigger makes it from a request:
    /// `target` is the request target (path and query). The path without the
    /// query goes to [`path`](Self::path), the query's parameters
    /// (percent-decoded, `+` read as a space, the last of a repeated name kept)
    /// to [`fields`](Self::fields), the target to [`url`](Self::url), and header
    /// names are put in canonical form (`x-h5` becomes `X-H5`,
    /// `content-type` `Content-Type`), since the handler's
    /// `event.get_header` looks them up by exact name. The content type comes
    /// from the `Content-Type` header, if there is one.
    pub fn from_http_request(
        method: impl Into<String>,
        target: &str,
        headers: impl IntoIterator<Item = (String, String)>,
        body: impl Into<Bytes>,
    ) -> Self {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let headers = headers
            .into_iter()
            .map(|(name, value)| (canonical_header_name(&name), value))
            .collect();
        let mut event = Self::http(method, path, headers, body);
        event.fields = query_fields(query);
        event.url = target.to_owned();
        event
    }

    /// Appends the event's frame to `out`: the 4-byte big-endian length, then
    /// the msgpack map.
    ///
    /// # Errors
    ///
    /// [`NuclioError::Encode`] if msgpack cannot encode it, and
    /// [`NuclioError::EventTooLarge`] if the map is longer than `limit` bytes;
    /// `out` is then left as it was.
    pub(crate) fn encode(&self, out: &mut Vec<u8>, limit: usize) -> Result<(), NuclioError> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let wire = WireEvent {
            content_type: &self.content_type,
            content_type_dashed: &self.content_type,
            trigger: &self.trigger,
            fields: &self.fields,
            headers: &self.headers,
            id: &self.id,
            method: &self.method,
            path: &self.path,
            size: self.body.len() as u64,
            timestamp: self.timestamp,
            url: &self.url,
            shard_id: self.shard_id,
            num_shards: self.num_shards,
            r#type: &self.r#type,
            type_version: &self.type_version,
            version: &self.version,
            offset: self.offset,
            topic: &self.topic,
            body: serde_bytes::Bytes::new(&self.body),
        };
        if let Err(error) = rmp_serde::encode::write_named(out, &wire) {
            out.truncate(start);
            return Err(NuclioError::Encode(error));
        }
        let len = out.len() - start - 4;
        match u32::try_from(len) {
            Ok(prefix) if len <= limit => {
                out[start..start + 4].copy_from_slice(&prefix.to_be_bytes());
                Ok(())
            }
            _ => {
                out.truncate(start);
                Err(NuclioError::EventTooLarge { len, limit })
            }
        }
    }
}

/// A header name in canonical form, as Go's `net/textproto` (and so Nuclio)
/// writes it: the first letter and each letter after a `-` upper case, the
/// rest lower case. A name with a byte that is not a token character is left
/// as it is, as Go leaves it.
fn canonical_header_name(name: &str) -> String {
    let is_token = |byte: u8| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte);
    if !name.bytes().all(is_token) {
        return name.to_owned();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// The parameters of a query string, percent-decoded; of a repeated name, the last.
fn query_fields(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// `%XX` as its byte and `+` as a space; a `%` not followed by two hex digits
/// stays as it is, and bytes that are not UTF-8 are replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|pair| std::str::from_utf8(pair).ok())
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The map the wrapper decodes, with its key names.
#[derive(Serialize)]
struct WireEvent<'a> {
    content_type: &'a str,
    #[serde(rename = "content-type")]
    content_type_dashed: &'a str,
    trigger: &'a TriggerInfo,
    fields: &'a BTreeMap<String, String>,
    headers: &'a BTreeMap<String, String>,
    id: &'a str,
    method: &'a str,
    path: &'a str,
    size: u64,
    timestamp: u64,
    url: &'a str,
    shard_id: i64,
    num_shards: i64,
    r#type: &'a str,
    type_version: &'a str,
    version: &'a str,
    offset: i64,
    topic: &'a str,
    body: &'a serde_bytes::Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Decoded {
        #[serde(rename = "content-type")]
        content_type_dashed: String,
        trigger: BTreeMap<String, String>,
        size: u64,
        r#type: String,
        body: serde_bytes::ByteBuf,
        method: String,
    }

    #[test]
    fn a_trace_context_becomes_the_traceparent_and_tracestate_headers() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let headers = [("tracestate".to_owned(), "stale=1".to_owned())];
        let event = NuclioEvent::from_http_request("GET", "/", headers, Vec::new());
        let with = event
            .clone()
            .with_trace(&TraceContext::parse(parent, Some("a=1,b=2")).unwrap());
        assert_eq!(with.headers["Traceparent"], parent);
        assert_eq!(with.headers["Tracestate"], "a=1,b=2");
        let without_state = event.with_trace(&TraceContext::parse(parent, None).unwrap());
        assert!(!without_state.headers.contains_key("Tracestate"));
    }

    #[test]
    fn an_event_is_a_length_prefixed_msgpack_map_with_a_binary_body() {
        let mut headers = BTreeMap::new();
        headers.insert("Content-Type".to_owned(), "image/png".to_owned());
        let mut event = NuclioEvent::http("POST", "/up", headers, vec![0u8, 159, 146, 150]);
        event.r#type = "upload".to_owned();
        let mut out = Vec::new();
        event.encode(&mut out, 1 << 20).unwrap();
        let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 4);
        // A map16 of the 19 keys, so the wrapper sees a map with named keys.
        assert_eq!(out[4..7], [0xde, 0, 19]);
        // bin 8 marker before the 4 body bytes: bytes, not an array of ints.
        assert!(out.ends_with(&[0xc4, 4, 0, 159, 146, 150]));
        let decoded: Decoded = rmp_serde::from_slice(&out[4..]).unwrap();
        assert_eq!(decoded.content_type_dashed, "image/png");
        assert_eq!(decoded.trigger["kind"], "http");
        assert_eq!(decoded.size, 4);
        assert_eq!(decoded.r#type, "upload");
        assert_eq!(decoded.method, "POST");
        assert_eq!(decoded.body.as_slice(), &[0, 159, 146, 150]);
    }

    #[test]
    fn an_http_request_is_split_as_nuclios_http_trigger_splits_it() {
        let headers = [
            ("x-h5".to_owned(), "five".to_owned()),
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-weird header".to_owned(), "kept".to_owned()),
        ];
        let event = NuclioEvent::from_http_request(
            "GET",
            "/a/b?x=1&name=J%C3%BCrgen+M&flag&x=2&bad=%zz%4",
            headers,
            "{}",
        );
        assert_eq!(event.path, "/a/b");
        assert_eq!(event.url, "/a/b?x=1&name=J%C3%BCrgen+M&flag&x=2&bad=%zz%4");
        assert_eq!(event.fields["x"], "2");
        assert_eq!(event.fields["name"], "Jürgen M");
        assert_eq!(event.fields["flag"], "");
        assert_eq!(event.fields["bad"], "%zz%4");
        assert_eq!(event.headers["X-H5"], "five");
        assert_eq!(event.headers["Content-Type"], "application/json");
        assert_eq!(event.headers["x-weird header"], "kept");
        assert_eq!(event.content_type, "application/json");
        let bare = NuclioEvent::from_http_request("GET", "/", [], "");
        assert_eq!(bare.path, "/");
        assert!(bare.fields.is_empty());
    }

    #[test]
    fn header_names_take_gos_canonical_form() {
        assert_eq!(canonical_header_name("x-request-id"), "X-Request-Id");
        assert_eq!(canonical_header_name("ACCEPT"), "Accept");
        assert_eq!(
            canonical_header_name("www-authenticate"),
            "Www-Authenticate"
        );
        assert_eq!(canonical_header_name("bad name"), "bad name");
        assert_eq!(canonical_header_name(""), "");
    }

    #[test]
    fn an_event_over_the_limit_is_refused_and_nothing_is_left_behind() {
        let mut out = b"kept".to_vec();
        let error = NuclioEvent::new(vec![7u8; 100])
            .encode(&mut out, 50)
            .unwrap_err();
        assert!(
            matches!(error, NuclioError::EventTooLarge { limit: 50, .. }),
            "{error:?}"
        );
        assert_eq!(out, b"kept");
    }
}
