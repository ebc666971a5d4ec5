"""Trace handler for the host's tests: answers with the trace context the
worker gave it (``context.trace``) as JSON, ``null`` when there is none."""

import json


async def handler(context, event):
    return 200, {"content-type": "application/json"}, json.dumps(context.trace)
