import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import kafkajs from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { runFleet } from '../../firmware-sim/fleet.js';
import { useCompression, type Compression } from '../../src/forward/compression.js';
import { kafkaBrokers, startTestGateway, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';
import { expectExactlyOnce, verifyExactlyOnce } from '../helpers/verify.js';

const { CompressionCodecs, CompressionTypes } = kafkajs;
const TYPE: Record<Exclude<Compression, 'none'>, number> = {
  gzip: CompressionTypes.GZIP,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
};

const KAFKA_LIB = join(import.meta.dirname, '..', '..', 'kafka', 'target', 'lib');

/** The values Kafka's own Java consumer (kafka-tools ConsoleConsumer, read_committed) reads. */
async function javaConsume(topic: string, expected: number): Promise<string[]> {
  const { stdout } = await promisify(execFile)(
    'java',
    ['-cp', join(KAFKA_LIB, '*'), 'org.apache.kafka.tools.consumer.ConsoleConsumer', '--bootstrap-server', kafkaBrokers()[0]!,
      '--topic', topic, '--from-beginning', '--isolation-level', 'read_committed', '--max-messages', String(expected), '--timeout-ms', '60000'],
    { maxBuffer: 64 << 20, timeout: 120_000 },
  );
  return stdout.split('\n').filter((line) => line.length > 0);
}

/** Counts what this process's consumers decompress with `type`: proof the batches came compressed. */
async function countDecompressions(kind: Exclude<Compression, 'none'>): Promise<{ count: number }> {
  await useCompression(kind);
  const seen = { count: 0 };
  const codecs = CompressionCodecs as unknown as Record<number, () => { decompress(b: Buffer): Promise<Buffer> }>;
  const original = codecs[TYPE[kind]]!;
  codecs[TYPE[kind]] = () => {
    const codec = original();
    return {
      ...codec,
      decompress: async (buffer: Buffer) => {
        seen.count++;
        return codec.decompress(buffer);
      },
    };
  };
  return seen;
}

describe('kafka.compression', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  for (const kind of ['gzip', 'lz4', 'zstd'] as const) {
    it(`${kind}: the broker accepts the batches; kafkajs and Kafka's Java consumer (read_committed) get every reading once, in order`, async () => {
      const topic = uniqueName(`iot.${kind}`);
      const gw = await startTestGateway({ dir: tmp(), topic, overrides: { kafka: { brokers: kafkaBrokers(), compression: kind } } });
      cleanup(() => gw.close());
      const fleet = await runFleet({ url: gw.url, devices: 4, rate: 200, count: 50, qos: 1, keepPayloads: true });
      expect(fleet.acked).toBe(200);
      const decompressed = await countDecompressions(kind);
      const records = await consumeAll(kafkaBrokers(), topic, { expected: 200 });
      expectExactlyOnce(verifyExactlyOnce(records, fleet));
      expect(decompressed.count).toBeGreaterThan(0);
      // and Kafka's Java client (what most consuming teams run) decodes the same batches
      const java = await javaConsume(topic, 200);
      expect(java.sort()).toEqual(records.map((r) => r.value.toString('utf8')).sort());
    });
  }

  it('is refused at start when unknown, naming the choices', async () => {
    await expect(
      startTestGateway({ dir: tmp(), topic: 't', overrides: { kafka: { brokers: kafkaBrokers(), compression: 'snappy' as never } } }),
    ).rejects.toThrow(/kafka\.compression.*none.*gzip.*lz4.*zstd/s);
  });
});
