import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHROMIUM, CHROMIUM_ARGS } from '../helpers/chromium.js';
import { FaultKafka } from '../helpers/fault-kafka.js';
import { testConfig, uniqueName } from '../helpers/gateway.js';
import { consumeAll } from '../helpers/kafka.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { untilValue } from '../helpers/raw-mqtt.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

// What the page's scripts (run in Chromium by waitForFunction) use of the DOM; no DOM lib here.
declare const document: { querySelector(selector: string): { textContent: string | null } | null; querySelectorAll(selector: string): { length: number } };

interface Status {
  gatewayId: string;
  forwarder: string;
  backlog: number;
  backlogOldestAgeSeconds: number;
  received: number;
  forwarded: number;
  transactions: number;
  mqttClients: number;
  devices: { active: number; silent: number; topByRate: { deviceId: string; perMinute: number }[]; silentDevices: { deviceId: string }[] };
  routes: { route: string; topic: string; stored: number; duplicates: number }[];
  errors: { code?: string; message: string }[];
  backlogDetail?: { bytes: number; devices: number; topDevices: { deviceId: string; records: number; bytes: number; oldestAgeSeconds: number }[] };
}

const ROUTE = 'devices/{deviceId}/telemetry/#';

/**
 * Operating a gateway from a desk (issue 10): every admin endpoint and the status page in headless
 * Chromium, against the gateway as a process and a Kafka broker that is stopped and started.
 */
describe('operations: admin endpoints and the status page through a Kafka outage', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();
  let kafka: FaultKafka;
  let browser: Browser;

  beforeAll(async () => {
    kafka = await FaultKafka.allocate();
    await kafka.start();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  });
  afterAll(async () => {
    await browser?.close();
    await kafka?.destroy();
  });

  it('backlog, its age and bytes rise while Kafka is stopped and return to 0 after; the page shows what the API says', async () => {
    const dir = tmp();
    const topic = uniqueName('iot.ops');
    const config = testConfig({
      dir,
      topic,
      brokers: kafka.brokers,
      overrides: { forward: { retry: { initialMs: 100, maxMs: 1000 } }, admin: { host: '127.0.0.1', port: 0, silentAfter: '10s' } } as never,
    });
    const gw: GatewayProcess = await spawnGateway(config, dir);
    cleanup(async () => {
      gw.child.kill('SIGTERM');
      await gw.exited;
    });
    const adminPort = (await gw.waitForLine((l) => l.msg === 'admin endpoint listening')).port as number;
    const base = `http://127.0.0.1:${adminPort}`;
    const get = async <T = Status>(path: string) => {
      const res = await fetch(base + path);
      return { code: res.status, body: (await res.json()) as T };
    };
    const status = async () => (await get('/status')).body;
    const metrics = async () => (await fetch(`${base}/metrics`)).text();
    const metric = (text: string, series: string) => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      return line === undefined ? NaN : Number(line.slice(series.length + 1));
    };
    const client = await mqtt.connectAsync(gw.url, { clientId: 'ops-test', reconnectPeriod: 0 });
    cleanup(() => client.endAsync());
    const sent: { device: string; seq: number }[] = [];
    let payloadBytes = 0;
    const publish = async (device: string, count: number) => {
      for (let i = 0; i < count; i++) {
        const seq = sent.filter((s) => s.device === device).length + 1;
        const payload = JSON.stringify({ bootId: 'boot-1', seq, reading: 20 + (seq % 7) });
        await client.publishAsync(`devices/${device}/telemetry`, payload, { qos: 1 });
        sent.push({ device, seq });
        payloadBytes += Buffer.byteLength(payload);
      }
    };

    // --- Kafka up: ready, everything forwarded, the figures add up ---
    await untilValue('ready', () => get('/readyz'), (p) => p.code === 200);
    await publish('a', 5);
    await publish('b', 3);
    await publish('c', 1);
    await untilValue('9 forwarded', status, (s) => s.forwarded === 9 && s.backlog === 0);
    expect(await get('/healthz')).toMatchObject({ code: 200, body: { status: 'ok' } });
    // device figures are computed at most once a second: wait for the rates of the last publishes
    const up = await untilValue('the device rates', status, (s) => s.devices.topByRate.reduce((n, d) => n + d.perMinute, 0) === 9);
    expect(up).toMatchObject({ received: 9, forwarded: 9, backlog: 0, backlogOldestAgeSeconds: 0, mqttClients: 1 });
    expect(up.transactions).toBeGreaterThanOrEqual(1);
    expect(up.devices).toMatchObject({ active: 3, silent: 0 });
    expect(up.devices.topByRate.map((d) => [d.deviceId, d.perMinute])).toEqual([['a', 5], ['b', 3], ['c', 1]]);
    expect(up.routes).toEqual([{ route: ROUTE, topic, stored: 9, duplicates: 0 }]);
    expect(up.backlogDetail).toMatchObject({ bytes: 0, devices: 0, topDevices: [] });
    const history = await untilValue('a history sample', () => get<{ intervalSeconds: number; samples: { backlog: number }[] }>('/history'), (h) => h.body.samples.length > 0);
    expect(history.body.intervalSeconds).toBe(5);
    let text = await metrics();
    expect(metric(text, 'edgebridge_ready')).toBe(1);
    expect(metric(text, `edgebridge_route_received_total{route="${ROUTE}",topic="${topic}"}`)).toBe(9);
    expect(metric(text, 'edgebridge_kafka_transactions_total{result="committed"}')).toBe(up.transactions);
    // every forwarded record was in exactly one observed batch
    expect(metric(text, 'edgebridge_forward_batch_records_sum')).toBe(9);
    const batches = metric(text, 'edgebridge_forward_batch_records_count');
    expect(batches).toBeGreaterThanOrEqual(1);
    expect(metric(text, 'edgebridge_forward_batch_duration_seconds_count')).toBe(batches);
    expect(metric(text, 'edgebridge_forward_batch_duration_seconds_sum')).toBeGreaterThan(0);
    expect(metric(text, 'edgebridge_backlog_bytes')).toBe(0);
    expect(metric(text, 'edgebridge_devices_active')).toBe(3);
    const page: Page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
    cleanup(() => page.close());
    await page.goto(`${base}/`);
    const shows = (selector: string, value: string | RegExp, timeout = 30_000) => expectText(page, selector, value, timeout);
    await shows('#ready', 'ready');
    await shows('#gateway-id', up.gatewayId);
    await shows('#backlog', '0');
    await shows('#received', '9');
    await shows('#forwarded', '9');
    await shows('#top-rate', /a\s*5/);
    await shows('#routes', new RegExp(`${topic}\\s*9\\s*0`));

    // --- Kafka stopped: healthy, not ready; the backlog grows and ages ---
    await kafka.stop();
    payloadBytes = 0;
    await publish('a', 20);
    await publish('b', 10);
    const outage = await untilValue('a backlog of 30 a second old', status, (s) => s.backlog === 30 && s.backlogOldestAgeSeconds >= 1);
    const older = await untilValue('the backlog to age', status, (s) => s.backlogOldestAgeSeconds >= outage.backlogOldestAgeSeconds + 2);
    expect(older.backlog).toBe(30);
    expect(older.forwarded).toBe(9);
    const notReady = await untilValue('not ready', () => get<{ status: string; reason: string; backlog: number }>('/readyz'), (p) => p.code === 503);
    expect(notReady.body).toMatchObject({ status: 'retrying', backlog: 30 });
    expect(notReady.body.reason).toBeTruthy();
    expect((await get('/healthz')).code).toBe(200); // buffering through an outage is what the log is for
    const detail = (await untilValue('the backlog detail of all 30', status, (s) => s.backlogDetail?.topDevices.reduce((n, d) => n + d.records, 0) === 30)).backlogDetail!;
    expect(detail.devices).toBe(2);
    expect(detail.bytes).toBe(payloadBytes);
    expect(detail.topDevices.map((d) => [d.deviceId, d.records])).toEqual([['a', 20], ['b', 10]]);
    expect(detail.topDevices[0]!.oldestAgeSeconds).toBeGreaterThanOrEqual(1);
    const silent = await untilValue('c to be silent', status, (s) => s.devices.silentDevices.some((d) => d.deviceId === 'c'));
    expect(silent.devices.silent).toBeGreaterThanOrEqual(1);
    text = await metrics();
    expect(metric(text, 'edgebridge_ready')).toBe(0);
    expect(metric(text, 'edgebridge_backlog_records')).toBe(30);
    expect(metric(text, 'edgebridge_backlog_bytes')).toBe(payloadBytes);
    expect(metric(text, 'edgebridge_backlog_oldest_age_seconds')).toBeGreaterThanOrEqual(older.backlogOldestAgeSeconds);
    expect(metric(text, 'edgebridge_forwarder_state{state="retrying"}')).toBe(1);
    await shows('#ready', 'not ready');
    await shows('#backlog', '30');
    await shows('#top-backlog', /a\s*20/);
    await shows('#top-backlog', /b\s*10/);
    await shows('#silent', /c\s*\d/);
    await shows('#forwarder', 'retrying');
    // the outage is among the recent problems, with its code
    expect((await status()).errors.some((e) => e.code === 'EB_ERR_FORWARD_KAFKA')).toBe(true);
    await shows('#errors tbody', /EB_ERR_FORWARD_KAFKA\s*kafka unreachable/);
    // old enough that its forwarding counts as a drain (logged)
    await untilValue('the backlog 12 s old', status, (s) => s.backlogOldestAgeSeconds >= 12);
    await shows('#backlog-age', /^(1[2-9]|[2-9]\d) s$/);
    if (process.env.EDGEBRIDGE_SCREENSHOT) {
      mkdirSync(join(import.meta.dirname, '..', '..', 'docs'), { recursive: true });
      await page.waitForFunction(() => document.querySelectorAll('#chart polyline').length === 2, undefined, { timeout: 30_000 });
      await page.screenshot({ path: process.env.EDGEBRIDGE_SCREENSHOT, fullPage: true });
    }

    // --- Kafka back: everything forwarded once, ready again, the backlog back to 0 ---
    await kafka.start();
    await untilValue('ready again', () => get('/readyz'), (p) => p.code === 200, 120_000);
    const after = await untilValue('the backlog drained', status, (s) => s.backlog === 0 && s.backlogOldestAgeSeconds === 0, 60_000);
    expect(after.forwarded).toBe(39);
    const records = await consumeAll(kafka.brokers, topic, { expected: 39, timeoutMs: 90_000 });
    const seen = records.map((r) => {
      const body = JSON.parse(r.value.toString()) as { seq: number };
      return `${r.key}:${body.seq}`;
    });
    expect(new Set(seen).size).toBe(39);
    expect(seen.sort()).toEqual(sent.map((s) => `${s.device}:${s.seq}`).sort());
    const drained = await gw.waitForLine((l) => l.msg === 'backlog drained');
    expect(drained).toMatchObject({ records: 30, remaining: 0 });
    text = await metrics();
    expect(metric(text, 'edgebridge_ready')).toBe(1);
    expect(metric(text, 'edgebridge_backlog_records')).toBe(0);
    expect(metric(text, 'edgebridge_backlog_oldest_age_seconds')).toBe(0);
    await untilValue('backlog bytes 0', metrics, (t) => metric(t, 'edgebridge_backlog_bytes') === 0);
    expect(metric(text, 'edgebridge_forward_batch_records_sum')).toBe(39);
    await shows('#ready', 'ready');
    await shows('#backlog', '0');
    await shows('#forwarded', '39');
    await shows('#top-backlog tbody', 'no backlog');

    // --- and the rest of the endpoint surface ---
    const html = await fetch(`${base}/`);
    expect(html.headers.get('content-type')).toMatch(/^text\/html/);
    expect(await html.text()).toContain('<title>edgebridge</title>');
    expect(await get('/nope')).toMatchObject({ code: 404, body: { endpoints: ['/', '/healthz', '/readyz', '/status', '/history', '/metrics'] } });
    expect((await fetch(`${base}/status`, { method: 'POST' })).status).toBe(405);
  });
});

/** Waits until the page element's text matches (the page polls every 2 s). */
async function expectText(page: Page, selector: string, value: string | RegExp, timeout: number): Promise<void> {
  try {
    await page.waitForFunction(
      ([sel, source, flags, exact]) => {
        const el = document.querySelector(sel!);
        if (!el) return false;
        const t = (el.textContent ?? '').trim();
        return exact !== null ? t === exact : new RegExp(source!, flags!).test(t);
      },
      typeof value === 'string' ? [selector, null, null, value] : [selector, value.source, value.flags, null],
      { timeout, polling: 200 },
    );
  } catch (err) {
    const shown = await page.locator(selector).textContent().catch(() => '(no element)');
    throw new Error(`the page's ${selector} never showed ${String(value)} (shows ${JSON.stringify(shown)}): ${(err as Error).message.split('\n')[0]}`);
  }
}
