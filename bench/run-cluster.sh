#!/usr/bin/env bash
# Cost and scaling of cluster mode (a shared Redis store), on loopback:
#
# (a) unloaded added p50 of one small tools/call on one replica
#     - Redis store vs the embedded file store (containment state cached in
#       memory either way: no Redis round trip per request expected),
#     - both with a global rate limit per identity configured (file store:
#       the local GCRA; Redis: the GCRA script, leasing 16 cells per round
#       trip under a large burst, one cell per call under a burst of 4),
#     - taint_reads = "strict" (one lookup per tool call) vs the file store;
# (b) throughput of 1 replica vs 2 replicas sharing one Redis (with the
#     global rate limit configured, limits far above the load): one driver
#     with SESSIONS sessions against replica 1, then two drivers at once
#     with SESSIONS/2 each, one per replica, summed. Each replica fronts its
#     own demo server, so the upstream is not what is shared.
#
# Needs redis-server on PATH (scripts/install-test-deps.sh). Every process
# started here is stopped on exit. On a machine with few cores the drivers,
# demo servers, Redis and replicas share them: (b) shows what a second
# replica adds there, not what a second machine would.
#
# Knobs (environment):
#   LAT_SESSIONS=1 ROUNDS=4 ROUND_SECS=4   unloaded-latency phase (ab_rounds)
#   SESSIONS=32 DURATION=10 WARMUP=2       throughput phase
#   SKIP_BUILD=1                           reuse target/release binaries
#   OUT_DIR=target/bench                   where logs go
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

LAT_SESSIONS=${LAT_SESSIONS:-1}
ROUNDS=${ROUNDS:-4}
ROUND_SECS=${ROUND_SECS:-4}
SESSIONS=${SESSIONS:-32}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
OUT_DIR=${OUT_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/bench}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
mkdir -p "$OUT_DIR"
command -v redis-server >/dev/null || { echo "redis-server is not on PATH (scripts/install-test-deps.sh)" >&2; exit 2; }
# wait_url, p50_of, ab_rounds, bench_start (WORK, PIDS, cleanup on exit,
# build, machine header)
source "$ROOT/bench/lib.sh"
bench_start
echo "redis: $(redis-server --version | cut -d' ' -f3)"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$WORK/redis" --logfile "$OUT_DIR/cluster-redis.log" --protected-mode no >/dev/null &
PIDS+=("$!")
for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
done
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

DIRECT=""
demo() { # NAME: starts an HTTP demo server, sets DIRECT
    local log="$OUT_DIR/cluster-demo-$1.log"
    "$BIN/portcullis" demo-server --http 127.0.0.1:0 >/dev/null 2>"$log" &
    PIDS+=("$!")
    DIRECT=$(wait_url "$log" "$!")
}

# Limits far above the load (100,000 calls a second), so nothing is
# refused: a burst of 1,000 leases 16 cells per round trip
# (rate::lease_size); a burst of 4 leases one, so every call is a round trip
# (the exact case).
RATE='[containment.rate]
identity = { per_minute = 6000000, burst = 1000 }'
RATE_EXACT='[containment.rate]
identity = { per_minute = 6000000, burst = 4 }'

config() { # NAME STORE(file|redis) PREFIX RATE(0|1|exact) [STORE_LINE]
    local name=$1 store=$2 prefix=$3 rate=$4 extra=${5:-} f="$WORK/$1.toml"
    echo "state_dir = \"$WORK/state-$name\"" >"$f"
    if [ "$store" = redis ]; then
        printf '\n[store]\nkind = "redis"\n%s\n\n[store.redis]\nurl = "%s"\nprefix = "%s"\n' "$extra" "$REDIS_URL" "$prefix" >>"$f"
    fi
    case "$rate" in
        1) printf '\n%s\n' "$RATE" >>"$f" ;;
        exact) printf '\n%s\n' "$RATE_EXACT" >>"$f" ;;
    esac
    echo "$f"
}

URL=""
GW_PID=""
gateway() { # NAME CONFIG UPSTREAM: starts a gateway, sets URL and GW_PID
    local log="$OUT_DIR/cluster-gw-$1.log"
    "$BIN/portcullis" serve --listen 127.0.0.1:0 --allow-anonymous-loopback \
        --config "$2" --upstream "demo=$3" >/dev/null 2>"$log" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    URL=$(wait_url "$log" "$GW_PID")
}

demo a
DEMO_A=$DIRECT
demo b
DEMO_B=$DIRECT

gateway file "$(config file file "" 0)" "$DEMO_A"
FILE=$URL
gateway redis "$(config redis redis bench-lat: 0)" "$DEMO_A"
REDIS=$URL
gateway file-rate "$(config file-rate file "" 1)" "$DEMO_A"
FILE_RATE=$URL
gateway redis-rate "$(config redis-rate redis bench-lat-rate: 1)" "$DEMO_A"
REDIS_RATE=$URL
gateway file-exact "$(config file-exact file "" exact)" "$DEMO_A"
FILE_EXACT=$URL
gateway redis-exact "$(config redis-exact redis bench-lat-exact: exact)" "$DEMO_A"
REDIS_EXACT=$URL
gateway redis-strict "$(config redis-strict redis bench-lat-strict: 0 'taint_reads = "strict"')" "$DEMO_A"
REDIS_STRICT=$URL

LOAD_LIMIT=$(( 4 * (DURATION + WARMUP) + 60 ))
echo "## (a) unloaded latency: $LAT_SESSIONS session(s), $ROUNDS alternating rounds of ${ROUND_SECS}s"
echo "### redis store vs file store (no rate limit)"
ab_rounds "$FILE" file "$REDIS" redis
echo "### with a global rate limit per identity, burst 1,000: redis (a lease of 16 cells per round trip) vs file (local GCRA)"
ab_rounds "$FILE_RATE" file-rate "$REDIS_RATE" redis-rate
echo "### file store without vs redis store with the leased global rate limit (the whole cluster cost)"
ab_rounds "$FILE" file "$REDIS_RATE" redis-rate
echo "### with a global rate limit per identity, burst 4: redis (one round trip per call) vs file (local GCRA)"
ab_rounds "$FILE_EXACT" file-exact "$REDIS_EXACT" redis-exact
echo "### taint_reads = strict (one lookup per tool call) vs file store"
ab_rounds "$FILE" file "$REDIS_STRICT" redis-strict

# (b) two replicas over one Redis, each with its own demo server.
gateway r1 "$(config r1 redis bench-tp: 1)" "$DEMO_A"
R1=$URL
R1_PID=$GW_PID
gateway r2 "$(config r2 redis bench-tp: 1)" "$DEMO_B"
R2=$URL
R2_PID=$GW_PID

throughput_of() { # FILE: the req/s of a portcullis-load human report
    awk '/throughput/ { for (i = 1; i <= NF; i++) if ($i == "throughput") { print $(i + 1); exit } }' "$1"
}
errors_of() {
    awk '/throughput/ { for (i = 1; i <= NF; i++) if ($i == "errors") { print $(i + 1); exit } }' "$1"
}
load() { # URL SESSIONS OUT [CPU_PID]
    timeout "$LOAD_LIMIT" "$BIN/portcullis-load" --url "$1#demo__echo" --args '{"message":"hi"}' \
        --sessions "$2" --duration "$DURATION" --warmup "$WARMUP" ${4:+--cpu-pid "$4"} >"$3" 2>&1
}

echo "## (b) throughput: $SESSIONS sessions on 1 replica vs $((SESSIONS / 2)) + $((SESSIONS / 2)) on 2 replicas (global rate limit configured)"
load "$R1" "$SESSIONS" "$WORK/one.txt" "$R1_PID"
ONE=$(throughput_of "$WORK/one.txt")
echo "1 replica: $ONE req/s (errors $(errors_of "$WORK/one.txt"), p50 $(awk '/latency/ { for (i = 1; i <= NF; i++) if ($i == "p50") { print $(i + 1); exit } }' "$WORK/one.txt") µs)"
load "$R1" "$((SESSIONS / 2))" "$WORK/two-a.txt" "$R1_PID" &
LA=$!
load "$R2" "$((SESSIONS / 2))" "$WORK/two-b.txt" "$R2_PID" &
LB=$!
wait "$LA" "$LB"
TA=$(throughput_of "$WORK/two-a.txt")
TB=$(throughput_of "$WORK/two-b.txt")
echo "2 replicas: $TA + $TB req/s (errors $(errors_of "$WORK/two-a.txt") + $(errors_of "$WORK/two-b.txt"))"
awk -v one="$ONE" -v a="$TA" -v b="$TB" 'BEGIN { printf "scaling 1 -> 2 replicas: %.0f -> %.0f req/s (x%.2f)\n", one, a + b, (a + b) / one }'
for f in one two-a two-b; do
    echo "gateway CPU ($f): $(grep -h "server CPU" "$WORK/$f.txt" | sed 's/^ *//' || echo "not measured")"
done
echo "redis: $(redis-cli -p "$REDIS_PORT" info stats | grep -E '^(total_commands_processed|instantaneous_ops_per_sec)' | tr -d '\r' | tr '\n' ' ')"
echo "## done"
