"""A small Python stand-in for the subset of server-everything the e2e tests use.

Why: server-everything (TypeScript SDK 1.x) speaks only the handshake era, so
the 2026-07-28 variants of tests/e2e can't be proven against it directly. This
peer (official Python SDK, MCPServer) serves BOTH eras with the same names,
arguments and result texts as server-everything 2026.8.31 for:

  tools    echo, get-sum, trigger-long-running-operation, trigger-elicitation-request
  prompts  simple-prompt, args-prompt
  resource demo://resource/static/document/architecture.md

Run:  python everything_py.py stdio
      python everything_py.py streamableHttp      (port from env PORT, path /mcp)
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import anyio
from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resolve import Elicit, Resolve
from pydantic import BaseModel, Field

app = MCPServer("everything-py", instructions="Python stand-in for a subset of server-everything.")


@app.tool(name="echo", description="Echoes back the input string")
def echo(message: str) -> str:
    return f"Echo: {message}"


@app.tool(name="get-sum", description="Returns the sum of two numbers")
def get_sum(a: float, b: float) -> str:
    total = a + b
    fmt = lambda x: str(int(x)) if float(x).is_integer() else str(x)  # noqa: E731 - match JS number printing
    return f"The sum of {fmt(a)} and {fmt(b)} is {fmt(total)}."


@app.tool(
    name="trigger-long-running-operation",
    description="Demonstrates a long running operation with progress updates.",
)
async def long_running(ctx: Context, duration: float = 10, steps: int = 5) -> str:
    step = duration / steps
    for i in range(1, steps + 1):
        await anyio.sleep(step)
        await ctx.report_progress(i, steps)
    fmt = lambda x: str(int(x)) if float(x).is_integer() else str(x)  # noqa: E731
    return f"Long running operation completed. Duration: {fmt(duration)} seconds, Steps: {steps}."


class UserInfo(BaseModel):
    name: str = Field(title="String", description="Your full, legal name")
    check: bool | None = Field(default=None, title="Boolean", description="Agree to the terms and conditions")
    integer: int = Field(default=42, title="Integer", description="Your favorite integer", ge=1, le=100)


def ask_user() -> Elicit[UserInfo]:
    return Elicit("Please provide inputs for the following fields:", UserInfo)


@app.tool(name="trigger-elicitation-request", description="Trigger a Request from the Server for User Elicitation")
def trigger_elicitation(answer: Annotated[ElicitationResult[UserInfo], Resolve(ask_user)]) -> list[str]:
    if isinstance(answer, AcceptedElicitation):
        data = answer.data
        lines = [f"- Name: {data.name}"]
        if data.check is not None:
            lines.append(f"- Agreed to terms: {'true' if data.check else 'false'}")
        lines.append(f"- Favorite Integer: {data.integer}")
        return ["✅ User provided the requested information!", "User inputs:\n" + "\n".join(lines)]
    if answer.action == "decline":
        return ["❌ User declined to provide the requested information."]
    return ["⚠️ User cancelled the elicitation dialog."]


@app.prompt(name="simple-prompt", description="A prompt with no arguments")
def simple_prompt() -> str:
    return "This is a simple prompt without arguments."


@app.prompt(name="args-prompt", description="A prompt with two arguments, one required and one optional")
def args_prompt(city: str, state: str | None = None) -> str:
    location = f"{city}, {state}" if state else city
    return f"What's weather in {location}?"


@app.resource(
    "demo://resource/static/document/architecture.md",
    name="architecture.md",
    mime_type="text/markdown",
    description="Static document file exposed from /docs: architecture.md",
)
def architecture_doc() -> str:
    return "# Everything Server – Architecture\n\nPython stand-in: a static markdown document.\n"


def main() -> None:
    transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if transport == "stdio":
        app.run()
    elif transport == "streamableHttp":
        port = int(os.environ.get("PORT", "3001"))
        print(f"MCP Streamable HTTP Server listening on port {port}", file=sys.stderr, flush=True)
        app.run(transport="streamable-http", host="127.0.0.1", port=port)
    else:
        sys.exit(f"unknown transport {transport!r} (stdio | streamableHttp)")


if __name__ == "__main__":
    main()
