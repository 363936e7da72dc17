import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import { describeError } from '../errors.js';
import type { LogRecord } from '../log/commit-log.js';
import { backoffDelay } from './backoff.js';
import type { RecordSink } from './kafka-sink.js';

/** The forwarder's view of the commit log. */
export interface ForwardSource {
  readAfter(after: number, limit: number): LogRecord[];
  position(name: string): number;
  commitPosition(name: string, offset: number): void;
  removeThrough(offset: number): number;
  readonly lastOffset: number;
}

export interface ForwarderOptions {
  readonly batchMaxRecords: number;
  readonly lingerMs: number;
  readonly retry: { readonly initialMs: number; readonly maxMs: number };
  readonly logger: Logger;
  /** How often a summary line is logged while Kafka is unreachable. */
  readonly summaryIntervalMs?: number;
  /** Idle poll, a safety net in case a wake-up is missed. */
  readonly idlePollMs?: number;
}

export type ForwarderState = 'stopped' | 'connecting' | 'forwarding' | 'retrying';

export interface ForwarderCounters {
  forwarded: number;
  batches: number;
  failures: number;
}

export const FORWARD_POSITION = 'forward';
const REMOVE_EVERY_RECORDS = 50_000;
const REMOVE_EVERY_MS = 1_000;

/**
 * Reads the commit log in offset order and hands batches to the sink. The forward position is
 * committed only after the sink resolved (Kafka acknowledged with acks=all), and the forwarded
 * records are deleted in the same SQLite transaction; a failed batch is retried from the same
 * position, so nothing is skipped. Failures back off exponentially with jitter, and the log gets
 * one line per state change plus a periodic summary, never one line per attempt.
 */
export class Forwarder {
  readonly counters: ForwarderCounters = { forwarded: 0, batches: 0, failures: 0 };
  private stateValue: ForwarderState = 'stopped';
  private running: Promise<void> | undefined;
  private stopping = false;
  private wake: (() => void) | undefined;
  private stopWake: (() => void) | undefined;
  private wakePending = false;
  private unreachableSince = 0;
  private lastSummaryAt = 0;
  private lastError = '';
  private removedThrough = 0;
  private lastRemoveAt = 0;

  constructor(
    private readonly source: ForwardSource,
    private readonly sink: RecordSink,
    private readonly options: ForwarderOptions,
  ) {}

  get state(): ForwarderState {
    return this.stateValue;
  }

  get position(): number {
    return this.source.position(FORWARD_POSITION);
  }

  get backlog(): number {
    return Math.max(0, this.source.lastOffset - this.position);
  }

  start(): void {
    if (this.running) return;
    this.stopping = false;
    this.running = this.run();
  }

  /** Tells the forwarder that new records were committed. Cheap; call it after every group commit. */
  notify(): void {
    this.wakePending = true;
    this.wake?.();
  }

  /**
   * Forwards at most one batch: read after the forward position, send, commit the position.
   * Returns the number of records forwarded (0 when the log is drained).
   */
  async drainOnce(): Promise<number> {
    const from = this.source.position(FORWARD_POSITION);
    const batch = this.source.readAfter(from, this.options.batchMaxRecords);
    if (batch.length === 0) return 0;
    await this.sink.send(batch);
    // Kafka has acknowledged every record of the batch: only now may the position move past them.
    const last = batch[batch.length - 1]!.offset;
    this.source.commitPosition(FORWARD_POSITION, last);
    this.counters.forwarded += batch.length;
    this.counters.batches++;
    this.removeForwarded(last, false);
    return batch.length;
  }

  /**
   * Deletes forwarded records in bulk rather than per batch: one DELETE per second (or per
   * REMOVE_EVERY_RECORDS) costs far less than one per batch, and the records are already in Kafka.
   */
  private removeForwarded(position: number, force: boolean): void {
    const now = Date.now();
    if (position <= this.removedThrough) return;
    if (!force && position - this.removedThrough < REMOVE_EVERY_RECORDS && now - this.lastRemoveAt < REMOVE_EVERY_MS) return;
    this.source.removeThrough(position);
    this.removedThrough = position;
    this.lastRemoveAt = now;
  }

  private setState(next: ForwarderState, fields: Record<string, unknown> = {}): void {
    if (next === this.stateValue) return;
    const previous = this.stateValue;
    this.stateValue = next;
    const { logger } = this.options;
    if (next === 'retrying') {
      logger.warn({ ...fields, backlog: this.backlog }, 'kafka unreachable: buffering in the commit log and retrying');
    } else if (next === 'forwarding' && previous === 'retrying') {
      const downForMs = Date.now() - this.unreachableSince;
      logger.info({ downForMs, backlog: this.backlog }, 'kafka reachable again: draining the backlog');
    } else if (next === 'forwarding') {
      logger.info({ backlog: this.backlog }, 'forwarding to kafka');
    }
  }

  private async run(): Promise<void> {
    let attempt = 0;
    let connected = false;
    this.setState('connecting');
    while (!this.stopping) {
      try {
        if (!connected) {
          await this.sink.connect();
          connected = true;
        }
        const sent = await this.drainOnce();
        if (this.stateValue !== 'forwarding') this.setState('forwarding');
        attempt = 0;
        if (sent === 0) {
          this.removeForwarded(this.source.position(FORWARD_POSITION), true);
          await this.waitForRecords();
          // Let a burst accumulate into one batch rather than sending many small ones.
          if (this.options.lingerMs > 0 && this.backlog < this.options.batchMaxRecords) {
            await delay(this.options.lingerMs);
          }
        }
      } catch (err) {
        if (this.stopping) break;
        this.counters.failures++;
        this.lastError = describeError(err);
        if (this.stateValue !== 'retrying') {
          this.unreachableSince = Date.now();
          this.lastSummaryAt = Date.now();
          this.setState('retrying', { err: this.lastError });
        } else {
          this.logSummary();
        }
        // A fresh producer after any failure: kafkajs can leave one in an unusable state.
        connected = false;
        await this.sink.reset();
        await this.sleep(backoffDelay(attempt++, this.options.retry.initialMs, this.options.retry.maxMs), false);
      }
    }
  }

  private logSummary(): void {
    const every = this.options.summaryIntervalMs ?? 60_000;
    const now = Date.now();
    if (now - this.lastSummaryAt < every) return;
    this.lastSummaryAt = now;
    this.options.logger.warn(
      { downForMs: now - this.unreachableSince, backlog: this.backlog, failures: this.counters.failures, err: this.lastError },
      'kafka still unreachable',
    );
  }

  private waitForRecords(): Promise<void> {
    if (this.wakePending || this.source.lastOffset > this.position) {
      this.wakePending = false;
      return Promise.resolve();
    }
    return this.sleep(this.options.idlePollMs ?? 1000, true);
  }

  /** Sleeps up to `ms`; close() always ends it early, notify() only when `wakeOnRecords`. */
  private sleep(ms: number, wakeOnRecords: boolean): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.wake = undefined;
        this.stopWake = undefined;
        if (wakeOnRecords) this.wakePending = false;
        resolve();
      };
      const timer = setTimeout(done, ms);
      timer.unref();
      this.stopWake = done;
      if (wakeOnRecords) this.wake = done;
    });
  }

  /**
   * Stops after the batch in flight (waiting at most `timeoutMs` for it) and closes the sink.
   * A batch that did not finish is sent again on the next start, from the stored position.
   */
  async close(timeoutMs = 10_000): Promise<void> {
    this.stopping = true;
    this.stopWake?.();
    if (this.running) {
      const timer = delay(timeoutMs, undefined, { ref: false });
      await Promise.race([this.running, timer]);
      this.running = undefined;
    }
    await this.sink.close();
    this.stateValue = 'stopped';
  }
}
