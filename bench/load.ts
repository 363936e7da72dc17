// A QoS 1 load generator, run as its own process so it does not share an event loop with the
// broker under test (as aedes's benchmarks do). Prints one JSON line of results on stdout.
import { createHistogram } from 'node:perf_hooks';
import mqtt from 'mqtt';

interface LoadArgs {
  url: string;
  clients: number;
  window: number;
  durationMs: number;
  payloadBytes: number;
}

const args = JSON.parse(process.argv[2] ?? '{}') as LoadArgs;
const latency = createHistogram();
let acked = 0;
let stopped = false;
const bootId = process.pid.toString(16);
/** A firmware-sim style reading padded to about payloadBytes, so the gateway's dedup path runs. */
function reading(client: number, seq: number): string {
  const body = JSON.stringify({ deviceId: `bench-${client}`, bootId, seq, ts: Date.now(), pad: '' });
  return body.replace('"pad":""', `"pad":"${'x'.repeat(Math.max(0, args.payloadBytes - body.length))}"`);
}

const clients = await Promise.all(
  Array.from({ length: args.clients }, (_, i) =>
    mqtt.connectAsync(args.url, { clientId: `bench-${process.pid}-${i}`, clean: true, reconnectPeriod: 0 }),
  ),
);
const started = performance.now();
setTimeout(() => (stopped = true), args.durationMs);
await Promise.all(
  clients.map(
    (client, c) =>
      new Promise<void>((resolve) => {
        let inflight = 0;
        let seq = 0;
        const pump = (): void => {
          while (!stopped && inflight < args.window) {
            inflight++;
            const t0 = process.hrtime.bigint();
            client.publish(`devices/bench-${c}/telemetry`, reading(c, ++seq), { qos: 1 }, () => {
              latency.record(process.hrtime.bigint() - t0);
              acked++;
              inflight--;
              if (stopped) {
                if (inflight === 0) resolve();
              } else pump();
            });
          }
        };
        pump();
      }),
  ),
);
const elapsed = performance.now() - started;
await Promise.all(clients.map((c) => c.endAsync(true)));
process.stdout.write(
  `${JSON.stringify({
    acked,
    elapsedMs: elapsed,
    rate: acked / (elapsed / 1000),
    p50Ms: latency.percentile(50) / 1e6,
    p99Ms: latency.percentile(99) / 1e6,
  })}\n`,
);
process.exit(0);
