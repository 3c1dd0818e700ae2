"""Fixtures for the Portcullis end-to-end tests.

Every test runs against a *target*, parametrized over:

- ``route``:    ``direct`` (server-everything itself, no gateway: proves the
                tests against the real peer), ``direct-py`` (tests/peers/everything_py.py,
                a Python-SDK stand-in for the same names that also speaks 2026-07-28:
                proves the 2026-era test code), or ``gateway`` (the Portcullis binary
                in front of server-everything);
- ``upstream``: how the peer (server-everything) is reached: ``stdio`` or
                ``http`` (Streamable HTTP);
- ``era``:      the client protocol era: ``legacy`` (initialize handshake) or
                ``2026-07-28`` (the stateless per-request envelope).

server-everything speaks only the handshake era, so ``direct`` x ``2026-07-28``
is not generated (``direct-py`` covers it); through the gateway that combination is
the era-translation test.

Environment:
- ``PORTCULLIS_BIN``: gateway binary (default ``target/debug/portcullis``).
  Missing binary: gateway tests are skipped locally and FAIL under ``CI=true``.
- ``E2E_DEPS``: dependency folder (default ``.deps`` at the repo root,
  filled by ``scripts/install-test-deps.sh``).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parents[2]
DEPS = Path(os.environ.get("E2E_DEPS", REPO / ".deps"))
NPM = DEPS / "npm" / "node_modules"
EVERYTHING_JS = NPM / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
EVERYTHING_PY = REPO / "tests" / "peers" / "everything_py.py"
NODE = os.environ.get("E2E_NODE", "node")

UPSTREAM_NAME = "everything"
"""Name the gateway gives the upstream; tools show up as ``everything__<tool>``."""

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

STARTUP_TIMEOUT = 30.0
GATEWAY_READY = re.compile(r"^listening on (\S+)\s*$")


# ---------------------------------------------------------------- helpers ----


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) if lines else "(log is empty)"


@dataclass
class Proc:
    """A child process started by a fixture, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        # The child runs in its own process group (start_new_session), so its
        # own children (e.g. the gateway's stdio upstream) are stopped too.
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=5)


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=REPO,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def wait_for_line(proc: Proc, pattern: re.Pattern[str], timeout: float = STARTUP_TIMEOUT) -> re.Match[str]:
    """Poll the process's log until a line matches; fail with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in proc.log.read_text(errors="replace").splitlines():
            m = pattern.match(line)
            if m:
                return m
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode} before it was ready:\n{_tail(proc.log)}"
            )
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready after {timeout}s:\n{_tail(proc.log)}")


def wait_for_port(port: int, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def everything_stdio_argv() -> list[str]:
    return [NODE, str(EVERYTHING_JS), "stdio"]


def gateway_bin() -> Path:
    p = Path(os.environ.get("PORTCULLIS_BIN", "target/debug/portcullis"))
    return p if p.is_absolute() else REPO / p


def require_or_skip(condition: bool, why: str) -> None:
    """Missing prerequisite: FAIL under CI=true, skip locally."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{why} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(why)


# -------------------------------------------------------------- processes ----


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-logs")


@pytest.fixture(scope="session")
def everything_js() -> Path:
    require_or_skip(
        EVERYTHING_JS.is_file(),
        f"server-everything not installed at {EVERYTHING_JS}; run scripts/install-test-deps.sh",
    )
    return EVERYTHING_JS


def _serve_http(name: str, argv: list[str], logs_dir: Path) -> Iterator[str]:
    """Start a peer's Streamable HTTP server on a free loopback port; yield its /mcp URL."""
    last_error: Exception | None = None
    for attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        proc = spawn(name, argv, logs_dir / f"{name}-{attempt}.log", env={"PORT": str(port)})
        try:
            wait_for_line(proc, re.compile(r".*listening on port \d+"))
            wait_for_port(port)
        except RuntimeError as e:
            proc.stop()
            last_error = e
            continue
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            proc.stop()
        return
    raise RuntimeError(f"{name} did not start: {last_error}")


@pytest.fixture(scope="session")
def everything_http(everything_js: Path, logs_dir: Path) -> Iterator[str]:
    """server-everything over Streamable HTTP; yields its /mcp URL."""
    yield from _serve_http("everything-http", [NODE, str(everything_js), "streamableHttp"], logs_dir)


@pytest.fixture(scope="session")
def everything_py_http(logs_dir: Path) -> Iterator[str]:
    """The Python stand-in (tests/peers/everything_py.py) over Streamable HTTP; serves both eras."""
    yield from _serve_http("everything-py-http", [sys.executable, str(EVERYTHING_PY), "streamableHttp"], logs_dir)


@dataclass
class Gateway:
    url: str
    proc: Proc


_gateways: dict[str, Gateway] = {}
_gateway_failures: dict[str, str] = {}


def _start_gateway(upstream_args: list[str], log: Path) -> Gateway:
    binary = gateway_bin()
    require_or_skip(
        binary.is_file() and os.access(binary, os.X_OK),
        f"gateway binary not found at {binary} (build it, or set PORTCULLIS_BIN)",
    )
    proc = spawn("portcullis", [str(binary), "serve", "--listen", "127.0.0.1:0", "--allow-anonymous-loopback", *upstream_args], log)
    try:
        m = wait_for_line(proc, GATEWAY_READY)
    except RuntimeError:
        proc.stop()
        raise
    return Gateway(url=m.group(1), proc=proc)


@pytest.fixture(scope="session")
def gateway_factory(request: pytest.FixtureRequest, logs_dir: Path) -> Iterator[Callable[[str], Gateway]]:
    """``gateway_factory(kind)``: the gateway in front of server-everything reached over
    ``kind`` (``stdio`` -> ``--upstream-cmd``, ``http`` -> ``--upstream``). Started once
    per kind, stopped at session end; a failed start is remembered, not retried."""

    def get(kind: str) -> Gateway:
        gw = _gateways.get(kind)
        if gw is not None and gw.proc.alive():
            return gw
        if kind in _gateway_failures:
            # Don't pay the startup timeout again for every test.
            raise RuntimeError(f"gateway ({kind} upstream) failed to start earlier: {_gateway_failures[kind]}")
        request.getfixturevalue("everything_js")  # skip/fail early when deps are missing
        if kind == "stdio":
            args = ["--upstream-cmd", f"{UPSTREAM_NAME}={shlex.join(everything_stdio_argv())}"]
        elif kind == "py-stdio":
            args = ["--upstream-cmd", f"{UPSTREAM_NAME}={shlex.join([sys.executable, str(EVERYTHING_PY), 'stdio'])}"]
        elif kind == "py-http":
            args = ["--upstream", f"{UPSTREAM_NAME}={request.getfixturevalue('everything_py_http')}"]
        else:
            args = ["--upstream", f"{UPSTREAM_NAME}={request.getfixturevalue('everything_http')}"]
        try:
            gw = _start_gateway(args, logs_dir / f"gateway-{kind}.log")
        except RuntimeError as e:
            _gateway_failures[kind] = str(e)
            raise
        _gateways[kind] = gw
        return gw

    yield get
    for gw in _gateways.values():
        gw.proc.stop()
    _gateways.clear()
    _gateway_failures.clear()


# ----------------------------------------------------------------- target ----


@dataclass
class Target:
    """Where a test's client connects, and how names look there."""

    route: str
    upstream: str
    era: str
    server: str | StdioServerParameters
    prefix: str
    log: Path | None = None
    notes: list[str] = field(default_factory=list)

    def name(self, bare: str) -> str:
        """The client-side name of a server-everything tool or prompt."""
        return self.prefix + bare


ROUTES = ("direct", "direct-py", "gateway", "gateway-py")
UPSTREAMS = ("stdio", "http")
ERAS = ("legacy", "2026-07-28")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that uses a target over route x upstream x era.

    server-everything speaks only the handshake era, so the pair
    (direct, 2026-07-28) is not generated; direct-py covers that era.
    """
    if "route" not in metafunc.fixturenames:
        return
    combos = [
        (r, u, e)
        for r in ROUTES
        for u in UPSTREAMS
        for e in ERAS
        if not (r == "direct" and e != "legacy")
    ]
    metafunc.parametrize(("route", "upstream", "era"), combos, ids=["-".join(c) for c in combos])


@pytest.fixture
def prefix(route: str) -> str:
    """Tool/prompt name prefix: none directly, ``<server>__`` through the gateway."""
    return f"{UPSTREAM_NAME}__" if route.startswith("gateway") else ""


@pytest.fixture
def target(
    request: pytest.FixtureRequest,
    route: str,
    upstream: str,
    era: str,
    prefix: str,
    everything_js: Path,
    gateway_factory: Callable[[str], Gateway],
) -> Target:
    if route == "direct-py":
        if upstream == "stdio":
            server: str | StdioServerParameters = StdioServerParameters(
                command=sys.executable, args=[str(EVERYTHING_PY), "stdio"], cwd=str(REPO)
            )
        else:
            server = request.getfixturevalue("everything_py_http")
        return Target(route, upstream, era, server, prefix)

    if route == "direct":
        if upstream == "stdio":
            server = StdioServerParameters(
                command=NODE, args=[str(everything_js), "stdio"], cwd=str(REPO)
            )
        else:
            server = request.getfixturevalue("everything_http")
        return Target(route, upstream, era, server, prefix)

    # gateway-py: the gateway in front of the Python stand-in, which over
    # HTTP speaks 2026-07-28 (so a legacy client exercises the gateway's
    # input_required -> elicitation bridge and a 2026 client the pass-through).
    gw = gateway_factory(("py-" if route == "gateway-py" else "") + upstream)
    return Target(route, upstream, era, gw.url, prefix, log=gw.proc.log)


# ----------------------------------------------------------------- client ----


@dataclass
class Recorder:
    """What the client's callbacks saw."""

    elicitations: list[types.ElicitRequestParams] = field(default_factory=list)
    progress: list[tuple[float, float | None, str | None]] = field(default_factory=list)
    elicit_reply: types.ElicitResult = field(
        default_factory=lambda: types.ElicitResult(action="decline")
    )

    async def on_elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitations.append(params)
        return self.elicit_reply

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total, message))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def connect(target: Target, recorder: Recorder) -> Callable[..., Any]:
    """``async with connect() as client:`` -- an ``mcp.Client`` for the target, in the target's era.

    The elicitation callback is always installed (server-everything registers
    its elicitation tool only for clients that declare the capability).
    """

    @asynccontextmanager
    async def _connect(**kwargs: Any) -> AsyncIterator[Client]:
        kwargs.setdefault("elicitation_callback", recorder.on_elicit)
        kwargs.setdefault("read_timeout_seconds", 20)
        async with Client(target.server, mode=target.era, **kwargs) as client:
            yield client

    return _connect


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failing gateway test, attach the tail of the gateway's log (and of any
    other process a fixture of the test holds as ``.proc``)."""
    report = yield
    if report.when == "call" and report.failed:
        target = getattr(item, "funcargs", {}).get("target")
        if isinstance(target, Target) and target.log is not None:
            report.sections.append(("gateway log (tail)", _tail(target.log, 40)))
        # Fixtures holding their own process (e.g. test_identity.py's gateway).
        for name, value in getattr(item, "funcargs", {}).items():
            proc = getattr(value, "proc", None)
            if isinstance(proc, Proc):
                report.sections.append((f"{name}: {proc.name} log (tail)", _tail(proc.log, 40)))
    return report
