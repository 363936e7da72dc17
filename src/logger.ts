import { pino, type DestinationStream, type Logger, type redactOptions } from 'pino';

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

/** Sees every line a logger (and its children) writes at or above its level. */
export interface LogTap {
  note(level: number, fields: Record<string, unknown> | undefined, message: string): void;
}

/**
 * JSON lines on stdout (pino); pipe through pino-pretty for reading by eye. `tap` sees each line
 * logged (the status page's recent errors).
 */
export function createLogger(level: string, name = 'edgebridge', tap?: LogTap, destination?: DestinationStream): Logger {
  const options = {
    name,
    level,
    base: { pid: process.pid },
    redact: REDACT,
    ...(tap === undefined
      ? {}
      : {
          hooks: {
            logMethod(args: unknown[], method: (...a: unknown[]) => void, level: number) {
              const [first, second] = args;
              if (typeof first === 'string') tap.note(level, undefined, first);
              else if (first instanceof Error) tap.note(level, { err: first.message }, typeof second === 'string' ? second : first.message);
              else tap.note(level, first as Record<string, unknown> | undefined, typeof second === 'string' ? second : '');
              method.apply(this, args);
            },
          },
        }),
  };
  return destination === undefined ? pino(options) : pino(options, destination);
}
