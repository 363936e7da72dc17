import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type Database from 'better-sqlite3';
import { EdgebridgeError } from '../errors.js';
import { DB_FILE, POSITION_FORWARD, checkIfMarkedDamaged, limitWal, logError, migrate, openDatabase, openError, walBytes } from './database.js';
import { DedupWindows } from './dedup-windows.js';
import type { LogEpoch } from './epochs.js';
import { decodeHeaders, encodeHeaders, type EntryHeaders, type HeaderPair } from './headers.js';

export { DB_FILE } from './database.js';

/**
 * How an entry takes part in deduplication. `check`: store the entry only if its key is not
 * already live in the index (a retransmit or replay is dropped). `remember`: always store it and
 * (re)arm the key, so that a later DUP retransmit of the same packet is recognised.
 */
export interface DedupMark {
  /** The reading's key in the per-reading index (also looked up in `window` mode, see below). */
  readonly key: Buffer;
  /**
   * `window`: counter dedup (dedup-windows.ts): dropped when `counter` was already stored in its
   * stream, or when its key is live in the per-reading index (readings stored by exact mode, or
   * before counter dedup existed); otherwise stored and added to the stream's ranges.
   */
  readonly mode: 'check' | 'remember' | 'window';
  readonly windowMs: number;
  /** The reading's stream and counter, when it has one: checked in every mode, kept in `window`. */
  readonly counter?: DedupCounter;
}

export interface DedupCounter {
  readonly stream: Buffer;
  readonly value: number;
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
  /**
   * Kafka headers of the record's own, after the gateway's (command acks carry theirs; an MQTT 5
   * publish its properties, see ingress/v5-properties.ts). Stored in order, names may repeat.
   */
  readonly headers?: EntryHeaders;
  /**
   * When the message expires (ms since the epoch; MQTT 5 Message Expiry Interval): the forwarder
   * drops it, counted, if it has not gone into a Kafka transaction by then. Absent: never.
   */
  readonly expiresAt?: number;
}

/** A stored entry, as the forwarder reads it back. */
export interface LogRecord extends Omit<LogEntry, 'dedup' | 'compact' | 'headers'> {
  /** Increasing; never handed out twice within an epoch of the log (see epochs.ts). */
  readonly offset: number;
  readonly headers?: readonly HeaderPair[];
}

/** The outcome of one appended entry: its offset, or `duplicate` when dedup dropped it. */
export type AppendResult = number | 'duplicate';

export interface CommitLogOptions {
  readonly dir: string;
  readonly synchronous: 'full' | 'normal';
  /**
   * How long an append waits for the forwarder's connection to release the write lock. The
   * forwarder keeps its write transactions short; past this the append fails (nothing is
   * acknowledged) rather than stall the ingest thread.
   */
  readonly busyTimeoutMs?: number;
  /** The WAL is checkpointed and truncated at this size (walBudget; counted in usedBytes). */
  readonly walLimitBytes?: number;
}

export interface CommitLogStats {
  readonly records: number;
  readonly firstOffset: number | null;
  readonly lastOffset: number;
  readonly forwardPosition: number;
}

export const DEFAULT_WAL_LIMIT_BYTES = 16 * 1024 * 1024;

interface RecordRow {
  log_offset: number;
  received_at: number;
  route: string;
  kafka_topic: string;
  device_id: string;
  mqtt_topic: string;
  qos: number;
  payload: Buffer;
  headers: string | null;
  expires_at: number | null;
}

/**
 * The durable local commit log, as the gateway's ingest thread writes it: an append-only SQLite
 * table with AUTOINCREMENT offsets, the dedup index, and the storage limits (drops). WAL mode;
 * synchronous=FULL by default, so a committed append survives a power cut, which is what lets
 * ingress acknowledge after append. The forwarder reads and trims it through its own connection
 * (LogReader). Opening it starts a new epoch (epochs.ts).
 */
export class CommitLog {
  readonly file: string;
  /** Random identity of this log file, carried in Kafka checkpoints: a checkpoint written from
   * another log (a replaced or recreated database) must never move this log's position. */
  readonly logId: string;
  /** The epoch this opening started. */
  readonly epoch: LogEpoch;
  private readonly db: Database.Database;
  private readonly stmts: ReturnType<CommitLog['prepare']>;
  private readonly appendAll: Database.Transaction<(entries: readonly LogEntry[], now: number) => AppendResult[]>;
  private readonly knownTopics = new Set<string>();
  private newTopics: string[] = [];
  private lastOffsetCache: number;
  private readonly pageSize: number;
  private readonly windows: DedupWindows;
  /** Whether the per-reading index may hold keys: `window` marks look there only then. */
  private indexInUse: boolean;
  private closed = false;
  private messageExpiredCount = 0;

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
    this.db = openDatabase(this.file, { busyTimeoutMs: options.busyTimeoutMs ?? 1000, moveAsideIfCorrupt: true });
    try {
      checkIfMarkedDamaged(this.db, this.file);
      this.pageSize = limitWal(this.db, options.walLimitBytes ?? DEFAULT_WAL_LIMIT_BYTES);
      migrate(this.db, this.file);
      this.stmts = this.prepare();
      this.logId = this.readOrCreateLogId();
      for (const t of this.stmts.topics.all() as string[]) this.knownTopics.add(t);
      this.epoch = this.startEpoch();
      // Only now, so that the epoch row is written with a full sync whatever the mode.
      this.db.pragma(`synchronous = ${options.synchronous.toUpperCase()}`);
    } catch (err) {
      this.db.close();
      const error = openError(this.file, err, true);
      if (error.code === 'EB_ERR_LOG_CORRUPT') rmSync(`${this.file}.damaged`, { force: true });
      throw error;
    }
    this.windows = new DedupWindows(this.db);
    this.indexInUse = this.stmts.dedupAny.get() === 1;
    this.appendAll = this.db.transaction((entries: readonly LogEntry[], now: number) => {
      const results = entries.map((e) => this.appendOne(e, now));
      this.windows.writeStaged();
      return results;
    });
    this.lastOffsetCache = this.highestOffset();
  }

  private prepare() {
    const { db } = this;
    return {
      insert: db.prepare(
        `INSERT INTO records (received_at, route, kafka_topic, device_id, mqtt_topic, qos, compact, payload, headers, expires_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
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
      dedupLive: db.prepare('SELECT 1 FROM dedup WHERE key = ? AND expires_at > ?').pluck(),
      dedupAny: db.prepare('SELECT EXISTS (SELECT 1 FROM dedup)').pluck(),
      dedupPrune: db.prepare('DELETE FROM dedup WHERE key IN (SELECT key FROM dedup WHERE expires_at <= ? LIMIT ?)'),
      dedupPruneOldest: db.prepare(
        'DELETE FROM dedup WHERE key IN (SELECT key FROM dedup ORDER BY expires_at LIMIT ?)',
      ),
      removeForwarded: db.prepare(
        'DELETE FROM records WHERE log_offset IN (SELECT log_offset FROM records WHERE log_offset <= ? ORDER BY log_offset LIMIT ?)',
      ),
      dropOldest: db.prepare(
        'DELETE FROM records WHERE log_offset IN (SELECT log_offset FROM records WHERE log_offset > ? ORDER BY log_offset LIMIT ?)',
      ),
      // Looks at the oldest unforwarded records only (offsets follow arrival), so a large backlog
      // costs a bounded scan per call rather than a full one.
      dropExpired: db.prepare(
        `DELETE FROM records WHERE log_offset IN (
           SELECT log_offset FROM records WHERE log_offset > ? ORDER BY log_offset LIMIT ?
         ) AND received_at < ?`,
      ),
      // Through records_expiry: only records that have an expiry are looked at. The first
      // `inFlight` records after the forward position (read in the same statement: the forwarder
      // stores it before it reads its next batch) are left alone: they may be in its batch.
      dropMessageExpired: db.prepare(
        `DELETE FROM records WHERE log_offset IN (
           SELECT log_offset FROM records WHERE expires_at <= ? AND log_offset >= (
             SELECT log_offset FROM records
             WHERE log_offset > coalesce((SELECT log_offset FROM positions WHERE name = '${POSITION_FORWARD}'), 0)
             ORDER BY log_offset LIMIT 1 OFFSET ?
           ) LIMIT ?
         )`,
      ),
      lastSeq: db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'records'").pluck(),
      read: db.prepare(
        `SELECT log_offset, received_at, route, kafka_topic, device_id, mqtt_topic, qos, payload, headers, expires_at
         FROM records WHERE log_offset > ? ORDER BY log_offset LIMIT ?`,
      ),
oldestAfter: db.prepare('SELECT received_at FROM records WHERE log_offset > ? ORDER BY log_offset LIMIT 1').pluck(),
            getPosition: db.prepare('SELECT log_offset FROM positions WHERE name = ?').pluck(),
      counts: db.prepare('SELECT count(*) AS n, min(log_offset) AS first FROM records'),
      // EXISTS stops at the first row: counting a large backlog on the ingest thread would stall it.
      anyAfter: db.prepare('SELECT EXISTS (SELECT 1 FROM records WHERE log_offset > ?)').pluck(),
      topics: db.prepare('SELECT kafka_topic FROM topics').pluck(),
      addTopic: db.prepare('INSERT OR IGNORE INTO topics (kafka_topic) VALUES (?)'),
      topicHasRecords: db.prepare('SELECT 1 FROM records WHERE kafka_topic = ? LIMIT 1').pluck(),
      removeTopic: db.prepare('DELETE FROM topics WHERE kafka_topic = ?'),
    };
  }

  private readOrCreateLogId(): string {
    const existing = this.db.prepare("SELECT value FROM meta WHERE key = 'log_id'").pluck().get() as string | undefined;
    if (existing) return existing;
    const id = randomUUID();
    this.db.prepare("INSERT INTO meta (key, value) VALUES ('log_id', ?)").run(id);
    return id;
  }

  /**
   * Records this opening as a new epoch starting at the next offset to be handed out. Written
   * with a full sync in every mode: a power cut may take appends of this epoch, never the epoch.
   */
  private startEpoch(): LogEpoch {
    this.db.pragma('synchronous = FULL');
    const id = randomBytes(6).toString('hex');
    const start = ((this.stmts.lastSeq.get() as number | undefined) ?? 0) + 1;
    this.db.prepare('INSERT INTO epochs (id, start_offset, created_at) VALUES (?, ?, ?)').run(id, start, Date.now());
    return { id, start };
  }

  private appendOne(e: LogEntry, now: number): AppendResult {
    const d = e.dedup;
    if (d) {
      if (d.counter && this.windows.has(d.counter.stream, d.counter.value, now)) return 'duplicate';
      const expires = now + d.windowMs;
      if (d.mode === 'window' && d.counter) {
        if (this.indexInUse && this.stmts.dedupLive.get(d.key, now) !== undefined) return 'duplicate';
        this.windows.add(d.counter.stream, d.counter.value, now, d.windowMs);
      } else if (d.mode === 'check') {
        this.indexInUse = true;
        if (this.stmts.dedupCheck.run(d.key, expires, now).changes === 0) return 'duplicate';
      } else {
        this.indexInUse = true;
        this.stmts.dedupRemember.run(d.key, expires);
      }
    }
    if (e.compact) this.stmts.compactDevice.run(e.route, e.deviceId);
    if (!this.knownTopics.has(e.kafkaTopic)) {
      this.stmts.addTopic.run(e.kafkaTopic);
      this.newTopics.push(e.kafkaTopic);
    }
    return Number(
      this.stmts.insert.run(e.receivedAt, e.route, e.kafkaTopic, e.deviceId, e.mqttTopic, e.qos, e.compact ? 1 : 0, e.payload, encodeHeaders(e.headers), e.expiresAt ?? null)
        .lastInsertRowid,
    );
  }

  /**
   * Whether an entry with this mark would be dropped as a duplicate if appended now; nothing is
   * written. (A duplicate needs no room: it can be acknowledged while the log is full.)
   */
  isDuplicate(d: DedupMark | undefined, now: number): boolean {
    if (!d) return false;
    this.assertOpen();
    if (d.counter && this.windows.has(d.counter.stream, d.counter.value, now)) return true;
    if (d.mode === 'window' && d.counter) return this.indexInUse && this.stmts.dedupLive.get(d.key, now) !== undefined;
    if (d.mode === 'check') return this.stmts.dedupLive.get(d.key, now) !== undefined;
    return false; // remember: always stored
  }

  /** Counter-dedup gaps closed since this log was opened (dedup-windows.ts, MAX_RANGES). */
  get dedupGapsClosed(): number {
    return this.windows.gapsClosed;
  }

  /** Counter-dedup stream rows found damaged since this log was opened (each started over). */
  get dedupStreamsDamaged(): number {
    return this.windows.damaged;
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
    this.newTopics = [];
    try {
      // BEGIN IMMEDIATE: the write lock first. A deferred transaction whose first statement
      // reads (a dedup stream, a per-reading key) holds a snapshot while it waits to upgrade; the
      // forwarder's TRUNCATE checkpoint holds the write lock while it waits for that snapshot to
      // go, and the append failed with SQLITE_BUSY after its timeout (seen in the bad-input suite).
      results = this.appendAll.immediate(entries, now);
    } catch (err) {
      this.windows.rolledBack();
      throw logError('EB_ERR_LOG_WRITE', this.file, 'append', err);
    }
    this.windows.committed();
    for (const t of this.newTopics) this.knownTopics.add(t);
    for (let i = results.length - 1; i >= 0; i--) {
      const r = results[i]!;
      if (r !== 'duplicate') {
        this.lastOffsetCache = r;
        break;
      }
    }
    return results;
  }

  /** Records with offset > `after`, in offset order, at most `limit` (inspection and tests). */
  readAfter(after: number, limit: number): LogRecord[] {
    this.assertOpen();
    return (this.stmts.read.all(after, limit) as RecordRow[]).map(toRecord);
  }

  /** When the oldest record after `position` was received (ms); undefined when there is none. */
  oldestReceivedAfter(position: number): number | undefined {
    this.assertOpen();
    return this.stmts.oldestAfter.get(position) as number | undefined;
  }

  /** The forwarder's position: records at or before it are committed in Kafka. */
  forwardPosition(): number {
    return this.position(POSITION_FORWARD);
  }

  /** A named position (like a consumer offset); 0 when never set. */
  position(name: string): number {
    this.assertOpen();
    return (this.stmts.getPosition.get(name) as number | undefined) ?? 0;
  }

  /**
   * Removes up to `count` records at or before `position` (the forwarder's: they are in Kafka).
   * The forwarder does this in bulk; storage limits do it first when space runs out.
   */
  removeForwarded(position: number, count: number): number {
    this.assertOpen();
    return this.stmts.removeForwarded.run(position, count).changes;
  }

  /** Drops up to `count` of the oldest records after `position` (overflow: drop-oldest). */
  dropOldest(position: number, count: number): number {
    this.assertOpen();
    return this.stmts.dropOldest.run(position, count).changes;
  }

  /**
   * Drops records after `position` received before `before` (storage.maxAge), looking at no more
   * than `scan` of the oldest unforwarded records.
   */
  dropExpired(position: number, before: number, scan = 10_000): number {
    this.assertOpen();
    return this.stmts.dropExpired.run(position, scan, before).changes;
  }

  /**
   * Deletes up to `limit` unforwarded records whose MQTT 5 message expiry passed by `now`: they
   * would never be sent, and they take space (under backpressure, space devices wait for). The
   * first `inFlight` records after the forward position are left to the forwarder (its batch in
   * flight: a record it sent while still live is not also counted as dropped); it moves over the
   * gaps like over any dropped record. Counted in messageExpiredDropped.
   */
  dropMessageExpired(now: number, inFlight: number, limit = 5_000): number {
    this.assertOpen();
    const dropped = this.stmts.dropMessageExpired.run(now, inFlight, limit).changes;
    this.messageExpiredCount += dropped;
    return dropped;
  }

  /** Records this opening deleted from the log because their message expiry passed (dropMessageExpired). */
  get messageExpiredDropped(): number {
    return this.messageExpiredCount;
  }

  /** Forgets dedup keys whose window ended; at most `limit` per call to bound the pause. */
  pruneDedup(now = Date.now(), limit = 5_000): number {
    this.assertOpen();
    const pruned = this.stmts.dedupPrune.run(now, limit).changes;
    if (this.indexInUse) this.indexInUse = this.stmts.dedupAny.get() === 1;
    return pruned;
  }

  /** Forgets counter streams whose window ended; at most `limit` per call. */
  pruneDedupStreams(now = Date.now(), limit = 5_000): number {
    this.assertOpen();
    return this.windows.pruneExpired(now, limit);
  }

  /**
   * Forgets the `count` per-reading dedup keys closest to expiry (only when storage is full of
   * them). Counter streams are never evicted: a row per stream frees next to nothing, and the
   * stream's recent readings would be stored again if resent.
   */
  pruneDedupOldest(count: number): number {
    this.assertOpen();
    return this.stmts.dedupPruneOldest.run(count).changes;
  }

  /**
   * Bytes of disk the log uses: pages in use (not free pages waiting for reuse) plus the WAL,
   * which holds changed pages until they are checkpointed into the database file.
   */
  usedBytes(): number {
    return this.pageBytes() + walBytes(this.file);
  }

  /** Bytes of the database pages in use (not free pages waiting for reuse), the WAL left out. */
  pageBytes(): number {
    this.assertOpen();
    const pages = this.db.pragma('page_count', { simple: true }) as number;
    const free = this.db.pragma('freelist_count', { simple: true }) as number;
    return (pages - free) * this.pageSize;
  }

  /** Whether any record is after `position` (a backlog). */
  hasRecordsAfter(position: number): boolean {
    this.assertOpen();
    return this.stmts.anyAfter.get(position) === 1;
  }

  /** Kafka topics that records in the log were written for (routes may have changed since). */
  topics(): string[] {
    this.assertOpen();
    return this.stmts.topics.all() as string[];
  }

  /** Forgets topics that no record uses any more (they may be renamed routes of old). */
  pruneTopics(keep: readonly string[]): void {
    this.assertOpen();
    for (const t of this.topics()) {
      if (keep.includes(t) || this.stmts.topicHasRecords.get(t) !== undefined) continue;
      this.stmts.removeTopic.run(t);
      this.knownTopics.delete(t);
    }
  }

  get lastOffset(): number {
    return this.lastOffsetCache;
  }

  /** The highest offset handed out, read from the database now. */
  highestOffset(): number {
    this.assertOpen();
    return (this.stmts.lastSeq.get() as number | undefined) ?? 0;
  }

  stats(): CommitLogStats {
    this.assertOpen();
    const row = this.stmts.counts.get() as { n: number; first: number | null };
    return {
      records: row.n,
      firstOffset: row.first,
      lastOffset: this.lastOffsetCache,
      forwardPosition: this.forwardPosition(),
    };
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

export function toRecord(row: RecordRow): LogRecord {
  return {
    offset: row.log_offset,
    receivedAt: row.received_at,
    route: row.route,
    kafkaTopic: row.kafka_topic,
    deviceId: row.device_id,
    mqttTopic: row.mqtt_topic,
    qos: row.qos as 0 | 1 | 2,
    payload: row.payload,
    ...headersOf(row.headers),
    ...(row.expires_at === null || row.expires_at === undefined ? {} : { expiresAt: row.expires_at }),
  };
}

function headersOf(text: string | null): { headers?: HeaderPair[] } {
  const headers = decodeHeaders(text);
  return headers === undefined || headers.length === 0 ? {} : { headers };
}

export type { RecordRow };
