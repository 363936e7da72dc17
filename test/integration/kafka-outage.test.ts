import { statSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runFleet } from '../../firmware-sim/fleet.js';
import { startTestGateway, uniqueName } from '../helpers/gateway.js';
import { FaultKafka } from '../helpers/fault-kafka.js';
import { consumeAll } from '../helpers/kafka.js';
import { useTmpDirs } from '../helpers/tmp.js';
import { DB_FILE } from '../../src/log/commit-log.js';
import { expectExactlyOnce, verifyExactlyOnce } from '../helpers/verify.js';

const fastRetry = { forward: { retry: { initialMs: 100, maxMs: 1000 } } };

describe('kafka outages: the log buffers, the backlog drains exactly once', () => {
  const tmp = useTmpDirs();
  let kafka: FaultKafka;
  beforeAll(async () => {
    kafka = await FaultKafka.allocate();
  });
  afterAll(async () => {
    await kafka.destroy();
  });

  it('(1) Kafka down when the gateway starts, started later while the fleet publishes', async () => {
    const topic = uniqueName('iot.late');
    const gw = await startTestGateway({ dir: tmp(), topic, brokers: kafka.brokers, overrides: fastRetry });
    try {
      const fleet = runFleet({ url: gw.url, devices: 20, rate: 20, durationSec: 8, qos: 1, keepPayloads: true });
      // acknowledging all along, with nothing forwarded
      await expect.poll(() => gw.status().backlog, { timeout: 30_000, message: 'a backlog builds up while Kafka is down' }).toBeGreaterThan(500);
      await expect.poll(() => gw.status().forwarder, { timeout: 30_000, message: 'the forwarder says Kafka is unreachable' }).toBe('retrying');
      expect(gw.status().forwarded).toBe(0);
      await kafka.start();
      const result = await fleet;
      expect(result.acked).toBe(result.published);
      const records = await consumeAll(kafka.brokers, topic, { expected: result.acked });
      expectExactlyOnce(verifyExactlyOnce(records, result));
      await expect.poll(() => gw.status().backlog, { timeout: 30_000 }).toBe(0);
    } finally {
      await gw.close();
    }
  });

  it('(2) Kafka killed (SIGKILL) mid-stream and restarted', async () => {
    // Up since (1) unless (1) failed before starting it; a restart would only cost time.
    if (!kafka.started) await kafka.start();
    const topic = uniqueName('iot.crashkafka');
    const gw = await startTestGateway({ dir: tmp(), topic, brokers: kafka.brokers, overrides: fastRetry });
    try {
      const stop = new AbortController();
      const fleet = runFleet({ url: gw.url, devices: 20, rate: 20, qos: 1, keepPayloads: true, signal: stop.signal, drainTimeoutMs: 60_000 });
      await expect.poll(() => gw.status().forwarded, { timeout: 60_000, message: 'the gateway forwards before the kill' }).toBeGreaterThan(0);
      await kafka.kill();
      await expect.poll(() => gw.status().forwarder, { timeout: 60_000, message: 'the forwarder notices Kafka is gone' }).toBe('retrying');
      await expect.poll(() => gw.status().backlog, { timeout: 30_000, message: 'a backlog builds up while Kafka is down' }).toBeGreaterThan(200);
      await kafka.start();
      await expect.poll(() => gw.status().forwarder, { timeout: 90_000, message: 'forwarding resumes once Kafka is back' }).toBe('forwarding');
      stop.abort();
      const result = await fleet;
      expect(result.acked).toBe(result.published);
      const records = await consumeAll(kafka.brokers, topic, { expected: result.acked, timeoutMs: 90_000 });
      expectExactlyOnce(verifyExactlyOnce(records, result));
      await expect.poll(() => gw.status().backlog, { timeout: 30_000 }).toBe(0);
    } finally {
      await gw.close();
    }
  });

  it('storage.maxBytes reached: PUBACKs are held (backpressure), then released as the backlog drains; the file shrinks back', async () => {
    await kafka.stop();
    const topic = uniqueName('iot.full');
    const dir = tmp();
    const gw = await startTestGateway({
      dir,
      topic,
      brokers: kafka.brokers,
      overrides: { ...fastRetry, storage: { dir, maxBytes: '3MiB' } } as never,
    });
    const fileBytes = () =>
      [DB_FILE, `${DB_FILE}-wal`].map((f) => join(dir, f)).filter(existsSync).reduce((n, f) => n + statSync(f).size, 0);
    const baseline = fileBytes();
    try {
      const fleet = runFleet({ url: gw.url, devices: 10, rate: 50, durationSec: 8, qos: 1, payloadBytes: 1000, keepPayloads: true, drainTimeoutMs: 60_000 });
      await expect.poll(() => gw.status().holding, { timeout: 15_000 }).toBe(true);
      const heldAt = gw.status();
      expect(heldAt.storageBytes).toBeLessThanOrEqual(3 * 1024 * 1024);
      // devices keep publishing: their publishes wait, and none of them is stored (or acknowledged)
      await expect.poll(() => gw.status().waiting, { timeout: 15_000, message: 'publishes wait for space' }).toBeGreaterThan(5);
      expect(gw.status()).toMatchObject({ holding: true, received: heldAt.received });
      expect(fileBytes()).toBeGreaterThan(baseline + 2 * 1024 * 1024);
      await kafka.start();
      const result = await fleet;
      expect(result.acked).toBe(result.published);
      const records = await consumeAll(kafka.brokers, topic, { expected: result.acked, timeoutMs: 90_000 });
      expectExactlyOnce(verifyExactlyOnce(records, result));
      expect(gw.status().droppedOverflow).toBe(0);
      // drained: forwarded records removed, pages given back, WAL truncated
      await expect.poll(() => gw.status().backlog, { timeout: 30_000 }).toBe(0);
      await expect.poll(() => fileBytes(), { timeout: 15_000 }).toBeLessThan(baseline + 512 * 1024);
    } finally {
      await gw.close();
    }
  });
});
