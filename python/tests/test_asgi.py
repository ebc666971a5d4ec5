"""Tests for the ASGI adapter (asgi.py): the real worker run with --asgi, as a
subprocess, on bare ASGI apps (no framework needed; the FastAPI and Starlette
apps are tested through the gateway in gateway/tests/asgi.rs).

Run from the repository root:

    python3 -m unittest discover -s python/tests -t python
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
import unittest

from async_pool_worker import asgi

from .support import (AppWorker, IO_TIMEOUT, START_TIMEOUT, envelope, frame, recv_envelope, worker_command,
                      worker_env)

APPS = textwrap.dedent('''
    import asyncio
    import json

    async def _body(receive):
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _answer(send, body, status=200, headers=()):
        await send({"type": "http.response.start", "status": status,
                    "headers": list(headers)})
        await send({"type": "http.response.body", "body": body})

    def _note(text):
        with open("notes.log", "a") as f:
            f.write(text + "\\n")

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["greeting"] = "hi"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    _note("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path == "/scope":
            body = await _body(receive)
            shown = {key: value for key, value in scope.items() if key != "headers"}
            shown["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
            for key in ("raw_path", "query_string"):
                shown[key] = shown[key].decode()
            shown["body"] = body.decode()
            await _answer(send, json.dumps(shown).encode(), 201,
                          [(b"x-a", b"1"), (b"x-a", b"2")])
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"one ", b"two ", b""):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"three"})
        elif path == "/raise-before":
            raise ValueError("before the start")
        elif path == "/raise-after":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            raise ValueError("mid-stream")
        elif path == "/big":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ab" * 2500, "more_body": True})
            await send({"type": "http.response.body", "body": b"ab" * 2500})
        elif path == "/after":
            await _body(receive)
            await _answer(send, b"done")
            message = await receive()
            _note("after the response: " + message["type"])
        elif path == "/no-response":
            return
        elif path == "/wait-disconnect":
            await _body(receive)
            message = await receive()
            _note("saw " + message["type"])
        elif path == "/ignore-disconnect":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                _note("cancelled")
                raise
        else:
            await _answer(send, b"hello")

    async def failing_startup(scope, receive, send):
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})

    async def no_lifespan(scope, receive, send):
        if scope["type"] != "http":
            raise RuntimeError("only http here")
        await _answer(send, b"plain")

    def make_app():
        async def made(scope, receive, send):
            if scope["type"] != "http":
                raise RuntimeError("only http here")
            await _answer(send, b"made by the factory")
        return made

    def failing_factory():
        raise RuntimeError("no settings file")
''')


def AsgiWorker(tmpdir, app, extra=()):
    """The worker with --asgi and --no-auth, stderr to a file."""
    return AppWorker(tmpdir, "--asgi", app, 3, extra)


def http(path, body=b"", headers=(), **extra):
    meta = {"method": "POST", "path": path, "headers": [list(h) for h in headers], **extra}
    return frame(envelope(b"E", meta, body))


class AsgiTestCase(unittest.TestCase):
    def setUp(self):
        self.tmpdir = tempfile.mkdtemp(prefix="apa")
        self.addCleanup(shutil.rmtree, self.tmpdir, ignore_errors=True)
        with open(os.path.join(self.tmpdir, "apps.py"), "w") as f:
            f.write(APPS)

    def start(self, app="apps:app", extra=()):
        worker = AsgiWorker(self.tmpdir, app, extra)
        self.addCleanup(worker.stop)
        worker.wait_listening()
        return worker

    def run_to_exit(self, app, extra=()):
        worker = AsgiWorker(self.tmpdir, app, extra)
        self.addCleanup(worker.stop)
        return worker.proc.wait(START_TIMEOUT), worker.stderr()

    def notes(self, expected_lines, timeout=IO_TIMEOUT):
        """The app's notes, once there are `expected_lines` of them."""
        path = os.path.join(self.tmpdir, "notes.log")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(path) as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= expected_lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)


class ScopeTest(AsgiTestCase):
    def test_scope_is_built_as_uvicorn_builds_it(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http(
            "/sc%6Fpe?q=a%20b&q=2", b"payload",
            headers=[("Content-Type", "text/plain"), ("x-r", "1"), ("x-r", "2")],
            scheme="https", client=["10.0.0.1", 5555], server=["127.0.0.1", 8080],
            http_version="2"))
        kind, meta, body = recv_envelope(sock)
        self.assertEqual(kind, b"O", body)
        self.assertEqual(meta, {"status": 201, "headers": [["x-a", "1"], ["x-a", "2"]]})
        scope = json.loads(body)
        self.assertEqual(scope["type"], "http")
        self.assertEqual(scope["asgi"], {"version": "3.0", "spec_version": "2.4"})
        self.assertEqual(scope["http_version"], "2")
        self.assertEqual(scope["method"], "POST")
        self.assertEqual(scope["scheme"], "https")
        self.assertEqual(scope["path"], "/scope")
        self.assertEqual(scope["raw_path"], "/sc%6Fpe")
        self.assertEqual(scope["query_string"], "q=a%20b&q=2")
        self.assertEqual(scope["root_path"], "")
        self.assertEqual(scope["headers"],
                         [["content-type", "text/plain"], ["x-r", "1"], ["x-r", "2"]])
        self.assertEqual(scope["client"], ["10.0.0.1", 5555])
        self.assertEqual(scope["server"], ["127.0.0.1", 8080])
        self.assertEqual(scope["state"], {"greeting": "hi"})
        self.assertEqual(scope["body"], "payload")

    def test_receive_after_the_response_is_a_disconnect(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/after"))
        self.assertEqual(recv_envelope(sock)[2], b"done")
        self.assertEqual(self.notes(1), ["after the response: http.disconnect"])

    def test_defaults_when_the_host_sends_only_method_path_and_headers(self):
        class FakeEvent:
            path = "/a%2Fb"
            method = "GET"
            headers = [("Accept", "x")]
            meta = {"method": "GET", "path": "/a%2Fb", "headers": [["Accept", "x"]]}
        scope = asgi.build_scope(FakeEvent, {"k": 1}, "/root")
        self.assertEqual(scope["scheme"], "http")
        self.assertEqual(scope["http_version"], "1.1")
        self.assertIsNone(scope["client"])
        self.assertIsNone(scope["server"])
        self.assertEqual(scope["path"], "/root/a/b")
        self.assertEqual(scope["raw_path"], b"/a%2Fb")
        self.assertEqual(scope["query_string"], b"")
        self.assertEqual(scope["headers"], [(b"accept", b"x")])
        self.assertEqual(scope["state"], {"k": 1})


class ResponseTest(AsgiTestCase):
    def test_a_streamed_response_goes_out_as_head_chunks_and_done_when_asked(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/stream", stream=True))
        frames = [recv_envelope(sock) for _ in range(3)]
        # The empty chunk is not sent.
        self.assertEqual([kind for kind, _, _ in frames], [b"H", b"B", b"D"])
        self.assertEqual(frames[0][1], {"status": 200, "headers": []})
        self.assertEqual(b"".join(body for _, _, body in frames), b"one two three")
        # The connection carries the next event.
        sock.sendall(http("/", stream=True))
        self.assertEqual(recv_envelope(sock), (b"O", {}, b"hello"))

    def test_without_streaming_asked_the_chunks_are_joined_into_one_answer(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/stream"))
        self.assertEqual(recv_envelope(sock), (b"O", {}, b"one two three"))

    def test_an_exception_before_the_start_is_an_x_answer(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/raise-before", stream=True))
        kind, meta, body = recv_envelope(sock)
        self.assertEqual((kind, meta), (b"X", {"type": "ValueError", "message": "before the start"}))
        self.assertIn(b"Traceback", body)
        sock.sendall(http("/"))
        self.assertEqual(recv_envelope(sock)[2], b"hello")

    def test_an_exception_mid_stream_cuts_it_and_is_logged(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/raise-after", stream=True))
        self.assertEqual(recv_envelope(sock)[0], b"H")
        kind, meta, _ = recv_envelope(sock)
        self.assertEqual((kind, meta["message"]), (b"X", "mid-stream"))
        deadline = time.monotonic() + IO_TIMEOUT
        while "mid-stream; the response is cut" not in worker.stderr():
            self.assertLess(time.monotonic(), deadline, worker.stderr())
            time.sleep(0.02)

    def test_an_app_that_returns_without_a_response_is_an_error(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/no-response"))
        kind, meta, _ = recv_envelope(sock)
        self.assertEqual((kind, meta["type"]), (b"X", "RuntimeError"))
        self.assertIn("without starting", meta["message"])

    def test_a_body_over_the_frame_limit_streams_in_pieces_or_fails_whole(self):
        worker = self.start()
        sock = worker.connect()
        # The worker runs with --max-frame-bytes 4096.
        sock.sendall(http("/big", stream=True))
        frames = [recv_envelope(sock)]
        while frames[-1][0] != b"D":
            frames.append(recv_envelope(sock))
        self.assertEqual(frames[0][0], b"H")
        self.assertGreater(len(frames), 3)
        self.assertEqual(b"".join(body for _, _, body in frames), b"ab" * 5000)
        sock.sendall(http("/big"))
        kind, meta, _ = recv_envelope(sock)
        self.assertEqual((kind, meta["type"]), (b"X", "ValueError"))

    def test_websocket_upgrades_are_refused_with_501(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/", headers=[("Upgrade", "websocket")]))
        kind, meta, body = recv_envelope(sock)
        self.assertEqual((kind, meta["status"]), (b"O", 501))
        self.assertIn(b"WebSocket", body)

    def test_a_plain_event_is_refused(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(frame(envelope(b"E", {}, b"x")))
        kind, meta, _ = recv_envelope(sock)
        self.assertEqual((kind, meta["type"]), (b"X", "TypeError"))


class DisconnectTest(AsgiTestCase):
    def test_the_app_sees_http_disconnect_when_the_host_closes(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/wait-disconnect"))
        time.sleep(0.2)
        sock.close()
        self.assertEqual(self.notes(1), ["saw http.disconnect"])

    def test_an_app_that_ignores_the_disconnect_is_cancelled(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/ignore-disconnect"))
        time.sleep(0.2)
        sock.close()
        started = time.monotonic()
        self.assertEqual(self.notes(1), ["cancelled"])
        self.assertLess(time.monotonic() - started, asgi.DISCONNECT_GRACE + 2)
        # The worker still serves.
        other = worker.connect()
        other.sendall(http("/"))
        self.assertEqual(recv_envelope(other)[2], b"hello")


class LifespanTest(AsgiTestCase):
    def test_shutdown_runs_on_drain(self):
        worker = self.start()
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(worker.proc.wait(IO_TIMEOUT), 0)
        self.assertEqual(self.notes(1), ["shutdown"])

    def test_a_failed_startup_fails_the_launch_with_the_apps_message(self):
        status, stderr = self.run_to_exit("apps:failing_startup")
        self.assertEqual(status, 3, stderr)
        last = stderr.strip().splitlines()[-1]
        self.assertIn("lifespan startup failed: database unreachable", last)
        self.assertFalse(os.path.exists(os.path.join(self.tmpdir, "w.sock")))

    def test_auto_goes_on_without_lifespan_and_on_insists(self):
        worker = self.start("apps:no_lifespan")
        sock = worker.connect()
        sock.sendall(http("/"))
        self.assertEqual(recv_envelope(sock)[2], b"plain")
        status, stderr = self.run_to_exit("apps:no_lifespan", ["--lifespan", "on"])
        self.assertEqual(status, 3, stderr)
        self.assertIn("only http here", stderr)

    def test_off_skips_it(self):
        worker = self.start("apps:failing_startup", ["--lifespan", "off"])
        worker.connect().close()

    def test_handler_and_asgi_exclude_each_other(self):
        proc = subprocess.run(
            worker_command("--asgi", "apps:app", "--handler", "x:y", "--unix",
                           os.path.join(self.tmpdir, "w.sock"), "--worker-id", "0", "--no-auth"),
            env=worker_env(), capture_output=True, timeout=START_TIMEOUT)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b"not allowed with argument", proc.stderr)

    def test_an_app_that_cannot_be_loaded_is_a_usage_error(self):
        status, stderr = self.run_to_exit("apps:missing")
        self.assertEqual(status, 2)
        self.assertIn("has no attribute 'missing'", stderr)

    def test_factory_is_called_with_no_arguments_for_the_app(self):
        worker = self.start("apps:make_app", ["--factory"])
        sock = worker.connect()
        sock.sendall(http("/"))
        self.assertEqual(recv_envelope(sock)[2], b"made by the factory")

    def test_a_factory_that_raises_is_a_usage_error_with_its_traceback(self):
        status, stderr = self.run_to_exit("apps:failing_factory", ["--factory"])
        self.assertEqual(status, 2)
        self.assertIn("the app factory --asgi 'apps:failing_factory' raised", stderr)
        self.assertIn("RuntimeError: no settings file", stderr)


if __name__ == "__main__":
    unittest.main()
