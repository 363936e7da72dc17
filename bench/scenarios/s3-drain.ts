// Scenario 3: drain of a backlog. The gateway's Kafka bootstrap address is a gate held closed
// while a backlog is ingested (1M records; quick 100k); then the gate opens while a live open-loop
// generator at 25 % of max keeps publishing. Drain rate = backlog / (time the forwarder passed the
// backlog's last offset - time of its first forwarded record); live PUBACK p99 during the drain vs
// after it. Ceiling: a raw kafkajs batch producer (own process) sending as many records of the
// same shape (keys = the same device ids, same payload size, same partition count), idempotent
// and transactional, measured in the same run.
import { finishOpenLoop, jsonResult, runMqttjs, startOpenLoop, type OpenLoopResult } from '../lib/generators.js';
import type { Context, Scenario, ScenarioResult } from '../lib/context.js';
import { KafkaGate, createTopic, partitionCount } from '../lib/kafka.js';
import { startNode, waitFor } from '../lib/proc.js';
import { Gateway } from '../lib/targets.js';
import { errorText, log, round, script } from '../lib/util.js';
import { roundAll } from './s1-ingest.js';

interface RawResult {
  mode: string;
  count: number;
  batches: number;
  elapsedMs: number;
  rate: number;
}

export const s3: Scenario = {
  id: 3,
  key: 's3',
  title: 'Drain of a backlog with live traffic, vs a raw kafkajs batch producer',
  async run(ctx: Context): Promise<ScenarioResult> {
    const cfg = ctx.config.s3;
    const max = await ctx.maxRate();
    const liveRate = Math.max(10, Math.round(max.rate * cfg.liveFraction));
    const gate = await KafkaGate.create(ctx.kafka.port);
    const topic = ctx.topic('s3');
    const fillTag = `s3-fill-${Date.now().toString(36)}`;
    const fill = { processes: 2, clients: 10, window: 10 };
    const result: Record<string, unknown> = {
      method: {
        ...cfg,
        liveRate,
        maxRate: round(max.rate),
        maxRateSource: max.source,
        fill,
        gate: 'kafka.brokers points at a TCP proxy that drops connections until opened (no mock: the real broker behind it)',
        gatewayConfig: 'forward.retry.maxMs 1000 (so the reconnect after the gate opens is not a 30 s backoff); storage.maxBytes 4GiB (room for the backlog)',
      },
    };
    let gw: Gateway | undefined;
    try {
      gw = await Gateway.start(
        { brokers: [gate.address], topic, forward: { retry: { initialMs: 250, maxMs: 1000 } }, storage: { maxBytes: '4GiB' } },
        { forwarding: false },
      );
      // 1. the backlog, with Kafka unreachable
      const t0 = performance.now();
      const filled = await runMqttjs(gw.url, {
        ...fill,
        payloadBytes: cfg.payloadBytes,
        count: Math.ceil(cfg.backlog / fill.processes),
        tag: fillTag,
        timeoutMs: 30 * 60_000,
      });
      const before = await gw.status();
      result.backlog = { records: before.backlog, ingestRate: round(filled.rate), buildMs: round(performance.now() - t0), storageBytes: before.storageBytes, forwarderState: before.forwarder };
      log(`s3 backlog ${before.backlog} records built at ${Math.round(filled.rate)} msg/s (forwarder ${before.forwarder})`);
      if (before.forwarded !== 0) throw new Error(`the gate leaked: ${before.forwarded} records forwarded while closed`);

      // 2. open the gate with live traffic running; wait until the forwarder passes the backlog
      const live = await startOpenLoop(gw.url, { rate: liveRate, clients: cfg.liveClients, payloadBytes: cfg.payloadBytes, tag: `s3-live-${Date.now().toString(36)}`, warmupMs: 0, runId: 'drain' });
      const poller = gw.poll(100);
      const openedAt = performance.timeOrigin + performance.now();
      gate.open();
      const drainDeadline = Math.max(180_000, (before.backlog / 2000) * 1000);
      let liveDrain: OpenLoopResult;
      try {
        await waitFor('the forwarder to pass the backlog', async () => (await gw!.status()).forwardPosition >= before.lastOffset || undefined, {
          timeoutMs: drainDeadline,
          intervalMs: 100,
        });
      } finally {
        liveDrain = await finishOpenLoop(live);
      }
      const samples = await poller.stop();
      const doneAt = performance.timeOrigin + performance.now();
      const first = samples.find((s) => s.forwarded > 0);
      const done = samples.find((s) => s.forwardPosition >= before.lastOffset);
      const endAt = done?.at ?? doneAt;
      const firstAt = first?.at ?? openedAt;
      const drainRate = before.backlog / ((endAt - firstAt) / 1000);
      result.drain = {
        records: before.backlog,
        rate: round(drainRate),
        rateFromOpen: round(before.backlog / ((endAt - openedAt) / 1000)),
        firstForwardAfterOpenMs: round(firstAt - openedAt),
        drainMs: round(endAt - firstAt),
        peakRssMiB: round(Math.max(...samples.map((s) => s.rss)) / 2 ** 20),
      };
      result.liveDuringDrain = roundAll(liveDrain);
      log(`s3 drain ${Math.round(drainRate)} records/s (first forward ${Math.round(firstAt - openedAt)} ms after open); live PUBACK p99 ${liveDrain.p99Ms.toFixed(1)} ms`);

      // 3. the same live traffic without a drain
      await gw.waitDrained(120_000);
      const steady = await startOpenLoop(gw.url, { rate: liveRate, clients: cfg.liveClients, payloadBytes: cfg.payloadBytes, tag: `s3-steady-${Date.now().toString(36)}`, warmupMs: 1000, durationMs: cfg.steadyMs + 1000, runId: 'steady' });
      const liveSteady = await jsonResult<OpenLoopResult>(steady, cfg.steadyMs + 60_000);
      result.liveWithoutDrain = roundAll(liveSteady);
      result.liveP99Ratio = round(liveDrain.p99Ms / liveSteady.p99Ms);
      log(`s3 live PUBACK p99 without drain ${liveSteady.p99Ms.toFixed(1)} ms`);
    } catch (err) {
      result.gatewayError = errorText(err);
      log(`s3 gateway part FAILED: ${errorText(err)}`);
    } finally {
      await gw?.stop();
      await gate.stop();
    }

    // 4. the ceiling: a raw kafkajs producer, same records, same partitions (gateway stopped)
    const records = (result.backlog as { records?: number } | undefined)?.records ?? cfg.backlog;
    const partitions = await partitionCount(ctx.kafka.brokers, topic).catch(() => 3);
    const devices = Array.from({ length: fill.processes * fill.clients }, (_, i) => `${fillTag}-p${Math.floor(i / fill.clients)}-${i % fill.clients}`);
    const raw: Record<string, unknown> = {};
    for (const mode of cfg.rawModes) {
      try {
        const rawTopic = ctx.topic(`s3raw-${mode}`);
        await createTopic(ctx.kafka.brokers, rawTopic, partitions || 3);
        const child = startNode(`raw-${mode}`, script('raw-producer'), {
          brokers: ctx.kafka.brokers,
          topic: rawTopic,
          count: records,
          payloadBytes: cfg.payloadBytes,
          devices,
          batchRecords: 5000,
          batchBytes: 900_000,
          mode,
        });
        const r = await jsonResult<RawResult>(child, 30 * 60_000);
        raw[mode] = { ...roundAll(r), partitions };
        log(`s3 raw kafkajs ${mode}: ${Math.round(r.rate)} records/s`);
      } catch (err) {
        raw[mode] = { error: errorText(err) };
      }
    }
    result.rawProducer = raw;
    const drainRate = (result.drain as { rate?: number } | undefined)?.rate;
    const rate = (m: string) => (raw[m] as { rate?: number } | undefined)?.rate;
    if (drainRate !== undefined) {
      result.ratioVsIdempotent = round(drainRate / (rate('idempotent') ?? NaN));
      if (rate('transactional') !== undefined) result.ratioVsTransactional = round(drainRate / rate('transactional')!);
    }
    if (result.gatewayError !== undefined) throw Object.assign(new Error(String(result.gatewayError)), { partial: result });
    return result;
  },
};
