import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Aedes } from 'aedes';
import { afterEach, describe, expect, it } from 'vitest';
import { runFleet } from '../../firmware-sim/fleet.js';

/**
 * The simulated firmware itself, against plain aedes (no gateway): MQTT 5 devices tell a reading
 * the broker refused (PUBACK/PUBREC reason code >= 0x80) from one it stored, and never count a
 * refused one as delivered.
 */
describe('firmware-sim: MQTT 3.1.1, MQTT 5 and mixed fleets', () => {
  let stop: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await stop?.();
    stop = undefined;
  });

  /** A broker that refuses every MQTT 5 reading whose seq is a multiple of 5, with `reasonCode`. */
  async function refusingBroker(reasonCode: number): Promise<{ url: string; versions: Map<string, number> }> {
    const versions = new Map<string, number>();
    const broker = await Aedes.createBroker({
      authorizePublish: (client, packet, callback) => {
        if (client) versions.set(client.id, (client as unknown as { version: number }).version);
        const { seq } = JSON.parse(packet.payload.toString()) as { seq: number };
        if (client && (client as unknown as { version: number }).version === 5 && seq % 5 === 0) {
          callback(Object.assign(new Error(`seq ${seq} refused`), { reasonCode }));
          return;
        }
        callback(null);
      },
    });
    const server: Server = createServer(broker.handle);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    stop = () => new Promise<void>((resolve) => broker.close(() => server.close(() => resolve())));
    return { url: `mqtt://127.0.0.1:${(server.address() as { port: number }).port}`, versions };
  }

  it.each([1, 2] as const)('QoS %i: refusals are counted by reason code and listed per device; 3.1.1 devices on the same listener are unaffected', async (qos) => {
    const { url, versions } = await refusingBroker(0x97);
    const fleet = await runFleet({ url, devices: 4, rate: 200, count: 20, qos, protocolVersion: 'mixed', prefix: `mix${qos}` });
    // even device indexes speak 3.1.1, odd ones MQTT 5, as they said in CONNECT
    expect(fleet.devices.map((d) => d.protocolVersion)).toEqual([4, 5, 4, 5]);
    expect(Object.fromEntries(versions)).toEqual({ [`sim-mix${qos}-0001`]: 4, [`sim-mix${qos}-0002`]: 5, [`sim-mix${qos}-0003`]: 4, [`sim-mix${qos}-0004`]: 5 });
    expect(fleet.published).toBe(80);
    expect(fleet.refused).toBe(8); // seq 5, 10, 15, 20 of each MQTT 5 device
    expect(fleet.acked).toBe(72);
    expect(fleet.refusedByReason).toEqual({ [0x97]: 8 });
    for (const d of fleet.devices) {
      const refused = d.protocolVersion === 5 ? [5, 10, 15, 20] : [];
      expect([...d.refusedSeqs.keys()], d.deviceId).toEqual(refused);
      expect([...d.refusedSeqs.values()].every((code) => code === 0x97)).toBe(true);
      // a refused reading is not resent: the others are acknowledged in order, once each
      expect(d.ackedSeqs, d.deviceId).toEqual(Array.from({ length: 20 }, (_, i) => i + 1).filter((s) => !refused.includes(s)));
    }
  });

  it('the CLI (built) says which readings were refused: by reason code, and each by device and seq', async () => {
    const { url } = await refusingBroker(0x97);
    const cli = join(import.meta.dirname, '..', '..', 'dist', 'firmware-sim', 'cli.js');
    const { stdout } = await promisify(execFile)(process.execPath, [cli, '--mqtt-version', 'mixed', '-d', '2', '-n', '10', '-r', '100', '--quiet', '-u', url]);
    expect(JSON.parse(stdout)).toMatchObject({
      published: 20,
      acked: 18,
      refused: 2,
      refusedByReason: { [0x97]: 2 },
      refusedReadings: [
        { deviceId: 'dev-0002', seq: 5, reasonCode: 0x97 },
        { deviceId: 'dev-0002', seq: 10, reasonCode: 0x97 },
      ],
    });
  });

  it('an MQTT 5 fleet asks for a session that outlives the connection (clean=false with a Session Expiry Interval)', async () => {
    const connects: { version: number | undefined; clean: boolean | undefined; expiry: number | undefined }[] = [];
    const broker = await Aedes.createBroker({
      preConnect: (_client, packet, callback) => {
        connects.push({ version: packet.protocolVersion, clean: packet.clean, expiry: (packet as { properties?: { sessionExpiryInterval?: number } }).properties?.sessionExpiryInterval });
        callback(null, true);
      },
    });
    const server = createServer(broker.handle);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    stop = () => new Promise<void>((resolve) => broker.close(() => server.close(() => resolve())));
    const url = `mqtt://127.0.0.1:${(server.address() as { port: number }).port}`;
    const fleet = await runFleet({ url, devices: 2, rate: 100, count: 3, qos: 1, protocolVersion: 5, sessionExpirySec: 600 });
    expect(fleet.acked).toBe(6);
    expect(fleet.refused).toBe(0);
    expect(connects).toEqual([
      { version: 5, clean: false, expiry: 600 },
      { version: 5, clean: false, expiry: 600 },
    ]);
  });
});
