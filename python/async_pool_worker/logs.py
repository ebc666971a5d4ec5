"""What the worker writes on stderr: one record per line with its level first
(``WARNING worker.0: message``; every line of a traceback carries it too), so
that the host's launcher can log each line at its level. No time stamp: the
host adds its own."""

from __future__ import annotations

import logging
import sys

# The name on the worker's own lines, and in its listening line.
PROG = "async_pool_worker"


class LevelFormatter(logging.Formatter):
    """Puts the level and the logger's name first on every line of a record,
    tracebacks included."""

    def format(self, record):
        text = super().format(record)
        prefix = "%s %s: " % (record.levelname, record.name)
        return "\n".join(prefix + line for line in text.split("\n"))


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LevelFormatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def stderr(level: str, message: str) -> None:
    """Write `message` to stderr as the log records are, `level` first on every
    line, without going through logging: for what is said before logging is
    set up, and after the host has gone."""
    prefix = "%s %s: " % (level, PROG)
    print("\n".join(prefix + line for line in message.split("\n")), file=sys.stderr, flush=True)


def warn(message: str) -> None:
    stderr("WARNING", message)
