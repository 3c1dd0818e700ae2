"""`portcullis wrap -- CMD` as a local client's stdio server, in front of
server-everything over stdio: the Python SDK client launches the gateway,
the gateway launches the real server. Names pass unchanged."""

from __future__ import annotations

import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from conftest import IN_CI, Recorder, everything_stdio_argv, gateway_bin

pytestmark = pytest.mark.anyio


def wrapped() -> StdioServerParameters:
    exe = gateway_bin()
    if not exe.exists():
        if IN_CI:
            pytest.fail(f"gateway binary missing: {exe}")
        pytest.skip(f"gateway binary missing: {exe}")
    argv = everything_stdio_argv()
    return StdioServerParameters(command=str(exe), args=["wrap", "--name", "everything", "--", *argv])


async def test_wrap_lists_and_calls_with_names_unchanged() -> None:
    async with Client(wrapped(), mode="legacy", read_timeout_seconds=20) as client:
        tools = await client.list_tools()
        names = {t.name for t in tools.tools}
        assert "echo" in names and not any("__" in n for n in names), sorted(names)
        result = await client.call_tool("echo", {"message": "through wrap"})
    assert [c.text for c in result.content if isinstance(c, types.TextContent)] == ["Echo: through wrap"]


async def test_wrap_relays_progress_and_elicitation() -> None:
    rec = Recorder()
    rec.elicit_reply = types.ElicitResult(action="accept", content={"color": "blue"})
    async with Client(wrapped(), mode="legacy", elicitation_callback=rec.on_elicit, read_timeout_seconds=20) as client:
        await client.call_tool(
            "trigger-long-running-operation", {"duration": 1, "steps": 3}, progress_callback=rec.on_progress
        )
        assert len(rec.progress) >= 3, rec.progress
        result = await client.call_tool("trigger-elicitation-request", {})
    assert rec.elicitations, "the server's elicitation reached the client"
    assert not result.is_error


async def test_wrap_audits_every_call_of_the_sdk_client(tmp_path) -> None:
    """With --audit-log, each call the Python SDK client makes through the
    stdio front has its decision in the file (identity user@agent), and the
    chain verifies with the real CLI."""
    import json
    import os
    import subprocess

    audit = tmp_path / "audit.jsonl"
    base = wrapped()
    params = StdioServerParameters(
        command=base.command,
        args=["wrap", "--name", "everything", "--agent", "e2e-agent", "--audit-log", str(audit), *base.args[3:]],
        env={**os.environ, "PORTCULLIS_STATE_DIR": str(tmp_path / "state")},
    )
    async with Client(params, mode="legacy", read_timeout_seconds=20) as client:
        await client.list_tools()
        await client.call_tool("echo", {"message": "audited"})
        records = [json.loads(line) for line in audit.read_text().splitlines()]
    decisions = [r for r in records if r["kind"] == "decision" and r.get("tool") == "echo"]
    assert decisions, records
    d = decisions[-1]
    assert d["decision"] == "allow"
    assert d["identity"]["key"].endswith("@e2e-agent"), d["identity"]
    assert "audited" not in audit.read_text(), "arguments are hashed, not copied"
    out = subprocess.run([base.command, "audit", "verify", str(audit)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ok: "), out.stdout
