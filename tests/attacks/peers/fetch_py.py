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
import sys

from mcp.server.mcpserver import MCPServer

app = MCPServer("fetch-py", instructions="Fetches web pages.")


@app.tool(name="fetch", description="Fetches a URL and returns the page as text.")
def fetch(url: str) -> str:
    log = os.environ.get("FETCH_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(url + "\n")
    return f"fetch:page {url}: <html><title>Example Domain</title></html>"


def main() -> None:
    if (sys.argv[1] if len(sys.argv) > 1 else "stdio") != "stdio":
        sys.exit("stdio only")
    app.run()


if __name__ == "__main__":
    main()
