import { describe, expect, it } from 'vitest';
import { runFleet, type Reading } from '../../firmware-sim/fleet.js';
import { kafkaBrokers, startTestGateway, uniqueName } from '../helpers/gateway.js';
import { consumeAll, partitionCount } from '../helpers/kafka.js';
import { javaPartition } from '../helpers/murmur2.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

describe('pipeline: MQTT -> commit log -> Kafka', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  it('delivers a 50-device x 200-message QoS 1 fleet: 10,000 records, per-device order, murmur2 partitions, bytes unchanged', async () => {
    const topic = uniqueName('iot.telemetry');
    const gateway = await startTestGateway({ dir: tmp(), topic, gatewayId: 'gw-pipeline' });
    cleanup(() => gateway.close());
    const started = Date.now();

    const fleet = await runFleet({ url: gateway.url, devices: 50, rate: 100, count: 200, qos: 1, keepPayloads: true });
    expect(fleet.published).toBe(10_000);
    expect(fleet.acked).toBe(10_000);

    const records = await consumeAll(kafkaBrokers(), topic, { expected: 10_000 });
    expect(records).toHaveLength(10_000);

    const partitions = await partitionCount(kafkaBrokers(), topic);
    expect(partitions).toBe(3);
    const byDevice = new Map(fleet.devices.map((d) => [d.deviceId, d]));
    const seqsSeen = new Map<string, number[]>();
    for (const r of records) {
      const device = byDevice.get(r.key);
      expect(device, `record keyed ${r.key} was never published`).toBeDefined();
      const reading = JSON.parse(r.value.toString('utf8')) as Reading;
      expect(reading.deviceId).toBe(r.key);
      // the partition the Java client would choose for this key
      expect(r.partition).toBe(javaPartition(r.key, partitions));
      // payload bytes unchanged
      expect(r.value.equals(Buffer.from(device!.payloads.get(reading.seq)!, 'utf8'))).toBe(true);
      expect(r.headers['mqtt-topic']).toBe(`devices/${r.key}/telemetry`);
      expect(r.headers['gateway-id']).toBe('gw-pipeline');
      const ts = Number(r.timestamp);
      expect(ts).toBeGreaterThanOrEqual(started);
      expect(ts).toBeLessThanOrEqual(Date.now());
      if (!seqsSeen.has(r.key)) seqsSeen.set(r.key, []);
      seqsSeen.get(r.key)!.push(reading.seq);
    }
    // Each device's records, in partition-offset order, are seq 1..200 exactly once.
    const expectedSeqs = Array.from({ length: 200 }, (_, i) => i + 1);
    expect(seqsSeen.size).toBe(50);
    for (const [deviceId, seqs] of seqsSeen) expect(seqs, deviceId).toEqual(expectedSeqs);

    await expect.poll(() => gateway.status().backlog).toBe(0);
    // the forwarder thread reports its counters a few times a second
    await expect.poll(() => gateway.status().forwarded).toBe(10_000);
    expect(gateway.status()).toMatchObject({ received: 10_000, forwarded: 10_000, forwarder: 'forwarding' });

    // the admin endpoint tells the same story
    const admin = `http://127.0.0.1:${gateway.adminAddress!.port}`;
    const health = await fetch(`${admin}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: 'ok', forwarder: 'forwarding', backlog: 0 });
    expect(await (await fetch(`${admin}/status`)).json()).toMatchObject({ gatewayId: 'gw-pipeline', received: 10_000 });
    const metrics = await (await fetch(`${admin}/metrics`)).text();
    expect(metrics).toMatch(/^edgebridge_forwarded_total 10000$/m);
    expect(metrics).toMatch(/^edgebridge_received_total 10000$/m);
    expect(metrics).toMatch(/^edgebridge_backlog_records 0$/m);
    expect(metrics).toMatch(/^edgebridge_forwarder_state\{state="forwarding"\} 1$/m);
    expect(metrics).toContain('process_cpu_seconds_total');
  });
});
