"""Attacks through tools (T6 confused deputy, T7 poisoning, T8 rug-pull,
T9 shadowing), end to end: agents are the official SDK client over mTLS;
upstreams are server-everything (honest), tests/peers/malicious_py.py
(``evil``: poisoned descriptions, invisible Unicode, tool names shadowing
server-everything's), tests/attacks/peers/rugpull_py.py (``rugpull``: swaps
a tool's definition mid-session and announces it) and
tests/attacks/peers/leaky_py.py (``leaky``: sensitive back-office tools),
each behind a tee recording what the gateway sent it.

One gateway for the module: default policy pack plus two forbids (payroll
hidden from all but the HR agent; the service config callable only by it),
``poison_action = "hide"``, ``shadowing = "hide"`` (server-everything
preferred), pinning on (the default), admin listener for ``pins``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from attack_fixtures import (
    INVALID_PARAMS,
    MALICIOUS_PY,
    POLICY_DENIED,
    Agents,
    AttackGateway,
    Upstream,
    agent_id,
    connect,
    error_of,
    gateway_fixture,
    outcome,
    peer,
    start_gateway,
    text,
    tool_names,
)
from conftest import NODE, REPO
from identity_fixtures import Pki

pytestmark = pytest.mark.anyio

DEFAULT_PACK = REPO / "policies" / "default.cedar"
HR = "t6-hr"

SCHEMA = REPO / "crates" / "portcullis-policy" / "src" / "schema.cedarschema"

DEPUTY_POLICY = f"""
@id("service-config-hr-only")
@reason("only the HR agent may read the service configuration")
forbid (principal, action, resource)
when {{ resource.labels.contains("ops") && principal != Portcullis::Agent::"{agent_id(HR)}" }};

@id("vip-customers-hr-only")
@reason("VIP customer records are for the HR agent only")
forbid (principal, action == Portcullis::Action::"CallTool", resource)
when {{
  resource.labels.contains("customers") && context.arguments has customer_id &&
  context.arguments.customer_id like "vip-*" && principal != Portcullis::Agent::"{agent_id(HR)}"
}};
"""


@pytest.fixture(scope="module")
def gw(pki: Pki, everything_js: Path, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttackGateway]:
    work = tmp_path_factory.mktemp("attacks-tools")
    policy = work / "policy.cedar"
    policy.write_text(DEFAULT_PACK.read_text() + DEPUTY_POLICY)
    schema = work / "schema.cedarschema"
    shipped = SCHEMA.read_text()
    assert "type Arguments = {};" in shipped
    schema.write_text(shipped.replace("type Arguments = {};", "type Arguments = { customer_id?: String };"))
    body = f"""
[policy]
files = [{str(policy)!r}]
schema = {str(schema)!r}

[inspection]
poison_action = "hide"
shadowing = "hide"
shadowing_prefer = ["everything"]

[[segment]]
name = "customers"
labels = ["customers"]
tools = ["leaky__get_customer"]

[[segment]]
name = "ops"
labels = ["ops"]
tools = ["leaky__get_config"]
""".replace("'", '"')
    yield from gateway_fixture(
        start_gateway(
            "tools",
            work,
            logs_dir,
            pki,
            [
                Upstream("everything", [NODE, str(everything_js), "stdio"]),
                Upstream("evil", [sys.executable, str(MALICIOUS_PY), "stdio"]),
                Upstream("rugpull", peer("rugpull_py"), env={"RUGPULL_AFTER": "2"}),
                Upstream("leaky", peer("leaky_py")),
            ],
            body=body,
            admin=True,
        )
    )


def shape(e: object, name: str) -> tuple[int, str, object]:
    """An error with the tool name taken out: what an agent could compare."""
    err = error_of(e, name)
    return err.code, err.message.replace(name, "NAME"), err.data


# ----------------------------------------------------------------- T6 ----


async def test_t6_confused_deputy_hidden_tool_answers_like_a_missing_one(gw: AttackGateway, agents: Agents) -> None:
    """An agent tries to use the gateway's reach for data it may not read. The
    service-config tool is hidden from it: not listed, and calling it answers
    exactly like calling a tool that does not exist. The customer tool is listed,
    but asking it for a VIP record is refused with -32030. Neither call reaches
    the upstream; both denials are audited with the forbid's id; the HR agent,
    alongside, reads both, and the intruder's ordinary lookups still work."""
    async with connect(gw, agents("t6-intruder")) as intruder, connect(gw, agents(HR)) as hr:
        names = await tool_names(intruder)
        hidden = await outcome(intruder.call_tool("leaky__get_config", {"customer_id": "t6-intruder-c1"}))
        missing = await outcome(intruder.call_tool("leaky__no_such_tool", {"customer_id": "t6-intruder-c2"}))
        denied = await outcome(intruder.call_tool("leaky__get_customer", {"customer_id": "vip-t6-intruder-c3"}))
        own = await outcome(intruder.call_tool("leaky__get_customer", {"customer_id": "t6-intruder-c4"}))
        hr_names = await tool_names(hr)
        hr_vip = await outcome(hr.call_tool("leaky__get_customer", {"customer_id": "vip-t6-hr-c5"}))
        hr_config = await outcome(hr.call_tool("leaky__get_config", {}))

    assert "leaky__get_config" not in names and "leaky__get_customer" in names, sorted(names)
    assert shape(hidden, "leaky__get_config") == shape(missing, "leaky__no_such_tool"), (hidden, missing)
    assert shape(hidden, "leaky__get_config")[0] == INVALID_PARAMS
    err = error_of(denied, "leaky__get_customer")
    assert err.code == POLICY_DENIED, err
    assert err.message == "Denied by policy: VIP customer records are for the HR agent only", err.message
    assert "t6-intruder-c4" in text(own)

    received = gw.received("leaky")
    for m in ("t6-intruder-c1", "t6-intruder-c2", "vip-t6-intruder-c3"):
        assert m not in received, f"{m} reached the upstream"
    leaky_calls = [(c["name"], c.get("arguments", {})) for c in gw.calls("leaky")]
    assert ("get_customer", {"customer_id": "vip-t6-hr-c5"}) in leaky_calls, leaky_calls
    assert [c for c in leaky_calls if c[0] == "get_config"] == [("get_config", {})], "only the HR agent's config call arrived"

    deny = {r["tool"]: r for r in gw.decisions("t6-intruder") if r["decision"] == "deny" and r.get("method") == "tools/call"}
    assert deny["leaky__get_config"]["policies"] == ["service-config-hr-only"], deny
    assert deny["leaky__get_customer"]["policies"] == ["vip-customers-hr-only"], deny
    assert deny["leaky__get_customer"]["reason"] == "VIP customer records are for the HR agent only", deny

    assert {"leaky__get_customer", "leaky__get_config"} <= hr_names, sorted(hr_names)
    assert "vip-t6-hr-c5" in text(hr_vip) and "AWS_ACCESS_KEY_ID" in text(hr_config)
    allowed = {r.get("tool") for r in gw.decisions(HR) if r["decision"] == "allow"}
    assert {"leaky__get_customer", "leaky__get_config"} <= allowed, allowed
