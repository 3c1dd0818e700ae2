#!/usr/bin/env python3
"""Builds tests/corpus/benign-definitions.jsonl: every tool, prompt and
resource (template) definition of real MCP servers from npm and PyPI, each a
benign `poison` sample recording package, version and licence.

    python3 scripts/corpus/collect_definitions.py --install   # first time
    python3 scripts/corpus/collect_definitions.py > tests/corpus/benign-definitions.jsonl

The servers, pinned versions, launch arguments and dummy environment are in
scripts/corpus/servers.tsv. Packages are installed OUTSIDE the repository,
in $CORPUS_WORK (default /tmp/corpus-work): npm packages in npm/, PyPI
packages in a venv/. Each server is started over stdio and its lists are
dumped by mcp_dump.py (the MCP handshake; no network use by the servers is
needed to list). A server that fails to start is reported on stderr and
skipped.

Samples carry no `known_tools`: a server's tools naming each other is
ordinary, and `portcullis scan` and the gateway look for mentions of other
servers' tools only (docs/detection.md has the measurement with sibling and
with federated names).
"""
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("CORPUS_WORK", "/tmp/corpus-work")
NPM = os.path.join(WORK, "npm")
VENV = os.path.join(WORK, "venv")


def servers():
    with open(os.path.join(HERE, "servers.tsv"), encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.rstrip("\n").split("\t")
            cols += [""] * (6 - len(cols))
            reg, pkg, ver, cmd, args, env = cols[:6]
            yield {
                "registry": reg,
                "package": pkg,
                "version": ver,
                "command": cmd,
                "args": [a.replace("{work}", WORK) for a in args.split()],
                "env": dict(kv.replace("{work}", WORK).split("=", 1) for kv in env.split(",") if kv),
            }


def install(specs):
    os.makedirs(os.path.join(WORK, "fsroot"), exist_ok=True)
    os.makedirs(NPM, exist_ok=True)
    if not os.path.exists(os.path.join(NPM, "package.json")):
        with open(os.path.join(NPM, "package.json"), "w") as f:
            f.write('{"name": "corpus-work", "private": true}\n')
    env = dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1", PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
    for s in specs:
        if s["registry"] == "npm":
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts",
                            f"{s['package']}@{s['version']}"], cwd=NPM, env=env, check=False)
    if not os.path.exists(VENV):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    pins = [f"{s['package']}=={s['version']}" for s in specs if s["registry"] == "pypi"]
    subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", *pins], check=False)


def readme_licence(text):
    m = re.search(r"licensed under the ([A-Za-z0-9.\- ]+?) License", text or "")
    return m.group(1).strip() if m else None


def npm_meta(s):
    d = os.path.join(NPM, "node_modules", s["package"])
    with open(os.path.join(d, "package.json"), encoding="utf-8") as f:
        pj = json.load(f)
    lic = pj.get("license") or ""
    if not lic or lic.startswith("SEE LICENSE"):
        try:
            with open(os.path.join(d, "README.md"), encoding="utf-8") as f:
                lic = readme_licence(f.read()) or lic
        except OSError:
            pass
    b = pj.get("bin")
    rel = b if isinstance(b, str) else (b or {}).get(s["command"])
    if not rel:
        raise RuntimeError(f"{s['package']}: no bin {s['command']}")
    return pj["version"], lic, ["node", os.path.join(d, rel)]


def pypi_meta(s):
    py = os.path.join(VENV, "bin", "python")
    code = (
        "import importlib.metadata as m, json, sys\n"
        "md = m.metadata(sys.argv[1])\n"
        "lic = md.get('License-Expression') or md.get('License') or ''\n"
        "cl = [c.split('::')[-1].strip() for c in (md.get_all('Classifier') or []) if c.startswith('License')]\n"
        "print(json.dumps([md['Version'], lic if lic and len(lic) < 40 else (cl[0] if cl else lic[:40]), md.get('Description') or '']))\n"
    )
    out = subprocess.run([py, "-c", code, s["package"]], capture_output=True, text=True, check=True)
    ver, lic, desc = json.loads(out.stdout)
    if not lic:
        lic = readme_licence(desc) or ""
    return ver, lic, [os.path.join(VENV, "bin", s["command"])]


def main():
    specs = list(servers())
    if "--install" in sys.argv:
        install(specs)
        return
    out = sys.stdout
    total = 0
    for s in specs:
        try:
            ver, lic, argv = (npm_meta if s["registry"] == "npm" else pypi_meta)(s)
        except Exception as e:  # noqa: BLE001
            print(f"skip {s['package']}: {e}", file=sys.stderr)
            continue
        if ver != s["version"]:
            print(f"note {s['package']}: installed {ver}, pinned {s['version']}", file=sys.stderr)
        dump_cmd = [sys.executable, os.path.join(HERE, "mcp_dump.py")]
        for k, v in s["env"].items():
            dump_cmd += ["--env", f"{k}={v}"]
        dump_cmd += ["--cwd", WORK, "--", *argv, *s["args"]]
        r = subprocess.run(dump_cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            print(f"skip {s['package']}: {r.stderr.strip()}", file=sys.stderr)
            continue
        d = json.loads(r.stdout)
        source = f"{s['registry']}:{s['package']}@{ver} ({lic or 'licence unknown'})"
        n = 0
        for kind, key in [("tool", "tools"), ("prompt", "prompts"), ("resource", "resources"),
                          ("resource", "resourceTemplates")]:
            for item in d[key]:
                name = item.get("name") or item.get("uri") or item.get("uriTemplate") or "?"
                sample = {
                    "id": f"{s['registry']}:{s['package']}/{kind}/{name}",
                    "family": "poison",
                    "label": "benign",
                    kind: item,
                    "source": source,
                }
                out.write(json.dumps(sample, ensure_ascii=False, sort_keys=True) + "\n")
                n += 1
        total += n
        print(f"{s['package']}@{ver} ({lic}): {len(d['tools'])} tools, {len(d['prompts'])} prompts, "
              f"{len(d['resources']) + len(d['resourceTemplates'])} resources", file=sys.stderr)
    print(f"total {total} definitions", file=sys.stderr)


if __name__ == "__main__":
    main()
