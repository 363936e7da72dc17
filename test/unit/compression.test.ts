import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import lz4 from 'lz4js';
import { describe, expect, it } from 'vitest';
import kafkajs from 'kafkajs';
import { useCompression } from '../../src/forward/compression.js';

const { CompressionCodecs } = kafkajs;
type Codec = { compress(e: { buffer: Buffer }): Promise<Buffer>; decompress(b: Buffer): Promise<Buffer> };
const codec = (type: number) => (CompressionCodecs as unknown as Record<number, () => Codec>)[type]!();

/** The blocks of an LZ4 frame: [uncompressed?, bytes]. */
function blocks(frame: Buffer): { stored: boolean; bytes: Buffer }[] {
  const out: { stored: boolean; bytes: Buffer }[] = [];
  for (let at = 7; ; ) {
    const word = frame.readUInt32LE(at);
    at += 4;
    if (word === 0) return out;
    const length = word & 0x7fffffff;
    out.push({ stored: (word & 0x80000000) !== 0, bytes: frame.subarray(at, at + length) });
    at += length;
  }
}

describe('compression codecs', () => {
  it('lz4: frames Kafka accepts — independent blocks, each under 4 MiB by a margin, read back exactly', async () => {
    const type = await useCompression('lz4');
    const json = Buffer.from(
      Array.from({ length: 60_000 }, (_, i) => JSON.stringify({ bootId: 'b1', seq: i, t: (i * 7) % 311, note: 'reading' })).join(''),
    );
    const input = Buffer.concat([json, json, Buffer.from(Array.from({ length: 3 << 20 }, (_, i) => (i * 2654435761) >>> 24))]);
    const frame = await codec(type).compress({ buffer: input });
    expect(frame.subarray(0, 6).toString('hex')).toBe('04224d186070'); // magic, FLG: v1 + block independence, BD: 4 MiB
    const parts = blocks(frame);
    expect(parts.length).toBeGreaterThanOrEqual(3);
    let restored = Buffer.alloc(0);
    for (const part of parts) {
      const plain = part.stored ? part.bytes : Buffer.from(lz4.decompress(Buffer.concat([frame.subarray(0, 7), (() => { const b = Buffer.alloc(4); b.writeUInt32LE(part.bytes.length); return b; })(), part.bytes, Buffer.alloc(4)])));
      // Kafka's Java decoder writes a block into a buffer of exactly 4 MiB: leave it room
      expect(plain.length).toBeLessThanOrEqual((4 << 20) - 64);
      restored = Buffer.concat([restored, plain]);
    }
    expect(restored.equals(input)).toBe(true);
    expect((await codec(type).decompress(frame)).equals(input)).toBe(true);
  });

  it('zstd: reads a frame without a content size larger than 1 MiB (as Java producers and the zstd CLI stream them)', async () => {
    const type = await useCompression('zstd');
    // `zstd -c` of 5 MiB from a pipe: the frame header carries no content size (FHD 0x04)
    const frame = readFileSync(join(import.meta.dirname, '..', 'fixtures', 'streamed-5mib.zst'));
    expect(frame[4]! & 0xc0).toBe(0);
    expect((await codec(type).decompress(frame)).equals(Buffer.alloc(5 << 20, 'edgebridge '))).toBe(true);
  });
});
