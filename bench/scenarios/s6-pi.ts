// Scenario 6: a Raspberry Pi profile. The gateway on one core (`taskset -c 0 node
// --max-old-space-size=128 dist/src/cli.js start`), Mosquitto pinned the same way; generators and
// Kafka on the other core (taskset -c 1; Kafka's threads are moved back afterwards). Durable
// ingest with forwarding, both generators, alternating rounds.
import type { Context, Scenario, ScenarioResult } from '../lib/context.js';
import { pin } from '../lib/kafka.js';
import { errorText, log, rotate } from '../lib/util.js';
import { ingestRun, mediansOf, ratiosOf, roundAll, type IngestRun } from './s1-ingest.js';
import type { TargetName } from '../lib/targets.js';

export const s6: Scenario = {
  id: 6,
  key: 's6',
  title: 'Pi profile: gateway on one core with --max-old-space-size=128, vs Mosquitto on one core',
  async run(ctx: Context): Promise<ScenarioResult> {
    const cfg = ctx.config.s6;
    const previous = pin(ctx.kafka.pid, cfg.generatorCpus);
    const runs: IngestRun[] = [];
    try {
      for (let r = 1; r <= ctx.config.rounds; r++) {
        for (const generator of cfg.generators) {
          for (const target of rotate<TargetName>(['mosquitto', 'edgebridge'], r - 1)) {
            try {
              const run = await ingestRun(ctx, {
                generator,
                target,
                round: r,
                label: 's6',
                targetCpus: cfg.gatewayCpus,
                generatorCpus: cfg.generatorCpus,
                maxOldSpaceMb: target === 'edgebridge' ? cfg.maxOldSpaceMb : undefined,
                mqttjsProcesses: 1,
                mqttjsClients: cfg.mqttjsClients,
                durationMs: cfg.durationMs,
                cgenLines: cfg.cgenLines,
              });
              runs.push(run);
              log(`s6 round ${r} ${generator.padEnd(6)} ${target.padEnd(10)} ${Math.round(run.rate)} msg/s (cpu ${Math.round(run.cpuPct)}%, peak RSS ${Math.round(run.rssPeakMiB)} MiB)`);
            } catch (err) {
              runs.push({ round: r, generator, target, rate: NaN, messages: 0, elapsedMs: 0, targetCount: 0, verified: false, cpuPct: NaN, runqWaitPct: NaN, rssPeakMiB: NaN, error: errorText(err) });
              log(`s6 round ${r} ${generator} ${target} FAILED: ${errorText(err)}`);
            }
          }
        }
      }
    } finally {
      pin(ctx.kafka.pid, previous);
    }
    return {
      method: { ...cfg, note: 'gateway/Mosquitto: taskset -c 0; generators (1 MQTT.js process, or 8 mosquitto_pub) and Kafka: taskset -c 1' },
      runs: runs.map((r) => roundAll(r)),
      medians: mediansOf(runs),
      ratios: { edgebridgeVsMosquitto: ratiosOf(runs, 'edgebridge', 'mosquitto') },
      allVerified: runs.every((r) => r.verified),
    };
  },
};
