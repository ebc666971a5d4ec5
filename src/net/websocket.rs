//! WebSocket exchanges (`docs/protocol.md`, "WebSocket"): one long event that
//! holds its slot for the life of the socket, with messages both ways.
//!
//! The host builds the event with [`Event::websocket`](super::Event::websocket)
//! and a [`WebSocketLink`](super::WebSocketLink) (`websocket_link.rs`); it
//! keeps the link's other two ends, a sender for the client's messages and a
//! receiver for the app's. The transport's `call` runs [`exchange`], which
//! pumps both until the worker ends the exchange (`O` or `X`), and returns
//! that answer.
//!
//! Both directions are bounded by credit: each side may send data only while
//! the other has granted it credit (a window of bytes), and grants more as
//! its reader takes what arrived. A slow reader on either side therefore
//! stops the sender instead of filling memory, and on a multiplexed
//! connection the shared reader never waits for one stream.

use std::future::Future;
use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use super::envelope::{
    BODY, DONE, HEADER_LEN, HeaderPair, RAISED, RETURNED, Reply, WS_BINARY, WS_CONTROL, WS_CREDIT,
    WS_TEXT, head, parse_meta, split,
};
use super::error::{NetError, ProtocolError};
use super::response_stream::ResponsePart;
use super::websocket_link::{
    DEFAULT_WINDOW, Ends, FromWorker, MESSAGE_COST, Open, OutboxGuard, Outgoing, WebSocketCounters,
    WebSocketMessage,
};

/// Where the frames of one exchange go and come from: a connection of its
/// own, or a stream of a multiplexed one. Envelopes only; the wire adds the
/// length prefix (and stream id).
pub(crate) trait Wire: Send {
    /// The worker's next envelope on this exchange. Cancel safe.
    fn next_frame(&mut self) -> impl Future<Output = Result<Bytes, NetError>> + Send;
    /// Sends one envelope to the worker.
    fn send_frame(&mut self, envelope: Bytes) -> impl Future<Output = Result<(), NetError>> + Send;
}

/// Where the exchange is, as the worker's frames move it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sent the event; waiting for an accept, a close or a denial.
    Opening,
    Accepted,
    /// The app closed the connection; only its end may follow.
    Closed,
    /// A denial response is under way.
    Denying,
    /// The denial response is complete; only the end may follow.
    Denied,
}

#[derive(Deserialize)]
struct Control {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    subprotocol: Option<String>,
    #[serde(default)]
    headers: Option<Vec<HeaderPair>>,
    #[serde(default)]
    window: Option<u32>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

/// Pumps one WebSocket exchange whose event has been sent, until the
/// worker's `O` or `X`, which it returns.
///
/// Dropped midway, it leaves the exchange unfinished; the caller's guard
/// (the connection marked unusable, or the stream's cancel frame) deals with
/// that.
pub(crate) async fn exchange<W: Wire>(
    wire: &mut W,
    ends: Ends,
    counters: &WebSocketCounters,
) -> Result<Reply, NetError> {
    let _open = Open::new(counters);
    let Ends {
        to_worker,
        from_worker,
        consumed,
        window,
    } = ends;
    // Ends a sender's wait for room once the exchange is over.
    let to_worker = OutboxGuard(to_worker);
    let forward = |item: FromWorker, cost: u64| {
        if from_worker.send((item, cost)).is_err() {
            // Nobody reads any more: the credit is free at once.
            consumed.add(cost);
        }
    };
    let mut phase = Phase::Opening;
    // What the worker has granted the host, and what the host still grants it.
    let mut send_credit: i64 = 0;
    let mut recv_credit = i64::from(window);
    let mut granted: u64 = 0;
    let threshold = u64::from(window / 2).max(1);
    let mut disconnected = false;
    loop {
        tokio::select! {
            biased;
            frame = wire.next_frame() => {
                let payload = frame?;
                let (kind, meta_end) = split(&payload)?;
                let cost = (payload.len() - meta_end) as u64 + MESSAGE_COST;
                let mut take_credit = || {
                    if recv_credit <= 0 {
                        return Err(ProtocolError::WebSocketCredit { cost, credit: recv_credit });
                    }
                    recv_credit -= i64::try_from(cost).unwrap_or(i64::MAX);
                    Ok(())
                };
                match (kind, phase) {
                    (RETURNED | RAISED, _) => return Ok(Reply::decode(payload)?),
                    (WS_CREDIT, _) => {
                        send_credit = send_credit.saturating_add(i64::from(credit_of(&payload[meta_end..])?));
                    }
                    (WS_CONTROL, _) => {
                        let control: Control = parse_meta(kind, &payload[HEADER_LEN..meta_end])?;
                        match (control.kind.as_str(), phase) {
                            ("accept", Phase::Opening) => {
                                phase = Phase::Accepted;
                                send_credit = i64::from(control.window.unwrap_or(DEFAULT_WINDOW));
                                let headers = control
                                    .headers
                                    .unwrap_or_default()
                                    .into_iter()
                                    .map(|HeaderPair(name, value)| (name, value))
                                    .collect();
                                forward(FromWorker::Accept { subprotocol: control.subprotocol, headers }, 0);
                            }
                            ("close", Phase::Opening | Phase::Accepted) => {
                                phase = Phase::Closed;
                                let code = control.code.unwrap_or(1000);
                                let reason = control.reason.unwrap_or_default();
                                forward(FromWorker::Close { code, reason }, 0);
                            }
                            (other, _) => {
                                return Err(NetError::StreamOrder(ProtocolError::WebSocketControl(other.to_owned())));
                            }
                        }
                    }
                    (WS_TEXT, Phase::Accepted) => {
                        take_credit()?;
                        let text = String::from_utf8(payload[meta_end..].to_vec())
                            .map_err(|_| ProtocolError::TextNotUtf8)?;
                        counters.from_worker.fetch_add(1, Ordering::Relaxed);
                        forward(FromWorker::Message(WebSocketMessage::Text(text)), cost);
                    }
                    (WS_BINARY, Phase::Accepted) => {
                        take_credit()?;
                        counters.from_worker.fetch_add(1, Ordering::Relaxed);
                        let body = payload.slice(meta_end..);
                        forward(FromWorker::Message(WebSocketMessage::Binary(body)), cost);
                    }
                    (super::envelope::HEAD, Phase::Opening) => {
                        take_credit()?;
                        let (status, headers) = head(kind, &payload[HEADER_LEN..meta_end])?;
                        phase = Phase::Denying;
                        forward(FromWorker::Deny(ResponsePart::Head { status, headers }), MESSAGE_COST);
                        let body = payload.slice(meta_end..);
                        let len = body.len() as u64;
                        if len > 0 {
                            forward(FromWorker::Deny(ResponsePart::Chunk(body)), len);
                        }
                    }
                    (BODY | DONE, Phase::Denying) => {
                        take_credit()?;
                        let body = payload.slice(meta_end..);
                        let len = body.len() as u64;
                        let mut cost_left = cost;
                        if len > 0 {
                            forward(FromWorker::Deny(ResponsePart::Chunk(body)), len);
                            cost_left -= len;
                        }
                        if kind == DONE {
                            phase = Phase::Denied;
                            forward(FromWorker::Deny(ResponsePart::End), cost_left);
                        } else {
                            consumed.add(cost_left);
                        }
                    }
                    (kind, phase) => {
                        return Err(NetError::StreamOrder(ProtocolError::UnexpectedKind {
                            kind,
                            expected: expected_in(phase),
                        }));
                    }
                }
            }
            outgoing = std::future::poll_fn(|cx| {
                to_worker.0.poll_take(cx, phase == Phase::Accepted && send_credit > 0)
            }), if !disconnected => match outgoing {
                Outgoing::Message(message) => {
                    send_credit -= i64::try_from(message.cost()).unwrap_or(i64::MAX);
                    counters.to_worker.fetch_add(1, Ordering::Relaxed);
                    wire.send_frame(encode_message(message)).await?;
                }
                Outgoing::Disconnect(code, reason) => {
                    disconnected = true;
                    wire.send_frame(encode_disconnect(code, &reason)).await?;
                }
            },
            () = consumed.notify.notified() => {
                let total = consumed.bytes.load(Ordering::Acquire);
                let due = total - granted;
                if due >= threshold {
                    let grant = u32::try_from(due).unwrap_or(u32::MAX);
                    granted += u64::from(grant);
                    recv_credit = recv_credit.saturating_add(i64::from(grant));
                    wire.send_frame(encode_credit(grant)).await?;
                }
            }
        }
    }
}

fn expected_in(phase: Phase) -> &'static str {
    match phase {
        Phase::Opening => "`W`, `H`, `O` or `X`",
        Phase::Accepted => "`T`, `Y`, `U`, `W`, `O` or `X`",
        Phase::Closed | Phase::Denied => "`U`, `O` or `X`",
        Phase::Denying => "`B`, `D`, `U` or `X`",
    }
}

/// The credit a `U` frame grants: its body, a big-endian `u32`.
fn credit_of(body: &[u8]) -> Result<u32, ProtocolError> {
    let bytes: [u8; 4] = body
        .try_into()
        .map_err(|_| ProtocolError::WebSocketControl(format!("credit of {} bytes", body.len())))?;
    Ok(u32::from_be_bytes(bytes))
}

const EMPTY_META: &[u8] = b"\0\0\0\x02{}";

fn encode_message(message: WebSocketMessage) -> Bytes {
    let (kind, body): (u8, &[u8]) = match &message {
        WebSocketMessage::Text(text) => (WS_TEXT, text.as_bytes()),
        WebSocketMessage::Binary(bytes) => (WS_BINARY, bytes),
    };
    let mut out = BytesMut::with_capacity(1 + EMPTY_META.len() + body.len());
    out.put_u8(kind);
    out.put_slice(EMPTY_META);
    out.put_slice(body);
    out.freeze()
}

fn encode_credit(grant: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + EMPTY_META.len() + 4);
    out.put_u8(WS_CREDIT);
    out.put_slice(EMPTY_META);
    out.put_u32(grant);
    out.freeze()
}

fn encode_disconnect(code: u16, reason: &str) -> Bytes {
    #[derive(serde::Serialize)]
    struct Disconnect<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        code: u16,
        reason: &'a str,
    }
    let meta = serde_json::to_vec(&Disconnect {
        kind: "disconnect",
        code,
        reason,
    })
    .expect("a struct of strings and numbers serializes");
    let mut out = BytesMut::with_capacity(HEADER_LEN + meta.len());
    out.put_u8(WS_CONTROL);
    out.put_u32(u32::try_from(meta.len()).unwrap_or(u32::MAX));
    out.put_slice(&meta);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_frames_encode_as_the_protocol_says() {
        assert_eq!(
            &encode_message(WebSocketMessage::Text("hé".into()))[..],
            b"T\0\0\0\x02{}h\xc3\xa9"
        );
        assert_eq!(
            &encode_message(WebSocketMessage::Binary(Bytes::from_static(b"\0\x01")))[..],
            b"Y\0\0\0\x02{}\0\x01"
        );
        assert_eq!(&encode_credit(258)[..], b"U\0\0\0\x02{}\0\0\x01\x02");
        let disconnect = encode_disconnect(1001, "bye");
        let (kind, meta_end) = split(&disconnect).unwrap();
        assert_eq!(kind, b'W');
        let meta: serde_json::Value = serde_json::from_slice(&disconnect[5..meta_end]).unwrap();
        assert_eq!(
            meta,
            serde_json::json!({"type": "disconnect", "code": 1001, "reason": "bye"})
        );
    }

    #[test]
    fn a_credit_frame_must_hold_exactly_four_bytes() {
        assert_eq!(credit_of(&[0, 0, 1, 0]).unwrap(), 256);
        assert!(credit_of(&[0, 1, 0]).is_err());
        assert!(credit_of(&[0, 0, 0, 1, 0]).is_err());
    }
}
