import type { Logger } from 'pino';
import { EdgebridgeError, describeError } from '../errors.js';
import type { AppendResult, CommitLog, LogEntry } from './commit-log.js';
import { EMPTY_LOG_BYTES, admissionBytes } from './budget.js';
import { logError, recordBytes } from './database.js';
import { UnstoredSends } from './unstored-sends.js';

/** `offset` is the record's log offset, or `duplicate` when dedup dropped it (still acknowledged). */
export type AppendCallback = (err: Error | null, result?: AppendResult) => void;

/**
 * Who sent an entry: one MQTT connection. Entries of one owner are stored in the order they were
 * appended, and once one of them is refused none of its later ones is stored (it would overtake
 * the refused one, which the device sends again). `closed` owners' waiting entries are dropped.
 */
export interface AppendOwner {
  readonly closed?: boolean;
  /**
   * Its refusals for lack of room (the log full and holding acknowledgements, too many waiting)
   * are final for that message only, answered at once: the connection goes on and its later
   * appends are judged on their own (MQTT 5: the device was told 0x97). Without it, a refused
   * owner's later appends are refused too, to keep their order: its connection is closed and the
   * device sends them again (MQTT 3.1.1).
   */
  readonly finalRefusals?: boolean;
}

/** What ingress needs from the log: append now, learn the outcome later. */
export interface AppendSink {
  append(entry: LogEntry, done: AppendCallback, owner?: AppendOwner): void;
}

export interface StoragePolicy {
  /** What records may use of storage.maxBytes (see budget.ts): database pages in use. */
  readonly recordBytes: number;
  readonly overflow: 'backpressure' | 'drop-oldest';
  /** The forwarder's position: records at or before it are in Kafka and may go at any time. */
  readonly forwardPosition: () => number;
  /** The forwarder's largest batch (forward.batchMaxRecords): records it may have in flight. */
  readonly forwardBatchRecords?: number;
}

export interface GroupCommitOptions {
  /** Largest transaction; a bigger burst is split (bounds the time one write blocks the loop). */
  readonly maxBatch?: number;
  /**
   * Least time between the starts of two group commits. An append after a quiet spell is written
   * at once; under steady traffic appends gather for up to this long, so each transaction (an
   * fsync and a few pages of WAL written whatever its size) carries more of them.
   */
  readonly minIntervalMs?: number;
  /** Most bytes one transaction writes (bounds how far it takes the WAL past its limit). */
  readonly maxBatchBytes?: number;
  /** Most publishes waiting to be stored (held while storage is full); more are refused at once. */
  readonly maxPending?: number;
  /** Most payload bytes waiting to be stored. */
  readonly maxPendingBytes?: number;
  /** Called after every committed group (the forwarder's wake-up). */
  readonly onCommit?: (lastOffset: number, count: number) => void;
  /** Called after every failed group, and after the first success that follows failures. */
  readonly onWriteResult?: (err: EdgebridgeError | null) => void;
  readonly storage?: StoragePolicy;
  readonly logger?: Logger;
  /** How often a held group re-checks for space. */
  readonly holdRetryMs?: number;
  /** The clock dedup windows are measured with. */
  readonly clock?: () => number;
  /** How the next flush is scheduled; setImmediate (after this turn's I/O) unless a test drives it. */
  readonly schedule?: (flush: () => void) => void;
}

export interface GroupCommitCounters {
  groups: number;
  appended: number;
  duplicates: number;
  /** Oldest unforwarded records dropped to make room (overflow: drop-oldest). */
  droppedOverflow: number;
  /** Dedup keys forgotten before their window ended because storage was full. */
  dedupEvicted: number;
  /** Appends refused at once because too many were waiting (maxPending). */
  overloaded: number;
  /** Waiting appends dropped because their connection closed (never acknowledged). */
  abandoned: number;
  /** Appends refused at once because the log was full, from owners whose refusals are final (MQTT 5: 0x97). */
  refusedFull: number;
  /**
   * Unstored first sends of DUP-only packets forgotten because too many were noted at once: their
   * DUP resend is checked against the index again (and may be taken for a retransmit).
   */
  unstoredForgotten: number;
}

interface Pending {
  /** Its dedup mark is resolved against the unstored first sends just before it is written. */
  entry: LogEntry;
  done: AppendCallback;
  owner: AppendOwner | undefined;
  bytes: number;
}

const SHUTTING_DOWN = 'the gateway is shutting down; the message was not stored';
const LOG_FULL = 'the commit log is full (storage.maxBytes) until the forwarder frees space; the message was not stored';

/**
 * A group this large is written without waiting for minIntervalMs: each transaction rewrites
 * about five pages besides its records (B-tree parents, the partly filled last page, the header,
 * free-list and sequence pages), about 20 KiB, so from here they add less than ~300 bytes each.
 */
const GROUP_ENOUGH_RECORDS = 64;
const GROUP_ENOUGH_BYTES = 64 * 1024;

/**
 * Group commit: collects the appends of one event-loop turn and writes them in one SQLite
 * transaction (one fsync), then releases the callbacks in arrival order. Durability then costs
 * one fsync per turn rather than one per message. Callbacks run only after the transaction is
 * committed, so the acknowledgement that follows them is never ahead of the disk.
 *
 * With a storage policy, a group that would take the log past `maxBytes` is held (backpressure:
 * no acknowledgement until the forwarder frees space) or makes room by dropping the oldest
 * unforwarded records (drop-oldest). Nothing acknowledged is dropped under backpressure. What
 * waits is bounded (maxPending, maxPendingBytes). An owner whose refusals are final is not held:
 * while the log is full its appends are refused at once (MQTT 5 devices are told 0x97).
 */
export class GroupCommit implements AppendSink {
  readonly counters: GroupCommitCounters = {
    groups: 0,
    appended: 0,
    duplicates: 0,
    droppedOverflow: 0,
    dedupEvicted: 0,
    overloaded: 0,
    abandoned: 0,
    refusedFull: 0,
    unstoredForgotten: 0,
  };
  private readonly unstored = new UnstoredSends();
  private lastForgottenLogAt = 0;
  private pending: Pending[] = [];
  private pendingBytes = 0;
  private scheduled = false;
  private holdTimer: NodeJS.Timeout | undefined;
  /** The flush waiting for minIntervalMs to pass since the last one. */
  private intervalTimer: NodeJS.Timeout | undefined;
  private lastFlushAt = -Infinity;
  private readonly maxBatch: number;
  private readonly maxPending: number;
  private readonly maxPendingBytes: number;
  private readonly clock: () => number;
  /** Owners with a refused entry: their later entries are refused too (per-device order). */
  private readonly refusedOwners = new WeakSet<AppendOwner>();
  private closed = false;
  private fullSince = 0;
  private lastOverloadLogAt = 0;
  private writeFailing = false;

  constructor(
    private readonly log: CommitLog,
    private readonly options: GroupCommitOptions = {},
  ) {
    this.maxBatch = options.maxBatch ?? 5000;
    this.maxPending = options.maxPending ?? 50_000;
    this.maxPendingBytes = options.maxPendingBytes ?? 64 * 1024 * 1024;
    this.clock = options.clock ?? Date.now;
  }

  append(entry: LogEntry, done: AppendCallback, owner?: AppendOwner): void {
    if (this.closed) {
      this.settle({ entry, done, owner, bytes: 0 }, new EdgebridgeError('EB_ERR_LOG_CLOSED', SHUTTING_DOWN));
      return;
    }
    if (owner !== undefined && this.refusedOwners.has(owner)) {
      this.settle(
        { entry, done, owner, bytes: 0 },
        new EdgebridgeError('EB_ERR_LOG_WRITE', 'an earlier publish of this connection was refused; later ones are refused too, to keep their order'),
      );
      return;
    }
    if (owner?.finalRefusals && entry.qos > 0 && this.holdTimer !== undefined) {
      // Told at once rather than held: its device learns the message was not stored. (Only while
      // a hold re-checks the room: otherwise it waits for the next flush, which checks it.)
      this.refuseForRoom({ entry, done, owner, bytes: 0 }, 'EB_ERR_LOG_FULL', LOG_FULL);
      return;
    }
    const bytes = recordBytes(entry);
    if (this.pending.length >= this.maxPending || this.pendingBytes + bytes > this.maxPendingBytes) {
      this.counters.overloaded++;
      this.logOverload();
      const message = `${this.pending.length} publishes (${this.pendingBytes} bytes) are already waiting to be stored`;
      if (owner?.finalRefusals) {
        this.refuseForRoom({ entry, done, owner, bytes }, 'EB_ERR_INGRESS_OVERLOADED', message);
        return;
      }
      this.refuseOwner(owner);
      this.settle({ entry, done, owner, bytes }, new EdgebridgeError('EB_ERR_INGRESS_OVERLOADED', message));
      return;
    }
    this.pending.push({ entry, done, owner, bytes });
    this.pendingBytes += bytes;
    if (!this.scheduled && !this.holdTimer) {
      this.scheduled = true;
      const wait = this.options.schedule ? 0 : this.lastFlushAt + (this.options.minIntervalMs ?? 0) - performance.now();
      if (wait >= 1) {
        this.intervalTimer = setTimeout(() => this.flush(), wait);
      } else {
        // setImmediate runs after this turn's I/O callbacks: everything parsed from the sockets
        // in this turn lands in the same transaction.
        (this.options.schedule ?? setImmediate)(() => this.flush());
      }
    } else if (this.intervalTimer && (this.pending.length >= GROUP_ENOUGH_RECORDS || this.pendingBytes >= GROUP_ENOUGH_BYTES)) {
      // A group this large already spreads the transaction's fixed cost thin: it does not wait
      // for the interval (like Kafka's batch.size beside linger.ms), so traffic with few
      // publishes in flight is not held to one group per interval.
      clearTimeout(this.intervalTimer);
      this.intervalTimer = undefined;
      setImmediate(() => this.flush());
    }
  }

  /** True while acknowledgements are held because storage is full. */
  get holding(): boolean {
    return this.holdTimer !== undefined;
  }

  /** Publishes waiting to be stored. */
  get waiting(): number {
    return this.pending.length;
  }

  /** Space may have been freed (the forwarder removed records): retry a held group now. */
  release(): void {
    if (!this.holdTimer) return;
    clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    this.flush();
  }

  /** Writes everything pending now (unless storage is full under backpressure). */
  flush(): void {
    this.scheduled = false;
    clearTimeout(this.intervalTimer);
    this.intervalTimer = undefined;
    this.lastFlushAt = performance.now();
    this.dropAbandoned();
    while (this.pending.length > 0 && !this.holdTimer) {
      let admitted: number;
      try {
        admitted = this.admit(this.pending.slice(0, this.groupLength()));
      } catch (err) {
        // The size check could not be made (the log cannot be read): storing unchecked could
        // pass the limit; refuse the group like a failed write (devices resend it).
        const group = this.pending.splice(0, this.groupLength());
        for (const p of group) this.pendingBytes -= p.bytes;
        this.failGroup(group, logError('EB_ERR_LOG_WRITE', this.log.file, 'check the log size', err));
        continue;
      }
      if (admitted === 0) {
        // One that could not fit even in an empty log would hold everything behind it for good
        // (the config schema prevents it; this is the last line): refused, the others go on.
        const head = this.pending[0]!;
        if (this.options.storage && admissionBytes(head.bytes) > this.options.storage.recordBytes - EMPTY_LOG_BYTES) {
          this.pending.shift();
          this.pendingBytes -= head.bytes;
          if (!head.owner?.finalRefusals) this.refuseOwner(head.owner);
          this.settle(head, new EdgebridgeError('EB_ERR_INGRESS_PAYLOAD_TOO_LARGE', 'the message is larger than storage.maxBytes can ever hold'));
          continue;
        }
        this.refuseWaitingFinal();
        if (this.pending.length === 0) return;
        this.hold();
        return;
      }
      const group = this.pending.splice(0, admitted);
      for (const p of group) {
        this.pendingBytes -= p.bytes;
        // Decided now, after every earlier entry's fate (abandoned ones included), not on arrival.
        const dedup = this.unstored.resolve(p.entry.dedup);
        if (dedup !== p.entry.dedup) p.entry = { ...p.entry, dedup };
      }
      let results: AppendResult[];
      try {
        results = this.log.append(
          group.map((p) => p.entry),
          this.clock(),
        );
      } catch (err) {
        this.failGroup(group, err as Error);
        continue;
      }
      this.counters.groups++;
      let last = 0;
      let stored = 0;
      for (let i = 0; i < group.length; i++) {
        const r = results[i]!;
        if (r === 'duplicate') this.counters.duplicates++;
        else {
          last = r;
          stored++;
        }
        this.settle(group[i]!, null, r);
      }
      this.counters.appended += stored;
      if (this.writeFailing) {
        this.writeFailing = false;
        this.options.onWriteResult?.(null);
      }
      if (stored > 0) this.options.onCommit?.(last, stored);
    }
  }

  /** How many waiting entries the next group takes: maxBatch, and maxBatchBytes (at least one). */
  private groupLength(): number {
    const maxBytes = this.options.maxBatchBytes ?? Infinity;
    let bytes = 0;
    let n = 0;
    while (n < this.pending.length && n < this.maxBatch) {
      bytes += admissionBytes(this.pending[n]!.bytes);
      if (bytes > maxBytes && n > 0) break;
      n++;
    }
    return n;
  }

  /**
   * A group whose write failed is refused (no acknowledgement; the devices resend). So that a
   * device's later publishes cannot be stored ahead of its refused one, every waiting entry of
   * the same owners is refused with it, and so are the owners' next appends.
   */
  private failGroup(group: readonly Pending[], err: Error): void {
    const failure = err instanceof EdgebridgeError ? err : new EdgebridgeError('EB_ERR_LOG_WRITE', err.message, { cause: err });
    const owners = new Set<AppendOwner>();
    for (const p of group) if (p.owner !== undefined) owners.add(p.owner);
    for (const o of owners) this.refuseOwner(o);
    const followers = this.pending.filter((p) => p.owner !== undefined && owners.has(p.owner));
    if (followers.length > 0) {
      this.pending = this.pending.filter((p) => p.owner === undefined || !owners.has(p.owner));
      for (const p of followers) this.pendingBytes -= p.bytes;
    }
    this.writeFailing = true;
    this.options.onWriteResult?.(failure);
    for (const p of group) this.settle(p, failure);
    for (const p of followers) this.settle(p, failure);
  }

  private refuseOwner(owner: AppendOwner | undefined): void {
    if (owner !== undefined) this.refusedOwners.add(owner);
  }

  /**
   * QoS 1/2 entries whose connection closed cannot be acknowledged any more: they are dropped and
   * the device sends them again, in order. QoS 0 ones are kept: nothing would resend them, and a
   * sensor that wakes, publishes QoS 0 and disconnects at once would otherwise lose every reading.
   */
  private dropAbandoned(): void {
    const isAbandoned = (p: Pending) => p.owner?.closed === true && p.entry.qos > 0;
    if (!this.pending.some(isAbandoned)) return;
    const abandoned = this.pending.filter(isAbandoned);
    this.pending = this.pending.filter((p) => !isAbandoned(p));
    for (const p of abandoned) {
      this.pendingBytes -= p.bytes;
      this.counters.abandoned++;
      this.settle(p, new EdgebridgeError('EB_ERR_LOG_WRITE', 'the connection closed before the message was stored'));
    }
  }

  /** Calls back one append; a throwing callback must not take the other appends down with it. */
  private settle(p: Pending, err: Error | null, result?: AppendResult): void {
    if (!this.unstored.settled(p.entry.dedup, err === null)) this.reportForgotten();
    try {
      p.done(err, result);
    } catch (callbackErr) {
      this.options.logger?.error({ err: describeError(callbackErr) }, 'append callback threw');
    }
  }

  /**
   * The log is full: waiting appends whose refusals are final are refused now, not held. (QoS 0
   * ones are held like any: there is no acknowledgement to tell their device.)
   */
  private refuseWaitingFinal(): void {
    const isFinal = (p: Pending) => p.owner?.finalRefusals === true && p.entry.qos > 0;
    if (!this.pending.some(isFinal)) return;
    const refused = this.pending.filter(isFinal);
    this.pending = this.pending.filter((p) => !isFinal(p));
    for (const p of refused) {
      this.pendingBytes -= p.bytes;
      this.refuseForRoom(p, 'EB_ERR_LOG_FULL', LOG_FULL);
    }
  }

  /**
   * Refuses a final-refusal owner's append for lack of room, unless it is a duplicate of a
   * stored reading (a resend whose acknowledgement was lost): that needs no room, and is
   * acknowledged as the duplicate it is (the device must not be told it was not stored). Only
   * once every earlier send of it is settled: a first send still waiting may yet be dropped, and
   * an older reading with the same key must not stand in for it.
   */
  private refuseForRoom(p: Pending, code: 'EB_ERR_LOG_FULL' | 'EB_ERR_INGRESS_OVERLOADED', message: string): void {
    let duplicate = false;
    const key = p.entry.dedup?.key;
    try {
      duplicate =
        key !== undefined &&
        !this.unstored.holds(p.entry.dedup) &&
        // the index lookup before the scan of what waits (up to maxQueuedRecords under overload)
        this.log.isDuplicate(p.entry.dedup, this.clock()) &&
        !this.pending.some((q) => q !== p && q.entry.dedup?.key.equals(key));
    } catch {
      // the index cannot be read: refused like the rest
    }
    if (duplicate) {
      this.counters.duplicates++;
      this.settle(p, null, 'duplicate');
      return;
    }
    if (code === 'EB_ERR_LOG_FULL') this.counters.refusedFull++;
    this.settle(p, new EdgebridgeError(code, message));
  }

  private hold(): void {
    this.holdTimer = setTimeout(() => this.release(), this.options.holdRetryMs ?? 200);
    this.holdTimer.unref();
  }

  private logOverload(): void {
    const now = Date.now();
    if (now - this.lastOverloadLogAt < 60_000) return;
    this.lastOverloadLogAt = now;
    this.options.logger?.warn(
      { code: 'EB_ERR_INGRESS_OVERLOADED', waiting: this.pending.length, waitingBytes: this.pendingBytes, total: this.counters.overloaded },
      'too many publishes waiting to be stored: refusing new ones (no PUBACK) until the log catches up; further ones are counted, logged at most once a minute',
    );
  }

  /**
   * How many entries from the head of `group` fit under storage.maxBytes, after applying the
   * overflow policy. A burst larger than the room left is split rather than held whole, so
   * ingest stalls only while not even one record fits.
   */
  private admit(group: readonly Pending[]): number {
    const storage = this.options.storage;
    if (!storage || this.log.isClosed) return group.length;
    const sizes = group.map((p) => admissionBytes(p.bytes));
    const budget = storage.recordBytes;
    const room = (): number => budget - this.log.pageBytes();
    const fitting = (): number => {
      let left = room();
      let n = 0;
      while (n < sizes.length && left >= sizes[n]!) left -= sizes[n++]!;
      return n;
    };
    let n = fitting();
    if (n < group.length) {
      const need = sizes.reduce((a, b) => a + b, 0);
      const position = storage.forwardPosition();
      // Records already in Kafka go first: the forwarder removes them in bulk, once a second,
      // and until then they would count as full (and cost unforwarded records or dedup keys).
      for (let round = 0; round < 64 && room() < need; round++) {
        if (this.log.removeForwarded(position, 5000) === 0) break;
      }
      // Records whose MQTT 5 message expiry passed would never be sent: they go before anything
      // that still counts (whatever the overflow policy; the forwarder moves over the gaps).
      for (let round = 0; round < 64 && room() < need; round++) {
        if (this.log.dropMessageExpired(this.clock(), storage.forwardBatchRecords ?? 100_000, 5000) === 0) break;
      }
      // overflow: drop-oldest: the policy the operator chose drops unforwarded records next.
      if (storage.overflow === 'drop-oldest') {
        for (let round = 0; round < 64 && room() < need; round++) {
          const dropped = this.log.dropOldest(position, Math.max(group.length * 2, 100));
          if (dropped === 0) break;
          this.counters.droppedOverflow += dropped;
        }
      }
      // Nothing (more) to forward yet still full: the dedup index is what fills the storage.
      // Acknowledged data comes first; shorten the dedup memory rather than refuse messages.
      for (let round = 0; round < 64 && room() < need; round++) {
        if (storage.overflow === 'backpressure' && this.log.hasRecordsAfter(position)) break;
        const evicted = this.log.pruneDedupOldest(Math.max(group.length * 4, 1000));
        if (evicted === 0) break;
        this.counters.dedupEvicted += evicted;
      }
      n = fitting();
    }
    // Hysteresis: "full" starts when nothing fits and ends below 90 % of the records' share, so
    // a log hovering at its limit does not log a pair of lines per removal.
    if (n === 0) this.setFull(true);
    else if (this.fullSince !== 0 && room() >= budget * 0.1) this.setFull(false);
    return n;
  }

  private setFull(full: boolean): void {
    const logger = this.options.logger;
    if (full && this.fullSince === 0) {
      this.fullSince = Date.now();
      logger?.warn(
        {
          code: 'EB_ERR_LOG_FULL',
          usedBytes: this.log.usedBytes(),
          recordBytes: this.options.storage?.recordBytes,
          overflow: this.options.storage?.overflow,
        },
        'commit log full: holding acknowledgements until the forwarder frees space (MQTT 5 publishes are refused with reason code 0x97 meanwhile)',
      );
    } else if (!full && this.fullSince !== 0) {
      logger?.info({ heldForMs: Date.now() - this.fullSince }, 'commit log has space again: acknowledging');
      this.fullSince = 0;
    }
  }

  private reportForgotten(): void {
    this.counters.unstoredForgotten++;
    const now = Date.now();
    if (now - this.lastForgottenLogAt < 60_000) return;
    this.lastForgottenLogAt = now;
    this.options.logger?.warn(
      { code: 'EB_ERR_INGRESS_OVERLOADED', forgotten: this.counters.unstoredForgotten },
      'too many unstored first sends to remember: the DUP resend of the oldest is checked against the dedup index and may be taken for a retransmit (logged at most once a minute)',
    );
  }

  /** Flushes what is in flight and refuses new appends. Held groups are failed (not acknowledged). */
  close(): void {
    clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    this.flush();
    clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    this.closed = true;
    const left = this.pending.splice(0);
    this.pendingBytes = 0;
    for (const p of left) this.settle(p, new EdgebridgeError('EB_ERR_LOG_CLOSED', SHUTTING_DOWN));
  }
}
