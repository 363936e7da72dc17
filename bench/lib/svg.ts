// bench/results/latest.svg: one self-contained chart, written by hand. Top: each target as a bar
// of measured / target with the target line (the pass side shaded). Bottom: ingest throughput
// (scenario 1, and the Pi profile of scenario 6), medians in msg/s.
import type { BenchReport, TargetRow } from './report.js';

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

const SHORT: Record<string, string> = {
  'ingest-mqttjs': 'Ingest vs Mosquitto (MQTT.js)',
  'ingest-cgen': 'Ingest vs Mosquitto (mosquitto_pub)',
  'disk-200': 'Disk bytes / msg, 200 B payload',
  'disk-63': 'Disk bytes / msg, 63 B payload',
  'rss-idle': 'RSS idle',
  'rss-devices': 'RSS with 1,000 devices',
  'rss-after-burst': 'RSS after 200k messages',
  drain: 'Backlog drain vs raw kafkajs',
  'drain-live-p99': 'Live p99 during drain vs without',
  'kafka-lag': 'In Kafka after last PUBACK',
};

const COLORS = { pass: '#2e9e4f', fail: '#d64541', none: '#b0b0b0', passZone: '#e6f4ea', mosquitto: '#5b7db1', aedes: '#9aa5b1', edgebridge: '#e8833a' };

function valueText(t: TargetRow): string {
  if (t.value === null) return 'not measured';
  const v = t.unit === '×' ? `${t.value.toFixed(2)}×` : t.unit === 's' ? `${t.value.toFixed(1)} s` : `${Math.round(t.value).toLocaleString('en-US')} ${t.unit}`;
  const target = t.unit === '×' ? `${t.target}×` : `${t.target.toLocaleString('en-US')} ${t.unit}`;
  return `${v}  (target ${t.op === '>=' ? '≥' : '≤'} ${target})`;
}

export function chart(rep: BenchReport): string {
  const W = 1000;
  const out: string[] = [];
  let y = 0;
  const text = (x: number, yy: number, s: string, attrs = '') => out.push(`<text x="${x}" y="${yy}" ${attrs}>${esc(s)}</text>`);

  // header
  y = 28;
  text(20, y, `edgebridge benchmark${rep.quick ? ' (quick)' : ''}`, 'font-size="18" font-weight="bold"');
  y += 20;
  const m = rep.machine;
  text(20, y, `${rep.date.slice(0, 16).replace('T', ' ')} UTC · ${String(m.gitCommit).slice(0, 10)} · ${m.cores} × ${m.cpuModel} · Node ${m.node} · ${rep.summary.passed} pass, ${rep.summary.failed} fail, ${rep.summary.missing} not measured`, 'font-size="12" fill="#555"');

  // targets
  y += 30;
  text(20, y, 'Targets: bar = measured ÷ target; the dark line is the target, the shaded side passes', 'font-size="14" font-weight="bold"');
  y += 12;
  const x0 = 280;
  const barW = 400;
  const maxRatio = 3;
  const s = barW / maxRatio;
  const rowH = 26;
  const top = y;
  for (const t of rep.targets) {
    y += rowH;
    const cy = y - 8;
    text(20, cy + 4, SHORT[t.id] ?? t.id, 'font-size="12"');
    // the pass zone
    const zx = t.op === '>=' ? x0 + s : x0;
    const zw = t.op === '>=' ? barW - s : s;
    out.push(`<rect x="${zx}" y="${cy - 9}" width="${zw}" height="18" fill="${COLORS.passZone}"/>`);
    out.push(`<rect x="${x0}" y="${cy - 9}" width="${barW}" height="18" fill="none" stroke="#ddd"/>`);
    if (t.ofTarget !== null) {
      const len = Math.min(t.ofTarget, maxRatio) * s;
      const color = t.pass ? COLORS.pass : COLORS.fail;
      out.push(`<rect x="${x0}" y="${cy - 6}" width="${Math.max(1, len)}" height="12" fill="${color}"/>`);
      if (t.ofTarget > maxRatio) text(x0 + barW - 14, cy + 4, '»', 'font-size="14" fill="#fff" font-weight="bold"');
    }
    const verdict = t.pass === null ? '' : t.pass ? 'PASS' : 'FAIL';
    text(x0 + barW + 12, cy + 4, valueText(t), 'font-size="12"');
    text(W - 20, cy + 4, verdict, `font-size="12" font-weight="bold" text-anchor="end" fill="${t.pass === null ? COLORS.none : t.pass ? COLORS.pass : COLORS.fail}"`);
  }
  // target line and scale
  out.push(`<line x1="${x0 + s}" y1="${top + 4}" x2="${x0 + s}" y2="${y + 2}" stroke="#222" stroke-width="2"/>`);
  y += 16;
  for (let k = 0; k <= maxRatio; k++) text(x0 + k * s, y, k === maxRatio ? `${k}× target+` : `${k}×`, 'font-size="10" fill="#777" text-anchor="middle"');

  // throughput
  const groups: { label: string; values: Record<string, number> }[] = [];
  const add = (key: string, gen: string, label: string) => {
    const med = (rep.scenarios[key]?.result?.medians as Record<string, Record<string, { rate: number }>> | undefined)?.[gen];
    if (med && Object.keys(med).length > 0) groups.push({ label, values: Object.fromEntries(Object.entries(med).map(([t, v]) => [t, v.rate])) });
  };
  add('s1', 'mqttjs', 'Scenario 1 · MQTT.js, 2 processes × 10 clients × 10 in flight, 200 B');
  add('s1', 'cgen', 'Scenario 1 · 8 × mosquitto_pub -l -q 1, 63 B');
  add('s6', 'mqttjs', 'Scenario 6 · Pi profile (broker on 1 core, 128 MB heap) · MQTT.js');
  add('s6', 'cgen', 'Scenario 6 · Pi profile · mosquitto_pub');
  y += 30;
  text(20, y, 'Durable QoS 1 ingest, msg/s (medians; edgebridge forwards to Kafka, Mosquitto and aedes keep nothing)', 'font-size="14" font-weight="bold"');
  const maxRate = Math.max(1, ...groups.flatMap((g) => Object.values(g.values).filter((v) => Number.isFinite(v))));
  const rx0 = 120;
  const rW = 620;
  for (const g of groups) {
    y += 24;
    text(20, y, g.label, 'font-size="12" fill="#333"');
    for (const t of ['mosquitto', 'aedes', 'edgebridge']) {
      const v = g.values[t];
      if (v === undefined) continue;
      y += 20;
      text(40, y, t, 'font-size="12"');
      const len = Number.isFinite(v) ? (v / maxRate) * rW : 0;
      out.push(`<rect x="${rx0}" y="${y - 11}" width="${Math.max(1, len)}" height="14" fill="${COLORS[t as 'mosquitto' | 'aedes' | 'edgebridge']}"/>`);
      const rel = t !== 'mosquitto' && g.values.mosquitto ? ` (${(v / g.values.mosquitto).toFixed(2)}× Mosquitto)` : '';
      text(rx0 + len + 8, y, `${Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : '–'}${rel}`, 'font-size="12"');
    }
  }
  if (groups.length === 0) {
    y += 24;
    text(20, y, 'scenario 1 not measured', 'font-size="12" fill="#777"');
  }
  y += 24;
  const H = y;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    ...out,
    '</svg>',
    '',
  ].join('\n');
}
