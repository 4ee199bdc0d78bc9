/**
 * The training report committed beside the model. Every figure is computed in TypeScript float64
 * from fixed seeds and printed with fixed digits, and nothing depends on the clock or the host, so
 * retraining reproduces the file byte for byte (timings go to the console only).
 */
import { FAULT_STAGES, NOISE_RANGE_G, NOISE_STRATA, SHAFT_RANGE_HZ, SHAFT_STRATA, strataRanges, type SetSpec } from './dataset.js';
import type { Evaluation } from './evaluate.js';
import { FEATURE_NAMES, SAMPLE_RATE_HZ, WINDOW } from './features.js';
import type { TrainOptions } from './mlp.js';

export interface ReportInput {
  name: string;
  version: string;
  nodeMajor: string;
  training: { spec: SetSpec; evaluation: Evaluation; finalLoss: number };
  heldOut: { spec: SetSpec; evaluation: Evaluation };
  network: Omit<TrainOptions, 'onEpoch'>;
  modelBytes: number;
  modelSha256: string;
}

const pct = (x: number): string => `${(100 * x).toFixed(1)} %`;
const f4 = (x: number): string => x.toFixed(4);
const ranges = (r: [number, number][], digits: number, unit: string): string =>
  r.map(([a, b]) => `${a.toFixed(digits)}-${b.toFixed(digits)}`).join(', ') + ` ${unit}`;

function setRow(spec: SetSpec, e: Evaluation): string {
  const healthy = e.trueNegatives + e.falsePositives;
  const faulty = e.truePositives + e.falseNegatives;
  return (
    `| ${spec.name} | ${spec.seed} | ${spec.machines} | ${e.windows} (${healthy} healthy, ${faulty} fault) | ` +
    `${ranges(strataRanges(SHAFT_RANGE_HZ, SHAFT_STRATA, spec.strata), 1, 'Hz')} | ` +
    `${ranges(strataRanges(NOISE_RANGE_G, NOISE_STRATA, spec.strata), 3, 'g')} |`
  );
}

export function renderReport(r: ReportInput): string {
  const te = r.heldOut.evaluation;
  const tr = r.training.evaluation;
  const n = r.network;
  const lines = [
    `# Bearing fault model: training report`,
    ``,
    `Written by \`npm run train\` (train/main.ts); running it again reproduces this file, \`${r.name}.onnx\` and \`${r.name}.yaml\` byte for byte.`,
    ``,
    `- Model: \`${r.name}\` version \`${r.version}\`, ${r.modelBytes} bytes, sha256 \`${r.modelSha256}\``,
    `- Trained with Node ${r.nodeMajor} (the weights depend on V8's Math functions; retrain with another major if the bytes differ)`,
    `- Input: ${WINDOW} raw acceleration samples (g) at ${SAMPLE_RATE_HZ} Hz, ${(WINDOW / SAMPLE_RATE_HZ) * 1000} ms; output: probabilities [healthy, fault], the label is the arg-max`,
    ``,
    `## Data`,
    ``,
    `Windows from firmware-sim/vibration.ts: one simulated machine per seed (own harmonics, resonance, damping, slip), ` +
      `${r.training.spec.windowsPerMachine} consecutive windows each; half the machines healthy, half with an outer-race fault, ` +
      `the fault stages taking turns. Held-out machines have other seeds and run at shaft speeds and noise levels from strata ` +
      `that training never saw.`,
    ``,
    `| set | seed | machines | windows | shaft speed | noise |`,
    `|---|---|---|---|---|---|`,
    setRow(r.training.spec, tr),
    setRow(r.heldOut.spec, te),
    ``,
    `Fault stages (severity = impact peak / healthy RMS): ` + FAULT_STAGES.map((s) => `${s.name} ${s.min}-${s.max}`).join(', ') + `.`,
    ``,
    `## Model`,
    ``,
    `- Features, computed inside the ONNX graph (opset 17): ${FEATURE_NAMES.map((f) => `\`${f}\``).join(', ')}`,
    `- Network: standardize, dense ${FEATURE_NAMES.length}x${n.hidden} + ReLU, dense ${n.hidden}x2, softmax`,
    `- Training: mini-batch Adam, ${n.epochs} epochs, batch ${n.batchSize}, learning rate ${n.learningRate}, ` +
      `weight decay ${n.weightDecay}, init seed ${n.seed}; final training loss ${f4(r.training.finalLoss)}`,
    ``,
    `## Results (fault is the positive class)`,
    ``,
    `| set | accuracy | precision | recall | false alarms (healthy windows) |`,
    `|---|---|---|---|---|`,
    `| training | ${f4(tr.accuracy)} | ${f4(tr.precision)} | ${f4(tr.recall)} | ${pct(tr.falseAlarmRate)} |`,
    `| held-out | ${f4(te.accuracy)} | ${f4(te.precision)} | ${f4(te.recall)} | ${pct(te.falseAlarmRate)} |`,
    ``,
    `Confusion matrix, held-out windows:`,
    ``,
    `| actual \\ predicted | healthy | fault |`,
    `|---|---|---|`,
    `| healthy | ${te.trueNegatives} | ${te.falsePositives} |`,
    `| fault | ${te.falseNegatives} | ${te.truePositives} |`,
    ``,
    `Detection rate per fault stage, held-out windows (each window is 40 ms on its own):`,
    ``,
    `| stage | severity | windows | detected | rate |`,
    `|---|---|---|---|---|`,
    ...te.stages.map((s) => `| ${s.name} | ${s.min}-${s.max} | ${s.windows} | ${s.detected} | ${pct(s.rate)} |`),
    `| healthy (false alarms) | 0 | ${te.trueNegatives + te.falsePositives} | ${te.falsePositives} | ${pct(te.falseAlarmRate)} |`,
    ``,
  ];
  return lines.join('\n');
}
