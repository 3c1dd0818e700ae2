"""Core MCP features through Portcullis (and directly), against server-everything.

Each test runs once per target (see conftest.py): route x upstream x era.
Names go through ``target.name(...)``: bare directly, ``everything__<name>``
through the gateway (tools are namespaced ``<server>__<tool>``; prompts are
assumed to follow the same rule).
"""

from __future__ import annotations

import mcp_types as types
import pytest

from conftest import Recorder, Target

pytestmark = pytest.mark.anyio

# server-everything (2026.8.31) names used below.
ECHO = "echo"
LONG_RUNNING = "trigger-long-running-operation"  # args: duration (s), steps; progress per step
ELICIT = "trigger-elicitation-request"  # no args; form-mode elicitation/create, echoes the answer
SIMPLE_PROMPT = "simple-prompt"
ARGS_PROMPT = "args-prompt"  # args: city (required), state (optional)
STATIC_DOC = "demo://resource/static/document/architecture.md"


def texts(result: types.CallToolResult) -> list[str]:
    return [c.text for c in result.content if isinstance(c, types.TextContent)]


async def test_list_tools(connect, target: Target) -> None:
    async with connect() as client:
        result = await client.list_tools()
    names = {t.name for t in result.tools}
    for bare in (ECHO, "get-sum", LONG_RUNNING, ELICIT):
        assert target.name(bare) in names, sorted(names)
    if target.prefix:
        assert all(n.startswith(target.prefix) for n in names), sorted(names)
    echo = next(t for t in result.tools if t.name == target.name(ECHO))
    assert "message" in echo.input_schema.get("properties", {})


async def test_call_echo(connect, target: Target) -> None:
    async with connect() as client:
        result = await client.call_tool(target.name(ECHO), {"message": "hi"})
    assert not result.is_error
    assert texts(result) == ["Echo: hi"]


async def test_call_get_sum_structured_args(connect, target: Target) -> None:
    async with connect() as client:
        result = await client.call_tool(target.name("get-sum"), {"a": 2, "b": 40})
    assert not result.is_error
    assert any("42" in t for t in texts(result)), texts(result)


async def test_unknown_tool_is_an_error(connect, target: Target) -> None:
    async with connect() as client:
        try:
            result = await client.call_tool(target.name("no-such-tool"), {})
        except Exception:  # a JSON-RPC error is as good as an isError result
            return
    assert result.is_error


async def test_read_resource(connect, target: Target) -> None:
    async with connect() as client:
        listed = await client.list_resources()
        # The gateway may rewrite URIs: read whatever it lists for the document.
        uris = [str(r.uri) for r in listed.resources]
        uri = next((u for u in uris if u.endswith("static/document/architecture.md")), None)
        assert uri is not None, uris
        read = await client.read_resource(uri)
    assert len(read.contents) == 1
    content = read.contents[0]
    assert isinstance(content, types.TextResourceContents)
    assert content.text.startswith("# Everything Server")
    assert content.mime_type == "text/markdown"


async def test_list_and_get_prompt(connect, target: Target) -> None:
    async with connect() as client:
        listed = await client.list_prompts()
        names = {p.name for p in listed.prompts}
        assert {target.name(SIMPLE_PROMPT), target.name(ARGS_PROMPT)} <= names, sorted(names)
        args_prompt = next(p for p in listed.prompts if p.name == target.name(ARGS_PROMPT))
        assert {a.name for a in args_prompt.arguments or []} >= {"city", "state"}

        got = await client.get_prompt(target.name(ARGS_PROMPT), {"city": "Paris", "state": "Texas"})
    assert len(got.messages) == 1
    msg = got.messages[0]
    assert msg.role == "user"
    assert isinstance(msg.content, types.TextContent)
    assert "Paris" in msg.content.text and "Texas" in msg.content.text


@pytest.mark.timeout(60)
async def test_progress_notifications(connect, target: Target, recorder: Recorder) -> None:
    async with connect() as client:
        result = await client.call_tool(
            target.name(LONG_RUNNING),
            {"duration": 1.5, "steps": 3},
            progress_callback=recorder.on_progress,
        )
    assert not result.is_error
    assert "Long running operation completed" in texts(result)[0]
    assert [(p, t) for p, t, _ in recorder.progress] == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.timeout(60)
async def test_elicitation_accept(connect, target: Target, recorder: Recorder) -> None:
    recorder.elicit_reply = types.ElicitResult(
        action="accept", content={"name": "Ada Lovelace", "check": True, "integer": 7}
    )
    async with connect() as client:
        result = await client.call_tool(target.name(ELICIT), {})
    assert not result.is_error
    assert len(recorder.elicitations) == 1
    asked = recorder.elicitations[0]
    assert asked.message == "Please provide inputs for the following fields:"
    assert isinstance(asked, types.ElicitRequestFormParams)
    assert "name" in asked.requested_schema["properties"]
    body = "\n".join(texts(result))
    assert "User provided the requested information" in body
    assert "- Name: Ada Lovelace" in body
    assert "- Agreed to terms: true" in body
    assert "- Favorite Integer: 7" in body


@pytest.mark.timeout(60)
async def test_elicitation_decline(connect, target: Target, recorder: Recorder) -> None:
    recorder.elicit_reply = types.ElicitResult(action="decline")
    async with connect() as client:
        result = await client.call_tool(target.name(ELICIT), {})
    assert len(recorder.elicitations) == 1
    assert "User declined" in "\n".join(texts(result))
