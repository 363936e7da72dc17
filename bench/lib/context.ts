// What every scenario is given: the bench configuration (full or --quick), the Kafka broker, the
// results so far, and the gateway's maximum ingest rate (from scenario 1, else measured once).
import type { BenchKafka } from './kafka.js';
import { runMqttjs } from './generators.js';
import { Gateway } from './targets.js';
import { log } from './util.js';

export interface BenchConfig {
  quick: boolean;
  /** A/B rounds of the compared runs (scenarios 1, 5 and 6). */
  rounds: number;
  /** The MQTT protocol of scenario 1's generators (both MQTT.js and mosquitto_pub): 4 (3.1.1) or 5. */
  mqttVersion: 4 | 5;
  s1: {
    mqttjs: { processes: number; clients: number; window: number; payloadBytes: number; durationMs: number };
    cgen: { processes: number; lines: number; payloadBytes: number };
    /** Load before each measured run (MQTT.js, 1 process), not measured. */
    warmupMs: number;
    /** How long a run may take to be forwarded after its last PUBACK before it counts as failed. */
    drainTimeoutMs: number;
  };
  s2: { levels: number[]; durationMs: number; warmupMs: number; clients: number; payloadBytes: number };
  s3: { backlog: number; liveFraction: number; steadyMs: number; payloadBytes: number; liveClients: number; rawModes: ('idempotent' | 'transactional')[] };
  s4: { devices: number; idleWindowMs: number; devicesWindowMs: number; burst: number; quietMs: number; payloadBytes: number };
  s5: { messages: number; warmup: number; payloads: number[]; steadyRate: number; steadyMs: number; steadyIntervalsMs: number[] };
  s7: { messages: number; warmup: number; payloadBytes: number; codecs: ('none' | 'gzip' | 'lz4' | 'zstd')[] };
  s6: { generators: ('mqttjs' | 'cgen')[]; gatewayCpus: string; generatorCpus: string; maxOldSpaceMb: number; mqttjsClients: number; durationMs: number; cgenLines: number };
}

export function benchConfig(quick: boolean, roundsOverride?: number, mqttVersion: 4 | 5 = 4): BenchConfig {
  const rounds = roundsOverride ?? (quick ? 1 : 3);
  return {
    quick,
    rounds,
    mqttVersion,
    s1: {
      mqttjs: { processes: 2, clients: 10, window: 10, payloadBytes: 200, durationMs: quick ? 2000 : 5000 },
      cgen: { processes: 8, lines: quick ? 3000 : 20_000, payloadBytes: 63 },
      warmupMs: quick ? 700 : 2000,
      drainTimeoutMs: 120_000,
    },
    s2: { levels: [0.25, 0.5, 0.75], durationMs: quick ? 3000 : 15_000, warmupMs: quick ? 1000 : 2000, clients: 20, payloadBytes: 200 },
    s3: { backlog: quick ? 100_000 : 1_000_000, liveFraction: 0.25, steadyMs: quick ? 2000 : 10_000, payloadBytes: 200, liveClients: 10, rawModes: quick ? ['idempotent'] : ['idempotent', 'transactional'] },
    s4: {
      devices: 1000,
      idleWindowMs: quick ? 1500 : 10_000,
      devicesWindowMs: quick ? 2000 : 20_000,
      burst: quick ? 20_000 : 200_000,
      quietMs: quick ? 2000 : 10_000,
      payloadBytes: 200,
    },
    s5: { messages: quick ? 12_000 : 100_000, warmup: quick ? 2000 : 10_000, payloads: [200, 63], steadyRate: 1000, steadyMs: quick ? 4000 : 15_000, steadyIntervalsMs: quick ? [10] : [0, 10, 25, 50] },
    s7: { messages: quick ? 10_000 : 60_000, warmup: quick ? 1000 : 5000, payloadBytes: 200, codecs: ['none', 'gzip', 'lz4', 'zstd'] },
    s6: { generators: quick ? ['cgen'] : ['mqttjs', 'cgen'], gatewayCpus: '0', generatorCpus: '1', maxOldSpaceMb: 128, mqttjsClients: 20, durationMs: quick ? 2000 : 5000, cgenLines: quick ? 2500 : 10_000 },
  };
}

export type ScenarioResult = Record<string, unknown>;

export class Context {
  readonly results: Record<string, ScenarioResult> = {};
  private measuredMax: number | undefined;

  constructor(
    readonly config: BenchConfig,
    readonly kafka: BenchKafka,
  ) {}

  /** A unique Kafka topic name for one gateway run. */
  topic(label: string): string {
    return `bench.${label}.${Date.now().toString(36)}${Math.random().toString(36).slice(2, 5)}`;
  }

  /**
   * edgebridge's maximum durable ingest rate with forwarding (MQTT.js generator): scenario 1's
   * median when it ran, else one short run measured here (and remembered).
   */
  async maxRate(): Promise<{ rate: number; source: string }> {
    const s1 = this.results.s1 as { medians?: { mqttjs?: { edgebridge?: { rate?: number } } } } | undefined;
    const fromS1 = s1?.medians?.mqttjs?.edgebridge?.rate;
    if (fromS1 !== undefined && Number.isFinite(fromS1)) return { rate: fromS1, source: 'scenario 1 median (MQTT.js)' };
    if (this.measuredMax === undefined) {
      log('max rate: scenario 1 did not run; measuring edgebridge once (MQTT.js, 3 s)');
      const gw = await Gateway.start({ brokers: this.kafka.brokers, topic: this.topic('max') });
      try {
        const m = this.config.s1.mqttjs;
        const r = await runMqttjs(gw.url, { ...m, durationMs: 3000, tag: `max-${Date.now().toString(36)}` });
        this.measuredMax = r.rate;
      } finally {
        await gw.stop();
      }
    }
    return { rate: this.measuredMax, source: 'one 3 s MQTT.js run (scenario 1 not run)' };
  }
}

export interface Scenario {
  readonly id: number;
  readonly key: string;
  readonly title: string;
  run(ctx: Context): Promise<ScenarioResult>;
}
