// The readings every generator sends: compact JSON with the gateway's dedup identity (bootId,
// seq), padded to an exact size, like a small sensor's telemetry.

/** An 8-hex-digit boot id, distinct per generator process and run. */
export function newBootId(): string {
  return Math.floor(Math.random() * 0xffffffff)
    .toString(16)
    .padStart(8, '0');
}

/**
 * A reading that compresses like real telemetry (the padded one compresses far better than any
 * sensor's): fixed keys, then 3-4 digit samples from a slowly drifting signal, to `bytes`.
 */
export function variedReading(bootId: string, seq: number, bytes: number): string {
  let body = `{"bootId":"${bootId}","seq":${seq},"t":${(20 + Math.random() * 5).toFixed(2)},"rh":${(40 + Math.random() * 20).toFixed(1)},"s":[`;
  let level = 500 + Math.floor(Math.random() * 200);
  let first = true;
  while (body.length < bytes - 8) {
    level += Math.floor(Math.random() * 41) - 20;
    body += `${first ? '' : ','}${level}`;
    first = false;
  }
  return `${body}]}`;
}

/**
 * `{"bootId":"…","seq":N,"t":21.5,…extra,"p":"xxx"}` padded with x to `bytes` (longer only when
 * the fields alone do not fit).
 */
export function reading(bootId: string, seq: number, bytes: number, extra = ''): string {
  const head = `{"bootId":"${bootId}","seq":${seq},"t":21.5${extra},"p":"`;
  return `${head}${'x'.repeat(Math.max(0, bytes - head.length - 2))}"}`;
}
