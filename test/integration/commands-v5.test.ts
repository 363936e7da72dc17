import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { IHeaders } from 'kafkajs';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { DB_FILE } from '../../src/log/database.js';
import type { GatewayStatus } from '../../src/status.js';
import { kafkaBrokers, testConfig, uniqueName } from '../helpers/gateway.js';
import { consumeAll, testKafka } from '../helpers/kafka.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { until as untilWithin } from '../helpers/raw-mqtt.js';
import { useTmpDirs } from '../helpers/tmp.js';

/**
 * MQTT 5 devices on the command path: commands carry Response Topic, Correlation Data and Content
 * Type; a reply with Correlation Data reaches Kafka matched to its command; queued commands keep
 * their properties across a restart; and the Session Expiry Interval holds across restarts.
 */

interface Names {
  readonly telemetry: string;
  readonly replies: string;
  readonly commands: string;
  readonly acks: string;
}

const names = (): Names => ({ telemetry: uniqueName('iot.t'), replies: uniqueName('iot.replies'), commands: uniqueName('iot.commands'), acks: uniqueName('iot.acks') });

function config(dir: string, n: Names): ConfigInput {
  const base = testConfig({ dir, topic: n.telemetry });
  return {
    ...base,
    routes: [...(base.routes ?? []), { mqtt: 'devices/{deviceId}/replies', kafka: n.replies }],
    commands: { kafka: n.commands, acks: n.acks, mqtt: 'devices/{deviceId}/commands', replies: 'devices/{deviceId}/replies' },
  } as ConfigInput;
}

interface Command {
  readonly device: string;
  readonly id: string;
  readonly value?: string;
  readonly contentType?: string;
}

async function produce(topic: string, commands: readonly Command[]): Promise<void> {
  const producer = testKafka(kafkaBrokers()).producer();
  await producer.connect();
  try {
    await producer.send({
      topic,
      messages: commands.map((c) => ({
        key: c.device,
        value: c.value ?? `do ${c.id}`,
        headers: { 'correlation-id': c.id, ...(c.contentType === undefined ? {} : { 'content-type': c.contentType }) } satisfies IHeaders,
      })),
    });
  } finally {
    await producer.disconnect();
  }
}

async function createTopic(topic: string): Promise<void> {
  const admin = testKafka(kafkaBrokers()).admin();
  await admin.connect();
  try {
    await admin.createTopics({ topics: [{ topic, numPartitions: 1, replicationFactor: 1 }], waitForLeaders: true });
  } finally {
    await admin.disconnect();
  }
}

interface Device {
  readonly client: MqttClient;
  readonly got: IPublishPacket[];
  readonly sessionPresent: boolean;
}

/** A device with a persistent session (v5: with a Session Expiry Interval), recording what it gets. */
async function connect(url: string, id: string, options: IClientOptions = {}): Promise<Device> {
  const got: IPublishPacket[] = [];
  const client = mqtt.connect(url, { clientId: id, clean: false, reconnectPeriod: 0, ...options });
  client.on('message', (_topic, _payload, packet) => got.push(packet));
  const sessionPresent = await new Promise<boolean>((resolve, reject) => {
    client.once('connect', (connack) => resolve(connack.sessionPresent));
    client.once('error', reject);
  });
  return { client, got, sessionPresent };
}

const v5 = (sessionExpiryInterval: number): IClientOptions => ({ protocolVersion: 5, properties: { sessionExpiryInterval } });

const until = (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> => untilWithin(what, check, timeoutMs, 100);

/** Rows of a client in the session tables (read beside the gateway, or while it is down). */
function rowsOf(dir: string, clientId: string): Record<string, number> {
  const db = new Database(join(dir, DB_FILE), { readonly: true, fileMustExist: true });
  try {
    const count = (table: string) => db.prepare(`SELECT count(*) FROM ${table} WHERE client_id = ?`).pluck().get(clientId) as number;
    return {
      subscriptions: count('session_subscriptions'),
      queue: count('session_queue'),
      inbound: count('session_inbound'),
      owners: count('session_owners'),
      expiry: count('session_expiry'),
    };
  } finally {
    db.close();
  }
}

function expiresAt(dir: string, clientId: string): number | null {
  const db = new Database(join(dir, DB_FILE), { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('SELECT expires_at FROM session_expiry WHERE client_id = ?').pluck().get(clientId) as number | null | undefined) ?? null;
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

describe('MQTT 5 devices: commands with response topic and correlation data, session expiry across restarts', () => {
  const tmp = useTmpDirs();
  let gw: GatewayProcess | undefined;
  const clients: MqttClient[] = [];

  afterEach(async () => {
    for (const c of clients.splice(0)) c.end(true);
    await kill();
  });

  async function kill(): Promise<void> {
    if (gw && gw.child.exitCode === null && gw.child.signalCode === null) {
      gw.child.kill('SIGKILL');
      await gw.exited;
    }
    gw = undefined;
  }

  it('a v5 device gets Response Topic, Correlation Data and Content Type, replies with the Correlation Data, and the reply and ack records in Kafka carry the correlation id; a 3.1.1 device gets the same command without properties', async () => {
    const n = names();
    const dir = tmp();
    await createTopic(n.commands);
    gw = await spawnGateway(config(dir, n), dir);
    const port = await adminPort(gw);
    const modern = await connect(gw.url, 'valve-5', v5(3600));
    clients.push(modern.client);
    await modern.client.subscribeAsync('devices/valve-5/commands', { qos: 1 });
    const legacy = await connect(gw.url, 'valve-3');
    clients.push(legacy.client);
    await legacy.client.subscribeAsync('devices/valve-3/commands', { qos: 1 });

    await produce(n.commands, [
      { device: 'valve-5', id: 'cmd-5', value: '{"open":true}', contentType: 'application/json' },
      { device: 'valve-3', id: 'cmd-3', value: 'open' },
    ]);
    await until('both commands at their devices', () => modern.got.length === 1 && legacy.got.length === 1);
    const command = modern.got[0]!;
    expect(command.topic).toBe('devices/valve-5/commands');
    expect(command.payload.toString()).toBe('{"open":true}');
    expect(command.properties?.responseTopic).toBe('devices/valve-5/replies');
    expect(Buffer.from(command.properties!.correlationData!).toString()).toBe('cmd-5');
    expect(command.properties?.contentType).toBe('application/json');
    // 3.1.1: same topic and payload, nothing else (and it works as before).
    expect(legacy.got[0]!.topic).toBe('devices/valve-3/commands');
    expect(legacy.got[0]!.payload.toString()).toBe('open');
    expect(legacy.got[0]!.properties).toBeUndefined();

    // The reply: to the Response Topic, the Correlation Data echoed; nothing in payload or topic names the command.
    await modern.client.publishAsync(command.properties!.responseTopic!, '{"done":true}', { qos: 1, properties: { correlationData: command.properties!.correlationData! } });

    const replies = await consumeAll(kafkaBrokers(), n.replies, { expected: 1 });
    expect(replies).toHaveLength(1);
    expect(replies[0]!.key).toBe('valve-5');
    expect(replies[0]!.value.toString()).toBe('{"done":true}');
    expect(replies[0]!.headers['correlation-id']).toBe('cmd-5');
    const acks = await consumeAll(kafkaBrokers(), n.acks, { expected: 2 });
    expect(acks.map((a) => [a.key, a.headers['correlation-id']]).sort()).toEqual([
      ['valve-3', 'cmd-3'],
      ['valve-5', 'cmd-5'],
    ]);
    expect((await status(port)).commands?.acked).toBe(2);
  });

  it('a v5 device on Clean Start 1 with a Session Expiry (MQTT.js\'s persistent default) acknowledges its command once: one ack record, not sent again on its next connection', async () => {
    const n = names();
    const dir = tmp();
    await createTopic(n.commands);
    gw = await spawnGateway(config(dir, n), dir);
    const port = await adminPort(gw);
    const first = await connect(gw.url, 'gate-cs', { ...v5(3600), clean: true });
    clients.push(first.client);
    await first.client.subscribeAsync('devices/gate-cs/commands', { qos: 1 });
    await produce(n.commands, [{ device: 'gate-cs', id: 'cs-1' }]);
    await until('the command at the device', () => first.got.length === 1);
    await until('delivered and acked', async () => (await status(port)).commands?.acked === 1);
    expect((await status(port)).commands).toMatchObject({ delivered: 1, acked: 1 });
    await first.client.endAsync();
    const again = await connect(gw.url, 'gate-cs', { ...v5(3600), clean: true });
    clients.push(again.client);
    await again.client.subscribeAsync('devices/gate-cs/commands', { qos: 1 });
    // a marker command behind it: once it is there, a redelivered first one would be too
    await produce(n.commands, [{ device: 'gate-cs', id: 'cs-2' }]);
    await until('the second command', () => again.got.length >= 1);
    expect(again.got.map((p) => Buffer.from(p.properties!.correlationData!).toString())).toEqual(['cs-2']);
    const acks = await consumeAll(kafkaBrokers(), n.acks, { expected: 2 });
    expect(acks.map((a) => a.headers['correlation-id'])).toEqual(['cs-1', 'cs-2']);
  });

  it('a command queued for an offline v5 persistent session survives a gateway SIGKILL with its properties', async () => {
    const n = names();
    const dir = tmp();
    await createTopic(n.commands);
    const cfg = config(dir, n);
    gw = await spawnGateway(cfg, dir);
    let port = await adminPort(gw);
    const first = await connect(gw.url, 'pump-5', v5(3600));
    await first.client.subscribeAsync('devices/pump-5/commands', { qos: 1 });
    await first.client.endAsync();

    await produce(n.commands, [{ device: 'pump-5', id: 'run-1', value: 'run', contentType: 'text/plain' }]);
    await until('the command in the session queue', async () => (await status(port)).commands?.inSession === 1);
    await kill();

    gw = await spawnGateway(cfg, dir);
    port = await adminPort(gw);
    const again = await connect(gw.url, 'pump-5', v5(3600));
    clients.push(again.client);
    expect(again.sessionPresent).toBe(true);
    await until('the queued command at the device', () => again.got.length === 1);
    const command = again.got[0]!;
    expect(command.topic).toBe('devices/pump-5/commands');
    expect(command.payload.toString()).toBe('run');
    expect(command.properties?.responseTopic).toBe('devices/pump-5/replies');
    expect(Buffer.from(command.properties!.correlationData!).toString()).toBe('run-1');
    expect(command.properties?.contentType).toBe('text/plain');
    const acks = await consumeAll(kafkaBrokers(), n.acks, { expected: 1 });
    expect(acks.map((a) => a.headers['correlation-id'])).toEqual(['run-1']);
  });

  it('a v5 session with a short Session Expiry Interval is gone after it although the gateway restarted meanwhile (rows, subscription, queued messages; its command waits again); one with a long interval is kept', async () => {
    const n = names();
    const dir = tmp();
    await createTopic(n.commands);
    const cfg = config(dir, n);
    gw = await spawnGateway(cfg, dir);
    let port = await adminPort(gw);
    const offline = async (id: string, interval: number): Promise<void> => {
      const d = await connect(gw!.url, id, v5(interval));
      await d.client.subscribeAsync([`devices/${id}/commands`, `local/${id}`], { qos: 1 });
      await d.client.endAsync();
    };
    // The long session first, with its command: the command consumer has joined its group before
    // the short session's interval starts to run.
    await offline('long-5', 3600);
    await produce(n.commands, [{ device: 'long-5', id: 'l-1' }]);
    await until('the long session command in its queue', async () => (await status(port)).commands?.inSession === 1);
    await offline('short-5', 8);
    // Offline: local traffic and a command are queued for both.
    const sender = await connect(gw.url, 'console', { clean: true });
    await sender.client.publishAsync('local/short-5', 'for short', { qos: 1 });
    await sender.client.publishAsync('local/long-5', 'for long', { qos: 1 });
    await sender.client.endAsync();
    await produce(n.commands, [{ device: 'short-5', id: 's-1' }]);
    await until('both commands in their session queues', async () => (await status(port)).commands?.inSession === 2);
    expect(rowsOf(dir, 'short-5')).toMatchObject({ subscriptions: 2, queue: 2, owners: 1, expiry: 1 });
    const end = expiresAt(dir, 'short-5')!;
    expect(end).not.toBeNull();
    await kill();

    // Down until past the short session's end.
    await until('the short session past its expiry', () => Date.now() > end, 30_000);
    expect(rowsOf(dir, 'short-5')).toMatchObject({ subscriptions: 2, queue: 2 });
    gw = await spawnGateway(cfg, dir);
    port = await adminPort(gw);
    expect(rowsOf(dir, 'short-5')).toEqual({ subscriptions: 0, queue: 0, inbound: 0, owners: 0, expiry: 0 });
    expect(rowsOf(dir, 'long-5')).toMatchObject({ subscriptions: 2, queue: 2, owners: 1, expiry: 1 });
    // Its command was never acknowledged: it waits in the outbox again, for a new session.
    await until('the short session command waiting', async () => (await status(port)).commands?.waiting === 1);

    const short = await connect(gw.url, 'short-5', v5(3600));
    clients.push(short.client);
    expect(short.sessionPresent).toBe(false);
    const long = await connect(gw.url, 'long-5', v5(3600));
    clients.push(long.client);
    expect(long.sessionPresent).toBe(true);
    await until('the long session queue delivered', () => long.got.length === 2);
    expect(long.got.map((p) => `${p.topic} ${p.payload.toString()}`).sort()).toEqual(['devices/long-5/commands do l-1', 'local/long-5 for long']);
    // The short one must subscribe again; then its command comes, its queued local message does not.
    await short.client.subscribeAsync('devices/short-5/commands', { qos: 1 });
    await until('the short device command', () => short.got.length === 1);
    expect(short.got.map((p) => `${p.topic} ${p.payload.toString()}`)).toEqual(['devices/short-5/commands do s-1']);
    const acks = await consumeAll(kafkaBrokers(), n.acks, { expected: 2 });
    expect(acks.map((a) => a.headers['correlation-id']).sort()).toEqual(['l-1', 's-1']);
  });

  it('without a restart, a v5 session ends its interval after the disconnect, with its rows; reconnecting in time keeps it', async () => {
    const n = names();
    const dir = tmp();
    gw = await spawnGateway(config(dir, n), dir);
    const first = await connect(gw.url, 'brief-5', v5(1));
    await first.client.subscribeAsync('local/brief-5', { qos: 1 });
    await first.client.endAsync();
    const kept = await connect(gw.url, 'kept-5', v5(30));
    await kept.client.subscribeAsync('local/kept-5', { qos: 1 });
    await kept.client.endAsync();
    const back = await connect(gw.url, 'kept-5', v5(30));
    clients.push(back.client);
    expect(back.sessionPresent).toBe(true);
    await until('the brief session gone from the database', () => rowsOf(dir, 'brief-5').subscriptions === 0, 15_000);
    expect(rowsOf(dir, 'brief-5')).toEqual({ subscriptions: 0, queue: 0, inbound: 0, owners: 0, expiry: 0 });
    const again = await connect(gw.url, 'brief-5', v5(1));
    clients.push(again.client);
    expect(again.sessionPresent).toBe(false);
    expect(rowsOf(dir, 'kept-5')).toMatchObject({ subscriptions: 1, owners: 1, expiry: 1 });
  });
  it('a v5 session connected when the gateway stops counts its interval from the stop; from the restart after a SIGKILL (the disconnect time is unknown)', async () => {
    const n = names();
    const dir = tmp();
    const cfg = config(dir, n);
    gw = await spawnGateway(cfg, dir);
    const stopped = await connect(gw.url, 'stopped-5', v5(2));
    clients.push(stopped.client);
    await stopped.client.subscribeAsync('local/stopped-5', { qos: 1 });
    expect(expiresAt(dir, 'stopped-5')).toBeNull();
    gw.child.kill('SIGTERM');
    expect(await gw.exited).toBe(0);
    const end = expiresAt(dir, 'stopped-5');
    expect(end).not.toBeNull();
    await until('past the stopped session expiry', () => Date.now() > end!, 30_000);
    gw = await spawnGateway(cfg, dir);
    expect(rowsOf(dir, 'stopped-5')).toEqual({ subscriptions: 0, queue: 0, inbound: 0, owners: 0, expiry: 0 });

    const crashed = await connect(gw.url, 'crashed-5', v5(600));
    clients.push(crashed.client);
    await crashed.client.subscribeAsync('local/crashed-5', { qos: 1 });
    await kill();
    expect(expiresAt(dir, 'crashed-5')).toBeNull();
    const restartedAt = Date.now();
    gw = await spawnGateway(cfg, dir);
    expect(expiresAt(dir, 'crashed-5')).toBeGreaterThanOrEqual(restartedAt + 600_000);
    const back = await connect(gw.url, 'crashed-5', v5(600));
    clients.push(back.client);
    expect(back.sessionPresent).toBe(true);
  });
});
