// `edge-proxy status`: a running proxy's devices, uplink, cache backlog and time to drain.

import { parseArgs } from 'node:util';
import type { ProxyStatus } from '../admin/status.js';
import type { ModelView } from '../inference/service.js';
import { adminRequest, AdminUnreachable, describeRefusal, type AdminAnswer } from './admin-client.js';
import { fail, plural, targetOf } from './terminal.js';

export const STATUS_HELP = `edge-proxy status [--config FILE] [--admin URL] [--token T] [--json]
  Asks a running proxy for its state: connected devices, uplink, cache backlog, how long the
  backlog takes to drain, and each model of the models directory (loaded or why not, its version,
  results by label, errors, inputs shed and queued, and arrival-to-result time over the recent results). Without --admin: the proxy running on the configuration's data directory,
  at the admin port it wrote to <dataDir>/ports.json, with the token in <dataDir>/admin-token (or
  admin.token, admin.tokenFile). When no proxy runs there, status says so: the configuration's
  admin.port may be another proxy's.
  --admin URL   http:// or https://, such as http://127.0.0.1:9180
  Exit 0; 1 when the proxy refuses the token; 2 when no proxy runs on the data directory or it
  cannot be reached, and on a usage error.
`;

function seconds(s: number): string {
  if (s < 60) return `${s.toFixed(0)} s`;
  if (s < 3600) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

/** How the backlog drains: offline mode (no uplink.url) keeps it, rather than failing to drain it. */
function drain(c: ProxyStatus['cache'], u: ProxyStatus['uplink']): string {
  if (c.messages === 0) return 'nothing to drain';
  if (u.url === null) return 'none in offline mode: the backlog stays in the cache until an uplink is configured (uplink.url)';
  if (c.timeToDrainSeconds === null) return `not draining now${u.connected ? '' : ' (the uplink is not connected)'}`;
  return `about ${seconds(c.timeToDrainSeconds)} at the current rate`;
}

function ms(x: number): string {
  return `${x < 10 ? x.toFixed(2) : x.toFixed(1)} ms`;
}

/** One line a model: how it runs, or why it does not. */
function model(m: ModelView): string {
  if (m.state !== 'ready') return `${m.name}: NOT loaded: ${m.error ?? 'unknown reason'}`;
  const labels = [...m.labels, ...Object.keys(m.byLabel).filter((l) => !m.labels.includes(l))];
  const byLabel = labels.map((l) => `${l} ${m.byLabel[l] ?? 0}`).join(', ');
  return [
    `${m.name} (version ${m.version}): ready; ${plural(m.inferences, 'inference')} (${byLabel}), ${plural(m.errors, 'error')}, ${m.shed} shed, ${m.queued} queued`,
    m.latencyMs ? `arrival to result p50 ${ms(m.latencyMs.p50)}, p99 ${ms(m.latencyMs.p99)}` : 'no result yet',
    // A reload that failed leaves the earlier version running: both are worth knowing.
    ...(m.error ? [`its new files did NOT load (this version keeps running): ${m.error}`] : []),
  ].join('; ');
}

/** A line a model; none without models (or from a proxy older than local inference), as for rules. */
function models(list: ModelView[] | undefined): string[] {
  return (list ?? []).map((m, i) => `${i === 0 ? 'models:   ' : '          '}${model(m)}`);
}

export async function status(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: 'string' },
      admin: { type: 'string' },
      token: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean' },
    },
    strict: true,
  });
  if (values.help) return void process.stdout.write(STATUS_HELP);
  const target = targetOf(values);
  let answer: AdminAnswer;
  try {
    answer = await adminRequest(target, 'GET', '/api/v1/status');
  } catch (err) {
    if (err instanceof AdminUnreachable) fail(err.message);
    throw err;
  }
  if (answer.status !== 200) fail(describeRefusal(answer, target), answer.status === 401 ? 1 : 2);
  const body = answer.body as unknown as ProxyStatus;
  if (values.json) return void process.stdout.write(JSON.stringify(body) + '\n');
  const c = body.cache;
  const u = body.uplink;
  process.stdout.write(
    [
      `edge-proxy ${body.version} on ${body.edgeId}, up ${seconds(body.uptimeSeconds)}`,
      `devices:  ${Object.entries(body.devices)
        .map(([protocol, n]) => `${n} ${protocol.toUpperCase()}`)
        .join(', ')} connected; ${body.rates.receivedPerSecond.toFixed(1)} msg/s in`,
      body.auth.mode === 'token'
        ? `auth:     token mode, ${plural(body.auth.devices ?? 0, 'registered device')}`
        : 'auth:     open mode: any client connects as any device (trial setting)',
      u.url === null
        ? 'uplink:   none (offline mode): what would go up stays in the cache'
        : `uplink:   ${u.url}: ${u.connected ? 'connected' : 'NOT connected'}, ${u.inflight} in flight, ${c.drainRate.toFixed(1)} msg/s acknowledged`,
      `cache:    ${plural(c.messages, 'message')}, ${plural(c.bytes, 'byte')}, oldest ${seconds(c.oldestAgeSeconds)}, ${c.writable ? 'writable' : 'NOT writable'}`,
      `drain:    ${drain(c, u)}`,
      ...(body.rules
        ? [`rules:    version ${body.rules.version}, ${plural(body.rules.rules, 'rule')} (sha256 ${body.rules.sha256.slice(0, 12)})`]
        : []),
      ...models(body.models),
      '',
    ].join('\n'),
  );
}
