"""The end-to-end bench's RSGI apps for granian's RSGI interface
(scripts/bench_e2e.py, side ``granian-rsgi``): the same work per request as
``asgi.py`` and the reference worker's handlers in ``handlers.py``.
"""

import asyncio

HELLO = b"hello, world\n"
PLAIN = [("content-type", "text/plain")]
OCTETS = [("content-type", "application/octet-stream")]


async def trivial(scope, protocol):
    await protocol()
    protocol.response_bytes(200, PLAIN, HELLO)


async def echo(scope, protocol):
    protocol.response_bytes(200, OCTETS, await protocol())


async def sleep(scope, protocol):
    await protocol()
    await asyncio.sleep(0.1)
    protocol.response_bytes(200, PLAIN, HELLO)
