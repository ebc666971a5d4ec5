#!/bin/sh
# Soak test: the HTTP gateway (2 workers x 50 connections, the handler
# examples/handlers/mixed.py) under steady mixed load for a given time
# (default 30 minutes): light requests, some slow ones (0.5 s) and some that
# fail (the handler raises), with one worker process killed (SIGKILL) every
# minute. Every minute it reports the gateway's and the workers' RSS, the
# gateway's open descriptors, requests per second and the answers by kind.
# It fails when any request gets no answer (a lost event), when a light or
# slow request gets anything but 200 outside the killed worker's 502s, or
# when RSS or descriptors grow more than 10 % after the warm-up (the first 5
# minutes, or the first half of a shorter run).
#
#   sh scripts/soak.sh [DURATION] [CSV]     # DURATION: 30m (default), 120s, 2m...
#
# SOAK_RATE sets the offered requests per second (default 200), SOAK_GATEWAY
# the gateway binary (default: the debug build, which this script builds).
set -eu
cd "$(dirname "$0")/.."

duration=${1:-30m}
csv=${2:-}
target=${CARGO_TARGET_DIR:-target}
gateway=${SOAK_GATEWAY:-$target/debug/http_gateway}
if [ -z "${SOAK_GATEWAY:-}" ]; then
    cargo build -p async-worker-pool-gateway --bin http_gateway
fi
exec python3 scripts/soak.py --gateway "$gateway" --duration "$duration" \
    --rate "${SOAK_RATE:-200}" ${csv:+--csv "$csv"}
