// Scenario 5: bytes the gateway process writes to disk per message (/proc/PID/io write_bytes,
// all its threads: ingest, SQLite WAL and checkpoints, the forwarder), forwarding on, steady
// state (after a warm-up, until everything measured is forwarded), at 200- and 63-byte payloads.
import { jsonResult, runMqttjs, startOpenLoop, type OpenLoopResult } from '../lib/generators.js';
import type { Context, Scenario, ScenarioResult } from '../lib/context.js';
import { ioCounters } from '../lib/proc.js';
import { Gateway } from '../lib/targets.js';
import { errorText, log, median, round } from '../lib/util.js';

interface DiskRun {
  round: number;
  payloadBytes: number;
  messages?: number;
  writeBytes?: number;
  cancelledWriteBytes?: number;
  bytesPerMessage?: number;
  perPayload?: number;
  storageBytesPerRecord?: number;
  error?: string;
}

export const s5: Scenario = {
  id: 5,
  key: 's5',
  title: 'Disk bytes written per message (write_bytes), 200 B and 63 B payloads, forwarding on',
  async run(ctx: Context): Promise<ScenarioResult> {
    const cfg = ctx.config.s5;
    const runs: DiskRun[] = [];
    // the figure is steady from run to run (±3 %): two rounds are enough, and keep the full run short
    for (let r = 1; r <= Math.min(ctx.config.rounds, 2); r++) {
      for (const payloadBytes of r % 2 ? cfg.payloads : [...cfg.payloads].reverse()) {
        const gw = await Gateway.start({ brokers: ctx.kafka.brokers, topic: ctx.topic('s5') });
        try {
          const tag = `s5-${payloadBytes}-${Date.now().toString(36)}`;
          const load = { processes: 2, clients: 10, window: 10, payloadBytes, timeoutMs: 10 * 60_000 };
          await runMqttjs(gw.url, { ...load, count: Math.ceil(cfg.warmup / 2), tag: `${tag}-warm` });
          await gw.waitDrained(120_000);
          const s0 = await gw.status();
          const io0 = ioCounters(gw.pid);
          await runMqttjs(gw.url, { ...load, count: Math.ceil(cfg.messages / 2), tag });
          const s1 = await gw.waitDrained(180_000);
          const io1 = ioCounters(gw.pid);
          const messages = s1.received - s0.received;
          const writeBytes = io1.write_bytes - io0.write_bytes;
          const run: DiskRun = {
            round: r,
            payloadBytes,
            messages,
            writeBytes,
            cancelledWriteBytes: io1.cancelled_write_bytes - io0.cancelled_write_bytes,
            bytesPerMessage: round(writeBytes / messages),
            perPayload: round(writeBytes / messages / payloadBytes),
            storageBytesPerRecord: round(s1.storageBytes / Math.max(1, s1.received)),
          };
          runs.push(run);
          log(`s5 round ${r} ${payloadBytes} B: ${Math.round(writeBytes / messages)} bytes written per message (${messages} messages)`);
        } catch (err) {
          runs.push({ round: r, payloadBytes, error: errorText(err) });
          log(`s5 round ${r} ${payloadBytes} B FAILED: ${errorText(err)}`);
        } finally {
          await gw.stop();
        }
      }
    }
    // A site's steady load, not the maximum: at 1,000 msg/s group commits are small, and what each
    // transaction writes besides its records (about 20 KiB) decides the bytes per message.
    const steady: Record<string, unknown>[] = [];
    for (const intervalMs of cfg.steadyIntervalsMs) {
      const gw = await Gateway.start({ brokers: ctx.kafka.brokers, topic: ctx.topic('s5s'), storage: { groupCommitIntervalMs: intervalMs } });
      try {
        const s0 = await gw.status();
        const io0 = ioCounters(gw.pid);
        const gen = await startOpenLoop(gw.url, { rate: cfg.steadyRate, clients: 50, payloadBytes: 200, tag: `s5s-${intervalMs}-${Date.now().toString(36)}`, warmupMs: 0, durationMs: cfg.steadyMs });
        const puback = await jsonResult<OpenLoopResult>(gen, cfg.steadyMs + 60_000);
        const s1 = await gw.waitDrained(120_000);
        const io1 = ioCounters(gw.pid);
        const messages = s1.received - s0.received;
        const groups = (s1 as unknown as { groupCommits?: number }).groupCommits ?? NaN;
        const groups0 = (s0 as unknown as { groupCommits?: number }).groupCommits ?? NaN;
        const run = {
          groupCommitIntervalMs: intervalMs,
          rate: cfg.steadyRate,
          messages,
          bytesPerMessage: round((io1.write_bytes - io0.write_bytes) / messages),
          meanGroup: round(messages / (groups - groups0)),
          pubackP50Ms: round(puback.p50Ms),
          pubackP99Ms: round(puback.p99Ms),
        };
        steady.push(run);
        log(`s5 steady ${cfg.steadyRate} msg/s, groupCommitIntervalMs ${intervalMs}: ${run.bytesPerMessage} bytes per message, groups of ${run.meanGroup}, PUBACK p50 ${run.pubackP50Ms} ms`);
      } catch (err) {
        steady.push({ groupCommitIntervalMs: intervalMs, error: errorText(err) });
        log(`s5 steady ${intervalMs} ms FAILED: ${errorText(err)}`);
      } finally {
        await gw.stop();
      }
    }
    const medians: Record<string, { bytesPerMessage: number; perPayload: number }> = {};
    for (const p of cfg.payloads) {
      const rs = runs.filter((r) => r.payloadBytes === p && r.error === undefined);
      medians[String(p)] = { bytesPerMessage: round(median(rs.map((r) => r.bytesPerMessage!))), perPayload: round(median(rs.map((r) => r.perPayload!))) };
    }
    return {
      method: { ...cfg, note: 'write_bytes delta of the gateway process (/proc/PID/io) over the measured messages, from after a drained warm-up until they are all committed to Kafka' },
      runs,
      medians,
      steady,
    };
  },
};
