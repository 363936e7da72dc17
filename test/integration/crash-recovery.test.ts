import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { runFleet, type DeviceResult, type FleetStats } from '../../firmware-sim/fleet.js';
// @ts-expect-error plain ESM script
import { freePort } from '../../scripts/kafka.mjs';
import type { Worker } from 'node:worker_threads';
import { pino } from 'pino';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway.js';
import { kafkaBrokers, testConfig, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { useTmpDirs } from '../helpers/tmp.js';
import { expectExactlyOnce, verifyExactlyOnce } from '../helpers/verify.js';

describe('crash recovery: the gateway SIGKILLed again and again', () => {
  const tmp = useTmpDirs();

  it('(3) 10 kill -9 at random moments under load from MQTT 3.1.1 and MQTT 5 devices, QoS 1 and 2: every acknowledged reading reaches Kafka exactly once, in order', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.crash');
    const port = await freePort();
    const config = {
      ...testConfig({ dir: join(dir, 'data'), topic, gatewayId: uniqueName('gw-crash') }),
      mqtt: { host: '127.0.0.1', port },
      forward: { retry: { initialMs: 100, maxMs: 1000 } },
    };
    let gw: GatewayProcess = await spawnGateway(config, dir);
    const stop = new AbortController();
    // 20 devices in two fleets on the same listener, every other device of each speaking MQTT 5:
    // 14 publish with QoS 1 (PUBACK), 6 with QoS 2 (PUBREC, PUBREL, PUBCOMP: a kill can land
    // between any two of them). A QoS 2 reading takes two round trips: those devices publish at
    // half the rate, so that their backlog after the last kill drains as fast as the others'.
    const live: Readonly<FleetStats>[] = [];
    const v5Devices: DeviceResult[] = [];
    const fleetOf = (qos: 1 | 2, devices: number) =>
      runFleet({
        url: `mqtt://127.0.0.1:${port}`,
        devices,
        rate: qos === 2 ? 10 : 20,
        qos,
        protocolVersion: 'mixed',
        prefix: `crash-q${qos}`,
        keepPayloads: true,
        drainTimeoutMs: 60_000,
        signal: stop.signal,
        onStart: (devs, stats) => {
          live.push(stats);
          v5Devices.push(...devs.filter((d) => d.protocolVersion === 5));
        },
      });
    const fleets = Promise.all([fleetOf(1, 14), fleetOf(2, 6)]);
    const acked = () => live.reduce((n, s) => n + s.acked, 0);
    const ackedV5 = () => v5Devices.reduce((n, d) => n + d.ackedSeqs.length, 0);
    // Readings each incarnation acknowledged before it was killed: every kill hits a gateway
    // under load, at a random moment after it began acknowledging, MQTT 5 devices' readings too.
    const ackedPerIncarnation: number[] = [];
    const ackedV5PerIncarnation: number[] = [];
    for (let i = 0; i < 10; i++) {
      const ackedAtStart = acked();
      const ackedV5AtStart = ackedV5();
      await expect
        .poll(() => acked() - ackedAtStart, { timeout: 60_000, message: `incarnation ${i + 1} acknowledges readings` })
        .toBeGreaterThan(20);
      await sleep(Math.floor(Math.random() * 1200)); // the kill lands anywhere in the group-commit/forward cycle
      gw.child.kill('SIGKILL');
      await gw.exited;
      ackedPerIncarnation.push(acked() - ackedAtStart);
      ackedV5PerIncarnation.push(ackedV5() - ackedV5AtStart);
      gw = await spawnGateway(config, dir);
    }
    stop.abort();
    const results = await fleets;
    try {
      expect(ackedPerIncarnation.every((n) => n > 20), JSON.stringify(ackedPerIncarnation)).toBe(true);
      expect(ackedV5PerIncarnation.every((n) => n > 0), JSON.stringify(ackedV5PerIncarnation)).toBe(true);
      const published = results.reduce((n, r) => n + r.published, 0);
      const reconnects = results.reduce((n, r) => n + r.reconnects, 0);
      for (const r of results) expect(r.reconnects).toBeGreaterThanOrEqual(10);
      // devices retransmit until acknowledged: in the end everything published was acknowledged,
      // and nothing was refused (SIGKILL is no refusal: v5 devices must resend, not drop)
      for (const r of results) expect({ acked: r.acked, refused: r.refused }).toEqual({ acked: r.published, refused: 0 });
      const records = await consumeAll(kafkaBrokers(), topic, { expected: published, timeoutMs: 90_000 });
      const report = verifyExactlyOnce(records, results);
      expectExactlyOnce(report);
      expect(report.records).toBe(published);
      // MQTT 5 devices' readings are among them (the report covers every device of both fleets)
      expect(v5Devices).toHaveLength(10);
      expect(ackedV5()).toBeGreaterThan(0);
      console.info(`crash-recovery: ${ackedPerIncarnation.length} kills, ${published} published (${ackedV5()} by MQTT 5 devices), ${reconnects} reconnects, ${report.records} records in Kafka, 0 lost, 0 duplicated`);
    } finally {
      gw.child.kill('SIGTERM');
      await gw.exited;
    }
    // Ten restarts, each waited for with a deadline of its own: 81 s in a serial run at load
    // average 10-15, over the suite's 120 s per test in a two-worker run at load 30-40.
  }, 300_000);

  it('the forwarder thread dying is survived: a new one resumes from the checkpoint, exactly once', async () => {
    const topic = uniqueName('iot.workercrash');
    const lines: { msg: string }[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const gw = await Gateway.start(parseConfig(testConfig({ dir: tmp(), topic })), { logger, statusIntervalMs: 0 });
    try {
      const url = `mqtt://127.0.0.1:${gw.mqttAddress.port}`;
      const first = await runFleet({ url, devices: 5, rate: 50, count: 40, qos: 1, protocolVersion: 'mixed', keepPayloads: true, prefix: 'w1' });
      await expect.poll(() => gw.status().forwarded, { timeout: 30_000 }).toBe(200);
      // fault injection: the worker thread is terminated under the gateway's feet
      await (gw.forwarder as unknown as { worker: Worker }).worker.terminate();
      const second = await runFleet({ url, devices: 5, rate: 50, count: 40, qos: 2, protocolVersion: 5, keepPayloads: true, prefix: 'w2' });
      await expect.poll(() => gw.status().backlog, { timeout: 30_000 }).toBe(0);
      expect(lines.some((l) => l.msg.startsWith('forwarder thread exited unexpectedly'))).toBe(true);
      expect(gw.status().forwarderRestarts).toBe(1);
      await expect.poll(() => gw.status().forwarder).toBe('forwarding');
      const records = await consumeAll(kafkaBrokers(), topic, { expected: 400 });
      expectExactlyOnce(verifyExactlyOnce(records, [first, second]));
      expect(records).toHaveLength(400);
      // counts survive the thread that made them
      expect(gw.status().forwarded).toBe(400);
    } finally {
      await gw.close();
    }
  });
});
