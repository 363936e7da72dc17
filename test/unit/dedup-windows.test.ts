import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CommitLog, DB_FILE, type LogEntry } from '../../src/log/commit-log.js';
import { decodeRanges, encodeRanges, rangesAdd, rangesContain } from '../../src/log/dedup-windows.js';
import { dedupMark } from '../../src/ingress/dedup.js';
import { compileRoute } from '../../src/ingress/routes.js';
import { useTmpDirs } from '../helpers/tmp.js';

/** Sorted, disjoint, non-adjacent pairs. */
function wellFormed(ranges: readonly number[]): boolean {
  if (ranges.length % 2 !== 0) return false;
  for (let i = 0; i < ranges.length; i += 2) {
    if (ranges[i]! > ranges[i + 1]!) return false;
    if (i >= 2 && ranges[i]! <= ranges[i - 1]! + 1) return false;
  }
  return true;
}

describe('counter ranges', () => {
  it('hold exactly the counters added, in any order, while the gaps fit', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 300 }), { maxLength: 400 }), (counters) => {
        let ranges: number[] = [];
        const seen = new Set<number>();
        for (const c of counters) {
          expect(rangesContain(ranges, c)).toBe(seen.has(c));
          ranges = rangesAdd(ranges, c, 1000);
          seen.add(c);
          expect(wellFormed(ranges)).toBe(true);
        }
        for (let c = 0; c <= 301; c++) expect(rangesContain(ranges, c)).toBe(seen.has(c));
      }),
      { numRuns: 300 },
    );
  });

  it('never forget a stored counter when the gaps overflow: the oldest gap is closed instead', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 2_000 }), { maxLength: 300 }), fc.integer({ min: 1, max: 8 }), (counters, max) => {
        let ranges: number[] = [];
        for (const c of counters) {
          ranges = rangesAdd(ranges, c, max);
          expect(wellFormed(ranges)).toBe(true);
          expect(ranges.length).toBeLessThanOrEqual(max * 2);
        }
        // a stored counter is always recognised (a replay is never stored twice)
        for (const c of counters) expect(rangesContain(ranges, c)).toBe(true);
        // above the lowest remembered range the ranges are exact
        const low = ranges[1] ?? Infinity;
        const seen = new Set(counters);
        for (let c = low + 1; c <= 2_001; c++) expect(rangesContain(ranges, c)).toBe(seen.has(c));
      }),
      { numRuns: 300 },
    );
  });

  it('keep in-order firmware in one range, with its gaps', () => {
    let ranges: number[] = [];
    for (let seq = 1; seq <= 100_000; seq++) ranges = rangesAdd(ranges, seq);
    expect(ranges).toEqual([1, 100_000]);
    // a device that publishes every 10th sample: every gap is closed, none is ever re-opened
    ranges = [];
    for (let seq = 10; seq <= 10_000; seq += 10) ranges = rangesAdd(ranges, seq);
    expect(ranges.length).toBe(128);
    expect(rangesContain(ranges, 10)).toBe(true);
    expect(rangesContain(ranges, 9_990)).toBe(true);
    expect(rangesContain(ranges, 9_995)).toBe(false);
  });

  it('encode compactly and decode exactly, up to 2^53', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), { maxLength: 64 }), (values) => {
        const ranges = [...new Set(values)].sort((a, b) => a - b);
        if (ranges.length % 2) ranges.pop();
        expect(decodeRanges(encodeRanges(ranges))).toEqual(ranges);
      }),
    );
    expect(encodeRanges([1, 100_000]).length).toBe(4);
    expect(() => decodeRanges(Buffer.from([1]))).toThrow(/damaged/);
  });
});

describe('counter dedup in the commit log', () => {
  const tmp = useTmpDirs();
  const route = compileRoute({ mqtt: 'devices/{deviceId}/telemetry', kafka: 't', dedup: { fields: ['bootId', 'seq'], window: 60_000 } });
  const exact = compileRoute({
    mqtt: 'devices/{deviceId}/telemetry',
    kafka: 't',
    dedup: { fields: ['bootId', 'seq'], mode: 'exact', window: 60_000 },
  });
  const reading = (seq: number, device = 'd1', bootId = 'b1', r = route): LogEntry => {
    const payload = Buffer.from(JSON.stringify({ bootId, seq }));
    return {
      receivedAt: 1,
      route: r.pattern,
      kafkaTopic: 't',
      deviceId: device,
      mqttTopic: `devices/${device}/telemetry`,
      qos: 1,
      payload,
      dedup: dedupMark(r, device, { clientId: device, messageId: seq, qos: 1, dup: false, payload })!,
    };
  };
  const stored = (results: (number | 'duplicate')[]) => results.map((r) => (r === 'duplicate' ? 'dup' : 'new'));
  const open = (dir: string) => new CommitLog({ dir, synchronous: 'full' });

  it('drops replays and keeps late readings that fill a gap, across a restart', () => {
    const dir = tmp();
    let log = open(dir);
    const now = 1_000_000;
    expect(stored(log.append([1, 2, 3, 5, 6].map((s) => reading(s)), now))).toEqual(['new', 'new', 'new', 'new', 'new']);
    // a replay, a replay within the same group, and the late reading 4
    expect(stored(log.append([reading(2), reading(4), reading(4), reading(7)], now))).toEqual(['dup', 'new', 'dup', 'new']);
    log.close();
    log = open(dir);
    expect(stored(log.append([1, 4, 7, 8].map((s) => reading(s)), now + 1))).toEqual(['dup', 'dup', 'dup', 'new']);
    // another boot and another device are other streams
    expect(stored(log.append([reading(1, 'd1', 'b2'), reading(1, 'd2')], now + 1))).toEqual(['new', 'new']);
    // the stream is forgotten a window after its last stored reading, and pruned
    expect(stored(log.append([reading(1)], now + 1 + 60_000))).toEqual(['new']);
    expect(log.pruneDedupStreams(now + 1 + 60_000 + 60_000)).toBeGreaterThanOrEqual(3);
    log.close();
  });

  it('never evicts counter streams when storage is full of dedup state: their recent readings stay recognised', () => {
    const log = open(tmp());
    expect(stored(log.append([1, 2, 3].map((s) => reading(s)), 10))).toEqual(['new', 'new', 'new']);
    expect(log.pruneDedupOldest(1000)).toBe(0);
    expect(stored(log.append([reading(2)], 11))).toEqual(['dup']);
    log.close();
  });

  it('counts the gaps late readings close past 64 ranges, only in committed groups; sparse in-order firmware is not counted', () => {
    const log = open(tmp());
    // 64 ranges: the even counters 0, 2, ..., 126 (each a range of its own)
    log.append(Array.from({ length: 64 }, (_, i) => reading(2 * i)), 10);
    // in order, above every stored counter: the oldest gap (1) closes, harmlessly, uncounted
    expect(stored(log.append([reading(1000)], 10))).toEqual(['new']);
    expect(log.dedupGapsClosed).toBe(0);
    const bad = { ...reading(2000), payload: null as unknown as Buffer };
    expect(() => log.append([reading(501), bad], 10)).toThrow();
    expect(log.dedupGapsClosed).toBe(0);
    // a late reading (below 1000) makes a 65th range: the oldest gap (3) closes, counted
    expect(stored(log.append([reading(501)], 10))).toEqual(['new']);
    expect(log.dedupGapsClosed).toBe(1);
    expect(stored(log.append([reading(1), reading(3), reading(5)], 10))).toEqual(['dup', 'dup', 'new']);
    log.close();
  });

  it('a damaged stream row starts its stream over instead of failing every group it is in', () => {
    const dir = tmp();
    let log = open(dir);
    log.append([reading(1), reading(2)], 10);
    log.close();
    const db = new Database(join(dir, DB_FILE));
    db.prepare('UPDATE dedup_streams SET ranges = ?').run(Buffer.from([0x05])); // one bound: no range
    db.close();
    log = open(dir);
    expect(stored(log.append([reading(3, 'd2'), reading(3)], 10))).toEqual(['new', 'new']);
    expect(log.dedupStreamsDamaged).toBe(1);
    expect(stored(log.append([reading(3)], 10))).toEqual(['dup']);
    log.close();
  });

  it('leaves no trace of a group whose transaction failed', () => {
    const log = open(tmp());
    const bad = { ...reading(99), payload: null as unknown as Buffer };
    expect(() => log.append([reading(1), reading(2), bad], 10)).toThrow();
    expect(stored(log.append([reading(1), reading(2)], 10))).toEqual(['new', 'new']);
    log.close();
  });

  it('checks the per-reading index too: readings stored in exact mode, and by exact mode the counters', () => {
    const log = open(tmp());
    expect(stored(log.append([reading(1, 'd1', 'b1', exact), reading(2, 'd1', 'b1', exact)], 10))).toEqual(['new', 'new']);
    expect(stored(log.append([reading(1), reading(3)], 10))).toEqual(['dup', 'new']);
    // and a route switched back to exact mode still knows what window mode stored
    expect(stored(log.append([reading(3, 'd1', 'b1', exact), reading(4, 'd1', 'b1', exact)], 10))).toEqual(['dup', 'new']);
    log.close();
  });
});
