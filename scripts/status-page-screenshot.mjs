#!/usr/bin/env node
// Takes the README's picture of the status page during a Kafka outage, for real: a Kafka broker of
// its own, the built gateway as a process, a simulated fleet, then Kafka stopped for a minute and
// the page photographed in headless Debian Chromium (playwright-core). Run after `npm run build`:
//   node scripts/status-page-screenshot.mjs [docs/status-page-outage.png]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import mqtt from 'mqtt';
import { chromium } from 'playwright-core';
import { stringify } from 'yaml';
import { freePorts, startKafka, stopProcess } from './kafka.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const OUT = resolve(process.argv[2] ?? join(ROOT, 'docs', 'status-page-outage.png'));
const { runFleet } = await import(join(ROOT, 'dist', 'firmware-sim', 'fleet.js'));
const say = (line) => process.stdout.write(`${line}\n`);
const work = mkdtempSync(join(tmpdir(), 'edgebridge-screenshot-'));

const [kafkaPort, controllerPort, mqttPort, adminPort] = await freePorts(4);
say('starting Kafka...');
let kafka = await startKafka({ dataDir: join(work, 'kafka'), port: kafkaPort, controllerPort, heap: '512m' });
const config = {
  gateway: { id: 'gw-site-7' },
  mqtt: { host: '127.0.0.1', port: mqttPort },
  kafka: { brokers: kafka.brokers },
  storage: { dir: join(work, 'data') },
  forward: { retry: { initialMs: 200, maxMs: 2000 } },
  admin: { host: '127.0.0.1', port: adminPort, silentAfter: '30s' },
  routes: [
    { mqtt: 'sites/7/{deviceId}/telemetry', kafka: 'iot.telemetry' },
    { mqtt: 'sites/7/{deviceId}/state', kafka: 'iot.state', compact: true },
  ],
};
writeFileSync(join(work, 'edgebridge.yaml'), stringify(config));
const gateway = spawn(process.execPath, [join(ROOT, 'dist', 'src', 'cli.js'), 'start', '--config', join(work, 'edgebridge.yaml')], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
const listening = new Promise((resolveListening) =>
  createInterface({ input: gateway.stdout }).on('line', (line) => {
    if (line.includes('"admin endpoint listening"')) resolveListening();
  }),
);
const stop = new AbortController();
let browser;
try {
  await listening;
  const url = `mqtt://127.0.0.1:${mqttPort}`;
  // A device that reports its state once and then goes quiet: it shows up as silent.
  const quiet = await mqtt.connectAsync(url, { clientId: 'valve-02' });
  await quiet.publishAsync('sites/7/valve-02/state', JSON.stringify({ open: false }), { qos: 1 });
  await quiet.endAsync();
  const fleets = [
    runFleet({ url, devices: 8, rate: 4, qos: 1, prefix: 'temp', topicTemplate: 'sites/7/{deviceId}/telemetry', signal: stop.signal }),
    runFleet({ url, devices: 3, rate: 12, qos: 1, prefix: 'vibration', topicTemplate: 'sites/7/{deviceId}/telemetry', payloadBytes: 600, signal: stop.signal }),
  ];
  say('fleet publishing; Kafka up for 40 s...');
  await sleep(40_000);
  say('stopping Kafka for 70 s...');
  await kafka.stop(5000);
  await sleep(70_000);
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  await page.goto(`http://127.0.0.1:${adminPort}/`);
  await page.waitForFunction(() => document.querySelector('#ready')?.textContent === 'not ready' && document.querySelectorAll('#top-backlog tbody tr').length > 1, undefined, { timeout: 30_000 });
  await page.waitForFunction(() => document.querySelectorAll('#chart polyline').length === 2, undefined, { timeout: 30_000 });
  await page.screenshot({ path: OUT, fullPage: true });
  say(`wrote ${OUT}`);
  say('starting Kafka again; waiting for the backlog to drain...');
  kafka = await startKafka({ dataDir: join(work, 'kafka'), port: kafkaPort, controllerPort, heap: '512m' });
  for (const deadline = Date.now() + 120_000; Date.now() < deadline; await sleep(1000)) {
    const s = await (await fetch(`http://127.0.0.1:${adminPort}/status`)).json();
    if (s.backlog === 0 || s.backlogOldestAgeSeconds < 2) {
      say(`drained: ${s.forwarded} forwarded, ${s.received} stored`);
      break;
    }
  }
  stop.abort();
  await Promise.all(fleets);
} finally {
  stop.abort();
  await browser?.close();
  gateway.kill('SIGTERM');
  await stopProcess(gateway.pid, 15_000, () => gateway.exitCode !== null).catch(() => undefined);
  await kafka?.stop().catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
}
