import kafkajs, { type CompressionTypes as CompressionType } from 'kafkajs';

// kafkajs is CommonJS and Node's ESM loader does not see these two as named exports.
const { CompressionCodecs, CompressionTypes } = kafkajs;

/** kafka.compression: how record batches are compressed on the way up (bytes on a metered link). */
export type Compression = 'none' | 'gzip' | 'lz4' | 'zstd';

const TYPES: Record<Compression, CompressionType> = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
};

/** kafkajs's defaults for LZ4 and zstd throw "not implemented": replaced once, on first use. */
const registered = new Set<Compression>(['none', 'gzip']);

/** The shape kafkajs expects of a codec (its typings leave it as `any`). */
interface Codec {
  compress(encoder: { buffer: Buffer }): Promise<Buffer>;
  decompress(buffer: Buffer): Promise<Buffer>;
}

/**
 * The kafkajs compression type for `kind`, registering its codec on first use. gzip is built into
 * kafkajs; LZ4 (lz4js) and zstd (zstd compiled to WebAssembly) are pure JavaScript/wasm packages,
 * so nothing native is downloaded or compiled at install, and they are loaded only when chosen
 * (the wasm module takes memory).
 */
export async function useCompression(kind: Compression): Promise<CompressionType> {
  if (registered.has(kind)) return TYPES[kind];
  if (kind === 'lz4') {
    const lz4 = await import('lz4js');
    const xxh32 = await import('lz4js/xxh32.js');
    const codec: Codec = {
      compress: async ({ buffer }) => lz4Frame(lz4, xxh32.hash, buffer),
      decompress: async (buffer) => Buffer.from(lz4.decompress(buffer)),
    };
    CompressionCodecs[CompressionTypes.LZ4] = () => codec;
  } else if (kind === 'zstd') {
    const zstd = await import('@bokuweb/zstd-wasm');
    await zstd.init();
    const codec: Codec = {
      compress: async ({ buffer }) => Buffer.from(zstd.compress(buffer, 3)),
      decompress: async (buffer) => zstdDecompress(zstd.decompress, buffer),
    };
    CompressionCodecs[CompressionTypes.ZSTD] = () => codec;
  }
  registered.add(kind);
  return TYPES[kind];
}

/**
 * Input per block: a little under the 4 MiB the BD byte 0x70 announces. lz4js may start a block's
 * last match 10-11 bytes before its end (the format asks for 12); Kafka's Java decoder, which
 * decompresses into a buffer of exactly the announced size, then fails on a full 4 MiB block.
 * The slack keeps such a block decodable (found in review against kafka-clients 4.1.1).
 */
const LZ4_BLOCK_BYTES = (4 << 20) - 64;
const LZ4_HASH_ENTRIES = 1 << 16;

/**
 * An LZ4 frame with independent blocks (FLG 0x60), as Kafka requires ("Dependent block stream is
 * unsupported"): lz4js's own compress() marks its frames dependent. Each block gets a fresh match
 * table, so no block refers back to another.
 */
function lz4Frame(
  lz4: typeof import('lz4js'),
  xxh32: (seed: number, src: Uint8Array, index: number, length: number) => number,
  src: Buffer,
): Buffer {
  const header = Buffer.from([0x04, 0x22, 0x4d, 0x18, 0x60, 0x70, 0]);
  header[6] = (xxh32(0, header, 4, 2) >>> 8) & 0xff;
  const parts: Buffer[] = [header];
  for (let at = 0; at < src.length; at += LZ4_BLOCK_BYTES) {
    const size = Math.min(LZ4_BLOCK_BYTES, src.length - at);
    const out = Buffer.alloc(lz4.compressBound(size));
    const compressed = lz4.compressBlock(src, out, at, size, new Uint32Array(LZ4_HASH_ENTRIES));
    const length = Buffer.alloc(4);
    if (compressed === 0 || compressed >= size) {
      length.writeUInt32LE((0x80000000 | size) >>> 0); // stored uncompressed
      parts.push(length, src.subarray(at, at + size));
    } else {
      length.writeUInt32LE(compressed);
      parts.push(length, out.subarray(0, compressed));
    }
  }
  parts.push(Buffer.alloc(4)); // end mark
  return Buffer.concat(parts);
}

/**
 * A zstd frame whose content size is not in its header (Java producers stream them) is decoded
 * into a fixed buffer (1 MiB by default in zstd-wasm): retried with a larger one, up to 256 MiB.
 */
function zstdDecompress(decompress: (buf: Uint8Array, opts?: { defaultHeapSize?: number }) => Uint8Array, buffer: Buffer): Buffer {
  for (let heap = Math.max(1 << 20, buffer.length * 8); ; heap *= 4) {
    try {
      return Buffer.from(decompress(buffer, { defaultHeapSize: heap }));
    } catch (err) {
      if (heap >= 256 << 20) throw err;
    }
  }
}
