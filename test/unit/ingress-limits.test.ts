import { generate } from 'mqtt-packet';
import { describe, expect, it, vi } from 'vitest';
import { LoginThrottle } from '../../src/ingress/authenticator.js';
import { PacketSizeGuard, PublishThrottle } from '../../src/ingress/limits.js';
import { SessionStore } from '../../src/ingress/session-store.js';
import type { Client } from 'aedes';

const publish = (payloadBytes: number) =>
  generate({ cmd: 'publish', topic: 't', payload: Buffer.alloc(payloadBytes), qos: 0, dup: false, retain: false });

describe('PacketSizeGuard', () => {
  it('follows packet boundaries across chunks of any size and lets packets up to the limit through', () => {
    const stream = Buffer.concat([publish(10), publish(127 - 3), publish(128), publish(16_000), publish(1000)]);
    for (const chunk of [1, 2, 3, 7, 64, 4096, stream.length]) {
      const guard = new PacketSizeGuard(16_003);
      for (let i = 0; i < stream.length; i += chunk) expect(guard.feed(stream.subarray(i, i + chunk))).toEqual({ ok: true });
    }
  });

  it('learns the protocol level from the CONNECT, in chunks of any size, and lets MQTT 5 packets through that 3.1.1 forbids', () => {
    const connect = (protocolVersion: 4 | 5) => generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion, clean: true, clientId: 'c', keepalive: 10 });
    const v5 = [
      generate({ cmd: 'puback', messageId: 1, reasonCode: 0x10 }, { protocolVersion: 5 }), // with a reason code
      generate({ cmd: 'pubrec', messageId: 2, reasonCode: 0, properties: { reasonString: 'ok' } }, { protocolVersion: 5 }), // with properties
      generate({ cmd: 'disconnect', reasonCode: 0x04 }, { protocolVersion: 5 }), // with a reason code
      generate({ cmd: 'auth', reasonCode: 0x18, properties: { authenticationMethod: 'm' } }, { protocolVersion: 5 }),
    ];
    for (const chunk of [1, 3, 7, 4096]) {
      const guard = new PacketSizeGuard(1000);
      const stream = Buffer.concat([connect(5), ...v5, publish(10)]);
      for (let i = 0; i < stream.length; i += chunk) expect(guard.feed(stream.subarray(i, i + chunk)), `chunk ${chunk} at ${i}`).toEqual({ ok: true });
      expect(guard.protocolLevel).toBe(5);
    }
    for (const packet of v5) {
      const guard = new PacketSizeGuard(1000);
      expect(guard.feed(connect(4))).toEqual({ ok: true });
      expect(guard.protocolLevel).toBe(4);
      expect(guard.feed(packet), `3.1.1 ${packet.toString('hex')}`).toEqual({ ok: false, reason: 'malformed' });
    }
    // MQTT 5 keeps the rules it shares: a PINGREQ has no body, an acknowledgement has a packet id
    for (const bad of [[0xc0, 0x01, 0x00], [0x40, 0x01, 0x00]]) {
      const guard = new PacketSizeGuard(1000);
      expect(guard.feed(connect(5))).toEqual({ ok: true });
      expect(guard.feed(Buffer.from(bad))).toEqual({ ok: false, reason: 'malformed' });
    }
  });

  it('refuses a packet as soon as its remaining length announces more than the limit', () => {
    const guard = new PacketSizeGuard(1000);
    expect(guard.feed(publish(100))).toEqual({ ok: true });
    const big = publish(5000);
    // Only the fixed header (type byte and two length bytes) has arrived.
    expect(guard.feed(big.subarray(0, 3))).toEqual({ ok: false, reason: 'too-large', packetBytes: big.length });
  });

  it('refuses a remaining length of more than four bytes [MQTT-2.2.3] and takes the largest four-byte one', () => {
    expect(new PacketSizeGuard(Number.MAX_SAFE_INTEGER).feed(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]))).toEqual({ ok: false, reason: 'malformed' });
    expect(new PacketSizeGuard(268_435_455).feed(Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]))).toEqual({ ok: true });
    expect(new PacketSizeGuard(268_435_454).feed(Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]))).toMatchObject({ reason: 'too-large' });
  });
  it('refuses packet types a client may not send and acknowledgements of the wrong length', () => {
    for (const type of [0x00, 0x20, 0x90, 0xb0, 0xd0, 0xf0]) expect(new PacketSizeGuard(1000).feed(Buffer.from([type, 0])), `type ${type >> 4}`).toEqual({ ok: false, reason: 'malformed' });
    expect(new PacketSizeGuard(1000).feed(Buffer.from([0x40, 0x01, 0x00]))).toEqual({ ok: false, reason: 'malformed' }); // PUBACK without a full packet id
    expect(new PacketSizeGuard(1000).feed(Buffer.from([0xc0, 0x01, 0x00]))).toEqual({ ok: false, reason: 'malformed' }); // PINGREQ with a body
    const guard = new PacketSizeGuard(1000);
    const stream = Buffer.concat([generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'c', keepalive: 10 }), Buffer.from([0x40, 0x02, 0x00, 0x01, 0xc0, 0x00]), publish(10)]);
    expect(guard.feed(stream.subarray(0, 5))).toEqual({ ok: true });
    expect(guard.feed(stream.subarray(5))).toEqual({ ok: true });
    // the CONNECT, the first packet, has a bound of its own
    expect(new PacketSizeGuard(100_000, 100).feed(publish(200))).toMatchObject({ reason: 'too-large' });
    expect(new PacketSizeGuard(100_000, 100).feed(Buffer.concat([publish(10), publish(200)]))).toEqual({ ok: true });
  });
});

describe('PublishThrottle', () => {
  it('lets a burst of one second through at once, then callers in order as tokens accrue', () => {
    vi.useFakeTimers();
    try {
      let now = 0;
      const throttle = new PublishThrottle(10, () => now);
      const ran: number[] = [];
      const waited = Array.from({ length: 25 }, (_, i) => throttle.run(() => ran.push(i)));
      expect(ran).toEqual(Array.from({ length: 10 }, (_, i) => i));
      expect(waited.filter(Boolean)).toHaveLength(15);
      for (let step = 0; step < 20 && ran.length < 25; step++) {
        now += 100;
        vi.advanceTimersByTime(100);
      }
      expect(ran).toEqual(Array.from({ length: 25 }, (_, i) => i));
      throttle.close();
    } finally {
      vi.useRealTimers();
    }
  });

  it('runs the waiting callers in order when closed (a closed connection\'s QoS 0 publishes are still stored)', () => {
    vi.useFakeTimers();
    try {
      const throttle = new PublishThrottle(1, () => 0);
      const ran: number[] = [];
      throttle.run(() => ran.push(1));
      throttle.run(() => ran.push(2));
      throttle.run(() => ran.push(3));
      expect(ran).toEqual([1]);
      throttle.close();
      expect(ran).toEqual([1, 2, 3]);
      throttle.run(() => ran.push(4));
      vi.advanceTimersByTime(10_000);
      expect(ran).toEqual([1, 2, 3, 4]);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('LoginThrottle', () => {
  /** One login from `source` that fails: admitted, its answer held, answered. */
  const fail = (throttle: LoginThrottle, source: string): number => {
    expect(throttle.admit(source)).toBe(true);
    const hold = throttle.failed(source);
    throttle.answered(source);
    return hold;
  };

  it('holds the answer to each failure longer, doubling up to the cap; a success starts afresh, and so does a quiet while', () => {
    let now = 0;
    const throttle = new LoginThrottle(1000, 3, 60_000, 10, () => now);
    expect([1, 2, 3, 4, 5, 6].map(() => fail(throttle, 'a'))).toEqual([100, 200, 400, 800, 1000, 1000]);
    expect(throttle.admit('a')).toBe(true);
    throttle.succeeded('a');
    expect(fail(throttle, 'a')).toBe(100);
    now += 60_001;
    expect(fail(throttle, 'a')).toBe(100);
  });

  it('after a failure, refuses unchecked while maxPending logins of a source are being checked or held, other sources unaffected', () => {
    const throttle = new LoginThrottle(1000, 3, 60_000, 10, () => 0);
    // no failure seen yet: a fleet sharing one login may reconnect all at once
    expect(Array.from({ length: 5 }, () => throttle.admit('a')).every(Boolean)).toBe(true);
    for (let i = 0; i < 5; i++) throttle.succeeded('a');
    fail(throttle, 'a');
    expect([throttle.admit('a'), throttle.admit('a'), throttle.admit('a'), throttle.admit('a')]).toEqual([true, true, true, false]);
    expect(throttle.admit('b')).toBe(true);
    throttle.failed('a');
    expect(throttle.admit('a')).toBe(false); // held, not yet answered
    throttle.answered('a');
    expect(throttle.admit('a')).toBe(true);
  });

  it('tracks at most maxSources, forgetting the one that failed longest ago', () => {
    const throttle = new LoginThrottle(1000, 10, 60_000, 3, () => 0);
    for (const source of ['a', 'b', 'c', 'a', 'd']) fail(throttle, source);
    expect(throttle.trackedSources).toBe(3);
    expect(fail(throttle, 'b')).toBe(100); // b was forgotten: its first failure again
  });
});

describe('SessionStore', () => {
  const client = (id: string) => ({ id }) as unknown as Client;
  const packet = (topic: string, bytes: number, messageId?: number) => ({ topic, payload: Buffer.alloc(bytes), ...(messageId === undefined ? {} : { messageId }) });

  it('keeps retained and queued messages within one byte budget, and frees what is released (QoS 2: by the PUBREL in its place)', async () => {
    const store = new SessionStore({ maxQueuedMessages: 100, maxRetainedMessages: 100, maxSessionBytes: 10_000, maxInflightMessages: 2 });
    await store.storeRetained(packet('r/1', 4000));
    await store.storeRetained(packet('r/1', 3000)); // replaces: 3003 held for it
    await store.storeRetained(packet('r/2', 8000)); // over the budget: not kept
    expect(store.counters.retainedRefused).toBe(1);
    const q = (counter: number) => ({ ...packet('q', 3000), brokerId: 'b', brokerCounter: counter, qos: 2 });
    await store.outgoingEnqueueCombi([{ clientId: 'a' }, { clientId: 'b' }], q(1));
    await store.outgoingEnqueue({ clientId: 'c' }, q(2)); // over the budget: dropped, delivered unqueued
    expect(store.counters.queueDropped).toBe(1);
    await expect(store.outgoingUpdate(client('c'), { ...q(2), messageId: 5 })).resolves.toBeUndefined();
    expect(store.bytes).toBe(3003 + 2 * 3001);
    // a: PUBLISH sent as id 7, PUBREC turns it into a PUBREL, PUBCOMP clears it
    await store.outgoingUpdate(client('a'), { ...q(1), messageId: 7 });
    await store.outgoingUpdate(client('a'), { cmd: 'pubrel', messageId: 7 } as never);
    await store.outgoingClearMessageId(client('a'), { cmd: 'pubrel', messageId: 7 } as never);
    // b: sent as id 3, then again after a reconnect as id 9, acknowledged as 9
    await store.outgoingUpdate(client('b'), { ...q(1), messageId: 3 });
    await store.outgoingUpdate(client('b'), { ...q(1), messageId: 9 });
    await store.outgoingClearMessageId(client('b'), packet('q', 0, 9));
    expect(store.bytes).toBe(3003);
    // a replacement refused for the budget takes the old value away too
    const small = new SessionStore({ maxQueuedMessages: 1, maxRetainedMessages: 10, maxSessionBytes: 5000, maxInflightMessages: 2 });
    await small.storeRetained(packet('s', 1000));
    await small.storeRetained(packet('s', 9000));
    expect(small.bytes).toBe(0);
  });

  it('queues one copy for overlapping filters, accounts by the message the store removed (reused packet ids), and bounds QoS 2 handshakes of a session', async () => {
    const store = new SessionStore({ maxQueuedMessages: 10, maxRetainedMessages: 10, maxSessionBytes: 1e9, maxInflightMessages: 2 });
    const q = (counter: number) => ({ ...packet('q', 100), brokerId: 'b', brokerCounter: counter, qos: 1 });
    await store.outgoingEnqueueCombi([{ clientId: 'a' }, { clientId: 'a' }], q(1)); // site/+/temp and site/#
    expect(store.bytes).toBe(101);
    // message 1 sent as id 5 (not acknowledged); after a reconnect message 2 is sent as id 5 too
    await store.outgoingUpdate(client('a'), { ...q(1), messageId: 5 });
    await store.outgoingEnqueue({ clientId: 'a' }, q(2));
    await store.outgoingUpdate(client('a'), { ...q(2), messageId: 5 });
    await store.outgoingClearMessageId(client('a'), packet('q', 0, 5)); // removes one of them
    await store.outgoingUpdate(client('a'), { ...q(1), messageId: 6 });
    await store.outgoingUpdate(client('a'), { ...q(2), messageId: 6 });
    await store.outgoingClearMessageId(client('a'), packet('q', 0, 6));
    expect(store.bytes).toBe(0);
    await store.incomingStorePacket(client('c'), packet('i', 10, 1));
    await store.incomingStorePacket(client('c'), packet('i', 10, 2));
    await expect(store.incomingStorePacket(client('c'), packet('i', 10, 3))).rejects.toThrow(/maxInflightMessages/);
    await store.incomingStorePacket(client('c'), packet('i', 10, 2)); // a retransmit is no new one
    await store.incomingDelPacket(client('c'), packet('i', 0, 1));
    await store.incomingStorePacket(client('c'), packet('i', 10, 3));
  });

  it('drops new messages for a subscriber whose queue is full, as Mosquitto does', async () => {
    const store = new SessionStore({ maxQueuedMessages: 2, maxRetainedMessages: 1, maxSessionBytes: 1e9, maxInflightMessages: 2 });
    // aedes gives a queued message its packet id when it sends it (outgoingUpdate), and clears it by that id on PUBACK.
    const queued = { ...packet('q', 1), brokerId: 'b', brokerCounter: 1, qos: 1 };
    await store.outgoingEnqueue({ clientId: 'a' }, queued);
    for (let i = 2; i <= 4; i++) await store.outgoingEnqueue({ clientId: 'a' }, { ...queued, brokerCounter: i });
    expect(store.counters.queueDropped).toBe(2);
    await store.outgoingUpdate(client('a'), { ...queued, messageId: 1 });
    await store.outgoingClearMessageId(client('a'), packet('q', 0, 1));
    await store.outgoingEnqueue({ clientId: 'a' }, { ...packet('q', 1), messageId: 9 });
    expect(store.counters.queueDropped).toBe(2);
    await store.storeRetained(packet('r/1', 1));
    await store.storeRetained(packet('r/2', 1));
    await store.storeRetained(packet('r/1', 2));
    expect(store.counters.retainedRefused).toBe(1);
  });
});
