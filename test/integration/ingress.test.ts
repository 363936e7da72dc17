import { connect as netConnect, type Socket } from 'node:net';
import mqtt from 'mqtt';
import { generate, parser as mqttParser, type Packet } from 'mqtt-packet';
import { describe, expect, it, vi } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { MqttIngress } from '../../src/ingress/mqtt-ingress.js';
import { RouteTable } from '../../src/ingress/routes.js';
import { CommitLog } from '../../src/log/commit-log.js';
import { GroupCommit } from '../../src/log/group-commit.js';
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

/** A raw socket that can pipeline packets before CONNACK, and collects what the broker sends. */
function rawPipe(port: number) {
  const socket = netConnect(port, '127.0.0.1');
  const parser = mqttParser({ protocolVersion: 4 });
  const got: Packet[] = [];
  parser.on('packet', (p: Packet) => got.push(p));
  socket.on('data', (d) => parser.parse(d));
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  const send = (...packets: Packet[]) => socket.write(Buffer.concat(packets.map((p) => generate(p))));
  const acked = (messageId: number) => got.some((p) => p.cmd === 'puback' && p.messageId === messageId);
  return { socket, got, closed, send, acked };
}

const connectPacket = (clientId: string, clean = true, will?: { topic: string; payload: Buffer; qos: 0 | 1; retain: boolean }): Packet =>
  ({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean, clientId, keepalive: 30, ...(will ? { will } : {}) }) as Packet;

/** Ingress, group commit and a real log, without Kafka; `full()` makes storage look full. */
async function ingressOnLog(dir: string, cleanup: (fn: () => unknown) => void, maxPendingBytes?: number) {
  const config = parseConfig(testConfig({ dir, topic: 'iot.unused', brokers: ['127.0.0.1:1'] }));
  const log = new CommitLog({ dir: config.storage.dir, synchronous: 'full' });
  let storageFull = false;
  const groupCommit = new GroupCommit(log, {
    holdRetryMs: 60_000,
    ...(maxPendingBytes ? { maxPendingBytes } : {}),
    storage: { recordBytes: 1 << 30, overflow: 'backpressure', forwardPosition: () => 0 },
  });
  let failingWrites = 0;
  const realAppend = log.append.bind(log);
  log.append = (...args: Parameters<CommitLog['append']>) => {
    if (failingWrites > 0) {
      failingWrites--;
      throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    }
    return realAppend(...args);
  };
  const realPageBytes = log.pageBytes.bind(log);
  log.pageBytes = () => (storageFull ? 2 ** 31 : realPageBytes());
  const ingress = new MqttIngress({ tcp: { host: '127.0.0.1', port: 0 }, maxPayloadBytes: 65536, routes: new RouteTable(config.routes), sink: groupCommit, logger: testLogger() });
  const port = (await ingress.start()).tcp!.port;
  cleanup(() => ingress.close()); // in the gateway's order: ingress, group commit, log
  cleanup(() => groupCommit.close());
  cleanup(() => log.close());
  const stored = (deviceId?: string) => log.readAfter(0, 100).filter((r) => deviceId === undefined || r.deviceId === deviceId).map((r) => r.payload.toString());
  return {
    log,
    groupCommit,
    ingress,
    port,
    stored,
    failWrites: (n: number) => {
      failingWrites = n;
    },
    full: (on: boolean) => {
      storageFull = on;
      if (!on) groupCommit.release();
    },
  };
}

/** A door sensor's packet 1 "OPEN", DUP or not. */
const open = (dup: boolean) => ({ cmd: 'publish', topic: 'devices/door-1/telemetry', payload: Buffer.from('OPEN'), qos: 1, messageId: 1, dup, retain: false }) as Packet;

/** The door sensor connects, sends packet 1 "OPEN", is acknowledged and disconnects. */
async function doorOpensInTheMorning(port: number): Promise<void> {
  const morning = rawPipe(port);
  morning.send(connectPacket('door-1'), open(false));
  await vi.waitFor(() => expect(morning.acked(1)).toBe(true), { timeout: 30_000 });
  morning.socket.destroy();
  await morning.closed;
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
    // The second first-send is refused (the disk was full): its DUP resend is a new reading, not a
    // retransmit of the first one that is still in the retransmit window.
    const gw = await ingressOnLog(tmp(), cleanup);
    await doorOpensInTheMorning(gw.port);
    gw.failWrites(1);
    const noon = rawPipe(gw.port);
    noon.send(connectPacket('door-1'), open(false));
    await noon.closed; // refused: no PUBACK, the connection is closed
    expect(noon.acked(1)).toBe(false);
    const retry = rawPipe(gw.port);
    cleanup(() => void retry.socket.destroy());
    retry.send(connectPacket('door-1'), open(true));
    await vi.waitFor(() => expect(retry.acked(1)).toBe(true), { timeout: 30_000 });
    expect(gw.stored()).toEqual(['OPEN', 'OPEN']);
    expect(gw.ingress.counters).toMatchObject({ routed: 2, refused: 1, duplicates: 0 });
  });

  it('stores the DUP resend of a first send abandoned while storage was full', async () => {
    // The door sensor's second OPEN waits (storage full), the device gives up on that connection
    // and resends with DUP on a new one before the waiting send is dropped as abandoned: the
    // resend must be decided after that, not taken for a retransmit of the morning's OPEN.
    const gw = await ingressOnLog(tmp(), cleanup);
    await doorOpensInTheMorning(gw.port);
    gw.full(true);
    const noon = rawPipe(gw.port);
    noon.send(connectPacket('door-1'), open(false));
    await vi.waitFor(() => expect(gw.groupCommit.holding).toBe(true), { timeout: 30_000 });
    noon.socket.destroy();
    await noon.closed;
    const retry = rawPipe(gw.port);
    cleanup(() => void retry.socket.destroy());
    retry.send(connectPacket('door-1'), open(true));
    await vi.waitFor(() => expect(gw.groupCommit.waiting).toBe(2), { timeout: 30_000 });
    gw.full(false);
    await vi.waitFor(() => expect(retry.acked(1)).toBe(true), { timeout: 30_000 });
    expect(gw.stored()).toEqual(['OPEN', 'OPEN']);
    expect(gw.groupCommit.counters).toMatchObject({ abandoned: 1, duplicates: 0 });
  });

  it('never stores a publish pipelined behind a refused one ahead of it (a closed connection is no excuse)', async () => {
    // Packets sent with CONNECT are handled after it, and aedes closes the client as soon as one
    // is refused: the next one is authorized for a closed client. It must still be refused, or it
    // would overtake the refused one that the device resends.
    const gw = await ingressOnLog(tmp(), cleanup, 3000);
    const first = rawPipe(gw.port); // a persistent session with a subscription: aedes closes it asynchronously
    first.send(connectPacket('dev-7', false), { cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'cmd/dev-7', qos: 1 }] } as Packet);
    await vi.waitFor(() => expect(first.got.some((p) => p.cmd === 'suback')).toBe(true), { timeout: 30_000 });
    first.send({ cmd: 'disconnect' } as Packet);
    await first.closed;
    gw.full(true);
    const other = rawPipe(gw.port); // another device's waiting publish takes most of the pending bytes
    cleanup(() => void other.socket.destroy());
    other.send(connectPacket('other'), { cmd: 'publish', topic: 'devices/other/telemetry', payload: Buffer.alloc(1500, 0x61), qos: 1, messageId: 1, dup: false, retain: false } as Packet);
    await vi.waitFor(() => expect(gw.groupCommit.waiting).toBe(1), { timeout: 30_000 });
    const reading = (seq: number, dup: boolean) =>
      ({ cmd: 'publish', topic: 'devices/dev-7/telemetry', payload: Buffer.from(`{"bootId":"b","seq":${seq},"pad":"${'x'.repeat(seq === 1 ? 1500 : 1)}"}`), qos: 1, messageId: 10 + seq, dup, retain: false }) as Packet;
    const dev = rawPipe(gw.port);
    dev.send(connectPacket('dev-7', false), reading(1, false), reading(2, false)); // 1 is refused at once: too much waiting
    await dev.closed;
    await vi.waitFor(() => expect(gw.ingress.counters.refused).toBe(2), { timeout: 30_000 });
    gw.full(false);
    const again = rawPipe(gw.port); // the device resends both, in order
    cleanup(() => void again.socket.destroy());
    again.send(connectPacket('dev-7', false), reading(1, true), reading(2, true));
    await vi.waitFor(() => expect(again.acked(11) && again.acked(12)).toBe(true), { timeout: 30_000 });
    expect(gw.stored('dev-7').map((p) => (JSON.parse(p) as { seq: number }).seq)).toEqual([1, 2]);
  });

  it("publishes no Last Wills when the gateway stops: its devices did not go offline", async () => {
    const gw = await ingressOnLog(tmp(), cleanup);
    const devices = ['a', 'b'].map((id) => {
      const device = rawPipe(gw.port);
      device.send(connectPacket(id, true, { topic: `devices/${id}/telemetry/status`, payload: Buffer.from('offline'), qos: 1, retain: false }));
      return device;
    });
    await vi.waitFor(() => expect(devices.every((d) => d.got.some((p) => p.cmd === 'connack'))).toBe(true), { timeout: 30_000 });
    devices[0]!.socket.destroy(); // this one did drop off: its will is stored
    await vi.waitFor(() => expect(gw.stored()).toEqual(['offline']), { timeout: 30_000 });
    await gw.ingress.close();
    gw.groupCommit.close();
    expect(gw.log.readAfter(0, 10).map((r) => r.deviceId)).toEqual(['a']);
  });

  it('stores a QoS 0 reading sent together with CONNECT and DISCONNECT (a sensor that wakes, publishes and sleeps)', async () => {
    const gw = await ingressOnLog(tmp(), cleanup);
    const sensor = rawPipe(gw.port);
    sensor.send(
      connectPacket('sleepy-1'),
      { cmd: 'publish', topic: 'devices/sleepy-1/telemetry', payload: Buffer.from('21.5'), qos: 0, dup: false, retain: false } as Packet,
      { cmd: 'disconnect' } as Packet,
    );
    await sensor.closed;
    await vi.waitFor(() => expect(gw.stored('sleepy-1')).toEqual(['21.5']), { timeout: 30_000 });
    expect(gw.groupCommit.counters.abandoned).toBe(0);
  });
});
