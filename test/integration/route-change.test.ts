import { describe, expect, it } from 'vitest';
// @ts-expect-error plain ESM script
import { freePort } from '../../scripts/kafka.mjs';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway.js';
import { kafkaBrokers, testConfig, testLogger, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { publishAcked, reading, seqs } from '../helpers/publish.js';
import { useTmpDirs } from '../helpers/tmp.js';

describe("a route's Kafka topic changed while records for the old one wait in the log", () => {
  const tmp = useTmpDirs();

  it('the backlog still goes to the topic it was stored for, and new readings to the new one', async () => {
    const dir = tmp();
    const oldTopic = uniqueName('iot.before');
    const newTopic = uniqueName('iot.after');
    const gatewayId = uniqueName('gw-rename');
    const start = (topic: string, brokers: string[]) =>
      Gateway.start(
        parseConfig({ ...testConfig({ dir, topic, gatewayId, brokers }), forward: { retry: { initialMs: 100, maxMs: 1000 } } }),
        { logger: testLogger(), statusIntervalMs: 0 },
      );
    // Kafka unreachable: 50 readings buffered for the old topic
    let gw = await start(oldTopic, [`127.0.0.1:${await freePort()}`]);
    await publishAcked(`mqtt://127.0.0.1:${gw.mqttAddress.port}`, 'd1', seqs(1, 50).map((s) => reading('d1', 'b1', s)));
    await gw.close();
    // the route is renamed, Kafka is back
    gw = await start(newTopic, kafkaBrokers());
    try {
      await publishAcked(`mqtt://127.0.0.1:${gw.mqttAddress.port}`, 'd1', seqs(51, 100).map((s) => reading('d1', 'b1', s)));
      await expect.poll(() => gw.status().forwardPosition, { timeout: 60_000, message: 'both topics forwarded' }).toBe(100);
      const seqOf = (v: Buffer) => (JSON.parse(v.toString()) as { seq: number }).seq;
      expect((await consumeAll(kafkaBrokers(), oldTopic, { expected: 50 })).map((r) => seqOf(r.value))).toEqual(seqs(1, 50));
      expect((await consumeAll(kafkaBrokers(), newTopic, { expected: 50 })).map((r) => seqOf(r.value))).toEqual(seqs(51, 100));
    } finally {
      await gw.close();
    }
  });
});
