import { setFlagsFromString } from 'node:v8';

/**
 * V8 grows an isolate's young generation (new space: two semi-spaces) from 1 MB semi-spaces up to
 * 16 MB whenever objects keep surviving scavenges: while the modules load at start, while a fleet
 * of devices connects, during any burst. It gives the space back only on a memory-reducing GC,
 * which its memory reducer starts after 10 s to 2 min of quiet: until then the gateway keeps the
 * high-water mark resident (10 MB idle after start, 20-30 MB with 1,000 idle devices, per isolate).
 *
 * So the growth is held off (V8's `semi_space_growth_factor` 1, a flag it reads at every growth
 * and that can be set at run time) except while the gateway stores or forwards at a rate where
 * 1 MB semi-spaces would cost scavenges (more than BUSY_RECORDS_PER_SECOND): then V8 grows them as
 * it would by default (factor 2), up to each isolate's maximum. The flag is process-wide: it
 * governs the forwarder's thread too. At 1,000 records/s a 1 MB semi-space fills a few times a
 * second with few survivors: the scavenges cost well under 1% of a core.
 *
 * An operator who starts node with `--semi-space-growth-factor` keeps it: nothing is changed (Node
 * does not accept that flag in NODE_OPTIONS; the check covers it anyway).
 */
export const BUSY_RECORDS_PER_SECOND = 1000;
/** Quiet seconds before growth is held off again (a burst's gaps do not flip it back and forth). */
export const QUIET_SECONDS = 5;
const V8_DEFAULT_GROWTH_FACTOR = 2;

const operatorChoice = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].some((arg) =>
  /^--semi[-_]space[-_]growth[-_]factor/.test(arg),
);
let growing = true;
/** Governors running (several gateways in one process, in tests): growth is the default again after the last. */
let governors = 0;

/**
 * Lets V8 grow the young generations (busy) or holds them at their size (quiet). Applied again
 * each time, not only on a change: V8 raises the factor to at least 2 whenever it configures a new
 * isolate's heap (Heap::ConfigureHeap), so every start of the forwarder's thread undoes the hold
 * until the next sample. Node 20 (V8 11.3) only: newer V8 may refuse a factor below 2 outright,
 * and the hold then does nothing (more memory after bursts, no other effect).
 */
export function allowYoungGenerationGrowth(allow: boolean): void {
  if (operatorChoice) return;
  growing = allow;
  setFlagsFromString(`--semi-space-growth-factor=${allow ? V8_DEFAULT_GROWTH_FACTOR : 1}`);
}

/** Whether V8 may grow the young generations now (as far as this module knows). */
export function youngGenerationGrowing(): boolean {
  return growing && !operatorChoice;
}

/**
 * Samples a count of records handled (stored plus forwarded) once a second and allows growth
 * while its rate is at or above BUSY_RECORDS_PER_SECOND, holding it off after QUIET_SECONDS below.
 */
export class YoungGenerationGovernor {
  private last: number;
  private quiet: number;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly handled: () => number, intervalMs = 1000) {
    this.last = handled();
    this.quiet = QUIET_SECONDS;
    governors++;
    allowYoungGenerationGrowth(false);
    this.timer = setInterval(() => this.sample(intervalMs), intervalMs);
    this.timer.unref();
  }

  private sample(intervalMs: number): void {
    const now = this.handled();
    const rate = ((now - this.last) * 1000) / intervalMs;
    this.last = now;
    if (rate >= BUSY_RECORDS_PER_SECOND) this.quiet = 0;
    else this.quiet++;
    allowYoungGenerationGrowth(this.quiet < QUIET_SECONDS);
  }

  /** Stops sampling; the last governor to stop gives V8 its default growth back. */
  close(): void {
    clearInterval(this.timer);
    if (--governors === 0) allowYoungGenerationGrowth(true);
  }
}
