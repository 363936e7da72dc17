import type { LogEntry } from '../log/commit-log.js';
import { dedupMark } from './dedup.js';
import type { RouteMatch } from './routes.js';

/** A publish as ingress sees it, whatever the MQTT library. */
export interface InboundPublish {
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 0 | 1 | 2;
  readonly dup: boolean;
  readonly messageId: number | undefined;
  readonly clientId: string | undefined;
  readonly receivedAt: number;
}

/** The log entry for a publish that matched a route: where it goes, and its dedup identity. */
export function toLogEntry(match: RouteMatch, publish: InboundPublish): LogEntry {
  const { route, deviceId } = match;
  const dedup = dedupMark(route, deviceId, publish);
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
  };
}
