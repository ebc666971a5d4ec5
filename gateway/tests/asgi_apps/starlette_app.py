"""A Starlette app for tests/asgi.rs, served unchanged by the gateway's --asgi."""

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"name": "starlette state"}


async def user(request: Request):
    return JSONResponse({"user": request.path_params["user_id"],
                         "sort": request.query_params.getlist("sort"),
                         "path": request.url.path,
                         "raw_path": request.scope["raw_path"].decode(),
                         "state": request.state.name})


async def echo(request: Request):
    data = await request.json()
    return JSONResponse({"echo": data, "type": request.headers["content-type"]})


async def count(request: Request):
    async def numbers():
        for n in range(3):
            yield ("%d\n" % n).encode()
            await asyncio.sleep(0.05)
    return StreamingResponse(numbers(), media_type="text/plain")


async def fail(request: Request):
    raise KeyError("missing")


app = Starlette(lifespan=lifespan, routes=[
    Route("/users/{user_id:int}", user),
    Route("/echo", echo, methods=["POST"]),
    Route("/count", count),
    Route("/fail", fail),
    Route("/", lambda request: PlainTextResponse("starlette")),
])
