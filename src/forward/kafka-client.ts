import { Kafka, logLevel, type LogEntry as KafkaLogEntry, type logCreator, type SASLOptions } from 'kafkajs';
import type { Logger } from 'pino';
import { keepCoordinatorAuthorizationErrors } from './kafkajs-coordinator.js';
import { NO_KAFKA_SECURITY, type KafkaSasl, type KafkaSecurity } from './kafka-security.js';

export { NO_KAFKA_SECURITY, readKafkaSecurity, type KafkaSasl, type KafkaSecurity, type KafkaTls } from './kafka-security.js';

export interface KafkaClientOptions {
  readonly brokers: readonly string[];
  readonly clientId: string;
  readonly connectionTimeoutMs?: number;
  readonly requestTimeoutMs?: number;
  readonly logger: Logger;
  /** TLS and SASL (readKafkaSecurity); plaintext without. */
  readonly security?: KafkaSecurity;
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

function saslOptions(sasl: KafkaSasl): SASLOptions {
  // one literal per mechanism: kafkajs's SASLOptions is a union keyed by it
  switch (sasl.mechanism) {
    case 'plain':
      return { mechanism: 'plain', username: sasl.username, password: sasl.password };
    case 'scram-sha-256':
      return { mechanism: 'scram-sha-256', username: sasl.username, password: sasl.password };
    case 'scram-sha-512':
      return { mechanism: 'scram-sha-512', username: sasl.username, password: sasl.password };
  }
}

export function createKafka(options: KafkaClientOptions): Kafka {
  keepCoordinatorAuthorizationErrors();
  const security = options.security ?? NO_KAFKA_SECURITY;
  return new Kafka({
    clientId: options.clientId,
    brokers: [...options.brokers],
    connectionTimeout: options.connectionTimeoutMs ?? 3000,
    requestTimeout: options.requestTimeoutMs ?? 30000,
    // Short inner retries: the forwarder's own backoff handles long outages.
    retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 2000 },
    logLevel: logLevel.INFO,
    logCreator: pinoLogCreator(options.logger),
    ...(security.ssl === false ? {} : { ssl: { ...security.ssl } }),
    ...(security.sasl === undefined ? {} : { sasl: saslOptions(security.sasl) }),
  });
}
