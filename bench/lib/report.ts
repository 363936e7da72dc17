// The results: bench/results/latest.json (machine, config, every figure, the targets table),
// latest.md (for people) and latest.svg (the chart). Targets are evaluated here.
import { execFileSync } from 'node:child_process';
import { closeSync, fdatasyncSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { cpus, freemem, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import type { BenchConfig } from './context.js';
import { ROOT, round, tempDir } from './util.js';

export interface ScenarioOutcome {
  id: number;
  title: string;
  ok: boolean;
  durationMs: number;
  error?: string;
  result?: Record<string, unknown>;
}

export interface TargetRow {
  id: string;
  figure: string;
  scenario: number;
  value: number | null;
  unit: string;
  op: '>=' | '<=';
  target: number;
  /** value / target: the bar length in the chart (pass line at 1). */
  ofTarget: number | null;
  pass: boolean | null;
  note?: string;
}

export interface BenchReport {
  schema: 'edgebridge-bench/1';
  date: string;
  wallTimeMs: number;
  quick: boolean;
  selection: number[];
  machine: Record<string, unknown>;
  config: BenchConfig & { kafka: Record<string, unknown> };
  scenarios: Record<string, ScenarioOutcome>;
  targets: TargetRow[];
  summary: { passed: number; failed: number; missing: number };
}

/**
 * fsync latency of the disk the logs are on (4 KiB write + fdatasync, 50 times): durable ingest
 * waits for it once per group commit, so it explains much of a run's figures on a shared VM.
 */
export function fsyncProbe(): { p50Ms: number; p99Ms: number; maxMs: number } {
  const dir = tempDir('fsync');
  const fd = openSync(join(dir, 'probe'), 'w');
  const buf = Buffer.alloc(4096, 1);
  const times: number[] = [];
  try {
    for (let i = 0; i < 50; i++) {
      const t0 = performance.now();
      writeSync(fd, buf, 0, buf.length, (i % 16) * 4096);
      fdatasyncSync(fd);
      times.push(performance.now() - t0);
    }
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
  times.sort((x, y) => x - y);
  return { p50Ms: round(times[24]!), p99Ms: round(times[48]!), maxMs: round(times[49]!) };
}

export function machineInfo(): Record<string, unknown> {
  const git = (args: string[]) => {
    try {
      return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8' }).trim();
    } catch {
      return 'unknown';
    }
  };
  const version = (cmd: string, args: string[], re: RegExp) => {
    try {
      const out = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      return re.exec(out)?.[1] ?? 'unknown';
    } catch (err) {
      const out = String((err as { stdout?: string }).stdout ?? '');
      return re.exec(out)?.[1] ?? 'unknown';
    }
  };
  let kafkaVersion = 'unknown';
  try {
    const jar = readdirSync(join(ROOT, 'kafka', 'target', 'lib')).find((f) => /^kafka_[\d.]+-[\d.]+\.jar$/.test(f));
    kafkaVersion = jar?.replace(/^kafka_[\d.]+-/, '').replace(/\.jar$/, '') ?? 'unknown';
  } catch {
    // not resolved yet
  }
  const modelFromProc = (() => {
    try {
      return /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim();
    } catch {
      return undefined;
    }
  })();
  return {
    cpuModel: modelFromProc ?? cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryMiB: Math.round(totalmem() / 2 ** 20),
    freeMemoryMiB: Math.round(freemem() / 2 ** 20),
    kernel: release(),
    node: process.version,
    mosquitto: version('mosquitto', ['-h'], /mosquitto version (\S+)/),
    kafka: kafkaVersion,
    gitCommit: git(['rev-parse', 'HEAD']),
    gitBranch: git(['rev-parse', '--abbrev-ref', 'HEAD']),
    gitDirty: git(['status', '--porcelain', '--', 'src', 'bench', ':!bench/results']) !== '', // results of an earlier run do not count
    loadAverageAtStart: loadavg().map((l) => round(l)),
    fsyncAtStart: fsyncProbe(),
    benchDisk: process.env.BENCH_TMP ?? tmpdir(),
  };
}

type Results = Record<string, Record<string, unknown> | undefined>;

function dig(o: unknown, ...path: string[]): number | null {
  let cur = o;
  for (const p of path) {
    if (cur === null || typeof cur !== 'object') return null;
    cur = (cur as Record<string, unknown>)[p];
  }
  return typeof cur === 'number' && Number.isFinite(cur) ? cur : null;
}

function row(
  id: string,
  figure: string,
  scenario: number,
  value: number | null,
  unit: string,
  op: '>=' | '<=',
  target: number,
  note?: string,
): TargetRow {
  const v = value === null ? null : round(value);
  return {
    id,
    figure,
    scenario,
    value: v,
    unit,
    op,
    target,
    ofTarget: v === null ? null : round(v / target),
    pass: v === null ? null : op === '>=' ? v >= target : v <= target,
    ...(note ? { note } : {}),
  };
}

/** The issue's targets, evaluated on what was measured (null: not measured). */
export function evaluateTargets(r: Results): TargetRow[] {
  const s1 = r.s1;
  const s3 = r.s3;
  const s4 = r.s4;
  const s5 = r.s5;
  const lag = dig(s1, 'lastAckToKafkaMs', 'median');
  return [
    row('ingest-mqttjs', 'Durable QoS 1 ingest with forwarding vs Mosquitto, MQTT.js generator', 1, dig(s1, 'ratios', 'edgebridgeVsMosquitto', 'mqttjs', 'ofMedians'), '×', '>=', 1.0, 'ratio of medians, 200-byte payloads'),
    row('ingest-cgen', 'Same with 8 × mosquitto_pub -l -q 1 (63-byte payloads)', 1, dig(s1, 'ratios', 'edgebridgeVsMosquitto', 'cgen', 'ofMedians'), '×', '>=', 1.0, 'ratio of medians'),
    row('disk-200', 'Bytes written to disk per message, 200-byte payloads', 5, dig(s5, 'medians', '200', 'bytesPerMessage'), 'B/msg', '<=', 600, '≤ 3 × payload; /proc/PID/io write_bytes'),
    row('disk-63', 'Bytes written to disk per message, 63-byte payloads (also reported)', 5, dig(s5, 'medians', '63', 'bytesPerMessage'), 'B/msg', '<=', 189, '≤ 3 × payload'),
    row('rss-idle', 'RSS idle', 4, dig(s4, 'idle', 'rssMiB'), 'MiB', '<=', 60),
    row('rss-devices', 'RSS with 1,000 connected idle devices', 4, dig(s4, 'devices', 'rssMiB'), 'MiB', '<=', 100),
    row('rss-after-burst', 'RSS after 200k messages, forwarded, ~10 s quiet', 4, dig(s4, 'afterBurst', 'rssMiB'), 'MiB', '<=', 120, r.s4 && dig(s4, 'afterBurst', 'messages') !== null && dig(s4, 'afterBurst', 'messages')! < 200_000 ? `quick run: ${dig(s4, 'afterBurst', 'messages')} messages` : undefined),
    row('drain', 'Backlog drain rate vs a raw kafkajs batch producer (idempotent)', 3, dig(s3, 'ratioVsIdempotent'), '×', '>=', 0.8, 'transactional raw producer: see scenario 3'),
    row('drain-live-p99', 'Live PUBACK p99 during the drain ÷ p99 without drain (issue text: live traffic acknowledged within its p99)', 3, dig(s3, 'liveP99Ratio'), '×', '<=', 1.0, 'open-loop live traffic at 25 % of max; not in the targets table'),
    row('kafka-lag', 'Time until all records are in Kafka after the last PUBACK', 1, lag === null ? null : lag / 1000, 's', '<=', 15, 'median over scenario 1 edgebridge runs'),
  ];
}

// --- Markdown --------------------------------------------------------------------------------

const fmt = (v: unknown, digits = 0): string => {
  if (typeof v !== 'number' || !Number.isFinite(v)) return '–';
  return digits === 0 ? Math.round(v).toLocaleString('en-US') : v.toFixed(digits);
};

export function markdown(rep: BenchReport): string {
  const m = rep.machine;
  const L: string[] = [];
  L.push(`# edgebridge benchmark${rep.quick ? ' (quick)' : ''}`, '');
  L.push(`${rep.date} · commit ${String(m.gitCommit).slice(0, 10)}${m.gitDirty ? ' (dirty)' : ''} · Node ${m.node} · ${m.cores} × ${m.cpuModel} · ${m.memoryMiB} MiB · kernel ${m.kernel} · Mosquitto ${m.mosquitto} · Kafka ${m.kafka}`);
  const fs0 = m.fsyncAtStart as { p50Ms: number; p99Ms: number } | undefined;
  const fs1 = m.fsyncAtEnd as { p50Ms: number; p99Ms: number } | undefined;
  L.push(
    `Wall time ${fmt(rep.wallTimeMs / 1000)} s · load average at start ${(m.loadAverageAtStart as number[]).join(' / ')}, at end ${((m.loadAverageAtEnd as number[] | undefined) ?? []).join(' / ')} · fsync p50/p99 ${fs0 ? `${fs0.p50Ms}/${fs0.p99Ms}` : '–'} ms at start, ${fs1 ? `${fs1.p50Ms}/${fs1.p99Ms}` : '–'} ms at end · rounds ${rep.config.rounds} · scenarios ${rep.selection.join(', ')}`,
    '',
  );
  L.push('Every broker and generator is its own process on this machine (2 shared cores; Kafka too): figures are noisy, ratios from alternating runs are the robust part.', '');
  L.push('## Targets', '', '| figure | measured | target | result |', '|---|---:|---:|:---:|');
  for (const t of rep.targets) {
    const v = t.value === null ? '–' : `${t.unit === '×' ? t.value.toFixed(2) : t.unit === 's' ? t.value.toFixed(1) : fmt(t.value)} ${t.unit}`;
    L.push(`| ${t.figure}${t.note ? ` <br><sub>${t.note}</sub>` : ''} | ${v} | ${t.op === '>=' ? '≥' : '≤'} ${t.target} ${t.unit} | ${t.pass === null ? 'not measured' : t.pass ? 'pass' : '**fail**'} |`);
  }
  L.push('');
  for (const [key, s] of Object.entries(rep.scenarios)) {
    L.push(`## ${s.id}. ${s.title}`, '');
    if (!s.ok) L.push(`**Failed:** ${s.error ?? 'unknown error'}`, '');
    const r = s.result;
    if (!r) continue;
    if (key === 's1' || key === 's6') L.push(...ingestTable(r));
    if (key === 's2') L.push(...latencyTable(r));
    if (key === 's3') L.push(...drainTable(r));
    if (key === 's4') L.push(...memoryTable(r));
    if (key === 's5') L.push(...diskTable(r));
    if (key === 's7') L.push(...compressionTable(r));
    L.push(`<sub>${fmt(s.durationMs / 1000)} s</sub>`, '');
  }
  return `${L.join('\n')}\n`;
}

function ingestTable(r: Record<string, unknown>): string[] {
  const med = (r.medians ?? {}) as Record<string, Record<string, Record<string, number>>>;
  const ratios = ((r.ratios as Record<string, unknown> | undefined)?.edgebridgeVsMosquitto ?? {}) as Record<string, { ofMedians: number; perRound: number[] }>;
  const L = ['| generator | target | msg/s (median) | vs Mosquitto | target CPU % | target run-queue wait % | peak RSS MiB | PUBACK p50 / p99 ms | in Kafka after last PUBACK ms |', '|---|---|---:|---:|---:|---:|---:|---:|---:|'];
  for (const [gen, targets] of Object.entries(med)) {
    for (const [t, v] of Object.entries(targets)) {
      const vsM = (v.rate ?? NaN) / (targets.mosquitto?.rate ?? NaN);
      L.push(`| ${gen === 'mqttjs' ? 'MQTT.js' : 'mosquitto_pub'} | ${t} | ${fmt(v.rate)} | ${fmt(vsM, 2)} | ${fmt(v.cpuPct)} | ${fmt(v.runqWaitPct)} | ${fmt(v.rssPeakMiB)} | ${Number.isFinite(v.p50Ms) ? `${fmt(v.p50Ms, 1)} / ${fmt(v.p99Ms, 1)}` : '–'} | ${fmt(v.lastAckToKafkaMs)} |`);
    }
  }
  L.push('');
  for (const [gen, x] of Object.entries(ratios)) L.push(`edgebridge / Mosquitto per round (${gen}): ${x.perRound.map((v) => v.toFixed(2)).join(', ') || '–'}`);
  L.push(`All counts verified against the targets' own counters: ${r.allVerified ? 'yes' : '**no** (see latest.json)'}`);
  L.push('CPU %: utime+stime of the broker process (all threads) over the run, in % of one core. Run-queue wait: time its threads were runnable but waited for a CPU (the machine’s other load), % of wall time.', '');
  return L;
}

function compressionTable(r: Record<string, unknown>): string[] {
  const med = (r.medians ?? {}) as Record<string, { bytesPerMessage: number; cpuMicrosPerMessage: number; vsNone: number }>;
  const L = ['| kafka.compression | bytes upstream per message | vs none | gateway CPU µs per message |', '|---|---:|---:|---:|'];
  for (const [codec, v] of Object.entries(med)) L.push(`| ${codec} | ${fmt(v.bytesPerMessage)} | ${fmt(v.vsNone, 2)} | ${fmt(v.cpuMicrosPerMessage)} |`);
  L.push('', 'Readings of 200 bytes with 3-4 digit samples of a drifting signal (they compress like sensor JSON, unlike the padded readings of the other scenarios).', '');
  return L;
}

function latencyTable(r: Record<string, unknown>): string[] {
  const method = r.method as { maxRate?: number; maxRateSource?: string };
  const L = [`Max rate ${fmt(method.maxRate)} msg/s (${method.maxRateSource ?? ''}).`, '', '| load | msg/s | end-to-end p50 / p99 / p99.9 ms | PUBACK p50 / p99 / p99.9 ms | generator send lag p99 ms |', '|---:|---:|---:|---:|---:|'];
  for (const l of (r.levels ?? []) as Record<string, unknown>[]) {
    const e = l.endToEnd as Record<string, number> | undefined;
    const p = l.puback as Record<string, number> | undefined;
    L.push(`| ${String(l.pct)} % | ${fmt(l.rate)} | ${e ? `${fmt(e.p50Ms, 1)} / ${fmt(e.p99Ms, 1)} / ${fmt(e.p999Ms, 1)}` : String(l.error ?? '–')} | ${p ? `${fmt(p.p50Ms, 1)} / ${fmt(p.p99Ms, 1)} / ${fmt(p.p999Ms, 1)}` : '–'} | ${fmt(p?.sendLagP99Ms, 1)} |`);
  }
  L.push('');
  return L;
}

function drainTable(r: Record<string, unknown>): string[] {
  const d = (r.drain ?? {}) as Record<string, number>;
  const raw = (r.rawProducer ?? {}) as Record<string, Record<string, number>>;
  const ld = (r.liveDuringDrain ?? {}) as Record<string, number>;
  const ls = (r.liveWithoutDrain ?? {}) as Record<string, number>;
  const b = (r.backlog ?? {}) as Record<string, number>;
  const m = (r.method ?? {}) as Record<string, number>;
  return [
    `Backlog ${fmt(b.records)} records (built at ${fmt(b.ingestRate)} msg/s with Kafka unreachable); live traffic ${fmt(m.liveRate)} msg/s during the drain.`,
    '',
    '| | records/s | vs raw idempotent |',
    '|---|---:|---:|',
    `| edgebridge drain (from first forwarded record; first forward ${fmt(d.firstForwardAfterOpenMs)} ms after Kafka returned) | ${fmt(d.rate)} | ${fmt(r.ratioVsIdempotent, 2)} |`,
    `| raw kafkajs producer, idempotent | ${fmt(raw.idempotent?.rate)} | 1.00 |`,
    `| raw kafkajs producer, one transaction per batch | ${fmt(raw.transactional?.rate)} | ${fmt((raw.transactional?.rate ?? NaN) / (raw.idempotent?.rate ?? NaN), 2)} |`,
    '',
    `Live PUBACK latency (open loop, from scheduled time) p50 / p99 / p99.9: during the drain ${fmt(ld.p50Ms, 1)} / ${fmt(ld.p99Ms, 1)} / ${fmt(ld.p999Ms, 1)} ms; without drain ${fmt(ls.p50Ms, 1)} / ${fmt(ls.p99Ms, 1)} / ${fmt(ls.p999Ms, 1)} ms (p99 ratio ${fmt(r.liveP99Ratio, 2)}).`,
    '',
  ];
}

function memoryTable(r: Record<string, unknown>): string[] {
  const g = (k: string) => (r[k] ?? {}) as Record<string, number>;
  const mq = (r.mosquitto ?? {}) as Record<string, Record<string, number>>;
  return [
    '| state | edgebridge RSS MiB (median / max) | edgebridge CPU % | Mosquitto RSS MiB |',
    '|---|---:|---:|---:|',
    `| idle | ${fmt(g('idle').rssMiB)} / ${fmt(g('idle').rssMaxMiB)} | ${fmt(g('idle').cpuPct, 1)} | ${fmt(mq.idle?.rssMiB, 1)} |`,
    `| 1,000 connected idle devices | ${fmt(g('devices').rssMiB)} / ${fmt(g('devices').rssMaxMiB)} | ${fmt(g('devices').cpuPct, 1)} | ${fmt(mq.devices?.rssMiB, 1)} |`,
    `| after ${fmt(g('afterBurst').messages)} messages (forwarded, quiet) | ${fmt(g('afterBurst').rssMiB)} / ${fmt(g('afterBurst').rssMaxMiB)} | ${fmt(g('afterBurst').cpuPct, 1)} | |`,
    '',
  ];
}

function diskTable(r: Record<string, unknown>): string[] {
  const med = (r.medians ?? {}) as Record<string, { bytesPerMessage: number; perPayload: number }>;
  const L = ['| payload | bytes written per message (median) | × payload |', '|---:|---:|---:|'];
  for (const [p, v] of Object.entries(med)) L.push(`| ${p} B | ${fmt(v.bytesPerMessage)} | ${fmt(v.perPayload, 1)} |`);
  L.push('', 'At the maximum rate (closed loop). At a steady 1,000 msg/s (open loop, 50 clients, 200 B), by storage.groupCommitIntervalMs:', '');
  L.push('| groupCommitIntervalMs | bytes written per message | × payload | mean group | PUBACK p50 / p99 ms |', '|---:|---:|---:|---:|---:|');
  for (const s of (r.steady ?? []) as Record<string, number | string>[]) {
    if (s.error !== undefined) L.push(`| ${String(s.groupCommitIntervalMs)} | failed: ${String(s.error)} | | | |`);
    else L.push(`| ${String(s.groupCommitIntervalMs)} | ${fmt(s.bytesPerMessage as number)} | ${fmt((s.bytesPerMessage as number) / 200, 1)} | ${fmt(s.meanGroup as number, 1)} | ${fmt(s.pubackP50Ms as number, 1)} / ${fmt(s.pubackP99Ms as number, 1)} |`);
  }
  L.push('');
  return L;
}
