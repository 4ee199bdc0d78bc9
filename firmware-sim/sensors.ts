/**
 * Pure sensor model for the simulated devices: slow drift (mean-reverting
 * random walk around a per-device base) plus small measurement noise.
 *
 * Everything here is deterministic given a seed, so `--seed` reproduces the
 * exact reading sequence of every device. The model advances per sample, not
 * per wall-clock second: tying it to time would make the values depend on
 * timer jitter and break reproducibility.
 */

/** A source of uniform numbers in [0, 1). */
export type Rng = () => number;

/** mulberry32: tiny, fast, good enough for simulation, fully seedable. */
export function createRng(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Derive a 32-bit seed from arbitrary parts (FNV-1a). Used to give every
 * device its own independent stream from one fleet seed, so adding devices
 * does not change the readings of the existing ones.
 */
export function seedFrom(...parts: ReadonlyArray<string | number>): number {
  let h = 0x811c9dc5;
  const s = parts.join('\u0000');
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * Parse a user-supplied seed: an integer literal is used as-is (so the random
 * seed printed in a summary can be passed back verbatim), anything else is
 * hashed.
 */
export function parseSeed(seed: string | number): number {
  if (typeof seed === 'number') return seed >>> 0;
  const trimmed = seed.trim();
  if (/^\d+$/.test(trimmed)) return Number(BigInt(trimmed) & 0xffffffffn);
  return seedFrom(trimmed);
}

/** Standard normal sample (Box-Muller). */
export function gaussian(rng: Rng): number {
  // 1 - rng() is in (0, 1], so log() never sees 0.
  const u = 1 - rng();
  const v = rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

const clamp = (x: number, lo: number, hi: number): number => Math.min(hi, Math.max(lo, x));
const round2 = (x: number): number => Math.round(x * 100) / 100;

/** Physical limits of the simulated sensor hardware (a typical SHT/DHT part). */
export const SENSOR_LIMITS = {
  temp: { min: -40, max: 85 },
  humidity: { min: 0, max: 100 },
  battery: { min: 3.0, max: 4.2 },
  rssi: { min: -100, max: -30 },
} as const;

/** Per-device operating point; drawn once per device from its seeded RNG. */
export interface SensorProfile {
  /** °C, the room temperature the device drifts around. */
  tempBase: number;
  /** % relative humidity the device drifts around. */
  humidityBase: number;
  /** Volts at start; discharges slowly per sample. */
  batteryStart: number;
  /** dBm link quality the device drifts around. */
  rssiBase: number;
}

export function randomProfile(rng: Rng): SensorProfile {
  return {
    tempBase: 18 + rng() * 8,
    humidityBase: 35 + rng() * 25,
    batteryStart: 3.7 + rng() * 0.45,
    rssiBase: -85 + rng() * 40,
  };
}

export interface Reading {
  temp: number;
  humidity: number;
  battery: number;
  rssi: number;
}

/**
 * Tuning of the drift. Each drift term is an Ornstein-Uhlenbeck process:
 * the pull toward 0 keeps a long run bounded around the base, the bound is
 * a hard backstop.
 */
const TEMP = { revert: 0.01, step: 0.04, bound: 4, noise: 0.05 };
const HUMIDITY = { revert: 0.01, step: 0.12, bound: 12, noise: 0.2, perDegree: -1.5 };
const RSSI = { revert: 0.05, step: 0.8, bound: 8, noise: 1.5 };
const BATTERY = { drainPerSample: 0.00002, noise: 0.004, floor: 3.3 };

export class SensorModel {
  readonly profile: SensorProfile;
  private readonly rng: Rng;
  private tempDrift = 0;
  private humidityDrift = 0;
  private rssiDrift = 0;
  private battery: number;

  constructor(rng: Rng, profile: SensorProfile = randomProfile(rng)) {
    this.rng = rng;
    this.profile = profile;
    this.battery = profile.batteryStart;
  }

  /** Advance the model by one sample and return a rounded measurement. */
  next(): Reading {
    const g = (): number => gaussian(this.rng);
    this.tempDrift = clamp(this.tempDrift * (1 - TEMP.revert) + TEMP.step * g(), -TEMP.bound, TEMP.bound);
    this.humidityDrift = clamp(this.humidityDrift * (1 - HUMIDITY.revert) + HUMIDITY.step * g(), -HUMIDITY.bound, HUMIDITY.bound);
    this.rssiDrift = clamp(this.rssiDrift * (1 - RSSI.revert) + RSSI.step * g(), -RSSI.bound, RSSI.bound);
    this.battery = Math.max(BATTERY.floor, this.battery - BATTERY.drainPerSample);

    const p = this.profile;
    const trueTemp = p.tempBase + this.tempDrift;
    // Warmer air holds more water, so relative humidity dips as temp rises.
    const trueHumidity = p.humidityBase + this.humidityDrift + HUMIDITY.perDegree * this.tempDrift;
    const L = SENSOR_LIMITS;
    return {
      temp: round2(clamp(trueTemp + TEMP.noise * g(), L.temp.min, L.temp.max)),
      humidity: round2(clamp(trueHumidity + HUMIDITY.noise * g(), L.humidity.min, L.humidity.max)),
      battery: round2(clamp(this.battery + BATTERY.noise * g(), L.battery.min, L.battery.max)),
      rssi: Math.round(clamp(p.rssiBase + this.rssiDrift + RSSI.noise * g(), L.rssi.min, L.rssi.max)),
    };
  }
}

/** Convenience: a model for one device of a seeded fleet. */
export function deviceSensor(fleetSeed: number, deviceId: string): SensorModel {
  return new SensorModel(createRng(seedFrom(fleetSeed, deviceId)));
}
