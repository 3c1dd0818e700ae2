#!/usr/bin/env bash
# Portcullis performance run: the demo MCP server directly versus the same
# server behind the gateway, then gateway RSS with many idle sessions.
#
# Loopback only; every process started here is stopped on exit.
# The cost of authentication (mTLS + JWT, TLS handshakes per second) is
# measured by bench/run-auth.sh.
#
# Knobs (environment):
#   SESSIONS=32 DURATION=10 WARMUP=2     load phase
#   LAT_SESSIONS=1                       unloaded-latency phase (0 skips it)
#   IDLE_SESSIONS=1000 HOLD=5            idle-RSS phase
#   SKIP_BUILD=1                         reuse target/release binaries
#   OUT_DIR=target/bench                 where logs and JSON results go
#   BENCH_SOURCE=...                     free text naming the measured source
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

SESSIONS=${SESSIONS:-32}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
IDLE_SESSIONS=${IDLE_SESSIONS:-1000}
HOLD=${HOLD:-5}
LAT_SESSIONS=${LAT_SESSIONS:-1}
OUT_DIR=${OUT_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/bench}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
mkdir -p "$OUT_DIR"

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
# Stops one process started here and forgets it.
stop() {
    local keep=() p
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_url
source "$ROOT/bench/lib.sh"

rss_line() {
    grep -E '^(VmRSS|VmHWM)' "/proc/$1/status" | tr -s ' \t' ' ' | paste -sd ' ' -
}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "## build"
    cargo build --release -p portcullis -p portcullis-bench
fi

echo "## machine"
echo "cores: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kernel: $(uname -sr); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rustc: $(rustc --version 2>/dev/null || echo unknown)"
echo "source: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "not a git checkout") (${BENCH_SOURCE:-$ROOT})"

echo "## start demo server and gateway (loopback, free ports)"
"$BIN/portcullis" demo-server --http 127.0.0.1:0 2>"$OUT_DIR/demo.log" &
DEMO_PID=$!
PIDS+=("$DEMO_PID")
DIRECT=$(wait_url "$OUT_DIR/demo.log" "$DEMO_PID")

"$BIN/portcullis" serve --listen 127.0.0.1:0 --allow-anonymous-loopback --upstream "demo=$DIRECT" 2>"$OUT_DIR/gateway.log" &
GW_PID=$!
PIDS+=("$GW_PID")
GATEWAY=$(wait_url "$OUT_DIR/gateway.log" "$GW_PID")
echo "direct:  $DIRECT (pid $DEMO_PID)"
echo "gateway: $GATEWAY (pid $GW_PID)"

LOAD_LIMIT=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", 2 * (d + w) + 60 }')
compare() { # SESSIONS OUTFILE
    timeout "$LOAD_LIMIT" "$BIN/portcullis-load" \
        --url "$DIRECT#echo" --label direct \
        --compare "$GATEWAY#demo__echo" --label gateway \
        --args '{"message":"hi"}' \
        --sessions "$1" --duration "$DURATION" --warmup "$WARMUP" \
        --json >"$2"
}

echo "## load: $SESSIONS sessions, ${DURATION}s measured after ${WARMUP}s warmup, per target"
compare "$SESSIONS" "$OUT_DIR/load.json"
echo "results: $OUT_DIR/load.json"

if [ "$LAT_SESSIONS" != 0 ]; then
    echo "## unloaded latency: $LAT_SESSIONS session(s), same duration"
    compare "$LAT_SESSIONS" "$OUT_DIR/latency.json"
    echo "results: $OUT_DIR/latency.json"
fi
echo "gateway after load: $(rss_line "$GW_PID")"

# Idle sessions on a fresh gateway (so load-phase allocations do not count).
idle() { # NAME [driver flags...]
    local name=$1 log pid url
    shift
    log="$OUT_DIR/gateway-$name.log"
    "$BIN/portcullis" serve --listen 127.0.0.1:0 --allow-anonymous-loopback --upstream "demo=$DIRECT" 2>"$log" &
    pid=$!
    PIDS+=("$pid")
    url=$(wait_url "$log" "$pid")
    # One call first so the gateway has probed its upstream, as in real use.
    timeout 30 "$BIN/portcullis-load" --url "$url#demo__echo" --args '{"message":"hi"}' \
        --sessions 1 --requests 1 --warmup 0 >/dev/null
    timeout "$(awk -v h="$HOLD" 'BEGIN { printf "%d", h + 90 }')" "$BIN/portcullis-load" \
        --url "$url" --idle-sessions "$IDLE_SESSIONS" --hold "$HOLD" \
        --rss-pid "$pid" --json "$@" >"$OUT_DIR/idle-$name.json"
    echo "results: $OUT_DIR/idle-$name.json"
    stop "$pid"
}

echo "## idle: $IDLE_SESSIONS sessions held ${HOLD}s, connections kept open (fresh gateway)"
idle open
echo "## idle: $IDLE_SESSIONS sessions held ${HOLD}s, connections closed after initialize (fresh gateway)"
idle closed --idle-drop-connections
echo "## done"
