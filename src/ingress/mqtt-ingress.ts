import { isUtf8 } from 'node:buffer';
import { createServer as createHttpServer } from 'node:http';
import { createRequire } from 'node:module';
import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, TLSSocket, type TlsOptions } from 'node:tls';
import { Aedes, type Client, type PublishPacket, type Subscription } from 'aedes';
import { generate as generatePacket } from 'mqtt-packet';
import type { Logger } from 'pino';
import type { WebSocketServer } from 'ws';
import { readCertificates, readKeyPair } from '../config/files.js';
import { describeError, type ErrorCode } from '../errors.js';
import { listen } from '../listen.js';
import type { AppendOwner, AppendSink } from '../log/group-commit.js';
import type { MqttRefusals } from '../status.js';
import { AccessPolicy, type Principal } from './access.js';
import { Authenticator, LoginThrottle, type Credentials } from './authenticator.js';
import { toLogEntry } from './entry.js';
import { PACKET_HEADROOM_BYTES, PacketSizeGuard, PublishThrottle } from './limits.js';
import type { RouteMatch, RouteTable } from './routes.js';
import type { CommandOutlet } from '../commands/delivery.js';
import type { SessionTables } from '../log/session-tables.js';
import { SessionStore } from './session-store.js';
import { withReplyCorrelation } from '../commands/reply.js';

export interface TlsListenerOptions {
  readonly host: string;
  readonly port: number;
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile?: string | undefined;
  readonly requireCertificate: boolean;
  readonly useIdentityAsUsername: boolean;
}

export interface IngressLimits {
  readonly maxConnections: number;
  readonly maxTopicBytes: number;
  readonly maxTopicLevels: number;
  /** 0: unlimited. */
  readonly publishRatePerSecond: number;
  readonly maxInflightMessages: number;
  /** MQTT 5 topic aliases per connection (Topic Alias Maximum); 0: none. */
  readonly maxTopicAliases: number;
  readonly maxQueuedMessages: number;
  readonly maxRetainedMessages: number;
  readonly maxSessionBytes: number;
  readonly maxSubscriptions: number;
  readonly connectTimeoutMs: number;
  /** MQTT 5: longest Session Expiry Interval granted (ms; 0: no bound). Read at start. */
  readonly maxSessionExpiry?: number;
  /** MQTT 5: most disconnected v5 sessions awaiting expiry (0: unlimited). Read at start. */
  readonly maxPendingSessions?: number;
}

/** config mqtt.limits.maxSessionExpiry and maxPendingSessions by default. */
const DEFAULT_MAX_SESSION_EXPIRY_MS = 7 * 86400e3;
const DEFAULT_MAX_PENDING_SESSIONS = 100_000;

export const DEFAULT_LIMITS: IngressLimits = {
  maxConnections: 10_000,
  maxTopicBytes: 1024,
  maxTopicLevels: 32,
  publishRatePerSecond: 0,
  maxInflightMessages: 1000,
  maxTopicAliases: 10,
  maxQueuedMessages: 1000,
  maxRetainedMessages: 10_000,
  maxSessionBytes: 64 * 1024 * 1024,
  maxSubscriptions: 100,
  connectTimeoutMs: 10_000,
};

export interface MqttIngressOptions {
  /** The plain TCP listener; absent when mqtt.port is false. */
  readonly tcp?: { readonly host: string; readonly port: number } | undefined;
  /** MQTT over WebSocket (subprotocol "mqtt") on an HTTP listener. */
  readonly websocket?: { readonly host: string; readonly port: number; readonly path: string } | undefined;
  readonly tls?: TlsListenerOptions | undefined;
  readonly routes: RouteTable;
  readonly sink: AppendSink;
  /** A routed publish was stored, or acknowledged as a duplicate (per-route and per-device figures). */
  readonly onStored?: (match: RouteMatch, duplicate: boolean) => void;
  readonly logger: Logger;
  /** Larger publishes are refused: the client is disconnected without an acknowledgement. */
  readonly maxPayloadBytes: number;
  readonly authenticator?: Authenticator;
  readonly access?: AccessPolicy;
  readonly failedLoginMaxDelayMs?: number;
  readonly limits?: IngressLimits;
  /** Where MQTT sessions and retained messages are kept across restarts (memory only without). */
  readonly sessionTables?: SessionTables | undefined;
}

export interface CommandHooks {
  /** A device acknowledged a command. */
  delivered(): void;
  /** A client completed its CONNECT: its client id and user name (the device IDs it may be). */
  deviceReady(ids: string[]): void;
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
  /** Publishes refused for exceeding mqtt.maxPayloadBytes (by their header, on any topic). */
  oversized: number;
  /** Logins refused: wrong password, anonymous, no certificate identity. */
  loginsFailed: number;
  /** Connections refused because their client id belongs to another identity's session. */
  takeoversRefused: number;
  /** Publishes refused by the ACL (never stored, no acknowledgement, client disconnected). */
  publishesDenied: number;
  /** Subscriptions refused by the ACL (return code 0x80). */
  subscriptionsDenied: number;
  /** Publishes and subscriptions refused for a topic longer or deeper than mqtt.limits allow. */
  topicsRefused: number;
  /** Connections closed for a malformed packet header. */
  malformedPackets: number;
  /** Connections refused at mqtt.limits.maxConnections. */
  connectionsRefused: number;
  /** Publishes delayed by mqtt.limits.publishRatePerSecond. */
  publishesThrottled: number;
  /** MQTT 5 publishes whose Payload Format Indicator says UTF-8 and whose payload is not (0x99). */
  payloadsInvalid: number;
  /** Messages not sent to an MQTT 5 client because they exceed the Maximum Packet Size it set. */
  forwardsTooLarge: number;
  /** TLS handshakes that failed (no or untrusted client certificate, wrong protocol). */
  tlsHandshakesFailed: number;
}

export interface IngressAddresses {
  readonly tcp?: AddressInfo | undefined;
  readonly tls?: AddressInfo | undefined;
  readonly websocket?: AddressInfo | undefined;
}

const SYS_PREFIX = '$SYS/';

/** An MQTT 5 DISCONNECT with reason code 0x95 (Packet too large) and no properties. */
const DISCONNECT_PACKET_TOO_LARGE = Buffer.from([0xe0, 0x02, 0x95, 0x00]);

/**
 * mqtt-packet (aedes's packet writer) builds, on its first packet, a cache of a 2-byte Buffer for
 * every packet id 0-65535: 65,536 Buffer objects, about 7 MB of heap for good, to save allocating
 * 2 bytes per PUBACK. Off: each id is written from a fresh 2-byte Buffer (a slice of Node's pool).
 * The copy aedes itself loads is the one switched.
 */
function disablePacketIdCache(): void {
  const aedesFile = createRequire(import.meta.url).resolve('aedes');
  const mqttPacket = createRequire(aedesFile)('mqtt-packet') as { writeToStream: { cacheNumbers: boolean } };
  mqttPacket.writeToStream.cacheNumbers = false;
}
disablePacketIdCache();

/**
 * Largest CONNECT (client id, credentials, a Last Will): it arrives before any login, so what an
 * unauthenticated connection can make the gateway buffer stays small.
 */
const MAX_CONNECT_BYTES = 64 * 1024;

/** Who owns a client id's session, and by which connection; the claim it replaced, if any. */
interface SessionOwner {
  readonly username: string | undefined;
  readonly connection: number;
  readonly previous: SessionOwner | undefined;
}

/**
 * Last Wills, known by identity: aedes authorizes a client's will with the client itself, after
 * it closed — at once, or (MQTT 5) after its Will Delay Interval, when `client.will` is already
 * null; the packet is the CONNECT's `will` object either way.
 */
const wills = new WeakSet<object>();
function isWill(client: Client | null, packet: PublishPacket): boolean {
  return client !== null && wills.has(packet);
}

/** What aedes keeps of a client that the hooks need (not in its type declarations). */
type ClientInternals = Client & {
  conn: Socket;
  connected: boolean;
  /** Set once a successful CONNACK is being written (patches/aedes+2.0.0-beta.1.patch). */
  _connackWritten?: boolean;
  closed: boolean;
  pause(): void;
  _parser: { parse(buf: Buffer): number };
};

/** One log line per kind of refusal per minute, with the running count: never a flood. */
class RateLimitedWarn {
  private readonly lastAt = new Map<string, number>();

  constructor(private readonly logger: Logger) {}

  warn(kind: string, fields: Record<string, unknown>, message: string): void {
    const now = Date.now();
    if (now - (this.lastAt.get(kind) ?? -Infinity) < 60_000) return;
    this.lastAt.set(kind, now);
    this.logger.warn(fields, `${message}; further ones are counted, logged at most once a minute`);
  }
}

function refusal(returnCode: number, message: string): Error & { returnCode: number } {
  return Object.assign(new Error(message), { returnCode });
}

/** The MQTT 5 reason codes the gateway answers a publish with (PUBACK, PUBREC or DISCONNECT). */
export const REASON = {
  /** DISCONNECT: the message was not stored, for a reason that may pass (a log write failed); send it again. */
  unspecifiedError: 0x80,
  /** PUBACK/PUBREC: the access policy does not let this client publish to the topic. Final. */
  notAuthorized: 0x87,
  /** DISCONNECT: the gateway is stopping; the message was not stored. */
  serverShuttingDown: 0x8b,
  /** PUBACK/PUBREC: the topic is too long, holds U+0000 or invalid UTF-8, or is under $SYS/. Final. */
  topicNameInvalid: 0x90,
  /** DISCONNECT: the packet is larger than the Maximum Packet Size the CONNACK gave. */
  packetTooLarge: 0x95,
  /** PUBACK/PUBREC: not stored for lack of room (log full, too many waiting, payload over the bound). Final for this message. */
  quotaExceeded: 0x97,
  /** PUBACK/PUBREC: the publish said its payload is UTF-8 (Payload Format Indicator 1) and it is not. Final. */
  payloadFormatInvalid: 0x99,
} as const;

/**
 * Why a publish was refused, for aedes to answer with (see patches/aedes+2.0.0-beta.1.patch).
 * MQTT 3.1.1 has no reason codes: any refusal closes the connection without an acknowledgement,
 * and the device sends the message again. MQTT 5: a final refusal (`disconnect` false) is a
 * PUBACK/PUBREC with `reasonCode` on an open connection, so the device knows at once the message
 * was not stored and why; one that may pass is a DISCONNECT with `reasonCode` and no
 * acknowledgement, and the device sends the message again as in 3.1.1.
 */
function publishRefusal(message: string, reasonCode: number, disconnect: boolean): Error & { reasonCode: number; disconnect: boolean } {
  return Object.assign(new Error(message), { reasonCode, disconnect });
}

/** The MQTT 5 answer to a publish the log did not store (its error code says why). */
function logRefusal(err: Error): Error {
  const code = (err as { code?: string }).code;
  if (code === 'EB_ERR_LOG_FULL' || code === 'EB_ERR_INGRESS_OVERLOADED' || code === 'EB_ERR_INGRESS_PAYLOAD_TOO_LARGE') {
    return publishRefusal(err.message, REASON.quotaExceeded, false);
  }
  if (code === 'EB_ERR_LOG_CLOSED') return publishRefusal(err.message, REASON.serverShuttingDown, true);
  return publishRefusal(err.message, REASON.unspecifiedError, true);
}

/** Whether a client speaks MQTT 5 (aedes sets `version` from its CONNECT). */
function isV5(client: Client | null): boolean {
  return (client as { version?: number } | null)?.version === 5;
}

/**
 * The MQTT listeners (aedes, MQTT 3.1.1, QoS 0/1/2; plain TCP and TLS). A publish that matches a
 * route is appended to the commit log inside `authorizePublish`: aedes writes PUBACK (QoS 1) or
 * PUBREC (QoS 2) only after that callback, so an acknowledgement is never sent for a message that
 * is not on disk. Publishes that match no route are ordinary broker traffic for local subscribers.
 * Before any of that, a client must log in (authenticator), may only touch the topics the access
 * policy grants it, and stays within the limits: a packet too large is cut off at its header.
 */
export class MqttIngress {
  readonly counters: IngressCounters = {
    routed: 0,
    unrouted: 0,
    qos2Duplicates: 0,
    refused: 0,
    duplicates: 0,
    oversized: 0,
    loginsFailed: 0,
    takeoversRefused: 0,
    publishesDenied: 0,
    subscriptionsDenied: 0,
    topicsRefused: 0,
    malformedPackets: 0,
    connectionsRefused: 0,
    publishesThrottled: 0,
    payloadsInvalid: 0,
    forwardsTooLarge: 0,
    tlsHandshakesFailed: 0,
  };
  private commandHooks: CommandHooks | undefined;
  /** Client ids with a connection between CONNECT and ready (see startConnecting). */
  private readonly connecting = new Map<string, number>();
  private readonly connectingClientIds = new WeakMap<Client, string>();
  /** Set while the gateway stops: its clients are disconnected, they did not go offline. */
  private closing = false;
  private broker: Aedes | undefined;
  private sessions: SessionStore | undefined;
  private readonly servers: Server[] = [];
  /** Every open connection's socket: those aedes drops without closing (mid-login at shutdown) are closed by close(). */
  private readonly sockets = new Set<Socket>();
  private readonly webSocketServers: WebSocketServer[] = [];
  private readonly warnings: RateLimitedWarn;
  /** Routes, limits and the payload bound can be replaced while running (reload): read them at use. */
  private routes: RouteTable;
  private limits: IngressLimits;
  /** A failure to count a stored publish is logged once (it is a bug, and must not flood the log). */
  private countingFailed = false;
  private maxPayloadBytes: number;
  private authenticator: Authenticator;
  private access: AccessPolicy;
  private readonly loginThrottle: LoginThrottle;
  private maxPacketBytes: number;
  /** Who each connection is, once logged in (a closed client's entry goes with it). */
  private readonly principals = new WeakMap<Client, Principal>();
  /** CONNECT details aedes does not pass to `authenticate`. */
  private readonly connects = new WeakMap<Client, { emptyClientId: boolean; clean: boolean; v5: boolean }>();
  private readonly throttles = new WeakMap<Client, PublishThrottle>();
  private readonly appendOwners = new WeakMap<Client, AppendOwner>();
  /** Filters granted on each connection (mqtt.limits.maxSubscriptions). */
  private readonly grantedFilters = new WeakMap<Client, Set<string>>();
  /** Each connection's remote address (a WebSocket client's stream has none of its own). */
  private readonly remoteAddresses = new WeakMap<Client, string>();
  /**
   * The identity that owns each client id's session (live, or a persistent one kept for later):
   * another identity may not take it over. A clean session's entry goes when it disconnects.
   */
  private readonly sessionOwners = new Map<string, SessionOwner>();
  /** A number per connection (the owner entries name their connection by it, not by the client). */
  private readonly connectionIds = new WeakMap<Client, number>();
  private nextConnectionId = 0;
  /** Connections whose CONNECT completed: a persistent session of theirs outlives them. */
  private readonly established = new WeakSet<Client>();

  constructor(private readonly options: MqttIngressOptions) {
    this.warnings = new RateLimitedWarn(options.logger);
    this.routes = options.routes;
    this.limits = options.limits ?? DEFAULT_LIMITS;
    this.maxPayloadBytes = options.maxPayloadBytes;
    this.authenticator = options.authenticator ?? new Authenticator({ authenticated: false, allowAnonymous: true });
    this.access = options.access ?? new AccessPolicy({ routes: options.routes, authenticated: false });
    this.loginThrottle = new LoginThrottle(options.failedLoginMaxDelayMs ?? 10_000);
    this.maxPacketBytes = packetBound(this.maxPayloadBytes, this.limits);
  }

  async start(): Promise<IngressAddresses> {
    const { logger, tcp, tls } = this.options;
    const limits = this.limits;
    // Messages a subscriber may not receive are not queued for it (online or offline).
    const sessions = new SessionStore(limits, (clientId, topic) => this.mayReceive(clientId, topic), this.options.sessionTables);
    sessions.onCommandDelivered = () => this.commandHooks?.delivered();
    // An expired session no longer holds its client id for its owner (unless connected again).
    sessions.onSessionEnded = (clientId) => {
      if (!brokerClients(this.broker)[clientId]) this.sessionOwners.delete(clientId);
    };
    sessions.onSessionError = (err, clientId) =>
      this.warnings.warn('sessionWrite', { clientId, err: describeError(err) }, 'MQTT 5 session expiry not stored or not carried out');
    this.sessions = sessions;
    const broker = await Aedes.createBroker({
      persistence: sessions,
      preConnect: (client, packet, callback) => {
        if (packet.will) wills.add(packet.will);
        this.connects.set(client, { emptyClientId: packet.clientId === '', clean: packet.clean !== false, v5: packet.protocolVersion === 5 });
        // aedes stops reading a client while it authenticates it, and resumes after the CONNACK;
        // from here on, not only one event-loop turn later: a packet completed by a read in that
        // turn would reach authorizePublish before the client has an identity (and be denied).
        (client as ClientInternals).pause();
        callback(null, true);
      },
      authenticate: (client, username, password, callback) => {
        this.authenticate(client, username, password).then(
          () => callback(null, true),
          (err: Error & { returnCode?: number }) => callback(err as never, false),
        );
      },
      authorizePublish: (client, packet, callback) => this.authorizePublish(client, packet, callback),
      authorizeSubscribe: (client, sub, callback) => this.authorizeSubscribe(client, sub, callback),
      authorizeForward: (client, packet) => {
        const who = this.principals.get(client);
        if (who && !this.access.mayReceive(who, packet.topic)) return null;
        // [MQTT-3.1.2-24]: never more than the MQTT 5 client's own Maximum Packet Size (it would
        // disconnect, and be sent the same packet again on its return). aedes 2 does not check it.
        const max = (client as { maximumPacketSize?: number }).maximumPacketSize;
        if (max !== undefined && !fitsPacketSize(packet, max)) {
          this.refuse('forwardsTooLarge', 'EB_ERR_INGRESS_PAYLOAD_TOO_LARGE', { clientId: client.id, topic: packet.topic, maximumPacketSize: max }, 'message not sent to an MQTT 5 client: larger than the Maximum Packet Size it set');
          return null;
        }
        return packet;
      },
      // Device IDs are often MAC- or serial-based and longer than the 23 bytes MQTT 3.1.1 requires
      // brokers to accept at minimum [MQTT-3.1.3-5].
      maxClientsIdLength: 256,
      maxTopicLevels: limits.maxTopicLevels,
      maxInflightInbound: limits.maxInflightMessages,
      connectTimeout: limits.connectTimeoutMs,
      // MQTT 5, told in CONNACK and enforced (the packet bound also by PacketSizeGuard, earlier).
      receiveMaximum: limits.maxInflightMessages,
      maximumPacketSize: this.maxPacketBytes,
      topicAliasMaximum: limits.maxTopicAliases,
      // Messages waiting for room in a client's own Receive Maximum: as many as one may queue.
      maxOutboundWaiting: limits.maxQueuedMessages,
      maxOutboundWaitingBytes: limits.maxSessionBytes,
      // MQTT 5 session expiry (the session store keeps it across restarts): bounded, in seconds.
      sessionExpiryIntervalLimit: Math.floor((limits.maxSessionExpiry ?? DEFAULT_MAX_SESSION_EXPIRY_MS) / 1000),
      pendingSessionsLimit: limits.maxPendingSessions ?? DEFAULT_MAX_PENDING_SESSIONS,
    });
    this.broker = broker;
    broker.on('clientError', (client: Client, err: Error) => {
      logger.debug({ clientId: client?.id, err: describeError(err) }, 'mqtt client error');
    });
    // Persistent sessions restored from the database stay their owners' (no takeover by another
    // identity after a restart); a connection that completes its CONNECT records or ends its claim.
    for (const [clientId, username] of sessions.restoredOwners) {
      this.sessionOwners.set(clientId, { username, connection: 0, previous: undefined });
    }
    broker.on('clientReady', (client: Client) => {
      this.established.add(client);
      this.doneConnecting(client);
      try {
        if (client.clean) sessions.forgetOwner(client.id);
        else sessions.rememberOwner(client.id, this.principals.get(client)?.username);
        this.commandHooks?.deviceReady(this.deviceIdsOf(client));
      } catch (err) {
        this.warnings.warn('sessionWrite', { clientId: client.id, err: describeError(err) }, 'MQTT session owner not stored');
      }
    });
    // A persistent session that subscribes may now take its device's commands.
    broker.on('subscribe', (_subs: unknown, client: Client) => {
      if (!client || client.clean) return;
      try {
        this.commandHooks?.deviceReady(this.deviceIdsOf(client));
      } catch (err) {
        this.warnings.warn('sessionWrite', { clientId: client.id, err: describeError(err) }, 'served device not stored');
      }
    });
    broker.on('unsubscribe', (filters: string[], client: Client) => {
      const granted = this.grantedFilters.get(client);
      for (const filter of filters) granted?.delete(filter);
    });
    broker.on('clientDisconnect', (client: Client) => {
      this.throttles.get(client)?.close();

    });
    const handle = (conn: Socket): void => this.accept(broker, conn, conn);
    const addresses: { tcp?: AddressInfo; tls?: AddressInfo; websocket?: AddressInfo } = {};
    try {
      if (tcp) {
        const server = createTcpServer(handle);
        addresses.tcp = await this.listen(server, tcp.host, tcp.port, 'MQTT');
      }
      if (tls) {
        const tlsOptions: TlsOptions = {
          ...readKeyPair({ key: 'mqtt.tls.certFile', file: tls.certFile }, { key: 'mqtt.tls.keyFile', file: tls.keyFile }),
          minVersion: 'TLSv1.2',
          handshakeTimeout: limits.connectTimeoutMs,
          // With a CA, client certificates are asked for; required only with requireCertificate.
          requestCert: tls.caFile !== undefined,
          rejectUnauthorized: tls.requireCertificate,
          ...(tls.caFile === undefined ? {} : { ca: readCertificates('mqtt.tls.caFile', tls.caFile) }),
        };
        const server = createTlsServer(tlsOptions, handle);
        server.on('tlsClientError', (err: Error, socket: TLSSocket) => {
          this.refuse('tlsHandshakesFailed', 'EB_ERR_INGRESS_TLS_HANDSHAKE', { remoteAddress: socket.remoteAddress, err: describeError(err) }, 'MQTT TLS handshake failed (no or untrusted client certificate, or not TLS)');
        });
        addresses.tls = await this.listen(server, tls.host, tls.port, 'MQTT over TLS');
      }
      const { websocket } = this.options;
      if (websocket) {
        const server = createHttpServer((_req, res) => {
          res.writeHead(426, { 'content-type': 'text/plain', upgrade: 'websocket' });
          res.end(`MQTT over WebSocket: connect to ${websocket.path} with the "mqtt" subprotocol\n`);
        });
        server.headersTimeout = limits.connectTimeoutMs;
        // ws is loaded only by a gateway that has a WebSocket listener
        const { WebSocketServer, createWebSocketStream } = await import('ws');
        const wss = new WebSocketServer({
          server,
          path: websocket.path,
          // ws refuses a larger message by its header, before buffering it (close code 1009).
          maxPayload: this.maxPacketBytes + 8,
          handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : protocols.has('mqttv3.1') ? 'mqttv3.1' : false),
        });
        wss.on('connection', (ws, req) => {
          const stream = createWebSocketStream(ws);
          stream.on('error', () => undefined);
          req.socket.setKeepAlive(true, 60_000);
          this.accept(broker, stream as unknown as Socket, req.socket);
        });
        wss.on('error', (err) => logger.debug({ err: describeError(err) }, 'mqtt websocket error'));
        this.webSocketServers.push(wss);
        addresses.websocket = await this.listen(server as unknown as Server, websocket.host, websocket.port, 'MQTT over WebSocket');
      }
    } catch (err) {
      await this.close();
      throw err;
    }
    return addresses;
  }

  private async listen(server: Server, host: string, port: number, what: string): Promise<AddressInfo> {
    const { logger } = this.options;
    server.maxConnections = this.limits.maxConnections;
    server.on('drop', () => {
      this.refuse('connectionsRefused', 'EB_ERR_INGRESS_LIMIT', { maxConnections: this.limits.maxConnections }, 'connection refused: mqtt.limits.maxConnections reached');
    });
    this.servers.push(server);
    const address = await listen(server, host, port, 'EB_ERR_INGRESS_LISTEN', what, (err) =>
      logger.error({ err: describeError(err) }, `${what} listener error`),
    );
    const name = what === 'MQTT' ? 'mqtt' : what === 'MQTT over TLS' ? 'mqtt tls' : 'mqtt websocket';
    logger.info({ host: address.address, port: address.port }, `${name} listening`);
    return address;
  }

  /**
   * A new connection (`conn`: the TCP or TLS socket, or a WebSocket's stream over `socket`): aedes
   * gets it behind a guard that cuts off oversized and malformed packets.
   */
  private accept(broker: Aedes, conn: Socket, socket: Socket): void {
    // Half-open connections of clients with keepalive 0 are found by TCP keepalive.
    socket.setKeepAlive(true, 60_000);
    conn.on('error', () => undefined);
    const client = broker.handle(conn, undefined as never) as unknown as ClientInternals;
    this.remoteAddresses.set(client, socket.remoteAddress ?? 'unknown');
    this.sockets.add(socket);
    const connection = ++this.nextConnectionId;
    this.connectionIds.set(client, connection);
    // A clean session ends with its connection, and so does the claim of one that never
    // completed its CONNECT; a persistent session stays its owner's. Only this connection's own
    // entry goes: a newer connection with the same id has written its own.
    socket.once('close', () => {
      this.sockets.delete(socket);
      this.doneConnecting(client as Client);
      const id = (client as Client).id;
      const owner = id ? this.sessionOwners.get(id) : undefined;
      if (!id || owner?.connection !== connection) return;
      if (client.clean) this.sessionOwners.delete(id);
      else if (!this.established.has(client)) {
        // It never completed its CONNECT: the session it meant to take over, if any, is still
        // the previous owner's.
        if (owner.previous) this.sessionOwners.set(id, owner.previous);
        else this.sessionOwners.delete(id);
      }
    });
    const guard = new PacketSizeGuard(this.maxPacketBytes, Math.min(this.maxPacketBytes, MAX_CONNECT_BYTES));
    const parser = client._parser;
    const parse = parser.parse.bind(parser);
    let cut = false;
    parser.parse = (buf: Buffer): number => {
      if (cut) return 0;
      const verdict = guard.feed(buf);
      if (verdict.ok) return parse(buf);
      cut = true;
      if (verdict.reason === 'too-large') {
        this.refuse('oversized', 'EB_ERR_INGRESS_PAYLOAD_TOO_LARGE', { remoteAddress: socket.remoteAddress, clientId: client.id, packetBytes: verdict.packetBytes, maxPayloadBytes: this.maxPayloadBytes }, 'packet larger than mqtt.maxPayloadBytes (plus topic and headers) cut off at its header (client disconnected; MQTT 5: DISCONNECT 0x95)');
        // [MQTT-3.2.2-15]: an MQTT 5 client that was told the Maximum Packet Size learns why; the
        // rest of the packet is not read, and the connection goes once the DISCONNECT is out.
        if (guard.protocolLevel === 5 && (client.connected || client._connackWritten)) {
          conn.end(DISCONNECT_PACKET_TOO_LARGE);
          setTimeout(() => conn.destroy(), 1000).unref();
          return 0;
        }
      } else {
        this.refuse('malformedPackets', 'EB_ERR_INGRESS_MALFORMED', { remoteAddress: socket.remoteAddress, clientId: client.id }, 'malformed MQTT packet header (client disconnected)');
      }
      conn.destroy();
      return 0;
    };
  }

  private async authenticate(client: Client, username: string | undefined, password: Buffer | undefined): Promise<void> {
    const conn = (client as ClientInternals).conn;
    const address = this.remoteAddresses.get(client) ?? 'unknown';
    const connect = this.connects.get(client);
    // [MQTT-3.1.3-8]: a zero-length client id asks for a clean session the server names.
    // (MQTT 5 allows it: the server assigns the id, and no session of that id can exist.)
    if (connect?.emptyClientId && !connect.clean && !connect.v5) throw refusal(2, 'a zero-length client id needs cleanSession=1');
    // Per address and username: guessing one device's password is slowed, while the other
    // devices behind the same address (a NAT, a site router) keep logging in.
    const throttleKey = `${address}\u0000${username ?? ''}`;
    if (!this.loginThrottle.admit(throttleKey)) {
      this.counters.loginsFailed++;
      throw refusal(3, 'too many failed logins of this user from this address await their answer');
    }
    const tls = this.options.tls;
    const credentials: Credentials =
      conn instanceof TLSSocket && tls
        ? {
            username,
            password,
            tls: {
              verified: conn.authorized,
              commonName: conn.authorized ? commonNameOf(conn) : undefined,
              useIdentityAsUsername: tls.useIdentityAsUsername,
            },
          }
        : { username, password };
    let result: Awaited<ReturnType<Authenticator['login']>>;
    try {
      result = await this.authenticator.login(credentials);
    } catch (err) {
      this.loginThrottle.answered(throttleKey);
      throw err;
    }
    if (!result.ok) {
      this.refuse('loginsFailed', 'EB_ERR_INGRESS_LOGIN', { remoteAddress: address, clientId: client.id, username, reason: result.reason }, `MQTT login refused: ${result.reason}`);
      const holdMs = this.loginThrottle.failed(throttleKey);
      await new Promise((resolve) => setTimeout(resolve, holdMs));
      this.loginThrottle.answered(throttleKey);
      throw refusal(result.returnCode, result.reason);
    }
    this.loginThrottle.succeeded(throttleKey);
    const identity = result.username;
    const live = brokerClients(this.broker)[client.id];
    const owner = live ? { username: this.principals.get(live)?.username } : this.sessionOwners.get(client.id);
    const taken = (owner !== undefined && owner.username !== identity) || !this.authenticator.mayUseClientId(client.id, identity);
    // A client id that is the device's own identity is always its own, whoever squatted it.
    if (taken && !this.authenticator.ownsClientId(client.id, identity)) {
      this.refuse('takeoversRefused', 'EB_ERR_INGRESS_TAKEOVER', { remoteAddress: address, clientId: client.id, username: identity }, 'MQTT connection refused: its client id belongs to another identity\'s session');
      throw refusal(5, `client id ${client.id} belongs to another identity`);
    }
    this.principals.set(client, { username: identity, clientId: client.id });
    // Only a logged-in connection holds its device's commands back (an attacker's CONNECTs with
    // the device's client id and a wrong password must not).
    this.startConnecting(client, client.id);
    if ((client as ClientInternals).closed) throw refusal(5, 'closed while logging in');
    const previous = this.sessionOwners.get(client.id);
    this.sessionOwners.delete(client.id);
    this.sessionOwners.set(client.id, { username: identity, connection: this.connectionIds.get(client) ?? 0, previous: previous && { ...previous, previous: undefined } });
    if (this.sessionOwners.size > 100_000) this.sessionOwners.delete(this.sessionOwners.keys().next().value!);
    if (this.limits.publishRatePerSecond > 0) this.throttles.set(client, new PublishThrottle(this.limits.publishRatePerSecond));
  }

  /** Counts a refusal and logs it: at most one line a minute per counter, with the running total. */
  private refuse(counter: keyof IngressCounters, code: ErrorCode, fields: Record<string, unknown>, message: string): void {
    const total = ++this.counters[counter];
    this.warnings.warn(counter, { code, ...fields, total }, message);
  }

  /**
   * Why a topic name or filter is refused, if it is: longer than mqtt.limits.maxTopicBytes, or
   * holding U+0000 [MQTT-1.5.3-2] or U+FFFD, which is what invalid UTF-8 [MQTT-1.5.3-1] decodes to
   * (distinct invalid byte sequences would otherwise collapse into one device ID).
   */
  private topicProblem(topic: string): string | undefined {
    if (topic.length > this.limits.maxTopicBytes / 4 && Buffer.byteLength(topic) > this.limits.maxTopicBytes) {
      return `topic longer than mqtt.limits.maxTopicBytes (${this.limits.maxTopicBytes})`;
    }
    if (/[\u0000\uFFFD]/.test(topic)) return 'topic holds U+0000 or invalid UTF-8';
    return undefined;
  }

  private authorizeSubscribe(client: Client | null, sub: Subscription, callback: (error: Error | null, subscription?: Subscription | null) => void): void {
    if (client === null) {
      callback(null, sub);
      return;
    }
    if (this.topicProblem(sub.topic)) {
      this.counters.topicsRefused++;
      callback(null, null);
      return;
    }
    // aedes authorizes the filters of one SUBSCRIBE side by side and stores them later: the ones
    // granted on this connection count at once (restored ones of a persistent session too).
    const granted = this.grantedFilters.get(client) ?? new Set(Object.keys((client as unknown as { subscriptions?: Record<string, unknown> }).subscriptions ?? {}));
    this.grantedFilters.set(client, granted);
    if (!granted.has(sub.topic) && granted.size >= this.limits.maxSubscriptions) {
      this.counters.topicsRefused++;
      callback(null, null);
      return;
    }
    const who = this.principals.get(client);
    if (!who || !this.access.maySubscribe(who, sub.topic)) {
      this.refuse('subscriptionsDenied', 'EB_ERR_INGRESS_DENIED', { clientId: client.id, username: who?.username, topic: sub.topic }, 'MQTT subscription denied by the access policy (return code 0x80)');
      callback(null, null);
      return;
    }
    granted.add(sub.topic);
    callback(null, sub);
  }

  private authorizePublish(
    client: Client | null,
    packet: PublishPacket,
    callback: (error?: Error | null) => void,
  ): void {
    if (packet.topic.startsWith(SYS_PREFIX)) {
      callback(publishRefusal(`${SYS_PREFIX} topics are reserved`, REASON.notAuthorized, false));
      return;
    }
    const will = isWill(client, packet);
    if (this.closing && will) {
      // The gateway is stopping, the device did not go offline: no "offline" wills for every
      // device on each restart (aedes skips a will whose authorization fails).
      callback(new Error('the gateway is stopping: will not published'));
      return;
    }
    const topicProblem = this.topicProblem(packet.topic);
    if (topicProblem) {
      this.refuse('topicsRefused', 'EB_ERR_INGRESS_DENIED', { clientId: client?.id, problem: topicProblem }, `publish refused: ${topicProblem} (MQTT 3.1.1: client disconnected; MQTT 5: reason code 0x90)`);
      callback(publishRefusal(topicProblem, REASON.topicNameInvalid, false));
      return;
    }
    const size = typeof packet.payload === 'string' ? Buffer.byteLength(packet.payload) : packet.payload.length;
    if (size > this.maxPayloadBytes) {
      this.refuse('oversized', 'EB_ERR_INGRESS_PAYLOAD_TOO_LARGE', { clientId: client?.id, topic: packet.topic, bytes: size, maxPayloadBytes: this.maxPayloadBytes }, 'publish larger than mqtt.maxPayloadBytes refused (MQTT 3.1.1: client disconnected; MQTT 5: reason code 0x97)');
      callback(publishRefusal(`payload of ${size} bytes exceeds mqtt.maxPayloadBytes (${this.maxPayloadBytes})`, REASON.quotaExceeded, false));
      return;
    }
    // [MQTT-3.3.2-4]: the receiver may check it; a consumer in Kafka trusts the header that says UTF-8.
    if ((packet as { properties?: { payloadFormatIndicator?: boolean } }).properties?.payloadFormatIndicator === true && typeof packet.payload !== 'string' && !isUtf8(packet.payload)) {
      this.refuse('payloadsInvalid', 'EB_ERR_INGRESS_PAYLOAD_INVALID', { clientId: client?.id, topic: packet.topic }, 'MQTT 5 publish refused: its Payload Format Indicator says UTF-8 and the payload is not (reason code 0x99)');
      callback(publishRefusal('the payload is not valid UTF-8, as its Payload Format Indicator says', REASON.payloadFormatInvalid, false));
      return;
    }
    if (client !== null) {
      const who = this.principals.get(client);
      if (!who || !this.access.mayPublish(who, packet.topic)) {
        this.refuse('publishesDenied', 'EB_ERR_INGRESS_DENIED', { clientId: client.id, username: who?.username, topic: packet.topic }, 'MQTT publish denied by the access policy (not stored; MQTT 3.1.1: not acknowledged, client disconnected; MQTT 5: reason code 0x87)');
        callback(publishRefusal(`not authorized to publish to ${packet.topic}`, REASON.notAuthorized, false));
        return;
      }
    }
    const throttle = client !== null && !will ? this.throttles.get(client) : undefined;
    if (throttle) {
      if (throttle.run(() => this.route(client, packet, callback))) this.counters.publishesThrottled++;
    } else {
      this.route(client, packet, callback);
    }
  }

  private route(client: Client | null, packet: PublishPacket, callback: (error?: Error | null) => void): void {
    const match = this.routes.match(packet.topic);
    if (match === undefined) {
      this.counters.unrouted++;
      callback(null);
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
    const logEntry = toLogEntry(match, {
      topic: packet.topic,
      payload: typeof packet.payload === 'string' ? Buffer.from(packet.payload) : Buffer.from(packet.payload),
      qos: packet.qos,
      dup: packet.dup,
      messageId: packet.messageId,
      clientId: client?.id,
      receivedAt: Date.now(),
      properties: packet.properties,
    });
    // MQTT 5 Correlation Data (a reply to a command): the record carries it as `correlation-id`.
    const entry = withReplyCorrelation(logEntry, (packet as { properties?: { correlationData?: unknown } }).properties);
    this.options.sink.append(
      entry,
      (err, result) => {
        if (err) {
          // 3.1.1: no PUBACK; aedes closes the connection and the device sends the message again.
          // MQTT 5: a refusal for lack of room is final (reason code 0x97, the connection stays);
          // others close the connection with a DISCONNECT that says why, as in 3.1.1. The log's
          // failures are reported (once per state change) where the log is wired up.
          this.counters.refused++;
          callback(isV5(client) ? logRefusal(err) : err);
          return;
        }
        if (result === 'duplicate') this.counters.duplicates++;
        else this.counters.routed++;
        // A duplicate is acknowledged like the original, so the device stops resending it.
        callback(null);
        // Figures only, after the acknowledgement: nothing here may stand between a stored
        // record and its PUBACK.
        try {
          this.options.onStored?.(match, result === 'duplicate');
        } catch (err) {
          if (!this.countingFailed) this.options.logger.error({ err: describeError(err) }, 'counting a stored publish failed (a bug: please report; logged once)');
          this.countingFailed = true;
        }
      },
      // The connection owns the order of its publishes: once one is refused, none of its later
      // ones may be stored ahead of it (see GroupCommit). Not so the Last Will, which aedes
      // authorizes after the connection closed: it is no one's to acknowledge and must not be
      // dropped as an abandoned publish of a closed connection [MQTT-3.1.2-8].
      isWill(client, packet) || client === null ? undefined : this.appendOwner(client),
    );
  }

  /**
   * Who owns a connection's appends in the log (see AppendOwner): the connection itself, closed
   * when it is. An MQTT 5 connection's refusals for lack of room are final for their message only
   * (it was told so with 0x97); a 3.1.1 connection is closed by any refusal.
   */
  private appendOwner(client: Client): AppendOwner {
    let owner = this.appendOwners.get(client);
    if (!owner) {
      const internals = client as ClientInternals;
      owner = {
        get closed() {
          return internals.closed;
        },
        finalRefusals: isV5(client),
      };
      this.appendOwners.set(client, owner);
    }
    return owner;
  }

  /**
   * A connection between its CONNECT and the end of aedes's connect steps. aedes subscribes it
   * (restoreSubs) before it sends the session's queue (emptyQueue): a message published in
   * between reaches it twice, live and from the queue. Commands are not handed to a device
   * while one of its connections is here (it is told when the connection is ready).
   */
  private startConnecting(client: Client, clientId: string): void {
    this.connectingClientIds.set(client, clientId);
    this.connecting.set(clientId, (this.connecting.get(clientId) ?? 0) + 1);
  }

  private doneConnecting(client: Client): void {
    const id = this.connectingClientIds.get(client);
    if (id === undefined) return;
    this.connectingClientIds.delete(client);
    const left = (this.connecting.get(id) ?? 1) - 1;
    if (left > 0) this.connecting.set(id, left);
    else this.connecting.delete(id);
  }

  /** The device IDs a client may be: its client id (unless the broker made it up) and user name. */
  private deviceIdsOf(client: Client): string[] {
    const ids = this.connects.get(client)?.emptyClientId ? [] : [client.id];
    const username = this.principals.get(client)?.username;
    if (username !== undefined && username !== client.id) ids.push(username);
    return ids;
  }

  /** Whether a client (by id; live, or a persistent session kept for later) may receive `topic`. */
  private mayReceive(clientId: string, topic: string): boolean {
    const live = brokerClients(this.broker)[clientId];
    const owner = this.sessionOwners.get(clientId);
    const who = live ? this.principals.get(live) : owner ? { username: owner.username, clientId } : undefined;
    return who === undefined || this.access.mayReceive(who, topic);
  }

  /** Commands (src/commands) are told when a device connects and when it acknowledged a command. */
  attachCommands(hooks: CommandHooks): void {
    this.commandHooks = hooks;
  }

  /** What command delivery needs of the broker and the sessions. */
  commandOutlet(): CommandOutlet {
    return {
      hasDeviceSession: async (topic, deviceId) => {
        const sessions = this.sessions;
        if (!sessions) return false;
        const subs = await sessions.subscriptionsByTopic(topic);
        return subs.some(
          (sub) =>
            sub.qos > 0 &&
            !this.connecting.has(sub.clientId) &&
            (sub.clientId === deviceId || this.sessionOwners.get(sub.clientId)?.username === deviceId) &&
            this.mayReceive(sub.clientId, topic),
        );
      },
      publish: (packet) =>
        new Promise<void>((resolve, reject) => {
          const broker = this.broker;
          if (!broker) return reject(new Error('the MQTT broker is closed'));
          broker.publish(packet as unknown as PublishPacket, (err?: Error) => (err ? reject(err) : resolve()));
        }),
      dropQueued: async (packet) => {
        await this.sessions?.dropCommand({ ...packet });
      },
    };
  }

  get connectedClients(): number {
    return this.broker?.connectedClients ?? 0;
  }

  /**
   * Swaps who may log in and what they may touch (the password and ACL files re-read on SIGHUP,
   * as Mosquitto does). Connected clients keep their identity; their next publish, subscription
   * and delivery are judged by the new policy.
   */
  replaceAuth(authenticator: Authenticator, access: AccessPolicy): void {
    this.authenticator = authenticator;
    this.access = access;
  }

  /**
   * Swaps the route table (reload). Publishes from here on are routed by it; records already in
   * the log keep the Kafka topic they were stored for. Pair it with replaceAuth: the default
   * access rule follows the routes.
   */
  replaceRoutes(routes: RouteTable): void {
    this.routes = routes;
  }

  /**
   * Swaps the limits (reload). Publish, topic and subscription checks and the session store use
   * the new ones at once, and listeners take maxConnections for their next connection; the packet
   * size guard and publishRatePerSecond are set per connection, so they apply to new connections.
   * maxTopicLevels, maxInflightMessages and connectTimeoutMs are fixed when the broker and the
   * listeners are created.
   */
  replaceLimits(limits: IngressLimits, maxPayloadBytes: number): void {
    this.limits = limits;
    this.maxPayloadBytes = maxPayloadBytes;
    this.maxPacketBytes = packetBound(maxPayloadBytes, limits);
    // MQTT 5 clients are told the new bound in their next CONNACK.
    if (this.broker) (this.broker as unknown as { maximumPacketSize: number }).maximumPacketSize = this.maxPacketBytes;
    for (const server of this.servers) server.maxConnections = limits.maxConnections;
    this.sessions?.replaceLimits(limits);
  }

  /** Stops accepting connections and disconnects clients. */
  async close(): Promise<void> {
    this.closing = true;
    const servers = this.servers.splice(0);
    for (const wss of this.webSocketServers.splice(0)) {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
    }
    const broker = this.broker;
    this.broker = undefined;
    const serversClosed = Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    if (broker) await new Promise<void>((resolve) => broker.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    await serversClosed;
  }

  /** What was refused or limited, by reason (for /status and /metrics). */
  refusals(): MqttRefusals {
    const c = this.counters;
    const sessions = this.sessions?.counters;
    return {
      loginsFailed: c.loginsFailed,
      takeoversRefused: c.takeoversRefused,
      publishesDenied: c.publishesDenied,
      subscriptionsDenied: c.subscriptionsDenied,
      oversized: c.oversized,
      topicsRefused: c.topicsRefused,
      malformedPackets: c.malformedPackets,
      connectionsRefused: c.connectionsRefused,
      publishesThrottled: c.publishesThrottled,
      tlsHandshakesFailed: c.tlsHandshakesFailed,
      queueDropped: sessions?.queueDropped ?? 0,
      retainedRefused: sessions?.retainedRefused ?? 0,
      payloadsInvalid: c.payloadsInvalid,
      forwardsTooLarge: c.forwardsTooLarge,
    };
  }
}

/** The largest packet a connection may announce: the payload bound, the longest topic, headers. */
function packetBound(maxPayloadBytes: number, limits: IngressLimits): number {
  return maxPayloadBytes + limits.maxTopicBytes + PACKET_HEADROOM_BYTES;
}

/** Whether a PUBLISH to a client fits its Maximum Packet Size (measured exactly only when it may not). */
function fitsPacketSize(packet: PublishPacket, max: number): boolean {
  const payloadBytes = typeof packet.payload === 'string' ? Buffer.byteLength(packet.payload) : packet.payload.length;
  // Without properties the size is bounded by payload, topic and a few header bytes; with them
  // (user properties may be large) it is measured.
  const properties = (packet as { properties?: object }).properties;
  if (properties === undefined && payloadBytes + Buffer.byteLength(packet.topic) + 64 <= max) return true;
  const v5 = { ...packet, messageId: packet.qos > 0 ? 1 : undefined } as unknown as Parameters<typeof generatePacket>[0];
  return generatePacket(v5, { protocolVersion: 5 }).length <= max;
}

/** aedes's live clients by id (not in its type declarations). */
function brokerClients(broker: Aedes | undefined): Record<string, Client | undefined> {
  return (broker as unknown as { clients?: Record<string, Client | undefined> } | undefined)?.clients ?? {};
}

/** The subject CN of a TLS client's verified certificate. */
function commonNameOf(socket: TLSSocket): string | undefined {
  const cn = socket.getPeerCertificate().subject?.CN;
  return Array.isArray(cn) ? undefined : cn || undefined;
}
