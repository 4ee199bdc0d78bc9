// npm run bench [-- --only forward|drain] [--devices 50 --inflight 1 --seconds 15 --warmup 3 --baseline]
//                                        [--backlog 1000000 --max-inflight 256] [--json]
import { parseArgs } from 'node:util';
import { availableParallelism, cpus, totalmem } from 'node:os';
import { benchForward, type ForwardResult } from './forward.js';
import { benchDrain, type DrainResult } from './drain.js';
import { benchRules, type RulesResult } from './rules.js';

const { values } = parseArgs({
  options: {
    only: { type: 'string' },
    devices: { type: 'string', default: '50' },
    inflight: { type: 'string', default: '1' },
    seconds: { type: 'string', default: '15' },
    warmup: { type: 'string', default: '3' },
    baseline: { type: 'boolean', default: false },
    backlog: { type: 'string', default: '1000000' },
    'max-inflight': { type: 'string', default: '256' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  process.stdout.write(`npm run bench -- [options]
  --only forward|drain|rules  one section (default: all three)
  forward: durable ingest, devices -> proxy -> loopback Mosquitto
    --devices N (50)  --inflight K QoS 1 publishes in flight per device (1)  --seconds S (15)  --warmup S (3)
    --baseline        also run the same load through a bare aedes broker with an in-memory MQTT.js forwarder
  drain: a backlog in the cache, drained to a loopback Mosquitto
    --backlog N (1000000)  --max-inflight K uplink.maxInflight (256)
  --json             one JSON line with every figure
`);
  process.exit(0);
}

const log = (line: string): void => { process.stderr.write(line + '\n'); };
const sections = values.only ? [values.only] : ['forward', 'drain', 'rules'];
log(`edge-proxy benchmark on ${availableParallelism()} cores (${cpus()[0]?.model ?? 'unknown cpu'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`);

const out: { forward?: ForwardResult; baseline?: ForwardResult; drain?: DrainResult; rules?: RulesResult } = {};
const lines: string[] = [];
const f = (n: number, digits = 0): string => n.toFixed(digits);

if (sections.includes('forward')) {
  log('forward: MQTT QoS 1 devices -> proxy (SQLite cache, WAL, synchronous=FULL) -> loopback Mosquitto');
  const shape = { devices: Number(values.devices), inflight: Number(values.inflight), seconds: Number(values.seconds), warmupSeconds: Number(values.warmup) };
  const r = out.forward = await benchForward(shape, log);
  lines.push(
    `forward: ${r.devices} devices x ${r.inflight} QoS 1 publish(es) in flight, ~120-byte JSON, ${f(r.seconds, 1)} s measured`,
    `  messages/s               ${f(r.messagesPerSecond)}`,
    `  proxy CPU per message    ${f(r.cpuMicrosPerMessage, 1)} us (${f(r.cpuCoresUsed, 2)} cores)`,
    `  proxy resident memory    ${f(r.rssMiB)} MiB (peak ${f(r.peakRssMiB)} MiB)`,
    `  disk written per message ${f(r.diskBytesPerMessage)} bytes`,
  );
  if (values.baseline) {
    log('baseline: the same load through a bare aedes broker with an in-memory MQTT.js forwarder');
    const b = out.baseline = await benchForward({ ...shape, baseline: true }, log);
    lines.push(
      `baseline (bare aedes + in-memory MQTT.js forwarder: no durability, no checks):`,
      `  messages/s               ${f(b.messagesPerSecond)}`,
      `  CPU per message          ${f(b.cpuMicrosPerMessage, 1)} us (${f(b.cpuCoresUsed, 2)} cores)`,
      `  resident memory          ${f(b.rssMiB)} MiB`,
    );
  }
}

if (sections.includes('drain')) {
  log('drain: a backlog in the cache file -> proxy -> loopback Mosquitto');
  const r = out.drain = await benchDrain({ messages: Number(values.backlog), devices: Number(values.devices), maxInflight: Number(values['max-inflight']) }, log);
  lines.push(
    `drain: ${r.messages} cached messages (file ${f(r.fileBytes / 2 ** 20)} MiB), uplink.maxInflight ${values['max-inflight']}`,
    `  messages/s               ${f(r.messagesPerSecond)} (${f(r.drainSeconds, 1)} s)`,
    `  proxy CPU per message    ${f(r.cpuMicrosPerMessage, 1)} us`,
    `  proxy peak memory        ${f(r.peakRssMiB)} MiB`,
    `  disk written per message ${f(r.diskBytesPerMessage)} bytes (deletes and checkpoints)`,
    `  filling the cache        ${f(r.messages / r.fillSeconds)} msg/s through the cache API alone`,
  );
}

if (sections.includes('rules')) {
  log('rules: the engine alone, rules of the form  msg.topic matches "devices/+/telemetry" and payload.temp > 30 and avg(payload.temp, 10) > 25 then uplink(priority = "high")');
  const r = out.rules = benchRules(log);
  lines.push('rules: cost per message of evaluating the ruleset (payload decoded once, outside)');
  for (const c of r.cases) lines.push(`  ${String(c.rules).padStart(5)} rules, ${String(c.inScope).padStart(4)} in scope   ${f(c.nsPerMessage / 1000, 2)} us`);
  lines.push(`  compiling 1,000 rules      ${f(r.compileMs1000, 1)} ms`);
}

process.stdout.write(values.json ? JSON.stringify(out) + '\n' : lines.join('\n') + '\n');
