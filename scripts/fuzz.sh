#!/usr/bin/env bash
# Fuzzing with cargo fuzz (libFuzzer) on stable Rust: builds every target of
# fuzz/ and runs each for FUZZ_SECONDS (default 10); fails if any target
# crashes (panic, failed assertion, timeout, out of memory). docs/fuzzing.md
# lists the targets and what each asserts.
#
#   scripts/fuzz.sh                     every target, 10 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh    longer runs
#   scripts/fuzz.sh dlp sse             only these targets
#   FUZZ_SECONDS=3600 FUZZ_CODEGEN_UNITS=1 FUZZ_OPT_LEVEL=3 scripts/fuzz.sh dlp
#                                       a long run, built for speed
#
# cargo-fuzz is installed into .deps/cargo when missing. The committed seeds
# (fuzz/corpus/<target>) are read only; what a run learns is kept in
# fuzz/target/corpus/<target> for the next run. Crash inputs land in
# fuzz/artifacts/<target>/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${FUZZ_SECONDS:-10}"
deps="$root/.deps/cargo"
export PATH="$deps/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz into .deps/cargo" >&2
  cargo install --locked --quiet --root "$deps" cargo-fuzz
fi

# Stable rustc: no sanitizer (AddressSanitizer needs nightly; the library
# crates forbid unsafe code, and a panic is what the targets look for);
# debug assertions on, so arithmetic overflow panics too. The build is most
# of the cost (coverage instrumentation on ~300 crates): by default 16
# codegen units and opt-level 1 keep it cheap on 2 cores; long runs are
# worth FUZZ_CODEGEN_UNITS=1 FUZZ_OPT_LEVEL=3 (cargo-fuzz's own defaults).
export CARGO_PROFILE_RELEASE_OPT_LEVEL="${FUZZ_OPT_LEVEL:-1}"
flags=(-O --debug-assertions --sanitizer none --fuzz-dir fuzz
       --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin="fuzz/target/$triple/release"

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

echo "fuzz: building ${#targets[@]} target(s)" >&2
start=$SECONDS
if [ "$#" -gt 0 ]; then
  for t in "${targets[@]}"; do
    cargo fuzz build "${flags[@]}" "$t"
  done
else
  cargo fuzz build "${flags[@]}"
fi
echo "fuzz: built in $((SECONDS - start)) s" >&2

failed=()
summary=()
for t in "${targets[@]}"; do
  work="fuzz/target/corpus/$t"
  mkdir -p "$work" "fuzz/corpus/$t"
  log="fuzz/target/fuzz-$t.log"
  echo "fuzz: $t for ${seconds} s" >&2
  mkdir -p "fuzz/artifacts/$t"
  # The binary itself rather than `cargo fuzz run`, which would rebuild
  # first if a crate changed since the build above.
  if "$bin/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$seconds" \
      -timeout=30 -print_final_stats=1 "$work" "fuzz/corpus/$t" >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    grep -E "panicked|ERROR: libFuzzer|Test unit written|SUMMARY" "$log" >&2 || tail -20 "$log" >&2
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  summary+=("$(printf '%-16s %-6s %10s execs %8s exec/s' "$t" "$status" "${runs:-?}" "${rate:-?}")")
done

printf 'fuzz: %s\n' "${summary[@]}" >&2
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/, logs in fuzz/target/fuzz-<target>.log)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s) ran ${seconds} s each without a crash" >&2
