"""ASGI 3 apps (FastAPI, Starlette, ...) as an app adapter of the worker.

The worker imports this module when it is started with ``--asgi MODULE:ATTR``
instead of ``--handler``; a handler worker does not pay for it. Only the
standard library is needed here; the app brings its own framework.

What an app sees, and how it maps onto the wire protocol (``docs/protocol.md``):

- **Scope**, built from the ``E`` event as uvicorn builds it: ``type`` "http",
  ``asgi`` {"version": "3.0", "spec_version": "2.4"}, ``http_version``,
  ``method``, ``scheme``, ``path`` (percent-decoded) and ``raw_path``,
  ``query_string`` (raw bytes, from the part of the event's path after ``?``),
  ``root_path`` (``--root-path``, empty by default), ``headers`` (lower-cased
  names and values as bytes, repeats kept in order), ``client`` and ``server``
  ((host, port) when the host sent them, else None), and ``state``, a shallow
  copy of what the lifespan startup put in its own ``state``.
- **receive()**: first the whole body, ``{"type": "http.request", "body": ...,
  "more_body": False}`` (the host sends the body in one frame); after that it
  waits, and returns ``{"type": "http.disconnect"}`` once the response is
  complete or the host closed the connection. The host closes it when the event
  times out or its caller went away; the app then gets ``http.disconnect``, a
  ``send()`` raises ``OSError``, and the app's task is cancelled
  ``DISCONNECT_GRACE`` seconds later if it has not finished by then.
- **send()**: ``http.response.start``, then ``http.response.body`` messages.
  When the host asked for streaming (``"stream": true`` in the event meta) and
  the app sends a body with ``more_body=True``, the response goes out as it is
  sent: an ``H`` frame (status, headers and the first chunk), ``B`` frames, and
  a ``D`` frame with the last chunk. A response sent in one body message, or
  any response when the host did not ask for streaming, goes out as one ``O``
  frame, as a handler's return value does.
- **Errors**: an exception before any of the response went to the host is
  answered with ``X`` (the host makes it a 500); after the ``H`` frame, the
  error is logged and an ``X`` frame ends the exchange, which the host reads as
  a cut stream. An app that returns without a complete response is treated as
  if it had raised.
- **Lifespan** (``--lifespan auto|on|off``, as uvicorn's; lifespan.py):
  ``startup`` runs before the worker listens, and a failed one makes it exit
  with status 3; ``shutdown`` runs when it drains, once the events in flight
  and the app's background work have finished.
- **WebSocket**: a WebSocket event (docs/protocol.md, "WebSocket") runs the
  app with a ``websocket`` scope, as websocket.py describes: connect, accept
  with a subprotocol and headers, messages both ways with flow control,
  disconnect and close with their codes, and the ``websocket.http.response``
  denial extension. An HTTP request that asks to upgrade (from a host that
  does not send WebSocket events) still gets a 501 without the app being
  called.

Known limits: the request body arrives whole (one frame, so at most
``--max-frame-bytes``), and a streamed response is not slowed down by a slow
host: ``send()`` writes each chunk at once, so an app that produces much
faster than its client reads buffers the difference in this process (the host
side is bounded: it reads from the worker only as fast as its client takes).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from urllib.parse import unquote

from . import websocket as _websocket
from .importer import AppLoadError, load_app
from .lifespan import Lifespan
from .loops import new_task
from .protocol import EMPTY_META, encode_head_meta, encode_raised, pack_envelope

HTTP_ASGI = {"version": "3.0", "spec_version": "2.4"}
# How long an app may go on after the host closed its connection before its
# task is cancelled: time to see `http.disconnect` and stop by itself.
DISCONNECT_GRACE = 1.0
# How long a drain waits for the app's background work (BackgroundTasks run
# after the response is sent) before the lifespan shutdown.
BACKGROUND_GRACE = 10.0

_WEBSOCKET_REFUSAL = (b"the async-worker-pool ASGI adapter does not support WebSocket; "
                      b"only HTTP requests reach the app\n")

log = logging.getLogger("async_pool_worker.asgi")


class ClientDisconnected(OSError):
    """Raised by send() once the host has closed the event's connection."""


def load_asgi_app(spec: str, app_paths, factory: bool = False):
    """Import ``module:attr`` (attr may be dotted) and return it as an ASGI 3
    callable; an ASGI 2 class or factory is wrapped, as uvicorn does. With
    ``factory``, the attribute is called with no arguments and what it returns
    is the app (uvicorn's ``--factory``)."""
    target = load_app(spec, app_paths, "--asgi", "module:attribute")
    if factory:
        if not callable(target):
            raise AppLoadError("--asgi %r with --factory is a %s, not a callable"
                               % (spec, type(target).__name__))
        try:
            target = target()
        except Exception as exc:
            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            raise AppLoadError("the app factory --asgi %r raised:\n%s"
                               % (spec, detail.rstrip())) from None
    if not callable(target):
        raise AppLoadError("--asgi %r is a %s, not an ASGI application"
                           % (spec, type(target).__name__))
    if _is_asgi3(target):
        return target
    return _Asgi2(target)


def _is_asgi3(app) -> bool:
    # uvicorn's test: an ASGI 2 app is a class, or a plain function, whose
    # result is then awaited with (receive, send).
    if inspect.isclass(app):
        return hasattr(app, "__await__")
    if inspect.isfunction(app):
        return inspect.iscoroutinefunction(app)
    return inspect.iscoroutinefunction(getattr(app, "__call__", None))


class _Asgi2:
    __slots__ = ("app",)

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope)(receive, send)


# --------------------------------------------------------------------------
# The scope
# --------------------------------------------------------------------------


def _text(value) -> str:
    # ASGI gives header names and values as bytes; HTTP's are Latin-1.
    if isinstance(value, str):
        return value
    return bytes(value).decode("latin-1")


def _header_bytes(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # the host decoded a non-Latin-1 value lossily
        return text.encode("utf-8")


def _address(value):
    if value is None:
        return None
    if type(value) is list and len(value) == 2 and type(value[0]) is str \
            and type(value[1]) is int:
        return (value[0], value[1])
    return None


def _scope_headers(pairs) -> list:
    try:
        return [(name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in pairs]
    except UnicodeEncodeError:  # rare: the host decoded a value lossily
        return [(name.lower().encode("latin-1", "replace"), _header_bytes(value))
                for name, value in pairs]


def build_scope(event, state: dict, root_path: str = "") -> dict:
    """The HTTP scope for an event, as uvicorn would build it for the same
    request. `event` is the worker's Event; its meta may carry ``scheme``,
    ``client``, ``server`` and ``http_version`` (docs/protocol.md)."""
    meta = event.meta or {}
    target = event.path
    raw, _, query = target.partition("?")
    path = unquote(raw) if "%" in raw else raw
    scheme = meta.get("scheme")
    http_version = meta.get("http_version")
    return {
        "type": "http",
        "asgi": HTTP_ASGI,
        "http_version": http_version if isinstance(http_version, str) else "1.1",
        "method": event.method,
        "scheme": scheme if isinstance(scheme, str) else "http",
        "path": root_path + path,
        "raw_path": raw.encode("utf-8"),
        "query_string": query.encode("utf-8"),
        "root_path": root_path,
        "headers": _scope_headers(event.headers),
        "client": _address(meta.get("client")),
        "server": _address(meta.get("server")),
        "state": state.copy(),
    }


def _asks_websocket(scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"upgrade" and value.lower() == b"websocket":
            return True
    return False


# --------------------------------------------------------------------------
# One request
# --------------------------------------------------------------------------

_OPEN, _STARTED, _STREAMING, _DONE = range(4)


class _Exchange:
    """One event run through the app: its receive() and send(), and what has
    been answered on the connection."""

    __slots__ = ("adapter", "conn", "stream", "body", "body_taken", "phase", "status",
                 "headers", "chunks", "size", "disconnected", "waiter", "released",
                 "task", "cancel_timer")

    def __init__(self, adapter, conn, event):
        self.adapter = adapter
        self.conn = conn
        self.stream = (event.meta or {}).get("stream") is True
        self.body = event.body
        self.body_taken = False
        self.phase = _OPEN
        self.status = 200
        self.headers = []
        self.chunks = []
        self.size = 0
        self.disconnected = False
        self.waiter = None
        # True once the connection has had its answer (or was given up):
        # from then on nothing more is written for this event.
        self.released = False
        self.task = None
        self.cancel_timer = None

    async def receive(self):
        if not self.body_taken:
            self.body_taken = True
            body, self.body = self.body, b""
            return {"type": "http.request", "body": body, "more_body": False}
        if not self.disconnected and self.phase != _DONE:
            self.waiter = self.adapter.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return {"type": "http.disconnect"}

    async def send(self, message):
        if self.disconnected:
            raise ClientDisconnected("the host closed the connection of this request")
        kind = message["type"]
        if self.phase == _OPEN:
            if kind != "http.response.start":
                raise RuntimeError("expected ASGI message 'http.response.start', got %r" % kind)
            status = message["status"]
            if not isinstance(status, int) or isinstance(status, bool) \
                    or not 100 <= status <= 999:
                raise RuntimeError("ASGI 'http.response.start' has status %r; expected "
                                   "an int in 100..999" % (status,))
            self.status = status
            self.headers = [(_text(name), _text(value))
                            for name, value in message.get("headers", ())]
            self.phase = _STARTED
            return
        if self.phase == _DONE:
            raise RuntimeError("ASGI message %r sent after the response was complete" % kind)
        if kind != "http.response.body":
            raise RuntimeError("expected ASGI message 'http.response.body', got %r" % kind)
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.phase == _STREAMING:
            if more:
                self._send_chunks(b"B", body)
            else:
                self._finish_stream(body)
        elif not more and not self.chunks:
            # The whole body in one message: one `O` frame, streaming asked or not.
            self._answer_whole(body)
        elif self.stream and not self.chunks:
            self.phase = _STREAMING
            self.adapter.streamed += 1
            head = encode_head_meta(self.status, self.headers)
            self._write(pack_envelope(b"H", head, body[:self._room()]))
            self._send_chunks(b"B", body[self._room():])
        else:
            if body:
                self.chunks.append(bytes(body))
                self.size += len(body)
            if not more:
                self._answer_whole(b"".join(self.chunks))

    def _room(self) -> int:
        # Body bytes that fit in a frame with an `H` head; `B` and `D` have less meta.
        head = encode_head_meta(self.status, self.headers)
        return max(1, self.adapter.max_frame - 5 - len(head))

    def _answer_whole(self, body):
        self.chunks = []
        meta = b"{}" if self.status == 200 and not self.headers \
            else encode_head_meta(self.status, self.headers)
        envelope = pack_envelope(b"O", meta, body)
        if len(envelope) > self.adapter.max_frame:
            raise ValueError("response of %d bytes exceeds the maximum frame length %d"
                             % (len(envelope), self.adapter.max_frame))
        self._release(envelope)

    def _send_chunks(self, kind, body):
        if not body:
            return
        step = self.adapter.max_frame - 7
        view = memoryview(body)
        for at in range(0, len(view), step):
            self._write(kind + EMPTY_META + view[at:at + step])

    def _finish_stream(self, body):
        step = self.adapter.max_frame - 7
        self._send_chunks(b"B", body[:max(0, len(body) - step)])
        self._release(b"D" + EMPTY_META + bytes(body[max(0, len(body) - step):]))

    def _write(self, envelope):
        if not self.conn.write_part(envelope):
            self._lost()
            raise ClientDisconnected("the host closed the connection of this request")

    def _release(self, answer):
        """Answer the host once: `answer` is the last envelope, or None to give
        the connection up without one."""
        self.phase = _DONE
        self._wake()
        if self.released:
            return
        self.released = True
        conn, self.conn.on_lost = self.conn, None
        if answer is None:
            conn.abandoned()
        else:
            conn.answered(answer)

    def _wake(self):
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _lost(self):
        """The host closed the connection: tell the app, then cancel it."""
        if self.released or self.disconnected:
            return
        self.disconnected = True
        self._wake()
        task = self.task
        if task is not None and not task.done():
            self.cancel_timer = self.adapter.loop.call_later(DISCONNECT_GRACE, task.cancel)

    async def run(self, scope):
        app = self.adapter.app
        try:
            await app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._release(None)
            raise
        except Exception as exc:
            self._failed(exc)
        except BaseException:
            self._release(None)
            raise
        else:
            if self.phase != _DONE:
                self._failed(RuntimeError(
                    "the ASGI app returned without %s a response"
                    % ("starting" if self.phase == _OPEN else "completing")))
        finally:
            if self.cancel_timer is not None:
                self.cancel_timer.cancel()

    def _failed(self, exc):
        adapter = self.adapter
        if self.disconnected:
            log.info("worker %d: the ASGI app stopped after its client went away: %r",
                     adapter.worker_id, exc)
            self._release(None)
        elif self.phase == _DONE:
            # Raised after the whole response went out (a background task, say).
            adapter.log_exception("after its response was sent", exc)
        elif self.phase == _STREAMING:
            adapter.log_exception("mid-stream; the response is cut", exc)
            self._release(encode_raised(exc, adapter.max_frame))
        else:
            # Nothing reached the host yet: it answers its client with a 500.
            self._release(encode_raised(exc, adapter.max_frame))


# --------------------------------------------------------------------------
# The adapter: what the worker hands events to
# --------------------------------------------------------------------------


class AsgiAdapter:
    """Runs an ASGI app for the worker: ``startup()`` before listening,
    ``start(conn, event)`` per event, ``shutdown()`` after the drain, as
    handler.HandlerAdapter does for a handler.

    `conn` is a connection, or one stream of a multiplexed one: it gives the
    adapter ``answered(envelope)`` (the last frame of the exchange),
    ``abandoned()``, ``write_part(envelope) -> bool`` (a frame before the
    last; False once the connection is closed) and an ``on_lost`` attribute
    the adapter sets, called once if the connection closes mid-exchange.
    """

    def __init__(self, app, worker_id: int, max_frame: int, lifespan: str = "auto",
                 root_path: str = ""):
        self.app = app
        self.worker_id = worker_id
        self.max_frame = max_frame
        self.root_path = root_path
        self.lifespan = Lifespan(app, lifespan, worker_id)
        self.loop = None
        # Tasks of the app that are still running, background work included.
        self.tasks = set()
        self.idle = None
        # Responses that went out as a stream (H ... D): for tests and logs.
        self.streamed = 0
        # WebSocket exchanges running now, told when the worker drains.
        self.sessions = set()

    # The worker says in its ready frame that it takes WebSocket events.
    websocket = True

    def drain(self) -> None:
        """The worker drains: WebSockets close with 1012 (service restart)
        rather than hold the drain up for as long as their clients stay."""
        for session in list(self.sessions):
            session.server_closing()

    @classmethod
    def from_config(cls, config):
        return cls(load_asgi_app(config.asgi, config.handler_paths, config.factory),
                   config.worker_id,
                   config.max_frame_bytes, config.lifespan, config.root_path)

    async def startup(self) -> None:
        """Run the lifespan startup; LifespanFailure if the app reports it failed."""
        self.loop = asyncio.get_running_loop()
        await self.lifespan.startup()

    async def shutdown(self) -> None:
        """Let the app's tasks finish (bounded), then run the lifespan shutdown."""
        if self.tasks:
            self.idle = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self.idle), BACKGROUND_GRACE)
            except asyncio.TimeoutError:
                log.warning("worker %d: %d ASGI task(s) still running after %gs; "
                            "cancelling them", self.worker_id, len(self.tasks), BACKGROUND_GRACE)
                for task in list(self.tasks):
                    task.cancel()
        await self.lifespan.shutdown()

    def start(self, conn, event):
        """Run the app on `event` in a task of its own; returns the task."""
        loop = self.loop or asyncio.get_running_loop()
        self.loop = loop
        if not event.is_http:
            answer = encode_raised(TypeError(
                "an ASGI app serves HTTP events only; this event has no method and path"),
                self.max_frame)
            return new_task(loop, _answer_now(conn, answer))
        scope = build_scope(event, self.lifespan.state, self.root_path)
        if (event.meta or {}).get("websocket") is True:
            return _websocket.start(self, conn, event, scope)
        if _asks_websocket(scope):
            meta = encode_head_meta(501, [("content-type", "text/plain; charset=utf-8")])
            return new_task(loop, _answer_now(
                conn, pack_envelope(b"O", meta, _WEBSOCKET_REFUSAL)))
        exchange = _Exchange(self, conn, event)
        conn.on_lost = exchange._lost
        task = new_task(loop, exchange.run(scope))
        if not task.done():
            exchange.task = task
            self.tasks.add(task)
            task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task):
        self.tasks.discard(task)
        if not self.tasks and self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    def log_exception(self, when, exc):
        log.error("worker %d: exception in the ASGI app %s", self.worker_id, when,
                  exc_info=(type(exc), exc, exc.__traceback__))


async def _answer_now(conn, answer):
    conn.answered(answer)
