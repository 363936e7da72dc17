import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { Partitioners, type Admin, type CompressionTypes, type Kafka, type Message, type PartitionMetadata, type Producer, type Transaction } from 'kafkajs';
import { EdgebridgeError } from '../errors.js';
import type { LogRecord } from '../log/commit-log.js';
import { useCompression, type Compression } from './compression.js';
import {
  RecordRejectedError,
  authenticationFailure,
  authorizationFailure,
  kafkaErrorTypes,
  rejectionType,
  CHECKPOINT_IN_GROUP,
  type Checkpoint,
  type ConnectResult,
  type ForwardBatch,
  type RecordSink,
} from './sink.js';

export interface KafkaSinkOptions {
  readonly kafka: Kafka;
  readonly gatewayId: string;
  /** The commit log forwarded: checkpoints carry it, and resuming goes by this log's own. */
  readonly logId: string;
  /**
   * Who writes under this gateway id: the epoch this process opened the log with. Probes and
   * checkpoints carry it; another writer's claim after ours is a twin, even one whose storage.dir
   * was cloned from ours (same log id).
   */
  readonly writer: string;
  /** Topics to create (if missing) and learn at connect; others are learned when first sent to. */
  readonly topics: readonly string[];
  readonly checkpointTopic: string;
  /** Where records Kafka refuses for good go; undefined when they are dropped instead. */
  readonly deadLetterTopic?: string;
  readonly topicDefaults: { readonly partitions: number; readonly replicationFactor: number };
  readonly transactionTimeoutMs: number;
  /** How the forwarded records' batches are compressed (checkpoints and probes are tiny: never). */
  readonly compression?: Compression;
  /** How long reading the checkpoint may take before connect fails (and is retried). */
  readonly checkpointReadTimeoutMs?: number;
}

/** Group coordinator answers that mean "ask again in a moment" (loading, or moving to another broker). */
const COORDINATOR_MOVING: ReadonlySet<string> = new Set([
  // kafkajs names Kafka's error codes 14, 15 and 16 by their old names
  'GROUP_LOAD_IN_PROGRESS',
  'GROUP_COORDINATOR_NOT_AVAILABLE',
  'NOT_COORDINATOR_FOR_GROUP',
  'COORDINATOR_LOAD_IN_PROGRESS',
  'COORDINATOR_NOT_AVAILABLE',
  'NOT_COORDINATOR',
]);

/**
 * Runs `fn` again while the group coordinator answers that it is loading its __consumer_offsets
 * partition or has moved (a broker just started, or took the partition over): for a moment, as a
 * consumer would wait, rather than report Kafka as unreachable. About 15 s at most.
 */
async function whileCoordinatorMoves<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (attempt >= 20 || !kafkaErrorTypes(err).some((t) => COORDINATOR_MOVING.has(t))) throw err;
      await delay(Math.min(100 * 2 ** attempt, 1000));
    }
  }
}

const TRANSACTION_BUSY: ReadonlySet<string> = new Set(['CONCURRENT_TRANSACTIONS', ...COORDINATOR_MOVING]);

/** Runs `fn` again (briefly: 20 ms steps, about 5 s at most) while the transaction coordinator is busy or moving. */
async function whileBusy<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (attempt >= 50 || !kafkaErrorTypes(err).some((t) => TRANSACTION_BUSY.has(t))) throw err;
      await delay(Math.min(20 * (attempt + 1), 200));
    }
  }
}

/** Size-related rejections: the payload cannot go to the dead-letter topic either. */
const SIZE_REJECTIONS = new Set(['MESSAGE_TOO_LARGE', 'RECORD_LIST_TOO_LARGE']);

/**
 * Forwards with a transactional producer: each batch is one Kafka transaction that also commits
 * the checkpoint (the last log offset, its log and epoch history), so Kafka has a batch's records
 * exactly when it has the checkpoint covering them, and resuming after the checkpoint neither
 * skips nor repeats a record (the pattern of Kafka Connect's exactly-once sources, KIP-618).
 *
 * The checkpoint is a transactional offset commit (TxnOffsetCommit, as Kafka Streams commits its
 * input positions) for this gateway's own offsets-only group, `edgebridge-checkpoint-<id>-offsets`:
 * the log offset as the committed offset of the checkpoint topic's partition for this gateway, the
 * rest in the commit's metadata. Kafka keeps it in `__consumer_offsets`, partitioned by group id
 * over the brokers and compacted, and its group coordinator holds the latest one of each group in
 * memory: a gateway's recovery read is one OffsetFetch, whatever the fleet writes and however long
 * the gateway was away, and no group is ever joined. Checkpoints of earlier versions (records in
 * the checkpoint topic) are read once, when the group has none yet (migration).
 *
 * Partitioning is kafkajs's DefaultPartitioner: the Java client's murmur2(key), so Java, Go and
 * Streams apps co-partition.
 */
export class KafkaSink implements RecordSink {
  private producer: Producer | undefined;
  private topicsReady = false;
  private compression: CompressionTypes | undefined;
  private readonly partitioner = Partitioners.DefaultPartitioner();
  private partitions = new Map<string, PartitionMetadata[]>();
  readonly transactionalId: string;
  /** The offsets-only group whose committed offset is this gateway's checkpoint. */
  readonly checkpointGroup: string;

  constructor(private readonly options: KafkaSinkOptions) {
    this.transactionalId = `edgebridge-${options.gatewayId}`;
    this.checkpointGroup = checkpointGroupOf(options.gatewayId);
  }

  async connect({ hint, checking, migrated = false }: { hint?: number; checking: boolean; migrated?: boolean }): Promise<ConnectResult> {
    this.compression ??= await useCompression(this.options.compression ?? 'none');
    if (!this.topicsReady) {
      const internal = [this.options.checkpointTopic, ...(this.options.deadLetterTopic ? [this.options.deadLetterTopic] : [])];
      await this.ensureTopics([...new Set([...this.options.topics, ...internal, ...this.partitions.keys()])]);
      this.topicsReady = true;
    }
    if (!this.producer) {
      // Before fencing: a checkpoint of a newer version is refused without fencing it each retry.
      await this.fetchCheckpoint();
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
    return this.readCheckpoint(hint, checking, migrated);
  }

  /** Creates the missing ones of `topics` and learns the partitions of all of them. */
  private async ensureTopics(topics: readonly string[]): Promise<void> {
    const admin: Admin = this.options.kafka.admin();
    await admin.connect();
    try {
      const existing = new Set(await admin.listTopics());
      const { partitions, replicationFactor } = this.options.topicDefaults;
      const missing = topics
        .filter((t) => !existing.has(t))
        .map((topic) =>
          topic === this.options.checkpointTopic
            ? ({
                topic,
                numPartitions: 1,
                replicationFactor,
                // Only the latest checkpoint per gateway matters; small segments let compaction
                // keep the topic (and the read at start) short.
                configEntries: [
                  { name: 'cleanup.policy', value: 'compact' },
                  { name: 'segment.ms', value: String(3600_000) },
                  { name: 'min.cleanable.dirty.ratio', value: '0.1' },
                ],
              } as { topic: string; numPartitions: number; replicationFactor: number })
            : { topic, numPartitions: partitions, replicationFactor },
        );
      if (missing.length > 0) {
        await admin.createTopics({ waitForLeaders: true, topics: missing }).catch((err: { type?: string }) => {
          // another gateway created it in between: fine
          if (err.type !== 'TOPIC_ALREADY_EXISTS') throw err;
        });
      }
      const meta = await admin.fetchTopicMetadata({ topics: [...topics] });
      for (const t of meta.topics) this.partitions.set(t.name, t.partitions);
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  /**
   * Reads this gateway's latest committed checkpoint: one OffsetFetch of its checkpoint group.
   * The fence before it (InitProducerId) has resolved this gateway's own open transaction, so
   * the value read is final (on Kafka 4.0 and later: KAFKA-17507). Then commits a probe carrying
   * the same checkpoint: it says which writer fenced, and that it claims the gateway id (unless it
   * only checks for a twin), so a twin that is still forwarding sees the claim at once (see
   * Forwarder.connect).
   */
  private async readCheckpoint(hint: number | undefined, checking: boolean, migrated: boolean): Promise<ConnectResult> {
    const stored = await this.fetchCheckpoint();
    const mine = (c: Checkpoint | undefined): boolean => c?.logId === this.options.logId;
    let latest: Checkpoint | undefined;
    let prior: Checkpoint | undefined;
    let foreignClaim = false;
    let claimer: string | undefined;
    let source: 'group' | 'legacy' | 'lost' = 'group';
    if (stored !== undefined) {
      const me = this.options.writer;
      // A claim by another writer since this one last wrote under the id: the value was written
      // by someone else, and the last claim in it is not ours.
      foreignClaim = stored.writer !== me && stored.claimer !== undefined && stored.claimer !== me;
      ({ checkpoint: latest, prior, claimer } = stored);
    } else if (migrated) {
      // This log's checkpoints were in the group: it expired or was deleted. The checkpoint
      // records of the earlier version are older than what the group had: not read again.
      source = 'lost';
    } else {
      // None in the group: a new gateway, or one whose checkpoints are still records in the
      // checkpoint topic (written before this version). Read those once; from the first commit
      // on, the group has the checkpoint.
      const legacy = await this.readLegacyCheckpoint(hint, checking);
      latest = legacy.checkpoint;
      foreignClaim = legacy.foreignClaim;
      if (latest !== undefined) source = 'legacy';
    }
    // The group holds one value: the latest checkpoint of the latest log to write under this id,
    // with the latest one of the log before it. Of twins (two logs), each finds its own there.
    this.otherLog = mine(latest) ? prior : latest;
    await this.commitOffsets(undefined, latest, checking ? claimer : this.options.writer, prior);
    const own = mine(latest) ? latest : mine(prior) ? prior : undefined;
    return {
      // Resuming goes by this log's own latest checkpoint: a twin's, written later, says nothing
      // of what this log has in Kafka (and would make it send its last batch again).
      checkpoint: own ?? latest,
      foreignClaim,
      ...(source === 'legacy' ? { legacy: true } : {}),
      ...(source === 'lost' ? { groupLost: true } : {}),
    };
  }

  /** The latest checkpoint of another log under this gateway id (a twin's), carried in each commit; see readCheckpoint. */
  private otherLog: Checkpoint | undefined;

  /** The checkpoint committed for this gateway's group; undefined when the group has none. */
  private async fetchCheckpoint(): Promise<StoredCheckpoint | undefined> {
    const admin: Admin = this.options.kafka.admin();
    await admin.connect();
    try {
      const [topic] = await whileCoordinatorMoves(() => admin.fetchOffsets({ groupId: this.checkpointGroup, topics: [this.options.checkpointTopic] }));
      const entry = topic?.partitions.find((p) => p.partition === CHECKPOINT_PARTITION);
      if (!entry || Number(entry.offset) < 0) return undefined;
      const stored = parseStoredCheckpoint(Number(entry.offset), entry.metadata);
      if (stored === 'newer') {
        throw new EdgebridgeError(
          'EB_ERR_CHECKPOINT_NEWER',
          `the checkpoint in group ${this.checkpointGroup} was written by a newer edgebridge version: this one cannot read it right, and neither fences that gateway nor overwrites it (run the newer version)`,
        );
      }
      return stored;
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  /**
   * Commits `checkpoint` as this gateway's group offset, in `txn` (with a batch) or in a
   * transaction of its own (a probe). `claimer`: the writer whose claim on the gateway id the
   * value carries; `prior`: the latest checkpoint of another log, carried along.
   */
  private async commitOffsets(txn: Transaction | undefined, checkpoint: Checkpoint | undefined, claimer: string | undefined, prior: Checkpoint | undefined): Promise<void> {
    const own = txn ?? (await this.producerOrThrow().transaction());
    const metadata = checkpointMetadata(checkpoint, this.options.writer, claimer, prior);
    try {
      // AddOffsetsToTxn is answered CONCURRENT_TRANSACTIONS while the coordinator still writes the
      // markers of the previous transaction (back-to-back commits); the Java client retries it
      // and so does this (kafkajs does not).
      await whileBusy(() => own.sendOffsets({
        consumerGroupId: this.checkpointGroup,
        topics: [
          {
            topic: this.options.checkpointTopic,
            partitions: [{ partition: CHECKPOINT_PARTITION, offset: String(checkpoint?.offset ?? 0), metadata } as never],
          },
        ],
      }));
      if (!txn) await own.commit();
    } catch (err) {
      if (!txn && own.isActive()) await own.abort().catch(() => undefined);
      if (kafkaErrorTypes(err).includes('OFFSET_METADATA_TOO_LARGE')) {
        throw new Error(
          `kafka refuses the checkpoint's ${Buffer.byteLength(metadata)} bytes of commit metadata: the brokers' offset.metadata.max.bytes is set below it; raise it (default 4096)`,
          { cause: err },
        );
      }
      throw err;
    }
  }

  private producerOrThrow(): Producer {
    if (!this.producer) throw new Error('kafka sink is not connected');
    return this.producer;
  }

  /**
   * Reads this gateway's latest checkpoint record from the checkpoint topic, where versions
   * before the checkpoint group wrote it (migration). The partition is shared by many gateways,
   * so its last stable offset can lag behind while another gateway's transaction is open: a read
   * that stopped there could miss this gateway's newest checkpoint. So the read first
   * commits a probe record (key `<gateway.id>#probe`, so compaction never replaces a checkpoint
   * with it) into the same partition, then reads with read_committed until the probe is seen:
   * by then every transaction before it has been resolved, and the checkpoint found is the latest.
   */
  private async readLegacyCheckpoint(hint: number | undefined, checking: boolean): Promise<ConnectResult> {
    const { kafka, checkpointTopic, gatewayId } = this.options;
    const partition = this.partitionOf(checkpointTopic, gatewayId);
    // Nothing was ever written there (a fleet that started with checkpoint groups): nothing to read.
    if ((await this.checkpointPartitionEnd(partition)) === 0) return { checkpoint: undefined, foreignClaim: false };
    const probeOffset = await this.commitProbe(partition, checking);

    // A fresh group per read: nothing is committed, and a stale member of a killed process can
    // never delay the join. Deleted after the read (it is empty by then).
    const groupId = `edgebridge-checkpoint-${gatewayId}-${randomUUID().slice(0, 8)}`;
    const consumer = kafka.consumer({
      groupId,
      readUncommitted: false,
      maxWaitTimeInMs: 100,
      sessionTimeout: 10_000,
    });
    let latest: Checkpoint | undefined;
    let latestOwn: Checkpoint | undefined;
    let foreignClaim = false;
    const probeKey = `${gatewayId}#probe`;
    try {
      await consumer.connect();
      await consumer.subscribe({ topic: checkpointTopic, fromBeginning: true });
      let probeSeen: () => void = () => undefined;
      let refused: (err: unknown) => void = () => undefined;
      const reachedProbe = new Promise<void>((resolve, reject) => {
        probeSeen = resolve;
        refused = reject;
      });
      // The consumer runs in the background and restarts after a crash: a missing Read ACL (on
      // the checkpoint topic or the group prefix) would only show as a timeout, much later, and
      // look like an unreachable Kafka. Such a crash fails the read at once, with Kafka's error.
      consumer.on(consumer.events.CRASH, ({ payload }) => {
        if (authorizationFailure(payload.error) !== undefined || authenticationFailure(payload.error) !== undefined) refused(payload.error);
      });
      await consumer.run({
        autoCommit: false,
        eachMessage: async ({ partition: p, message }) => {
          if (p !== partition) return;
          if (Number(message.offset) >= probeOffset) {
            probeSeen();
            return;
          }
          const key = message.key?.toString();
          if ((key !== gatewayId && key !== probeKey) || !message.value) return;
          const writer = writerOf(message.value);
          const mine = writer.writer !== undefined ? writer.writer === this.options.writer : writer.logId === this.options.logId;
          if (mine) foreignClaim = false;
          else if (writer.logId !== undefined && writer.claims) foreignClaim = true;
          if (key !== gatewayId) return;
          const parsed = parseCheckpoint(message.value);
          if (!parsed) return;
          latest = { ...parsed, kafkaOffset: Number(message.offset) };
          if (parsed.logId === this.options.logId) latestOwn = latest;
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
      await this.deleteGroup(groupId);
    }
    // Resuming goes by this log's own latest checkpoint: a twin's, written later, says nothing of
    // what this log has in Kafka (and would make it send its last batch again).
    return { checkpoint: latestOwn ?? latest, foreignClaim };
  }

  /** The high watermark of this gateway's partition of the checkpoint topic. */
  private async checkpointPartitionEnd(partition: number): Promise<number> {
    const admin: Admin = this.options.kafka.admin();
    await admin.connect();
    try {
      const offsets = await admin.fetchTopicOffsets(this.options.checkpointTopic);
      return Number(offsets.find((p) => p.partition === partition)?.high ?? 0);
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  /** Removes an empty consumer group; one that cannot be removed (no Delete ACL) is left to expire. */
  private async deleteGroup(groupId: string): Promise<void> {
    const admin: Admin = this.options.kafka.admin();
    try {
      await admin.connect();
      await admin.deleteGroups([groupId]);
    } catch {
      // offsets.retention.minutes removes it in time
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  /** Commits the probe record in its own transaction; returns its offset. */
  private async commitProbe(partition: number, checking: boolean): Promise<number> {
    if (!this.producer) throw new Error('kafka sink is not connected');
    const txn = await this.producer.transaction();
    try {
      const [result] = await txn.sendBatch({
        acks: -1,
        topicMessages: [
          {
            topic: this.options.checkpointTopic,
            // The probe says which log fenced: a twin's claim is visible from here on, before its
            // first checkpoint (which waits for the checkpoint read) commits.
            messages: [
              {
                key: `${this.options.gatewayId}#probe`,
                value: JSON.stringify({ probe: Date.now(), logId: this.options.logId, writer: this.options.writer, claim: !checking }),
                partition,
              },
            ],
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

  async send(batch: ForwardBatch, checkpoint: Checkpoint): Promise<number | undefined> {
    if (!this.producer) throw new Error('kafka sink is not connected');
    const { gatewayId, checkpointTopic, deadLetterTopic } = this.options;
    // Topics of a backlog written under an older route table are learned (and created) here.
    const unknown = new Set<string>();
    for (const r of batch.records) if (!this.partitions.has(r.kafkaTopic)) unknown.add(r.kafkaTopic);
    if (batch.deadLetters.length > 0 && deadLetterTopic && !this.partitions.has(deadLetterTopic)) unknown.add(deadLetterTopic);
    if (unknown.size > 0) await this.ensureTopics([...unknown]);

    // One produce call per partition. kafkajs's produce retry remembers which *brokers* answered:
    // when a call spans several leaders and one of them fails over, the retry can write a
    // partition twice in the same transaction or skip one (the broker-failover test saw 395
    // duplicates). A call that reaches a single partition cannot mix brokers up, and its retry
    // keeps the idempotent sequence, so the broker drops a repeat.
    const byPartition = new Map<string, { topic: string; messages: Message[] }>();
    const add = (topic: string, message: Message): void => {
      message.partition = this.partitionOf(topic, String(message.key));
      const slot = `${topic}\0${message.partition}`;
      let group = byPartition.get(slot);
      if (!group) byPartition.set(slot, (group = { topic, messages: [] }));
      group.messages.push(message);
    };
    for (const r of batch.records) add(r.kafkaTopic, toMessage(r, gatewayId));
    if (deadLetterTopic) for (const d of batch.deadLetters) add(deadLetterTopic, toDeadLetterMessage(d.record, d.reason, gatewayId));
    const txn = await this.producer.transaction();
    let sendingTopic = checkpointTopic;
    try {
      for (const { topic, messages } of byPartition.values()) {
        sendingTopic = topic;
        await txn.sendBatch({ acks: -1, compression: this.compression, topicMessages: [{ topic, messages }] });
      }
      sendingTopic = checkpointTopic;
      // Sending a checkpoint claims the gateway id.
      await this.commitOffsets(txn, checkpoint, this.options.writer, this.otherLog);
      await txn.commit();
      return CHECKPOINT_IN_GROUP;
    } catch (err) {
      const rejected = rejectionType(err);
      if (txn.isActive()) {
        try {
          await txn.abort();
        } catch {
          throw err; // the producer is in an unknown state: the forwarder starts a new one
        }
      }
      // The checkpoint record is ours and small: a refusal there is a broker problem, retried.
      if (rejected !== undefined && sendingTopic !== checkpointTopic) {
        throw new RecordRejectedError(rejected, sendingTopic, sendingTopic === deadLetterTopic, `kafka refused a record for ${sendingTopic}: ${rejected}`, {
          cause: err,
        });
      }
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

/** The offsets-only group whose committed offset is `gatewayId`'s checkpoint (inside the ACL prefix `edgebridge-checkpoint-<id>-`). */
export function checkpointGroupOf(gatewayId: string): string {
  return `edgebridge-checkpoint-${gatewayId}-offsets`;
}

/** A checkpoint as committed in the checkpoint group, with who wrote it and who last claimed the id. */
export interface StoredCheckpoint {
  /** Undefined: a probe committed before this gateway id had any checkpoint. */
  readonly checkpoint: Checkpoint | undefined;
  /** The writer (log epoch of a process) that committed this value. */
  readonly writer: string | undefined;
  /** The writer whose claim on the gateway id is the latest (a probe that only checks passes the earlier one on). */
  readonly claimer: string | undefined;
  /** The latest checkpoint of the log that wrote under this id before `checkpoint`'s (twins). */
  readonly prior?: Checkpoint;
}

/**
 * The commit metadata of a checkpoint (the offset itself is the committed offset). Kept well
 * under the broker's offset.metadata.max.bytes (4096 by default): two ids, the log id, and at
 * most HISTORY_LENGTH (16) epoch marks, about 1.2 KB at most.
 */
export function checkpointMetadata(checkpoint: Checkpoint | undefined, writer: string, claimer: string | undefined, prior?: Checkpoint): string {
  return JSON.stringify({
    v: METADATA_VERSION,
    writer,
    ...(claimer === undefined ? {} : { claimer }),
    ...(checkpoint === undefined ? {} : checkpointFields(checkpoint)),
    ...(prior === undefined ? {} : { prior: { offset: prior.offset, ...checkpointFields(prior) } }),
    at: Date.now(),
  });
}

function checkpointFields(checkpoint: Checkpoint): Record<string, unknown> {
  return {
    logId: checkpoint.logId,
    ...(checkpoint.epoch === undefined ? {} : { epoch: checkpoint.epoch, history: (checkpoint.history ?? []).map((m) => [m.epoch, m.through]) }),
  };
}

const METADATA_VERSION = 2;

/** The checkpoint topic's partition the group commits against (the group id alone places it in __consumer_offsets). */
const CHECKPOINT_PARTITION = 0;

/**
 * A committed checkpoint group offset and its metadata; undefined when the metadata is not
 * ours, 'newer' when a later version wrote it (it must not be overwritten).
 */
export function parseStoredCheckpoint(offset: number, metadata: string | null | undefined): StoredCheckpoint | 'newer' | undefined {
  if (!metadata) return undefined;
  let v: { v?: unknown; writer?: unknown; claimer?: unknown; logId?: unknown; prior?: unknown };
  try {
    v = JSON.parse(metadata) as typeof v;
  } catch {
    return undefined;
  }
  if (v === null || typeof v !== 'object' || typeof v.v !== 'number') return undefined;
  if (v.v > METADATA_VERSION) return 'newer';
  if (v.v !== METADATA_VERSION) return undefined;
  const text = (x: unknown): string | undefined => (typeof x === 'string' ? x : undefined);
  const checkpoint = typeof v.logId === 'string' ? parseCheckpoint(Buffer.from(JSON.stringify({ ...v, offset }))) : undefined;
  const prior = v.prior !== null && typeof v.prior === 'object' ? parseCheckpoint(Buffer.from(JSON.stringify(v.prior))) : undefined;
  return { checkpoint, writer: text(v.writer), claimer: text(v.claimer), ...(prior === undefined ? {} : { prior }) };
}

/** The log that wrote a checkpoint or probe record, and whether the record claims the gateway id. */
function writerOf(value: Buffer): { logId: string | undefined; writer: string | undefined; claims: boolean } {
  try {
    const v = JSON.parse(value.toString('utf8')) as { logId?: unknown; writer?: unknown; probe?: unknown; claim?: unknown };
    const logId = typeof v.logId === 'string' ? v.logId : undefined;
    const writer = typeof v.writer === 'string' ? v.writer : undefined;
    // a checkpoint always claims; a probe unless its connect was only checking for a twin
    return { logId, writer, claims: v.probe === undefined || v.claim === true };
  } catch {
    return { logId: undefined, writer: undefined, claims: false };
  }
}

export function parseCheckpoint(value: Buffer): Omit<Checkpoint, 'kafkaOffset'> | undefined {
  try {
    const v = JSON.parse(value.toString('utf8')) as { logId?: unknown; offset?: unknown; epoch?: unknown; history?: unknown };
    if (typeof v.logId === 'string' && typeof v.offset === 'number' && Number.isInteger(v.offset)) {
      const epoch = typeof v.epoch === 'string' ? v.epoch : undefined;
      const history = Array.isArray(v.history)
        ? v.history
            .filter((m): m is [string, number] => Array.isArray(m) && typeof m[0] === 'string' && Number.isInteger(m[1]))
            .map(([e, through]) => ({ epoch: e, through }))
        : undefined;
      return {
        logId: v.logId,
        offset: v.offset,
        ...(epoch === undefined ? {} : { epoch }),
        ...(history === undefined ? {} : { history }),
      };
    }
  } catch {
    // not ours, or damaged: ignore it
  }
  return undefined;
}

/** The headers every forwarded record carries, ahead of its own: never set by a device. */
export const GATEWAY_HEADERS = ['mqtt-topic', 'gateway-id'] as const;
const GATEWAY_HEADER_SET: ReadonlySet<string> = new Set(GATEWAY_HEADERS);

/**
 * A log record as a Kafka message. Headers are an ordered list ([key, value] pairs, see
 * patches/kafkajs): the gateway's own first (mqtt-topic, gateway-id), then the record's own in
 * the order stored (command acks' headers; an MQTT 5 publish's properties, user properties in
 * the order sent with repeats). Ingress already keeps a device from using a reserved name
 * (v5-properties.ts); a stored header named like one of the gateway's (a log written by other
 * code) is kept under `mqtt-user-<name>` rather than shadow it or be dropped.
 */
export function toMessage(record: LogRecord, gatewayId: string): Message {
  const headers: [string, string | Buffer][] = [
    ['mqtt-topic', record.mqttTopic],
    ['gateway-id', gatewayId],
  ];
  for (const [k, v] of record.headers ?? []) headers.push([GATEWAY_HEADER_SET.has(k.toLowerCase()) ? `mqtt-user-${k}` : k, v]);
  return {
    key: record.deviceId,
    value: record.payload,
    timestamp: String(record.receivedAt),
    headers: headers as unknown as Message['headers'],
  };
}

/**
 * A refused record as a dead-letter record, in the manner of Kafka Connect's DLQ context headers.
 * A record refused for its size cannot be written anywhere in Kafka: its payload and its own
 * headers (a device's user properties may be what is large) are left out and their sizes and
 * the payload's SHA-256 are given instead. It is stamped with the time it is dead-lettered (its
 * own timestamp may be what Kafka refused); the time it was received is a header.
 */
export function toDeadLetterMessage(record: LogRecord, reason: string, gatewayId: string, now = Date.now()): Message {
  const withoutPayload = SIZE_REJECTIONS.has(reason);
  const base = toMessage(withoutPayload ? { ...record, headers: [] } : record, gatewayId);
  const own = record.headers ?? [];
  const headers = [
    ...(base.headers as unknown as [string, string | Buffer][]),
    ['edgebridge-error', reason],
    ['edgebridge-received-at', String(record.receivedAt)],
    ['edgebridge-original-topic', record.kafkaTopic],
    ['edgebridge-log-offset', String(record.offset)],
    ['edgebridge-payload-bytes', String(record.payload.length)],
    ...(withoutPayload ? [['edgebridge-payload-sha256', createHash('sha256').update(record.payload).digest('hex')]] : []),
    ...(withoutPayload && own.length > 0 ? [['edgebridge-headers-dropped', String(own.length)]] : []),
  ] as [string, string | Buffer][];
  return {
    ...base,
    value: withoutPayload ? Buffer.alloc(0) : record.payload,
    timestamp: String(now),
    headers: headers as unknown as Message['headers'],
  };
}
