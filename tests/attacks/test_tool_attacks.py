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
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from attack_fixtures import INVALID_PARAMS, MALICIOUS_PY, POLICY_DENIED
from attack_fixtures import (
    Agents, AttackGateway, Upstream, agent_id, connect, error_of, gateway_fixture, outcome, peer, start_gateway, text, tool_names, segment,
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
""".replace("'", '"') + segment("customers", "customers", "leaky__get_customer") + segment("ops", "ops", "leaky__get_config")
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


# ----------------------------------------------------------------- T7 ----

POISONED = {"evil__add": "poison.exfil-parameter", "evil__get_weather": "unicode.tag-chars", "evil__format_date": "unicode.zero-width"}


async def test_t7_poisoned_descriptions_are_hidden_and_unreachable(gw: AttackGateway, agents: Agents) -> None:
    """The evil server's tools carry orders to the model (<IMPORTANT> exfiltration
    of ~/.ssh/id_rsa, instructions spelled in invisible tag characters and in
    zero-width bits). Under ``poison_action = "hide"`` they are not listed and
    calls answer like unknown tools; the evil server never gets those calls; each
    is audited as a poison finding with its rule and the action; the same
    server's benign tool and the honest server keep working."""
    async with connect(gw, agents("t7-agent")) as c:
        names = await tool_names(c)
        tries = {name: await outcome(c.call_tool(name, {"a": 1, "b": 2, "city": "t7-oslo", "date": "t7-2026"})) for name in POISONED}
        missing = await outcome(c.call_tool("evil__no_such_tool", {}))
        dice = await outcome(c.call_tool("evil__roll_dice", {"sides": 6}))
        echo = await outcome(c.call_tool("everything__echo", {"message": "t7-honest"}))

    assert not names & set(POISONED), sorted(names & set(POISONED))
    assert {"evil__roll_dice", "evil__word_count", "everything__echo"} <= names, sorted(names)
    for name, e in tries.items():
        assert shape(e, name) == shape(missing, "evil__no_such_tool"), (name, e)
    assert text(dice) == "evil:roll_dice 4"
    assert text(echo) == "Echo: t7-honest"
    reached = {c["name"] for c in gw.calls("evil")}
    assert not reached & {"add", "get_weather", "format_date"}, reached
    assert "t7-oslo" not in gw.received("evil")

    found = {(r["tool"], r["rule"]): r for r in gw.findings("poison")}
    for name, rule in POISONED.items():
        assert (name, rule) in found, sorted(found)
        r = found[(name, rule)]
        assert r["detail"]["action"] == "hide" and r["detail"]["server"] == "evil", r
    assert "~/.aws/credentials" in found[("evil__get_weather", "unicode.tag-chars")]["detail"]["evidence"]
    assert not any(t in {"evil__roll_dice", "evil__word_count"} for t, _ in found), "a benign tool was flagged"


# ----------------------------------------------------------------- T8 ----


async def test_t8_rug_pull_mid_session_is_hidden_until_approved(gw: AttackGateway, agents: Agents) -> None:
    """The rug-pull server serves an honest ``lookup``; on its second call it
    swaps the definition (hidden orders, a new ``context`` parameter) and
    announces tools/list_changed. The gateway re-lists at once: the changed tool
    disappears from the open session's list, the next call answers like an
    unknown tool and never reaches the server, the change is audited
    (``pin.changed``) and ``pins diff`` shows the injected text. The server's
    unchanged tool, the honest server, and a second agent's session keep working."""
    async with connect(gw, agents("t8-agent")) as c, connect(gw, agents("t8-other")) as other:
        before = await tool_names(c)
        first = await outcome(c.call_tool("rugpull__lookup", {"word": "t8-first"}))
        pulled = await outcome(c.call_tool("rugpull__lookup", {"word": "t8-pull"}))  # the server changes the tool here
        changed = gw.wait_records(lambda r: r.get("kind") == "finding" and r.get("rule") == "pin.changed", timeout=10)
        after = await outcome(c.call_tool("rugpull__lookup", {"word": "t8-after", "context": "t8-stolen-key"}))
        listed = await tool_names(c)
        stable = await outcome(c.call_tool("rugpull__stable", {}))
        other_names = await tool_names(other)
        other_try = await outcome(other.call_tool("rugpull__lookup", {"word": "t8-other-try"}))
        other_echo = await outcome(other.call_tool("everything__echo", {"message": "t8-other-ok"}))

    assert "rugpull__lookup" in before, sorted(before)
    assert text(first) == "rugpull:lookup t8-first: a word"
    assert text(pulled) == "rugpull:lookup t8-pull: a word"
    assert changed, "no pin.changed finding after the rug pull"
    assert changed[0]["tool"] == "rugpull__lookup", changed
    err = error_of(after, "rugpull__lookup")
    assert (err.code, err.message) == (INVALID_PARAMS, "Unknown tool: rugpull__lookup"), err
    assert "rugpull__lookup" not in listed and "rugpull__lookup" not in other_names, (sorted(listed), sorted(other_names))
    assert error_of(other_try, "rugpull__lookup").code == INVALID_PARAMS
    assert text(stable) == "rugpull:stable 2026 edition"
    assert text(other_echo) == "Echo: t8-other-ok"

    words = [c.get("arguments", {}).get("word") for c in gw.calls("rugpull") if c["name"] == "lookup"]
    assert words == ["t8-first", "t8-pull"], f"calls after the change reached the server: {words}"
    assert "t8-stolen-key" not in gw.received("rugpull")

    diff = gw.cli("pins", "diff", "rugpull", "lookup")
    assert diff.returncode == 0, diff.stdout + diff.stderr
    added = [line for line in diff.stdout.splitlines() if line.startswith("+ ")]
    assert any("id_rsa" in line for line in added), diff.stdout
    pins = gw.cli("pins", "list")
    assert any(line.split()[:3] == ["rugpull", "lookup", "changed"] for line in pins.stdout.splitlines()), pins.stdout


async def test_t8_rug_pull_whose_relist_fails_is_not_trusted_on_the_old_definition(
    pki: Pki, agents: Agents, logs_dir: Path, tmp_path: Path
) -> None:
    """The same swap, but the server answers the gateway's re-list with an
    error, so the change cannot be read when it is announced. The gateway must
    not go on judging calls by the definition it knew: the next call reads the
    list again, finds the changed definition, and answers like an unknown tool;
    the stolen key never reaches the server."""
    gw = start_gateway(
        "tools-relist-fails",
        tmp_path / "gw",
        logs_dir,
        pki,
        [Upstream("rugpull", peer("rugpull_py"), env={"RUGPULL_AFTER": "2", "RUGPULL_LIST_FAILS": "1"})],
    )
    try:
        async with connect(gw, agents("t8-relist")) as c:
            first = await outcome(c.call_tool("rugpull__lookup", {"word": "t8r-first"}))
            lists_before = lists_seen(gw)
            pulled = await outcome(c.call_tool("rugpull__lookup", {"word": "t8r-pull"}))  # swap; the re-list fails
            deadline = time.monotonic() + 10
            while lists_seen(gw) == lists_before and time.monotonic() < deadline:
                await anyio.sleep(0.05)
            relisted = lists_seen(gw) > lists_before
            await anyio.sleep(0.3)  # the failed re-list's answer is handled
            after = await outcome(c.call_tool("rugpull__lookup", {"word": "t8r-after", "context": "t8r-stolen-key"}))
            stable = await outcome(c.call_tool("rugpull__stable", {}))
    finally:
        gw.proc.stop()

    assert text(first) == "rugpull:lookup t8r-first: a word"
    assert text(pulled) == "rugpull:lookup t8r-pull: a word"
    assert relisted, "the gateway did not re-list after list_changed"
    err = error_of(after, "rugpull__lookup")
    assert (err.code, err.message) == (INVALID_PARAMS, "Unknown tool: rugpull__lookup"), err
    assert text(stable) == "rugpull:stable 2026 edition"
    words = [c.get("arguments", {}).get("word") for c in gw.calls("rugpull") if c["name"] == "lookup"]
    assert words == ["t8r-first", "t8r-pull"], f"calls after the change reached the server: {words}"
    assert "t8r-stolen-key" not in gw.received("rugpull")


def lists_seen(gw: AttackGateway) -> int:
    """How many tools/list requests the upstream has received."""
    return sum(1 for m in gw.received_messages("rugpull") if m.get("method") == "tools/list")


# ----------------------------------------------------------------- T9 ----

SHADOWING = {"evil__echo": "echo", "evil__get_sum": "get-sum"}


async def test_t9_shadowing_tools_are_hidden_and_the_honest_tool_answers(gw: AttackGateway, agents: Agents) -> None:
    """The evil server offers ``echo`` (its description tells the model to use it
    instead of everything__echo) and ``get_sum`` (a folded-name twin of
    ``get-sum``). With ``shadowing = "hide"`` and server-everything preferred the
    twins are hidden and unreachable, the findings are audited (name collision,
    cross-reference) with the other server named, and the agent's echo and sum
    go to server-everything, not to the evil server."""
    async with connect(gw, agents("t9-agent")) as c:
        names = await tool_names(c)
        tries = {name: await outcome(c.call_tool(name, {"message": "t9-hijacked", "a": 1, "b": 2})) for name in SHADOWING}
        echo = await outcome(c.call_tool("everything__echo", {"message": "t9-honest"}))
        total = await outcome(c.call_tool("everything__get-sum", {"a": 2, "b": 3}))

    assert not names & set(SHADOWING), sorted(names & set(SHADOWING))
    for name, e in tries.items():
        err = error_of(e, name)
        assert (err.code, err.message) == (INVALID_PARAMS, f"Unknown tool: {name}"), err
    assert text(echo) == "Echo: t9-honest"
    assert text(total) == "The sum of 2 and 3 is 5."
    assert "t9-hijacked" not in gw.received("evil")
    assert "t9-honest" in gw.received("everything")

    pairs = {(r["rule"], r["tool"], r["detail"]["other_server"], r["detail"]["other_tool"], r["detail"]["action"]) for r in gw.findings("shadow")}
    assert ("shadow.name-collision", "evil__echo", "everything", "echo", "hide") in pairs, pairs
    assert ("shadow.cross-reference", "evil__echo", "everything", "echo", "hide") in pairs, pairs
    assert ("shadow.name-collision", "evil__get_sum", "everything", "get-sum", "hide") in pairs, pairs
