import { randomBytes } from 'node:crypto';
import mqtt, { type IDisconnectPacket, type MqttClient, type Packet } from 'mqtt';

/**
 * The MQTT protocol a device speaks: 4 is 3.1.1, 5 is MQTT 5; 'mixed' alternates them by device
 * index (even: 3.1.1, odd: MQTT 5), both on the same listener.
 */
export type FleetProtocol = 4 | 5 | 'mixed';

export interface FleetOptions {
  /** Broker URL, e.g. mqtt://127.0.0.1:1883 */
  readonly url: string;
  readonly devices: number;
  /** Messages per second per device. */
  readonly rate: number;
  /** Stop publishing after this many seconds (unless `count` is reached first). */
  readonly durationSec?: number;
  /** Stop after this many messages per device. */
  readonly count?: number;
  readonly qos?: 0 | 1 | 2;
  /** MQTT 3.1.1 (4, the default), MQTT 5 (5), or both across the fleet ('mixed'). */
  readonly protocolVersion?: FleetProtocol;
  /**
   * MQTT 5 devices: the Session Expiry Interval they ask for in CONNECT, in seconds. A 3.1.1
   * device's clean=false session lasts until the server drops it; the MQTT 5 equivalent is a
   * non-zero expiry (0 would end the session with each connection). Default 3600.
   */
  readonly sessionExpirySec?: number;
  /** Device IDs are `<prefix>-0001` ... */
  readonly prefix?: string;
  /** `{deviceId}` is replaced by the device ID. */
  readonly topicTemplate?: string;
  /** Pads each reading with a `pad` field to roughly this many bytes. */
  readonly payloadBytes?: number;
  /** How long to wait for outstanding acknowledgements once publishing stopped. */
  readonly drainTimeoutMs?: number;
  /** Unacknowledged publishes a device allows at once (firmware often uses 1). Default 1. */
  readonly maxInflight?: number;
  /** Keep each published body (tests compare them byte for byte with what reached Kafka). */
  readonly keepPayloads?: boolean;
  readonly signal?: AbortSignal;
  readonly onProgress?: (stats: FleetStats) => void;
  /** Called once every device exists (IDs and bootIds known), before the first publish. */
  readonly onStart?: (devices: readonly DeviceResult[], liveStats: Readonly<FleetStats>) => void;
}

export interface DeviceResult {
  readonly deviceId: string;
  readonly bootId: string;
  /** 4 (MQTT 3.1.1) or 5 (MQTT 5). */
  readonly protocolVersion: 4 | 5;
  /** seq numbers whose PUBACK (or PUBCOMP) the device received, in ack order. */
  readonly ackedSeqs: number[];
  /**
   * MQTT 5: seq -> reason code (>= 0x80) of a PUBACK or PUBREC that refused the reading. The
   * gateway did not store it; the device dropped it (it is neither acknowledged nor resent).
   */
  readonly refusedSeqs: Map<number, number>;
  /** seq -> exact body published, when `keepPayloads` is set. */
  readonly payloads: Map<number, string>;
  published: number;
}

export interface FleetStats {
  published: number;
  /** Readings the gateway acknowledged as stored (PUBACK, or PUBREC then PUBCOMP, reason code < 0x80). */
  acked: number;
  /** MQTT 5: readings refused with a PUBACK/PUBREC reason code >= 0x80; never counted as acked. */
  refused: number;
  /** `refused` by reason code, e.g. { "151": 3 } for 0x97 Quota exceeded. */
  refusedByReason: Record<number, number>;
  /** MQTT 5: DISCONNECT packets the server sent, by reason code. */
  disconnectsByReason: Record<number, number>;
  errors: number;
  connected: number;
  reconnects: number;
}

export interface FleetResult extends FleetStats {
  readonly devices: DeviceResult[];
  readonly durationMs: number;
}

export interface Reading {
  deviceId: string;
  bootId: string;
  seq: number;
  ts: number;
  temperature: number;
  humidity: number;
  battery: number;
  pad?: string;
}

export function deviceIdFor(prefix: string, index: number): string {
  return `${prefix}-${String(index + 1).padStart(4, '0')}`;
}

/**
 * A simulated fleet of firmware: each device holds a persistent MQTT session (clean=false),
 * publishes JSON readings at a fixed rate, and like real firmware keeps unacknowledged QoS 1/2
 * messages and retransmits them after a reconnect (mqtt.js's outgoing store).
 */
export async function runFleet(options: FleetOptions): Promise<FleetResult> {
  const qos = options.qos ?? 1;
  const maxInflight = options.maxInflight ?? 1;
  const prefix = options.prefix ?? 'dev';
  const template = options.topicTemplate ?? 'devices/{deviceId}/telemetry';
  const stats: FleetStats = {
    published: 0,
    acked: 0,
    refused: 0,
    refusedByReason: {},
    disconnectsByReason: {},
    errors: 0,
    connected: 0,
    reconnects: 0,
  };
  const started = Date.now();
  const results: DeviceResult[] = [];
  const clients: MqttClient[] = [];
  const timers: NodeJS.Timeout[] = [];
  let outstanding = 0;
  let onSettled: (() => void) | undefined;

  const intervalMs = 1000 / options.rate;
  const deadline = options.durationSec === undefined ? Infinity : started + options.durationSec * 1000;
  let stopPublishing: () => void = () => undefined;
  const publishingDone = new Promise<void>((resolve) => (stopPublishing = resolve));
  let active = options.devices;

  for (let i = 0; i < options.devices; i++) {
    const deviceId = deviceIdFor(prefix, i);
    const protocolVersion = protocolOf(options.protocolVersion ?? 4, i);
    const result: DeviceResult = {
      deviceId,
      bootId: randomBytes(4).toString('hex'),
      protocolVersion,
      ackedSeqs: [],
      refusedSeqs: new Map(),
      payloads: new Map(),
      published: 0,
    };
    results.push(result);
    const client = mqtt.connect(options.url, {
      clientId: `sim-${deviceId}`,
      clean: false,
      keepalive: 30,
      reconnectPeriod: 500,
      connectTimeout: 5000,
      protocolVersion,
      ...(protocolVersion === 5 ? { properties: { sessionExpiryInterval: options.sessionExpirySec ?? 3600 } } : {}),
    });
    clients.push(client);
    client.on('connect', () => stats.connected++);
    client.on('close', () => (stats.connected = Math.max(0, stats.connected - 1)));
    client.on('reconnect', () => stats.reconnects++);
    client.on('error', () => stats.errors++);
    client.on('disconnect', (packet: IDisconnectPacket) => {
      const code = packet.reasonCode ?? 0;
      stats.disconnectsByReason[code] = (stats.disconnectsByReason[code] ?? 0) + 1;
    });
    const topic = template.replace('{deviceId}', deviceId);

    let seq = 0;
    let timer: NodeJS.Timeout | undefined;
    const tick = (): void => {
      if (options.signal?.aborted || Date.now() >= deadline || (options.count !== undefined && seq >= options.count)) {
        clearInterval(timer);
        if (--active === 0) stopPublishing();
        return;
      }
      seq++;
      const reading: Reading = {
        deviceId,
        bootId: result.bootId,
        seq,
        ts: Date.now(),
        temperature: Math.round((20 + 5 * Math.sin(seq / 10) + Math.random()) * 100) / 100,
        humidity: Math.round((40 + 10 * Math.random()) * 10) / 10,
        battery: Math.max(0, 100 - seq / 1000),
      };
      let body = JSON.stringify(reading);
      if (options.payloadBytes && body.length < options.payloadBytes) {
        reading.pad = 'x'.repeat(options.payloadBytes - body.length - 9);
        body = JSON.stringify(reading);
      }
      if (options.keepPayloads) result.payloads.set(seq, body);
      result.published++;
      stats.published++;
      outstanding++;
      outbox.push({ seq, body });
      pump();
    };

    // The device's own outbox, like firmware's flash buffer: readings leave in seq order, at most
    // `maxInflight` unacknowledged at a time, and stay until acknowledged. Whatever the client
    // library fails (a publish caught by a disconnect) is sent again, in order, after reconnect.
    // A gateway that already stored such a resend drops it by (bootId, seq).
    const outbox: { seq: number; body: string }[] = [];
    let inflight = 0;
    let next = 0; // index in outbox of the next reading to send
    const pump = (): void => {
      while (client.connected && inflight < maxInflight && next < outbox.length) {
        const item = outbox[next++]!;
        inflight++;
        client.publish(topic, item.body, { qos }, (err, packet) => {
          inflight = Math.max(0, inflight - 1);
          const outcome = outcomeOf(err, packet);
          if (outcome === 'resend') {
            // rewind: resend from the oldest unacknowledged reading once connected again
            next = Math.min(next, outbox.indexOf(item) === -1 ? next : outbox.indexOf(item));
            return;
          }
          const at = outbox.indexOf(item);
          if (at !== -1) {
            outbox.splice(at, 1);
            if (at < next) next--;
            if (outcome === 'stored') {
              result.ackedSeqs.push(item.seq);
              stats.acked++;
            } else {
              // The gateway said it did not store this reading: not delivered, and not resent
              // (what a device does about a refusal is its own policy; this one drops it).
              result.refusedSeqs.set(item.seq, outcome);
              stats.refused++;
              stats.refusedByReason[outcome] = (stats.refusedByReason[outcome] ?? 0) + 1;
            }
            if (--outstanding === 0) onSettled?.();
          }
          pump();
        });
      }
    };
    client.on('connect', () => {
      // after a reconnect everything unacknowledged is sent again from the oldest
      next = 0;
      inflight = 0;
      pump();
    });
    // Stagger devices across one interval so the fleet does not publish in lock-step.
    timers.push(
      setTimeout(() => {
        timer = setInterval(tick, intervalMs);
        timers.push(timer);
      }, (i * intervalMs) / options.devices),
    );
  }

  options.onStart?.(results, stats);
  const progress = options.onProgress ? setInterval(() => options.onProgress!({ ...stats }), 1000) : undefined;
  options.signal?.addEventListener('abort', () => stopPublishing(), { once: true });
  await publishingDone;
  for (const t of timers) clearTimeout(t);

  // Wait for outstanding acknowledgements (resent across reconnects).
  if (outstanding > 0 && qos > 0) {
    await new Promise<void>((resolve) => {
      onSettled = resolve;
      setTimeout(resolve, options.drainTimeoutMs ?? 30_000).unref();
    });
  }
  if (progress) clearInterval(progress);
  await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
  return { ...stats, devices: results, durationMs: Date.now() - started };
}

function protocolOf(protocol: FleetProtocol, index: number): 4 | 5 {
  return protocol === 'mixed' ? (index % 2 === 0 ? 4 : 5) : protocol;
}

/**
 * What a publish callback says of a reading: stored, to be resent, or refused (the reason code).
 * MQTT.js calls it with an error carrying `code` when a PUBACK or PUBREC has a reason code
 * >= 0x80 [MQTT-3.4.2.1, MQTT-3.5.2.1]: the server did not take the message. An error without a
 * code (the connection closed first) leaves the reading to be resent. A PUBCOMP comes only after
 * a successful PUBREC, which already meant "stored": an error code on it (0x92, the server lost
 * the packet id) does not undo that.
 */
function outcomeOf(err: Error | undefined, packet: Packet | undefined): 'stored' | 'resend' | number {
  if (!err) return 'stored';
  const code = (err as Error & { code?: unknown }).code;
  if (typeof code !== 'number' || code < 0x80) return 'resend';
  return packet?.cmd === 'pubcomp' ? 'stored' : code;
}
