#!/bin/sh
# Prints the path of a Python interpreter that has what the nuclio tests' peer
# wrapper imports (msgpack, nuclio-sdk), creating a virtualenv for it under the
# cargo target directory on first use. Exits non-zero, saying why, when it
# cannot (no network, no venv module); the nuclio tests then fail with that.
set -eu
cd "$(dirname "$0")/.."

venv="${CARGO_TARGET_DIR:-target}/nuclio_venv"
# Written last, so that a half-made virtualenv is made again.
stamp="$venv/.complete"
if [ ! -f "$stamp" ]; then
    rm -rf "$venv"
    echo "nuclio_venv: creating $venv (pip install msgpack nuclio-sdk)" >&2
    if ! python3 -m venv "$venv" >&2; then
        echo "nuclio_venv: python3 -m venv failed; install the venv module (python3-venv)" >&2
        exit 1
    fi
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'msgpack>=1,<2' 'nuclio-sdk>=0.6,<0.7' >&2; then
        echo "nuclio_venv: pip could not install msgpack and nuclio-sdk (is PyPI reachable?)" >&2
        exit 1
    fi
    touch "$stamp"
fi
# Absolute, so that it holds whatever directory the tests run in.
(cd "$venv/bin" && echo "$(pwd)/python3")
