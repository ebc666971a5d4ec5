"""Tests for ASGI WebSocket scopes (websocket.py), in process: the session
between a fake connection, which records the frames written to the host, and
plain ASGI apps. The whole path through the host is tested by the crate's
tests/net_websocket.rs and the gateway's tests/websocket.rs.

Run from the repository root:

    python3 -m unittest discover -s python/tests -t python
"""

import asyncio
import json
import os
import shutil
import struct
import tempfile
import textwrap
import unittest

from async_pool_worker import websocket
from async_pool_worker.asgi import AsgiAdapter, build_scope
from async_pool_worker.protocol import (EMPTY_META, LENGTH, Event, ProtocolError,
                                        encode_ready, parse_meta)

from .support import envelope, frame, recv_envelope
from .test_asgi import AsgiWorker


class FakeConn:
    """A connection as the adapter sees it: what is written, and the end."""

    def __init__(self):
        self.frames = []
        self.answer = None
        self.abandoned_ = False
        self.open = True
        self.on_lost = None
        self.on_frame = None

    def write_part(self, envelope):
        if not self.open:
            return False
        self.frames.append(bytes(envelope))
        return True

    def answered(self, answer):
        self.answer = bytes(answer)

    def abandoned(self):
        self.abandoned_ = True

    def kinds(self):
        return "".join(chr(frame[0]) for frame in self.frames)

    def control(self, index):
        frame = self.frames[index]
        (meta_len,) = LENGTH.unpack_from(frame, 1)
        return json.loads(frame[5:5 + meta_len])

    # The host's frames.
    def text(self, text):
        self.on_frame(ord("T"), b"T" + EMPTY_META + text.encode())

    def binary(self, data):
        self.on_frame(ord("Y"), b"Y" + EMPTY_META + data)

    def credit(self, amount):
        self.on_frame(ord("U"), b"U" + EMPTY_META + amount.to_bytes(4, "big"))

    def disconnect(self, code, reason=""):
        meta = json.dumps({"type": "disconnect", "code": code, "reason": reason}).encode()
        self.on_frame(ord("W"), b"W" + LENGTH.pack(len(meta)) + meta)


def websocket_event(window=None, subprotocols=("chat",)):
    meta = {"method": "GET", "path": "/ws?x=1", "headers": [["Host", "h"]],
            "websocket": True, "scheme": "wss", "subprotocols": list(subprotocols)}
    if window is not None:
        meta["window"] = window
    event = Event(method="GET", path="/ws?x=1", headers=[("Host", "h")], is_http=True)
    event.meta = meta
    return event


async def run_app(app, script, event=None):
    """Runs `app` on a WebSocket event; `script(conn)` plays the host."""
    adapter = AsgiAdapter(app, worker_id=0, max_frame=1 << 20, lifespan="off")
    await adapter.startup()
    conn = FakeConn()
    task = adapter.start(conn, event or websocket_event())
    await script(conn)
    await asyncio.wait_for(task, 5)
    return conn


async def until(condition):
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


class WebSocketScopeTest(unittest.TestCase):
    def test_the_scope_is_uvicorns_with_subprotocols_and_the_denial_extension(self):
        scope = websocket.build_websocket_scope(
            build_scope(websocket_event(), {"k": 1}), websocket_event())
        self.assertEqual(scope["type"], "websocket")
        self.assertNotIn("method", scope)
        self.assertEqual(scope["scheme"], "wss")
        self.assertEqual(scope["subprotocols"], ["chat"])
        self.assertEqual(scope["extensions"], {"websocket.http.response": {}})
        self.assertEqual(scope["query_string"], b"x=1")
        self.assertEqual(scope["headers"], [(b"host", b"h")])

    def test_the_ready_frame_says_websocket_only_when_asked(self):
        self.assertNotIn(b"websocket", encode_ready(1, 0))
        meta = parse_meta(encode_ready(1, 0, websocket=True)[5:])
        self.assertEqual(meta["websocket"], 1)


class WebSocketSessionTest(unittest.TestCase):
    def test_echo_accept_messages_and_the_clients_close_code(self):
        seen = []

        async def app(scope, receive, send):
            seen.append(await receive())
            await send({"type": "websocket.accept", "subprotocol": "chat",
                        "headers": [(b"x-a", b"1")]})
            while True:
                message = await receive()
                seen.append(message)
                if message["type"] == "websocket.disconnect":
                    return
                await send({"type": "websocket.send", **{k: v for k, v in message.items()
                                                         if k in ("text", "bytes")}})

        async def host(conn):
            await until(lambda: conn.frames)
            conn.text("hé")
            conn.binary(b"\x00\x01")
            await until(lambda: len(conn.frames) == 3)
            conn.disconnect(1001, "away")

        conn = asyncio.run(run_app(app, host))
        self.assertEqual(conn.control(0), {"type": "accept", "subprotocol": "chat",
                                           "headers": [["x-a", "1"]],
                                           "window": websocket.WINDOW})
        self.assertEqual(conn.frames[1], b"T" + EMPTY_META + "hé".encode())
        self.assertEqual(conn.frames[2], b"Y" + EMPTY_META + b"\x00\x01")
        self.assertEqual(seen[0], {"type": "websocket.connect"})
        self.assertEqual(seen[-1], {"type": "websocket.disconnect", "code": 1001,
                                    "reason": "away"})
        self.assertEqual(conn.answer, b"O" + EMPTY_META)
        self.assertIsNone(conn.on_frame, "the exchange no longer takes frames")

    def test_send_waits_for_the_hosts_credit(self):
        sent = []

        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.accept"})
            for index in range(4):
                await send({"type": "websocket.send", "bytes": b"x" * 100})
                sent.append(index)
            await send({"type": "websocket.close", "code": 4000, "reason": "r"})

        async def host(conn):
            # 300 bytes of credit: two messages of 164, the second overdrawing.
            await until(lambda: len(sent) == 2)
            await asyncio.sleep(0.05)
            self.assertEqual(len(sent), 2)
            conn.credit(1000)

        conn = asyncio.run(run_app(app, host, websocket_event(window=300)))
        self.assertEqual(conn.kinds(), "WYYYYW")
        self.assertEqual(conn.control(5), {"type": "close", "code": 4000, "reason": "r"})

    def test_the_app_grants_credit_as_it_reads(self):
        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.accept"})
            while (await receive())["type"] != "websocket.disconnect":
                pass

        async def host(conn):
            await until(lambda: conn.frames)
            for _ in range(400):
                conn.binary(b"y" * 100)
            await until(lambda: "U" in conn.kinds())
            conn.disconnect(1000)

        conn = asyncio.run(run_app(app, host))
        grants = [int.from_bytes(frame[-4:], "big") for frame in conn.frames if frame[:1] == b"U"]
        self.assertTrue(grants and all(g >= websocket.WINDOW // 2 for g in grants), grants)

    def test_a_denial_response_streams_as_head_and_done(self):
        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "websocket.http.response.body", "body": b"no ",
                        "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b"way"})
            with self.assertRaises(RuntimeError):
                await send({"type": "websocket.accept"})

        async def host(conn):
            pass

        conn = asyncio.run(run_app(app, host))
        self.assertEqual(conn.kinds(), "HD")
        self.assertTrue(conn.frames[0].endswith(b"no "))
        self.assertEqual(conn.frames[1], b"D" + EMPTY_META + b"way")
        self.assertEqual(conn.answer, b"O" + EMPTY_META)

    def test_a_lost_host_gives_the_app_1006_and_send_raises_oserror(self):
        outcome = []

        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.accept"})
            outcome.append(await receive())
            try:
                await send({"type": "websocket.send", "text": "late"})
            except OSError as exc:
                outcome.append(type(exc).__name__)

        async def host(conn):
            await until(lambda: conn.frames)
            conn.open = False
            conn.on_lost()

        asyncio.run(run_app(app, host))
        self.assertEqual(outcome, [{"type": "websocket.disconnect", "code": 1006, "reason": ""},
                                   "ClientDisconnected"])

    def test_a_drain_closes_with_1012(self):
        outcome = []

        async def app(scope, receive, send):
            await receive()
            await send({"type": "websocket.accept"})
            outcome.append(await receive())

        adapter_holder = []

        async def main():
            adapter = AsgiAdapter(app, worker_id=0, max_frame=1 << 20, lifespan="off")
            await adapter.startup()
            conn = FakeConn()
            task = adapter.start(conn, websocket_event())
            await until(lambda: conn.frames)
            adapter.drain()
            await asyncio.wait_for(task, 5)
            adapter_holder.append(conn)

        asyncio.run(main())
        conn = adapter_holder[0]
        self.assertEqual(conn.control(1), {"type": "close", "code": 1012, "reason": ""})
        self.assertEqual(outcome[0]["code"], 1012)

    def test_a_bad_text_frame_breaks_the_protocol(self):
        session = websocket.WebSocketSession(None, FakeConn(), websocket_event())
        with self.assertRaises(ProtocolError):
            session.on_frame(ord("T"), b"T" + EMPTY_META + b"\xff")
        with self.assertRaises(ProtocolError):
            session.on_frame(ord("U"), b"U" + EMPTY_META + b"\x01")


ECHO_APP = textwrap.dedent('''
    CODES = []

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": repr(CODES).encode()})
            return
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                CODES.append(message["code"])
                return
            await send({"type": "websocket.send", "text": message["text"]})
''')


def ws_event():
    return envelope(b"E", {"method": "GET", "path": "/ws", "headers": [], "websocket": True,
                           "scheme": "ws", "subprotocols": []})


def text(value):
    return b"T" + EMPTY_META + value.encode()


def disconnect(code):
    return envelope(b"W", {"type": "disconnect", "code": code, "reason": ""})


def stream_frame(stream, payload):
    return struct.pack(">II", len(payload) + 4, stream) + payload


def recv_stream_envelope(sock):
    (length, stream) = struct.unpack(">II", sock.recv(8, 0x100))  # MSG_WAITALL
    payload = b""
    while len(payload) < length - 4:
        payload += sock.recv(length - 4 - len(payload))
    (meta_len,) = struct.unpack(">I", payload[1:5])
    return stream, payload[:1], json.loads(payload[5:5 + meta_len]), payload[5 + meta_len:]


class WebSocketWorkerTest(unittest.TestCase):
    """The real worker, driven with raw frames: both modes of a connection."""

    def setUp(self):
        self.tmpdir = tempfile.mkdtemp(prefix="apw")
        self.addCleanup(shutil.rmtree, self.tmpdir, ignore_errors=True)
        with open(os.path.join(self.tmpdir, "wsapp.py"), "w") as f:
            f.write(ECHO_APP)
        self.worker = AsgiWorker(self.tmpdir, "wsapp:app", ("--lifespan", "off"))
        self.addCleanup(self.worker.stop)
        self.worker.wait_listening()

    def test_a_connection_of_its_own_runs_the_exchange_and_skips_frames_that_crossed_its_end(self):
        sock = self.worker.connect()
        sock.sendall(frame(ws_event()))
        kind, meta, _ = recv_envelope(sock)
        self.assertEqual((kind, meta["type"]), (b"W", "accept"))
        sock.sendall(frame(text("hi")))
        self.assertEqual(recv_envelope(sock), (b"T", {}, b"hi"))
        sock.sendall(frame(disconnect(4000)))
        self.assertEqual(recv_envelope(sock)[0], b"O")
        # A message that crossed the end, then the next event on the connection.
        sock.sendall(frame(text("late")) + frame(envelope(b"E", {"method": "GET", "path": "/",
                                                                  "headers": []})))
        self.assertEqual(recv_envelope(sock), (b"O", {}, b"[4000]"))

    def test_a_cancelled_stream_gives_the_app_1006_and_is_confirmed(self):
        sock = self.worker.connect()
        sock.sendall(frame(envelope(b"M", {"version": 1})))
        self.assertEqual(recv_envelope(sock)[0], b"M")
        sock.sendall(stream_frame(7, ws_event()))
        self.assertEqual(recv_stream_envelope(sock)[:2], (7, b"W"))
        sock.sendall(stream_frame(7, text("one")))
        self.assertEqual(recv_stream_envelope(sock)[1:], (b"T", {}, b"one"))
        sock.sendall(stream_frame(7, envelope(b"K", {})))
        self.assertEqual(recv_stream_envelope(sock)[:2], (7, b"Q"))
        # Frames of the cancelled stream are dropped; the stream serves again.
        sock.sendall(stream_frame(7, text("stray")) + stream_frame(
            7, envelope(b"E", {"method": "GET", "path": "/", "headers": []})))
        self.assertEqual(recv_stream_envelope(sock)[1:], (b"O", {}, b"[1006]"))


if __name__ == "__main__":
    unittest.main()
