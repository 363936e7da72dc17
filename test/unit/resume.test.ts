import { describe, expect, it } from 'vitest';
import { resumePosition, type LocalLogView } from '../../src/forward/resume.js';
import { epochEnd, epochIndexOf, historyThrough, recordInHistory, type EpochMark, type LogEpoch } from '../../src/log/epochs.js';

const epochs = (...starts: [string, number][]): LogEpoch[] => starts.map(([id, start]) => ({ id, start }));
const view = (over: Partial<LocalLogView>): LocalLogView => ({
  logId: 'L',
  position: 0,
  epochs: epochs(['g', 1], ['a', 1]),
  end: 10,
  ...over,
});

describe('log epochs', () => {
  const e = epochs(['g', 1], ['a', 1], ['b', 5], ['c', 5], ['d', 9]);
  it('map an offset to the epoch that handed it out', () => {
    expect([0, 1, 4, 5, 8, 9, 20].map((o) => e[epochIndexOf(e, o)]!.id)).toEqual(['g', 'a', 'a', 'c', 'c', 'd', 'd']);
  });
  it('end where the next one starts, or at the end of the log', () => {
    expect(epochEnd(e, 1, 12)).toBe(4);
    expect(epochEnd(e, 2, 12)).toBe(4); // empty
    expect(epochEnd(e, 4, 12)).toBe(12);
  });
  it('remember how far Kafka got in each, newest first, never less than before', () => {
    let h = recordInHistory([], 'a', 4);
    h = recordInHistory(h, 'b', 9);
    expect(h).toEqual([{ epoch: 'b', through: 9 }, { epoch: 'a', through: 4 }]);
    // a claim after a restore at a lower offset of an epoch does not forget what Kafka has of it
    expect(recordInHistory(h, 'a', 2)).toEqual([{ epoch: 'a', through: 4 }, { epoch: 'b', through: 9 }]);
    expect(Array.from({ length: 20 }, (_, i) => i).reduce((x, i) => recordInHistory(x, `e${i}`, i), h)).toHaveLength(16);
  });
});

describe('where forwarding resumes', () => {
  it('without a checkpoint, or with one of another log: the local position', () => {
    expect(resumePosition(undefined, view({ position: 3 }))).toEqual({ position: 3, kind: 'fresh', skipped: 0 });
    expect(resumePosition({ logId: 'X', offset: 9, epoch: 'a' }, view({ position: 3 }))).toMatchObject({ position: 3, kind: 'other-log' });
  });

  it('after the checkpoint when it is ahead of the local position (a lost commit response, a crash)', () => {
    expect(resumePosition({ logId: 'L', offset: 7, epoch: 'a' }, view({ position: 3 }))).toEqual({ position: 7, kind: 'checkpoint', skipped: 4 });
  });

  it('never backwards', () => {
    expect(resumePosition({ logId: 'L', offset: 2, epoch: 'a' }, view({ position: 5 }))).toMatchObject({ position: 5, kind: 'checkpoint-behind' });
  });

  it('a checkpoint of the genesis epoch (written before epochs existed) is read as such', () => {
    const v = view({ epochs: epochs(['g', 1], ['a', 6]), end: 12 });
    expect(resumePosition({ logId: 'L', offset: 4 }, v)).toMatchObject({ position: 4, kind: 'checkpoint' });
    expect(resumePosition({ logId: 'L', offset: 9 }, v)).toMatchObject({ position: 5, kind: 'tail-lost' });
  });

  it('the log lost its tail inside the epoch of the checkpoint: up to what survived of that epoch', () => {
    // epoch a wrote 1..10, Kafka has them; the log kept 1..3; epoch b appended 4.. again
    const v = view({ epochs: epochs(['g', 1], ['a', 1], ['b', 4]), end: 13 });
    expect(resumePosition({ logId: 'L', offset: 10, epoch: 'a', history: [] }, v)).toEqual({ position: 3, kind: 'tail-lost', skipped: 3 });
  });

  it("rolled back behind the checkpoint's epoch: up to where Kafka got in the newest epoch found here", () => {
    // a wrote 1..3, b (lost) wrote 4..10 and Kafka has them, c appended 4..13 after the restore
    const v = view({ epochs: epochs(['g', 1], ['a', 1], ['c', 4]), end: 13, position: 2 });
    const checkpoint = { logId: 'L', offset: 10, epoch: 'b', history: [{ epoch: 'b', through: 10 }, { epoch: 'a', through: 3 }] };
    expect(resumePosition(checkpoint, v)).toEqual({ position: 3, kind: 'restored', skipped: 1 });
  });

  it('a second, newer backup restored after an older one: what Kafka never had of it is forwarded', () => {
    // epoch a wrote 1..100; Kafka got 1..60; a backup at 50 restored (epoch b forwarded 51..70);
    // then a backup at 100 restored: a's 61..100 are here and were never in Kafka
    const v = view({ epochs: epochs(['g', 1], ['a', 1], ['c', 101]), end: 120, position: 40 });
    const checkpoint = { logId: 'L', offset: 70, epoch: 'b', history: [{ epoch: 'b', through: 70 }, { epoch: 'a', through: 60 }] };
    expect(resumePosition(checkpoint, v)).toEqual({ position: 60, kind: 'restored', skipped: 20 });
  });

  it('a backup from before an epoch Kafka has all of: nothing of it again', () => {
    // a 1..100 and b 101..150 all forwarded; restored to a backup taken in a; c forwarded 51..80;
    // then restored to a backup taken at 120 (in b): b's 101..120 are in Kafka already
    const v = view({ epochs: epochs(['g', 1], ['a', 1], ['b', 101], ['d', 121]), end: 130, position: 110 });
    const history = [{ epoch: 'c', through: 80 }, { epoch: 'b', through: 150 }, { epoch: 'a', through: 100 }];
    expect(resumePosition({ logId: 'L', offset: 80, epoch: 'c', history }, v)).toEqual({ position: 120, kind: 'restored', skipped: 10 });
  });

  it('no epoch Kafka has records of is here: the local position, and says so', () => {
    const v = view({ epochs: epochs(['g', 1], ['c', 4]), position: 2 });
    expect(resumePosition({ logId: 'L', offset: 10, epoch: 'b', history: [{ epoch: 'a', through: 3 }] }, v)).toEqual({
      position: 2,
      kind: 'diverged',
      skipped: 0,
    });
  });

  it('the history keeps another branch of restores over the ancestors this branch shares with it', () => {
    // Branch Y: epochs a (1..5) and b (6..10), all forwarded. Then a backup from a (offset 5) is
    // restored, and 15 restarts follow there, each forwarding one reading. Then the backup with
    // a and b is restored: b is in Kafka, nothing of it may go again.
    const y = epochs(['genesis', 1], ['a', 1], ['b', 6]);
    let history: EpochMark[] = historyThrough([], y, 10);
    let x = epochs(['genesis', 1], ['a', 1]);
    for (let i = 0; i < 15; i++) {
      x = [...x, { id: `x${i}`, start: 6 + i }];
      history = historyThrough(history, x, 6 + i);
    }
    expect(history).toHaveLength(16);
    expect(history.map((m) => m.epoch)).toContain('b');
    const restoredY = view({ epochs: [...y, { id: 'z', start: 11 }], end: 12, position: 5 });
    const checkpoint = { logId: 'L', offset: 20, epoch: 'x14', history };
    expect(resumePosition(checkpoint, restoredY)).toMatchObject({ position: 10, kind: 'restored' });
  });
});
