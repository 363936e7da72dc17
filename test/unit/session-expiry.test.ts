import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import type { Aedes, Client } from 'aedes';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { commandPacket, commandProperties } from '../../src/commands/packet.js';
import { replyCorrelationId, withReplyCorrelation } from '../../src/commands/reply.js';
import { commandContentType } from '../../src/commands/consumer.js';
import { SessionStore, sessionExpiryOf, type SessionStoreLimits } from '../../src/ingress/session-store.js';
import { CommitLog } from '../../src/log/commit-log.js';
import { DB_FILE } from '../../src/log/database.js';
import { CommandState } from '../../src/log/outbox.js';
import { SessionTables } from '../../src/log/session-tables.js';
import { until } from '../helpers/raw-mqtt.js';
import { useTmpDirs } from '../helpers/tmp.js';

const LIMITS: SessionStoreLimits = { maxQueuedMessages: 100, maxRetainedMessages: 100, maxSessionBytes: 1e6, maxInflightMessages: 10 };

/** What of aedes the store's session-expiry side uses: its events, clients, and the takeover set. */
class FakeBroker extends EventEmitter {
  readonly clients: Record<string, unknown> = {};
  readonly _takingOver = new Set<string>();
  closed = false;
  constructor(readonly id: string) {
    super();
  }
}

interface V5Client {
  id: string;
  version: number;
  sessionExpiryInterval: number;
  clean: boolean;
  connected: boolean;
}
const v5 = (id: string, sessionExpiryInterval: number): V5Client => ({ id, version: 5, sessionExpiryInterval, clean: sessionExpiryInterval === 0, connected: true });

const publish = (counter: number, topic: string, payload: string) => ({
  cmd: 'publish',
  brokerId: 'broker-1',
  brokerCounter: counter,
  topic,
  payload: Buffer.from(payload),
  qos: 1,
  retain: false,
  dup: false,
});

/** Rows of a client in every session table. */
function rowsOf(dir: string, clientId: string): Record<string, number> {
  const db = new Database(join(dir, DB_FILE), { readonly: true });
  try {
    const count = (table: string) => db.prepare(`SELECT count(*) FROM ${table} WHERE client_id = ?`).pluck().get(clientId) as number;
    return {
      subscriptions: count('session_subscriptions'),
      queue: count('session_queue'),
      inbound: count('session_inbound'),
      owners: count('session_owners'),
      expiry: count('session_expiry'),
    };
  } finally {
    db.close();
  }
}

function expiresAt(dir: string, clientId: string): number | null {
  const db = new Database(join(dir, DB_FILE), { readonly: true });
  try {
    return (db.prepare('SELECT expires_at FROM session_expiry WHERE client_id = ?').pluck().get(clientId) as number | null | undefined) ?? null;
  } finally {
    db.close();
  }
}

async function drain<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of stream) out.push(item);
  return out;
}

describe('MQTT 5 session expiry in the session store', () => {
  const tmp = useTmpDirs();
  const open: { close(): void }[] = [];
  afterEach(() => {
    for (const o of open.splice(0).reverse()) o.close();
  });

  async function storeIn(dir: string, brokerId: string) {
    const log = new CommitLog({ dir, synchronous: 'normal' });
    const tables = new SessionTables(log.file, { busyTimeoutMs: 1000, walLimitBytes: 1 << 20 });
    const broker = new FakeBroker(brokerId);
    const store = new SessionStore(LIMITS, () => true, tables);
    const errors: unknown[] = [];
    store.onSessionError = (err) => errors.push(err);
    await store.setup(broker as unknown as Aedes);
    const handle = { log, tables, close: () => (tables.close(), log.close()) };
    open.push(handle);
    return { store, tables, broker, errors, handle };
  }

  /** A v5 client connects, subscribes, is sent one message and holds one inbound QoS 2 publish, then goes. */
  async function sessionOf(s: Awaited<ReturnType<typeof storeIn>>, client: V5Client, counter: number): Promise<void> {
    const c = client as unknown as Client;
    await s.store.addSubscriptions(c, [{ topic: `local/${client.id}/#`, qos: 1 }]);
    s.store.rememberOwner(client.id, undefined);
    s.broker.clients[client.id] = client;
    s.broker.emit('clientReady', client);
    await s.store.incomingStorePacket(c, { cmd: 'publish', topic: 'in/1', payload: Buffer.from('q2'), qos: 2, messageId: 7, retain: false, dup: false } as never);
    delete s.broker.clients[client.id];
    client.connected = false;
    s.broker.emit('clientDisconnect', client);
    // Offline: a message is queued for it.
    await s.store.outgoingEnqueueCombi([{ clientId: client.id }], publish(counter, `local/${client.id}/x`, 'queued'));
  }

  it('a v5 session ends its interval after its disconnect although the gateway restarted meanwhile, with every row; one with a long interval is kept', async () => {
    const dir = tmp();
    const first = await storeIn(dir, 'broker-1');
    await sessionOf(first, v5('short', 1), 1);
    await sessionOf(first, v5('long', 3600), 2);
    expect(rowsOf(dir, 'short')).toEqual({ subscriptions: 1, queue: 1, inbound: 1, owners: 1, expiry: 1 });
    const end = expiresAt(dir, 'short')!;
    expect(end).toBeGreaterThan(Date.now() - 1000);
    first.handle.close();
    open.splice(open.indexOf(first.handle), 1);

    // Down past the short session's end.
    await until('the short session expired', () => Date.now() > end, 10_000, 50);
    const second = await storeIn(dir, 'broker-2');
    expect(rowsOf(dir, 'short')).toEqual({ subscriptions: 0, queue: 0, inbound: 0, owners: 0, expiry: 0 });
    expect(rowsOf(dir, 'long')).toEqual({ subscriptions: 1, queue: 1, inbound: 1, owners: 1, expiry: 1 });
    expect(await second.store.subscriptionsByClient({ id: 'short' } as Client)).toEqual([]);
    expect(await second.store.subscriptionsByClient({ id: 'long' } as Client)).toHaveLength(1);
    expect(await drain(second.store.outgoingStream({ id: 'short' }))).toEqual([]);
    expect((await drain(second.store.outgoingStream({ id: 'long' }))).map((p) => p.topic)).toEqual(['local/long/x']);
    expect(second.store.restoredOwners.has('short')).toBe(false);
    expect(second.store.restoredOwners.has('long')).toBe(true);
    expect(second.errors).toEqual([]);
  });

  it('a restored v5 session that is not yet expired ends when its time comes, without a restart; reconnecting before keeps it', async () => {
    const dir = tmp();
    const first = await storeIn(dir, 'broker-1');
    await sessionOf(first, v5('soon', 2), 1);
    await sessionOf(first, v5('back', 2), 2);
    first.handle.close();
    open.splice(open.indexOf(first.handle), 1);
    const second = await storeIn(dir, 'broker-2');
    expect(rowsOf(dir, 'soon').subscriptions).toBe(1);
    // 'back' reconnects in time: its expiry is off while connected.
    const back = v5('back', 2);
    second.broker.clients.back = back;
    second.broker.emit('clientReady', back);
    expect(expiresAt(dir, 'back')).toBeNull();
    await until('the restored session swept', () => rowsOf(dir, 'soon').subscriptions === 0, 10_000, 50);
    expect(rowsOf(dir, 'soon')).toEqual({ subscriptions: 0, queue: 0, inbound: 0, owners: 0, expiry: 0 });
    expect(await drain(second.store.outgoingStream({ id: 'soon' }))).toEqual([]);
    expect(second.store.bytes).toBe((await drain(second.store.outgoingStream({ id: 'back' }))).reduce((n, p) => n + p.payload.length + p.topic.length, 0));
    expect(rowsOf(dir, 'back')).toEqual({ subscriptions: 1, queue: 1, inbound: 1, owners: 1, expiry: 1 });
    expect(second.errors).toEqual([]);
  });

  it('interval 0 (set on DISCONNECT) ends the session with the connection; 3.1.1 and never-expiring sessions have no expiry row', async () => {
    const dir = tmp();
    const s = await storeIn(dir, 'broker-1');
    const gone = v5('gone', 60);
    await s.store.addSubscriptions(gone as unknown as Client, [{ topic: 'a/#', qos: 1 }]);
    s.broker.emit('clientReady', gone);
    expect(rowsOf(dir, 'gone').expiry).toBe(1);
    Object.assign(gone, { sessionExpiryInterval: 0, clean: true, connected: false });
    s.broker.emit('clientDisconnect', gone);
    await until('the session ended', () => rowsOf(dir, 'gone').subscriptions === 0, 5000, 20);
    expect(rowsOf(dir, 'gone')).toEqual({ subscriptions: 0, queue: 0, inbound: 0, owners: 0, expiry: 0 });

    const old = { id: 'old', version: 4, clean: false, connected: true, sessionExpiryInterval: 0xffffffff };
    s.broker.emit('clientReady', old);
    s.broker.emit('clientDisconnect', { ...old, connected: false });
    const never = v5('never', 0xffffffff);
    s.broker.emit('clientReady', never);
    s.broker.emit('clientDisconnect', { ...never, connected: false });
    expect(rowsOf(dir, 'old').expiry).toBe(0);
    expect(rowsOf(dir, 'never').expiry).toBe(0);
  });

  it('aedes ending a session at maxPendingSessions removes its rows too', async () => {
    const dir = tmp();
    const s = await storeIn(dir, 'broker-1');
    await sessionOf(s, v5('capped', 3600), 1);
    s.broker.emit('sessionLimitReached', v5('capped', 3600), { reason: 'sessionExpiry', limit: 1 });
    await until('the capped session ended', () => rowsOf(dir, 'capped').queue === 0, 5000, 20);
    expect(rowsOf(dir, 'capped')).toEqual({ subscriptions: 0, queue: 0, inbound: 0, owners: 0, expiry: 0 });
  });

  it('a command in an expired session waits in the outbox again: aedes clearing the queue of a gone client is no acknowledgement', async () => {
    const dir = tmp();
    const s = await storeIn(dir, 'broker-1');
    const { tables, store } = s;
    let delivered = 0;
    store.onCommandDelivered = () => delivered++;
    const command = async (dev: string, offset: number) => {
      tables.outbox.serve([dev]);
      tables.outbox.store('cmd', 0, [{ offset, deviceId: dev, payload: Buffer.from('go'), correlationId: `c${offset}`, contentType: 'text/plain', timestamp: Date.now() }], 3600e3);
      const [c] = tables.outbox.waitingFor(dev, 0, 10);
      tables.outbox.markHanded(c!.seq);
      const packet = commandPacket(dev, c!.seq, `devices/${dev}/commands`, c!.payload, c!.expiresAt, commandProperties('devices/{deviceId}/replies', dev, c!.correlationId, c!.contentType));
      await store.outgoingEnqueueCombi([{ clientId: dev }], { ...packet });
      return { seq: c!.seq, packet };
    };
    // aedes passes the queued PUBLISH when it drops it, the device's PUBACK/PUBCOMP when it was acknowledged.
    // Sent (it has a packet id), then the client is gone: aedes's own expiry timer empties the queue.
    const sent = await command('dev-a', 0);
    await store.outgoingUpdate({ id: 'dev-a', clean: false } as Client, { ...sent.packet, messageId: 5 });
    await store.outgoingClearMessageId({ id: 'dev-a', clean: false, connected: false } as unknown as Client, { ...sent.packet, messageId: 5 });
    expect(tables.outbox.get(sent.seq)?.state).toBe(CommandState.Stored);
    // A Clean Start discards the queue the same way (client.clean false with a non-zero expiry).
    const second = await command('dev-b', 1);
    await store.outgoingUpdate({ id: 'dev-b', clean: false } as Client, { ...second.packet, messageId: 6 });
    await store.outgoingClearMessageId({ id: 'dev-b', clean: false, connected: true, _cleanStart: true } as unknown as Client, { ...second.packet, messageId: 6 });
    expect(tables.outbox.get(second.seq)?.state).toBe(CommandState.Stored);
    // A PUBACK delivers: while aedes still sends the queue of a reconnect (`connecting`), on a
    // Clean Start connection with an expiry (its PUBACKs are the device's), after the client went.
    const acks = [
      { dev: 'dev-d', client: { connected: false, connecting: true } },
      { dev: 'dev-e', client: { connected: true, _cleanStart: true } },
      { dev: 'dev-f', client: { connected: false } },
    ];
    for (const [i, { dev, client }] of acks.entries()) {
      const c = await command(dev, 2 + i);
      await store.outgoingUpdate({ id: dev, clean: false } as Client, { ...c.packet, messageId: 8 });
      await store.outgoingClearMessageId({ id: dev, clean: false, ...client } as unknown as Client, { cmd: 'puback', messageId: 8 } as never);
      expect(tables.outbox.get(c.seq)?.state, dev).toBe(CommandState.Delivered);
    }
    expect(delivered).toBe(3);
    delivered = 0;
    // Never sent: the session ends by its expiry.
    const queued = await command('dev-c', 9);
    await store.endSession('dev-c');
    expect(tables.outbox.get(queued.seq)?.state).toBe(CommandState.Stored);
    expect(rowsOf(dir, 'dev-c').queue).toBe(0);
    expect(delivered).toBe(0);
  });

  it('a queued command keeps its MQTT 5 properties across a restart', async () => {
    const dir = tmp();
    const first = await storeIn(dir, 'broker-1');
    first.tables.outbox.serve(['dev']);
    first.store.rememberOwner('dev', undefined);
    const packet = commandPacket('dev', 9, 'devices/dev/commands', Buffer.from('go'), Date.now() + 3600e3, commandProperties('devices/{deviceId}/replies/{correlationId}', 'dev', 'corr-9', 'application/json'));
    await first.store.outgoingEnqueueCombi([{ clientId: 'dev' }], { ...packet });
    first.handle.close();
    open.splice(open.indexOf(first.handle), 1);
    const second = await storeIn(dir, 'broker-2');
    const [restored] = await drain(second.store.outgoingStream({ id: 'dev' }));
    expect(restored?.properties).toEqual({ responseTopic: 'devices/dev/replies/corr-9', correlationData: Buffer.from('corr-9'), contentType: 'application/json' });
    expect(Buffer.isBuffer((restored?.properties as { correlationData?: unknown }).correlationData)).toBe(true);
  });
});

describe('MQTT 5 command properties and reply correlation (pure)', () => {
  it('sessionExpiryOf: finite, non-zero v5 intervals only', () => {
    expect(sessionExpiryOf({ version: 5, sessionExpiryInterval: 30 })).toBe(30);
    expect(sessionExpiryOf({ version: 5, sessionExpiryInterval: 0 })).toBeUndefined();
    expect(sessionExpiryOf({ version: 5, sessionExpiryInterval: 0xffffffff })).toBeUndefined();
    expect(sessionExpiryOf({ version: 4, sessionExpiryInterval: 30 })).toBeUndefined();
  });

  it('commandProperties: Response Topic from the template, the correlation id as bytes, content type only when given', () => {
    expect(commandProperties('devices/{deviceId}/replies', 'v1', 'c-1', null)).toEqual({ responseTopic: 'devices/v1/replies', correlationData: Buffer.from('c-1') });
    expect(commandProperties('r/{deviceId}/{correlationId}', 'v1', 'c-1', 'text/plain')).toEqual({ responseTopic: 'r/v1/c-1', correlationData: Buffer.from('c-1'), contentType: 'text/plain' });
  });

  it('commandContentType: a UTF-8 header of at most 256 bytes without U+0000', () => {
    expect(commandContentType({ 'content-type': Buffer.from('application/json') })).toBe('application/json');
    expect(commandContentType({ contentType: 'text/plain' })).toBe('text/plain');
    expect(commandContentType({ 'content-type': [Buffer.from('a/b'), Buffer.from('c/d')] })).toBe('a/b');
    expect(commandContentType({ 'content-type': Buffer.from([0xff, 0xfe]) })).toBeUndefined();
    expect(commandContentType({ 'content-type': Buffer.from('a\u0000b') })).toBeUndefined();
    expect(commandContentType({ 'content-type': Buffer.alloc(257, 0x61) })).toBeUndefined();
    expect(commandContentType({ 'content-type': Buffer.alloc(0) })).toBeUndefined();
    expect(commandContentType(undefined)).toBeUndefined();
  });

  it('replyCorrelationId / withReplyCorrelation: UTF-8 Correlation Data becomes the correlation-id header, other headers kept', () => {
    expect(replyCorrelationId({ correlationData: Buffer.from('c-1') })).toBe('c-1');
    expect(replyCorrelationId({ correlationData: Buffer.from([0xff]) })).toBeUndefined();
    expect(replyCorrelationId({ correlationData: Buffer.alloc(0) })).toBeUndefined();
    expect(replyCorrelationId({})).toBeUndefined();
    expect(replyCorrelationId(undefined)).toBeUndefined();
    const entry = { payload: Buffer.from('ok'), headers: [['mqtt-correlation-data', Buffer.from('c-2')], ['x-a', '1']] as const };
    expect(withReplyCorrelation(entry, { correlationData: Buffer.from('c-2') }).headers).toEqual([['correlation-id', 'c-2'], ['mqtt-correlation-data', Buffer.from('c-2')], ['x-a', '1']]);
    expect(withReplyCorrelation(entry, undefined)).toBe(entry);
    const bare: { payload: Buffer; headers?: Record<string, string> } = { payload: Buffer.alloc(0) };
    expect(withReplyCorrelation(bare, { correlationData: Buffer.from('c-3') }).headers).toEqual([['correlation-id', 'c-3']]);
  });
});
