import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { EdgebridgeError } from '../errors.js';

/**
 * How an entry takes part in deduplication. `check`: store the entry only if its key is not
 * already live in the index (a retransmit or replay is dropped). `remember`: always store it and
 * (re)arm the key, so that a later DUP retransmit of the same packet is recognised.
 */
export interface DedupMark {
  readonly key: Buffer;
  readonly mode: 'check' | 'remember';
  readonly windowMs: number;
}

/** What ingress hands to the log: one MQTT publish that matched a route. */
export interface LogEntry {
  /** Receive time, ms since the epoch; becomes the Kafka record timestamp. */
  readonly receivedAt: number;
  /** The route pattern that matched, as written in the config. */
  readonly route: string;
  readonly kafkaTopic: string;
  readonly deviceId: string;
  readonly mqttTopic: string;
  readonly qos: 0 | 1 | 2;
  readonly payload: Buffer;
  readonly dedup?: DedupMark;
  /** Compacted route: older unforwarded records of this route and device are dropped. */
  readonly compact?: boolean;
}

/** A stored entry, as the forwarder reads it back. */
export interface LogRecord extends Omit<LogEntry, 'dedup' | 'compact'> {
  /** Monotonically increasing; never reused, even after the records before it are removed. */
  readonly offset: number;
}

/** The outcome of one appended entry: its offset, or `duplicate` when dedup dropped it. */
export type AppendResult = number | 'duplicate';

export interface CommitLogOptions {
  readonly dir: string;
  readonly synchronous: 'full' | 'normal';
}

export interface CommitLogStats {
  readonly records: number;
  readonly firstOffset: number | null;
  readonly lastOffset: number;
  readonly forwardPosition: number;
}

/** Schema steps; MIGRATIONS[n] takes a database from user_version n to n + 1. Never edit a step. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE records (
     log_offset  INTEGER PRIMARY KEY AUTOINCREMENT,
     received_at INTEGER NOT NULL,
     route       TEXT    NOT NULL,
     kafka_topic TEXT    NOT NULL,
     device_id   TEXT    NOT NULL,
     mqtt_topic  TEXT    NOT NULL,
     qos         INTEGER NOT NULL,
     payload     BLOB    NOT NULL
   );
   CREATE TABLE positions (
     name       TEXT PRIMARY KEY,
     log_offset INTEGER NOT NULL
   );`,
  `ALTER TABLE records ADD COLUMN compact INTEGER NOT NULL DEFAULT 0;
   CREATE INDEX records_compact ON records (route, device_id) WHERE compact = 1;
   CREATE TABLE dedup (
     key        BLOB PRIMARY KEY,
     expires_at INTEGER NOT NULL
   ) WITHOUT ROWID;
   CREATE INDEX dedup_expiry ON dedup (expires_at);
   CREATE TABLE meta (
     key   TEXT PRIMARY KEY,
     value TEXT NOT NULL
   );`,
];
export const DB_FILE = 'edgebridge.db';
/** The WAL is truncated back to this after checkpoints, so a drained log returns near baseline. */
const JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024;
/** Offsets removed per delete statement (see removeThrough). */
const REMOVE_CHUNK = 5000;

interface RecordRow {
  log_offset: number;
  received_at: number;
  route: string;
  kafka_topic: string;
  device_id: string;
  mqtt_topic: string;
  qos: number;
  payload: Buffer;
}

/**
 * The durable local commit log: an append-only SQLite table with AUTOINCREMENT offsets (so an
 * offset is never handed out twice, even once forwarded records are deleted), named positions
 * like consumer offsets, and the dedup index. WAL mode; synchronous=FULL by default so a
 * committed append survives a power cut, which is what lets ingress acknowledge after append.
 */
export class CommitLog {
  readonly file: string;
  /** Random identity of this log file, carried in Kafka checkpoints: a checkpoint written from
   * another log (a replaced or recreated database) must never move this log's position. */
  readonly logId: string;
  private readonly db: Database.Database;
  /**
   * The forwarder's connection (reads, positions, removals) runs with synchronous=NORMAL: its
   * commits are made durable by the next FULL commit of an append, which fsyncs the shared WAL.
   * A position lost in a power cut costs nothing: records are removed only after their position
   * was stored, and on start the forwarder resumes from the checkpoint committed in Kafka.
   */
  private readonly reader: Database.Database;
  private readonly stmts: ReturnType<CommitLog['prepare']>;
  private readonly appendAll: (entries: readonly LogEntry[], now: number) => AppendResult[];
  private lastOffsetCache: number;
  private readonly pageSize: number;
  private closed = false;

  constructor(options: CommitLogOptions) {
    const dir = resolve(options.dir);
    this.file = join(dir, DB_FILE);
    try {
      mkdirSync(dir, { recursive: true });
    } catch (err) {
      throw new EdgebridgeError('EB_ERR_LOG_OPEN', `cannot create storage.dir ${dir}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    this.db = openDatabase(this.file);
    try {
      this.db.pragma(`synchronous = ${options.synchronous.toUpperCase()}`);
      this.db.pragma(`journal_size_limit = ${JOURNAL_SIZE_LIMIT}`);
      this.migrate();
      this.reader = openDatabase(this.file);
      this.reader.pragma('synchronous = NORMAL');
      this.reader.pragma(`journal_size_limit = ${JOURNAL_SIZE_LIMIT}`);
      this.stmts = this.prepare();
      this.logId = this.readOrCreateLogId();
    } catch (err) {
      this.db.close();
      throw err instanceof EdgebridgeError ? err : openError(this.file, err);
    }
    this.pageSize = this.db.pragma('page_size', { simple: true }) as number;
    this.appendAll = this.db.transaction((entries: readonly LogEntry[], now: number) =>
      entries.map((e) => this.appendOne(e, now)),
    );
    this.lastOffsetCache = (this.stmts.lastSeq.get() as number | undefined) ?? 0;
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version > MIGRATIONS.length) {
      throw new EdgebridgeError(
        'EB_ERR_LOG_OPEN',
        `commit log ${this.file} has schema version ${version}, newer than this edgebridge understands (${MIGRATIONS.length}); upgrade edgebridge`,
      );
    }
    // Each step runs in its own transaction with the version bump, so a crash mid-upgrade
    // leaves either the old schema or the new one.
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  private prepare() {
    const { db, reader } = this;
    return {
      insert: db.prepare(
        `INSERT INTO records (received_at, route, kafka_topic, device_id, mqtt_topic, qos, compact, payload)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      compactDevice: db.prepare('DELETE FROM records WHERE compact = 1 AND route = ? AND device_id = ?'),
      // Inserts the key, or re-arms it if it expired; changes = 0 means it is live: a duplicate.
      dedupCheck: db.prepare(
        `INSERT INTO dedup (key, expires_at) VALUES (?, ?)
         ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at WHERE dedup.expires_at <= ?`,
      ),
      dedupRemember: db.prepare(
        'INSERT INTO dedup (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at',
      ),
      dedupPrune: db.prepare('DELETE FROM dedup WHERE key IN (SELECT key FROM dedup WHERE expires_at <= ? LIMIT ?)'),
      dedupPruneOldest: db.prepare(
        'DELETE FROM dedup WHERE key IN (SELECT key FROM dedup ORDER BY expires_at LIMIT ?)',
      ),
      dropOldest: db.prepare(
        'DELETE FROM records WHERE log_offset IN (SELECT log_offset FROM records WHERE log_offset > ? ORDER BY log_offset LIMIT ?)',
      ),
      // Looks at the oldest unforwarded records only (offsets follow arrival), so a large backlog
      // costs a bounded scan per run rather than a full one.
      dropExpired: db.prepare(
        `DELETE FROM records WHERE log_offset IN (
           SELECT log_offset FROM records WHERE log_offset > ? ORDER BY log_offset LIMIT 10000
         ) AND received_at < ?`,
      ),
      lastSeq: db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'records'").pluck(),
      read: reader.prepare(
        `SELECT log_offset, received_at, route, kafka_topic, device_id, mqtt_topic, qos, payload
         FROM records WHERE log_offset > ? ORDER BY log_offset LIMIT ?`,
      ),
      getPosition: reader.prepare('SELECT log_offset FROM positions WHERE name = ?').pluck(),
      setPosition: reader.prepare(
        'INSERT INTO positions (name, log_offset) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET log_offset = excluded.log_offset',
      ),
      removeThrough: reader.prepare('DELETE FROM records WHERE log_offset <= ?'),
      counts: reader.prepare('SELECT count(*) AS n, min(log_offset) AS first FROM records'),
      firstOffset: reader.prepare('SELECT min(log_offset) FROM records').pluck(),
      pendingCount: reader.prepare('SELECT count(*) FROM records WHERE log_offset > ?').pluck(),
    };
  }

  private readOrCreateLogId(): string {
    const existing = this.db.prepare("SELECT value FROM meta WHERE key = 'log_id'").pluck().get() as string | undefined;
    if (existing) return existing;
    const id = randomUUID();
    this.db.prepare("INSERT INTO meta (key, value) VALUES ('log_id', ?)").run(id);
    return id;
  }

  private appendOne(e: LogEntry, now: number): AppendResult {
    if (e.dedup) {
      const expires = now + e.dedup.windowMs;
      if (e.dedup.mode === 'check') {
        if (this.stmts.dedupCheck.run(e.dedup.key, expires, now).changes === 0) return 'duplicate';
      } else {
        this.stmts.dedupRemember.run(e.dedup.key, expires);
      }
    }
    if (e.compact) this.stmts.compactDevice.run(e.route, e.deviceId);
    return Number(
      this.stmts.insert.run(e.receivedAt, e.route, e.kafkaTopic, e.deviceId, e.mqttTopic, e.qos, e.compact ? 1 : 0, e.payload)
        .lastInsertRowid,
    );
  }

  private assertOpen(): void {
    if (this.closed) throw new EdgebridgeError('EB_ERR_LOG_CLOSED', `commit log ${this.file} is closed`);
  }

  /**
   * Appends entries in one transaction (one fsync with synchronous=FULL) and returns, per entry,
   * its offset or `duplicate`. When this returns the entries are durable; when it throws, none
   * of them were stored.
   */
  append(entries: readonly LogEntry[], now = Date.now()): AppendResult[] {
    this.assertOpen();
    if (entries.length === 0) return [];
    let results: AppendResult[];
    try {
      results = this.appendAll(entries, now);
    } catch (err) {
      throw new EdgebridgeError('EB_ERR_LOG_WRITE', `append to ${this.file} failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
    for (let i = results.length - 1; i >= 0; i--) {
      const r = results[i]!;
      if (r !== 'duplicate') {
        this.lastOffsetCache = r;
        break;
      }
    }
    return results;
  }

  /** Records with offset > `after`, in offset order, at most `limit`. */
  readAfter(after: number, limit: number): LogRecord[] {
    this.assertOpen();
    return (this.stmts.read.all(after, limit) as RecordRow[]).map(toRecord);
  }

  /** A named position (like a consumer offset); 0 when never set. */
  position(name: string): number {
    this.assertOpen();
    return (this.stmts.getPosition.get(name) as number | undefined) ?? 0;
  }

  /** Stores a named position (the forwarder's, once Kafka committed up to `offset`). */
  commitPosition(name: string, offset: number): void {
    this.assertOpen();
    this.stmts.setPosition.run(name, offset);
  }

  /**
   * Removes the records up to and including `offset` (already forwarded); returns how many.
   * Deletes in chunks, each its own short transaction, so appends from the other thread are not
   * held up behind one long delete.
   */
  removeThrough(offset: number): number {
    this.assertOpen();
    let removed = 0;
    for (;;) {
      const first = this.stmts.firstOffset.get() as number | null;
      if (first === null || first === undefined || first > offset) return removed;
      removed += this.stmts.removeThrough.run(Math.min(offset, first + REMOVE_CHUNK - 1)).changes;
    }
  }

  /** Drops up to `count` of the oldest records after `position` (overflow: drop-oldest). */
  dropOldest(position: number, count: number): number {
    this.assertOpen();
    return this.stmts.dropOldest.run(position, count).changes;
  }

  /** Drops records after `position` received before `before` (storage.maxAge). */
  dropExpired(position: number, before: number): number {
    this.assertOpen();
    return this.stmts.dropExpired.run(position, before).changes;
  }

  /** Forgets dedup keys whose window ended; at most `limit` per call to bound the pause. */
  pruneDedup(now = Date.now(), limit = 50_000): number {
    this.assertOpen();
    return this.stmts.dedupPrune.run(now, limit).changes;
  }

  /** Forgets the `count` dedup keys closest to expiry (only when storage is full of them). */
  pruneDedupOldest(count: number): number {
    this.assertOpen();
    return this.stmts.dedupPruneOldest.run(count).changes;
  }

  /** Bytes the database uses (pages in use, not free pages waiting for reuse). */
  usedBytes(): number {
    this.assertOpen();
    const pages = this.db.pragma('page_count', { simple: true }) as number;
    const free = this.db.pragma('freelist_count', { simple: true }) as number;
    return (pages - free) * this.pageSize;
  }

  /**
   * Gives free pages back to the filesystem and truncates the WAL, so that after a backlog drained
   * the database returns near its baseline size. Cheap when there is nothing to give back.
   */
  shrink(maxPages = 1024): void {
    this.assertOpen();
    const free = this.db.pragma('freelist_count', { simple: true }) as number;
    if (free > 0) this.db.pragma(`incremental_vacuum(${Math.min(free, maxPages)})`);
    this.db.pragma('wal_checkpoint(TRUNCATE)');
  }

  /** Records after `position` (the backlog). */
  pendingAfter(position: number): number {
    this.assertOpen();
    return this.stmts.pendingCount.get(position) as number;
  }

  get lastOffset(): number {
    return this.lastOffsetCache;
  }

  /** Appends made through another connection (the ingest thread's) reached `offset`. */
  observeAppended(offset: number): void {
    if (offset > this.lastOffsetCache) this.lastOffsetCache = offset;
  }

  /** The highest offset handed out, read from the database now (other connections included). */
  highestOffset(): number {
    this.assertOpen();
    return (this.stmts.lastSeq.get() as number | undefined) ?? 0;
  }

  stats(positionName = 'forward'): CommitLogStats {
    this.assertOpen();
    const row = this.stmts.counts.get() as { n: number; first: number | null };
    return {
      records: row.n,
      firstOffset: row.first,
      lastOffset: this.lastOffsetCache,
      forwardPosition: this.position(positionName),
    };
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.reader.close();
    this.db.close();
  }
}

function toRecord(row: RecordRow): LogRecord {
  return {
    offset: row.log_offset,
    receivedAt: row.received_at,
    route: row.route,
    kafkaTopic: row.kafka_topic,
    deviceId: row.device_id,
    mqttTopic: row.mqtt_topic,
    qos: row.qos as 0 | 1 | 2,
    payload: row.payload,
  };
}

function openError(file: string, err: unknown): EdgebridgeError {
  const code = (err as { code?: string }).code;
  if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT') {
    const aside = `${file}.corrupt-${new Date().toISOString().replace(/[:.]/g, '-')}`;
    let moved = '';
    try {
      if (existsSync(file)) {
        renameSync(file, aside);
        for (const suffix of ['-wal', '-shm']) {
          if (existsSync(file + suffix)) renameSync(file + suffix, aside + suffix);
        }
        moved = ` It was moved to ${aside}; a new empty log is created on the next start. Inspect or recover it with: sqlite3 ${aside} .recover`;
      }
    } catch {
      moved = ` Move it aside by hand (e.g. mv ${file} ${aside}) and start again.`;
    }
    return new EdgebridgeError('EB_ERR_LOG_CORRUPT', `commit log ${file} is corrupt (${code}).${moved}`, { cause: err });
  }
  return new EdgebridgeError('EB_ERR_LOG_OPEN', `cannot open commit log ${file}: ${(err as Error).message}`, {
    cause: err,
  });
}

function openDatabase(file: string): Database.Database {
  let db: Database.Database;
  try {
    db = new Database(file);
  } catch (err) {
    throw openError(file, err);
  }
  try {
    // auto_vacuum takes effect only on a database not yet initialised, so before WAL mode (which
    // initialises it): a drained log can then give pages back (incremental_vacuum) instead of
    // keeping its high-water mark. On an existing database this is a no-op.
    db.pragma('auto_vacuum = INCREMENTAL');
    // WAL lets the forwarder read while ingress appends; the pragma also proves the file is a DB.
    db.pragma('journal_mode = WAL');
  } catch (err) {
    db.close();
    throw openError(file, err);
  }
  return db;
}
