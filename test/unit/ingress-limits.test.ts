import { generate } from 'mqtt-packet';
import { describe, expect, it, vi } from 'vitest';
import { LoginThrottle } from '../../src/ingress/authenticator.js';
import { PacketSizeGuard, PublishThrottle } from '../../src/ingress/limits.js';

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

  it('drops waiting callers when closed', () => {
    vi.useFakeTimers();
    try {
      const throttle = new PublishThrottle(1, () => 0);
      const ran: number[] = [];
      throttle.run(() => ran.push(1));
      throttle.run(() => ran.push(2));
      throttle.close();
      vi.advanceTimersByTime(10_000);
      expect(ran).toEqual([1]);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('LoginThrottle', () => {
  it('doubles the delay per failure from one address up to the cap, and forgets on success or after a while', () => {
    let now = 0;
    const throttle = new LoginThrottle(1000, 60_000, 3, () => now);
    expect(throttle.delayMs('a')).toBe(0);
    const delays = [];
    for (let i = 0; i < 6; i++) {
      throttle.failed('a');
      delays.push(throttle.delayMs('a'));
    }
    expect(delays).toEqual([100, 200, 400, 800, 1000, 1000]);
    expect(throttle.delayMs('b')).toBe(0);
    throttle.succeeded('a');
    expect(throttle.delayMs('a')).toBe(0);
    throttle.failed('a');
    now += 60_001;
    expect(throttle.delayMs('a')).toBe(0);
  });

  it('tracks at most maxAddresses, forgetting the one that failed longest ago', () => {
    const throttle = new LoginThrottle(1000, 60_000, 3, () => 0);
    for (const address of ['a', 'b', 'c', 'a', 'd']) throttle.failed(address);
    expect(throttle.trackedAddresses).toBe(3);
    expect(throttle.delayMs('b')).toBe(0);
    expect(throttle.delayMs('a')).toBe(200);
  });
});
