import type { HeaderPair } from '../log/headers.js';

/**
 * The properties of an MQTT 5 PUBLISH as mqtt-packet parses them (aedes hands them on as
 * `packet.properties`). `userPropertyPairs` is added by patches/mqtt-packet: the user properties
 * in wire order, repeated names included (non-enumerable); `userProperties` is mqtt-packet's own
 * object form (a repeated name becomes an array; the order between names is lost).
 */
export interface PublishProperties {
  readonly payloadFormatIndicator?: boolean;
  readonly messageExpiryInterval?: number;
  readonly contentType?: string;
  readonly responseTopic?: string;
  readonly correlationData?: Buffer;
  readonly userProperties?: Readonly<Record<string, string | string[]>>;
  readonly userPropertyPairs?: readonly (readonly [string, string])[];
  readonly topicAlias?: number;
}

/** Kafka header names the gateway gives the v5 properties of a publish. */
export const HEADER_CONTENT_TYPE = 'content-type';
/** `utf-8` (Payload Format Indicator 1) or `bytes` (0); absent when the publish did not carry it. */
export const HEADER_PAYLOAD_FORMAT = 'mqtt-payload-format';
export const HEADER_RESPONSE_TOPIC = 'mqtt-response-topic';
/** The Correlation Data, its bytes unchanged. */
export const HEADER_CORRELATION_DATA = 'mqtt-correlation-data';
/** How many properties of the publish were left out for the bounds below (absent when none). */
export const HEADER_PROPERTIES_DROPPED = 'mqtt-properties-dropped';
/** A user property whose name is reserved for the gateway is kept under this prefix. */
export const USER_PROPERTY_ESCAPE = 'mqtt-user-';

/**
 * Header names a device may not set through a user property: the gateway's own (every record:
 * mqtt-topic, gateway-id; command acks: correlation-id, delivered-at, command-offset; dead letters:
 * edgebridge-*) and those it gives the v5 properties. Every name starting with `mqtt-` or
 * `edgebridge-` is reserved, so the escaped names (mqtt-user-...) can never be confused with a
 * device's own. Compared without case: some consumers fold header names.
 */
const RESERVED_NAMES: ReadonlySet<string> = new Set(['content-type', 'gateway-id', 'correlation-id', 'delivered-at', 'command-offset']);
const RESERVED_PREFIXES = ['mqtt-', 'edgebridge-'] as const;

export function isReservedHeaderName(name: string): boolean {
  const lower = name.toLowerCase();
  return RESERVED_NAMES.has(lower) || RESERVED_PREFIXES.some((p) => lower.startsWith(p));
}

/** Bounds on what one publish may add to its Kafka record (they count against the record's size). */
export interface PropertyLimits {
  /** Most headers taken from the properties of one publish. */
  readonly maxHeaders: number;
  /** Most bytes (names and values, UTF-8) of those headers together. */
  readonly maxHeaderBytes: number;
}

export const DEFAULT_PROPERTY_LIMITS: PropertyLimits = { maxHeaders: 64, maxHeaderBytes: 16 * 1024 };

/** What the log keeps of a publish's v5 properties. */
export interface MappedProperties {
  /** In this order: content type, payload format, response topic, correlation data, user properties as sent. */
  readonly headers: HeaderPair[];
  /** Absolute expiry (ms since the epoch) from the Message Expiry Interval; undefined: never. */
  readonly expiresAt: number | undefined;
  /** Properties left out because of `limits` (also given in the mqtt-properties-dropped header). */
  readonly dropped: number;
  /** User properties kept under the escape prefix because their name is reserved. */
  readonly escaped: number;
}

function byteLength(value: string | Buffer): number {
  return typeof value === 'string' ? Buffer.byteLength(value, 'utf8') : value.length;
}

/** The user properties in wire order: the patched pairs, else the object (repeats after their first). */
export function userPropertyPairs(properties: PublishProperties): (readonly [string, string])[] {
  if (Array.isArray(properties.userPropertyPairs)) return properties.userPropertyPairs.map(([k, v]) => [String(k), String(v)] as const);
  const pairs: (readonly [string, string])[] = [];
  for (const [name, value] of Object.entries(properties.userProperties ?? {})) {
    for (const v of Array.isArray(value) ? value : [value]) pairs.push([name, String(v)]);
  }
  return pairs;
}

/**
 * Maps the v5 properties of a publish received at `receivedAt` to Kafka headers and an expiry.
 * Pure. Rules:
 * - A user property becomes a header of the same name and value, in the order sent, a repeated
 *   name kept each time (a broker keeps their order when it forwards [MQTT-3.3.2-18]; so does
 *   the gateway into Kafka). One with a reserved name (isReservedHeaderName) becomes
 *   `mqtt-user-<name>`: a device can never set or shadow a header of the gateway's.
 * - Content Type becomes `content-type`; Payload Format Indicator `mqtt-payload-format` (`utf-8`
 *   or `bytes`); Response Topic `mqtt-response-topic`; Correlation Data `mqtt-correlation-data`
 *   (its bytes).
 * - At most `limits.maxHeaders` headers and `limits.maxHeaderBytes` bytes: a property past them
 *   is left out and counted, and the count is added as `mqtt-properties-dropped`.
 * - Message Expiry Interval n > 0 s: expires at receivedAt + n s; the forwarder deletes what has
 *   not gone into a Kafka transaction by then [MQTT-3.3.2-5]. 0 or absent: never (like
 *   Mosquitto, 0 is read as no expiry rather than as already expired).
 */
export function mapPublishProperties(
  properties: PublishProperties | undefined,
  receivedAt: number,
  limits: PropertyLimits = DEFAULT_PROPERTY_LIMITS,
): MappedProperties {
  if (properties === undefined || properties === null) return { headers: [], expiresAt: undefined, dropped: 0, escaped: 0 };
  const candidates: HeaderPair[] = [];
  if (typeof properties.contentType === 'string') candidates.push([HEADER_CONTENT_TYPE, properties.contentType]);
  if (typeof properties.payloadFormatIndicator === 'boolean') {
    candidates.push([HEADER_PAYLOAD_FORMAT, properties.payloadFormatIndicator ? 'utf-8' : 'bytes']);
  }
  if (typeof properties.responseTopic === 'string') candidates.push([HEADER_RESPONSE_TOPIC, properties.responseTopic]);
  if (Buffer.isBuffer(properties.correlationData)) candidates.push([HEADER_CORRELATION_DATA, Buffer.from(properties.correlationData)]);
  let escaped = 0;
  for (const [name, value] of userPropertyPairs(properties)) {
    if (isReservedHeaderName(name)) {
      escaped++;
      candidates.push([USER_PROPERTY_ESCAPE + name, value]);
    } else {
      candidates.push([name, value]);
    }
  }
  const headers: HeaderPair[] = [];
  let bytes = 0;
  let dropped = 0;
  for (const pair of candidates) {
    const size = byteLength(pair[0]) + byteLength(pair[1]);
    if (headers.length >= limits.maxHeaders || bytes + size > limits.maxHeaderBytes) {
      dropped++;
      continue;
    }
    headers.push(pair);
    bytes += size;
  }
  if (dropped > 0) headers.push([HEADER_PROPERTIES_DROPPED, String(dropped)]);
  const interval = properties.messageExpiryInterval;
  const expiresAt = typeof interval === 'number' && Number.isFinite(interval) && interval > 0 ? receivedAt + interval * 1000 : undefined;
  return { headers, expiresAt, dropped, escaped };
}
