"""Load-test handler: sleeps without blocking, then echoes the body.

The body is the number of seconds to sleep (default 0.2 when empty), e.g. b"0.5".
"""

import asyncio


async def handler(context, event):
    await asyncio.sleep(float(event.body.decode("ascii") or 0.2))
    return event.body
