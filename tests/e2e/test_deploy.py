"""Keeps deploy/ honest: the Kubernetes manifests, the systemd unit and their configs.

Offline, no cluster. What it checks:

- every YAML document under deploy/kubernetes parses and has apiVersion,
  kind, metadata.name, the namespace and the part-of label; kustomizations
  name files that exist, and no Secret template is applied by any;
- Secret templates hold placeholders only, and every Secret and key a pod
  references is among them; every ConfigMap a pod mounts exists with the
  items it names;
- Service, PodDisruptionBudget, topology-spread, anti-affinity and
  NetworkPolicy selectors select the pods they are meant for; Service target
  ports, probe ports and NetworkPolicy ports exist on those pods; every
  volumeMount has a volume and every volume is mounted;
- every pod meets Pod Security "restricted" (non-root, read-only root fs,
  no privilege escalation, all capabilities dropped, RuntimeDefault seccomp,
  no host namespaces or hostPath), the gateway has requests and limits, and
  its grace period covers the preStop sleep and the call timeout;
- portcullis.toml of each variant (base, SPIRE overlay — the overlay's patch
  applied here, and compared with `kubectl kustomize` when kubectl exists)
  passes `portcullis config check`, every file it names is mounted into the
  container from the volume that holds it, its ports are the container's;
  policies pass `portcullis policy validate`;
- the base config really runs: the pod's files are laid out in a temp folder
  (real certificates from `portcullis ca`/`cert`, an Ed25519 audit key, the
  ConfigMaps' content), `portcullis serve` starts on it, an agent with a
  trust-domain certificate calls a tool of an mTLS upstream through it, the
  health port answers the probes' plain-HTTP GETs (and nothing else), the
  admin listener refuses a handshake without a client certificate, SIGTERM
  turns /readyz to 503 at once and ends the gateway within the grace
  period, and `portcullis audit verify --key` accepts its log;
- the example Redis config starts a real redis-server (when installed) with
  TLS, the password the init container writes, and noeviction;
- the systemd unit passes `systemd-analyze verify`, its offline security
  exposure stays low, its credentials/directories agree with the sample
  config, the sample config passes `config check`, and (with strace) every
  system call the gateway makes under load is allowed by its
  SystemCallFilter.

Features still being built ([store] kind = "redis") are detected from the
binary: until it knows them, their sections are left out of the checks that
run the binary, and the full checks skip with that reason. [spiffe] is built:
a binary that does not know it fails, and the SPIRE config without its
[spiffe] table must fail `config check` (its listeners name no certificates).
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import REPO, gateway_bin, require_or_skip

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
NAMESPACE = "portcullis"
PART_OF = ("app.kubernetes.io/part-of", "portcullis")
GATEWAY_CONTAINER = "portcullis"
CLUSTER_SCOPED = {"Namespace"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
PENDING_TABLES = {"redis": ["store", "store.redis"], "spiffe": ["spiffe"]}
FEATURE_NAMES = {"redis": '[store] kind = "redis"', "spiffe": "[spiffe]"}


# ---------------------------------------------------------------- loading ----


@dataclass
class Doc:
    path: Path
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.obj.get("kind", "")

    @property
    def name(self) -> str:
        return self.obj.get("metadata", {}).get("name", "")

    def __repr__(self) -> str:
        return f"{self.kind}/{self.name} ({self.path.relative_to(REPO)})"


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def load(path: Path) -> list[Doc]:
    with path.open() as f:
        return [Doc(path, d) for d in yaml.safe_load_all(f) if d is not None]


def is_kustomization(p: Path) -> bool:
    return p.name in ("kustomization.yaml", "kustomization.yml")


def is_template(p: Path) -> bool:
    return p.name.endswith("secrets.example.yaml")


def is_patch(p: Path) -> bool:
    return p.name.endswith("-patch.yaml")


def kustomize_refs(p: Path) -> list[Path]:
    k = load(p)[0].obj
    refs = list(k.get("resources", [])) + [x["path"] if isinstance(x, dict) else x for x in k.get("patches", [])]
    refs += k.get("patchesStrategicMerge", [])
    return [(p.parent / r).resolve() for r in refs]


def manifests(kustomization_dir: Path) -> list[Doc]:
    """The documents a kustomization applies, patches not applied (those are below)."""
    docs: list[Doc] = []
    for ref in kustomize_refs(kustomization_dir / "kustomization.yaml"):
        if ref.is_dir():
            docs += manifests(ref)
        elif not is_patch(ref):
            docs += load(ref)
    return docs


def templates() -> list[Doc]:
    return [d for p in yaml_files() if is_template(p) for d in load(p)]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    hits = [d for d in docs if d.kind == kind and d.name == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {hits}"
    return hits[0]


def pod_spec(d: Doc) -> dict[str, Any]:
    return d.obj["spec"]["template"]["spec"]


def pod_labels(d: Doc) -> dict[str, str]:
    return d.obj["spec"]["template"]["metadata"].get("labels", {})


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def gateway_container(d: Doc) -> dict[str, Any]:
    return next(c for c in pod_spec(d)["containers"] if c["name"] == GATEWAY_CONTAINER)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def match_labels(sel: dict[str, Any]) -> dict[str, str]:
    assert set(sel) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {sel}"
    return sel.get("matchLabels", {})


def port_exists(spec: dict[str, Any], port: int | str) -> bool:
    for c in spec.get("containers", []):
        for p in c.get("ports", []):
            if port in (p.get("name"), p.get("containerPort")):
                return True
    return False


def config_text(cm: Doc) -> str:
    return cm.obj["data"]["portcullis.toml"]


# ------------------------------------------------- the variants' objects ----


def strategic_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The subset of a strategic merge patch the overlays use: maps merge,
    lists of maps merge by name (mountPath for volumeMounts), `$patch: delete`."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = strategic_merge(out[k], v)
        elif isinstance(v, list) and isinstance(out.get(k), list) and all(isinstance(x, dict) for x in v):
            key = "mountPath" if k == "volumeMounts" else "name"
            merged = list(out[k])
            for item in v:
                idx = next((i for i, x in enumerate(merged) if x.get(key) == item.get(key)), None)
                if item.get("$patch") == "delete":
                    assert idx is not None, f"patch deletes {k} {item.get(key)!r}, which the base lacks"
                    merged.pop(idx)
                elif idx is None:
                    merged.append(item)
                else:
                    merged[idx] = strategic_merge(merged[idx], item)
            out[k] = merged
        else:
            out[k] = copy.deepcopy(v)
    return out


def variant(name: str) -> list[Doc]:
    """base, or an overlay with its patches applied."""
    if name == "base":
        return manifests(K8S / "base")
    root = K8S / name
    docs = manifests(root)
    for ref in kustomize_refs(root / "kustomization.yaml"):
        if not is_patch(ref):
            continue
        for patch in load(ref):
            target = find(docs, patch.kind, patch.name)
            docs[docs.index(target)] = Doc(target.path, strategic_merge(target.obj, patch.obj))
    return docs


VARIANTS = ["base", "spire"]


def gateway_docs(docs: list[Doc]) -> tuple[Doc, Doc]:
    return find(docs, "Deployment", "portcullis"), find(docs, "ConfigMap", "portcullis-config")


# ------------------------------------------------------------ the binary ----


def binary() -> Path:
    b = gateway_bin()
    require_or_skip(b.is_file() and os.access(b, os.X_OK), f"gateway binary not found at {b} (build it, or set PORTCULLIS_BIN)")
    return b


def run(*args: str | Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60, **kw)


_known: dict[str, bool] = {}


def binary_knows(feature: str) -> bool:
    """Whether the gateway binary accepts the config tables of a feature being built."""
    if feature not in _known:
        probe = {
            "redis": '[store]\nkind = "redis"\n\n[store.redis]\nurl = "redis://127.0.0.1:6379"\nprefix = "portcullis:"\n',
            "spiffe": '[spiffe]\nworkload_api = "unix:///run/spire/agent-sockets/spire-agent.sock"\n',
        }[feature]
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"portcullis-probe-{os.getpid()}-{feature}.toml"
        tmp.write_text(probe)
        try:
            r = run(binary(), "config", "check", tmp)
        finally:
            tmp.unlink()
        unknown = re.search(r"unknown (field|variant) `(redis|spiffe)`", r.stderr)
        _known[feature] = unknown is None
    return _known[feature]


def pending_features(text: str) -> list[str]:
    tables = set(tomllib.loads(text))
    cfg = tomllib.loads(text)
    out = []
    if cfg.get("store", {}).get("kind") == "redis" and not binary_knows("redis"):
        out.append("redis")
    if "spiffe" in tables and not binary_knows("spiffe"):
        out.append("spiffe")
    return out


def drop_tables(text: str, tables: set[str]) -> str:
    """The TOML text without these top-level tables (header to next header)."""
    out, skipping = [], False
    for line in text.splitlines():
        m = re.match(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(#.*)?$", line)
        if m:
            skipping = m.group(1) in tables
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def without_pending(text: str) -> tuple[str, list[str]]:
    pending = pending_features(text)
    tables = {t for f in pending for t in PENDING_TABLES[f]}
    return drop_tables(text, tables), pending


def config_check(text: str, where: Path) -> subprocess.CompletedProcess[str]:
    f = where / "portcullis.toml"
    f.write_text(text)
    return run(binary(), "config", "check", f)


# ----------------------------------------------------- config's file paths ----


def file_values(cfg: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, value) of every absolute file path in a parsed config."""
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            yield from file_values(v, f"{key}.{k}" if key else k)
    elif isinstance(cfg, list):
        for i, v in enumerate(cfg):
            yield from file_values(v, f"{key}[{i}]")
    elif isinstance(cfg, str) and cfg.startswith("/") and key != "listen.path" and not key.endswith("command"):
        yield key, cfg


def mount_for(container: dict[str, Any], path: str) -> dict[str, Any] | None:
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    return best


def volume_files(vol: dict[str, Any], docs: list[Doc]) -> set[str] | None:
    """The file names a configMap/secret volume shows (None: any, e.g. emptyDir)."""
    for kind, ref in (("configMap", "name"), ("secret", "secretName")):
        if kind in vol:
            src = vol[kind]
            if src.get("items"):
                return {i["path"] for i in src["items"]}
            pool = docs if kind == "configMap" else templates()
            obj = find(pool, "ConfigMap" if kind == "configMap" else "Secret", src[ref]).obj
            return set(obj.get("data", {})) | set(obj.get("stringData", {}))
    return None


# ============================================================== the tests ====


def test_every_yaml_document_is_well_formed() -> None:
    files = yaml_files()
    assert files, "no manifests under deploy/kubernetes"
    for path in files:
        docs = load(path)
        assert docs, f"{path}: no YAML document"
        for d in docs:
            assert d.obj.get("apiVersion") and d.kind, f"{d}: apiVersion and kind are required"
            if d.kind == "Kustomization":
                continue
            md = d.obj.get("metadata", {})
            assert md.get("name"), f"{d}: metadata.name is required"
            if d.kind not in CLUSTER_SCOPED:
                assert md.get("namespace") == NAMESPACE, f"{d}: namespace must be {NAMESPACE!r}"
            labels = md.get("labels", {})
            if not is_patch(path):
                assert labels.get(PART_OF[0]) == PART_OF[1], f"{d}: label {PART_OF[0]}={PART_OF[1]} missing"


def test_kustomizations_reference_existing_files_and_no_templates() -> None:
    kustomizations = [p for p in yaml_files() if is_kustomization(p)]
    assert {p.parent.name for p in kustomizations} >= {"base", "spire", "redis-example"}
    for k in kustomizations:
        for ref in kustomize_refs(k):
            assert ref.exists(), f"{k}: {ref} does not exist"
            assert not is_template(ref), f"{k} applies the template {ref.name}: placeholders must never be applied"
    # Every manifest in base/ is applied by base/kustomization.yaml.
    listed = set(kustomize_refs(K8S / "base" / "kustomization.yaml"))
    for p in (K8S / "base").glob("*.yaml"):
        assert is_kustomization(p) or p.resolve() in listed, f"{p} is not in base/kustomization.yaml"


def test_no_object_is_defined_twice() -> None:
    for v in VARIANTS + ["redis-example"]:
        seen: set[tuple[str, str]] = set()
        for d in manifests(K8S / v):
            key = (d.kind, d.name)
            assert key not in seen, f"{v}: {d} defined twice"
            seen.add(key)


def test_secret_templates_hold_placeholders_only() -> None:
    tpl = templates()
    assert tpl, "no secrets.example.yaml"
    for d in tpl:
        assert d.kind == "Secret", f"{d}: only Secrets belong in a template file"
        assert "portcullis/template" in d.obj["metadata"].get("annotations", {}), f"{d}: mark it as a template"
        assert not d.obj.get("data"), f"{d}: templates use stringData placeholders, never data"
        for key, value in d.obj.get("stringData", {}).items():
            assert value.startswith("REPLACE-ME"), f"{d}: {key} is not a REPLACE-ME placeholder"
    for path in yaml_files():
        text = path.read_text()
        assert "-----BEGIN" not in text, f"{path}: looks like real key or certificate material"
        if not is_template(path):
            assert not any(d.kind == "Secret" for d in load(path)), f"{path}: Secrets only as templates"


@pytest.mark.parametrize("name", VARIANTS + ["redis-example"])
def test_pods_reference_existing_volumes_configmaps_and_secrets(name: str) -> None:
    docs = variant(name) if name in VARIANTS else manifests(K8S / name)
    if name == "redis-example":
        docs += manifests(K8S / "base")
    secrets_by_name = {d.name: d for d in templates()}
    for w in (d for d in docs if d.kind in WORKLOADS):
        spec = pod_spec(w)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted: set[str] = set()
        claims = {c["metadata"]["name"] for c in w.obj["spec"].get("volumeClaimTemplates", [])}
        for c in all_containers(spec):
            paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
            assert len(paths) == len(set(paths)), f"{w} {c['name']}: a mountPath is used twice"
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claims, f"{w} {c['name']}: volumeMount {m['name']!r} has no volume"
                assert "subPath" not in m, f"{w} {c['name']}: subPath mounts never see ConfigMap/Secret updates"
                mounted.add(m["name"])
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    s = secrets_by_name.get(ref["name"])
                    assert s, f"{w}: env {e['name']} names Secret {ref['name']!r}, not in any secrets.example.yaml"
                    assert ref["key"] in s.obj.get("stringData", {}), f"{w}: Secret {ref['name']} has no key {ref['key']!r}"
        for vname, v in volumes.items():
            assert vname in mounted, f"{w}: volume {vname!r} is never mounted"
            assert "hostPath" not in v, f"{w}: hostPath volume {vname!r} (Pod Security restricted forbids it)"
            if "configMap" in v:
                cm = find(docs, "ConfigMap", v["configMap"]["name"])
                for item in v["configMap"].get("items", []):
                    assert item["key"] in cm.obj.get("data", {}), f"{w}: ConfigMap {cm.name} has no key {item['key']!r}"
            if "secret" in v:
                s = secrets_by_name.get(v["secret"]["secretName"])
                assert s, f"{w}: Secret {v['secret']['secretName']!r} is not in any secrets.example.yaml"
                for item in v["secret"].get("items", []):
                    assert item["key"] in s.obj.get("stringData", {}), f"{w}: Secret {s.name} has no key {item['key']!r}"
            if "csi" in v:
                assert v["csi"].get("driver") == "csi.spiffe.io" and v["csi"].get("readOnly") is True, f"{w}: {vname}"


@pytest.mark.parametrize("name", ["base", "redis-example"])
def test_selectors_ports_and_probes_agree(name: str) -> None:
    docs = manifests(K8S / name)
    workloads = [d for d in docs if d.kind in WORKLOADS]
    assert workloads
    for w in workloads:
        sel = match_labels(w.obj["spec"]["selector"])
        assert selects(sel, pod_labels(w)), f"{w}: selector {sel} does not select its own pods {pod_labels(w)}"
        spec = pod_spec(w)
        for c in all_containers(spec):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe)
                if not p:
                    continue
                for handler in ("tcpSocket", "httpGet", "grpc"):
                    if handler in p:
                        assert port_exists(spec, p[handler]["port"]), f"{w} {c['name']} {probe}: no port {p[handler]['port']!r}"
                assert any(h in p for h in ("tcpSocket", "httpGet", "grpc", "exec")), f"{w} {probe}: no handler"
            if c in spec.get("containers", []):
                assert c.get("readinessProbe") and c.get("livenessProbe"), f"{w} {c['name']}: readiness and liveness probes"
        for t in spec.get("topologySpreadConstraints", []):
            assert selects(match_labels(t["labelSelector"]), pod_labels(w)), f"{w}: topology spread selects other pods"
        for term in spec.get("affinity", {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", []):
            sel = match_labels(term["podAffinityTerm"]["labelSelector"])
            assert selects(sel, pod_labels(w)), f"{w}: anti-affinity selects other pods"
    for s in (d for d in docs if d.kind == "Service"):
        targets = [w for w in workloads if selects(s.obj["spec"]["selector"], pod_labels(w))]
        assert len(targets) == 1, f"{s}: selector {s.obj['spec']['selector']} selects {targets}"
        assert s.obj["spec"].get("sessionAffinity", "None") == "None", f"{s}: no session affinity (bindings live in Redis)"
        for p in s.obj["spec"]["ports"]:
            assert port_exists(pod_spec(targets[0]), p.get("targetPort", p["port"])), f"{s}: targetPort {p.get('targetPort')!r}"
    for pdb in (d for d in docs if d.kind == "PodDisruptionBudget"):
        targets = [w for w in workloads if selects(match_labels(pdb.obj["spec"]["selector"]), pod_labels(w))]
        assert len(targets) == 1, f"{pdb}: selects {targets}"
        replicas = targets[0].obj["spec"].get("replicas", 1)
        assert pdb.obj["spec"].get("maxUnavailable", replicas) < replicas, f"{pdb}: would allow every replica down"
    for np in (d for d in docs if d.kind == "NetworkPolicy"):
        sel = match_labels(np.obj["spec"]["podSelector"])
        if not sel:
            continue  # the namespace's default deny
        targets = [w for w in workloads if selects(sel, pod_labels(w))]
        assert len(targets) == 1, f"{np}: podSelector {sel} selects {targets}"
        for rule in np.obj["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                assert port_exists(pod_spec(targets[0]), p["port"]), f"{np}: ingress port {p['port']!r} is not a port of {targets[0]}"


def test_gateway_deployment_and_services() -> None:
    docs = manifests(K8S / "base")
    dep = find(docs, "Deployment", "portcullis")
    spec = pod_spec(dep)
    assert dep.obj["spec"]["replicas"] == 3
    strategy = dep.obj["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "rolling updates keep every replica until its successor is ready"
    c = gateway_container(dep)
    res = c["resources"]
    for k in ("cpu", "memory"):
        assert k in res["requests"] and k in res["limits"], f"resources.requests/limits.{k}"
    assert res["requests"]["memory"] == res["limits"]["memory"] or _mem(res["requests"]["memory"]) <= _mem(res["limits"]["memory"])
    # Shutdown timing: preStop sleep, then SIGTERM: drain delay, calls in
    # flight up to the shutdown timeout (which lets a whole call finish),
    # all within the grace period.
    cfg = tomllib.loads(config_text(find(docs, "ConfigMap", "portcullis-config")))
    pre = c["lifecycle"]["preStop"]
    sleep = pre["sleep"]["seconds"] if "sleep" in pre else int(pre["exec"]["command"][-1])
    grace = spec["terminationGracePeriodSeconds"]
    limits = cfg.get("limits", {})
    call = limits.get("call_timeout_ms", 60000) / 1000
    drain = limits.get("drain_delay_ms", 0) / 1000
    finish = limits.get("shutdown_timeout_ms", 30000) / 1000
    assert sleep >= 5, "endpoints need a few seconds to drop the pod"
    assert finish >= call, f"shutdown_timeout {finish}s cuts calls allowed {call}s"
    assert grace >= sleep + drain + finish + 2, f"terminationGracePeriodSeconds {grace} < preStop {sleep} + drain {drain} + shutdown {finish} + 2"
    # The ports the config listens on are the container's.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert int(cfg["listen"]["addr"].rsplit(":", 1)[1]) == ports["mcp"]
    assert int(cfg["admin"]["addr"].rsplit(":", 1)[1]) == ports["admin"]
    assert int(cfg["health"]["addr"].rsplit(":", 1)[1]) == ports["health"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "health", f"{probe}: on the [health] listener"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The health port is for the kubelet only: no Service, no NetworkPolicy rule.
    for svc in (d for d in docs if d.kind == "Service"):
        assert all(p.get("targetPort") not in ("health", ports["health"]) for p in svc.obj["spec"]["ports"]), svc
    np = find(docs, "NetworkPolicy", "portcullis").obj["spec"]
    assert all(p["port"] not in ("health", ports["health"]) for r in np["ingress"] for p in r.get("ports", []))
    assert not cfg["listen"]["addr"].startswith("127."), "the pod's listener must not be loopback-only"
    # The admin Service stays inside the cluster.
    admin = find(docs, "Service", "portcullis-admin")
    assert admin.obj["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert automount_off(dep)


def _mem(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for u, m in units.items():
        if q.endswith(u):
            return int(q[: -len(u)]) * m
    return int(q)


def automount_off(w: Doc) -> bool:
    return pod_spec(w).get("automountServiceAccountToken") is False


@pytest.mark.parametrize("name", VARIANTS + ["redis-example"])
def test_pods_meet_pod_security_restricted(name: str) -> None:
    docs = variant(name) if name in VARIANTS else manifests(K8S / name)
    ns = find(manifests(K8S / "base"), "Namespace", NAMESPACE)
    assert ns.obj["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    for w in (d for d in docs if d.kind in WORKLOADS):
        spec = pod_spec(w)
        psc = spec.get("securityContext", {})
        assert automount_off(w), f"{w}: no service account token"
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), f"{w}: {host}"
        for c in all_containers(spec):
            sc = c.get("securityContext", {})
            where = f"{w} container {c['name']}"
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
            uid = sc.get("runAsUser", psc.get("runAsUser"))
            assert uid is not None and uid != 0, f"{where}: a non-zero runAsUser"
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false"
            assert not sc.get("privileged"), f"{where}: privileged"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drop ALL capabilities"
            assert not sc.get("capabilities", {}).get("add"), f"{where}: adds capabilities"
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault"


def test_network_policy_flows() -> None:
    docs = manifests(K8S / "base")
    redis = find(manifests(K8S / "redis-example"), "StatefulSet", "redis")
    gw = find(docs, "Deployment", "portcullis")
    deny = find(docs, "NetworkPolicy", "default-deny")
    assert deny.obj["spec"]["podSelector"] == {} and set(deny.obj["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    np = find(docs, "NetworkPolicy", "portcullis").obj["spec"]
    egress = np["egress"]
    dns = [r for r in egress if any(p.get("port") == 53 for p in r.get("ports", []))]
    assert dns and {p["protocol"] for p in dns[0]["ports"]} == {"UDP", "TCP"}, "DNS over UDP and TCP"
    to_redis = [r for r in egress for t in r.get("to", []) if "podSelector" in t and "namespaceSelector" not in t
                and selects(match_labels(t["podSelector"]), pod_labels(redis))]
    assert to_redis and any(p["port"] == 6379 for p in to_redis[0]["ports"]), "egress to the Redis pods on 6379"
    rnp = find(manifests(K8S / "redis-example"), "NetworkPolicy", "redis").obj["spec"]
    sources = [f for r in rnp["ingress"] for f in r["from"]]
    assert all(selects(match_labels(f["podSelector"]), pod_labels(gw)) for f in sources), "Redis admits the gateway only"
    admin_rules = [r for r in np["ingress"] if any(p["port"] == "admin" for p in r["ports"])]
    assert admin_rules and all("namespaceSelector" in f for r in admin_rules for f in r["from"]), "admin: chosen namespaces only"


@pytest.mark.parametrize("name", VARIANTS)
def test_config_files_are_mounted_where_the_config_expects_them(name: str) -> None:
    docs = variant(name)
    dep, cm = gateway_docs(docs)
    c = gateway_container(dep)
    volumes = {v["name"]: v for v in pod_spec(dep)["volumes"]}
    cfg = tomllib.loads(config_text(cm))
    # The container runs this file.
    conf = next(a for a in c["args"] if a.endswith(".toml"))
    m = mount_for(c, conf)
    assert m and "portcullis.toml" in (volume_files(volumes[m["name"]], docs) or set()), f"{conf} is not mounted"
    assert volumes[m["name"]]["configMap"]["name"] == cm.name
    writable = {"state_dir", "audit.path"}
    for key, path in file_values(cfg):
        m = mount_for(c, path)
        assert m, f"{name}: {key} = {path!r} is on no volume of the container"
        vol = volumes[m["name"]]
        if key in writable:
            assert "emptyDir" in vol or "ephemeral" in vol or "persistentVolumeClaim" in vol, f"{key}: needs a writable volume"
            assert not m.get("readOnly"), f"{key}: mounted read-only"
            continue
        rel = os.path.relpath(path, m["mountPath"])
        files = volume_files(vol, docs)
        assert files is not None and rel in files, f"{name}: {key} = {path!r}: {m['name']} holds {sorted(files or [])}"
    if "spiffe" in cfg:
        sock = cfg["spiffe"]["workload_api"].removeprefix("unix://")
        m = mount_for(c, sock)
        assert m and "csi" in volumes[m["name"]], f"{sock} is not on the SPIFFE CSI volume"
        assert not {"identity", "admin-tls"} & set(volumes), "with SPIRE no Secret-mounted identities"
    # The audit key's public half sits beside it (read-only mount).
    key = cfg.get("audit", {}).get("key")
    if key:
        m = mount_for(c, key)
        assert os.path.basename(key) + ".pub" in (volume_files(volumes[m["name"]], docs) or set())
    # Policies: exactly the files of the policy ConfigMap.
    pol = find(docs, "ConfigMap", "portcullis-policies")
    assert {os.path.basename(f) for f in cfg["policy"]["files"]} == set(pol.obj["data"])


def test_spire_overlay_matches_kustomize() -> None:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed: the overlay was checked with this file's own patch logic only")
    r = run(kubectl, "kustomize", K8S / "spire")
    assert r.returncode == 0, r.stderr
    built = [Doc(K8S / "spire", d) for d in yaml.safe_load_all(r.stdout) if d]
    mine = variant("spire")
    assert sorted((d.kind, d.name) for d in built) == sorted((d.kind, d.name) for d in mine)
    for kind, name in (("Deployment", "portcullis"), ("ConfigMap", "portcullis-config")):
        a, b = find(built, kind, name).obj, find(mine, kind, name).obj
        if kind == "ConfigMap":
            assert a["data"] == b["data"]
        else:
            sa, sb = a["spec"]["template"]["spec"], b["spec"]["template"]["spec"]
            assert sorted(v["name"] for v in sa["volumes"]) == sorted(v["name"] for v in sb["volumes"])
            ca, cb = (next(c for c in s["containers"] if c["name"] == GATEWAY_CONTAINER) for s in (sa, sb))
            assert sorted(m["mountPath"] for m in ca["volumeMounts"]) == sorted(m["mountPath"] for m in cb["volumeMounts"])
    for k in ("base", "redis-example"):
        assert run(kubectl, "kustomize", K8S / k).returncode == 0


def test_policies_validate(tmp_path: Path) -> None:
    for name in VARIANTS:
        pol = find(variant(name), "ConfigMap", "portcullis-policies")
        files = []
        for fname, text in pol.obj["data"].items():
            f = tmp_path / name / fname
            f.parent.mkdir(exist_ok=True)
            f.write_text(text)
            files.append(f)
        r = run(binary(), "policy", "validate", *files)
        assert r.returncode == 0, f"{name}: {r.stderr}"


@pytest.mark.parametrize("name", VARIANTS)
def test_config_check_without_pending_features(name: str, tmp_path: Path) -> None:
    """`config check` on the ConfigMap's portcullis.toml, leaving out only the
    tables of features this binary does not know yet."""
    _, cm = gateway_docs(variant(name))
    text, pending = without_pending(config_text(cm))
    # [spiffe] is built: a binary that refuses it is a failure, not a skip
    # (without the table the SPIRE config would have no certificates).
    assert "spiffe" not in pending, f"{name}: the binary does not know [spiffe]"
    r = config_check(text, tmp_path)
    assert r.returncode == 0, f"{name} (left out: {pending or 'nothing'}): {r.stderr}"


@pytest.mark.parametrize("name", VARIANTS)
def test_config_check_full(name: str, tmp_path: Path) -> None:
    _, cm = gateway_docs(variant(name))
    text = config_text(cm)
    pending = pending_features(text)
    assert "spiffe" not in pending, f"{name}: the binary does not know [spiffe]"
    if pending:  # only [store] kind = "redis" can still be pending
        pytest.skip(f"the binary does not know {' nor '.join(FEATURE_NAMES[f] for f in pending)} yet (issue 8)")
    r = config_check(text, tmp_path)
    assert r.returncode == 0, f"{name}: {r.stderr}"
    if "spiffe" in tomllib.loads(text):
        # The listeners name no certificate files: [spiffe] is what gives them one.
        r = config_check(drop_tables(text, {"spiffe"}), tmp_path)
        assert r.returncode != 0 and "listen.tls.cert" in r.stderr, f"{name} without [spiffe]: {r.stderr}"


# ------------------------------------------------- running the pod's files ----


@dataclass
class Material:
    """Real test credentials for the Secrets' keys."""

    root: Path
    files: dict[tuple[str, str], bytes]


def issue(ca: Path, out: Path, spiffe_id: str, *extra: str) -> Path:
    r = run(binary(), "cert", "issue", "--ca", ca, "--spiffe-id", spiffe_id, "--ttl", "2h", *extra, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    root = tmp_path_factory.mktemp("deploy-material")
    for ca in ("td-ca", "admin-ca"):
        r = run(binary(), "ca", "init", "--dir", root / ca)
        assert r.returncode == 0, r.stderr
    loop = ("--dns", "localhost", "--ip", "127.0.0.1")
    gw = issue(root / "td-ca", root / "gw", "spiffe://example.org/portcullis/gateway",
               "--dns", "portcullis.portcullis.svc", *loop)
    adm = issue(root / "admin-ca", root / "admin", "spiffe://example.org/portcullis/admin", *loop)
    rds = issue(root / "td-ca", root / "redis", "spiffe://example.org/redis",
                "--dns", "redis.portcullis.svc.cluster.local", *loop)
    issue(root / "td-ca", root / "agent", "spiffe://example.org/agent/smoke")
    issue(root / "td-ca", root / "tickets", "spiffe://example.org/mcp/tickets", *loop)
    issue(root / "admin-ca", root / "ops", "spiffe://example.org/ops/alice")
    key = Ed25519PrivateKey.generate()
    pk8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex() + "\n"
    password = secrets.token_hex(32).encode()
    td_ca = (root / "td-ca" / "ca.pem").read_bytes()
    files = {
        ("portcullis-identity", "cert.pem"): (gw / "cert.pem").read_bytes(),
        ("portcullis-identity", "key.pem"): (gw / "key.pem").read_bytes(),
        ("portcullis-identity", "bundle.pem"): td_ca,
        ("portcullis-admin-tls", "cert.pem"): (adm / "cert.pem").read_bytes(),
        ("portcullis-admin-tls", "key.pem"): (adm / "key.pem").read_bytes(),
        ("portcullis-admin-tls", "ca.pem"): (root / "admin-ca" / "ca.pem").read_bytes(),
        ("portcullis-redis", "ca.pem"): td_ca,
        ("portcullis-redis", "password"): password,
        ("portcullis-audit-key", "audit-ed25519.pk8"): pk8,
        ("portcullis-audit-key", "audit-ed25519.pk8.pub"): pub.encode(),
        ("redis-tls", "tls.crt"): (rds / "cert.pem").read_bytes(),
        ("redis-tls", "tls.key"): (rds / "key.pem").read_bytes(),
        ("redis-tls", "ca.crt"): td_ca,
        ("redis-auth", "password"): password,
    }
    for d in templates():  # every template key has test material
        for k in d.obj["stringData"]:
            assert (d.name, k) in files, f"no test material for Secret {d.name} key {k}: extend the material fixture"
    return Material(root, files)


def lay_out_pod(w: Doc, container: str, docs: list[Doc], material: Material, root: Path) -> None:
    """Writes what the container would see under `root`: ConfigMap and Secret
    volumes with their files, empty directories for the rest."""
    spec = pod_spec(w)
    volumes = {v["name"]: v for v in spec["volumes"]}
    c = next(x for x in all_containers(spec) if x["name"] == container)
    for m in c.get("volumeMounts", []):
        target = root / m["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        v = volumes.get(m["name"], {})
        if "configMap" in v:
            data = find(docs, "ConfigMap", v["configMap"]["name"]).obj["data"]
            items = v["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for i in items:
                (target / i["path"]).write_text(data[i["key"]])
        elif "secret" in v:
            name = v["secret"]["secretName"]
            for i in v["secret"]["items"]:
                f = target / i["path"]
                f.write_bytes(material.files[(name, i["key"])])
                f.chmod(v["secret"].get("defaultMode", 0o644))


def rooted(text: str, root: Path) -> str:
    """The config with every absolute file path moved under root."""
    for _, path in file_values(tomllib.loads(text)):
        text = text.replace(f'"{path}"', f'"{root}{path}"')
    return text


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


def start(args: list[str | Path], log: Path, ready: re.Pattern[str], timeout: float = 30) -> tuple[Proc, re.Match[str]]:
    with log.open("wb") as f:
        p = subprocess.Popen([str(a) for a in args], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc = Proc(p, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = ready.search(log.read_text(errors="replace"))
        if m:
            return proc, m
        if p.poll() is not None:
            break
        time.sleep(0.05)
    proc.stop()
    raise AssertionError(f"{args[0]} not ready; log:\n{log.read_text(errors='replace')[-3000:]}")


def tls_context(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the SVIDs are checked by chain and SPIFFE ID, as the gateway does
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def mcp_post(port: int, ctx: ssl.SSLContext, host: str, body: dict[str, Any], session: str | None = None) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)
    conn.putrequest("POST", "/mcp", skip_host=True)
    headers = {"Host": host, "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-11-25"}
    if session:
        headers["Mcp-Session-Id"] = session
    data = json.dumps(body).encode()
    headers["Content-Length"] = str(len(data))
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders(data)
    r = conn.getresponse()
    raw = r.read().decode()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    conn.close()
    if not raw.strip():
        return r.status, hdrs, None
    if "text/event-stream" in hdrs.get("content-type", ""):
        events = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:") and line[5:].strip()]
        match = [e for e in events if e.get("id") == body.get("id")]
        return r.status, hdrs, match[-1] if match else events
    return r.status, hdrs, json.loads(raw)


def https_get(port: int, ctx: ssl.SSLContext, path: str) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    out = r.status, r.read().decode()
    conn.close()
    return out


def http_get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode().strip()
    finally:
        conn.close()


def redis_example_conf(root: Path, port: int) -> tuple[Path, list[str]]:
    """redis.conf of the example with the pod's paths under root, and the init
    container's command rewritten the same way."""
    docs = manifests(K8S / "redis-example")
    sts = find(docs, "StatefulSet", "redis")
    conf = find(docs, "ConfigMap", "redis-config").obj["data"]["redis.conf"]
    mounts = [m["mountPath"] for c in all_containers(pod_spec(sts)) for m in c.get("volumeMounts", [])]
    for mp in sorted(set(mounts), key=len, reverse=True):
        conf = re.sub(rf"(?<![\w/]){re.escape(mp)}(?=[/\s]|$)", f"{root}{mp}", conf, flags=re.M)
    conf = re.sub(r"^tls-port \d+", f"tls-port {port}", conf, flags=re.M)
    init = next(c for c in pod_spec(sts)["initContainers"] if c["name"] == "auth")
    cmd = list(init["command"])
    for mp in sorted(set(mounts), key=len, reverse=True):
        cmd[-1] = cmd[-1].replace(mp, f"{root}{mp}")
    f = root / "redis.conf"
    f.write_text(conf)
    return f, cmd


def redis_cmd(port: int, ca: Path, *words: str, password: str | None = None) -> str:
    """One command over TLS in RESP; returns the raw first reply line(s)."""
    ctx = tls_context(ca, None, None)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        def send(*ws: str) -> str:
            s.sendall(("*%d\r\n" % len(ws) + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in ws)).encode())
            time.sleep(0.05)
            return s.recv(65536).decode(errors="replace")
        if password is not None:
            assert send("AUTH", password).startswith("+OK")
        return send(*words)


def start_redis(material: Material, root: Path) -> tuple[Proc, int]:
    redis = shutil.which("redis-server")
    require_or_skip(redis is not None, "redis-server not installed (Debian package redis-server)")
    sts = find(manifests(K8S / "redis-example"), "StatefulSet", "redis")
    for c in ("auth", "redis"):
        lay_out_pod(sts, c, manifests(K8S / "redis-example"), material, root)
    port = free_port()
    conf, init = redis_example_conf(root, port)
    r = subprocess.run(init, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, f"init container command: {r.stderr}"
    assert (root / "run/redis-auth/auth.conf").stat().st_mode & 0o077 == 0, "auth.conf readable by others"
    proc, _ = start([redis, conf], root / "redis.log", re.compile(r"Ready to accept connections"))
    return proc, port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redis_example_runs_with_tls_auth_and_noeviction(material: Material, tmp_path: Path) -> None:
    proc, port = start_redis(material, tmp_path)
    try:
        ca = tmp_path / "etc/redis/tls/ca.crt"
        pw = material.files[("redis-auth", "password")].decode()
        assert redis_cmd(port, ca, "PING").startswith("-NOAUTH")
        assert redis_cmd(port, ca, "PING", password=pw).startswith("+PONG")
        assert "noeviction" in redis_cmd(port, ca, "CONFIG", "GET", "maxmemory-policy", password=pw)
        assert "\r\nyes\r\n" in redis_cmd(port, ca, "CONFIG", "GET", "appendonly", password=pw)
        # TLS only: plaintext on the port gets no answer, and no plaintext port is configured.
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            try:
                assert not s.recv(64).startswith(b"+PONG")
            except (ConnectionError, socket.timeout):
                pass
        conf = (tmp_path / "redis.conf").read_text()
        assert re.search(r"^port 0$", conf, re.M), "no plaintext port"
    finally:
        proc.stop()


@pytest.mark.parametrize("store", ["file", "redis"])
def test_base_config_serves(store: str, material: Material, tmp_path: Path) -> None:
    """The base Deployment's files, laid out under a temp root, run a real gateway."""
    docs = manifests(K8S / "base")
    dep, cm = gateway_docs(docs)
    text = config_text(cm)
    pods = tmp_path / "pod"
    lay_out_pod(dep, GATEWAY_CONTAINER, docs, material, pods)
    procs: list[Proc] = []
    try:
        if store == "redis":
            if not binary_knows("redis"):
                pytest.skip("the binary does not know [store] kind = \"redis\" yet (issue 8)")
            redis, rport = start_redis(material, tmp_path / "redis")
            procs.append(redis)
            text = re.sub(r'url = "rediss://[^"]*"', f'url = "rediss://127.0.0.1:{rport}"', text)
        else:
            text = drop_tables(text, {"store", "store.redis"})
        # The upstream: the demo server over mTLS as spiffe://example.org/mcp/tickets.
        t = material.root / "tickets"
        demo, m = start([binary(), "demo-server", "--http", "127.0.0.1:0", "--tls-cert", t / "cert.pem",
                         "--tls-key", t / "key.pem", "--client-ca", material.root / "td-ca" / "ca.pem"],
                        tmp_path / "demo.log", re.compile(r"listening on (https://\S+)"))
        procs.append(demo)
        text = re.sub(r'url = "https://tickets[^"]*"', f'url = "{m.group(1)}"', text)
        text = re.sub(r'addr = "0\.0\.0\.0:\d+"', 'addr = "127.0.0.1:0"', text)
        # A drain delay long enough to see /readyz turn 503 after SIGTERM.
        text = re.sub(r"^drain_delay_ms = \d+", "drain_delay_ms = 1500", text, flags=re.M)
        conf = pods / "etc/portcullis/config/portcullis.toml"
        conf.write_text(rooted(text, pods))
        pub_before = (pods / "etc/portcullis/audit-key/audit-ed25519.pk8.pub").read_bytes()
        gw, _ = start([binary(), "serve", "--config", conf], tmp_path / "gateway.log",
                      re.compile(r"listening on https://\S+:(\d+)/mcp[\s\S]*|admin API on"))
        procs.append(gw)
        log = (tmp_path / "gateway.log")
        deadline = time.monotonic() + 20
        while not (re.search(r"listening on https://", log.read_text()) and re.search(r"health probes on http://", log.read_text())):
            assert time.monotonic() < deadline and gw.popen.poll() is None, log.read_text()
            time.sleep(0.05)
        mcp_port = int(re.search(r"listening on https://[^:]+:(\d+)/mcp", log.read_text()).group(1))
        admin_port = int(re.search(r"admin API on https://[^:]+:(\d+)", log.read_text()).group(1))
        health_port = int(re.search(r"health probes on http://[^:]+:(\d+)", log.read_text()).group(1))

        # An agent of the trust domain calls a tool of the mTLS upstream,
        # addressing the gateway by its Service name (allowed_hosts).
        a = material.root / "agent"
        agent = tls_context(material.root / "td-ca" / "ca.pem", a / "cert.pem", a / "key.pem")
        host = "portcullis.portcullis.svc"
        st, hdrs, init = mcp_post(mcp_port, agent, host, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "deploy-test", "version": "1"}}})
        assert st == 200 and "result" in init, (st, init)
        sid = hdrs["mcp-session-id"]
        mcp_post(mcp_port, agent, host, {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
        st, _, res = mcp_post(mcp_port, agent, host, {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                                      "params": {"name": "tickets__echo", "arguments": {"message": "hi"}}}, sid)
        assert st == 200 and "hi" in json.dumps(res.get("result")), res
        st, _, _ = mcp_post(mcp_port, agent, "evil.example", {"jsonrpc": "2.0", "id": 3, "method": "ping"}, sid)
        assert st == 403, "a Host outside allowed_hosts"

        # Probes: the kubelet's plain-HTTP GETs on the health port, which
        # serves nothing else; the admin listener wants a client certificate
        # from the admin CA even for /readyz (the pod's own admin listener
        # certificate serves, and is no admin).
        assert http_get(health_port, "/readyz") == (200, "ready")
        assert http_get(health_port, "/healthz") == (200, "ok")
        for path in ("/mcp", "/metrics", "/admin/sessions"):
            assert http_get(health_port, path)[0] == 404, path
        adm = pods / "etc/portcullis/admin"
        own = tls_context(adm / "ca.pem", adm / "cert.pem", adm / "key.pem")
        assert https_get(admin_port, own, "/readyz") == (200, "ready")
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            https_get(admin_port, tls_context(adm / "ca.pem", None, None), "/healthz")
        assert https_get(admin_port, own, "/admin/sessions")[0] == 403, "the pod's own certificate is no admin"
        ops = material.root / "ops"
        status, body = https_get(admin_port, tls_context(adm / "ca.pem", ops / "cert.pem", ops / "key.pem"), "/admin/sessions")
        assert status == 200 and sid in body

        # SIGTERM: out well within the grace period left after preStop.
        spec = pod_spec(dep)
        pre = gateway_container(dep)["lifecycle"]["preStop"]["sleep"]["seconds"]
        budget = spec["terminationGracePeriodSeconds"] - pre
        t0 = time.monotonic()
        gw.popen.send_signal(signal.SIGTERM)
        while http_get(health_port, "/readyz") != (503, "draining"):  # readiness drops first
            assert time.monotonic() - t0 < 1.0, "/readyz did not turn 503 within 1 s of SIGTERM"
            time.sleep(0.02)
        rc = gw.popen.wait(timeout=budget)
        took = time.monotonic() - t0
        assert rc == 0, log.read_text()[-2000:]
        assert took < budget, f"shutdown took {took:.1f}s, budget {budget}s"

        # One fleet key: its .pub (read-only in the pod) was left alone, and it verifies the log.
        assert (pods / "etc/portcullis/audit-key/audit-ed25519.pk8.pub").read_bytes() == pub_before
        audit = pods / "var/log/portcullis/audit.jsonl"
        r = run(binary(), "audit", "verify", "--all", "--key", pods / "etc/portcullis/audit-key/audit-ed25519.pk8.pub", audit)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        for p in reversed(procs):
            p.stop()


# ---------------------------------------------------------------- systemd ----


def unit_entries(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def unit_for_test(tmp_path: Path) -> Path:
    """The unit with the binary's path replaced by the one under test (verify
    checks that ExecStart exists)."""
    text = (SYSTEMD / "portcullis.service").read_text().replace("/usr/local/bin/portcullis", str(binary()))
    f = tmp_path / "portcullis.service"
    f.write_text(text)
    return f


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    sa = shutil.which("systemd-analyze")
    if not sa:
        pytest.skip("systemd-analyze not installed")
    unit = unit_for_test(tmp_path)
    r = run(sa, "verify", "--man=no", unit)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = run(sa, "security", "--offline=yes", unit)
    if r.returncode != 0 and "offline" in r.stderr:
        pytest.skip(f"this systemd-analyze has no --offline security check: {r.stderr.strip()}")
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, f"exposure {m.group(1)} (was 1.1 when written):\n{r.stdout}"


def test_systemd_unit_agrees_with_sample_config(tmp_path: Path) -> None:
    e = unit_entries(SYSTEMD / "portcullis.service")
    cfg_text = (SYSTEMD / "portcullis.toml").read_text()
    cfg = tomllib.loads(cfg_text)
    assert e["DynamicUser"] == ["yes"] and e["NoNewPrivileges"] == ["yes"] and e["ProtectSystem"] == ["strict"]
    assert e["CapabilityBoundingSet"] == [""] and e["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert e["Restart"] == ["on-failure"] and "LimitNOFILE" in e
    limits = cfg.get("limits", {})
    stop = int(e["TimeoutStopSec"][0].removesuffix("s"))
    assert stop >= (limits.get("drain_delay_ms", 0) + limits.get("shutdown_timeout_ms", 30000)) / 1000 + 2, "TimeoutStopSec"
    assert "@system-service" in e["SystemCallFilter"] and e["MemoryDenyWriteExecute"] == ["yes"]
    assert any("/etc/portcullis/portcullis.toml" in x for x in e["ExecStart"])
    assert cfg["state_dir"] == "/var/lib/" + e["StateDirectory"][0]
    assert cfg["audit"]["path"].startswith("/var/log/" + e["LogsDirectory"][0] + "/")
    creds = {x.split(":", 1)[0]: x.split(":", 1)[1] for x in e.get("LoadCredential", [])}
    named = set(re.findall(r"/run/credentials/portcullis\.service/([\w.\-]+)", "\n".join(
        v for _, v in file_values(cfg))))
    assert named == set(creds), f"credentials named in the config {named} vs LoadCredential {set(creds)}"
    for key, path in file_values(cfg):
        ok = path.startswith(("/etc/portcullis/", "/run/credentials/portcullis.service/", cfg["state_dir"] + "/",
                              "/var/log/" + e["LogsDirectory"][0] + "/")) or path == cfg["state_dir"]
        assert ok, f"{key} = {path}: not where the sandbox lets the service read or write"
    r = config_check(cfg_text, tmp_path)
    assert r.returncode == 0, r.stderr


def test_systemd_syscall_filter_allows_what_the_gateway_calls(material: Material, tmp_path: Path) -> None:
    """Under strace, a gateway on the sample config serves mTLS calls, admin
    requests and a policy reload, then shuts down; every system call it made
    must pass the unit's SystemCallFilter."""
    strace, sa = shutil.which("strace"), shutil.which("systemd-analyze")
    if not (strace and sa):
        pytest.skip("needs strace and systemd-analyze")
    e = unit_entries(SYSTEMD / "portcullis.service")
    allowed: set[str] = set()
    cache: dict[str, set[str]] = {}

    def expand(group: str) -> set[str]:
        if group not in cache:
            out = run(sa, "syscall-filter", group).stdout.splitlines()[1:]
            s: set[str] = set()
            for line in (x.strip() for x in out):
                if line and not line.startswith("#"):
                    s |= expand(line) if line.startswith("@") else {line}
            cache[group] = s
        return cache[group]

    for f in e["SystemCallFilter"]:
        words = f.lstrip("~").split()
        names = set().union(*(expand(w) if w.startswith("@") else {w} for w in words))
        allowed = allowed - names if f.startswith("~") else allowed | names

    # The sample config, its files under a temp root.
    text = (SYSTEMD / "portcullis.toml").read_text()
    root = tmp_path / "root"
    cred = root / "run/credentials/portcullis.service"
    for d in ("etc/portcullis/tls", "etc/portcullis/admin", "etc/portcullis/policies", "var/lib/portcullis", "var/log/portcullis"):
        (root / d).mkdir(parents=True)
    cred.mkdir(parents=True)
    m = material.files
    (root / "etc/portcullis/tls/gateway.pem").write_bytes(m[("portcullis-identity", "cert.pem")])
    (cred / "gateway.key").write_bytes(m[("portcullis-identity", "key.pem")])
    (root / "etc/portcullis/tls/agents-ca.pem").write_bytes(m[("portcullis-identity", "bundle.pem")])
    (root / "etc/portcullis/admin/cert.pem").write_bytes(m[("portcullis-admin-tls", "cert.pem")])
    (cred / "admin.key").write_bytes(m[("portcullis-admin-tls", "key.pem")])
    (root / "etc/portcullis/admin/ca.pem").write_bytes(m[("portcullis-admin-tls", "ca.pem")])
    pol = find(manifests(K8S / "base"), "ConfigMap", "portcullis-policies").obj["data"]["main.cedar"]
    (root / "etc/portcullis/policies/main.cedar").write_text(pol)
    demo, dm = start([binary(), "demo-server", "--http", "127.0.0.1:0"], tmp_path / "demo.log",
                     re.compile(r"listening on (http://\S+)"))
    try:
        text = re.sub(r'addr = "[^"]*"', 'addr = "127.0.0.1:0"', text)
        text = text.replace('url = "http://127.0.0.1:3001/mcp"', f'url = "{dm.group(1)}"')
        text = re.sub(r"allowed_hosts = \[[^\]]*\]", "allowed_hosts = []", text)
        conf = root / "etc/portcullis/portcullis.toml"
        conf.write_text(rooted(text, root))
        trace = tmp_path / "strace.txt"
        log = tmp_path / "gateway.log"
        gw, _ = start([strace, "-f", "-qq", "-c", "-o", trace, binary(), "serve", "--config", conf], log,
                      re.compile(r"admin API on https://"))
        deadline = time.monotonic() + 20
        while not re.search(r"listening on https://", log.read_text()):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        port = int(re.search(r"listening on https://[^:]+:(\d+)/mcp", log.read_text()).group(1))
        admin_port = int(re.search(r"admin API on https://[^:]+:(\d+)", log.read_text()).group(1))
        a = material.root / "agent"
        agent = tls_context(material.root / "td-ca" / "ca.pem", a / "cert.pem", a / "key.pem")
        st, hdrs, _ = mcp_post(port, agent, "localhost", {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        assert st == 200
        sid = hdrs["mcp-session-id"]
        mcp_post(port, agent, "localhost", {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
        for i in range(20):
            st, _, res = mcp_post(port, agent, "localhost", {"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                                                              "params": {"name": "docs__echo", "arguments": {"message": "x"}}}, sid)
            assert st == 200 and "result" in res, res
        ops = material.root / "ops"
        adm = tls_context(root / "etc/portcullis/admin/ca.pem", ops / "cert.pem", ops / "key.pem")
        assert https_get(admin_port, adm, "/readyz")[0] == 200
        conn = http.client.HTTPSConnection("127.0.0.1", admin_port, context=adm, timeout=10)
        conn.request("POST", "/admin/quarantines", body=json.dumps({"kind": "agent", "value": "spiffe://example.org/agent/x"}),
                     headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()
        conn = http.client.HTTPSConnection("127.0.0.1", admin_port, context=adm, timeout=10)
        conn.request("POST", "/admin/policy/reload")
        assert conn.getresponse().status == 200
        conn.close()
        pid = gw.popen.pid  # strace's; the gateway is its child
        child = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        os.kill(child, signal.SIGTERM)
        assert gw.popen.wait(timeout=30) == 0, log.read_text()[-2000:]
        used = set()
        for line in trace.read_text().splitlines():
            parts = line.split()
            if parts and re.fullmatch(r"[\d.]+", parts[0]) and parts[-1] != "total":
                used.add(parts[-1])
        assert used, trace.read_text()
        assert {"accept4", "epoll_wait", "openat"} <= used, used
        blocked = sorted(used - allowed)
        assert not blocked, f"system calls the unit's SystemCallFilter would refuse: {blocked}"
    finally:
        demo.stop()


# ------------------------------------------------------------------ docs ----


def test_operations_doc_names_every_deploy_file() -> None:
    doc = (REPO / "docs" / "operations.md").read_text()
    for p in sorted(DEPLOY.rglob("*")):
        if p.is_file():
            rel = p.relative_to(DEPLOY.parent).as_posix()
            assert rel in doc, f"docs/operations.md does not mention {rel}"
