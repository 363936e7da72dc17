import { z } from 'zod';
import { compileRoute } from '../ingress/routes.js';
import { EMPTY_LOG_BYTES, storageBudget } from '../log/budget.js';
import { parseBytes, parseDurationMs } from './units.js';

/** A size: bytes as a number, or a string with a unit ("512MB", "1GiB"). */
const bytes = (min = 0) => {
  const message = `must be a size of at least ${min} bytes, e.g. 1048576, "512MB" or "1GiB"`;
  return z.union([z.number(), z.string()], { error: message }).transform((value, ctx) => {
    const n = parseBytes(value);
    if (n === undefined || n < min) {
      ctx.addIssue({ code: 'custom', message });
      return z.NEVER;
    }
    return n;
  });
};

/** A duration: milliseconds as a number, or a string with a unit ("100ms", "30s", "24h", "7d"). */
const duration = (min = 0) => {
  const message = `must be a duration of at least ${min} ms, e.g. 500, "30s", "24h" or "7d"`;
  return z.union([z.number(), z.string()], { error: message }).transform((value, ctx) => {
    const n = parseDurationMs(value);
    if (n === undefined || n < min) {
      ctx.addIssue({ code: 'custom', message });
      return z.NEVER;
    }
    return n;
  });
};

/**
 * The one config schema: unknown keys are rejected, every default lives here (with its unit in the
 * key name), and the validated result is frozen. docs/configuration.md describes each key.
 */
const kafkaTopicName = z
  .string()
  .regex(/^[a-zA-Z0-9._-]{1,249}$/, 'must be a Kafka topic name: 1-249 of a-z A-Z 0-9 . _ -');

const dedup = z
  .strictObject({
    /**
     * Payload fields (top-level JSON) that, with the device ID, identify a reading. A payload
     * that lacks any of them has no identity: it is deduplicated only on MQTT DUP retransmits.
     */
    fields: z.array(z.string().min(1)).default(['bootId', 'seq']),
    /**
     * `window`: when the last field is a non-negative integer counter, a stream (route, device,
     * the other fields) remembers the counters stored as ranges: O(streams) state. `exact`: an
     * index entry per reading (any out-of-order arrival, at a write per reading). Unset: `window`
     * with two or more fields (a boot id and a counter), `exact` with one (a lone id field is
     * often no counter: a random message id, or a counter that restarts at boot).
     */
    mode: z.enum(['window', 'exact']).optional(),
    /** How long a reading's identity is remembered. */
    window: duration(1000).default(24 * 3600e3),
    /**
     * How long a packet is remembered for DUP-only dedup (payloads without all identity fields).
     * Short, because packet ids are reused: a retransmit comes within a reconnect, not a day later.
     */
    retransmitWindow: duration(1000).default(600_000),
  })
  .prefault({});

const route = z
  .strictObject({
    mqtt: z.string().min(1),
    kafka: kafkaTopicName,
    /** Drop device retransmits and firmware replays; `false` turns it off for this route. */
    dedup: z
      .union([z.literal(false), dedup])
      .default(() => ({ fields: ['bootId', 'seq'], window: 24 * 3600e3, retransmitWindow: 600_000 })),
    /** Keep only the latest not-yet-forwarded message per device (state-like topics). */
    compact: z.boolean().default(false),
  })
  .superRefine((value, ctx) => {
    try {
      compileRoute(value);
    } catch (err) {
      ctx.addIssue({ code: 'custom', path: ['mqtt'], message: (err as Error).message });
    }
  });

const port = z.number().int().min(0).max(65535);

const tlsListener = z
  .strictObject({
    /** Address of the TLS listener (default: like mqtt.host). */
    host: z.string().min(1).optional(),
    port: port.default(8883),
    /** PEM server certificate (chain) and its private key. */
    certFile: z.string().min(1),
    keyFile: z.string().min(1),
    /** PEM CA bundle that client certificates must chain to. */
    caFile: z.string().min(1).optional(),
    /** Refuse clients without a valid certificate (mutual TLS); needs caFile. */
    requireCertificate: z.boolean().default(false),
    /** The certificate's CN is the client's identity (username); no password is asked. */
    useIdentityAsUsername: z.boolean().default(false),
  })
  .superRefine((tls, ctx) => {
    if (tls.requireCertificate && tls.caFile === undefined) {
      ctx.addIssue({ code: 'custom', path: ['caFile'], message: 'is required with requireCertificate: the CA that client certificates must chain to' });
    }
    if (tls.useIdentityAsUsername && !tls.requireCertificate) {
      ctx.addIssue({ code: 'custom', path: ['useIdentityAsUsername'], message: 'needs requireCertificate: true (the identity comes from a verified client certificate)' });
    }
  });

const kafkaSsl = z.strictObject({
  /** PEM CA bundle of the brokers' certificates (default: the system's CAs). */
  caFile: z.string().min(1).optional(),
  /** PEM client certificate and key, for brokers that require mutual TLS. */
  certFile: z.string().min(1).optional(),
  keyFile: z.string().min(1).optional(),
  /** Verify the brokers' certificates and host names (turn off only for tests). */
  rejectUnauthorized: z.boolean().default(true),
  /** Host name to verify instead of the one in kafka.brokers. */
  servername: z.string().min(1).optional(),
});

const kafkaSasl = z
  .strictObject({
    mechanism: z.enum(['plain', 'scram-sha-256', 'scram-sha-512']),
    username: z.string().min(1),
    /** Prefer passwordFile or EDGEBRIDGE_KAFKA_SASL_PASSWORD: config files get copied around. */
    password: z.string().min(1).optional(),
    /** File holding the password (trailing newline ignored). */
    passwordFile: z.string().min(1).optional(),
  })
  .superRefine((sasl, ctx) => {
    if ((sasl.password === undefined) === (sasl.passwordFile === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['password'], message: 'give exactly one of password (or EDGEBRIDGE_KAFKA_SASL_PASSWORD) and passwordFile' });
    }
  });

export const configSchema = z.strictObject({
  gateway: z.strictObject({
    /** Stable identity of this gateway: the gateway-id header, and later the transactional id. */
    id: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'must be 1-64 of A-Z a-z 0-9 . _ -'),
  }),
  mqtt: z
    .strictObject({
      /**
       * Address of the plain TCP listener. Unset: loopback (127.0.0.1) unless authentication is
       * configured, then every address (0.0.0.0), like Mosquitto 2's local-only default.
       */
      host: z.string().min(1).optional(),
      /** Plain MQTT over TCP; `false` turns the listener off (TLS only). */
      port: z.union([port, z.literal(false)], { error: 'must be a port number 0-65535, or false to turn the plain TCP listener off' }).default(1883),
      /** Larger publishes are refused (the client is disconnected) so one cannot block forwarding. */
      maxPayloadBytes: bytes(1).default(256 * 1024),
      tls: tlsListener.optional(),
      /** MQTT over WebSocket (for browser dashboards; put TLS in front with a reverse proxy). */
      websocket: z
        .strictObject({
          /** Address (default: like mqtt.host). */
          host: z.string().min(1).optional(),
          port: port.default(9001),
          path: z.string().regex(/^\/[^\s?#]*$/, 'must be a URL path, e.g. /mqtt').default('/mqtt'),
        })
        .optional(),
      auth: z
        .strictObject({
          /** Mosquitto password file (`mosquitto_passwd` or `edgebridge passwd`): `user:$7$...` lines. */
          passwordFile: z.string().min(1).optional(),
          /** Mosquitto ACL file: `user`, `topic [read|write|readwrite|deny] T`, `pattern ... %c %u`. */
          aclFile: z.string().min(1).optional(),
          /** Accept clients without credentials (no identity: only the ACL file's anonymous lines apply). */
          allowAnonymous: z.boolean().default(false),
          /** Failed logins of one username from one address are answered ever more slowly, up to this. */
          failedLoginMaxDelayMs: duration(0).default(10_000),
        })
        .prefault({}),
      limits: z
        .strictObject({
          /** Most concurrent MQTT connections per listener; more are closed at once. */
          maxConnections: z.number().int().min(1).default(10_000),
          /** Longest topic name or filter, in UTF-8 bytes. */
          maxTopicBytes: z.number().int().min(16).max(65535).default(1024),
          /** Most levels in a topic name or filter. */
          maxTopicLevels: z.number().int().min(1).max(100).default(32),
          /**
           * Publishes per second one client may send (token bucket, bursts of one second's worth);
           * a faster client is slowed (its socket is not read), not disconnected. 0: unlimited.
           */
          publishRatePerSecond: z.number().int().min(0).default(1000),
          /**
           * Inbound QoS 2 publishes awaiting PUBREL (per connection, and per session across
           * reconnects); more close the connection. MQTT 5 clients are told it as Receive Maximum
           * (QoS 1 and 2 publishes not yet acknowledged); one that sends more is disconnected
           * with reason code 0x93.
           */
          maxInflightMessages: z.number().int().min(1).max(65535).default(1000),
          /**
           * MQTT 5 topic aliases a client may set up per connection (Topic Alias Maximum in
           * CONNACK): a publish may name its topic by a number, saving bytes on metered links. 0: none.
           */
          maxTopicAliases: z.number().int().min(0).max(65535).default(10),
          /** Messages queued for one subscriber (offline persistent sessions included); older ones are dropped. */
          maxQueuedMessages: z.number().int().min(1).default(1000),
          /** Retained messages kept (local broker traffic); more are refused. */
          maxRetainedMessages: z.number().int().min(0).default(10_000),
          /**
           * Bytes of local-traffic messages held in memory: retained and queued for subscribers
           * (Mosquitto's memory_limit). Over it, such messages are not kept.
           */
          maxSessionBytes: bytes(1024 * 1024).default(64 * 1024 * 1024),
          /** Distinct filters one connection may subscribe to; more get return code 0x80. */
          maxSubscriptions: z.number().int().min(1).default(100),
          /** A connection that sends no CONNECT within this is closed. */
          connectTimeoutMs: duration(100).default(10_000),
          /**
           * MQTT 5: longest Session Expiry Interval a client gets (a longer one, 0xFFFFFFFF "never"
           * included, is cut to this and the CONNACK says so). 3.1.1 persistent sessions are not
           * bounded by it (kept until a clean connect). 0: no bound.
           */
          maxSessionExpiry: duration(0).default(7 * 86400e3),
          /**
           * MQTT 5: most disconnected v5 sessions waiting for their expiry at once; a session that
           * disconnects past it ends at once. 0: unlimited.
           */
          maxPendingSessions: z.number().int().min(0).default(100_000),
        })
        .prefault({}),
    })
    .prefault({}),
  kafka: z.strictObject({
    /** TLS to the brokers: `true` (system CAs) or files; off by default. */
    ssl: z.union([z.boolean(), kafkaSsl]).default(false),
    /** SASL authentication (over TLS unless the brokers' listener is SASL_PLAINTEXT). */
    sasl: kafkaSasl.optional(),
    brokers: z.array(z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):\d{1,5}$/, 'must be host:port (IPv6 as [addr]:port)')).min(1),
    clientId: z.string().min(1).optional(),
    /**
     * How record batches are compressed on the way to Kafka: bytes on a metered uplink against
     * CPU on the gateway. lz4 and zstd are pure JavaScript / WebAssembly (nothing native).
     */
    compression: z.enum(['none', 'gzip', 'lz4', 'zstd']).default('none'),
    connectionTimeoutMs: z.number().int().positive().default(3000),
    requestTimeoutMs: z.number().int().positive().default(30000),
    /** Used when the gateway creates a missing target topic. */
    topicDefaults: z
      .strictObject({
        partitions: z.number().int().min(1).default(3),
        replicationFactor: z.number().int().min(1).default(1),
      })
      .prefault({}),
  }),
  forward: z
    .strictObject({
      /** Most log records in one Kafka transaction. */
      batchMaxRecords: z.number().int().min(1).max(100000).default(5000),
      /** Most payload bytes in one Kafka transaction (keep below the broker's message.max.bytes). */
      batchMaxBytes: bytes(1024).default(900_000),
      /** Shortest time between two transactions while records flow at rate (a full batch goes at once). */
      commitIntervalMs: duration(0).default(100),
      /**
       * Longest a record waits for its transaction while records trickle (fewer than
       * commitMinRecords waiting): the latency bound of the adaptive commit interval. At least
       * commitIntervalMs (a smaller value is raised to it).
       */
      maxCommitDelayMs: duration(0).default(1000),
      /** Records waiting that make a transaction worth committing before maxCommitDelayMs. */
      commitMinRecords: z.number().int().min(1).max(100000).default(100),
      /**
       * Names the checkpoint groups' offsets (each gateway's checkpoint is a transactional offset
       * commit of its group edgebridge-checkpoint-<id>-offsets); earlier versions wrote checkpoint
       * records here, read once on upgrade. Created if missing (compacted).
       */
      checkpointTopic: kafkaTopicName.default('edgebridge.checkpoints'),
      /**
       * Where a record goes that Kafka refuses for good (MESSAGE_TOO_LARGE, INVALID_RECORD,
       * INVALID_TIMESTAMP), with the reason in its headers; `false`: such records are dropped,
       * counted and logged. Never retried unchanged: it would stop its partition for good.
       */
      deadLetterTopic: z.union([z.literal(false), kafkaTopicName]).default('edgebridge.dead-letter'),
      /** Kafka transaction timeout: a crashed gateway's open transaction is aborted after this. */
      transactionTimeoutMs: duration(1000).default(60_000),
      retry: z
        .strictObject({
          initialMs: z.number().int().positive().default(250),
          maxMs: z.number().int().positive().default(30000),
        })
        .prefault({}),
    })
    .prefault({}),
  /**
   * Commands from Kafka to devices (off when absent): read from `kafka` (keyed by device ID) by
   * a consumer group of this gateway's own, kept for the devices it serves, delivered with QoS 1
   * on `mqtt`, and acknowledged to `acks` when the device PUBACKs.
   */
  commands: z
    .strictObject({
      kafka: kafkaTopicName.default('iot.commands'),
      /** The MQTT topic of a device's commands: {deviceId}, and optionally {correlationId}. */
      mqtt: z
        .string()
        .default('devices/{deviceId}/commands')
        .refine((t) => t.includes('{deviceId}'), 'must contain {deviceId}')
        .refine((t) => !/[+#\u0000]/.test(t) && !t.startsWith('$'), 'must be a topic name: no wildcards (+ #), no U+0000, not under $'),
      acks: kafkaTopicName.default('iot.command-acks'),
      /**
       * MQTT 5: the Response Topic a command carries (where its device publishes its reply):
       * {deviceId}, and optionally {correlationId}. The correlation id goes as Correlation Data.
       * A route must take the replies to Kafka (they are publishes like any other).
       */
      replies: z
        .string()
        .default('devices/{deviceId}/replies')
        .refine((t) => t.includes('{deviceId}'), 'must contain {deviceId}')
        .refine((t) => !/[+#\u0000]/.test(t) && !t.startsWith('$'), 'must be a topic name: no wildcards (+ #), no U+0000, not under $'),
      /** A command its device has not acknowledged this long after it was written to Kafka is dropped. */
      ttl: duration(1000).default(24 * 3600e3),
      /** Most commands waiting in the gateway; past it the consumer pauses (Kafka keeps the rest). */
      maxPending: z.number().int().min(1).default(100_000),
    })
    .optional(),
  storage: z.strictObject({
    /** Directory of the commit log (relative paths resolve against the working directory). */
    dir: z.string().min(1),
    /** SQLite synchronous mode: full makes every acknowledged message survive a power cut. */
    synchronous: z.enum(['full', 'normal']).default('full'),
    /** Most publishes written in one group-commit transaction (bounds how long one write blocks). */
    groupCommitMaxRecords: z.number().int().min(1).max(100000).default(5000),
    /** Least time between two group commits under steady traffic (fewer, larger transactions). */
    groupCommitIntervalMs: z.number().int().min(0).max(1000).default(10),
    /**
     * Most publishes waiting to be stored (while acknowledgements are held under backpressure);
     * more are refused at once, unacknowledged, so memory stays bounded. Well above what one
     * connection sends in one socket read (aedes reads no more from a client until those are
     * acknowledged): a bound below one such burst would refuse that client for good.
     */
    maxQueuedRecords: z.number().int().min(10_000).default(50_000),
    /** Most bytes of publishes waiting to be stored (above one socket read of 64 KiB). */
    maxQueuedBytes: bytes(1024 * 1024).default(64 * 1024 * 1024),
    /** Largest the commit log may grow on disk (database pages in use plus the WAL). */
    maxBytes: bytes(1024 * 1024).default(1024 ** 3),
    /** Records older than this that are still not forwarded are dropped (counted and logged). */
    maxAge: duration(1000).default(7 * 86400e3),
    /**
     * When maxBytes is reached: `backpressure` holds PUBACKs (devices keep their data and resend;
     * nothing acknowledged is ever dropped), `drop-oldest` drops the oldest unforwarded records.
     */
    overflow: z.enum(['backpressure', 'drop-oldest']).default('backpressure'),
  }),
  routes: z.array(route).min(1),
  admin: z
    .strictObject({
      /** HTTP endpoint with /healthz, /status and /metrics (Prometheus). */
      enabled: z.boolean().default(true),
      host: z.string().min(1).default('127.0.0.1'),
      port: port.default(9464),
      /** A device not heard from for longer is listed as silent on /status and the status page. */
      silentAfter: duration(1000).default(15 * 60e3),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    })
    .prefault({}),
})
  .superRefine((config, ctx) => {
    checkMqttSecurity(config.mqtt, ctx);
    // A record larger than a transaction may hold could never be forwarded and would block the
    // log behind it: refuse such publishes at the door instead.
    // The log must hold a couple of the largest records next to its WAL (see log/budget.ts):
    // one that could never fit would hold every publish behind it for good.
    const budget = storageBudget(config.storage.maxBytes, config.mqtt.maxPayloadBytes);
    if (budget.recordBytes < EMPTY_LOG_BYTES + 2 * budget.largestRecordBytes) {
      const needed = config.storage.maxBytes - budget.recordBytes + EMPTY_LOG_BYTES + 2 * budget.largestRecordBytes;
      ctx.addIssue({
        code: 'custom',
        path: ['storage', 'maxBytes'],
        message: `leaves ${Math.max(0, budget.recordBytes)} bytes for records beside the WAL: too little for publishes of mqtt.maxPayloadBytes (${config.mqtt.maxPayloadBytes}); raise it to at least ${needed} or lower mqtt.maxPayloadBytes`,
      });
    }
    if (config.mqtt.maxPayloadBytes > config.forward.batchMaxBytes) {
      ctx.addIssue({
        code: 'custom',
        path: ['mqtt', 'maxPayloadBytes'],
        message: `must not exceed forward.batchMaxBytes (${config.forward.batchMaxBytes}), itself below the broker's message.max.bytes`,
      });
    }
  });

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

type MqttConfigDraft = {
  host?: string | undefined;
  port: number | false;
  tls?: { host?: string | undefined; requireCertificate: boolean } | undefined;
  websocket?: { host?: string | undefined } | undefined;
  auth: { passwordFile?: string | undefined; allowAnonymous: boolean };
};

/** Whether clients must prove who they are: a password file, or client certificates on TLS. */
export function authenticationConfigured(mqtt: MqttConfigDraft): boolean {
  return mqtt.auth.passwordFile !== undefined || mqtt.tls?.requireCertificate === true;
}

/** Where the plain TCP listener binds: mqtt.host, else loopback unless clients must authenticate. */
export function mqttListenHost(mqtt: MqttConfigDraft): string {
  return mqtt.host ?? (authenticationConfigured(mqtt) ? '0.0.0.0' : '127.0.0.1');
}

/**
 * Mosquitto 2's secure default: without authentication, only this machine may connect. Any other
 * address needs authentication, or an explicit `allowAnonymous: true`.
 */
function checkMqttSecurity(mqtt: MqttConfigDraft, ctx: z.RefinementCtx): void {
  if (mqtt.port === false && mqtt.tls === undefined && mqtt.websocket === undefined) {
    ctx.addIssue({ code: 'custom', path: ['mqtt', 'port'], message: 'is false and neither mqtt.tls nor mqtt.websocket is set: the gateway would have no MQTT listener' });
  }
  if (authenticationConfigured(mqtt) || mqtt.auth.allowAnonymous) return;
  const open = [
    mqtt.port !== false && mqtt.host !== undefined && !isLoopback(mqtt.host) ? ['host', mqtt.host] : undefined,
    mqtt.tls?.host !== undefined && !isLoopback(mqtt.tls.host) ? ['tls.host', mqtt.tls.host] : undefined,
    mqtt.websocket?.host !== undefined && !isLoopback(mqtt.websocket.host) ? ['websocket.host', mqtt.websocket.host] : undefined,
  ].filter((x): x is string[] => x !== undefined);
  for (const [key, host] of open) {
    ctx.addIssue({
      code: 'custom',
      path: ['mqtt', ...key!.split('.')],
      message: `"${host}" lets other machines connect, and no authentication is configured: set mqtt.auth.passwordFile (or mqtt.tls.requireCertificate), or mqtt.auth.allowAnonymous: true to accept anyone`,
    });
  }
}

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
