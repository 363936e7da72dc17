// lz4js has no types of its own: what edgebridge uses of it.
declare module 'lz4js' {
  export function compress(buffer: Uint8Array, maxSize?: number): Uint8Array;
  export function decompress(buffer: Uint8Array, maxSize?: number): Uint8Array;
  export function compressBound(length: number): number;
  /** Compresses src[index, index + length) into dst; returns the bytes written (0: incompressible). */
  export function compressBlock(src: Uint8Array, dst: Uint8Array, index: number, length: number, hashTable: Uint32Array): number;
}
declare module 'lz4js/xxh32.js' {
  export function hash(seed: number, src: Uint8Array, index: number, length: number): number;
}
