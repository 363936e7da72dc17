// aedes-persistence's abstract test suite (node:test) against the gateway's session store with its
// SQLite tables: run by test/integration/session-persistence.test.ts as `node --test` on the
// built code (dist/), one fresh database per instance the suite creates.
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { SessionStore } from '../../dist/src/ingress/session-store.js';
import { CommitLog } from '../../dist/src/log/commit-log.js';
import { SessionTables } from '../../dist/src/log/session-tables.js';

const require = createRequire(import.meta.url);
const abstractSuite = require('aedes-persistence/abstract.js');

const limits = { maxQueuedMessages: 1000, maxRetainedMessages: 10_000, maxSessionBytes: 64 << 20, maxInflightMessages: 100 };

/** A store on a new database; destroy() also closes and removes the database. */
function durableStore() {
  const dir = mkdtempSync(join(tmpdir(), 'eb-abstract-'));
  const log = new CommitLog({ dir, synchronous: 'normal' });
  const tables = new SessionTables(log.file, { busyTimeoutMs: 1000, walLimitBytes: 1 << 20 });
  const store = new SessionStore(limits, () => true, tables);
  const destroy = store.destroy.bind(store);
  store.destroy = async () => {
    await destroy();
    tables.close();
    log.close();
    rmSync(dir, { recursive: true, force: true });
  };
  return store;
}

abstractSuite({ test, persistence: durableStore, testAsync: true });
