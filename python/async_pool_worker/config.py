"""Every setting of one worker process (Config), read from its command line.

Command line
------------
::

    python3 -m async_pool_worker (--handler module:function | --asgi module:app
        [--lifespan auto|on|off] | --wsgi module:app [--wsgi-threads N])
        [--root-path PATH] [--factory] (--unix PATH | --tcp HOST:PORT) --worker-id N
        [--connections N] [--max-frame-bytes N] [--handler-path DIR ...]
        [--handshake-timeout SECONDS] [--no-auth]

with the secret in the environment variable ``ASYNC_WORKER_POOL_SECRET``.

``--handler``          the handler, as ``module:function`` (``function`` may be a
                       dotted attribute path); see handler.py for its contract.
                       The directories given with ``--handler-path`` and the
                       current directory are put at the front of ``sys.path``
                       before the module is imported.
``--asgi``             instead of a handler, an ASGI 3 app (FastAPI, Starlette, ...)
                       as ``module:attribute``, imported the same way; asgi.py
                       describes the scope, streaming, lifespan (``--lifespan``,
                       lifespan.py) and WebSocket scopes (websocket.py). A
                       failed lifespan startup exits with status 3.
``--wsgi``             instead of a handler, a WSGI app (Flask, Django, ...) as
                       ``module:attribute``, imported the same way, run in
                       threads of its own; wsgi.py describes the environ, the
                       threads and what happens to a request the host gives up on.
``--wsgi-threads N``   with --wsgi: the threads the app runs in (default 8). The
                       host should open as many connections (slots) as threads,
                       and --connections defaults to it.
``--root-path PATH``   with --asgi, the scope's ``root_path``; with --wsgi, the
                       environ's ``SCRIPT_NAME``: the prefix a proxy in front
                       stripped from the path (default empty).
``--factory``          with --asgi: ``module:attribute`` is a factory, called once
                       with no arguments for the app (uvicorn's ``--factory``).
``--unix PATH``        listen on this Unix socket path (a stale socket file there
                       is removed first).
``--tcp HOST:PORT``    listen on this TCP address instead (port 0 picks a free one;
                       the listening line shows which).
``--worker-id N``      this worker's number, given to the handler and sent in ``R``.
``--connections N``    how many connections the host will open (default 1000, or
                       the --wsgi-threads of a WSGI app). At
                       most N + 4 connections are served at once (the 4 for the
                       host's liveness probes), and at most as many may be in their
                       handshake; more are closed at once. The listen backlog is
                       the larger of N and 2048, capped by net.core.somaxconn,
                       and the RLIMIT_NOFILE soft limit is raised to
                       2 (N + 4) + 64 when the hard limit allows it.
``--max-frame-bytes N`` largest frame accepted or sent (default 16 MiB, at least 512).
``--handshake-timeout SECONDS`` how long a new connection may take to answer the
                       handshake challenge before it is closed (default 3).
``--no-auth``          serve every connection without a handshake, and run without
                       a secret. Only for a host that cannot answer the handshake:
                       any local process that reaches the endpoint can then run
                       events.

The secret
----------
The host passes a fresh secret, 32 to 128 hex digits, in
``ASYNC_WORKER_POOL_SECRET`` (never on the command line, which every user can
read). The worker removes it from its environment at start-up, so that the
handler and whatever it starts do not inherit it, and refuses to start without
it (exit status 2) unless ``--no-auth`` is given.

On every connection the worker first sends a challenge, ``C``, version byte 1 and
a fresh 32-byte nonce, and nothing else until the host answers with ``A``,
version byte 1 and HMAC-SHA256(secret, context + nonce), which is compared in
constant time. A wrong answer, a malformed one or none within the deadline closes
the connection: the peer never sees the ready frame (and with it the pid) and
never gets an event run. See ``docs/protocol.md``, "Handshake".
"""

from __future__ import annotations

import argparse
import os

from .importer import import_from_string
from .logs import PROG
from .protocol import DEFAULT_MAX_FRAME_BYTES, MIN_FRAME_BYTES, parse_secret

SECRET_ENV = "ASYNC_WORKER_POOL_SECRET"
DEFAULT_CONNECTIONS = 1000
DEFAULT_HANDSHAKE_TIMEOUT = 3.0
# Connections served beyond --connections: room for the host's liveness probes,
# each a fresh connection that completes the handshake and closes.
PROBE_CONNECTIONS = 4

# The app adapters, by the option that names the app. An import string, as
# uvicorn picks its protocols: each is imported only when chosen (a handler
# worker does not load the ASGI adapter), and the server knows none of them.
# Each has from_config(config) and serves as handler.HandlerAdapter describes.
APP_ADAPTERS = {
    "handler": "async_pool_worker.handler:HandlerAdapter",
    "asgi": "async_pool_worker.asgi:AsgiAdapter",
    "wsgi": "async_pool_worker.wsgi:WsgiAdapter",
}
# --wsgi-threads unless given (the host's DEFAULT_WSGI_THREADS says why): enough
# requests in flight to keep the GIL busy across the trip to the host and back.
# More help only views that wait (a database, an HTTP call), and each thread
# is a slot the host fills; raise it for such views, or add workers for views
# that compute.
DEFAULT_WSGI_THREADS = 8


class Config:
    """The settings of one worker process; the module's docstring documents
    the flag each one comes from."""

    def __init__(self, worker_id: int, *, unix=None, tcp=None, handler=None, asgi=None,
                 wsgi=None, wsgi_threads=DEFAULT_WSGI_THREADS, lifespan="auto", root_path="",
                 factory=False, connections=None, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES, handler_paths=(),
                 handshake_timeout=DEFAULT_HANDSHAKE_TIMEOUT, secret=None):
        if sum(app is not None for app in (handler, asgi, wsgi)) != 1:
            raise ValueError("exactly one of handler, asgi and wsgi must be given")
        if (unix is None) == (tcp is None):
            raise ValueError("exactly one of unix and tcp must be given")
        self.worker_id = worker_id
        # The endpoint: a Unix socket path, or a (host, port) pair.
        self.unix = unix
        self.tcp = tcp
        # The app: a handler's, an ASGI app's or a WSGI app's `module:attribute`.
        self.handler = handler
        self.asgi = asgi
        self.wsgi = wsgi
        self.wsgi_threads = wsgi_threads
        self.lifespan = lifespan
        self.root_path = root_path
        # With asgi: the attribute is a factory, called once for the app.
        self.factory = factory
        if connections is None:
            # One slot per thread: the host sends no more than the app can run.
            connections = wsgi_threads if wsgi is not None else DEFAULT_CONNECTIONS
        self.connections = connections
        self.max_frame_bytes = max_frame_bytes
        # Where the app's module is looked for, before the current directory.
        self.handler_paths = list(handler_paths)
        self.handshake_timeout = handshake_timeout
        # The handshake's key as bytes; None with --no-auth.
        self.secret = secret

    @property
    def interface(self) -> str:
        """The kind of app: a key of APP_ADAPTERS."""
        if self.asgi is not None:
            return "asgi"
        return "wsgi" if self.wsgi is not None else "handler"

    @property
    def capacity(self) -> int:
        """Connections served at once, and as many in their handshake."""
        return self.connections + PROBE_CONNECTIONS

    @property
    def endpoint(self) -> str:
        """Where the worker is told to listen, as the host writes it."""
        if self.unix is not None:
            return "unix:%s" % self.unix
        return "tcp:%s:%d" % self.tcp

    def load_app_adapter(self):
        """Import the app and wrap it in its adapter; AppLoadError if the app
        cannot be loaded."""
        adapter = import_from_string(APP_ADAPTERS[self.interface], "the app adapter")
        return adapter.from_config(self)


def parse_tcp_address(text: str) -> tuple:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("%r is not HOST:PORT" % text)
    return host.strip("[]"), int(port)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("%r must be positive" % text)
    return value


def _frame_limit(text: str) -> int:
    value = _positive_int(text)
    if value < MIN_FRAME_BYTES:
        raise argparse.ArgumentTypeError("%r is below the minimum of %d" % (text, MIN_FRAME_BYTES))
    if value > 0xFFFFFFFF:
        raise argparse.ArgumentTypeError("%r does not fit the 4-byte frame length" % text)
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("%r must be positive" % text)
    return value


def _take_secret(parser, no_auth: bool):
    """The secret from the environment as bytes (None with --no-auth)."""
    # Removed from the environment whatever happens, so that nothing the handler
    # starts inherits it.
    text = os.environ.pop(SECRET_ENV, None)
    if no_auth:
        return None
    if text is None:
        parser.error("the environment variable %s must hold the secret the host "
                     "answers the handshake with (or pass --no-auth)" % SECRET_ENV)
    try:
        return parse_secret(text)
    except ValueError as exc:
        parser.error("%s %s" % (SECRET_ENV, exc))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Reference worker for the async-worker-pool crate.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--handler", metavar="MODULE:FUNCTION",
                      help="the async def handler(context, event) to run")
    what.add_argument("--asgi", metavar="MODULE:ATTR",
                      help="an ASGI 3 app to run instead (FastAPI, Starlette, ...)")
    what.add_argument("--wsgi", metavar="MODULE:ATTR",
                      help="a WSGI app to run instead (Flask, Django, ...), in threads")
    parser.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto",
                        help="with --asgi: run the app's lifespan protocol (default %(default)s)")
    parser.add_argument("--wsgi-threads", type=_positive_int, metavar="N",
                        help="with --wsgi: threads the app runs in (default %d)"
                             % DEFAULT_WSGI_THREADS)
    parser.add_argument("--root-path", default="", metavar="PATH",
                        help="the ASGI root_path, or the WSGI SCRIPT_NAME (default empty)")
    parser.add_argument("--factory", action="store_true",
                        help="with --asgi: MODULE:ATTR is a factory; call it with no "
                             "arguments for the app")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="PATH", help="listen on this Unix socket")
    where.add_argument("--tcp", metavar="HOST:PORT", type=parse_tcp_address,
                       help="listen on this TCP address")
    parser.add_argument("--worker-id", required=True, type=int, metavar="N")
    parser.add_argument("--connections", type=_positive_int, metavar="N",
                        help="connections the host will open (default %d, or the WSGI "
                             "threads)" % DEFAULT_CONNECTIONS)
    parser.add_argument("--max-frame-bytes", type=_frame_limit, default=DEFAULT_MAX_FRAME_BYTES,
                        metavar="N", help="largest frame accepted or sent (default %(default)s)")
    parser.add_argument("--handler-path", action="append", default=[], metavar="DIR",
                        help="directory to search for the handler module (repeatable)")
    parser.add_argument("--handshake-timeout", type=_positive_float,
                        default=DEFAULT_HANDSHAKE_TIMEOUT, metavar="SECONDS",
                        help="close a connection that has not answered the handshake "
                             "by then (default %(default)s)")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve every connection without a handshake (insecure)")
    return parser


def parse_args(argv=None) -> Config:
    """The Config of the command line `argv` (default sys.argv[1:]); exits
    with status 2, saying why, on a usage error or an unfit secret."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.wsgi_threads is not None and args.wsgi is None:
        parser.error("--wsgi-threads is for a WSGI app (--wsgi)")
    if args.factory and args.asgi is None:
        parser.error("--factory is for an ASGI app (--asgi)")
    return Config(
        args.worker_id, unix=args.unix, tcp=args.tcp, handler=args.handler, asgi=args.asgi,
        wsgi=args.wsgi, wsgi_threads=args.wsgi_threads or DEFAULT_WSGI_THREADS,
        lifespan=args.lifespan, root_path=args.root_path, factory=args.factory,
        connections=args.connections,
        max_frame_bytes=args.max_frame_bytes, handler_paths=args.handler_path,
        handshake_timeout=args.handshake_timeout,
        secret=_take_secret(parser, args.no_auth))
