// An open-loop QoS 1 publisher (MQTT.js), its own process: publishes go out on a fixed schedule
// (rate per second, round robin over the clients) whatever the broker does, and every latency
// is measured from the publish's *scheduled* time, so a stalled broker cannot hide its stall
// (no coordinated omission). Each payload carries its scheduled time ("st", epoch ms), the run id
// ("r") and whether it is warm-up ("w"), for the end-to-end consumer. Prints `running` once
// connected; runs for durationMs or until `stop` on stdin; prints one JSON line.
import { createHistogram } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import mqtt from 'mqtt';
import { newBootId, reading } from './lib/payload.js';

interface Args {
  url: string;
  rate: number;
  clients: number;
  payloadBytes: number;
  tag: string;
  warmupMs: number;
  durationMs?: number;
  runId?: string;
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const bootId = newBootId();
const latency = createHistogram({ lowest: 1, highest: 3_600_000_000 });
const sendLag = createHistogram({ lowest: 1, highest: 3_600_000_000 });
const clients = await Promise.all(
  Array.from({ length: args.clients }, (_, i) =>
    mqtt.connectAsync(args.url, { clientId: `${args.tag}-${i}`, clean: true, reconnectPeriod: 0, keepalive: 60 }),
  ),
);
for (const c of clients) c.on('error', (err) => process.stderr.write(`open-loop: ${err.message}\n`));
const topics = clients.map((_, i) => `devices/${args.tag}-${i}/telemetry`);
const seqs = clients.map(() => 0);

let stopping = false;
let scheduled = 0;
let sent = 0;
let acked = 0;
let measured = 0;
let maxUs = 0;
const intervalMs = 1000 / args.rate;
const t0 = performance.now();
const epoch0 = performance.timeOrigin + t0;
const us = (ms: number) => Math.max(1, Math.round(ms * 1000));

function tick(): void {
  if (stopping) return;
  const now = performance.now();
  if (args.durationMs !== undefined && now - t0 >= args.durationMs) return stop();
  // every publish due by now goes out, in schedule order
  while (t0 + scheduled * intervalMs <= now) {
    const at = t0 + scheduled * intervalMs;
    const warm = at - t0 < args.warmupMs;
    const c = scheduled % clients.length;
    scheduled++;
    const extra = `,"r":"${args.runId ?? ''}","st":${(epoch0 + (at - t0)).toFixed(3)},"w":${warm ? 1 : 0}`;
    sendLag.record(us(now - at));
    if (!warm) measured++;
    sent++;
    clients[c]!.publish(topics[c]!, reading(bootId, ++seqs[c]!, args.payloadBytes, extra), { qos: 1 }, (err) => {
      if (err) return;
      acked++;
      if (!warm) {
        const l = us(performance.now() - at);
        latency.record(l);
        if (l > maxUs) maxUs = l;
      }
      if (stopping && acked === sent) finish();
    });
  }
  const next = t0 + scheduled * intervalMs - performance.now();
  setTimeout(tick, Math.max(0, Math.floor(next)));
}

const endAt = { t: 0 };
function stop(): void {
  if (stopping) return;
  stopping = true;
  endAt.t = performance.now();
  if (acked === sent) finish();
  // publishes never acknowledged count as the wait until the deadline
  setTimeout(finish, 30_000).unref();
}

let finished = false;
function finish(): void {
  if (finished) return;
  finished = true;
  const elapsedMs = endAt.t - t0;
  process.stdout.write(
    `${JSON.stringify({
      scheduled,
      sent,
      acked,
      measured,
      elapsedMs,
      rate: sent / (elapsedMs / 1000),
      p50Ms: latency.percentile(50) / 1000,
      p99Ms: latency.percentile(99) / 1000,
      p999Ms: latency.percentile(99.9) / 1000,
      maxMs: maxUs / 1000,
      sendLagP99Ms: sendLag.percentile(99) / 1000,
    })}\n`,
  );
  void Promise.all(clients.map((c) => c.endAsync(true))).finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}

createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'stop') stop();
});
process.stdout.write('running\n');
tick();
