"""The event loop: uvloop's when it is installed, else asyncio's, and the one
way every part of the worker starts a task on it."""

from __future__ import annotations

import asyncio
import os
import sys

try:
    import uvloop  # optional: a faster event loop, used when it is installed
except ImportError:
    uvloop = None

# `asyncio` runs the worker on asyncio's own loop even when uvloop is installed.
LOOP_ENV = "ASYNC_WORKER_POOL_LOOP"


def event_loop_factory():
    """uvloop's loop when it is importable and not turned off with
    ASYNC_WORKER_POOL_LOOP=asyncio, else asyncio's own."""
    if uvloop is not None and os.environ.get(LOOP_ENV, "auto") != "asyncio":
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(coro, loop_factory):
    """asyncio.run on a loop of `loop_factory`'s."""
    if hasattr(asyncio, "Runner"):  # Python 3.11 and later
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro)
    loop = loop_factory()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def loop_name(loop) -> str:
    """`uvloop` or `asyncio`: which event loop the worker runs on."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


if sys.version_info >= (3, 12):
    def new_task(loop, coro):
        """A task running `coro` on `loop`, started eagerly: an event that does
        not wait is answered without a trip through the loop's ready queue."""
        return asyncio.Task(coro, loop=loop, eager_start=True)
else:
    def new_task(loop, coro):
        """A task running `coro` on `loop` (eager start needs Python 3.12)."""
        return loop.create_task(coro)
