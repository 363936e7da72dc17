import { Kafka, logLevel, type IHeaders } from 'kafkajs';

export interface ConsumedRecord {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  readonly key: string;
  readonly value: Buffer;
  readonly timestamp: string;
  readonly headers: Record<string, string>;
}

export function testKafka(brokers: string[]): Kafka {
  return new Kafka({ brokers, clientId: 'edgebridge-test', logLevel: logLevel.NOTHING });
}

function headersOf(h: IHeaders | undefined): Record<string, string> {
  return Object.fromEntries(Object.entries(h ?? {}).map(([k, v]) => [k, String(v)]));
}

/**
 * Reads a topic from the beginning with a read_committed consumer group until `expected` records
 * arrived and then `settleMs` passed with nothing new (so extra, duplicate records would be seen),
 * or until `timeoutMs`.
 */
export async function consumeAll(
  brokers: string[],
  topic: string,
  { expected, timeoutMs = 60_000, settleMs = 2_000 }: { expected: number; timeoutMs?: number; settleMs?: number },
): Promise<ConsumedRecord[]> {
  await waitForTopic(brokers, topic, timeoutMs);
  const consumer = testKafka(brokers).consumer({
    groupId: `test-${topic}-${Math.random().toString(36).slice(2)}`,
    readUncommitted: false,
  });
  const records: ConsumedRecord[] = [];
  let lastArrival = Date.now();
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ topic: t, partition, message }) => {
        lastArrival = Date.now();
        records.push({
          topic: t,
          partition,
          offset: message.offset,
          key: message.key?.toString('utf8') ?? '',
          value: message.value ?? Buffer.alloc(0),
          timestamp: message.timestamp,
          headers: headersOf(message.headers),
        });
      },
    });
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (records.length >= expected && Date.now() - lastArrival >= settleMs) break;
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await consumer.disconnect();
  }
  return records;
}

/** The gateway creates its topics in the background; a consumer subscribing earlier would fail. */
export async function waitForTopic(brokers: string[], topic: string, timeoutMs = 30_000): Promise<void> {
  const admin = testKafka(brokers).admin();
  await admin.connect();
  try {
    const deadline = Date.now() + timeoutMs;
    while (!(await admin.listTopics()).includes(topic)) {
      if (Date.now() > deadline) throw new Error(`topic ${topic} was not created within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await admin.disconnect();
  }
}

export async function partitionCount(brokers: string[], topic: string): Promise<number> {
  const admin = testKafka(brokers).admin();
  await admin.connect();
  try {
    const meta = await admin.fetchTopicMetadata({ topics: [topic] });
    return meta.topics[0]!.partitions.length;
  } finally {
    await admin.disconnect();
  }
}
