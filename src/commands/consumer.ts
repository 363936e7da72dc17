import { isUtf8 } from 'node:buffer';
import type { Consumer, EachBatchPayload, IHeaders, Kafka } from 'kafkajs';
import type { Logger } from 'pino';
import { describeError } from '../errors.js';
import { backoffDelay } from '../forward/backoff.js';
import type { CommandOutbox, ConsumedCommand, StoreResult } from '../log/outbox.js';
import { commandTopic } from './packet.js';

export interface CommandConsumerOptions {
  readonly kafka: Kafka;
  readonly outbox: CommandOutbox;
  /** The topic applications write commands to, keyed by device ID. */
  readonly topic: string;
  /** This gateway's own group: it reads every partition. */
  readonly groupId: string;
  readonly ttlMs: number;
  /** config commands.mqtt, and the MQTT limits a command must fit in to be deliverable. */
  readonly mqttTopic: string;
  /** config commands.replies (the Response Topic of MQTT 5 commands): it must fit the limits too. */
  readonly replyTopic?: string;
  readonly limits: { readonly maxTopicBytes: number; readonly maxTopicLevels: number; readonly maxPayloadBytes: number };
  /** Most commands waiting in the outbox: past it, reading pauses (Kafka keeps the rest). */
  readonly maxPending: number;
  readonly retry: { readonly initialMs: number; readonly maxMs: number };
  /** Partitions and replication of the command topic, when the gateway creates it. */
  readonly topicDefaults: { readonly partitions: number; readonly replicationFactor: number };
  readonly logger: Logger;
  /** After each batch is stored (and before its offset is committed to Kafka). */
  readonly onStored: (result: StoreResult) => void;
}

// A key or correlation id that would change the topic's shape, or name another device's subtree
// (a device `a` may receive devices/a/#, so a key `a/b` would reach it).
const UNFIT_DEVICE_ID = /[+#/\u0000]/;
const UNFIT_CORRELATION_ID = /[+#/\u0000]/;

/** The correlation id of a command: the `correlation-id` header (`correlationId` also accepted). */
function correlationId(headers: IHeaders | undefined): string | undefined {
  const value = headers?.['correlation-id'] ?? headers?.correlationId;
  const first = Array.isArray(value) ? value[0] : value;
  return first === undefined ? undefined : first.toString();
}

/** Longest content type passed on (MQTT 5 strings may be longer; a MIME type is not). */
const MAX_CONTENT_TYPE_BYTES = 256;

/**
 * The content type of a command: its `content-type` header (`contentType` also accepted), sent to
 * MQTT 5 devices as the Content Type property. Not UTF-8, empty, longer than 256 bytes or with
 * U+0000 (no MQTT 5 UTF-8 string): left out, the command goes without it.
 */
export function commandContentType(headers: IHeaders | undefined): string | undefined {
  const value = headers?.['content-type'] ?? headers?.contentType;
  const first = Array.isArray(value) ? value[0] : value;
  if (first === undefined) return undefined;
  const bytes = Buffer.isBuffer(first) ? first : Buffer.from(first);
  if (bytes.length === 0 || bytes.length > MAX_CONTENT_TYPE_BYTES || !isUtf8(bytes) || bytes.includes(0)) return undefined;
  return bytes.toString();
}

/**
 * Reads the command topic (read_committed, a group of this gateway's own so it sees every
 * partition) into the outbox, like a Kafka Connect sink task: each batch is stored with its
 * partition's position in one transaction, and only then is the offset committed to Kafka. A
 * crash between the two reads the batch again, and the outbox skips what it stored: a command is
 * never lost and never stored twice. Runs in the forwarder's thread, where kafkajs is loaded.
 */
export class CommandConsumer {
  private consumer: Consumer | undefined;
  private stopped = false;
  private stop: () => void = () => undefined;
  private readonly stopping = new Promise<void>((resolve) => (this.stop = resolve));
  private failing = false;

  constructor(private readonly options: CommandConsumerOptions) {}

  start(): void {
    void this.loop();
  }

  async close(): Promise<void> {
    this.stopped = true;
    this.stop();
    await this.consumer?.disconnect().catch(() => undefined);
  }

  private async loop(): Promise<void> {
    const { kafka, topic, groupId, logger, retry } = this.options;
    let attempt = 0;
    while (!this.stopped) {
      // A short session: after a crash, the restarted gateway's consumer waits this long for the
      // dead one to leave the group before it is given the partitions.
      const consumer = kafka.consumer({ groupId, readUncommitted: false, maxWaitTimeInMs: 500, sessionTimeout: 10_000 });
      this.consumer = consumer;
      try {
        // kafkajs restarts the consumer itself after retriable errors; one it gives up on ends
        // this run, and the loop starts over with backoff.
        const crashed = new Promise<Error>((resolve) =>
          consumer.on(consumer.events.CRASH, ({ payload }) => {
            if (!payload.restart) resolve(payload.error);
          }),
        );
        await this.ensureTopic();
        await consumer.connect();
        await consumer.subscribe({ topic, fromBeginning: true });
        await consumer.run({ autoCommit: false, eachBatchAutoResolve: false, eachBatch: (batch) => this.batch(consumer, batch) });
        if (this.failing) logger.info({ topic }, 'command consumer reading again');
        this.failing = false;
        attempt = 0;
        const outcome = await Promise.race([crashed, this.stopping]);
        if (outcome instanceof Error) throw outcome;
      } catch (err) {
        if (this.stopped) break;
        if (!this.failing) logger.warn({ topic, groupId, err: describeError(err) }, 'command consumer cannot read the command topic; retrying with backoff');
        this.failing = true;
        await consumer.disconnect().catch(() => undefined);
        await Promise.race([new Promise((r) => setTimeout(r, backoffDelay(attempt++, retry.initialMs, retry.maxMs))), this.stopping]);
      }
    }
  }

  private deliverable(deviceId: string, correlation: string, payload: Buffer | null): boolean {
    const { mqttTopic, replyTopic, limits } = this.options;
    if (deviceId === '' || UNFIT_DEVICE_ID.test(deviceId) || correlation === '' || UNFIT_CORRELATION_ID.test(correlation)) return false;
    // The reply topic too: a device could not publish its reply to a topic over the limits.
    const topics = [commandTopic(mqttTopic, deviceId, correlation), ...(replyTopic === undefined ? [] : [commandTopic(replyTopic, deviceId, correlation)])];
    return (
      topics.every((topic) => Buffer.byteLength(topic) <= limits.maxTopicBytes && topic.split('/').length <= limits.maxTopicLevels) &&
      (payload === null || payload.length <= limits.maxPayloadBytes)
    );
  }

  /**
   * Creates the command topic if it is missing (as the forwarder does its topics), so that
   * applications can write commands before any gateway read them.
   */
  private async ensureTopic(): Promise<void> {
    const { kafka, topic, topicDefaults } = this.options;
    const admin = kafka.admin();
    await admin.connect();
    try {
      if ((await admin.listTopics()).includes(topic)) return;
      await admin
        .createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: topicDefaults.partitions, replicationFactor: topicDefaults.replicationFactor }] })
        .catch((err: { type?: string }) => {
          if (err.type !== 'TOPIC_ALREADY_EXISTS') throw err;
        });
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  private async batch(consumer: Consumer, { batch, heartbeat, isRunning, isStale, resolveOffset }: EachBatchPayload): Promise<void> {
    const { outbox, ttlMs, maxPending, onStored } = this.options;
    if (batch.messages.length === 0) return;
    // Backpressure: nothing is read past maxPending waiting commands; Kafka keeps them meanwhile.
    while (isRunning() && !isStale() && outbox.openCount() >= maxPending) {
      await heartbeat();
      await new Promise((r) => setTimeout(r, 1000));
    }
    if (!isRunning() || isStale()) return;
    const commands: ConsumedCommand[] = batch.messages.map((m) => {
      // A key that is not UTF-8 names no device (it would read as U+FFFD, a topic no one can subscribe to).
      const deviceId = m.key === null || !isUtf8(m.key) ? null : m.key.toString();
      const cid = correlationId(m.headers);
      // What cannot be delivered is no command (counted invalid): a key or correlation id that
      // would break the topic, a topic or payload over the MQTT limits (aedes would fail to
      // write it and drop the device's connection, on every reconnect).
      const fit = deviceId !== null && this.deliverable(deviceId, cid ?? `${batch.partition}-${m.offset}`, m.value);
      return { offset: Number(m.offset), deviceId: fit ? deviceId : null, payload: m.value, correlationId: cid, contentType: commandContentType(m.headers), timestamp: Number(m.timestamp) };
    });
    // Throws on a log error: kafkajs retries the batch (nothing was committed, nothing skipped).
    const result = outbox.store(batch.topic, batch.partition, commands, ttlMs);
    onStored(result);
    const last = batch.messages[batch.messages.length - 1]!.offset;
    resolveOffset(last);
    await consumer.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: String(Number(last) + 1) }]);
    await heartbeat();
  }
}
