import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { ForwarderCounters, ForwarderState } from './forwarder.js';

export interface WorkerInit {
  readonly config: Config;
  readonly logLevel: string;
}

export type ToWorker = { type: 'appended'; lastOffset: number } | { type: 'close'; timeoutMs: number };

export type FromWorker =
  | { type: 'status'; state: ForwarderState; counters: ForwarderCounters; lastError: string }
  | { type: 'log'; line: string }
  | { type: 'removed' }
  | { type: 'closed' }
  | { type: 'fatal'; message: string };

const LEVELS: Record<number, 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal'> = {
  10: 'trace',
  20: 'debug',
  30: 'info',
  40: 'warn',
  50: 'error',
  60: 'fatal',
};

function zeroCounters(): ForwarderCounters {
  return { forwarded: 0, transactions: 0, failures: 0, skippedByCheckpoint: 0 };
}

function addCounters(a: ForwarderCounters, b: ForwarderCounters): ForwarderCounters {
  return {
    forwarded: a.forwarded + b.forwarded,
    transactions: a.transactions + b.transactions,
    failures: a.failures + b.failures,
    skippedByCheckpoint: a.skippedByCheckpoint + b.skippedByCheckpoint,
  };
}

/** The compiled worker; when running from TypeScript sources (tests), the build's copy. */
function workerFile(): URL {
  const beside = new URL('./worker.js', import.meta.url);
  if (existsSync(fileURLToPath(beside))) return beside;
  return new URL('../../dist/src/forward/worker.js', import.meta.url);
}

export interface ForwarderThreadOptions {
  readonly config: Config;
  readonly logger: Logger;
  /** Forwarded records were removed: held appends may fit now. */
  readonly onRemoved: () => void;
}

/**
 * The main thread's handle on the forwarder running in a worker thread: it passes on group-commit
 * wake-ups, relays the worker's log lines, and keeps the latest status the worker reported.
 */
export class ForwarderThread {
  private worker!: Worker;
  private latest: { state: ForwarderState; counters: ForwarderCounters; lastError: string } = {
    state: 'connecting',
    counters: zeroCounters(),
    lastError: '',
  };
  private closed: Promise<void> | undefined;
  private onClosed: (() => void) | undefined;
  private exited = false;
  private lastOffset = 0;
  private restarts = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  /** Counts of the workers that ended, so totals survive a restart. */
  private carried = zeroCounters();

  constructor(private readonly options: ForwarderThreadOptions) {
    this.spawn();
  }

  private spawn(): void {
    const logger = this.options.logger;
    const init: WorkerInit = { config: this.options.config, logLevel: logger.level };
    const worker = new Worker(workerFile(), { workerData: init });
    this.worker = worker;
    this.exited = false;
    worker.on('message', (message: FromWorker) => this.receive(message));
    worker.on('error', (err) => logger.error({ err: err.message, stack: err.stack }, 'forwarder thread crashed'));
    worker.on('online', () => {
      if (this.lastOffset > 0) worker.postMessage({ type: 'appended', lastOffset: this.lastOffset } satisfies ToWorker);
    });
    worker.on('exit', (code) => {
      this.exited = true;
      this.carried = addCounters(this.carried, this.latest.counters);
      this.latest = { ...this.latest, state: 'stopped', counters: zeroCounters() };
      this.onClosed?.();
      if (this.closed) return;
      // A crash is a bug, but forwarding must go on: a new worker resumes from the Kafka
      // checkpoint, so nothing is skipped or repeated.
      const delayMs = Math.min(30_000, 500 * 2 ** Math.min(this.restarts++, 6));
      logger.error({ code, restartInMs: delayMs, restarts: this.restarts }, 'forwarder thread exited unexpectedly; restarting it');
      this.restartTimer = setTimeout(() => {
        if (!this.closed) this.spawn();
      }, delayMs);
      this.restartTimer.unref();
    });
  }

  private receive(message: FromWorker): void {
    const logger = this.options.logger;
    switch (message.type) {
      case 'status':
        this.latest = { state: message.state, counters: message.counters, lastError: message.lastError };
        break;
      case 'log': {
        const { level, msg, time: _time, pid: _pid, hostname: _host, ...fields } = JSON.parse(message.line) as {
          level: number;
          msg?: string;
          [key: string]: unknown;
        };
        logger[LEVELS[level] ?? 'info']({ stage: 'forward', ...fields }, msg ?? '');
        break;
      }
      case 'removed':
        this.options.onRemoved();
        break;
      case 'closed':
        this.onClosed?.();
        break;
      case 'fatal':
        logger.error({ err: message.message }, 'forwarder thread could not start');
        break;
    }
  }

  notify(lastOffset: number): void {
    this.lastOffset = Math.max(this.lastOffset, lastOffset);
    if (!this.exited) this.worker.postMessage({ type: 'appended', lastOffset } satisfies ToWorker);
  }

  get state(): ForwarderState {
    return this.latest.state;
  }

  get counters(): ForwarderCounters {
    return addCounters(this.carried, this.latest.counters);
  }

  /** Lets the worker finish its transaction in flight (at most `timeoutMs`), then ends it. */
  close(timeoutMs = 10_000): Promise<void> {
    this.closed ??= (async () => {
      clearTimeout(this.restartTimer);
      if (!this.exited) {
        const done = new Promise<void>((resolve) => (this.onClosed = resolve));
        this.worker.postMessage({ type: 'close', timeoutMs } satisfies ToWorker);
        await Promise.race([done, new Promise((r) => setTimeout(r, timeoutMs + 2000).unref())]);
      }
      await this.worker.terminate();
    })();
    return this.closed;
  }
}
