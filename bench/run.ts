// npm run bench [-- --quick] [-- --only=1,5] [-- --rounds=N] [-- --mqtt=5]
//
// Starts a real Kafka broker, runs the scenarios (bench/scenarios/), and writes
// bench/results/latest.json, latest.md and latest.svg. Every broker, gateway and generator is its
// own process, so CPU, RSS and disk writes are each process's own. A scenario that fails reports
// its error and the others still run; every child process is stopped on exit, also on errors.
import { mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { benchConfig, Context, type Scenario } from './lib/context.js';
import { startBenchKafka, type BenchKafka } from './lib/kafka.js';
import { installCleanup, stopAll } from './lib/proc.js';
import { evaluateTargets, fsyncProbe, machineInfo, markdown, type BenchReport, type ScenarioOutcome } from './lib/report.js';
import { chart } from './lib/svg.js';
import { errorText, log, removeTempDirs, ROOT, round } from './lib/util.js';
import { s1 } from './scenarios/s1-ingest.js';
import { s2 } from './scenarios/s2-latency.js';
import { s3 } from './scenarios/s3-drain.js';
import { s4 } from './scenarios/s4-devices.js';
import { s5 } from './scenarios/s5-disk.js';
import { s6 } from './scenarios/s6-pi.js';
import { s7 } from './scenarios/s7-compression.js';

const SCENARIOS: Scenario[] = [s1, s2, s3, s4, s5, s6, s7];

function parseArgs(argv: string[]): { quick: boolean; only: number[]; rounds?: number; mqttVersion: 4 | 5 } {
  let quick = false;
  let only = SCENARIOS.map((s) => s.id);
  let rounds: number | undefined;
  let mqttVersion: 4 | 5 = 4;
  for (const a of argv) {
    if (a === '--quick') quick = true;
    else if (a.startsWith('--mqtt=')) {
      const v = a.slice(7);
      if (v === '5') mqttVersion = 5;
      else if (v !== '3.1.1' && v !== '4') throw new Error(`--mqtt: 3.1.1 or 5, not ${v}`);
    }
    else if (a.startsWith('--only=')) only = a.slice(7).split(',').map(Number).filter((n) => SCENARIOS.some((s) => s.id === n));
    else if (a.startsWith('--rounds=')) rounds = Math.max(1, Number(a.slice(9)) || 1);
    else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: npm run bench [-- --quick] [--only=1,2,...] [--rounds=N] [--mqtt=3.1.1|5]\n  --mqtt=5: scenario 1 publishes over MQTT 5 (both generators); the others always use 3.1.1\n');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return { quick, only, mqttVersion, ...(rounds !== undefined ? { rounds } : {}) };
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const config = benchConfig(args.quick, args.rounds, args.mqttVersion);
  const started = performance.now();
  const machine = machineInfo();
  let kafka: BenchKafka | undefined;
  installCleanup(async () => {
    await kafka?.stop();
  });
  process.on('exit', removeTempDirs); // after the children are killed (installCleanup's hook runs first)
  const outcomes: Record<string, ScenarioOutcome> = {};
  let kafkaStartMs = 0;
  try {
    log(`bench${args.quick ? ' --quick' : ''}: scenarios ${args.only.join(',')}, ${config.rounds} round(s)${args.mqttVersion === 5 ? ', scenario 1 over MQTT 5' : ''}; starting Kafka...`);
    const k0 = performance.now();
    kafka = await startBenchKafka();
    kafkaStartMs = performance.now() - k0;
    log(`Kafka ready on ${kafka.brokers.join(',')} in ${(kafkaStartMs / 1000).toFixed(1)} s`);
    const ctx = new Context(config, kafka);
    for (const scenario of SCENARIOS.filter((s) => args.only.includes(s.id))) {
      log(`--- scenario ${scenario.id}: ${scenario.title}`);
      const t0 = performance.now();
      try {
        const result = await scenario.run(ctx);
        ctx.results[scenario.key] = result;
        outcomes[scenario.key] = { id: scenario.id, title: scenario.title, ok: true, durationMs: Math.round(performance.now() - t0), result };
      } catch (err) {
        const partial = (err as { partial?: Record<string, unknown> }).partial;
        if (partial) ctx.results[scenario.key] = partial;
        outcomes[scenario.key] = {
          id: scenario.id,
          title: scenario.title,
          ok: false,
          durationMs: Math.round(performance.now() - t0),
          error: errorText(err),
          ...(partial ? { result: partial } : {}),
        };
        log(`scenario ${scenario.id} FAILED: ${errorText(err)}`);
      } finally {
        await stopAll(); // nothing of one scenario runs into the next
      }
      log(`scenario ${scenario.id} took ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    }
  } finally {
    await stopAll();
    await kafka?.stop().catch(() => undefined);
  }

  machine.loadAverageAtEnd = loadavg().map((l) => round(l));
  machine.fsyncAtEnd = fsyncProbe();
  const results = Object.fromEntries(Object.entries(outcomes).map(([k, o]) => [k, o.result]));
  const targets = evaluateTargets(results);
  const report: BenchReport = {
    schema: 'edgebridge-bench/1',
    date: new Date().toISOString(),
    wallTimeMs: Math.round(performance.now() - started),
    quick: args.quick,
    selection: args.only,
    machine,
    config: { ...config, kafka: { brokers: kafka?.brokers ?? [], startMs: Math.round(kafkaStartMs), note: 'single KRaft node (scripts/kafka.mjs), same machine' } },
    scenarios: outcomes,
    targets,
    summary: {
      passed: targets.filter((t) => t.pass === true).length,
      failed: targets.filter((t) => t.pass === false).length,
      missing: targets.filter((t) => t.pass === null).length,
    },
  };
  const dir = join(ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'latest.json'), `${JSON.stringify(report, null, 2)}\n`);
  const md = markdown(report);
  writeFileSync(join(dir, 'latest.md'), md);
  writeFileSync(join(dir, 'latest.svg'), chart(report));
  process.stdout.write(`\n${md}`);
  log(`wrote bench/results/latest.{json,md,svg} · wall time ${(report.wallTimeMs / 1000).toFixed(0)} s`);
  return Object.values(outcomes).every((o) => o.ok) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    process.stderr.write(`bench: ${errorText(err)}\n`);
    await stopAll();
    process.exit(2);
  },
);
