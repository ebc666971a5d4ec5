#!/bin/sh
# Prints the path of a Python interpreter that has uvloop, creating a
# virtualenv for it under the cargo target directory on first use, so that the
# reference worker's tests run on uvloop's loop as well as on asyncio's. It
# also has FastAPI and Starlette, for the ASGI tests (gateway/tests/asgi.rs),
# and Flask and Django, for the WSGI tests (gateway/tests/wsgi.rs). Exits
# non-zero, saying why, when it cannot (no network, no venv module).
set -eu
cd "$(dirname "$0")/.."

venv="${CARGO_TARGET_DIR:-target}/uvloop_venv"
# Written last, so that a half-made virtualenv is made again; named after what
# it holds, so that an older one (without Flask and Django, say) is made again too.
stamp="$venv/.complete-uvloop-fastapi-flask-django"
if [ ! -f "$stamp" ] && command -v flock >/dev/null 2>&1; then
    # Test processes may ask at once: one makes it, the others wait for it.
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9
fi
if [ ! -f "$stamp" ]; then
    rm -rf "$venv"
    echo "uvloop_venv: creating $venv (pip install uvloop fastapi starlette flask django)" >&2
    if ! python3 -m venv "$venv" >&2; then
        echo "uvloop_venv: python3 -m venv failed; install the venv module (python3-venv)" >&2
        exit 1
    fi
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check 'uvloop>=0.19,<1' \
            'fastapi>=0.110,<1' 'starlette>=0.37,<2' 'flask>=3,<4' 'django>=4.2,<6' >&2; then
        echo "uvloop_venv: pip could not install uvloop, fastapi, starlette, flask and django (is PyPI reachable?)" >&2
        exit 1
    fi
    touch "$stamp"
fi
# Absolute, so that it holds whatever directory the tests run in.
(cd "$venv/bin" && echo "$(pwd)/python3")
