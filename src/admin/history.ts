/**
 * A few minutes of the gateway's figures, sampled at a fixed interval, for the status page's chart
 * (Prometheus keeps the long history; this is for a person with only a browser).
 */
export interface HistorySample {
  /** ms */
  readonly at: number;
  /** Publishes stored per second since the previous sample. */
  readonly ingestPerSecond: number;
  /** Records committed to Kafka per second since the previous sample. */
  readonly forwardPerSecond: number;
  readonly backlog: number;
  readonly backlogOldestAgeSeconds: number;
  readonly mqttClients: number;
}

export interface HistoryReading {
  readonly received: number;
  readonly forwarded: number;
  readonly backlog: number;
  readonly backlogOldestAgeSeconds: number;
  readonly mqttClients: number;
}

export class History {
  private readonly samples: HistorySample[] = [];
  private last: { at: number; received: number; forwarded: number } | undefined;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly read: () => HistoryReading,
    readonly intervalMs = 5_000,
    private readonly capacity = 180,
  ) {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  sample(now = Date.now()): void {
    const r = this.read();
    const last = this.last;
    const seconds = last ? Math.max(0.001, (now - last.at) / 1000) : 0;
    this.samples.push({
      at: now,
      ingestPerSecond: last ? Math.max(0, (r.received - last.received) / seconds) : 0,
      forwardPerSecond: last ? Math.max(0, (r.forwarded - last.forwarded) / seconds) : 0,
      backlog: r.backlog,
      backlogOldestAgeSeconds: r.backlogOldestAgeSeconds,
      mqttClients: r.mqttClients,
    });
    if (this.samples.length > this.capacity) this.samples.shift();
    this.last = { at: now, received: r.received, forwarded: r.forwarded };
  }

  /** Oldest first. */
  list(): readonly HistorySample[] {
    return this.samples;
  }

  close(): void {
    clearInterval(this.timer);
  }
}
