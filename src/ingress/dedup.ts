import { createHash } from 'node:crypto';
import type { DedupMark } from '../log/commit-log.js';
import type { CompiledRoute } from './routes.js';

/** Payloads larger than this are not parsed for identity fields (only DUP dedup applies). */
const MAX_PARSE_BYTES = 64 * 1024;
const OPEN_BRACE = 0x7b;

export interface PublishIdentity {
  readonly clientId: string | undefined;
  readonly messageId: number | undefined;
  readonly qos: 0 | 1 | 2;
  readonly dup: boolean;
  readonly payload: Buffer;
}

function digest(...parts: (string | Buffer)[]): Buffer {
  const hash = createHash('sha1');
  for (const part of parts) {
    hash.update(part);
    hash.update('\0');
  }
  // 128 bits: a chance collision among billions of remembered keys is negligible.
  return hash.digest().subarray(0, 16);
}

/** The top-level JSON object of a payload, if it is one. */
function parseObject(payload: Buffer): Record<string, unknown> | undefined {
  if (payload.length === 0 || payload.length > MAX_PARSE_BYTES) return undefined;
  let i = 0;
  while (i < payload.length && payload[i]! <= 0x20) i++;
  if (payload[i] !== OPEN_BRACE) return undefined;
  try {
    const value: unknown = JSON.parse(payload.toString('utf8'));
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The dedup identity of a publish. With identity fields present in the payload (default
 * `bootId` + `seq`), the identity is route + device ID + their values: a retransmit and a replay
 * after reboot/reconnect look alike, and a fresh boot (new bootId) never collides with an old
 * one. Absent fields count as empty. With none of them present, only MQTT DUP retransmits of the
 * same packet (client, packet id, payload) are collapsed: every first transmission is remembered
 * so that its DUP can be recognised, and is always stored.
 */
export function dedupMark(route: CompiledRoute, deviceId: string, publish: PublishIdentity): DedupMark | undefined {
  const config = route.dedup;
  if (!config) return undefined;
  if (config.fields.length > 0) {
    const obj = parseObject(publish.payload);
    if (obj && config.fields.some((f) => Object.hasOwn(obj, f))) {
      const values = JSON.stringify(config.fields.map((f) => obj[f] ?? ''));
      return { key: digest('f', route.pattern, deviceId, values), mode: 'check', windowMs: config.window };
    }
  }
  if (publish.qos === 0 || publish.clientId === undefined || publish.messageId === undefined) return undefined;
  return {
    key: digest('p', route.pattern, publish.clientId, String(publish.messageId), publish.payload),
    mode: publish.dup ? 'check' : 'remember',
    windowMs: config.window,
  };
}
