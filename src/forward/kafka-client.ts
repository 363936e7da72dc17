import { Kafka, logLevel, type LogEntry as KafkaLogEntry, type logCreator } from 'kafkajs';
import type { Logger } from 'pino';

export interface KafkaClientOptions {
  readonly brokers: readonly string[];
  readonly clientId: string;
  readonly connectionTimeoutMs?: number;
  readonly requestTimeoutMs?: number;
  readonly logger: Logger;
}

/**
 * kafkajs logs every failed connection attempt at ERROR; while the uplink is down that would be a
 * log flood. Its lines go to debug: the forwarder reports state changes itself, once each.
 */
function pinoLogCreator(logger: Logger): logCreator {
  const child = logger.child({ component: 'kafkajs' });
  return () =>
    ({ namespace, log }: KafkaLogEntry) => {
      const { message, ...extra } = log;
      child.debug({ namespace, ...extra }, message);
    };
}

export function createKafka(options: KafkaClientOptions): Kafka {
  return new Kafka({
    clientId: options.clientId,
    brokers: [...options.brokers],
    connectionTimeout: options.connectionTimeoutMs ?? 3000,
    requestTimeout: options.requestTimeoutMs ?? 30000,
    // Short inner retries: the forwarder's own backoff handles long outages.
    retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 2000 },
    logLevel: logLevel.INFO,
    logCreator: pinoLogCreator(options.logger),
  });
}
