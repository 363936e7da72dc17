import type { CommitLog, LogEntry } from './commit-log.js';

export type AppendCallback = (err: Error | null, offset?: number) => void;

/** What ingress needs from the log: append now, learn the outcome later. */
export interface AppendSink {
  append(entry: LogEntry, done: AppendCallback): void;
}

export interface GroupCommitOptions {
  /** Largest transaction; a bigger burst is split (bounds the time one write blocks the loop). */
  readonly maxBatch?: number;
  /** Called after every committed group with its offsets (the forwarder's wake-up). */
  readonly onCommit?: (lastOffset: number, count: number) => void;
}

/**
 * Group commit: collects the appends of one event-loop turn and writes them in one SQLite
 * transaction (one fsync), then releases the callbacks in arrival order. Durability then costs
 * one fsync per turn rather than one per message. Callbacks run only after the transaction is
 * committed, so the acknowledgement that follows them is never ahead of the disk.
 */
export class GroupCommit implements AppendSink {
  private pending: { entry: LogEntry; done: AppendCallback }[] = [];
  private scheduled = false;
  private readonly maxBatch: number;
  private closed = false;
  groups = 0;

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
    if (!this.scheduled) {
      this.scheduled = true;
      // setImmediate runs after this turn's I/O callbacks: everything parsed from the sockets
      // in this turn lands in the same transaction.
      setImmediate(() => this.flush());
    }
  }

  /** Writes everything pending now. Safe to call at any time (used by shutdown). */
  flush(): void {
    this.scheduled = false;
    while (this.pending.length > 0) {
      const group = this.pending.splice(0, this.maxBatch);
      let offsets: number[];
      try {
        offsets = this.log.append(group.map((p) => p.entry));
      } catch (err) {
        for (const p of group) p.done(err as Error);
        continue;
      }
      this.groups++;
      for (let i = 0; i < group.length; i++) group[i]!.done(null, offsets[i]);
      this.options.onCommit?.(offsets[offsets.length - 1]!, offsets.length);
    }
  }

  /** Flushes what is in flight and refuses new appends. */
  close(): void {
    this.flush();
    this.closed = true;
  }
}
