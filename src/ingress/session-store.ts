import type { Aedes, Client } from 'aedes';
import MemoryPersistence, { type StoredPacket as Packet, type StoredSubscription } from 'aedes-persistence/asyncPersistence.js';
import { Readable } from 'node:stream';
import { commandBrokerId, commandOf, commandOfKey } from '../commands/packet.js';
import { EdgebridgeError } from '../errors.js';
import type { SessionExpiry, SessionPacket, SessionTables, StoredSessions } from '../log/session-tables.js';

/** MQTT 5's Session Expiry Interval "never". */
const SESSION_NEVER_EXPIRES = 0xffffffff;

/** An MQTT 5 client's finite, non-zero Session Expiry Interval (seconds); undefined for 3.1.1, 0 or never. */
export function sessionExpiryOf(client: { version?: number; sessionExpiryInterval?: number }): number | undefined {
  const interval = client.version === 5 ? client.sessionExpiryInterval : undefined;
  return interval !== undefined && interval > 0 && interval < SESSION_NEVER_EXPIRES ? interval : undefined;
}

export interface SessionStoreCounters {
  /** Messages for a subscriber whose queue was full (maxQueuedMessages) or over the byte budget: not queued. */
  queueDropped: number;
  /** Retained messages not kept: maxRetainedMessages, or the byte budget. */
  retainedRefused: number;
}

export interface SessionStoreLimits {
  readonly maxQueuedMessages: number;
  readonly maxRetainedMessages: number;
  /** Bytes of retained and queued messages held in memory together. */
  readonly maxSessionBytes: number;
  /** Inbound QoS 2 publishes one session may hold awaiting PUBREL, across reconnects. */
  readonly maxInflightMessages: number;
}

/** Whether a subscriber (by client id) may receive a message: the access policy, for queued messages. */
export type MayReceive = (clientId: string, topic: string) => boolean;

// A PUBREL that replaced a queued PUBLISH has neither.
const sizeOf = (packet: Packet): number => (packet.payload?.length ?? 0) + (packet.topic?.length ?? 0);

/** A queued message before aedes gives it a packet id: by the broker's own message counter. */
const pendingKey = (packet: Packet): string => `b${String(packet.brokerId)}:${String(packet.brokerCounter)}`;

/** A subscriber's queued messages: bytes by broker counter, and the packet id each was sent with. */
interface Subscriber {
  readonly bytes: Map<string, number>;
  readonly byId: Map<number, string>;
  readonly idOf: Map<string, number>;
}

/**
 * aedes's in-memory sessions (subscriptions, queued QoS 1/2 messages of persistent sessions,
 * inbound QoS 2 handshakes, retained messages) with bounds, so a subscriber that never comes
 * back, or a client retaining on ever new topics, cannot grow the heap without limit. Like
 * Mosquitto's max_queued_messages, a full queue drops new messages for that subscriber; a retained
 * message on a new topic is refused once maxRetainedMessages are kept; and retained and queued
 * messages share one byte budget (Mosquitto's memory_limit). Inbound QoS 2 packets are kept
 * without their payload (aedes needs only their ids to recognise a retransmit; it published them
 * already), at most mqtt.limits.maxInflightMessages per session, across reconnects. Local broker traffic only:
 * routed publishes are in the commit log before they are acknowledged.
 *
 * With `tables`, every change is also written to the commit log's database before the call
 * returns (session-tables.ts), and `setup` loads what a previous run left: persistent sessions,
 * their subscriptions and queued messages, retained messages and wills survive a restart. Reads
 * stay in memory; inbound QoS 2 payloads are kept on disk only.
 */
export class SessionStore extends MemoryPersistence {
  readonly counters: SessionStoreCounters = { queueDropped: 0, retainedRefused: 0 };
  /** Per subscriber: its queued messages, by the broker's message counter. */
  private readonly queued = new Map<string, Subscriber>();
  private readonly retainedBytes = new Map<string, number>();
  /** Per session: the ids of inbound QoS 2 publishes awaiting PUBREL. */
  private readonly inbound = new Map<string, Set<number>>();
  /** Bytes of retained and queued messages (a message queued for two subscribers counts twice). */
  private heldBytes = 0;

  /** Who owned each persistent session when the last run ended (filled by `setup`). */
  readonly restoredOwners = new Map<string, string | undefined>();
  /**
   * Which clients have rows in the database: a clean session's connect and disconnect (aedes
   * clears its subscriptions, inbound handshakes and will each time) then write nothing.
   */
  private readonly onDisk = { subscriptions: new Set<string>(), inbound: new Set<string>(), wills: new Set<string>() };
  /** The owners in the database (so that a reconnect of the same owner writes nothing). */
  private readonly owners = new Map<string, string | undefined>();
  /** Set while `setup` loads stored state: nothing is written back. */
  private restoring = false;

  /** Called after a device acknowledged a command (the outbox says delivered). */
  onCommandDelivered: () => void = () => undefined;
  /** A session's expiry could not be stored or carried out (the database failed): the caller logs it. */
  onSessionError: (err: unknown, clientId: string) => void = () => undefined;
  /** A session ended for good (expiry, maxPendingSessions): its client id is free for anyone again. */
  onSessionEnded: (clientId: string) => void = () => undefined;

  /** MQTT 5 sessions with a finite Session Expiry Interval, as the database has them. */
  private readonly expiryRows = new Map<string, SessionExpiry>();
  /** The disconnected ones: when each ends (ms). */
  private readonly expiries = new Map<string, number>();
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(
    private limits: SessionStoreLimits,
    private readonly mayReceive: MayReceive = () => true,
    private readonly tables?: SessionTables,
  ) {
    super();
  }

  /** New bounds (reload): they apply to the next message; what is held already stays. */
  replaceLimits(limits: SessionStoreLimits): void {
    this.limits = limits;
  }

  override async setup(broker: Aedes): Promise<void> {
    await super.setup(broker);
    if (this.tables) {
      // MQTT 5 sessions whose expiry passed while the gateway was down end before anything loads.
      const now = Date.now();
      for (const clientId of this.tables.expiredSessions(now)) this.tables.endSession(clientId);
      const stored = this.tables.load();
      await this.restore(stored);
      this.tables.reconcileCommands();
      for (const [clientId, row] of stored.expiry) {
        // Connected when the last run ended (it crashed): its interval runs from now.
        const expiresAt = row.expiresAt ?? now + row.intervalS * 1000;
        if (row.expiresAt === null) this.tables.putExpiry(clientId, row.intervalS, expiresAt);
        this.expiryRows.set(clientId, { intervalS: row.intervalS, expiresAt });
        this.expiries.set(clientId, expiresAt);
      }
      this.scheduleSweep();
    }
    // (A bare persistence test gives a broker without events.)
    if (typeof (broker as Partial<Aedes>).on !== 'function') return;
    broker.on('clientReady', (client: Client) => this.guard(client.id, () => this.sessionStarted(client)));
    broker.on('clientDisconnect', (client: Client) => this.guard(client.id, () => this.sessionDisconnected(client)));
    // aedes ended a disconnecting v5 session at once (mqtt.limits.maxPendingSessions reached).
    broker.on('sessionLimitReached', (client: Client, info: { reason?: string } | undefined) => {
      if (info?.reason === 'sessionExpiry') this.guard(client.id, () => this.endSession(client.id));
    });
  }

  /** Runs a session-expiry step of an event handler; a failure goes to onSessionError. */
  private guard(clientId: string, step: () => void | Promise<void>): void {
    try {
      const done = step();
      if (done) done.catch((err: unknown) => this.onSessionError(err, clientId));
    } catch (err) {
      this.onSessionError(err, clientId);
    }
  }

  /**
   * A connection took up a session: a pending expiry is off. An MQTT 5 session with a finite
   * Session Expiry Interval is recorded (it ends that long after its disconnect, also across a
   * restart); any other session has no timed expiry (3.1.1: kept until a clean connect).
   */
  private sessionStarted(client: Client): void {
    const { id } = client;
    this.expiries.delete(id);
    const interval = sessionExpiryOf(client);
    const row = this.expiryRows.get(id);
    if (interval !== undefined && !client.clean) {
      if (row?.intervalS === interval && row.expiresAt === null) return;
      this.write('session expiry', (t) => t.putExpiry(id, interval, null));
      this.expiryRows.set(id, { intervalS: interval, expiresAt: null });
    } else if (row !== undefined) {
      this.write('session expiry', (t) => t.deleteExpiry(id));
      this.expiryRows.delete(id);
    }
  }

  /**
   * An MQTT 5 connection ended: its session ends now (interval 0: aedes drops what it holds in
   * memory, this the rows), or is timed to end (aedes's own timer is in memory only): the state
   * is kept until then [MQTT-3.1.2-23], also across a restart, and not after [MQTT-4.1.0-2].
   */
  private async sessionDisconnected(client: Client): Promise<void> {
    const { id } = client;
    if ((client as { version?: number }).version !== 5) return;
    // A takeover: the new connection resumes the session.
    if ((this.broker as unknown as { _takingOver?: Set<string> })?._takingOver?.has(id)) return;
    const interval = (client as { sessionExpiryInterval?: number }).sessionExpiryInterval ?? 0;
    if (interval === 0) {
      if (!(this.broker as unknown as { closed?: boolean })?.closed && this.holds(id)) await this.endSession(id);
      return;
    }
    if (interval >= SESSION_NEVER_EXPIRES) return;
    const expiresAt = Date.now() + interval * 1000;
    this.write('session expiry', (t) => t.putExpiry(id, interval, expiresAt));
    this.expiryRows.set(id, { intervalS: interval, expiresAt });
    this.expiries.set(id, expiresAt);
    this.scheduleSweep();
  }

  /** Whether anything of a session is held (in memory or on disk). */
  private holds(clientId: string): boolean {
    return (
      this.onDisk.subscriptions.has(clientId) ||
      this.onDisk.inbound.has(clientId) ||
      this.queued.has(clientId) ||
      this.owners.has(clientId) ||
      this.expiryRows.has(clientId)
    );
  }

  /** The next sweep: at the earliest expiry (at most an hour ahead: timers are 32-bit). */
  private scheduleSweep(): void {
    if (this.sweepTimer) clearTimeout(this.sweepTimer);
    this.sweepTimer = undefined;
    if (this.expiries.size === 0) return;
    const next = Math.min(...this.expiries.values());
    this.sweepTimer = setTimeout(() => void this.sweep(), Math.max(0, Math.min(next - Date.now(), 3600e3)));
    this.sweepTimer.unref();
  }

  private async sweep(): Promise<void> {
    this.sweepTimer = undefined;
    const broker = this.broker as unknown as { closed?: boolean; clients?: Record<string, unknown> } | undefined;
    if (broker?.closed) return;
    const now = Date.now();
    for (const [clientId, expiresAt] of [...this.expiries]) {
      if (expiresAt > now) continue;
      this.expiries.delete(clientId);
      // Taken up again meanwhile (clientReady clears it; this is for a connect under way).
      if (broker?.clients?.[clientId]) continue;
      await this.endSession(clientId).catch((err: unknown) => this.onSessionError(err, clientId));
    }
    this.scheduleSweep();
  }

  /**
   * Ends a session for good (its expiry passed, or maxPendingSessions): subscriptions, queued
   * messages (its commands wait in the outbox again), inbound QoS 2 state, owner and expiry go,
   * from the database in one transaction and then from memory.
   */
  async endSession(clientId: string): Promise<void> {
    const client = { id: clientId } as Client;
    this.expiries.delete(clientId);
    this.write('ended session', (t) => t.endSession(clientId));
    this.expiryRows.delete(clientId);
    this.onDisk.subscriptions.delete(clientId);
    this.onDisk.inbound.delete(clientId);
    this.owners.delete(clientId);
    this.restoredOwners.delete(clientId);
    this.onSessionEnded(clientId);
    await super.cleanSubscriptions(client);
    await super.cleanIncoming(client);
    this.inbound.delete(clientId);
    // The memory store removes by packet id: each entry gets id 0 first (never used on the wire).
    for await (const packet of super.outgoingStream(client)) {
      const stamp = { topic: '', payload: Buffer.alloc(0), brokerId: packet.brokerId, brokerCounter: packet.brokerCounter, messageId: 0 };
      await super.outgoingUpdate(client, stamp);
      await super.outgoingClearMessageId(client, stamp);
    }
    for (const key of [...(this.queued.get(clientId)?.bytes.keys() ?? [])]) this.unqueue(clientId, key);
  }

  /** Writes a change through to the database (not while restoring); a failure is the caller's error. */
  private write(what: string, change: (tables: SessionTables) => void): void {
    if (!this.tables || this.restoring) return;
    try {
      change(this.tables);
    } catch (err) {
      throw new EdgebridgeError('EB_ERR_SESSION_WRITE', `MQTT session state not stored (${what}): ${(err as Error).message}`, { cause: err });
    }
  }

  private async restore(stored: StoredSessions): Promise<void> {
    this.restoring = true;
    try {
      for (const [clientId, subs] of stored.subscriptions) {
        await super.addSubscriptions({ id: clientId } as Client, subs as StoredSubscription[]);
        this.onDisk.subscriptions.add(clientId);
      }
      for (const packet of stored.retained) {
        await this.storeRetained(packet);
        if (!this.retainedBytes.has(packet.topic)) this.tables!.deleteRetained(packet.topic);
      }
      // Owners first: whether a queued command is its session's device's depends on them.
      for (const [clientId, username] of stored.owners) this.owners.set(clientId, username ?? undefined);
      for (const { clientId, key, packet } of stored.queue) {
        const client = { id: clientId } as Client;
        if (!this.admit(clientId, packet, key)) {
          this.tables!.deleteQueued(clientId, key);
          continue;
        }
        // A PUBREL is queued as itself (its identity: outgoingUpdate), then given its id.
        const entry = packet.cmd === 'pubrel' ? { ...packet, brokerId: `$pubrel:${key}`, brokerCounter: 0 } : packet;
        await super.outgoingEnqueue({ clientId }, entry);
        if (packet.messageId !== undefined && packet.messageId !== null) await super.outgoingUpdate(client, entry);
        if (packet.messageId !== undefined && packet.messageId !== null) this.sentWithId(clientId, key, packet.messageId);
      }
      for (const { clientId, packet } of stored.inbound) {
        try {
          await this.incomingStorePacket({ id: clientId } as Client, packet);
          this.onDisk.inbound.add(clientId);
        } catch {
          // over a lowered mqtt.limits.maxInflightMessages: the client sends it again
          this.tables!.deleteInbound(clientId, packet.messageId ?? 0);
        }
      }
      for (const { clientId, packet } of stored.wills) {
        // The will keeps the id of the broker that took it: that broker is gone, so aedes
        // publishes it (its will check runs every 4 heartbeats), as for any connection that ended
        // without a DISCONNECT.
        const brokerId = packet.brokerId;
        await super.putWill({ id: clientId } as Client, packet);
        packet.brokerId = brokerId;
        this.onDisk.wills.add(clientId);
      }
      for (const [clientId, username] of stored.owners) this.restoredOwners.set(clientId, username ?? undefined);
      for (const [clientId, username] of this.restoredOwners) this.owners.set(clientId, username);
    } finally {
      this.restoring = false;
    }
  }

  /** A persistent session was established by `username` (undefined: anonymous). */
  rememberOwner(clientId: string, username: string | undefined): void {
    if (this.owners.has(clientId) && this.owners.get(clientId) === username) return;
    this.write('session owner', (t) => t.putOwner(clientId, username));
    this.owners.set(clientId, username);
  }

  /** A clean session replaced whatever session the client id had. */
  forgetOwner(clientId: string): void {
    if (!this.owners.has(clientId)) return;
    this.write('session owner', (t) => t.deleteOwner(clientId));
    this.owners.delete(clientId);
  }

  /** Bytes the store holds now (for tests and status). */
  get bytes(): number {
    return this.heldBytes;
  }

  override async storeRetained(packet: Packet): Promise<void> {
    const previous = this.retainedBytes.get(packet.topic);
    if (packet.payload.length > 0) {
      const bytes = sizeOf(packet);
      const full = previous === undefined && this.retainedBytes.size >= this.limits.maxRetainedMessages;
      if (!full && this.heldBytes - (previous ?? 0) + bytes <= this.limits.maxSessionBytes) {
        this.write('retained message', (t) => t.putRetained(packet as SessionPacket));
        this.heldBytes += bytes - (previous ?? 0);
        this.retainedBytes.set(packet.topic, bytes);
        await super.storeRetained(packet);
        return;
      }
      this.counters.retainedRefused++;
      if (previous === undefined) return;
      // Refused as a replacement: the old value goes too, rather than being served as current.
    }
    if (previous !== undefined) {
      this.write('retained message', (t) => t.deleteRetained(packet.topic));
      this.heldBytes -= previous;
      this.retainedBytes.delete(packet.topic);
    }
    await super.storeRetained({ ...packet, payload: Buffer.alloc(0) });
  }

  override async addSubscriptions(client: Client, subs: StoredSubscription[]): Promise<void> {
    // A clean session ends with its connection: nothing of it is kept for a restart.
    if (client.clean !== true) {
      this.write('subscriptions', (t) => t.putSubscriptions(client.id, subs));
      if (!this.restoring) this.onDisk.subscriptions.add(client.id);
    }
    await super.addSubscriptions(client, subs);
  }

  override async removeSubscriptions(client: Client, topics: string[]): Promise<void> {
    if (this.onDisk.subscriptions.has(client.id)) this.write('subscriptions', (t) => t.deleteSubscriptions(client.id, topics));
    await super.removeSubscriptions(client, topics);
  }

  override async cleanSubscriptions(client: Client): Promise<void> {
    if (this.onDisk.subscriptions.has(client.id)) {
      this.write('subscriptions', (t) => t.deleteSubscriptions(client.id, null));
      this.onDisk.subscriptions.delete(client.id);
    }
    await super.cleanSubscriptions(client);
  }

  override async outgoingEnqueue(sub: { clientId: string }, packet: Packet): Promise<void> {
    if (!this.admit(sub.clientId, packet)) return;
    this.stored([sub.clientId], packet);
    await super.outgoingEnqueue(sub, packet);
  }

  override async outgoingEnqueueCombi(subs: { clientId: string }[], packet: Packet): Promise<void> {
    // One entry per matching filter: a subscriber with overlapping filters gets one copy (aedes
    // delivers one online too; a second would never be given a packet id, nor cleared).
    const seen = new Set<string>();
    const admitted = subs.filter((sub) => !seen.has(sub.clientId) && seen.add(sub.clientId) && this.admit(sub.clientId, packet));
    if (admitted.length === 0) return;
    this.stored(admitted.map((sub) => sub.clientId), packet);
    await super.outgoingEnqueueCombi(admitted, packet);
  }

  /** Writes admitted messages through; if that fails they were not queued after all. */
  private stored(clientIds: string[], packet: Packet): void {
    const key = pendingKey(packet);
    try {
      this.write('queued message', (t) => t.enqueue(clientIds, key, packet as SessionPacket));
    } catch (err) {
      for (const id of clientIds) this.unqueue(id, key);
      throw err;
    }
  }

  override async outgoingUpdate(client: Client, packet: Packet): Promise<void> {
    const mine = this.queued.get(client.id);
    if (packet.brokerId !== undefined && packet.messageId !== undefined) {
      // The message is sent with a packet id (again after a reconnect: a new one); it is cleared
      // by that id, as the PUBLISH or as the PUBREL aedes puts in its place.
      const key = pendingKey(packet);
      if (!mine?.bytes.has(key)) return this.notQueued();
      this.write('queued message', (t) => t.updateQueued(client.id, key, packet as SessionPacket));
      this.sentWithId(client.id, key, packet.messageId);
    } else {
      // A PUBREL in place of the PUBLISH sent with its id (the first in queue order, as the
      // memory store picks it). It gets an identity of its own: the memory store matches
      // entries by broker id and counter first, and two PUBRELs without them would match each
      // other (two QoS 2 messages in flight: the second's PUBREL overwrote the first's).
      const key = mine && packet.messageId !== undefined ? this.sentWith(mine, packet.messageId) : undefined;
      if (key === undefined) return this.notQueued();
      const pubrel = { ...packet, brokerId: `$pubrel:${key}`, brokerCounter: 0 };
      this.write('queued message', (t) => t.updateQueued(client.id, key, pubrel as SessionPacket));
      await super.outgoingUpdate(client, pubrel);
      return;
    }
    await super.outgoingUpdate(client, packet);
  }

  private sentWithId(clientId: string, key: string, messageId: number): void {
    const mine = this.queued.get(clientId);
    if (!mine) return;
    const before = mine.idOf.get(key);
    if (before !== undefined) mine.byId.delete(before);
    mine.byId.set(messageId, key);
    mine.idOf.set(key, messageId);
  }

  override async outgoingClearMessageId(client: Client, packet: Packet): Promise<Packet | undefined> {
    // aedes "clears" a message it did not deliver (authorizeForward said no) by its packet id,
    // which that message never got: the memory store would remove another queued message.
    // Such messages are never queued here.
    if (packet.messageId === undefined) return undefined;
    // The queued message sent with this packet id (its PUBLISH, or the PUBREL in its place):
    // removed from disk first, so that a failed write leaves memory and disk as they were.
    const mine = this.queued.get(client.id);
    const key = mine && this.sentWith(mine, packet.messageId);
    if (mine && key !== undefined) {
      const command = commandOfKey(key);
      if (command) this.clearCommand(client, key, command, packet.cmd === 'puback' || packet.cmd === 'pubcomp');
      else this.write('queued message', (t) => t.deleteQueued(client.id, key));
    }
    const cleared = await super.outgoingClearMessageId(client, packet);
    if (key !== undefined) this.unqueue(client.id, key);
    return cleared;
  }

  /**
   * A command left a session queue. aedes clears a queued message for the device's PUBACK (QoS 1)
   * or PUBCOMP (QoS 2), passing that acknowledgement; and also when it drops the message, passing
   * the queued PUBLISH itself: a Clean Start replaced the session, the session ended, the client
   * may not (or no longer) receive the topic, or the message is too large for it. Only the
   * device's acknowledgement delivers the command (with the queue entry, in one transaction);
   * a dropped one waits in the outbox again.
   */
  private clearCommand(client: Client, key: string, command: { deviceId: string; seq: number }, acknowledged: boolean): void {
    const dropped = !acknowledged;
    let delivered = false;
    this.write('command acknowledgement', (t) =>
      t.atomically(() => {
        t.deleteQueued(client.id, key);
        if (dropped) t.outbox.markWaiting(command.seq);
        else delivered = t.outbox.markDelivered(command.seq, Date.now());
      }),
    );
    if (delivered) {
      this.onCommandDelivered();
      // A device with several persistent sessions (one user name, new client ids) has a copy in
      // each: delivered once, the others go.
      this.dropCommand({ brokerId: commandBrokerId(command.deviceId), brokerCounter: command.seq }, client.id).catch(() => undefined);
    }
  }

  /** Expired messages (a command past its TTL) are not sent again, also not after a reconnect. */
  override outgoingStream(client: Client | { id: string }): AsyncIterable<Packet> {
    const all = super.outgoingStream(client);
    return Readable.from(
      (async function* live() {
        const now = Date.now();
        for await (const packet of all) {
          const expiry = (packet as { messageExpiry?: unknown }).messageExpiry;
          if (typeof expiry === 'number' && expiry <= now) continue;
          // A PUBREL's identity is this store's own (outgoingUpdate): it leaves without it.
          if (typeof packet.brokerId === 'string' && packet.brokerId.startsWith('$pubrel:')) {
            const { brokerId: _id, brokerCounter: _counter, ...pubrel } = packet;
            yield pubrel as Packet;
          } else {
            yield packet;
          }
        }
      })(),
    );
  }

  /** Takes a command whose TTL ended out of every queue (memory and database). */
  async dropCommand(packet: Pick<Packet, 'brokerId' | 'brokerCounter'>, exceptClientId?: string): Promise<void> {
    const key = pendingKey(packet as Packet);
    const holders = [...this.queued.keys()].filter((id) => id !== exceptClientId && this.queued.get(id)!.bytes.has(key));
    for (const clientId of holders) {
      const client = { id: clientId } as Client;
      this.write('command', (t) => t.deleteQueued(clientId, key));
      // The memory store removes by packet id: the entry gets id 0 first (never used on the
      // wire, so no other entry holds it).
      const stamp = { topic: '', payload: Buffer.alloc(0), brokerId: packet.brokerId, brokerCounter: packet.brokerCounter, messageId: 0 };
      await super.outgoingUpdate(client, stamp);
      await super.outgoingClearMessageId(client, stamp);
      this.unqueue(clientId, key);
    }
  }

  /**
   * The queued message the memory store clears for a packet id: the first in queue order that
   * was sent with it (an old one can still hold an id that came round again).
   */
  private sentWith(mine: Subscriber, messageId: number): string | undefined {
    for (const key of mine.bytes.keys()) if (mine.idOf.get(key) === messageId) return key;
    return undefined;
  }

  /** Whether a session (by client id) is the device's: its client id, or its owner's user name. */
  private isDevice(clientId: string, deviceId: string): boolean {
    return clientId === deviceId || this.owners.get(clientId) === deviceId;
  }

  private unqueue(clientId: string, key: string): void {
    const mine = this.queued.get(clientId);
    const bytes = mine?.bytes.get(key);
    if (!mine || bytes === undefined) return;
    this.heldBytes -= bytes;
    mine.bytes.delete(key);
    const id = mine.idOf.get(key);
    if (id !== undefined && mine.byId.get(id) === key) mine.byId.delete(id);
    mine.idOf.delete(key);
    if (mine.bytes.size === 0) this.queued.delete(clientId);
  }

  /**
   * A message refused by a limit was not queued: aedes delivers it to the online subscriber
   * anyway, rather than failing on "no such packet" and disconnecting it.
   */
  private notQueued(): void {}

  override async incomingStorePacket(client: Client, packet: Packet): Promise<void> {
    // aedes bounds these per connection; a persistent session keeps them across reconnects.
    const ids = this.inbound.get(client.id) ?? new Set<number>();
    const messageId = packet.messageId ?? 0;
    if (!ids.has(messageId) && ids.size >= this.limits.maxInflightMessages) {
      throw new Error(`mqtt.limits.maxInflightMessages (${this.limits.maxInflightMessages}) QoS 2 publishes of this session await PUBREL`);
    }
    if (client.clean !== true) {
      this.write('inbound QoS 2 packet', (t) => t.putInbound(client.id, packet as SessionPacket));
      if (!this.restoring) this.onDisk.inbound.add(client.id);
    }
    await super.incomingStorePacket(client, { ...packet, payload: Buffer.alloc(0) });
    ids.add(messageId);
    this.inbound.set(client.id, ids);
  }

  /** With tables, the packet as it was received (the memory copy has no payload). */
  override async incomingGetPacket(client: Client, packet: Packet): Promise<Packet> {
    const inMemory = await super.incomingGetPacket(client, packet);
    return this.tables?.getInbound(client.id, packet.messageId ?? 0) ?? inMemory;
  }

  override async incomingDelPacket(client: Client, packet: Packet): Promise<void> {
    await super.incomingDelPacket(client, packet);
    if (this.onDisk.inbound.has(client.id)) this.write('inbound QoS 2 packet', (t) => t.deleteInbound(client.id, packet.messageId ?? 0));
    const ids = this.inbound.get(client.id);
    ids?.delete(packet.messageId ?? 0);
    if (ids?.size === 0) this.inbound.delete(client.id);
  }

  override async cleanIncoming(client: Client): Promise<void> {
    if (this.onDisk.inbound.has(client.id)) {
      this.write('inbound QoS 2 packets', (t) => t.clearInbound(client.id));
      this.onDisk.inbound.delete(client.id);
    }
    await super.cleanIncoming(client);
    this.inbound.delete(client.id);
  }

  override async putWill(client: Client, packet: Packet): Promise<void> {
    // To disk first, as the memory store will have it (a failed write changes nothing).
    this.write('will', (t) => t.putWill(client.id, { ...packet, brokerId: this.broker?.id, clientId: client.id } as SessionPacket));
    await super.putWill(client, packet);
    if (!this.restoring) this.onDisk.wills.add(client.id);
  }

  override async delWill(client: Client): Promise<Packet | undefined> {
    if (this.onDisk.wills.has(client.id)) {
      this.write('will', (t) => t.deleteWill(client.id));
      this.onDisk.wills.delete(client.id);
    }
    return super.delWill(client);
  }

  private admit(clientId: string, packet: Packet, key = pendingKey(packet)): boolean {
    if (!this.mayReceive(clientId, packet.topic)) return false;
    const command = commandOf(packet);
    // A command is kept for its device's own sessions only: another subscriber of its topic (a
    // console on devices/+/commands/#) gets it live, as a copy, and nothing waits on its PUBACK.
    if (command && !this.isDevice(clientId, command.deviceId)) return false;
    const mine = this.queued.get(clientId) ?? { bytes: new Map<string, number>(), byId: new Map<number, string>(), idOf: new Map<string, number>() };
    // Queued already (a command handed again after a restart): one copy.
    if (mine.bytes.has(key)) return false;
    const bytes = sizeOf(packet);
    // Commands are bounded by commands.maxPending instead: one the device's session refused
    // could still be sent to it online, unqueued, and its acknowledgement would then be lost.
    if (!command && (mine.bytes.size >= this.limits.maxQueuedMessages || this.heldBytes + bytes > this.limits.maxSessionBytes)) {
      this.counters.queueDropped++;
      return false;
    }
    mine.bytes.set(key, bytes);
    this.queued.set(clientId, mine);
    this.heldBytes += bytes;
    return true;
  }
}
