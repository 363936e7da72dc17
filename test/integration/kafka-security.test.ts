import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AclOperationTypes, AclPermissionTypes, AclResourceTypes, Kafka, ResourcePatternTypes, logLevel, type Admin, type AclEntry } from 'kafkajs';
import { pino, type Logger } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { consume } from '../../src/consume.js';
import { readKafkaSecurity } from '../../src/forward/kafka-client.js';
import { Gateway } from '../../src/gateway.js';
import { testConfig, uniqueName } from '../helpers/gateway.js';
import { consumeAll, type ConsumedRecord, type KafkaClientSecurity } from '../helpers/kafka.js';
import { publishAcked, reading, seqs } from '../helpers/publish.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';
// @ts-expect-error plain ESM script shared with `npm run kafka:start`
import { generateTestPki, startSecureKafka } from '../../scripts/kafka.mjs';

interface SecureKafka {
  readonly brokers: string[];
  readonly caFile: string;
  readonly admin: { username: string; password: string };
  client(user?: { username: string; password: string }, mechanism?: string): { brokers: string[] } & KafkaClientSecurity;
  stop(graceMs?: number): Promise<void>;
}

/** The gateway's Kafka user (SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN credentials on the broker). */
const GATEWAY_USER = { username: 'edgebridge-gw', password: 'gw-pass-7c41e0' };
const CHECKPOINT_TOPIC = 'edgebridge.checkpoints';
const DEAD_LETTER_TOPIC = 'edgebridge.dead-letter';

/**
 * The least-privilege ACLs of a gateway, written out here as the README documents them (and
 * independently of src/forward/settings.ts, whose requiredAcls must say the same):
 * Write on its transactional id; Write and Create on its route topic and the dead-letter topic;
 * Write, Create and Read on the checkpoint topic; Read on its checkpoint consumer's group prefix.
 */
function gatewayAclList(gatewayId: string, topic: string): { name: string; args: string; entries: AclEntry[] }[] {
  const principal = `User:${GATEWAY_USER.username}`;
  const entry = (resourceType: AclResourceTypes, resourceName: string, operation: AclOperationTypes, prefixed = false): AclEntry => ({
    resourceType,
    resourceName,
    resourcePatternType: prefixed ? ResourcePatternTypes.PREFIXED : ResourcePatternTypes.LITERAL,
    principal,
    host: '*',
    operation,
    permissionType: AclPermissionTypes.ALLOW,
  });
  const { TRANSACTIONAL_ID, TOPIC, GROUP } = AclResourceTypes;
  const { WRITE, CREATE, READ } = AclOperationTypes;
  return [
    {
      name: 'transactional-id Write',
      args: `--add --allow-principal ${principal} --operation Write --transactional-id edgebridge-${gatewayId}`,
      entries: [entry(TRANSACTIONAL_ID, `edgebridge-${gatewayId}`, WRITE)],
    },
    {
      name: 'route topic Write, Create',
      args: `--add --allow-principal ${principal} --operation Write --operation Create --topic ${topic}`,
      entries: [entry(TOPIC, topic, WRITE), entry(TOPIC, topic, CREATE)],
    },
    {
      name: 'dead-letter topic Write, Create',
      args: `--add --allow-principal ${principal} --operation Write --operation Create --topic ${DEAD_LETTER_TOPIC}`,
      entries: [entry(TOPIC, DEAD_LETTER_TOPIC, WRITE), entry(TOPIC, DEAD_LETTER_TOPIC, CREATE)],
    },
    {
      name: 'checkpoint topic Write, Create, Read',
      args: `--add --allow-principal ${principal} --operation Write --operation Create --operation Read --topic ${CHECKPOINT_TOPIC}`,
      entries: [entry(TOPIC, CHECKPOINT_TOPIC, WRITE), entry(TOPIC, CHECKPOINT_TOPIC, CREATE), entry(TOPIC, CHECKPOINT_TOPIC, READ)],
    },
    {
      name: 'group prefix Read',
      args: `--add --allow-principal ${principal} --operation Read --group edgebridge-checkpoint-${gatewayId}- --resource-pattern-type prefixed`,
      entries: [entry(GROUP, `edgebridge-checkpoint-${gatewayId}-`, READ, true)],
    },
  ];
}

interface LogLine {
  level: number;
  msg: string;
  code?: string;
  [key: string]: unknown;
}

function capturingLogger(level = 'info'): { logger: Logger; lines: LogLine[]; raw: string[] } {
  const lines: LogLine[] = [];
  const raw: string[] = [];
  const logger = pino(
    { level },
    {
      write: (line: string) => {
        raw.push(line);
        lines.push(JSON.parse(line) as LogLine);
      },
    },
  );
  return { logger, lines, raw };
}

describe('kafka security: SASL_SSL, SCRAM, least-privilege ACLs', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();
  let kafka: SecureKafka;
  let admin: Admin;
  let adminClient: KafkaClientSecurity;
  let baseDir: string;

  beforeAll(async () => {
    baseDir = mkdtempSync(join(tmpdir(), 'edgebridge-secure-kafka-'));
    const started = Date.now();
    kafka = (await startSecureKafka({ dataDir: join(baseDir, 'kafka'), users: [GATEWAY_USER] })) as SecureKafka;
    process.stderr.write(`secured test kafka ready on ${kafka.brokers[0]} in ${Date.now() - started} ms\n`);
    const { brokers: _brokers, ...client } = kafka.client();
    adminClient = client;
    admin = new Kafka({ ...kafka.client(), clientId: 'test-admin', logLevel: logLevel.NOTHING }).admin();
    await admin.connect();
  });

  afterAll(async () => {
    await admin?.disconnect();
    await kafka?.stop(0); // SIGKILL: its data is deleted next
    if (baseDir) rmSync(baseDir, { recursive: true, force: true });
  });

  const grant = (gatewayId: string, topic: string, except: string[] = []) =>
    admin.createAcls({ acl: gatewayAclList(gatewayId, topic).filter((a) => !except.includes(a.name)).flatMap((a) => a.entries) });

  function secureConfig(
    options: { dir: string; topic: string; gatewayId: string },
    kafkaOverrides: Partial<ConfigInput['kafka']> = {},
    extra: Partial<ConfigInput> = {},
  ): ConfigInput {
    const base = testConfig({ ...options, brokers: kafka.brokers });
    return {
      ...base,
      kafka: {
        brokers: kafka.brokers,
        ssl: { caFile: kafka.caFile },
        sasl: { mechanism: 'scram-sha-512', username: GATEWAY_USER.username, password: GATEWAY_USER.password },
        ...kafkaOverrides,
      },
      // quick retries, so that the tests see several attempts and a fix is picked up at once
      forward: { retry: { initialMs: 100, maxMs: 1000 } },
      ...extra,
    };
  }

  async function start(config: ConfigInput, logger: Logger = pino({ level: 'silent' }), env: NodeJS.ProcessEnv = {}) {
    const gateway = await Gateway.start(parseConfig(config, 'test', env), { logger, statusIntervalMs: 0 });
    cleanup(() => gateway.close());
    return Object.assign(gateway, { url: `mqtt://127.0.0.1:${gateway.mqttAddress.port}` });
  }

  async function health(gateway: Gateway): Promise<{ code: number; body: Record<string, unknown> }> {
    const res = await fetch(`http://127.0.0.1:${gateway.adminAddress!.port}/healthz`);
    return { code: res.status, body: (await res.json()) as Record<string, unknown> };
  }

  /** Each device's seqs in the order its records sit in Kafka (one partition per device). */
  function seqsByDevice(records: readonly ConsumedRecord[]): Record<string, number[]> {
    const out: Record<string, number[]> = {};
    for (const r of records) (out[r.key] ??= []).push((JSON.parse(r.value.toString('utf8')) as { seq: number }).seq);
    return out;
  }

  it('forwards over SASL_SSL with SCRAM-SHA-512 (password file), then SCRAM-SHA-256 (password from the environment) and PLAIN: every reading once, in order', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.secure');
    const gatewayId = uniqueName('gw-sec');
    await grant(gatewayId, topic);
    const passwordFile = join(tmp(), 'kafka-password');
    writeFileSync(passwordFile, `${GATEWAY_USER.password}\n`, { mode: 0o600 });

    const { logger, raw } = capturingLogger('debug');
    const first = await start(
      secureConfig({ dir, topic, gatewayId }, { sasl: { mechanism: 'scram-sha-512', username: GATEWAY_USER.username, passwordFile } }, { log: { level: 'debug' } }),
      logger,
    );
    await Promise.all(['dev-a', 'dev-b', 'dev-c'].map((d) => publishAcked(first.url, d, seqs(1, 50).map((s) => reading(d, 'boot-1', s)))));
    await expect.poll(() => first.status().forwarded, { timeout: 30_000, message: 'SCRAM-SHA-512: 150 readings forwarded' }).toBe(150);
    expect(first.status().forwarder).toBe('forwarding');
    expect((await health(first)).code).toBe(200);
    await first.close();
    // debug level, kafkajs's own lines included: the password is in none of them
    expect(raw.join('')).not.toContain(GATEWAY_USER.password);

    const second = await start(
      secureConfig({ dir, topic, gatewayId }, { sasl: { mechanism: 'scram-sha-256', username: GATEWAY_USER.username } }),
      undefined,
      { EDGEBRIDGE_KAFKA_SASL_PASSWORD: GATEWAY_USER.password },
    );
    await publishAcked(second.url, 'dev-a', seqs(51, 60).map((s) => reading('dev-a', 'boot-1', s)));
    await expect.poll(() => second.status().forwarded, { timeout: 30_000, message: 'SCRAM-SHA-256: 10 readings forwarded' }).toBe(10);
    await second.close();

    const third = await start(secureConfig({ dir, topic, gatewayId }, { sasl: { mechanism: 'plain', ...GATEWAY_USER } }));
    await publishAcked(third.url, 'dev-b', seqs(51, 60).map((s) => reading('dev-b', 'boot-1', s)));
    await expect.poll(() => third.status().forwarded, { timeout: 30_000, message: 'PLAIN: 10 readings forwarded' }).toBe(10);

    // read_committed, as the admin user
    const records = await consumeAll(kafka.brokers, topic, { expected: 170, client: adminClient });
    expect(records).toHaveLength(170);
    expect(seqsByDevice(records)).toEqual({ 'dev-a': seqs(1, 60), 'dev-b': seqs(1, 60), 'dev-c': seqs(1, 50) });
    expect(records.every((r) => r.headers['gateway-id'] === gatewayId)).toBe(true);

    // `edgebridge consume` against the secured broker, with kafka.ssl / kafka.sasl of a config
    const lines: string[] = [];
    const count = await consume({
      brokers: kafka.brokers,
      topic,
      fromBeginning: true,
      json: false,
      maxMessages: 170,
      logger: pino({ level: 'silent' }),
      write: (l) => lines.push(l),
      security: readKafkaSecurity({ ssl: { caFile: kafka.caFile, rejectUnauthorized: true }, sasl: { mechanism: 'scram-sha-512', ...kafka.admin } }),
    });
    expect(count).toBe(170);
    expect(lines.filter((l) => l.startsWith('dev-c\t'))).toHaveLength(50);
  });

  it('a wrong password: one clear error line, unauthenticated, /healthz 503, nothing lost; restarted with the right one, all arrive once', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.badpass');
    const gatewayId = uniqueName('gw-badpass');
    await grant(gatewayId, topic);
    const wrongPassword = 'not-the-password-3f9a';
    const { logger, lines, raw } = capturingLogger('debug');
    const gateway = await start(
      secureConfig({ dir, topic, gatewayId }, { sasl: { mechanism: 'scram-sha-512', username: GATEWAY_USER.username, password: wrongPassword } }, { log: { level: 'debug' } }),
      logger,
    );
    await publishAcked(gateway.url, 'dev-x', seqs(1, 30).map((s) => reading('dev-x', 'boot-1', s)));
    await expect.poll(() => gateway.status().forwarder, { timeout: 30_000, message: 'the forwarder sees the refused login' }).toBe('unauthenticated');
    // several attempts (kafkajs logs each at debug), still one line for the operator
    const attempts = () => lines.filter((l) => l.level === 20 && /SASL SCRAM SHA512 authentication failed/.test(l.msg)).length;
    await expect.poll(attempts, { timeout: 30_000, message: 'the gateway keeps retrying the login' }).toBeGreaterThanOrEqual(3);
    // the state and the log line come from the forwarder thread separately: wait for the line too
    await expect.poll(() => lines.filter((l) => l.code === 'EB_ERR_FORWARD_AUTHENTICATION').length, { timeout: 10_000 }).toBeGreaterThan(0);
    const errors = lines.filter((l) => l.code === 'EB_ERR_FORWARD_AUTHENTICATION');
    expect(errors).toHaveLength(1);
    expect(errors[0]!.level).toBe(50);
    expect(errors[0]!.msg).toContain(
      `Kafka refused the SASL login of user "${GATEWAY_USER.username}" (mechanism SCRAM-SHA-512): check kafka.sasl (username, password or passwordFile, mechanism)`,
    );
    expect(lines.filter((l) => l.code === 'EB_ERR_FORWARD_KAFKA')).toHaveLength(0); // not taken for an outage
    const h = await health(gateway);
    expect(h.code).toBe(503);
    expect(h.body).toMatchObject({ status: 'unauthenticated', gatewayId });
    expect(String(h.body.reason)).toContain('check kafka.sasl');
    expect(gateway.status()).toMatchObject({ forwarder: 'unauthenticated', forwarded: 0, backlog: 30, received: 30 });
    expect(raw.join('')).not.toContain(wrongPassword);
    await gateway.close();

    const fixed = await start(secureConfig({ dir, topic, gatewayId }));
    await expect.poll(() => fixed.status().forwarded, { timeout: 30_000, message: 'the buffered readings, once the password is right' }).toBe(30);
    expect((await health(fixed)).code).toBe(200);
    const records = await consumeAll(kafka.brokers, topic, { expected: 30, client: adminClient });
    expect(seqsByDevice(records)).toEqual({ 'dev-x': seqs(1, 30) });
  });

  for (const missing of [
    { acl: 'transactional-id Write', denied: 'TRANSACTIONAL_ID_AUTHORIZATION_FAILED' },
    { acl: 'group prefix Read', denied: 'GROUP_AUTHORIZATION_FAILED' },
  ]) {
    it(`without the ${missing.acl} ACL: unauthorized, the log line names it, /healthz 503; granted while running, everything arrives once`, async () => {
      const dir = tmp();
      const topic = uniqueName('iot.acl');
      const gatewayId = uniqueName('gw-acl');
      await grant(gatewayId, topic, [missing.acl]);
      const { logger, lines } = capturingLogger();
      const gateway = await start(secureConfig({ dir, topic, gatewayId }), logger);
      await publishAcked(gateway.url, 'dev-y', seqs(1, 20).map((s) => reading('dev-y', 'boot-1', s)));
      await expect.poll(() => gateway.status().forwarder, { timeout: 30_000, message: 'the forwarder sees the missing ACL' }).toBe('unauthorized');
      // the state and the log line come from the forwarder thread separately: wait for the line too
      await expect.poll(() => lines.filter((l) => l.code === 'EB_ERR_FORWARD_UNAUTHORIZED').length, { timeout: 10_000 }).toBeGreaterThan(0);
      const refused = lines.filter((l) => l.code === 'EB_ERR_FORWARD_UNAUTHORIZED');
      expect(refused).toHaveLength(1);
      const list = gatewayAclList(gatewayId, topic);
      expect(refused[0]).toMatchObject({
        level: 50,
        denied: missing.denied,
        missing: list.find((a) => a.name === missing.acl)!.args,
      });
      // what the gateway says it needs is exactly the list this test grants (and the README documents)
      expect(String(refused[0]!.requiredAcls).split('; ').sort()).toEqual(list.map((a) => a.args).sort());
      const h = await health(gateway);
      expect(h.code).toBe(503);
      expect(h.body).toMatchObject({ status: 'unauthorized', gatewayId });
      expect(String(h.body.reason)).toContain(`${missing.denied}): grant ${list.find((a) => a.name === missing.acl)!.args}`);
      await publishAcked(gateway.url, 'dev-y', seqs(21, 30).map((s) => reading('dev-y', 'boot-1', s)));
      expect(gateway.status()).toMatchObject({ forwarded: 0, backlog: 30 });

      await admin.createAcls({ acl: list.find((a) => a.name === missing.acl)!.entries });
      await expect.poll(() => gateway.status().forwarded, { timeout: 30_000, message: 'forwarding resumes once the ACL is granted' }).toBe(30);
      expect(gateway.status().forwarder).toBe('forwarding');
      expect((await health(gateway)).code).toBe(200);
      // the line comes from the forwarder thread apart from the counters: wait for it
      await expect.poll(() => lines.some((l) => l.msg === 'kafka accepts this gateway again: draining the backlog'), { timeout: 10_000 }).toBe(true);
      const records = await consumeAll(kafka.brokers, topic, { expected: 30, client: adminClient });
      expect(seqsByDevice(records)).toEqual({ 'dev-y': seqs(1, 30) });
    });
  }

  it("a CA file that did not sign the broker's certificate: one clear TLS error line, /healthz 503; with the right CA everything arrives", async () => {
    const dir = tmp();
    const topic = uniqueName('iot.badca');
    const gatewayId = uniqueName('gw-badca');
    await grant(gatewayId, topic);
    const wrongCa = (generateTestPki(tmp(), 'other') as { caFile: string }).caFile;
    const { logger, lines } = capturingLogger();
    const gateway = await start(secureConfig({ dir, topic, gatewayId }, { ssl: { caFile: wrongCa } }), logger);
    await publishAcked(gateway.url, 'dev-z', seqs(1, 10).map((s) => reading('dev-z', 'boot-1', s)));
    await expect.poll(() => gateway.status().forwarder, { timeout: 30_000, message: 'the forwarder sees the untrusted certificate' }).toBe('unauthenticated');
    // the state and the log line come from the forwarder thread separately: wait for the line too
    // (a clean-clone CI run saw the state first and no line yet)
    await expect.poll(() => lines.filter((l) => l.code === 'EB_ERR_FORWARD_TLS').length, { timeout: 10_000 }).toBeGreaterThan(0);
    const errors = lines.filter((l) => l.code === 'EB_ERR_FORWARD_TLS');
    expect(errors).toHaveLength(1);
    expect(errors[0]!.msg).toContain("cannot verify the Kafka broker's certificate");
    expect(errors[0]!.msg).toContain(`kafka.ssl.caFile (${wrongCa}); check kafka.ssl.caFile`);
    const h = await health(gateway);
    expect(h.code).toBe(503);
    expect(h.body).toMatchObject({ status: 'unauthenticated' });
    expect(String(h.body.reason)).toContain('check kafka.ssl.caFile');
    await gateway.close();

    const fixed = await start(secureConfig({ dir, topic, gatewayId }));
    await expect.poll(() => fixed.status().forwarded, { timeout: 30_000, message: 'the buffered readings, once the CA is right' }).toBe(10);
    const records = await consumeAll(kafka.brokers, topic, { expected: 10, client: adminClient });
    expect(seqsByDevice(records)).toEqual({ 'dev-z': seqs(1, 10) });
  });
});
