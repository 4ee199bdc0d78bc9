/**
 * The bearing model as an ONNX graph: 1024 raw samples in, [healthy, fault] probabilities out, the
 * features of features.ts computed inside the graph so the file alone defines the model.
 *
 * Opset 17 forms: ReduceMean/ReduceMax take `axes` as an attribute, ReduceSum/Unsqueeze/Slice take
 * them as int64 inputs, DFT takes `axis`, `onesided` and `inverse` as attributes. DFT runs on the
 * CPU provider and is far smaller and faster than a basis matrix.
 */
import {
  BINS,
  ENVELOPE_BAND,
  ENVELOPE_BANDS,
  ENVELOPE_BINS,
  EPS,
  FEATURE_COUNT,
  FEATURE_NAMES,
  SAMPLE_RATE_HZ,
  SPECTRUM_BAND_EDGES,
  TAPER_WINDOW,
  WINDOW,
} from './features.js';
import { CLASSES, type Mlp } from './mlp.js';
import { GraphBuilder } from './onnx-graph.js';

export const INPUT_NAME = 'input';
export const OUTPUT_NAME = 'probabilities';
/** Extra output of a verification build: the feature vector, to compare with featuresOf. */
export const FEATURES_NAME = 'features';

/** [rows, cols] 0/1 matrix summing the bins of each band: bins [lo, hi) of column b. */
function bandMatrix(rows: number, bands: readonly (readonly [number, number])[]): Float64Array {
  const m = new Float64Array(rows * bands.length);
  bands.forEach(([lo, hi], b) => {
    for (let k = lo; k < hi; k++) m[k * bands.length + b] = 1;
  });
  return m;
}

/** Adds the feature subgraph on `x` [batch, WINDOW]; returns the [batch, FEATURE_COUNT] tensor's name. */
function addFeatures(g: GraphBuilder, x: string): string {
  const ax1 = { axes: [1], keepdims: 1 };
  const eps = g.floats('eps', [], [EPS]);
  const axis1 = g.ints('axis_1', [1], [1]);
  const axis2 = g.ints('axis_2', [1], [2]);
  const log = (t: string): string => g.op('Log', [g.op('Add', [t, eps])]);

  // Time domain: level, crest factor, kurtosis.
  const rms = g.op('Sqrt', [g.op('Add', [g.op('ReduceMean', [g.op('Mul', [x, x])], ax1), eps])]);
  const logRms = g.op('Log', [rms]);
  const crest = g.op('Div', [g.op('ReduceMax', [g.op('Abs', [x])], ax1), rms]);
  const d = g.op('Sub', [x, g.op('ReduceMean', [x], ax1)]);
  const d2 = g.op('Mul', [d, d]);
  const m2 = g.op('ReduceMean', [d2], ax1);
  const kurtosis = g.op('Div', [g.op('ReduceMean', [g.op('Mul', [d2, d2])], ax1), g.op('Add', [g.op('Mul', [m2, m2]), eps])]);

  // Spectrum of the tapered window: [batch, BINS, 2] (re, im), then band energies.
  const tapered = g.op('Mul', [x, g.floats('taper', [WINDOW], TAPER_WINDOW)]);
  const spectrum = g.op('DFT', [g.op('Unsqueeze', [tapered, axis2])], { axis: 1, onesided: 1 });
  const power = g.op('ReduceSum', [g.op('Mul', [spectrum, spectrum]), axis2], { keepdims: 0 });
  const bands = SPECTRUM_BAND_EDGES.slice(0, -1).map((lo, i): [number, number] => [lo, SPECTRUM_BAND_EDGES[i + 1]!]);
  const bandEnergy = g.op('MatMul', [power, g.floats('spectrum_bands', [BINS, bands.length], bandMatrix(BINS, bands))]);
  const logBands = log(bandEnergy);

  // Envelope of the resonance band: its bins alone, inverse-transformed, squared magnitude.
  const [lo, hi] = ENVELOPE_BAND;
  const band = g.op('Slice', [spectrum, g.ints('envelope_lo', [1], [lo]), g.ints('envelope_hi', [1], [hi]), axis1]);
  const analytic = g.op('DFT', [band], { axis: 1, inverse: 1, onesided: 0 });
  const envelope = g.op('ReduceSum', [g.op('Mul', [analytic, analytic]), axis2], { keepdims: 0 });
  const e1 = g.op('ReduceMean', [envelope], ax1);
  const e2 = g.op('ReduceMean', [g.op('Mul', [envelope, envelope])], ax1);
  const envKurtosis = log(g.op('Div', [e2, g.op('Add', [g.op('Mul', [e1, e1]), eps])]));

  // Envelope spectrum: share of the envelope's energy around BPFO and its second harmonic.
  const envSpectrum = g.op('DFT', [g.op('Unsqueeze', [envelope, axis2])], { axis: 1, onesided: 1 });
  const envPower = g.op('ReduceSum', [g.op('Mul', [envSpectrum, envSpectrum]), axis2], { keepdims: 0 });
  const shares = g.op('MatMul', [
    envPower,
    g.floats('envelope_bands', [ENVELOPE_BINS, ENVELOPE_BANDS.length], bandMatrix(ENVELOPE_BINS, ENVELOPE_BANDS)),
  ]);
  const n = ENVELOPE_BANDS.length;
  const parts = g.op('Slice', [shares, g.ints('shares_lo', [1], [0]), g.ints('shares_hi', [1], [n - 1]), axis1]);
  const total = g.op('Slice', [shares, g.ints('total_lo', [1], [n - 1]), g.ints('total_hi', [1], [n]), axis1]);
  const logShares = log(g.op('Div', [parts, g.op('Add', [total, eps])]));

  return g.op('Concat', [logRms, crest, kurtosis, logBands, envKurtosis, logShares], { axis: 1 }, FEATURES_NAME);
}

/**
 * The model file's bytes for a trained network. `exposeFeatures` adds the feature vector as a
 * second output, for checking the graph against featuresOf; the shipped model has one output.
 */
export function bearingModelBytes(mlp: Mlp, opts: { exposeFeatures?: boolean } = {}): Uint8Array {
  if (mlp.inputs !== FEATURE_COUNT) throw new RangeError(`network takes ${mlp.inputs} inputs, the graph makes ${FEATURE_COUNT} features`);
  const g = new GraphBuilder();
  const features = addFeatures(g, INPUT_NAME);
  const z = g.op('Mul', [
    g.op('Sub', [features, g.floats('feature_mean', [FEATURE_COUNT], mlp.mean)]),
    g.floats('feature_inv_std', [FEATURE_COUNT], mlp.invStd),
  ]);
  const w1 = g.floats('dense1_weight', [FEATURE_COUNT, mlp.hidden], mlp.w1);
  const b1 = g.floats('dense1_bias', [mlp.hidden], mlp.b1);
  const h = g.op('Relu', [g.op('Gemm', [z, w1, b1])]);
  const logits = g.op('Gemm', [h, g.floats('dense2_weight', [mlp.hidden, CLASSES], mlp.w2), g.floats('dense2_bias', [CLASSES], mlp.b2)]);
  g.op('Softmax', [logits], { axis: 1 }, OUTPUT_NAME);
  const outputs = [{ name: OUTPUT_NAME, dims: ['batch', CLASSES] }];
  if (opts.exposeFeatures === true) outputs.push({ name: FEATURES_NAME, dims: ['batch', FEATURE_COUNT] });
  return g.encode({
    name: 'bearing',
    docString:
      `Bearing fault classifier. Input: ${WINDOW} acceleration samples (g) at ${SAMPLE_RATE_HZ} Hz. ` +
      `Features (${FEATURE_COUNT}): ${FEATURE_NAMES.join(', ')}. ` +
      `Network: standardize, dense ${FEATURE_COUNT}x${mlp.hidden} + ReLU, dense ${mlp.hidden}x${CLASSES}, softmax [healthy, fault].`,
    inputs: [{ name: INPUT_NAME, dims: ['batch', WINDOW] }],
    outputs,
  });
}
