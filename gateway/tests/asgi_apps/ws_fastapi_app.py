"""A FastAPI app with WebSocket routes for tests/websocket.rs, served
unchanged by the gateway's --asgi. Nothing here knows about the pool.
"""

import os
import time
from typing import Optional

from fastapi import (Cookie, Depends, FastAPI, Header, Query, WebSocket, WebSocketDisconnect,
                     WebSocketException, status)

app = FastAPI()

# (name, code) of every WebSocketDisconnect the routes saw, for /disconnects.
DISCONNECTS = []


@app.get("/disconnects")
async def disconnects():
    return DISCONNECTS


@app.get("/pid")
async def pid():
    return os.getpid()


@app.get("/block")
def block(seconds: float):
    # A sync route runs in a thread: block the event loop itself instead.
    raise RuntimeError("use /block-loop")


@app.get("/block-loop")
async def block_loop(seconds: float):
    time.sleep(seconds)  # blocks the event loop on purpose
    return "unblocked"


@app.websocket("/echo")
async def echo(websocket: WebSocket):
    offered = websocket.scope["subprotocols"]
    await websocket.accept(subprotocol=offered[0] if offered else None,
                           headers=[(b"x-served-by", str(os.getpid()).encode())])
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                DISCONNECTS.append(["echo", message.get("code")])
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect as exc:
        DISCONNECTS.append(["echo", exc.code])


class Room:
    """The members of one chat room, by name: each message goes to all."""

    def __init__(self):
        self.members = {}

    async def broadcast(self, message):
        for member in list(self.members.values()):
            try:
                await member.send_json(message)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass


ROOM = Room()


@app.websocket("/chat/{name}")
async def chat(websocket: WebSocket, name: str):
    await websocket.accept()
    ROOM.members[name] = websocket
    await ROOM.broadcast({"event": "joined", "name": name, "members": sorted(ROOM.members)})
    try:
        while True:
            data = await websocket.receive_json()
            await ROOM.broadcast({"from": name, "text": data["text"]})
    except WebSocketDisconnect as exc:
        del ROOM.members[name]
        DISCONNECTS.append([name, exc.code])
        await ROOM.broadcast({"event": "left", "name": name, "code": exc.code})


async def credentials(session: Optional[str] = Cookie(None),
                      token: Optional[str] = Query(None)):
    if session is None and token is None:
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION)
    return session or token


@app.websocket("/items/{item_id}/ws")
async def items(websocket: WebSocket, item_id: str, q: Optional[int] = None,
                x_client: Optional[str] = Header(None),
                who: str = Depends(credentials)):
    await websocket.accept()
    while True:
        text = await websocket.receive_text()
        await websocket.send_json({"item_id": item_id, "q": q, "client": x_client,
                                   "who": who, "text": text})
