import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { BacklogSummary } from '../log/backlog.js';

/** The compiled worker; when running from TypeScript sources (tests), the build's copy. */
function workerFile(): URL {
  const beside = new URL('./backlog-worker.js', import.meta.url);
  if (existsSync(fileURLToPath(beside))) return beside;
  return new URL('../../dist/src/admin/backlog-worker.js', import.meta.url);
}

export type BacklogReply = { ok: true; summary: BacklogSummary } | { ok: false; error: string };

/** An idle worker ends after this; the next question starts one again. */
const IDLE_MS = 60_000;
/** A scan is reused for at least this many times its own duration: scans take at most ~10 % of a core. */
const REUSE_FACTOR = 10;
/** And never more often than this, whatever the callers' doubts about the last one. */
const MIN_SCAN_INTERVAL_MS = 2_000;

/**
 * Answers "which devices is the backlog made of, and how many bytes is it" (/status, the page,
 * edgebridge_backlog_bytes) by reading the log in a worker thread on its own read-only connection:
 * the query scans the whole backlog, which during a long outage is millions of rows, and must not
 * hold up the thread that stores and acknowledges publishes. One scan at a time; an answer is
 * reused for `maxAgeMs`, or ten times as long as it took to get when that is longer.
 */
export class BacklogInspector {
  private worker: Worker | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private pending: Promise<BacklogSummary> | undefined;
  private waiting: ((reply: BacklogReply) => void) | undefined;
  private last: BacklogSummary | undefined;
  private lastScanMs = 0;
  private closed = false;

  constructor(
    private readonly dir: string,
    private readonly top = 10,
  ) {}

  /** The last answer, without asking. */
  get latest(): BacklogSummary | undefined {
    return this.last;
  }

  /**
   * An answer at most `maxAgeMs` old that `stillTrue` accepts (a scan is started when the last
   * one is older or no longer true, but not within MIN_SCAN_INTERVAL_MS of the last one: then the
   * last one, which the caller checks again).
   */
  summary(maxAgeMs: number, stillTrue: (last: BacklogSummary) => boolean = () => true): Promise<BacklogSummary> {
    const reuseMs = Math.max(maxAgeMs, REUSE_FACTOR * this.lastScanMs);
    const age = this.last === undefined ? -1 : Date.now() - this.last.readAt; // < 0: the clock was set back
    if (this.last && age >= 0 && age <= reuseMs && stillTrue(this.last)) return Promise.resolve(this.last);
    // However often it is asked (a script polling /status every 100 ms while the backlog swings),
    // at most one scan per MIN_SCAN_INTERVAL_MS: the caller judges whether the last one will do.
    if (this.last && age >= 0 && age < MIN_SCAN_INTERVAL_MS) return Promise.resolve(this.last);
    this.pending ??= this.ask().finally(() => (this.pending = undefined));
    return this.pending;
  }

  private ask(): Promise<BacklogSummary> {
    if (this.closed) return Promise.reject(new Error('the gateway is stopping'));
    clearTimeout(this.idleTimer);
    const worker = (this.worker ??= this.spawn());
    const startedAt = Date.now();
    return new Promise<BacklogReply>((resolve) => {
      this.waiting = resolve;
      worker.postMessage({ top: this.top });
    }).then((reply) => {
      if (!this.closed) {
        this.idleTimer = setTimeout(() => this.stopWorker(), IDLE_MS);
        this.idleTimer.unref();
      }
      if (!reply.ok) throw new Error(reply.error);
      this.lastScanMs = Date.now() - startedAt;
      this.last = reply.summary;
      return reply.summary;
    });
  }

  private spawn(): Worker {
    const worker = new Worker(workerFile(), { workerData: { dir: this.dir }, resourceLimits: { maxYoungGenerationSizeMb: 4 } });
    worker.unref();
    worker.on('message', (reply: BacklogReply) => {
      const w = this.waiting;
      this.waiting = undefined;
      w?.(reply);
    });
    const gone = (reason: string) => {
      // An idle worker ended by stopWorker() is no longer this.worker: a question asked of the
      // next one is not its to answer.
      if (this.worker !== worker) return;
      this.worker = undefined;
      const w = this.waiting;
      this.waiting = undefined;
      w?.({ ok: false, error: reason });
    };
    worker.on('error', (err) => gone(`backlog reader failed: ${err.message}`));
    worker.on('exit', (code) => gone(`backlog reader exited (${code})`));
    return worker;
  }

  private stopWorker(): void {
    const w = this.worker;
    this.worker = undefined;
    void w?.terminate();
  }

  /**
   * Stops the worker without waiting for it: a scan in progress ends at its next chunk, and a
   * gateway shutting down must not wait for it.
   */
  close(): void {
    this.closed = true;
    clearTimeout(this.idleTimer);
    const w = this.worker;
    this.worker = undefined;
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.({ ok: false, error: 'the gateway is stopping' });
    void w?.terminate();
  }
}
