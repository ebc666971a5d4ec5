"""The Nuclio-style handler (``--handler MODULE:FUNCTION``) as an app adapter.

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
    ``Response(body=b"", status=200, headers=None)``  the same, spelled out
                                                  (``from async_pool_worker import Response``).
Each is answered with an ``O`` frame.

Errors: if the handler raises an ``Exception``, the host gets an ``X`` frame whose
meta holds the exception's class name and message and whose body is the formatted
traceback; the connection stays open for the next event. Returning anything else
than the forms above is answered the same way, as a ``TypeError``. A response that
would not fit in ``--max-frame-bytes`` is answered as a ``ValueError``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

from .importer import AppLoadError, load_app
from .logs import PROG
from .loops import new_task
from .protocol import encode_raised, encode_response

log = logging.getLogger(PROG)


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


def load_handler(spec: str, handler_paths) -> object:
    """Import `module:function` and check that it is an async function;
    AppLoadError if not."""
    target = load_app(spec, handler_paths, "--handler", "module:function")
    if not _is_async_callable(target):
        raise AppLoadError(
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


class HandlerAdapter:
    """Runs a handler for the worker, one task per event.

    An app adapter offers ``startup()`` (awaited before the worker listens),
    ``start(answer, event)`` (per event; returns the task) and ``shutdown()``
    (awaited after the drain), and is made by ``from_config(config)``. See
    server.Worker for the `answer` it is handed.
    """

    def __init__(self, handler, worker_id: int, max_frame: int):
        self.handler = handler
        self.worker_id = worker_id
        self.max_frame = max_frame
        self.context = Context(logging.getLogger("worker.%d" % worker_id), worker_id)
        self.loop = None

    @classmethod
    def from_config(cls, config):
        return cls(load_handler(config.handler, config.handler_paths), config.worker_id,
                   config.max_frame_bytes)

    async def startup(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def shutdown(self) -> None:
        """Nothing to do: the drain has waited for every handler already."""

    def start(self, answer, event):
        """Run the handler on `event` in a task of its own, which answers
        through `answer` when it is done. Returns the task."""
        return new_task(self.loop or asyncio.get_running_loop(), self._serve(answer, event))

    async def _serve(self, answer, event) -> None:
        try:
            envelope = await self._answer(event)
        except BaseException:
            # Cancelled, or an exit: no answer will come, so the host must not
            # wait for one.
            answer.abandoned()
            raise
        answer.answered(envelope)

    async def _answer(self, event) -> bytes:
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
