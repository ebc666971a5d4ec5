#!/usr/bin/env python3
"""Reference worker process for the `async-worker-pool` crate.

The worker is a server: it listens on a Unix socket or a loopback TCP address, the
host opens ``--connections`` connections to it, and each connection carries one
event at a time. The wire protocol is described in ``docs/protocol.md``: every
message is a 4-byte big-endian length followed by an envelope (kind byte, u32 BE
meta length, JSON meta, raw body). Only the Python standard library is needed;
uvloop is used when it is installed.

Command line
------------
::

    python3 async_pool_worker.py (--handler module:function | --asgi module:app
        [--lifespan auto|on|off] [--root-path PATH] [--factory])
        (--unix PATH | --tcp HOST:PORT) --worker-id N
        [--connections N] [--max-frame-bytes N] [--handler-path DIR ...]
        [--handshake-timeout SECONDS] [--no-auth]

with the secret in the environment variable ``ASYNC_WORKER_POOL_SECRET``.

``--handler``          the handler, as ``module:function`` (``function`` may be a
                       dotted attribute path). The directories given with
                       ``--handler-path`` and the current directory are put at the
                       front of ``sys.path`` before the module is imported.
``--asgi``             instead of a handler, an ASGI 3 app (FastAPI, Starlette, ...)
                       as ``module:attribute``, imported the same way; served by
                       ``async_pool_asgi.py`` beside this script, which describes
                       the scope, streaming, lifespan (``--lifespan``) and what is
                       not supported (WebSocket). A failed lifespan startup exits
                       with status 3.
``--unix PATH``        listen on this Unix socket path (a stale socket file there
                       is removed first).
``--tcp HOST:PORT``    listen on this TCP address instead (port 0 picks a free one;
                       the listening line shows which).
``--worker-id N``      this worker's number, given to the handler and sent in ``R``.
``--connections N``    how many connections the host will open (default 1000). At
                       most N + 4 connections are served at once (the 4 for the
                       host's liveness probes), and at most as many may be in their
                       handshake; more are closed at once. The listen backlog is
                       the larger of N and 2048, capped by net.core.somaxconn,
                       and the RLIMIT_NOFILE soft limit is raised to
                       2 (N + 4) + 64 when the hard limit allows it.
``--max-frame-bytes N`` largest frame accepted or sent (default 16 MiB, at least 512).
``--handshake-timeout SECONDS`` how long a new connection may take to answer the
                       handshake challenge before it is closed (default 3).
``--no-auth``          serve every connection without a handshake, and run without
                       a secret. Only for a host that cannot answer the handshake:
                       any local process that reaches the endpoint can then run
                       events.

The secret
----------
The host passes a fresh secret, 32 to 128 hex digits, in
``ASYNC_WORKER_POOL_SECRET`` (never on the command line, which every user can
read). The worker removes it from its environment at start-up, so that the
handler and whatever it starts do not inherit it, and refuses to start without
it (exit status 2) unless ``--no-auth`` is given.

On every connection the worker first sends a challenge, ``C``, version byte 1 and
a fresh 32-byte nonce, and nothing else until the host answers with ``A``,
version byte 1 and HMAC-SHA256(secret, context + nonce), which is compared in
constant time. A wrong answer, a malformed one or none within the deadline closes
the connection: the peer never sees the ready frame (and with it the pid) and
never gets an event run. See ``docs/protocol.md``, "Handshake".

When it is listening, the worker prints one line to stdout, e.g.
``async_pool_worker: worker 0 listening on unix:/tmp/w0.sock (pid 1234, loop uvloop)``.
Logs go to stderr, one record per line with its level first
(``WARNING worker.0: message``; every line of a traceback carries it too), so
that the host can log each line at its level.

The event loop is uvloop's when the ``uvloop`` package is importable, else
asyncio's own (``ASYNC_WORKER_POOL_LOOP=asyncio`` forces asyncio's). Framing is
done by an ``asyncio.Protocol`` per connection, and each event runs the handler
in a task of its own. SIGTERM or SIGINT drains: no new connections are accepted,
events already received run to completion and are answered, idle connections are
closed at once, and the process exits with status 0.

Exit status: 0 after a drain, 1 if the endpoint cannot be opened, 2 for a usage
error or a handler that cannot be loaded, 3 for an ASGI app whose lifespan
startup failed.

Dying with the host: when the environment variable ``ASYNC_WORKER_POOL_LIFELINE``
is ``stdin`` (the host's launcher sets it), stdin is a pipe the host holds open
and never writes to. A thread of its own reads it, so that even a blocked event
loop cannot keep the worker alive: at end of file the host is gone, and the
worker removes its socket file (and the launcher's directory named by
``ASYNC_WORKER_POOL_SOCKET_DIR``, once nothing else is in it) and kills its own
process group, handler subprocesses included.

Handler contract
----------------
The handler is a coroutine function taking ``(context, event)``, in Nuclio's
order::

    async def handler(context, event):
        context.logger.info("got %d bytes", len(event.body))
        return event.body

A plain ``def`` handler is refused at start-up (exit status 2): it would block the
event loop and with it every other connection of this worker.

``context`` has:
    ``logger``      a ``logging.Logger`` named ``worker.N``, writing to stderr;
    ``worker_id``   this worker's number;
    ``trace``       the caller's W3C trace context, a dict with ``traceparent``
                    (``str``) and ``tracestate`` (``str`` or None), or None when
                    the event carries none (meta key ``trace``).

``event`` has:
    ``body``        the event body, ``bytes``;
    ``is_http``     False for a plain event (meta ``{}``), True for an HTTP event;
    ``method``      the HTTP method, ``str`` (None for a plain event);
    ``path``        the HTTP path, ``str`` (None for a plain event);
    ``headers``     a list of ``(name, value)`` tuples (empty for a plain event);
    ``header(name)`` the first value of that header, compared case-insensitively,
                    or None.

The handler may return:
    ``bytes`` (or ``bytearray``/``memoryview``)  the response body, status 200;
    ``str``                                       encoded as UTF-8, status 200;
    ``None``                                      an empty body, status 200;
    ``(status, body)``                            an int status and a body as above;
    ``(status, headers, body)``                   headers as a dict or a list of
                                                  ``(name, value)`` string pairs;
    ``Response(body=b"", status=200, headers=None)``  the same, spelled out.
Each is answered with an ``O`` frame.

Errors: if the handler raises an ``Exception``, the host gets an ``X`` frame whose
meta holds the exception's class name and message and whose body is the formatted
traceback; the connection stays open for the next event. Returning anything else
than the forms above is answered the same way, as a ``TypeError``. A response that
would not fit in ``--max-frame-bytes`` is answered as a ``ValueError``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import importlib
import inspect
import json
import logging
import os
import secrets
import signal
import stat
import struct
import sys
import threading
import traceback
from json.encoder import encode_basestring_ascii as _json_string

try:
    import resource
except ImportError:  # not on every platform; the fd limit is then left alone
    resource = None

try:
    import uvloop  # optional: a faster event loop, used when it is installed
except ImportError:
    uvloop = None

PROG = "async_pool_worker"
LIFELINE_ENV = "ASYNC_WORKER_POOL_LIFELINE"
SOCKET_DIR_ENV = "ASYNC_WORKER_POOL_SOCKET_DIR"
# `asyncio` runs the worker on asyncio's own loop even when uvloop is installed.
LOOP_ENV = "ASYNC_WORKER_POOL_LOOP"
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
# Room for an `X` answer with its type and a trimmed message.
MIN_FRAME_BYTES = 512
DEFAULT_CONNECTIONS = 1000
# Descriptors needed beyond one per connection: listening socket, stdio, logs,
# the event loop's self-pipe and whatever the handler opens itself.
SPARE_DESCRIPTORS = 64

_LENGTH = struct.Struct(">I")
_HEADER_LEN = 1 + _LENGTH.size  # kind byte + meta length
_EVENT_KIND = ord("E")
# Multiplexing (docs/protocol.md, "Multiplexing").
_MULTIPLEX_KIND = ord("M")
_CANCEL_KIND = ord("K")
MULTIPLEX_VERSION = 1
_STREAM = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">II")  # frame length, stream id

# The handshake (docs/protocol.md, "Handshake").
SECRET_ENV = "ASYNC_WORKER_POOL_SECRET"
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 64
HANDSHAKE_VERSION = 1
NONCE_LEN = 32
_MAC_LEN = 32
_ANSWER_LEN = 2 + _MAC_LEN  # kind byte + version byte + HMAC-SHA256
# Put before the nonce in the MAC, so that a tag made for this handshake version
# means nothing anywhere else.
_MAC_CONTEXT = b"async-worker-pool handshake v1: host answer\0"
DEFAULT_HANDSHAKE_TIMEOUT = 3.0
# Connections served beyond --connections: room for the host's liveness probes,
# each a fresh connection that completes the handshake and closes.
PROBE_CONNECTIONS = 4

log = logging.getLogger(PROG)


# --------------------------------------------------------------------------
# Protocol: envelope encoding and decoding
# --------------------------------------------------------------------------


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


def encode_envelope(kind: bytes, meta: dict, body: bytes = b"") -> bytes:
    """Build an envelope payload (without the frame length)."""
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    return b"".join((kind, _LENGTH.pack(len(meta_bytes)), meta_bytes, body))


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
    if len(payload) != _ANSWER_LEN or payload[0:1] != b"A" or payload[1] != HANDSHAKE_VERSION:
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


def parse_event(payload) -> Event:
    """Decode an `E` envelope from the host into an Event.

    `payload` is bytes or a memoryview of them; the body is copied out once.
    Raises ProtocolError for anything else: a short payload, another kind, a meta
    length past the end, meta that is not a UTF-8 JSON object, or HTTP fields of
    the wrong type.
    """
    if len(payload) < _HEADER_LEN:
        raise ProtocolError("envelope of %d bytes is shorter than its %d-byte header"
                            % (len(payload), _HEADER_LEN))
    if payload[0] != _EVENT_KIND:
        raise ProtocolError("unexpected envelope kind %r from the host (expected 'E')"
                            % bytes(payload[0:1]))
    (meta_len,) = _LENGTH.unpack_from(payload, 1)
    meta_end = _HEADER_LEN + meta_len
    if meta_end > len(payload):
        raise ProtocolError("meta length %d runs past the end of a %d-byte envelope"
                            % (meta_len, len(payload)))
    if meta_len == 2 and payload[_HEADER_LEN:meta_end] == b"{}":
        # A plain event, as the host sends it: no JSON to parse.
        return Event(bytes(payload[meta_end:]))
    meta = _parse_meta(bytes(payload[_HEADER_LEN:meta_end]))
    return _event_from_meta(meta, bytes(payload[meta_end:]))


def _parse_meta(raw: bytes) -> dict:
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


def _is_string_pair(item) -> bool:
    return (isinstance(item, (list, tuple)) and len(item) == 2
            and isinstance(item[0], str) and isinstance(item[1], str))


# --------------------------------------------------------------------------
# Handler results
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
        return b"O\0\0\0\x02{}" + result
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
        return b"O\0\0\0\x02{}" + body
    meta = ('{"status":%d,"headers":[%s]}' % (status, ",".join(
        "[%s,%s]" % (_json_string(name), _json_string(value)) for name, value in pairs))
    ).encode("ascii")
    head = b"O" + _LENGTH.pack(len(meta)) + meta
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


# --------------------------------------------------------------------------
# Handler loading
# --------------------------------------------------------------------------


class HandlerLoadError(Exception):
    """The --handler could not be imported or is not an async function."""


class Context:
    """What the handler gets as its first argument."""

    __slots__ = ("logger", "worker_id", "trace")

    def __init__(self, logger, worker_id, trace=None):
        self.logger = logger
        self.worker_id = worker_id
        self.trace = trace

    def for_event(self, event):
        """This context as one event sees it: itself, or a copy with the
        event's trace context (events run at once, so it cannot be shared)."""
        if event.trace is None:
            return self
        return Context(self.logger, self.worker_id, event.trace)


def load_handler(spec: str, handler_paths: list):
    """Import `module:function` and check that it is an async function."""
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise HandlerLoadError("--handler %r must be of the form module:function" % spec)
    for path in reversed([*handler_paths, os.getcwd()]):
        sys.path.insert(0, os.path.abspath(path))
    try:
        target = importlib.import_module(module_name)
    except BaseException as exc:  # SystemExit from a module body too: report, exit 2
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        raise HandlerLoadError("cannot import handler module %r for handler %r:\n%s"
                               % (module_name, spec, detail.rstrip())) from None
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise HandlerLoadError("handler %r: %r has no attribute %r"
                                   % (spec, getattr(target, "__name__", target), attr)) from None
    if not _is_async_callable(target):
        raise HandlerLoadError(
            "handler %r must be an 'async def' coroutine function taking "
            "(context, event), but it is a %s; a plain 'def' handler would block "
            "the event loop" % (spec, _describe(target)))
    return target


def _is_async_callable(obj) -> bool:
    return inspect.iscoroutinefunction(obj) or (
        callable(obj) and not inspect.isroutine(obj) and not inspect.isclass(obj)
        and inspect.iscoroutinefunction(getattr(obj, "__call__", None)))


def _describe(obj) -> str:
    if inspect.isasyncgenfunction(obj):
        return "async generator function"
    if inspect.isroutine(obj):
        return "plain (synchronous) function"
    return "%s object" % type(obj).__name__


# --------------------------------------------------------------------------
# Start-up helpers
# --------------------------------------------------------------------------


def raise_fd_limit(connections: int) -> None:
    """Raise the RLIMIT_NOFILE soft limit to fit `connections` sockets."""
    if resource is None:
        return
    # Every connection served, as many again in their handshake, and the rest.
    needed = 2 * (connections + PROBE_CONNECTIONS) + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    hard_ok = hard == resource.RLIM_INFINITY or hard >= needed
    target = needed if hard_ok else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        _warn("could not raise the open-file limit to %d: %s" % (target, exc))
        return
    if not hard_ok:
        _warn("%d connections need %d file descriptors, but the RLIMIT_NOFILE hard "
              "limit is %d; continuing with %d (raise it with e.g. 'ulimit -Hn %d')"
              % (connections, needed, hard, hard, needed))


# The listen backlog asked for at least: uvicorn's and gunicorn's default.
DEFAULT_BACKLOG = 2048


def _somaxconn():
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _listen_backlog(connections: int) -> int:
    """The larger of `connections` and DEFAULT_BACKLOG, capped by somaxconn
    (which the kernel would apply silently)."""
    wanted = max(connections, DEFAULT_BACKLOG)
    cap = _somaxconn()
    return min(wanted, cap) if cap else wanted


def _check_somaxconn(connections: int) -> None:
    # The kernel silently caps the listen backlog; a host connecting all at once
    # would then see some connects stall or fail.
    cap = _somaxconn()
    if cap is not None and cap < connections:
        _warn("net.core.somaxconn is %d, below the %d connections the host will "
              "open at once; some connects may be refused" % (cap, connections))


def _warn(message: str) -> None:
    _stderr("WARNING", message)


def _stderr(level: str, message: str) -> None:
    """Write `message` to stderr with `level` first on every line, as the log
    records are (see _LevelFormatter), without going through logging."""
    prefix = "%s %s: " % (level, PROG)
    print("\n".join(prefix + line for line in message.split("\n")), file=sys.stderr, flush=True)


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError("%s exists and is not a socket; refusing to remove it" % path)
    os.unlink(path)


def watch_lifeline(on_host_gone, fd: int = 0) -> threading.Thread:
    """Call `on_host_gone()` on a daemon thread once `fd` reaches end of file.

    A thread rather than the event loop, so that a handler blocking the loop
    cannot keep an orphaned worker alive.
    """
    def watch():
        try:
            while os.read(fd, 4096):
                pass  # the host never writes; anything read is ignored
        except OSError:
            pass
        on_host_gone()

    thread = threading.Thread(target=watch, name="lifeline", daemon=True)
    thread.start()
    return thread


def remove_launcher_dir(directory) -> None:
    """Remove the launcher's private directory once it holds nothing but this
    script: the last worker of a dead host to get here removes it."""
    if not directory:
        return
    script = os.path.join(directory, os.path.basename(__file__))
    try:
        if os.path.samefile(script, __file__):
            os.unlink(script)
            # The ASGI adapter the launcher writes beside it, if it did.
            os.unlink(os.path.join(directory, "async_pool_asgi.py"))
    except OSError:
        pass
    try:
        os.rmdir(directory)
    except OSError:
        pass  # other workers' sockets are still there, or it is gone already


def parse_tcp_address(text: str) -> tuple:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("%r is not HOST:PORT" % text)
    return host.strip("[]"), int(port)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("%r must be positive" % text)
    return value


def _frame_limit(text: str) -> int:
    value = _positive_int(text)
    if value < MIN_FRAME_BYTES:
        raise argparse.ArgumentTypeError("%r is below the minimum of %d" % (text, MIN_FRAME_BYTES))
    if value > 0xFFFFFFFF:
        raise argparse.ArgumentTypeError("%r does not fit the 4-byte frame length" % text)
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("%r must be positive" % text)
    return value


def _take_secret(parser, args) -> None:
    """Move the secret from the environment into `args.secret` (None with --no-auth)."""
    # Removed from the environment whatever happens, so that nothing the handler
    # starts inherits it.
    text = os.environ.pop(SECRET_ENV, None)
    args.secret = None
    if args.no_auth:
        return
    if text is None:
        parser.error("the environment variable %s must hold the secret the host "
                     "answers the handshake with (or pass --no-auth)" % SECRET_ENV)
    try:
        args.secret = parse_secret(text)
    except ValueError as exc:
        parser.error("%s %s" % (SECRET_ENV, exc))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Reference worker for the async-worker-pool crate.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--handler", metavar="MODULE:FUNCTION",
                      help="the async def handler(context, event) to run")
    what.add_argument("--asgi", metavar="MODULE:ATTR",
                      help="an ASGI 3 app to run instead (FastAPI, Starlette, ...)")
    parser.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto",
                        help="with --asgi: run the app's lifespan protocol (default %(default)s)")
    parser.add_argument("--root-path", default="", metavar="PATH",
                        help="with --asgi: the ASGI root_path (default empty)")
    parser.add_argument("--factory", action="store_true",
                        help="with --asgi: MODULE:ATTR is a factory; call it with no "
                             "arguments for the app")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="PATH", help="listen on this Unix socket")
    where.add_argument("--tcp", metavar="HOST:PORT", type=parse_tcp_address,
                       help="listen on this TCP address")
    parser.add_argument("--worker-id", required=True, type=int, metavar="N")
    parser.add_argument("--connections", type=_positive_int, default=DEFAULT_CONNECTIONS,
                        metavar="N", help="connections the host will open (default %(default)s)")
    parser.add_argument("--max-frame-bytes", type=_frame_limit, default=DEFAULT_MAX_FRAME_BYTES,
                        metavar="N", help="largest frame accepted or sent (default %(default)s)")
    parser.add_argument("--handler-path", action="append", default=[], metavar="DIR",
                        help="directory to search for the handler module (repeatable)")
    parser.add_argument("--handshake-timeout", type=_positive_float,
                        default=DEFAULT_HANDSHAKE_TIMEOUT, metavar="SECONDS",
                        help="close a connection that has not answered the handshake "
                             "by then (default %(default)s)")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve every connection without a handshake (insecure)")
    args = parser.parse_args(argv)
    _take_secret(parser, args)
    return args


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------

# A connection's states: answering the handshake, serving events, closed.
_HANDSHAKE, _SERVING, _CLOSED = range(3)
# A connection's task while its handler task is being made.
_STARTING = object()


class _Connection(asyncio.Protocol):
    """One host connection, framed at the protocol level: the event loop hands
    it the bytes as they arrive, and it runs one handler task per event.

    No StreamReader, no task per connection and no coroutine per frame: a frame
    that arrives whole (the usual case; the host writes each one at once) is
    decoded straight from the bytes the loop read.
    """

    __slots__ = ("worker", "number", "transport", "state", "buffer", "nonce", "timer",
                 "busy", "task", "mux", "on_lost")

    def __init__(self, worker):
        self.worker = worker
        self.number = 0
        self.transport = None
        self.state = _HANDSHAKE
        # Bytes of a frame not yet complete; empty between frames.
        self.buffer = bytearray()
        self.nonce = None
        self.timer = None
        # True from the moment an event's length has been read until its answer
        # is written: a drain must let such a connection finish.
        self.busy = False
        # The handler's task, held so that it is not collected mid-event; None
        # when no event runs.
        self.task = None
        # Once the host has asked to multiplex: the _Multiplexed that serves
        # the streams from then on.
        self.mux = None
        # Called once if the connection closes before the event is answered
        # (the ASGI adapter's http.disconnect); None otherwise.
        self.on_lost = None

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport):
        worker = self.worker
        worker.accepted += 1
        self.number = worker.accepted
        self.transport = transport
        if worker.draining:
            self.state = _CLOSED
            transport.close()
            return
        # Counted, not derived from the connections left: a connection the host
        # closed while its handler runs is still there, and holds no place.
        in_handshake = worker.handshaking
        if in_handshake >= worker.capacity or worker.serving >= worker.capacity:
            # Over the cap: refused before a byte is sent or read.
            log.warning("worker %d: refusing connection %d: %d served, %d in handshake",
                        worker.worker_id, self.number, worker.serving, in_handshake)
            self.state = _CLOSED
            transport.close()
            return
        worker.connections.add(self)
        if worker.secret is None:
            self._start_serving()
            return
        # Nothing but the challenge until the answer is right: no pid, no `R`.
        worker.handshaking += 1
        self.nonce = secrets.token_bytes(NONCE_LEN)
        challenge = encode_challenge(self.nonce)
        transport.write(_LENGTH.pack(len(challenge)) + challenge)
        self.timer = asyncio.get_running_loop().call_later(
            worker.handshake_timeout, self._handshake_expired)

    def data_received(self, data):
        try:
            if self.mux is not None:
                if self.state == _SERVING:
                    self.mux.data_received(data)
            elif self.state == _SERVING:
                if self.buffer:
                    self.buffer += data
                    if self.task is None:
                        self._next_event(self.buffer, True)
                elif self.task is None:
                    self._next_event(data, False)
                else:
                    self.buffer += data
            elif self.state == _HANDSHAKE:
                self.buffer += data
                self._handshake_data()
        except ProtocolError as exc:
            log.warning("worker %d: closing connection %d: %s",
                        self.worker.worker_id, self.number, exc)
            self.close()
        except Exception:
            # A bug here must cost one connection, not the whole worker.
            log.exception("worker %d: connection %d failed", self.worker.worker_id, self.number)
            self.close()

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc):
        if self.state == _HANDSHAKE and self.worker.secret is not None:
            # Closed before answering: the launcher's readiness check does that.
            log.debug("worker %d: connection %d closed during the handshake",
                      self.worker.worker_id, self.number)
        elif exc is not None:
            log.debug("worker %d: connection %d lost: %r", self.worker.worker_id, self.number, exc)
        self._closed()

    # -- the handshake -------------------------------------------------------

    def _handshake_data(self):
        buffer = self.buffer
        if len(buffer) < _LENGTH.size:
            return
        (length,) = _LENGTH.unpack_from(buffer)
        if length != _ANSWER_LEN:
            # Not an answer; refused without reading what it announces.
            answer = b""
        elif len(buffer) < _LENGTH.size + length:
            return
        else:
            answer = bytes(buffer[_LENGTH.size:_LENGTH.size + length])
            del buffer[:_LENGTH.size + length]
        self.timer.cancel()
        worker = self.worker
        if not check_answer(worker.secret, self.nonce, answer):
            log.warning("worker %d: closing connection %d: wrong handshake answer",
                        worker.worker_id, self.number)
            self.close()
        elif worker.serving >= worker.capacity:
            log.warning("worker %d: refusing connection %d: all %d places are taken",
                        worker.worker_id, self.number, worker.capacity)
            self.close()
        else:
            self._start_serving()
            if buffer:
                self._next_event(buffer, True)

    def _handshake_expired(self):
        if self.state == _HANDSHAKE:
            log.warning("worker %d: closing connection %d: no handshake answer within %gs",
                        self.worker.worker_id, self.number, self.worker.handshake_timeout)
            self.close()

    def _leave_handshake(self):
        if self.state == _HANDSHAKE and self.nonce is not None:
            self.worker.handshaking -= 1

    def _start_serving(self):
        self._leave_handshake()
        self.state = _SERVING
        self.worker.serving += 1
        # Written from this callback of the event loop: a probe's `R` proves the
        # loop runs (docs/protocol.md, "Liveness probes").
        self.transport.write(self.worker.ready_frame)

    # -- events ----------------------------------------------------------------

    def _next_event(self, data, buffered):
        """Start the event at the front of `data` if it has arrived whole.

        `data` is either the bytes just read (`buffered` False: nothing was
        pending) or this connection's buffer.
        """
        size = len(data)
        if size < _LENGTH.size:
            if not buffered:
                self.buffer += data
            return
        (length,) = _LENGTH.unpack_from(data)
        if length > self.worker.max_frame:
            # Refuse before reading: the payload is never buffered.
            raise ProtocolError("frame of %d bytes exceeds --max-frame-bytes %d"
                                % (length, self.worker.max_frame))
        self.busy = True
        end = _LENGTH.size + length
        if size < end:
            if not buffered:
                self.buffer += data
            return
        if data[_LENGTH.size] == _MULTIPLEX_KIND:
            rest = bytes(memoryview(data)[end:])
            self._start_multiplexing(bytes(memoryview(data)[_LENGTH.size:end]))
            if buffered:
                del data[:]
            self.mux.data_received(rest)
            return
        if buffered:
            event = parse_event(bytes(memoryview(data)[_LENGTH.size:end]))
            del data[:end]
        else:
            event = parse_event(memoryview(data)[_LENGTH.size:end])
            if size > end:
                # The next event came early; it waits for this one's answer.
                self.buffer += memoryview(data)[end:]
        # Set before the task starts: an eager task may answer (and clear it)
        # before start_event returns.
        self.task = _STARTING
        task = self.worker.start_event(self, event)
        if self.task is _STARTING:
            self.task = task

    def _start_multiplexing(self, request):
        """The host's `M`: from now on every frame carries a stream id."""
        self.busy = False
        meta = _parse_meta(bytes(request[_HEADER_LEN:]))
        if meta.get("version") != MULTIPLEX_VERSION:
            raise ProtocolError("multiplexing version %r requested; this worker speaks %d"
                                % (meta.get("version"), MULTIPLEX_VERSION))
        self.mux = _Multiplexed(self)
        ack = encode_envelope(b"M", {"version": MULTIPLEX_VERSION})
        self.transport.write(_LENGTH.pack(len(ack)) + ack)

    def answered(self, answer):
        """The handler's task is done: send `answer` (an envelope) unless the
        connection is gone, and take the next event."""
        self.task = None
        self.busy = False
        if self.state != _SERVING:
            self._closed()
            return
        transport = self.transport
        if len(answer) < _LARGE_BODY:
            transport.write(_LENGTH.pack(len(answer)) + answer)
        else:
            transport.writelines((_LENGTH.pack(len(answer)), answer))
        if self.worker.draining:
            self.close()
        elif self.buffer:
            self.data_received(b"")

    def write_part(self, envelope) -> bool:
        """Write a frame of an answer before its last one (a streamed response);
        False, writing nothing, once the connection is closed."""
        if self.state != _SERVING:
            return False
        if len(envelope) < _LARGE_BODY:
            self.transport.write(_LENGTH.pack(len(envelope)) + envelope)
        else:
            self.transport.writelines((_LENGTH.pack(len(envelope)), envelope))
        return True

    def abandoned(self):
        """The handler's task ended without an answer: close the connection."""
        self.task = None
        self.busy = False
        self.close()

    # -- closing -------------------------------------------------------------

    def close(self):
        """Close the connection once what was written has gone out."""
        if self.transport is not None:
            self.transport.close()
        self._closed()

    def _closed(self):
        if self.mux is not None:
            self.mux.lost()
        self._leave_handshake()
        if self.state == _SERVING:
            self.worker.serving -= 1
        if self.state != _CLOSED:
            self.state = _CLOSED
            if self.timer is not None:
                self.timer.cancel()
        lost = self.on_lost
        if lost is not None:
            self.on_lost = None
            lost()
        if not self.busy:
            # A busy connection is forgotten once its handler is done.
            self.worker.forget(self)


# Above this size an answer goes out as two buffers instead of being joined.
_LARGE_BODY = 64 * 1024

# The confirmation of a cancel frame: `Q`, since `D` ends a streamed answer.
_CANCELLED_ENVELOPE = encode_envelope(b"Q", {})


class _Multiplexed:
    """The streams of a connection the host asked to multiplex.

    Every frame read is handled at once, each event in a task of its own;
    answers (and cancel confirmations) are queued and written together once
    per loop iteration, so a read of many events costs one write back.
    """

    __slots__ = ("conn", "buffer", "tasks", "cancelling", "outgoing", "flush_pending",
                 "parts")

    def __init__(self, conn):
        self.conn = conn
        # Bytes of a frame not yet complete.
        self.buffer = bytearray()
        # Stream id -> its handler's task (_STARTING while it is being made).
        self.tasks = {}
        # Streams the host cancelled whose task has not ended yet.
        self.cancelling = set()
        # Frames to write at the end of this loop iteration.
        self.outgoing = []
        self.flush_pending = False
        # Stream id -> its _StreamAnswer, for events run by the ASGI runner.
        self.parts = {}

    def data_received(self, data):
        buffer = self.buffer
        if buffer:
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        size = len(data)
        max_frame = self.conn.worker.max_frame
        view = memoryview(data)
        at = 0
        while size - at >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(data, at)
            if length > max_frame:
                raise ProtocolError("frame of %d bytes exceeds --max-frame-bytes %d"
                                    % (length, max_frame))
            end = at + _LENGTH.size + length
            if end > size:
                break
            self._frame(view[at + _LENGTH.size:end])
            at = end
        if at < size:
            buffer += view[at:]

    def _frame(self, payload):
        if len(payload) < _STREAM.size + 1:
            raise ProtocolError("multiplexed frame of %d bytes has no envelope" % len(payload))
        (stream,) = _STREAM.unpack_from(payload)
        if payload[_STREAM.size] == _CANCEL_KIND:
            self._cancel(stream)
            return
        tasks = self.tasks
        if stream in tasks:
            raise ProtocolError("an event for stream %d, which has one in flight" % stream)
        event = parse_event(payload[_STREAM.size:])
        self.conn.busy = True
        tasks[stream] = _STARTING
        task = self.conn.worker.start_stream_event(self, stream, event)
        if tasks.get(stream) is _STARTING:
            tasks[stream] = task

    def _cancel(self, stream):
        task = self.tasks.get(stream)
        if task is None:
            # Answered already (the answer crossed the cancel frame): confirm.
            self._send(stream, _CANCELLED_ENVELOPE)
            return
        self.cancelling.add(stream)
        part = self.parts.pop(stream, None)
        if part is not None and part.on_lost is not None:
            # An ASGI app hears http.disconnect first and is cancelled after
            # a grace; its exchange then gives the stream up, which confirms.
            lost, part.on_lost = part.on_lost, None
            lost()
        elif task is not _STARTING:
            self._cancel_task(stream, task)

    def _cancel_task(self, stream, task):
        task.cancel()
        # A task cancelled before its first step never runs its body, whose
        # end is what confirms the cancel (or frees the stream): without this
        # the host would wait for a `Q` that never comes.
        task.add_done_callback(lambda ended: self._cancelled(stream, ended))

    def _cancelled(self, stream, task):
        if self.tasks.get(stream) is task:
            self.parts.pop(stream, None)
            self.done(stream, None)

    def done(self, stream, answer):
        """The task of `stream` ended, with `answer` (an envelope) or None."""
        tasks = self.tasks
        tasks.pop(stream, None)
        conn = self.conn
        if stream in self.cancelling:
            self.cancelling.discard(stream)
            self._send(stream, _CANCELLED_ENVELOPE)
        elif answer is not None:
            self._send(stream, answer)
        elif conn.state == _SERVING:
            # Ended without an answer nobody asked to cancel: the host would
            # wait for it forever, so fail the connection's events instead.
            log.warning("worker %d: an event on connection %d ended without an answer",
                        conn.worker.worker_id, conn.number)
            conn.close()
        if not tasks:
            conn.busy = False
            if conn.state == _CLOSED:
                conn.worker.forget(conn)

    def _send(self, stream, envelope):
        if self.conn.state != _SERVING:
            return
        self.outgoing.append(_FRAME_HEAD.pack(len(envelope) + _STREAM.size, stream))
        self.outgoing.append(envelope)
        if not self.flush_pending:
            self.flush_pending = True
            self.conn.worker.loop.call_soon(self._flush)

    def _flush(self):
        self.flush_pending = False
        outgoing, self.outgoing = self.outgoing, []
        conn = self.conn
        if conn.state != _SERVING:
            return
        conn.transport.write(b"".join(outgoing))
        if conn.worker.draining and not self.tasks:
            conn.close()

    def lost(self):
        """The connection closed: cancel every event still running on it (an
        ASGI app hears http.disconnect first)."""
        self.outgoing = []
        parts, self.parts = self.parts, {}
        for stream, task in list(self.tasks.items()):
            part = parts.get(stream)
            if part is not None and part.on_lost is not None:
                lost, part.on_lost = part.on_lost, None
                lost()
            elif task is not _STARTING:
                self._cancel_task(stream, task)

    def stream_conn(self, stream):
        """What an ASGI exchange answers `stream` through: the interface of a
        connection (see async_pool_asgi.AsgiRunner)."""
        part = _StreamAnswer(self, stream)
        self.parts[stream] = part
        return part


class _StreamAnswer:
    """One stream of a multiplexed connection, as the ASGI runner sees a
    connection: parts of a streamed answer go out with the next flush, and
    its last frame (or giving it up) ends the stream's event."""

    __slots__ = ("mux", "stream", "on_lost")

    def __init__(self, mux, stream):
        self.mux = mux
        self.stream = stream
        self.on_lost = None

    def answered(self, answer):
        self._end(answer)

    def abandoned(self):
        self._end(None)

    def write_part(self, envelope) -> bool:
        mux = self.mux
        if mux.conn.state != _SERVING or self.stream in mux.cancelling:
            return False
        mux._send(self.stream, envelope)
        return True

    def _end(self, answer):
        mux = self.mux
        if mux.parts.get(self.stream) is self:
            del mux.parts[self.stream]
        if self.stream in mux.tasks:
            mux.done(self.stream, answer)


class Worker:
    def __init__(self, args, handler, asgi=None):
        self.args = args
        self.handler = handler
        # An async_pool_asgi.AsgiRunner with --asgi, else None.
        self.asgi = asgi
        self.worker_id = args.worker_id
        self.max_frame = args.max_frame_bytes
        self.context = Context(logging.getLogger("worker.%d" % args.worker_id), args.worker_id)
        self.secret = args.secret
        self.handshake_timeout = args.handshake_timeout
        # At most this many connections served, and as many in their handshake.
        self.capacity = args.connections + PROBE_CONNECTIONS
        self.connections = set()
        self.serving = 0
        # Connections answering the handshake now.
        self.handshaking = 0
        self.accepted = 0
        self.draining = False
        self.server = None
        self.socket_inode = None
        self.stop = None
        self.drained = None
        self.loop = None
        ready = encode_envelope(b"R", {"pid": os.getpid(), "worker_id": self.worker_id})
        self.ready_frame = _LENGTH.pack(len(ready)) + ready

    # -- life cycle --------------------------------------------------------

    async def run(self) -> int:
        self.loop = loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.drained = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.begin_drain, signum)
        if self.asgi is not None:
            # Before listening: the host counts the worker ready once it accepts.
            await self.asgi.startup()
        self.server = await self._start_server()
        print("%s: worker %d listening on %s (pid %d, loop %s)"
              % (PROG, self.worker_id, self._endpoint(), os.getpid(), loop_name(loop)),
              flush=True)
        if self.draining:  # a signal came while the server was starting
            self._close_server()
        await self.stop.wait()
        # Connections remove themselves when done; wait until none is left.
        if self.connections:
            await self.drained.wait()
        if self.asgi is not None:
            await self.asgi.shutdown()
        log.info("worker %d: drained, exiting", self.worker_id)
        return 0

    async def _start_server(self):
        loop = asyncio.get_running_loop()
        backlog = _listen_backlog(self.args.connections)
        if self.args.unix:
            _remove_stale_socket(self.args.unix)
            server = await loop.create_unix_server(
                lambda: _Connection(self), path=self.args.unix, backlog=backlog)
            self.socket_inode = os.stat(self.args.unix).st_ino
            return server
        host, port = self.args.tcp
        return await loop.create_server(
            lambda: _Connection(self), host=host, port=port, backlog=backlog)

    def _endpoint(self) -> str:
        if self.args.unix:
            return "unix:%s" % self.args.unix
        host, port = self.server.sockets[0].getsockname()[:2]
        return "tcp:%s:%d" % (host if ":" not in host else "[%s]" % host, port)

    def begin_drain(self, signum) -> None:
        """Signal handler: stop accepting, close idle connections, finish the rest."""
        if self.draining:
            return
        self.draining = True
        busy = sum(1 for conn in self.connections if conn.busy)
        log.info("worker %d: %s received, draining (%d event(s) in flight, %d connection(s))",
                 self.worker_id, signal.Signals(signum).name, busy, len(self.connections))
        self._close_server()
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()
            elif conn.mux is not None:
                # A multiplexed connection would bring new events for as long
                # as the host sends them: take no more, finish those running.
                conn.transport.pause_reading()
        self.stop.set()

    def forget(self, conn) -> None:
        self.connections.discard(conn)
        if self.draining and not self.connections:
            self.drained.set()

    def _close_server(self) -> None:
        if self.server is not None:
            self.server.close()
        self.cleanup_socket()

    def host_gone(self) -> None:
        """The lifeline broke: the host died without stopping us. Runs on the
        lifeline thread; nothing is left to drain for, so clean up and die."""
        try:
            # stderr was a pipe to the host: with the host gone, writing to it
            # fails, and nothing may stop the clean-up below.
            _warn("worker %d: the host is gone (its lifeline closed); exiting" % self.worker_id)
        except OSError:
            pass
        try:
            self.cleanup_socket()
            remove_launcher_dir(os.environ.get(SOCKET_DIR_ENV))
        finally:
            if os.getpgrp() == os.getpid():
                # Our own process group (the launcher makes one): take the
                # handler's subprocesses with us.
                os.killpg(0, signal.SIGKILL)
            os._exit(3)

    def cleanup_socket(self) -> None:
        """Remove our Unix socket file, unless someone else has replaced it."""
        if not self.args.unix or self.socket_inode is None:
            return
        try:
            if os.stat(self.args.unix).st_ino == self.socket_inode:
                os.unlink(self.args.unix)
        except OSError:
            pass
        self.socket_inode = None

    # -- events ------------------------------------------------------------

    def start_event(self, conn, event):
        """Run the handler on `event` in a task of its own, which answers on
        `conn` when it is done. Returns the task."""
        if self.asgi is not None:
            return self.asgi.start(conn, event)
        return _new_task(self.loop, self._serve_event(conn, event))

    def start_stream_event(self, mux, stream, event):
        """Run the handler on `event`, which came on `stream` of a multiplexed
        connection, in a task of its own. Returns the task."""
        if self.asgi is not None:
            return self.asgi.start(mux.stream_conn(stream), event)
        return _new_task(self.loop, self._serve_stream(mux, stream, event))

    async def _serve_stream(self, mux, stream, event) -> None:
        answer = None
        try:
            answer = await self._answer(event)
        finally:
            mux.done(stream, answer)

    async def _serve_event(self, conn, event) -> None:
        try:
            answer = await self._answer(event)
        except BaseException:
            # Cancelled, or an exit: no answer will come, so the host must not
            # wait for one on this connection.
            conn.abandoned()
            raise
        conn.answered(answer)

    async def _answer(self, event: Event) -> bytes:
        """Run the handler on one event and return the answer's envelope."""
        try:
            context = self.context.for_event(event)
            envelope = encode_response(await self.handler(context, event))
        except Exception as exc:
            log.debug("worker %d: handler raised %r", self.worker_id, exc)
            return encode_raised(exc, self.max_frame)
        if len(envelope) > self.max_frame:
            log.warning("worker %d: a %d-byte response exceeds --max-frame-bytes %d",
                        self.worker_id, len(envelope), self.max_frame)
            return encode_raised(ValueError(
                "response of %d bytes exceeds the maximum frame length %d"
                % (len(envelope), self.max_frame)), self.max_frame)
        return envelope


if sys.version_info >= (3, 12):
    def _new_task(loop, coro):
        # Eager: a handler that does not wait is answered without a trip
        # through the loop's ready queue.
        return asyncio.Task(coro, loop=loop, eager_start=True)
else:
    def _new_task(loop, coro):
        return loop.create_task(coro)


def loop_name(loop) -> str:
    """`uvloop` or `asyncio`: which event loop the worker runs on."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


class _LevelFormatter(logging.Formatter):
    """Puts the level first on every line of a record, tracebacks included:
    ``WARNING worker.0: message``. The host's launcher reads that word and logs
    the line at that level (no time stamp: the host adds its own)."""

    def format(self, record):
        text = super().format(record)
        prefix = "%s %s: " % (record.levelname, record.name)
        return "\n".join(prefix + line for line in text.split("\n"))


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def _event_loop_factory():
    """uvloop's loop when it is importable and not turned off with
    ASYNC_WORKER_POOL_LOOP=asyncio, else asyncio's own."""
    if uvloop is not None and os.environ.get(LOOP_ENV, "auto") != "asyncio":
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _run(coro, loop_factory):
    """asyncio.run on a loop of `loop_factory`'s."""
    if hasattr(asyncio, "Runner"):  # Python 3.11 and later
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro)
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


class LifespanFailure(Exception):
    """Stands for async_pool_asgi.LifespanFailure until --asgi loads it."""


def _asgi_module():
    # Imported only with --asgi: a handler worker does not pay for it. It lives
    # beside this script (the launcher writes both).
    global LifespanFailure
    import async_pool_asgi
    LifespanFailure = async_pool_asgi.LifespanFailure
    return async_pool_asgi


def _load_asgi(args):
    """The AsgiRunner for --asgi; HandlerLoadError if the app cannot be loaded."""
    asgi = _asgi_module()
    try:
        app = asgi.load_app(args.asgi, args.handler_path, args.factory)
    except asgi.AsgiLoadError as exc:
        raise HandlerLoadError(str(exc)) from None
    return asgi.AsgiRunner(app, args.worker_id, args.max_frame_bytes, args.lifespan,
                           args.root_path)


def main(argv=None) -> int:
    args = parse_args(argv)
    _setup_logging()
    handler = asgi = None
    try:
        if args.asgi is not None:
            asgi = _load_asgi(args)
        else:
            handler = load_handler(args.handler, args.handler_path)
    except HandlerLoadError as exc:
        _stderr("ERROR", str(exc))
        return 2
    raise_fd_limit(args.connections)
    _check_somaxconn(args.connections)
    worker = Worker(args, handler, asgi)
    if os.environ.get(LIFELINE_ENV) == "stdin":
        watch_lifeline(worker.host_gone)
    try:
        return _run(worker.run(), _event_loop_factory())
    except LifespanFailure as exc:
        failure = str(exc)
        _stderr("ERROR", "the ASGI app's lifespan startup failed:\n%s" % failure)
        # Last, so that the launcher's error (which quotes the last lines) names it.
        _stderr("ERROR", "worker %d not started: lifespan startup failed: %s"
                % (args.worker_id, _asgi_module().summary(failure)))
        return 3
    except OSError as exc:
        where = "unix:%s" % args.unix if args.unix else "tcp:%s:%d" % args.tcp
        _stderr("ERROR", "cannot listen on %s: %s" % (where, exc))
        return 1
    finally:
        worker.cleanup_socket()


if __name__ == "__main__":
    # Handlers do `from async_pool_worker import Response`; make that name this very
    # module, not a second copy whose Response class would be a different one.
    sys.modules.setdefault("async_pool_worker", sys.modules[__name__])
    sys.exit(main())
