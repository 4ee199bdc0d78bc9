import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { userInfo } from 'node:os';
import { freePort, waitForPort } from './ports.js';
import { connectClient, collect, type Collected } from './clients.js';

/**
 * A real Mosquitto playing the cloud broker. `listener 0` would be a unix socket to Mosquitto 2,
 * so a free port is picked first; `max_queued_messages 0` keeps it from dropping QoS 1 messages
 * for slow subscribers.
 */
export interface Mosquitto {
  port: number;
  url: string;
  stop(): Promise<void>;
  start(): Promise<void>;
}

// A test that times out skips its teardown: no broker may outlive the test process.
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

export async function startMosquitto(dir: string, opts: { persistence?: boolean } = {}): Promise<Mosquitto> {
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const conf = join(dir, 'mosquitto.conf');
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'max_queued_messages 0',
      'max_inflight_messages 0',
      `persistence ${opts.persistence ? 'true' : 'false'}`,
      `persistence_location ${dir}/`,
      // As root, Mosquitto would switch to the "mosquitto" user, who cannot write its persistence here.
      ...(process.getuid?.() === 0 ? [`user ${userInfo().username}`] : []),
      'log_dest stderr',
      'log_type error',
      'log_type warning',
      '',
    ].join('\n'),
  );
  let child: ChildProcess | null = null;
  let stderr = '';
  const broker: Mosquitto = {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    async start() {
      const bin =
        process.env.MOSQUITTO_BIN ?? (process.env.PATH?.split(':').some((d) => d.endsWith('sbin')) ? 'mosquitto' : '/usr/sbin/mosquitto');
      child = spawn(bin, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
      running.add(child);
      const mine = child;
      child.once('exit', () => running.delete(mine));
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      child.on('error', (err) => {
        stderr += String(err);
      });
      try {
        await waitForPort(port);
      } catch (err) {
        throw new Error(`mosquitto did not start: ${stderr}`, { cause: err });
      }
    },
    async stop() {
      const c = child;
      child = null;
      if (!c || c.exitCode !== null) return;
      await new Promise<void>((resolve) => {
        c.once('exit', () => resolve());
        c.kill('SIGTERM');
      });
    },
  };
  await broker.start();
  return broker;
}

/**
 * A cloud Mosquitto with persistence, and a checking subscriber on a persistent QoS 1 session:
 * the cloud keeps for the checker whatever arrives while either of them restarts, so what the
 * checker sees is what the proxy delivered.
 */
export async function cloudWithChecker(
  t: { teardown(fn: () => unknown): void },
  dir: string,
): Promise<{ cloud: Mosquitto; up: Collected }> {
  const cloud = await startMosquitto(`${dir}/cloud`, { persistence: true });
  t.teardown(() => cloud.stop());
  const checker = await connectClient(cloud.port, { clientId: 'checker', clean: false, reconnectPeriod: 200 });
  checker.on('error', () => {});
  t.teardown(() => checker.endAsync(true));
  return { cloud, up: await collect(checker, 'edge/test-edge/up/#') };
}

/** A plain cloud Mosquitto and a subscriber on everything proxies send up (`edge/+/up/#`). */
export async function cloudFor(t: { teardown(fn: () => unknown): void }, dir: string): Promise<{ url: string; up: Collected }> {
  const cloud = await startMosquitto(join(dir, 'cloud'));
  t.teardown(() => cloud.stop());
  const checker = await connectClient(cloud.port);
  t.teardown(() => checker.endAsync());
  return { url: cloud.url, up: await collect(checker, 'edge/+/up/#') };
}

/**
 * A rules request from the cloud side, as an operator sends it: mosquitto_pub with `args` on
 * edge/test-edge/rules/<kind>, and mosquitto_sub's first answer on rules/result, or null within 10 s.
 */
export async function cloudRulesRequest(port: number, kind: 'set' | 'change', args: string[]): Promise<Record<string, unknown> | null> {
  const sub = spawn('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(port), '-t', 'edge/test-edge/rules/result', '-q', '1', '-C', '1']);
  let out = '';
  sub.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const done = new Promise((resolve) => sub.on('exit', resolve));
  await new Promise((r) => setTimeout(r, 300)); // subscribed before the request goes out
  const pub = spawn('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(port), '-q', '1', '-t', `edge/test-edge/rules/${kind}`, ...args]);
  await new Promise((r) => pub.on('exit', r));
  await Promise.race([done, new Promise((r) => setTimeout(r, 10_000))]);
  sub.kill();
  return out ? (JSON.parse(out) as Record<string, unknown>) : null;
}
