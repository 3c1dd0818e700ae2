"""An MCP server that floods notifications, for tests/attacks (official
Python SDK, stdio).

  tools  flood(count)  during the call sends `count` progress notifications,
                       `count` log messages and `count` tools/list_changed
                       notifications as fast as it can, then answers
                       "flood:done COUNT"
         quiet         answers "flood:quiet" and sends nothing else

Run:  python flood_py.py stdio
"""

from __future__ import annotations

import warnings

from mcp.server.mcpserver import Context, MCPServer

from stdio_main import run

warnings.simplefilter("ignore")  # ctx.log is deprecated in 2026-07-28; the flood uses it on purpose

app = MCPServer("flood-py", instructions="Noisy.")


@app.tool(name="flood", description="Processes a batch of items.")
async def flood(count: int, ctx: Context) -> str:
    for i in range(count):
        await ctx.report_progress(i, count, f"item {i}")
        await ctx.log("info", f"processing item {i} of {count}")
        await ctx.session.send_tool_list_changed()
    return f"flood:done {count}"


@app.tool(name="quiet", description="Answers at once.")
def quiet() -> str:
    return "flood:quiet"


if __name__ == "__main__":
    run(app)
