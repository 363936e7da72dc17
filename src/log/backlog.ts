/**
 * The backlog (records not yet committed to Kafka) per device, read from the commit log by a
 * connection of its own: `edgebridge backlog`, and the admin server. Read-only: it never takes the
 * storage.dir lock, never migrates, and works while the gateway writes (WAL).
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { EdgebridgeError } from '../errors.js';
import { DB_FILE, POSITION_FORWARD, SCHEMA_VERSION, isCorruption, openError, sqliteCode } from './database.js';

export interface DeviceBacklog {
  readonly deviceId: string;
  readonly records: number;
  /** Payload bytes. */
  readonly bytes: number;
  /** ms since epoch */
  readonly oldestReceivedAt: number;
}

export interface BacklogSummary {
  /** the forwarder's position: records after it are the backlog */
  readonly position: number;
  readonly records: number;
  /** Payload bytes. */
  readonly bytes: number;
  /** ms since epoch; absent without a backlog */
  readonly oldestReceivedAt?: number;
  /** distinct devices with a backlog */
  readonly devices: number;
  /** sorted by records desc, then deviceId; at most `limit` (only `device` when it is given) */
  readonly top: DeviceBacklog[];
  /** ms since epoch */
  readonly readAt: number;
}

export interface BacklogOptions {
  /** Only this device in `top` (the totals are still the whole backlog's). */
  readonly device?: string;
  /** At most this many devices in `top` (default 20). */
  readonly limit?: number;
}

export const DEFAULT_BACKLOG_LIMIT = 20;
/** Offsets read per statement (each its own read snapshot): about 50 ms of scanning here. */
const SCAN_CHUNK_OFFSETS = 50_000;

/**
 * A read-only connection to the commit log in `dir`. While the gateway runs it shares the WAL's
 * -shm file; with the gateway stopped SQLite creates that file, so the user needs write access to
 * the directory then (as root the files get the log's owner).
 */
export function openLogForReading(dir: string): Database.Database {
  const file = join(resolve(dir), DB_FILE);
  if (!existsSync(file)) {
    throw new EdgebridgeError('EB_ERR_LOG_NOT_FOUND', `no commit log at ${file}: check storage.dir (the gateway creates the log when it first starts)`);
  }
  let db: Database.Database | undefined;
  try {
    db = new Database(file, { readonly: true, fileMustExist: true, timeout: 5000 });
    // The first read opens the file for real: it proves it is a database, and of a schema we know.
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version > SCHEMA_VERSION) {
      throw new EdgebridgeError(
        'EB_ERR_LOG_OPEN',
        `commit log ${file} has schema version ${version}, newer than this edgebridge understands (${SCHEMA_VERSION}); use the gateway's own edgebridge`,
      );
    }
    if (version === 0) throw new EdgebridgeError('EB_ERR_LOG_OPEN', `${file} is not an edgebridge commit log (no schema)`);
    return db;
  } catch (err) {
    db?.close();
    if (sqliteCode(err) === 'SQLITE_READONLY_DIRECTORY') {
      throw new EdgebridgeError(
        'EB_ERR_LOG_OPEN',
        `cannot read commit log ${file} (${sqliteCode(err)}): with the gateway stopped SQLite must create ${DB_FILE}-shm beside it; ` +
          `run as the gateway's user, or while the gateway runs`,
        { cause: err },
      );
    }
    throw openError(file, err, false);
  }
}

interface DeviceRow {
  deviceId: string;
  records: number;
  bytes: number;
  oldestReceivedAt: number;
}

const byRecordsThenId = (a: DeviceRow, b: DeviceRow): number =>
  b.records - a.records || (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0);

/**
 * The backlog after the forwarder's position, per device. Read in chunks: when the backlog moves
 * during a long scan (records forwarded, new ones stored), the figures are those of each chunk
 * when it was read, and records forwarded before their chunk was reached are not counted;
 * `position` is the last one read, so `records` may include some forwarded during the scan.
 */
export function readBacklog(db: Database.Database, options: BacklogOptions = {}): BacklogSummary {
  const limit = options.limit ?? DEFAULT_BACKLOG_LIMIT;
  if (!Number.isInteger(limit) || limit < 0) throw new RangeError(`limit must be a non-negative integer, got ${limit}`);
  let position = 0;
  const byDevice = new Map<string, DeviceRow>();
  try {
    const positionOf = db.prepare('SELECT log_offset FROM positions WHERE name = ?').pluck();
    const lastOffset = db.prepare('SELECT max(log_offset) FROM records').pluck();
    const chunk = db.prepare(
      `SELECT device_id AS deviceId, count(*) AS records, sum(length(payload)) AS bytes, min(received_at) AS oldestReceivedAt
         FROM records WHERE log_offset > ? AND log_offset <= ? GROUP BY device_id`,
    );
    // In chunks of offsets, each statement its own short read snapshot: one snapshot held over a
    // scan of millions of records would keep the gateway's WAL from being reset meanwhile (it
    // grows by what arrives during the scan), and a worker running it could not be stopped.
    const end = (lastOffset.get() as number | null) ?? 0;
    let from = (positionOf.get(POSITION_FORWARD) as number | undefined) ?? 0;
    position = from;
    while (from < end) {
      // what was forwarded since the last chunk is no longer backlog: skip it
      position = Math.max(position, (positionOf.get(POSITION_FORWARD) as number | undefined) ?? 0);
      from = Math.max(from, position);
      const to = Math.min(end, from + SCAN_CHUNK_OFFSETS);
      for (const row of chunk.all(from, to) as DeviceRow[]) {
        const seen = byDevice.get(row.deviceId);
        if (!seen) byDevice.set(row.deviceId, row);
        else {
          seen.records += row.records;
          seen.bytes += row.bytes;
          seen.oldestReceivedAt = Math.min(seen.oldestReceivedAt, row.oldestReceivedAt);
        }
      }
      from = to;
    }
  } catch (err) {
    if (isCorruption(err)) throw new EdgebridgeError('EB_ERR_LOG_CORRUPT', `commit log ${db.name} is corrupt (${sqliteCode(err)})`, { cause: err });
    throw new EdgebridgeError('EB_ERR_LOG_READ', `reading the backlog of ${db.name} failed: ${(err as Error).message}`, { cause: err });
  }
  const rows = [...byDevice.values()];
  let records = 0;
  let bytes = 0;
  let oldest: number | undefined;
  for (const row of rows) {
    records += row.records;
    bytes += row.bytes;
    if (oldest === undefined || row.oldestReceivedAt < oldest) oldest = row.oldestReceivedAt;
  }
  const chosen = options.device === undefined ? rows : rows.filter((r) => r.deviceId === options.device);
  return {
    position,
    records,
    bytes,
    ...(oldest === undefined ? {} : { oldestReceivedAt: oldest }),
    devices: rows.length,
    top: chosen.sort(byRecordsThenId).slice(0, limit),
    readAt: Date.now(),
  };
}
