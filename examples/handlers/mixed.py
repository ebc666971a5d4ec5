"""Soak-test handler (scripts/soak.sh): a steady mix of light, slow and
failing requests. The body picks:

    b"slow:0.5"  sleeps 0.5 s without blocking, then answers "slow"
    b"fail"      raises RuntimeError (the gateway answers 500)
    anything else is echoed back at once.
"""

import asyncio


async def handler(context, event):
    body = event.body
    if body.startswith(b"slow:"):
        await asyncio.sleep(float(body[5:].decode("ascii")))
        return b"slow"
    if body == b"fail":
        raise RuntimeError("asked to fail")
    return body
