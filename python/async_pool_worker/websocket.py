"""ASGI WebSocket scopes, as the ASGI adapter (asgi.py) runs them.

The host sends a WebSocket event (an ``E`` whose meta has ``"websocket":
true``) for a client's opening handshake, and then both sides exchange
frames on that connection, or stream, until the app's task ends
(docs/protocol.md, "WebSocket"). What an app sees, as uvicorn gives it:

- **Scope**: ``type`` "websocket", the HTTP scope's keys but ``method``
  (``scheme`` "ws" or "wss"), ``subprotocols`` (the client's offer, in
  order), and ``extensions`` {"websocket.http.response": {}}.
- **receive()**: ``websocket.connect`` first; then ``websocket.receive``
  with ``text`` or ``bytes`` as the client sends them; then
  ``websocket.disconnect`` with the client's ``code`` and ``reason`` (1006
  when the connection was lost, the app's own code after it closed).
- **send()**: before accepting, ``websocket.accept`` (``subprotocol``,
  ``headers``), ``websocket.close`` (the host answers the handshake with
  403), or a denial response, ``websocket.http.response.start`` and
  ``websocket.http.response.body`` messages; after accepting,
  ``websocket.send`` (``text`` or ``bytes``) and ``websocket.close``
  (``code``, default 1000, and ``reason``). A ``send`` after the client went
  away raises ClientDisconnected (an OSError, which Starlette turns into
  WebSocketDisconnect); one after the close or the denial, RuntimeError.
- **Flow control**: a ``websocket.send`` waits while the host has granted no
  credit (its client reads slowly); the host in turn waits for the credit
  this side grants as the app takes messages with ``receive()``.
- **The end**: when the app returns, the host closes an accepted socket with
  1000 (or answers a handshake nobody answered with 500); when it raises,
  with 1011 (or 500). When the host goes away (or cancels the exchange) the
  app gets ``websocket.disconnect`` with 1006 and is cancelled
  DISCONNECT_GRACE seconds later if it has not returned; when the worker
  drains, it gets 1012 and the host closes the socket with 1012.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging

from .loops import new_task
from .protocol import (EMPTY_META, HEADER_LEN, LENGTH, WS_BINARY_KIND, WS_CONTROL_KIND,
                       WS_CREDIT_KIND, WS_TEXT_KIND, ProtocolError, encode_head_meta,
                       encode_raised, pack_envelope)

WEBSOCKET_ASGI = {"version": "3.0", "spec_version": "2.4"}
# The credit this side grants the host (docs/protocol.md, "Flow control"):
# client messages the app has not taken yet, in bytes plus MESSAGE_COST each.
WINDOW = 64 * 1024
MESSAGE_COST = 64
# The host's window when its event names none.
DEFAULT_HOST_WINDOW = 64 * 1024
# Close codes: normal, lost, service restart.
NORMAL_CLOSURE = 1000
ABNORMAL_CLOSURE = 1006
SERVICE_RESTART = 1012

# How long an app may go on after its client went away before its task is
# cancelled, as for HTTP (asgi.py).
DISCONNECT_GRACE = 1.0

_DONE_ANSWER = b"O" + EMPTY_META

log = logging.getLogger("async_pool_worker.asgi")


class ClientDisconnected(OSError):
    """Raised by send() once the client has gone away."""


# Where the exchange is, as the app's messages move it on.
_CONNECTING, _ACCEPTED, _CLOSED, _RESPONDING, _RESPONDED = range(5)


def build_websocket_scope(http_scope: dict, event) -> dict:
    """The WebSocket scope for a WebSocket event, from the HTTP scope the
    adapter built for it."""
    meta = event.meta or {}
    scope = dict(http_scope)
    del scope["method"]
    scope["type"] = "websocket"
    scope["asgi"] = WEBSOCKET_ASGI
    scheme = meta.get("scheme")
    scope["scheme"] = scheme if scheme in ("ws", "wss") else "ws"
    offered = meta.get("subprotocols")
    scope["subprotocols"] = [p for p in offered if isinstance(p, str)] \
        if isinstance(offered, list) else []
    scope["extensions"] = {"websocket.http.response": {}}
    return scope


def _text(value) -> str:
    if isinstance(value, str):
        return value
    return bytes(value).decode("latin-1")


class WebSocketSession:
    """One WebSocket exchange: the app's receive() and send(), the frames the
    host sends on it, and the credit both ways."""

    __slots__ = ("adapter", "conn", "state", "incoming", "waiter", "credit", "credit_waiter",
                 "connected", "disconnect", "consumed", "released", "task", "cancel_timer",
                 "head")

    def __init__(self, adapter, conn, event):
        self.adapter = adapter
        self.conn = conn
        self.state = _CONNECTING
        # Client messages the app has not taken, with what each cost.
        self.incoming = collections.deque()
        self.waiter = None
        window = (event.meta or {}).get("window")
        # What this side may still send the host.
        self.credit = window if type(window) is int and window > 0 else DEFAULT_HOST_WINDOW
        self.credit_waiter = None
        self.connected = False
        # (code, reason) once the client went away or the app closed.
        self.disconnect = None
        # Credit freed by the app's receive() and not yet granted.
        self.consumed = 0
        self.released = False
        self.task = None
        self.cancel_timer = None
        # A denial response's status and headers until its first body message.
        self.head = None

    # -- the host's frames ----------------------------------------------------

    def on_frame(self, kind, envelope):
        (meta_len,) = LENGTH.unpack_from(envelope, 1)
        meta_end = HEADER_LEN + meta_len
        if kind == WS_TEXT_KIND or kind == WS_BINARY_KIND:
            body = bytes(envelope[meta_end:])
            cost = len(body) + MESSAGE_COST
            if self.disconnect is not None:
                self._free(cost)  # the app will not read it
                return
            if kind == WS_TEXT_KIND:
                try:
                    message = {"type": "websocket.receive", "text": body.decode("utf-8")}
                except UnicodeDecodeError:
                    raise ProtocolError("a WebSocket text message that is not UTF-8") from None
            else:
                message = {"type": "websocket.receive", "bytes": body}
            self.incoming.append((message, cost))
            self._wake()
        elif kind == WS_CREDIT_KIND:
            if len(envelope) - meta_end != 4:
                raise ProtocolError("a credit frame whose body is not 4 bytes")
            self.credit += int.from_bytes(envelope[meta_end:], "big")
            self._wake_sender()
        elif kind == WS_CONTROL_KIND:
            try:
                meta = json.loads(bytes(envelope[HEADER_LEN:meta_end]).decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise ProtocolError("a WebSocket control frame whose meta is not JSON") from None
            if not isinstance(meta, dict) or meta.get("type") != "disconnect":
                raise ProtocolError("a WebSocket control frame of type %r from the host"
                                    % (meta.get("type") if isinstance(meta, dict) else meta,))
            code = meta.get("code")
            reason = meta.get("reason")
            self._disconnected(code if type(code) is int else ABNORMAL_CLOSURE,
                               reason if isinstance(reason, str) else "")

    def _disconnected(self, code, reason):
        if self.disconnect is None:
            self.disconnect = (code, reason)
        self._wake()
        self._wake_sender()

    # -- receive() -------------------------------------------------------------

    async def receive(self):
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        while True:
            if self.incoming:
                message, cost = self.incoming.popleft()
                self._free(cost)
                return message
            if self.disconnect is not None:
                code, reason = self.disconnect
                return {"type": "websocket.disconnect", "code": code, "reason": reason}
            self.waiter = self.adapter.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def _free(self, cost):
        """The app took `cost` of credit: grant it back once half a window is free."""
        self.consumed += cost
        if self.consumed >= WINDOW // 2 and self.state != _CLOSED:
            grant, self.consumed = self.consumed, 0
            self.conn.write_part(b"U" + EMPTY_META + grant.to_bytes(4, "big"))

    def _wake(self):
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_sender(self):
        waiter = self.credit_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- send() ----------------------------------------------------------------

    async def send(self, message):
        kind = message["type"]
        state = self.state
        if state == _CONNECTING:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._close(message)
            elif kind == "websocket.http.response.start":
                status = message["status"]
                if not isinstance(status, int) or isinstance(status, bool) \
                        or not 100 <= status <= 999:
                    raise RuntimeError("ASGI 'websocket.http.response.start' has status %r"
                                       % (status,))
                self.head = (status, [(_text(name), _text(value))
                                      for name, value in message.get("headers", ())])
                self.state = _RESPONDING
            else:
                raise RuntimeError("expected ASGI message 'websocket.accept', 'websocket.close' "
                                   "or 'websocket.http.response.start', got %r" % kind)
        elif state == _ACCEPTED:
            if self.disconnect is not None:
                raise ClientDisconnected("the WebSocket client has gone away")
            if kind == "websocket.send":
                await self._send_message(message)
            elif kind == "websocket.close":
                self._close(message)
            else:
                raise RuntimeError("expected ASGI message 'websocket.send' or 'websocket.close', "
                                   "got %r" % kind)
        elif state == _RESPONDING:
            if kind != "websocket.http.response.body":
                raise RuntimeError("expected ASGI message 'websocket.http.response.body', got %r"
                                   % kind)
            await self._send_denial_body(message)
        else:
            raise RuntimeError("unexpected ASGI message %r after sending 'websocket.close' or "
                               "after the response was complete" % kind)

    def _accept(self, message):
        subprotocol = message.get("subprotocol")
        headers = [[_text(name), _text(value)] for name, value in message.get("headers", ())]
        meta = {"type": "accept", "subprotocol": subprotocol, "headers": headers,
                "window": WINDOW}
        self._write(b"W", meta)
        self.state = _ACCEPTED

    def _close(self, message):
        code = message.get("code")
        code = NORMAL_CLOSURE if code is None else code
        reason = message.get("reason") or ""
        self._write(b"W", {"type": "close", "code": code, "reason": reason})
        self.state = _CLOSED
        # From now on receive() says the socket is closed, with the app's code.
        self._disconnected(code, reason)

    async def _send_message(self, message):
        text = message.get("text")
        if text is not None:
            body = text.encode("utf-8")
            kind = b"T"
        else:
            body = message.get("bytes")
            if body is None:
                raise RuntimeError("ASGI 'websocket.send' needs 'text' or 'bytes'")
            body = bytes(body)
            kind = b"Y"
        await self._take_credit(len(body) + MESSAGE_COST)
        self._write_raw(kind + EMPTY_META + body)

    async def _take_credit(self, cost):
        # The host grants credit as its client reads: wait for it.
        while self.credit <= 0:
            if self.disconnect is not None or self.released:
                raise ClientDisconnected("the WebSocket client has gone away")
            self.credit_waiter = self.adapter.loop.create_future()
            try:
                await self.credit_waiter
            finally:
                self.credit_waiter = None
        if self.state == _ACCEPTED and self.disconnect is not None:
            raise ClientDisconnected("the WebSocket client has gone away")
        self.credit -= cost

    async def _send_denial_body(self, message):
        body = bytes(message.get("body", b""))
        more = message.get("more_body", False)
        step = self.adapter.max_frame - 7
        if self.head is not None:
            status, headers = self.head
            self.head = None
            meta = encode_head_meta(status, headers)
            first = body[:max(1, self.adapter.max_frame - 5 - len(meta))]
            body = body[len(first):]
            await self._take_credit(len(first) + MESSAGE_COST)
            self._write_raw(pack_envelope(b"H", meta, first))
        chunks = [body[at:at + step] for at in range(0, len(body), step)]
        if not more and not chunks:
            chunks = [b""]
        for index, chunk in enumerate(chunks):
            last = not more and index == len(chunks) - 1
            await self._take_credit(len(chunk) + MESSAGE_COST)
            self._write_raw((b"D" if last else b"B") + EMPTY_META + chunk)
        if not more:
            self.state = _RESPONDED

    def _write(self, kind, meta):
        self._write_raw(pack_envelope(kind, json.dumps(meta, separators=(",", ":"))
                                      .encode("utf-8"), b""))

    def _write_raw(self, envelope):
        if len(envelope) > self.adapter.max_frame:
            raise ValueError("a WebSocket frame of %d bytes exceeds the maximum frame length %d"
                             % (len(envelope), self.adapter.max_frame))
        if self.released or not self.conn.write_part(envelope):
            self._lost()
            raise ClientDisconnected("the WebSocket client has gone away")

    # -- the end ---------------------------------------------------------------

    def _lost(self):
        """The host closed the connection or cancelled the exchange: the app
        hears websocket.disconnect (1006), and is cancelled after a grace."""
        if self.released:
            return
        self._disconnected(ABNORMAL_CLOSURE, "")
        task = self.task
        if task is not None and not task.done() and self.cancel_timer is None:
            self.cancel_timer = self.adapter.loop.call_later(DISCONNECT_GRACE, task.cancel)

    def server_closing(self):
        """The worker drains: close the socket with 1012 (service restart),
        and tell the app so."""
        if self.released:
            return
        if self.state == _ACCEPTED:
            self._write(b"W", {"type": "close", "code": SERVICE_RESTART, "reason": ""})
            self.state = _CLOSED
        self._disconnected(SERVICE_RESTART, "")

    def _release(self, answer):
        """End the exchange once: `answer` is its last envelope, or None to
        give the connection up without one."""
        if self.released:
            return
        self.released = True
        self._wake()
        self._wake_sender()
        conn = self.conn
        conn.on_frame = None
        conn.on_lost = None
        if answer is None:
            conn.abandoned()
        else:
            conn.answered(answer)

    async def run(self, scope):
        adapter = self.adapter
        try:
            await adapter.app(scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._release(None)
            raise
        except Exception as exc:
            if self.disconnect is not None and isinstance(exc, OSError):
                log.info("worker %d: the WebSocket app stopped after its client went away: %r",
                         adapter.worker_id, exc)
            else:
                adapter.log_exception("on a WebSocket", exc)
            self._release(encode_raised(exc, adapter.max_frame))
        except BaseException:
            self._release(None)
            raise
        else:
            self._release(_DONE_ANSWER)
        finally:
            if self.cancel_timer is not None:
                self.cancel_timer.cancel()
            adapter.sessions.discard(self)


def start(adapter, conn, event, http_scope):
    """Run the app on the WebSocket `event`; returns the task."""
    session = WebSocketSession(adapter, conn, event)
    conn.on_lost = session._lost
    conn.on_frame = session.on_frame
    adapter.sessions.add(session)
    task = new_task(adapter.loop, session.run(build_websocket_scope(http_scope, event)))
    if not task.done():
        session.task = task
        adapter.tasks.add(task)
        task.add_done_callback(adapter._task_done)
    return task
