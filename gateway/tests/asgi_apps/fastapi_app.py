"""A FastAPI app for tests/asgi.rs, served unchanged by the gateway's --asgi.

Every route is ordinary FastAPI; nothing here knows about the pool.
"""

import asyncio
import hashlib
import time
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

# What the tests ask about afterwards, through /notes.
NOTES = []
# Set by /release: lets /stream produce its last chunk.
RELEASE = None


@asynccontextmanager
async def lifespan(app):
    global RELEASE
    RELEASE = asyncio.Event()
    yield {"greeting": "hello from the lifespan", "started": time.time()}


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None, limit: int = 10):
    return {"item_id": item_id, "q": q, "limit": limit}


@app.post("/items")
async def create_item(item: Item):
    return {"name": item.name.upper(), "price_cents": round(item.price * 100),
            "tags": item.tags[::-1]}


@app.post("/upload")
async def upload(request: Request):
    body = await request.body()
    return {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


@app.get("/headers")
async def headers(request: Request, response: Response):
    response.headers.append("x-multi", "one")
    response.headers.append("x-multi", "two")
    return {"x-repeat": request.headers.getlist("x-repeat"),
            "scheme": request.url.scheme, "client": list(request.client or ()),
            "http_version": request.scope["http_version"]}


@app.get("/stream")
async def stream():
    async def chunks():
        yield b"first\n"
        # The last chunk is produced only once the client has the first one
        # and says so through /release: a buffered response would never end.
        await asyncio.wait_for(RELEASE.wait(), 30)
        NOTES.append("last chunk produced")
        yield b"last\n"
    RELEASE.clear()
    return StreamingResponse(chunks(), media_type="text/plain")


@app.get("/ticks")
async def ticks():
    async def forever():
        try:
            for _ in range(600):
                yield b"tick\n"
                await asyncio.sleep(0.05)
        finally:
            NOTES.append("ticks stopped")
    return StreamingResponse(forever(), media_type="text/plain")


@app.post("/release")
async def release():
    RELEASE.set()
    return {"released": True}


@app.post("/background")
async def background(tasks: BackgroundTasks):
    async def later():
        await asyncio.sleep(0.1)
        NOTES.append("background ran")
    tasks.add_task(later)
    return {"queued": True}


@app.get("/boom")
async def boom():
    raise ValueError("the route failed")


@app.get("/state")
async def state(request: Request):
    return {"greeting": request.state.greeting}


@app.get("/wait-disconnect")
async def wait_disconnect(request: Request):
    for _ in range(600):
        if await request.is_disconnected():
            NOTES.append("client disconnected")
            return {"disconnected": True}
        await asyncio.sleep(0.05)
    return {"disconnected": False}


@app.get("/block")
async def block():
    time.sleep(30)  # blocks the event loop, as a stray sync call would
    return {"late": True}


@app.get("/notes")
async def notes():
    return NOTES


@app.get("/sleep")
async def sleep():
    await asyncio.sleep(0.1)
    return {"slept": True}


@app.get("/")
async def trivial():
    return {"hello": "world"}


@asynccontextmanager
async def failing_lifespan(app):
    raise RuntimeError("database unreachable at startup")
    yield


failing_app = FastAPI(lifespan=failing_lifespan)
