// A full disk (docs/cache.md, guarantee 6), on a small tmpfs the test mounts: the proxy stays up, delivers locally, refuses uplink messages the MQTT way, reports
// edge_cache_writable 0, and recovers by itself once writes succeed again.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdirSync, openSync, writeSync, closeSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startProxy } from './helpers/proxy.js';
import { connectClient, collect } from './helpers/clients.js';
import { connectPacket, rawClient } from './helpers/raw.js';
import { eventually } from './helpers/ports.js';

function tryMount(dir: string): string | null {
  mkdirSync(dir, { recursive: true });
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', dir], { stdio: 'pipe' });
    return null;
  } catch (err) {
    return (err as { stderr?: Buffer }).stderr?.toString().trim() || (err as Error).message;
  }
}

/** Fill the file system until a write fails, so that the next SQLite write finds no space. */
function fill(file: string): void {
  const fd = openSync(file, 'w');
  const block = Buffer.alloc(64 * 1024, 1);
  try {
    for (;;) writeSync(fd, block);
  } catch {
    // ENOSPC: full
  }
  try {
    for (;;) writeSync(fd, block.subarray(0, 512));
  } catch {
    // and the last crumbs
  }
  closeSync(fd);
}

const mountDir = join(process.cwd(), '.tap', 'diskfull-mount');
const why = process.getuid?.() !== 0 ? 'mounting a tmpfs needs root' : tryMount(mountDir);

t.test(
  'disk full: local delivery goes on, uplink messages are refused, the proxy recovers by itself',
  { skip: why ? `cannot mount a small file system here: ${why}` : false },
  async (t) => {
    t.teardown(() => {
      try {
        execFileSync('umount', ['-l', mountDir]);
      } catch {
        /* already gone */
      }
    });
    const dir = t.testdir();
    const proxy = await startProxy(dir, { dataDir: join(mountDir, 'data'), log: { level: 'info' } });
    t.teardown(() => proxy.stop());
    const port = proxy.ports.mqtt;
    const listener = await connectClient(port, { clientId: 'listener' });
    t.teardown(() => listener.endAsync());
    const local = await collect(listener, 'devices/+/telemetry');

    const before = await connectClient(port, { clientId: 'dev-1' });
    await before.publishAsync('devices/dev-1/telemetry', '{"n":1}', { qos: 1 });
    t.equal(await proxy.metric('edge_cache_messages'), 1, 'a message is cached while there is space');

    fill(join(mountDir, 'filler'));
    // SQLite may still write into space its files already hold (a WAL reused after a checkpoint):
    // publish until a write needs space the file system no longer has.
    const refused = await rawClient(port);
    refused.send(connectPacket('dev-2'));
    await refused.next('connack');
    let acked = 0;
    for (let id = 1; id <= 2000 && !refused.socket.destroyed; id++) {
      refused.send({
        cmd: 'publish',
        topic: 'devices/dev-2/telemetry',
        payload: Buffer.from(JSON.stringify({ n: id, pad: 'p'.repeat(2000) })),
        qos: 1,
        messageId: id,
      });
      try {
        await refused.next('puback');
        acked++;
      } catch {
        break; // closed without an acknowledgement
      }
    }
    await refused.closed;
    t.ok(
      refused.socket.destroyed,
      `with the disk full, the publish after ${acked} acknowledged ones is not acknowledged and the connection closes`,
    );
    t.equal(await proxy.metric('edge_cache_writable'), 0, 'edge_cache_writable drops to 0');
    t.ok((await proxy.metric('edge_cache_write_errors_total')) >= 1, 'the write error is counted');
    t.equal((await fetch(`http://127.0.0.1:${proxy.ports.admin}/readyz`)).status, 503, 'readyz says why it is not ready');
    t.ok(
      proxy.logs.some((l) => String(l.msg).includes('cache write failed') && String(l.msg).includes('df -h')),
      'the log says what happened and what to check',
    );

    await before.publishAsync('devices/dev-1/telemetry', '{"n":3}', { qos: 0 });
    await eventually('a QoS 0 message still reaches local subscribers', () =>
      local.messages.some((m) => m.payload.toString() === '{"n":3}'),
    );
    t.ok((await proxy.metric('edge_messages_dropped_total', 'reason="qos0_refused"')) >= 1, 'and its uplink copy is counted as dropped');
    t.equal((await fetch(`http://127.0.0.1:${proxy.ports.admin}/healthz`)).status, 200, 'the proxy is up');

    rmSync(join(mountDir, 'filler'));
    await eventually('writable again once space is free', async () => (await proxy.metric('edge_cache_writable')) === 1, 10_000);
    await before.publishAsync('devices/dev-1/telemetry', '{"n":4}', { qos: 1 });
    t.equal(await proxy.metric('edge_cache_messages'), 2 + acked, 'QoS 1 messages are cached again, and it recovered by itself');
    t.ok(
      proxy.logs.some((l) => String(l.msg).includes('cache writes succeed again')),
      'the recovery is logged',
    );

    await before.endAsync();
  },
);
