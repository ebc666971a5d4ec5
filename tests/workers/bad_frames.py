#!/usr/bin/env python3
"""A worker that breaks the wire protocol on request, for the host's tests.

It speaks docs/protocol.md well enough to join a pool: it listens on the --unix
path it is given and sends the ready frame `R` first on every connection. Then,
by event body:

    b"garbage"  answers with a frame of random bytes, which is no envelope;
    b"huge"     answers with a length prefix announcing 1 GiB, and nothing more;
    anything else is echoed back in an `O` frame.

Only the standard library and the reference worker's protocol module
(python/async_pool_worker/protocol.py), for the framing and the envelopes; its
server is deliberately not reused, so that its own checks cannot stop the
misbehaviour.
"""

import argparse
import asyncio
import os
import sys

# The repository's python/ directory, wherever the test runs this from.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                os.pardir, "python"))

from async_pool_worker.protocol import (  # noqa: E402 (needs the path above)
    HEADER_LEN, LENGTH, encode_envelope, encode_frame, encode_ready)


async def serve(reader, writer, worker_id):
    writer.write(encode_frame(encode_ready(os.getpid(), worker_id)))
    try:
        await writer.drain()
        while True:
            (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
            payload = await reader.readexactly(length)
            # Any kind is taken for an event: the multiplex request `M` too,
            # as a worker from before multiplexing would.
            (meta_len,) = LENGTH.unpack_from(payload, 1)
            body = payload[HEADER_LEN + meta_len:]
            if body == b"garbage":
                # "?" is no envelope kind, so the frame cannot pass for one by chance.
                writer.write(encode_frame(b"?" + os.urandom(63)))
            elif body == b"huge":
                writer.write(LENGTH.pack(1 << 30))
            else:
                writer.write(encode_frame(encode_envelope(b"O", {"status": 200}, body)))
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
