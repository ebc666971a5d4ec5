"""The Flask hello app of the end-to-end bench's WSGI scenarios: the same
module under the gateway's --wsgi, gunicorn (gthread and sync) and granian
(--interface wsgi). The mixed scenario adds /cpu, a view that holds the GIL."""

import time

from flask import Flask

CPU_SECONDS = 0.05

app = Flask(__name__)


@app.get("/bench")
def bench():
    return "hello, world\n"


@app.get("/cpu")
def cpu():
    # Pure Python, so the GIL is held throughout: every other thread of the
    # process waits, as behind a view that renders or parses at length.
    end = time.perf_counter() + CPU_SECONDS
    while time.perf_counter() < end:
        pass
    return "burnt\n"
