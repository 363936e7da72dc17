import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { AdminServer } from './admin/server.js';
import type { Config } from './config/schema.js';
import { FORWARD_POSITION, type ForwarderState } from './forward/forwarder.js';
import { ForwarderThread } from './forward/forwarder-thread.js';
import { MqttIngress } from './ingress/mqtt-ingress.js';
import { RouteTable } from './ingress/routes.js';
import { CommitLog } from './log/commit-log.js';
import { lockStorageDir, type DirLock } from './log/dir-lock.js';
import { GroupCommit } from './log/group-commit.js';
import { Retention } from './log/retention.js';
import { createLogger } from './logger.js';

export interface GatewayStatus {
  readonly gatewayId: string;
  readonly forwarder: ForwarderState;
  readonly mqttClients: number;
  /** Publishes committed to the log since start. */
  readonly received: number;
  /** Retransmits and replays recognised by dedup since start (acknowledged, not stored). */
  readonly duplicates: number;
  /** Records committed to Kafka since start. */
  readonly forwarded: number;
  /** Records in the log not yet committed to Kafka. */
  readonly backlog: number;
  readonly lastOffset: number;
  readonly forwardPosition: number;
  /** Publishes refused (not acknowledged) because the log could not store them. */
  readonly refused: number;
  /** True while acknowledgements are held because storage.maxBytes is reached. */
  readonly holding: boolean;
  readonly droppedOverflow: number;
  readonly droppedExpired: number;
  readonly storageBytes: number;
}

export interface GatewayOptions {
  readonly logger?: Logger;
  /** Interval of the periodic status line; 0 disables it. */
  readonly statusIntervalMs?: number;
}

/**
 * The one place where the stages meet. Lifecycle: open log -> start forwarder (it connects to
 * Kafka in the background, buffering meanwhile) -> open the MQTT listener. Shutdown runs in
 * reverse, once: stop accepting, finish the in-flight group commit, stop forwarding, close the DB.
 */
export class Gateway {
  private closing: Promise<void> | undefined;
  private readonly statusTimer: NodeJS.Timeout | undefined;

  private constructor(
    readonly config: Config,
    readonly logger: Logger,
    readonly log: CommitLog,
    readonly groupCommit: GroupCommit,
    private readonly retention: Retention,
    readonly forwarder: ForwarderThread,
    private readonly ingress: MqttIngress,
    readonly mqttAddress: AddressInfo,
    private readonly admin: AdminServer | undefined,
    private readonly lock: DirLock,
    /** Where /healthz, /status and /metrics are served (undefined when admin.enabled is false). */
    readonly adminAddress: AddressInfo | undefined,
    statusIntervalMs: number,
  ) {
    if (statusIntervalMs > 0) {
      this.statusTimer = setInterval(() => this.logger.info(this.status(), 'status'), statusIntervalMs);
      this.statusTimer.unref();
    }
  }

  static async start(config: Config, options: GatewayOptions = {}): Promise<Gateway> {
    const logger = options.logger ?? createLogger(config.log.level);
    const routes = new RouteTable(config.routes);
    const lock = lockStorageDir(config.storage.dir);
    let log: CommitLog;
    try {
      log = new CommitLog({ dir: config.storage.dir, synchronous: config.storage.synchronous });
    } catch (err) {
      lock.release();
      throw err;
    }
    logger.info(
      { file: log.file, lastOffset: log.lastOffset, logId: log.logId, synchronous: config.storage.synchronous },
      'commit log open',
    );
    const forwardPosition = () => log.position(FORWARD_POSITION);

    // The forwarder starts only once the listeners are bound: a second instance started by
    // mistake (its port taken) must not fence the running gateway's Kafka producer on its way out.
    let forwarder: ForwarderThread | undefined;
    const groupCommit = new GroupCommit(log, {
      maxBatch: config.storage.groupCommitMaxRecords,
      onCommit: (lastOffset) => forwarder?.notify(lastOffset),
      storage: { maxBytes: config.storage.maxBytes, overflow: config.storage.overflow, forwardPosition },
      logger: logger.child({ stage: 'log' }),
    });
    const retention = new Retention(log, {
      maxAgeMs: config.storage.maxAge,
      forwardPosition,
      groupCounters: groupCommit.counters,
      logger: logger.child({ stage: 'log' }),
    });

    const ingress = new MqttIngress({
      host: config.mqtt.host,
      port: config.mqtt.port,
      maxPayloadBytes: config.mqtt.maxPayloadBytes,
      routes,
      sink: groupCommit,
      logger: logger.child({ stage: 'ingress' }),
    });
    let address: AddressInfo;
    let admin: AdminServer | undefined;
    let adminAddress: AddressInfo | undefined;
    try {
      address = await ingress.start();
      if (config.admin.enabled) {
        admin = new AdminServer({
          host: config.admin.host,
          port: config.admin.port,
          // status() is defined on the instance created below; admin only calls it on requests
          status: () => gateway.status(),
          logger: logger.child({ stage: 'admin' }),
        });
        adminAddress = await admin.start();
      }
    } catch (err) {
      await ingress.close();
      groupCommit.close();
      retention.close();
      log.close();
      lock.release();
      throw err;
    }
    // Appends committed before this point are found by the worker when it opens the log.
    forwarder = new ForwarderThread({ config, logger, onRemoved: () => groupCommit.release() });
    logger.info(
      { gatewayId: config.gateway.id, routes: config.routes.length, brokers: config.kafka.brokers },
      'gateway started',
    );
    const gateway: Gateway = new Gateway(
      config,
      logger,
      log,
      groupCommit,
      retention,
      forwarder,
      ingress,
      address,
      admin,
      lock,
      adminAddress,
      options.statusIntervalMs ?? 60_000,
    );
    return gateway;
  }

  status(): GatewayStatus {
    return {
      gatewayId: this.config.gateway.id,
      forwarder: this.forwarder.state,
      mqttClients: this.ingress.connectedClients,
      received: this.ingress.counters.routed,
      duplicates: this.ingress.counters.duplicates + this.ingress.counters.qos2Duplicates,
      forwarded: this.forwarder.counters.forwarded,
      backlog: this.backlog(),
      lastOffset: this.log.lastOffset,
      forwardPosition: this.log.position(FORWARD_POSITION),
      refused: this.ingress.counters.refused,
      holding: this.groupCommit.holding,
      droppedOverflow: this.groupCommit.counters.droppedOverflow,
      droppedExpired: this.retention.counters.droppedExpired,
      storageBytes: this.log.usedBytes(),
    };
  }

  private backlog(): number {
    return Math.max(0, this.log.lastOffset - this.log.position(FORWARD_POSITION));
  }

  /** Shuts down once; later calls return the same promise. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    if (this.statusTimer) clearInterval(this.statusTimer);
    this.logger.info('gateway stopping');
    await this.admin?.close();
    await this.ingress.close();
    this.groupCommit.close();
    this.retention.close();
    await this.forwarder.close();
    const final = { lastOffset: this.log.lastOffset, backlog: this.backlog() };
    this.log.close();
    this.lock.release();
    this.logger.info(final, 'gateway stopped');
  }
}
