import type Database from 'better-sqlite3';

/** A command as the consumer read it from Kafka. */
export interface ConsumedCommand {
  readonly offset: number;
  /** The Kafka key: the device the command is for (null: no key, not a command). */
  readonly deviceId: string | null;
  /** The Kafka value: the MQTT payload, byte for byte (null: a tombstone, not a command). */
  readonly payload: Buffer | null;
  /** The correlation-id header, if any. */
  readonly correlationId: string | undefined;
  /** The content-type header, if any (sent to MQTT 5 devices as the Content Type property). */
  readonly contentType?: string | undefined;
  /** The record's timestamp (ms): its TTL runs from here. */
  readonly timestamp: number;
}

/** What one consumed batch did. */
export interface StoreResult {
  /** Commands kept for devices this gateway serves. */
  stored: number;
  /** Commands for devices this gateway does not serve: neither stored nor delivered. */
  notServed: number;
  /** Commands whose TTL ended before they were read. */
  expired: number;
  /** Records that are no command (no key, no value). */
  invalid: number;
  /** Records at offsets stored before (read again after a crash before the offset commit). */
  alreadyStored: number;
  /** The devices of the commands stored (each once). */
  devices: string[];
}

/** A stored command, as delivery reads it. */
export interface OutboxCommand {
  readonly seq: number;
  readonly deviceId: string;
  readonly correlationId: string;
  readonly kafkaTopic: string;
  readonly kafkaPartition: number;
  readonly kafkaOffset: number;
  readonly payload: Buffer;
  /** The command's `content-type` header (MQTT 5 devices get it as the Content Type property). */
  readonly contentType: string | null;
  readonly createdAt: number;
  readonly expiresAt: number;
  readonly state: CommandState;
  readonly deliveredAt: number | null;
}

/** stored (waiting for the device) → handed (in its MQTT session) → delivered (it acknowledged). */
export const CommandState = { Stored: 0, Handed: 1, Delivered: 2 } as const;
export type CommandState = (typeof CommandState)[keyof typeof CommandState];

interface CommandRow {
  seq: number;
  device_id: string;
  correlation_id: string;
  kafka_topic: string;
  kafka_partition: number;
  kafka_offset: number;
  payload: Buffer;
  content_type: string | null;
  created_at: number;
  expires_at: number;
  state: CommandState;
  delivered_at: number | null;
}

const fromRow = (r: CommandRow): OutboxCommand => ({
  seq: r.seq,
  deviceId: r.device_id,
  correlationId: r.correlation_id,
  kafkaTopic: r.kafka_topic,
  kafkaPartition: r.kafka_partition,
  kafkaOffset: r.kafka_offset,
  payload: r.payload,
  contentType: r.content_type,
  createdAt: r.created_at,
  expiresAt: r.expires_at,
  state: r.state,
  deliveredAt: r.delivered_at,
});

/**
 * The command outbox (migration 6): commands from Kafka for the devices this gateway serves, the
 * consumer's position per partition (stored in the same transaction as the commands it read, as
 * a Kafka Connect sink stores its offsets with its writes: a crash before the Kafka offset commit
 * reads them again and skips them here), and which devices the gateway serves. The consumer
 * (forwarder thread) and delivery (main thread) each use it on their own connection.
 */
export class CommandOutbox {
  private readonly stmts: ReturnType<CommandOutbox['prepare']>;
  private readonly storeAll: Database.Transaction<(topic: string, partition: number, commands: readonly ConsumedCommand[], ttlMs: number, now: number) => StoreResult>;

  constructor(private readonly db: Database.Database) {
    this.stmts = this.prepare();
    this.storeAll = db.transaction((topic: string, partition: number, commands: readonly ConsumedCommand[], ttlMs: number, now: number) => {
      const result: StoreResult = { stored: 0, notServed: 0, expired: 0, invalid: 0, alreadyStored: 0, devices: [] };
      const devices = new Set<string>();
      const next = (this.stmts.position.get(topic, partition) as number | undefined) ?? 0;
      let end = next;
      for (const c of commands) {
        if (c.offset < next) {
          result.alreadyStored++;
          continue;
        }
        end = Math.max(end, c.offset + 1);
        if (c.deviceId === null || c.deviceId === '' || c.payload === null) result.invalid++;
        else if (c.timestamp + ttlMs <= now) result.expired++;
        else if (this.stmts.served.get(c.deviceId) === undefined) result.notServed++;
        else {
          this.stmts.insert.run(c.deviceId, c.correlationId ?? `${partition}-${c.offset}`, topic, partition, c.offset, c.payload, c.contentType ?? null, c.timestamp, c.timestamp + ttlMs);
          result.stored++;
          devices.add(c.deviceId);
        }
      }
      result.devices = [...devices];
      if (end > next) this.stmts.setPosition.run(topic, partition, end);
      return result;
    });
  }

  private prepare() {
    const { db } = this;
    return {
      position: db.prepare('SELECT next_offset FROM command_positions WHERE kafka_topic = ? AND kafka_partition = ?').pluck(),
      setPosition: db.prepare(
        `INSERT INTO command_positions (kafka_topic, kafka_partition, next_offset) VALUES (?, ?, ?)
         ON CONFLICT (kafka_topic, kafka_partition) DO UPDATE SET next_offset = excluded.next_offset`,
      ),
      served: db.prepare('SELECT 1 FROM served_devices WHERE device_id = ?').pluck(),
      serve: db.prepare('INSERT OR IGNORE INTO served_devices (device_id, seen_at) VALUES (?, ?)'),
      insert: db.prepare(
        `INSERT INTO commands (device_id, correlation_id, kafka_topic, kafka_partition, kafka_offset, payload, content_type, created_at, expires_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      waitingFor: db.prepare('SELECT * FROM commands WHERE device_id = ? AND state = 0 AND seq > ? ORDER BY seq LIMIT ?'),
      waitingDevices: db.prepare('SELECT DISTINCT device_id FROM commands WHERE state = 0').pluck(),
      get: db.prepare('SELECT * FROM commands WHERE seq = ?'),
      handed: db.prepare('UPDATE commands SET state = 1 WHERE seq = ? AND state = 0'),
      unhanded: db.prepare('UPDATE commands SET state = 0 WHERE seq = ? AND state = 1'),
      delivered: db.prepare('UPDATE commands SET state = 2, delivered_at = ? WHERE seq = ? AND state < 2'),
      deliveredList: db.prepare('SELECT * FROM commands WHERE state = 2 ORDER BY seq LIMIT ?'),
      expiredList: db.prepare('SELECT seq, state FROM commands WHERE state < 2 AND expires_at <= ? ORDER BY seq LIMIT ?'),
      remove: db.prepare('DELETE FROM commands WHERE seq = ?'),
      counts: db.prepare('SELECT state, count(*) AS n FROM commands GROUP BY state'),
      open: db.prepare('SELECT count(*) FROM commands').pluck(),
    };
  }

  /** Forwarder thread: one consumed batch of a partition, with its position, in one transaction. */
  store(topic: string, partition: number, commands: readonly ConsumedCommand[], ttlMs: number, now = Date.now()): StoreResult {
    return this.storeAll.immediate(topic, partition, commands, ttlMs, now);
  }

  /** The device is served by this gateway from now on (it connected, or a password file lists it). */
  serve(deviceIds: Iterable<string>, now = Date.now()): void {
    this.db.transaction(() => {
      for (const id of deviceIds) this.stmts.serve.run(id, now);
    })();
  }

  /** Devices this gateway serves (at most `limit`): known devices, silent until heard from. */
  servedDevices(limit: number): string[] {
    return this.db.prepare('SELECT device_id FROM served_devices LIMIT ?').pluck().all(limit) as string[];
  }

  /** A device's commands not yet handed to a session, in Kafka order (the order they were stored). */
  waitingFor(deviceId: string, afterSeq: number, limit: number): OutboxCommand[] {
    return (this.stmts.waitingFor.all(deviceId, afterSeq, limit) as CommandRow[]).map(fromRow);
  }

  /** The devices with commands not yet handed to a session. */
  waitingDevices(): string[] {
    return this.stmts.waitingDevices.all() as string[];
  }

  get(seq: number): OutboxCommand | undefined {
    const row = this.stmts.get.get(seq) as CommandRow | undefined;
    return row && fromRow(row);
  }

  markHanded(seq: number): void {
    this.stmts.handed.run(seq);
  }

  /** The session it was handed to ended without it (a clean reconnect): it waits again. */
  markWaiting(seq: number): void {
    this.stmts.unhanded.run(seq);
  }

  /** The device acknowledged the command; false if it was acknowledged before (or is gone). */
  markDelivered(seq: number, now: number): boolean {
    return this.stmts.delivered.run(now, seq).changes > 0;
  }

  /** Delivered commands whose ack record is not in the commit log yet. */
  delivered(limit: number): OutboxCommand[] {
    return (this.stmts.deliveredList.all(limit) as CommandRow[]).map(fromRow);
  }

  /** Commands whose TTL ended before the device acknowledged them. */
  expired(now: number, limit: number): { seq: number; state: CommandState }[] {
    return this.stmts.expiredList.all(now, limit) as { seq: number; state: CommandState }[];
  }

  remove(seq: number): void {
    this.stmts.remove.run(seq);
  }

  /** Commands in the outbox (waiting, in a session, or delivered with the ack record to write). */
  openCount(): number {
    return this.stmts.open.get() as number;
  }

  /** Commands in each state now. */
  counts(): Record<CommandState, number> {
    const out = { [CommandState.Stored]: 0, [CommandState.Handed]: 0, [CommandState.Delivered]: 0 };
    for (const { state, n } of this.stmts.counts.all() as { state: CommandState; n: number }[]) out[state] = n;
    return out;
  }
}
