import type { DedupMark } from './commit-log.js';

/** Most first sends remembered as unstored (about 100 bytes each). */
const MAX_UNSTORED_SENDS = 50_000;

/**
 * First sends (DUP=0) of DUP-only packets that were not stored: the log refused them, too many
 * were waiting, or their connection closed before their group commit. Their DUP resend must be
 * stored, not taken for a retransmit of an earlier packet with the same client, packet id and
 * payload whose key the log still remembers: packet ids restart after a reconnect and constant
 * payloads (on/off) are common, so without this an acknowledged reading would be dropped as a
 * duplicate. GroupCommit notes every refusal and resolves each entry's mark just before writing
 * it, in arrival order, so a resend is decided after its first send's fate. In memory only: a
 * gateway restart between such a first send and its resend forgets it (README: exceptions).
 */
export class UnstoredSends {
  private readonly keys = new Set<string>();

  constructor(private readonly limit = MAX_UNSTORED_SENDS) {}

  /** The mark to write with: a DUP resend of an unstored first send is stored like a first send. */
  resolve(mark: DedupMark | undefined): DedupMark | undefined {
    if (mark === undefined || this.keys.size === 0) return mark;
    if (!this.keys.delete(mark.key.toString('base64'))) return mark;
    return mark.mode === 'check' ? { ...mark, mode: 'remember' } : mark;
  }

  /** Whether the mark's key is a first send that was not stored (its resend must be stored). */
  holds(mark: DedupMark | undefined): boolean {
    return mark !== undefined && this.keys.has(mark.key.toString('base64'));
  }

  /** After the entry was stored or refused. Returns false when the bound made it forget one. */
  settled(mark: DedupMark | undefined, stored: boolean): boolean {
    if (mark === undefined || mark.mode !== 'remember') return true;
    const id = mark.key.toString('base64');
    this.keys.delete(id);
    if (stored) return true;
    this.keys.add(id);
    if (this.keys.size <= this.limit) return true;
    this.keys.delete(this.keys.values().next().value!);
    return false;
  }

  get size(): number {
    return this.keys.size;
  }
}
