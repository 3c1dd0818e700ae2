#!/usr/bin/env bash
# Portcullis authentication cost: the same demo upstream behind
#   gateway A: plain HTTP, anonymous (--allow-anonymous-loopback), and
#   gateway B: TLS with a client certificate (SPIFFE ID checked) and a JWT
#              bearer token on every request (auth.require = "strict"),
# on keep-alive connections, at 1 and 32 sessions; then full TLS handshakes
# per second against gateway B, with and without a client certificate.
# With SPLIT=1 (default) the unloaded cost is split in two: gateway C (plain
# HTTP, JWT only) and gateway D (mTLS only, no token), each against A.
#
# Loopback only; bounded in time; every process and file made here is
# removed on exit (results stay in OUT_DIR).
#
# Knobs (environment):
#   SESSIONS=32 LAT_SESSIONS=1           sessions in the two comparisons
#   DURATION=4 WARMUP=1 ROUNDS=5         per target and round (A B A B …)
#   HS_DURATION=5 HS_WARMUP=1            handshake phase, per variant
#   HS_CONCURRENCY=4                     concurrent handshake workers
#   SPLIT=1                              also measure C (JWT only), D (mTLS only)
#   SKIP_BUILD=1                         reuse target/release binaries
#   OUT_DIR=target/bench/auth            where logs and JSON results go
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

SESSIONS=${SESSIONS:-32}
LAT_SESSIONS=${LAT_SESSIONS:-1}
DURATION=${DURATION:-4}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-5}
HS_DURATION=${HS_DURATION:-5}
HS_WARMUP=${HS_WARMUP:-1}
HS_CONCURRENCY=${HS_CONCURRENCY:-4}
SPLIT=${SPLIT:-1}
OUT_DIR=${OUT_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/bench/auth}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
RESOURCE=https://127.0.0.1/mcp
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench-auth.XXXXXX")

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
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

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "## build"
    cargo build --release -p portcullis -p portcullis-bench
fi

echo "## machine"
echo "cores: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kernel: $(uname -sr); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rustc: $(rustc --version 2>/dev/null || echo unknown)"
echo "source: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "not a git checkout")"

echo "## identities: local CA, gateway and client certificates, dev-issuer token ($WORK)"
"$BIN/portcullis" ca init --dir "$WORK/ca" >/dev/null
"$BIN/portcullis" cert issue --ca "$WORK/ca" --spiffe-id spiffe://example.org/gateway \
    --dns localhost --ip 127.0.0.1 --out "$WORK/gw" >/dev/null
"$BIN/portcullis" cert issue --ca "$WORK/ca" --spiffe-id spiffe://example.org/agent/bench \
    --out "$WORK/client" >/dev/null
TOKEN=$("$BIN/portcullis-load" --mint-token "$WORK/issuer" --audience "$RESOURCE" \
    --subject bench-user --scope mcp --token-ttl 7200)
cat >"$WORK/gateway-b.toml" <<EOF
[listen.tls]
mode = "optional"
cert = "$WORK/gw/cert.pem"
key = "$WORK/gw/key.pem"
client_ca = ["$WORK/ca/ca.pem"]
trust_domains = ["example.org"]

[auth]
require = "strict"            # every request: verified client certificate AND bearer token
resource = "$RESOURCE"

[auth.oauth]
issuer = "urn:portcullis:dev"
jwks = "$WORK/issuer/jwks.json"
EOF
# C: plain HTTP, bearer token only. D: mTLS only, no token.
cat >"$WORK/gateway-c.toml" <<EOF
[auth]
require = "token"
resource = "$RESOURCE"

[auth.oauth]
issuer = "urn:portcullis:dev"
jwks = "$WORK/issuer/jwks.json"
EOF
sed -n '/^\[listen.tls\]/,/^$/p' "$WORK/gateway-b.toml" >"$WORK/gateway-d.toml"
printf '[auth]\nrequire = "certificate"\n' >>"$WORK/gateway-d.toml"
for g in b c d; do
    cp "$WORK/gateway-$g.toml" "$OUT_DIR/gateway-$g.toml"
done

echo "## start demo server, gateway A (plain, anonymous) and gateway B (mTLS + JWT)"
"$BIN/portcullis" demo-server --http 127.0.0.1:0 2>"$OUT_DIR/demo.log" &
DEMO_PID=$!
PIDS+=("$DEMO_PID")
DEMO=$(wait_url "$OUT_DIR/demo.log" "$DEMO_PID")

"$BIN/portcullis" serve --listen 127.0.0.1:0 --allow-anonymous-loopback \
    --upstream "demo=$DEMO" 2>"$OUT_DIR/gateway-a.log" &
A_PID=$!
PIDS+=("$A_PID")
A=$(wait_url "$OUT_DIR/gateway-a.log" "$A_PID")

"$BIN/portcullis" serve --config "$WORK/gateway-b.toml" --listen 127.0.0.1:0 \
    --upstream "demo=$DEMO" 2>"$OUT_DIR/gateway-b.log" &
B_PID=$!
PIDS+=("$B_PID")
B=$(wait_url "$OUT_DIR/gateway-b.log" "$B_PID")
echo "demo:      $DEMO (pid $DEMO_PID)"
echo "gateway A: $A (pid $A_PID)"
echo "gateway B: $B (pid $B_PID)"

CLIENT_TLS=(--cacert "$WORK/ca/ca.pem" --cert "$WORK/client/cert.pem" --key "$WORK/client/key.pem")
AUTH_HEADER="Authorization: Bearer $TOKEN"

echo "## check: gateway B refuses a call without the token, accepts it with"
if timeout 30 "$BIN/portcullis-load" --url "$B#demo__echo" "${CLIENT_TLS[@]}" \
    --args '{"message":"hi"}' --sessions 1 --requests 1 --warmup 0 >/dev/null 2>&1; then
    echo "gateway B accepted a session without a bearer token: not the setup to measure" >&2
    exit 1
fi
timeout 30 "$BIN/portcullis-load" --url "$B#demo__echo" "${CLIENT_TLS[@]}" --header "$AUTH_HEADER" \
    --args '{"message":"hi"}' --sessions 1 --requests 1 --warmup 0 >/dev/null

# Runs a driver command with stdout to JSON and the human report to TXT,
# then shows the report.
logged() { # JSON TXT COMMAND...
    local json=$1 txt=$2 rc=0
    shift 2
    "$@" >"$json" 2>"$txt" || rc=$?
    cat "$txt"
    return "$rc"
}

LOAD_LIMIT=$(awk -v d="$DURATION" -v w="$WARMUP" -v r="$ROUNDS" 'BEGIN { printf "%d", 2 * r * (d + w + 1) + 60 }')
compare() { # SESSIONS OUTFILE URL LABEL PID [driver flags...]
    local n=$1 out=$2 url=$3 label=$4 pid=$5
    shift 5
    logged "$out" "${out%.json}.txt" timeout "$LOAD_LIMIT" "$BIN/portcullis-load" \
        --url "$A#demo__echo" --label plain-anonymous \
        --compare "$url#demo__echo" --label "$label" \
        --args '{"message":"hi"}' \
        --sessions "$n" --duration "$DURATION" --warmup "$WARMUP" --rounds "$ROUNDS" \
        --cpu-pid "$A_PID" --cpu-pid "$pid" \
        --json "$@"
}

for n in "$LAT_SESSIONS" "$SESSIONS"; do
    echo "## keep-alive: $n session(s), ${ROUNDS} rounds of ${DURATION}s (after ${WARMUP}s warmup) per gateway, in turn"
    compare "$n" "$OUT_DIR/keepalive-$n.json" "$B" mtls-jwt "$B_PID" \
        --compare-header "$AUTH_HEADER" "${CLIENT_TLS[@]}"
done

if [ "$SPLIT" = 1 ]; then
    "$BIN/portcullis" serve --config "$WORK/gateway-c.toml" --listen 127.0.0.1:0 \
        --upstream "demo=$DEMO" 2>"$OUT_DIR/gateway-c.log" &
    C_PID=$!
    PIDS+=("$C_PID")
    C=$(wait_url "$OUT_DIR/gateway-c.log" "$C_PID")
    echo "## split, $LAT_SESSIONS session(s): gateway C, plain HTTP + JWT only ($C, pid $C_PID)"
    compare "$LAT_SESSIONS" "$OUT_DIR/split-jwt.json" "$C" jwt-only "$C_PID" \
        --compare-header "$AUTH_HEADER"
    stop "$C_PID"
    "$BIN/portcullis" serve --config "$WORK/gateway-d.toml" --listen 127.0.0.1:0 \
        --upstream "demo=$DEMO" 2>"$OUT_DIR/gateway-d.log" &
    D_PID=$!
    PIDS+=("$D_PID")
    D=$(wait_url "$OUT_DIR/gateway-d.log" "$D_PID")
    echo "## split, $LAT_SESSIONS session(s): gateway D, mTLS only ($D, pid $D_PID)"
    compare "$LAT_SESSIONS" "$OUT_DIR/split-mtls.json" "$D" mtls-only "$D_PID" "${CLIENT_TLS[@]}"
    stop "$D_PID"
fi

HS_LIMIT=$(awk -v d="$HS_DURATION" -v w="$HS_WARMUP" 'BEGIN { printf "%d", d + w + 60 }')
handshakes() { # NAME [driver flags...]
    local name=$1
    shift
    logged "$OUT_DIR/handshakes-$name.json" "$OUT_DIR/handshakes-$name.txt" \
        timeout "$HS_LIMIT" "$BIN/portcullis-load" --handshakes --url "$B" --cacert "$WORK/ca/ca.pem" \
        --concurrency "$HS_CONCURRENCY" --duration "$HS_DURATION" --warmup "$HS_WARMUP" \
        --cpu-pid "$B_PID" --json "$@"
}
echo "## full TLS handshakes against gateway B, $HS_CONCURRENCY workers, ${HS_DURATION}s"
handshakes mtls --cert "$WORK/client/cert.pem" --key "$WORK/client/key.pem"
handshakes tls
handshakes mtls-request --cert "$WORK/client/cert.pem" --key "$WORK/client/key.pem" \
    --handshake-request --header "$AUTH_HEADER"

echo "## summary"
for n in "$LAT_SESSIONS" "$SESSIONS"; do
    echo "$n session(s): $(grep '^== mtls-jwt vs' "$OUT_DIR/keepalive-$n.txt" | sed 's/^== //')"
done
if [ "$SPLIT" = 1 ]; then
    for f in jwt mtls; do
        echo "$LAT_SESSIONS session(s): $(grep -- '-only vs' "$OUT_DIR/split-$f.txt" | sed 's/^== //')"
    done
fi
for name in mtls tls mtls-request; do
    echo "$name: $(grep -E 'per second|server CPU' "$OUT_DIR/handshakes-$name.txt" | sed 's/^ *//' | paste -sd ';' -)"
done
echo "results: $OUT_DIR"
echo "## done"
