"""How fast a manual quarantine takes effect on every open session.

Opens STREAMS handshake-era sessions on a gateway (anonymous loopback: one
identity, ``w=-;u=-``), each holding its GET SSE stream open, then quarantines
that identity through the admin API (mTLS, the dev admin client certificate in
the gateway's state folder, over an already open connection) and records when
each stream is closed by the gateway, measured from the moment the admin
request was sent. Then one call in one session, which must answer -32032.

Usage: quarantine_latency.py GATEWAY_URL ADMIN_URL STATE_DIR [STREAMS]
Run with the test venv (.deps/venv/bin/python: httpx2).
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import sys
import time
from pathlib import Path

import httpx2

PROTO = "2025-11-25"
ACCEPT = "application/json, text/event-stream"


async def open_session(http: httpx2.AsyncClient, url: str) -> str:
    r = await http.post(
        url,
        json={"jsonrpc": "2.0", "id": 0, "method": "initialize",
              "params": {"protocolVersion": PROTO, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}},
        headers={"Accept": ACCEPT},
    )
    r.raise_for_status()
    sid = r.headers["mcp-session-id"]
    n = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                        headers={"Accept": ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": PROTO})
    assert n.status_code == 202, n.text
    return sid


async def main() -> None:
    url, admin, state = sys.argv[1], sys.argv[2].rstrip("/"), Path(sys.argv[3])
    streams = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    limits = httpx2.Limits(max_connections=streams + 8, max_keepalive_connections=streams + 8)
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0), limits=limits) as http:
        sids = await asyncio.gather(*(open_session(http, url) for _ in range(streams)))
        opened: list[asyncio.Event] = [asyncio.Event() for _ in sids]
        closed_at: list[float] = [0.0] * len(sids)

        host, port = httpx2.URL(url).host, httpx2.URL(url).port
        path = httpx2.URL(url).path

        async def hold(i: int, sid: str) -> None:
            # Raw HTTP/1.1 on asyncio streams: the client's own cost per
            # closed stream stays in microseconds, so the measure is the
            # gateway's (httpx's stream machinery costs ~0.3 ms per close).
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
                 f"mcp-session-id: {sid}\r\nmcp-protocol-version: {PROTO}\r\n\r\n").encode()
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            opened[i].set()
            tail = b""
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                tail = (tail + chunk)[-16:]
                if tail.endswith(b"0\r\n\r\n"):
                    break
            closed_at[i] = time.perf_counter()
            writer.close()

        tasks = [asyncio.create_task(hold(i, s)) for i, s in enumerate(sids)]
        await asyncio.gather(*(e.wait() for e in opened))
        await asyncio.sleep(0.2)
        ctx = ssl.create_default_context(cafile=str(state / "ca" / "ca.pem"))
        ctx.load_cert_chain(str(state / "admin-client" / "cert.pem"), str(state / "admin-client" / "key.pem"))
        async with httpx2.AsyncClient(verify=ctx, timeout=httpx2.Timeout(30.0)) as adm:
            warm = await adm.get(f"{admin}/admin/quarantines")
            warm.raise_for_status()
            t0 = time.perf_counter()
            r = await adm.post(f"{admin}/admin/quarantines",
                               json={"kind": "identity", "value": "w=-;u=-", "mode": "deny-all", "reason": "bench"})
            t_ack = time.perf_counter()
            r.raise_for_status()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
        lat = sorted((c - t0) * 1000 for c in closed_at)
        t1 = time.perf_counter()
        nxt = await http.post(url, json={"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                                         "params": {"name": "demo__echo", "arguments": {"message": "after"}}},
                              headers={"Accept": ACCEPT, "mcp-session-id": sids[0], "mcp-protocol-version": PROTO})
        t2 = time.perf_counter()
        code = nxt.json().get("error", {}).get("code")
    print(f"streams: {len(lat)}; admin request answered in {(t_ack - t0) * 1000:.1f} ms (applied, audited, stored)")
    print(f"stream closed after the admin request was sent: p50 {statistics.median(lat):.1f} ms, "
          f"max {lat[-1]:.1f} ms; within 50 ms: {sum(1 for x in lat if x <= 50)}/{len(lat)}")
    print(f"next call in a quarantined session: code {code} in {(t2 - t1) * 1000:.1f} ms")
    assert code == -32032, nxt.text


if __name__ == "__main__":
    asyncio.run(main())
