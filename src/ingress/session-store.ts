import type { Client } from 'aedes';
import MemoryPersistence, { type StoredPacket as Packet } from 'aedes-persistence/asyncPersistence.js';

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

const sizeOf = (packet: Packet): number => packet.payload.length + packet.topic.length;

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

  constructor(
    private readonly limits: SessionStoreLimits,
    private readonly mayReceive: MayReceive = () => true,
  ) {
    super();
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
      this.heldBytes -= previous;
      this.retainedBytes.delete(packet.topic);
    }
    await super.storeRetained({ ...packet, payload: Buffer.alloc(0) });
  }

  override async outgoingEnqueue(sub: { clientId: string }, packet: Packet): Promise<void> {
    if (!this.admit(sub.clientId, packet)) return;
    await super.outgoingEnqueue(sub, packet);
  }

  override async outgoingEnqueueCombi(subs: { clientId: string }[], packet: Packet): Promise<void> {
    // One entry per matching filter: a subscriber with overlapping filters gets one copy (aedes
    // delivers one online too; a second would never be given a packet id, nor cleared).
    const seen = new Set<string>();
    const admitted = subs.filter((sub) => !seen.has(sub.clientId) && seen.add(sub.clientId) && this.admit(sub.clientId, packet));
    if (admitted.length > 0) await super.outgoingEnqueueCombi(admitted, packet);
  }

  override async outgoingUpdate(client: Client, packet: Packet): Promise<void> {
    const mine = this.queued.get(client.id);
    if (packet.brokerId !== undefined && packet.messageId !== undefined) {
      // The message is sent with a packet id (again after a reconnect: a new one); it is cleared
      // by that id, as the PUBLISH or as the PUBREL aedes puts in its place.
      const key = pendingKey(packet);
      if (!mine?.bytes.has(key)) return this.notQueued();
      const before = mine.idOf.get(key);
      if (before !== undefined) mine.byId.delete(before);
      mine.byId.set(packet.messageId, key);
      mine.idOf.set(key, packet.messageId);
    } else if (packet.messageId === undefined || !mine?.byId.has(packet.messageId)) {
      return this.notQueued();
    }
    await super.outgoingUpdate(client, packet);
  }

  override async outgoingClearMessageId(client: Client, packet: Packet): Promise<Packet | undefined> {
    // aedes "clears" a message it did not deliver (authorizeForward said no) by its packet id,
    // which that message never got: the memory store would remove another queued message.
    // Such messages are never queued here.
    if (packet.messageId === undefined) return undefined;
    const cleared = await super.outgoingClearMessageId(client, packet);
    const mine = this.queued.get(client.id);
    if (!cleared || !mine) return cleared;
    // The message the store removed (a packet id can be reused while an older message still
    // holds it): a PUBLISH names itself by its broker counter, a PUBREL by the id it was sent with.
    const key = cleared.brokerId !== undefined ? pendingKey(cleared) : mine.byId.get(packet.messageId);
    if (key !== undefined && mine.bytes.has(key)) {
      this.heldBytes -= mine.bytes.get(key)!;
      mine.bytes.delete(key);
      const id = mine.idOf.get(key);
      if (id !== undefined && mine.byId.get(id) === key) mine.byId.delete(id);
      mine.idOf.delete(key);
      if (mine.bytes.size === 0) this.queued.delete(client.id);
    }
    return cleared;
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
    await super.incomingStorePacket(client, { ...packet, payload: Buffer.alloc(0) });
    ids.add(messageId);
    this.inbound.set(client.id, ids);
  }

  override async incomingDelPacket(client: Client, packet: Packet): Promise<void> {
    await super.incomingDelPacket(client, packet);
    const ids = this.inbound.get(client.id);
    ids?.delete(packet.messageId ?? 0);
    if (ids?.size === 0) this.inbound.delete(client.id);
  }

  override async cleanIncoming(client: Client): Promise<void> {
    await super.cleanIncoming(client);
    this.inbound.delete(client.id);
  }

  private admit(clientId: string, packet: Packet): boolean {
    if (!this.mayReceive(clientId, packet.topic)) return false;
    const mine = this.queued.get(clientId) ?? { bytes: new Map<string, number>(), byId: new Map<number, string>(), idOf: new Map<string, number>() };
    const bytes = sizeOf(packet);
    if (mine.bytes.size >= this.limits.maxQueuedMessages || this.heldBytes + bytes > this.limits.maxSessionBytes) {
      this.counters.queueDropped++;
      return false;
    }
    mine.bytes.set(pendingKey(packet), bytes);
    this.queued.set(clientId, mine);
    this.heldBytes += bytes;
    return true;
  }
}
