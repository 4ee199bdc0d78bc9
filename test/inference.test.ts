// Local inference through the real proxy: models loaded from the models directory by onnxruntime-node,
// fed by infer() in rules from MQTT devices, results seen by a local MQTT subscriber.
import t, { type Test } from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { collect, connectClient, type Collected } from './helpers/clients.js';
import { eventually, sleep } from './helpers/ports.js';
import { meanModel, meanModelYaml, writeModel } from './helpers/models.js';

interface Result {
  model: string;
  version: string;
  label: string;
  score: number;
  scores: Record<string, number>;
  source: string;
  latencyMs: number;
}

const RULES = `
rule run_mean
when msg.topic matches "devices/+/values"
then infer("mean")
end

rule run_score
when msg.topic matches "devices/+/score"
then infer("score", to = "results/" + msg.deviceId + "/score")
end

rule run_window
when msg.topic matches "devices/+/level"
then infer("win")
end

rule run_missing
when msg.topic matches "devices/+/nomodel"
then infer("nosuch")
end

rule on_fault
when msg.topic matches "ml/mean/+" and payload.label == "fault"
then publish("devices/" + msg.deviceId + "/cmd/rate", { rate: 5, score: payload.score })
end
`;

async function setup(
  t: Test,
  config: Record<string, unknown> = {},
): Promise<{ proxy: ProxyProcess; models: string; client: MqttClient; results: Collected }> {
  const dir = t.testdir({ rules: { 'infer.rules': RULES } });
  const models = join(dir, 'models');
  mkdirSync(models);
  writeModel(models, 'mean', meanModel({ length: 8 }), meanModelYaml('mean', { length: 8, version: 'v1' }));
  writeModel(models, 'score', meanModel({ length: 4, output: 'score' }), meanModelYaml('score', { length: 4, output: 'score' }));
  writeModel(models, 'win', meanModel({ length: 4 }), meanModelYaml('win', { length: 4, window: { size: 4, stride: 2 } }));
  const proxy = await startProxy(dir, { models: { dir: models }, ...config });
  t.teardown(() => proxy.stop());
  const client = await connectClient(proxy.ports.mqtt, { clientId: 'watcher' });
  t.teardown(() => client.endAsync());
  const results = await collect(client, '#');
  return { proxy, models, client, results };
}

const on = (c: Collected, prefix: string): Result[] =>
  c.messages.filter((m) => m.topic.startsWith(prefix)).map((m) => JSON.parse(m.payload.toString()) as Result);

t.test('infer() runs the model and its result re-enters the rules as ml/<model>/<deviceId>', async (t) => {
  const { proxy, client, results } = await setup(t);
  const dev = await connectClient(proxy.ports.mqtt, { clientId: 'pump-1', username: 'pump-1' });
  t.teardown(() => dev.endAsync());
  await dev.publishAsync('devices/pump-1/values', JSON.stringify({ values: [1, 2, 3, 4, 5, 6, 7, 8, 99] }), { qos: 1 });
  await dev.publishAsync('devices/pump-1/values', JSON.stringify({ values: [-1, -2, -3, -4, -5, -6, -7, -8] }), { qos: 1 });
  await eventually('two results', () => on(results, 'ml/mean/pump-1').length === 2);
  const [hot, cold] = on(results, 'ml/mean/pump-1');
  t.match(hot, { model: 'mean', version: 'v1', label: 'fault', scores: { healthy: Number, fault: Number } }, 'a mean of 4.5 is fault');
  t.ok(hot!.score > 0.99 && hot!.score === hot!.scores.fault, "score is the chosen label's");
  t.equal(cold!.label, 'healthy');
  t.ok(hot!.latencyMs >= 0 && hot!.latencyMs < 5000, 'latencyMs measured from arrival');
  // Delivered to local subscribers once committed, which may be after the model answered.
  await eventually(
    'both inputs delivered locally too',
    () => results.messages.filter((m) => m.topic === 'devices/pump-1/values').length === 2,
  );
  // The result names its input: the message id the proxy gave it (the uplink envelope's id).
  t.match(hot!.source, /^[0-9A-Z]{26}$/);
  await eventually('the fault result fired a rule', () => results.messages.some((m) => m.topic === 'devices/pump-1/cmd/rate'));
  const cmd = results.messages.find((m) => m.topic === 'devices/pump-1/cmd/rate');
  t.same(JSON.parse(cmd!.payload.toString()), { rate: 5, score: hot!.score }, 'a rule on ml/mean/+ acted on the result');
  t.equal(await proxy.metric('edge_inference_total', 'label="fault"'), 1);
  t.equal(await proxy.metric('edge_inference_total', 'label="healthy"'), 1);
  const status = (await (await fetch(`http://127.0.0.1:${proxy.ports.admin}/api/v1/status`)).json()) as {
    models: Array<Record<string, unknown>>;
  };
  const mean = status.models.find((m) => m.name === 'mean');
  t.match(mean, {
    state: 'ready',
    version: 'v1',
    inferences: 2,
    byLabel: { fault: 1, healthy: 1 },
    input: { tensor: 'input', length: 8, source: 'payload.values' },
  });
  void client;
});

t.test("a single-score model with a threshold, and to = a topic of the rule's choosing", async (t) => {
  const { proxy, results } = await setup(t);
  const dev = await connectClient(proxy.ports.mqtt, { clientId: 'fan-2', username: 'fan-2' });
  t.teardown(() => dev.endAsync());
  await dev.publishAsync('devices/fan-2/score', JSON.stringify({ values: [3, 3, 3, 3] }), { qos: 1 });
  await dev.publishAsync('devices/fan-2/score', JSON.stringify({ values: [-3, -3, -3, -3] }), { qos: 1 });
  await eventually('two results', () => on(results, 'results/fan-2/score').length === 2);
  const [high, low] = on(results, 'results/fan-2/score');
  t.equal(high!.label, 'fault', 'sigmoid(3) = 0.95 >= 0.5');
  t.ok(Math.abs(high!.scores.fault! - 1 / (1 + Math.exp(-3))) < 1e-5);
  t.equal(low!.label, 'healthy');
  t.ok(Math.abs(low!.score - (1 - 1 / (1 + Math.exp(3)))) < 1e-5, 'the healthy score is 1 - the fault score');
});

t.test('a window of one field per device: a run each stride once size values are there', async (t) => {
  const { proxy, results } = await setup(t);
  const a = await connectClient(proxy.ports.mqtt, { clientId: 'a', username: 'a' });
  const b = await connectClient(proxy.ports.mqtt, { clientId: 'b', username: 'b' });
  t.teardown(() => Promise.all([a.endAsync(), b.endAsync()]));
  for (const v of [5, 5, 5]) await a.publishAsync('devices/a/level', JSON.stringify({ v }), { qos: 1 });
  for (const v of [-5, -5, -5, -5]) await b.publishAsync('devices/b/level', JSON.stringify({ v }), { qos: 1 });
  await eventually('b has a full window', () => on(results, 'ml/win/b').length === 1);
  t.equal(on(results, 'ml/win/a').length, 0, 'three values are not a window of four; windows are per device');
  await a.publishAsync('devices/a/level', JSON.stringify({ v: 5 }), { qos: 1 });
  await eventually('a has a full window', () => on(results, 'ml/win/a').length === 1);
  await a.publishAsync('devices/a/level', JSON.stringify({ v: -50 }), { qos: 1 });
  await sleep(300);
  t.equal(on(results, 'ml/win/a').length, 1, 'one new value is less than the stride of 2');
  await a.publishAsync('devices/a/level', JSON.stringify({ v: -50 }), { qos: 1 });
  await eventually('a runs again after the stride', () => on(results, 'ml/win/a').length === 2);
  t.same(
    on(results, 'ml/win/a').map((r) => r.label),
    ['fault', 'healthy'],
    'the second window is [5, 5, -50, -50]: the last four values, oldest first',
  );
  t.equal(on(results, 'ml/win/b')[0]!.label, 'healthy');
  t.ok((await proxy.metric('edge_inference_window_bytes')) > 0);
});

t.test('bad input and an unknown model: refused with a reason, counted, the rest goes on', async (t) => {
  const { proxy, results } = await setup(t);
  const dev = await connectClient(proxy.ports.mqtt, { clientId: 'c', username: 'c' });
  t.teardown(() => dev.endAsync());
  await dev.publishAsync('devices/c/values', JSON.stringify({ values: [1, 2, 3] }), { qos: 1 });
  await dev.publishAsync('devices/c/values', JSON.stringify({ other: 1 }), { qos: 1 });
  await dev.publishAsync('devices/c/values', 'not json at all', { qos: 1 });
  await dev.publishAsync('devices/c/values', JSON.stringify({ values: [1, 2, 3, 4, 5, 6, 7, 'x'] }), { qos: 1 });
  await dev.publishAsync('devices/c/nomodel', JSON.stringify({ values: [1] }), { qos: 1 });
  await dev.publishAsync('devices/c/values', JSON.stringify({ values: [1, 1, 1, 1, 1, 1, 1, 1] }), { qos: 1 });
  await eventually('the good input still gets its result', () => on(results, 'ml/mean/c').length === 1);
  t.equal(await proxy.metric('edge_inference_errors_total', 'reason="input"'), 4, 'short, missing, not JSON, not a number');
  t.equal(await proxy.metric('edge_inference_errors_total', 'reason="unknown_model"'), 1);
  t.equal(await proxy.metric('edge_rule_errors_total', 'rule="run_missing"'), 1);
  const logged = proxy.logs.filter((l) => l.rule === 'run_mean' || l.rule === 'run_missing').map((l) => String(l.err));
  t.ok(
    logged.some((e) => e.includes('payload.values has 3 values; model "mean" takes 8')),
    logged.join('\n'),
  );
  t.ok(
    logged.some((e) => /no model "nosuch" is loaded \(loaded: mean, score, win\)/.test(e)),
    logged.join('\n'),
  );
});

t.test('inputs from many devices run together in batches', async (t) => {
  const { proxy, results } = await setup(t);
  const devices = await Promise.all(
    Array.from({ length: 20 }, (_, i) => connectClient(proxy.ports.mqtt, { clientId: `d${i}`, username: `d${i}` })),
  );
  t.teardown(() => Promise.all(devices.map((d) => d.endAsync())));
  const values = JSON.stringify({ values: [1, 1, 1, 1, 1, 1, 1, 1] });
  await Promise.all(
    devices.flatMap((d, i) => Array.from({ length: 10 }, () => d.publishAsync(`devices/d${i}/values`, values, { qos: 0 }))),
  );
  await eventually('200 results', () => on(results, 'ml/mean/').length === 200);
  const runs = await proxy.metric('edge_inference_batch_size_count', 'model="mean"');
  const inputs = await proxy.metric('edge_inference_batch_size_sum', 'model="mean"');
  t.equal(inputs, 200);
  t.ok(runs < 200 / 2, `200 inputs in ${runs} model runs: batches above 1 (maxSize 32, maxDelayMs 5)`);
  t.ok((await proxy.metric('edge_inference_batch_size_bucket', 'le="1"')) < runs, 'not every batch was a batch of one');
});

t.test('the queue is bounded: past inference.queueSize the oldest inputs are shed and counted', async (t) => {
  const rules = 'rule burst\nwhen msg.topic matches "devices/+/values"\nthen infer("mean", to = "res/" + payload.seq)\nend\n';
  const dir = t.testdir({ rules: { 'burst.rules': rules } });
  const models = join(dir, 'models');
  mkdirSync(models);
  // A batch of one at a time, so that a burst outruns the model.
  writeModel(models, 'mean', meanModel({ length: 8 }), meanModelYaml('mean', { length: 8, batch: { maxSize: 1, maxDelayMs: 0 } }));
  const proxy = await startProxy(dir, { models: { dir: models }, inference: { queueSize: 4 } });
  t.teardown(() => proxy.stop());
  const watcher = await connectClient(proxy.ports.mqtt, { clientId: 'watcher' });
  t.teardown(() => watcher.endAsync());
  const results = await collect(watcher, 'res/#');
  const dev = await connectClient(proxy.ports.mqtt, { clientId: 'burst', username: 'burst' });
  t.teardown(() => dev.endAsync());
  const N = 300;
  await Promise.all(
    Array.from({ length: N }, (_, seq) =>
      dev.publishAsync('devices/burst/values', JSON.stringify({ seq, values: [1, 1, 1, 1, 1, 1, 1, 1] }), { qos: 0 }),
    ),
  );
  let shed = 0;
  await eventually('every input answered or shed', async () => {
    shed = await proxy.metric('edge_inference_shed_total', 'model="mean"');
    return shed + results.messages.length === N;
  });
  const answered = new Set(results.messages.map((m) => Number(m.topic.slice('res/'.length))));
  t.ok(shed > N / 2, `${shed} of ${N} shed`);
  t.ok(
    [N - 4, N - 3, N - 2, N - 1].every((seq) => answered.has(seq)),
    'the newest four (the queue) were answered',
  );
  const middle = [...Array(N - 8).keys()].map((i) => i + 4).filter((seq) => !answered.has(seq));
  t.ok(middle.length > N / 2, 'older inputs were the ones shed');
  t.equal(await proxy.metric('edge_inference_queue_bytes'), 0, 'nothing held once the queue is empty');
});

t.test('windows are bounded in bytes: the least recently fed goes, a window larger than the bound is refused', async (t) => {
  const rules = [
    'rule w\nwhen msg.topic matches "devices/+/level"\nthen infer("win")\nend',
    'rule big\nwhen msg.topic matches "devices/+/big"\nthen infer("big")\nend',
    '',
  ].join('\n');
  const dir = t.testdir({ rules: { 'w.rules': rules } });
  const models = join(dir, 'models');
  mkdirSync(models);
  writeModel(models, 'win', meanModel({ length: 4 }), meanModelYaml('win', { length: 4, window: { size: 4, stride: 1 } }));
  writeModel(models, 'big', meanModel({ length: 400 }), meanModelYaml('big', { length: 400, window: { size: 400, stride: 1 } }));
  // 1 KiB holds five windows of four values (about 200 bytes each) and no window of 400 values.
  const proxy = await startProxy(dir, { models: { dir: models }, inference: { windowBytes: 1024 } });
  t.teardown(() => proxy.stop());
  const watcher = await connectClient(proxy.ports.mqtt, { clientId: 'watcher' });
  t.teardown(() => watcher.endAsync());
  const results = await collect(watcher, 'ml/#');
  const ids = [...Array(6).keys()]
    .map((d) => `w${d}`)
    .concat(
      [...Array(5).keys()].map((d) => `v${d}`),
      ['x'],
    );
  const dev = Object.fromEntries(
    await Promise.all(ids.map(async (id) => [id, await connectClient(proxy.ports.mqtt, { clientId: id, username: id })] as const)),
  );
  t.teardown(() => Promise.all(Object.values(dev).map((c) => c.endAsync())));
  // Six devices in turn: each new window evicts the least recently fed, so none ever fills.
  for (let round = 0; round < 4; round++)
    for (let d = 0; d < 6; d++) await dev[`w${d}`]!.publishAsync(`devices/w${d}/level`, JSON.stringify({ v: 1 }), { qos: 1 });
  t.equal(await proxy.metric('edge_inference_windows_evicted_total', 'model="win"'), 24 - 5, 'every new window evicted the oldest');
  t.ok((await proxy.metric('edge_inference_window_bytes')) <= 1024);
  // Five devices fit: their windows fill and run.
  for (let round = 0; round < 4; round++)
    for (let d = 0; d < 5; d++) await dev[`v${d}`]!.publishAsync(`devices/v${d}/level`, JSON.stringify({ v: 1 }), { qos: 1 });
  await eventually('five windows ran', () => results.messages.filter((m) => m.topic.startsWith('ml/win/v')).length === 5);
  t.equal(results.messages.filter((m) => m.topic.startsWith('ml/win/w')).length, 0, 'the evicted windows never ran');
  await dev.x!.publishAsync('devices/x/big', JSON.stringify({ v: 1 }), { qos: 1 });
  await eventually('refused', async () => (await proxy.metric('edge_inference_errors_total', 'reason="window_too_large"')) === 1);
  t.ok(
    proxy.logs.some((l) => l.rule === 'big' && String(l.err).includes('more than inference.windowBytes (1024)')),
    'the rule is told why',
  );
});

t.test('bad model files are refused with a clear error; the proxy and the running version go on', async (t) => {
  const { proxy, models, results } = await setup(t);
  const dev = await connectClient(proxy.ports.mqtt, { clientId: 'e', username: 'e' });
  t.teardown(() => dev.endAsync());
  const errors = (): string[] => proxy.logs.filter((l) => l.code === 'E_MODEL').map((l) => String(l.msg));

  // A corrupt file in place of the running model.
  writeFileSync(join(models, 'mean.onnx'), Buffer.from('this is not an onnx file'));
  await eventually('the corrupt file is refused', () => errors().some((e) => e.includes('mean.onnx: ONNX Runtime cannot load it')));
  t.ok(errors().some((e) => e.includes('version v1 keeps running')));
  // A model whose input is not the length its yaml says.
  writeModel(models, 'mean', meanModel({ length: 8, inputDims: ['batch', 16] }), meanModelYaml('mean', { length: 8, version: 'v2' }));
  await eventually('the wrong shape is refused', () =>
    errors().some((e) => e.includes('input "input" has shape [batch,16] but') && e.includes('says input.length 8')),
  );
  // A yaml that names a tensor the model does not have.
  writeModel(models, 'mean', meanModel({ length: 8 }), meanModelYaml('mean', { length: 8, version: 'v3', tensor: 'samples' }));
  await eventually('the missing tensor is refused', () =>
    errors().some((e) => e.includes('input tensor "samples" is not in') && e.includes('(its inputs: input)')),
  );
  // A yaml with a syntax problem: file:line:col.
  writeFileSync(
    join(models, 'mean.yaml'),
    'name: mean\ninput: { tensor: input, from: payload.values, length: eight }\noutput: { tensor: probabilities, labels: [a, b] }\n',
  );
  await eventually('the bad yaml is refused at its line and column', () =>
    errors().some((e) => /mean\.yaml:2:\d+: input\.length: must be a whole number/.test(e)),
  );

  await dev.publishAsync('devices/e/values', JSON.stringify({ values: [1, 1, 1, 1, 1, 1, 1, 1] }), { qos: 1 });
  await eventually('v1 still answers', () => on(results, 'ml/mean/e').length === 1);
  t.equal(on(results, 'ml/mean/e')[0]!.version, 'v1', 'none of the bad versions replaced the good one');
  t.ok((await proxy.metric('edge_inference_errors_total', 'reason="load"')) >= 4);
  const status = (await (await fetch(`http://127.0.0.1:${proxy.ports.admin}/api/v1/status`)).json()) as {
    models: Array<Record<string, unknown>>;
  };
  t.match(
    status.models.find((m) => m.name === 'mean'),
    { state: 'ready', version: 'v1', error: /input\.length/ },
  );

  // A good replacement is taken.
  writeModel(models, 'mean', meanModel({ length: 8, bias: -100 }), meanModelYaml('mean', { length: 8, version: 'v4' }));
  await eventually('v4 loaded', () => proxy.logs.some((l) => typeof l.msg === 'string' && l.msg.includes('version v4 replaces v1')));
  await dev.publishAsync('devices/e/values', JSON.stringify({ values: [1, 1, 1, 1, 1, 1, 1, 1] }), { qos: 1 });
  await eventually('v4 answers', () => on(results, 'ml/mean/e').length === 2);
  t.match(on(results, 'ml/mean/e')[1], { version: 'v4', label: 'healthy' });
});

t.test('a model replaced while inputs flow: none lost, each runs on the version that took it', async (t) => {
  const { proxy, models, results } = await setup(t);
  // v1 reads payload.values (8 values, mean +1: fault), v2 payload.other (4 values, mean -1: healthy).
  // An input taken by v1 but run by v2 would read the wrong field: healthy labelled v1, or fault v2.
  // setup() loaded v1: payload.values, 8 values.
  const devices = await Promise.all(
    Array.from({ length: 5 }, (_, i) => connectClient(proxy.ports.mqtt, { clientId: `f${i}`, username: `f${i}` })),
  );
  t.teardown(() => Promise.all(devices.map((d) => d.endAsync())));
  const body = JSON.stringify({ values: [1, 1, 1, 1, 1, 1, 1, 1], other: [-1, -1, -1, -1] });
  let sent = 0;
  const flow = (async () => {
    for (let round = 0; round < 60; round++) {
      await Promise.all(devices.map((d, i) => d.publishAsync(`devices/f${i}/values`, body, { qos: 1 })));
      sent += devices.length;
      await sleep(20);
    }
  })();
  await sleep(400);
  writeModel(models, 'mean', meanModel({ length: 4 }), meanModelYaml('mean', { length: 4, version: 'v2', from: 'payload.other' }));
  await flow;
  await eventually('every input answered', () => on(results, 'ml/mean/f').length === sent);
  const all = on(results, 'ml/mean/f');
  const wrong = all.filter((r) => (r.version === 'v1' ? r.label !== 'fault' : r.label !== 'healthy'));
  t.equal(wrong.length, 0, 'every result is what its version computes from its own field');
  t.ok(all.some((r) => r.version === 'v1') && all.some((r) => r.version === 'v2'), 'both versions answered');
  const firstV2 = all.findIndex((r) => r.version === 'v2');
  t.notOk(
    all.slice(firstV2).some((r) => r.version === 'v1'),
    'once v2 answers, v1 never does again',
  );
  t.equal(await proxy.metric('edge_inference_errors_total'), 0, 'no input lost to the swap');
});
