#!/usr/bin/env bash
# Cost of containment on the hot path: the same gateway binary in front of
# the same demo server, (A) with no containment configured (the checks run,
# nothing is quarantined: one atomic load each) versus (B) an active
# configuration — 10,000 quarantines of other identities in the store, rate
# limits per identity and per tool, a concurrency cap, automatic rules on
# risk and denials. The idle path's own cost is the criterion bench of the
# contain crate (run at the end).
#
# Loopback only; every process started here is stopped on exit.
#
# Knobs (environment):
#   SESSIONS=32 DURATION=10 WARMUP=2     load phase (throughput), measured in
#   LOAD_ROUNDS=3                        alternating rounds (A B A B …) merged
#   LAT_SESSIONS=1 ROUNDS=6 ROUND_SECS=5 unloaded-latency phase
#   QUARANTINES=10000                    quarantines of other identities in (B)
#   STREAMS=100                          open SSE streams cut by a manual quarantine
#   SKIP_BUILD=1 SKIP_CRITERION=1        reuse binaries / skip criterion
#   OUT_DIR=target/bench                 where logs and JSON results go
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

SESSIONS=${SESSIONS:-32}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
LAT_SESSIONS=${LAT_SESSIONS:-1}
ROUNDS=${ROUNDS:-6}
ROUND_SECS=${ROUND_SECS:-5}
QUARANTINES=${QUARANTINES:-10000}
OUT_DIR=${OUT_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/bench}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
mkdir -p "$OUT_DIR"
# wait_url, ab_rounds, bench_start (WORK, PIDS, cleanup on exit, build,
# machine header)
source "$ROOT/bench/lib.sh"
bench_start

"$BIN/portcullis" demo-server --http 127.0.0.1:0 >/dev/null 2>"$OUT_DIR/contain-demo.log" &
DEMO_PID=$!
PIDS+=("$DEMO_PID")
DIRECT=$(wait_url "$OUT_DIR/contain-demo.log" "$DEMO_PID")

# (B)'s store: QUARANTINES identities other than the bench's, journal format
# of the embedded store (one JSON line per entry).
mkdir -p "$WORK/active/store"
awk -v n="$QUARANTINES" 'BEGIN {
    for (i = 0; i < n; i++) {
        k = sprintf("identity:w=spiffe://bench.test/agent/%d;u=-", i)
        printf "{\"ns\":\"quarantine\",\"key\":\"%s\",\"put\":{\"key\":\"%s\",\"value\":{\"target\":{\"kind\":\"identity\",\"value\":\"w=spiffe://bench.test/agent/%d;u=-\"},\"mode\":\"deny-all\",\"reason\":\"bench\",\"by\":\"bench\",\"created_at\":1}}}\n", k, k, i
    }
}' >"$WORK/active/store/state.jsonl"
cat >"$WORK/idle.toml" <<TOML
state_dir = "$WORK/idle"
TOML
cat >"$WORK/active.toml" <<TOML
state_dir = "$WORK/active"

[containment]
max_concurrent_per_identity = 64

[containment.rate.identity]
per_minute = 60000000
burst = 100000
[containment.rate.tools.demo__echo]
per_minute = 60000000
burst = 100000

[[containment.auto]]
when = "risk"
above = 100
[[containment.auto]]
when = "denials"
count = 1000
window_secs = 60
TOML

URL=""
gateway() { # NAME [serve flags...]: starts a gateway, sets URL
    local name=$1 log
    shift
    log="$OUT_DIR/contain-gw-$name.log"
    PORTCULLIS_STATE_DIR="$WORK/state-$name" "$BIN/portcullis" serve --listen 127.0.0.1:0 \
        --allow-anonymous-loopback --upstream "demo=$DIRECT" "$@" >/dev/null 2>"$log" &
    PIDS+=("$!")
    URL=$(wait_url "$log" "$!")
}

gateway idle --config "$WORK/idle.toml"
IDLE=$URL
gateway active --config "$WORK/active.toml"
ACTIVE=$URL
echo "no containment configured: $IDLE"
echo "active containment ($QUARANTINES quarantines, rate limits, rules): $ACTIVE"

LOAD_LIMIT=$(awk -v d="$DURATION" -v w="$WARMUP" -v r="${LOAD_ROUNDS:-3}" 'BEGIN { printf "%d", 2 * r * (d + w) + 60 }')
echo "## unloaded latency: $LAT_SESSIONS session(s), active vs idle containment, $ROUNDS alternating rounds"
ab_rounds "$IDLE" idle "$ACTIVE" active
echo "## load: $SESSIONS sessions, active vs idle containment"
timeout "$LOAD_LIMIT" "$BIN/portcullis-load" \
    --url "$IDLE#demo__echo" --label idle \
    --compare "$ACTIVE#demo__echo" --label active \
    --args '{"message":"hi"}' \
    --sessions "$SESSIONS" --duration "$DURATION" --warmup "$WARMUP" --rounds "${LOAD_ROUNDS:-3}" \
    --json >"$OUT_DIR/contain-load.json"
echo "results: $OUT_DIR/contain-load.json"

PY=${PY:-$ROOT/.deps/venv/bin/python}
if [ -x "$PY" ]; then
    echo "## manual quarantine: time until every open SSE stream of the identity is closed"
    gateway admin --admin 127.0.0.1:0
    ADMIN=$(grep -Eo 'admin API on https://[^ ]*' "$OUT_DIR/contain-gw-admin.log" | head -n1 | sed 's/^admin API on //')
    "$PY" bench/quarantine_latency.py "$URL" "$ADMIN" "$WORK/state-admin" "${STREAMS:-100}"
else
    echo "## manual quarantine latency skipped: no $PY (scripts/install-test-deps.sh)"
fi

if [ "${SKIP_CRITERION:-0}" != 1 ]; then
    echo "## containment checks alone (criterion)"
    cargo bench -p portcullis-contain --bench contain -- --warm-up-time 1 --measurement-time 2 2>&1 \
        | grep -E '^[a-z_/0-9 ()-]+$|time:' || true
fi
echo "## done"
