import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { runFleet, type Reading } from '../../firmware-sim/fleet.js';
import { kafkaBrokers, startTestGateway, uniqueName } from '../helpers/gateway.js';
import { consumeAll, partitionCount } from '../helpers/kafka.js';
import { mosquittoTool } from '../helpers/mosquitto.js';
import { javaPartition } from '../helpers/murmur2.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

/** Runs Debian's mosquitto_pub to its end without blocking the event loop (the gateway runs in this process). */
async function mosquittoPub(args: string[], timeoutMs = 20_000): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = spawn(mosquittoTool('mosquitto_pub'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [status] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { status, stdout, stderr };
}

describe('pipeline: MQTT -> commit log -> Kafka', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  it('delivers a 50-device x 200-message fleet, MQTT 3.1.1 and 5 devices on one listener, QoS 1 and 2: 10,000 records, per-device order, murmur2 partitions, bytes unchanged', async () => {
    const topic = uniqueName('iot.telemetry');
    const gateway = await startTestGateway({ dir: tmp(), topic, gatewayId: 'gw-pipeline' });
    cleanup(() => gateway.close());
    const started = Date.now();

    // Every other device speaks MQTT 5; 40 devices publish with QoS 1, 10 with QoS 2.
    const fleets = await Promise.all([
      runFleet({ url: gateway.url, devices: 40, rate: 100, count: 200, qos: 1, protocolVersion: 'mixed', prefix: 'q1', keepPayloads: true }),
      runFleet({ url: gateway.url, devices: 10, rate: 100, count: 200, qos: 2, protocolVersion: 'mixed', prefix: 'q2', keepPayloads: true }),
    ]);
    const devices = fleets.flatMap((f) => f.devices);
    expect(devices.filter((d) => d.protocolVersion === 5)).toHaveLength(25);
    expect(fleets.reduce((n, f) => n + f.published, 0)).toBe(10_000);
    expect(fleets.reduce((n, f) => n + f.acked, 0)).toBe(10_000);
    expect(fleets.map((f) => f.refused)).toEqual([0, 0]);

    const records = await consumeAll(kafkaBrokers(), topic, { expected: 10_000 });
    expect(records).toHaveLength(10_000);

    const partitions = await partitionCount(kafkaBrokers(), topic);
    expect(partitions).toBe(3);
    const byDevice = new Map(devices.map((d) => [d.deviceId, d]));
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

  it("Debian's mosquitto_pub -V mqttv5: QoS 1 with user properties and a message expiry is acknowledged with reason code 0 and reaches Kafka once, bytes unchanged, user properties as headers in order; a replay of it is not forwarded", async () => {
    const topic = uniqueName('iot.mosquitto5');
    const gateway = await startTestGateway({ dir: tmp(), topic, gatewayId: 'gw-mosquitto5' });
    cleanup(() => gateway.close());
    const body = JSON.stringify({ deviceId: 'mosq5-1', bootId: 'b-1', seq: 1, temperature: 21.5 });
    const publish = () =>
      mosquittoPub([
        '-V', 'mqttv5', '-d',
        '-h', '127.0.0.1', '-p', String(gateway.mqttAddress.port),
        '-i', 'mosq5-1', '-q', '1',
        '-t', 'devices/mosq5-1/telemetry', '-m', body,
        '-D', 'publish', 'user-property', 'site', 'north',
        '-D', 'publish', 'user-property', 'unit', 'celsius',
        '-D', 'publish', 'user-property', 'site', 'south',
        '-D', 'publish', 'message-expiry-interval', '3600',
      ]);
    const first = await publish();
    expect(first.status, first.stdout + first.stderr).toBe(0);
    // -d prints the packets: an MQTT 5 CONNACK, and a PUBACK whose reason code says "stored"
    expect(first.stdout).toMatch(/received CONNACK \(0\)/);
    expect(first.stdout).toMatch(/sending PUBLISH \(d0, q1, r0, m\d+, 'devices\/mosq5-1\/telemetry', \.\.\. \(\d+ bytes\)\)/);
    expect(first.stdout).toMatch(/received PUBACK \(Mid: \d+, RC:0\)/);
    // The same reading again (firmware replaying it after a reboot): acknowledged, not stored twice.
    const replay = await publish();
    expect(replay.status, replay.stdout + replay.stderr).toBe(0);
    expect(replay.stdout).toMatch(/received PUBACK \(Mid: \d+, RC:0\)/);

    const records = await consumeAll(kafkaBrokers(), topic, { expected: 1 });
    expect(records).toHaveLength(1);
    expect(records[0]!.key).toBe('mosq5-1');
    expect(records[0]!.value.toString('utf8')).toBe(body);
    // the gateway's headers, then the user properties in the order sent, the repeated name twice;
    // an expiry that did not pass before forwarding leaves no trace on the record
    expect(records[0]!.headerList.map(([k, v]) => [k, v.toString('utf8')])).toEqual([
      ['mqtt-topic', 'devices/mosq5-1/telemetry'],
      ['gateway-id', 'gw-mosquitto5'],
      ['site', 'north'],
      ['unit', 'celsius'],
      ['site', 'south'],
    ]);
    expect(gateway.status()).toMatchObject({ received: 1, duplicates: 1 });
  });
});
