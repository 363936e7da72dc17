import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { CommitLog } from '../../src/log/commit-log.js';
import { Retention } from '../../src/log/retention.js';
import { entry } from '../helpers/entries.js';
import { useTmpDirs } from '../helpers/tmp.js';

describe('retention', () => {
  const tmp = useTmpDirs();

  it('drops unforwarded records older than maxAge, counts them and says so once per run', () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const now = 1_700_000_100_000;
    log.append([
      { ...entry('a', 1), receivedAt: now - 50_000 }, // already forwarded: the forwarder removes it
      { ...entry('a', 2), receivedAt: now - 40_000 }, // expired
      { ...entry('a', 3), receivedAt: now - 5_000 }, // young enough
    ]);
    const lines: { msg: string; dropped?: number }[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const groupCounters = { groups: 0, appended: 0, duplicates: 0, droppedOverflow: 0, dedupEvicted: 0, overloaded: 0, abandoned: 0, refusedFull: 0, unstoredForgotten: 0 };
    const retention = new Retention(log, { maxAgeMs: 30_000, forwardPosition: () => 1, groupCounters, logger, intervalMs: 3_600_000 });
    retention.runOnce(now);
    retention.close();
    expect(log.readAfter(0, 10).map((r) => r.offset)).toEqual([1, 3]);
    expect(retention.counters.droppedExpired).toBe(1);
    expect(lines.filter((l) => l.msg.includes('older than storage.maxAge'))).toEqual([expect.objectContaining({ dropped: 1 })]);
    log.close();
  });

  it('forgets dedup keys whose window ended', () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const mark = (k: string, windowMs: number) => ({ key: Buffer.from(k), mode: 'check' as const, windowMs });
    log.append([{ ...entry('a', 1), dedup: mark('old', 10) }, { ...entry('a', 2), dedup: mark('new', 60_000) }], 1000);
    const groupCounters = { groups: 0, appended: 0, duplicates: 0, droppedOverflow: 0, dedupEvicted: 0, overloaded: 0, abandoned: 0, refusedFull: 0, unstoredForgotten: 0 };
    const retention = new Retention(log, {
      maxAgeMs: 1e12,
      forwardPosition: () => 0,
      groupCounters,
      logger: pino({ level: 'silent' }),
      intervalMs: 3_600_000,
    });
    retention.runOnce(2000);
    retention.close();
    expect(retention.counters.dedupPruned).toBe(1);
    expect(log.append([{ ...entry('a', 3), dedup: mark('new', 60_000) }], 3000)).toEqual(['duplicate']);
    log.close();
  });

  it('bounds the work of one run (it blocks ingest): a large expiry is spread over runs', () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const mark = (i: number) => ({ key: Buffer.from(`k${i}`), mode: 'check' as const, windowMs: 10 });
    for (let i = 0; i < 60; i++) {
      log.append(
        Array.from({ length: 1000 }, (_, j) => ({ ...entry('a', i * 1000 + j), receivedAt: 1000, dedup: mark(i * 1000 + j) })),
        1000,
      );
    }
    const groupCounters = { groups: 0, appended: 0, duplicates: 0, droppedOverflow: 0, dedupEvicted: 0, overloaded: 0, abandoned: 0, refusedFull: 0, unstoredForgotten: 0 };
    const retention = new Retention(log, {
      maxAgeMs: 1000,
      forwardPosition: () => 0,
      groupCounters,
      logger: pino({ level: 'silent' }),
      intervalMs: 0,
      maxRowsPerRun: 20_000,
    });
    retention.runOnce(10_000);
    expect(retention.counters.dedupPruned).toBe(20_000);
    expect(retention.counters.droppedExpired).toBe(20_000);
    retention.runOnce(10_000);
    retention.runOnce(10_000);
    expect(retention.counters.dedupPruned).toBe(60_000);
    expect(retention.counters.droppedExpired).toBe(60_000);
    retention.close();
    log.close();
  });
});
