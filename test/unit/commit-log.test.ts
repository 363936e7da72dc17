import { closeSync, existsSync, openSync, readdirSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CommitLog, DB_FILE } from '../../src/log/commit-log.js';
import { logError } from '../../src/log/database.js';
import { LogReader } from '../../src/log/log-reader.js';
import { entry } from '../helpers/entries.js';
import { EdgebridgeError } from '../../src/errors.js';
import { useTmpDirs } from '../helpers/tmp.js';

const require = createRequire(import.meta.url);

describe('commit log', () => {
  const tmp = useTmpDirs();
  const open = (dir: string) => new CommitLog({ dir, synchronous: 'full' });
  const reader = (dir: string) => new LogReader({ dir, synchronous: 'full' });

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
    const r = reader(dir);
    r.commitPosition(3);
    expect(r.removeThrough(3)).toBe(3);
    r.close();
    expect(log.stats().records).toBe(0);
    log.close();
    log = open(dir);
    expect(log.lastOffset).toBe(3);
    expect(log.forwardPosition()).toBe(3);
    expect(log.append([entry('a', 4)])).toEqual([4]);
    log.close();
  });

  it('keeps records after the committed position', () => {
    const dir = tmp();
    const log = open(dir);
    log.append([entry('a', 1), entry('a', 2), entry('a', 3)]);
    const r = reader(dir);
    r.commitPosition(2);
    r.removeThrough(2);
    r.close();
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
    expect(log.forwardPosition()).toBe(1);
    // the records written before epochs existed belong to the genesis epoch, this opening starts the next
    const r = reader(dir);
    expect(r.epochs().map((e) => e.start)).toEqual([1, 3]);
    expect(r.topics()).toEqual(['t']);
    r.close();
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

  it('starts a new epoch at every opening, at the next offset to be handed out', () => {
    const dir = tmp();
    let log = open(dir);
    const first = log.epoch;
    log.append([entry('a', 1), entry('a', 2)]);
    log.close();
    log = open(dir);
    expect(log.epoch.id).not.toBe(first.id);
    expect(log.epoch.start).toBe(3);
    log.close();
    const r = reader(dir);
    // genesis (records from before epochs), the first opening, the second
    expect(r.epochs().slice(1)).toEqual([first, { id: log.epoch.id, start: 3 }]);
    r.close();
  });

  it('remembers every Kafka topic that has records, and forgets those without records that no route uses', () => {
    const dir = tmp();
    let log = open(dir);
    log.append([{ ...entry('a', 1), kafkaTopic: 'old.topic' }, entry('a', 2)]);
    expect(log.topics().sort()).toEqual(['iot.telemetry', 'old.topic']);
    log.pruneTopics(['iot.telemetry']);
    expect(log.topics().sort()).toEqual(['iot.telemetry', 'old.topic']); // old.topic still has a record
    const r = reader(dir);
    r.removeThrough(2);
    r.close();
    log.close();
    log = open(dir);
    log.pruneTopics(['iot.telemetry']);
    expect(log.topics()).toEqual(['iot.telemetry']);
    log.close();
  });

  it('reads a batch within its byte budget (one row at a time), and the end of the log from the same snapshot', () => {
    const dir = tmp();
    const log = open(dir);
    log.append(Array.from({ length: 20 }, (_, i) => ({ ...entry('a', i), payload: Buffer.alloc(10_000, i) })));
    const r = reader(dir);
    const batch = r.readBatch(0, 1000, 35_000);
    expect(batch.records.map((x) => x.offset)).toEqual([1, 2, 3]);
    expect(batch.end).toBe(20);
    // a record larger than the budget still goes, alone
    expect(r.readBatch(0, 1000, 100).records).toHaveLength(1);
    log.dropOldest(0, 20);
    expect(r.readBatch(0, 1000, 35_000)).toEqual({ records: [], end: 20 });
    r.close();
    log.close();
  });

  it('counts the WAL in usedBytes', () => {
    const dir = tmp();
    const log = open(dir);
    log.append(Array.from({ length: 50 }, (_, i) => ({ ...entry('a', i), payload: Buffer.alloc(4000, i) })));
    const wal = statSync(join(dir, `${DB_FILE}-wal`)).size;
    expect(wal).toBeGreaterThan(100_000);
    // the records' pages (about 200 KB) and the WAL that holds them until a checkpoint
    expect(log.usedBytes()).toBeGreaterThanOrEqual(wal + 150_000);
    log.close();
  });

  it("the forwarder's reader never moves a damaged file aside (that would rename the live log under the gateway)", () => {
    const dir = tmp();
    writeFileSync(join(dir, DB_FILE), Buffer.alloc(8192, 7));
    expect(() => reader(dir)).toThrow(expect.objectContaining({ code: 'EB_ERR_LOG_CORRUPT' }));
    expect(readdirSync(dir)).toEqual([DB_FILE]);
  });

  it('the reader refuses a log the gateway has not opened (migrated) yet', () => {
    const dir = tmp();
    const log = open(dir);
    log.close();
    const Database = require('better-sqlite3') as typeof import('better-sqlite3');
    const db = new Database(join(dir, DB_FILE));
    db.pragma('user_version = 2');
    db.close();
    expect(() => reader(dir)).toThrow(/must be opened by the gateway first/);
  });

  it('corruption seen while running is checked at the next start: a damaged file is moved aside then, an intact one kept', () => {
    const dir = tmp();
    let log = open(dir);
    log.append(Array.from({ length: 200 }, (_, i) => ({ ...entry('a', i), payload: Buffer.alloc(500, i) })));
    log.close();
    // an append or the forwarder hit SQLITE_CORRUPT: recorded beside the file, nothing moved
    const err = logError('EB_ERR_LOG_WRITE', join(dir, DB_FILE), 'append', Object.assign(new Error('database disk image is malformed'), { code: 'SQLITE_CORRUPT' }));
    expect(err.code).toBe('EB_ERR_LOG_CORRUPT');
    expect(existsSync(join(dir, `${DB_FILE}.damaged`))).toBe(true);
    expect(existsSync(join(dir, DB_FILE))).toBe(true);
    // the file is intact after all: kept, the mark cleared
    log = open(dir);
    expect(existsSync(join(dir, `${DB_FILE}.damaged`))).toBe(false);
    expect(log.append([entry('a', 999)])).toEqual([201]);
    log.close();
    // now really damaged in the middle (the header still reads fine), and seen so
    const fd = openSync(join(dir, DB_FILE), 'r+');
    writeSync(fd, Buffer.alloc(4096, 0xab), 0, 4096, 4096 * 8);
    closeSync(fd);
    logError('EB_ERR_LOG_READ', join(dir, DB_FILE), 'read', Object.assign(new Error('malformed'), { code: 'SQLITE_CORRUPT' }));
    expect(() => open(dir)).toThrow(expect.objectContaining({ code: 'EB_ERR_LOG_CORRUPT' }));
    expect(readdirSync(dir).some((f) => f.startsWith(`${DB_FILE}.corrupt-`))).toBe(true);
    expect(existsSync(join(dir, `${DB_FILE}.damaged`))).toBe(false);
  });
});
