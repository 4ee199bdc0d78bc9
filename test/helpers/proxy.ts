import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { eventually } from './ports.js';

export const CLI = new URL('../../dist/src/cli.js', import.meta.url).pathname;

// A test that times out skips its teardown: whatever it started must not outlive the test process.
const started = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of started) c.kill('SIGKILL');
});

export interface ProxyProcess {
  dir: string;
  configFile: string;
  ports: { mqtt: number; admin: number; http: number };
  /** every log line so far, parsed */
  logs: Array<Record<string, unknown>>;
  output(): string;
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  kill9(): Promise<void>;
  restart(): Promise<void>;
  metric(name: string, labels?: string): Promise<number>;
}

/** Deep-merge plain objects (config overlays in tests). */
function merge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && out[k] && typeof out[k] === 'object'
        ? merge(out[k] as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/**
 * Starts the built proxy as a real process on ports it picks itself (port 0), and learns them
 * from --ports-file, as scripts do.
 */
export async function startProxy(dir: string, config: Record<string, unknown> = {}, env: NodeJS.ProcessEnv = {}): Promise<ProxyProcess> {
  const configFile = join(dir, 'edge-proxy.yaml');
  const portsFile = join(dir, 'ports.json');
  // Its own rules directory (empty unless a test writes rules there), not the project's examples.
  const base = {
    edge: { id: 'test-edge' },
    dataDir: join(dir, 'data'),
    rules: { dir: join(dir, 'rules') },
    // Nor the project's models: a test that wants models says where.
    models: { dir: join(dir, 'models') },
    mqtt: { port: 0 },
    coap: { port: 0 },
    http: { port: 0 },
    admin: { port: 0 },
    log: { level: 'debug' },
  };
  writeFileSync(configFile, stringify(merge(base, config)));
  let child: ChildProcess;
  let out = '';
  const logs: Array<Record<string, unknown>> = [];
  const proc: ProxyProcess = {
    dir,
    configFile,
    ports: { mqtt: 0, admin: 0, http: 0 },
    logs,
    output: () => out,
    exited: Promise.resolve(null),
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      return proc.exited;
    },
    async kill9() {
      child.kill('SIGKILL');
      await proc.exited;
    },
    async restart() {
      await launch();
    },
    async metric(name, labels) {
      const res = await fetch(`http://127.0.0.1:${proc.ports.admin}/metrics`);
      const text = await res.text();
      let sum = 0;
      for (const line of text.split('\n')) {
        if (!line.startsWith(name)) continue;
        const m = /^([a-z_][a-z0-9_]*)(\{[^}]*\})? ([-0-9.e+]+|NaN)$/.exec(line);
        if (!m || m[1] !== name) continue;
        if (labels && !(m[2] ?? '').includes(labels)) continue;
        sum += Number(m[3]);
      }
      return sum;
    },
  };
  async function launch(): Promise<void> {
    rmSync(portsFile, { force: true });
    child = spawn(process.execPath, [CLI, 'run', '--config', configFile, '--ports-file', portsFile], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    started.add(child);
    proc.exited = new Promise((resolve) =>
      child.once('exit', (code) => {
        started.delete(child);
        resolve(code);
      }),
    );
    const parse = logLines(logs);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      parse(d);
    });
    child.stderr!.on('data', (d: Buffer) => {
      out += d.toString();
    });
    await eventually(
      `proxy ports file (output so far: ${out.slice(-2000)})`,
      () => existsSync(portsFile) || child.exitCode !== null,
      20_000,
    );
    if (!existsSync(portsFile)) throw new Error(`the proxy exited before it was ready:\n${out}`);
    proc.ports = JSON.parse(readFileSync(portsFile, 'utf8')) as ProxyProcess['ports'];
  }
  await launch();
  return proc;
}

export interface CliRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** The built CLI in `cwd`, without the caller's EDGE_PROXY_* overrides, while the test goes on (a proxy may answer it). */
export function runCli(args: string[], cwd: string): Promise<CliRun> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('EDGE_PROXY_')));
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd, env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('exit', (status) => resolve({ status, stdout, stderr }));
  });
}

/**
 * Collects a proxy's JSON log lines into `logs` as its stdout arrives in chunks; a line that is
 * not JSON is kept as `{msg: line}`. Returns the function to feed each chunk to.
 */
export function logLines(logs: Array<Record<string, unknown>>): (chunk: Buffer) => void {
  let partial = '';
  return (chunk) => {
    partial += chunk.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        logs.push({ msg: line });
      }
    }
  };
}
