// The status page as a user sees it, in a real browser (Debian's Chromium through playwright-core)
// against the real proxy: the token form beyond loopback, the session that keeps the token, the
// offline uplink shown as such, a real cloud Mosquitto and a device moving the counters, rules pushed
// with the CLI. What is asserted is what the browser renders (text, visibility, computed colours),
// and that the page raises no script error and logs no console error it is not meant to.
import t from 'tap';
import { join } from 'node:path';
import type { Locator, Page } from 'playwright-core';
import { colourOf, launchBrowser, openPage, sessionValues, type PageProblem, type WatchedPage } from './helpers/browser.js';
import { runCli, startProxy } from './helpers/proxy.js';
import { adminToken } from './helpers/admin.js';
import { startMosquitto } from './helpers/mosquitto.js';
import { collect, connectClient } from './helpers/clients.js';
import { eventually } from './helpers/ports.js';
import { meanModel, meanModelYaml, writeModel } from './helpers/models.js';

const browser = await launchBrowser();
t.teardown(() => browser.close());

const OFFLINE = 'offline (no uplink configured): what would go up stays in the cache';
const HOT = 'rule hot\nwhen payload.temp > 35\nthen uplink(priority = "high")\nend\n';
/** The page refreshes every 2 s: a change shows within two refreshes and a round trip. */
const REFRESH_MS = 6_000;

/** The value cell of the row labelled `label` in the page's table `table`. */
function cell(page: Page, table: string, label: string): Locator {
  const exact = new RegExp(`^${label.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`);
  return page
    .locator(`#${table} tr`)
    .filter({ has: page.locator('td:first-child', { hasText: exact }) })
    .locator('td')
    .nth(1);
}

/** Waits until the row reads `want` as rendered, and returns what it reads; fails with what it last read. */
async function waitForCell(page: Page, table: string, label: string, want: RegExp, timeoutMs = REFRESH_MS): Promise<string> {
  const at = cell(page, table, label);
  let last = '(no such row)';
  try {
    return await eventually(
      `${table}/${label}`,
      async () => {
        last = (await at.count()) > 0 ? await at.innerText() : '(no such row)';
        return want.test(last) ? last : '';
      },
      timeoutMs,
    );
  } catch {
    throw new Error(
      `the page's "${label}" (#${table}) did not read ${String(want)} within ${timeoutMs} ms; it reads ${JSON.stringify(last)}`,
    );
  }
}

/**
 * What the page reported, less the 401 answers to its calls to /api/v1/status: beyond loopback, that
 * 401 is how the page learns it needs the token (docs/operations.md), and Chromium logs every 4xx
 * answer as a console error, whatever the script does with it.
 */
function unexpected(w: WatchedPage): PageProblem[] {
  return w.problems.filter(
    (p) => !(p.kind === 'console' && /status of 401\b/.test(p.text) && p.url !== '' && new URL(p.url).pathname === '/api/v1/status'),
  );
}

/** Holds the page's calls to /api/v1/status while held (from the start), passes them once released. */
async function holdStatusCalls(page: Page): Promise<{ hold(): void; release(): void }> {
  let release = (): void => {};
  let gate = Promise.resolve();
  const control = {
    hold() {
      gate = new Promise<void>((resolve) => (release = resolve));
    },
    release: () => release(),
  };
  control.hold();
  await page.route('**/api/v1/status', async (route) => {
    await gate;
    await route.continue();
  });
  return control;
}

const statusAnswers = (w: WatchedPage, from = 0): number[] =>
  w.responses
    .slice(from)
    .filter((r) => r.path === '/api/v1/status')
    .map((r) => r.status);

t.test('admin beyond loopback: the page asks for the token, refuses a wrong one, keeps the right one for the session', async (t) => {
  const dir = t.testdir({ work: { 'hot.rules': HOT } });
  const proxy = await startProxy(dir, { admin: { host: '0.0.0.0', port: 0 } });
  t.teardown(() => proxy.stop());
  const url = `http://127.0.0.1:${proxy.ports.admin}/`;
  const token = adminToken(proxy);
  const context = await browser.newContext();
  t.teardown(() => context.close());
  const w = await openPage(context);
  const { page } = w;

  const loaded = await page.goto(url);
  t.equal(loaded?.status(), 200, 'the page itself loads without a token');
  const field = page.getByLabel('admin token');
  const submit = page.getByRole('button', { name: 'Show the status' });
  const main = page.locator('#main');
  await field.waitFor({ state: 'visible' });
  t.ok(await page.getByRole('heading', { name: 'Admin token' }).isVisible(), 'a form asks for the admin token');
  t.ok(await submit.isVisible(), 'with a button to send it');
  t.notOk(await main.isVisible(), 'no status shown while it asks');
  const body = await page.locator('body').innerText();
  t.notMatch(body, /E_ADMIN_AUTH|bearer token is required|[{}]/, 'not the raw 401 JSON body');
  t.match(body, /admin-token/, 'it says where the token is');
  t.equal(await page.locator('#loginmsg').innerText(), '', 'no complaint before a token was tried');
  t.same(statusAnswers(w), [401], 'the page asked /api/v1/status once, without a token, and got 401');

  // A wrong token: the form comes back, saying so.
  await field.fill('not-the-token');
  await submit.click();
  const refused = page.getByText('The proxy did not accept that token: check it and enter it again.');
  await refused.waitFor({ state: 'visible' });
  t.ok(await field.isVisible(), 'a wrong token is refused and the form asks again');
  t.notOk(await main.isVisible(), 'still no status');
  t.same(await sessionValues(page), [], 'a refused token is not kept');
  const errorColour = await colourOf(refused);

  // The right token: the status.
  await field.fill(token);
  await submit.click();
  t.equal(await waitForCell(page, 'uplink', 'state', /^offline/), OFFLINE, 'no uplink configured: offline, the intended mode');
  t.notOk(await field.isVisible(), 'the form is gone');
  t.ok(await main.isVisible(), 'the status is shown');
  t.notOk(await refused.isVisible(), 'and the complaint with the form');
  t.match(await page.locator('#edge').innerText(), /^test-edge · v\d+\.\d+\.\d+ · up \d+ s$/, 'the edge id, version and uptime');
  t.equal(await cell(page, 'traffic', 'MQTT devices').innerText(), '0', 'no device connected');
  t.equal(await cell(page, 'cache', 'backlog').innerText(), '0 messages', 'an empty cache backlog');
  t.match(await cell(page, 'proxy', 'auth mode').innerText(), /^open \(trial setting\)/, 'the device auth mode');
  const rulesBefore = await cell(page, 'proxy', 'rules').innerText();
  t.match(
    rulesBefore,
    /^(none loaded: every message follows routing\.default|version \d+, 0 rules, sha256 [0-9a-f]{12})$/,
    'no rule running yet',
  );
  t.ok(await page.getByRole('button', { name: 'Forget the admin token' }).isVisible(), 'a way to forget the token');
  t.same(await sessionValues(page), [token], 'the token is kept in sessionStorage');

  // Offline is not shown as a failure.
  const state = cell(page, 'uplink', 'state').locator('span');
  t.equal(await state.getAttribute('class'), 'neutral', 'the offline uplink is in the neutral style');
  t.not(await colourOf(state), errorColour, "not in the colour of the page's errors");
  t.notMatch(await page.locator('#uplink').innerText(), /not connected/);

  // A device's messages stay in the cache: the backlog and the devices move on the next refreshes.
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'pump-7', protocolVersion: 4 });
  t.teardown(() => device.endAsync(true));
  for (let i = 0; i < 3; i++) await device.publishAsync('devices/pump-7/telemetry', JSON.stringify({ temp: 30 + i }), { qos: 1 });
  t.equal(await waitForCell(page, 'cache', 'backlog', /^3 messages$/), '3 messages', 'the backlog shows the three messages');
  t.equal(await waitForCell(page, 'traffic', 'MQTT devices', /^1$/), '1', 'and the connected device');

  // A push with the CLI: the page shows the new version without a reload.
  const push = await runCli(['rules', 'push', 'hot.rules', '--config', proxy.configFile], join(dir, 'work'));
  t.equal(push.status, 0, push.stderr);
  const version = /version (\d+)/.exec(push.stdout)?.[1];
  t.ok(version, `the push reports its version: ${push.stdout}`);
  const rulesAfter = await waitForCell(page, 'proxy', 'rules', new RegExp(`^version ${version}, 1 rule, sha256 [0-9a-f]{12}$`));
  t.not(rulesAfter, rulesBefore, 'the running rules version changed on the page');

  // A reload keeps the token: the status again, never the form.
  const seen = w.responses.length;
  await page.reload();
  t.equal(await waitForCell(page, 'proxy', 'rules', /^version/), rulesAfter, 'reloaded: the status, with the pushed rules');
  t.notOk(await field.isVisible(), 'reloaded: no token asked for');
  const afterReload = statusAnswers(w, seen);
  t.ok(
    afterReload.length > 0 && afterReload.every((s) => s === 200),
    `reloaded: every status call answered 200 (${afterReload.join(',')})`,
  );

  // Another browser context is another session: it asks again. Its calls to /api/v1/status are held
  // until released, to see what the page shows while it waits for the proxy: nothing, rather than an
  // empty status.
  const other = await browser.newContext();
  t.teardown(() => other.close());
  const w2 = await openPage(other);
  const gate = await holdStatusCalls(w2.page);
  const field2 = w2.page.getByLabel('admin token');
  const main2 = w2.page.locator('#main');
  await w2.page.goto(url);
  t.notOk(await main2.isVisible(), 'while the proxy has not answered: no empty status');
  t.notOk(await field2.isVisible(), 'and no form yet');
  gate.release();
  await field2.waitFor({ state: 'visible' });
  t.notOk(await main2.isVisible(), 'a new browser context asks for the token again');
  gate.hold();
  await field2.fill('not-the-token-either');
  await w2.page.getByRole('button', { name: 'Show the status' }).click();
  t.notOk(await field2.isVisible(), 'a token sent: the form goes away');
  t.notOk(await main2.isVisible(), 'and no empty status shows while the proxy checks it');
  gate.release();
  await w2.page.getByText('The proxy did not accept that token').waitFor({ state: 'visible' });
  t.notOk(await main2.isVisible(), 'refused: the form again, no status');
  t.same(statusAnswers(w2), [401, 401]);
  t.same(unexpected(w2), [], 'no script or console error in the new context');

  // "Forget the admin token" drops it: the form again, with nothing kept.
  await page.getByRole('button', { name: 'Forget the admin token' }).click();
  await field.waitFor({ state: 'visible' });
  t.notOk(await main.isVisible(), 'forgotten: the form again');
  t.equal(await page.locator('#loginmsg').innerText(), '', 'without a complaint');
  t.same(await sessionValues(page), [], 'and nothing kept');

  t.same(unexpected(w), [], 'no script error and no console error but the 401s that ask for the token');
  t.ok(
    w.problems.some((p) => p.kind === 'console' && /401/.test(p.text)),
    "the 401s left out above were seen (the filter is not hiding the browser's reports)",
  );
});

t.test('on loopback with a cloud broker: no token asked for, connected, a device moves the counters', async (t) => {
  const dir = t.testdir();
  const cloud = await startMosquitto(join(dir, 'cloud'));
  t.teardown(() => cloud.stop());
  const checker = await connectClient(cloud.port);
  checker.on('error', () => {});
  t.teardown(() => checker.endAsync(true));
  const up = await collect(checker, 'edge/test-edge/up/#');
  const proxy = await startProxy(dir, { uplink: { url: cloud.url } });
  t.teardown(() => proxy.stop());
  const context = await browser.newContext();
  t.teardown(() => context.close());
  const w = await openPage(context);
  const { page } = w;

  await page.goto(`http://127.0.0.1:${proxy.ports.admin}/`);
  t.equal(await waitForCell(page, 'uplink', 'state', /^connected$/), 'connected', 'the uplink is connected');
  t.notOk(await page.getByLabel('admin token').isVisible(), 'on loopback no token is asked for');
  t.notOk(await page.getByRole('button', { name: 'Forget the admin token' }).isVisible(), 'and there is none to forget');
  t.ok(await page.locator('#main').isVisible(), 'the status is shown');
  const answers = statusAnswers(w);
  t.ok(answers.length > 0 && answers.every((s) => s === 200), `every status call answered 200 without a token (${answers.join(',')})`);
  t.equal(await cell(page, 'uplink', 'broker').innerText(), cloud.url, 'the broker');
  const connected = cell(page, 'uplink', 'state').locator('span');
  t.equal(await connected.getAttribute('class'), 'ok', 'connected in the ok style');
  const connectedColour = await colourOf(connected);
  t.equal(await cell(page, 'traffic', 'MQTT devices').innerText(), '0');
  t.equal(await cell(page, 'traffic', 'received /s').innerText(), '0.0');
  t.equal(await cell(page, 'traffic', 'sent up /s').innerText(), '0.0');

  // A device publishes: without a reload, the page shows it connected and the rates move.
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'pump-7', protocolVersion: 4 });
  t.teardown(() => device.endAsync(true));
  for (let i = 0; i < 20; i++) await device.publishAsync('devices/pump-7/telemetry', JSON.stringify({ temp: 20 + i }), { qos: 1 });
  await eventually('the 20 messages at the cloud', () => up.messages.length >= 20, 10_000);
  t.equal(up.messages.length, 20, 'the cloud got the 20 messages');
  t.equal(await waitForCell(page, 'traffic', 'MQTT devices', /^1$/), '1', 'the device shows as connected');
  t.match(await waitForCell(page, 'traffic', 'received /s', /^(?!0\.0$)\d+\.\d$/), /^\d+\.\d$/, 'messages received per second above 0');
  t.match(await waitForCell(page, 'traffic', 'sent up /s', /^(?!0\.0$)\d+\.\d$/), /^\d+\.\d$/, 'messages sent up per second above 0');
  t.equal(await cell(page, 'cache', 'backlog').innerText(), '0 messages', 'nothing left in the cache');

  // The cloud goes away: "not connected", in the error style, unlike connected.
  await cloud.stop();
  t.equal(await waitForCell(page, 'uplink', 'state', /^not connected$/), 'not connected');
  const down = cell(page, 'uplink', 'state').locator('span');
  t.equal(await down.getAttribute('class'), 'bad', 'in the error style');
  t.not(await colourOf(down), connectedColour, 'drawn in another colour than connected');

  t.same(w.problems, [], 'no script error and no console error at all on loopback');
});

t.test('models: each model with its version, its results by label and its latency, and why one did not load', async (t) => {
  const dir = t.testdir({
    rules: { 'm.rules': 'rule m\nwhen msg.topic matches "devices/+/values"\nthen infer("mean")\nend\n' },
    models: {},
  });
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const context = await browser.newContext();
  t.teardown(() => context.close());
  const w = await openPage(context);
  const { page } = w;
  await page.goto(`http://127.0.0.1:${proxy.ports.admin}/`);
  t.match(await waitForCell(page, 'models', '-', /^none/), /infer\(\) fails until one is there/, 'no model yet, and what that means');

  writeModel(join(dir, 'models'), 'mean', meanModel({ length: 4 }), meanModelYaml('mean', { length: 4, version: '7' }));
  t.equal(await waitForCell(page, 'models', 'mean', /^v7/), 'v7: no results yet', 'loaded without a restart');
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'pump-8' });
  t.teardown(() => device.endAsync(true));
  await device.publishAsync('devices/pump-8/values', JSON.stringify({ values: [1, 1, 1, 1] }), { qos: 1 });
  await device.publishAsync('devices/pump-8/values', JSON.stringify({ values: [1, 1, 1, 1] }), { qos: 1 });
  await device.publishAsync('devices/pump-8/values', JSON.stringify({ values: [-1, -1, -1, -1] }), { qos: 1 });
  t.match(
    await waitForCell(page, 'models', 'mean', /fault 2, healthy 1/),
    /^v7: fault 2, healthy 1, p50 \d+\.\d ms, p99 \d+\.\d ms$/,
    'results by label and latency percentiles',
  );
  t.equal(await cell(page, 'models', 'mean').locator('span.ok').innerText(), 'v7', 'the version in the ok style');

  writeModel(join(dir, 'models'), 'broken', new TextEncoder().encode('not a model'), meanModelYaml('broken', { length: 4 }));
  t.match(
    await waitForCell(page, 'models', 'broken', /not loaded/),
    /^not loaded .*broken\.onnx: ONNX Runtime cannot load it/,
    'why it did not load',
  );
  t.equal(await cell(page, 'models', 'broken').locator('span.bad').first().innerText(), 'not loaded', 'in the error style');
  t.same(w.problems, [], 'no script error and no console error');
});
