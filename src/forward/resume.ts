import { epochEnd, type LogEpoch } from '../log/epochs.js';
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
  /** The checkpoint's epoch is not in this log, one of its earlier epochs is: a restored backup. */
  | 'restored'
  /** Neither the checkpoint's epoch nor any of its lineage is in this log: the local position. */
  | 'diverged';

export interface ResumeDecision {
  readonly position: number;
  readonly kind: ResumeKind;
  /** Records the checkpoint shows as committed that the local position had not caught up with. */
  readonly skipped: number;
}

/**
 * Where forwarding resumes, from the checkpoint committed in Kafka and the local log. Every
 * record at or before the result is in Kafka, and none after it is, for each case below; only
 * `diverged` cannot be decided, and then the forwarder sends from the local position again
 * (duplicates rather than loss).
 *
 * The checkpoint (epoch c, offset X) covers the log up to X as it was when it was written. If
 * epoch c is in the local log, its records up to X are the ones Kafka has, unless the log lost
 * its tail (X beyond the end of c here): then Kafka has all of c that survived, and the epochs
 * after c hold new records. If c is not here, the log was rolled back behind c's start (a
 * restored backup): the newest epoch of c's lineage found here was entirely forwarded, and the
 * epochs after it are new.
 */
export function resumePosition(checkpoint: Checkpoint | undefined, log: LocalLogView): ResumeDecision {
  const local = log.position;
  const keep = (kind: ResumeKind): ResumeDecision => ({ position: local, kind, skipped: 0 });
  if (!checkpoint) return keep('fresh');
  if (checkpoint.logId !== log.logId) return keep('other-log');
  const { epochs } = log;
  let target: number;
  let kind: ResumeKind;
  // A checkpoint written before epochs existed refers to the genesis epoch (the first).
  const index = checkpoint.epoch === undefined ? 0 : epochs.findIndex((e) => e.id === checkpoint.epoch);
  if (index >= 0) {
    const end = epochEnd(epochs, index, log.end);
    target = Math.min(checkpoint.offset, end);
    kind = checkpoint.offset > end ? 'tail-lost' : 'checkpoint';
  } else {
    const ancestor = (checkpoint.lineage ?? []).map((id) => epochs.findIndex((e) => e.id === id)).find((i) => i >= 0);
    if (ancestor === undefined) return keep('diverged');
    target = epochEnd(epochs, ancestor, log.end);
    kind = 'restored';
  }
  // The local position only ever advances after Kafka committed, so it is a safe lower bound;
  // moving back would send records twice.
  if (target < local) return keep(kind === 'checkpoint' ? 'checkpoint-behind' : kind);
  return { position: target, kind, skipped: target - local };
}
