"""The end-to-end bench's ASGI apps for uvicorn (scripts/bench_e2e.sh): the same
work per request as the reference worker's handlers in ``handlers.py``, and
``mixed`` for the mixed scenario.
"""

import asyncio
import time

HELLO = b"hello, world\n"
BURNT = b"burnt\n"
CPU_SECONDS = 0.05
PLAIN = [(b"content-type", b"text/plain")]
OCTETS = [(b"content-type", b"application/octet-stream")]


async def _body(receive):
    # The whole request body, as the gateway reads it before the handler runs.
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _send(send, headers, body):
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def trivial(scope, receive, send):
    await _body(receive)
    await _send(send, PLAIN, HELLO)


async def echo(scope, receive, send):
    await _send(send, OCTETS, await _body(receive))


async def sleep(scope, receive, send):
    await _body(receive)
    await asyncio.sleep(0.1)
    await _send(send, PLAIN, HELLO)


async def mixed(scope, receive, send):
    """/cpu burns CPU_SECONDS of CPU without awaiting, so that the worker's
    event loop serves nothing else meanwhile; any other path is ``trivial``."""
    await _body(receive)
    if scope["path"] != "/cpu":
        await _send(send, PLAIN, HELLO)
        return
    end = time.perf_counter() + CPU_SECONDS
    while time.perf_counter() < end:
        pass
    await _send(send, PLAIN, BURNT)
