import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Installs the Mosquitto tools and Chromium if missing; starts a real Kafka broker unless KAFKA_BROKERS points at one.
    globalSetup: ['test/setup/tools.ts', 'test/setup/kafka.ts'],
    // The integration suites share one broker and a 2-core machine: run files one at a time.
    fileParallelism: false,
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 180_000,
    reporters: ['default', './test/setup/summary-reporter.ts'],
  },
});
