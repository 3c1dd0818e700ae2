"""Denial of service (T13), end to end with the official SDK client over mTLS:
a server that hangs (tests/attacks/peers/hang_py.py), a server that floods
notifications (tests/attacks/peers/flood_py.py), oversized and deeply nested
request bodies, and an agent that hammers a rate-limited tool. In each case
the attacker gets a precise error, the gateway records it, and another agent
using server-everything (honest) is served on time alongside.

One gateway for the module: ``call_timeout_ms = 700``, breaker opening after
two failures for 60 s, ``max_body_bytes = 65536``, ``max_json_depth = 32``, and
``everything__get-sum`` limited to a burst of 2 per identity. The flood server
gets its own 30 s call timeout (the flood takes longer than 700 ms).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest

from attack_fixtures import BREAKER_OPEN, RATE_LIMITED, UPSTREAM_TIMEOUT
from attack_fixtures import (
    Agents, AttackGateway, agent_id, Upstream, connect, error_of, gateway_fixture, outcome, peer, start_gateway, text,
)
from conftest import NODE
from identity_fixtures import Pki, tls_context

pytestmark = pytest.mark.anyio

BODY = """
[limits]
call_timeout_ms = 700
max_body_bytes = 65536
max_json_depth = 32

[containment.breaker]
failures = 2
open_secs = 60

[containment.rate.tools."everything__get-sum"]
per_minute = 6
burst = 2
"""


@pytest.fixture(scope="module")
def gw(pki: Pki, everything_js: Path, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttackGateway]:
    yield from gateway_fixture(
        start_gateway(
            "dos",
            tmp_path_factory.mktemp("attacks-dos"),
            logs_dir,
            pki,
            [
                Upstream("everything", [NODE, str(everything_js), "stdio"]),
                Upstream("hang", peer("hang_py")),
                Upstream("flood", peer("flood_py"), extra="call_timeout_ms = 30000"),
            ],
            body=BODY,
        )
    )


async def timed(request) -> tuple[object, float]:
    began = time.monotonic()
    result = await outcome(request)
    return result, time.monotonic() - began


async def test_t13_a_hanging_server_times_out_and_its_breaker_fails_fast(gw: AttackGateway, agents: Agents) -> None:
    """``hang__slow_lookup`` never answers. Each call gets -32011 after the call
    timeout (the server is sent notifications/cancelled); after two the breaker
    opens and the next call fails at once with -32013 and retryAfterSeconds,
    never reaching the server; the opening is audited. Meanwhile another agent's
    echo through server-everything answers promptly, during the hang and after."""
    bystander_latency: list[float] = []
    async with connect(gw, agents("t13-hang")) as a, connect(gw, agents("t13-bystander")) as b:
        status = await outcome(a.call_tool("hang__status", {}))
        hung: list[tuple[object, float]] = []

        async def hang_twice() -> None:
            for key in ("t13-k1", "t13-k2"):
                hung.append(await timed(a.call_tool("hang__slow_lookup", {"key": key})))

        async with anyio.create_task_group() as tg:
            tg.start_soon(hang_twice)
            await anyio.sleep(0.2)
            for i in range(3):  # while the hang is in progress
                r, dt = await timed(b.call_tool("everything__echo", {"message": f"t13-during-{i}"}))
                assert text(r) == f"Echo: t13-during-{i}"
                bystander_latency.append(dt)
        fast, fast_dt = await timed(a.call_tool("hang__slow_lookup", {"key": "t13-k3"}))
        after, _ = await timed(b.call_tool("everything__echo", {"message": "t13-after"}))

    assert text(status) == "hang:status up"
    for r, dt in hung:
        err = error_of(r, "hang__slow_lookup")
        assert err.code == UPSTREAM_TIMEOUT, err
        assert 0.6 <= dt < 5, f"timed out after {dt:.2f}s (call_timeout_ms = 700)"
    err = error_of(fast, "hang__slow_lookup")
    assert err.code == BREAKER_OPEN, err
    assert err.data["retryAfterSeconds"] >= 1, err.data
    assert fast_dt < 0.5, f"an open breaker answered after {fast_dt:.2f}s"
    assert max(bystander_latency) < 1.0, bystander_latency
    assert text(after) == "Echo: t13-after"

    received = gw.received_messages("hang")
    keys = [m["params"]["arguments"]["key"] for m in received if m.get("method") == "tools/call" and m["params"]["name"] == "slow_lookup"]
    assert keys == ["t13-k1", "t13-k2"], f"the open breaker let a call through: {keys}"
    cancelled = [m for m in received if m.get("method") == "notifications/cancelled"]
    assert len(cancelled) == 2, cancelled
    opened = gw.wait_records(lambda r: r.get("kind") == "containment" and r.get("action") == "breaker-open")
    assert opened and "hang" in opened[0]["target"], opened


async def test_t13_a_notification_flood_is_bounded(gw: AttackGateway, agents: Agents) -> None:
    """``flood__flood(1500)`` sends 1500 progress, 1500 log and 1500
    tools/list_changed notifications in one call. The call still completes, the
    gateway's memory stays within a bound, the flood is not amplified into more
    re-lists of the server than notifications nor into a flood of audit records,
    and another agent's echo is answered promptly during the flood."""
    count = 1500
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    rss_before = gw.rss_kib()
    records_before = len(gw.records())
    lists_before = sum(1 for m in gw.received_messages("flood") if m.get("method") == "tools/list")
    latency: list[float] = []
    async with connect(gw, agents("t13-flooder"), timeout=60) as a, connect(gw, agents("t13-calm")) as b:
        result: list[object] = []

        async def flood() -> None:
            result.append(await outcome(a.call_tool("flood__flood", {"count": count}, progress_callback=on_progress)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(flood)
            await anyio.sleep(0.3)
            i = 0
            while not result:
                r, dt = await timed(b.call_tool("everything__echo", {"message": f"t13-calm-{i}"}))
                assert text(r) == f"Echo: t13-calm-{i}"
                latency.append(dt)
                i += 1
                await anyio.sleep(0.1)
        quiet = await outcome(a.call_tool("flood__quiet", {}))

    assert text(result[0]) == f"flood:done {count}"
    assert text(quiet) == "flood:quiet"
    assert latency and max(latency) < 2.0, latency
    grew = gw.rss_kib() - rss_before
    assert grew < 64 * 1024, f"the gateway grew by {grew} KiB during the flood"
    lists = sum(1 for m in gw.received_messages("flood") if m.get("method") == "tools/list") - lists_before
    # Re-lists are coalesced: one running and one queued at most, whatever
    # the number of list_changed notifications meanwhile.
    print(f"{count} list_changed notifications -> {lists} re-lists")
    assert 1 <= lists <= count // 10, f"{count} list_changed notifications became {lists} re-lists of the server"
    new = gw.records()[records_before:]
    assert len(new) < 100, f"{len(new)} audit records for one flooding call"
    flood_calls = [r for r in new if r.get("kind") == "decision" and r.get("tool") == "flood__flood"]
    assert [r["decision"] for r in flood_calls] == ["allow"], flood_calls
    assert len(progress) <= count


async def test_t13_oversized_and_deeply_nested_bodies_are_refused_before_the_upstream(gw: AttackGateway, agents: Agents, pki: Pki) -> None:
    """A body over ``max_body_bytes`` gets 413, JSON deeper than
    ``max_json_depth`` gets 400 -32600, neither reaches server-everything, each
    is a ``bad_request`` audit record naming the agent (never the body); the
    same agent's ordinary call right after is served."""
    leaf = agents("t13-bodies")
    since = len(gw.records())
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "everything__echo"}

    def call(message: object) -> dict:
        return {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "everything__echo",
                "arguments": {"message": message},
                "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}},
            },
        }

    deep: object = "t13-deep"
    for _ in range(60):
        deep = [deep]
    async with httpx2.AsyncClient(verify=tls_context(pki.ca, leaf), timeout=httpx2.Timeout(20.0)) as http:
        big = await http.post(gw.url, content=json.dumps(call("t13-big " + "A" * 100_000)), headers=headers)
        nested = await http.post(gw.url, content=json.dumps(call(deep)), headers=headers)
        ok = await http.post(gw.url, content=json.dumps(call("t13-normal")), headers=headers)

    assert big.status_code == 413, (big.status_code, big.text[:200])
    assert nested.status_code == 400, (nested.status_code, nested.text[:200])
    assert nested.json()["error"]["code"] == -32600, nested.text
    assert ok.status_code == 200 and "Echo: t13-normal" in ok.text, ok.text
    received = gw.received("everything")
    assert "t13-big" not in received and "t13-deep" not in received
    assert "t13-normal" in received
    bad = [r for r in gw.records()[since:] if r.get("kind") == "bad_request"]
    assert [(r["status"], r["identity"]["agent"]) for r in bad] == [(413, agent_id("t13-bodies")), (400, agent_id("t13-bodies"))], bad
    assert "larger than" in bad[0]["reason"] and "deeper than" in bad[1]["reason"], bad
    assert not any("t13-big" in json.dumps(r) or "t13-deep" in json.dumps(r) for r in bad), "a refused body was recorded"


async def test_t13_rate_limit_refuses_the_greedy_agent_only(gw: AttackGateway, agents: Agents) -> None:
    """An agent hammers ``everything__get-sum`` (burst 2 per identity): calls past
    the burst get -32029 with ``data.limit`` and ``retryAfterSeconds`` and never
    reach server-everything; the refusals are audited as denials; another agent's
    sums are served at the same time."""
    async with connect(gw, agents("t13-greedy")) as greedy, connect(gw, agents("t13-fair")) as fair:
        outcomes = [await outcome(greedy.call_tool("everything__get-sum", {"a": 13000 + i, "b": 1})) for i in range(5)]
        fair_ok = [await outcome(fair.call_tool("everything__get-sum", {"a": 13100 + i, "b": 1})) for i in range(2)]

    served = [r for r in outcomes if not hasattr(r, "code")]
    refused = [error_of(r, "get-sum") for r in outcomes if hasattr(r, "code")]
    assert len(served) == 2 and len(refused) == 3, outcomes
    for err in refused:
        assert err.code == RATE_LIMITED, err
        assert err.data["limit"] == "tool:everything__get-sum", err.data
        assert err.data["retryAfterSeconds"] >= 1, err.data
    assert [text(r) for r in fair_ok] == ["The sum of 13100 and 1 is 13101.", "The sum of 13101 and 1 is 13102."]
    sums = [c["arguments"]["a"] for c in gw.calls("everything") if c["name"] == "get-sum"]
    assert [a for a in sums if 13000 <= a < 13100] == [13000, 13001], sums
    calls = gw.decisions("t13-greedy", "everything__get-sum")
    assert len(calls) == 5, calls
    assert all(r["decision"] == "allow" for r in gw.decisions("t13-fair", "everything__get-sum"))


async def test_t13_rate_limited_calls_are_audited_as_refused(gw: AttackGateway, agents: Agents) -> None:
    """The audit record of a call refused with -32029 must say it was refused
    (docs/containment.md: requests refused by containment are decision records
    with ``policies = ["containment:<source>"]``), not that it was allowed."""
    async with connect(gw, agents("t13-greedy-audit")) as greedy:
        outcomes = [await outcome(greedy.call_tool("everything__get-sum", {"a": 13200 + i, "b": 1})) for i in range(3)]
    refused = [r for r in outcomes if getattr(r, "code", None) == RATE_LIMITED]
    assert len(refused) == 1, outcomes
    records = gw.decisions("t13-greedy-audit", "everything__get-sum")
    assert [r["decision"] for r in records] == ["allow", "allow", "deny"], [(r["decision"], r["reason"], r["policies"]) for r in records]
    assert records[-1]["policies"] == ["containment:rate:tool:everything__get-sum"], records[-1]
    assert records[-1]["reason"].startswith("rate limited"), records[-1]


async def test_t13_breaker_refusals_are_audited_as_refused(gw: AttackGateway, agents: Agents) -> None:
    """The audit record of a call refused with -32013 must say it was refused."""
    async with connect(gw, agents("t13-breaker-audit")) as c:
        for i in range(3):  # opens the breaker unless an earlier test did
            last = await outcome(c.call_tool("hang__slow_lookup", {"key": f"t13-audit-{i}"}))
            if getattr(last, "code", None) == BREAKER_OPEN:
                break
    assert getattr(last, "code", None) == BREAKER_OPEN, last
    record = gw.decisions("t13-breaker-audit", "hang__slow_lookup")[-1]
    assert record["decision"] == "deny", (record["decision"], record["reason"], record["policies"])
    assert record["policies"] == ["containment:breaker:hang"], record
