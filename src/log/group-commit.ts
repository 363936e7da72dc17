import type { Logger } from 'pino';
import { describeError } from '../errors.js';
import type { AppendResult, CommitLog, LogEntry } from './commit-log.js';

/** `offset` is the record's log offset, or `duplicate` when dedup dropped it (still acknowledged). */
export type AppendCallback = (err: Error | null, result?: AppendResult) => void;

/** What ingress needs from the log: append now, learn the outcome later. */
export interface AppendSink {
  append(entry: LogEntry, done: AppendCallback): void;
}

export interface StoragePolicy {
  readonly maxBytes: number;
  readonly overflow: 'backpressure' | 'drop-oldest';
  /** The forwarder's position: records at or before it are in Kafka and may go at any time. */
  readonly forwardPosition: () => number;
}

export interface GroupCommitOptions {
  /** Largest transaction; a bigger burst is split (bounds the time one write blocks the loop). */
  readonly maxBatch?: number;
  /** Called after every committed group (the forwarder's wake-up). */
  readonly onCommit?: (lastOffset: number, count: number) => void;
  readonly storage?: StoragePolicy;
  readonly logger?: Logger;
  /** How often a held group re-checks for space. */
  readonly holdRetryMs?: number;
}

export interface GroupCommitCounters {
  groups: number;
  appended: number;
  duplicates: number;
  /** Oldest unforwarded records dropped to make room (overflow: drop-oldest). */
  droppedOverflow: number;
  /** Dedup keys forgotten before their window ended because storage was full. */
  dedupEvicted: number;
}

interface Pending {
  entry: LogEntry;
  done: AppendCallback;
}

/**
 * Group commit: collects the appends of one event-loop turn and writes them in one SQLite
 * transaction (one fsync), then releases the callbacks in arrival order. Durability then costs
 * one fsync per turn rather than one per message. Callbacks run only after the transaction is
 * committed, so the acknowledgement that follows them is never ahead of the disk.
 *
 * With a storage policy, a group that would take the log past `maxBytes` is held (backpressure:
 * no acknowledgement until the forwarder frees space) or makes room by dropping the oldest
 * unforwarded records (drop-oldest). Nothing acknowledged is dropped under backpressure.
 */
export class GroupCommit implements AppendSink {
  readonly counters: GroupCommitCounters = { groups: 0, appended: 0, duplicates: 0, droppedOverflow: 0, dedupEvicted: 0 };
  private pending: Pending[] = [];
  private scheduled = false;
  private holdTimer: NodeJS.Timeout | undefined;
  private readonly maxBatch: number;
  private closed = false;
  private fullSince = 0;
  private lastAdmitErrorAt = 0;

  constructor(
    private readonly log: CommitLog,
    private readonly options: GroupCommitOptions = {},
  ) {
    this.maxBatch = options.maxBatch ?? 5000;
  }

  append(entry: LogEntry, done: AppendCallback): void {
    if (this.closed) {
      done(new Error('the gateway is shutting down; the message was not stored'));
      return;
    }
    this.pending.push({ entry, done });
    if (!this.scheduled && !this.holdTimer) {
      this.scheduled = true;
      // setImmediate runs after this turn's I/O callbacks: everything parsed from the sockets
      // in this turn lands in the same transaction.
      setImmediate(() => this.flush());
    }
  }

  /** True while acknowledgements are held because storage is full. */
  get holding(): boolean {
    return this.holdTimer !== undefined;
  }

  /** Space may have been freed (the forwarder removed records): retry a held group now. */
  release(): void {
    if (!this.holdTimer) return;
    clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    this.flush();
  }

  /** Writes everything pending now (unless storage is full under backpressure). */
  flush(): void {
    this.scheduled = false;
    while (this.pending.length > 0 && !this.holdTimer) {
      const admitted = this.admit(this.pending.slice(0, this.maxBatch));
      if (admitted === 0) {
        this.hold();
        return;
      }
      const group = this.pending.splice(0, admitted);
      let results: AppendResult[];
      try {
        results = this.log.append(group.map((p) => p.entry));
      } catch (err) {
        for (const p of group) this.settle(p, err as Error);
        continue;
      }
      this.counters.groups++;
      let last = 0;
      let stored = 0;
      for (let i = 0; i < group.length; i++) {
        const r = results[i]!;
        if (r === 'duplicate') this.counters.duplicates++;
        else {
          last = r;
          stored++;
        }
        this.settle(group[i]!, null, r);
      }
      this.counters.appended += stored;
      if (stored > 0) this.options.onCommit?.(last, stored);
    }
  }

  /** Calls back one append; a throwing callback must not take the other appends down with it. */
  private settle(p: Pending, err: Error | null, result?: AppendResult): void {
    try {
      p.done(err, result);
    } catch (callbackErr) {
      this.options.logger?.error({ err: describeError(callbackErr) }, 'append callback threw');
    }
  }

  private hold(): void {
    this.holdTimer = setTimeout(() => this.release(), this.options.holdRetryMs ?? 200);
    this.holdTimer.unref();
  }

  /**
   * How many entries from the head of `group` fit under storage.maxBytes, after applying the
   * overflow policy. A burst larger than the room left is split rather than held whole, so
   * ingest stalls only while not even one record fits.
   */
  private admit(group: readonly Pending[]): number {
    const storage = this.options.storage;
    if (!storage || this.log.isClosed) return group.length;
    try {
      const sizes = group.map((p) => p.entry.payload.length + p.entry.mqttTopic.length + 96);
      const room = (): number => storage.maxBytes - this.log.usedBytes();
      const fitting = (): number => {
        let left = room();
        let n = 0;
        while (n < sizes.length && left >= sizes[n]!) left -= sizes[n++]!;
        return n;
      };
      let n = fitting();
      if (n < group.length) {
        const need = sizes.reduce((a, b) => a + b, 0);
        if (storage.overflow === 'drop-oldest') {
          const position = storage.forwardPosition();
          for (let round = 0; round < 64 && room() < need; round++) {
            const dropped = this.log.dropOldest(position, Math.max(group.length * 2, 100));
            if (dropped === 0) break;
            this.counters.droppedOverflow += dropped;
          }
        }
        // Nothing (more) to forward yet still full: the dedup index is what fills the storage.
        // Acknowledged data comes first; shorten the dedup memory rather than refuse messages.
        for (let round = 0; round < 64 && room() < need; round++) {
          if (storage.overflow === 'backpressure' && this.log.pendingAfter(storage.forwardPosition()) > 0) break;
          const evicted = this.log.pruneDedupOldest(Math.max(group.length * 4, 1000));
          if (evicted === 0) break;
          this.counters.dedupEvicted += evicted;
        }
        n = fitting();
      }
      // Hysteresis: "full" starts when nothing fits and ends below 90 % of maxBytes, so a log
      // hovering at its limit does not log a pair of lines per removal.
      if (n === 0) this.setFull(true);
      else if (this.fullSince !== 0 && room() >= storage.maxBytes * 0.1) this.setFull(false);
      return n;
    } catch (err) {
      const now = Date.now();
      if (now - this.lastAdmitErrorAt > 60_000) {
        this.lastAdmitErrorAt = now;
        this.options.logger?.error({ err: describeError(err) }, 'checking the commit log size failed; appending anyway');
      }
      return group.length;
    }
  }

  private setFull(full: boolean): void {
    const logger = this.options.logger;
    if (full && this.fullSince === 0) {
      this.fullSince = Date.now();
      logger?.warn(
        {
          code: 'EB_ERR_LOG_FULL',
          usedBytes: this.log.usedBytes(),
          maxBytes: this.options.storage?.maxBytes,
          overflow: this.options.storage?.overflow,
        },
        'commit log full: holding acknowledgements until the forwarder frees space',
      );
    } else if (!full && this.fullSince !== 0) {
      logger?.info({ heldForMs: Date.now() - this.fullSince }, 'commit log has space again: acknowledging');
      this.fullSince = 0;
    }
  }

  /** Flushes what is in flight and refuses new appends. Held groups are failed (not acknowledged). */
  close(): void {
    clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    this.flush();
    clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    this.closed = true;
    for (const p of this.pending.splice(0)) this.settle(p, new Error('the gateway is shutting down; the message was not stored'));
  }
}
