"""The end-to-end bench's FastAPI apps (scripts/bench_e2e.sh): the same app is
served by the gateway's --asgi, uvicorn and granian. wrk asks for /bench."""

import asyncio

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

trivial = FastAPI()
sleep = FastAPI()


@trivial.get("/bench", response_class=PlainTextResponse)
async def trivial_route():
    return "hello, world\n"


@sleep.get("/bench", response_class=PlainTextResponse)
async def sleep_route():
    await asyncio.sleep(0.1)
    return "hello, world\n"
