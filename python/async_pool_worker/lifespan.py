"""The ASGI lifespan protocol (``--lifespan auto|on|off``), driven as uvicorn
drives it.

``startup`` runs once, before the worker listens, so before it reports ready;
a failed startup (``lifespan.startup.failed``, or an exception with
``--lifespan on``) makes the worker exit with status 3 and the app's message
on stderr. With ``auto`` an app that raises before completing the startup is
taken not to speak the lifespan protocol. ``shutdown`` runs when the worker
drains, after the events in flight and the app's background work have finished.
"""

from __future__ import annotations

import asyncio
import logging
import traceback

LIFESPAN_ASGI = {"version": "3.0", "spec_version": "2.0"}
LIFESPAN_MODES = ("auto", "on", "off")

log = logging.getLogger("async_pool_worker.lifespan")


class LifespanFailure(Exception):
    """The app's lifespan startup failed; the message is the app's."""


class Lifespan:
    """One app's lifespan: ``startup()``, then ``shutdown()``; ``state`` is what
    the startup left for the requests' scopes."""

    def __init__(self, app, mode, worker_id):
        if mode not in LIFESPAN_MODES:
            raise ValueError("lifespan must be one of %s" % ", ".join(LIFESPAN_MODES))
        self.app = app
        self.mode = mode
        self.worker_id = worker_id
        self.state = {}
        self.task = None
        self.messages = None
        self.started = None
        self.stopped = None
        self.failure = None
        # False when the app does not speak the protocol (auto mode).
        self.supported = mode != "off"
        self.startup_done = False

    async def startup(self):
        """Run the startup; LifespanFailure if the app reports it failed."""
        if not self.supported:
            return
        self.messages = asyncio.Queue()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.task = asyncio.ensure_future(self._main())
        await self.messages.put({"type": "lifespan.startup"})
        await self.started.wait()
        if self.failure is not None:
            raise LifespanFailure(self.failure)

    async def shutdown(self):
        if not self.supported or self.task is None or self.task.done():
            return
        await self.messages.put({"type": "lifespan.shutdown"})
        await self.stopped.wait()
        if self.failure is not None:
            log.error("worker %d: the ASGI app's lifespan shutdown failed: %s",
                      self.worker_id, self.failure)

    async def _main(self):
        scope = {"type": "lifespan", "asgi": LIFESPAN_ASGI, "state": self.state}
        try:
            await self.app(scope, self.messages.get, self._send)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            if self.failure is not None:
                pass  # the app reported it with a `failed` message already
            elif self.mode == "auto" and not self.startup_done:
                log.info("worker %d: the ASGI app does not support the lifespan protocol "
                         "(%s: %s); going on without it",
                         self.worker_id, type(exc).__name__, exc)
                self.supported = False
            else:
                self.failure = "".join(
                    traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
        finally:
            self.started.set()
            self.stopped.set()

    async def _send(self, message):
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            self.startup_done = True
            self.started.set()
        elif kind == "lifespan.startup.failed":
            self.failure = message.get("message") or "lifespan.startup.failed"
            self.started.set()
        elif kind == "lifespan.shutdown.complete":
            self.stopped.set()
        elif kind == "lifespan.shutdown.failed":
            self.failure = message.get("message") or "lifespan.shutdown.failed"
            self.stopped.set()
        else:
            raise RuntimeError("unexpected ASGI lifespan message %r" % kind)


def summary(failure: str) -> str:
    """The last non-empty line of a lifespan failure's message: for a traceback,
    the exception and its message."""
    lines = [line for line in failure.splitlines() if line.strip()]
    return lines[-1].strip() if lines else failure
