// The command line and models: `rules check` warns of an infer() whose model is not in the models
// directory, `rules test --models` runs the models and shows their results as the proxy derives
// them, and `status` shows a running proxy's models. Real CLI processes, real ONNX models written
// here (tiny graphs whose answer is known), a real proxy.
import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GraphBuilder } from '../train/onnx-graph.js';
import { runCli, startProxy } from './helpers/proxy.js';
import { collect, connectClient } from './helpers/clients.js';
import { eventually } from './helpers/ports.js';

const LENGTH = 8;

/**
 * A model of `length` values that answers [healthy, fault] by the sign of their mean: fault when it
 * is positive, near certain (softmax of -8·mean and +8·mean).
 */
function writeModel(dir: string, name: string, opts: { length?: number; version?: string } = {}): void {
  const length = opts.length ?? LENGTH;
  const g = new GraphBuilder();
  const mean = g.op('ReduceMean', ['input'], { axes: [1], keepdims: 1 });
  const logits = g.op('Mul', [mean, g.floats('w', [1, 2], [-8, 8])]);
  g.op('Softmax', [logits], { axis: 1 }, 'probabilities');
  const onnx = g.encode({
    name,
    docString: 'the sign of the mean',
    inputs: [{ name: 'input', dims: ['batch', length] }],
    outputs: [{ name: 'probabilities', dims: ['batch', 2] }],
  });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `${name}.onnx`), onnx);
  writeFileSync(
    join(dir, `${name}.yaml`),
    [
      `name: ${name}`,
      `version: "${opts.version ?? 'v1'}"`,
      `input: { tensor: input, from: payload.samples, length: ${length} }`,
      'output: { tensor: probabilities, labels: [healthy, fault] }',
      'batch: { maxSize: 8, maxDelayMs: 2 }',
      '',
    ].join('\n'),
  );
}

const samples = (v: number, n = LENGTH): number[] => Array.from({ length: n }, (_, i) => v + (i % 2) * 0.01);

const CHECKED = `rule bearing_check
when msg.topic matches "devices/+/vibration"
then infer("bearing")
end

rule pump_check
when msg.topic matches "devices/+/pump"
then infer("bearng", to = "ml/pump/" + msg.deviceId)
end

rule broken_check
when msg.topic matches "devices/+/other"
then infer("broken")
end

# not run by the proxy, so not warned about
rule later disabled
when msg.topic matches "devices/+/later"
then infer("not_yet")
end
`;

t.test('rules check: an infer() of a model the directory lacks is a warning naming the models there', async (t) => {
  // One fixture directory a test: a directory each for the three ways of naming the models directory.
  const root = t.testdir({
    named: { 'site.rules': CHECKED, 'bad.rules': 'rule bad when nope then drop() end\n' },
    configured: { 'site.rules': CHECKED, 'edge-proxy.yaml': 'models: { dir: ./elsewhere }\n' },
    bare: { 'site.rules': CHECKED },
  });
  const dir = join(root, 'named');
  writeModel(join(dir, 'models'), 'bearing');
  writeModel(join(dir, 'models'), 'pump');
  // A pair whose yaml has a problem is not a model the proxy can run.
  writeModel(join(dir, 'models'), 'broken');
  writeFileSync(
    join(dir, 'models/broken.yaml'),
    'input: { tensor: input, from: samples, length: 8 }\noutput: { tensor: probabilities, labels: [a, b] }\n',
  );

  const r = await runCli(['rules', 'check', 'site.rules', '--models', 'models'], dir);
  t.equal(r.status, 0, 'warnings leave the exit status alone');
  t.equal(r.stdout, '4 rules in 1 file: OK, 2 warnings\n');
  t.equal(
    r.stderr,
    [
      'site.rules:8:12: warning: infer("bearng"): no model "bearng" in models; did you mean "bearing"? (models there: bearing, pump)',
      '  then infer("bearng", to = "ml/pump/" + msg.deviceId)',
      '             ^',
      `site.rules:13:12: warning: infer("broken"): model "broken" in models cannot be loaded: models/broken.yaml:1:31: input.from: "samples" is not a payload field: write payload.<field>, e.g. payload.samples`,
      '  then infer("broken")',
      '             ^',
      '',
    ].join('\n'),
  );

  // The configuration's models.dir when there is no --models, resolved as the proxy resolves it.
  const other = join(root, 'configured');
  writeModel(join(other, 'elsewhere'), 'bearing');
  const viaConfig = await runCli(['rules', 'check', 'site.rules', '--config', 'edge-proxy.yaml'], other);
  t.equal(viaConfig.status, 0);
  t.equal(viaConfig.stdout, '4 rules in 1 file: OK, 2 warnings\n');
  t.match(
    viaConfig.stderr,
    /^site\.rules:8:12: warning: infer\("bearng"\): no model "bearng" in \S*elsewhere; did you mean "bearing"\? \(models there: bearing\)$/m,
  );
  t.match(
    viaConfig.stderr,
    /^site\.rules:13:12: warning: infer\("broken"\): no model "broken" in \S*elsewhere \(models there: bearing\)$/m,
  );
  t.notMatch(viaConfig.stderr, /infer\("bearing"\)/, 'the model that is there is not warned about');

  // Else ./models; here there is none at all.
  const bare = join(root, 'bare');
  const none = await runCli(['rules', 'check', 'site.rules'], bare);
  t.equal(none.status, 0);
  t.equal(none.stdout, '4 rules in 1 file: OK, 3 warnings\n');
  t.match(none.stderr, /^site\.rules:3:12: warning: infer\("bearing"\): no models directory \S*models, so no model "bearing" to run/m);

  // Errors keep exit 1; the warnings are still said, in file and line order with them.
  const both = await runCli(['rules', 'check', 'bad.rules', 'site.rules', '--models', 'models'], dir);
  t.equal(both.status, 1);
  t.equal(both.stdout, '');
  t.match(both.stderr, /^bad\.rules:1:\d+: E_RULE_UNKNOWN_ROOT: [^\n]*\n[^\n]*\n[^\n]*\nsite\.rules:8:12: warning: /);
  t.match(both.stderr, /\n1 error and 2 warnings in 2 files\n$/);

  // Every model there: no warning, the summary as ever.
  writeModel(join(dir, 'models'), 'bearng');
  writeModel(join(dir, 'models'), 'broken');
  const clean = await runCli(['rules', 'check', 'site.rules', '--models', 'models'], dir);
  t.equal(clean.status, 0);
  t.equal(clean.stdout, '4 rules in 1 file: OK\n');
  t.equal(clean.stderr, '');

  const missing = await runCli(['rules', 'check', 'site.rules', '--models', 'nowhere'], dir);
  t.equal(missing.status, 2);
  t.match(missing.stderr, /^--models nowhere: no such directory.*\(E_USAGE\)\n$/);
});

const TESTED = `rule bearing_check
when msg.topic matches "devices/+/vibration"
then infer("bearing")
end

rule bearing_fault
when msg.topic matches "ml/bearing/+" and payload.label == "fault"
then emit("bearing_fault", { device: msg.deviceId, score: payload.score })
end
`;

interface Record_ {
  id: string;
  topic: string;
  parentId?: string;
  hops?: number;
  payload?: { model: string; version: string; label: string; score: number; scores: Record<string, number>; source: string };
  fired: Array<{ rule: string; actions: Array<Record<string, unknown>> }>;
  uplink: Array<{ topic: string; priority: string; payload: unknown }>;
  errors?: Array<{ rule: string; error: string }>;
  notMade?: string;
}

const lines = (stdout: string): Record_[] =>
  stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record_);

t.test('rules test --models: the model runs, its result is the derived message, and the rules see it', async (t) => {
  const input = [
    { topic: 'devices/d1/vibration', payload: { samples: samples(2) } },
    { topic: 'devices/d2/vibration', payload: { samples: samples(-2) } },
    { topic: 'devices/d3/vibration', payload: { samples: [1, 2] } },
  ]
    .map((m) => JSON.stringify(m))
    .join('\n');
  const dir = t.testdir({ 'site.rules': TESTED, 'in.jsonl': input + '\n' });
  writeModel(join(dir, 'models'), 'bearing', { version: '2026-01-02' });

  const r = await runCli(['rules', 'test', 'site.rules', '--input', 'in.jsonl', '--models', 'models'], dir);
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stderr, '');
  const out = lines(r.stdout);
  t.same(
    out.map((x) => x.topic),
    ['devices/d1/vibration', 'ml/bearing/d1', 'devices/d2/vibration', 'ml/bearing/d2', 'devices/d3/vibration'],
    'each result right after the message it came from',
  );
  const [d1, r1, d2, r2, d3] = out as [Record_, Record_, Record_, Record_, Record_];
  t.same(d1.fired, [{ rule: 'bearing_check', actions: [{ action: 'infer', model: 'bearing' }] }]);
  t.match(r1, { parentId: d1.id, hops: 1, payload: { model: 'bearing', version: '2026-01-02', label: 'fault', source: d1.id } });
  t.ok(r1.payload!.score > 0.99 && r1.payload!.scores.healthy! < 0.01, 'a clear fault');
  t.same(
    r1.fired,
    [{ rule: 'bearing_fault', actions: [{ action: 'emit', name: 'bearing_fault', data: { device: 'd1', score: r1.payload!.score } }] }],
    'the result is evaluated by the rules',
  );
  t.same(r1.uplink, [{ topic: 'events/bearing_fault', priority: 'high', payload: { device: 'd1', score: r1.payload!.score } }]);
  t.match(r2, { parentId: d2.id, hops: 1, payload: { label: 'healthy' }, fired: [], uplink: [] });
  t.same(d3.errors, [{ rule: 'bearing_check', error: 'infer("bearing"): payload.samples has 2 values; model "bearing" takes 8' }]);

  // Text: the result under the message, with where it came from.
  const text = await runCli(['rules', 'test', 'site.rules', '--input', 'in.jsonl', '--models', 'models', '--format', 'text'], dir);
  t.equal(text.status, 0);
  t.match(
    text.stdout,
    /^ml\/bearing\/d1 \(ts 0, d1\) made by rule bearing_check from \S+, hops 1\n {2}payload \{"model":"bearing","version":"2026-01-02","label":"fault",/m,
  );
  t.match(text.stdout, /^ {2}fired bearing_fault: emit\(name="bearing_fault"/m);

  // Without models, as before: infer is a planned action, nothing runs.
  const planned = await runCli(['rules', 'test', 'site.rules', '--input', 'in.jsonl'], dir);
  t.equal(planned.status, 0);
  t.same(
    lines(planned.stdout).map((x) => x.topic),
    ['devices/d1/vibration', 'devices/d2/vibration', 'devices/d3/vibration'],
  );
  t.notOk(
    lines(planned.stdout).some((x) => x.errors),
    'no model, no refusal',
  );

  // models.dir of the configuration runs them too; limits.maxHops 0 leaves no room for a result.
  writeFileSync(join(dir, 'edge-proxy.yaml'), 'models: { dir: ./models }\nlimits: { maxHops: 0 }\n');
  const capped = await runCli(['rules', 'test', 'site.rules', '--input', 'in.jsonl', '--config', 'edge-proxy.yaml'], dir);
  t.equal(capped.status, 0, capped.stderr);
  const c = lines(capped.stdout);
  t.equal(c.length, 5);
  t.match(c[1], { topic: 'ml/bearing/d1', hops: 1, payload: { label: 'fault' }, notMade: /^hops 1 is over limits\.maxHops \(0\)/ });
  t.notOk(c[1]!.fired, 'a result that is not made is not evaluated');

  // A model in the directory that does not load: said on stderr, and each infer() of it refused.
  writeModel(join(dir, 'bad-models'), 'bearing');
  writeFileSync(
    join(dir, 'bad-models/bearing.yaml'),
    'input: { tensor: samples_in, from: payload.samples, length: 8 }\noutput: { tensor: probabilities, labels: [healthy, fault] }\n',
  );
  const bad = await runCli(['rules', 'test', 'site.rules', '--input', 'in.jsonl', '--models', 'bad-models'], dir);
  t.equal(bad.status, 0);
  t.match(bad.stderr, /^model "bearing" not loaded: .*input tensor "samples_in" is not in .*bearing\.onnx \(its inputs: input\)/m);
  const b = lines(bad.stdout);
  t.equal(b.length, 3, 'no result');
  t.match(b[0]!.errors, [{ rule: 'bearing_check', error: /^infer\("bearing"\): no model "bearing" is loaded/ }]);
});

t.test('status: a running proxy shows its models, their results by label and their latency', async (t) => {
  const dir = t.testdir();
  mkdirSync(join(dir, 'rules'), { recursive: true });
  writeFileSync(join(dir, 'rules', 'ml.rules'), TESTED);
  writeModel(join(dir, 'models'), 'bearing', { version: '2026-03-04' });
  // Its yaml but not its ONNX file: listed, with why it does not load.
  writeFileSync(
    join(dir, 'models/pump.yaml'),
    'input: { tensor: input, from: payload.samples, length: 8 }\noutput: { tensor: p, labels: [ok, bad] }\n',
  );
  const proxy = await startProxy(dir, { models: { dir: join(dir, 'models') } });
  t.teardown(() => proxy.stop());

  const watcher = await connectClient(proxy.ports.mqtt, { clientId: 'watcher' });
  t.teardown(() => watcher.endAsync());
  const results = await collect(watcher, 'ml/bearing/#', 0);
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'dev-1' });
  t.teardown(() => device.endAsync());
  for (const v of [3, 2, -1]) await device.publishAsync('devices/dev-1/vibration', JSON.stringify({ samples: samples(v) }), { qos: 1 });
  await eventually('three results', () => results.messages.length === 3);
  t.same(
    results.json<{ label: string }>().map((x) => x.label),
    ['fault', 'fault', 'healthy'],
  );

  const r = await runCli(['status', '--config', proxy.configFile], dir);
  t.equal(r.status, 0, r.stderr);
  t.match(
    r.stdout,
    /^models: {3}bearing \(version 2026-03-04\): ready; 3 inferences \(healthy 1, fault 2\), 0 errors, 0 shed, 0 queued; arrival to result p50 \d+\.\d+ ms, p99 \d+\.\d+ ms$/m,
  );
  t.match(r.stdout, /^ {10}pump: NOT loaded: pump\.yaml has no pump\.onnx beside it/m);
  const json = await runCli(['status', '--config', proxy.configFile, '--json'], dir);
  t.match(JSON.parse(json.stdout), {
    models: [
      { name: 'bearing', state: 'ready', version: '2026-03-04', inferences: 3, byLabel: { healthy: 1, fault: 2 }, errors: 0 },
      { name: 'pump', state: 'failed' },
    ],
  });

  // An input the model refuses is counted as the model's error.
  await device.publishAsync('devices/dev-1/vibration', JSON.stringify({ samples: [1] }), { qos: 1 });
  await eventually('the refusal counted', async () => (await proxy.metric('edge_inference_errors_total', 'reason="input"')) === 1);
  const after = await runCli(['status', '--config', proxy.configFile], dir);
  t.match(after.stdout, /bearing \(version 2026-03-04\): ready; 3 inferences \(healthy 1, fault 2\), 1 error, 0 shed/);
});
