#!/usr/bin/env python3
"""Writes tests/corpus/real-text.jsonl: chunks of real source code and
documentation as tool results, negatives for the `secret` and `inject`
detectors ("ordinary text and code").

Sources (licences recorded per sample and in docs/detection.md):
  - crates from the local cargo registry (~/.cargo/registry/src/*/NAME-VERSION),
    only those whose Cargo.toml licence names MIT or Apache-2.0;
  - Python's standard library (PSF licence) of the interpreter running this.

    python3 scripts/corpus/real_text.py > tests/corpus/real-text.jsonl

Chunks are cut at line boundaries, 300 to 3000 bytes, picked with a fixed
seed. Real code holds real-looking test keys and tokens: every DLP hit on
these chunks was inspected by hand; chunks holding genuine credential
material (test private keys, signed JWTs, ...) are relabelled as positives
in RELABEL below, with the reason. A detector hit on text that is not a
credential stays a false positive.
"""
import glob
import json
import os
import random
import re
import sys
import sysconfig

SEED = 11
REGISTRY = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/"))
CRATES = [
    "serde_json-1.0.154", "tokio-1.54.1", "hyper-1.12.0", "axum-0.8.9", "clap_builder-4.6.7",
    "regex-1.13.2", "rustls-0.23.46", "jsonwebtoken-10.4.0", "rcgen-0.14.10", "x509-parser-0.17.0",
    "pem-3.0.6", "chrono-0.4.45", "toml_edit-0.22.27", "tracing-subscriber-0.3.23", "http-1.5.0",
    "cedar-policy-core-4.14.1", "anyhow-1.0.105", "base64-0.22.1", "rsa-0.9.10", "pkcs8-0.10.2",
    "p256-0.13.2", "hyper-util-0.1.21", "serde-1.0.229", "time-0.3.55", "criterion-0.8.2",
]
PY_MODULES = [
    "smtplib.py", "ssl.py", "http/client.py", "urllib/request.py", "email/message.py", "json/__init__.py",
    "argparse.py", "logging/handlers.py", "netrc.py", "hashlib.py", "secrets.py", "base64.py",
    "ftplib.py", "imaplib.py", "configparser.py", "getpass.py",
]
PER_CRATE = 22
PER_MODULE = 10
EXTS = (".rs", ".md", ".toml", ".txt", ".py")

# Chunks that hold real credential material, found by inspecting every DLP
# hit: id -> (label, match, why).
PEM_RSA = "-----BEGIN RSA PRIVATE KEY-----"
PEM_WHY = "the pem crate's test and doc vectors: a real (published, throwaway) RSA private key"
JWT_HS = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
JWT_WHY = "jsonwebtoken's test fixtures: JWTs signed with a test key, genuine tokens"
RELABEL = {
    "crate:jsonwebtoken-10.4.0/tests/hmac.rs#1": ("secret:jwt", JWT_HS, JWT_WHY),
    "crate:jsonwebtoken-10.4.0/tests/hmac.rs#5": ("secret:jwt", JWT_HS, JWT_WHY),
    "crate:pem-3.0.6/README.md#0": ("secret:private-key", PEM_RSA, PEM_WHY),
    "crate:pem-3.0.6/src/lib.rs#1": ("secret:private-key", PEM_RSA, PEM_WHY),
    "crate:pem-3.0.6/src/lib.rs#6": ("secret:private-key", PEM_RSA, PEM_WHY),
    "crate:pem-3.0.6/src/lib.rs#7": ("secret:private-key", PEM_RSA, PEM_WHY),
    "crate:pem-3.0.6/src/lib.rs#11": ("secret:private-key", PEM_RSA, PEM_WHY),
    "crate:pem-3.0.6/src/lib.rs#14": ("secret:private-key", PEM_RSA, PEM_WHY + " (encrypted PEM)"),
    "crate:pem-3.0.6/src/lib.rs#15": ("secret:private-key", PEM_RSA, PEM_WHY + " (encrypted PEM)"),
    "crate:pem-3.0.6/src/lib.rs#18": ("secret:private-key", PEM_RSA, PEM_WHY + " (encrypted PEM)"),
}


def crate_licence(d):
    try:
        with open(os.path.join(d, "Cargo.toml"), encoding="utf-8") as f:
            m = re.search(r'^license\s*=\s*"([^"]+)"', f.read(), re.M)
    except OSError:
        return None
    return m.group(1) if m else None


def chunks(text, rng):
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        target = rng.randint(300, 3000)
        buf = []
        size = 0
        while i < len(lines) and size < target:
            buf.append(lines[i])
            size += len(lines[i])
            i += 1
        piece = "".join(buf)
        if 300 <= len(piece) <= 4000 and piece.strip():
            yield piece


def pick(files, n, rng, root):
    pool = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError):
            continue
        rel = os.path.relpath(f, root)
        for k, c in enumerate(chunks(text, rng)):
            pool.append((rel, k, c))
    rng.shuffle(pool)
    return pool[:n]


def main():
    rng = random.Random(SEED)
    out = []
    if not REGISTRY:
        sys.exit("no cargo registry sources under ~/.cargo/registry/src")
    for crate in CRATES:
        d = os.path.join(REGISTRY[0], crate)
        lic = crate_licence(d)
        if not lic or not ("MIT" in lic or "Apache-2.0" in lic):
            print(f"skip {crate}: licence {lic}", file=sys.stderr)
            continue
        files = sorted(f for f in glob.glob(os.path.join(d, "**", "*"), recursive=True)
                       if f.endswith(EXTS) and os.path.isfile(f) and not f.endswith("Cargo.toml.orig"))
        for rel, k, c in pick(files, PER_CRATE, rng, d):
            out.append((f"crate:{crate}/{rel}#{k}", f"crates.io {crate} ({lic})", c))
    stdlib = sysconfig.get_paths()["stdlib"]
    ver = ".".join(map(str, sys.version_info[:3]))
    for m in PY_MODULES:
        f = os.path.join(stdlib, m)
        for rel, k, c in pick([f], PER_MODULE, rng, stdlib):
            out.append((f"python{ver}:Lib/{rel}#{k}", f"CPython {ver} standard library (PSF-2.0)", c))
    for sid, source, text in out:
        sample = {"id": sid, "family": ["secret", "inject"], "label": "benign", "text": text, "source": source}
        if sid in RELABEL:
            label, match, why = RELABEL[sid]
            sample = {"id": sid, "family": label.split(":")[0], "label": label, "text": text,
                      "match": match, "source": source, "note": "relabelled: " + why}
        sys.stdout.write(json.dumps(sample, ensure_ascii=False) + "\n")
    print(f"{len(out)} chunks", file=sys.stderr)


if __name__ == "__main__":
    main()
