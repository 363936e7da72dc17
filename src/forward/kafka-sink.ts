import { Partitioners, type Admin, type Kafka, type Message, type Producer } from 'kafkajs';
import type { LogRecord } from '../log/commit-log.js';

/** The forwarder's view of Kafka: small enough to replace with an in-memory sink in unit tests. */
export interface RecordSink {
  /** Connects and makes sure the target topics exist. */
  connect(): Promise<void>;
  /** Resolves once Kafka acknowledged every record (acks=all); rejects if any was not. */
  send(records: readonly LogRecord[]): Promise<void>;
  /** Drops the connection so the next `connect` starts from a fresh producer. */
  reset(): Promise<void>;
  close(): Promise<void>;
}

export interface KafkaSinkOptions {
  readonly kafka: Kafka;
  readonly gatewayId: string;
  readonly topics: readonly string[];
  readonly topicDefaults: { readonly partitions: number; readonly replicationFactor: number };
}

/**
 * Produces log records with an idempotent producer (acks=all, one request in flight so a retry
 * cannot reorder a device's records). Partitioning is kafkajs's DefaultPartitioner: the Java
 * client's murmur2(key) so Java, Go and Streams apps co-partition with these topics.
 */
export class KafkaSink implements RecordSink {
  private producer: Producer | undefined;
  private topicsReady = false;

  constructor(private readonly options: KafkaSinkOptions) {}

  async connect(): Promise<void> {
    if (!this.topicsReady) {
      await this.ensureTopics();
      this.topicsReady = true;
    }
    if (this.producer) return;
    const producer = this.options.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      createPartitioner: Partitioners.DefaultPartitioner,
      allowAutoTopicCreation: false,
    });
    try {
      await producer.connect();
    } catch (err) {
      await producer.disconnect().catch(() => undefined);
      throw err;
    }
    this.producer = producer;
  }

  private async ensureTopics(): Promise<void> {
    const admin: Admin = this.options.kafka.admin();
    await admin.connect();
    try {
      const existing = new Set(await admin.listTopics());
      const missing = this.options.topics.filter((t) => !existing.has(t));
      if (missing.length > 0) {
        await admin.createTopics({
          waitForLeaders: true,
          topics: missing.map((topic) => ({
            topic,
            numPartitions: this.options.topicDefaults.partitions,
            replicationFactor: this.options.topicDefaults.replicationFactor,
          })),
        });
      }
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  async send(records: readonly LogRecord[]): Promise<void> {
    if (!this.producer) throw new Error('kafka sink is not connected');
    const byTopic = new Map<string, Message[]>();
    for (const r of records) {
      let messages = byTopic.get(r.kafkaTopic);
      if (!messages) byTopic.set(r.kafkaTopic, (messages = []));
      messages.push(toMessage(r, this.options.gatewayId));
    }
    await this.producer.sendBatch({
      acks: -1,
      topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })),
    });
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

export function toMessage(record: LogRecord, gatewayId: string): Message {
  return {
    key: record.deviceId,
    value: record.payload,
    timestamp: String(record.receivedAt),
    headers: { 'mqtt-topic': record.mqttTopic, 'gateway-id': gatewayId },
  };
}
