// `edge-proxy status`: a running proxy's devices, uplink, cache backlog and time to drain.

import { parseArgs } from 'node:util';
import type { ProxyStatus } from '../admin/status.js';
import { AdminUnreachable } from './admin-client.js';
import { fail, plural, targetOf } from './terminal.js';

export const STATUS_HELP = `edge-proxy status [--config FILE] [--admin URL] [--token T] [--json]
  Asks a running proxy (default: the one the configuration describes, with the token from its data directory)
  for its state: connected devices, uplink, cache backlog, and how long the backlog takes to drain.
  Exits 2 when the proxy cannot be reached.
`;

function seconds(s: number): string {
  if (s < 60) return `${s.toFixed(0)} s`;
  if (s < 3600) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
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
  const { url, token } = target;
  let body: ProxyStatus;
  try {
    const res = await fetch(new URL('/api/v1/status', url), { headers: token ? { authorization: `Bearer ${token}` } : {} });
    if (!res.ok) fail(`${url} answered ${res.status}: ${await res.text()}`, res.status === 401 ? 1 : 2);
    body = (await res.json()) as ProxyStatus;
  } catch (err) {
    fail(new AdminUnreachable(url, err as Error, target.from).message);
  }
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
      `drain:    ${c.messages === 0 ? 'nothing to drain' : c.timeToDrainSeconds === null ? `not draining now${u.connected ? '' : ' (the uplink is not connected)'}` : `about ${seconds(c.timeToDrainSeconds)} at the current rate`}`,
      ...(body.rules
        ? [`rules:    version ${body.rules.version}, ${plural(body.rules.rules, 'rule')} (sha256 ${body.rules.sha256.slice(0, 12)})`]
        : []),
      '',
    ].join('\n'),
  );
}
