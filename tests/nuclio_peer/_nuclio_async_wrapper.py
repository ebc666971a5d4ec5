"""A stand-in for Nuclio's Python async wrapper, for the crate's tests.

Written for this crate from the protocol as the crate documents it (see
src/nuclio/); it is not Nuclio's wrapper. It takes the wrapper's command line,
reports wrapperInitialized on the control socket, serves each TCP connection in
an asyncio task, decodes events with msgpack and nuclio_sdk.Event, and answers
with nuclio_sdk.Response's encoding:

    s               once per connection, when its task starts
    l{json}         a log record of the handler
    m{json}         {"duration": seconds}
    r{json}         the response
    c{json} b... e  a streamed response (the handler returned a generator)

SIGUSR1 terminates (in-flight events finish first), SIGUSR2 drains (calls the
platform's drain callback), SIGCONT continues.
"""

import argparse
import asyncio
import importlib
import json
import logging
import signal
import struct
import sys
import time
import traceback

import msgpack
import nuclio_sdk
import nuclio_sdk.json_encoder
import nuclio_sdk.logger


class PacketHandler(logging.Handler):
    """Writes each log record as an `l` packet on one connection."""

    def __init__(self, writer):
        super().__init__()
        self._writer = writer
        self.setFormatter(nuclio_sdk.logger.JSONFormatter())

    def emit(self, record):
        try:
            line = "l" + self.format(record) + "\n"
            self._writer.write(line.encode())
        except Exception:  # a closing connection must not break the handler
            pass


class Wrapper:
    def __init__(self, args):
        self.args = args
        module_name, function_name = args.handler.split(":", 1)
        module = importlib.import_module(module_name)
        self.entrypoint = getattr(module, function_name)
        self.init_context = getattr(module, "init_context", None)
        self.encoder = nuclio_sdk.json_encoder.Encoder()
        self.platform = nuclio_sdk.Platform(args.platform_kind, namespace=args.namespace)
        self.shared_logger = nuclio_sdk.Logger(logging.DEBUG, "wrapper")
        self.shared_logger.set_handler(
            "stderr", sys.stderr, nuclio_sdk.logger.HumanReadableFormatter()
        )
        self.context = nuclio_sdk.Context(
            self.shared_logger,
            self.platform,
            args.worker_id,
            nuclio_sdk.TriggerInfo(args.trigger_kind, args.trigger_name),
            logger_per_async_task=True,
        )
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.connections = 0

    async def run(self):
        _, control = await asyncio.open_unix_connection(self.args.control_socket_path)
        if self.init_context is not None:
            result = self.init_context(self.context)
            if asyncio.iscoroutine(result):
                await result
        message = {"kind": "wrapperInitialized", "attributes": {"ready": "true"}}
        control.write((json.dumps(message) + "\n").encode())
        await control.drain()

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, stop.set)
        loop.add_signal_handler(signal.SIGUSR2, self.on_drain)
        loop.add_signal_handler(signal.SIGCONT, self.on_continue)

        host, port = self.args.event_socket_path.rsplit(":", 1)
        server = await asyncio.start_server(self.serve, host, int(port), backlog=1024)
        await stop.wait()
        self.shared_logger.info("terminating")
        server.close()
        if self.platform._termination_callback:
            self.platform._termination_callback()
        await self.idle.wait()
        control.close()

    def on_drain(self):
        self.shared_logger.info("draining")
        if self.platform._drain_callback:
            self.platform._drain_callback()

    def on_continue(self):
        self.shared_logger.info("continuing")

    async def serve(self, reader, writer):
        self.connections += 1
        logger = nuclio_sdk.Logger(logging.DEBUG, f"connection-{self.connections}")
        logger._logger.handlers = [PacketHandler(writer)]
        logger._logger.propagate = False
        self.context.logger = logger
        writer.write(b"s\n")
        await writer.drain()
        try:
            while True:
                try:
                    header = await reader.readexactly(4)
                except asyncio.IncompleteReadError:
                    return
                (length,) = struct.unpack(">I", header)
                payload = await reader.readexactly(length)
                self.in_flight += 1
                self.idle.clear()
                try:
                    await self.handle(payload, writer)
                finally:
                    self.in_flight -= 1
                    if self.in_flight == 0:
                        self.idle.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def handle(self, payload, writer):
        event = nuclio_sdk.Event.deserialize(
            msgpack.unpackb(payload, raw=False),
            kind=nuclio_sdk.event.EventDeserializerKinds.msgpack,
        )
        started = time.monotonic()
        streamed = False
        try:
            output = self.entrypoint(self.context, event)
            if asyncio.iscoroutine(output):
                output = await output
            streamed = (
                nuclio_sdk.Response.get_handler_output_type(output)
                != nuclio_sdk.SINGLE_RESPONSE
            )
            packets = [
                item
                async for item in nuclio_sdk.Response.from_entrypoint_output_async(
                    self.encoder.encode, output
                )
            ]
        except Exception as error:
            streamed = False
            self.context.logger.error("handler raised: %s", traceback.format_exc())
            packets = [
                {
                    "body": f"handler raised {type(error).__name__}: {error}",
                    "content_type": "text/plain",
                    "headers": {},
                    "status_code": 500,
                    "body_encoding": "text",
                }
            ]
        duration = time.monotonic() - started
        writer.write(("m" + json.dumps({"duration": duration}) + "\n").encode())
        if not streamed:
            writer.write(("r" + json.dumps(packets[0]) + "\n").encode())
        else:
            writer.write(("c" + json.dumps(packets[0]) + "\n").encode())
            for chunk in packets[1:]:
                writer.write(("b" + chunk + "\n").encode())
            writer.write(b"e\n")
        await writer.drain()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--handler", required=True)
    parser.add_argument("--event-socket-path", required=True)
    parser.add_argument("--control-socket-path", required=True)
    parser.add_argument("--platform-kind", default="local")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--worker-id", type=int, default=0)
    parser.add_argument("--trigger-kind", default="http")
    parser.add_argument("--trigger-name", default="http")
    args = parser.parse_args()
    asyncio.run(Wrapper(args).run())


if __name__ == "__main__":
    main()
