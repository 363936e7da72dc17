import type Database from 'better-sqlite3';
import { EdgebridgeError } from '../errors.js';
import { limitWal, openDatabase } from './database.js';
import { CommandOutbox } from './outbox.js';

/** A packet as aedes hands it to its persistence (publish, or the PUBREL that replaces one). */
export interface SessionPacket {
  cmd?: string;
  topic: string;
  payload: Buffer;
  qos?: number;
  retain?: boolean;
  dup?: boolean;
  messageId?: number;
  brokerId?: string;
  brokerCounter?: number;
  [key: string]: unknown;
}

/** The packet fields kept (aedes's QoS packets also carry callbacks and per-connection state). */
const FIELDS = ['cmd', 'brokerId', 'brokerCounter', 'topic', 'qos', 'retain', 'dup', 'messageId', 'properties', 'messageExpiry', 'clientId', 'nl'] as const;

function packetText(packet: SessionPacket): string {
  const kept: Record<string, unknown> = {};
  for (const f of FIELDS) if (packet[f] !== undefined) kept[f] = packet[f];
  return JSON.stringify(kept);
}

/** MQTT 5 properties may hold Buffers (correlation data): JSON keeps them as {type, data}. */
function revive(_key: string, value: unknown): unknown {
  const v = value as { type?: unknown; data?: unknown } | null;
  return v !== null && typeof v === 'object' && v.type === 'Buffer' && Array.isArray(v.data) ? Buffer.from(v.data as number[]) : value;
}

function packetFrom(text: string, payload: Buffer): SessionPacket {
  return { ...(JSON.parse(text, revive) as Omit<SessionPacket, 'payload'>), payload } as SessionPacket;
}

export interface StoredSubscription {
  readonly topic: string;
  readonly qos: number;
  readonly [option: string]: unknown;
}

export interface QueuedRow {
  readonly clientId: string;
  readonly key: string;
  readonly packet: SessionPacket;
}

/** Everything a restarted gateway gives back to aedes. */
export interface StoredSessions {
  readonly subscriptions: Map<string, StoredSubscription[]>;
  /** Queued and in-flight outgoing messages, per client in the order they were queued. */
  readonly queue: QueuedRow[];
  readonly inbound: { clientId: string; packet: SessionPacket }[];
  readonly retained: SessionPacket[];
  readonly wills: { clientId: string; packet: SessionPacket }[];
  /** The identity (username, or none) that owns each persistent session. */
  readonly owners: Map<string, string | null>;
  /** MQTT 5 sessions with a finite Session Expiry Interval: when each ends (null: connected when the last run ended). */
  readonly expiry: Map<string, SessionExpiry>;
}

export interface SessionExpiry {
  /** The session's Session Expiry Interval (seconds, as granted). */
  readonly intervalS: number;
  /** When it ends (ms); null while its client is connected. */
  readonly expiresAt: number | null;
}

/**
 * MQTT session state in the commit log's database (migration 5): persistent sessions'
 * subscriptions, their queued and in-flight QoS 1/2 messages, inbound QoS 2 handshakes,
 * retained messages, wills and who owns each session. Its own connection writes with
 * synchronous=NORMAL: a change is in the WAL when the call returns, so it survives a crash of the
 * process at once, and a power cut from the next commit-log group commit on (that fsync covers
 * every WAL frame before it) — a subscribe or a queued message does not cost an fsync of its own.
 */
export class SessionTables {
  private readonly db: Database.Database;
  private readonly stmts: ReturnType<SessionTables['prepare']>;
  private readonly transaction: Database.Transaction<(work: () => void) => void>;
  /** The command outbox, on this connection: a command's queue entry and its state change together. */
  readonly outbox: CommandOutbox;

  /** `file`: the commit log's database, already opened (and migrated) by CommitLog. */
  constructor(file: string, options: { busyTimeoutMs: number; walLimitBytes: number }) {
    this.db = openDatabase(file, { busyTimeoutMs: options.busyTimeoutMs, moveAsideIfCorrupt: false });
    try {
      this.db.pragma('synchronous = NORMAL');
      limitWal(this.db, options.walLimitBytes);
      this.stmts = this.prepare();
      this.transaction = this.db.transaction((work: () => void) => work());
      this.outbox = new CommandOutbox(this.db);
    } catch (err) {
      this.db.close();
      throw new EdgebridgeError('EB_ERR_LOG_OPEN', `cannot open the MQTT session tables in ${file}: ${(err as Error).message}`, { cause: err });
    }
  }

  private prepare() {
    const { db } = this;
    return {
      putSub: db.prepare('INSERT OR REPLACE INTO session_subscriptions (client_id, topic, options) VALUES (?, ?, ?)'),
      delSub: db.prepare('DELETE FROM session_subscriptions WHERE client_id = ? AND topic = ?'),
      delSubs: db.prepare('DELETE FROM session_subscriptions WHERE client_id = ?'),
      allSubs: db.prepare('SELECT client_id, topic, options FROM session_subscriptions'),
      enqueue: db.prepare('INSERT OR REPLACE INTO session_queue (client_id, packet_key, message_id, packet, payload) VALUES (?, ?, ?, ?, ?)'),
      updateQueued: db.prepare('UPDATE session_queue SET message_id = ?, packet = ?, payload = ? WHERE client_id = ? AND packet_key = ?'),
      delQueued: db.prepare('DELETE FROM session_queue WHERE client_id = ? AND packet_key = ?'),
      allQueued: db.prepare('SELECT client_id, packet_key, packet, payload FROM session_queue ORDER BY seq'),
      reconcile: db.prepare(
        `UPDATE commands SET state = 0 WHERE state = 1 AND NOT EXISTS (
           SELECT 1 FROM session_queue WHERE packet_key = 'bedgebridge-commands/' || commands.device_id || ':' || commands.seq)`,
      ),
      putInbound: db.prepare('INSERT OR REPLACE INTO session_inbound (client_id, message_id, packet, payload) VALUES (?, ?, ?, ?)'),
      getInbound: db.prepare('SELECT packet, payload FROM session_inbound WHERE client_id = ? AND message_id = ?'),
      delInbound: db.prepare('DELETE FROM session_inbound WHERE client_id = ? AND message_id = ?'),
      clearInbound: db.prepare('DELETE FROM session_inbound WHERE client_id = ?'),
      allInbound: db.prepare('SELECT client_id, packet, payload FROM session_inbound'),
      putRetained: db.prepare('INSERT OR REPLACE INTO retained (topic, packet, payload) VALUES (?, ?, ?)'),
      delRetained: db.prepare('DELETE FROM retained WHERE topic = ?'),
      allRetained: db.prepare('SELECT packet, payload FROM retained'),
      putWill: db.prepare('INSERT OR REPLACE INTO wills (client_id, packet, payload) VALUES (?, ?, ?)'),
      delWill: db.prepare('DELETE FROM wills WHERE client_id = ?'),
      allWills: db.prepare('SELECT client_id, packet, payload FROM wills'),
      putOwner: db.prepare('INSERT OR REPLACE INTO session_owners (client_id, username) VALUES (?, ?)'),
      delOwner: db.prepare('DELETE FROM session_owners WHERE client_id = ?'),
      allOwners: db.prepare('SELECT client_id, username FROM session_owners'),
      putExpiry: db.prepare('INSERT OR REPLACE INTO session_expiry (client_id, interval_s, expires_at) VALUES (?, ?, ?)'),
      delExpiry: db.prepare('DELETE FROM session_expiry WHERE client_id = ?'),
      allExpiry: db.prepare('SELECT client_id, interval_s, expires_at FROM session_expiry'),
      expiredSessions: db.prepare('SELECT client_id FROM session_expiry WHERE expires_at IS NOT NULL AND expires_at <= ?').pluck(),
      // The commands queued in an ending session wait in the outbox again, unless another
      // session of their device holds them too (a user name with several client ids).
      unhandSession: db.prepare(
        `UPDATE commands SET state = 0 WHERE state = 1 AND EXISTS (
           SELECT 1 FROM session_queue q WHERE q.client_id = ? AND q.packet_key = 'bedgebridge-commands/' || commands.device_id || ':' || commands.seq)
         AND NOT EXISTS (
           SELECT 1 FROM session_queue q WHERE q.client_id <> ? AND q.packet_key = 'bedgebridge-commands/' || commands.device_id || ':' || commands.seq)`,
      ),
      delQueue: db.prepare('DELETE FROM session_queue WHERE client_id = ?'),
    };
  }

  load(): StoredSessions {
    const s = this.stmts;
    const subscriptions = new Map<string, StoredSubscription[]>();
    for (const r of s.allSubs.all() as { client_id: string; topic: string; options: string }[]) {
      const list = subscriptions.get(r.client_id) ?? [];
      list.push({ ...(JSON.parse(r.options) as { qos: number }), topic: r.topic });
      subscriptions.set(r.client_id, list);
    }
    const rows = <T>(stmt: Database.Statement) => stmt.all() as T[];
    return {
      subscriptions,
      queue: rows<{ client_id: string; packet_key: string; packet: string; payload: Buffer }>(s.allQueued).map((r) => ({
        clientId: r.client_id,
        key: r.packet_key,
        packet: packetFrom(r.packet, r.payload),
      })),
      inbound: rows<{ client_id: string; packet: string; payload: Buffer }>(s.allInbound).map((r) => ({ clientId: r.client_id, packet: packetFrom(r.packet, r.payload) })),
      retained: rows<{ packet: string; payload: Buffer }>(s.allRetained).map((r) => packetFrom(r.packet, r.payload)),
      wills: rows<{ client_id: string; packet: string; payload: Buffer }>(s.allWills).map((r) => ({ clientId: r.client_id, packet: packetFrom(r.packet, r.payload) })),
      owners: new Map(rows<{ client_id: string; username: string | null }>(s.allOwners).map((r) => [r.client_id, r.username])),
      expiry: new Map(
        rows<{ client_id: string; interval_s: number; expires_at: number | null }>(s.allExpiry).map((r) => [r.client_id, { intervalS: r.interval_s, expiresAt: r.expires_at }]),
      ),
    };
  }

  /** A v5 session's expiry: `expiresAt` null while it is connected. */
  putExpiry(clientId: string, intervalS: number, expiresAt: number | null): void {
    this.stmts.putExpiry.run(clientId, intervalS, expiresAt);
  }

  /** The session has no timed expiry (3.1.1, never expiring, or ended). */
  deleteExpiry(clientId: string): void {
    this.stmts.delExpiry.run(clientId);
  }

  /** The v5 sessions that ended by their expiry at `now` (a restarted gateway ends them first). */
  expiredSessions(now: number): string[] {
    return this.stmts.expiredSessions.all(now) as string[];
  }

  /**
   * Ends a session, in one transaction: its subscriptions, queued messages, inbound QoS 2 state,
   * owner and expiry go; its queued commands wait in the outbox again. Its will stays (the will
   * sweep publishes a will its broker no longer holds).
   */
  endSession(clientId: string): void {
    this.atomically(() => {
      this.stmts.unhandSession.run(clientId, clientId);
      this.stmts.delQueue.run(clientId);
      this.stmts.delSubs.run(clientId);
      this.stmts.clearInbound.run(clientId);
      this.stmts.delOwner.run(clientId);
      this.stmts.delExpiry.run(clientId);
    });
  }

  putSubscriptions(clientId: string, subs: readonly StoredSubscription[]): void {
    this.atomically(() => {
      for (const { topic, ...options } of subs) this.stmts.putSub.run(clientId, topic, JSON.stringify(options));
    });
  }

  /** `topics`: null for all of the client's subscriptions. */
  deleteSubscriptions(clientId: string, topics: readonly string[] | null): void {
    if (topics === null) {
      this.stmts.delSubs.run(clientId);
      return;
    }
    this.atomically(() => {
      for (const topic of topics) this.stmts.delSub.run(clientId, topic);
    });
  }

  enqueue(clientIds: readonly string[], key: string, packet: SessionPacket): void {
    const text = packetText(packet);
    this.atomically(() => {
      for (const id of clientIds) this.stmts.enqueue.run(id, key, packet.messageId ?? null, text, packet.payload);
    });
  }

  updateQueued(clientId: string, key: string, packet: SessionPacket): void {
    this.stmts.updateQueued.run(packet.messageId ?? null, packetText(packet), packet.payload ?? Buffer.alloc(0), clientId, key);
  }

  deleteQueued(clientId: string, key: string): void {
    this.stmts.delQueued.run(clientId, key);
  }

  putInbound(clientId: string, packet: SessionPacket): void {
    this.stmts.putInbound.run(clientId, packet.messageId ?? 0, packetText(packet), packet.payload);
  }

  getInbound(clientId: string, messageId: number): SessionPacket | undefined {
    const row = this.stmts.getInbound.get(clientId, messageId) as { packet: string; payload: Buffer } | undefined;
    return row && packetFrom(row.packet, row.payload);
  }

  deleteInbound(clientId: string, messageId: number): void {
    this.stmts.delInbound.run(clientId, messageId);
  }

  clearInbound(clientId: string): void {
    this.stmts.clearInbound.run(clientId);
  }

  putRetained(packet: SessionPacket): void {
    this.stmts.putRetained.run(packet.topic, packetText(packet), packet.payload);
  }

  deleteRetained(topic: string): void {
    this.stmts.delRetained.run(topic);
  }

  putWill(clientId: string, packet: SessionPacket): void {
    this.stmts.putWill.run(clientId, packetText(packet), packet.payload ?? Buffer.alloc(0));
  }

  deleteWill(clientId: string): void {
    this.stmts.delWill.run(clientId);
  }

  putOwner(clientId: string, username: string | undefined): void {
    this.stmts.putOwner.run(clientId, username ?? null);
  }

  deleteOwner(clientId: string): void {
    this.stmts.delOwner.run(clientId);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /**
   * Commands marked handed whose queue entry never came (the gateway died in between) wait
   * again. The key is session-store.ts's pendingKey of a command packet (commands/packet.ts).
   */
  reconcileCommands(): number {
    return this.stmts.reconcile.run().changes;
  }


  /** Runs `work` (calls of this class and of `outbox`) as one transaction. */
  atomically(work: () => void): void {
    // IMMEDIATE for the reason CommitLog.append gives: no snapshot held while waiting for the lock.
    this.transaction.immediate(work);
  }
}
