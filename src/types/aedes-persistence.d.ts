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

  export default class MemoryPersistence {
    constructor(opts?: object);
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
