"""The server: the connections the host opens, the streams of a multiplexed
one, the worker's liveness, and the Worker that runs them.

When it is listening, the worker prints one line to stdout, e.g.
``async_pool_worker: worker 0 listening on unix:/tmp/w0.sock (pid 1234, loop uvloop)``.

Framing is done by an ``asyncio.Protocol`` per connection, and each event is
handed to the app adapter (handler.py, asgi.py, wsgi.py), which runs it in a
task of its own (a thread, for WSGI) and answers through the connection, or
through the stream it came on.
SIGTERM or SIGINT drains: no new connections are accepted, events already
received run to completion and are answered, idle connections are closed at
once, and the process exits with status 0.

Dying with the host: when the environment variable ``ASYNC_WORKER_POOL_LIFELINE``
is ``stdin`` (the host's launcher sets it), stdin is a pipe the host holds open
and never writes to. A thread of its own reads it, so that even a blocked event
loop cannot keep the worker alive: at end of file the host is gone, and the
worker removes its socket file (and the launcher's directory named by
``ASYNC_WORKER_POOL_SOCKET_DIR``, with the copy of this package the launcher
wrote there, once nothing else is in it) and kills its own process group,
handler subprocesses included.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import secrets
import shutil
import signal
import stat
import threading

from .config import PROBE_CONNECTIONS
from .logs import PROG, warn
from .loops import loop_name
from .protocol import (ANSWER_LEN, CANCEL_KIND, CANCELLED_ENVELOPE, FRAME_HEAD, HEADER_LEN,
                       LENGTH, MULTIPLEX_KIND, MULTIPLEX_VERSION, NONCE_LEN, STREAM, WS_KINDS,
                       ProtocolError, check_answer, encode_challenge, encode_frame,
                       encode_multiplex_ack, encode_ready, parse_event, parse_meta)

try:
    import resource
except ImportError:  # not on every platform; the fd limit is then left alone
    resource = None

LIFELINE_ENV = "ASYNC_WORKER_POOL_LIFELINE"
SOCKET_DIR_ENV = "ASYNC_WORKER_POOL_SOCKET_DIR"
# Descriptors needed beyond one per connection: listening socket, stdio, logs,
# the event loop's self-pipe and whatever the handler opens itself.
SPARE_DESCRIPTORS = 64
# The listen backlog asked for at least: uvicorn's and gunicorn's default.
DEFAULT_BACKLOG = 2048

log = logging.getLogger(PROG)

# write(2) called without releasing the GIL, for the threads that answer
# themselves (_Multiplexed.answer_from_thread). The socket does not block, so
# the call is short; os.write would release the GIL and take it back, which
# with other threads waiting for it costs a hand-over each way.
try:
    import ctypes

    _write_holding_gil = ctypes.PyDLL(None, use_errno=True).write
    _write_holding_gil.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
    _write_holding_gil.restype = ctypes.c_ssize_t
except (ImportError, OSError, AttributeError):
    # A Python without ctypes, or no C library to call: the loop writes
    # every answer.
    _write_holding_gil = None


# --------------------------------------------------------------------------
# Connections and streams
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
                 "busy", "task", "mux", "on_lost", "paused", "on_writable", "on_frame")

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
        # The transport asked us to stop writing: its buffer is full.
        self.paused = False
        # Callbacks of when_writable waiting for the buffer to drain.
        self.on_writable = None
        # While a WebSocket exchange runs: called with (kind, envelope) for
        # each frame the host sends it.
        self.on_frame = None

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
        transport.write(LENGTH.pack(len(challenge)) + challenge)
        self.timer = asyncio.get_running_loop().call_later(
            worker.handshake_timeout, self._handshake_expired)

    def data_received(self, data):
        try:
            if self.mux is not None:
                if self.state == _SERVING:
                    self.mux.data_received(data)
            elif self.state == _SERVING:
                if self.on_frame is not None:
                    self.buffer += data
                    self._exchange_frames()
                elif self.buffer:
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

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self._writable()

    def _writable(self):
        waiting, self.on_writable = self.on_writable, None
        for callback in waiting or ():
            callback()

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
        if len(buffer) < LENGTH.size:
            return
        (length,) = LENGTH.unpack_from(buffer)
        if length != ANSWER_LEN:
            # Not an answer; refused without reading what it announces.
            answer = b""
        elif len(buffer) < LENGTH.size + length:
            return
        else:
            answer = bytes(buffer[LENGTH.size:LENGTH.size + length])
            del buffer[:LENGTH.size + length]
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
        if size < LENGTH.size:
            if not buffered:
                self.buffer += data
            return
        (length,) = LENGTH.unpack_from(data)
        if length > self.worker.max_frame:
            # Refuse before reading: the payload is never buffered.
            raise ProtocolError("frame of %d bytes exceeds --max-frame-bytes %d"
                                % (length, self.worker.max_frame))
        self.busy = True
        end = LENGTH.size + length
        if size < end:
            if not buffered:
                self.buffer += data
            return
        if data[LENGTH.size] in WS_KINDS:
            # A WebSocket frame that crossed the end of its exchange: the
            # host sent it before it read the answer. Skipped.
            self.busy = False
            rest = bytes(memoryview(data)[end:])
            if buffered:
                del data[:]
            if rest:
                self.data_received(rest)
            return
        if data[LENGTH.size] == MULTIPLEX_KIND:
            rest = bytes(memoryview(data)[end:])
            self._start_multiplexing(bytes(memoryview(data)[LENGTH.size:end]))
            if buffered:
                del data[:]
            self.mux.data_received(rest)
            return
        if buffered:
            event = parse_event(bytes(memoryview(data)[LENGTH.size:end]))
            del data[:end]
        else:
            event = parse_event(memoryview(data)[LENGTH.size:end])
            if size > end:
                # The next event came early; it waits for this one's answer.
                self.buffer += memoryview(data)[end:]
        # Set before the task starts: an eager task may answer (and clear it)
        # before start returns.
        self.task = _STARTING
        task = self.worker.app.start(self, event)
        if self.task is _STARTING:
            self.task = task
        if self.on_frame is not None and self.buffer:
            # Frames of the WebSocket exchange that came with its event.
            self._exchange_frames()

    def _exchange_frames(self):
        """Hand the complete frames in the buffer to the WebSocket exchange
        that runs on this connection, while it runs."""
        buffer = self.buffer
        while self.on_frame is not None and len(buffer) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buffer)
            if length > self.worker.max_frame:
                raise ProtocolError("frame of %d bytes exceeds --max-frame-bytes %d"
                                    % (length, self.worker.max_frame))
            if length < 1:
                raise ProtocolError("an empty frame")
            end = LENGTH.size + length
            if len(buffer) < end:
                return
            envelope = bytes(buffer[LENGTH.size:end])
            del buffer[:end]
            if envelope[0] not in WS_KINDS:
                raise ProtocolError("a frame of kind %r while a WebSocket exchange runs"
                                    % envelope[0:1])
            self.on_frame(envelope[0], envelope)

    def _start_multiplexing(self, request):
        """The host's `M`: from now on every frame carries a stream id."""
        self.busy = False
        meta = parse_meta(bytes(request[HEADER_LEN:]))
        if meta.get("version") != MULTIPLEX_VERSION:
            raise ProtocolError("multiplexing version %r requested; this worker speaks %d"
                                % (meta.get("version"), MULTIPLEX_VERSION))
        self.mux = _Multiplexed(self)
        ack = encode_multiplex_ack()
        self.transport.write(LENGTH.pack(len(ack)) + ack)

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
            transport.write(LENGTH.pack(len(answer)) + answer)
        else:
            transport.writelines((LENGTH.pack(len(answer)), answer))
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
            self.transport.write(LENGTH.pack(len(envelope)) + envelope)
        else:
            self.transport.writelines((LENGTH.pack(len(envelope)), envelope))
        return True

    def when_writable(self, callback):
        """Call `callback` once the transport's buffer is below its high-water
        mark (at once if it is), or once the connection closes: lets a
        producer (the WSGI adapter's threads) keep pace with the socket."""
        if not self.paused or self.state != _SERVING:
            callback()
        elif self.on_writable is None:
            self.on_writable = [callback]
        else:
            self.on_writable.append(callback)

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
        if self.on_writable is not None:
            self._writable()
        if not self.busy:
            # A busy connection is forgotten once its handler is done.
            self.worker.forget(self)


# Above this size an answer goes out as two buffers instead of being joined.
_LARGE_BODY = 64 * 1024


class _Multiplexed:
    """The streams of a connection the host asked to multiplex.

    Every frame read is handled at once, each event in a task of its own;
    answers (and cancel confirmations) are queued and written together once
    per loop iteration, so a read of many events costs one write back.

    An app adapter whose events run in threads (wsgi.py) may have a thread
    write an event's last frame itself (``answer_from_thread``) instead of
    waking the loop to write it: each wake costs a context switch and a
    hand-over of the GIL, and the answer would wait for the loop's turn at
    the GIL behind the app's other threads. The thread writes everything
    queued, its frame last, through a duplicate of the socket's descriptor
    (valid until ``lost`` closes it), and only while the transport holds
    nothing back; ``write_lock`` orders it with the loop's writes, so
    frames never interleave and what the socket does not take goes out
    through the loop, in order. The loop settles the event's bookkeeping
    (``settle``) before it handles the next frame it reads, so the host,
    which may reuse the stream as soon as the answer reaches it, always
    finds the stream free.
    """

    __slots__ = ("conn", "buffer", "tasks", "cancelling", "outgoing", "flush_pending",
                 "parts", "write_lock", "settled", "fd")

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
        # Stream id -> the _StreamAnswer its event answers through.
        self.parts = {}
        # Held by whoever writes to the socket: the loop's flush, or a thread
        # answering (answer_from_thread).
        self.write_lock = threading.Lock()
        # (stream answer, callback) of answers a thread wrote, for the loop
        # to settle.
        self.settled = collections.deque()
        # The threads' own descriptor of the socket; None if the app adapter
        # answers on the loop only, or once the connection is lost.
        self.fd = None
        sock = conn.transport.get_extra_info("socket")
        if _write_holding_gil is not None and sock is not None \
                and getattr(conn.worker.app, "answers_from_threads", False):
            try:
                self.fd = os.dup(sock.fileno())
            except OSError as exc:  # out of descriptors: the loop writes every answer
                log.warning("worker %d: connection %d: answers go through the loop: %s",
                            conn.worker.worker_id, conn.number, exc)

    def data_received(self, data):
        if self.settled:
            # Before any frame: the host may reuse a stream it got an answer on.
            self.settle()
        buffer = self.buffer
        if buffer:
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        size = len(data)
        max_frame = self.conn.worker.max_frame
        view = memoryview(data)
        at = 0
        while size - at >= LENGTH.size:
            (length,) = LENGTH.unpack_from(data, at)
            if length > max_frame:
                raise ProtocolError("frame of %d bytes exceeds --max-frame-bytes %d"
                                    % (length, max_frame))
            end = at + LENGTH.size + length
            if end > size:
                break
            self._frame(view[at + LENGTH.size:end])
            at = end
        if at < size:
            buffer += view[at:]

    def _frame(self, payload):
        if len(payload) < STREAM.size + 1:
            raise ProtocolError("multiplexed frame of %d bytes has no envelope" % len(payload))
        (stream,) = STREAM.unpack_from(payload)
        kind = payload[STREAM.size]
        if kind == CANCEL_KIND:
            self._cancel(stream)
            return
        if kind in WS_KINDS:
            part = self.parts.get(stream)
            if part is not None and part.on_frame is not None:
                part.on_frame(kind, payload[STREAM.size:])
            # Otherwise it crossed the end (or the cancel) of its exchange.
            return
        tasks = self.tasks
        if stream in tasks:
            raise ProtocolError("an event for stream %d, which has one in flight" % stream)
        event = parse_event(payload[STREAM.size:])
        self.conn.busy = True
        tasks[stream] = _STARTING
        task = self.conn.worker.app.start(self.stream_answer(stream), event)
        if tasks.get(stream) is _STARTING:
            tasks[stream] = task

    def _cancel(self, stream):
        task = self.tasks.get(stream)
        if task is None:
            # Answered already (the answer crossed the cancel frame): confirm.
            self._send(stream, CANCELLED_ENVELOPE)
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
        if isinstance(task, asyncio.Future):
            # A task cancelled before its first step never runs its body,
            # whose end is what confirms the cancel (or frees the stream):
            # without this the host would wait for a `Q` that never comes.
            task.add_done_callback(lambda ended: self._cancelled(stream, ended))

    def _cancelled(self, stream, task):
        if self.tasks.get(stream) is task:
            self.parts.pop(stream, None)
            self.done(stream, None)

    def done(self, stream, answer, sent=False):
        """The task of `stream` ended, with `answer` (an envelope) or None;
        `sent` if a thread has written the answer already."""
        tasks = self.tasks
        tasks.pop(stream, None)
        conn = self.conn
        if stream in self.cancelling:
            # After an answer a thread wrote, too: the host waits for the `Q`.
            self.cancelling.discard(stream)
            self._send(stream, CANCELLED_ENVELOPE)
        elif answer is not None:
            self._send(stream, answer)
        elif not sent and conn.state == _SERVING:
            # Ended without an answer nobody asked to cancel: the host would
            # wait for it forever, so fail the connection's events instead.
            log.warning("worker %d: an event on connection %d ended without an answer",
                        conn.worker.worker_id, conn.number)
            conn.close()
        if not tasks:
            conn.busy = False
            if conn.state == _CLOSED:
                conn.worker.forget(conn)

    def answer_from_thread(self, part, answer, on_settled) -> bool:
        """Called on an app's thread: write `answer`, the last frame of the
        event of `part`, after what is queued, and have the loop call
        `on_settled` and settle the stream when it next runs. False, writing
        nothing, if the stream or the connection is gone: the loop must
        answer then (see the class's docstring)."""
        conn = self.conn
        with self.write_lock:
            if self.fd is None or conn.state != _SERVING or part.stream in self.cancelling:
                return False
            # Before the write: the host's next frame on this stream may come
            # as soon as the write returns.
            self.settled.append((part, on_settled))
            self.outgoing.append(FRAME_HEAD.pack(len(answer) + STREAM.size, part.stream))
            self.outgoing.append(answer)
            if not conn.transport.get_write_buffer_size():
                self._write_now()
            if self.outgoing and not self.flush_pending:
                # More than the socket took: the loop writes the rest.
                self.flush_pending = True
                conn.worker.loop.call_soon_threadsafe(self._flush)
        if conn.worker.draining:
            # Nothing else may wake the loop: the drain waits for this event.
            conn.worker.loop.call_soon_threadsafe(self._settle_draining)
        return True

    def _write_now(self):
        """Under the write lock, with the transport's buffer empty: write
        what is queued straight to the socket, keeping what it did not take."""
        data = b"".join(self.outgoing)
        sent = _write_holding_gil(self.fd, data, len(data))
        if sent < 0:
            if ctypes.get_errno() in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                sent = 0
            else:
                # Broken: the loop hears it as the connection's loss, which
                # settles these events too.
                sent = len(data)
        self.outgoing = [data[sent:]] if sent < len(data) else []

    def settle(self):
        """On the loop: finish the events whose answers threads wrote."""
        settled = self.settled
        while settled:
            part, on_settled = settled.popleft()
            on_settled()
            part.settle()

    def _settle_draining(self):
        self.settle()
        conn = self.conn
        # As _flush does once it has written: with a flush pending, it will.
        if not self.tasks and not self.flush_pending and conn.state == _SERVING:
            conn.close()

    def _send(self, stream, envelope):
        if self.conn.state != _SERVING:
            return
        with self.write_lock:
            self.outgoing.append(FRAME_HEAD.pack(len(envelope) + STREAM.size, stream))
            self.outgoing.append(envelope)
            if not self.flush_pending:
                self.flush_pending = True
                self.conn.worker.loop.call_soon(self._flush)

    def _flush(self):
        conn = self.conn
        with self.write_lock:
            self.flush_pending = False
            outgoing, self.outgoing = self.outgoing, []
            if conn.state != _SERVING:
                return
            if outgoing:
                conn.transport.write(b"".join(outgoing))
        if conn.worker.draining and not self.tasks:
            conn.close()

    def lost(self):
        """The connection closed: cancel every event still running on it (an
        ASGI app hears http.disconnect first)."""
        self.settle()
        with self.write_lock:
            # No thread writes once this is None.
            fd, self.fd = self.fd, None
            if fd is not None:
                os.close(fd)
        self.outgoing = []
        parts, self.parts = self.parts, {}
        for stream, task in list(self.tasks.items()):
            part = parts.get(stream)
            if part is not None and part.on_lost is not None:
                lost, part.on_lost = part.on_lost, None
                lost()
            elif task is not _STARTING:
                self._cancel_task(stream, task)

    def stream_answer(self, stream):
        """What the app adapter answers the event of `stream` through: the
        interface of a connection (see Worker)."""
        part = _StreamAnswer(self, stream)
        self.parts[stream] = part
        return part


class _StreamAnswer:
    """One stream of a multiplexed connection, as an app adapter sees a
    connection: parts of a streamed answer go out with the next flush, and
    its last frame (or giving it up) ends the stream's event."""

    __slots__ = ("mux", "stream", "on_lost", "on_frame")

    def __init__(self, mux, stream):
        self.mux = mux
        self.stream = stream
        self.on_lost = None
        self.on_frame = None

    def answered(self, answer):
        self._end(answer)

    def answer_from_thread(self, answer, on_settled) -> bool:
        """On an app's thread: the last frame, written by the thread (see
        _Multiplexed.answer_from_thread); the loop calls `on_settled` later."""
        return self.mux.answer_from_thread(self, answer, on_settled)

    def settle(self):
        """On the loop: end the stream whose answer a thread wrote."""
        self._end(None, sent=True)

    def abandoned(self):
        self._end(None)

    def write_part(self, envelope) -> bool:
        mux = self.mux
        if mux.conn.state != _SERVING or self.stream in mux.cancelling:
            return False
        mux._send(self.stream, envelope)
        return True

    def when_writable(self, callback):
        # Every stream shares the connection's buffer.
        self.mux.conn.when_writable(callback)

    def _end(self, answer, sent=False):
        mux = self.mux
        if mux.parts.get(self.stream) is self:
            del mux.parts[self.stream]
        if self.stream in mux.tasks:
            mux.done(self.stream, answer, sent)


class Worker:
    """One worker process's server: it listens where `config` says, serves
    the host's connections, and hands each event to `app`, the app adapter.

    An app adapter (handler.HandlerAdapter, asgi.AsgiAdapter, wsgi.WsgiAdapter) has
    ``startup()``, awaited before the worker listens (the host counts the
    worker ready once it accepts); ``start(answer, event)``, called for each
    event, which returns the task that runs it; and ``shutdown()``, awaited
    after the drain. `answer` is a connection, or one stream of a multiplexed
    one, with ``answered(envelope)`` (the exchange's last frame),
    ``abandoned()`` (no answer will come: the connection, or the stream, is
    given up), ``write_part(envelope) -> bool`` (a frame before the last;
    False once it is closed), ``when_writable(callback)`` (called once the
    socket has taken most of what was written) and an ``on_lost`` attribute,
    which the adapter may set to a callable that is called once if it closes
    mid-exchange. A thread's call cannot be cancelled, so the WSGI adapter's
    "task" is an object whose ``cancel()`` only says the host gave up.

    An adapter that takes WebSocket events (asgi.AsgiAdapter) says so with a
    true ``websocket`` attribute, which the worker announces in its ready
    frame; it then sets the ``on_frame`` attribute of the exchange's `answer`
    to a callable that gets ``(kind, envelope)`` for every frame the host
    sends on it, and unsets it when the exchange ends. Its ``drain()``, if it
    has one, is called when the worker starts to drain.
    """

    def __init__(self, config, app):
        self.config = config
        self.app = app
        self.worker_id = config.worker_id
        self.max_frame = config.max_frame_bytes
        self.secret = config.secret
        self.handshake_timeout = config.handshake_timeout
        # At most this many connections served, and as many in their handshake.
        self.capacity = config.capacity
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
        self.ready_frame = encode_frame(encode_ready(
            os.getpid(), self.worker_id, websocket=getattr(app, "websocket", False)))

    # -- life cycle --------------------------------------------------------

    async def run(self) -> int:
        self.loop = loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.drained = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.begin_drain, signum)
        # Before listening: the host counts the worker ready once it accepts.
        await self.app.startup()
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
        await self.app.shutdown()
        log.info("worker %d: drained, exiting", self.worker_id)
        return 0

    async def _start_server(self):
        loop = asyncio.get_running_loop()
        config = self.config
        backlog = listen_backlog(config.connections)
        if config.unix is not None:
            remove_stale_socket(config.unix)
            server = await loop.create_unix_server(
                lambda: _Connection(self), path=config.unix, backlog=backlog)
            self.socket_inode = os.stat(config.unix).st_ino
            return server
        host, port = config.tcp
        return await loop.create_server(
            lambda: _Connection(self), host=host, port=port, backlog=backlog)

    def _endpoint(self) -> str:
        if self.config.unix is not None:
            return self.config.endpoint
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
        drain = getattr(self.app, "drain", None)
        if drain is not None:
            # Long-lived exchanges (WebSockets) end themselves: they would
            # keep the drain from ever finishing.
            drain()
        for conn in list(self.connections):
            if conn.mux is not None:
                conn.mux.settle()
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
            warn("worker %d: the host is gone (its lifeline closed); exiting" % self.worker_id)
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
        path = self.config.unix
        if path is None or self.socket_inode is None:
            return
        try:
            if os.stat(path).st_ino == self.socket_inode:
                os.unlink(path)
        except OSError:
            pass
        self.socket_inode = None


# --------------------------------------------------------------------------
# The process's resources
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
        warn("could not raise the open-file limit to %d: %s" % (target, exc))
        return
    if not hard_ok:
        warn("%d connections need %d file descriptors, but the RLIMIT_NOFILE hard "
             "limit is %d; continuing with %d (raise it with e.g. 'ulimit -Hn %d')"
             % (connections, needed, hard, hard, needed))


def somaxconn():
    """The kernel's cap on a listen backlog, or None where it cannot be read."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def listen_backlog(connections: int) -> int:
    """The larger of `connections` and DEFAULT_BACKLOG, capped by somaxconn
    (which the kernel would apply silently)."""
    wanted = max(connections, DEFAULT_BACKLOG)
    cap = somaxconn()
    return min(wanted, cap) if cap else wanted


def check_somaxconn(connections: int) -> None:
    # The kernel silently caps the listen backlog; a host connecting all at once
    # would then see some connects stall or fail.
    cap = somaxconn()
    if cap is not None and cap < connections:
        warn("net.core.somaxconn is %d, below the %d connections the host will "
             "open at once; some connects may be refused" % (cap, connections))


def remove_stale_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError("%s exists and is not a socket; refusing to remove it" % path)
    os.unlink(path)


# --------------------------------------------------------------------------
# Liveness: dying with the host
# --------------------------------------------------------------------------


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


# This package's directory, which the launcher writes into its own directory.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def remove_launcher_dir(directory) -> None:
    """Remove the launcher's private directory once it holds nothing but the
    copy of this package the launcher wrote: the last worker of a dead host to
    get here removes it. A package anywhere else (a checkout, site-packages)
    is never touched."""
    if not directory:
        return
    copy = os.path.join(directory, os.path.basename(_PACKAGE_DIR))
    try:
        if os.path.samefile(copy, _PACKAGE_DIR):
            # Other workers of the host may be removing it too.
            shutil.rmtree(copy, ignore_errors=True)
    except OSError:
        pass
    try:
        os.rmdir(directory)
    except OSError:
        pass  # other workers' sockets are still there, or it is gone already
