import { setImmediate as yieldToLoop, setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import { EdgebridgeError, describeError } from '../errors.js';
import type { LogRecord } from '../log/commit-log.js';
import { epochIndexOf, historyThrough, type EpochMark, type LogEpoch } from '../log/epochs.js';
import type { LogBatch } from '../log/log-reader.js';
import { backoffDelay } from './backoff.js';
import { kafkaHistory, resumePosition, type ResumeDecision } from './resume.js';
import {
  CHECKPOINT_IN_GROUP,
  RecordRejectedError,
  authenticationFailure,
  authorizationFailure,
  deniedTopics,
  explainAuthenticationFailure,
  isFencedError,
  kafkaErrorTypes,
  rejectionType,
  type Checkpoint,
  type DeadLetter,
  type ForwardBatch,
  type KafkaIdentity,
  type RecordSink,
} from './sink.js';

/** The forwarder's view of the commit log (LogReader is the real one). */
export interface ForwardSource {
  readonly logId: string;
  readBatch(after: number, maxRecords: number, maxBytes: number): LogBatch;
  /** The highest offset handed out. */
  end(): number;
  position(): number;
  commitPosition(offset: number): void;
  checkpointHint(): number;
  commitCheckpointHint(kafkaOffset: number): void;
  epochs(): LogEpoch[];
  /** Makes every record appended so far durable (before they are forwarded). */
  makeDurable(): void;
  removeThrough(offset: number): number;
  /** One step of giving space back; true while there is more. */
  shrink(): boolean;
}

export const FORWARDER_STATES = ['stopped', 'connecting', 'forwarding', 'retrying', 'unauthenticated', 'unauthorized', 'log-error', 'fenced'] as const;

/**
 * `retrying`: Kafka unreachable or failing. `unauthenticated`: Kafka refused the SASL login, or
 * the TLS connection failed (the broker's certificate cannot be verified). `unauthorized`: Kafka
 * refuses this gateway for lack of ACLs. `log-error`: the commit log cannot be read or written.
 * `fenced`: another gateway took over this gateway.id; forwarding stopped for good.
 */
export type ForwarderState = (typeof FORWARDER_STATES)[number];

export interface ForwarderCounters {
  forwarded: number;
  transactions: number;
  failures: number;
  /** Log records found already committed in Kafka (by the checkpoint) and so not sent again. */
  skippedByCheckpoint: number;
  /** Records Kafka refused for good, written to the dead-letter topic. */
  deadLettered: number;
  /** Records Kafka refused for good, dropped (no dead-letter topic, or it refused them too). */
  droppedRejected: number;
  /** Transactions that failed (aborted, or their outcome unknown: resumed from the checkpoint). */
  transactionsFailed: number;
  /**
   * Records dropped because their MQTT 5 message expiry passed before they went into a Kafka
   * transaction (never sent late); their offsets are covered by that transaction's checkpoint.
   */
  expired: number;
}

export function zeroCounters(): ForwarderCounters {
  return { forwarded: 0, transactions: 0, failures: 0, skippedByCheckpoint: 0, deadLettered: 0, droppedRejected: 0, transactionsFailed: 0, expired: 0 };
}

/** Whether `record` has a message expiry and it has passed at `now`. */
export function isExpired(record: LogRecord, now: number): boolean {
  return record.expiresAt !== undefined && record.expiresAt <= now;
}

/** One committed transaction that carried records: what the batch histograms observe. */
export interface ForwardedBatch {
  readonly records: number;
  /** Payload bytes of its records. */
  readonly bytes: number;
  /** From reading the batch from the log to Kafka's commit of its transaction. */
  readonly seconds: number;
}

export function addCounters(a: ForwarderCounters, b: ForwarderCounters): ForwarderCounters {
  const sum = zeroCounters();
  for (const k of Object.keys(sum) as (keyof ForwarderCounters)[]) sum[k] = a[k] + b[k];
  return sum;
}

/**
 * Kafka error types of a cluster that answers but cannot take writes now: a partition without a
 * leader, fewer in-sync replicas than min.insync.replicas, no transaction coordinator. Brokers
 * down, or a cluster without its controller quorum (it cannot elect leaders or shrink an ISR).
 */
const UNAVAILABLE_TYPES: ReadonlySet<string> = new Set([
  'LEADER_NOT_AVAILABLE',
  'NOT_LEADER_OR_FOLLOWER',
  'NOT_LEADER_FOR_PARTITION',
  'NOT_ENOUGH_REPLICAS',
  'NOT_ENOUGH_REPLICAS_AFTER_APPEND',
  'COORDINATOR_NOT_AVAILABLE',
  'GROUP_COORDINATOR_NOT_AVAILABLE',
  'COORDINATOR_LOAD_IN_PROGRESS',
  'GROUP_LOAD_IN_PROGRESS',
  'NOT_COORDINATOR',
  'NOT_COORDINATOR_FOR_GROUP',
  'REQUEST_TIMED_OUT',
]);

const CANNOT_WRITE =
  'kafka answers but cannot take writes (a partition without a leader, too few in-sync replicas, or no coordinator: brokers down, or the cluster without its controller quorum)';

const STALLED = 'kafka takes requests but completes none (the network to it is cut, or the cluster cannot take writes: brokers down, or no controller quorum)';

/** What a failed Kafka step says of the cluster, for the `retrying` line and its summaries. */
function kafkaTrouble(err: unknown): string {
  if (err instanceof EdgebridgeError && err.code === 'EB_ERR_CHECKPOINT_NEWER') return err.message;
  return kafkaErrorTypes(err).some((t) => UNAVAILABLE_TYPES.has(t)) ? CANNOT_WRITE : 'kafka unreachable';
}

export interface ForwarderOptions {
  readonly batchMaxRecords: number;
  readonly batchMaxBytes: number;
  /**
   * Shortest time between the starts of two transactions while records flow at rate: the cost of
   * a commit is amortised over at least this long (unless a full batch waits).
   */
  readonly commitIntervalMs: number;
  /**
   * Longest a record waits for its transaction while records trickle (fewer than
   * commitMinRecords waiting); at least commitIntervalMs. Default: commitIntervalMs.
   */
  readonly maxCommitDelayMs?: number;
  /** Records waiting that make a transaction worth committing before maxCommitDelayMs. Default 0. */
  readonly commitMinRecords?: number;
  readonly retry: { readonly initialMs: number; readonly maxMs: number };
  readonly logger: Logger;
  /** Records Kafka refuses for good go to the dead-letter topic (true) or are dropped (false). */
  readonly deadLetter: boolean;
  /** What to grant when Kafka says this gateway is not authorized (shown in the log). */
  readonly requiredAcls?: string;
  /** Of those, the ones of the resource Kafka refused (its error type; the topics it named). */
  readonly missingAcls?: (denied: string, topics: readonly string[]) => string | undefined;
  /** Who this gateway is to Kafka (TLS, CA file, SASL user), to say what to check when a login fails. */
  readonly kafkaIdentity?: KafkaIdentity;
  /** Called after forwarded records were removed from the log (held appends may now fit). */
  readonly onRemoved?: () => void;
  /** Called after every state change (the worker reports it to the main thread). */
  readonly onStateChange?: (state: ForwarderState) => void;
  /**
   * Called after every committed transaction with what it added to the counters (and, when it
   * carried records, the batch), and after every failed one.
   */
  readonly onProgress?: (delta: ForwarderCounters, batch?: ForwardedBatch) => void;
  /** How often a summary line is logged while not forwarding. */
  readonly summaryIntervalMs?: number;
  /** Idle poll, a safety net in case a wake-up is missed. */
  readonly idlePollMs?: number;
  /**
   * A connect or transaction still not done after this long is reported (state `retrying`, one
   * line) while kafkajs goes on retrying it: a cluster that lost its quorum may leave a request
   * unanswered for several request timeouts. Default 60 s (the gateway: twice kafka.requestTimeoutMs,
   * as a step is several requests in a row).
   */
  readonly stallMs?: number;
  readonly clock?: () => number;
  /** Backoff jitter; the fault simulator passes its seeded generator. */
  readonly random?: () => number;
}

/** What one step of the forwarding loop did, and so what the loop does next. */
export type StepOutcome =
  /** A transaction committed `records` records (and maybe refused ones): go on. */
  | { readonly kind: 'forwarded'; readonly records: number }
  /** The position moved over offsets whose records are gone (expired, dropped): go on. */
  | { readonly kind: 'skipped' }
  /** Nothing to forward: wait for a wake-up. */
  | { readonly kind: 'idle' }
  /** Something failed: wait `delayMs`, then step again. */
  | { readonly kind: 'retry'; readonly delayMs: number }
  /** Another gateway took over this gateway.id: stop. */
  | { readonly kind: 'fenced' };

const CLOCK_HINT =
  "Kafka refuses the timestamps this gateway sets now: its clock is probably far from the brokers' (log.message.timestamp.after.max.ms, default 1 h); fix the clock (NTP)";
const REMOVE_EVERY_RECORDS = 20_000;
const REMOVE_EVERY_MS = 1_000;

function isLogError(err: unknown): err is EdgebridgeError {
  return err instanceof EdgebridgeError && err.code.startsWith('EB_ERR_LOG_');
}

/**
 * Reads the commit log in offset order and forwards it in Kafka transactions, each carrying a
 * checkpoint of the last offset it contains (Kafka Connect's exactly-once source pattern). On
 * every (re)connect the sink fences earlier producers and returns the last committed checkpoint;
 * the forwarder resumes where the checkpoint and the log say (resume.ts), so a batch whose commit
 * outcome was unknown (a crash or a lost response) is neither skipped nor sent twice.
 *
 * The loop is a sequence of steps (`step()`), each of which either makes progress or says how
 * long to wait: it cannot spin. Failures are told apart: Kafka unreachable (retry with backoff,
 * new producer), missing ACLs (say which), fenced (stop), a record Kafka refuses for good (isolate
 * it, then dead-letter or drop it), and the log itself failing (its own state; Kafka untouched).
 */
export class Forwarder {
  readonly counters: ForwarderCounters = zeroCounters();
  private stateValue: ForwarderState = 'stopped';
  private running: Promise<void> | undefined;
  private stopping = false;
  private connected = false;
  private wake: (() => void) | undefined;
  private stopWake: (() => void) | undefined;
  private wakePending = false;
  private troubleSince = 0;
  private lastSummaryAt = 0;
  private lastError = '';
  private attempt = 0;
  private suspectTwin = false;
  /** This forwarder has committed its claim at least once (see failed(): fences). */
  private claimed = false;
  private lastCommitAt = 0;
  /** When the oldest record not yet in a transaction was announced (notify); undefined: none since the last one began. */
  private backlogSince: number | undefined;
  /** Kafka has every record up to here (valid once connected). */
  private positionValue = 0;
  /** What the log has stored as the position (lags positionValue while storing fails). */
  private storedPosition = 0;
  private hint: number | undefined;
  private knownEnd = 0;
  private epochs: LogEpoch[] = [];
  /** How far Kafka has each epoch's records: from the checkpoint read at connect, then our commits. */
  private history: EpochMark[] = [];
  private removedThrough = 0;
  private lastRemoveAt = 0;
  private needsShrink = false;
  /** Records per attempt: halved while a refused record is being isolated. */
  private limit: number;
  private isolateThrough = 0;
  private attempted: { first: number; last: number; count: number } | undefined;
  private refused: { offset: number; reason: string; deadLetterRefused: boolean } | undefined;
  private lastRefusalLogAt = 0;
  private refusalsNotLogged = 0;
  private lastExpiredLogAt = -Infinity;
  private expiredNotLogged = 0;
  private readonly clock: () => number;

  constructor(
    private readonly source: ForwardSource,
    private readonly sink: RecordSink,
    private readonly options: ForwarderOptions,
  ) {
    this.limit = options.batchMaxRecords;
    this.clock = options.clock ?? Date.now;
  }

  get state(): ForwarderState {
    return this.stateValue;
  }

  /** Kafka has every record up to this offset. */
  get position(): number {
    return this.connected ? this.positionValue : Math.max(this.positionValue, this.storedPosition);
  }

  get backlog(): number {
    return Math.max(0, this.knownEnd - this.position);
  }

  get lastErrorMessage(): string {
    return this.lastError;
  }

  start(): void {
    if (this.running) return;
    this.stopping = false;
    this.running = this.run();
  }

  /** Tells the forwarder that records up to `lastOffset` were committed. Cheap; call it after every group commit. */
  notify(lastOffset = 0): void {
    if (lastOffset > this.knownEnd) this.knownEnd = lastOffset;
    this.backlogSince ??= this.clock();
    this.wakePending = true;
    this.wake?.();
  }

  /** Runs `fn` against the log; whatever it throws is a log error, never a Kafka one. */
  private fromLog<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw isLogError(err) ? err : new EdgebridgeError('EB_ERR_LOG_READ', describeError(err), { cause: err });
    }
  }

  /**
   * Connects (fencing earlier producers), decides where to resume from the committed checkpoint
   * and the log, and commits a checkpoint at once, so the gateway's claim on its id is visible.
   * Returns false when the checkpoint shows another gateway forwarding under this id.
   */
  async connect(): Promise<boolean> {
    const hint = this.hint ?? this.fromLog(() => this.source.checkpointHint());
    const { checkpoint, foreignClaim, legacy, groupLost } = await this.sink.connect({
      ...(hint > 0 ? { hint } : {}),
      checking: this.suspectTwin,
      migrated: hint === CHECKPOINT_IN_GROUP,
    });
    // Evidence of a twin: since this gateway last wrote under its id, another one claimed it.
    // Only the order counts (not whose checkpoint is latest): of two twins checking on each
    // other, the one whose claim came last finds none after its own and goes on.
    if (this.suspectTwin && foreignClaim) return false;
    const { stored, epochs, end } = this.fromLog(() => ({
      stored: this.source.position(),
      epochs: this.source.epochs(),
      end: this.source.end(),
    }));
    this.epochs = epochs;
    this.storedPosition = stored;
    this.knownEnd = Math.max(this.knownEnd, end);
    const decision = resumePosition(checkpoint, { logId: this.source.logId, position: stored, epochs, end });
    this.explain(decision, checkpoint, stored, end);
    if (groupLost) {
      this.options.logger.warn(
        { position: decision.position, code: 'EB_ERR_CHECKPOINT_GROUP_EMPTY' },
        "the gateway's checkpoint group has no offset in Kafka (it expired after the brokers' offsets.retention.minutes, the group or the checkpoint topic was deleted, or gateway.id changed): resuming from the local position; a transaction in doubt when the checkpoint was lost may reach Kafka twice",
      );
    }
    if (legacy) {
      this.options.logger.info(
        { checkpoint: checkpoint?.offset, checkpointRecord: checkpoint?.kafkaOffset },
        'read the checkpoint from a record in the checkpoint topic (written by an earlier version); from now on it is committed in the checkpoint group',
      );
    }
    this.positionValue = decision.position;
    this.history = checkpoint && checkpoint.logId === this.source.logId ? kafkaHistory(checkpoint, epochs) : [];
    this.counters.skippedByCheckpoint += decision.skipped;
    const claim = this.checkpointAt(this.positionValue);
    const claimed = await this.sink.send({ records: [], deadLetters: [] }, claim);
    if (claimed !== undefined) this.hint = claimed;
    if (claim.history) this.history = [...claim.history];
    this.connected = true;
    this.claimed = true;
    this.suspectTwin = false;
    this.storePosition();
    return true;
  }

  private explain(decision: ResumeDecision, checkpoint: Checkpoint | undefined, stored: number, end: number): void {
    const { logger } = this.options;
    const fields = { position: decision.position, stored, checkpoint: checkpoint?.offset, checkpointEpoch: checkpoint?.epoch, logEnd: end };
    switch (decision.kind) {
      case 'other-log':
        // Written from another log file (this one was recreated, or another gateway uses this id).
        logger.warn(
          { ...fields, checkpointLogId: checkpoint?.logId, logId: this.source.logId },
          'the checkpoint in Kafka belongs to another commit log: resuming from the local position',
        );
        break;
      case 'checkpoint-behind':
        logger.warn(fields, 'the checkpoint in Kafka is behind the local position (Kafka lost committed data, or the checkpoint topic was reset): keeping the local position');
        break;
      case 'tail-lost':
        logger.warn(
          { ...fields, code: 'EB_ERR_LOG_TAIL_LOST' },
          'the commit log lost records after they were forwarded (a restored backup, or a file system that lost writes); records written since are forwarded under a new epoch',
        );
        break;
      case 'restored':
        logger.warn(
          { ...fields, code: 'EB_ERR_LOG_TAIL_LOST' },
          'the commit log was rolled back behind its checkpoint in Kafka (a restored backup): everything it kept from before was forwarded already; records written since are forwarded',
        );
        break;
      case 'diverged':
        logger.error(
          { ...fields, code: 'EB_ERR_LOG_DIVERGED' },
          'the commit log shares no epoch with what Kafka holds (a backup older than the 16 epochs a checkpoint remembers was restored): forwarding from the local position, records after it may reach Kafka twice',
        );
        break;
      case 'checkpoint':
        if (decision.skipped > 0) logger.info(fields, 'resuming after the checkpoint committed in Kafka');
        break;
      case 'fresh':
        break;
    }
  }

  /**
   * The checkpoint for a transaction ending at `offset`: its epoch, and how far Kafka has each
   * epoch once it commits (what it had, however far back a restore took the log, is kept).
   */
  private checkpointAt(offset: number): Checkpoint {
    const epoch = this.epochs[epochIndexOf(this.epochs, offset)];
    if (epoch === undefined) return { logId: this.source.logId, offset };
    return { logId: this.source.logId, offset, epoch: epoch.id, history: historyThrough(this.history, this.epochs, offset) };
  }

  /**
   * One step of the loop: connect if needed, then forward at most one transaction. Never throws;
   * failures become a `retry` (or `fenced`) outcome.
   */
  async step(): Promise<StepOutcome> {
    if (this.stateValue === 'stopped') this.setState('connecting');
    const stalled = setTimeout(() => this.stalled(), this.options.stallMs ?? 60_000);
    stalled.unref();
    try {
      if (!this.connected) {
        if (!(await this.connect())) {
          await this.enterFenced('the checkpoint in Kafka was written by another gateway with this gateway.id');
          return { kind: 'fenced' };
        }
      }
      const outcome = await this.forwardOnce();
      this.attempt = 0;
      if (this.stateValue !== 'forwarding') this.setState('forwarding');
      return outcome;
    } catch (err) {
      return this.failed(err);
    } finally {
      clearTimeout(stalled);
    }
  }

  /**
   * A step has gone on for stallMs without completing: said once, while kafkajs goes on waiting.
   * The cause cannot be told from here (a network cut and a cluster without its quorum look
   * alike to a client), so the line names both; the error that ends the step goes into the
   * summaries. Not counted as a failure: the step may yet succeed.
   */
  private stalled(): void {
    if (this.stopping || (this.stateValue !== 'forwarding' && this.stateValue !== 'connecting')) return; // else already reported as what it is
    this.lastError = `kafka has completed no request of this ${this.connected ? 'transaction' : 'connect'} for ${this.options.stallMs ?? 60_000} ms (still waiting)`;
    this.trouble('retrying', { err: this.lastError, why: STALLED }, 'kafka still unreachable');
  }

  private async forwardOnce(): Promise<StepOutcome> {
    if (this.storedPosition < this.positionValue) this.storePosition(); // a store that failed before
    this.wakePending = false;
    const from = this.positionValue;
    const readAt = performance.now();
    const { records, end } = this.fromLog(() => this.source.readBatch(from, this.limit, this.options.batchMaxBytes));
    if (end > this.knownEnd) this.knownEnd = end;
    if (records.length === 0) {
      if (end <= from) {
        this.housekeep();
        return { kind: 'idle' };
      }
      // Offsets after the position were handed out but their records are gone (storage.maxAge,
      // overflow: drop-oldest, compaction): move over them with a checkpoint-only transaction,
      // so that neither the position nor the checkpoint waits for records that will not come.
      this.attempted = undefined;
      this.refused = undefined; // an isolated record that expired meanwhile is gone, not refused
      await this.commit({ records: [], deadLetters: [] }, end);
      return { kind: 'skipped' };
    }
    let batch: ForwardBatch = { records, deadLetters: [] };
    let refusedRecord: LogRecord | undefined;
    const refused = this.refused;
    if (refused !== undefined) {
      this.refused = undefined;
      if (records[0]!.offset === refused.offset) {
        // The record Kafka refuses, isolated: it alone, to the dead-letter topic or nowhere.
        refusedRecord = records[0]!;
        const deadLetters: DeadLetter[] =
          this.options.deadLetter && !refused.deadLetterRefused ? [{ record: refusedRecord, reason: refused.reason }] : [];
        batch = { records: [], deadLetters };
        this.refused = refused; // kept until committed, in case the dead-letter topic refuses it too
      }
    }
    const considered = refusedRecord ? [refusedRecord] : records;
    const last = considered[considered.length - 1]!.offset;
    this.attempted = { first: considered[0]!.offset, last, count: considered.length };
    // MQTT 5 message expiry [MQTT-3.3.2-5], decided now that the batch is built: an expired record is left out
    // (never sent late) and its offset is covered by this transaction's checkpoint like the
    // others, so the drop is exactly-once too. A batch whose records all expired commits the
    // checkpoint alone: the position moves (and the log is trimmed) without a busy loop. An
    // expired record refused by Kafka is dropped as expired, not dead-lettered.
    const now = this.clock();
    let expired = 0;
    if (refusedRecord !== undefined) {
      if (isExpired(refusedRecord, now)) {
        expired = 1;
        batch = { records: [], deadLetters: [] };
      }
    } else {
      const live = batch.records.filter((r) => !isExpired(r, now));
      expired = batch.records.length - live.length;
      if (expired > 0) batch = { records: live, deadLetters: batch.deadLetters };
    }
    const refusedDropped = refusedRecord !== undefined && expired === 0 && batch.deadLetters.length === 0;
    // With storage.synchronous: normal, what Kafka is about to have must first be on disk here:
    // a power cut must never take records that were forwarded (or their dedup keys).
    this.fromLog(() => this.source.makeDurable());
    await this.commit(batch, last, refusedDropped, readAt, expired);
    if (refusedRecord) {
      this.refused = undefined;
      if (expired === 0) this.reportRefused(refusedRecord, refused!.reason, batch.deadLetters.length > 0);
    }
    if (expired > 0) this.reportExpired(expired);
    if (this.limit < this.options.batchMaxRecords && this.positionValue >= this.isolateThrough) this.limit = this.options.batchMaxRecords;
    if (batch.records.length === 0 && batch.deadLetters.length === 0) return { kind: 'skipped' };
    return { kind: 'forwarded', records: batch.records.length };
  }

  /**
   * Sends one transaction ending at `last`; once Kafka committed it, moves the position. `expired`:
   * records of it left out for their message expiry (counted only once the checkpoint is committed).
   */
  private async commit(batch: ForwardBatch, last: number, dropsRefused = false, readAt?: number, expired = 0): Promise<void> {
    this.lastCommitAt = this.clock();
    const announcedAtStart = this.knownEnd;
    const checkpoint = this.checkpointAt(last);
    let kafkaOffset: number | undefined;
    try {
      kafkaOffset = await this.sink.send(batch, checkpoint);
    } catch (err) {
      this.counters.transactionsFailed++;
      this.options.onProgress?.({ ...zeroCounters(), transactionsFailed: 1 });
      throw err;
    }
    // The transaction (records + checkpoint) is committed: only now may the position move.
    this.positionValue = last;
    // Records announced while it was in flight count from its start (linger()); records it left
    // out (its batch was full by bytes, or cut down to isolate a refused record) keep the time
    // they were first announced, as they do after a failed transaction.
    if (last >= announcedAtStart) this.backlogSince = undefined;
    else this.backlogSince ??= this.lastCommitAt;
    if (checkpoint.history) this.history = [...checkpoint.history];
    if (kafkaOffset !== undefined) this.hint = kafkaOffset;
    const delta = zeroCounters();
    delta.forwarded = batch.records.length;
    delta.transactions = 1;
    delta.deadLettered = batch.deadLetters.length;
    if (dropsRefused) delta.droppedRejected = 1;
    delta.expired = expired;
    for (const k of Object.keys(delta) as (keyof ForwarderCounters)[]) this.counters[k] += delta[k];
    // The state first: whoever sees the records counted must not see a state from before them.
    // Not out of log-error: the log's own steps below may fail again, and step() says when the
    // log works again (else the state and its log lines flap with every batch).
    if (this.stateValue !== 'forwarding' && this.stateValue !== 'log-error') this.setState('forwarding');
    let bytes = 0;
    for (const r of batch.records) bytes += r.payload.length;
    this.options.onProgress?.(
      delta,
      batch.records.length > 0 && readAt !== undefined ? { records: batch.records.length, bytes, seconds: (performance.now() - readAt) / 1000 } : undefined,
    );
    this.storePosition();
    this.removeForwarded(false);
  }

  /** Stores the position (and the checkpoint hint) in the log; Kafka already has the records. */
  private storePosition(): void {
    const position = this.positionValue;
    this.fromLog(() => {
      if (this.storedPosition !== position) this.source.commitPosition(position);
      if (this.hint !== undefined) this.source.commitCheckpointHint(this.hint);
    });
    this.storedPosition = position;
  }

  private reportRefused(record: LogRecord, reason: string, deadLettered: boolean): void {
    const now = this.clock();
    if (now - this.lastRefusalLogAt < (this.options.summaryIntervalMs ?? 60_000)) {
      this.refusalsNotLogged++;
      return;
    }
    this.lastRefusalLogAt = now;
    this.options.logger.error(
      {
        code: 'EB_ERR_FORWARD_REJECTED',
        reason,
        topic: record.kafkaTopic,
        deviceId: record.deviceId,
        offset: record.offset,
        payloadBytes: record.payload.length,
        action: deadLettered ? 'dead-letter' : 'drop',
        notLoggedBefore: this.refusalsNotLogged,
        deadLettered: this.counters.deadLettered,
        dropped: this.counters.droppedRejected,
      },
      deadLettered
        ? 'kafka refuses a record for good: written to the dead-letter topic instead (further ones are counted, logged at most once per summary interval)'
        : 'kafka refuses a record for good: dropped and counted (no dead-letter topic, or it refuses the record too)',
    );
    this.refusalsNotLogged = 0;
  }

  /** One line a minute at most for records dropped at their message expiry; the rest are counted. */
  private reportExpired(count: number): void {
    const now = this.clock();
    if (now - this.lastExpiredLogAt < 60_000) {
      this.expiredNotLogged += count;
      return;
    }
    this.lastExpiredLogAt = now;
    this.options.logger.warn(
      { dropped: count + this.expiredNotLogged, total: this.counters.expired },
      'dropped records whose MQTT 5 message expiry passed before they could be forwarded (never sent late; counted in recordsExpired, logged at most once a minute)',
    );
    this.expiredNotLogged = 0;
  }

  /**
   * Deletes forwarded records in bulk rather than per batch: one DELETE per second (or per
   * REMOVE_EVERY_RECORDS) costs far less than one per transaction, and the records are in Kafka.
   * Only through the stored position: a crash must find its records where the position says.
   */
  private removeForwarded(idle: boolean): void {
    const now = this.clock();
    const through = this.storedPosition;
    if (through <= this.removedThrough) return;
    if (!idle && through - this.removedThrough < REMOVE_EVERY_RECORDS && now - this.lastRemoveAt < REMOVE_EVERY_MS) return;
    this.fromLog(() => this.source.removeThrough(through));
    this.removedThrough = through;
    this.lastRemoveAt = now;
    this.needsShrink = true;
    this.options.onRemoved?.();
  }

  /** When drained: remove what was forwarded, then give space back, one short step per idle turn. */
  private housekeep(): void {
    this.removeForwarded(true);
    if (this.needsShrink) {
      this.needsShrink = this.fromLog(() => this.source.shrink());
      if (this.needsShrink) this.wakePending = true; // more to give back: come back soon
    }
  }

  /** Retry after the next delay of capped exponential backoff with jitter. */
  private backoff(): StepOutcome {
    return { kind: 'retry', delayMs: backoffDelay(this.attempt++, this.options.retry.initialMs, this.options.retry.maxMs, this.options.random) };
  }

  private async failed(err: unknown): Promise<StepOutcome> {
    if (this.stopping) return { kind: 'idle' };
    this.counters.failures++;
    this.lastError = describeError(err);
    if (isLogError(err)) {
      // The log, not Kafka: the producer and its transaction state are fine; retry the log.
      this.trouble('log-error', { err: this.lastError, code: err.code }, 'commit log still failing');
      return this.backoff();
    }
    if (err instanceof RecordRejectedError) return this.isolate(err);
    this.connected = false;
    await this.sink.reset();
    const unauthenticated = authenticationFailure(err);
    if (unauthenticated !== undefined) {
      // Wrong credentials or an untrusted broker: say which key to fix, keep buffering, and
      // retry (credentials created on the brokers later are picked up without a restart).
      const detail = this.lastError;
      this.lastError = explainAuthenticationFailure(unauthenticated, this.options.kafkaIdentity ?? { tls: false });
      this.trouble(
        'unauthenticated',
        { err: detail, code: unauthenticated.kind === 'sasl' ? 'EB_ERR_FORWARD_AUTHENTICATION' : 'EB_ERR_FORWARD_TLS', reason: unauthenticated.code },
        'kafka still refuses the login of this gateway (SASL/TLS)',
      );
      return this.backoff();
    }
    if (isFencedError(err)) {
      // A fence is only a suspicion: Kafka also bumps the producer epoch when a transaction
      // outlives transactionTimeoutMs, and a twin checking on us fences us too. Only evidence
      // decides: on the next connect, a latest checkpoint written from another log means a twin
      // took over, and this gateway stops. Until this gateway has claimed its id once, a fence is
      // a race with the gateway it replaces, which stops once it sees this one's claim: the
      // newcomer never gives up, so of two twins exactly one goes on.
      if (!this.claimed) {
        this.trouble('retrying', { err: this.lastError }, 'still fenced while starting: another gateway with this gateway.id is running');
        return this.backoff();
      }
      if (this.suspectTwin) return this.backoff();
      this.suspectTwin = true;
      this.options.logger.warn({ err: this.lastError }, 'producer fenced: checking whether another gateway uses this gateway.id');
      return { kind: 'retry', delayMs: 0 };
    }
    const denied = authorizationFailure(err);
    if (denied !== undefined) {
      const missing = this.options.missingAcls?.(denied, deniedTopics(err));
      const detail = this.lastError;
      // what /status and /healthz show: which ACL to grant, not kafkajs's wording
      this.lastError = `kafka refuses this gateway (${denied})${missing ? `: grant ${missing}` : ''}`;
      this.trouble('unauthorized', { err: detail, denied, missing, requiredAcls: this.options.requiredAcls }, 'kafka still refuses this gateway (ACLs)');
      return this.backoff();
    }
    // Kafka refusing the timestamps of the gateway's own records (the checkpoint, the probe): the
    // clock of this gateway is off, which no retry fixes; say so.
    const clock = rejectionType(err) === 'INVALID_TIMESTAMP' ? { hint: CLOCK_HINT } : {};
    const why = kafkaTrouble(err);
    this.trouble('retrying', { err: this.lastError, why, ...clock }, why === CANNOT_WRITE ? 'kafka still cannot take writes' : 'kafka still unreachable');
    return this.backoff();
  }

  /**
   * Kafka refused a record of the last batch for good. Halve the batch until the refused record is
   * alone (the records before it go out meanwhile); then send it to the dead-letter topic, or drop
   * it when there is none or that refuses it too. Never retried unchanged, never a stall.
   */
  private isolate(err: RecordRejectedError): StepOutcome {
    const attempted = this.attempted;
    if (err.deadLetter && err.type === 'INVALID_TIMESTAMP') {
      // A dead letter is stamped now: Kafka refusing that is this gateway's clock, not the record.
      this.trouble('retrying', { err: this.lastError, hint: CLOCK_HINT }, 'kafka still refuses the timestamps of this gateway');
      return this.backoff();
    }
    if (err.deadLetter) {
      if (this.refused) this.refused = { ...this.refused, deadLetterRefused: true };
    } else if (attempted !== undefined && attempted.count > 1) {
      this.limit = Math.max(1, Math.floor(attempted.count / 2));
      this.isolateThrough = Math.max(this.isolateThrough, attempted.last);
    } else if (attempted !== undefined) {
      this.refused = { offset: attempted.first, reason: err.type, deadLetterRefused: false };
      this.limit = 1;
      this.isolateThrough = Math.max(this.isolateThrough, attempted.last);
    }
    return { kind: 'retry', delayMs: 0 };
  }

  /** Enters a not-forwarding state (one line), or logs a summary at most once per interval. */
  private trouble(state: 'retrying' | 'unauthenticated' | 'unauthorized' | 'log-error', fields: Record<string, unknown>, summary: string): void {
    if (this.stateValue !== state) {
      this.troubleSince = this.clock();
      this.lastSummaryAt = this.clock();
      this.setState(state, fields);
    } else {
      this.logSummary(summary);
    }
  }

  private setState(next: ForwarderState, fields: Record<string, unknown> = {}): void {
    if (next === this.stateValue) return;
    const previous = this.stateValue;
    this.stateValue = next;
    this.options.onStateChange?.(next);
    const { logger } = this.options;
    const since = { downForMs: this.clock() - this.troubleSince, backlog: this.backlog };
    switch (next) {
      case 'retrying': {
        const { why = 'kafka unreachable', ...rest } = fields;
        logger.warn({ ...rest, code: 'EB_ERR_FORWARD_KAFKA', backlog: this.backlog }, `${String(why)}: buffering in the commit log and retrying`);
        break;
      }
      case 'unauthenticated':
        // fields.code says which: EB_ERR_FORWARD_AUTHENTICATION (SASL) or EB_ERR_FORWARD_TLS
        logger.error({ ...fields, backlog: this.backlog }, `${this.lastError}. Buffering in the commit log and retrying`);
        break;
      case 'unauthorized':
        logger.error(
          { ...fields, code: 'EB_ERR_FORWARD_UNAUTHORIZED', backlog: this.backlog },
          `kafka refuses this gateway (${String(fields.denied)}): an ACL is missing. Buffering in the commit log and retrying; grant the ACLs in missing (kafka-acls.sh arguments; requiredAcls lists all this gateway needs)`,
        );
        break;
      case 'log-error':
        logger.error(
          { ...fields, backlog: this.backlog },
          'the commit log cannot be read or updated: forwarding paused (Kafka is not the problem); retrying',
        );
        break;
      case 'fenced':
        logger.error(
          { ...fields, code: 'EB_ERR_FORWARD_FENCED', backlog: this.backlog },
          'fenced: another gateway started with the same gateway.id and took over its Kafka transactions. ' +
            'This gateway stops forwarding (its log keeps what it acknowledged); give each gateway its own gateway.id and restart',
        );
        break;
      case 'forwarding':
        if (previous === 'retrying') logger.info(since, 'kafka reachable again: draining the backlog');
        else if (previous === 'unauthorized' || previous === 'unauthenticated') logger.info(since, 'kafka accepts this gateway again: draining the backlog');
        else if (previous === 'log-error') logger.info(since, 'the commit log works again: forwarding');
        else logger.info({ backlog: this.backlog }, 'forwarding to kafka');
        break;
      default:
        break;
    }
  }

  private async enterFenced(reason: string): Promise<void> {
    this.troubleSince = this.clock();
    this.connected = false;
    this.setState('fenced', { err: reason });
    await this.sink.reset();
  }

  private async run(): Promise<void> {
    this.setState('connecting');
    while (!this.stopping) {
      const outcome = await this.step();
      if (this.stopping) break;
      // Whatever the outcome, give the event loop a turn: close() and wake-ups always get in.
      await yieldToLoop();
      switch (outcome.kind) {
        case 'fenced':
          await this.idleWhileFenced();
          return;
        case 'idle':
          if (!this.wakePending) await this.sleep(this.options.idlePollMs ?? 1000, true);
          await this.linger();
          break;
        case 'retry':
          if (outcome.delayMs > 0) await this.sleep(outcome.delayMs, false);
          break;
        default:
          await this.linger();
      }
    }
  }

  /**
   * Waits until the next transaction is worth its cost (the adaptive commit interval). A full
   * batch goes at once. Otherwise the next transaction starts commitIntervalMs after the previous
   * one began at the earliest, and only once commitMinRecords records wait, or the oldest of them
   * has waited maxCommitDelayMs. So a gateway whose records flow at rate commits every
   * commitIntervalMs, and one whose records trickle commits about once per maxCommitDelayMs, not
   * once per record: transactions per second follow the data, with a latency bound.
   */
  private async linger(): Promise<void> {
    const { commitIntervalMs, batchMaxRecords } = this.options;
    const maxDelay = Math.max(commitIntervalMs, this.options.maxCommitDelayMs ?? commitIntervalMs);
    const minRecords = this.options.commitMinRecords ?? 0;
    while (!this.stopping) {
      const backlog = this.backlog;
      if (backlog === 0 || backlog >= batchMaxRecords) return;
      const now = this.clock();
      // A wall clock set back must not hold records back by as much.
      if (this.lastCommitAt > now) this.lastCommitAt = now;
      if (this.backlogSince !== undefined && this.backlogSince > now) this.backlogSince = now;
      const spacing = this.lastCommitAt + commitIntervalMs - now;
      // Records announced while the last transaction was in flight count from its start.
      const trickle = backlog >= minRecords ? -1 : (this.backlogSince ?? this.lastCommitAt) + maxDelay - now;
      const wait = Math.max(spacing, trickle);
      if (wait <= 0) return;
      // While records trickle, each group commit may bring the count to commitMinRecords: wake on them.
      this.wakePending = false;
      await this.sleep(wait, trickle > 0 && spacing < wait);
    }
  }

  /** A fenced gateway must not retry (it would fence the other one in turn): it only reports. */
  private async idleWhileFenced(): Promise<void> {
    this.lastSummaryAt = this.clock();
    while (!this.stopping) {
      await this.sleep(this.options.summaryIntervalMs ?? 60_000, false);
      if (!this.stopping) this.logSummary('fenced: not forwarding');
    }
  }

  private logSummary(message: string): void {
    const every = this.options.summaryIntervalMs ?? 60_000;
    const now = this.clock();
    if (now - this.lastSummaryAt < every) return;
    this.lastSummaryAt = now;
    this.options.logger.warn(
      { sinceMs: now - this.troubleSince, backlog: this.backlog, failures: this.counters.failures, err: this.lastError },
      message,
    );
  }

  /** Sleeps up to `ms`; close() always ends it early, notify() only when `wakeOnRecords`. */
  private sleep(ms: number, wakeOnRecords: boolean): Promise<void> {
    if (this.stopping) return Promise.resolve(); // close() came between its wake-up and this sleep
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.wake = undefined;
        this.stopWake = undefined;
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
    this.connected = false;
    this.stateValue = 'stopped';
  }
}
