/**
 * Vibration of a rolling-element bearing as an accelerometer on the housing sees it, one window of
 * raw samples at a time: the signal a vibration device sends and the bearing model classifies.
 *
 * Why it looks the way it does:
 * - A running machine is dominated by its shaft: unbalance shows at 1x the shaft speed, misalignment
 *   at 2x, looseness adds a little 3x. Their amplitudes differ from machine to machine, so each device
 *   draws its own; none of them says anything about the bearing, which is what makes the problem real.
 * - Mains, gears and the sensor itself add a broadband floor, modelled as white Gaussian noise.
 * - Speed is never perfectly constant (load, supply): it wanders slowly, within +-2 %, window to window.
 * - A spall on the outer race is struck by every rolling element that passes it, at the ball-pass
 *   frequency of the outer race (BPFO). For a typical deep-groove bearing (8-9 balls) that is about
 *   3.58x the shaft speed. Balls slip a little, so the interval between strikes jitters by 1-2 %.
 * - A strike is too short to show at the shaft's frequencies; what it does is ring the housing's
 *   structural resonance (3-4 kHz, decaying in 0.3-0.5 ms). An early fault is therefore invisible in
 *   the overall level and shows as short bursts of energy in a band where a healthy machine has only
 *   its noise floor, repeating at BPFO: the basis of envelope analysis, and of the model's features.
 * - Severity is the peak of one ringing relative to the healthy vibration's RMS, so that "early"
 *   (peaks no larger than the normal vibration, severity <= 1) means the same on a quiet and on a
 *   rough machine. A developing fault grows a little every window, up to a cap.
 *
 * Everything is drawn from the given RNG in a fixed order (device parameters first, always all of
 * them, even when an option overrides one), so one seed always yields the same sample sequence.
 * The impacts draw from a second stream seeded from the first: a fault adds its impacts to exactly
 * the vibration the same machine would have without it.
 * Time is counted in samples, never read from a clock; phases, impacts and ringing carry over from
 * one window to the next, so consecutive windows form one continuous signal.
 */
import { createRng, gaussian, type Rng } from './sensors.js';

export const VIBRATION_SAMPLE_RATE_HZ = 25_600;
/** Samples per window (40 ms at the default rate). */
export const VIBRATION_WINDOW = 1024;
/** Outer-race ball-pass frequency as a multiple of the shaft speed (typical 8-9 ball bearing). */
export const BPFO_RATIO = 3.58;
/** Default severity of a newly set fault: impact peaks half the healthy RMS. */
export const DEFAULT_FAULT_SEVERITY = 0.5;
/**
 * Default growth of a developing fault per window (0.5 -> 1 in 50 windows, -> 2 in 150): far faster than
 * a real bearing, so that a simulated fault goes from barely visible to obvious within a demo's minute.
 */
export const DEFAULT_GROWTH_PER_WINDOW = 0.01;
/** A developing fault stops growing here (impact peaks 6x the healthy RMS: a badly spalled race). */
export const MAX_SEVERITY = 6;

export type BearingCondition = 'healthy' | 'fault';

export interface BearingOptions {
  /** Nominal shaft speed in Hz; drawn in 20..40 Hz when not given. */
  shaftHz?: number;
  /** Standard deviation of the broadband noise in g; drawn in 0.05..0.2 g when not given. */
  noiseG?: number;
  /** Severity a new fault starts at (default 0.5). */
  severity?: number;
  /** Severity added per window while faulty (default 0.002), up to MAX_SEVERITY. */
  growthPerWindow?: number;
  sampleRateHz?: number;
  windowSize?: number;
}

/** Ringing longer than this many time constants is below 0.1 % of its peak and is cut. */
const RING_TAUS = 7;
/** Speed wander per window: an Ornstein-Uhlenbeck walk, hard-bounded at +-2 %. */
const SPEED = { revert: 0.05, step: 0.004, bound: 0.02 };

interface Impact {
  /** Start, in seconds from the start of the current window (negative: it began in an earlier one). */
  t: number;
  amp: number;
}

const round4 = (x: number): number => Math.round(x * 10_000) / 10_000;
const clamp = (x: number, lo: number, hi: number): number => Math.min(hi, Math.max(lo, x));

function checkPositive(name: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw new RangeError(`${name} must be a positive number, got ${v}`);
}
function checkNonNegative(name: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isFinite(v) && v >= 0)) throw new RangeError(`${name} must be a non-negative number, got ${v}`);
}

export class BearingVibration {
  /** Nominal shaft speed in Hz; the actual speed wanders within +-2 % of it. */
  readonly shaftHz: number;
  readonly noiseG: number;
  readonly sampleRateHz: number;
  readonly windowSize: number;
  /** Structural resonance the impacts ring, in Hz. */
  readonly resonanceHz: number;
  /** Decay time constant of the ringing, in seconds. */
  readonly ringTauS: number;
  /** RMS of the healthy vibration (harmonics and noise), in g: the unit of severity. */
  readonly healthyRms: number;

  private readonly rng: Rng;
  private readonly impactRng: Rng;
  private readonly amps: readonly [number, number, number];
  private readonly phases: [number, number, number];
  private readonly slip: number;
  private readonly startSeverity: number;
  private readonly growth: number;
  /** Peak of exp(-t/tau)·sin(2π·f·t), so that a ringing's peak is exactly its amplitude. */
  private readonly ringPeak: number;
  private speedDev = 0;
  private cond: BearingCondition = 'healthy';
  private sev = 0;
  private nextImpactT = 0;
  private ringing: Impact[] = [];

  constructor(rng: Rng, opts: BearingOptions = {}) {
    checkPositive('shaftHz', opts.shaftHz);
    checkNonNegative('noiseG', opts.noiseG);
    checkNonNegative('severity', opts.severity);
    checkNonNegative('growthPerWindow', opts.growthPerWindow);
    checkPositive('sampleRateHz', opts.sampleRateHz);
    if (opts.windowSize !== undefined && !(Number.isInteger(opts.windowSize) && opts.windowSize > 0)) {
      throw new RangeError(`windowSize must be a positive integer, got ${opts.windowSize}`);
    }
    this.rng = rng;
    // Fixed draw order, every draw always made: an override must not shift the other parameters.
    const shaft = 20 + 20 * rng();
    const a1 = 0.5 + 0.5 * rng();
    const a2 = a1 * (0.2 + 0.4 * rng());
    const a3 = a1 * (0.05 + 0.1 * rng());
    this.phases = [2 * Math.PI * rng(), 2 * Math.PI * rng(), 2 * Math.PI * rng()];
    const noise = 0.05 + 0.15 * rng();
    this.resonanceHz = 3000 + 1000 * rng();
    this.ringTauS = 0.0003 + 0.0002 * rng();
    this.slip = 0.01 + 0.01 * rng();
    this.impactRng = createRng(Math.floor(rng() * 0x1_0000_0000));

    this.shaftHz = opts.shaftHz ?? shaft;
    this.noiseG = opts.noiseG ?? noise;
    this.amps = [a1, a2, a3];
    this.sampleRateHz = opts.sampleRateHz ?? VIBRATION_SAMPLE_RATE_HZ;
    this.windowSize = opts.windowSize ?? VIBRATION_WINDOW;
    this.startSeverity = opts.severity ?? DEFAULT_FAULT_SEVERITY;
    this.growth = opts.growthPerWindow ?? DEFAULT_GROWTH_PER_WINDOW;
    this.healthyRms = Math.sqrt((a1 * a1 + a2 * a2 + a3 * a3) / 2 + this.noiseG * this.noiseG);
    const w = 2 * Math.PI * this.resonanceHz;
    const tPeak = Math.atan(w * this.ringTauS) / w;
    this.ringPeak = Math.exp(-tPeak / this.ringTauS) * Math.sin(w * tPeak);
  }

  get condition(): BearingCondition {
    return this.cond;
  }

  /** 0 when healthy; otherwise impact peak amplitude relative to the healthy RMS. */
  get severity(): number {
    return this.sev;
  }

  /** Shaft speed of the next window, in Hz (the nominal speed plus its slow wander). */
  get currentShaftHz(): number {
    return this.shaftHz * (1 + this.speedDev);
  }

  /** Outer-race impact rate of the next window, in Hz. */
  get bpfoHz(): number {
    return BPFO_RATIO * this.currentShaftHz;
  }

  /**
   * Switch the bearing's condition. A new fault starts at `opts.severity`, else the constructor's
   * severity option (default 0.5); setting 'fault' again only changes the severity, if given.
   * 'healthy' is a replaced bearing: impacts stop at once.
   */
  setCondition(c: BearingCondition, opts: { severity?: number } = {}): void {
    checkNonNegative('severity', opts.severity);
    if (c === 'healthy') {
      this.cond = 'healthy';
      this.sev = 0;
      this.ringing = [];
      return;
    }
    if (this.cond !== 'fault') {
      this.cond = 'fault';
      this.sev = opts.severity ?? this.startSeverity;
      // The first strike falls anywhere within one ball pass.
      this.nextImpactT = this.impactRng() / this.bpfoHz;
    } else if (opts.severity !== undefined) {
      this.sev = opts.severity;
    }
  }

  /** The next window: `windowSize` acceleration samples in g, rounded to 4 decimals (JSON-friendly). */
  nextWindow(): number[] {
    const n = this.windowSize;
    const fs = this.sampleRateHz;
    const dur = n / fs;
    const f = this.currentShaftHz;
    const [a1, a2, a3] = this.amps;
    const [p1, p2, p3] = this.phases;
    const w1 = (2 * Math.PI * f) / fs;
    const x = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const wi = w1 * i;
      x[i] = a1 * Math.sin(p1 + wi) + a2 * Math.sin(p2 + 2 * wi) + a3 * Math.sin(p3 + 3 * wi) + this.noiseG * gaussian(this.rng);
    }
    for (let k = 0; k < 3; k++) {
      this.phases[k] = (this.phases[k]! + 2 * Math.PI * (k + 1) * f * dur) % (2 * Math.PI);
    }

    if (this.cond === 'fault') {
      const bpfo = BPFO_RATIO * f;
      const amp = (this.sev * this.healthyRms) / this.ringPeak;
      while (this.nextImpactT < dur) {
        // Strikes differ a little in strength (ball load, exact spot hit).
        this.ringing.push({ t: this.nextImpactT, amp: amp * (0.9 + 0.2 * this.impactRng()) });
        this.nextImpactT += (1 + this.slip * clamp(gaussian(this.impactRng), -3, 3)) / bpfo;
      }
      this.nextImpactT -= dur;
    }
    if (this.ringing.length > 0) this.addRinging(x, dur);

    if (this.cond === 'fault') this.sev = Math.min(MAX_SEVERITY, this.sev + this.growth);
    this.speedDev = clamp(this.speedDev * (1 - SPEED.revert) + SPEED.step * gaussian(this.rng), -SPEED.bound, SPEED.bound);

    const out = new Array<number>(n);
    for (let i = 0; i < n; i++) out[i] = round4(x[i]!);
    return out;
  }

  /** Add every ringing that overlaps this window; keep those that go on into the next one. */
  private addRinging(x: Float64Array, dur: number): void {
    const fs = this.sampleRateHz;
    const tau = this.ringTauS;
    const w = 2 * Math.PI * this.resonanceHz;
    const len = RING_TAUS * tau;
    const carried: Impact[] = [];
    for (const imp of this.ringing) {
      const end = Math.min(x.length, Math.ceil((imp.t + len) * fs));
      for (let i = Math.max(0, Math.ceil(imp.t * fs)); i < end; i++) {
        const dt = i / fs - imp.t;
        x[i] = x[i]! + imp.amp * Math.exp(-dt / tau) * Math.sin(w * dt);
      }
      if (imp.t + len > dur) carried.push({ t: imp.t - dur, amp: imp.amp });
    }
    this.ringing = carried;
  }
}
