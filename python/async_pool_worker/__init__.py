"""Reference worker process for the `async-worker-pool` crate.

The worker is a server: it listens on a Unix socket or a loopback TCP address,
the host opens ``--connections`` connections to it, and each connection carries
one event at a time (or many, once the host asks to multiplex). The wire
protocol is ``docs/protocol.md``. Only the Python standard library is needed;
uvloop is used when it is installed. Run it as ``python -m async_pool_worker``.

One concern per module, imports running one way (each uses only those above it):

- ``protocol``  envelopes, frames, events, answers, the handshake's arithmetic;
- ``importer``  the one ``module:attribute`` importer for every kind of app;
- ``logs``, ``loops``  stderr lines with their level; the event loop and tasks;
- ``lifespan``  the ASGI lifespan protocol;
- ``handler``, ``asgi``, ``wsgi``  the app adapters: a Nuclio-style handler,
  an ASGI app, a WSGI app (in threads);
- ``config``    the command line, and the choice of app adapter;
- ``server``    connections, streams, multiplexing, liveness, the Worker;
- ``__main__``  the entry point.

Handlers import what they return from here: ``from async_pool_worker import
Response``. See handler.py for the handler contract.
"""

from .handler import Context
from .protocol import Event, ProtocolError, Response

__version__ = "0.1.0"

__all__ = ["Context", "Event", "ProtocolError", "Response", "__version__"]
