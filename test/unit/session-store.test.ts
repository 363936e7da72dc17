import type { Aedes, Client } from 'aedes';
import { afterEach, describe, expect, it } from 'vitest';
import { SessionStore, type SessionStoreLimits } from '../../src/ingress/session-store.js';
import { CommitLog } from '../../src/log/commit-log.js';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { commandPacket } from '../../src/commands/packet.js';
import { DB_FILE } from '../../src/log/database.js';
import { CommandState } from '../../src/log/outbox.js';
import { SessionTables } from '../../src/log/session-tables.js';
import { useTmpDirs } from '../helpers/tmp.js';

const LIMITS: SessionStoreLimits = { maxQueuedMessages: 100, maxRetainedMessages: 100, maxSessionBytes: 1e6, maxInflightMessages: 10 };

const persistent = (id: string) => ({ id, clean: false }) as Client;
const cleanClient = (id: string) => ({ id, clean: true }) as Client;
const publish = (counter: number, topic: string, payload: string, brokerId = 'broker-1') => ({
  cmd: 'publish',
  brokerId,
  brokerCounter: counter,
  topic,
  payload: Buffer.from(payload),
  qos: 1,
  retain: false,
  dup: false,
});

async function drain<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of stream) out.push(item);
  return out;
}

describe('session store with its tables: what a restart gives back', () => {
  const tmp = useTmpDirs();
  const open: { close(): void }[] = [];
  afterEach(() => {
    for (const o of open.splice(0).reverse()) o.close();
  });

  /** A store on the database in `dir`, set up as aedes does (a new broker id each run). */
  async function storeIn(dir: string, brokerId: string, limits = LIMITS): Promise<{ store: SessionStore; tables: SessionTables }> {
    const log = new CommitLog({ dir, synchronous: 'normal' });
    const tables = new SessionTables(log.file, { busyTimeoutMs: 1000, walLimitBytes: 1 << 20 });
    open.push(log, tables);
    const store = new SessionStore(limits, () => true, tables);
    await store.setup({ id: brokerId } as Aedes);
    return { store, tables };
  }

  it('restores persistent subscriptions, queued and in-flight messages in order, inbound QoS 2 packets, retained messages, wills and owners; nothing of clean sessions', async () => {
    const dir = tmp();
    const a = (await storeIn(dir, 'broker-1')).store;
    await a.addSubscriptions(persistent('p1'), [{ topic: 'a/#', qos: 1 }]);
    await a.addSubscriptions(cleanClient('c1'), [{ topic: 'a/#', qos: 1 }]);
    await a.storeRetained({ topic: 'r/1', payload: Buffer.from('kept'), retain: true, qos: 0 });
    await a.storeRetained({ topic: 'r/2', payload: Buffer.from('gone'), retain: true, qos: 0 });
    await a.storeRetained({ topic: 'r/2', payload: Buffer.alloc(0), retain: true, qos: 0 });
    await a.outgoingEnqueueCombi([{ clientId: 'p1' }], publish(1, 'a/1', 'first'));
    await a.outgoingEnqueueCombi([{ clientId: 'p1' }], publish(2, 'a/2', 'second'));
    await a.outgoingEnqueue({ clientId: 'p1' }, publish(3, 'a/3', 'third'));
    await a.outgoingUpdate(persistent('p1'), { ...publish(1, 'a/1', 'first'), messageId: 7 });
    await a.outgoingUpdate(persistent('p1'), { ...publish(2, 'a/2', 'second'), messageId: 8 });
    expect((await a.outgoingClearMessageId(persistent('p1'), { topic: 'a/2', payload: Buffer.alloc(0), messageId: 8 }))?.payload.toString()).toBe('second');
    await a.incomingStorePacket(persistent('p1'), { cmd: 'publish', topic: 'in/1', payload: Buffer.from('inbound'), qos: 2, messageId: 3 });
    await a.incomingStorePacket(cleanClient('c1'), { cmd: 'publish', topic: 'in/1', payload: Buffer.from('x'), qos: 2, messageId: 4 });
    await a.putWill(persistent('p1'), { cmd: 'publish', topic: 'wills/p1', payload: Buffer.from('offline'), qos: 1, retain: false });
    a.rememberOwner('p1', 'alice');
    a.rememberOwner('p2', undefined);

    // The process dies: nothing is closed, a new store opens the same file.
    const b = (await storeIn(dir, 'broker-2')).store;
    expect(await b.subscriptionsByClient(persistent('p1'))).toEqual([{ topic: 'a/#', qos: 1 }]);
    expect(await b.subscriptionsByClient(cleanClient('c1'))).toEqual([]);
    expect((await b.subscriptionsByTopic('a/9')).map((s: { clientId: string }) => s.clientId)).toEqual(['p1']);
    expect((await drain(b.createRetainedStream('r/#'))).map((p) => `${p.topic}=${p.payload.toString()}`)).toEqual(['r/1=kept']);
    const queue = await drain(b.outgoingStream(persistent('p1')));
    expect(queue.map((p) => [p.topic, p.payload.toString(), p.messageId])).toEqual([
      ['a/1', 'first', 7],
      ['a/3', 'third', undefined],
    ]);
    expect((await b.incomingGetPacket(persistent('p1'), { topic: '', payload: Buffer.alloc(0), messageId: 3 })).payload.toString()).toBe('inbound');
    await expect(b.incomingGetPacket(cleanClient('c1'), { topic: '', payload: Buffer.alloc(0), messageId: 4 })).rejects.toThrow();
    const will = await b.getWill(persistent('p1'));
    // the will keeps the dead broker's id, so aedes publishes it
    expect([will?.topic, will?.payload.toString(), will?.brokerId]).toEqual(['wills/p1', 'offline', 'broker-1']);
    expect([...b.restoredOwners]).toEqual([
      ['p1', 'alice'],
      ['p2', undefined],
    ]);

    // What the second run changes is what a third one sees.
    expect((await b.outgoingClearMessageId(persistent('p1'), { topic: 'a/1', payload: Buffer.alloc(0), messageId: 7 }))?.topic).toBe('a/1');
    await b.cleanSubscriptions(persistent('p1'));
    await b.delWill(persistent('p1'));
    b.forgetOwner('p2');
    const c = (await storeIn(dir, 'broker-3')).store;
    expect((await drain(c.outgoingStream(persistent('p1')))).map((p) => p.topic)).toEqual(['a/3']);
    expect(await c.subscriptionsByClient(persistent('p1'))).toEqual([]);
    expect(await c.getWill(persistent('p1'))).toBeUndefined();
    expect([...c.restoredOwners.keys()]).toEqual(['p1']);
  });

  it('restores a PUBREL that replaced a queued QoS 2 publish as the PUBREL', async () => {
    const dir = tmp();
    const a = (await storeIn(dir, 'broker-1')).store;
    await a.outgoingEnqueue({ clientId: 'p1' }, { ...publish(1, 'q/2', 'two'), qos: 2 });
    await a.outgoingUpdate(persistent('p1'), { ...publish(1, 'q/2', 'two'), qos: 2, messageId: 11 });
    await a.outgoingUpdate(persistent('p1'), { cmd: 'pubrel', messageId: 11 } as never);
    const b = (await storeIn(dir, 'broker-2')).store;
    const queue = await drain(b.outgoingStream(persistent('p1')));
    expect(queue.map((p) => [p.cmd, p.messageId])).toEqual([['pubrel', 11]]);
    // PUBCOMP clears it, also from disk
    await b.outgoingClearMessageId(persistent('p1'), { topic: '', payload: Buffer.alloc(0), messageId: 11 });
    const c = (await storeIn(dir, 'broker-3')).store;
    expect(await drain(c.outgoingStream(persistent('p1')))).toEqual([]);
    expect(c.bytes).toBe(0);
  });

  it('two outbound QoS 2 messages in flight: each PUBREL takes its own PUBLISH\'s place, in memory and across a restart (review)', async () => {
    const dir = tmp();
    const a = (await storeIn(dir, 'broker-1')).store;
    const q2 = (n: number) => ({ ...publish(n, `q/${n}`, `m${n}`), qos: 2 });
    await a.outgoingEnqueue({ clientId: 'p1' }, q2(1));
    await a.outgoingEnqueue({ clientId: 'p1' }, q2(2));
    await a.outgoingUpdate(persistent('p1'), { ...q2(1), messageId: 5 });
    await a.outgoingUpdate(persistent('p1'), { ...q2(2), messageId: 6 });
    await a.outgoingUpdate(persistent('p1'), { cmd: 'pubrel', messageId: 5 } as never);
    await a.outgoingUpdate(persistent('p1'), { cmd: 'pubrel', messageId: 6 } as never);
    const shape = async (st: SessionStore) => (await drain(st.outgoingStream(persistent('p1')))).map((p) => `${p.cmd}:${p.messageId}`);
    expect(await shape(a)).toEqual(['pubrel:5', 'pubrel:6']);
    const b = (await storeIn(dir, 'broker-2')).store;
    expect(await shape(b)).toEqual(['pubrel:5', 'pubrel:6']);
    await b.outgoingClearMessageId(persistent('p1'), { topic: '', payload: Buffer.alloc(0), messageId: 5 });
    expect(await shape(b)).toEqual(['pubrel:6']);
    await b.outgoingClearMessageId(persistent('p1'), { topic: '', payload: Buffer.alloc(0), messageId: 6 });
    expect(await shape(b)).toEqual([]);
    expect(b.bytes).toBe(0);
    const c = (await storeIn(dir, 'broker-3')).store;
    expect(await shape(c)).toEqual([]);
  });

  it('lower limits at the next start: what no longer fits is dropped, counted and removed from disk', async () => {
    const dir = tmp();
    const a = (await storeIn(dir, 'broker-1')).store;
    for (let i = 1; i <= 5; i++) await a.outgoingEnqueue({ clientId: 'p1' }, publish(i, `a/${i}`, `m${i}`));
    const small = { ...LIMITS, maxQueuedMessages: 3 };
    const b = (await storeIn(dir, 'broker-2', small)).store;
    expect((await drain(b.outgoingStream(persistent('p1')))).map((p) => p.topic)).toEqual(['a/1', 'a/2', 'a/3']);
    expect(b.counters.queueDropped).toBe(2);
    const c = (await storeIn(dir, 'broker-3')).store;
    expect((await drain(c.outgoingStream(persistent('p1')))).map((p) => p.topic)).toEqual(['a/1', 'a/2', 'a/3']);
  });

  it('a lowered maxInflightMessages at the next start drops the inbound QoS 2 packets over it instead of failing the start', async () => {
    const dir = tmp();
    const a = (await storeIn(dir, 'broker-1', { ...LIMITS, maxInflightMessages: 20 })).store;
    for (let i = 1; i <= 15; i++) await a.incomingStorePacket(persistent('p1'), { cmd: 'publish', topic: 't', payload: Buffer.from('x'), qos: 2, messageId: i });
    const b = (await storeIn(dir, 'broker-2', { ...LIMITS, maxInflightMessages: 10 })).store;
    await expect(b.incomingGetPacket(persistent('p1'), { topic: '', payload: Buffer.alloc(0), messageId: 10 })).resolves.toBeDefined();
    await expect(b.incomingGetPacket(persistent('p1'), { topic: '', payload: Buffer.alloc(0), messageId: 11 })).rejects.toThrow();
    const c = (await storeIn(dir, 'broker-3', { ...LIMITS, maxInflightMessages: 20 })).store;
    await expect(c.incomingGetPacket(persistent('p1'), { topic: '', payload: Buffer.alloc(0), messageId: 11 })).rejects.toThrow();
  });

  describe('commands in sessions', () => {
    /** A stored command for `dev`, handed to its session, as delivery does. */
    async function handed(store: SessionStore, tables: SessionTables, dev = 'dev', offset = 0) {
      tables.outbox.serve([dev]);
      tables.outbox.store('cmd', 0, [{ offset, deviceId: dev, payload: Buffer.from('go'), correlationId: `c${offset}`, timestamp: Date.now() }], 3600e3);
      const [c] = tables.outbox.waitingFor(dev, 0, 10);
      tables.outbox.markHanded(c!.seq);
      const packet = commandPacket(dev, c!.seq, `devices/${dev}/commands`, c!.payload, c!.expiresAt);
      await store.outgoingEnqueueCombi([{ clientId: dev }], { ...packet });
      return { seq: c!.seq, packet };
    }

    it("the device's PUBACK delivers it together with its queue entry; a failed write changes neither, and the retried PUBACK works", async () => {
      const dir = tmp();
      const { store, tables } = await storeIn(dir, 'broker-1');
      const { seq, packet } = await handed(store, tables);
      await store.outgoingUpdate(persistent('dev'), { ...packet, messageId: 42 });
      const other = new Database(join(dir, DB_FILE), { timeout: 0 });
      other.prepare('BEGIN IMMEDIATE').run();
      // aedes passes the device's PUBACK when it acknowledged the message
      const puback = { cmd: 'puback', messageId: 42 } as never;
      await expect(store.outgoingClearMessageId(persistent('dev'), puback)).rejects.toMatchObject({ code: 'EB_ERR_SESSION_WRITE' });
      expect((await drain(store.outgoingStream(persistent('dev')))).map((p) => p.messageId)).toEqual([42]);
      expect(tables.outbox.get(seq)?.state).toBe(CommandState.Handed);
      other.prepare('ROLLBACK').run();
      other.close();
      let delivered = 0;
      store.onCommandDelivered = () => delivered++;
      await store.outgoingClearMessageId(persistent('dev'), puback);
      expect(delivered).toBe(1);
      expect(tables.outbox.get(seq)?.state).toBe(CommandState.Delivered);
      expect(await drain(store.outgoingStream(persistent('dev')))).toEqual([]);
      expect(store.bytes).toBe(0);
    });

    it('a clean reconnect of the device puts its command back to waiting; another subscriber never queues one', async () => {
      const dir = tmp();
      const { store, tables } = await storeIn(dir, 'broker-1');
      const { seq, packet } = await handed(store, tables);
      await store.outgoingEnqueueCombi([{ clientId: 'console' }], { ...packet });
      expect(await drain(store.outgoingStream(persistent('console')))).toEqual([]);
      // aedes empties the queue of a client that connects clean: a fresh id, then cleared
      await store.outgoingUpdate(cleanClient('dev'), { ...packet, messageId: 1 });
      await store.outgoingClearMessageId(cleanClient('dev'), { topic: '', payload: Buffer.alloc(0), messageId: 1 });
      expect(tables.outbox.get(seq)?.state).toBe(CommandState.Stored);
    });

    it('at start, a command marked handed whose queue entry never came waits again; one in its queue stays handed', async () => {
      const dir = tmp();
      const first = await storeIn(dir, 'broker-1');
      const queued = await handed(first.store, first.tables, 'dev', 0);
      first.tables.outbox.store('cmd', 0, [{ offset: 1, deviceId: 'dev', payload: Buffer.from('x'), correlationId: 'c1', timestamp: Date.now() }], 3600e3);
      const [lost] = first.tables.outbox.waitingFor('dev', 0, 10);
      first.tables.outbox.markHanded(lost!.seq); // the gateway died before the broker queued it
      const second = await storeIn(dir, 'broker-2');
      expect(second.tables.outbox.get(queued.seq)?.state).toBe(CommandState.Handed);
      expect(second.tables.outbox.get(lost!.seq)?.state).toBe(CommandState.Stored);
    });

    it('an expired command is not sent again from the queue, and dropCommand takes it out of memory and disk', async () => {
      const dir = tmp();
      const { store, tables } = await storeIn(dir, 'broker-1');
      const { packet } = await handed(store, tables);
      const expired = { ...packet, brokerCounter: packet.brokerCounter + 1000, messageExpiry: Date.now() - 1 };
      await store.outgoingEnqueueCombi([{ clientId: 'dev' }], { ...expired });
      expect((await drain(store.outgoingStream(persistent('dev')))).map((p) => p.brokerCounter)).toEqual([packet.brokerCounter]);
      await store.dropCommand({ ...expired });
      const again = await storeIn(dir, 'broker-2');
      expect((await drain(again.store.outgoingStream(persistent('dev')))).map((p) => p.brokerCounter)).toEqual([packet.brokerCounter]);
    });
  });

  it('a write that fails is a typed error and leaves nothing half-done in memory', async () => {
    const dir = tmp();
    const { store, tables } = await storeIn(dir, 'broker-1');
    await store.outgoingEnqueue({ clientId: 'p1' }, publish(1, 'a/1', 'kept'));
    const before = store.bytes;
    tables.close();
    await expect(store.outgoingEnqueue({ clientId: 'p1' }, publish(2, 'a/2', 'lost'))).rejects.toMatchObject({ code: 'EB_ERR_SESSION_WRITE' });
    await expect(store.addSubscriptions(persistent('p2'), [{ topic: 'x', qos: 1 }])).rejects.toMatchObject({ code: 'EB_ERR_SESSION_WRITE' });
    expect(store.bytes).toBe(before);
    expect((await drain(store.outgoingStream(persistent('p1')))).map((p) => p.topic)).toEqual(['a/1']);
    expect(await store.subscriptionsByClient(persistent('p2'))).toEqual([]);
  });
});
