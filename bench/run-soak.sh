#!/usr/bin/env bash
# Portcullis soak: the soak test (crates/portcullis/tests/soak.rs) at a
# larger size, against the release build, with its numbers printed.
#
# The test starts the release gateway on loopback with two stdio upstreams
# (the demo server, and the demo server behind a shell loop that exits on a
# marker), drives SOAK_REQUESTS mixed tool calls from SOAK_SESSIONS
# concurrent clients, injects SOAK_CRASHES upstream crashes, then checks
# the audit log call by call, `audit verify`, the gateway's RSS, its file
# descriptors and its open sessions. It fails (exit non-zero) on any lost
# record, mismatch, unanswered call, leak or bound exceeded.
#
# Knobs (environment):
#   SOAK_REQUESTS=1000000 SOAK_SESSIONS=64 SOAK_CRASHES=7 SOAK_CHURN=150
#   OUT_DIR=target/bench          where the full output goes (soak.txt)
#
# Crashes closer than 30 s apart make the gateway's restart backoff double
# (100 ms, 200 ms, … up to 30 s; documented in upstream/stdio.rs), and the
# calls to that upstream wait for it: keep SOAK_CRASHES at about one per
# half minute of run time.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

export SOAK_REQUESTS=${SOAK_REQUESTS:-1000000}
export SOAK_SESSIONS=${SOAK_SESSIONS:-64}
export SOAK_CRASHES=${SOAK_CRASHES:-7}
export SOAK_CHURN=${SOAK_CHURN:-150}
OUT_DIR=${OUT_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/bench}
mkdir -p "$OUT_DIR"

# The machine header (no build there: the test build below is the release one).
source "$ROOT/bench/lib.sh"
SKIP_BUILD=1 bench_start

echo "## build (release)"
cargo test --release -p portcullis --test soak --no-run

echo "## soak: $SOAK_REQUESTS calls, $SOAK_SESSIONS sessions, $SOAK_CRASHES crashes, sessions reopened every $SOAK_CHURN calls"
status=0
cargo test --release -p portcullis --test soak -- --nocapture >"$OUT_DIR/soak.txt" 2>&1 || status=$?
grep '^soak:' "$OUT_DIR/soak.txt" || true
if [ "$status" != 0 ]; then
    echo "## FAILED (exit $status); the failure:"
    grep -A3 'panicked at' "$OUT_DIR/soak.txt" | cut -c1-2000 || tail -n 40 "$OUT_DIR/soak.txt"
fi
echo "full output: $OUT_DIR/soak.txt"
exit "$status"
