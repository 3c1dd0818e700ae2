"""Containment end to end (issue 6): an operator quarantines one agent with the
``portcullis`` CLI over the admin listener's mTLS; the agent's open SSE stream is
closed at once, its next message in the same session is refused, a new session
is refused, and another agent — a real ``mcp`` SDK client — keeps working.
Nothing the quarantined agent sends after that reaches server-everything.
The kill switch stops everyone until it is turned off. A server-everything
whose long-running tool outlives the call timeout opens its circuit breaker:
the next call fails fast without reaching it, and a probe after the cool-down
closes it again.

Cast (loopback): a CA and two agent X.509-SVIDs from ``portcullis ca init`` /
``cert issue``; ``portcullis serve`` with client certificates required and an
admin listener (dev admin CA and client certificate in its state folder);
server-everything over stdio behind a ``tee`` that records what it receives.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import GATEWAY_READY, NODE, STARTUP_TIMEOUT, Proc, gateway_bin, spawn, wait_for_line
from identity_fixtures import AGENT_ID, TRUST_DOMAIN, Leaf, Pki, _run, fresh_pki, mcp_client, tls_context

pytestmark = pytest.mark.anyio

OTHER_ID = f"spiffe://{TRUST_DOMAIN}/agent/other"
ADMIN_READY = re.compile(r"admin API on (https://\S+)")
ECHO = "everything__echo"
PROTO = "2025-11-25"


@dataclass
class ContainGateway:
    url: str
    admin: str
    proc: Proc
    received: Path
    state: Path
    audit: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``portcullis ARGS… --admin URL`` with the state folder's admin client certificate."""
        env = {**os.environ, "PORTCULLIS_STATE_DIR": str(self.state)}
        return subprocess.run(
            [str(gateway_bin()), *args, "--admin", self.admin], capture_output=True, text=True, timeout=30, env=env
        )

    def audit_records(self) -> list[dict[str, object]]:
        try:
            lines = self.audit.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return fresh_pki(tmp_path_factory, "contain-pki")


@pytest.fixture(scope="module")
def other(pki: Pki) -> Leaf:
    out = pki.ca.parent.parent / "other"
    _run([str(gateway_bin()), "cert", "issue", "--ca", str(pki.ca.parent), "--spiffe-id", OTHER_ID, "--ttl", "1h", "--out", str(out)])
    return Leaf(out / "cert.pem", out / "key.pem", pki.ca)


@pytest.fixture(scope="module")
def gateway(
    pki: Pki, everything_js: Path, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ContainGateway]:
    work = tmp_path_factory.mktemp("contain-gateway")
    received = work / "upstream-received.jsonl"
    received.touch()
    upstream = ["sh", "-c", 'tee -a "$0" | exec "$@"', str(received), NODE, str(everything_js), "stdio"]
    state = work / "state"
    audit = work / "audit.jsonl"
    q = json.dumps
    config = work / "portcullis.toml"
    config.write_text(
        f"""\
state_dir = {q(str(state))}

[audit]
path = {q(str(audit))}

[listen.tls]
mode = "required"
cert = {q(str(pki.gateway.cert))}
key = {q(str(pki.gateway.key))}
client_ca = [{q(str(pki.ca))}]
trust_domains = [{q(TRUST_DOMAIN)}]

[auth]
require = "certificate"

[[upstream]]
name = "everything"
command = [{", ".join(q(a) for a in upstream)}]
"""
    )
    proc = spawn(
        "portcullis-contain",
        [str(gateway_bin()), "serve", "--config", str(config), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        logs_dir / "gateway-contain.log",
        env={"PORTCULLIS_LOG": "info", "PORTCULLIS_STATE_DIR": str(state)},
    )
    try:
        url = wait_for_line(proc, GATEWAY_READY, timeout=STARTUP_TIMEOUT).group(1)
        admin = ""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not admin and time.monotonic() < deadline:
            m = ADMIN_READY.search(proc.log.read_text(errors="replace"))
            admin = m.group(1) if m else ""
            time.sleep(0.05)
        assert admin, "admin listener line"
        yield ContainGateway(url=url, admin=admin, proc=proc, received=received, state=state, audit=audit)
    finally:
        proc.stop()


def texts(result: types.CallToolResult) -> list[str]:
    return [c.text for c in result.content if isinstance(c, types.TextContent)]


def rpc(method: str, params: dict[str, object], id_: int | None = None) -> dict[str, object]:
    m: dict[str, object] = {"jsonrpc": "2.0", "method": method, "params": params}
    if id_ is not None:
        m["id"] = id_
    return m


async def open_session(http: httpx2.AsyncClient, url: str) -> str:
    r = await http.post(
        url,
        json=rpc("initialize", {"protocolVersion": PROTO, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}, 0),
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    n = await http.post(
        url,
        json=rpc("notifications/initialized", {}),
        headers={"Accept": "application/json, text/event-stream", "mcp-session-id": sid, "mcp-protocol-version": PROTO},
    )
    assert n.status_code == 202, n.text
    return sid


async def test_manual_quarantine_closes_open_streams_refuses_next_message_and_spares_other_agents(
    gateway: ContainGateway, pki: Pki, other: Leaf
) -> None:
    before = f"before-{uuid.uuid4().hex}"
    marker = f"other-first-{uuid.uuid4().hex}"
    after = f"after-{uuid.uuid4().hex}"
    headers = {"Accept": "application/json, text/event-stream", "mcp-protocol-version": PROTO}
    async with httpx2.AsyncClient(verify=tls_context(pki.ca, pki.agent), timeout=httpx2.Timeout(20.0)) as http:
        sid = await open_session(http, gateway.url)
        ok = await http.post(gateway.url, json=rpc("tools/call", {"name": ECHO, "arguments": {"message": before}}, 1), headers={**headers, "mcp-session-id": sid})
        assert ok.status_code == 200 and before in ok.text, ok.text
        # Another agent, through the official SDK, in its own session.
        async with mcp_client(gateway.url, "legacy", ca=pki.ca, cert=other) as b:
            assert marker in "".join(texts(await b.call_tool(ECHO, {"message": marker})))
            async with http.stream("GET", gateway.url, headers={**headers, "Accept": "text/event-stream", "mcp-session-id": sid}) as stream:
                assert stream.status_code == 200
                cli = await anyio.to_thread.run_sync(
                    lambda: gateway.cli("quarantine", "add", "--agent", AGENT_ID, "--reason", "e2e: suspected prompt injection")
                )
                issued = time.monotonic()
                assert cli.returncode == 0, cli.stdout + cli.stderr
                with anyio.fail_after(5):
                    async for _ in stream.aiter_bytes():
                        pass
                closed_after = time.monotonic() - issued
            assert closed_after < 1.0, f"stream closed {closed_after:.3f} s after the CLI returned"
            # The next message of the open session is refused as quarantined.
            r = await http.post(gateway.url, json=rpc("tools/call", {"name": ECHO, "arguments": {"message": after}}, 2), headers={**headers, "mcp-session-id": sid})
            body = r.json()
            assert body["error"]["code"] == -32032, body
            assert body["error"]["data"]["mode"] == "deny-all", body
            # The other agent's open session is untouched.
            again = f"other-{uuid.uuid4().hex}"
            assert again in "".join(texts(await b.call_tool(ECHO, {"message": again})))
    # A new session of the quarantined agent is refused (the SDK sees a 403).
    with pytest.raises(Exception) as failure:
        async with mcp_client(gateway.url, "legacy", ca=pki.ca, cert=pki.agent) as a:
            await a.call_tool(ECHO, {"message": after})
    assert isinstance(failure.value, MCPError) or (
        isinstance(failure.value, BaseExceptionGroup) and failure.group_contains(MCPError)
    ), repr(failure.value)
    assert after not in gateway.received.read_text(errors="replace"), "a quarantined call reached the upstream"
    # Listed, audited with the admin's identity, and released by the CLI.
    listed = gateway.cli("quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert AGENT_ID in listed.stdout
    recs = [r for r in gateway.audit_records() if r.get("kind") == "containment"]
    assert any(r.get("target") == f"agent:{AGENT_ID}" and str(r.get("by", "")).startswith("admin:spiffe://") for r in recs), recs
    released = gateway.cli("quarantine", "remove", "--agent", AGENT_ID, "--reason", "e2e: cleared")
    assert released.returncode == 0, released.stdout + released.stderr
    back = f"back-{uuid.uuid4().hex}"
    async with mcp_client(gateway.url, "legacy", ca=pki.ca, cert=pki.agent) as a:
        assert back in "".join(texts(await a.call_tool(ECHO, {"message": back})))


async def test_kill_switch_stops_everyone_until_turned_off(gateway: ContainGateway, pki: Pki, other: Leaf) -> None:
    on = gateway.cli("killswitch", "on", "--reason", "e2e: incident")
    assert on.returncode == 0, on.stdout + on.stderr
    try:
        for leaf in (pki.agent, other):
            with pytest.raises(Exception):
                async with mcp_client(gateway.url, "legacy", ca=pki.ca, cert=leaf) as c:
                    await c.call_tool(ECHO, {"message": "during kill switch"})
        status = gateway.cli("killswitch", "status", "--json")
        assert status.returncode == 0 and "deny-all" in status.stdout, status.stdout + status.stderr
    finally:
        off = gateway.cli("killswitch", "off", "--reason", "e2e: resolved")
        assert off.returncode == 0, off.stdout + off.stderr
    assert "during kill switch" not in gateway.received.read_text(errors="replace")
    m = f"after-kill-{uuid.uuid4().hex}"
    async with mcp_client(gateway.url, "legacy", ca=pki.ca, cert=other) as c:
        assert m in "".join(texts(await c.call_tool(ECHO, {"message": m})))
    actions = [r.get("action") for r in gateway.audit_records() if r.get("kind") == "containment"]
    assert "killswitch-deny-all" in actions and "killswitch-off" in actions, actions


@pytest.fixture(scope="module")
def breaker_gateway(everything_js: Path, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainGateway]:
    """server-everything over stdio with a short call timeout and a breaker that
    opens after two failures and probes after two seconds."""
    work = tmp_path_factory.mktemp("breaker-gateway")
    received = work / "upstream-received.jsonl"
    received.touch()
    upstream = ["sh", "-c", 'tee -a "$0" | exec "$@"', str(received), NODE, str(everything_js), "stdio"]
    q = json.dumps
    config = work / "portcullis.toml"
    config.write_text(
        f"""\
state_dir = {q(str(work / "state"))}

[audit]
path = {q(str(work / "audit.jsonl"))}

[limits]
call_timeout_ms = 500

[containment.breaker]
failures = 2
open_secs = 2

[[upstream]]
name = "everything"
command = [{", ".join(q(a) for a in upstream)}]
"""
    )
    proc = spawn(
        "portcullis-breaker",
        [str(gateway_bin()), "serve", "--config", str(config), "--listen", "127.0.0.1:0", "--allow-anonymous-loopback"],
        logs_dir / "gateway-breaker.log",
        env={"PORTCULLIS_LOG": "info"},
    )
    try:
        url = wait_for_line(proc, GATEWAY_READY, timeout=STARTUP_TIMEOUT).group(1)
        yield ContainGateway(url=url, admin="", proc=proc, received=received, state=work / "state", audit=work / "audit.jsonl")
    finally:
        proc.stop()


async def test_a_hanging_server_everything_opens_the_breaker_which_fails_fast_then_recovers(
    breaker_gateway: ContainGateway,
) -> None:
    gw = breaker_gateway
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0)) as http:
        async with Client(streamable_http_client(gw.url, http_client=http), mode="legacy", read_timeout_seconds=20, cache=None) as c:
            first = f"first-{uuid.uuid4().hex}"
            assert first in "".join(texts(await c.call_tool(ECHO, {"message": first})))
            # Two calls that outlive the call timeout: the upstream hangs.
            for _ in range(2):
                with pytest.raises(MCPError) as e:
                    await c.call_tool("everything__trigger-long-running-operation", {"duration": 5, "steps": 1})
                assert e.value.code == -32011, e.value
            # Open: the next call fails fast and is never sent.
            while_open = f"while-open-{uuid.uuid4().hex}"
            began = time.monotonic()
            with pytest.raises(MCPError) as e:
                await c.call_tool(ECHO, {"message": while_open})
            assert e.value.code == -32013, e.value
            assert time.monotonic() - began < 0.5
            assert e.value.data["retryAfterSeconds"] >= 1
            # After the cool-down a probe closes it again.
            await anyio.sleep(2.2)
            back = f"back-{uuid.uuid4().hex}"
            assert back in "".join(texts(await c.call_tool(ECHO, {"message": back})))
    assert while_open not in gw.received.read_text(errors="replace")
    actions = [r.get("action") for r in gw.audit_records() if r.get("kind") == "containment"]
    assert "breaker-open" in actions and "breaker-closed" in actions, actions
