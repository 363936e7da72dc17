/**
 * The forwarder's thread. Kafka encoding, transactions and log reads run here, on their own event
 * loop and core, so that ingest (MQTT parsing and group commit) keeps the main thread. The
 * worker opens its own connections to the commit log (SQLite WAL allows one writer at a time
 * and readers alongside; better-sqlite3 waits on a busy lock). Protocol: forwarder-thread.ts.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { pino } from 'pino';
import type { Config } from '../config/schema.js';
import { describeError } from '../errors.js';
import { RouteTable } from '../ingress/routes.js';
import { CommitLog } from '../log/commit-log.js';
import { Forwarder } from './forwarder.js';
import { createKafka } from './kafka-client.js';
import { KafkaSink } from './kafka-sink.js';
import type { FromWorker, ToWorker, WorkerInit } from './forwarder-thread.js';

const port = parentPort!;
const post = (message: FromWorker): void => port.postMessage(message);
const { config, logLevel } = workerData as WorkerInit;

// Log lines go to the main thread, which writes them through its own logger: one ordered stream.
const logger = pino({ level: logLevel }, { write: (line: string) => post({ type: 'log', line }) });

function main(cfg: Config): void {
  const log = new CommitLog({ dir: cfg.storage.dir, synchronous: cfg.storage.synchronous });
  const sink = new KafkaSink({
    kafka: createKafka({
      brokers: cfg.kafka.brokers,
      clientId: cfg.kafka.clientId ?? `edgebridge-${cfg.gateway.id}`,
      connectionTimeoutMs: cfg.kafka.connectionTimeoutMs,
      requestTimeoutMs: cfg.kafka.requestTimeoutMs,
      logger,
    }),
    gatewayId: cfg.gateway.id,
    topics: new RouteTable(cfg.routes).kafkaTopics,
    checkpointTopic: cfg.forward.checkpointTopic,
    topicDefaults: cfg.kafka.topicDefaults,
    transactionTimeoutMs: cfg.forward.transactionTimeoutMs,
  });
  const forwarder = new Forwarder(log, sink, {
    batchMaxRecords: cfg.forward.batchMaxRecords,
    batchMaxBytes: cfg.forward.batchMaxBytes,
    commitIntervalMs: cfg.forward.commitIntervalMs,
    retry: cfg.forward.retry,
    logger,
    onRemoved: () => post({ type: 'removed' }),
    // report state changes at once; counters go out a few times a second
    onStateChange: () => report(),
  });

  const report = (): void => {
    post({ type: 'status', state: forwarder.state, counters: { ...forwarder.counters }, lastError: forwarder.lastErrorMessage });
  };
  const reporter = setInterval(() => report(), 250);

  port.on('message', (message: ToWorker) => {
    if (message.type === 'appended') {
      log.observeAppended(message.lastOffset);
      forwarder.notify();
    } else if (message.type === 'close') {
      void forwarder.close(message.timeoutMs).finally(() => {
        clearInterval(reporter);
        report();
        log.close();
        post({ type: 'closed' });
      });
    }
  });
  forwarder.start();
  report();
}

try {
  main(config);
} catch (err) {
  post({ type: 'fatal', message: describeError(err) });
}
