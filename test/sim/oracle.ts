import type { ModelRecord } from './kafka-model.js';

/** One stored copy of a reading: an append that returned an offset. */
interface Copy {
  readonly id: number;
  readonly step: number;
  readonly offset: number;
  readonly topic: string;
  /** Gone from the log in a tail loss or a restored backup (it may or may not be in Kafka). */
  lost: boolean;
  /** Gone in a tail loss (power cut): it must not have been forwarded, which syncs first. */
  tailLost: boolean;
  /** Dropped by a documented policy (storage.maxAge, overflow: drop-oldest); counted. */
  dropped: boolean;
}

interface Reading {
  readonly key: string;
  readonly device: string;
  /** `${device}/${bootId}` for identity readings, `${device}/plain` for the others. */
  readonly stream: string;
  readonly order: number;
  readonly plain: boolean;
  readonly poison: boolean;
  readonly copies: Copy[];
  acked: boolean;
  /** Its dedup memory may be gone (tail loss, restore, eviction): storing it again is allowed. */
  dedupForgotten: boolean;
}

export interface OracleSettings {
  readonly deadLetterTopic: string | undefined;
  /** The dead-letter topic takes every refused record: none may be dropped. */
  readonly deadLetterAcceptsAll: boolean;
}

/**
 * The reference the simulator checks the gateway against (Jepsen-style): it sees only what the
 * devices sent and were acknowledged, what each append returned, which records documented
 * policies dropped, what faults destroyed, and what Kafka committed. From that it judges:
 * every acknowledged reading is in Kafka exactly once (or its absence is accounted for), no
 * stored record is forwarded twice, each device's readings keep their order, and nothing appears
 * that no device published.
 */
export class Oracle {
  private readonly readings = new Map<string, Reading>();
  private readonly copies: Copy[] = [];
  private liveByOffset = new Map<number, Copy>();

  constructor(private readonly settings: OracleSettings) {}

  /** A device created a reading (its payload identifies it; see simulator.ts). */
  created(key: string, device: string, stream: string, order: number, plain: boolean, poison: boolean): void {
    this.readings.set(key, { key, device, stream, order, plain, poison, copies: [], acked: false, dedupForgotten: false });
  }

  stored(key: string, offset: number, topic: string, step: number): void {
    const copy: Copy = { id: this.copies.length, step, offset, topic, lost: false, tailLost: false, dropped: false };
    this.copies.push(copy);
    this.reading(key).copies.push(copy);
    this.liveByOffset.set(offset, copy);
  }

  /** The copies in the log now (what a snapshot of it holds). */
  inLog(): ReadonlySet<number> {
    return new Set(this.copies.filter((c) => !c.lost).map((c) => c.id));
  }

  acked(key: string): void {
    this.reading(key).acked = true;
  }

  /**
   * The log was put back to a snapshot holding `inSnapshot` (a tail loss after the last sync, or a
   * restored backup, from any time, even one newer than an earlier restore): copies not in it are
   * gone, with their dedup keys; copies in it are back, and must reach Kafka once.
   */
  restored(inSnapshot: ReadonlySet<number>, tailLoss: boolean): void {
    for (const r of this.readings.values()) {
      for (const c of r.copies) {
        if (inSnapshot.has(c.id)) {
          c.lost = false;
          c.tailLost = false;
        } else if (!c.lost) {
          c.lost = true;
          c.tailLost = tailLoss;
          r.dedupForgotten = true;
        }
      }
    }
    this.liveByOffset = new Map(this.copies.filter((c) => !c.lost).map((c) => [c.offset, c]));
  }

  dropped(offset: number): void {
    const copy = this.liveByOffset.get(offset);
    if (copy) copy.dropped = true;
  }

  /** Dedup keys were evicted early (storage full of them): any reading may be stored again. */
  dedupEvicted(): void {
    for (const r of this.readings.values()) r.dedupForgotten = true;
  }

  private reading(key: string): Reading {
    const r = this.readings.get(key);
    if (!r) throw new Error(`oracle: unknown reading ${key}`);
    return r;
  }

  /** Judges what Kafka holds; returns the violations found (empty: the guarantee held). */
  judge(committed: readonly ModelRecord[], keyOf: (value: Buffer) => string | undefined): string[] {
    const violations: string[] = [];
    // Each stored copy at most once: Kafka records matched to copies by reading and log offset.
    const perCopy = new Map<string, number>();
    for (const rec of committed) {
      const key = keyOf(rec.value);
      if (key !== undefined) perCopy.set(`${key}@${rec.offset}`, (perCopy.get(`${key}@${rec.offset}`) ?? 0) + 1);
    }
    for (const [id, n] of perCopy) {
      const [key, offset] = id.split('@') as [string, string];
      const copies = this.readings.get(key)?.copies.filter((c) => c.offset === Number(offset)).length ?? 0;
      if (n > copies) violations.push(`${key}: the copy at offset ${offset} is in Kafka ${n} times (stored ${copies} times there)`);
    }
    const inKafka = new Map<string, ModelRecord[]>();
    for (const rec of committed) {
      const key = keyOf(rec.value);
      if (key === undefined || !this.readings.has(key)) {
        violations.push(`a record no device published is in ${rec.topic}: ${rec.value.toString('utf8').slice(0, 80)}`);
        continue;
      }
      const list = inKafka.get(key) ?? [];
      list.push(rec);
      inKafka.set(key, list);
    }
    for (const r of this.readings.values()) {
      const found = inKafka.get(r.key) ?? [];
      const stored = r.copies.length;
      const kept = r.copies.filter((c) => !c.lost && !c.dropped);
      const deadLettered = found.filter((f) => f.topic === this.settings.deadLetterTopic);
      const inTopics = found.filter((f) => f.topic !== this.settings.deadLetterTopic);
      if (found.length > stored) violations.push(`${r.key}: ${found.length} records in Kafka from ${stored} stored copies (forwarded twice)`);
      const tailLost = r.copies.filter((c) => c.tailLost).length;
      if (tailLost > 0 && found.length > stored - tailLost) {
        violations.push(`${r.key}: a copy lost in a power cut had been forwarded (records must be synced before they are forwarded)`);
      }
      if (stored > 1 && !r.dedupForgotten) violations.push(`${r.key}: stored ${stored} times while its dedup memory was intact`);
      if (r.acked && stored === 0) violations.push(`${r.key}: acknowledged but never stored`);
      if (r.poison) {
        if (inTopics.length > 0) violations.push(`${r.key}: a record Kafka refuses is in ${inTopics[0]!.topic}`);
      } else if (deadLettered.length > 0) {
        violations.push(`${r.key}: dead-lettered although Kafka accepts it`);
      }
      // Every copy still in the log when it was drained went out; a refused one is dead-lettered,
      // and may be dropped only when there is no dead-letter topic or it refuses the record too.
      const mayBeDropped = r.poison && !this.settings.deadLetterAcceptsAll ? kept.length : 0;
      if (found.length < kept.length - mayBeDropped) {
        violations.push(
          `${r.key}${r.acked ? ' (acknowledged)' : ''}: ${found.length} in Kafka, expected ${kept.length} (stored ${stored}, lost ${r.copies.filter((c) => c.lost).length}, dropped ${r.copies.filter((c) => c.dropped).length})`,
        );
      }
      for (const f of inTopics) {
        if (!r.copies.some((c) => c.topic === f.topic)) violations.push(`${r.key}: in ${f.topic}, but stored for ${r.copies.map((c) => c.topic).join(',')}`);
      }
    }
    // Per-device order, among readings with one clean copy (no loss, drop or second copy that
    // a documented fault may have put out of place).
    const lastOrder = new Map<string, { order: number; key: string }>();
    const seen = new Set<string>();
    for (const rec of committed) {
      if (rec.topic === this.settings.deadLetterTopic) continue;
      const key = keyOf(rec.value);
      const r = key === undefined ? undefined : this.readings.get(key);
      if (!r || seen.has(r.key)) continue;
      seen.add(r.key);
      if (r.copies.length !== 1 || r.copies[0]!.lost || r.copies[0]!.dropped) continue;
      const stream = `${r.stream}@${rec.topic}`;
      const prev = lastOrder.get(stream);
      if (prev && r.order < prev.order) violations.push(`${r.key} reached ${rec.topic} after ${prev.key} (per-device order)`);
      if (!prev || r.order > prev.order) lastOrder.set(stream, { order: r.order, key: r.key });
    }
    return violations;
  }

  stats(): { readings: number; acked: number; stored: number; lost: number; dropped: number } {
    let acked = 0;
    let stored = 0;
    let lost = 0;
    let dropped = 0;
    for (const r of this.readings.values()) {
      if (r.acked) acked++;
      stored += r.copies.length;
      lost += r.copies.filter((c) => c.lost).length;
      dropped += r.copies.filter((c) => c.dropped).length;
    }
    return { readings: this.readings.size, acked, stored, lost, dropped };
  }
}
