import { createRequire } from 'node:module';
import { Kafka, logLevel, type IHeaders, type KafkaConfig } from 'kafkajs';
import { useCompression } from '../../src/forward/compression.js';

/** kafkajs options of a secured broker (TLS, SASL); none for the plain test broker. */
export type KafkaClientSecurity = Pick<KafkaConfig, 'ssl' | 'sasl'>;

export interface ConsumedRecord {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  readonly key: string;
  readonly value: Buffer;
  readonly timestamp: string;
  /** The headers by name (a repeated name: its last value). */
  readonly headers: Record<string, string>;
  /** The headers as the record carries them: in order, repeated names kept, values as bytes. */
  readonly headerList: readonly (readonly [string, Buffer])[];
}

/** Where the hook below leaves a record's headers in order, beside kafkajs's object of them. */
const HEADER_PAIRS = Symbol.for('edgebridge.test.headerPairs');
let orderHooked = false;

/**
 * kafkajs's consumer gives headers as an object: a repeated name becomes an array and the order
 * between names is lost. To check order, the record decoder's header list is kept as well: the
 * Decoder reads a record's headers with readVarIntArray(HeaderDecoder) and reduces the list to
 * the object; the list is attached to that object under a symbol (not enumerable: nothing else
 * sees it). Only tests load this; the gateway's code is not changed by it.
 */
function keepHeaderOrder(): void {
  if (orderHooked) return;
  orderHooked = true;
  const require = createRequire(import.meta.url);
  const Decoder = require('kafkajs/src/protocol/decoder.js') as { prototype: { readVarIntArray: (reader: unknown) => unknown[] } };
  const HeaderDecoder = require('kafkajs/src/protocol/recordBatch/header/v0/decoder.js') as unknown;
  const original = Decoder.prototype.readVarIntArray;
  Decoder.prototype.readVarIntArray = function (this: unknown, reader: unknown) {
    const list = original.call(this, reader);
    if (reader !== HeaderDecoder) return list;
    const pairs = (list as { key: string; value: Buffer | null }[]).map(({ key, value }) => [key, value ?? Buffer.alloc(0)] as const);
    const reduce = list.reduce;
    Object.defineProperty(list, 'reduce', {
      value(...args: Parameters<typeof reduce>) {
        const result = reduce.apply(list, args) as object;
        Object.defineProperty(result, HEADER_PAIRS, { value: pairs, enumerable: false });
        return result;
      },
    });
    return list;
  };
}

function headerListOf(h: IHeaders | undefined): readonly (readonly [string, Buffer])[] {
  const pairs = (h as Record<symbol, unknown> | undefined)?.[HEADER_PAIRS];
  if (Array.isArray(pairs)) return pairs as (readonly [string, Buffer])[];
  // not decoded through the hook: the object's order (repeats after their first)
  const list: [string, Buffer][] = [];
  for (const [k, v] of Object.entries(h ?? {})) for (const x of Array.isArray(v) ? v : [v]) list.push([k, Buffer.from(x ?? '')]);
  return list;
}

export function testKafka(brokers: string[], client: KafkaClientSecurity = {}): Kafka {
  return new Kafka({ brokers, clientId: 'edgebridge-test', logLevel: logLevel.NOTHING, ...client });
}

function headersOf(h: IHeaders | undefined): Record<string, string> {
  return Object.fromEntries(Object.entries(h ?? {}).map(([k, v]) => [k, String(Array.isArray(v) ? v[v.length - 1] : v)]));
}

/**
 * Reads a topic from the beginning with a read_committed consumer group until `expected` records
 * arrived and then `settleMs` passed with nothing new (so extra, duplicate records would be seen),
 * or until `timeoutMs`.
 */
export async function consumeAll(
  brokers: string[],
  topic: string,
  {
    expected,
    timeoutMs = 60_000,
    settleMs = 2_000,
    client = {},
  }: { expected: number; timeoutMs?: number; settleMs?: number; client?: KafkaClientSecurity },
): Promise<ConsumedRecord[]> {
  await waitForTopic(brokers, topic, timeoutMs, client);
  keepHeaderOrder();
  await useCompression('lz4');
  await useCompression('zstd');
  const consumer = testKafka(brokers, client).consumer({
    groupId: `test-${topic}-${Math.random().toString(36).slice(2)}`,
    readUncommitted: false,
  });
  const records: ConsumedRecord[] = [];
  // A consumer group redelivers what it had not committed when it rejoins (for example while a
  // restarted cluster moves its group coordinator). Those are the same Kafka records read twice,
  // not duplicates in Kafka: they are told apart by partition and offset and dropped here.
  const seenOffsets = new Set<string>();
  let redelivered = 0;
  let lastArrival = Date.now();
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ topic: t, partition, message }) => {
        lastArrival = Date.now();
        const where = `${partition}:${message.offset}`;
        if (seenOffsets.has(where)) {
          redelivered++;
          return;
        }
        seenOffsets.add(where);
        records.push({
          topic: t,
          partition,
          offset: message.offset,
          key: message.key?.toString('utf8') ?? '',
          value: message.value ?? Buffer.alloc(0),
          timestamp: message.timestamp,
          headers: headersOf(message.headers),
          headerList: headerListOf(message.headers),
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
  if (redelivered > 0) console.info(`consumeAll(${topic}): ${redelivered} records redelivered by the consumer group, counted once`);
  return records;
}

/** The gateway creates its topics in the background; a consumer subscribing earlier would fail. */
export async function waitForTopic(brokers: string[], topic: string, timeoutMs = 30_000, client: KafkaClientSecurity = {}): Promise<void> {
  const admin = testKafka(brokers, client).admin();
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

/**
 * Reads a topic with Apache Kafka's own Java console consumer (read_committed), the reference
 * implementation of transactional reads: an independent check that does not share kafkajs's
 * consumer code with the gateway. Exits after `idleMs` without new records.
 */
export async function consumeWithJava(
  brokers: string[],
  topic: string,
  { idleMs = 10_000, timeoutMs = 120_000 }: { idleMs?: number; timeoutMs?: number } = {},
): Promise<ConsumedRecord[]> {
  const { spawn } = await import('node:child_process');
  const { join } = await import('node:path');
  const root = join(import.meta.dirname, '..', '..');
  await waitForTopic(brokers, topic);
  const child = spawn(
    'java',
    [
      '-cp',
      join(root, 'kafka', 'target', 'lib', '*'),
      `-Dlog4j2.configurationFile=${join(root, 'kafka', 'log4j2.yaml')}`,
      'org.apache.kafka.tools.consumer.ConsoleConsumer',
      '--bootstrap-server',
      brokers.join(','),
      '--topic',
      topic,
      '--from-beginning',
      '--isolation-level',
      'read_committed',
      '--group',
      `test-java-${Math.random().toString(36).slice(2)}`,
      '--property',
      'print.partition=true',
      '--property',
      'print.offset=true',
      '--property',
      'print.key=true',
      '--timeout-ms',
      String(idleMs),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await new Promise((resolve) => child.once('exit', resolve));
  clearTimeout(timer);
  const records: ConsumedRecord[] = [];
  for (const line of out.split('\n')) {
    const m = /^Partition:(\d+)\tOffset:(\d+)\t([^\t]*)\t(.*)$/.exec(line);
    if (!m) continue;
    records.push({
      topic,
      partition: Number(m[1]),
      offset: m[2]!,
      key: m[3]!,
      value: Buffer.from(m[4]!, 'utf8'),
      timestamp: '',
      headers: {},
      headerList: [],
    });
  }
  if (records.length === 0) throw new Error(`the Java console consumer read nothing from ${topic}: ${err.slice(-2000)}`);
  return records;
}
