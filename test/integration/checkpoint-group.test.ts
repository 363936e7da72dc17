import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { checkpointGroupOf } from '../../src/forward/kafka-sink.js';
import { Gateway } from '../../src/gateway.js';
import { LogReader } from '../../src/log/log-reader.js';
import { kafkaBrokers, testConfig, uniqueName } from '../helpers/gateway.js';
import { consumeAll, testKafka } from '../helpers/kafka.js';
import { publishAcked, reading, seqs } from '../helpers/publish.js';
import { useTmpDirs } from '../helpers/tmp.js';
import { pino } from 'pino';
import { Forwarder, type StepOutcome } from '../../src/forward/forwarder.js';
import { KafkaSink } from '../../src/forward/kafka-sink.js';
import type { Checkpoint, ForwardBatch, RecordSink } from '../../src/forward/sink.js';
import { CommitLog } from '../../src/log/commit-log.js';
import { entry } from '../helpers/entries.js';

interface Line {
  msg?: string;
  [k: string]: unknown;
}

/** A gateway in-process whose log lines the test can read. */
async function start(config: ReturnType<typeof parseConfig>): Promise<{ gw: Gateway; url: string; lines: Line[] }> {
  const lines: Line[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Line) });
  const gw = await Gateway.start(config, { logger, statusIntervalMs: 0 });
  return { gw, url: `mqtt://127.0.0.1:${gw.mqttAddress.port}`, lines };
}

describe('checkpoints in the gateway\'s checkpoint group (issue 12)', () => {
  const tmp = useTmpDirs();
  const brokers = kafkaBrokers();
  const kafka = testKafka(brokers);
  const admin = kafka.admin();
  beforeAll(async () => {
    await admin.connect();
  });
  afterAll(async () => {
    await admin.disconnect();
  });

  const endOffsets = async (topic: string): Promise<number> =>
    (await admin.fetchTopicOffsets(topic)).reduce((sum, p) => sum + Number(p.high), 0);
  const groupCheckpoint = async (gatewayId: string, topic: string) => {
    const [t] = await admin.fetchOffsets({ groupId: checkpointGroupOf(gatewayId), topics: [topic] });
    const p = t!.partitions.find((x) => Number(x.offset) >= 0);
    return p === undefined ? undefined : { offset: Number(p.offset), metadata: JSON.parse(p.metadata ?? '{}') as { logId?: string; writer?: string } };
  };

  it('every transaction commits the checkpoint as the group offset: nothing is written to the checkpoint topic, and a restart resumes from it', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.cpgroup');
    const checkpointTopic = uniqueName('cp.group');
    const gatewayId = uniqueName('gw-cpgroup');
    const config = parseConfig({ ...testConfig({ dir, topic, gatewayId }), forward: { checkpointTopic, retry: { initialMs: 100, maxMs: 1000 } } });
    let { gw, url, lines } = await start(config);
    try {
      for (const wave of [seqs(1, 20), seqs(21, 40), seqs(41, 60)]) {
        await publishAcked(url, 'd1', wave.map((s) => reading('d1', 'b1', s)));
        await expect.poll(() => gw.status().forwardPosition, { timeout: 60_000 }).toBe(wave[wave.length - 1]);
      }
      // A backlog forwarded back to back (the forwarder starts its next transaction as soon as
      // the last commit returns, while Kafka still writes its markers): no transaction fails.
      const burst = Array.from({ length: 10 }, (_, i) => publishAcked(url, `burst-${i}`, seqs(1, 200).map((s) => reading(`burst-${i}`, 'b1', s))));
      await Promise.all(burst);
      await expect.poll(() => gw.status().forwardPosition, { timeout: 60_000 }).toBe(2060);
      expect(gw.status().transactions).toBeGreaterThanOrEqual(4);
      expect(gw.status().transactionsFailed).toBe(0);
      // Nor does a connect (its probe and its claim are two transactions back to back).
      expect(lines.filter((l) => l.level === 40 || l.level === 50).map((l) => l.msg)).toEqual([]);
      const cp = await groupCheckpoint(gatewayId, checkpointTopic);
      expect(cp?.offset).toBe(2060);
      expect(cp?.metadata.logId).toEqual(expect.any(String));
      // Checkpoints, probes and claims alike go to the group: the topic stays empty.
      expect(await endOffsets(checkpointTopic)).toBe(0);
    } finally {
      await gw.close();
    }
    ({ gw, url, lines } = await start(config));
    try {
      await publishAcked(url, 'd1', seqs(61, 70).map((s) => reading('d1', 'b1', s)));
      await expect.poll(() => gw.status().forwardPosition, { timeout: 60_000 }).toBe(2070);
      const records = await consumeAll(brokers, topic, { expected: 2070 });
      expect(records.filter((r) => r.key === 'd1').map((r) => (JSON.parse(r.value.toString()) as { seq: number }).seq)).toEqual(seqs(1, 70));
      expect(records).toHaveLength(2070);
      expect((await groupCheckpoint(gatewayId, checkpointTopic))?.offset).toBe(2070);
      expect(lines.filter((l) => l.level === 40 || l.level === 50).map((l) => l.msg)).toEqual([]);
    } finally {
      await gw.close();
    }
    // The group deleted (or expired after offsets.retention.minutes): one clear warning, the
    // local position, nothing sent again, and the group has the checkpoint again.
    await admin.deleteGroups([checkpointGroupOf(gatewayId)]);
    expect(await groupCheckpoint(gatewayId, checkpointTopic)).toBeUndefined();
    ({ gw, url, lines } = await start(config));
    try {
      await publishAcked(url, 'd1', seqs(71, 75).map((s) => reading('d1', 'b1', s)));
      await expect.poll(() => gw.status().forwardPosition, { timeout: 60_000 }).toBe(2075);
      const warnings = lines.filter((l) => l.level === 40 || l.level === 50);
      expect(warnings.map((l) => l.code)).toEqual(['EB_ERR_CHECKPOINT_GROUP_EMPTY']);
      expect(lines.some((l) => String(l.msg).includes('read the checkpoint from a record'))).toBe(false);
      expect((await groupCheckpoint(gatewayId, checkpointTopic))?.offset).toBe(2075);
      const records = await consumeAll(brokers, topic, { expected: 2075 });
      expect(records).toHaveLength(2075);
    } finally {
      await gw.close();
    }
  });

  it('migration: a checkpoint an earlier version wrote as a record in the checkpoint topic is read once, and what it covers is not sent again', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.cpmigrate');
    const checkpointTopic = uniqueName('cp.legacy');
    const gatewayId = uniqueName('gw-cpmigrate');
    const overrides = { forward: { checkpointTopic, retry: { initialMs: 100, maxMs: 1000 } } };
    // The earlier version stored 10 readings; Kafka is out of reach (nothing is forwarded yet).
    const offline = await start(parseConfig({ ...testConfig({ dir, topic, gatewayId, brokers: ['127.0.0.1:1'] }), ...overrides }));
    try {
      await publishAcked(offline.url, 'd1', seqs(1, 10).map((s) => reading('d1', 'b1', s)));
    } finally {
      await offline.gw.close();
    }
    // What the earlier version had committed before it stopped without storing its position (a
    // crash between Kafka's commit and the local store): readings 1-6 and, in the same
    // transaction, its checkpoint record (key = gateway id) in the 1-partition checkpoint topic.
    const reader = new LogReader({ dir, synchronous: 'full' });
    const { records } = reader.readBatch(0, 100, 10_000_000);
    const epoch = reader.epochs().at(-1)!; // the epoch of the process that stored them
    const logId = reader.logId;
    reader.close();
    expect(records).toHaveLength(10);
    const through = records[5]!.offset;
    await admin.createTopics({
      waitForLeaders: true,
      topics: [
        { topic: checkpointTopic, numPartitions: 1, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] },
        { topic, numPartitions: 3 },
      ],
    });
    const producer = kafka.producer({ transactionalId: uniqueName('old-version'), idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const txn = await producer.transaction();
    await txn.send({ topic, messages: records.slice(0, 6).map((r) => ({ key: r.deviceId, value: r.payload })) });
    await txn.send({
      topic: checkpointTopic,
      messages: [
        { key: `${gatewayId}#probe`, value: JSON.stringify({ probe: 1, logId, writer: epoch.id, claim: true }) },
        { key: gatewayId, value: JSON.stringify({ logId, writer: epoch.id, offset: through, epoch: epoch.id, history: [[epoch.id, through]], records: 6, at: 1 }) },
      ],
    });
    await txn.commit();
    await producer.disconnect();
    // the probe, the checkpoint and the commit marker (written just after the commit returns)
    await expect.poll(() => endOffsets(checkpointTopic), { timeout: 30_000 }).toBe(3);
    const legacyRecords = 3;

    // This version starts on that log: no checkpoint in the group, so it reads the record once.
    let { gw, lines } = await start(parseConfig({ ...testConfig({ dir, topic, gatewayId }), ...overrides }));
    try {
      await expect.poll(() => gw.status().forwardPosition, { timeout: 60_000 }).toBe(records[9]!.offset);
      expect(lines.filter((l) => String(l.msg).includes('read the checkpoint from a record in the checkpoint topic'))).toHaveLength(1);
      expect((await groupCheckpoint(gatewayId, checkpointTopic))?.offset).toBe(records[9]!.offset);
    } finally {
      await gw.close();
    }
    const consumed = await consumeAll(brokers, topic, { expected: 10 });
    expect(consumed.map((r) => (JSON.parse(r.value.toString()) as { seq: number }).seq).sort((a, b) => a - b)).toEqual(seqs(1, 10));

    // Migrated: the next start reads the group only (no probe record in the topic, no line).
    // the one migration read's probe record and its commit marker; nothing else
    await expect.poll(() => endOffsets(checkpointTopic), { timeout: 30_000 }).toBe(legacyRecords + 1 + 1);
    const before = legacyRecords + 1 + 1;
    ({ gw, lines } = await start(parseConfig({ ...testConfig({ dir, topic, gatewayId }), ...overrides })));
    try {
      await expect.poll(() => gw.status().forwarder, { timeout: 60_000 }).toBe('forwarding');
      expect(lines.some((l) => String(l.msg).includes('read the checkpoint from a record'))).toBe(false);
      expect(await endOffsets(checkpointTopic)).toBe(before);
    } finally {
      await gw.close();
    }
  });

  it("twins (two logs, one gateway.id): a batch committed just before the twin's checkpoint, its response lost, is not sent again", async () => {
    // The group holds one value, the latest log's checkpoint: it carries the other log's latest
    // along, so each twin still finds its own (review of d9a04b2: a:2 reached Kafka twice).
    const topic = uniqueName('iot.cptwin');
    const gatewayId = uniqueName('gw-cptwin');
    const checkpointTopic = uniqueName('cp.twin');
    /** The real sink; `loseAckNext`: the next send with records commits in Kafka, and its response is lost. */
    class LossySink implements RecordSink {
      loseAckNext = false;
      constructor(readonly inner: KafkaSink) {}
      connect(o: { hint?: number; checking: boolean; migrated?: boolean }) {
        return this.inner.connect(o);
      }
      async send(batch: ForwardBatch, checkpoint: Checkpoint) {
        const result = await this.inner.send(batch, checkpoint);
        if (this.loseAckNext && batch.records.length > 0) {
          this.loseAckNext = false;
          throw new Error('request timed out (the commit response was lost)');
        }
        return result;
      }
      reset() {
        return this.inner.reset();
      }
      close() {
        return this.inner.close();
      }
    }
    const gateway = () => {
      const dir = tmp();
      const log = new CommitLog({ dir, synchronous: 'full' });
      const reader = new LogReader({ dir, synchronous: 'full' });
      const sink = new LossySink(
        new KafkaSink({ kafka, gatewayId, logId: log.logId, writer: log.epoch.id, topics: [topic], checkpointTopic, topicDefaults: { partitions: 1, replicationFactor: 1 }, transactionTimeoutMs: 30_000 }),
      );
      const fwd = new Forwarder(reader, sink, { batchMaxRecords: 100, batchMaxBytes: 1_000_000, commitIntervalMs: 0, retry: { initialMs: 5, maxMs: 20 }, logger: pino({ level: 'silent' }), deadLetter: false });
      return { log, sink, fwd, close: async () => (await fwd.close(), reader.close(), log.close()) };
    };
    const on = (e: ReturnType<typeof entry>) => ({ ...e, kafkaTopic: topic });
    const older = gateway();
    const newer = gateway();
    try {
      older.log.append([on(entry('a', 1))]);
      expect(await older.fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
      older.log.append([on(entry('a', 2))]);
      older.sink.loseAckNext = true;
      expect((await older.fwd.step()).kind).toBe('retry'); // a:2 is in Kafka; the older one does not know
      newer.log.append([on(entry('b', 1))]);
      expect(await newer.fwd.step()).toEqual({ kind: 'forwarded', records: 1 }); // the twin's checkpoint is the latest now
      let outcome: StepOutcome = await older.fwd.step(); // reconnects: reads the group
      for (let i = 0; i < 20 && outcome.kind === 'retry'; i++) outcome = await older.fwd.step();
      expect(older.fwd.position).toBe(2); // its own checkpoint, carried in the twin's value
      const records = await consumeAll(brokers, topic, { expected: 3 });
      expect(records.filter((r) => r.key === 'a').map((r) => r.value.toString())).toEqual([entry('a', 1).payload.toString(), entry('a', 2).payload.toString()]);
    } finally {
      await older.close();
      await newer.close();
    }
  });

  it('a checkpoint written by a newer version is neither read nor overwritten: one clear line, nothing forwarded, the log keeps the readings', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.cpnewer');
    const checkpointTopic = uniqueName('cp.newer');
    const gatewayId = uniqueName('gw-cpnewer');
    await admin.createTopics({ waitForLeaders: true, topics: [{ topic: checkpointTopic, numPartitions: 1 }] });
    const newer = JSON.stringify({ v: 3, writer: 'a newer gateway', logId: 'L', at: 1 });
    const producer = kafka.producer({ transactionalId: uniqueName('newer-version'), idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const txn = await producer.transaction();
    await txn.sendOffsets({ consumerGroupId: checkpointGroupOf(gatewayId), topics: [{ topic: checkpointTopic, partitions: [{ partition: 0, offset: '500', metadata: newer } as never] }] });
    await txn.commit();
    await producer.disconnect();
    const { gw, url, lines } = await start(parseConfig({ ...testConfig({ dir, topic, gatewayId }), forward: { checkpointTopic, retry: { initialMs: 100, maxMs: 1000 } } }));
    try {
      await publishAcked(url, 'd1', seqs(1, 5).map((s) => reading('d1', 'b1', s)));
      await expect.poll(() => lines.filter((l) => l.code === 'EB_ERR_FORWARD_KAFKA').length, { timeout: 60_000 }).toBe(1);
      const line = lines.find((l) => l.code === 'EB_ERR_FORWARD_KAFKA')!;
      expect(String(line.msg)).toContain('was written by a newer edgebridge version');
      expect(gw.status()).toMatchObject({ forwarder: 'retrying', forwarded: 0, backlog: 5 });
      const [t] = await admin.fetchOffsets({ groupId: checkpointGroupOf(gatewayId), topics: [checkpointTopic] });
      expect(t!.partitions[0]).toMatchObject({ offset: '500', metadata: newer });
    } finally {
      await gw.close();
    }
  });
});
