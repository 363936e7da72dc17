import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../src/config/load.js';
import { mqttListenHost } from '../../src/config/schema.js';
import { useTmpDirs } from '../helpers/tmp.js';
import { errorOf } from '../helpers/errors.js';

const MINIMAL = `
gateway:
  id: gw-site-1          # stable identity of this gateway
mqtt:
  port: 1883
kafka:
  brokers: ["127.0.0.1:9092"]
storage:
  dir: ./data            # the commit log lives here
routes:
  - mqtt: "devices/{deviceId}/telemetry/#"   # named wildcard = the device ID
    kafka: iot.telemetry
`;


describe('config', () => {
  const tmp = useTmpDirs();
  const write = (text: string): string => {
    const file = join(tmp(), 'edgebridge.yaml');
    writeFileSync(file, text);
    return file;
  };

  it('accepts the minimal file from the docs and fills in defaults', () => {
    const config = loadConfig(write(MINIMAL), {});
    expect(config.gateway.id).toBe('gw-site-1');
    expect(config.mqtt).toMatchObject({ port: 1883, maxPayloadBytes: 262144, auth: { allowAnonymous: false } });
    expect(config.mqtt.host).toBeUndefined();
    expect(mqttListenHost(config.mqtt)).toBe('127.0.0.1');
    expect(config.kafka.brokers).toEqual(['127.0.0.1:9092']);
    expect(config.kafka.topicDefaults).toEqual({ partitions: 3, replicationFactor: 1 });
    expect(config.storage.synchronous).toBe('full');
    expect(config.forward).toMatchObject({ batchMaxRecords: 5000, commitIntervalMs: 100, checkpointTopic: 'edgebridge.checkpoints' });
    expect(config.storage).toMatchObject({ maxBytes: 1024 ** 3, maxAge: 7 * 86400e3, overflow: 'backpressure' });
    expect(config.routes).toEqual([
      {
        mqtt: 'devices/{deviceId}/telemetry/#',
        kafka: 'iot.telemetry',
        dedup: { fields: ['bootId', 'seq'], window: 86400e3, retransmitWindow: 600e3 },
        compact: false,
      },
    ]);
    expect(config.log.level).toBe('info');
  });

  it('reads sizes and durations with units', () => {
    const config = loadConfig(
      write(
        MINIMAL.replace('dir: ./data', 'dir: ./data\n  maxBytes: 512MB\n  maxAge: 36h').replace(
          'kafka: iot.telemetry',
          'kafka: iot.telemetry\n    dedup: { fields: [msgId], window: 90m }\n  - mqtt: "state/{deviceId}"\n    kafka: iot.state\n    dedup: false\n    compact: true',
        ),
      ),
      {},
    );
    expect(config.storage.maxBytes).toBe(512e6);
    expect(config.storage.maxAge).toBe(36 * 3600e3);
    expect(config.routes[0]!.dedup).toEqual({ fields: ['msgId'], window: 90 * 60e3, retransmitWindow: 600e3 });
    expect(config.routes[1]).toMatchObject({ dedup: false, compact: true });
    const err = errorOf(() => loadConfig(write(MINIMAL.replace('dir: ./data', 'dir: ./data\n  maxBytes: lots')), {}));
    expect(err.message).toMatch(/storage\.maxBytes: expected a size/);
  });

  it('refuses a payload limit above what one Kafka transaction may carry', () => {
    const err = errorOf(() =>
      loadConfig(write(MINIMAL.replace('port: 1883', 'port: 1883\n  maxPayloadBytes: 2MB')), {}),
    );
    expect(err.message).toContain('mqtt.maxPayloadBytes: must not exceed forward.batchMaxBytes');
  });

  it('refuses a storage limit that could not hold the largest publishes beside its WAL', () => {
    const err = errorOf(() => loadConfig(write(MINIMAL.replace('dir: ./data', 'dir: ./data\n  maxBytes: 1MiB')), {}));
    expect(err.message).toMatch(/storage\.maxBytes: leaves \d+ bytes for records beside the WAL: too little for publishes of mqtt\.maxPayloadBytes \(262144\); raise it to at least \d+/);
    // with smaller publishes the same limit is fine
    const config = loadConfig(write(MINIMAL.replace('dir: ./data', 'dir: ./data\n  maxBytes: 1MiB').replace('port: 1883', 'port: 1883\n  maxPayloadBytes: 64KiB')), {});
    expect(config.storage.maxBytes).toBe(1024 * 1024);
  });

  it('accepts IPv6 brokers in brackets', () => {
    const config = loadConfig(write(MINIMAL.replace('["127.0.0.1:9092"]', '["[::1]:9092", "kafka-1.site:9092"]')), {});
    expect(config.kafka.brokers).toEqual(['[::1]:9092', 'kafka-1.site:9092']);
  });

  it('freezes the result', () => {
    const config = loadConfig(write(MINIMAL), {});
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.kafka.brokers)).toBe(true);
    expect(() => ((config.mqtt as { port: number }).port = 1)).toThrow();
  });

  it('rejects unknown keys, naming their path', () => {
    const err = errorOf(() => loadConfig(write(MINIMAL.replace('port: 1883', 'port: 1883\n  prot: 1'))));
    expect(err.code).toBe('EB_ERR_CONFIG_INVALID');
    expect(err.message).toContain('unknown key mqtt.prot');
  });

  it('rejects wrong types, naming the key path', () => {
    const err = errorOf(() => loadConfig(write(MINIMAL.replace('port: 1883', 'port: "eighteen"')), {}));
    expect(err.message).toMatch(/mqtt\.port: expected a port number/);
    const err2 = errorOf(() => loadConfig(write(MINIMAL.replace('kafka: iot.telemetry', 'kafka: [1]')), {}));
    expect(err2.message).toContain('routes[0].kafka');
  });

  it('reports every problem at once', () => {
    const err = errorOf(() =>
      parseConfig({ gateway: { id: 'bad id!' }, kafka: { brokers: [] }, storage: {}, routes: [] }, 'x.yaml'),
    );
    expect(err.message).toContain('invalid config x.yaml');
    for (const path of ['gateway.id', 'kafka.brokers', 'storage.dir', 'routes']) expect(err.message).toContain(path);
  });

  it('validates route patterns at start', () => {
    const err = errorOf(() => loadConfig(write(MINIMAL.replace('devices/{deviceId}/telemetry/#', 'devices/+/telemetry')), {}));
    expect(err.message).toContain('routes[0].mqtt');
    expect(err.message).toContain('{deviceId}');
  });

  it('applies environment overrides and names them in errors', () => {
    const config = loadConfig(write(MINIMAL), {
      EDGEBRIDGE_KAFKA_BROKERS: 'k1:9092, k2:9092',
      EDGEBRIDGE_MQTT_PORT: '11883',
      EDGEBRIDGE_STORAGE_SYNCHRONOUS: 'normal',
    });
    expect(config.kafka.brokers).toEqual(['k1:9092', 'k2:9092']);
    expect(config.mqtt.port).toBe(11883);
    expect(config.storage.synchronous).toBe('normal');
    const err = errorOf(() => loadConfig(write(MINIMAL), { EDGEBRIDGE_MQTT_PORT: 'abc' }));
    expect(err.message).toContain('mqtt.port');
    expect(err.message).toContain('EDGEBRIDGE_MQTT_PORT');
  });

  it('listens on loopback only unless clients authenticate (Mosquitto 2 default)', () => {
    const withMqtt = (mqtt: string): string => write(MINIMAL.replace('mqtt:\n  port: 1883', `mqtt:\n  port: 1883\n${mqtt}`));
    const open = errorOf(() => loadConfig(withMqtt('  host: 0.0.0.0'), {}));
    expect(open.message).toContain('mqtt.host: "0.0.0.0" lets other machines connect, and no authentication is configured');
    expect(errorOf(() => loadConfig(write(MINIMAL), { EDGEBRIDGE_MQTT_HOST: '192.168.1.5' })).message).toContain('set by EDGEBRIDGE_MQTT_HOST: mqtt.host');
    expect(loadConfig(withMqtt('  host: ::1'), {}).mqtt.host).toBe('::1');
    const anonymous = loadConfig(withMqtt('  host: 0.0.0.0\n  auth: { allowAnonymous: true }'), {});
    expect(mqttListenHost(anonymous.mqtt)).toBe('0.0.0.0');
    const authenticated = loadConfig(withMqtt('  auth: { passwordFile: /etc/edgebridge/passwd }'), {});
    expect(mqttListenHost(authenticated.mqtt)).toBe('0.0.0.0');
    const tls = errorOf(() => loadConfig(withMqtt('  tls: { host: 0.0.0.0, certFile: c.pem, keyFile: k.pem, useIdentityAsUsername: true }'), {}));
    expect(tls.message).toContain('mqtt.tls.useIdentityAsUsername: needs requireCertificate');
    expect(tls.message).toContain('mqtt.tls.host: "0.0.0.0" lets other machines connect');
    const mtls = loadConfig(withMqtt('  tls: { certFile: c.pem, keyFile: k.pem, caFile: ca.pem, requireCertificate: true }'), {});
    expect(mqttListenHost(mtls.mqtt)).toBe('0.0.0.0');
    expect(errorOf(() => loadConfig(write(MINIMAL.replace('port: 1883', 'port: false')), {})).message).toContain('no MQTT listener');
  });

  it('explains an unreadable or malformed file', () => {
    expect(errorOf(() => loadConfig(join(tmp(), 'missing.yaml'))).code).toBe('EB_ERR_CONFIG_READ');
    const err = errorOf(() => loadConfig(write('gateway: [unclosed\n')));
    expect(err.code).toBe('EB_ERR_CONFIG_READ');
    expect(err.message).toMatch(/not valid YAML:\n  - line \d+, column \d+: /);
    expect(errorOf(() => loadConfig(write('- a list\n'))).message).toContain('top level must be a mapping');
  });
});
