import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { EdgebridgeError } from '../../src/errors.js';
import { openLogForReading, readBacklog } from '../../src/log/backlog.js';
import { CommitLog, DB_FILE } from '../../src/log/commit-log.js';
import { SCHEMA_VERSION } from '../../src/log/database.js';
import { lockStorageDir } from '../../src/log/dir-lock.js';
import { LogReader } from '../../src/log/log-reader.js';
import { entry } from '../helpers/entries.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

const T0 = 1_700_000_000_000;

/** entry(device, n) with a payload of `size` bytes (entry's own is 5). */
const sized = (deviceId: string, n: number, size: number) => ({ ...entry(deviceId, n), payload: Buffer.alloc(size, n) });

describe('backlog per device (readBacklog)', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  /** A real log written by CommitLog, and a read-only connection to it. */
  function setup() {
    const dir = tmp();
    const log = new CommitLog({ dir, synchronous: 'full' });
    cleanup(() => log.close());
    const db = openLogForReading(dir);
    cleanup(() => db.close());
    const forwardTo = (offset: number) => {
      const reader = new LogReader({ dir, synchronous: 'full' });
      reader.commitPosition(offset);
      reader.close();
    };
    return { dir, log, db, forwardTo };
  }

  it('an empty log has no backlog', () => {
    const { db } = setup();
    const summary = readBacklog(db);
    expect(summary).toEqual({ position: 0, records: 0, bytes: 0, devices: 0, top: [], readAt: summary.readAt });
    expect(summary).not.toHaveProperty('oldestReceivedAt');
  });

  it('counts records, payload bytes and the oldest receive time per device, most records first, then by id', () => {
    const { log, db } = setup();
    log.append([sized('b', 5, 10), sized('a', 1, 100), sized('c', 7, 1), sized('a', 2, 100), sized('b', 3, 10), sized('a', 9, 100)]);
    const summary = readBacklog(db);
    expect(summary).toMatchObject({ position: 0, records: 6, bytes: 321, oldestReceivedAt: T0 + 1, devices: 3 });
    expect(summary.top).toEqual([
      { deviceId: 'a', records: 3, bytes: 300, oldestReceivedAt: T0 + 1 },
      { deviceId: 'b', records: 2, bytes: 20, oldestReceivedAt: T0 + 3 },
      { deviceId: 'c', records: 1, bytes: 1, oldestReceivedAt: T0 + 7 },
    ]);
    // ties on records are broken by device id
    log.append([sized('c', 8, 1)]);
    expect(readBacklog(db).top.map((d) => [d.deviceId, d.records])).toEqual([
      ['a', 3],
      ['b', 2],
      ['c', 2],
    ]);
  });

  it('counts only what is after the forward position, whether or not forwarded records are removed yet', () => {
    const { dir, log, db, forwardTo } = setup();
    log.append([entry('a', 1), entry('b', 2), entry('a', 3), entry('b', 4), entry('b', 5)]);
    forwardTo(3);
    expect(readBacklog(db)).toMatchObject({
      position: 3,
      records: 2,
      bytes: 10,
      oldestReceivedAt: T0 + 4,
      devices: 1,
      top: [{ deviceId: 'b', records: 2, bytes: 10, oldestReceivedAt: T0 + 4 }],
    });
    const reader = new LogReader({ dir, synchronous: 'full' });
    reader.removeThrough(3);
    reader.commitPosition(5);
    reader.close();
    expect(readBacklog(db)).toMatchObject({ position: 5, records: 0, bytes: 0, devices: 0, top: [] });
    expect(readBacklog(db)).not.toHaveProperty('oldestReceivedAt');
  });

  it('a backlog longer than one scan chunk (50,000 offsets) is counted whole, across chunks, from the forward position', () => {
    const { log, db, forwardTo } = setup();
    const devices = ['a', 'b', 'c'];
    for (let i = 0; i < 120_001; i += 5_000) {
      const batch = [];
      for (let j = i; j < Math.min(i + 5_000, 120_001); j++) batch.push({ ...entry(devices[j % 3]!, j), receivedAt: T0 + j });
      log.append(batch, T0);
    }
    forwardTo(10_000);
    const s = readBacklog(db);
    expect(s).toMatchObject({ position: 10_000, records: 110_001, devices: 3, oldestReceivedAt: T0 + 10_000 });
    expect(s.top.map((d) => [d.deviceId, d.records])).toEqual([['a', 36_667], ['b', 36_667], ['c', 36_667]]);
    expect(s.top.find((d) => d.deviceId === 'c')!.oldestReceivedAt).toBe(T0 + 10_001);
  });

  it('with a device: only that device in top, the totals still the whole backlog', () => {
    const { log, db } = setup();
    log.append([entry('a', 1), entry('b', 2), entry('a', 3)]);
    expect(readBacklog(db, { device: 'b' })).toMatchObject({
      records: 3,
      devices: 2,
      oldestReceivedAt: T0 + 1,
      top: [{ deviceId: 'b', records: 1, bytes: 5, oldestReceivedAt: T0 + 2 }],
    });
    expect(readBacklog(db, { device: 'nope' })).toMatchObject({ records: 3, devices: 2, top: [] });
  });

  it('top holds at most limit devices (20 by default); the device count is of them all', () => {
    const { log, db } = setup();
    log.append(Array.from({ length: 25 }, (_, i) => entry(`d${String(i).padStart(2, '0')}`, i)));
    log.append([entry('d24', 30)]);
    expect(readBacklog(db).top).toHaveLength(20);
    const one = readBacklog(db, { limit: 1 });
    expect(one).toMatchObject({ devices: 25, records: 26, top: [{ deviceId: 'd24', records: 2 }] });
    expect(() => readBacklog(db, { limit: -1 })).toThrow(RangeError);
  });
});

describe('openLogForReading', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  const code = (fn: () => unknown): string | undefined => {
    try {
      fn();
    } catch (err) {
      return err instanceof EdgebridgeError ? `${err.code}: ${err.message}` : `not typed: ${String(err)}`;
    }
    return undefined;
  };

  it('a dir without a log: EB_ERR_LOG_NOT_FOUND naming the file, and nothing created', () => {
    const dir = tmp();
    expect(code(() => openLogForReading(dir))).toMatch(new RegExp(`^EB_ERR_LOG_NOT_FOUND: no commit log at ${join(dir, DB_FILE)}`));
    expect(code(() => openLogForReading(join(dir, 'missing')))).toMatch(/^EB_ERR_LOG_NOT_FOUND/);
    expect(existsSync(join(dir, DB_FILE))).toBe(false);
    expect(existsSync(join(dir, 'missing'))).toBe(false);
  });

  it('reads while the writer holds the log and the storage.dir lock, sees later appends, and cannot write', () => {
    const dir = tmp();
    const lock = lockStorageDir(dir);
    cleanup(() => lock.release());
    const log = new CommitLog({ dir, synchronous: 'full' });
    cleanup(() => log.close());
    log.append([entry('a', 1)]);
    const db = openLogForReading(dir);
    cleanup(() => db.close());
    expect(readBacklog(db).records).toBe(1);
    log.append([entry('a', 2)]);
    expect(readBacklog(db).records).toBe(2);
    expect(() => db.exec('DELETE FROM records')).toThrow(/readonly/);
    expect(log.append([entry('a', 3)])).toEqual([3]);
  });

  it('does not take the storage.dir lock: a gateway can start while a reader is open', () => {
    const dir = tmp();
    new CommitLog({ dir, synchronous: 'full' }).close();
    const db = openLogForReading(dir);
    cleanup(() => db.close());
    const lock = lockStorageDir(dir);
    lock.release();
  });

  it('a log of a newer schema is refused, naming both versions', () => {
    const dir = tmp();
    new CommitLog({ dir, synchronous: 'full' }).close();
    const writer = new Database(join(dir, DB_FILE));
    writer.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    writer.close();
    expect(code(() => openLogForReading(dir))).toMatch(
      new RegExp(`^EB_ERR_LOG_OPEN: .*schema version ${SCHEMA_VERSION + 1}, newer than this edgebridge understands \\(${SCHEMA_VERSION}\\)`),
    );
  });

  it('a file that is not a database: EB_ERR_LOG_CORRUPT, and the file is left where it is', () => {
    const dir = tmp();
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, DB_FILE), Buffer.alloc(8192, 'x'));
    expect(code(() => openLogForReading(dir))).toMatch(/^EB_ERR_LOG_CORRUPT/);
    expect(existsSync(join(dir, DB_FILE))).toBe(true);
  });

  it('an empty SQLite file is not a commit log', () => {
    const dir = tmp();
    new Database(join(dir, DB_FILE)).close();
    expect(code(() => openLogForReading(dir))).toMatch(/^EB_ERR_LOG_OPEN: .* is not an edgebridge commit log/);
  });
});
