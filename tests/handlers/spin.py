"""A handler whose event can hold the worker's loop, for the worker-choice
tests: the body b"spin:0.3" computes for 0.3 s in pure Python without ever
yielding; anything else answers at once. Both answer with the worker's pid.
"""

import os
import time


async def handler(context, event):
    if event.body.startswith(b"spin:"):
        until = time.perf_counter() + float(event.body[5:].decode("ascii"))
        while time.perf_counter() < until:
            pass
    return str(os.getpid()).encode()
