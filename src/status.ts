import type { RecentError } from './admin/recent-errors.js';
import type { DrainStatus } from './forward/drain-progress.js';
import type { ForwarderState } from './forward/forwarder.js';
import type { DeviceActivity, RouteTraffic } from './ingress/traffic.js';

/** What the gateway reports: GET /status, the periodic status line, and what /healthz judges. */
export interface GatewayStatus {
  readonly gatewayId: string;
  readonly forwarder: ForwarderState;
  /** The forwarder's last error, while it is not forwarding. */
  readonly forwarderError: string;
  /** Whether the last write to the commit log succeeded; `logError` says why not. */
  readonly logWritable: boolean;
  readonly logError: string;
  readonly mqttClients: number;
  /** Publishes committed to the log since start. */
  readonly received: number;
  /** Log transactions (group commits) since start: received / groupCommits is the mean group size. */
  readonly groupCommits: number;
  /** Retransmits and replays recognised by dedup since start (acknowledged, not stored). */
  readonly duplicates: number;
  /**
   * Counter-dedup gaps closed by late readings since start: a stream had 63 gaps when an
   * out-of-order reading arrived, so its oldest gap now reads as stored (README: Delivery guarantee).
   */
  readonly dedupGapsClosed: number;
  /** Forwarder threads restarted after an unexpected exit since start (a bug: please report). */
  readonly forwarderRestarts: number;
  /** Records committed to Kafka since start. */
  readonly forwarded: number;
  /** Records in the log not yet committed to Kafka. */
  readonly backlog: number;
  /** How long ago the oldest of them was received (0 without a backlog). */
  readonly backlogOldestAgeSeconds: number;
  readonly lastOffset: number;
  readonly forwardPosition: number;
  /** Publishes refused (not acknowledged): the log could not store them, or too many waited. */
  readonly refused: number;
  /** True while acknowledgements are held because storage.maxBytes is reached. */
  readonly holding: boolean;
  /** Publishes waiting to be stored (held while storage is full). */
  readonly waiting: number;
  readonly droppedOverflow: number;
  readonly droppedExpired: number;
  /**
   * Records dropped because their MQTT 5 Message Expiry Interval passed before they could be
   * forwarded (never sent late).
   */
  readonly recordsExpired: number;
  /** Records Kafka refused for good: written to the dead-letter topic, or dropped. */
  readonly deadLettered: number;
  readonly droppedRejected: number;
  readonly storageBytes: number;
  /** What the MQTT side refused or limited since start (security and limits). */
  readonly mqtt: MqttRefusals;
  /** Commands from Kafka (absent when `commands` is not configured). */
  readonly commands?: CommandStatus;
  /** When the gateway started (ms). */
  readonly startedAt: number;
  /** Kafka transactions committed since start, and failed (aborted, or outcome unknown). */
  readonly transactions: number;
  readonly transactionsFailed: number;
  /** A backlog being forwarded after an outage (null when there is none). */
  readonly drain: DrainStatus | null;
  /** Devices heard from, the busiest, and the silent ones. */
  readonly devices: DeviceActivity;
  /** Publishes per route since start. */
  readonly routes: readonly RouteTraffic[];
  /** The last problems logged, newest first. */
  readonly errors: readonly RecentError[];
}

/** The periodic status line: the figures, without the per-device and per-route lists. */
export function statusLine(s: GatewayStatus): Record<string, unknown> {
  const { devices, routes: _routes, errors: _errors, mqtt: _mqtt, ...line } = s;
  return { ...line, devicesActive: devices.active, devicesSilent: devices.silent };
}

/** Commands now in the gateway, and counts since start. */
export interface CommandStatus {
  /** Stored, waiting for a persistent session of their device. */
  readonly waiting: number;
  /** In their device's session: sent, or queued until it reconnects. */
  readonly inSession: number;
  /** Acknowledged by the device, the ack record not yet in the log. */
  readonly toAck: number;
  readonly stored: number;
  readonly notServed: number;
  readonly invalid: number;
  readonly expired: number;
  readonly delivered: number;
  readonly acked: number;
}

/** Counts of MQTT refusals by reason: the `reason` label of edgebridge_mqtt_refused_total. */
export interface MqttRefusals {
  /** Logins refused: wrong password, anonymous, no certificate identity. */
  readonly loginsFailed: number;
  /** Connections whose client id belongs to another identity. */
  readonly takeoversRefused: number;
  /** Publishes outside the client's topics (not stored, not acknowledged). */
  readonly publishesDenied: number;
  /** Subscriptions outside the client's topics (0x80). */
  readonly subscriptionsDenied: number;
  /** Publishes above mqtt.maxPayloadBytes (cut off at the header when larger still). */
  readonly oversized: number;
  /** Topics longer or deeper than mqtt.limits allow. */
  readonly topicsRefused: number;
  /** Connections closed for a malformed packet header. */
  readonly malformedPackets: number;
  /** Connections refused at mqtt.limits.maxConnections. */
  readonly connectionsRefused: number;
  /** Publishes slowed by mqtt.limits.publishRatePerSecond. */
  readonly publishesThrottled: number;
  /** Failed TLS handshakes (no or untrusted client certificate). */
  readonly tlsHandshakesFailed: number;
  /** Local messages not queued for a subscriber whose queue was full. */
  readonly queueDropped: number;
  /** Retained messages not kept (mqtt.limits.maxRetainedMessages or maxSessionBytes). */
  readonly retainedRefused: number;
  /** MQTT 5 publishes that said their payload is UTF-8 and it is not (0x99). */
  readonly payloadsInvalid: number;
  /** Messages not sent to an MQTT 5 client: larger than the Maximum Packet Size it set. */
  readonly forwardsTooLarge: number;
}

/**
 * Whether the gateway does its whole job now: healthy, storing, and forwarding to Kafka (a load
 * balancer or a rollout waits for it). Kafka being away makes a gateway not ready, not unhealthy.
 */
export function readinessOf(s: GatewayStatus): { ready: boolean; status: string; reason?: string } {
  const health = healthOf(s);
  if (!health.healthy) return { ready: false, status: health.status, ...(health.reason === undefined ? {} : { reason: health.reason }) };
  if (s.forwarder !== 'forwarding') {
    return { ready: false, status: s.forwarder, reason: s.forwarderError || `the forwarder is ${s.forwarder}: Kafka is not reachable yet` };
  }
  return { ready: true, status: 'ready' };
}

/**
 * Whether the gateway can do its job without an operator, and if not, why. Kafka being
 * unreachable is not unhealthy (that is what the log is for); a log that cannot be written, a
 * gateway fenced by a twin, a refused login (SASL, TLS), missing ACLs and an unreadable log are.
 */
export function healthOf(s: GatewayStatus): { healthy: boolean; status: string; reason?: string } {
  if (s.forwarder === 'fenced') return { healthy: false, status: 'fenced', reason: 'another gateway uses this gateway.id' };
  if (!s.logWritable) return { healthy: false, status: 'log-unwritable', reason: s.logError };
  if (s.forwarder === 'log-error') return { healthy: false, status: 'log-error', reason: s.forwarderError };
  if (s.forwarder === 'unauthenticated') return { healthy: false, status: 'unauthenticated', reason: s.forwarderError };
  if (s.forwarder === 'unauthorized') return { healthy: false, status: 'unauthorized', reason: s.forwarderError };
  return { healthy: true, status: 'ok' };
}
