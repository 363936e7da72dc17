import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { FORWARDER_STATES, type ForwardedBatch } from '../forward/forwarder.js';
import { listen } from '../listen.js';
import type { BacklogSummary } from '../log/backlog.js';
import { healthOf, readinessOf, type GatewayStatus } from '../status.js';
import { BacklogInspector } from './backlog-inspector.js';
import type { HistorySample } from './history.js';
import { STATUS_PAGE } from './page.js';

export interface AdminServerOptions {
  readonly host: string;
  readonly port: number;
  readonly status: () => GatewayStatus;
  /** The last minutes of figures (the page's chart). */
  readonly history?: () => readonly HistorySample[];
  /** The commit log's directory: the backlog's devices and bytes are read from it. */
  readonly storageDir?: string;
  readonly logger: Logger;
}

/** /status's backlog detail: what the log's backlog is made of, read in a worker. */
export interface BacklogDetail {
  readonly bytes: number;
  /**
   * True when the bytes are estimated from the records forwarded lately, and no devices listed: a
   * backlog only in flight (forwarding, oldest record under 10 s: none is behind), or one not read
   * yet (it grew fast, or the first scan of a long one is under way).
   */
  readonly estimated: boolean;
  /** The devices with the most records waiting. */
  readonly topDevices: readonly { deviceId: string; records: number; bytes: number; oldestAgeSeconds: number }[];
  readonly devices: number;
  /** When the log was read (ms): the detail can be a few seconds older than the rest of /status. */
  readonly readAt: number;
}

/**
 * A backlog younger than this while forwarding is only in flight: it is not read from the log.
 * Scanning it would cost a gateway at full rate about a tenth of its ingest (bench scenario 1: a
 * reader at the wrong moment holds up the forwarder's truncating checkpoint, and with it appends).
 */
const IN_FLIGHT_SECONDS = 10;
/** How old a backlog scan /status and /metrics accept (each scan reads the whole backlog). */
const BACKLOG_DETAIL_MAX_AGE_MS = 5_000;
/** How long /status and /metrics wait for a scan before they answer with the previous one. */
const BACKLOG_DETAIL_WAIT_MS = 1_000;
/** The previous scan stands in for a slow one at most this old. */
const BACKLOG_DETAIL_FALLBACK_MS = 60_000;

function backlogDetail(s: BacklogSummary, now = Date.now()): BacklogDetail {
  return {
    estimated: false,
    bytes: s.bytes,
    devices: s.devices,
    readAt: s.readAt,
    topDevices: s.top.map((d) => ({ deviceId: d.deviceId, records: d.records, bytes: d.bytes, oldestAgeSeconds: Math.max(0, Math.round((now - d.oldestReceivedAt) / 1000)) })),
  };
}

/** A monotonic total read from the gateway's own counters at scrape time. */
function totalFrom(registry: Registry, name: string, help: string, read: () => number): void {
  new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      this.reset();
      this.inc(read());
    },
  });
}

/**
 * Operations endpoint on its own port (loopback by default): `/healthz` for supervisors and
 * load balancers, `/status` as JSON, `/metrics` for Prometheus. Values are read at request time.
 */
export class AdminServer {
  private server: Server | undefined;
  private readonly registry = new Registry();
  private readonly inspector: BacklogInspector | undefined;
  private readonly batchSeconds: Histogram;
  private readonly status: () => GatewayStatus;
  /** The status of the scrapes under way (undefined between scrapes). */
  private scrapeStatus: GatewayStatus | undefined;
  private scrapes = 0;
  /** Mean payload bytes of recently forwarded records (undefined before the first batch). */
  private recordBytes: number | undefined;
  private readonly batchRecords: Histogram;

  constructor(private readonly options: AdminServerOptions) {
    const { registry } = this;
    collectDefaultMetrics({ register: registry });
    // One status for all the metrics of a scrape: each reads the log and walks the device table,
    // on the thread that acknowledges publishes. Requests (/healthz, /readyz, /status) read their own.
    const status = (): GatewayStatus => this.scrapeStatus ?? options.status();
    this.status = options.status;
    this.inspector = options.storageDir === undefined ? undefined : new BacklogInspector(options.storageDir);
    this.batchSeconds = new Histogram({
      name: 'edgebridge_forward_batch_duration_seconds',
      help: 'Forwarded batches: from reading the batch from the log to its Kafka transaction committed',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    });
    this.batchRecords = new Histogram({
      name: 'edgebridge_forward_batch_records',
      help: 'Records per forwarded batch (Kafka transaction)',
      buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
      registers: [registry],
    });
    new Counter({
      name: 'edgebridge_kafka_transactions_total',
      help: 'Kafka transactions by result: committed, or aborted (failed: aborted, or its outcome unknown and resolved from the checkpoint)',
      labelNames: ['result'],
      registers: [registry],
      collect() {
        this.reset();
        const s = status();
        this.inc({ result: 'committed' }, s.transactions);
        this.inc({ result: 'aborted' }, s.transactionsFailed);
      },
    });
    new Counter({
      name: 'edgebridge_route_received_total',
      help: 'Publishes stored in the commit log per route (MQTT pattern) and Kafka topic',
      labelNames: ['route', 'topic'],
      registers: [registry],
      collect() {
        this.reset();
        for (const r of status().routes) this.inc({ route: r.route, topic: r.topic }, r.stored);
      },
    });
    const backlogDetailOf = (s: GatewayStatus) => this.backlogDetailOf(s);
    new Gauge({
      name: 'edgebridge_backlog_bytes',
      help: 'Payload bytes of the records not yet committed to Kafka (read from the log at most every 5 s, longer for a long backlog)',
      registers: [registry],
      async collect() {
        const detail = await backlogDetailOf(status());
        // NaN, not 0, when not known yet (the first scan of a long backlog takes longer than a
        // scrape waits) or the log cannot be read (edgebridge_log_writable and /healthz say so)
        this.set(detail ? detail.bytes : Number.NaN);
      },
    });
    totalFrom(registry, 'edgebridge_received_total', 'Publishes committed to the commit log', () => status().received);
    // Each costs an fsync and a few pages of WAL whatever its size: received / this is the mean group.
    totalFrom(registry, 'edgebridge_group_commits_total', 'Commit log transactions (group commits; an fsync each with storage.synchronous: full)', () => status().groupCommits);
    totalFrom(registry, 'edgebridge_duplicates_total', 'Retransmits and replays dropped by dedup (acknowledged, not stored)', () => status().duplicates);
    totalFrom(registry, 'edgebridge_dedup_gaps_closed_total', 'Counter-dedup gaps closed by late readings in streams with 63 gaps: a reading sent into one later is dropped as a replay', () => status().dedupGapsClosed);
    totalFrom(registry, 'edgebridge_forwarder_restarts_total', 'Forwarder threads restarted after an unexpected exit (a bug: please report)', () => status().forwarderRestarts);
    totalFrom(registry, 'edgebridge_forwarded_total', 'Records committed to Kafka', () => status().forwarded);
    totalFrom(registry, 'edgebridge_refused_total', 'Publishes refused without acknowledgement (log write failed)', () => status().refused);
    totalFrom(registry, 'edgebridge_dropped_overflow_total', 'Unforwarded records dropped by overflow: drop-oldest', () => status().droppedOverflow);
    totalFrom(registry, 'edgebridge_dropped_expired_total', 'Unforwarded records dropped by storage.maxAge', () => status().droppedExpired);
    totalFrom(registry, 'edgebridge_records_expired_total', 'Records dropped because their MQTT 5 message expiry passed before they could be forwarded (never sent late)', () => status().recordsExpired);
    totalFrom(registry, 'edgebridge_dead_lettered_total', 'Records Kafka refused for good, written to the dead-letter topic', () => status().deadLettered);
    totalFrom(registry, 'edgebridge_dropped_rejected_total', 'Records Kafka refused for good, dropped (no dead-letter topic)', () => status().droppedRejected);
    new Counter({
      name: 'edgebridge_mqtt_refused_total',
      help: 'MQTT logins, connections, publishes and subscriptions refused or limited, by reason (see /status mqtt)',
      labelNames: ['reason'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(status().mqtt)) this.inc({ reason }, n);
      },
    });
    const commandEvents = { stored: 'stored', not_served: 'notServed', invalid: 'invalid', expired: 'expired', delivered: 'delivered', acked: 'acked' } as const;
    new Counter({
      name: 'edgebridge_commands_total',
      help: 'Commands from Kafka by event: stored (for a served device), not_served, invalid, expired (TTL), delivered (PUBACK by the device), acked (ack record in the log)',
      labelNames: ['event'],
      registers: [registry],
      collect() {
        this.reset();
        const c = status().commands;
        if (c) for (const [event, key] of Object.entries(commandEvents)) this.inc({ event }, c[key]);
      },
    });
    new Gauge({
      name: 'edgebridge_commands_pending',
      help: 'Commands in the gateway by state: waiting (for a persistent session of the device), in_session (sent or queued), to_ack (delivered, ack record to write)',
      labelNames: ['state'],
      registers: [registry],
      collect() {
        this.reset();
        const c = status().commands;
        if (c) {
          this.set({ state: 'waiting' }, c.waiting);
          this.set({ state: 'in_session' }, c.inSession);
          this.set({ state: 'to_ack' }, c.toAck);
        }
      },
    });
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name,
        help,
        registers: [registry],
        collect() {
          this.set(read());
        },
      });
    gauge('edgebridge_backlog_records', 'Records in the commit log not yet committed to Kafka', () => status().backlog);
    gauge('edgebridge_backlog_oldest_age_seconds', 'How long ago the oldest record not yet committed to Kafka was received (0 without a backlog)', () => status().backlogOldestAgeSeconds);
    gauge('edgebridge_storage_bytes', 'Bytes the commit log database uses', () => status().storageBytes);
    gauge('edgebridge_mqtt_clients', 'Connected MQTT clients (devices and other clients)', () => status().mqttClients);
    gauge('edgebridge_ready', '1 while the gateway is ready (/readyz): healthy, storing and forwarding to Kafka', () => (readinessOf(status()).ready ? 1 : 0));
    gauge('edgebridge_devices_active', 'Devices heard from within admin.silentAfter', () => status().devices.active);
    gauge('edgebridge_devices_silent', 'Known devices not heard from for longer than admin.silentAfter', () => status().devices.silent);
    gauge('edgebridge_acks_held', '1 while acknowledgements are held because storage.maxBytes is reached', () => (status().holding ? 1 : 0));
    gauge('edgebridge_publishes_waiting', 'Publishes waiting to be stored in the commit log', () => status().waiting);
    gauge('edgebridge_log_writable', '1 while the last write to the commit log succeeded', () => (status().logWritable ? 1 : 0));
    new Gauge({
      name: 'edgebridge_forwarder_state',
      help: 'Forwarder state (1 for the current one)',
      labelNames: ['state'],
      registers: [registry],
      collect() {
        const current = status().forwarder;
        for (const state of FORWARDER_STATES) this.set({ state }, state === current ? 1 : 0);
      },
    });
  }

  /** A committed transaction that carried records (from the forwarder thread). */
  observeBatch(batch: ForwardedBatch): void {
    this.batchSeconds.observe(batch.seconds);
    this.batchRecords.observe(batch.records);
    // mean payload bytes of the records forwarded lately: the estimate for a backlog in flight
    const mean = batch.bytes / batch.records;
    this.recordBytes = this.recordBytes === undefined ? mean : 0.9 * this.recordBytes + 0.1 * mean;
  }

  /** GET /status: the gateway's status and what its backlog is made of. */
  private async statusWithBacklog(): Promise<GatewayStatus & { backlogDetail?: BacklogDetail }> {
    const s = this.status();
    const detail = await this.backlogDetailOf(s);
    return detail === undefined ? s : { ...s, backlogDetail: detail };
  }

  /**
   * What the backlog of `s` is made of: a scan at most a few seconds old, waited for at most a
   * second (a scan of a long backlog takes longer: then the previous one). Never the bytes of a
   * backlog that is gone, nor none of one that is there.
   */
  private async backlogDetailOf(s: GatewayStatus): Promise<BacklogDetail | undefined> {
    const inspector = this.inspector;
    if (!inspector) return undefined;
    // No backlog: nothing to read (a gateway keeping up is at 0 most of the time).
    if (s.backlog === 0) return { bytes: 0, estimated: false, devices: 0, topDevices: [], readAt: Date.now() };
    const recordBytes = this.recordBytes;
    const estimate = (): BacklogDetail | undefined =>
      recordBytes === undefined ? undefined : { bytes: Math.round(s.backlog * recordBytes), estimated: true, devices: 0, topDevices: [], readAt: Date.now() };
    if (s.forwarder === 'forwarding' && s.backlogOldestAgeSeconds < IN_FLIGHT_SECONDS && recordBytes !== undefined) return estimate();
    // Of a backlog of about this size: within a factor of 2 (a slow scan of a long backlog is
    // reused for a while, but not once the drain has halved it).
    const agrees = (last: BacklogSummary) => last.records > 0 && s.backlog <= 2 * last.records && last.records <= 2 * s.backlog;
    let summary: BacklogSummary | undefined;
    try {
      const fresh = inspector.summary(BACKLOG_DETAIL_MAX_AGE_MS, agrees);
      fresh.catch(() => undefined); // answered later, or failed, after the wait below gave up
      let timer: NodeJS.Timeout | undefined;
      const waited = new Promise<undefined>((r) => {
        timer = setTimeout(() => r(undefined), BACKLOG_DETAIL_WAIT_MS);
        timer.unref();
      });
      summary = await Promise.race([fresh, waited]).finally(() => clearTimeout(timer));
      if (summary !== undefined && !agrees(summary)) summary = undefined; // a recent scan of another backlog
    } catch {
      // the log cannot be read: health says so
    }
    // The previous scan while a new one takes longer than the wait, if it is of this backlog and
    // not too old (a worker failing for good must not freeze the figure).
    const latest = inspector.latest;
    const latestAge = latest === undefined ? -1 : Date.now() - latest.readAt;
    summary ??= latest !== undefined && agrees(latest) && latestAge >= 0 && latestAge <= BACKLOG_DETAIL_FALLBACK_MS ? latest : undefined;
    if (summary !== undefined) return backlogDetail(summary);
    // None of this backlog yet (it grew fast, or the first scan of a long one is under way): its
    // bytes estimated as for a backlog in flight, the devices to follow.
    return estimate();
  }

  /** Name → type (counter, gauge, histogram...) of every metric /metrics serves: what dashboards may query. */
  metricTypes(): Map<string, string> {
    return new Map(this.registry.getMetricsAsArray().map((m) => [m.name, String(m.type)]));
  }

  async start(): Promise<AddressInfo> {
    const server = createServer((req, res) => {
      void this.handle(req.url ?? '/', req.method ?? 'GET').then(({ code, type, body }) => {
        res.writeHead(code, { 'content-type': type });
        res.end(body);
      });
    });
    this.server = server;
    const address = await listen(server, this.options.host, this.options.port, 'EB_ERR_ADMIN_LISTEN', 'the admin endpoint', (err) =>
      this.options.logger.error({ err: err.message }, 'admin endpoint error'),
    );
    this.options.logger.info({ host: address.address, port: address.port }, 'admin endpoint listening');
    return address;
  }

  private async handle(url: string, method: string): Promise<{ code: number; type: string; body: string }> {
    const json = (code: number, value: unknown) => ({ code, type: 'application/json', body: `${JSON.stringify(value)}\n` });
    if (method !== 'GET') return json(405, { error: 'only GET' });
    try {
      switch (url.split('?')[0]) {
        case '/':
          return { code: 200, type: 'text/html; charset=utf-8', body: STATUS_PAGE };
        case '/metrics': {
          if (this.scrapes++ === 0) this.scrapeStatus = this.options.status();
          try {
            return { code: 200, type: this.registry.contentType, body: await this.registry.metrics() };
          } finally {
            if (--this.scrapes === 0) this.scrapeStatus = undefined;
          }
        }
        case '/status':
          return json(200, await this.statusWithBacklog());
        case '/history':
          return json(200, { intervalSeconds: 5, samples: this.options.history?.() ?? [] });
        case '/healthz': {
          const s = this.status();
          // Unhealthy when this gateway cannot do its job without an operator (status.ts).
          const health = healthOf(s);
          return health.healthy
            ? json(200, { status: 'ok', forwarder: s.forwarder, backlog: s.backlog })
            : json(503, { status: health.status, gatewayId: s.gatewayId, reason: health.reason });
        }
        case '/readyz': {
          const s = this.status();
          // Ready when it does its whole job now: storing and forwarding (status.ts).
          const readiness = readinessOf(s);
          return readiness.ready
            ? json(200, { status: 'ready', backlog: s.backlog, backlogOldestAgeSeconds: s.backlogOldestAgeSeconds })
            : json(503, { status: readiness.status, gatewayId: s.gatewayId, reason: readiness.reason, backlog: s.backlog, backlogOldestAgeSeconds: s.backlogOldestAgeSeconds });
        }
        default:
          return json(404, { error: 'not found', endpoints: ['/', '/healthz', '/readyz', '/status', '/history', '/metrics'] });
      }
    } catch (err) {
      return json(500, { error: (err as Error).message });
    }
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    this.inspector?.close();
    if (server) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }
}
