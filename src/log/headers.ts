/**
 * A record's own Kafka headers, as the log keeps them: an ordered list of [name, value] pairs
 * (a name may repeat; values are text, or bytes such as MQTT 5 correlation data).
 */
export type HeaderPair = readonly [string, string | Buffer];

/** Headers as a log entry may give them: pairs, or (command acks, older code) an object. */
export type EntryHeaders = readonly HeaderPair[] | Readonly<Record<string, string>>;

/** The pairs of `headers`, in order (an object's in its key order). */
export function headerPairs(headers: EntryHeaders | undefined): HeaderPair[] {
  if (headers === undefined) return [];
  if (Array.isArray(headers)) return [...(headers as readonly HeaderPair[])];
  return Object.entries(headers as Readonly<Record<string, string>>).map(([k, v]) => [k, String(v)] as const);
}

/**
 * The headers as stored in records.headers (TEXT): JSON, a list of pairs whose binary values are
 * `{"b64": "..."}`. Rows of earlier versions hold a JSON object of strings; both are read.
 */
export function encodeHeaders(headers: EntryHeaders | undefined): string | null {
  const pairs = headerPairs(headers);
  if (pairs.length === 0) return null;
  return JSON.stringify(pairs.map(([k, v]) => [k, typeof v === 'string' ? v : { b64: v.toString('base64') }]));
}

/** Reads records.headers back (either form); null: none. A damaged value reads as no headers. */
export function decodeHeaders(text: string | null): HeaderPair[] | undefined {
  if (text === null) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (Array.isArray(parsed)) {
    const pairs: HeaderPair[] = [];
    for (const item of parsed) {
      if (!Array.isArray(item) || typeof item[0] !== 'string') continue;
      const v = item[1] as unknown;
      if (typeof v === 'string') pairs.push([item[0], v]);
      else if (v !== null && typeof v === 'object' && typeof (v as { b64?: unknown }).b64 === 'string') {
        pairs.push([item[0], Buffer.from((v as { b64: string }).b64, 'base64')]);
      }
    }
    return pairs;
  }
  if (parsed !== null && typeof parsed === 'object') {
    return Object.entries(parsed as Record<string, unknown>).map(([k, v]) => [k, String(v)] as const);
  }
  return undefined;
}

/** Bytes the headers add to a Kafka record: each name and value, and their lengths (varints). */
export function headerBytes(headers: EntryHeaders | undefined): number {
  if (headers === undefined) return 0;
  let bytes = 0;
  for (const [k, v] of headerPairs(headers)) {
    bytes += Buffer.byteLength(k, 'utf8') + (typeof v === 'string' ? Buffer.byteLength(v, 'utf8') : v.length) + 4;
  }
  return bytes;
}
