"""An MCP server that hangs, for tests/attacks (official Python SDK, stdio).

It completes the handshake and answers list requests, but `slow_lookup`
never answers: the call sleeps forever (a wedged backend). Used to prove the
gateway's call timeout and circuit breaker isolate it from other upstreams.

Run:  python hang_py.py stdio
"""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer

from stdio_main import run

app = MCPServer("hang-py", instructions="Looks things up, eventually.")


@app.tool(name="slow_lookup", description="Looks up a record by key.")
async def slow_lookup(key: str) -> str:
    await anyio.sleep_forever()
    return "unreachable"


@app.tool(name="status", description="Reports whether the service is up.")
def status() -> str:
    return "hang:status up"


if __name__ == "__main__":
    run(app)
