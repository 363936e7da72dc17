import { relative } from 'node:path';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * Seconds the longest files take on their own (a quiet 2-core machine, one file at a time). With
 * two workers the suite ends when its last file ends: starting the longest ones first keeps a long
 * file from starting alone near the end (longest-processing-time-first scheduling). A clean clone
 * has no vitest cache to order by, so the order must not depend on one. Files not listed run
 * after these, in vitest's own order; a file that grows past ~30 s belongs in this list.
 */
export const LONG_FILES: Readonly<Record<string, number>> = {
  'test/integration/broker-failover.test.ts': 92,
  'test/sim/simulation.test.ts': 83,
  'test/integration/kafka-outage.test.ts': 77,
  'test/integration/kafka-security.test.ts': 51,
  'test/integration/commands-v5.test.ts': 50,
  'test/integration/commands.test.ts': 46,
  'test/integration/mqtt5.test.ts': 33,
  'test/integration/reload.test.ts': 32,
  'test/integration/mqtt-security.test.ts': 25,
};

export default class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const base = await super.sort(files);
    const seconds = (spec: TestSpecification): number => LONG_FILES[relative(spec.project.config.root, spec.moduleId).split('\\').join('/')] ?? 0;
    // Array.prototype.sort is stable: unlisted files keep the base order among themselves.
    return [...base].sort((a, b) => seconds(b) - seconds(a));
  }
}
