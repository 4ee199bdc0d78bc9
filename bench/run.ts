// npm run bench [-- --only forward|drain] [--devices 50 --inflight 1 --seconds 15 --warmup 3 --baseline]
//                                        [--backlog 1000000 --max-inflight 256] [--json]
import { parseArgs } from 'node:util';
import { availableParallelism, cpus, totalmem } from 'node:os';
import { benchForward, type ForwardResult } from './forward.js';
import { benchDrain, type DrainResult } from './drain.js';
import { benchRules, type RulesResult } from './rules.js';
import { benchSwap, type SwapResult } from './swap.js';

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
    rate: { type: 'string', default: '2000' },
    swaps: { type: 'string', default: '20' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  process.stdout.write(`npm run bench -- [options]
  --only forward|drain|rules|swap  one section (default: all four)
  forward: durable ingest, devices -> proxy -> loopback Mosquitto
    --devices N (50)  --inflight K QoS 1 publishes in flight per device (1)  --seconds S (15)  --warmup S (3)
    --baseline        also run the same load through a bare aedes broker with an in-memory MQTT.js forwarder
  drain: a backlog in the cache, drained to a loopback Mosquitto
    --backlog N (1000000)  --max-inflight K uplink.maxInflight (256)
  rules: the rule engine alone, in this process
  swap: pushing a 1,000-rule set (PUT /api/v1/rules) to a proxy under a steady load
    --rate N (2000) messages/s over 20 devices   --swaps K (20), one a second
  --json             one JSON line with every figure
`);
  process.exit(0);
}

const log = (line: string): void => { process.stderr.write(line + '\n'); };
const sections = values.only ? [values.only] : ['forward', 'drain', 'rules', 'swap'];
log(`edge-proxy benchmark on ${availableParallelism()} cores (${cpus()[0]?.model ?? 'unknown cpu'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`);

const out: { forward?: ForwardResult; baseline?: ForwardResult; drain?: DrainResult; rules?: RulesResult; swap?: SwapResult } = {};
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

if (sections.includes('swap')) {
  log('swap: PUT /api/v1/rules with a 1,000-rule set, once a second, while devices publish QoS 1 at a steady rate');
  const r = out.swap = await benchSwap({ rules: 1000, rate: Number(values.rate), devices: 20, swaps: Number(values.swaps), intervalMs: 1000, warmupSeconds: Number(values.warmup) }, log);
  const ms = (x: number): string => `${f(x, 1)} ms`;
  lines.push(
    `swap: ${r.swaps} pushes of a ${r.rules}-rule set under ${r.rate} msg/s (QoS 1, 20 devices)`,
    `  push answered (validate, compile, write, swap)  median ${ms(r.swapMs.median)}, max ${ms(r.swapMs.max)}`,
    `  of which the proxy's own work (logged tookMs)   median ${ms(r.proxyMs.median)}, max ${ms(r.proxyMs.max)}`,
    `  PUBACK latency, no swap under way              p50 ${ms(r.quiet.p50)}, p99 ${ms(r.quiet.p99)}, max ${ms(r.quiet.max)} (${r.quiet.samples} messages)`,
    `  PUBACK latency, during a swap (+100 ms)        p50 ${ms(r.swapping.p50)}, p99 ${ms(r.swapping.p99)}, max ${ms(r.swapping.max)} (${r.swapping.samples} messages)`,
    `  messages acknowledged ${r.acked}, at the cloud ${r.atCloud}, lost ${r.lost}`,
    `  each push (ms) / worst latency meanwhile (ms): ${r.perSwap.map((x) => `${f(x.ms)}/${f(x.worstLatencyMs)}`).join(' ')}`,
  );
}

process.stdout.write(values.json ? JSON.stringify(out) + '\n' : lines.join('\n') + '\n');
