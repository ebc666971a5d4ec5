#!/bin/sh
# The whole test suite: the Rust tests (with cargo-nextest where it is
# installed), the doc tests (nextest does not run those), and the reference
# Python worker's unit tests.
set -eu
cd "$(dirname "$0")/.."

# The gateway's end-to-end test runs the example binary, which test runners
# build only as a test target.
cargo build --examples
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --all-targets --no-fail-fast
else
    cargo test --all-targets --no-fail-fast
fi
cargo test --doc
python3 -m unittest discover -s python -p 'test_*.py'
