#!/usr/bin/env python3
"""Dump an MCP stdio server's definitions: tools/list, prompts/list,
resources/list and resources/templates/list (every nextCursor page).

Usage: mcp_dump.py [--env K=V]... [--cwd DIR] -- COMMAND ARGS...

Performs the MCP handshake over stdio (newline-delimited JSON-RPC), prints
one JSON object to stdout:
  {"serverInfo": {...}, "protocolVersion": "...", "tools": [...],
   "prompts": [...], "resources": [...], "resourceTemplates": [...]}
Exit 1 when the server does not start or does not answer `initialize`.
Standard library only.
"""
import json
import os
import queue
import subprocess
import sys
import threading

TIMEOUT = 30.0
MAX_PAGES = 100


def main(argv):
    env = dict(os.environ)
    cwd = None
    args = list(argv)
    while args and args[0] != "--":
        a = args.pop(0)
        if a == "--env":
            k, _, v = args.pop(0).partition("=")
            env[k] = v
        elif a == "--cwd":
            cwd = args.pop(0)
        else:
            sys.exit(f"mcp_dump: unknown option {a}")
    if not args or args[0] != "--" or len(args) < 2:
        sys.exit("usage: mcp_dump.py [--env K=V]... [--cwd DIR] -- COMMAND ARGS...")
    cmd = args[1:]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )
    lines = queue.Queue()

    def reader():
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    next_id = [0]

    def send(obj):
        proc.stdin.write((json.dumps(obj) + "\n").encode())
        proc.stdin.flush()

    def request(method, params):
        next_id[0] += 1
        rid = next_id[0]
        send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        while True:
            try:
                raw = lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise TimeoutError(f"{method}: no answer in {TIMEOUT} s")
            if raw is None:
                raise EOFError(f"{method}: server closed its output")
            try:
                msg = json.loads(raw)
            except ValueError:
                continue  # a log line on stdout
            if not isinstance(msg, dict):
                continue
            if msg.get("id") == rid and "method" not in msg:
                return msg
            if "method" in msg and "id" in msg:
                # A server->client request (roots/list, sampling...): refuse.
                send({"jsonrpc": "2.0", "id": msg["id"],
                      "error": {"code": -32601, "message": "not supported"}})

    def listing(method, key):
        out, cursor = [], None
        for _ in range(MAX_PAGES):
            params = {"cursor": cursor} if cursor else {}
            reply = request(method, params)
            if "error" in reply:
                break
            result = reply.get("result") or {}
            out.extend(result.get(key) or [])
            nxt = result.get("nextCursor")
            if not nxt or nxt == cursor:
                break
            cursor = nxt
        return out

    try:
        init = request("initialize", {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "portcullis-corpus", "version": "0"},
        })
        if "result" not in init:
            raise RuntimeError(f"initialize failed: {init.get('error')}")
        res = init["result"]
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        caps = res.get("capabilities") or {}
        dump = {
            "serverInfo": res.get("serverInfo"),
            "protocolVersion": res.get("protocolVersion"),
            "instructions": res.get("instructions"),
            "tools": listing("tools/list", "tools") if "tools" in caps else [],
            "prompts": listing("prompts/list", "prompts") if "prompts" in caps else [],
            "resources": listing("resources/list", "resources") if "resources" in caps else [],
            "resourceTemplates": listing("resources/templates/list", "resourceTemplates")
            if "resources" in caps else [],
        }
    except Exception as e:  # noqa: BLE001 - report any failure the same way
        print(f"mcp_dump: {' '.join(cmd)}: {e}", file=sys.stderr)
        proc.kill()
        return 1
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
    json.dump(dump, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
