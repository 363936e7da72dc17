// npm run bench: QoS 1 ingest through edgebridge side by side with baselines, in one run.
// Scenarios are interleaved round by round so machine noise hits them alike; medians are
// reported, with ratios against Mosquitto (the reference C broker) and plain aedes.
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Aedes } from 'aedes';
import { pino } from 'pino';
import { parseConfig } from '../src/config/load.js';
import { Gateway } from '../src/gateway.js';

const ROOT = join(import.meta.dirname, '..', '..');
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 5000);
const LOAD = { clients: 20, window: 10, payloadBytes: 200 };

interface LoadResult {
  acked: number;
  rate: number;
  p50Ms: number;
  p99Ms: number;
}

interface Target {
  name: string;
  describe: string;
  start(): Promise<{ url: string; stop(): Promise<void>; after?(): Promise<Record<string, number>> }>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

function runLoad(url: string): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [join(ROOT, 'dist', 'bench', 'load.js'), JSON.stringify({ url, durationMs: DURATION_MS, ...LOAD })],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as LoadResult) : reject(new Error(`load exited ${code}`))));
  });
}

function findMosquitto(): string | undefined {
  const found = spawnSync('sh', ['-c', 'command -v mosquitto || ls /usr/sbin/mosquitto'], { encoding: 'utf8' });
  return found.status === 0 ? found.stdout.trim().split('\n')[0] : undefined;
}

/** Mosquitto is the baseline; as root, install it from Debian when it is missing. */
function ensureMosquitto(): string | undefined {
  const found = findMosquitto();
  if (found || process.getuid?.() !== 0) return found;
  process.stderr.write('bench: installing mosquitto (apt-get) for the baseline...\n');
  spawnSync('sh', ['-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto'], {
    stdio: 'ignore',
  });
  return findMosquitto();
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

const silent = pino({ level: 'silent' });

function edgebridgeTarget(
  name: string,
  describe: string,
  brokers: string[],
  storage: Record<string, unknown>,
  forwarding = true,
  routeExtra: Record<string, unknown> = {},
): Target {
  return {
    name,
    describe,
    async start() {
      const dir = mkdtempSync(join(tmpdir(), 'eb-bench-'));
      const topic = `bench.${name}.${Date.now()}`;
      const gw = await Gateway.start(
        parseConfig({
          gateway: { id: `bench-${name}` },
          // Load generators run 2-3k msg/s per connection: measure the gateway, not its per-client throttle.
          mqtt: { host: '127.0.0.1', port: 0, limits: { publishRatePerSecond: 0 } },
          kafka: { brokers },
          storage: { dir, ...storage },
          routes: [{ mqtt: 'devices/{deviceId}/telemetry/#', kafka: topic, ...routeExtra }],
        }),
        { logger: silent, statusIntervalMs: 0 },
      );
      return {
        url: `mqtt://127.0.0.1:${gw.mqttAddress.port}`,
        after: forwarding ? drained : undefined,
        async stop() {
          await gw.close();
          rmSync(dir, { recursive: true, force: true });
        },
      };
      async function drained(): Promise<Record<string, number>> {
        // how fast the forwarder drains into Kafka what was ingested
        const t0 = Date.now();
        const backlogAtEnd = gw.status().backlog;
        while (gw.status().backlog > 0 && Date.now() - t0 < 60_000) await sleep(50);
        return { forwardedPerSec: gw.status().forwarded / ((Date.now() - t0 + DURATION_MS) / 1000), backlogAtEnd };
      }
    },
  };
}

async function main(): Promise<void> {
  // @ts-expect-error plain ESM script
  const { startKafka } = (await import('../../scripts/kafka.mjs')) as {
    startKafka: (o: { dataDir: string }) => Promise<{ brokers: string[]; stop(): Promise<void> }>;
  };
  const kafkaDir = mkdtempSync(join(tmpdir(), 'eb-bench-kafka-'));
  process.stderr.write('bench: starting Kafka...\n');
  const kafka = await startKafka({ dataDir: kafkaDir });

  const targets: Target[] = [];
  const mosquitto = ensureMosquitto();
  if (mosquitto) {
    targets.push({
      name: 'mosquitto',
      describe: 'Mosquitto (C reference broker; in-memory, no per-message fsync)',
      async start() {
        const port = await freePort();
        const conf = join(mkdtempSync(join(tmpdir(), 'eb-bench-mosq-')), 'm.conf');
        writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\n`);
        const child: ChildProcess = spawn(mosquitto, ['-c', conf], { stdio: 'ignore' });
        await sleep(300);
        return {
          url: `mqtt://127.0.0.1:${port}`,
          async stop() {
            child.kill('SIGTERM');
            await new Promise((r) => child.once('exit', r));
          },
        };
      },
    });
  } else {
    process.stderr.write('bench: mosquitto not found and cannot be installed; its baseline is left out\n');
  }
  targets.push({
    name: 'aedes',
    describe: 'plain aedes (same broker library, no commit log)',
    async start() {
      const broker = await Aedes.createBroker({});
      const server = createServer(broker.handle);
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      const { port } = server.address() as { port: number };
      return {
        url: `mqtt://127.0.0.1:${port}`,
        async stop() {
          await new Promise<void>((r) => broker.close(() => r()));
          await new Promise<void>((r) => server.close(() => r()));
        },
      };
    },
  });
  targets.push(
    edgebridgeTarget('edgebridge', 'edgebridge: group commit, synchronous=FULL (default), forwarding to Kafka', kafka.brokers, {}),
    edgebridgeTarget(
      'eb-buffering',
      'edgebridge while Kafka is unreachable (ingest into the log only), synchronous=FULL',
      [`127.0.0.1:${await freePort()}`],
      {},
      false,
    ),
    edgebridgeTarget(
      'eb-no-dedup',
      'edgebridge with dedup off (routes[].dedup: false), forwarding to Kafka',
      kafka.brokers,
      {},
      true,
      { dedup: false },
    ),
    edgebridgeTarget('eb-normal', 'edgebridge with synchronous=NORMAL', kafka.brokers, { synchronous: 'normal' }),
    edgebridgeTarget('eb-no-group', 'edgebridge without group commit (one transaction per message)', kafka.brokers, {
      groupCommitMaxRecords: 1,
    }),
  );

  const results = new Map<string, (LoadResult & Record<string, number>)[]>();
  for (let round = 1; round <= ROUNDS; round++) {
    for (const target of targets) {
      const running = await target.start();
      const load = await runLoad(running.url);
      const extra = (await running.after?.()) ?? {};
      await running.stop();
      const list = results.get(target.name) ?? [];
      list.push({ ...load, ...extra });
      results.set(target.name, list);
      process.stderr.write(
        `round ${round} ${target.name.padEnd(12)} ${Math.round(load.rate)} msg/s p50=${load.p50Ms.toFixed(2)}ms p99=${load.p99Ms.toFixed(2)}ms\n`,
      );
    }
  }
  await kafka.stop();
  rmSync(kafkaDir, { recursive: true, force: true });

  const med = (name: string, key: string) => median((results.get(name) ?? []).map((r) => r[key] ?? NaN));
  const base = results.has('mosquitto') ? 'mosquitto' : 'aedes';
  const rows = targets.map((t) => {
    const rate = med(t.name, 'rate');
    const fwd = med(t.name, 'forwardedPerSec');
    return `| ${t.describe} | ${Math.round(rate)} | ${(rate / med(base, 'rate')).toFixed(2)} | ${(rate / med('aedes', 'rate')).toFixed(2)} | ${med(t.name, 'p50Ms').toFixed(2)} | ${med(t.name, 'p99Ms').toFixed(2)} | ${Number.isNaN(fwd) ? '–' : Math.round(fwd)} |`;
  });
  const gitRev = (() => {
    try {
      return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    } catch {
      return 'unknown';
    }
  })();
  const report = [
    `# QoS 1 ingest benchmark`,
    '',
    `${new Date().toISOString()} · commit ${gitRev} · Node ${process.version} · ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}`,
    `Load: ${LOAD.clients} MQTT clients in a separate process, ${LOAD.window} QoS 1 publishes in flight each, ${LOAD.payloadBytes}-byte JSON readings with bootId/seq, ${DURATION_MS / 1000}s per run, ${ROUNDS} interleaved rounds; medians.`,
    '',
    `| target | acked msg/s | vs ${base} | vs aedes | PUBACK p50 ms | PUBACK p99 ms | forwarded to Kafka msg/s |`,
    '|---|---:|---:|---:|---:|---:|---:|',
    ...rows,
    '',
  ].join('\n');
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  writeFileSync(join(ROOT, 'bench', 'results', 'latest.md'), report);
  process.stdout.write(`\n${report}`);
}

await main();
