import { copyFileSync, existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { backoffDelay } from '../../src/forward/backoff.js';
import { Forwarder, type ForwarderOptions } from '../../src/forward/forwarder.js';
import { RecordRejectedError, type Checkpoint, type ConnectResult, type ForwardBatch, type RecordSink } from '../../src/forward/sink.js';
import { CommitLog, DB_FILE, type LogEntry, type LogRecord } from '../../src/log/commit-log.js';
import { LogReader } from '../../src/log/log-reader.js';
import { useTmpDirs } from '../helpers/tmp.js';
import { entry } from '../helpers/entries.js';

/**
 * An in-memory stand-in for Kafka with transactional semantics: a send either commits its records,
 * dead letters and checkpoint together or not at all. `failNext` fails sends before commit;
 * `loseAckNext` commits and then fails (a lost commit response: the outcome is only known from
 * the checkpoint); `reject` refuses records for good, as Kafka does a record too large.
 */
class MemorySink implements RecordSink {
  readonly delivered: LogRecord[] = [];
  readonly deadLetters: { offset: number; reason: string }[] = [];
  checkpoint: Checkpoint | undefined;
  failNext = 0;
  loseAckNext = 0;
  fenceNext = 0;
  unauthorized = false;
  /** Thrown by connect, as kafkajs does when the SASL login or the TLS handshake fails. */
  refuseLogin: Error | undefined;
  reject: (r: LogRecord) => string | undefined = () => undefined;
  rejectDeadLetters: () => string | undefined = () => undefined;
  connects = 0;
  resets = 0;
  sends = 0;
  checkpointWrites = 0;
  /** A twin's probe seen after our last checkpoint (set by a test). */
  foreignClaim = false;
  async connect(): Promise<ConnectResult> {
    this.connects++;
    if (this.refuseLogin) throw this.refuseLogin;
    if (this.unauthorized) throw Object.assign(new Error('not authorized'), { type: 'TRANSACTIONAL_ID_AUTHORIZATION_FAILED' });
    return { checkpoint: this.checkpoint, foreignClaim: this.foreignClaim };
  }
  async send(batch: ForwardBatch, checkpoint: Checkpoint): Promise<number> {
    this.sends++;
    if (this.fenceNext > 0) {
      this.fenceNext--;
      throw Object.assign(new Error('Producer attempted an operation with an old epoch'), { type: 'INVALID_PRODUCER_EPOCH' });
    }
    if (this.unauthorized) throw Object.assign(new Error('not authorized'), { type: 'TRANSACTIONAL_ID_AUTHORIZATION_FAILED' });
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error('broker not available');
    }
    for (const r of batch.records) {
      const type = this.reject(r);
      if (type) throw new RecordRejectedError(type, r.kafkaTopic, false, `refused: ${type}`);
    }
    if (batch.deadLetters.length > 0) {
      const type = this.rejectDeadLetters();
      if (type) throw new RecordRejectedError(type, 'edgebridge.dead-letter', true, `dead letter refused: ${type}`);
    }
    this.delivered.push(...batch.records);
    this.deadLetters.push(...batch.deadLetters.map((d) => ({ offset: d.record.offset, reason: d.reason })));
    this.checkpoint = { ...checkpoint, kafkaOffset: ++this.checkpointWrites };
    if (this.loseAckNext > 0 && batch.records.length > 0) {
      this.loseAckNext--;
      throw new Error('request timed out');
    }
    return this.checkpointWrites;
  }
  async reset(): Promise<void> {
    this.resets++;
  }
  async close(): Promise<void> {}
}

const silent = pino({ level: 'silent' });
const options: ForwarderOptions = {
  batchMaxRecords: 3,
  batchMaxBytes: 1_000_000,
  commitIntervalMs: 0,
  retry: { initialMs: 5, maxMs: 20 },
  logger: silent,
  idlePollMs: 20,
  deadLetter: true,
};

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`waited ${ms} ms for: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const offsets = (records: readonly LogRecord[]) => records.map((r) => r.offset);

/** Opens the log (a new epoch), appends `entries`, closes it again: one gateway run's ingest. */
function appendInNewOpening(dir: string, entries: LogEntry[]): void {
  const log = new CommitLog({ dir, synchronous: 'full' });
  log.append(entries);
  log.close();
}

describe('forwarder', () => {
  const tmp = useTmpDirs();
  /** The gateway's log and the forwarder's own connection to it. */
  const openLog = (dir = tmp()) => {
    const log = new CommitLog({ dir, synchronous: 'full' });
    const reader = new LogReader({ dir, synchronous: 'full' });
    return { dir, log, reader, close: () => (reader.close(), log.close()) };
  };

  it('forwards one batch per step in offset order and only then commits the position', async () => {
    const { log, reader, close } = openLog();
    log.append([1, 2, 3, 4, 5].map((i) => entry(`d${i % 2}`, i)));
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, options);
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 3 });
    expect(offsets(sink.delivered)).toEqual([1, 2, 3]);
    expect(reader.position()).toBe(3);
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 2 });
    expect(await fwd.step()).toEqual({ kind: 'idle' });
    // every checkpoint names the epoch of its offset
    expect(sink.checkpoint).toMatchObject({ logId: log.logId, offset: 5, epoch: log.epoch.id });
    close();
  });

  it('removes forwarded records once the log is drained', async () => {
    const { log, reader, close } = openLog();
    log.append([1, 2, 3, 4, 5].map((i) => entry('d', i)));
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, options);
    fwd.start();
    await until(() => log.stats().records === 0, 'the log to be empty');
    expect(sink.delivered).toHaveLength(5);
    expect(reader.position()).toBe(5);
    await fwd.close();
    close();
  });

  it('a failed batch leaves the position where it was', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1), entry('a', 2)]);
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, options);
    await fwd.connect();
    sink.failNext = 1;
    expect((await fwd.step()).kind).toBe('retry');
    expect(fwd.state).toBe('retrying');
    expect(reader.position()).toBe(0);
    expect(log.stats().records).toBe(2);
    close();
  });

  it('keeps retrying through failures without skipping or repeating a range, then follows new appends', async () => {
    const { log, reader, close } = openLog();
    log.append(Array.from({ length: 10 }, (_, i) => entry('a', i)));
    const sink = new MemorySink();
    sink.failNext = 4;
    const fwd = new Forwarder(reader, sink, options);
    fwd.start();
    await until(() => sink.delivered.length === 10, '10 records delivered');
    expect(fwd.counters.failures).toBe(4);
    expect(sink.resets).toBe(4); // a fresh producer after each failure
    log.append([entry('a', 11), entry('a', 12)]);
    fwd.notify(12);
    await until(() => sink.delivered.length === 12, '12 records delivered');
    expect(offsets(sink.delivered)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(fwd.state).toBe('forwarding');
    await fwd.close();
    expect(fwd.state).toBe('stopped');
    close();
  });

  it('a commit whose response was lost is not sent again: the checkpoint decides', async () => {
    const { log, reader, close } = openLog();
    log.append(Array.from({ length: 9 }, (_, i) => entry('a', i)));
    const sink = new MemorySink();
    sink.loseAckNext = 2;
    const fwd = new Forwarder(reader, sink, options);
    fwd.start();
    await until(() => reader.position() === 9, 'position 9');
    expect(offsets(sink.delivered)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(fwd.counters.skippedByCheckpoint).toBe(6);
    await fwd.close();
    close();
  });

  it('resumes after the Kafka checkpoint even when the local position is behind', async () => {
    const { log, reader, close } = openLog();
    log.append(Array.from({ length: 6 }, (_, i) => entry('a', i)));
    const sink = new MemorySink();
    sink.checkpoint = { logId: log.logId, offset: 4, epoch: log.epoch.id, kafkaOffset: 17 };
    const fwd = new Forwarder(reader, sink, options);
    expect(await fwd.connect()).toBe(true);
    expect(reader.position()).toBe(4);
    // the gateway claims its id at once with a checkpoint of where it stands
    expect(sink.checkpoint).toMatchObject({ logId: log.logId, offset: 4 });
    expect(reader.checkpointHint()).toBe(sink.checkpoint!.kafkaOffset);
    await fwd.step();
    expect(offsets(sink.delivered)).toEqual([5, 6]);
    close();
  });

  it('ignores a checkpoint written from another commit log', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1), entry('a', 2)]);
    const sink = new MemorySink();
    sink.checkpoint = { logId: 'some-other-log', offset: 1000 };
    const fwd = new Forwarder(reader, sink, options);
    await fwd.connect();
    expect(reader.position()).toBe(0);
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 2 });
    close();
  });

  it('keeps its position when the checkpoint is behind it (no resending)', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1), entry('a', 2), entry('a', 3)]);
    reader.commitPosition(3);
    const sink = new MemorySink();
    sink.checkpoint = { logId: log.logId, offset: 1, epoch: log.epoch.id };
    const fwd = new Forwarder(reader, sink, options);
    await fwd.connect();
    expect(reader.position()).toBe(3);
    expect(await fwd.step()).toEqual({ kind: 'idle' });
    close();
  });

  it('a fence with only its own checkpoint in Kafka is no twin: it keeps checking with backoff, and never sends twice', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1)]);
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, options);
    await fwd.connect();
    const send = sink.send.bind(sink);
    sink.send = async () => {
      throw Object.assign(new Error('There is a newer producer with the same transactionalId which fences the current one'), {
        type: 'PRODUCER_FENCED',
      });
    };
    expect(await fwd.step()).toEqual({ kind: 'retry', delayMs: 0 }); // check at once
    for (let i = 0; i < 3; i++) expect((await fwd.step()).kind).toBe('retry');
    const again = await fwd.step();
    expect(again.kind === 'retry' && again.delayMs > 0).toBe(true); // then with backoff
    expect(fwd.state).not.toBe('fenced');
    sink.send = send;
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
    expect(offsets(sink.delivered)).toEqual([1]);
    close();
  });

  it('a fence before its first claim is a race with the gateway it replaces: it goes on trying, and wins', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1)]);
    const sink = new MemorySink();
    sink.checkpoint = { logId: 'the-older-gateway', offset: 40 };
    sink.fenceNext = 3; // the older gateway's checks fence our claim three times
    const fwd = new Forwarder(reader, sink, options);
    for (let i = 0; i < 3; i++) expect((await fwd.step()).kind).toBe('retry');
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
    expect(fwd.state).toBe('forwarding');
    close();
  });

  it('a fence followed by a checkpoint of its own log was a timed-out transaction: forwarding goes on', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1), entry('a', 2)]);
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, options);
    expect(await fwd.connect()).toBe(true);
    sink.fenceNext = 1;
    fwd.start();
    await until(() => reader.position() === 2, 'position 2');
    expect(fwd.state).toBe('forwarding');
    expect(offsets(sink.delivered)).toEqual([1, 2]);
    await fwd.close();
    close();
  });

  it('a fence followed by a checkpoint from another log is a twin gateway: fenced', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1)]);
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, options);
    expect(await fwd.connect()).toBe(true);
    sink.fenceNext = 1;
    sink.checkpoint = { logId: 'the-twin', offset: 99 }; // the twin committed after fencing us
    sink.foreignClaim = true;
    fwd.start();
    await until(() => fwd.state === 'fenced', 'fenced');
    expect(sink.delivered).toEqual([]);
    expect(reader.position()).toBe(0);
    await fwd.close();
    close();
  });

  it("a twin that fenced us but has not committed a checkpoint yet is seen by its probe: we stop, it goes on", async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1)]);
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, options);
    await fwd.connect();
    sink.fenceNext = 1;
    sink.foreignClaim = true; // the newer gateway committed its probe; its claim is still to come
    expect(await fwd.step()).toEqual({ kind: 'retry', delayMs: 0 });
    expect(await fwd.step()).toEqual({ kind: 'fenced' });
    expect(sink.delivered).toEqual([]);
    close();
  });

  it('an authorization error is reported as missing ACLs, not as a twin, and forwarding resumes once granted', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1), entry('a', 2)]);
    const lines: { msg: string; code?: string; requiredAcls?: string }[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const sink = new MemorySink();
    sink.unauthorized = true;
    const fwd = new Forwarder(reader, sink, { ...options, logger, requiredAcls: 'WRITE on TransactionalId edgebridge-gw' });
    for (let i = 0; i < 4; i++) expect((await fwd.step()).kind).toBe('retry');
    expect(fwd.state).toBe('unauthorized');
    const line = lines.find((l) => l.code === 'EB_ERR_FORWARD_UNAUTHORIZED');
    expect(line?.requiredAcls).toContain('TransactionalId edgebridge-gw');
    expect(lines.filter((l) => l.code === 'EB_ERR_FORWARD_UNAUTHORIZED')).toHaveLength(1); // not one per attempt
    sink.unauthorized = false;
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 2 });
    expect(fwd.state).toBe('forwarding');
    close();
  });

  it('a refused SASL login or an untrusted broker certificate is one clear line and its own state; forwarding resumes once fixed', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1), entry('a', 2)]);
    const lines: { msg: string; level: number; code?: string; reason?: string }[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const sink = new MemorySink();
    // kafkajs's shapes: a KafkaJSSASLAuthenticationError; a connection error carrying node:tls's code, wrapped by the retrier
    sink.refuseLogin = Object.assign(new Error('SASL SCRAM SHA512 authentication failed: Authentication failed during authentication due to invalid credentials'), {
      name: 'KafkaJSSASLAuthenticationError',
    });
    const kafkaIdentity = { tls: true, caFile: '/etc/edgebridge/kafka-ca.pem', username: 'gw-site-1', mechanism: 'scram-sha-512' };
    const fwd = new Forwarder(reader, sink, { ...options, logger, kafkaIdentity });
    for (let i = 0; i < 4; i++) expect((await fwd.step()).kind).toBe('retry');
    expect(fwd.state).toBe('unauthenticated');
    const sasl = lines.filter((l) => l.code === 'EB_ERR_FORWARD_AUTHENTICATION');
    expect(sasl).toHaveLength(1); // not one per attempt
    expect(sasl[0]!.level).toBe(50);
    expect(sasl[0]!.msg).toContain('Kafka refused the SASL login of user "gw-site-1" (mechanism SCRAM-SHA-512): check kafka.sasl');
    expect(fwd.lastErrorMessage).toContain('check kafka.sasl');
    expect(sink.delivered).toEqual([]);

    sink.refuseLogin = undefined;
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 2 });
    expect(fwd.state).toBe('forwarding');
    expect(lines.at(-1)?.msg).toBe('kafka accepts this gateway again: draining the backlog');

    log.append([entry('a', 3)]);
    sink.refuseLogin = Object.assign(new Error('Number of retries exceeded'), {
      name: 'KafkaJSNumberOfRetriesExceeded',
      cause: Object.assign(new Error('Connection error: self-signed certificate in certificate chain'), { name: 'KafkaJSConnectionError', code: 'SELF_SIGNED_CERT_IN_CHAIN' }),
    });
    sink.failNext = 1; // the connection drops; the reconnect meets a certificate the CA file does not sign
    expect((await fwd.step()).kind).toBe('retry');
    expect(fwd.state).toBe('retrying');
    expect((await fwd.step()).kind).toBe('retry');
    expect(fwd.state).toBe('unauthenticated');
    const tls = lines.filter((l) => l.code === 'EB_ERR_FORWARD_TLS');
    expect(tls).toHaveLength(1);
    expect(tls[0]!.msg).toContain("cannot verify the Kafka broker's certificate (SELF_SIGNED_CERT_IN_CHAIN): it is not signed by a CA in kafka.ssl.caFile (/etc/edgebridge/kafka-ca.pem)");
    expect(tls[0]!.reason).toBe('SELF_SIGNED_CERT_IN_CHAIN');
    sink.refuseLogin = undefined;
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
    expect(sink.delivered.map((r) => r.offset)).toEqual([1, 2, 3]);
    close();
  });

  it('a transaction Kafka takes but does not complete (a cluster without its quorum) is reported once after stallMs, while kafkajs still waits', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('d', 1)]);
    const sink = new MemorySink();
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    const send = sink.send.bind(sink);
    let hold = false;
    sink.send = async (batch, checkpoint) => {
      if (hold) await held;
      return send(batch, checkpoint);
    };
    const lines: { msg: string; code?: string; level: number }[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as { msg: string; code?: string; level: number }) });
    const fwd = new Forwarder(reader, sink, { ...options, logger, stallMs: 100 });
    fwd.start();
    await until(() => sink.delivered.length === 1, 'the first record forwarded');
    hold = true;
    log.append([entry('d', 2)]);
    fwd.notify(2);
    await until(() => fwd.state === 'retrying', 'the stalled transaction reported');
    const stalled = lines.filter((l) => l.code === 'EB_ERR_FORWARD_KAFKA');
    expect(stalled).toHaveLength(1);
    expect(stalled[0]!.msg).toMatch(/^kafka takes requests but completes none \(the network to it is cut, or the cluster cannot take writes/);
    release();
    await until(() => sink.delivered.length === 2 && fwd.state === 'forwarding', 'the transaction completes');
    expect(lines.filter((l) => l.code === 'EB_ERR_FORWARD_KAFKA')).toHaveLength(1);
    expect(lines.some((l) => l.msg === 'kafka reachable again: draining the backlog')).toBe(true);
    expect(fwd.counters.failures).toBe(0); // it completed: no failure
    await fwd.close();
    close();
  });

  it('a failing log is a log error: the Kafka producer is left alone and forwarding resumes when the log does', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1), entry('a', 2)]);
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, options);
    await fwd.connect();
    const read = vi.spyOn(reader, 'readBatch').mockImplementation(() => {
      throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_READ' });
    });
    expect((await fwd.step()).kind).toBe('retry');
    expect((await fwd.step()).kind).toBe('retry');
    expect(fwd.state).toBe('log-error');
    expect(sink.resets).toBe(0);
    expect(sink.connects).toBe(1);
    read.mockRestore();
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 2 });
    expect(fwd.state).toBe('forwarding');
    close();
  });

  it('removal failing after every Kafka commit: log-error once, not a flap with two lines per batch (review of e666fd4)', async () => {
    const { log, reader, close } = openLog();
    log.append(Array.from({ length: 12 }, (_, i) => entry('a', i + 1)));
    const sink = new MemorySink();
    const states: string[] = [];
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push((JSON.parse(l) as { msg: string }).msg) });
    const fwd = new Forwarder(reader, sink, { ...options, logger, onStateChange: (s) => states.push(s) });
    const remove = vi.spyOn(reader, 'removeThrough').mockImplementation(() => {
      throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    });
    for (let i = 0; i < 6; i++) await fwd.step();
    expect(states.slice(states.indexOf('log-error'))).toEqual(['log-error']);
    expect(lines.filter((l) => /commit log/.test(l)).length).toBeLessThanOrEqual(2);
    expect(offsets(sink.delivered)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    remove.mockRestore();
    await fwd.step();
    expect(fwd.state).toBe('forwarding');
    close();
  });

  it('a position that cannot be stored after Kafka committed is kept in memory: nothing is sent twice', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1), entry('a', 2), entry('a', 3), entry('a', 4)]);
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, options);
    await fwd.connect();
    const store = vi.spyOn(reader, 'commitPosition').mockImplementation(() => {
      throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    });
    expect((await fwd.step()).kind).toBe('retry'); // committed in Kafka, not stored here
    expect(fwd.state).toBe('log-error');
    expect(fwd.position).toBe(3);
    store.mockRestore();
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
    expect(offsets(sink.delivered)).toEqual([1, 2, 3, 4]);
    expect(reader.position()).toBe(4);
    close();
  });

  it('moves over records that are gone (expired, dropped) instead of spinning on them', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1), entry('a', 2), entry('a', 3)]);
    log.dropOldest(0, 3); // e.g. storage.maxAge expired the whole backlog
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, options);
    await fwd.connect();
    expect(await fwd.step()).toEqual({ kind: 'skipped' });
    expect(reader.position()).toBe(3);
    expect(sink.checkpoint?.offset).toBe(3); // Kafka's checkpoint moved with it
    expect(await fwd.step()).toEqual({ kind: 'idle' });
    // and the running loop then waits instead of reading again and again
    const reads = vi.spyOn(reader, 'readBatch');
    fwd.start();
    await until(() => reads.mock.calls.length > 0, 'the loop to read once');
    const before = reads.mock.calls.length;
    for (let i = 0; i < 200; i++) await new Promise((r) => setImmediate(r));
    expect(reads.mock.calls.length - before).toBeLessThanOrEqual(1);
    log.append([entry('a', 4)]);
    fwd.notify(4);
    await until(() => sink.delivered.length === 1, 'the new record');
    expect(offsets(sink.delivered)).toEqual([4]);
    await fwd.close();
    close();
  });

  it('a record Kafka refuses for good is isolated and dead-lettered; the others go out in order', async () => {
    const { log, reader, close } = openLog();
    log.append(Array.from({ length: 10 }, (_, i) => ({ ...entry('a', i + 1), payload: Buffer.alloc(i === 6 ? 5000 : 10, i) })));
    const sink = new MemorySink();
    sink.reject = (r) => (r.payload.length > 1000 ? 'MESSAGE_TOO_LARGE' : undefined);
    const fwd = new Forwarder(reader, sink, { ...options, batchMaxRecords: 8 });
    fwd.start();
    await until(() => reader.position() === 10, 'position 10');
    expect(offsets(sink.delivered)).toEqual([1, 2, 3, 4, 5, 6, 8, 9, 10]);
    expect(sink.deadLetters).toEqual([{ offset: 7, reason: 'MESSAGE_TOO_LARGE' }]);
    expect(fwd.counters).toMatchObject({ forwarded: 9, deadLettered: 1, droppedRejected: 0 });
    await fwd.close();
    close();
  });

  it('without a dead-letter topic a refused record is dropped and counted, never retried forever', async () => {
    const { log, reader, close } = openLog();
    log.append([entry('a', 1), { ...entry('a', 2), payload: Buffer.alloc(5000) }, entry('a', 3)]);
    const sink = new MemorySink();
    sink.reject = (r) => (r.payload.length > 1000 ? 'INVALID_RECORD' : undefined);
    const fwd = new Forwarder(reader, sink, { ...options, deadLetter: false });
    fwd.start();
    await until(() => reader.position() === 3, 'position 3');
    expect(offsets(sink.delivered)).toEqual([1, 3]);
    expect(sink.deadLetters).toEqual([]);
    expect(fwd.counters).toMatchObject({ forwarded: 2, droppedRejected: 1 });
    await fwd.close();
    close();
  });

  it("a record refused for its timestamp is dead-lettered; while Kafka refuses this gateway's own timestamps too, it waits for the clock instead of dropping", async () => {
    const { log, reader, close } = openLog();
    const future = Date.now() + 2 * 3600_000; // stored while the gateway clock ran 2 h fast
    log.append([entry('a', 1), { ...entry('a', 2), receivedAt: future }, entry('a', 3)]);
    const lines: { msg: string; hint?: string }[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const sink = new MemorySink();
    sink.reject = (r) => (r.receivedAt > Date.now() + 3600_000 ? 'INVALID_TIMESTAMP' : undefined);
    let clockFixed = false;
    sink.rejectDeadLetters = () => (clockFixed ? undefined : 'INVALID_TIMESTAMP');
    const fwd = new Forwarder(reader, sink, { ...options, logger });
    let outcome = await fwd.step();
    for (let i = 0; i < 12 && !(outcome.kind === 'retry' && outcome.delayMs > 0); i++) outcome = await fwd.step();
    expect(outcome.kind === 'retry' && outcome.delayMs > 0).toBe(true); // waiting, not dropping
    expect(fwd.state).toBe('retrying');
    expect(lines.some((l) => l.hint?.includes('clock'))).toBe(true);
    expect(fwd.counters.droppedRejected).toBe(0);
    clockFixed = true;
    while (reader.position() < 3) await fwd.step();
    expect(offsets(sink.delivered)).toEqual([1, 3]);
    expect(sink.deadLetters).toEqual([{ offset: 2, reason: 'INVALID_TIMESTAMP' }]);
    expect(fwd.counters).toMatchObject({ deadLettered: 1, droppedRejected: 0 });
    close();
  });

  it('limits a transaction by bytes, but always sends at least one record', async () => {
    const { log, reader, close } = openLog();
    log.append([1, 2, 3].map((i) => ({ ...entry('a', i), payload: Buffer.alloc(600) })));
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, { ...options, batchMaxBytes: 1000 });
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
    expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
    close();
  });

  it('backoff grows exponentially, is capped, and is jittered', () => {
    expect(backoffDelay(0, 100, 10_000, () => 1)).toBe(100);
    expect(backoffDelay(0, 100, 10_000, () => 0)).toBe(50);
    expect(backoffDelay(3, 100, 10_000, () => 1)).toBe(800);
    expect(backoffDelay(20, 100, 10_000, () => 1)).toBe(10_000);
    expect(backoffDelay(1000, 100, 10_000, () => 0.5)).toBe(7500);
  });
});

describe('forwarder after the log lost its tail (a restored backup)', () => {
  const tmp = useTmpDirs();
  const snapshot = (dir: string, to: string) => {
    for (const f of [DB_FILE, `${DB_FILE}-wal`]) if (existsSync(join(dir, f))) copyFileSync(join(dir, f), join(to, f));
  };
  const restore = (from: string, dir: string) => {
    for (const f of [DB_FILE, `${DB_FILE}-wal`, `${DB_FILE}-shm`]) rmSync(join(dir, f), { force: true });
    snapshot(from, dir);
  };
  const forwardAll = async (dir: string, sink: MemorySink) => {
    const reader = new LogReader({ dir, synchronous: 'full' });
    const fwd = new Forwarder(reader, sink, { ...options, batchMaxRecords: 100 });
    await fwd.connect();
    while ((await fwd.step()).kind !== 'idle');
    reader.close();
  };

  it('a backup taken within one epoch: the records appended after the restore reuse offsets and are all forwarded', async () => {
    const dir = tmp();
    const backup = tmp();
    const sink = new MemorySink();
    let log = new CommitLog({ dir, synchronous: 'full' });
    log.append([1, 2, 3].map((i) => entry('old', i)));
    log.close();
    snapshot(dir, backup); // 3 records
    appendInNewOpening(dir, [4, 5, 6, 7, 8, 9, 10].map((i) => entry('old', i)));
    await forwardAll(dir, sink); // Kafka has 1..10
    restore(backup, dir);
    log = new CommitLog({ dir, synchronous: 'full' });
    // ten new readings acknowledged before Kafka is reachable: offsets 4..13 again
    expect(log.append(Array.from({ length: 10 }, (_, i) => entry('new', i + 1)))).toEqual([4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    log.close();
    await forwardAll(dir, sink);
    expect(sink.delivered.map((r) => `${r.deviceId}:${r.offset}`)).toEqual([
      ...[1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((i) => `old:${i}`),
      ...[4, 5, 6, 7, 8, 9, 10, 11, 12, 13].map((i) => `new:${i}`),
    ]);
  });

  it('the same loss inside one epoch (the epoch survived, its tail did not)', async () => {
    const dir = tmp();
    const backup = tmp();
    const sink = new MemorySink();
    const log = new CommitLog({ dir, synchronous: 'full' });
    log.append([1, 2, 3].map((i) => entry('old', i)));
    snapshot(dir, backup);
    log.append([4, 5, 6, 7, 8, 9, 10].map((i) => entry('old', i)));
    log.close();
    await forwardAll(dir, sink);
    restore(backup, dir);
    appendInNewOpening(dir, Array.from({ length: 10 }, (_, i) => entry('new', i + 1)));
    await forwardAll(dir, sink);
    expect(sink.delivered.filter((r) => r.deviceId === 'new').map((r) => r.offset)).toEqual([4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    expect(sink.delivered).toHaveLength(20);
  });

  it('two backups restored in turn, the newer one last: what Kafka never had is forwarded (nothing lost)', async () => {
    const dir = tmp();
    const [mid, full] = [tmp(), tmp()];
    const sink = new MemorySink();
    const log = new CommitLog({ dir, synchronous: 'full' });
    log.append(Array.from({ length: 50 }, (_, i) => entry('a', i + 1)));
    snapshot(dir, mid);
    log.append(Array.from({ length: 50 }, (_, i) => entry('a', i + 51)));
    snapshot(dir, full);
    log.close();
    // Kafka got 1..60 only
    const reader = new LogReader({ dir, synchronous: 'full' });
    const fwd = new Forwarder(reader, sink, { ...options, batchMaxRecords: 60 });
    await fwd.connect();
    await fwd.step();
    reader.close();
    expect(sink.delivered).toHaveLength(60);
    restore(mid, dir);
    appendInNewOpening(dir, Array.from({ length: 10 }, (_, i) => entry('b', i + 1))); // offsets 51..60 again
    await forwardAll(dir, sink);
    restore(full, dir);
    await forwardAll(dir, sink);
    const seen = sink.delivered.map((r) => `${r.deviceId}:${r.offset}`);
    expect(seen.filter((x) => x.startsWith('a:'))).toEqual(Array.from({ length: 100 }, (_, i) => `a:${i + 1}`));
    expect(seen.filter((x) => x.startsWith('b:'))).toHaveLength(10);
    expect(new Set(seen).size).toBe(seen.length);
  });

  it('two backups from different epochs restored in turn: nothing Kafka has is sent again', async () => {
    const dir = tmp();
    const [b1, b2] = [tmp(), tmp()];
    const sink = new MemorySink();
    appendInNewOpening(dir, Array.from({ length: 100 }, (_, i) => entry('a', i + 1)));
    snapshot(dir, b1); // within epoch 1 (all 100)
    appendInNewOpening(dir, Array.from({ length: 20 }, (_, i) => entry('a', i + 101)));
    snapshot(dir, b2); // within epoch 2 (120)
    appendInNewOpening(dir, Array.from({ length: 30 }, (_, i) => entry('a', i + 121)));
    await forwardAll(dir, sink); // all 150
    restore(b1, dir);
    appendInNewOpening(dir, Array.from({ length: 5 }, (_, i) => entry('c', i + 1)));
    await forwardAll(dir, sink);
    restore(b2, dir);
    appendInNewOpening(dir, Array.from({ length: 5 }, (_, i) => entry('d', i + 1)));
    await forwardAll(dir, sink);
    const a = sink.delivered.filter((r) => r.deviceId === 'a').map((r) => r.offset);
    expect(a).toEqual(Array.from({ length: 150 }, (_, i) => i + 1));
    expect(sink.delivered.filter((r) => r.deviceId !== 'a').map((r) => r.deviceId).join('')).toBe('cccccddddd');
  });

  describe('MQTT 5 message expiry', () => {
    const tmpDir = useTmpDirs();
    const openLog = () => {
      const dir = tmpDir();
      const log = new CommitLog({ dir, synchronous: 'full' });
      const reader = new LogReader({ dir, synchronous: 'full' });
      return { log, reader, close: () => (reader.close(), log.close()) };
    };
    const expiring = (n: number, expiresAt: number | undefined): LogEntry => ({ ...entry('a', n), ...(expiresAt === undefined ? {} : { expiresAt }) });

    it('leaves expired records out of the batch and covers them with its checkpoint; counted once committed', async () => {
      const { log, reader, close } = openLog();
      const now = 1000;
      // 1 expires at 500 (expired), 2 never, 3 at 5000 (live)
      log.append([expiring(1, 500), expiring(2, undefined), expiring(3, 5000)]);
      const sink = new MemorySink();
      const progress: number[] = [];
      const fwd = new Forwarder(reader, sink, { ...options, clock: () => now, onProgress: (d) => progress.push(d.expired) });
      await fwd.connect();
      expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 2 });
      expect(offsets(sink.delivered)).toEqual([2, 3]);
      expect(sink.checkpoint?.offset).toBe(3);
      expect(reader.position()).toBe(3);
      expect(fwd.counters).toMatchObject({ forwarded: 2, expired: 1 });
      expect(progress).toContain(1);
      close();
    });

    it('a batch in which every record expired still moves the checkpoint and the position, then idles; the log is trimmed', async () => {
      const { log, reader, close } = openLog();
      const now = 10_000;
      log.append([1, 2, 3, 4, 5].map((i) => expiring(i, 9_000)));
      const sink = new MemorySink();
      const fwd = new Forwarder(reader, sink, { ...options, clock: () => now });
      await fwd.connect();
      expect(await fwd.step()).toEqual({ kind: 'skipped' });
      expect(sink.checkpoint?.offset).toBe(3);
      expect(await fwd.step()).toEqual({ kind: 'skipped' });
      expect(sink.checkpoint?.offset).toBe(5);
      expect(await fwd.step()).toEqual({ kind: 'idle' });
      expect(sink.delivered).toEqual([]);
      expect(reader.position()).toBe(5);
      expect(fwd.counters.expired).toBe(5);
      expect(log.stats().records).toBe(0);
      close();
    });

    it('decided when the batch is built: a batch whose send failed is rebuilt, and a record that expired meanwhile is dropped (counted once)', async () => {
      const { log, reader, close } = openLog();
      let now = 1000;
      log.append([expiring(1, 2000), expiring(2, undefined)]);
      const sink = new MemorySink();
      const fwd = new Forwarder(reader, sink, { ...options, clock: () => now });
      await fwd.connect();
      sink.failNext = 1; // Kafka unreachable for this attempt
      expect((await fwd.step()).kind).toBe('retry');
      expect(fwd.counters.expired).toBe(0);
      now = 3000; // the outage outlasted record 1's expiry
      expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
      expect(offsets(sink.delivered)).toEqual([2]);
      expect(fwd.counters).toMatchObject({ forwarded: 1, expired: 1 });
      // a failed transaction that would have dropped expired records counts nothing
      log.append([expiring(3, 2500), expiring(4, undefined)]);
      sink.failNext = 1;
      expect((await fwd.step()).kind).toBe('retry');
      expect(fwd.counters.expired).toBe(1);
      expect(await fwd.step()).toEqual({ kind: 'forwarded', records: 1 });
      expect(fwd.counters).toMatchObject({ forwarded: 2, expired: 2 });
      expect(offsets(sink.delivered)).toEqual([2, 4]);
      close();
    });

    it('a refused record that expired while it was being isolated is dropped as expired, not dead-lettered', async () => {
      const { log, reader, close } = openLog();
      let now = 1000;
      log.append([expiring(1, undefined), { ...expiring(2, 1500), payload: Buffer.alloc(5000) }, expiring(3, undefined)]);
      const sink = new MemorySink();
      sink.reject = (r) => {
        if (r.payload.length <= 1000) return undefined;
        now = 2000; // the refusal took us past its expiry
        return 'MESSAGE_TOO_LARGE';
      };
      const fwd = new Forwarder(reader, sink, { ...options, clock: () => now });
      fwd.start();
      await until(() => reader.position() === 3, 'position 3');
      expect(offsets(sink.delivered)).toEqual([1, 3]);
      expect(sink.deadLetters).toEqual([]);
      expect(fwd.counters).toMatchObject({ forwarded: 2, expired: 1, deadLettered: 0, droppedRejected: 0 });
      await fwd.close();
      close();
    });

    it('logs the drops at most once a minute', async () => {
      const { log, reader, close } = openLog();
      let now = 1000;
      const lines: unknown[] = [];
      const logger = pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
      log.append([1, 2, 3, 4, 5, 6].map((i) => expiring(i, 500)));
      const sink = new MemorySink();
      const fwd = new Forwarder(reader, sink, { ...options, logger, clock: () => now });
      await fwd.connect();
      await fwd.step();
      now += 1000;
      await fwd.step();
      const expiredLines = () => lines.filter((l) => String((l as { msg: string }).msg).includes('message expiry'));
      expect(expiredLines()).toHaveLength(1);
      log.append([expiring(7, 500)]);
      now += 60_000;
      await fwd.step();
      expect(expiredLines()).toHaveLength(2);
      expect(expiredLines()[1]).toMatchObject({ dropped: 4, total: 7 });
      close();
    });
  });

});

describe('adaptive commit interval (issue 12)', () => {
  const tmp = useTmpDirs();
  const openLog = (dir = tmp()) => {
    const log = new CommitLog({ dir, synchronous: 'full' });
    const reader = new LogReader({ dir, synchronous: 'full' });
    return { log, reader, close: () => (reader.close(), log.close()) };
  };
  /**
   * Appends `perTick` records every `tickMs` for `ticks` ticks (on fake timers, so the run is
   * exact and instant) and returns how many transactions the forwarder committed and the
   * longest a record waited between its append and the commit of its transaction.
   */
  async function trickle(tuning: Partial<ForwarderOptions>, perTick: number, tickMs: number, ticks: number) {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    const { log, reader, close } = openLog();
    const sink = new MemorySink();
    const appendedAt = new Map<number, number>();
    let longestWait = 0;
    const send = sink.send.bind(sink);
    sink.send = async (batch, checkpoint) => {
      const result = await send(batch, checkpoint);
      for (const r of batch.records) longestWait = Math.max(longestWait, Date.now() - appendedAt.get(r.offset)!);
      return result;
    };
    const fwd = new Forwarder(reader, sink, { ...options, batchMaxRecords: 5000, idlePollMs: 60_000, ...tuning });
    try {
      fwd.start();
      await vi.advanceTimersByTimeAsync(10);
      let n = 0;
      for (let t = 0; t < ticks; t++) {
        const entries = Array.from({ length: perTick }, () => entry(`d${n % 7}`, ++n));
        const results = log.append(entries) as number[]; // distinct dedup keys: every one an offset
        for (const offset of results) appendedAt.set(offset, Date.now());
        const lastOffset = results[results.length - 1]!;
        fwd.notify(lastOffset);
        await vi.advanceTimersByTimeAsync(tickMs);
      }
      await vi.advanceTimersByTimeAsync(5_000);
      expect(sink.delivered).toHaveLength(perTick * ticks);
      expect(offsets(sink.delivered)).toEqual(Array.from({ length: perTick * ticks }, (_, i) => i + 1));
      return { transactions: sink.checkpointWrites, longestWait };
    } finally {
      await fwd.close();
      close();
      vi.useRealTimers();
    }
  }
  const adaptive = { commitIntervalMs: 100, maxCommitDelayMs: 1000, commitMinRecords: 100 };

  it('records that trickle (10/s) are committed about once per maxCommitDelayMs, not once each, and none waits longer than that', async () => {
    const before = await trickle({ commitIntervalMs: 100 }, 1, 100, 100); // earlier versions: commitIntervalMs only
    const after = await trickle(adaptive, 1, 100, 100);
    expect(before.transactions).toBeGreaterThanOrEqual(90);
    expect(after.transactions).toBeLessThanOrEqual(12);
    expect(after.longestWait).toBeLessThanOrEqual(1000 + 100); // the bound, plus the tick that announced it
  });

  it('records that flow at rate (1,000/s) are committed every commitIntervalMs, as before', async () => {
    const { transactions, longestWait } = await trickle(adaptive, 100, 100, 50);
    expect(transactions).toBeGreaterThanOrEqual(45);
    expect(transactions).toBeLessThanOrEqual(52);
    expect(longestWait).toBeLessThanOrEqual(200);
  });

  it('a few records kept back by failed transactions go as soon as Kafka takes them again: they have waited already', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    const { log, reader, close } = openLog();
    const sink = new MemorySink();
    const fwd = new Forwarder(reader, sink, { ...options, ...adaptive, batchMaxRecords: 5000, idlePollMs: 60_000, retry: { initialMs: 50, maxMs: 50 } });
    try {
      fwd.start();
      await vi.advanceTimersByTimeAsync(10);
      const sendTimes: number[] = [];
      const send = sink.send.bind(sink);
      sink.send = (batch, checkpoint) => (sendTimes.push(Date.now()), send(batch, checkpoint));
      sink.failNext = 10;
      const results = log.append([entry('d', 1), entry('d', 2), entry('d', 3)]) as number[];
      fwd.notify(results[2]);
      // Ten failed attempts, each after a 50 ms backoff (jittered): well under a second.
      for (let i = 0; i < 200 && sink.delivered.length === 0; i++) await vi.advanceTimersByTimeAsync(10);
      expect(sink.failNext).toBe(0);
      expect(sink.delivered).toHaveLength(3);
      // Sent again one backoff after the last failure, not held for another maxCommitDelayMs.
      const [lastFailed, delivered] = sendTimes.slice(-2);
      expect(delivered! - lastFailed!).toBeLessThan(200);
    } finally {
      await fwd.close();
      close();
      vi.useRealTimers();
    }
  });

  it('records a transaction left out (its batch full by bytes) do not wait maxCommitDelayMs again per batch (review of d9a04b2)', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    const { log, reader, close } = openLog();
    const sink = new MemorySink();
    // 10 records of 1 KB; a batch holds one (batchMaxBytes), and 10 are fewer than commitMinRecords
    const fwd = new Forwarder(reader, sink, { ...options, ...adaptive, batchMaxRecords: 5000, batchMaxBytes: 1000, idlePollMs: 60_000 });
    try {
      fwd.start();
      await vi.advanceTimersByTimeAsync(10);
      const t0 = Date.now();
      const big = (n: number) => ({ ...entry('d', n), payload: Buffer.alloc(1000, n) });
      const results = log.append(Array.from({ length: 10 }, (_, i) => big(i + 1))) as number[];
      fwd.notify(results[9]);
      for (let i = 0; i < 300 && sink.delivered.length < 10; i++) await vi.advanceTimersByTimeAsync(10);
      expect(offsets(sink.delivered)).toEqual(results);
      // the first after maxCommitDelayMs (they trickle), the other nine one commitIntervalMs apart: not 10 × 1 s
      expect(Date.now() - t0).toBeLessThanOrEqual(1000 + 9 * 100 + 100);
    } finally {
      await fwd.close();
      close();
      vi.useRealTimers();
    }
  });

  it('in between (300/s), a transaction goes as soon as commitMinRecords wait', async () => {
    const { transactions, longestWait } = await trickle(adaptive, 30, 100, 50); // 1,500 records in 5 s
    expect(transactions).toBeGreaterThanOrEqual(12);
    expect(transactions).toBeLessThanOrEqual(17); // about 1,500 / 100 (a tick's 30 may bring it past 100)
    expect(longestWait).toBeLessThanOrEqual(1000 + 100); // the last few, fewer than commitMinRecords
  });
});
