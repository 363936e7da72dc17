import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { EdgebridgeError } from '../errors.js';

export interface DirLock {
  readonly file: string;
  release(): void;
}

/**
 * One gateway per storage.dir. The lock is an exclusive SQLite transaction held on a lock file
 * for the life of the process: the operating system drops it when the process dies, so a crash
 * or power cut never leaves a stale lock behind (a pid file would, and pids are reused).
 */
export function lockStorageDir(dir: string): DirLock {
  const absolute = resolve(dir);
  const file = join(absolute, 'edgebridge.lock');
  let db: Database.Database;
  try {
    mkdirSync(absolute, { recursive: true });
    db = new Database(file, { timeout: 0 });
  } catch (err) {
    throw new EdgebridgeError('EB_ERR_LOG_OPEN', `cannot create the lock file ${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    db.pragma('locking_mode = EXCLUSIVE');
    db.exec('BEGIN EXCLUSIVE');
  } catch (err) {
    db.close();
    if ((err as { code?: string }).code === 'SQLITE_BUSY') {
      throw new EdgebridgeError(
        'EB_ERR_LOG_LOCKED',
        `storage.dir ${absolute} is in use by another edgebridge process (${file} is locked); stop it, or give this gateway its own storage.dir`,
        { cause: err },
      );
    }
    throw new EdgebridgeError('EB_ERR_LOG_OPEN', `cannot lock ${file}: ${(err as Error).message}`, { cause: err });
  }
  return {
    file,
    release() {
      try {
        db.exec('ROLLBACK');
      } finally {
        db.close();
      }
    },
  };
}
