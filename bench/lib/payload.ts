// The readings every generator sends: compact JSON with the gateway's dedup identity (bootId,
// seq), padded to an exact size, like a small sensor's telemetry.

/** An 8-hex-digit boot id, distinct per generator process and run. */
export function newBootId(): string {
  return Math.floor(Math.random() * 0xffffffff)
    .toString(16)
    .padStart(8, '0');
}

/**
 * `{"bootId":"…","seq":N,"t":21.5,…extra,"p":"xxx"}` padded with x to `bytes` (longer only when
 * the fields alone do not fit).
 */
export function reading(bootId: string, seq: number, bytes: number, extra = ''): string {
  const head = `{"bootId":"${bootId}","seq":${seq},"t":21.5${extra},"p":"`;
  return `${head}${'x'.repeat(Math.max(0, bytes - head.length - 2))}"}`;
}
