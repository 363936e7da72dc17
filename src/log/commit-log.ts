import { mkdirSync, renameSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { EdgebridgeError } from '../errors.js';

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
}

export interface LogRecord extends LogEntry {
  /** Monotonically increasing; never reused, even after the records before it are removed. */
  readonly offset: number;
}

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

const SCHEMA_VERSION = 1;
export const DB_FILE = 'edgebridge.db';

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
 * offset is never handed out twice, even once forwarded records are deleted) and named positions,
 * like consumer offsets. WAL mode; synchronous=FULL by default so a committed append survives
 * a power cut, which is what lets ingress acknowledge after append.
 */
export class CommitLog {
  readonly file: string;
  private readonly db: Database.Database;
  /**
   * The forwarder's connection (reads, positions, removals) runs with synchronous=NORMAL: its
   * commits are made durable by the next FULL commit of an append, which fsyncs the shared WAL.
   * A position lost in a power cut only means re-reading records that are still in the log
   * (they are removed only after their position was stored), so it need not cost an fsync per batch.
   */
  private readonly reader: Database.Database;
  private readonly insertStmt: Database.Statement;
  private readonly readStmt: Database.Statement;
  private readonly getPositionStmt: Database.Statement;
  private readonly setPositionStmt: Database.Statement;
  private readonly deleteThroughStmt: Database.Statement;
  private readonly appendAll: (entries: readonly LogEntry[]) => number[];
  private lastOffsetCache: number;
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
      this.migrate();
    } catch (err) {
      this.db.close();
      throw openError(this.file, err);
    }

    this.reader = openDatabase(this.file);
    this.reader.pragma('synchronous = NORMAL');

    this.insertStmt = this.db.prepare(
      `INSERT INTO records (received_at, route, kafka_topic, device_id, mqtt_topic, qos, payload)
       VALUES (?, ?, ?, ?, ?, ?, ?)`,
    );
    this.readStmt = this.reader.prepare(
      `SELECT log_offset, received_at, route, kafka_topic, device_id, mqtt_topic, qos, payload
       FROM records WHERE log_offset > ? ORDER BY log_offset LIMIT ?`,
    );
    this.getPositionStmt = this.reader.prepare('SELECT log_offset FROM positions WHERE name = ?').pluck();
    this.setPositionStmt = this.reader.prepare(
      'INSERT INTO positions (name, log_offset) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET log_offset = excluded.log_offset',
    );
    this.deleteThroughStmt = this.reader.prepare('DELETE FROM records WHERE log_offset <= ?');
    this.appendAll = this.db.transaction((entries: readonly LogEntry[]) =>
      entries.map((e) =>
        Number(
          this.insertStmt.run(e.receivedAt, e.route, e.kafkaTopic, e.deviceId, e.mqttTopic, e.qos, e.payload)
            .lastInsertRowid,
        ),
      ),
    );
    this.lastOffsetCache = this.readLastOffset();
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version > SCHEMA_VERSION) {
      throw new Error(`schema version ${version} is newer than this edgebridge understands (${SCHEMA_VERSION})`);
    }
    if (version === SCHEMA_VERSION) return;
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS records (
        log_offset  INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at INTEGER NOT NULL,
        route       TEXT    NOT NULL,
        kafka_topic TEXT    NOT NULL,
        device_id   TEXT    NOT NULL,
        mqtt_topic  TEXT    NOT NULL,
        qos         INTEGER NOT NULL,
        payload     BLOB    NOT NULL
      );
      CREATE TABLE IF NOT EXISTS positions (
        name       TEXT PRIMARY KEY,
        log_offset INTEGER NOT NULL
      );
      PRAGMA user_version = ${SCHEMA_VERSION};
    `);
  }

  private readLastOffset(): number {
    const seq = this.db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'records'").pluck().get() as
      | number
      | undefined;
    return seq ?? 0;
  }

  private assertOpen(): void {
    if (this.closed) throw new EdgebridgeError('EB_ERR_LOG_CLOSED', `commit log ${this.file} is closed`);
  }

  /**
   * Appends entries in one transaction and returns their offsets. When this returns the entries
   * are durable (per `synchronous`); when it throws, none of them were stored.
   */
  append(entries: readonly LogEntry[]): number[] {
    this.assertOpen();
    if (entries.length === 0) return [];
    let offsets: number[];
    try {
      offsets = this.appendAll(entries);
    } catch (err) {
      throw new EdgebridgeError('EB_ERR_LOG_WRITE', `append to ${this.file} failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
    this.lastOffsetCache = offsets[offsets.length - 1]!;
    return offsets;
  }

  /** Records with offset > `after`, in offset order, at most `limit`. */
  readAfter(after: number, limit: number): LogRecord[] {
    this.assertOpen();
    return (this.readStmt.all(after, limit) as RecordRow[]).map(toRecord);
  }

  /** A named position (like a consumer offset); 0 when never set. */
  position(name: string): number {
    this.assertOpen();
    return (this.getPositionStmt.get(name) as number | undefined) ?? 0;
  }

  /** Stores a named position (the forwarder's, once Kafka acknowledged up to `offset`). */
  commitPosition(name: string, offset: number): void {
    this.assertOpen();
    this.setPositionStmt.run(name, offset);
  }

  /**
   * Removes the records up to and including `offset` (already forwarded), so the space is reused.
   * Returns how many were removed.
   */
  removeThrough(offset: number): number {
    this.assertOpen();
    return this.deleteThroughStmt.run(offset).changes;
  }

  get lastOffset(): number {
    return this.lastOffsetCache;
  }

  stats(positionName = 'forward'): CommitLogStats {
    this.assertOpen();
    const row = this.db.prepare('SELECT count(*) AS n, min(log_offset) AS first FROM records').get() as {
      n: number;
      first: number | null;
    };
    return {
      records: row.n,
      firstOffset: row.first,
      lastOffset: this.lastOffsetCache,
      forwardPosition: this.position(positionName),
    };
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
        moved = ` It was moved to ${aside}; a new empty log is created on the next start. Inspect or restore it with the sqlite3 tool.`;
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
    // WAL lets the forwarder read while ingress appends; the pragma also proves the file is a DB.
    db.pragma('journal_mode = WAL');
  } catch (err) {
    db.close();
    throw openError(file, err);
  }
  return db;
}
