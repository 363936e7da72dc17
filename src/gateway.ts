import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { History } from './admin/history.js';
import { RecentErrors } from './admin/recent-errors.js';
import { AdminServer } from './admin/server.js';
import { CommandDelivery } from './commands/delivery.js';
import { authenticationConfigured, isLoopback, mqttListenHost, type Config } from './config/schema.js';
import { readCertificates, readKeyPair } from './config/files.js';
import { planReload, type ReloadPlan } from './config/reload.js';
import { EdgebridgeError, describeError } from './errors.js';
import { DrainProgress } from './forward/drain-progress.js';
import { ForwarderThread } from './forward/forwarder-thread.js';
import { readKafkaSecurity } from './forward/kafka-security.js';
import type { ForwardSettings } from './forward/settings.js';
import { AccessPolicy } from './ingress/access.js';
import { AclFile } from './ingress/auth/acl-file.js';
import { PasswordFile } from './ingress/auth/password-file.js';
import { Authenticator } from './ingress/authenticator.js';
import { MqttIngress, type IngressAddresses, type MqttIngressOptions } from './ingress/mqtt-ingress.js';
import { RouteTable } from './ingress/routes.js';
import { Traffic } from './ingress/traffic.js';
import { CommitLog } from './log/commit-log.js';
import { storageBudget } from './log/budget.js';
import { lockStorageDir, type DirLock } from './log/dir-lock.js';
import { GroupCommit, type AppendSink } from './log/group-commit.js';
import { Retention } from './log/retention.js';
import type { CommandOutbox } from './log/outbox.js';
import { SessionTables } from './log/session-tables.js';
import { createLogger } from './logger.js';
import { statusLine, type CommandStatus, type GatewayStatus } from './status.js';
import { YoungGenerationGovernor } from './young-generation.js';

export type { GatewayStatus } from './status.js';

/** How often the progress of a draining backlog is checked. */
const DRAIN_CHECK_MS = 2_000;

export interface GatewayOptions {
  /** Default: JSON lines on stdout at log.level, its problems shown on the status page. */
  readonly logger?: Logger;
  /** Interval of the periodic status line; 0 disables it. */
  readonly statusIntervalMs?: number;
}

/**
 * What the forwarder's thread is given: the forwarding part of the config, and every topic there
 * is something to forward to. That is the routes' topics and the topics of records already in
 * the log, which a route table changed since they were written may no longer name.
 */
export function forwardSettings(config: Config, log: CommitLog): ForwardSettings {
  const routeTopics = new RouteTable(config.routes).kafkaTopics;
  return {
    gatewayId: config.gateway.id,
    logLevel: config.log.level,
    storage: {
      dir: config.storage.dir,
      synchronous: config.storage.synchronous,
      walLimitBytes: storageBudget(config.storage.maxBytes, config.mqtt.maxPayloadBytes).walLimitBytes,
    },
    kafka: {
      brokers: config.kafka.brokers,
      clientId: config.kafka.clientId ?? `edgebridge-${config.gateway.id}`,
      compression: config.kafka.compression,
      connectionTimeoutMs: config.kafka.connectionTimeoutMs,
      requestTimeoutMs: config.kafka.requestTimeoutMs,
      topicDefaults: config.kafka.topicDefaults,
      // kafka.ssl / kafka.sasl files read here, in the main thread (EB_ERR_CONFIG_FILE if unreadable)
      security: readKafkaSecurity(config.kafka),
    },
    topics: [...new Set([...routeTopics, ...log.topics(), ...(config.commands ? [config.commands.acks] : [])])],
    checkpointTopic: config.forward.checkpointTopic,
    deadLetterTopic: config.forward.deadLetterTopic === false ? undefined : config.forward.deadLetterTopic,
    transactionTimeoutMs: config.forward.transactionTimeoutMs,
    batchMaxRecords: config.forward.batchMaxRecords,
    batchMaxBytes: config.forward.batchMaxBytes,
    commitIntervalMs: config.forward.commitIntervalMs,
    maxCommitDelayMs: config.forward.maxCommitDelayMs,
    commitMinRecords: config.forward.commitMinRecords,
    retry: config.forward.retry,
    commands:
      config.commands === undefined
        ? undefined
        : {
            topic: config.commands.kafka,
            groupId: commandGroupId(config.gateway.id),
            ttlMs: config.commands.ttl,
            maxPending: config.commands.maxPending,
            mqttTopic: config.commands.mqtt,
            replyTopic: config.commands.replies,
            limits: {
              maxTopicBytes: config.mqtt.limits.maxTopicBytes,
              maxTopicLevels: config.mqtt.limits.maxTopicLevels,
              maxPayloadBytes: config.mqtt.maxPayloadBytes,
            },
          },
  };
}

/**
 * Commands: delivery on the main thread (the consumer runs in the forwarder's thread). The devices
 * a gateway serves are those that connected to it and those its password file lists.
 */
function startCommands(
  config: Config,
  commands: NonNullable<Config['commands']>,
  ingress: MqttIngress,
  outbox: CommandOutbox,
  sink: AppendSink,
  logger: Logger,
): CommandDelivery {
  const delivery = new CommandDelivery({
    outbox,
    outlet: ingress.commandOutlet(),
    mqttTopic: commands.mqtt,
    ackTopic: commands.acks,
    replyTopic: commands.replies,
    gatewayId: config.gateway.id,
    appendAck: (entry) => new Promise((resolve, reject) => sink.append(entry, (err, result) => (err ? reject(err) : resolve(result!)))),
    logger,
  });
  const { passwordFile } = config.mqtt.auth;
  if (passwordFile !== undefined) delivery.serve(PasswordFile.load(passwordFile).users());
  ingress.attachCommands({
    delivered: () => delivery.delivered(),
    deviceReady: (ids) => {
      delivery.serve(ids);
      delivery.kick(ids);
    },
  });
  return delivery;
}

/** The command consumer's group: this gateway's own, so that it reads every partition. */
export function commandGroupId(gatewayId: string): string {
  return `edgebridge-commands-${gatewayId}`;
}

/**
 * The MQTT side of the config: listeners, who may log in (password file, client certificates),
 * what they may touch (own topics, ACL file) and the limits. Reads the password and ACL files.
 */
export function ingressOptions(
  config: Config,
  routes: RouteTable,
  sink: AppendSink,
  logger: Logger,
  sessionTables?: SessionTables,
): MqttIngressOptions {
  const { mqtt } = config;
  const host = mqttListenHost(mqtt);
  if (!authenticationConfigured(mqtt)) {
    if (mqtt.auth.allowAnonymous && !isLoopback(host)) {
      logger.warn({ host }, 'mqtt.auth.allowAnonymous: any client that reaches this address may publish and subscribe without logging in');
    } else if (!mqtt.auth.allowAnonymous) {
      logger.info({ host }, 'no MQTT authentication configured (mqtt.auth.passwordFile, mqtt.tls.requireCertificate): listening on loopback only');
    }
  }
  return {
    tcp: mqtt.port === false ? undefined : { host, port: mqtt.port },
    tls: mqtt.tls === undefined ? undefined : { ...mqtt.tls, host: mqtt.tls.host ?? host },
    websocket: mqtt.websocket === undefined ? undefined : { ...mqtt.websocket, host: mqtt.websocket.host ?? host },
    maxPayloadBytes: mqtt.maxPayloadBytes,
    routes,
    sink,
    logger,
    ...mqttAuth(config, routes),
    failedLoginMaxDelayMs: mqtt.auth.failedLoginMaxDelayMs,
    limits: mqtt.limits,
    sessionTables,
  };
}

/**
 * Reads and checks every file the config names (password and ACL files, TLS certificates and
 * keys on both sides, the Kafka password file), as a start would: `check-config` runs it so that
 * a wrong file is found before the gateway is restarted with it.
 */
export function checkConfigFiles(config: Config): void {
  mqttAuth(config, new RouteTable(config.routes));
  const { tls } = config.mqtt;
  if (tls) {
    readKeyPair({ key: 'mqtt.tls.certFile', file: tls.certFile }, { key: 'mqtt.tls.keyFile', file: tls.keyFile });
    if (tls.caFile !== undefined) readCertificates('mqtt.tls.caFile', tls.caFile);
  }
  readKafkaSecurity(config.kafka);
}

/** Who may log in and what they may touch: reads the password and ACL files. */
function mqttAuth(config: Config, routes: RouteTable): { authenticator: Authenticator; access: AccessPolicy } {
  const { auth } = config.mqtt;
  const authenticated = authenticationConfigured(config.mqtt);
  const passwords = auth.passwordFile === undefined ? undefined : PasswordFile.load(auth.passwordFile);
  const acl = auth.aclFile === undefined ? undefined : AclFile.load(auth.aclFile);
  return {
    authenticator: new Authenticator({ passwords, authenticated, allowAnonymous: auth.allowAnonymous }),
    access: new AccessPolicy({ routes, acl, authenticated }),
  };
}

/**
 * The one place where the stages meet. Lifecycle: open log -> open the MQTT listener -> start
 * forwarder (it connects to Kafka in the background, buffering meanwhile). Shutdown runs in
 * reverse, once: stop accepting, finish the in-flight group commit, stop forwarding, close the DB.
 */
export class Gateway {
  private closing: Promise<void> | undefined;
  private readonly statusTimer: NodeJS.Timeout | undefined;
  private readonly drainTimer: NodeJS.Timeout;
  /** The last minutes of figures, for the status page's chart. */
  readonly history: History;
  private readonly startedAt = Date.now();
  /** Lets V8 grow its young generations only while records are stored or forwarded at a high rate. */
  private readonly youngGeneration: YoungGenerationGovernor;
  /** The storage budget was sized for publishes this large: a reload may lower the bound, not raise it. */
  private readonly maxPayloadBytesAtStart: number;

  private constructor(
    /** The config in force: as started, with what reloads applied. */
    private configInForce: Config,
    readonly logger: Logger,
    readonly log: CommitLog,
    private readonly sessionTables: SessionTables,
    readonly groupCommit: GroupCommit,
    private readonly logHealth: { failure: EdgebridgeError | null },
    private readonly retention: Retention,
    readonly forwarder: ForwarderThread,
    private readonly ingress: MqttIngress,
    private readonly commands: CommandDelivery | undefined,
    /** Where the MQTT listeners are bound. */
    readonly mqttAddresses: IngressAddresses,
    private readonly admin: AdminServer | undefined,
    private readonly lock: DirLock,
    /** Where /healthz, /status and /metrics are served (undefined when admin.enabled is false). */
    readonly adminAddress: AddressInfo | undefined,
    private readonly traffic: Traffic,
    private readonly recentErrors: RecentErrors,
    private readonly drainProgress: DrainProgress,
    statusIntervalMs: number,
  ) {
    if (statusIntervalMs > 0) {
      this.statusTimer = setInterval(() => this.logger.info(statusLine(this.status()), 'status'), statusIntervalMs);
      this.statusTimer.unref();
    }
    this.drainTimer = setInterval(() => this.followDrain(), DRAIN_CHECK_MS);
    this.drainTimer.unref();
    this.history = new History(() => this.figures());
    this.youngGeneration = new YoungGenerationGovernor(() => groupCommit.counters.appended + forwarder.counters.forwarded);
    this.maxPayloadBytesAtStart = configInForce.mqtt.maxPayloadBytes;
  }

  get config(): Config {
    return this.configInForce;
  }

  /** The plain TCP listener's address, else the TLS listener's, else the WebSocket one's. */
  get mqttAddress(): AddressInfo {
    return (this.mqttAddresses.tcp ?? this.mqttAddresses.tls ?? this.mqttAddresses.websocket)!;
  }

  static async start(config: Config, options: GatewayOptions = {}): Promise<Gateway> {
    const recentErrors = new RecentErrors();
    const logger = options.logger ?? createLogger(config.log.level, 'edgebridge', recentErrors);
    const routes = new RouteTable(config.routes);
    const traffic = new Traffic({ silentAfterMs: config.admin.silentAfter });
    const lock = lockStorageDir(config.storage.dir);
    const budget = storageBudget(config.storage.maxBytes, config.mqtt.maxPayloadBytes);
    let log: CommitLog | undefined;
    let sessionTables: SessionTables | undefined;
    let settings: ForwardSettings;
    try {
      log = new CommitLog({ dir: config.storage.dir, synchronous: config.storage.synchronous, walLimitBytes: budget.walLimitBytes });
      sessionTables = new SessionTables(log.file, { busyTimeoutMs: 1000, walLimitBytes: budget.walLimitBytes });
      log.pruneTopics(routes.kafkaTopics);
      // Reads the Kafka TLS and SASL files: a missing one stops the start before anything listens.
      // The topics of records appended later, under the current routes, are in it already.
      settings = forwardSettings(config, log);
    } catch (err) {
      sessionTables?.close();
      log?.close();
      lock.release();
      throw err;
    }
    if (config.kafka.sasl !== undefined && config.kafka.ssl === false) {
      logger.warn(
        { mechanism: config.kafka.sasl.mechanism },
        config.kafka.sasl.mechanism === 'plain'
          ? 'kafka.sasl PLAIN without kafka.ssl: the Kafka password and all records cross the network in the clear'
          : 'kafka.sasl without kafka.ssl: records cross the network to Kafka unencrypted',
      );
    }
    logger.info(
      { file: log.file, lastOffset: log.lastOffset, logId: log.logId, epoch: log.epoch.id, synchronous: config.storage.synchronous },
      'commit log open',
    );
    const forwardPosition = () => log.forwardPosition();
    const logLogger = logger.child({ stage: 'log' });

    // The forwarder starts only once the listeners are bound: a second instance started by
    // mistake (its port taken) must not fence the running gateway's Kafka producer on its way out.
    let forwarder: ForwarderThread | undefined;
    const logHealth: { failure: EdgebridgeError | null } = { failure: null };
    const groupCommit = new GroupCommit(log, {
      maxBatch: config.storage.groupCommitMaxRecords,
      minIntervalMs: config.storage.groupCommitIntervalMs,
      maxBatchBytes: budget.maxTransactionBytes,
      maxPending: config.storage.maxQueuedRecords,
      maxPendingBytes: config.storage.maxQueuedBytes,
      onCommit: (lastOffset) => forwarder?.notify(lastOffset),
      // One line per change of state, never one per refused message.
      onWriteResult: (err) => {
        if (err && !logHealth.failure) {
          logLogger.error(
            { err: describeError(err), code: err.code },
            err.code === 'EB_ERR_LOG_CORRUPT'
              ? 'commit log is corrupt: publishes are refused (no PUBACK); stop the gateway, it checks and moves the file aside on the next start'
              : 'commit log cannot store messages: publishes are refused (no PUBACK) until it recovers',
          );
        } else if (!err && logHealth.failure) {
          logLogger.info('commit log stores messages again');
        }
        logHealth.failure = err;
      },
      storage: { recordBytes: budget.recordBytes, overflow: config.storage.overflow, forwardPosition, forwardBatchRecords: config.forward.batchMaxRecords },
      logger: logLogger,
    });
    const retention = new Retention(log, {
      maxAgeMs: config.storage.maxAge,
      forwardPosition,
      groupCounters: groupCommit.counters,
      logger: logLogger,
      forwardBatchRecords: config.forward.batchMaxRecords,
    });

    let ingress: MqttIngress | undefined;
    let addresses: IngressAddresses;
    let admin: AdminServer | undefined;
    let adminAddress: AddressInfo | undefined;
    let commands: CommandDelivery | undefined;
    try {
      ingress = new MqttIngress({
        ...ingressOptions(config, routes, groupCommit, logger.child({ stage: 'ingress' }), sessionTables),
        onStored: (match, duplicate) => traffic.heard(match.route.pattern, match.route.kafkaTopic, match.deviceId, duplicate),
      });
      if (config.commands) traffic.know(sessionTables.outbox.servedDevices(traffic.maxDevices));
      if (config.commands) commands = startCommands(config, config.commands, ingress, sessionTables.outbox, groupCommit, logger.child({ stage: 'commands' }));
      addresses = await ingress.start();
      if (config.admin.enabled) {
        admin = new AdminServer({
          host: config.admin.host,
          port: config.admin.port,
          // status() is defined on the instance created below; admin only calls it on requests
          status: () => gateway.status(),
          history: () => gateway.history.list(),
          storageDir: config.storage.dir,
          logger: logger.child({ stage: 'admin' }),
        });
        adminAddress = await admin.start();
      }
    } catch (err) {
      await commands?.close();
      await ingress?.close();
      await admin?.close();
      groupCommit.close();
      retention.close();
      sessionTables.close();
      log.close();
      lock.release();
      throw err;
    }
    // Appends committed before this point are found by the worker when it opens the log.
    forwarder = new ForwarderThread({
      settings,
      logger,
      onRemoved: () => groupCommit.release(),
      onCommands: (result) => commands?.stored(result),
      onBatch: (batch) => admin?.observeBatch(batch),
    });
    logger.info(
      { gatewayId: config.gateway.id, routes: config.routes.length, brokers: config.kafka.brokers },
      'gateway started',
    );
    const gateway: Gateway = new Gateway(
      config,
      logger,
      log,
      sessionTables,
      groupCommit,
      logHealth,
      retention,
      forwarder,
      ingress,
      commands,
      addresses,
      admin,
      lock,
      adminAddress,
      traffic,
      recentErrors,
      new DrainProgress({ logger: logger.child({ stage: 'forward' }) }),
      options.statusIntervalMs ?? 60_000,
    );
    return gateway;
  }

  status(): GatewayStatus {
    const counters = this.forwarder.counters;
    let forwardPosition = 0;
    let storageBytes = 0;
    let oldestAt: number | undefined;
    let readError = '';
    try {
      forwardPosition = this.log.forwardPosition();
      storageBytes = this.log.usedBytes();
      oldestAt = this.log.oldestReceivedAfter(forwardPosition);
    } catch (err) {
      // A log that cannot even be read is not writable either: health says so (503), not 500.
      readError = describeError(err);
    }
    return {
      gatewayId: this.config.gateway.id,
      forwarder: this.forwarder.state,
      forwarderError: this.forwarder.state === 'forwarding' ? '' : this.forwarder.lastErrorMessage,
      logWritable: this.logHealth.failure === null && readError === '',
      logError: this.logHealth.failure?.message ?? readError,
      mqttClients: this.ingress.connectedClients,
      received: this.ingress.counters.routed,
      groupCommits: this.groupCommit.counters.groups,
      duplicates: this.ingress.counters.duplicates + this.ingress.counters.qos2Duplicates,
      dedupGapsClosed: this.log.dedupGapsClosed,
      forwarderRestarts: this.forwarder.restartCount,
      forwarded: counters.forwarded,
      backlog: Math.max(0, this.log.lastOffset - forwardPosition),
      backlogOldestAgeSeconds: oldestAt === undefined ? 0 : Math.max(0, (Date.now() - oldestAt) / 1000),
      lastOffset: this.log.lastOffset,
      forwardPosition,
      refused: this.ingress.counters.refused,
      holding: this.groupCommit.holding,
      waiting: this.groupCommit.waiting,
      droppedOverflow: this.groupCommit.counters.droppedOverflow,
      droppedExpired: this.retention.counters.droppedExpired,
      recordsExpired: counters.expired + this.log.messageExpiredDropped,
      deadLettered: counters.deadLettered,
      droppedRejected: counters.droppedRejected,
      storageBytes,
      mqtt: this.ingress.refusals(),
      ...(this.commands === undefined ? {} : { commands: this.commandStatus(this.commands) }),
      startedAt: this.startedAt,
      transactions: counters.transactions,
      transactionsFailed: counters.transactionsFailed,
      drain: this.drainProgress.drain ?? null,
      devices: this.traffic.activity(),
      routes: this.traffic.routeTraffic(),
      errors: this.recentErrors.list(),
    };
  }

  /** The few figures the chart and the drain follow: cheaper than the whole status. */
  private figures(): { received: number; forwarded: number; backlog: number; backlogOldestAgeSeconds: number; mqttClients: number; forwarder: string } {
    let backlog = 0;
    let backlogOldestAgeSeconds = 0;
    try {
      const position = this.log.forwardPosition();
      backlog = Math.max(0, this.log.lastOffset - position);
      const oldestAt = backlog > 0 ? this.log.oldestReceivedAfter(position) : undefined;
      backlogOldestAgeSeconds = oldestAt === undefined ? 0 : Math.max(0, (Date.now() - oldestAt) / 1000);
    } catch {
      // the log cannot be read: status() and health say so
    }
    return {
      received: this.ingress.counters.routed,
      forwarded: this.forwarder.counters.forwarded,
      backlog,
      backlogOldestAgeSeconds,
      mqttClients: this.ingress.connectedClients,
      forwarder: this.forwarder.state,
    };
  }

  /** Logs the progress of a backlog being forwarded (start, done/total/rate/ETA, end). */
  private followDrain(): void {
    const s = this.figures();
    this.drainProgress.update({
      forwarding: s.forwarder === 'forwarding',
      backlog: s.backlog,
      backlogOldestAgeSeconds: s.backlogOldestAgeSeconds,
      forwarded: s.forwarded,
      received: s.received,
    });
  }

  private commandStatus(commands: CommandDelivery): CommandStatus {
    let now = { waiting: 0, inSession: 0, toAck: 0 };
    try {
      now = commands.pending();
    } catch {
      // the database cannot be read: health says so (logWritable); the counts stay 0
    }
    return { ...now, ...commands.counters };
  }

  /**
   * Re-reads the password and ACL files (SIGHUP). A file that no longer parses leaves the current
   * ones in force; the error is returned and logged.
   */
  reloadAuth(): EdgebridgeError | undefined {
    try {
      this.applyAuth(this.config, new RouteTable(this.config.routes));
      this.logger.info({ passwordFile: this.config.mqtt.auth.passwordFile, aclFile: this.config.mqtt.auth.aclFile }, 'MQTT password and ACL files reloaded');
      return undefined;
    } catch (err) {
      const error = err instanceof EdgebridgeError ? err : new EdgebridgeError('EB_ERR_AUTH_FILE', describeError(err), { cause: err });
      this.logger.error({ code: error.code, err: error.message }, 'MQTT password or ACL file not reloaded: the previous ones stay in force');
      return error;
    }
  }

  /**
   * Reloads the config (SIGHUP): `read` loads and validates it as at start. Routes, the live
   * limits and log.level are applied in place, and the password and ACL files re-read; no MQTT
   * connection is closed. Other changed keys are logged as needing a restart. A config or file
   * that does not load changes nothing: the error is logged and returned.
   */
  reload(read: () => Config): ReloadPlan | EdgebridgeError {
    let plan: ReloadPlan;
    let routes: RouteTable;
    try {
      plan = planReload(this.config, read(), this.maxPayloadBytesAtStart);
      routes = new RouteTable(plan.config.routes);
      // Reads the password and ACL files first: a broken one stops the reload before anything changed.
      this.applyAuth(plan.config, routes);
    } catch (err) {
      const error = err instanceof EdgebridgeError ? err : new EdgebridgeError('EB_ERR_CONFIG_INVALID', describeError(err), { cause: err });
      this.logger.error({ code: error.code, err: error.message }, 'config not reloaded: the running config stays in force');
      return error;
    }
    this.configInForce = plan.config;
    // A record is stored with its Kafka topic; the forwarder creates a topic it does not know yet
    // when it first sends to it (KafkaSink.send), so a new route needs nothing more.
    this.ingress.replaceRoutes(routes);
    this.ingress.replaceLimits(plan.config.mqtt.limits, plan.config.mqtt.maxPayloadBytes);
    this.logger.level = plan.config.log.level;
    this.forwarder.setLogLevel(plan.config.log.level);
    this.traffic.silentAfterMs = plan.config.admin.silentAfter;
    this.traffic.keepRoutes(plan.config.routes);
    if (plan.needRestart.length > 0) this.logger.warn({ changed: plan.needRestart }, 'config changed: restart to apply');
    const { passwordFile, aclFile } = plan.config.mqtt.auth;
    this.logger.info({ applied: plan.applied, passwordFile, aclFile }, 'config reloaded');
    return plan;
  }

  /** Reads the password and ACL files of `config` and puts them in force with `routes`. */
  private applyAuth(config: Config, routes: RouteTable): void {
    const { authenticator, access } = mqttAuth(config, routes);
    // Users added to the password file are served devices from now on (commands).
    const { passwordFile } = config.mqtt.auth;
    const served = this.commands && passwordFile !== undefined ? PasswordFile.load(passwordFile).users() : [];
    // The database write first: when it fails, nothing has changed (serving a user the old file
    // does not list yet lets no one in).
    this.commands?.serve(served);
    this.ingress.replaceAuth(authenticator, access);
  }

  /** Shuts down once; later calls return the same promise. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    if (this.statusTimer) clearInterval(this.statusTimer);
    clearInterval(this.drainTimer);
    this.history.close();
    this.youngGeneration.close();
    this.logger.info('gateway stopping');
    await this.admin?.close();
    await this.commands?.close();
    await this.ingress.close();
    this.sessionTables.close();
    this.groupCommit.close();
    this.retention.close();
    await this.forwarder.close();
    const final = { lastOffset: this.log.lastOffset, backlog: Math.max(0, this.log.lastOffset - this.log.forwardPosition()) };
    this.log.close();
    this.lock.release();
    this.logger.info(final, 'gateway stopped');
  }
}
