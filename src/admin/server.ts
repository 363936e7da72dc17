import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { FORWARDER_STATES } from '../forward/forwarder.js';
import { listen } from '../listen.js';
import { healthOf, readinessOf, type GatewayStatus } from '../status.js';

export interface AdminServerOptions {
  readonly host: string;
  readonly port: number;
  readonly status: () => GatewayStatus;
  readonly logger: Logger;
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

  constructor(private readonly options: AdminServerOptions) {
    const { registry } = this;
    collectDefaultMetrics({ register: registry });
    const status = options.status;
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
    gauge('edgebridge_mqtt_clients', 'Connected MQTT clients', () => status().mqttClients);
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
        case '/metrics':
          return { code: 200, type: this.registry.contentType, body: await this.registry.metrics() };
        case '/status':
          return json(200, this.options.status());
        case '/healthz': {
          const s = this.options.status();
          // Unhealthy when this gateway cannot do its job without an operator (status.ts).
          const health = healthOf(s);
          return health.healthy
            ? json(200, { status: 'ok', forwarder: s.forwarder, backlog: s.backlog })
            : json(503, { status: health.status, gatewayId: s.gatewayId, reason: health.reason });
        }
        case '/readyz': {
          const s = this.options.status();
          // Ready when it does its whole job now: storing and forwarding (status.ts).
          const readiness = readinessOf(s);
          return readiness.ready
            ? json(200, { status: 'ready', backlog: s.backlog, backlogOldestAgeSeconds: s.backlogOldestAgeSeconds })
            : json(503, { status: readiness.status, gatewayId: s.gatewayId, reason: readiness.reason, backlog: s.backlog, backlogOldestAgeSeconds: s.backlogOldestAgeSeconds });
        }
        default:
          return json(404, { error: 'not found', endpoints: ['/healthz', '/readyz', '/status', '/metrics'] });
      }
    } catch (err) {
      return json(500, { error: (err as Error).message });
    }
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
