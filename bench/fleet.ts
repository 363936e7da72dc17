// npm run bench:fleet [-- --brokers=h:p,...] [--seconds=10] [--rates=1,10,100,1000] [--gateways=20]
//                     [--outages=30,120] [--legacy-records=114000] [--legacy-per-txn=10]
//                     [--only=tx,outage,legacy,cost] [--quick]
//
// Issue 12's fleet measurements, behind docs/scaling.md: N simulated gateways in one process, each
// a real CommitLog + LogReader in its own temp dir, a real KafkaSink (own gateway id, own
// transactional id, own checkpoint group) and a real Forwarder, against a real Kafka (a 3-node
// KRaft cluster started here, replication 3, unless --brokers names one). MQTT is skipped: records
// are appended to the log directly and the forwarder is notified, as ingest does.
//
//   tx      transactions/s per gateway and append->commit latency vs ingest rate, adaptive commit
//           interval (defaults) vs the old behaviour (maxCommitDelayMs = commitIntervalMs = 100)
//   outage  one gateway away while the others forward: its reconnect (KafkaSink.connect: fence,
//           checkpoint read, probe) after outages of two lengths
//   legacy  the old design's recovery read: the checkpoint records N-1 busy old-version gateways
//           write into the 1-partition checkpoint topic during a 10-minute outage, then
//           readLegacyCheckpoint (reached through a KafkaSink whose group has no offset) from the
//           away gateway's last checkpoint record up to its probe
//   cost    broker-side: transactional ids, producer state and offsets in the brokers' heap (jmap),
//           checkpoint groups in __consumer_offsets, bytes per record upstream (request sizes) and
//           stored (log segments) with compression none / lz4 / zstd
//
// Writes bench/results/fleet-latest.json and fleet-latest.md and prints the Markdown.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { cpus, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import type { Admin, Kafka, Producer } from 'kafkajs';
import { pino } from 'pino';
import type { Compression } from '../src/forward/compression.js';
import { Forwarder, type ForwardedBatch, type ForwarderCounters } from '../src/forward/forwarder.js';
import { createKafka } from '../src/forward/kafka-client.js';
import { checkpointGroupOf, KafkaSink } from '../src/forward/kafka-sink.js';
import { CommitLog, type LogEntry } from '../src/log/commit-log.js';
import { LogReader } from '../src/log/log-reader.js';
import { log, removeTempDirs, ROOT, tempDir } from './lib/util.js';

interface Args {
  brokers: string[] | undefined;
  /** With --brokers: the base dir of a startKafkaCluster cluster (node-N/ data dirs), for segment sizes and jmap. */
  clusterDir: string | undefined;
  seconds: number;
  rates: number[];
  gateways: number;
  outages: number[];
  outageRate: number;
  legacyRecords: number;
  legacyPerTxn: number;
  legacyPerBatch: number;
  legacySample: number;
  only: Set<string>;
  devices: number;
  /** Results go to bench/results/fleet-<out>.json and .md. */
  out: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    brokers: undefined,
    clusterDir: undefined,
    seconds: 10,
    rates: [1, 10, 100, 1000],
    gateways: 20,
    outages: [30, 120],
    outageRate: 100,
    legacyRecords: 0,
    legacyPerTxn: 500,
    legacyPerBatch: 50,
    legacySample: 2000,
    only: new Set(['tx', 'outage', 'legacy', 'cost']),
    devices: 100,
    out: 'latest',
  };
  let legacySet = false;
  for (const arg of argv) {
    const [k, v = ''] = arg.split('=', 2) as [string, string?];
    const nums = (): number[] => v.split(',').map(Number).filter((n) => Number.isFinite(n) && n > 0);
    if (k === '--brokers') a.brokers = v.split(',');
    else if (k === '--cluster-dir') a.clusterDir = resolve(v);
    else if (k === '--seconds') a.seconds = Number(v);
    else if (k === '--rates') a.rates = nums();
    else if (k === '--gateways') a.gateways = Number(v);
    else if (k === '--outages') a.outages = nums();
    else if (k === '--outage-rate') a.outageRate = Number(v);
    else if (k === '--legacy-records') ((a.legacyRecords = Number(v)), (legacySet = true));
    else if (k === '--legacy-per-txn') a.legacyPerTxn = Number(v);
    else if (k === '--legacy-per-batch') a.legacyPerBatch = Number(v);
    else if (k === '--legacy-sample') a.legacySample = Number(v);
    else if (k === '--out') a.out = v;
    else if (k === '--only') a.only = new Set(v.split(','));
    else if (k === '--quick') ((a.seconds = 5), (a.rates = [1, 100]), (a.outages = [5, 10]), (a.legacyRecords = 5000), (a.legacySample = 200), (legacySet = true));
    else if (k === '--help' || k === '-h') {
      process.stdout.write('usage: npm run bench:fleet [-- --brokers=h:p,...] [--seconds=10] [--rates=1,10,100,1000] [--gateways=20] [--outages=30,120] [--outage-rate=100] [--legacy-records=N] [--legacy-per-txn=10] [--only=tx,outage,legacy,cost] [--out=latest] [--quick]\n');
      process.exit(0);
    } else throw new Error(`unknown argument ${arg}`);
  }
  // What N-1 old-version gateways forwarding at rate write in 10 minutes: one checkpoint record
  // per transaction, 10 transactions/s each (commitIntervalMs 100).
  if (!legacySet) a.legacyRecords = (a.gateways - 1) * 10 * 600;
  return a;
}

const silent = pino({ level: 'silent' });
const DATA_TOPIC = 'fleet.telemetry';
const CHECKPOINT_TOPIC = 'edgebridge.checkpoints';

interface Cluster {
  brokers: string[];
  stop(): Promise<void>;
}

/** Request counts and bytes by API name, from kafkajs's REQUEST instrumentation events. */
class RequestMeter {
  readonly count = new Map<string, number>();
  readonly bytes = new Map<string, number>();
  on = true;
  add(apiName: string, size: number): void {
    if (!this.on) return;
    this.count.set(apiName, (this.count.get(apiName) ?? 0) + 1);
    this.bytes.set(apiName, (this.bytes.get(apiName) ?? 0) + size);
  }
  reset(): void {
    this.count.clear();
    this.bytes.clear();
  }
  total(names?: string[]): { count: number; bytes: number } {
    let count = 0;
    let bytes = 0;
    for (const [k, n] of this.count) if (!names || names.includes(k)) ((count += n), (bytes += this.bytes.get(k) ?? 0));
    return { count, bytes };
  }
  snapshot(): Record<string, { count: number; bytes: number }> {
    return Object.fromEntries([...this.count].map(([k, n]) => [k, { count: n, bytes: this.bytes.get(k) ?? 0 }]));
  }
  /** For a meter fed by kafkajs's REQUEST events: their size is the response's. */
  responses(): Record<string, { count: number; responseBytes: number }> {
    return Object.fromEntries([...this.count].map(([k, n]) => [k, { count: n, responseBytes: this.bytes.get(k) ?? 0 }]));
  }
}

/** Kafka API names by key, for the requests counted on the wire. */
const API_NAMES: Record<number, string> = {
  0: 'Produce', 1: 'Fetch', 2: 'ListOffsets', 3: 'Metadata', 8: 'OffsetCommit', 9: 'OffsetFetch', 10: 'FindCoordinator',
  11: 'JoinGroup', 12: 'Heartbeat', 13: 'LeaveGroup', 14: 'SyncGroup', 15: 'DescribeGroups', 16: 'ListGroups',
  18: 'ApiVersions', 19: 'CreateTopics', 22: 'InitProducerId', 24: 'AddPartitionsToTxn', 25: 'AddOffsetsToTxn',
  26: 'EndTxn', 28: 'TxnOffsetCommit', 42: 'DeleteGroups',
};

/**
 * Bytes of every request this process writes to Kafka (kafkajs writes each request as one buffer:
 * int32 size, int16 api key, ...), by API: what goes upstream, before TCP/IP headers. kafkajs's
 * own REQUEST events carry the *response* size, so requests are counted here, on the sockets.
 */
const wire = new RequestMeter();
wire.on = false;
{
  const write = Socket.prototype.write as (...a: unknown[]) => boolean;
  Socket.prototype.write = function (this: Socket, ...a: unknown[]): boolean {
    const chunk = a[0];
    if (Buffer.isBuffer(chunk) && chunk.length >= 6 && chunk.readInt32BE(0) === chunk.length - 4) {
      const key = chunk.readInt16BE(4);
      wire.add(API_NAMES[key] ?? `api-${key}`, chunk.length);
    }
    return write.apply(this, a);
  } as typeof Socket.prototype.write;
}

type RequestEvent = { payload: { apiName: string; size: number } };

/** A kafkajs client whose producers and admins report their requests to `meter`. */
function meteredKafka(brokers: string[], clientId: string, meter: RequestMeter): Kafka {
  const kafka = createKafka({ brokers, clientId, logger: silent, requestTimeoutMs: 30_000 });
  const producer = kafka.producer.bind(kafka);
  const admin = kafka.admin.bind(kafka);
  const consumer = kafka.consumer.bind(kafka);
  const k = kafka as { producer: Kafka['producer']; admin: Kafka['admin']; consumer: Kafka['consumer'] };
  k.producer = (config) => {
    const p = producer(config);
    p.on(p.events.REQUEST, (e: RequestEvent) => meter.add(e.payload.apiName, e.payload.size));
    return p;
  };
  k.admin = (config) => {
    const a = admin(config);
    a.on(a.events.REQUEST, (e: RequestEvent) => meter.add(e.payload.apiName, e.payload.size));
    return a;
  };
  k.consumer = (config) => {
    const c = consumer(config);
    c.on(c.events.REQUEST, (e: RequestEvent) => meter.add(e.payload.apiName, e.payload.size));
    return c;
  };
  return kafka;
}

/** A typical ~100-byte JSON reading. */
function reading(device: string, seq: number, now: number): Buffer {
  const t = (20 + (seq % 70) / 10).toFixed(2);
  return Buffer.from(JSON.stringify({ deviceId: device, seq, ts: now, temp: Number(t), hum: 40 + (seq % 23), bat: 3.7, fw: '2.4.1' }));
}

interface SimOptions {
  id: string;
  brokers: string[];
  topic: string;
  maxCommitDelayMs: number;
  compression: Compression;
  devices: number;
  partitions: number;
  replication: number;
}

/** One simulated gateway: commit log, log reader, Kafka sink and forwarder, as the gateway wires them. */
class SimGateway {
  readonly meter = new RequestMeter();
  readonly dir = tempDir('fleet');
  readonly log = new CommitLog({ dir: this.dir, synchronous: 'normal' });
  readonly reader = new LogReader({ dir: this.dir, synchronous: 'normal' });
  readonly kafka: Kafka;
  sink: KafkaSink;
  fwd: Forwarder;
  /** [last offset of an append, its time, records in it], oldest first, until committed. */
  private pending: [number, number, number][] = [];
  latencies: number[] = [];
  /** Seconds of each committed transaction that carried records (read from the log to commit). */
  txSeconds: number[] = [];
  counters = { transactions: 0, forwarded: 0, failed: 0 };
  private seq = 0;
  private credit = Math.random();
  measuring = false;

  constructor(readonly o: SimOptions) {
    this.kafka = meteredKafka(o.brokers, `fleet-${o.id}`, this.meter);
    this.sink = this.newSink();
    this.fwd = this.newForwarder();
  }

  newSink(checkpointTopic = CHECKPOINT_TOPIC): KafkaSink {
    return new KafkaSink({
      kafka: this.kafka,
      gatewayId: this.o.id,
      logId: this.log.logId,
      writer: this.log.epoch.id,
      topics: [this.o.topic],
      checkpointTopic,
      topicDefaults: { partitions: this.o.partitions, replicationFactor: this.o.replication },
      transactionTimeoutMs: 60_000,
      compression: this.o.compression,
      checkpointReadTimeoutMs: 900_000,
    });
  }

  newForwarder(): Forwarder {
    return new Forwarder(this.reader, this.sink, {
      batchMaxRecords: 5000,
      batchMaxBytes: 900_000,
      commitIntervalMs: 100,
      maxCommitDelayMs: this.o.maxCommitDelayMs,
      commitMinRecords: 100,
      retry: { initialMs: 100, maxMs: 2000 },
      logger: silent,
      deadLetter: false,
      onProgress: (delta, batch) => this.progress(delta, batch),
    });
  }

  private progress(delta: ForwarderCounters, batch: ForwardedBatch | undefined): void {
    if (this.measuring) {
      if (batch) this.txSeconds.push(batch.seconds);
      this.counters.transactions += delta.transactions;
      this.counters.forwarded += delta.forwarded;
      this.counters.failed += delta.transactionsFailed;
    }
    const pos = this.fwd.position;
    const now = performance.now();
    while (this.pending.length > 0 && this.pending[0]![0] <= pos) {
      const [, at, n] = this.pending.shift()!;
      if (this.measuring) for (let i = 0; i < n; i++) this.latencies.push(now - at);
    }
  }

  /** Appends what `rate` msg/s owes for `dtMs`, round-robin over the devices, and notifies the forwarder. */
  tick(rate: number, dtMs: number): void {
    this.credit += (rate * dtMs) / 1000;
    const n = Math.floor(this.credit);
    if (n <= 0) return;
    this.credit -= n;
    const now = Date.now();
    const entries: LogEntry[] = [];
    for (let i = 0; i < n; i++) {
      const s = this.seq++;
      const device = `${this.o.id}-d${String(s % this.o.devices).padStart(3, '0')}`;
      entries.push({ receivedAt: now, route: 'devices/{deviceId}/telemetry', kafkaTopic: this.o.topic, deviceId: device, mqttTopic: `devices/${device}/telemetry`, qos: 1, payload: reading(device, s, now) });
    }
    const results = this.log.append(entries, now);
    const last = results.at(-1);
    if (typeof last !== 'number') throw new Error(`append returned ${String(last)}`);
    this.pending.push([last, performance.now(), n]);
    this.fwd.notify(last);
  }

  get end(): number {
    return this.reader.end();
  }

  resetMeasure(): void {
    this.counters = { transactions: 0, forwarded: 0, failed: 0 };
    this.latencies = [];
    this.txSeconds = [];
  }

  async close(): Promise<void> {
    await this.fwd.close(5000).catch(() => undefined);
    await this.sink.close().catch(() => undefined);
    this.reader.close();
    this.log.close();
  }
}

/** Broker process ids of the cluster under `baseDir` (from ps; read-only). */
let brokerPids: number[] = [];
function findBrokerPids(baseDir: string | undefined): number[] {
  if (!baseDir) return [];
  try {
    const ps = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
    return ps
      .split('\n')
      .map((l) => /^\s*(\d+)\s+(.*)$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null && m[2]!.includes('kafka.Kafka') && m[2]!.includes(baseDir))
      .map((m) => Number(m[1]));
  } catch {
    return [];
  }
}

/** CPU seconds used so far by this process and by the brokers (from /proc, when we know their pids). */
function cpuNow(): { bench: number; brokers: number } {
  const u = process.cpuUsage();
  let brokers = 0;
  for (const pid of brokerPids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      brokers += (Number(f[11]) + Number(f[12])) / 100; // utime + stime, in clock ticks (USER_HZ 100)
    } catch {
      // gone
    }
  }
  return { bench: (u.user + u.system) / 1e6, brokers };
}

/** CPU cores busy on average between `from` and now, over `seconds`. */
function coresSince(from: { bench: number; brokers: number }, seconds: number): { bench: number; brokers: number } {
  const now = cpuNow();
  return { bench: r2((now.bench - from.bench) / seconds), brokers: r2((now.brokers - from.brokers) / seconds) };
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

const r1 = (x: number): number => Math.round(x * 10) / 10;
const r2 = (x: number): number => Math.round(x * 100) / 100;

/** Drives appends on every gateway of `gws` at `rate` msg/s (10 ms ticks) until `stop` is set. */
function drive(gws: SimGateway[], rate: () => number): { stop: () => Promise<void> } {
  let running = true;
  const loop = (async () => {
    let last = performance.now();
    while (running) {
      await delay(10);
      const now = performance.now();
      const dt = now - last;
      last = now;
      for (const g of gws) g.tick(rate(), dt);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

async function drained(gws: SimGateway[], timeoutMs: number): Promise<boolean> {
  const until = performance.now() + timeoutMs;
  while (performance.now() < until) {
    if (gws.every((g) => g.fwd.position >= g.end)) return true;
    await delay(100);
  }
  return false;
}

async function startFleet(n: number, brokers: string[], prefix: string, maxCommitDelayMs: number, compression: Compression = 'none', topic = DATA_TOPIC, devices = 100): Promise<SimGateway[]> {
  const gws = Array.from({ length: n }, (_, i) => new SimGateway({ id: `${prefix}-${String(i).padStart(2, '0')}`, brokers, topic, maxCommitDelayMs, compression, devices, partitions: 3, replication: Math.min(3, brokers.length) }));
  // the first one creates the topics; the others then only learn them
  gws[0]!.fwd.start();
  gws[0]!.tick(1, 1000);
  if (!(await drained(gws.slice(0, 1), 120_000))) throw new Error(`${gws[0]!.fwd.state}: ${gws[0]!.fwd.lastErrorMessage}`);
  for (const g of gws.slice(1)) g.fwd.start();
  for (const g of gws.slice(1)) g.tick(1, 1000);
  if (!(await drained(gws, 180_000))) throw new Error(`fleet did not start: ${gws.map((g) => g.fwd.state).join(',')}`);
  return gws;
}

// --- 1. transactions/s vs ingest rate ---------------------------------------------------------

interface TxRow {
  mode: 'adaptive' | 'old';
  ratePerGateway: number;
  gateways: number;
  seconds: number;
  recordsPerGatewayPerS: number;
  txPerGatewayPerS: number;
  recordsPerTx: number;
  latencyMedianMs: number;
  latencyP99Ms: number;
  /** Median duration of a transaction (reading its batch from the log to Kafka's commit). */
  txMedianMs: number;
  failedTx: number;
  /** Bytes of all requests the gateways sent, per record (Produce + transaction + offset requests). */
  upstreamBytesPerRecord: number;
  produceBytesPerRecord: number;
  requestsPerTx: number;
  requestsPerTxByApi: Record<string, number>;
  /** CPU cores this process (all the simulated gateways) and the 3 brokers kept busy on average. */
  cpuCoresBench: number;
  cpuCoresBrokers: number;
  loadavg1: number;
  caughtUp: boolean;
}

async function measureTx(args: Args, brokers: string[]): Promise<TxRow[]> {
  const rows: TxRow[] = [];
  // Both fleets up at once, driven in turn at each rate (adaptive, then old, then the next rate):
  // the machine's load drifts, and back-to-back pairs compare under about the same load.
  const fleets = {
    adaptive: await startFleet(args.gateways, brokers, 'fleet-adaptive', 1000),
    old: await startFleet(args.gateways, brokers, 'fleet-old', 100),
  };
  try {
    for (const rate of args.rates) {
      for (const mode of ['adaptive', 'old'] as const) {
        const gws = fleets[mode];
        log(`tx: ${mode}, ${rate} msg/s per gateway x ${gws.length}`);
        const d = drive(gws, () => rate);
        await delay(3000); // warm up
        for (const g of gws) (g.resetMeasure(), (g.measuring = true));
        wire.reset();
        wire.on = true;
        const cpu0 = cpuNow();
        const t0 = performance.now();
        await delay(args.seconds * 1000);
        const seconds = (performance.now() - t0) / 1000;
        const cores = coresSince(cpu0, seconds);
        for (const g of gws) g.measuring = false;
        wire.on = false;
        await d.stop();
        const caughtUp = await drained(gws, 60_000);
        const tx = gws.reduce((s, g) => s + g.counters.transactions, 0);
        const recs = gws.reduce((s, g) => s + g.counters.forwarded, 0);
        const lat = gws.flatMap((g) => g.latencies).sort((a, b) => a - b);
        const up = wire.total().bytes;
        const reqs = wire.total().count;
        const produce = wire.total(['Produce']).bytes;
        const perTx = Object.fromEntries(Object.entries(wire.snapshot()).map(([k, v]) => [k, r2(v.count / Math.max(1, tx))]));
        const row: TxRow = {
          mode,
          ratePerGateway: rate,
          gateways: gws.length,
          seconds: r1(seconds),
          recordsPerGatewayPerS: r1(recs / gws.length / seconds),
          txPerGatewayPerS: r2(tx / gws.length / seconds),
          recordsPerTx: r1(recs / Math.max(1, tx)),
          latencyMedianMs: Math.round(quantile(lat, 0.5)),
          latencyP99Ms: Math.round(quantile(lat, 0.99)),
          txMedianMs: Math.round(1000 * quantile(gws.flatMap((g) => g.txSeconds).sort((a, b) => a - b), 0.5)),
          failedTx: gws.reduce((s, g) => s + g.counters.failed, 0),
          upstreamBytesPerRecord: r1(up / Math.max(1, recs)),
          produceBytesPerRecord: r1(produce / Math.max(1, recs)),
          requestsPerTx: r1(reqs / Math.max(1, tx)),
          requestsPerTxByApi: perTx,
          cpuCoresBench: cores.bench,
          cpuCoresBrokers: cores.brokers,
          loadavg1: r1(loadavg()[0]!),
          caughtUp,
        };
        log(`   ${JSON.stringify(row)}`);
        rows.push(row);
      }
    }
  } finally {
    await Promise.all([...fleets.adaptive, ...fleets.old].map((g) => g.close()));
  }
  return rows;
}

// --- 2a. recovery after an outage, new design ---------------------------------------------------

interface OutageRow {
  outageSeconds: number;
  othersForwarding: number;
  othersRatePerGateway: number;
  othersTransactionsDuringOutage: number;
  /** KafkaSink.connect of a fresh sink (ensure topics, InitProducerId fence, OffsetFetch, probe commit). */
  connectMs: number;
  /** The checkpoint read itself: one OffsetFetch of the gateway's group (timed alone, right after). */
  offsetFetchMs: number;
  /** Requests of the connect (kafkajs events; bytes are the responses'). */
  requests: Record<string, { count: number; responseBytes: number }>;
  /** From the new forwarder's start to its position reaching the log end (the outage's backlog). */
  backlogRecords: number;
  catchUpMs: number;
}

async function measureOutage(args: Args, brokers: string[]): Promise<OutageRow[]> {
  const rows: OutageRow[] = [];
  const gws = await startFleet(args.gateways, brokers, 'fleet-outage', 1000);
  const [away, ...others] = gws as [SimGateway, ...SimGateway[]];
  const admin = meteredKafka(brokers, 'fleet-admin', new RequestMeter()).admin();
  await admin.connect();
  try {
    for (const outage of args.outages) {
      const d = drive(others, () => args.outageRate);
      const awayDrive = drive([away], () => args.outageRate); // ingest goes on into its log
      await delay(2000);
      log(`outage: ${away.fwd.position} forwarded; ${away.sink.transactionalId} away for ${outage} s while ${others.length} others forward at ${args.outageRate} msg/s`);
      await away.fwd.close(5000);
      await away.sink.close();
      for (const g of others) (g.resetMeasure(), (g.measuring = true));
      await delay(outage * 1000);
      const othersTx = others.reduce((s, g) => s + g.counters.transactions, 0);
      // The gateway comes back as a restart would: a new sink; time its connect.
      away.sink = away.newSink();
      away.meter.reset();
      const hint = away.reader.checkpointHint();
      const t0 = performance.now();
      const result = await away.sink.connect({ ...(hint > 0 ? { hint } : {}), checking: false });
      const connectMs = performance.now() - t0;
      const requests = away.meter.responses();
      const t1 = performance.now();
      const [topic] = await admin.fetchOffsets({ groupId: checkpointGroupOf(away.o.id), topics: [CHECKPOINT_TOPIC] });
      const offsetFetchMs = performance.now() - t1;
      if (!topic?.partitions.some((p) => Number(p.offset) >= 0)) throw new Error('the away gateway has no checkpoint in its group');
      await awayDrive.stop();
      const backlog = away.end - (result.checkpoint?.offset ?? 0);
      await away.sink.close(); // the forwarder connects it again itself
      away.fwd = away.newForwarder();
      const t2 = performance.now();
      away.fwd.start();
      away.fwd.notify(away.end);
      const ok = await drained([away], 300_000);
      const catchUpMs = performance.now() - t2;
      await d.stop();
      for (const g of others) g.measuring = false;
      const row: OutageRow = {
        outageSeconds: outage,
        othersForwarding: others.length,
        othersRatePerGateway: args.outageRate,
        othersTransactionsDuringOutage: othersTx,
        connectMs: Math.round(connectMs),
        offsetFetchMs: Math.round(offsetFetchMs),
        requests,
        backlogRecords: backlog,
        catchUpMs: ok ? Math.round(catchUpMs) : -1,
      };
      log(`   ${JSON.stringify(row)}`);
      rows.push(row);
    }
  } finally {
    await admin.disconnect();
    await Promise.all(gws.map((g) => g.close()));
  }
  return rows;
}

// --- 2b. recovery after an outage, old design (checkpoint records in one shared partition) --------

interface LegacyTopic {
  topic: string;
  /** Checkpoint records of the other gateways. */
  records: number;
  recordsPerBatch: number;
  recordsPerTransaction: number;
  commitMarkers: number;
  generationSeconds: number;
  /** Offsets in the partition (records, markers, the away gateways' own records). */
  offsets: number;
  /** Bytes of the partition's segments on one broker (undefined with --brokers). */
  bytes: number | undefined;
}

interface LegacyRead {
  what: string;
  topic: string;
  hintOffset: number;
  /** Offsets from the hint to the probe: what the read goes through. */
  offsetsRead: number;
  recordsRead: number;
  /** Fetch response bytes of the read (kafkajs events). */
  fetchedBytes: number;
  /** KafkaSink.connect: fence, empty group, probe record, fresh consumer group, read to the probe, group offset. */
  connectSeconds: number;
  foundOwnCheckpoint: boolean;
  requests: Record<string, { count: number; responseBytes: number }>;
}

interface LegacyResult {
  simulatedGateways: number;
  /** What N-1 old gateways at 10 tx/s write in 600 s: one record per transaction, each its own batch and marker. */
  oldFleetRecords: number;
  topics: LegacyTopic[];
  reads: LegacyRead[];
}

/**
 * A 1-partition checkpoint topic (the old version's settings) holding `records` checkpoint
 * records of `gateways` old-version gateways, `perBatch` per produce request (record batch) and
 * `perTxn` per transaction, between a checkpoint record of `before` (written first) and one of
 * `after` (written last, if given).
 */
async function legacyTopic(kafka: Kafka, admin: Admin, brokers: string[], dataDirs: string[] | undefined, o: { records: number; gateways: number; perBatch: number; perTxn: number; before: SimGateway; after?: SimGateway }): Promise<{ t: LegacyTopic; hintBefore: number; hintAfter: number | undefined }> {
  const topic = `fleet.legacy-checkpoints-${Date.now()}`;
  await admin.createTopics({
    waitForLeaders: true,
    topics: [
      {
        topic,
        numPartitions: 1,
        replicationFactor: Math.min(3, brokers.length),
        configEntries: [
          { name: 'cleanup.policy', value: 'compact' },
          { name: 'segment.ms', value: String(3600_000) },
          { name: 'min.cleanable.dirty.ratio', value: '0.1' },
        ],
      },
    ],
  });
  // the value format of the old checkpoint record (see parseCheckpoint, and the migration test)
  const value = (logId: string, ep: string, offset: number): string =>
    JSON.stringify({ logId, writer: ep, offset, epoch: ep, history: [[ep, offset]], records: 50, at: Date.now() });
  const own = async (g: SimGateway): Promise<number> => {
    const p = kafka.producer({ transactionalId: `fleet-legacy-own-${g.o.id}`, idempotent: true, maxInFlightRequests: 1 });
    await p.connect();
    const txn = await p.transaction();
    const [md] = await txn.send({ topic, acks: -1, messages: [{ key: g.o.id, value: value(g.log.logId, g.log.epoch.id, 12345) }] });
    await txn.commit();
    await p.disconnect();
    return Number(md!.baseOffset);
  };
  const hintBefore = await own(o.before);
  const perGw = Math.ceil(o.records / o.gateways);
  const g0 = performance.now();
  let markers = 0;
  await Promise.all(
    Array.from({ length: o.gateways }, async (_, i) => {
      const id = `old-gw-${String(i).padStart(2, '0')}`;
      const p: Producer = kafka.producer({ transactionalId: `fleet-legacy-${id}-${topic}`, idempotent: true, maxInFlightRequests: 1 });
      await p.connect();
      let done = 0;
      while (done < perGw) {
        const t = await p.transaction();
        for (let inTxn = 0; inTxn < o.perTxn && done < perGw; ) {
          const n = Math.min(o.perBatch, o.perTxn - inTxn, perGw - done);
          const messages = Array.from({ length: n }, (_, j) => ({ key: id, value: value(`log-${id}`, `ep-${id}`, (done + j) * 50) }));
          await t.send({ topic, acks: -1, messages });
          done += n;
          inTxn += n;
        }
        await t.commit();
        markers++;
      }
      await p.disconnect();
    }),
  );
  const generationSeconds = (performance.now() - g0) / 1000;
  const hintAfter = o.after ? await own(o.after) : undefined;
  const offsets = Number((await admin.fetchTopicOffsets(topic))[0]!.high);
  const t: LegacyTopic = {
    topic,
    records: perGw * o.gateways,
    recordsPerBatch: o.perBatch,
    recordsPerTransaction: o.perTxn,
    commitMarkers: markers,
    generationSeconds: r1(generationSeconds),
    offsets,
    bytes: dataDirs ? topicBytes(dataDirs[0]!, topic) : undefined,
  };
  log(`   ${JSON.stringify(t)}`);
  return { t, hintBefore, hintAfter };
}

/** `g` reconnects to the old-format topic: its group has no offset, so KafkaSink reads the topic from `hint` (readLegacyCheckpoint). */
async function legacyRead(what: string, g: SimGateway, topic: string, hint: number, records: number): Promise<LegacyRead> {
  const sink = g.newSink(topic);
  g.meter.reset();
  const t0 = performance.now();
  const result = await sink.connect({ hint, checking: false });
  const connectSeconds = (performance.now() - t0) / 1000;
  const requests = g.meter.responses();
  await sink.close();
  const admin = g.kafka.admin();
  await admin.connect();
  const high = Number((await admin.fetchTopicOffsets(topic))[0]!.high);
  await admin.disconnect();
  const probe = high - 2; // the probe record, then its commit marker
  const read: LegacyRead = {
    what,
    topic,
    hintOffset: hint,
    offsetsRead: probe - hint,
    recordsRead: records,
    fetchedBytes: requests.Fetch?.responseBytes ?? 0,
    connectSeconds: r2(connectSeconds),
    foundOwnCheckpoint: result.checkpoint?.logId === g.log.logId && result.checkpoint.offset === 12345 && result.legacy === true,
    requests,
  };
  log(`   ${JSON.stringify(read)}`);
  return read;
}

async function measureLegacy(args: Args, brokers: string[], dataDirs: string[] | undefined): Promise<LegacyResult> {
  const kafka = meteredKafka(brokers, 'fleet-legacy', new RequestMeter());
  const admin: Admin = kafka.admin();
  await admin.connect();
  const gw = (name: string): SimGateway =>
    new SimGateway({ id: `fleet-legacy-${name}-${Date.now()}`, brokers, topic: DATA_TOPIC, maxCommitDelayMs: 1000, compression: 'none', devices: 100, partitions: 3, replication: Math.min(3, brokers.length) });
  const n = args.gateways - 1;
  const made: SimGateway[] = [];
  const reads: LegacyRead[] = [];
  const topics: LegacyTopic[] = [];
  try {
    // Exactly the old format (each checkpoint record its own transaction: own batch, own marker),
    // a sample: what a record costs to store and read; and a read with nothing to go through.
    const [a, b] = [gw('sample'), gw('empty')];
    made.push(a, b);
    log(`legacy: old format exactly, ${args.legacySample} records of ${n} old-version gateways, one per transaction...`);
    const sample = await legacyTopic(kafka, admin, brokers, dataDirs, { records: args.legacySample, gateways: n, perBatch: 1, perTxn: 1, before: a, after: b });
    topics.push(sample.t);
    reads.push(await legacyRead('old format, nothing to read (hint = the last record)', b, sample.t.topic, sample.hintAfter!, 0));
    reads.push(await legacyRead(`old format, ${sample.t.records} records`, a, sample.t.topic, sample.hintBefore, sample.t.records));
    // The 10-minute outage's volume, written faster: `perBatch` records per batch, `perTxn` per transaction.
    const c = gw('outage');
    made.push(c);
    log(`legacy: 10-minute outage, ${args.legacyRecords} records of ${n} old-version gateways, ${args.legacyPerBatch} per batch, ${args.legacyPerTxn} per transaction...`);
    const bulk = await legacyTopic(kafka, admin, brokers, dataDirs, { records: args.legacyRecords, gateways: n, perBatch: args.legacyPerBatch, perTxn: args.legacyPerTxn, before: c });
    topics.push(bulk.t);
    reads.push(await legacyRead(`10-minute outage, ${bulk.t.records} records (${args.legacyPerBatch}/batch)`, c, bulk.t.topic, bulk.hintBefore, bulk.t.records));
  } finally {
    await admin.disconnect();
    for (const g of made) await g.close();
  }
  return { simulatedGateways: n, oldFleetRecords: n * 10 * 600, topics, reads };
}

// --- 3. broker-side cost ----------------------------------------------------------------------

/** Bytes of `topic`'s partitions' .log segments under one broker's data dir. */
function topicBytes(dataDir: string, topic: string): number {
  const logs = join(dataDir, 'logs');
  let total = 0;
  for (const d of readdirSync(logs)) {
    if (!d.startsWith(`${topic}-`) || !/^\d+$/.test(d.slice(topic.length + 1))) continue;
    for (const f of readdirSync(join(logs, d))) if (f.endsWith('.log')) total += statSync(join(logs, d, f)).size;
  }
  return total;
}

interface CompressionRow {
  compression: Compression;
  records: number;
  storedBytesPerRecord: number | undefined;
  produceBytesPerRecord: number;
  upstreamBytesPerRecord: number;
  recordsPerTx: number;
}

async function measureCompression(args: Args, brokers: string[], dataDirs: string[] | undefined): Promise<CompressionRow[]> {
  const rows: CompressionRow[] = [];
  for (const compression of ['none', 'lz4', 'zstd'] as const) {
    const topic = `fleet.comp-${compression}-${Date.now()}`;
    const gws = await startFleet(args.gateways, brokers, `fleet-comp-${compression}`, 1000, compression, topic);
    try {
      log(`cost: compression ${compression}, ${args.gateways} gateways x 100 msg/s`);
      for (const g of gws) (g.resetMeasure(), (g.measuring = true));
      wire.reset();
      wire.on = true;
      const d = drive(gws, () => 100);
      await delay(Math.max(5, args.seconds) * 1000);
      await d.stop();
      await drained(gws, 60_000);
      wire.on = false;
      await delay(500);
      const recs = gws.reduce((s, g) => s + g.counters.forwarded, 0);
      const tx = gws.reduce((s, g) => s + g.counters.transactions, 0);
      const total = gws.reduce((s, g) => s + g.end, 0); // every record ever appended (start-up ones too)
      const stored = dataDirs ? topicBytes(dataDirs[0]!, topic) : undefined;
      const row: CompressionRow = {
        compression,
        records: total,
        storedBytesPerRecord: stored === undefined ? undefined : r1(stored / total),
        produceBytesPerRecord: r1(wire.total(['Produce']).bytes / recs),
        upstreamBytesPerRecord: r1(wire.total().bytes / recs),
        recordsPerTx: r1(recs / Math.max(1, tx)),
      };
      log(`   ${JSON.stringify(row)}`);
      rows.push(row);
    } finally {
      await Promise.all(gws.map((g) => g.close()));
    }
  }
  return rows;
}

interface HeapRow {
  node: number;
  classes: Record<string, { instances: number; bytes: number }>;
}

/** Instances of the brokers' producer-state, transaction and offset classes (jmap -histo:live). */
function brokerHeap(baseDir: string | undefined): HeapRow[] | string {
  if (!baseDir) return 'not measured (--brokers: no broker processes of ours)';
  const rows: HeapRow[] = [];
  let ps: string;
  try {
    ps = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  } catch (err) {
    return `ps failed: ${String(err)}`;
  }
  const pattern = /TransactionMetadata|ProducerStateEntry|ProducerAppendInfo|BatchMetadata|OffsetAndMetadata|OffsetMetadataManager|TxnTransitMetadata|TimelineHashMap/;
  for (const line of ps.split('\n')) {
    const m = /^\s*(\d+)\s+(.*)$/.exec(line);
    if (!m || !m[2]!.includes('kafka.Kafka') || !m[2]!.includes(baseDir)) continue;
    const node = Number(/node-(\d+)/.exec(m[2]!)?.[1] ?? 0);
    try {
      const histo = execFileSync('jmap', ['-histo:live', m[1]!], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
      const classes: HeapRow['classes'] = {};
      for (const h of histo.split('\n')) {
        const c = /^\s*\d+:\s+(\d+)\s+(\d+)\s+(\S+)/.exec(h);
        if (c && pattern.test(c[3]!)) classes[c[3]!] = { instances: Number(c[1]), bytes: Number(c[2]) };
      }
      rows.push({ node, classes });
    } catch (err) {
      return `jmap failed: ${String(err).slice(0, 200)}`;
    }
  }
  return rows.sort((a, b) => a.node - b.node);
}

/** Transactional ids the cluster knows (kafka-transactions.sh list), by the broker jars. */
function listTransactions(brokers: string[]): { total: number; edgebridge: number } | string {
  try {
    const out = execFileSync('java', ['-cp', join(ROOT, 'kafka', 'target', 'lib', '*'), 'org.apache.kafka.tools.TransactionsCommand', '--bootstrap-server', brokers.join(','), 'list'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 60_000,
    });
    const lines = out.split('\n').slice(1).filter((l) => l.trim() !== '');
    return { total: lines.length, edgebridge: lines.filter((l) => /^\s*edgebridge-/.test(l)).length };
  } catch (err) {
    return `kafka-transactions list failed: ${String(err).slice(0, 300)}`;
  }
}

interface CostResult {
  compression: CompressionRow[];
  transactionalIds: { total: number; edgebridge: number } | string;
  checkpointGroups: number;
  consumerOffsetsBytes: number | undefined;
  transactionStateBytes: number | undefined;
  heap: HeapRow[] | string;
  note: string;
}

async function measureCost(args: Args, brokers: string[], dataDirs: string[] | undefined, baseDir: string | undefined): Promise<CostResult> {
  const compression = await measureCompression(args, brokers, dataDirs);
  const admin = meteredKafka(brokers, 'fleet-cost', new RequestMeter()).admin();
  await admin.connect();
  const { groups } = await admin.listGroups();
  await admin.disconnect();
  const checkpointGroups = groups.filter((g) => g.groupId.startsWith('edgebridge-checkpoint-') && g.groupId.endsWith('-offsets')).length;
  const transactionalIds = listTransactions(brokers);
  const heap = brokerHeap(baseDir);
  return {
    compression,
    transactionalIds,
    checkpointGroups,
    consumerOffsetsBytes: dataDirs ? topicBytes(dataDirs[0]!, '__consumer_offsets') : undefined,
    transactionStateBytes: dataDirs ? topicBytes(dataDirs[0]!, '__transaction_state') : undefined,
    heap,
    note: 'every simulated gateway of every phase ran with its own transactional id and checkpoint group; heap: shallow sizes of live instances on each node (jmap -histo:live)',
  };
}

// --- report -----------------------------------------------------------------------------------

function markdown(report: Record<string, unknown> & { tx?: TxRow[]; outage?: OutageRow[]; legacy?: LegacyResult; cost?: CostResult }): string {
  const out: string[] = [];
  out.push(`# Fleet measurements (issue 12)`, '', `${String(report.when)}; ${String(report.machine)}; Kafka: ${String(report.kafka)}; brokers idle: ${String(report.idleBrokerCores ?? '?')} cores. One process runs every simulated gateway (real CommitLog, LogReader, KafkaSink, Forwarder each). Noisy shared machine: read the figures as orders of magnitude.`, '');
  if (report.tx) {
    out.push('## Transactions per gateway vs ingest rate', '', '| commit interval | msg/s per gateway | gateways | records/s per gw | tx/s per gw | records/tx | latency median ms | p99 ms | tx median ms | requests/tx | CPU cores bench / brokers | load | upstream B/record | Produce B/record | failed tx |', '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
    for (const r of report.tx)
      out.push(`| ${r.mode === 'adaptive' ? 'adaptive (100 ms / 1000 ms / 100 rec)' : 'old (100 ms)'} | ${r.ratePerGateway} | ${r.gateways} | ${r.recordsPerGatewayPerS} | ${r.txPerGatewayPerS} | ${r.recordsPerTx} | ${r.latencyMedianMs} | ${r.latencyP99Ms} | ${r.txMedianMs} | ${r.requestsPerTx} | ${r.cpuCoresBench} / ${r.cpuCoresBrokers} | ${r.loadavg1} | ${r.upstreamBytesPerRecord} | ${r.produceBytesPerRecord} | ${r.failedTx}${r.caughtUp ? '' : ' (backlog left)'} |`);
    out.push('');
  }
  if (report.outage) {
    out.push('## Reconnect after an outage (checkpoint group)', '', '| outage s | others forwarding | their tx during the outage | connect ms | OffsetFetch ms | requests of the connect | backlog records | catch-up ms |', '|---|---|---|---|---|---|---|---|');
    for (const r of report.outage) {
      const reqs = Object.entries(r.requests).map(([k, v]) => `${k} ${v.count}`).join(', ');
      out.push(`| ${r.outageSeconds} | ${r.othersForwarding} × ${r.othersRatePerGateway} msg/s | ${r.othersTransactionsDuringOutage} | ${r.connectMs} | ${r.offsetFetchMs} | ${reqs} | ${r.backlogRecords} | ${r.catchUpMs} |`);
    }
    out.push('');
  }
  if (report.legacy) {
    const l = report.legacy;
    out.push('## Reconnect after an outage, old design (checkpoint records in one partition)', '');
    out.push(`What ${l.simulatedGateways} busy old-version gateways write in 10 minutes: ${l.oldFleetRecords} checkpoint records (10 tx/s each), each its own transaction (own record batch, own commit marker). The sample topic is written exactly so; the outage topic, to write it in reasonable time, with several records per batch and per transaction (fewer batches and markers to read: its read time is a lower bound).`, '');
    out.push('| topic | records | per batch | per txn | markers | offsets | bytes (1 replica) | bytes/record | written in s |', '|---|---|---|---|---|---|---|---|---|');
    for (const t of l.topics) out.push(`| ${t.topic} | ${t.records} | ${t.recordsPerBatch} | ${t.recordsPerTransaction} | ${t.commitMarkers} | ${t.offsets} | ${t.bytes ?? '?'} | ${t.bytes === undefined ? '?' : r1(t.bytes / t.records)} | ${t.generationSeconds} |`);
    out.push('', '| reconnect (readLegacyCheckpoint) | offsets read (hint → probe) | records read | Fetch bytes | connect s | found its own checkpoint |', '|---|---|---|---|---|---|');
    for (const r of l.reads) out.push(`| ${r.what} | ${r.offsetsRead} | ${r.recordsRead} | ${r.fetchedBytes} | ${r.connectSeconds} | ${r.foundOwnCheckpoint} |`);
    out.push('');
  }
  if (report.cost) {
    const c = report.cost;
    out.push('## Broker-side cost', '', '| compression | records | stored B/record (1 replica) | Produce request B/record | all requests B/record | records/tx |', '|---|---|---|---|---|---|');
    for (const r of c.compression) out.push(`| ${r.compression} | ${r.records} | ${r.storedBytesPerRecord ?? '?'} | ${r.produceBytesPerRecord} | ${r.upstreamBytesPerRecord} | ${r.recordsPerTx} |`);
    out.push('', `Transactional ids on the cluster: ${JSON.stringify(c.transactionalIds)}. Checkpoint groups: ${c.checkpointGroups}. __consumer_offsets bytes (one replica): ${c.consumerOffsetsBytes ?? '?'}; __transaction_state bytes: ${c.transactionStateBytes ?? '?'}.`, '');
    if (typeof c.heap === 'string') out.push(`Heap: ${c.heap}`, '');
    else {
      out.push('| node | class | live instances | shallow bytes |', '|---|---|---|---|');
      for (const h of c.heap) for (const [k, v] of Object.entries(h.classes)) out.push(`| ${h.node} | ${k} | ${v.instances} | ${v.bytes} |`);
      out.push('');
    }
  }
  return out.join('\n');
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const started = performance.now();
  let cluster: Cluster | undefined;
  let baseDir: string | undefined;
  let dataDirs: string[] | undefined;
  const stop = async (): Promise<void> => {
    await cluster?.stop();
    cluster = undefined;
    removeTempDirs();
  };
  process.on('SIGINT', () => void stop().finally(() => process.exit(130)));
  process.on('SIGTERM', () => void stop().finally(() => process.exit(143)));
  try {
    let brokers = args.brokers;
    if (brokers && args.clusterDir) {
      baseDir = args.clusterDir;
      dataDirs = [1, 2, 3].map((i) => join(baseDir!, `node-${i}`));
    }
    if (!brokers) {
      const { startKafkaCluster } = (await import(pathToFileURL(join(ROOT, 'scripts', 'kafka.mjs')).href)) as { startKafkaCluster(o: { baseDir: string; size: number; heap?: string }): Promise<Cluster> };
      baseDir = resolve(tempDir('kafka-cluster'));
      log('starting a 3-node Kafka cluster...');
      cluster = await startKafkaCluster({ baseDir, size: 3, heap: '512m' });
      brokers = cluster.brokers;
      dataDirs = [1, 2, 3].map((i) => join(baseDir!, `node-${i}`));
      log(`cluster on ${brokers.join(',')}`);
    }
    const report: Parameters<typeof markdown>[0] = {
      when: new Date().toISOString(),
      machine: `${cpus().length} cores (${cpus()[0]?.model ?? '?'}), load ${loadavg().map((x) => x.toFixed(1)).join('/')} at start, shared with other work`,
      kafka: args.brokers ? `existing cluster ${args.brokers.join(',')}` : 'Apache Kafka 4.1.1, 3 KRaft nodes on this machine (512 MB heap each), replication 3, min ISR 2',
      args: { ...args, only: [...args.only] },
    };
    brokerPids = findBrokerPids(baseDir);
    if (brokerPids.length > 0) {
      // what the brokers use with no client at all: subtract it from a phase's broker CPU
      const idle0 = cpuNow();
      await delay(10_000);
      report.idleBrokerCores = coresSince(idle0, 10).brokers;
      log(`brokers idle: ${String(report.idleBrokerCores)} cores`);
    }
    if (args.only.has('tx')) report.tx = await measureTx(args, brokers);
    if (args.only.has('outage')) report.outage = await measureOutage(args, brokers);
    if (args.only.has('legacy')) report.legacy = await measureLegacy(args, brokers, dataDirs);
    if (args.only.has('cost')) report.cost = await measureCost(args, brokers, dataDirs, baseDir);
    report.loadAtEnd = loadavg().map((x) => x.toFixed(1)).join('/');
    report.seconds = Math.round((performance.now() - started) / 1000);
    const md = markdown(report) + `\nTotal run ${String(report.seconds)} s; load at end ${String(report.loadAtEnd)}.\n`;
    const dir = join(ROOT, 'bench', 'results');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `fleet-${args.out}.json`), JSON.stringify(report, null, 2) + '\n');
    writeFileSync(join(dir, `fleet-${args.out}.md`), md);
    process.stdout.write(md);
  } finally {
    await stop();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench:fleet failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
