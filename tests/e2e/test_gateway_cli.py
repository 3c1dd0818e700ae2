"""The gateway's command-line contract (no MCP traffic beyond what readiness needs).

`portcullis serve --listen 127.0.0.1:0 --upstream NAME=URL | --upstream-cmd NAME='CMD ARGS'`
prints exactly one `listening on URL` line on stderr when ready.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from conftest import GATEWAY_READY, Gateway


@pytest.mark.parametrize("kind", ["stdio", "http"])
def test_listening_line(kind: str, gateway_factory: Callable[[str], Gateway]) -> None:
    gw = gateway_factory(kind)
    lines = gw.proc.log.read_text(errors="replace").splitlines()
    assert sum(1 for line in lines if GATEWAY_READY.match(line)) == 1, lines
    url = urlsplit(gw.url)
    assert url.scheme == "http"
    assert url.hostname == "127.0.0.1"
    assert url.port and url.port > 0  # the real port, not the :0 we asked for
    assert url.path == "/mcp"
