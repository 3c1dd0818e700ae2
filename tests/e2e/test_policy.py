"""Cedar policy enforcement end to end, with the official Python ``mcp`` SDK
client and the built-in demo server (``portcullis demo-server``) behind the
gateway.

1. Taint flow (``portcullis wrap``, the local user, strength 1): with
   ``read_secret`` labelled ``confidential`` and ``fetch_url`` labelled
   ``egress``, the default pack lets a fresh session fetch, refuses the fetch
   once the session has read the secret (the upstream never sees it), and a
   new session may fetch again. Also per session inside one ``serve``
   process, and for a 2026-07-28 client (no session: taint per identity).
2. List filtering and the no-oracle rule (``portcullis serve
   --allow-anonymous-loopback``, anonymous, strength 0): the confidential
   tool is not listed, and calling it answers like calling a tool that does
   not exist.
3. ``@require_approval``: the gateway asks the client (elicitation, boolean
   ``approve``) before the call; accepted → the note is written; declined,
   accepted with ``approve: false``, or a client that cannot elicit →
   -32030 and the upstream never sees the call. Over ``wrap`` (stdio) and
   ``serve`` (HTTP), each in both eras.

Two of these once caught gateway bugs (a taint denial answered as "unknown
tool"; an approval counted without ``approve: true``); both are fixed and the
tests guard them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from conftest import Gateway, Recorder, gateway_bin, require_or_skip
from policy_fixtures import (
    APPROVE_NOTES,
    DEFAULT_PACK,
    PolicySetup,
    Segment,
    start_serve,
    validate_policy,
    wrap_params,
)

pytestmark = pytest.mark.anyio

POLICY_DENIED = -32030
INVALID_PARAMS = -32602
ERAS = ("legacy", "2026-07-28")
TIMEOUT = 20  # seconds per request

SECRET_MARK = "AWS_SECRET_ACCESS_KEY="  # what the demo's read_secret returns


def texts(result: types.CallToolResult) -> list[str]:
    return [c.text for c in result.content if isinstance(c, types.TextContent)]


def unique(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:12]}"


async def attempt(client: Client, name: str, args: dict) -> MCPError | types.CallToolResult:
    """Calls a tool; a JSON-RPC error is returned, not raised (so that checks
    can run after the client's task group has closed, as plain exceptions)."""
    try:
        return await client.call_tool(name, args)
    except MCPError as e:
        return e


def as_error(outcome: MCPError | types.CallToolResult, name: str) -> MCPError:
    """The JSON-RPC error a call answered with; a result (even isError) fails the test."""
    if not isinstance(outcome, MCPError):
        pytest.fail(f"{name} was not refused: {outcome}")
    return outcome


@pytest.fixture(scope="session")
def binary() -> Path:
    exe = gateway_bin()
    require_or_skip(exe.is_file(), f"gateway binary not found at {exe} (build it, or set PORTCULLIS_BIN)")
    return exe


@pytest.fixture(params=ERAS)
def era(request: pytest.FixtureRequest) -> str:
    return request.param


# ------------------------------------------------------------- setups ----

# The minimal pack for the per-session taint test under `serve`: anonymous
# may use everything, confidential included; the default pack's egress rule.
TAINT_ANYONE = """
@id("anyone-anything")
permit (principal, action, resource);

@id("no-egress-after-confidential")
@reason("this session has read confidential data and may not use egress tools")
forbid (principal, action == Portcullis::Action::"CallTool", resource)
when { resource.labels.contains("egress") && context.session.tainted };
"""

CUSTOM_PACK = "custom.cedar"


def custom_pack_text() -> str:
    return DEFAULT_PACK.read_text() + APPROVE_NOTES


@pytest.fixture(scope="module")
def taint_wrap(binary: Path, tmp_path_factory: pytest.TempPathFactory) -> PolicySetup:
    """wrap config: read_secret confidential, fetch_url egress, default pack."""
    return PolicySetup(
        tmp_path_factory.mktemp("policy-taint-wrap"),
        [Segment("secrets", ["confidential"], ["read_secret"]), Segment("outbound", ["egress"], ["fetch_url"])],
    ).write()


@pytest.fixture(scope="module")
def approval_wrap(binary: Path, tmp_path_factory: pytest.TempPathFactory) -> PolicySetup:
    """wrap config: write_note labelled `approval`, default pack + approve-notes."""
    return PolicySetup(
        tmp_path_factory.mktemp("policy-approval-wrap"),
        [Segment("notes", ["approval"], ["write_note"])],
        {CUSTOM_PACK: custom_pack_text()},
    ).write()


def _serve(setup: PolicySetup, logs_dir: Path) -> Iterator[tuple[PolicySetup, Gateway]]:
    gw = start_serve(setup.config, logs_dir / f"{setup.root.name}.log")
    try:
        yield setup, gw
    finally:
        gw.proc.stop()


@pytest.fixture(scope="module")
def list_serve(
    binary: Path, tmp_path_factory: pytest.TempPathFactory, logs_dir: Path
) -> Iterator[tuple[PolicySetup, Gateway]]:
    """serve, anonymous, default pack; demo__read_secret confidential."""
    setup = PolicySetup(
        tmp_path_factory.mktemp("policy-list-serve"),
        [Segment("secrets", ["confidential"], ["demo__read_secret"])],
        serve_upstream="demo",
    ).write()
    yield from _serve(setup, logs_dir)


@pytest.fixture(scope="module")
def approval_serve(
    binary: Path, tmp_path_factory: pytest.TempPathFactory, logs_dir: Path
) -> Iterator[tuple[PolicySetup, Gateway]]:
    """serve, anonymous, default pack + approve-notes; demo__write_note labelled `approval`."""
    setup = PolicySetup(
        tmp_path_factory.mktemp("policy-approval-serve"),
        [Segment("notes", ["approval"], ["demo__write_note"])],
        {CUSTOM_PACK: custom_pack_text()},
        serve_upstream="demo",
    ).write()
    yield from _serve(setup, logs_dir)


@pytest.fixture(scope="module")
def taint_serve(
    binary: Path, tmp_path_factory: pytest.TempPathFactory, logs_dir: Path
) -> Iterator[tuple[PolicySetup, Gateway]]:
    """serve, anonymous allowed everything but egress after confidential."""
    setup = PolicySetup(
        tmp_path_factory.mktemp("policy-taint-serve"),
        [
            Segment("secrets", ["confidential"], ["demo__read_secret"]),
            Segment("outbound", ["egress"], ["demo__fetch_url"]),
        ],
        {"taint.cedar": TAINT_ANYONE},
        serve_upstream="demo",
    ).write()
    yield from _serve(setup, logs_dir)


# ---------------------------------------------------- policy files valid ----


def test_policy_files_validate(binary: Path, tmp_path: Path) -> None:
    """The packs these tests load validate with `portcullis policy validate`
    (each on its own: one invocation is one policy set); a broken one is
    refused with file:line:col."""
    custom = tmp_path / CUSTOM_PACK
    custom.write_text(custom_pack_text())
    taint = tmp_path / "taint.cedar"
    taint.write_text(TAINT_ANYONE)
    for f in (DEFAULT_PACK, custom, taint):
        rc, out = validate_policy(f)
        if rc == 2 and "unrecognized subcommand" in out:
            pytest.skip("this build has no `portcullis policy validate`")
        assert rc == 0, out
    bad = tmp_path / "bad.cedar"
    bad.write_text('@id("broken")\npermit (principal, action, resource)\nwhen { resource.no_such_attr };\n')
    rc, out = validate_policy(bad)
    assert rc != 0, out
    assert re.search(r"bad\.cedar:\d+:\d+: ", out), out


# --------------------------------------------------------------- taint ----


def fetched(result: MCPError | types.CallToolResult, url: str) -> bool:
    return isinstance(result, types.CallToolResult) and not result.is_error and any(url in t for t in texts(result))


def upstream_urls(setup: PolicySetup) -> list[str]:
    return [c.get("arguments", {}).get("url") for c in setup.demo_log.calls("fetch_url")]


async def test_taint_blocks_egress_until_a_fresh_session(taint_wrap: PolicySetup) -> None:
    params = wrap_params(taint_wrap.config, taint_wrap.demo_log)
    before, after, fresh = (unique(f"https://{w}.example") for w in ("before", "after", "fresh"))
    async with Client(params, mode="legacy", read_timeout_seconds=TIMEOUT) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        first = await attempt(client, "fetch_url", {"url": before})
        secret = await attempt(client, "read_secret", {})
        denied = await attempt(client, "fetch_url", {"url": after})
        echo = await attempt(client, "echo", {"message": "still here"})
    async with Client(params, mode="legacy", read_timeout_seconds=TIMEOUT) as client:
        again = await attempt(client, "fetch_url", {"url": fresh})

    assert {"read_secret", "fetch_url", "echo"} <= names, sorted(names)
    # A fresh session may use the egress tool.
    assert fetched(first, before), first
    # The local user may read confidential data; that taints the session.
    assert isinstance(secret, types.CallToolResult) and any(SECRET_MARK in t for t in texts(secret)), secret
    # Now egress is refused, and the call never reaches the upstream.
    err = as_error(denied, "fetch_url")
    assert err.code in (POLICY_DENIED, INVALID_PARAMS), err.error
    # Only egress is closed: other tools still work in the tainted session.
    assert isinstance(echo, types.CallToolResult) and texts(echo) == ["Echo: still here"], echo
    # A new client is a new session: egress is allowed again.
    assert fetched(again, fresh), again
    urls = upstream_urls(taint_wrap)
    assert before in urls and fresh in urls, urls
    assert after not in urls, "the refused egress call reached the upstream"


async def test_taint_denial_is_a_policy_error_with_its_reason(taint_wrap: PolicySetup) -> None:
    async with Client(wrap_params(taint_wrap.config), mode="legacy", read_timeout_seconds=TIMEOUT) as client:
        await client.call_tool("read_secret", {})
        denied = await attempt(client, "fetch_url", {"url": "https://example.org"})
    err = as_error(denied, "fetch_url")
    assert err.code == POLICY_DENIED, err.error
    assert err.message.startswith("Denied by policy: "), err.message
    assert "confidential" in err.message and "egress" in err.message, err.message


async def test_taint_is_per_session_in_one_gateway(taint_serve: tuple[PolicySetup, Gateway]) -> None:
    """Two sessions of the same (anonymous) principal on one `serve`: the
    tainted one may not fetch, the other may, before and after."""
    setup, gw = taint_serve
    url = unique("https://other.example")
    async with Client(gw.url, mode="legacy", read_timeout_seconds=TIMEOUT) as tainted:
        async with Client(gw.url, mode="legacy", read_timeout_seconds=TIMEOUT) as clean:
            secret = await attempt(tainted, "demo__read_secret", {})
            denied = await attempt(tainted, "demo__fetch_url", {"url": url})
            other = await attempt(clean, "demo__fetch_url", {"url": url + "/clean"})
            still = await attempt(tainted, "demo__fetch_url", {"url": url})
    assert isinstance(secret, types.CallToolResult) and any(SECRET_MARK in t for t in texts(secret)), secret
    as_error(denied, "demo__fetch_url")
    assert fetched(other, url + "/clean"), other
    as_error(still, "demo__fetch_url")
    urls = upstream_urls(setup)
    assert url + "/clean" in urls and url not in urls, urls


async def test_taint_holds_for_a_2026_client(taint_wrap: PolicySetup) -> None:
    """2026-07-28 has no session: the taint must still hold across one
    client's requests (the gateway keeps it per identity)."""
    url = unique("https://modern.example")
    async with Client(wrap_params(taint_wrap.config), mode="2026-07-28", read_timeout_seconds=TIMEOUT) as client:
        secret = await attempt(client, "read_secret", {})
        denied = await attempt(client, "fetch_url", {"url": url})
    assert isinstance(secret, types.CallToolResult) and any(SECRET_MARK in t for t in texts(secret)), secret
    as_error(denied, "fetch_url")


# ------------------------------------------------ list filtering, oracle ----

DEMO_TOOLS = {"echo", "read_document", "read_secret", "write_note", "count", "fetch_url"}


async def test_anonymous_list_hides_the_confidential_tool(list_serve: tuple[PolicySetup, Gateway], era: str) -> None:
    setup, gw = list_serve
    async with Client(gw.url, mode=era, read_timeout_seconds=TIMEOUT) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        hidden = await attempt(client, "demo__read_secret", {})
    assert "demo__read_secret" not in names, sorted(names)
    assert {f"demo__{t}" for t in DEMO_TOOLS - {"read_secret"}} <= names, sorted(names)
    err = as_error(hidden, "demo__read_secret")
    assert (err.code, err.message) == (INVALID_PARAMS, "Unknown tool: demo__read_secret"), err.error
    assert not setup.demo_log.calls("read_secret"), "the hidden tool was called upstream"


async def test_hidden_tool_answers_exactly_like_a_missing_one(
    list_serve: tuple[PolicySetup, Gateway], era: str
) -> None:
    """Same code, same message (up to the name), same data: no oracle."""
    setup, gw = list_serve
    async with Client(gw.url, mode=era, read_timeout_seconds=TIMEOUT) as client:
        hidden = as_error(await attempt(client, "demo__read_secret", {}), "demo__read_secret")
        missing = as_error(await attempt(client, "demo__does_not_exist", {}), "demo__does_not_exist")
        foreign = as_error(await attempt(client, "nosuchserver__read_secret", {}), "nosuchserver__read_secret")

    def shape(e: MCPError, name: str) -> tuple[int, str, object]:
        return e.code, e.message.replace(name, "NAME"), e.data

    assert shape(hidden, "demo__read_secret") == (INVALID_PARAMS, "Unknown tool: NAME", None), hidden.error
    assert shape(missing, "demo__does_not_exist") == shape(hidden, "demo__read_secret"), (hidden.error, missing.error)
    assert shape(foreign, "nosuchserver__read_secret") == shape(hidden, "demo__read_secret"), foreign.error
    assert not setup.demo_log.calls("does_not_exist"), "a tool no upstream lists was forwarded upstream"


# ------------------------------------------------------- require approval ----

TRANSPORTS = ("wrap", "serve")


@pytest.fixture(params=TRANSPORTS)
def approval(request: pytest.FixtureRequest) -> tuple[PolicySetup, object, str]:
    """(setup, server for Client, tool name) for `wrap` (stdio) and `serve` (HTTP)."""
    if request.param == "wrap":
        setup: PolicySetup = request.getfixturevalue("approval_wrap")
        return setup, wrap_params(setup.config, setup.demo_log), "write_note"
    setup, gw = request.getfixturevalue("approval_serve")
    return setup, gw.url, "demo__write_note"


async def call_note(server: object, era: str, tool: str, rec: Recorder | None) -> tuple[dict, object]:
    """Calls the note tool once in a new client (with an elicitation
    callback when `rec` is given); returns (arguments, outcome)."""
    kwargs: dict = {"read_timeout_seconds": TIMEOUT}
    if rec is not None:
        kwargs["elicitation_callback"] = rec.on_elicit
    args = {"title": unique("note"), "body": "approved by a human"}
    async with Client(server, mode=era, **kwargs) as client:
        outcome = await attempt(client, tool, args)
    return args, outcome


def written(setup: PolicySetup) -> list[str]:
    return [c.get("arguments", {}).get("title") for c in setup.demo_log.calls("write_note")]


async def test_approval_accepted_writes_the_note(approval, era: str) -> None:
    setup, server, tool = approval
    rec = Recorder(elicit_reply=types.ElicitResult(action="accept", content={"approve": True}))
    args, r = await call_note(server, era, tool, rec)
    assert isinstance(r, types.CallToolResult) and not r.is_error, r
    assert any(f'saved note "{args["title"]}"' in t for t in texts(r)), texts(r)
    assert len(rec.elicitations) == 1, rec.elicitations
    q = rec.elicitations[0]
    assert "write a note" in q.message, q.message
    schema = getattr(q, "requested_schema", None) or {}
    assert schema.get("properties", {}).get("approve", {}).get("type") == "boolean", schema
    assert written(setup).count(args["title"]) == 1, written(setup)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(types.ElicitResult(action="decline"), id="decline"),
        pytest.param(types.ElicitResult(action="cancel"), id="cancel"),
        pytest.param(types.ElicitResult(action="accept", content={"approve": False}), id="accept-approve-false"),
    ],
)
async def test_approval_refused_denies_the_call(approval, era: str, answer: types.ElicitResult) -> None:
    setup, server, tool = approval
    rec = Recorder(elicit_reply=answer)
    args, r = await call_note(server, era, tool, rec)
    err = as_error(r, tool)
    assert len(rec.elicitations) == 1, "the human is asked exactly once"
    assert err.code == POLICY_DENIED, err.error
    assert err.message.startswith("Denied by policy: "), err.message
    assert args["title"] not in written(setup), "a call that was not approved reached the upstream"


async def test_approval_without_elicitation_capability_is_denied(approval, era: str) -> None:
    setup, server, tool = approval
    args, r = await call_note(server, era, tool, None)
    err = as_error(r, tool)
    assert err.code == POLICY_DENIED, err.error
    assert err.message.startswith("Denied by policy: "), err.message
    assert args["title"] not in written(setup), "a call that was not approved reached the upstream"


@pytest.mark.parametrize("content", [{}, None], ids=["empty-content", "no-content"])
async def test_approval_accept_without_approve_true_is_denied(approval, era: str, content: dict | None) -> None:
    setup, server, tool = approval
    rec = Recorder(elicit_reply=types.ElicitResult(action="accept", content=content))
    args, r = await call_note(server, era, tool, rec)
    err = as_error(r, tool)
    assert err.code == POLICY_DENIED, err.error
    assert args["title"] not in written(setup)
