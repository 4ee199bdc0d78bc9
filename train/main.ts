/**
 * `npm run train`: builds the shipped bearing model from simulated data and writes
 * `<out>/bearing.onnx`, `<out>/bearing.yaml` and `<out>/bearing-report.md` (default out: models/).
 *
 * Usage: node dist/train/main.js [--out DIR]
 */
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { bearingModelBytes } from './bearing-graph.js';
import { generateSet, type SetSpec } from './dataset.js';
import { evaluate, type LabelledFeatures } from './evaluate.js';
import { FEATURE_COUNT, WINDOW, featuresOf } from './features.js';
import { predict, roundToFloat32, toMatrix, trainMlp } from './mlp.js';
import { BATCH, HELD_OUT_SET, MODEL_NAME, MODEL_VERSION, NETWORK, TRAINING_SET } from './recipe.js';
import { renderReport } from './report.js';
import { PROBABILITY_TOLERANCE, compareWithOrt } from './verify.js';

const USAGE = 'usage: npm run train [-- --out DIR]   (default DIR: models/)';

function parseArgs(argv: readonly string[]): { out: string } {
  let out = 'models';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--out' && argv[i + 1] !== undefined) out = argv[++i]!;
    else if (a.startsWith('--out=')) out = a.slice('--out='.length);
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else {
      console.error(`unknown argument "${a}"\n${USAGE}`);
      process.exit(2);
    }
  }
  return { out };
}

const seconds = (t0: number): string => `${((performance.now() - t0) / 1000).toFixed(1)} s`;

function load(spec: SetSpec): { windows: number[][]; data: LabelledFeatures[] } {
  const windows: number[][] = [];
  const data: LabelledFeatures[] = [];
  for (const ex of generateSet(spec)) {
    windows.push(ex.samples);
    data.push({ features: featuresOf(ex.samples), label: ex.label, stage: ex.stage });
  }
  return { windows, data };
}

function modelYaml(): string {
  return [
    `# Written by \`npm run train\` (train/main.ts) with ${MODEL_NAME}.onnx; change the trainer, not this file.`,
    `name: ${MODEL_NAME}`,
    `version: "${MODEL_VERSION}"`,
    `input:`,
    `  tensor: input`,
    `  from: payload.samples`,
    `  length: ${WINDOW}`,
    `output:`,
    `  tensor: probabilities`,
    `  labels: [healthy, fault]`,
    `batch: { maxSize: ${BATCH.maxSize}, maxDelayMs: ${BATCH.maxDelayMs} }`,
    ``,
  ].join('\n');
}

async function main(): Promise<void> {
  const { out } = parseArgs(process.argv.slice(2));
  const start = performance.now();

  let t0 = performance.now();
  const training = load(TRAINING_SET);
  console.log(`training set: ${training.data.length} windows from ${TRAINING_SET.machines} machines, features in ${seconds(t0)}`);
  t0 = performance.now();
  const heldOut = load(HELD_OUT_SET);
  console.log(`held-out set: ${heldOut.data.length} windows from ${HELD_OUT_SET.machines} machines, features in ${seconds(t0)}`);

  t0 = performance.now();
  let finalLoss = 0;
  const trained = trainMlp(
    toMatrix(
      training.data.map((d) => d.features),
      FEATURE_COUNT,
    ),
    training.data.map((d) => d.label),
    {
      ...NETWORK,
      onEpoch: (epoch, loss) => {
        finalLoss = loss;
        if (epoch % 25 === 0 || epoch === NETWORK.epochs) console.log(`  epoch ${epoch}/${NETWORK.epochs}: loss ${loss.toFixed(4)}`);
      },
    },
  );
  console.log(`trained in ${seconds(t0)}`);

  // Evaluate exactly the weights the file holds.
  const mlp = roundToFloat32(trained);
  const trainEval = evaluate(mlp, training.data);
  const heldOutEval = evaluate(mlp, heldOut.data);
  console.log(
    `held-out: accuracy ${heldOutEval.accuracy.toFixed(4)}, false alarms ${(100 * heldOutEval.falseAlarmRate).toFixed(1)} %, ` +
      heldOutEval.stages.map((s) => `${s.name} ${(100 * s.rate).toFixed(1)} %`).join(', '),
  );

  const model = bearingModelBytes(mlp);
  t0 = performance.now();
  const agreement = await compareWithOrt(
    model,
    heldOut.windows,
    heldOut.data.map((d) => predict(mlp, d.features)),
  );
  console.log(
    `onnxruntime vs TypeScript on ${agreement.windows} held-out windows: max |dp| ${agreement.maxAbsDiff.toExponential(2)}, ` +
      `${agreement.labelDisagreements} labels differ (${seconds(t0)})`,
  );
  if (agreement.maxAbsDiff > PROBABILITY_TOLERANCE || agreement.labelDisagreements > 0) {
    throw new Error('the ONNX graph does not compute what the trainer evaluated; nothing written');
  }

  const report = renderReport({
    name: MODEL_NAME,
    version: MODEL_VERSION,
    nodeMajor: process.versions.node.split('.')[0]!,
    training: { spec: TRAINING_SET, evaluation: trainEval, finalLoss },
    heldOut: { spec: HELD_OUT_SET, evaluation: heldOutEval },
    network: NETWORK,
    modelBytes: model.length,
    modelSha256: createHash('sha256').update(model).digest('hex'),
  });
  mkdirSync(out, { recursive: true });
  const files: [string, Uint8Array | string][] = [
    [`${MODEL_NAME}.onnx`, model],
    [`${MODEL_NAME}.yaml`, modelYaml()],
    [`${MODEL_NAME}-report.md`, report],
  ];
  for (const [name, content] of files) {
    writeFileSync(path.join(out, name), content);
    console.log(`wrote ${path.join(out, name)}`);
  }
  console.log(`done in ${seconds(start)}`);
}

main().catch((err: unknown) => {
  console.error(`train: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
