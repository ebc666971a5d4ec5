#!/bin/sh
# The whole test suite: the library's Rust tests (with cargo-nextest where it
# is installed), the doc tests (nextest does not run those), the gateways'
# tests (gateway/), the reference Python worker's unit tests (on asyncio's
# loop, and on uvloop's in a virtualenv made on first use), and the `nuclio`
# feature's tests against a peer wrapper, in a virtualenv with msgpack and
# nuclio-sdk made on first use.
set -eu
cd "$(dirname "$0")/.."

if cargo nextest --version >/dev/null 2>&1; then
    run_tests="cargo nextest run --no-fail-fast"
else
    run_tests="cargo test --no-fail-fast"
fi

# The ASGI and WSGI tests (gateway/tests/asgi.rs, wsgi.rs) run FastAPI,
# Starlette, Flask and Django apps on the Python of the uvloop virtualenv,
# which has them; made once, before the tests ask.
if ASGI_TEST_PYTHON=$(sh scripts/uvloop_venv.sh); then
    export ASGI_TEST_PYTHON
else
    echo "test.sh: no virtualenv with FastAPI and Flask; gateway/tests/asgi.rs and wsgi.rs will fail" >&2
fi
# The nuclio feature's tests and the Nuclio front end's run the peer wrapper
# on a Python with msgpack and nuclio-sdk. When the virtualenv cannot be made
# (no network), NUCLIO_TEST_PYTHON stays unset and those tests fail, saying
# what is missing.
if NUCLIO_TEST_PYTHON=$(sh scripts/nuclio_venv.sh); then
    export NUCLIO_TEST_PYTHON
else
    echo "test.sh: no Python with msgpack and nuclio-sdk; the nuclio tests will fail" >&2
fi

# The library, with its default features.
$run_tests --all-targets
cargo test --doc
# The tower feature: PoolService with tower's middleware, and the axum example's core.
$run_tests --features tower --test tower_service --test axum_tower --test trace_context
cargo test --features tower --doc PoolService
# The gateways: both binaries, their unit tests and their end-to-end tests.
$run_tests -p async-worker-pool-gateway
# The soak test's short version: 2 minutes of mixed load on the gateway with
# a worker killed each minute; fails on a lost request or on growth.
# `sh scripts/soak.sh` alone runs the 30-minute one.
SOAK_GATEWAY=${CARGO_TARGET_DIR:-target}/debug/http_gateway sh scripts/soak.sh 2m
# The fault suite and the real-worker tests again, in the socket transport's
# multiplexed mode (two physical connections per worker).
ASYNC_WORKER_POOL_TEST_MULTIPLEX=2 $run_tests --test process_worker_faults --test process_chaos \
    --test net_security --test process_python_workers --test process_worker_liveness \
    --test process_worker_ops
# The gateway multiplexes by default; its ASGI and WSGI tests again with one
# connection per slot (a WSGI view the host gives up on is a closed
# connection there, not a cancelled stream).
GATEWAY_MULTIPLEX=0 $run_tests -p async-worker-pool-gateway --test asgi --test wsgi
# The reference worker's unit tests (its ASGI adapter's and its module graph's
# too), once on asyncio's loop (the system's python3, without uvloop) and once
# on uvloop's (a virtualenv that has it). `-t python` puts the package on the
# path and makes python/tests a package, for the tests' own support module.
python3 -m unittest discover -s python/tests -t python
uvloop_python=$(sh scripts/uvloop_venv.sh)
"$uvloop_python" -c 'import uvloop'
"$uvloop_python" -m unittest discover -s python/tests -t python

# The nuclio feature: its unit tests, its doc tests and tests/nuclio_wrapper.rs.
$run_tests --features nuclio,prometheus-client --lib --test nuclio_wrapper
cargo test --features nuclio,prometheus-client --doc
