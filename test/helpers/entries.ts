import type { LogEntry } from '../../src/log/commit-log.js';

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
