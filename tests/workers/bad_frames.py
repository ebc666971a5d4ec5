#!/usr/bin/env python3
"""A worker that breaks the wire protocol on request, for the host's tests.

It speaks docs/protocol.md well enough to join a pool: it listens on the --unix
path it is given and sends the ready frame `R` first on every connection. Then,
by event body:

    b"garbage"  answers with a frame of random bytes, which is no envelope;
    b"huge"     answers with a length prefix announcing 1 GiB, and nothing more;
    anything else is echoed back in an `O` frame.

Only the standard library; the reference worker is deliberately not reused, so
that its own checks cannot stop the misbehaviour.
"""

import argparse
import asyncio
import json
import os
import struct

LENGTH = struct.Struct(">I")


def envelope(kind, meta, body=b""):
    meta = json.dumps(meta).encode("utf-8")
    return kind + LENGTH.pack(len(meta)) + meta + body


def frame(payload):
    return LENGTH.pack(len(payload)) + payload


async def serve(reader, writer, worker_id):
    writer.write(frame(envelope(b"R", {"pid": os.getpid(), "worker_id": worker_id})))
    try:
        await writer.drain()
        while True:
            (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
            payload = await reader.readexactly(length)
            (meta_len,) = LENGTH.unpack_from(payload, 1)
            body = payload[1 + LENGTH.size + meta_len:]
            if body == b"garbage":
                # "?" is no envelope kind, so the frame cannot pass for one by chance.
                writer.write(frame(b"?" + os.urandom(63)))
            elif body == b"huge":
                writer.write(LENGTH.pack(1 << 30))
            else:
                writer.write(frame(envelope(b"O", {"status": 200}, body)))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the host closed the connection, as it should after a bad frame
    finally:
        writer.close()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--unix", required=True)
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    server = await asyncio.start_unix_server(
        lambda r, w: serve(r, w, args.worker_id),
        path=args.unix,
        backlog=max(args.connections, 128),
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
