import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import { describeError } from '../errors.js';
import type { LogRecord } from '../log/commit-log.js';
import { backoffDelay } from './backoff.js';
import { isFencedError, type Checkpoint, type RecordSink } from './kafka-sink.js';

/** The forwarder's view of the commit log. */
export interface ForwardSource {
  readonly logId: string;
  readonly lastOffset: number;
  readonly isClosed: boolean;
  readAfter(after: number, limit: number): LogRecord[];
  position(name: string): number;
  commitPosition(name: string, offset: number): void;
  removeThrough(offset: number): number;
  shrink(): void;
  /** The highest offset the log has handed out, read from the database now. */
  highestOffset(): number;
}

export interface ForwarderOptions {
  readonly batchMaxRecords: number;
  readonly batchMaxBytes: number;
  /** Longest a record waits for its transaction to fill before it is committed anyway. */
  readonly commitIntervalMs: number;
  readonly retry: { readonly initialMs: number; readonly maxMs: number };
  readonly logger: Logger;
  /** Called after forwarded records were removed from the log (held appends may now fit). */
  readonly onRemoved?: () => void;
  /** Called after every state change (the worker reports it to the main thread). */
  readonly onStateChange?: (state: ForwarderState) => void;
  /** How often a summary line is logged while Kafka is unreachable or this gateway is fenced. */
  readonly summaryIntervalMs?: number;
  /** Idle poll, a safety net in case a wake-up is missed. */
  readonly idlePollMs?: number;
}

export type ForwarderState = 'stopped' | 'connecting' | 'forwarding' | 'retrying' | 'fenced';

export interface ForwarderCounters {
  forwarded: number;
  transactions: number;
  failures: number;
  /** Log records found already committed in Kafka (by the checkpoint) and so not sent again. */
  skippedByCheckpoint: number;
}

export const FORWARD_POSITION = 'forward';
/** Where in the checkpoint partition this gateway's last checkpoint record was (a read hint). */
export const CHECKPOINT_KAFKA_OFFSET = 'checkpoint-kafka-offset';
const REMOVE_EVERY_RECORDS = 20_000;
const REMOVE_EVERY_MS = 1_000;

/**
 * Reads the commit log in offset order and forwards it in Kafka transactions, each carrying a
 * checkpoint of the last offset it contains. On every (re)connect the sink fences earlier
 * producers and returns the last committed checkpoint; the forwarder resumes right after it,
 * whatever the local position says, so a batch whose commit outcome was unknown (a crash or a
 * lost response) is neither skipped nor sent twice. The local position is advanced after each
 * commit and forwarded records are then removed in bulk. Failures back off exponentially with
 * jitter; the log gets one line per state change plus a periodic summary, never one per attempt.
 */
export class Forwarder {
  readonly counters: ForwarderCounters = { forwarded: 0, transactions: 0, failures: 0, skippedByCheckpoint: 0 };
  private stateValue: ForwarderState = 'stopped';
  private running: Promise<void> | undefined;
  private stopping = false;
  private wake: (() => void) | undefined;
  private stopWake: (() => void) | undefined;
  private wakePending = false;
  private troubleSince = 0;
  private lastSummaryAt = 0;
  private lastError = '';
  private removedThrough = 0;
  private lastRemoveAt = 0;
  private needsShrink = false;
  private suspectTwin = false;
  private lastCommitAt = 0;

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

  get lastErrorMessage(): string {
    return this.lastError;
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
   * Connects (fencing earlier producers), moves the local position to the committed checkpoint
   * of this log, and commits a checkpoint at once, so the gateway's claim on its id is visible.
   * Returns false when the checkpoint shows another gateway forwarding under this id.
   */
  async connect(): Promise<boolean> {
    const hint = this.source.position(CHECKPOINT_KAFKA_OFFSET);
    const checkpoint = await this.sink.connect(hint > 0 ? hint : undefined);
    if (this.suspectTwin && checkpoint && checkpoint.logId !== this.source.logId) return false;
    this.alignTo(checkpoint);
    const position = this.source.position(FORWARD_POSITION);
    const claimed = await this.sink.send([], { logId: this.source.logId, offset: position });
    if (claimed !== undefined) this.source.commitPosition(CHECKPOINT_KAFKA_OFFSET, claimed);
    return true;
  }

  private alignTo(checkpoint: Checkpoint | undefined): void {
    const local = this.source.position(FORWARD_POSITION);
    const { logger } = this.options;
    if (!checkpoint) return;
    if (checkpoint.logId !== this.source.logId) {
      // Written from another log file (this one was recreated, or another gateway uses this id).
      logger.warn(
        { checkpointLogId: checkpoint.logId, logId: this.source.logId, position: local },
        'the checkpoint in Kafka belongs to another commit log: resuming from the local position',
      );
      return;
    }
    if (checkpoint.offset <= local) {
      // The local position only ever advances after Kafka committed, so it is a safe lower bound;
      // a lower checkpoint means Kafka lost committed data or the checkpoint topic was reset.
      // Moving back would send records twice, so the gateway keeps its position and says so.
      if (checkpoint.offset < local) {
        logger.warn(
          { position: local, checkpoint: checkpoint.offset },
          'the checkpoint in Kafka is behind the local position (Kafka lost committed data, or the checkpoint topic was reset): keeping the local position',
        );
      }
      return;
    }
    // Kafka committed records the local position had not caught up with (a crash or a lost
    // commit response): they must not be sent again. But never past the log's own end: if the
    // log lost records after they were forwarded (a power cut with synchronous: normal, or a
    // restored backup), new records reuse those offsets and must still go out.
    const end = this.source.highestOffset();
    const target = Math.min(checkpoint.offset, end);
    if (checkpoint.offset > end) {
      logger.warn(
        { checkpoint: checkpoint.offset, logEnd: end },
        'the commit log ends before its checkpoint in Kafka: records were lost locally after they were forwarded (power cut with storage.synchronous: normal, or a restored backup); continuing from the end of the log',
      );
    } else {
      logger.info({ position: local, checkpoint: checkpoint.offset }, 'resuming after the checkpoint committed in Kafka');
    }
    this.counters.skippedByCheckpoint += Math.max(0, target - local);
    this.source.commitPosition(FORWARD_POSITION, target);
  }

  /**
   * Forwards at most one transaction: read after the forward position, send with its checkpoint,
   * commit the position. Returns the number of records forwarded (0 when the log is drained).
   */
  async drainOnce(): Promise<number> {
    const from = this.source.position(FORWARD_POSITION);
    const batch = this.limitBytes(this.source.readAfter(from, this.options.batchMaxRecords));
    if (batch.length === 0) return 0;
    const last = batch[batch.length - 1]!.offset;
    this.lastCommitAt = Date.now();
    const checkpointKafkaOffset = await this.sink.send(batch, { logId: this.source.logId, offset: last });
    // The transaction (records + checkpoint) is committed: only now may the position move.
    this.source.commitPosition(FORWARD_POSITION, last);
    if (checkpointKafkaOffset !== undefined) this.source.commitPosition(CHECKPOINT_KAFKA_OFFSET, checkpointKafkaOffset);
    this.counters.forwarded += batch.length;
    this.counters.transactions++;
    this.removeForwarded(last, false);
    return batch.length;
  }

  private limitBytes(batch: LogRecord[]): LogRecord[] {
    let bytes = 0;
    for (let i = 0; i < batch.length; i++) {
      bytes += batch[i]!.payload.length + batch[i]!.mqttTopic.length + 64;
      if (bytes > this.options.batchMaxBytes && i > 0) return batch.slice(0, i);
    }
    return batch;
  }

  /**
   * Deletes forwarded records in bulk rather than per batch: one DELETE per second (or per
   * REMOVE_EVERY_RECORDS) costs far less than one per transaction, and the records are in Kafka.
   */
  private removeForwarded(position: number, idle: boolean): void {
    const now = Date.now();
    if (position > this.removedThrough) {
      if (!idle && position - this.removedThrough < REMOVE_EVERY_RECORDS && now - this.lastRemoveAt < REMOVE_EVERY_MS) return;
      this.source.removeThrough(position);
      this.removedThrough = position;
      this.lastRemoveAt = now;
      this.needsShrink = true;
      this.options.onRemoved?.();
    }
    // Drained: give the freed pages back and truncate the WAL, once per drain.
    if (idle && this.needsShrink) {
      this.needsShrink = false;
      this.source.shrink();
    }
  }

  private setState(next: ForwarderState, fields: Record<string, unknown> = {}): void {
    if (next === this.stateValue) return;
    const previous = this.stateValue;
    this.stateValue = next;
    this.options.onStateChange?.(next);
    const { logger } = this.options;
    if (next === 'retrying') {
      logger.warn(
        { ...fields, code: 'EB_ERR_FORWARD_KAFKA', backlog: this.backlog },
        'kafka unreachable: buffering in the commit log and retrying',
      );
    } else if (next === 'fenced') {
      logger.error(
        { ...fields, code: 'EB_ERR_FORWARD_FENCED', backlog: this.backlog },
        'fenced: another gateway started with the same gateway.id and took over its Kafka transactions. ' +
          'This gateway stops forwarding (its log keeps what it acknowledged); give each gateway its own gateway.id and restart',
      );
    } else if (next === 'forwarding' && previous === 'retrying') {
      logger.info({ downForMs: Date.now() - this.troubleSince, backlog: this.backlog }, 'kafka reachable again: draining the backlog');
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
          if (!(await this.connect())) {
            await this.setFenced('the checkpoint in Kafka was written by another gateway with this gateway.id');
            break;
          }
          connected = true;
          this.suspectTwin = false;
        }
        const sent = await this.drainOnce();
        if (this.stateValue !== 'forwarding') this.setState('forwarding');
        attempt = 0;
        if (sent === 0) {
          this.removeForwarded(this.source.position(FORWARD_POSITION), true);
          await this.waitForRecords();
        }
        // Amortise the transaction cost: unless a full batch is waiting, let records gather
        // until commitIntervalMs after the previous transaction began.
        const wait = this.lastCommitAt + this.options.commitIntervalMs - Date.now();
        if (wait > 0 && this.backlog < this.options.batchMaxRecords) await this.sleep(wait, false);
      } catch (err) {
        if (this.stopping || this.source.isClosed) break;
        this.counters.failures++;
        this.lastError = describeError(err);
        connected = false;
        await this.sink.reset();
        if (isFencedError(err)) {
          // Kafka also bumps the producer epoch when a transaction outlives transactionTimeoutMs,
          // so one fence is only a suspicion: reconnect and read the checkpoint. A checkpoint from
          // another log, or a second fence before any commit succeeds, means a twin gateway.
          if (this.suspectTwin) {
            await this.setFenced(this.lastError);
            break;
          }
          this.suspectTwin = true;
          this.options.logger.warn({ err: this.lastError }, 'producer fenced: checking whether another gateway uses this gateway.id');
          continue;
        }
        if (this.stateValue !== 'retrying') {
          this.troubleSince = Date.now();
          this.lastSummaryAt = Date.now();
          this.setState('retrying', { err: this.lastError });
        } else {
          this.logSummary('kafka still unreachable');
        }
        await this.sleep(backoffDelay(attempt++, this.options.retry.initialMs, this.options.retry.maxMs), false);
      }
    }
  }

  private async setFenced(reason: string): Promise<void> {
    this.troubleSince = Date.now();
    this.setState('fenced', { err: reason });
    await this.sink.reset();
    await this.idleWhileFenced();
  }

  /** A fenced gateway must not retry (it would fence the other one in turn): it only reports. */
  private async idleWhileFenced(): Promise<void> {
    this.lastSummaryAt = Date.now();
    while (!this.stopping) {
      await this.sleep(this.options.summaryIntervalMs ?? 60_000, false);
      if (!this.stopping && !this.source.isClosed) this.logSummary('fenced: not forwarding');
    }
  }

  private logSummary(message: string): void {
    const every = this.options.summaryIntervalMs ?? 60_000;
    const now = Date.now();
    if (now - this.lastSummaryAt < every) return;
    this.lastSummaryAt = now;
    this.options.logger.warn(
      { sinceMs: now - this.troubleSince, backlog: this.backlog, failures: this.counters.failures, err: this.lastError },
      message,
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
   * Stops after the transaction in flight (waiting at most `timeoutMs` for it) and closes the
   * sink. A transaction that did not finish is aborted by Kafka (or fenced on the next start),
   * and its records are sent again from the checkpoint.
   */
  async close(timeoutMs = 10_000): Promise<void> {
    this.stopping = true;
    this.stopWake?.();
    if (this.running) {
      await Promise.race([this.running, delay(timeoutMs, undefined, { ref: false })]);
      this.running = undefined;
    }
    await this.sink.close();
    this.stateValue = 'stopped';
  }
}
