"""pytest wiring for the adversarial regression suite (tests/attacks).

Nothing is copied from tests/e2e: its conftest is loaded here under the
module name ``e2e_conftest`` and the helpers and fixtures the attacks need
are re-exported (fixtures such as ``logs_dir`` and ``everything_js`` become
fixtures of this directory by being names in this module; the e2e report
hook attaches the gateway log of a failing test's fixtures).

tests/e2e and tests/attacks/peers go on ``sys.path``, so the e2e building
blocks (``identity_fixtures``, helpers of ``test_inspect``) and the malicious
peers' constants can be imported. Those modules import their helpers ``from
conftest``: under this directory that name is this module, hence the
re-exports below come before any import of them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
E2E = HERE.parent / "e2e"
for p in (E2E, HERE / "peers", HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def _load_e2e_conftest():
    name = "e2e_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, E2E / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_load_e2e_conftest()

from e2e_conftest import (  # noqa: E402  (re-exported: helpers, fixtures, the report hook)
    EVERYTHING_JS,
    EVERYTHING_PY,
    GATEWAY_READY,
    IN_CI,
    NODE,
    NPM,
    REPO,
    STARTUP_TIMEOUT,
    Proc,
    anyio_backend,
    everything_js,
    free_port,
    gateway_bin,
    logs_dir,
    pytest_runtest_makereport,
    require_or_skip,
    spawn,
    wait_for_line,
)

__all__ = [
    "EVERYTHING_JS",
    "EVERYTHING_PY",
    "GATEWAY_READY",
    "IN_CI",
    "NODE",
    "NPM",
    "REPO",
    "STARTUP_TIMEOUT",
    "Proc",
    "anyio_backend",
    "everything_js",
    "free_port",
    "gateway_bin",
    "logs_dir",
    "pytest_runtest_makereport",
    "require_or_skip",
    "spawn",
    "wait_for_line",
]

from attack_fixtures import agents, pki  # noqa: E402,F401  (fixtures)
