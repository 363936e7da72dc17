import { connect as netConnect, type Socket } from 'node:net';
import mqtt from 'mqtt';
import { generate, parser as mqttParser, type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { runFleet } from '../../firmware-sim/fleet.js';
import { kafkaBrokers, startTestGateway, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { until } from '../helpers/raw-mqtt.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';
import { expectExactlyOnce, verifyExactlyOnce } from '../helpers/verify.js';

/** A raw TCP connection speaking MQTT `version` (packets built and parsed by mqtt-packet), logged in. */
async function rawClient(port: number, version: 4 | 5, clientId: string): Promise<{ socket: Socket; packets: Packet[]; send: (p: Packet) => void }> {
  const socket = netConnect(port, '127.0.0.1');
  const packets: Packet[] = [];
  const parser = mqttParser({ protocolVersion: version });
  parser.on('packet', (p: Packet) => packets.push(p));
  socket.on('data', (d: Buffer) => parser.parse(d));
  socket.on('error', () => undefined);
  const send = (p: Packet) => void socket.write(generate(p, { protocolVersion: version }));
  send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: version, clean: true, clientId, keepalive: 30 });
  await until(`CONNACK for ${clientId}`, () => packets.some((p) => p.cmd === 'connack'));
  const connack = packets.find((p) => p.cmd === 'connack')!;
  if (connack.cmd !== 'connack' || (connack.reasonCode ?? connack.returnCode) !== 0) throw new Error(`${clientId} refused: ${JSON.stringify(connack)}`);
  return { socket, packets, send };
}

describe('replays and retransmits are not forwarded twice', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  it('(4) firmware replays of already-acked readings (after reboot/reconnect, with and without DUP, MQTT 3.1.1 and 5, QoS 1 and 2) are dropped; a new boot is not', async () => {
    const topic = uniqueName('iot.replay');
    const dir = tmp();
    let gw = await startTestGateway({ dir, topic, gatewayId: uniqueName('gw-replay') });
    // every other device speaks MQTT 5
    const fleet = await runFleet({ url: gw.url, devices: 10, rate: 50, count: 100, qos: 1, protocolVersion: 'mixed', keepPayloads: true });
    expect(fleet.acked).toBe(1000);

    // The gateway restarts in between: the dedup index lives in SQLite and survives it.
    await gw.close();
    gw = await startTestGateway({ dir, topic, gatewayId: gw.config.gateway.id });
    cleanup(() => gw.close());

    // Reboot replay: the firmware resends readings 1..60 of each device as new publishes, in the
    // device's own protocol: MQTT 3.1.1 with QoS 1, MQTT 5 with QoS 2. An MQTT 5 replay is
    // acknowledged with a success reason code (publishAsync fails on one >= 0x80): the device
    // learns that the reading is stored, which it is, once.
    const replayers = {
      4: await mqtt.connectAsync(gw.url, { clientId: 'replayer', clean: false, protocolVersion: 4 }),
      5: await mqtt.connectAsync(gw.url, { clientId: 'replayer-v5', clean: false, protocolVersion: 5, properties: { sessionExpiryInterval: 60 } }),
    };
    for (const device of fleet.devices) {
      for (let seq = 1; seq <= 60; seq++) {
        const qos = device.protocolVersion === 5 ? 2 : 1;
        await replayers[device.protocolVersion].publishAsync(`devices/${device.deviceId}/telemetry`, device.payloads.get(seq)!, { qos });
      }
    }
    await Promise.all([replayers[4].endAsync(), replayers[5].endAsync()]);

    // DUP retransmits on the wire (PUBACK lost), QoS 1 and QoS 2, of readings 61..70 of one device.
    const d0 = fleet.devices[0]!;
    const socket = netConnect(gw.mqttAddress.port, '127.0.0.1');
    cleanup(() => void socket.destroy());
    const acks: string[] = [];
    socket.on('data', (d) => acks.push(d.toString('hex')));
    socket.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'raw-dup', keepalive: 30 }));
    for (let seq = 61; seq <= 70; seq++) {
      socket.write(
        generate({
          cmd: 'publish',
          topic: `devices/${d0.deviceId}/telemetry`,
          payload: Buffer.from(d0.payloads.get(seq)!),
          qos: 1,
          messageId: seq,
          dup: true,
          retain: false,
        }),
      );
    }
    await expect.poll(() => acks.join('').split('4002').length - 1).toBeGreaterThanOrEqual(10); // 10 PUBACKs

    // The same on an MQTT 5 connection, of a device that speaks MQTT 5: readings 61..65 with QoS 1,
    // 66..70 with QoS 2 (PUBREC, then PUBREL/PUBCOMP), every one acknowledged with reason code 0.
    const d1 = fleet.devices[1]!;
    expect(d1.protocolVersion).toBe(5);
    const v5 = await rawClient(gw.mqttAddress.port, 5, 'raw-dup-v5');
    cleanup(() => void v5.socket.destroy());
    for (let seq = 61; seq <= 70; seq++) {
      const qos = seq <= 65 ? 1 : 2;
      v5.send({ cmd: 'publish', topic: `devices/${d1.deviceId}/telemetry`, payload: Buffer.from(d1.payloads.get(seq)!), qos, messageId: seq, dup: true, retain: false });
    }
    await until('5 PUBACKs and 5 PUBRECs', () => v5.packets.filter((p) => p.cmd === 'puback' || p.cmd === 'pubrec').length >= 10);
    for (let seq = 66; seq <= 70; seq++) v5.send({ cmd: 'pubrel', messageId: seq });
    await until('5 PUBCOMPs', () => v5.packets.filter((p) => p.cmd === 'pubcomp').length >= 5);
    const v5Acks = v5.packets.filter((p) => p.cmd !== 'connack').map((p) => `${p.cmd} ${'messageId' in p ? p.messageId : ''} ${'reasonCode' in p ? (p.reasonCode ?? 0) : 0}`);
    expect(v5Acks.sort()).toEqual(
      [...[61, 62, 63, 64, 65].map((m) => `puback ${m} 0`), ...[66, 67, 68, 69, 70].flatMap((m) => [`pubrec ${m} 0`, `pubcomp ${m} 0`])].sort(),
    );

    // A genuinely new boot of device 0: seq starts again at 1 with a new bootId; must be kept.
    // Its new firmware speaks MQTT 5 (the old one 3.1.1).
    expect(d0.protocolVersion).toBe(4);
    const newBoot = await runFleet({ url: gw.url, devices: 1, rate: 50, count: 20, qos: 1, protocolVersion: 5, keepPayloads: true });
    expect(newBoot.devices[0]!.deviceId).toBe(d0.deviceId);
    expect(newBoot.refused).toBe(0);

    const records = await consumeAll(kafkaBrokers(), topic, { expected: 1020 });
    expect(records).toHaveLength(1020);
    expectExactlyOnce(verifyExactlyOnce(records, [fleet, newBoot]));
    expect(gw.status().duplicates).toBe(620);
  });

  it('counter dedup: a device sending live and backfill readings out of order keeps every one; replays of both are dropped after a restart, also of readings stored in exact mode', async () => {
    const topic = uniqueName('iot.window');
    const dir = tmp();
    const route = (mode: 'window' | 'exact') => ({
      overrides: { routes: [{ mqtt: 'devices/{deviceId}/telemetry/#', kafka: topic, dedup: { mode } }] },
    });
    const send = async (url: string, clientId: string, seqs: readonly number[], bootId = 'boot-a', protocolVersion: 4 | 5 = 4) => {
      const client = await mqtt.connectAsync(url, { clientId, clean: true, protocolVersion });
      for (const seq of seqs) {
        await client.publishAsync('devices/backfill-1/telemetry', JSON.stringify({ bootId, seq, v: seq * 2 }), { qos: protocolVersion === 5 ? 2 : 1 });
      }
      await client.endAsync();
    };
    // Readings 1..20 stored while the route was in exact mode (one index entry each).
    let gw = await startTestGateway({ dir, topic, ...route('exact') });
    await send(gw.url, 'd-exact', Array.from({ length: 20 }, (_, i) => i + 1));
    await gw.close();

    gw = await startTestGateway({ dir, topic, gatewayId: gw.config.gateway.id, ...route('window') });
    // Live readings 41..60 first, then the backfill 21..40 (every other one, then the rest).
    const live = Array.from({ length: 20 }, (_, i) => 41 + i);
    const backfill = Array.from({ length: 20 }, (_, i) => 21 + i);
    await send(gw.url, 'd-live', live);
    await send(gw.url, 'd-backfill', [...backfill.filter((s) => s % 2), ...backfill.filter((s) => s % 2 === 0)]);
    await gw.close();

    // After a restart: a replay of everything (exact-mode, live and backfill readings) is dropped;
    // a new boot is kept. The device's firmware now speaks MQTT 5 (QoS 2).
    gw = await startTestGateway({ dir, topic, gatewayId: gw.config.gateway.id, ...route('window') });
    cleanup(() => gw.close());
    await send(gw.url, 'd-replay', Array.from({ length: 60 }, (_, i) => i + 1), 'boot-a', 5);
    await send(gw.url, 'd-reboot', [1, 2, 3], 'boot-b', 5);
    expect(gw.status().duplicates).toBe(60);

    const records = await consumeAll(kafkaBrokers(), topic, { expected: 63 });
    const seen = records.map((r) => {
      const v = JSON.parse(r.value.toString('utf8')) as { bootId: string; seq: number };
      return `${v.bootId}/${v.seq}`;
    });
    expect(new Set(seen).size).toBe(63);
    expect(seen.sort()).toEqual(
      [...Array.from({ length: 60 }, (_, i) => `boot-a/${i + 1}`), 'boot-b/1', 'boot-b/2', 'boot-b/3'].sort(),
    );
  });

  it.each([4, 5] as const)('payloads without identity fields: only DUP retransmits of the same packet are dropped, QoS 1 and 2 (MQTT protocol level %i)', async (version) => {
    const topic = uniqueName('iot.raw');
    const gw = await startTestGateway({ dir: tmp(), topic });
    cleanup(() => gw.close());
    const { socket, packets, send } = await rawClient(gw.mqttAddress.port, version, `raw-plain-v${version}`);
    cleanup(() => void socket.destroy());
    const pub = (payload: string, messageId: number, dup: boolean) =>
      send({ cmd: 'publish', topic: 'devices/plain-1/telemetry', payload: Buffer.from(payload), qos: 1, messageId, dup, retain: false });
    pub('21.5', 1, false);
    pub('21.5', 1, true); // retransmit of packet 1: dropped
    pub('21.5', 2, false); // same reading value, a new packet: kept
    pub('22.0', 1, false); // packet id 1 reused for a new message: kept
    // QoS 2: the PUBREC of packet 3 is lost, the device sends it again before releasing it
    const pub2 = (payload: string, messageId: number, dup: boolean) =>
      send({ cmd: 'publish', topic: 'devices/plain-1/telemetry', payload: Buffer.from(payload), qos: 2, messageId, dup, retain: false });
    pub2('23.0', 3, false);
    pub2('23.0', 3, true); // retransmit of packet 3: dropped [MQTT-4.3.3-2]
    await until('2 PUBRECs', () => packets.filter((p) => p.cmd === 'pubrec').length >= 2);
    send({ cmd: 'pubrel', messageId: 3 });
    await until('PUBCOMP', () => packets.some((p) => p.cmd === 'pubcomp'));
    const records = await consumeAll(kafkaBrokers(), topic, { expected: 4 });
    expect(records.map((r) => r.value.toString())).toEqual(['21.5', '21.5', '22.0', '23.0']);
    expect(gw.status().duplicates).toBe(2);
    // each acknowledged, the retransmits too (MQTT 5: with reason code 0, "stored")
    const acks = packets.filter((p) => p.cmd !== 'connack').map((p) => [p.cmd, 'messageId' in p ? p.messageId : undefined, 'reasonCode' in p ? (p.reasonCode ?? 0) : 0]);
    expect(acks).toEqual([
      ['puback', 1, 0],
      ['puback', 1, 0],
      ['puback', 2, 0],
      ['puback', 1, 0],
      ['pubrec', 3, 0],
      ['pubrec', 3, 0],
      ['pubcomp', 3, 0],
    ]);
  });

  it('a sensor that sends seq but no bootId (its counter restarts at boot): equal seqs are distinct readings', async () => {
    const topic = uniqueName('iot.noboot');
    const gw = await startTestGateway({ dir: tmp(), topic });
    cleanup(() => gw.close());
    const client = await mqtt.connectAsync(gw.url, { clientId: 'noboot-1' });
    for (const t of [20.1, 20.2, 20.3]) await client.publishAsync('devices/noboot-1/telemetry', JSON.stringify({ seq: 1, t }), { qos: 1 });
    await client.endAsync();
    const records = await consumeAll(kafkaBrokers(), topic, { expected: 3 });
    expect(records.map((r) => r.value.toString())).toEqual(['{"seq":1,"t":20.1}', '{"seq":1,"t":20.2}', '{"seq":1,"t":20.3}']);
    expect(gw.status().duplicates).toBe(0);
  });
});
