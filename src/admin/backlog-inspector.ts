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

/**
 * Answers "which devices is the backlog made of, and how many bytes is it" (/status, the page,
 * edgebridge_backlog_bytes) by reading the log in a worker thread on its own read-only connection:
 * the query scans the whole backlog, which during a long outage is millions of rows, and must not
 * hold up the thread that stores and acknowledges publishes. One scan at a time; an answer is
 * reused for `maxAgeMs`.
 */
export class BacklogInspector {
  private worker: Worker | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private pending: Promise<BacklogSummary> | undefined;
  private waiting: ((reply: BacklogReply) => void) | undefined;
  private last: BacklogSummary | undefined;
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
   * one is older or no longer true).
   */
  summary(maxAgeMs: number, stillTrue: (last: BacklogSummary) => boolean = () => true): Promise<BacklogSummary> {
    if (this.last && Date.now() - this.last.readAt <= maxAgeMs && stillTrue(this.last)) return Promise.resolve(this.last);
    this.pending ??= this.ask().finally(() => (this.pending = undefined));
    return this.pending;
  }

  private ask(): Promise<BacklogSummary> {
    if (this.closed) return Promise.reject(new Error('the gateway is stopping'));
    clearTimeout(this.idleTimer);
    const worker = (this.worker ??= this.spawn());
    return new Promise<BacklogReply>((resolve) => {
      this.waiting = resolve;
      worker.postMessage({ top: this.top });
    }).then((reply) => {
      this.idleTimer = setTimeout(() => this.stopWorker(), IDLE_MS);
      this.idleTimer.unref();
      if (!reply.ok) throw new Error(reply.error);
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
      if (this.worker === worker) this.worker = undefined;
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

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.idleTimer);
    const w = this.worker;
    this.worker = undefined;
    await w?.terminate();
  }
}
