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

/**
 * What a client may send in MQTT 3.1.1: CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP,
 * SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT. The others (CONNACK, SUBACK, UNSUBACK, PINGRESP, the
 * reserved 0) are protocol violations [MQTT-4.8.0-1]; so is AUTH (15) before MQTT 5.
 */
const CLIENT_PACKET_TYPES = new Set([1, 3, 4, 5, 6, 7, 8, 10, 12, 14]);
const CLIENT_PACKET_TYPES_V5 = new Set([...CLIENT_PACKET_TYPES, 15]);

/**
 * Remaining lengths the protocol fixes in 3.1.1: the acknowledgements carry just a packet id,
 * PINGREQ and DISCONNECT nothing. (The parser behind reads a short one across the next packet's
 * bytes.) MQTT 5 acknowledgements may add a reason code and properties, and DISCONNECT may carry
 * them too: at least a packet id, PINGREQ still nothing.
 */
const FIXED_LENGTHS = new Map([
  [4, 2],
  [5, 2],
  [6, 2],
  [7, 2],
  [12, 0],
  [14, 0],
]);
const MIN_LENGTHS_V5 = new Map([
  [4, 2],
  [5, 2],
  [6, 2],
  [7, 2],
]);
const FIXED_LENGTHS_V5 = new Map([[12, 0]]);

/** Where CONNECT's body holds the protocol level: after the protocol name "MQTT" (2 + 4 bytes). */
const CONNECT_LEVEL_OFFSET = 6;
const MALFORMED: FrameVerdict = { ok: false, reason: 'malformed' };

/**
 * Follows MQTT packet boundaries in a byte stream (fixed header: one type byte, then the
 * remaining length as a variable byte integer of at most four bytes [MQTT-2.2.3]) and refuses a
 * packet as soon as its header announces more than `maxPacketBytes`, before its body arrives: the
 * parser behind it would otherwise buffer up to 256 MB for one packet. A packet type a client may
 * not send, or a length the protocol fixes otherwise, is malformed.
 */
export class PacketSizeGuard {
  private packetsStarted = 0;
  /** Body bytes of the current packet still to come. */
  private remaining = 0;
  private type = 0;
  /** 0: at a packet's type byte; 1-4: reading the remaining-length byte of that index. */
  private lengthByte = 0;
  private length = 0;
  private multiplier = 1;
  /** Bytes of the current packet's body seen so far (to read CONNECT's protocol level). */
  private bodySeen = 0;
  /** The protocol level the CONNECT asked for (4: 3.1.1, 5: MQTT 5); undefined before it is read. */
  protocolLevel: number | undefined;

  /**
   * @param maxFirstPacketBytes the CONNECT comes before any login: a smaller bound keeps what
   *   unauthenticated connections can make the gateway buffer small.
   */
  constructor(
    readonly maxPacketBytes: number,
    readonly maxFirstPacketBytes = maxPacketBytes,
  ) {}

  /** Scans the next chunk of the stream. Once it returns a failure, the connection must be closed. */
  feed(chunk: Uint8Array): FrameVerdict {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.remaining > 0) {
        const skip = Math.min(this.remaining, n - i);
        if (this.packetsStarted === 1 && this.type === 1 && this.protocolLevel === undefined && this.bodySeen + skip > CONNECT_LEVEL_OFFSET) {
          this.protocolLevel = chunk[i + CONNECT_LEVEL_OFFSET - this.bodySeen];
        }
        this.bodySeen += skip;
        this.remaining -= skip;
        i += skip;
        continue;
      }
      const byte = chunk[i++]!;
      if (this.lengthByte === 0) {
        this.type = byte >> 4;
        if (!(this.protocolLevel === 5 ? CLIENT_PACKET_TYPES_V5 : CLIENT_PACKET_TYPES).has(this.type)) return MALFORMED;
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
      const max = this.packetsStarted++ === 0 ? this.maxFirstPacketBytes : this.maxPacketBytes;
      if (this.length > max) return { ok: false, reason: 'too-large', packetBytes };
      if (this.protocolLevel === 5) {
        const fixed = FIXED_LENGTHS_V5.get(this.type);
        if (fixed !== undefined && this.length !== fixed) return MALFORMED;
        if (this.length < (MIN_LENGTHS_V5.get(this.type) ?? 0)) return MALFORMED;
      } else {
        const fixed = FIXED_LENGTHS.get(this.type);
        if (fixed !== undefined && this.length !== fixed) return MALFORMED;
      }
      this.bodySeen = 0;
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
    if (this.closed || (this.waiting.length === 0 && this.take())) {
      go();
      return false;
    }
    this.waiting.push(go);
    this.schedule();
    return true;
  }

  /**
   * The connection closed: the waiting callers run now, in order. What they pass on decides what
   * a closed connection's publish is worth (the log keeps QoS 0, drops the unacknowledgeable rest).
   */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const go of this.waiting.splice(0)) go();
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
