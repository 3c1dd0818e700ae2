#!/usr/bin/env bash
# Sizing measurements behind docs/operations.md ("Sizing"): what one
# gateway replica costs in memory per session and in CPU per request, so
# Kubernetes requests/limits and the replica count can be derived.
#
# The gateway runs as in production minus TLS: the audit log on (group
# commit), the embedded file store under a state folder, the default policy
# pack, default content inspection, risk engine — in front of
# `portcullis demo-server --http`, driven by `portcullis-load` (tools/call
# demo__echo). Plain HTTP via --allow-anonymous-loopback: the TLS costs are
# in docs/performance.md ("Identity cost") and are added in operations.md.
#
# Phases:
#   cpu    closed-loop load at LOAD_SESSIONS concurrent sessions; the
#          gateway's own CPU time (utime+stime) per successful call
#   core   the gateway pinned to one core (PORTCULLIS_WORKERS=1, taskset),
#          driver and demo server on the other core(s): requests per second
#          one gateway core sustains (needs >= 2 cores; skipped otherwise)
#   memory a fresh gateway per N in SESSION_COUNTS: VmRSS before and with N
#          idle sessions, connections kept open and closed after initialize
#
# Loopback only; every process started here is stopped on exit.
#
# Knobs (environment):
#   LOAD_SESSIONS="1 8 32" DURATION=8 WARMUP=2   cpu phase
#   CORE_SESSIONS=32                             core phase (0 skips it)
#   SESSION_COUNTS="1000 5000 10000" HOLD=5      memory phase ("" skips it)
#   SKIP_BUILD=1                                 reuse target/release binaries
#   OUT_DIR=target/bench/sizing                  logs and JSON results
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)

LOAD_SESSIONS=${LOAD_SESSIONS:-1 8 32}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CORE_SESSIONS=${CORE_SESSIONS:-32}
SESSION_COUNTS=${SESSION_COUNTS-1000 5000 10000}
HOLD=${HOLD:-5}
OUT_DIR=${OUT_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/bench/sizing}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
mkdir -p "$OUT_DIR"

# wait_url, bench_start (WORK, PIDS, cleanup on exit, build, machine header)
source "$ROOT/bench/lib.sh"
bench_start
echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"

# Enough descriptors for 10,000 kept-open sessions on both ends.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Busy CPU of the whole machine, as jiffies (for the "others" column: what
# was running besides this bench).
busy_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
proc_jiffies() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

"$BIN/portcullis" demo-server --http 127.0.0.1:0 >/dev/null 2>"$OUT_DIR/demo.log" &
DEMO_PID=$!
PIDS+=("$DEMO_PID")
DIRECT=$(wait_url "$OUT_DIR/demo.log" "$DEMO_PID")

URL=""
GW_PID=""
# gateway NAME [env assignments…] — a fresh production-like gateway.
gateway() {
    local name=$1 log dir
    shift
    dir="$WORK/$name"
    log="$OUT_DIR/gateway-$name.log"
    mkdir -p "$dir"
    cat >"$dir/portcullis.toml" <<TOML
state_dir = "$dir/state"

[listen]
addr = "127.0.0.1:0"

[limits]
max_sessions = 20000
max_connections = 20000
max_connections_per_ip = 20000

[audit]
path = "$dir/audit/audit.jsonl"
TOML
    env PORTCULLIS_LOG=warn "$@" "$BIN/portcullis" serve --config "$dir/portcullis.toml" \
        --allow-anonymous-loopback --upstream "demo=$DIRECT" >/dev/null 2>"$log" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    URL=$(wait_url "$log" "$GW_PID")
    # One call first, so the gateway has probed its upstream as in real use.
    timeout 30 "$BIN/portcullis-load" --url "$URL#demo__echo" --args '{"message":"hi"}' \
        --sessions 1 --requests 1 --warmup 0 >/dev/null 2>&1
}

stop() {
    local keep=() p
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

LOAD_LIMIT=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", d + w + 60 }')
HZ=$(getconf CLK_TCK)
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"

# load NAME SESSIONS [driver prefix…]: one measured window; appends a row.
load() {
    local name=$1 sessions=$2 b0 b1 g0 g1 d0 d1 out
    shift 2
    out="$OUT_DIR/load-$name.json"
    b0=$(busy_jiffies); g0=$(proc_jiffies "$GW_PID"); d0=$(proc_jiffies "$DEMO_PID")
    "$@" timeout "$LOAD_LIMIT" "$BIN/portcullis-load" --url "$URL#demo__echo" --label "$name" \
        --args '{"message":"hi"}' --sessions "$sessions" --duration "$DURATION" \
        --warmup "$WARMUP" --cpu-pid "$GW_PID" --json >"$out" 2>"$OUT_DIR/load-$name.txt"
    b1=$(busy_jiffies); g1=$(proc_jiffies "$GW_PID"); d1=$(proc_jiffies "$DEMO_PID")
    python3 - "$out" "$name" "$sessions" "$(((b1 - b0) - (g1 - g0) - (d1 - d0)))" "$HZ" \
        "$(status_kib "$GW_PID" VmRSS)" "$(status_kib "$GW_PID" VmHWM)" \
        "$DURATION" "$WARMUP" >>"$SUMMARY" <<'PY'
import json, sys
path, name, sessions, other_jiffies, hz, rss, hwm, dur, warm = sys.argv[1:]
t = json.load(open(path))["targets"][0]
rps = t["throughput_rps"]
cpu_call = t.get("server_cpu_us_per_call") or 0.0
cores = t.get("server_cpu_s", 0.0) / t["elapsed_s"]
# Jiffies used by neither the gateway nor the demo server over the whole
# run (warm-up included): the driver plus anything else on the machine.
other = int(other_jiffies) / int(hz) / (float(dur) + float(warm))
print(f"cpu {name:<10} sessions={sessions:>3} rps={rps:>9.0f} p50_us={t['latency_us']['p50']:>8.0f} "
      f"p99_us={t['latency_us']['p99']:>8.0f} gw_cpu_us_per_call={cpu_call:>6.1f} "
      f"gw_cores={cores:4.2f} cores_per_1k_rps={cpu_call / 1000:5.3f} "
      f"driver_and_others_cores={other:4.2f} errors={t['errors']} rss_kib={rss} hwm_kib={hwm}")
PY
    tail -n1 "$SUMMARY"
}

echo "## cpu: gateway CPU per call at ${LOAD_SESSIONS// /, } sessions (${DURATION}s after ${WARMUP}s warm-up)"
gateway cpu
for s in $LOAD_SESSIONS; do
    load "s$s" "$s"
done
stop "$GW_PID"

if [ "$CORE_SESSIONS" != 0 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    LAST=$(($(nproc) - 1))
    echo "## core: gateway pinned to CPU $LAST (one worker), driver and demo on CPUs 0-$((LAST - 1)); $CORE_SESSIONS sessions"
    taskset -pc "0-$((LAST - 1))" "$DEMO_PID" >/dev/null
    gateway core PORTCULLIS_WORKERS=1 taskset -c "$LAST"
    load core "$CORE_SESSIONS" taskset -c "0-$((LAST - 1))"
    stop "$GW_PID"
    taskset -pc "0-$LAST" "$DEMO_PID" >/dev/null
fi

for n in $SESSION_COUNTS; do
    for mode in open closed; do
        flags=()
        [ "$mode" = closed ] && flags=(--idle-drop-connections)
        echo "## memory: $n idle sessions, connections $mode (fresh gateway, held ${HOLD}s)"
        gateway "idle-$n-$mode"
        timeout "$((HOLD + 180))" "$BIN/portcullis-load" --url "$URL" --idle-sessions "$n" \
            --hold "$HOLD" --rss-pid "$GW_PID" --open-concurrency 64 --json "${flags[@]}" \
            >"$OUT_DIR/idle-$n-$mode.json" 2>"$OUT_DIR/idle-$n-$mode.txt"
        python3 - "$OUT_DIR/idle-$n-$mode.json" "$n" "$mode" >>"$SUMMARY" <<'PY'
import json, sys
path, n, mode = sys.argv[1:]
d = json.load(open(path))["idle"]
b, o = d["vmrss_kib_before"], d["vmrss_kib_open"]
per = (o - b) / d["opened"] if d["opened"] else float("nan")
print(f"mem sessions={n:>6} connections={mode:<6} opened={d['opened']} failed={d['failed']} "
      f"rss_before_kib={b} rss_with_sessions_kib={o} rss_after_hold_kib={d['vmrss_kib_after_hold']} "
      f"per_session_kib={per:.1f}")
PY
        tail -n1 "$SUMMARY"
        stop "$GW_PID"
    done
done

echo "## summary ($SUMMARY)"
cat "$SUMMARY"
echo "## done"
