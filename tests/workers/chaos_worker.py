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
test learns every process that served it. Only the standard library; the
reference worker is not reused, because its own checks would stop the
misbehaviour.
"""

import argparse
import asyncio
import json
import os
import struct

LENGTH = struct.Struct(">I")
STREAM_FRAME = struct.Struct(">II")  # frame length, stream id
PID = str(os.getpid())


def envelope(kind, meta, body=b""):
    meta = json.dumps(meta).encode("utf-8")
    return kind + LENGTH.pack(len(meta)) + meta + body


def frame(payload):
    return LENGTH.pack(len(payload)) + payload


def action(body):
    for part in body.split(b";"):
        if part.startswith(b"act="):
            return part[4:]
    return b"echo"


async def serve(reader, writer, worker_id):
    writer.write(frame(envelope(b"R", {"pid": os.getpid(), "worker_id": worker_id})))
    try:
        await writer.drain()
        while True:
            (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
            payload = await reader.readexactly(length)
            if payload[:1] == b"M":
                # The host asks to multiplex (docs/protocol.md, "Multiplexing").
                writer.write(frame(envelope(b"M", {"version": 1})))
                await serve_streams(reader, writer)
                return
            (meta_len,) = LENGTH.unpack_from(payload, 1)
            body = payload[1 + LENGTH.size + meta_len:]
            act = action(body)
            if act == b"echo":
                meta = {"status": 200, "headers": [["x-pid", PID]]}
                writer.write(frame(envelope(b"O", meta, body)))
            elif act == b"raise":
                meta = {"type": "RuntimeError", "message": body.decode("utf-8", "replace")}
                writer.write(frame(envelope(b"X", meta, b"Traceback: chaos\n")))
            elif act == b"hang":
                # Returns only once the host gives up on the event and closes.
                await reader.read()
                return
            elif act == b"garbage":
                # "?" is no envelope kind, so the frame cannot pass for one by chance.
                writer.write(frame(b"?" + os.urandom(31)))
            elif act == b"huge":
                writer.write(LENGTH.pack(1 << 30))
            elif act == b"close":
                return
            else:
                writer.write(frame(envelope(b"X", {"type": "ValueError", "message": "bad act"})))
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
        writer.write(STREAM_FRAME.pack(4 + len(payload), stream) + payload)

    async def run(stream, body):
        try:
            act = action(body)
            if act == b"echo":
                send(stream, envelope(b"O", {"status": 200, "headers": [["x-pid", PID]]}, body))
            elif act == b"raise":
                meta = {"type": "RuntimeError", "message": body.decode("utf-8", "replace")}
                send(stream, envelope(b"X", meta, b"Traceback: chaos\n"))
            elif act == b"hang":
                await asyncio.sleep(3600)
            elif act == b"garbage":
                send(stream, b"?" + os.urandom(31))
            elif act == b"huge":
                writer.write(LENGTH.pack(1 << 30))
            elif act == b"close":
                writer.close()
            else:
                send(stream, envelope(b"X", {"type": "ValueError", "message": "bad act"}))
        finally:
            tasks.pop(stream, None)
            if stream in cancelled:
                cancelled.discard(stream)
                send(stream, envelope(b"Q", {}))

    try:
        while True:
            (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
            payload = await reader.readexactly(length)
            (stream,) = LENGTH.unpack_from(payload)
            kind = payload[4:5]
            if kind == b"K":
                if stream in tasks:
                    cancelled.add(stream)
                    tasks[stream].cancel()
                else:
                    send(stream, envelope(b"Q", {}))
                continue
            (meta_len,) = LENGTH.unpack_from(payload, 5)
            tasks[stream] = asyncio.ensure_future(run(stream, payload[9 + meta_len:]))
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
