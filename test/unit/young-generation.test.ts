import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BUSY_RECORDS_PER_SECOND, QUIET_SECONDS, YoungGenerationGovernor, allowYoungGenerationGrowth, youngGenerationGrowing } from '../../src/young-generation.js';

const newSpaceBytes = () => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')!.space_size;

describe('young generation governor', () => {
  afterEach(() => {
    vi.useRealTimers();
    setFlagsFromString('--semi-space-growth-factor=2');
  });

  it('allows growth while records are handled at the busy rate, and holds it after a quiet spell', () => {
    vi.useFakeTimers();
    let handled = 0;
    const governor = new YoungGenerationGovernor(() => handled);
    expect(youngGenerationGrowing()).toBe(false);
    handled += BUSY_RECORDS_PER_SECOND;
    vi.advanceTimersByTime(1000);
    expect(youngGenerationGrowing()).toBe(true);
    // a gap in a burst does not hold it at once
    vi.advanceTimersByTime((QUIET_SECONDS - 1) * 1000);
    expect(youngGenerationGrowing()).toBe(true);
    handled += BUSY_RECORDS_PER_SECOND - 1;
    vi.advanceTimersByTime(1000);
    expect(youngGenerationGrowing()).toBe(false);
    governor.close();
    expect(youngGenerationGrowing()).toBe(true);
  });

  it('holds V8 new space at its size while growth is held (the flag works at run time)', () => {
    allowYoungGenerationGrowth(false);
    const before = newSpaceBytes();
    const kept: object[] = [];
    for (let round = 0; round < 40; round++) {
      for (let i = 0; i < 20_000; i++) {
        const o = { i, s: `x${i}`, a: [i] };
        if (i % 3 === 0) kept.push(o);
      }
      if (kept.length > 30_000) kept.splice(0, 20_000);
    }
    expect(newSpaceBytes()).toBe(before);
    allowYoungGenerationGrowth(true);
  });
});
