"""`subscriptions/listen` (2026-07-28) through the gateway, in front of
server-everything, which speaks only the handshake era: the gateway holds the
upstream session, subscribes to the resource there and relays the server's
`notifications/resources/updated` on the client's listen stream, tagged with
its subscription id."""

from __future__ import annotations

import anyio
import pytest
from mcp import Client

STATIC_DOC = "demo://resource/static/document/architecture.md"

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("kind", ["http", "stdio"])
async def test_listen_relays_resource_updates_from_a_handshake_upstream(gateway_factory, kind: str) -> None:
    gw = gateway_factory(kind)
    async with Client(gw.url, mode="2026-07-28", read_timeout_seconds=20, cache=None) as client:
        # server-everything sends updates every 5 s to sessions that turned them on.
        await client.call_tool("everything__toggle-subscriber-updates", {})
        async with client.listen(resource_subscriptions=[STATIC_DOC]) as sub:
            assert STATIC_DOC in (sub.honored.resource_subscriptions or []), sub.honored
            with anyio.fail_after(20):
                async for event in sub:
                    assert STATIC_DOC in repr(event), event
                    break
