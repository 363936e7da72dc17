import { epochEnd, recordInHistory, type EpochMark, type LogEpoch } from '../log/epochs.js';
import type { Checkpoint } from './sink.js';

/** What the local log knows when the forwarder (re)connects. */
export interface LocalLogView {
  readonly logId: string;
  /** The stored forward position: only ever advanced after Kafka committed up to it. */
  readonly position: number;
  readonly epochs: readonly LogEpoch[];
  /** The highest offset handed out. */
  readonly end: number;
}

export type ResumeKind =
  /** No checkpoint in Kafka yet: the local position. */
  | 'fresh'
  /** The checkpoint is of another log (recreated, or a twin): the local position. */
  | 'other-log'
  /** The checkpoint, at or ahead of the local position, within the local log. */
  | 'checkpoint'
  /** The checkpoint is behind the local position (Kafka lost committed data): the local position. */
  | 'checkpoint-behind'
  /** The log lost records after they were forwarded; new records reuse those offsets under a later epoch. */
  | 'tail-lost'
  /** The checkpoint's epoch is not in this log, an earlier one Kafka has records of is: a restored backup. */
  | 'restored'
  /** No epoch Kafka has records of is in this log: the local position. */
  | 'diverged';

export interface ResumeDecision {
  readonly position: number;
  readonly kind: ResumeKind;
  /** Records the checkpoint shows as committed that the local position had not caught up with. */
  readonly skipped: number;
}

/** What Kafka holds of each epoch, as the checkpoint tells it (a checkpoint without epochs: genesis). */
export function kafkaHistory(checkpoint: Checkpoint, epochs: readonly LogEpoch[]): EpochMark[] {
  const own = checkpoint.epoch ?? epochs[0]?.id;
  return own === undefined ? [...(checkpoint.history ?? [])] : recordInHistory(checkpoint.history ?? [], own, checkpoint.offset);
}

/**
 * Where forwarding resumes, from the checkpoint committed in Kafka and the local log. Every
 * record at or before the result is in Kafka, and none after it is; only `diverged` cannot be
 * decided, and then the forwarder sends from the local position again (duplicates rather than
 * loss).
 *
 * The checkpoint's history says up to which offset Kafka has the records of each epoch. The
 * newest epoch of the local log that Kafka has records of decides: Kafka has it up to that
 * offset or up to where the epoch ends here, whichever comes first (a restored backup may have
 * kept less of it than Kafka has, or more); the log's earlier epochs came before it and are in
 * Kafka; its later epochs were written since and are not.
 */
export function resumePosition(checkpoint: Checkpoint | undefined, log: LocalLogView): ResumeDecision {
  const local = log.position;
  const keep = (kind: ResumeKind): ResumeDecision => ({ position: local, kind, skipped: 0 });
  if (!checkpoint) return keep('fresh');
  if (checkpoint.logId !== log.logId) return keep('other-log');
  const { epochs } = log;
  const history = new Map(kafkaHistory(checkpoint, epochs).map((m) => [m.epoch, m.through]));
  let index = epochs.length - 1;
  while (index >= 0 && !history.has(epochs[index]!.id)) index--;
  if (index < 0) return keep('diverged');
  const end = epochEnd(epochs, index, log.end);
  const through = history.get(epochs[index]!.id)!;
  const target = Math.min(through, end);
  const current = epochs[index]!.id === (checkpoint.epoch ?? epochs[0]?.id);
  const kind: ResumeKind = !current ? 'restored' : through > end ? 'tail-lost' : 'checkpoint';
  // The local position only ever advances after Kafka committed, so it is a safe lower bound;
  // moving back would send records twice.
  if (target < local) return keep(kind === 'checkpoint' ? 'checkpoint-behind' : kind);
  return { position: target, kind, skipped: target - local };
}
