/**
 * Labelled vibration windows from the simulator's bearing model, from fixed seeds.
 *
 * Each simulated machine (own seed, harmonics, resonance, damping and slip) gives a few consecutive
 * windows, so a set spans many machines rather than many windows of a few. Training and held-out
 * sets differ in seed and also in operating point: shaft speeds and noise levels come from
 * interleaved strata: each range is cut into an odd number of strata, training takes the even ones
 * (both ends included) and held-out data the odd ones in between. Held-out accuracy thus measures
 * machines running at speeds and noise levels the model never saw, within the range it covers.
 */
import { createRng, seedFrom } from '../firmware-sim/sensors.js';
import { BearingVibration } from '../firmware-sim/vibration.js';

/** A fault stage: the severity range of a developing fault (impact peak / healthy RMS). */
export interface FaultStage {
  name: string;
  min: number;
  max: number;
}

/** Early: impact peaks no larger than the healthy vibration's RMS, invisible in the overall level. */
export const FAULT_STAGES: readonly FaultStage[] = [
  { name: 'early', min: 0.5, max: 1 },
  { name: 'developing', min: 1, max: 2 },
  { name: 'advanced', min: 2, max: 4 },
  { name: 'severe', min: 4, max: 6 },
];

/** The simulator's ranges (firmware-sim/vibration.ts), each cut into an odd number of strata. */
export const SHAFT_RANGE_HZ: readonly [number, number] = [20, 40];
export const SHAFT_STRATA = 9;
export const NOISE_RANGE_G: readonly [number, number] = [0.05, 0.2];
export const NOISE_STRATA = 7;

export type Strata = 'even' | 'odd';

export interface SetSpec {
  name: string;
  seed: number;
  /** Machines; even-numbered ones are healthy, odd-numbered ones have a fault. */
  machines: number;
  windowsPerMachine: number;
  /** Which strata of shaft speed and noise level the machines run at. */
  strata: Strata;
}

export interface Example {
  samples: number[];
  /** 0 healthy, 1 fault. */
  label: 0 | 1;
  /** Index into FAULT_STAGES, or -1 when healthy. */
  stage: number;
  severity: number;
  shaftHz: number;
  noiseG: number;
}

/** A value in one of the even or odd strata of [lo, hi), cut into `count` equal strata. */
export function drawStratified(u1: number, u2: number, [lo, hi]: readonly [number, number], count: number, strata: Strata): number {
  const first = strata === 'even' ? 0 : 1;
  const picks = Math.floor((count - first + 1) / 2);
  const stratum = first + 2 * Math.min(picks - 1, Math.floor(u1 * picks));
  return lo + ((stratum + u2) * (hi - lo)) / count;
}

/** The machines of a set, in a fixed order, each with its windows. */
export function* generateSet(spec: SetSpec): Generator<Example> {
  for (let m = 0; m < spec.machines; m++) {
    // One stream for the operating point and one for the machine: changing how many windows a
    // machine gives never changes the next machine.
    const pick = createRng(seedFrom(spec.seed, 'operating-point', m));
    const shaftHz = drawStratified(pick(), pick(), SHAFT_RANGE_HZ, SHAFT_STRATA, spec.strata);
    const noiseG = drawStratified(pick(), pick(), NOISE_RANGE_G, NOISE_STRATA, spec.strata);
    const faulty = m % 2 === 1;
    // Stages take turns among faulty machines, so every stage is equally represented.
    const stage = faulty ? ((m - 1) / 2) % FAULT_STAGES.length : -1;
    const st = FAULT_STAGES[stage];
    const severity = st === undefined ? 0 : st.min + (st.max - st.min) * pick();
    const bearing = new BearingVibration(createRng(seedFrom(spec.seed, 'machine', m)), { shaftHz, noiseG, growthPerWindow: 0 });
    if (faulty) bearing.setCondition('fault', { severity });
    for (let w = 0; w < spec.windowsPerMachine; w++) {
      yield { samples: bearing.nextWindow(), label: faulty ? 1 : 0, stage, severity, shaftHz, noiseG };
    }
  }
}

/** The ranges a set's strata cover, for the report. */
export function strataRanges([lo, hi]: readonly [number, number], count: number, strata: Strata): [number, number][] {
  const out: [number, number][] = [];
  for (let s = strata === 'even' ? 0 : 1; s < count; s += 2) out.push([lo + (s * (hi - lo)) / count, lo + ((s + 1) * (hi - lo)) / count]);
  return out;
}
