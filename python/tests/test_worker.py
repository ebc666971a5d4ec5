"""Tests for the worker: the real worker, run as a subprocess, and its
protocol functions without one.

Run from the repository root:

    python3 -m unittest discover -s python/tests -t python
"""

import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import textwrap
import time
import unittest

from async_pool_worker import Context, config, loops, protocol, server

from .support import (EXAMPLES, IO_TIMEOUT, PACKAGE_ROOT, START_TIMEOUT, assert_closed,
                      envelope, frame, handshake, recv_envelope, recv_exactly, worker_command,
                      worker_env)

# The loop a worker started by this interpreter runs on.
EXPECTED_LOOP = "uvloop" if loops.uvloop is not None else "asyncio"

# Handlers used only by the tests; written into each test's temporary directory.
PROBE_MODULE = textwrap.dedent('''
    import asyncio
    import json
    import os
    import time
    from async_pool_worker import Response

    async def describe(context, event):
        return json.dumps({
            "body": event.body.decode("latin-1"),
            "is_http": event.is_http,
            "method": event.method,
            "path": event.path,
            "headers": [list(h) for h in event.headers],
            "x_foo": event.header("X-FOO"),
            "missing": event.header("nope"),
            "worker_id": context.worker_id,
        })

    RESULTS = {
        b"str": lambda: "h\\u00e9llo",
        b"none": lambda: None,
        b"bytearray": lambda: bytearray(b"ba"),
        b"tuple2": lambda: (201, b"created"),
        b"tuple3-dict": lambda: (202, {"a": "1", "b": "2"}, "accepted"),
        b"tuple3-list": lambda: (203, [("set-cookie", "x"), ("set-cookie", "y")], b""),
        b"response": lambda: Response(b"teapot", status=418, headers={"k": "v"}),
        b"response-default": lambda: Response(),
        b"int": lambda: 42,
        b"bad-status": lambda: ("200", b"x"),
        b"bad-header": lambda: (200, {"n": 1}, b"x"),
        b"tuple4": lambda: (1, 2, 3, 4),
    }

    async def returns(context, event):
        return RESULTS[event.body]()

    async def block(context, event):
        time.sleep(60)  # blocks the event loop, as a stray sync call would
        return b"late"

    async def record(context, event):
        # Leaves a trace of every event it runs, for the handshake tests.
        with open("ran.log", "ab") as f:
            f.write(event.body + b"\\n")
        return event.body

    async def environment(context, event):
        return json.dumps(sorted(os.environ))

    async def cancelled(context, event):
        raise asyncio.CancelledError()

    async def record_cancel(context, event):
        # Sleeps until cancelled, and writes down which event was.
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            with open("cancelled.log", "ab") as f:
                f.write(event.body + b"\\n")
            raise
        return b"late"

    def sync_handler(context, event):
        return b"never"

    NOT_CALLABLE = 3
''')


class WorkerProcess:
    """The worker as a subprocess; stderr goes to a file so it can never fill a pipe."""

    def __init__(self, tmpdir, handler, extra=(), handler_paths=(EXAMPLES,), tcp=False,
                 env=None, socket_dir=None, own_group=False, secret=None):
        self.path = os.path.join(socket_dir or tmpdir, "w.sock")
        # A fresh secret per worker, in the environment as the launcher passes it;
        # None with --no-auth.
        self.secret = None if "--no-auth" in extra else (secret or os.urandom(32))
        env = worker_env(**(env or {}))
        env.pop(config.SECRET_ENV, None)
        if self.secret is not None:
            env[config.SECRET_ENV] = self.secret.hex()
        self.stderr_path = os.path.join(tmpdir, "stderr-%d.log" % time.monotonic_ns())
        self.endpoint = ["--tcp", "127.0.0.1:0"] if tcp else ["--unix", self.path]
        args = worker_command("--handler", handler, *self.endpoint, "--worker-id", "7", *extra)
        for path in handler_paths:
            args += ["--handler-path", path]
        self._stderr = open(self.stderr_path, "wb")
        # stdin is a pipe, as the host's launcher makes it: the lifeline.
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, cwd=tmpdir, env=env,
                                     start_new_session=own_group)
        self.tcp_address = None
        self.listening_line = None

    def wait_listening(self):
        """Return the listening line, failing if the worker does not print it."""
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        if not ready:
            raise AssertionError("worker did not start; stderr:\n" + self.stderr())
        line = self.proc.stdout.readline().decode()
        self.listening_line = line
        if not line:
            raise AssertionError("worker exited at start; stderr:\n" + self.stderr())
        if "tcp:" in line:
            host_port = line.split("tcp:")[1].split()[0]
            host, _, port = host_port.rpartition(":")
            self.tcp_address = (host, int(port))
        return line

    def connect(self, read_ready=True, authenticate=True):
        """A connection that has answered the handshake (unless told not to) and
        read the ready frame (likewise)."""
        sock = self.connect_raw()
        if authenticate and self.secret is not None:
            handshake(sock, self.secret)
        if read_ready:
            kind, meta, body = recv_envelope(sock)
            assert kind == b"R" and body == b"", (kind, meta, body)
        return sock

    def connect_raw(self):
        """A bare connection, as any local process could open."""
        if self.tcp_address:
            return socket.create_connection(self.tcp_address, timeout=IO_TIMEOUT)
        return self._unix_socket()

    def _unix_socket(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock

    def stderr(self):
        self._stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait(self, timeout=IO_TIMEOUT):
        return self.proc.wait(timeout)

    def stop(self):
        """Kill the worker if it still runs; always safe to call."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(IO_TIMEOUT)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self._stderr.close()


class WorkerTestCase(unittest.TestCase):
    def setUp(self):
        # A short path: Unix socket paths are limited to about 100 bytes.
        self.tmpdir = tempfile.mkdtemp(prefix="apw")
        self.addCleanup(shutil.rmtree, self.tmpdir, ignore_errors=True)
        with open(os.path.join(self.tmpdir, "probe.py"), "w") as f:
            f.write(PROBE_MODULE)

    def start(self, handler="echo:handler", extra=(), tcp=False, env=None, socket_dir=None,
              own_group=False):
        worker = WorkerProcess(self.tmpdir, handler, extra,
                               handler_paths=(EXAMPLES, self.tmpdir), tcp=tcp, env=env,
                               socket_dir=socket_dir, own_group=own_group)
        self.addCleanup(worker.stop)
        worker.wait_listening()
        return worker

    def run_to_exit(self, handler, extra=(), secret=None):
        """Start a worker expected to exit at once; return (status, stderr)."""
        worker = WorkerProcess(self.tmpdir, handler, extra,
                               handler_paths=(EXAMPLES, self.tmpdir), secret=secret)
        self.addCleanup(worker.stop)
        status = worker.wait()
        return status, worker.stderr()

    def call(self, sock, body, meta=None):
        sock.sendall(frame(envelope(b"E", {} if meta is None else meta, body)))
        return recv_envelope(sock)


# --------------------------------------------------------------------------
# Decoding, without a process
# --------------------------------------------------------------------------


class ParseEventTest(unittest.TestCase):
    def test_plain_and_http(self):
        plain = protocol.parse_event(envelope(b"E", {}, b"\x00body"))
        self.assertFalse(plain.is_http)
        self.assertEqual((plain.body, plain.method, plain.path, plain.headers),
                         (b"\x00body", None, None, []))
        http = protocol.parse_event(envelope(b"E", {"method": "POST", "path": "/p",
                                               "headers": [["A", "1"], ["a", "2"]]}, b"x"))
        self.assertTrue(http.is_http)
        self.assertEqual((http.method, http.path, http.headers),
                         ("POST", "/p", [("A", "1"), ("a", "2")]))
        self.assertEqual(http.header("a"), "1")
        self.assertIsNone(http.header("b"))

    def test_malformed(self):
        bad = {
            "short": b"E\x00\x00",
            "kind": envelope(b"O", {}),
            "meta past end": b"E" + struct.pack(">I", 100) + b"{}",
            "not json": b"E" + struct.pack(">I", 3) + b"{x}",
            "not utf-8": b"E" + struct.pack(">I", 2) + b"\xff\xfe",
            "array meta": envelope(b"E", []),
            "method type": envelope(b"E", {"method": 1, "path": "/"}),
            "headers type": envelope(b"E", {"method": "GET", "path": "/", "headers": [["a"]]}),
        }
        for name, payload in bad.items():
            with self.subTest(name):
                with self.assertRaises(protocol.ProtocolError):
                    protocol.parse_event(payload)

    def test_trace_context_from_meta(self):
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        plain = protocol.parse_event(envelope(b"E", {"trace": {"traceparent": parent}}, b"b"))
        self.assertFalse(plain.is_http)
        self.assertEqual(plain.trace, {"traceparent": parent, "tracestate": None})
        http = protocol.parse_event(envelope(b"E", {"method": "GET", "path": "/", "headers": [],
                                               "trace": {"traceparent": parent,
                                                         "tracestate": "a=1"}}, b""))
        self.assertEqual(http.trace, {"traceparent": parent, "tracestate": "a=1"})
        self.assertIsNone(protocol.parse_event(envelope(b"E", {}, b"")).trace)
        for bad in ("x", {"tracestate": "a=1"}, {"traceparent": 1}):
            with self.subTest(bad=bad), self.assertRaises(protocol.ProtocolError):
                protocol.parse_event(envelope(b"E", {"trace": bad}, b""))
        # Each event gets its own context; the worker's own keeps no trace.
        context = Context(None, 3)
        seen = context.for_event(http)
        self.assertEqual((seen.worker_id, seen.trace["tracestate"]), (3, "a=1"))
        self.assertIsNone(context.trace)
        self.assertIs(context.for_event(protocol.Event()), context)

    def test_build_response_rejects_other_values(self):
        for value in (42, [b"x"], (1, 2, 3, 4), (True, b""), (200, "x-not-headers", b"")):
            with self.subTest(value=value):
                with self.assertRaises(TypeError):
                    protocol.build_response(value)

    def test_encoded_responses_follow_their_headers(self):
        def meta_of(envelope_bytes):
            (meta_len,) = struct.unpack(">I", envelope_bytes[1:5])
            return json.loads(envelope_bytes[5:5 + meta_len]), envelope_bytes[5 + meta_len:]

        headers = {"x": "1"}
        first = protocol.encode_response((201, headers, b"a"))
        self.assertEqual(protocol.encode_response((201, headers, b"a")), first)
        headers["x"] = "2é"
        self.assertEqual(meta_of(first), ({"status": 201, "headers": [["x", "1"]]}, b"a"))
        self.assertEqual(meta_of(protocol.encode_response((201, headers, "b"))),
                         ({"status": 201, "headers": [["x", "2é"]]}, b"b"))
        self.assertEqual(meta_of(protocol.encode_response((202, headers, None))),
                         ({"status": 202, "headers": [["x", "2é"]]}, b""))
        self.assertEqual(protocol.encode_response((200, {}, b"c")), b"O\0\0\0\x02{}c")
        for bad in ((200, {"n": 1}, b""), (200, {"n": ["v"]}, b""), (True, {"a": "b"}, b""),
                    (200, {"a": "b"}, 3)):
            for _ in range(2):  # never let through, the second time either
                with self.subTest(bad=bad), self.assertRaises(TypeError):
                    protocol.encode_response(bad)

    def test_encode_raised_fits_the_limit(self):
        try:
            raise RuntimeError("m" * 5000)
        except RuntimeError as exc:
            payload = protocol.encode_raised(exc, 600)
        self.assertLessEqual(len(payload), 600)
        self.assertEqual(payload[:1], b"X")
        (meta_len,) = struct.unpack(">I", payload[1:5])
        self.assertEqual(json.loads(payload[5:5 + meta_len])["type"], "RuntimeError")


# --------------------------------------------------------------------------
# The worker process
# --------------------------------------------------------------------------


class ServeTest(WorkerTestCase):
    def test_ready_frame_on_connect(self):
        worker = self.start()
        sock = worker.connect(read_ready=False)
        with sock:
            kind, meta, body = recv_envelope(sock)
        self.assertEqual(kind, b"R")
        self.assertEqual(meta, {"pid": worker.proc.pid, "worker_id": 7})
        self.assertEqual(body, b"")

    def test_listen_backlog_is_at_least_2048_within_somaxconn(self):
        cap = server.somaxconn() or 1 << 20
        self.assertEqual(server.listen_backlog(10), min(2048, cap))
        self.assertEqual(server.listen_backlog(5000), min(5000, cap))

    def test_listening_line_and_stale_socket(self):
        # Leave a stale socket file behind, as a killed worker would.
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(os.path.join(self.tmpdir, "w.sock"))
        stale.close()
        worker = WorkerProcess(self.tmpdir, "echo:handler")
        self.addCleanup(worker.stop)
        line = worker.wait_listening()
        self.assertEqual(line.strip(),
                         "async_pool_worker: worker 7 listening on unix:%s (pid %d, loop %s)"
                         % (worker.path, worker.proc.pid, EXPECTED_LOOP))
        with worker.connect() as sock:
            self.assertEqual(self.call(sock, b"ok")[2], b"ok")

    def test_asyncio_loop_when_asked_for_and_uvloop_when_installed(self):
        forced = self.start(env={loops.LOOP_ENV: "asyncio"}, tcp=True)
        self.assertIn("loop asyncio)", forced.listening_line)
        default = self.start()
        # The interpreter running the tests decides: CI runs them once with
        # uvloop installed and once without.
        self.assertIn("loop %s)" % EXPECTED_LOOP, default.listening_line)
        for worker in (forced, default):
            with worker.connect() as sock:
                self.assertEqual(self.call(sock, b"ok")[2], b"ok")

    def test_text_and_binary_round_trip(self):
        worker = self.start()
        with worker.connect() as sock:
            kind, meta, body = self.call(sock, "héllo wörld".encode())
            self.assertEqual((kind, body), (b"O", "héllo wörld".encode()))
            self.assertEqual(meta, {"status": 200, "headers": [["x-worker-id", "7"]]})
            everything = bytes(range(256)) * 4
            kind, meta, body = self.call(sock, everything)
            self.assertEqual((kind, body), (b"O", everything))
            self.assertEqual(self.call(sock, b"")[2], b"")

    def test_frames_split_across_reads_and_sent_early(self):
        worker = self.start()
        with worker.connect() as sock:
            # A large frame in pieces, with pauses: it is read from the buffer.
            body = bytes(range(256)) * 4096
            data = frame(envelope(b"E", {}, body))
            for start in range(0, len(data), 300000):
                sock.sendall(data[start:start + 300000])
                time.sleep(0.05)
            self.assertEqual(recv_envelope(sock)[2], body)
            # A length prefix alone, then the rest.
            data = frame(envelope(b"E", {}, b"split"))
            sock.sendall(data[:2])
            time.sleep(0.05)
            sock.sendall(data[2:])
            self.assertEqual(recv_envelope(sock)[2], b"split")
            # Two events at once: answered one after the other, in order.
            sock.sendall(frame(envelope(b"E", {}, b"one")) + frame(envelope(b"E", {}, b"two")))
            self.assertEqual(recv_envelope(sock)[2], b"one")
            self.assertEqual(recv_envelope(sock)[2], b"two")

    def test_tcp_round_trip(self):
        worker = self.start(tcp=True)
        self.assertIsNotNone(worker.tcp_address)
        with worker.connect() as sock:
            self.assertEqual(self.call(sock, b"over tcp")[:3:2], (b"O", b"over tcp"))

    def test_plain_versus_http_event(self):
        worker = self.start("probe:describe")
        with worker.connect() as sock:
            kind, _, body = self.call(sock, b"p")
            self.assertEqual(kind, b"O")
            plain = json.loads(body)
            self.assertEqual(plain, {"body": "p", "is_http": False, "method": None, "path": None,
                                     "headers": [], "x_foo": None, "missing": None,
                                     "worker_id": 7})
            meta = {"method": "PUT", "path": "/a/b?q=1",
                    "headers": [["X-Foo", "one"], ["x-foo", "two"], ["Other", "3"]]}
            kind, _, body = self.call(sock, b"h", meta)
            self.assertEqual(kind, b"O")
            http = json.loads(body)
            self.assertTrue(http["is_http"])
            self.assertEqual((http["method"], http["path"], http["x_foo"], http["missing"]),
                             ("PUT", "/a/b?q=1", "one", None))
            self.assertEqual(http["headers"], meta["headers"])

    def test_hello_example(self):
        worker = self.start("async_pool_worker.hello:handler")
        with worker.connect() as sock:
            kind, meta, body = self.call(sock, b"", {"method": "GET", "path": "/x", "headers": []})
        self.assertEqual((kind, body), (b"O", b"hello from worker 7: GET /x\n"))
        self.assertEqual(meta["status"], 200)

    def test_return_forms(self):
        worker = self.start("probe:returns")
        expected = {
            b"str": (200, [], "héllo".encode()),
            b"none": (200, [], b""),
            b"bytearray": (200, [], b"ba"),
            b"tuple2": (201, [], b"created"),
            b"tuple3-dict": (202, [["a", "1"], ["b", "2"]], b"accepted"),
            b"tuple3-list": (203, [["set-cookie", "x"], ["set-cookie", "y"]], b""),
            b"response": (418, [["k", "v"]], b"teapot"),
            b"response-default": (200, [], b""),
        }
        with worker.connect() as sock:
            for request, (status, headers, body) in expected.items():
                with self.subTest(request=request):
                    kind, meta, got = self.call(sock, request)
                    self.assertEqual(kind, b"O", meta)
                    self.assertEqual((meta.get("status", 200), meta.get("headers", []), got),
                                     (status, headers, body))
                    if (status, headers) == (200, []):
                        # Both fields are optional: a plain 200 spends no bytes on them.
                        self.assertEqual(meta, {})

    def test_bad_return_values_are_type_errors(self):
        worker = self.start("probe:returns")
        with worker.connect() as sock:
            for request, word in ((b"int", "int"), (b"bad-status", "status"),
                                  (b"bad-header", "header"), (b"tuple4", "4 items")):
                with self.subTest(request=request):
                    kind, meta, body = self.call(sock, request)
                    self.assertEqual(kind, b"X")
                    self.assertEqual(meta["type"], "TypeError")
                    self.assertIn(word, meta["message"])
            # The connection is still usable.
            self.assertEqual(self.call(sock, b"tuple2")[0], b"O")

    def test_raising_handler_keeps_connection(self):
        worker = self.start("faulty:handler")
        with worker.connect() as sock:
            kind, meta, body = self.call(sock, b"raise")
            self.assertEqual(kind, b"X")
            self.assertEqual(meta, {"type": "ValueError", "message": "asked to raise"})
            traceback_text = body.decode()
            self.assertIn("Traceback (most recent call last)", traceback_text)
            self.assertIn("faulty.py", traceback_text)
            self.assertIn("ValueError: asked to raise", traceback_text)
            self.assertEqual(self.call(sock, b"next")[:3:2], (b"O", b"next"))

    def test_a_handler_cancelled_without_an_answer_closes_its_connection_only(self):
        worker = self.start("probe:cancelled")
        with worker.connect() as first, worker.connect() as second:
            first.sendall(frame(envelope(b"E", {}, b"x")))
            # Not left waiting for an answer that cannot come.
            assert_closed(self, first)
            second.sendall(frame(envelope(b"E", {}, b"y")))
            assert_closed(self, second)
        with worker.connect() as third:
            third.sendall(frame(envelope(b"E", {}, b"z")))
            assert_closed(self, third)
        self.assertIsNone(worker.proc.poll())

    def test_response_over_frame_limit_is_an_error(self):
        worker = self.start(extra=["--max-frame-bytes", "1024"])
        with worker.connect() as sock:
            # The request fits (1 + 4 + 2 + 1000 bytes); the echo adds a header and does not.
            kind, meta, _ = self.call(sock, b"z" * 1000)
            self.assertEqual((kind, meta["type"]), (b"X", "ValueError"))
            self.assertIn("exceeds", meta["message"])
            self.assertEqual(self.call(sock, b"small")[2], b"small")


def mux_frame(stream, payload):
    """A multiplexed frame: length, stream id, envelope."""
    return struct.pack(">II", 4 + len(payload), stream) + payload


def recv_mux(sock):
    """Read one multiplexed frame: (stream, kind, meta, body)."""
    (length,) = struct.unpack(">I", recv_exactly(sock, 4))
    payload = recv_exactly(sock, length)
    (stream, meta_len) = struct.unpack(">IxI", payload[:9])
    return stream, payload[4:5], json.loads(payload[9:9 + meta_len]), payload[9 + meta_len:]


class MultiplexTest(WorkerTestCase):
    """docs/protocol.md, "Multiplexing"."""

    def multiplexed(self, worker):
        sock = worker.connect()
        sock.sendall(frame(envelope(b"M", {"version": 1})))
        self.assertEqual(recv_envelope(sock), (b"M", {"version": 1}, b""))
        return sock

    def test_many_events_in_one_write_each_answered_on_its_stream(self):
        worker = self.start("sleepy:handler")
        with self.multiplexed(worker) as sock:
            # Longest first: the answers come back in another order than asked.
            delays = {9: b"0.3", 4: b"0.2", 1: b"0.1", 77: b"0.0"}
            sock.sendall(b"".join(mux_frame(stream, envelope(b"E", {}, body))
                                  for stream, body in delays.items()))
            answers = {}
            for _ in delays:
                stream, kind, _meta, body = recv_mux(sock)
                self.assertEqual(kind, b"O")
                answers[stream] = body
            self.assertEqual(answers, delays)
            # A stream is free again once answered.
            sock.sendall(mux_frame(9, envelope(b"E", {}, b"0")))
            self.assertEqual(recv_mux(sock)[::3], (9, b"0"))

    def test_a_frame_split_across_reads(self):
        worker = self.start()
        with self.multiplexed(worker) as sock:
            body = bytes(range(256)) * 1024
            data = mux_frame(3, envelope(b"E", {}, body)) + mux_frame(4, envelope(b"E", {}, b"x"))
            for start in range(0, len(data), 100000):
                sock.sendall(data[start:start + 100000])
                time.sleep(0.02)
            answers = dict(recv_mux(sock)[::3] for _ in range(2))
            self.assertEqual(answers, {3: body, 4: b"x"})

    def test_a_cancel_frame_cancels_the_event_and_is_confirmed(self):
        worker = self.start("sleepy:handler")
        with self.multiplexed(worker) as sock:
            sock.sendall(mux_frame(5, envelope(b"E", {}, b"30")))
            sock.sendall(mux_frame(6, envelope(b"E", {}, b"0.1")))
            time.sleep(0.1)
            sock.sendall(mux_frame(5, envelope(b"K", {})))
            frames = {recv_mux(sock)[:2] for _ in range(2)}
            self.assertEqual(frames, {(5, b"Q"), (6, b"O")})
            # The stream carries the next event.
            sock.sendall(mux_frame(5, envelope(b"E", {}, b"0")))
            self.assertEqual(recv_mux(sock)[::3], (5, b"0"))

    def test_a_cancel_read_with_its_event_is_confirmed_before_the_event_starts(self):
        # The host sends both in one write when its client hangs up at once:
        # the event's task is cancelled before its first step.
        worker = self.start("sleepy:handler")
        with self.multiplexed(worker) as sock:
            sock.sendall(b"".join(mux_frame(stream, envelope(b"E", {}, b"30"))
                                  + mux_frame(stream, envelope(b"K", {}))
                                  for stream in (1, 2, 3)))
            confirmed = {recv_mux(sock)[:2] for _ in range(3)}
            self.assertEqual(confirmed, {(1, b"Q"), (2, b"Q"), (3, b"Q")})
            sock.sendall(mux_frame(1, envelope(b"E", {}, b"0")))
            self.assertEqual(recv_mux(sock)[::3], (1, b"0"))

    def test_a_cancel_that_crossed_the_answer_is_confirmed_too(self):
        worker = self.start()
        with self.multiplexed(worker) as sock:
            sock.sendall(mux_frame(8, envelope(b"E", {}, b"done")))
            self.assertEqual(recv_mux(sock)[:2], (8, b"O"))
            sock.sendall(mux_frame(8, envelope(b"K", {})))
            self.assertEqual(recv_mux(sock)[:2], (8, b"Q"))

    def test_protocol_breaches_close_the_connection(self):
        worker = self.start("sleepy:handler", extra=["--max-frame-bytes", "4096"])
        cases = [
            # A second event on a busy stream.
            mux_frame(1, envelope(b"E", {}, b"5")) + mux_frame(1, envelope(b"E", {}, b"5")),
            # A frame over the limit, refused from its length alone.
            struct.pack(">I", 5000),
            # No envelope after the stream id; an unknown kind.
            mux_frame(2, b""),
            mux_frame(2, envelope(b"Z", {})),
        ]
        for data in cases:
            with self.subTest(data=data[:16]), self.multiplexed(worker) as sock:
                sock.sendall(data)
                assert_closed(self, sock)
        # Another version than 1 is refused.
        with worker.connect() as sock:
            sock.sendall(frame(envelope(b"M", {"version": 2})))
            assert_closed(self, sock)
        # Other connections are served all along.
        with worker.connect() as sock:
            self.assertEqual(self.call(sock, b"0")[::2], (b"O", b"0"))

    def test_sigterm_finishes_the_events_running_and_takes_no_more(self):
        worker = self.start("sleepy:handler")
        with self.multiplexed(worker) as sock:
            sock.sendall(mux_frame(1, envelope(b"E", {}, b"0.6"))
                         + mux_frame(2, envelope(b"E", {}, b"0.3")))
            time.sleep(0.2)
            worker.proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            # Sent after the signal: not run.
            sock.sendall(mux_frame(3, envelope(b"E", {}, b"0")))
            answers = {recv_mux(sock)[::3] for _ in range(2)}
            self.assertEqual(answers, {(1, b"0.6"), (2, b"0.3")})
            assert_closed(self, sock)
        self.assertEqual(worker.wait(), 0)

    def test_events_of_a_closed_connection_are_cancelled(self):
        worker = self.start("probe:record_cancel")
        with self.multiplexed(worker) as sock:
            sock.sendall(mux_frame(1, envelope(b"E", {}, b"a"))
                         + mux_frame(2, envelope(b"E", {}, b"b")))
            time.sleep(0.2)
        path = os.path.join(self.tmpdir, "cancelled.log")

        def cancelled():
            if not os.path.exists(path):
                return []
            with open(path) as f:
                return sorted(f.read().split())

        deadline = time.monotonic() + IO_TIMEOUT
        while cancelled() != ["a", "b"] and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(cancelled(), ["a", "b"])


class StartupTest(WorkerTestCase):
    def test_sync_handler_refused(self):
        status, stderr = self.run_to_exit("probe:sync_handler")
        self.assertEqual(status, 2)
        self.assertIn("probe:sync_handler", stderr)
        self.assertIn("async def", stderr)

    def test_import_failure(self):
        status, stderr = self.run_to_exit("no_such_module_xyz:handler")
        self.assertEqual(status, 2)
        self.assertIn("no_such_module_xyz", stderr)
        self.assertIn("ModuleNotFoundError", stderr)

    def test_missing_function_and_non_callable(self):
        status, stderr = self.run_to_exit("probe:nope")
        self.assertEqual(status, 2)
        self.assertIn("'nope'", stderr)
        status, stderr = self.run_to_exit("probe:NOT_CALLABLE")
        self.assertEqual(status, 2)
        self.assertIn("async def", stderr)

    @unittest.skipUnless(os.path.exists("/proc/self/limits"), "needs /proc")
    def test_fd_limit_raised(self):
        import resource
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 2 * (3000 + config.PROBE_CONNECTIONS) + 64
        worker = self.start(extra=["--connections", "3000"])
        with open("/proc/%d/limits" % worker.proc.pid) as f:
            line = next(l for l in f if l.startswith("Max open files"))
        soft = line.split()[3]
        if hard == resource.RLIM_INFINITY or hard >= wanted:
            self.assertTrue(soft == "unlimited" or int(soft) >= wanted, line)
        else:
            self.assertIn("hard limit", worker.stderr())


class BadInputTest(WorkerTestCase):
    def test_oversized_frame_closes_only_that_connection(self):
        worker = self.start()
        with worker.connect() as bystander, worker.connect() as sock:
            sock.sendall(struct.pack(">I", 16 * 1024 * 1024 + 1))
            assert_closed(self, sock)
            self.assertIsNone(worker.proc.poll())
            self.assertEqual(self.call(bystander, b"still here")[2], b"still here")
        with worker.connect() as fresh:
            self.assertEqual(self.call(fresh, b"new")[2], b"new")
        self.assertIn("exceeds --max-frame-bytes", worker.stderr())

    def test_garbage_envelopes_close_only_that_connection(self):
        worker = self.start()
        garbage = [
            b"Zgarbage!",
            b"E" + struct.pack(">I", 1000) + b"{}",
            b"E" + struct.pack(">I", 4) + b"null",
            b"E\x00",
            b"",
        ]
        with worker.connect() as bystander:
            for payload in garbage:
                with self.subTest(payload=payload):
                    with worker.connect() as sock:
                        sock.sendall(frame(payload))
                        assert_closed(self, sock)
                    self.assertEqual(self.call(bystander, b"ok")[2], b"ok")
        self.assertIsNone(worker.proc.poll())
        self.assertIn("WARNING", worker.stderr())

    def test_host_closing_mid_frame(self):
        worker = self.start()
        with worker.connect() as sock:
            sock.sendall(struct.pack(">I", 100) + b"E\x00")
        with worker.connect() as sock:
            self.assertEqual(self.call(sock, b"fine")[2], b"fine")


class HandshakeUnitTest(unittest.TestCase):
    def test_answer_is_hmac_sha256_over_context_and_nonce(self):
        # RFC 4231's key and message with the context in front; the Rust host's
        # tests check the same value (src/net/secret.rs).
        self.assertEqual(
            protocol.expected_answer(b"Jefe", b"what do ya want for nothing?").hex(),
            "8ac176022ead97dac62bba1c55b1492fef11f741d17946310396e43af9834816")

    def test_check_answer_accepts_only_the_exact_answer(self):
        secret, nonce = os.urandom(32), os.urandom(protocol.NONCE_LEN)
        good = b"A\x01" + protocol.expected_answer(secret, nonce)
        self.assertTrue(protocol.check_answer(secret, nonce, good))
        flipped = good[:-1] + bytes((good[-1] ^ 1,))
        bad = {
            "flipped bit": flipped,
            "other secret": b"A\x01" + protocol.expected_answer(os.urandom(32), nonce),
            "other nonce (a replay)": b"A\x01" + protocol.expected_answer(secret, os.urandom(32)),
            "version 2": b"A\x02" + good[2:],
            "kind": b"E\x01" + good[2:],
            "short": good[:-1],
            "long": good + b"\x00",
            "empty": b"",
        }
        for name, payload in bad.items():
            with self.subTest(name):
                self.assertFalse(protocol.check_answer(secret, nonce, payload))

    def test_fuzzed_answers_never_raise_and_never_pass(self):
        rng = __import__("random").Random(15)
        secret, nonce = os.urandom(32), os.urandom(protocol.NONCE_LEN)
        good = b"A\x01" + protocol.expected_answer(secret, nonce)
        for _ in range(5000):
            payload = bytearray(good[:rng.randrange(len(good) + 2)])
            for _ in range(rng.randrange(1, 4)):
                if payload:
                    payload[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
            if bytes(payload) != good:
                self.assertFalse(protocol.check_answer(secret, nonce, bytes(payload)))

    def test_parse_secret(self):
        self.assertEqual(protocol.parse_secret("ab" * 16), b"\xab" * 16)
        for bad in ("", "ab" * 15, "ab" * 65, "zz" * 16, "abc" * 11):
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    protocol.parse_secret(bad)


class HandshakeTest(WorkerTestCase):
    """Local processes without the secret: none learns the pid or runs an event."""

    def start_recording(self, **kwargs):
        return self.start("probe:record", **kwargs)

    def ran(self):
        try:
            with open(os.path.join(self.tmpdir, "ran.log"), "rb") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def assert_only_challenge_then_closed(self, sock, send):
        """The worker sends the challenge and nothing more, whatever
        `send(sock, nonce)` does."""
        (length,) = struct.unpack(">I", recv_exactly(sock, 4))
        self.assertEqual(length, 2 + protocol.NONCE_LEN)
        challenge = recv_exactly(sock, length)
        self.assertEqual(challenge[:2], b"C\x01")
        send(sock, challenge[2:])
        data = b""
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        self.assertEqual(data, b"", "the worker sent more than its challenge")

    def check_foreign_clients(self, worker):
        event = frame(envelope(b"E", {}, b"foreign"))
        wrong = os.urandom(32)
        clients = {
            "no secret, sends an event": lambda sock, nonce: sock.sendall(event),
            "no secret, sends a ready frame": lambda sock, nonce: sock.sendall(
                frame(envelope(b"R", {"pid": 1, "worker_id": 0}))),
            "wrong secret": lambda sock, nonce: sock.sendall(
                frame(b"A\x01" + protocol.expected_answer(wrong, nonce)) + event),
            "answer announcing 1 GiB": lambda sock, nonce: sock.sendall(
                struct.pack(">I", 1 << 30)),
        }
        with worker.connect() as bystander:
            for name, send in clients.items():
                with self.subTest(name):
                    with worker.connect_raw() as sock:
                        self.assert_only_challenge_then_closed(sock, send)
                    self.assertEqual(self.call(bystander, b"bystander")[2], b"bystander")
        self.assertEqual(self.ran(), [b"bystander"] * len(clients))
        self.assertIsNone(worker.proc.poll())

    def test_foreign_clients_over_unix_get_no_pid_and_run_nothing(self):
        self.check_foreign_clients(self.start_recording())

    def test_foreign_clients_over_tcp_get_no_pid_and_run_nothing(self):
        self.check_foreign_clients(self.start_recording(tcp=True))

    def test_a_replayed_answer_is_refused(self):
        worker = self.start_recording()
        # Record a genuine answer on one connection...
        with worker.connect_raw() as sock:
            nonce = handshake(sock, worker.secret)
            self.assertEqual(recv_envelope(sock)[0], b"R")
        answer = b"A\x01" + protocol.expected_answer(worker.secret, nonce)
        # ...and replay it on another, whose nonce is a fresh one.
        with worker.connect_raw() as sock:
            self.assert_only_challenge_then_closed(
                sock, lambda s, _nonce: s.sendall(
                    frame(answer) + frame(envelope(b"E", {}, b"replayed"))))
        self.assertEqual(self.ran(), [])

    def test_a_silent_client_is_closed_after_the_deadline(self):
        worker = self.start_recording(extra=["--handshake-timeout", "0.3"])
        with worker.connect_raw() as silent:
            started = time.monotonic()
            self.assert_only_challenge_then_closed(silent, lambda sock, nonce: None)
            waited = time.monotonic() - started
        self.assertGreaterEqual(waited, 0.25)
        self.assertLess(waited, IO_TIMEOUT - 1)
        with worker.connect() as sock:
            self.assertEqual(self.call(sock, b"after")[2], b"after")
        self.assertIn("no handshake answer within", worker.stderr())

    def test_connections_beyond_the_cap_are_refused_and_silent_ones_hold_no_place(self):
        # --connections 2: 2 + 4 places for the host, the rest refused.
        worker = self.start_recording(extra=["--connections", "2", "--handshake-timeout", "0.3"])
        capacity = 2 + config.PROBE_CONNECTIONS
        # Silent clients first: once closed at their deadline they hold nothing.
        silent = [worker.connect_raw() for _ in range(capacity)]
        for sock in silent:
            self.assert_only_challenge_then_closed(sock, lambda s, nonce: None)
            sock.close()
        served = [worker.connect() for _ in range(capacity)]
        try:
            extra = worker.connect_raw()
            with extra:
                # Refused before the handshake: not even a challenge.
                assert_closed(self, extra)
            for i, sock in enumerate(served):
                self.assertEqual(self.call(sock, b"%d" % i)[2], b"%d" % i)
        finally:
            for sock in served:
                sock.close()
        self.assertIn("refusing connection", worker.stderr())
        # Places come back once connections close.
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            try:
                with worker.connect() as sock:
                    self.assertEqual(self.call(sock, b"again")[2], b"again")
                break
            except (AssertionError, EOFError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def test_a_connection_the_host_gave_up_on_frees_its_place_while_its_handler_runs(self):
        # The host closes the connection of an event past its timeout and
        # connects again at once; the handler is still sleeping then.
        worker = self.start("sleepy:handler", extra=["--connections", "2"])
        capacity = 2 + config.PROBE_CONNECTIONS
        abandoned = [worker.connect() for _ in range(capacity)]
        for sock in abandoned:
            sock.sendall(frame(envelope(b"E", {}, b"5")))
        time.sleep(0.2)
        for sock in abandoned:
            sock.close()
        time.sleep(0.2)
        fresh = [worker.connect() for _ in range(capacity)]
        try:
            for i, sock in enumerate(fresh):
                self.assertEqual(self.call(sock, b"0")[2], b"0", "connection %d" % i)
        finally:
            for sock in fresh:
                sock.close()

    def test_the_secret_is_required_and_kept_from_the_handler(self):
        status, stderr = self.run_to_exit("echo:handler", secret=b"short")
        self.assertEqual(status, 2)
        self.assertIn(config.SECRET_ENV, stderr)
        worker = self.start("probe:environment")
        with worker.connect() as sock:
            names = json.loads(self.call(sock, b"")[2])
        self.assertNotIn(config.SECRET_ENV, names)
        self.assertIn("PATH", names)

    def test_without_a_secret_the_worker_refuses_to_start(self):
        env = worker_env({k: v for k, v in os.environ.items() if k != config.SECRET_ENV})
        proc = subprocess.run(
            worker_command("--handler", "echo:handler", "--unix",
                           os.path.join(self.tmpdir, "x.sock"), "--worker-id", "0",
                           "--handler-path", EXAMPLES),
            env=env, capture_output=True, timeout=START_TIMEOUT)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b"--no-auth", proc.stderr)

    def test_no_auth_serves_without_a_handshake(self):
        worker = self.start(extra=["--no-auth"])
        with worker.connect_raw() as sock:
            kind, meta, _ = recv_envelope(sock)
            self.assertEqual((kind, meta["pid"]), (b"R", worker.proc.pid))
            self.assertEqual(self.call(sock, b"open")[2], b"open")


class ConcurrencyAndDrainTest(WorkerTestCase):
    def test_200_concurrent_connections(self):
        worker = self.start("sleepy:handler", extra=["--connections", "200"])
        socks = []
        try:
            for _ in range(200):
                socks.append(worker.connect())  # each reads its R frame
            started = time.monotonic()
            for i, sock in enumerate(socks):
                sock.sendall(frame(envelope(b"E", {}, b"0.3%03d" % i)))
            for i, sock in enumerate(socks):
                self.assertEqual(recv_envelope(sock)[:3:2], (b"O", b"0.3%03d" % i))
            elapsed = time.monotonic() - started
        finally:
            for sock in socks:
                sock.close()
        # 200 sleeps of ~0.3 s overlapped: far below the 60 s they would take in turn.
        self.assertLess(elapsed, 5.0)

    def test_sigterm_drains_in_flight_event(self):
        worker = self.start("sleepy:handler")
        with worker.connect() as busy, worker.connect() as idle:
            busy.sendall(frame(envelope(b"E", {}, b"0.7")))
            time.sleep(0.2)  # let the worker receive the event
            worker.proc.send_signal(signal.SIGTERM)
            assert_closed(self, idle)  # idle connections are closed right away
            self.assertIsNone(worker.proc.poll())
            with self.assertRaises(OSError):  # no new connections
                worker.connect(read_ready=False).close()
            self.assertEqual(recv_envelope(busy)[:3:2], (b"O", b"0.7"))
            assert_closed(self, busy)
        self.assertEqual(worker.wait(), 0)
        stderr = worker.stderr()
        self.assertIn("INFO async_pool_worker: worker 7: SIGTERM received, draining", stderr)
        self.assertIn("INFO async_pool_worker: worker 7: drained", stderr)
        self.assertFalse(os.path.exists(worker.path))

    def test_every_stderr_line_starts_with_its_level(self):
        # The host logs each line at that level (src/process/output.rs).
        worker = self.start("faulty:handler", extra=("--handshake-timeout", "0.2"))
        with worker.connect() as sock:
            self.call(sock, b"raise")
        silent = worker.connect_raw()  # never answers: a WARNING
        self.addCleanup(silent.close)
        time.sleep(0.5)
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(worker.wait(), 0)
        lines = worker.stderr().splitlines()
        self.assertIn("WARNING async_pool_worker: worker 7: closing connection 2: "
                      "no handshake answer within 0.2s", lines)
        for line in lines:
            self.assertRegex(line, r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")

    def test_sigint_on_idle_worker_exits_0(self):
        worker = self.start()
        with worker.connect() as sock:
            worker.proc.send_signal(signal.SIGINT)
            assert_closed(self, sock)
        self.assertEqual(worker.wait(), 0)



class LifelineTest(WorkerTestCase):
    """The worker dies with its host: end of file on stdin, even mid-block."""

    def test_blocked_worker_exits_and_cleans_up_when_its_lifeline_closes(self):
        socket_dir = os.path.join(self.tmpdir, "run")
        os.mkdir(socket_dir)
        # In a process group of its own, as the launcher starts it: the worker
        # then kills its whole group.
        worker = self.start("probe:block", socket_dir=socket_dir, own_group=True,
                            env={server.LIFELINE_ENV: "stdin", server.SOCKET_DIR_ENV: socket_dir})
        sock = worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(frame(envelope(b"E", {}, b"x")))
        time.sleep(0.2)  # the handler now blocks the event loop
        started = time.monotonic()
        worker.proc.stdin.close()
        worker.wait(timeout=5)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(worker.proc.returncode, -signal.SIGKILL)
        self.assertIn("the host is gone", worker.stderr())
        self.assertFalse(os.path.exists(worker.path), "socket file left behind")
        self.assertFalse(os.path.exists(socket_dir), "empty launcher directory left behind")

    def test_the_launchers_copy_of_the_package_goes_with_its_directory(self):
        # As the crate's launcher lays it out: the package written into its
        # private directory, which is first on the module search path.
        socket_dir = os.path.join(self.tmpdir, "run")
        shutil.copytree(os.path.join(PACKAGE_ROOT, "async_pool_worker"),
                        os.path.join(socket_dir, "async_pool_worker"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        worker = self.start(socket_dir=socket_dir, own_group=True,
                            env={"PYTHONPATH": socket_dir, server.LIFELINE_ENV: "stdin",
                                 server.SOCKET_DIR_ENV: socket_dir})
        worker.proc.stdin.close()
        self.assertEqual(worker.wait(timeout=5), -signal.SIGKILL)
        self.assertFalse(os.path.exists(socket_dir), "launcher directory left behind")

    def test_a_package_outside_the_launchers_directory_is_left(self):
        socket_dir = os.path.join(self.tmpdir, "run")
        os.mkdir(socket_dir)
        worker = self.start(socket_dir=socket_dir,
                            env={server.LIFELINE_ENV: "stdin", server.SOCKET_DIR_ENV: socket_dir})
        worker.proc.stdin.close()
        self.assertEqual(worker.wait(timeout=5), 3)
        self.assertFalse(os.path.exists(socket_dir))
        self.assertTrue(os.path.isfile(os.path.join(PACKAGE_ROOT, "async_pool_worker",
                                                    "server.py")))

    def test_without_the_variable_stdin_is_not_watched(self):
        worker = self.start()
        worker.proc.stdin.close()
        time.sleep(0.3)
        self.assertIsNone(worker.proc.poll())
        sock = worker.connect()
        self.addCleanup(sock.close)
        self.assertEqual(self.call(sock, b"still here")[2], b"still here")

    def test_a_directory_with_other_files_is_left(self):
        worker = self.start(env={server.LIFELINE_ENV: "stdin", server.SOCKET_DIR_ENV: self.tmpdir})
        worker.proc.stdin.close()
        # Not a group leader here: it exits alone, with status 3.
        self.assertEqual(worker.wait(timeout=5), 3)
        self.assertFalse(os.path.exists(worker.path))
        self.assertTrue(os.path.exists(os.path.join(self.tmpdir, "probe.py")))

    def test_exits_when_its_output_pipes_died_with_the_host(self):
        # A dead host closes the read ends of the worker's stdout and stderr
        # too, so the worker's last words cannot be written: it must exit anyway.
        socket_path = os.path.join(self.tmpdir, "p.sock")
        proc = subprocess.Popen(
            worker_command("--handler", "echo:handler", "--unix", socket_path,
                           "--worker-id", "1", "--handler-path", EXAMPLES, "--no-auth"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=worker_env(**{server.LIFELINE_ENV: "stdin"}), start_new_session=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.assertIn(b"listening", proc.stdout.readline())
        proc.stdout.close()
        proc.stderr.close()
        proc.stdin.close()
        self.assertEqual(proc.wait(timeout=5), -signal.SIGKILL)
        self.assertFalse(os.path.exists(socket_path))


if __name__ == "__main__":
    unittest.main()
