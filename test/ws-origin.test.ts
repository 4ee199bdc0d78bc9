// Pages of other sites cannot use the operator's browser to reach the WebSocket endpoint
// (docs/websocket.md, Both paths): a browser sends the page's Origin with every upgrade, and lets any
// page open a WebSocket. In open mode only pages from this machine or listed in http.allowedOrigins
// connect; in token mode a page still needs a device's token, so any origin does unless a list is set.
// The `ws` client sends the Origin header a browser would.
import t from 'tap';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { writeRegistry } from './helpers/registry.js';

/** The HTTP status an upgrade got (101 when it opened), with `origin` as a browser would send it. */
function upgrade(proxy: ProxyProcess, path: string, origin: string | null, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${proxy.ports.http}${path}`, path === '/mqtt' ? ['mqtt'] : [], {
      headers: { ...(origin === null ? {} : { origin }), ...headers },
    });
    ws.once('open', () => {
      ws.terminate();
      resolve(101);
    });
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      ws.terminate();
      resolve(res.statusCode ?? 0);
    });
    ws.once('error', (err) => (err.message.includes('Unexpected server response') ? undefined : reject(err)));
  });
}

t.test('open mode: pages of this machine and listed origins connect, pages of other sites get 403', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir, { http: { port: 0, allowedOrigins: ['https://dash.example.com'] } });
  t.teardown(() => proxy.stop());
  for (const path of ['/ws', '/mqtt']) {
    t.equal(await upgrade(proxy, path, 'https://evil.example'), 403, `${path}: a foreign page is refused`);
    t.equal(await upgrade(proxy, path, 'null'), 403, `${path}: a file or sandboxed page (Origin: null) is refused`);
    t.equal(await upgrade(proxy, path, 'http://127.0.0.1:3000'), 101, `${path}: a page served from this machine connects`);
    t.equal(await upgrade(proxy, path, 'http://localhost:5173'), 101, `${path}: localhost too`);
    t.equal(await upgrade(proxy, path, 'https://dash.example.com'), 101, `${path}: a listed origin connects`);
    t.equal(await upgrade(proxy, path, null), 101, `${path}: a device (no Origin header) connects`);
  }
  t.equal(await proxy.metric('edge_ws_upgrades_refused_total', 'reason="origin"'), 4, 'each refusal counted');
  t.ok(
    proxy.logs.some((l) => l.level === 'warn' && String(l.msg).includes('http.allowedOrigins') && l.origin === 'https://evil.example'),
    'the log says which origin and which key lets it in',
  );
});

t.test('token mode: any origin with a token, unless http.allowedOrigins lists some', async (t) => {
  const dir = t.testdir();
  const tokens = writeRegistry(join(dir, 'devices.yaml'), [{ id: 'dash-1' }]);
  mkdirSync(join(dir, 'a'));
  mkdirSync(join(dir, 'b'));
  const bearer = { authorization: `Bearer ${tokens['dash-1']!}` };
  const open = await startProxy(join(dir, 'a'), { auth: { mode: 'token' }, devicesFile: join(dir, 'devices.yaml') });
  t.teardown(() => open.stop());
  t.equal(await upgrade(open, '/ws', 'https://dash.example.com', bearer), 101, 'a page of any site with the token connects');
  t.equal(await upgrade(open, '/ws', 'https://dash.example.com'), 401, 'without it, the token decides: 401');

  const listed = await startProxy(join(dir, 'b'), {
    auth: { mode: 'token' },
    devicesFile: join(dir, 'devices.yaml'),
    http: { port: 0, allowedOrigins: ['https://dash.example.com'] },
  });
  t.teardown(() => listed.stop());
  t.equal(await upgrade(listed, '/ws', 'https://dash.example.com', bearer), 101, 'a listed origin connects');
  t.equal(await upgrade(listed, '/ws', 'https://other.example', bearer), 403, 'an unlisted one is refused, token or not');
  t.equal(await upgrade(listed, '/ws', null, bearer), 101, 'a device without Origin connects');
});
