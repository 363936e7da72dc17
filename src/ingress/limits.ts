/**
 * Per-connection limits that must act before aedes sees a packet (packet size) or between aedes
 * and the log (publish rate). Pure logic; MqttIngress applies them.
 */

/** Room for a PUBLISH's fixed and variable header, and for CONNECT/SUBSCRIBE packets, beyond the payload. */
export const PACKET_HEADROOM_BYTES = 16 * 1024;

export type FrameVerdict =
  | { readonly ok: true }
  | { readonly ok: false; readonly reason: 'too-large'; readonly packetBytes: number }
  | { readonly ok: false; readonly reason: 'malformed' };

const OK: FrameVerdict = { ok: true };
const MALFORMED: FrameVerdict = { ok: false, reason: 'malformed' };

/**
 * Follows MQTT packet boundaries in a byte stream (fixed header: one type byte, then the
 * remaining length as a variable byte integer of at most four bytes [MQTT-2.2.3]) and refuses a
 * packet as soon as its header announces more than `maxPacketBytes`, before its body arrives: the
 * parser behind it would otherwise buffer up to 256 MB for one packet.
 */
export class PacketSizeGuard {
  /** Body bytes of the current packet still to come. */
  private remaining = 0;
  /** 0: at a packet's type byte; 1-4: reading the remaining-length byte of that index. */
  private lengthByte = 0;
  private length = 0;
  private multiplier = 1;

  constructor(readonly maxPacketBytes: number) {}

  /** Scans the next chunk of the stream. Once it returns a failure, the connection must be closed. */
  feed(chunk: Uint8Array): FrameVerdict {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.remaining > 0) {
        const skip = Math.min(this.remaining, n - i);
        this.remaining -= skip;
        i += skip;
        continue;
      }
      const byte = chunk[i++]!;
      if (this.lengthByte === 0) {
        this.lengthByte = 1;
        this.length = 0;
        this.multiplier = 1;
        continue;
      }
      this.length += (byte & 0x7f) * this.multiplier;
      if (byte & 0x80) {
        if (this.lengthByte === 4) return MALFORMED;
        this.lengthByte++;
        this.multiplier *= 128;
        continue;
      }
      const packetBytes = 1 + this.lengthByte + this.length;
      this.lengthByte = 0;
      if (this.length > this.maxPacketBytes) return { ok: false, reason: 'too-large', packetBytes };
      this.remaining = this.length;
    }
    return OK;
  }
}

/**
 * A token bucket that keeps order: callers are let through one token each, in the order they
 * asked, as tokens accrue at `ratePerSecond` (bursts of one second's worth). A caller that has to
 * wait is run from a timer; while it waits, aedes reads nothing more from that client.
 */
export class PublishThrottle {
  private tokens: number;
  private last: number;
  private readonly waiting: (() => void)[] = [];
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly ratePerSecond: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = ratePerSecond;
    this.last = now();
  }

  /** Runs `go` now if a token is free and nobody waits, else after those before it. Returns whether it waited. */
  run(go: () => void): boolean {
    if (this.waiting.length === 0 && this.take()) {
      go();
      return false;
    }
    this.waiting.push(go);
    this.schedule();
    return true;
  }

  /** Drops the waiting callers (the connection closed: nothing acknowledges them anyway). */
  close(): void {
    this.closed = true;
    this.waiting.length = 0;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private take(): boolean {
    const now = this.now();
    this.tokens = Math.min(this.ratePerSecond, this.tokens + ((now - this.last) * this.ratePerSecond) / 1000);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  private schedule(): void {
    if (this.timer || this.closed) return;
    const waitMs = Math.max(1, Math.ceil(((1 - this.tokens) * 1000) / this.ratePerSecond));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      while (this.waiting.length > 0 && this.take()) this.waiting.shift()!();
      if (this.waiting.length > 0) this.schedule();
    }, waitMs);
  }
}
