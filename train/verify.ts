/**
 * Runs the exported model in onnxruntime and compares it with the TypeScript forward pass that
 * the report was computed with, so a graph that computes something else than features.ts never
 * ships. ORT works in float32 with CPU-specific kernels: the comparison has a tolerance, and its
 * figures go to the console, never into a committed file.
 */
import * as ort from 'onnxruntime-node';
import { INPUT_NAME, OUTPUT_NAME } from './bearing-graph.js';
import { WINDOW } from './features.js';

export interface Agreement {
  windows: number;
  /** Largest |p_ort - p_ts| over both classes and all windows. */
  maxAbsDiff: number;
  /** Windows whose arg-max label differs. */
  labelDisagreements: number;
}

/** Probabilities differ by float32 rounding only: 1e-4 is far above that and far below a decision. */
export const PROBABILITY_TOLERANCE = 1e-4;

const BATCH = 1024;

export async function compareWithOrt(
  model: Uint8Array,
  windows: readonly (readonly number[])[],
  expected: readonly (readonly [number, number])[],
): Promise<Agreement> {
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  let maxAbsDiff = 0;
  let labelDisagreements = 0;
  try {
    for (let start = 0; start < windows.length; start += BATCH) {
      const n = Math.min(BATCH, windows.length - start);
      const x = new Float32Array(n * WINDOW);
      for (let i = 0; i < n; i++) x.set(windows[start + i]!, i * WINDOW);
      const out = await session.run({ [INPUT_NAME]: new ort.Tensor('float32', x, [n, WINDOW]) });
      const p = out[OUTPUT_NAME]!.data as Float32Array;
      for (let i = 0; i < n; i++) {
        const [e0, e1] = expected[start + i]!;
        const o0 = p[2 * i]!;
        const o1 = p[2 * i + 1]!;
        maxAbsDiff = Math.max(maxAbsDiff, Math.abs(o0 - e0), Math.abs(o1 - e1));
        if (o1 > o0 !== e1 > e0) labelDisagreements++;
      }
    }
  } finally {
    await session.release();
  }
  return { windows: windows.length, maxAbsDiff, labelDisagreements };
}
