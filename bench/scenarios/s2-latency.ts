// Scenario 2: end-to-end latency, publish -> record visible to a read_committed Kafka consumer,
// open loop at 25/50/75 % of edgebridge's maximum (scenario 1). Latencies are from each publish's
// scheduled time (HdrHistogram: perf_hooks.createHistogram), so a stall is not hidden.
import { jsonResult, startOpenLoop, type OpenLoopResult } from '../lib/generators.js';
import type { Context, Scenario, ScenarioResult } from '../lib/context.js';
import { startNode } from '../lib/proc.js';
import { Gateway } from '../lib/targets.js';
import { errorText, log, round, script } from '../lib/util.js';
import { roundAll } from './s1-ingest.js';

interface E2e {
  count: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
}

export const s2: Scenario = {
  id: 2,
  key: 's2',
  title: 'End-to-end latency publish -> read_committed consumer, open loop at 25/50/75 % of max',
  async run(ctx: Context): Promise<ScenarioResult> {
    const cfg = ctx.config.s2;
    const max = await ctx.maxRate();
    const topic = ctx.topic('s2');
    const gw = await Gateway.start({ brokers: ctx.kafka.brokers, topic });
    const consumer = startNode('e2e-consumer', script('e2e-consumer'), { brokers: ctx.kafka.brokers, topic }, { stdin: 'pipe' });
    const levels: Record<string, unknown>[] = [];
    try {
      await consumer.line((l) => l === 'ready', 60_000, 'consumer group join');
      // warm-up (not reported): a fresh gateway, producer and consumer are slower at first
      const warmMs = Math.max(2000, 2 * cfg.warmupMs);
      const warm = await startOpenLoop(gw.url, {
        rate: Math.max(10, Math.round(max.rate * 0.5)),
        clients: cfg.clients,
        payloadBytes: cfg.payloadBytes,
        tag: `s2-warm-${Date.now().toString(36)}`,
        warmupMs: warmMs,
        durationMs: warmMs,
        runId: 'warm',
      });
      await jsonResult<OpenLoopResult>(warm, warmMs + 60_000);
      await gw.waitDrained(60_000);
      for (const level of cfg.levels) {
        const pct = Math.round(level * 100);
        const rate = Math.max(10, Math.round(max.rate * level));
        const runId = `L${pct}`;
        try {
          const gen = await startOpenLoop(gw.url, {
            rate,
            clients: cfg.clients,
            payloadBytes: cfg.payloadBytes,
            tag: `s2-${pct}-${Date.now().toString(36)}`,
            warmupMs: cfg.warmupMs,
            durationMs: cfg.durationMs + cfg.warmupMs,
            runId,
          });
          const puback = await jsonResult<OpenLoopResult>(gen, cfg.durationMs + cfg.warmupMs + 60_000);
          const done = consumer.line((l) => l === `done ${runId}`, 120_000, `all ${puback.measured} records of ${runId} in Kafka`);
          consumer.send(`expect ${runId} ${puback.measured}`);
          await done;
          await gw.waitDrained(60_000);
          levels.push({ level, pct, rate, puback: roundAll(puback) });
          log(`s2 ${pct}% (${rate} msg/s): PUBACK p99 ${puback.p99Ms.toFixed(1)} ms`);
        } catch (err) {
          levels.push({ level, pct, rate, error: errorText(err) });
          log(`s2 ${pct}% FAILED: ${errorText(err)}`);
        }
      }
      const report = consumer.line((l) => l.startsWith('{'), 10_000, 'report');
      consumer.send('report');
      const e2e = (JSON.parse(await report) as { runs: Record<string, E2e> }).runs;
      for (const l of levels) {
        const r = e2e[`L${l.pct as number}`];
        if (r) l.endToEnd = roundAll(r);
        if (r) log(`s2 ${String(l.pct)}%: end-to-end p50 ${r.p50Ms.toFixed(1)} p99 ${r.p99Ms.toFixed(1)} p99.9 ${r.p999Ms.toFixed(1)} ms (${r.count} records)`);
      }
    } finally {
      await consumer.stop(5000);
      await gw.stop();
    }
    return {
      method: {
        ...cfg,
        maxRate: round(max.rate),
        maxRateSource: max.source,
        note: 'a warm-up run at 50 % first (not reported); latency = time the record is seen by a read_committed kafkajs consumer (own process) minus the publish’s scheduled time (in its payload); warm-up excluded; forward.commitIntervalMs default (100 ms)',
      },
      levels,
    };
  },
};
