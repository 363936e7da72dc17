import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { hashPassword } from '../../src/ingress/auth/password-file.js';
import { kafkaBrokers, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { reading } from '../helpers/publish.js';
import * as raw from '../helpers/raw-mqtt.js';

/**
 * Issue 7's bad-input suite, against one real `edgebridge start` process with password logins:
 * malformed packets from raw sockets (property-based), oversized packets, hostile topics and
 * device IDs, slow and half-open connections and a connection flood. Throughout, a device keeps
 * publishing on its own connection. Afterwards: the process never exited, its RSS stayed bounded,
 * every reading acknowledged before (and during) the attack is in Kafka exactly once and in
 * order, nothing is stored under an identity that did not log in as it, and the gateway serves a
 * fresh client.
 */

const LONG_ID = 'L'.repeat(10_000);
const PASSWORDS: Record<string, string> = {
  'dev-1': 'victim-secret',
  fuzz: 'fuzz-secret',
  '+': 'plus-secret',
  '../x': 'dots-secret',
  '..': 'dotdot-secret',
  'dév-ü🙂': 'unicode-secret',
  [LONG_ID]: 'long-secret',
};
/** The identities the attacker holds passwords of (all but the victim, dev-1). */
const ATTACKERS = Object.keys(PASSWORDS).filter((u) => u !== 'dev-1');

const MAX_PAYLOAD = 64 * 1024;
const MAX_CONNECTIONS = 200;
const CONNECT_TIMEOUT_MS = 1_000;
const BEFORE = 500;
/** BAD_INPUT_SCALE=10 runs ten times the property cases. */
const SCALE = Number(process.env.BAD_INPUT_SCALE ?? 1);
/** Replays a failure: FC_SEED and FC_PATH as fast-check reported them. */
const REPLAY = process.env.FC_SEED === undefined ? {} : { seed: Number(process.env.FC_SEED), ...(process.env.FC_PATH ? { path: process.env.FC_PATH } : {}) };

const FUZZ = { username: 'fuzz', password: 'fuzz-secret' };
const enc = (s: string) => new TextEncoder().encode(s);
const concat = (...parts: Uint8Array[]) => Buffer.concat(parts);
const joinLevels = (levels: readonly Uint8Array[]) => concat(...levels.flatMap((l, i) => (i === 0 ? [l] : [enc('/'), l])));

/** Packets a server may send a 3.1.1 client. */
const SERVER_PACKETS = new Set(['connack', 'publish', 'puback', 'pubrec', 'pubrel', 'pubcomp', 'suback', 'unsuback', 'pingresp']);

/**
 * Whether the gateway's answer is well-formed MQTT from a server. Answers to malformed input are
 * not always: mqtt-packet parses a PUBACK/PUBREC/PUBREL/PUBCOMP (or a QoS 1/2 PUBLISH) too short
 * for its message id with id -1, and aedes answers it with an acknowledgement of remaining length
 * 2 and no id bytes. That garbles only what the sender itself reads, so the fuzz properties count
 * such answers (reported at the end) and the device-ID property, whose input is well-formed,
 * requires well-formed answers.
 */
function answerProblem(p: raw.Probe): string | undefined {
  if (p.parseError !== undefined) return `the gateway answered bytes that are not MQTT: ${p.parseError}; its bytes: ${p.received.toString('hex').slice(0, 2_000)}`;
  const odd = p.packets.filter((x) => !SERVER_PACKETS.has(x.cmd));
  if (odd.length > 0) return `the gateway sent client packets: ${odd.map((x) => x.cmd).join(', ')}`;
  return undefined;
}

/** Runs `fn` over `items`, at most `width` at a time. */
async function inParallel<T, R>(items: readonly T[], width: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!, i);
      }
    }),
  );
  return out;
}

// ---- generators -------------------------------------------------------------------------------

/** Byte sequences that are not UTF-8 or that MQTT forbids in strings [MQTT-1.5.3]. */
const BAD_UTF8 = [
  [0xc0, 0x80], // overlong NUL
  [0xff],
  [0xfe, 0xff],
  [0xed, 0xa0, 0x80], // a lone high surrogate, encoded
  [0xed, 0xbf, 0xbf], // a lone low surrogate, encoded
  [0xf4, 0x90, 0x80, 0x80], // above U+10FFFF
  [0xe2, 0x82], // truncated sequence
  [0x80],
  [0x00], // U+0000
  [0xef, 0xbf, 0xbf], // U+FFFF
].map((b) => Uint8Array.from(b));

const levelArb: fc.Arbitrary<Uint8Array> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('devices', 'telemetry', 'fuzz', 'dev-1', '+', '#', '', '..', '.', '$SYS', '\u0000', '\uFFFD', 'dév-ü🙂', ' fuzz', 'FUZZ').map(enc) },
  { weight: 2, arbitrary: fc.constantFrom(...BAD_UTF8) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom('fuzz', 'dev-1', 'dev'), fc.constantFrom(...BAD_UTF8)).map(([s, b]) => concat(enc(s), b)) },
  { weight: 1, arbitrary: fc.string({ maxLength: 10 }).map(enc) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 6 }).map(enc) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 8 }) },
);

const topicArb: fc.Arbitrary<Uint8Array> = fc.oneof(
  { weight: 6, arbitrary: fc.array(levelArb, { minLength: 1, maxLength: 6 }).map(joinLevels) },
  // the attacker's own routed subtree with hostile levels behind it: may be stored, as "fuzz"
  { weight: 3, arbitrary: fc.array(levelArb, { maxLength: 3 }).map((ls) => joinLevels([enc('devices'), enc('fuzz'), enc('telemetry'), ...ls])) },
  // someone else's
  { weight: 2, arbitrary: fc.tuple(levelArb, fc.array(levelArb, { maxLength: 2 })).map(([d, ls]) => joinLevels([enc('devices'), d, enc('telemetry'), ...ls])) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      enc(''),
      enc('/'),
      enc('a'.repeat(2_000)),
      enc(`devices/fuzz/telemetry/${'z'.repeat(1_100)}`),
      enc('x/'.repeat(40) + 'x'),
      enc('/'.repeat(200)),
      enc('#'),
      enc('+/+/+'),
    ),
  },
);

type LengthMode = 'exact' | 'short' | 'long' | 'max';
const lengthModeArb = fc.oneof(
  { weight: 12, arbitrary: fc.constant<LengthMode>('exact') },
  { weight: 1, arbitrary: fc.constantFrom<LengthMode>('short', 'long', 'max') },
);
function field(b: Uint8Array, mode: LengthMode): Buffer {
  switch (mode) {
    case 'exact':
      return raw.str(b);
    case 'short':
      return raw.str(b, Math.max(0, b.length - 1));
    case 'long':
      return raw.str(b, b.length + 3);
    case 'max':
      return raw.str(b, 0xffff); // a huge topic length field
  }
}

const u16Arb = fc.integer({ min: 0, max: 0xffff });
const payloadArb = fc.oneof(
  fc.uint8Array({ maxLength: 200 }),
  fc.json({ maxDepth: 3 }).map(enc),
  fc.record({ bootId: fc.string({ maxLength: 6 }), seq: fc.oneof(fc.integer(), fc.double(), fc.constant(null)) }).map((r) => enc(JSON.stringify(r))),
  fc.constant(enc('[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[')),
  fc.constant(new Uint8Array(0)),
);

const clientIdArb = fc.oneof(
  { weight: 4, arbitrary: fc.string({ minLength: 1, maxLength: 12 }).map((s) => enc(`fz-${s}`)) },
  // the victim's live connection and its session: a takeover must be refused
  { weight: 1, arbitrary: fc.constantFrom('dev-1-live', 'dev-1', '', 'x'.repeat(300), '\u0000', '$SYS').map(enc) },
  { weight: 1, arbitrary: levelArb },
);

const credsArb = fc.oneof(
  { weight: 6, arbitrary: fc.constant({ username: enc(FUZZ.username), password: enc(FUZZ.password) as Uint8Array | undefined }) },
  {
    weight: 2,
    arbitrary: fc.record({
      username: fc.oneof(fc.constantFrom('fuzz', 'dev-1', '+', '', LONG_ID).map(enc), levelArb),
      password: fc.option(fc.oneof(fc.constantFrom('fuzz-secret', 'victim-secret', '').map(enc), fc.uint8Array({ maxLength: 20 })), { nil: undefined }),
    }),
  },
  { weight: 1, arbitrary: fc.constant(undefined) },
);

interface Structured {
  first: number;
  body: Buffer;
}

const connectArb: fc.Arbitrary<Structured> = fc
  .record({
    typeFlags: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 15 }) }),
    name: fc.oneof(
      { weight: 8, arbitrary: fc.constant(enc('MQTT')) },
      { weight: 1, arbitrary: fc.constantFrom('MQIsdp', 'mqtt', 'MQTT\u0000', 'MQTTT', '').map(enc) },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 8 }) },
    ),
    nameMode: lengthModeArb,
    level: fc.oneof({ weight: 8, arbitrary: fc.constant(4) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
    flags: fc.oneof({ weight: 5, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
    clean: fc.boolean(),
    keepalive: fc.oneof(fc.constant(30), fc.constant(0), u16Arb),
    clientId: clientIdArb,
    clientIdMode: lengthModeArb,
    will: fc.oneof(
      { weight: 4, arbitrary: fc.constant(undefined) },
      { weight: 1, arbitrary: fc.record({ topic: topicArb, payload: payloadArb, qos: fc.integer({ min: 0, max: 3 }), retain: fc.boolean() }) },
    ),
    creds: credsArb,
    tail: fc.oneof({ weight: 8, arbitrary: fc.constant(new Uint8Array(0)) }, { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 10 }) }),
  })
  .map((c) => {
    let flags = c.clean ? 0x02 : 0;
    if (c.will) flags |= 0x04 | (c.will.qos << 3) | (c.will.retain ? 0x20 : 0);
    if (c.creds?.username !== undefined) flags |= 0x80;
    if (c.creds?.password !== undefined) flags |= 0x40;
    const body = concat(
      field(c.name, c.nameMode),
      Uint8Array.from([c.level, c.flags ?? flags]),
      raw.u16(c.keepalive),
      field(c.clientId, c.clientIdMode),
      ...(c.will ? [raw.str(c.will.topic), raw.str(c.will.payload)] : []),
      ...(c.creds?.username !== undefined ? [raw.str(c.creds.username)] : []),
      ...(c.creds?.password !== undefined ? [raw.str(c.creds.password)] : []),
      c.tail,
    );
    return { first: 0x10 | c.typeFlags, body };
  });

const publishArb: fc.Arbitrary<Structured> = fc
  .record({
    // DUP, QoS (3 included) and RETAIN bits at random
    flags: fc.integer({ min: 0, max: 15 }),
    topic: topicArb,
    topicMode: lengthModeArb,
    messageId: fc.oneof(fc.constant(0), u16Arb),
    payload: payloadArb,
  })
  .map((p) => {
    const qos = (p.flags >> 1) & 3;
    return { first: 0x30 | p.flags, body: concat(field(p.topic, p.topicMode), ...(qos > 0 ? [raw.u16(p.messageId)] : []), p.payload) };
  });

const subscribeArb: fc.Arbitrary<Structured> = fc
  .record({
    unsubscribe: fc.boolean(),
    flags: fc.oneof({ weight: 4, arbitrary: fc.constant(2) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 15 }) }),
    messageId: u16Arb,
    filters: fc.array(fc.tuple(topicArb, lengthModeArb, fc.oneof(fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 255 }))), { maxLength: 3 }),
  })
  .map((s) => ({
    first: (s.unsubscribe ? 0xa0 : 0x80) | s.flags,
    body: concat(raw.u16(s.messageId), ...s.filters.flatMap(([t, m, q]) => (s.unsubscribe ? [field(t, m)] : [field(t, m), Uint8Array.from([q])]))),
  }));

const smallArb: fc.Arbitrary<Structured> = fc
  .record({
    // PUBACK, PUBREC, PUBREL, PUBCOMP, PINGREQ, DISCONNECT, and the types a client never sends
    type: fc.constantFrom(4, 5, 6, 7, 12, 14, 0, 2, 9, 11, 13, 15),
    flags: fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 15 })),
    body: fc.oneof(u16Arb.map(raw.u16), fc.uint8Array({ maxLength: 6 })),
  })
  .map((s) => ({ first: (s.type << 4) | (s.flags === -1 ? (s.type === 6 ? 2 : 0) : s.flags), body: Buffer.from(s.body) }));

type Framing =
  | { kind: 'exact' }
  | { kind: 'varint'; bytes: Uint8Array }
  | { kind: 'five' }
  | { kind: 'length'; n: number }
  | { kind: 'truncated'; cut: number }
  | { kind: 'off'; d: number };
const framingArb: fc.Arbitrary<Framing> = fc.oneof(
  { weight: 12, arbitrary: fc.constant<Framing>({ kind: 'exact' }) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 4 }).map<Framing>((bytes) => ({ kind: 'varint', bytes })) },
  { weight: 1, arbitrary: fc.constant<Framing>({ kind: 'five' }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 268_435_455 }).map<Framing>((n) => ({ kind: 'length', n })) },
  { weight: 2, arbitrary: fc.nat().map<Framing>((cut) => ({ kind: 'truncated', cut })) },
  { weight: 1, arbitrary: fc.integer({ min: -4, max: 4 }).map<Framing>((d) => ({ kind: 'off', d })) },
);
function framed(p: Structured, f: Framing): Buffer {
  switch (f.kind) {
    case 'exact':
      return raw.frame(p.first, p.body);
    case 'varint':
      return raw.frame(p.first, p.body, f.bytes);
    case 'five': // a remaining length of five bytes [MQTT-2.2.3]: malformed
      return raw.frame(p.first, p.body, Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0x7f]));
    case 'length':
      return raw.frame(p.first, p.body, raw.varint(f.n));
    case 'truncated':
      return raw.frame(p.first, p.body.subarray(0, f.cut % (p.body.length + 1)), raw.varint(p.body.length));
    case 'off':
      return raw.frame(p.first, p.body, raw.varint(Math.max(0, p.body.length + f.d)));
  }
}

const packetArb = fc.tuple(fc.oneof({ weight: 4, arbitrary: publishArb }, { weight: 2, arbitrary: subscribeArb }, { weight: 2, arbitrary: smallArb }, { weight: 1, arbitrary: connectArb }), framingArb);

/** How the bytes reach the socket: in one write, one per packet, or cut at random places. */
const chunkingArb = fc.oneof(fc.constant<'one' | 'each'>('one'), fc.constant<'one' | 'each'>('each'), fc.array(fc.nat(), { minLength: 1, maxLength: 4 }));
function chunked(packets: readonly Buffer[], how: 'one' | 'each' | number[]): Buffer[] {
  if (how === 'each') return [...packets];
  const all = Buffer.concat(packets);
  if (how === 'one') return [all];
  const cuts = [...new Set(how.map((c) => c % (all.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const c of [...cuts, all.length]) {
    if (c > from) out.push(all.subarray(from, c));
    from = c;
  }
  return out;
}

function validConnect(clientId: string, creds: { username: string; password: string } = FUZZ, keepalive = 30): Buffer {
  return raw.connect({ clientId, username: creds.username, password: creds.password, keepalive });
}

// ---- the suite ----------------------------------------------------------------------------------

describe('bad input: malformed, oversized, hostile and slow MQTT clients', () => {
  const brokers = kafkaBrokers();
  const topic = uniqueName('iot.badinput');
  let dir: string;
  let gw: GatewayProcess;
  let adminPort: number;
  let pid: number;
  let rssBefore = 0;
  let rssPeak = 0;
  let sampler: NodeJS.Timeout | undefined;
  /** Routed publishes acknowledged to the device-ID property's clients: payload -> identity. */
  const ackedByAttackers = new Map<string, string>();
  const stats: Record<string, number> = {};
  const count = (k: string, n = 1) => (stats[k] = (stats[k] ?? 0) + n);
  let malformedAnswerExample: string | undefined;
  function noteAnswer(kind: string, r: raw.Probe): void {
    const problem = answerProblem(r);
    if (problem === undefined) return;
    count(`${kind}.malformedAnswers`);
    malformedAnswerExample ??= problem;
  }

  // The victim device, publishing on its own connection throughout the attack.
  let live: MqttClient;
  let liveAcked = 0;
  let liveError: Error | undefined;
  let liveStop = false;
  let liveLoop: Promise<void>;

  const alive = () => gw.child.exitCode === null && gw.child.signalCode === null;
  function assertAlive(): void {
    if (!alive()) throw new Error(`the gateway process exited (code ${gw.child.exitCode}, signal ${gw.child.signalCode})`);
  }
  async function admin(path: string): Promise<{ status: number; body: Record<string, unknown> }> {
    const res = await fetch(`http://127.0.0.1:${adminPort}${path}`);
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  }
  /** The gateway's own view of its memory, from /metrics (prom-client's process metrics). */
  async function heap(): Promise<{ used: number; total: number; external: number }> {
    const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    const metric = (name: string) => Number(new RegExp(`^${name} (\\d+)`, 'm').exec(text)?.[1] ?? NaN);
    return { used: metric('nodejs_heap_size_used_bytes'), total: metric('nodejs_heap_size_total_bytes'), external: metric('nodejs_external_memory_bytes') };
  }
  const MiB = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MB`;
  async function memoryNote(when: string): Promise<void> {
    const h = await heap();
    console.info(`gateway memory ${when}: RSS ${MiB(raw.rssBytes(pid))}, heap used ${MiB(h.used)} of ${MiB(h.total)}, external ${MiB(h.external)}`);
  }
  const deviceOptions = { username: 'dev-1', password: PASSWORDS['dev-1']!, reconnectPeriod: 0, connectTimeout: 10_000 };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'edgebridge-badinput-'));
    const passwordFile = join(dir, 'passwd');
    writeFileSync(passwordFile, Object.entries(PASSWORDS).map(([u, p]) => `${u}:${hashPassword(p)}\n`).join(''));
    const config: ConfigInput = {
      gateway: { id: uniqueName('gw-bad') },
      mqtt: {
        host: '127.0.0.1',
        port: 0,
        maxPayloadBytes: MAX_PAYLOAD,
        // No login delays: the fuzzer logs in thousands of times from 127.0.0.1 with wrong passwords.
        auth: { passwordFile, allowAnonymous: false, failedLoginMaxDelayMs: 0 },
        limits: { maxConnections: MAX_CONNECTIONS, connectTimeoutMs: CONNECT_TIMEOUT_MS },
      },
      kafka: { brokers },
      storage: { dir: join(dir, 'data') },
      admin: { host: '127.0.0.1', port: 0 },
      routes: [{ mqtt: 'devices/{deviceId}/telemetry/#', kafka: topic }],
    } as ConfigInput;
    gw = await spawnGateway(config, dir);
    pid = gw.child.pid!;
    adminPort = (await gw.waitForLine((l) => l.msg === 'admin endpoint listening')).port as number;
  });

  afterAll(async () => {
    liveStop = true;
    if (sampler) clearInterval(sampler);
    live?.end(true);
    if (gw && alive()) {
      gw.child.kill('SIGTERM');
      await gw.exited;
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
    console.info(`bad-input stats: ${JSON.stringify(stats)}`);
    if (malformedAnswerExample) console.info(`first malformed answer: ${malformedAnswerExample}`);
  });

  it(`acknowledges ${BEFORE} readings before the attack; a device keeps publishing during it`, async () => {
    const before = await mqtt.connectAsync(gw.url, { ...deviceOptions, clientId: 'dev-1-before' });
    await Promise.all(Array.from({ length: BEFORE }, (_, i) => before.publishAsync('devices/dev-1/telemetry', reading('dev-1', 'before', i + 1), { qos: 1 })));
    await before.endAsync();

    live = await mqtt.connectAsync(gw.url, { ...deviceOptions, clientId: 'dev-1-live', keepalive: 10 });
    live.on('close', () => {
      // What the gateway said about it (or anything) last: why it closed the connection.
      const said = gw.lines.filter((l) => (l.level as number) >= 40 || JSON.stringify(l).includes('dev-1-live')).slice(-5);
      liveError ??= new Error(`the device lost its connection during the attack; the gateway's last warnings: ${JSON.stringify(said)}`);
    });
    liveLoop = (async () => {
      while (!liveStop && liveError === undefined) {
        try {
          await live.publishAsync('devices/dev-1/telemetry', reading('dev-1', 'during', liveAcked + 1), { qos: 1 });
          liveAcked++;
        } catch (err) {
          liveError = err as Error;
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    await raw.until('the device to publish during the attack', () => liveAcked >= 5 || liveError !== undefined);
    expect(liveError).toBeUndefined();

    await memoryNote('before the attack');
    rssBefore = raw.rssBytes(pid);
    rssPeak = rssBefore;
    sampler = setInterval(() => {
      if (alive()) rssPeak = Math.max(rssPeak, raw.rssBytes(pid));
    }, 50);
  });

  it('survives arbitrary bytes, with and without a valid CONNECT before them (property)', async () => {
    const BATCH = 25;
    const caseArb = fc.record({
      connectFirst: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
      clientId: fc.string({ minLength: 1, maxLength: 10 }),
      data: fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.uint8Array({ minLength: 1, maxLength: 1_500 })),
      split: fc.boolean(),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(caseArb, { minLength: BATCH, maxLength: BATCH }), async (cases) => {
        assertAlive();
        const results = await inParallel(cases, BATCH, (c) => {
          const connect = validConnect(`fz-${c.clientId}`);
          const chunks = c.connectFirst ? (c.split ? [connect, Buffer.from(c.data)] : [concat(connect, c.data)]) : [Buffer.from(c.data)];
          return raw.probe(gw.port, chunks);
        });
        for (const r of results) {
          noteAnswer('bytes', r);
          count('bytes.cases');
          if (r.closedByServer) count('bytes.closed');
        }
        assertAlive();
      }),
      { numRuns: 60 * SCALE, endOnFailure: true, ...REPLAY },
    );
    expect(liveError).toBeUndefined();
    await memoryNote('after this attack');
  });

  it('survives structurally plausible packets with corrupted fields, before and after logging in (property)', async () => {
    const BATCH = 25;
    const caseArb = fc.record({
      loggedIn: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 2, arbitrary: fc.constant(false) }),
      firstConnect: connectArb,
      firstFraming: framingArb,
      packets: fc.array(packetArb, { minLength: 1, maxLength: 4 }),
      chunking: chunkingArb,
      n: fc.nat(),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(caseArb, { minLength: BATCH, maxLength: BATCH }), async (cases) => {
        assertAlive();
        const results = await inParallel(cases, BATCH, (c) => {
          // Logged in: a valid CONNECT, then the packets. Else the first packet is a corrupted CONNECT.
          // (One in 20 tries to take over the victim's live session with the attacker's login.)
          const head = c.loggedIn ? validConnect(c.n % 20 === 0 ? 'dev-1-live' : `fz-s-${c.n}`) : framed(c.firstConnect, c.firstFraming);
          const packets = [head, ...c.packets.map(([p, f]) => framed(p, f))];
          return raw.probe(gw.port, chunked(packets, c.chunking));
        });
        for (const [i, r] of results.entries()) {
          noteAnswer('structured', r);
          count('structured.cases');
          if (r.closedByServer) count('structured.closed');
          if (r.packets.some((p) => p.cmd === 'connack' && p.returnCode === 0)) count('structured.loggedIn');
          if (r.packets.some((p) => p.cmd === 'puback' || p.cmd === 'pubrec')) count('structured.acked');
          if (!cases[i]!.loggedIn && r.packets.some((p) => p.cmd === 'connack' && p.returnCode === 0)) count('structured.corruptConnectAccepted');
        }
        assertAlive();
      }),
      { numRuns: 100 * SCALE, endOnFailure: true, ...REPLAY },
    );
    expect(liveError).toBeUndefined();
    await memoryNote('after this attack');
  });

  it('never stores a publish under an identity other than the one that logged in: device IDs like ../x, +, #, empty, 10 KB, unicode (property)', async () => {
    const BATCH = 20;
    const deviceIdArb = fc.oneof(
      {
        weight: 3,
        arbitrary: fc.constantFrom(
          ...ATTACKERS,
          'dev-1',
          '#',
          '',
          '.',
          '../dev-1',
          '..%2fdev-1',
          'FUZZ',
          'fuzz ',
          ' fuzz',
          'fuzz\u0000',
          '\u0000',
          'fuzz\uFFFD',
          'dev-1\u0000',
          'de\u0301v-ü🙂',
          'L'.repeat(9_999),
          `${LONG_ID}L`,
          'x'.repeat(1_100),
        ),
      },
      { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
      { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 6 }) },
    );
    const caseArb = fc.record({
      who: fc.constantFrom(...ATTACKERS),
      // undefined: its own identity
      level: fc.oneof({ weight: 1, arbitrary: fc.constant(undefined) }, { weight: 2, arbitrary: deviceIdArb }),
      shape: fc.constantFrom('devices/{}/telemetry', 'devices/{}/telemetry', 'devices/{}', 'devices/{}/status', '{}/telemetry'),
      suffix: fc.constantFrom('', '', '', '/x', '/#', '/+', '/..', '/../../dev-1', '/\u0000', '/\uFFFF'),
      // Sometimes the device ID level as raw bytes that are not UTF-8: overlong "/" and "." (the
      // classic path tricks), overlong NUL, a lone surrogate, or a name followed by a stray byte.
      bytes: fc.oneof(
        { weight: 5, arbitrary: fc.constant(undefined) },
        {
          weight: 1,
          arbitrary: fc.tuple(
            fc.constantFrom('', 'fuzz', 'dev-1', '..', '+'),
            fc.constantFrom([0xc0, 0xaf], [0xe0, 0x80, 0xaf], [0xc0, 0xae, 0xc0, 0xae], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xff], [0x80], [0xf8, 0x88, 0x80, 0x80, 0xaf]),
            fc.constantFrom('', 'dev-1', 'fuzz', '..'),
          ),
        },
      ),
    });
    // Another identity's login with the victim's live client id: refused, the victim stays connected.
    for (const who of ATTACKERS) {
      const r = await raw.probe(gw.port, [validConnect('dev-1-live', { username: who, password: PASSWORDS[who]! })], { idleMs: 2_000, done: (ps) => ps.some((p) => p.cmd === 'connack') });
      expect(r.packets.find((p) => p.cmd === 'connack'), `${who.slice(0, 20)} taking over the victim's session`).toMatchObject({ returnCode: 5 });
    }
    expect(liveError).toBeUndefined();

    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(caseArb, { minLength: BATCH, maxLength: BATCH }), async (cases) => {
        assertAlive();
        const results = await inParallel(cases, BATCH, async (c) => {
          const id = ++n;
          const topicBytes = c.bytes
            ? concat(enc('devices/'), enc(c.bytes[0]), Uint8Array.from(c.bytes[1]), enc(c.bytes[2]), enc('/telemetry'))
            : enc(c.shape.replace('{}', c.level ?? c.who) + c.suffix);
          // What the gateway makes of those bytes (mqtt-packet decodes them, invalid sequences as U+FFFD).
          const topicName = Buffer.from(topicBytes).toString('utf8');
          const payload = reading(c.who.length > 100 ? 'long' : c.who, `id-${id}`, 1);
          // Logged in first (CONNACK received), like a client library does.
          const conn = await raw.loggedIn(gw.port, validConnect(`id-${id}`, { username: c.who, password: PASSWORDS[c.who]! }));
          conn.write(raw.publish(topicBytes, payload, { qos: 1, messageId: 7 }));
          await Promise.race([conn.closed, raw.until('PUBACK', () => conn.packets.some((p) => p.cmd === 'puback'), 5_000).catch(() => undefined)]);
          const r = { closedByServer: conn.isClosed(), packets: conn.packets, parseError: conn.parseError(), ms: 0, received: conn.received() };
          conn.socket.destroy();
          return { c, topicName, payload, r };
        });
        for (const { c, topicName, payload, r } of results) {
          const problem = answerProblem(r);
          if (problem) throw new Error(problem);
          const acked = r.packets.some((p) => p.cmd === 'puback');
          const levels = topicName.split('/');
          // The level a route or the device's subtree takes as the device ID.
          const owner = levels[0] === 'devices' ? levels[1] : undefined;
          const what = `publish by ${JSON.stringify(c.who.slice(0, 20))} to ${JSON.stringify(topicName.slice(0, 80))}`;
          if (acked) {
            count('ids.acked');
            expect(owner, `${what} acknowledged`).toBe(c.who);
            // MQTT-1.5.3-2 says a server must close the connection for U+0000 in a string; the
            // gateway accepts it (as aedes and mqtt-packet do). Counted, not asserted: no identity is at stake.
            if (topicName.includes('\u0000')) count('ids.nulTopicAcked');
            if (/^devices\/[^/]+\/telemetry(\/|$)/.test(topicName)) ackedByAttackers.set(payload, c.who);
          } else {
            count('ids.refused');
            if (!r.closedByServer) throw new Error(`${what}: neither acknowledged nor refused (connection open)`);
            // Its own topic, well-formed: must be accepted.
            const wellFormed = !/[+#\u0000]/.test(topicName) && Buffer.byteLength(topicName) <= 1024;
            if (owner === c.who && wellFormed) throw new Error(`${what}: refused its own topic`);
          }
        }
        assertAlive();
      }),
      { numRuns: 30 * SCALE, endOnFailure: true, ...REPLAY },
    );
    expect(liveError).toBeUndefined();
    await memoryNote('after this attack');
  });

  it('cuts off packets announcing 100-200 MB before their bodies arrive (before and after login), and payloads over the limit', async () => {
    assertAlive();
    const MB = 1024 * 1024;
    /** Writes `header`, then streams filler until the gateway closes the connection; returns how much it took. */
    const flood = async (header: Buffer, loginFirst: boolean) => {
      const conn = raw.rawConnection(gw.port);
      if (!(await conn.ready)) throw new Error('cannot connect to the gateway');
      if (loginFirst) {
        conn.write(validConnect(`big-${Math.random()}`));
        await raw.until('CONNACK', () => conn.packets.some((p) => p.cmd === 'connack') || conn.isClosed(), 5_000);
        expect(conn.packets.find((p) => p.cmd === 'connack')).toMatchObject({ returnCode: 0 });
      }
      const started = performance.now();
      conn.write(header);
      const filler = Buffer.alloc(64 * 1024, 0x61);
      let sent = 0;
      while (!conn.isClosed() && sent < 150 * MB && performance.now() - started < 10_000) {
        if (conn.socket.write(filler)) sent += filler.length;
        else await Promise.race([new Promise((r) => conn.socket.once('drain', r)), conn.closed, new Promise((r) => setTimeout(r, 100))]);
      }
      const ms = performance.now() - started;
      conn.socket.destroy();
      await conn.closed;
      return { sent, ms, connacked: conn.packets.some((p) => p.cmd === 'connack') };
    };
    const publish200MB = concat(Uint8Array.from([0x30]), raw.varint(200 * MB), raw.str('devices/fuzz/telemetry'));
    const connect100MB = concat(Uint8Array.from([0x10]), raw.varint(100 * MB), raw.str('MQTT'), Uint8Array.from([4, 0xc2, 0, 30]), raw.str('big'));
    const largest = concat(Uint8Array.from([0x30]), Uint8Array.from([0xff, 0xff, 0xff, 0x7f]), raw.str('devices/fuzz/telemetry'));

    const results = await Promise.all([
      flood(publish200MB, true),
      flood(connect100MB, false),
      flood(largest, true),
      // and many at once
      ...Array.from({ length: 20 }, (_, i) => flood(i % 2 ? publish200MB : connect100MB, i % 2 === 1)),
    ]);
    for (const r of results) {
      expect(r.sent, 'bytes the connection took before the gateway closed it').toBeLessThan(20 * MB);
      expect(r.ms).toBeLessThan(8_000);
    }
    expect(results[1]!.connacked).toBe(false);
    count('oversize.cases', results.length);

    // A payload over mqtt.maxPayloadBytes in a packet under the packet limit: no PUBACK, closed.
    const over = await raw.probe(gw.port, [validConnect('over'), raw.publish('devices/fuzz/telemetry', Buffer.alloc(MAX_PAYLOAD + 1, 0x62), { qos: 1 })], { idleMs: 3_000, maxMs: 5_000 });
    expect(over.closedByServer).toBe(true);
    expect(over.packets.some((p) => p.cmd === 'puback')).toBe(false);
    // Exactly at the limit: stored.
    const at = await raw.loggedIn(gw.port, validConnect('at'));
    at.write(raw.publish('devices/fuzz/telemetry', Buffer.alloc(MAX_PAYLOAD, 0x62), { qos: 1 }));
    await raw.until('PUBACK of a publish at the payload limit', () => at.packets.some((p) => p.cmd === 'puback') || at.isClosed(), 10_000);
    expect(at.packets.some((p) => p.cmd === 'puback')).toBe(true);
    at.socket.destroy();
    ackedByAttackers.set(Buffer.alloc(MAX_PAYLOAD, 0x62).toString(), 'fuzz');

    await gw.waitForLine((l) => l.code === 'EB_ERR_INGRESS_PAYLOAD_TOO_LARGE', 5_000);
    assertAlive();
    expect(liveError).toBeUndefined();
    await memoryNote('after this attack');
  });

  it('closes silent, slow and half-open connections', async () => {
    assertAlive();
    const start = async () => {
      const conn = raw.rawConnection(gw.port);
      if (!(await conn.ready)) throw new Error('cannot connect to the gateway');
      return { conn, at: performance.now() };
    };
    const connacked = (conn: raw.RawConnection) => raw.until('CONNACK', () => conn.packets.some((p) => p.cmd === 'connack') || conn.isClosed(), 5_000);
    const closedAfter = async (what: string, c: { conn: raw.RawConnection; at: number }, deadlineMs: number) => {
      await Promise.race([c.conn.closed, new Promise((r) => setTimeout(r, deadlineMs))]);
      if (!c.conn.isClosed()) {
        c.conn.socket.destroy();
        throw new Error(`${what}: still open after ${deadlineMs} ms`);
      }
      return c.conn.closedAt()! - c.at;
    };

    const cases = await Promise.all([
      // 1. connects and sends nothing: closed after mqtt.limits.connectTimeoutMs
      (async () => {
        const c = await start();
        const ms = await closedAfter('a silent connection', c, CONNECT_TIMEOUT_MS + 3_000);
        expect(ms).toBeGreaterThanOrEqual(CONNECT_TIMEOUT_MS * 0.9);
        return ['silent', ms] as const;
      })(),
      // 2. a CONNECT one byte every 200 ms (slowloris): closed at the connect timeout, never logged in
      (async () => {
        const c = await start();
        const bytes = validConnect('slowloris');
        let i = 0;
        const timer = setInterval(() => (i < bytes.length ? c.conn.write(bytes.subarray(i, ++i)) : undefined), 200);
        try {
          const ms = await closedAfter('a slowloris CONNECT', c, CONNECT_TIMEOUT_MS + 3_000);
          expect(i).toBeLessThan(bytes.length);
          expect(c.conn.packets).toEqual([]);
          return ['slowloris', ms] as const;
        } finally {
          clearInterval(timer);
        }
      })(),
      // 3. logged in with keepalive 2 s, then silent (the client vanished): closed after 1.5 x keepalive
      (async () => {
        const c = await start();
        c.conn.write(validConnect('half-open', FUZZ, 2));
        await connacked(c.conn);
        const since = { conn: c.conn, at: performance.now() };
        const ms = await closedAfter('a silent logged-in client (keepalive 2 s)', since, 8_000);
        expect(ms).toBeGreaterThanOrEqual(2_500);
        return ['half-open', ms] as const;
      })(),
      // 4. logged in with keepalive 2 s, then a PUBLISH one byte every 200 ms: no packet completes, closed by keepalive
      (async () => {
        const c = await start();
        c.conn.write(validConnect('slow-publish', FUZZ, 2));
        await connacked(c.conn);
        const since = { conn: c.conn, at: performance.now() };
        const bytes = raw.publish('devices/fuzz/telemetry', 'x'.repeat(200), { qos: 1 });
        let i = 0;
        const timer = setInterval(() => (i < bytes.length ? c.conn.write(bytes.subarray(i, ++i)) : undefined), 200);
        try {
          const ms = await closedAfter('a logged-in client trickling a PUBLISH', since, 8_000);
          expect(c.conn.packets.some((p) => p.cmd === 'puback')).toBe(false);
          return ['slow-publish', ms] as const;
        } finally {
          clearInterval(timer);
        }
      })(),
      // 5. logged in, then half-closes (FIN) while still reading: the gateway closes its side
      (async () => {
        const conn = raw.rawConnection(gw.port);
        if (!(await conn.ready)) throw new Error('cannot connect to the gateway');
        conn.write(validConnect('half-closed', FUZZ, 0));
        await connacked(conn);
        const since = { conn, at: performance.now() };
        conn.socket.end();
        const ms = await closedAfter('a half-closed client', since, 5_000);
        return ['half-closed', ms] as const;
      })(),
      // 6. a partial CONNECT (a header announcing more than is sent) before login: closed at the connect timeout
      (async () => {
        const c = await start();
        c.conn.write(validConnect('partial').subarray(0, 10));
        const ms = await closedAfter('a partial CONNECT', c, CONNECT_TIMEOUT_MS + 3_000);
        return ['partial-connect', ms] as const;
      })(),
    ]);
    console.info(`slow connections closed after (ms): ${cases.map(([k, ms]) => `${k}=${Math.round(ms)}`).join(' ')}`);
    count('slow.cases', cases.length);
    assertAlive();
    expect(liveError).toBeUndefined();
    await memoryNote('after this attack');
  });

  it(`refuses connections beyond mqtt.limits.maxConnections (${MAX_CONNECTIONS}) in a flood of 1,000, and recovers`, async () => {
    assertAlive();
    const N = 1_000;
    const ackedAtStart = liveAcked;
    const conns = Array.from({ length: N }, (_, i) => {
      const conn = raw.rawConnection(gw.port);
      conn.socket.once('connect', () => conn.write(validConnect(`flood-${i}`, FUZZ, 0)));
      return conn;
    });
    const settled = (c: raw.RawConnection) => c.isClosed() || c.packets.some((p) => p.cmd === 'connack');
    await raw.until('every flood connection to be answered or closed', () => conns.every(settled), 60_000, 50);
    const connacked = conns.filter((c) => c.packets.some((p) => p.cmd === 'connack' && p.returnCode === 0) && !c.isClosed()).length;
    const refused = conns.filter((c) => !c.packets.some((p) => p.cmd === 'connack')).length;
    console.info(`flood: ${connacked} logged in, ${refused} refused of ${N}`);
    expect(connacked).toBeLessThanOrEqual(MAX_CONNECTIONS);
    expect(connacked).toBeGreaterThan(MAX_CONNECTIONS / 2);
    expect(refused).toBeGreaterThanOrEqual(N - MAX_CONNECTIONS);
    assertAlive();
    // The device on its existing connection was not disturbed by the flood.
    await raw.until('the device to publish while the flood holds every connection', () => liveAcked >= ackedAtStart + 3 || liveError !== undefined, 15_000);
    expect(liveError).toBeUndefined();
    await gw.waitForLine((l) => l.code === 'EB_ERR_INGRESS_LIMIT', 5_000);
    const status = await admin('/status');
    const mqttCounters = status.body.mqtt as Record<string, number> | undefined;
    if (mqttCounters && 'connectionsRefused' in mqttCounters) expect(mqttCounters.connectionsRefused).toBeGreaterThanOrEqual(refused);

    for (const c of conns) c.socket.destroy();
    await Promise.all(conns.map((c) => c.closed));
    count('flood.connections', N);
    // Slots come free as the gateway sees the connections close.
    await raw.until(
      'a new client to be let in after the flood',
      async () => {
        const r = await raw.probe(gw.port, [validConnect('after-flood')], { done: (ps) => ps.some((p) => p.cmd === 'connack') });
        return r.packets.some((p) => p.cmd === 'connack' && p.returnCode === 0);
      },
      15_000,
      200,
    );
    await memoryNote('after this attack');
  });

  it('afterwards: alive and healthy, memory bounded, every acknowledged reading in Kafka exactly once and in order, nothing under a foreign identity', async () => {
    assertAlive();
    liveStop = true;
    await liveLoop;
    expect(liveError).toBeUndefined();
    expect(liveAcked).toBeGreaterThan(10);
    await live.endAsync();

    // A fresh device after the attack.
    const AFTER = 20;
    const after = await mqtt.connectAsync(gw.url, { ...deviceOptions, clientId: 'dev-1-after' });
    for (let i = 1; i <= AFTER; i++) await after.publishAsync('devices/dev-1/telemetry', reading('dev-1', 'after', i), { qos: 1 });
    await after.endAsync();
    expect(await admin('/healthz')).toMatchObject({ status: 200 });

    // Memory: RSS once it stops growing, against the RSS before the attack.
    if (sampler) clearInterval(sampler);
    let last = raw.rssBytes(pid);
    await raw.until(
      'RSS to settle',
      () => {
        const now = raw.rssBytes(pid);
        const stable = Math.abs(now - last) < 1024 * 1024;
        last = now;
        return stable;
      },
      10_000,
      500,
    );
    const rssAfter = raw.rssBytes(pid);
    rssPeak = Math.max(rssPeak, rssAfter);
    console.info(`gateway RSS: before ${MiB(rssBefore)}, peak ${MiB(rssPeak)}, after ${MiB(rssAfter)}`);
    expect(rssAfter - rssBefore, 'RSS growth after the attack').toBeLessThan(150 * 1024 * 1024);
    expect(rssPeak - rssBefore, 'RSS growth at the peak of the attack').toBeLessThan(200 * 1024 * 1024);

    // Everything the log holds reaches Kafka.
    let lastOffset = 0;
    await raw.until(
      'the forwarder to catch up',
      async () => {
        const s = (await admin('/status')).body;
        lastOffset = s.lastOffset as number;
        return s.backlog === 0;
      },
      60_000,
      200,
    );
    const records = await consumeAll(brokers, topic, { expected: lastOffset });
    expect(records).toHaveLength(lastOffset);

    // Every record is keyed by an identity that logged in with its password.
    const foreign = records.filter((r) => r.key !== 'dev-1' && !ATTACKERS.includes(r.key));
    expect(foreign.map((r) => r.key.slice(0, 40))).toEqual([]);
    // The victim's readings: before, during and after, each once, in order, and nothing else under its key.
    const victim = records.filter((r) => r.key === 'dev-1').map((r) => r.value.toString());
    const expected = [
      ...Array.from({ length: BEFORE }, (_, i) => reading('dev-1', 'before', i + 1)),
      ...Array.from({ length: liveAcked }, (_, i) => reading('dev-1', 'during', i + 1)),
      ...Array.from({ length: AFTER }, (_, i) => reading('dev-1', 'after', i + 1)),
    ];
    expect(victim).toEqual(expected);

    // Every publish acknowledged to the device-ID property's clients is there once, under its publisher.
    const byPayload = new Map<string, string[]>();
    for (const r of records) byPayload.set(r.value.toString(), [...(byPayload.get(r.value.toString()) ?? []), r.key]);
    for (const [payload, who] of ackedByAttackers) expect(byPayload.get(payload), payload.slice(0, 60)).toEqual([who]);
    count('kafka.records', records.length);
    count('kafka.attackerRecords', records.length - victim.length);

    // No error-level log lines.
    expect(gw.lines.filter((l) => typeof l.level === 'number' && l.level >= 50)).toEqual([]);
  });
});
