"""Building blocks for the policy end-to-end tests (test_policy.py).

- ``PolicySetup``: a folder holding a gateway config (segments, optional
  ``[policy] files``, for ``serve`` the demo upstream) and the policy files
  it names. ``write_config`` renders it as TOML.
- ``DemoLog``: the built-in demo server (``portcullis demo-server``) appends
  every line it receives to ``$PORTCULLIS_DEMO_LOG``; a test reads it to
  prove what did (and did not) reach the upstream. Under ``serve`` the
  variable is passed with the upstream's ``env``; under ``wrap`` (whose
  upstream environment is cleared too) with ``/usr/bin/env`` in front of the
  server command.
- ``wrap_params``: ``StdioServerParameters`` launching ``portcullis wrap
  --config CFG -- [env LOG=…] portcullis demo-server`` (tool names unchanged).
- ``start_serve``: ``portcullis serve --allow-anonymous-loopback --config CFG``
  on a free loopback port, with its log under the e2e logs folder; a
  ``conftest.Gateway`` (so a failing test gets the log tail attached).
- ``validate_policy``: ``portcullis policy validate FILE…`` (rc, output).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mcp import StdioServerParameters

from conftest import GATEWAY_READY, REPO, STARTUP_TIMEOUT, Gateway, gateway_bin, spawn, wait_for_line

DEFAULT_PACK = REPO / "policies" / "default.cedar"

APPROVE_NOTES = """
// Added by tests/e2e/test_policy.py: calls to tools labelled `approval`
// are allowed to everyone, but only after the human approves.
@id("approve-notes")
@require_approval("write a note")
permit (principal, action == Portcullis::Action::"CallTool", resource)
when { resource.labels.contains("approval") };
"""

ENV = shutil.which("env") or "/usr/bin/env"


def toml_str(s: str | Path) -> str:
    return json.dumps(str(s))  # a JSON string is a valid TOML basic string


@dataclass
class Segment:
    name: str
    labels: list[str]
    tools: list[str]


@dataclass
class PolicySetup:
    """A config file and the policy files it names, in ``root``."""

    root: Path
    segments: list[Segment]
    policies: dict[str, str] = field(default_factory=dict)  # file name -> Cedar text
    serve_upstream: str | None = None  # upstream name for `serve` (demo server over stdio)

    @property
    def config(self) -> Path:
        return self.root / "portcullis.toml"

    @property
    def demo_log(self) -> DemoLog:
        return DemoLog(self.root / "demo-received.jsonl")

    def policy_files(self) -> list[Path]:
        return [self.root / n for n in self.policies]

    def write(self) -> PolicySetup:
        self.root.mkdir(parents=True, exist_ok=True)
        for name, text in self.policies.items():
            (self.root / name).write_text(text)
        lines: list[str] = []
        if self.serve_upstream is not None:
            lines += [
                "[listen]",
                'addr = "127.0.0.1:0"',
                "",
                "[[upstream]]",
                f"name = {toml_str(self.serve_upstream)}",
                f"command = [{toml_str(gateway_bin())}, \"demo-server\"]",
                f"env = {{ PORTCULLIS_DEMO_LOG = {toml_str(self.demo_log.path)} }}",
                "",
            ]
        for s in self.segments:
            lines += [
                "[[segment]]",
                f"name = {toml_str(s.name)}",
                f"labels = [{', '.join(toml_str(x) for x in s.labels)}]",
                f"tools = [{', '.join(toml_str(x) for x in s.tools)}]",
                "",
            ]
        if self.policies:
            files = ", ".join(toml_str(p) for p in self.policy_files())
            lines += ["[policy]", f"files = [{files}]", ""]
        self.config.write_text("\n".join(lines))
        return self


@dataclass
class DemoLog:
    """What the demo server received (one JSON-RPC message per line)."""

    path: Path

    def messages(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def calls(self, tool: str | None = None) -> list[dict]:
        """The ``params`` of every ``tools/call`` received (of ``tool`` only, if given)."""
        return [
            m.get("params", {})
            for m in self.messages()
            if m.get("method") == "tools/call" and (tool is None or m.get("params", {}).get("name") == tool)
        ]


def wrap_params(config: Path, demo_log: DemoLog | None = None) -> StdioServerParameters:
    exe = str(gateway_bin())
    upstream = [exe, "demo-server"]
    if demo_log is not None:
        upstream = [ENV, f"PORTCULLIS_DEMO_LOG={demo_log.path}", *upstream]
    return StdioServerParameters(command=exe, args=["wrap", "--config", str(config), "--", *upstream], cwd=str(REPO))


def start_serve(config: Path, log: Path) -> Gateway:
    proc = spawn(
        "portcullis-serve",
        [str(gateway_bin()), "serve", "--allow-anonymous-loopback", "--config", str(config)],
        log,
    )
    try:
        m = wait_for_line(proc, GATEWAY_READY, timeout=STARTUP_TIMEOUT)
    except RuntimeError:
        proc.stop()
        raise
    return Gateway(url=m.group(1), proc=proc)


def validate_policy(*files: Path) -> tuple[int, str]:
    r = subprocess.run(
        [str(gateway_bin()), "policy", "validate", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    return r.returncode, r.stdout + r.stderr
