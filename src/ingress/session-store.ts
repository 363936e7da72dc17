import type { Client } from 'aedes';
import MemoryPersistence, { type StoredPacket as Packet } from 'aedes-persistence/asyncPersistence.js';

export interface SessionStoreCounters {
  /** Messages for a subscriber whose queue was full (maxQueuedMessages) or over the byte budget: not queued. */
  queueDropped: number;
  /** Retained messages not kept: maxRetainedMessages, or the byte budget. */
  retainedRefused: number;
  /** Inbound QoS 2 publishes refused for the byte budget (the client is disconnected). */
  inflightRefused: number;
}

export interface SessionStoreLimits {
  readonly maxQueuedMessages: number;
  readonly maxRetainedMessages: number;
  /** Payload bytes held in memory for retained, queued and inbound QoS 2 messages together. */
  readonly maxSessionBytes: number;
}

/** Whether a subscriber (by client id) may receive a message: the access policy, for queued messages. */
export type MayReceive = (clientId: string, topic: string) => boolean;

const payloadBytes = (packet: Packet): number => (packet.payload ? packet.payload.length : 0) + packet.topic.length;

/**
 * aedes's in-memory sessions (subscriptions, queued QoS 1/2 messages of persistent sessions,
 * inbound QoS 2 publishes awaiting PUBREL, retained messages) with bounds, so a subscriber that
 * never comes back, a client retaining on ever new topics, or persistent clients that never
 * release their QoS 2 publishes cannot grow the heap without limit. Like Mosquitto's
 * max_queued_messages, a full queue drops new messages for that subscriber; a retained message on
 * a new topic is refused once maxRetainedMessages are kept (replacing or clearing one is always
 * allowed); and all of it shares one byte budget (Mosquitto's memory_limit). Local broker traffic
 * and QoS 2 handshakes only: routed publishes are in the commit log before they are acknowledged.
 */
export class SessionStore extends MemoryPersistence {
  readonly counters: SessionStoreCounters = { queueDropped: 0, retainedRefused: 0, inflightRefused: 0 };
  private readonly queued = new Map<string, number>();
  private readonly retainedBytes = new Map<string, number>();
  private readonly inflightBytes = new Map<string, Map<number, number>>();
  /** Bytes of everything held: retained, queued (counted per subscriber) and inbound QoS 2. */
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
    if (packet.payload.length === 0) {
      if (previous !== undefined) {
        this.heldBytes -= previous;
        this.retainedBytes.delete(packet.topic);
      }
    } else {
      const bytes = payloadBytes(packet);
      const full = previous === undefined && this.retainedBytes.size >= this.limits.maxRetainedMessages;
      if (full || this.heldBytes - (previous ?? 0) + bytes > this.limits.maxSessionBytes) {
        this.counters.retainedRefused++;
        return;
      }
      this.heldBytes += bytes - (previous ?? 0);
      this.retainedBytes.set(packet.topic, bytes);
    }
    await super.storeRetained(packet);
  }

  override async outgoingEnqueue(sub: { clientId: string }, packet: Packet): Promise<void> {
    if (!this.admit(sub.clientId, packet)) return;
    await super.outgoingEnqueue(sub, packet);
  }

  override async outgoingEnqueueCombi(subs: { clientId: string }[], packet: Packet): Promise<void> {
    const admitted = subs.filter((sub) => this.admit(sub.clientId, packet));
    if (admitted.length > 0) await super.outgoingEnqueueCombi(admitted, packet);
  }

  override async outgoingClearMessageId(client: Client, packet: Packet): Promise<Packet | undefined> {
    // aedes "clears" a message it did not deliver (authorizeForward said no) by its packet id,
    // which that message never got: the memory store would remove another queued message, whose
    // later update then fails and disconnects the subscriber. Such messages are never queued here.
    if (packet.messageId === undefined) return undefined;
    const cleared = await super.outgoingClearMessageId(client, packet);
    if (cleared) {
      this.heldBytes -= payloadBytes(cleared);
      const n = (this.queued.get(client.id) ?? 1) - 1;
      if (n <= 0) this.queued.delete(client.id);
      else this.queued.set(client.id, n);
    }
    return cleared;
  }

  override async incomingStorePacket(client: Client, packet: Packet): Promise<void> {
    const mine = this.inflightBytes.get(client.id) ?? new Map<number, number>();
    const messageId = packet.messageId ?? 0;
    const previous = mine.get(messageId) ?? 0;
    const bytes = payloadBytes(packet);
    if (this.heldBytes - previous + bytes > this.limits.maxSessionBytes) {
      this.counters.inflightRefused++;
      throw new Error(`mqtt.limits.maxSessionBytes (${this.limits.maxSessionBytes}) reached: QoS 2 publish refused`);
    }
    await super.incomingStorePacket(client, packet);
    this.heldBytes += bytes - previous;
    mine.set(messageId, bytes);
    this.inflightBytes.set(client.id, mine);
  }

  override async incomingDelPacket(client: Client, packet: Packet): Promise<void> {
    await super.incomingDelPacket(client, packet);
    const mine = this.inflightBytes.get(client.id);
    const bytes = mine?.get(packet.messageId ?? 0);
    if (mine && bytes !== undefined) {
      this.heldBytes -= bytes;
      mine.delete(packet.messageId ?? 0);
      if (mine.size === 0) this.inflightBytes.delete(client.id);
    }
  }

  override async cleanIncoming(client: Client): Promise<void> {
    await super.cleanIncoming(client);
    const mine = this.inflightBytes.get(client.id);
    if (mine) {
      for (const bytes of mine.values()) this.heldBytes -= bytes;
      this.inflightBytes.delete(client.id);
    }
  }

  private admit(clientId: string, packet: Packet): boolean {
    if (!this.mayReceive(clientId, packet.topic)) return false;
    const n = this.queued.get(clientId) ?? 0;
    const bytes = payloadBytes(packet);
    if (n >= this.limits.maxQueuedMessages || this.heldBytes + bytes > this.limits.maxSessionBytes) {
      this.counters.queueDropped++;
      return false;
    }
    this.queued.set(clientId, n + 1);
    this.heldBytes += bytes;
    return true;
  }
}
