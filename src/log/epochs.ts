/**
 * Log epochs, in the manner of Kafka's leader epochs (KIP-101): the log records, for every opening
 * by a gateway process, a random epoch id and the first offset that process hands out. Offsets are
 * unique within a log only while the log keeps its tail; once it lost it (a restored backup), new
 * records reuse offsets, but under a new epoch. A checkpoint names the epoch of its offset and up
 * to LINEAGE_LENGTH earlier epochs, which is enough to find where the local log and what Kafka
 * holds part ways.
 */
export interface LogEpoch {
  readonly id: string;
  /** The first offset handed out in this epoch. */
  readonly start: number;
}

/** How many earlier epochs (with records) a checkpoint names. */
export const LINEAGE_LENGTH = 16;

/** Index of the epoch that handed out `offset` (the last one starting at or before it); 0 for offset 0. */
export function epochIndexOf(epochs: readonly LogEpoch[], offset: number): number {
  for (let i = epochs.length - 1; i > 0; i--) if (epochs[i]!.start <= offset) return i;
  return 0;
}

/**
 * The last offset of epoch `index` in this log: the offset before the next epoch's start, or the
 * log's end for the newest one.
 */
export function epochEnd(epochs: readonly LogEpoch[], index: number, logEnd: number): number {
  const next = epochs[index + 1];
  return next === undefined ? logEnd : next.start - 1;
}

/** Epochs before `index` that hold records (an empty epoch tells nothing), newest first. */
export function lineageOf(epochs: readonly LogEpoch[], index: number, max = LINEAGE_LENGTH): string[] {
  const lineage: string[] = [];
  for (let i = index - 1; i >= 0 && lineage.length < max; i--) {
    if (epochs[i]!.start < epochs[i + 1]!.start) lineage.push(epochs[i]!.id);
  }
  return lineage;
}
