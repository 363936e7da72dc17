import { isUtf8 } from 'node:buffer';
import { headerPairs, type EntryHeaders } from '../log/headers.js';

/** The Kafka header that names the command a record answers (ack records carry it too). */
export const CORRELATION_HEADER = 'correlation-id';

/** Longest Correlation Data taken as a correlation id (a command's own is far shorter). */
const MAX_CORRELATION_BYTES = 1024;

/**
 * The correlation id an MQTT 5 publish carries in its Correlation Data (a device's reply to a
 * command echoes the command's): the bytes as UTF-8 text. Undefined without Correlation Data, or
 * when it is no text a Kafka consumer could match a correlation id against (not UTF-8, empty,
 * with U+0000, over 1 KiB).
 */
export function replyCorrelationId(properties: { correlationData?: unknown } | undefined): string | undefined {
  const data = properties?.correlationData;
  if (!Buffer.isBuffer(data) || data.length === 0 || data.length > MAX_CORRELATION_BYTES || !isUtf8(data) || data.includes(0)) return undefined;
  return data.toString();
}

/**
 * A routed publish's Kafka headers with its correlation id first among its own (`correlation-id`,
 * as on ack records), when it carries one as MQTT 5 Correlation Data: a device's reply to a
 * command reaches Kafka matched to the command whatever its payload and topic say. (Its raw bytes
 * stay in `mqtt-correlation-data` too.)
 */
export function withReplyCorrelation<E extends { readonly headers?: EntryHeaders }>(
  entry: E,
  properties: { correlationData?: unknown } | undefined,
): E {
  const id = replyCorrelationId(properties);
  return id === undefined ? entry : { ...entry, headers: [[CORRELATION_HEADER, id], ...headerPairs(entry.headers)] };
}
