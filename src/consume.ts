import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { createKafka } from './forward/kafka-client.js';

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
}

/**
 * `edgebridge consume`: the classic Kafka consumer example. Reads committed records only
 * (read_committed) with a consumer group and prints key, partition, offset and value.
 */
export async function consume(options: ConsumeOptions): Promise<number> {
  const write = options.write ?? ((line: string) => process.stdout.write(`${line}\n`));
  const kafka = createKafka({ brokers: options.brokers, clientId: 'edgebridge-consume', logger: options.logger });
  const consumer = kafka.consumer({
    groupId: options.group ?? `edgebridge-consume-${randomUUID().slice(0, 8)}`,
    readUncommitted: false,
  });
  let count = 0;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  options.signal?.addEventListener('abort', () => finish(), { once: true });

  await consumer.connect();
  try {
    await consumer.subscribe({ topic: options.topic, fromBeginning: options.fromBeginning });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        if (options.maxMessages !== undefined && count >= options.maxMessages) return;
        count++;
        const key = message.key?.toString('utf8') ?? '';
        const value = message.value?.toString('utf8') ?? '';
        if (options.json) {
          const headers = Object.fromEntries(
            Object.entries(message.headers ?? {}).map(([k, v]) => [k, v?.toString() ?? null]),
          );
          write(JSON.stringify({ key, partition, offset: message.offset, timestamp: message.timestamp, headers, value }));
        } else {
          write(`${key}\tpartition=${partition}\toffset=${message.offset}\t${value}`);
        }
        if (options.maxMessages !== undefined && count >= options.maxMessages) finish();
      },
    });
    await finished;
  } finally {
    await consumer.disconnect();
  }
  return count;
}
