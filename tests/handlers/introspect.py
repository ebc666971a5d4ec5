"""Introspection handler for the host's tests: answers with what the worker holds.

The answer is a JSON object:
    "sockets"  open socket descriptors of this process (from /proc/self/fd), which
               counts every host connection plus the listener and the event
               loop's own self-pipe;
    "tasks"    asyncio tasks alive: the main task and one per event running;
    "pid"      this process's id.
"""

import asyncio
import json
import os


def _open_sockets():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + fd).startswith("socket:"):
                count += 1
        except OSError:
            pass  # the descriptor listdir itself used is already closed
    return count


async def handler(context, event):
    answer = {
        "sockets": _open_sockets(),
        "tasks": len(asyncio.all_tasks()),
        "pid": os.getpid(),
    }
    return json.dumps(answer)
