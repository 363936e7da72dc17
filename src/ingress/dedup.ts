import { createHash } from 'node:crypto';
import type { DedupMark } from '../log/commit-log.js';
import type { CompiledRoute } from './routes.js';

/** Payloads larger than this are not parsed for identity fields (only DUP dedup applies). */
const MAX_PARSE_BYTES = 64 * 1024;
const OPEN_BRACE = 0x7b;
const DEFAULT_RETRANSMIT_WINDOW_MS = 600_000;

export interface PublishIdentity {
  readonly clientId: string | undefined;
  readonly messageId: number | undefined;
  readonly qos: 0 | 1 | 2;
  readonly dup: boolean;
  readonly payload: Buffer;
}

/**
 * Dedup keys are laid out for the B-tree, not just for equality: 8 bytes naming the stream (route
 * + device, or route + client) followed by the identity in an order-preserving encoding. A
 * device's successive readings (same bootId, growing seq) then land next to each other, so a
 * group commit dirties about one index page per active device instead of one random page per
 * message: that is what keeps dedup cheap under load.
 */
function streamPrefix(...parts: string[]): Buffer {
  const hash = createHash('sha1');
  for (const part of parts) hash.update(part).update('\0');
  return hash.digest().subarray(0, 8);
}

/** A counter stream's id: route, device and the identity fields before the counter, hashed. */
function streamId(pattern: string, deviceId: string, fields: readonly string[]): Buffer {
  const hash = createHash('sha1').update('w\0').update(pattern).update('\0').update(deviceId);
  for (const field of fields) hash.update('\0').update(field);
  return hash.digest().subarray(0, 16);
}

/**
 * An identity field's value as key text: non-negative integers as fixed-width digits (so byte
 * order is numeric order), other integers, strings and booleans as JSON. `undefined` when the
 * value cannot identify a reading exactly: null, objects and arrays, fractions, and integers
 * beyond 2^53, which JSON.parse rounds (snowflake ids, nanosecond stamps: 1541815603606036480
 * and …481 would be one reading; 1e400 and 2e400 both Infinity). Such counters must be sent as
 * strings.
 */
function identityText(value: unknown): string | undefined {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return JSON.stringify(value);
    case 'number':
      if (!Number.isSafeInteger(value)) return undefined;
      return value >= 0 ? `#${String(value).padStart(16, '0')}` : String(value);
    default:
      return undefined;
  }
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
 * The dedup identity of a publish. With every identity field present in the payload (default
 * `bootId` + `seq`), the identity is route + device ID + their values: a retransmit and a replay
 * after reboot/reconnect look alike, and a fresh boot (new bootId) never collides with an old
 * one. A payload that lacks any of them has no identity of its own (a sensor that sends `seq` but
 * no `bootId` restarts its counter at boot: `seq` alone would drop real readings; a value that
 * JSON cannot carry exactly is no identity either, see `identityText`), so only MQTT
 * DUP retransmits of the same packet (client, packet id, payload) are collapsed: every first
 * transmission is remembered so that its DUP can be recognised, and is always stored.
 */
export function dedupMark(route: CompiledRoute, deviceId: string, publish: PublishIdentity): DedupMark | undefined {
  const config = route.dedup;
  if (!config) return undefined;
  if (config.fields.length > 0) {
    const obj = parseObject(publish.payload);
    const texts = obj ? config.fields.map((f) => (Object.hasOwn(obj, f) ? identityText(obj[f]) : undefined)) : [];
    if (obj && texts.every((t) => t !== undefined)) {
      const identity = texts.join('\u0001');
      const key = Buffer.concat([streamPrefix('f', route.pattern, deviceId), Buffer.from(identity, 'utf8')]);
      // The last field is the counter when it is a non-negative integer (seq); the others and
      // the device name its stream (one boot of one device). Exact mode carries it too: what
      // window mode stored is checked there as well.
      const last = obj[config.fields[config.fields.length - 1]!];
      const counter =
        typeof last === 'number' && Number.isSafeInteger(last) && last >= 0
          ? { stream: streamId(route.pattern, deviceId, texts.slice(0, -1)), value: last }
          : undefined;
      const windowed = config.mode === 'window' || (config.mode === undefined && config.fields.length >= 2);
      const mode = counter && windowed ? 'window' : 'check';
      return { key, mode, windowMs: config.window, ...(counter ? { counter } : {}) };
    }
  }
  if (publish.qos === 0 || publish.clientId === undefined || publish.messageId === undefined) return undefined;
  const payloadHash = createHash('sha1').update(publish.payload).digest().subarray(0, 8);
  return {
    key: Buffer.concat([
      // The device too: a client id is not an identity, and another device that used it first
      // must not make this device's retransmit look like its own.
      streamPrefix('p', route.pattern, publish.clientId, deviceId),
      Buffer.from(String(publish.messageId).padStart(5, '0'), 'utf8'),
      payloadHash,
    ]),
    mode: publish.dup ? 'check' : 'remember',
    // Packet ids are reused (often from 1 after a reconnect) and constant payloads are common:
    // remembered for a day, a later message's own retransmit could be mistaken for an old one.
    windowMs: Math.min(config.window, config.retransmitWindow ?? DEFAULT_RETRANSMIT_WINDOW_MS),
  };
}

