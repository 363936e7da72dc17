import { createServer, type AddressInfo, type Server } from 'node:net';
import { Aedes, type Client, type PublishPacket } from 'aedes';
import type { Logger } from 'pino';
import { describeError } from '../errors.js';
import { listen } from '../listen.js';
import type { AppendSink } from '../log/group-commit.js';
import { toLogEntry } from './entry.js';
import type { RouteMatch, RouteTable } from './routes.js';

export interface MqttIngressOptions {
  readonly host: string;
  readonly port: number;
  readonly routes: RouteTable;
  readonly sink: AppendSink;
  readonly logger: Logger;
  /** Larger publishes are refused: the client is disconnected without an acknowledgement. */
  readonly maxPayloadBytes: number;
}

export interface IngressCounters {
  /** Publishes that matched a route and were committed to the log. */
  routed: number;
  /** Publishes that matched no route: delivered to local subscribers only. */
  unrouted: number;
  /** QoS 2 retransmissions of a packet already stored (not appended again). */
  qos2Duplicates: number;
  /** Publishes refused because the log could not store them, or too many waited (the client is disconnected). */
  refused: number;
  /** Retransmits and replays recognised by dedup: acknowledged, not stored again. */
  duplicates: number;
  /** Publishes refused for exceeding mqtt.maxPayloadBytes. */
  oversized: number;
}

const SYS_PREFIX = '$SYS/';

/** aedes authorizes a client's Last Will with the client itself, after it closed (not typed). */
function isWill(client: Client | null, packet: PublishPacket): boolean {
  return client !== null && (client as unknown as { will?: unknown }).will === packet;
}


/**
 * The MQTT listener (aedes, MQTT 3.1.1, QoS 0/1/2). A publish that matches a route is appended to
 * the commit log inside `authorizePublish`: aedes writes PUBACK (QoS 1) or PUBREC (QoS 2) only
 * after that callback, so an acknowledgement is never sent for a message that is not on disk.
 * Publishes that match no route are ordinary broker traffic for local subscribers.
 */
export class MqttIngress {
  readonly counters: IngressCounters = { routed: 0, unrouted: 0, qos2Duplicates: 0, refused: 0, duplicates: 0, oversized: 0 };
  private lastOversizedLogAt = 0;
  /** Set while the gateway stops: its clients are disconnected, they did not go offline. */
  private closing = false;
  private broker: Aedes | undefined;
  private server: Server | undefined;

  constructor(private readonly options: MqttIngressOptions) {}

  async start(): Promise<AddressInfo> {
    const { logger } = this.options;
    const broker = await Aedes.createBroker({
      authorizePublish: (client, packet, callback) => this.authorizePublish(client, packet, callback),
      // Device IDs are often MAC- or serial-based and longer than the 23 bytes MQTT 3.1.1 requires
      // brokers to accept at minimum [MQTT-3.1.3-5].
      maxClientsIdLength: 256,
    });
    this.broker = broker;
    broker.on('clientError', (client: Client, err: Error) => {
      logger.debug({ clientId: client?.id, err: describeError(err) }, 'mqtt client error');
    });
    const server = createServer(broker.handle);
    this.server = server;
    const address = await listen(server, this.options.host, this.options.port, 'EB_ERR_INGRESS_LISTEN', 'MQTT', (err) =>
      logger.error({ err: describeError(err) }, 'mqtt listener error'),
    );
    logger.info({ host: address.address, port: address.port }, 'mqtt listening');
    return address;
  }

  private authorizePublish(
    client: Client | null,
    packet: PublishPacket,
    callback: (error?: Error | null) => void,
  ): void {
    if (packet.topic.startsWith(SYS_PREFIX)) {
      callback(new Error(`${SYS_PREFIX} topics are reserved`));
      return;
    }
    if (this.closing && isWill(client, packet)) {
      // The gateway is stopping, the device did not go offline: no "offline" wills for every
      // device on each restart (aedes skips a will whose authorization fails).
      callback(new Error('the gateway is stopping: will not published'));
      return;
    }
    const match = this.options.routes.match(packet.topic);
    if (match === undefined) {
      this.counters.unrouted++;
      callback(null);
      return;
    }
    const size = typeof packet.payload === 'string' ? Buffer.byteLength(packet.payload) : packet.payload.length;
    if (size > this.options.maxPayloadBytes) {
      this.counters.oversized++;
      const now = Date.now();
      if (now - this.lastOversizedLogAt > 60_000) {
        this.lastOversizedLogAt = now;
        this.options.logger.warn(
          { code: 'EB_ERR_INGRESS_PAYLOAD_TOO_LARGE', clientId: client?.id, topic: packet.topic, bytes: size, maxPayloadBytes: this.options.maxPayloadBytes, total: this.counters.oversized },
          'publish larger than mqtt.maxPayloadBytes refused (client disconnected); further ones are counted, logged at most once a minute',
        );
      }
      callback(new Error(`payload of ${size} bytes exceeds mqtt.maxPayloadBytes (${this.options.maxPayloadBytes})`));
      return;
    }
    // aedes calls this hook for every PUBLISH, including a QoS 2 retransmission of a packet whose
    // PUBREC was lost. That packet is already in the log: store it once [MQTT-4.3.3-2].
    // The check must be synchronous: an asynchronous lookup would let later packets of the same
    // socket read be appended first, out of order. aedes keeps the ids of stored QoS 2 packets
    // awaiting PUBREL in a per-client Set (not in its type declarations).
    if (packet.qos === 2 && packet.dup && client !== null) {
      const awaitingPubrel = (client as unknown as { _inboundInflight?: Set<number> })._inboundInflight;
      if (packet.messageId !== undefined && awaitingPubrel?.has(packet.messageId)) {
        this.counters.qos2Duplicates++;
        callback(null);
        return;
      }
    }
    this.append(match, client, packet, callback);
  }

  private append(
    match: RouteMatch,
    client: Client | null,
    packet: PublishPacket,
    callback: (error?: Error | null) => void,
  ): void {
    const entry = toLogEntry(match, {
      topic: packet.topic,
      payload: typeof packet.payload === 'string' ? Buffer.from(packet.payload) : Buffer.from(packet.payload),
      qos: packet.qos,
      dup: packet.dup,
      messageId: packet.messageId,
      clientId: client?.id,
      receivedAt: Date.now(),
    });
    this.options.sink.append(
      entry,
      (err, result) => {
        if (err) {
          // No PUBACK: aedes closes the connection and the device sends the message again. The
          // log's failures are reported (once per state change) where the log is wired up.
          this.counters.refused++;
          callback(err);
          return;
        }
        if (result === 'duplicate') this.counters.duplicates++;
        else this.counters.routed++;
        // A duplicate is acknowledged like the original, so the device stops resending it.
        callback(null);
      },
      // The connection owns the order of its publishes: once one is refused, none of its later
      // ones may be stored ahead of it (see GroupCommit). Not so the Last Will, which aedes
      // authorizes after the connection closed: it is no one's to acknowledge and must not be
      // dropped as an abandoned publish of a closed connection [MQTT-3.1.2-8].
      isWill(client, packet) ? undefined : (client ?? undefined),
    );
  }

  get connectedClients(): number {
    return this.broker?.connectedClients ?? 0;
  }

  /** Stops accepting connections and disconnects clients. */
  async close(): Promise<void> {
    this.closing = true;
    const server = this.server;
    const broker = this.broker;
    this.server = undefined;
    this.broker = undefined;
    const serverClosed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    if (broker) await new Promise<void>((resolve) => broker.close(() => resolve()));
    await serverClosed;
  }
}
