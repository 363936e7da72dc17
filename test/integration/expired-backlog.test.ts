import { describe, expect, it } from 'vitest';
// @ts-expect-error plain ESM script
import { freePort } from '../../scripts/kafka.mjs';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway.js';
import { kafkaBrokers, testConfig, testLogger, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { publishAcked, reading, seqs } from '../helpers/publish.js';
import { useTmpDirs } from '../helpers/tmp.js';

describe('the whole backlog expired (storage.maxAge) before Kafka came back', () => {
  const tmp = useTmpDirs();

  it('the forwarder moves past the expired offsets and goes on with new readings (no spin, no stall)', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.expired');
    const gatewayId = uniqueName('gw-expired');
    const start = (brokers: string[]) =>
      Gateway.start(parseConfig({ ...testConfig({ dir, topic, gatewayId, brokers }), storage: { dir, maxAge: '1s' } }), {
        logger: testLogger(),
        statusIntervalMs: 0,
      });
    let gw = await start([`127.0.0.1:${await freePort()}`]);
    await publishAcked(`mqtt://127.0.0.1:${gw.mqttAddress.port}`, 'd1', seqs(1, 20).map((s) => reading('d1', 'b1', s)));
    await expect.poll(() => gw.status().droppedExpired, { timeout: 60_000, message: 'the 20 readings expire' }).toBe(20);
    await gw.close();

    gw = await start(kafkaBrokers());
    try {
      await expect
        .poll(() => gw.status().forwardPosition, { timeout: 60_000, message: 'the forwarder moves over the expired offsets' })
        .toBe(20);
      await publishAcked(`mqtt://127.0.0.1:${gw.mqttAddress.port}`, 'd1', seqs(21, 25).map((s) => reading('d1', 'b1', s)));
      await expect.poll(() => gw.status().forwarded, { timeout: 60_000, message: 'the new readings forwarded' }).toBe(5);
      const records = await consumeAll(kafkaBrokers(), topic, { expected: 5 });
      expect(records.map((r) => (JSON.parse(r.value.toString()) as { seq: number }).seq)).toEqual(seqs(21, 25));
      expect(gw.status().forwarder).toBe('forwarding');
    } finally {
      await gw.close();
    }
  });
});
