#!/bin/sh
# Peak and current resident memory of the HTTP gateway holding 4 x 1000 idle
# connections to echo workers: starts the built gateway, waits until /healthz
# reports every connection idle, prints VmHWM and VmRSS from /proc/PID/status
# (the gateway alone; its Python workers are separate processes), then stops it.
#
#   cargo build --release -p async-worker-pool-gateway --bin http_gateway
#   sh scripts/gateway_rss.sh [PATH_TO_http_gateway]
set -eu
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
gateway=${1:-$target/release/http_gateway}
workers=4
connections=1000
port=${GATEWAY_RSS_PORT:-18080}
want=$((workers * connections))

"$gateway" --workers "$workers" --max-connections "$connections" \
    --handler echo:handler --listen "127.0.0.1:$port" >/dev/null 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT

started=$(date +%s)
until curl -fs "http://127.0.0.1:$port/healthz" 2>/dev/null |
    grep -q "$want of $want connections idle"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "gateway_rss: the gateway exited" >&2
        exit 1
    fi
    if [ $(($(date +%s) - started)) -gt 120 ]; then
        echo "gateway_rss: not all $want connections idle after 120 s" >&2
        exit 1
    fi
    sleep 0.5
done

echo "gateway pid $pid: $(curl -fs "http://127.0.0.1:$port/healthz")"
grep -E '^(VmHWM|VmRSS)' "/proc/$pid/status"
workers_rss=0
for child in $(pgrep -P "$pid"); do
    kb=$(awk '/^VmRSS/ {print $2}' "/proc/$child/status")
    workers_rss=$((workers_rss + kb))
done
echo "worker processes (for comparison, not counted above): VmRSS $workers_rss kB in all"
kill -TERM "$pid"
wait "$pid" || true
trap - EXIT
