"""The command line the peers in this folder share: ``python PEER.py stdio``."""

from __future__ import annotations

import sys
from typing import Any


def run(app: Any) -> None:
    """Serve ``app`` (an ``MCPServer``) over stdio; any other transport is refused."""
    transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if transport != "stdio":
        sys.exit(f"unknown transport {transport!r} (stdio only)")
    app.run()
