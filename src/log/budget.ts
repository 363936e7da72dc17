/**
 * How storage.maxBytes is shared out. The WAL holds changed pages until a checkpoint copies them
 * into the database file, and counts against the limit: it is checkpointed (and truncated) at
 * `walLimitBytes`, and one transaction writes at most `maxTransactionBytes` (or one record, if
 * larger), so even a WAL that just passed its limit stays within `walReserveBytes`. Records are
 * admitted against what is left, less a few pages of slack for the b-tree pages a group commit
 * dirties beyond its records.
 */
export interface StorageBudget {
  readonly walLimitBytes: number;
  readonly maxTransactionBytes: number;
  readonly walReserveBytes: number;
  /** What records (and the dedup index) may use. */
  readonly recordBytes: number;
  /** The admission estimate of the largest record a publish can make. */
  readonly largestRecordBytes: number;
}

/** About what an empty log's pages take (its tables and indexes): no record can use it. */
export const EMPTY_LOG_BYTES = 64 * 1024;

/** Pages kept free for the b-tree pages a group commit dirties beyond its records. */
export const ADMIT_SLACK_BYTES = 32 * 1024;

/** A record's estimated disk cost: pages are not filled to the brim. */
export function admissionBytes(recordBytes: number): number {
  return Math.ceil(recordBytes * 1.25);
}

/** Upper bounds of a record's topic and device ID, beyond its payload (see recordBytes). */
const RECORD_OVERHEAD_BYTES = 1024 + 96;

export function storageBudget(maxBytes: number, maxPayloadBytes: number): StorageBudget {
  const largestRecordBytes = admissionBytes(maxPayloadBytes + RECORD_OVERHEAD_BYTES);
  const walLimitBytes = Math.min(16 * 1024 * 1024, Math.floor(maxBytes / 16));
  const maxTransactionBytes = Math.max(Math.floor(walLimitBytes / 2), largestRecordBytes);
  const walReserveBytes = walLimitBytes + maxTransactionBytes;
  return {
    walLimitBytes,
    maxTransactionBytes,
    walReserveBytes,
    recordBytes: maxBytes - walReserveBytes - ADMIT_SLACK_BYTES,
    largestRecordBytes,
  };
}
