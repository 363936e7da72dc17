import { join, resolve } from 'node:path';
import type Database from 'better-sqlite3';
import { EdgebridgeError } from '../errors.js';
import { DEFAULT_WAL_LIMIT_BYTES, toRecord, type LogRecord, type RecordRow } from './commit-log.js';
import {
  DB_FILE,
  POSITION_CHECKPOINT_HINT,
  POSITION_DURABLE,
  POSITION_FORWARD,
  SCHEMA_VERSION,
  limitWal,
  logError,
  openDatabase,
  recordBytes,
} from './database.js';
import type { LogEpoch } from './epochs.js';

export interface LogReaderOptions {
  readonly dir: string;
  readonly synchronous: 'full' | 'normal';
  /** The forwarder's thread may wait longer than ingest for the write lock. */
  readonly busyTimeoutMs?: number;
  readonly walLimitBytes?: number;
}

/** One read of the log: the records, and the highest offset handed out as of that same read. */
export interface LogBatch {
  readonly records: LogRecord[];
  /** Offsets up to here exist or existed; past the last record they were dropped or compacted. */
  readonly end: number;
}

/** Offsets removed per delete statement (see removeThrough). */
const REMOVE_CHUNK = 5000;

/**
 * The forwarder's connection to the commit log (its own, in its own thread): batch reads, the
 * forward position, and removal of what Kafka has. It never creates or migrates the database and
 * never moves a damaged file aside: that is the gateway's own open, at start. Its write
 * transactions are kept short, so an append on the ingest thread never waits long for the lock.
 *
 * Its commits run with synchronous=NORMAL: a position lost in a power cut costs nothing (the
 * forwarder resumes from the checkpoint committed in Kafka). What must be durable before it is
 * forwarded are the records themselves: with storage.synchronous: normal, makeDurable() syncs
 * the WAL first, so a power cut can never take records that Kafka already has.
 */
export class LogReader {
  readonly file: string;
  readonly logId: string;
  private readonly db: Database.Database;
  private readonly stmts: ReturnType<LogReader['prepare']>;
  private readonly readInSnapshot: (after: number, maxRecords: number, maxBytes: number) => LogBatch;
  private readonly syncEveryBatch: boolean;
  private readonly vacuumStepPages: number;
  private closed = false;

  constructor(options: LogReaderOptions) {
    this.file = join(resolve(options.dir), DB_FILE);
    this.syncEveryBatch = options.synchronous === 'normal';
    this.db = openDatabase(this.file, { busyTimeoutMs: options.busyTimeoutMs ?? 5000, moveAsideIfCorrupt: false });
    try {
      const version = this.db.pragma('user_version', { simple: true }) as number;
      if (version !== SCHEMA_VERSION) {
        throw new EdgebridgeError(
          'EB_ERR_LOG_OPEN',
          `commit log ${this.file} has schema version ${version}, expected ${SCHEMA_VERSION}: it must be opened by the gateway first`,
        );
      }
      this.db.pragma('synchronous = NORMAL');
      const walLimit = options.walLimitBytes ?? DEFAULT_WAL_LIMIT_BYTES;
      const pageSize = limitWal(this.db, walLimit);
      // A vacuum step writes the pages it moves to the WAL: a step stays well within its limit.
      this.vacuumStepPages = Math.max(16, Math.min(256, Math.floor(walLimit / pageSize / 2)));
      this.stmts = this.prepare();
      const logId = this.db.prepare("SELECT value FROM meta WHERE key = 'log_id'").pluck().get() as string | undefined;
      if (logId === undefined) throw new EdgebridgeError('EB_ERR_LOG_OPEN', `commit log ${this.file} has no log id`);
      this.logId = logId;
    } catch (err) {
      this.db.close();
      throw logError('EB_ERR_LOG_OPEN', this.file, 'open the log for forwarding', err);
    }
    // One read transaction: the records and the end are taken from the same snapshot, so an end
    // past the last record read means dropped records, never records committed in between.
    this.readInSnapshot = this.db.transaction((after: number, maxRecords: number, maxBytes: number): LogBatch => {
      const records: LogRecord[] = [];
      let bytes = 0;
      // Rows are fetched one at a time and the read stops at the byte budget, so memory stays
      // bounded by batchMaxBytes plus one record, whatever batchMaxRecords is.
      for (const row of this.stmts.read.iterate(after, maxRecords) as IterableIterator<RecordRow>) {
        const record = toRecord(row);
        bytes += recordBytes(record);
        if (bytes > maxBytes && records.length > 0) break;
        records.push(record);
      }
      return { records, end: (this.stmts.lastSeq.get() as number | undefined) ?? 0 };
    });
  }

  private prepare() {
    const { db } = this;
    return {
      read: db.prepare(
        `SELECT log_offset, received_at, route, kafka_topic, device_id, mqtt_topic, qos, payload, headers, expires_at
         FROM records WHERE log_offset > ? ORDER BY log_offset LIMIT ?`,
      ),
      lastSeq: db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'records'").pluck(),
      getPosition: db.prepare('SELECT log_offset FROM positions WHERE name = ?').pluck(),
      setPosition: db.prepare(
        'INSERT INTO positions (name, log_offset) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET log_offset = excluded.log_offset',
      ),
      countSync: db.prepare('INSERT INTO positions (name, log_offset) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET log_offset = log_offset + 1'),
      firstOffset: db.prepare('SELECT min(log_offset) FROM records').pluck(),
      removeThrough: db.prepare('DELETE FROM records WHERE log_offset <= ?'),
      epochs: db.prepare('SELECT id, start_offset AS start FROM epochs ORDER BY seq'),
      topics: db.prepare('SELECT kafka_topic FROM topics').pluck(),
    };
  }

  private run<T>(what: string, fn: () => T): T {
    if (this.closed) throw new EdgebridgeError('EB_ERR_LOG_CLOSED', `commit log ${this.file} is closed`);
    try {
      return fn();
    } catch (err) {
      throw logError('EB_ERR_LOG_READ', this.file, what, err);
    }
  }

  /** Records after `after` in offset order: at most `maxRecords`, and `maxBytes` unless one alone is larger. */
  readBatch(after: number, maxRecords: number, maxBytes: number): LogBatch {
    return this.run('read a batch', () => this.readInSnapshot(after, maxRecords, maxBytes));
  }

  /** The highest offset handed out. */
  end(): number {
    return this.run('read the end of the log', () => (this.stmts.lastSeq.get() as number | undefined) ?? 0);
  }

  position(): number {
    return this.run('read the forward position', () => (this.stmts.getPosition.get(POSITION_FORWARD) as number | undefined) ?? 0);
  }

  commitPosition(offset: number): void {
    this.run('store the forward position', () => this.stmts.setPosition.run(POSITION_FORWARD, offset));
  }

  checkpointHint(): number {
    return this.run('read the checkpoint hint', () => (this.stmts.getPosition.get(POSITION_CHECKPOINT_HINT) as number | undefined) ?? 0);
  }

  commitCheckpointHint(kafkaOffset: number): void {
    this.run('store the checkpoint hint', () => this.stmts.setPosition.run(POSITION_CHECKPOINT_HINT, kafkaOffset));
  }

  /** The log's epochs in the order they began. */
  epochs(): LogEpoch[] {
    return this.run('read the epochs', () => this.stmts.epochs.all() as LogEpoch[]);
  }

  /** Kafka topics records in the log were written for. */
  topics(): string[] {
    return this.run('read the topics', () => this.stmts.topics.all() as string[]);
  }

  /**
   * Makes every record appended so far durable before it is forwarded. With storage.synchronous:
   * normal, appends are not synced one by one; this commit with synchronous=FULL syncs the WAL,
   * and with it every earlier append. With full, each append was durable already.
   */
  makeDurable(): void {
    if (!this.syncEveryBatch) return;
    this.run('sync the log before forwarding', () => {
      this.db.pragma('synchronous = FULL');
      try {
        // A value that changes every time: a commit that changes nothing writes no WAL frame,
        // and SQLite then syncs nothing.
        this.stmts.countSync.run(POSITION_DURABLE);
      } finally {
        this.db.pragma('synchronous = NORMAL');
      }
    });
  }

  /** How many times the log was synced before forwarding (each one a commit that synced the WAL). */
  syncs(): number {
    return this.run('read the sync count', () => (this.stmts.getPosition.get(POSITION_DURABLE) as number | undefined) ?? 0);
  }

  /**
   * Removes the records up to and including `offset` (already forwarded); returns how many.
   * Deletes in chunks, each its own short transaction, so appends from the other thread are not
   * held up behind one long delete.
   */
  removeThrough(offset: number): number {
    return this.run('remove forwarded records', () => {
      let removed = 0;
      for (;;) {
        const first = this.stmts.firstOffset.get() as number | null;
        if (first === null || first === undefined || first > offset) return removed;
        removed += this.stmts.removeThrough.run(Math.min(offset, first + REMOVE_CHUNK - 1)).changes;
      }
    });
  }

  /**
   * Gives free pages back to the filesystem and empties the WAL, in short steps so appends are not
   * held up: returns true while there is more to give back. A passive checkpoint first copies the
   * WAL without the write lock; the truncating one then has little left to do under it.
   */
  shrink(): boolean {
    return this.run('shrink the log', () => {
      const free = this.db.pragma('freelist_count', { simple: true }) as number;
      if (free > 0) this.db.pragma(`incremental_vacuum(${Math.min(free, this.vacuumStepPages)})`);
      if (free > this.vacuumStepPages) return true;
      this.db.pragma('wal_checkpoint(PASSIVE)');
      this.db.pragma('wal_checkpoint(TRUNCATE)');
      return false;
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
  }
}
