"""A deliberately faulty MCP server for the gateway's fault tests.

Standard library only, so the Rust tests can run it with any python3.

    faulty_upstream.py stdio LOG            newline-delimited JSON-RPC on stdin/stdout
    faulty_upstream.py http LOG PORTFILE    Streamable HTTP on 127.0.0.1 (port written to PORTFILE)

Every request line it receives is appended to LOG, so a test can prove what
reached it. Tools:

    echo      answers at once: "Echo: <message>"
    split     answers "Split: <message>" written in small pieces with pauses
              between them (the JSON is cut mid-token)
    die       sends a progress notification, then half of its answer, then
              the process exits (stdio) or the connection is cut (http)
    garbage   answers with a line that is not JSON, then a valid answer to an
              id nobody asked for
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOLS = [
    {
        "name": name,
        "description": f"Fault test tool: {name}.",
        "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}},
    }
    for name in ("echo", "split", "die", "garbage")
]


def log(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")


def result(req: dict, value: dict) -> bytes:
    return (json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": value}) + "\n").encode()


def text(t: str) -> dict:
    return {"content": [{"type": "text", "text": t}]}


def answer(req: dict) -> bytes | None:
    """The plain answer to a request; None for notifications."""
    method = req.get("method")
    if "id" not in req:
        return None
    if method == "initialize":
        version = req.get("params", {}).get("protocolVersion", "2025-06-18")
        return result(
            req,
            {
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "faulty", "version": "1"},
            },
        )
    if method == "tools/list":
        return result(req, {"tools": TOOLS})
    if method == "ping":
        return result(req, {})
    if method == "tools/call":
        message = req.get("params", {}).get("arguments", {}).get("message", "")
        name = req.get("params", {}).get("name")
        prefix = {"echo": "Echo", "split": "Split"}.get(name, name)
        return result(req, text(f"{prefix}: {message}"))
    return (
        json.dumps({"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32601, "message": "no such method"}})
        + "\n"
    ).encode()


def progress(req: dict) -> bytes:
    token = req.get("params", {}).get("_meta", {}).get("progressToken", "p")
    note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token, "progress": 1}}
    return (json.dumps(note) + "\n").encode()


def tool(req: dict) -> str | None:
    return req.get("params", {}).get("name") if req.get("method") == "tools/call" else None


# ------------------------------------------------------------------ stdio ----


def stdio(log_path: str) -> None:
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        log(log_path, line.decode("utf-8", "replace"))
        req = json.loads(line)
        body = answer(req)
        if body is None:
            continue
        name = tool(req)
        if name == "split":
            for i in range(0, len(body), 7):
                out.write(body[i : i + 7])
                out.flush()
                time.sleep(0.01)
        elif name == "die":
            out.write(progress(req))
            out.write(body[: len(body) // 2])
            out.flush()
            os._exit(3)
        elif name == "garbage":
            out.write(b"this is not json\n")
            stray = dict(json.loads(body))
            stray["id"] = "nobody-asked"
            out.write((json.dumps(stray) + "\n").encode())
            out.write(body)
            out.flush()
        else:
            out.write(body)
            out.flush()


# ------------------------------------------------------------------- http ----


class Handler(BaseHTTPRequestHandler):
    log_path = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_DELETE(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        log(self.log_path, raw.decode("utf-8", "replace"))
        req = json.loads(raw)
        body = answer(req)
        if body is None:
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        name = tool(req)
        if name == "die":
            # An SSE stream: one event, then half of the next, then the
            # connection is cut without a chunk terminator.
            self.sse([b"event: message\ndata: " + progress(req) + b"\n", b"data: " + body[: len(body) // 2]])
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if name == "garbage":
            # An SSE stream: an event that is not JSON, an answer to an id
            # nobody asked for, then the real answer; the stream ends cleanly.
            stray = dict(json.loads(body))
            stray["id"] = "nobody-asked"
            events = [b"data: this is not json\n\n", b"data: " + json.dumps(stray).encode() + b"\n\n", b"data: " + body + b"\n"]
            self.sse(events)
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Mcp-Session-Id", "faulty-session")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name == "split":
            for i in range(0, len(body), 7):
                self.wfile.write(body[i : i + 7])
                self.wfile.flush()
                time.sleep(0.01)
        else:
            self.wfile.write(body)


def _sse(self: Handler, pieces: list[bytes]) -> None:
    """Starts a chunked `text/event-stream` answer and writes `pieces`, one chunk each."""
    self.send_response(200)
    self.send_header("Content-Type", "text/event-stream")
    self.send_header("Transfer-Encoding", "chunked")
    self.end_headers()
    for piece in pieces:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    self.wfile.flush()


Handler.sse = _sse  # type: ignore[attr-defined]


def http(log_path: str, port_file: str) -> None:
    Handler.log_path = log_path
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, port_file)
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        stdio(sys.argv[2])
    else:
        http(sys.argv[2], sys.argv[3])
