// The brokers under test, each its own process: edgebridge (the real CLI), Mosquitto and plain
// aedes. Every target tells how many publishes it took in, to check what a generator claims.
import { writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import type { GatewayStatus } from '../../src/status.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { rssBytes, start, startNode, waitFor, waitForPort, type Child } from './proc.js';
import { freePorts, script, tempDir, ROOT } from './util.js';

export type TargetName = 'mosquitto' | 'aedes' | 'edgebridge';

export interface Target {
  readonly name: TargetName;
  readonly port: number;
  readonly url: string;
  readonly pid: number;
  /** Publishes taken in since start (edgebridge: committed to its log, duplicates included). */
  received(): Promise<number>;
  stop(): Promise<void>;
}

export interface PinOptions {
  /** taskset CPU list for the broker process. */
  readonly cpus?: string | undefined;
}

// --- Mosquitto -------------------------------------------------------------------------------

export async function startMosquitto(options: PinOptions = {}): Promise<Target> {
  const [port] = await freePorts(1);
  const dir = tempDir('mosq');
  const conf = join(dir, 'mosquitto.conf');
  // In memory (no persistence), unlimited queues; $SYS every second so counts can be checked.
  writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\nsys_interval 1\n`);
  const child = start('mosquitto', 'mosquitto', ['-c', conf], { cpus: options.cpus });
  try {
    await waitForPort(port!, 5000);
  } catch (err) {
    await child.stop();
    throw err;
  }
  return {
    name: 'mosquitto',
    port: port!,
    url: `mqtt://127.0.0.1:${port}`,
    pid: child.pid,
    received: () => sysCounter(port!, '$SYS/broker/publish/messages/received'),
    async stop() {
      await child.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One value of a Mosquitto $SYS topic (retained, refreshed every sys_interval). */
async function sysCounter(port: number, topic: string): Promise<number> {
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, clientId: `bench-sys-${process.pid}` });
  try {
    const value = new Promise<number>((resolve) => client.once('message', (_t, payload) => resolve(Number(payload.toString()))));
    await client.subscribeAsync(topic);
    return await Promise.race([value, new Promise<number>((_, reject) => setTimeout(() => reject(new Error(`no ${topic}`)), 3000))]);
  } finally {
    await client.endAsync(true);
  }
}

// --- plain aedes -----------------------------------------------------------------------------

export async function startAedes(options: PinOptions = {}): Promise<Target> {
  const child = startNode('aedes', script('aedes-server'), {}, { cpus: options.cpus, stdin: 'pipe' });
  const ready = await child.line((l) => l.startsWith('ready '), 10_000, 'ready');
  const port = Number(ready.split(' ')[1]);
  return {
    name: 'aedes',
    port,
    url: `mqtt://127.0.0.1:${port}`,
    pid: child.pid,
    async received() {
      const line = child.line((l) => l.startsWith('{"received"'), 3000, 'count');
      child.send('count');
      return (JSON.parse(await line) as { received: number }).received;
    },
    async stop() {
      await child.stop();
    },
  };
}

// --- edgebridge ------------------------------------------------------------------------------

export interface GatewaySpec extends PinOptions {
  /** Kafka bootstrap servers the gateway is given (a gate's address to hold Kafka away). */
  readonly brokers: readonly string[];
  /** The route's Kafka topic. */
  readonly topic: string;
  /** node --max-old-space-size (MB). */
  readonly maxOldSpaceMb?: number | undefined;
  /** Merged into the config's sections (forward, storage, mqtt.limits). */
  readonly forward?: Record<string, unknown>;
  readonly kafka?: Record<string, unknown>;
  readonly storage?: Record<string, unknown>;
}

/** The config every bench gateway runs with (defaults unless a scenario says otherwise). */
export function gatewayConfig(spec: GatewaySpec, ports: { mqtt: number; admin: number }, dir: string): Record<string, unknown> {
  return {
    gateway: { id: `bench-${process.pid}-${ports.mqtt}` },
    // publishRatePerSecond 0: measure the gateway, not its per-client throttle
    mqtt: { host: '127.0.0.1', port: ports.mqtt, limits: { publishRatePerSecond: 0 } },
    kafka: { brokers: [...spec.brokers], ...spec.kafka },
    ...(spec.forward ? { forward: spec.forward } : {}),
    storage: { dir: join(dir, 'log'), ...spec.storage },
    routes: [{ mqtt: 'devices/{deviceId}/telemetry/#', kafka: spec.topic }],
    admin: { host: '127.0.0.1', port: ports.admin },
    log: { level: 'warn' },
  };
}

/** The gateway under test: `node dist/src/cli.js start --config FILE` as its own process. */
export class Gateway implements Target {
  readonly name = 'edgebridge' as const;
  readonly url: string;

  private constructor(
    readonly child: Child,
    readonly port: number,
    readonly adminPort: number,
    readonly dir: string,
    readonly topic: string,
    readonly config: Record<string, unknown>,
  ) {
    this.url = `mqtt://127.0.0.1:${port}`;
  }

  get pid(): number {
    return this.child.pid;
  }

  /** Starts it and waits until MQTT and /status answer (and, with `forwarding`, until it forwards). */
  static async start(spec: GatewaySpec, { forwarding = true, timeoutMs = 60_000 } = {}): Promise<Gateway> {
    const [mqttPort, adminPort] = (await freePorts(2)) as [number, number];
    const dir = tempDir('gw');
    const config = gatewayConfig(spec, { mqtt: mqttPort, admin: adminPort }, dir);
    const file = join(dir, 'edgebridge.yaml');
    writeFileSync(file, JSON.stringify(config, null, 2)); // JSON is YAML
    const nodeArgs = spec.maxOldSpaceMb !== undefined ? [`--max-old-space-size=${spec.maxOldSpaceMb}`] : [];
    // stdout (log lines) goes to a pipe, not a file: only the log's writes count in write_bytes
    const child = start('edgebridge', process.execPath, [...nodeArgs, join(ROOT, 'dist', 'src', 'cli.js'), 'start', '--config', file], {
      cpus: spec.cpus,
      cwd: dir,
    });
    const gw = new Gateway(child, mqttPort, adminPort, dir, spec.topic, config);
    try {
      await Promise.race([
        (async () => {
          await waitFor('edgebridge /status', () => gw.status(), { timeoutMs, intervalMs: 100 });
          await waitForPort(mqttPort, timeoutMs);
          if (forwarding) await gw.waitState('forwarding', timeoutMs);
        })(),
        child.exited.then((code) => {
          throw new Error(`edgebridge exited (${code}) during start\n${child.tail()}`);
        }),
      ]);
    } catch (err) {
      await gw.stop();
      throw err;
    }
    return gw;
  }

  async status(): Promise<GatewayStatus> {
    const res = await fetch(`http://127.0.0.1:${this.adminPort}/status`);
    if (!res.ok) throw new Error(`/status: HTTP ${res.status}`);
    return (await res.json()) as GatewayStatus;
  }

  async received(): Promise<number> {
    const s = await this.status();
    return s.received + s.duplicates;
  }

  async waitState(state: GatewayStatus['forwarder'], timeoutMs: number): Promise<GatewayStatus> {
    return waitFor(`edgebridge forwarder state ${state}`, async () => {
      const s = await this.status();
      return s.forwarder === state ? s : undefined;
    }, { timeoutMs });
  }

  /** Waits until every record in the log is committed to Kafka; returns the status then. */
  async waitDrained(timeoutMs: number, intervalMs = 50): Promise<GatewayStatus> {
    return waitFor('edgebridge backlog 0', async () => {
      const s = await this.status();
      return s.backlog === 0 ? s : undefined;
    }, { timeoutMs, intervalMs });
  }

  /**
   * Polls /status (and RSS) every `intervalMs` in the background, for figures that need the time
   * something happened (the backlog reaching 0 after the last PUBACK) rather than a wait's end.
   */
  poll(intervalMs = 100): StatusPoller {
    const samples: StatusSample[] = [];
    let running = true;
    const loop = (async () => {
      while (running && this.child.running) {
        try {
          const s = await this.status();
          samples.push({
            at: performance.timeOrigin + performance.now(),
            backlog: s.backlog,
            received: s.received,
            forwarded: s.forwarded,
            lastOffset: s.lastOffset,
            forwardPosition: s.forwardPosition,
            forwarder: s.forwarder,
            rss: rssBytes(this.pid),
          });
        } catch {
          // a missed poll
        }
        await sleep(intervalMs);
      }
    })();
    return {
      samples,
      async stop() {
        running = false;
        await loop;
        return samples;
      },
    };
  }

  async stop(): Promise<void> {
    await this.child.stop(20_000);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface StatusSample {
  /** Epoch ms. */
  at: number;
  backlog: number;
  received: number;
  forwarded: number;
  lastOffset: number;
  forwardPosition: number;
  forwarder: string;
  rss: number;
}

export interface StatusPoller {
  readonly samples: StatusSample[];
  stop(): Promise<StatusSample[]>;
}

/** The first sample at or after `from` (epoch ms) where the backlog is 0. */
export function drainedAt(samples: readonly StatusSample[], from: number): StatusSample | undefined {
  return samples.find((s) => s.at >= from && s.backlog === 0);
}

export async function startTarget(name: TargetName, spec: Omit<GatewaySpec, 'cpus'> & PinOptions): Promise<Target> {
  switch (name) {
    case 'mosquitto':
      return startMosquitto(spec);
    case 'aedes':
      return startAedes(spec);
    case 'edgebridge':
      return Gateway.start(spec);
  }
}
