import type { Logger } from 'pino';

/** A backlog being forwarded after an outage: what /status, the page and the log say about it. */
export interface DrainStatus {
  readonly startedAt: number;
  /** Records forwarded since the drain started. */
  readonly done: number;
  /** done + what is still in the backlog (grows while devices keep publishing). */
  readonly total: number;
  readonly remaining: number;
  /** Records committed to Kafka per second over the last seconds. */
  readonly ratePerSecond: number;
  /**
   * Seconds until the backlog is gone at the current forward and ingest rates; null while it does
   * not shrink (Kafka away again, or devices publish faster than the gateway forwards).
   */
  readonly etaSeconds: number | null;
}

export interface DrainReading {
  readonly forwarding: boolean;
  readonly backlog: number;
  readonly backlogOldestAgeSeconds: number;
  /** Totals since start. */
  readonly forwarded: number;
  readonly received: number;
}

export interface DrainProgressOptions {
  readonly logger: Logger;
  /** A backlog is followed once its oldest record is this old… */
  readonly startAgeSeconds?: number;
  /** …or this many records are waiting while Kafka is away. */
  readonly startRecords?: number;
  /** and ends when the oldest waiting record is at most this old. */
  readonly endAgeSeconds?: number;
  /** One progress line per this many ms. */
  readonly logIntervalMs?: number;
  /** Rates are measured over this window. */
  readonly rateWindowMs?: number;
}

/**
 * Follows the draining of a backlog (fed a reading every few seconds): logs where it starts, its
 * progress (done/total, rate, ETA) at an interval, and when it is done, as long operations should.
 */
export class DrainProgress {
  /** A backlog worth following: noted (startedAt undefined) until forwarding it has begun. */
  private current: { startedAt: number | undefined; forwardedAtStart: number; lastLogAt: number; lastUpdateAt: number } | undefined;
  private samples: { at: number; forwarded: number; received: number }[] = [];
  private status: DrainStatus | undefined;
  private readonly startAgeSeconds: number;
  private readonly startRecords: number;
  private readonly endAgeSeconds: number;
  private readonly logIntervalMs: number;
  private readonly rateWindowMs: number;

  constructor(private readonly options: DrainProgressOptions) {
    this.startAgeSeconds = options.startAgeSeconds ?? 10;
    this.startRecords = options.startRecords ?? 10_000;
    this.endAgeSeconds = options.endAgeSeconds ?? 2;
    this.logIntervalMs = options.logIntervalMs ?? 10_000;
    this.rateWindowMs = options.rateWindowMs ?? 10_000;
  }

  /** The drain under way, if any. */
  get drain(): DrainStatus | undefined {
    return this.status;
  }

  update(r: DrainReading, now = Date.now()): void {
    this.samples.push({ at: now, forwarded: r.forwarded, received: r.received });
    while (this.samples.length > 2 && this.samples[1]!.at <= now - this.rateWindowMs) this.samples.shift();
    const first = this.samples[0]!;
    const seconds = (now - first.at) / 1000;
    const forwardRate = seconds > 0 ? (r.forwarded - first.forwarded) / seconds : 0;
    const ingestRate = seconds > 0 ? (r.received - first.received) / seconds : 0;

    // A backlog old or large enough is noted even while Kafka is away (it is what will drain),
    // so that one forwarded at once when Kafka returns still gets its 'drained' line.
    if (!this.current) {
      // By records only while not forwarding: a gateway forwarding a high rate with a second of
      // lag has that many records in flight all the time, and is not draining anything.
      if (r.backlogOldestAgeSeconds < this.startAgeSeconds && (r.forwarding || r.backlog < this.startRecords)) return;
      this.current = { startedAt: undefined, forwardedAtStart: r.forwarded, lastLogAt: now, lastUpdateAt: now };
    }
    const c = this.current;
    const previousUpdateAt = c.lastUpdateAt;
    c.lastUpdateAt = now;
    const done = r.forwarded - c.forwardedAtStart;
    const drained = r.backlog === 0 || (r.forwarding && r.backlogOldestAgeSeconds <= this.endAgeSeconds);
    if (c.startedAt === undefined) {
      if (!drained && !r.forwarding && done === 0) return; // still waiting for Kafka
      if (!drained) {
        this.options.logger.info(
          { remaining: r.backlog, oldestAgeSeconds: Math.round(r.backlogOldestAgeSeconds) },
          'draining backlog: forwarding what was stored while Kafka was unreachable or behind',
        );
      }
      // It began at the latest between the previous reading and this one.
      c.startedAt = drained ? previousUpdateAt : now;
      c.lastLogAt = now;
    }
    if (drained) {
      const took = (now - c.startedAt) / 1000;
      this.options.logger.info(
        { records: done, seconds: Math.round(took), ratePerSecond: took > 0 ? Math.round(done / took) : done, remaining: r.backlog },
        'backlog drained',
      );
      this.current = undefined;
      this.status = undefined;
      return;
    }
    const shrinking = forwardRate - ingestRate;
    this.status = {
      startedAt: c.startedAt,
      done,
      total: done + r.backlog,
      remaining: r.backlog,
      ratePerSecond: Math.round(forwardRate),
      etaSeconds: r.forwarding && shrinking > 0 ? Math.round(r.backlog / shrinking) : null,
    };
    if (now - c.lastLogAt >= this.logIntervalMs) {
      c.lastLogAt = now;
      const s = this.status;
      this.options.logger.info(
        { done: s.done, total: s.total, percent: Math.floor((100 * s.done) / Math.max(1, s.total)), ratePerSecond: s.ratePerSecond, etaSeconds: s.etaSeconds, forwarding: r.forwarding },
        'draining backlog',
      );
    }
  }
}
