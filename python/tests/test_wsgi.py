"""Tests for the WSGI adapter (wsgi.py): its environ builder and thread pool
on their own, and the real worker run with --wsgi, as a subprocess, on a WSGI
app written by hand (no framework needed; the Flask and Django apps are tested
through the gateway in gateway/tests/wsgi.rs).

Run from the repository root:

    python3 -m unittest discover -s python/tests -t python
"""

import asyncio
import io
import json
import logging
import os
import shutil
import signal
import socket
import struct
import tempfile
import textwrap
import threading
import time
import types
import unittest

from async_pool_worker import server, wsgi

from .support import AppWorker, IO_TIMEOUT, envelope, frame, recv_envelope, recv_exactly

APPS = textwrap.dedent('''
    import io
    import json
    import sys
    import time

    FLOODED = [0]

    def _note(text):
        with open("notes.log", "a") as f:
            f.write(text + "\\n")

    class Closing:
        """A response iterable whose close() is noted."""
        def __init__(self, chunks, name, fail_at=None, pause=0.0):
            self.chunks, self.name, self.fail_at, self.pause = chunks, name, fail_at, pause
        def __iter__(self):
            for n, chunk in enumerate(self.chunks):
                if n == self.fail_at:
                    raise ValueError("mid-stream")
                time.sleep(self.pause)
                yield chunk
        def close(self):
            _note("closed " + self.name)

    class NotingFile(io.BytesIO):
        def close(self):
            _note("file closed")
            super().close()

    def _flood():
        for _ in range(400):
            FLOODED[0] += 1
            yield b"f" * 16384

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path.endswith("/environ"):
            shown = {key: value for key, value in environ.items()
                     if isinstance(value, (str, bool, tuple))}
            shown["body"] = environ["wsgi.input"].read().decode()
            start_response("201 Created", [("X-A", "1"), ("X-A", "2")])
            return [json.dumps(shown).encode()]
        if path == "/one":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"hello"]
        if path == "/plain":
            start_response("200 OK", [])
            return [b"plain"]
        if path == "/stream":
            start_response("200 OK", [])
            return Closing([b"one ", b"", b"two ", b"three"], "stream")
        if path == "/length":
            start_response("200 OK", [("Content-Length", "5")])
            return Closing([b"hello", b" and more"], "length")
        if path == "/write":
            write = start_response("200 OK", [])
            write(b"written ")
            return [b"returned"]
        if path == "/raise-before":
            raise ValueError("before the start")
        if path == "/raise-after":
            start_response("200 OK", [])
            return Closing([b"part", b"never"], "raise-after", fail_at=1)
        if path == "/exc-info":
            try:
                raise KeyError("early")
            except KeyError:
                start_response("200 OK", [])
                start_response("503 Service Unavailable", [("Retry-After", "1")], sys.exc_info())
            return [b"handled"]
        if path == "/exc-info-late":
            write = start_response("200 OK", [])
            write(b"part")
            try:
                raise KeyError("late")
            except KeyError:
                start_response("500 Internal Server Error", [], sys.exc_info())
            return [b"never"]
        if path == "/file":
            start_response("200 OK", [])
            return environ["wsgi.file_wrapper"](NotingFile(b"0123456789" * 1000), 16)
        if path == "/big":
            start_response("200 OK", [])
            return iter([b"ab" * 2500, b"ab" * 2500])
        if path == "/hop":
            start_response("200 OK", [("Connection", "close"), ("Transfer-Encoding", "chunked"),
                                      ("X-Kept", "1")])
            return [b"x"]
        if path == "/no-start":
            return [b"x"]
        if path == "/sleep":
            time.sleep(float(environ["QUERY_STRING"]))
            _note("slept " + environ["QUERY_STRING"])
            start_response("200 OK", [])
            return [b"slept"]
        if path == "/ticks":
            start_response("200 OK", [])
            return Closing([b"tick"] * 200, "ticks", pause=0.02)
        if path == "/flood":
            start_response("200 OK", [])
            return _flood()
        if path == "/sized":
            start_response("200 OK", [])
            return [b"s" * int(environ["QUERY_STRING"])]
        if path == "/flooded":
            start_response("200 OK", [])
            return [str(FLOODED[0]).encode()]
        if path == "/errors":
            environ["wsgi.errors"].write("first line\\nsecond ")
            environ["wsgi.errors"].write("line\\n")
            start_response("200 OK", [])
            return [b"logged"]
        start_response("404 Not Found", [])
        return [b"no such path"]

    def not_callable():
        pass

    not_callable = 42
''')


class FakeEvent:
    """An HTTP event as protocol.parse_event makes it."""

    def __init__(self, path, headers=(), body=b"", method="GET", **meta):
        self.path = path
        self.method = method
        self.headers = list(headers)
        self.body = body
        self.is_http = True
        self.meta = {"method": method, "path": path, **meta}


class EnvironTest(unittest.TestCase):
    def test_environ_is_built_as_pep_3333_and_gunicorn_build_it(self):
        event = FakeEvent(
            "/caf%C3%A9/a%2Fb?q=a%20b&q=2",
            [("Content-Type", "text/plain"), ("Content-Length", "7"), ("Host", "example.com:8443"),
             ("X-R", "1"), ("X-R", "2"), ("Cookie", "a=1"), ("Cookie", "b=2"),
             ("Accept-Encoding", "gzip")],
            b"payload", method="POST", scheme="https", client=["10.0.0.1", 5555],
            server=["127.0.0.1", 8080], http_version="2")
        errors = wsgi.ErrorStream()
        environ = wsgi.build_environ(event, "/app/", errors)
        self.assertEqual(environ["REQUEST_METHOD"], "POST")
        self.assertEqual(environ["SCRIPT_NAME"], "/app")
        # Decoded, and the bytes of the UTF-8 path as latin-1, as PEP 3333 has it.
        self.assertEqual(environ["PATH_INFO"], "/caf\u00c3\u00a9/a/b")
        self.assertEqual(environ["PATH_INFO"].encode("latin-1").decode("utf-8"), "/café/a/b")
        self.assertEqual(environ["QUERY_STRING"], "q=a%20b&q=2")
        self.assertEqual(environ["CONTENT_TYPE"], "text/plain")
        self.assertEqual(environ["CONTENT_LENGTH"], "7")
        self.assertNotIn("HTTP_CONTENT_TYPE", environ)
        self.assertNotIn("HTTP_CONTENT_LENGTH", environ)
        self.assertEqual(environ["SERVER_NAME"], "example.com")
        self.assertEqual(environ["SERVER_PORT"], "8443")
        self.assertEqual(environ["SERVER_PROTOCOL"], "HTTP/2")
        self.assertEqual(environ["HTTP_HOST"], "example.com:8443")
        self.assertEqual(environ["HTTP_X_R"], "1,2")
        self.assertEqual(environ["HTTP_COOKIE"], "a=1; b=2")
        self.assertEqual(environ["HTTP_ACCEPT_ENCODING"], "gzip")
        self.assertEqual(environ["REMOTE_ADDR"], "10.0.0.1")
        self.assertEqual(environ["REMOTE_PORT"], "5555")
        self.assertEqual(environ["wsgi.url_scheme"], "https")
        self.assertEqual(environ["wsgi.version"], (1, 0))
        self.assertIs(environ["wsgi.multithread"], True)
        self.assertIs(environ["wsgi.multiprocess"], True)
        self.assertIs(environ["wsgi.run_once"], False)
        self.assertIs(environ["wsgi.input_terminated"], True)
        self.assertIs(environ["wsgi.errors"], errors)
        self.assertIs(environ["wsgi.file_wrapper"], wsgi.FileWrapper)
        self.assertEqual(environ["wsgi.input"].read(), b"payload")
        for key, value in environ.items():
            if key.isupper():
                self.assertIsInstance(value, str, key)

    def test_defaults_when_the_host_sends_only_method_path_and_headers(self):
        environ = wsgi.build_environ(FakeEvent("/plain", [("Accept", "x")]))
        self.assertEqual(environ["SCRIPT_NAME"], "")
        self.assertEqual(environ["PATH_INFO"], "/plain")
        self.assertEqual(environ["QUERY_STRING"], "")
        self.assertEqual(environ["SERVER_PROTOCOL"], "HTTP/1.1")
        self.assertEqual(environ["wsgi.url_scheme"], "http")
        self.assertEqual((environ["SERVER_NAME"], environ["SERVER_PORT"]), ("localhost", "80"))
        self.assertNotIn("REMOTE_ADDR", environ)
        self.assertNotIn("CONTENT_LENGTH", environ)
        self.assertNotIn("CONTENT_TYPE", environ)
        self.assertEqual(environ["wsgi.input"].read(), b"")

    def test_the_server_address_stands_in_for_a_missing_host_header(self):
        environ = wsgi.build_environ(FakeEvent("/", server=["::1", 9000], scheme="https"))
        self.assertEqual((environ["SERVER_NAME"], environ["SERVER_PORT"]), ("::1", "9000"))
        environ = wsgi.build_environ(FakeEvent("/", [("Host", "[::1]")], scheme="https"))
        self.assertEqual((environ["SERVER_NAME"], environ["SERVER_PORT"]), ("::1", "443"))

    def test_a_body_without_a_length_header_gets_its_length(self):
        # A chunked upload reaches the worker whole: the app must see its length.
        environ = wsgi.build_environ(FakeEvent("/", [("Transfer-Encoding", "chunked")], b"abc"))
        self.assertEqual(environ["CONTENT_LENGTH"], "3")

    def test_errors_go_to_the_log_line_by_line(self):
        logger = logging.getLogger("test_wsgi.errors")
        stream = wsgi.ErrorStream(logger)
        with self.assertLogs(logger, "ERROR") as logs:
            stream.write("one\ntw")
            stream.writelines(["o\n", "three"])
            stream.flush()
        self.assertEqual([record.getMessage() for record in logs.records],
                         ["one", "two", "three"])

    def test_the_file_wrapper_reads_in_blocks_and_closes_the_file(self):
        data = bytes(range(256)) * 1000
        source = io.BytesIO(data)
        wrapper = wsgi.FileWrapper(source, 16)
        blocks = list(wrapper)
        self.assertEqual(b"".join(blocks), data)
        self.assertEqual(len(blocks[0]), wsgi.FILE_BLOCK)
        wrapper.close()
        self.assertTrue(source.closed)


class ThreadsTest(unittest.TestCase):
    def test_a_call_given_up_on_makes_room_for_another(self):
        threads = wsgi.Threads(1, "test-wsgi")
        release, ran = threading.Event(), threading.Event()
        threads.submit(release.wait)
        threads.submit(ran.set)
        self.assertFalse(ran.wait(0.2), "one thread: the second call waits")
        self.assertTrue(threads.give_up())
        self.assertTrue(ran.wait(IO_TIMEOUT), "a thread took the stuck call's place")
        # At most `size` calls are given up on.
        self.assertFalse(threads.give_up())
        release.set()
        threads.given_up_done()
        deadline = time.monotonic() + IO_TIMEOUT
        while threads.threads > 1:
            self.assertLess(time.monotonic(), deadline, "the extra thread ends")
            time.sleep(0.01)


def WsgiWorker(tmpdir, app, extra=()):
    """The worker with --wsgi and --no-auth, stderr to a file."""
    return AppWorker(tmpdir, "--wsgi", app, 5, extra)


def http(path, body=b"", headers=(), method="GET", **extra):
    meta = {"method": method, "path": path, "headers": [list(h) for h in headers], **extra}
    return frame(envelope(b"E", meta, body))


def read_stream(sock):
    """The frames of a streamed answer, up to its last."""
    frames = [recv_envelope(sock)]
    while frames[-1][0] in (b"H", b"B"):
        frames.append(recv_envelope(sock))
    return frames


class WsgiTestCase(unittest.TestCase):
    def setUp(self):
        self.tmpdir = tempfile.mkdtemp(prefix="apw")
        self.addCleanup(shutil.rmtree, self.tmpdir, ignore_errors=True)
        with open(os.path.join(self.tmpdir, "wsgi_apps.py"), "w") as f:
            f.write(APPS)

    def start(self, app="wsgi_apps:app", extra=()):
        worker = WsgiWorker(self.tmpdir, app, extra)
        self.addCleanup(worker.stop)
        worker.wait_listening()
        return worker

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

    def wait_for_log(self, worker, text):
        deadline = time.monotonic() + IO_TIMEOUT
        while text not in worker.stderr():
            self.assertLess(time.monotonic(), deadline, worker.stderr())
            time.sleep(0.02)


class ResponseTest(WsgiTestCase):
    def test_the_app_sees_the_environ_the_host_describes(self):
        worker = self.start(extra=["--root-path", "/mount"])
        sock = worker.connect()
        sock.sendall(http("/sub/environ?x=1", b"data", [("Content-Type", "text/plain")],
                          method="PUT", scheme="https", client=["10.1.2.3", 4000]))
        kind, meta, body = recv_envelope(sock)
        self.assertEqual((kind, meta), (b"O", {"status": 201, "headers": [["X-A", "1"],
                                                                           ["X-A", "2"]]}))
        environ = json.loads(body)
        self.assertEqual(environ["SCRIPT_NAME"], "/mount")
        self.assertEqual(environ["PATH_INFO"], "/sub/environ")
        self.assertEqual(environ["QUERY_STRING"], "x=1")
        self.assertEqual(environ["REQUEST_METHOD"], "PUT")
        self.assertEqual(environ["CONTENT_LENGTH"], "4")
        self.assertEqual(environ["REMOTE_ADDR"], "10.1.2.3")
        self.assertEqual(environ["wsgi.url_scheme"], "https")
        self.assertEqual(environ["body"], "data")

    def test_a_list_of_one_chunk_is_one_answer(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/one", stream=True))
        self.assertEqual(recv_envelope(sock), (
            b"O", {"status": 200, "headers": [["Content-Type", "text/plain"]]}, b"hello"))
        sock.sendall(http("/plain", stream=True))
        self.assertEqual(recv_envelope(sock), (b"O", {}, b"plain"))

    def test_an_iterable_streams_chunk_by_chunk_and_is_closed(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/stream", stream=True))
        frames = read_stream(sock)
        # The empty chunk is not sent; the end is an empty `D`.
        self.assertEqual([kind for kind, _, _ in frames], [b"H", b"B", b"B", b"D"])
        self.assertEqual(frames[0][1], {"status": 200, "headers": []})
        self.assertEqual(b"".join(body for _, _, body in frames), b"one two three")
        self.assertEqual(self.notes(1), ["closed stream"])
        # The connection carries the next event.
        sock.sendall(http("/plain"))
        self.assertEqual(recv_envelope(sock)[2], b"plain")

    def test_without_streaming_asked_the_chunks_are_joined_into_one_answer(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/stream"))
        self.assertEqual(recv_envelope(sock), (b"O", {}, b"one two three"))
        sock.sendall(http("/write"))
        self.assertEqual(recv_envelope(sock), (b"O", {}, b"written returned"))

    def test_a_first_chunk_that_fills_the_content_length_is_one_answer(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/length", stream=True))
        kind, meta, body = recv_envelope(sock)
        # What goes past the Content-Length is dropped, as gunicorn drops it.
        self.assertEqual((kind, body), (b"O", b"hello"))
        self.assertEqual(self.notes(1), ["closed length"])

    def test_write_sends_the_head_and_its_data_at_once(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/write", stream=True))
        frames = read_stream(sock)
        self.assertEqual([(kind, body) for kind, _, body in frames],
                         [(b"H", b"written "), (b"B", b"returned"), (b"D", b"")])

    def test_an_exception_before_the_head_is_an_x_answer(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/raise-before", stream=True))
        kind, meta, body = recv_envelope(sock)
        self.assertEqual((kind, meta), (b"X", {"type": "ValueError", "message": "before the start"}))
        self.assertIn(b"Traceback", body)
        sock.sendall(http("/plain"))
        self.assertEqual(recv_envelope(sock)[2], b"plain")
        sock.sendall(http("/no-start"))
        kind, meta, _ = recv_envelope(sock)
        self.assertEqual((kind, meta["type"]), (b"X", "RuntimeError"))
        self.assertIn("start_response", meta["message"])

    def test_an_exception_mid_stream_cuts_it_closes_the_iterable_and_is_logged(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/raise-after", stream=True))
        self.assertEqual(recv_envelope(sock)[:1], (b"H",))
        kind, meta, _ = recv_envelope(sock)
        self.assertEqual((kind, meta["message"]), (b"X", "mid-stream"))
        self.assertEqual(self.notes(1), ["closed raise-after"])
        self.wait_for_log(worker, "mid-stream; the response is cut")

    def test_exc_info_replaces_the_head_before_it_is_sent_and_raises_after(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/exc-info", stream=True))
        self.assertEqual(recv_envelope(sock), (
            b"O", {"status": 503, "headers": [["Retry-After", "1"]]}, b"handled"))
        sock.sendall(http("/exc-info-late", stream=True))
        self.assertEqual(recv_envelope(sock)[0::2], (b"H", b"part"))
        kind, meta, _ = recv_envelope(sock)
        self.assertEqual((kind, meta["type"]), (b"X", "KeyError"))

    def test_the_file_wrapper_streams_the_file_and_closes_it(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/file", stream=True))
        frames = read_stream(sock)
        self.assertEqual(b"".join(body for _, _, body in frames), b"0123456789" * 1000)
        self.assertEqual(self.notes(1), ["file closed"])

    def test_a_body_over_the_frame_limit_goes_out_in_pieces_or_fails_whole(self):
        worker = self.start()
        sock = worker.connect()
        # The worker runs with --max-frame-bytes 4096.
        sock.sendall(http("/big", stream=True))
        frames = read_stream(sock)
        self.assertEqual(frames[0][0], b"H")
        self.assertGreater(len(frames), 3)
        self.assertEqual(b"".join(body for _, _, body in frames), b"ab" * 5000)
        sock.sendall(http("/big"))
        kind, meta, _ = recv_envelope(sock)
        self.assertEqual((kind, meta["type"]), (b"X", "ValueError"))

    def test_hop_by_hop_headers_are_dropped(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/hop", stream=True))
        self.assertEqual(recv_envelope(sock)[1], {"status": 200, "headers": [["X-Kept", "1"]]})

    def test_wsgi_errors_lines_reach_the_log(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/errors"))
        self.assertEqual(recv_envelope(sock)[2], b"logged")
        self.wait_for_log(worker, "ERROR async_pool_worker.wsgi.errors: second line")
        self.assertIn("ERROR async_pool_worker.wsgi.errors: first line", worker.stderr())

    def test_a_plain_event_is_refused(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(frame(envelope(b"E", {}, b"x")))
        kind, meta, _ = recv_envelope(sock)
        self.assertEqual((kind, meta["type"]), (b"X", "TypeError"))

    def test_an_app_that_is_not_callable_is_a_usage_error(self):
        worker = WsgiWorker(self.tmpdir, "wsgi_apps:not_callable")
        self.addCleanup(worker.stop)
        self.assertEqual(worker.proc.wait(IO_TIMEOUT), 2)
        self.assertIn("not a WSGI application", worker.stderr())


class ThreadFaultTest(WsgiTestCase):
    def test_the_loop_answers_new_connections_while_every_thread_sleeps(self):
        worker = self.start(extra=["--wsgi-threads", "2"])
        busy = [worker.connect() for _ in range(2)]
        for sock in busy:
            sock.sendall(http("/sleep?1.5"))
        time.sleep(0.2)
        # A liveness probe is a fresh connection that reads `R`: only the loop writes it.
        started = time.monotonic()
        worker.connect()
        self.assertLess(time.monotonic() - started, 0.5)
        for sock in busy:
            self.assertEqual(recv_envelope(sock)[2], b"slept")

    def test_a_cancelled_stream_is_confirmed_only_once_its_thread_ends(self):
        worker = self.start(extra=["--wsgi-threads", "2"])
        sock = worker.connect()
        sock.sendall(frame(envelope(b"M", {"version": 1})))
        self.assertEqual(recv_envelope(sock)[:2], (b"M", {"version": 1}))

        def stream_frame(stream, payload):
            return struct.pack(">II", len(payload) + 4, stream) + payload

        def recv_stream_frame():
            (length,) = struct.unpack(">I", recv_exactly(sock, 4))
            payload = recv_exactly(sock, length)
            (stream,) = struct.unpack(">I", payload[:4])
            return stream, payload[4:5]

        sock.sendall(stream_frame(1, envelope(b"E", {"method": "GET", "path": "/sleep?1.5",
                                                     "headers": []})))
        time.sleep(0.3)
        cancelled_at = time.monotonic()
        sock.sendall(stream_frame(1, envelope(b"K", {})))
        # Another stream is served meanwhile.
        sock.sendall(stream_frame(2, envelope(b"E", {"method": "GET", "path": "/plain",
                                                     "headers": []})))
        self.assertEqual(recv_stream_frame(), (2, b"O"))
        self.assertEqual(recv_stream_frame(), (1, b"Q"))
        self.assertGreater(time.monotonic() - cancelled_at, 0.9,
                           "Q came before the view returned")
        self.assertEqual(self.notes(1), ["slept 1.5"])
        self.wait_for_log(worker, "a thread cannot be stopped")
        self.assertNotIn("Traceback", worker.stderr())

    def test_a_closed_connection_leaves_a_thread_for_the_next_event(self):
        worker = self.start(extra=["--wsgi-threads", "1"])
        stuck = worker.connect()
        stuck.sendall(http("/sleep?2"))
        time.sleep(0.2)
        stuck.close()
        # The host reuses the slot at once: the worker has a thread for it.
        other = worker.connect()
        started = time.monotonic()
        other.sendall(http("/plain"))
        self.assertEqual(recv_envelope(other)[2], b"plain")
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(self.notes(1, timeout=IO_TIMEOUT), ["slept 2"])

    def test_close_is_called_when_the_host_gives_up_mid_stream(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/ticks", stream=True))
        self.assertEqual(recv_envelope(sock)[0::2], (b"H", b"tick"))
        sock.close()
        self.assertEqual(self.notes(1), ["closed ticks"])

    def test_a_slow_reader_holds_the_thread_back(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/flood", stream=True))
        self.assertEqual(recv_envelope(sock)[0], b"H")
        time.sleep(0.5)
        probe = worker.connect()
        probe.sendall(http("/flooded"))
        produced = int(recv_envelope(probe)[2])
        # 400 chunks of 16 KiB: what the socket's buffers hold (both ends'),
        # the transport's and the few chunks in between, is far less.
        buffers = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) \
            + sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        bound = (4 * buffers + 1024 * 1024) // 16384
        self.assertLess(bound, 400, "this system's socket buffers hold the whole response")
        self.assertLess(produced, bound)
        rest = read_stream(sock)
        self.assertEqual(rest[-1][0], b"D")
        # The H frame read above held the first 4 KiB frame's worth, less its head.
        self.assertGreater(sum(len(body) for _, _, body in rest), 400 * 16384 - 4096)

    def test_a_drain_lets_a_running_view_finish(self):
        worker = self.start()
        sock = worker.connect()
        sock.sendall(http("/sleep?0.5"))
        time.sleep(0.1)
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(recv_envelope(sock)[2], b"slept")
        self.assertEqual(worker.proc.wait(IO_TIMEOUT), 0)


class ThreadAnswerTest(WsgiTestCase):
    """On a multiplexed connection a thread writes its event's answer itself
    (server._Multiplexed.answer_from_thread)."""

    def multiplexed(self, worker):
        sock = worker.connect()
        sock.sendall(frame(envelope(b"M", {"version": 1})))
        self.assertEqual(recv_envelope(sock)[:2], (b"M", {"version": 1}))
        return sock

    @staticmethod
    def event(stream, path):
        payload = envelope(b"E", {"method": "GET", "path": path, "headers": []})
        return struct.pack(">II", len(payload) + 4, stream) + payload

    @staticmethod
    def answer(sock):
        """(stream, kind, body) of the next frame."""
        (length,) = struct.unpack(">I", recv_exactly(sock, 4))
        payload = recv_exactly(sock, length)
        (stream,) = struct.unpack(">I", payload[:4])
        (meta_len,) = struct.unpack(">I", payload[5:9])
        return stream, payload[4:5], payload[9 + meta_len:]

    def test_the_thread_writes_the_answer_while_the_loop_does_not_run(self):
        ours, host = socket.socketpair()
        ours.setblocking(False)
        host.settimeout(IO_TIMEOUT)
        self.addCleanup(ours.close)
        self.addCleanup(host.close)
        loop = asyncio.new_event_loop()  # run only where the test says
        self.addCleanup(loop.close)
        backlog = [0]

        class Transport:
            written = []

            def get_extra_info(self, name):
                return ours if name == "socket" else None

            def get_write_buffer_size(self):
                return backlog[0]

            def write(self, data):
                self.written.append(data)

        worker = types.SimpleNamespace(app=types.SimpleNamespace(answers_from_threads=True),
                                       loop=loop, draining=False, worker_id=0, max_frame=4096,
                                       forget=lambda conn: None)
        conn = types.SimpleNamespace(worker=worker, transport=Transport(),
                                     state=server._SERVING, number=1, busy=True)
        mux = server._Multiplexed(conn)
        self.addCleanup(mux.lost)
        settled = []

        def answer_on_a_thread(stream, answer):
            mux.tasks[stream] = object()
            part = mux.stream_answer(stream)
            done = []
            thread = threading.Thread(target=lambda: done.append(
                part.answer_from_thread(answer, lambda: settled.append(stream))))
            thread.start()
            thread.join(IO_TIMEOUT)
            self.assertEqual(done, [True])

        answer_on_a_thread(1, b"first")
        self.assertEqual(recv_exactly(host, 4 + 4 + 5), struct.pack(">II", 9, 1) + b"first")
        self.assertEqual(Transport.written, [], "the loop wrote it")
        # The loop settles the stream later, before it reads another frame.
        self.assertEqual((settled, list(mux.tasks)), ([], [1]))
        mux.data_received(b"")
        self.assertEqual((settled, mux.tasks, mux.parts, conn.busy), ([1], {}, {}, False))
        # With the transport holding bytes back, the answer waits for the loop's
        # flush, behind them.
        backlog[0] = 1
        answer_on_a_thread(2, b"second")
        host.setblocking(False)
        self.assertRaises(BlockingIOError, host.recv, 1)
        loop.run_until_complete(asyncio.sleep(0))
        self.assertEqual(Transport.written, [struct.pack(">II", 10, 2) + b"second"])

    def test_a_stream_is_free_again_as_soon_as_its_answer_arrives(self):
        worker = self.start(extra=["--wsgi-threads", "4"])
        sock = self.multiplexed(worker)
        for stream in range(1, 9):
            sock.sendall(self.event(stream, "/plain"))
        # Each answer's stream is reused at once: the loop must have settled
        # it before it reads the new event, or it would close the connection.
        for _ in range(2000):
            stream, kind, body = self.answer(sock)
            self.assertEqual((kind, body), (b"O", b"plain"))
            sock.sendall(self.event(stream, "/plain"))
        for _ in range(8):
            self.assertEqual(self.answer(sock)[1:], (b"O", b"plain"))
        self.assertNotIn("closing connection", worker.stderr())

    def test_a_cancel_that_crosses_an_answer_is_still_confirmed(self):
        worker = self.start(extra=["--wsgi-threads", "2"])
        sock = self.multiplexed(worker)
        payload = envelope(b"K", {})
        cancel = struct.pack(">II", len(payload) + 4, 1) + payload
        for _ in range(200):
            # The answer is written by the thread, before or after the loop
            # reads the cancel: either way the stream ends with one `Q`.
            sock.sendall(self.event(1, "/plain") + cancel)
            kinds = []
            while not kinds or kinds[-1] != b"Q":
                stream, kind, _ = self.answer(sock)
                self.assertEqual(stream, 1)
                kinds.append(kind)
            self.assertIn(kinds, ([b"O", b"Q"], [b"Q"]))
        sock.sendall(self.event(2, "/plain"))
        self.assertEqual(self.answer(sock), (2, b"O", b"plain"))

    def test_answers_the_socket_cannot_take_yet_go_out_whole_and_in_order(self):
        worker = self.start(extra=["--wsgi-threads", "4", "--max-frame-bytes", "65536"])
        sock = self.multiplexed(worker)
        # Far more than the socket's buffers hold, while the host reads nothing.
        count, size = 400, 30000
        sock.sendall(b"".join(self.event(stream, "/sized?%d" % size)
                              for stream in range(1, count + 1)))
        time.sleep(0.5)
        seen = set()
        for _ in range(count):
            stream, kind, body = self.answer(sock)
            self.assertEqual((kind, len(body)), (b"O", size))
            seen.add(stream)
        self.assertEqual(seen, set(range(1, count + 1)))
        sock.sendall(self.event(1, "/plain"))
        self.assertEqual(self.answer(sock), (1, b"O", b"plain"))

    def test_a_drain_ends_once_the_threads_answers_are_out(self):
        worker = self.start()
        sock = self.multiplexed(worker)
        sock.sendall(self.event(1, "/sleep?0.5"))
        time.sleep(0.1)
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.answer(sock), (1, b"O", b"slept"))
        self.assertEqual(worker.proc.wait(IO_TIMEOUT), 0)


if __name__ == "__main__":
    unittest.main()
