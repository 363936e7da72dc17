import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { EdgebridgeError } from './errors.js';
import { useCompression } from './forward/compression.js';
import { createKafka, type KafkaSecurity } from './forward/kafka-client.js';
import { authenticationFailure, authorizationFailure, explainAuthenticationFailure } from './forward/sink.js';

export interface ConsumeOptions {
  readonly brokers: readonly string[];
  readonly topic: string;
  readonly group?: string;
  readonly fromBeginning: boolean;
  readonly maxMessages?: number;
  readonly json: boolean;
  readonly logger: Logger;
  readonly write?: (line: string) => void;
  readonly signal?: AbortSignal;
  /** kafka.ssl and kafka.sasl of the config, files read (readKafkaSecurity); plaintext without. */
  readonly security?: KafkaSecurity;
}

/**
 * `edgebridge consume`: the classic Kafka consumer example. Reads committed records only
 * (read_committed) with a consumer group and prints key, partition, offset and value.
 */
export async function consume(options: ConsumeOptions): Promise<number> {
  const write = options.write ?? ((line: string) => process.stdout.write(`${line}\n`));
  const kafka = createKafka({
    brokers: options.brokers,
    clientId: 'edgebridge-consume',
    logger: options.logger,
    ...(options.security === undefined ? {} : { security: options.security }),
  });
  // Gateways may forward with kafka.compression lz4 or zstd: reading them needs their codecs.
  await useCompression('lz4');
  await useCompression('zstd');
  const groupId = options.group ?? `edgebridge-consume-${randomUUID().slice(0, 8)}`;
  const consumer = kafka.consumer({ groupId, readUncommitted: false });
  let count = 0;
  let finish: () => void = () => undefined;
  let fail: (err: unknown) => void = () => undefined;
  const finished = new Promise<void>((resolve, reject) => {
    finish = resolve;
    fail = reject;
  });
  options.signal?.addEventListener('abort', () => finish(), { once: true });
  // A consumer that crashed for good (missing ACLs, ...) must end the command with the reason,
  // not leave it waiting on nothing.
  consumer.on(consumer.events.CRASH, ({ payload }) => {
    if (authorizationFailure(payload.error) !== undefined || !payload.restart) fail(explain(payload.error, options, groupId));
  });

  try {
    await consumer.connect();
  } catch (err) {
    throw explain(err, options, groupId);
  }
  try {
    await consumer.subscribe({ topic: options.topic, fromBeginning: options.fromBeginning });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        if (options.maxMessages !== undefined && count >= options.maxMessages) return;
        count++;
        const key = message.key?.toString('utf8') ?? '';
        const value = message.value?.toString('utf8') ?? '';
        if (options.json) {
          // A name that came more than once (MQTT 5 user properties) keeps each value, in order.
          const text = (v: Buffer | string | undefined) => v?.toString() ?? null;
          const headers = Object.fromEntries(
            Object.entries(message.headers ?? {}).map(([k, v]) => [k, Array.isArray(v) ? v.map(text) : text(v)]),
          );
          write(JSON.stringify({ key, partition, offset: message.offset, timestamp: message.timestamp, headers, value }));
        } else {
          write(`${key}\tpartition=${partition}\toffset=${message.offset}\t${value}`);
        }
        if (options.maxMessages !== undefined && count >= options.maxMessages) finish();
      },
    });
    await finished;
  } catch (err) {
    throw explain(err, options, groupId);
  } finally {
    await consumer.disconnect();
  }
  return count;
}

/** A refused login, an untrusted broker or missing ACLs, said like the gateway says them. */
function explain(err: unknown, options: ConsumeOptions, groupId: string): unknown {
  if (err instanceof EdgebridgeError) return err;
  const { ssl, sasl, caFile } = options.security ?? { ssl: false, sasl: undefined, caFile: undefined };
  const failure = authenticationFailure(err);
  if (failure !== undefined) {
    const message = explainAuthenticationFailure(failure, { tls: ssl !== false, caFile, username: sasl?.username, mechanism: sasl?.mechanism });
    return new EdgebridgeError(failure.kind === 'sasl' ? 'EB_ERR_FORWARD_AUTHENTICATION' : 'EB_ERR_FORWARD_TLS', message, { cause: err });
  }
  const denied = authorizationFailure(err);
  if (denied !== undefined) {
    const principal = sasl ? `User:${sasl.username}` : 'this client';
    return new EdgebridgeError(
      'EB_ERR_FORWARD_UNAUTHORIZED',
      `Kafka refuses ${principal} to read (${denied}): grant it --operation Read on --topic ${options.topic} and on --group ${groupId}` +
        (options.group === undefined ? ' (or on the prefix edgebridge-consume- with --resource-pattern-type prefixed, or pass --group)' : ''),
      { cause: err },
    );
  }
  return err;
}
