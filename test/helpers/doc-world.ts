// The world a session of documentation examples runs in (test/docs.test.ts): a scratch directory
// with a copy of the project's rules/, a real Mosquitto as the cloud, and the proxy started there
// on ports of its own, as `npm start` would in a checkout, so that `edge-proxy` run in that directory
// finds it through ./data/ports.json and ./data/admin-token.
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { CLI, logLines } from './proxy.js';
import { startMosquitto, type Mosquitto } from './mosquitto.js';
import { connectClient, type Received } from './clients.js';
import { makeCa, makeCert } from './certs.js';
import { eventually } from './ports.js';
import { BashSession } from './doc-session.js';
import type { Setup, World } from './doc-blocks.js';

export const ROOT = new URL('../..', import.meta.url).pathname;
export const SIM = join(ROOT, 'dist/firmware-sim/cli.js');
/** The edge id of the docs' examples. */
export const EDGE_ID = 'pi-hall-2';

// A test that times out skips its teardown: no proxy may outlive the test process.
const proxies = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of proxies) p.kill('SIGKILL');
});

/** Messages one MQTT client saw, in order. */
export interface Seen {
  messages: Received[];
  /** those on a topic, from the index `from` on */
  on(topic: string, from?: number): Received[];
}

function watch(client: MqttClient): Seen {
  const messages: Received[] = [];
  client.on('message', (topic, payload, packet) => messages.push({ topic, payload, retain: packet.retain }));
  return { messages, on: (topic, from = 0) => messages.slice(from).filter((m) => m.topic === topic) };
}

export interface DocWorld extends World {
  setup: Setup;
  /** the scratch root: `dir` (where the commands run) and `harness` (scripts and their output) */
  root: string;
  harness: string;
  shell: BashSession;
  cloudUrl: string;
  /** everything the cloud broker carried on edge/# since the proxy started */
  cloudSeen: Seen;
  /** everything local subscribers of the proxy got on # (null in token mode: no registered device to subscribe as) */
  localSeen: Seen | null;
  /** the proxy's log lines (JSON lines, parsed) */
  logs: Array<Record<string, unknown>>;
  proxyOutput(): string;
  /** GET on the admin API with the proxy's own token */
  api(path: string): Promise<Record<string, unknown>>;
  close(): Promise<void>;
}

/** The environment of the commands: the test's own, without EDGE_PROXY_* overrides. */
function userEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('EDGE_PROXY_')));
}

/** The configuration each setup writes to ./edge-proxy.yaml (read by the proxy and the CLI alike). */
function configFor(setup: Setup): string | null {
  switch (setup) {
    case 'open':
    case 'no-rules':
      return null;
    case 'token':
      return 'auth: { mode: token }\ndevicesFile: ./devices.yaml\n';
    case 'tls':
      return 'mqtt:\n  tls: { port: 0, cert: server.pem, key: server-key.pem, ca: devices-ca.pem }\n';
  }
}

export async function startWorld(setup: Setup): Promise<DocWorld> {
  const root = mkdtempSync(join(tmpdir(), 'doc-test-'));
  const dir = join(root, 'site');
  const harness = join(root, 'harness');
  mkdirSync(harness);
  mkdirSync(join(dir, 'data'), { recursive: true });
  cpSync(join(ROOT, 'rules'), join(dir, 'rules'), { recursive: true });
  // the file the examples push
  copyFileSync(join(ROOT, 'rules/10-alarms.rules'), join(dir, 'alarms.rules'));
  const config = configFor(setup);
  if (config) writeFileSync(join(dir, 'edge-proxy.yaml'), config);
  if (setup === 'tls') {
    // the site's device CA and the proxy's server certificate (for localhost), under the docs' names
    const devicesCa = makeCa(join(root, 'pki'), 'devices-ca');
    const serverCa = makeCa(join(root, 'pki'), 'server-ca');
    const server = makeCert(serverCa, { cn: 'localhost', kind: 'server', name: 'server' });
    copyFileSync(devicesCa.cert, join(dir, 'devices-ca.pem'));
    copyFileSync(devicesCa.key, join(dir, 'devices-ca.key'));
    copyFileSync(serverCa.cert, join(dir, 'server-ca.pem'));
    copyFileSync(server.cert, join(dir, 'server.pem'));
    copyFileSync(server.key, join(dir, 'server-key.pem'));
  }

  const cleanups: Array<() => unknown> = [() => rmSync(root, { recursive: true, force: true })];
  const close = async (): Promise<void> => {
    for (const f of cleanups.splice(0).reverse()) await f();
  };
  try {
    const cloud: Mosquitto = await startMosquitto(join(root, 'cloud'));
    cleanups.push(() => cloud.stop());
    const watcher = await connectClient(cloud.port, { clientId: 'doc-test-cloud' });
    cleanups.push(() => watcher.endAsync(true));
    const cloudSeen = watch(watcher);
    await watcher.subscribeAsync('edge/#', { qos: 1 });

    // The proxy, as `npm start` in a checkout with the overrides the docs name.
    const env: NodeJS.ProcessEnv = {
      ...userEnv(),
      EDGE_PROXY_MQTT_PORT: '0',
      EDGE_PROXY_ADMIN_PORT: '0',
      EDGE_PROXY_HTTP_PORT: '0',
      EDGE_PROXY_COAP_PORT: '0',
      EDGE_PROXY_UPLINK_URL: cloud.url,
      EDGE_PROXY_EDGE_ID: EDGE_ID,
    };
    if (setup === 'no-rules') {
      // a proxy given no rules yet: its rules directory is its own (a board's /var/lib/edge-proxy/rules)
      mkdirSync(join(dir, 'data/rules'));
      env.EDGE_PROXY_RULES_DIR = join(dir, 'data/rules');
    }
    const child = spawn(process.execPath, [CLI, 'run'], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
    proxies.add(child);
    const exited = new Promise<void>((resolve) =>
      child.once('exit', () => {
        proxies.delete(child);
        resolve();
      }),
    );
    cleanups.push(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    });
    let output = '';
    const logs: Array<Record<string, unknown>> = [];
    const parse = logLines(logs);
    child.stdout.on('data', (d: Buffer) => {
      output += d.toString();
      parse(d);
    });
    child.stderr.on('data', (d: Buffer) => {
      output += d.toString();
    });
    const portsFile = join(dir, 'data/ports.json');
    await eventually(
      `the proxy's ./data/ports.json (output so far: ${output.slice(-2000)})`,
      () => existsSync(portsFile) || child.exitCode !== null,
      20_000,
    );
    if (!existsSync(portsFile)) throw new Error(`the proxy exited before it was ready:\n${output}`);
    const ports = JSON.parse(readFileSync(portsFile, 'utf8')) as Record<string, number>;
    const token = readFileSync(join(dir, 'data/admin-token'), 'utf8').trim();
    await eventually('the proxy online at the cloud', () =>
      cloudSeen.on(`edge/${EDGE_ID}/status`).some((m) => m.payload.toString() === 'online'),
    );

    let localSeen: Seen | null = null;
    if (setup !== 'token') {
      const local = await connectClient(ports.mqtt!, { clientId: 'doc-test-local' });
      cleanups.push(() => local.endAsync(true));
      localSeen = watch(local);
      await local.subscribeAsync('#', { qos: 1 });
    }

    const shell = new BashSession(dir, userEnv(), harness);
    cleanups.push(() => shell.close());
    return {
      setup,
      root,
      dir,
      harness,
      cli: CLI,
      sim: SIM,
      mqtt: ports.mqtt!,
      admin: ports.admin!,
      tls: ports['mqtt-tls'] ?? null,
      coap: ports.coap!,
      http: ports.http!,
      cloud: cloud.port,
      cloudUrl: cloud.url,
      shell,
      cloudSeen,
      localSeen,
      logs,
      proxyOutput: () => output,
      async api(path) {
        const res = await fetch(`http://127.0.0.1:${ports.admin}${path}`, { headers: { authorization: `Bearer ${token}` } });
        return (await res.json()) as Record<string, unknown>;
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
