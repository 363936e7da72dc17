import { connect as netConnect, type Socket } from 'node:net';
import mqtt from 'mqtt';
import { generate, parser as mqttParser, type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { MqttIngress } from '../../src/ingress/mqtt-ingress.js';
import { RouteTable } from '../../src/ingress/routes.js';
import { CommitLog } from '../../src/log/commit-log.js';
import { GroupCommit, type AppendSink } from '../../src/log/group-commit.js';
import { startTestGateway, testConfig, testLogger, uniqueName } from '../helpers/gateway.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';
import { consumeAll } from '../helpers/kafka.js';
import { kafkaBrokers } from '../helpers/gateway.js';

/** A raw MQTT 3.1.1 connection, to send exactly the packets a test needs (DUP retransmits). */
async function rawClient(port: number, clientId: string): Promise<{ socket: Socket; send: (p: Packet) => void; next: (cmd: string) => Promise<Packet> }> {
  const socket = netConnect(port, '127.0.0.1');
  const parser = mqttParser({ protocolVersion: 4 });
  const queue: Packet[] = [];
  const waiting: { cmd: string; resolve: (p: Packet) => void }[] = [];
  parser.on('packet', (p: Packet) => {
    const i = waiting.findIndex((w) => w.cmd === p.cmd);
    if (i >= 0) waiting.splice(i, 1)[0]!.resolve(p);
    else queue.push(p);
  });
  socket.on('data', (d) => parser.parse(d));
  const next = (cmd: string) =>
    new Promise<Packet>((resolve) => {
      const i = queue.findIndex((p) => p.cmd === cmd);
      if (i >= 0) resolve(queue.splice(i, 1)[0]!);
      else waiting.push({ cmd, resolve });
    });
  const send = (p: Packet) => socket.write(generate(p));
  send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId, keepalive: 30 });
  await next('connack');
  return { socket, send, next };
}

describe('MQTT ingress', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  it('behaves as a normal broker for topics no route matches, and still delivers routed ones locally', async () => {
    const gw = await startTestGateway({ dir: tmp(), topic: uniqueName('iot.local') });
    cleanup(() => gw.close());
    const sub = await mqtt.connectAsync(gw.url, { clientId: 'local-sub' });
    const pub = await mqtt.connectAsync(gw.url, { clientId: 'local-pub' });
    cleanup(() => sub.endAsync());
    cleanup(() => pub.endAsync());
    await sub.subscribeAsync(['site/lights/#', 'devices/+/telemetry'], { qos: 1 });
    const received: string[] = [];
    sub.on('message', (topic, payload) => received.push(`${topic}=${payload.toString()}`));
    await pub.publishAsync('site/lights/hall', 'on', { qos: 1 });
    await pub.publishAsync('devices/d7/telemetry', '{"t":1}', { qos: 1 });
    await expect.poll(() => received.sort()).toEqual(['devices/d7/telemetry={"t":1}', 'site/lights/hall=on']);
    expect(gw.status().received).toBe(1);
    expect(gw.log.lastOffset).toBe(1);
  });

  it('refuses publishes to $SYS topics', async () => {
    const gw = await startTestGateway({ dir: tmp(), topic: uniqueName('iot.sys') });
    cleanup(() => gw.close());
    const client = await mqtt.connectAsync(gw.url, { clientId: 'sys-pub', reconnectPeriod: 0 });
    client.on('error', () => undefined);
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    client.publish('$SYS/fake', 'x', { qos: 1 });
    await closed; // MQTT 3.1.1 has no negative PUBACK: the broker closes the connection [MQTT-3.3.5-2]
    client.end(true);
    expect(gw.log.lastOffset).toBe(0);
  });

  it('stores QoS 0, 1 and 2 publishes, and a QoS 2 DUP retransmit only once', async () => {
    const topic = uniqueName('iot.qos');
    const gw = await startTestGateway({ dir: tmp(), topic });
    cleanup(() => gw.close());
    const raw = await rawClient(gw.mqttAddress.port, 'raw-qos');
    cleanup(() => void raw.socket.destroy());

    raw.send({ cmd: 'publish', topic: 'devices/r1/telemetry', payload: Buffer.from('q0'), qos: 0, dup: false, retain: false });
    raw.send({ cmd: 'publish', topic: 'devices/r1/telemetry', payload: Buffer.from('q1'), qos: 1, messageId: 1, dup: false, retain: false });
    expect((await raw.next('puback')).messageId).toBe(1);
    const q2 = { cmd: 'publish', topic: 'devices/r1/telemetry', payload: Buffer.from('q2'), qos: 2, messageId: 2, retain: false } as const;
    raw.send({ ...q2, dup: false });
    expect((await raw.next('pubrec')).messageId).toBe(2);
    // the PUBREC "was lost": the device retransmits with DUP before sending PUBREL [MQTT-4.3.3]
    raw.send({ ...q2, dup: true });
    expect((await raw.next('pubrec')).messageId).toBe(2);
    raw.send({ cmd: 'pubrel', messageId: 2 });
    expect((await raw.next('pubcomp')).messageId).toBe(2);

    const records = await consumeAll(kafkaBrokers(), topic, { expected: 3 });
    expect(records.map((r) => r.value.toString())).toEqual(['q0', 'q1', 'q2']);
    expect(gw.log.lastOffset).toBe(3);
  });

  it("publishes a device's Last Will on a routed topic to Kafka when it drops off", async () => {
    const topic = uniqueName('iot.will');
    const gw = await startTestGateway({ dir: tmp(), topic });
    cleanup(() => gw.close());
    const device = await mqtt.connectAsync(gw.url, {
      clientId: 'will-1',
      reconnectPeriod: 0,
      will: { topic: 'devices/will-1/telemetry/status', payload: Buffer.from('offline'), qos: 1, retain: false },
    });
    device.on('error', () => undefined);
    await device.publishAsync('devices/will-1/telemetry/status', 'online', { qos: 1 });
    device.stream.destroy(); // no DISCONNECT: the broker must publish the will [MQTT-3.1.2-8]
    cleanup(() => device.endAsync(true));
    const records = await consumeAll(kafkaBrokers(), topic, { expected: 2 });
    expect(records.map((r) => r.value.toString())).toEqual(['online', 'offline']);
    expect(gw.status().refused).toBe(0);
  });

  it('stores the DUP resend of a refused first send, even when an earlier packet had the same id and payload', async () => {
    // A door sensor connects, publishes packet id 1 "OPEN", disconnects; minutes later the same.
    // The second first-send is refused (the log could not take it): its DUP resend is a new
    // reading, not a retransmit of the first one that is still in the retransmit window.
    const config = parseConfig(testConfig({ dir: tmp(), topic: 'iot.unused', brokers: ['127.0.0.1:1'] }));
    const log = new CommitLog({ dir: config.storage.dir, synchronous: 'full' });
    cleanup(() => log.close());
    const groupCommit = new GroupCommit(log);
    let refuseNext = false;
    const sink: AppendSink = {
      append(entry, done, owner) {
        if (!refuseNext) return groupCommit.append(entry, done, owner);
        refuseNext = false;
        done(new Error('log refused the write (test)'));
      },
    };
    const ingress = new MqttIngress({ host: '127.0.0.1', port: 0, maxPayloadBytes: 65536, routes: new RouteTable(config.routes), sink, logger: testLogger() });
    const { port } = await ingress.start();
    cleanup(() => ingress.close());
    const open = (dup: boolean) => ({ cmd: 'publish', topic: 'devices/door-1/telemetry', payload: Buffer.from('OPEN'), qos: 1, messageId: 1, dup, retain: false }) as const;

    const morning = await rawClient(port, 'door-1');
    morning.send(open(false));
    expect((await morning.next('puback')).messageId).toBe(1);
    morning.socket.destroy();

    const noon = await rawClient(port, 'door-1');
    const closed = new Promise((resolve) => noon.socket.once('close', resolve));
    refuseNext = true;
    noon.send(open(false));
    await closed; // refused: no PUBACK, the connection is closed
    const retry = await rawClient(port, 'door-1');
    cleanup(() => void retry.socket.destroy());
    retry.send(open(true));
    expect((await retry.next('puback')).messageId).toBe(1);

    expect(log.readAfter(0, 10).map((r) => r.payload.toString())).toEqual(['OPEN', 'OPEN']);
    expect(ingress.counters).toMatchObject({ routed: 2, refused: 1, duplicates: 0 });
  });
});
