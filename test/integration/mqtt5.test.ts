import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { generate, parser as mqttParser, type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { addUserToFile } from '../../src/ingress/auth/password-file.js';
import { DB_FILE } from '../../src/log/commit-log.js';
import { kafkaBrokers, startTestGateway, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { mosquittoTool } from '../helpers/mosquitto.js';
import { reading } from '../helpers/publish.js';
import { until } from '../helpers/raw-mqtt.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

/** A free TCP port with nothing listening on it: a Kafka that is not there. */
async function deadPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** An MQTT.js v5 client, connected, with its CONNACK. */
async function connect5(url: string, options: IClientOptions = {}): Promise<{ client: MqttClient; connack: Packet & { properties?: Record<string, unknown> } }> {
  const client = mqtt.connect(url, { protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 10_000, ...options });
  const [connack] = (await Promise.race([
    once(client as unknown as NodeJS.EventEmitter, 'connect'),
    once(client as unknown as NodeJS.EventEmitter, 'error').then(([err]) => Promise.reject(err as Error)),
  ])) as [Packet & { properties?: Record<string, unknown> }];
  return { client, connack };
}

/** The reason code a QoS 1/2 publish was answered with (MQTT.js rejects those >= 0x80). */
async function publishCode(client: MqttClient, topic: string, payload: string | Buffer, options: mqtt.IClientPublishOptions = { qos: 1 }): Promise<number> {
  try {
    const packet = await client.publishAsync(topic, payload, options);
    return (packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'number') return code;
    throw err;
  }
}

/** A raw MQTT 5 connection: packets in (parsed), bytes out. */
function raw5(port: number): { socket: Socket; packets: (Packet & { reasonCode?: number })[]; send(p: object): void; closed: () => boolean } {
  const socket = netConnect(port, '127.0.0.1');
  const packets: (Packet & { reasonCode?: number })[] = [];
  const parser = mqttParser({ protocolVersion: 5 });
  parser.on('packet', (p: Packet) => packets.push(p));
  socket.on('data', (d) => parser.parse(d));
  socket.on('error', () => undefined);
  let closed = false;
  socket.on('close', () => (closed = true));
  return { socket, packets, send: (p) => socket.write(generate(p as Packet, { protocolVersion: 5 })), closed: () => closed };
}

/** Runs a Mosquitto client tool to its end without blocking the event loop (the gateway runs in this process). */
async function run(tool: 'mosquitto_pub', args: string[], timeoutMs = 20_000): Promise<{ status: number | null; output: string }> {
  const child = spawn(mosquittoTool(tool), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [status] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { status, output };
}

describe('MQTT 5 at the ingress: limits in CONNACK, reason codes that say what was stored', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  async function gateway(mqttConfig: Record<string, unknown>, { brokers }: { brokers?: string[] } = {}) {
    const dir = tmp();
    const topic = uniqueName('iot.v5');
    const overrides = { mqtt: { host: '127.0.0.1', port: 0, ...mqttConfig } } as Partial<ConfigInput>;
    const gw = await startTestGateway({ dir, topic, overrides, ...(brokers ? { brokers } : {}) });
    cleanup(() => gw.close());
    return { gw, dir, topic, port: gw.mqttAddress.port };
  }

  it('advertises Receive Maximum, Maximum Packet Size and Topic Alias Maximum; acknowledges 0x00 only with the record in the log; refuses with 0x87, 0x90 and 0x97 on an open connection', async () => {
    const dir = tmp();
    const passwordFile = join(dir, 'passwd');
    addUserToFile(passwordFile, 'dev-1', 'secret-1');
    const { gw, dir: logDir } = await gateway(
      { maxPayloadBytes: 2048, limits: { maxInflightMessages: 7, maxTopicBytes: 200, maxTopicAliases: 4 }, auth: { passwordFile } },
      { brokers: [`127.0.0.1:${await deadPort()}`] }, // nothing is forwarded: the log keeps what was stored
    );
    const { client, connack } = await connect5(gw.url, { clientId: 'dev-1', username: 'dev-1', password: 'secret-1' });
    cleanup(() => client.end(true));
    expect(connack.properties).toMatchObject({ receiveMaximum: 7, maximumPacketSize: 2048 + 200 + 16 * 1024, topicAliasMaximum: 4 });

    // 0x00: the record is committed when the PUBACK arrives (read through another connection)
    const observer = new Database(join(logDir, DB_FILE), { readonly: true });
    cleanup(() => observer.close());
    const stored = observer.prepare('SELECT count(*) FROM records WHERE payload = ?').pluck();
    for (let seq = 1; seq <= 5; seq++) {
      const payload = reading('dev-1', 'b1', seq);
      expect(await publishCode(client, 'devices/dev-1/telemetry', payload)).toBe(0x00);
      expect(stored.get(Buffer.from(payload)), `record ${seq} committed before its PUBACK`).toBe(1);
    }
    expect(await publishCode(client, 'devices/dev-1/telemetry', reading('dev-1', 'b1', 6), { qos: 2 })).toBe(0x00);

    // final refusals: a reason code, nothing stored, and the connection goes on
    expect(await publishCode(client, 'devices/dev-2/telemetry', reading('dev-2', 'b1', 1))).toBe(0x87); // the ACL: not its own topic
    expect(await publishCode(client, 'devices/dev-2/telemetry', reading('dev-2', 'b1', 2), { qos: 2 })).toBe(0x87);
    expect(await publishCode(client, `devices/dev-1/telemetry/${'x'.repeat(250)}`, reading('dev-1', 'b1', 99))).toBe(0x90); // longer than maxTopicBytes
    expect(await publishCode(client, '$SYS/spoof', 'x')).toBe(0x87);
    expect(await publishCode(client, 'devices/dev-1/telemetry', Buffer.alloc(3000, 'a'))).toBe(0x97); // over maxPayloadBytes
    expect(await publishCode(client, 'devices/dev-1/telemetry', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { qos: 1, properties: { payloadFormatIndicator: true } })).toBe(0x99); // says UTF-8, is not
    expect(client.connected).toBe(true);
    expect(await publishCode(client, 'devices/dev-1/telemetry', reading('dev-1', 'b1', 7))).toBe(0x00);

    const records = gw.log.readAfter(0, 100);
    expect(records.map((r) => JSON.parse(r.payload.toString()).seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(gw.status().mqtt).toMatchObject({ publishesDenied: 2, topicsRefused: 1, oversized: 1, payloadsInvalid: 1 });
  });

  it('inbound topic aliases: a publish names its topic by number; an unknown alias is a DISCONNECT 0x94', async () => {
    const { gw, topic } = await gateway({ limits: { maxTopicAliases: 2 } });
    const { client } = await connect5(gw.url, { clientId: 'alias-dev' });
    cleanup(() => client.end(true));
    expect(await publishCode(client, 'devices/alias-dev/telemetry', reading('alias-dev', 'b1', 1), { qos: 1, properties: { topicAlias: 1 } })).toBe(0);
    for (let seq = 2; seq <= 4; seq++) {
      expect(await publishCode(client, '', reading('alias-dev', 'b1', seq), { qos: 1, properties: { topicAlias: 1 } })).toBe(0);
    }
    const records = await consumeAll(kafkaBrokers(), topic, { expected: 4 });
    expect(records.map((r) => [r.key, r.headers['mqtt-topic'], JSON.parse(r.value.toString()).seq])).toEqual(
      [1, 2, 3, 4].map((seq) => ['alias-dev', 'devices/alias-dev/telemetry', seq]),
    );

    const conn = raw5(gw.mqttAddress.port);
    cleanup(() => conn.socket.destroy());
    conn.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, clientId: 'alias-raw', keepalive: 30 });
    await until('CONNACK', () => conn.packets.some((p) => p.cmd === 'connack'));
    conn.send({ cmd: 'publish', topic: '', payload: Buffer.from('x'), qos: 1, messageId: 1, dup: false, retain: false, properties: { topicAlias: 2 } });
    await until('DISCONNECT', () => conn.packets.some((p) => p.cmd === 'disconnect'));
    expect(conn.packets.find((p) => p.cmd === 'disconnect')).toMatchObject({ reasonCode: 0x94 });
    expect(conn.packets.some((p) => p.cmd === 'puback')).toBe(false);
    await until('closed', conn.closed);
  });

  it('a packet over the Maximum Packet Size is a DISCONNECT 0x95 at its header; more unacknowledged than Receive Maximum is a DISCONNECT 0x93', async () => {
    const { gw, port } = await gateway({ maxPayloadBytes: 1024, limits: { maxInflightMessages: 3, maxTopicBytes: 64 } });
    const big = raw5(port);
    cleanup(() => big.socket.destroy());
    big.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, clientId: 'big', keepalive: 30 });
    await until('CONNACK', () => big.packets.some((p) => p.cmd === 'connack'));
    const limit = (big.packets.find((p) => p.cmd === 'connack') as { properties?: { maximumPacketSize?: number } }).properties?.maximumPacketSize;
    expect(limit).toBe(1024 + 64 + 16 * 1024);
    // only the fixed header of a packet one byte over: refused before its body is sent
    const packet = generate({ cmd: 'publish', topic: 'devices/big/telemetry', payload: Buffer.alloc(limit! - 20), qos: 1, messageId: 1, dup: false, retain: false }, { protocolVersion: 5 });
    expect(packet.length).toBeGreaterThan(limit!);
    big.socket.write(packet.subarray(0, 5));
    await until('DISCONNECT 0x95', () => big.packets.some((p) => p.cmd === 'disconnect'));
    expect(big.packets.find((p) => p.cmd === 'disconnect')).toMatchObject({ reasonCode: 0x95 });
    await until('closed', big.closed);
    expect(gw.status().mqtt.oversized).toBe(1);

    // QoS 2 publishes hold their Receive Maximum slot until PUBREL: the fourth is one too many
    const eager = raw5(port);
    cleanup(() => eager.socket.destroy());
    eager.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, clientId: 'eager', keepalive: 30 });
    await until('CONNACK', () => eager.packets.some((p) => p.cmd === 'connack'));
    for (let id = 1; id <= 3; id++) eager.send({ cmd: 'publish', topic: 'devices/eager/telemetry', payload: Buffer.from(reading('eager', 'b', id)), qos: 2, messageId: id, dup: false, retain: false });
    await until('three PUBRECs', () => eager.packets.filter((p) => p.cmd === 'pubrec').length === 3);
    expect(eager.packets.filter((p) => p.cmd === 'pubrec').map((p) => p.reasonCode ?? 0)).toEqual([0, 0, 0]);
    eager.send({ cmd: 'publish', topic: 'devices/eager/telemetry', payload: Buffer.from(reading('eager', 'b', 4)), qos: 2, messageId: 4, dup: false, retain: false });
    await until('DISCONNECT 0x93', () => eager.packets.some((p) => p.cmd === 'disconnect'));
    expect(eager.packets.find((p) => p.cmd === 'disconnect')).toMatchObject({ reasonCode: 0x93 });
    expect(gw.log.readAfter(0, 100).filter((r) => r.deviceId === 'eager')).toHaveLength(3);

    // a window that is released (PUBREL) lets a client go on past it
    const steady = raw5(port);
    cleanup(() => steady.socket.destroy());
    steady.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, clientId: 'steady', keepalive: 30 });
    await until('CONNACK', () => steady.packets.some((p) => p.cmd === 'connack'));
    for (let id = 1; id <= 8; id++) {
      steady.send({ cmd: 'publish', topic: 'devices/steady/telemetry', payload: Buffer.from(reading('steady', 'b', id)), qos: id % 2 === 0 ? 2 : 1, messageId: id, dup: false, retain: false });
      if (id % 2 === 0) {
        await until(`PUBREC ${id}`, () => steady.packets.some((p) => p.cmd === 'pubrec' && p.messageId === id));
        steady.send({ cmd: 'pubrel', messageId: id });
        await until(`PUBCOMP ${id}`, () => steady.packets.some((p) => p.cmd === 'pubcomp' && p.messageId === id));
      } else {
        await until(`PUBACK ${id}`, () => steady.packets.some((p) => p.cmd === 'puback' && p.messageId === id));
      }
    }
    expect(steady.packets.some((p) => p.cmd === 'disconnect')).toBe(false);
    expect(gw.log.readAfter(0, 100).filter((r) => r.deviceId === 'steady')).toHaveLength(8);
  });

  it('the log full under backpressure: 0x97 at once instead of a held PUBACK; every 0x00 reaches Kafka exactly once, no 0x97 one does', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.v5full');
    const gatewayId = uniqueName('gw-v5full');
    const config = (brokers: string[]) => ({ dir, topic, gatewayId, brokers, overrides: { mqtt: { host: '127.0.0.1', port: 0 }, storage: { dir, maxBytes: '3MiB' } } as Partial<ConfigInput> });
    const offline = await startTestGateway(config([`127.0.0.1:${await deadPort()}`]));
    const { client } = await connect5(offline.url, { clientId: 'filler' });
    const codes = new Map<number, number>();
    let seq = 0;
    // fill the log: the first refusal comes at once, not after a wait
    while (![...codes.values()].includes(0x97)) {
      seq++;
      codes.set(seq, await publishCode(client, 'devices/filler/telemetry', reading('filler', 'b1', seq, { pad: 'p'.repeat(16_000) })));
      if (seq > 10_000) throw new Error('the log never filled');
    }
    // while full, each publish is refused with 0x97 (the device is told, nothing is held)
    for (let i = 0; i < 5; i++) {
      seq++;
      codes.set(seq, await publishCode(client, 'devices/filler/telemetry', reading('filler', 'b1', seq, { pad: 'p'.repeat(16_000) })));
    }
    expect(offline.status().waiting).toBe(0); // nothing held
    expect(offline.status().refused).toBeGreaterThanOrEqual(6);
    client.end(true);
    await offline.close();

    const acked = [...codes].filter(([, code]) => code === 0).map(([s]) => s);
    const refused = [...codes].filter(([, code]) => code === 0x97).map(([s]) => s);
    expect(acked.length + refused.length).toBe(codes.size);
    expect(refused.length).toBeGreaterThanOrEqual(6);
    expect(acked.length).toBeGreaterThan(50);

    const online = await startTestGateway(config(kafkaBrokers()));
    cleanup(() => online.close());
    const records = await consumeAll(kafkaBrokers(), topic, { expected: acked.length, timeoutMs: 90_000 });
    expect(records.map((r) => JSON.parse(r.value.toString()).seq)).toEqual(acked);
  });

  it('DISCONNECT with a reason: 0x8E to the connection a new one with the same client id takes over, 0x8B to all at shutdown', async () => {
    const { gw } = await gateway({});
    const reasons = (client: MqttClient) => {
      const seen: number[] = [];
      client.on('disconnect', (p: { reasonCode?: number }) => seen.push(p.reasonCode ?? 0));
      return seen;
    };
    const first = await connect5(gw.url, { clientId: 'same-id' });
    const firstReasons = reasons(first.client);
    const second = await connect5(gw.url, { clientId: 'same-id', clean: false, properties: { sessionExpiryInterval: 60 } });
    await until('0x8E', () => firstReasons.length > 0);
    expect(firstReasons).toEqual([0x8e]);
    const other = await connect5(gw.url, { clientId: 'other-id' });
    const shutdownReasons = [reasons(second.client), reasons(other.client)];
    await gw.close();
    await until('0x8B', () => shutdownReasons.every((r) => r.length > 0));
    expect(shutdownReasons).toEqual([[0x8b], [0x8b]]);
    for (const c of [first.client, second.client, other.client]) c.end(true);
  });

  it('a Last Will goes out when the connection breaks or the DISCONNECT asks for it (0x04), not on a normal DISCONNECT', async () => {
    const { gw } = await gateway({}, { brokers: [`127.0.0.1:${await deadPort()}`] });
    const will = (id: string) => ({ topic: `devices/${id}/telemetry/will`, payload: Buffer.from(`${id} gone`), qos: 1 as const, retain: false });
    const graceful = await connect5(gw.url, { clientId: 'w-graceful', will: will('w-graceful') });
    await publishCode(graceful.client, 'devices/w-graceful/telemetry', 'last');
    await graceful.client.endAsync();
    const asked = await connect5(gw.url, { clientId: 'w-asked', will: will('w-asked') });
    asked.client.end(false, { reasonCode: 0x04 });
    const broken = await connect5(gw.url, { clientId: 'w-broken', will: will('w-broken') });
    broken.client.stream.destroy();
    const wills = () => gw.log.readAfter(0, 100).filter((r) => r.mqttTopic.endsWith('/will')).map((r) => r.deviceId).sort();
    await until('two wills', () => wills().length === 2);
    // the graceful one's would be stored by now: it disconnected first
    expect(wills()).toEqual(['w-asked', 'w-broken']);
    expect(gw.log.readAfter(0, 100).filter((r) => r.deviceId === 'w-graceful').map((r) => r.payload.toString())).toEqual(['last']);
  });

  it('a session that ended (Session Expiry Interval 0) leaves no QoS 2 state behind: the next session with that client id may reuse a packet id', async () => {
    const { gw, port } = await gateway({});
    const { client: watcher } = await connect5(gw.url, { clientId: 'watcher' });
    cleanup(() => watcher.end(true));
    const seen: string[] = [];
    watcher.on('message', (_t, payload) => seen.push(payload.toString()));
    await watcher.subscribeAsync('local/q2', { qos: 2 });
    const first = raw5(port);
    first.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, clientId: 'q2', keepalive: 30, properties: { sessionExpiryInterval: 0 } });
    await until('CONNACK', () => first.packets.some((p) => p.cmd === 'connack'));
    first.send({ cmd: 'publish', topic: 'local/q2', payload: Buffer.from('A'), qos: 2, messageId: 1, dup: false, retain: false });
    await until('PUBREC', () => first.packets.some((p) => p.cmd === 'pubrec'));
    first.socket.destroy(); // no PUBREL: the handshake is left open, and the session ends with the connection
    await until('A delivered', () => seen.includes('A'));
    await until('the first session gone', () => gw.status().mqttClients === 1);
    const second = raw5(port);
    cleanup(() => second.socket.destroy());
    second.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: false, clientId: 'q2', keepalive: 30, properties: { sessionExpiryInterval: 0 } });
    await until('CONNACK', () => second.packets.some((p) => p.cmd === 'connack'));
    expect(second.packets.find((p) => p.cmd === 'connack')).toMatchObject({ sessionPresent: false });
    second.send({ cmd: 'publish', topic: 'local/q2', payload: Buffer.from('B'), qos: 2, messageId: 1, dup: false, retain: false });
    await until('PUBREC', () => second.packets.some((p) => p.cmd === 'pubrec'));
    second.send({ cmd: 'pubrel', messageId: 1 });
    await until('B delivered, not taken for a retransmission of A', () => seen.includes('B'));
  });

  it("never sends an MQTT 5 client more than the Maximum Packet Size it set (the message is skipped and counted, the client stays)", async () => {
    const { gw } = await gateway({});
    const { client: small } = await connect5(gw.url, { clientId: 'small', properties: { maximumPacketSize: 200 } });
    cleanup(() => small.end(true));
    const seen: string[] = [];
    small.on('message', (_t, payload) => seen.push(payload.toString()));
    await small.subscribeAsync('local/size', { qos: 1 });
    const { client: sender } = await connect5(gw.url, { clientId: 'sender' });
    cleanup(() => sender.end(true));
    await publishCode(sender, 'local/size', 'x'.repeat(500));
    await publishCode(sender, 'local/size', 'small but big properties', { qos: 1, properties: { userProperties: { note: 'y'.repeat(400) } } });
    await publishCode(sender, 'local/size', 'small one');
    await until('the small one', () => seen.includes('small one'));
    expect(seen).toEqual(['small one']);
    expect(small.connected).toBe(true);
    expect(gw.status().mqtt.forwardsTooLarge).toBe(2);
  });

  it("a persistent session's client id is its owner's until the session expires, then anyone's; an empty client id is assigned one", async () => {
    const dir = tmp();
    const passwordFile = join(dir, 'passwd');
    addUserToFile(passwordFile, 'dev-1', 'secret-1');
    addUserToFile(passwordFile, 'dev-2', 'secret-2');
    const { gw } = await gateway({ auth: { passwordFile } });
    const owner = await connect5(gw.url, { clientId: 'shared-id', username: 'dev-1', password: 'secret-1', clean: false, properties: { sessionExpiryInterval: 2 } });
    await owner.client.endAsync();
    const tryAs = (password: string) =>
      new Promise<number>((resolve) => {
        const c = mqtt.connect(gw.url, { protocolVersion: 5, reconnectPeriod: 0, clientId: 'shared-id', username: 'dev-2', password, clean: false, properties: { sessionExpiryInterval: 0 } });
        c.once('connect', () => { c.end(true); resolve(0); });
        c.once('error', (err: Error & { code?: number }) => { c.end(true); resolve(err.code ?? -1); });
      });
    expect(await tryAs('secret-2')).toBe(0x87); // still dev-1's session
    await until('the session expired and its client id is free', async () => (await tryAs('secret-2')) === 0, 20_000, 500);

    const anonymous = raw5(gw.mqttAddress.port);
    cleanup(() => anonymous.socket.destroy());
    // mqtt-packet will not write it (MQTT.js neither): Clean Start cleared by hand in the flags byte
    const bytes = generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, clientId: '', keepalive: 30, username: 'dev-1', password: Buffer.from('secret-1'), properties: { sessionExpiryInterval: 60 } } as Packet, { protocolVersion: 5 });
    const flagsAt = 2 + 6 + 1; // fixed header (short packet), protocol name, level
    expect(bytes[flagsAt]! & 0x02).toBe(0x02);
    bytes[flagsAt]! &= ~0x02;
    anonymous.socket.write(bytes);
    await until('CONNACK', () => anonymous.packets.some((p) => p.cmd === 'connack'));
    expect(anonymous.packets.find((p) => p.cmd === 'connack')).toMatchObject({ reasonCode: 0, properties: { assignedClientIdentifier: expect.any(String) } });
  });

  it('client ids and filters named like Object.prototype members (constructor, __proto__) are ordinary names, for 3.1.1 and MQTT 5 (GHSA-52qw-whmv-87c5)', async () => {
    const { gw } = await gateway({});
    for (const protocolVersion of [4, 5] as const) {
      for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
        const client = mqtt.connect(gw.url, { protocolVersion, reconnectPeriod: 0, clientId: name, clean: false, ...(protocolVersion === 5 ? { properties: { sessionExpiryInterval: 60 } } : {}) });
        await once(client as unknown as NodeJS.EventEmitter, 'connect');
        await client.subscribeAsync({ [name]: { qos: 1 }, [`${name}/#`]: { qos: 1 } });
        await client.publishAsync(name, 'x', { qos: 1 });
        await client.endAsync();
      }
    }
    // the gateway is alive and still stores readings
    const { client } = await connect5(gw.url, { clientId: 'after' });
    cleanup(() => client.end(true));
    expect(await publishCode(client, 'devices/after/telemetry', reading('after', 'b', 1))).toBe(0);
    expect(gw.log.readAfter(0, 10).map((r) => r.deviceId)).toEqual(['after']);
  });

  it("a delayed will (Will Delay Interval) is stored when the device stays away, and reaches Kafka without the delay property", async () => {
    const { gw, topic } = await gateway({});
    const device = await connect5(gw.url, {
      clientId: 'w-delay',
      properties: { sessionExpiryInterval: 60 },
      will: { topic: 'devices/w-delay/telemetry/status', payload: Buffer.from('offline'), qos: 1, retain: false, properties: { willDelayInterval: 1, contentType: 'text/plain' } },
    });
    device.client.on('error', () => undefined);
    await publishCode(device.client, 'devices/w-delay/telemetry/status', 'online');
    device.client.stream.destroy(); // no DISCONNECT: the will goes out after its delay [MQTT-3.1.3-9]
    cleanup(() => device.client.end(true));
    const records = await consumeAll(kafkaBrokers(), topic, { expected: 2 });
    expect(records.map((r) => r.value.toString())).toEqual(['online', 'offline']);
    expect(records[1]!.headers['content-type']).toBe('text/plain');
  });

  it("keeps to a client's own Receive Maximum, and disconnects (0x97) one that stops acknowledging rather than hold its messages without bound", async () => {
    const { gw, port } = await gateway({ limits: { maxQueuedMessages: 20, maxSessionBytes: '1MiB' } });
    const slow = raw5(port);
    cleanup(() => slow.socket.destroy());
    slow.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, clientId: 'slow', keepalive: 30, properties: { receiveMaximum: 2 } });
    await until('CONNACK', () => slow.packets.some((p) => p.cmd === 'connack'));
    slow.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'local/flood', qos: 1 }] });
    await until('SUBACK', () => slow.packets.some((p) => p.cmd === 'suback'));
    const { client: sender } = await connect5(gw.url, { clientId: 'flooder' });
    cleanup(() => sender.end(true));
    for (let i = 1; i <= 10; i++) await publishCode(sender, 'local/flood', `m${i}`);
    await until('two messages', () => slow.packets.filter((p) => p.cmd === 'publish').length === 2);
    const first = slow.packets.find((p) => p.cmd === 'publish') as { messageId: number };
    slow.send({ cmd: 'puback', messageId: first.messageId });
    await until('a third once one is acknowledged', () => slow.packets.filter((p) => p.cmd === 'publish').length === 3);
    expect(slow.packets.filter((p) => p.cmd === 'publish').map((p) => (p as { payload: Buffer }).payload.toString())).toEqual(['m1', 'm2', 'm3']);
    for (let i = 11; i <= 40; i++) await publishCode(sender, 'local/flood', `m${i}`);
    await until('DISCONNECT 0x97', () => slow.packets.some((p) => p.cmd === 'disconnect'));
    expect(slow.packets.find((p) => p.cmd === 'disconnect')).toMatchObject({ reasonCode: 0x97 });
    expect(await publishCode(sender, 'devices/flooder/telemetry', reading('flooder', 'b', 1))).toBe(0);

    // and by bytes, for all clients together (mqtt.limits.maxSessionBytes): a few large messages suffice
    const big = raw5(port);
    cleanup(() => big.socket.destroy());
    big.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clean: true, clientId: 'slow-big', keepalive: 30, properties: { receiveMaximum: 1 } });
    await until('CONNACK', () => big.packets.some((p) => p.cmd === 'connack'));
    big.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'local/big', qos: 1 }] });
    await until('SUBACK', () => big.packets.some((p) => p.cmd === 'suback'));
    for (let i = 1; i <= 8; i++) await publishCode(sender, 'local/big', Buffer.alloc(200 * 1024, i));
    await until('DISCONNECT 0x97 by bytes', () => big.packets.some((p) => p.cmd === 'disconnect'));
    expect(big.packets.find((p) => p.cmd === 'disconnect')).toMatchObject({ reasonCode: 0x97 });
    expect(big.packets.filter((p) => p.cmd === 'publish')).toHaveLength(1);
  });

  it("Debian's mosquitto_pub -V mqttv5: stored and forwarded; an ACL refusal is reason code 135 (0x87) to it", async () => {
    const dir = tmp();
    const passwordFile = join(dir, 'passwd');
    addUserToFile(passwordFile, 'dev-1', 'secret-1');
    const { port, topic } = await gateway({ auth: { passwordFile } });
    const common = ['-V', 'mqttv5', '-h', '127.0.0.1', '-p', String(port), '-u', 'dev-1', '-P', 'secret-1', '-i', 'dev-1', '-q', '1', '-d'];
    const ok = await run('mosquitto_pub', [...common, '-t', 'devices/dev-1/telemetry', '-m', reading('dev-1', 'm', 1)]);
    expect(ok.status, ok.output).toBe(0);
    expect(ok.output).toMatch(/Client dev-1 received PUBACK \(Mid: 1, RC:0\)/);
    const denied = await run('mosquitto_pub', [...common, '-t', 'devices/dev-2/telemetry', '-m', reading('dev-2', 'm', 1)]);
    expect(denied.output).toMatch(/received PUBACK \(Mid: 1, RC:135\)/);
    const records = await consumeAll(kafkaBrokers(), topic, { expected: 1 });
    expect(records.map((r) => [r.key, JSON.parse(r.value.toString()).seq])).toEqual([['dev-1', 1]]);
  });
});
