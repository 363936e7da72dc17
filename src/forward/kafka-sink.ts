import { randomUUID } from 'node:crypto';
import { Partitioners, type Admin, type Kafka, type Message, type PartitionMetadata, type Producer } from 'kafkajs';
import type { LogRecord } from '../log/commit-log.js';

/** The last log offset a gateway committed to Kafka, and which log it came from. */
export interface Checkpoint {
  readonly logId: string;
  readonly offset: number;
  /** Offset of the checkpoint record in the checkpoint topic partition. */
  readonly kafkaOffset?: number;
}

/** The forwarder's view of Kafka: small enough to replace with an in-memory sink in unit tests. */
export interface RecordSink {
  /**
   * Connects, fences any earlier producer with this gateway's transactional id (aborting its open
   * transaction), makes sure the topics exist, and returns this gateway's last committed
   * checkpoint, if any. `hint` is where a recent checkpoint record was, to read from there.
   */
  connect(hint?: number): Promise<Checkpoint | undefined>;
  /**
   * Writes the records and a checkpoint (`checkpoint.offset` = last record's offset) in one Kafka
   * transaction. Resolves once committed, with the checkpoint record's offset; rejects otherwise
   * (the outcome of a failed commit is learned from the checkpoint on the next connect).
   */
  send(records: readonly LogRecord[], checkpoint: Checkpoint): Promise<number | undefined>;
  /** Drops the producer so the next `connect` starts from a fresh one. */
  reset(): Promise<void>;
  close(): Promise<void>;
}

export interface KafkaSinkOptions {
  readonly kafka: Kafka;
  readonly gatewayId: string;
  readonly topics: readonly string[];
  readonly checkpointTopic: string;
  readonly topicDefaults: { readonly partitions: number; readonly replicationFactor: number };
  readonly transactionTimeoutMs: number;
  /** How long reading the checkpoint may take before connect fails (and is retried). */
  readonly checkpointReadTimeoutMs?: number;
}

/**
 * Forwards with a transactional producer: each batch is one Kafka transaction that also writes
 * the checkpoint record (key = gateway id, value = last log offset) to a compacted topic: the
 * pattern of Kafka Connect's exactly-once source support (KIP-618). A read_committed consumer
 * sees a batch's records exactly when the checkpoint covering them is visible, so resuming after
 * the checkpoint neither skips nor repeats a record. Partitioning is kafkajs's
 * DefaultPartitioner: the Java client's murmur2(key), so Java, Go and Streams apps co-partition.
 */
export class KafkaSink implements RecordSink {
  private producer: Producer | undefined;
  private topicsReady = false;
  private readonly partitioner = Partitioners.DefaultPartitioner();
  private partitions = new Map<string, PartitionMetadata[]>();
  readonly transactionalId: string;

  constructor(private readonly options: KafkaSinkOptions) {
    this.transactionalId = `edgebridge-${options.gatewayId}`;
  }

  async connect(hint?: number): Promise<Checkpoint | undefined> {
    if (!this.topicsReady) {
      await this.ensureTopics();
      this.topicsReady = true;
    }
    if (!this.producer) {
      const producer = this.options.kafka.producer({
        transactionalId: this.transactionalId,
        idempotent: true,
        maxInFlightRequests: 1, // required by kafkajs for idempotence; keeps each device in order
        transactionTimeout: this.options.transactionTimeoutMs,
        createPartitioner: Partitioners.DefaultPartitioner,
        allowAutoTopicCreation: false,
      });
      try {
        await producer.connect();
        // The first transaction() runs InitProducerId: it bumps the epoch, which fences any
        // zombie with this transactional id and aborts (or completes) its open transaction.
        const fence = await producer.transaction();
        await fence.abort(); // nothing was sent: ends locally
      } catch (err) {
        await producer.disconnect().catch(() => undefined);
        throw err;
      }
      this.producer = producer;
    }
    return this.readCheckpoint(hint);
  }

  private async ensureTopics(): Promise<void> {
    const admin: Admin = this.options.kafka.admin();
    await admin.connect();
    try {
      const existing = new Set(await admin.listTopics());
      const { partitions, replicationFactor } = this.options.topicDefaults;
      const missing = this.options.topics
        .filter((t) => !existing.has(t))
        .map((topic) => ({ topic, numPartitions: partitions, replicationFactor }));
      if (!existing.has(this.options.checkpointTopic)) {
        missing.push({
          topic: this.options.checkpointTopic,
          numPartitions: 1,
          replicationFactor,
          // Only the latest checkpoint per gateway matters; small segments let compaction keep
          // the topic (and the read at start) short.
          configEntries: [
            { name: 'cleanup.policy', value: 'compact' },
            { name: 'segment.ms', value: String(3600_000) },
            { name: 'min.cleanable.dirty.ratio', value: '0.1' },
          ],
        } as (typeof missing)[number]);
      }
      if (missing.length > 0) {
        await admin.createTopics({ waitForLeaders: true, topics: missing }).catch((err: { type?: string }) => {
          // another gateway created it in between: fine
          if (err.type !== 'TOPIC_ALREADY_EXISTS') throw err;
        });
      }
      const topics = [...this.options.topics, this.options.checkpointTopic];
      const meta = await admin.fetchTopicMetadata({ topics });
      this.partitions = new Map(meta.topics.map((t) => [t.name, t.partitions]));
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  /**
   * Reads this gateway's latest committed checkpoint. The checkpoint partition is shared by every
   * gateway, so its last stable offset can lag behind while another gateway's transaction is open:
   * a read that stopped there could miss this gateway's newest checkpoint. So the read first
   * commits a probe record (key `<gateway.id>#probe`, so compaction never replaces a checkpoint
   * with it) into the same partition, then reads with read_committed until the probe is seen:
   * by then every transaction before it has been resolved, and the checkpoint found is the latest.
   */
  private async readCheckpoint(hint?: number): Promise<Checkpoint | undefined> {
    const { kafka, checkpointTopic, gatewayId } = this.options;
    const partition = this.partitionOf(checkpointTopic, gatewayId);
    const probeOffset = await this.commitProbe(partition);

    const consumer = kafka.consumer({
      // A fresh group per read: nothing is committed, and a stale member of a killed process
      // can never delay the join.
      groupId: `edgebridge-checkpoint-${gatewayId}-${randomUUID().slice(0, 8)}`,
      readUncommitted: false,
      maxWaitTimeInMs: 100,
      sessionTimeout: 10_000,
    });
    let latest: Checkpoint | undefined;
    try {
      await consumer.connect();
      await consumer.subscribe({ topic: checkpointTopic, fromBeginning: true });
      let probeSeen: () => void = () => undefined;
      const reachedProbe = new Promise<void>((resolve) => (probeSeen = resolve));
      await consumer.run({
        autoCommit: false,
        eachMessage: async ({ partition: p, message }) => {
          if (p !== partition) return;
          if (Number(message.offset) >= probeOffset) probeSeen();
          if (message.key?.toString() !== gatewayId || !message.value) return;
          const parsed = parseCheckpoint(message.value);
          if (parsed && Number(message.offset) < probeOffset) latest = { ...parsed, kafkaOffset: Number(message.offset) };
        },
      });
      // Start near the last checkpoint this log knows of; an offset compacted away falls back
      // to the earliest one.
      if (hint !== undefined && hint < probeOffset) consumer.seek({ topic: checkpointTopic, partition, offset: String(hint) });
      const timeoutMs = this.options.checkpointReadTimeoutMs ?? this.options.transactionTimeoutMs + 30_000;
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`reading the checkpoint from ${checkpointTopic} took more than ${timeoutMs} ms`)),
          timeoutMs,
        );
      });
      try {
        await Promise.race([reachedProbe, timedOut]);
      } finally {
        clearTimeout(timer);
      }
    } finally {
      await consumer.disconnect().catch(() => undefined);
    }
    return latest;
  }

  /** Commits the probe record in its own transaction; returns its offset. */
  private async commitProbe(partition: number): Promise<number> {
    if (!this.producer) throw new Error('kafka sink is not connected');
    const txn = await this.producer.transaction();
    try {
      const [result] = await txn.sendBatch({
        acks: -1,
        topicMessages: [
          {
            topic: this.options.checkpointTopic,
            messages: [{ key: `${this.options.gatewayId}#probe`, value: JSON.stringify({ probe: Date.now() }), partition }],
          },
        ],
      });
      await txn.commit();
      return Number(result!.baseOffset);
    } catch (err) {
      if (txn.isActive()) await txn.abort().catch(() => undefined);
      throw err;
    }
  }

  async send(records: readonly LogRecord[], checkpoint: Checkpoint): Promise<number | undefined> {
    if (!this.producer) throw new Error('kafka sink is not connected');
    // One produce call per partition. kafkajs's produce retry remembers which *brokers* answered:
    // when a call spans several leaders and one of them fails over, the retry can write a
    // partition twice in the same transaction or skip one (the broker-failover test saw 395
    // duplicates). A call that reaches a single partition cannot mix brokers up, and its retry
    // keeps the idempotent sequence, so the broker drops a repeat.
    const byPartition = new Map<string, { topic: string; messages: Message[] }>();
    for (const r of records) {
      const message = toMessage(r, this.options.gatewayId);
      message.partition = this.partitionOf(r.kafkaTopic, r.deviceId);
      const slot = `${r.kafkaTopic}\0${message.partition}`;
      let group = byPartition.get(slot);
      if (!group) byPartition.set(slot, (group = { topic: r.kafkaTopic, messages: [] }));
      group.messages.push(message);
    }
    const checkpointMessage: Message = {
      key: this.options.gatewayId,
      value: JSON.stringify({ logId: checkpoint.logId, offset: checkpoint.offset, records: records.length, at: Date.now() }),
      partition: this.partitionOf(this.options.checkpointTopic, this.options.gatewayId),
    };
    const txn = await this.producer.transaction();
    try {
      for (const { topic, messages } of byPartition.values()) {
        await txn.sendBatch({ acks: -1, topicMessages: [{ topic, messages }] });
      }
      const [cp] = await txn.sendBatch({
        acks: -1,
        topicMessages: [{ topic: this.options.checkpointTopic, messages: [checkpointMessage] }],
      });
      await txn.commit();
      return cp?.baseOffset === undefined ? undefined : Number(cp.baseOffset);
    } catch (err) {
      if (txn.isActive()) await txn.abort().catch(() => undefined);
      throw err;
    }
  }

  /** The Java client's partition for `key` (murmur2), from the metadata read at connect. */
  private partitionOf(topic: string, key: string): number {
    const partitionMetadata = this.partitions.get(topic);
    if (!partitionMetadata) throw new Error(`no partition metadata for topic ${topic}`);
    return this.partitioner({ topic, partitionMetadata, message: { key, value: null } });
  }

  async reset(): Promise<void> {
    const producer = this.producer;
    this.producer = undefined;
    this.topicsReady = false;
    await producer?.disconnect().catch(() => undefined);
  }

  async close(): Promise<void> {
    await this.reset();
  }
}

export function parseCheckpoint(value: Buffer): Omit<Checkpoint, 'kafkaOffset'> | undefined {
  try {
    const v = JSON.parse(value.toString('utf8')) as { logId?: unknown; offset?: unknown };
    if (typeof v.logId === 'string' && typeof v.offset === 'number' && Number.isInteger(v.offset)) {
      return { logId: v.logId, offset: v.offset };
    }
  } catch {
    // not ours, or damaged: ignore it
  }
  return undefined;
}

export function toMessage(record: LogRecord, gatewayId: string): Message {
  return {
    key: record.deviceId,
    value: record.payload,
    timestamp: String(record.receivedAt),
    headers: { 'mqtt-topic': record.mqttTopic, 'gateway-id': gatewayId },
  };
}

const FENCED_TYPES = new Set(['INVALID_PRODUCER_EPOCH', 'PRODUCER_FENCED', 'TRANSACTIONAL_ID_AUTHORIZATION_FAILED']);

/** Whether a kafkajs error (possibly wrapped by its retrier) says another producer fenced this one. */
export function isFencedError(err: unknown, depth = 0): boolean {
  if (err === null || typeof err !== 'object' || depth > 5) return false;
  const e = err as { type?: string; cause?: unknown; originalError?: unknown; errors?: unknown[]; message?: string };
  if (e.type && FENCED_TYPES.has(e.type)) return true;
  if (typeof e.message === 'string' && /fenced|producer epoch/i.test(e.message)) return true;
  return (
    isFencedError(e.cause, depth + 1) ||
    isFencedError(e.originalError, depth + 1) ||
    (Array.isArray(e.errors) && e.errors.some((x) => isFencedError(x, depth + 1)))
  );
}
