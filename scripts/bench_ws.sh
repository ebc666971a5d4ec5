#!/bin/sh
# The WebSocket echo bench in one command: the gateway's --asgi against
# uvicorn (--ws websockets) and granian, all on uvloop and one interpreter,
# on the same bare ASGI echo app (gateway/benches/ws_echo_app.py). Makes its
# virtualenv under target/ (uvicorn, websockets, uvloop, granian from PyPI;
# the gateway's workers use the same interpreter), builds the gateway in
# release, and runs gateway/benches/ws_echo.rs, which prints a Markdown
# table. Run it on an otherwise idle machine: it prints the load average.
set -eu
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
venv="$target/ws-bench-venv"
stamp="$venv/.complete-uvicorn-websockets-granian"
if [ ! -f "$stamp" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'uvicorn>=0.30,<1' 'websockets>=12,<16' 'uvloop>=0.19,<1' 'granian>=1,<3'
    touch "$stamp"
fi
cargo build --release -p async-worker-pool-gateway --bin http_gateway
WS_PYTHON="$PWD/$venv/bin/python3" WS_GATEWAY="$PWD/$target/release/http_gateway" \
    exec cargo bench -p async-worker-pool-gateway --bench ws_echo
