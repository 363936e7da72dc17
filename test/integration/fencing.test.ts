import mqtt from 'mqtt';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway.js';
import { kafkaBrokers, testConfig, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { verifyExactlyOnce } from '../helpers/verify.js';
import { runFleet } from '../../firmware-sim/fleet.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

async function publishSeq(url: string, deviceId: string, from: number, to: number): Promise<void> {
  const client = await mqtt.connectAsync(url, { clientId: `pub-${deviceId}-${from}` });
  for (let seq = from; seq <= to; seq++) {
    await client.publishAsync(`devices/${deviceId}/telemetry`, JSON.stringify({ deviceId, bootId: 'b1', seq }), { qos: 1 });
  }
  await client.endAsync();
}

describe('fencing: two gateways started with one gateway.id', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  it('the older one is fenced, stops forwarding and says so; nothing is duplicated', async () => {
    const topic = uniqueName('iot.fence');
    const gatewayId = uniqueName('gw-twin');
    const logLines: { level: number; msg: string }[] = [];
    const capture = pino({ level: 'info' }, { write: (line: string) => logLines.push(JSON.parse(line)) });
    const start = (logger = pino({ level: 'silent' })) =>
      Gateway.start(parseConfig(testConfig({ dir: tmp(), topic, gatewayId })), { logger, statusIntervalMs: 0 });

    const older = await start(capture);
    cleanup(() => older.close());
    const olderUrl = `mqtt://127.0.0.1:${older.mqttAddress.port}`;
    await publishSeq(olderUrl, 'a', 1, 50);
    await expect.poll(() => older.status().forwarded, { timeout: 30_000 }).toBe(50);

    const newer = await start();
    cleanup(() => newer.close());
    await expect.poll(() => newer.status().forwarder, { timeout: 30_000 }).toBe('forwarding');
    await publishSeq(`mqtt://127.0.0.1:${newer.mqttAddress.port}`, 'b', 1, 50);
    await publishSeq(olderUrl, 'a', 51, 80); // still acknowledged and kept, but never forwarded

    await expect.poll(() => older.status().forwarder, { timeout: 30_000 }).toBe('fenced');
    await expect.poll(() => newer.status().forwarded, { timeout: 30_000 }).toBe(50);
    expect(older.status().forwarded).toBe(50);
    expect(older.status().backlog).toBe(30);
    const fencedLines = logLines.filter((l) => l.msg.startsWith('fenced:'));
    expect(fencedLines).toHaveLength(1);
    expect(fencedLines[0]!.level).toBe(50); // error
    expect(fencedLines[0]!.msg).toContain('gateway.id');
    const health = await fetch(`http://127.0.0.1:${older.adminAddress!.port}/healthz`);
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({ status: 'fenced', gatewayId });

    const records = await consumeAll(kafkaBrokers(), topic, { expected: 100 });
    const seqs = (device: string) =>
      records.filter((r) => r.key === device).map((r) => (JSON.parse(r.value.toString()) as { seq: number }).seq);
    expect(seqs('a')).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    expect(seqs('b')).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    expect(records).toHaveLength(100);
  });

  it('the newer one takes over while the older one is busy forwarding a fleet: exactly one goes on, nothing twice', async () => {
    const topic = uniqueName('iot.fence-busy');
    const gatewayId = uniqueName('gw-twin-busy');
    const start = () =>
      Gateway.start(parseConfig({ ...testConfig({ dir: tmp(), topic, gatewayId }), forward: { retry: { initialMs: 100, maxMs: 2000 } } }), {
        logger: pino({ level: 'silent' }),
        statusIntervalMs: 0,
      });
    const older = await start();
    cleanup(() => older.close());
    const stop = new AbortController();
    const fleet = runFleet({ url: `mqtt://127.0.0.1:${older.mqttAddress.port}`, devices: 10, rate: 50, qos: 1, keepPayloads: true, signal: stop.signal });
    await expect.poll(() => older.status().forwarded, { timeout: 30_000, message: 'the older gateway forwards the fleet' }).toBeGreaterThan(200);
    const newer = await start();
    cleanup(() => newer.close());
    try {
      await expect.poll(() => older.status().forwarder, { timeout: 60_000, message: 'the older gateway sees the newer one and stops' }).toBe('fenced');
      await expect.poll(() => newer.status().forwarder, { timeout: 60_000, message: 'the newer gateway forwards' }).toBe('forwarding');
    } finally {
      stop.abort();
    }
    const result = await fleet;
    await publishSeq(`mqtt://127.0.0.1:${newer.mqttAddress.port}`, 'b', 1, 50);
    await expect.poll(() => newer.status().forwarded, { timeout: 30_000, message: "the newer gateway's own readings" }).toBe(50);
    const forwardedByOlder = older.status().forwarded;
    const records = await consumeAll(kafkaBrokers(), topic, { expected: forwardedByOlder + 50 });
    const fromFleet = records.filter((r) => r.key !== 'b');
    const report = verifyExactlyOnce(fromFleet, result);
    // the older gateway's backlog stays in its log: acknowledged, not forwarded, not lost
    expect(report).toMatchObject({ duplicates: 0, outOfOrder: 0, neverPublished: 0 });
    expect(fromFleet).toHaveLength(forwardedByOlder);
    expect(report.ackedMissing).toBe(older.status().backlog);
    expect(records.filter((r) => r.key === 'b')).toHaveLength(50);
  });
});
