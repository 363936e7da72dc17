import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { redactSecrets } from '../../src/config/secrets.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { readKafkaSecurity } from '../../src/forward/kafka-client.js';
import { gatewayAcls, missingAcls, requiredAcls, type ForwardSettings } from '../../src/forward/settings.js';
import { REDACT } from '../../src/logger.js';
// @ts-expect-error plain ESM script shared with `npm run kafka:start`
import { generateTestPki } from '../../scripts/kafka.mjs';
import { useTmpDirs } from '../helpers/tmp.js';
import { errorOf } from '../helpers/errors.js';

const base = (kafka: ConfigInput['kafka']): ConfigInput => ({
  gateway: { id: 'gw-1' },
  kafka,
  storage: { dir: '/tmp/x' },
  routes: [{ mqtt: 'devices/{deviceId}/telemetry', kafka: 'iot.telemetry' }],
});


describe('kafka.sasl from the environment', () => {
  it('username, password and mechanism from EDGEBRIDGE_KAFKA_SASL_*: the config validates without a password in the file', () => {
    const config = parseConfig(base({ brokers: ['k:9093'], ssl: true }), 'x.yaml', {
      EDGEBRIDGE_KAFKA_SASL_MECHANISM: 'SCRAM-SHA-512',
      EDGEBRIDGE_KAFKA_SASL_USERNAME: 'gw-1',
      EDGEBRIDGE_KAFKA_SASL_PASSWORD: 's3cret',
    });
    expect(config.kafka.sasl).toEqual({ mechanism: 'scram-sha-512', username: 'gw-1', password: 's3cret' });
  });

  it('the password from the environment takes the place of a passwordFile in the file', () => {
    const input = base({ brokers: ['k:9093'], sasl: { mechanism: 'plain', username: 'u', passwordFile: '/run/secrets/kafka' } });
    const config = parseConfig(input, 'x.yaml', { EDGEBRIDGE_KAFKA_SASL_PASSWORD: 'from-env' });
    expect(config.kafka.sasl).toEqual({ mechanism: 'plain', username: 'u', password: 'from-env' });
  });

  it('a password missing everywhere names the key and the variable; a password never appears in an error', () => {
    const err = errorOf(() => parseConfig(base({ brokers: ['k:9093'], sasl: { mechanism: 'plain', username: 'u' } }), 'x.yaml', {}));
    expect(err.code).toBe('EB_ERR_CONFIG_INVALID');
    expect(err.message).toContain('kafka.sasl.password: give exactly one of password (or EDGEBRIDGE_KAFKA_SASL_PASSWORD) and passwordFile');
    const bad = errorOf(() =>
      parseConfig(base({ brokers: ['k:9093'] }), 'x.yaml', { EDGEBRIDGE_KAFKA_SASL_PASSWORD: 'hunter2-secret', EDGEBRIDGE_KAFKA_SASL_MECHANISM: 'kerberos' }),
    );
    expect(bad.message).toContain('kafka.sasl.mechanism');
    expect(bad.message).not.toContain('hunter2-secret');
  });
});

describe('kafka.ssl and kafka.sasl files, read at start', () => {
  const tmp = useTmpDirs();

  it('reads the CA, the client certificate and key, and the password file (its trailing newline dropped)', () => {
    const dir = tmp();
    const pki = generateTestPki(dir, 'kafka') as { caFile: string; certFile: string; keyFile: string };
    const ca = pki;
    const client = pki;
    writeFileSync(join(dir, 'password'), 'pa ss\n');
    const security = readKafkaSecurity({
      ssl: { caFile: ca.caFile, certFile: client.certFile, keyFile: client.keyFile, rejectUnauthorized: true, servername: 'kafka.site' },
      sasl: { mechanism: 'scram-sha-256', username: 'gw-1', passwordFile: join(dir, 'password') },
    });
    expect(security.ssl).toEqual({
      ca: readFileSync(ca.caFile, 'utf8'),
      cert: readFileSync(client.certFile, 'utf8'),
      key: readFileSync(client.keyFile, 'utf8'),
      rejectUnauthorized: true,
      servername: 'kafka.site',
    });
    expect(security.sasl).toEqual({ mechanism: 'scram-sha-256', username: 'gw-1', password: 'pa ss' });
    expect(security.caFile).toBe(ca.caFile);
    expect(readKafkaSecurity({ ssl: true, sasl: undefined })).toEqual({ ssl: { rejectUnauthorized: true }, sasl: undefined, caFile: undefined });
    expect(readKafkaSecurity({ ssl: false, sasl: undefined }).ssl).toBe(false);
  });

  it('an unreadable or wrong file fails with EB_ERR_CONFIG_FILE naming the key and the file', () => {
    const dir = tmp();
    const client = generateTestPki(dir, 'kafka') as { caFile: string; certFile: string; keyFile: string };
    const other = generateTestPki(dir, 'other') as { keyFile: string };
    const missing = join(dir, 'nope.pem');
    const cases: [Parameters<typeof readKafkaSecurity>[0], string][] = [
      [{ ssl: { caFile: missing, rejectUnauthorized: true }, sasl: undefined }, `cannot read kafka.ssl.caFile ${missing}`],
      [{ ssl: { caFile: client.keyFile, rejectUnauthorized: true }, sasl: undefined }, `kafka.ssl.caFile ${client.keyFile} holds no PEM certificate`],
      [{ ssl: { certFile: client.certFile, rejectUnauthorized: true }, sasl: undefined }, 'kafka.ssl.certFile and kafka.ssl.keyFile go together'],
      [{ ssl: { certFile: client.certFile, keyFile: other.keyFile, rejectUnauthorized: true }, sasl: undefined }, `kafka.ssl.keyFile ${other.keyFile} is not an unencrypted PEM private key matching`],
      [{ ssl: false, sasl: { mechanism: 'plain', username: 'u', passwordFile: missing } }, `cannot read kafka.sasl.passwordFile ${missing}`],
    ];
    for (const [kafka, message] of cases) {
      const err = errorOf(() => readKafkaSecurity(kafka));
      expect(err.code).toBe('EB_ERR_CONFIG_FILE');
      expect(err.message).toContain(message);
    }
    writeFileSync(join(dir, 'empty'), '\n');
    expect(errorOf(() => readKafkaSecurity({ ssl: false, sasl: { mechanism: 'plain', username: 'u', passwordFile: join(dir, 'empty') } })).message).toContain('is empty');
    if (process.getuid?.() !== 0) {
      // (root reads files whatever their mode)
      writeFileSync(join(dir, 'locked'), 'x');
      chmodSync(join(dir, 'locked'), 0);
      expect(errorOf(() => readKafkaSecurity({ ssl: false, sasl: { mechanism: 'plain', username: 'u', passwordFile: join(dir, 'locked') } })).code).toBe('EB_ERR_CONFIG_FILE');
    }
  });
});

describe('secrets stay out of logs and printed configs', () => {
  it('pino redacts passwords and private keys wherever a config, settings or kafkajs options put them', () => {
    const lines: string[] = [];
    const logger = pino({ level: 'info', redact: REDACT }, { write: (l: string) => lines.push(l) });
    logger.info({ sasl: { mechanism: 'plain', username: 'u', password: 'p-1' } }, 'a');
    logger.info({ config: { kafka: { sasl: { password: 'p-2' } } } }, 'b');
    logger.info({ settings: { kafka: { security: { sasl: { password: 'p-3' }, ssl: { key: '-----BEGIN PRIVATE KEY-----' } } } } }, 'c');
    logger.info({ password: 'p-4' }, 'd');
    const out = lines.join('');
    for (const secret of ['p-1', 'p-2', 'p-3', 'p-4', 'BEGIN PRIVATE KEY']) expect(out).not.toContain(secret);
    expect(out).toContain('"username":"u"');
    expect(out).toContain('[redacted]');
  });

  it('check-config prints kafka.sasl.password as [redacted]', () => {
    const config = parseConfig(base({ brokers: ['k:9093'], sasl: { mechanism: 'plain', username: 'u', password: 'hunter2' } }));
    const printed = stringify(redactSecrets(config));
    expect(printed).not.toContain('hunter2');
    expect(printed).toContain('password: "[redacted]"');
    expect(config.kafka.sasl?.password).toBe('hunter2'); // the config itself is untouched
  });
});

describe('the ACLs a gateway needs', () => {
  const settings = {
    gatewayId: 'gw-1',
    topics: ['iot.telemetry', 'iot.state'],
    checkpointTopic: 'edgebridge.checkpoints',
    deadLetterTopic: 'edgebridge.dead-letter',
    kafka: { security: { ssl: false, sasl: { mechanism: 'scram-sha-512', username: 'gw-1', password: 'x' }, caFile: undefined } },
  } as unknown as ForwardSettings;

  it('least privilege: Write on the transactional id; Write and Create on its topics; Read on the checkpoint topic and group prefix', () => {
    expect(gatewayAcls(settings)).toHaveLength(6);
    expect(requiredAcls(settings).split('; ')).toEqual([
      '--add --allow-principal User:gw-1 --operation Write --transactional-id edgebridge-gw-1',
      '--add --allow-principal User:gw-1 --operation Write --operation Create --topic iot.telemetry',
      '--add --allow-principal User:gw-1 --operation Write --operation Create --topic iot.state',
      '--add --allow-principal User:gw-1 --operation Write --operation Create --topic edgebridge.dead-letter',
      '--add --allow-principal User:gw-1 --operation Write --operation Create --operation Read --topic edgebridge.checkpoints',
      '--add --allow-principal User:gw-1 --operation Read --group edgebridge-checkpoint-gw-1- --resource-pattern-type prefixed',
    ]);
  });

  it('the missing ones: those of the resource Kafka refused', () => {
    expect(missingAcls(settings, 'TRANSACTIONAL_ID_AUTHORIZATION_FAILED', [])).toBe(
      '--add --allow-principal User:gw-1 --operation Write --transactional-id edgebridge-gw-1',
    );
    expect(missingAcls(settings, 'GROUP_AUTHORIZATION_FAILED', [])).toContain('--group edgebridge-checkpoint-gw-1-');
    expect(missingAcls(settings, 'TOPIC_AUTHORIZATION_FAILED', ['iot.state'])).toBe(
      '--add --allow-principal User:gw-1 --operation Write --operation Create --topic iot.state',
    );
    expect(missingAcls(settings, 'TOPIC_AUTHORIZATION_FAILED', [])!.split('; ')).toHaveLength(4);
    expect(missingAcls(settings, 'CLUSTER_AUTHORIZATION_FAILED', [])).toBeUndefined();
  });
});
