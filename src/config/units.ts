// Sizes and durations as people write them in a configuration file.
// Both parsers return null for anything they do not understand, so the caller can say where it was.

const SIZE_UNITS: Readonly<Record<string, number>> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

// Minutes are `m` and months do not exist here, so duration units stay case-sensitive.
const DURATION_UNITS: Readonly<Record<string, number>> = {
  ms: 0.001,
  s: 1,
  m: 60,
  h: 3600,
  d: 86400,
};

// A plain decimal: no sign, no exponent, so `-1KiB` or `1e3` are refused rather than guessed at.
const QUANTITY = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)\s*$/;

/** What the size and duration messages list as accepted units. */
export const SIZE_UNIT_NAMES = ['B', 'KB', 'MB', 'GB', 'TB', 'KiB', 'MiB', 'GiB', 'TiB'] as const;
export const DURATION_UNIT_NAMES = Object.keys(DURATION_UNITS);

/**
 * A size in bytes: a non-negative integer, or a string such as `512MiB`, `64KiB`, `10MB`, `1.5MiB`, `100B`
 * (binary units KiB/MiB/GiB/TiB, decimal KB/MB/GB/TB, case-insensitive). A string without a unit is bytes.
 * A fractional number of bytes is refused when written as bytes, rounded when it comes from a larger unit.
 */
export function parseSize(value: unknown): number | null {
  if (typeof value === 'number') return isByteCount(value) ? value : null;
  if (typeof value !== 'string') return null;
  const match = QUANTITY.exec(value);
  if (!match) return null;
  const amount = Number(match[1]);
  const unit = (match[2] ?? '').toLowerCase();
  const factor = unit === '' ? 1 : SIZE_UNITS[unit];
  if (factor === undefined) return null;
  const bytes = factor === 1 ? amount : Math.round(amount * factor);
  return isByteCount(bytes) ? bytes : null;
}

/**
 * A duration in seconds: a non-negative number, or a string such as `30s`, `500ms`, `5m`, `1.5h`, `7d`.
 * A string without a unit is seconds. The result may be fractional (`500ms` is 0.5).
 */
export function parseDuration(value: unknown): number | null {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value : null;
  if (typeof value !== 'string') return null;
  const match = QUANTITY.exec(value);
  if (!match) return null;
  const unit = match[2] ?? '';
  const factor = unit === '' ? 1 : DURATION_UNITS[unit];
  if (factor === undefined) return null;
  const seconds = Number(match[1]) * factor;
  // Keep 0.001 * 1500 from becoming 1.5000000000000002.
  const rounded = Math.round(seconds * 1e6) / 1e6;
  return Number.isFinite(rounded) ? rounded : null;
}

/** The shortest exact way to write a byte count, for messages: 262144 -> `256KiB`. */
export function formatSize(bytes: number): string {
  for (const unit of ['TiB', 'GiB', 'MiB', 'KiB'] as const) {
    const factor = SIZE_UNITS[unit.toLowerCase()] ?? 1;
    if (bytes >= factor && bytes % factor === 0) return `${bytes / factor}${unit}`;
  }
  return `${bytes}B`;
}

function isByteCount(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}
