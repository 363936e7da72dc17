import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { backoffDelay } from '../../src/forward/backoff.js';
import { FORWARD_POSITION, Forwarder } from '../../src/forward/forwarder.js';
import type { Checkpoint, RecordSink } from '../../src/forward/kafka-sink.js';
import { CommitLog, type LogRecord } from '../../src/log/commit-log.js';
import { useTmpDirs } from '../helpers/tmp.js';
import { entry } from '../helpers/entries.js';

/**
 * An in-memory stand-in for Kafka with transactional semantics: a send either commits its records
 * and checkpoint together or not at all. `failNext` fails sends before commit; `loseAckNext`
 * commits and then fails (a lost commit response: the outcome is only known from the checkpoint).
 */
class MemorySink implements RecordSink {
  readonly delivered: LogRecord[] = [];
  checkpoint: Checkpoint | undefined;
  failNext = 0;
  loseAckNext = 0;
  connects = 0;
  resets = 0;
  async connect(): Promise<Checkpoint | undefined> {
    this.connects++;
    return this.checkpoint;
  }
  checkpointWrites = 0;
  fenceNext = 0;
  async send(records: readonly LogRecord[], checkpoint: Checkpoint): Promise<number> {
    if (this.fenceNext > 0) {
      this.fenceNext--;
      throw Object.assign(new Error('Producer attempted an operation with an old epoch'), { type: 'INVALID_PRODUCER_EPOCH' });
    }
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error('broker not available');
    }
    this.delivered.push(...records);
    this.checkpoint = { ...checkpoint, kafkaOffset: ++this.checkpointWrites };
    if (this.loseAckNext > 0 && records.length > 0) {
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
const options = {
  batchMaxRecords: 3,
  batchMaxBytes: 1_000_000,
  commitIntervalMs: 0,
  retry: { initialMs: 5, maxMs: 20 },
  logger: silent,
  idlePollMs: 20,
};

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('forwarder', () => {
  const tmp = useTmpDirs();

  it('drainOnce sends one batch in offset order and only then commits the position', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append([1, 2, 3, 4, 5].map((i) => entry(`d${i % 2}`, i)));
    const sink = new MemorySink();
    const fwd = new Forwarder(log, sink, options);
    expect(await fwd.drainOnce()).toBe(3);
    expect(sink.delivered.map((r) => r.offset)).toEqual([1, 2, 3]);
    expect(log.position(FORWARD_POSITION)).toBe(3);
    expect(await fwd.drainOnce()).toBe(2);
    expect(await fwd.drainOnce()).toBe(0);
    log.close();
  });

  it('removes forwarded records once the log is drained', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append([1, 2, 3, 4, 5].map((i) => entry('d', i)));
    const sink = new MemorySink();
    const fwd = new Forwarder(log, sink, options);
    fwd.start();
    await until(() => log.stats().records === 0);
    expect(sink.delivered).toHaveLength(5);
    expect(log.position(FORWARD_POSITION)).toBe(5);
    await fwd.close();
    log.close();
  });

  it('a failed batch leaves the position where it was', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append([entry('a', 1), entry('a', 2)]);
    const sink = new MemorySink();
    sink.failNext = 1;
    const fwd = new Forwarder(log, sink, options);
    await expect(fwd.drainOnce()).rejects.toThrow('broker not available');
    expect(log.position(FORWARD_POSITION)).toBe(0);
    expect(log.stats().records).toBe(2);
    log.close();
  });

  it('keeps retrying through failures without skipping or repeating a range, then follows new appends', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append(Array.from({ length: 10 }, (_, i) => entry('a', i)));
    const sink = new MemorySink();
    sink.failNext = 4;
    const fwd = new Forwarder(log, sink, options);
    fwd.start();
    await until(() => sink.delivered.length === 10);
    expect(fwd.counters.failures).toBe(4);
    expect(sink.resets).toBe(4); // a fresh producer after each failure
    log.append([entry('a', 11), entry('a', 12)]);
    fwd.notify();
    await until(() => sink.delivered.length === 12);
    expect(sink.delivered.map((r) => r.offset)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(fwd.state).toBe('forwarding');
    await fwd.close();
    expect(fwd.state).toBe('stopped');
    log.close();
  });

  it('a commit whose response was lost is not sent again: the checkpoint decides', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append(Array.from({ length: 9 }, (_, i) => entry('a', i)));
    const sink = new MemorySink();
    sink.loseAckNext = 2;
    const fwd = new Forwarder(log, sink, options);
    fwd.start();
    await until(() => log.position(FORWARD_POSITION) === 9);
    expect(sink.delivered.map((r) => r.offset)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(fwd.counters.skippedByCheckpoint).toBe(6);
    await fwd.close();
    log.close();
  });

  it('resumes after the Kafka checkpoint even when the local position is behind', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append(Array.from({ length: 6 }, (_, i) => entry('a', i)));
    const sink = new MemorySink();
    sink.checkpoint = { logId: log.logId, offset: 4, kafkaOffset: 17 };
    const fwd = new Forwarder(log, sink, options);
    expect(await fwd.connect()).toBe(true);
    expect(log.position(FORWARD_POSITION)).toBe(4);
    // the gateway claims its id at once with a checkpoint of where it stands
    expect(sink.checkpoint).toMatchObject({ logId: log.logId, offset: 4 });
    expect(log.position('checkpoint-kafka-offset')).toBe(sink.checkpoint!.kafkaOffset);
    await fwd.drainOnce();
    expect(sink.delivered.map((r) => r.offset)).toEqual([5, 6]);
    log.close();
  });

  it('ignores a checkpoint written from another commit log', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append([entry('a', 1), entry('a', 2)]);
    const sink = new MemorySink();
    sink.checkpoint = { logId: 'some-other-log', offset: 1000 };
    const fwd = new Forwarder(log, sink, options);
    await fwd.connect();
    expect(log.position(FORWARD_POSITION)).toBe(0);
    expect(await fwd.drainOnce()).toBe(2);
    log.close();
  });

  it('stops forwarding, without retrying, once fenced', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append([entry('a', 1)]);
    const sink = new MemorySink();
    sink.send = async () => {
      throw Object.assign(new Error('There is a newer producer with the same transactionalId which fences the current one'), {
        type: 'PRODUCER_FENCED',
      });
    };
    const fwd = new Forwarder(log, sink, options);
    fwd.start();
    await until(() => fwd.state === 'fenced');
    await new Promise((r) => setTimeout(r, 100));
    // one reconnect to tell a timed-out transaction from a twin, then no more
    expect(sink.connects).toBe(2);
    expect(log.position(FORWARD_POSITION)).toBe(0);
    await fwd.close();
    log.close();
  });

  it('a fence followed by a checkpoint of its own log was a timed-out transaction: forwarding goes on', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append([entry('a', 1), entry('a', 2)]);
    const sink = new MemorySink();
    const fwd = new Forwarder(log, sink, options);
    expect(await fwd.connect()).toBe(true);
    sink.fenceNext = 1;
    fwd.start();
    await until(() => log.position(FORWARD_POSITION) === 2);
    expect(fwd.state).toBe('forwarding');
    expect(sink.delivered.map((r) => r.offset)).toEqual([1, 2]);
    await fwd.close();
    log.close();
  });

  it('a fence followed by a checkpoint from another log is a twin gateway: fenced', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append([entry('a', 1)]);
    const sink = new MemorySink();
    const fwd = new Forwarder(log, sink, options);
    expect(await fwd.connect()).toBe(true);
    sink.fenceNext = 1;
    sink.checkpoint = { logId: 'the-twin', offset: 99 }; // the twin committed after fencing us
    fwd.start();
    await until(() => fwd.state === 'fenced');
    expect(sink.delivered).toEqual([]);
    expect(log.position(FORWARD_POSITION)).toBe(0);
    await fwd.close();
    log.close();
  });

  it('never moves past the end of the log, even when the checkpoint is further', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append([entry('a', 1), entry('a', 2), entry('a', 3)]);
    const sink = new MemorySink();
    // e.g. records 4..10 were forwarded, then lost locally in a power cut with synchronous: normal
    sink.checkpoint = { logId: log.logId, offset: 10 };
    const fwd = new Forwarder(log, sink, options);
    await fwd.connect();
    expect(log.position(FORWARD_POSITION)).toBe(3);
    log.append([entry('a', 4)]); // a new record reuses offset 4: it must still be forwarded
    expect(await fwd.drainOnce()).toBe(1);
    expect(sink.delivered.map((r) => r.offset)).toEqual([4]);
    log.close();
  });

  it('keeps its position when the checkpoint is behind it (no resending)', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append([entry('a', 1), entry('a', 2), entry('a', 3)]);
    log.commitPosition(FORWARD_POSITION, 3);
    const sink = new MemorySink();
    sink.checkpoint = { logId: log.logId, offset: 1 };
    const fwd = new Forwarder(log, sink, options);
    await fwd.connect();
    expect(log.position(FORWARD_POSITION)).toBe(3);
    expect(await fwd.drainOnce()).toBe(0);
    log.close();
  });

  it('limits a transaction by bytes, but always sends at least one record', async () => {
    const log = new CommitLog({ dir: tmp(), synchronous: 'full' });
    log.append([1, 2, 3].map((i) => ({ ...entry('a', i), payload: Buffer.alloc(600) })));
    const sink = new MemorySink();
    const fwd = new Forwarder(log, sink, { ...options, batchMaxBytes: 1000 });
    expect(await fwd.drainOnce()).toBe(1);
    expect(await fwd.drainOnce()).toBe(1);
    log.close();
  });

  it('backoff grows exponentially, is capped, and is jittered', () => {
    expect(backoffDelay(0, 100, 10_000, () => 1)).toBe(100);
    expect(backoffDelay(0, 100, 10_000, () => 0)).toBe(50);
    expect(backoffDelay(3, 100, 10_000, () => 1)).toBe(800);
    expect(backoffDelay(20, 100, 10_000, () => 1)).toBe(10_000);
    expect(backoffDelay(1000, 100, 10_000, () => 0.5)).toBe(7500);
  });
});
