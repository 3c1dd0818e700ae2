#!/usr/bin/env bash
# Cost of content inspection on the hot path: the same gateway binary in
# front of the same demo server, (A) with inspection off (`results = {}`,
# `injection = "off"`: results pass unparsed) versus (B) the default
# (credentials redacted, personal data flagged, injection markers flagged
# on every result) and (C) the default plus argument DLP on every call.
# Then the detectors alone (criterion: DLP over 1 MiB, 100-tool poisoning
# scan, injection markers, shadowing) and the gateway's inspection stage
# on one result (parse, rules, write-back).
#
# Loopback only; every process started here is stopped on exit.
#
# Knobs (environment):
#   LAT_SESSIONS=1 ROUNDS=6 ROUND_SECS=5 unloaded-latency phase (alternating rounds)
#   SESSIONS=32 DURATION=10 WARMUP=2 LOAD_ROUNDS=3  load phase (throughput)
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
OUT_DIR=${OUT_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/bench}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
mkdir -p "$OUT_DIR"
# wait_url, ab_rounds, bench_start (WORK, PIDS, cleanup on exit, build,
# machine header)
source "$ROOT/bench/lib.sh"
bench_start

"$BIN/portcullis" demo-server --http 127.0.0.1:0 >/dev/null 2>"$OUT_DIR/inspect-demo.log" &
DEMO_PID=$!
PIDS+=("$DEMO_PID")
DIRECT=$(wait_url "$OUT_DIR/inspect-demo.log" "$DEMO_PID")

cat >"$WORK/off.toml" <<TOML
state_dir = "$WORK/off"
[inspection]
results = {}
injection = "off"
TOML
cat >"$WORK/default.toml" <<TOML
state_dir = "$WORK/default"
TOML
cat >"$WORK/args.toml" <<TOML
state_dir = "$WORK/args"
[inspection]
arguments = { secrets = "redact", pii = "flag" }
TOML

URL=""
gateway() { # NAME [serve flags...]: starts a gateway, sets URL
    local name=$1 log
    shift
    log="$OUT_DIR/inspect-gw-$name.log"
    PORTCULLIS_STATE_DIR="$WORK/state-$name" "$BIN/portcullis" serve --listen 127.0.0.1:0 \
        --allow-anonymous-loopback --upstream "demo=$DIRECT" "$@" >/dev/null 2>"$log" &
    PIDS+=("$!")
    URL=$(wait_url "$log" "$!")
}

gateway off --config "$WORK/off.toml"
OFF=$URL
gateway default --config "$WORK/default.toml"
DEFAULT=$URL
gateway args --config "$WORK/args.toml"
ARGS_URL=$URL
echo "inspection off: $OFF"
echo "default inspection (results: secrets redact, pii flag, injection flag): $DEFAULT"
echo "default + argument DLP: $ARGS_URL"

LOAD_LIMIT=$(awk -v d="$DURATION" -v w="$WARMUP" -v r="${LOAD_ROUNDS:-3}" 'BEGIN { printf "%d", 2 * r * (d + w) + 60 }')
echo "## unloaded latency: $LAT_SESSIONS session(s), default inspection vs off, $ROUNDS alternating rounds"
ab_rounds "$OFF" off "$DEFAULT" default
echo "## unloaded latency: default + argument DLP vs off"
ab_rounds "$OFF" off "$ARGS_URL" args
echo "## unloaded latency, the demo's 'runbook' document (a redaction and two flags per result) vs off"
TOOL=demo__read_document ARGS='{"name":"runbook"}' ab_rounds "$OFF" off "$DEFAULT" default
echo "## load: $SESSIONS sessions, default inspection vs off"
timeout "$LOAD_LIMIT" "$BIN/portcullis-load" \
    --url "$OFF#demo__echo" --label off \
    --compare "$DEFAULT#demo__echo" --label default \
    --args '{"message":"hi"}' \
    --sessions "$SESSIONS" --duration "$DURATION" --warmup "$WARMUP" --rounds "${LOAD_ROUNDS:-3}" \
    --json >"$OUT_DIR/inspect-load.json"
echo "results: $OUT_DIR/inspect-load.json"

if [ "${SKIP_CRITERION:-0}" != 1 ]; then
    echo "## detectors alone (criterion)"
    cargo bench -p portcullis-inspect --bench dlp --bench poison --bench shadow -- --warm-up-time 1 --measurement-time 3 2>&1 \
        | grep -E '^[A-Za-z_/0-9 ().,-]+$|time:' || true
    echo "## the gateway's inspection stage per call (criterion)"
    cargo bench -p portcullis-gateway --bench inspection -- --warm-up-time 1 --measurement-time 3 2>&1 \
        | grep -E '^[A-Za-z_/0-9 ().,-]+$|time:' || true
fi
echo "## done"
