import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { DurableCache } from '../src/uplink/cache.js';
import { newMessageId } from '../src/core/ids.js';
import { sampleProc } from './proc.js';
import { startMosquitto, startProxy } from './services.js';

export interface DrainOptions {
  messages: number;
  devices: number;
  maxInflight: number;
}

export interface DrainResult {
  messages: number;
  fillSeconds: number;
  fileBytes: number;
  drainSeconds: number;
  messagesPerSecond: number;
  cpuMicrosPerMessage: number;
  peakRssMiB: number;
  diskBytesPerMessage: number;
}

async function metric(adminPort: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n'))
    if (line.startsWith(name) && /^[a-z_]+(\{[^}]*\})? /.test(line) && line.split(/[{ ]/)[0] === name)
      sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  return sum;
}

/**
 * The drain of a backlog: `messages` telemetry messages are put in a cache file through the
 * cache's own API, then the built proxy starts on it with a loopback Mosquitto as its cloud,
 * and is timed until the cache is empty. The backlog lives on disk: resident memory stays flat.
 */
export async function benchDrain(opts: DrainOptions, progress: (line: string) => void): Promise<DrainResult> {
  const dir = mkdtempSync(join(tmpdir(), 'edge-drain-'));
  const dataDir = join(dir, 'data');
  const cachePath = join(dataDir, 'cache.db');
  try {
    progress(`  filling a cache with ${opts.messages} messages from ${opts.devices} devices`);
    const fillStart = process.hrtime.bigint();
    const cache = await DurableCache.open({
      path: cachePath,
      maxBytes: 64 * 2 ** 30,
      maxAgeSeconds: 30 * 86400,
      log: pino({ level: 'warn' }),
      events: { writeError() {}, evicted() {}, refused() {} },
    });
    const chunk = 20_000;
    for (let done = 0; done < opts.messages; done += chunk) {
      const n = Math.min(chunk, opts.messages - done);
      await Promise.all(
        Array.from(
          { length: n },
          (_, i) =>
            new Promise<void>((resolve, reject) => {
              const seq = done + i;
              const device = `bench-${String(seq % opts.devices).padStart(4, '0')}`;
              const ts = Date.now();
              const payload = Buffer.from(
                `{"deviceId":"${device}","seq":${seq},"ts":${ts},"temp":${(20 + (seq % 100) / 10).toFixed(2)},"humidity":45.2,"battery":97}`,
              );
              cache.append(
                {
                  id: newMessageId(ts),
                  ts,
                  deviceId: device,
                  protocol: 'mqtt',
                  topic: `devices/${device}/telemetry`,
                  payload,
                  contentType: 'json',
                  qos: 1,
                  retain: false,
                  props: {},
                  hops: 0,
                },
                'normal',
                (err) => (err ? reject(err) : resolve()),
              );
            }),
        ),
      );
      if ((done + n) % 200_000 === 0) progress(`  ${done + n} cached`);
    }
    await cache.close();
    const fillSeconds = Number(process.hrtime.bigint() - fillStart) / 1e9;
    const fileBytes = statSync(cachePath).size;
    progress(
      `  filled in ${fillSeconds.toFixed(1)} s (${(opts.messages / fillSeconds).toFixed(0)} msg/s through the cache alone), file ${(fileBytes / 2 ** 20).toFixed(0)} MiB`,
    );

    const cloud = await startMosquitto(join(dir, 'cloud'));
    const sub = spawn('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(cloud.port), '-t', 'edge/bench/up/#', '-q', '0'], {
      stdio: 'ignore',
    });
    await new Promise((r) => setTimeout(r, 300));
    const proxy = await startProxy(
      join(dir, 'proxy'),
      [
        'edge: { id: bench }',
        `dataDir: ${dataDir}`,
        `rules: { dir: ${join(dir, 'rules')} }`,
        'mqtt: { port: 0 }',
        'coap: { port: 0 }',
        'http: { port: 0 }',
        'admin: { port: 0 }',
        `uplink: { url: "${cloud.url}", maxInflight: ${opts.maxInflight} }`,
        'log: { level: warn }',
        '',
      ].join('\n'),
    );
    try {
      const pid = proxy.child.pid!;
      const p0 = sampleProc(pid);
      const t0 = process.hrtime.bigint();
      let peakRss = p0.rssBytes;
      let left = await metric(proxy.ports.admin, 'edge_cache_messages');
      let lastReport = Date.now();
      while (left > 0) {
        await new Promise((r) => setTimeout(r, 250));
        left = await metric(proxy.ports.admin, 'edge_cache_messages');
        peakRss = Math.max(peakRss, sampleProc(pid).rssBytes);
        if (Date.now() - lastReport >= 5000) {
          lastReport = Date.now();
          const s = Number(process.hrtime.bigint() - t0) / 1e9;
          progress(
            `  ${left} left after ${s.toFixed(0)} s (${((opts.messages - left) / s).toFixed(0)} msg/s), RSS ${(peakRss / 2 ** 20).toFixed(0)} MiB`,
          );
        }
      }
      const drainSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const p1 = sampleProc(pid);
      return {
        messages: opts.messages,
        fillSeconds,
        fileBytes,
        drainSeconds,
        messagesPerSecond: opts.messages / drainSeconds,
        cpuMicrosPerMessage: ((p1.cpuSeconds - p0.cpuSeconds) / opts.messages) * 1e6,
        peakRssMiB: peakRss / 2 ** 20,
        diskBytesPerMessage: (p1.writeBytes - p0.writeBytes) / opts.messages,
      };
    } finally {
      await proxy.stop();
      sub.kill();
      await cloud.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
