import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CommitLog, DB_FILE } from '../../src/log/commit-log.js';
import { entry } from '../helpers/entries.js';
import { EdgebridgeError } from '../../src/errors.js';
import { useTmpDirs } from '../helpers/tmp.js';

describe('commit log', () => {
  const tmp = useTmpDirs();
  const open = (dir: string) => new CommitLog({ dir, synchronous: 'full' });

  it('appends with increasing offsets and reads back exactly what was written', () => {
    const log = open(tmp());
    expect(log.append([entry('a', 1), entry('b', 2)])).toEqual([1, 2]);
    expect(log.append([entry('a', 3)])).toEqual([3]);
    const records = log.readAfter(0, 10);
    expect(records.map((r) => r.offset)).toEqual([1, 2, 3]);
    expect(records[1]).toEqual({ ...entry('b', 2), offset: 2 });
    expect(Buffer.isBuffer(records[0]!.payload)).toBe(true);
    expect(log.readAfter(1, 1).map((r) => r.offset)).toEqual([2]);
    log.close();
  });

  it('never reuses an offset, even after forwarded records are deleted and the log reopened', () => {
    const dir = tmp();
    let log = open(dir);
    log.append([entry('a', 1), entry('a', 2), entry('a', 3)]);
    log.commitPosition('forward', 3);
    expect(log.removeThrough(3)).toBe(3);
    expect(log.stats().records).toBe(0);
    log.close();
    log = open(dir);
    expect(log.lastOffset).toBe(3);
    expect(log.position('forward')).toBe(3);
    expect(log.append([entry('a', 4)])).toEqual([4]);
    log.close();
  });

  it('keeps records after the committed position', () => {
    const log = open(tmp());
    log.append([entry('a', 1), entry('a', 2), entry('a', 3)]);
    log.commitPosition('forward', 2);
    log.removeThrough(2);
    expect(log.readAfter(0, 10).map((r) => r.offset)).toEqual([3]);
    expect(log.stats()).toEqual({ records: 1, firstOffset: 3, lastOffset: 3, forwardPosition: 2 });
    log.close();
  });

  it('uses WAL and synchronous=FULL by default', async () => {
    const dir = tmp();
    const log = open(dir);
    log.append([entry('a', 1)]);
    expect(readdirSync(dir)).toContain(`${DB_FILE}-wal`);
    const Database = (await import('better-sqlite3')).default;
    log.close();
    const db = new Database(join(dir, DB_FILE), { readonly: true });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    db.close();
  });

  it('moves a corrupt database aside with a clear error, and starts fresh afterwards', () => {
    const dir = tmp();
    writeFileSync(join(dir, DB_FILE), Buffer.alloc(8192, 7));
    let error: unknown;
    try {
      open(dir);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(EdgebridgeError);
    expect((error as EdgebridgeError).code).toBe('EB_ERR_LOG_CORRUPT');
    expect((error as Error).message).toContain(join(dir, DB_FILE));
    const aside = readdirSync(dir).find((f) => f.startsWith(`${DB_FILE}.corrupt-`));
    expect(aside).toBeDefined();
    expect((error as Error).message).toContain(aside!);
    expect(existsSync(join(dir, DB_FILE))).toBe(false);
    const log = open(dir);
    expect(log.append([entry('a', 1)])).toEqual([1]);
    log.close();
  });

  it('upgrades a schema-1 log (before dedup and compaction) in place, keeping records and positions', async () => {
    const dir = tmp();
    const Database = (await import('better-sqlite3')).default;
    const old = new Database(join(dir, DB_FILE));
    old.pragma('journal_mode = WAL');
    old.exec(`
      CREATE TABLE records (log_offset INTEGER PRIMARY KEY AUTOINCREMENT, received_at INTEGER NOT NULL,
        route TEXT NOT NULL, kafka_topic TEXT NOT NULL, device_id TEXT NOT NULL, mqtt_topic TEXT NOT NULL,
        qos INTEGER NOT NULL, payload BLOB NOT NULL);
      CREATE TABLE positions (name TEXT PRIMARY KEY, log_offset INTEGER NOT NULL);
      INSERT INTO records (received_at, route, kafka_topic, device_id, mqtt_topic, qos, payload)
        VALUES (1, 'r', 't', 'd', 'devices/d/telemetry', 1, x'00ff'), (2, 'r', 't', 'd', 'devices/d/telemetry', 1, x'01');
      INSERT INTO positions VALUES ('forward', 1);
      PRAGMA user_version = 1;
    `);
    old.close();
    const log = open(dir);
    expect(log.position('forward')).toBe(1);
    expect(log.readAfter(0, 10).map((r) => [r.offset, r.payload.toString('hex')])).toEqual([
      [1, '00ff'],
      [2, '01'],
    ]);
    expect(log.append([{ ...entry('d', 3), compact: true, dedup: { key: Buffer.from('k'), mode: 'check', windowMs: 1000 } }])).toEqual([3]);
    log.close();
  });

  it('refuses a log written by a newer edgebridge', async () => {
    const dir = tmp();
    const Database = (await import('better-sqlite3')).default;
    const db = new Database(join(dir, DB_FILE));
    db.pragma('user_version = 99');
    db.close();
    expect(() => open(dir)).toThrow(/schema version 99, newer than this edgebridge understands/);
  });

  it('refuses use after close with a typed error', () => {
    const log = open(tmp());
    log.close();
    expect(() => log.append([entry('a', 1)])).toThrow(expect.objectContaining({ code: 'EB_ERR_LOG_CLOSED' }));
  });
});
