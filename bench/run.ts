// npm run bench [-- --only forward|ws|coap|drain|rules|swap|slow|inference] [--devices 50 --inflight 1 --seconds 15 --warmup 3 --baseline --auth open|token]
//                                        [--backlog 1000000 --max-inflight 256] [--json]
// npm run bench -- --compare-auth [--runs 5 --seconds 10 --warmup 2 --devices 50 --inflight 1] [--json]
import { parseArgs } from 'node:util';
import { availableParallelism, cpus, totalmem } from 'node:os';
import { compareAuth, type CompareAuthResult } from './compare-auth.js';
import { pinCores, setMeasuredNodeFlags } from './services.js';
import { benchForward, type AuthMode, type ForwardResult } from './forward.js';
import { benchDrain, type DrainResult } from './drain.js';
import { benchRules, type RulesResult } from './rules.js';
import { benchSlow, type SlowResult, type SubscriberFigures } from './slow.js';
import { benchSwap, type SwapResult } from './swap.js';
import { benchWs, type PhaseFigures, type WsResult } from './ws.js';
import { benchCoap, type CoapResult } from './coap.js';
import { benchInference, type InferenceResult, type RunFigures } from './inference.js';

const { values } = parseArgs({
  options: {
    only: { type: 'string' },
    devices: { type: 'string', default: '50' },
    // Default 1, or 16 for the ws section.
    inflight: { type: 'string' },
    // Defaults below: 15 and 3, or 10 and 2 for --compare-auth.
    seconds: { type: 'string' },
    warmup: { type: 'string' },
    baseline: { type: 'boolean', default: false },
    auth: { type: 'string', default: 'open' },
    'compare-auth': { type: 'boolean', default: false },
    // Default 5 for --compare-auth, 1 for the ws section.
    runs: { type: 'string' },
    backlog: { type: 'string', default: '1000000' },
    'max-inflight': { type: 'string', default: '256' },
    json: { type: 'boolean', default: false },
    rate: { type: 'string', default: '2000' },
    swaps: { type: 'string', default: '20' },
    'slow-consumers': { type: 'string', default: '2' },
    pin: { type: 'boolean', default: false },
    'node-flags': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  process.stdout.write(`npm run bench -- [options]
  --only forward|ws|coap|drain|rules|swap|slow|inference  one section (default: all eight)
  forward: durable ingest, devices -> proxy -> loopback Mosquitto
    --devices N (50)  --inflight K QoS 1 publishes in flight per device (1)  --seconds S (15)  --warmup S (3)
    --baseline        also run the same load through a bare aedes broker with an in-memory MQTT.js forwarder
    --auth open|token the proxy's auth.mode (open); token: the devices are registered in a devices.yaml
                      and connect with username = device id, password = token
  ws: the WebSocket paths beside TCP MQTT on one durable proxy, a phase each (3 x (--warmup + --seconds),
      about a minute with the defaults):
      --devices TCP MQTT devices, then as many /mqtt (MQTT over WebSocket) devices, then as many /ws
      (JSON protocol) devices, each keeping --inflight (16) QoS 1 publishes in flight, --warmup and
      --seconds each; messages/s and proxy CPU per message, and whether /mqtt stays within 25 % and
      /ws within 50 % of TCP MQTT's CPU per message
    --runs N (1)      rounds of the three phases; the figures are each phase's medians
    --auth open|token as for forward; /ws devices give their token as Authorization: Bearer
  --compare-auth     instead of the sections: the forward bench in open and token mode alternately,
                     --runs N (5) of each, with --devices, --inflight, --seconds (10), --warmup (2);
                     each run's figures, the medians, and whether token mode's CPU per message is
                     within 5 % of open mode's
  coap: CoAP beside TCP MQTT on one durable proxy, a phase each (2 x (--warmup + --seconds)):
      --devices TCP MQTT devices with QoS 1 publishes, then as many CoAP devices with confirmable
      publishes (POST /ps/<topic>, each answered 2.04 once committed), each keeping --inflight (1,
      RFC 7252's NSTART; 16 to compare with the ws section) in flight; messages/s and proxy CPU per
      message, and whether CoAP stays within 50 % of TCP MQTT's CPU per message. The CoAP devices
      are raw UDP sockets (bench/load-coap.ts) that retransmit as RFC 7252 says
    --runs N (1)      rounds of the two phases; the figures are each phase's medians
    --auth open|token as for forward; CoAP devices send ?d=<id>&k=<token> on every request
  drain: a backlog in the cache, drained to a loopback Mosquitto
    --backlog N (1000000)  --max-inflight K uplink.maxInflight (256)
  rules: the rule engine alone, in this process
  swap: pushing a 1,000-rule set (PUT /api/v1/rules) to a proxy under a steady load
    --rate N (2000) messages/s over 20 devices   --swaps K (20), one a second
  slow: /ws subscribers that stop reading, on one durable proxy under a steady load (about a
      minute and a half with the defaults: --warmup, then --seconds of phase A, ~10 s for the
      first slow consumer to fall behind, --seconds of phase B, --seconds of phase C):
      20 TCP MQTT devices publish --rate N (2000) messages/s, half QoS 0, half QoS 1; a TCP MQTT and
      a /ws subscriber to devices/+/telemetry time each message, publish -> delivery. Phase A as
      is; phase B with --slow-consumers K (2) /ws subscribers to devices/# that stop reading, each
      replaced once the proxy closes it (1013); every other one reads again once closed, the others
      never do; phase C with as many /ws subscribers to devices/# that keep reading. The healthy
      subscribers' p99 in B against A's (target: within 20 % or 2 ms) and against C's (the cost
      of the slowness alone), the proxy's memory, the close codes and the counters of /metrics
    --seconds S (20, at least 12)  --runs N (1) rounds of A, B and C, the messages of all rounds pooled
    (open mode only: --auth does not apply)
  inference: the shipped bearing model (models/bearing.onnx) in the proxy, a rule infer("bearing") on
      devices/+/vibration, 32 TCP MQTT devices publishing 1024-sample windows (QoS 0), a local
      subscriber to ml/bearing/# (under a minute and a half with the defaults):
      (a) batched (the yaml's batch { maxSize: 32, maxDelayMs: 5 }) and (b) unbatched (maxSize 1),
      each device keeping 4 windows awaiting their result: results/s at the highest rate each
      sustains; (c) a steady 1,000 windows/s on (a): arrival -> result (the result's latencyMs) and
      publish -> result at the subscriber, p50/p99/max; the event loop's longest stall in each run
      and at rest (the proxy's nodejs_eventloop_lag_* metrics). Targets: batched >= 5x unbatched,
      p99 <= 10 ms at 1,000/s, no stall over 5 ms
    --seconds S (10) measured a run  --warmup S (2)
  --pin              the proxy (or the bare broker) alone on CPU 0, this process, the load and
                     Mosquitto on the others (taskset): steadier figures on a machine with few cores
  --node-flags=F     Node/V8 options for the proxy (or the bare broker) alone, written with
                     "=" (e.g. --node-flags="--max-semi-space-size=32"); this
                     process and the load keep their own
  --json             one JSON line with every figure
`);
  process.exit(0);
}

function usage(message: string): never {
  process.stderr.write(`bench: ${message} (npm run bench -- --help)\n`);
  process.exit(2);
}
function count(name: string, value: string, min: number): number {
  if (!/^\d+$/.test(value) || Number(value) < min) usage(`--${name} must be a whole number of at least ${min}, not "${value}"`);
  return Number(value);
}
const SECTIONS = ['forward', 'ws', 'coap', 'drain', 'rules', 'swap', 'slow', 'inference'];
if (values.only !== undefined && !SECTIONS.includes(values.only))
  usage(`--only must be one of ${SECTIONS.join(', ')}, not "${values.only}"`);
if (values.auth !== 'open' && values.auth !== 'token') usage(`--auth must be open or token, not "${values.auth}"`);
const authMode: AuthMode = values.auth;
const compare = values['compare-auth'];
if (compare && values.only !== undefined && values.only !== 'forward')
  usage('--compare-auth runs the forward bench only; leave --only out');
if (compare && values.baseline) usage('--compare-auth and --baseline are separate runs');
const shape = {
  devices: count('devices', values.devices, 1),
  inflight: count('inflight', values.inflight ?? '1', 1),
  seconds: count('seconds', values.seconds ?? (compare ? '10' : '15'), 1),
  warmupSeconds: count('warmup', values.warmup ?? (compare ? '2' : '3'), 0),
};
const runs = count('runs', values.runs ?? '5', 1);

const log = (line: string): void => {
  process.stderr.write(line + '\n');
};
const cores = availableParallelism();
if (values['node-flags'] !== undefined) {
  const flags = values['node-flags'].split(/\s+/).filter(Boolean);
  if (!flags.every((f) => f.startsWith('--'))) usage(`--node-flags takes options that start with --, not "${values['node-flags']}"`);
  setMeasuredNodeFlags(flags);
}
if (values.pin && !pinCores()) usage('--pin needs at least 2 CPUs and taskset (util-linux)');
const sections = compare ? [] : values.only ? [values.only] : SECTIONS;
log(
  `edge-proxy benchmark on ${cores} cores (${cpus()[0]?.model ?? 'unknown cpu'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}${values.pin ? '; the measured process alone on CPU 0' : ''}${values['node-flags'] ? `; the proxy runs with ${values['node-flags']}` : ''}`,
);

const out: {
  forward?: ForwardResult;
  baseline?: ForwardResult;
  drain?: DrainResult;
  rules?: RulesResult;
  swap?: SwapResult;
  compareAuth?: CompareAuthResult;
  ws?: WsResult;
  coap?: CoapResult;
  slow?: SlowResult;
  inference?: InferenceResult;
} = {};
const lines: string[] = [];
const f = (n: number, digits = 0): string => n.toFixed(digits);

if (compare) {
  log(
    `compare-auth: the forward bench in open and token mode alternately, ${runs} run(s) of each, ${shape.devices} devices x ${shape.inflight} in flight, ${shape.warmupSeconds} s warm-up + ${shape.seconds} s measured each`,
  );
  const r = (out.compareAuth = await compareAuth({ ...shape, runs }, log));
  const pct = (x: number): string => `${x >= 0 ? '+' : ''}${f(x * 100, 1)} %`;
  lines.push(
    `compare-auth: forward bench, ${shape.devices} devices x ${shape.inflight} QoS 1 publish(es) in flight, ${shape.seconds} s measured per run, open and token alternately`,
    '  run  mode    messages/s  CPU us/message',
    ...r.runs.map(
      (x, i) =>
        `  ${String(i + 1).padStart(3)}  ${x.auth.padEnd(5)}  ${f(x.messagesPerSecond).padStart(10)}  ${f(x.cpuMicrosPerMessage, 1).padStart(14)}`,
    ),
    `  median open    ${f(r.open.messagesPerSecond).padStart(10)} msg/s  ${f(r.open.cpuMicrosPerMessage, 1).padStart(7)} us/message`,
    `  median token   ${f(r.token.messagesPerSecond).padStart(10)} msg/s  ${f(r.token.cpuMicrosPerMessage, 1).padStart(7)} us/message`,
    `  token/open CPU per message (medians): ${f(r.cpuRatio, 3)} (${pct(r.cpuRatio - 1)}); messages/s ${f(r.rateRatio, 3)}`,
    r.withinTarget
      ? `  within the target: token mode costs at most 5 % more CPU per message than open mode (${pct(r.cpuRatio - 1)})`
      : `  NOT within the target: token mode costs ${pct(r.cpuRatio - 1)} CPU per message, more than the 5 % allowed`,
    `  spread of CPU per message between runs of one mode: open ${pct(r.open.cpuSpread)}, token ${pct(r.token.cpuSpread)} (max/min - 1)`,
  );
}

if (sections.includes('forward')) {
  log(`forward: MQTT QoS 1 devices -> proxy (SQLite cache, WAL, synchronous=FULL, auth.mode ${authMode}) -> loopback Mosquitto`);
  const r = (out.forward = await benchForward({ ...shape, auth: authMode }, log));
  lines.push(
    `forward: ${r.devices} devices x ${r.inflight} QoS 1 publish(es) in flight, ~120-byte JSON, auth.mode ${r.auth}, ${f(r.seconds, 1)} s measured`,
    `  messages/s               ${f(r.messagesPerSecond)}`,
    `  proxy CPU per message    ${f(r.cpuMicrosPerMessage, 1)} us (${f(r.cpuCoresUsed, 2)} cores)`,
    `  proxy resident memory    ${f(r.rssMiB)} MiB (peak ${f(r.peakRssMiB)} MiB)`,
    `  disk written per message ${f(r.diskBytesPerMessage)} bytes`,
  );
  if (values.baseline) {
    log('baseline: the same load through a bare aedes broker with an in-memory MQTT.js forwarder');
    const b = (out.baseline = await benchForward({ ...shape, baseline: true }, log));
    lines.push(
      `baseline (bare aedes + in-memory MQTT.js forwarder: no durability, no checks):`,
      `  messages/s               ${f(b.messagesPerSecond)}`,
      `  CPU per message          ${f(b.cpuMicrosPerMessage, 1)} us (${f(b.cpuCoresUsed, 2)} cores)`,
      `  resident memory          ${f(b.rssMiB)} MiB`,
    );
  }
}

if (sections.includes('ws')) {
  log(`ws: TCP MQTT, /mqtt and /ws devices in turn -> proxy (SQLite cache, auth.mode ${authMode}) -> loopback Mosquitto`);
  const r = (out.ws = await benchWs(
    {
      ...shape,
      inflight: count('inflight', values.inflight ?? '16', 1),
      runs: count('runs', values.runs ?? '1', 1),
      auth: authMode,
    },
    log,
  ));
  const pct = (x: number): string => `${x >= 0 ? '+' : ''}${f(x * 100, 1)} %`;
  const verdict = (ratio: number, target: number): string =>
    `${f(ratio, 3)} (${pct(ratio - 1)}), target <= ${f(target, 2)}: ${ratio <= target ? 'met' : 'NOT met'}`;
  const row = (label: string, x: PhaseFigures): string =>
    `  ${label.padEnd(9)} ${f(x.messagesPerSecond).padStart(10)}  ${f(x.cpuMicrosPerMessage, 1).padStart(14)}  ${f(x.cpuCoresUsed, 2).padStart(11)}`;
  const failed = r.phases.reduce((a, p) => a + p.failed, 0);
  lines.push(
    `ws: ${r.devices} devices a phase x ${r.inflight} QoS 1 publishes in flight, ~120-byte JSON, auth.mode ${r.auth}, ${shape.seconds} s measured a phase, one proxy${r.runs > 1 ? `, medians of ${r.runs} runs` : ''}`,
    '  phase     messages/s  CPU us/message  proxy cores',
    row('TCP MQTT', r.tcp),
    row('/mqtt', r.mqttWs),
    row('/ws', r.ws),
    `  /mqtt CPU per message over TCP MQTT's: ${verdict(r.mqttWsCpuRatio, r.targets.mqttWs)}`,
    `  /ws   CPU per message over TCP MQTT's: ${verdict(r.wsCpuRatio, r.targets.ws)}`,
    `  messages acknowledged ${r.acked}, at the cloud ${r.atCloud}${failed > 0 ? `, refused ${failed}` : ''}`,
  );
}

if (sections.includes('coap')) {
  log(`coap: TCP MQTT and CoAP devices in turn -> proxy (SQLite cache, auth.mode ${authMode}) -> loopback Mosquitto`);
  const r = (out.coap = await benchCoap({ ...shape, runs: count('runs', values.runs ?? '1', 1), auth: authMode }, log));
  const pct = (x: number): string => `${x >= 0 ? '+' : ''}${f(x * 100, 1)} %`;
  const row = (label: string, x: PhaseFigures): string =>
    `  ${label.padEnd(9)} ${f(x.messagesPerSecond).padStart(10)}  ${f(x.cpuMicrosPerMessage, 1).padStart(14)}  ${f(x.cpuCoresUsed, 2).padStart(11)}`;
  const coapPhases = r.phases.filter((p) => p.transport === 'coap');
  const sum = (k: 'failed' | 'retransmitted' | 'separate'): number => coapPhases.reduce((a, p) => a + p[k], 0);
  lines.push(
    `coap: ${r.devices} devices a phase x ${r.inflight} publish(es) in flight (MQTT QoS 1, CoAP confirmable), ~120-byte JSON, auth.mode ${r.auth}, ${shape.seconds} s measured a phase, one proxy${r.runs > 1 ? `, medians of ${r.runs} runs` : ''}`,
    '  phase     messages/s  CPU us/message  proxy cores',
    row('TCP MQTT', r.tcp),
    row('CoAP', r.coap),
    `  CoAP CPU per message over TCP MQTT's: ${f(r.coapCpuRatio, 3)} (${pct(r.coapCpuRatio - 1)}), target <= ${f(r.target, 2)}: ${r.withinTarget ? 'met' : 'NOT met'}`,
    `  CoAP requests retransmitted ${sum('retransmitted')}, answered by a separate response ${sum('separate')}, refused ${sum('failed')}`,
    `  messages acknowledged ${r.acked}, at the cloud ${r.atCloud}${r.atCloud < r.acked ? ` (${r.acked - r.atCloud} MISSING)` : ''}`,
  );
}

if (sections.includes('drain')) {
  log('drain: a backlog in the cache file -> proxy -> loopback Mosquitto');
  const r = (out.drain = await benchDrain(
    {
      messages: count('backlog', values.backlog, 1),
      devices: shape.devices,
      maxInflight: count('max-inflight', values['max-inflight'], 1),
    },
    log,
  ));
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
  log(
    'rules: the engine alone, rules of the form  msg.topic matches "devices/+/telemetry" and payload.temp > 30 and avg(payload.temp, 10) > 25 then uplink(priority = "high")',
  );
  const r = (out.rules = benchRules(log));
  lines.push('rules: cost per message of evaluating the ruleset (payload decoded once, outside)');
  for (const c of r.cases)
    lines.push(`  ${String(c.rules).padStart(5)} rules, ${String(c.inScope).padStart(4)} in scope   ${f(c.nsPerMessage / 1000, 2)} us`);
  lines.push(`  compiling 1,000 rules      ${f(r.compileMs1000, 1)} ms`);
}

if (sections.includes('swap')) {
  log('swap: PUT /api/v1/rules with a 1,000-rule set, once a second, while devices publish QoS 1 at a steady rate');
  const r = (out.swap = await benchSwap(
    {
      rules: 1000,
      rate: count('rate', values.rate, 1),
      devices: 20,
      swaps: count('swaps', values.swaps, 1),
      intervalMs: 1000,
      warmupSeconds: shape.warmupSeconds,
    },
    log,
  ));
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

if (sections.includes('slow')) {
  log('slow: /ws subscribers that stop reading, beside healthy subscribers, under a steady load -> proxy -> loopback Mosquitto');
  const r = (out.slow = await benchSlow(
    {
      devices: 20,
      rate: count('rate', values.rate, 1),
      warmupSeconds: shape.warmupSeconds,
      seconds: count('seconds', values.seconds ?? '20', 12),
      slowConsumers: count('slow-consumers', values['slow-consumers'], 1),
      runs: count('runs', values.runs ?? '1', 1),
    },
    log,
  ));
  const ms = (x: number): string => f(x, 2).padStart(7);
  const row = (label: string, x: SubscriberFigures): string =>
    `  ${label.padEnd(11)} ${ms(x.all.p50)} ${ms(x.all.p99)} ${ms(x.all.max)}   ${ms(x.qos0.p99)} ${ms(x.qos1.p99)}  ${String(x.all.samples).padStart(8)}${x.missing ? `  (${x.missing} of ${x.all.samples + x.missing} missing)` : ''}`;
  const verdict = (label: string, v: SlowResult['verdict']['tcp']): string =>
    `  ${label} p99 ${f(v.p99A, 2)} ms without, ${f(v.p99B, 2)} ms with (allowed ${f(v.allowedMs, 2)}): ${v.within ? 'within the target' : 'NOT within the target'}`;
  const read = r.consumers.filter((c) => !c.cutAtEnd);
  const codes = (readsAgain: boolean): string => {
    const n = new Map<string, number>();
    for (const c of read) if (c.readsAgain === readsAgain) n.set(String(c.code), (n.get(String(c.code)) ?? 0) + 1);
    return [...n].map(([code, k]) => `${code} x ${k}`).join(', ') || 'none';
  };
  const closedAfter = read.flatMap((c) => (c.closedAfter === null ? [] : [c.closedAfter]));
  lines.push(
    `slow: ${r.devices} TCP MQTT devices, ${r.rate} msg/s (half QoS 0, half QoS 1), ${f(r.a.seconds / r.runs, 1)} s measured a phase${r.runs > 1 ? `, ${r.runs} rounds of A, B and C, messages pooled` : ''}; healthy subscribers to devices/+/telemetry`,
    '  latency publish -> delivery (ms)',
    '  phase           p50     p99     max   p99 q0  p99 q1  messages',
    row('A  TCP MQTT', r.a.tcp),
    row('A  /ws', r.a.ws),
    row('B  TCP MQTT', r.b.tcp),
    row('B  /ws', r.b.ws),
    row('C  TCP MQTT', r.c.tcp),
    row('C  /ws', r.c.ws),
    ...(r.runs > 1
      ? [
          `  p99 each round, TCP MQTT / ws (ms): ${r.a.rounds.map((x, i) => `A ${f(x.tcpP99, 1)}/${f(x.wsP99, 1)}, B ${f(r.b.rounds[i]?.tcpP99 ?? NaN, 1)}/${f(r.b.rounds[i]?.wsP99 ?? NaN, 1)}`).join('; ')}`,
        ]
      : []),
    verdict('TCP MQTT', r.verdict.tcp),
    verdict('/ws     ', r.verdict.ws),
    `  target (p99 with slow consumers <= max(1.2 x, +2 ms) of without): ${r.withinTarget ? 'met' : 'NOT met'}`,
    '  B against C (the same subscribers reading): the cost of their slowness alone',
    verdict('TCP MQTT', r.againstReaders.tcp).replace('without', 'reading').replace('with (', 'lagging ('),
    verdict('/ws     ', r.againstReaders.ws).replace('without', 'reading').replace('with (', 'lagging ('),
    `  proxy RSS MiB             A: ${f(r.a.rssMiB.start)} -> ${f(r.a.rssMiB.end)} (peak ${f(r.a.rssMiB.peak)})   B: ${f(r.b.rssMiB.start)} -> ${f(r.b.rssMiB.end)} (peak ${f(r.b.rssMiB.peak)})   C: ${f(r.c.rssMiB.start)} -> ${f(r.c.rssMiB.end)} (peak ${f(r.c.rssMiB.peak)})`,
    `  proxy heap used MiB       A: peak ${f(r.a.heapUsedMiB.peak)}, end ${f(r.a.heapUsedMiB.end)}   B: peak ${f(r.b.heapUsedMiB.peak)}, end ${f(r.b.heapUsedMiB.end)}   C: peak ${f(r.c.heapUsedMiB.peak)}, end ${f(r.c.heapUsedMiB.end)}`,
    `  proxy Buffers (external)  A: peak ${f(r.a.externalMiB.peak)}, end ${f(r.a.externalMiB.end)}   B: peak ${f(r.b.externalMiB.peak)}, end ${f(r.b.externalMiB.end)}   C: peak ${f(r.c.externalMiB.peak)}, end ${f(r.c.externalMiB.end)}`,
    `  proxy full GCs (loop ms)  A: ${r.a.fullGcs} (${f(r.a.gcPauseMs)})   B: ${r.b.fullGcs} (${f(r.b.gcPauseMs)})   C: ${r.c.fullGcs} (${f(r.c.gcPauseMs)})`,
    `  proxy cores               A: ${f(r.a.cpuCoresUsed, 2)}   B: ${f(r.b.cpuCoresUsed, 2)}   C: ${f(r.c.cpuCoresUsed, 2)}`,
    `  slow consumers: over their limit ${r.firstLagAfter.map((x) => f(x, 1)).join(', ')} s after joining; in B the proxy dropped for one in ${r.b.laggingSeconds} of ${f(r.b.seconds)} s`,
    `  dropped (slow_consumer)  A: ${r.a.dropped}  B: ${r.b.dropped};  closed (edge_slow_consumers_closed_total)  A: ${r.a.closed}  B: ${r.b.closed}`,
    `  closed by the proxy ${closedAfter.length ? `${f(Math.min(...closedAfter), 1)}-${f(Math.max(...closedAfter), 1)} s after joining` : '(none)'}; close codes read by those that read again at once: ${codes(true)}; by those that read only after B: ${codes(false)}${r.consumers.length > read.length ? `; ${r.consumers.length - read.length} still lagging when B ended (cut by the bench)` : ''}`,
  );
}

if (sections.includes('inference')) {
  log('inference: vibration windows -> proxy, infer("bearing") -> ml/bearing/# subscriber (no uplink, routing.default local)');
  const r = (out.inference = await benchInference(
    {
      devices: 32,
      inflight: 4,
      rate: 1000,
      warmupSeconds: count('warmup', values.warmup ?? '2', 0),
      seconds: count('seconds', values.seconds ?? '10', 1),
      idleSeconds: 5,
    },
    log,
  ));
  const ms = (x: number): string => f(x, 2).padStart(7);
  const row = (label: string, x: RunFigures): string =>
    `  ${label.padEnd(16)} ${f(x.resultsPerSecond).padStart(9)}  ${f(x.meanBatch, 1).padStart(10)}  ${ms(x.proxyMs.p50)} ${ms(x.proxyMs.p99)} ${ms(x.proxyMs.max)}  ${ms(x.endToEndMs.p50)} ${ms(x.endToEndMs.p99)} ${ms(x.endToEndMs.max)}  ${ms(x.loop.stallMs)}`;
  const verdict = (ok: boolean): string => (ok ? 'met' : 'NOT met');
  const coarse = r.monitorPeriodMs > 1;
  const named: Array<[string, RunFigures]> = [
    ['(a)', r.batched],
    ['(b)', r.unbatched],
    ['(c)', r.paced],
  ];
  const all = named.map(([, x]) => x);
  lines.push(
    `inference: model bearing ${r.model.version} (${r.model.length} samples a window), ${r.devices} TCP MQTT devices, ${r.seconds} s measured a run; arrival -> result is the result's latencyMs`,
    '                   results/s  mean batch  arrival -> result (ms)   publish -> result (ms)  loop stall',
    '                                              p50     p99     max      p50     p99     max    max (ms)',
    row(`(a) batched x${r.inflight}`, r.batched),
    row(`(b) unbatched x${r.inflight}`, r.unbatched),
    row(`(c) ${r.paced.rate}/s on (a)`, r.paced),
    `  proxy CPU (cores), main thread / other threads (inference worker, ONNX Runtime): ${named
      .map(([l, x]) => `${l} ${f(x.cpu.main, 2)} / ${f(x.cpu.others, 2)}`)
      .join(', ')}`,
    `  idle: the event loop's longest stall ${f(r.idle.stallMs, 2)} ms (longest monitor interval ${f(r.idle.maxIntervalMs, 2)} ms, period ${r.monitorPeriodMs} ms)`,
    `  results by label: ${Object.entries(r.batched.byLabel)
      .map(([l, n]) => `${l} ${n}`)
      .join(
        ', ',
      )} (a)${all.some((x) => x.shed > 0 || x.errors > 0 || x.lost > 0) ? `; shed ${all.map((x) => f(x.shed)).join('/')}, errors ${all.map((x) => f(x.errors)).join('/')}, never answered ${all.map((x) => x.lost).join('/')} (a/b/c)` : '; nothing shed, no error, every window answered'}${r.unpaired > 0 ? `; ${r.unpaired} results not paired with their window` : ''}`,
    `  the model alone (the worker fed decoded windows): ${f(r.modelOnly.batchedPerSecond)}/s in batches of ${r.modelOnly.batch}, ${f(r.modelOnly.unbatchedPerSecond)}/s one at a time: ${f(r.modelOnly.speedup, 2)}x`,
    `  batched over unbatched: ${f(r.speedup, 2)}x, target >= ${r.targets.speedup}x: ${verdict(r.met.speedup)}`,
    `  p99 arrival -> result at ${r.paced.rate}/s: ${f(r.paced.proxyMs.p99, 2)} ms${r.paced.shed > 0 ? ` (${r.paced.shed} shed)` : ''}, target <= ${r.targets.p99Ms} ms: ${verdict(r.met.p99)}`,
    `  longest event-loop stall at ${r.paced.rate}/s: ${f(r.paced.loop.stallMs, 2)} ms, target <= ${r.targets.stallMs} ms: ${verdict(r.met.stall)} (flat out, (a) and (b): ${f(Math.max(r.batched.loop.stallMs, r.unbatched.loop.stallMs), 2)} ms, the main thread's own work and garbage collection)${coarse ? ` (the proxy's loop monitor ticks every ${r.monitorPeriodMs} ms: a shorter stall is seen only where it runs past a tick, so this figure can be short of the truth)` : ''}`,
  );
}

process.stdout.write(values.json ? JSON.stringify(out) + '\n' : lines.join('\n') + '\n');
