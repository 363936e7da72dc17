import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { runFleet, type FleetStats } from '../../firmware-sim/fleet.js';
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

  it('(3) 10 kill -9 at random moments under QoS 1 load: every PUBACKed reading reaches Kafka exactly once, in order', async () => {
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
    let live: Readonly<FleetStats> | undefined;
    const fleet = runFleet({
      url: `mqtt://127.0.0.1:${port}`,
      devices: 20,
      rate: 20,
      qos: 1,
      keepPayloads: true,
      drainTimeoutMs: 60_000,
      signal: stop.signal,
      onStart: (_devices, stats) => (live = stats),
    });
    // Readings each incarnation acknowledged before it was killed: every kill hits a gateway
    // under load, at a random moment after it began acknowledging.
    const ackedPerIncarnation: number[] = [];
    for (let i = 0; i < 10; i++) {
      const ackedAtStart = live?.acked ?? 0;
      await expect
        .poll(() => (live?.acked ?? 0) - ackedAtStart, { timeout: 60_000, message: `incarnation ${i + 1} acknowledges readings` })
        .toBeGreaterThan(20);
      await sleep(Math.floor(Math.random() * 1200)); // the kill lands anywhere in the group-commit/forward cycle
      gw.child.kill('SIGKILL');
      await gw.exited;
      ackedPerIncarnation.push(live!.acked - ackedAtStart);
      gw = await spawnGateway(config, dir);
    }
    stop.abort();
    const result = await fleet;
    try {
      expect(ackedPerIncarnation.every((n) => n > 20), JSON.stringify(ackedPerIncarnation)).toBe(true);
      expect(result.reconnects).toBeGreaterThanOrEqual(10);
      // devices retransmit until acknowledged: in the end everything published was acknowledged
      expect(result.acked).toBe(result.published);
      const records = await consumeAll(kafkaBrokers(), topic, { expected: result.acked, timeoutMs: 90_000 });
      const report = verifyExactlyOnce(records, result);
      expectExactlyOnce(report);
      expect(report.records).toBe(result.published);
      console.info(`crash-recovery: ${ackedPerIncarnation.length} kills, ${result.published} published, ${result.reconnects} reconnects, ${report.records} records in Kafka, 0 lost, 0 duplicated`);
    } finally {
      gw.child.kill('SIGTERM');
      await gw.exited;
    }
  });

  it('the forwarder thread dying is survived: a new one resumes from the checkpoint, exactly once', async () => {
    const topic = uniqueName('iot.workercrash');
    const lines: { msg: string }[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const gw = await Gateway.start(parseConfig(testConfig({ dir: tmp(), topic })), { logger, statusIntervalMs: 0 });
    try {
      const url = `mqtt://127.0.0.1:${gw.mqttAddress.port}`;
      const first = await runFleet({ url, devices: 5, rate: 50, count: 40, qos: 1, keepPayloads: true, prefix: 'w1' });
      await expect.poll(() => gw.status().forwarded, { timeout: 30_000 }).toBe(200);
      // fault injection: the worker thread is terminated under the gateway's feet
      await (gw.forwarder as unknown as { worker: Worker }).worker.terminate();
      const second = await runFleet({ url, devices: 5, rate: 50, count: 40, qos: 1, keepPayloads: true, prefix: 'w2' });
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
