// Scenario 7: kafka.compression — bytes sent upstream per message (the record batches as Kafka
// stores them: the topic's segment files, control markers included) and the gateway's CPU per
// message, for none, gzip, lz4 and zstd, with readings that compress like real telemetry.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runMqttjs } from '../lib/generators.js';
import type { Context, Scenario, ScenarioResult } from '../lib/context.js';
import { cpuSeconds } from '../lib/proc.js';
import { Gateway } from '../lib/targets.js';
import { errorText, log, median, round } from '../lib/util.js';

type Codec = 'none' | 'gzip' | 'lz4' | 'zstd';

interface CodecRun {
  round: number;
  codec: Codec;
  messages?: number;
  kafkaBytes?: number;
  bytesPerMessage?: number;
  cpuMicrosPerMessage?: number;
  error?: string;
}

/** Bytes of the topic's partition logs in the broker's data directory. */
function topicLogBytes(dataDir: string, topic: string): number {
  const logs = join(dataDir, 'logs');
  let total = 0;
  for (const dir of readdirSync(logs)) {
    if (!dir.startsWith(`${topic}-`) || !/^\d+$/.test(dir.slice(topic.length + 1))) continue;
    for (const f of readdirSync(join(logs, dir))) if (f.endsWith('.log')) total += statSync(join(logs, dir, f)).size;
  }
  return total;
}

export const s7: Scenario = {
  id: 7,
  key: 's7',
  title: 'kafka.compression: bytes upstream and gateway CPU per message (none, gzip, lz4, zstd)',
  async run(ctx: Context): Promise<ScenarioResult> {
    const cfg = ctx.config.s7;
    const runs: CodecRun[] = [];
    for (let r = 1; r <= Math.min(ctx.config.rounds, 2); r++) {
      for (const codec of r % 2 ? cfg.codecs : [...cfg.codecs].reverse()) {
        const topic = ctx.topic(`s7-${codec}`);
        const gw = await Gateway.start({ brokers: ctx.kafka.brokers, topic, kafka: { compression: codec } });
        try {
          const tag = `s7-${codec}-${Date.now().toString(36)}`;
          const load = { processes: 1, clients: 10, window: 10, payloadBytes: cfg.payloadBytes, varied: true, timeoutMs: 10 * 60_000 };
          await runMqttjs(gw.url, { ...load, count: cfg.warmup, tag: `${tag}-warm` });
          await gw.waitDrained(120_000);
          const s0 = await gw.status();
          const bytes0 = topicLogBytes(ctx.kafka.dataDir, topic);
          const cpu0 = cpuSeconds(gw.pid);
          await runMqttjs(gw.url, { ...load, count: cfg.messages, tag });
          const s1 = await gw.waitDrained(180_000);
          const messages = s1.received - s0.received;
          const kafkaBytes = topicLogBytes(ctx.kafka.dataDir, topic) - bytes0;
          const run: CodecRun = {
            round: r,
            codec,
            messages,
            kafkaBytes,
            bytesPerMessage: round(kafkaBytes / messages),
            cpuMicrosPerMessage: round(((cpuSeconds(gw.pid) - cpu0) * 1e6) / messages),
          };
          runs.push(run);
          log(`s7 round ${r} ${codec}: ${run.bytesPerMessage} bytes upstream and ${run.cpuMicrosPerMessage} µs CPU per message (${messages} messages)`);
        } catch (err) {
          runs.push({ round: r, codec, error: errorText(err) });
          log(`s7 round ${r} ${codec} FAILED: ${errorText(err)}`);
        } finally {
          await gw.stop();
        }
      }
    }
    const medians: Record<string, { bytesPerMessage: number; cpuMicrosPerMessage: number; vsNone: number }> = {};
    const of = (codec: Codec) => runs.filter((r) => r.codec === codec && r.error === undefined);
    const none = median(of('none').map((r) => r.bytesPerMessage!));
    for (const codec of cfg.codecs) {
      const bytes = median(of(codec).map((r) => r.bytesPerMessage!));
      medians[codec] = { bytesPerMessage: round(bytes), cpuMicrosPerMessage: round(median(of(codec).map((r) => r.cpuMicrosPerMessage!))), vsNone: round(bytes / none) };
    }
    return {
      method: {
        ...cfg,
        note: 'bytes: growth of the topic partitions\' segment files in the broker (record batches as sent, transaction markers included); CPU: utime+stime of the gateway process (all threads) per message, ingest and forwarding; readings of 3-4 digit samples of a drifting signal',
      },
      runs,
      medians,
    };
  },
};
