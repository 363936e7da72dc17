import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it, vi } from 'vitest';
import { CommitLog, DB_FILE } from '../../src/log/commit-log.js';
import { GroupCommit } from '../../src/log/group-commit.js';
import { LogReader } from '../../src/log/log-reader.js';
import { useTmpDirs } from '../helpers/tmp.js';
import { entry } from '../helpers/entries.js';

/** A record budget that leaves `bytes` for records above what the log holds now. */
const room = (log: CommitLog, bytes: number) => log.pageBytes() + bytes;

describe('group commit', () => {
  const tmp = useTmpDirs();

  it('writes the appends of one event-loop turn in one transaction and calls back in order, each once it is committed', async () => {
    const dir = tmp();
    const log = new CommitLog({ dir, synchronous: 'full' });
    const appendSpy = vi.spyOn(log, 'append');
    const onCommit = vi.fn();
    const gc = new GroupCommit(log, { onCommit });
    // Another connection sees only committed data: every callback must find its record there.
    const observer = new Database(join(dir, DB_FILE), { readonly: true });
    const committed = observer.prepare('SELECT count(*) FROM records WHERE log_offset = ?').pluck();
    const order: number[] = [];
    const notYetCommitted: number[] = [];
    const done = Promise.all(
      Array.from({ length: 100 }, (_, i) => new Promise<void>((resolve, reject) =>
        gc.append(entry('d', i), (err, offset) => {
          if (err) return reject(err);
          if (committed.get(offset) !== 1) notYetCommitted.push(offset as number);
          order.push(offset as number);
          resolve();
        }),
      )),
    );
    await done;
    observer.close();
    expect(notYetCommitted).toEqual([]);
    expect(appendSpy).toHaveBeenCalledTimes(1);
    expect(order).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(onCommit).toHaveBeenCalledWith(100, 100);
    log.close();
  });

  it('splits a burst larger than maxBatch', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const gc = new GroupCommit(log, { maxBatch: 10 });
    await Promise.all(Array.from({ length: 25 }, (_, i) => new Promise((r) => gc.append(entry('d', i), r))));
    expect(gc.counters.groups).toBe(3);
    expect(log.lastOffset).toBe(25);
    log.close();
  });

  it('spaces group commits minIntervalMs apart under steady traffic, writes at once after a quiet spell, and does not hold a large group', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setImmediate', 'performance'] });
    try {
      const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
      const gc = new GroupCommit(log, { minIntervalMs: 20 });
      let acked = 0;
      const append = (n: number) => {
        for (let i = 0; i < n; i++) gc.append(entry('d', i), () => acked++);
      };
      append(1); // quiet so far: written on the next turn
      vi.advanceTimersByTime(1);
      expect([gc.counters.groups, acked]).toEqual([1, 1]);
      // steady traffic: what arrives within the interval gathers into one group
      for (let ms = 1; ms < 19; ms++) {
        append(1);
        vi.advanceTimersByTime(1);
      }
      expect([gc.counters.groups, acked]).toEqual([1, 1]);
      vi.advanceTimersByTime(1); // 20 ms after the first group began
      expect([gc.counters.groups, acked]).toEqual([2, 19]);
      // 64 waiting records are a group large enough: no wait
      append(64);
      vi.advanceTimersByTime(1);
      expect([gc.counters.groups, acked]).toEqual([3, 83]);
      // a quiet spell longer than the interval: the next append is written at once
      vi.advanceTimersByTime(100);
      append(1);
      vi.advanceTimersByTime(1);
      expect([gc.counters.groups, acked]).toEqual([4, 84]);
      gc.close();
      log.close();
    } finally {
      vi.useRealTimers();
    }
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

  it("a refused publish is never overtaken by the same connection's later ones (per-device order)", async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    vi.spyOn(log, 'append').mockImplementationOnce(() => {
      throw new Error('disk I/O error');
    });
    const gc = new GroupCommit(log, { maxBatch: 1 }); // one group per entry: A1 | A2 | B1
    const a = { closed: false };
    const b = { closed: false };
    const outcome = (e: ReturnType<typeof entry>, owner: object) =>
      new Promise<string>((resolve) => gc.append(e, (err, r) => resolve(err ? 'refused' : String(r)), owner));
    const results = await Promise.all([outcome(entry('a', 1), a), outcome(entry('a', 2), a), outcome(entry('b', 1), b)]);
    expect(results).toEqual(['refused', 'refused', '1']);
    // and until it reconnects (a new connection), nothing more of A's is stored either
    expect(await outcome(entry('a', 3), a)).toBe('refused');
    expect(await outcome(entry('a', 3), { closed: false })).toBe('2');
    expect(log.readAfter(0, 10).map((r) => r.deviceId)).toEqual(['b', 'a']);
    log.close();
  });

  it('bounds what waits: beyond maxPending, appends are refused at once; a closed connection gives up its waiting ones', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const big = (i: number) => ({ ...entry('d', i), payload: Buffer.alloc(8000, i) });
    log.append(Array.from({ length: 40 }, (_, i) => big(100 + i))); // a backlog fills the log
    const gc = new GroupCommit(log, {
      maxPending: 3,
      holdRetryMs: 10,
      storage: { recordBytes: room(log, 100), overflow: 'backpressure', forwardPosition: () => 0 },
    });
    const a = { closed: false };
    const results: string[] = [];
    for (let i = 1; i <= 3; i++) gc.append(big(i), (err) => results.push(err ? (err as { code?: string }).code ?? 'error' : 'stored'), a);
    await vi.waitFor(() => expect(gc.holding).toBe(true));
    expect(gc.waiting).toBe(3);
    gc.append(big(4), (err) => results.push((err as { code?: string }).code ?? 'stored'));
    expect(results).toEqual(['EB_ERR_INGRESS_OVERLOADED']);
    expect(gc.counters.overloaded).toBe(1);
    a.closed = true;
    await vi.waitFor(() => expect(gc.waiting).toBe(0));
    expect(results.slice(1)).toEqual(['EB_ERR_LOG_WRITE', 'EB_ERR_LOG_WRITE', 'EB_ERR_LOG_WRITE']);
    expect(gc.counters.abandoned).toBe(3);
    expect(log.lastOffset).toBe(40);
    gc.close();
    log.close();
  });

  it('an owner whose refusals are final (MQTT 5) is refused at once while the log is full, is not held, and is judged afresh once there is room', async () => {
    const dir = tmp();
    const log = new CommitLog({ dir, synchronous: 'normal' });
    const big = (i: number) => ({ ...entry('d', i), payload: Buffer.alloc(8000, i) });
    log.append(Array.from({ length: 40 }, (_, i) => big(100 + i))); // a backlog fills the log
    let position = 0;
    const gc = new GroupCommit(log, {
      maxPending: 3,
      holdRetryMs: 10,
      storage: { recordBytes: room(log, 100), overflow: 'backpressure', forwardPosition: () => position },
    });
    const v3 = { closed: false };
    const v5 = { closed: false, finalRefusals: true };
    const results: string[] = [];
    const record = (who: string) => (err: Error | null) => results.push(`${who}:${err ? ((err as { code?: string }).code ?? 'error') : 'stored'}`);
    gc.append(big(1), record('v3'), v3);
    gc.append(big(2), record('v5'), v5); // waiting when the log turns out full: refused, not held
    await vi.waitFor(() => expect(gc.holding).toBe(true));
    expect(results).toEqual(['v5:EB_ERR_LOG_FULL']);
    expect(gc.waiting).toBe(1); // only the 3.1.1 one is held
    gc.append(big(3), record('v5'), v5); // while full: refused at once
    expect(results).toEqual(['v5:EB_ERR_LOG_FULL', 'v5:EB_ERR_LOG_FULL']);
    expect(gc.counters.refusedFull).toBe(2);
    // space comes back: the held one is stored, and the same v5 owner is no longer refused
    position = 40;
    const reader = new LogReader({ dir, synchronous: 'normal' });
    reader.removeThrough(40);
    reader.close();
    gc.release();
    await vi.waitFor(() => expect(results).toContain('v3:stored'));
    await new Promise<void>((resolve) => gc.append(big(4), (err) => { record('v5')(err); resolve(); }, v5));
    expect(results.slice(2)).toEqual(['v3:stored', 'v5:stored']);
    expect(log.readAfter(40, 10).map((r) => r.payload[0])).toEqual([1, 4]);
    gc.close();
    log.close();
  });

  it('with only final-refusal owners, a full log refuses them and stores again as soon as there is room (nothing held, nothing stuck)', async () => {
    const dir = tmp();
    const log = new CommitLog({ dir, synchronous: 'normal' });
    const big = (i: number) => ({ ...entry('d', i), payload: Buffer.alloc(8000, i) });
    log.append(Array.from({ length: 40 }, (_, i) => big(100 + i)));
    let position = 0;
    const gc = new GroupCommit(log, { holdRetryMs: 10, storage: { recordBytes: room(log, 100), overflow: 'backpressure', forwardPosition: () => position } });
    const v5 = { closed: false, finalRefusals: true };
    const outcome = (i: number) => new Promise<string>((resolve) => gc.append(big(i), (err) => resolve(err ? ((err as { code?: string }).code ?? 'error') : 'stored'), v5));
    expect(await outcome(1)).toBe('EB_ERR_LOG_FULL');
    expect(await outcome(2)).toBe('EB_ERR_LOG_FULL');
    expect(gc.holding).toBe(false);
    position = 40;
    const reader = new LogReader({ dir, synchronous: 'normal' });
    reader.removeThrough(40);
    reader.close();
    expect(await outcome(3)).toBe('stored');
    expect(log.readAfter(40, 10).map((r) => r.payload[0])).toEqual([3]);
    gc.close();
    log.close();
  });

  it('an overload refusal of an owner whose refusals are final does not refuse its later appends', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const gc = new GroupCommit(log, { maxPending: 2 });
    const v5 = { closed: false, finalRefusals: true };
    const results: string[] = [];
    const record = (err: Error | null) => results.push(err ? ((err as { code?: string }).code ?? 'error') : 'stored');
    for (let i = 1; i <= 3; i++) gc.append(entry('d', i), record, v5); // the third is over maxPending
    expect(results).toEqual(['EB_ERR_INGRESS_OVERLOADED']);
    await vi.waitFor(() => expect(results).toHaveLength(3));
    await new Promise<void>((resolve) => gc.append(entry('d', 4), (err) => { record(err); resolve(); }, v5));
    expect(results).toEqual(['EB_ERR_INGRESS_OVERLOADED', 'stored', 'stored', 'stored']);
    expect(log.readAfter(0, 10).map((r) => r.payload.toString())).toEqual([entry('d', 1).payload.toString(), entry('d', 2).payload.toString(), entry('d', 4).payload.toString()]);
    gc.close();
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

describe('group commit: dedup and storage limits', () => {
  const tmp = useTmpDirs();
  const key = (s: string) => Buffer.from(s.padEnd(16, '.'));
  const appendAll = (gc: GroupCommit, entries: ReturnType<typeof entry>[]) =>
    Promise.all(
      entries.map(
        (e) => new Promise<unknown>((resolve, reject) => gc.append(e, (err, r) => (err ? reject(err) : resolve(r)))),
      ),
    );

  it('while the log is full, a final-refusal owner is told a resend of a stored reading is a duplicate (not refused), and its QoS 0 readings are held, not dropped', async () => {
    const dir = tmp();
    const log = new CommitLog({ dir, synchronous: 'normal' });
    const big = (i: number) => ({ ...entry('d', i), payload: Buffer.alloc(8000, i) });
    const mark = (k: string) => ({ key: key(k), mode: 'check' as const, windowMs: 3_600_000 });
    const stored = await appendAll(new GroupCommit(log), [{ ...big(1), dedup: mark('a') }, ...Array.from({ length: 40 }, (_, i) => big(100 + i))]);
    expect(stored[0]).toBe(1);
    let position = 0;
    const gc = new GroupCommit(log, { holdRetryMs: 10, storage: { recordBytes: room(log, 100), overflow: 'backpressure', forwardPosition: () => position } });
    const v5 = { closed: false, finalRefusals: true };
    const outcome = (e: ReturnType<typeof entry>) =>
      new Promise<string>((resolve) => gc.append(e, (err, r) => resolve(err ? ((err as { code?: string }).code ?? 'error') : String(r)), v5));
    const qos0 = outcome({ ...big(7), qos: 0 }); // held
    expect(await outcome({ ...big(2), dedup: mark('b') })).toBe('EB_ERR_LOG_FULL');
    await vi.waitFor(() => expect(gc.holding).toBe(true));
    expect(await outcome({ ...big(1), dedup: mark('a') })).toBe('duplicate'); // its PUBACK was lost: 0x00, not 0x97
    expect(await outcome({ ...big(3), dedup: mark('c') })).toBe('EB_ERR_LOG_FULL');
    expect(gc.waiting).toBe(1);
    position = 41;
    const reader = new LogReader({ dir, synchronous: 'normal' });
    reader.removeThrough(41);
    reader.close();
    gc.release();
    expect(await qos0).toMatch(/^\d+$/);
    expect(log.readAfter(41, 10).map((r) => r.payload[0])).toEqual([7]);
    gc.close();
    log.close();
  });

  it('overloaded: a final-refusal resend whose first send still waits is not taken for an older stored reading with the same key (review)', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const K = Buffer.alloc(20, 7);
    const seed = new GroupCommit(log);
    // an earlier reading with the same key (same client, packet id reused after a reconnect, same payload)
    await appendAll(seed, [{ ...entry('d', 1), dedup: { key: K, mode: 'remember', windowMs: 3_600_000 } }]);
    seed.close();
    const gc = new GroupCommit(log, { maxPending: 1 });
    const oldConn = { closed: false, finalRefusals: true };
    const newConn = { closed: false, finalRefusals: true };
    const outcome = (e: ReturnType<typeof entry>, o: object) =>
      new Promise<string>((resolve) => gc.append(e, (err, r) => resolve(err ? ((err as { code?: string }).code ?? 'error') : String(r)), o as never));
    const first = outcome({ ...entry('d', 2), dedup: { key: K, mode: 'remember', windowMs: 3_600_000 } }, oldConn); // waits
    oldConn.closed = true; // its connection drops before the group commit: it will be dropped
    const resend = outcome({ ...entry('d', 2), dedup: { key: K, mode: 'check', windowMs: 3_600_000 } }, newConn); // DUP on the new connection, over maxPending
    expect({ first: await first, resend: await resend }).toEqual({ first: 'EB_ERR_LOG_WRITE', resend: 'EB_ERR_INGRESS_OVERLOADED' });
    gc.close();
    log.close();
  });

  it('drops a live duplicate (acknowledged, not stored) and stores it again once its window ended', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    let now = 1_000_000;
    const gc = new GroupCommit(log, { clock: () => now });
    const mark = (k: string) => ({ key: key(k), mode: 'check' as const, windowMs: 50 });
    const results = await appendAll(gc, [
      { ...entry('d', 1), dedup: mark('a') },
      { ...entry('d', 2), dedup: mark('b') },
      { ...entry('d', 1), dedup: mark('a') }, // duplicate within the same group
    ]);
    expect(results).toEqual([1, 2, 'duplicate']);
    now += 49;
    expect(await appendAll(gc, [{ ...entry('d', 1), dedup: mark('a') }])).toEqual(['duplicate']);
    now += 1; // the 50 ms window ended
    expect(await appendAll(gc, [{ ...entry('d', 1), dedup: mark('a') }])).toEqual([3]);
    expect(gc.counters.duplicates).toBe(2);
    log.close();
  });

  it('remember-mode entries are always stored and arm the key for a later DUP', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    const gc = new GroupCommit(log);
    const first = { key: key('p1'), mode: 'remember' as const, windowMs: 60_000 };
    expect(await appendAll(gc, [{ ...entry('d', 1), dedup: first }, { ...entry('d', 1), dedup: first }])).toEqual([1, 2]);
    expect(await appendAll(gc, [{ ...entry('d', 1), dedup: { ...first, mode: 'check' } }])).toEqual(['duplicate']);
    log.close();
  });

  it('compact keeps only the latest record per route and device', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    const gc = new GroupCommit(log);
    await appendAll(gc, [
      { ...entry('a', 1), compact: true },
      { ...entry('b', 2), compact: true },
      { ...entry('a', 3), compact: true },
      entry('a', 4), // not compacted
    ]);
    expect(log.readAfter(0, 10).map((r) => [r.offset, r.deviceId])).toEqual([
      [2, 'b'],
      [3, 'a'],
      [4, 'a'],
    ]);
    log.close();
  });

  it('backpressure holds acknowledgements while full and releases them once space is freed', async () => {
    const dir = tmp();
    const log = new CommitLog({ dir, synchronous: 'normal' });
    const big = (i: number) => ({ ...entry('d', i), payload: Buffer.alloc(8000, i) });
    const seed = await appendAll(new GroupCommit(log), Array.from({ length: 40 }, (_, i) => big(i)));
    expect(seed).toHaveLength(40);
    let position = 0;
    const gc = new GroupCommit(log, {
      holdRetryMs: 10,
      storage: { recordBytes: room(log, 4000), overflow: 'backpressure', forwardPosition: () => position },
    });
    let acked = false;
    gc.append(big(99), (err) => (acked = !err));
    await vi.waitFor(() => expect(gc.holding, 'the group is held').toBe(true));
    expect(gc.waiting).toBe(1);
    expect(acked).toBe(false);
    // the forwarder forwards and removes records: space comes back, the held publish is stored
    position = 40;
    const reader = new LogReader({ dir, synchronous: 'normal' });
    reader.removeThrough(40);
    reader.close();
    gc.release();
    expect(acked).toBe(true);
    expect(gc.holding).toBe(false);
    expect(log.readAfter(40, 10).map((r) => r.payload[0])).toEqual([99]);
    log.close();
  });

  it('a burst larger than the room left is split: what fits is stored and acknowledged, the rest held', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const big = (i: number) => ({ ...entry('d', i), payload: Buffer.alloc(8000, i) });
    const gc = new GroupCommit(log, {
      holdRetryMs: 10,
      storage: { recordBytes: room(log, 3 * 8200 * 1.25), overflow: 'backpressure', forwardPosition: () => 0 },
    });
    const acked: number[] = [];
    for (let i = 1; i <= 10; i++) gc.append(big(i), (err) => !err && acked.push(i));
    await vi.waitFor(() => expect(gc.holding, 'the rest is held').toBe(true));
    expect(acked.length).toBeGreaterThan(0);
    expect(acked.length).toBeLessThan(10);
    expect(acked).toEqual(Array.from({ length: acked.length }, (_, i) => i + 1)); // in order
    expect(gc.holding).toBe(true);
    gc.close();
    log.close();
  });

  it('a publish that could never fit, even in an empty log, is refused rather than holding the others for good', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const gc = new GroupCommit(log, { holdRetryMs: 10, storage: { recordBytes: log.pageBytes() + 20_000, overflow: 'backpressure', forwardPosition: () => 0 } });
    const results = await appendAll(gc, [{ ...entry('d', 1), payload: Buffer.alloc(200_000) }, entry('d', 2)]).catch((err: { code?: string }) => err.code);
    expect(results).toBe('EB_ERR_INGRESS_PAYLOAD_TOO_LARGE');
    expect(await appendAll(gc, [entry('d', 3)])).toEqual([2]); // 'd' 2 was stored behind it
    log.close();
  });

  it('drop-oldest makes room by dropping the oldest unforwarded records, and counts them', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const big = (i: number) => ({ ...entry('d', i), payload: Buffer.alloc(8000, i) });
    await appendAll(new GroupCommit(log), Array.from({ length: 40 }, (_, i) => big(i)));
    const gc = new GroupCommit(log, {
      storage: { recordBytes: room(log, 4000), overflow: 'drop-oldest', forwardPosition: () => 0 },
    });
    expect(await appendAll(gc, [big(99)])).toEqual([41]);
    expect(gc.counters.droppedOverflow).toBeGreaterThan(0);
    const left = log.readAfter(0, 100);
    expect(left[0]!.offset).toBe(gc.counters.droppedOverflow + 1); // the oldest went first
    expect(left[left.length - 1]!.offset).toBe(41);
    log.close();
  });

  it('stores the DUP resend of a first send it refused, also after that resend was refused in turn', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'normal' });
    const gc = new GroupCommit(log);
    const key = Buffer.from('door-1/packet-1/OPEN');
    const send = (dup: boolean) =>
      new Promise<Error | number | 'duplicate'>((resolve) =>
        gc.append({ ...entry('door-1', 1), dedup: { key, mode: dup ? 'check' : 'remember', windowMs: 600_000 } }, (err, result) => resolve(err ?? result!)),
      );
    expect(await send(false)).toBe(1); // the morning's OPEN: stored, its key remembered
    const failing = vi.spyOn(log, 'append').mockImplementation(() => {
      throw new Error('database or disk is full');
    });
    expect(await send(false)).toBeInstanceOf(Error); // noon's OPEN, refused
    expect(await send(true)).toBeInstanceOf(Error); // its resend (decided: a first send), refused too
    failing.mockRestore();
    expect(await send(true)).toBe(2); // the next resend is noon's reading, not a retransmit
    expect(await send(true)).toBe('duplicate'); // and a retransmit of that one is a retransmit again
    expect(gc.counters).toMatchObject({ appended: 2, duplicates: 1, unstoredForgotten: 0 });
    log.close();
  });
});
