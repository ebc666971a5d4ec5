"""Misbehaving handler, for testing how the host copes. The body picks the fault:

    b"raise"  raises ValueError("asked to raise")   (answered with an X frame)
    b"leak"   raises with a secret in its message, which must reach the log and
              never the client
    b"block"  time.sleep(3600): blocks the event loop, so the whole worker hangs
    b"exit"   os._exit(3): the worker process dies mid-event
    anything else is echoed back.
"""

import os
import time


async def handler(context, event):
    if event.body == b"raise":
        raise ValueError("asked to raise")
    if event.body == b"leak":
        raise ConnectionError("postgres://app:s3cr3t-pw@10.0.0.7/orders refused")
    if event.body == b"block":
        time.sleep(3600)  # deliberately synchronous
    if event.body == b"exit":
        os._exit(3)
    return event.body
