"""The wire protocol of ``docs/protocol.md``, as a worker speaks it.

Every message is a 4-byte big-endian length followed by an envelope: a kind
byte, a u32 BE meta length, JSON meta, and a raw body. This module turns bytes
into events and answers into bytes, and holds the handshake's arithmetic; it
does no I/O, so the server, the app adapters and the tests' fake workers all
share this one copy of the protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import traceback
from json.encoder import encode_basestring_ascii as _json_string

# Framing: a length prefix, then the envelope's kind byte and meta length.
LENGTH = struct.Struct(">I")
HEADER_LEN = 1 + LENGTH.size
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
# Room for an `X` answer with its type and a trimmed message.
MIN_FRAME_BYTES = 512
# The meta of most answers, with its length: the host reads it without a parse.
EMPTY_META = b"\0\0\0\x02{}"

EVENT_KIND = ord("E")

# Multiplexing (docs/protocol.md, "Multiplexing").
MULTIPLEX_KIND = ord("M")
CANCEL_KIND = ord("K")
MULTIPLEX_VERSION = 1
STREAM = struct.Struct(">I")
FRAME_HEAD = struct.Struct(">II")  # frame length, stream id

# WebSocket exchanges (docs/protocol.md, "WebSocket"): control, text, binary
# and credit frames, which the host sends while the exchange runs.
WEBSOCKET_VERSION = 1
WS_CONTROL_KIND = ord("W")
WS_TEXT_KIND = ord("T")
WS_BINARY_KIND = ord("Y")
WS_CREDIT_KIND = ord("U")
WS_KINDS = frozenset((WS_CONTROL_KIND, WS_TEXT_KIND, WS_BINARY_KIND, WS_CREDIT_KIND))

# The handshake (docs/protocol.md, "Handshake").
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 64
HANDSHAKE_VERSION = 1
NONCE_LEN = 32
_MAC_LEN = 32
ANSWER_LEN = 2 + _MAC_LEN  # kind byte + version byte + HMAC-SHA256
# Put before the nonce in the MAC, so that a tag made for this handshake version
# means nothing anywhere else.
_MAC_CONTEXT = b"async-worker-pool handshake v1: host answer\0"


class ProtocolError(Exception):
    """The host sent something the protocol does not allow."""


class Event:
    """One event as seen by the handler."""

    __slots__ = ("body", "method", "path", "headers", "is_http", "meta", "trace")

    def __init__(self, body=b"", method=None, path=None, headers=None, is_http=False,
                 trace=None):
        self.body = body
        self.method = method
        self.path = path
        self.headers = list(headers or [])
        self.is_http = is_http
        # The event's whole meta (None for a plain event): the ASGI adapter
        # reads the optional keys (scheme, client, ...) from it.
        self.meta = None
        self.trace = trace

    def header(self, name):
        """First value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def __repr__(self):
        if self.is_http:
            return "<Event %s %s, %d body bytes>" % (self.method, self.path, len(self.body))
        return "<Event plain, %d body bytes>" % len(self.body)


class Response:
    """An explicit handler result: body, status and headers."""

    __slots__ = ("body", "status", "headers")

    def __init__(self, body=b"", status=200, headers=None):
        self.body = body
        self.status = status
        self.headers = headers

    def __repr__(self):
        return "Response(status=%r, headers=%r, body=%r)" % (self.status, self.headers, self.body)


# --------------------------------------------------------------------------
# Envelopes and frames
# --------------------------------------------------------------------------


def encode_envelope(kind: bytes, meta: dict, body: bytes = b"") -> bytes:
    """Build an envelope payload (without the frame length)."""
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    return b"".join((kind, LENGTH.pack(len(meta_bytes)), meta_bytes, body))


def pack_envelope(kind: bytes, meta: bytes, body) -> bytes:
    """An envelope whose meta is JSON already encoded."""
    return b"".join((kind, LENGTH.pack(len(meta)), meta, body))


def encode_frame(payload: bytes) -> bytes:
    """`payload` with its length prefix: one frame on a plain connection."""
    return LENGTH.pack(len(payload)) + payload


def encode_stream_frame(stream: int, payload: bytes) -> bytes:
    """`payload` framed for `stream` of a multiplexed connection."""
    return FRAME_HEAD.pack(len(payload) + STREAM.size, stream) + payload


def encode_ready(pid: int, worker_id: int, websocket: bool = False) -> bytes:
    """The `R` envelope a worker sends first on every connection it serves;
    with `websocket`, it says that the worker takes WebSocket events."""
    meta = {"pid": pid, "worker_id": worker_id}
    if websocket:
        meta["websocket"] = WEBSOCKET_VERSION
    return encode_envelope(b"R", meta)


def encode_multiplex_ack() -> bytes:
    """The `M` envelope that accepts the host's request to multiplex."""
    return encode_envelope(b"M", {"version": MULTIPLEX_VERSION})


# The confirmation of a cancel frame: `Q`, since `D` ends a streamed answer.
CANCELLED_ENVELOPE = encode_envelope(b"Q", {})


def encode_head_meta(status: int, headers) -> bytes:
    """The meta of an `O` or `H` answer: status and (name, value) string pairs,
    encoded without a trip through json.dumps."""
    return ('{"status":%d,"headers":[%s]}' % (status, ",".join(
        "[%s,%s]" % (_json_string(name), _json_string(value)) for name, value in headers))
    ).encode("ascii")


# --------------------------------------------------------------------------
# The handshake
# --------------------------------------------------------------------------


def encode_challenge(nonce: bytes) -> bytes:
    """Build a `C` challenge payload (without the frame length)."""
    return b"C" + bytes((HANDSHAKE_VERSION,)) + nonce


def expected_answer(secret: bytes, nonce: bytes) -> bytes:
    """The MAC the host must send back for `nonce`."""
    return hmac.new(secret, _MAC_CONTEXT + nonce, hashlib.sha256).digest()


def check_answer(secret: bytes, nonce: bytes, payload: bytes) -> bool:
    """Whether `payload` is the host's `A` answer to `nonce`, in constant time.

    Never raises: a payload of another kind, version or length is simply wrong.
    """
    if len(payload) != ANSWER_LEN or payload[0:1] != b"A" or payload[1] != HANDSHAKE_VERSION:
        return False
    return hmac.compare_digest(payload[2:], expected_answer(secret, nonce))


def parse_secret(text: str) -> bytes:
    """Decode the hex secret from the environment; ValueError if it is unfit."""
    if not 2 * MIN_SECRET_BYTES <= len(text) <= 2 * MAX_SECRET_BYTES:
        raise ValueError("must be %d to %d hex digits, not %d characters"
                         % (2 * MIN_SECRET_BYTES, 2 * MAX_SECRET_BYTES, len(text)))
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError("is not hexadecimal") from None


# --------------------------------------------------------------------------
# Events from the host
# --------------------------------------------------------------------------


def parse_event(payload) -> Event:
    """Decode an `E` envelope from the host into an Event.

    `payload` is bytes or a memoryview of them; the body is copied out once.
    Raises ProtocolError for anything else: a short payload, another kind, a meta
    length past the end, meta that is not a UTF-8 JSON object, or HTTP fields of
    the wrong type.
    """
    if len(payload) < HEADER_LEN:
        raise ProtocolError("envelope of %d bytes is shorter than its %d-byte header"
                            % (len(payload), HEADER_LEN))
    if payload[0] != EVENT_KIND:
        raise ProtocolError("unexpected envelope kind %r from the host (expected 'E')"
                            % bytes(payload[0:1]))
    (meta_len,) = LENGTH.unpack_from(payload, 1)
    meta_end = HEADER_LEN + meta_len
    if meta_end > len(payload):
        raise ProtocolError("meta length %d runs past the end of a %d-byte envelope"
                            % (meta_len, len(payload)))
    if meta_len == 2 and payload[HEADER_LEN:meta_end] == b"{}":
        # A plain event, as the host sends it: no JSON to parse.
        return Event(bytes(payload[meta_end:]))
    meta = parse_meta(bytes(payload[HEADER_LEN:meta_end]))
    return _event_from_meta(meta, bytes(payload[meta_end:]))


def parse_meta(raw: bytes) -> dict:
    """An envelope's meta as a dict; ProtocolError unless it is a UTF-8 JSON object."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("event meta is not UTF-8 JSON: %s" % exc) from None
    if not isinstance(meta, dict):
        raise ProtocolError("event meta is a JSON %s, not an object" % type(meta).__name__)
    return meta


def _event_from_meta(meta: dict, body: bytes) -> Event:
    # Unknown keys are ignored so that the host may add fields later.
    trace = _trace_from_meta(meta.get("trace"))
    if "method" not in meta and "path" not in meta and "headers" not in meta:
        return Event(body=body, trace=trace)
    method, path = meta.get("method"), meta.get("path")
    if type(method) is not str or type(path) is not str:
        raise ProtocolError("HTTP event meta needs string 'method' and 'path'")
    headers = meta.get("headers", [])
    if type(headers) is not list:
        raise ProtocolError("HTTP event 'headers' must be a list of [name, value] strings")
    pairs = []
    for item in headers:
        # JSON gives lists and exact strs, so exact type checks suffice.
        if type(item) is not list or len(item) != 2 or type(item[0]) is not str \
                or type(item[1]) is not str:
            raise ProtocolError("HTTP event 'headers' must be a list of [name, value] strings")
        pairs.append((item[0], item[1]))
    event = Event(body=body, method=method, path=path, is_http=True, trace=trace)
    event.headers = pairs  # built here, so not copied again
    event.meta = meta
    return event


def _trace_from_meta(trace):
    """The meta's ``trace`` as the handler's ``context.trace``, or None."""
    if trace is None:
        return None
    if type(trace) is not dict or type(trace.get("traceparent")) is not str \
            or type(trace.get("tracestate", "")) is not str:
        raise ProtocolError("event 'trace' must be an object with a string 'traceparent'")
    return {"traceparent": trace["traceparent"], "tracestate": trace.get("tracestate")}


# --------------------------------------------------------------------------
# Answers to the host
# --------------------------------------------------------------------------

_RESULT_FORMS = ("bytes, str, None, (status, body), (status, headers, body) "
                 "or Response")


def build_response(result) -> tuple:
    """Turn a handler's return value into (meta, body) for an `O` frame.

    Raises TypeError, with a message saying what was returned, for anything else.
    """
    status, headers, body = _unpack_result(result)
    meta = {"status": _check_status(status), "headers": _header_pairs(headers)}
    return meta, _body_bytes(body)


def encode_response(result) -> bytes:
    """The `O` envelope for a handler's return value: what build_response says,
    encoded without a trip through json.dumps. A plain 200 without headers gets
    meta ``{}`` (both fields are optional), which the host reads without a parse.

    Raises TypeError as build_response does.
    """
    if type(result) is bytes:  # the commonest answer: just a body
        return b"O" + EMPTY_META + result
    status, headers, body = _unpack_result(result)
    if type(headers) is dict and type(status) is int:
        # Handlers tend to answer with the same few header dicts: their
        # envelope heads are kept, keyed by status and items.
        key = (status, tuple(headers.items()))
        try:
            head = _RESPONSE_HEADS.get(key)
        except TypeError:  # an unhashable header value: refused below
            head = None
        if head is not None:
            return head + _body_bytes(body)
    else:
        key = None
    _check_status(status)
    body = _body_bytes(body)
    pairs = _header_pairs(headers)
    if status == 200 and not pairs:
        return b"O" + EMPTY_META + body
    meta = encode_head_meta(status, pairs)
    head = b"O" + LENGTH.pack(len(meta)) + meta
    if key is not None:
        # Only checked heads get here: a key holds str names and values.
        if len(_RESPONSE_HEADS) >= _RESPONSE_HEADS_MAX:
            _RESPONSE_HEADS.clear()
        _RESPONSE_HEADS[key] = head
    return head + body


# Envelope heads (kind, meta length, meta) of `O` answers with header dicts,
# by (status, header items); cleared when full.
_RESPONSE_HEADS = {}
_RESPONSE_HEADS_MAX = 256


def _unpack_result(result) -> tuple:
    """(status, headers, body) of a handler's return value, unchecked."""
    if isinstance(result, Response):
        return result.status, result.headers, result.body
    if isinstance(result, tuple):
        if len(result) == 2:
            return result[0], None, result[1]
        if len(result) == 3:
            return result
        raise TypeError("handler returned a tuple of %d items; expected %s"
                        % (len(result), _RESULT_FORMS))
    return 200, None, result


def _check_status(status) -> int:
    # bool is an int subclass, but True as a status is surely a mistake.
    if not isinstance(status, int) or isinstance(status, bool):
        raise TypeError("handler returned a status of type %s; expected int"
                        % type(status).__name__)
    if not 100 <= status <= 999:
        raise TypeError("handler returned status %d; expected 100..999" % status)
    return status


def _is_string_pair(item) -> bool:
    return (isinstance(item, (list, tuple)) and len(item) == 2
            and isinstance(item[0], str) and isinstance(item[1], str))


def _header_pairs(headers) -> list:
    if not headers:
        if headers is None or isinstance(headers, (dict, list, tuple)):
            return []
    items = headers.items() if isinstance(headers, dict) else headers
    if isinstance(items, (str, bytes)):
        raise TypeError("handler returned headers as %s; expected a dict or a list "
                        "of (name, value) pairs" % type(headers).__name__)
    try:
        pairs = [list(item) for item in items]
    except TypeError:
        raise TypeError("handler returned headers of type %s; expected a dict or a "
                        "list of (name, value) pairs" % type(headers).__name__) from None
    for pair in pairs:
        if not _is_string_pair(pair):
            raise TypeError("handler returned header %r; names and values must be str"
                            % (pair,))
    return pairs


def _body_bytes(body) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError("handler returned %s; expected %s"
                    % (type(body).__name__, _RESULT_FORMS))


def encode_raised(exc: BaseException, max_payload: int) -> bytes:
    """Build an `X` envelope for an exception, trimmed to fit in `max_payload`."""
    meta = {"type": type(exc).__name__[:200], "message": str(exc)}
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    body = text.encode("utf-8", "replace")
    head = encode_envelope(b"X", meta)
    while len(head) > max_payload and meta["message"]:
        meta["message"] = meta["message"][: len(meta["message"]) // 2]
        head = encode_envelope(b"X", meta)
    room = max(0, max_payload - len(head))
    # Keep the end of the traceback: it names the exception and where it was raised.
    return head + (body[len(body) - room:] if len(body) > room else body)
