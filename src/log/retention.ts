import type { Logger } from 'pino';
import { describeError } from '../errors.js';
import type { CommitLog } from './commit-log.js';
import type { GroupCommitCounters } from './group-commit.js';

export interface RetentionOptions {
  /** Unforwarded records older than this are dropped (storage.maxAge). */
  readonly maxAgeMs: number;
  readonly forwardPosition: () => number;
  readonly groupCounters: GroupCommitCounters;
  readonly logger: Logger;
  readonly intervalMs?: number;
  /** Most records dropped and dedup keys forgotten per run: a run blocks the ingest thread. */
  readonly maxRowsPerRun?: number;
  /** The forwarder's largest batch (forward.batchMaxRecords): records it may have in flight. */
  readonly forwardBatchRecords?: number;
}

/** The largest forward.batchMaxRecords the config allows. */
export const MAX_FORWARD_BATCH = 100_000;

export interface RetentionCounters {
  droppedExpired: number;
  /** Per-reading dedup keys whose window ended. */
  dedupPruned: number;
  /** Counter streams whose window ended. */
  dedupStreamsPruned: number;
}

/**
 * Periodic housekeeping of the log, Kafka-retention style: drops records older than maxAge that
 * could not be forwarded, forgets dedup keys whose window ended, and reports every loss of data
 * (expired or dropped for space) in one summary line per interval, never per record.
 */
export class Retention {
  readonly counters: RetentionCounters = { droppedExpired: 0, dedupPruned: 0, dedupStreamsPruned: 0 };
  private readonly timer: NodeJS.Timeout | undefined;
  private reportedOverflow = 0;
  private reportedDedupEvicted = 0;
  private reportedMessageExpired = 0;
  private lastMessageExpiredLogAt = -Infinity;

  constructor(
    private readonly log: CommitLog,
    private readonly options: RetentionOptions,
  ) {
    // intervalMs 0: no timer, runOnce is called by the owner (the fault simulator).
    if (options.intervalMs !== 0) {
      this.timer = setInterval(() => this.runOnce(), options.intervalMs ?? 10_000);
      this.timer.unref();
    }
  }

  runOnce(now = Date.now()): void {
    if (this.log.isClosed) return;
    const { logger, groupCounters } = this.options;
    try {
      // Bounded work per run (this is the ingest thread): what is left waits for the next run.
      const budget = this.options.maxRowsPerRun ?? 20_000;
      const step = Math.min(budget, 5_000);
      // Calls `run(step)` until it does less than a full step or the budget is spent.
      const inSteps = (run: (limit: number) => number): number => {
        let total = 0;
        for (let n = step; n === step && total < budget; total += n) n = run(step);
        return total;
      };
      const expired = inSteps((limit) => this.log.dropExpired(this.options.forwardPosition(), now - this.options.maxAgeMs, limit));
      if (expired > 0) {
        this.counters.droppedExpired += expired;
        logger.warn(
          { dropped: expired, total: this.counters.droppedExpired, maxAgeMs: this.options.maxAgeMs },
          'dropped records older than storage.maxAge that could not be forwarded',
        );
      }
      // MQTT 5 message expiry: what can never be sent gives its space back (the forwarder also
      // drops expired records it reads, so this is for space, not for correctness).
      inSteps((limit) => this.log.dropMessageExpired(now, this.options.forwardBatchRecords ?? MAX_FORWARD_BATCH, limit));
      this.counters.dedupPruned += inSteps((limit) => this.log.pruneDedup(now, limit));
      this.counters.dedupStreamsPruned += inSteps((limit) => this.log.pruneDedupStreams(now, limit));
    } catch (err) {
      logger.error({ err: describeError(err) }, 'commit log housekeeping failed; retrying next interval');
    }
    const messageExpired = this.log.messageExpiredDropped;
    if (messageExpired > this.reportedMessageExpired && Date.now() - this.lastMessageExpiredLogAt >= 60_000) {
      this.lastMessageExpiredLogAt = Date.now();
      logger.warn(
        { dropped: messageExpired - this.reportedMessageExpired, total: messageExpired },
        'deleted unforwarded records whose MQTT 5 message expiry passed (never sent late; logged at most once a minute)',
      );
      this.reportedMessageExpired = messageExpired;
    }
    if (groupCounters.droppedOverflow > this.reportedOverflow) {
      logger.warn(
        { dropped: groupCounters.droppedOverflow - this.reportedOverflow, total: groupCounters.droppedOverflow },
        'storage full (overflow: drop-oldest): dropped the oldest unforwarded records',
      );
      this.reportedOverflow = groupCounters.droppedOverflow;
    }
    if (groupCounters.dedupEvicted > this.reportedDedupEvicted) {
      logger.warn(
        { evicted: groupCounters.dedupEvicted - this.reportedDedupEvicted, total: groupCounters.dedupEvicted },
        'storage full of dedup keys: forgot the oldest before their window ended (raise storage.maxBytes or shorten dedup.window)',
      );
      this.reportedDedupEvicted = groupCounters.dedupEvicted;
    }
  }

  close(): void {
    clearInterval(this.timer);
  }
}
