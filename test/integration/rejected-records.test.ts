import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { Gateway } from '../../src/gateway.js';
import { kafkaBrokers, testConfig, uniqueName } from '../helpers/gateway.js';
import { consumeAll, testKafka } from '../helpers/kafka.js';
import { publishAcked, reading, seqs } from '../helpers/publish.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';
import { pino } from 'pino';

/** A topic whose brokers refuse records over 2000 bytes (max.message.bytes), as a site's Kafka may have. */
async function smallTopic(): Promise<string> {
  const topic = uniqueName('iot.small');
  const admin = testKafka(kafkaBrokers()).admin();
  await admin.connect();
  try {
    await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: 3, configEntries: [{ name: 'max.message.bytes', value: '2000' }] }] });
  } finally {
    await admin.disconnect();
  }
  return topic;
}

const big = (s: number) => reading('dev-x', 'b1', s, { pad: 'x'.repeat(5000) });
const small = (s: number) => reading('dev-x', 'b1', s);
const seqOf = (v: Buffer) => (JSON.parse(v.toString()) as { seq: number }).seq;

describe('a record Kafka refuses for good', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  it('goes to the dead-letter topic with the reason; the device\'s other readings go on, in order', async () => {
    const topic = await smallTopic();
    const deadLetter = uniqueName('edgebridge.dead-letter');
    const lines: { msg: string; code?: string; reason?: string }[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const gw = await Gateway.start(parseConfig({ ...testConfig({ dir: tmp(), topic }), forward: { deadLetterTopic: deadLetter } }), { logger, statusIntervalMs: 0 });
    cleanup(() => gw.close());
    const payloads = seqs(1, 10).map((s) => (s === 5 ? big(s) : small(s)));
    await publishAcked(`mqtt://127.0.0.1:${gw.mqttAddress.port}`, 'dev-x', payloads);
    await expect.poll(() => gw.status().forwardPosition, { timeout: 60_000, message: 'all 10 handled' }).toBe(10);
    expect(gw.status()).toMatchObject({ forwarded: 9, deadLettered: 1, droppedRejected: 0, forwarder: 'forwarding' });
    const records = await consumeAll(kafkaBrokers(), topic, { expected: 9 });
    expect(records.map((r) => seqOf(r.value))).toEqual([1, 2, 3, 4, 6, 7, 8, 9, 10]);
    const [letter, ...more] = await consumeAll(kafkaBrokers(), deadLetter, { expected: 1 });
    expect(more).toEqual([]);
    expect(letter!.key).toBe('dev-x');
    expect(letter!.value.length).toBe(0); // too large for Kafka anywhere: described, not carried
    expect(letter!.headers).toMatchObject({
      'edgebridge-error': 'MESSAGE_TOO_LARGE',
      'edgebridge-original-topic': topic,
      'edgebridge-log-offset': '5',
      'edgebridge-payload-bytes': String(Buffer.byteLength(payloads[4]!)),
      'edgebridge-payload-sha256': createHash('sha256').update(payloads[4]!).digest('hex'),
      'mqtt-topic': 'devices/dev-x/telemetry',
    });
    expect(lines.filter((l) => l.code === 'EB_ERR_FORWARD_REJECTED')).toEqual([expect.objectContaining({ reason: 'MESSAGE_TOO_LARGE' })]);
  });

  it('without a dead-letter topic it is dropped and counted, never retried forever', async () => {
    const topic = await smallTopic();
    const gw = await Gateway.start(parseConfig({ ...testConfig({ dir: tmp(), topic }), forward: { deadLetterTopic: false } }), {
      logger: pino({ level: 'silent' }),
      statusIntervalMs: 0,
    });
    cleanup(() => gw.close());
    await publishAcked(`mqtt://127.0.0.1:${gw.mqttAddress.port}`, 'dev-x', [small(1), big(2), small(3)]);
    await expect.poll(() => gw.status().forwardPosition, { timeout: 60_000, message: 'all 3 handled' }).toBe(3);
    expect(gw.status()).toMatchObject({ forwarded: 2, deadLettered: 0, droppedRejected: 1 });
    expect((await consumeAll(kafkaBrokers(), topic, { expected: 2 })).map((r) => seqOf(r.value))).toEqual([1, 3]);
  });
});
