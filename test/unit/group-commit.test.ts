import { describe, expect, it, vi } from 'vitest';
import { CommitLog } from '../../src/log/commit-log.js';
import { GroupCommit } from '../../src/log/group-commit.js';
import { useTmpDirs } from '../helpers/tmp.js';
import { entry } from './commit-log.test.js';

describe('group commit', () => {
  const tmp = useTmpDirs();

  it('writes the appends of one event-loop turn in one transaction and calls back in order', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    const appendSpy = vi.spyOn(log, 'append');
    const onCommit = vi.fn();
    const gc = new GroupCommit(log, { onCommit });
    const order: number[] = [];
    const done = Promise.all(
      Array.from({ length: 100 }, (_, i) => new Promise<void>((resolve, reject) =>
        gc.append(entry('d', i), (err, offset) => {
          if (err) return reject(err);
          order.push(offset!);
          resolve();
        }),
      )),
    );
    expect(order).toEqual([]); // nothing acknowledged before the commit
    await done;
    expect(appendSpy).toHaveBeenCalledTimes(1);
    expect(order).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(onCommit).toHaveBeenCalledWith(100, 100);
    log.close();
  });

  it('splits a burst larger than maxBatch', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const gc = new GroupCommit(log, { maxBatch: 10 });
    await Promise.all(Array.from({ length: 25 }, (_, i) => new Promise((r) => gc.append(entry('d', i), r))));
    expect(gc.groups).toBe(3);
    expect(log.lastOffset).toBe(25);
    log.close();
  });

  it('fails every callback of a group whose write failed, and acknowledges none', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    vi.spyOn(log, 'append').mockImplementationOnce(() => {
      throw new Error('database or disk is full');
    });
    const gc = new GroupCommit(log);
    const results = await Promise.all(
      [1, 2, 3].map((i) => new Promise<Error | null>((resolve) => gc.append(entry('d', i), (err) => resolve(err)))),
    );
    expect(results.every((e) => e?.message === 'database or disk is full')).toBe(true);
    // the next turn works again
    const ok = await new Promise<Error | null>((resolve) => gc.append(entry('d', 4), (err) => resolve(err)));
    expect(ok).toBeNull();
    log.close();
  });

  it('close() flushes what is pending and refuses new appends', () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    const gc = new GroupCommit(log);
    const cb = vi.fn();
    gc.append(entry('d', 1), cb);
    gc.close();
    expect(cb).toHaveBeenCalledWith(null, 1);
    const late = vi.fn();
    gc.append(entry('d', 2), late);
    expect(late.mock.calls[0]![0]).toBeInstanceOf(Error);
    expect(log.lastOffset).toBe(1);
    log.close();
  });
});
