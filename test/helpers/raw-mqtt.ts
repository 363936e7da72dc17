import { readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { parser as mqttParser, type Packet } from 'mqtt-packet';

/**
 * MQTT 3.1.1 bytes built by hand (so that they can be wrong on purpose), and raw sockets that
 * report what the server answered and whether it closed the connection.
 */

export type Bytes = Uint8Array | string;

export function bytes(b: Bytes): Buffer {
  return typeof b === 'string' ? Buffer.from(b, 'utf8') : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** The remaining-length encoding [MQTT-2.2.3]: 1-4 bytes for 0..268,435,455. */
export function varint(n: number): Buffer {
  const out: number[] = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return Buffer.from(out);
}

/** A length-prefixed string field; `length` overrides the true byte count. */
export function str(value: Bytes, length?: number): Buffer {
  const b = bytes(value);
  const prefix = Buffer.alloc(2);
  prefix.writeUInt16BE((length ?? b.length) & 0xffff);
  return Buffer.concat([prefix, b]);
}

export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff);
  return b;
}

/** A packet: the first byte, the remaining length (the body's unless `length` is given), the body. */
export function frame(first: number, body: Uint8Array, length?: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([first & 0xff]), length ?? varint(body.length), body]);
}

export interface ConnectFields {
  readonly clientId: Bytes;
  readonly username?: Bytes | undefined;
  readonly password?: Bytes | undefined;
  readonly keepalive?: number;
  readonly clean?: boolean;
  readonly will?: { readonly topic: Bytes; readonly payload: Bytes; readonly qos?: number; readonly retain?: boolean } | undefined;
  readonly protocolName?: Bytes;
  readonly protocolLevel?: number;
  /** Replaces the flags byte computed from the fields. */
  readonly flags?: number;
}

export function connectBody(c: ConnectFields): Buffer {
  let flags = 0;
  if (c.clean !== false) flags |= 0x02;
  if (c.will) flags |= 0x04 | ((c.will.qos ?? 0) << 3) | (c.will.retain ? 0x20 : 0);
  if (c.password !== undefined) flags |= 0x40;
  if (c.username !== undefined) flags |= 0x80;
  return Buffer.concat([
    str(c.protocolName ?? 'MQTT'),
    Buffer.from([c.protocolLevel ?? 4, c.flags ?? flags]),
    u16(c.keepalive ?? 30),
    str(c.clientId),
    ...(c.will ? [str(c.will.topic), str(c.will.payload)] : []),
    ...(c.username !== undefined ? [str(c.username)] : []),
    ...(c.password !== undefined ? [str(c.password)] : []),
  ]);
}

export function connect(c: ConnectFields): Buffer {
  return frame(0x10, connectBody(c));
}

export function publish(topic: Bytes, payload: Bytes, { qos = 0, messageId = 1, dup = false, retain = false } = {}): Buffer {
  const body = Buffer.concat([str(topic), ...(qos > 0 ? [u16(messageId)] : []), bytes(payload)]);
  return frame(0x30 | (dup ? 0x08 : 0) | (qos << 1) | (retain ? 0x01 : 0), body);
}

export function subscribe(messageId: number, filters: readonly (readonly [Bytes, number])[]): Buffer {
  return frame(0x82, Buffer.concat([u16(messageId), ...filters.flatMap(([f, q]) => [str(f), Buffer.from([q & 0xff])])]));
}

export interface Probe {
  /** The server closed the connection (FIN or reset), as opposed to the probe giving up. */
  readonly closedByServer: boolean;
  /** The server's packets, parsed. */
  readonly packets: Packet[];
  /** Set when the server's bytes were not well-formed MQTT. */
  readonly parseError: string | undefined;
  /** ms from the last write until the server closed (or until the probe gave up). */
  readonly ms: number;
  /** The server's bytes (the first 64 KB). */
  readonly received: Buffer;
}

export interface RawConnection {
  readonly socket: Socket;
  readonly packets: Packet[];
  readonly closed: Promise<void>;
  /** Resolves when the TCP connection is established (true) or failed (false). */
  readonly ready: Promise<boolean>;
  readonly isClosed: () => boolean;
  /** When the socket closed (performance.now()), else undefined. */
  readonly closedAt: () => number | undefined;
  readonly lastActivity: () => number;
  readonly parseError: () => string | undefined;
  /** The server's bytes (the first 64 KB). */
  readonly received: () => Buffer;
  readonly write: (b: Uint8Array) => void;
}

/** A raw TCP connection that parses what the server sends and remembers when it closed. */
export function rawConnection(port: number, host = '127.0.0.1'): RawConnection {
  const socket = netConnect({ port, host });
  socket.setNoDelay(true);
  const parser = mqttParser({ protocolVersion: 4 });
  const packets: Packet[] = [];
  let parseError: string | undefined;
  let closedAt: number | undefined;
  let last = performance.now();
  const received: Buffer[] = [];
  let receivedBytes = 0;
  parser.on('packet', (p: Packet) => packets.push(p));
  parser.on('error', (err: Error) => (parseError ??= err.message));
  socket.on('data', (d: Buffer) => {
    last = performance.now();
    if (receivedBytes < 65_536) received.push(d.subarray(0, 65_536 - receivedBytes));
    receivedBytes += d.length;
    parser.parse(d);
  });
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      closedAt = performance.now();
      resolve();
    }),
  );
  const ready = new Promise<boolean>((resolve) => {
    socket.once('connect', () => resolve(true));
    void closed.then(() => resolve(false));
  });
  return {
    socket,
    packets,
    closed,
    ready,
    isClosed: () => closedAt !== undefined,
    closedAt: () => closedAt,
    lastActivity: () => last,
    parseError: () => parseError,
    received: () => Buffer.concat(received),
    write: (b) => {
      last = performance.now();
      if (!socket.destroyed) socket.write(b, () => undefined);
    },
  };
}

/**
 * Connects, writes `chunks` one after another (a turn of the event loop apart), then waits until
 * the server closes the connection, or `done` holds for its packets, or nothing was sent or
 * received for `idleMs`, or `maxMs` passed; then destroys the socket.
 */
export async function probe(
  port: number,
  chunks: readonly Uint8Array[],
  { idleMs = 150, maxMs = 3_000, done }: { idleMs?: number; maxMs?: number; done?: (packets: readonly Packet[]) => boolean } = {},
): Promise<Probe> {
  const conn = rawConnection(port);
  const started = performance.now();
  await conn.ready;
  let wroteAt = performance.now();
  for (const chunk of chunks) {
    if (conn.isClosed()) break;
    conn.write(chunk);
    wroteAt = performance.now();
    await new Promise((r) => setImmediate(r));
  }
  while (!conn.isClosed()) {
    const now = performance.now();
    if (now - conn.lastActivity() >= idleMs || now - started >= maxMs || done?.(conn.packets)) break;
    await Promise.race([conn.closed, new Promise((r) => setTimeout(r, 10))]);
  }
  const closedByServer = conn.isClosed();
  const ms = (conn.closedAt() ?? performance.now()) - wroteAt;
  conn.socket.destroy();
  await conn.closed;
  return { closedByServer, packets: conn.packets, parseError: conn.parseError(), ms, received: conn.received() };
}

/** A raw connection that sent `connectBytes` and got CONNACK 0 (fails otherwise). */
export async function loggedIn(port: number, connectBytes: Uint8Array, timeoutMs = 10_000): Promise<RawConnection> {
  const conn = rawConnection(port);
  conn.write(connectBytes);
  await Promise.race([conn.closed, until('CONNACK', () => conn.packets.some((p) => p.cmd === 'connack'), timeoutMs).catch(() => undefined)]);
  const connack = conn.packets.find((p) => p.cmd === 'connack');
  if (connack?.cmd !== 'connack' || connack.returnCode !== 0) {
    conn.socket.destroy();
    throw new Error(`login refused: ${connack ? `CONNACK ${connack.returnCode}` : conn.isClosed() ? 'connection closed' : 'no CONNACK'}`);
  }
  return conn;
}

/** Resident set size of a process (Linux), in bytes. */
export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for process ${pid}`);
  return Number(m[1]) * 1024;
}

/** Resolves once `check` holds, or fails naming `what` after the deadline. */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000, everyMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Reads until `ok` accepts the value, and returns it; fails naming `what` and the last value read
 * after the deadline.
 */
export async function untilValue<T>(what: string, read: () => Promise<T>, ok: (value: T) => boolean, timeoutMs = 60_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (ok(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
