import type { Client } from 'aedes';
import MemoryPersistence, { type StoredPacket as Packet } from 'aedes-persistence/asyncPersistence.js';
type Sub = { clientId: string };

export interface SessionStoreCounters {
  /** Messages for a subscriber whose queue was full (maxQueuedMessages): not queued. */
  queueDropped: number;
  /** Retained messages refused because maxRetainedMessages were kept. */
  retainedRefused: number;
}

/**
 * aedes's in-memory sessions (subscriptions, queued QoS 1/2 messages of persistent sessions,
 * retained messages) with bounds, so a subscriber that never comes back, or a client retaining
 * on ever new topics, cannot grow the heap without limit. Like Mosquitto's max_queued_messages,
 * a full queue drops new messages for that subscriber; a retained message on a new topic is
 * refused once maxRetainedMessages are kept (replacing or clearing one is always allowed).
 * Local broker traffic only: routed publishes are in the commit log before they are acknowledged.
 */
export class SessionStore extends MemoryPersistence {
  readonly counters: SessionStoreCounters = { queueDropped: 0, retainedRefused: 0 };
  private readonly queued = new Map<string, number>();
  private readonly retainedTopics = new Set<string>();

  constructor(
    private readonly maxQueuedMessages: number,
    private readonly maxRetainedMessages: number,
  ) {
    super();
  }

  override async storeRetained(packet: Packet): Promise<void> {
    if (packet.payload.length === 0) {
      this.retainedTopics.delete(packet.topic);
    } else if (!this.retainedTopics.has(packet.topic)) {
      if (this.retainedTopics.size >= this.maxRetainedMessages) {
        this.counters.retainedRefused++;
        return;
      }
      this.retainedTopics.add(packet.topic);
    }
    await super.storeRetained(packet);
  }

  override async outgoingEnqueue(sub: Sub, packet: Packet): Promise<void> {
    if (!this.admit(sub.clientId)) return;
    await super.outgoingEnqueue(sub, packet);
  }

  override async outgoingEnqueueCombi(subs: Sub[], packet: Packet): Promise<void> {
    const admitted = subs.filter((sub) => this.admit(sub.clientId));
    if (admitted.length > 0) await super.outgoingEnqueueCombi(admitted, packet);
  }

  override async outgoingClearMessageId(client: Client, packet: Packet): Promise<Packet | undefined> {
    const cleared = await super.outgoingClearMessageId(client, packet);
    if (cleared) {
      const n = (this.queued.get(client.id) ?? 1) - 1;
      if (n <= 0) this.queued.delete(client.id);
      else this.queued.set(client.id, n);
    }
    return cleared;
  }

  private admit(clientId: string): boolean {
    const n = this.queued.get(clientId) ?? 0;
    if (n >= this.maxQueuedMessages) {
      this.counters.queueDropped++;
      return false;
    }
    this.queued.set(clientId, n + 1);
    return true;
  }
}
