"""A handler for the multiplexed mode's cancellation tests.

    b"sleep"  sleeps for a minute; cancelled, it counts the cancellation;
    b"count"  answers with the JSON object {"cancelled": N, "running": M}:
              the cancellations counted so far and the events running now
              (this one included).
"""

import asyncio
import json

CANCELLED = 0
RUNNING = 0


async def handler(context, event):
    global CANCELLED, RUNNING
    RUNNING += 1
    try:
        if event.body == b"sleep":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                CANCELLED += 1
                raise
            return b"slept"
        return json.dumps({"cancelled": CANCELLED, "running": RUNNING})
    finally:
        RUNNING -= 1
