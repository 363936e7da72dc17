// A closed-loop QoS 1 load generator (MQTT.js), run as its own process so it does not share an
// event loop with the broker under test. Each client keeps `window` publishes in flight; the run
// lasts `durationMs`, or until `count` publishes (over all clients) are acknowledged. Prints one
// JSON line of results on stdout.
import { createHistogram } from 'node:perf_hooks';
import mqtt from 'mqtt';
import { newBootId, reading, variedReading } from './lib/payload.js';

interface LoadArgs {
  url: string;
  clients: number;
  window: number;
  durationMs?: number;
  count?: number;
  payloadBytes: number;
  /** Device ids are `${prefix}-${i}` (the topic's {deviceId}); MQTT client ids too. */
  prefix: string;
  /** Readings that compress like real telemetry instead of padded ones. */
  varied?: boolean;
  /** MQTT 3.1.1 (4, the default) or MQTT 5. */
  protocolVersion?: 4 | 5;
}

const args = JSON.parse(process.argv[2] ?? '{}') as LoadArgs;
const latency = createHistogram();
const bootId = newBootId();
let acked = 0;
let sent = 0;
let stopped = false;
let lastAck = 0;
let bytes = 0;

const clients = await Promise.all(
  Array.from({ length: args.clients }, (_, i) =>
    mqtt.connectAsync(args.url, { clientId: `${args.prefix}-${i}`, clean: true, reconnectPeriod: 0, keepalive: 60, protocolVersion: args.protocolVersion ?? 4 }),
  ),
);
const perClient = args.count !== undefined ? Math.ceil(args.count / args.clients) : Infinity;
const startedAt = performance.timeOrigin + performance.now();
const started = performance.now();
if (args.durationMs !== undefined) setTimeout(() => (stopped = true), args.durationMs);
await Promise.all(
  clients.map(
    (client, c) =>
      new Promise<void>((resolve, reject) => {
        let inflight = 0;
        let seq = 0;
        const topic = `devices/${args.prefix}-${c}/telemetry`;
        client.once('error', reject);
        client.once('close', () => {
          if (inflight > 0 || (!stopped && seq < perClient)) reject(new Error(`client ${c} closed by the broker`));
        });
        const pump = (): void => {
          while (!stopped && inflight < args.window && seq < perClient) {
            inflight++;
            sent++;
            const t0 = process.hrtime.bigint();
            const payload = (args.varied ? variedReading : reading)(bootId, ++seq, args.payloadBytes);
            bytes += payload.length;
            // MQTT 5: a PUBACK reason code >= 0x80 (a refusal) fails the run, as a closed connection does
            client.publish(topic, payload, { qos: 1 }, (err) => {
              if (err) return reject(err);
              latency.record(process.hrtime.bigint() - t0);
              acked++;
              inflight--;
              lastAck = performance.now();
              if (inflight === 0 && (stopped || seq >= perClient)) resolve();
              else pump();
            });
          }
        };
        pump();
      }),
  ),
);
const elapsed = lastAck - started;
await Promise.all(clients.map((c) => c.endAsync(true)));
process.stdout.write(
  `${JSON.stringify({
    acked,
    sent,
    elapsedMs: elapsed,
    rate: acked / (elapsed / 1000),
    p50Ms: latency.percentile(50) / 1e6,
    p99Ms: latency.percentile(99) / 1e6,
    p999Ms: latency.percentile(99.9) / 1e6,
    payloadBytes: bytes / Math.max(1, sent),
    startedAt,
    lastAckAt: performance.timeOrigin + lastAck,
  })}\n`,
);
process.exit(0);
