// The bench's Kafka: a real broker from scripts/kafka.mjs on ports of its own, topics, and a gate
// (a TCP proxy on the bootstrap address) that holds a gateway away from Kafka until it is opened.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { createServer, createConnection, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import kafkajs from 'kafkajs';
import { adopt, release } from './proc.js';
import { freePorts, portFree, tempDir, ROOT } from './util.js';

export interface BenchKafka {
  readonly brokers: string[];
  readonly port: number;
  /** The broker's data directory (its topic partitions under logs/). */
  readonly dataDir: string;
  readonly pid: number;
  stop(): Promise<void>;
}

interface KafkaScript {
  startKafka(o: { dataDir: string; port: number; controllerPort: number }): Promise<{
    brokers: string[];
    pid: number;
    stop(graceMs?: number): Promise<void>;
  }>;
}

/** Starts Kafka on 29092/29093 when free (else on free ports); resolves once it answers. */
export async function startBenchKafka(): Promise<BenchKafka> {
  const { startKafka } = (await import(pathToFileURL(join(ROOT, 'scripts', 'kafka.mjs')).href)) as KafkaScript;
  let [port, controllerPort] = [29092, 29093];
  if (!(await portFree(port)) || !(await portFree(controllerPort))) [port, controllerPort] = (await freePorts(2)) as [number, number];
  const dataDir = tempDir('kafka');
  const kafka = await startKafka({ dataDir, port, controllerPort });
  adopt(kafka.pid);
  return {
    brokers: kafka.brokers,
    port,
    dataDir,
    pid: kafka.pid,
    async stop() {
      await kafka.stop(20_000);
      release(kafka.pid);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export function kafkaClient(brokers: readonly string[], clientId = 'edgebridge-bench'): kafkajs.Kafka {
  return new kafkajs.Kafka({ brokers: [...brokers], clientId, logLevel: kafkajs.logLevel.NOTHING });
}

export async function createTopic(brokers: readonly string[], topic: string, partitions: number): Promise<void> {
  const admin = kafkaClient(brokers).admin();
  await admin.connect();
  try {
    await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: partitions, replicationFactor: 1 }] });
  } finally {
    await admin.disconnect();
  }
}

export async function partitionCount(brokers: readonly string[], topic: string): Promise<number> {
  const admin = kafkaClient(brokers).admin();
  await admin.connect();
  try {
    const meta = await admin.fetchTopicMetadata({ topics: [topic] });
    return meta.topics[0]?.partitions.length ?? 0;
  } finally {
    await admin.disconnect();
  }
}

/** Moves every thread of `pid` to `cpus` (taskset -a -p); returns the previous CPU list. */
export function pin(pid: number, cpus: string): string {
  const before = execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { encoding: 'utf8' });
  const m = /current affinity list:\s*(\S+)/.exec(before);
  return m?.[1] ?? '0-1';
}

/**
 * A TCP proxy to Kafka's bootstrap address. Closed, it accepts and drops every connection (Kafka
 * is unreachable: the gateway cannot bootstrap); open, it relays. Kafka's metadata advertises its
 * real address, so once a client has bootstrapped it talks to Kafka directly.
 */
export class KafkaGate {
  private isOpen = false;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async create(target: number): Promise<KafkaGate> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const gate = new KafkaGate(server, (server.address() as { port: number }).port);
    server.on('connection', (socket) => {
      if (!gate.isOpen) {
        socket.destroy();
        return;
      }
      const upstream = createConnection({ host: '127.0.0.1', port: target });
      gate.sockets.add(socket).add(upstream);
      socket.pipe(upstream).pipe(socket);
      const close = (): void => {
        socket.destroy();
        upstream.destroy();
        gate.sockets.delete(socket);
        gate.sockets.delete(upstream);
      };
      socket.on('error', close).on('close', close);
      upstream.on('error', close).on('close', close);
    });
    return gate;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  open(): void {
    this.isOpen = true;
  }

  async stop(): Promise<void> {
    this.isOpen = false;
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
}
