// Load generators, each its own process: MQTT.js (bench/load.ts, closed loop), Debian's C client
// (`mosquitto_pub -l -q 1`, one process per device, lines from a file), an open-loop MQTT.js
// publisher (bench/open-loop.ts) and idle connections (bench/idle-clients.ts).
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { newBootId, reading } from './payload.js';
import { start, startNode, type Child } from './proc.js';
import { script } from './util.js';

export interface MqttjsResult {
  acked: number;
  elapsedMs: number;
  rate: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  payloadBytes: number;
  startedAt: number;
  lastAckAt: number;
  processes: number;
}

export interface MqttjsOptions {
  readonly processes: number;
  /** MQTT clients per process (each one device). */
  readonly clients: number;
  readonly window: number;
  readonly payloadBytes: number;
  readonly durationMs?: number;
  /** Publishes per process (instead of a duration). */
  readonly count?: number;
  readonly cpus?: string | undefined;
  /** Device id prefix (distinct per run keeps dedup identities apart). */
  readonly tag: string;
  readonly timeoutMs?: number;
  /** Readings that compress like real telemetry (payload.ts variedReading). */
  readonly varied?: boolean;
  /** MQTT 3.1.1 (4, the default) or MQTT 5. */
  readonly protocolVersion?: 4 | 5;
}

/** Runs `processes` MQTT.js generators side by side; rate = all acks / the longest run. */
export async function runMqttjs(url: string, o: MqttjsOptions): Promise<MqttjsResult> {
  const children = Array.from({ length: o.processes }, (_, p) =>
    startNode(`load-${p}`, script('load'), {
      url,
      clients: o.clients,
      window: o.window,
      payloadBytes: o.payloadBytes,
      prefix: `${o.tag}-p${p}`,
      ...(o.varied ? { varied: true } : {}),
      ...(o.protocolVersion === 5 ? { protocolVersion: 5 } : {}),
      ...(o.durationMs !== undefined ? { durationMs: o.durationMs } : {}),
      ...(o.count !== undefined ? { count: o.count } : {}),
    }, { cpus: o.cpus }),
  );
  const timeoutMs = o.timeoutMs ?? (o.durationMs ?? 60_000) + 60_000;
  try {
    const results = await Promise.all(children.map((c) => jsonResult<Omit<MqttjsResult, 'processes'>>(c, timeoutMs)));
    const acked = results.reduce((s, r) => s + r.acked, 0);
    const startedAt = Math.min(...results.map((r) => r.startedAt));
    const lastAckAt = Math.max(...results.map((r) => r.lastAckAt));
    const elapsedMs = lastAckAt - startedAt;
    const avg = (k: 'p50Ms' | 'p99Ms' | 'p999Ms' | 'payloadBytes') => results.reduce((s, r) => s + r[k], 0) / results.length;
    return {
      acked,
      elapsedMs,
      rate: acked / (elapsedMs / 1000),
      // the processes' percentiles, averaged (each process holds half the clients)
      p50Ms: avg('p50Ms'),
      p99Ms: avg('p99Ms'),
      p999Ms: avg('p999Ms'),
      payloadBytes: avg('payloadBytes'),
      startedAt,
      lastAckAt,
      processes: o.processes,
    };
  } finally {
    await Promise.all(children.map((c) => c.stop(2000)));
  }
}

/** The JSON line a generator prints at its end (fails on a non-zero exit or at the deadline). */
export async function jsonResult<T>(child: Child, timeoutMs: number): Promise<T> {
  const code = await child.finished(timeoutMs);
  if (code !== 0) throw new Error(`${child.name} exited ${code}\n${child.tail()}`);
  const line = child
    .stdout()
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .pop();
  if (!line) throw new Error(`${child.name} printed no result\n${child.tail()}`);
  return JSON.parse(line) as T;
}

export interface CgenResult {
  sent: number;
  wallMs: number;
  rate: number;
  processes: number;
  linesPerProcess: number;
  payloadBytes: number;
  exitCodes: (number | null)[];
  /** lastExitAt: when the last mosquitto_pub exited (epoch ms): all its PUBACKs were in. */
  lastExitAt: number;
}

export interface CgenOptions {
  readonly processes: number;
  /** Lines per process: at most 65,535 (mosquitto_pub 2.0.11 stops early past the message-id wrap). */
  readonly lines: number;
  readonly payloadBytes: number;
  readonly cpus?: string | undefined;
  readonly tag: string;
  /** Directory for the input files. */
  readonly dir: string;
  readonly timeoutMs?: number;
  /** MQTT 3.1.1 (4, the default) or MQTT 5 (`-V mqttv5`). */
  readonly protocolVersion?: 4 | 5;
}

/**
 * `processes` × `mosquitto_pub -l -q 1 -t devices/<tag>-N/telemetry`, each fed `lines` readings
 * from a file. mosquitto_pub sends a DISCONNECT at stdin EOF only once every PUBACK is in (checked
 * by the scenario against the target's own count), so rate = lines / wall time until all exit.
 */
export async function runMosquittoPub(port: number, o: CgenOptions): Promise<CgenResult> {
  if (o.lines > 65_000) throw new Error('mosquitto_pub -l: at most 65,000 lines per process (message-id wrap)');
  const files = Array.from({ length: o.processes }, (_, p) => {
    const bootId = newBootId();
    const file = join(o.dir, `${o.tag}-${p}.lines`);
    const lines: string[] = [];
    for (let seq = 1; seq <= o.lines; seq++) lines.push(reading(bootId, seq, o.payloadBytes));
    writeFileSync(file, `${lines.join('\n')}\n`);
    return file;
  });
  const fds = files.map((f) => openSync(f, 'r'));
  const t0 = performance.now();
  const children = files.map((_, p) =>
    start(`mosquitto_pub-${p}`, 'mosquitto_pub', [...(o.protocolVersion === 5 ? ['-V', 'mqttv5'] : []), '-h', '127.0.0.1', '-p', String(port), '-l', '-q', '1', '-i', `${o.tag}-${p}`, '-t', `devices/${o.tag}-${p}/telemetry`], {
      cpus: o.cpus,
      stdin: fds[p],
    }),
  );
  for (const fd of fds) closeSync(fd);
  try {
    const timeoutMs = o.timeoutMs ?? 120_000;
    const exitCodes = await Promise.all(children.map((c) => c.finished(timeoutMs)));
    const wallMs = performance.now() - t0;
    const sent = o.processes * o.lines;
    const bad = exitCodes.findIndex((c) => c !== 0);
    if (bad >= 0) throw new Error(`mosquitto_pub-${bad} exited ${exitCodes[bad]}\n${children[bad]!.tail()}`);
    return {
      sent,
      wallMs,
      rate: sent / (wallMs / 1000),
      processes: o.processes,
      linesPerProcess: o.lines,
      payloadBytes: o.payloadBytes,
      exitCodes,
      lastExitAt: performance.timeOrigin + performance.now(),
    };
  } finally {
    await Promise.all(children.map((c) => c.stop(2000)));
  }
}

export interface OpenLoopOptions {
  readonly rate: number;
  readonly clients: number;
  readonly payloadBytes: number;
  readonly tag: string;
  /** Latencies of the first warmupMs are not recorded (nor marked for the consumer). */
  readonly warmupMs: number;
  /** Run for this long; without it the run ends at `stop` on stdin. */
  readonly durationMs?: number;
  readonly cpus?: string | undefined;
  /** A run id put in each payload (field "r"), for the end-to-end consumer. */
  readonly runId?: string;
}

export interface OpenLoopResult {
  scheduled: number;
  sent: number;
  acked: number;
  measured: number;
  elapsedMs: number;
  rate: number;
  /** PUBACK latency from each publish's *scheduled* time (no coordinated omission). */
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  /** How late the generator itself sent, vs schedule (its own lag). */
  sendLagP99Ms: number;
}

/** Starts the open-loop generator; resolves once its clients are connected and it runs. */
export async function startOpenLoop(url: string, o: OpenLoopOptions): Promise<Child> {
  const child = startNode('open-loop', script('open-loop'), { url, ...o }, { cpus: o.cpus, stdin: 'pipe' });
  await child.line((l) => l === 'running', 30_000, 'running');
  return child;
}

/** Ends an open-loop run (stop on stdin if it has no duration) and returns its figures. */
export async function finishOpenLoop(child: Child, timeoutMs = 60_000): Promise<OpenLoopResult> {
  child.send('stop');
  return jsonResult<OpenLoopResult>(child, timeoutMs);
}
