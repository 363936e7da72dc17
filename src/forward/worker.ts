/**
 * The forwarder's thread. Kafka encoding, transactions and log reads run here, on their own event
 * loop and core, so that ingest (MQTT parsing and group commit) keeps the main thread. It builds
 * its parts from the ForwardSettings gateway.ts hands it, and nothing else: its own connection
 * to the commit log (LogReader), the Kafka sink and the forwarder. Protocol: forwarder-thread.ts.
 */
import { join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import type { Kafka } from 'kafkajs';
import { pino } from 'pino';
import { EdgebridgeError, describeError } from '../errors.js';
import { CommandConsumer } from '../commands/consumer.js';
import { DB_FILE, limitWal, openDatabase } from '../log/database.js';
import { LogReader } from '../log/log-reader.js';
import { CommandOutbox } from '../log/outbox.js';
import { REDACT } from '../logger.js';
import { Forwarder } from './forwarder.js';
import { createKafka } from './kafka-client.js';
import { KafkaSink } from './kafka-sink.js';
import type { FromWorker, ToWorker } from './forwarder-thread.js';
import { forwarderLimits, type CommandConsumerSettings, type ForwardSettings } from './settings.js';

const port = parentPort!;
const post = (message: FromWorker): void => port.postMessage(message);
const settings = workerData as ForwardSettings;

// Log lines go to the main thread, which writes them through its own logger: one ordered stream.
const logger = pino({ level: settings.logLevel, redact: REDACT }, { write: (line: string) => post({ type: 'log', line }) });

function main(s: ForwardSettings): void {
  const reader = new LogReader({ dir: s.storage.dir, synchronous: s.storage.synchronous, walLimitBytes: s.storage.walLimitBytes });
  const kafka = createKafka({ ...s.kafka, logger });
  const sink = new KafkaSink({
    kafka,
    gatewayId: s.gatewayId,
    logId: reader.logId,
    // this process's epoch: the newest, the gateway opened the log before starting this thread
    writer: reader.epochs().at(-1)?.id ?? reader.logId,
    topics: s.topics,
    checkpointTopic: s.checkpointTopic,
    ...(s.deadLetterTopic === undefined ? {} : { deadLetterTopic: s.deadLetterTopic }),
    topicDefaults: s.kafka.topicDefaults,
    transactionTimeoutMs: s.transactionTimeoutMs,
    compression: s.kafka.compression,
  });
  const forwarder = new Forwarder(reader, sink, {
    ...forwarderLimits(s),
    logger,
    onRemoved: () => post({ type: 'removed' }),
    onStateChange: (state) => post({ type: 'state', state, lastError: forwarder.lastErrorMessage }),
    // Deltas, one message per transaction: a count is never lost when this thread ends.
    onProgress: (delta, batch) => post({ type: 'progress', delta, ...(batch === undefined ? {} : { batch }) }),
  });

  const commands = s.commands === undefined ? undefined : startCommandConsumer(s, s.commands, kafka);

  port.on('message', (message: ToWorker) => {
    if (message.type === 'appended') {
      forwarder.notify(message.lastOffset);
    } else if (message.type === 'logLevel') {
      logger.level = message.level;
    } else if (message.type === 'close') {
      void Promise.all([forwarder.close(message.timeoutMs), commands?.close()]).finally(() => {
        reader.close();
        post({ type: 'closed' });
      });
    }
  });
  forwarder.start();
}

/** The command consumer, on a connection of its own (its transactions sync like the log's). */
function startCommandConsumer(s: ForwardSettings, c: CommandConsumerSettings, kafka: Kafka): { close(): Promise<void> } {
  const db = openDatabase(join(s.storage.dir, DB_FILE), { busyTimeoutMs: 5000, moveAsideIfCorrupt: false });
  db.pragma(`synchronous = ${s.storage.synchronous.toUpperCase()}`);
  limitWal(db, s.storage.walLimitBytes);
  const consumer = new CommandConsumer({
    kafka,
    outbox: new CommandOutbox(db),
    topic: c.topic,
    groupId: c.groupId,
    ttlMs: c.ttlMs,
    maxPending: c.maxPending,
    mqttTopic: c.mqttTopic,
    ...(c.replyTopic === undefined ? {} : { replyTopic: c.replyTopic }),
    limits: c.limits,
    retry: s.retry,
    topicDefaults: s.kafka.topicDefaults,
    logger: logger.child({ stage: 'commands' }),
    onStored: (result) => post({ type: 'commands', result }),
  });
  consumer.start();
  return {
    close: async () => {
      await consumer.close();
      db.close();
    },
  };
}

try {
  main(settings);
} catch (err) {
  post({ type: 'fatal', message: describeError(err), code: err instanceof EdgebridgeError ? err.code : undefined });
}
