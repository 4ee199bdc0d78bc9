import mqtt, { type MqttClient, type IClientOptions } from 'mqtt';
import { spawn, type ChildProcess } from 'node:child_process';
import { topicMatches } from '../../src/core/topic.js';

export async function connectClient(port: number, opts: IClientOptions = {}): Promise<MqttClient> {
  return mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, connectTimeout: 5_000, ...opts });
}

export interface Received {
  topic: string;
  payload: Buffer;
  retain: boolean;
}

export interface Collected {
  messages: Received[];
  json<T = Record<string, unknown>>(): T[];
}

/** Subscribes and collects every message; `json()` parses the payloads. */
export async function collect(client: MqttClient, filter: string, qos: 0 | 1 = 1): Promise<Collected> {
  const messages: Received[] = [];
  client.on('message', (topic, payload, packet) => {
    if (topicMatches(filter, topic)) messages.push({ topic, payload, retain: packet.retain });
  });
  await client.subscribeAsync(filter, { qos });
  return { messages, json: <T>() => messages.map((m) => JSON.parse(m.payload.toString()) as T) };
}

export type ConnectOutcome =
  { ok: true; client: MqttClient; sessionPresent: boolean } | { ok: false; returnCode: number | null; error: Error };

/**
 * Connects with MQTT.js (`mqtt://` or `mqtts://`, no reconnects) and reports how it went: the client
 * and the CONNACK's sessionPresent, or the refusal's CONNACK return code (null for a failure before
 * any CONNACK, such as a refused TLS handshake).
 */
export async function connectOutcome(url: string, opts: IClientOptions = {}): Promise<ConnectOutcome> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5_000, ...opts });
  client.on('error', () => {}); // after the outcome, a refusal (a closed connection) shows as 'close'
  return new Promise((resolve) => {
    const fail = (error: Error): void => {
      client.off('connect', connected);
      const code = (error as Error & { code?: unknown }).code;
      client.end(true);
      resolve({ ok: false, returnCode: typeof code === 'number' ? code : null, error });
    };
    const closed = (): void => fail(new Error('closed before a CONNACK'));
    const connected = (connack: { sessionPresent: boolean }): void => {
      client.off('error', fail);
      client.off('close', closed);
      resolve({ ok: true, client, sessionPresent: connack.sessionPresent });
    };
    client.once('connect', connected);
    client.once('error', fail);
    client.once('close', closed);
  });
}

export interface ToolRun {
  /** the exit code; null when it was killed (stopped, or past its time) */
  code: number | null;
  stdout: string;
  stderr: string;
  /** from the start to the exit */
  ms: number;
}

export interface ToolProcess {
  stdout(): string;
  stderr(): string;
  exited: Promise<ToolRun>;
  stop(): void;
}

// A test that times out skips its teardown: no tool it started may outlive the test process.
const tools = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of tools) c.kill('SIGKILL');
});

/** Starts a command-line client (mosquitto_sub, openssl s_client...) and collects its output. */
export function startTool(cmd: string, args: string[]): ToolProcess {
  const started = Date.now();
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  tools.add(child);
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const exited = new Promise<ToolRun>((resolve) => {
    child.once('error', (e) => {
      err += String(e);
    });
    child.once('close', (code) => {
      tools.delete(child);
      resolve({ code, stdout: out, stderr: err, ms: Date.now() - started });
    });
  });
  return {
    stdout: () => out,
    stderr: () => err,
    exited,
    stop: () => {
      if (child.exitCode === null) child.kill();
    },
  };
}

/** Runs a command-line client to its end (killed after timeoutMs: code null). */
export async function runTool(cmd: string, args: string[], timeoutMs = 15_000): Promise<ToolRun> {
  const tool = startTool(cmd, args);
  const timer = setTimeout(() => tool.stop(), timeoutMs);
  const run = await tool.exited;
  clearTimeout(timer);
  return run;
}
