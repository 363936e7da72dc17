import { defineConfig } from 'vitest/config';
import LongestFirst from './test/setup/sequencer.js';

/**
 * Test files run two at a time (EDGEBRIDGE_TEST_WORKERS=1: one at a time, as before). The
 * integration files mostly wait on Kafka, on gateway processes and on protocol timers, and share
 * the one broker the way several engineers' runs do: every file uses its own topics, gateway ids,
 * ports and directories, and none changes process-wide state.
 */
const workers = Math.max(1, Number(process.env.EDGEBRIDGE_TEST_WORKERS ?? 2) || 1);

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Installs the Mosquitto tools and Chromium if missing; starts a real Kafka broker unless KAFKA_BROKERS points at one.
    globalSetup: ['test/setup/tools.ts', 'test/setup/kafka.ts'],
    fileParallelism: workers > 1,
    maxWorkers: workers,
    // The longest files first, so that no long file starts alone near the end.
    sequence: { sequencer: LongestFirst },
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 180_000,
    reporters: ['default', './test/setup/summary-reporter.ts'],
  },
});
