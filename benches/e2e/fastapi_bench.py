"""The end-to-end bench's FastAPI apps (scripts/bench_e2e.sh): the same app is
served by the gateway's --asgi, uvicorn and granian. wrk asks for /bench; the
mixed scenario's client asks ``mixed`` for /bench and, now and then, /cpu."""

import asyncio
import time

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

trivial = FastAPI()
sleep = FastAPI()
mixed = FastAPI()

CPU_SECONDS = 0.05


@trivial.get("/bench", response_class=PlainTextResponse)
async def trivial_route():
    return "hello, world\n"


@sleep.get("/bench", response_class=PlainTextResponse)
async def sleep_route():
    await asyncio.sleep(0.1)
    return "hello, world\n"


@mixed.get("/bench", response_class=PlainTextResponse)
async def mixed_light():
    return "hello, world\n"


@mixed.get("/cpu", response_class=PlainTextResponse)
async def mixed_cpu():
    # Burns CPU without awaiting: the worker's event loop serves nothing else
    # meanwhile.
    end = time.perf_counter() + CPU_SECONDS
    while time.perf_counter() < end:
        pass
    return "burnt\n"
