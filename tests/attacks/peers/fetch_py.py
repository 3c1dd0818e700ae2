"""A fetch-like MCP server for tests/attacks (official Python SDK, stdio).

  tools  fetch(url)  appends the URL it was asked for, one per line, to
                     $FETCH_LOG (when set) and answers with a fixed page; it
                     never opens a connection. An agent talked into fetching
                     a cloud-metadata address (SSRF) or into sending data out
                     (egress) would use this tool; the log shows which URLs
                     reached the server.

Run:  FETCH_LOG=/tmp/urls.txt python fetch_py.py stdio
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

from stdio_main import run

app = MCPServer("fetch-py", instructions="Fetches web pages.")


@app.tool(name="fetch", description="Fetches a URL and returns the page as text.")
def fetch(url: str) -> str:
    log = os.environ.get("FETCH_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(url + "\n")
    return f"fetch:page {url}: <html><title>Example Domain</title></html>"


if __name__ == "__main__":
    run(app)
