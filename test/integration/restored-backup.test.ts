import { cpSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway.js';
import { FaultKafka } from '../helpers/fault-kafka.js';
import { testConfig, testLogger, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { publishAcked, reading, seqs } from '../helpers/publish.js';
import { useTmpDirs } from '../helpers/tmp.js';

describe('a restored backup of storage.dir (the log loses its tail)', () => {
  const tmp = useTmpDirs();
  let kafka: FaultKafka;
  beforeAll(async () => {
    kafka = await FaultKafka.allocate();
    await kafka.start();
  });
  afterAll(async () => {
    await kafka.destroy();
  });

  it('readings acknowledged after the restore are all forwarded, though their offsets were used before; nothing twice', async () => {
    const dir = tmp();
    const data = join(dir, 'data');
    const backup = join(dir, 'backup');
    const topic = uniqueName('iot.restore');
    const config = parseConfig({
      ...testConfig({ dir: data, topic, gatewayId: uniqueName('gw-restore'), brokers: kafka.brokers }),
      forward: { retry: { initialMs: 100, maxMs: 1000 } },
    });
    const start = () => Gateway.start(config, { logger: testLogger(), statusIntervalMs: 0 });
    const url = (gw: Gateway) => `mqtt://127.0.0.1:${gw.mqttAddress.port}`;

    let gw = await start();
    await publishAcked(url(gw), 'old', seqs(1, 20).map((s) => reading('old', 'b1', s)));
    await expect.poll(() => gw.status().forwarded, { timeout: 60_000, message: '20 readings forwarded' }).toBe(20);
    await gw.close();
    cpSync(data, backup, { recursive: true }); // the backup: 20 readings, all forwarded

    gw = await start();
    await publishAcked(url(gw), 'old', seqs(21, 50).map((s) => reading('old', 'b1', s)));
    await expect.poll(() => gw.status().forwarded, { timeout: 60_000, message: '30 more forwarded' }).toBe(30);
    await gw.close();

    // The SD card is replaced and the backup restored; the uplink is down when the gateway starts.
    rmSync(data, { recursive: true, force: true });
    cpSync(backup, data, { recursive: true });
    await kafka.stop();
    gw = await start();
    try {
      await publishAcked(url(gw), 'new', seqs(1, 40).map((s) => reading('new', 'b1', s)));
      expect(gw.status()).toMatchObject({ received: 40, lastOffset: 60 }); // offsets 21..60, 21..50 used before
      await kafka.start();
      await expect
        .poll(() => gw.status().forwardPosition, { timeout: 90_000, message: 'the backlog forwarded once Kafka is back' })
        .toBe(60);
      const records = await consumeAll(kafka.brokers, topic, { expected: 90 });
      const seen = (device: string) =>
        records.filter((r) => r.key === device).map((r) => (JSON.parse(r.value.toString()) as { seq: number }).seq);
      expect(seen('old')).toEqual(seqs(1, 50));
      expect(seen('new')).toEqual(seqs(1, 40));
      expect(records).toHaveLength(90);
    } finally {
      await gw.close();
    }
  });
});
