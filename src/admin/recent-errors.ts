/**
 * The last problems the gateway logged, for the status page and /status: every error and fatal
 * line, and warnings that carry an error code. Repeats of the same code and message are folded
 * into one entry with a count, so one failure repeating every second cannot push out the rest.
 */
export interface RecentError {
  /** When it last happened (ms). */
  readonly at: number;
  readonly level: 'warn' | 'error' | 'fatal';
  readonly code: string | undefined;
  readonly message: string;
  /** The error text logged with it (`err`), if any. */
  readonly detail: string | undefined;
  readonly count: number;
}

const LEVEL_NAMES: Record<number, RecentError['level']> = { 40: 'warn', 50: 'error', 60: 'fatal' };

export class RecentErrors {
  private entries: RecentError[] = [];

  constructor(private readonly capacity = 20) {}

  /** A log line (pino level number, its fields, its message): kept if it is a problem. */
  note(level: number, fields: Record<string, unknown> | undefined, message: string, now = Date.now()): void {
    const code = typeof fields?.code === 'string' ? fields.code : undefined;
    if (level < 40 || (level < 50 && code === undefined)) return;
    const err = fields?.err;
    const detail = typeof err === 'string' ? err : err instanceof Error ? err.message : undefined;
    const i = this.entries.findIndex((e) => e.code === code && e.message === message);
    const count = i >= 0 ? this.entries[i]!.count + 1 : 1;
    if (i >= 0) this.entries.splice(i, 1);
    this.entries.unshift({ at: now, level: LEVEL_NAMES[Math.min(60, Math.floor(level / 10) * 10)] ?? 'error', code, message, detail, count });
    if (this.entries.length > this.capacity) this.entries.length = this.capacity;
  }

  /** Newest first. */
  list(): readonly RecentError[] {
    return this.entries;
  }
}
