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
  /** Offset of the checkpoint record in the checkpoint topic partition (checkpoints written as records, before the checkpoint group). */
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
  /** The checkpoint was read from records in the checkpoint topic (an earlier version's), not from the checkpoint group. */
  readonly legacy?: boolean;
  /** `migrated` was set, yet the checkpoint group had no offset (expired, or deleted). */
  readonly groupLost?: boolean;
}

/** What `send` resolves with when the checkpoint went to the checkpoint group (no record): stored as the hint, it marks the log migrated. */
export const CHECKPOINT_IN_GROUP = -1;

export interface RecordSink {
  /**
   * Connects, fences any earlier producer with this gateway's transactional id (aborting its open
   * transaction), makes sure the topics exist, and reads this gateway's checkpoint partition.
   * `hint` is where a recent checkpoint record was, to read from there. `checking`: this connect
   * only checks for a twin (after a fence), and its probe claims nothing. `migrated`: this log's
   * checkpoints have been in the checkpoint group already (CHECKPOINT_IN_GROUP was stored as
   * the hint): a group without an offset then means it expired or was deleted, and checkpoint
   * records (an earlier version's) are not read again.
   */
  connect(options: { hint?: number; checking: boolean; migrated?: boolean }): Promise<ConnectResult>;
  /**
   * Writes the batch and the checkpoint in one Kafka transaction. Resolves once committed, with
   * the checkpoint record's offset when the checkpoint is a record (CHECKPOINT_IN_GROUP when it
   * went to the checkpoint group); rejects otherwise (the outcome of a failed commit is learned
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

/** The topics Kafka named in its TOPIC_AUTHORIZATION_FAILED errors in `err` (topic creation names them). */
export function deniedTopics(err: unknown): string[] {
  const topics = errorChain(err)
    .filter((e) => (e as { type?: unknown }).type === 'TOPIC_AUTHORIZATION_FAILED')
    .map((e) => (e as { topic?: unknown }).topic)
    .filter((t): t is string => typeof t === 'string');
  return [...new Set(topics)];
}

/** `err` and every error it wraps (cause, originalError, errors), depth-first. */
function errorChain(err: unknown, depth = 0, into: object[] = []): object[] {
  if (err === null || typeof err !== 'object' || depth > 5) return into;
  into.push(err);
  const e = err as { cause?: unknown; originalError?: unknown; errors?: unknown[] };
  errorChain(e.cause, depth + 1, into);
  errorChain(e.originalError, depth + 1, into);
  if (Array.isArray(e.errors)) for (const x of e.errors) errorChain(x, depth + 1, into);
  return into;
}

/** Kafka error types of a refused SASL login (kafkajs also wraps them in KafkaJSSASLAuthenticationError). */
const SASL_TYPES: ReadonlySet<string> = new Set(['SASL_AUTHENTICATION_FAILED', 'UNSUPPORTED_SASL_MECHANISM', 'ILLEGAL_SASL_STATE']);

/** OpenSSL's verification errors of the broker's certificate (node:tls error codes). */
const TLS_VERIFY_CODES: ReadonlySet<string> = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_REVOKED',
  'INVALID_CA',
  'INVALID_PURPOSE',
  'PATH_LENGTH_EXCEEDED',
]);
const TLS_TIME_CODES: ReadonlySet<string> = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID']);

/**
 * Kafka and this gateway cannot authenticate each other: the broker refused the SASL login, or
 * the TLS connection failed (the broker's certificate cannot be verified, or the handshake was
 * refused). No retry fixes that by itself; an operator must fix kafka.sasl / kafka.ssl (or the
 * brokers). `code`: the Kafka error type or the node:tls error code; `detail`: the client's message.
 */
export interface AuthenticationFailure {
  readonly kind: 'sasl' | 'tls';
  readonly code: string;
  readonly detail: string;
}

export function authenticationFailure(err: unknown): AuthenticationFailure | undefined {
  const chain = errorChain(err);
  for (const e of chain) {
    const { name, type, message } = e as { name?: unknown; type?: unknown; message?: unknown };
    const detail = typeof message === 'string' ? message : '';
    if (typeof type === 'string' && SASL_TYPES.has(type)) return { kind: 'sasl', code: type, detail };
    if (name === 'KafkaJSSASLAuthenticationError') return { kind: 'sasl', code: 'SASL_AUTHENTICATION_FAILED', detail };
  }
  for (const e of chain) {
    const { code, message } = e as { code?: unknown; message?: unknown };
    if (typeof code !== 'string') continue;
    if (TLS_VERIFY_CODES.has(code) || TLS_TIME_CODES.has(code) || code === 'ERR_TLS_CERT_ALTNAME_INVALID' || code.startsWith('ERR_SSL_')) {
      return { kind: 'tls', code, detail: typeof message === 'string' ? message : '' };
    }
  }
  return undefined;
}

/** Who this gateway is to Kafka, for the messages below (never the password). */
export interface KafkaIdentity {
  readonly tls: boolean;
  /** kafka.ssl.caFile; undefined: the system's CAs. */
  readonly caFile?: string | undefined;
  readonly username?: string | undefined;
  readonly mechanism?: string | undefined;
}

/** One sentence that names what is wrong and which config key to check. */
export function explainAuthenticationFailure(failure: AuthenticationFailure, identity: KafkaIdentity): string {
  if (failure.kind === 'sasl') {
    const mechanism = identity.mechanism?.toUpperCase() ?? 'none configured';
    if (failure.code === 'UNSUPPORTED_SASL_MECHANISM' || /mechanism is not supported/i.test(failure.detail)) {
      return `Kafka does not offer the SASL mechanism ${mechanism} on this listener: check kafka.sasl.mechanism (the brokers' sasl.enabled.mechanisms)`;
    }
    if (identity.username === undefined) {
      return 'Kafka asks for a SASL login and kafka.sasl is not set: check kafka.sasl';
    }
    return `Kafka refused the SASL login of user "${identity.username}" (mechanism ${mechanism}): check kafka.sasl (username, password or passwordFile, mechanism) and that the user exists on the brokers`;
  }
  const cas = identity.caFile === undefined ? "the system's CAs (kafka.ssl.caFile is not set)" : `kafka.ssl.caFile (${identity.caFile})`;
  if (TLS_VERIFY_CODES.has(failure.code)) {
    return `cannot verify the Kafka broker's certificate (${failure.code}): it is not signed by a CA in ${cas}; check kafka.ssl.caFile`;
  }
  if (TLS_TIME_CODES.has(failure.code)) {
    return `the Kafka broker's certificate is expired or not yet valid (${failure.code}): renew it on the brokers, or fix this gateway's clock`;
  }
  if (failure.code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return `the Kafka broker's certificate does not name the host it was reached at (${failure.detail.replace(/^Connection error: /, '')}): check kafka.brokers or kafka.ssl.servername`;
  }
  if (failure.code === 'ERR_SSL_WRONG_VERSION_NUMBER' || failure.code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG') {
    return `the Kafka listener does not speak TLS (${failure.code}): set kafka.ssl to false for a PLAINTEXT or SASL_PLAINTEXT listener, or point kafka.brokers at the SSL/SASL_SSL listener`;
  }
  return `the TLS handshake with the Kafka broker failed (${failure.code}): check kafka.ssl (certFile and keyFile if the brokers require client certificates)`;
}

/** The rejection type in `err`, if Kafka refused a record for good. */
export function rejectionType(err: unknown): string | undefined {
  return kafkaErrorTypes(err).find((t) => REJECTION_TYPES.has(t));
}
