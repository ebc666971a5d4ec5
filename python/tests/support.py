"""What the worker's tests share: how to start the worker as a subprocess, and
a tiny blocking client for the wire protocol.

The client is written apart from the package's protocol module on purpose: a
test that encoded with the worker's own code could not catch a mistake in it.
"""

import json
import os
import socket
import struct
import subprocess
import sys
import time

from async_pool_worker.config import SECRET_ENV
from async_pool_worker.protocol import expected_answer

# The directory that holds the package (python/ of the repository).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(os.path.dirname(PACKAGE_ROOT), "examples", "handlers")
START_TIMEOUT = 10.0
IO_TIMEOUT = 5.0


def worker_command(*args):
    """The command line of the worker, as the crate's launcher runs it."""
    return [sys.executable, "-m", "async_pool_worker", *args]


def worker_env(base=None, **extra):
    """`base` (default this process's environment) with `extra` on top, and the
    package on the module search path: the worker runs in a temporary
    directory, where `-m` would not find it otherwise. A PYTHONPATH in `extra`
    comes first, so that a test can run another copy of the package."""
    env = dict(os.environ if base is None else base)
    search = [extra.pop("PYTHONPATH", None), PACKAGE_ROOT, env.get("PYTHONPATH")]
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(path for path in search if path)
    return env


def envelope(kind, meta, body=b""):
    meta_bytes = json.dumps(meta).encode()
    return kind + struct.pack(">I", len(meta_bytes)) + meta_bytes + body


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(data), n))
        data += chunk
    return data


def recv_envelope(sock):
    """Read one frame and split it into (kind, meta, body)."""
    (length,) = struct.unpack(">I", recv_exactly(sock, 4))
    payload = recv_exactly(sock, length)
    (meta_len,) = struct.unpack(">I", payload[1:5])
    return payload[:1], json.loads(payload[5:5 + meta_len]), payload[5 + meta_len:]


def handshake(sock, secret):
    """Answer the worker's challenge with `secret`; return the nonce."""
    (length,) = struct.unpack(">I", recv_exactly(sock, 4))
    challenge = recv_exactly(sock, length)
    assert challenge[:2] == b"C\x01" and len(challenge) == 34, challenge
    nonce = challenge[2:]
    sock.sendall(frame(b"A\x01" + expected_answer(secret, nonce)))
    return nonce


def assert_closed(test, sock):
    """The worker closed this connection (EOF or reset, not a timeout)."""
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return
    test.assertEqual(data, b"", "expected the worker to close the connection")


class AppWorker:
    """The worker serving an app (`option` is ``--asgi`` or ``--wsgi``) on a
    Unix socket in `tmpdir`, with --no-auth and its stderr in a file."""

    def __init__(self, tmpdir, option, app, worker_id, extra=()):
        self.path = os.path.join(tmpdir, "w.sock")
        self.stderr_path = os.path.join(tmpdir, "stderr-%d.log" % time.monotonic_ns())
        self._stderr = open(self.stderr_path, "wb")
        env = worker_env({key: value for key, value in os.environ.items()
                          if key != SECRET_ENV})
        self.proc = subprocess.Popen(
            worker_command(option, app, "--unix", self.path, "--worker-id", str(worker_id),
                           "--no-auth", "--handler-path", tmpdir, "--max-frame-bytes", "4096",
                           *extra),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, cwd=tmpdir,
            env=env)
        self.sockets = []

    def wait_listening(self):
        line = self.proc.stdout.readline().decode()
        if not line:
            raise AssertionError("worker exited at start; stderr:\n" + self.stderr())
        return line

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        self.sockets.append(sock)
        sock.connect(self.path)
        kind, _, _ = recv_envelope(sock)
        assert kind == b"R", kind
        return sock

    def stderr(self):
        self._stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        for sock in self.sockets:
            sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(IO_TIMEOUT)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self._stderr.close()
