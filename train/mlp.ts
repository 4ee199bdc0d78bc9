/**
 * A small multilayer perceptron (standardize → dense + ReLU → dense → softmax over 2 classes),
 * trained with mini-batch Adam in plain float64 TypeScript.
 *
 * Deterministic by construction: weights start from a seeded Gaussian, batches follow a seeded
 * shuffle, sums run in a fixed order, and nothing reads a clock or Math.random. The same Node major
 * therefore yields the same weights bit for bit, which is what lets `npm run train` reproduce the
 * committed model file.
 */
import { createRng, gaussian } from '../firmware-sim/sensors.js';

export const CLASSES = 2;

export interface Mlp {
  inputs: number;
  hidden: number;
  /** Per-feature mean and 1/std of the training set: z = (f - mean) · invStd. */
  mean: Float64Array;
  invStd: Float64Array;
  /** [inputs, hidden], row-major. */
  w1: Float64Array;
  b1: Float64Array;
  /** [hidden, CLASSES], row-major. */
  w2: Float64Array;
  b2: Float64Array;
}

export interface TrainOptions {
  hidden: number;
  epochs: number;
  batchSize: number;
  learningRate: number;
  /** L2 penalty on the weights (not the biases), keeps the boundary smooth between seen machines. */
  weightDecay: number;
  seed: number;
  /** Called after each epoch with the mean training loss. */
  onEpoch?: (epoch: number, loss: number) => void;
}

/** Features of N examples, row-major [N, inputs]. */
export interface Matrix {
  rows: number;
  cols: number;
  data: Float64Array;
}

export function toMatrix(rows: readonly Float64Array[], cols: number): Matrix {
  const data = new Float64Array(rows.length * cols);
  rows.forEach((r, i) => {
    if (r.length !== cols) throw new RangeError(`row ${i} has ${r.length} values, expected ${cols}`);
    data.set(r, i * cols);
  });
  return { rows: rows.length, cols, data };
}

function standardizer(x: Matrix): { mean: Float64Array; invStd: Float64Array } {
  const mean = new Float64Array(x.cols);
  const invStd = new Float64Array(x.cols);
  for (let j = 0; j < x.cols; j++) {
    let s = 0;
    for (let i = 0; i < x.rows; i++) s += x.data[i * x.cols + j]!;
    const m = s / x.rows;
    let v = 0;
    for (let i = 0; i < x.rows; i++) {
      const d = x.data[i * x.cols + j]! - m;
      v += d * d;
    }
    const sd = Math.sqrt(v / x.rows);
    mean[j] = m;
    invStd[j] = sd > 0 ? 1 / sd : 1;
  }
  return { mean, invStd };
}

/** Hidden activations and class probabilities of one feature row; `h` receives the hidden layer. */
function forwardInto(m: Mlp, f: ArrayLike<number>, offset: number, z: Float64Array, h: Float64Array): [number, number] {
  for (let j = 0; j < m.inputs; j++) z[j] = (f[offset + j]! - m.mean[j]!) * m.invStd[j]!;
  for (let k = 0; k < m.hidden; k++) {
    let a = m.b1[k]!;
    for (let j = 0; j < m.inputs; j++) a += z[j]! * m.w1[j * m.hidden + k]!;
    h[k] = a > 0 ? a : 0;
  }
  let l0 = m.b2[0]!;
  let l1 = m.b2[1]!;
  for (let k = 0; k < m.hidden; k++) {
    l0 += h[k]! * m.w2[k * CLASSES]!;
    l1 += h[k]! * m.w2[k * CLASSES + 1]!;
  }
  // Softmax over two logits, written as a logistic of their difference: stable for any margin.
  const p1 = 1 / (1 + Math.exp(l0 - l1));
  return [1 - p1, p1];
}

/** Class probabilities [healthy, fault] of one feature vector, in float64. */
export function predict(m: Mlp, f: ArrayLike<number>): [number, number] {
  return forwardInto(m, f, 0, new Float64Array(m.inputs), new Float64Array(m.hidden));
}

export function trainMlp(x: Matrix, labels: ArrayLike<number>, opts: TrainOptions): Mlp {
  const { hidden, batchSize } = opts;
  const inputs = x.cols;
  const rng = createRng(opts.seed);
  const { mean, invStd } = standardizer(x);
  const init = (n: number, scale: number): Float64Array => Float64Array.from({ length: n }, () => gaussian(rng) * scale);
  // He initialisation for the ReLU layer, Xavier-like for the output.
  const m: Mlp = {
    inputs,
    hidden,
    mean,
    invStd,
    w1: init(inputs * hidden, Math.sqrt(2 / inputs)),
    b1: new Float64Array(hidden),
    w2: init(hidden * CLASSES, Math.sqrt(1 / hidden)),
    b2: new Float64Array(CLASSES),
  };
  const params = [m.w1, m.b1, m.w2, m.b2];
  const decays = [true, false, true, false];
  const grads = params.map((p) => new Float64Array(p.length));
  const m1 = params.map((p) => new Float64Array(p.length));
  const m2 = params.map((p) => new Float64Array(p.length));
  const [g1, gb1, g2, gb2] = grads as [Float64Array, Float64Array, Float64Array, Float64Array];
  const beta1 = 0.9;
  const beta2 = 0.999;
  const order = Uint32Array.from({ length: x.rows }, (_, i) => i);
  const z = new Float64Array(inputs);
  const h = new Float64Array(hidden);
  let step = 0;
  for (let epoch = 1; epoch <= opts.epochs; epoch++) {
    // Fisher-Yates with the seeded stream: a different, reproducible batch order every epoch.
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(rng() * (i + 1));
      const t = order[i]!;
      order[i] = order[j]!;
      order[j] = t;
    }
    let lossSum = 0;
    for (let start = 0; start < x.rows; start += batchSize) {
      const end = Math.min(x.rows, start + batchSize);
      for (const g of grads) g.fill(0);
      for (let b = start; b < end; b++) {
        const i = order[b]!;
        const [p0, p1] = forwardInto(m, x.data, i * inputs, z, h);
        const y = labels[i]!;
        lossSum -= Math.log(Math.max(y === 1 ? p1 : p0, 1e-300));
        // d(cross-entropy)/d(logits) = p - onehot(y)
        const d0 = p0 - (y === 1 ? 0 : 1);
        const d1 = p1 - (y === 1 ? 1 : 0);
        gb2[0] = gb2[0]! + d0;
        gb2[1] = gb2[1]! + d1;
        for (let k = 0; k < hidden; k++) {
          const hk = h[k]!;
          if (hk <= 0) continue;
          g2[k * CLASSES] = g2[k * CLASSES]! + d0 * hk;
          g2[k * CLASSES + 1] = g2[k * CLASSES + 1]! + d1 * hk;
          const dh = d0 * m.w2[k * CLASSES]! + d1 * m.w2[k * CLASSES + 1]!;
          gb1[k] = gb1[k]! + dh;
          for (let j = 0; j < inputs; j++) g1[j * hidden + k] = g1[j * hidden + k]! + dh * z[j]!;
        }
      }
      step++;
      const n = end - start;
      const c1 = 1 - Math.pow(beta1, step);
      const c2 = 1 - Math.pow(beta2, step);
      for (let p = 0; p < params.length; p++) {
        const w = params[p]!;
        const g = grads[p]!;
        const mm = m1[p]!;
        const vv = m2[p]!;
        for (let i = 0; i < w.length; i++) {
          const gi = g[i]! / n + (decays[p] ? opts.weightDecay * w[i]! : 0);
          mm[i] = beta1 * mm[i]! + (1 - beta1) * gi;
          vv[i] = beta2 * vv[i]! + (1 - beta2) * gi * gi;
          w[i] = w[i]! - (opts.learningRate * (mm[i]! / c1)) / (Math.sqrt(vv[i]! / c2) + 1e-8);
        }
      }
    }
    opts.onEpoch?.(epoch, lossSum / x.rows);
  }
  return m;
}

/** The network as the model file stores it: every number rounded once to float32. */
export function roundToFloat32(m: Mlp): Mlp {
  const r = (a: Float64Array): Float64Array => Float64Array.from(Float32Array.from(a));
  return { ...m, mean: r(m.mean), invStd: r(m.invStd), w1: r(m.w1), b1: r(m.b1), w2: r(m.w2), b2: r(m.b2) };
}
