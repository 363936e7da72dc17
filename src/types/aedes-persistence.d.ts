// aedes-persistence ships types for its callback wrapper only; this is the in-memory store
// (asyncPersistence.js) that aedes 1.x drives through promises, as far as edgebridge extends it.
declare module 'aedes-persistence/asyncPersistence.js' {
  import type { Client } from 'aedes';

  export interface StoredPacket {
    topic: string;
    payload: Buffer;
    messageId?: number;
    brokerId?: string;
    brokerCounter?: number;
    [key: string]: unknown;
  }

  export interface StoredSubscription {
    topic: string;
    qos: number;
    [option: string]: unknown;
  }

  export default class MemoryPersistence {
    constructor(opts?: object);
    setup(broker: import('aedes').Aedes): Promise<void>;
    /** The broker given to setup (undefined before). */
    readonly broker: import('aedes').Aedes | undefined;
    addSubscriptions(client: Client, subs: StoredSubscription[]): Promise<void>;
    removeSubscriptions(client: Client, topics: string[]): Promise<void>;
    cleanSubscriptions(client: Client): Promise<void>;
    incomingGetPacket(client: Client, packet: StoredPacket): Promise<StoredPacket>;
    putWill(client: Client, packet: StoredPacket): Promise<void>;
    delWill(client: Client): Promise<StoredPacket | undefined>;
    destroy(): Promise<void>;
    subscriptionsByClient(client: Client | { id: string }): Promise<StoredSubscription[]>;
    subscriptionsByTopic(topic: string): Promise<(StoredSubscription & { clientId: string })[]>;
    createRetainedStream(pattern: string): AsyncIterable<StoredPacket>;
    outgoingStream(client: Client | { id: string }): AsyncIterable<StoredPacket>;
    getWill(client: Client | { id: string }): Promise<StoredPacket | undefined>;
    storeRetained(packet: StoredPacket): Promise<void>;
    outgoingEnqueue(sub: { clientId: string }, packet: StoredPacket): Promise<void>;
    outgoingEnqueueCombi(subs: { clientId: string }[], packet: StoredPacket): Promise<void>;
    outgoingClearMessageId(client: Client, packet: StoredPacket): Promise<StoredPacket | undefined>;
    outgoingUpdate(client: Client, packet: StoredPacket): Promise<void>;
    incomingStorePacket(client: Client, packet: StoredPacket): Promise<void>;
    incomingDelPacket(client: Client, packet: StoredPacket): Promise<void>;
    cleanIncoming(client: Client): Promise<void>;
  }
}
