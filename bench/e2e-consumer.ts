// End-to-end latency: a read_committed kafkajs consumer of the route's topic, its own process.
// Each record's payload carries the time its publish was *scheduled* (open-loop.ts: "st"); the
// latency is the time the record became visible here minus that. Commands on stdin:
// `expect RUN N` (prints `done RUN` once N measured records of RUN are in), `report` (prints the
// histograms as one JSON line). Prints `ready` once it has joined its group.
import { createHistogram, type RecordableHistogram } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import kafkajs from 'kafkajs';

const args = JSON.parse(process.argv[2] ?? '{}') as { brokers: string[]; topic: string };
const kafka = new kafkajs.Kafka({ brokers: args.brokers, clientId: 'edgebridge-bench-e2e', logLevel: kafkajs.logLevel.NOTHING });
const consumer = kafka.consumer({
  groupId: `edgebridge-bench-e2e-${process.pid}-${Date.now()}`,
  readUncommitted: false, // read_committed: a record counts once its transaction is committed
  maxWaitTimeInMs: 20,
  sessionTimeout: 10_000,
});

interface Run {
  hist: RecordableHistogram;
  count: number;
  max: number;
  expect?: number;
}
const runs = new Map<string, Run>();
const run = (id: string): Run => {
  let r = runs.get(id);
  if (!r) runs.set(id, (r = { hist: createHistogram({ lowest: 1, highest: 3_600_000_000 }), count: 0, max: 0 }));
  return r;
};
const checkDone = (id: string, r: Run): void => {
  if (r.expect !== undefined && r.count >= r.expect) {
    r.expect = undefined;
    process.stdout.write(`done ${id}\n`);
  }
};

let warmups = 0;
let unparsable = 0;
consumer.on(consumer.events.GROUP_JOIN, () => process.stdout.write('ready\n'));
await consumer.connect();
await consumer.subscribe({ topic: args.topic, fromBeginning: true });
await consumer.run({
  autoCommit: false,
  eachBatch: async ({ batch }) => {
    const now = performance.timeOrigin + performance.now();
    for (const m of batch.messages) {
      try {
        const v = JSON.parse(m.value?.toString() ?? '') as { r?: string; st?: number; w?: number };
        if (v.w === 1 || v.st === undefined) {
          warmups++;
          continue;
        }
        const id = v.r ?? '';
        const r = run(id);
        const us = Math.max(1, Math.round((now - v.st) * 1000));
        r.hist.record(us);
        r.count++;
        if (us > r.max) r.max = us;
        checkDone(id, r);
      } catch {
        unparsable++;
      }
    }
  },
});

createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, id, n] = line.trim().split(' ');
  if (cmd === 'expect' && id !== undefined) {
    const r = run(id);
    r.expect = Number(n);
    checkDone(id, r);
  } else if (cmd === 'report') {
    const out: Record<string, unknown> = {};
    for (const [key, r] of runs) {
      out[key] = {
        count: r.count,
        p50Ms: r.hist.percentile(50) / 1000,
        p99Ms: r.hist.percentile(99) / 1000,
        p999Ms: r.hist.percentile(99.9) / 1000,
        maxMs: r.max / 1000,
      };
    }
    process.stdout.write(`${JSON.stringify({ runs: out, warmups, unparsable })}\n`);
  }
});
const stop = (): void => {
  void consumer.disconnect().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 3000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
