import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { errorOf } from '../helpers/errors.js';
import { useTmpDirs } from '../helpers/tmp.js';

// What an operator reads when a config is broken: each problem on its own line, with the file's
// line and column (or the environment variable that set the value), the key path, what was
// expected and what was found. The configs are written out line by line so the numbers can be read.

describe('config error messages', () => {
  const tmp = useTmpDirs();
  /** Loads a config file of these lines; the problems the error lists, one per line. */
  const problems = (lines: string[], env: NodeJS.ProcessEnv = {}): { file: string; message: string; problems: string[] } => {
    const file = join(tmp(), 'edgebridge.yaml');
    writeFileSync(file, `${lines.join('\n')}\n`);
    const err = errorOf(() => loadConfig(file, env));
    expect(err.code).toBe('EB_ERR_CONFIG_INVALID');
    const [head, ...rest] = err.message.split('\n');
    expect(head).toBe(`invalid config ${file}:`);
    return { file, message: err.message, problems: rest.map((l) => l.replace(/^ {2}- /, '')) };
  };

  it('a wrong type: the line of the key, the expected type and the value found', () => {
    const { problems: found } = problems([
      'gateway:',
      '  id: gw-1',
      'mqtt:',
      '  port: "eighteen"', // line 4: the schema's own message
      'kafka:',
      '  brokers: ["127.0.0.1:9092"]',
      '  ssl: { rejectUnauthorized: no }', // line 7: inside one option of a union (true | false | mapping)
      'storage:',
      '  dir: ./data',
      'routes:',
      '  - mqtt: "devices/{deviceId}/telemetry/#"',
      '    kafka: iot.telemetry',
      '    compact: "yes"', // line 13: described from the schema
    ]);
    expect(found).toEqual([
      'line 4, column 3: mqtt.port: expected a port number 0-65535, or false to turn the plain TCP listener off, found "eighteen"',
      'line 7, column 10: kafka.ssl.rejectUnauthorized: expected true or false, found "no"',
      'line 13, column 5: routes[0].compact: expected true or false, found "yes"',
    ]);
  });

  it('a number out of range: the range', () => {
    const { problems: found } = problems([
      'gateway: { id: gw-1 }',
      'mqtt:',
      '  limits:',
      '    maxConnections: 0',
      'kafka:',
      '  brokers: ["127.0.0.1:9092"]',
      '  connectionTimeoutMs: 0',
      'storage:',
      '  dir: ./data',
      '  groupCommitIntervalMs: 5000',
      '  maxBytes: 1KB',
      'routes: [{ mqtt: "devices/{deviceId}/t", kafka: t }]',
    ]);
    expect(found).toEqual([
      'line 4, column 5: mqtt.limits.maxConnections: expected an integer ≥ 1, found 0',
      'line 7, column 3: kafka.connectionTimeoutMs: expected a positive integer, found 0',
      'line 10, column 3: storage.groupCommitIntervalMs: expected an integer from 0 to 1000, found 5000',
      'line 11, column 3: storage.maxBytes: expected a size of at least 1048576 bytes, e.g. 1048576, "512MB" or "1GiB", found "1KB"',
    ]);
  });

  it('a value not among the choices: the choices', () => {
    const { problems: found } = problems([
      'gateway: { id: gw-1 }',
      'kafka: { brokers: ["127.0.0.1:9092"] }',
      'storage:',
      '  dir: ./data',
      '  synchronous: fast',
      'routes: [{ mqtt: "devices/{deviceId}/t", kafka: t }]',
      'log: { level: loud }',
    ]);
    expect(found).toEqual([
      'line 5, column 3: storage.synchronous: expected one of "full", "normal", found "fast"',
      'line 7, column 8: log.level: expected one of "fatal", "error", "warn", "info", "debug", "trace", "silent", found "loud"',
    ]);
  });

  it('an unknown key, however deep: its own line, and the known key it is a typo of', () => {
    const { problems: found } = problems([
      'gateway: { id: gw-1 }',
      'mqtt:',
      '  prot: 1884',
      '  limits:',
      '    maxConections: 5',
      '  colour: red',
      'kafka: { brokers: ["127.0.0.1:9092"] }',
      'storage: { dir: ./data }',
      'routes:',
      '  - mqtt: "devices/{deviceId}/t"',
      '    kafka: t',
      '    dedup: { feilds: [seq] }',
    ]);
    expect(found).toEqual([
      'line 3, column 3: unknown key mqtt.prot (did you mean mqtt.port?)',
      'line 5, column 5: unknown key mqtt.limits.maxConections (did you mean mqtt.limits.maxConnections?)',
      'line 6, column 3: unknown key mqtt.colour',
      'line 12, column 14: unknown key routes[0].dedup.feilds (did you mean routes[0].dedup.fields?)',
    ]);
  });

  it('a missing required key: the line of the mapping that lacks it (none for a missing section)', () => {
    const { problems: found } = problems([
      'gateway: { id: gw-1 }',
      'storage:',
      '  synchronous: normal',
      'routes:',
      '  - kafka: t',
    ]);
    expect(found).toEqual([
      'missing key kafka: expected a mapping',
      'line 2, column 1: missing key storage.dir: expected a non-empty string',
      'line 5, column 5: missing key routes[0].mqtt: expected a non-empty string',
    ]);
  });

  it('a bad value from an environment override: the variable, not the line of the value it replaced', () => {
    const { problems: found } = problems(
      [
        'gateway: { id: gw-1 }',
        'kafka:',
        '  brokers: ["127.0.0.1:9092"]',
        'storage:',
        '  dir: ./data',
        '  synchronous: full',
        'routes: [{ mqtt: "devices/{deviceId}/t", kafka: t }]',
      ],
      { EDGEBRIDGE_STORAGE_SYNCHRONOUS: 'fast', EDGEBRIDGE_KAFKA_BROKERS: 'k1:9092, k2', EDGEBRIDGE_MQTT_PORT: 'abc' },
    );
    expect(found).toEqual([
      'set by EDGEBRIDGE_MQTT_PORT: mqtt.port: expected a port number 0-65535, or false to turn the plain TCP listener off, found "abc"',
      'set by EDGEBRIDGE_KAFKA_BROKERS: kafka.brokers[1]: expected host:port (IPv6 as [addr]:port), found "k2"',
      'set by EDGEBRIDGE_STORAGE_SYNCHRONOUS: storage.synchronous: expected one of "full", "normal", found "fast"',
    ]);
  });

  it('a list item: its own line and column; a cross-key rule: its message', () => {
    const { problems: found } = problems([
      'gateway: { id: gw-1 }',
      'mqtt:',
      '  maxPayloadBytes: 2MB',
      'kafka:',
      '  brokers:',
      '    - 127.0.0.1:9092',
      '    - kafka-2',
      'storage: { dir: ./data }',
      'routes: [{ mqtt: "devices/{deviceId}/t", kafka: t }]',
    ]);
    expect(found).toEqual([
      'line 3, column 3: mqtt.maxPayloadBytes: must not exceed forward.batchMaxBytes (900000), itself below the broker\'s message.max.bytes',
      'line 7, column 7: kafka.brokers[1]: expected host:port (IPv6 as [addr]:port), found "kafka-2"',
    ]);
  });

  it('a secret of the wrong kind is named, not shown', () => {
    const { message, problems: found } = problems([
      'gateway: { id: gw-1 }',
      'kafka:',
      '  brokers: ["127.0.0.1:9092"]',
      '  sasl: { mechanism: plain, username: gw-1, password: 86753090 }',
      'storage: { dir: ./data }',
      'routes: [{ mqtt: "devices/{deviceId}/t", kafka: t }]',
    ]);
    expect(found).toEqual(['line 4, column 45: kafka.sasl.password: expected a non-empty string, found [redacted]']);
    expect(message).not.toContain('86753090');
  });

  it('YAML syntax errors: line and column, without the source line (it may hold a password)', () => {
    const file = join(tmp(), 'broken.yaml');
    writeFileSync(file, ['gateway: { id: gw-1 }', 'kafka:', '  sasl:', '    password: a', '    password: s3cr3t-in-yaml', 'storage:', '\tdir: d'].join('\n'));
    const err = errorOf(() => loadConfig(file, {}));
    expect(err.code).toBe('EB_ERR_CONFIG_READ');
    expect(err.message).toBe(
      `config ${file} is not valid YAML:\n  - line 5, column 5: Map keys must be unique\n  - line 7, column 1: Tabs are not allowed as indentation`,
    );
    expect(errorOf(() => loadConfig(write(tmp(), 'gateway: { id: *nope }\n'), {})).message).toMatch(/is not valid YAML: Unresolved alias/);
  });
});

function write(dir: string, text: string): string {
  const file = join(dir, 'alias.yaml');
  writeFileSync(file, text);
  return file;
}
