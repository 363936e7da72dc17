// Scenario 4: memory and CPU. The gateway's RSS idle (forwarding, no clients); with 1,000
// connected idle devices (client ids dev-N; RSS and CPU over a window); then, with the devices
// still connected, a burst of 200k messages at max rate, and RSS once all is forwarded and after
// ~10 s of quiet. Mosquitto's RSS idle and with the same 1,000 devices, for context.
import { runMqttjs } from '../lib/generators.js';
import type { Context, Scenario, ScenarioResult } from '../lib/context.js';
import { cpuMeter, MiB, sampleRss, startNode, waitFor, type Child } from '../lib/proc.js';
import { Gateway, startMosquitto, type Target } from '../lib/targets.js';
import { errorText, log, median, round, script } from '../lib/util.js';

const mib = (b: number) => round(b / MiB);

async function connectDevices(target: Target, count: number, prefix: string): Promise<Child> {
  const child = startNode('idle-clients', script('idle-clients'), { url: target.url, count, prefix });
  await child.line((l) => l === `connected ${count}`, 120_000, `${count} connections`);
  return child;
}

/** RSS over a window: median and last sample, MiB; CPU % of one core over it. */
async function window(pid: number, ms: number): Promise<{ rssMiB: number; rssLastMiB: number; rssMaxMiB: number; cpuPct: number }> {
  const cpu = cpuMeter([pid]);
  const rss = await sampleRss(pid, ms);
  return { rssMiB: mib(median(rss)), rssLastMiB: mib(rss[rss.length - 1]!), rssMaxMiB: mib(Math.max(...rss)), cpuPct: round(cpu()) };
}

export const s4: Scenario = {
  id: 4,
  key: 's4',
  title: 'RSS and CPU: idle, 1,000 connected idle devices, after a 200k-message burst',
  async run(ctx: Context): Promise<ScenarioResult> {
    const cfg = ctx.config.s4;
    const out: Record<string, unknown> = {
      method: {
        ...cfg,
        note: 'RSS from /proc/PID/status VmRSS, CPU from /proc/PID/stat utime+stime; the devices stay connected through the burst; MiB',
      },
    };
    const gw = await Gateway.start({ brokers: ctx.kafka.brokers, topic: ctx.topic('s4') });
    let devices: Child | undefined;
    try {
      out.idle = await window(gw.pid, cfg.idleWindowMs);
      log(`s4 edgebridge idle RSS ${JSON.stringify(out.idle)}`);
      devices = await connectDevices(gw, cfg.devices, 'dev');
      await waitFor(`${cfg.devices} clients in /status`, async () => (await gw.status()).mqttClients >= cfg.devices || undefined, { timeoutMs: 30_000 });
      out.devices = await window(gw.pid, cfg.devicesWindowMs);
      log(`s4 edgebridge with ${cfg.devices} devices ${JSON.stringify(out.devices)}`);
      const burst = await runMqttjs(gw.url, {
        processes: 2,
        clients: 10,
        window: 10,
        payloadBytes: cfg.payloadBytes,
        count: Math.ceil(cfg.burst / 2),
        tag: `s4-burst-${Date.now().toString(36)}`,
        timeoutMs: 10 * 60_000,
      });
      const drainedAt = performance.now();
      await gw.waitDrained(180_000);
      const forwardedAfterMs = performance.now() - drainedAt;
      const quiet = await window(gw.pid, cfg.quietMs);
      out.afterBurst = { messages: burst.acked, rate: round(burst.rate), forwardedAfterMs: round(forwardedAfterMs), ...quiet, rssMiB: quiet.rssLastMiB };
      log(`s4 edgebridge after ${burst.acked} messages ${JSON.stringify(out.afterBurst)}`);
    } finally {
      await devices?.stop(5000);
      await gw.stop();
    }

    // Mosquitto for context: its failure does not take the gateway's figures with it
    devices = undefined;
    let mosq: Target | undefined;
    try {
      mosq = await startMosquitto();
      const idle = await window(mosq.pid, Math.min(cfg.idleWindowMs, 1500));
      devices = await connectDevices(mosq, cfg.devices, 'dev');
      const withDevices = await window(mosq.pid, Math.min(cfg.devicesWindowMs, 2000));
      out.mosquitto = { idle, devices: withDevices };
      log(`s4 mosquitto idle ${idle.rssMiB} MiB, with devices ${withDevices.rssMiB} MiB`);
    } catch (err) {
      out.mosquitto = { error: errorText(err) };
      log(`s4 mosquitto FAILED: ${errorText(err)}`);
    } finally {
      await devices?.stop(5000);
      await mosq?.stop();
    }
    return out;
  },
};
