#!/usr/bin/env bash
# Cost of the audit log: the same gateway without and with `--audit-log`
# (group commit, the default; and fsync per record), in front of the same
# demo server, then the audit writer's own throughput (criterion).
#
# Loopback only; every process started here is stopped on exit.
#
# Knobs (environment):
#   SESSIONS=32 DURATION=10 WARMUP=2     load phase (throughput)
#   LAT_SESSIONS=1 ROUNDS=6 ROUND_SECS=5 unloaded-latency phase (added p50:
#                                        median over alternating-order rounds)
#   RECORD_MODE=1                        also measure sync = "record"
#   SKIP_BUILD=1                         reuse target/release binaries
#   SKIP_CRITERION=1                     skip the writer-throughput bench
#   OUT_DIR=target/bench                 where logs and JSON results go
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

SESSIONS=${SESSIONS:-32}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
LAT_SESSIONS=${LAT_SESSIONS:-1}
OUT_DIR=${OUT_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/bench}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
mkdir -p "$OUT_DIR"
# wait_url, ab_rounds, bench_start (WORK, PIDS, cleanup on exit, build,
# machine header)
source "$ROOT/bench/lib.sh"
bench_start
echo "audit files on: $(df -h "$WORK" | tail -1 | awk '{print $1, $6}')"

"$BIN/portcullis" demo-server --http 127.0.0.1:0 >/dev/null 2>"$OUT_DIR/audit-demo.log" &
DEMO_PID=$!
PIDS+=("$DEMO_PID")
DIRECT=$(wait_url "$OUT_DIR/audit-demo.log" "$DEMO_PID")

URL=""
gateway() { # NAME [serve flags...]: starts a gateway, sets URL
    local name=$1 log
    shift
    log="$OUT_DIR/audit-gw-$name.log"
    PORTCULLIS_STATE_DIR="$WORK/state-$name" "$BIN/portcullis" serve --listen 127.0.0.1:0 \
        --allow-anonymous-loopback --upstream "demo=$DIRECT" "$@" >/dev/null 2>"$log" &
    PIDS+=("$!")
    URL=$(wait_url "$log" "$!")
}

gateway plain
PLAIN=$URL
gateway group --audit-log "$WORK/group/audit.jsonl"
GROUP=$URL
echo "without audit: $PLAIN"
echo "with audit (group commit): $GROUP"

LOAD_LIMIT=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", 2 * (d + w) + 60 }')
compare() { # BASE OTHER SESSIONS OUTFILE
    timeout "$LOAD_LIMIT" "$BIN/portcullis-load" \
        --url "$1#demo__echo" --label no-audit \
        --compare "$2#demo__echo" --label audit \
        --args '{"message":"hi"}' \
        --sessions "$3" --duration "$DURATION" --warmup "$WARMUP" \
        --json >"$4"
}

ROUNDS=${ROUNDS:-6}
ROUND_SECS=${ROUND_SECS:-5}
rounds() { # OTHER_URL NAME
    ab_rounds "$PLAIN" no-audit "$1" "$2"
}

echo "## unloaded latency: $LAT_SESSIONS session(s), group commit vs no audit, $ROUNDS alternating rounds"
rounds "$GROUP" audit-group
echo "## load: $SESSIONS sessions, group commit vs no audit"
compare "$PLAIN" "$GROUP" "$SESSIONS" "$OUT_DIR/audit-load.json"
echo "results: $OUT_DIR/audit-load.json"
echo "audit files: $(ls "$WORK/group" | wc -l)"
"$BIN/portcullis" audit verify --all "$WORK/group/audit.jsonl" || true

if [ "${RECORD_MODE:-1}" = 1 ]; then
    cat >"$WORK/record.toml" <<TOML
[audit]
path = "$WORK/record/audit.jsonl"
sync = "record"
TOML
    gateway record --config "$WORK/record.toml"
    RECORD=$URL
    echo "## unloaded latency: $LAT_SESSIONS session(s), fsync per record vs no audit, $ROUNDS alternating rounds"
    rounds "$RECORD" audit-record
fi

if [ "${SKIP_CRITERION:-0}" != 1 ]; then
    echo "## audit writer throughput (criterion)"
    cargo bench -p portcullis-monitor --bench audit 2>&1 | grep -E '^[a-z_/0-9 -]+$|time:|thrpt:' || true
fi
echo "## done"
