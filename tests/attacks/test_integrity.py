"""Attacks on the gateway's own integrity (T14 audit tampering, T15 policy
fail-open, T17 containment of a compromised agent, T18 admin plane abuse),
end to end with the official SDK client over mTLS and the ``portcullis`` CLI
on the admin listener (development admin CA in the gateway's state folder).

One gateway for the module, in front of server-everything (stdio, tee'd),
with a policy file: the default pack plus a forbid on
``everything__get-sum`` that always fails to evaluate (integer overflow).
"""

from __future__ import annotations

import subprocess
import traceback
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from attack_fixtures import INVALID_PARAMS, QUARANTINED
from attack_fixtures import (
    Agents, AttackGateway, Upstream, agent_id, connect, error_of, gateway_fixture, outcome, q, start_gateway, text,
)
from conftest import NODE, REPO, gateway_bin
from identity_fixtures import Pki, tls_context

pytestmark = pytest.mark.anyio

DEFAULT_PACK = REPO / "policies" / "default.cedar"
CARELESS = """
// Validates, but fails to evaluate on every request (Long overflow): Cedar
// skips an erroring policy; the gateway must deny instead.
@id("careless-forbid")
@reason("sums are off")
forbid (principal, action == Portcullis::Action::"CallTool", resource == Portcullis::Tool::"everything__get-sum")
when { context.session.calls + 9223372036854775807 + 1 < 0 };
"""


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("attacks-integrity-policy") / "policy.cedar"
    p.write_text(DEFAULT_PACK.read_text() + CARELESS)
    return p


@pytest.fixture(scope="module")
def gw(pki: Pki, policy: Path, everything_js: Path, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttackGateway]:
    yield from gateway_fixture(
        start_gateway(
            "integrity",
            tmp_path_factory.mktemp("attacks-integrity"),
            logs_dir,
            pki,
            [Upstream("everything", [NODE, str(everything_js), "stdio"])],
            body=f"[policy]\nfiles = [{q(policy)}]\n",
            admin=True,
        )
    )


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(gateway_bin()), "audit", "verify", *args], capture_output=True, text=True, timeout=30, cwd=REPO)


# ---------------------------------------------------------------- T14 ----


async def test_t14_an_edited_or_deleted_audit_record_is_named_by_verify(gw: AttackGateway, agents: Agents, tmp_path: Path) -> None:
    """An intruder covers their tracks: in a copy of the live log they turn their
    denied call into an allowed one, and in another copy delete it. ``portcullis
    audit verify`` exits 1 on each and names the file and line of the first bad
    record; the untouched log verifies (against the gateway's public key), and
    the gateway keeps serving and logging."""
    async with connect(gw, agents("t14-intruder")) as c:
        await outcome(c.call_tool("everything__echo", {"message": "t14-cover"}))
        denied = await outcome(c.call_tool("everything__get-sum", {"a": 14, "b": 14}))
    assert error_of(denied, "everything__get-sum").code == INVALID_PARAMS

    key = gw.state / "audit-ed25519.pk8.pub"
    ok = verify("--key", str(key), str(gw.audit))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok: "), ok.stdout

    lines = gw.audit.read_text().splitlines(keepends=True)
    index = next(
        i
        for i, line in enumerate(lines)
        if '"kind":"decision"' in line and agent_id("t14-intruder") in line and '"decision":"deny"' in line and "everything__get-sum" in line
    )
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(lines[:index] + [lines[index].replace('"decision":"deny"', '"decision":"allow"')] + lines[index + 1 :]))
    deleted = tmp_path / "deleted.jsonl"
    deleted.write_text("".join(lines[:index] + lines[index + 1 :]))

    bad = verify(str(edited))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"FAILED: {edited}:{index + 1}: " in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    gap = verify(str(deleted))
    assert gap.returncode == 1, gap.stdout + gap.stderr
    assert f"FAILED: {deleted}:{index + 1}: " in gap.stdout + gap.stderr, gap.stdout + gap.stderr
    assert "missing" in gap.stdout + gap.stderr, gap.stdout + gap.stderr

    async with connect(gw, agents("t14-auditor")) as c:
        assert text(await c.call_tool("everything__echo", {"message": "t14-after"})) == "Echo: t14-after"
    again = verify("--key", str(key), str(gw.audit))
    assert again.returncode == 0, again.stdout + again.stderr


# ---------------------------------------------------------------- T15 ----


async def test_t15_an_erroring_policy_denies_and_an_invalid_reload_keeps_the_running_set(
    gw: AttackGateway, agents: Agents, policy: Path
) -> None:
    """A forbid that errors at evaluation denies (never fails open): the tool is
    hidden, the call answers like a missing tool, never reaches
    server-everything, and its decision record names the erroring policy. A syntactically broken policy file is then pushed: ``policy
    reload`` exits 1 naming file:line:col, the rejection is audited, and the
    running set keeps deciding (the sum still refused, the echo still served,
    the same policy hash)."""
    good = policy.read_text()
    async with connect(gw, agents("t15-agent")) as c:
        first = await outcome(c.call_tool("everything__get-sum", {"a": 15, "b": 1}))
        echo = await outcome(c.call_tool("everything__echo", {"message": "t15-before"}))
        policy.write_text(good + '\n@id("broken")\npermit (principal, action, resource) when { ;\n')
        try:
            reload = gw.cli("policy", "reload")
            second = await outcome(c.call_tool("everything__get-sum", {"a": 15, "b": 2}))
            echo2 = await outcome(c.call_tool("everything__echo", {"message": "t15-after"}))
        finally:
            policy.write_text(good)
            restored = gw.cli("policy", "reload")

    for e in (first, second):
        err = error_of(e, "everything__get-sum")
        # Denied at every evaluation, the tool is also hidden: it answers like a missing one.
        assert (err.code, err.message) == (INVALID_PARAMS, "Unknown tool: everything__get-sum"), err
    assert text(echo) == "Echo: t15-before" and text(echo2) == "Echo: t15-after"
    assert reload.returncode == 1, reload.stdout + reload.stderr
    assert f"{policy.name}:" in reload.stderr and "policy reload rejected" in reload.stderr, reload.stderr
    assert restored.returncode == 0, restored.stdout + restored.stderr
    sums = [c["arguments"] for c in gw.calls("everything") if c["name"] == "get-sum"]
    assert {"a": 15, "b": 1} not in sums and {"a": 15, "b": 2} not in sums, sums

    decisions = [r for r in gw.decisions("t15-agent") if r.get("tool")]
    sum_records = [r for r in decisions if r["tool"] == "everything__get-sum"]
    assert len(sum_records) == 2 and all(r["decision"] == "deny" for r in sum_records), sum_records
    for r in sum_records:
        assert (r["reason"], r["policies"]) == ("denied: a policy could not be evaluated", ["careless-forbid"]), r
        assert r["errors"] and r["errors"][0].startswith("careless-forbid: integer overflow"), r
    assert len({r["policy_hash"] for r in decisions}) == 1, "the rejected set decided something"
    rejected = [r for r in gw.records("policy_reload") if r["result"] == "rejected"]
    assert rejected and rejected[-1]["policy_hash"] == decisions[0]["policy_hash"], rejected
    assert f"{policy}:89:45: unexpected token" in str(rejected[-1]["errors"]), rejected[-1]


# ---------------------------------------------------------------- T17 ----


async def test_t17_a_quarantined_agent_is_refused_and_others_are_not(gw: AttackGateway, agents: Agents) -> None:
    """The operator quarantines a compromised agent (deny-all) through the admin
    API. Its open session's next call gets -32032 (``data.mode = "deny-all"``)
    and never reaches the upstream, a new session is refused, the action and
    the refusal are audited; another agent's session, open alongside, is
    untouched. Released afterwards, the agent works again."""
    target = agent_id("t17-compromised")
    async with connect(gw, agents("t17-compromised")) as bad, connect(gw, agents("t17-bystander")) as good:
        before = await outcome(bad.call_tool("everything__echo", {"message": "t17-before"}))
        added = gw.cli("quarantine", "add", "--agent", target, "--reason", "t17: exfiltrating")
        after = await outcome(bad.call_tool("everything__echo", {"message": "t17-after"}))
        alongside = await outcome(good.call_tool("everything__echo", {"message": "t17-bystander"}))
    try:
        new_session = await refusal_text(gw, agents("t17-compromised"), "t17-new-session")
    finally:
        released = gw.cli("quarantine", "remove", "--agent", target, "--reason", "t17: cleaned")
    async with connect(gw, agents("t17-compromised")) as back:
        again = await outcome(back.call_tool("everything__echo", {"message": "t17-released"}))

    assert text(before) == "Echo: t17-before"
    assert added.returncode == 0, added.stdout + added.stderr
    err = error_of(after, "everything__echo")
    assert err.code == QUARANTINED and err.data["mode"] == "deny-all", err
    assert text(alongside) == "Echo: t17-bystander"
    assert "this identity is quarantined (deny-all)" in new_session, new_session
    assert released.returncode == 0 and text(again) == "Echo: t17-released"
    received = gw.received("everything")
    assert "t17-after" not in received and "t17-new-session" not in received

    actions = [(r["action"], r["target"], r["by"].split(":")[0]) for r in gw.records("containment")]
    assert ("quarantine-deny-all", f"agent:{target}", "admin") in actions, actions
    assert ("quarantine-release", f"agent:{target}", "admin") in actions, actions
    refused = [(r["action"], r["policies"]) for r in gw.decisions("t17-compromised") if r["decision"] == "deny"]
    assert ("CallTool", [f"containment:agent:{target}"]) in refused, refused
    assert len(refused) == 2, refused  # the call in the open session, the new session


async def refusal_text(gw: AttackGateway, leaf, message: str) -> str:
    """Opens a session and calls echo; returns the formatted failure (the SDK
    wraps it in task-group exception groups), or fails the test if it worked."""
    try:
        async with connect(gw, leaf) as c:
            await c.call_tool("everything__echo", {"message": message})
    except Exception as e:  # noqa: BLE001
        return "".join(traceback.format_exception(e))
    pytest.fail("the new session was served")


# ---------------------------------------------------------------- T18 ----


async def test_t18_the_admin_plane_refuses_agents(gw: AttackGateway, pki: Pki, agents: Agents) -> None:
    """An agent certificate issued by the admin listener's own CA gets 403 "not
    an admin identity" on every admin route (audited as ``not_admin`` with the ID
    it presented) and cannot turn the kill switch on; a certificate from the
    agents' CA is refused at the handshake; no certificate reaches no admin
    route; the agents' listener serves no admin route at all (404). The admin's
    own CLI still works and the agents' traffic is unaffected."""
    dev_ca = gw.state / "ca"
    intruder = agents.issue("spiffe://portcullis.local/agent/t18-intruder", "t18-intruder", ca_dir=dev_ca)
    admin_ca = dev_ca / "ca.pem"
    since = len(gw.records())
    results: dict[str, int] = {}
    async with httpx2.AsyncClient(verify=tls_context(admin_ca, intruder), timeout=10) as http:
        for method, path in (("GET", "/admin/sessions"), ("GET", "/admin/quarantines"), ("GET", "/metrics"), ("POST", "/admin/killswitch")):
            r = await http.request(method, gw.admin + path, json={"mode": "deny-all", "reason": "t18"} if method == "POST" else None)
            results[f"{method} {path}"] = r.status_code
            assert r.json() == {"error": "not an admin identity"}, (path, r.text)
    async with httpx2.AsyncClient(verify=tls_context(admin_ca), timeout=10) as http:
        anonymous = (await http.get(gw.admin + "/admin/quarantines")).status_code
    foreign_ok = True
    try:
        async with httpx2.AsyncClient(verify=tls_context(admin_ca, agents("t18-agent")), timeout=10) as http:
            foreign_ok = (await http.get(gw.admin + "/admin/sessions")).status_code == 200
    except (httpx2.HTTPError, OSError):
        foreign_ok = False
    async with httpx2.AsyncClient(verify=tls_context(pki.ca, agents("t18-agent")), timeout=10) as http:
        on_agents = {p: (await http.request(m, gw.url.removesuffix("/mcp") + p, json={})).status_code for m, p in (("GET", "/admin/sessions"), ("POST", "/admin/killswitch"), ("GET", "/metrics"))}
    async with connect(gw, agents("t18-agent")) as c:
        echo = await outcome(c.call_tool("everything__echo", {"message": "t18-agent-ok"}))
    status = gw.cli("killswitch", "status")
    listed = gw.cli("sessions", "list")

    assert set(results.values()) == {403}, results
    assert anonymous == 403, anonymous
    assert not foreign_ok, "a certificate of the agents' CA reached the admin API"
    assert set(on_agents.values()) == {404}, on_agents
    assert text(echo) == "Echo: t18-agent-ok"
    assert status.returncode == 0 and "kill switch: off" in status.stdout, status.stdout + status.stderr
    assert listed.returncode == 0, listed.stdout + listed.stderr
    failures = [(r["reason"], r["status"]) for r in gw.records()[since:] if r.get("kind") == "auth_failure" and r.get("class") == "not_admin"]
    intruder_id = "spiffe://portcullis.local/agent/t18-intruder"
    assert failures.count((f"admin API: {intruder_id} is not an admin identity", 403)) == 4, failures
    assert ("admin API: no client certificate", 403) in failures, failures
    assert not [r for r in gw.records("containment")[0:] if r.get("action", "").startswith("killswitch")], "the kill switch moved"
