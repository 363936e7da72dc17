import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { changedKeys, planReload } from '../../src/config/reload.js';
import type { ConfigInput } from '../../src/config/schema.js';

const BASE: ConfigInput = {
  gateway: { id: 'gw-1' },
  kafka: { brokers: ['127.0.0.1:9092'] },
  storage: { dir: './data' },
  routes: [{ mqtt: 'devices/{deviceId}/telemetry/#', kafka: 'iot.telemetry' }],
};

const config = (patch: Partial<ConfigInput> = {}) => parseConfig({ ...BASE, ...patch });

describe('config reload', () => {
  it('names the changed key paths: mappings key by key, lists and scalars whole, added and removed sections', () => {
    expect(changedKeys(config(), config())).toEqual([]);
    const next = config({
      kafka: { brokers: ['127.0.0.1:9092', '127.0.0.1:9093'] },
      routes: [{ mqtt: 'devices/{deviceId}/telemetry/#', kafka: 'iot.other' }],
      mqtt: { limits: { maxSubscriptions: 5 } },
      commands: {},
    });
    expect(changedKeys(config(), next).sort()).toEqual(['commands', 'kafka.brokers', 'mqtt.limits.maxSubscriptions', 'routes']);
  });

  it('applies routes, log.level and the live limits, and keeps every other key as it was', () => {
    const running = config();
    const plan = planReload(
      running,
      config({
        routes: [...BASE.routes!, { mqtt: 'devices/{deviceId}/status', kafka: 'iot.status' }],
        log: { level: 'debug' },
        mqtt: { limits: { maxTopicBytes: 256, maxTopicLevels: 8 } },
        kafka: { brokers: ['10.0.0.1:9092'] },
      }),
      running.mqtt.maxPayloadBytes,
    );
    expect(plan.applied.sort()).toEqual(['log.level', 'mqtt.limits.maxTopicBytes', 'routes']);
    expect(plan.needRestart.sort()).toEqual(['kafka.brokers', 'mqtt.limits.maxTopicLevels']);
    expect(plan.config.routes.map((r) => r.kafka)).toEqual(['iot.telemetry', 'iot.status']);
    expect(plan.config.log.level).toBe('debug');
    expect(plan.config.mqtt.limits).toMatchObject({ maxTopicBytes: 256, maxTopicLevels: running.mqtt.limits.maxTopicLevels });
    expect(plan.config.kafka.brokers).toEqual(['127.0.0.1:9092']);
    expect(running.log.level).toBe('info');
  });

  it('lowers mqtt.maxPayloadBytes at once but raises it above the size at start only with a restart', () => {
    const running = config({ mqtt: { maxPayloadBytes: 4096 } });
    const lowered = planReload(running, config({ mqtt: { maxPayloadBytes: 1024 } }), 4096);
    expect(lowered.applied).toEqual(['mqtt.maxPayloadBytes']);
    // back up to the size the storage budget was made for: live
    expect(planReload(lowered.config, config({ mqtt: { maxPayloadBytes: 4096 } }), 4096).applied).toEqual(['mqtt.maxPayloadBytes']);
    const raised = planReload(running, config({ mqtt: { maxPayloadBytes: 8192 } }), 4096);
    expect(raised).toMatchObject({ applied: [], needRestart: ['mqtt.maxPayloadBytes'] });
    expect(raised.config.mqtt.maxPayloadBytes).toBe(4096);
  });
});
