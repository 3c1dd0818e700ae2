"""Building blocks of the attack scenarios (tests/attacks).

- ``pki`` / ``agents``: one CA per run (``portcullis ca init``, through
  tests/e2e/identity_fixtures.py) and an X.509-SVID per named agent
  (``spiffe://example.org/agent/NAME``), issued on first use. Every scenario
  uses its own agent names, so one scenario's risk score, rate buckets or
  quarantines never leak into another's.
- ``Issuer``: a signing key of our own, its JWKS file for ``[auth.oauth]`` /
  ``[auth.posture]``, and JWTs minted with it (PyJWT, RS256). An attacker's
  issuer is just another ``Issuer`` claiming the same ``kid``.
- ``start_gateway``: ``portcullis serve --config`` with TLS (client
  certificates from the CA, trust domain example.org), an audit log, a state
  folder, optionally the admin listener (dev admin CA), and stdio upstreams,
  each behind a ``tee`` that records every byte the gateway sends it.
- ``connect``: the official SDK ``Client`` over Streamable HTTP with an
  agent certificate, optional bearer token and extra headers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import jwt
import mcp_types as types
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import GATEWAY_READY, REPO, STARTUP_TIMEOUT, Proc, gateway_bin, spawn, wait_for_line
from identity_fixtures import TRUST_DOMAIN, Leaf, Pki, _run, fresh_pki, tls_context
from test_inspect import all_tools as tool_names  # noqa: F401 (re-exported)
from test_inspect import text_of

PEERS = Path(__file__).resolve().parent / "peers"
MALICIOUS_PY = REPO / "tests" / "peers" / "malicious_py.py"
ADMIN_READY = re.compile(r"admin API on (https://\S+)")

# JSON-RPC codes of README's "Errors a client can get".
INVALID_PARAMS = -32602
UPSTREAM_DOWN = -32010
UPSTREAM_TIMEOUT = -32011
BREAKER_OPEN = -32013
RATE_LIMITED = -32029
POLICY_DENIED = -32030
QUARANTINED = -32032
RESULT_WITHHELD = -32033


def gateway_bug(reason: str) -> pytest.MarkDecorator:
    """A known gateway bug: the test fails (an assertion) until it is fixed,
    then turns red (strict) so the marker is removed."""
    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"gateway bug: {reason}")


def agent_id(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/agent/{name}"


def peer(name: str) -> list[str]:
    """argv of a peer under tests/attacks/peers (stdio)."""
    return [sys.executable, str(PEERS / f"{name}.py"), "stdio"]


# ------------------------------------------------------------------ PKI ----


class Agents:
    """Agent certificates from the run's CA, issued on first use."""

    def __init__(self, pki: Pki, root: Path) -> None:
        self.pki = pki
        self.root = root
        self._leaves: dict[str, Leaf] = {}

    def __call__(self, name: str) -> Leaf:
        if name not in self._leaves:
            self._leaves[name] = self.issue(agent_id(name), name)
        return self._leaves[name]

    def issue(self, spiffe_id: str, folder: str, *sans: str, ca_dir: Path | None = None) -> Leaf:
        """A certificate for any SPIFFE ID (servers: pass ``--dns``/``--ip`` SANs),
        from the run's CA or the CA in ``ca_dir``."""
        ca = ca_dir or self.pki.ca.parent
        out = self.root / folder
        _run([str(gateway_bin()), "cert", "issue", "--ca", str(ca), "--spiffe-id", spiffe_id, "--ttl", "1h", *sans, "--out", str(out)])
        return Leaf(out / "cert.pem", out / "key.pem", ca / "ca.pem")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return fresh_pki(tmp_path_factory, "attacks-pki")


@pytest.fixture(scope="session")
def agents(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Agents:
    return Agents(pki, tmp_path_factory.mktemp("attacks-agents"))


# --------------------------------------------------------------- tokens ----


class Issuer:
    """An RS256 key, its JWKS file (``kid`` fixed), and tokens signed with it."""

    def __init__(self, issuer: str, jwks: Path, kid: str = "attacks-1") -> None:
        self.issuer = issuer
        self.jwks = jwks
        self.kid = kid
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
        jwks.write_text(json.dumps({"keys": [jwk]}))

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def token(self, sub: str, aud: str, *, scope: str = "mcp", ttl: int = 600, **over: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": sub, "aud": aud, "iat": now, "nbf": now, "exp": now + ttl, "scope": scope}
        claims.update(over)
        return self.sign(claims)


# -------------------------------------------------------------- gateway ----


def q(s: str | Path) -> str:
    return json.dumps(str(s))  # a JSON string is a valid TOML basic string here


def segment(name: str, label: str, *tools: str) -> str:
    """A ``[[segment]]`` table: ``tools`` (client-facing names) get ``label``."""
    return f"[[segment]]\nname = {q(name)}\nlabels = [{q(label)}]\ntools = [{', '.join(q(t) for t in tools)}]\n"


@dataclass
class Upstream:
    """A stdio upstream (``argv``) or an HTTP one (``url``); ``extra`` is TOML
    added to its ``[[upstream]]`` table."""

    name: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    extra: str = ""
    url: str | None = None


@dataclass
class DemoServer:
    """``portcullis demo-server --http``: what it received is in ``log``
    (one JSON line per request: method, authorization, message)."""

    url: str
    proc: Proc
    log: Path

    def requests(self) -> list[dict[str, Any]]:
        try:
            return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []


def start_demo(name: str, work: Path, logs_dir: Path, tls: Leaf | None = None) -> DemoServer:
    log = work / f"{name}-demo.jsonl"
    argv = [str(gateway_bin()), "demo-server", "--http", "127.0.0.1:0"]
    if tls is not None:
        argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    proc = spawn(f"demo-{name}", argv, logs_dir / f"demo-attacks-{name}.log", env={"PORTCULLIS_DEMO_LOG": str(log)})
    try:
        url = wait_for_line(proc, GATEWAY_READY, timeout=STARTUP_TIMEOUT).group(1)
    except BaseException:
        proc.stop()
        raise
    return DemoServer(url, proc, log)


@dataclass
class AttackGateway:
    url: str
    proc: Proc
    work: Path
    ca: Path
    audit: Path
    state: Path
    admin: str | None

    # -- what upstreams received (tee of their stdin) --
    def received(self, upstream: str) -> str:
        try:
            return (self.work / f"{upstream}-received.jsonl").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def received_messages(self, upstream: str) -> list[dict[str, Any]]:
        out = []
        for line in self.received(upstream).splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def calls(self, upstream: str) -> list[dict[str, Any]]:
        """``params`` of every tools/call the upstream received."""
        return [m.get("params", {}) for m in self.received_messages(upstream) if m.get("method") == "tools/call"]

    # -- audit log --
    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.audit.read_text().splitlines()
        except FileNotFoundError:
            return []
        recs = [json.loads(line) for line in lines if line.strip()]
        return [r for r in recs if kind is None or r.get("kind") == kind]

    def wait_records(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> list[dict[str, Any]]:
        """Records matching ``pred``, polled until there is one (records made
        outside a request, e.g. a re-list on list_changed, are written later)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records() if pred(r)]
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def decisions(self, agent: str | None = None, tool: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records("decision")
            if (agent is None or r.get("identity", {}).get("agent") == agent_id(agent))
            and (tool is None or r.get("tool") == tool)
        ]

    def findings(self, detector: str) -> list[dict[str, Any]]:
        return [r for r in self.records("finding") if r.get("detector") == detector]

    def log_text(self) -> str:
        return self.proc.log.read_text(errors="replace")

    # -- admin CLI --
    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``portcullis ARGS… --admin URL`` with the state folder's admin client certificate."""
        assert self.admin, "this gateway has no admin listener"
        env = {**os.environ, "PORTCULLIS_STATE_DIR": str(self.state)}
        return subprocess.run([str(gateway_bin()), *args, "--admin", self.admin], capture_output=True, text=True, timeout=30, env=env, cwd=REPO)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.popen.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]


def tee(received: Path, argv: list[str]) -> list[str]:
    """``argv`` with its stdin appended to ``received`` (what the gateway sent it)."""
    return ["sh", "-c", 'tee -a "$0" | exec "$@"', str(received), *argv]


def start_gateway(
    name: str,
    work: Path,
    logs_dir: Path,
    pki: Pki,
    upstreams: list[Upstream],
    *,
    body: str = "",
    auth: str = 'require = "certificate"',
    tls_mode: str = "required",
    admin: bool = False,
) -> AttackGateway:
    """``portcullis serve`` on a free loopback port; see the module doc."""
    binary = gateway_bin()
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state"
    audit = work / "audit.jsonl"
    ups = []
    for u in upstreams:
        if u.url is not None:
            ups.append(f"[[upstream]]\nname = {q(u.name)}\nurl = {q(u.url)}\n{u.extra}\n")
            continue
        received = work / f"{u.name}-received.jsonl"
        received.touch()
        env = ", ".join(f"{k} = {q(v)}" for k, v in u.env.items())
        ups.append(
            f"[[upstream]]\nname = {q(u.name)}\ncommand = [{', '.join(q(a) for a in tee(received, u.argv))}]\n"
            f"env = {{ {env} }}\n{u.extra}\n"
        )
    config = work / "portcullis.toml"
    config.write_text(
        f"""\
state_dir = {q(state)}

[audit]
path = {q(audit)}

[listen]
addr = "127.0.0.1:0"

[listen.tls]
mode = {q(tls_mode)}
cert = {q(pki.gateway.cert)}
key = {q(pki.gateway.key)}
client_ca = [{q(pki.ca)}]
trust_domains = [{q(TRUST_DOMAIN)}]

[auth]
{auth}

{body}

{"".join(ups)}"""
    )
    argv = [str(binary), "serve", "--config", str(config)]
    if admin:
        argv += ["--admin", "127.0.0.1:0"]
    proc = spawn(f"portcullis-{name}", argv, logs_dir / f"gateway-attacks-{name}.log", env={"PORTCULLIS_LOG": "info", "PORTCULLIS_STATE_DIR": str(state)})
    try:
        url = wait_for_line(proc, GATEWAY_READY, timeout=STARTUP_TIMEOUT).group(1)
        # stdio upstreams start in the background; a session opened before
        # one is up leaves it out, so wait for every one of them.
        for u in (u for u in upstreams if u.url is None):
            wait_for_line(proc, re.compile(rf".*stdio server started upstream={re.escape(u.name)} "), timeout=STARTUP_TIMEOUT)
        admin_url = None
        if admin:
            admin_url = wait_for_line(proc, re.compile(r".*" + ADMIN_READY.pattern), timeout=STARTUP_TIMEOUT).group(1)
    except BaseException:
        proc.stop()
        raise
    return AttackGateway(url=url, proc=proc, work=work, ca=pki.ca, audit=audit, state=state, admin=admin_url)


def gateway_fixture(gw: AttackGateway) -> Iterator[AttackGateway]:
    """For module fixtures: yield the gateway, stop it afterwards."""
    try:
        yield gw
    finally:
        gw.proc.stop()


# --------------------------------------------------------------- client ----


@asynccontextmanager
async def connect(
    gw: AttackGateway,
    cert: Leaf | None,
    *,
    era: str = "legacy",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    seen: list[httpx2.Response] | None = None,
    timeout: float = 20,
) -> AsyncIterator[Client]:
    """The official SDK client as agent ``cert`` (mTLS), optionally with a bearer
    token and extra headers; HTTP responses are appended to ``seen``."""
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"

    async def record(response: httpx2.Response) -> None:
        if seen is not None:
            seen.append(response)

    async with httpx2.AsyncClient(
        verify=tls_context(gw.ca, cert), headers=hdrs, timeout=httpx2.Timeout(30.0), event_hooks={"response": [record]}
    ) as http:
        async with Client(streamable_http_client(gw.url, http_client=http), mode=era, read_timeout_seconds=timeout, cache=None) as client:
            yield client


async def outcome(request: Awaitable[Any]) -> Any:
    """The result of a request, or the ``MCPError`` it was answered with
    (returned, not raised, so checks run outside the client's task group)."""
    try:
        return await request
    except MCPError as e:
        return e


def error_of(result: Any, what: str) -> MCPError:
    if not isinstance(result, MCPError):
        pytest.fail(f"{what} was not refused: {result!r}")
    return result


def text(result: Any) -> str:
    assert isinstance(result, types.CallToolResult), f"expected a result, got {result!r}"
    return text_of(result)
