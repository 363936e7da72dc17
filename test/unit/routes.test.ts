import { describe, expect, it } from 'vitest';
import { RouteTable, compileRoute } from '../../src/ingress/routes.js';

describe('route matching', () => {
  const table = new RouteTable([
    { mqtt: 'devices/{deviceId}/telemetry/#', kafka: 'iot.telemetry' },
    { mqtt: 'sites/+/{deviceId}/state', kafka: 'iot.state' },
  ]);

  it.each([
    ['devices/d1/telemetry', 'iot.telemetry', 'd1'],
    ['devices/d1/telemetry/temp', 'iot.telemetry', 'd1'],
    ['devices/sensor-42/telemetry/a/b/c', 'iot.telemetry', 'sensor-42'],
    ['sites/north/pump-7/state', 'iot.state', 'pump-7'],
  ])('%s -> %s keyed %s', (topic, kafka, deviceId) => {
    const m = table.match(topic);
    expect(m?.route.kafkaTopic).toBe(kafka);
    expect(m?.deviceId).toBe(deviceId);
  });

  it.each([
    'devices/d1',
    'devices//telemetry',
    'devices/d1/status',
    'other/d1/telemetry',
    'sites/north/pump-7/state/extra',
    '$SYS/devices/d1/telemetry',
    '',
  ])('%s matches no route', (topic) => {
    expect(table.match(topic)).toBeUndefined();
  });

  it('first matching route wins', () => {
    const t = new RouteTable([
      { mqtt: 'devices/{deviceId}/alarm', kafka: 'alarms' },
      { mqtt: 'devices/{deviceId}/#', kafka: 'all' },
    ]);
    expect(t.match('devices/x/alarm')?.route.kafkaTopic).toBe('alarms');
    expect(t.match('devices/x/other')?.route.kafkaTopic).toBe('all');
    expect(t.kafkaTopics).toEqual(['alarms', 'all']);
  });

  it.each([
    ['devices/+/telemetry', 'needs a {deviceId} level'],
    ['devices/{deviceId}/{deviceId}', 'only once'],
    ['devices/#/{deviceId}', '"#" must be the last level'],
    ['devices/id{deviceId}/x', 'whole level'],
    ['devices/a+/{deviceId}', 'whole level'],
    ['', 'is empty'],
  ])('rejects %s', (pattern, problem) => {
    expect(() => compileRoute({ mqtt: pattern, kafka: 't' })).toThrow(problem);
  });
});
