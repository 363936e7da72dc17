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

/**
 * An identity field's value as key text: non-negative integers as fixed-width digits (so byte
 * order is numeric order), the rest as JSON. `undefined` when the value cannot identify a reading:
 * null, or an integer beyond 2^53, which JSON.parse rounds (snowflake ids, nanosecond stamps:
 * 1541815603606036480 and …481 would be one reading). Such counters must be sent as strings.
 */
function identityText(value: unknown): string | undefined {
  if (value === null || value === undefined) return undefined;
  if (typeof value === 'number') {
    if (Number.isInteger(value) && !Number.isSafeInteger(value)) return undefined;
    if (Number.isSafeInteger(value) && value >= 0) return `#${String(value).padStart(16, '0')}`;
  }
  return JSON.stringify(value);
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
 * no `bootId` restarts its counter at boot: `seq` alone would drop real readings; an integer beyond
 * 2^53 is no identity either, see `identityText`), so only MQTT
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
      return {
        key: Buffer.concat([streamPrefix('f', route.pattern, deviceId), Buffer.from(identity, 'utf8')]),
        mode: 'check',
        windowMs: config.window,
      };
    }
  }
  if (publish.qos === 0 || publish.clientId === undefined || publish.messageId === undefined) return undefined;
  const payloadHash = createHash('sha1').update(publish.payload).digest().subarray(0, 8);
  return {
    key: Buffer.concat([
      streamPrefix('p', route.pattern, publish.clientId),
      Buffer.from(String(publish.messageId).padStart(5, '0'), 'utf8'),
      payloadHash,
    ]),
    mode: publish.dup ? 'check' : 'remember',
    // Packet ids are reused (often from 1 after a reconnect) and constant payloads are common:
    // remembered for a day, a later message's own retransmit could be mistaken for an old one.
    windowMs: Math.min(config.window, config.retransmitWindow ?? DEFAULT_RETRANSMIT_WINDOW_MS),
  };
}

/** Most first sends remembered as unstored (about 100 bytes each). */
const MAX_UNSTORED_SENDS = 10_000;

/**
 * First sends (DUP=0) of DUP-only packets that were not stored (the log refused them, or the
 * connection closed before their group commit). Their DUP resend must be stored, not taken for a
 * retransmit of an earlier packet with the same client, packet id and payload whose key is still
 * remembered: packet ids restart after a reconnect and constant payloads (on/off) are common, so
 * without this an acknowledged reading would be dropped as a duplicate. In memory only: a gateway
 * crash between such a first send and its commit still loses this knowledge (README: exceptions).
 */
export class UnstoredSends {
  private readonly keys = new Map<string, true>();

  constructor(private readonly limit = MAX_UNSTORED_SENDS) {}

  /** The mark to store with: a DUP resend of an unstored first send is stored like a first send. */
  resolve(mark: DedupMark | undefined): DedupMark | undefined {
    if (mark === undefined || this.keys.size === 0) return mark;
    const id = mark.key.toString('base64');
    if (!this.keys.delete(id)) return mark;
    return mark.mode === 'check' ? { ...mark, mode: 'remember' } : mark;
  }

  /** After the entry was stored or refused. */
  settled(mark: DedupMark | undefined, stored: boolean): void {
    if (mark === undefined || mark.mode !== 'remember') return;
    const id = mark.key.toString('base64');
    this.keys.delete(id);
    if (stored) return;
    this.keys.set(id, true);
    if (this.keys.size > this.limit) this.keys.delete(this.keys.keys().next().value!);
  }

  get size(): number {
    return this.keys.size;
  }
}
