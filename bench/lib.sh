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
