"""A Starlette app with WebSocket routes for tests/websocket.rs: a
WebSocketEndpoint, and a denial response (ASGI's websocket.http.response).
"""

from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute

# The close codes on_disconnect saw, for /closes.
CLOSES = []


class Counter(WebSocketEndpoint):
    encoding = "text"

    async def on_connect(self, websocket):
        await websocket.accept()
        self.count = 0

    async def on_receive(self, websocket, data):
        self.count += 1
        await websocket.send_text("%d: %s" % (self.count, data))
        if data == "bye":
            await websocket.close(code=4002, reason="counted")

    async def on_disconnect(self, websocket, close_code):
        CLOSES.append(close_code)


async def members_only(websocket):
    if websocket.query_params.get("token") != "sesame":
        await websocket.send_denial_response(
            PlainTextResponse("members only\n", status_code=401,
                              headers={"x-why": "no token"}))
        return
    await websocket.accept()
    await websocket.send_text("welcome")
    await websocket.close()


async def closes(request):
    return JSONResponse(CLOSES)


app = Starlette(routes=[
    WebSocketRoute("/count", Counter),
    WebSocketRoute("/members", members_only),
    Route("/closes", closes),
])
