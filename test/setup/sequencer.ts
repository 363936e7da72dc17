import { relative } from 'node:path';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * The files that take longest on their own (seconds on a quiet 2-core machine, one file at a
 * time), in the order they start. With two workers the suite ends when its last file ends:
 * starting the long ones first keeps a long file from starting alone near the end
 * (longest-processing-time-first). A clean clone has no vitest cache to order by, so the order
 * must not depend on one. The files that start Kafka nodes of their own (3 JVMs for the cluster)
 * alternate with files that mostly wait (protocol timers, gateway processes) rather than with the
 * CPU-bound simulation. Files not listed run after these, in vitest's own order; a file that grows
 * past ~30 s belongs in this list.
 */
export const LONG_FILES: readonly (readonly [file: string, seconds: number])[] = [
  // issue 12's many-gateway, quorum-loss and rolling-restart tests (a 3-node cluster; ~3 min
  // expected): first, and the other cluster file only once they are about done
  ['test/integration/fleet.test.ts', 180],
  ['test/integration/commands-v5.test.ts', 50],
  ['test/sim/simulation.test.ts', 83], // CPU-bound, no Kafka
  ['test/integration/commands.test.ts', 46],
  ['test/integration/broker-failover.test.ts', 92], // a 3-node cluster
  ['test/integration/kafka-outage.test.ts', 77], // a Kafka node of its own, started 3 times
  ['test/integration/mqtt5.test.ts', 33],
  ['test/integration/kafka-security.test.ts', 51], // a secured Kafka node of its own
  ['test/integration/reload.test.ts', 32],
  ['test/integration/mqtt-security.test.ts', 25],
  ['test/integration/checkpoint-group.test.ts', 35],
];

const rank = new Map(LONG_FILES.map(([file], i) => [file, i]));

export default class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const base = await super.sort(files);
    const position = (spec: TestSpecification): number =>
      rank.get(relative(spec.project.config.root, spec.moduleId).split('\\').join('/')) ?? LONG_FILES.length;
    // Array.prototype.sort is stable: unlisted files keep the base order among themselves.
    return [...base].sort((a, b) => position(a) - position(b));
  }
}
