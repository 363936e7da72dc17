// Scenario 1: maximum durable QoS 1 ingest, edgebridge forwarding to Kafka, against Mosquitto
// and plain aedes, with two generators: MQTT.js (2 processes) and Debian's C client
// (8 × mosquitto_pub -l -q 1). Targets alternate round by round; medians and ratios. Every run's
// count is checked against what the target itself took in; for edgebridge, the time from the
// last PUBACK until every record is committed to Kafka is measured too.
import { runMosquittoPub, runMqttjs } from '../lib/generators.js';
import type { Context, Scenario, ScenarioResult } from '../lib/context.js';
import { cpuMeter, rssBytes, runqueueMeter, waitFor } from '../lib/proc.js';
import { drainedAt, Gateway, startTarget, type Target, type TargetName } from '../lib/targets.js';
import { errorText, log, median, rotate, round, tempDir } from '../lib/util.js';
import { rmSync } from 'node:fs';
import { loadavg } from 'node:os';

export type GeneratorName = 'mqttjs' | 'cgen';

export interface IngestRun {
  round: number;
  generator: GeneratorName;
  target: TargetName;
  rate: number;
  messages: number;
  elapsedMs: number;
  /** What the target says it took in: must equal `messages`. */
  targetCount: number;
  verified: boolean;
  /** CPU of the target process over the run, % of one core. */
  cpuPct: number;
  /** Time its threads waited for a CPU (run queue) over the run, % of wall time: the machine's noise. */
  runqWaitPct: number;
  /** Peak RSS of the target during the run (MiB). */
  rssPeakMiB: number;
  p50Ms?: number;
  p99Ms?: number;
  /** edgebridge: from the last PUBACK until the backlog was 0 (all committed to Kafka). */
  lastAckToKafkaMs?: number;
  /** 1-minute load average at the end of the run: how busy the shared machine was. */
  loadAvg1?: number;
  error?: string;
}

export interface IngestOptions {
  readonly generator: GeneratorName;
  readonly target: TargetName;
  readonly round: number;
  readonly targetCpus?: string | undefined;
  readonly generatorCpus?: string | undefined;
  readonly maxOldSpaceMb?: number | undefined;
  readonly mqttjsProcesses?: number;
  readonly mqttjsClients?: number;
  readonly durationMs?: number;
  readonly cgenLines?: number;
  readonly label: string;
  /** MQTT 3.1.1 (4, the default) or MQTT 5, for both generators and the warm-up. */
  readonly protocolVersion?: 4 | 5;
}

/** One run: start the target, run one generator against it, check the count, stop it. */
export async function ingestRun(ctx: Context, o: IngestOptions): Promise<IngestRun> {
  const cfg = ctx.config.s1;
  const tag = `${o.label}-${o.target}-${o.generator}-r${o.round}-${Date.now().toString(36)}`;
  const target: Target = await startTarget(o.target, {
    brokers: ctx.kafka.brokers,
    topic: ctx.topic(o.label),
    cpus: o.targetCpus,
    maxOldSpaceMb: o.maxOldSpaceMb,
  });
  const dir = tempDir('lines');
  const poller = target instanceof Gateway ? target.poll(100) : undefined;
  let rssPeak = 0;
  const rssTimer = setInterval(() => {
    try {
      rssPeak = Math.max(rssPeak, rssBytes(target.pid));
    } catch {
      // exited
    }
  }, 200);
  try {
    // warm-up (not measured): a fresh Node broker is several times slower in its first seconds
    const protocolVersion = o.protocolVersion ?? 4;
    const warm = await runMqttjs(target.url, { ...cfg.mqttjs, processes: 1, durationMs: cfg.warmupMs, cpus: o.generatorCpus, tag: `${tag}-warm`, protocolVersion });
    if (target instanceof Gateway) await target.waitDrained(cfg.drainTimeoutMs);
    const before = await waitFor(`${o.target} to count the warm-up`, async () => {
      const n = await target.received();
      return n >= warm.acked ? n : undefined;
    }, { timeoutMs: 5000, intervalMs: 250 });
    const cpu = cpuMeter([target.pid]);
    const runq = runqueueMeter(target.pid);
    let run: Pick<IngestRun, 'rate' | 'messages' | 'elapsedMs' | 'p50Ms' | 'p99Ms'>;
    let lastAckAt: number;
    if (o.generator === 'mqttjs') {
      const m = cfg.mqttjs;
      const r = await runMqttjs(target.url, {
        ...m,
        processes: o.mqttjsProcesses ?? m.processes,
        clients: o.mqttjsClients ?? m.clients,
        durationMs: o.durationMs ?? m.durationMs,
        cpus: o.generatorCpus,
        tag,
        protocolVersion,
      });
      run = { rate: r.rate, messages: r.acked, elapsedMs: r.elapsedMs, p50Ms: r.p50Ms, p99Ms: r.p99Ms };
      lastAckAt = r.lastAckAt;
    } else {
      const c = cfg.cgen;
      const r = await runMosquittoPub(target.port, { ...c, lines: o.cgenLines ?? c.lines, cpus: o.generatorCpus, tag, dir, protocolVersion });
      run = { rate: r.rate, messages: r.sent, elapsedMs: r.wallMs };
      lastAckAt = r.lastExitAt;
    }
    const cpuPct = cpu();
    const runqWaitPct = runq();
    let lastAckToKafkaMs: number | undefined;
    if (target instanceof Gateway) {
      await target.waitDrained(cfg.drainTimeoutMs);
      const seenAt = performance.timeOrigin + performance.now();
      const samples = await poller!.stop();
      // the first time either the background poll or the wait saw the backlog at 0
      const drained = Math.min(drainedAt(samples, lastAckAt)?.at ?? Infinity, seenAt);
      lastAckToKafkaMs = Math.max(0, drained - lastAckAt);
    }
    // Mosquitto's $SYS counter is refreshed every second: wait for it (with a deadline)
    const targetCount = await waitFor(
      `${o.target} to count ${run.messages} publishes`,
      async () => {
        const n = (await target.received()) - before;
        return n >= run.messages ? n : undefined;
      },
      { timeoutMs: 5000, intervalMs: 250 },
    ).catch(async () => (await target.received()) - before);
    return {
      round: o.round,
      generator: o.generator,
      target: o.target,
      ...run,
      targetCount,
      verified: targetCount === run.messages,
      cpuPct,
      runqWaitPct,
      rssPeakMiB: rssPeak / 2 ** 20,
      ...(lastAckToKafkaMs !== undefined ? { lastAckToKafkaMs } : {}),
      loadAvg1: loadavg()[0]!,
    };
  } finally {
    clearInterval(rssTimer);
    await poller?.stop();
    await target.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Medians per generator and target, over the runs that succeeded. */
export function mediansOf(runs: readonly IngestRun[]): Record<string, Record<string, Record<string, number>>> {
  const out: Record<string, Record<string, Record<string, number>>> = {};
  for (const gen of new Set(runs.map((r) => r.generator))) {
    out[gen] = {};
    for (const t of new Set(runs.map((r) => r.target))) {
      const rs = runs.filter((r) => r.generator === gen && r.target === t && r.error === undefined);
      if (rs.length === 0) continue;
      const m = (k: keyof IngestRun) => round(median(rs.map((r) => Number(r[k] ?? NaN))));
      out[gen]![t] = { rate: m('rate'), cpuPct: m('cpuPct'), runqWaitPct: m('runqWaitPct'), rssPeakMiB: m('rssPeakMiB'), p50Ms: m('p50Ms'), p99Ms: m('p99Ms'), lastAckToKafkaMs: m('lastAckToKafkaMs'), runs: rs.length };
    }
  }
  return out;
}

/** Ratios of medians (a/b) per generator, and the median of per-round ratios. */
export function ratiosOf(runs: readonly IngestRun[], a: TargetName, b: TargetName): Record<string, { ofMedians: number; perRound: number[]; medianOfRounds: number }> {
  const out: Record<string, { ofMedians: number; perRound: number[]; medianOfRounds: number }> = {};
  const med = mediansOf(runs);
  for (const gen of Object.keys(med)) {
    const perRound: number[] = [];
    for (const r of new Set(runs.map((x) => x.round))) {
      const ra = runs.find((x) => x.round === r && x.generator === gen && x.target === a && !x.error);
      const rb = runs.find((x) => x.round === r && x.generator === gen && x.target === b && !x.error);
      if (ra && rb) perRound.push(round(ra.rate / rb.rate));
    }
    out[gen] = { ofMedians: round((med[gen]?.[a]?.rate ?? NaN) / (med[gen]?.[b]?.rate ?? NaN)), perRound, medianOfRounds: round(median(perRound)) };
  }
  return out;
}

export const s1: Scenario = {
  id: 1,
  key: 's1',
  title: 'Max durable QoS 1 ingest with forwarding vs Mosquitto and plain aedes (MQTT.js and mosquitto_pub generators)',
  async run(ctx: Context): Promise<ScenarioResult> {
    const targets: TargetName[] = ['mosquitto', 'aedes', 'edgebridge'];
    const runs: IngestRun[] = [];
    for (let r = 1; r <= ctx.config.rounds; r++) {
      for (const generator of ['mqttjs', 'cgen'] as const) {
        for (const target of rotate(targets, r - 1)) {
          try {
            const run = await ingestRun(ctx, { generator, target, round: r, label: 's1', protocolVersion: ctx.config.mqttVersion });
            runs.push(run);
            log(`s1 round ${r} ${generator.padEnd(6)} ${target.padEnd(10)} ${Math.round(run.rate)} msg/s (${run.messages} msgs, target counted ${run.targetCount}, cpu ${Math.round(run.cpuPct)}%, run-queue wait ${Math.round(run.runqWaitPct)}%${run.lastAckToKafkaMs !== undefined ? `, in Kafka ${Math.round(run.lastAckToKafkaMs)} ms after last PUBACK` : ''})`);
          } catch (err) {
            runs.push({ round: r, generator, target, rate: NaN, messages: 0, elapsedMs: 0, targetCount: 0, verified: false, cpuPct: NaN, runqWaitPct: NaN, rssPeakMiB: NaN, error: errorText(err) });
            log(`s1 round ${r} ${generator} ${target} FAILED: ${errorText(err)}`);
          }
        }
      }
    }
    const ebLags = runs.filter((r) => r.target === 'edgebridge' && r.lastAckToKafkaMs !== undefined).map((r) => r.lastAckToKafkaMs!);
    return {
      method: {
        protocol: ctx.config.mqttVersion === 5 ? 'MQTT 5 (MQTT.js protocolVersion 5, mosquitto_pub -V mqttv5)' : 'MQTT 3.1.1',
        mqttjs: ctx.config.s1.mqttjs,
        cgen: { ...ctx.config.s1.cgen, note: 'mosquitto_pub -l -q 1 (max in flight 20 each); at stdin EOF it waits for every PUBACK, then DISCONNECTs (checked: the target’s count equals the lines sent); rate = lines / wall time until every process exited. At most 65,000 lines per process: mosquitto_pub 2.0.11 stops early, exit code 0, once its message ids wrap past 65,535' },
        order: 'targets rotate each round (A/B/C, B/C/A, ...); a fresh target process per run',
        warmup: `${ctx.config.s1.warmupMs} ms of MQTT.js load (1 process) on each fresh target before the measured run, not measured`,
        verification: 'each run: the target’s own count (edgebridge /status received+duplicates, Mosquitto $SYS, aedes publish events) equals the generator’s',
      },
      runs: runs.map((r) => roundAll(r)),
      medians: mediansOf(runs),
      ratios: { edgebridgeVsMosquitto: ratiosOf(runs, 'edgebridge', 'mosquitto'), edgebridgeVsAedes: ratiosOf(runs, 'edgebridge', 'aedes') },
      allVerified: runs.every((r) => r.verified),
      lastAckToKafkaMs: { median: round(median(ebLags)), max: round(Math.max(...ebLags)), runs: ebLags.map(round) },
    };
  },
};

export function roundAll<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, typeof v === 'number' ? round(v) : v])) as T;
}
