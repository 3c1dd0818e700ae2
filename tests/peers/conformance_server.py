"""Conformance peer: an MCP server (official Python SDK, MCPServer) that implements
what the server scenarios of the official conformance suite ask for.

Why: the suite (`@modelcontextprotocol/conformance`) calls fixed names such as
`test_simple_text`, `test://static-text` or `test_simple_prompt` that no
published server offers; against server-everything most scenarios can only
fail. This peer offers every name the 0.1.16 server scenarios use (handshake
era), plus the diagnostic tools of the 0.2.0-alpha 2026-07-28 scenarios
(input-required rounds, missing capability, listen triggers, an
`x-mcp-header` parameter), so that tests/conformance/run.sh can run the whole
suite directly against it and through the gateway.

It serves BOTH eras on one endpoint (MCPServer streamable-http: a request
with a 2026-07-28 `MCP-Protocol-Version` header goes to the stateless
handler, anything else to the session transport). An in-memory event store
with a retry interval is configured so that handshake-era POST SSE streams
carry priming events and `test_reconnection` can close its stream mid-call
(SEP-1699, scenario server-sse-polling). Binding 127.0.0.1 turns on the SDK's
Host/Origin (DNS-rebinding) checks.

Run:  python conformance_server.py [PORT]     (default: env PORT, else 3001)
      endpoint http://127.0.0.1:PORT/mcp; it prints one line to stderr at start,
      then wait until the port accepts connections.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import struct
import sys
import zlib
from collections import OrderedDict
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.shared.exceptions import MCPError
from mcp_types import (
    AudioContent,
    CallToolResult,
    ClientCapabilities,
    Completion,
    CreateMessageRequest,
    CreateMessageRequestParams,
    ElicitRequest,
    ElicitRequestFormParams,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import Field

MODERN = "2026-07-28"

# ------------------------------------------------------------------ media ----


def _png_1x1_red() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    idat = zlib.compress(b"\x00\xff\x00\x00")  # filter byte + one red pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _wav_silence(samples: int = 800, rate: int = 8000) -> bytes:
    data = b"\x00\x00" * samples  # 16-bit mono silence
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(riff)) + riff


PNG = _png_1x1_red()
PNG_B64 = base64.b64encode(PNG).decode()
WAV_B64 = base64.b64encode(_wav_silence()).decode()


def text(s: str) -> TextContent:
    return TextContent(type="text", text=s)


def result(*blocks: Any, is_error: bool = False) -> CallToolResult:
    return CallToolResult(content=list(blocks), is_error=is_error)


def is_modern(ctx: Context) -> bool:
    return ctx.protocol_version == MODERN


# ----------------------------------------------------------- event store ----


class MemoryEventStore(EventStore):
    """Bounded in-memory store for handshake-era resumability.

    The SDK shares one store across sessions and uses str(request id) as the
    stream id, so event ids are a global counter and replay is limited to
    events of the same stream after the given id.
    """

    def __init__(self, limit: int = 5000) -> None:
        self._events: OrderedDict[str, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self._ids = itertools.count(1)
        self._limit = limit

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = str(next(self._ids))
        self._events[event_id] = (stream_id, message)
        while len(self._events) > self._limit:
            self._events.popitem(last=False)
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        if last_event_id not in self._events:
            return None
        stream_id = self._events[last_event_id][0]
        after = False
        for event_id, (sid, message) in list(self._events.items()):
            if event_id == last_event_id:
                after = True
                continue
            if after and sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


# --- JSON Schema 2020-12 keywords must survive tools/list (SEP-1613; the 0.2
# suite adds SEP-2106: $anchor, allOf/anyOf, if/then/else) ---

JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def json_schema_2020_12_tool(
    name: str | None = None,
    address: dict[str, Any] | None = None,
    contactMethod: str | None = None,  # noqa: N803 - wire name
    phone: str | None = None,
    email: str | None = None,
) -> CallToolResult:
    args = {"name": name, "address": address, "contactMethod": contactMethod, "phone": phone, "email": email}
    return result(text("JSON Schema 2020-12 tool called with " + json.dumps({k: v for k, v in args.items() if v})))


# Registered through MCPServer(tools=...) with the schema written by hand
# (a generated schema would not carry $schema/$defs).
JSON_SCHEMA_TOOL = Tool.from_function(
    json_schema_2020_12_tool,
    name="json_schema_2020_12_tool",
    description="Tool with JSON Schema 2020-12 features",
    structured_output=False,
).model_copy(update={"parameters": JSON_SCHEMA_2020_12})


# ------------------------------------------------------------------- app ----

app = MCPServer(
    "portcullis-conformance-peer",
    version="1.0.0",
    tools=[JSON_SCHEMA_TOOL],
    instructions="Test peer implementing the fixtures of the official MCP conformance server scenarios.",
)
_low = app._lowlevel_server  # noqa: SLF001 - handlers MCPServer has no decorator for


def tool(name: str, description: str):
    """Register an unstructured tool (results are content blocks only)."""
    return app.tool(name=name, description=description, structured_output=False)


# --- content tools (tools-call-*) ---


@tool("test_simple_text", "Returns a simple text response")
def test_simple_text() -> CallToolResult:
    return result(text("This is a simple text response for testing."))


@tool("test_image_content", "Returns a 1x1 red PNG image")
def test_image_content() -> CallToolResult:
    return result(ImageContent(type="image", data=PNG_B64, mime_type="image/png"))


@tool("test_audio_content", "Returns a short silent WAV clip")
def test_audio_content() -> CallToolResult:
    return result(AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav"))


@tool("test_embedded_resource", "Returns an embedded text resource")
def test_embedded_resource() -> CallToolResult:
    return result(
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
            ),
        )
    )


@tool("test_multiple_content_types", "Returns text, image and resource content")
def test_multiple_content_types() -> CallToolResult:
    return result(
        text("Multiple content types test:"),
        ImageContent(type="image", data=PNG_B64, mime_type="image/png"),
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="test://mixed-content-resource",
                mime_type="application/json",
                text=json.dumps({"test": "data", "value": 123}, separators=(",", ":")),
            ),
        ),
    )


@tool("test_error_handling", "Always fails with a tool error")
def test_error_handling() -> CallToolResult:
    return result(text("This tool intentionally returns an error for testing"), is_error=True)


@tool("test_tool_with_logging", "Sends three info log notifications while running")
async def test_tool_with_logging(ctx: Context) -> CallToolResult:
    await ctx.log("info", "Tool execution started")
    await asyncio.sleep(0.05)
    await ctx.log("info", "Tool processing data")
    await asyncio.sleep(0.05)
    await ctx.log("info", "Tool execution completed")
    return result(text("Tool with logging executed successfully"))


@tool("test_tool_with_progress", "Reports progress 0, 50, 100 of 100")
async def test_tool_with_progress(ctx: Context) -> CallToolResult:
    for i, step in enumerate((0, 50, 100)):
        if i:
            await asyncio.sleep(0.05)
        await ctx.report_progress(step, 100)
    return result(text("Tool with progress executed successfully"))


@tool("test_reconnection", "Closes its SSE stream mid-call; the result arrives after the client resumes")
async def test_reconnection(ctx: Context) -> CallToolResult:
    await asyncio.sleep(0.1)
    await ctx.close_sse_stream()  # no-op unless the transport has an event store
    await asyncio.sleep(0.3)
    return result(text("Reconnection test completed"))


# --- requests to the client: a mid-call server->client request in the handshake
# era, an InputRequiredResult round at 2026-07-28 (the same tool serves both) ---


class _Ask:
    """The 2026-07-28 side of a question: the InputRequiredResult to return."""

    def __init__(self, irr: InputRequiredResult) -> None:
        self.irr = irr


async def ask_elicit(ctx: Context, key: str, message: str, schema: dict[str, Any]) -> Any:
    if not is_modern(ctx):
        return await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_context.request_id)
    answer = (ctx.input_responses or {}).get(key)
    if answer is None or getattr(answer, "action", None) is None:
        req = ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))
        return _Ask(InputRequiredResult(input_requests={key: req}))
    return answer


async def ask_sampling(ctx: Context, key: str, prompt: str, max_tokens: int) -> Any:
    if not is_modern(ctx):
        return await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=text(prompt))],
            max_tokens=max_tokens,
            related_request_id=ctx.request_context.request_id,
        )
    answer = (ctx.input_responses or {}).get(key)
    if answer is None or getattr(answer, "content", None) is None:
        return _Ask(InputRequiredResult(input_requests={key: _sampling_request(prompt, max_tokens)}))
    return answer


@tool("test_sampling", "Asks the client's LLM (sampling/createMessage)")
async def test_sampling(prompt: str, ctx: Context) -> CallToolResult | InputRequiredResult:
    reply = await ask_sampling(ctx, "sampling", prompt, 100)
    if isinstance(reply, _Ask):
        return reply.irr
    content = reply.content
    said = getattr(content, "text", None) or json.dumps(content.model_dump(mode="json", by_alias=True))
    return result(text(f"LLM response: {said}"))


async def _elicit(ctx: Context, message: str, schema: dict[str, Any]) -> CallToolResult | InputRequiredResult:
    answer = await ask_elicit(ctx, "elicitation", message, schema)
    if isinstance(answer, _Ask):
        return answer.irr
    return result(
        text(f"Elicitation completed: action={answer.action}, content={json.dumps(answer.content or {})}")
    )


@tool("test_elicitation", "Asks the user for a username and email (elicitation/create)")
async def test_elicitation(message: str, ctx: Context) -> CallToolResult | InputRequiredResult:
    schema = {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    }
    answer = await ask_elicit(ctx, "elicitation", message, schema)
    if isinstance(answer, _Ask):
        return answer.irr
    return result(text(f"User response: action={answer.action}, content={json.dumps(answer.content or {})}"))


@tool("test_elicitation_sep1034_defaults", "Elicitation whose schema has defaults for every primitive type")
async def test_elicitation_sep1034_defaults(ctx: Context) -> CallToolResult | InputRequiredResult:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active",
            },
            "verified": {"type": "boolean", "description": "Verification status", "default": True},
        },
        "required": [],
    }
    return await _elicit(ctx, "Please review and update the form fields with defaults", schema)


@tool("test_elicitation_sep1330_enums", "Elicitation using the five SEP-1330 enum schema variants")
async def test_elicitation_sep1330_enums(ctx: Context) -> CallToolResult | InputRequiredResult:
    titled = [{"const": f"value{i}", "title": t} for i, t in ((1, "First Option"), (2, "Second Option"), (3, "Third Option"))]
    titled_multi = [
        {"const": f"value{i}", "title": t} for i, t in ((1, "First Choice"), (2, "Second Choice"), (3, "Third Choice"))
    ]
    schema = {
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
            "titledSingle": {"type": "string", "oneOf": titled},
            "legacyEnum": {
                "type": "string",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
            "titledMulti": {"type": "array", "items": {"anyOf": titled_multi}},
        },
        "required": [],
    }
    return await _elicit(ctx, "Please choose from the enum variants", schema)


# --- x-mcp-header parameter (2026 http-custom-header-server-validation) ---


@tool("test_header_param", "Echoes a string argument that is mirrored in the Mcp-Param-Region header")
def test_header_param(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> CallToolResult:
    return result(text(f"region={region}"))


# --- 2026-07-28 diagnostics (server-stateless) ---


@tool("test_missing_capability", "Needs the client's sampling capability; fails with -32021 without it")
async def test_missing_capability(ctx: Context) -> CallToolResult:
    caps = ctx.client_capabilities
    if caps is None or caps.sampling is None:
        raise MCPError(
            code=-32021,
            message="Missing required client capability: sampling",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return result(text("client declared sampling"))


@tool("test_logging_tool", "Logs one info message (delivered at 2026 only when the request opts in via logLevel)")
async def test_logging_tool(ctx: Context) -> CallToolResult:
    await ctx.log("info", "test_logging_tool ran")
    return result(text("logged"))


def _elicit_request(message: str, props: dict[str, Any], required: list[str]) -> ElicitRequest:
    return ElicitRequest(
        params=ElicitRequestFormParams(
            message=message,
            requested_schema={"type": "object", "properties": props, "required": required},
        )
    )


def _sampling_request(prompt: str, max_tokens: int) -> CreateMessageRequest:
    return CreateMessageRequest(
        params=CreateMessageRequestParams(
            messages=[SamplingMessage(role="user", content=text(prompt))], max_tokens=max_tokens
        )
    )


@tool("test_streaming_elicitation", "Asks for a name: InputRequiredResult at 2026, elicitation/create before")
async def test_streaming_elicitation(ctx: Context) -> CallToolResult | InputRequiredResult:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    answer = await ask_elicit(ctx, "name", "What is your name?", schema)
    if isinstance(answer, _Ask):
        return answer.irr
    return result(text(f"Hello, {(answer.content or {}).get('name')}"))


_toggle = {"tool": False, "prompt": False}


def _dynamic_tool() -> CallToolResult:
    return result(text("dynamic tool"))


def _dynamic_prompt() -> str:
    return "dynamic prompt"


@tool("test_trigger_tool_change", "Adds or removes a tool and notifies listen streams")
async def test_trigger_tool_change(ctx: Context) -> CallToolResult:
    if _toggle["tool"]:
        app.remove_tool("test_dynamic_tool")
    else:
        app.add_tool(_dynamic_tool, name="test_dynamic_tool", description="Appears and disappears", structured_output=False)
    _toggle["tool"] = not _toggle["tool"]
    await ctx.notify_tools_changed()
    return result(text("tool list changed"))


@tool("test_trigger_prompt_change", "Adds or removes a prompt and notifies listen streams")
async def test_trigger_prompt_change(ctx: Context) -> CallToolResult:
    if _toggle["prompt"]:
        app.remove_prompt("test_dynamic_prompt")
    else:
        app.prompt(name="test_dynamic_prompt", description="Appears and disappears")(_dynamic_prompt)
    _toggle["prompt"] = not _toggle["prompt"]
    await ctx.notify_prompts_changed()
    return result(text("prompt list changed"))


# --- 2026-07-28 InputRequiredResult rounds (input-required-result-*) ---


def _accepted_content(answer: Any) -> dict[str, Any] | None:
    if answer is None or getattr(answer, "action", None) != "accept":
        return None
    return answer.content or {}


def _needs_modern(ctx: Context) -> None:
    if not is_modern(ctx):
        raise MCPError(code=-32602, message="This tool demonstrates the 2026-07-28 InputRequiredResult flow only")


NAME_Q = ("What is your name?", {"name": {"type": "string"}}, ["name"])


@tool("test_input_required_result_elicitation", "Round 1 asks for a name; round 2 greets")
async def test_irr_elicitation(ctx: Context) -> CallToolResult | InputRequiredResult:
    _needs_modern(ctx)
    content = _accepted_content((ctx.input_responses or {}).get("user_name"))
    if content is None or not isinstance(content.get("name"), str):
        return InputRequiredResult(input_requests={"user_name": _elicit_request(*NAME_Q)})
    return result(text(f"Hello, {content['name']}!"))


@tool("test_input_required_result_sampling", "Round 1 asks the client's LLM; round 2 returns its answer")
async def test_irr_sampling(ctx: Context) -> CallToolResult | InputRequiredResult:
    _needs_modern(ctx)
    answer = (ctx.input_responses or {}).get("capital_question")
    said = getattr(getattr(answer, "content", None), "text", None)
    if said is None:
        return InputRequiredResult(
            input_requests={"capital_question": _sampling_request("What is the capital of France?", 100)}
        )
    return result(text(f"Sampling response: {said}"))


@tool("test_input_required_result_list_roots", "Round 1 asks for roots; round 2 lists them")
async def test_irr_list_roots(ctx: Context) -> CallToolResult | InputRequiredResult:
    _needs_modern(ctx)
    answer = (ctx.input_responses or {}).get("client_roots")
    roots = getattr(answer, "roots", None)
    if roots is None:
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})
    return result(text("Roots: " + ", ".join(str(r.uri) for r in roots)))


@tool("test_input_required_result_request_state", "Round 2 checks the echoed requestState")
async def test_irr_request_state(ctx: Context) -> CallToolResult | InputRequiredResult:
    _needs_modern(ctx)
    content = _accepted_content((ctx.input_responses or {}).get("confirm"))
    if content is None or ctx.request_state != "confirm-round-1":
        req = _elicit_request("Please confirm", {"ok": {"type": "boolean"}}, ["ok"])
        return InputRequiredResult(input_requests={"confirm": req}, request_state="confirm-round-1")
    return result(text(f"state-ok: confirmed={content.get('ok')}"))


@tool("test_input_required_result_multiple_inputs", "Asks for elicitation, sampling and roots at once")
async def test_irr_multiple(ctx: Context) -> CallToolResult | InputRequiredResult:
    _needs_modern(ctx)
    got = ctx.input_responses or {}
    if ctx.request_state != "multi-round-1" or not all(k in got for k in ("user_name", "greeting", "client_roots")):
        return InputRequiredResult(
            input_requests={
                "user_name": _elicit_request(*NAME_Q),
                "greeting": _sampling_request("Generate a greeting", 50),
                "client_roots": ListRootsRequest(),
            },
            request_state="multi-round-1",
        )
    name = (_accepted_content(got["user_name"]) or {}).get("name")
    greeting = getattr(getattr(got["greeting"], "content", None), "text", None)
    roots = len(getattr(got["client_roots"], "roots", []) or [])
    return result(text(f"name={name}, greeting={greeting}, roots={roots}"))


@tool("test_input_required_result_multi_round", "Three rounds: name, then colour, then done")
async def test_irr_multi_round(ctx: Context) -> CallToolResult | InputRequiredResult:
    _needs_modern(ctx)
    got = ctx.input_responses or {}
    state = ctx.request_state or ""
    if state.startswith("round-2:") and _accepted_content(got.get("step2")) is not None:
        name = state.split(":", 1)[1]
        return result(text(f"Done: name={name}, color={_accepted_content(got['step2']).get('color')}"))
    if state == "round-1" and _accepted_content(got.get("step1")) is not None:
        name = _accepted_content(got["step1"]).get("name", "")
        req = _elicit_request("Step 2: What is your favorite color?", {"color": {"type": "string"}}, ["color"])
        return InputRequiredResult(input_requests={"step2": req}, request_state=f"round-2:{name}")
    req = _elicit_request("Step 1: What is your name?", {"name": {"type": "string"}}, ["name"])
    return InputRequiredResult(input_requests={"step1": req}, request_state="round-1")


@tool("test_input_required_result_tampered_state", "Round 1 returns integrity-protected requestState")
async def test_irr_tampered(ctx: Context) -> CallToolResult | InputRequiredResult:
    _needs_modern(ctx)
    # The SDK's RequestStateBoundary seals requestState (AES-GCM) and rejects a
    # modified echo before this body runs.
    content = _accepted_content((ctx.input_responses or {}).get("user_name"))
    if content is None or ctx.request_state != "tamper-round-1":
        return InputRequiredResult(input_requests={"user_name": _elicit_request(*NAME_Q)}, request_state="tamper-round-1")
    return result(text(f"state intact, hello {content.get('name')}"))


@tool("test_input_required_result_capabilities", "Asks only for what the client declared it can answer")
async def test_irr_capabilities(ctx: Context) -> CallToolResult | InputRequiredResult:
    _needs_modern(ctx)
    caps: ClientCapabilities | None = ctx.client_capabilities
    got = ctx.input_responses or {}
    wanted: dict[str, Any] = {}
    if caps is not None and caps.elicitation is not None and "user_name" not in got:
        wanted["user_name"] = _elicit_request(*NAME_Q)
    if caps is not None and caps.sampling is not None and "greeting" not in got:
        wanted["greeting"] = _sampling_request("Generate a greeting", 50)
    if wanted:
        return InputRequiredResult(input_requests=wanted)
    return result(text("capabilities respected; answers: " + ", ".join(sorted(got)) if got else "no capabilities"))


@app.prompt(name="test_input_required_result_prompt", description="Asks for context before rendering (2026)")
async def test_irr_prompt(ctx: Context) -> list[UserMessage] | InputRequiredResult:
    _needs_modern(ctx)
    content = _accepted_content((ctx.input_responses or {}).get("user_context"))
    if content is None:
        req = _elicit_request("What context should the prompt use?", {"context": {"type": "string"}}, ["context"])
        return InputRequiredResult(input_requests={"user_context": req})
    return [UserMessage(f"Prompt rendered with context: {content.get('context')}")]


# --------------------------------------------------------------- resources ----


@app.resource("test://static-text", name="static-text", mime_type="text/plain", description="A static text resource")
def static_text() -> str:
    return "This is the content of the static text resource."


@app.resource("test://static-binary", name="static-binary", mime_type="image/png", description="A static PNG image")
def static_binary() -> bytes:
    return PNG


@app.resource(
    "test://template/{id}/data",
    name="template-data",
    mime_type="application/json",
    description="A resource template with an id parameter",
)
def template_data(id: str) -> str:  # noqa: A002 - the template variable is called id
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"}, separators=(",", ":"))


@app.resource(
    "test://watched-resource", name="watched-resource", mime_type="text/plain", description="Subscribable resource"
)
def watched_resource() -> str:
    return "Watched resource content"


_subscriptions: set[str] = set()


async def on_subscribe(ctx: Any, params: SubscribeRequestParams) -> EmptyResult:
    _subscriptions.add(str(params.uri))
    return EmptyResult()


async def on_unsubscribe(ctx: Any, params: UnsubscribeRequestParams) -> EmptyResult:
    _subscriptions.discard(str(params.uri))
    return EmptyResult()


async def on_set_level(ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
    return EmptyResult()


_low.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
_low.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
_low.add_request_handler("logging/setLevel", SetLevelRequestParams, on_set_level)


# ----------------------------------------------------------------- prompts ----


@app.prompt(name="test_simple_prompt", description="A prompt without arguments")
def test_simple_prompt() -> list[UserMessage]:
    return [UserMessage("This is a simple prompt for testing.")]


@app.prompt(name="test_prompt_with_arguments", description="A prompt with two required arguments")
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]


@app.prompt(name="test_prompt_with_embedded_resource", description="A prompt that embeds a resource")
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803 - wire name
    return [
        UserMessage(
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
                ),
            )
        ),
        UserMessage("Please process the embedded resource above."),
    ]


@app.prompt(name="test_prompt_with_image", description="A prompt with image content")
def test_prompt_with_image() -> list[UserMessage]:
    return [
        UserMessage(ImageContent(type="image", data=PNG_B64, mime_type="image/png")),
        UserMessage("Please analyze the image above."),
    ]


# -------------------------------------------------------------- completion ----

COMPLETIONS = ["paris", "park", "party", "test", "testing", "template"]


@app.completion()
async def complete(ref: Any, argument: Any, context: Any) -> Completion:
    prefix = (argument.value or "").lower()
    values = [v for v in COMPLETIONS if v.startswith(prefix)]
    return Completion(values=values, total=len(values), has_more=False)


# -------------------------------------------------------------------- main ----


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("PORT", "3001"))
    print(f"conformance peer listening on http://127.0.0.1:{port}/mcp", file=sys.stderr, flush=True)
    app.run(
        transport="streamable-http",
        host="127.0.0.1",
        port=port,
        event_store=MemoryEventStore(),
        retry_interval=500,
    )


if __name__ == "__main__":
    main()
