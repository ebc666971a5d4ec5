"""The end-to-end bench's handlers for the reference worker (scripts/bench_e2e.sh).

Each does what the ASGI app of the same name in ``asgi.py`` does, so that the
gateway and uvicorn run the same work per request.
"""

import asyncio

HELLO = b"hello, world\n"
PLAIN = {"content-type": "text/plain"}
OCTETS = {"content-type": "application/octet-stream"}


async def trivial(context, event):
    return 200, PLAIN, HELLO


async def echo(context, event):
    return 200, OCTETS, event.body


async def sleep(context, event):
    await asyncio.sleep(0.1)
    return 200, PLAIN, HELLO
