import type { LogRecord } from '../log/commit-log.js';
import type { EpochMark } from '../log/epochs.js';

/**
 * The forwarder's view of Kafka: small enough to be replaced by an in-memory model in unit tests
 * and in the fault simulator. KafkaSink is the real one.
 */

/** The last log offset a gateway committed to Kafka, and which log (and epoch) it came from. */
export interface Checkpoint {
  readonly logId: string;
  readonly offset: number;
  /** The epoch of `offset` (absent in checkpoints written before epochs existed). */
  readonly epoch?: string;
  /** How far Kafka has the records of each epoch, newest first, `epoch` included (log/epochs.ts). */
  readonly history?: readonly EpochMark[];
  /** Offset of the checkpoint record in the checkpoint topic partition. */
  readonly kafkaOffset?: number;
}

/** A record Kafka refuses for good, sent to the dead-letter topic instead of its own. */
export interface DeadLetter {
  readonly record: LogRecord;
  /** The Kafka error type that refused it, e.g. MESSAGE_TOO_LARGE. */
  readonly reason: string;
}

export interface ForwardBatch {
  readonly records: readonly LogRecord[];
  readonly deadLetters: readonly DeadLetter[];
}

/** What a connect found in the checkpoint partition for this gateway id. */
export interface ConnectResult {
  /** The latest checkpoint this log committed, else the latest of any (another log's), if any. */
  readonly checkpoint: Checkpoint | undefined;
  /**
   * Another writer (another process, whatever its log) claimed this gateway id since this one last
   * wrote under it: with a checkpoint, or with the probe a connect commits right after fencing
   * (unless that connect was only checking for a twin). Evidence of a twin gateway.
   */
  readonly foreignClaim: boolean;
}

export interface RecordSink {
  /**
   * Connects, fences any earlier producer with this gateway's transactional id (aborting its open
   * transaction), makes sure the topics exist, and reads this gateway's checkpoint partition.
   * `hint` is where a recent checkpoint record was, to read from there. `checking`: this connect
   * only checks for a twin (after a fence), and its probe claims nothing.
   */
  connect(options: { hint?: number; checking: boolean }): Promise<ConnectResult>;
  /**
   * Writes the batch and the checkpoint in one Kafka transaction. Resolves once committed, with
   * the checkpoint record's offset; rejects otherwise (the outcome of a failed commit is learned
   * from the checkpoint on the next connect). A RecordRejectedError means the transaction was
   * aborted because Kafka refuses a record of it for good; the producer stays usable.
   */
  send(batch: ForwardBatch, checkpoint: Checkpoint): Promise<number | undefined>;
  /** Drops the producer so the next `connect` starts from a fresh one. */
  reset(): Promise<void>;
  close(): Promise<void>;
}

/** Kafka errors that refuse a record for good: sending it again unchanged cannot succeed. */
export const REJECTION_TYPES: ReadonlySet<string> = new Set([
  'MESSAGE_TOO_LARGE',
  'RECORD_LIST_TOO_LARGE',
  'INVALID_RECORD',
  'INVALID_TIMESTAMP',
]);

const FENCED_TYPES: ReadonlySet<string> = new Set(['INVALID_PRODUCER_EPOCH', 'PRODUCER_FENCED']);

/** Missing ACLs: nothing this gateway does fixes them; an operator must grant them. */
const AUTHORIZATION_TYPES: ReadonlySet<string> = new Set([
  'TRANSACTIONAL_ID_AUTHORIZATION_FAILED',
  'TOPIC_AUTHORIZATION_FAILED',
  'GROUP_AUTHORIZATION_FAILED',
  'CLUSTER_AUTHORIZATION_FAILED',
]);

/**
 * A send aborted because Kafka refuses a record of `topic` for good (one of REJECTION_TYPES).
 * `deadLetter`: the refused record was one bound for the dead-letter topic.
 */
export class RecordRejectedError extends Error {
  constructor(
    readonly type: string,
    readonly topic: string,
    readonly deadLetter: boolean,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'RecordRejectedError';
  }
}

/** Every Kafka error type in a kafkajs error, its causes and its retrier's wrapped errors. */
export function kafkaErrorTypes(err: unknown, depth = 0, into: string[] = []): string[] {
  if (err === null || typeof err !== 'object' || depth > 5) return into;
  const e = err as { type?: unknown; cause?: unknown; originalError?: unknown; errors?: unknown[] };
  if (typeof e.type === 'string') into.push(e.type);
  kafkaErrorTypes(e.cause, depth + 1, into);
  kafkaErrorTypes(e.originalError, depth + 1, into);
  if (Array.isArray(e.errors)) for (const x of e.errors) kafkaErrorTypes(x, depth + 1, into);
  return into;
}

function messagesOf(err: unknown, depth = 0): string {
  if (err === null || typeof err !== 'object' || depth > 5) return '';
  const e = err as { message?: unknown; cause?: unknown; originalError?: unknown };
  return `${typeof e.message === 'string' ? e.message : ''} ${messagesOf(e.cause, depth + 1)} ${messagesOf(e.originalError, depth + 1)}`;
}

/** Whether Kafka says another producer with this transactional id fenced this one. */
export function isFencedError(err: unknown): boolean {
  if (kafkaErrorTypes(err).some((t) => FENCED_TYPES.has(t))) return true;
  return /fenced|producer epoch/i.test(messagesOf(err));
}

/** The authorization error type in `err`, if Kafka refused this gateway for lack of ACLs. */
export function authorizationFailure(err: unknown): string | undefined {
  return kafkaErrorTypes(err).find((t) => AUTHORIZATION_TYPES.has(t));
}

/** The rejection type in `err`, if Kafka refused a record for good. */
export function rejectionType(err: unknown): string | undefined {
  return kafkaErrorTypes(err).find((t) => REJECTION_TYPES.has(t));
}
