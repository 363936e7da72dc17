import { pino, type Logger, type redactOptions } from 'pino';

export type { Logger };

/**
 * Secrets never reach a log line, whatever object is logged by mistake: passwords (the Kafka SASL
 * password, at any of the depths a config, the forwarder's settings or kafkajs options put it)
 * and private keys (the PEM of kafka.ssl.keyFile in the forwarder's settings).
 */
export const REDACT: redactOptions = {
  paths: [
    'password',
    '*.password',
    '*.*.password',
    '*.*.*.password',
    '*.*.*.*.password',
    'sasl.password',
    'kafka.sasl.password',
    'config.kafka.sasl.password',
    'settings.kafka.security.sasl.password',
    'ssl.key',
    '*.ssl.key',
    '*.*.ssl.key',
    '*.*.*.ssl.key',
  ],
  censor: '[redacted]',
};

/** JSON lines on stdout (pino); pipe through pino-pretty for reading by eye. */
export function createLogger(level: string, name = 'edgebridge'): Logger {
  return pino({ name, level, base: { pid: process.pid }, redact: REDACT });
}
