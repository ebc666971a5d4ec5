"""A stand-in for Nuclio's Python async wrapper, for the crate's tests.

Written for this crate from the protocol as the crate documents it (see
src/nuclio/ and the README's notes on Nuclio's wrapper versions); it is not
Nuclio's wrapper. It takes the wrapper's command line, reports
wrapperInitialized on the control socket, serves each TCP connection in an
asyncio task, decodes events with msgpack and nuclio_sdk.Event, and answers
with nuclio_sdk.Response's encoding:

    s               once per connection, when its task starts
    l{json}         a log record of the handler
    m{json}         {"duration": seconds}
    r{json}         the response; a list of them when the handler returned a list
    c{json} b... e  a streamed response (the handler returned a generator)

It behaves as Nuclio's real wrappers do where the crate has to cope with them:

- strings in events stay bytes unless --decode-event-strings is given;
- the m and r packets go out in separate sends on a socket without
  TCP_NODELAY, as the real wrapper's do;
- a list returned by the handler is a batch response;
- logs: by default the wrapper's own logger (the one init_context sees)
  writes `log` control messages on the control socket, and each connection's
  handler logs are `l` packets (Nuclio's newest wrapper). With
  PEER_LOGS=stdout every log record is a JSON line on stdout instead (the
  early-2025 wrapper).

and, when the environment asks for them, as particular real versions do:

- PEER_ACCEPT_INTERVAL=SECONDS: accepts one connection, then sleeps that long
  (the early-2025 wrapper: 0.2 s);
- PEER_EXIT_ON_CLOSE=1: exits with status 1 as soon as any connection is
  closed by the host, accepted or not (the early-2025 wrapper);
- PEER_IGNORE_SIGUSR1=1: SIGUSR1 only sets a flag, the wrapper keeps running
  (the newest wrapper).

Otherwise SIGUSR1 terminates (in-flight events finish first), SIGUSR2 drains
(calls the platform's drain callback), SIGCONT continues.
"""

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import socket
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


class ControlLogHandler(logging.Handler):
    """Writes each log record as a `log` control message."""

    def __init__(self, writer):
        super().__init__()
        self._writer = writer
        self._formatter = nuclio_sdk.logger.JSONFormatter()

    def emit(self, record):
        try:
            line = self._formatter.format_to_log_control_message(record) + "\n"
            self._writer.write(line.encode())
        except Exception:
            pass


class StdoutJSONHandler(logging.Handler):
    """Writes each log record as a JSON line on stdout."""

    def __init__(self):
        super().__init__()
        self.setFormatter(nuclio_sdk.logger.JSONFormatter())

    def emit(self, record):
        sys.stdout.write(self.format(record) + "\n")
        sys.stdout.flush()


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0")


class Wrapper:
    def __init__(self, args):
        self.args = args
        module_name, function_name = args.handler.split(":", 1)
        module = importlib.import_module(module_name)
        self.entrypoint = getattr(module, function_name)
        self.init_context = getattr(module, "init_context", None)
        self.encoder = nuclio_sdk.json_encoder.Encoder()
        self.platform = nuclio_sdk.Platform(args.platform_kind, namespace=args.namespace)
        self.logs_on_stdout = os.environ.get("PEER_LOGS") == "stdout"
        self.accept_interval = float(os.environ.get("PEER_ACCEPT_INTERVAL") or 0)
        self.exit_on_close = env_flag("PEER_EXIT_ON_CLOSE")
        self.ignore_sigusr1 = env_flag("PEER_IGNORE_SIGUSR1")
        self.shared_logger = nuclio_sdk.Logger(logging.DEBUG, "wrapper")
        self.shared_logger._logger.propagate = False
        self.context = nuclio_sdk.Context(
            self.shared_logger,
            self.platform,
            args.worker_id,
            nuclio_sdk.TriggerInfo(args.trigger_kind, args.trigger_name),
            logger_per_async_task=not self.logs_on_stdout,
        )
        if args.decode_event_strings:
            self.unpack_raw = False
            self.deserializer = nuclio_sdk.event.EventDeserializerKinds.msgpack
        else:
            self.unpack_raw = True
            self.deserializer = nuclio_sdk.event.EventDeserializerKinds.msgpack_raw
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.connections = 0

    async def run(self):
        _, control = await asyncio.open_unix_connection(self.args.control_socket_path)
        if self.logs_on_stdout:
            self.shared_logger._logger.handlers = [StdoutJSONHandler()]
        else:
            self.shared_logger._logger.handlers = [ControlLogHandler(control)]
        if self.init_context is not None:
            result = self.init_context(self.context)
            if asyncio.iscoroutine(result):
                await result
        message = {"kind": "wrapperInitialized", "attributes": {"ready": "true"}}
        control.write((json.dumps(message) + "\n").encode())
        await control.drain()

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        if self.ignore_sigusr1:
            loop.add_signal_handler(signal.SIGUSR1, self.on_ignored_terminate)
        else:
            loop.add_signal_handler(signal.SIGUSR1, stop.set)
        loop.add_signal_handler(signal.SIGUSR2, self.on_drain)
        loop.add_signal_handler(signal.SIGCONT, self.on_continue)

        host, port = self.args.event_socket_path.rsplit(":", 1)
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, int(port)))
        server.listen(1024)
        server.setblocking(False)
        acceptor = asyncio.ensure_future(self.accept_loop(server))
        await stop.wait()
        self.shared_logger.info("terminating")
        acceptor.cancel()
        server.close()
        if self.platform._termination_callback:
            self.platform._termination_callback()
        await self.idle.wait()
        control.close()

    async def accept_loop(self, server):
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(server)
            # The real wrapper's sockets keep Nagle's algorithm; asyncio's
            # streams would turn it off.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            reader, writer = await asyncio.open_connection(sock=client)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            asyncio.ensure_future(self.serve(reader, writer))
            if self.accept_interval:
                await asyncio.sleep(self.accept_interval)

    def on_ignored_terminate(self):
        self.shared_logger.info("SIGUSR1 received; ignoring it")

    def on_drain(self):
        self.shared_logger.info("draining")
        if self.platform._drain_callback:
            self.platform._drain_callback()

    def on_continue(self):
        self.shared_logger.info("continuing")

    async def serve(self, reader, writer):
        self.connections += 1
        if not self.logs_on_stdout:
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
                    self.closed_by_host()
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
            self.closed_by_host()
            return
        finally:
            writer.close()

    def closed_by_host(self):
        if self.exit_on_close:
            sys.stdout.flush()
            os._exit(1)

    async def handle(self, payload, writer):
        event = nuclio_sdk.Event.deserialize(
            msgpack.unpackb(payload, raw=self.unpack_raw), kind=self.deserializer
        )
        started = time.monotonic()
        streamed = False
        try:
            output = self.entrypoint(self.context, event)
            if asyncio.iscoroutine(output):
                output = await output
            if isinstance(output, list):
                packets = [
                    [
                        nuclio_sdk.Response.from_entrypoint_output(self.encoder.encode, item)
                        for item in output
                    ]
                ]
            else:
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
        # Two sends, as the real wrapper makes: with Nagle's algorithm on, the
        # second waits for the first to be acknowledged.
        writer.write(("m" + json.dumps({"duration": duration}) + "\n").encode())
        await writer.drain()
        if not streamed:
            writer.write(("r" + self.encoder.encode(packets[0]) + "\n").encode())
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
    parser.add_argument("--decode-event-strings", action="store_true")
    args = parser.parse_args()
    asyncio.run(Wrapper(args).run())


if __name__ == "__main__":
    main()
