// The bearing model's trainer: `npm run train` reproduces the committed files, the ONNX graph
// computes the features features.ts defines, and the vibration generator it learns from behaves
// as its header says.
import t from 'tap';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { createRng, gaussian } from '../firmware-sim/sensors.js';
import { BPFO_RATIO, BearingVibration, MAX_SEVERITY, VIBRATION_WINDOW } from '../firmware-sim/vibration.js';
import { FEATURES_NAME, bearingModelBytes } from '../train/bearing-graph.js';
import { FEATURE_COUNT, FEATURE_NAMES, featuresOf } from '../train/features.js';
import { fft } from '../train/fft.js';
import type { Mlp } from '../train/mlp.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const TRAIN = path.join(ROOT, 'dist/train/main.js');
const MODELS = path.join(ROOT, 'models');

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [TRAIN, ...args], { cwd: ROOT });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

t.test('npm run train reproduces the committed model, its yaml and its report byte for byte', async (t) => {
  const out = t.testdir();
  const r = await run(['--out', out]);
  t.equal(r.code, 0, `trainer exits 0 (stderr: ${r.stderr})`);
  t.match(r.stdout, /epoch 200\/200: loss/, 'prints its progress');
  t.match(r.stdout, /onnxruntime vs TypeScript on \d+ held-out windows: .* 0 labels differ/, 'checks the file in onnxruntime');
  const report = readFileSync(path.join(MODELS, 'bearing-report.md'), 'utf8');
  const node = /Trained with Node (\d+)/.exec(report)?.[1];
  const here = process.versions.node.split('.')[0];
  for (const name of ['bearing.onnx', 'bearing.yaml', 'bearing-report.md']) {
    const fresh = readFileSync(path.join(out, name));
    const committed = readFileSync(path.join(MODELS, name));
    t.ok(fresh.equals(committed), `${name} identical (committed with Node ${node}, running Node ${here})`);
  }
});

t.test('the trainer refuses an unknown argument', async (t) => {
  const r = await run(['--outdir', 'x']);
  t.equal(r.code, 2);
  t.match(r.stderr, /unknown argument "--outdir"/);
});

t.test('fft matches the DFT definition, forward and inverse', async (t) => {
  const rng = createRng(11);
  for (const n of [1, 2, 8, 128, 1024]) {
    const xr = Float64Array.from({ length: n }, () => gaussian(rng));
    const xi = Float64Array.from({ length: n }, () => gaussian(rng));
    const re = xr.slice();
    const im = xi.slice();
    fft(re, im);
    let err = 0;
    for (let k = 0; k < n; k++) {
      let sr = 0;
      let si = 0;
      for (let j = 0; j < n; j++) {
        const a = (-2 * Math.PI * ((k * j) % n)) / n;
        sr += xr[j]! * Math.cos(a) - xi[j]! * Math.sin(a);
        si += xr[j]! * Math.sin(a) + xi[j]! * Math.cos(a);
      }
      err = Math.max(err, Math.abs(sr - re[k]!), Math.abs(si - im[k]!));
    }
    t.ok(err < 1e-9 * n, `n=${n}: forward within ${err.toExponential(1)}`);
    fft(re, im, true);
    let back = 0;
    for (let j = 0; j < n; j++) back = Math.max(back, Math.abs(re[j]! - xr[j]!), Math.abs(im[j]! - xi[j]!));
    t.ok(back < 1e-12 * n, `n=${n}: inverse gives the signal back`);
  }
  t.throws(() => fft(new Float64Array(12), new Float64Array(12)), RangeError, 'not a power of two');
});

t.test('the ONNX graph computes every feature as features.ts defines it', async (t) => {
  // Any network will do: the features output is taken before it.
  const h = 4;
  const mlp: Mlp = {
    inputs: FEATURE_COUNT,
    hidden: h,
    mean: new Float64Array(FEATURE_COUNT),
    invStd: new Float64Array(FEATURE_COUNT).fill(1),
    w1: new Float64Array(FEATURE_COUNT * h).fill(0.01),
    b1: new Float64Array(h),
    w2: new Float64Array(h * 2).fill(0.1),
    b2: new Float64Array(2),
  };
  const session = await ort.InferenceSession.create(bearingModelBytes(mlp, { exposeFeatures: true }), { intraOpNumThreads: 1 });
  t.teardown(() => session.release());
  const windows: number[][] = [];
  for (let m = 0; m < 8; m++) {
    const b = new BearingVibration(createRng(1000 + m), { growthPerWindow: 0 });
    if (m % 2 === 1) b.setCondition('fault', { severity: m / 2 });
    windows.push(b.nextWindow(), b.nextWindow());
  }
  windows.push(new Array<number>(VIBRATION_WINDOW).fill(0)); // silence: every log and division stays finite
  const x = new Float32Array(windows.length * VIBRATION_WINDOW);
  windows.forEach((w, i) => x.set(w, i * VIBRATION_WINDOW));
  const out = await session.run({ input: new ort.Tensor('float32', x, [windows.length, VIBRATION_WINDOW]) });
  const got = out[FEATURES_NAME]!.data as Float32Array;
  t.same(out[FEATURES_NAME]!.dims, [windows.length, FEATURE_COUNT]);
  const worst = new Array<number>(FEATURE_COUNT).fill(0);
  windows.forEach((w, i) => {
    const ref = featuresOf(w);
    for (let j = 0; j < FEATURE_COUNT; j++) {
      t.ok(Number.isFinite(got[i * FEATURE_COUNT + j]!), `window ${i} ${FEATURE_NAMES[j]} finite`);
      // float32 against float64: relative 1e-4 leaves room for the FFT's rounding, far below any effect
      const err = Math.abs(got[i * FEATURE_COUNT + j]! - ref[j]!) / Math.max(1, Math.abs(ref[j]!));
      worst[j] = Math.max(worst[j]!, err);
    }
  });
  FEATURE_NAMES.forEach((name, j) => t.ok(worst[j]! < 1e-4, `${name}: worst relative error ${worst[j]!.toExponential(1)}`));
});

t.test('vibration: one seed gives one sample sequence, rounded to 4 decimals', async (t) => {
  const make = (): BearingVibration => {
    const b = new BearingVibration(createRng(7));
    b.setCondition('fault');
    return b;
  };
  const a = make();
  const b = make();
  const wa = [a.nextWindow(), a.nextWindow()];
  t.same([b.nextWindow(), b.nextWindow()], wa, 'same windows');
  t.equal(wa[0]!.length, VIBRATION_WINDOW);
  t.ok(
    wa.flat().every((v) => Math.round(v * 10_000) / 10_000 === v),
    'every sample has at most 4 decimals',
  );
  const other = new BearingVibration(createRng(8));
  t.not(other.shaftHz, a.shaftHz, 'another seed, another machine');
  t.ok(a.shaftHz >= 20 && a.shaftHz <= 40, 'shaft speed drawn in 20..40 Hz');
  t.equal(new BearingVibration(createRng(7), { shaftHz: 25 }).resonanceHz, a.resonanceHz, 'an option does not shift the other draws');
});

t.test('vibration: the healthy signal has the RMS the severity is measured in', async (t) => {
  const b = new BearingVibration(createRng(21), { noiseG: 0.1 });
  let s2 = 0;
  let n = 0;
  for (let w = 0; w < 100; w++) {
    for (const v of b.nextWindow()) {
      s2 += v * v;
      n++;
    }
  }
  const rms = Math.sqrt(s2 / n);
  t.ok(Math.abs(rms - b.healthyRms) / b.healthyRms < 0.03, `measured ${rms.toFixed(4)} g vs ${b.healthyRms.toFixed(4)} g`);
  t.equal(b.severity, 0);
  t.equal(b.condition, 'healthy');
});

t.test('vibration: a fault rings at its severity times the healthy RMS, at BPFO, and grows to a cap', async (t) => {
  // Impacts draw from their own stream: the faulty machine's signal is its healthy twin's plus the impacts.
  const opts = { growthPerWindow: 0, shaftHz: 30 };
  const healthy = new BearingVibration(createRng(5), opts);
  const faulty = new BearingVibration(createRng(5), opts);
  faulty.setCondition('fault', { severity: 2 });
  t.equal(faulty.severity, 2);
  const impacts: number[] = [];
  let peak = 0;
  const windows = 25; // 1 s
  for (let w = 0; w < windows; w++) {
    const h = healthy.nextWindow();
    const f = faulty.nextWindow();
    for (let i = 0; i < f.length; i++) {
      const d = Math.abs(f[i]! - h[i]!);
      peak = Math.max(peak, d);
      // an impact: the ringing rising from nothing after at least 2 ms of quiet
      const t0 = w * f.length + i;
      if (d > 0.3 * faulty.severity * faulty.healthyRms && (impacts.length === 0 || t0 - impacts[impacts.length - 1]! > 51))
        impacts.push(t0);
    }
  }
  const expectedPeak = 2 * faulty.healthyRms;
  t.ok(
    peak <= expectedPeak * 1.1 + 1e-3 && peak >= expectedPeak * 0.9,
    `peak ${peak.toFixed(3)} g ~ 2 x ${faulty.healthyRms.toFixed(3)} g`,
  );
  const rate = impacts.length / ((windows * VIBRATION_WINDOW) / faulty.sampleRateHz);
  t.ok(
    Math.abs(rate - BPFO_RATIO * 30) < 0.05 * BPFO_RATIO * 30,
    `${impacts.length} impacts in 1 s: ${rate.toFixed(1)} Hz vs BPFO ${BPFO_RATIO * 30} Hz`,
  );

  const growing = new BearingVibration(createRng(6), { growthPerWindow: 0.5 });
  growing.setCondition('fault');
  t.equal(growing.severity, 0.5, 'a new fault starts at 0.5');
  growing.nextWindow();
  t.equal(growing.severity, 1, 'grows by growthPerWindow each window');
  for (let i = 0; i < 20; i++) growing.nextWindow();
  t.equal(growing.severity, MAX_SEVERITY, 'up to the cap');
  growing.setCondition('healthy');
  t.equal(growing.severity, 0, 'a replaced bearing is healthy again');
  t.throws(() => new BearingVibration(createRng(1), { windowSize: 0 }), RangeError);
  t.throws(() => growing.setCondition('fault', { severity: -1 }), RangeError);
});
