import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
// @ts-expect-error plain ESM script shared with `npm run kafka:start`
import { startKafka, waitForKafka } from '../../scripts/kafka.mjs';

declare module 'vitest' {
  export interface ProvidedContext {
    kafkaBrokers: string[];
  }
}

/**
 * Integration tests run against a real broker: the one in KAFKA_BROKERS, or one started here from
 * the Apache Kafka jars. If it cannot start, the whole run fails with the reason: never skipped.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const given = process.env.KAFKA_BROKERS;
  if (given) {
    const brokers = given.split(',').map((b) => b.trim());
    await waitForKafka(brokers, { timeoutMs: 30_000 });
    project.provide('kafkaBrokers', brokers);
    return async () => undefined;
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'edgebridge-test-kafka-'));
  const started = Date.now();
  const kafka = await startKafka({ dataDir });
  process.stderr.write(`test kafka ready on ${kafka.brokers[0]} in ${Date.now() - started} ms (${dataDir})\n`);
  project.provide('kafkaBrokers', kafka.brokers);
  return async () => {
    await kafka.stop();
    rmSync(dataDir, { recursive: true, force: true });
  };
}
