# Shared by the bench/run*.sh scripts (sourced, not run).

# Waits for "listening on http(s)://…" in a log file; prints the URL.
wait_url() {
    local log=$1 pid=$2 i url
    for i in $(seq 1 100); do
        url=$(grep -Eo 'listening on https?://[^ ]*' "$log" 2>/dev/null | head -n1 | sed 's/^listening on //' || true)
        if [ -n "$url" ]; then
            echo "$url"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "process $pid exited early; log:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "timed out waiting for $log" >&2
    return 1
}

# The p50 (µs) of target LABEL in a portcullis-load human report FILE.
p50_of() { # FILE LABEL
    awk -v l="== $2:" 'index($0, l) == 1 { f = 1; next } f && /latency/ { for (i = 1; i <= NF; i++) if ($i == "p50") { print $(i + 1); exit } }' "$1"
}

# Added p50 of OTHER over BASE at LAT_SESSIONS, in ROUNDS short rounds of
# ROUND_SECS that alternate which target goes first (the driver measures
# its targets one after the other, and an A/A comparison differs by up to
# ~20 µs by order alone); prints each round and the median difference, the
# figure to quote. Needs BIN, LOAD_LIMIT, WORK, LAT_SESSIONS; ARGS and TOOL
# (default '{"message":"hi"}' and demo__echo) and EXTRA_LOAD_FLAGS (array).
ab_rounds() { # BASE_URL BASE_LABEL OTHER_URL OTHER_LABEL
    local base_url=$1 base_label=$2 other_url=$3 other_label=$4
    local tool=${TOOL:-demo__echo} args=${ARGS:-'{"message":"hi"}'}
    local r first second a b diffs=() base other
    for r in $(seq 1 "${ROUNDS:-6}"); do
        if (( r % 2 )); then
            first=$base_url; second=$other_url; a=$base_label; b=$other_label
        else
            first=$other_url; second=$base_url; a=$other_label; b=$base_label
        fi
        timeout "$LOAD_LIMIT" "$BIN/portcullis-load" --url "$first#$tool" --label "$a" \
            --compare "$second#$tool" --label "$b" --args "$args" \
            ${EXTRA_LOAD_FLAGS[@]+"${EXTRA_LOAD_FLAGS[@]}"} \
            --sessions "$LAT_SESSIONS" --duration "${ROUND_SECS:-5}" --warmup 1 >"$WORK/round.txt" 2>&1
        base=$(p50_of "$WORK/round.txt" "$base_label")
        other=$(p50_of "$WORK/round.txt" "$other_label")
        diffs+=("$((other - base))")
        echo "round $r ($a first): $base_label p50 ${base} µs, $other_label p50 ${other} µs, added $((other - base)) µs"
    done
    printf '%s\n' "${diffs[@]}" | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "median added p50 over %d rounds: %+g µs\n", NR, m }'
}

# Common start of a bench script: a scratch WORK folder and a PIDS list
# whose processes are stopped (and WORK removed) on exit; the release
# build unless SKIP_BUILD=1; the machine header. Needs ROOT.
bench_start() {
    WORK=$(mktemp -d)
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        echo "## build"
        cargo build --release -p portcullis -p portcullis-bench
    fi
    echo "## machine"
    echo "cores: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "kernel: $(uname -sr); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "source: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "not a git checkout")"
}

bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
