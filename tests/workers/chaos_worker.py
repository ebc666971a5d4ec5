#!/usr/bin/env python3
"""A worker for the chaos test: it speaks docs/protocol.md, and misbehaves when
an event asks it to.

It listens on the --unix path (or --tcp address) it is given and sends the ready
frame `R` first on every connection. Every event body reads ``id=N;act=ACT``;
what the worker does depends on ACT:

    echo     answers `O` with the body unchanged;
    raise    answers `X` (a RuntimeError whose message is the body);
    hang     never answers; it waits until the host closes the connection;
    garbage  answers with a frame of random bytes, which is no envelope;
    huge     answers with a length prefix announcing 1 GiB, and nothing more;
    close    closes the connection without answering.

Every `O` answer carries the worker's pid in an ``x-pid`` header, so that the
test learns every process that served it. Only the standard library and the
reference worker's protocol module (python/async_pool_worker/protocol.py), for
the framing and the envelopes; its server is not reused, because its own checks
would stop the misbehaviour.
"""

import argparse
import asyncio
import os
import sys

# The repository's python/ directory, wherever the test runs this from.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                os.pardir, "python"))

from async_pool_worker.protocol import (  # noqa: E402 (needs the path above)
    CANCEL_KIND, CANCELLED_ENVELOPE, LENGTH, MULTIPLEX_KIND, STREAM, encode_envelope,
    encode_frame, encode_multiplex_ack, encode_ready, encode_stream_frame, parse_event)

PID = str(os.getpid())


def action(body):
    for part in body.split(b";"):
        if part.startswith(b"act="):
            return part[4:]
    return b"echo"


async def serve(reader, writer, worker_id):
    writer.write(encode_frame(encode_ready(os.getpid(), worker_id)))
    try:
        await writer.drain()
        while True:
            (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
            payload = await reader.readexactly(length)
            if payload[0] == MULTIPLEX_KIND:
                # The host asks to multiplex (docs/protocol.md, "Multiplexing").
                writer.write(encode_frame(encode_multiplex_ack()))
                await serve_streams(reader, writer)
                return
            body = parse_event(payload).body
            act = action(body)
            if act == b"echo":
                meta = {"status": 200, "headers": [["x-pid", PID]]}
                writer.write(encode_frame(encode_envelope(b"O", meta, body)))
            elif act == b"raise":
                meta = {"type": "RuntimeError", "message": body.decode("utf-8", "replace")}
                writer.write(encode_frame(encode_envelope(b"X", meta, b"Traceback: chaos\n")))
            elif act == b"hang":
                # Returns only once the host gives up on the event and closes.
                await reader.read()
                return
            elif act == b"garbage":
                # "?" is no envelope kind, so the frame cannot pass for one by chance.
                writer.write(encode_frame(b"?" + os.urandom(31)))
            elif act == b"huge":
                writer.write(LENGTH.pack(1 << 30))
            elif act == b"close":
                return
            else:
                bad = encode_envelope(b"X", {"type": "ValueError", "message": "bad act"})
                writer.write(encode_frame(bad))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the host closed the connection, as it does after a bad frame
    finally:
        writer.close()


async def serve_streams(reader, writer):
    """The same acts on a multiplexed connection: one task per event, `K`
    cancels it and is confirmed with `Q`. `garbage` spoils that stream's
    envelope only; `huge` and `close` take the whole connection down, and with
    it every event on it."""
    tasks = {}
    cancelled = set()

    def send(stream, payload):
        writer.write(encode_stream_frame(stream, payload))

    async def run(stream, body):
        try:
            act = action(body)
            if act == b"echo":
                meta = {"status": 200, "headers": [["x-pid", PID]]}
                send(stream, encode_envelope(b"O", meta, body))
            elif act == b"raise":
                meta = {"type": "RuntimeError", "message": body.decode("utf-8", "replace")}
                send(stream, encode_envelope(b"X", meta, b"Traceback: chaos\n"))
            elif act == b"hang":
                await asyncio.sleep(3600)
            elif act == b"garbage":
                send(stream, b"?" + os.urandom(31))
            elif act == b"huge":
                writer.write(LENGTH.pack(1 << 30))
            elif act == b"close":
                writer.close()
            else:
                send(stream, encode_envelope(b"X", {"type": "ValueError", "message": "bad act"}))
        finally:
            tasks.pop(stream, None)
            if stream in cancelled:
                cancelled.discard(stream)
                send(stream, CANCELLED_ENVELOPE)

    try:
        while True:
            (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
            payload = await reader.readexactly(length)
            (stream,) = STREAM.unpack_from(payload)
            if payload[STREAM.size] == CANCEL_KIND:
                if stream in tasks:
                    cancelled.add(stream)
                    tasks[stream].cancel()
                else:
                    send(stream, CANCELLED_ENVELOPE)
                continue
            body = parse_event(payload[STREAM.size:]).body
            tasks[stream] = asyncio.ensure_future(run(stream, body))
    finally:
        for task in list(tasks.values()):
            task.cancel()


async def main():
    parser = argparse.ArgumentParser()
    endpoint = parser.add_mutually_exclusive_group(required=True)
    endpoint.add_argument("--unix")
    endpoint.add_argument("--tcp")
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    backlog = max(args.connections, 128)
    handle = lambda r, w: serve(r, w, args.worker_id)  # noqa: E731
    if args.unix:
        server = await asyncio.start_unix_server(handle, path=args.unix, backlog=backlog)
    else:
        host, port = args.tcp.rsplit(":", 1)
        server = await asyncio.start_server(handle, host=host, port=int(port), backlog=backlog)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
