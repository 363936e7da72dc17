import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { AdminServer } from '../../src/admin/server.js';
import type { GatewayStatus } from '../../src/status.js';
import { sampleStatus } from '../helpers/status.js';

/** The dashboard operators import into Grafana (deploy/README.md). */
const dashboard = JSON.parse(readFileSync(new URL('../../deploy/grafana/edgebridge-dashboard.json', import.meta.url), 'utf8')) as Dashboard;

interface Target {
  readonly refId?: string;
  readonly expr?: string;
  readonly datasource?: { readonly type?: string; readonly uid?: string };
}
interface Panel {
  readonly id?: number;
  readonly type?: string;
  readonly title?: string;
  readonly gridPos?: { readonly x: number; readonly y: number; readonly w: number; readonly h: number };
  readonly datasource?: { readonly type?: string; readonly uid?: string };
  readonly targets?: readonly Target[];
  readonly panels?: readonly Panel[];
}
interface Dashboard {
  readonly schemaVersion: number;
  readonly uid?: string;
  readonly title?: string;
  readonly __inputs?: readonly { name: string; type: string; pluginId: string }[];
  readonly panels: readonly Panel[];
  readonly templating: { readonly list: readonly { name: string; query?: unknown; definition?: string; datasource?: { uid?: string } }[] };
}

/** Every panel, those inside collapsed rows included. */
const panels: Panel[] = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const queryPanels = panels.filter((p) => p.type !== 'row');
const exprs = queryPanels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr ?? '' })));

const HISTOGRAM_SERIES = /_(bucket|sum|count)$/;

/** The metric names an expression reads (the series names, as Prometheus stores them). */
function seriesIn(expr: string): string[] {
  return [...expr.matchAll(/\b(?:edgebridge_|process_|nodejs_)[a-z0-9_]+/g)].map((m) => m[0]);
}

/** A status a running gateway could report; the registry reads it when collecting. */
const status: GatewayStatus = sampleStatus();

const registered = new AdminServer({ host: '127.0.0.1', port: 0, status: () => status, logger: pino({ level: 'silent' }) }).metricTypes();

describe('the Grafana dashboard (deploy/grafana/edgebridge-dashboard.json)', () => {
  it('queries only metrics the admin endpoint exports, as the type they have', () => {
    expect(exprs.length).toBeGreaterThan(20);
    const problems: string[] = [];
    for (const { panel, expr } of exprs) {
      for (const series of seriesIn(expr)) {
        const base = series.replace(HISTOGRAM_SERIES, '');
        if (registered.has(series)) continue;
        if (base !== series && registered.has(base)) {
          const type = registered.get(base);
          if (type !== 'histogram' && type !== 'summary') problems.push(`${panel}: ${series} (${base} is a ${type}, not a histogram)`);
          continue;
        }
        problems.push(`${panel}: ${base} is not exported`);
      }
    }
    expect([...new Set(problems)]).toEqual([]);
  });

  it('takes rate() and increase() of counters and histogram series only, and histogram_quantile of buckets', () => {
    const problems: string[] = [];
    for (const { panel, expr } of exprs) {
      for (const [, series] of expr.matchAll(/\b(?:rate|irate|increase)\(\s*([a-z_:][a-z0-9_:]*)/g)) {
        const type = registered.get(series!) ?? registered.get(series!.replace(HISTOGRAM_SERIES, ''));
        const histogramPart = HISTOGRAM_SERIES.test(series!) && (type === 'histogram' || type === 'summary');
        // A name not exported at all is reported by the test above.
        if (type !== undefined && type !== 'counter' && !histogramPart) problems.push(`${panel}: rate of ${series} (a ${type})`);
      }
      if (expr.includes('histogram_quantile(') && !/histogram_quantile\(.*_bucket\b/s.test(expr)) problems.push(`${panel}: histogram_quantile without _bucket`);
    }
    expect(problems).toEqual([]);
  });

  it('is a Grafana dashboard for import: unique panel ids, every query on the ${DS_PROMETHEUS} input and filtered by $gateway', () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(38);
    expect(dashboard.uid).toMatch(/^[a-z0-9-]{1,40}$/);
    expect(dashboard.title).toBeTruthy();
    expect(dashboard.__inputs).toContainEqual(expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' }));

    const ids = panels.map((p) => p.id);
    expect(ids.every((id) => Number.isInteger(id))).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      expect(p.type, `panel ${p.id}`).toMatch(/^(row|stat|timeseries)$/);
      expect(p.gridPos, `panel ${p.id} ${p.title}`).toBeDefined();
      expect(p.gridPos!.x + p.gridPos!.w, `panel ${p.id} ${p.title} fits 24 columns`).toBeLessThanOrEqual(24);
    }

    const gateway = dashboard.templating.list.find((v) => v.name === 'gateway');
    expect(gateway?.datasource?.uid).toBe('${DS_PROMETHEUS}');
    expect(seriesIn(gateway!.definition ?? '').every((s) => registered.has(s))).toBe(true);

    for (const p of queryPanels) {
      expect(p.datasource, `panel ${p.id} ${p.title}`).toEqual({ type: 'prometheus', uid: '${DS_PROMETHEUS}' });
      expect(p.targets?.length, `panel ${p.id} ${p.title} has queries`).toBeGreaterThan(0);
      const refIds = p.targets!.map((t) => t.refId);
      expect(new Set(refIds).size, `panel ${p.id} refIds unique`).toBe(refIds.length);
      for (const t of p.targets!) {
        if (t.datasource) expect(t.datasource.uid, `panel ${p.id} ${p.title}`).toBe('${DS_PROMETHEUS}');
        // Every metric selector is narrowed to the chosen gateways.
        for (const series of seriesIn(t.expr ?? '')) {
          expect(t.expr, `panel ${p.id} ${p.title}: ${series}`).toContain(`${series}{instance=~"$gateway"`);
        }
      }
    }
  });
});
