#!/usr/bin/env bash
# Supply chain and hygiene checks, part of the test command (scripts/test.sh):
#
#   1. every crate root forbids unsafe code (#![forbid(unsafe_code)]);
#   2. cargo deny (deny.toml): licences, banned crates, wildcard versions,
#      sources (crates.io only), duplicate versions (reported);
#   3. advisories (cargo deny check advisories) when a RustSec database is
#      available offline: ADVISORY_DB=/path/to/advisory-db, or the default
#      ~/.cargo/advisory-dbs. The database lives on GitHub, which this
#      project's machines cannot reach; without it the step says so and is
#      skipped (set REQUIRE_ADVISORIES=1 to make that a failure).
#
# cargo-deny is installed into .deps/cargo (crates.io) on first use.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

fail=0

echo "-- unsafe code: every crate root must forbid it"
roots=$(find crates bench -path '*/target' -prune -o \( -path '*/src/lib.rs' -o -path '*/src/main.rs' \) -print | sort)
for f in $roots; do
    if ! grep -q '^#!\[forbid(unsafe_code)\]' "$f"; then
        echo "  $f: missing #![forbid(unsafe_code)]"
        fail=1
    fi
done
echo "  $(echo "$roots" | wc -w) crate roots forbid unsafe code"
# The one exception: a fuzz target's entry point is the exported extern "C"
# symbol libFuzzer calls, which libfuzzer-sys's fuzz_target! macro writes
# (an unsafe attribute). The harnesses themselves may hold no unsafe code.
if [[ -d fuzz/fuzz_targets ]]; then
    if grep -n '\bunsafe\b' fuzz/fuzz_targets/*.rs | grep -v '^[^:]*:[0-9]*:\s*//'; then
        echo "  fuzz targets: unsafe code in a harness"
        fail=1
    fi
    echo "  $(ls fuzz/fuzz_targets/*.rs | wc -l) fuzz harnesses hold no unsafe code"
fi

DENY="$ROOT/.deps/cargo/bin/cargo-deny"
if [[ ! -x "$DENY" ]]; then
    echo "-- installing cargo-deny into .deps/cargo"
    cargo install --locked --quiet --root "$ROOT/.deps/cargo" cargo-deny@0.20.2
fi

echo "-- cargo deny: licences, bans, sources"
"$DENY" --log-level error check --hide-inclusion-graph licenses bans sources || fail=1
dups=$("$DENY" --log-level warn check --hide-inclusion-graph bans 2>&1 | grep -c 'found 2 duplicate\|found [0-9]* duplicate' || true)
echo "  crates present in more than one version: $dups (reported, not refused; see cargo tree -d)"

echo "-- advisories"
db="${ADVISORY_DB:-$HOME/.cargo/advisory-dbs}"
if [[ -d "$db" ]] && [[ -n "$(ls -A "$db" 2>/dev/null)" ]]; then
    "$DENY" check --disable-fetch advisories || fail=1
else
    echo "  skipped: no RustSec advisory database at $db (it is fetched from GitHub, unreachable here)"
    [[ -z "${REQUIRE_ADVISORIES:-}" ]] || fail=1
fi

if (( fail )); then
    echo "supply-chain: FAILED"
    exit 1
fi
echo "supply-chain: ok"
