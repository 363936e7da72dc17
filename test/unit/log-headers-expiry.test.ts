import { join } from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { toMessage } from '../../src/forward/kafka-sink.js';
import { CommitLog, DB_FILE, type LogEntry } from '../../src/log/commit-log.js';
import { MIGRATIONS, SCHEMA_VERSION, recordBytes } from '../../src/log/database.js';
import { decodeHeaders, encodeHeaders } from '../../src/log/headers.js';
import { GroupCommit } from '../../src/log/group-commit.js';
import { LogReader } from '../../src/log/log-reader.js';
import { Retention } from '../../src/log/retention.js';
import { entry } from '../helpers/entries.js';
import { useTmpDirs } from '../helpers/tmp.js';

describe('record headers and expiry in the log', () => {
  const tmp = useTmpDirs();

  it('ordered headers with binary values and the expiry survive a round trip through the log', () => {
    const dir = tmp();
    const log = new CommitLog({ dir, synchronous: 'full' });
    const correlation = Buffer.from([0, 1, 2, 0xfe, 0xff]);
    const v5: LogEntry = {
      ...entry('dev-1', 1),
      headers: [
        ['content-type', 'application/json'],
        ['mqtt-correlation-data', correlation],
        ['a', '1'],
        ['b', 'ü'],
        ['a', '3'],
      ],
      expiresAt: 1_700_000_002_000,
    };
    expect(log.append([v5, entry('dev-2', 2)])).toEqual([1, 2]);
    const reader = new LogReader({ dir, synchronous: 'full' });
    const { records } = reader.readBatch(0, 10, 1 << 20);
    expect(records[0]!.headers).toEqual(v5.headers);
    expect(Buffer.isBuffer(records[0]!.headers![1]![1])).toBe(true);
    expect(records[0]!.expiresAt).toBe(1_700_000_002_000);
    // a record without either has neither (not an empty list, not null)
    expect('headers' in records[1]!).toBe(false);
    expect('expiresAt' in records[1]!).toBe(false);
    expect(log.readAfter(0, 10)[0]!.headers).toEqual(v5.headers);
    reader.close();
    log.close();
  });

  it('headers count against the record size (storage and batch limits)', () => {
    const plain = entry('dev-1', 1);
    const withHeaders: LogEntry = { ...plain, headers: [['k', 'x'.repeat(1000)]] };
    expect(recordBytes(withHeaders) - recordBytes(plain)).toBeGreaterThanOrEqual(1001);
    expect(recordBytes({ ...plain, headers: { 'correlation-id': 'c-1' } }) - recordBytes(plain)).toBeGreaterThanOrEqual(17);
  });

  it('decodes both stored forms; a damaged value reads as no headers', () => {
    expect(decodeHeaders('{"correlation-id":"c-1","delivered-at":"t"}')).toEqual([
      ['correlation-id', 'c-1'],
      ['delivered-at', 't'],
    ]);
    expect(decodeHeaders(encodeHeaders([['a', Buffer.from([1])]]))).toEqual([['a', Buffer.from([1])]]);
    expect(encodeHeaders([])).toBeNull();
    expect(decodeHeaders('not json')).toBeUndefined();
  });

  it('a log written by the previous version (headers as a JSON object, no expiry column) is upgraded and forwards the same headers', () => {
    const dir = tmp();
    // The previous version's schema, with a command ack row as it wrote it.
    const old = new Database(join(dir, DB_FILE));
    for (let v = 0; v < SCHEMA_VERSION - 1; v++) old.exec(MIGRATIONS[v]!);
    old.pragma(`user_version = ${SCHEMA_VERSION - 1}`);
    old.prepare("INSERT INTO meta (key, value) VALUES ('log_id', 'old-log')").run();
    old
      .prepare(
        `INSERT INTO records (received_at, route, kafka_topic, device_id, mqtt_topic, qos, compact, payload, headers)
         VALUES (?, '$commands', 'acks', 'dev-1', 'cmd/dev-1/c-1', 1, 0, ?, ?)`,
      )
      .run(1_700_000_000_000, Buffer.from('{}'), JSON.stringify({ 'correlation-id': 'c-1', 'delivered-at': '2026-01-01T00:00:00.000Z', 'command-offset': 'cmds/0/5' }));
    old.prepare(
      `INSERT INTO records (received_at, route, kafka_topic, device_id, mqtt_topic, qos, compact, payload, headers)
       VALUES (?, 'r', 't', 'dev-2', 'devices/dev-2/telemetry', 1, 0, ?, NULL)`,
    ).run(1_700_000_000_001, Buffer.from('x'));
    old.close();

    const log = new CommitLog({ dir, synchronous: 'full' });
    expect(log.append([{ ...entry('dev-3', 3), headers: [['a', '1']], expiresAt: 5 }])).toEqual([3]);
    const reader = new LogReader({ dir, synchronous: 'full' });
    const { records } = reader.readBatch(0, 10, 1 << 20);
    expect(records.map((r) => r.offset)).toEqual([1, 2, 3]);
    expect(records[0]!.expiresAt).toBeUndefined();
    const ack = toMessage(records[0]!, 'gw').headers as unknown as [string, string][];
    expect(ack).toEqual([
      ['mqtt-topic', 'cmd/dev-1/c-1'],
      ['gateway-id', 'gw'],
      ['correlation-id', 'c-1'],
      ['delivered-at', '2026-01-01T00:00:00.000Z'],
      ['command-offset', 'cmds/0/5'],
    ]);
    expect(toMessage(records[1]!, 'gw').headers).toEqual([
      ['mqtt-topic', 'devices/dev-2/telemetry'],
      ['gateway-id', 'gw'],
    ]);
    expect(records[2]!.headers).toEqual([['a', '1']]);
    expect(records[2]!.expiresAt).toBe(5);
    reader.close();
    log.close();
  });
});

describe('message-expired records give their space back', () => {
  const tmp = useTmpDirs();
  const expiring = (n: number, expiresAt?: number): LogEntry => ({ ...entry('d', n), ...(expiresAt === undefined ? {} : { expiresAt }) });

  it('deletes expired unforwarded records, leaving the forwarder the ones it may have in flight and the forwarded ones', () => {
    const dir = tmp();
    const log = new CommitLog({ dir, synchronous: 'full' });
    // offsets 1..10; odd ones expire at 100, 4 at 10_000, the others never
    log.append(Array.from({ length: 10 }, (_, i) => expiring(i + 1, i % 2 === 0 ? 100 : i + 1 === 4 ? 10_000 : undefined)));
    const reader = new LogReader({ dir, synchronous: 'full' });
    reader.commitPosition(2); // 1 and 2 forwarded (still in the log until removed)
    // the first 3 records after the position (3, 4, 5) may be in the batch in flight
    expect(log.dropMessageExpired(1000, 3)).toBe(2); // 7 and 9
    expect(log.readAfter(0, 20).map((r) => r.offset)).toEqual([1, 2, 3, 4, 5, 6, 8, 10]);
    expect(log.messageExpiredDropped).toBe(2);
    // nothing in flight: 3 and 5 go too (1 is forwarded: removing it is the forwarder's job)
    expect(log.dropMessageExpired(1000, 0)).toBe(2);
    expect(log.dropMessageExpired(20_000, 0)).toBe(1); // 4
    expect(log.readAfter(0, 20).map((r) => r.offset)).toEqual([1, 2, 6, 8, 10]);
    // fewer records after the position than may be in flight: nothing is touched
    log.append([expiring(11, 100)]);
    expect(log.dropMessageExpired(1000, 10)).toBe(0);
    const plan = (new Database(join(dir, DB_FILE), { readonly: true }).prepare(
      'EXPLAIN QUERY PLAN SELECT log_offset FROM records WHERE expires_at <= 5 AND log_offset >= 3 LIMIT 10',
    ).all() as { detail: string }[]).map((r) => r.detail).join(' ');
    expect(plan).toMatch(/records_expiry/);
    reader.close();
    log.close();
  });

  it('under backpressure, expired records make room before a publish is held', async () => {
    const dir = tmp();
    const log = new CommitLog({ dir, synchronous: 'normal' });
    const big = (i: number, expiresAt?: number): LogEntry => ({ ...expiring(i, expiresAt), payload: Buffer.alloc(8000, i) });
    log.append(Array.from({ length: 40 }, (_, i) => big(i + 1, 1000)));
    const gc = new GroupCommit(log, {
      holdRetryMs: 10,
      clock: () => 5000,
      storage: { recordBytes: log.pageBytes() + 4000, overflow: 'backpressure', forwardPosition: () => 0, forwardBatchRecords: 5 },
    });
    const result = await new Promise<unknown>((resolve) => gc.append(big(99), (err, r) => resolve(err ?? r)));
    expect(result).toBe(41);
    expect(gc.holding).toBe(false);
    expect(log.messageExpiredDropped).toBeGreaterThan(0);
    // the first 5 (maybe in the forwarder's batch) were left alone
    expect(log.readAfter(0, 5).map((r) => r.offset)).toEqual([1, 2, 3, 4, 5]);
    gc.close();
    log.close();
  });

  it('retention deletes them on its run and says so (at most once a minute)', () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append(Array.from({ length: 5 }, (_, i) => expiring(i + 1, 100)));
    const lines: { msg: string }[] = [];
    const logger = pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l) as { msg: string }) });
    const counters = new GroupCommit(log).counters;
    const retention = new Retention(log, { maxAgeMs: 3_600_000, forwardPosition: () => 0, groupCounters: counters, logger, intervalMs: 0, forwardBatchRecords: 1 });
    retention.runOnce(1000);
    expect(log.messageExpiredDropped).toBe(4);
    expect(log.readAfter(0, 10).map((r) => r.offset)).toEqual([1]);
    expect(lines.filter((l) => l.msg.includes('message expiry'))).toHaveLength(1);
    log.append([expiring(6, 100), expiring(7, 100)]);
    retention.runOnce(2000);
    expect(log.messageExpiredDropped).toBe(6);
    expect(lines.filter((l) => l.msg.includes('message expiry'))).toHaveLength(1);
    log.close();
  });
});
