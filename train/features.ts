/**
 * The bearing model's features, computed from one window of 1024 raw samples. This file is the one
 * definition: `featuresOf` computes them in float64 for training, and `onnx-graph.ts` builds the same
 * computation into the model from the constants below, so the ONNX file alone defines what it does.
 *
 * Why these features (see firmware-sim/vibration.ts for the signal):
 * - The overall level, crest factor and kurtosis catch a fault once its impacts stand out of the
 *   shaft vibration, i.e. late.
 * - Log band energies, absolute: an early fault adds energy around the 3-4 kHz resonance, where a
 *   healthy machine has only its white noise floor; the bands above and below measure that floor,
 *   so the network can compare the resonance bands with it whatever the machine's noise level.
 * - The envelope of the resonance band: the band is shifted to 0 Hz by keeping only its bins and
 *   inverse-transforming them (an analytic signal, decimated by 8). Noise gives an envelope with
 *   Gaussian statistics; impacts give short bursts, raising the kurtosis of the band
 *   (spectral kurtosis), and bursts repeating at BPFO put the envelope's energy at 50-325 Hz.
 */
import { VIBRATION_SAMPLE_RATE_HZ, VIBRATION_WINDOW } from '../firmware-sim/vibration.js';
import { fft } from './fft.js';

export const WINDOW = VIBRATION_WINDOW;
export const SAMPLE_RATE_HZ = VIBRATION_SAMPLE_RATE_HZ;
/** Bins of the one-sided spectrum (0 Hz to Nyquist). */
export const BINS = WINDOW / 2 + 1;
export const BIN_HZ = SAMPLE_RATE_HZ / WINDOW;

/** Spectrum band edges in bins [lo, hi): 25 Hz per bin at 25.6 kHz. DC is left out. */
export const SPECTRUM_BAND_EDGES: readonly number[] = [1, 8, 40, 100, 120, 140, 160, 180, 228, 320, BINS];
/** The resonance band whose envelope is analysed: bins [100, 228), 2.5-5.7 kHz, a power of two wide. */
export const ENVELOPE_BAND: readonly [number, number] = [100, 228];
export const ENVELOPE_LENGTH = ENVELOPE_BAND[1] - ENVELOPE_BAND[0];
/** Bins of the envelope's one-sided spectrum; one bin is again 25 Hz. */
export const ENVELOPE_BINS = ENVELOPE_LENGTH / 2 + 1;
/**
 * Envelope-spectrum bands in bins [lo, hi): BPFO (72-143 Hz for shafts at 20-40 Hz) with room for
 * slip, its second harmonic, and every non-DC bin as the reference.
 */
export const ENVELOPE_BANDS: readonly (readonly [number, number])[] = [
  [2, 7],
  [7, 13],
  [1, ENVELOPE_BINS],
];
/**
 * Samples tapered at each end of the window before the spectrum (a Tukey window). A window's edges
 * meet as a jump that smears the strong shaft harmonics over the whole spectrum; on a quiet machine
 * that leakage would rival the noise floor in the resonance band and, being one burst at the
 * edge, look like an impact to the envelope. A short taper removes it and leaves the middle of
 * the window, and so the statistics of the envelope, untouched.
 */
export const TAPER = 64;
export const TAPER_WINDOW: Float64Array = Float64Array.from({ length: WINDOW }, (_, i) => {
  const edge = Math.min(i, WINDOW - 1 - i);
  return edge >= TAPER ? 1 : 0.5 * (1 - Math.cos((Math.PI * (edge + 0.5)) / TAPER));
});
/** Keeps logs and divisions finite on an all-zero window. */
export const EPS = 1e-12;

export const FEATURE_NAMES: readonly string[] = [
  'log_rms',
  'crest',
  'kurtosis',
  ...SPECTRUM_BAND_EDGES.slice(0, -1).map(
    (lo, i) => `log_energy_${lo * BIN_HZ}_${Math.min(SPECTRUM_BAND_EDGES[i + 1]!, BINS - 1) * BIN_HZ}hz`,
  ),
  'log_envelope_kurtosis',
  'log_envelope_share_50_175hz',
  'log_envelope_share_175_325hz',
];
export const FEATURE_COUNT = FEATURE_NAMES.length;

/** The features of one window, in float64. */
export function featuresOf(x: ArrayLike<number>): Float64Array {
  if (x.length !== WINDOW) throw new RangeError(`featuresOf: expected ${WINDOW} samples, got ${x.length}`);
  const out = new Float64Array(FEATURE_COUNT);
  let s = 0;
  let s2 = 0;
  let peak = 0;
  for (let i = 0; i < WINDOW; i++) {
    const v = x[i]!;
    s += v;
    s2 += v * v;
    peak = Math.max(peak, Math.abs(v));
  }
  const rms = Math.sqrt(s2 / WINDOW + EPS);
  const mean = s / WINDOW;
  let m2 = 0;
  let m4 = 0;
  for (let i = 0; i < WINDOW; i++) {
    const d = x[i]! - mean;
    const d2 = d * d;
    m2 += d2;
    m4 += d2 * d2;
  }
  m2 /= WINDOW;
  m4 /= WINDOW;
  let f = 0;
  out[f++] = Math.log(rms);
  out[f++] = peak / rms;
  out[f++] = m4 / (m2 * m2 + EPS);

  const re = Float64Array.from(x, (v, i) => v * TAPER_WINDOW[i]!);
  const im = new Float64Array(WINDOW);
  fft(re, im);
  for (let b = 0; b + 1 < SPECTRUM_BAND_EDGES.length; b++) {
    let e = 0;
    for (let k = SPECTRUM_BAND_EDGES[b]!; k < SPECTRUM_BAND_EDGES[b + 1]!; k++) e += re[k]! * re[k]! + im[k]! * im[k]!;
    out[f++] = Math.log(e + EPS);
  }

  const [lo, hi] = ENVELOPE_BAND;
  const zr = re.slice(lo, hi);
  const zi = im.slice(lo, hi);
  fft(zr, zi, true);
  const env = new Float64Array(ENVELOPE_LENGTH);
  let e1 = 0;
  let e2 = 0;
  for (let i = 0; i < ENVELOPE_LENGTH; i++) {
    const v = zr[i]! * zr[i]! + zi[i]! * zi[i]!;
    env[i] = v;
    e1 += v;
    e2 += v * v;
  }
  e1 /= ENVELOPE_LENGTH;
  e2 /= ENVELOPE_LENGTH;
  out[f++] = Math.log(e2 / (e1 * e1 + EPS) + EPS);

  const envIm = new Float64Array(ENVELOPE_LENGTH);
  fft(env, envIm);
  const shares = ENVELOPE_BANDS.map(([a, b]) => {
    let e = 0;
    for (let k = a; k < b; k++) e += env[k]! * env[k]! + envIm[k]! * envIm[k]!;
    return e;
  });
  const total = shares[shares.length - 1]!;
  for (let b = 0; b + 1 < shares.length; b++) out[f++] = Math.log(shares[b]! / (total + EPS) + EPS);
  return out;
}
