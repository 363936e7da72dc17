import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../src/config/load.js';
import { CLI } from '../helpers/process.js';
import { useTmpDirs } from '../helpers/tmp.js';

const exec = promisify(execFile);

/** `edgebridge check-config` as a process, with only the given EDGEBRIDGE_* variables set. */
async function checkConfig(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('EDGEBRIDGE_')));
  try {
    const { stdout, stderr } = await exec(process.execPath, [CLI, 'check-config', ...args], { env: { ...inherited, ...env }, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('edgebridge check-config', () => {
  const tmp = useTmpDirs();
  const write = (lines: string[]): string => {
    const file = join(tmp(), 'edgebridge.yaml');
    writeFileSync(file, `${lines.join('\n')}\n`);
    return file;
  };

  it('a valid config: exit 0 and a summary of what the gateway would run', async () => {
    const file = write([
      'gateway: { id: gw-north-7 }',
      'mqtt:',
      '  port: 1883',
      '  websocket: { port: 9001 }',
      'kafka: { brokers: ["10.0.0.5:9092", "10.0.0.6:9092"] }',
      'storage: { dir: /var/lib/edgebridge/data }',
      'routes:',
      '  - { mqtt: "devices/{deviceId}/telemetry/#", kafka: iot.telemetry }',
      '  - { mqtt: "devices/{deviceId}/state", kafka: iot.state, compact: true }',
    ]);
    const { code, stdout, stderr } = await checkConfig(['--config', file], { EDGEBRIDGE_STORAGE_SYNCHRONOUS: 'normal' });
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).toBe(
      [
        `config OK: ${file}`,
        '  gateway:     gw-north-7',
        '  mqtt:        127.0.0.1:1883 (tcp), 127.0.0.1:9001/mqtt (websocket)',
        '  kafka:       10.0.0.5:9092, 10.0.0.6:9092',
        '  storage:     /var/lib/edgebridge/data',
        '  routes:      2 (iot.telemetry, iot.state)',
        '  commands:    off',
        '  admin:       127.0.0.1:9464',
        '  environment: EDGEBRIDGE_STORAGE_SYNCHRONOUS',
        '',
      ].join('\n'),
    );
  });

  it('a broken config: exit 2, every problem with its line on stderr, nothing on stdout, no secret shown', async () => {
    const secret = 'file-secret-5f1d0c';
    const file = write([
      'gateway: { id: gw-north-7 }',
      'mqtt:',
      '  prot: 1883',
      'kafka:',
      '  brokers: ["10.0.0.5:9092"]',
      `  sasl: { mechanism: scram, username: gw, password: ${secret} }`,
      'storage:',
      '  dir: ./data',
      '  synchronous: fast',
      'routes: [{ mqtt: "devices/{deviceId}/t", kafka: t }]',
    ]);
    const { code, stdout, stderr } = await checkConfig(['--config', file], { EDGEBRIDGE_MQTT_PORT: '99999' });
    expect(code).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toBe(
      [
        `edgebridge: EB_ERR_CONFIG_INVALID: invalid config ${file}:`,
        '  - set by EDGEBRIDGE_MQTT_PORT: mqtt.port: expected an integer from 0 to 65535 or false, found 99999',
        '  - line 3, column 3: unknown key mqtt.prot (did you mean mqtt.port?)',
        '  - line 6, column 11: kafka.sasl.mechanism: expected one of "plain", "scram-sha-256", "scram-sha-512", found "scram"',
        '  - line 9, column 3: storage.synchronous: expected one of "full", "normal", found "fast"',
        '',
      ].join('\n'),
    );
    expect(stderr).not.toContain(secret);

    const syntax = await checkConfig(['--config', write(['gateway: { id: gw }', 'kafka:', `  sasl: { password: "${secret} }`])]);
    expect(syntax.code).toBe(2);
    expect(syntax.stderr).toMatch(/EB_ERR_CONFIG_READ: config .* is not valid YAML:\n {2}- line 4, column 1: Missing closing "quote/);
    expect(syntax.stderr + syntax.stdout).not.toContain(secret);
  });

  it('--print: the effective config as YAML, defaults filled in, environment overrides applied and marked, secrets masked', async () => {
    const secret = 'env-secret-9c2e41';
    const dir = tmp();
    const file = write([
      'gateway: { id: gw-north-7 }',
      'kafka:',
      '  brokers: ["10.0.0.5:9092"]',
      // the password from the environment takes the place of this file (which does not exist)
      `  sasl: { mechanism: scram-sha-512, username: gw-north-7, passwordFile: ${join(dir, 'absent')} }`,
      'storage: { dir: ./data }',
      'routes: [{ mqtt: "devices/{deviceId}/t", kafka: t }]',
    ]);
    const env = { EDGEBRIDGE_KAFKA_BROKERS: 'k1:9092, k2:9092', EDGEBRIDGE_KAFKA_SASL_PASSWORD: secret, EDGEBRIDGE_MQTT_PORT: '1884' };
    const { code, stdout, stderr } = await checkConfig(['--config', file, '--print'], env);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).not.toContain(secret);
    expect(stdout).toContain('  port: 1884 # from EDGEBRIDGE_MQTT_PORT\n');
    expect(stdout).toContain('  # from EDGEBRIDGE_KAFKA_BROKERS\n  brokers:\n    - k1:9092\n    - k2:9092\n');
    expect(stdout).toContain('    password: "[redacted]" # from EDGEBRIDGE_KAFKA_SASL_PASSWORD\n');
    expect(stdout.match(/# from /g)).toHaveLength(3);

    // What it prints is the config the gateway runs with: with the secret put back, it validates
    // (no environment needed) to exactly what the file and the environment give.
    const printed = parse(stdout) as { kafka: { sasl: Record<string, unknown> }; storage: Record<string, unknown> };
    expect(printed.kafka.sasl).toEqual({ mechanism: 'scram-sha-512', username: 'gw-north-7', password: '[redacted]' });
    expect(printed.storage).toMatchObject({ dir: './data', synchronous: 'full', maxBytes: 1024 ** 3, overflow: 'backpressure' });
    printed.kafka.sasl.password = secret;
    expect(parseConfig(printed)).toEqual(loadConfig(file, env));
  });
});
