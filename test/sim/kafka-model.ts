import { RecordRejectedError, type Checkpoint, type ConnectResult, type ForwardBatch, type RecordSink } from '../../src/forward/sink.js';

/**
 * An in-memory model of a transactional Kafka cluster, as the forwarder relies on it: a
 * transaction's records and checkpoint become visible together or not at all; InitProducerId
 * bumps the producer epoch and fences older producers with the same transactional id; a record
 * larger than its topic's max.message.bytes is refused for good. Faults are injected by the
 * simulator: the cluster down, a failure before or after the commit took effect (a lost
 * response), a fence (a transaction that outlived its timeout), missing ACLs.
 */
export interface ModelRecord {
  readonly topic: string;
  /** The log offset it was forwarded from (the model's own bookkeeping, for the oracle). */
  readonly offset: number;
  readonly key: string;
  readonly value: Buffer;
  readonly headers: Readonly<Record<string, string>>;
}

export type SendFault = 'fail-before' | 'fail-after' | 'fence' | 'leader-moved';

export class KafkaModel {
  /** Committed records per topic, in commit order (per key, that is partition order). */
  readonly topics = new Map<string, { maxMessageBytes: number; records: ModelRecord[] }>();
  /**
   * The checkpoint partition (shared by all gateways), in order: checkpoints, and the probe each
   * connect commits right after fencing (with the log that wrote it, and whether it claims).
   */
  readonly checkpoints: { key: string; writer: string; value?: Checkpoint; probe?: { logId: string; claim: boolean } }[] = [];
  private readonly producerEpochs = new Map<string, number>();
  down = false;
  /** Missing ACLs: every request is refused with an authorization error. */
  denied = false;
  /** Faults the next non-empty transactions run into, in order. */
  readonly faults: SendFault[] = [];
  transactions = 0;

  constructor(readonly defaultMaxMessageBytes: number) {}

  createTopic(name: string, maxMessageBytes = this.defaultMaxMessageBytes): void {
    if (!this.topics.has(name)) this.topics.set(name, { maxMessageBytes, records: [] });
  }

  initProducer(transactionalId: string): number {
    const epoch = (this.producerEpochs.get(transactionalId) ?? 0) + 1;
    this.producerEpochs.set(transactionalId, epoch);
    return epoch;
  }

  epochOf(transactionalId: string): number {
    return this.producerEpochs.get(transactionalId) ?? 0;
  }

  /** What a read of the checkpoint partition up to `before` finds for `key`, as KafkaSink reads it. */
  readCheckpoints(key: string, logId: string, writer: string, before: number): { checkpoint: Checkpoint | undefined; foreignClaim: boolean } {
    let latest: Checkpoint | undefined;
    let latestOwn: Checkpoint | undefined;
    let foreignClaim = false;
    for (let i = 0; i < before; i++) {
      const entry = this.checkpoints[i]!;
      if (entry.key !== key) continue;
      if (entry.writer === writer) foreignClaim = false;
      else if (entry.value || entry.probe?.claim) foreignClaim = true;
      if (entry.value) {
        latest = { ...entry.value, kafkaOffset: i };
        if (entry.value.logId === logId) latestOwn = latest;
      }
    }
    return { checkpoint: latestOwn ?? latest, foreignClaim };
  }

  records(topic: string): readonly ModelRecord[] {
    return this.topics.get(topic)?.records ?? [];
  }
}

function typed(message: string, type: string): Error {
  return Object.assign(new Error(message), { type });
}

export interface ModelSinkOptions {
  readonly gatewayId: string;
  /** Topics whose metadata the sink learns at connect; sending to any other one fails. */
  readonly topics: readonly string[];
  readonly checkpointTopic: string;
  readonly deadLetterTopic: string | undefined;
  /** Called on every connect after the first: `afterTrouble` unless Kafka failed since the last one. */
  readonly onReconnect?: (afterTrouble: boolean) => void;
  /** Called while a transaction is in flight, before it commits. */
  readonly duringSend?: () => void;
  /** The log this sink forwards (its probes carry it). */
  readonly logId?: string;
  /** Who writes: the epoch the process opened the log with (see KafkaSinkOptions.writer). */
  readonly writer?: string;
  /** Awaited between the fence (and probe) and the checkpoint read, as a consumer join takes time. */
  readonly readGate?: () => Promise<void>;
}

/**
 * The forwarder's sink against the model. Like the KafkaSink the gateway shipped before, it knows
 * the partitions of the topics it was given at connect only: a record for any other topic fails
 * with a retriable error. That makes the simulator check that the gateway gives the forwarder
 * every topic in its backlog.
 */
export class ModelSink implements RecordSink {
  private epoch: number | undefined;
  private readonly transactionalId: string;
  private readonly known = new Set<string>();
  private connectedBefore = false;
  private get writer(): string {
    return this.options.writer ?? this.options.logId ?? '';
  }
  /** Kafka (not a refused record) failed a request since the last connect. */
  private trouble = false;

  constructor(
    private readonly model: KafkaModel,
    private readonly options: ModelSinkOptions,
  ) {
    this.transactionalId = `edgebridge-${options.gatewayId}`;
  }

  private check(): void {
    if (this.model.down) throw typed('connect ECONNREFUSED (model: kafka down)', 'KAFKA_DOWN');
    if (this.model.denied) throw typed('not authorized (model: ACLs missing)', 'TRANSACTIONAL_ID_AUTHORIZATION_FAILED');
  }

  async connect(options?: { checking: boolean }): Promise<ConnectResult> {
    try {
      const probe = this.fence(options?.checking ?? false);
      await this.options.readGate?.();
      this.check();
      return this.model.readCheckpoints(this.options.gatewayId, this.options.logId ?? '', this.writer, probe);
    } catch (err) {
      this.trouble = true;
      throw err;
    }
  }

  /** InitProducerId (fencing older producers) and the probe; returns the probe's offset. */
  private fence(checking: boolean): number {
    this.check();
    if (this.connectedBefore) this.options.onReconnect?.(this.trouble);
    this.connectedBefore = true;
    this.trouble = false;
    const { topics, checkpointTopic, deadLetterTopic } = this.options;
    for (const t of [...topics, checkpointTopic, ...(deadLetterTopic ? [deadLetterTopic] : [])]) {
      this.model.createTopic(t);
      this.known.add(t);
    }
    this.epoch = this.model.initProducer(this.transactionalId);
    this.model.checkpoints.push({ key: this.options.gatewayId, writer: this.writer, probe: { logId: this.options.logId ?? '', claim: !checking } });
    return this.model.checkpoints.length - 1;
  }

  async send(batch: ForwardBatch, checkpoint: Checkpoint): Promise<number | undefined> {
    try {
      return this.doSend(batch, checkpoint);
    } catch (err) {
      if (!(err instanceof RecordRejectedError)) this.trouble = true;
      throw err;
    }
  }

  private doSend(batch: ForwardBatch, checkpoint: Checkpoint): number | undefined {
    if (this.epoch === undefined) throw new Error('model sink is not connected');
    this.check();
    if (this.epoch !== this.model.epochOf(this.transactionalId)) {
      throw typed('Producer attempted an operation with an old epoch', 'INVALID_PRODUCER_EPOCH');
    }
    const real = batch.records.length + batch.deadLetters.length > 0;
    const fault = real ? this.model.faults.shift() : undefined;
    if (fault === 'fail-before') throw typed('Request timed out (model: before the commit)', 'REQUEST_TIMED_OUT');
    if (fault === 'leader-moved') throw typed('This server is not the leader for that topic-partition (model)', 'NOT_LEADER_OR_FOLLOWER');
    if (fault === 'fence') {
      // the transaction outlived transaction.timeout.ms: the coordinator aborted it and bumped the epoch
      this.model.initProducer(this.transactionalId);
      throw typed('Producer attempted an operation with an old epoch (model: transaction timed out)', 'INVALID_PRODUCER_EPOCH');
    }
    const staged: ModelRecord[] = [];
    for (const r of batch.records) {
      if (!this.known.has(r.kafkaTopic)) throw new Error(`no partition metadata for topic ${r.kafkaTopic}`);
      const topic = this.model.topics.get(r.kafkaTopic)!;
      if (r.payload.length > topic.maxMessageBytes) {
        throw new RecordRejectedError('MESSAGE_TOO_LARGE', r.kafkaTopic, false, `model: ${r.payload.length} > max.message.bytes`);
      }
      staged.push({ topic: r.kafkaTopic, offset: r.offset, key: r.deviceId, value: r.payload, headers: { 'mqtt-topic': r.mqttTopic } });
    }
    const dlq = this.options.deadLetterTopic;
    for (const d of batch.deadLetters) {
      if (!dlq) throw new Error('model: a dead letter without a dead-letter topic');
      const topic = this.model.topics.get(dlq)!;
      if (d.record.payload.length > topic.maxMessageBytes) {
        throw new RecordRejectedError('MESSAGE_TOO_LARGE', dlq, true, 'model: the dead-letter topic refuses it too');
      }
      staged.push({
        topic: dlq,
        offset: d.record.offset,
        key: d.record.deviceId,
        value: d.record.payload,
        headers: { 'edgebridge-error': d.reason, 'edgebridge-original-topic': d.record.kafkaTopic },
      });
    }
    // The gateway's ingest thread goes on while a transaction is in flight.
    this.options.duringSend?.();
    if (this.epoch !== this.model.epochOf(this.transactionalId)) {
      throw typed('Producer attempted an operation with an old epoch', 'INVALID_PRODUCER_EPOCH');
    }
    // commit: all or nothing
    for (const r of staged) this.model.topics.get(r.topic)!.records.push(r);
    this.model.checkpoints.push({ key: this.options.gatewayId, writer: this.writer, value: checkpoint });
    this.model.transactions++;
    const offset = this.model.checkpoints.length - 1;
    if (fault === 'fail-after') throw typed('Request timed out (model: after the commit took effect)', 'REQUEST_TIMED_OUT');
    return offset;
  }

  async reset(): Promise<void> {
    this.epoch = undefined;
  }

  async close(): Promise<void> {
    this.epoch = undefined;
  }
}
