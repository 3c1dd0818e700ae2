"""Judge the conformance runs made by run.sh and print the verdict.

Each run is one invocation of the conformance CLI (`server --url ... -o DIR`),
which leaves one `server-<scenario>-<timestamp>/checks.json` per scenario. A
scenario passes when none of its checks has status FAILURE (WARNING and INFO
do not fail, as in the CLI's own summary).

Rules (what counts as a regression):
- everything-direct       control only (server-everything lacks the suite's
                          test_* fixtures, so most scenarios fail there).
- everything-gateway      PARITY: each scenario that passes in
                          everything-direct must pass; the others are n/a.
- peer-direct, next-peer-direct
                          every scenario must pass (our peer implements them).
- peer-gateway*, next-peer-gateway
                          every scenario must pass; a failure whose direct
                          control passed is tagged GATEWAY BUG.
A failure listed in expected-failures.txt (`<run> <scenario>  # reason`)
is an expected failure and does not fail the run; a listed pair that passes
is reported as stale (XPASS) so the line can be removed.

Usage: evaluate.py --allowlist FILE [--markdown OUT] [--json OUT]
                   --run NAME=RESULTS_DIR=SCENARIO_LIST_FILE ...
The last line printed is `conformance: N passed, M failed`; exit 1 if M > 0.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from dataclasses import dataclass, field

# name -> (suite label, control run or None, mode)
RUNS: dict[str, tuple[str, str | None, str]] = {
    "everything-direct": ("0.1.16", None, "control"),
    "everything-gateway": ("0.1.16", "everything-direct", "parity"),
    "peer-direct": ("0.1.16", None, "must-pass"),
    "peer-gateway": ("0.1.16", "peer-direct", "must-pass"),
    "peer-gateway-handshake": ("0.1.16", "peer-direct", "must-pass"),
    "next-peer-direct": ("0.2.0-alpha.12 @2026-07-28", None, "must-pass"),
    "next-peer-gateway": ("0.2.0-alpha.12 @2026-07-28", "next-peer-direct", "must-pass"),
}

DIR_RE = re.compile(r"^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


@dataclass
class Result:
    passed: bool
    failures: list[str] = field(default_factory=list)  # "check-id: message"
    warnings: int = 0
    found: bool = True


def read_run(results_dir: str) -> dict[str, Result]:
    out: dict[str, Result] = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "checks.json"))):
        m = DIR_RE.match(os.path.basename(os.path.dirname(path)))
        if not m:
            continue
        try:
            checks = json.load(open(path, encoding="utf-8"))
        except (OSError, ValueError) as e:
            out[m.group(1)] = Result(False, [f"unreadable checks.json: {e}"])
            continue
        fails = [f"{c.get('id')}: {c.get('errorMessage') or ''}".strip() for c in checks if c.get("status") == "FAILURE"]
        warns = sum(1 for c in checks if c.get("status") == "WARNING")
        out[m.group(1)] = Result(not fails, fails, warns)
    return out


def read_allowlist(path: str) -> dict[tuple[str, str], str]:
    allow: dict[tuple[str, str], str] = {}
    if not os.path.exists(path):
        return allow
    for n, raw in enumerate(open(path, encoding="utf-8"), 1):
        line, _, reason = raw.partition("#")
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] not in RUNS:
            print(f"warning: {path}:{n}: expected '<run> <scenario>  # reason', got {raw.strip()!r}")
            continue
        if not reason.strip():
            print(f"warning: {path}:{n}: entry without a '# reason'")
        allow[(parts[0], parts[1])] = reason.strip()
    return allow


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--allowlist", required=True)
    ap.add_argument("--markdown")
    ap.add_argument("--json")
    ap.add_argument("--run", action="append", default=[], help="NAME=RESULTS_DIR=SCENARIO_LIST_FILE")
    args = ap.parse_args()

    scen_lists: dict[str, list[str]] = {}
    results: dict[str, dict[str, Result]] = {}
    for spec in args.run:
        name, rdir, lfile = spec.split("=", 2)
        if name not in RUNS:
            sys.exit(f"unknown run {name}")
        try:
            scen_lists[name] = [s for s in open(lfile, encoding="utf-8").read().split() if s]
        except OSError:
            scen_lists[name] = []
        results[name] = read_run(rdir) if os.path.isdir(rdir) else {}
    allow = read_allowlist(args.allowlist)

    n_pass = n_fail = 0
    xfails: list[str] = []
    xpasses: list[str] = []
    fails: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    summary: dict[str, dict[str, int]] = {}
    setup_errors: list[str] = []

    for run, scenarios in scen_lists.items():
        _suite, control, mode = RUNS[run]
        if not scenarios:
            setup_errors.append(f"{run}: no scenario list (could not list the suite's scenarios)")
        counts = {"pass": 0, "fail": 0, "xfail": 0, "n/a": 0}
        for s in scenarios:
            r = results[run].get(s) or Result(False, ["scenario did not run (no checks.json: timeout or crash)"], found=False)
            ctl = results.get(control, {}).get(s) if control else None
            cell = "pass" if r.passed else ("FAIL" if r.found else "not run")
            if mode == "control":
                cells[(run, s)] = cell
                counts["pass" if r.passed else "n/a"] += 1
                continue
            if mode == "parity" and not (ctl and ctl.passed):
                cells[(run, s)] = f"{cell} (n/a)"
                counts["n/a"] += 1
                continue
            key = (run, s)
            bug = " GATEWAY BUG (passes directly)" if control and ctl and ctl.passed and not r.passed else ""
            if r.passed:
                n_pass += 1
                counts["pass"] += 1
                cells[key] = "pass"
                if key in allow:
                    xpasses.append(f"XPASS {run} {s}: listed in expected-failures.txt but passed; remove the line")
            elif key in allow:
                counts["xfail"] += 1
                cells[key] = f"{cell} (expected)"
                checks = ", ".join(f.split(":", 1)[0] for f in r.failures)
                xfails.append(f"XFAIL {run} {s} [{checks}]: {allow[key]}")
            else:
                n_fail += 1
                counts["fail"] += 1
                cells[key] = cell
                detail = "; ".join(r.failures[:3])
                fails.append(f"FAIL  {run} {s}{bug}: {detail}")
        summary[run] = counts
        if mode == "control" and scenarios and counts["pass"] == 0:
            setup_errors.append(f"{run}: no scenario passed at all; the control run is broken")

    for run, counts in summary.items():
        label, _c, mode = RUNS[run]
        extra = f", {counts['n/a']} n/a" if counts["n/a"] else ""
        if mode == "control":
            print(f"  {run:24} [{label}] control: {counts['pass']} pass, {counts['n/a']} fail (not judged)")
        else:
            print(
                f"  {run:24} [{label}] {counts['pass']} passed, {counts['fail']} failed, "
                f"{counts['xfail']} expected failures{extra}"
            )
    for line in xfails + xpasses + fails + [f"ERROR {e}" for e in setup_errors]:
        print(line)

    if args.markdown:
        write_markdown(args.markdown, scen_lists, cells)
    if args.json:
        json.dump(
            {
                "cells": {f"{r} {s}": v for (r, s), v in cells.items()},
                "summary": summary,
                "passed": n_pass,
                "failed": n_fail + len(setup_errors),
            },
            open(args.json, "w", encoding="utf-8"),
            indent=1,
        )

    n_fail += len(setup_errors)
    print(f"conformance: {n_pass} passed, {n_fail} failed")
    return 1 if n_fail else 0


def write_markdown(path: str, scen_lists: dict[str, list[str]], cells: dict[tuple[str, str], str]) -> None:
    groups = [
        ("0.1.16 (handshake era), `--suite all`", ["everything-direct", "everything-gateway", "peer-direct", "peer-gateway", "peer-gateway-handshake"]),
        ("0.2.0-alpha.12, `--spec-version 2026-07-28 --suite all`", ["next-peer-direct", "next-peer-gateway"]),
    ]
    lines: list[str] = []
    for title, runs in groups:
        runs = [r for r in runs if r in scen_lists]
        if not runs:
            continue
        scenarios = list(dict.fromkeys(s for r in runs for s in scen_lists[r]))
        lines += [f"#### {title}", "", "| scenario | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
        for s in scenarios:
            lines.append(f"| {s} | " + " | ".join(cells.get((r, s), "") for r in runs) + " |")
        lines.append("")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
