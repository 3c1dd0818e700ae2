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
