/**
 * Human units for config values: sizes ("512MB", "1GiB", or bytes) and durations ("100ms", "24h",
 * "7d", or milliseconds). Decimal and binary size prefixes both mean what they say.
 */
const SIZE_UNITS: Record<string, number> = {
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

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 };

function parseWithUnits(value: unknown, units: Record<string, number>): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  if (!m) return undefined;
  const unit = (m[2] ?? '').toLowerCase();
  const factor = unit === '' ? 1 : units[unit];
  return factor === undefined ? undefined : Math.round(Number(m[1]) * factor);
}

export function parseBytes(value: unknown): number | undefined {
  return parseWithUnits(value, SIZE_UNITS);
}

export function parseDurationMs(value: unknown): number | undefined {
  return parseWithUnits(value, DURATION_UNITS);
}
