/** Scores a trained network on labelled windows: what the training report shows. */
import { FAULT_STAGES } from './dataset.js';
import { predict, type Mlp } from './mlp.js';

export interface LabelledFeatures {
  features: Float64Array;
  label: 0 | 1;
  /** Index into FAULT_STAGES, -1 when healthy. */
  stage: number;
}

export interface Evaluation {
  windows: number;
  /** Fault is the positive class. */
  truePositives: number;
  falsePositives: number;
  trueNegatives: number;
  falseNegatives: number;
  accuracy: number;
  precision: number;
  recall: number;
  /** Healthy windows classified as fault. */
  falseAlarmRate: number;
  /** Per FAULT_STAGES entry: windows and how many were classified as fault. */
  stages: { name: string; min: number; max: number; windows: number; detected: number; rate: number }[];
}

const ratio = (a: number, b: number): number => (b === 0 ? 0 : a / b);

/** The label is the arg-max of [healthy, fault], as the proxy decides it (a tie goes to healthy). */
export function classify(m: Mlp, features: Float64Array): 0 | 1 {
  const [p0, p1] = predict(m, features);
  return p1 > p0 ? 1 : 0;
}

export function evaluate(m: Mlp, data: readonly LabelledFeatures[]): Evaluation {
  let tp = 0;
  let fp = 0;
  let tn = 0;
  let fn = 0;
  const stages = FAULT_STAGES.map((s) => ({ name: s.name, min: s.min, max: s.max, windows: 0, detected: 0, rate: 0 }));
  for (const d of data) {
    const p = classify(m, d.features);
    if (d.label === 1) {
      if (p === 1) tp++;
      else fn++;
      const st = stages[d.stage];
      if (st !== undefined) {
        st.windows++;
        st.detected += p;
      }
    } else if (p === 1) fp++;
    else tn++;
  }
  for (const st of stages) st.rate = ratio(st.detected, st.windows);
  return {
    windows: data.length,
    truePositives: tp,
    falsePositives: fp,
    trueNegatives: tn,
    falseNegatives: fn,
    accuracy: ratio(tp + tn, data.length),
    precision: ratio(tp, tp + fp),
    recall: ratio(tp, tp + fn),
    falseAlarmRate: ratio(fp, fp + tn),
    stages,
  };
}
