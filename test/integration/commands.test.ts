import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { IHeaders } from 'kafkajs';
import mqtt, { type MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { addUserToFile } from '../../src/ingress/auth/password-file.js';
import { DB_FILE } from '../../src/log/database.js';
import type { GatewayStatus } from '../../src/status.js';
import { kafkaBrokers, testConfig, uniqueName } from '../helpers/gateway.js';
import { consumeAll, testKafka } from '../helpers/kafka.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { until as untilWithin } from '../helpers/raw-mqtt.js';
import { useTmpDirs } from '../helpers/tmp.js';

interface Names {
  readonly telemetry: string;
  readonly commands: string;
  readonly acks: string;
}

const names = (): Names => ({ telemetry: uniqueName('iot.t'), commands: uniqueName('iot.commands'), acks: uniqueName('iot.acks') });

function config(dir: string, n: Names, commands: Record<string, unknown> = {}): ConfigInput {
  return testConfig({
    dir,
    topic: n.telemetry,
    overrides: { commands: { kafka: n.commands, acks: n.acks, mqtt: 'devices/{deviceId}/commands/{correlationId}', ...commands } } as Partial<ConfigInput>,
  });
}

interface Command {
  readonly device: string | Buffer;
  readonly id: string;
  readonly value?: string;
  readonly timestamp?: number;
}

/** Applications' side: commands written to Kafka keyed by device, with a correlation-id header. */
async function produce(topic: string, commands: readonly Command[]): Promise<void> {
  const producer = testKafka(kafkaBrokers()).producer();
  await producer.connect();
  try {
    await producer.send({
      topic,
      messages: commands.map((c) => ({
        key: c.device,
        value: c.value ?? `do ${c.id}`,
        headers: { 'correlation-id': c.id } satisfies IHeaders,
        ...(c.timestamp === undefined ? {} : { timestamp: String(c.timestamp) }),
      })),
    });
  } finally {
    await producer.disconnect();
  }
}

/** A client with a persistent session and one subscription; it records what it gets. */
async function subscriber(url: string, id: string, filter: string): Promise<{ client: MqttClient; got: string[] }> {
  const got: string[] = [];
  // The handler first: queued messages follow the CONNACK at once.
  const client = mqtt.connect(url, { clientId: id, clean: false, reconnectPeriod: 0 });
  client.on('message', (topic, payload) => got.push(`${topic} ${payload.toString()}`));
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  await client.subscribeAsync(filter, { qos: 1 });
  return { client, got };
}

/** A device subscribed to its own commands. */
const device = (url: string, id: string) => subscriber(url, id, `devices/${id}/commands/#`);

/** Waits for a condition (raw-mqtt.ts's `until`), with this file's deadline. */
const until = (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> => untilWithin(what, check, timeoutMs, 100);

/** Rows in the gateway's session queues (read beside the running gateway). */
function countQueued(dir: string): number {
  const db = new Database(join(dir, DB_FILE), { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT count(*) FROM session_queue').pluck().get() as number;
  } finally {
    db.close();
  }
}

async function adminPort(gw: GatewayProcess): Promise<number> {
  return (await gw.waitForLine((l) => l.msg === 'admin endpoint listening')).port as number;
}

async function status(port: number): Promise<GatewayStatus> {
  return (await (await fetch(`http://127.0.0.1:${port}/status`)).json()) as GatewayStatus;
}

describe('commands: Kafka -> device -> ack record in Kafka', () => {
  const tmp = useTmpDirs();
  let gw: GatewayProcess | undefined;
  const clients: MqttClient[] = [];

  afterEach(async () => {
    for (const c of clients.splice(0)) c.end(true);
    if (gw && gw.child.exitCode === null && gw.child.signalCode === null) {
      gw.child.kill('SIGKILL');
      await gw.exited;
    }
    gw = undefined;
  });

  async function createTopic(topic: string, partitions = 3): Promise<void> {
    const admin = testKafka(kafkaBrokers()).admin();
    await admin.connect();
    try {
      await admin.createTopics({ topics: [{ topic, numPartitions: partitions, replicationFactor: 1 }], waitForLeaders: true });
    } finally {
      await admin.disconnect();
    }
  }

  /** Waits until the gateway's command consumer has joined its group (a member, the group stable). */
  async function untilConsuming(groupId: string): Promise<void> {
    const admin = testKafka(kafkaBrokers()).admin();
    await admin.connect();
    try {
      await until(`the command consumer in group ${groupId}`, async () => {
        const { groups } = await admin.describeGroups([groupId]);
        return groups[0]?.state === 'Stable' && groups[0].members.length > 0;
      });
    } finally {
      await admin.disconnect();
    }
  }

  it('a command reaches a connected device on its topic, and its ack record is in Kafka once, with the correlation id', async () => {
    const n = names();
    const dir = tmp();
    await createTopic(n.commands);
    const cfg = config(dir, n);
    gw = await spawnGateway(cfg, dir);
    const port = await adminPort(gw);
    const d1 = await device(gw.url, 'valve-1');
    clients.push(d1.client);
    await produce(n.commands, [{ device: 'valve-1', id: 'c-1', value: 'close' }]);
    await until('the command at the device', () => d1.got.length === 1);
    expect(d1.got).toEqual(['devices/valve-1/commands/c-1 close']);

    const acks = await consumeAll(kafkaBrokers(), n.acks, { expected: 1 });
    expect(acks).toHaveLength(1);
    const ack = acks[0]!;
    expect(ack.key).toBe('valve-1');
    expect(ack.headers['correlation-id']).toBe('c-1');
    expect(ack.headers['gateway-id']).toBe(cfg.gateway.id);
    expect(Date.parse(ack.headers['delivered-at']!)).toBeGreaterThan(0);
    const body = JSON.parse(ack.value.toString()) as { deviceId: string; correlationId: string; command: { topic: string } };
    expect(body).toMatchObject({ deviceId: 'valve-1', correlationId: 'c-1', command: { topic: n.commands } });
    await until('status to count it', async () => {
      const c = (await status(port)).commands;
      return c?.delivered === 1 && c.acked === 1 && c.waiting + c.inSession + c.toAck === 0;
    });
  });

  it('an online device gets command after command (review: a reused outbox seq made aedes drop the second as a duplicate)', async () => {
    const n = names();
    const dir = tmp();
    await createTopic(n.commands, 1);
    gw = await spawnGateway(config(dir, n), dir);
    const port = await adminPort(gw);
    const d = await device(gw.url, 'valve-9');
    clients.push(d.client);
    for (const [i, id] of ['c-1', 'c-2', 'c-3'].entries()) {
      await produce(n.commands, [{ device: 'valve-9', id }]);
      await until(`command ${id} at the device`, () => d.got.length === i + 1);
      await until(`command ${id} acknowledged and its ack record written`, async () => {
        const c = (await status(port)).commands!;
        return c.acked === i + 1 && c.waiting + c.inSession + c.toAck === 0;
      });
    }
    expect(d.got).toEqual(['c-1', 'c-2', 'c-3'].map((id) => `devices/valve-9/commands/${id} do ${id}`));
  });

  it('a command that cannot be delivered (correlation id too long for a topic, a key that is not UTF-8) is invalid; the device keeps its connection and gets the next one; a console on every device gets copies, and keeps none queued', async () => {
    const n = names();
    const dir = tmp();
    await createTopic(n.commands, 1);
    gw = await spawnGateway(config(dir, n), dir);
    const port = await adminPort(gw);
    const consoleOffline = await subscriber(gw.url, 'ops-console', 'devices/+/commands/#');
    await consoleOffline.client.endAsync();
    const consoleOnline = await subscriber(gw.url, 'ops-live', 'devices/+/commands/#');
    clients.push(consoleOnline.client);
    const d = await device(gw.url, 'pump-1');
    clients.push(d.client);
    let closes = 0;
    d.client.on('close', () => closes++);
    await produce(n.commands, [
      { device: 'pump-1', id: 'a'.repeat(66_000), value: 'too long' },
      { device: Buffer.from([0x70, 0xff]), id: 'not-utf8' },
      { device: 'pump-1', id: 'ok-1' },
    ]);
    await until('the deliverable command at the device and acknowledged', async () => d.got.length === 1 && (await status(port)).commands?.acked === 1);
    expect(d.got).toEqual(['devices/pump-1/commands/ok-1 do ok-1']);
    expect(closes).toBe(0);
    expect((await status(port)).commands).toMatchObject({ invalid: 2, stored: 1, delivered: 1 });
    await until('the online console to get its copy', () => consoleOnline.got.length === 1);
    // nothing is kept for the consoles' sessions: commands wait on their devices only
    expect(countQueued(dir)).toBe(0);
  });

  it('commands for an offline device arrive once each, in Kafka order, when it reconnects — also after a SIGKILL while they were being consumed', async () => {
    const n = names();
    const dir = tmp();
    await createTopic(n.commands, 1);
    const cfg = config(dir, n);
    gw = await spawnGateway(cfg, dir);
    let port = await adminPort(gw);
    // The device gets a persistent session and goes offline.
    const first = await device(gw.url, 'pump-7');
    await first.client.endAsync();

    const ids = Array.from({ length: 300 }, (_, i) => `c-${i}`);
    await produce(n.commands, ids.map((id) => ({ device: 'pump-7', id })));
    // Killed as soon as the consumer stored some of them: the rest, and whatever was stored
    // but not yet committed as a Kafka offset, are read after the restart.
    await until('the first commands stored', async () => ((await status(port)).commands?.stored ?? 0) > 0, 60_000);
    gw.child.kill('SIGKILL');
    await gw.exited;
    // The worst moment of a kill: commands stored, their Kafka offsets not committed. Rewinding
    // the gateway's group makes every command be read again.
    const admin = testKafka(kafkaBrokers()).admin();
    await admin.connect();
    const groupId = `edgebridge-commands-${cfg.gateway.id}`;
    await until('the killed gateway to leave its group (session timeout)', async () => {
      const { groups } = await admin.describeGroups([groupId]);
      return groups[0]?.state === 'Empty' || groups[0]?.state === 'Dead';
    });
    await admin.resetOffsets({ groupId, topic: n.commands, earliest: true });
    await admin.disconnect();

    gw = await spawnGateway(cfg, dir);
    port = await adminPort(gw);
    await until('every command stored', async () => {
      const c = (await status(port)).commands;
      return c !== undefined && c.waiting + c.inSession === 300;
    });
    const again = await device(gw.url, 'pump-7');
    clients.push(again.client);
    await until('300 commands at the device', () => again.got.length >= 300);
    expect(again.got).toEqual(ids.map((id) => `devices/pump-7/commands/${id} do ${id}`));

    const acks = await consumeAll(kafkaBrokers(), n.acks, { expected: 300 });
    expect(acks.map((a) => a.headers['correlation-id'])).toEqual(ids);
    await until('all acknowledged', async () => (await status(port)).commands?.acked === 300);
    expect(again.got).toHaveLength(300);
  });

  it('a device its password file lists is served before it ever connected; its command waits for it, and it gets it once logged in', async () => {
    const n = names();
    const dir = tmp();
    await createTopic(n.commands, 1);
    const passwordFile = join(dir, 'passwd');
    addUserToFile(passwordFile, 'meter-5', 'secret-5');
    const cfg = config(dir, n);
    gw = await spawnGateway({ ...cfg, mqtt: { ...(cfg.mqtt as object), auth: { passwordFile } } } as ConfigInput, dir);
    const port = await adminPort(gw);
    await produce(n.commands, [{ device: 'meter-5', id: 'read-now' }]);
    await until('the command stored, waiting', async () => (await status(port)).commands?.waiting === 1);
    const got: string[] = [];
    const meter = mqtt.connect(gw.url, { clientId: 'meter-5-fw', username: 'meter-5', password: 'secret-5', clean: false, reconnectPeriod: 0 });
    clients.push(meter);
    meter.on('message', (topic, payload) => got.push(`${topic} ${payload.toString()}`));
    await new Promise<void>((resolve, reject) => {
      meter.once('connect', () => resolve());
      meter.once('error', reject);
    });
    await meter.subscribeAsync('devices/meter-5/commands/#', { qos: 1 });
    await until('the command at the device, acknowledged', async () => got.length === 1 && (await status(port)).commands?.acked === 1);
    expect(got).toEqual(['devices/meter-5/commands/read-now do read-now']);
  });

  it('an expired command is never delivered; one for a device the gateway does not serve is neither stored nor delivered', async () => {
    const n = names();
    const dir = tmp();
    await createTopic(n.commands, 1);
    // The ttl is a deadline for reading and delivering the fresh commands below: 2 s was missed
    // on a loaded machine (load average 40); the late one takes that long to expire.
    const cfg = config(dir, n, { ttl: '6s' });
    gw = await spawnGateway(cfg, dir);
    const port = await adminPort(gw);
    const sleeper = await device(gw.url, 'sensor-3');
    await sleeper.client.endAsync();
    // A command counts as expired when it is read more than the ttl after it was written: the
    // gateway's consumer must be in its group before they are written, or a slow join (a loaded
    // machine) expires all three (seen: expired 3, notServed 0).
    await untilConsuming(`edgebridge-commands-${cfg.gateway.id}`);

    // One expires in the device's session queue, one was expired before it was read; one is for
    // a device that never connected here.
    await produce(n.commands, [
      { device: 'sensor-3', id: 'late-1' },
      { device: 'sensor-3', id: 'stale-1', timestamp: Date.now() - 3_600_000 },
      { device: 'stranger', id: 'not-mine-1' },
    ]);
    await until('both expired and the stranger skipped', async () => {
      const c = (await status(port)).commands;
      return c?.expired === 2 && c.notServed === 1 && c.waiting + c.inSession + c.toAck === 0;
    });

    // Later commands arrive; the expired and the skipped ones never do.
    await produce(n.commands, [{ device: 'sensor-3', id: 'fresh-1' }]);
    const awake = await device(gw.url, 'sensor-3');
    clients.push(awake.client);
    const stranger = await device(gw.url, 'stranger');
    clients.push(stranger.client);
    await produce(n.commands, [{ device: 'stranger', id: 'mine-now' }]);
    await until('the fresh commands', () => awake.got.length >= 1 && stranger.got.length >= 1);
    const acks = await consumeAll(kafkaBrokers(), n.acks, { expected: 2 });
    expect(awake.got).toEqual(['devices/sensor-3/commands/fresh-1 do fresh-1']);
    expect(stranger.got).toEqual(['devices/stranger/commands/mine-now do mine-now']);
    expect(acks.map((a) => a.headers['correlation-id']).sort()).toEqual(['fresh-1', 'mine-now']);
    const c = (await status(port)).commands!;
    expect({ stored: c.stored, expired: c.expired, notServed: c.notServed, delivered: c.delivered, acked: c.acked }).toEqual({
      stored: 3,
      expired: 2,
      notServed: 1,
      delivered: 2,
      acked: 2,
    });
  });
});
