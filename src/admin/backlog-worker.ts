// The backlog inspector's thread (backlog-inspector.ts): one read-only connection to the log,
// one scan per question.
import { parentPort, workerData } from 'node:worker_threads';
import type Database from 'better-sqlite3';
import { describeError } from '../errors.js';
import { openLogForReading, readBacklog } from '../log/backlog.js';
import type { BacklogReply } from './backlog-inspector.js';

const port = parentPort!;
const { dir } = workerData as { dir: string };
let db: Database.Database | undefined;

port.on('message', ({ top }: { top: number }) => {
  let reply: BacklogReply;
  try {
    db ??= openLogForReading(dir);
    reply = { ok: true, summary: readBacklog(db, { limit: top }) };
  } catch (err) {
    db?.close();
    db = undefined;
    reply = { ok: false, error: describeError(err) };
  }
  port.postMessage(reply);
});
