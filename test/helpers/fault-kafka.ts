import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
// @ts-expect-error plain ESM script shared with `npm run kafka:start`
import { freePorts, startKafka } from '../../scripts/kafka.mjs';

interface RunningKafka {
  brokers: string[];
  stop(graceMs?: number): Promise<void>;
  kill(): Promise<void>;
}

/**
 * A broker of the fault suite's own, on fixed ports and one data directory, so it can be started
 * late, SIGKILLed and restarted with its data, while the shared test broker stays up.
 */
export class FaultKafka {
  readonly dataDir = mkdtempSync(join(tmpdir(), 'edgebridge-fault-kafka-'));
  private running: RunningKafka | undefined;
  private constructor(
    readonly port: number,
    readonly controllerPort: number,
  ) {}

  static async allocate(): Promise<FaultKafka> {
    const [port, controllerPort] = (await freePorts(2)) as [number, number];
    return new FaultKafka(port, controllerPort);
  }

  get brokers(): string[] {
    return [`127.0.0.1:${this.port}`];
  }

  /** Started (and neither stopped nor killed since). */
  get started(): boolean {
    return this.running !== undefined;
  }

  async start(): Promise<void> {
    this.running = (await startKafka({
      dataDir: this.dataDir,
      port: this.port,
      controllerPort: this.controllerPort,
      heap: '512m',
    })) as RunningKafka;
  }

  /** kill -9: no clean shutdown, the way a broker host dies. */
  async kill(): Promise<void> {
    await this.running?.kill();
    this.running = undefined;
  }

  async stop(): Promise<void> {
    await this.running?.stop(5000);
    this.running = undefined;
  }

  /** The end of the suite: its data is deleted, so no clean shutdown is waited for. */
  async destroy(): Promise<void> {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
