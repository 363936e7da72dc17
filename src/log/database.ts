import { existsSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { EdgebridgeError, type ErrorCode } from '../errors.js';
import { headerBytes, type EntryHeaders } from './headers.js';

export const DB_FILE = 'edgebridge.db';
/** The forwarder's position: every record at or before it is committed in Kafka. */
export const POSITION_FORWARD = 'forward';
/** Where in the checkpoint partition this log's last checkpoint record was (a read hint). */
export const POSITION_CHECKPOINT_HINT = 'checkpoint-kafka-offset';
/** How many times the log was synced before forwarding (synchronous: normal). */
export const POSITION_DURABLE = 'durable-syncs';

/**
 * Schema steps; MIGRATIONS[n] takes a database from user_version n to n + 1. Never edit a step.
 * Only the gateway's own (writing) open migrates; the forwarder's reader requires the current one.
 */
export const MIGRATIONS: readonly string[] = [
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
  // Epochs: one per opening of the log by a gateway process, with the first offset it hands out.
  // A checkpoint names the epoch of its offset, so after the log lost its tail (a restored
  // backup) offsets handed out again are never mistaken for the forwarded ones they replace.
  // The genesis epoch covers every record written before epochs existed (checkpoints without
  // an epoch refer to it). Topics: every Kafka topic that has records in the log, so the
  // forwarder knows the topics of a backlog written under an older route table.
  `CREATE TABLE epochs (
     seq          INTEGER PRIMARY KEY AUTOINCREMENT,
     id           TEXT    NOT NULL UNIQUE,
     start_offset INTEGER NOT NULL,
     created_at   INTEGER NOT NULL
   );
   INSERT INTO epochs (id, start_offset, created_at) VALUES ('genesis', 1, 0);
   CREATE TABLE topics (
     kafka_topic TEXT PRIMARY KEY
   ) WITHOUT ROWID;
   INSERT INTO topics (kafka_topic) SELECT DISTINCT kafka_topic FROM records;`,
  // Counter dedup (dedup-windows.ts): one row per live reading stream, with the counters stored
  // so far as ranges; replaces the per-reading index for readings with a counter.
  `CREATE TABLE dedup_streams (
     stream     BLOB PRIMARY KEY,
     ranges     BLOB    NOT NULL,
     expires_at INTEGER NOT NULL
   ) WITHOUT ROWID;`,
  // MQTT sessions (session-tables.ts): what aedes keeps per client and for retained topics, so
  // persistent sessions, their queued messages and retained messages survive a restart. A
  // packet is its header fields as JSON and its payload as a blob.
  `CREATE TABLE session_subscriptions (
     client_id TEXT NOT NULL,
     topic     TEXT NOT NULL,
     options   TEXT NOT NULL,
     PRIMARY KEY (client_id, topic)
   ) WITHOUT ROWID;
   CREATE TABLE session_queue (
     seq        INTEGER PRIMARY KEY,
     client_id  TEXT    NOT NULL,
     packet_key TEXT    NOT NULL,
     message_id INTEGER,
     packet     TEXT    NOT NULL,
     payload    BLOB    NOT NULL
   );
   CREATE UNIQUE INDEX session_queue_key ON session_queue (client_id, packet_key);
   CREATE TABLE session_inbound (
     client_id  TEXT    NOT NULL,
     message_id INTEGER NOT NULL,
     packet     TEXT    NOT NULL,
     payload    BLOB    NOT NULL,
     PRIMARY KEY (client_id, message_id)
   ) WITHOUT ROWID;
   CREATE TABLE retained (
     topic   TEXT PRIMARY KEY,
     packet  TEXT NOT NULL,
     payload BLOB NOT NULL
   ) WITHOUT ROWID;
   CREATE TABLE wills (
     client_id TEXT PRIMARY KEY,
     packet    TEXT NOT NULL,
     payload   BLOB NOT NULL
   ) WITHOUT ROWID;
   CREATE TABLE session_owners (
     client_id TEXT PRIMARY KEY,
     username  TEXT
   ) WITHOUT ROWID;`,
  // Commands from Kafka (outbox.ts): the commands for devices this gateway serves until their
  // device acknowledged them and the ack record is in this log, the command consumer's position
  // per partition (written with the commands it read), and the devices it serves. Records gain
  // Kafka headers of their own (ack records carry the correlation id; telemetry has none). A
  // command's seq is its broker counter in aedes, which drops a message whose counter is not
  // above the last one the connection saw: AUTOINCREMENT, so a seq is never handed out again.
  `ALTER TABLE records ADD COLUMN headers TEXT;
   CREATE TABLE commands (
     seq             INTEGER PRIMARY KEY AUTOINCREMENT,
     device_id       TEXT    NOT NULL,
     correlation_id  TEXT    NOT NULL,
     kafka_topic     TEXT    NOT NULL,
     kafka_partition INTEGER NOT NULL,
     kafka_offset    INTEGER NOT NULL,
     payload         BLOB    NOT NULL,
     created_at      INTEGER NOT NULL,
     expires_at      INTEGER NOT NULL,
     state           INTEGER NOT NULL DEFAULT 0,
     delivered_at    INTEGER
   );
   CREATE INDEX commands_state ON commands (state, seq);
   CREATE INDEX commands_device ON commands (device_id, state, seq);
   CREATE TABLE command_positions (
     kafka_topic     TEXT    NOT NULL,
     kafka_partition INTEGER NOT NULL,
     next_offset     INTEGER NOT NULL,
     PRIMARY KEY (kafka_topic, kafka_partition)
   ) WITHOUT ROWID;
   CREATE TABLE served_devices (
     device_id TEXT    PRIMARY KEY,
     seen_at   INTEGER NOT NULL
   ) WITHOUT ROWID;`,
  // MQTT 5 Message Expiry Interval: when a record expires (ms since the epoch; NULL: never). The
  // forwarder drops an expired record when it builds a batch, under the batch's checkpoint; the
  // ingest side deletes expired unforwarded ones to free space (the index: only rows that expire).
  // Headers stay TEXT: a list of [name, value] pairs (binary values base64, see headers.ts) in
  // rows written from here on, the object form in older rows; both are read.
  `ALTER TABLE records ADD COLUMN expires_at INTEGER;
   CREATE INDEX records_expiry ON records (expires_at) WHERE expires_at IS NOT NULL;`,
  // MQTT 5: a command's content type (its Kafka header `content-type`, sent to v5 devices as the
  // Content Type property), and the Session Expiry Interval of each v5 persistent session
  // (session-tables.ts): `expires_at` is null while the session is connected (or never
  // expires), else when it ends; a restarted gateway ends those past it and times the others.
  `ALTER TABLE commands ADD COLUMN content_type TEXT;
   CREATE TABLE session_expiry (
     client_id  TEXT    PRIMARY KEY,
     interval_s INTEGER NOT NULL,
     expires_at INTEGER
   ) WITHOUT ROWID;`,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** The SQLite result code of a better-sqlite3 error (`SQLITE_BUSY`, `SQLITE_IOERR_WRITE`...). */
export function sqliteCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('SQLITE_') ? code : undefined;
}

/** Corruption: retrying cannot help; the operator has to act. */
export function isCorruption(err: unknown): boolean {
  const code = sqliteCode(err);
  return code === 'SQLITE_CORRUPT' || code === 'SQLITE_NOTADB' || code?.startsWith('SQLITE_CORRUPT_') === true;
}

/**
 * A typed error for a failed log operation: corruption is EB_ERR_LOG_CORRUPT (not retryable),
 * anything else `code` (disk full, I/O error, busy: retryable).
 */
export function logError(code: ErrorCode, file: string, what: string, err: unknown): EdgebridgeError {
  if (err instanceof EdgebridgeError) return err;
  if (isCorruption(err)) {
    markDamaged(file, err);
    return new EdgebridgeError(
      'EB_ERR_LOG_CORRUPT',
      `commit log ${file} is corrupt (${sqliteCode(err)}) while trying to ${what}. Stop the gateway: on the next start the ` +
        `file is checked and moved aside if it is damaged (recover what it holds with: sqlite3 ${file} .recover)`,
      { cause: err },
    );
  }
  return new EdgebridgeError(code, `${what} on ${file} failed: ${(err as Error).message}`, { cause: err });
}

/**
 * The error for a database that cannot be opened. Corrupt files are moved aside (never deleted)
 * only when `moveAside` is set: by the gateway's own open at start, never by a second connection
 * of a running gateway, which would rename the live database under the first.
 */
export function openError(file: string, err: unknown, moveAside: boolean): EdgebridgeError {
  if (err instanceof EdgebridgeError) return err;
  if (isCorruption(err)) {
    const code = sqliteCode(err);
    if (!moveAside) {
      return new EdgebridgeError('EB_ERR_LOG_CORRUPT', `commit log ${file} is corrupt (${code})`, { cause: err });
    }
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
  return new EdgebridgeError('EB_ERR_LOG_OPEN', `cannot open commit log ${file}: ${(err as Error).message}`, { cause: err });
}

export interface OpenOptions {
  /** How long a statement waits for another connection's write lock before failing (SQLITE_BUSY). */
  readonly busyTimeoutMs: number;
  /** Move a corrupt file aside (the gateway's own open at start only). */
  readonly moveAsideIfCorrupt: boolean;
}

export function openDatabase(file: string, options: OpenOptions): Database.Database {
  let db: Database.Database;
  try {
    db = new Database(file, { timeout: options.busyTimeoutMs });
  } catch (err) {
    throw openError(file, err, options.moveAsideIfCorrupt);
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
    throw openError(file, err, options.moveAsideIfCorrupt);
  }
  return db;
}

/**
 * Checkpoints and truncates the WAL at `walLimitBytes` (it counts against storage.maxBytes). Both
 * connections set it: the forwarder's writes (positions, removals, vacuum) fill the WAL too.
 * Returns the page size.
 */
export function limitWal(db: Database.Database, walLimitBytes: number): number {
  const pageSize = db.pragma('page_size', { simple: true }) as number;
  db.pragma(`journal_size_limit = ${walLimitBytes}`);
  db.pragma(`wal_autocheckpoint = ${Math.max(16, Math.floor(walLimitBytes / pageSize))}`);
  return pageSize;
}

export function migrate(db: Database.Database, file: string): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > SCHEMA_VERSION) {
    throw new EdgebridgeError(
      'EB_ERR_LOG_OPEN',
      `commit log ${file} has schema version ${version}, newer than this edgebridge understands (${SCHEMA_VERSION}); upgrade edgebridge`,
    );
  }
  // Each step runs in its own transaction with the version bump, so a crash mid-upgrade
  // leaves either the old schema or the new one.
  for (let v = version; v < SCHEMA_VERSION; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}

/**
 * Corruption found while the gateway runs is recorded beside the database: nothing is moved under
 * a live connection, but the next start checks the file (PRAGMA quick_check) before using it.
 */
export function markDamaged(file: string, err: unknown): void {
  try {
    writeFileSync(`${file}.damaged`, `${new Date().toISOString()} ${(err as Error).message}\n`, { flag: 'a' });
  } catch {
    // the disk may be what is failing; the error itself is reported by the caller
  }
}

/**
 * At open: if corruption was recorded while running, check the whole file. A damaged one is
 * reported as corrupt (and so moved aside by the gateway's open); an intact one is used.
 */
export function checkIfMarkedDamaged(db: Database.Database, file: string): void {
  if (!existsSync(`${file}.damaged`)) return;
  const result = db.pragma('quick_check', { simple: true }) as string;
  if (result !== 'ok') {
    throw Object.assign(new Error(`quick_check after corruption was seen: ${result}`), { code: 'SQLITE_CORRUPT' });
  }
  rmSync(`${file}.damaged`, { force: true });
}

/** Bytes of the WAL file (0 when absent): disk the log uses beyond its pages. */
export function walBytes(file: string): number {
  try {
    return statSync(`${file}-wal`).size;
  } catch {
    return 0;
  }
}

/**
 * Bytes a record costs in the log and in a Kafka batch, beyond its payload: the row's columns and
 * the index entry in SQLite, the record header, key and headers in Kafka. One estimate for both,
 * so storage limits and batch limits agree.
 */
export function recordBytes(record: {
  readonly payload: Buffer;
  readonly mqttTopic: string;
  readonly deviceId: string;
  readonly headers?: EntryHeaders | undefined;
}): number {
  return record.payload.length + record.mqttTopic.length + record.deviceId.length + 96 + headerBytes(record.headers);
}
