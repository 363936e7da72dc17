import type { LogEntry } from '../log/commit-log.js';
import { dedupMark } from './dedup.js';
import type { RouteMatch } from './routes.js';
import { mapPublishProperties, type PropertyLimits, type PublishProperties } from './v5-properties.js';

/** A publish as ingress sees it, whatever the MQTT library. */
export interface InboundPublish {
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 0 | 1 | 2;
  readonly dup: boolean;
  readonly messageId: number | undefined;
  readonly clientId: string | undefined;
  readonly receivedAt: number;
  /** The properties of an MQTT 5 PUBLISH (aedes/mqtt-packet `packet.properties`); absent for 3.1.1. */
  readonly properties?: PublishProperties | undefined;
}

/** The log entry for a publish that matched a route: where it goes, and its dedup identity. */
export function toLogEntry(match: RouteMatch, publish: InboundPublish, limits?: PropertyLimits): LogEntry {
  const { route, deviceId } = match;
  const dedup = dedupMark(route, deviceId, publish);
  // v5: user properties, content type... become the record's Kafka headers; the expiry interval an expiry.
  const v5 = publish.properties ? mapPublishProperties(publish.properties, publish.receivedAt, limits) : undefined;
  return {
    receivedAt: publish.receivedAt,
    route: route.pattern,
    kafkaTopic: route.kafkaTopic,
    deviceId,
    mqttTopic: publish.topic,
    qos: publish.qos,
    payload: publish.payload,
    compact: route.compact,
    ...(dedup ? { dedup } : {}),
    ...(v5 && v5.headers.length > 0 ? { headers: v5.headers } : {}),
    ...(v5?.expiresAt !== undefined ? { expiresAt: v5.expiresAt } : {}),
  };
}
