"""WSGI apps (Flask, Django, ...) as an app adapter of the worker.

The worker imports this module when it is started with ``--wsgi MODULE:ATTR``
instead of ``--handler``; a handler or ASGI worker does not pay for it. Only
the standard library is needed here; the app brings its own framework and runs
unchanged.

Threads
-------
A WSGI app blocks, so it runs in threads of its own (``--wsgi-threads``, 8 by
default; config.py says why): the event loop stays free for the protocol and for the host's
liveness probes, whatever the views do. The host opens as many slots as there
are threads (the launcher derives ``--connections`` from them), so it never
sends more events than the worker can run, and late binding sends each request
to a worker with a free thread. Each response chunk is made in the thread and
handed to the loop with ``call_soon_threadsafe``; the thread may run at most
``WRITE_AHEAD`` chunks ahead of what the socket has taken, so a huge response
does not pile up in memory while a slow client reads it. An answer's only
frame (the usual ``O``) is written by the thread itself on a multiplexed
connection (server._Multiplexed says how): waking the loop for it would cost
a context switch, and the answer would wait behind the other threads for the
loop's turn at the GIL.

The environ
-----------
Built from the ``E`` event as PEP 3333 and gunicorn build it (``build_environ``):
``REQUEST_METHOD``; ``SCRIPT_NAME`` (``--root-path``, as uvicorn's: the path
the host sends is below it) and ``PATH_INFO`` (percent-decoded, as a latin-1
``str`` of the raw bytes, as PEP 3333 asks); ``QUERY_STRING`` (raw);
``CONTENT_TYPE`` and ``CONTENT_LENGTH``; ``SERVER_NAME`` and ``SERVER_PORT``
(from the Host header, else from the address the host received the request on);
``SERVER_PROTOCOL``; one ``HTTP_*`` per header, repeats joined by ``,``
(cookies by ``; ``); ``REMOTE_ADDR`` and ``REMOTE_PORT`` when the host sent the
client's address; ``wsgi.url_scheme``, ``wsgi.version`` (1, 0),
``wsgi.multithread`` True, ``wsgi.multiprocess`` True (a pool runs several
processes: a reload always runs the new one beside the old),
``wsgi.run_once`` False, ``wsgi.input`` (a file over the request body),
``wsgi.input_terminated`` True, ``wsgi.errors`` (lines go to the worker's log,
logger ``async_pool_worker.wsgi.errors``) and ``wsgi.file_wrapper``.

The event carries the whole request body (one frame, so at most
``--max-frame-bytes``): ``wsgi.input`` reads it from memory, and an upload is
not streamed to the app while it arrives.

The response
------------
``start_response`` and ``write()`` as PEP 3333 has them, ``exc_info``
included. When the host asked for streaming (``"stream": true``, which the
gateway sends with ``--wsgi``), the body goes out as the app produces it: an
``H`` frame with the head and the first chunk, ``B`` frames, then an empty
``D``. A body known to be whole at once (a list of at most one chunk, or a
first chunk that fills the ``Content-Length``) is one ``O`` frame instead. The
status line's reason phrase is not sent: the host writes the standard one.
Hop-by-hop headers (``Connection``, ``Transfer-Encoding``, ...) are dropped, as
gunicorn drops them; the host frames the body itself. The iterable's
``close()`` is always called, once it is exhausted, or after an error, or when
the host gave up, and before the exchange's last frame.

Faults
------
An exception before any of the response went out is answered with ``X``: the
host answers its client with a 500 and a fixed body, and logs the traceback.
After the ``H`` frame the exception is logged here and an ``X`` frame cuts the
stream. A thread cannot be cancelled: when the host gives up on an event (its
event timeout, or its client went away), the app sees it only as an
``OSError`` from ``write()`` or as the end of its iteration, and its thread
runs on until the view returns. Until then the host does not get the slot
back where the protocol lets the worker say so: on a multiplexed connection
the ``Q`` that confirms the cancel waits for the thread. When the host closed
the connection instead, it reuses the slot at once, so the worker adds a
thread for the one it cannot stop (at most ``--wsgi-threads`` more in all):
the next event still finds a free thread. Either way the host's pool can
replace the worker once its other requests are done
(``PoolBuilder::recycle_after_event_timeout``, which the gateway turns on with
``--wsgi``), which ends the stuck thread with its process. A host without it
should know that on a multiplexed connection the slot's reconnect waits for
the ``Q``: a view stuck longer
than the pool's ``reconnect_attempts`` × ``establish_connection_timeout`` then
has the pool restart the worker, failing the events still on it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import threading
from urllib.parse import unquote_to_bytes

from .importer import AppLoadError, load_app
from .protocol import EMPTY_META, encode_head_meta, encode_raised, pack_envelope

# Chunks a view's thread may have handed to the loop before the socket took
# them: enough to keep both busy, few enough to bound the memory of a response
# to a slow reader.
WRITE_AHEAD = 4
# The least block a wsgi.file_wrapper reads: the app's own (Django's is 4 KiB,
# Werkzeug's 8 KiB) would cost a frame per block.
FILE_BLOCK = 64 * 1024

# Response headers that concern one connection, not the response: the host
# frames the body itself (RFC 9110, 7.6.1; gunicorn drops the same).
_HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade",
))

log = logging.getLogger("async_pool_worker.wsgi")
errors_log = logging.getLogger("async_pool_worker.wsgi.errors")


class ClientDisconnected(OSError):
    """Raised by ``write()`` once the host has given up on the request."""


def load_wsgi_app(spec: str, app_paths):
    """Import ``module:attr`` (attr may be dotted) and check that it is callable."""
    target = load_app(spec, app_paths, "--wsgi", "module:attribute")
    if not callable(target):
        raise AppLoadError("--wsgi %r is a %s, not a WSGI application"
                           % (spec, type(target).__name__))
    return target


# --------------------------------------------------------------------------
# The environ
# --------------------------------------------------------------------------


class ErrorStream:
    """``wsgi.errors``: a text stream whose lines go to the worker's log."""

    def __init__(self, logger=errors_log):
        self.logger = logger
        self.partial = ""
        self.lock = threading.Lock()

    def write(self, text):
        with self.lock:
            lines = (self.partial + text).split("\n")
            self.partial = lines.pop()
        for line in lines:
            self.logger.error("%s", line)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        with self.lock:
            line, self.partial = self.partial, ""
        if line:
            self.logger.error("%s", line)


class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file in blocks and closes it with the
    response. Blocks are at least FILE_BLOCK bytes, whatever the app asks."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = max(blksize, FILE_BLOCK)
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


def _wsgi_str(text: str) -> str:
    """A str the host sent as a native WSGI string: its bytes as latin-1."""
    try:
        text.encode("latin-1")
        return text
    except UnicodeEncodeError:  # the host decoded a non-latin-1 value lossily
        return text.encode("utf-8").decode("latin-1")


def _split_host(host: str, scheme: str):
    if host.startswith("["):  # [::1]:8080
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name, port or ("443" if scheme == "https" else "80")


def build_environ(event, root_path: str = "", errors=None) -> dict:
    """The WSGI environ for an HTTP event (see the module's docstring). `event`
    is the worker's Event; its meta may carry ``scheme``, ``client``,
    ``server`` and ``http_version`` (docs/protocol.md)."""
    meta = event.meta or {}
    raw, _, query = event.path.partition("?")
    if "%" in raw or not raw.isascii():
        path_info = unquote_to_bytes(raw).decode("latin-1")
    else:
        path_info = raw
    scheme = meta.get("scheme")
    scheme = scheme if isinstance(scheme, str) else "http"
    version = meta.get("http_version")
    body = event.body
    environ = {
        "REQUEST_METHOD": event.method,
        "SCRIPT_NAME": _wsgi_str(root_path.rstrip("/")),
        "PATH_INFO": path_info,
        "QUERY_STRING": _wsgi_str(query),
        "SERVER_PROTOCOL": "HTTP/%s" % (version if isinstance(version, str) else "1.1"),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": errors if errors is not None else ErrorStream(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
    }
    host = None
    for name, value in event.headers:
        key = name.upper().replace("-", "_")
        value = _wsgi_str(value)
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        if key == "CONTENT_LENGTH":
            continue  # set from the body below: the body is whole
        if key == "HOST":
            host = value
        key = "HTTP_" + key
        if key in environ:
            value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
        environ[key] = value
    if body or any(name.lower() == "content-length" for name, _ in event.headers):
        environ["CONTENT_LENGTH"] = str(len(body))
    server = meta.get("server")
    if host:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = _split_host(host, scheme)
    elif _is_address(server):
        environ["SERVER_NAME"], environ["SERVER_PORT"] = server[0], str(server[1])
    else:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = _split_host("localhost", scheme)
    client = meta.get("client")
    if _is_address(client):
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    return environ


def _is_address(value) -> bool:
    return (type(value) is list and len(value) == 2 and type(value[0]) is str
            and type(value[1]) is int)


# --------------------------------------------------------------------------
# The threads
# --------------------------------------------------------------------------


class Threads:
    """The threads WSGI calls run on: `size`, started as calls need them, plus
    one for each call the host gave up on that still runs (at most `size`
    more), so that such a call does not hold a slot the host uses again.
    concurrent.futures' pool cannot grow like that, hence this one."""

    def __init__(self, size: int, name: str = "wsgi"):
        self.size = size
        self.name = name
        self.jobs = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.started = 0
        self.threads = 0
        self.running = 0
        self.queued = 0
        # Calls given up on and still running, counted up to `size`.
        self.abandoned = 0

    def submit(self, job) -> None:
        with self.lock:
            self.queued += 1
            self._grow()
        self.jobs.put(job)

    def give_up(self) -> bool:
        """A running call was given up on: make room for one more. False if
        `size` are counted already (the call then keeps its thread's place)."""
        with self.lock:
            if self.abandoned >= self.size:
                return False
            self.abandoned += 1
            self._grow()
            return True

    def given_up_done(self) -> None:
        """A call counted by give_up has returned."""
        with self.lock:
            self.abandoned -= 1

    def _grow(self) -> None:
        # Under the lock: a thread for each queued call no idle thread will take.
        while self.threads - self.running < self.queued \
                and self.threads < self.size + self.abandoned:
            self.threads += 1
            self.started += 1
            threading.Thread(target=self._work, name="%s-%d" % (self.name, self.started),
                             daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            with self.lock:
                self.queued -= 1
                self.running += 1
            try:
                job()
            except BaseException:  # a job reports its own errors; never lose the thread
                log.exception("a WSGI thread's job failed")
            with self.lock:
                self.running -= 1
                if self.threads > self.size + self.abandoned:
                    self.threads -= 1  # the extra thread of a call given up on
                    return


# --------------------------------------------------------------------------
# One request
# --------------------------------------------------------------------------


def _status_code(status) -> int:
    if not isinstance(status, str):
        raise TypeError("WSGI status %r is a %s, not a str such as '200 OK'"
                        % (status, type(status).__name__))
    code = status[:3]
    if len(status) < 3 or not code.isdigit() or (len(status) > 3 and status[3] != " "):
        raise ValueError("WSGI status %r does not start with a 3-digit code" % status)
    return int(code)


def _response_headers(headers) -> list:
    pairs = []
    for item in headers:
        if not isinstance(item, tuple) or len(item) != 2 \
                or not isinstance(item[0], str) or not isinstance(item[1], str):
            raise TypeError("WSGI response header %r is not a (str, str) tuple" % (item,))
        if item[0].lower() not in _HOP_BY_HOP:
            pairs.append(item)
    return pairs


def _content_length(headers):
    for name, value in headers:
        if name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _chunk_bytes(chunk) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError("a WSGI app must produce bytes, not %s" % type(chunk).__name__)


class _Exchange:
    """One event run through the app. `run` is the thread's part; the rest runs
    on the event loop, which alone touches the connection."""

    __slots__ = ("adapter", "conn", "environ", "stream", "status", "headers", "head_sent",
                 "remaining", "held", "chunks", "size", "room", "gone", "released",
                 "finished", "gave_up")

    def __init__(self, adapter, conn, environ, stream):
        self.adapter = adapter
        self.conn = conn
        self.environ = environ
        # The host takes the response in parts (H, B..., D).
        self.stream = stream
        # Thread side: the head start_response set, and what went out of the body.
        self.status = None
        self.headers = None
        self.head_sent = False
        # Body bytes the Content-Length still allows; None without one.
        self.remaining = None
        # A first chunk that fills the Content-Length: answered as one `O`.
        self.held = None
        # The body, collected for a host that did not ask for streaming.
        self.chunks = []
        self.size = 0
        # Frames the thread may hand to the loop before the socket took them;
        # made with the first frame before the last (most answers are one `O`).
        self.room = None
        # Loop side (read by the thread): the host gave up on the request.
        self.gone = False
        self.released = False
        # The thread is done with the app (close() included).
        self.finished = False
        # give_up made room for another thread in this call's place.
        self.gave_up = False

    # -- the thread ---------------------------------------------------------

    def run(self):
        """The thread's part: call the app, send its response, close it, and
        hand the last frame (or None) to the loop."""
        try:
            answer = self._call()
        except BaseException as exc:  # _call catches the app's; this is a bug of ours
            log.exception("worker %d: the WSGI exchange failed", self.adapter.worker_id)
            answer = encode_raised(exc, self.adapter.max_frame)
        self.finished = True
        if answer is not None and not self.gone and not self.head_sent:
            # Written from here, the answer costs the loop no wake-up. Not
            # after an `H`: the loop may still hold parts to write before it.
            now = getattr(self.conn, "answer_from_thread", None)
            if now is not None and now(answer, self._settled):
                return
        self.adapter.loop.call_soon_threadsafe(self._finish, answer)

    def _call(self):
        adapter = self.adapter
        if self.gone:
            return None  # given up while it waited for a thread: the app never ran
        result = None
        try:
            result = adapter.app(self.environ, self.start_response)
            return self._respond(result)
        except ClientDisconnected:
            return None
        except Exception as exc:
            if self.gone:
                log.info("worker %d: the WSGI app stopped after the host gave up: %r",
                         adapter.worker_id, exc)
                return None
            if self.head_sent:
                adapter.log_exception("mid-stream; the response is cut", exc)
            # Before the head the host logs the traceback it gets in `X`.
            return encode_raised(exc, adapter.max_frame)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    adapter.log_exception("in close() of its response", exc)

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no cycle through the traceback
        elif self.status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        code = _status_code(status)
        pairs = _response_headers(headers)
        self.status, self.headers = code, pairs
        self.remaining = _content_length(pairs)
        return self.write

    def write(self, data):
        """PEP 3333's write(): the head if not sent yet, then `data`, now."""
        if self.status is None:
            raise RuntimeError("write() called before start_response()")
        self._body(_chunk_bytes(data))

    def _respond(self, result):
        if type(result) in (list, tuple) and len(result) <= 1 and not self.head_sent \
                and not self.chunks:
            if result:
                self._body(_chunk_bytes(result[0]), whole=True)
        else:
            for chunk in result:
                if self.gone:
                    raise ClientDisconnected("the host gave up on this request")
                if chunk:
                    self._body(_chunk_bytes(chunk))
        if self.status is None:
            raise RuntimeError("the WSGI app returned without calling start_response()")
        if self.gone:
            return None
        if self.head_sent:
            return b"D" + EMPTY_META
        body = self.held if self.held is not None else b"".join(self.chunks)
        answer = self._whole(body)
        if answer is None:
            # Too large for one frame, but the host takes a stream.
            self._send_head(body)
            return b"D" + EMPTY_META
        return answer

    def _body(self, chunk, whole=False):
        """One body chunk, trimmed to the Content-Length (the rest is dropped,
        as gunicorn drops it), sent or kept."""
        if self.status is None:
            raise RuntimeError("the WSGI app produced its body before calling start_response()")
        if not chunk:
            return
        if self.remaining is not None:
            if self.remaining <= 0:
                return
            chunk = chunk[:self.remaining]
            self.remaining -= len(chunk)
            if self.remaining == 0 and not self.head_sent and not self.chunks:
                whole = True
        if not self.stream or (whole and not self.head_sent and not self.chunks):
            if whole:
                self.held = chunk
                return
            self.size += len(chunk)
            if self.size > self.adapter.max_frame:
                raise ValueError("response of more than %d bytes exceeds the maximum "
                                 "frame length %d" % (self.size, self.adapter.max_frame))
            self.chunks.append(chunk)
            return
        if self.held is not None:  # only past the Content-Length, dropped above
            return
        if not self.head_sent:
            self._send_head(chunk)
        else:
            self._send_chunks(chunk)

    def _head_meta(self) -> bytes:
        return encode_head_meta(self.status, self.headers)

    def _whole(self, body):
        """The `O` envelope for the whole body, or None if it is too large for
        a frame and the host takes a stream."""
        meta = b"{}" if self.status == 200 and not self.headers else self._head_meta()
        envelope = pack_envelope(b"O", meta, body)
        if len(envelope) <= self.adapter.max_frame:
            return envelope
        if self.stream:
            return None
        raise ValueError("response of %d bytes exceeds the maximum frame length %d"
                         % (len(envelope), self.adapter.max_frame))

    def _send_head(self, body):
        meta = self._head_meta()
        room = self.adapter.max_frame - 5 - len(meta)
        if room < 1:
            raise ValueError("the response's headers do not fit in a frame of %d bytes"
                             % self.adapter.max_frame)
        self._put(pack_envelope(b"H", meta, body[:room]))
        self.head_sent = True
        self._send_chunks(body[room:])

    def _send_chunks(self, body):
        step = self.adapter.max_frame - 7
        view = memoryview(body)
        for at in range(0, len(view), step):
            self._put(b"B" + EMPTY_META + view[at:at + step])

    def _put(self, envelope):
        """Hand one frame to the loop, once fewer than WRITE_AHEAD are on their way."""
        room = self.room
        if room is None:
            room = self.room = threading.Semaphore(WRITE_AHEAD)
        # After the room is there: _lost sets `gone` and then releases the
        # room if it sees one, so a thread that does not see `gone` here will
        # be woken from the acquire.
        if self.gone:
            raise ClientDisconnected("the host gave up on this request")
        room.acquire()
        if self.gone:
            raise ClientDisconnected("the host gave up on this request")
        self.adapter.loop.call_soon_threadsafe(self._write, envelope)

    # -- the loop -----------------------------------------------------------

    def _write(self, envelope):
        if self.released or self.gone:
            return
        if not self.conn.write_part(envelope):
            self._lost()
            return
        # The permit comes back once the socket has taken most of what is written.
        self.conn.when_writable(self.room.release)

    def _lost(self):
        """The host gave up on the request (it closed the connection, or
        cancelled the stream): the thread stops at its next chunk."""
        if self.released or self.gone:
            return
        self.gone = True
        room = self.room
        if room is not None:
            for _ in range(WRITE_AHEAD + 1):
                room.release()  # wakes a thread that waits for room
        if not self.finished:
            self.gave_up = self.adapter.threads.give_up()
            # A client that left mid-download is common; a stuck view shows as
            # a 504 on the host, and here as a thread that takes long to end.
            log.info("worker %d: the host gave up on %s %s while the WSGI app runs; a "
                     "thread cannot be stopped: it ends at the response's next chunk, or "
                     "when the view returns", self.adapter.worker_id,
                     self.environ["REQUEST_METHOD"], self.environ["PATH_INFO"])

    def _finish(self, answer):
        if not self._settled():
            return
        if answer is None or self.gone:
            # Given up: a cancelled stream's `Q` goes now, not before.
            self.conn.abandoned()
        else:
            self.conn.answered(answer)

    def _settled(self) -> bool:
        """The loop's part once the thread is done (and, if it wrote the
        answer itself, all of it); False if the exchange was released before."""
        if self.gave_up:
            self.adapter.threads.given_up_done()
        if self.released:
            return False
        self.released = True
        self.conn.on_lost = None
        return True

    def cancel(self):
        """What the server calls a task's cancel: the thread cannot be
        stopped, so this is the host giving up."""
        self._lost()


# --------------------------------------------------------------------------
# The adapter: what the worker hands events to
# --------------------------------------------------------------------------


class WsgiAdapter:
    """Runs a WSGI app for the worker: ``startup()`` before listening,
    ``start(conn, event)`` per event, ``shutdown()`` after the drain, as
    handler.HandlerAdapter does for a handler. `conn` is as
    asgi.AsgiAdapter describes it, and has ``when_writable(callback)``."""

    # The server may let a thread write its answer itself (server._Multiplexed).
    answers_from_threads = True

    def __init__(self, app, worker_id: int, max_frame: int, threads: int, root_path: str = ""):
        self.app = app
        self.worker_id = worker_id
        self.max_frame = max_frame
        self.root_path = root_path
        self.threads = Threads(threads)
        self.errors = ErrorStream()
        self.loop = None

    @classmethod
    def from_config(cls, config):
        return cls(load_wsgi_app(config.wsgi, config.handler_paths), config.worker_id,
                   config.max_frame_bytes, config.wsgi_threads, config.root_path)

    async def startup(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def shutdown(self) -> None:
        """Nothing to do: the drain has waited for every request already."""
        self.errors.flush()

    def start(self, conn, event):
        """Run the app on `event` in a thread; returns what stands for its task
        (see _Exchange.cancel), or None once answered already."""
        if not event.is_http:
            conn.answered(encode_raised(TypeError(
                "a WSGI app serves HTTP events only; this event has no method and path"),
                self.max_frame))
            return None
        environ = build_environ(event, self.root_path, self.errors)
        stream = (event.meta or {}).get("stream") is True
        exchange = _Exchange(self, conn, environ, stream)
        conn.on_lost = exchange._lost
        self.threads.submit(exchange.run)
        return exchange

    def log_exception(self, when, exc):
        log.error("worker %d: exception in the WSGI app %s", self.worker_id, when,
                  exc_info=(type(exc), exc, exc.__traceback__))
