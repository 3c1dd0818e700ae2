"""One MCP client action through the gateway, for the console's browser tests.

Runs the official Python ``mcp`` SDK client over Streamable HTTP with mTLS
(the agent's certificate), does one thing and prints exactly one JSON line on
stdout, whatever happened:

    mcp_call.py --url URL --ca CA --cert CERT --key KEY list
        {"ok": true, "tools": ["demo__echo", ...]}
    mcp_call.py --url URL --ca CA --cert CERT --key KEY call TOOL '{"message": "hi"}'
        {"ok": true, "is_error": false, "text": "..."}
    on any failure (refused session, JSON-RPC error, HTTP error):
        {"ok": false, "errors": [{"type": "MCPError", "code": -32032, "message": "...", "data": {...}}]}

Exit status 0 in every case the JSON line was printed (the test judges it).
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def leaves(e: BaseException) -> list[BaseException]:
    """The exceptions inside (possibly nested) exception groups."""
    if isinstance(e, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in e.exceptions:
            out.extend(leaves(sub))
        return out
    return [e]


def describe(e: BaseException) -> dict[str, Any]:
    d: dict[str, Any] = {"type": type(e).__name__, "message": str(e)}
    if isinstance(e, MCPError):
        d["code"] = e.code
        d["message"] = e.message
        try:
            json.dumps(e.data)
            d["data"] = e.data
        except (TypeError, ValueError):
            d["data"] = repr(e.data)
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is not None:
        d["status"] = status
    return d


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    async with httpx2.AsyncClient(verify=ctx, timeout=httpx2.Timeout(20.0, read=30.0)) as http:
        async with Client(
            streamable_http_client(args.url, http_client=http), mode="legacy", read_timeout_seconds=20, cache=None
        ) as client:
            if args.action == "list":
                listed = await client.list_tools()
                return {"ok": True, "tools": sorted(t.name for t in listed.tools)}
            result = await client.call_tool(args.tool, json.loads(args.arguments))
            text = "".join(c.text for c in result.content if isinstance(c, types.TextContent))
            return {"ok": True, "is_error": bool(result.is_error), "text": text}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    c = sub.add_parser("call")
    c.add_argument("tool")
    c.add_argument("arguments", nargs="?", default="{}")
    args = p.parse_args()
    try:
        out = anyio.run(_bounded, args)
    except BaseException as e:  # the test reads what went wrong
        if isinstance(e, KeyboardInterrupt):
            raise
        out = {"ok": False, "errors": [describe(x) for x in leaves(e)]}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


async def _bounded(args: argparse.Namespace) -> dict[str, Any]:
    with anyio.fail_after(40):
        return await run(args)


if __name__ == "__main__":
    main()
