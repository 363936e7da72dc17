import { describe, expect, it } from 'vitest';
import { resumePosition, type LocalLogView } from '../../src/forward/resume.js';
import { epochEnd, epochIndexOf, lineageOf, type LogEpoch } from '../../src/log/epochs.js';

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
  it('name only earlier epochs that hold records as lineage', () => {
    expect(lineageOf(e, 4)).toEqual(['c', 'a']);
    expect(lineageOf(e, 4, 1)).toEqual(['c']);
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
    expect(resumePosition({ logId: 'L', offset: 10, epoch: 'a', lineage: [] }, v)).toEqual({ position: 3, kind: 'tail-lost', skipped: 3 });
  });

  it("rolled back behind the checkpoint's epoch: up to the end of the newest epoch of its lineage found here", () => {
    // a wrote 1..3, b (lost) wrote 4..10 and Kafka has them, c appended 4..13 after the restore
    const v = view({ epochs: epochs(['g', 1], ['a', 1], ['c', 4]), end: 13, position: 2 });
    expect(resumePosition({ logId: 'L', offset: 10, epoch: 'b', lineage: ['a'] }, v)).toEqual({ position: 3, kind: 'restored', skipped: 1 });
  });

  it('no common epoch at all: the local position, and says so', () => {
    const v = view({ epochs: epochs(['g', 1], ['c', 4]), position: 2 });
    expect(resumePosition({ logId: 'L', offset: 10, epoch: 'b', lineage: ['a'] }, v)).toEqual({ position: 2, kind: 'diverged', skipped: 0 });
  });
});
