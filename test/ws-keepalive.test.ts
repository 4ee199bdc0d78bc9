// Dead peers on the WebSocket endpoint (docs/websocket.md, Both paths): a ping every
// http.pingIntervalSeconds, and a connection that misses two pongs is closed and its subscriptions
// released. A peer that stops answering pings is played by the `ws` client with autoPong off: its
// socket stays open, as a peer behind a dead NAT mapping would look to the proxy.
import t from 'tap';
import WebSocket from 'ws';
import { startProxy } from './helpers/proxy.js';
import { eventually, sleep } from './helpers/ports.js';

t.test('a peer that stops answering pings is closed after two missed pongs; one that answers stays', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir, { http: { port: 0, pingIntervalSeconds: 1 } });
  t.teardown(() => proxy.stop());
  const url = (path: string, id: string) => `ws://127.0.0.1:${proxy.ports.http}${path}?d=${id}`;
  const open = (ws: WebSocket) => new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  const closed = (ws: WebSocket) => new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));

  const dead = new WebSocket(url('/ws', 'dead-1'), { autoPong: false });
  const deadMqtt = new WebSocket(url('/mqtt', 'dead-2'), ['mqtt'], { autoPong: false });
  const alive = new WebSocket(url('/ws', 'alive-1'));
  t.teardown(() => [dead, deadMqtt, alive].forEach((ws) => ws.terminate()));
  await Promise.all([open(dead), open(deadMqtt), open(alive)]);
  let pings = 0;
  dead.on('ping', () => pings++);
  const deadClosed = closed(dead);
  const deadMqttClosed = closed(deadMqtt);

  const started = Date.now();
  await eventually(
    'both silent peers were closed',
    async () => {
      await Promise.all([deadClosed, deadMqttClosed]);
      return true;
    },
    10_000,
  );
  const took = Date.now() - started;
  t.ok(pings >= 2, `it was pinged (${pings} pings) before it was given up`);
  t.ok(took >= 1_500 && took < 9_000, `closed after two missed pongs at a 1 s interval (${took} ms)`);
  t.equal(alive.readyState, WebSocket.OPEN, 'a peer that answers pings stays connected');
  await sleep(1_500);
  t.equal(alive.readyState, WebSocket.OPEN, 'and keeps staying');

  // The adapters saw the close: the connection and its subscriptions are gone from them.
  await eventually('the gauges count only the live peer', async () => {
    const ws = await proxy.metric('edge_connections', 'protocol="ws"');
    const mqttWs = await proxy.metric('edge_connections', 'protocol="mqtt",transport="ws"');
    return ws === 1 && mqttWs === 0;
  });
  t.ok(
    proxy.logs.some((l) => String(l.msg).includes('stopped answering pings')),
    'the log says why the connections were closed',
  );
});
