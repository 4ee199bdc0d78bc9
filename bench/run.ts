// npm run bench [-- --devices 50 --inflight 1 --seconds 15 --warmup 3]
import { parseArgs } from 'node:util';
import { availableParallelism, cpus } from 'node:os';
import { benchForward } from './forward.js';

const { values } = parseArgs({
  options: {
    devices: { type: 'string', default: '50' },
    inflight: { type: 'string', default: '1' },
    seconds: { type: 'string', default: '15' },
    warmup: { type: 'string', default: '3' },
    json: { type: 'boolean', default: false },
    baseline: { type: 'boolean', default: false },
  },
});

const log = (line: string): void => { process.stderr.write(line + '\n'); };
log(`edge-proxy benchmark on ${availableParallelism()} cores (${cpus()[0]?.model ?? 'unknown cpu'}), Node ${process.version}`);
log(`durable forward: MQTT QoS 1 devices -> proxy (SQLite cache, WAL, synchronous=FULL) -> loopback Mosquitto`);
const shape = { devices: Number(values.devices), inflight: Number(values.inflight), seconds: Number(values.seconds), warmupSeconds: Number(values.warmup) };
const result = await benchForward(shape, log);
let baseline: typeof result | null = null;
if (values.baseline) {
  log('baseline: bare aedes + in-memory MQTT.js forwarder, same load');
  baseline = await benchForward({ ...shape, baseline: true }, log);
}
if (values.json) {
  process.stdout.write(JSON.stringify({ forward: result, baseline }) + '\n');
} else {
  process.stdout.write([
    `forward ${result.devices} devices x ${result.inflight} in flight, ${result.seconds.toFixed(1)} s:`,
    `  messages/s              ${result.messagesPerSecond.toFixed(0)}`,
    `  proxy CPU per message   ${result.cpuMicrosPerMessage.toFixed(1)} us (${result.cpuCoresUsed.toFixed(2)} cores)`,
    `  proxy resident memory   ${result.rssMiB.toFixed(0)} MiB (peak ${result.peakRssMiB.toFixed(0)} MiB)`,
    `  disk written per msg    ${result.diskBytesPerMessage.toFixed(0)} bytes`,
    `  at the cloud (whole run) ${result.atCloud}`,
    ...(baseline ? [
      `baseline (bare aedes + in-memory MQTT.js forwarder, no durability):`,
      `  messages/s              ${baseline.messagesPerSecond.toFixed(0)}`,
      `  CPU per message         ${baseline.cpuMicrosPerMessage.toFixed(1)} us (${baseline.cpuCoresUsed.toFixed(2)} cores)`,
      `  resident memory         ${baseline.rssMiB.toFixed(0)} MiB`,
    ] : []),
    '',
  ].join('\n'));
}
