"""``python -m async_pool_worker``: load the app, then serve until drained.

The flags are config.py's. Exit status: 0 after a drain, 1 if the endpoint
cannot be opened, 2 for a usage error or an app that cannot be loaded, 3 for
an ASGI app whose lifespan startup failed.
"""

from __future__ import annotations

import os
import sys

from .config import parse_args
from .importer import AppLoadError
from .lifespan import LifespanFailure, summary
from .logs import configure_logging, stderr
from .loops import event_loop_factory, run
from .server import LIFELINE_ENV, Worker, check_somaxconn, raise_fd_limit, watch_lifeline


def main(argv=None) -> int:
    config = parse_args(argv)
    configure_logging()
    try:
        app = config.load_app_adapter()
    except AppLoadError as exc:
        stderr("ERROR", str(exc))
        return 2
    raise_fd_limit(config.connections)
    check_somaxconn(config.connections)
    worker = Worker(config, app)
    if os.environ.get(LIFELINE_ENV) == "stdin":
        watch_lifeline(worker.host_gone)
    try:
        return run(worker.run(), event_loop_factory())
    except LifespanFailure as exc:
        failure = str(exc)
        stderr("ERROR", "the ASGI app's lifespan startup failed:\n%s" % failure)
        # Last, so that the launcher's error (which quotes the last lines) names it.
        stderr("ERROR", "worker %d not started: lifespan startup failed: %s"
               % (config.worker_id, summary(failure)))
        return 3
    except OSError as exc:
        stderr("ERROR", "cannot listen on %s: %s" % (config.endpoint, exc))
        return 1
    finally:
        worker.cleanup_socket()


if __name__ == "__main__":
    sys.exit(main())
