"""Identity end to end (issue 3): the official Python ``mcp`` SDK client over mTLS
with an OAuth bearer token, through the gateway, to server-everything (stdio).

Cast (all on loopback, started once for this module, see identity_fixtures.py):

- a CA and SPIFFE X.509-SVIDs from ``portcullis ca init`` / ``cert issue``
  (gateway ``spiffe://example.org/gateway``, agent ``spiffe://example.org/agent/e2e``);
- ``oauth2-mock-server`` (npm) via tests/peers/oauth_server.mjs: a third-party
  authorization server with real RS256 keys; its before-signing hook puts the
  requested RFC 8707 ``resource`` into ``aud`` and grants ``mcp:tools``;
- ``portcullis serve`` with ``[listen.tls] mode = "optional"`` (client CA, trust
  domain example.org), ``[auth] require = "strict"`` (certificate and token),
  ``[auth.oauth]`` = that server's issuer and JWKS URL, ``required_scopes = ["mcp:tools"]``.

Every token is fetched over HTTP from the authorization server's token endpoint
(client_credentials); none is hand-made. Each test runs in both protocol eras.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from conftest import require_or_skip
from identity_fixtures import (
    CLIENT_ID,
    FOREIGN_ID,
    NODE22,
    OAUTH_MOCK_PKG,
    OAUTH_SERVER_JS,
    HTTP_TIMEOUT,
    SCOPE,
    IdentityGateway,
    OAuthServer,
    Pki,
    fresh_pki,
    Seen,
    jwt_parts,
    mcp_client,
    parse_bearer_challenge,
    request_token,
    start_identity_gateway,
    start_oauth_server,
    tls_context,
)

pytestmark = pytest.mark.anyio

ERAS = ("legacy", "2026-07-28")
ECHO = "everything__echo"


# -------------------------------------------------------------- fixtures ----


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return fresh_pki(tmp_path_factory, "identity-pki")


@pytest.fixture(scope="module")
def oauth(logs_dir: Path) -> Iterator[OAuthServer]:
    require_or_skip(
        OAUTH_MOCK_PKG.is_file(), f"oauth2-mock-server not installed at {OAUTH_MOCK_PKG.parent}; run scripts/install-test-deps.sh"
    )
    require_or_skip(NODE22.is_file(), f"Node 22 not found at {NODE22}; run scripts/install-test-deps.sh")
    assert OAUTH_SERVER_JS.is_file(), OAUTH_SERVER_JS
    server = start_oauth_server(logs_dir / "oauth2-mock-server.log")
    try:
        yield server
    finally:
        server.proc.stop()


@pytest.fixture(scope="module")
def gateway(
    pki: Pki, oauth: OAuthServer, everything_js: Path, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityGateway]:
    gw = start_identity_gateway(
        tmp_path_factory.mktemp("identity-gateway"), pki, oauth, everything_js, logs_dir / "gateway-identity.log"
    )
    try:
        yield gw
    finally:
        gw.proc.stop()


@pytest.fixture(scope="module")
def token(gateway: IdentityGateway, oauth: OAuthServer) -> str:
    """A token for the gateway's resource URI, from the token endpoint."""
    return str(request_token(oauth.token_endpoint, gateway.url)["access_token"])


@pytest.fixture(params=ERAS)
def era(request: pytest.FixtureRequest) -> str:
    return request.param


def texts(result: types.CallToolResult) -> list[str]:
    return [c.text for c in result.content if isinstance(c, types.TextContent)]


def marker(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex}"


async def refused(gateway: IdentityGateway, era: str, message: str, **client: object) -> Seen:
    """Connect with the given credentials and call echo(message) through the SDK;
    the client must fail. Returns the HTTP responses it saw."""
    seen = Seen()
    with pytest.raises(Exception) as failure:
        async with mcp_client(gateway.url, era, seen=seen, **client) as c:  # type: ignore[arg-type]
            await c.call_tool(ECHO, {"message": message})
    assert seen.responses, f"no HTTP response reached the client: {failure.value!r}"
    # The SDK turns a non-JSON-RPC error status into a JSON-RPC error for the call.
    # (legacy: raised out of the initialize handshake, inside task groups)
    assert isinstance(failure.value, MCPError) or (
        isinstance(failure.value, BaseExceptionGroup) and failure.group_contains(MCPError)
    ), repr(failure.value)
    return seen


# --------------------------------------------------------------- positive ----


async def test_mtls_and_bearer_token_reach_server_everything(
    gateway: IdentityGateway, pki: Pki, token: str, oauth: OAuthServer, era: str
) -> None:
    header, claims = jwt_parts(token)
    assert header["alg"] == "RS256" and header.get("kid"), header
    assert claims["iss"] == oauth.issuer
    assert claims["aud"] == gateway.url  # added by the authorization server's before-signing hook
    assert SCOPE in str(claims["scope"]).split()

    msg = marker(f"hello-{era}")
    seen = Seen()
    async with mcp_client(gateway.url, era, ca=pki.ca, cert=pki.agent, token=token, seen=seen) as client:
        tools = await client.list_tools()
        names = {t.name for t in tools.tools}
        assert ECHO in names, sorted(names)
        result = await client.call_tool(ECHO, {"message": msg})
    assert not result.is_error, result
    assert texts(result) == [f"Echo: {msg}"]
    assert seen.responses and all(s < 400 for s in seen.statuses()), seen.statuses()

    # The call really went through the upstream (tee'd stdin)...
    received = gateway.upstream_received()
    assert msg in received
    # ...and the client's token did not (no token passthrough).
    assert token not in received


# -------------------------------------------------------------- discovery ----


async def test_discovery_from_401_to_token(gateway: IdentityGateway, pki: Pki, oauth: OAuthServer, era: str) -> None:
    gw = urlsplit(gateway.url)
    origin = f"{gw.scheme}://{gw.netloc}"

    # 1. No credentials at all: 401 with a Bearer challenge naming the metadata.
    seen = await refused(gateway, era, marker("anonymous"), ca=pki.ca)
    r401 = seen.first(401)
    assert seen.statuses()[0] == 401, seen.statuses()
    challenge = parse_bearer_challenge(r401.headers["www-authenticate"])
    assert challenge["resource_metadata"] == f"{origin}/.well-known/oauth-protected-resource{gw.path}"
    assert challenge.get("scope") == SCOPE
    assert "error" not in challenge, challenge  # RFC 6750 §3.1: no credentials, no error code

    async with httpx2.AsyncClient(verify=tls_context(pki.ca), timeout=HTTP_TIMEOUT) as http:
        # 2. Protected Resource Metadata (RFC 9728), fetched without credentials.
        r = await http.get(challenge["resource_metadata"])
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        prm = r.json()
        assert prm["resource"] == gateway.url
        assert prm["authorization_servers"] == [oauth.issuer]
        assert SCOPE in prm["scopes_supported"]
        assert prm.get("bearer_methods_supported", ["header"]) == ["header"]

        # 3. Authorization server metadata: RFC 8414, then OpenID Connect
        #    discovery (the order the MCP authorization spec gives).
        issuer = prm["authorization_servers"][0]
        tried = []
        for well_known in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
            r = await http.get(issuer.rstrip("/") + well_known)
            tried.append((well_known, r.status_code))
            if r.status_code == 200:
                break
        assert r.status_code == 200, tried
        asm = r.json()
        assert asm["issuer"] == issuer  # RFC 8414 §3.3
        assert "client_credentials" in asm["grant_types_supported"]
        assert asm["jwks_uri"] == oauth.jwks_uri  # the key set the gateway is configured with
        token_endpoint = asm["token_endpoint"]
        assert urlsplit(token_endpoint).netloc == urlsplit(issuer).netloc

    # 4. A token for exactly this resource (RFC 8707) from the token endpoint.
    answer = request_token(token_endpoint, prm["resource"], scope=challenge["scope"])
    _, claims = jwt_parts(str(answer["access_token"]))
    assert claims["aud"] == prm["resource"]
    assert claims["iss"] == issuer
    assert claims["sub"] == CLIENT_ID
    assert SCOPE in str(answer["scope"]).split()

    # 5. The SDK client (mTLS + the discovered token) now gets through.
    msg = marker(f"discovered-{era}")
    async with mcp_client(gateway.url, era, ca=pki.ca, cert=pki.agent, token=str(answer["access_token"])) as client:
        assert ECHO in {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool(ECHO, {"message": msg})
    assert texts(result) == [f"Echo: {msg}"]


# --------------------------------------------------------------- negative ----


async def test_wrong_audience_is_refused_before_the_upstream(
    gateway: IdentityGateway, pki: Pki, oauth: OAuthServer, era: str
) -> None:
    # A genuine token from the same authorization server, for another resource.
    other = "https://other.example/mcp"
    wrong = str(request_token(oauth.token_endpoint, other)["access_token"])
    assert jwt_parts(wrong)[1]["aud"] == other

    msg = marker(f"wrong-aud-{era}")
    mark = gateway.log_mark()
    seen = await refused(gateway, era, msg, ca=pki.ca, cert=pki.agent, token=wrong)
    assert set(seen.statuses()) == {401}, seen.statuses()
    challenge = parse_bearer_challenge(seen.first(401).headers["www-authenticate"])
    assert challenge.get("error") == "invalid_token", challenge
    assert challenge["resource_metadata"].endswith("/.well-known/oauth-protected-resource/mcp"), challenge

    gateway.wait_for_log("authentication failed", "wrong token audience", since=mark)
    received = gateway.upstream_received()
    assert msg not in received
    assert wrong not in received


async def test_token_without_client_certificate_is_refused_in_strict_mode(
    gateway: IdentityGateway, pki: Pki, token: str, era: str
) -> None:
    # A valid user token but no workload identity: strict mode wants both.
    msg = marker(f"no-cert-{era}")
    mark = gateway.log_mark()
    seen = await refused(gateway, era, msg, ca=pki.ca, cert=None, token=token)
    assert set(seen.statuses()) == {403}, seen.statuses()
    gateway.wait_for_log("authentication failed", "a client certificate is required", since=mark)
    assert msg not in gateway.upstream_received()


async def test_certificate_from_a_foreign_trust_domain_is_refused(
    gateway: IdentityGateway, pki: Pki, token: str, era: str
) -> None:
    # Same CA, valid token, but the SPIFFE ID is outside the allowed trust
    # domain: the TLS handshake itself is refused, so no HTTP answer at all.
    msg = marker(f"foreign-{era}")
    mark = gateway.log_mark()
    seen = Seen()
    with pytest.raises(Exception):
        async with mcp_client(gateway.url, era, ca=pki.ca, cert=pki.foreign, token=token, seen=seen) as client:
            await client.call_tool(ECHO, {"message": msg})
    assert seen.statuses() == [], seen.statuses()
    line = gateway.wait_for_log("client certificate rejected", FOREIGN_ID, since=mark)
    assert "trust domain" in line, line
    assert msg not in gateway.upstream_received()
