import type { LogEntry, LogRecord } from '../../src/log/commit-log.js';
import { headerPairs } from '../../src/log/headers.js';

/** A log entry for unit tests: device `deviceId`, a small binary payload derived from `n`. */
export function entry(deviceId: string, n: number): LogEntry {
  return {
    receivedAt: 1_700_000_000_000 + n,
    route: 'devices/{deviceId}/telemetry/#',
    kafkaTopic: 'iot.telemetry',
    deviceId,
    mqttTopic: `devices/${deviceId}/telemetry`,
    qos: 1,
    payload: Buffer.from([0, 255, n & 0xff, 10, 13]),
  };
}

/** `e` as the forwarder reads it back at `offset` (headers in their stored, ordered form). */
export function recordOf(e: LogEntry, offset: number): LogRecord {
  const { dedup: _dedup, compact: _compact, headers, ...rest } = e;
  const pairs = headerPairs(headers);
  return { ...rest, offset, ...(pairs.length > 0 ? { headers: pairs } : {}) };
}
