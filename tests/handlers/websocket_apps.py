"""Plain ASGI WebSocket apps (no framework) for tests/net_websocket.rs.

``app`` routes by path:

- ``/echo``: accepts (with the client's first subprotocol), echoes text and
  bytes; ``close`` makes it close with 4000 "bye"; ``flood N SIZE`` makes it
  send N binary messages of SIZE bytes as fast as its sends return; ``codes``
  answers with the disconnect code of the previous socket of this process.
- ``/deaf``: accepts and never reads again.
- ``/deny``: a denial response, 401 with a body, via websocket.http.response.
- ``/refuse``: closes before accepting.
- ``/raise``: accepts, then raises.
"""

import asyncio

# The disconnect code each finished socket saw, for ``codes``.
codes = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    assert scope["type"] == "websocket", scope["type"]
    assert (await receive())["type"] == "websocket.connect"
    path = scope["path"]
    if path == "/deny":
        assert "websocket.http.response" in scope["extensions"]
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"x-why", b"no")]})
        await send({"type": "websocket.http.response.body", "body": b"go ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"away"})
        return
    if path == "/refuse":
        await send({"type": "websocket.close", "code": 4001})
        return
    subprotocols = scope["subprotocols"]
    await send({"type": "websocket.accept",
                "subprotocol": subprotocols[0] if subprotocols else None,
                "headers": [(b"x-accepted", scope["scheme"].encode())]})
    if path == "/raise":
        raise ValueError("on purpose")
    if path == "/deaf":
        await asyncio.sleep(3600)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            codes.append(message["code"])
            return
        text = message.get("text")
        if text is None:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
        elif text == "close":
            await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
            codes.append(4000)
            return
        elif text.startswith("flood "):
            _, count, size = text.split()
            for _ in range(int(count)):
                await send({"type": "websocket.send", "bytes": b"x" * int(size)})
            await send({"type": "websocket.send", "text": "flooded"})
        elif text == "codes":
            await send({"type": "websocket.send", "text": ",".join(map(str, codes))})
        else:
            await send({"type": "websocket.send", "text": text})
