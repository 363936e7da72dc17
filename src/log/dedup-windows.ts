import type Database from 'better-sqlite3';

/**
 * Counter dedup: the state of one reading stream (route, device and every identity field but the
 * last, e.g. bootId) is the set of counters (the last field, e.g. seq) stored so far, kept as
 * disjoint, non-adjacent ranges. In-order firmware needs one range per stream however many
 * readings it sends, so the state is O(streams), not O(readings) as a per-reading index is: a
 * group commit rewrites one small row per active stream instead of inserting an index entry per
 * reading (Kafka's idempotent producer keeps the last sequence per producer and partition for the
 * same reason; the ranges are its generalisation to readings that arrive out of order).
 *
 * At most MAX_RANGES ranges are kept. A stream with more gaps than that has its oldest gap closed
 * (the two lowest ranges merge): a counter in that gap that was never stored is taken for a
 * replay from then on. In-order firmware never sends a new counter below a stored one, so for it
 * the state is exact whatever its gaps; only a reading that arrives after readings more than
 * MAX_RANGES gaps newer is affected (README: Delivery guarantee).
 */
export const MAX_RANGES = 64;

/** A stream's state: sorted flat pairs [lo0, hi0, lo1, hi1, ...], and when it is forgotten. */
export interface WindowState {
  readonly ranges: readonly number[];
  readonly expiresAt: number;
}

/** Whether `counter` is in one of the ranges (searched from the top: new counters are there). */
export function rangesContain(ranges: readonly number[], counter: number): boolean {
  for (let i = ranges.length - 2; i >= 0; i -= 2) {
    if (counter > ranges[i + 1]!) return false;
    if (counter >= ranges[i]!) return true;
  }
  return false;
}

/**
 * The ranges with `counter` added (a new array; the input is not changed). Adjacent ranges are
 * joined; past MAX_RANGES the two lowest are merged (the oldest gap is closed).
 */
export function rangesAdd(
  ranges: readonly number[],
  counter: number,
  maxRanges = MAX_RANGES,
  onGapClosed: () => void = () => {},
): number[] {
  const out = ranges.slice();
  // i: the lowest range that ends at counter - 1 or later (every range below ends before it).
  let i = out.length;
  while (i >= 2 && out[i - 1]! >= counter - 1) i -= 2;
  if (i === out.length || out[i]! > counter + 1) {
    out.splice(i, 0, counter, counter);
  } else {
    // Inside range i or next to it: widen it, and join the range above if they now touch.
    if (counter < out[i]!) out[i] = counter;
    if (counter > out[i + 1]!) out[i + 1] = counter;
    if (i + 2 < out.length && out[i + 2]! <= out[i + 1]! + 1) {
      out[i + 1] = out[i + 3]!;
      out.splice(i + 2, 2);
    }
  }
  while (out.length > maxRanges * 2) {
    out.splice(1, 2);
    onGapClosed();
  }
  return out;
}

/** Ranges as unsigned LEB128 deltas: [lo0, hi0 - lo0, lo1 - hi0, hi1 - lo1, ...]. */
export function encodeRanges(ranges: readonly number[]): Buffer {
  const bytes: number[] = [];
  let prev = 0;
  for (const v of ranges) {
    let d = v - prev;
    prev = v;
    while (d >= 0x80) {
      bytes.push((d % 0x80) | 0x80);
      d = Math.floor(d / 0x80);
    }
    bytes.push(d);
  }
  return Buffer.from(bytes);
}

export function decodeRanges(buf: Buffer): number[] {
  const out: number[] = [];
  let prev = 0;
  let i = 0;
  while (i < buf.length) {
    let d = 0;
    let scale = 1;
    let b: number;
    do {
      b = buf[i++]!;
      d += (b & 0x7f) * scale;
      scale *= 0x80;
    } while (b & 0x80 && i < buf.length);
    prev += d;
    out.push(prev);
  }
  if (out.length % 2 !== 0) throw new Error('dedup stream state is damaged (odd number of range bounds)');
  return out;
}

/** Streams kept in memory; the rest are read from the database when they publish again. */
const CACHE_STREAMS = 4096;

/**
 * The counter-dedup state of every live stream, in the `dedup_streams` table of the commit log,
 * written in the same transaction as the records it admits. Used only inside CommitLog.append's
 * transaction: `has` and `add` read and stage changes, `writeStaged` writes them, and `committed` / `rolledBack`
 * settle the in-memory cache with the transaction's outcome (a rolled-back group leaves no trace).
 */
export class DedupWindows {
  /**
   * Gaps closed by a late reading (a counter below its stream's highest) in a stream that had
   * MAX_RANGES ranges, in committed transactions: firmware that reorders this much may see a
   * later reading in the closed gap taken for a replay. Sparse in-order firmware (every 10th
   * sample) closes gaps too, harmlessly, and is not counted: it never sends into them.
   */
  gapsClosed = 0;
  /** Stream rows that could not be decoded: those streams started over (a replay may be stored again). */
  damaged = 0;
  private stagedGapsClosed = 0;
  private readonly cache = new Map<string, WindowState>();
  private staged = new Map<string, { stream: Buffer; state: WindowState }>();
  private readonly get: Database.Statement;
  private readonly put: Database.Statement;
  private readonly prune: Database.Statement;

  constructor(db: Database.Database) {
    this.get = db.prepare('SELECT ranges, expires_at FROM dedup_streams WHERE stream = ?');
    this.put = db.prepare(
      `INSERT INTO dedup_streams (stream, ranges, expires_at) VALUES (?, ?, ?)
       ON CONFLICT (stream) DO UPDATE SET ranges = excluded.ranges, expires_at = excluded.expires_at`,
    );
    // No index on expires_at (it would be rewritten with every update): the table holds one row
    // per live stream, so the scan is short and runs only at housekeeping.
    this.prune = db.prepare(
      'DELETE FROM dedup_streams WHERE stream IN (SELECT stream FROM dedup_streams WHERE expires_at <= ? LIMIT ?)',
    );
  }

  /** Inside the append transaction: whether `counter` was already stored in a live `stream`. */
  has(stream: Buffer, counter: number, now: number): boolean {
    const state = this.current(stream);
    return state !== undefined && state.expiresAt > now && rangesContain(state.ranges, counter);
  }

  /** Inside the append transaction: stages `counter` as stored; the stream lives `windowMs` on. */
  add(stream: Buffer, counter: number, now: number, windowMs: number): void {
    const state = this.current(stream);
    const ranges = state !== undefined && state.expiresAt > now ? state.ranges : [];
    const late = ranges.length > 0 && counter < ranges[ranges.length - 1]!;
    this.staged.set(stream.toString('latin1'), {
      stream,
      state: { ranges: rangesAdd(ranges, counter, MAX_RANGES, late ? () => this.stagedGapsClosed++ : undefined), expiresAt: now + windowMs },
    });
  }

  /** Inside the append transaction, after its records: writes every staged stream once. */
  writeStaged(): void {
    for (const { stream, state } of this.staged.values()) this.put.run(stream, encodeRanges(state.ranges), state.expiresAt);
  }

  committed(): void {
    for (const [id, { state }] of this.staged) this.remember(id, state);
    this.staged = new Map();
    this.gapsClosed += this.stagedGapsClosed;
    this.stagedGapsClosed = 0;
  }

  rolledBack(): void {
    this.staged = new Map();
    this.stagedGapsClosed = 0;
  }

  /** Forgets streams whose window ended (at most `limit`). */
  pruneExpired(now: number, limit: number): number {
    for (const [id, state] of this.cache) if (state.expiresAt <= now) this.cache.delete(id);
    return this.prune.run(now, limit).changes;
  }

  private current(stream: Buffer): WindowState | undefined {
    const id = stream.toString('latin1');
    return this.staged.get(id)?.state ?? this.load(id, stream);
  }

  private load(id: string, stream: Buffer): WindowState | undefined {
    const hit = this.cache.get(id);
    if (hit !== undefined) {
      // Least recently used goes first when the cache is full: move this one to the end.
      this.cache.delete(id);
      this.cache.set(id, hit);
      return hit;
    }
    const row = this.get.get(stream) as { ranges: Buffer; expires_at: number } | undefined;
    if (row === undefined) return undefined;
    let ranges: number[];
    try {
      ranges = decodeRanges(row.ranges);
    } catch {
      // A damaged row must not fail every group its stream is in (refusing the other devices in
      // them too, again and again): the stream starts over, and is rewritten by this group.
      this.damaged++;
      const startOver = { ranges: [], expiresAt: 0 };
      this.remember(id, startOver);
      return startOver;
    }
    const state = { ranges, expiresAt: row.expires_at };
    this.remember(id, state);
    return state;
  }

  private remember(id: string, state: WindowState): void {
    this.cache.delete(id);
    this.cache.set(id, state);
    if (this.cache.size > CACHE_STREAMS) this.cache.delete(this.cache.keys().next().value!);
  }
}
