import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { availableParallelism, userInfo } from 'node:os';
import { join } from 'node:path';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      srv.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** The ports a proxy writes to its --ports-file (`http`: its WebSocket endpoint; the baseline has none). */
export interface Ports {
  mqtt: number;
  admin: number;
  http?: number;
}

export interface Service {
  child: ChildProcess;
  stop(): Promise<void>;
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

/**
 * With `--pin`: the measured process (the proxy, or the bare broker it is compared with) alone on
 * CPU 0, and everything else (this process and its workers, the load, Mosquitto) on the others, so
 * that a figure does not depend on how the kernel happened to share the cores between them.
 */
let others: string | null = null;

/** Pin from now on; false when there are not at least 2 CPUs or `taskset` is missing. */
export function pinCores(): boolean {
  const cores = availableParallelism();
  if (cores < 2) return false;
  // Taken before this process is pinned: from then on availableParallelism() counts its own CPUs only.
  const rest = `1-${cores - 1}`;
  const r = spawnSync('taskset', ['-a', '-p', '-c', rest, String(process.pid)], { stdio: 'ignore' });
  if (r.status !== 0) return false;
  others = rest;
  return true;
}

/**
 * With `--node-flags`: V8 and Node options given to the measured process only (the proxy, or the
 * bare broker), not to this process or the load, so that a flag's effect is the proxy's alone.
 */
let measuredFlags: string[] = [];
export function setMeasuredNodeFlags(flags: string[]): void {
  measuredFlags = flags;
}

/** `command args` as spawn takes them, on CPU 0 when pinned and `measured`, else on the others. */
function placed(measured: boolean, command: string, args: string[]): [string, string[]] {
  if (others === null) return [command, args];
  return ['taskset', ['-c', measured ? '0' : others, command, ...args]];
}

/** A loopback Mosquitto as the cloud broker, set not to drop QoS 1 messages for slow subscribers. */
export async function startMosquitto(dir: string): Promise<Service & { port: number; url: string }> {
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
      ...(process.getuid?.() === 0 ? [`user ${userInfo().username}`] : []),
      'log_type error',
      '',
    ].join('\n'),
  );
  const bin = existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto';
  const child = spawn(...placed(false, bin, ['-c', conf]), { stdio: 'ignore' });
  await waitFor('mosquitto', () => portOpen(port));
  return { child, port, url: `mqtt://127.0.0.1:${port}`, stop: () => stopChild(child) };
}

/** The built proxy as its own process, on ports it picks itself. */
export async function startProxy(dir: string, configYaml: string, opts: { logFile?: string } = {}): Promise<Service & { ports: Ports }> {
  mkdirSync(dir, { recursive: true });
  const cfg = join(dir, 'edge-proxy.yaml');
  const portsFile = join(dir, 'ports.json');
  writeFileSync(cfg, configYaml);
  const cli = new URL('../src/cli.js', import.meta.url).pathname;
  return startProcess([cli, 'run', '--config', cfg, '--ports-file', portsFile], portsFile, opts.logFile);
}

/** The bare aedes + MQTT.js forwarder (bench/baseline.ts) as its own process. */
export async function startBaseline(dir: string, cloudUrl: string): Promise<Service & { ports: Ports }> {
  mkdirSync(dir, { recursive: true });
  const portsFile = join(dir, 'baseline-ports.json');
  return startProcess([new URL('./baseline.js', import.meta.url).pathname, cloudUrl, portsFile], portsFile);
}

async function startProcess(args: string[], portsFile: string, logFile?: string): Promise<Service & { ports: Ports }> {
  // taskset runs the command in its own process (exec), so the child's pid is the proxy's for /proc.
  const child = spawn(...placed(true, process.execPath, [...measuredFlags, ...args]), {
    stdio: ['ignore', logFile ? openSync(logFile, 'a') : 'ignore', 'inherit'],
  });
  await waitFor('the proxy to be ready', () => existsSync(portsFile) || child.exitCode !== null);
  if (!existsSync(portsFile)) throw new Error('the proxy exited at start');
  return { child, ports: JSON.parse(readFileSync(portsFile, 'utf8')) as Ports, stop: () => stopChild(child) };
}
