"""Identity attacks (T1 spoofed agent, T2 spoofed server, T3 stolen token,
T4 stolen session id, T5 token passthrough, T19 compromised device), end to
end with the official SDK client over TLS.

Cast: the run's CA (identity_fixtures.issue_pki: gateway, agents of trust
domain example.org, and ``foreign`` from elsewhere.example); our own token
issuer (RS256, its JWKS file given to ``[auth.oauth]``) and an attacker's
issuer claiming the same ``kid`` with another key; the gateway with TLS
(client certificates optional), ``require = "any"`` (a certificate or a
token), the admin listener, and upstreams: server-everything (stdio, tee'd),
``notes`` (``portcullis demo-server`` over HTTP, logging every request's
Authorization header; the gateway's own credential in ``headers``), ``files``
(demo-server over HTTPS whose certificate names the wrong SPIFFE ID) and
``docs`` (the same, with the right ID).
A second gateway requires signed device posture (T19).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from attack_fixtures import UPSTREAM_DOWN
from attack_fixtures import (
    Agents, AttackGateway, DemoServer, Issuer, Upstream, agent_id, connect, error_of, gateway_fixture, outcome, q, start_demo, start_gateway, text, tool_names,
)
from conftest import NODE
from identity_fixtures import TRUST_DOMAIN, Pki, tls_context

pytestmark = pytest.mark.anyio

ISSUER = "urn:attacks:issuer"
GATEWAY_CREDENTIAL = "Bearer gateway-own-credential-t5"
FILES_ID = f"spiffe://{TRUST_DOMAIN}/upstream/files"
DOCS_ID = f"spiffe://{TRUST_DOMAIN}/upstream/docs"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("attacks-identity")


@pytest.fixture(scope="module")
def issuer(work: Path) -> Issuer:
    return Issuer(ISSUER, work / "jwks.json")


@pytest.fixture(scope="module")
def attacker(work: Path) -> Issuer:
    """Same issuer name, same kid, another key (its JWKS is never configured)."""
    return Issuer(ISSUER, work / "attacker-jwks.json")


@pytest.fixture(scope="module")
def demos(work: Path, logs_dir: Path, agents: Agents) -> Iterator[dict[str, DemoServer]]:
    servers: dict[str, DemoServer] = {}
    try:
        servers["notes"] = start_demo("notes", work, logs_dir)
        impostor = agents.issue(f"spiffe://{TRUST_DOMAIN}/upstream/impostor", "impostor", "--dns", "localhost", "--ip", "127.0.0.1")
        servers["files"] = start_demo("files", work, logs_dir, tls=impostor)
        docs = agents.issue(DOCS_ID, "docs-server", "--dns", "localhost", "--ip", "127.0.0.1")
        servers["docs"] = start_demo("docs", work, logs_dir, tls=docs)
        yield servers
    finally:
        for s in servers.values():
            s.proc.stop()


@pytest.fixture(scope="module")
def gw(
    pki: Pki, issuer: Issuer, demos: dict[str, DemoServer], everything_js: Path, logs_dir: Path, work: Path
) -> Iterator[AttackGateway]:
    auth = f"""require = "any"

[auth.oauth]
issuer = {q(ISSUER)}
jwks = {q(issuer.jwks)}
required_scopes = ["mcp"]
min_refetch_secs = 0
"""
    yield from gateway_fixture(
        start_gateway(
            "identity",
            work / "gateway",
            logs_dir,
            pki,
            [
                Upstream("everything", [NODE, str(everything_js), "stdio"]),
                Upstream("notes", url=demos["notes"].url, extra=f"headers = {{ Authorization = {q(GATEWAY_CREDENTIAL)} }}"),
                Upstream("files", url=demos["files"].url, extra=f"tls = {{ ca = [{q(pki.ca)}], spiffe_id = {q(FILES_ID)} }}"),
                Upstream("docs", url=demos["docs"].url, extra=f"tls = {{ ca = [{q(pki.ca)}], spiffe_id = {q(DOCS_ID)} }}"),
            ],
            auth=auth,
            tls_mode="optional",
            admin=True,
        )
    )


REFUSED_MARK = "attempt-that-must-be-refused"


def marker(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:10]}"


async def refused(gw: AttackGateway, cert, **kw) -> tuple[BaseException, list[httpx2.Response]]:
    """Connect (the SDK's handshake) and call echo; it must fail. Returns the
    failure and the HTTP responses seen."""
    seen: list[httpx2.Response] = []
    try:
        async with connect(gw, cert, seen=seen, **kw) as c:
            await c.call_tool("everything__echo", {"message": REFUSED_MARK})
    except Exception as e:  # noqa: BLE001 - the SDK raises groups, MCPError or TLS errors
        return e, seen
    pytest.fail(f"the connection succeeded: {[r.status_code for r in seen]}")


def auth_failures(gw: AttackGateway, since: int) -> list[dict]:
    return [r for r in gw.records()[since:] if r.get("kind") == "auth_failure"]


# ----------------------------------------------------------------- T1 ----


async def test_t1_spoofed_agents_are_refused_before_the_upstream(
    gw: AttackGateway, pki: Pki, agents: Agents, issuer: Issuer, attacker: Issuer
) -> None:
    """A certificate from a foreign trust domain fails the TLS handshake; a token
    signed by another key under our kid, an expired token, and a token for
    another audience each get 401. Every refusal is audited as an auth_failure
    (never with the credential) and nothing reaches server-everything. A real
    agent certificate and a real token, alongside, are served."""
    since = len(gw.records())
    forged = attacker.token("t1-mallory", gw.url)
    expired = issuer.token("t1-mallory", gw.url, ttl=-3600, iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200)
    wrong_aud = issuer.token("t1-mallory", "https://elsewhere.example/mcp")
    foreign_err, foreign_seen = await refused(gw, pki.foreign)
    statuses = {}
    for name, token in (("forged", forged), ("expired", expired), ("wrong-audience", wrong_aud)):
        _, seen = await refused(gw, None, token=token)
        statuses[name] = [r.status_code for r in seen]
    good_cert = marker("t1-cert-ok")
    good_token = marker("t1-token-ok")
    async with connect(gw, agents("t1-agent")) as c:
        by_cert = await outcome(c.call_tool("everything__echo", {"message": good_cert}))
    async with connect(gw, None, token=issuer.token("t1-user", gw.url)) as c:
        by_token = await outcome(c.call_tool("everything__echo", {"message": good_token}))

    assert not foreign_seen, f"a foreign-domain certificate got HTTP answers: {[r.status_code for r in foreign_seen]}"
    for name, codes in statuses.items():
        assert codes and codes[0] == 401, (name, codes)
    assert text(by_cert) == f"Echo: {good_cert}" and text(by_token) == f"Echo: {good_token}"

    failures = [(r["reason"], r["class"], r["status"]) for r in auth_failures(gw, since)]
    refused_cert = failures.pop(0) if failures and failures[0][1] == "certificate_refused" else None
    assert refused_cert is not None and "elsewhere.example" in refused_cert[0], failures
    assert failures == [
        ("bad token signature", "invalid_token", 401),
        ("token expired", "token_expired", 401),
        ("wrong token audience", "invalid_token", 401),
    ], failures
    # The certificate refusal happens in the TLS handshake; the audit (above) and the process log name it.
    assert 'spiffe_id=Some("spiffe://elsewhere.example/agent/e2e") reason=trust domain "elsewhere.example" is not allowed' in gw.log_text()
    audit = gw.audit.read_text()
    for token in (forged, expired, wrong_aud):
        assert token not in audit and token.split(".")[2] not in audit, "a credential was recorded"
    received = gw.received("everything")
    assert good_cert in received and good_token in received
    assert REFUSED_MARK not in received


async def test_t1_a_refused_certificate_is_audited(gw: AttackGateway, pki: Pki) -> None:
    since = len(gw.records())
    await refused(gw, pki.foreign)
    deadline = time.monotonic() + 3
    while not auth_failures(gw, since) and time.monotonic() < deadline:
        time.sleep(0.05)
    failures = auth_failures(gw, since)
    assert failures and "elsewhere.example" in failures[0]["reason"], failures


# ----------------------------------------------------------------- T2 ----


async def test_t2_an_upstream_with_the_wrong_spiffe_id_is_refused(gw: AttackGateway, agents: Agents, demos: dict[str, DemoServer]) -> None:
    """``files`` is expected to prove ``spiffe://example.org/upstream/files``; the
    server there presents a valid certificate of the same CA for ``.../impostor``.
    The gateway refuses it: the impostor's tools are never offered, a call to it
    gets -32010 naming the upstream, and it receives no request at all; the log names the presented
    ID. ``docs``, with the right ID, and server-everything work in the same session."""
    async with connect(gw, agents("t2-agent")) as c:
        names = await tool_names(c)
        impostor = await outcome(c.call_tool("files__echo", {"message": "t2-to-impostor"}))
        docs = await outcome(c.call_tool("docs__echo", {"message": "t2-to-docs"}))
        echo = await outcome(c.call_tool("everything__echo", {"message": "t2-honest"}))

    assert not [n for n in names if n.startswith("files__")], sorted(names)
    assert "docs__echo" in names, sorted(names)
    err = error_of(impostor, "files__echo")
    assert (err.code, "upstream files") == (UPSTREAM_DOWN, err.message[: len("upstream files")]), err
    assert "t2-to-docs" in text(docs) and text(echo) == "Echo: t2-honest"
    assert demos["files"].requests() == [], "the impostor received requests"
    assert any("t2-to-docs" in str(r.get("message")) for r in demos["docs"].requests())
    log = gw.log_text()
    assert "wrong SPIFFE ID" in log and f"spiffe://{TRUST_DOMAIN}/upstream/impostor" in log, "the log names the refusal"


# ----------------------------------------------------------------- T3 ----


async def test_t3_a_stolen_token_revoked_by_jti_is_refused_at_once(gw: AttackGateway, issuer: Issuer) -> None:
    """A token is stolen; the operator revokes its ``jti`` through the admin CLI.
    The thief's open session is refused on its next request and a new session
    with the token gets 401; the revocation is audited with the admin's identity
    and the refusal as ``token_revoked``; nothing the thief sends afterwards
    reaches the upstream. The owner's fresh token (another jti) keeps working."""
    jti = f"t3-{uuid.uuid4().hex}"
    stolen = issuer.token("t3-user", gw.url, jti=jti)
    fresh = issuer.token("t3-user", gw.url, jti=f"t3-{uuid.uuid4().hex}")
    before, after = marker("t3-before"), marker("t3-after")
    async with connect(gw, None, token=stolen) as thief:
        ok = await outcome(thief.call_tool("everything__echo", {"message": before}))
        revoked = gw.cli("revoke", "--jti", jti, "--reason", "t3: token leaked")
        next_call = await outcome(thief.call_tool("everything__echo", {"message": after}))
    since = len(gw.records())
    _, seen = await refused(gw, None, token=stolen)
    async with connect(gw, None, token=fresh) as owner:
        owner_ok = await outcome(owner.call_tool("everything__echo", {"message": "t3-owner"}))

    assert text(ok) == f"Echo: {before}"
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert not hasattr(next_call, "content") or next_call.is_error, f"the revoked token's session still works: {next_call}"
    assert [r.status_code for r in seen][:1] == [401], [r.status_code for r in seen]
    assert "token revoked" in seen[0].headers.get("www-authenticate", "") + seen[0].text, (seen[0].headers, seen[0].text)
    assert text(owner_ok) == "Echo: t3-owner"
    received = gw.received("everything")
    assert before in received and after not in received

    containment = [r for r in gw.records("containment") if r.get("action") == "revoke-token"]
    assert any(jti in r["target"] and r["by"].startswith("admin:spiffe://") and r["reason"] == "t3: token leaked" for r in containment), containment
    failures = auth_failures(gw, since)
    assert any(r["class"] == "token_revoked" for r in failures), failures


# ----------------------------------------------------------------- T4 ----

PROTO = "2025-11-25"


def rpc(method: str, params: dict, id_: int | None = None) -> dict:
    m: dict = {"jsonrpc": "2.0", "method": method, "params": params}
    if id_ is not None:
        m["id"] = id_
    return m


async def test_t4_a_stolen_session_id_is_useless_under_another_identity(gw: AttackGateway, pki: Pki, agents: Agents) -> None:
    """Mallory learns Alice's session id and presents it with her own valid
    certificate: 404, as for an unknown session; the attempt is logged as a
    hijack; her call never reaches the upstream and she cannot end the session.
    Alice's session goes on."""
    headers = {"Accept": "application/json, text/event-stream", "mcp-protocol-version": PROTO}
    hijack = marker("t4-hijack")
    async with httpx2.AsyncClient(verify=tls_context(pki.ca, agents("t4-alice")), timeout=httpx2.Timeout(20.0)) as alice, httpx2.AsyncClient(
        verify=tls_context(pki.ca, agents("t4-mallory")), timeout=httpx2.Timeout(20.0)
    ) as mallory:
        init = await alice.post(gw.url, json=rpc("initialize", {"protocolVersion": PROTO, "capabilities": {}, "clientInfo": {"name": "alice", "version": "1"}}, 0), headers=headers)
        sid = init.headers["mcp-session-id"]
        h = {**headers, "mcp-session-id": sid}
        await alice.post(gw.url, json=rpc("notifications/initialized", {}), headers=h)
        own = await alice.post(gw.url, json=rpc("tools/call", {"name": "everything__echo", "arguments": {"message": "t4-alice-1"}}, 1), headers=h)
        stolen = await mallory.post(gw.url, json=rpc("tools/call", {"name": "everything__echo", "arguments": {"message": hijack}}, 2), headers=h)
        end = await mallory.delete(gw.url, headers=h)
        still = await alice.post(gw.url, json=rpc("tools/call", {"name": "everything__echo", "arguments": {"message": "t4-alice-2"}}, 3), headers=h)

    assert init.status_code == 200 and own.status_code == 200 and "t4-alice-1" in own.text, own.text
    assert stolen.status_code == 404, (stolen.status_code, stolen.text)
    assert end.status_code in (400, 404), end.status_code
    assert still.status_code == 200 and "Echo: t4-alice-2" in still.text, still.text
    assert hijack not in gw.received("everything")
    deadline = time.monotonic() + 5
    while "session hijack attempt" not in gw.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next((l for l in gw.log_text().splitlines() if "session hijack attempt" in l), "")
    assert line and "t4-mallory" in line, line
    starts = [r for r in gw.records("session_start") if r.get("session") == sid]
    assert [r["identity"]["agent"] for r in starts] == [agent_id("t4-alice")], starts
    mallory_calls = [r for r in gw.records("decision") if r.get("session") == sid and r["identity"].get("agent") == agent_id("t4-mallory")]
    assert mallory_calls == [], "a decision was made for mallory on alice's session"


# ----------------------------------------------------------------- T5 ----


async def test_t5_the_clients_token_never_reaches_an_upstream(gw: AttackGateway, issuer: Issuer, demos: dict[str, DemoServer]) -> None:
    """The agent authenticates with a bearer token. ``notes`` (HTTP) sees only the
    gateway's own credential on every request; neither it, server-everything
    (stdio) nor the audit log ever holds the client's token."""
    token = issuer.token("t5-user", gw.url, jti=f"t5-{uuid.uuid4().hex}")
    async with connect(gw, None, token=token) as c:
        note = await outcome(c.call_tool("notes__echo", {"message": "t5-note"}))
        echo = await outcome(c.call_tool("everything__echo", {"message": "t5-echo"}))

    assert "t5-note" in text(note) and text(echo) == "Echo: t5-echo"
    requests = demos["notes"].requests()
    ours = [r for r in requests if "t5-note" in str(r.get("message"))]
    assert ours, requests
    assert {r.get("authorization") for r in requests} == {GATEWAY_CREDENTIAL}, {r.get("authorization") for r in requests}
    signature = token.split(".")[2]
    for where, blob in (("notes", demos["notes"].log.read_text()), ("everything", gw.received("everything")), ("audit log", gw.audit.read_text())):
        assert signature not in blob, f"the client's token reached {where}"
    decision = [r for r in gw.records("decision") if r.get("tool") == "notes__echo" and r["identity"].get("user") == f"{ISSUER}#t5-user"]
    assert decision and decision[0]["decision"] == "allow", decision


# ---------------------------------------------------------------- T19 ----

DEVICE_ISSUER = "urn:attacks:device-trust"


@pytest.fixture(scope="module")
def device(work: Path) -> Issuer:
    return Issuer(DEVICE_ISSUER, work / "device-jwks.json", kid="device-1")


@pytest.fixture(scope="module")
def posture_gw(pki: Pki, device: Issuer, everything_js: Path, logs_dir: Path, work: Path) -> Iterator[AttackGateway]:
    auth = f"""require = "certificate"

[auth.posture]
issuer = {q(DEVICE_ISSUER)}
jwks = {q(device.jwks)}
max_age_secs = 600
required = true
"""
    yield from gateway_fixture(
        start_gateway("posture", work / "posture", logs_dir, pki, [Upstream("everything", [NODE, str(everything_js), "stdio"])], auth=auth)
    )


async def test_t19_missing_or_forged_device_posture_is_refused(posture_gw: AttackGateway, agents: Agents, device: Issuer, work: Path) -> None:
    """Posture is required. A valid agent certificate from a device without an
    assertion, with one signed by another key, or with an expired one, gets 403
    and nothing reaches the upstream; each refusal is audited. The same agent on
    a managed device (a fresh assertion from the device-trust issuer) is served."""
    gw = posture_gw
    leaf = agents("t19-agent")
    now = int(time.time())
    claims = {"iss": DEVICE_ISSUER, "sub": "laptop-19", "iat": now, "exp": now + 600, "managed": True, "disk_encrypted": True}
    rogue = Issuer(DEVICE_ISSUER, work / "rogue-device-jwks.json", kid="device-1")
    since = len(gw.records())
    cases = {
        "missing": {},
        "forged": {"Portcullis-Device-Posture": rogue.sign(claims)},
        "expired": {"Portcullis-Device-Posture": device.sign({**claims, "iat": now - 7200, "exp": now - 3600})},
    }
    statuses = {}
    for name, headers in cases.items():
        _, seen = await refused(gw, leaf, headers=headers)
        statuses[name] = [r.status_code for r in seen][:1]
    async with connect(gw, leaf, headers={"Portcullis-Device-Posture": device.sign(claims)}) as c:
        ok = await outcome(c.call_tool("everything__echo", {"message": "t19-managed"}))

    assert statuses == {"missing": [403], "forged": [403], "expired": [403]}, statuses
    assert text(ok) == "Echo: t19-managed"
    failures = auth_failures(gw, since)
    assert [(r["reason"], r["class"], r["status"]) for r in failures] == [("device posture required but unknown", "posture", 403)] * 3, failures
    assert REFUSED_MARK not in gw.received("everything")
