/**
 * Log epochs, in the manner of Kafka's leader epochs (KIP-101): the log records, for every opening
 * by a gateway process, a random epoch id and the first offset that process hands out. Offsets are
 * unique within a log only while the log keeps its tail; once it lost it (a restored backup), new
 * records reuse offsets, but under a new epoch. A checkpoint says, for the epochs Kafka has
 * records of (the newest HISTORY_LENGTH), up to which offset it has them: enough to find where
 * the local log and what Kafka holds part ways, however many backups were restored in between.
 */
export interface LogEpoch {
  readonly id: string;
  /** The first offset handed out in this epoch. */
  readonly start: number;
}

/** Kafka has the records of `epoch` up to offset `through` (and, before them, the log's earlier ones). */
export interface EpochMark {
  readonly epoch: string;
  readonly through: number;
}

/** How many epochs a checkpoint's history names. */
export const HISTORY_LENGTH = 16;

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

/**
 * The history after Kafka committed up to `through` in `epoch`: that epoch first (it never forgets
 * how far Kafka got: a restore may roll the log back, not Kafka), then the others, newest first.
 */
export function recordInHistory(history: readonly EpochMark[], epoch: string, through: number): EpochMark[] {
  const previous = history.find((m) => m.epoch === epoch)?.through ?? -1;
  return [{ epoch, through: Math.max(previous, through) }, ...history.filter((m) => m.epoch !== epoch)].slice(0, HISTORY_LENGTH);
}

/**
 * The history once Kafka has every record of this log up to `offset`: that covers the epoch of
 * `offset` up to it (that epoch moves to the front), and each earlier epoch of the log that holds
 * records up to its end. Earlier epochs keep their place, or join at the back: what ages out of
 * the history first is the oldest news, never an epoch of another branch of restores that was
 * forwarded more recently than the ancestors this branch shares with it.
 */
export function historyThrough(history: readonly EpochMark[], epochs: readonly LogEpoch[], offset: number): EpochMark[] {
  const index = epochIndexOf(epochs, offset);
  const marks = [...history];
  for (let i = index - 1; i >= Math.max(0, index - HISTORY_LENGTH); i--) {
    const end = epochEnd(epochs, i, offset);
    if (end < epochs[i]!.start) continue; // holds no records
    const at = marks.findIndex((m) => m.epoch === epochs[i]!.id);
    if (at === -1) marks.push({ epoch: epochs[i]!.id, through: end });
    else if (marks[at]!.through < end) marks[at] = { epoch: epochs[i]!.id, through: end };
  }
  return recordInHistory(marks, epochs[index]!.id, offset);
}
