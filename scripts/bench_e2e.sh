#!/bin/sh
# The end-to-end bench in one command: the HTTP gateway with the reference
# worker against uvicorn (uvloop + httptools), on the same handlers, and the
# gateway's --asgi against uvicorn and granian on the same ASGI apps (FastAPI
# and bare), and its --wsgi against gunicorn and granian on a Flask app, under
# wrk. Makes its own virtualenv under target/ (uvicorn, uvloop, httptools,
# fastapi, granian, flask, gunicorn from PyPI; the gateway's workers use the
# same interpreter, so they get uvloop too), installs Debian's wrk when it is missing, builds the gateway in
# release, and prints a Markdown table (also written to target/bench_e2e.md).
# The mixed scenarios' open-loop client (benches/mixed_load.rs) is built by
# bench_e2e.py, with cargo bench --no-run, when one of them is selected.
# See scripts/bench_e2e.py for what is measured and the E2E_* settings.
set -eu
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
venv="$target/e2e-venv"
# The stamp names what the virtualenv holds, so that an older one is made again.
stamp="$venv/.complete-fastapi-granian-flask-gunicorn"
if [ ! -f "$stamp" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'uvicorn>=0.30,<1' 'uvloop>=0.19,<1' 'httptools>=0.6,<1' \
        'fastapi>=0.110,<1' 'granian>=1,<3' 'flask>=3,<4' 'gunicorn>=22,<24'
    touch "$stamp"
fi
if ! command -v wrk >/dev/null 2>&1; then
    # Debian's package; needs root, as on the project's machines.
    apt-get update && apt-get install -y wrk
fi
cargo build --release -p async-worker-pool-gateway --bin http_gateway
exec "$venv/bin/python3" scripts/bench_e2e.py
