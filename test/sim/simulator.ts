/**
 * A deterministic fault simulator for the delivery guarantee, after FoundationDB's simulation
 * testing and TigerBeetle's VOPR: one seed decides a whole run (the gateway's settings, the
 * devices, every event and every fault), the real CommitLog, GroupCommit, dedup, Retention,
 * LogReader and Forwarder run against real SQLite files and an in-memory transactional Kafka
 * (kafka-model.ts), and an oracle (oracle.ts) judges the outcome. Time is virtual and nothing
 * waits on a timer, so a seed replays exactly; a failing seed prints itself.
 *
 * Faults: process crash (all in-memory state lost, files reopened), tail loss under
 * storage.synchronous: normal (the log put back to a state after its last sync), a restored
 * backup (put back further), Kafka down, failures before and after a commit took effect, fencing
 * by a transaction timeout, leader moves, missing ACLs, records Kafka refuses, a full disk, log
 * read errors, storage.maxAge expiry and overflow drops, route changes between restarts, device
 * disconnects, lost PUBACKs, DUP retransmits, firmware replays and reboots.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { EdgebridgeError } from '../../src/errors.js';
import { Forwarder, type StepOutcome } from '../../src/forward/forwarder.js';
import { forwarderLimits } from '../../src/forward/settings.js';
import { forwardSettings } from '../../src/gateway.js';
import { toLogEntry } from '../../src/ingress/entry.js';
import { RouteTable } from '../../src/ingress/routes.js';
import { CommitLog } from '../../src/log/commit-log.js';
import { storageBudget } from '../../src/log/budget.js';
import { DB_FILE, logError } from '../../src/log/database.js';
import { GroupCommit, type AppendOwner } from '../../src/log/group-commit.js';
import { LogReader } from '../../src/log/log-reader.js';
import { Retention } from '../../src/log/retention.js';
import { KafkaModel, ModelSink, type SendFault } from './kafka-model.js';
import { Oracle } from './oracle.js';
import { Prng } from './prng.js';

export interface SimOptions {
  readonly seed: number;
  /** Events before the calm phase (default 300). */
  readonly steps?: number;
  /** Where the log files go (a tmpfs such as /dev/shm is fastest). */
  readonly baseDir?: string;
}

export interface SimResult {
  readonly seed: number;
  readonly ok: boolean;
  readonly violations: string[];
  readonly trace: string[];
  /** A digest of the trace: the same seed must give the same digest. */
  readonly digest: string;
  readonly summary: string;
  /** What this run went through (faults hit, policies that acted): coverage across seeds. */
  readonly coverage: readonly string[];
}

const ROUTE = 'devices/{deviceId}/telemetry';
const TOPICS = ['iot.a', 'iot.b'] as const;
const DEAD_LETTER = 'edgebridge.dead-letter';
const MAX_MESSAGE_BYTES = 48 * 1024;
const GATEWAY = 'gw-sim';
const silent = pino({ level: 'silent' });

interface Item {
  readonly key: string;
  readonly payload: Buffer;
  /** The packet id it was first sent with (kept for its DUP retransmits). */
  messageId: number | undefined;
  sentOn: Connection | undefined;
}

interface Connection extends AppendOwner {
  closed: boolean;
  readonly id: number;
}

interface Device {
  readonly id: string;
  readonly plain: boolean;
  readonly window: number;
  bootId: string;
  boots: number;
  seq: number;
  /** Readings ever created (plain devices are identified by it; their seq restarts at boot). */
  count: number;
  conn: Connection | undefined;
  readonly outbox: Item[];
  readonly ackedHistory: Item[];
  nextMessageId: number;
}

interface Node {
  readonly log: CommitLog;
  readonly gc: GroupCommit;
  readonly retention: Retention;
  readonly reader: LogReader;
  readonly forwarder: Forwarder;
  readonly routes: RouteTable;
  readonly inspector: Database.Database;
  scheduledFlush: (() => void) | undefined;
}

export async function simulate(options: SimOptions): Promise<SimResult> {
  const sim = new Simulation(options);
  try {
    return await sim.run();
  } finally {
    sim.dispose();
  }
}

class Simulation {
  private readonly rng: Prng;
  private readonly base: string;
  private readonly dir: string;
  private readonly trace: string[] = [];
  private readonly violations: string[] = [];
  private readonly model = new KafkaModel(MAX_MESSAGE_BYTES);
  private readonly oracle: Oracle;
  private readonly devices: Device[] = [];
  private node: Node | undefined;
  private now = 1_700_000_000_000;
  private step = 0;
  private topicIndex = 0;
  private config!: Config;
  private nextConnection = 1;
  // fault state
  private downFor = 0;
  private deniedFor = 0;
  private diskFullFor = 0;
  private readErrorsFor = 0;
  private zeroProgress = 0;
  private readonly snapshots: { step: number; dir: string; copies: ReadonlySet<number> }[] = [];
  /** The step of the snapshot the log was last put back to (restores may go back and forth). */
  private lastRestoredTo: number | undefined;
  private lastDurableStep = 0;
  private snapshotCount = 0;
  private evictedSeen = 0;
  // settings chosen by the seed
  private readonly synchronous: 'full' | 'normal';
  private readonly deadLetter: boolean;
  private readonly settings: Record<string, unknown>;
  /** Padding of each reading: some seeds fill the log (backpressure, drop-oldest, eviction). */
  private readonly padBytes: number;
  private readonly coverage = new Set<string>();

  constructor(private readonly options: SimOptions) {
    this.rng = new Prng(options.seed);
    const root = options.baseDir ?? (existsSync('/dev/shm') ? '/dev/shm' : undefined);
    this.base = mkdtempSync(join(root ?? '/tmp', `edgebridge-sim-${options.seed}-`));
    this.dir = join(this.base, 'data');
    const rng = this.rng;
    this.synchronous = rng.pick(['full', 'normal'] as const);
    this.padBytes = rng.pick([0, 1800, 1800, 20_000]);
    this.deadLetter = rng.chance(0.7);
    this.settings = {
      synchronous: this.synchronous,
      overflow: rng.pick(['backpressure', 'drop-oldest']),
      maxBytes: rng.pick([1024 * 1024, 1024 * 1024, 2 * 1024 * 1024, 64 * 1024 * 1024]),
      maxAge: rng.pick([5_000, 30_000, 7 * 86400_000]),
      groupCommitMaxRecords: rng.pick([1, 3, 5000]),
      maxQueuedRecords: rng.pick([10_000, 50_000]),
      batchMaxRecords: rng.pick([1, 3, 16, 500]),
    };
    const deadLetterLimit = this.deadLetter && rng.chance(0.2) ? 1024 : 1024 * 1024; // drawn as before: seeds replay
    this.oracle = new Oracle({ deadLetterTopic: this.deadLetter ? DEAD_LETTER : undefined, deadLetterAcceptsAll: this.deadLetter && deadLetterLimit > MAX_MESSAGE_BYTES + 1000 });
    if (this.deadLetter) this.model.createTopic(DEAD_LETTER, deadLetterLimit);
    const devices = rng.int(2, 5);
    for (let i = 0; i < devices; i++) {
      this.devices.push({
        id: `dev-${i + 1}`,
        plain: rng.chance(0.25),
        window: rng.int(1, 3) * (this.padBytes > 0 ? 4 : 1),
        bootId: `b${i + 1}-1`,
        boots: 1,
        seq: 0,
        count: 0,
        conn: undefined,
        outbox: [],
        ackedHistory: [],
        nextMessageId: 1,
      });
    }
  }

  private log(line: string): void {
    this.trace.push(`${this.step} ${line}`);
  }

  private readonly reported = new Set<string>();

  /** Records a violation (each distinct message once: an invariant that stays broken is one finding). */
  private violation(message: string): void {
    const kind = message.replace(/\d+/g, '#');
    if (this.reported.has(kind)) return;
    this.reported.add(kind);
    this.violations.push(`step ${this.step}: ${message}`);
    this.log(`VIOLATION ${message}`);
  }

  private makeConfig(): Config {
    const s = this.settings;
    return parseConfig({
      gateway: { id: GATEWAY },
      kafka: { brokers: ['kafka-model:9092'] },
      mqtt: { maxPayloadBytes: 64 * 1024 },
      storage: {
        dir: this.dir,
        synchronous: s.synchronous,
        overflow: s.overflow,
        maxBytes: s.maxBytes,
        maxAge: s.maxAge,
        groupCommitMaxRecords: s.groupCommitMaxRecords,
        maxQueuedRecords: s.maxQueuedRecords,
      },
      forward: {
        batchMaxRecords: s.batchMaxRecords,
        commitIntervalMs: 0,
        deadLetterTopic: this.deadLetter ? DEAD_LETTER : false,
        retry: { initialMs: 100, maxMs: 2000 },
      },
      routes: [{ mqtt: ROUTE, kafka: TOPICS[this.topicIndex], dedup: { window: '1d', retransmitWindow: '1d' } }],
    });
  }

  // ---- the gateway ----------------------------------------------------------------------------

  private open(): void {
    if (this.node) throw new Error('simulator: a second gateway process on one storage.dir');
    this.config = this.makeConfig();
    const config = this.config;
    const routes = new RouteTable(config.routes);
    const budget = storageBudget(config.storage.maxBytes, config.mqtt.maxPayloadBytes);
    const log = new CommitLog({ dir: this.dir, synchronous: config.storage.synchronous, walLimitBytes: budget.walLimitBytes });
    log.pruneTopics(routes.kafkaTopics);
    const inspector = new Database(join(this.dir, DB_FILE));
    this.instrumentLog(log, inspector);
    // The epoch row is written with a full sync: a tail loss never goes behind it.
    this.durable('open');
    let forwarder: Forwarder | undefined;
    const node: Partial<Node> & { scheduledFlush: (() => void) | undefined } = { scheduledFlush: undefined };
    const gc = new GroupCommit(log, {
      maxBatch: config.storage.groupCommitMaxRecords,
      maxBatchBytes: budget.maxTransactionBytes,
      maxPending: config.storage.maxQueuedRecords,
      maxPendingBytes: config.storage.maxQueuedBytes,
      onCommit: (last) => forwarder?.notify(last),
      storage: {
        recordBytes: budget.recordBytes,
        overflow: config.storage.overflow,
        forwardPosition: () => log.forwardPosition(),
      },
      logger: silent,
      holdRetryMs: 1e9, // the simulator releases held groups itself
      clock: () => this.now,
      schedule: (flush) => (node.scheduledFlush = flush),
    });
    const retention = new Retention(log, {
      maxAgeMs: config.storage.maxAge,
      forwardPosition: () => log.forwardPosition(),
      groupCounters: gc.counters,
      logger: silent,
      intervalMs: 0,
    });
    const settings = forwardSettings(config, log);
    const reader = new LogReader({ dir: this.dir, synchronous: config.storage.synchronous, walLimitBytes: budget.walLimitBytes });
    this.instrumentReader(reader);
    const sink = new ModelSink(this.model, {
      gatewayId: GATEWAY,
      logId: log.logId,
      writer: log.epoch.id,
      topics: settings.topics,
      checkpointTopic: settings.checkpointTopic,
      deadLetterTopic: settings.deadLetterTopic,
      duringSend: () => this.interleave(),
      onReconnect: (afterTrouble) => {
        if (!afterTrouble) this.violation('the forwarder reconnected to Kafka (a new producer, fencing, a probe) though Kafka had not failed');
      },
    });
    forwarder = new Forwarder(reader, sink, {
      ...forwarderLimits(settings),
      logger: silent,
      onRemoved: () => gc.release(),
      clock: () => this.now,
      random: () => this.rng.next(),
    });
    Object.assign(node, { log, gc, retention, reader, forwarder, routes, inspector });
    this.node = node as Node;
    this.evictedSeen = 0; // a new process counts from zero
    this.log(`open epoch=${log.epoch.start} topic=${TOPICS[this.topicIndex]} topics=${settings.topics.join(',')}`);
  }

  /** Drops (maxAge, drop-oldest) are told to the oracle: found by reading the rows before and after. */
  private instrumentLog(log: CommitLog, inspector: Database.Database): void {
    const candidates = inspector.prepare('SELECT log_offset FROM records WHERE log_offset > ? ORDER BY log_offset LIMIT ?').pluck();
    const exists = inspector.prepare('SELECT 1 FROM records WHERE log_offset = ?').pluck();
    const tracked = (fn: (position: number, n: number) => number, position: number, n: number): number => {
      const before = candidates.all(position, n) as number[];
      const dropped = fn(position, n);
      if (dropped > 0) for (const offset of before) if (exists.get(offset) === undefined) this.oracle.dropped(offset);
      return dropped;
    };
    const dropOldest = log.dropOldest.bind(log);
    const dropExpired = log.dropExpired.bind(log);
    log.dropOldest = (position, count) => tracked(dropOldest, position, count);
    log.dropExpired = (position, before, scan = 10_000) => tracked((p, n) => dropExpired(p, before, n), position, scan);
    const append = log.append.bind(log);
    log.append = (entries, now) => {
      if (this.diskFullFor > 0) {
        this.diskFullFor--;
        throw logError('EB_ERR_LOG_WRITE', log.file, 'append', Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' }));
      }
      return append(entries, now);
    };
  }

  private instrumentReader(reader: LogReader): void {
    const makeDurable = reader.makeDurable.bind(reader);
    reader.makeDurable = () => {
      const before = reader.syncs();
      makeDurable();
      if (this.synchronous !== 'normal') return;
      // The barrier is booked on its effect, a commit that synced the WAL, not on the call.
      if (reader.syncs() > before) this.durable('forward-sync');
      else this.violation('the log was not synced before forwarding (storage.synchronous: normal)');
    };
    const readBatch = reader.readBatch.bind(reader);
    reader.readBatch = (after, max, bytes) => {
      if (this.readErrorsFor > 0) {
        this.readErrorsFor--;
        throw logError('EB_ERR_LOG_READ', reader.file, 'read a batch', Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_READ' }));
      }
      return readBatch(after, max, bytes);
    };
  }

  /**
   * Everything committed so far is on disk: a tail loss can take only what comes after. The
   * state at the barrier is kept as a snapshot now and then (copying the files each time would
   * make a seed slow); a tail loss picks among the snapshots taken since.
   */
  private durable(why: string): void {
    this.lastDurableStep = this.step;
    if (why === 'open' || this.rng.chance(0.25)) this.snapshot(why);
  }

  private snapshot(why: string): void {
    const dir = join(this.base, `snap-${this.snapshotCount++}`);
    mkdirSync(dir);
    for (const f of [DB_FILE, `${DB_FILE}-wal`]) if (existsSync(join(this.dir, f))) copyFileSync(join(this.dir, f), join(dir, f));
    this.snapshots.push({ step: this.step, dir, copies: this.oracle.inLog() });
    if (this.snapshots.length > 24) {
      // keep the newest, thin out the older ones (backups of several ages)
      const drop = this.snapshots.splice(this.rng.int(0, this.snapshots.length - 12), 1)[0]!;
      rmSync(drop.dir, { recursive: true, force: true });
    }
    this.log(`snapshot ${why}`);
  }

  /** The process dies: nothing in memory survives, no callback runs, every connection drops. */
  private crash(why: string): void {
    const node = this.node;
    if (!node) return;
    this.node = undefined;
    node.inspector.close();
    node.reader.close();
    node.log.close();
    for (const d of this.devices) this.disconnect(d);
    this.log(`crash (${why})`);
  }

  /** A clean stop: what is in flight is stored (or refused), then everything closes. */
  private stop(): void {
    const node = this.node;
    if (!node) return;
    node.gc.close();
    this.crash('clean stop');
  }

  /** Puts the log back to a snapshot and restarts; a power cut with no snapshot since the last sync loses nothing. */
  private rollBack(kind: 'tail-loss' | 'restore'): void {
    const candidates = kind === 'tail-loss' ? this.snapshots.filter((s) => s.step >= this.lastDurableStep) : this.snapshots;
    if (candidates.length === 0) {
      if (kind === 'tail-loss') {
        this.crash('power cut, nothing lost since the last sync');
        this.restart();
      }
      return;
    }
    const to = this.rng.pick(candidates);
    this.crash(kind);
    for (const f of [DB_FILE, `${DB_FILE}-wal`, `${DB_FILE}-shm`]) rmSync(join(this.dir, f), { force: true });
    for (const f of [DB_FILE, `${DB_FILE}-wal`]) if (existsSync(join(to.dir, f))) copyFileSync(join(to.dir, f), join(this.dir, f));
    this.oracle.restored(to.copies, kind === 'tail-loss');
    this.coverage.add(kind);
    // Backups are kept whatever their age: the next restore may take a newer one than this.
    if (kind === 'restore' && this.lastRestoredTo !== undefined && to.step > this.lastRestoredTo) this.coverage.add('restore:newer-after-older');
    if (kind === 'restore') this.lastRestoredTo = to.step;
    this.log(`${kind} back to step ${to.step}`);
    this.restart();
  }

  private restart(): void {
    if (this.rng.chance(0.3)) this.topicIndex = 1 - this.topicIndex; // the route's topic renamed
    this.open();
  }

  // ---- devices ----------------------------------------------------------------------------------

  private disconnect(d: Device): void {
    if (d.conn) d.conn.closed = true;
    d.conn = undefined;
  }

  private connect(d: Device): void {
    if (d.conn || !this.node) return;
    d.conn = { closed: false, id: this.nextConnection++ };
    this.pump(d);
  }

  private newReading(d: Device, poison: boolean): void {
    d.seq++;
    d.count++;
    // A plain device is a sensor with a counter that restarts at boot and no bootId: its payload
    // has `seq` but not every identity field, so only DUP retransmits may be collapsed.
    const body: Record<string, unknown> = d.plain ? { dev: d.id, seq: d.seq, n: d.count } : { bootId: d.bootId, seq: d.seq, dev: d.id };
    body.v = this.rng.int(0, 999);
    if (poison) body.pad = 'x'.repeat(MAX_MESSAGE_BYTES + 100);
    else if (this.padBytes > 0) body.pad = 'x'.repeat(this.padBytes);
    const key = d.plain ? `${d.id}/plain/${d.count}` : `${d.id}/${d.bootId}/${d.seq}`;
    const stream = d.plain ? `${d.id}/plain` : `${d.id}/${d.bootId}`;
    this.oracle.created(key, d.id, stream, d.plain ? d.count : d.seq, d.plain, poison);
    d.outbox.push({ key, payload: Buffer.from(JSON.stringify(body)), messageId: undefined, sentOn: undefined });
    this.log(`${d.id} reading ${key}${poison ? ' (poison)' : ''}`);
    this.pump(d);
  }

  /** The device's outbox: in order, at most `window` in flight, resent (DUP) on a new connection. */
  private pump(d: Device): void {
    const conn = d.conn;
    if (!conn || conn.closed || !this.node) return;
    let inflight = d.outbox.filter((i) => i.sentOn === conn).length;
    for (const item of d.outbox) {
      if (inflight >= d.window) break;
      if (item.sentOn === conn) continue;
      const dup = item.messageId !== undefined;
      item.messageId ??= d.nextMessageId++;
      item.sentOn = conn;
      inflight++;
      this.send(d, conn, item, dup);
      if (d.conn !== conn || conn.closed) break;
    }
  }

  private send(d: Device, conn: Connection, item: Item, dup: boolean, replay = false): void {
    const node = this.node!;
    this.log(`${d.id} sends ${item.key} on connection ${conn.id}${dup ? ' (DUP)' : ''}${replay ? ' (replay)' : ''}`);
    const topic = `devices/${d.id}/telemetry`;
    const match = node.routes.match(topic)!;
    const entry = toLogEntry(match, {
      topic,
      payload: item.payload,
      qos: 1,
      dup,
      messageId: item.messageId,
      clientId: `sim-${d.id}`,
      receivedAt: this.now,
    });
    node.gc.append(
      entry,
      (err, result) => {
        if (typeof result === 'number') this.oracle.stored(item.key, result, entry.kafkaTopic, this.step);
        this.log(`${d.id} ${replay ? 'replay ' : ''}${item.key} -> ${err ? `refused (${(err as EdgebridgeError).code})` : result}`);
        if (err) this.coverage.add(`append-refused:${(err as EdgebridgeError).code}`);
        else if (result === 'duplicate') this.coverage.add(replay ? 'replay-dropped' : 'retransmit-dropped');
        if (replay || conn !== d.conn || conn.closed) return;
        if (err) {
          this.disconnect(d); // aedes closes the connection of a refused publish
          return;
        }
        if (this.rng.chance(0.03)) {
          this.log(`${d.id} PUBACK lost`);
          this.disconnect(d);
          return;
        }
        const at = d.outbox.indexOf(item);
        if (at !== -1) d.outbox.splice(at, 1);
        d.ackedHistory.push(item);
        this.oracle.acked(item.key);
        this.pump(d);
      },
      conn,
    );
  }

  // ---- the run ----------------------------------------------------------------------------------

  private async forwardStep(): Promise<StepOutcome | undefined> {
    const node = this.node;
    if (!node) return undefined;
    const before = node.forwarder.position;
    const appendedBefore = node.log.lastOffset;
    const onlyAclsMissing = this.model.denied && !this.model.down && this.readErrorsFor === 0 && this.model.faults.length === 0;
    const outcome = await node.forwarder.step();
    // A failure that can only be Kafka refusing this gateway (ACLs) is reported as that, never
    // as a twin (fenced) or an outage.
    if (onlyAclsMissing && outcome.kind === 'retry' && node.forwarder.state !== 'unauthorized') {
      this.violation(`missing ACLs reported as '${node.forwarder.state}'`);
    }
    const moved = node.forwarder.position !== before;
    if (outcome.kind === 'retry') this.now += outcome.delayMs;
    this.coverage.add(`forwarder:${node.forwarder.state}`);
    const c = node.forwarder.counters;
    if (c.deadLettered > 0) this.coverage.add('refused:dead-letter');
    if (c.droppedRejected > 0) this.coverage.add('refused:dropped');
    if (c.skippedByCheckpoint > 0) this.coverage.add('resumed-after-checkpoint');
    if (outcome.kind === 'skipped') this.coverage.add('skipped-gone-records');
    this.log(`forward ${JSON.stringify(outcome)} position=${node.forwarder.position} state=${node.forwarder.state}`);
    if (outcome.kind === 'fenced') this.violation('the forwarder fenced itself, with no twin gateway running');
    // Idle means nothing left to forward, gaps included: idling short of the end is a stall
    // (unless the step itself let held appends in, which wake the forwarder again).
    if (outcome.kind === 'idle' && node.log.lastOffset === appendedBefore && node.forwarder.position < node.reader.end()) {
      this.violation(`the forwarder idles at ${node.forwarder.position} with offsets up to ${node.reader.end()} handed out`);
    }
    // Every step makes progress or asks for a wait; one that asks to go on at once without
    // moving (isolating a refused record, checking a fence) may do so only a few times running.
    const waits = outcome.kind === 'idle' || outcome.kind === 'fenced' || (outcome.kind === 'retry' && outcome.delayMs > 0);
    this.zeroProgress = moved || waits ? 0 : this.zeroProgress + 1;
    if (this.zeroProgress > 64) {
      this.violation(`the forwarder goes round without progress or a wait (${JSON.stringify(outcome)})`);
      this.zeroProgress = 0;
    }
    this.noticeEvictions();
    return outcome;
  }

  private async event(): Promise<void> {
    const rng = this.rng;
    const node = this.node;
    const kind = rng.weighted({
      publish: 30,
      burst: this.padBytes > 0 ? 4 : 1,
      flush: 22,
      forward: 22,
      time: 6,
      retention: 3,
      release: 2,
      reconnect: 6,
      disconnect: 2,
      replay: 2,
      reboot: 1,
      poison: 1,
      kafka: 3,
      disk: 1,
      readError: 1,
      snapshot: 2,
      crash: 2,
      stop: 1,
      tailLoss: this.synchronous === 'normal' ? 2 : 0,
      restore: 0.4,
    });
    switch (kind) {
      case 'publish':
      case 'poison': {
        const d = rng.pick(this.devices);
        this.newReading(d, kind === 'poison');
        break;
      }
      case 'burst': {
        // a fleet reconnecting after an outage, each device emptying its flash buffer
        const most = this.padBytes > 10_000 ? 60 : this.padBytes > 0 ? 150 : 40;
        for (let i = rng.int(10, most); i > 0; i--) this.newReading(rng.pick(this.devices), false);
        break;
      }
      case 'flush':
        if (node?.scheduledFlush) {
          const flush = node.scheduledFlush;
          node.scheduledFlush = undefined;
          flush();
        }
        break;
      case 'forward':
        await this.forwardStep();
        break;
      case 'time':
        this.now += rng.chance(0.1) ? rng.int(5_000, 40_000) : rng.int(0, 2_000);
        break;
      case 'retention':
        node?.retention.runOnce(this.now);
        if (node) this.log(`retention expired=${node.retention.counters.droppedExpired}`);
        break;
      case 'release':
        node?.gc.release();
        break;
      case 'reconnect':
        for (const d of this.devices) if (!d.conn && rng.chance(0.6)) this.connect(d);
        break;
      case 'disconnect': {
        const d = rng.pick(this.devices);
        if (d.conn) this.log(`${d.id} disconnected`);
        this.disconnect(d);
        break;
      }
      case 'replay': {
        const d = rng.pick(this.devices.filter((x) => !x.plain && x.ackedHistory.length > 0).concat(this.devices[0]!));
        if (d.plain || d.ackedHistory.length === 0 || !d.conn || !node) break;
        const old = rng.pick(d.ackedHistory);
        // firmware replaying a reading it already had acknowledged: a new packet, same reading
        this.send(d, d.conn, { ...old, messageId: d.nextMessageId++ }, false, true);
        break;
      }
      case 'reboot': {
        const d = rng.pick(this.devices);
        d.boots++;
        d.bootId = `${d.id.replace('dev-', 'b')}-${d.boots}`;
        d.seq = 0;
        this.disconnect(d);
        this.log(`${d.id} reboots as ${d.bootId}`);
        break;
      }
      case 'kafka': {
        const what = rng.weighted({ down: 3, fault: 6, deny: 1 });
        if (what === 'down') this.downFor = rng.int(3, rng.chance(0.3) ? 120 : 40);
        else if (what === 'deny') this.deniedFor = rng.int(3, 20);
        else this.model.faults.push(rng.pick<SendFault>(['fail-before', 'fail-after', 'fail-after', 'fence', 'leader-moved']));
        this.log(`kafka ${what} ${what === 'fault' ? this.model.faults[this.model.faults.length - 1] : ''}`);
        break;
      }
      case 'disk':
        this.diskFullFor = rng.int(1, 4);
        this.log(`disk full for ${this.diskFullFor} appends`);
        break;
      case 'readError':
        this.readErrorsFor = rng.int(1, 3);
        this.log(`log read errors for ${this.readErrorsFor} reads`);
        break;
      case 'snapshot':
        if (node) this.snapshot('random');
        break;
      case 'crash':
        if (node) {
          this.crash('kill -9');
          this.restart();
        }
        break;
      case 'stop':
        if (node) {
          this.stop();
          this.restart();
        }
        break;
      case 'tailLoss':
      case 'restore':
        if (node) this.rollBack(kind === 'tailLoss' ? 'tail-loss' : 'restore');
        break;
    }
  }

  /**
   * The ingest thread does not wait for the forwarder: while a transaction is in flight, devices
   * publish, group commits land, retention drops and time passes.
   */
  private interleave(): void {
    if (!this.rng.chance(0.3)) return;
    for (let n = this.rng.int(1, 3); n > 0; n--) {
      const node = this.node;
      if (!node) return;
      const what = this.rng.weighted({ publish: 4, flush: 4, retention: 1, time: 1 });
      this.log(`during the transaction: ${what}`);
      if (what === 'publish') this.newReading(this.rng.pick(this.devices), false);
      else if (what === 'flush') {
        const flush = node.scheduledFlush;
        node.scheduledFlush = undefined;
        flush?.();
      } else if (what === 'retention') node.retention.runOnce(this.now);
      else this.now += this.rng.int(0, 3000);
    }
    this.coverage.add('ingest-during-transaction');
  }

  /** Dedup keys evicted early (storage full of them): from then on a reading may be stored again. */
  private noticeEvictions(): void {
    const evicted = this.node?.gc.counters.dedupEvicted ?? 0;
    if (evicted > this.evictedSeen) {
      this.oracle.dedupEvicted();
      this.coverage.add('dedup-evicted');
    }
    this.evictedSeen = evicted;
  }

  /** Counts down the faults that last a while; the model follows. */
  private tick(): void {
    if (this.downFor > 0) this.downFor--;
    if (this.deniedFor > 0) this.deniedFor--;
    this.model.down = this.downFor > 0;
    this.model.denied = this.deniedFor > 0;
  }

  /**
   * Faults healed, Kafka up: the gateway must then forward everything it holds and acknowledge
   * what the devices still have, with every step making progress or waiting.
   */
  private async calm(): Promise<void> {
    this.downFor = this.deniedFor = this.diskFullFor = this.readErrorsFor = 0;
    this.tick();
    this.model.faults.length = 0;
    this.log('calm: faults healed');
    if (!this.node) this.open();
    const node = () => this.node!;
    let stalled = 0;
    let last = '';
    for (let round = 0; round < 400 && stalled < 30; round++) {
      for (const d of this.devices) this.connect(d);
      const flush = node().scheduledFlush;
      node().scheduledFlush = undefined;
      flush?.();
      node().gc.release();
      this.noticeEvictions();
      let idle = false;
      for (let i = 0; i < 50 && !idle; i++) idle = (await this.forwardStep())?.kind === 'idle';
      const waiting = this.devices.reduce((n, d) => n + d.outbox.length, 0);
      const end = node().reader.end();
      if (idle && waiting === 0 && node().forwarder.position >= end && !node().scheduledFlush) {
        this.log(`calm: drained at position ${end} in ${round + 1} rounds`);
        return;
      }
      this.now += 1000;
      if (round % 20 === 19) node().retention.runOnce(this.now);
      const state = `${node().forwarder.position}/${end}/${waiting}`;
      stalled = state === last ? stalled + 1 : 0;
      last = state;
    }
    const n = node();
    this.violation(
      `no progress while Kafka is up: state=${n.forwarder.state} position=${n.forwarder.position} end=${n.reader.end()} ` +
        `waiting=${this.devices.map((d) => d.outbox.length).join('/')} held=${n.gc.holding} err=${n.forwarder.lastErrorMessage}`,
    );
  }

  async run(): Promise<SimResult> {
    const steps = this.options.steps ?? 300;
    this.log(`seed ${this.options.seed} ${JSON.stringify(this.settings)} deadLetter=${this.deadLetter} devices=${this.devices.map((d) => `${d.id}${d.plain ? ':plain' : ''}:w${d.window}`).join(',')}`);
    try {
      this.open();
      for (const d of this.devices) this.connect(d);
      for (this.step = 1; this.step <= steps; this.step++) {
        this.tick();
        await this.event();
        this.noticeEvictions();
        if (this.node?.gc.holding) this.coverage.add('acks-held:backpressure');
        if ((this.node?.gc.counters.droppedOverflow ?? 0) > 0) this.coverage.add('overflow:drop-oldest');
        if ((this.node?.retention.counters.droppedExpired ?? 0) > 0) this.coverage.add('expired:maxAge');
        const used = this.node?.log.usedBytes() ?? 0;
        if (used > this.config.storage.maxBytes) {
          this.violation(`the log uses ${used} bytes (${this.node!.log.pageBytes()} in pages), more than storage.maxBytes ${this.config.storage.maxBytes}`);
        }
      }
      await this.calm();
    } catch (err) {
      this.violation(`the run threw: ${(err as Error).stack ?? String(err)}`);
    }
    const committed = [...this.model.topics.entries()].flatMap(([, t]) => t.records);
    const found = this.oracle.judge(committed, (value) => readingKey(value));
    for (const v of found) this.violation(v);
    const s = this.oracle.stats();
    if (s.dropped > 0) this.coverage.add('dropped-by-policy');
    if (s.lost > 0) this.coverage.add('records-lost-to-rollback');
    const summary =
      `seed ${this.options.seed}: ${s.readings} readings, ${s.acked} acked, ${s.stored} stored, ${s.lost} lost to faults, ${s.dropped} dropped by policy, ` +
      `${committed.length} in Kafka, ${this.model.transactions} transactions`;
    const digest = createHash('sha1').update(this.trace.join('\n')).digest('hex');
    return {
      seed: this.options.seed,
      ok: this.violations.length === 0,
      violations: this.violations,
      trace: this.trace,
      digest,
      summary,
      coverage: [...this.coverage].sort(),
    };
  }

  dispose(): void {
    if (this.node) {
      this.node.inspector.close();
      this.node.reader.close();
      this.node.log.close();
      this.node = undefined;
    }
    rmSync(this.base, { recursive: true, force: true });
  }
}

/** The oracle's key of a reading, from its payload (what a device published). */
export function readingKey(value: Buffer): string | undefined {
  try {
    const v = JSON.parse(value.toString('utf8')) as { dev?: string; bootId?: string; seq?: number; n?: number };
    if (typeof v.dev !== 'string') return undefined;
    if (typeof v.n === 'number') return `${v.dev}/plain/${v.n}`;
    if (typeof v.bootId === 'string' && typeof v.seq === 'number') return `${v.dev}/${v.bootId}/${v.seq}`;
  } catch {
    // not a reading
  }
  return undefined;
}
