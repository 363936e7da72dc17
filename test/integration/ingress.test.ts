import { connect as netConnect, type Socket } from 'node:net';
import mqtt from 'mqtt';
import { generate, parser as mqttParser, type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { startTestGateway, uniqueName } from '../helpers/gateway.js';
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
});
