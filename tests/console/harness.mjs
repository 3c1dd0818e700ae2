// Harness of the console's browser tests: a fresh PKI from `portcullis ca` /
// `portcullis cert`, the gateway (`portcullis serve`) with an admin listener
// and the demo server as upstream, the Python `mcp` SDK client as a
// subprocess, and the system Chromium driven by playwright-core.
//
// Environment: PORTCULLIS_BIN (default target/debug/portcullis),
// CONSOLE_DEPS (default .deps), CHROMIUM (default /usr/bin/chromium).

import { spawn, execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, mkdtempSync, readFileSync, writeFileSync, mkdirSync, createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const DEPS = path.resolve(REPO, process.env.CONSOLE_DEPS ?? '.deps');
export const BIN = path.resolve(REPO, process.env.PORTCULLIS_BIN ?? 'target/debug/portcullis');
export const PYTHON = path.join(DEPS, 'venv/bin/python');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const MCP_CALL = path.join(REPO, 'tests/console/mcp_call.py');
export const POLICY = path.join(REPO, 'tests/console/policy.cedar');
export const SCREENSHOTS = path.join(REPO, 'target/console-screenshots');
export const IN_CI = ['1', 'true', 'yes'].includes((process.env.CI ?? '').toLowerCase());

export const TRUST_DOMAIN = 'portcullis.local';
export const AGENT_ID = `spiffe://${TRUST_DOMAIN}/agent/console-e2e`;
export const OUTSIDER_ID = `spiffe://${TRUST_DOMAIN}/agent/outsider`;
export const ADMIN_ID = `spiffe://${TRUST_DOMAIN}/admin/cli`;

// Without these Chromium keeps trying to reach Google services; this machine
// has no network, so they would only flood refused connections.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const STARTUP_MS = 30_000;

/** What is missing to run these tests (empty when nothing is). */
export function missingPrerequisites() {
  const missing = [];
  if (!existsSync(BIN)) missing.push(`gateway binary ${BIN} (cargo build -p portcullis, or set PORTCULLIS_BIN)`);
  if (!existsSync(PYTHON)) missing.push(`${PYTHON} (scripts/install-test-deps.sh)`);
  if (!existsSync(path.join(DEPS, 'npm/node_modules/playwright-core/package.json')))
    missing.push('playwright-core in .deps/npm (scripts/install-test-deps.sh)');
  if (!existsSync(CHROMIUM)) missing.push(`${CHROMIUM} (scripts/install-test-deps.sh installs Debian chromium)`);
  return missing;
}

export function playwright() {
  const require = createRequire(path.join(DEPS, 'npm/package.json'));
  return require('playwright-core');
}

/** Runs a command to completion; rejects with its output when it fails. */
export function run(argv, { env = {}, timeout = 60_000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(argv[0], argv.slice(1), { cwd: REPO, env: { ...process.env, ...env }, timeout, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${argv.join(' ')} failed (${err.code ?? err.signal}):\n${stdout}${stderr}`));
        else resolve({ stdout, stderr });
      });
  });
}

/** A CA in STATE/ca (the gateway then uses it as its development CA: admin
 * listener certificate and admin client certificate) and leaves issued by it. */
export async function makePki(work) {
  const state = path.join(work, 'state');
  const caDir = path.join(state, 'ca');
  await run([BIN, 'ca', 'init', '--dir', caDir]);
  const leaf = async (name, id, extra = []) => {
    const out = path.join(work, 'pki', name);
    await run([BIN, 'cert', 'issue', '--ca', caDir, '--spiffe-id', id, '--ttl', '1h', ...extra, '--out', out]);
    return { cert: path.join(out, 'cert.pem'), key: path.join(out, 'key.pem'), ca: path.join(out, 'ca.pem') };
  };
  return {
    state,
    ca: path.join(caDir, 'ca.pem'),
    gateway: await leaf('gateway', `spiffe://${TRUST_DOMAIN}/gateway`, ['--ip', '127.0.0.1', '--dns', 'localhost']),
    agent: await leaf('agent', AGENT_ID),
    outsider: await leaf('outsider', OUTSIDER_ID),
    // Written by the gateway at start-up (development default).
    admin: { cert: path.join(state, 'admin-client/cert.pem'), key: path.join(state, 'admin-client/key.pem') },
  };
}

const READY = /^listening on (\S+)\s*$/m;
const ADMIN = /admin API on (https:\/\/\S+)/;
// docs/console.md: the one login-link line, exactly this shape.
export const CONSOLE_LINE =
  /^portcullis: console on (https:\/\/\S+\/console\/) \(one-time login: (https:\/\/\S+\/console\/login\?token=([0-9a-f]+))\)$/m;

const q = (s) => JSON.stringify(s);

/** Starts `portcullis serve` in front of the demo server (stdio), with client
 * certificates required on the agents' listener and the dev admin listener. */
export async function startGateway(work, pki) {
  const audit = path.join(work, 'audit.jsonl');
  const rugFile = path.join(work, 'rug-pull.txt');
  const config = path.join(work, 'portcullis.toml');
  const demo = ['env', `PORTCULLIS_DEMO_RUGPULL=${rugFile}`, BIN, 'demo-server'];
  writeFileSync(config, `state_dir = ${q(pki.state)}

[audit]
path = ${q(audit)}

[listen.tls]
mode = "required"
cert = ${q(pki.gateway.cert)}
key = ${q(pki.gateway.key)}
client_ca = [${q(pki.ca)}]
trust_domains = [${q(TRUST_DOMAIN)}]

[auth]
require = "certificate"

[policy]
files = [${q(POLICY)}]

[[segment]]
name = "secrets"
labels = ["confidential"]
tools = ["demo__read_secret"]

[[upstream]]
name = "demo"
command = [${demo.map(q).join(', ')}]
`);
  const log = path.join(work, 'gateway.log');
  const out = createWriteStream(log);
  const child = spawn(BIN, ['serve', '--config', config, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'], {
    cwd: REPO,
    env: { ...process.env, PORTCULLIS_STATE_DIR: pki.state, PORTCULLIS_LOG: process.env.PORTCULLIS_LOG ?? 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // own process group: stopping it stops the demo server too
  });
  let stderr = '';
  child.stdout.pipe(out, { end: false });
  child.stderr.on('data', (b) => { stderr += b.toString(); out.write(b); });
  const stop = () => {
    if (child.exitCode === null && child.signalCode === null) {
      try { process.kill(-child.pid, 'SIGTERM'); } catch { /* gone */ }
    }
  };
  process.on('exit', stop);
  const gw = {
    child, log, audit, rugFile, config, stop,
    get stderr() { return stderr; },
    tail(n = 40) { return stderr.split('\n').slice(-n).join('\n'); },
    auditRecords() {
      if (!existsSync(audit)) return [];
      return readFileSync(audit, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
    },
  };
  let deadline = Date.now() + STARTUP_MS;
  let sawListeners = false;
  while (Date.now() < deadline) {
    const ready = READY.exec(stderr);
    const admin = ADMIN.exec(stderr);
    const consoleLine = CONSOLE_LINE.exec(stderr);
    if (ready && admin && !sawListeners) {
      // Both listeners are up: the console line comes with them or not at all.
      sawListeners = true;
      deadline = Math.min(deadline, Date.now() + 5_000);
    }
    if (ready && admin && consoleLine) {
      Object.assign(gw, {
        url: ready[1],
        admin: admin[1],
        consoleLine: consoleLine[0],
        consoleUrl: consoleLine[1],
        loginLink: consoleLine[2],
        token: consoleLine[3],
      });
      return gw;
    }
    if (child.exitCode !== null) throw new Error(`portcullis serve exited with ${child.exitCode}:\n${gw.tail()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  stop();
  throw new Error(sawListeners
    ? `portcullis serve printed no line 'portcullis: console on https://ADDR/console/ (one-time login: https://ADDR/console/login?token=TOKEN)' (docs/console.md):\n${gw.tail()}`
    : `portcullis serve did not print its ready and admin lines within ${STARTUP_MS} ms:\n${gw.tail()}`);
}

/** One action of the Python mcp SDK client (tests/console/mcp_call.py) as `leaf`. */
export async function mcp(gw, leaf, ...action) {
  const { stdout } = await run([PYTHON, MCP_CALL, '--url', gw.url, '--ca', leaf.ca, '--cert', leaf.cert, '--key', leaf.key, ...action],
    { timeout: 60_000 });
  const line = stdout.trim().split('\n').pop();
  try {
    return JSON.parse(line);
  } catch {
    throw new Error(`mcp_call.py printed no JSON line:\n${stdout}`);
  }
}

export async function launchChromium() {
  const { chromium } = playwright();
  // launch() gives every browser a new temporary profile (a fresh user-data-dir).
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

export function workDir() {
  return mkdtempSync(path.join(tmpdir(), 'portcullis-console-'));
}

export function screenshotsDir() {
  mkdirSync(SCREENSHOTS, { recursive: true });
  return SCREENSHOTS;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; throws with `what` after `ms`. */
export async function eventually(what, fn, ms = 10_000, every = 150) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}
