// The status page beyond loopback: the page itself without a token, its data with one; the page asks for
// the token, keeps it for the session and sends it. No browser here: the page's script runs in node:vm
// against a minimal stand-in for the DOM, with the real fetch pointed at the real proxy.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { runInNewContext } from 'node:vm';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { eventually } from './helpers/ports.js';

function adminToken(proxy: ProxyProcess): string {
  return readFileSync(join(proxy.dir, 'data', 'admin-token'), 'utf8').trim();
}

interface FakeElement {
  hidden: boolean;
  textContent: string;
  innerHTML: string;
  value: string;
  focus(): void;
  addEventListener(type: string, fn: (e: { preventDefault(): void }) => void): void;
  fire(type: string): void;
}

/** Runs the page's script with just what it uses: elements by id, sessionStorage, fetch, timers. */
function runPage(html: string, base: string) {
  const elements = new Map<string, FakeElement>();
  const element = (id: string): FakeElement => {
    let e = elements.get(id);
    if (!e) {
      const listeners = new Map<string, (e: { preventDefault(): void }) => void>();
      // The form starts hidden in the HTML; everything else shown.
      e = {
        hidden: new RegExp(`id="${id}"[^>]* hidden`).test(html),
        textContent: '',
        innerHTML: '',
        value: '',
        focus() {},
        addEventListener: (type, fn) => listeners.set(type, fn),
        fire: (type) => listeners.get(type)?.({ preventDefault() {} }),
      };
      elements.set(id, e);
    }
    return e;
  };
  const storage = new Map<string, string>();
  const requests: Array<{ authorization: string | null; status: number }> = [];
  const sessionStorage = {
    getItem: (k: string) => storage.get(k) ?? null,
    setItem: (k: string, v: string) => void storage.set(k, v),
    removeItem: (k: string) => void storage.delete(k),
  };
  const pageFetch = async (path: string, init: { headers: Record<string, string> }) => {
    const res = await fetch(new URL(path, base), init);
    requests.push({ authorization: init.headers.Authorization ?? null, status: res.status });
    return res;
  };
  const script = html.split('<script>')[1]!.split('</script>')[0]!;
  const intervals: Array<() => void> = [];
  runInNewContext(script, {
    document: { getElementById: element },
    sessionStorage,
    fetch: pageFetch,
    setInterval: (fn: () => void) => intervals.push(fn),
    location: { reload() {} },
  });
  return { element, storage, requests, tick: () => intervals.forEach((fn) => fn()) };
}

t.test('beyond loopback: the page without a token, its data with one; offline mode and rules shown as such', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir, { admin: { host: '0.0.0.0', port: 0 } });
  t.teardown(() => proxy.stop());
  const base = `http://127.0.0.1:${proxy.ports.admin}`;
  const token = adminToken(proxy);

  const page = await fetch(`${base}/`);
  t.equal(page.status, 200, '/ answers 200 without a token');
  t.match(page.headers.get('content-type'), /^text\/html/);
  const html = await page.text();
  t.match(html, /<!doctype html>/i);
  t.equal((await fetch(`${base}/`, { method: 'HEAD' })).status, 200, 'HEAD / too');
  t.equal((await fetch(`${base}/`, { method: 'POST' })).status, 401, 'a write to / still needs the token');
  t.equal((await fetch(`${base}/metrics`)).status, 401, 'other reads still need the token');

  t.equal((await fetch(`${base}/api/v1/status`)).status, 401, '/api/v1/status without a token: 401');
  t.equal((await fetch(`${base}/api/v1/status`, { headers: { authorization: 'Bearer wrong' } })).status, 401, 'a wrong token: 401');
  const status = await fetch(`${base}/api/v1/status`, { headers: { authorization: `Bearer ${token}` } });
  t.equal(status.status, 200, 'with the token: 200');
  const body = (await status.json()) as { uplink: { url: string | null }; auth: { mode: string } };
  t.equal(body.uplink.url, null, 'no uplink configured');

  t.match(html, 'sessionStorage', 'the page keeps the token for the session');
  t.match(html, "'Authorization':'Bearer '+t", 'and sends it as a bearer token');
  t.match(html, 'res.status===401', 'it asks for the token when the API answers 401');
  t.match(html, '<form id="login" hidden>', 'a form for the token, hidden until needed');
  t.match(html, 'offline (no uplink configured): what would go up stays in the cache');
  t.match(html, "'auth mode'");
  t.match(html, "'rules'");
  t.notMatch(html, /https?:\/\/(?!127)/, 'nothing fetched from elsewhere');
});

t.test("the page's script: 401 shows the form, a wrong token shows it again, the right one is kept and sent", async (t) => {
  const dir = t.testdir({ rules: { 'a.rules': 'rule hot\nwhen payload.temp > 35\nthen uplink(priority = "high")\nend\n' } });
  const proxy = await startProxy(dir, { admin: { host: '0.0.0.0', port: 0 } });
  t.teardown(() => proxy.stop());
  const base = `http://127.0.0.1:${proxy.ports.admin}`;
  const html = await (await fetch(`${base}/`)).text();
  const page = runPage(html, base);
  const login = page.element('login');
  const main = page.element('main');

  await eventually('the form after a 401', () => !login.hidden);
  t.ok(main.hidden, 'the status is hidden while the token is asked for');
  t.equal(page.requests[0]?.authorization, null, 'the first call sends no token');
  t.equal(page.element('loginmsg').textContent, '', 'no complaint before a token was tried');

  page.element('token').value = 'not-the-token';
  login.fire('submit');
  t.ok(login.hidden, 'the form goes away once a token is given');
  await eventually('the form again after a wrong token', () => !login.hidden);
  t.equal(page.requests.at(-1)?.authorization, 'Bearer not-the-token');
  t.match(page.element('loginmsg').textContent, /did not accept that token/);
  t.equal(page.storage.size, 0, 'a refused token is not kept');

  const token = adminToken(proxy);
  page.element('token').value = ` ${token} `;
  login.fire('submit');
  await eventually('the status rendered', () => page.element('uplink').innerHTML !== '');
  t.ok(login.hidden);
  t.notOk(main.hidden);
  t.same([...page.storage.values()], [token], 'the token is kept in sessionStorage');
  t.match(page.element('uplink').innerHTML, 'offline (no uplink configured): what would go up stays in the cache');
  t.notMatch(page.element('uplink').innerHTML, 'not connected', 'offline mode is not shown as a failure');
  t.match(page.element('proxy').innerHTML, /open \(trial setting\)/, 'the auth mode');
  t.match(
    page.element('proxy').innerHTML,
    /version 1, 1 rule, sha256 <code>[0-9a-f]{12}<\/code>/,
    'the rules version, count and short sha256',
  );
  t.match(page.element('edge').textContent, 'test-edge');
  t.notOk(page.element('forget').hidden, 'a way to forget the token');

  const before = page.requests.length;
  page.tick();
  await eventually('the next poll', () => page.requests.length > before);
  t.same(page.requests.at(-1), { authorization: `Bearer ${token}`, status: 200 }, 'later polls send the kept token');
});

t.test('on loopback nothing changes: the page and its data without a token', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const base = `http://127.0.0.1:${proxy.ports.admin}`;
  const html = await (await fetch(`${base}/`)).text();
  t.equal((await fetch(`${base}/api/v1/status`)).status, 200);
  const page = runPage(html, base);
  await eventually('the status rendered', () => page.element('cache').innerHTML !== '');
  t.ok(page.element('login').hidden, 'no token asked for');
  t.equal(page.requests[0]?.authorization, null);
});
